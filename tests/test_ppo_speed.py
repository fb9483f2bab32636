"""PPO step speed-ups give the same numbers: rollouts with the actor's LoRA merged (ppo.merge_rollout), no
entropy work in the scoring forwards, no backward through the entropy when it carries no bonus, π_old's
log-probs from the sampler (ppo.old_logprobs: rollout), and micro-batches packed into one row without padding."""

import pytest
import torch
from conftest import recipe_config, write_jsonl
from peft.tuners.lora import LoraLayer

from weitiao.data.templates import resolve_template
from weitiao.errors import UserError
from weitiao.infer.generate import Sampled, generate_ids
from weitiao.models import packed_attention
from weitiao.models.load import LoraSpec, ModelSpec, disable_dropout
from weitiao.models.roles import Roles
from weitiao.recipes import ppo
from weitiao.train.log import read_metrics

CPU = torch.device("cpu")
CONVS = [[{"role": "user", "content": f"今天天气怎么样？{'好' * i}"}] for i in range(6)]  # mixed prompt lengths


def trained_roles(tiny_model_dir) -> Roles:
    """Actor and critic adapters on the tiny Llama, with LoRA B ≠ 0 (a fresh adapter merges as a no-op)."""
    roles = Roles(ModelSpec(path=str(tiny_model_dir)), LoraSpec(dropout=0.0), CPU, critic_init="zeros")
    torch.manual_seed(3)
    with torch.no_grad():
        for name, q in roles.model.named_parameters():
            if "lora_B" in name:
                q.normal_(0, 0.05)
    return roles


def base_weights(roles: Roles) -> dict[str, torch.Tensor]:
    return {n: q.detach().clone() for n, q in roles.model.named_parameters() if "lora_" not in n}


def sample(roles, tokenizer, merge: bool, temperature: float, seed: int, logps: bool = False):
    template = resolve_template(tokenizer, "auto")
    with ppo.rollout_actor(roles, merge) as actor:
        merged = any(m.merged for m in actor.modules() if isinstance(m, LoraLayer))
        torch.manual_seed(seed)
        got = generate_ids(actor, tokenizer, template, CONVS, 16, temperature, top_p=1.0, top_k=0, batch_size=4,
                           model_defaults=False, logps=logps)  # fmt: skip
    if logps:
        return got
    return [(s.response_ids, s.stopped) for s in got], merged


def test_merged_rollout_samples_the_same_and_restores_the_base_bit_for_bit(tiny_model_dir, tokenizer):
    roles = trained_roles(tiny_model_dir)
    before = base_weights(roles)
    for temperature in (0.0, 1.0):
        plain, was_merged = sample(roles, tokenizer, False, temperature, seed=5)
        merged, is_merged = sample(roles, tokenizer, True, temperature, seed=5)
        assert merged == plain and is_merged and not was_merged
    after = base_weights(roles)
    assert all(torch.equal(before[n], after[n]) for n in before)  # exactly the weights we started with
    assert not any(m.merged for m in roles.model.modules() if isinstance(m, LoraLayer))
    # the merged model is the actor: its log-probs within 1e-5 of the adapter's
    b = ppo.build_rollout(_samples(tokenizer), tokenizer.pad_token_id, CPU)
    with torch.no_grad():
        want = ppo.token_logps(roles, "actor", b, 1.0)[0]
        with ppo.rollout_actor(roles, True) as actor:  # its plain forward: roles.use() would unmerge
            logits = actor(input_ids=b.ids, attention_mask=b.attn).logits
            assert all(m.merged for m in actor.modules() if isinstance(m, LoraLayer))
        got = ppo._gather(logits, b.pos).log_softmax(-1).gather(-1, b.resp[..., None])[..., 0] * b.mask
        base = ppo.token_logps(roles, "reference", b, 1.0)[0]  # the adapter-free base differs: the check has teeth
    assert torch.allclose(got, want, atol=1e-5) and not torch.allclose(base, want, atol=1e-3)


def _samples(tokenizer):
    from weitiao.infer.generate import Sampled

    p = tokenizer("今天天气怎么样？", add_special_tokens=False)["input_ids"]
    r = tokenizer("挺好的，大晴天", add_special_tokens=False)["input_ids"]
    return [Sampled(p, r, False), Sampled(p[:3], r[:2], False)]


def test_unmerging_by_subtraction_alone_drifts(tiny_model_dir):
    """Negative control of the restore in rollout_actor: peft's merge + unmerge does not give the base back."""
    roles = trained_roles(tiny_model_dir)
    before = base_weights(roles)
    model = roles.actor_module()
    model.merge_adapter(["default"])
    model.unmerge_adapter()
    after = base_weights(roles)
    assert not all(torch.equal(before[n], after[n]) for n in before)


def test_no_entropy_bonus_gives_the_same_gradients_without_its_backward(tiny_model_dir, tokenizer):
    """The update's loss is pg alone when entropy_loss_coef is 0: bit-identical gradients to pg − 0·H."""
    roles = trained_roles(tiny_model_dir)
    roles.train()
    b = ppo.build_rollout(_samples(tokenizer), tokenizer.pad_token_id, CPU)

    def grads(coef: float, skip: bool) -> list[torch.Tensor]:
        for q in roles.actor_params:
            q.grad = None
        logp, ent = ppo.token_logps(roles, "actor", b, 1.0)
        pg = (logp * b.mask).sum() / b.mask.sum()
        entropy = (ent * b.mask).sum() / b.mask.sum()
        (pg - (0.0 if skip else coef * entropy)).backward()
        return [q.grad.clone() for q in roles.actor_params]

    old, new = grads(0.0, False), grads(0.0, True)
    assert all(torch.equal(a, c) for a, c in zip(old, new))
    bonus = grads(0.01, False)  # negative control: with a bonus the entropy's gradient does count
    assert not all(torch.equal(a, c) for a, c in zip(old, bonus))


def _rule_ppo_metrics(model_dir, tmp_path, name: str, steps: int, *extra: str) -> list[dict]:
    """Train metrics of a short rule-reward PPO run on 12 prompts of mixed lengths (rollout batch 4)."""
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"今天天气怎么样？{'好' * (i % 5)}"} for i in range(12)])
    args = ("reward.kind=function", "reward.path=weitiao.recipes.rewards:short_emoji_reward", "train.resume=none")
    args += (f"train.max_steps={steps}", "ppo.rollout_batch_size=4", "ppo.generate_max_len=10")
    ppo.run(recipe_config("ppo", model_dir, prompts, tmp_path / name, *args, "ppo.actor_learning_rate=5e-3", *extra))
    return read_metrics(tmp_path / name, "train")


@pytest.mark.slow
def test_ppo_run_with_and_without_the_merged_rollout_gives_the_same_metrics(tiny_model_dir, tmp_path):
    def run(name: str, *extra: str) -> list[dict]:
        return _rule_ppo_metrics(tiny_model_dir, tmp_path, name, 3, *extra)

    keys = ("score", "kl", "policy_loss", "value_loss", "response_length", "entropy", "approx_kl")
    plain = run("plain", "ppo.merge_rollout=false")
    merged = run("merged", "ppo.merge_rollout=true")
    for a, c in zip(plain, merged, strict=True):
        assert [a[k] for k in keys] == pytest.approx([c[k] for k in keys], rel=1e-5, abs=1e-6)
    assert merged[-1]["kl"] != 0  # the actor moved, so steps 2–3 sampled from a changed (merged) adapter
    other = run("seed", "ppo.merge_rollout=true", "train.seed=7")  # negative control: it tells runs apart
    assert [other[-1][k] for k in keys] != pytest.approx([merged[-1][k] for k in keys], rel=1e-5, abs=1e-6)


def test_scoring_log_probs_without_the_entropy_are_bit_identical(tiny_model_dir, tokenizer):
    roles = trained_roles(tiny_model_dir)
    b = ppo.build_rollout(_samples(tokenizer), tokenizer.pad_token_id, CPU)
    with torch.no_grad():
        for role in ("actor", "reference"):
            (with_h, h), (alone, none) = (ppo.token_logps(roles, role, b, 0.7, entropy=e) for e in (True, False))
            assert torch.equal(with_h, alone) and none is None and h.shape == with_h.shape and h.abs().sum() > 0


def test_sampler_logps_are_the_recomputed_old_logps(tiny_model_dir, tokenizer):
    """ppo.old_logprobs: rollout: each drawn token's log-prob where the sampler drew it (KV-cached decode, merged
    or not, rows joining and leaving) is the separate no-grad pass's within 2e-5 (ratio 1 ± 2e-5, far inside ε)."""
    roles = trained_roles(tiny_model_dir)
    for merge, temperature in ((False, 1.0), (True, 1.0), (True, 0.7)):
        got = sample(roles, tokenizer, merge, temperature, seed=5, logps=True)
        plain, _ = sample(roles, tokenizer, merge, temperature, seed=5)  # keeping log-probs draws nothing extra
        assert [(s.response_ids, s.stopped) for s in got] == plain
        assert all(len(s.logps) == len(s.response_ids) for s in got) and len({len(s.prompt_ids) for s in got}) > 1
        b = ppo.build_rollout(got, tokenizer.pad_token_id, CPU)
        mine = torch.nn.utils.rnn.pad_sequence([torch.tensor(s.logps) for s in got], batch_first=True)
        with torch.no_grad():
            want = ppo.token_logps(roles, "actor", b, temperature, entropy=False)[0]
            other = ppo.token_logps(roles, "actor", b, 0.5, entropy=False)[0]
        assert mine.shape == want.shape and (mine * b.mask).abs().sum() > 0
        assert torch.allclose(mine * b.mask, want, atol=2e-5, rtol=0), float((mine * b.mask - want).abs().max())
        assert not torch.allclose(mine * b.mask, other, atol=1e-2)  # negative control: another temperature's differ
    greedy = sample(roles, tokenizer, False, 0.0, seed=5, logps=True)  # a point mass: log-prob 0
    assert all(lp == 0.0 for s in greedy for lp in s.logps)


def odd_rollout(tokenizer) -> ppo.Rollout:
    """Three samples of odd prompt and reply lengths (one reply of a single token), right-padded."""
    ids = list(range(20, 40))
    samples = [Sampled(ids[:5], ids[5:12], False), Sampled(ids[:9], ids[12:13], True)]
    samples.append(Sampled(ids[1:3], ids[3:7], False))
    return ppo.build_rollout(samples, tokenizer.pad_token_id, CPU, [1.0, 1.0, 0.0])


def test_packed_micro_batches_give_the_padded_logps_values_and_gradients(tiny_model_dir, tokenizer):
    """The update's and scoring's packed rows (sdpa per sample): the padded batch's numbers within float rounding;
    default LoRA (dropout 0.05, made p=0 by train.disable_dropout as PPO does)."""
    roles = Roles(ModelSpec(path=str(tiny_model_dir)), LoraSpec(), CPU, critic_init="zeros")
    disable_dropout(roles)
    with torch.no_grad():
        for name, q in roles.model.named_parameters():
            if "lora_B" in name:
                q.normal_(0, 0.05)
        roles.value_head.weight.normal_(0, 0.1)
    assert packed_attention.enable(roles.model)
    roll, idx = odd_rollout(tokenizer), [2, 0, 1]
    pad, packed = roll.select(idx), roll.select(idx, packed=True)
    lens = [len(r) for r in (roll.ids[i][roll.attn[i].bool()] for i in idx)]
    assert lens == [6, 12, 10] and pad.mask.sum(1).tolist() == [4, 7, 1]
    assert packed.ids.shape == (1, sum(lens)) < pad.ids.shape and packed.attn is None  # no padding left
    assert packed.position_ids[0].tolist() == [j for n in lens for j in range(n)]

    def numbers(b):
        roles.train()
        for q in [*roles.actor_params, *roles.critic_params]:
            q.grad = None
        logp, ent = ppo.token_logps(roles, "actor", b, 0.7)
        values = ppo.token_values(roles, b)
        ((logp * b.lmask).sum() + (values * b.lmask).sum()).backward()
        grads = [q.grad.clone() for q in [*roles.actor_params, *roles.critic_params] if q.grad is not None]
        roles.eval()
        return [logp.detach(), ent.detach(), values.detach()], grads

    (want, want_g), (got, got_g) = numbers(pad), numbers(packed)
    assert len(got_g) == len(want_g) > 0
    for a, c in zip(got, want):
        assert torch.allclose(a, c, atol=1e-5, rtol=0), float((a - c).abs().max())
    for a, c in zip(got_g, want_g):
        assert torch.allclose(a, c, atol=1e-6, rtol=1e-4), float((a - c).abs().max())
    # negative control: the same row with positions running on, so samples attend to each other, differs
    from dataclasses import replace

    leak = replace(packed, position_ids=torch.arange(sum(lens))[None])
    with torch.no_grad():
        assert not torch.allclose(ppo.token_logps(roles, "actor", leak, 0.7)[0], want[0], atol=1e-3)


@pytest.mark.slow
def test_ppo_run_with_rollout_old_logprobs_gives_the_same_metrics(tiny_model_dir, tmp_path):
    def run(name: str, *extra: str) -> list[dict]:
        return _rule_ppo_metrics(tiny_model_dir, tmp_path, name, 2, *extra)

    keys = ("score", "kl", "policy_loss", "value_loss", "response_length", "entropy", "approx_kl", "ratio_mean")
    # Not the default penalty 1: the tiny model's replies (10 tokens, no EOS) would all score exactly 0, so step 1's
    # advantages are all 0 and whitening blows the sampler's ~1e-7 rounding in KL up to unit size.
    again = run("recompute", "ppo.old_logprobs=recompute", "ppo.missing_eos_penalty=0.3")
    mine = run("rollout", "ppo.old_logprobs=rollout", "ppo.missing_eos_penalty=0.3")
    for a, c in zip(again, mine, strict=True):
        assert [a[k] for k in keys] == pytest.approx([c[k] for k in keys], rel=1e-5, abs=1e-6)
        assert abs(c["first_ratio_mean"] - 1) < 1e-5  # π = π_old in the first minibatch, up to rounding
    assert mine[-1]["kl"] != 0
    # negative control: it tells runs apart
    other = run("seed", "ppo.old_logprobs=rollout", "ppo.missing_eos_penalty=0.3", "train.seed=7")
    assert [other[-1][k] for k in keys] != pytest.approx([mine[-1][k] for k in keys], rel=1e-5, abs=1e-6)


def test_rollout_old_logprobs_refused_for_a_16_bit_model(tiny_model_dir, tmp_path):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "今天天气怎么样？"}])
    args = ("reward.kind=function", "reward.path=weitiao.recipes.rewards:short_emoji_reward", "model.dtype=bf16")
    cfg = recipe_config("ppo", tiny_model_dir, prompts, tmp_path / "run", *args, "ppo.old_logprobs=rollout")
    with pytest.raises(UserError, match=r"ppo.old_logprobs: rollout needs a float32 model.*bfloat16"):
        ppo.run(cfg)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
