"""QLoRA on the bitsandbytes NF4 path: LoRA gradients equal those on the de-quantized fp32 base."""

import torch

from weitiao.infer.export import dequantized_base
from weitiao.models.load import LoraSpec, ModelSpec, add_lora, load_model


def test_lora_grads_through_nf4_match_dequantized_reference(tiny_model_dir, tokenizer):
    spec = ModelSpec(path=str(tiny_model_dir), quant="4bit")
    q = add_lora(load_model(spec), LoraSpec(dropout=0))
    f = add_lora(dequantized_base(spec), LoraSpec(dropout=0))
    g = torch.Generator().manual_seed(0)
    lora = {k: torch.randn(v.shape, generator=g) * 0.05 for k, v in q.state_dict().items() if "lora_" in k}
    q.load_state_dict(lora, strict=False)
    f.load_state_dict(lora, strict=False)
    ids = torch.randint(0, len(tokenizer), (2, 48), generator=g)
    for m in (q, f):
        m(input_ids=ids, labels=ids).loss.backward()
    gq = {n: p.grad for n, p in q.named_parameters() if p.requires_grad}
    gf = {n: p.grad for n, p in f.named_parameters() if p.requires_grad}
    assert gq.keys() == gf.keys() and len(gq) > 0
    # bitsandbytes' CPU kernel computes in bf16: relative error ~1e-2, not 1e-6; a wrong backward is O(1).
    assert max(((gq[n] - gf[n]).norm() / gf[n].norm()).item() for n in gq) < 0.03


def test_cpu_4bit_refuses_widths_its_kernels_misread(tmp_path, tokenizer, tiny_model_dir):
    """A 4-bit base whose Linear input width is not a multiple of 64 trained on wrongly dequantized weights on CPU
    (and crashed in eval): refused at load, naming the module."""
    import bitsandbytes.functional as bnbf
    import pytest
    from conftest import save_tiny_model

    from weitiao.calc.quant import nf4
    from weitiao.errors import UserError

    # Why (bitsandbytes 0.50 on CPU): width 96 comes back far from NF4 of its flat blocks, width 128 exactly.
    w = torch.randn(96, 224, generator=torch.Generator().manual_seed(0))
    for width, same in ((96, False), (128, True)):
        packed, state = bnbf.quantize_4bit(w[:, :width].contiguous(), blocksize=64, quant_type="nf4")
        theirs, ours = bnbf.dequantize_4bit(packed, state), nf4(w[:, :width], 64)
        assert torch.equal(theirs, ours) == same
    odd = save_tiny_model(tmp_path / "odd", tokenizer, hidden=96)
    with pytest.raises(UserError, match=r"model\.layers\.0\.self_attn\.q_proj takes 96 inputs, not a multiple of 64"):
        load_model(ModelSpec(path=str(odd), quant="4bit"))
    # Negative control: multiples of 64 load in 4 bit; the odd model loads unquantized.
    assert load_model(ModelSpec(path=str(tiny_model_dir), quant="4bit")) is not None
    assert load_model(ModelSpec(path=str(odd))) is not None
