"""Next-token loss computed only where there is a target.

The LM head runs on the selected hidden states only (prompt tokens masked out never reach the
vocabulary projection), in chunks, each chunk recomputed in backward instead of storing its
logits: peak memory is O(chunk × vocab) rather than O(batch × length × vocab).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from weitiao.data.chat import IGNORE

# models.packed_attention registers this attention implementation: packed rows (packed_rows=True passed) then
# get sdpa per conversation instead of one block-diagonal mask.
PACKED_SDPA = "sdpa_packed"
Segments = list[list[int]]  # per row: lengths of its runs of consecutive positions, summing to the row width


def _chunk_nll(h: torch.Tensor, t: torch.Tensor, head: nn.Module, softcap: float | None) -> torch.Tensor:
    return F.cross_entropy(_logits(h, head, softcap, 1.0), t, reduction="sum")


def _logits(h: torch.Tensor, head: nn.Module, softcap: float | None, temp: float) -> torch.Tensor:
    """The sampling distribution's logits: fp32, Gemma-2 soft-capping (cap·tanh(x/cap)), then / temperature."""
    logits = head(h).float()
    if softcap:
        logits = softcap * torch.tanh(logits / softcap)
    if temp != 1.0:
        logits = logits / temp
    return logits


def _chunk_logp(h: torch.Tensor, t: torch.Tensor, head: nn.Module, softcap: float | None, temp: float) -> torch.Tensor:
    return torch.log_softmax(_logits(h, head, softcap, temp), dim=-1).gather(-1, t.unsqueeze(-1)).squeeze(-1)


def _chunk_logp_entropy(
    h: torch.Tensor, t: torch.Tensor, head: nn.Module, softcap: float | None, temp: float
) -> tuple[torch.Tensor, torch.Tensor]:
    logp_all = torch.log_softmax(_logits(h, head, softcap, temp), dim=-1)
    return logp_all.gather(-1, t.unsqueeze(-1)).squeeze(-1), -(logp_all.exp() * logp_all).sum(-1)


def target_logps(
    hidden: torch.Tensor,
    targets: torch.Tensor,
    head: nn.Module,
    chunk_size: int = 4096,
    softcap: float | None = None,
    temperature: float = 1.0,
    entropy: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """log p(target) for every position with a target, flattened row-major, chunked as in nll_sum.

    p = softmax(softcap(logits) / temperature): the distribution generation samples from. SFT, DPO
    and PPO all take their per-token log-probs from here. With entropy=True also returns the
    entropy of p at each of those positions.
    """
    sel = targets != IGNORE
    h, t = hidden[sel], targets[sel]
    fn = _chunk_logp_entropy if entropy else _chunk_logp
    if t.numel() <= chunk_size:
        return fn(h, t, head, softcap, temperature)
    parts = [
        checkpoint(fn, h[k : k + chunk_size], t[k : k + chunk_size], head, softcap, temperature, use_reentrant=False)
        for k in range(0, t.numel(), chunk_size)
    ]
    if entropy:
        return torch.cat([a for a, _ in parts]), torch.cat([b for _, b in parts])
    return torch.cat(parts)


def nll_sum(
    hidden: torch.Tensor,
    targets: torch.Tensor,
    head: nn.Module,
    chunk_size: int = 4096,
    softcap: float | None = None,
) -> tuple[torch.Tensor, int]:
    """Sum of −log p(target) over positions with a target, and their count."""
    sel = targets != IGNORE
    h, t = hidden[sel], targets[sel]
    n = int(t.numel())
    if n == 0:
        return hidden.sum() * 0.0, 0
    if n <= chunk_size:
        return _chunk_nll(h, t, head, softcap), n
    total = hidden.new_zeros((), dtype=torch.float32)
    for k in range(0, n, chunk_size):
        total = total + checkpoint(
            _chunk_nll, h[k : k + chunk_size], t[k : k + chunk_size], head, softcap, use_reentrant=False
        )
    return total, n


def logit_softcap(model: nn.Module) -> float | None:
    """`final_logit_softcapping` of a (peft-wrapped) causal LM's config, None when unset (Gemma-2 sets it)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(base.config, "final_logit_softcapping", None)


def segment_lengths(position_ids: torch.Tensor) -> Segments:
    """Per row, the lengths of the runs of consecutive positions (one host sync): a run starts where
    transformers' packed-sequence mask starts a block (`masking_utils.find_packed_sequence_indices`)."""
    pos = position_ids.detach().cpu()
    new = torch.ones_like(pos, dtype=torch.bool)
    new[:, 1:] = pos[:, 1:] != pos[:, :-1] + 1
    out = []
    for row in new:
        starts = row.nonzero().flatten().tolist() + [pos.shape[1]]
        out.append([b - a for a, b in zip(starts, starts[1:])])
    return out


class CausalLMLoss(nn.Module):
    """Wraps a causal LM (peft or plain) so forward returns (nll_sum, n_targets).

    One module owns the whole forward so DDP/FSDP wrappers see a single call.
    """

    def __init__(self, model: nn.Module, chunk_size: int = 4096):
        super().__init__()
        self.model = model
        self.chunk_size = chunk_size
        self.softcap = logit_softcap(model)

    def _parts(self) -> tuple[nn.Module, nn.Module]:
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        return base.get_decoder(), base.get_output_embeddings()

    def forward(
        self,
        input_ids: torch.Tensor,
        targets: torch.Tensor,
        position_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        per_token: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor] | torch.Tensor:
        """(nll_sum, n_targets), or with per_token=True the log-prob of each target (row-major)."""
        decoder, head = self._parts()
        packed = attention_mask is None and decoder.config._attn_implementation == PACKED_SDPA
        out = decoder(
            input_ids=input_ids,
            position_ids=position_ids,
            attention_mask=attention_mask,
            use_cache=False,
            **({"packed_rows": True} if packed else {}),
        )
        if per_token:
            return target_logps(out.last_hidden_state, targets, head, self.chunk_size, self.softcap)
        total, n = nll_sum(out.last_hidden_state, targets, head, self.chunk_size, self.softcap)
        return total, torch.tensor(n, device=total.device)
