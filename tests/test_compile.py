"""train.compile: decoder layers under torch.compile train exactly like eager (defaults: LoRA dropout 0.05,
packed rows, packed attention run eagerly inside the compiled layers)."""

from pathlib import Path

import pytest
import torch
from conftest import recipe_config
from safetensors.torch import load_file

from weitiao.errors import UserError
from weitiao.recipes import sft
from weitiao.train import loop
from weitiao.train.log import read_metrics

pytestmark = pytest.mark.slow  # inductor compiles C++ kernels: ~1 min on 2 cores


def run(model_dir, data, out, *extra):
    cfg = recipe_config("sft", model_dir, data, out, "train.max_steps=3", "train.lr=5e-3", "data.max_len=64", *extra)
    sft.run(cfg)
    adapter = load_file(str(Path(out) / "final" / "adapter" / "adapter_model.safetensors"))
    return [r["loss"] for r in read_metrics(out, "train")], adapter


def test_compiled_run_equals_eager(tiny_model_dir, chat_file, tmp_path, monkeypatch):
    compiled = []
    compile_layers = loop.compile_layers
    monkeypatch.setattr(loop, "compile_layers", lambda model: compiled.append(compile_layers(model)) or compiled[-1])
    eager_losses, eager = run(tiny_model_dir, chat_file, tmp_path / "eager")
    assert compiled == []  # negative control: off by default
    losses, adapter = run(tiny_model_dir, chat_file, tmp_path / "compiled", "train.compile=true")
    assert compiled == [2]  # both decoder layers
    assert losses == pytest.approx(eager_losses, rel=1e-5, abs=1e-5)
    # Adapters: AdamW turns rounding-level gradient differences on near-zero entries into ±lr steps, so the
    # weights are compared through the gradients below, not after the updates.
    assert eager.keys() == adapter.keys()


def test_compiled_layers_give_eager_loss_and_gradients(tiny_model_dir, tokenizer):
    """One packed micro-batch, LoRA dropout 0.05 (same seed): loss and every adapter gradient within 1e-5."""
    from test_collate import make_examples

    from weitiao.data.collate import collate, n_targets
    from weitiao.losses.sft import CausalLMLoss
    from weitiao.models import packed_attention
    from weitiao.models.load import LoraSpec, ModelSpec, build_trainable

    exs = make_examples(tokenizer, n=5, seed=4)
    b = collate(exs, [[0, 1, 2], [3, 4]], tokenizer.pad_token_id, packing=True)
    out = []
    for compiled in (False, True):
        torch.manual_seed(0)
        model = build_trainable(ModelSpec(path=str(tiny_model_dir)), LoraSpec(), torch.device("cpu")).train()
        packed_attention.enable(model)
        if compiled:
            assert loop.compile_layers(model) == 2
        torch.manual_seed(1)
        nll, _ = CausalLMLoss(model)(b.input_ids, b.targets, b.position_ids, None)
        (nll / sum(n_targets(e) for e in exs)).backward()
        out.append((nll.item(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}))
    (loss, grads), (c_loss, c_grads) = out
    assert c_loss == pytest.approx(loss, rel=1e-5)
    for name, g in grads.items():
        assert torch.allclose(c_grads[name], g, atol=1e-5, rtol=1e-5), name


def test_compile_refuses_a_model_without_decoder_layers():
    with pytest.raises(UserError, match="train.compile: no decoder layers found in Linear"):
        loop.compile_layers(torch.nn.Linear(2, 2))
