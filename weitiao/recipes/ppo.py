"""PPO (RLHF): actor, critic, reward and reference; one base model copy with LoRA.

    weitiao ppo examples/demo_ppo.yaml

Roles: the actor is the `default` LoRA adapter (initialized from an SFT adapter with
`lora.init_from`); the reference is a frozen copy of that initial adapter, or the base with the
adapter disabled when training starts from a fresh adapter; the critic is a second adapter plus a
value head, initialized from the reward model (its LoRA weights and score head) or from zeros;
the reward is a `weitiao rm` model, a Python function or an HTTP endpoint. With `lora.enabled:
false` the actor is trained in full and the reference and critic are separate copies. With `ppo.critic: shared` the
critic is only a value head on the actor's last hidden states (TRL v0's AutoModelForCausalLMWithValueHead,
LLaMA-Factory): one forward + backward of policy + vf_coef · value loss per update micro-batch and one optimizer, the
values taken from the decode (or the old log-probs' forward); unlike the separate critic, value gradients reach the
actor.

Each step: 1. sample replies → 2. score them (missing-EOS penalty, normalization, clipping) →
3. log-probs of actor and reference and critic values → 4. per-token rewards (−β·KL, score at the
last token) → 5. GAE and whitened advantages → 6. PPO epochs over minibatches (clipped policy and
value losses, entropy bonus) → 7. adaptive β, metrics, samples, reward-hacking check, checkpoint.
Config keys follow OpenRLHF's names where they exist (init_kl_coef, gamma, lambd, eps_clip, ...); the batch
sizes count per process, where OpenRLHF's rollout_batch_size and train_batch_size count all GPUs together.

Rollouts sample from exactly softmax(softcap(logits) / T) (no top-p/top-k, nothing from the model's
generation_config.json), the distribution the shared log-prob function scores; with `ppo.merge_rollout` the
actor's LoRA is merged into the base meanwhile, and the base restored bit for bit after. The cost report
times each phase of the step (`PHASES`). With N processes a step's prompts are dealt round-robin and a
process left short gets weight-0 padding samples (never sent to the reward), so all run the same collectives;
losses are token means over every process's samples and whitening and reward normalization use statistics over all
processes.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from weitiao.config import dump_config
from weitiao.data.chat import IGNORE
from weitiao.data.formats import Message
from weitiao.data.prompts import Prompt, read_prompts
from weitiao.data.templates import resolve_template
from weitiao.errors import UserError
from weitiao.infer.generate import Sampled, generate_ids
from weitiao.io import atomic_write_text, write_jsonl
from weitiao.losses import ppo as ppo_losses
from weitiao.losses.sft import PACKED_SDPA, target_logps
from weitiao.models import attention, packed_attention
from weitiao.models.continued import check_continued
from weitiao.models.load import (
    disable_dropout,
    load_tokenizer,
    lora_as_trained,
    lora_continued,
)
from weitiao.models.portable import legacy_config_keys, save_tokenizer, stop_ids, write_generation_config
from weitiao.models.roles import Roles
from weitiao.models.untrained import refuse_untrained_tokens
from weitiao.recipes.configs import PPOConfig, PPOSpec, PPOTrainSpec, PromptSpec  # noqa: F401  (re-exported)
from weitiao.recipes.rewards import Scorer, build_scorer, critic_base_difference
from weitiao.train import checkpoint as ck
from weitiao.train import dist, loop
from weitiao.train.guard import ensure_finite
from weitiao.train.log import MetricsLog, places, progress_bar

# ----------------------------------------------------------------------------- prompts


def prompt_rows(paths: list[str]) -> list[Prompt]:
    """Prompt rows (messages ending with a user turn, and a reference if the row gave one), from prompt rows, pair
    rows or SFT rows."""
    tools = "tool rows train with `weitiao sft` only; PPO prompts carry no tools"
    return read_prompts(paths, tools=tools, what="data.prompts")


def load_prompts(paths: list[str]) -> list[list[Message]]:
    """Prompts as message lists ending with a user turn, from prompt rows, pair rows or SFT rows."""
    return [p.messages for p in prompt_rows(paths)]


def reference_note(rows: list[Prompt]) -> str | None:
    """A line when prompt rows carry an answer (`answer`, `reference`, an SFT reply, a pair's chosen): the reward
    sources are given (prompts, responses) only, so a correctness reward cannot see it. None when no row has one."""
    given = [p for p in rows if p.reference is not None]
    if not given:
        return None
    first = given[0].source
    return (f"note: data.prompts: {len(given)} of {len(rows)} rows carry a reference answer (first: {first}); the "
            "reward is called with (prompts, responses) only, so PPO does not use them")  # fmt: skip


# ----------------------------------------------------------------------------- rollout tensors


@dataclass
class Rollout:
    """One step's samples, right-padded: sequences [B, L], response tokens and mask [B, R].

    `weight` [B] is 1 for real samples and 0 for the padding samples that give every process the
    same number of forward/backward/all-reduce calls; `lmask` = mask·weight is what losses and
    statistics count. A packed one (`select(..., packed=True)`) holds its samples end to end in one
    row, ids [1, T] with `position_ids` restarting at each sample and no attention mask; `pos` then
    indexes that row.
    """

    ids: torch.Tensor
    attn: torch.Tensor | None
    pos: torch.Tensor  # [B, R] index of the position whose output predicts response token t
    resp: torch.Tensor
    mask: torch.Tensor
    weight: torch.Tensor
    position_ids: torch.Tensor | None = None  # packed: [1, T]

    @property
    def lmask(self) -> torch.Tensor:
        return self.mask * self.weight[:, None]

    def select(self, idx: list[int], packed: bool = False) -> Rollout:
        """Rows `idx`, cut to their longest reply and sequence, or packed into one row without padding."""
        lens = self.attn[idx].sum(1)
        keep = int(self.mask[idx].sum(1).max())
        pos, resp, mask, weight = self.pos[idx, :keep], self.resp[idx, :keep], self.mask[idx, :keep], self.weight[idx]
        if not packed:
            width = int(lens.max())
            return Rollout(self.ids[idx, :width], self.attn[idx, :width], pos, resp, mask, weight)
        real = self.attn[idx].bool()  # right-padded: each row's tokens come first, so this is their concatenation
        start = lens.cumsum(0) - lens
        position_ids = torch.arange(real.shape[1], device=real.device).expand_as(real)[real]
        return Rollout(self.ids[idx][real][None], None, pos + start[:, None], resp, mask, weight, position_ids[None])


def build_rollout(samples: list, pad_id: int, device: torch.device, weight: list[float] | None = None) -> Rollout:
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
    w = torch.tensor(weight if weight is not None else [1.0] * n)
    return Rollout(ids.to(device), attn.to(device), pos.to(device), resp.to(device), mask.to(device), w.to(device))


# The cost report's phases of a step (seconds summed over steps): 1. rollout, 2. reward, 3. old log-probs,
# values, reference log-probs, 4–5. KL rewards + GAE + whitening, 6. update.
PHASES = ("rollout_s", "reward_s", "logprobs_s", "values_s", "reference_s", "advantages_s", "update_s")


def _gather(hidden: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    return hidden.gather(1, pos.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))


def _hidden_at(decoder: torch.nn.Module, b: Rollout) -> torch.Tensor:
    """Last hidden states [B, R, H] at `b.pos`: a padded batch, or a packed row (attended one sample at a time
    by `models.packed_attention`, which `run` enables: the same math without the padding's work)."""
    if b.position_ids is None:
        hidden = decoder(input_ids=b.ids, attention_mask=b.attn, use_cache=False).last_hidden_state
        return _gather(hidden, b.pos)
    kw = {"packed_rows": True} if attention.implementation(decoder) == PACKED_SDPA else {}
    hidden = decoder(input_ids=b.ids, position_ids=b.position_ids, use_cache=False, **kw).last_hidden_state
    return hidden[0][b.pos]


def token_logps(
    roles: Roles, role: str, b: Rollout, temperature: float, entropy: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """[B, R] log-probs of the response tokens under `role` (its own weights and head) and the entropy there
    (None without `entropy`: the same log-probs, bit for bit, without the softmax-wide entropy work).

    The distribution is the one rollouts sample from: softmax(softcap(logits) / T), through the
    log-prob function SFT and DPO use; 0 on padding.
    """
    with roles.parts(role) as (decoder, head):
        return _scored(roles, head, _hidden_at(decoder, b), b, temperature, entropy)


def actor_logps_values(
    roles: Roles, b: Rollout, temperature: float, entropy: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """`token_logps` of the actor and its values (`ppo.critic: shared`: the value head on the same hidden states),
    from one forward."""
    with roles.parts("actor") as (decoder, head):
        h = _hidden_at(decoder, b)
        logp, ent = _scored(roles, head, h, b, temperature, entropy)
    return logp, ent, roles.value_head(h.float()).squeeze(-1) * b.mask


def _scored(
    roles: Roles, head: torch.nn.Module, hidden: torch.Tensor, b: Rollout, temperature: float, entropy: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    targets = b.resp.masked_fill(b.mask == 0, IGNORE)
    got = target_logps(hidden, targets, head, softcap=roles.softcap, temperature=temperature, entropy=entropy)
    lp, ent = got if entropy else (got, None)
    sel = targets != IGNORE
    logp = lp.new_zeros(b.mask.shape)
    logp[sel] = lp
    if ent is None:
        return logp, None
    ent_full = ent.new_zeros(b.mask.shape)
    ent_full[sel] = ent
    return logp, ent_full


@contextmanager
def rollout_actor(roles: Roles, merge: bool) -> Iterator[Any]:
    """The actor to sample from. With `merge` (LoRA only), its adapter is folded into the base weights
    meanwhile: decoding a small batch is bound by per-layer overhead, and a merged layer is one matmul where
    the adapter takes three. The base weights are copied back bit for bit afterwards (unmerging by
    subtraction leaves rounding drift every step). A merged layer's logits differ by float rounding (~1e-7),
    so a draw can differ from the unmerged actor's only where that moves it across a boundary.
    """
    model = roles.actor_module()
    if not (merge and roles.lora):
        yield model
        return
    from peft.tuners.lora import LoraLayer

    layers = [m for m in model.modules() if isinstance(m, LoraLayer) and "default" in m.lora_A]
    saved = [[q.detach().clone() for q in m.get_base_layer().parameters()] for m in layers]
    model.merge_adapter(["default"])
    try:
        yield model
    finally:
        model.unmerge_adapter()
        with torch.no_grad():
            for m, params in zip(layers, saved):
                for q, kept in zip(m.get_base_layer().parameters(), params):
                    q.copy_(kept)


def _value_reader(roles: Roles) -> tuple[torch.nn.Module, Any]:
    """(trunk, head) for `generate_ids(values=...)`: the value head on the actor's last hidden states."""
    with roles.parts("actor") as (decoder, _):
        return decoder, lambda h: roles.value_head(h.float()).squeeze(-1)


def _padded(rows: list[list[float]], device: torch.device) -> torch.Tensor:
    """Per-sample lists (the sampler's log-probs or values) as [B, R], 0 after each one's end."""
    return torch.nn.utils.rnn.pad_sequence([torch.tensor(r) for r in rows], batch_first=True).to(device)


def token_values(roles: Roles, b: Rollout) -> torch.Tensor:
    with roles.parts("critic") as (decoder, _):
        h = _hidden_at(decoder, b)
    return roles.value_head(h.float()).squeeze(-1) * b.mask


class RunningMoments:
    """Running mean/std of scores across steps and processes (Chan et al. parallel update)."""

    def __init__(self) -> None:
        self.mean, self.var, self.count = 0.0, 1.0, 1e-8

    def update(self, x: torch.Tensor, weight: torch.Tensor | None = None, reduce: ppo_losses.Reduce = None) -> None:
        """Add the samples with weight 1 (of every process when `reduce` sums over them)."""
        mean, var, count = ppo_losses.masked_moments(x, torch.ones_like(x) if weight is None else weight, reduce)
        n, m, v = float(count), float(mean), float(var)
        delta, total = m - self.mean, self.count + n
        self.mean += delta * n / total
        self.var = (self.var * self.count + v * n + delta**2 * self.count * n / total) / total
        self.count = total


HACKING_KEYS = ("score", "kl", "response_length")  # what `hacking_warning` reads of each step's metrics


def hacking_history(ckpt: Path, saved: dict, window: int, force: bool = False) -> list[dict]:
    """The per-step rows `hacking_warning` compares, up to the checkpoint: kept in it (`hacking_history`); for a
    checkpoint written before they were, read back from its run's metrics.jsonl. Without them a resumed run's check
    started afresh (no warning for 2 × window steps, a hacking run unflagged); steps missing there are refused, or
    under train.resume=force the check starts afresh, said in one line."""
    if "hacking_history" in saved:
        return list(saved["hacking_history"])
    import json

    step, need = int(saved["step"]), min(int(saved["step"]), 2 * window)
    log = (ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent) / "metrics.jsonl"
    rows: dict[int, dict] = {}
    for line in log.read_text(encoding="utf-8").splitlines() if log.exists() else []:
        try:
            r = json.loads(line)
            if r.get("kind") == "train" and step - need < int(r["step"]) <= step:
                rows[int(r["step"])] = {k: float(r[k]) for k in HACKING_KEYS}
        except (ValueError, KeyError, TypeError):
            continue  # a line cut short by a kill, or another kind of row
    if len(rows) < need:
        missing = sorted(set(range(step - need + 1, step + 1)) - set(rows))
        why = f"{ckpt} predates the reward-hacking history kept in checkpoints and {log} has no train row for step(s) "
        why += f"{missing[0]}..{missing[-1]}"
        if force:
            print(f"train.resume=force: {why}: the reward-hacking check starts afresh from step {step}")
            return []
        raise UserError(f"train.resume: {why}; restore that file, set train.resume=force to start the reward-hacking "
                        "check afresh, or train.resume=none for a new run")  # fmt: skip
    return [rows[k] for k in sorted(rows)]


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
        d = places(lambda n: float(f"{kl:.{n}f}") != kl_limit, 1)
        return (f"score rises while KL per sequence is {kl:.{d}f} > train.hacking_kl {kl_limit:g}: check samples "
                "for reward hacking")  # fmt: skip
    if l0 > 0 and l1 / l0 > length_ratio:
        d = places(lambda n: f"{l0:.{n}f}" != f"{l1:.{n}f}", 1)
        dr = places(lambda n: float(f"{l1 / l0:.{n}f}") > length_ratio, 2)
        return (f"score rises while mean reply length grew {l0:.{d}f} → {l1:.{d}f} tokens (×{l1 / l0:.{dr}f} > "
                f"train.hacking_length_ratio {length_ratio:g}): check for length hacking")  # fmt: skip
    return None


# ----------------------------------------------------------------------------- the run


def step_prompts(
    prompts: list, order: list[int], k: int, per_process: int, world: int, rank: int, n_samples: int
) -> tuple[list, list[float]]:
    """This process's prompts of step k (each n_samples times) and their weights (1 real, 0 padding).

    The step's span of `order` is dealt round-robin. A process left one prompt short (or with none,
    at the end of an episode) gets a weight-0 copy of the span's first prompt, so every process
    runs the same number of forward/backward/all-reduce calls.
    """
    span = order[k * per_process * world : (k + 1) * per_process * world]
    mine = span[rank::world]
    pad = -(-len(span) // world) - len(mine)
    weights = [1.0] * len(mine) + [0.0] * pad
    picked = [prompts[i] for i in mine + span[:1] * pad]
    return [m for m in picked for _ in range(n_samples)], [w for w in weights for _ in range(n_samples)]


def score_real(score_fn: Scorer, prompts: list, texts: list[str], weights: list[float]) -> list[float]:
    """Scores of the real samples (weight 1) from the reward; 0 for padding samples, which never reach it (a paid
    endpoint, one with side effects) and are masked everywhere. A process with no real sample does not call it."""
    real = [i for i, w in enumerate(weights) if w > 0]
    out = [0.0] * len(texts)
    if real:
        for i, s in zip(real, score_fn([prompts[i] for i in real], [texts[i] for i in real])):
            out[i] = s
    return out


def prompt_plan(digest: str, n_prompts: int, per_process: int, world: int) -> dict[str, Any]:
    """What decides the prompts of step k (kept in the trainer state): the prompts' digest and count, and the prompts
    a step deals (ppo.rollout_batch_size × processes)."""
    return {"data_key": digest, "prompts": n_prompts, "prompts_per_step": per_process * world, "world": world}


def check_resume(ckpt: Path, saved: dict, plan: dict, total_steps: int, force: bool) -> str | None:
    """Refuse resuming `ckpt` (its trainer state `saved`) on other prompts or with no step left, before the run writes
    anything; returns the line a forced resume prints when its steps deal other prompts (or resample), else None."""
    if saved.get("data_key", plan["data_key"]) != plan["data_key"] and not force:
        raise UserError(
            f"train.resume: data.prompts hold other prompts than {ckpt} was trained on (rows, texts or the ones over "
            "ppo.prompt_max_len changed); restore them, set train.resume=none (or another train.out) for a new run, "
            "or train.resume=force"
        )
    if saved["step"] >= total_steps:
        raise UserError(
            f"train.resume: {ckpt} is already at step {saved['step']} of {total_steps}: nothing to train "
            "(raise train.max_steps or train.num_episodes, or set train.resume=none)"
        )
    was_world = ck.saved_world(saved)
    was = {"world": was_world, "prompts": plan["prompts"], **saved}  # older checkpoints: this run's counts
    was.setdefault("prompts_per_step", plan["prompts_per_step"] // plan["world"] * was_world)
    steps = [math.ceil(x["prompts"] / x["prompts_per_step"]) for x in (was, plan)]
    after = f"from step {saved['step'] + 1} on"
    if (was["prompts"], was["prompts_per_step"]) != (plan["prompts"], plan["prompts_per_step"]):
        return (
            f"train.resume=force: {ckpt}'s run dealt {was['prompts_per_step']} of {was['prompts']} prompts a step "
            f"({steps[0]} steps an episode, {was_world} process(es)), this run deals {plan['prompts_per_step']} of "
            f"{plan['prompts']} ({steps[1]} steps, {plan['world']} process(es)), so {after} the prompts are not the "
            "ones the original run would have drawn (some of this episode's come again, others not at all)"
            + (" and sampling is reseeded" if was_world != plan["world"] else "")
        )
    if was_world != plan["world"]:
        return (
            f"train.resume=force: {ckpt} was written by {was_world} process(es), resuming with {plan['world']}: a "
            f"step deals the same {plan['prompts_per_step']} prompts, but sampling is reseeded, so {after} the "
            "replies are not the ones the original run would have drawn"
        )
    return None


def cut_at_stop(s: Sampled, stops: set[int]) -> Sampled:
    """The reply cut after its first stop token, then counted as stopped. The sampler stops at the template's
    end-of-turn only; a tokenizer EOS apart from it (Qwen2.5 base: <|endoftext|> vs <|im_end|>) ends the reply
    wherever the trained model is served (its generation_config.json, `weitiao serve`), so what follows it is
    never shown: not scored, not trained, no missing-EOS penalty. Cutting a draw there is the same as stopping, also
    when the EOS is the last token `generate_max_len` allowed (the sampler, stopping at the end-of-turn only, reports
    that draw as not stopped)."""
    j = next((i for i, tok in enumerate(s.response_ids) if tok in stops), None)
    if j is None or (s.stopped and j == len(s.response_ids) - 1):
        return s
    cut = [None if x is None else x[: j + 1] for x in (s.logps, s.values)]
    return Sampled(s.prompt_ids, s.response_ids[: j + 1], True, *cut)


def reply_text(tokenizer: Any, s: Sampled) -> str:
    """The reply as the reward sees it: every token the policy drew, special ones included, except the stop token
    that ends it (`Sampled` holds no padding). A stray `<|im_start|>` mid-reply stays in the text, so a reward function
    can penalize it; a reward model re-tokenizes the text as its training rows were (template rendered, then tokenized:
    special-token text becomes the special id), so it reads the ids the policy drew wherever the text round-trips (not
    a partial UTF-8 character, which decodes to U+FFFD). A reply with no special token
    decodes as with skip_special_tokens."""
    return tokenizer.decode(s.response_ids[:-1] if s.stopped else s.response_ids, skip_special_tokens=False)


def _allsum(x: torch.Tensor) -> torch.Tensor:
    """Sum over processes, in place (the `reduce` of losses.ppo)."""
    torch.distributed.all_reduce(x)
    return x


def _allreduce_grads(params: list[torch.Tensor], world: int) -> None:
    """Sum gradients over processes: each micro-batch loss is already divided by the global token count."""
    if world > 1:
        for p in params:
            if p.grad is not None:
                torch.distributed.all_reduce(p.grad)


def _rng_states(world: int) -> list[dict]:
    """Every process's RNG state (process i's at index i), so a resumed run continues each stream."""
    if world == 1:
        return [ck.rng_state()]
    states: list = [None] * world
    torch.distributed.all_gather_object(states, ck.rng_state())
    return states


def minibatch_note(p: PPOSpec) -> str | None:
    """What the update does when train_batch_size does not divide the samples a step makes (it was capped unsaid)."""
    samples = p.rollout_batch_size * p.n_samples_per_prompt
    sizes = [min(p.train_batch_size, samples - i) for i in range(0, samples, p.train_batch_size)]
    if len(set(sizes)) == 1 and sizes[0] == p.train_batch_size:
        return None
    return (
        f"note: ppo.train_batch_size {p.train_batch_size} with {samples} samples a step (rollout_batch_size × "
        f"n_samples_per_prompt, per process): each epoch's minibatches hold {', '.join(map(str, sizes))} samples "
        f"({len(sizes)} optimizer step(s) an epoch)"
    )


def run(cfg: PPOConfig) -> dict:
    """Train with PPO; returns the summary (last metrics, cost report, output dir)."""
    p, t = cfg.ppo, cfg.train
    # the continued adapter's r, alpha, ... in the config.yaml it records, and in the critic that takes the actor's
    cfg.lora = lora_continued(lora_as_trained(cfg.lora, t.disable_dropout))
    accel = dist.accelerator(whole="ppo")
    main, world, rank = accel.is_main_process, accel.num_processes, accel.process_index
    reduce = _allsum if world > 1 else None
    torch.manual_seed(t.seed)  # identical adapter init on every process
    random.seed(t.seed)
    out = Path(t.out)
    device = accel.device
    cost = dict.fromkeys(PHASES, 0.0)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()

    # 0. Prompts, tokenizer, template; the reward source; the three roles on one base.
    tokenizer = load_tokenizer(cfg.model.path)
    template = resolve_template(tokenizer, cfg.data.template)
    check_continued(cfg.model.path, cfg.lora, cfg.data.template, tokenizer, template)  # its base and format
    rows = prompt_rows(cfg.data.prompts)
    prompts = [r.messages for r in rows]
    if main and (note := reference_note(rows)):
        print(note)
    if main and (note := minibatch_note(p)):
        print(note)
    # counted as the sampler feeds them: the rendered text alone (a BOS the tokenizer would add is not fed)
    render = [template.render(tokenizer, m, add_generation_prompt=True) for m in prompts]
    lens = [len(ids) for ids in tokenizer(render, add_special_tokens=False)["input_ids"]]
    too_long = sum(n > p.prompt_max_len for n in lens)
    prompts = [m for m, n in zip(prompts, lens) if n <= p.prompt_max_len]
    lens_kept = [n for n in lens if n <= p.prompt_max_len]
    if not prompts:
        raise UserError(f"data.prompts: all {too_long} prompts are longer than ppo.prompt_max_len={p.prompt_max_len}")
    config_yaml = dump_config(cfg)
    # the prompts' content too: edited prompt files at the same paths would change every later step
    digest = hashlib.sha256(json.dumps(prompts, ensure_ascii=False).encode()).hexdigest()[:16]
    fingerprints = ck.input_fingerprints(cfg)  # the reward function's file included
    loop.same_on_every_process(
        accel, cfg, config_yaml, fingerprints, lens, digest, [], data_key="data.prompts", rows="prompts"
    )
    score_fn, reward_model = build_scorer(cfg.reward, device)
    shared = p.critic == "shared"  # a value head on the actor: one forward + backward per update micro-batch
    reward_base = None
    if reward_model is not None and cfg.lora.enabled and p.critic_init != "zeros" and not shared:  # the critic takes
        reward_base = critic_base_difference(cfg.reward.path, cfg.model.path)  # its adapter
    roles = Roles(cfg.model, cfg.lora, device, reward_model, p.critic_init, p.critic_lora, reward_base, shared)
    refuse_untrained_tokens(roles.model, tokenizer, template, main)  # the actor's rows (the critic reads them too)
    context, longest = getattr(roles.model.config, "max_position_embeddings", None), max(lens_kept)
    if context and longest + p.generate_max_len > context:  # past it a RoPE model runs on, silently out of range
        raise UserError(
            f"data.prompts: the longest prompt is {longest} tokens; with ppo.generate_max_len={p.generate_max_len} "
            f"it exceeds the model's context of {context}; set ppo.prompt_max_len={context - p.generate_max_len} "
            "(longer prompts are dropped) or lower ppo.generate_max_len"
        )
    if t.disable_dropout:  # else updates run with dropout and the first minibatch is not π = π_old
        disable_dropout(roles)
    # Scoring and update forwards take each micro-batch packed into one row, no padding, where the attention keeps
    # the samples apart at no extra cost: sdpa → sdpa_packed (causal per sample). Generation is plain sdpa still.
    models = [m for m in (roles.model, roles.ref_model, roles.critic_model) if m is not None]
    pack = all(packed_attention.enable(m) or packed_attention.active(m) for m in models)
    if p.old_logprobs == "rollout" and (dtype := roles.model.get_input_embeddings().weight.dtype) != torch.float32:
        raise UserError(
            f"ppo.old_logprobs: rollout needs a float32 model, this one computes in {dtype} (a KV-cached decode then "
            "differs from a full forward by far more than rounding, which biases the ratio); use recompute"
        )
    if world > 1:
        torch.manual_seed(t.seed + rank)  # then each process samples its own replies
    # every id the trained actor is saved to stop at (final/: generation_config.json), not the end-of-turn only
    stops = set(stop_ids(tokenizer, template, roles.model.generation_config.eos_token_id))
    if reward_model is not None and p.critic_init != "zeros":
        reward_model.eval()
    # shared: one optimizer over the actor and its value head (critic_params: the head alone), clipped jointly
    joint = roles.actor_params + roles.critic_params
    opts = (
        {"optimizer": torch.optim.AdamW(joint, lr=p.actor_learning_rate)}
        if shared
        else {
            "actor_optimizer": torch.optim.AdamW(roles.actor_params, lr=p.actor_learning_rate),
            "critic_optimizer": torch.optim.AdamW(roles.critic_params, lr=p.critic_learning_rate),
        }
    )
    kl_ctl = ppo_losses.AdaptiveKL(p.init_kl_coef, p.kl_target, p.kl_horizon)
    moments = RunningMoments()
    models_held = {
        "base copies": (1 if roles.lora else 2 if shared else 3),
        "adapters": ", ".join(["actor"] + ["reference"] * roles.has_ref_adapter + ["critic"] * (not shared))
        if roles.lora
        else "none (full)",
        "critic": "value head on the actor" if shared else "own trunk + value head",
        "reward model": "separate" if reward_model is not None else cfg.reward.kind,
    }

    # Resume: actor + critic adapters (shared: the actor's), value head, the optimizer(s), β, reward moments, RNG,
    # position.
    steps_per_episode = math.ceil(len(prompts) / (p.rollout_batch_size * world))
    data_steps = steps_per_episode * t.num_episodes
    total_steps = min(t.max_steps or data_steps, data_steps)
    if main and t.max_steps and t.max_steps > data_steps:
        print(
            f"ppo: train.max_steps={t.max_steps} capped at {data_steps} steps by the data: {len(prompts)} prompts / "
            f"(ppo.rollout_batch_size={p.rollout_batch_size} × {world} processes) × train.num_episodes={t.num_episodes}"
        )
    state: dict[str, Any] = {"step": 0, "samples": 0}
    inputs = {**fingerprints, "data.prompts": digest}
    plan = prompt_plan(digest, len(prompts), p.rollout_batch_size, world)
    # A changed config, model, prompts or number of processes is refused (each process's prompt share depends on it),
    # and so is a checkpoint with no step left: all before anything in `out` moves or is written.
    ckpt = ck.open_run(
        out, t.resume, config_yaml, main, inputs, world, dist.gather_objects, schedule=False, write=False, move=False
    )
    history: list[dict] = []  # per step: HACKING_KEYS of its metrics
    if ckpt is not None:
        saved = ck.saved_state(ckpt)
        note = check_resume(ckpt, saved, plan, total_steps, t.resume == "force")
        if (was := saved.get("critic", "separate")) != p.critic:  # its weights and optimizers differ
            raise UserError(f"train.resume: {ckpt} was trained with ppo.critic: {was}, this run sets {p.critic} (other "
                            f"weights and optimizers, even under force); set ppo.critic: {was}, or train.resume=none "
                            "(or another train.out) for a new run")  # fmt: skip
        history = hacking_history(ckpt, saved, t.hacking_window, t.resume == "force")
        if main and note:
            print(note)
    else:
        ck.set_aside(out, main)
    accel.wait_for_everyone()  # the previous run is aside before any process writes into `out`
    ck.record(out, t.resume, config_yaml, main, inputs, ckpt)
    spent, peak_before, counted_from = 0.0, 0.0, (0, 0)  # the cost report covers the run's steps from counted_from
    if ckpt is not None:
        state = {"samples": 0, **_load(ckpt, roles, opts, kl_ctl, moments)}
        if (saved_cost := state.pop("cost", None)) is not None:  # the steps before the checkpoint: their seconds
            cost.update({k: saved_cost[k] for k in PHASES})
            spent, peak_before = saved_cost["total_s"], saved_cost["peak_memory_gib"]
        else:  # a checkpoint from before the cost was kept: the report counts this invocation's steps only
            counted_from = (state["step"], state["samples"])
        state.pop("hacking_history", None)  # `history`, read above
        rngs = state.pop("rng")
        rngs = [rngs] if isinstance(rngs, dict) else rngs  # older checkpoints hold process 0's only
        if len(rngs) == world:
            ck.set_rng_state(rngs[rank])  # each process continues its own sampling stream
        else:  # train.resume=force (open_run refuses it otherwise); check_resume said what shifts
            torch.manual_seed(t.seed + rank + 1000 * state["step"])
    state.update(plan, critic=p.critic)  # this run's prompts (after a forced resume on others, these)
    if main:
        print(
            f"ppo: {len(prompts)} prompts ({too_long} over prompt_max_len dropped) · {total_steps} steps · "
            f"reward {cfg.reward.kind} · "
            + ("critic shared (value head on the actor)" if shared else f"critic init {p.critic_init}")
            + (f" → {roles.critic_init}" if p.critic_init == "auto" and not shared else "")
            + f" · β={kl_ctl.beta} · models {models_held}"
        )
    log = MetricsLog(out, main, t.tensorboard, t.report_to, config_yaml, state["step"] if ckpt is not None else None)
    if ckpt is None:  # once per run, as SFT, DPO and RM write it (calc plan --calibrate reads `world` from it)
        trainable = sum(x.numel() for x in joint)
        log.log("data", 0, read=len(prompts) + too_long, kept=len(prompts), dropped_too_long=too_long,
                template=template.name, trainable_params=trainable, world=world)  # fmt: skip
    state["hacking_history"] = history  # saved with every checkpoint
    bar = progress_bar(t.progress and main, t.progress_every_s)
    task = bar.add_task("ppo", total=total_steps, completed=state["step"], info="")
    started = time.time()
    metrics: dict[str, float] = {}
    with ck.resume_hint(out, t, lambda: state["step"], main), bar:  # the bar closes before the line
        while state["step"] < total_steps:
            step = state["step"]
            episode, k = divmod(step, steps_per_episode)
            order = list(range(len(prompts)))  # a fresh seeded shuffle per episode, so resume lands on the same prompts
            random.Random(t.seed + episode).shuffle(order)
            batch_prompts, weights = step_prompts(
                prompts, order, k, p.rollout_batch_size, world, rank, p.n_samples_per_prompt
            )
            sample_w = torch.tensor(weights, device=device)

            # 1. Sample replies from the actor from exactly softmax(logits / T) (nothing from the
            #    model folder's generation_config.json), the distribution step 3 scores; cut after the first
            #    end-of-turn or EOS token (any id the saved actor stops at).
            t0 = time.time()
            roles.eval()
            from_decode = shared and p.old_logprobs == "rollout"  # values too from the decode's hidden states
            reader = _value_reader(roles) if from_decode else None  # before merging: it selects the actor's adapter
            with rollout_actor(roles, p.merge_rollout) as actor:
                samples = generate_ids(
                    actor, tokenizer, template, batch_prompts, p.generate_max_len, p.temperature,
                    top_p=1.0, top_k=0, batch_size=p.micro_rollout_batch_size, model_defaults=False,
                    logps=p.old_logprobs == "rollout", values=reader,
                )  # fmt: skip
            samples = [cut_at_stop(s, stops) for s in samples]
            cost["rollout_s"] += time.time() - t0

            # 2. Scores: reward source, missing-EOS penalty, optional normalization and clipping.
            t0 = time.time()
            texts = [reply_text(tokenizer, s) for s in samples]
            raw = torch.tensor(score_real(score_fn, batch_prompts, texts, weights), dtype=torch.float32, device=device)
            stopped = torch.tensor([s.stopped for s in samples], device=device)
            score = raw.clone()
            if p.missing_eos_penalty is not None:
                score[~stopped] -= p.missing_eos_penalty
            if p.normalize_reward:
                moments.update(score, sample_w, reduce)
                score = (score - moments.mean) / math.sqrt(moments.var + 1e-8)
            if p.reward_clip_range is not None:
                score = score.clamp(-p.reward_clip_range, p.reward_clip_range)
            cost["reward_s"] += time.time() - t0

            # 3. Old log-probs (actor; or the sampler's own), reference log-probs, values (critic; shared: the
            #    actor's hidden states, from the decode with the sampler's log-probs, else from the old log-probs'
            #    forward) — all without gradients.
            roll = build_rollout(samples, tokenizer.pad_token_id, device, weights)
            lmask = roll.lmask  # padding samples count nowhere below
            old_logp, ref_logp, old_v = (torch.zeros_like(roll.mask) for _ in range(3))
            if p.old_logprobs == "rollout":  # π_old as sampled (tests: within 2e-5 of the recomputed ones)
                old_logp = _padded([s.logps for s in samples], device)
            if from_decode:
                old_v = _padded([s.values for s in samples], device) * roll.mask
            with torch.no_grad():
                for c in range(0, len(samples), p.micro_rollout_batch_size):
                    idx = list(range(c, min(c + p.micro_rollout_batch_size, len(samples))))
                    b = roll.select(idx, pack)
                    w = b.mask.shape[1]
                    t0 = time.time()
                    if p.old_logprobs == "recompute" and shared:
                        old_logp[idx, :w], _, old_v[idx, :w] = actor_logps_values(roles, b, p.temperature, False)
                    elif p.old_logprobs == "recompute":
                        old_logp[idx, :w] = token_logps(roles, "actor", b, p.temperature, entropy=False)[0]
                    t1 = time.time()
                    if not shared:
                        old_v[idx, :w] = token_values(roles, b)
                    t2 = time.time()
                    ref_logp[idx, :w] = token_logps(roles, "reference", b, p.temperature, entropy=False)[0]
                    cost["reference_s"] += time.time() - t2
                    cost["logprobs_s"] += t1 - t0
                    cost["values_s"] += t2 - t1

            # 4. Per-token rewards: −β·KL everywhere, the score at the last response token.
            t0 = time.time()
            kl = ppo_losses.kl_per_token(old_logp, ref_logp, p.kl_estimator) * roll.mask
            rewards = ppo_losses.token_rewards(score, kl, roll.mask, kl_ctl.beta)

            # 5. GAE; returns = A + V before whitening; advantage whitening over every process's tokens.
            adv, returns = ppo_losses.gae(rewards, old_v, lmask, p.gamma, p.lambd)
            if p.whiten_advantages:
                adv = ppo_losses.whiten(adv, lmask, reduce=reduce)
            cost["advantages_s"] += time.time() - t0

            # 6. PPO epochs: shuffled minibatches; actor and critic step separately (shared: one forward, backward
            #    and step of policy + vf_coef · value loss). Each micro-batch loss is weighted by its share of the
            #    minibatch's tokens on all processes, and the gradients are summed: the token mean of one process
            #    holding every sample.
            t0 = time.time()
            roles.train()
            upd: dict[str, float] = {}
            first: dict[str, float] = {}
            n_mb = 0
            for _ in range(p.max_epochs):
                perm = torch.randperm(len(samples)).tolist()
                for m0 in range(0, len(perm), p.train_batch_size):
                    mb = perm[m0 : m0 + p.train_batch_size]
                    mb_tokens = lmask[mb].sum().double()
                    mb_tokens = float((reduce(mb_tokens) if reduce else mb_tokens).clamp_min(1))
                    sums: dict[str, float] = {}
                    for u0 in range(0, len(mb), p.micro_train_batch_size):
                        idx = mb[u0 : u0 + p.micro_train_batch_size]
                        b = roll.select(idx, pack)
                        width, bm = b.mask.shape[1], b.lmask
                        share = float(bm.sum()) / mb_tokens
                        if shared:
                            logp, ent, v = actor_logps_values(roles, b, p.temperature)
                        else:
                            logp, ent = token_logps(roles, "actor", b, p.temperature)
                        pg, st = ppo_losses.policy_loss(logp, old_logp[idx, :width], adv[idx, :width], bm, p.eps_clip)
                        entropy = ppo_losses.masked_mean(ent, bm)
                        # without a bonus the entropy is only a metric: no backward through it (same gradients)
                        bonus = p.entropy_loss_coef * entropy if p.entropy_loss_coef else 0.0
                        if not shared:
                            ((pg - bonus) * share).backward()
                            v = token_values(roles, b)
                        vf, vst = ppo_losses.value_loss(v, old_v[idx, :width], returns[idx, :width], bm, p.value_clip)
                        if shared:
                            ((pg - bonus + p.vf_coef * vf) * share).backward()
                        else:
                            (p.vf_coef * vf * share).backward()
                        for key, val in {**st, **vst, "policy_loss": pg, "value_loss": vf, "entropy": entropy}.items():
                            sums[key] = sums.get(key, 0.0) + float(val.detach()) * share
                    _allreduce_grads(roles.actor_params, world)
                    _allreduce_grads(roles.critic_params, world)
                    if reduce:
                        keys = sorted(sums)
                        sums = dict(zip(keys, reduce(torch.tensor([sums[k] for k in keys], device=device)).tolist()))
                    # over the minibatch's tokens on every process, not a mean of the micro-batches' own variances
                    # (which left out the spread between them: 0.017 for 0.088 with micro_train_batch_size 1 of 2)
                    sums["ratio_var"] = ppo_losses.pooled_var(
                        sums.pop("ratio_dev"), sums.pop("ratio_dev_sq"), mb_tokens
                    )
                    clipped = {"grad_norm": joint} if shared else {
                        "actor_grad_norm": roles.actor_params, "critic_grad_norm": roles.critic_params}  # fmt: skip
                    for key, params in clipped.items():
                        sums[key] = float(torch.nn.utils.clip_grad_norm_(params, p.max_norm))
                    # Identical on every process (all summed): all stop together, before a bad update.
                    ensure_finite(
                        step + 1,
                        "lower ppo.actor_learning_rate"
                        + ("" if shared else " / ppo.critic_learning_rate")
                        + ", check the rewards, or set ppo.max_norm",
                        **{k: sums[k] for k in ("policy_loss", "value_loss", *clipped)},
                    )
                    for opt in opts.values():
                        opt.step()
                        opt.zero_grad(set_to_none=True)
                    if not first:
                        first = {f"first_{k}": sums[k] for k in ("ratio_mean", "approx_kl", "clipfrac")}
                    for key, val in sums.items():
                        upd[key] = upd.get(key, 0.0) + val
                    n_mb += 1
            roles.eval()
            cost["update_s"] += time.time() - t0

            # 7. Adaptive β, metrics (means over all real samples), samples, reward-hacking check, checkpoint.
            seq_kl = kl.sum(1)
            lengths = roll.mask.sum(1)
            stats = torch.stack(
                [raw, score, score - kl_ctl.beta * seq_kl, seq_kl, lengths, stopped.float(), torch.ones_like(raw)]
            ) @ sample_w  # fmt: skip
            if reduce:
                reduce(stats)
            n_real = int(stats[-1])
            stats = stats[:-1] / n_real
            state["samples"] += n_real
            beta_used = kl_ctl.beta
            kl_ctl.update(float(stats[3]), n_real)
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
                "explained_variance": ppo_losses.explained_variance(old_v, returns, lmask, reduce),
                "advantage_mean": float(ppo_losses.masked_moments(adv, lmask, reduce)[0]),
                "return_mean": float(ppo_losses.masked_moments(returns, lmask, reduce)[0]),
            }
            state["step"] = step + 1
            loop.add_step(state, metrics)  # the summary's run means (train_*), checkpointed with the state
            history.append({k: metrics[k] for k in HACKING_KEYS})
            log.log("train", state["step"], **metrics)
            if main and t.sample_every and state["step"] % t.sample_every == 0:
                shown = [
                    {"prompt": m[-1]["content"], "reply": x, "score": float(s)}
                    for m, x, s, keep in list(zip(batch_prompts, texts, raw, weights))[:4]
                    if keep
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
            if last or (t.save_every and state["step"] % t.save_every == 0):
                rngs = _rng_states(world)  # a collective: every process takes part
                state["cost"] = {**cost, "total_s": spent + time.time() - started,
                                 "peak_memory_gib": max(peak_before, _peak_gib())}  # fmt: skip
                if main:
                    _save(out, state, roles, opts, kl_ctl, moments, rngs, t.keep_last)
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
    # seconds, samples and steps of the same steps: a resumed run's whole (its checkpoint kept the earlier seconds)
    report = {
        **{k: round(v, 6) for k, v in cost.items()},  # µs: a function reward over a few replies is well under 1 ms
        "total_s": round(spent + time.time() - started, 3),
        "peak_memory_gib": round(max(peak_before, _peak_gib()), 3),
        "peak_memory_kind": "cuda allocated" if torch.cuda.is_available() else "process RSS",
        "models_held": models_held,
        "steps": state["step"] - counted_from[0],
        "samples": state["samples"] - counted_from[1],
    }
    # as SFT/DPO/RM: train_X the mean over the run's steps, last_train_X the last step's (was X, unprefixed)
    summary = {"out": str(out), "steps": state["step"], **loop.run_means(state, metrics), "cost": report}
    if main:
        final = out / "final"
        _save_weights(roles, final)
        gen = roles.model.generation_config
        actor = final / ("adapter" if roles.lora else "model")
        write_generation_config(actor, gen, stop_ids(tokenizer, template, gen.eos_token_id))
        if not roles.lora:
            legacy_config_keys(actor)
        save_tokenizer(tokenizer, template, final / "tokenizer")
        atomic_write_text(final / "chat_template.jinja", template.standalone())
        write_jsonl(out / "cost.jsonl", [report])
        log.log("done", state["step"], **{k: v for k, v in summary.items() if isinstance(v, (int, float))})
    log.close()
    accel.wait_for_everyone()
    return summary


def _peak_gib() -> float:
    """Peak memory so far: CUDA allocated, else the process's peak RSS."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _save_weights(roles: Roles, dest: Path) -> None:
    """actor → adapter/ (or model/), critic → critic/ (none when shared), value head → value_head.safetensors."""
    from safetensors.torch import save_file

    if roles.lora:
        roles.model.save_pretrained(dest / "adapter", selected_adapters=["default"])
        if not roles.shared_critic:
            roles.model.save_pretrained(dest / "critic", selected_adapters=["critic"])
    else:
        roles.model.save_pretrained(dest / "model")
        if not roles.shared_critic:
            roles.critic_model.save_pretrained(dest / "critic")
    save_file({"weight": roles.value_head.weight.detach().contiguous()}, str(dest / "value_head.safetensors"))


def _save(out: Path, state: dict, roles: Roles, opts: dict, kl_ctl, moments, rngs: list, keep_last: int) -> None:
    """`opts`: {"actor_optimizer", "critic_optimizer"}, or {"optimizer"} of the shared critic."""

    def fill(tmp: Path) -> None:
        _save_weights(roles, tmp)
        extra = {"beta": kl_ctl.beta, "moments": vars(moments), "rng": rngs}
        torch.save({**state, **{k: o.state_dict() for k, o in opts.items()}, **extra}, tmp / ck.STATE_FILE)

    ck.write_checkpoint(out, state["step"], fill, keep_last)


def _load(ckpt: Path, roles: Roles, opts: dict, kl_ctl, moments) -> dict:
    from safetensors.torch import load_file

    if roles.lora:
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(roles.model, load_file(str(ckpt / "adapter" / "adapter_model.safetensors")))
        if not roles.shared_critic:
            critic = load_file(str(ckpt / "critic" / "critic" / "adapter_model.safetensors"))
            set_peft_model_state_dict(roles.model, critic, adapter_name="critic")
        roles.model.base_model.set_adapter("default")
    else:
        from transformers import AutoModelForCausalLM

        roles.model.load_state_dict(AutoModelForCausalLM.from_pretrained(ckpt / "model").state_dict())
        if not roles.shared_critic:
            roles.critic_model.load_state_dict(AutoModelForCausalLM.from_pretrained(ckpt / "critic").state_dict())
    roles.value_head.weight.data.copy_(load_file(str(ckpt / "value_head.safetensors"))["weight"])
    state = torch.load(ckpt / ck.STATE_FILE, weights_only=False)
    for key, opt in opts.items():
        opt.load_state_dict(state.pop(key))
    kl_ctl.beta = state.pop("beta")
    vars(moments).update(state.pop("moments"))
    return state  # "rng": the RNG states of every process, restored by the caller
