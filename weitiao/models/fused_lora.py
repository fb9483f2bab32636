"""LoRA linears as one autograd function: base and adapter in fewer, larger matmuls (train.fused_lora).

peft computes y = x Wᵀ + s·(drop(x) Aᵀ) Bᵀ as separate ops: the base matmul, two skinny adapter matmuls,
a scaling multiply and an add forward, twice as many backward, each a pass over an N×d activation. Here one
`torch.autograd.Function` does the same math:

1. forward: a = drop(x) Aᵀ (N×r, kept for backward); with enough tokens (N·(d_in + d_out) ≥ d_in·d_out) and
   no dropout, y = x (W + s·B A)ᵀ: one matmul with the adapter folded into a per-call weight (d_in·d_out·r
   multiply-adds, small next to N·d_in·d_out); otherwise y = x Wᵀ + s·a Bᵀ in one addmm.
2. backward: ∂B = s·gᵀ a, ∂A = s·(g B)ᵀ drop(x), ∂x = g (W + s·B A) (or g W + s·((g B) A)∘noise); no
   gradient for the frozen W. Saved: x (the base matmul keeps it anyway), a, and with dropout its noise
   (peft also keeps the dropped copy of x).

The same math as peft within float rounding (tests/test_fused_lora.py: outputs and every LoRA gradient within
1e-5, dropout 0 and 0.05, padded and packed batches). The dropout mask is drawn as torch's dropout draws it on
the CPU (`bernoulli_(1 - p)` on a tensor like x), so a seeded run draws the masks it drew before; with dropout on
another device (whose dropout kernel draws differently) peft's forward runs.

`enable(model)` gives each plain peft LoRA linear this forward: one active adapter of vanilla LoRA (rsLoRA's
scaling included; no DoRA or other variant, no lora_bias, no fan_in_fan_out), a frozen `nn.Linear` base, or a
bitsandbytes 4-bit base on the CPU, where bitsandbytes itself dequantizes the weight and runs a plain fp32
matmul (the same dequantized weight is used here). Every call the fused math cannot take (adapters disabled
or merged, mixed adapter batches, autocast, dtypes that differ, 4-bit weights stored as bf16 or sharded by
FSDP) runs peft's own forward. Weights, adapter
files and merging are peft's, unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def _dequantized(base: torch.nn.Module, dtype: torch.dtype) -> torch.Tensor:
    """The base weight (d_out × d_in) as the matmul uses it: itself, or a 4-bit one dequantized as bitsandbytes
    dequantizes it for its own backward (`MatMul4Bit`)."""
    if type(base) is torch.nn.Linear:  # Linear4bit is a Linear too
        return base.weight
    from bitsandbytes.functional import dequantize_4bit

    return dequantize_4bit(base.weight.view(-1, 1), base.weight.quant_state).to(dtype)


class LoraLinear(torch.autograd.Function):
    """y = x Wᵀ + bias + s·(drop(x) Aᵀ) Bᵀ for x of shape (N, d_in); W frozen (its gradient is not computed)."""

    @staticmethod
    def forward(ctx, x, A, B, base, bias, scaling: float, p: float):  # noqa: ANN001, ANN205 (autograd's signature)
        W = _dequantized(base, x.dtype)
        noise = None
        if p > 0:  # torch's own dropout on the CPU: noise = bernoulli(1 - p) / (1 - p), drop(x) = x · noise
            noise = torch.empty_like(x).bernoulli_(1 - p).div_(1 - p)
        a = (x if noise is None else x * noise) @ A.t()
        n, d_in = x.shape
        d_out = W.shape[0]
        merge = p == 0 and n * (d_in + d_out) >= d_in * d_out
        if merge:
            y = F.linear(x, torch.addmm(W, B, A, alpha=scaling), bias)
        else:
            y = torch.addmm(F.linear(x, W, bias), a, B.t(), alpha=scaling)
        ctx.save_for_backward(x, A, B, a, noise)
        ctx.base, ctx.scaling, ctx.merge = base, scaling, merge
        return y

    @staticmethod
    def backward(ctx, g):  # noqa: ANN001, ANN205
        x, A, B, a, noise = ctx.saved_tensors
        s = ctx.scaling
        need_x, need_A, need_B = ctx.needs_input_grad[:3]
        gx = gA = gB = None
        gb = g @ B if need_A or (need_x and not ctx.merge) else None  # N × r
        if need_B:
            gB = (g.t() @ a).mul_(s)
        if need_A:
            gA = (gb.t() @ (x if noise is None else x * noise)).mul_(s)
        if need_x:
            W = _dequantized(ctx.base, g.dtype)
            if ctx.merge:
                gx = g @ torch.addmm(W, B, A, alpha=s)
            elif noise is None:
                gx = torch.addmm(g @ W, gb, A, alpha=s)
            else:
                gx = torch.addcmul(g @ W, (gb @ A).mul_(s), noise)
        return gx, gA, gB, None, None, None, None


def _plain(layer: Any) -> bool:
    """A peft LoRA linear this module computes exactly: vanilla LoRA on a frozen linear or CPU 4-bit base."""
    from peft.tuners.lora import Linear

    base = layer.get_base_layer()
    if not isinstance(layer, Linear) and type(layer).__name__ != "Linear4bit":
        return False
    frozen = not any(p.requires_grad for p in base.parameters())
    if type(base) is torch.nn.Linear:
        kind_ok = True
    else:
        kind_ok = type(base).__name__ == "Linear4bit" and base.weight.device.type == "cpu"
    return (
        kind_ok
        and frozen
        and not getattr(layer, "fan_in_fan_out", False)
        and not any(getattr(layer, "lora_bias", {}).values())
        and not layer.lora_variant
        and not layer.lora_magnitude_vector  # DoRA
    )


def _fused_forward(layer: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """`layer.forward` while fused: peft's own forward for every call the fused math does not cover."""
    peft_forward = type(layer).forward
    if args or kwargs or layer.disable_adapters or layer.merged or len(layer.active_adapters) != 1:
        return peft_forward(layer, x, *args, **kwargs)
    name = layer.active_adapters[0]
    if name not in layer.lora_A or name in layer.lora_variant:
        return peft_forward(layer, x, *args, **kwargs)
    A, B = layer.lora_A[name].weight, layer.lora_B[name].weight
    base = layer.get_base_layer()
    drop = layer.lora_dropout[name]
    p = drop.p if isinstance(drop, torch.nn.Dropout) and drop.training else 0.0
    quantized = type(base) is not torch.nn.Linear
    dtype_ok = x.dtype == A.dtype == B.dtype and x.dtype.is_floating_point
    if quantized:  # x in bitsandbytes' compute dtype; uint8-packed weights with their state (FSDP's shards: peft)
        state = getattr(base.weight, "quant_state", None)
        dtype_ok = dtype_ok and base.compute_dtype == x.dtype and base.weight.dtype == torch.uint8
        dtype_ok = dtype_ok and state is not None and not getattr(state, "packing_format_for_cpu", False)
        dtype_ok = dtype_ok and x.device.type == "cpu"
    else:
        dtype_ok = dtype_ok and base.weight.dtype == x.dtype
    if not dtype_ok or torch.is_autocast_enabled(x.device.type) or (p > 0 and x.device.type != "cpu"):
        return peft_forward(layer, x, *args, **kwargs)
    bias = base.bias
    y = LoraLinear.apply(x.reshape(-1, x.shape[-1]), A, B, base, bias, layer.scaling[name], p)
    return y.view(*x.shape[:-1], y.shape[-1])


def enable(model: Any) -> int:
    """Give every plain peft LoRA linear of `model` the fused forward; returns how many."""
    n = 0
    for module in model.modules():
        if hasattr(module, "lora_A") and _plain(module):
            module.forward = _fused_forward.__get__(module)
            n += 1
    return n


def disable(model: Any) -> int:
    """Back to peft's forward everywhere; returns how many layers were fused."""
    n = 0
    for module in model.modules():
        if "forward" in vars(module) and getattr(module.forward, "__func__", None) is _fused_forward:
            del module.forward
            n += 1
    return n
