"""Mix SFT sources to a target ratio (e.g. style 85% / safety 15%), deduplicated across sources.

    weitiao data mix weitiao/demo/data/style.jsonl:0.85 weitiao/demo/data/safety.jsonl:0.15 \
        --total 1000 --out runs/mixed.jsonl --seed 0

Steps: 1. load every source (any SFT format; read once) → 2. dedup on the normalized conversation, first
source wins → 3. targets by largest remainder so they sum to the total → 4. down-sample without
replacement, or up-sample (every row k times, then a random remainder) → 5. shuffle, write messages
rows with `meta.source` (the file) and `meta.row` (file:line of the row kept), report counts and the achieved ratio.
A row's own columns (id, rule_ids, its own `meta` keys, ...) are kept as they were; only the format's fields
(instruction/output, conversations, ... : `formats.READ_KEYS`) become `messages`/`tools`. A row whose `meta`
already holds `source` or `row`, or is not an object, is refused naming file:line and the key: mix writes those.
Without --total, the total is the largest one that needs no up-sampling: min(unique_i / ratio_i).
"""

from __future__ import annotations

import json
import math
import random
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from weitiao.data.files import NUMBER, TYPELESS, data_suffix
from weitiao.data.formats import DOLLY_KEYS, READ_KEYS, Conversation, data_files, file_kind, load_conversations
from weitiao.data.tools import to_record
from weitiao.dataeng.similarity import normalize
from weitiao.errors import UserError, where
from weitiao.io import atomic_write_text, claim_outputs, write_jsonl


@dataclass
class Source:
    path: str
    ratio: float


def parse_sources(specs: list[str]) -> list[Source]:
    """`path:ratio` items (ratios are normalized to sum to 1; a bare path is an error)."""
    out = []
    for s in specs:
        path, sep, r = s.rpartition(":")
        try:
            ratio = float(r)
        except ValueError:
            ratio = -1.0
        if not sep or not path or not (ratio > 0 and math.isfinite(ratio)):
            raise UserError(f"{s!r}: expected FILE:RATIO with RATIO > 0, e.g. style.jsonl:0.85")
        out.append(Source(path, ratio))
    if len({s.path for s in out}) < len(out):
        raise UserError("the same file is given twice; merge its ratios into one FILE:RATIO")
    return out


# Punctuation that carries meaning stays in the key: 1.5 is not 15, 5% not 5, C++ not C.
_MEANT = re.compile(r"(?<=\d)[.,:/-](?=\d)|(?<=\d)[%‰]|(?<=[a-z])[+#]+")


def _text_key(text: str) -> str:
    s = unicodedata.normalize("NFKC", text).lower()
    kept = [(m.start(), m.group()) for m in _MEANT.finditer(s)]
    cuts = [0, *(i for a, g in kept for i in (a, a + len(g))), len(s)]
    pieces = [normalize(s[a:b]) for a, b in zip(cuts[::2], cuts[1::2])]
    return "".join(p + (kept[i][1] if i < len(kept) else "") for i, p in enumerate(pieces))


def conv_key(c: Conversation) -> str:
    """Dedup key: every turn's normalized text (so punctuation/width/spacing variants collide), the punctuation
    inside numbers (1.5, 3:30, 5%) and of C++/C# kept; tool calls and tool specs as they are (rows that differ only
    in a call's arguments are different rows); a weight-0 turn (context, not trained) differs from a trained one."""
    turns = [m["role"][0] + ("\x1e0" if m.get("weight") == 0 else "") + _text_key(m["content"] or "") +
             (json.dumps(m["tool_calls"], ensure_ascii=False, sort_keys=True) if m.get("tool_calls") else "")
             for m in c.messages]  # fmt: skip
    return "\x1f".join(turns) + (json.dumps(c.tools, ensure_ascii=False, sort_keys=True) if c.tools else "")


def targets(total: int, ratios: list[float]) -> list[int]:
    """Integer counts proportional to ratios that sum to total (largest remainder)."""
    s = sum(ratios)
    exact = [total * r / s for r in ratios]
    base = [math.floor(x) for x in exact]
    order = sorted(range(len(ratios)), key=lambda i: exact[i] - base[i], reverse=True)
    for i in order[: total - sum(base)]:
        base[i] += 1
    return base


def sample(rows: list, n: int, rng: random.Random) -> list:
    """n rows: a random subset when n ≤ len(rows), else every row ⌊n/len⌋ times plus a random remainder."""
    if not rows:
        return []
    k, rem = divmod(n, len(rows))
    return rows * k + rng.sample(rows, rem)


MIX_META = ("source", "row")  # what mix records in each row's `meta`


def own_columns(record: Any) -> dict:
    """A row's own columns: every key but the format's (READ_KEYS; an Alpaca row's Dolly context/response too)."""
    if not isinstance(record, dict):
        return {}
    read = READ_KEYS + (tuple(DOLLY_KEYS.values()) if "instruction" in record else ())  # Dolly's, too
    return {k: v for k, v in record.items() if k not in read}


def _typed(text: str, kind: str) -> Any:
    if text == "":
        return None
    if kind == "boolean":
        return text.casefold() == "true"
    return int(text) if text.lstrip("-").isdigit() else float(text)


def _kind(values: list[str]) -> str | None:
    """number | boolean when every filled cell is one (and one is filled), else None (text). A number column's every
    cell must read the same written back as JSON: 1e5 (100000.0), 1.50 (1.5), -0 (0) keep the column text (a code, a
    version), as 007 does."""
    filled = [v for v in values if v != ""]
    if filled and all(NUMBER.fullmatch(v) and json.dumps(_typed(v, "number")) == v for v in filled):
        return "number"
    if filled and all(v.casefold() in ("true", "false") for v in filled):
        return "boolean"
    return None


def typed_columns(own: dict[int, tuple[Conversation, dict]]) -> dict[str, dict[str, str]]:
    """Type the own columns of CSV/xlsx rows in place (`own`: id → (row, columns)), column by column
    per file; returns {file: {column: number|boolean}} for the columns typed."""
    by_file: dict[str, list[dict]] = {}
    for row, cols in own.values():
        path = row.source.rpartition(":")[0]
        if data_suffix(Path(path)) in TYPELESS:
            by_file.setdefault(path, []).append(cols)
    typed: dict[str, dict[str, str]] = {}
    for path, rows in by_file.items():
        names = dict.fromkeys(k for cols in rows for k, v in cols.items() if isinstance(v, str))
        for name in names:
            kind = _kind([cols.get(name, "") for cols in rows])
            if kind:
                for cols in rows:
                    if name in cols:
                        cols[name] = _typed(cols[name], kind)
                typed.setdefault(path, {})[name] = kind
    return typed


def check_meta(own: dict, loc: str) -> None:
    """A `meta` that is not an object or already has a key mix writes is refused, naming file:line and the key."""
    path, _, n = loc.rpartition(":")
    meta = own.get("meta")
    if meta is not None and not isinstance(meta, dict):
        raise UserError(f"{where(path, int(n), 'meta')}: {type(meta).__name__}; `data mix` writes meta.source and "
                        "meta.row into it: make it an object or rename the column")  # fmt: skip
    for k in MIX_META:
        if meta and k in meta:
            what = "file" if k == "source" else "file:line"
            raise UserError(f"{where(path, int(n), f'meta.{k}')}: the row has its own; `data mix` writes meta.{k} "
                            f"(the {what} a row came from): rename it")  # fmt: skip


def run(specs: list[str], out: str | Path, total: int | None = None, seed: int = 0) -> dict:
    """Write the mixed JSONL to `out` and `<out>.report.json`; returns the report."""
    sources = parse_sources(specs)
    claim_outputs([out, f"{out}.report.json"], data_files([s.path for s in sources]))
    rng = random.Random(seed)
    # 1. load; 2. dedup (within a source and across sources: the first source listed keeps the row)
    seen: set[str] = set()
    pools: list[list[Conversation]] = []
    report: list[dict] = []
    # id(row) → (row, its own columns), kept as it is parsed: each file is read once (a pipe or FIFO cannot be read
    # again). Not keyed by file:line: the rows of a JSON array written on one line all read 'file.json:1'.
    own: dict[int, tuple[Conversation, dict]] = {}

    def keep(record: Any, row: Conversation) -> None:
        own[id(row)] = row, own_columns(record)

    for src in sources:
        if Path(src.path).is_file() and file_kind(src.path) == "preference":  # not "preference row in SFT data"
            raise UserError(f"mix source {src.path}: preference pairs; `data mix` mixes SFT rows only")
        loaded = load_conversations(src.path, skip_hint=None, on_record=keep).rows
        if not loaded:
            raise UserError(f"{src.path}: no rows")
        pool = []
        for c in loaded:
            key = conv_key(c)
            if key not in seen:
                seen.add(key)
                pool.append(c)
        if not pool:
            raise UserError(f"{src.path}: every row duplicates an earlier source; nothing left to mix")
        pools.append(pool)
        report.append({"source": src.path, "read": len(loaded), "duplicates": len(loaded) - len(pool),
                       "unique": len(pool)})  # fmt: skip
    for c in (c for pool in pools for c in pool):  # a row mix cannot write is refused before sampling
        check_meta(own[id(c)][1], c.source)
    typed = typed_columns(own)
    # 3. targets
    share = [s.ratio / sum(x.ratio for x in sources) for s in sources]
    if total is None:  # 7 / 0.07 is 99.999…: round up past the float error, then step down while a source would repeat
        total = math.floor(min(len(p) / r for p, r in zip(pools, share)) * (1 + 1e-9))
        while total > 0 and any(n > len(p) for n, p in zip(targets(total, share), pools)):
            total -= 1
    if total <= 0:
        raise UserError(f"--total {total}: must be > 0")
    want = targets(total, share)
    # 4. sample each source; 5. shuffle and write
    mixed: list[tuple[str, Conversation]] = []
    for src, pool, n, r, row in zip(sources, pools, want, share, report):
        picked = sample(pool, n, rng)
        mixed += [(src.path, c) for c in picked]
        row.update(target_ratio=round(r, 4), picked=n, upsample=round(n / len(pool), 3),
                   unique_picked=len({id(c) for c in picked}))  # fmt: skip
    rng.shuffle(mixed)
    write_jsonl(out, [
        {**to_record(c), **own[id(c)][1], "meta": {**(own[id(c)][1].get("meta") or {}), "source": s, "row": c.source}}
        for s, c in mixed
    ])  # fmt: skip
    for row in report:
        row["achieved_ratio"] = round(row["picked"] / total, 4)
    summary = {"out": str(out), "total": total, "seed": seed, "sources": report}
    if typed:
        summary["typed_columns"] = typed
    given = sum(x.ratio for x in sources)
    if abs(given - 1) > 1e-6:
        summary["note"] = f"the ratios add up to {given:g}, not 1: each was divided by {given:g} (the target column)"
    atomic_write_text(f"{out}.report.json", json.dumps(summary, ensure_ascii=False, indent=2))
    return summary
