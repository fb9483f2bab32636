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
