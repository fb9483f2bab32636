"""Unpaired feedback for KTO: rows read, eval split off, tokenized; and the mismatched rows of a batch's KL term.

A row is one reply judged good or bad (`weitiao.data.formats.Feedback`). A chat is rendered through the
template with loss on its last reply and that reply's end-of-turn token, as SFT and DPO do; TRL's string
prompt/completion rows are raw text (prompt + completion + EOS, no template), as TRL trains them.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from weitiao.data.chat import (
    IGNORE,
    Encoded,
    EncodeOptions,
    EncodeStats,
    encode_all,
    row_check,
)
from weitiao.data.formats import CONFIG_SKIP_HINT, Conversation, Document, Feedback, LoadResult, load_rows
from weitiao.data.prep import (
    count_overlap,
    kept,
    messages_key,
    overlap_warning,
    require_eval_left,
    require_rows,
    split_eval,
)
from weitiao.data.templates import ChatTemplate, fallback_note, resolve_template
from weitiao.errors import UserError
from weitiao.train.spec import FeedbackDataSpec, TrainSpec


@dataclass
class FeedbackData:
    template: ChatTemplate
    train: list[Encoded]
    eval: list[Encoded]
    desirable: list[bool]  # per train example
    eval_desirable: list[bool]
    read: int
    rejected: int
    dropped: int  # train and eval rows over max_len (data.truncation drop, or a prompt that fills max_len)
    cut: int
    raw: bool  # every row is raw text (no template renders any of them)
    content_key: str = ""  # digest of the train rows' texts in order (resume on edited data is refused)
    eval_copies: int = 0  # copies of held-out rows kept out of both sides by data.eval_split

    def rows_line(self) -> str:
        """Every row read accounted for, with the desirable:undesirable counts of the train rows."""
        good = sum(self.desirable)
        return (
            f"rows: {self.read} read = {len(self.train)} train ({good} desirable, {len(self.train) - good} "
            f"undesirable) + {len(self.eval)} eval + {self.eval_copies} eval copies + {self.rejected} rejected + "
            f"{self.dropped} over max_len ({self.cut} cut)"
        )

    def counts(self) -> dict:
        """The same counts for the run's `data` record (metrics.jsonl)."""
        good = sum(self.desirable)
        return {"read": self.read, "kept": len(self.train), "desirable": good, "undesirable": len(self.train) - good,
                "eval_rows": len(self.eval), "eval_copies": self.eval_copies, "rejected": self.rejected,
                "dropped_too_long": self.dropped, "cut": self.cut, "template": self.template.name}  # fmt: skip


def feedback_text_key(fb: Feedback) -> str:
    """A row's prompt and reply, whatever its label: copies judged both ways stay on one side of data.eval_split."""
    row = fb.row
    return messages_key(row.messages) if isinstance(row, Conversation) else f"{row.prompt}\x1e{row.text}"


def feedback_key(fb: Feedback) -> str:
    """A row's identity: prompt, reply and label."""
    return f"{feedback_text_key(fb)}\x1d{fb.desirable}"


def _load(
    paths: list, d: FeedbackDataSpec, rejects: Path, tokenizer: Any, template: ChatTemplate, key: str
) -> LoadResult:
    check = row_check(tokenizer, template)
    res = load_rows(paths, "auto", d.skip_invalid, rejects, d.max_row_bytes, dataset_dir=d.dataset_dir,
                    skip_hint=CONFIG_SKIP_HINT, row_check=check, feedback=True)  # fmt: skip
    require_rows(res, key)
    for note in res.notes if os.environ.get("RANK", "0") == "0" else ():
        print(f"note: {note}")
    return res


def _encode(
    rows: list[Feedback], tokenizer: Any, template: ChatTemplate, d: FeedbackDataSpec
) -> tuple[list[Encoded], list[bool], EncodeStats, int]:
    """Encoded rows with their labels, the encoding stats, and rows left with no reply token (a cut prompt)."""
    opts = EncodeOptions(d.max_len, train_turns="last", truncation=d.truncation)
    encoded, stats = encode_all([fb.row for fb in rows], tokenizer, template, opts)
    labels = [fb.desirable for fb in kept(rows, stats.dropped_rows)]
    assert len(labels) == len(encoded)  # one example per kept row: a reply row is never split into pieces
    if bad := next((e for e in encoded if not e.n_trained and e.truncated != "cut"), None):
        raise UserError(f"{bad.source}: weight: the judged reply (the last assistant turn) has weight 0, so there is "
                        "nothing to judge; drop its weight")  # fmt: skip
    both = [(e, good) for e, good in zip(encoded, labels) if e.n_trained]  # cut in the prompt: no reply token left
    return [e for e, _ in both], [good for _, good in both], stats, len(encoded) - len(both)


def prepare_feedback(
    d: FeedbackDataSpec, t: TrainSpec, tokenizer: Any, rejects_dir: Path | None = None
) -> FeedbackData:
    """Rows read, split, tokenized; bad rows (data.skip_invalid) go to `rejects_dir` (default train.out)."""
    template = resolve_template(tokenizer, d.template)
    rejects = Path(rejects_dir or t.out) / "rejects.jsonl"
    loaded = _load(d.train, d, rejects, tokenizer, template, "data.train")
    rows, read, rejected, copies = loaded.rows, loaded.read, loaded.rejected, 0
    if d.eval:
        ev = _load(d.eval, d, rejects.with_name("eval_rejects.jsonl"), tokenizer, template, "data.eval")
        eval_rows, read, rejected = ev.rows, read + ev.read, rejected + ev.rejected
    elif d.eval_split:
        # copies stay on one side, those labelled otherwise too (a reply judged good trained, judged bad held out)
        split = split_eval(rows, d.eval_split, t.seed, feedback_text_key)
        rows, eval_rows, copies = split.train, split.eval, split.eval_copies_dropped
    else:
        eval_rows = []
    main = os.environ.get("RANK", "0") == "0"
    if (overlap := count_overlap(rows, eval_rows, feedback_text_key)) and main:
        print("warning: " + overlap_warning("data.eval", overlap, len(eval_rows)))
    raw = all(isinstance(fb.row, Document) for fb in rows + eval_rows)
    if raw and d.template != "auto":  # it rendered nothing, and the run's data record named it
        raise UserError(f"data.template: {d.template!r} renders no row: every row is raw text (string prompt and "
                        "completion, trained as prompt + completion + EOS, as TRL); drop data.template, or write "
                        "prompt and completion as message lists to train them through the template")  # fmt: skip
    if not raw and main and (note := fallback_note(d.template, template, tokenizer)):
        print(f"note: {note}")
    train, desirable, stats, idle = _encode(rows, tokenizer, template, d)
    evals, eval_desirable, eval_stats, eval_idle = _encode(eval_rows, tokenizer, template, d)
    if not train:
        raise UserError(f"data.train: no rows left after truncation {d.truncation!r} (max_len {d.max_len})")
    require_eval_left(d, len(eval_rows), len(evals))
    dropped = stats.dropped_too_long + eval_stats.dropped_too_long + idle + eval_idle
    content = hashlib.sha256("\x00".join(map(feedback_key, rows)).encode()).hexdigest()[:16]
    cut = stats.cut + eval_stats.cut - idle - eval_idle
    return FeedbackData(
        template, train, evals, desirable, eval_desirable, read, rejected, dropped, cut, raw, content, copies
    )


def prompt_len(ex: Encoded) -> int:
    """Tokens before the reply (the first trained token)."""
    return next(i for i, x in enumerate(ex.labels) if x != IGNORE)


def mismatched(examples: list[Encoded], order: list[int], max_len: int) -> list[Encoded]:
    """The KL rows of a micro-batch (examples `order`, row-major): prompt k with the reply of example k − 1
    (the last reply goes to the first prompt), as TRL rotates completions by one within a batch; cut at `max_len`
    (kto passes the smaller of data.max_len and the model's context)."""
    out = []
    for k, i in enumerate(order):
        j = order[k - 1]
        p, q = prompt_len(examples[i]), prompt_len(examples[j])
        ids = examples[i].input_ids[:p] + examples[j].input_ids[q:]
        labels = [IGNORE] * p + examples[j].labels[q:]
        out.append(Encoded(ids[:max_len], labels[:max_len], examples[i].source))
    return out
