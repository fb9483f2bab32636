"""Packed rows attended one conversation at a time: `sdpa` with causal kernels per segment.

For a packed row (position_ids restarting, no attention mask) transformers builds a dense
block-diagonal causal mask and sdpa computes every L×L block of it, including the blocks the mask
zeroes and the upper triangle. Here each conversation of a row goes to sdpa alone with
`is_causal=True` (the kernels then skip the upper triangle and nothing crosses conversations):
Σ lᵢ²/2 instead of L² score entries, and no mask or repeated GQA key/value heads in memory. The
same math as the masked path (tests: equal losses and gradients within float rounding).

`enable(model)` switches an sdpa model to the registered implementation `sdpa_packed`. Calls that
pass `packed_rows=True` (CausalLMLoss does when no attention mask is given) take the per-conversation
path, segments read from position_ids; every other call (padded batches, generation with a KV cache,
sliding windows, position biases) is plain transformers sdpa with the mask transformers builds for it.
Under torch.compile the per-conversation part runs eagerly (a graph break): its Python loop over
segments would otherwise recompile for every new packing.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

from weitiao.losses.sft import PACKED_SDPA as NAME
from weitiao.losses.sft import Segments, segment_lengths

_last: tuple[torch.Tensor, int, Segments] | None = None  # every layer of a forward gets the same position_ids


def segments(position_ids: torch.Tensor) -> Segments:
    """`segment_lengths` of position_ids, computed once per forward (one host sync, not one per layer)."""
    global _last
    if _last is None or _last[0] is not position_ids or _last[1] != position_ids._version:
        _last = (position_ids, position_ids._version, segment_lengths(position_ids))
    return _last[2]


@torch.compiler.disable
def packed_sdpa(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    packed_rows: bool = False,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers attention function: (B, H, L, D) query → (B, L, H, D) output, as sdpa_attention_forward."""
    q_len = query.shape[2]
    pos = kwargs.get("position_ids")
    segs = segments(pos) if packed_rows and pos is not None and pos.shape[-1] == q_len else None
    plain = (
        segs is None
        or key.shape[2] != q_len  # a KV cache
        or kwargs.get("position_bias") is not None
        or not (is_causal if is_causal is not None else getattr(module, "is_causal", True))
        or (kwargs.get("sliding_window") or q_len) < max(max(row) for row in segs)
    )
    if plain:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
    gqa = query.shape[1] != key.shape[1]
    rows = []
    for b, row in enumerate(segs):
        # split, not slices: its backward is one cat, where each slice's is a zero-filled full-size gradient
        # added up with the others. Each output goes back to (1, n, H, D), so one cat gives the row contiguous.
        qs, ks, vs = (t[b : b + 1].split(row, dim=2) for t in (query, key, value))
        parts = [
            F.scaled_dot_product_attention(
                q, k, v, dropout_p=dropout, is_causal=True, scale=scaling, enable_gqa=gqa
            ).transpose(1, 2)
            for q, k, v in zip(qs, ks, vs)
        ]
        rows.append(torch.cat(parts, dim=1))
    return (rows[0] if len(rows) == 1 else torch.cat(rows, dim=0)).contiguous(), None


AttentionInterface.register(NAME, packed_sdpa)
ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)  # the fallback calls get sdpa's masks


def enable(model: Any) -> bool:
    """Switch a model using sdpa to `sdpa_packed`; False (unchanged) for any other attention."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if base.config._attn_implementation != "sdpa":
        return False
    base.set_attn_implementation(NAME)
    return True


def active(model: Any) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.config._attn_implementation == NAME
