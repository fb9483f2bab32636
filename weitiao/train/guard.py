"""Stop a run at the first non-finite number instead of training on (and saving) NaN weights."""

from __future__ import annotations

import math

import torch

from weitiao.errors import UserError


class DivergedError(UserError):
    """Loss or gradient norm became NaN/inf; the last good checkpoint is kept."""


TRAIN_HINT = "lower train.lr, check the data, or set train.max_grad_norm"


def ensure_finite(step: int, hint: str = TRAIN_HINT, **values: float | torch.Tensor) -> None:
    """Raise DivergedError naming the step and the first non-finite value among `values`; `hint` names the keys."""
    for name, v in values.items():
        x = float(v.detach().float().item()) if isinstance(v, torch.Tensor) else float(v)
        if not math.isfinite(x):
            raise DivergedError(
                f"step {step}: {name} is {x}; training diverged ({hint}); "
                "nothing after the last good checkpoint was saved"
            )
