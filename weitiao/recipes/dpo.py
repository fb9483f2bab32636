"""Direct preference optimization (sigmoid/ipo/hinge, label smoothing, RPO), one run top to bottom.

    weitiao dpo examples/demo_dpo.yaml dpo.beta=0.1
    weitiao dpo examples/demo_dpo.yaml --sweep beta=0.01,0.1,0.5

Steps: 1. pairs → tokens (shared prompt tokens, loss on replies only) → 2. policy (LoRA or full)
and reference (the same base with the adapter disabled; the starting adapter, frozen, with
lora.init_from; a frozen copy for full tuning; or log-probs precomputed once and cached) →
3. resume → 4. loop: chosen and rejected of each pair packed into one forward, per-sequence
log-probs by segment sums, loss, metrics, eval, checkpoint → 5. save.

Pairs are packed padding-free like SFT rows: both sides of a pair sit in the same row, positions
restart per sequence, so log-probs equal those of separate forwards (tested; checked at start).
Metrics: `margins` are β-scaled; `logp_gap` is the unscaled (log π − log π_ref)(chosen) − (same)(rejected);
`kl_offpolicy_data` is the per-token k3 term exp(r)−1−r, r = log π_ref − log π, on the *data's* reply
tokens — not a KL of the policy (rejected replies the policy learned to avoid dominate it). Eval adds
the on-policy KL(π‖π_ref): replies sampled from π (temperature 1, `dpo.kl_max_new_tokens` tokens),
Σ(log π − log π_ref) over the sampled tokens, per sequence (`kl_onpolicy_seq`) and per token.
"""

from __future__ import annotations

import hashlib
import json
from collections import deque
from pathlib import Path
from typing import Any

import torch

from weitiao.data.chat import IGNORE, Encoded
from weitiao.data.collate import Batch, collate, n_targets, process_share
from weitiao.data.preference import pair_rows
from weitiao.data.templates import ChatTemplate
from weitiao.errors import UserError
from weitiao.losses.preference import LENGTH_AVERAGED, dpo_terms, k3_kl
from weitiao.losses.sft import CausalLMLoss
from weitiao.models.continued import check_continued
from weitiao.models.load import (
    build_trainable,
    count_params,
    load_tokenizer,
    lora_as_trained,
    lora_continued,
    resolve_path,
)
from weitiao.models.reward_dir import RAW
from weitiao.recipes.configs import DPOConfig, DPOSpec, DPOTrainSpec  # noqa: F401  (re-exported)
from weitiao.train import dist, loop
from weitiao.train.log import places
from weitiao.train.pairs import PrefData, check_pair_model, prepare_pairs
from weitiao.train.reference import Reference, check_reference_tokenizer, reference_model, sequence_logps

METRICS = ("loss", "rewards/chosen", "rewards/rejected", "margins", "accuracy", "logps/chosen", "logps/rejected")
# Sums every micro-step returns (evaluate() starts from zeros for these, so a rank without pairs still reduces).
SUM_KEYS = (
    "loss_sum",
    "rewards/chosen_sum",
    "rewards/rejected_sum",
    "margins_sum",
    "accuracy_sum",
    "logp_gap_sum",
    "logps/chosen_sum",
    "logps/rejected_sum",
    "kl_offpolicy_data_sum",
    "tokens",
    "nll_chosen_sum",
    "chosen_tokens",
    "pairs",
    "weight_sum",
)


def _files_identity(path: str | None) -> Any:
    """What identifies weights on disk: (name, size, mtime) of each file; content hash for small files."""
    if not path:
        return None
    root = Path(resolve_path(path))
    if not root.is_dir():
        return path  # a hub id: the name is all we know here
    files = []
    for f in sorted(x for x in root.rglob("*") if x.is_file() and "checkpoints" not in x.parts):
        st = f.stat()
        digest = hashlib.sha256(f.read_bytes()).hexdigest() if st.st_size < 64 << 20 else st.st_mtime_ns
        files.append([str(f.relative_to(root)), st.st_size, digest])
    return {"path": str(root.resolve()), "files": files}


def cache_key(cfg: DPOConfig, template: ChatTemplate, examples: list[Encoded]) -> dict[str, Any]:
    """Everything the reference log-probs depend on, one entry per part (named when a part changes)."""
    d, m = cfg.dpo, cfg.model
    kind = "model" if d.reference or not cfg.lora.enabled else "adapter" if cfg.lora.init_from else "no-adapter"
    data = hashlib.sha256()
    for e in examples:
        data.update(json.dumps([e.input_ids, e.labels]).encode())
    return {
        "model": {"weights": _files_identity(m.path), "dtype": m.dtype, "quant": m.quant},
        "reference": {"kind": kind, "weights": _files_identity(d.reference)},
        "adapter": _files_identity(cfg.lora.init_from),
        "template": template.jinja,
        "max_len": [cfg.data.max_len, cfg.data.truncation],
        "data": data.hexdigest(),
    }


def pair_step(
    loss_mod: Any, ref: Reference, b: Batch, order: list[int], cfg: DPOConfig, weights: list[float] | None = None
) -> dict[str, torch.Tensor]:
    """Loss sums and metric sums for one micro-batch of pairs (order alternates chosen, rejected);
    `weights` (per pair of the data) scale each pair's loss, and `weight_sum` is what to divide by."""
    d = cfg.dpo
    n = len(order)
    tok, sums, counts = sequence_logps(loss_mod, b, n)
    ref_tok = ref.token_logps(b, order).to(tok.dtype)
    seq = b.seq_index[b.targets != IGNORE]
    ref_sums = torch.zeros_like(sums).index_add(0, seq, ref_tok)
    loss, m = dpo_terms(sums[0::2], sums[1::2], ref_sums[0::2], ref_sums[1::2], d.beta, d.loss_type, d.label_smoothing)
    if d.loss_type in LENGTH_AVERAGED:  # the loss on per-token means; rewards, margins, accuracy stay on sums (TRL)
        pol, rfs = sums / counts.clamp_min(1), ref_sums / counts.clamp_min(1)
        loss, _ = dpo_terms(pol[0::2], pol[1::2], rfs[0::2], rfs[1::2], d.beta, d.loss_type, d.label_smoothing)
    w = torch.ones_like(loss) if weights is None else loss.new_tensor([weights[i // 2] for i in order[0::2]])
    out = {"loss_sum": (w * loss).sum(), "weight_sum": w.sum(), **{f"{k}_sum": v.sum() for k, v in m.items()}}
    gap = (sums - ref_sums).detach()
    out["logp_gap_sum"] = (gap[0::2] - gap[1::2]).sum()
    out["logps/chosen_sum"] = sums[0::2].detach().sum()
    out["logps/rejected_sum"] = sums[1::2].detach().sum()
    out["kl_offpolicy_data_sum"] = k3_kl(tok.detach(), ref_tok).sum()
    out["tokens"] = counts.sum()
    out["nll_chosen_sum"] = -(w * sums[0::2]).sum()  # RPO's NLL weighted as the pair's DPO term: weight 0 drops it
    out["chosen_tokens"] = (w * counts[0::2]).sum()
    out["pairs"] = torch.tensor(float(n // 2), device=tok.device)
    return out


def _means(sums: dict[str, torch.Tensor], prefix: str = "", rpo_alpha: float = 0.0) -> dict[str, float]:
    """Per-pair means of the summed metrics; `loss` is the objective trained on: with RPO the DPO term (`loss_dpo`)
    plus α × the chosen replies' per-token NLL (`nll_chosen`)."""
    pairs = max(1.0, float(sums["pairs"]))
    per_token = {"kl_offpolicy_data_sum", "kl_onpolicy_sum", "nll_chosen_sum"}
    out = {prefix + k[:-4]: float(v) / pairs for k, v in sums.items() if k.endswith("_sum") and k not in per_token}
    out[prefix + "loss"] = float(sums["loss_sum"]) / max(1e-12, float(sums["weight_sum"]))  # weighted mean
    if rpo_alpha:
        out[prefix + "nll_chosen"] = float(sums["nll_chosen_sum"]) / max(1e-12, float(sums["chosen_tokens"]))
        out[prefix + "loss_dpo"] = out[prefix + "loss"]
        out[prefix + "loss"] += rpo_alpha * out[prefix + "nll_chosen"]
    out[prefix + "kl_offpolicy_data"] = float(sums["kl_offpolicy_data_sum"]) / max(1.0, float(sums["tokens"]))
    if "kl_onpolicy_sum" in sums:
        out[prefix + "kl_onpolicy_seq"] = float(sums["kl_onpolicy_sum"]) / max(1.0, float(sums["kl_onpolicy_seqs"]))
        out[prefix + "kl_onpolicy_tok"] = float(sums["kl_onpolicy_sum"]) / max(1.0, float(sums["kl_onpolicy_tokens"]))
    return out


def prompt_ids(ex: Encoded) -> list[int]:
    """The prompt tokens of an encoded pair side (everything before the first labelled token)."""
    return ex.input_ids[: next(i for i, x in enumerate(ex.labels) if x != IGNORE)]


@torch.no_grad()
def sample_replies(
    model: Any,
    prompts: list[list[int]],
    eot_id: int,
    pad_id: int,
    max_new_tokens: int,
    seeds: list[int],
    synced: bool = False,
) -> list[list[int]]:
    """One reply per prompt sampled from the model's own distribution (temperature 1, no top-k/top-p),
    cut after the end-of-turn token; prompt i is sampled under torch seed seeds[i] (so samples do not
    depend on how prompts are split across processes) and the global RNG is left as it was. `synced`:
    every process keeps stepping until all are done (all call this with the same number of prompts)."""
    device = next(model.parameters()).device
    out: list[list[int]] = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for p, seed in zip(prompts, seeds):  # one at a time: no padding, so nothing but π decides the samples
            torch.manual_seed(seed)
            gen = model.generate(
                input_ids=torch.tensor([p], device=device),
                attention_mask=torch.ones(1, len(p), dtype=torch.long, device=device),
                do_sample=True,
                temperature=1.0,
                top_k=0,
                top_p=1.0,
                min_p=None,
                repetition_penalty=1.0,
                max_new_tokens=max_new_tokens,
                eos_token_id=eot_id,
                pad_token_id=pad_id,
                use_cache=True,
                synced_gpus=synced,
            )[0, len(p) :].tolist()
            out.append(gen[: gen.index(eot_id) + 1] if eot_id in gen else gen)
    return out


@torch.no_grad()
def onpolicy_kl_sums(
    loss_mod: Any,
    ref: Reference,
    model: Any,
    prompts: list[list[int]],
    cfg: DPOConfig,
    ids: dict,
    accel: Any,
    n_real: int | None = None,
    seeds: list[int] | None = None,
) -> dict[str, torch.Tensor]:
    """Σ over sampled reply tokens of log π − log π_ref (the k1 estimate of KL(π‖π_ref), unbiased for
    samples from π), with the sequence and token counts. Prompts after the first `n_real` are fillers
    that keep processes in step and are not counted."""
    dev = accel.device
    n_real = len(prompts) if n_real is None else n_real
    zero = torch.zeros((), dtype=torch.float64, device=dev)
    sums = {"kl_onpolicy_sum": zero, "kl_onpolicy_seqs": zero.clone(), "kl_onpolicy_tokens": zero.clone()}
    if not prompts:
        return sums
    synced = accel.num_processes > 1 and torch.distributed.is_initialized()
    seeds = seeds or [cfg.train.seed + i for i in range(len(prompts))]
    replies = sample_replies(model, prompts, ids["eot"], ids["pad"], cfg.dpo.kl_max_new_tokens, seeds, synced)
    exs = [Encoded(p + r, [IGNORE] * len(p) + r) for p, r in zip(prompts, replies)]  # r has ≥ 1 token
    mb = cfg.train.micro_batch_size
    for k in range(0, len(exs), mb):
        rows = [[i] for i in range(k, min(k + mb, len(exs)))]
        b = collate(exs, rows, ids["pad"], cfg.data.packing, ids["one_row"]).to(dev)
        diff = loss_mod(b.input_ids, b.targets, b.position_ids, b.attention_mask, per_token=True).double()
        diff = diff - ref.token_logps(b, [i for row in rows for i in row]).double()
        real = (b.seq_index[b.targets != IGNORE] + k) < n_real
        sums["kl_onpolicy_sum"] += diff[real].sum()
        sums["kl_onpolicy_tokens"] += real.sum()
    sums["kl_onpolicy_seqs"] += n_real
    return sums


@torch.no_grad()
def evaluate(
    loss_mod,
    ref: Reference,
    examples: list[Encoded],
    cfg: DPOConfig,
    ids: dict,
    accel,
    model: Any = None,
    weights: list[float] | None = None,
) -> dict:
    """Held-out metrics, `weights` (per pair, data.weight_field) weighting them as in training; pairs are split
    across processes by index, and with `model` and
    dpo.kl_max_new_tokens > 0 the on-policy KL on the eval prompts. Every process runs the same number
    of forwards (DDP/FSDP forwards are collective): one with fewer pairs runs pair 0 as an uncounted filler."""
    if not examples:
        return {}
    loss_mod.eval()
    n_pairs = len(examples) // 2
    mine, per_process = process_share(n_pairs, accel.process_index, accel.num_processes)
    mb = cfg.train.micro_batch_size
    total = {k: torch.zeros((), dtype=torch.float64, device=accel.device) for k in SUM_KEYS}
    for k in range(0, per_process, mb):
        chunk = mine[k : k + mb]
        rr = pair_rows([[i] for i in chunk or [0]], cfg.data.packing)
        b = collate(examples, rr, ids["pad"], cfg.data.packing, ids["one_row"]).to(accel.device)
        sums = pair_step(loss_mod, ref, b, [i for row in rr for i in row], cfg, weights)
        for key, v in sums.items() if chunk else ():
            total[key] = total[key] + v.detach().double()
    if model is not None and cfg.dpo.kl_max_new_tokens:
        padded = mine + [0] * (per_process - len(mine))
        prompts = [prompt_ids(examples[2 * i]) for i in padded]
        seeds = [cfg.train.seed + i for i in padded]
        total.update(onpolicy_kl_sums(loss_mod, ref, model, prompts, cfg, ids, accel, len(mine), seeds))
    keys = sorted(total)
    vec = accel.reduce(torch.stack([total[k] for k in keys]), reduction="sum")
    loss_mod.train()
    return _means(dict(zip(keys, vec)), "eval_", cfg.dpo.rpo_alpha)


class FallingChosen:
    """Notices when the chosen replies' log-probs fell `n` steps in a row (DPO pushing both replies down)."""

    def __init__(self, n: int):
        self.seen: deque = deque(maxlen=max(2, n))
        self.warned = False

    def update(self, logp_chosen: float) -> str | None:
        """The warning, once, at the step that completes such a run; else None."""
        self.seen.append(logp_chosen)
        s = list(self.seen)
        if self.warned or len(s) < self.seen.maxlen or not all(a > b for a, b in zip(s, s[1:])):
            return None
        self.warned = True
        d = places(lambda n: f"{s[0]:.{n}f}" != f"{s[-1]:.{n}f}", 2)  # -42.1301 → -42.1303 read -42.13 → -42.13
        return (
            f"chosen log-probs fell for {len(s)} steps in a row ({s[0]:.{d}f} → {s[-1]:.{d}f}): "
            "both replies are being pushed down; consider dpo.rpo_alpha > 0 or a lower lr"
        )


def run(cfg: DPOConfig) -> dict:
    """Train with DPO; returns the summary with the last eval metrics."""
    t, d = cfg.train, cfg.dpo
    cfg.lora = lora_continued(lora_as_trained(cfg.lora, t.disable_dropout))
    accel = dist.accelerator(cfg.model)
    main = accel.is_main_process
    torch.manual_seed(t.seed)
    out = Path(t.out)

    # 1. Pairs → tokens.
    tokenizer = load_tokenizer(cfg.model.path)
    opened = loop.open_run(out, t, cfg, accel)  # refused on a changed config; `out` unchanged until loop.start
    with opened:  # a refusal before loop.start removes the staged rejects files
        data = prepare_pairs(cfg, tokenizer, rejects_dir=opened.staged)
        check_continued(
            cfg.model.path, cfg.lora, cfg.data.template, tokenizer, None if cfg.data.format == RAW else data.template
        )
        pairs = data.pair_lengths(), data.content_key, data.eval, data.weights, data.eval_weights
        loop.same_on_every_process(accel, cfg, opened.config_yaml, opened.inputs, *pairs)
        loop.refuse_eval_without_data(cfg.train, bool(data.eval))
        kl_default = DPOSpec.model_fields["kl_max_new_tokens"].default  # the default: set or not, nothing to say
        if not data.eval and cfg.dpo.kl_max_new_tokens not in (0, kl_default):
            raise UserError(
                f"dpo.kl_max_new_tokens={cfg.dpo.kl_max_new_tokens} samples eval prompts for the on-policy KL, and "
                "there is no eval data: it would be ignored; set data.eval or data.eval_split, or drop "
                "dpo.kl_max_new_tokens"
            )
        pad_id = tokenizer.pad_token_id
        world = accel.num_processes
        lr = t.default_lr(cfg.lora.enabled)
        evals = loop.eval_digest(data.eval, data.eval_weights)
        plan = loop.EpochPlan(pairs[0], 2 * cfg.data.max_len, cfg.data.packing, t, world, data.content_key, evals)
        total = plan.total_steps(opened.state, cfg.data.train, cfg.data.eval)

        # 2. Policy, reference, optimizer. Packed rows must stay apart under the chosen attention: checked.
        check_reference_tokenizer("dpo.reference", d.reference, tokenizer)
        model = build_trainable(cfg.model, cfg.lora, accel.device)
        one_row = check_pair_model(model, tokenizer, data, cfg.data, t.disable_dropout, accel.device, main)
        # The on-policy KL's samples stop where replies were trained to: raw text pairs end with EOS, not the
        # template's end-of-turn.
        eot = tokenizer.eos_token_id if cfg.data.format == RAW else tokenizer.convert_tokens_to_ids(data.template.eot)
        ids = {"pad": pad_id, "eot": eot, "one_row": one_row}
        loss_mod = CausalLMLoss(model)
        ref_model = reference_model(cfg.model, cfg.lora, d.reference, accel.device)
        trainable, _ = count_params(model)
        loss_mod, optimizer, params = loop.adamw(accel, loss_mod, model, t, lr)
        ref = Reference(loss_mod, model, ref_model)
        eval_ref = Reference(loss_mod, model, ref_model)  # eval pairs are never cached: always live

        # 3. Resume (a fresh run clears the previous run's files, its reference cache included).
        state, ckpt, log = loop.start(out, t, opened, accel, loss_mod, optimizer, plan)
    cache_file = out / "ref_logps.pt"
    if ckpt is None and main and cache_file.exists():
        cache_file.unlink()
        print(f"fresh run in {out}: removed the previous run's {cache_file.name}")
    if d.precompute_ref:
        key = cache_key(cfg, data.template, data.train)
        ref.precompute(data.train, cfg, key, pad_id, one_row, accel, cache_file, fresh=ckpt is None)
    if main:
        print_pairs_summary(data, cfg, ref, trainable, world, log if ckpt is None else None)
    if main and plan.note:
        print(plan.note)
    falling = FallingChosen(d.warn_falling_chosen)

    def evaluate_now() -> dict[str, float]:
        return evaluate(loss_mod, eval_ref, data.eval, cfg, ids, accel, model, data.eval_weights)

    def summarize(sums: loop.Sums, seconds: float) -> dict[str, float]:
        return {**_means(sums, rpo_alpha=d.rpo_alpha), "pairs_per_s": float(sums["pairs"]) / max(seconds, 1e-9)}

    # 4. Loop: each micro-batch packs whole pairs; the loss is normalized by the step's pair weight.
    with loop.Tracker("dpo", t, accel, log, state, total, loss_mod, optimizer) as run:
        for step in range(state["step"], total):
            epoch, units = plan.step(step)
            chosen = [2 * u for pairs in units for row in pairs for u in row]  # example 2u: pair u's chosen
            weight = sum(data.weights[i // 2] for i in chosen) if data.weights else len(chosen)
            chosen_tokens = sum(
                n_targets(data.train[i]) * (data.weights[i // 2] if data.weights else 1) for i in chosen
            )
            loop.set_lr(optimizer, t, lr, step, total)
            sums: loop.Sums = {}
            for pairs, real in loop.micro_batches(accel, loss_mod, units, (t.seed, step)):
                rows = pair_rows(pairs, cfg.data.packing)
                b = collate(data.train, rows, pad_id, cfg.data.packing, one_row).to(accel.device)
                o = pair_step(loss_mod, ref, b, [i for row in rows for i in row], cfg, data.weights)
                objective = o["loss_sum"] * world / max(weight, 1e-12)  # a step of weight-0 pairs learns nothing
                if d.rpo_alpha:
                    objective = objective + d.rpo_alpha * o["nll_chosen_sum"] * world / max(chosen_tokens, 1e-12)
                accel.backward(objective * real)  # a filler (not real) only keeps processes in step
                if real:
                    loop.add(sums, **o)
            norm = loop.clip_grad(accel, params, t.max_grad_norm)
            sums = loop.reduce_sums(accel, sums)
            m = summarize(sums, run.lap())
            run.check_finite(step + 1, loss=m["loss"], grad_norm=norm)  # the weights stay the last good ones
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            bar = f"loss {m['loss']:.4f} · acc {m['accuracy']:.2f} · margin {m['margins']:.3f}"
            run.record(step + 1, epoch, sums, m, norm, bar, plan.tokens(units))
            if msg := falling.update(m["logps/chosen"]):
                run.warn(step + 1, msg)
            if run.eval_save_stop(step + 1, evaluate_now if data.eval else None):
                break

    # 5. Save.
    summary = {"out": str(out), "beta": d.beta, "loss_type": d.loss_type, **run.summary(summarize)}
    loop.finish(out, model, tokenizer, data.template, summary, log, accel, dist.full_weights(accel, loss_mod))
    return summary


def print_pairs_summary(
    data: PrefData, cfg: DPOConfig, ref: Reference, trainable: int, world: int, log: Any = None
) -> None:
    """The pairs line (every row accounted for); `log`: also a `data` record, as SFT and RM write."""
    d = cfg.dpo
    reference = "cache" if ref.cache else "frozen model" if ref.ref_loss else "adapter disabled"
    print(f"{data.pairs_line()} · β={d.beta} {d.loss_type} · reference: {reference} · {trainable:,} trainable params")
    if log is not None:  # calc plan --calibrate reads `world` from it
        log.log("data", 0, **data.counts(), trainable_params=trainable, world=world)
