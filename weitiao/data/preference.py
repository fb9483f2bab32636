"""Preference pairs → token sequences: chosen and rejected share the exact prompt tokens.

Both replies are rendered through the chat template as the last assistant turn of the same prompt;
labels cover only that reply (and its end-of-turn token). A `raw` pair (format preference_raw) is
tokenized as TRL tokenizes standard rows: prompt + reply + EOS, no template, the reply starting
where the tokens of both sides leave the prompt's. Truncation never cuts the prompt: `drop` skips a
pair whose longer side exceeds max_len, `cut_response` shortens the replies (the cut side loses its
EOS, and is counted); a pair whose replies differ only past max_len is dropped then too (cut, the two
sides are the same tokens: zero loss gradient, ln 2 in every mean), counted with the pairs over max_len.

`encode_pairs` keeps its results in the tokenized-data cache (`weitiao.data.cache`): keyed by the
pairs themselves (prompt, replies, source, form), the tokenizer, template, max_len and truncation,
encoded in chunks by worker processes; a second call with the same pairs makes no tokenizer call.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from weitiao.data import cache
from weitiao.data.chat import IGNORE, Encoded, EncodeOptions, encode, encode_document
from weitiao.data.formats import (
    MAX_ROW_BYTES,
    SKIP_HINT,
    Conversation,
    Document,
    LoadResult,
    PreferencePair,
    load_rows,
    score_columns,
)
from weitiao.data.templates import ChatTemplate
from weitiao.data.tokenize import encode_batch, examples
from weitiao.errors import UserError, near_miss

PairTruncation = Literal["drop", "cut_response"]
PAIR_SIDE = EncodeOptions(max_len=10**9, train_turns="last", truncation="drop")  # each side whole; cut per pair


@dataclass
class PairStats:
    pairs: int = 0
    kept: int = 0
    dropped_too_long: int = 0
    cut: int = 0
    dropped_sources: list[str] = field(default_factory=list)
    dropped_pairs: list[int] = field(default_factory=list)  # their indices in the pairs given (sources may repeat)


def _prompt_len(enc: Encoded) -> int:
    return next(i for i, x in enumerate(enc.labels) if x != IGNORE)


def side_rows(pair: PreferencePair) -> tuple[Conversation | Document, Conversation | Document]:
    """The chosen and rejected sequences to encode: chats, or for a raw pair prompt + reply documents."""
    if pair.form == "raw":
        prompt = pair.prompt[-1]["content"]
        return Document(pair.chosen, pair.source, prompt), Document(pair.rejected, pair.source, prompt)
    return pair.conversation("chosen"), pair.conversation("rejected")


def encode_pair(
    pair: PreferencePair, tokenizer: Any, template: ChatTemplate, max_len: int, truncation: PairTruncation = "drop"
) -> tuple[Encoded, Encoded] | None:
    """(chosen, rejected) encodings with identical prompt tokens; None when dropped."""
    c, r = (encode_side(row, tokenizer, template) for row in side_rows(pair))
    return _fit_pair(pair, c, r, max_len, truncation)


def encode_side(row: Conversation | Document, tokenizer: Any, template: ChatTemplate) -> Encoded:
    """One side of `side_rows`, whole (no max_len)."""
    if isinstance(row, Document):
        return encode_document(row, tokenizer, PAIR_SIDE)[0]
    return encode(row, tokenizer, template, PAIR_SIDE)


def _fit_pair(
    pair: PreferencePair, c: Encoded, r: Encoded, max_len: int, truncation: PairTruncation
) -> tuple[Encoded, Encoded] | None:
    if pair.form == "raw":  # as TRL: the replies start where either side's tokens leave the prompt's
        p = min(_prompt_len(c), _prompt_len(r))
        for e in (c, r):
            e.labels = [IGNORE] * p + e.input_ids[p:]
    p = _prompt_len(c)
    if _prompt_len(r) != p or c.input_ids[:p] != r.input_ids[:p]:
        raise UserError(f"{pair.source}: prompt tokens differ between chosen and rejected; check the template")
    if c.input_ids == r.input_ids:  # texts differ (else refused when read), tokens not: the template trims them
        raise UserError(
            f"{pair.source}: rejected: renders to the same tokens as chosen (the replies differ only in what the "
            "template drops, e.g. whitespace it trims): the pair trains nothing; drop the row or fix the replies"
        )
    c.source = r.source = pair.source
    if max(len(c), len(r)) <= max_len:
        return c, r
    if truncation == "drop" or p >= max_len:  # never cut into the prompt
        return None
    for e in (c, r):
        if len(e) > max_len:
            e.input_ids, e.labels = e.input_ids[:max_len], e.labels[:max_len]
            e.truncated, e.ends_with_eot = "cut", False
    if c.input_ids == r.input_ids:  # the replies differed only past max_len: a tie that trains nothing, dropped
        return None
    return c, r


def _encode_chunk(
    pairs: list[PreferencePair], tokenizer: Any, template: ChatTemplate, max_len: int, truncation: PairTruncation
) -> list[tuple[Encoded, Encoded] | None]:
    """`encode_pair` of each pair, both sides encoded in batches (`tokenize.encode_batch`: the same tokens)."""
    sides = [side_rows(p) for p in pairs]
    chosen, rejected = (encode_batch([s[k] for s in sides], tokenizer, template, PAIR_SIDE) for k in (0, 1))
    return [
        _fit_pair(p, examples(c)[0], examples(r)[0], max_len, truncation) for p, c, r in zip(pairs, chosen, rejected)
    ]


class _PairEncoder:
    """Encodes a chunk of pairs into one cache shard: a kept pair is two rows (piece 0 chosen, 1 rejected),
    a dropped pair one dropped row."""

    def __init__(self, tokenizer: Any, template: ChatTemplate, max_len: int, truncation: PairTruncation):
        self.tokenizer, self.template, self.max_len, self.truncation = tokenizer, template, max_len, truncation

    def check(self, row: Any) -> None:
        pass

    def __call__(self, path: Path, pairs: list[PreferencePair]) -> int:
        flat: list[tuple[str, int, int, Encoded | None]] = []
        for pair, enc in zip(pairs, _encode_chunk(pairs, self.tokenizer, self.template, self.max_len, self.truncation)):
            key = int.from_bytes(hashlib.blake2b(_pair_text(pair).encode(), digest_size=8).digest(), "little")
            flat += [(pair.source, key, k, e) for k, e in enumerate(enc or [None])]
        cache.write_examples(path, flat)
        return len(pairs)


def _pair_text(pair: PreferencePair) -> str:
    """Everything of a pair its encoding depends on (and its source, which the encodings carry)."""
    return json.dumps([pair.prompt, pair.chosen, pair.rejected, pair.form, pair.source], ensure_ascii=False)


def pair_cache_key(
    pairs: list[PreferencePair], tokenizer: Any, template: ChatTemplate, max_len: int, truncation: PairTruncation
) -> tuple[str, dict]:
    """(entry name, parts): the pairs' content, tokenizer, template, max_len and truncation."""
    h = hashlib.sha256()
    for p in pairs:
        h.update(_pair_text(p).encode())
        h.update(b"\x1e")
    parts = {"pairs": [len(pairs), h.hexdigest()], "max_len": max_len, "truncation": truncation}
    return cache.keyed(parts, tokenizer, template)


def encode_pairs(
    pairs: list[PreferencePair],
    tokenizer: Any,
    template: ChatTemplate,
    max_len: int,
    truncation: PairTruncation,
    *,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    num_proc: int = 0,
    progress: bool = True,
) -> tuple[Sequence[Encoded], PairStats]:
    """Flat sequence [chosen_0, rejected_0, chosen_1, ...] of the kept pairs (memory-mapped from the cache)
    plus accounting (pairs = kept + dropped); the same encodings as `encode_pair` of each pair.

    From the cache entry of these pairs when there is one, else built by `num_proc` processes (0 = cores)
    and kept (use_cache false: built in a temp folder and read into memory). `progress`: a progress
    bar while building, and one `tokenized:` line on the first process.
    """
    if not pairs:
        return [], PairStats()
    if not getattr(tokenizer, "is_fast", False):
        raise UserError("a fast tokenizer (tokenizer.json) is required for exact loss masking")
    speak = progress and os.environ.get("RANK", "0") == "0"
    key, parts = pair_cache_key(pairs, tokenizer, template, max_len, truncation) if use_cache else ("", {})
    encoder = _PairEncoder(tokenizer, template, max_len, truncation)
    procs = num_proc or cache.default_num_proc()

    def build(folder: Path) -> dict:
        t0, ticker = time.time(), cache.Ticker(speak)
        sink = cache.Sink(folder, encoder, procs, ticker)
        try:
            for pair in pairs:
                sink.append(pair)
            sink.finish()
        finally:
            sink.close()
            ticker.close()
        n_proc = procs if sink.shards[1:] else 1
        return {"rows": sink.n, "shards": sink.shards, "seconds": round(time.time() - t0, 3), "num_proc": n_proc}

    data = cache.cached(key, parts, build, cache_dir, use_cache)
    if speak:
        print(f"tokenized: {_cache_line(data)}")
    return data.view(np.arange(len(data))), _pair_stats(data)


def form_notes(pairs: list[PreferencePair], template: ChatTemplate) -> list[str]:
    """How string pairs (TRL would not template them) and HH transcripts were read, and score columns left unread,
    when there are any."""
    notes = []
    if n := sum(p.form == "string" for p in pairs):
        notes.append(
            f"{n} pairs of prompt/chosen/rejected strings are rendered as a one-user-turn chat with template "
            f"{template.name!r}; TRL trains such rows as raw text (data.format: preference_raw does that)"
        )
    if scored := [score_columns(p) for p in pairs if score_columns(p)]:
        names = ", ".join(dict.fromkeys("/".join(cols) for cols in scored))  # each layout once, in order of first use
        notes.append(
            f"{len(scored)} pairs carry scores ({names}): not read (DPO and the reward model learn chosen over "
            "rejected; `weitiao rm` reads a `margin` column, e.g. their difference)"
        )
    if n := sum(p.form == "hh" for p in pairs):
        notes.append(
            f"{n} pairs are Anthropic HH transcripts, read as chats (Human → user, Assistant → assistant; the replies "
            "are what follows the last '\\n\\nAssistant:'); data.format: preference_raw trains them as raw text"
        )
    return notes


def _cache_line(data: cache.EncodedSet) -> str:
    m = data.meta
    if m["hit"]:
        return f"{m['rows']:,} pairs from cache {data.folder}"
    where = f" → {data.folder}" if data.folder.exists() else " (data.cache false)"
    rate = m["rows"] / max(m["seconds"], 1e-9)
    return f"{m['rows']:,} pairs in {m['seconds']:.1f} s ({rate:,.0f} pairs/s, {m['num_proc']} proc){where}"


def _pair_stats(data: cache.EncodedSet) -> PairStats:
    """`PairStats` from an entry: a pair's first row (piece 0) says whether it was dropped."""
    first = np.flatnonzero(data.piece == 0)
    dropped = first[data.dropped[first]]
    kept = first[~data.dropped[first]]
    cut = (data.truncated[kept] == 1) | (data.truncated[kept + 1] == 1)
    return PairStats(
        pairs=len(first),
        kept=len(kept),
        dropped_too_long=len(dropped),
        cut=int(cut.sum()),
        dropped_sources=[data.source(int(i)) for i in dropped],
        dropped_pairs=np.flatnonzero(data.dropped[first]).tolist(),
    )


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
    skip_hint: str | None = SKIP_HINT,
    row_check: Any = None,
) -> LoadResult:
    """Load preference rows; every row must be a pair (`row_check`: as `load_rows`)."""
    kw = {
        "rejects_path": rejects_path,
        "max_row_bytes": max_row_bytes,
        "dataset_dir": dataset_dir,
        "skip_hint": skip_hint,
        "row_check": row_check,
    }
    res = load_rows(paths, fmt, skip_invalid=skip_invalid, **kw)
    for note in res.notes if os.environ.get("RANK", "0") == "0" else ():  # once per run, not once per process
        print(f"note: {note}")
    for row in res.rows:
        if not isinstance(row, PreferencePair):
            raise UserError(f"{row.source}: chosen: expected a preference row (prompt/chosen/rejected)")
    return res


# A pair's own columns some recipe reads: `margin` (weitiao rm, whenever a row has one), `weight`
# (data.weight_field) and `confidence` (data.min_confidence).
PAIR_COLUMNS = ("margin", "weight", "confidence")


def refuse_column_typos(pairs: list[PreferencePair]) -> None:
    """Refuse a column one or two typos from a PAIR_COLUMNS name that its row lacks (`margn`, `weights`): the reward
    model trained every pair with margin 0 under `margn`, without a word, as other extra columns stay unread."""
    names = {k for p in pairs for k in p.extra}
    for key in sorted(names):
        if want := near_miss(key, PAIR_COLUMNS, 0.85):
            if row := next((p for p in pairs if key in p.extra and want not in p.extra), None):
                raise UserError(f"{row.source}: {key}: unknown key; did you mean {want!r}? (rename it, or drop it)")
