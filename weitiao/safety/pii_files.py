"""PII over data files and privacy-refusal data, on top of the recognizers in `weitiao.safety.pii`.

`process_file` scans or scrubs any supported data format field by field, keeping each row's shape;
`make_refusals` writes privacy-refusal SFT rows and DPO pairs whose rejected side leaks a fake value.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from weitiao.safety import pii_data as D
from weitiao.safety.pii import TYPES, Match, fake_card, fake_id, fake_like, replacer, scrub

# ----------------------------------------------------------------------------- files

SKIP_KEYS = {"role", "from", "type", "source", "id"}  # structural fields, never free text


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


def _walk(value, path: str, fn: Callable[[str, str], str]):
    """Apply fn(text, field_path) to every string value, keeping the row's shape."""
    if isinstance(value, str):
        return fn(value, path)
    if isinstance(value, list):
        return [_walk(v, f"{path}[]", fn) for v in value]
    if isinstance(value, dict):
        return {k: v if k in SKIP_KEYS else _walk(v, f"{path}.{k}" if path else k, fn) for k, v in value.items()}
    return value


def process_file(
    path,
    out=None,
    mode: str = "placeholder",
    types: list[str] | None = None,
    min_confidence: float = 0.0,
    seed: int = 0,
) -> FileReport:
    """Scan (out=None) or scrub one data file of any supported format, field by field.

    The file is validated with `load_rows` first (a bad row is a UserError naming file:line: field);
    then each raw record is walked so the scrubbed JSONL keeps the input's row shape. One row is one
    document for pseudonyms: a name in the user turn gets the same fake in the assistant turn.
    """
    from weitiao.data.formats import iter_records, load_rows
    from weitiao.io import write_jsonl

    fmt = load_rows(path).format
    rep = FileReport(str(path), fmt, counts=dict.fromkeys(TYPES, 0), fields={}, examples=[])
    rows_out = []
    for n, record in iter_records(path):
        rep.rows += 1
        found: list[tuple[str, Match]] = []
        replace = replacer(mode, seed=seed * 1_000_003 + n)

        def one(text: str, field: str, replace=replace, found=found) -> str:
            new, matches = scrub(text, mode, types, min_confidence, replace)
            found += [(field, m) for m in matches]
            return new

        rows_out.append(_walk(record, "", one))
        for field, m in found:
            rep.counts[m.type] += 1
            rep.fields[field] = rep.fields.get(field, 0) + 1
            rep.low_confidence += m.confidence < 0.5
            if len(rep.examples) < 20:
                rep.examples.append({"line": n, "field": field, "type": m.type, "text": m.text})
        rep.rows_with_pii += bool(found)
    if out is not None:
        write_jsonl(out, rows_out)
    return rep


# ----------------------------------------------------------------------------- privacy-refusal data


def make_refusals(n: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """n SFT rows (openai messages, reply = polite refusal) and n DPO pairs (chosen = refusal,
    rejected = a leak of a fabricated value: IDs and cards fail their checksums, emails use example.com)."""
    rng = random.Random(seed)
    sft, dpo = [], []
    for _ in range(n):
        name = rng.choice(sorted(D.SURNAMES_1)) + "".join(rng.choice(D.FAKE_GIVEN) for _ in range(rng.choice((1, 2))))
        kind, ask, leak = rng.choice(D.REFUSAL_ASKS)
        value = {
            "id_card": lambda: fake_id(rng),
            "bank_card": lambda: fake_card(rng, "62", rng.choice((16, 19))),
            "mobile": lambda: "1" + rng.choice("3456789") + "".join(str(rng.randrange(10)) for _ in range(9)),
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
