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


def _chunk_nll(h: torch.Tensor, t: torch.Tensor, head: nn.Module, softcap: float | None) -> torch.Tensor:
    logits = head(h).float()
    if softcap:
        logits = softcap * torch.tanh(logits / softcap)
    return F.cross_entropy(logits, t, reduction="sum")


def _chunk_logp(h: torch.Tensor, t: torch.Tensor, head: nn.Module, softcap: float | None, temp: float) -> torch.Tensor:
    logits = head(h).float()
    if softcap:
        logits = softcap * torch.tanh(logits / softcap)
    if temp != 1.0:
        logits = logits / temp
    return torch.log_softmax(logits, dim=-1).gather(-1, t.unsqueeze(-1)).squeeze(-1)


def target_logps(
    hidden: torch.Tensor,
    targets: torch.Tensor,
    head: nn.Module,
    chunk_size: int = 4096,
    softcap: float | None = None,
    temperature: float = 1.0,
) -> torch.Tensor:
    """log p(target) for every position with a target, flattened row-major, chunked as in nll_sum."""
    sel = targets != IGNORE
    h, t = hidden[sel], targets[sel]
    if t.numel() <= chunk_size:
        return _chunk_logp(h, t, head, softcap, temperature)
    parts = [
        checkpoint(
            _chunk_logp, h[k : k + chunk_size], t[k : k + chunk_size], head, softcap, temperature, use_reentrant=False
        )
        for k in range(0, t.numel(), chunk_size)
    ]
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


class CausalLMLoss(nn.Module):
    """Wraps a causal LM (peft or plain) so forward returns (nll_sum, n_targets).

    One module owns the whole forward so DDP/FSDP wrappers see a single call.
    """

    def __init__(self, model: nn.Module, chunk_size: int = 4096):
        super().__init__()
        self.model = model
        self.chunk_size = chunk_size
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.softcap = getattr(base.config, "final_logit_softcapping", None)

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
        out = decoder(
            input_ids=input_ids,
            position_ids=position_ids,
            attention_mask=attention_mask,
            use_cache=False,
        )
        if per_token:
            return target_logps(out.last_hidden_state, targets, head, self.chunk_size, self.softcap)
        total, n = nll_sum(out.last_hidden_state, targets, head, self.chunk_size, self.softcap)
        return total, torch.tensor(n, device=total.device)
