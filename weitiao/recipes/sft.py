"""Supervised fine-tuning (LoRA, QLoRA or full), one run top to bottom.

    weitiao sft examples/demo_sft.yaml train.lr=1e-4 train.max_steps=50
    accelerate launch --config_file examples/accelerate/ddp.yaml -m weitiao sft CONFIG.yaml

Steps: 1. data → 2. model → 3. resume → 4. train loop (accumulate, clip, step, log, eval,
checkpoint, early stop) → 5. save adapter/model + tokenizer with the training chat template.

Loss is the token-weighted mean over every target token of the optimizer step, across gradient
accumulation and processes: each micro-batch contributes nll_sum × world / tokens_in_step, so DDP's
gradient average equals the single-process gradient of the same global batch.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from weitiao.config import dump_config
from weitiao.data.chat import Encoded, EncodeOptions, EncodeStats, encode_all
from weitiao.data.collate import collate, n_targets, plan_epoch
from weitiao.data.formats import load_conversations
from weitiao.data.templates import ChatTemplate, resolve_template
from weitiao.errors import UserError
from weitiao.io import atomic_write_text
from weitiao.losses.sft import CausalLMLoss
from weitiao.models.load import LoraSpec, ModelSpec, build_trainable, count_params, load_tokenizer
from weitiao.train import checkpoint as ck
from weitiao.train.log import MetricsLog, progress_bar
from weitiao.train.schedule import lr_at


class DataSpec(BaseModel):
    """Training data and how it becomes tokens."""

    model_config = ConfigDict(extra="forbid")

    train: list[str] = Field(..., description="data files (jsonl/json/parquet)")
    eval: list[str] = Field(default_factory=list, description="eval files; else eval_split of train")
    eval_split: float = Field(0.0, ge=0, lt=1, description="fraction of train held out when no eval files")
    format: Literal["auto", "alpaca", "sharegpt", "openai"] = "auto"
    template: Literal["auto", "tokenizer", "chatml", "qwen", "llama3", "plain"] = "auto"
    max_len: int = Field(1024, gt=8)
    truncation: Literal["drop", "cut", "history"] = "drop"
    train_on_prompt: bool = False
    train_turns: Literal["all", "last"] = "all"
    packing: bool = True
    skip_invalid: bool = False


class TrainSpec(BaseModel):
    """Optimizer, schedule, batching, evaluation and checkpoint cadence."""

    model_config = ConfigDict(extra="forbid")

    out: str = "runs/sft"
    lr: float | None = Field(None, description="default 2e-4 with LoRA, 2e-5 full fine-tuning")
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    min_lr_ratio: float = 0.0
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    max_grad_norm: float = 1.0
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, description="overrides epochs when set")
    micro_batch_size: int = Field(4, gt=0, description="rows per micro-batch per process")
    grad_accum: int = Field(1, gt=0)
    seed: int = 42
    log_every: int = 1
    eval_every: int = Field(0, ge=0, description="0 = only at the end")
    save_every: int = Field(0, ge=0, description="0 = only at the end")
    keep_last: int = 3
    early_stop_patience: int = Field(0, ge=0, description="evals without improvement before stopping; 0 = off")
    resume: str = Field("auto", description="auto (latest checkpoint in out), none, or a checkpoint dir")
    stop_after: int | None = Field(None, description="end the process after this step (tests a kill)")
    tensorboard: bool = True
    progress: bool = True


class SFTConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: ModelSpec = Field(default_factory=ModelSpec)
    lora: LoraSpec = Field(default_factory=LoraSpec)
    data: DataSpec
    train: TrainSpec = Field(default_factory=TrainSpec)


@dataclass
class SFTData:
    tokenizer: object
    template: ChatTemplate
    train: list[Encoded]
    eval: list[Encoded]
    stats: EncodeStats
    eval_stats: EncodeStats
    read: int
    rejected: int


def prepare_data(cfg: SFTConfig, tokenizer: object) -> SFTData:
    """Load, validate, template and tokenize train/eval data; account for every row."""
    d = cfg.data
    template = resolve_template(tokenizer, d.template)
    rejects = Path(cfg.train.out) / "rejects.jsonl"
    loaded = load_conversations(d.train, d.format, skip_invalid=d.skip_invalid, rejects_path=rejects)
    convs = loaded.rows
    read, rejected = loaded.read, loaded.rejected
    if d.eval:
        ev = load_conversations(
            d.eval, d.format, skip_invalid=d.skip_invalid, rejects_path=rejects.with_name("eval_rejects.jsonl")
        )
        eval_convs, read, rejected = ev.rows, read + ev.read, rejected + ev.rejected
    elif d.eval_split > 0:
        g = torch.Generator().manual_seed(cfg.train.seed)
        perm = torch.randperm(len(convs), generator=g).tolist()
        n_eval = max(1, int(len(convs) * d.eval_split))
        eval_convs = [convs[i] for i in perm[:n_eval]]
        convs = [convs[i] for i in perm[n_eval:]]
    else:
        eval_convs = []
    opts = EncodeOptions(d.max_len, d.train_on_prompt, d.train_turns, d.truncation)
    train, stats = encode_all(convs, tokenizer, template, opts)
    evals, eval_stats = encode_all(eval_convs, tokenizer, template, opts)
    if not train:
        raise UserError(f"data.train: no rows left after truncation policy {d.truncation!r} (max_len {d.max_len})")
    return SFTData(tokenizer, template, train, evals, stats, eval_stats, read, rejected)


@torch.no_grad()
def evaluate(loss_mod, examples: list[Encoded], cfg: SFTConfig, pad_id: int, accel) -> float:
    """Token-weighted eval loss over the whole eval set (split across processes)."""
    if not examples:
        return float("nan")
    loss_mod.eval()
    lengths = [len(e) for e in examples]
    batches = plan_epoch(
        lengths,
        seed=0,
        epoch=0,
        micro_batch_size=cfg.train.micro_batch_size,
        packing=cfg.data.packing,
        capacity=cfg.data.max_len,
    )
    total = torch.zeros(2, device=accel.device, dtype=torch.float64)
    for rows in batches[accel.process_index :: accel.num_processes]:
        b = collate(examples, rows, pad_id, cfg.data.packing).to(accel.device)
        s, n = loss_mod(b.input_ids, b.targets, b.position_ids, b.attention_mask)
        total += torch.stack([s.double(), n.double()])
    total = accel.reduce(total, reduction="sum")
    loss_mod.train()
    return float(total[0] / total[1].clamp_min(1))


def run(cfg: SFTConfig) -> dict:
    """Train; returns a summary (final/best eval loss, steps, tokens/s, output dir)."""
    from accelerate import Accelerator

    t = cfg.train
    accel = Accelerator(cpu=not torch.cuda.is_available())  # cpu=True enables gloo DDP on CPU
    main = accel.is_main_process
    torch.manual_seed(t.seed)
    out = Path(t.out)

    # 1. Data: validate, template, tokenize; every row accounted for.
    tokenizer = load_tokenizer(cfg.model.path)
    data = prepare_data(cfg, tokenizer)
    pad_id = tokenizer.pad_token_id
    lengths = [len(e) for e in data.train]
    world, accum = accel.num_processes, t.grad_accum
    micro_per_step = world * accum

    @lru_cache(maxsize=2)
    def epoch_plan(epoch: int) -> list:
        return plan_epoch(
            lengths,
            seed=t.seed,
            epoch=epoch,
            micro_batch_size=t.micro_batch_size,
            packing=cfg.data.packing,
            capacity=cfg.data.max_len,
        )

    steps_per_epoch = len(epoch_plan(0)) // micro_per_step
    if steps_per_epoch == 0:
        raise UserError(
            f"train: {len(epoch_plan(0))} micro-batches cannot fill one step of "
            f"{micro_per_step} (processes × grad_accum); lower micro_batch_size or grad_accum"
        )
    total_steps = t.max_steps or max(1, math.ceil(t.epochs * steps_per_epoch))
    warmup = int(t.warmup_ratio * total_steps)
    lr = t.lr if t.lr is not None else (2e-4 if cfg.lora.enabled else 2e-5)

    # 2. Model, loss wrapper, optimizer.
    model = build_trainable(cfg.model, cfg.lora, accel.device)
    loss_mod = CausalLMLoss(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, betas=t.betas, weight_decay=t.weight_decay)
    loss_mod, optimizer = accel.prepare(loss_mod, optimizer)
    trainable, total_params = count_params(model)

    # 3. Resume: weights, optimizer, RNG, data position, early-stopping state.
    state = {"step": 0, "best_eval": float("inf"), "best_step": None, "bad_evals": 0, "tokens": 0}
    ckpt = ck.resume_point(out, t.resume)
    if ckpt is not None:
        state.update(ck.load_checkpoint(ckpt, model, optimizer))
    if main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.yaml", dump_config(cfg))
    log = MetricsLog(out, enabled=main, tensorboard=t.tensorboard)
    if main:
        s = data.stats
        dropped = s.dropped_too_long + data.eval_stats.dropped_too_long
        print(
            f"data: {data.read} rows read = {s.kept} train + {len(data.eval)} eval + {data.rejected} rejected + "
            f"{dropped} over max_len {cfg.data.max_len} (truncation {cfg.data.truncation}: {s.cut} cut, "
            f"{s.history_trimmed} history-trimmed) · template {data.template.name} · "
            f"{trainable:,} trainable / {total_params:,} params · {total_steps} steps"
        )
    if main and ckpt is None:
        log.log(
            "data",
            0,
            read=data.read,
            rows=s.rows,
            kept=s.kept,
            dropped_too_long=s.dropped_too_long,
            cut=s.cut,
            history_trimmed=s.history_trimmed,
            rejected=data.rejected,
            eval_rows=len(data.eval),
            template=data.template.name,
            trainable_params=trainable,
            total_params=total_params,
            steps=total_steps,
            world=world,
        )

    # 4. Train loop.
    step = state["step"]
    stopped_early = False
    t0, tokens_window = time.perf_counter(), 0
    with progress_bar(t.progress and main) as bar:
        task = bar.add_task("sft", total=total_steps, completed=step, info="")
        while step < total_steps:
            epoch, k = divmod(step, steps_per_epoch)
            plan = epoch_plan(epoch)[k * micro_per_step : (k + 1) * micro_per_step]
            batches = [collate(data.train, rows, pad_id, cfg.data.packing) for rows in plan]
            step_targets = sum(n_targets(data.train[i]) for rows in plan for row in rows for i in row)
            mine = batches[accel.process_index :: world]
            for g in optimizer.param_groups:
                g["lr"] = lr_at(step, total_steps, lr, warmup, t.scheduler, t.min_lr_ratio)
            loss_sum = torch.zeros((), device=accel.device, dtype=torch.float64)
            for j, b in enumerate(mine):
                b = b.to(accel.device)
                sync = j == len(mine) - 1
                with accel.no_sync(loss_mod) if not sync else nullcontext():
                    s, _ = loss_mod(b.input_ids, b.targets, b.position_ids, b.attention_mask)
                    accel.backward(s * world / max(1, step_targets))
                loss_sum += s.detach().double()
            grad_norm = accel.clip_grad_norm_(params, t.max_grad_norm) if t.max_grad_norm > 0 else None
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            step_tokens = int(sum(int((b.input_ids != pad_id).sum()) for b in batches))
            state["tokens"] += step_tokens
            tokens_window += step_tokens
            loss = float(accel.reduce(loss_sum, reduction="sum")) / max(1, step_targets)
            if step % t.log_every == 0 or step == total_steps:
                dt = time.perf_counter() - t0
                tps = tokens_window / dt if dt > 0 else 0.0
                log.log(
                    "train",
                    step,
                    loss=loss,
                    lr=optimizer.param_groups[0]["lr"],
                    epoch=epoch,
                    grad_norm=float(grad_norm) if grad_norm is not None else None,
                    tokens=state["tokens"],
                    tokens_per_s=tps,
                )
                bar.update(task, completed=step, info=f"loss {loss:.4f} · {tps:,.0f} tok/s")
                t0, tokens_window = time.perf_counter(), 0
            last = step == total_steps
            if data.eval and ((t.eval_every and step % t.eval_every == 0) or last):
                ev = evaluate(loss_mod, data.eval, cfg, pad_id, accel)
                improved = ev < state["best_eval"] - 1e-6
                if improved:
                    state.update(best_eval=ev, best_step=step, bad_evals=0)
                else:
                    state["bad_evals"] += 1
                log.log("eval", step, eval_loss=ev, best_eval=state["best_eval"], best_step=state["best_step"])
                bar.update(task, info=f"loss {loss:.4f} · eval {ev:.4f}")
                if t.early_stop_patience and state["bad_evals"] >= t.early_stop_patience:
                    stopped_early = True
            if main and ((t.save_every and step % t.save_every == 0) or last or stopped_early):
                protect = {state["best_step"]} if state["best_step"] else set()
                ck.save_checkpoint(
                    out, step, accel.unwrap_model(loss_mod).model, optimizer, state, t.keep_last, protect
                )
            accel.wait_for_everyone()
            if stopped_early or (t.stop_after is not None and step >= t.stop_after):
                break

    # 5. Final weights with the chat template used in training written into the tokenizer.
    summary = {
        "out": str(out),
        "steps": step,
        "total_steps": total_steps,
        "stopped_early": stopped_early,
        "best_eval": state["best_eval"],
        "best_step": state["best_step"],
        "tokens": state["tokens"],
    }
    if main and (step >= total_steps or stopped_early):
        final = out / "final"
        ck.save_weights(accel.unwrap_model(loss_mod).model, final)
        tokenizer.chat_template = data.template.jinja
        tokenizer.save_pretrained(final / "tokenizer")
        atomic_write_text(final / "chat_template.jinja", data.template.jinja)
        log.log("done", step, **{k: v for k, v in summary.items() if k != "out"})
    log.close()
    accel.wait_for_everyone()
    return summary
