"""Provenance for reasoning models (Q143): p(article | prompt) when a hidden reasoning block precedes it.

    weitiao provenance --model r1-distill --prompt-file p.txt --text-file article.txt --reasoning-samples 32

An R1-style model writes `<think>` reasoning `</think>` and then the article; a reader sees only the
article, so the claim "M wrote this article for this prompt" is about the marginal

    p(article | prompt) = Σ_r p(r | prompt) · p(article | prompt, r)

over every reasoning trace r, which no forward pass gives. Estimated by importance sampling:
1. draw k traces r_i from the proposal q = the model at temperature T_q (no top-p/top-k, so q > 0
   wherever p > 0; T_q = 1 makes q = p), each up to the close tag (a trace still open after
   `max_trace` tokens is closed there, and counted as `unclosed`);
2. log w_i = Σ_t log p(r_i,t) − log q(r_i,t) (0 when T_q = 1);
3. l_i = log w_i + log p(sep + article | prompt, r_i, close tag);
4. log p̂ = logsumexp(l_i) − log k. p̂ is unbiased; its log is biased low by about se²/2 (Jensen).
   ESS = (Σ e^l_i)² / Σ e^(2 l_i); the standard error of log p̂ (delta method) is
   sd(e^(l_i − max)) / (mean(e^(l_i − max)) · √k).
5. The estimate is reported as conclusive only when se ≤ `max_se` nats and ESS ≥ `min_ess`; otherwise
   the report says that the hidden reasoning makes the check inconclusive (one trace dominates: the
   article's probability depends on reasoning we cannot see and did not sample well).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from weitiao.data.templates import ChatTemplate
from weitiao.errors import UserError
from weitiao.eval.provenance import Sampling, sample, score_tokens


@dataclass(frozen=True)
class ReasoningConfig:
    """How the hidden reasoning is delimited and sampled."""

    samples: int = 16  # k traces (0 = off)
    think_open: str = "<think>\n"  # appended to the prompt unless the template already ends with it
    think_close: str = "</think>"  # a trace ends when this is generated
    sep: str = "\n\n"  # what the model writes between the close tag and the article
    max_trace: int = 256  # tokens per trace before it is closed by force
    temperature: float = 1.0  # proposal temperature T_q (1 = the model itself: plain Monte Carlo)
    max_se: float = 0.5  # conclusive only when the standard error of log p̂ is at most this (nats) …
    min_ess: float = 3.0  # … and the effective sample size at least this
    seed: int = 0


def log_mean_exp(ls: list[float]) -> dict[str, float]:
    """log of the mean of e^l, the delta-method standard error of that log, and the effective sample size."""
    k, top = len(ls), max(ls)
    w = [math.exp(x - top) for x in ls]
    mean = sum(w) / k
    var = sum((x - mean) ** 2 for x in w) / (k - 1) if k > 1 else 0.0
    return {
        "log_p": top + math.log(mean),
        "se": math.sqrt(var / k) / mean,
        "ess": sum(w) ** 2 / sum(x * x for x in w),
    }


def _ids(tokenizer: Any, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []


def estimate(
    model: Any,
    tokenizer: Any,
    template: ChatTemplate,
    messages: list[dict],
    text: str,
    cfg: ReasoningConfig,
    with_eos: bool = False,
    end_id: int | None = None,
    article_ids: list[int] | None = None,
) -> dict[str, Any]:
    """log p(article | prompt) over sampled reasoning traces, with its standard error and ESS (see the top);
    `with_eos` scores the end of the reply after it: `end_id` (the id the per-token checks scored there, a base's
    EOS where the model ends with that), else the template's end-of-turn. `article_ids`: the article's tokens as the
    checks scored them (given ids, or the searched segmentation; the end included), instead of the text's."""
    if cfg.samples < 1 or cfg.temperature <= 0:
        raise UserError("--reasoning-samples must be ≥ 1 and --trace-temperature > 0")
    # 1. context: the prompt with the generation prompt, then the open tag unless the template wrote it
    prompt = template.render(tokenizer, messages, add_generation_prompt=True)
    opened = prompt.rstrip().endswith(cfg.think_open.strip())
    ctx = _ids(tokenizer, prompt if opened else prompt + cfg.think_open)
    close, sep = _ids(tokenizer, cfg.think_close), _ids(tokenizer, cfg.sep)
    end = tokenizer.convert_tokens_to_ids(template.eot) if end_id is None else end_id
    article = list(article_ids) if article_ids is not None else _ids(tokenizer, text) + ([end] if with_eos else [])
    if not close or not article:
        raise UserError("provenance: --think-close and the text must not be empty")
    q = Sampling(cfg.temperature, 1.0, 0)
    traces = sample(model, ctx, cfg.samples, cfg.max_trace, q, close, cfg.seed)
    ls, unclosed, lens = [], 0, []
    for drawn in traces:
        # 2. importance weight of the drawn tokens: log p − log q per token (raw vs tempered log-probs)
        log_w = 0.0
        if cfg.temperature != 1.0:
            st = score_tokens(model, ctx, drawn, q)
            log_w = float((st["logp"] - st["logp_t"]).sum())
        r = drawn
        if r[-len(close) :] != close:  # still open after max_trace tokens: closed here (not drawn: no weight)
            r, unclosed = r + close, unclosed + 1
        lens.append(len(r))
        # 3. the separator and the article after this trace (the model writes both)
        la = float(score_tokens(model, ctx + r, sep + article, q)["logp"].sum())
        ls.append(log_w + la)
    # 4-5. log-mean-exp, standard error, ESS, verdict
    est = log_mean_exp(ls)
    conclusive = est["se"] <= cfg.max_se and est["ess"] >= min(cfg.min_ess, cfg.samples)
    note = (
        f"log p(article | prompt) ≈ {est['log_p']:.2f} ± {est['se']:.2f} nats over {cfg.samples} sampled reasoning "
        f"traces (ESS {est['ess']:.1f})"
    )
    if not conclusive:
        note = (
            f"the hidden reasoning makes the check inconclusive: over {cfg.samples} sampled traces the estimate of "
            f"log p(article | prompt) has standard error {est['se']:.2f} nats (> {cfg.max_se}) or ESS {est['ess']:.1f} "
            f"(< {cfg.min_ess}); the article's probability depends on reasoning we cannot see"
        )
    return {
        "k": cfg.samples,
        **est,
        "bits_per_char": -est["log_p"] / math.log(2) / max(1, len(text)),
        "per_trace": ls,
        "trace_tokens": lens,
        "unclosed": unclosed,
        "trace_temperature": cfg.temperature,
        "conclusive": conclusive,
        "note": note,
    }
