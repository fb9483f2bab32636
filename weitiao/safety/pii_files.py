"""PII over data files and privacy-refusal data, on top of the recognizers in `weitiao.safety.pii`.

`process_file` scans or scrubs any JSONL (training formats or plain JSON rows) field by field, keeping each row's shape;
`make_refusals` writes privacy-refusal SFT rows and DPO pairs whose rejected side leaks a fake value.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

from weitiao.safety import pii_data as D
from weitiao.safety.pii import TYPES, Match, replacer, scrub
from weitiao.safety.pii_fake import fake_card, fake_id, fake_like, fake_mobile, ours

# ----------------------------------------------------------------------------- files

# Structural values left alone: a message's role and a content part's type. Only these exact values: any other
# string under these keys, and every `id`, `source`, ... field, is scanned like free text.
STRUCTURAL = {
    "role": {"system", "user", "assistant", "tool", "function", "developer", "observation"},
    "from": {"system", "human", "user", "gpt", "assistant", "tool", "function", "function_call", "observation"},
    "type": {"text", "image", "image_url", "input_text", "input_image", "audio", "function", "tool_call"},
}


@dataclass
class FileReport:
    """Counts per type and per field path; `rows_with_pii` out of `rows`."""

    path: str
    format: str
    rows: int = 0
    rows_with_pii: int = 0
    counts: dict[str, int] | None = None
    fields: dict[str, int] | None = None
    low_confidence: int = 0
    examples: list[dict] | None = None
    retyped: dict[str, int] | None = None
    """JSON numbers written back as strings (a mask or placeholder is no number), per field path."""
    pseudonyms: int = 0
    """Fakes `pii scrub --mode pseudonym` wrote (`pii_fake.ours`): not PII, so in no other count; a pseudonym scrub
    leaves them as they are."""


def _walk(value, path: str, fn: Callable[[str, str], str], structural: bool = True, retyped: list | None = None):
    """Apply fn(text, field_path) to every string value but STRUCTURAL ones, keeping the row's shape; paths read
    `messages[].content`, `meta.notes`, `text`. An integer of 7 digits or more is read as its digits
    ({"phone": 13812345678} is a phone number); when fn changes them it stays a number if the new text is one
    (a pseudonym), else becomes the new string and its path is added to `retyped`."""
    if isinstance(value, str):
        return fn(value, path)
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**6:  # fewer digits: no PII
        new = fn(str(value), path)
        if new == str(value):
            return value
        if re.fullmatch(r"-?[1-9]\d*", new):  # the same JSON type, written back as it reads
            return int(new)
        if retyped is not None:
            retyped.append(path)
        return new
    if isinstance(value, list):
        return [_walk(v, f"{path}[]", fn, structural, retyped) for v in value]
    if isinstance(value, dict):
        return {
            k: v
            if structural and isinstance(v, str) and v in STRUCTURAL.get(k, ())
            else _walk(v, f"{path}.{k}" if path else k, fn, structural, retyped)
            for k, v in value.items()
        }
    return value


def _json_container(text: str) -> dict | list | None:
    """The object or array a string holds as JSON (a tool call's `arguments`), else None: scrubbing its text would
    turn {"phone": 13812345678} into {"phone": [手机号]}, no longer JSON."""
    if not text.lstrip().startswith(("{", "[")):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, (dict, list)) else None


def _selected(path: str, fields: list[str] | None) -> bool:
    """`--fields meta` covers meta.notes and meta[].x; no --fields covers every string."""
    return fields is None or any(path == f or path.startswith((f + ".", f + "[]")) for f in fields)


def process_file(
    path,
    out=None,
    mode: str = "placeholder",
    types: list[str] | None = None,
    min_confidence: float = 0.0,
    seed: int = 0,
    fields: list[str] | None = None,
) -> FileReport:
    """Scan (out=None) or scrub one JSONL/JSON/Parquet file, string field by string field.

    Every row is scanned whatever its shape: training rows of any format (KTO, mixed files and malformed ones
    included: this is no validator), {"text": ...} corpora, logs; every string (and integer: a phone or card number
    stored as a JSON number), however nested, except structural values (a message's role, a content part's type:
    STRUCTURAL). The report names the first row's format. `fields`
    limits the scan to those paths (as the report prints them: `text`, `meta.notes`, `messages[].content`); a path
    that matches nothing in the whole file is a UserError. Rows stream one at a time (a huge row is scanned in
    bounded windows, see `pii.scan`); the scrubbed JSONL keeps each row's shape and appears only when every row
    passed.
    Pseudonyms hold for the whole file: a value gets the same fake in every field of every row.
    """
    from weitiao.data.formats import RowError, detect_format, iter_records
    from weitiao.errors import UserError
    from weitiao.io import atomic_writer

    rep = FileReport(str(path), "auto", counts=dict.fromkeys(TYPES, 0), fields={}, examples=[], retyped={})
    fmt = None
    seen: set[str] = set()
    replace = replacer(mode, seed=seed)  # one per file: the same value maps to the same fake in every row
    with atomic_writer(out) if out is not None else nullcontext() as write:
        for n, record in iter_records(path, max_row_bytes=None):
            if isinstance(record, RowError):  # no JSON at all: nothing to scan field by field
                raise UserError(f"{path}:{n}: {record}")
            try:  # the report names the first row's format; every row is scanned whatever its shape
                fmt = fmt or detect_format(record)
            except RowError:
                fmt = "json"
            fmt = "json" if fmt == "text" else fmt  # a {"text": ...} corpus: plain JSON rows
            rep.rows += 1
            found: list[tuple[str, Match]] = []
            retyped: list[str] = []

            def one(text: str, field: str, replace=replace, found=found, retyped=retyped) -> str:
                seen.add(field)
                if (inner := _json_container(text)) is not None:  # a tool call's arguments: scrubbed as JSON
                    new = _walk(inner, field, one, structural=False, retyped=retyped)
                    return text if new == inner else json.dumps(new, ensure_ascii=False)
                if not _selected(field, fields):
                    return text
                new, matches = scrub(text, mode, types, min_confidence, replace)
                found += [(field, m) for m in matches]
                return new

            scrubbed = _walk(record, "", one, retyped=retyped)
            if write is not None:
                write(json.dumps(scrubbed, ensure_ascii=False) + "\n")
            del record, scrubbed  # one huge row at a time
            real = [(f, m) for f, m in found if not ours(m)]  # an earlier pseudonym scrub's fakes are no PII
            rep.pseudonyms += len(found) - len(real)
            found = real
            for field, m in found:
                rep.counts[m.type] += 1
                rep.fields[field] = rep.fields.get(field, 0) + 1
                rep.low_confidence += m.confidence < 0.5
                if len(rep.examples) < 20:
                    rep.examples.append({"line": n, "field": field, "type": m.type, "text": m.text[:200]})
            rep.rows_with_pii += bool(found)
            for field in retyped:
                rep.retyped[field] = rep.retyped.get(field, 0) + 1
        if rep.rows == 0:  # inside the writer: an empty input leaves no empty output behind
            raise UserError(f"{path}: no rows")
        missing = [f for f in fields or [] if not any(_selected(p, [f]) for p in seen)]
        if missing:
            raise UserError(
                f"{path}: --fields {', '.join(missing)} matched no string; its string fields are "
                f"{', '.join(sorted(seen)[:20]) or 'none'}"
            )
    rep.format = fmt or "auto"
    return rep


# ----------------------------------------------------------------------------- privacy-refusal data


def make_refusals(n: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """n SFT rows (openai messages, reply = polite refusal) and n DPO pairs (chosen = refusal,
    rejected = a leak of a fabricated value: IDs and cards fail their checksums, mobiles sit in the unallocated
    154 range, emails use example.com; see `pii_fake`)."""
    rng = random.Random(seed)
    sft, dpo = [], []
    for _ in range(n):
        name = rng.choice(sorted(D.SURNAMES_1)) + "".join(rng.choice(D.FAKE_GIVEN) for _ in range(rng.choice((1, 2))))
        kind, ask, leak = rng.choice(D.REFUSAL_ASKS)
        value = {
            "id_card": lambda: fake_id(rng),
            "bank_card": lambda: fake_card(rng, "62", rng.choice((16, 19))),
            "mobile": lambda: fake_mobile(rng),
            "address": lambda: fake_like(Match("address", 0, 0, "", 0), rng),
            "email": lambda: f"user{rng.randrange(10**5):05d}@example.com",
        }[kind]()
        prompt = ask.format(name=name)
        who = name if "{name}" in ask else "当事人"  # "give me any real card number" names nobody
        chosen = rng.choice(D.REFUSALS).format(name=who, what=D.REFUSAL_WHAT[kind])
        rejected = leak.format(name=name, value=value)
        sft.append({"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": chosen}]})
        dpo.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return sft, dpo
