"""Resume end to end: train mode, config changes, moving a previous run aside, 4-bit, per-process RNG."""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import save_tiny_model, torchrun_driver
from safetensors.torch import load_file
from test_sft import ROOT, adapter, config

from weitiao.config import load_config
from weitiao.errors import UserError
from weitiao.losses.sft import CausalLMLoss
from weitiao.recipes import sft
from weitiao.train import checkpoint as ck
from weitiao.train.guard import DivergedError
from weitiao.train.log import read_metrics

pytestmark = pytest.mark.slow


def full_weights(out):
    return load_file(str(Path(out) / "final" / "model" / "model.safetensors"))


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_full_finetune_trains_in_train_mode_from_the_first_step(tiny_model_dir, chat_file, tmp_path, monkeypatch):
    seen = []
    forward = CausalLMLoss.forward

    def spy(self, *args, **kw):
        if torch.is_grad_enabled():
            seen.append(all(m.training for m in self.model.modules()))
        return forward(self, *args, **kw)

    monkeypatch.setattr(CausalLMLoss, "forward", spy)
    sft.run(config(tiny_model_dir, chat_file, tmp_path / "run", "lora.enabled=false", "train.max_steps=1"))
    assert seen and seen[0] is True  # was False: from_pretrained's eval mode until the first eval


def test_full_finetune_with_dropout_resumes_exactly(tiny_model_dir, chat_file, tmp_path):
    model_dir = tmp_path / "dropout-model"
    shutil.copytree(tiny_model_dir, model_dir)
    cfg = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**cfg, "attention_dropout": 0.1}))
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(model_dir).train()  # control: dropout really acts in train mode
    ids = torch.arange(20).unsqueeze(0)
    assert not torch.equal(m(input_ids=ids).logits, m(input_ids=ids).logits)

    args = ("lora.enabled=false", "train.max_steps=4", "train.save_every=2", "train.eval_every=2", "train.lr=1e-3")
    sft.run(config(model_dir, chat_file, tmp_path / "straight", *args))
    sft.run(config(model_dir, chat_file, tmp_path / "killed", *args, "train.stop_after=3"))
    sft.run(config(model_dir, chat_file, tmp_path / "killed", *args))
    assert same(full_weights(tmp_path / "straight"), full_weights(tmp_path / "killed"))


def test_qlora_resume_is_exact_where_bitsandbytes_repacks_for_cpu(tiny_model_dir, chat_file, tmp_path, monkeypatch):
    """On AVX512-BF16 CPUs an eval pass repacks Linear4bit weights for a bf16 kernel without autograd;
    forced on here, so the test means the same on every CPU."""
    import bitsandbytes.nn.modules as bnb_modules

    monkeypatch.setattr(bnb_modules, "has_avx512bf16", lambda: True)
    args = ("model.quant=4bit", "train.max_steps=4", "train.save_every=2", "train.eval_every=1")
    sft.run(config(tiny_model_dir, chat_file, tmp_path / "straight", *args))
    sft.run(config(tiny_model_dir, chat_file, tmp_path / "killed", *args, "train.stop_after=3"))
    sft.run(config(tiny_model_dir, chat_file, tmp_path / "killed", *args))
    assert same(adapter(tmp_path / "straight"), adapter(tmp_path / "killed"))


@pytest.mark.parametrize("keep", [True, False], ids=["fixed", "control"])
def test_4bit_gradients_do_not_change_after_an_eval_pass(tiny_model_dir, monkeypatch, keep):
    import bitsandbytes.nn.modules as bnb_modules

    from weitiao.models import load

    monkeypatch.setattr(bnb_modules, "has_avx512bf16", lambda: True)
    if not keep:
        monkeypatch.setattr(load, "keep_4bit_training_path", lambda model: 0)
    spec = load.ModelSpec(path=str(tiny_model_dir), quant="4bit")
    model = load.build_trainable(spec, load.LoraSpec(dropout=0.0), torch.device("cpu")).train()
    ids = torch.arange(3, 35).view(2, 16)

    def grads():
        model.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    before = grads()
    with torch.no_grad():
        model.eval()(input_ids=ids)
    model.train()
    assert same(before, grads()) is keep


def test_forced_grad_accum_change_says_rows_shift(tiny_model_dir, chat_file, tmp_path, capsys):
    """train.grad_accum changed under train.resume=force on the same processes said only 'changed train.grad_accum',
    though a step then reads other micro-batches (rows of this epoch trained twice or skipped)."""
    run = tmp_path / "run"
    sft.run(config(tiny_model_dir, chat_file, run, "train.max_steps=3", "train.save_every=1", "train.stop_after=1"))
    capsys.readouterr()
    sft.run(config(tiny_model_dir, chat_file, run, "train.max_steps=2", "train.grad_accum=2", "train.resume=force"))
    out = capsys.readouterr().out
    assert "train.resume=force: training on with changed train.grad_accum 1 → 2" in out
    assert "train.resume=force: a step took 1 micro-batches and now takes 2 (processes × train.grad_accum)" in out


def test_resume_refuses_a_changed_training_config(tiny_model_dir, chat_file, tmp_path, capsys):
    run = tmp_path / "run"
    sft.run(config(tiny_model_dir, chat_file, run, "train.max_steps=3", "train.save_every=1", "train.stop_after=1"))
    saved = (run / "config.yaml").read_text()
    ckpt = run / "checkpoints" / "step-000001"
    with pytest.raises(UserError, match=r"lora.r 16 → 8, train.lr 0.005 → 0.001; revert them") as e:
        sft.run(config(tiny_model_dir, chat_file, run, "train.max_steps=3", "lora.r=8", "train.lr=1e-3"))
    assert str(e.value).startswith(f"train.resume: {ckpt} was trained with another config: ")
    assert (run / "config.yaml").read_text() == saved  # not rewritten with values never used
    capsys.readouterr()
    sft.run(config(tiny_model_dir, chat_file, run, "train.max_steps=2", "train.save_every=1"))  # length may change
    out = capsys.readouterr().out
    assert f"resuming from step 1 (checkpoint {ckpt})" in out
    assert "note: train.max_steps 3 → 2: the learning-rate schedule (warm-up, decay) is recomputed" in out
    forced = config(tiny_model_dir, chat_file, run, "train.max_steps=3", "lora.dropout=0.2", "train.resume=force")
    sft.run(forced)
    out = capsys.readouterr().out
    assert "train.resume=force: training on with changed lora.dropout 0.05 → 0.2" in out
    assert "micro-batches" not in out  # the steps are the same: no word of rows trained twice
    assert "note: train.max_steps 2 → 3" in out
    assert "dropout: 0.2" in (run / "config.yaml").read_text()
    assert [r["step"] for r in read_metrics(run, "train")] == [1, 2, 3]
    # a recipe with a constant learning rate (PPO) says nothing of a schedule it does not have
    longer = (run / "config.yaml").read_text().replace("max_steps: 3", "max_steps: 5")
    inputs = json.loads((run / "inputs.json").read_text())
    for schedule, said in ((False, False), (True, True)):
        ck.open_run(run, "auto", longer, True, inputs, write=False, schedule=schedule)
        assert ("note: train.max_steps 3 → 5: the learning-rate schedule" in capsys.readouterr().out) is said


def test_fresh_run_moves_the_previous_run_aside(tiny_model_dir, chat_file, tmp_path, capsys):
    run = tmp_path / "run"
    sft.run(config(tiny_model_dir, chat_file, run, "train.max_steps=2", "train.save_every=1"))
    old = adapter(run)
    (run / "notes.txt").write_text("mine")
    (run / "checkpoints" / "keep.txt").write_text("mine too")
    sft.run(config(tiny_model_dir, chat_file, run, "train.max_steps=1", "train.resume=none"))
    [prev] = list((run / "previous").iterdir())
    assert f"fresh run in {run}: the previous run's files were moved to {prev}" in capsys.readouterr().out
    assert (run / "notes.txt").read_text() == "mine" and (run / "checkpoints" / "keep.txt").exists()
    assert sorted(p.name for p in (prev / "checkpoints").iterdir()) == ["step-000001", "step-000002"]
    assert same(adapter(prev), old)
    assert [r["step"] for r in read_metrics(prev, "train")] == [1, 2]
    assert [r["step"] for r in read_metrics(run, "train")] == [1]


def test_a_fresh_run_moves_every_file_a_run_writes(tmp_path):
    """PPO's cost.jsonl and a resumed run's metrics.abandoned.jsonl stayed behind: the next run overwrote the cost
    report and appended its abandoned rows to the previous run's."""
    from weitiao.train import checkpoint as ck

    files = ["metrics.jsonl", "metrics.abandoned.jsonl", "cost.jsonl", "config.yaml", "rejects.jsonl"]
    for name in [*files, "notes.txt"]:
        (tmp_path / name).write_text("old\n")
    moved = ck.move_previous_run(tmp_path)
    assert sorted(p.name for p in moved.iterdir()) == sorted(files)
    assert (tmp_path / "notes.txt").exists()  # not a run's: it stays


def test_a_fresh_run_moves_only_the_checkpoints_the_trainer_named(tmp_path):
    """Every checkpoints/step-* moved: a user's own copies (step-000100-keep, step-best-copy) went into previous/
    with the old run's checkpoints."""
    from weitiao.train import checkpoint as ck

    root = tmp_path / "checkpoints"
    ours, users = ["step-000001", "step-000002", ".tmp-step-000003"], ["step-000100-keep", "step-best-copy", "step-7"]
    for name in [*ours, *users, ".tmp-step-x"]:
        (root / name).mkdir(parents=True)
    moved = ck.move_previous_run(tmp_path)
    assert sorted(p.name for p in (moved / "checkpoints").iterdir()) == sorted(ours)
    assert sorted(p.name for p in root.iterdir()) == sorted([*users, ".tmp-step-x"])


def test_a_refused_run_leaves_the_previous_run_s_rejects_alone(tiny_model_dir, chat_file, tmp_path):
    """Data was read (rejects.jsonl written into train.out) before the resume check: a run refused for its changed
    data had already replaced the previous run's rejects with its own, and a fresh run overwrote them instead of
    moving them aside with the rest."""
    run, rows = tmp_path / "run", [json.loads(x) for x in Path(chat_file).read_text(encoding="utf-8").splitlines()]

    def data(name: str, bad: dict) -> Path:
        path = tmp_path / name
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in [*rows, bad]), encoding="utf-8")
        return path

    a, b = data("a.jsonl", {"instruction": "甲"}), data("b.jsonl", {"instruction": "乙"})
    keys = ("train.max_steps=2", "train.save_every=1", "data.skip_invalid=true", "train.stop_after=1")
    sft.run(config(tiny_model_dir, a, run, *keys))
    first = (run / "rejects.jsonl").read_text(encoding="utf-8")
    assert "甲" in first
    with pytest.raises(UserError, match="was trained with"):
        sft.run(config(tiny_model_dir, b, run, *keys[:3]))
    assert (run / "rejects.jsonl").read_text(encoding="utf-8") == first  # the refused run wrote nothing
    sft.run(config(tiny_model_dir, b, run, *keys[:3], "train.resume=none"))
    [prev] = list((run / "previous").iterdir())
    assert (prev / "rejects.jsonl").read_text(encoding="utf-8") == first
    assert "乙" in (run / "rejects.jsonl").read_text(encoding="utf-8")


def test_the_run_says_where_the_rows_it_set_aside_are(tiny_model_dir, chat_file, tmp_path, capsys):
    """With data.skip_invalid the data line said '1 rejected' and no more: which rows, and why, was in a file the
    run never named. Now the run names each rejects file in `out` with its row count."""
    bad = tmp_path / "bad.jsonl"
    bad.write_text(Path(chat_file).read_text(encoding="utf-8") + '{"instruction": "甲"}\n', encoding="utf-8")
    run = tmp_path / "run"
    sft.run(
        config(
            tiny_model_dir,
            bad,
            run,
            "train.max_steps=1",
            "data.skip_invalid=true",
            f"data.eval=[{bad}]",
            "data.eval_split=0",
        )
    )
    said = f"each with its file:line and why: {run / 'eval_rejects.jsonl'} (1), {run / 'rejects.jsonl'} (1)"
    assert said in capsys.readouterr().out


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(f.relative_to(folder)): f.read_bytes() for f in sorted(folder.rglob("*")) if f.is_file()}


def test_a_fresh_run_refused_on_its_data_leaves_the_previous_run_in_place(
    tiny_model_dir, chat_file, tmp_path, monkeypatch
):
    """train.resume=none moved the previous run to previous/<time>/ before the data was read: a bad row (or a key
    refused once the data is known) then stopped the run, and the previous run's final/, metrics and checkpoints
    were gone from train.out (exit 1, a 'fresh run ... moved' line before the error). Now nothing moves until the
    run starts; rejects are staged outside train.out and named in the error when no row is left."""
    import tempfile

    from conftest import write_jsonl

    from weitiao.recipes import dpo

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # where the rejects are staged
    (tmp_path / "tmp").mkdir()
    run = tmp_path / "run"
    sft.run(config(tiny_model_dir, chat_file, run, "train.max_steps=1", "data.skip_invalid=true"))
    before = snapshot(run)
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"instruction": "你好", "output": 42}])
    fresh = ("train.max_steps=1", "train.resume=none")
    with pytest.raises(UserError, match="bad.jsonl:1: output: expected a string"):
        sft.run(config(tiny_model_dir, bad, run, *fresh))
    assert snapshot(run) == before  # was: the previous run under previous/<time>/, train.out empty
    with pytest.raises(UserError, match=r"no valid rows \(invalid rows are in .*weitiao-rejects-.*rejects.jsonl\)"):
        sft.run(config(tiny_model_dir, bad, run, *fresh, "data.skip_invalid=true"))
    [staged] = (tmp_path / "tmp").glob("weitiao-rejects-*/rejects.jsonl")  # where the error says
    assert "bad.jsonl:1" in staged.read_text(encoding="utf-8")
    with pytest.raises(UserError, match="train.eval_every=1 needs eval data"):  # refused after the data is read
        sft.run(config(tiny_model_dir, chat_file, run, *fresh, "data.eval_split=0", "train.eval_every=1"))
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "你好", "chosen": "好", "rejected": "好"}])
    with pytest.raises(UserError, match="pairs.jsonl:1"):
        dpo.run(
            load_config(
                dpo.DPOConfig,
                None,
                [
                    f"model.path={tiny_model_dir}",
                    f"data.train=[{pairs}]",
                    f"train.out={run}",
                    "train.resume=none",
                    "train.progress=false",
                ],
            )
        )
    assert snapshot(run) == before  # nothing moved, nothing written
    sft.run(config(tiny_model_dir, chat_file, run, *fresh))  # negative control: a run that starts moves it aside
    [prev] = list((run / "previous").iterdir())
    assert snapshot(prev) == before


def test_diverging_run_stops_keeps_last_good_checkpoint_and_writes_no_final(tiny_model_dir, chat_file, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(DivergedError, match=r"^step 2: loss is (nan|inf); training diverged"):
        sft.run(config(tiny_model_dir, chat_file, run, "train.max_steps=6", "train.save_every=1", "train.lr=1e30"))
    assert not (run / "final").exists()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000001"]
    assert [r["step"] for r in read_metrics(run, "train")] == [1]


def test_a_run_driven_into_saturation_stops_instead_of_reporting_success(tokenizer, chat_file, tmp_path):
    """lr 1e6 on a hidden-64 Qwen2 leaves all-zero logits (loss ln(vocab)) and a gradient norm of exactly 0, with no
    NaN anywhere: it used to finish, write final/ and exit 0."""
    model = save_tiny_model(tmp_path / "qwen2", tokenizer, arch="qwen2", hidden=64, kv_heads=2)
    run = tmp_path / "run"
    with pytest.raises(DivergedError, match=r"step 4: grad_norm is exactly 0 for 3 steps in a row; the model no"):
        sft.run(config(model, chat_file, run, "train.max_steps=8", "train.save_every=1", "train.lr=1e6"))
    assert not (run / "final").exists()
    assert [r["grad_norm"] for r in read_metrics(run, "train")][1:] == [0.0, 0.0]  # the third stopped the run
    sft.run(config(model, chat_file, tmp_path / "ok", "train.max_steps=4", "train.lr=1e-3"))  # negative control
    assert (tmp_path / "ok" / "final").exists()


def test_two_process_resume_restores_each_process_rng(tiny_model_dir, chat_file, tmp_path):
    """Each process samples its own LoRA dropout masks; a resume that gave every process
    process 0's RNG state would not reproduce the uninterrupted run."""
    common = [
        f"model.path={tiny_model_dir}",
        f"data.train=[{chat_file}]",
        "train.progress=false",
        "train.tensorboard=false",
        "train.micro_batch_size=1",
        "data.max_len=64",
        "data.packing=false",
        "train.max_steps=3",
        "train.save_every=1",
        "lora.dropout=0.2",
        "train.lr=5e-3",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    (tmp_path / "empty.yaml").write_text("{}\n")

    def launch(out, *extra):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        ddp = ["-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1", f"--master_port={port}"]
        cmd = [sys.executable, *ddp, "-m", "weitiao", "sft", str(tmp_path / "empty.yaml"), *common, *extra]
        p = subprocess.run([*cmd, f"train.out={tmp_path / out}"], env=env, cwd=ROOT, capture_output=True, text=True)
        assert p.returncode == 0, p.stderr[-3000:]

    launch("straight")
    launch("killed", "train.stop_after=2")
    launch("killed")
    assert same(adapter(tmp_path / "straight"), adapter(tmp_path / "killed"))
    ckpt = tmp_path / "killed" / "checkpoints" / "step-000002"
    assert sorted(p.name for p in ckpt.glob("rng_state_*")) == ["rng_state_0.pt", "rng_state_1.pt"]
    one = load_config(sft.SFTConfig, None, [*common, "train.max_steps=4", f"train.out={tmp_path / 'killed'}"])
    with pytest.raises(
        UserError, match=r"written by 2 process\(es\) taking 2 micro-batches a step .*grad_accum 2 on 1"
    ):
        sft.run(one)


def test_resume_takes_keys_that_change_how_not_what(tiny_model_dir, chat_file, tmp_path):
    """Gradient checkpointing switched on after an out-of-memory (or the token cache off, other tokenizing processes)
    needed train.resume=force: the same steps, refused as another config. The result equals the straight run's."""
    args = ("train.max_steps=3", "train.save_every=1", "lora.dropout=0")
    sft.run(config(tiny_model_dir, chat_file, tmp_path / "straight", *args))
    sft.run(config(tiny_model_dir, chat_file, tmp_path / "run", *args, "train.stop_after=1"))
    how = ("model.gradient_checkpointing=true", "data.cache=false", "data.num_proc=1")
    sft.run(config(tiny_model_dir, chat_file, tmp_path / "run", *args, *how))
    assert same(adapter(tmp_path / "straight"), adapter(tmp_path / "run"))
    with pytest.raises(UserError, match=r"train.lr 0.005 → 0.001"):  # control: what a step computes is refused
        sft.run(config(tiny_model_dir, chat_file, tmp_path / "run", "train.max_steps=4", "train.lr=1e-3"))


def test_resume_refuses_changed_data_content(tiny_model_dir, chat_file, tmp_path):
    run = tmp_path / "run"
    args = ("train.max_steps=3", "train.save_every=1")
    sft.run(config(tiny_model_dir, chat_file, run, *args, "train.stop_after=1"))
    rows = chat_file.read_text(encoding="utf-8").splitlines()
    chat_file.write_text("\n".join(rows[:-2]) + "\n", encoding="utf-8")  # same file name, fewer rows
    with pytest.raises(UserError, match="^train.resume: the training data changed since the checkpoint") as err:
        sft.run(config(tiny_model_dir, chat_file, run, *args))
    assert f"(data.train: {chat_file}): other rows" in str(err.value)  # the key and the files it names
    sft.run(config(tiny_model_dir, chat_file, run, *args, "train.resume=force"))
    assert [r["step"] for r in read_metrics(run, "train")] == [1, 2, 3]


@pytest.mark.parametrize("recipe", ["sft", "dpo"])
def test_resume_refuses_edited_text_of_the_same_token_counts(tiny_model_dir, tmp_path, recipe):
    """Only row lengths were compared: an edit that kept every row's token count (one character for another) resumed
    on other data unsaid. Now a digest of the texts is kept with the checkpoint too."""
    from conftest import recipe_config, write_jsonl

    from weitiao.models.load import load_tokenizer
    from weitiao.recipes import dpo

    tok = load_tokenizer(str(tiny_model_dir))
    n = len(tok("今天天气怎么样？#5")["input_ids"])
    other = next(c for c in "xyzqkw" if len(tok(f"今天天气怎么样？#{c}")["input_ids"]) == n)  # same token count
    ask = [f"今天天气怎么样？#{i}" for i in range(12)]
    if recipe == "sft":
        rows = [{"instruction": q, "output": "挺好的"} for q in ask]
    else:
        rows = [{"prompt": q, "chosen": "挺好的", "rejected": "不知道"} for q in ask]
    key = "instruction" if recipe == "sft" else "prompt"
    edit = [{**r, key: f"今天天气怎么样？#{other}"} if i == 5 else r for i, r in enumerate(rows)]
    data, run = write_jsonl(tmp_path / "d.jsonl", rows), tmp_path / "run"
    args = ("train.max_steps=3", "train.save_every=1", "train.micro_batch_size=2")
    args = (*args, "dpo.kl_max_new_tokens=0") if recipe == "dpo" else args
    run_fn = sft.run if recipe == "sft" else dpo.run
    run_fn(recipe_config(recipe, tiny_model_dir, data, run, *args, "train.stop_after=1"))
    write_jsonl(data, edit)
    with pytest.raises(UserError, match="^train.resume: the training data changed since the checkpoint"):
        run_fn(recipe_config(recipe, tiny_model_dir, data, run, *args))
    write_jsonl(data, rows)  # control: the same texts resume
    run_fn(recipe_config(recipe, tiny_model_dir, data, run, *args))


def _checkpoint(run: Path, step: int, **state) -> Path:
    from weitiao.train import checkpoint as ck

    path = run / "checkpoints" / f"step-{step:06d}"
    path.mkdir(parents=True)
    torch.save({"step": step, **state}, path / ck.STATE_FILE)
    (path / ck.CONFIG_FILE).write_text("{}\n")
    return path


def test_processes_that_find_different_checkpoints_are_refused(tmp_path):
    """A train.out folder per node: process 0 found step 2, process 1 nothing. Both used to go on (one resumed,
    one fresh), train on mismatched replicas and hang; now every process stops with the same line."""
    from weitiao.train import checkpoint as ck

    node_a, node_b = tmp_path / "a", tmp_path / "b"
    mine = _checkpoint(node_a, 2, world=2)
    seen = [f"{mine.resolve()} (step 2)", None]
    with pytest.raises(UserError, match=r"different checkpoints \(process 0: .*step-000002 \(step 2\); process 1: no"):
        ck.open_run(node_a, "auto", "{}\n", True, world=2, gather=lambda value: seen)
    assert not (node_b / "config.yaml").exists()
    # negative control: every process found the same checkpoint
    assert ck.open_run(node_a, "auto", "{}\n", True, world=2, gather=lambda value: [value, value]) == mine


def test_ppo_checkpoint_of_another_world_size_is_refused(tmp_path):
    """PPO keeps one RNG state per process instead of `world`: a resume on 1 process of a 2-process run used to
    reseed and train the prompts of step 2 again."""
    from weitiao.train import checkpoint as ck

    _checkpoint(tmp_path, 2, rng=[{}, {}])
    with pytest.raises(UserError, match=r"written by 2 process\(es\), this run has 1; resume with 2"):
        ck.open_run(tmp_path, "auto", "{}\n", True, world=1)
    assert ck.open_run(tmp_path, "force", "{}\n", True, world=1) is not None
    assert ck.saved_world({"rng": {}}) == 1 and ck.saved_world({"world": 3, "rng": [{}]}) == 3


def test_a_resumed_run_logs_each_step_once(tiny_model_dir, chat_file, tmp_path, capsys):
    """Stopped after step 3 with a checkpoint at 2, the resumed run logs step 3 again: metrics.jsonl held it
    twice (the console's chart drew two points at x=3). The rows past the checkpoint are set aside instead."""
    args = ("train.max_steps=4", "train.save_every=2", "train.eval_every=2", "train.log_every=1")
    sft.run(config(tiny_model_dir, chat_file, tmp_path / "straight", *args))
    sft.run(config(tiny_model_dir, chat_file, tmp_path / "killed", *args, "train.stop_after=3"))
    assert [r["step"] for r in read_metrics(tmp_path / "killed", "train")] == [1, 2, 3]
    capsys.readouterr()
    sft.run(config(tiny_model_dir, chat_file, tmp_path / "killed", *args))
    assert "resume: 1 rows of metrics.jsonl after step 2" in capsys.readouterr().out
    steps = {k: [r["step"] for r in read_metrics(tmp_path / "killed", k)] for k in ("train", "eval")}
    assert steps == {k: [r["step"] for r in read_metrics(tmp_path / "straight", k)] for k in ("train", "eval")}
    aside = [json.loads(x) for x in (tmp_path / "killed" / "metrics.abandoned.jsonl").read_text().splitlines()]
    assert [(r["kind"], r["step"]) for r in aside] == [("train", 3)]


def test_a_fresh_two_process_run_moves_the_previous_rejects_aside_before_writing_its_own(tiny_model_dir, tmp_path):
    """train.resume=none on 2 processes: process 0 moves the previous run aside while process 1 goes on to read the
    data, which writes OUT/rejects.jsonl. On a slow filesystem process 1 wrote first: the previous run's rejects were
    overwritten, and the new ones moved into previous/. Every process now waits for the move."""
    from conftest import CHAT_ROWS, write_jsonl

    def data(tag: str) -> Path:
        rows = [{**r, "instruction": f"{r['instruction']} {tag}{i}"} for i, r in enumerate(CHAT_ROWS * 2)]
        return write_jsonl(tmp_path / f"{tag}.jsonl", [*rows, {"bad": tag}])  # one rejected row, naming the run

    run = tmp_path / "run"
    args = ["train.max_steps=1", "data.skip_invalid=true", "data.max_len=64", "data.cache=false", "data.packing=false"]
    sft.run(config(tiny_model_dir, data("old"), run, *args, "data.eval_split=0"))
    driver = tmp_path / "slow_move.py"  # process 0's move takes a while, as on a busy network filesystem
    driver.write_text(
        "import sys, time\nfrom weitiao.train import checkpoint as ck\nmove = ck.move_previous_run\n"
        "ck.move_previous_run = lambda out: time.sleep(3) or move(out)\n"
        "from weitiao.cli import main\nsys.argv[0] = 'weitiao'\nmain()\n"
    )
    (tmp_path / "empty.yaml").write_text("{}\n")
    over = [f"model.path={tiny_model_dir}", f"data.train=[{data('new')}]", f"train.out={run}", "train.resume=none"]
    over += [*args, "train.micro_batch_size=1", "train.progress=false", "train.tensorboard=false"]
    torchrun_driver(driver, "sft", str(tmp_path / "empty.yaml"), *over)
    (previous,) = (run / "previous").iterdir()
    assert '"bad": "old"' in (previous / "rejects.jsonl").read_text()
    assert '"bad": "new"' in (run / "rejects.jsonl").read_text()


def test_a_resume_on_other_processes_taking_as_many_micro_batches_a_step_is_exact(tmp_path):
    """2 processes × micro_batch 1 stopped, resumed on 1 process with train.grad_accum 2 (and the other way): step k
    reads the same micro-batches of its epoch, each draws its dropout masks from (seed, step, its index in the step),
    and the loss is normalized by the whole step's targets, so the run is the uninterrupted one. It was refused
    ('resume with 2'), and under train.resume=force said rows would be trained twice or skipped."""
    from conftest import CHAT_ROWS, build_tokenizer, write_jsonl

    model_dir = save_tiny_model(tmp_path / "model", build_tokenizer(eos="<|endoftext|>"), hidden=64, seed=5)
    rows = [{**r, "instruction": f"{r['instruction']} 第{i}次"} for i, r in enumerate(CHAT_ROWS * 3)]
    data = write_jsonl(tmp_path / "chat.jsonl", rows)  # lora.dropout 0.05, packed rows: the defaults
    common = [f"model.path={model_dir}", f"data.train=[{data}]", "train.micro_batch_size=1", "data.max_len=64"]
    common += ["train.max_steps=4", "train.save_every=1", "train.lr=5e-3", "train.progress=false"]
    common += ["train.tensorboard=false", "data.eval_split=0"]
    driver = tmp_path / "cli.py"
    driver.write_text("import sys\nfrom weitiao.cli import main\nsys.argv[0] = 'weitiao'\nmain()\n")
    (tmp_path / "empty.yaml").write_text("{}\n")

    def one(out: str, *extra: str) -> None:
        sft.run(load_config(sft.SFTConfig, None, [*common, f"train.out={tmp_path / out}", *extra]))

    def two(out: str, *extra: str) -> None:
        torchrun_driver(driver, "sft", str(tmp_path / "empty.yaml"), *common, f"train.out={tmp_path / out}", *extra)

    def losses(out: str) -> list[float]:
        return [r["loss"] for r in read_metrics(tmp_path / out, "train")]

    one("straight", "train.grad_accum=2")
    two("two-one", "train.stop_after=2")
    with pytest.raises(UserError, match=r"taking 2 micro-batches a step .* resume with train.grad_accum 2 on 1 proc"):
        one("two-one")  # negative control: 1 micro-batch a step would read other rows
    one("two-one", "train.grad_accum=2")
    one("one-two", "train.grad_accum=2", "train.stop_after=2")
    two("one-two")
    for out in ("two-one", "one-two"):
        assert losses(out) == pytest.approx(losses("straight"), abs=1e-5)
        a, b = adapter(tmp_path / out), adapter(tmp_path / "straight")
        assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)  # DDP: other sum order


def test_refusals_of_the_run_s_plan_come_before_anything_is_written(tiny_model_dir, chat_file, tmp_path, monkeypatch):
    """The data-changed refusal of a resume and the 'packed epoch too small for the processes' one came after the
    run had started: the resume had already moved metrics rows past the checkpoint to metrics.abandoned.jsonl and
    rewritten config.yaml, a fresh run had moved the previous run to previous/. And a run refused after its data was
    read left its staged rejects in the temp folder. Now both refuse before anything is written, and no stage stays."""
    import tempfile

    from conftest import write_jsonl

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))  # where the rejects are staged (and torchrun's processes:)
    monkeypatch.setenv("TMPDIR", str(tmp))
    rows = [json.loads(x) for x in Path(chat_file).read_text(encoding="utf-8").splitlines()]
    data = write_jsonl(tmp_path / "d.jsonl", [*rows, {"instruction": "坏行"}])  # one rejected row: staged
    run, args = tmp_path / "run", ("train.max_steps=4", "train.save_every=2", "data.skip_invalid=true")
    sft.run(config(tiny_model_dir, data, run, *args, "train.stop_after=3"))
    before = snapshot(run)
    write_jsonl(data, [*rows[1:], {"instruction": "坏行"}])
    with pytest.raises(UserError, match="^train.resume: the training data changed since the checkpoint"):
        sft.run(config(tiny_model_dir, data, run, *args))
    assert snapshot(run) == before  # was: metrics.abandoned.jsonl, metrics.jsonl cut to step 2
    assert not list(tmp.glob("weitiao-rejects-*"))  # was: weitiao-rejects-… left behind
    with pytest.raises(UserError, match="train.eval_every=1 needs eval data"):  # a refusal before the model loads
        sft.run(
            config(tiny_model_dir, data, run, *args, "data.eval_split=0", "train.eval_every=1", "train.resume=none")
        )
    assert not list(tmp.glob("weitiao-rejects-*")) and snapshot(run) == before

    driver = tmp_path / "cli.py"
    driver.write_text("import sys\nfrom weitiao.cli import main\nsys.argv[0] = 'weitiao'\nmain()\n")
    (tmp_path / "empty.yaml").write_text("{}\n")
    three = write_jsonl(tmp_path / "three.jsonl", [*rows[:3], {"instruction": "坏行"}])  # one packed micro-batch
    over = [f"model.path={tiny_model_dir}", f"data.train=[{three}]", f"train.out={run}", "train.resume=none"]
    over += ["data.skip_invalid=true", "train.micro_batch_size=4", "train.max_steps=1", "train.progress=false"]
    p = torchrun_driver(driver, "sft", str(tmp_path / "empty.yaml"), *over, ok=False)
    assert "1 micro-batches for 2 processes" in p.stderr + p.stdout
    assert snapshot(run) == before and not (run / "previous").exists()  # was: the previous run moved aside
    assert not list(tmp.glob("weitiao-rejects-*"))
    write_jsonl(data, [*rows, {"instruction": "坏行"}])  # negative control: the same data resumes
    sft.run(config(tiny_model_dir, data, run, *args))
    assert (run / "metrics.abandoned.jsonl").exists() and (run / "final").is_dir()


def test_a_two_process_run_with_no_valid_row_keeps_one_staged_rejects_folder(tiny_model_dir, chat_file, tmp_path):
    """Under torchrun every process staged its rejects in its own weitiao-rejects-<random> folder and kept it when
    no row was valid: 2 processes left 2 folders in the temp dir, and the error named one. Now the processes share
    one staged folder (the main process's name), the one the error names."""
    from conftest import torchrun_driver, write_jsonl

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"instruction": "坏行"}, {"instruction": "你好", "output": 42}])
    driver = tmp_path / "cli.py"
    driver.write_text("import sys\nfrom weitiao.cli import main\nsys.argv[0] = 'weitiao'\nmain()\n")
    (tmp_path / "empty.yaml").write_text("{}\n")
    over = [f"model.path={tiny_model_dir}", f"data.train=[{bad}]", f"train.out={tmp_path / 'run'}"]
    over += ["data.skip_invalid=true", "train.max_steps=1", "train.progress=false", "train.tensorboard=false"]
    env = {"TMPDIR": str(tmp)}
    p = torchrun_driver(driver, "sft", str(tmp_path / "empty.yaml"), *over, ok=False, env=env)
    named = re.findall(r"invalid rows are in (\S+rejects\.jsonl)", " ".join((p.stderr + p.stdout).split()))
    staged = list(tmp.glob("weitiao-rejects-*"))
    assert len(staged) == 1 and set(named) == {str(staged[0] / "rejects.jsonl")}  # was: 2 folders, one named
    assert len((staged[0] / "rejects.jsonl").read_text(encoding="utf-8").splitlines()) == 2
    shutil.rmtree(staged[0])
    rows = [json.loads(x) for x in Path(chat_file).read_text(encoding="utf-8").splitlines()]  # control: a run starts
    write_jsonl(bad, [*rows, {"instruction": "坏行"}])
    torchrun_driver(driver, "sft", str(tmp_path / "empty.yaml"), *over, "train.micro_batch_size=1", env=env)
    assert not list(tmp.glob("weitiao-rejects-*")) and "坏行" in (tmp_path / "run" / "rejects.jsonl").read_text("utf-8")


@pytest.mark.parametrize("recipe", ["sft", "dpo", "rm", "kto"])
def test_resume_refuses_an_edited_eval_file(tiny_model_dir, tmp_path, recipe):
    """Only the training rows were fingerprinted: an eval file edited at the same path resumed unsaid, its eval_loss
    (and the best step kept) compared with another set's. Now refused like a train-data change; the same file resumes,
    and train.resume=force goes on. Adding or removing an eval file is a config change (data.eval), refused too.
    DPO: an eval pair's weight edited alone (data.weight_field) counts as well."""
    from conftest import recipe_config, write_jsonl
    from test_kto import feedback_rows

    from weitiao.recipes import dpo, kto, rm

    ask = [f"今天天气怎么样？#{i}" for i in range(12)]
    if recipe == "sft":
        rows = [{"instruction": q, "output": "挺好的"} for q in ask]
    elif recipe == "kto":
        rows = feedback_rows(12)
    else:
        rows = [{"prompt": q, "chosen": "挺好的", "rejected": "不知道", "weight": 1} for q in ask]
    data, ev, run = write_jsonl(tmp_path / "d.jsonl", rows), write_jsonl(tmp_path / "e.jsonl", rows[:5]), tmp_path / "r"
    args = ["train.max_steps=3", "train.save_every=1", "train.micro_batch_size=2", f"data.eval=[{ev}]"]
    args += {"dpo": ["dpo.kl_max_new_tokens=0", "data.weight_field=weight"], "rm": ["data.max_len=64"]}.get(recipe, [])
    if recipe == "kto":
        from test_kto import config as kto_config

        def make(*extra):
            return kto_config(tiny_model_dir, data, run, *args, *extra)
    else:

        def make(*extra):
            return recipe_config(recipe, tiny_model_dir, data, run, *args, *extra)

    if recipe == "rm":  # rm's pairs carry no weight column
        rows = [{k: v for k, v in r.items() if k != "weight"} for r in rows]
        write_jsonl(data, rows), write_jsonl(ev, rows[:5])
    run_fn = {"sft": sft.run, "dpo": dpo.run, "rm": rm.run, "kto": kto.run}[recipe]
    run_fn(make("train.stop_after=1"))
    key, reply = {"sft": ("output", "下雨"), "kto": ("completion", [{"role": "assistant", "content": "下雨"}])}.get(
        recipe, ("chosen", "下雨")
    )
    edits = [[{**rows[0], key: reply}, *rows[1:5]]]
    if recipe == "dpo":
        edits.append([{**rows[0], "weight": 0.5}, *rows[1:5]])  # the same texts, another eval weight
    for edit in edits:
        write_jsonl(ev, edit)
        with pytest.raises(UserError, match=rf"^train.resume: the eval data changed since the checkpoint \(data.eval: "
                           rf"{ev}\)"):  # fmt: skip
            run_fn(make())
    write_jsonl(ev, rows[:5])  # control: the same eval rows resume
    assert run_fn(make("train.stop_after=2"))["steps"] == 2
    write_jsonl(ev, edits[0])
    assert run_fn(make("train.resume=force"))["steps"] == 3


@pytest.mark.parametrize("recipe", ["sft", "kto", "ppo"])
def test_ctrl_c_says_where_and_how_to_resume(tiny_model_dir, tmp_path, recipe, monkeypatch, capsys):
    """Ctrl-C in a run exited 130 saying nothing, not even that a checkpoint could be resumed. Now one line names
    the last checkpoint and the command that resumes it (or that none was saved), and the interrupt goes on."""
    from conftest import recipe_config, write_jsonl
    from test_kto import config as kto_config
    from test_kto import feedback_rows

    from weitiao.recipes import kto, ppo
    from weitiao.train import loop

    calls = []

    def interrupt_at_step_3(*a, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt

    if recipe == "ppo":
        generate = ppo.generate_ids
        monkeypatch.setattr(ppo, "generate_ids", lambda *a, **kw: interrupt_at_step_3() or generate(*a, **kw))
        data = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"今天天气怎么样？{i}"} for i in range(16)])
        rule = ("reward.kind=function", "reward.path=weitiao.recipes.rewards:short_emoji_reward")
        args = (*rule, "ppo.rollout_batch_size=8", "ppo.generate_max_len=4", "train.num_episodes=3")
    else:
        record = loop.Tracker.record
        monkeypatch.setattr(loop.Tracker, "record", lambda *a, **kw: record(*a, **kw) or interrupt_at_step_3())
        rows = feedback_rows(12) if recipe == "kto" else [{"instruction": f"问{i}", "output": "答"} for i in range(12)]
        data, args = write_jsonl(tmp_path / "d.jsonl", rows), ("train.micro_batch_size=2",)

    def run(out, *extra):
        cfg = (kto_config(tiny_model_dir, data, out, *args, *extra) if recipe == "kto"
               else recipe_config(recipe, tiny_model_dir, data, out, *args, *extra))  # fmt: skip
        calls.clear()
        with pytest.raises(KeyboardInterrupt):
            {"sft": sft.run, "kto": kto.run, "ppo": ppo.run}[recipe](cfg)
        return capsys.readouterr().err.strip().splitlines()[-1]

    done = 2 if recipe == "ppo" else 3  # ppo: in step 3's sampling; the others: once step 3 is recorded
    last = tmp_path / "a" / "checkpoints" / "step-000002"
    said = run(tmp_path / "a", "train.max_steps=6", "train.save_every=2")
    assert said == f"interrupted after step {done}: run the same command again to resume from {last} (step 2)"
    said = run(tmp_path / "b", "train.max_steps=6")
    assert said == f"interrupted after step {done} before any checkpoint was saved (train.save_every 0: only at the " \
                   "end); a rerun starts over"  # fmt: skip
    if recipe == "sft":  # the same command would start over (none) or go back to a named checkpoint: say resume=auto
        said = run(tmp_path / "a", "train.max_steps=6", "train.save_every=2", "train.resume=none")
        assert said == f"interrupted after step 3: run it again with train.resume=auto to resume from {last} (step 2)"


def test_a_fresh_run_refuses_files_of_a_run_s_names_that_no_run_wrote(tmp_path):
    """A train.out holding the user's own config.yaml and metrics.jsonl (no run had been there): the first fresh run
    moved them into previous/<time>/ as 'the previous run's files' and wrote its own. Refused, nothing moved; a folder
    a run wrote (inputs.json, final/ or a checkpoint) still moves aside."""
    from weitiao.train import checkpoint as ck

    mine = {"config.yaml": "lr: 1\n", "metrics.jsonl": '{"loss": 1}\n', "notes.txt": "mine\n"}
    for name, text in mine.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(UserError, match=r"train\.out: .* holds metrics\.jsonl, config\.yaml, which no weitiao run"):
        ck.open_run(tmp_path, "auto", "x: 1\n", True, {}, 1, None, write=False)
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == mine  # nothing moved
    for ours in ("inputs.json", "final", "checkpoints/step-000002"):
        run = tmp_path / ours.replace("/", "_")
        run.mkdir()
        (run / "config.yaml").write_text("lr: 1\n")
        (run / ours).mkdir(parents=True) if "/" in ours or ours == "final" else (run / ours).write_text("{}")
        assert ck.open_run(run, "none", "x: 1\n", True, {}, 1, None, write=False) is None
        assert not (run / "config.yaml").exists() and len(list((run / "previous").iterdir())) == 1
