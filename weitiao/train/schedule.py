"""Learning-rate schedule as a pure function of the step (so resume needs no scheduler state)."""

from __future__ import annotations

import math


def lr_at(step: int, total: int, base_lr: float, warmup: int, kind: str = "cosine", min_ratio: float = 0.0) -> float:
    """LR for optimizer step `step` (0-based): linear warmup, then cosine/linear decay or constant."""
    if warmup > 0 and step < warmup:
        return base_lr * (step + 1) / warmup
    if kind == "constant" or total <= warmup:
        return base_lr
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if kind == "linear":
        factor = 1.0 - progress
    else:
        factor = 0.5 * (1.0 + math.cos(math.pi * progress))
    return base_lr * (min_ratio + (1.0 - min_ratio) * factor)
