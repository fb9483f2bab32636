"""PPO math for RLHF: pure functions on [batch, response_len] tensors with a response mask.

Conventions: position t of a row is the t-th response token; `mask` is 1 on real response tokens
(the end-of-turn token included), 0 on padding. Log-probs and values at t belong to the state
that emitted token t. References: Ziegler et al. 2019 (KL-shaped reward, adaptive β), Schulman
et al. 2016 (GAE), 2017 (clipped objective); Huang et al. 2024, "The N Implementation Details of
RLHF with PPO" (score at the last token, whitening, value clipping).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

# Sums a tensor over all processes (torch.distributed.all_reduce); None = one process.
Reduce = Callable[[torch.Tensor], torch.Tensor] | None


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp_min(1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp_min(1)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    n = mask.sum()
    return var * n / (n - 1).clamp_min(1) if unbiased else var


def pooled_var(dev: float, dev_sq: float, n: float) -> float:
    """Unbiased variance of n values from the means of their deviations `dev` and squared deviations `dev_sq` from
    a shift near them (ratio − 1: no cancellation), pooled over micro-batches and processes; masked_var's on one."""
    return max(dev_sq - dev * dev, 0.0) * n / max(n - 1, 1)


def masked_moments(
    x: torch.Tensor, mask: torch.Tensor, reduce: Reduce = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean, biased variance, count) of the masked entries of x, over every process when `reduce` sums."""
    r = reduce or (lambda t: t)
    sums = r(torch.stack([(x * mask).sum(), mask.sum()]).double())
    n = sums[1]
    mean = sums[0] / n.clamp_min(1)
    sq = r(((x.double() - mean) ** 2 * mask).sum())
    return mean.to(x.dtype), (sq / n.clamp_min(1)).to(x.dtype), n


def whiten(
    x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8, reduce: Reduce = None
) -> torch.Tensor:
    """(x − mean) / std over masked entries only (of all processes with `reduce`); padding stays 0.

    shift_mean=False keeps the mean. std is the unbiased estimate, as in masked_var.
    """
    mean, var, n = masked_moments(x, mask, reduce)
    var = var * (n / (n - 1).clamp_min(1)).to(x.dtype)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask


def kl_per_token(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str = "k1") -> torch.Tensor:
    """Per-token KL estimate of π‖π_ref on sampled tokens: k1 = log π − log π_ref, k3 = r − 1 − log r."""
    log_ratio = logp - ref_logp
    if kind == "k1":
        return log_ratio
    if kind == "k3":
        return torch.expm1(-log_ratio) + log_ratio  # r = π_ref/π, so log r = −log_ratio
    raise ValueError(f"kl estimator {kind!r}: use k1 or k3")


def token_rewards(score: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, beta: float) -> torch.Tensor:
    """−β·KL on every response token, plus the sequence score once, at its last response token."""
    rewards = -beta * kl * mask
    last = (mask.sum(1).long() - 1).clamp_min(0)
    rows = torch.arange(len(score), device=score.device)
    rewards[rows, last] += score.to(rewards.dtype)
    return rewards


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation, right to left; returns (advantages, returns = A + V).

    The value after the last response token is 0 (the episode ends there); padding contributes nothing.
    """
    values = values * mask
    rewards = rewards * mask
    adv = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        next_v = values[:, t + 1] if t + 1 < rewards.shape[1] else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_v - values[:, t]
        last = delta + gamma * lam * last
        last = last * mask[:, t]  # padding after the end resets the running sum
        adv[:, t] = last
    return adv, adv + values


def policy_loss(
    logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor, eps_clip: float = 0.2
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate: mean over tokens of max(−A·ρ, −A·clip(ρ, 1±ε)), ρ = π/π_old."""
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    loss_unclipped = -adv * ratio
    loss_clipped = -adv * torch.clamp(ratio, 1 - eps_clip, 1 + eps_clip)
    loss = masked_mean(torch.maximum(loss_unclipped, loss_clipped), mask)
    with torch.no_grad():
        stats = {
            "approx_kl": masked_mean(torch.expm1(log_ratio) - log_ratio, mask),  # k3 of π_old‖π
            "clipfrac": masked_mean((loss_clipped > loss_unclipped).float(), mask),
            "ratio_mean": masked_mean(ratio, mask),
            "ratio_var": masked_var(ratio, mask),
            # token means of ρ − 1 and (ρ − 1)²: the variance over several micro-batches and processes (`pooled_var`)
            "ratio_dev": masked_mean(ratio - 1, mask),
            "ratio_dev_sq": masked_mean((ratio - 1) ** 2, mask),
        }
    return loss, stats


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    value_clip: float | None = 0.2,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """½·max((V − R)², (V_clip − R)²), V_clip = V_old + clip(V − V_old, ±ε_v); no clipping when None."""
    err = (values - returns) ** 2
    if value_clip is None:
        return 0.5 * masked_mean(err, mask), {"vf_clipfrac": torch.zeros(())}
    clipped = old_values + torch.clamp(values - old_values, -value_clip, value_clip)
    err_clipped = (clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(err, err_clipped), mask)
    return loss, {"vf_clipfrac": masked_mean((err_clipped > err).float(), mask).detach()}


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits) over the last dim."""
    logp = torch.log_softmax(logits.float(), -1)
    return -(logp.exp() * logp).sum(-1)


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, reduce: Reduce = None) -> float:
    """1 − Var(R − V)/Var(R) on response tokens: 1 = perfect critic, 0 = no better than a constant."""
    var_r = masked_moments(returns, mask, reduce)[1]
    var_e = masked_moments(returns - values, mask, reduce)[1]
    return float(1 - var_e / var_r) if var_r > 0 else float("nan")


@dataclass
class AdaptiveKL:
    """Ziegler et al.'s proportional controller: β ← β·(1 + clip(KL/target − 1, ±0.2)·n/horizon)."""

    beta: float
    target: float | None = None  # None = fixed β
    horizon: int = 10000

    def update(self, kl: float, n_steps: int) -> float:
        if self.target is not None:
            error = min(max(kl / self.target - 1, -0.2), 0.2)
            self.beta *= 1 + error * n_steps / self.horizon
        return self.beta
