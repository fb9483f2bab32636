"""Preference pairs → token sequences: chosen and rejected share the exact prompt tokens.

Both replies are rendered through the chat template as the last assistant turn of the same prompt;
labels cover only that reply (and its end-of-turn token). Truncation never cuts the prompt:
`drop` skips a pair whose longer side exceeds max_len, `cut_response` shortens the replies
(the cut side loses its EOS, and is counted).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from weitiao.data.chat import IGNORE, Encoded, EncodeOptions, encode
from weitiao.data.formats import MAX_ROW_BYTES, LoadResult, PreferencePair, load_rows
from weitiao.data.templates import ChatTemplate
from weitiao.data.tokenize import encode_batch
from weitiao.errors import UserError

PairTruncation = Literal["drop", "cut_response"]
PAIR_SIDE = EncodeOptions(max_len=10**9, train_turns="last", truncation="drop")  # each side whole; cut per pair


@dataclass
class PairStats:
    pairs: int = 0
    kept: int = 0
    dropped_too_long: int = 0
    cut: int = 0
    dropped_sources: list[str] = field(default_factory=list)


def _prompt_len(enc: Encoded) -> int:
    return next(i for i, x in enumerate(enc.labels) if x != IGNORE)


def encode_pair(
    pair: PreferencePair, tokenizer: Any, template: ChatTemplate, max_len: int, truncation: PairTruncation = "drop"
) -> tuple[Encoded, Encoded] | None:
    """(chosen, rejected) encodings with identical prompt tokens; None when dropped."""
    c = encode(pair.conversation("chosen"), tokenizer, template, PAIR_SIDE)
    r = encode(pair.conversation("rejected"), tokenizer, template, PAIR_SIDE)
    return _fit_pair(pair, c, r, max_len, truncation)


def _fit_pair(
    pair: PreferencePair, c: Encoded, r: Encoded, max_len: int, truncation: PairTruncation
) -> tuple[Encoded, Encoded] | None:
    p = _prompt_len(c)
    if _prompt_len(r) != p or c.input_ids[:p] != r.input_ids[:p]:
        raise UserError(f"{pair.source}: prompt tokens differ between chosen and rejected; check the template")
    c.source = r.source = pair.source
    if max(len(c), len(r)) <= max_len:
        return c, r
    if truncation == "drop" or p >= max_len:  # never cut into the prompt
        return None
    for e in (c, r):
        if len(e) > max_len:
            e.input_ids, e.labels = e.input_ids[:max_len], e.labels[:max_len]
            e.truncated, e.ends_with_eot = "cut", False
    return c, r


def encode_pairs(
    pairs: list[PreferencePair], tokenizer: Any, template: ChatTemplate, max_len: int, truncation: PairTruncation
) -> tuple[list[Encoded], PairStats]:
    """Flat list [chosen_0, rejected_0, chosen_1, ...] plus accounting (pairs = kept + dropped).

    Each side is encoded in batches (`tokenize.encode_batch`: the same tokens as `encode_pair`).
    """
    stats = PairStats(pairs=len(pairs))
    out: list[Encoded] = []
    for k in range(0, len(pairs), 1024):
        chunk = pairs[k : k + 1024]
        sides = [[p.conversation(which) for p in chunk] for which in ("chosen", "rejected")]
        chosen, rejected = (encode_batch(convs, tokenizer, template, PAIR_SIDE) for convs in sides)
        for pair, c, r in zip(chunk, chosen, rejected):
            enc = _fit_pair(pair, c, r, max_len, truncation)
            if enc is None:
                stats.dropped_too_long += 1
                stats.dropped_sources.append(pair.source)
                continue
            stats.cut += any(e.truncated for e in enc)
            out.extend(enc)
    stats.kept = len(out) // 2
    return out, stats


def pair_rows(rows: list[list[int]], packing: bool = True) -> list[list[int]]:
    """Map rows of pair indices to rows of example indices (pair i → examples 2i, 2i+1).

    Packed: a pair's two sequences share a row (position_ids keep them apart). Padded: every
    sequence gets its own row, since an attention mask cannot separate sequences within a row.
    The row-major order chosen_i, rejected_i, ... is the same either way.
    """
    if packing:
        return [[k for i in row for k in (2 * i, 2 * i + 1)] for row in rows]
    return [[k] for row in rows for i in row for k in (2 * i, 2 * i + 1)]


def load_pairs(
    paths: list[str],
    fmt: str,
    skip_invalid: bool,
    rejects_path: Any = None,
    max_row_bytes: int = MAX_ROW_BYTES,
    dataset_dir: str | None = None,
) -> LoadResult:
    """Load preference rows; every row must be a pair."""
    kw = {"rejects_path": rejects_path, "max_row_bytes": max_row_bytes, "dataset_dir": dataset_dir}
    res = load_rows(paths, fmt, skip_invalid=skip_invalid, **kw)
    for note in res.notes:
        print(f"note: {note}")
    for row in res.rows:
        if not isinstance(row, PreferencePair):
            raise UserError(f"{row.source}: chosen: expected a preference row (prompt/chosen/rejected)")
    return res
