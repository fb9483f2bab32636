"""PPO step speed-ups give the same numbers: rollouts with the actor's LoRA merged (ppo.merge_rollout), no
entropy work in the scoring forwards, and no backward through the entropy when it carries no bonus."""

import pytest
import torch
from conftest import recipe_config, write_jsonl
from peft.tuners.lora import LoraLayer

from weitiao.data.templates import resolve_template
from weitiao.infer.generate import generate_ids
from weitiao.models.load import LoraSpec, ModelSpec
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


def sample(roles, tokenizer, merge: bool, temperature: float, seed: int):
    template = resolve_template(tokenizer, "auto")
    with ppo.rollout_actor(roles, merge) as actor:
        merged = any(m.merged for m in actor.modules() if isinstance(m, LoraLayer))
        torch.manual_seed(seed)
        got = generate_ids(actor, tokenizer, template, CONVS, 16, temperature, top_p=1.0, top_k=0, batch_size=4,
                           model_defaults=False)  # fmt: skip
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


@pytest.mark.slow
def test_ppo_run_with_and_without_the_merged_rollout_gives_the_same_metrics(tiny_model_dir, tmp_path):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"今天天气怎么样？{'好' * (i % 5)}"} for i in range(12)])
    rule = "weitiao.recipes.rewards:short_emoji_reward"

    def run(name: str, *extra: str) -> list[dict]:
        args = ("reward.kind=function", f"reward.path={rule}", "train.resume=none", "train.max_steps=3")
        args += ("ppo.rollout_batch_size=4", "ppo.generate_max_len=10", "ppo.actor_learning_rate=5e-3", *extra)
        ppo.run(recipe_config("ppo", tiny_model_dir, prompts, tmp_path / name, *args))
        return read_metrics(tmp_path / name, "train")

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
