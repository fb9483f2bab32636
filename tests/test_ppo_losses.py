"""PPO pieces against hand-computed values: GAE, whitening, KL placement, clipped losses, adaptive β."""

import math

import pytest
import torch

from weitiao.losses.ppo import (
    AdaptiveKL,
    entropy_from_logits,
    explained_variance,
    gae,
    kl_per_token,
    policy_loss,
    token_rewards,
    value_loss,
    whiten,
)


def test_gae_matches_hand_computation():
    r = torch.tensor([[0.0, 0.0, 1.0]])
    v = torch.tensor([[0.5, 0.4, 0.3]])
    m = torch.ones(1, 3)
    g, lam = 0.9, 0.8
    d2 = 1.0 - 0.3  # last step: no bootstrap
    d1 = 0.0 + g * 0.3 - 0.4
    d0 = 0.0 + g * 0.4 - 0.5
    a2 = d2
    a1 = d1 + g * lam * a2
    a0 = d0 + g * lam * a1
    adv, ret = gae(r, v, m, gamma=g, lam=lam)
    assert torch.allclose(adv, torch.tensor([[a0, a1, a2]]))
    assert torch.allclose(ret, adv + v)


def test_gae_padding_is_independent_of_pad_values():
    r = torch.tensor([[0.1, 1.0, 7.0, 9.0]])
    v = torch.tensor([[0.2, 0.3, 5.0, -3.0]])
    m = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    adv, ret = gae(r, v, m, 1.0, 0.95)
    short_adv, short_ret = gae(r[:, :2], v[:, :2], m[:, :2], 1.0, 0.95)
    assert torch.allclose(adv[:, :2], short_adv) and torch.allclose(ret[:, :2], short_ret)
    assert adv[0, 2:].abs().sum() == 0 and ret[0, 2:].abs().sum() == 0
    # γ = λ = 1: the advantage is the sum of future rewards minus the value.
    mc_adv, _ = gae(r, v, m, 1.0, 1.0)
    assert torch.allclose(mc_adv[:, :2], torch.tensor([[1.1 - 0.2, 1.0 - 0.3]]))


def test_whiten_uses_masked_entries_only():
    x = torch.tensor([[1.0, 2.0, 100.0], [3.0, 4.0, -50.0]])
    m = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    w = whiten(x, m)
    vals = torch.tensor([1.0, 2.0, 3.0, 4.0])
    expect = (vals - vals.mean()) / vals.std(unbiased=True)
    assert torch.allclose(w[:, :2].reshape(-1), expect, atol=1e-5)
    assert (w[:, 2] == 0).all()
    kept = whiten(x, m, shift_mean=False)
    assert torch.allclose(kept[:, :2].reshape(-1), expect + 2.5, atol=1e-5)


def test_score_once_at_last_token_and_kl_everywhere():
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.5, 9.0, 9.0]])
    rew = token_rewards(torch.tensor([2.0, -1.0]), kl, mask, beta=0.5)
    assert torch.allclose(rew, torch.tensor([[-0.05, -0.1, -0.15 + 2.0], [-0.25 - 1.0, 0.0, 0.0]]))


def test_kl_estimators():
    logp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.0])
    assert torch.allclose(kl_per_token(logp, ref, "k1"), torch.tensor([0.5, -1.0]))
    r = torch.exp(ref - logp)
    assert torch.allclose(kl_per_token(logp, ref, "k3"), r - 1 - torch.log(r))
    assert (kl_per_token(logp, ref, "k3") >= 0).all()
    with pytest.raises(ValueError):
        kl_per_token(logp, ref, "k2x")


def test_policy_loss_at_and_beyond_the_clip_edges():
    m = torch.ones(1, 4)
    old = torch.zeros(1, 4)
    # ratios 1.1 (inside), 1.3 (beyond +ε), 0.7 (beyond −ε), 0.9 with a negative advantage
    new = torch.log(torch.tensor([[1.1, 1.3, 0.7, 0.9]]))
    adv = torch.tensor([[1.0, 1.0, 1.0, -1.0]])
    loss, st = policy_loss(new.requires_grad_(), old, adv, m, eps_clip=0.2)
    # token losses: −1.1; −min(1.3, 1.2) = −1.2 (clipped); −0.7 (unclipped side is the max); 0.9
    assert math.isclose(loss.item(), (-1.1 - 1.2 - 0.7 + 0.9) / 4, rel_tol=1e-6)
    assert math.isclose(st["clipfrac"].item(), 0.25)
    loss.backward()
    assert new.grad[0, 1] == 0 and new.grad[0, 0] != 0  # clipped token gets no gradient


def test_policy_loss_first_step_is_identity():
    logp = torch.randn(3, 5)
    loss, st = policy_loss(logp, logp.clone(), torch.randn(3, 5), torch.ones(3, 5))
    assert st["ratio_mean"] == 1 and st["approx_kl"] == 0 and st["clipfrac"] == 0


def test_value_loss_clipping():
    m = torch.ones(1, 2)
    old = torch.tensor([[0.0, 0.0]])
    ret = torch.tensor([[1.0, 1.0]])
    v = torch.tensor([[0.5, 2.0]])
    loss, st = value_loss(v, old, ret, m, value_clip=0.2)
    # token 1: V=0.5 → (0.5−1)²=0.25, clipped V=0.2 → 0.64 → 0.64; token 2: V=2 → 1, clipped 0.2 → 0.64 → 1
    assert math.isclose(loss.item(), 0.5 * (0.64 + 1.0) / 2, rel_tol=1e-6)
    assert math.isclose(st["vf_clipfrac"].item(), 0.5)
    plain, _ = value_loss(v, old, ret, m, value_clip=None)
    assert math.isclose(plain.item(), 0.5 * (0.25 + 1.0) / 2, rel_tol=1e-6)


def test_adaptive_kl_controller():
    c = AdaptiveKL(beta=0.1, target=6.0, horizon=10000)
    assert math.isclose(c.update(12.0, 256), 0.1 * (1 + 0.2 * 256 / 10000))  # error clipped at +0.2
    c2 = AdaptiveKL(beta=0.1, target=6.0, horizon=10000)
    assert math.isclose(c2.update(5.4, 100), 0.1 * (1 - 0.1 * 100 / 10000))
    fixed = AdaptiveKL(beta=0.1)
    assert fixed.update(100.0, 1000) == 0.1


def test_entropy_and_explained_variance():
    assert torch.allclose(entropy_from_logits(torch.zeros(4)), torch.tensor(math.log(4)))
    m = torch.ones(1, 4)
    ret = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    assert explained_variance(ret, ret, m) == 1.0
    assert abs(explained_variance(torch.full_like(ret, 2.5), ret, m)) < 1e-6
