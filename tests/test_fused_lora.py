"""train.fused_lora: each LoRA linear as one autograd function (`models/fused_lora.py`) computes what peft does.

Outputs and every LoRA gradient equal peft's own forward within 1e-5 (fp32): one layer with few tokens (the
unmerged addmm path) and many (the adapter folded into the weight), LoRA dropout 0 and 0.05 (same seed, same
masks), whole models on packed and padded batches, a 4-bit (NF4) base; the calls it cannot fuse (adapters
disabled, DoRA) run peft's forward. A sensitivity control: a 1% scaling error is far outside the tolerance.
"""

import pytest
import torch
from conftest import recipe_config
from test_collate import make_examples

from weitiao.config import load_config
from weitiao.data.collate import collate, n_targets
from weitiao.errors import UserError
from weitiao.losses.sft import CausalLMLoss
from weitiao.models import fused_lora, packed_attention
from weitiao.models.load import LoraSpec, ModelSpec, build_trainable
from weitiao.recipes import sft
from weitiao.train.log import read_metrics

TOL = 1e-5


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def model(model_dir, dropout: float, quant: str = "none", checkpointing: bool = False, **lora):
    torch.manual_seed(0)
    spec = ModelSpec(path=str(model_dir), quant=quant, gradient_checkpointing=checkpointing)
    m = build_trainable(spec, LoraSpec(dropout=dropout, **lora), torch.device("cpu"))
    g = torch.Generator().manual_seed(1)
    for name, p in m.named_parameters():  # B starts at 0: give the adapter an effect on the output and on A's grads
        if "lora_B" in name:
            p.data = torch.randn(p.shape, generator=g) * 0.05
    return m.train()


def layer_pass(layer, x, seed=2):
    layer.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_()
    torch.manual_seed(seed)  # the same dropout masks on both paths
    y = layer(x)
    y.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(3)))
    return [y.detach(), x.grad, *(p.grad for p in layer.parameters() if p.requires_grad)]


@pytest.mark.parametrize("dropout", [0.0, 0.05])
@pytest.mark.parametrize("tokens", [8, 512])  # 8: y = x Wᵀ + s·a Bᵀ (addmm); 512: y = x (W + s·B A)ᵀ
def test_layer_equals_peft(tiny_model_dir, dropout, tokens):
    m = model(tiny_model_dir, dropout)
    layer = m.get_base_model().model.layers[1].mlp.down_proj  # 256 → 128: folding pays from 86 tokens
    x = torch.randn(2, tokens // 2, 256, generator=torch.Generator().manual_seed(4))
    want = layer_pass(layer, x)
    assert fused_lora.enable(m) == 14  # 7 linears × 2 layers
    got = layer_pass(layer, x)
    assert len(got) == len(want) == 4  # y, ∂x, ∂A, ∂B
    assert all(g.abs().sum() > 0 for g in want)
    for g, w, what in zip(got, want, ("y", "dx", "dA", "dB")):
        assert rel(g, w) < TOL, what
    layer.scaling["default"] *= 1.01  # sensitivity control: a 1% scaling error is far outside the tolerance
    wrong = layer_pass(layer, x)
    assert rel(wrong[0], want[0]) > 100 * TOL


def batch(tokenizer, layout: str):
    exs = make_examples(tokenizer, n=5, seed=4)
    if layout == "packed":
        return collate(exs, [[0, 1, 2], [3, 4]], tokenizer.pad_token_id, packing=True), exs
    return collate(exs, [[0], [1], [2], [3], [4]], tokenizer.pad_token_id, packing=False), exs


def model_pass(m, b, exs):
    m.zero_grad(set_to_none=True)
    torch.manual_seed(5)
    mask = None if packed_attention.active(m) else b.attention_mask
    nll, _ = CausalLMLoss(m)(b.input_ids, b.targets, b.position_ids, mask)
    (nll / sum(n_targets(e) for e in exs)).backward()
    return nll.item(), {n: p.grad for n, p in m.named_parameters() if p.requires_grad}


def check_model(m, b, exs, expect_fused: int):
    loss, grads = model_pass(m, b, exs)
    assert fused_lora.enable(m) == expect_fused
    f_loss, f_grads = model_pass(m, b, exs)
    assert f_loss == pytest.approx(loss, rel=TOL)
    assert grads.keys() == f_grads.keys() and len(grads) == 2 * expect_fused
    for name, g in grads.items():
        assert g.abs().sum() > 0, name
        assert rel(f_grads[name], g) < TOL, name
    assert fused_lora.disable(m) == expect_fused
    assert model_pass(m, b, exs)[0] == loss  # peft's forward again, bit for bit


@pytest.mark.parametrize("dropout", [0.0, 0.05])
@pytest.mark.parametrize("layout", ["packed", "padded", "packed, gradient checkpointing"])
def test_model_loss_and_grads_equal_peft(tiny_model_dir, tokenizer, dropout, layout):
    """Gradient checkpointing runs the forward again in backward: the same dropout masks (restored RNG)."""
    m = model(tiny_model_dir, dropout, checkpointing="checkpointing" in layout)
    if layout.startswith("packed"):
        assert packed_attention.enable(m)
    check_model(m, *batch(tokenizer, layout.split(",")[0]), expect_fused=14)


@pytest.fixture(scope="module")
def qwen2_dir(tmp_path_factory, tokenizer):
    from conftest import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("qwen2") / "qwen2", tokenizer, arch="qwen2", kv_heads=2)


@pytest.mark.parametrize("dropout", [0.0, 0.05])
def test_biased_base_equals_peft(qwen2_dir, tokenizer, dropout):
    """Qwen2's q/k/v projections carry a bias (frozen, added once; HF initializes it to 0, so it gets values)."""
    m = model(qwen2_dir, dropout)
    biases = [mod.bias for mod in m.modules() if isinstance(mod, torch.nn.Linear) and mod.bias is not None]
    assert len(biases) == 6  # q, k, v × 2 layers
    for b in biases:
        b.data = torch.randn(b.shape, generator=torch.Generator().manual_seed(6)) * 0.1
    assert packed_attention.enable(m)
    check_model(m, *batch(tokenizer, "packed"), expect_fused=14)


@pytest.mark.parametrize("dropout", [0.0, 0.05])
def test_qlora_loss_and_grads_equal_peft(tiny_model_dir, tokenizer, dropout):
    """NF4 base: bitsandbytes dequantizes the weight and runs an fp32 matmul on the CPU; so does the fused path."""
    m = model(tiny_model_dir, dropout, quant="4bit")
    assert type(m.get_base_model().model.layers[0].self_attn.q_proj.base_layer).__name__ == "Linear4bit"
    assert packed_attention.enable(m)
    check_model(m, *batch(tokenizer, "packed"), expect_fused=14)


def test_unfused_calls_run_peft(tiny_model_dir, tokenizer):
    """Adapters disabled (DPO's reference pass) give the base model's output; rsLoRA is fused with its own scaling;
    DoRA is left to peft."""
    b, exs = batch(tokenizer, "packed")
    m = model(tiny_model_dir, 0.0)
    fused_lora.enable(m)
    with torch.no_grad(), m.disable_adapter():
        off = m(input_ids=b.input_ids, position_ids=b.position_ids).logits
    with torch.no_grad():
        on = m(input_ids=b.input_ids, position_ids=b.position_ids).logits
        base = m.get_base_model()
        fused_lora.disable(m)
        with m.disable_adapter():
            want = base(input_ids=b.input_ids, position_ids=b.position_ids).logits
    assert torch.equal(off, want) and not torch.allclose(on, want)
    check_model(model(tiny_model_dir, 0.0, rslora=True), b, exs, expect_fused=14)
    assert fused_lora.enable(model(tiny_model_dir, 0.0, dora=True)) == 0


def test_config_switch(tiny_model_dir, chat_file, tmp_path, monkeypatch):
    fused = []
    enable = fused_lora.enable
    monkeypatch.setattr(fused_lora, "enable", lambda m: fused.append(enable(m)) or fused[-1])
    sft.run(recipe_config("sft", tiny_model_dir, chat_file, tmp_path / "on", "train.max_steps=1", "data.max_len=64"))
    assert fused == [14]  # on by default
    off = recipe_config(
        "sft", tiny_model_dir, chat_file, tmp_path / "off", "train.max_steps=1", "train.fused_lora=false"
    )
    sft.run(off)
    assert fused == [14]
    with pytest.raises(UserError, match="fused_lora"):
        load_config(sft.SFTConfig, None, [f"model.path={tiny_model_dir}", "train.fused_lora=maybe"])


def test_resume_accepts_a_changed_switch(tiny_model_dir, chat_file, tmp_path):
    """train.fused_lora changes how a step is computed, not what: a run resumes with it switched (no
    train.resume=force), as with train.compile; the losses go on within float rounding of the straight run's."""
    args = ("train.max_steps=2", "train.save_every=1", "data.max_len=64", "lora.dropout=0")
    sft.run(recipe_config("sft", tiny_model_dir, chat_file, tmp_path / "straight", *args))
    sft.run(recipe_config("sft", tiny_model_dir, chat_file, tmp_path / "run", *args, "train.stop_after=1"))
    sft.run(recipe_config("sft", tiny_model_dir, chat_file, tmp_path / "run", *args, "train.fused_lora=false"))
    losses = [[r["loss"] for r in read_metrics(tmp_path / d, "train")] for d in ("straight", "run")]
    assert len(losses[1]) == 2 and losses[1] == pytest.approx(losses[0], rel=TOL)
