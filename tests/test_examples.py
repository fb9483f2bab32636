"""Every shipped config parses and builds: real model shapes on the meta device, LoRA attached by peft."""

from pathlib import Path

import pytest
import torch
import yaml

from weitiao.calc.lora import PRESETS
from weitiao.config import load_config
from weitiao.recipes.dpo import DPOConfig
from weitiao.recipes.kto import KTOConfig
from weitiao.recipes.ppo import PPOConfig
from weitiao.recipes.rm import RMConfig
from weitiao.recipes.sft import SFTConfig

ROOT = Path(__file__).resolve().parents[1]
# Real shapes (from each model's public config.json) live in the LoRA calculator's presets.
SHAPES = {
    "Qwen/Qwen2.5-7B-Instruct": PRESETS["qwen2.5-7b"],
    "meta-llama/Meta-Llama-3-70B-Instruct": PRESETS["llama-3-70b"],
}
# Recipe configs are the example YAML files with a `model` section (rule files and the like are tested elsewhere).
CONFIGS = sorted(p for p in (ROOT / "examples").glob("*.yaml") if "model" in (yaml.safe_load(p.read_text()) or {}))


def lora_count(cfg: SFTConfig, shape: dict) -> int:
    """Independent count: r·(in+out) per targeted linear (all-linear = every projection)."""
    h, i, L = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"]
    kv = h // shape["num_attention_heads"] * shape["num_key_value_heads"]
    per_layer = (h + h) + (h + kv) * 2 + (h + h) + (h + i) * 3
    return cfg.lora.r * per_layer * L


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_example_builds(path):
    kinds = {"dpo": DPOConfig, "kto": KTOConfig, "_rm": RMConfig, "ppo": PPOConfig}
    cls = next((c for k, c in kinds.items() if k in path.name), SFTConfig)
    cfg = load_config(cls, path)
    if cfg.model.path == "demo":
        files = cfg.data.prompts if cls is PPOConfig else cfg.data.train + cfg.data.eval
        assert files and all((ROOT / f).exists() for f in files)
        return
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    arch, shape = SHAPES[cfg.model.path]
    hf_cfg = AutoConfig.for_model(arch, **shape)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_cfg)
    lora = cfg.lora
    peft_model = get_peft_model(
        model, LoraConfig(r=lora.r, lora_alpha=lora.alpha or 2 * lora.r, target_modules=lora.targets)
    )
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert trainable == lora_count(cfg, shape)
    assert cfg.lora.alpha == 2 * cfg.lora.r and cfg.model.quant == "4bit"


def test_accelerate_configs_parse():
    for p in (ROOT / "examples" / "accelerate").glob("*.yaml"):
        data = yaml.safe_load(p.read_text())
        assert (
            data["distributed_type"] in {"MULTI_GPU", "FSDP", "MULTI_CPU", "DEEPSPEED"} and data["num_processes"] >= 1
        )
