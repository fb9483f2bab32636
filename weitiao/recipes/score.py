"""`weitiao score --rm R FILE`: reward-model scores for replies or preference pairs.

SFT-format rows get one score (their last assistant reply); preference rows get a score for each
side and the file's pairwise accuracy. Output: the rows with `score` (or `score_chosen`,
`score_rejected`) added, as JSONL.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from weitiao.data.chat import EncodeOptions, encode
from weitiao.data.collate import collate
from weitiao.data.formats import Conversation, PreferencePair, load_rows
from weitiao.data.templates import resolve_template
from weitiao.io import write_jsonl
from weitiao.models.heads import SequenceScorer, load_reward_model


@torch.no_grad()
def score_conversations(model: Any, tokenizer: Any, convs: list[Conversation], batch_size: int = 16) -> list[float]:
    """Score the last assistant reply of each conversation (no length limit; batches are packed)."""
    template = resolve_template(tokenizer, "auto")
    opts = EncodeOptions(max_len=10**9, train_turns="last")
    exs = [encode(c, tokenizer, template, opts) for c in convs]
    scorer = SequenceScorer(model)
    device = next(model.parameters()).device
    out: list[float] = []
    for k in range(0, len(exs), batch_size):
        rows = [[i] for i in range(k, min(k + batch_size, len(exs)))]
        b = collate(exs, rows, tokenizer.pad_token_id, packing=False).to(device)
        out += scorer(b.input_ids, b.targets, b.position_ids, b.attention_mask, b.seq_index, len(rows)).tolist()
    return out


def score_pairs(model: Any, tokenizer: Any, pairs: list[PreferencePair]) -> tuple[list[float], list[float]]:
    convs = [p.conversation(side) for p in pairs for side in ("chosen", "rejected")]
    s = score_conversations(model, tokenizer, convs)
    return s[0::2], s[1::2]


def run(rm_path: str, file: str, out: str | None = None) -> dict:
    """Score every row of `file`; write `<file>.scores.jsonl` (or `out`); return a summary."""
    model, tokenizer, _ = load_reward_model(rm_path)
    rows = load_rows(file).rows
    pairs = [r for r in rows if isinstance(r, PreferencePair)]
    convs = [r for r in rows if isinstance(r, Conversation)]
    records, summary = [], {"rows": len(rows)}
    if pairs:
        rc, rr = score_pairs(model, tokenizer, pairs)
        records += [{"source": p.source, "score_chosen": c, "score_rejected": r} for p, c, r in zip(pairs, rc, rr)]
        summary["pair_accuracy"] = sum(c > r for c, r in zip(rc, rr)) / len(pairs)
        summary["mean_margin"] = sum(c - r for c, r in zip(rc, rr)) / len(pairs)
    if convs:
        scores = score_conversations(model, tokenizer, convs)
        records += [{"source": c.source, "reply": c.messages[-1]["content"], "score": s} for c, s in zip(convs, scores)]
        summary["mean_score"] = sum(scores) / len(scores)
    dest = Path(out or f"{file}.scores.jsonl")
    write_jsonl(dest, records)
    summary["out"] = str(dest)
    return json.loads(json.dumps(summary))
