"""DoRA, rsLoRA and 8-bit: the built adapter is what the config asked for (not only "the loss fell")."""

import math

import pytest
import torch

from weitiao.models.load import LoraSpec, ModelSpec, build_trainable


@pytest.mark.parametrize("kind", ["plain", "dora", "rslora", "8bit"])
def test_variant_builds_the_layers_asked_for(tiny_model_dir, kind):
    import bitsandbytes as bnb
    from peft.tuners.lora import LoraLayer

    spec = ModelSpec(path=str(tiny_model_dir), quant="8bit" if kind == "8bit" else "none")
    model = build_trainable(
        spec, LoraSpec(r=8, alpha=16, dora=kind == "dora", rslora=kind == "rslora"), torch.device("cpu")
    )
    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    assert len(layers) == 2 * 7  # all-linear: q k v o gate up down in each of the 2 layers
    for m in layers:
        assert m.use_dora["default"] is (kind == "dora")
        assert ("default" in m.lora_magnitude_vector) is (kind == "dora")
        assert m.scaling["default"] == pytest.approx(16 / math.sqrt(8) if kind == "rslora" else 16 / 8)
        assert isinstance(m.base_layer, bnb.nn.Linear8bitLt) is (kind == "8bit")
        assert m.base_layer.weight.dtype == (torch.int8 if kind == "8bit" else torch.float32)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)  # base frozen; DoRA's magnitude is lora_magnitude_vector


def test_8bit_cast_warning_is_printed_once(tiny_model_dir):
    """bitsandbytes logs "MatMul8bitLt: inputs will be cast ... to float16" in every 8-bit layer on every forward that
    is not CPU training (evals, generation): 14 lines a forward on the tiny model. Once, and the logger's other
    messages still repeat (control)."""
    import os
    import subprocess
    import sys

    code = f"""
import logging, torch
from weitiao.models.load import LoraSpec, ModelSpec, build_trainable
spec = ModelSpec(path={str(tiny_model_dir)!r}, quant="8bit")
model = build_trainable(spec, LoraSpec(r=4, alpha=8), torch.device("cpu"))
model.eval()
with torch.no_grad():
    for _ in range(3):
        model(input_ids=torch.tensor([[1, 2, 3, 4]]))
for _ in range(2):
    logging.getLogger("bitsandbytes.autograd._functions").warning("another bitsandbytes warning")
"""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stderr
    assert out.count("MatMul8bitLt: inputs will be cast") == 1, out
    assert "(shown once; weitiao hides its repeats)" in out
    assert out.count("another bitsandbytes warning") == 2, out


def test_peft_wrap_prints_no_future_warning(tiny_model_dir):
    """peft reads transformers' deprecated `is_gradient_checkpointing` on every PeftModel: users see no warning."""
    import subprocess
    import sys

    build = f"build_trainable(ModelSpec(path={str(tiny_model_dir)!r}), LoraSpec(r=4, alpha=8), torch.device('cpu'))"
    head = "import torch, warnings; from weitiao.models.load import LoraSpec, ModelSpec, build_trainable; "
    out = subprocess.run([sys.executable, "-c", head + build], capture_output=True, text=True, check=True)
    assert "FutureWarning" not in out.stderr, out.stderr
    # negative control: with our filter dropped, the same wrap warns (peft still reads the alias)
    out = subprocess.run(
        [sys.executable, "-c", head + "warnings.resetwarnings(); " + build], capture_output=True, text=True
    )
    assert "is_gradient_checkpointing" in out.stderr, out.stderr


@pytest.mark.parametrize(
    ("lora", "msg"),
    [
        ({"targets": ["q_proj", "v_prj"]}, "lora.targets: 'v_prj' matches no module"),
        ({"modules_to_save": ["lm_head", "lm_haed"]}, "lora.modules_to_save: 'lm_haed' matches no module"),
        (
            {"targets": ["embed_tokens", "q_proj"], "modules_to_save": ["embed_tokens"]},
            "lora.targets: 'embed_tokens' is also in lora.modules_to_save",
        ),
    ],
)
def test_a_listed_module_that_matches_nothing_is_refused(tiny_model_dir, lora, msg):
    """peft refuses a target list only when no name matches: `[q_proj, v_prj]` trained q_proj alone, silently."""
    from weitiao.errors import UserError

    spec = ModelSpec(path=str(tiny_model_dir))
    with pytest.raises(UserError, match=msg) as e:
        build_trainable(spec, LoraSpec(**lora), torch.device("cpu"))
    assert "v_proj" in str(e.value) or "modules_to_save" in lora  # the model's module names, to pick from
    # negative control: every name matching builds what was asked
    model = build_trainable(
        spec, LoraSpec(targets=["q_proj", "v_proj"], modules_to_save=["lm_head"]), torch.device("cpu")
    )
    assert sorted({n.rsplit(".", 1)[-1] for n in model.targeted_module_names}) == ["q_proj", "v_proj"]
    assert any("lm_head.modules_to_save" in n for n, p in model.named_parameters() if p.requires_grad)


def test_lora_keys_with_lora_off_are_refused_but_a_recorded_config_loads(tmp_path):
    """lora.* keys with lora.enabled false did nothing (full fine-tuning; init_from: started from the base alone, the
    adapter left out), from the YAML or the command line. A full fine-tuning run's config.yaml holds every lora key at
    its default, and must load again as it is (resume, export): the rule compares with the defaults."""
    from weitiao.config import dump_config, load_config
    from weitiao.errors import UserError
    from weitiao.recipes.sft import SFTConfig

    data = f"data.train=[{tmp_path / 'x.jsonl'}]"
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("model: {path: demo}\nlora:\n  enabled: false\n  r: 64\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"cfg.yaml:4: lora: Value error, r=64 would do nothing: enabled is .*drop r$"):
        load_config(SFTConfig, cfg, [data])
    off = r"^command line lora.enabled=false lora.r=8: lora: Value error, r=8 would do nothing: enabled is false"
    with pytest.raises(UserError, match=off):
        load_config(SFTConfig, None, [data, "lora.enabled=false", "lora.r=8"])
    with pytest.raises(UserError, match=r"init_from=x would do nothing.*merge it with `weitiao export --merge`"):
        load_config(SFTConfig, None, [data, "lora.enabled=false", "lora.init_from=x"])
    recorded = tmp_path / "run" / "config.yaml"
    recorded.parent.mkdir()
    recorded.write_text(dump_config(load_config(SFTConfig, None, [data, "lora.enabled=false"])), encoding="utf-8")
    assert "r: 16" in recorded.read_text() and load_config(SFTConfig, recorded).lora.enabled is False
    assert load_config(SFTConfig, None, [data, "lora.r=8"]).lora.r == 8  # negative control: LoRA on


def test_critic_lora_with_lora_off_is_refused(tiny_model_dir):
    """PPO with lora.enabled false trains full copies: ppo.critic_lora shaped nothing."""
    from weitiao.errors import UserError
    from weitiao.models.roles import Roles

    with pytest.raises(UserError, match="^ppo.critic_lora would do nothing: lora.enabled is false"):
        Roles(ModelSpec(path=str(tiny_model_dir)), LoraSpec(enabled=False), torch.device("cpu"), critic_lora=LoraSpec())


def test_critic_lora_keys_the_critic_never_reads_are_refused(tiny_model_dir):
    """ppo.critic_lora.enabled/init_from/modules_to_save/dropout were accepted and ignored: the critic stayed a fresh
    (or reward-model) LoRA adapter without dropout. The defaults a recorded config.yaml holds still load."""
    from weitiao.errors import UserError
    from weitiao.models.roles import Roles

    spec, cpu = ModelSpec(path=str(tiny_model_dir)), torch.device("cpu")
    bad = {"enabled": False, "init_from": "runs/sft", "modules_to_save": ["lm_head"], "dropout": 0.1}
    for key, value in bad.items():
        with pytest.raises(UserError, match=rf"^ppo\.critic_lora\.{key}=.* would do nothing"):
            critic = LoraSpec(**{key: value} if key == "enabled" else {"r": 4, key: value})
            Roles(spec, LoraSpec(r=8, dropout=0.0), cpu, critic_lora=critic)
    recorded = LoraSpec(**LoraSpec(r=4).model_dump())  # every key written, at its default
    assert Roles(spec, LoraSpec(r=8, dropout=0.0), cpu, critic_lora=recorded).model.peft_config["critic"].r == 4


def test_critic_lora_keys_left_out_are_the_actors(tiny_model_dir, tmp_path):
    """`ppo.critic_lora.r=4` beside an actor of r 8 on q_proj, v_proj, alpha 32: the critic took LoRA's defaults for
    the keys left out (all-linear, alpha 2r), not the actor's, as ppo.critic_lora's "default = the actor's settings"
    said. The run's config.yaml records the keys set alone, so running it again trains the same critic."""
    from weitiao.config import dump_config, load_config
    from weitiao.models.roles import Roles, critic_settings
    from weitiao.recipes.configs import PPOConfig

    actor = ["lora.r=8", "lora.alpha=32", "lora.targets=[q_proj,v_proj]", "lora.dropout=0"]
    given = [f"model.path={tiny_model_dir}", "data.prompts=[p.jsonl]", "reward.kind=function", "reward.path=m:f"]
    cfg = load_config(PPOConfig, None, [*given, *actor, "ppo.critic_lora.r=4"])
    critic = Roles(cfg.model, cfg.lora, torch.device("cpu"), critic_lora=cfg.ppo.critic_lora).model.peft_config[
        "critic"
    ]
    assert (critic.r, critic.lora_alpha, sorted(critic.target_modules)) == (4, 32, ["q_proj", "v_proj"])
    recorded = tmp_path / "config.yaml"
    recorded.write_text(dump_config(cfg), encoding="utf-8")
    again = load_config(PPOConfig, recorded)
    assert critic_settings(again.lora, again.ppo.critic_lora) == critic_settings(cfg.lora, cfg.ppo.critic_lora)
    # alpha left out on both: 2 × the critic's own r; a key set is the critic's own
    cfg = load_config(PPOConfig, None, [*given, "lora.r=8", "ppo.critic_lora.r=4", "ppo.critic_lora.targets=[k_proj]"])
    spec = critic_settings(cfg.lora, cfg.ppo.critic_lora)
    assert (spec.r, spec.alpha, spec.targets, spec.init_from) == (4, None, ["k_proj"], None)


@pytest.mark.parametrize("quant", ["none", "8bit"])
def test_quant_storage_without_4bit_is_refused(quant):
    """model.quant_storage bf16 without quant 4bit loaded a full-precision (or 8-bit) base, silently."""
    with pytest.raises(Exception, match=f"quant_storage bf16 applies to 4-bit weights only and quant is {quant}"):
        ModelSpec(quant=quant, quant_storage="bf16")
    assert ModelSpec(quant="4bit", quant_storage="bf16").quant_storage == "bf16"  # negative control
    assert ModelSpec(quant=quant).quant_storage == "uint8"  # the default stays valid (recorded config.yaml files)


def test_one_string_target_matching_nothing_says_it_is_a_regex(tiny_model_dir):
    """`lora.targets=q_proj` is a string, which peft reads as a regex over full names: say so, and how to list."""
    from weitiao.errors import UserError

    spec = ModelSpec(path=str(tiny_model_dir))
    with pytest.raises(UserError, match=r"a single string is a regular expression .* lora.targets=\[q_proj,v_proj\]"):
        build_trainable(spec, LoraSpec(targets="q_proj"), torch.device("cpu"))
    model = build_trainable(spec, LoraSpec(targets=r".*\.q_proj"), torch.device("cpu"))  # negative control
    assert {n.rsplit(".", 1)[-1] for n in model.targeted_module_names} == {"q_proj"}
