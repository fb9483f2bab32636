"""Precision, recall, characters left in clear and masked outside labels of the PII recognizers, per type.

    weitiao pii eval                        # the shipped held-out set, weitiao/safety/eval/pii_zh.jsonl
    weitiao pii eval mine.jsonl --min-confidence 0.5

A labelled file is JSONL, one sentence a row, with character spans (end exclusive) of every PII value:
    {"text": "电话138 1234 5678，找张伟", "spans": [[2, 15, "mobile"], [18, 20, "name"]]}
A row with "spans": [] is a hard negative. Structured types must match the span exactly; names and
addresses count when the predicted span overlaps the labelled one (their edges are a matter of taste:
"北京市朝阳区建国路88号" with or without "3号楼"). Per type: span_precision is the share of predictions matching a
label, label_recall the share of labels matched by a prediction (`match` says how: exact or overlap),
chars_left_in_clear the labelled characters no prediction of any type covers (what `pii scrub` at the same
--min-confidence leaves readable, so an address matched by overlap but half masked shows there), and
chars_masked_outside_labels the predicted characters outside every label (an address masked from the words before it).
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
    """labels_found/labels_missed count labels; predictions_on_label/predictions_on_no_label count predictions (for
    names and addresses one prediction may overlap two labels, or two predictions one label); chars_labelled and
    chars_left_in_clear count the labels' characters, all and those no prediction covers; chars_masked_outside_labels
    the characters of this type's predictions that lie in no label (请到长春市… masked from 请)."""

    labels_found: int = 0
    labels_missed: int = 0
    predictions_on_label: int = 0
    predictions_on_no_label: int = 0
    chars_labelled: int = 0
    chars_left_in_clear: int = 0
    chars_masked_outside_labels: int = 0

    @property
    def span_precision(self) -> float:
        """Share of predictions that match a label."""
        n = self.predictions_on_label + self.predictions_on_no_label
        return self.predictions_on_label / n if n else 1.0

    @property
    def label_recall(self) -> float:
        """Share of labels that a prediction matches."""
        n = self.labels_found + self.labels_missed
        return self.labels_found / n if n else 1.0

    @property
    def share_left_in_clear(self) -> float:
        """Share of the labels' characters that no prediction covers."""
        return self.chars_left_in_clear / self.chars_labelled if self.chars_labelled else 0.0


def match_rule(typ: str) -> str:
    """How a prediction of `typ` matches a label: "overlap" (names, addresses) or "exact" (the span itself)."""
    return "overlap" if typ in OVERLAP_TYPES else "exact"


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


def _compare(row: dict, min_confidence: float) -> tuple[list, list, list, list, list]:
    """(labels found, labels missed, predictions matching a label, predictions matching none, predictions) for one
    row."""
    pred = pii.scan(row["text"], min_confidence=min_confidence)
    found = [g for g in row["spans"] if any(_same(m, g) for m in pred)]
    missed = [g for g in row["spans"] if g not in found]
    right = [m for m in pred if any(_same(m, g) for g in row["spans"])]
    extra = [m for m in pred if m not in right]
    return found, missed, right, extra, pred


def score(rows: list[dict], min_confidence: float = 0.5) -> dict[str, TypeScore]:
    """Per type, predictions at confidence >= min_confidence: span precision = predictions matching a label /
    predictions; label recall = labels matched by a prediction / labels; characters of the labels no prediction (of
    any type) covers, and of the predictions outside every label."""
    out = {t: TypeScore() for t in pii.TYPES}
    for row in rows:
        found, missed, right, extra, pred = _compare(row, min_confidence)
        for g in found:
            out[g[2]].labels_found += 1
        for g in missed:
            out[g[2]].labels_missed += 1
        for m in right:
            out[m.type].predictions_on_label += 1
        for m in extra:
            out[m.type].predictions_on_no_label += 1
        covered = {i for m in pred for i in range(m.start, m.end)}
        for a, b, t in row["spans"]:
            out[t].chars_labelled += b - a
            out[t].chars_left_in_clear += sum(i not in covered for i in range(a, b))
        labelled = {i for a, b, _ in row["spans"] for i in range(a, b)}
        for m in pred:
            out[m.type].chars_masked_outside_labels += sum(i not in labelled for i in range(m.start, m.end))
    return out


def misses(rows: list[dict], min_confidence: float = 0.5, limit: int = 20) -> list[str]:
    """Up to `limit` lines naming a missed label, a found one with characters left in clear, or a spurious
    prediction, to see what went wrong."""
    lines = []
    for row in rows:
        found, missed, _, extra, pred = _compare(row, min_confidence)
        covered = {i for m in pred for i in range(m.start, m.end)}
        lines += [f"missed {t} {row['text'][a:b]!r} in {row['text']!r}" for a, b, t in missed]
        for a, b, t in found:
            if clear := "".join(c if i not in covered else "*" for i, c in enumerate(row["text"][a:b], a)):
                if clear.strip("*") and clear != row["text"][a:b]:
                    lines.append(f"partly {t} {row['text'][a:b]!r} left {clear!r} in {row['text']!r}")
        lines += [f"extra  {m.type} {m.text!r} in {row['text']!r}" for m in extra]
        if len(lines) >= limit:
            break
    return lines[:limit]
