"""Checkpoints: atomic directory writes, keep-last-K, and everything exact resume needs.

A checkpoint is `checkpoints/step-NNNNNN/` holding the weights users load (`adapter/` for LoRA,
a peft adapter dir; `model/` for full fine-tuning) plus `trainer_state.pt` (optimizer, step,
data position, RNG states, early-stopping state). It is written under a temp name and renamed,
so a run killed mid-save leaves the previous checkpoints intact.
"""

from __future__ import annotations

import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

STATE_FILE = "trainer_state.pt"


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def is_peft(model: Any) -> bool:
    return hasattr(model, "peft_config")


def save_weights(model: Any, out: Path) -> Path:
    """Save the user-facing weights: adapter dir for peft models, full HF dir otherwise."""
    target = out / ("adapter" if is_peft(model) else "model")
    model.save_pretrained(target, safe_serialization=True)
    return target


def load_weights(model: Any, ckpt: Path) -> None:
    """Restore trained weights saved by `save_weights` into an identically built model."""
    from safetensors.torch import load_file

    if is_peft(model):
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(str(ckpt / "adapter" / "adapter_model.safetensors")))
    else:  # the model's own class: a reward model's `score` head is not a causal LM's `lm_head`
        src = type(model).from_pretrained(ckpt / "model", dtype=next(model.parameters()).dtype)
        model.load_state_dict(src.state_dict())


def save_checkpoint(
    run_dir: Path,
    step: int,
    model: Any,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    keep_last: int,
    protect: set[int] | None = None,
) -> Path:
    """Write checkpoint `step` atomically, then drop the oldest beyond `keep_last` (never `protect`)."""

    def fill(tmp: Path) -> None:
        save_weights(model, tmp)
        torch.save({**state, "step": step, "optimizer": optimizer.state_dict(), "rng": rng_state()}, tmp / STATE_FILE)

    return write_checkpoint(run_dir, step, fill, keep_last, protect)


def write_checkpoint(
    run_dir: Path, step: int, fill: Callable[[Path], None], keep_last: int, protect: set[int] | None = None
) -> Path:
    """`fill(dir)` writes a checkpoint into a temp dir, renamed to `step-NNNNNN` when done; keep-last-K after."""
    root = run_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    tmp = root / f".tmp-step-{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    fill(tmp)
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    ckpts = list_checkpoints(run_dir)
    keep = set(ckpts[-keep_last:]) if keep_last > 0 else set(ckpts)
    for c in ckpts:
        if c not in keep and step_of(c) not in (protect or set()):
            shutil.rmtree(c)
    return final


def step_of(ckpt: Path) -> int:
    return int(ckpt.name.split("-")[1])


def list_checkpoints(run_dir: Path) -> list[Path]:
    root = run_dir / "checkpoints"
    if not root.exists():
        return []
    return sorted((p for p in root.iterdir() if p.name.startswith("step-") and (p / STATE_FILE).exists()), key=step_of)


def load_checkpoint(ckpt: Path, model: Any, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore weights, optimizer and RNG; returns the saved trainer state."""
    load_weights(model, ckpt)
    state = torch.load(ckpt / STATE_FILE, weights_only=False)
    optimizer.load_state_dict(state.pop("optimizer"))
    set_rng_state(state.pop("rng"))
    return state


def clear_previous_run(out: Path) -> list[str]:
    """A fresh (not resumed) run in a used dir: remove the old run's logs, checkpoints and outputs.

    Otherwise metrics would append to the old file and keep-last-K could keep the old run's
    later checkpoints, which `resume: auto` would then pick up.
    """
    removed = []
    for name in ("metrics.jsonl", "tb", "checkpoints", "final", "golden.jsonl"):
        p = out / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
        else:
            continue
        removed.append(name)
    return removed


def resume_point(out: Path, resume: str) -> Path | None:
    """`auto`: latest checkpoint under `out` (None if none); `none`; or an explicit checkpoint dir."""
    if resume == "none":
        return None
    if resume == "auto":
        ckpts = list_checkpoints(out)
        return ckpts[-1] if ckpts else None
    p = Path(resume)
    if not (p / STATE_FILE).exists():
        from weitiao.errors import UserError

        raise UserError(f"train.resume: {p} is not a checkpoint dir (no {STATE_FILE})")
    return p
