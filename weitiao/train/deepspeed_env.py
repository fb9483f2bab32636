"""DS_ACCELERATOR for DeepSpeed's accelerator probe, named just before DeepSpeed is first imported.

Light on purpose (no torch at import): the CLI installs the hook for every command, and a command
that never reaches DeepSpeed (`--help`, a missing config file) never imports torch for it.
"""

from __future__ import annotations

import importlib.abc
import os
import sys
from typing import Any


def name_cpu_for_deepspeed() -> None:
    """On a machine without CUDA, DS_ACCELERATOR defaults to cpu: accelerate's unwrap (every save) and peft's merge
    import DeepSpeed where it is installed, and its accelerator probe then warns "Setting accelerator to CPU. If you
    have GPU ... unable to detect it" into every CPU run; cpu is what the probe picks. A user's own value stays."""
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


class _BeforeDeepSpeed(importlib.abc.MetaPathFinder):
    """Runs `name_cpu_for_deepspeed` on the first look-up of `deepspeed` (an import or accelerate's and
    transformers' `find_spec` probes), then leaves the import to the ordinary finders."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name == "deepspeed":
            if self in sys.meta_path:
                sys.meta_path.remove(self)
            name_cpu_for_deepspeed()
        return None


def name_cpu_before_deepspeed() -> None:
    """`name_cpu_for_deepspeed` when DeepSpeed is first looked up (now, if it already was imported)."""
    if "deepspeed" in sys.modules:
        name_cpu_for_deepspeed()
    elif not any(isinstance(f, _BeforeDeepSpeed) for f in sys.meta_path):
        sys.meta_path.insert(0, _BeforeDeepSpeed())
