"""ppo.critic: shared (#24): a value head on the actor's last hidden states, one forward + backward of
policy + vf_coef · value loss, one optimizer. The joint gradient, the values GAE uses, save/resume, refusals,
full fine-tuning, two processes, a pinned run; and PPO's run summary names (train_* run means, last_train_*)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import free_port, recipe_config, write_jsonl
from safetensors.torch import load_file

from weitiao.config import load_config
from weitiao.errors import UserError
from weitiao.infer.generate import Sampled
from weitiao.losses import ppo as ppo_losses
from weitiao.models.load import LoraSpec, ModelSpec
from weitiao.models.roles import Roles
from weitiao.recipes import ppo
from weitiao.train.log import read_metrics

RULE = "weitiao.recipes.rewards:short_emoji_reward"
CPU = torch.device("cpu")


def config(model_dir, prompts, out, *extra):
    """Default LoRA (r 16, dropout 0.05: p=0 under train.disable_dropout, as PPO runs), shared critic."""
    return recipe_config("ppo", model_dir, prompts, out, "reward.kind=function", f"reward.path={RULE}",
                         "train.resume=none", "ppo.critic=shared", "ppo.rollout_batch_size=8",
                         "ppo.generate_max_len=12", *extra)  # fmt: skip


@pytest.fixture
def prompts(tmp_path):
    return write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"今天天气怎么样？{i}"} for i in range(16)])


def shared_roles(tiny_model_dir) -> Roles:
    """The shared critic on the tiny Llama with default LoRA (dropout 0.05), LoRA B and the value head ≠ 0."""
    roles = Roles(ModelSpec(path=str(tiny_model_dir)), LoraSpec(), CPU, shared_critic=True)
    torch.manual_seed(3)
    with torch.no_grad():
        for name, q in roles.model.named_parameters():
            if "lora_B" in name:
                q.normal_(0, 0.05)
        roles.value_head.weight.normal_(0, 0.1)
    return roles


def fixed_rollout(tokenizer) -> ppo.Rollout:
    a = tokenizer("今天天气怎么样？", add_special_tokens=False)["input_ids"]
    b = tokenizer("推荐一部电影吧", add_special_tokens=False)["input_ids"]
    r = tokenizer("挺好的，大晴天", add_special_tokens=False)["input_ids"]
    return ppo.build_rollout([Sampled(a, r, False), Sampled(b, r[:3], False)], tokenizer.pad_token_id, CPU)


def test_shared_roles_hold_no_critic_trunk(tiny_model_dir):
    roles = shared_roles(tiny_model_dir)
    assert set(roles.model.peft_config) == {"default"}  # no critic adapter
    assert roles.critic_params == [roles.value_head.weight] and roles.critic_model is None
    with pytest.raises(ValueError, match="no critic trunk"):
        roles.use("critic")


def test_joint_loss_gradient_equals_an_independent_computation(tiny_model_dir, tokenizer):
    """The update's one forward (`actor_logps_values`) + backward of policy + vf_coef · value loss gives the
    gradients of the same loss computed by hand from the HF model's own logits and its final norm's output, with
    LoRA dropout 0.05 on (same seed: same masks), within 1e-5."""
    roles = shared_roles(tiny_model_dir)
    b = fixed_rollout(tokenizer)
    torch.manual_seed(0)
    old_logp = -torch.rand(b.mask.shape) * 3
    adv, returns, old_v = (torch.randn(b.mask.shape) for _ in range(3))
    params = [*roles.actor_params, *roles.critic_params]
    temperature, vf_coef, mask = 0.7, 0.5, b.lmask

    def grads(loss_of) -> list[torch.Tensor]:
        for q in params:
            q.grad = None
        torch.manual_seed(11)  # the dropout masks
        loss_of().backward()
        return [torch.zeros_like(q) if q.grad is None else q.grad.clone() for q in params]

    def loss(logp, v, coef):
        pg, _ = ppo_losses.policy_loss(logp, old_logp, adv, mask, 0.2)
        vf, _ = ppo_losses.value_loss(v, old_v, returns, mask, 0.2)
        return pg + coef * vf

    def recipe():
        logp, _, v = ppo.actor_logps_values(roles, b, temperature, entropy=False)
        return loss(logp, v, vf_coef)

    def by_hand(coef=vf_coef):
        kept = []
        norm = roles.model.get_base_model().model.norm
        hook = norm.register_forward_hook(lambda _m, _a, out: kept.append(out))
        try:
            logits = roles.model(input_ids=b.ids, attention_mask=b.attn).logits
        finally:
            hook.remove()
        gather = lambda x: x.gather(1, b.pos.unsqueeze(-1).expand(-1, -1, x.shape[-1]))  # noqa: E731
        logp = (gather(logits) / temperature).log_softmax(-1).gather(-1, b.resp.unsqueeze(-1))[..., 0] * b.mask
        v = (gather(kept[0]) @ roles.value_head.weight.T)[..., 0] * b.mask
        return loss(logp, v, coef)

    roles.train()
    assert any(m.p == 0.05 for m in roles.modules() if isinstance(m, torch.nn.Dropout))
    got, want = grads(recipe), grads(by_hand)
    assert all(g.abs().sum() > 0 for g in got[-1:]) and sum(float(g.abs().sum()) for g in got[:-1]) > 0
    for g, w in zip(got, want):
        assert torch.allclose(g, w, atol=1e-5, rtol=1e-4), float((g - w).abs().max())
    # negative controls: without the value loss the actor's LoRA gradients differ (value gradients reach the actor),
    # and other dropout masks give other gradients (the seed makes the comparison meaningful)
    policy_only = grads(lambda: by_hand(0.0))
    assert not all(torch.allclose(g, w, atol=1e-5, rtol=1e-4) for g, w in zip(got[:-1], policy_only[:-1]))
    torch.manual_seed(12)
    roles.zero_grad()
    recipe().backward()
    assert not all(torch.allclose(q.grad, w, atol=1e-5, rtol=1e-4) for q, w in zip(params[:-1], want[:-1]))


def _capture_gae_values(monkeypatch) -> list[tuple[float, float]]:
    """Wrap the recipe so that at each step's GAE the values it is given are compared with a no-grad forward of
    the actor + value head on the step's whole sequences (max |difference|), and with the same forward under the
    previous step's value head (a stale pass, the negative control)."""
    seen: dict = {}
    out: list[tuple[float, float]] = []
    build, gae = ppo.build_rollout, ppo_losses.gae

    def roles_kept(*args, **kw):
        seen["roles"] = Roles(*args, **kw)
        return seen["roles"]

    def rollout_kept(*args, **kw):
        seen["roll"] = build(*args, **kw)
        return seen["roll"]

    def gae_checked(rewards, values, mask, gamma, lambd):
        roles, roll = seen["roles"], seen["roll"]
        head = roles.value_head.weight.detach().clone()
        with torch.no_grad():
            want = ppo.actor_logps_values(roles, roll, 1.0, entropy=False)[2]
            roles.value_head.weight.copy_(seen.get("head", head))
            stale = ppo.actor_logps_values(roles, roll, 1.0, entropy=False)[2]
            roles.value_head.weight.copy_(head)
        seen["head"] = head
        out.append((float((values - want).abs().max()), float((values - stale).abs().max())))
        return gae(rewards, values, mask, gamma, lambd)

    monkeypatch.setattr(ppo, "Roles", roles_kept)
    monkeypatch.setattr(ppo, "build_rollout", rollout_kept)
    monkeypatch.setattr(ppo_losses, "gae", gae_checked)
    return out


@pytest.mark.slow
@pytest.mark.parametrize(
    "old_logprobs,merge", [("rollout", "true"), ("rollout", "false"), ("recompute", "false")]
)  # fmt: skip
def test_values_in_gae_are_a_no_grad_forward_of_the_actor(tiny_model_dir, prompts, tmp_path, monkeypatch,
                                                          old_logprobs, merge):  # fmt: skip
    """With the sampler's log-probs the values come from the decode's own hidden states (merged LoRA or not, rows
    leaving the batch), else from the old log-probs' forward: either way those of a no-grad forward of the actor
    and value head on the whole sequence, within 1e-5; the previous step's value head gives others (> 1e-3)."""
    got = _capture_gae_values(monkeypatch)
    args = ("train.max_steps=3", "train.num_episodes=2", f"ppo.old_logprobs={old_logprobs}",
            f"ppo.merge_rollout={merge}", "ppo.actor_learning_rate=5e-3", "ppo.temperature=1.0")  # fmt: skip
    ppo.run(config(tiny_model_dir, prompts, tmp_path / "run", *args))
    assert len(got) == 3
    assert all(diff < 1e-5 for diff, _ in got), got
    assert all(stale > 1e-3 for _, stale in got[1:]), got  # the value head moved: a stale pass would be caught


def test_values_from_the_decode_would_be_caught_off_by_one(tiny_model_dir, tokenizer):
    """The decode's values sit at the position whose logits drew each token (as its log-probs): shifted by one
    position they are not the forward's (the check above can fail)."""
    from weitiao.data.templates import resolve_template
    from weitiao.infer.generate import generate_ids

    roles = shared_roles(tiny_model_dir)
    roles.eval()
    convs = [[{"role": "user", "content": f"今天天气怎么样？{'好' * i}"}] for i in range(4)]
    torch.manual_seed(5)
    template = resolve_template(tokenizer, "auto")
    got = generate_ids(roles.actor_module(), tokenizer, template, convs, 8, 1.0, top_p=1.0, top_k=0, batch_size=2,
                       model_defaults=False, values=ppo._value_reader(roles))  # fmt: skip
    b = ppo.build_rollout(got, tokenizer.pad_token_id, CPU)
    mine = ppo._padded([s.values for s in got], CPU) * b.mask
    with torch.no_grad():
        want = ppo.actor_logps_values(roles, b, 1.0, entropy=False)[2]
    assert all(len(s.values) == len(s.response_ids) for s in got) and want.abs().sum() > 0
    assert torch.allclose(mine, want, atol=1e-5, rtol=0), float((mine - want).abs().max())
    shifted = torch.nn.functional.pad(mine[:, 1:], (0, 1)) * b.mask
    assert not torch.allclose(shifted, want, atol=1e-3)


@pytest.mark.slow
def test_shared_run_saves_resumes_exactly_and_refuses_another_critic(tiny_model_dir, prompts, tmp_path):
    args = ("train.num_episodes=2", "train.max_steps=3", "train.save_every=1", "ppo.temperature=1.0")
    full = ppo.run(config(tiny_model_dir, prompts, tmp_path / "a", *args))
    ppo.run(config(tiny_model_dir, prompts, tmp_path / "b", *args, "train.stop_after=2"))
    ckpt = tmp_path / "b" / "checkpoints" / "step-000002"
    saved = torch.load(ckpt / "trainer_state.pt", weights_only=False)
    assert saved["critic"] == "shared" and "optimizer" in saved and "actor_optimizer" not in saved
    assert not (ckpt / "critic").exists() and (ckpt / "value_head.safetensors").exists()
    with pytest.raises(UserError, match=r"ppo\.critic"):  # the config changed: refused as any other key
        ppo.run(config(tiny_model_dir, prompts, tmp_path / "b", *args, "train.resume=auto", "ppo.critic=separate"))
    with pytest.raises(UserError, match="was trained with ppo.critic: shared, this run sets separate"):  # even forced
        ppo.run(config(tiny_model_dir, prompts, tmp_path / "b", *args, "train.resume=force", "ppo.critic=separate"))
    resumed = ppo.run(config(tiny_model_dir, prompts, tmp_path / "b", *args, "train.resume=auto"))
    assert resumed["steps"] == full["steps"] == 3
    for name in ("adapter/adapter_model.safetensors", "value_head.safetensors"):
        a, b = (load_file(str(tmp_path / r / "final" / name)) for r in "ab")
        assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    final = tmp_path / "a" / "final"
    assert sorted(x.name for x in final.iterdir()) == ["adapter", "chat_template.jinja", "tokenizer",
                                                       "value_head.safetensors"]  # fmt: skip
    assert load_file(str(final / "value_head.safetensors"))["weight"].abs().sum() > 0  # trained
    from peft import PeftModel

    from weitiao.models.load import load_model

    PeftModel.from_pretrained(load_model(ModelSpec(path=str(tiny_model_dir))), final / "adapter")  # chat/serve load it
    assert full["cost"]["models_held"]["adapters"] == "actor"
    # the run summary: train_X the mean over the run's steps (resumed: all 3), last_train_X the last step's
    rows = read_metrics(tmp_path / "b", "train")
    for key in ("score", "kl", "policy_loss", "value_loss", "grad_norm"):
        assert resumed[f"train_{key}"] == pytest.approx(sum(r[key] for r in rows) / 3, rel=1e-9, abs=1e-12)
        assert resumed[f"last_train_{key}"] == rows[-1][key] and key not in resumed
    assert resumed["train_mean_steps"] == 3
    [done] = read_metrics(tmp_path / "b", "done")
    assert done["last_train_score"] == rows[-1]["score"] and "score" not in done and "train_score" in done


@pytest.mark.slow
def test_value_loss_falls_on_a_fixed_reward(tiny_model_dir, prompts, tmp_path):
    """Every reply scores 1, no KL penalty: the returns are fixed, and the value loss falls as the head learns."""
    (tmp_path / "one.py").write_text("def f(prompts, responses):\n    return [1.0] * len(responses)\n")
    args = (f"reward.path={tmp_path / 'one.py'}:f", "ppo.init_kl_coef=0", "ppo.missing_eos_penalty=null",
            "train.max_steps=6", "ppo.actor_learning_rate=1e-2", "ppo.value_clip=null")  # fmt: skip
    ppo.run(config(tiny_model_dir, prompts, tmp_path / "run", *args, "train.num_episodes=3"))
    vf = [r["value_loss"] for r in read_metrics(tmp_path / "run", "train")]
    assert vf[-1] < vf[0] / 2, vf
    assert sum(vf[-2:]) < sum(vf[:2]), vf


# Tiny llama of conftest, default LoRA (r 16, dropout 0.05 made p=0 by train.disable_dropout), shared critic, seed 42,
# rollout_batch_size 8, generate_max_len 12: step → (policy_loss, value_loss, score, kl).
PINNED = {
    1: [-0.00340775, 0.159720, 0.555, 0],
    2: [-0.00192100, 0.0850574, 0.73, 0.00253010],
    3: [-0.00126374, 0.158727, 0.7925, 0.00181109],
    4: [-0.000989512, 0.204203, 0.5575, 0.00458509],
}  # step 1's value loss is the returns' against a zero value head; other draws than the separate critic's PINNED
# (test_ppo_correctness): no critic adapter is initialized, so the sampler's RNG starts elsewhere


@pytest.mark.slow
def test_pinned_shared_losses(tiny_model_dir, tmp_path):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"今天天气怎么样？{i}"} for i in range(40)])
    ppo.run(config(tiny_model_dir, prompts, tmp_path / "run", "train.max_steps=4"))
    rows = read_metrics(tmp_path / "run", "train")
    got = {r["step"]: [r[k] for k in ("policy_loss", "value_loss", "score", "kl")] for r in rows}
    assert sorted(got) == sorted(PINNED)
    for step, want in PINNED.items():
        assert got[step] == pytest.approx(want, rel=1e-3, abs=1e-6), (step, got[step])
    for r in rows:  # one forward for both losses, dropout off: every step's first minibatch is still π = π_old
        assert abs(r["first_ratio_mean"] - 1) < 1e-6 and abs(r["first_approx_kl"]) < 1e-9


@pytest.mark.slow
def test_full_fine_tuning_with_a_shared_critic(tiny_model_dir, prompts, tmp_path):
    s = ppo.run(config(tiny_model_dir, prompts, tmp_path / "run", "train.max_steps=2", "lora.enabled=false",
                       "ppo.max_epochs=1", "ppo.actor_learning_rate=1e-4"))  # fmt: skip
    assert s["cost"]["models_held"]["base copies"] == 2  # actor + reference, no critic copy
    final = tmp_path / "run" / "final"
    assert sorted(x.name for x in final.iterdir()) == ["chat_template.jinja", "model", "tokenizer",
                                                       "value_head.safetensors"]  # fmt: skip
    assert s["last_train_value_loss"] > 0 and s["last_train_grad_norm"] > 0


@pytest.mark.slow
def test_qlora_with_a_shared_critic(tiny_model_dir, prompts, tmp_path):
    """A 4-bit base: the value head reads the actor's hidden states through the quantized layers (float32 head)."""
    s = ppo.run(config(tiny_model_dir, prompts, tmp_path / "run", "train.max_steps=2", "model.quant=4bit",
                       "ppo.max_epochs=1", "ppo.actor_learning_rate=5e-3"))  # fmt: skip
    assert s["last_train_value_loss"] > 0 and s["last_train_grad_norm"] > 0
    final = tmp_path / "run" / "final"
    assert load_file(str(final / "value_head.safetensors"))["weight"].abs().sum() > 0
    assert (final / "adapter" / "adapter_model.safetensors").exists() and not (final / "critic").exists()


@pytest.mark.parametrize(
    "key,name",
    [("ppo.critic_learning_rate=1e-3", "critic_learning_rate"), ("ppo.critic_init=zeros", "critic_init"),
     ("ppo.critic_lora.r=4", "critic_lora")],
)  # fmt: skip
def test_critic_settings_with_a_shared_critic_are_refused(tmp_path, key, name):
    base = ["data.prompts=[p.jsonl]", "reward.kind=function", f"reward.path={RULE}"]
    said = rf"ppo\.{name} would do nothing with ppo.critic: shared .*drop ppo\.{name}"
    with pytest.raises(UserError, match=said) as e:
        load_config(ppo.PPOConfig, None, [*base, "ppo.critic=shared", key])
    assert "\n" not in str(e.value)
    load_config(ppo.PPOConfig, None, [*base, key])  # negative control: the separate critic uses them
    # a shared run's own config.yaml (every key written, at its default) loads again
    cfg = load_config(ppo.PPOConfig, None, [*base, "ppo.critic=shared"])
    (tmp_path / "c.yaml").write_text(ppo.dump_config(cfg), encoding="utf-8")
    again = load_config(ppo.PPOConfig, tmp_path / "c.yaml", [])
    assert again.ppo.critic == "shared" and "critic_learning_rate" in again.ppo.model_fields_set


@pytest.mark.slow
def test_two_processes_with_a_shared_critic(tiny_model_dir, tmp_path):
    """17 prompts over 2 processes (2 vs 1 minibatches): the joint gradients (LoRA + value head) all-reduced, so
    both end with the same weights (the recipe checks it, or raises), and the value head trained."""
    p17 = write_jsonl(tmp_path / "p17.jsonl", [{"prompt": f"今天天气怎么样？{i}"} for i in range(17)])
    run = ["reward.kind=function", f"reward.path={RULE}", "train.progress=false", "train.tensorboard=false",
           "ppo.generate_max_len=4", "ppo.max_epochs=1", "lora.r=4", f"model.path={tiny_model_dir}",
           "ppo.critic=shared", f"data.prompts=[{p17}]", "ppo.rollout_batch_size=16",
           f"train.out={tmp_path / 'r17'}"]  # fmt: skip
    ddp = ["-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    driver = Path(__file__).parent / "ppo_dist_driver.py"
    p = subprocess.run([sys.executable, *ddp, str(driver), json.dumps([run])], env=env, capture_output=True, text=True,
                       cwd=Path(__file__).resolve().parents[1], timeout=300)  # fmt: skip
    assert p.returncode == 0, p.stderr[-3000:]
    assert json.loads((tmp_path / "r17" / "cost.jsonl").read_text().splitlines()[0])["samples"] == 17
    head = load_file(str(tmp_path / "r17" / "final" / "value_head.safetensors"))["weight"]
    assert head.abs().sum() > 0
