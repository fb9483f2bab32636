"""Reply-style metrics for the demo and golden sets: length, emoji rate, refusal rate, stop rate."""

from __future__ import annotations

import re
from collections.abc import Sequence

import regex

# An emoji by Unicode's emoji properties (UTS #51, the `regex` module's tables): a character shown as emoji by
# default (😊 ⌚ ⬛ 🇨🇳 👍🏽), any emoji character asked to be one with VS16 (©️ ▶️), a keycap (1️⃣ #⃣; a digit with VS16
# alone is a digit), and the pictographs of the Miscellaneous Symbols / Dingbats blocks and the emoji planes without
# VS16 (☺ ❤ ✔ 🌡).
# Text symbols are not emoji: ★ ☆ ✓ ♪ (ratings and lists in Chinese replies), © ™ → without VS16.
EMOJI = regex.compile(
    r"[\p{Emoji_Presentation}[\p{Extended_Pictographic}&&[\u2600-\u27bf\U0001f000-\U0001faff]]]"
    r"|[\p{Emoji}--[0-9#*]]\ufe0f|[0-9#*]\ufe0f?\u20e3",
    regex.V1,
)
GRAPHEME = regex.compile(r"\X")
# Refusal words of the demo's refusals: a keyword rate, so a helpful reply with one counts too ("不能熬夜哦"); eval gen
# --refusal-pattern sets another.
REFUSAL = re.compile("抱歉|不能|无法|不行|不可以|不会帮|拒绝|不提供")


def chars(text: str) -> int:
    """Length in characters as a reader counts them (grapheme clusters): 好👍🏽 is 2, a ZWJ family emoji or a flag 1;
    equal to len() on text without combining sequences."""
    return len(GRAPHEME.findall(text))


def has_emoji(text: str) -> bool:
    return bool(EMOJI.search(text))


def is_refusal(text: str) -> bool:
    return bool(REFUSAL.search(text))


def style_metrics(replies: Sequence[str], stopped: Sequence[bool]) -> dict[str, float]:
    """Mean length in characters (`chars`), and the fraction with an emoji / a refusal / a clean stop."""
    n = max(1, len(replies))
    return {
        "mean_len": sum(map(chars, replies)) / n,
        "emoji_rate": sum(map(has_emoji, replies)) / n,
        "refusal_rate": sum(map(is_refusal, replies)) / n,
        "stop_rate": sum(map(bool, stopped)) / n,
    }
