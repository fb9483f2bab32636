"""End-to-end SFT on tiny models: QLoRA path, exact resume, early stopping, DDP parity."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import recipe_config, write_jsonl
from safetensors.torch import load_file

from weitiao.errors import UserError
from weitiao.recipes import sft
from weitiao.train.log import read_metrics

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def config(model_dir, data, out, *extra):
    return recipe_config(
        "sft",
        model_dir,
        data,
        out,
        "data.eval_split=0.2",
        "train.micro_batch_size=2",
        "data.max_len=128",
        "train.lr=5e-3",
        "train.warmup_ratio=0",
        *extra,
    )


def adapter(out):
    return load_file(str(Path(out) / "final" / "adapter" / "adapter_model.safetensors"))


def test_qlora_sft_learns_and_saves(tiny_model_dir, chat_file, tmp_path):
    cfg = config(
        tiny_model_dir,
        chat_file,
        tmp_path / "run",
        "model.quant=4bit",
        "train.max_steps=12",
        "train.eval_every=4",
        "train.save_every=4",
        "train.keep_last=2",
    )
    summary = sft.run(cfg)
    train = read_metrics(tmp_path / "run", "train")
    assert len(train) == 12 and train[-1]["loss"] < train[0]["loss"] - 0.5
    assert len(read_metrics(tmp_path / "run", "eval")) == 3
    data = read_metrics(tmp_path / "run", "data")[0]
    assert data["rows"] == data["kept"] + data["dropped_too_long"]
    assert data["read"] == data["kept"] + data["eval_rows"] + data["rejected"] + data["dropped_too_long"]
    assert summary["steps"] == 12
    ckpts = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert ckpts == ["step-000008", "step-000012"]  # keep_last 2
    final = tmp_path / "run" / "final"
    cfg_json = json.loads((final / "adapter" / "adapter_config.json").read_text())
    assert cfg_json["r"] == 16 and cfg_json["lora_alpha"] == 32
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(final / "tokenizer")
    assert "<|im_start|>" in tok.chat_template
    # The 4-bit base really was NF4 with double quantization.
    from weitiao.models.load import load_model

    m = load_model(cfg.model)
    qs = m.model.layers[0].self_attn.q_proj.weight.quant_state
    assert qs.quant_type == "nf4" and qs.nested


def test_resume_is_exact(tiny_model_dir, chat_file, tmp_path):
    args = ("train.max_steps=6", "train.save_every=2", "lora.dropout=0.1", "train.eval_every=3")
    straight = sft.run(config(tiny_model_dir, chat_file, tmp_path / "straight", *args))
    sft.run(config(tiny_model_dir, chat_file, tmp_path / "killed", *args, "train.stop_after=3"))
    assert not (tmp_path / "killed" / "final").exists()
    killed = sft.run(config(tiny_model_dir, chat_file, tmp_path / "killed", *args))  # resume: auto
    a, b = adapter(tmp_path / "straight"), adapter(tmp_path / "killed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    losses = [r["loss"] for r in read_metrics(tmp_path / "straight", "train")]
    resumed = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "killed", "train")}
    assert [resumed[s] for s in range(1, 7)] == losses
    # train_loss is the mean over every step (HF's; it was the last step's), the resumed run's too
    for summary in (straight, killed):
        assert summary["train_loss"] == pytest.approx(sum(losses) / 6, rel=1e-12)
        assert (summary["last_train_loss"], summary["train_mean_steps"]) == (losses[-1], 6)
    done = read_metrics(tmp_path / "killed", "done")[-1]
    assert (done["train_loss"], done["last_train_loss"]) == (killed["train_loss"], losses[-1])


def test_early_stopping(tiny_model_dir, chat_file, tmp_path):
    """A plateau: at lr 1e-12 no eval improves on step 1's by the 1e-6 it takes, so patience 2 stops at step 3. (It
    used lr 0.6, tuned to one tiny model's eval curve, which moves with the environment: on a fresh install of
    2026-12-01, code unchanged, the curve kept falling until NaN at step 13 and the test failed.)"""
    args = ("train.max_steps=8", "train.eval_every=1", "train.lr=1e-12")
    summary = sft.run(config(tiny_model_dir, chat_file, tmp_path / "run", *args, "train.early_stop_patience=2"))
    assert summary["stopped_early"] and summary["steps"] == 3 and summary["best_step"] == 1
    assert (tmp_path / "run" / "final" / "adapter").exists()
    control = sft.run(config(tiny_model_dir, chat_file, tmp_path / "off", *args))  # patience 0: runs to the end
    assert not control["stopped_early"] and control["steps"] == 8


def test_full_finetune_resume_loads_model_dir(tiny_model_dir, chat_file, tmp_path):
    args = ("lora.enabled=false", "train.max_steps=4", "train.save_every=2", "train.lr=1e-3")
    sft.run(config(tiny_model_dir, chat_file, tmp_path / "a", *args))
    sft.run(config(tiny_model_dir, chat_file, tmp_path / "b", *args, "train.stop_after=2"))
    sft.run(config(tiny_model_dir, chat_file, tmp_path / "b", *args))
    wa = load_file(str(tmp_path / "a" / "final" / "model" / "model.safetensors"))
    wb = load_file(str(tmp_path / "b" / "final" / "model" / "model.safetensors"))
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


def test_ddp_two_processes_match_one(tiny_model_dir, chat_file, tmp_path):
    """2-process DDP (gloo) with grad_accum 1 == 1 process with grad_accum 2: same global batch. The 5 eval
    rows (micro-batches of 1) split 3 / 2 + an uncounted filler: the eval losses equal one process's."""
    evals = [{"instruction": f"评估 #{i}" + "呢" * i, "output": "好的" * (i + 1)} for i in range(5)]
    common = [
        f"model.path={tiny_model_dir}",
        f"data.train=[{chat_file}]",
        f"data.eval=[{write_jsonl(tmp_path / 'eval.jsonl', evals)}]",
        "train.progress=false",
        "train.tensorboard=false",
        "train.micro_batch_size=1",
        "data.max_len=64",
        "data.eval_split=0",
        "train.max_steps=5",
        "lora.dropout=0",
        "train.lr=5e-3",
        "data.packing=false",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cfgs = tmp_path / "empty.yaml"
    cfgs.write_text("{}\n")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ddp = ["torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1", f"--master_port={port}"]
    for launcher, accum, out in [([], 2, "one"), (ddp, 1, "two")]:
        cmd = [sys.executable, "-m", *launcher, *(["-m"] if launcher else []), "weitiao", "sft", str(cfgs), *common]
        p = subprocess.run(
            [*cmd, f"train.grad_accum={accum}", f"train.out={tmp_path / out}"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        assert p.returncode == 0, p.stderr[-3000:]
        assert p.stdout.count("'finished': True") == 1, p.stdout  # the summary once, not once per process
    one = [r["loss"] for r in read_metrics(tmp_path / "one", "train")]
    two = [r["loss"] for r in read_metrics(tmp_path / "two", "train")]
    assert len(one) == len(two) == 5 and one[-1] < one[0]
    assert max(abs(a - b) for a, b in zip(one, two)) < 1e-4
    assert read_metrics(tmp_path / "two", "data")[0]["world"] == 2
    for key in ("eval_loss", "eval_loss_answer"):  # the filler counted would move them by ~1e-2
        assert [r[key] for r in read_metrics(tmp_path / "one", "eval")] == pytest.approx(
            [r[key] for r in read_metrics(tmp_path / "two", "eval")], abs=1e-5
        )


@pytest.mark.parametrize(
    "extra",
    [
        ("model.quant=8bit",),
        ("lora.dora=true", "model.gradient_checkpointing=true"),
        ("lora.rslora=true",),
        ("lora.targets=[q_proj,v_proj]", "data.packing=false"),
    ],
    ids=["8bit", "dora+ckpt", "rslora", "qv-padded"],
)
def test_variants_train(tiny_model_dir, chat_file, tmp_path, extra):
    cfg = config(tiny_model_dir, chat_file, tmp_path / "run", "train.max_steps=4", *extra)
    sft.run(cfg)
    losses = [r["loss"] for r in read_metrics(tmp_path / "run", "train")]
    assert len(losses) == 4 and losses[-1] < losses[0]
    saved = json.loads((tmp_path / "run" / "final" / "adapter" / "adapter_config.json").read_text())
    assert saved["use_dora"] is ("lora.dora=true" in extra) and saved["use_rslora"] is ("lora.rslora=true" in extra)


def test_epochs_with_varying_packed_row_counts(tiny_model_dir, tokenizer, tmp_path):
    """Packed epochs differ in micro-batch count; stepping across epoch boundaries must not run dry."""
    import random

    from weitiao.data.chat import EncodeOptions, encode
    from weitiao.data.collate import plan_epoch
    from weitiao.data.formats import Conversation, parse_alpaca
    from weitiao.data.templates import resolve_template

    template = resolve_template(tokenizer)
    for seed in range(50):  # find data whose later epochs pack into fewer micro-batches than epoch 0
        rng = random.Random(seed)
        rows = [
            {"instruction": "问" * rng.randint(1, 8) + str(i), "output": "答" * rng.randint(1, 8)} for i in range(40)
        ]
        lengths = [len(encode(Conversation(parse_alpaca(r)), tokenizer, template, EncodeOptions())) for r in rows]
        counts = [
            len(plan_epoch(lengths, seed=42, epoch=e, micro_batch_size=1, packing=True, capacity=128)) for e in range(4)
        ]
        if min(counts[1:]) < counts[0]:
            break
    else:
        pytest.skip("no data set with varying packed counts found")
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    cfg = config(
        tiny_model_dir,
        data,
        tmp_path / "run",
        "train.epochs=4",
        "data.eval_split=0",
        "train.micro_batch_size=1",
        "data.max_len=128",
    )
    summary = sft.run(cfg)
    train = read_metrics(tmp_path / "run", "train")
    # 4 epochs of their own sizes (it used to be 4 × the first epoch's, so the run spilled into a fifth)
    assert summary["finished"] and len(train) == summary["total_steps"] == sum(counts)
    assert [sum(1 for r in train if r["epoch"] == e) for e in range(5)] == [*counts, 0]


def test_fresh_run_in_used_dir_starts_clean(tiny_model_dir, chat_file, tmp_path):
    sft.run(config(tiny_model_dir, chat_file, tmp_path / "run", "train.max_steps=4", "train.save_every=1"))
    sft.run(config(tiny_model_dir, chat_file, tmp_path / "run", "train.max_steps=2", "train.resume=none"))
    assert [r["step"] for r in read_metrics(tmp_path / "run", "train")] == [1, 2]
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step-000002"]


def test_init_from_continues_saved_adapter(tiny_model_dir, chat_file, tmp_path):
    first = sft.run(config(tiny_model_dir, chat_file, tmp_path / "a", "train.max_steps=4", "lora.r=8"))
    cont = config(tiny_model_dir, chat_file, tmp_path / "b", "train.max_steps=1", f"lora.init_from={tmp_path / 'a'}")
    cont.train.lr = 1e-12  # one near-zero step: the result must equal the adapter it started from
    sft.run(cont)
    a, b = adapter(tmp_path / "a"), adapter(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert read_metrics(tmp_path / "b", "train")[0]["loss"] < read_metrics(tmp_path / "a", "train")[0]["loss"]
    assert first["steps"] == 4
    with pytest.raises(Exception, match="lora.init_from"):
        sft.run(config(tiny_model_dir, chat_file, tmp_path / "c", "train.max_steps=1", "lora.init_from=/nope"))


def test_init_from_refuses_a_different_shape_and_applies_dropout(tiny_model_dir, chat_file, tmp_path):
    from peft.tuners.lora import LoraLayer

    from weitiao.models.load import build_trainable

    sft.run(config(tiny_model_dir, chat_file, tmp_path / "a", "train.max_steps=1", "lora.r=8"))  # dropout 0.05
    init = f"lora.init_from={tmp_path / 'a'}"
    for key, msg in [("lora.r=16", "lora.r=16 but the adapter"), ("lora.alpha=8", "lora.alpha=8.0 but the adapter")]:
        with pytest.raises(UserError, match=msg):
            sft.run(config(tiny_model_dir, chat_file, tmp_path / "b", "train.max_steps=1", init, key))
    # unset keys are the adapter's; a set dropout is applied (negative control: unset keeps the adapter's 0.05)
    for extra, want in [(["lora.dropout=0.0"], torch.nn.Identity), ([], torch.nn.Dropout)]:
        cfg = config(tiny_model_dir, chat_file, tmp_path / "b", init, *extra)
        model = build_trainable(cfg.model, cfg.lora, torch.device("cpu"))
        drops = [m.lora_dropout["default"] for m in model.modules() if isinstance(m, LoraLayer)]
        assert drops and all(type(d) is want for d in drops)
    # alpha: null, as the continued run's own config.yaml records an alpha left out, is no contradiction (was refused)
    cfg = config(tiny_model_dir, chat_file, tmp_path / "b", init, "lora.alpha=null")
    assert "alpha" in cfg.lora.model_fields_set and cfg.lora.alpha is None
    build_trainable(cfg.model, cfg.lora, torch.device("cpu"))


def test_init_from_refuses_targets_and_modules_to_save_the_adapter_does_not_have(tiny_model_dir, tmp_path):
    """With lora.init_from, lora.modules_to_save and a string lora.targets (all-linear, a regex) were ignored: the run
    trained the saved adapter alone and recorded the keys as if they had acted. Targets compare as modules: an
    all-linear adapter continues under targets all-linear or the list of its layers (a list used to be refused)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from weitiao.models.load import LoraSpec, ModelSpec, build_trainable

    def save(name, targets):
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        get_peft_model(base, LoraConfig(r=2, target_modules=targets)).save_pretrained(tmp_path / name)
        return str(tmp_path / name)

    q, every = save("q", ["q_proj"]), save("all", "all-linear")
    layers = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model, cpu = ModelSpec(path=str(tiny_model_dir)), torch.device("cpu")
    refused = [
        (q, {"targets": "all-linear"}, r"lora.targets=all-linear puts adapters on 14 modules .* is on 2 \(q_proj\)"),
        (q, {"targets": ".*v_proj"}, r"lora.targets=.\*v_proj puts adapters on 2 modules \(v_proj\)"),
        (every, {"targets": ["q_proj"]}, "puts adapters on 2 modules"),
        (q, {"modules_to_save": ["lm_head"]}, r"lora.modules_to_save=\['lm_head'\] but the adapter .* has \[\]"),
    ]
    for adapter, keys, msg in refused:
        with pytest.raises(UserError, match=msg):
            build_trainable(model, LoraSpec(init_from=adapter, **keys), cpu)
    own = [(q, {"targets": ["q_proj"]}), (every, {"targets": "all-linear"}), (every, {"targets": layers})]
    for adapter, keys in own:  # negative controls: the adapter's own modules
        build_trainable(model, LoraSpec(init_from=adapter, **keys), cpu)


@pytest.mark.parametrize(("steps", "save_every", "want"), [(4, 2, [2, 4]), (5, 2, [2, 4, 5]), (3, 0, [3])])
def test_golden_prompts_answered_at_each_save(tiny_model_dir, chat_file, tmp_path, steps, save_every, want):
    """The last step saves final/ too: its answers were missing unless it fell on save_every (none with 0)."""
    golden = write_jsonl(tmp_path / "golden.jsonl", [{"prompt": "今天天气怎么样？"}, {"prompt": "推荐一部电影吧"}])
    extra = (f"train.max_steps={steps}", f"train.save_every={save_every}", f"train.golden={golden}")
    sft.run(config(tiny_model_dir, chat_file, tmp_path / "run", *extra))
    rows = [json.loads(x) for x in (tmp_path / "run" / "golden.jsonl").read_text(encoding="utf-8").splitlines()]
    assert sorted({r["step"] for r in rows}) == want and len(rows) == 2 * len(want)


def test_rows_with_nothing_to_train_are_counted_and_a_run_of_them_refused(tiny_model_dir, tmp_path):
    """train_turns last on rows whose last reply has weight 0 trains no token: the run used to finish with
    train_loss 0.0 and exit 0 (or blame the learning rate at step 3)."""
    from weitiao.models.load import load_tokenizer

    def row(i, last_weight):
        return {"messages": [{"role": "user", "content": f"问{i}"}, {"role": "assistant", "content": "答"},
                             {"role": "user", "content": "再问"},
                             {"role": "assistant", "content": "再答", "weight": last_weight}]}  # fmt: skip

    idle = write_jsonl(tmp_path / "idle.jsonl", [row(i, 0) for i in range(6)])
    args = ("data.train_turns=last", "train.max_steps=1")
    with pytest.raises(UserError, match=r"data.train: no row has a token to train \(data.train_turns 'last'"):
        sft.run(config(tiny_model_dir, idle, tmp_path / "a", *args))
    assert sft.run(config(tiny_model_dir, idle, tmp_path / "b", "train.max_steps=1"))["finished"]  # all: 1st reply
    mixed = write_jsonl(tmp_path / "mixed.jsonl", [row(i, i % 2) for i in range(6)])
    cfg = config(tiny_model_dir, mixed, tmp_path / "c", *args, "data.eval_split=0")
    assert (
        "3 training rows have no token to train"
        in sft.prepare_data(cfg, load_tokenizer(str(tiny_model_dir))).warnings[0]
    )


def test_a_template_set_for_raw_text_rows_is_refused(tiny_model_dir, tmp_path):
    """Format text rows and string prompt/completion rows are raw text: data.template=chatml rendered none of them,
    silently (the data line still said 'template chatml'); now one line. Chat rows beside them take it."""
    from weitiao.models.load import load_tokenizer

    tok = load_tokenizer(str(tiny_model_dir))
    text = write_jsonl(tmp_path / "text.jsonl", [{"text": f"周末在家躺着 {i}"} for i in range(6)])
    pc = write_jsonl(tmp_path / "pc.jsonl", [{"prompt": f"问{i}", "completion": "答"} for i in range(6)])
    chat = write_jsonl(tmp_path / "chat.jsonl", [{"instruction": f"问{i}", "output": "答"} for i in range(6)])
    for data in (text, pc):
        cfg = config(tiny_model_dir, data, tmp_path / "run", "data.template=chatml")
        with pytest.raises(UserError, match=rf"^data.template: 'chatml' renders no row: every row of \S*{data.name}"):
            sft.prepare_data(cfg, tok)
        assert sft.prepare_data(config(tiny_model_dir, data, tmp_path / "run"), tok).text_only
    both = config(
        tiny_model_dir, text, tmp_path / "run", "data.template=chatml", f"data.eval=[{chat}]", "data.eval_split=0"
    )
    assert sft.prepare_data(both, tok).template.name == "chatml"  # the eval rows are rendered through it


def test_eval_keys_without_eval_data_are_refused(tiny_model_dir, chat_file, tmp_path):
    """train.eval_every / early_stop_patience with no eval set never evaluated and never stopped, silently."""
    for keys in (["train.early_stop_patience=2", "train.eval_every=1"], ["train.eval_every=2"]):
        with pytest.raises(UserError, match=rf"^{keys[0]} needs eval data"):
            sft.run(config(tiny_model_dir, chat_file, tmp_path / "a", "data.eval_split=0", "train.max_steps=2", *keys))
    assert not (tmp_path / "a" / "metrics.jsonl").exists()  # refused before training
    # negative control: eval_every timing the golden prompts (no save_every) is used, so it stays allowed
    golden = write_jsonl(tmp_path / "golden.jsonl", [{"prompt": "推荐一部电影吧"}])
    extra = ("data.eval_split=0", "train.max_steps=2", "train.eval_every=1", f"train.golden={golden}")
    sft.run(config(tiny_model_dir, chat_file, tmp_path / "b", *extra))
    assert not read_metrics(tmp_path / "b", "eval")
    assert sorted({json.loads(x)["step"] for x in (tmp_path / "b" / "golden.jsonl").read_text().splitlines()}) == [1, 2]


def test_full_finetune_of_16_bit_weights_warns_that_small_steps_are_lost(tiny_model_dir, chat_file, tmp_path, capsys):
    """AdamW on bf16 weights has no fp32 copy: a step under the weight's rounding is lost. Said, not silent."""
    extra = ("lora.enabled=false", "train.max_steps=1", "train.lr=2e-5")
    sft.run(config(tiny_model_dir, chat_file, tmp_path / "bf16", *extra, "model.dtype=bf16"))
    assert "trained weights are 16-bit and AdamW updates them in place" in capsys.readouterr().out
    sft.run(config(tiny_model_dir, chat_file, tmp_path / "fp32", *extra, "model.dtype=fp32"))  # negative control
    assert "16-bit" not in capsys.readouterr().out


def test_final_appears_whole_or_not_at_all(tiny_model_dir, chat_file, tmp_path, monkeypatch):
    """A crash while final/ was written left a partial folder (weights, no tokenizer) that resume then refused as
    finished; now it is built beside and renamed into place."""
    from weitiao.train import loop

    def crash(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(loop, "save_tokenizer", crash)
    run = tmp_path / "run"
    with pytest.raises(UserError, match=f"^{run}/final: disk full while writing"):  # one line, not a traceback
        sft.run(config(tiny_model_dir, chat_file, run, "train.max_steps=2"))
    assert not (run / "final").exists() and not list(run.glob(".final.*"))
    monkeypatch.undo()  # control: the same run completes final/ with every file
    sft.run(config(tiny_model_dir, chat_file, run, "train.max_steps=2", "train.resume=none"))
    names = {p.name for p in (run / "final").iterdir()}
    assert {"adapter", "tokenizer", "chat_template.jinja"} <= names and not list(run.glob(".final.*"))


def test_an_eval_row_over_max_len_is_in_the_data_record(tiny_model_dir, tmp_path):
    """The data line counted an eval row dropped for length, the `data` record did not (read did not add up)."""
    rows = [{"instruction": f"问题{i}", "output": f"回答{i}"} for i in range(8)]
    train = write_jsonl(tmp_path / "t.jsonl", rows)
    ev = write_jsonl(tmp_path / "e.jsonl", rows[:2] + [{"instruction": "长", "output": "好" * 300}])
    sft.run(config(tiny_model_dir, train, tmp_path / "run", f"data.eval=[{ev}]", "data.max_len=64", "data.eval_split=0",
                   "train.max_steps=1", "train.eval_every=1"))  # fmt: skip
    d = read_metrics(tmp_path / "run", "data")[0]
    assert (d["dropped_too_long"], d["eval_dropped_too_long"], d["eval_rows"]) == (0, 1, 2)
    assert d["read"] == d["kept"] + d["eval_rows"] + d["rejected"] + d["dropped_too_long"] + d["eval_dropped_too_long"]


def test_a_sequence_past_the_model_context_is_refused(tiny_model_dir, chat_file, tmp_path):
    """The tiny model has 512 positions (max_position_embeddings). SFT with data.max_len 2048 trained 700-token rows
    past them (RoPE: positions it never had) with exit 0; DPO and RM the same on a pair's side. Refused naming the
    row and the max_len that fits; under that max_len the long rows are dropped and the run trains; a packed row
    longer than the context is fine, since each sequence in it restarts its positions."""
    from weitiao.recipes import dpo, rm

    long = {"instruction": "question " * 80, "output": "answer " * 60}
    rows = [json.loads(line) for line in chat_file.read_text().splitlines()]
    data = write_jsonl(tmp_path / "long.jsonl", [*rows, long])
    base = ["data.eval_split=0", "train.max_steps=1", "train.eval_every=0", "lora.dropout=0"]
    with pytest.raises(UserError, match=r"long\.jsonl:25: \d+ tokens, past the model's context of 512 positions .*"
                       r"1 train sequence\(s\) over it.*set data\.max_len to at most 512"):  # fmt: skip
        sft.run(config(tiny_model_dir, data, tmp_path / "a", *base, "data.max_len=2048"))
    assert sft.run(config(tiny_model_dir, data, tmp_path / "b", *base, "data.max_len=512"))["finished"]
    assert sft.run(config(tiny_model_dir, chat_file, tmp_path / "c", *base, "data.max_len=2048"))["finished"]  # packed
    pairs = [
        {"prompt": "question " * 80, "chosen": "yes", "rejected": "no"},
        {"prompt": "hi", "chosen": "a", "rejected": "b"},
    ]
    pair_file = write_jsonl(tmp_path / "pairs.jsonl", pairs)
    for recipe in (dpo, rm):
        name = recipe.__name__.rsplit(".", 1)[1]
        cfg = recipe_config(name, tiny_model_dir, pair_file, tmp_path / name, *base, "data.max_len=2048")
        with pytest.raises(UserError, match=r"pairs\.jsonl:1: \d+ tokens, past the model's context of 512 positions"):
            recipe.run(cfg)


def test_model_context_counts_a_rope_scaling_that_extends_it():
    """Qwen's long-context yarn keeps max_position_embeddings at 32768 with factor 4: 131072 positions, not a refusal
    of every row past 32768; a llama3-style config already gives the extended length; no scaling is the plain value."""
    from types import SimpleNamespace as Cfg

    from weitiao.train.loop import model_context

    yarn = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}
    assert model_context(Cfg(max_position_embeddings=32768, rope_parameters=yarn)) == 131072
    llama3 = {"rope_type": "llama3", "factor": 8.0, "original_max_position_embeddings": 8192}
    assert model_context(Cfg(max_position_embeddings=131072, rope_parameters=llama3)) == 131072
    assert model_context(Cfg(max_position_embeddings=512, rope_parameters={"rope_type": "default"})) == 512
    assert model_context(Cfg(max_position_embeddings=4096, rope_scaling={"type": "linear", "factor": 2})) == 8192
    assert model_context(Cfg()) is None


def test_auto_template_on_a_tokenizer_without_one_says_it_renders_plain(tmp_path, chat_file, capsys):
    """data.template auto on a base whose tokenizer has no chat template trained in weitiao's own '### 用户:' format
    without a word (only 'template plain' in the data line); now a line says so and how to choose a standard one.
    A tokenizer with its own template, and raw-text pairs, get no such line."""
    from conftest import build_tokenizer, save_tiny_model

    from weitiao.data.templates import fallback_note, resolve_template

    bare = save_tiny_model(tmp_path / "bare", build_tokenizer(None, eos="<|im_end|>"))
    base = ["data.eval_split=0", "train.max_steps=1", "train.eval_every=0", "lora.dropout=0"]
    assert sft.run(config(bare, chat_file, tmp_path / "a", *base))["finished"]
    assert "data.template auto: the tokenizer has no chat template" in capsys.readouterr().out
    own = build_tokenizer()
    assert fallback_note("auto", resolve_template(own, "auto"), own) is None  # control: its own template
    assert fallback_note("plain", resolve_template(own, "plain"), own) is None  # asked for: no note
    # only the standard templates the tokenizer can render are named (chatml and llama3 were named to a tokenizer
    # holding neither end-of-turn token, and both were then refused)
    lone = build_tokenizer(None, eos="<|endoftext|>")  # has <|im_end|> as a special token, no <|eot_id|>
    assert fallback_note("auto", resolve_template(lone), lone).endswith("set data.template: chatml for a standard one")
    vocab = {t: i for t, i in lone.get_vocab().items() if t != "<|im_end|>"}
    neither = type("Tok", (), {"get_vocab": lambda self: vocab})()
    assert fallback_note("auto", resolve_template(lone), neither).endswith(
        "the standard ones (chatml, llama3) need <|im_end|> or <|eot_id|>, which this tokenizer lacks"
    )


def test_a_run_without_eval_reports_no_best_eval(tiny_model_dir, chat_file, tmp_path):
    """With no eval set the summary said 'best_eval': inf (the starting value of the comparison), read as a score."""
    summary = sft.run(config(tiny_model_dir, chat_file, tmp_path / "run", "data.eval_split=0", "train.max_steps=1"))
    assert summary["best_eval"] is None and summary["best_step"] is None
    with_eval = sft.run(config(tiny_model_dir, chat_file, tmp_path / "ev", "train.max_steps=1", "train.eval_every=1"))
    assert (
        with_eval["best_step"] == 1 and with_eval["best_eval"] == read_metrics(tmp_path / "ev", "eval")[0]["eval_loss"]
    )


def test_a_process_whose_copy_of_the_data_differs_is_refused(tiny_model_dir, chat_file, tmp_path):
    """Two nodes, each with its own copy of the data: node 1's copy was edited (the same rows, other replies). Each
    process trained its share of its own copy and exited 0, the run recorded as node 0's data. Now one line, exit 1,
    nothing written."""
    from conftest import torchrun_driver

    edited = tmp_path / "node1" / "chat.jsonl"
    edited.parent.mkdir()
    edited.write_text(chat_file.read_text(encoding="utf-8").replace("好", "坏"), encoding="utf-8")
    driver = tmp_path / "per_node_data.py"  # process 1 reads its node's copy at the same place in the config
    driver.write_text(
        "import os, sys\nif os.environ['RANK'] == '1':\n"
        f"    sys.argv = [a.replace({str(chat_file)!r}, {str(edited)!r}) for a in sys.argv]\n"
        "from weitiao.cli import main\nsys.argv[0] = 'weitiao'\nmain()\n"
    )
    (tmp_path / "empty.yaml").write_text("{}\n")
    run = tmp_path / "run"
    over = [f"model.path={tiny_model_dir}", f"data.train=[{chat_file}]", f"train.out={run}", "train.max_steps=1"]
    over += ["data.max_len=64", "data.cache=false", "train.micro_batch_size=1", "train.progress=false"]
    p = torchrun_driver(driver, "sft", str(tmp_path / "empty.yaml"), *over, "train.tensorboard=false", ok=False)
    assert "error: train: process 1 (" in p.stdout + p.stderr
    assert "data.train: other texts in its 18 rows (pairs)" in p.stdout + p.stderr  # 6 over max_len
    assert not run.exists()


def test_init_from_records_the_continued_adapters_keys_and_its_config_runs_again(tiny_model_dir, chat_file, tmp_path):
    """A run continuing an adapter (lora.init_from) with its lora keys left out trained the adapter's r 8 and
    dropout 0 but recorded the defaults r 16 and dropout 0.05 in config.yaml: running that file again was refused
    (lora.r=16 but the adapter ... has 8), and a dropout the adapter did not have would have been applied."""
    from weitiao.config import load_config
    from weitiao.models.load import LoraSpec, lora_as_trained, lora_continued

    first = ["lora.r=8", "lora.alpha=4", "lora.dropout=0.0", "lora.targets=[q_proj,v_proj]", "train.max_steps=1"]
    sft.run(config(tiny_model_dir, chat_file, tmp_path / "a", *first))
    sft.run(config(tiny_model_dir, chat_file, tmp_path / "b", "train.max_steps=1", f"lora.init_from={tmp_path / 'a'}"))
    recorded = load_config(sft.SFTConfig, tmp_path / "b" / "config.yaml", [])
    lora = recorded.lora.model_dump(include={"r", "alpha", "dropout", "targets"})
    assert lora == {"r": 8, "alpha": 4.0, "dropout": 0.0, "targets": ["q_proj", "v_proj"]}
    sft.run(load_config(sft.SFTConfig, tmp_path / "b" / "config.yaml", ["train.resume=none"]))  # was refused
    # keys the config sets stay (and are checked against the adapter at load); DPO's dropout switch comes first
    set_keys = lora_continued(LoraSpec(init_from=str(tmp_path / "a"), dropout=0.1))
    assert (set_keys.r, set_keys.dropout) == (8, 0.1)
    assert lora_continued(lora_as_trained(LoraSpec(init_from=str(tmp_path / "a"), r=8), True)).dropout == 0.0
    assert lora_continued(LoraSpec()) == LoraSpec()  # no init_from: unchanged
