"""Bookkeeping shared by the SFT, DPO and RM training loops; each recipe writes its own loop.

A recipe's step, with these helpers (the math and `optimizer.step()` stay in the recipe):

    epoch, units = plan.step(step)                      # this step's micro-batches, all processes
    set_lr(optimizer, t, lr, step, total)
    for rows, real in micro_batches(accel, module, units, (t.seed, step)):  # this process's share; synced on the last
        ... forward; accel.backward(loss * real)        # real False: a filler that keeps FSDP/DeepSpeed in step
        if real: add(sums, ...)
    norm = clip_grad(accel, params, t.max_grad_norm)    # the norm before clipping
    sums = reduce_sums(accel, sums)                     # over processes
    run.check_finite(step + 1, loss=..., grad_norm=norm)  # stops before a NaN update
    optimizer.step(); optimizer.zero_grad(set_to_none=True)
    run.record(...)                                     # log, progress bar
    if run.eval_save_stop(step + 1, evaluate): break    # eval, early stop, checkpoint, stop_after
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

import torch

from weitiao.data.collate import example_lengths, plan_epoch
from weitiao.data.templates import ChatTemplate
from weitiao.errors import UserError
from weitiao.io import publish_dir
from weitiao.models import fused_lora
from weitiao.models.portable import legacy_config_keys, save_tokenizer, stop_ids, write_generation_config
from weitiao.train import checkpoint as ck
from weitiao.train import dist, zero
from weitiao.train.guard import EVAL_HINT, EVAL_WHAT, TRAIN_HINT, DivergedError, ensure_finite
from weitiao.train.log import MetricsLog, progress_bar
from weitiao.train.schedule import lr_at
from weitiao.train.spec import TrainSpec

ZERO_GRAD_STEPS = 3  # steps in a row with a gradient norm of exactly 0 that stop a run

Sums = dict[str, torch.Tensor]
Units = list[list[list[int]]]  # micro-batches → rows → packing units (a conversation, a pair)


class EpochPlan:
    """Micro-batches of every epoch (reshuffled per epoch) and where optimizer step k reads from.

    One step takes `processes × grad_accum` consecutive micro-batches of its epoch, so a run resumed
    at step k reads exactly what the uninterrupted run read there. An epoch's last step also takes the
    micro-batches left over (fewer than one step's worth), so every row is trained once per epoch.
    """

    def __init__(
        self,
        lengths: list[int],
        capacity: int,
        packing: bool,
        t: TrainSpec,
        world: int,
        content: str = "",
        evals: str = "",
    ):
        """`content`: a digest of the rows' text (SFTData/PrefData.content_key), so a resume on edited data whose
        token counts stayed the same is refused too; `evals`: the eval set's `eval_digest`, likewise."""
        self.lengths, self.capacity, self.packing, self.t, self.content = lengths, capacity, packing, t, content
        self.world, self.per_step = world, world * t.grad_accum
        self.epoch = lru_cache(maxsize=2)(self._epoch)
        # Same data file names (config.yaml) can hold other rows: a resumed plan would then skip or repeat, and
        # eval_loss (and the best step kept) would compare other eval sets.
        key = hashlib.sha256(repr((lengths, capacity)).encode()).hexdigest()[:16]
        self.keys = {"data_key": key, **({"data_content": content} if content else {}), "eval_content": evals}
        self._steps: dict[int, int] = {}
        self.note = ""  # set by total_steps: a line for the user when train.max_steps overrides a train.epochs they set

    def _epoch(self, epoch: int) -> Units:
        t = self.t
        return plan_epoch(
            self.lengths,
            seed=t.seed,
            epoch=epoch,
            micro_batch_size=t.micro_batch_size,
            packing=self.packing,
            capacity=self.capacity,
        )

    def steps_in(self, epoch: int) -> int:
        """Optimizer steps of an epoch: one per `per_step` micro-batches, the remainder in the last; 0 when
        some process would get no micro-batch at all."""
        # Packing makes the number of micro-batches vary a little from epoch to epoch: count per epoch.
        if epoch not in self._steps:
            n = len(self.epoch(epoch))
            self._steps[epoch] = max(n // self.per_step, 1) if n >= self.world else 0
        return self._steps[epoch]

    def total_steps(self, saved: dict[str, Any], files: list | None = None, eval_files: list | None = None) -> int:
        """Steps of the run; refuses a run with no step to take, an epoch some process would train nothing of, and
        resuming on other train or eval data (naming `files`, `eval_files`: the data.train and data.eval entries).
        `saved`: the checkpoint's trainer state (`Opened.state`); called before `start`, so a refusal leaves the run
        folder as it was."""
        t = self.t
        if t.max_steps is not None:
            total = t.max_steps
            self.note = self._epochs_unused(total)
        else:  # whole epochs (each its own size when packed), then the fraction of the next one
            whole, part = int(t.epochs), t.epochs - int(t.epochs)
            total = sum(self.steps_in(e) for e in range(whole)) + math.ceil(part * self.steps_in(whole) - 1e-9)
            total = max(1, total)
        # Every epoch the run reaches: packed, an epoch can have fewer micro-batches than processes (0 steps), and
        # step() would skip it, its rows untrained (3 epochs on 2 processes trained 1). Unpacked epochs are all alike.
        epoch, left = 0, total if t.max_steps is not None else math.ceil(t.epochs - 1e-9)
        left = left if self.packing and self.world > 1 else 1
        while left > 0:
            if self.steps_in(epoch) == 0:
                where = f"epoch {epoch} packs into " if epoch else ""
                raise UserError(
                    f"train: {where}{len(self.epoch(epoch))} micro-batches for {self.world} processes, so some process "
                    "would train on nothing; lower train.micro_batch_size or use fewer processes"
                )
            left -= self.steps_in(epoch) if t.max_steps is not None else 1
            epoch += 1
        key, saved_content = self.keys["data_key"], saved.get("data_content")
        other_texts = bool(self.content and saved_content and saved_content != self.content)  # older: lengths only
        if (saved.get("data_key", key) != key or other_texts) and t.resume != "force":
            named = f" (data.train: {', '.join(map(str, files))})" if files else ""
            raise UserError(
                f"train.resume: the training data changed since the checkpoint{named}: other rows, texts or lengths "
                "after tokenization; restore it, set train.resume=none for a new run, or train.resume=force"
            )
        saved_evals = saved.get("eval_content")  # older checkpoints: not recorded
        if saved_evals is not None and saved_evals != self.keys["eval_content"] and t.resume != "force":
            named = f"data.eval: {', '.join(map(str, eval_files))}" if eval_files else "the eval rows"
            raise UserError(
                f"train.resume: the eval data changed since the checkpoint ({named}): other rows, texts or per-row "
                "values after tokenization, so eval metrics and the best step kept would compare other sets; restore "
                "it, set train.resume=none for a new run, or train.resume=force"
            )
        if saved["step"] >= total:
            raise UserError(
                f"train: the checkpoint is at step {saved['step']} and the run has {total} steps, so nothing "
                "would be trained; raise train.max_steps (or train.epochs) to continue, or set train.resume=none"
            )
        return total

    def _epochs_unused(self, total: int) -> str:
        """A note when the config sets train.epochs and train.max_steps decides another length: epochs was ignored
        without a word (a config written for `epochs: 3` trained max_steps' fraction of one)."""
        t, per_epoch = self.t, self.steps_in(0)
        by_epochs = max(1, math.ceil(t.epochs * per_epoch - 1e-9))
        if "epochs" not in t.model_fields_set or not per_epoch or by_epochs == total:
            return ""
        return (
            f"note: train.max_steps {total} sets the run's length ({total / per_epoch:.3g} × the {per_epoch} steps "
            f"of an epoch), so train.epochs {t.epochs:g} (about {by_epochs} steps) is not used; drop one of them"
        )

    def step(self, k: int) -> tuple[int, Units]:
        """(epoch, micro-batches of every process) of optimizer step k (0-based)."""
        epoch = 0
        while k >= self.steps_in(epoch):
            k -= self.steps_in(epoch)
            epoch += 1
        last = k == self.steps_in(epoch) - 1
        return epoch, self.epoch(epoch)[k * self.per_step : None if last else (k + 1) * self.per_step]

    def tokens(self, units: Units) -> int:
        """Unpadded tokens of a step's micro-batches."""
        return sum(self.lengths[u] for rows in units for row in rows for u in row)


def set_lr(optimizer: Any, t: TrainSpec, lr: float, step: int, total: int) -> None:
    """The schedule's LR for step `step` (a pure function of the step: resume needs no scheduler state)."""
    for g in optimizer.param_groups:
        g["lr"] = lr_at(step, total, lr, int(t.warmup_ratio * total), t.scheduler, t.min_lr_ratio)


def model_context(config: Any) -> int | None:
    """Positions the model takes: `max_position_embeddings`, times a RoPE scaling factor (linear, dynamic, yarn) where
    the config extends it beyond that (Qwen's long-context yarn keeps max_position_embeddings at the original 32768);
    None when the config does not say."""
    context = getattr(config, "max_position_embeddings", None)
    if isinstance(context, bool) or not isinstance(context, int) or context <= 0:
        return None
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None)
    if not isinstance(rope, dict) or rope.get("rope_type", rope.get("type")) not in ("linear", "dynamic", "yarn"):
        return context
    factor = rope.get("factor")
    # llama3-style configs (original_max_position_embeddings below it) already give the extended length
    if (
        isinstance(factor, (int, float))
        and factor > 1
        and rope.get("original_max_position_embeddings") in (None, context)
    ):
        return int(context * factor)
    return context


def model_positions(model: str) -> int | None:
    """`model_context` of a model dir, hub id or 'demo' from its config as training loads it (None: a tokenizer
    without a model config, or one that does not say); for `data check` in the CLI and the console."""
    from transformers import AutoConfig

    from weitiao.models.load import resolve_path

    try:
        config = AutoConfig.from_pretrained(resolve_path(model))
    except (OSError, ValueError, KeyError):  # no config.json, or a model type transformers does not know
        return None
    return model_context(config)


def refuse_over_context(model: Any, **sets: Any) -> None:
    """Refuse a sequence (an SFT row or document piece, a DPO/RM pair's side) longer than the model's context
    (`max_position_embeddings`): each packed sequence restarts its positions, so one past the context trains positions
    the model never had (RoPE) or indexes past its position table; it trained silently with exit 0. `sets`: name →
    the encoded sequences (train, eval)."""
    context = model_context(getattr(model, "config", None))
    if context is None:
        return
    for name, examples in sets.items():
        lengths = example_lengths(examples)
        over = [i for i, n in enumerate(lengths) if n > context]
        if over:
            worst = max(over, key=lambda i: lengths[i])
            raise UserError(
                f"{examples[worst].source}: {lengths[worst]} tokens, past the model's context of {context} positions "
                f"(max_position_embeddings in its config.json; {len(over)} {name} sequence(s) over it): positions "
                f"past it were never trained; set data.max_len to at most {context} (longer rows are then dropped or "
                "cut as data.truncation says)"
            )


def refuse_eval_without_data(t: TrainSpec, has_eval: bool, golden_cadence: bool = False) -> None:
    """train.eval_every and train.early_stop_patience need an eval set: without one they would be silently
    ignored (no eval, no early stop). `golden_cadence`: eval_every also times the golden prompts (no save_every)."""
    if has_eval:
        return
    keys = [k for k in ("early_stop_patience", "eval_every") if getattr(t, k)]
    if golden_cadence and t.golden and not t.save_every:
        keys = [k for k in keys if k != "eval_every"]
    if keys:
        raise UserError(
            f"train.{keys[0]}={getattr(t, keys[0])} needs eval data, and there is none (no data.eval files, "
            "data.eval_split 0 or no row left for it): it would be ignored; set data.eval or data.eval_split, "
            f"or drop train.{keys[0]}"
        )


def micro_batches(
    accel: Any, module: Any, units: Units, seed: tuple[int, int] | None = None
) -> Iterator[tuple[list[list[int]], bool]]:
    """This process's micro-batches of a step (every `world`-th) as (rows, real); gradients are synced
    across processes only during the last one, so accumulation costs one all-reduce per step.

    Every process runs as many micro-batches: FSDP and DeepSpeed forwards and backwards are collective,
    and an epoch's last step can leave a process one short (5 micro-batches on 2 processes hung FSDP2 and
    crashed ZeRO-3). The short process runs its first micro-batch again with `real` False: a filler whose
    loss the recipe multiplies by 0 and whose metrics it does not count.

    `seed` (train.seed, step): the random draws (dropout masks) of micro-batch g of the step come from
    a generator seeded by (seed, step, g), so N processes draw what one process with N × grad_accum
    draws, and no two processes draw the same masks."""
    rank, world = accel.process_index, accel.num_processes
    mine, n = units[rank::world], -(-len(units) // world)
    for j in range(n):
        with contextlib.ExitStack() as stack:
            if j < n - 1:
                stack.enter_context(accel.no_sync(module))
            if seed is not None:
                stack.enter_context(seeded(*seed, rank + j * world))
            yield (mine[j], True) if j < len(mine) else (mine[0], False)


@contextlib.contextmanager
def seeded(seed: int, step: int, index: int) -> Iterator[None]:
    """torch's generators seeded by (seed, step, index) inside; the run's own streams are left as they were."""
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(((seed * 1_000_003 + step) * 1_000_003 + index) % 2**63)
        yield


def compile_layers(model: Any) -> int:
    """torch.compile each decoder layer in place (regional: one compiled graph serves every layer, so
    compiling takes seconds, not minutes); returns how many. Random ops (LoRA dropout) draw from the
    eager RNG (inductor `fallback_random`), so a compiled run trains like the eager one."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    kinds = set(getattr(base, "_no_split_modules", None) or [])
    layers = [m for m in base.modules() if type(m).__name__ in kinds]
    if not layers:
        raise UserError(f"train.compile: no decoder layers found in {type(base).__name__}; set train.compile false")
    for layer in layers:
        layer.compile(options={"fallback_random": True})
    return len(layers)


def adamw(accel: Any, module: Any, model: Any, t: TrainSpec, lr: float) -> tuple[Any, Any, list]:
    """AdamW over `model`'s trainable parameters, prepared with `module` by accelerate: (module, optimizer,
    params). The parameters are read again after prepare: FSDP swaps in sharded ones. With train.fused_lora the
    LoRA linears get the fused forward (`fused_lora.enable`), then with train.compile the decoder layers are
    compiled (`compile_layers`)."""
    if t.fused_lora:
        fused_lora.enable(model)
    if t.compile:
        compile_layers(model)
    params = [p for p in model.parameters() if p.requires_grad]
    low = sum(p.numel() for p in params if p.dtype in (torch.bfloat16, torch.float16))
    if low and accel.is_main_process and not zero.active(accel):  # DeepSpeed keeps fp32 master weights itself
        print(
            f"warning: {low:,} trained weights are 16-bit and AdamW updates them in place, with no fp32 copy: "
            "steps smaller than their rounding are lost (full fine-tuning at lr 2e-5 changed 27% of the weights "
            "in bf16 against 87% in fp32); set model.dtype=fp32 where memory allows, or use LoRA or DeepSpeed"
        )
    # Fused: one kernel over all parameters (on the CPU the default is a Python loop per tensor; no foreach).
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    optimizer = torch.optim.AdamW(params, lr=lr, betas=t.betas, weight_decay=t.weight_decay, fused=fused)
    module, optimizer = zero.prepare(accel, t, module, optimizer)  # accel.prepare (DeepSpeed: set up to step as we do)
    return module, optimizer, [p for p in model.parameters() if p.requires_grad]


def add(sums: Sums, **values: torch.Tensor) -> None:
    """Accumulate detached float64 metric sums."""
    for key, v in values.items():
        sums[key] = sums.get(key, 0) + v.detach().double()


def reduce_sums(accel: Any, sums: Sums) -> Sums:
    """Every process's sums added up (one all-reduce)."""
    keys = sorted(sums)
    return dict(zip(keys, accel.reduce(torch.stack([sums[k] for k in keys]), reduction="sum")))


def clip_grad(accel: Any, params: list, max_norm: float) -> float | None:
    """Clip to `max_norm` (0 = no clipping) and return the total gradient norm before clipping;
    None where DeepSpeed clips inside its own step."""
    # max_norm=inf measures without clipping (grads × 1.0): a NaN gradient is caught either way.
    norm = accel.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
    if norm is None:
        return None
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)  # FSDP2 returns a DTensor


class Tracker:
    """Per-run bookkeeping around a recipe's loop: timing, logging, progress bar, eval and early
    stopping, checkpoints (saved collectively, see `dist`), stop_after and the summary."""

    def __init__(
        self, name: str, t: TrainSpec, accel: Any, log: MetricsLog, state: dict, total: int, module: Any, optimizer: Any
    ):
        self.name, self.t, self.accel, self.log, self.state, self.total = name, t, accel, log, state, total
        self.module, self.optimizer = module, optimizer
        self.metrics: dict[str, float] = {}
        self.last_eval: dict[str, float] = {}
        self.stopped_early = False
        self.saved = False  # whether the last eval_save_stop wrote a checkpoint
        self.run_sums: Sums = {}  # summed over this run's steps: rates in the summary are wall-clock means
        self.steps = state["step"]
        self.zero_norms = 0  # steps in a row with a gradient norm of exactly 0
        self.dt = 0.0
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> Tracker:
        # from_pretrained returns eval mode: dropout and gradient checkpointing would stay off until the
        # first eval, and a resumed run would differ from an uninterrupted one.
        self.module.train()
        main = self.accel.is_main_process
        self._stack.enter_context(ck.resume_hint(Path(self.t.out), self.t, lambda: self.steps, main))  # after the bar
        bar = progress_bar(self.t.progress and self.accel.is_main_process, self.t.progress_every_s)
        self.bar = self._stack.enter_context(bar)
        self.task = self.bar.add_task(self.name, total=self.total, completed=self.steps, info="")
        self.t0 = self.run_t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stack.__exit__(*exc)  # the exception too: resume_hint reads a Ctrl-C

    def lap(self) -> float:
        """Seconds since the previous lap (the run's start for the first)."""
        now = time.perf_counter()
        self.dt, self.t0 = now - self.t0, now
        return self.dt

    def check_finite(self, step: int, **values: float | None) -> None:
        """Stop the run (logged as `diverged`) at a NaN/inf loss or gradient norm, before the update, and after
        ZERO_GRAD_STEPS steps in a row whose gradient norm is exactly 0: a run driven into saturation (lr 1e6 leaves
        all-zero logits, loss ln(vocab)) stops learning without any NaN."""
        norm = values.get("grad_norm")
        self.zero_norms = self.zero_norms + 1 if norm is not None and float(norm) == 0.0 else 0
        with self._stops(step):
            ensure_finite(step, **{k: v for k, v in values.items() if v is not None})
            if self.zero_norms >= ZERO_GRAD_STEPS:
                raise DivergedError(
                    f"step {step}: grad_norm is exactly 0 for {self.zero_norms} steps in a row; the model no longer "
                    f"learns (diverged into saturation: {TRAIN_HINT}); nothing after the last good checkpoint was saved"
                )

    @contextlib.contextmanager
    def _stops(self, step: int) -> Iterator[None]:
        """A DivergedError raised inside is logged as `diverged` at `step` and the log closed before it goes on."""
        try:
            yield
        except DivergedError as e:
            self.log.log("diverged", step, message=str(e))
            self.log.close()
            raise

    def record(
        self, step: int, epoch: int, sums: Sums, metrics: dict[str, float], norm: float | None, bar: str, tokens: int
    ) -> None:
        """Log step `step`'s metrics (every train.log_every and at the last) and update the progress bar;
        `tokens` (unpadded, all processes) give the bar's tok/s where the metrics have no tokens_per_s."""
        self.steps, self.metrics = step, metrics
        add_step(self.state, metrics)
        for key, v in sums.items():
            self.run_sums[key] = self.run_sums.get(key, 0) + v
        self.state["tokens"] = self.state.get("tokens", 0) + int(sums.get("tokens", 0))
        norms = {"grad_norm": norm} if norm is not None else {}
        if step % self.t.log_every == 0 or step == self.total:
            self.log.log("train", step, lr=self.optimizer.param_groups[0]["lr"], epoch=epoch, **norms, **metrics)
        if "tokens_per_s" not in metrics:
            bar += f" · {tokens / max(self.dt, 1e-9):,.0f} tok/s"
        self.bar.update(self.task, completed=step, info=bar)

    def warn(self, step: int, message: str) -> None:
        """A `warning` record in the metrics log, printed once (main process)."""
        self.log.log("warning", step, message=message)
        if self.accel.is_main_process:
            print(f"warning: {message}")

    def eval_save_stop(self, step: int, evaluate: Callable[[], dict[str, float]] | None) -> bool:
        """Evaluate (every train.eval_every and at the last step; a NaN/inf eval loss stops the run as a training
        loss does), checkpoint (every train.save_every, at the last step, at an early stop and at an eval that sets
        a new best, which keep_last then keeps; `saved` says whether this step did); True when the loop should end
        here."""
        t, state, last, best = self.t, self.state, step == self.total, False
        if evaluate is not None and ((t.eval_every and step % t.eval_every == 0) or last):
            self.last_eval = evaluate()
            dist.reshard(self.module)  # FSDP: no-grad forwards leave the root's weights gathered
            with self._stops(step):  # before it is logged, compared with the best or saved; reduced: all stop
                ensure_finite(step, EVAL_HINT, EVAL_WHAT, eval_loss=self.last_eval["eval_loss"])
            if self.last_eval["eval_loss"] < state["best_eval"] - 1e-6:
                state.update(best_eval=self.last_eval["eval_loss"], best_step=step, bad_evals=0)
                best = True  # saved below even off the save_every cadence: a best step without weights is no use
            else:
                state["bad_evals"] += 1
            self.log.log("eval", step, **self.last_eval)
            self.stopped_early = bool(t.early_stop_patience and state["bad_evals"] >= t.early_stop_patience)
        self.saved = bool((t.save_every and step % t.save_every == 0) or last or self.stopped_early or best)
        if self.saved:
            protect = {state["best_step"]} if state["best_step"] else set()
            out = Path(t.out)
            dist.save_checkpoint(self.accel, out, step, self.module, self.optimizer, state, t.keep_last, protect)
        self.accel.wait_for_everyone()
        self.t0 = time.perf_counter()  # a step's tokens/s times its training only, not the eval or save before it
        return self.stopped_early or (t.stop_after is not None and step >= t.stop_after)

    def summary(self, summarize: Callable[[Sums, float], dict[str, float]]) -> dict[str, Any]:
        """Steps taken, whether the run finished, the last eval, and the train metrics: `train_X` the mean of the
        step values of X over the run's steps that had one (as HF Trainer's train_loss; resumed: from step 1, but
        from the resume for checkpoints older than this mean; `train_mean_steps` says how many), rates (`*_per_s`)
        wall-clock over this invocation's steps, `last_train_X` the last step's."""
        wall = summarize(self.run_sums, time.perf_counter() - self.run_t0) if self.run_sums else {}
        means = run_means(self.state, self.metrics)
        return {
            "steps": self.steps,
            "total_steps": self.total,
            "stopped_early": self.stopped_early,
            "finished": self.steps >= self.total or self.stopped_early,
            **self.last_eval,
            **{k: v for k, v in means.items() if not k.startswith("last_train_")},
            **{f"train_{k}": v for k, v in wall.items() if k.endswith("_per_s")},
            **{k: v for k, v in means.items() if k.startswith("last_train_")},
        }


def add_step(state: dict[str, Any], metrics: dict[str, float]) -> None:
    """Add a step's metrics to the run's sums in `state` (checkpointed with it: a resume averages on)."""
    state["train_steps"] = state.get("train_steps", 0) + 1
    for key, v in metrics.items():
        total = state.setdefault("train_sums", {}).setdefault(key, [0.0, 0])
        total[0], total[1] = total[0] + v, total[1] + 1


def run_means(state: dict[str, Any], last: dict[str, float]) -> dict[str, float]:
    """`train_X`: the mean of X over the steps `add_step` summed (rates `*_per_s` left out), `train_mean_steps` how
    many, and `last_train_X`: X of the `last` step."""
    sums = state.get("train_sums", {})
    means = {f"train_{k}": total / n for k, (total, n) in sums.items() if not k.endswith("_per_s")}
    return {**means, **({"train_mean_steps": state["train_steps"]} if sums else {}),
            **{f"last_train_{k}": v for k, v in last.items()}}  # fmt: skip


def new_state() -> dict[str, Any]:
    # train_sums: metric → [sum of its step values, steps that had it], train_steps: steps summed (`Tracker.summary`)
    return {"step": 0, "best_eval": float("inf"), "best_step": None, "bad_evals": 0, "tokens": 0, "train_sums": {},
            "train_steps": 0}  # fmt: skip


class Opened(NamedTuple):
    """What `open_run` decided, for `start`. As a context manager around everything up to `start`, it removes the
    staged rejects files when the run is refused before `start` (unless the refusal names them)."""

    config_yaml: str
    inputs: dict  # input fingerprints
    ckpt: Path | None  # the checkpoint to resume; None: a fresh start
    staged: Path  # where the data's rejects files go until `start` moves them into `out` (made when written)
    state: dict  # the checkpoint's step and data keys (`new_state()` when fresh), for `EpochPlan.total_steps`
    same_steps: bool = False  # the checkpoint's processes were others, its steps alike (`ck.same_steps`)
    cleans: bool = True  # the machine's first process: it removes the staged folder its machine's processes share

    def __enter__(self) -> Opened:
        return self

    def __exit__(self, kind: object, error: object, tb: object) -> None:
        if error is not None and str(self.staged) in str(error):
            return  # the refusal names them (no valid row: the rejects say why), so they stay
        if self.cleans:  # ours (a random name); gone already after `start`
            shutil.rmtree(self.staged, ignore_errors=True)


def open_run(out: Path, t: TrainSpec, cfg: Any, accel: Any) -> Opened:
    """Before the data is read: the checkpoint `t.resume` names if the config `cfg` still trains the same thing on the
    same models (else refused), or None for a fresh start. Nothing in `out` changes until `start`: the data's rejects
    files are staged in a temp folder (`Opened.staged`), and the previous run's files move aside in `start`, so a run
    refused on its data or model leaves `out` as it was (a bad row used to leave the previous run in previous/)."""
    from weitiao.config import dump_config

    config_yaml, inputs = dump_config(cfg), ck.input_fingerprints(cfg)
    main, world = accel.is_main_process, accel.num_processes
    ckpt = ck.open_run(out, t.resume, config_yaml, main, inputs, world, dist.gather_objects, write=False, move=False)
    # one folder for all processes (the main process's name; one per machine): each writes the same rejects files into
    # it, and a refusal names the one that stays (a folder per process left one folder per process, one named)
    staged = Path(tempfile.gettempdir()) / f"weitiao-rejects-{dist.gather_objects(secrets.token_hex(8))[0]}"
    state, same = new_state(), False
    if ckpt is not None:
        saved = ck.saved_state(ckpt)
        state.update({k: saved[k] for k in ("step", "data_key", "data_content", "eval_content") if k in saved})
        same = ck.same_steps(ckpt, config_yaml, ck.saved_world(saved), world)
    return Opened(config_yaml, inputs, ckpt, staged, state, same, accel.is_local_main_process)


def eval_digest(evals: Any, *extra: Any) -> str:
    """A digest of eval examples' tokens and labels and of their per-row values `extra` (weights, margins, labels);
    "" for no eval set."""
    import numpy as np

    if not len(evals):
        return ""
    h = hashlib.sha256(repr(extra).encode())
    for e in evals:
        h.update(np.asarray(e.input_ids, dtype=np.int64).tobytes() + b"|")
        h.update(np.asarray(e.labels, dtype=np.int64).tobytes() + b"|")
    return h.hexdigest()[:16]


# Keys that only change how a process reads or shows things: they may differ from process to process.
LOCAL_KEYS = {"data.cache", "data.cache_dir", "data.num_proc", "train.progress", "train.progress_every_s"}


def same_on_every_process(
    accel: Any,
    cfg: Any,
    config_yaml: str,
    inputs: dict,
    lengths: list[int],
    content: str,
    evals: Any,
    *extra: Any,
    data_key: str = "data.train",
    rows: str = "rows (pairs)",
) -> None:
    """Refuse a run whose processes read another config, other data or other models (a copy per node, one stale):
    each trained its share of its own rows at its own settings, and the run was recorded as process 0's, exit 0.
    Compared: the config but for paths and LOCAL_KEYS, what the paths hold (the training rows' `lengths` and
    `content` digest, the eval examples `evals`, `extra` per-pair values; the models' fingerprints; the bytes of
    train.golden). `config_yaml`, `inputs`: `Opened`'s. `data_key`, `rows`: the rows' config key and name.
    Collective."""
    if accel.num_processes == 1:
        return
    import socket

    from weitiao.config import path_keys

    h = hashlib.sha256(repr((lengths, content, extra, eval_digest(evals))).encode())
    golden = getattr(getattr(cfg, "train", None), "golden", None)  # answered at saves, by each process its share
    golden = hashlib.sha256(Path(golden).read_bytes()).hexdigest() if golden and Path(golden).is_file() else None
    mine = (socket.gethostname(), config_yaml, inputs, (len(lengths), content, h.hexdigest()), golden)
    every = dist.gather_objects(mine)
    paths = {".".join(k) for k in path_keys(type(cfg))}
    host0, yaml0, inputs0, data0, golden0 = every[0]
    for rank, (host, yaml_r, inputs, data, golden_r) in enumerate(every[1:], 1):
        changes = {k: v for k, v in ck.config_changes(yaml0, yaml_r).items() if k not in paths | LOCAL_KEYS}
        models = sorted(k for k in inputs0.keys() | inputs.keys() if inputs0.get(k) != inputs.get(k))
        if changes:
            key, (a, b) = next(iter(changes.items()))
            what = f"config key {key}: {a!r} on process 0, {b!r} on process {rank}"
        elif models:
            what = f"what {models[0]} names (other weights or code behind the same path)"
        elif data[0] != data0[0]:
            what = f"{data_key}: {data0[0]} {rows} on process 0, {data[0]} on process {rank}"
        elif data[1] != data0[1]:
            what = f"{data_key}: other texts in its {data[0]} {rows}"
        elif golden_r != golden0:
            what = "train.golden: other prompts behind the same path (or no file on one of them)"
        elif data != data0:
            what = "eval data or per-pair values (data.eval, weights, margins)"
        else:
            continue
        raise UserError(
            f"train: process {rank} ({host}) reads other inputs than process 0 ({host0}): {what}; every process "
            "must train on the same config, data and models (each would train its share of its own): put them on "
            "storage every node shares, or give every node the same copy"
        )


def start(
    out: Path, t: TrainSpec, opened: Opened, accel: Any, module: Any, optimizer: Any, plan: EpochPlan
) -> tuple[dict, Path | None, MetricsLog]:
    """Resume from `open_run`'s checkpoint (weights, optimizer, this process's RNG, data position, early-stop state)
    or start fresh, the previous run's files moved aside first; move the staged rejects files into `out`; write
    config.yaml and inputs.json; open the metrics log. `module` is what the recipe passed to accelerator.prepare;
    `plan`: the run's, whose `total_steps` has passed (its refusals come before anything here is written)."""
    config_yaml, inputs, ckpt, staged = opened.config_yaml, opened.inputs, opened.ckpt, opened.staged
    if ckpt is None:
        ck.set_aside(out, accel.is_main_process)
    accel.wait_for_everyone()  # the previous run is aside before any process writes into `out`
    if staged.is_dir() and accel.is_local_main_process:  # the machine's processes wrote the same files into it
        moved = []
        for f in sorted(staged.iterdir()) if accel.is_main_process else ():
            out.mkdir(parents=True, exist_ok=True)
            moved.append(shutil.move(f, out / f.name))
        shutil.rmtree(staged, ignore_errors=True)
        if moved:  # the data line counts them; here is where they are (one JSONL line each)
            where = ", ".join(f"{p} ({sum(1 for _ in open(p, 'rb'))})" for p in moved)
            print(f"rows set aside (data.skip_invalid), each with its file:line and why: {where}")
    ck.record(out, t.resume, config_yaml, accel.is_main_process, inputs, ckpt)
    state = new_state()
    rank, world = accel.process_index, accel.num_processes
    if ckpt is not None:
        force = t.resume == "force"
        state.update(dist.load_checkpoint(ckpt, accel, module, optimizer, rank, world, force, opened.same_steps))
    state.update(plan.keys)  # this data's (after a forced resume on other data, the new data's)
    resumed_at = state["step"] if ckpt is not None else None
    log = MetricsLog(out, accel.is_main_process, t.tensorboard, t.report_to, config_yaml, resumed_at)
    log.log("run", state["step"], device=accel.device.type, world=world)  # read by calc plan
    return state, ckpt, log


def finish(
    out: Path,
    model: Any,
    tokenizer: Any,
    template: ChatTemplate,
    summary: dict,
    log: MetricsLog,
    accel: Any,
    weights: dict[str, torch.Tensor] | None = None,
    extra: Callable[[Path], None] | None = None,
) -> Path | None:
    """Save final weights + the tokenizer carrying the training chat template (+ what `extra(folder)` writes, the
    recipe's own files); log `done`; close. `final/` appears whole or not at all (`publish_dir`): a crash while
    writing it left a partial folder that resume then refused as finished.

    `weights`: the gathered full state dict where the model holds shards (`dist.full_weights`, which
    every process calls). A causal LM's weights get a generation_config.json that stops at the
    template's end-of-turn.
    """
    final = None
    if accel.is_main_process and summary["finished"]:

        def fill(folder: Path) -> None:
            saved = ck.save_weights(model, folder, weights)
            gen = getattr(model, "generation_config", None)  # None for a reward model's classifier
            if gen is not None:
                write_generation_config(saved, gen, stop_ids(tokenizer, template, gen.eos_token_id))
            if (saved / "config.json").is_file():
                legacy_config_keys(saved)
            save_tokenizer(tokenizer, template, folder / "tokenizer")
            if extra is not None:
                extra(folder)

        final = out / "final"
        publish_dir(final, fill)
        log.log("done", summary["steps"], **{k: v for k, v in summary.items() if isinstance(v, (int, float))})
    log.close()
    accel.wait_for_everyone()
    return final
