"""The shared optimizer-step loop for recipes whose micro-step a recipe supplies (DPO, reward model).

Owns what is identical across them: epoch plans, the split of each step's micro-batches across
processes, gradient accumulation without DDP sync until the last micro-batch, LR schedule, clipping,
metric reduction, logging, eval cadence, early stopping, atomic checkpoints, the stop-after hook
and the stop at the first non-finite loss or gradient norm. The recipe owns the math:
`micro_step(rows, step_info)` runs forward + backward for its share and returns metric sums;
`evaluate()` returns held-out metrics with an `eval_loss`.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from accelerate.utils import gather_object

from weitiao.data.collate import plan_epoch
from weitiao.data.templates import ChatTemplate
from weitiao.errors import UserError
from weitiao.models.portable import legacy_config_keys, save_tokenizer, stop_ids, write_generation_config
from weitiao.train import checkpoint as ck
from weitiao.train.guard import DivergedError, ensure_finite
from weitiao.train.log import MetricsLog, progress_bar
from weitiao.train.schedule import lr_at

Sums = dict[str, torch.Tensor]


@dataclass
class LoopParts:
    """What a recipe hands the loop."""

    name: str
    lengths: list[int]  # one entry per packing unit (a conversation, a pair)
    capacity: int  # tokens per packed row
    packing: bool
    to_rows: Callable[[list[list[int]]], list[list[int]]]  # unit rows → example rows
    micro_step: Callable[[list[list[int]], dict], Sums]  # forward+backward, returns detached sums
    step_info: Callable[[list[list[list[int]]]], dict]  # whole-step counts every process needs
    summarize: Callable[[Sums, float], dict[str, float]]  # reduced sums, seconds → logged metrics
    evaluate: Callable[[], dict[str, float]] | None
    bar_info: Callable[[dict[str, float]], str]
    after_step: Callable[[int, dict[str, float]], None] | None = None


def fit(
    parts: LoopParts,
    t: Any,
    accel: Any,
    loss_mod: Any,
    model: Any,
    optimizer: Any,
    params: list,
    lr: float,
    out: Path,
    log: MetricsLog,
    state: dict[str, Any],
) -> dict[str, Any]:
    """Run optimizer steps from state["step"] to the end; returns last train/eval metrics."""
    world, micro_per_step = accel.num_processes, accel.num_processes * t.grad_accum

    @lru_cache(maxsize=2)
    def epoch_plan(epoch: int) -> list:
        return plan_epoch(
            parts.lengths,
            seed=t.seed,
            epoch=epoch,
            micro_batch_size=t.micro_batch_size,
            packing=parts.packing,
            capacity=parts.capacity,
        )

    # Packing makes the number of micro-batches vary a little from epoch to epoch: count per epoch.
    @cache
    def steps_in(epoch: int) -> int:
        return len(epoch_plan(epoch)) // micro_per_step

    def locate(step: int) -> tuple[int, int]:
        epoch = 0
        while step >= steps_in(epoch):
            step -= steps_in(epoch)
            epoch += 1
        return epoch, step

    if steps_in(0) == 0:
        raise UserError(
            f"train: too little data for one step of {micro_per_step} micro-batches "
            "(processes × grad_accum); lower train.micro_batch_size or train.grad_accum"
        )
    total = t.max_steps if t.max_steps is not None else max(1, int(t.epochs * steps_in(0) + 0.999999))
    # Same data file names (config.yaml) can hold other rows: a resumed plan would then skip or repeat.
    data_key = hashlib.sha256(repr((parts.lengths, parts.capacity)).encode()).hexdigest()[:16]
    if state.setdefault("data_key", data_key) != data_key and t.resume != "force":
        raise UserError(
            "train.resume: the training data changed since the checkpoint (other rows or lengths after "
            "tokenization); restore it, set train.resume=none for a new run, or train.resume=force"
        )
    state["data_key"] = data_key
    if state["step"] >= total:
        raise UserError(
            f"train: the checkpoint is at step {state['step']} and the run has {total} steps, so nothing would "
            "be trained; raise train.max_steps (or train.epochs) to continue, or set train.resume=none"
        )
    warmup = int(t.warmup_ratio * total)
    step, metrics, last_eval, stopped_early = state["step"], {}, {}, False
    run_sums: Sums = {}  # summed over this process's steps: rates in the summary are wall-clock means
    # from_pretrained returns eval mode: dropout and gradient checkpointing would stay off until the
    # first eval, and a resumed run would differ from an uninterrupted one.
    loss_mod.train()
    t0 = run_t0 = time.perf_counter()
    with progress_bar(t.progress and accel.is_main_process, t.progress_every_s) as bar:
        task = bar.add_task(parts.name, total=total, completed=step, info="")
        while step < total:
            epoch, k = locate(step)
            units = epoch_plan(epoch)[k * micro_per_step : (k + 1) * micro_per_step]
            step_tokens = sum(parts.lengths[u] for rows in units for row in rows for u in row)
            plan = [parts.to_rows(rows) for rows in units]
            info = parts.step_info(plan)
            for g in optimizer.param_groups:
                g["lr"] = lr_at(step, total, lr, warmup, t.scheduler, t.min_lr_ratio)
            mine = plan[accel.process_index :: world]
            sums: Sums = {}
            for j, rows in enumerate(mine):
                sync = j == len(mine) - 1
                with accel.no_sync(loss_mod) if not sync else contextlib.nullcontext():
                    for key, v in parts.micro_step(rows, info).items():
                        sums[key] = sums.get(key, 0) + v.detach().double()
            # max_norm=inf measures without clipping (grads × 1.0): a NaN gradient is caught either way.
            norm = accel.clip_grad_norm_(params, t.max_grad_norm if t.max_grad_norm > 0 else float("inf"))
            keys = sorted(sums)
            reduced = dict(zip(keys, accel.reduce(torch.stack([sums[x] for x in keys]), reduction="sum")))
            dt, t0 = time.perf_counter() - t0, time.perf_counter()
            metrics = parts.summarize(reduced, dt)
            norms = {"grad_norm": float(norm)} if norm is not None else {}  # None: DeepSpeed clips inside
            try:  # before optimizer.step: the weights stay those of the last good step
                ensure_finite(step + 1, loss=metrics["loss"], **norms)
            except DivergedError as e:
                log.log("diverged", step + 1, message=str(e))
                log.close()
                raise
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            for key, v in reduced.items():
                run_sums[key] = run_sums.get(key, 0) + v
            state["tokens"] = state.get("tokens", 0) + int(reduced.get("tokens", 0))
            last = step == total
            if step % t.log_every == 0 or last:
                lr_now = optimizer.param_groups[0]["lr"]
                log.log("train", step, lr=lr_now, epoch=epoch, **norms, **metrics)
            shown = parts.bar_info(metrics)
            if "tokens_per_s" not in metrics:  # every process's unpadded tokens in this step
                shown += f" · {step_tokens / max(dt, 1e-9):,.0f} tok/s"
            bar.update(task, completed=step, info=shown)
            if parts.after_step:
                parts.after_step(step, metrics)
            if parts.evaluate and ((t.eval_every and step % t.eval_every == 0) or last):
                last_eval = parts.evaluate()
                if last_eval["eval_loss"] < state["best_eval"] - 1e-6:
                    state.update(best_eval=last_eval["eval_loss"], best_step=step, bad_evals=0)
                else:
                    state["bad_evals"] += 1
                log.log("eval", step, **last_eval)
                stopped_early = bool(t.early_stop_patience and state["bad_evals"] >= t.early_stop_patience)
            if (t.save_every and step % t.save_every == 0) or last or stopped_early:
                rngs = gather_object([ck.rng_state()]) if world > 1 else None  # every process's own stream
                if accel.is_main_process:
                    protect = {state["best_step"]} if state["best_step"] else set()
                    ck.save_checkpoint(out, step, model, optimizer, state, t.keep_last, protect, rngs)
            accel.wait_for_everyone()
            if stopped_early or (t.stop_after is not None and step >= t.stop_after):
                break
    wall = parts.summarize(run_sums, time.perf_counter() - run_t0)
    return {
        "steps": step,
        "total_steps": total,
        "stopped_early": stopped_early,
        "finished": step >= total or stopped_early,
        **last_eval,
        **{f"train_{k}": v for k, v in metrics.items()},
        **{f"train_{k}": v for k, v in wall.items() if k.endswith("_per_s")},
    }


def new_state() -> dict[str, Any]:
    return {"step": 0, "best_eval": float("inf"), "best_step": None, "bad_evals": 0, "tokens": 0}


def start(out: Path, t: Any, config_yaml: str, model: Any, optimizer: Any, main: bool) -> tuple[dict, Any, MetricsLog]:
    """Resume from the checkpoint `t.resume` names (weights, optimizer, this process's RNG, data
    position, early-stop state) if the config still trains the same thing, or start fresh (a previous
    run in `out` is moved aside); write config.yaml; open the metrics log."""
    state = new_state()
    ckpt = ck.open_run(out, t.resume, config_yaml, main)
    if ckpt is not None:
        proc = PartialState()  # the recipe's Accelerator's process group
        force = t.resume == "force"
        state.update(ck.load_checkpoint(ckpt, model, optimizer, proc.process_index, proc.num_processes, force))
    log = MetricsLog(out, main, t.tensorboard, t.report_to, config_yaml)
    proc = PartialState()
    log.log("run", state["step"], device=proc.device.type, world=proc.num_processes)  # read by calc plan
    return state, ckpt, log


def finish(
    out: Path, model: Any, tokenizer: Any, template: ChatTemplate, summary: dict, log: MetricsLog, accel: Any
) -> Path | None:
    """Save final weights + the tokenizer carrying the training chat template; log `done`; close.

    A causal LM's weights get a generation_config.json that stops at the template's end-of-turn.
    """
    final = None
    if accel.is_main_process and summary["finished"]:
        final = out / "final"
        weights = ck.save_weights(model, final)
        gen = getattr(model, "generation_config", None)  # None for a reward model's classifier
        if gen is not None:
            write_generation_config(weights, gen, stop_ids(tokenizer, template, gen.eos_token_id))
        if (weights / "config.json").is_file():
            legacy_config_keys(weights)
        save_tokenizer(tokenizer, template, final / "tokenizer")
        log.log("done", summary["steps"], **{k: v for k, v in summary.items() if isinstance(v, (int, float))})
    log.close()
    accel.wait_for_everyone()
    return final
