"""DPO: losses vs hand formulas, packed pair log-probs vs separate forwards, end-to-end on a tiny model."""

import math
import random
import shutil

import pytest
import torch
from conftest import recipe_config, write_jsonl
from transformers import AutoModelForCausalLM

from weitiao.data.chat import IGNORE
from weitiao.data.collate import collate
from weitiao.data.formats import PreferencePair
from weitiao.data.preference import encode_pairs, pair_rows
from weitiao.data.templates import resolve_template
from weitiao.errors import UserError
from weitiao.losses.preference import bradley_terry, dpo_terms, k3_kl
from weitiao.losses.sft import CausalLMLoss
from weitiao.recipes import dpo
from weitiao.train.log import read_metrics


def sig(x):
    return 1 / (1 + math.exp(-x))


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge"])
@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_dpo_losses_match_formulas(loss_type, eps):
    g = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (torch.randn(6, generator=g, dtype=torch.float64) * 3 for _ in range(4))
    beta = 0.3
    loss, m = dpo_terms(pc, pr, rc, rr, beta, loss_type, eps if loss_type == "sigmoid" else 0.0)
    for i in range(6):
        h = (pc[i].item() - rc[i].item()) - (pr[i].item() - rr[i].item())
        want = {
            "sigmoid": -(1 - eps) * math.log(sig(beta * h)) - eps * math.log(sig(-beta * h)),
            "ipo": (h - 1 / (2 * beta)) ** 2,
            "hinge": max(0.0, 1 - beta * h),
        }[loss_type]
        assert abs(loss[i].item() - want) < 1e-9
        assert abs(m["margins"][i].item() - beta * h) < 1e-9
        assert m["accuracy"][i].item() == float(h > 0)


def test_bradley_terry_and_k3():
    assert abs(bradley_terry(torch.tensor(2.0), torch.tensor(0.5), 0.5).item() + math.log(sig(1.0))) < 1e-6
    lp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -2.0])
    r = ref - lp
    assert torch.allclose(k3_kl(lp, ref), torch.exp(r) - 1 - r) and k3_kl(lp, ref)[1] == 0


def make_pairs(n, seed=0):
    rng = random.Random(seed)
    topics = ["天气", "周末", "电影", "吃饭", "工作", "旅行", "猫", "音乐"]
    out = []
    for i in range(n):
        t = rng.choice(topics)
        out.append(
            {"prompt": f"聊聊{t}吧 {i}", "chosen": f"好呀😊 {t}挺好的", "rejected": f"关于{t}，首先需要说明的是。"}
        )
    return out


def test_packed_pair_logps_equal_separate_forwards(tiny_model_dir, tokenizer):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    pairs = [
        PreferencePair([{"role": "user", "content": r["prompt"]}], r["chosen"], r["rejected"]) for r in make_pairs(5)
    ]
    exs, stats = encode_pairs(pairs, tokenizer, resolve_template(tokenizer), 256, "drop")
    assert stats.kept == 5
    c, r = exs[0], exs[1]
    p = next(i for i, x in enumerate(c.labels) if x != IGNORE)
    assert c.input_ids[:p] == r.input_ids[:p] and tokenizer.decode(c.input_ids[p:]).startswith("好呀")
    for packing in (True, False):
        check_pair_logps(model, tokenizer, exs, packing)


def check_pair_logps(model, tokenizer, exs, packing):
    rows = pair_rows([[0, 1, 2], [3, 4]], packing)
    b = collate(exs, rows, tokenizer.pad_token_id, packing=packing)
    with torch.no_grad():
        _, sums, counts = dpo.sequence_logps(CausalLMLoss(model, chunk_size=8), b, 10)
        for k, i in enumerate(i for row in rows for i in row):
            ids = torch.tensor([exs[i].input_ids])
            logits = model(input_ids=ids).logits[0, :-1]
            tgt = torch.tensor(exs[i].labels[1:])
            lp = torch.log_softmax(logits, -1).gather(-1, tgt.clamp_min(0)[:, None])[:, 0]
            want = lp[tgt != IGNORE].sum().item()
            assert abs(sums[k].item() - want) < 1e-4 and counts[k].item() == int((tgt != IGNORE).sum())


def dpo_config(model_dir, data, out, *extra):
    return recipe_config(
        "dpo",
        model_dir,
        data,
        out,
        "data.eval_split=0.2",
        "train.micro_batch_size=4",
        "data.max_len=64",
        "train.lr=5e-3",
        "train.warmup_ratio=0",
        "lora.dropout=0",
        "dpo.kl_max_new_tokens=8",
        *extra,
    )


@pytest.mark.slow
def test_dpo_learns_preferences_and_beta_bounds_kl(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "pairs.jsonl", make_pairs(40))
    kls = {}
    for beta in (0.05, 1.0):
        out = tmp_path / f"b{beta}"
        summary = dpo.run(
            dpo_config(tiny_model_dir, data, out, "train.max_steps=16", f"dpo.beta={beta}", "train.eval_every=8")
        )
        train = read_metrics(out, "train")
        assert train[0]["accuracy"] <= 0.75 and abs(train[0]["loss"] - math.log(2)) < 1e-3  # π = π_ref at step 1
        assert summary["eval_accuracy"] > 0.9
        assert train[-1]["margins"] > train[0]["margins"] + 0.05
        kls[beta] = summary["eval_kl_offpolicy_data"]
        assert summary["eval_kl_onpolicy_seq"] > 0
    # Only the off-policy k3 term on the data's replies falls with β here; the on-policy KL of this
    # random tiny model after 16 steps does not order by β (measured 1.41 at β=0.05, 1.81 at β=1.0).
    assert kls[1.0] < kls[0.05]


@pytest.mark.slow
def test_precomputed_reference_and_resume(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "pairs.jsonl", make_pairs(24))
    args = ("train.max_steps=4", "train.save_every=2")
    dpo.run(dpo_config(tiny_model_dir, data, tmp_path / "live", *args))
    dpo.run(
        dpo_config(tiny_model_dir, data, tmp_path / "cached", *args, "dpo.precompute_ref=true", "train.stop_after=2")
    )
    assert (tmp_path / "cached" / "ref_logps.pt").exists()
    dpo.run(dpo_config(tiny_model_dir, data, tmp_path / "cached", *args, "dpo.precompute_ref=true"))
    live = [r["loss"] for r in read_metrics(tmp_path / "live", "train")]
    cached = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "cached", "train")}
    assert max(abs(a - cached[s + 1]) for s, a in enumerate(live)) < 1e-5


@pytest.mark.slow
def test_beta_sweep_writes_table_and_plot(tiny_model_dir, tmp_path):
    from weitiao.recipes.sweep import sweep

    data = write_jsonl(tmp_path / "pairs.jsonl", make_pairs(24))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model: {{path: {tiny_model_dir}}}\ndata: {{train: [{data}], eval_split: 0.25, max_len: 64}}\n")
    over = [
        f"train.out={tmp_path / 'sw'}",
        "train.max_steps=3",
        "train.progress=false",
        "train.tensorboard=false",
        "train.lr=5e-3",
        "lora.dropout=0",
    ]
    rows = sweep(dpo.DPOConfig, dpo.run, cfg, over, "beta=0.05,0.5")
    assert [r["dpo.beta"] for r in rows] == [0.05, 0.5] and all(r["kl_onpolicy_seq"] is not None for r in rows)
    assert (tmp_path / "sw" / "sweep.png").stat().st_size > 1000
    md = (tmp_path / "sw" / "sweep.md").read_text()
    assert md.startswith("Metrics of the held-out eval set") and md.count("\n") == 6 and rows[0]["source"] == "eval"
    assert (tmp_path / "sw" / "dpo.beta-0.5" / "final" / "adapter").exists()


@pytest.mark.slow
def test_init_from_sft_adapter_makes_it_the_reference(tiny_model_dir, tmp_path):
    """Continuing a trained adapter: π = π_ref at step 1 (loss log 2), not π = SFT vs π_ref = bare base."""
    data = write_jsonl(tmp_path / "pairs.jsonl", make_pairs(16))
    dpo.run(dpo_config(tiny_model_dir, data, tmp_path / "first", "train.max_steps=6"))
    dpo.run(
        dpo_config(tiny_model_dir, data, tmp_path / "next", "train.max_steps=1", f"lora.init_from={tmp_path / 'first'}")
    )
    first = read_metrics(tmp_path / "first", "train")
    assert abs(first[-1]["loss"] - math.log(2)) > 1e-2  # the first run moved away from its reference
    assert abs(read_metrics(tmp_path / "next", "train")[0]["loss"] - math.log(2)) < 1e-4


@pytest.mark.slow
def test_resume_refuses_an_init_from_adapter_retrained_at_the_same_path(tiny_model_dir, tmp_path):
    """The adapter at lora.init_from is DPO's reference: a retrained one at the same path changes what every later
    step computes, so resuming over it is refused like a changed config (negative control: unchanged resumes)."""
    data = write_jsonl(tmp_path / "pairs.jsonl", make_pairs(16))
    init, run = tmp_path / "init", tmp_path / "run"
    dpo.run(dpo_config(tiny_model_dir, data, init, "train.max_steps=2"))
    resume = ["train.max_steps=4", "train.save_every=2", f"lora.init_from={init}"]
    dpo.run(dpo_config(tiny_model_dir, data, run, *resume, "train.stop_after=2"))
    dpo.run(dpo_config(tiny_model_dir, data, init, "train.max_steps=2", "train.seed=7", "train.resume=none"))
    with pytest.raises(UserError, match=r"train.resume: lora.init_from changed since .* started \(retrained"):
        dpo.run(dpo_config(tiny_model_dir, data, run, *resume))
    shutil.rmtree(init / "final")
    shutil.copytree(init / "previous" / next((init / "previous").iterdir()).name / "final", init / "final")
    dpo.run(dpo_config(tiny_model_dir, data, run, *resume))  # the original adapter back: resumes
    assert [r["step"] for r in read_metrics(run, "train")] == [1, 2, 3, 4]


@pytest.mark.parametrize("rank", ["0", "1"])
def test_pair_notes_and_warnings_are_printed_by_the_first_process_only(tokenizer, tmp_path, monkeypatch, capsys, rank):
    """Under torchrun every process read the pairs, and each printed the overlap warning and the LLaMA-Factory
    notes: 2 processes, every line twice (8 GPUs: 8 times). Process 0 says them once."""
    import json

    from weitiao.train.pairs import prepare_pairs

    rows = [{"instruction": f"问{i}", "chosen": "好的😊", "rejected": "不知道"} for i in range(6)]
    write_jsonl(tmp_path / "pairs.jsonl", rows)
    columns = {"prompt": "instruction", "chosen": "chosen", "rejected": "rejected"}
    info = {"prefs": {"file_name": "pairs.jsonl", "ranking": True, "num_samples": 4, "columns": columns}}
    (tmp_path / "dataset_info.json").write_text(json.dumps(info))
    over = [f"data.dataset_dir={tmp_path}", "data.eval=[prefs]", "data.max_len=64"]
    cfg = recipe_config("rm", "unused", "prefs", tmp_path / "run", *over)
    monkeypatch.setenv("RANK", rank)
    prepare_pairs(cfg, tokenizer, read_margins=True)
    out = capsys.readouterr().out
    said = ("warning: data.eval: ", "note: prefs: num_samples 4 of 6 rows")
    assert [any(s in line for line in out.splitlines()) for s in said] == [rank == "0"] * 2, out


@pytest.mark.parametrize("rank", ["0", "1"])
def test_a_sweep_under_torchrun_is_printed_and_written_by_the_first_process(tmp_path, monkeypatch, capsys, rank):
    """`torchrun ... -m weitiao dpo C --sweep beta=…`: every process runs the sweep, and each printed the table and
    wrote sweep.json/.md/.png over the others'. Process 0 does, once; the others only train."""
    from weitiao import cli

    monkeypatch.setattr(dpo, "run", lambda cfg: {"eval_margins": cfg.dpo.beta, "eval_loss": 0.5})
    monkeypatch.setattr(cli, "console", cli.Console(width=200))  # rich's console, on the stdout capsys sees
    monkeypatch.setenv("RANK", rank)
    data = write_jsonl(tmp_path / "pairs.jsonl", make_pairs(4))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model: {{path: {tmp_path}}}\ndata: {{train: [{data}]}}\ntrain: {{out: {tmp_path / 'sw'}}}\n")
    cli.app(["dpo", str(cfg), "--sweep", "beta=0.1,0.5"], standalone_mode=False)
    out = capsys.readouterr().out
    written = (tmp_path / "sw" / "sweep.json").exists()
    assert (out.count("sweep beta=0.1,0.5"), written) == ((1, True) if rank == "0" else (0, False)), out


def test_falling_chosen_warning_prints_numbers_that_show_the_fall():
    """Both ends were printed to two decimals: chosen log-probs of -42.1301 → -42.1303 read '(-42.13 → -42.13)'."""
    f = dpo.FallingChosen(3)
    said = [f.update(v) for v in (-42.1301, -42.1302, -42.1303)][-1]
    assert "fell for 3 steps in a row (-42.1301 → -42.1303)" in said
    f = dpo.FallingChosen(3)
    assert "(-40.00 → -43.00)" in [f.update(v) for v in (-40.0, -41.5, -43.0)][-1]


@pytest.mark.parametrize("recipe", ["dpo", "rm"])
def test_a_template_set_beside_preference_raw_is_refused(tokenizer, tmp_path, recipe):
    """Under data.format preference_raw every pair is raw text: data.template=chatml rendered none of them, silently
    (the data record still said 'chatml'); now one line. Without preference_raw the template renders the pairs."""
    from weitiao.train.pairs import prepare_pairs

    data = write_jsonl(tmp_path / "pairs.jsonl", make_pairs(4))
    raw = recipe_config(recipe, "unused", data, tmp_path / "run", "data.format=preference_raw", "data.template=chatml")
    with pytest.raises(
        UserError, match=r"^data.template: 'chatml' renders no pair: data.format preference_raw .*pairs"
    ):
        prepare_pairs(raw, tokenizer)
    raw = recipe_config(recipe, "unused", data, tmp_path / "run", "data.format=preference_raw")
    assert tokenizer.decode(prepare_pairs(raw, tokenizer).train[0].input_ids).startswith("聊聊")  # no template
    chat = recipe_config(recipe, "unused", data, tmp_path / "run", "data.template=chatml")
    assert prepare_pairs(chat, tokenizer).template.name == "chatml"


@pytest.mark.parametrize("recipe", ["dpo", "kto"])
def test_a_reference_with_another_tokenizer_is_refused(tokenizer, tiny_model_dir, tmp_path, recipe):
    """dpo.reference / kto.reference scores the policy's token ids: a model of another family (another tokenizer)
    stopped mid-step in an IndexError traceback, or with a vocabulary as large would have scored other tokens without
    a word. Now one line before the policy loads; a reference whose tokenizer only adds tokens after the policy's
    (the base plus a token) trains."""
    from conftest import build_tokenizer, save_tiny_model
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from weitiao.recipes import kto

    other = Tokenizer(models.BPE())
    other.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    other.train_from_iterator(["another family, another vocabulary"] * 5, trainers.BpeTrainer(
        vocab_size=300, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))  # fmt: skip
    other = PreTrainedTokenizerFast(tokenizer_object=other, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    other.chat_template = tokenizer.chat_template
    foreign = save_tiny_model(tmp_path / "foreign", other)
    more = build_tokenizer()
    more.add_tokens(["<extra_tool>"])
    superset = save_tiny_model(tmp_path / "superset", more)
    if recipe == "dpo":
        data = write_jsonl(tmp_path / "pairs.jsonl", make_pairs(4))
        run = dpo.run
    else:
        data = write_jsonl(tmp_path / "fb.jsonl", [
            {"prompt": [{"role": "user", "content": q}], "completion": [{"role": "assistant", "content": a}],
             "label": good} for q, a, good in (("你好", "你好呀", True), ("天空", "滚", False))])  # fmt: skip
        run = kto.run
    cfg = recipe_config(recipe, tiny_model_dir, data, tmp_path / "run", f"{recipe}.reference={foreign}")
    with pytest.raises(UserError, match=rf"^{recipe}.reference .*foreign: its tokenizer lacks or numbers otherwise"):
        run(cfg)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
    ok = recipe_config(recipe, tiny_model_dir, data, tmp_path / "ok", f"{recipe}.reference={superset}",
                       "train.max_steps=1")  # fmt: skip
    assert run(ok)["steps"] == 1


def eval_rows(recipe: str, prompts: list[str]) -> list[dict]:
    """Rows of `recipe`'s shape, one per prompt."""
    if recipe == "sft":
        return [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": "好"}]} for q in prompts]
    if recipe == "kto":
        reply = [{"role": "assistant", "content": "好"}]
        return [{"prompt": [{"role": "user", "content": q}], "completion": reply, "label": i % 2 == 0}
                for i, q in enumerate(prompts)]  # fmt: skip
    return [{"prompt": q, "chosen": "好的", "rejected": "滚"} for q in prompts]


def prepared(recipe: str, cfg, tokenizer, rejects_dir):
    """`recipe`'s data as it prepares it for a run."""
    from weitiao.recipes import sft
    from weitiao.train.feedback import prepare_feedback
    from weitiao.train.pairs import prepare_pairs

    if recipe == "sft":
        return sft.prepare_data(cfg, tokenizer, rejects_dir)
    if recipe == "kto":
        return prepare_feedback(cfg.data, cfg.train, tokenizer, rejects_dir)
    return prepare_pairs(cfg, tokenizer)


@pytest.mark.parametrize("recipe", ["sft", "dpo", "rm", "kto"])
def test_an_eval_set_that_truncation_empties_is_refused(tokenizer, tmp_path, recipe):
    """data.eval whose every row is over max_len: each recipe trained to the end with no eval and no eval metric
    (exit 0, `0 eval ... 1 over max_len` in the rows line the only trace); now one line naming data.eval, as an
    emptied data.train is."""
    train = write_jsonl(tmp_path / "train.jsonl", eval_rows(recipe, ["你好", "天空"]))
    for name, prompt in (("long", "你好" * 60), ("ok", "天空")):
        evals = write_jsonl(tmp_path / f"{name}.jsonl", eval_rows(recipe, [prompt]))
        cfg = recipe_config(recipe, "unused", train, tmp_path / "run", "data.max_len=48", f"data.eval=[{evals}]")
        if name == "long":
            with pytest.raises(UserError, match=r"^data.eval: no eval (rows|pairs) left after truncation 'drop' \(max"):
                prepared(recipe, cfg, tokenizer, tmp_path)
        else:
            assert len(prepared(recipe, cfg, tokenizer, tmp_path).eval) in (1, 2)  # a pair: two sequences
