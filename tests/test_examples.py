"""Every shipped config parses and builds: real model shapes on the meta device, LoRA attached by peft."""

from pathlib import Path

import pytest
import torch
import yaml

from weitiao.config import load_config
from weitiao.recipes.dpo import DPOConfig
from weitiao.recipes.rm import RMConfig
from weitiao.recipes.sft import SFTConfig

ROOT = Path(__file__).resolve().parents[1]
# Shapes from the public config.json of each model (no download here).
SHAPES = {
    "Qwen/Qwen2.5-7B-Instruct": (
        "qwen2",
        dict(
            hidden_size=3584,
            intermediate_size=18944,
            num_hidden_layers=28,
            num_attention_heads=28,
            num_key_value_heads=4,
            vocab_size=152064,
        ),
    ),
    "meta-llama/Meta-Llama-3-70B-Instruct": (
        "llama",
        dict(
            hidden_size=8192,
            intermediate_size=28672,
            num_hidden_layers=80,
            num_attention_heads=64,
            num_key_value_heads=8,
            vocab_size=128256,
        ),
    ),
}
CONFIGS = sorted((ROOT / "examples").glob("*.yaml"))


def lora_count(cfg: SFTConfig, shape: dict) -> int:
    """Independent count: r·(in+out) per targeted linear (all-linear = every projection)."""
    h, i, L = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"]
    kv = h // shape["num_attention_heads"] * shape["num_key_value_heads"]
    per_layer = (h + h) + (h + kv) * 2 + (h + h) + (h + i) * 3
    return cfg.lora.r * per_layer * L


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_example_builds(path):
    cls = DPOConfig if "dpo" in path.name else RMConfig if "_rm" in path.name else SFTConfig
    cfg = load_config(cls, path)
    if cfg.model.path == "demo":
        assert all((ROOT / f).exists() for f in cfg.data.train + cfg.data.eval)
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
        assert data["distributed_type"] in {"MULTI_GPU", "FSDP", "MULTI_CPU"} and data["num_processes"] >= 1
