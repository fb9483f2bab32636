"""Paths in a config file are relative to that file's folder; command-line overrides to the cwd."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from weitiao.config import load_config
from weitiao.errors import UserError
from weitiao.recipes.dpo import DPOConfig
from weitiao.recipes.ppo import PPOConfig
from weitiao.recipes.sft import SFTConfig


def write(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


def test_sft_paths_follow_the_config_file(tmp_path, monkeypatch):
    proj = tmp_path / "proj"
    (proj / "data").mkdir(parents=True)
    (proj / "base").mkdir()
    cfg_file = write(proj / "configs/sft.yaml", {
        "model": {"path": "../base"},
        "lora": {"init_from": "../runs/old"},
        "data": {"train": ["../data/a.jsonl", "~/b.jsonl", "/abs/c.jsonl"], "eval": ["../data/e.jsonl"]},
        "train": {"out": "../runs/sft", "golden": "golden.jsonl", "resume": "auto"},
    })  # fmt: skip
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # run from another folder: nothing may depend on it
    cfg = load_config(SFTConfig, cfg_file)
    assert cfg.data.train == [str(proj / "data/a.jsonl"), os.path.expanduser("~/b.jsonl"), "/abs/c.jsonl"]
    assert cfg.data.eval == [str(proj / "data/e.jsonl")]
    assert cfg.model.path == str(proj / "base")  # an existing model dir next to the config
    # ../ is a path, never a hub id: resolved beside the config even before it exists (it was kept as written and
    # read from the current folder, where a same-named folder could be loaded by mistake)
    assert cfg.lora.init_from == str(proj / "runs/old")
    assert cfg.train.out == str(proj / "runs/sft") and cfg.train.golden == str(proj / "configs/golden.jsonl")
    assert cfg.train.resume == "auto"  # a keyword, not a path
    # command-line overrides are relative to the cwd, like any command-line path
    cfg = load_config(SFTConfig, cfg_file, ["data.train=[mine.jsonl]", "train.out=out", "model.path=demo"])
    assert cfg.data.train == [str(elsewhere / "mine.jsonl")] and cfg.train.out == str(elsewhere / "out")
    assert cfg.model.path == "demo"


def test_hub_ids_module_paths_and_urls_stay(tmp_path):
    cfg_file = write(tmp_path / "c/ppo.yaml", {
        "model": {"path": "Qwen/Qwen2.5-0.5B-Instruct"},
        "reward": {"kind": "function", "path": "weitiao.recipes.rewards:short_emoji_reward"},
        "data": {"prompts": ["p.jsonl"]},
        "train": {"resume": "ckpt/step-10"},
    })  # fmt: skip
    cfg = load_config(PPOConfig, cfg_file)
    assert cfg.model.path == "Qwen/Qwen2.5-0.5B-Instruct"
    assert cfg.reward.path == "weitiao.recipes.rewards:short_emoji_reward"
    assert cfg.data.prompts == [str(tmp_path / "c/p.jsonl")]
    assert cfg.train.resume == str(tmp_path / "c/ckpt/step-10")
    cfg = load_config(DPOConfig, write(tmp_path / "d/dpo.yaml", {"data": {"train": ["s3://bucket/x.jsonl"]}}))
    assert cfg.data.train == ["s3://bucket/x.jsonl"]


def test_a_reward_function_file_is_found_beside_the_config(tmp_path, monkeypatch):
    """`rew/my.py:f` next to the config, run from another folder that has its own rew/my.py: the config's wins
    (it used to be imported from the cwd, the wrong reward silently)."""
    for where, value in [(tmp_path / "cfg", 1.0), (tmp_path / "run", 5.0)]:
        (where / "rew").mkdir(parents=True)
        (where / "rew" / "my.py").write_text(f"def f(prompts, responses):\n    return [{value}] * len(responses)\n")
    cfg_file = write(tmp_path / "cfg/ppo.yaml", {"reward": {"kind": "function", "path": "rew/my.py:f"},
                                                 "data": {"prompts": ["p.jsonl"]}})  # fmt: skip
    monkeypatch.chdir(tmp_path / "run")
    cfg = load_config(PPOConfig, cfg_file)
    assert cfg.reward.path == f"{tmp_path / 'cfg/rew/my.py'}:f"
    from weitiao.recipes.rewards import build_scorer

    assert build_scorer(cfg.reward)[0]([[]], ["x"]) == [1.0]
    cli = load_config(PPOConfig, None, ["reward.kind=function", "reward.path=rew/my.py:f", "data.prompts=[p.jsonl]"])
    assert cli.reward.path == f"{tmp_path / 'run/rew/my.py'}:f"  # on the command line: the cwd's, made absolute


def test_shipped_example_runs_from_any_folder(tmp_path, monkeypatch):
    example = Path(__file__).resolve().parents[1] / "examples" / "demo_sft.yaml"
    monkeypatch.chdir(tmp_path)
    cfg = load_config(SFTConfig, example)
    assert all(Path(f).is_file() for f in [*cfg.data.train, *cfg.data.eval]), cfg.data
    with pytest.raises(AssertionError):  # negative control: read from the cwd they would not exist
        assert all(Path(f).is_file() for f in yaml.safe_load(example.read_text())["data"]["train"])


def test_an_override_changes_one_key_not_its_yaml_aliases(tmp_path):
    """`critic_lora: *l` shares the actor's mapping in PyYAML: `lora.r=8` set the critic's r to 8 as well."""
    cfg_file = tmp_path / "ppo.yaml"
    cfg_file.write_text("lora: &l\n  r: 16\n  alpha: 32\n  dropout: 0.0\ndata: {prompts: [p.jsonl]}\n"
                        "reward: {kind: function, path: m:f}\nppo:\n  critic_lora: *l\n")  # fmt: skip
    cfg = load_config(PPOConfig, cfg_file, ["lora.r=8", "lora.alpha=16"])
    assert (cfg.lora.r, cfg.lora.alpha) == (8, 16)
    assert (cfg.ppo.critic_lora.r, cfg.ppo.critic_lora.alpha) == (16, 32)  # as the file wrote them
    cfg = load_config(PPOConfig, cfg_file, ["ppo.critic_lora.r=4"])
    assert (cfg.lora.r, cfg.ppo.critic_lora.r) == (16, 4)


def test_an_input_among_the_files_a_run_writes_in_train_out_is_refused(tmp_path):
    """`train.out: .` beside the config (one folder per experiment): a fresh run moved the user's config.yaml and
    golden.jsonl (the name the docs use for golden prompts) to previous/<time>/ as the previous run's files, then
    stopped with `golden.jsonl: file not found`, or recorded its own config.yaml over the user's. Refused at load with
    the key; the config.yaml a run recorded still runs again in its own folder, and another train.out is fine."""
    from weitiao.config import dump_config

    proj = tmp_path / "exp"
    (proj / "golden.jsonl").parent.mkdir(parents=True)
    (proj / "golden.jsonl").write_text('{"messages": [{"role": "user", "content": "hi"}]}\n', encoding="utf-8")
    body = {"data": {"train": ["a.jsonl"]}, "train": {"out": ".", "golden": "golden.jsonl"}}
    cfg_file = write(proj / "sft.yaml", body)
    refused = r"sft\.yaml:\d+: train\.out: train\.golden is .*golden\.jsonl, in .*golden\.jsonl, which a run writes"
    with pytest.raises(UserError, match=refused):
        load_config(SFTConfig, cfg_file)
    assert load_config(SFTConfig, cfg_file, [f"train.out={tmp_path / 'runs'}"]).train.golden == str(
        proj / "golden.jsonl"
    )
    mine = write(proj / "config.yaml", {"data": {"train": ["a.jsonl"]}, "train": {"out": "."}})
    with pytest.raises(
        UserError, match=r"config\.yaml:\d+: train\.out: .*config\.yaml is the config file this run reads"
    ):
        load_config(SFTConfig, mine)
    recorded = load_config(SFTConfig, write(tmp_path / "tmp.yaml", {"data": {"train": [str(proj / "a.jsonl")]},
                                                                   "train": {"out": str(proj)}}))  # fmt: skip
    mine.write_text(dump_config(recorded), encoding="utf-8")  # what a run in `proj` records there
    assert load_config(SFTConfig, mine).train.out == str(proj)
    assert load_config(SFTConfig, mine, ["train.max_steps=3"]).train.max_steps == 3
    write(tmp_path / "runs/sft/final/adapter/adapter_config.json", {})
    dpo_file = write(tmp_path / "dpo.yaml", {"lora": {"init_from": "runs/sft/final/adapter", "dropout": 0.0},
                                             "data": {"train": ["p.jsonl"]}, "train": {"out": "runs/sft"}})  # fmt: skip
    with pytest.raises(UserError, match=r"train\.out: lora\.init_from is .*runs/sft/final/adapter, in .*final, which"):
        load_config(DPOConfig, dpo_file)
    assert load_config(DPOConfig, dpo_file, [f"train.out={tmp_path / 'runs/dpo'}"]).lora.init_from
    step = "runs/sft/checkpoints/step-000004/adapter"  # a fresh run moves checkpoints/step-NNNNNN aside too
    with pytest.raises(
        UserError, match=r"lora\.init_from is .*step-000004/adapter, in .*checkpoints/step-000004, which"
    ):
        load_config(DPOConfig, dpo_file, [f"lora.init_from={tmp_path / step}"])
    kept = tmp_path / "runs/sft/checkpoints/step-000004-best/adapter"  # a user's copy: never moved, so fine
    assert load_config(DPOConfig, dpo_file, [f"lora.init_from={kept}"]).lora.init_from == str(kept)
    assert sorted(p.name for p in proj.iterdir()) == ["config.yaml", "golden.jsonl", "sft.yaml"]  # nothing moved


def test_a_list_key_given_one_value_says_how_to_write_the_list(tmp_path):
    """`data.train: chat.jsonl` (a file where a list is read) got pydantic's 'Input should be a valid list' and no more,
    in a YAML, a key=value and the console's form alike; now the line says how to write it."""
    from weitiao.ui import forms
    from weitiao.ui.paths import Roots

    cfg_file = write(tmp_path / "sft.yaml", {"model": {"path": "demo"}, "data": {"train": "chat.jsonl"}})
    with pytest.raises(UserError, match=r"sft.yaml:\d+: data.train: .*valid list; data.train takes a list: write \["):
        load_config(SFTConfig, cfg_file)
    with pytest.raises(UserError, match=r"command line data.train=x.jsonl: .*data.train=\[.*x.jsonl\] on the command"):
        load_config(SFTConfig, write(tmp_path / "ok.yaml", {"model": {"path": "demo"}}), ["data.train=x.jsonl"])
    with pytest.raises(UserError, match=r"data.train: .*valid list; data.train takes a list: write \["):
        forms.build("sft", {"data.train": "a.jsonl"}, Roots([tmp_path]), tmp_path / "runs" / "x")
    assert load_config(SFTConfig, cfg_file, ["data.train=[a.jsonl]"]).data.train[0].endswith("a.jsonl")
