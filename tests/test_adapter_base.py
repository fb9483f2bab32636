"""Adapters remember their base: chat, eval gen, serve, export and score with only --adapter/--rm load the
base (and 4-bit quantization) the adapter was trained with, not the demo model; a wrong --model is one line."""

import json
import os
from pathlib import Path

import pytest
from conftest import CHAT_ROWS, save_tiny_model, write_jsonl
from test_dpo import make_pairs
from typer.testing import CliRunner

from weitiao.cli import app
from weitiao.config import load_config
from weitiao.errors import UserError
from weitiao.infer.chat import load_chat_model
from weitiao.models.load import adapter_base

pytestmark = pytest.mark.slow

QUIET = ["train.progress=false", "train.tensorboard=false", "train.max_steps=1", "train.micro_batch_size=2"]


def is_4bit(model) -> bool:
    import bitsandbytes as bnb

    return any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())


@pytest.fixture(scope="module")
def project(tmp_path_factory, tokenizer):
    """A user's project: its own tiny model (not the demo's shapes) and QLoRA SFT + RM runs, trained with
    paths relative to the project dir; the tests then run from elsewhere (the repo root)."""
    from weitiao.recipes import rm, sft

    root = tmp_path_factory.mktemp("project")
    here = Path.cwd()
    os.chdir(root)
    try:
        save_tiny_model(Path("models/tiny"), tokenizer, hidden=64)
        write_jsonl(Path("chat.jsonl"), [dict(r) for r in CHAT_ROWS for _ in range(2)])
        write_jsonl(Path("pairs.jsonl"), make_pairs(8))
        model = ["model.path=models/tiny", "model.quant=4bit", "lora.r=4", "data.max_len=128"]
        sft.run(load_config(sft.SFTConfig, None, [*model, "data.train=[chat.jsonl]", "train.out=runs/sft", *QUIET]))
        rm.run(load_config(rm.RMConfig, None, [*model, "data.train=[pairs.jsonl]", "train.out=runs/rm", *QUIET]))
    finally:
        os.chdir(here)
    return root


def test_adapter_base_is_the_trained_base_and_quant(project):
    base = str((project / "models" / "tiny").resolve())
    assert adapter_base(project / "runs/sft/final/adapter") == (base, "4bit")
    step = next((project / "runs/sft/checkpoints").glob("step-*"))
    assert adapter_base(step / "adapter") == (base, "4bit")
    # negative control: a bare peft dir (no run config) falls back to adapter_config.json, quant none
    bare = project / "bare"
    bare.mkdir(exist_ok=True)
    for f in (project / "runs/sft/final/adapter").iterdir():
        (bare / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((bare / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "models/tiny"  # relative: not findable from the repo root
    (bare / "adapter_config.json").write_text(json.dumps(cfg))
    assert adapter_base(bare) == ("models/tiny", "none")


def test_chat_with_only_adapter_gets_trained_base_in_4bit(project):
    run = str(project / "runs/sft")
    r = CliRunner().invoke(app, ["chat", "--adapter", run, "--prompt", "你好", "--max-new-tokens", "3"])
    assert r.exit_code == 0, r.output
    assert "loaded in 4-bit NF4 as in training (--quant none to override)" in r.stderr
    m, _ = load_chat_model(None, run)
    assert is_4bit(m) and m.config.hidden_size == 64
    assert not is_4bit(load_chat_model(None, run, "none")[0])  # --quant overrides


def test_wrong_model_is_one_line(project):
    with pytest.raises(UserError, match=r"does not fit base 'demo' \(.*adapter torch.Size.*\); it was trained on"):
        load_chat_model("demo", str(project / "runs/sft"))


def test_eval_gen_with_only_adapter(project, tmp_path):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"instruction": "你好", "output": "嗨"}])
    args = ["eval", "gen", "--prompts", prompts, "--adapter", project / "runs/sft", "--max-new-tokens", "2"]
    r = CliRunner().invoke(app, [str(a) for a in [*args, "--out", tmp_path / "e.json"]])
    assert r.exit_code == 0, r.output
    assert "loaded in 4-bit NF4 as in training" in r.stderr
    assert len(json.loads((tmp_path / "e.json").read_text())["rows"]) == 1


def test_serve_with_only_adapter(project, monkeypatch, capsys):
    import uvicorn

    from weitiao.infer import serve

    served = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: served.append(app))
    serve.serve(adapter=str(project / "runs/sft"))
    assert len(served) == 1
    assert "loaded in 4-bit NF4 as in training (--quant none to override)" in capsys.readouterr().err


def test_export_merge_with_only_adapter(project, tmp_path):
    from transformers import AutoModelForCausalLM

    r = CliRunner().invoke(
        app, ["export", "--adapter", str(project / "runs/sft"), "--out", str(tmp_path / "m"), "--merge"]
    )
    assert r.exit_code == 0, r.output
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "m").config.hidden_size == 64


def test_score_reward_model_on_trained_base_and_quant(project, tmp_path):
    from weitiao.models.heads import load_reward_model

    rows = write_jsonl(tmp_path / "r.jsonl", make_pairs(2))
    r = CliRunner().invoke(app, ["score", str(rows), "--rm", str(project / "runs/rm")])
    assert r.exit_code == 0, r.output
    assert "loaded in 4-bit NF4 as in training" in r.stderr
    assert is_4bit(load_reward_model(project / "runs/rm", quant=None)[0])
    assert not is_4bit(load_reward_model(project / "runs/rm")[0])  # PPO's critic merge keeps the full base
    with pytest.raises(UserError, match="does not fit base 'demo'"):
        load_reward_model(project / "runs/rm", base="demo")
