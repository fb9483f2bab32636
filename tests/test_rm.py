"""Reward model: score position, packed scores vs transformers' own pooling, end-to-end accuracy."""

import json

import pytest
import torch
from conftest import recipe_config, write_jsonl
from test_dpo import make_pairs
from transformers import AutoModelForSequenceClassification

from weitiao.config import load_config
from weitiao.data.collate import collate
from weitiao.data.formats import PreferencePair
from weitiao.data.preference import encode_pairs, pair_rows
from weitiao.data.templates import resolve_template
from weitiao.errors import UserError
from weitiao.models.heads import SequenceScorer, last_target_positions, load_reward_model
from weitiao.models.load import LoraSpec
from weitiao.recipes import rm
from weitiao.train.log import read_metrics


def test_last_target_positions():
    targets = torch.tensor([[-100, 5, 6, -100, -100, 7, -100, -100]])
    seq = torch.tensor([[0, 0, 0, 0, 1, 1, 1, -1]])
    assert last_target_positions(targets, seq, 2).tolist() == [3, 6]
    # a sequence with no labelled token was read at flat index 0 (the batch's first token): an error now
    with pytest.raises(ValueError, match=r"sequences \[1\] have no labelled token"):
        last_target_positions(torch.tensor([[-100, 5, -100, -100, -100, -100]]), torch.tensor([[0, 0, 0, 1, 1, 1]]), 2)


@pytest.mark.parametrize("packing", [True, False])
def test_packed_scores_equal_transformers_pooling(tiny_model_dir, tokenizer, packing):
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1).eval()
    model.config.pad_token_id = tokenizer.pad_token_id
    pairs = [
        PreferencePair([{"role": "user", "content": r["prompt"]}], r["chosen"], r["rejected"]) for r in make_pairs(4)
    ]
    exs, _ = encode_pairs(pairs, tokenizer, resolve_template(tokenizer), 128, "drop")
    rows = pair_rows([[0, 1], [2, 3]], packing)
    b = collate(exs, rows, tokenizer.pad_token_id, packing=packing)
    with torch.no_grad():
        scores = SequenceScorer(model)(b.input_ids, b.targets, b.position_ids, b.attention_mask, b.seq_index, 8)
        for k, i in enumerate(i for row in rows for i in row):
            ids = exs[i].input_ids
            end = max(j for j, x in enumerate(exs[i].labels) if x != -100) + 1  # through <|im_end|>
            ref = model(input_ids=torch.tensor([ids[:end]])).logits[0, 0].item()
            assert abs(scores[k].item() - ref) < 1e-4


# Eight make_pairs rows hold out two under eval_split 0.25, both over max_len 64: an eval set truncation empties is
# refused (those runs had trained with no eval); the tests that train on eight pairs and read no eval metric.
NO_EVAL = "data.eval_split=0"


def rm_config(model_dir, data, out, *extra, lora=("lora.dropout=0",)):
    return recipe_config(
        "rm",
        model_dir,
        data,
        out,
        "data.eval_split=0.25",
        "train.micro_batch_size=4",
        "data.max_len=64",
        "train.lr=3e-3",
        "train.warmup_ratio=0",
        *lora,
        *extra,
    )


@pytest.mark.slow
@pytest.mark.parametrize("quant", ["none", "4bit"])
def test_reward_model_learns_and_reloads(tiny_model_dir, tmp_path, quant):
    data = write_jsonl(tmp_path / "pairs.jsonl", make_pairs(48))
    out = tmp_path / "rm"
    summary = rm.run(
        rm_config(tiny_model_dir, data, out, "train.max_steps=20", "train.eval_every=10", f"model.quant={quant}")
    )
    assert summary["eval_accuracy"] >= 0.9 and summary["eval_margin"] > 0
    evals = read_metrics(out, "eval")
    assert {"eval_reward_mean", "eval_reward_std"} <= set(evals[-1])
    model, tok, template = load_reward_model(out)
    assert "<|im_start|>" in template
    # The reloaded model reproduces the trained model's held-out accuracy.
    from weitiao.recipes.score import score_pairs

    pairs = [
        PreferencePair([{"role": "user", "content": r["prompt"]}], r["chosen"], r["rejected"])
        for r in make_pairs(12, seed=7)
    ]
    rc, rr = score_pairs(model, tok, pairs)
    assert sum(c > r for c, r in zip(rc, rr)) >= 11


def test_lora_modules_to_save_is_trained_beside_the_score_head(tiny_model_dir, tmp_path):
    """peft extended the config's own lora.modules_to_save list with its classifier/score names (SEQ_CLS), so the
    check that each name matched a module refused `classifier`: a reward model with lora.modules_to_save never ran."""
    from safetensors.torch import load_file

    data = write_jsonl(tmp_path / "pairs.jsonl", make_pairs(8))
    out = tmp_path / "rm"
    cfg = rm_config(tiny_model_dir, data, out, "train.max_steps=2", "lora.modules_to_save=[embed_tokens]", NO_EVAL)
    rm.run(cfg)
    assert cfg.lora.modules_to_save == ["embed_tokens"]
    saved = load_file(str(out / "final" / "adapter" / "adapter_model.safetensors"))
    embed = next(v for k, v in saved.items() if "embed_tokens" in k)
    base = load_file(str(tiny_model_dir / "model.safetensors"))["model.embed_tokens.weight"]
    assert any("score" in k for k in saved) and not torch.equal(embed, base.to(embed.dtype))  # trained, saved


def test_a_base_whose_weights_changed_since_training_is_refused(tiny_model_dir, tokenizer, tmp_path):
    """A LoRA reward model scored silently on whatever its recorded base folder held (a re-download, another
    checkpoint saved there); the digest recorded at training is checked when it loads."""
    import shutil

    from conftest import save_tiny_model

    from weitiao.errors import UserError

    base = shutil.copytree(tiny_model_dir, tmp_path / "base")
    out = tmp_path / "rm"
    rm.run(rm_config(base, write_jsonl(tmp_path / "p.jsonl", make_pairs(8)), out, "train.max_steps=1", NO_EVAL))
    load_reward_model(out)  # negative control: the same weights load
    save_tiny_model(base, tokenizer, seed=1)  # same shapes, other weights, same path
    with pytest.raises(UserError, match=r"its base .*base holds other weights than it was trained on"):
        load_reward_model(out)


@pytest.mark.slow
def test_full_finetune_resume_equals_uninterrupted(tiny_model_dir, tmp_path):
    """lora.enabled=false: the checkpoint holds a classifier (`score`), not a causal LM (`lm_head`)."""
    data = write_jsonl(tmp_path / "pairs.jsonl", make_pairs(24))
    args = ("train.max_steps=4", "train.save_every=2", "data.eval_split=0", "train.lr=1e-4")
    full = ("lora.enabled=false",)  # no other lora key: it would do nothing
    rm.run(rm_config(tiny_model_dir, data, tmp_path / "whole", *args, lora=full))
    rm.run(rm_config(tiny_model_dir, data, tmp_path / "cut", *args, "train.stop_after=2", lora=full))
    rm.run(rm_config(tiny_model_dir, data, tmp_path / "cut", *args, lora=full))
    whole = [r["loss"] for r in read_metrics(tmp_path / "whole", "train")]
    cut = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "cut", "train")}
    assert sorted(cut) == [1, 2, 3, 4] and all(abs(cut[s + 1] - a) < 1e-5 for s, a in enumerate(whole))
    # no base digest: only an adapter reward model is scored on (and checked against) its base's weights
    assert json.loads((tmp_path / "whole" / "final" / "reward_model.json").read_text())["base_weights"] is None


@pytest.mark.slow
def test_init_from_an_sft_adapter(tiny_model_dir, tmp_path):
    """An SFT (causal-LM) adapter starts the reward model: its LoRA weights load, the score head trains."""
    from safetensors.torch import load_file

    from weitiao.recipes import sft

    chat = write_jsonl(tmp_path / "chat.jsonl", [{"instruction": f"问题{i}", "output": "好的😊"} for i in range(8)])
    sft_cfg = [f"model.path={tiny_model_dir}", f"data.train=[{chat}]", f"train.out={tmp_path / 'sft'}"]
    sft.run(load_config(sft.SFTConfig, None, [*sft_cfg, "train.max_steps=2", "train.progress=false", "train.lr=1e-2"]))
    data = write_jsonl(tmp_path / "pairs.jsonl", make_pairs(24))
    out = tmp_path / "rm"
    init = f"lora.init_from={tmp_path / 'sft'}"
    for key in ("lora.r=4", "lora.alpha=3", "lora.targets=[q_proj]"):  # a set key contradicting the adapter: refused
        with pytest.raises(UserError, match=f"{key.split('=')[0]}=.* but the adapter at lora.init_from"):
            rm.run(rm_config(tiny_model_dir, data, out, "train.max_steps=2", init, key))
        assert not out.exists()
    rm.run(rm_config(tiny_model_dir, data, out, "train.max_steps=2", init, f"lora.r={LoraSpec().r}"))  # agrees
    saved = load_file(str(out / "final" / "adapter" / "adapter_model.safetensors"))
    start = load_file(str(tmp_path / "sft" / "final" / "adapter" / "adapter_model.safetensors"))
    assert any(k.endswith("score.weight") for k in saved)
    assert set(start) <= set(saved)  # the same LoRA modules, trained further (lr 3e-3, 2 steps)
    k = next(k for k in start if "lora_B" in k)
    assert start[k].abs().sum() > 0 and (saved[k] - start[k]).abs().max() < 0.1 * start[k].abs().max() + 0.01


def test_eval_sharded_over_two_processes_equals_one(tiny_model_dir, tmp_path):
    from test_dpo_correctness import FakeAccel

    from weitiao.models.load import build_trainable, load_tokenizer

    data = write_jsonl(tmp_path / "pairs.jsonl", make_pairs(12))
    cfg = rm_config(tiny_model_dir, data, tmp_path / "o", "train.micro_batch_size=2")
    tok = load_tokenizer(cfg.model.path)
    d = rm.prepare_pairs(cfg, tok)
    model = build_trainable(cfg.model, cfg.lora, torch.device("cpu"), head="score")
    model.config.pad_token_id = tok.pad_token_id
    scorer = SequenceScorer(model)
    forwards: list[int] = []
    scorer.register_forward_hook(lambda *_: forwards.append(1))
    for n_pairs in (3, 1):  # with 1 pair, process 1 has none: it still runs the forwards (collective)
        exs = d.train[: 2 * n_pairs]
        one = rm.evaluate(scorer, exs, cfg, tok.pad_token_id, FakeAccel(0, 1, []))
        seen: list = []
        counts = []
        for rank in (1, 0):
            forwards.clear()
            two = rm.evaluate(scorer, exs, cfg, tok.pad_token_id, FakeAccel(rank, 2, seen))
            counts.append(len(forwards))
        assert counts[0] == counts[1] > 0
        assert all(abs(one[k] - two[k]) < 1e-6 * max(1, abs(one[k])) for k in one)


PINNED_RM = [0.661347, 0.347770, 0.066749, 0.020356, 0.012611]  # steps 1-5, from this code


@pytest.mark.slow
def test_pinned_losses_with_defaults(tiny_model_dir, tmp_path):
    """Defaults (LoRA dropout 0.05, packing, seed 42), micro-batch 2: logged loss of steps 1-5."""
    data = write_jsonl(tmp_path / "pairs.jsonl", make_pairs(24))
    base = [f"model.path={tiny_model_dir}", f"data.train=[{data}]", f"train.out={tmp_path / 'o'}", "data.max_len=96"]
    fast = ["train.progress=false", "train.tensorboard=false", "train.micro_batch_size=2", "train.max_steps=5"]
    rm.run(load_config(rm.RMConfig, None, [*base, *fast, "train.lr=3e-3", "train.warmup_ratio=0"]))
    got = [r["loss"] for r in read_metrics(tmp_path / "o", "train")]
    assert got == pytest.approx(PINNED_RM, rel=1e-3)


def test_a_reward_model_is_not_chatted_with_or_merged_into_a_causal_lm(tiny_model_dir, tmp_path):
    """Its LoRA on a causal LM writes from a stray adapter and loses the trained score head (was: silent)."""
    from weitiao.infer.chat import load_chat_model
    from weitiao.infer.export import export

    out = tmp_path / "rm"
    data = write_jsonl(tmp_path / "p.jsonl", make_pairs(8))
    rm.run(rm_config(tiny_model_dir, data, out, "train.max_steps=1", NO_EVAL))
    for call in (
        lambda: export(str(out), str(tmp_path / "merged"), merge=True),
        lambda: load_chat_model(None, str(out)),
    ):
        with pytest.raises(
            UserError, match="a reward model \\(LoRA \\+ score head\\), not a model that writes replies"
        ):
            call()
    assert not (tmp_path / "merged").exists()


@pytest.mark.parametrize("kind", ["rm", "dpo"])
def test_eval_keys_without_eval_data_are_refused(tiny_model_dir, tmp_path, kind):
    """train.eval_every / early_stop_patience with no eval pairs never evaluated and never stopped, silently
    (SFT already refused it)."""
    from weitiao.recipes import dpo

    data = write_jsonl(tmp_path / "pairs.jsonl", make_pairs(8))
    run = {"rm": rm.run, "dpo": dpo.run}[kind]
    for keys in (["train.eval_every=2"], ["train.early_stop_patience=2", "train.eval_every=1"]):
        extra = ("data.eval_split=0", "train.max_steps=2", *keys)
        with pytest.raises(UserError, match=rf"^{keys[0].split('=')[0]}=\d needs eval data"):
            run(recipe_config(kind, tiny_model_dir, data, tmp_path / "o", *extra))
    assert not (tmp_path / "o" / "metrics.jsonl").exists()  # refused before training


def test_dpo_kl_tokens_without_eval_data_are_refused(tiny_model_dir, tmp_path):
    """dpo.kl_max_new_tokens samples eval prompts only: without eval pairs a changed value did nothing, silently."""
    from weitiao.recipes import dpo

    data = write_jsonl(tmp_path / "pairs.jsonl", make_pairs(8))
    extra = ("data.eval_split=0", "train.max_steps=1", "dpo.kl_max_new_tokens=64")
    with pytest.raises(UserError, match=r"^dpo.kl_max_new_tokens=64 samples eval prompts .* no eval data"):
        dpo.run(recipe_config("dpo", tiny_model_dir, data, tmp_path / "o", *extra))
    for ok in ("dpo.kl_max_new_tokens=0", "dpo.kl_max_new_tokens=32"):  # off, or the default: nothing to say
        dpo.run(recipe_config("dpo", tiny_model_dir, data, tmp_path / ok[-2:], *extra[:2], ok))


def test_a_run_writes_its_data_record(tiny_model_dir, tmp_path):
    """SFT and DPO write a `data` record to metrics.jsonl (rows read, kept, rejected, …; calc plan reads `world`
    from it); the reward model wrote none. Every pair read is accounted for in it, and a resumed run adds none."""
    rows = [dict(r, margin=0.5, confidence=0.9) for r in make_pairs(12)]
    rows[3]["confidence"] = 0.1  # below data.min_confidence
    rows[5]["chosen"] = "好" * 200  # over data.max_len
    del rows[7]["chosen"]  # invalid: to rejects
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    out = tmp_path / "rm"
    args = ("data.skip_invalid=true", "data.min_confidence=0.5", "data.max_len=128", "train.max_steps=1")
    rm.run(rm_config(tiny_model_dir, data, out, *args, "train.save_every=1"))
    [d] = read_metrics(out, "data")
    assert (d["read"], d["rejected"], d["low_confidence"], d["dropped_too_long"]) == (12, 1, 1, 1)
    assert d["read"] == d["kept"] + d["eval_pairs"] + d["rejected"] + d["low_confidence"] + d["dropped_too_long"]
    assert d["margin_pairs"] == d["kept"] and d["world"] == 1 and d["trainable_params"] > 0
    rm.run(rm_config(tiny_model_dir, data, out, *args[:3], "train.max_steps=2", "train.resume=auto"))
    assert len(read_metrics(out, "data")) == 1


@pytest.mark.parametrize("kind", ["dpo", "rm"])
def test_eval_pairs_over_max_len_are_counted(tiny_model_dir, tmp_path, kind, capsys):
    """An eval pair dropped for length vanished from the pairs line and the `data` record (only the train pairs'
    encoding counts were kept), so 'read = …' did not add up; train and eval are counted together now."""
    from weitiao.recipes import dpo

    train = write_jsonl(tmp_path / "train.jsonl", make_pairs(8))
    ev_rows = make_pairs(4)
    ev_rows[1]["chosen"] = "好" * 200  # over data.max_len
    ev = write_jsonl(tmp_path / "eval.jsonl", ev_rows)
    out = tmp_path / kind
    args = (f"data.eval=[{ev}]", "data.max_len=128", "train.max_steps=1", "train.eval_every=1")
    (dpo.run if kind == "dpo" else rm.run)(recipe_config(kind, tiny_model_dir, train, out, *args))
    [d] = read_metrics(out, "data")
    got = (d["read"], d["kept"], d["eval_pairs"], d["dropped_too_long"], d["eval_dropped_too_long"])
    assert got == (12, 8, 3, 0, 1)
    assert d["read"] == d["kept"] + d["eval_pairs"] + d["rejected"] + d["low_confidence"] + d["eval_dropped_too_long"]
    assert d["pairs"] == d["kept"] + d["dropped_too_long"] and d["world"] == 1  # calc plan reads `world` (DPO: none)
    assert (
        "12 read = 8 train + 3 eval + 0 eval copies + 0 rejected + 0 below min_confidence + 1 over max_len"
        in capsys.readouterr().out
    )


@pytest.mark.parametrize("resume", ["auto", "force"])
def test_resuming_a_checkpoint_of_another_recipe_is_refused(tiny_model_dir, tmp_path, resume):
    """An RM run into a DPO run's folder, on the same pairs, resumed the DPO checkpoint without a word (keys only one
    config has count as no change: dpo.* vs rm.*); another recipe's checkpoint is refused, force or not."""
    from weitiao.recipes import dpo

    data = write_jsonl(tmp_path / "pairs.jsonl", make_pairs(8))
    out = tmp_path / "run"
    steps = ("train.max_steps=3", "train.save_every=1", "train.stop_after=1", "data.max_len=64")
    dpo.run(recipe_config("dpo", tiny_model_dir, data, out, *steps))
    with pytest.raises(UserError, match=r"was written by another recipe \(config sections model, lora, data, dpo, "
                       r"train; this run's model, lora, data, rm, train\)"):  # fmt: skip
        rm.run(rm_config(tiny_model_dir, data, out, "train.max_steps=3", f"train.resume={resume}"))


@pytest.mark.parametrize("kind", ["dpo", "rm"])
def test_eval_split_copies_are_counted(tiny_model_dir, tmp_path, kind, capsys):
    """data.eval_split keeps one copy of a held-out pair and drops the others; they vanished from the pairs line and
    the `data` record ('18 read = 9 train + 6 eval + 0 rejected …': 3 unaccounted)."""
    from weitiao.recipes import dpo

    rows = make_pairs(12)
    data = write_jsonl(tmp_path / "pairs.jsonl", rows + rows[:6])  # 6 pairs twice
    out = tmp_path / kind
    args = ("data.eval_split=0.5", "train.max_steps=1")
    (dpo.run if kind == "dpo" else rm.run)(recipe_config(kind, tiny_model_dir, data, out, *args))
    [d] = read_metrics(out, "data")
    assert d["eval_copies"] > 0
    assert d["read"] == 18 == d["kept"] + d["eval_pairs"] + d["eval_copies"] + d["rejected"] + d["low_confidence"]
    line = f"18 read = {d['kept']} train + {d['eval_pairs']} eval + {d['eval_copies']} eval copies + 0 rejected"
    assert line in capsys.readouterr().out
