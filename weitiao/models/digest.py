"""Which weights a model folder holds: a digest that is the same for the same weights wherever and however stored.

A reward model records its base's digest when it is trained; PPO's critic and every reward-model load compare it
with the base they are given (weitiao/models/heads.py, weitiao/recipes/rewards.py).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch


def weights_digest(path: Path) -> str | None:
    """Hash of each tensor's name, shape and first row (as float32) in a model folder's safetensors files; None
    without any. The same for the same weights wherever they sit, however sharded, in bf16 or upcast; another after
    any fine-tuning or LoRA merge (W + BA moves every row of a merged matrix). Reads a few KiB per tensor."""
    from safetensors import safe_open

    rows: dict[str, tuple[list[int], torch.Tensor]] = {}
    for f in sorted(path.glob("*.safetensors")) if path.is_dir() else []:
        with safe_open(str(f), framework="pt") as fh:
            for name in fh.keys():
                part = fh.get_slice(name)
                shape = part.get_shape()
                first = part[tuple(slice(0, 1) for _ in shape[:-1])] if len(shape) > 1 else fh.get_tensor(name)
                rows[name] = (shape, first.float())
    if not rows:
        return None
    h = hashlib.sha256()
    for name in sorted(rows):
        shape, first = rows[name]
        h.update(f"{name} {shape}".encode())
        h.update(first.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def model_digest(ref: str) -> str | None:
    """`weights_digest` of the local folder a model reference names; None when it is not local or holds none."""
    local = local_model(ref)
    return weights_digest(local) if local is not None else None


def local_model(value: str) -> Path | None:
    """The local file or folder a model reference names: 'demo', a path, or a hub id through the local cache."""
    from weitiao.models.load import resolve_path  # here: load imports transformers and peft

    local = Path(resolve_path(value) if value == "demo" else value).expanduser()
    if local.exists():
        return local
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(value, local_files_only=True))
    except Exception:  # module:function, a name the hub cache does not hold: nothing on disk
        return None
