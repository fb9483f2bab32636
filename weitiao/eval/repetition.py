"""Repetition metrics for replies: distinct-n, copy-of-history rate, n-gram loops.

Pure functions, no model. Used by `weitiao eval gen`, golden-set reports and chat-log checks:
    from weitiao.eval.repetition import distinct_n, copy_of_history_rate, ngram_loop, loop_span

Tokenization (`units`): every CJK ideograph is one unit; a run of other letters/digits (a Latin
word, a number, a kana run) is one unit; every other non-space character (punctuation, an emoji with
its skin tone, variation selector and ZWJ-joined parts, a flag, a keycap) is one unit; whitespace only
separates. So "我爱NLP!" is 我 / 爱 / NLP / ! and "好👍🏽" is 好 / 👍🏽.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
# an emoji's continuation: variation selectors, keycap, skin tones, tag characters (subdivision flags), or a ZWJ and
# the next part; a flag is two regional indicators, a keycap a digit/#/* with U+20E3
_MODS = "\ufe0e\ufe0f\u20e3\U0001f3fb-\U0001f3ff\U000e0020-\U000e007f"
_SYMBOL = f"[\U0001f1e6-\U0001f1ff]{{2}}|[0-9#*]\ufe0f?\u20e3|[^\\w\\s](?:[{_MODS}]|\u200d[^\\w\\s])*"
UNIT = re.compile(f"[{_CJK}]|{_SYMBOL}|(?:(?![{_CJK}])\\w)+", re.UNICODE)
_SPACE = re.compile(r"\s+")


def units(text: str) -> list[str]:
    """Split text into units: CJK characters one by one, other words whole, punctuation and emoji one by one."""
    return UNIT.findall(text)


def _ngrams(seq: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(seq[i : i + n]) for i in range(len(seq) - n + 1)]


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Corpus distinct-n: unique n-grams / all n-grams over `texts` (0.0 if none).

    N-grams never cross from one text into the next. Li et al. (2016) and the Distinct-N package divide by the number
    of units instead: the same distinct-1, a lower distinct-2 (one 4-unit reply without a repeat: 3/3 = 1.0 here, 3/4
    there); here every order reads 1.0 when nothing repeats.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    seen: set[tuple[str, ...]] = set()
    total = 0
    for text in texts:
        grams = _ngrams(units(text), n)
        total += len(grams)
        seen.update(grams)
    return len(seen) / total if total else 0.0


def _char_ngrams(text: str, n: int) -> list[str]:
    s = _SPACE.sub("", text)  # re-spacing a copied sentence should not hide the copy
    return [s[i : i + n] for i in range(len(s) - n + 1)]


_EDGE_PUNCT = "。．.！!？?，,、~～…；;：:"


def _whole_turn(text: str) -> str:
    """A turn compared whole: whitespace removed, punctuation at either end stripped."""
    return _SPACE.sub("", text).strip(_EDGE_PUNCT)


def copy_of_history_rate(reply: str, history: Sequence[str], n: int = 8) -> float:
    """Share of the reply copied from earlier turns.

    1.0 when the reply repeats a whole earlier turn exactly (whitespace and end punctuation aside),
    whatever its length: "在的" after "在的" is a copy. Otherwise the fraction of the reply's
    character n-grams (whitespace removed) that occur in any earlier turn; a reply shorter than n
    characters that repeats no whole turn scores 0.0.
    """
    whole = _whole_turn(reply)
    if whole and any(whole == _whole_turn(turn) for turn in history):
        return 1.0
    grams = _char_ngrams(reply, n)
    if not grams:
        return 0.0
    seen: set[str] = set()
    for turn in history:
        seen.update(_char_ngrams(turn, n))
    return sum(g in seen for g in grams) / len(grams)


@dataclass(frozen=True)
class Loop:
    """A periodic span: `text[start:end]` repeats a block of `period` units `repeats` times (rounded down)."""

    start: int
    end: int
    period: int
    repeats: int


def loop_span(text: str, n: int = 4, min_repeats: int = 3) -> Loop | None:
    """The longest looping span of `text` (character offsets), or None.

    A loop is a span that is periodic in units with some period p and long enough that a block
    recurs `min_repeats` times back to back: length >= max(n, p) + (min_repeats - 1) * p units.
    For p < n this means an n-gram occurs min_repeats times, each p units after the last
    ("的的的的的的" with n=4); for p >= n the whole p-unit block repeats ("我是AI。" three times).
    Among equally long spans the smallest period wins.
    """
    import numpy as np  # here, not at import: the CLI's startup does not need it

    if n < 1 or min_repeats < 2:
        raise ValueError(f"need n >= 1 and min_repeats >= 2, got n={n}, min_repeats={min_repeats}")
    matches = list(UNIT.finditer(text))
    if not matches:
        return None
    vocab: dict[str, int] = {}
    ids = np.array([vocab.setdefault(m.group(), len(vocab)) for m in matches], dtype=np.int64)
    best: tuple[int, int, int] | None = None  # (start unit, length in units, period)
    for p in range(1, len(ids) // min_repeats + 1):
        # 1. eq[j] is True when unit j equals unit j+p; a periodic span of length L is a run of L-p Trues.
        eq = np.concatenate([[False], ids[:-p] == ids[p:], [False]])
        edges = np.flatnonzero(np.diff(eq.astype(np.int8)))
        starts, ends = edges[0::2], edges[1::2]
        if not len(starts):
            continue
        # 2. keep runs long enough for the block to recur min_repeats times; take the longest.
        need = max(n, p) + (min_repeats - 2) * p
        runs = ends - starts
        ok = np.flatnonzero(runs >= need)
        if not len(ok):
            continue
        k = ok[np.argmax(runs[ok])]
        length = int(runs[k]) + p
        if best is None or length > best[1]:
            best = (int(starts[k]), length, p)
    if best is None:
        return None
    i, length, p = best
    return Loop(start=matches[i].start(), end=matches[i + length - 1].end(), period=p, repeats=length // p)


def ngram_loop(text: str, n: int = 4, min_repeats: int = 3) -> bool:
    """True when the text contains a loop as defined in `loop_span`."""
    return loop_span(text, n, min_repeats) is not None
