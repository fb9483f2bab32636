"""Packed rows and attention implementations: which need one row, and a start-up isolation probe.

transformers 5.24 (`masking_utils._preprocess_mask_arguments`) turns position_ids that restart
into a block-diagonal causal mask for sdpa, eager and flex_attention at any batch size, but only
when attention_mask is None and no KV cache is passed. flash_attention_2/3 read position_ids as
varlen boundaries only for a batch of one row (`modeling_flash_attention_utils._is_packed_sequence`);
with more rows they attend causally across the whole row, so packed documents see each other.
Packed micro-batches therefore go to those kernels as one row (`collate(..., one_row=True)`), and
`check_isolation` runs the model once on a packed probe to confirm documents stay apart.
"""

from __future__ import annotations

from typing import Any

import torch

from weitiao.data.chat import Encoded
from weitiao.data.collate import collate
from weitiao.errors import UserError
from weitiao.losses.sft import PACKED_SDPA

# Implementations whose mask transformers builds from restarting position_ids at any batch size (sdpa_packed:
# `models.packed_attention`, per conversation when called with packed_rows, else sdpa's mask).
MASKED_ROWS = {"sdpa", "eager", "flex_attention", PACKED_SDPA}


def implementation(model: Any) -> str:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return str(base.config._attn_implementation)


def needs_one_row(model: Any) -> bool:
    """Whether packed micro-batches must be joined into one row for this model's attention."""
    return implementation(model) not in MASKED_ROWS


def refuse_untrainable(model: Any, device: torch.device) -> None:
    """flex_attention has no backward on CPU in torch 2.13 (NotImplementedError deep in training)."""
    if implementation(model) == "flex_attention" and device.type == "cpu":
        raise UserError("model.attn: flex_attention cannot train on CPU (torch has no CPU backward); use sdpa")


def _decoder(model: Any) -> Any:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(base, base.base_model_prefix)


@torch.no_grad()
def probe_error(model: Any, device: torch.device, one_row: bool, seed: int = 0) -> float:
    """Max relative difference of doc B's hidden states packed as [A, B] beside a row [C] vs B alone."""
    g = torch.Generator().manual_seed(seed)
    emb = _decoder(model).get_input_embeddings()
    emb = emb.get_base_layer() if hasattr(emb, "get_base_layer") else emb  # LoRA on embed_tokens wraps it
    vocab = emb.weight.shape[0]
    docs = [torch.randint(0, vocab, (n,), generator=g).tolist() for n in (7, 5, 12)]
    exs = [Encoded(d, list(d)) for d in docs]
    was_training = model.training
    model.eval()  # no dropout: only attention may differ
    try:
        packed = collate(exs, [[0, 1], [2]], 0, packing=True, one_row=one_row).to(device)
        alone = collate(exs, [[1]], 0, packing=True).to(device)
        run = _decoder(model)
        kw = {"packed_rows": True} if implementation(model) == PACKED_SDPA else {}
        h = run(input_ids=packed.input_ids, position_ids=packed.position_ids, use_cache=False, **kw).last_hidden_state
        h_b = h.reshape(-1, h.shape[-1])[(packed.seq_index.reshape(-1) == 1)]
        want = run(input_ids=alone.input_ids, position_ids=alone.position_ids, use_cache=False).last_hidden_state[0]
    finally:
        model.train(was_training)
    return float((h_b.float() - want.float()).abs().max() / want.float().abs().max().clamp_min(1e-6))


def check_isolation(model: Any, device: torch.device, one_row: bool) -> float:
    """Refuse (one line) an attention implementation under which packed documents see each other."""
    impl = implementation(model)
    dtype = next(model.parameters()).dtype
    tol = 1e-3 if dtype == torch.float32 else 3e-2  # half precision: rounding, not leakage
    try:
        err = probe_error(model, device, one_row)
    except (RuntimeError, NotImplementedError, ValueError) as e:  # a kernel that cannot run the probe
        hint = "data.packing: false" if impl in (PACKED_SDPA, "sdpa") else "model.attn: sdpa"
        raise UserError(f"model.attn: {impl}: cannot verify packed-sequence isolation ({e}); use {hint}") from None
    if not err <= tol:
        raise UserError(
            f"model.attn: {impl}: packed documents attend to each other (probe differs by {err:.2g} > {tol:g}); "
            "use model.attn: sdpa or data.packing: false"
        )
    return err
