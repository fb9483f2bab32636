"""PPO (RLHF): actor, critic, reward and reference; one base model copy with LoRA.

    weitiao ppo examples/demo_ppo.yaml

Roles: the actor is the `default` LoRA adapter (initialized from an SFT adapter with
`lora.init_from`); the reference is a frozen copy of that initial adapter, or the base with the
adapter disabled when training starts from a fresh adapter; the critic is a second adapter plus a
value head, initialized from the reward model (its LoRA weights and score head) or from zeros;
the reward is a `weitiao rm` model, a Python function or an HTTP endpoint. With `lora.enabled:
false` the actor is trained in full and the reference and critic are separate copies.

Each step: 1. sample replies → 2. score them (missing-EOS penalty, normalization, clipping) →
3. log-probs of actor and reference and critic values → 4. per-token rewards (−β·KL, score at the
last token) → 5. GAE and whitened advantages → 6. PPO epochs over minibatches (clipped policy and
value losses, entropy bonus) → 7. adaptive β, metrics, samples, reward-hacking check, checkpoint.
Config keys follow OpenRLHF's names where they exist (init_kl_coef, gamma, lambd, eps_clip, ...).
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from weitiao.config import dump_config
from weitiao.data.formats import Message, RowError, detect_format, iter_records, parse_preference, parse_row
from weitiao.data.templates import resolve_template
from weitiao.errors import UserError
from weitiao.infer.generate import generate_ids
from weitiao.io import atomic_write_text, write_jsonl
from weitiao.losses import ppo as F
from weitiao.models.load import LoraSpec, ModelSpec, load_tokenizer
from weitiao.models.rewards import RewardSpec, build_scorer
from weitiao.models.roles import Roles
from weitiao.train import checkpoint as ck
from weitiao.train.log import MetricsLog, progress_bar


class PPOSpec(BaseModel):
    """PPO hyper-parameters (OpenRLHF names where they exist)."""

    model_config = ConfigDict(extra="forbid")

    init_kl_coef: float = Field(0.05, ge=0, description="β of the per-token KL penalty")
    kl_target: float | None = Field(None, description="adaptive β: target KL per sequence (None = fixed β)")
    kl_horizon: int = Field(10000, gt=0, description="adaptive β: horizon in samples")
    kl_estimator: Literal["k1", "k3"] = "k1"
    gamma: float = Field(1.0, ge=0, le=1)
    lambd: float = Field(0.95, ge=0, le=1)
    eps_clip: float = Field(0.2, gt=0)
    value_clip: float | None = Field(0.2, description="ε_v of the clipped value loss; None = unclipped")
    vf_coef: float = Field(0.5, ge=0, description="weight of the value loss (critic has its own optimizer)")
    entropy_loss_coef: float = Field(0.0, ge=0)
    rollout_batch_size: int = Field(16, gt=0, description="prompts per step (per process)")
    n_samples_per_prompt: int = Field(1, gt=0)
    train_batch_size: int = Field(8, gt=0, description="samples per PPO minibatch (one optimizer step)")
    micro_train_batch_size: int = Field(4, gt=0)
    micro_rollout_batch_size: int = Field(8, gt=0, description="samples per no-grad scoring forward")
    max_epochs: int = Field(2, gt=0, description="PPO epochs over each rollout batch")
    actor_learning_rate: float = 1e-4
    critic_learning_rate: float = 1e-4
    max_norm: float = Field(1.0, gt=0, description="gradient clipping, actor and critic separately")
    prompt_max_len: int = Field(256, gt=0)
    generate_max_len: int = Field(64, gt=0)
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    missing_eos_penalty: float | None = Field(1.0, description="subtracted from the score of replies with no EOS")
    normalize_reward: bool = Field(False, description="divide scores by their running std (and subtract mean)")
    reward_clip_range: float | None = Field(None, description="clip scores to ±this after normalization")
    whiten_advantages: bool = True
    critic_init: Literal["auto", "reward", "zeros"] = Field("auto", description="auto: reward if reward.kind=model")
    critic_lora: LoraSpec | None = Field(None, description="critic adapter; default = the actor's settings")


class PromptSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompts: list[str] = Field(..., description="files of prompts: {prompt}, {messages} ending with user, SFT rows")
    template: str = "auto"


class PPOTrainSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    out: str = "runs/ppo"
    seed: int = 42
    num_episodes: int = Field(1, gt=0, description="passes over the prompts")
    max_steps: int | None = Field(None, description="stop after this many rollout steps")
    save_every: int = Field(0, ge=0, description="0 = only at the end")
    keep_last: int = 2
    resume: str = Field("auto", description="auto (latest checkpoint in out), none, or a checkpoint dir")
    stop_after: int | None = Field(None, description="end the process after this step (tests a kill)")
    sample_every: int = Field(5, ge=0, description="log a few generations every N steps; 0 = never")
    hacking_window: int = Field(5, gt=1, description="steps compared by the reward-hacking check")
    hacking_kl: float = Field(20.0, gt=0, description="warn when score rises while KL per sequence exceeds this")
    hacking_length_ratio: float = Field(1.5, gt=1, description="... or mean length grows by this factor")
    tensorboard: bool = True
    progress: bool = True


class PPOConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: ModelSpec = Field(default_factory=ModelSpec)
    lora: LoraSpec = Field(default_factory=LoraSpec)
    reward: RewardSpec
    data: PromptSpec
    ppo: PPOSpec = Field(default_factory=PPOSpec)
    train: PPOTrainSpec = Field(default_factory=PPOTrainSpec)


# ----------------------------------------------------------------------------- prompts


def load_prompts(paths: list[str]) -> list[list[Message]]:
    """Prompts as message lists ending with a user turn, from prompt rows, pair rows or SFT rows."""
    out = []
    for path in paths:
        for n, rec in iter_records(Path(path)):
            try:
                if isinstance(rec, RowError):
                    raise rec
                if isinstance(rec, dict) and "chosen" not in rec and ("prompt" in rec or _ends_with_user(rec)):
                    out.append(parse_preference({**rec, "chosen": "-", "rejected": "+"}).prompt)
                    continue
                row = parse_row(rec, detect_format(rec))
                out.append(row.prompt if hasattr(row, "prompt") else row.prompt_messages)
            except RowError as e:
                raise UserError(f"{path}:{n}: {e}") from None
    if not out:
        raise UserError(f"data.prompts {paths}: no prompts found")
    return out


def _ends_with_user(rec: dict) -> bool:
    msgs = rec.get("messages")
    return isinstance(msgs, list) and bool(msgs) and isinstance(msgs[-1], dict) and msgs[-1].get("role") == "user"


# ----------------------------------------------------------------------------- rollout tensors


@dataclass
class Rollout:
    """One step's samples, right-padded: sequences [B, L], response tokens and mask [B, R]."""

    ids: torch.Tensor
    attn: torch.Tensor
    pos: torch.Tensor  # [B, R] index of the position whose output predicts response token t
    resp: torch.Tensor
    mask: torch.Tensor

    def select(self, idx: list[int]) -> Rollout:
        keep = self.mask[idx].sum(1).max().long().item()
        width = int((self.attn[idx].sum(1)).max().item())
        return Rollout(
            self.ids[idx, :width], self.attn[idx, :width], self.pos[idx, :keep], self.resp[idx, :keep],
            self.mask[idx, :keep],
        )  # fmt: skip


def build_rollout(samples: list, pad_id: int, device: torch.device) -> Rollout:
    n = len(samples)
    width = max(len(s.prompt_ids) + len(s.response_ids) for s in samples)
    r_len = max(len(s.response_ids) for s in samples)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    attn = torch.zeros((n, width), dtype=torch.long)
    pos = torch.zeros((n, r_len), dtype=torch.long)
    resp = torch.full((n, r_len), pad_id, dtype=torch.long)
    mask = torch.zeros((n, r_len))
    for i, s in enumerate(samples):
        p, r = len(s.prompt_ids), len(s.response_ids)
        ids[i, : p + r] = torch.tensor(s.prompt_ids + s.response_ids)
        attn[i, : p + r] = 1
        pos[i, :r] = torch.arange(p - 1, p + r - 1)
        resp[i, :r] = torch.tensor(s.response_ids)
        mask[i, :r] = 1
    return Rollout(ids.to(device), attn.to(device), pos.to(device), resp.to(device), mask.to(device))


def _gather(hidden: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    return hidden.gather(1, pos.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))


def token_logps(roles: Roles, role: str, b: Rollout, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs of the response tokens under softmax(logits / T), and the entropy there."""
    h = _gather(roles.hidden(role, b.ids, b.attn), b.pos)
    logits = roles.lm_head(h).float() / temperature
    logp_all = torch.log_softmax(logits, -1)
    logp = logp_all.gather(-1, b.resp.unsqueeze(-1)).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp * b.mask, entropy


def token_values(roles: Roles, b: Rollout) -> torch.Tensor:
    h = _gather(roles.hidden("critic", b.ids, b.attn), b.pos)
    return roles.value_head(h.float()).squeeze(-1) * b.mask


class RunningMoments:
    """Running mean/std of scores across steps (Chan et al. parallel update)."""

    def __init__(self) -> None:
        self.mean, self.var, self.count = 0.0, 1.0, 1e-8

    def update(self, x: torch.Tensor) -> None:
        n, m, v = x.numel(), float(x.mean()), float(x.var(unbiased=False))
        delta, total = m - self.mean, self.count + n
        self.mean += delta * n / total
        self.var = (self.var * self.count + v * n + delta**2 * self.count * n / total) / total
        self.count = total


def hacking_warning(history: list[dict], window: int, kl_limit: float, length_ratio: float) -> str | None:
    """Reward hacking (Q158): the score rises while KL runs away or replies grow much longer."""
    if len(history) < 2 * window:
        return None
    early, late = history[-2 * window : -window], history[-window:]

    def mean(rows: list[dict], k: str) -> float:
        return sum(r[k] for r in rows) / len(rows)

    if mean(late, "score") <= mean(early, "score"):
        return None
    kl, l0, l1 = mean(late, "kl"), mean(early, "response_length"), mean(late, "response_length")
    if kl > kl_limit:
        return f"score rises while KL per sequence is {kl:.1f} > {kl_limit}: check samples for reward hacking"
    if l0 > 0 and l1 / l0 > length_ratio:
        return f"score rises while reply length grew {l0:.0f} → {l1:.0f} tokens: check for length hacking"
    return None


# ----------------------------------------------------------------------------- the run


def _allreduce_grads(params: list[torch.Tensor], world: int) -> None:
    if world > 1:
        for p in params:
            if p.grad is not None:
                torch.distributed.all_reduce(p.grad)
                p.grad /= world


def run(cfg: PPOConfig) -> dict:
    """Train with PPO; returns the summary (last metrics, cost report, output dir)."""
    from accelerate import Accelerator

    p, t = cfg.ppo, cfg.train
    accel = Accelerator(cpu=not torch.cuda.is_available())
    main, world, rank = accel.is_main_process, accel.num_processes, accel.process_index
    torch.manual_seed(t.seed)  # identical adapter init on every process
    random.seed(t.seed)
    out = Path(t.out)
    device = accel.device
    cost = {"rollout_s": 0.0, "scoring_s": 0.0, "reference_s": 0.0, "update_s": 0.0}
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()

    # 0. Prompts, tokenizer, template; the reward source; the three roles on one base.
    tokenizer = load_tokenizer(cfg.model.path)
    template = resolve_template(tokenizer, cfg.data.template)
    prompts = load_prompts(cfg.data.prompts)
    lens = [len(tokenizer(template.render(tokenizer, m, add_generation_prompt=True))["input_ids"]) for m in prompts]
    too_long = sum(n > p.prompt_max_len for n in lens)
    prompts = [m for m, n in zip(prompts, lens) if n <= p.prompt_max_len]
    if not prompts:
        raise UserError(f"data.prompts: all {too_long} prompts are longer than ppo.prompt_max_len={p.prompt_max_len}")
    score_fn, reward_model = build_scorer(cfg.reward, device)
    roles = Roles(cfg.model, cfg.lora, device, reward_model, p.critic_init, p.critic_lora)
    if world > 1:
        torch.manual_seed(t.seed + rank)  # then each process samples its own replies
    if reward_model is not None and p.critic_init != "zeros":
        reward_model.eval()
    actor_opt = torch.optim.AdamW(roles.actor_params, lr=p.actor_learning_rate)
    critic_opt = torch.optim.AdamW(roles.critic_params, lr=p.critic_learning_rate)
    kl_ctl = F.AdaptiveKL(p.init_kl_coef, p.kl_target, p.kl_horizon)
    moments = RunningMoments()
    models_held = {
        "base copies": 1 if roles.lora else 3,
        "adapters": ("actor, reference, critic" if roles.has_ref_adapter else "actor, critic")
        if roles.lora
        else "none (full)",
        "reward model": "separate" if reward_model is not None else cfg.reward.kind,
    }

    # Resume: actor + critic adapters, value head, both optimizers, β, reward moments, RNG, position.
    steps_per_episode = math.ceil(len(prompts) / (p.rollout_batch_size * world))
    total_steps = min(t.max_steps or 10**9, steps_per_episode * t.num_episodes)
    state: dict[str, Any] = {"step": 0}
    ckpt = ck.open_run(out, t.resume, dump_config(cfg), main)  # refuses a changed config unless forced
    if ckpt is not None:
        state = _load(ckpt, roles, actor_opt, critic_opt, kl_ctl, moments)
        if world > 1:  # the checkpoint holds process 0's RNG; give the others their own streams again
            torch.manual_seed(t.seed + rank + 1000 * state["step"])
    if main:
        print(
            f"ppo: {len(prompts)} prompts ({too_long} over prompt_max_len dropped) · {total_steps} steps · "
            f"reward {cfg.reward.kind} · critic init {p.critic_init} · β={kl_ctl.beta} · models {models_held}"
        )
    log = MetricsLog(out, enabled=main, tensorboard=t.tensorboard)
    history: list[dict] = []
    bar = progress_bar(t.progress and main)
    task = bar.add_task("ppo", total=total_steps, completed=state["step"], info="")
    started = time.time()
    metrics: dict[str, float] = {}
    with bar:
        while state["step"] < total_steps:
            step = state["step"]
            episode, k = divmod(step, steps_per_episode)
            order = list(range(len(prompts)))  # a fresh seeded shuffle per episode, so resume lands on the same prompts
            random.Random(t.seed + episode).shuffle(order)
            span = order[k * p.rollout_batch_size * world : (k + 1) * p.rollout_batch_size * world]
            batch_prompts = [prompts[i] for i in span[rank::world] for _ in range(p.n_samples_per_prompt)]

            # 1. Sample replies from the actor (KV cache, temperature); cut at the first EOS.
            t0 = time.time()
            samples = generate_ids(
                roles.actor_module(), tokenizer, template, batch_prompts, p.generate_max_len, p.temperature,
                p.top_p, batch_size=p.micro_rollout_batch_size,
            )  # fmt: skip
            cost["rollout_s"] += time.time() - t0

            # 2. Scores: reward source, missing-EOS penalty, optional normalization and clipping.
            t0 = time.time()
            texts = [
                tokenizer.decode(s.response_ids[:-1] if s.stopped else s.response_ids, skip_special_tokens=True)
                for s in samples
            ]
            raw = torch.tensor(score_fn(batch_prompts, texts), dtype=torch.float32, device=device)
            stopped = torch.tensor([s.stopped for s in samples], device=device)
            score = raw.clone()
            if p.missing_eos_penalty is not None:
                score[~stopped] -= p.missing_eos_penalty
            if p.normalize_reward:
                moments.update(score)
                score = (score - moments.mean) / math.sqrt(moments.var + 1e-8)
            if p.reward_clip_range is not None:
                score = score.clamp(-p.reward_clip_range, p.reward_clip_range)
            cost["scoring_s"] += time.time() - t0

            # 3. Old log-probs (actor), reference log-probs, values — all without gradients.
            roll = build_rollout(samples, tokenizer.pad_token_id, device)
            old_logp, ref_logp, old_v = (torch.zeros_like(roll.mask) for _ in range(3))
            with torch.no_grad():
                for c in range(0, len(samples), p.micro_rollout_batch_size):
                    idx = list(range(c, min(c + p.micro_rollout_batch_size, len(samples))))
                    b = roll.select(idx)
                    w = b.mask.shape[1]
                    t0 = time.time()
                    old_logp[idx, :w] = token_logps(roles, "actor", b, p.temperature)[0]
                    old_v[idx, :w] = token_values(roles, b)
                    t1 = time.time()
                    ref_logp[idx, :w] = token_logps(roles, "reference", b, p.temperature)[0]
                    cost["reference_s"] += time.time() - t1
                    cost["scoring_s"] += t1 - t0

            # 4. Per-token rewards: −β·KL everywhere, the score at the last response token.
            kl = F.kl_per_token(old_logp, ref_logp, p.kl_estimator) * roll.mask
            rewards = F.token_rewards(score, kl, roll.mask, kl_ctl.beta)

            # 5. GAE; returns = A + V before whitening; masked advantage whitening.
            adv, returns = F.gae(rewards, old_v, roll.mask, p.gamma, p.lambd)
            if p.whiten_advantages:
                adv = F.whiten(adv, roll.mask)

            # 6. PPO epochs: shuffled minibatches; actor and critic step separately.
            t0 = time.time()
            upd: dict[str, float] = {}
            first: dict[str, float] = {}
            n_mb = 0
            for _ in range(p.max_epochs):
                perm = torch.randperm(len(samples)).tolist()
                for m0 in range(0, len(perm), p.train_batch_size):
                    mb = perm[m0 : m0 + p.train_batch_size]
                    mb_tokens = roll.mask[mb].sum()
                    sums: dict[str, float] = {}
                    for u0 in range(0, len(mb), p.micro_train_batch_size):
                        idx = mb[u0 : u0 + p.micro_train_batch_size]
                        b = roll.select(idx)
                        w = b.mask.shape[1]
                        share = float(b.mask.sum() / mb_tokens)
                        logp, ent = token_logps(roles, "actor", b, p.temperature)
                        pg, st = F.policy_loss(logp, old_logp[idx, :w], adv[idx, :w], b.mask, p.eps_clip)
                        entropy = F.masked_mean(ent, b.mask)
                        ((pg - p.entropy_loss_coef * entropy) * share).backward()
                        v = token_values(roles, b)
                        vf, vst = F.value_loss(v, old_v[idx, :w], returns[idx, :w], b.mask, p.value_clip)
                        (p.vf_coef * vf * share).backward()
                        for key, val in {**st, **vst, "policy_loss": pg, "value_loss": vf, "entropy": entropy}.items():
                            sums[key] = sums.get(key, 0.0) + float(val.detach()) * share
                    _allreduce_grads(roles.actor_params, world)
                    _allreduce_grads(roles.critic_params, world)
                    sums["actor_grad_norm"] = float(torch.nn.utils.clip_grad_norm_(roles.actor_params, p.max_norm))
                    sums["critic_grad_norm"] = float(torch.nn.utils.clip_grad_norm_(roles.critic_params, p.max_norm))
                    actor_opt.step()
                    critic_opt.step()
                    actor_opt.zero_grad(set_to_none=True)
                    critic_opt.zero_grad(set_to_none=True)
                    if not first:
                        first = {f"first_{k}": sums[k] for k in ("ratio_mean", "approx_kl", "clipfrac")}
                    for key, val in sums.items():
                        upd[key] = upd.get(key, 0.0) + val
                    n_mb += 1
            cost["update_s"] += time.time() - t0

            # 7. Adaptive β, metrics, samples, reward-hacking check, checkpoint.
            seq_kl = kl.sum(1)
            lengths = roll.mask.sum(1)
            stats = torch.stack(
                [raw.mean(), score.mean(), (score - kl_ctl.beta * seq_kl).mean(), seq_kl.mean(), lengths.mean(),
                 stopped.float().mean()]
            )  # fmt: skip
            if world > 1:
                torch.distributed.all_reduce(stats)
                stats /= world
            beta_used = kl_ctl.beta
            kl_ctl.update(float(stats[3]), len(samples) * world)
            metrics = {
                "score": float(stats[0]),
                "score_shaped": float(stats[1]),
                "rlhf_reward": float(stats[2]),
                "kl": float(stats[3]),
                "response_length": float(stats[4]),
                "eos_rate": float(stats[5]),
                "beta": beta_used,
                **{k: v / max(1, n_mb) for k, v in upd.items()},
                **first,
                "explained_variance": F.explained_variance(old_v, returns, roll.mask),
                "advantage_mean": float(F.masked_mean(adv, roll.mask)),
                "return_mean": float(F.masked_mean(returns, roll.mask)),
            }
            state["step"] = step + 1
            history.append(metrics)
            log.log("train", state["step"], **metrics)
            if main and t.sample_every and state["step"] % t.sample_every == 0:
                shown = [
                    {"prompt": m[-1]["content"], "reply": x, "score": float(s)}
                    for m, x, s in list(zip(batch_prompts, texts, raw))[:4]
                ]
                log.log("samples", state["step"], samples=shown)
            warning = hacking_warning(history, t.hacking_window, t.hacking_kl, t.hacking_length_ratio)
            if warning and main:
                log.log("warning", state["step"], message=warning)
                bar.console.print(f"[yellow]warning:[/] step {state['step']}: {warning}")
            bar.update(
                task,
                completed=state["step"],
                info=f"score {metrics['score']:.3f} · kl {metrics['kl']:.2f} · len {metrics['response_length']:.1f}",
            )
            last = state["step"] == total_steps
            if main and (last or (t.save_every and state["step"] % t.save_every == 0)):
                _save(out, state, roles, actor_opt, critic_opt, kl_ctl, moments, t.keep_last)
            accel.wait_for_everyone()
            if t.stop_after is not None and state["step"] >= t.stop_after and not last:
                log.close()
                return {"stopped_at": state["step"], "out": str(out)}

    # Final: the actor adapter (loadable by chat/serve/export), the critic, the cost report.
    if world > 1:  # every process must hold the same weights after all-reduced updates
        check = torch.stack([sum(p.double().sum() for p in ps) for ps in (roles.actor_params, roles.critic_params)])
        gathered = accel.gather(check.to(device).unsqueeze(0))
        if not torch.allclose(gathered, gathered[:1].expand_as(gathered), rtol=1e-9, atol=1e-9):
            raise RuntimeError(f"ppo: processes hold different weights after training: {gathered.tolist()}")
    elapsed = time.time() - started
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else _rss_gib()
    report = {
        **{k: round(v, 3) for k, v in cost.items()},
        "total_s": round(elapsed, 3),
        "peak_memory_gib": round(peak, 3),
        "peak_memory_kind": "cuda allocated" if torch.cuda.is_available() else "process RSS",
        "models_held": models_held,
        "samples": state["step"] * p.rollout_batch_size * p.n_samples_per_prompt * world,
    }
    summary = {"out": str(out), "steps": state["step"], **metrics, "cost": report}
    if main:
        final = out / "final"
        _save_weights(roles, final)
        tokenizer.chat_template = template.jinja
        tokenizer.save_pretrained(final / "tokenizer")
        atomic_write_text(final / "chat_template.jinja", template.jinja)
        write_jsonl(out / "cost.jsonl", [report])
        log.log("done", state["step"], **{k: v for k, v in summary.items() if isinstance(v, (int, float))})
    log.close()
    accel.wait_for_everyone()
    return summary


def _rss_gib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _save_weights(roles: Roles, dest: Path) -> None:
    """actor → adapter/ (or model/), critic → critic/ (+ value_head.pt)."""
    from safetensors.torch import save_file

    if roles.lora:
        roles.model.save_pretrained(dest / "adapter", selected_adapters=["default"])
        roles.model.save_pretrained(dest / "critic", selected_adapters=["critic"])
    else:
        roles.model.save_pretrained(dest / "model")
        roles.critic_model.save_pretrained(dest / "critic")
    save_file({"weight": roles.value_head.weight.detach().contiguous()}, str(dest / "value_head.safetensors"))


def _save(out: Path, state: dict, roles: Roles, aopt, copt, kl_ctl, moments, keep_last: int) -> None:
    def fill(tmp: Path) -> None:
        _save_weights(roles, tmp)
        extra = {"beta": kl_ctl.beta, "moments": vars(moments), "rng": ck.rng_state()}
        opts = {"actor_optimizer": aopt.state_dict(), "critic_optimizer": copt.state_dict()}
        torch.save({**state, **opts, **extra}, tmp / ck.STATE_FILE)

    ck.write_checkpoint(out, state["step"], fill, keep_last)


def _load(ckpt: Path, roles: Roles, aopt, copt, kl_ctl, moments) -> dict:
    from safetensors.torch import load_file

    if roles.lora:
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(roles.model, load_file(str(ckpt / "adapter" / "adapter_model.safetensors")))
        set_peft_model_state_dict(
            roles.model, load_file(str(ckpt / "critic" / "critic" / "adapter_model.safetensors")), adapter_name="critic"
        )
        roles.model.base_model.set_adapter("default")
    else:
        from transformers import AutoModelForCausalLM

        roles.model.load_state_dict(AutoModelForCausalLM.from_pretrained(ckpt / "model").state_dict())
        roles.critic_model.load_state_dict(AutoModelForCausalLM.from_pretrained(ckpt / "critic").state_dict())
    roles.value_head.weight.data.copy_(load_file(str(ckpt / "value_head.safetensors"))["weight"])
    state = torch.load(ckpt / ck.STATE_FILE, weights_only=False)
    aopt.load_state_dict(state.pop("actor_optimizer"))
    copt.load_state_dict(state.pop("critic_optimizer"))
    kl_ctl.beta = state.pop("beta")
    vars(moments).update(state.pop("moments"))
    ck.set_rng_state(state.pop("rng"))  # python and torch generators
    return state
