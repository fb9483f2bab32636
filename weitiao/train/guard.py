"""Stop a run at the first non-finite number instead of training on (and saving) NaN weights."""

from __future__ import annotations

import math

import torch

from weitiao.errors import UserError


class DivergedError(UserError):
    """Loss or gradient norm became NaN/inf; the last good checkpoint is kept."""


TRAIN_HINT = "lower train.lr, check the data, or set train.max_grad_norm"
# An eval loss goes non-finite with the weights or on eval rows alone (a 16-bit overflow): either way it would pick
# the best checkpoint and decide early stopping (NaN < best is False: counted as a bad eval).
EVAL_WHAT = "the loss on the eval data is not finite, so it can pick no best checkpoint and decide no early stop"
EVAL_HINT = "lower train.lr, check data.eval, or set model.dtype=fp32"


def ensure_finite(
    step: int, hint: str = TRAIN_HINT, what: str = "training diverged", **values: float | torch.Tensor
) -> None:
    """Raise DivergedError naming the step and the first non-finite value among `values`; `what` says what went
    wrong, `hint` names the keys."""
    for name, v in values.items():
        x = float(v.detach().float().item()) if isinstance(v, torch.Tensor) else float(v)
        if not math.isfinite(x):
            raise DivergedError(
                f"step {step}: {name} is {x}; {what} ({hint}); nothing after the last good checkpoint was saved"
            )
