"""`weitiao eval gen`: answer every prompt of a file with one model, then score the replies.

1. prompts (+ a row-aligned reference file) → 2. model + chat template, every prompt checked against the
context → 3. generate → 4. judge scores when a judge is given → 5. reply metrics, per reply and overall.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from weitiao.data.prompts import Prompt
from weitiao.errors import UserError
from weitiao.eval.golden import check_context, check_max_new_tokens, load_prompts
from weitiao.eval.metrics import RUBRIC, Item, MetricSettings, Scale, item_metrics, judge_scores, reply_metrics


def check_decoding(
    max_new_tokens: int, temperature: float | None, top_p: float | None, repetition_penalty: float | None
) -> None:
    """One UserError naming the flag for a decoding value that generation cannot use (`eval gen`, `chat`); None is
    left to the model folder."""
    check_max_new_tokens(max_new_tokens)
    if temperature is not None and not temperature >= 0:  # also NaN
        raise UserError(f"--temperature {temperature}: must be >= 0 (0 = greedy)")
    if top_p is not None and not 0 < top_p <= 1:
        raise UserError(f"--top-p {top_p}: must be in (0, 1] (1 = off)")
    if repetition_penalty is not None and not repetition_penalty > 0:
        raise UserError(f"--repetition-penalty {repetition_penalty}: must be > 0 (1 = off)")


@dataclass
class GenSettings:
    """How replies are generated."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    """0 = greedy."""
    top_p: float = 1.0
    """Nucleus mass kept, in (0, 1] (1 = off)."""
    repetition_penalty: float | None = None
    """CTRL penalty on tokens already in prompt or reply (1 = off; default: the model's generation_config.json)."""
    no_repeat_ngram_size: int = 0
    """Forbid repeating any n-gram of this many tokens (0 = off)."""
    batch_size: int = 8
    """Replies generated together (>= 1)."""
    seed: int = 0
    """Sampling: prompt k draws from its own stream seeded seed + k (the same replies at any batch size)."""

    def __post_init__(self) -> None:
        check_decoding(self.max_new_tokens, self.temperature, self.top_p, self.repetition_penalty)
        if self.batch_size < 1:  # 0 admitted no row: generation waited forever
            raise UserError(f"--batch-size {self.batch_size}: must be >= 1")
        if self.no_repeat_ngram_size < 0:
            raise UserError(f"--no-repeat-ngram-size {self.no_repeat_ngram_size}: must be >= 0 (0 = off)")


@dataclass
class GenReport:
    metrics: dict[str, float]
    rows: list[dict] = field(default_factory=list)  # per prompt: source, prompt, reference, reply, metrics
    judge_errors: list[str] = field(default_factory=list)
    judge_scale: Scale | None = None  # the judge's score range (judge = (score - lo) / (hi - lo)); None: no judge

    def to_dict(self) -> dict[str, Any]:
        scale = {"judge_scale": list(self.judge_scale)} if self.judge_scale else {}
        return {"metrics": self.metrics, **scale, "judge_errors": self.judge_errors, "rows": self.rows}


def read_prompts(prompts: str | Path, refs: str | Path | None = None) -> list[Prompt]:
    """The prompt file; with `refs`, each prompt's reference is the same row's of that file, which must ask the same
    last question and give a reference (a row without one erased the prompt file's own, a shifted row scored every
    reply against another prompt's answer)."""
    ps = load_prompts(prompts)
    if refs is not None:
        rs = load_prompts(refs)
        if len(rs) != len(ps):
            raise UserError(f"--refs {refs}: {len(rs)} rows but --prompts has {len(ps)}; they must align")
        for p, r in zip(ps, rs):
            if r.text != p.text:
                raise UserError(f"{r.source}: asks {r.text[:40]!r}, but {p.source} asks {p.text[:40]!r}; --refs rows "
                                "must align with --prompts rows")  # fmt: skip
            if r.reference is None:
                raise UserError(f"{r.source}: no reference (a last assistant turn, or reference/answer/output)")
            p.reference = r.reference
    return ps


def run(
    prompts: list[Prompt],
    model: str | None = None,
    adapter: str | None = None,
    quant: str | None = None,
    gen: GenSettings | None = None,
    settings: MetricSettings | None = None,
    judge: Any = None,
    rubric: str = RUBRIC,
    scale: Scale = (1, 10),
) -> GenReport:
    """Steps 2–5 above; `judge` is a `weitiao.teacher.Teacher` (or None) scoring on `scale`."""
    from weitiao.data.templates import resolve_template
    from weitiao.infer.chat import load_chat_model
    from weitiao.infer.generate import generate

    gen, settings = gen or GenSettings(), settings or MetricSettings()
    # 2. model, template, context check
    m, tok = load_chat_model(model, adapter, quant)
    template = resolve_template(tok, "auto")
    check_context(m, tok, template, prompts, gen.max_new_tokens)
    # 3. generate
    gens = generate(m, tok, template, [p.messages for p in prompts], gen.max_new_tokens, gen.temperature, gen.top_p,
                    repetition_penalty=gen.repetition_penalty, no_repeat_ngram_size=gen.no_repeat_ngram_size,
                    batch_size=gen.batch_size, seed=gen.seed)  # fmt: skip
    # 4. judge
    scores: list = [None] * len(prompts)
    errors: list[str] = []
    if judge is not None:
        scores, errors = judge_scores(judge, [p.messages for p in prompts], [g.text for g in gens], rubric,
                                      [p.reference for p in prompts], scale)  # fmt: skip
    # 5. metrics
    items = [Item(g.text, g.stopped, p.reference, p.history, s) for p, g, s in zip(prompts, gens, scores)]
    rows = [
        {"source": p.source, "prompt": p.messages, "reference": p.reference, "reply": g.text, "stopped": g.stopped,
         "n_tokens": g.n_tokens, "metrics": item_metrics(it, settings)}
        for p, g, it in zip(prompts, gens, items)
    ]  # fmt: skip
    return GenReport(reply_metrics(items, settings), rows, errors, scale if judge is not None else None)
