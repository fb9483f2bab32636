"""The reference policy of DPO and KTO: sequence log-probs, and π_ref as the adapter disabled, a frozen model or
(DPO) log-probs cached once.

`reference_model` picks it as both recipes do: `reference` set or full fine-tuning → a frozen copy of that model;
LoRA continuing an adapter (`lora.init_from`) → the base with that adapter, frozen; plain LoRA → None (the policy
with its adapter disabled is π_ref, no second copy of the weights).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from weitiao.data.chat import IGNORE, Encoded
from weitiao.data.collate import Batch, collate
from weitiao.data.preference import pair_rows
from weitiao.errors import UserError
from weitiao.losses.sft import CausalLMLoss
from weitiao.models.load import (
    LoraSpec,
    ModelSpec,
    has_tokenizer,
    load_lora,
    load_model,
    load_tokenizer,
    resolve_path,
)


def sequence_logps(loss_mod: Any, b: Batch, n_seqs: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-target log-probs (row-major), their sum per sequence, and target count per sequence."""
    tok = loss_mod(b.input_ids, b.targets, b.position_ids, b.attention_mask, per_token=True)
    seq = b.seq_index[b.targets != IGNORE]
    sums = torch.zeros(n_seqs, device=tok.device, dtype=tok.dtype).index_add(0, seq, tok)
    counts = torch.zeros(n_seqs, device=tok.device, dtype=tok.dtype).index_add(0, seq, torch.ones_like(tok))
    return tok, sums, counts


class Reference:
    """Reference log-probs: adapter disabled, a frozen model, or (DPO) a precomputed per-example cache."""

    def __init__(self, loss_mod: Any, policy: Any, ref_model: Any = None):
        self.loss_mod, self.policy = loss_mod, policy
        self.ref_loss = CausalLMLoss(ref_model) if ref_model is not None else None
        self.cache: dict[int, torch.Tensor] | None = None

    @torch.no_grad()
    def token_logps(self, b: Batch, order: list[int]) -> torch.Tensor:
        if self.cache is not None:
            return torch.cat([self.cache[i] for i in order]).to(b.input_ids.device)
        if self.ref_loss is not None:
            return self.ref_loss(b.input_ids, b.targets, b.position_ids, b.attention_mask, per_token=True)
        with self.policy.disable_adapter():
            return self.loss_mod(b.input_ids, b.targets, b.position_ids, b.attention_mask, per_token=True)

    @torch.no_grad()
    def sequence_sums(self, b: Batch, order: list[int], like: torch.Tensor) -> torch.Tensor:
        """`token_logps` summed per sequence, as `like` (the policy's per-sequence sums) in shape and dtype."""
        seq = b.seq_index[b.targets != IGNORE]
        return torch.zeros_like(like).index_add(0, seq, self.token_logps(b, order).to(like.dtype))

    def precompute(
        self,
        examples: list[Encoded],
        cfg: Any,
        key: dict,
        pad_id: int,
        one_row: bool,
        accel: Any,
        path: Path,
        fresh: bool = False,
    ) -> None:
        """Reference log-probs of every example, cached in `path` under `key`; a cache with another key is
        rebuilt. Every process computes all of them (the forwards stay in step under DDP/FSDP) and keeps its own;
        process 0 writes the file atomically. No process reads another's file: on several nodes without shared
        storage process 1 read a missing file (a traceback) or its node's own stale copy of an earlier run's
        (silently other log-probs). A file is reused on resume only when every process found it with this
        key, else all compute (one that reused it would skip the forwards the others run: a hang). `fresh` (a
        new run): no process reads a file already there, which process 0 may be removing at that moment."""
        saved = torch.load(path, weights_only=False) if path.exists() and not fresh else None
        mine = saved is not None and saved.get("key") == key
        # Every process has read the old file before process 0 may replace it, and all agree whether to reuse it.
        missing = accel.reduce(torch.tensor([0.0 if mine else 1.0], device=accel.device), reduction="sum")
        if not float(missing.sum()):
            self.cache = saved["logps"]
            return
        if saved is not None and not mine and accel.is_main_process:
            old = saved.get("key") if isinstance(saved.get("key"), dict) else {}
            changed = [k for k in key if old.get(k) != key[k]] or ["format"]
            print(f"{path}: cached reference log-probs are for another {', '.join(changed)}; rebuilding")
        self.cache = None  # computed from the live reference, never from an earlier cache
        rows = [[i] for i in range(len(examples) // 2)]
        cache: dict[int, torch.Tensor] = {}
        for k in range(0, len(rows), cfg.train.micro_batch_size):
            rr = pair_rows(rows[k : k + cfg.train.micro_batch_size], cfg.data.packing)
            b = collate(examples, rr, pad_id, cfg.data.packing, one_row).to(accel.device)
            order = [i for row in rr for i in row]
            tok = self.token_logps(b, order)
            seq = b.seq_index[b.targets != IGNORE]
            for j, i in enumerate(order):
                cache[i] = tok[seq == j].float().cpu()
        if accel.is_main_process:
            tmp = path.with_name(f".{path.name}.tmp")
            torch.save({"key": key, "logps": cache}, tmp)
            os.replace(tmp, path)
        self.cache = cache


def check_reference_tokenizer(key: str, reference: str | None, tokenizer: Any) -> None:
    """Refuse a `reference` (dpo.reference, kto.reference) whose tokenizer reads the policy's token ids as other
    tokens or lacks some: it scores the policy's ids, so its log-probs would be of other text (a model of another
    family gave an IndexError traceback mid-step, or, with a vocabulary as large, trained on without a word). Extra
    tokens after the policy's are fine; a folder without tokenizer files is taken as it is."""
    if not reference:
        return
    folder = Path(resolve_path(reference)).expanduser()
    if folder.is_dir() and not has_tokenizer(folder):
        return
    ours, theirs = tokenizer.get_vocab(), load_tokenizer(reference).get_vocab()
    if other := sum(theirs.get(token) != i for token, i in ours.items()):
        raise UserError(
            f"{key} {reference}: its tokenizer lacks or numbers otherwise {other} of the {len(ours)} tokens of "
            "model.path's, and the reference scores the policy's token ids; give a reference with model.path's "
            "tokenizer (the base, or a model tuned from it)"
        )


def reference_model(model: ModelSpec, lora: LoraSpec, reference: str | None, device: Any) -> Any:
    """The frozen reference model to load beside the policy, or None when the adapter-disabled policy is it."""
    if reference or not lora.enabled:
        ref = load_model(model.model_copy(update={"path": reference or model.path}), device)
    elif lora.init_from:  # continuing an SFT adapter: the reference is that SFT model, not the bare base
        ref = load_lora(load_model(model, device), lora.init_from)
    else:
        return None
    return ref.eval().requires_grad_(False)
