"""The config pieces recipes share: one run spec, one template-name type, one keep_last meaning,
one loader and override syntax for recipes and log profiles, and recipes that never import each other."""

from __future__ import annotations

import ast
import re
import typing
from pathlib import Path

import pytest

from weitiao.config import load_config
from weitiao.data.templates import TEMPLATE_NAMES
from weitiao.errors import UserError
from weitiao.recipes import dpo, ppo, rm, sft
from weitiao.train.spec import RunSpec, TemplateName

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = {
    sft.SFTConfig: ["data.train=[x.jsonl]"],
    dpo.DPOConfig: ["data.train=[x.jsonl]"],
    rm.RMConfig: ["data.train=[x.jsonl]"],
    ppo.PPOConfig: ["data.prompts=[p.jsonl]", "reward.kind=function", "reward.path=m:f"],
}


def test_template_name_type_is_the_template_list():
    assert typing.get_args(TemplateName) == TEMPLATE_NAMES


@pytest.mark.parametrize("cls", list(REQUIRED))
def test_every_recipe_checks_the_template_name_at_load(cls):
    with pytest.raises(UserError, match=r"^command line data.template=chatlm: data.template: Input should be 'auto'"):
        load_config(cls, None, [*REQUIRED[cls], "data.template=chatlm"])
    assert load_config(cls, None, [*REQUIRED[cls], "data.template=chatml"]).data.template == "chatml"


@pytest.mark.parametrize("cls", list(REQUIRED))
def test_every_recipe_composes_the_run_spec_and_keep_last_means_the_same(cls):
    cfg = load_config(cls, None, REQUIRED[cls])
    assert isinstance(cfg.train, RunSpec)
    with pytest.raises(
        UserError, match=r"^command line train.keep_last=0: train.keep_last: Input should be greater than 0"
    ):
        load_config(cls, None, [*REQUIRED[cls], "train.keep_last=0"])  # PPO took 0 as "keep all"
    assert load_config(cls, None, [*REQUIRED[cls], "train.keep_last=1"]).train.keep_last == 1


def test_defaults_stay_per_recipe():
    outs = {cls: load_config(cls, None, REQUIRED[cls]).train for cls in REQUIRED}
    assert [Path(t.out).name for t in outs.values()] == ["sft", "dpo", "rm", "ppo"]
    assert outs[ppo.PPOConfig].keep_last == 2 and outs[sft.SFTConfig].keep_last == 3


def test_recipes_never_import_each_other():
    recipes = {p.stem for p in (ROOT / "weitiao" / "recipes").glob("*.py")} - {
        "__init__",
        "rewards",
        "configs",
    }  # rewards: reward sources; configs: each recipe's own config classes (no torch); neither is a recipe
    found = []
    for name in ("sft", "dpo", "rm", "ppo"):
        tree = ast.parse((ROOT / "weitiao" / "recipes" / f"{name}.py").read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                mods = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            else:
                continue
            found += [(name, m) for m in mods if m.startswith("weitiao.recipes.") and m.split(".")[2] in recipes]
    assert found == []


def test_log_profiles_use_the_recipe_override_syntax_and_error_line(tmp_path):
    from weitiao.logs.config import load_profile

    assert load_profile("chat", "chat", ["cross_session.enabled=true"]).cross_session.enabled is True
    with pytest.raises(
        UserError, match=r"^command line cross_session.enabled=maybe: cross_session.enabled: Input should be"
    ) as e:
        load_profile("chat", "chat", ["cross_session.enabled=maybe"])
    with pytest.raises(UserError, match=r"^command line train.seed=maybe: train.seed: Input should be") as r:
        load_config(sft.SFTConfig, None, [*REQUIRED[sft.SFTConfig], "train.seed=maybe"])
    assert "\n" not in str(e.value) + str(r.value)
    with pytest.raises(UserError, match=r"expected key.path=value"):
        load_profile("chat", "chat", ["cross_session.enabled"])


def test_sft_and_preference_data_declare_the_file_keys_once():
    """Before: files/template/cache keys were declared twice, in recipes/sft.py DataSpec and train/spec.py."""
    from weitiao.train.spec import DataFilesSpec, PrefDataSpec

    shared = set(DataFilesSpec.model_fields)
    assert {"train", "template", "cache", "cache_dir", "num_proc"} <= shared
    for cls in (sft.DataSpec, PrefDataSpec):
        assert issubclass(cls, DataFilesSpec) and not set(cls.__annotations__) & shared, cls.__name__
        assert list(cls.model_fields)[: len(shared)] == list(DataFilesSpec.model_fields)  # files first in `config show`


def test_a_yes_no_is_never_read_as_a_number_nor_a_number_as_a_yes_no(tmp_path):
    """pydantic's lax mode read `lora.r: true` as r 1, `train.lr: yes` as 1.0 and `data.packing: 1` or "yes" as true,
    silently; each is refused in the loader's one line (file:line, key). Numbers written as strings still pass:
    PyYAML reads `lr: 2e-4` as the string '2e-4'."""
    from weitiao.logs.config import load_profile
    from weitiao.ui import forms
    from weitiao.ui.paths import Roots

    cfg = tmp_path / "c.yaml"
    cfg.write_text("data:\n  train: [x.jsonl]\n  packing: 1\nlora:\n  r: true\ntrain:\n  lr: yes\n", encoding="utf-8")
    refused = {
        "lora.r": (5, "a yes/no (true) where a number goes would be read as 1; write the number"),
        "train.lr": (7, "a yes/no (true) where a number goes would be read as 1.0; write the number"),
        "data.packing": (3, "1 where true or false goes would be read as true; write true or false"),
    }
    fixes = {"lora.r": "lora.r=16", "train.lr": "train.lr=2e-4", "data.packing": "data.packing=true"}
    for key, (line, msg) in refused.items():
        others = [v for k, v in fixes.items() if k != key]
        with pytest.raises(UserError) as e:
            load_config(sft.SFTConfig, cfg, others)
        assert str(e.value) == f"{cfg}:{line}: {key}: {msg}"
    ok = load_config(sft.SFTConfig, cfg, list(fixes.values()))  # the overrides, YAML-parsed, are what they say
    assert (ok.lora.r, ok.train.lr, ok.data.packing) == (16, 2e-4, True)
    quoted = load_config(sft.SFTConfig, cfg, ["lora.r='16'", "train.lr='2e-4'", "data.packing=on"])
    assert (quoted.lora.r, quoted.train.lr, quoted.data.packing) == (16, 2e-4, True)  # strings of numbers still read
    for given, want in [("lora.r=yes", "lora.r: a yes/no (true)"), ("data.packing='yes'", "data.packing: 'yes' ")]:
        with pytest.raises(UserError, match=rf"^command line {re.escape(given)}: {re.escape(want)}"):
            load_config(sft.SFTConfig, None, [*REQUIRED[sft.SFTConfig], given])
    with pytest.raises(UserError, match=r"^command line min_views=true: min_views: a yes/no \(true\)"):
        load_profile("dwell", "xhs", ["min_views=true"])
    (tmp_path / "x.jsonl").write_text("", encoding="utf-8")
    form = {"data.train": '["x.jsonl"]', "data.packing": "1"}  # the console's text box
    with pytest.raises(UserError, match=r"^data.packing: 1 where true or false goes would be read as true"):
        forms.build("sft", form, Roots([tmp_path]), tmp_path / "runs" / "x")
    assert forms.build("sft", form | {"data.packing": True}, Roots([tmp_path]), tmp_path / "runs" / "x").data.packing
