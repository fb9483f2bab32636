"""Saving under FSDP2: two gloo processes on CPU save the adapter and checkpoint a one-process run saves."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from accelerate.utils import DistributedType
from safetensors.torch import load_file

from weitiao.config import load_config
from weitiao.errors import UserError
from weitiao.recipes import sft
from weitiao.train import dist

ROOT = Path(__file__).resolve().parents[1]


def adapter(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "adapter" / "adapter_model.safetensors"))


@pytest.mark.slow
def test_fsdp2_lora_sft_saves_what_one_process_trains(tiny_model_dir, chat_file, tmp_path):
    """2 processes × 1 micro-batch under FSDP2, stopped after step 1 and resumed, = 1 process × grad_accum
    2 straight: the same global batches, so the same adapter and optimizer state. LoRA dropout is 0
    here: each process draws its own dropout masks, which one process cannot reproduce. Before the
    collective save, process 0 called save_pretrained on its shards (DTensors) and the run died at
    the first save."""
    common = [
        f"model.path={tiny_model_dir}",
        f"data.train=[{chat_file}]",
        "train.progress=false",
        "train.tensorboard=false",
        "train.micro_batch_size=1",
        "data.max_len=64",
        "train.max_steps=2",
        "train.save_every=1",
        "lora.dropout=0",
        "train.lr=5e-3",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT)}

    def fsdp(*extra: str) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        run = ["-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1", f"--master_port={port}"]
        cmd = [sys.executable, *run, "tests/fsdp_driver.py", *common, f"train.out={tmp_path / 'fsdp'}", *extra]
        p = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
        assert p.returncode == 0, p.stderr[-3000:]

    fsdp("train.stop_after=1")  # killed after step 1's checkpoint ...
    assert not (tmp_path / "fsdp" / "final").exists()
    fsdp()  # ... and resumed under FSDP: weights and optimizer state scattered back into shards
    sft.run(load_config(sft.SFTConfig, None, [*common, "train.grad_accum=2", f"train.out={tmp_path / 'one'}"]))

    for sub in ("final", "checkpoints/step-000001", "checkpoints/step-000002"):
        a, b = adapter(tmp_path / "fsdp" / sub), adapter(tmp_path / "one" / sub)
        assert a.keys() == b.keys() and len(a) == 28  # 2 layers × 7 projections × (A, B)
        for k in a:
            torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=0)
    step1 = adapter(tmp_path / "one" / "checkpoints" / "step-000001")
    moved = [k for k in a if not torch.equal(a[k], step1[k])]
    assert moved  # negative control: step 2 trained something
    # Optimizer state saved whole (every shard gathered), as one process saves it.
    opt_f = torch.load(tmp_path / "fsdp/checkpoints/step-000002/trainer_state.pt", weights_only=False)["optimizer"]
    opt_1 = torch.load(tmp_path / "one/checkpoints/step-000002/trainer_state.pt", weights_only=False)["optimizer"]
    assert opt_f["state"].keys() == opt_1["state"].keys()
    for i, s in opt_1["state"].items():
        for key in ("exp_avg", "exp_avg_sq"):
            assert opt_f["state"][i][key].shape == s[key].shape
            torch.testing.assert_close(opt_f["state"][i][key], s[key], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    "kind, fsdp2, match",
    [
        (DistributedType.FSDP, False, "fsdp_version 1 is not supported"),
    ],
)
def test_setups_we_cannot_save_whole_are_refused_at_start(kind, fsdp2, match):
    with pytest.raises(UserError, match=match) as e:
        dist.refuse_unsavable(SimpleNamespace(distributed_type=kind, is_fsdp2=fsdp2))
    assert "\n" not in str(e.value) and "fsdp.yaml" in str(e.value)
    for ok in (DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU):
        dist.refuse_unsavable(SimpleNamespace(distributed_type=ok, is_fsdp2=False))  # negative control
    dist.refuse_unsavable(SimpleNamespace(distributed_type=DistributedType.FSDP, is_fsdp2=True))
