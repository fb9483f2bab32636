"""`weitiao score --rm R FILE`: reward-model scores for replies or preference pairs.

SFT-format rows get one score (their last assistant reply); preference rows get a score for each
side and the file's pairwise accuracy (chosen scored strictly higher; exact ties are wrong and counted in
`pair_ties`). Output: the rows with `score` (or `score_chosen`,
`score_rejected`) added, as JSONL. Rows longer than the model's context lose their oldest turns;
a row whose last exchange alone is too long gets no score (null) and is counted as refused.
A reward model trained on raw text pairs (`data.format: preference_raw`) scores string pairs the same way:
prompt + reply + EOS, no template (a pair over the context is refused); chats are refused for it.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from weitiao.data.chat import EncodeOptions, encode
from weitiao.data.formats import Conversation, Document, PreferencePair, data_files, load_rows, parse_raw_preference
from weitiao.data.templates import resolve_template
from weitiao.data.tools import uses_tools
from weitiao.errors import UserError
from weitiao.io import claim_outputs, write_jsonl
from weitiao.models.reward_dir import RAW, reward_meta


def context_len(model: Any) -> int:
    """The longest sequence the model takes (max_position_embeddings)."""
    n = getattr(model.config, "max_position_embeddings", None)
    if not isinstance(n, int) or n <= 0:
        raise UserError(f"model config has no max_position_embeddings ({n!r}); cannot bound row length")
    return n


def score_conversations(
    model: Any,
    tokenizer: Any,
    convs: list[Conversation],
    batch_size: int = 16,
    stats: dict | None = None,
    per_row: int = 1,
) -> list[float | None]:
    """Score the last assistant reply of each conversation (None: too long for the model's context).

    Rows over the context drop their oldest exchanges first; `stats` counts the rows `cut` and `refused`, a row
    being `per_row` consecutive conversations (2: a pair's sides), refused if any is, else cut if any is.
    """
    template = resolve_template(tokenizer, "auto")
    with_tools = next((c for c in convs if uses_tools(c)), None)
    if with_tools is not None and not template.supports_tools:  # encode's own hint names training options
        raise UserError(
            f"{with_tools.source}: this row has tools or tool calls, which the reward model's template "
            f"{template.name!r} cannot render; score rows without tools, or train the reward model with "
            "data.template: qwen or llama3"
        )
    # a reply holding a special token's text is scored as tokenized (a policy's stray <|im_start|> included)
    opts = EncodeOptions(max_len=context_len(model), train_turns="last", truncation="history", refuse_special=False)
    # `weight: 0` is a training flag: a last reply carrying it is still the reply scored (it would label no token).
    convs = [replace(c, messages=[{k: v for k, v in m.items() if k != "weight"} for m in c.messages]) for c in convs]
    encoded = [encode(c, tokenizer, template, opts) for c in convs]
    if stats is not None:  # per row: one pair with both sides over the context is one row refused, not two
        rows = [encoded[k : k + per_row] for k in range(0, len(encoded), per_row)]
        refused = sum(any(e is None for e in r) for r in rows)
        stats["refused"] = stats.get("refused", 0) + refused
        stats["cut"] = stats.get("cut", 0) + sum(
            all(e is not None for e in r) and any(e.truncated == "history" for e in r) for r in rows
        )
    keep = [i for i, e in enumerate(encoded) if e is not None]
    got = _scores(model, tokenizer, [encoded[i] for i in keep], batch_size)
    out: list[float | None] = [None] * len(convs)
    for i, s in zip(keep, got):
        out[i] = s
    return out


def _scores(model: Any, tokenizer: Any, exs: list, batch_size: int) -> list[float]:
    """The reward model's score of each encoded example (read at its last labelled token), `batch_size` at a time."""
    import torch  # here, with the model code: a wrong FILE or --rm is said before torch loads

    from weitiao.data.collate import collate
    from weitiao.models.heads import SequenceScorer

    scorer, device = SequenceScorer(model), next(model.parameters()).device
    got: list[float] = []
    for k in range(0, len(exs), batch_size):
        rows = [[i] for i in range(k, min(k + batch_size, len(exs)))]
        b = collate(exs, rows, tokenizer.pad_token_id, packing=False).to(device)
        with torch.no_grad():
            got += scorer(b.input_ids, b.targets, b.position_ids, b.attention_mask, b.seq_index, len(rows)).tolist()
    return got


def score_pairs(
    model: Any, tokenizer: Any, pairs: list[PreferencePair], stats: dict | None = None
) -> tuple[list[float | None], list[float | None]]:
    convs = [p.conversation(side) for p in pairs for side in ("chosen", "rejected")]
    s = score_conversations(model, tokenizer, convs, stats=stats, per_row=2)
    return s[0::2], s[1::2]


def score_raw_pairs(
    model: Any, tokenizer: Any, pairs: list[PreferencePair], stats: dict, batch_size: int = 16
) -> tuple[list[float | None], list[float | None]]:
    """Scores of raw text pairs as `weitiao rm` trains on them (data.format preference_raw): prompt + reply + EOS,
    read at the EOS; a pair over the model's context gets None (counted as refused)."""
    from weitiao.data.preference import encode_pair

    template = resolve_template(tokenizer, "auto")  # unused by raw text, which encode_pair takes as documents
    encoded = [encode_pair(p, tokenizer, template, context_len(model)) for p in pairs]
    stats["refused"] = stats.get("refused", 0) + sum(e is None for e in encoded)
    it = iter(_scores(model, tokenizer, [side for e in encoded if e is not None for side in e], batch_size))
    both = [(next(it), next(it)) if e is not None else (None, None) for e in encoded]
    return [c for c, _ in both], [r for _, r in both]


def raw_pairs(rows: list, rm_path: str, hh_records: dict[int, dict]) -> list[PreferencePair]:
    """The rows as raw text pairs for a reward model trained on them; anything else is refused (one line).
    `hh_records`: the JSON record of each HH transcript pair (by id of its row), read again as raw text."""
    for i, r in enumerate(rows):
        if isinstance(r, PreferencePair) and r.form == "hh":
            rows[i] = r = replace(parse_raw_preference(hh_records[id(r)]), source=r.source)
        if not isinstance(r, PreferencePair) or r.form not in ("string", "raw"):
            raise UserError(
                f"{r.source}: {rm_path} was trained on raw text pairs (data.format: preference_raw), so it scores "
                "prompt/chosen/rejected strings only; give such rows, or train the reward model on chat pairs"
            )
        r.form = "raw"
    return rows


def run(
    rm_path: str,
    file: str,
    out: str | None = None,
    model: str | None = None,
    quant: str | None = None,
    skip_invalid: bool = False,
) -> dict:
    """Score every row of `file`; write `<file>.scores.jsonl` (or `out`); return a summary.

    `model`/`quant` override the reward model's recorded base and training quantization; `skip_invalid`
    writes bad rows to `<file>.rejects.jsonl` instead of stopping at the first.
    """
    if quant not in (None, "none", "4bit", "8bit"):  # before anything is read or loaded (it was a pydantic traceback)
        raise UserError(f"--quant {quant}: choose none, 4bit or 8bit")
    dest = Path(out or f"{file}.scores.jsonl")
    claim_outputs([dest], [file, *data_files([file])])  # FILE may be a folder or a glob: each file it reads
    hh: dict[int, dict] = {}  # HH transcripts' records: a raw-text RM scores their text, not the chat read

    def keep(record: dict, row: Any) -> None:
        if getattr(row, "form", "") == "hh":
            hh[id(row)] = record

    rows = load_rows(file, skip_invalid=skip_invalid, on_record=keep).rows
    if not rows:
        raise UserError(f"{file}: no rows")
    root, meta = reward_meta(rm_path)
    given = [f"{f} {v}" for f, v in (("--model", model), ("--quant", quant)) if v is not None]
    if given and not (root / "adapter").exists():  # a full reward model loads as saved: they were ignored
        raise UserError(f"{' and '.join(given)}: {root} is a full reward model (model/), loaded as saved; "
                        "--model and --quant choose a LoRA reward model's base only: drop them")  # fmt: skip
    raw = meta.get("format") == RAW
    if raw:
        rows = raw_pairs(rows, rm_path, hh)
    if doc := next((r for r in rows if isinstance(r, Document)), None):  # else left out of the output, unscored
        raise UserError(
            f"{doc.source}: a raw-text row (text, or string prompt/completion), which has no chat reply to score; "
            "give chat rows (the last assistant reply is scored: messages, or prompt/completion as message lists) "
            "or prompt/chosen/rejected pairs"
        )
    from weitiao.models.heads import load_reward_model

    rm, tokenizer, _ = load_reward_model(rm_path, base=model, quant=quant)
    pairs = [r for r in rows if isinstance(r, PreferencePair)]
    convs = [r for r in rows if isinstance(r, Conversation)]
    stats: dict[str, int] = {"cut": 0, "refused": 0}
    scored_rows, summary = {}, {"rows": len(rows)}  # id(row) → its record, written in the file's order
    if pairs:
        rc, rr = (score_raw_pairs if raw else score_pairs)(rm, tokenizer, pairs, stats)
        scored_rows |= {
            id(p): {"source": p.source, "score_chosen": c, "score_rejected": r} for p, c, r in zip(pairs, rc, rr)
        }
        both = [(c, r) for c, r in zip(rc, rr) if c is not None and r is not None]
        if both:
            # strict as in training: an exact tie counts as wrong (TRL leaves ties out); pair_ties counts them
            summary["pair_accuracy"] = sum(c > r for c, r in both) / len(both)
            summary["pair_ties"] = sum(c == r for c, r in both)
            summary["mean_margin"] = sum(c - r for c, r in both) / len(both)
    if convs:
        scores = score_conversations(rm, tokenizer, convs, stats=stats)
        scored_rows |= {
            id(c): {"source": c.source, "reply": c.messages[-1]["content"], "score": s} for c, s in zip(convs, scores)
        }
        scored = [s for s in scores if s is not None]
        if scored:
            summary["mean_score"] = sum(scored) / len(scored)
    summary.update(context=context_len(rm), cut_to_context=stats["cut"], refused_over_context=stats["refused"])
    write_jsonl(dest, [scored_rows[id(r)] for r in rows])
    summary["out"] = str(dest)
    return json.loads(json.dumps(summary))
