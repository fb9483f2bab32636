"""`weitiao CMD --help-config` / `weitiao config show CMD`: every key of the config classes, described."""

from __future__ import annotations

import typing

import pytest
from pydantic import BaseModel, Field
from typer.testing import CliRunner

from weitiao.cli import _config_classes, app
from weitiao.config_doc import config_keys, render

NAMES = ["sft", "dpo", "kto", "rm", "ppo", "logs"]


def leaf_keys(cls: type[BaseModel], prefix: str = "") -> list[str]:
    """The test's own walk of a config class: nested BaseModel sections (also `X | None`) become dotted keys."""
    out = []
    for name, f in cls.model_fields.items():
        subs = [a for a in (f.annotation, *typing.get_args(f.annotation)) if isinstance(a, type)]
        sub = next((a for a in subs if issubclass(a, BaseModel)), None)
        out += leaf_keys(sub, f"{prefix}{name}.") if sub else [prefix + name]
    return out


@pytest.mark.parametrize("name", NAMES)
def test_every_key_is_listed_with_type_default_and_description(name):
    shown = CliRunner().invoke(app, ["config", "show", name])
    assert shown.exit_code == 0, shown.output
    for title, cls in _config_classes(name):
        text = render(cls, title)
        assert text in shown.output
        lines = text.splitlines()
        keys = leaf_keys(cls)
        docs = {k.key: k for k in config_keys(cls)}
        assert list(docs) == keys  # every field, in order, nothing extra
        for key in keys:
            assert docs[key].description, f"{cls.__name__}: {key} has no Field(description=...)"
            i = next(i for i, line in enumerate(lines) if line.split() and line.split()[0] == key)
            assert "=" in lines[i] and lines[i + 1].strip() == docs[key].description
    assert ("profile" if name == "logs" else "model.path") in shown.output


@pytest.mark.parametrize("name", ["sft", "dpo", "kto", "rm", "ppo"])
def test_help_config_flag_needs_no_config_file(name):
    """Before: `weitiao sft` without a config file was an error; --help-config prints the keys instead."""
    r = CliRunner().invoke(app, [name, "--help-config"])
    assert r.exit_code == 0 and r.output == CliRunner().invoke(app, ["config", "show", name]).output


def test_missing_description_and_unknown_name_are_reported():
    class Inner(BaseModel):
        depth: int = Field(2, description="how deep")

    class Toy(BaseModel):
        inner: Inner | None = None
        bare: list[str] = Field(default_factory=list)
        need: str

    keys = config_keys(Toy)
    assert [(k.key, k.type, k.default, k.description) for k in keys] == [
        ("inner.depth", "int", "2", "how deep"),
        ("bare", "list[str]", "[]", ""),
        ("need", "str", "required", ""),
    ]
    assert render(Toy, "toy").startswith("toy: 3 keys")
    r = CliRunner().invoke(app, ["config", "show", "nope"])
    assert r.exit_code != 0 and "sft, dpo, kto, rm, ppo, logs" in str(r.exception)


@pytest.mark.parametrize("name", ["sft", "dpo", "rm"])
def test_lr_default_shown_is_the_one_a_run_takes(name, tiny_model_dir, chat_file, tmp_path):
    """`config show dpo|rm` said train.lr defaults to 2e-4 (SFT's); DPO trained at 5e-5 and RM at 1e-4 unsaid."""
    import importlib

    from conftest import recipe_config, write_jsonl
    from test_dpo import make_pairs

    from weitiao.train.log import read_metrics

    ((_, cls),) = _config_classes(name)
    shown = next(k.description for k in config_keys(cls) if k.key == "train.lr")
    data = chat_file if name == "sft" else write_jsonl(tmp_path / "p.jsonl", make_pairs(4))
    fast = ("data.max_len=96", "train.max_steps=1", "train.scheduler=constant", "train.warmup_ratio=0")
    importlib.import_module(f"weitiao.recipes.{name}").run(recipe_config(name, tiny_model_dir, data, tmp_path, *fast))
    lr = read_metrics(tmp_path, "train")[0]["lr"]
    assert shown.startswith(f"default {lr:.0e}".replace("e-0", "e-") + " with LoRA"), (shown, lr)
    assert cls.model_fields["train"].default_factory().default_lr(lora=False) != lr  # full fine-tuning's differs
