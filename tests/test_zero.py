"""DeepSpeed ZeRO-2/3: two gloo processes on CPU save and resume what one process trains; setups we
cannot step or save as one process would are refused at start."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from accelerate.utils import DistributedType
from conftest import write_jsonl
from safetensors.torch import load_file
from test_dpo import make_pairs

from weitiao.config import load_config
from weitiao.errors import UserError
from weitiao.recipes import dpo, rm, sft
from weitiao.train import zero
from weitiao.train.spec import TrainSpec

ROOT = Path(__file__).resolve().parents[1]
needs_deepspeed = pytest.mark.skipif(
    __import__("importlib").util.find_spec("deepspeed") is None,
    reason="deepspeed not installed (pip install deepspeed)",
)


def adapter(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "adapter" / "adapter_model.safetensors"))


def launch(stage: int, recipe: str, args: list[str]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "DS_ACCELERATOR": "cpu",
        "PYTHONPATH": str(ROOT),
    }
    run = ["-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1", f"--master_port={port}"]
    cmd = [sys.executable, *run, "tests/zero_driver.py", str(stage), recipe, *args]
    p = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-3000:]


@needs_deepspeed
@pytest.mark.slow
@pytest.mark.parametrize("recipe, first, then", [("sft", 2, 3), ("dpo", 3, 2), ("rm", 2, 3)])
def test_zero_lora_run_saves_what_one_process_trains(tiny_model_dir, chat_file, tmp_path, recipe, first, then):
    """2 processes × 1 micro-batch under ZeRO-`first`, stopped after step 1, resumed under ZeRO-`then`
    = 1 process × grad_accum 2 straight: the same adapters (a reward model's with its score head) and
    optimizer state. Each stage's save (partitions gathered) and restore (scattered back, the fp32
    master copy included) is checked by some case, and a checkpoint moves between stages. Before,
    DeepSpeed was refused; accelerate's own DeepSpeed path steps inside backward on every
    micro-batch, and a plain save holds one process's partition."""
    data = chat_file if recipe == "sft" else write_jsonl(tmp_path / "pairs.jsonl", make_pairs(24))
    common = [
        f"model.path={tiny_model_dir}",
        f"data.train=[{data}]",
        "train.progress=false",
        "train.tensorboard=false",
        "train.micro_batch_size=1",
        "data.max_len=64",
        "train.max_steps=2",
        "train.save_every=1",
        "lora.dropout=0",  # each process draws its own dropout masks, which one process cannot reproduce
        "train.lr=2e-3",  # Adam's step is ~lr wherever a gradient is ~0: reduction-order noise scales with it
    ]
    launch(first, recipe, [*common, f"train.out={tmp_path / 'zero'}", "train.stop_after=1"])
    assert not (tmp_path / "zero" / "final").exists()
    launch(then, recipe, [*common, f"train.out={tmp_path / 'zero'}"])
    module, config = {"sft": (sft, sft.SFTConfig), "dpo": (dpo, dpo.DPOConfig), "rm": (rm, rm.RMConfig)}[recipe]
    module.run(load_config(config, None, [*common, "train.grad_accum=2", f"train.out={tmp_path / 'one'}"]))

    n = 29 if recipe == "rm" else 28  # 2 layers × 7 projections × (A, B), and the reward model's score head
    for sub in ("final", "checkpoints/step-000001", "checkpoints/step-000002"):
        a, b = adapter(tmp_path / "zero" / sub), adapter(tmp_path / "one" / sub)
        assert a.keys() == b.keys() and len(a) == n
        for k in a:
            torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=0)
    step1 = adapter(tmp_path / "one" / "checkpoints" / "step-000001")
    assert [k for k in a if not torch.equal(a[k], step1[k])]  # negative control: step 2 trained something
    for step in ("step-000001", "step-000002"):
        opt_z = torch.load(tmp_path / f"zero/checkpoints/{step}/trainer_state.pt", weights_only=False)["optimizer"]
        opt_1 = torch.load(tmp_path / f"one/checkpoints/{step}/trainer_state.pt", weights_only=False)["optimizer"]
        assert opt_z["state"].keys() == opt_1["state"].keys() and len(opt_1["state"]) == n
        for i, s in opt_1["state"].items():
            assert torch.equal(opt_z["state"][i]["step"], s["step"])
            for key in ("exp_avg", "exp_avg_sq"):
                assert opt_z["state"][i][key].shape == s[key].shape
                torch.testing.assert_close(opt_z["state"][i][key], s[key], atol=1e-6, rtol=1e-4)
        assert opt_z["param_groups"][0]["lr"] == opt_1["param_groups"][0]["lr"]


def fake_accel(stage: int = 2, init: bool = False, **cfg) -> SimpleNamespace:
    ds = {"zero_optimization": {"stage": stage, "offload_optimizer": {"device": "none"}}, **cfg}
    plugin = SimpleNamespace(deepspeed_config=ds, zero3_init_flag=init)
    return SimpleNamespace(distributed_type=DistributedType.DEEPSPEED, state=SimpleNamespace(deepspeed_plugin=plugin))


@pytest.mark.parametrize(
    "accel, match",
    [
        (fake_accel(1), "zero_stage 1 is not supported"),
        (fake_accel(2, zero_optimization={"stage": 2, "offload_optimizer": {"device": "cpu"}}), "offload_optimizer"),
        (fake_accel(3, zero_optimization={"stage": 3, "offload_param": {"device": "nvme"}}), "offload_param"),
        (fake_accel(2, bf16={"enabled": True}), "bf16 is not supported"),
        (fake_accel(2, fp16={"enabled": "auto"}), "fp16 is not supported"),
        (fake_accel(2, optimizer={"type": "AdamW"}), "optimizer section"),
        (fake_accel(3, init=True), "zero3_init_flag"),
    ],
)
def test_zero_setups_we_cannot_step_or_save_are_refused_at_start(accel, match):
    with pytest.raises(UserError, match=match) as e:
        zero.refuse_unsavable(accel)
    assert "\n" not in str(e.value)


@needs_deepspeed
def test_shipped_zero_configs_pass_the_start_checks():
    """examples/accelerate/zero{2,3}.yaml → accelerate's DeepSpeedPlugin (as `accelerate launch` builds
    it) → accepted; negative control: the same with bf16 is refused."""
    from accelerate.utils import DeepSpeedPlugin

    for stage in (2, 3):
        data = yaml.safe_load((ROOT / "examples" / "accelerate" / f"zero{stage}.yaml").read_text())
        assert data["distributed_type"] == "DEEPSPEED" and data["mixed_precision"] == "no"
        plugin = DeepSpeedPlugin(**data["deepspeed_config"])
        accel = SimpleNamespace(
            distributed_type=DistributedType.DEEPSPEED, state=SimpleNamespace(deepspeed_plugin=plugin)
        )
        zero.refuse_unsavable(accel)
        assert plugin.deepspeed_config["zero_optimization"]["stage"] == stage
        plugin.deepspeed_config["bf16"] = {"enabled": True}
        with pytest.raises(UserError, match="bf16"):
            zero.refuse_unsavable(accel)


def test_prepare_fills_deepspeed_from_train_spec_and_takes_the_step():
    """DeepSpeed's config gets train.*'s batch, accumulation and clipping and its managed accumulation
    off; the engine is stepped by the norm query, once per step; a conflicting config value is refused."""
    calls = []
    engine = SimpleNamespace(
        backward=lambda loss, **kw: calls.append(("backward", kw)),
        step=lambda: calls.append(("step",)),
        get_global_grad_norm=lambda: torch.tensor(2.5),
    )
    accel = fake_accel(2, gradient_accumulation_steps="auto", gradient_clipping="auto")
    accel.num_processes = 2
    accel.prepare = lambda m, o: (engine, SimpleNamespace(param_groups=o.param_groups))
    t = TrainSpec(micro_batch_size=3, grad_accum=4, max_grad_norm=0.5)
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))])
    module, optimizer = zero.prepare(accel, t, object(), opt)
    cfg = accel.state.deepspeed_plugin.deepspeed_config
    assert (cfg["train_micro_batch_size_per_gpu"], cfg["gradient_accumulation_steps"], cfg["train_batch_size"]) == (
        3,
        4,
        24,
    )
    assert cfg["gradient_clipping"] == 0.5 and cfg["managed_gradient_accumulation"] is False
    steps = accel.deepspeed_engine_wrapped
    steps.backward(torch.tensor(1.0), sync_gradients=True)
    steps.backward(torch.tensor(1.0), sync_gradients=True)
    assert steps.get_global_grad_norm() == 2.5
    optimizer.step()  # the norm query took the step: no second one
    assert calls == [("backward", {"scale_wrt_gas": False})] * 2 + [("step",)]
    optimizer.zero_grad()
    assert optimizer.param_groups is opt.param_groups

    bad = fake_accel(2, gradient_clipping=1.0)
    bad.num_processes = 1
    with pytest.raises(UserError, match="gradient_clipping 1.0 differs from train.max_grad_norm 0.5"):
        zero.prepare(bad, t, object(), opt)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without a GPU")
@pytest.mark.parametrize("var", ["ACCELERATE_USE_DEEPSPEED", "ACCELERATE_USE_FSDP"])
def test_sharded_launch_on_a_machine_without_gpu_is_refused_not_run_as_ddp(monkeypatch, var):
    """`accelerate launch --config_file examples/accelerate/zero2.yaml` (or fsdp.yaml) on CPU: accelerate would
    run plain DDP and say nothing; the recipes stop with one line instead."""
    from weitiao.train import dist

    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED", raising=False)
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    assert dist.accelerator().distributed_type == DistributedType.NO  # negative control: a plain run starts
    monkeypatch.setenv(var, "true")
    with pytest.raises(UserError, match="needs a GPU .*silently run plain DDP"):
        dist.accelerator()


def test_accelerate_launch_cpu_with_several_processes_is_refused_not_run_alone(monkeypatch):
    """`accelerate launch --cpu --num_processes 2 -m weitiao sft C`: accelerate's simple launcher starts one process
    (several CPU processes only under mpirun), which trained alone and wrote world 1, exit 0. Now one line."""
    from weitiao.train import dist

    for var in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "MASTER_ADDR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("ACCELERATE_USE_CPU", "True")  # `accelerate launch --cpu`, one process: runs
    assert dist.accelerator().num_processes == 1
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")  # what it adds for --num_processes 2
    monkeypatch.setenv("MASTER_PORT", "29500")
    with pytest.raises(UserError, match=r"accelerate launch --cpu: several processes .* started one"):
        dist.accelerator()
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "1")  # under mpirun (--mpirun_hostfile): accelerate's own business
    assert dist.accelerator().num_processes == 1
