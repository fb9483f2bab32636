"""`weitiao provenance`: log-probs, analytic E/Var under temperature + top-k + top-p, ranks, windows,
z calibration, verdict AUROC on tiny models, and the CLI end to end."""

from __future__ import annotations

import html
import importlib.util
import json
import math
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import typer
from typer.testing import CliRunner

from weitiao.data.decode import decode_whole
from weitiao.data.templates import resolve_template
from weitiao.eval.metrics import lcs_length
from weitiao.eval.provenance import (
    Sampling,
    common_prefix,
    encode,
    rouge_l_chars,
    sample,
    score_tokens,
    summarize,
    tempered_support,
    token_stats,
)
from weitiao.eval.provenance_cli import provenance
from weitiao.eval.provenance_report import CheckConfig, check, render_html

ROOT = Path(__file__).resolve().parents[1]
MSGS = [{"role": "user", "content": "周末有什么安排？"}]


def peaked_model(tokenizer, seed: int, sharpness: float = 10.0):
    """Random 2-layer Llama whose output head is scaled up, so its next-token distributions are peaked."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    m = LlamaForCausalLM(cfg)
    with torch.no_grad():
        m.lm_head.weight.mul_(sharpness)
    return m.eval()


@pytest.fixture(scope="module")
def model_a(tokenizer):
    return peaked_model(tokenizer, 0)


def load_experiment():
    spec = importlib.util.spec_from_file_location("provenance_auroc", ROOT / "experiments" / "provenance_auroc.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ---------------------------------------------------------------- math against independent computations


def test_logprobs_equal_a_direct_forward(tokenizer, model_a):
    tpl = resolve_template(tokenizer)
    text = "挺好的，大晴天☀️，要出去玩吗？"
    enc = encode(tokenizer, tpl, MSGS, text, with_eos=True)
    assert enc.text_ids[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert enc.text_ids[:-1] == tokenizer(text, add_special_tokens=False)["input_ids"] and not enc.notes
    st = score_tokens(model_a, enc.context_ids, enc.text_ids, Sampling())
    ids = torch.tensor([enc.context_ids + enc.text_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model_a(input_ids=ids).logits[0].double(), -1)
    c = len(enc.context_ids)
    manual = torch.stack([logp[c + i - 1, t] for i, t in enumerate(enc.text_ids)])
    torch.testing.assert_close(st["logp"], manual, atol=1e-4, rtol=0)
    sm = summarize(st, Sampling(), len(text))
    total = float(manual.sum())
    assert sm["n_tokens"] == len(enc.text_ids)
    assert sm["sum_logp"] == pytest.approx(total, abs=1e-3)
    assert sm["perplexity"] == pytest.approx(math.exp(-total / len(manual)), rel=1e-4)
    assert sm["log2_prob"] == pytest.approx(total / math.log(2), abs=1e-3)


@pytest.mark.parametrize("temperature,top_p,top_k", [(1.0, 1.0, 0), (0.7, 0.9, 0), (0.5, 0.6, 0), (1.3, 0.8, 3)])
def test_expectation_and_variance_equal_brute_force(temperature, top_p, top_k):
    torch.manual_seed(1)
    logits = torch.randn(5, 7) * 2
    targets = torch.tensor([0, 3, 6, 2, 5])
    st = token_stats(logits, targets, Sampling(temperature, top_p, top_k))
    narrow = token_stats(logits, targets, Sampling(temperature, top_p, top_k), k0=2)  # forces the widening path
    for k in st:
        if k != "mass_above":
            torch.testing.assert_close(narrow[k], st[k])
    exact = (narrow["mass_above"] - st["mass_above"]).abs() < 1e-6
    lower = (narrow["mass_above"] <= st["mass_above"]) & (narrow["mass_above"] >= top_p + 0.1)  # bound, far out
    assert bool((exact | lower).all())
    for r in range(5):
        # brute force in plain Python: tempered probs, top-k, renormalize, nucleus by descending order
        z = [math.exp(x / temperature) for x in logits[r].tolist()]
        p = [v / sum(z) for v in z]
        order = sorted(range(7), key=lambda v: -p[v])
        kept = order[:top_k] if top_k else order
        mass = sum(p[v] for v in kept)
        support, above = [], 0.0
        for v in kept:
            if above < top_p:
                support.append(v)
            above += p[v] / mass
        q = {v: p[v] for v in support}
        norm = sum(q.values())
        e = sum(q[v] / norm * math.log(p[v]) for v in support)
        var = sum(q[v] / norm * (math.log(p[v]) - e) ** 2 for v in support)
        x = int(targets[r])
        assert float(st["mean_t"][r]) == pytest.approx(e, abs=1e-5)
        assert float(st["var_t"][r]) == pytest.approx(var, abs=1e-5)
        assert float(st["logp_t"][r]) == pytest.approx(math.log(p[x]), abs=1e-5)
        assert float(st["log_q"][r]) == pytest.approx(math.log(p[x] / norm), abs=1e-5)  # q's log-prob in the support
        assert bool(st["in_support"][r]) == (x in support)
        above = sum(p[v] / mass for v in kept if p[v] > p[x]) if x in kept else 1.0  # the mass top-p compares
        assert float(st["mass_above"][r]) == pytest.approx(above, abs=1e-6)


def test_support_matches_transformers_warpers():
    from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    torch.manual_seed(2)
    logits = torch.randn(32, 600) * torch.linspace(0.3, 6, 32)[:, None]  # flat rows (wide nucleus) to peaked
    for s in (Sampling(0.7, 0.9, 0), Sampling(1.0, 0.5, 10), Sampling(1.2, 0.95, 0)):
        warp = [TemperatureLogitsWarper(s.temperature)]
        warp += [TopKLogitsWarper(s.top_k)] if s.top_k else []
        warp += [TopPLogitsWarper(s.top_p)]
        hf = torch.isfinite(LogitsProcessorList(warp)(None, logits.clone()))
        assert torch.equal(tempered_support(logits, s)[1], hf)  # the mask `sample` draws from
        # token_stats membership (it widens top-k from k0 = 16): 20 targets per row, half of them near the top
        rows = torch.arange(32).repeat(20)
        targets = torch.where(torch.rand(640) < 0.5, torch.randint(0, 600, (640,)), logits[rows].argsort(-1)[:, -30])
        ours = token_stats(logits[rows], targets, s)["in_support"]
        assert torch.equal(ours, hf[rows, targets])


def test_rank_statistics_on_a_hand_built_case():
    vocab, targets_rank = 1200, [1, 1, 5, 50, 500, 1100, 1]
    logits = -torch.arange(vocab, dtype=torch.float).repeat(len(targets_rank), 1) / 100  # token v has rank v + 1
    st = token_stats(logits, torch.tensor([r - 1 for r in targets_rank]), Sampling(1.0, 1.0))
    assert st["rank"].tolist() == targets_rank
    sm = summarize(st, Sampling(1.0, 1.0), 7)
    assert sm["top1_rate"] == pytest.approx(3 / 7)
    assert sm["rank_buckets"] == pytest.approx(
        {"1": 3 / 7, "2-10": 1 / 7, "11-100": 1 / 7, "101-1000": 1 / 7, ">1000": 1 / 7}
    )
    assert sm["mean_log_rank"] == pytest.approx(sum(math.log(r) for r in targets_rank) / 7)
    assert sm["greedy_prefix_tokens"] == 2


def test_sliding_windows_score_each_token_once(tokenizer, model_a):
    tpl = resolve_template(tokenizer)
    text = "怎么做番茄炒蛋？先炒蛋再炒番茄，最后一起翻炒，加点盐就好啦。" * 3
    enc = encode(tokenizer, tpl, MSGS, text)
    n, c = len(enc.text_ids), len(enc.context_ids)
    one = score_tokens(model_a, enc.context_ids, enc.text_ids, Sampling())
    covering = score_tokens(model_a, enc.context_ids, enc.text_ids, Sampling(), window=c + n, stride=5)
    for k in one:
        assert torch.equal(one[k], covering[k])
    small = score_tokens(model_a, enc.context_ids, enc.text_ids, Sampling(), window=c + 40, stride=10)
    assert len(small["logp"]) == n
    assert torch.equal(small["logp"][:40], one["logp"][:40])  # the first window is the same forward pass
    diff = (small["logp"] - one["logp"]).abs()
    assert float(diff.mean()) < 0.25 * float(one["logp"].abs().mean())


def test_bad_window_stride_and_baseline_rows_are_refused(tmp_path, tokenizer, model_a):
    from weitiao.errors import UserError
    from weitiao.eval.provenance_cli import read_texts

    enc = encode(tokenizer, resolve_template(tokenizer), MSGS, "怎么做番茄炒蛋？先炒蛋再炒番茄。" * 3)
    c = len(enc.context_ids)
    for window, stride in ((0, None), (c + 8, 0), (c + 8, -3)):  # 0s meant "default"; stride -3 looped forever
        with pytest.raises(UserError, match="both are token counts ≥ 1"):
            score_tokens(model_a, enc.context_ids, enc.text_ids, Sampling(), window=window, stride=stride)
    top = model_a.config.max_position_embeddings
    with pytest.raises(UserError, match=rf"--window {top + 1} is over the model's {top} positions"):
        score_tokens(model_a, enc.context_ids, enc.text_ids, Sampling(), window=top + 1)  # was: lowered silently
    assert score_tokens(model_a, enc.context_ids, enc.text_ids, Sampling(), window=top)["logp"].numel() > 0
    rows = tmp_path / "texts.jsonl"
    rows.write_text('{"text": "挺好的"}\n{"text": null}\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"texts.jsonl:2: text: None; expected the baseline text as a string"):
        read_texts(rows)  # was: scored the string "None"
    (tmp_path / "none.jsonl").write_text("", encoding="utf-8")
    with pytest.raises(UserError, match="none.jsonl: no baseline texts"):
        read_texts(tmp_path / "none.jsonl")  # was: [], and the report silently had no baseline-text rank
    (tmp_path / "list.json").write_text('[{"text": "挺好的"}]', encoding="utf-8")
    with pytest.raises(UserError, match="list.json: baseline texts are a .jsonl"):
        read_texts(tmp_path / "list.json")  # was: one text, brackets and all


def test_boundary_merge_is_detected():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|im_end|>"], initial_alphabet=alphabet)
    raw.train_from_iterator(["ab==cd"] * 50, trainer)  # learns the merge "=" + "=" -> "=="
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|im_end|>")
    tok.chat_template = (
        "{% for m in messages %}{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}={% endif %}"
    )
    tpl = resolve_template(tok)
    msgs = [{"role": "user", "content": "ab"}]
    enc = encode(tok, tpl, msgs, "=cd")
    assert enc.context_ids == tok("ab=", add_special_tokens=False)["input_ids"]
    assert enc.text_ids == tok("=cd", add_special_tokens=False)["input_ids"]
    assert tok("ab==cd", add_special_tokens=False)["input_ids"] != enc.context_ids + enc.text_ids
    assert any("boundary" in n for n in enc.notes)
    assert not encode(tok, tpl, msgs, "cd").notes  # no merge, no note


def test_lcs_rouge_prefix_by_hand():
    assert lcs_length("ABCBDAB", "BDCABA") == 4
    assert rouge_l_chars("今天天气好", "今天天气不错") == pytest.approx(2 * 4 / 11)
    assert rouge_l_chars("你 好", "你好") == 1.0 and rouge_l_chars("abc", "xyz") == 0.0
    assert common_prefix("今天天气好", "今天天气不错") == 4


# ---------------------------------------------------------------- behaviour on model samples


def test_z_is_standard_normal_on_own_samples_and_positive_on_greedy(tokenizer, model_a):
    tpl = resolve_template(tokenizer)
    s = Sampling(0.8, 0.95)
    ctx = encode(tokenizer, tpl, MSGS, "x").context_ids
    seqs = sample(model_a, ctx, 40, 24, s, stop_id=-1, seed=3)  # no stop: 40 replies of 24 tokens
    zs = [summarize(score_tokens(model_a, ctx, ids, s), s, 1)["z"] for ids in seqs]
    mean = sum(zs) / len(zs)
    sd = math.sqrt(sum((z - mean) ** 2 for z in zs) / (len(zs) - 1))
    assert abs(mean) < 0.45 and 0.6 < sd < 1.5
    greedy = sample(model_a, ctx, 1, 24, Sampling(0.0), stop_id=-1)[0]
    st = score_tokens(model_a, ctx, greedy, s)
    assert summarize(st, s, 1)["z"] > 3  # greedy text is "too likely" for T=0.8 sampling
    assert summarize(st, Sampling(0.0), 1)["outside_support"] == 0  # and exactly what greedy emits


def test_verdict_auroc_well_above_chance_on_tiny_models(tokenizer, model_a):
    exp = load_experiment()
    tpl = resolve_template(tokenizer)
    users = ("今天天气怎么样？", "推荐一部电影吧", "怎么做番茄炒蛋？", "你好")
    prompts = [[{"role": "user", "content": u}] for u in users for _ in range(4)]
    other = exp.perturb(model_a, 0.3, seed=1)  # a nearby model: same init, noise of 30% of each weight's std

    def draw(model, seed):  # 4 replies of 24 tokens per prompt, one batch per prompt
        ctxs = [encode(tokenizer, tpl, [{"role": "user", "content": u}], "x").context_ids for u in users]
        return [ids for c in ctxs for ids in sample(model, c, 4, 24, exp.CLAIM, stop_id=-1, seed=seed)]

    sp = exp.score_all(model_a, tokenizer, tpl, prompts, draw(model_a, 0))
    sn = exp.score_all(model_a, tokenizer, tpl, prompts, draw(other, 100))
    auc = exp.auroc([r["verdict score"] for r in sp], [r["verdict score"] for r in sn])
    assert auc > 0.8
    assert sum(r["label"] == "inconsistent with" for r in sp) <= 2  # true claims are rarely rejected
    assert sum(r["label"] == "inconsistent with" for r in sn) >= 6
    assert exp.auroc([1, 2, 3], [0, 2]) == pytest.approx((1 + 0 + 1 + 0.5 + 1 + 1) / 6)  # ties count half


# ---------------------------------------------------------------- end to end


def test_cli_json_and_html(tmp_path, tiny_model_dir, tokenizer):
    app = typer.Typer()
    app.command("provenance")(provenance)
    app.command("other")(lambda: None)
    html_path = tmp_path / "prov.html"
    text = "挺好的，大晴天☀️ <script>alert(1)</script>"
    base = tmp_path / "base.jsonl"
    base.write_text('{"text": "在家躺着😂 你呢？"}\n{"text": "《流浪地球》不错哦👍"}\n', encoding="utf-8")
    args = ["provenance", "--model", str(tiny_model_dir), "--prompt", "今天天气怎么样？", "--text", text]
    args += ["--samples", "6", "--baseline-model", str(tiny_model_dir), "--baseline-text", str(base)]
    res = CliRunner().invoke(app, [*args, "--html", str(html_path), "--json"])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout[res.stdout.index("{") :])
    ids = [t["id"] for t in rep["tokens"]]  # the text's tokens, or others spelling it the model finds likelier
    assert rep["summary"]["n_tokens"] == len(ids) and tokenizer.decode(ids) == text
    assert rep["samples"]["k"] == 6 and rep["samples"]["z"] is not None
    assert rep["baseline_models"][0]["same_tokenization"] and rep["baseline_models"][0]["lr_bits"] == 0
    assert rep["baseline_texts"]["n"] == 2 and 1 <= rep["baseline_texts"]["rank"] <= 3
    assert rep["verdict"]["label"] in ("consistent with", "inconclusive", "inconsistent with")
    assert "".join(p["text"] for p in rep["pieces"]) == text
    page = html_path.read_text(encoding="utf-8")
    assert "<script>" not in page
    body = page[page.index('<div class="text">') + 18 : page.index("</div>")]
    assert html.unescape(re.sub(r"<[^>]*>", "", body)) == text  # spans escape and together spell the text
    assert page.count('title="') == len(rep["pieces"])
    bad = CliRunner().invoke(app, ["provenance", "--model", str(tiny_model_dir), "--text", "x"])
    assert bad.exit_code != 0 and "--prompt" in str(bad.exception)


def test_check_greedy_claim_is_consistent_for_greedy_text(tokenizer, model_a):
    tpl = resolve_template(tokenizer)
    ctx = encode(tokenizer, tpl, MSGS, "x").context_ids
    ids = sample(model_a, ctx, 1, 24, Sampling(0.0), stop_id=-1)[0]
    # random tiny models emit partial UTF-8: score the ids themselves; the text is the reply as chat and serve
    # show it (whole characters), as the greedy reply is decoded for the comparison
    text = decode_whole(tokenizer, ids)
    greedy_claim = CheckConfig(sampling=Sampling(0.0), samples=0)
    rep = check(model_a, tokenizer, tpl, MSGS, text, greedy_claim, text_ids=ids)
    assert rep["verdict"]["label"] == "consistent with" and rep["verdict"]["score"] == 0
    assert rep["summary"]["greedy_prefix_tokens"] == 24 and rep["summary"]["top1_rate"] == 1.0
    assert rep["greedy"]["rouge_l"] == 1.0 and rep["greedy"]["prefix_chars"] == len(text)
    sampled = check(model_a, tokenizer, tpl, MSGS, text, CheckConfig(samples=0), text_ids=ids)
    assert sampled["verdict"]["label"] != "consistent with"  # greedy output is atypical of T=0.7 sampling
    assert sampled["summary"]["z"] > 2
    assert "<span" in render_html(rep)


def test_greedy_claim_on_the_text_alone_replays_greedy_decoding(tokenizer, model_a):
    """Given only the text (the CLI has no token ids), a greedy reply tokenizes otherwise than the model wrote it: 24
    generated tokens read back as 18, 14 of them outside greedy's top choice, and the claim "T=0" was called
    inconsistent (the greedy comparison also stopped at 18 tokens, short of the text). Greedy decoding that writes
    exactly the text now settles it; a changed text, or an end of turn the model did not write, still does not."""
    tpl = resolve_template(tokenizer)
    ctx = encode(tokenizer, tpl, MSGS, "x").context_ids
    ids = sample(model_a, ctx, 1, 24, Sampling(0.0), stop_id=-1)[0]
    text = decode_whole(tokenizer, ids)
    assert tokenizer(text, add_special_tokens=False)["input_ids"] != ids  # the premise: another tokenization
    claim = CheckConfig(sampling=Sampling(0.0), samples=0)
    rep = check(model_a, tokenizer, tpl, MSGS, text, claim)
    assert rep["summary"]["outside_support"] > 0
    assert rep["verdict"]["label"] == "consistent with" and rep["verdict"]["score"] == 0
    assert rep["greedy"]["text"] == text and rep["greedy"]["writes_text"]
    assert any("wrote it in other tokens" in r for r in rep["verdict"]["reasons"])
    assert check(model_a, tokenizer, tpl, MSGS, text[:-3], claim)["greedy"]["writes_text"]  # a reply cut short
    for other, cfg in ((text + "好", claim), (text, CheckConfig(sampling=Sampling(0.0), samples=0, with_eos=True))):
        rep = check(model_a, tokenizer, tpl, MSGS, other, cfg)
        assert not rep["greedy"]["writes_text"] and rep["verdict"]["label"] == "inconsistent with", other


def test_samples_with_eos_may_be_as_long_as_the_scored_text(tokenizer, model_a, monkeypatch):
    import weitiao.eval.provenance_report as report

    asked = []

    def recording(model, ctx, k, max_new, *args, **kw):
        asked.append((k, max_new))
        return sample(model, ctx, k, max_new, *args, **kw)

    monkeypatch.setattr(report, "sample", recording)
    tpl = resolve_template(tokenizer)
    text = "先炒蛋再炒番茄"
    n = len(encode(tokenizer, tpl, MSGS, text).text_ids)
    check(model_a, tokenizer, tpl, MSGS, text, CheckConfig(samples=5, greedy=False, with_eos=True))
    assert asked[0] == (5, n + 1)  # text + its eot; was n: no sample of the text's length could end the reply
    assert asked[1:] == [(5, len(text.encode()) + 1)]  # the search's calibration: as many bytes as the text


def chain_model(tokenizer, chain: list[tuple[int, int]]):
    """Tiny Llama whose next token depends on the current one only, as `chain` says (a → b): attention and MLP
    outputs are zeroed (`markov_model` with p = 1)."""
    return markov_model(tokenizer, {a: {b: 1.0} for a, b in chain})


def test_a_base_ending_with_its_eos_not_the_templates_end_of_turn():
    """A base whose EOS (<|endoftext|>) is not the template's end-of-turn (<|im_end|>), as a Qwen2.5 base with
    ChatML: the samples and the greedy reply ran on past its EOS (greedy "好天呢", the reply chat gives is "好天"),
    and --with-eos scored <|im_end|>, so its own complete reply read "inconsistent with". Now they stop at every
    end id, as generation does, and the end scored is the likeliest of them (with a note)."""
    from conftest import build_tokenizer

    from weitiao.infer.generate import generate

    tok = build_tokenizer(eos="<|endoftext|>")
    tpl = resolve_template(tok)
    assert tpl.eot == "<|im_end|>" and tok.eos_token == "<|endoftext|>"
    enc = encode(tok, tpl, MSGS, "好天呢")  # one token per character
    last, x, y, z = enc.context_ids[-1:] + enc.text_ids
    eos = tok.eos_token_id
    model = chain_model(tok, [(last, x), (x, y), (y, eos), (eos, z), (z, z)]).eval()
    assert [g.text for g in generate(model, tok, tpl, [MSGS], 8)] == ["好天"]  # the reply chat and serve give

    rep = check(model, tok, tpl, MSGS, "好天呢呢", CheckConfig(samples=3))
    assert rep["greedy"]["text"] == "好天" and rep["samples"]["examples"] == ["好天"] * 3
    rep = check(model, tok, tpl, MSGS, "好天", CheckConfig(samples=3, with_eos=True))
    assert [t["id"] for t in rep["tokens"]] == [x, y, eos] and rep["summary"]["outside_support"] == 0
    assert rep["verdict"]["label"] != "inconsistent with" and rep["samples"]["examples"] == ["好天"] * 3
    assert any(n.startswith("scored <|endoftext|> as the end of the reply") for n in rep["notes"])


def test_reasoning_estimate_scores_the_same_end_as_the_token_checks(monkeypatch):
    """--with-eos --reasoning-samples: the per-token checks scored the base's EOS where the model ends with it, but the
    reasoning estimate still appended the template's <|im_end|> to the article, scoring an end the model never
    writes there."""
    from conftest import build_tokenizer

    import weitiao.eval.provenance_reasoning as pr
    from weitiao.eval.provenance_reasoning import ReasoningConfig

    tok = build_tokenizer(eos="<|endoftext|>")
    tpl = resolve_template(tok)
    enc = encode(tok, tpl, MSGS, "好天")
    last, x, y = enc.context_ids[-1:] + enc.text_ids
    eos, eot = tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")
    model = chain_model(tok, [(last, x), (x, y), (y, eos)]).eval()
    scored = []
    real = pr.score_tokens
    monkeypatch.setattr(
        pr, "score_tokens", lambda m, ctx, ids, *a, **k: scored.append(ids) or real(m, ctx, ids, *a, **k)
    )
    cfg = CheckConfig(samples=0, greedy=False, with_eos=True, reasoning=ReasoningConfig(samples=2, max_trace=3))
    check(model, tok, tpl, MSGS, "好天", cfg)
    assert scored and all(ids[-1] == eos for ids in scored)  # the article as the checks scored it: ends with EOS
    scored.clear()
    pr.estimate(model, tok, tpl, MSGS, "好天", cfg.reasoning, with_eos=True)  # control: no end given
    assert scored and all(ids[-1] == eot for ids in scored)


def test_cli_adapter_alone_checks_against_its_training_base(adapter_run):
    """--adapter without --model loads the adapter's recorded base (it used to demand --model); neither is refused."""
    app = typer.Typer()
    app.command("provenance")(provenance)
    app.command("other")(lambda: None)
    args = ["provenance", "--prompt", "今天天气怎么样？", "--text", "挺好的", "--samples", "0", "--json"]
    res = CliRunner().invoke(app, [*args, "--adapter", str(adapter_run)])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout[res.stdout.index("{") :])["summary"]["n_tokens"] > 0
    bad = CliRunner().invoke(app, args)
    assert bad.exit_code != 0 and "--model" in str(bad.exception) and "--adapter" in str(bad.exception)


def markov_model(tokenizer, chain: dict[int, dict[int, float]]):
    """Tiny Llama whose next-token distribution depends on the current token only: after a, b with probability
    chain[a][b] (other tokens ~e-30). Attention and MLP outputs are zeroed, so the hidden state is a's embedding, a
    one-hot that RMSNorm scales to 8, read by one head column."""
    m = peaked_model(tokenizer, 0)
    with torch.no_grad():
        for layer in m.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        m.lm_head.weight.zero_()
        for k, (a, nxt) in enumerate(chain.items()):
            m.model.embed_tokens.weight[a] = 0.0
            m.model.embed_tokens.weight[a, k] = 1.0
            for b, p in nxt.items():
                m.lm_head.weight[b, k] = (30 + math.log(p)) / 8
    return m.eval()


@pytest.fixture(scope="module")
def char_by_char(tokenizer):
    """A model that writes 挺好的 character by character (挺 and 的 two byte tokens each, 好 one), five tokens that
    re-tokenize into the one merged token 挺好的, which it emits with p = 0.001."""
    ctx = encode(tokenizer, resolve_template(tokenizer), MSGS, "x").context_ids
    ids = {c: tokenizer(c, add_special_tokens=False)["input_ids"] for c in ("挺", "好", "的", "天", "着", "挺好的")}
    (t1, t2), (h,), (d1, d2), (tian,), (zhe,), (merged,) = ids.values()
    eot = tokenizer.convert_tokens_to_ids("<|im_end|>")
    chain = {ctx[-1]: {t1: 0.6, h: 0.39, merged: 0.001}, t1: {t2: 1.0}, t2: {h: 0.7, tian: 0.3},
             h: {d1: 0.8, zhe: 0.2}, d1: {d2: 1.0}, d2: {eot: 1.0}, tian: {eot: 1.0}, zhe: {eot: 1.0}}  # fmt: skip
    return markov_model(tokenizer, chain), ctx, [t1, t2, h, d1, d2], eot


def test_a_sample_that_re_tokenizes_otherwise_is_scored_in_the_tokens_the_model_wrote(tokenizer, char_by_char):
    """A T=1.0 sample 挺|好|的 (5 tokens) re-tokenizes into the merged 挺好的 (p = 0.001, outside top-p 0.9): the
    claim was called "inconsistent with" for the model's own reply. The search finds the tokens it wrote; a text the
    model does not write (大晴天) is still inconsistent, and --search-beam 0 scores the re-tokenization as before."""
    model, ctx, wrote, eot = char_by_char
    tpl = resolve_template(tokenizer)
    s = Sampling(1.0, 0.9)
    seqs = sample(model, ctx, 20, 8, s, eot, seed=0)
    assert wrote + [eot] in seqs and tokenizer("挺好的", add_special_tokens=False)["input_ids"] != wrote  # the premise
    cfg = CheckConfig(sampling=s, samples=16, greedy=False, with_eos=True)
    rep = check(model, tokenizer, tpl, MSGS, "挺好的", cfg)
    assert [t["id"] for t in rep["tokens"]] == wrote + [eot] and rep["summary"]["outside_support"] == 0
    assert rep["verdict"]["label"] == "inconclusive" and abs(rep["samples"]["z"]) < 2  # short, but not rejected
    assert rep["tokenization"]["scored"] == "the searched segmentation"
    assert any(n.startswith("scored the 5 tokens the model likeliest wrote") for n in rep["notes"])
    given = check(model, tokenizer, tpl, MSGS, "挺好的", cfg, text_ids=wrote + [eot])
    assert given["summary"]["sum_logp"] == pytest.approx(rep["summary"]["sum_logp"], abs=1e-4)
    off = check(
        model, tokenizer, tpl, MSGS, "挺好的", CheckConfig(sampling=s, samples=16, with_eos=True, search_beam=0)
    )
    assert off["verdict"]["label"] == "inconsistent with" and off["summary"]["outside_support"] == 1  # as before
    for cfg_ in (cfg, CheckConfig(sampling=Sampling(1.0, 1.0), samples=16, with_eos=True)):  # top-p off: z decides
        other = check(model, tokenizer, tpl, MSGS, "大晴天", cfg_)
        assert other["verdict"]["label"] == "inconsistent with"
    assert other["tokenization"]["search"] == "the text's tokenization is the likeliest found"


def test_cli_text_ids(tmp_path, tokenizer, char_by_char):
    """--text-ids scores the ids given (the text is what they spell); ids that spell another text than --text, an
    end id without --with-eos (or none with it) and a list that is not token ids are refused in one line."""
    model, _, wrote, eot = char_by_char
    model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    app = typer.Typer()
    app.command("provenance")(provenance)
    app.command("other")(lambda: None)
    base = ["provenance", "--model", str(tmp_path / "m"), "--prompt", MSGS[0]["content"], "--temperature", "1.0"]
    base += ["--samples", "0", "--no-greedy", "--json"]
    res = CliRunner().invoke(app, [*base, "--text-ids", json.dumps(wrote + [eot]), "--with-eos"])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout[res.stdout.index("{") :])
    assert [t["id"] for t in rep["tokens"]] == wrote + [eot] and rep["tokenization"]["scored"] == "the given token ids"
    assert rep["summary"]["n_chars"] == 3 and rep["verdict"]["label"] != "inconsistent with"
    for extra, msg in (
        (["--text-ids", json.dumps(wrote), "--text", "好的"], "not the text '好的'"),
        (["--text-ids", json.dumps(wrote + [eot])], "add --with-eos"),
        (["--text-ids", json.dumps(wrote), "--with-eos"], "not an end of the reply"),
        (["--text-ids", "352 121"], "expected a JSON list of token ids"),
        (["--text-ids", "[1, 99999]"], "expected a JSON list of token ids"),
        (["--text-ids", json.dumps(wrote), "--search-beam", "8"], "--text-ids are scored as given"),  # was ignored
        (["--text", "好的", "--temperature", "0", "--search-beam", "8"], "a greedy claim is replayed instead"),
    ):
        bad = CliRunner().invoke(app, [*base, *extra])
        assert bad.exit_code != 0 and msg in str(bad.exception), (extra, bad.exception)


def test_reasoning_estimate_scores_the_tokens_the_checks_scored(tokenizer, char_by_char, monkeypatch):
    """--reasoning-samples re-tokenized the text for its estimate, so with --text-ids (or a searched segmentation)
    it scored the merged 挺好的 the model never wrote while the per-token checks scored the sampled ids."""
    import weitiao.eval.provenance_reasoning as pr
    from weitiao.eval.provenance_reasoning import ReasoningConfig

    model, _, wrote, eot = char_by_char
    tpl = resolve_template(tokenizer)
    scored = []
    real = pr.score_tokens
    monkeypatch.setattr(
        pr, "score_tokens", lambda m, ctx, ids, *a, **k: scored.append(ids) or real(m, ctx, ids, *a, **k)
    )
    reasoning = ReasoningConfig(samples=2, max_trace=3)
    for beam, ids in ((4, None), (0, wrote + [eot])):  # the search, then the ids given
        scored.clear()
        cfg = CheckConfig(
            Sampling(1.0, 0.9), with_eos=True, samples=0, greedy=False, search_beam=beam, reasoning=reasoning
        )
        check(model, tokenizer, tpl, MSGS, "挺好的", cfg, text_ids=ids)
        assert scored and all(x[-len(wrote) - 1 :] == wrote + [eot] for x in scored), scored


def test_batched_search_scores_its_tokens_as_a_whole_forward_does(tokenizer, model_a):
    """The search extends the beam in one right-padded forward on the shared prefix's KV cache: the tokens it returns
    must carry the Σ log q and support count a plain forward over context + those tokens gives (rows of other lengths
    beside them: reading a padded position, or a cache of the wrong prefix, breaks the equality)."""
    from weitiao.eval.provenance import search_segmentation
    from weitiao.infer.constrain import byte_table

    tpl = resolve_template(tokenizer)
    s = Sampling(1.0, 0.95)
    ctx = encode(tokenizer, tpl, MSGS, "x").context_ids
    table = byte_table(tokenizer, set())
    checked = 0
    for ids in sample(model_a, ctx, 6, 12, s, stop_id=-1, seed=5):
        data = b"".join(table[t] for t in ids if table[t])
        seg = search_segmentation(model_a, table, ctx, data, s, beam=4)
        assert seg is not None and b"".join(table[t] for t in seg.ids) == data
        st = score_tokens(model_a, ctx, seg.ids, s)
        assert seg.sum_log_q == pytest.approx(float(st["log_q"].sum()), abs=1e-3)
        assert seg.outside == int((~st["in_support"]).sum())
        mine = score_tokens(model_a, ctx, ids, s)  # the sampled ids are one of the sequences searched over
        assert (seg.outside, -seg.sum_log_q) <= (int((~mine["in_support"]).sum()), -float(mine["log_q"].sum()) + 1e-3)
        checked += seg.found > 1
    assert checked  # some texts had several segmentations in the final beam, rows of other lengths together


@pytest.fixture(scope="module")
def two_ways(tokenizer):
    """A model that writes 挺好的 as the merged token (q = 0.5) or in five tokens 挺|好|的 (q = 0.5 · 0.7 · 0.8 = 0.28):
    the text has two likely segmentations with different z."""
    ctx = encode(tokenizer, resolve_template(tokenizer), MSGS, "x").context_ids
    ids = {c: tokenizer(c, add_special_tokens=False)["input_ids"] for c in ("挺", "好", "的", "天", "着", "挺好的")}
    (t1, t2), (h,), (d1, d2), (tian,), (zhe,), (merged,) = ids.values()
    eot = tokenizer.convert_tokens_to_ids("<|im_end|>")
    chain = {ctx[-1]: {t1: 0.5, merged: 0.5}, t1: {t2: 1.0}, t2: {h: 0.7, tian: 0.3}, h: {d1: 0.8, zhe: 0.2},
             d1: {d2: 1.0}, d2: {eot: 1.0}, tian: {eot: 1.0}, zhe: {eot: 1.0}, merged: {eot: 1.0}}  # fmt: skip
    return markov_model(tokenizer, chain), ctx, [[t1, t2, h, d1, d2, eot], [merged, eot]]


def test_searched_z_is_the_expectation_over_segmentations_not_the_best_ones(tokenizer, two_ways):
    """Scoring the likeliest segmentation (the merged token) picked the best of two and leaned z towards "too likely"
    (a genuine sample's z had mean > 0); z is now Σ q(X | text) z(X), whose mean under the claim is the sampled
    tokens' z's (tower rule)."""
    model, ctx, ways = two_ways
    s = Sampling(1.0, 1.0)
    cfg = CheckConfig(sampling=s, samples=0, greedy=False, prompt_dependence=False, with_eos=True)
    rep = check(model, tokenizer, resolve_template(tokenizer), MSGS, "挺好的", cfg)
    stats = [score_tokens(model, ctx, x, s) for x in ways]
    zs = [summarize(st, s, 3)["z"] for st in stats]
    w = torch.tensor([float(st["log_q"].sum()) for st in stats]).softmax(0).tolist()
    assert w[0] == pytest.approx(0.28 / 0.78, abs=1e-3) and abs(zs[1] - zs[0]) > 0.5  # the premise
    assert rep["summary"]["z"] == pytest.approx(w[0] * zs[0] + w[1] * zs[1], abs=1e-4)  # was zs[1], the best one
    assert [t["id"] for t in rep["tokens"]] == ways[1] and rep["tokenization"]["posterior"]["segmentations"] >= 2
    assert any(n.startswith("z and the empirical z's mean log-prob are averaged over") for n in rep["notes"])


def test_the_searchs_lean_measured_on_the_models_own_samples_is_taken_off_z(tokenizer, two_ways, monkeypatch):
    """A beam too narrow to hold every likely segmentation still picks the best: `check` runs the same search on each
    of its K samples, and z (and the empirical z's mean log-prob) drop the mean lean it measured against their own
    tokens. Beam 1 keeps only the merged token, so a sample written in five tokens reads otherwise than it was."""
    model, ctx, ways = two_ways
    s, tpl = Sampling(1.0, 1.0), resolve_template(tokenizer)
    cfg = CheckConfig(sampling=s, samples=12, greedy=False, prompt_dependence=False, with_eos=True, search_beam=1)
    import weitiao.infer.constrain as constrain

    tables, real = [], constrain.byte_table
    monkeypatch.setattr(constrain, "byte_table", lambda *a: tables.append(a) or real(*a))
    rep = check(model, tokenizer, tpl, MSGS, "挺好的", cfg)
    monkeypatch.undo()
    assert len(tables) == 1  # built once, not per sample searched (a 150k vocabulary each time)
    shifts = []  # by hand: each sample (the same seed) searched as a text, against its own tokens
    for ids in sample(model, ctx, 12, len("挺好的".encode()) + 1, s, ways[0][-1], cfg.seed + 1):
        text = tokenizer.decode(ids[:-1])
        one = check(model, tokenizer, tpl, MSGS, text, CheckConfig(sampling=s, samples=0, greedy=False, search_beam=1))
        own = summarize(score_tokens(model, ctx, ids[:-1], s), s, 1)["z"]
        shifts.append(one["tokenization"]["posterior"]["z"] - own)
    cal = rep["tokenization"]["calibration"]
    assert cal["samples"] == 12 and cal["z_shift"] == pytest.approx(sum(shifts) / 12, abs=1e-6)
    assert abs(cal["z_shift"]) > 0.1  # the lean of this narrow search: removed here, kept without the calibration
    assert rep["summary"]["z"] == pytest.approx(rep["tokenization"]["posterior"]["z"] - cal["z_shift"], abs=1e-9)


def test_an_empirical_z_that_could_not_be_computed_is_said_not_left_out(tmp_path, tokenizer, model_a, tiny_model_dir):
    """Fewer usable samples than `Thresholds.min_samples` gave `samples.z` null and a verdict without a word of it (the
    reasons read as if the empirical z had been computed, or never asked for); `--samples 1..4` is refused before a
    model loads, as it can never give one."""
    tpl = resolve_template(tokenizer)
    text = "挺好的，大晴天☀️，要出去玩吗？"
    rep = check(model_a, tokenizer, tpl, MSGS, text, CheckConfig(samples=3, greedy=False, search_beam=0))
    assert rep["samples"]["k"] == 3 and rep["samples"]["z"] is None
    said = [r for r in rep["verdict"]["reasons"] if r.startswith("empirical z not computed")]
    assert said and "3 usable samples" in said[0] and "5" in said[0]
    full = check(model_a, tokenizer, tpl, MSGS, text, CheckConfig(samples=6, greedy=False, search_beam=0))
    assert full["samples"]["z"] is not None
    assert not any(r.startswith("empirical z not computed") for r in full["verdict"]["reasons"])
    app = typer.Typer()
    app.command("provenance")(provenance)
    app.command("other")(lambda: None)
    args = ["provenance", "--model", str(tmp_path / "no-such-model"), "--prompt", "你好", "--text", text]
    bad = CliRunner().invoke(app, [*args, "--samples", "4"])
    assert bad.exit_code != 0 and "--samples 4" in str(bad.exception) and "at least 5" in str(bad.exception)


def test_baseline_texts_are_scored_as_the_text_was(tokenizer, char_by_char):
    """After a segmentation search the text was scored on the tokens the model likeliest wrote it in (perplexity 1.2),
    its baseline texts on their own tokenization: the same text given as a baseline read 64.7, and the text ranked 1 of
    4 below 挺天 (1.5 as scored) although, scored alike, 挺天 is the likelier; so with the sampled ids given. Baseline
    texts are now searched too."""
    model, _, wrote, eot = char_by_char
    tpl = resolve_template(tokenizer)
    cfg = CheckConfig(sampling=Sampling(1.0, 0.9), samples=0, greedy=False, prompt_dependence=False, with_eos=True)
    rep = check(model, tokenizer, tpl, MSGS, "挺好的", cfg, baseline_texts=["挺好的", "挺好着", "挺天"])
    assert rep["tokenization"]["scored"] == "the searched segmentation"  # the premise
    same, _, tian = rep["baseline_texts"]["perplexities"]
    assert same == pytest.approx(rep["summary"]["perplexity"], rel=1e-6)
    assert rep["baseline_texts"]["rank"] == 1 + (tian < same)
    ids = check(model, tokenizer, tpl, MSGS, "挺好的", cfg, baseline_texts=["挺好的"], text_ids=[*wrote, eot])
    assert ids["baseline_texts"]["perplexities"][0] == pytest.approx(ids["summary"]["perplexity"], rel=1e-6)
    off = check(model, tokenizer, tpl, MSGS, "挺好的", replace(cfg, search_beam=0), baseline_texts=["挺好的"])
    assert off["baseline_texts"]["perplexities"][0] == pytest.approx(off["summary"]["perplexity"], rel=1e-6)


def test_a_baseline_model_scores_the_given_ids_as_the_claimed_one_did(tokenizer, char_by_char):
    """With --text-ids the claimed model scored the sampled ids, a baseline model the text's own tokenization: the
    claimed model itself as the baseline explained the text 3.5 bits/char worse, "favours the claimed model". A
    baseline with the same tokenizer now scores the same ids (a likelihood ratio of 0 against itself)."""
    from weitiao.eval.provenance_report import Baseline

    model, _, wrote, eot = char_by_char
    tpl = resolve_template(tokenizer)
    cfg = CheckConfig(sampling=Sampling(1.0, 0.9), samples=0, greedy=False, prompt_dependence=False, with_eos=True)
    itself = [Baseline("itself", model, tokenizer, tpl)]
    rep = check(model, tokenizer, tpl, MSGS, "挺好的", cfg, itself, text_ids=[*wrote, eot])
    b = rep["baseline_models"][0]
    assert b["same_tokenization"] and b["lr_bits"] == pytest.approx(0, abs=1e-6)
    assert not any("favours the claimed model" in r for r in rep["verdict"]["reasons"])
