"""Reply-style metrics for the demo and golden sets: length, emoji rate, refusal rate, stop rate."""

from __future__ import annotations

import re
from collections.abc import Sequence

# Emoji and pictographs (incl. ☀ ☺ ❤ and variation selectors); enough for chat replies.
EMOJI = re.compile("[\U0001f300-\U0001faff\u2600-\u27bf\U0001f000-\U0001f2ff\u2b50\u2b55\u203c\u2049]")
REFUSAL = re.compile("抱歉|不能|无法|不行|不可以|不会帮|拒绝|不提供")


def has_emoji(text: str) -> bool:
    return bool(EMOJI.search(text))


def is_refusal(text: str) -> bool:
    return bool(REFUSAL.search(text))


def style_metrics(replies: Sequence[str], stopped: Sequence[bool]) -> dict[str, float]:
    """Mean length in characters, and the fraction with an emoji / a refusal / a clean stop."""
    n = max(1, len(replies))
    return {
        "mean_len": sum(len(r) for r in replies) / n,
        "emoji_rate": sum(map(has_emoji, replies)) / n,
        "refusal_rate": sum(map(is_refusal, replies)) / n,
        "stop_rate": sum(map(bool, stopped)) / n,
    }
