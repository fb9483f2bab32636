"""Precision and recall of the PII recognizers on a labelled set, per type.

    weitiao pii eval                        # the shipped held-out set, weitiao/safety/eval/pii_zh.jsonl
    weitiao pii eval mine.jsonl --min-confidence 0.5

A labelled file is JSONL, one sentence a row, with character spans (end exclusive) of every PII value:
    {"text": "电话138 1234 5678，找张伟", "spans": [[2, 15, "mobile"], [18, 20, "name"]]}
A row with "spans": [] is a hard negative. Structured types must match the span exactly; names and
addresses count when the predicted span overlaps the labelled one (their edges are a matter of taste:
"北京市朝阳区建国路88号" with or without "3号楼"). Precision is the share of predictions matching a label,
recall the share of labels matched by a prediction.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from weitiao.errors import UserError
from weitiao.io import read_jsonl
from weitiao.safety import pii

HELD_OUT = Path(__file__).parent / "eval" / "pii_zh.jsonl"
OVERLAP_TYPES = {"name", "address"}


@dataclass
class TypeScore:
    """tp/fn count labels (found/missed), fp and tp_pred count predictions (matching no label / some label): for
    names and addresses one prediction may overlap two labels, or two predictions one label."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tp_pred: int = 0

    @property
    def precision(self) -> float:
        """Share of predictions that match a label."""
        return self.tp_pred / (self.tp_pred + self.fp) if self.tp_pred + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0


def load_labelled(path: str | Path) -> list[dict]:
    """Rows of a labelled file, checked: a bad row is a UserError naming file:line and the field."""
    rows = []
    for n, row in read_jsonl(path):
        where = f"{path}:{n}"
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise UserError(f'{where}: text: expected {{"text": str, "spans": [[start, end, type], ...]}}')
        spans = row.get("spans")
        if not isinstance(spans, list):
            raise UserError(f"{where}: spans: expected a list of [start, end, type] (may be empty)")
        for i, s in enumerate(spans):
            ok = isinstance(s, list) and len(s) == 3 and all(isinstance(x, int) for x in s[:2])
            if not ok or not 0 <= s[0] < s[1] <= len(row["text"]) or s[2] not in pii.TYPES:
                raise UserError(
                    f"{where}: spans[{i}]: {s!r} is not [start, end, type] inside the text with a type "
                    f"among {', '.join(pii.TYPES)}"
                )
        rows.append(row)
    if not rows:
        raise UserError(f"{path}: no rows")
    return rows


def _same(m: pii.Match, g: list) -> bool:
    if m.type != g[2]:
        return False
    return m.start < g[1] and g[0] < m.end if m.type in OVERLAP_TYPES else (m.start, m.end) == (g[0], g[1])


def _compare(row: dict, min_confidence: float) -> tuple[list, list, list, list]:
    """(labels found, labels missed, predictions matching a label, predictions matching none) for one row."""
    pred = pii.scan(row["text"], min_confidence=min_confidence)
    found = [g for g in row["spans"] if any(_same(m, g) for m in pred)]
    missed = [g for g in row["spans"] if g not in found]
    right = [m for m in pred if any(_same(m, g) for g in row["spans"])]
    extra = [m for m in pred if m not in right]
    return found, missed, right, extra


def score(rows: list[dict], min_confidence: float = 0.5) -> dict[str, TypeScore]:
    """Per type: precision = predictions (confidence >= min_confidence) matching a label / predictions; recall =
    labels matched by a prediction / labels."""
    out = {t: TypeScore() for t in pii.TYPES}
    for row in rows:
        found, missed, right, extra = _compare(row, min_confidence)
        for g in found:
            out[g[2]].tp += 1
        for g in missed:
            out[g[2]].fn += 1
        for m in right:
            out[m.type].tp_pred += 1
        for m in extra:
            out[m.type].fp += 1
    return out


def misses(rows: list[dict], min_confidence: float = 0.5, limit: int = 20) -> list[str]:
    """Up to `limit` lines naming a missed label or a spurious prediction, to see what went wrong."""
    lines = []
    for row in rows:
        _, missed, _, extra = _compare(row, min_confidence)
        lines += [f"missed {t} {row['text'][a:b]!r} in {row['text']!r}" for a, b, t in missed]
        lines += [f"extra  {m.type} {m.text!r} in {row['text']!r}" for m in extra]
        if len(lines) >= limit:
            break
    return lines[:limit]
