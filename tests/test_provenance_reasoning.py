"""Provenance for reasoning models: log-mean-exp statistics by hand, the estimator equal to the exact value
when the hidden trace is deterministic, inconclusive when it is not sampled well, and the CLI with
--reasoning-samples and an adapter as --baseline-model."""

from __future__ import annotations

import json
import math

import pytest
import torch
from test_provenance import MSGS, peaked_model
from typer.testing import CliRunner

from weitiao.data.templates import resolve_template
from weitiao.eval.provenance import Sampling, sample, score_tokens
from weitiao.eval.provenance_reasoning import ReasoningConfig, estimate, log_mean_exp

TEXT = "挺好的，大晴天☀️，要出去玩吗？"


def test_log_mean_exp_by_hand():
    r = log_mean_exp([0.0, math.log(3.0)])  # mean of e^l = (1 + 3) / 2
    assert r["log_p"] == pytest.approx(math.log(2.0))
    assert r["ess"] == pytest.approx(16 / 10)  # (1 + 3)² / (1 + 9)
    # weights relative to the max: 1/3, 1 → mean 2/3, sample sd √(2/9), se = sd/√2 / mean = 0.5
    assert r["se"] == pytest.approx(0.5)
    same = log_mean_exp([-7.25] * 5)
    assert same == {"log_p": pytest.approx(-7.25), "se": 0.0, "ess": pytest.approx(5.0)}


def _exact_after(model, ids: list[int], n_article: int) -> float:
    """log p of the last n_article tokens of `ids` by one direct forward (independent of score_tokens)."""
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), -1)
    return float(sum(logp[i - 1, ids[i]] for i in range(len(ids) - n_article, len(ids))))


@pytest.mark.parametrize("trace_temperature", [1.0, 0.5])
def test_estimate_equals_the_exact_value_when_the_trace_is_deterministic(tokenizer, trace_temperature):
    # lm_head × 1e4: every next-token distribution is one-hot in float32, so p(trace | prompt) = 1 exactly
    model = peaked_model(tokenizer, 0, sharpness=1e4)
    tpl = resolve_template(tokenizer)
    cfg = ReasoningConfig(samples=4, max_trace=8, temperature=trace_temperature)
    rep = estimate(model, tokenizer, tpl, MSGS, TEXT, cfg)
    # the exact marginal: Σ_r p(r) p(article | r) has one term with p(r) = 1
    ids = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    ctx = ids(tpl.render(tokenizer, MSGS, add_generation_prompt=True) + cfg.think_open)
    close, sep, article = ids(cfg.think_close), ids(cfg.sep), ids(TEXT)
    trace = sample(model, ctx, 1, cfg.max_trace, Sampling(0.0), close)[0]
    assert float(score_tokens(model, ctx, trace, Sampling(1.0, 1.0))["logp"].sum()) == 0.0  # deterministic
    assert rep["unclosed"] == 4  # this model never writes </think>: the trace is closed after max_trace tokens
    exact = _exact_after(model, ctx + trace + close + sep + article, len(sep + article))
    assert rep["log_p"] == pytest.approx(exact, rel=1e-5)
    assert rep["se"] == 0.0 and rep["ess"] == pytest.approx(4.0) and rep["conclusive"]
    assert rep["per_trace"] == [pytest.approx(exact, rel=1e-5)] * 4
    # negative control: scoring the article right after the prompt, skipping the reasoning, is far off
    naive = _exact_after(model, ids(tpl.render(tokenizer, MSGS, add_generation_prompt=True) + TEXT), len(article))
    assert abs(naive - exact) > 1.0


def test_inconclusive_when_traces_vary(tokenizer):
    model = peaked_model(tokenizer, 1, sharpness=1.0)  # flat: every trace differs
    tpl = resolve_template(tokenizer)
    rep = estimate(model, tokenizer, tpl, MSGS, TEXT, ReasoningConfig(samples=4, max_trace=6, max_se=1e-6))
    assert rep["se"] > 0 and len(set(rep["per_trace"])) > 1 and rep["unclosed"] == 4
    assert not rep["conclusive"] and rep["note"].startswith("the hidden reasoning makes the check inconclusive")


def test_cli_reasoning_and_adapter_baseline(tmp_path, tiny_model_dir, tokenizer):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from weitiao.cli import app

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    peft = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft.save_pretrained(tmp_path / "adapter")
    args = ["provenance", "--model", str(tiny_model_dir), "--prompt", "周末有什么安排？", "--text", TEXT]
    args += ["--samples", "0", "--no-greedy", "--reasoning-samples", "3", "--max-trace-tokens", "4"]
    res = CliRunner().invoke(app, [*args, "--baseline-model", str(tmp_path / "adapter"), "--json"])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.output[res.output.index("{") :])
    assert rep["reasoning"]["k"] == 3 and len(rep["reasoning"]["per_trace"]) == 3
    assert any("reasoning model" in r for r in rep["verdict"]["reasons"])
    # the adapter changes the likelihood: it was loaded on its base, not as a plain model
    b = rep["baseline_models"][0]
    assert b["name"] == str(tmp_path / "adapter") and b["same_tokenization"] and b["lr_bits"] != 0


def test_trace_flags_without_reasoning_samples_are_refused(tiny_model_dir):
    from weitiao.cli import app

    args = ["provenance", "--model", str(tiny_model_dir), "--prompt", "周末有什么安排？", "--text", TEXT]
    res = CliRunner().invoke(app, [*args, "--samples", "0", "--no-greedy", "--trace-temperature", "0.5"])
    # was: exit 0 with a report that had no reasoning estimate at all
    assert res.exit_code != 0 and "--trace-temperature applies to reasoning traces" in str(res.exception)
