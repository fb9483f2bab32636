"""Preference losses: pure functions from sequence log-probs (or rewards) to per-pair losses.

Each DPO variant is its own function of the log-ratio difference
    h = (log π(y_c|x) − log π_ref(y_c|x)) − (log π(y_r|x) − log π_ref(y_r|x)).
Papers: DPO (Rafailov et al. 2023, eq. 7); conservative DPO / label smoothing (Mitchell 2023);
IPO (Azar et al. 2023, eq. 17, on length-averaged log-probs as in its reference code); hinge
(SLiC, Zhao et al. 2023); RPO adds an NLL term on the chosen reply (Pang et al. 2024).
KTO (Ethayarajh et al. 2024, eq. 7, as TRL's KTOTrainer loss_type "kto") scores single replies against a
reference point z0, an estimate of KL(π‖π_ref) (`kto_terms`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

DPOLoss = Callable[[torch.Tensor, float, float], torch.Tensor]


def dpo_sigmoid(h: torch.Tensor, beta: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """−(1−ε)·log σ(β·h) − ε·log σ(−β·h); ε=0 is plain DPO."""
    return -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)


def dpo_ipo(h: torch.Tensor, beta: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """(h − 1/(2β))²; h must come from length-averaged log-probs."""
    return (h - 1 / (2 * beta)) ** 2


def dpo_hinge(h: torch.Tensor, beta: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """max(0, 1 − β·h)."""
    return torch.relu(1 - beta * h)


DPO_LOSSES: dict[str, DPOLoss] = {"sigmoid": dpo_sigmoid, "ipo": dpo_ipo, "hinge": dpo_hinge}
LENGTH_AVERAGED = {"ipo"}


def dpo_terms(
    pol_c: torch.Tensor,
    pol_r: torch.Tensor,
    ref_c: torch.Tensor,
    ref_r: torch.Tensor,
    beta: float,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-pair loss and the implicit rewards β·(log π − log π_ref) for chosen and rejected."""
    h = (pol_c - ref_c) - (pol_r - ref_r)
    loss = DPO_LOSSES[loss_type](h, beta, label_smoothing)
    rc, rr = beta * (pol_c - ref_c).detach(), beta * (pol_r - ref_r).detach()
    return loss, {"rewards/chosen": rc, "rewards/rejected": rr, "margins": rc - rr, "accuracy": (rc > rr).float()}


def kto_terms(
    logps: torch.Tensor,
    ref_logps: torch.Tensor,
    desirable: torch.Tensor,
    kl: torch.Tensor,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-reply KTO loss and reward β·r, r = log π − log π_ref (sequence sums): λ_D·(1 − σ(β(r − z0))) for a
    desirable reply, λ_U·(1 − σ(β(z0 − r))) for an undesirable one; z0 = `kl` detached and clamped at 0."""
    r = logps - ref_logps
    z0 = kl.detach().clamp_min(0)
    z = torch.where(desirable, r - z0, z0 - r)
    weight = torch.where(desirable, desirable_weight, undesirable_weight).to(r.dtype)
    return weight * (1 - torch.sigmoid(beta * z)), beta * r.detach()


def bradley_terry(r_chosen: torch.Tensor, r_rejected: torch.Tensor, margin: torch.Tensor | float = 0.0) -> torch.Tensor:
    """Reward-model loss −log σ(r_c − r_r − m) per pair (Llama-2 style optional margin m)."""
    return -F.logsigmoid(r_chosen - r_rejected - margin)


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(π‖π_ref): exp(r) − 1 − r with r = log π_ref − log π (≥ 0)."""
    r = ref_logp - logp
    return torch.expm1(r) - r
