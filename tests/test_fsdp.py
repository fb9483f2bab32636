"""FSDP2: SFT, DPO and RM on two gloo processes on CPU (stopped, resumed) save the adapter, score head and
checkpoints a one-process run saves for the same steps."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from accelerate.utils import DistributedType
from conftest import CHAT_ROWS, free_port, write_jsonl
from safetensors.torch import load_file

from weitiao.config import load_config
from weitiao.errors import UserError
from weitiao.recipes import dpo, rm, sft
from weitiao.train import dist, loop
from weitiao.train.log import read_metrics

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {"sft": (sft, sft.SFTConfig), "dpo": (dpo, dpo.DPOConfig), "rm": (rm, rm.RMConfig)}
STEPS = 3  # step 3 of 2 processes × micro-batch 2 ends short: 23 rows / 11 pairs are not multiples of 4


def quiet_args(model_dir) -> list[str]:
    """Overrides every run here shares: the tiny model, quiet, micro-batches of 2, 64 tokens."""
    return [f"model.path={model_dir}", "train.progress=false", "train.tensorboard=false", "train.micro_batch_size=2",
            "data.max_len=64"]  # fmt: skip


def adapter(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "adapter" / "adapter_model.safetensors"))


def two_nodes(cli: Callable[[int], list[str]]) -> None:
    """`torchrun --nnodes 2 --nproc-per-node 1` on loopback: node r runs `python -m torch.distributed.run … CLI(r)`
    (gloo over 127.0.0.1, static rendezvous at the master's address, as on a cluster); both must exit 0."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT)}
    run = ["-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1", "--master-addr=127.0.0.1"]
    port, pipe = free_port(), subprocess.PIPE
    nodes = [
        subprocess.Popen(
            [sys.executable, *run, f"--master-port={port}", f"--node-rank={r}", *cli(r)],
            env=env,
            cwd=ROOT,
            stdout=pipe,
            stderr=pipe,
            text=True,
        )  # fmt: skip
        for r in (0, 1)
    ]
    for node in nodes:
        _, err = node.communicate(timeout=600)
        assert node.returncode == 0, err[max(0, err.find("Traceback")) :][:4000]


def torchrun(*args: str, timeout: int = 600) -> str:
    """`python -m torch.distributed.run ARGS` on CPU, one thread per process → its stdout; fails with
    its stderr, or after `timeout` seconds with every process of the launch killed (a hang)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", *args],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.terminate()  # torchrun stops its workers on SIGTERM (killed, they would hang on, holding the pipes)
        p.communicate(timeout=120)
        pytest.fail(f"torchrun {' '.join(args)[:200]}: no exit after {timeout} s (hung)")
    assert p.returncode == 0, err[max(0, err.find("Traceback")) :][:4000]  # the first failure
    return out


def pair_rows(n: int, tag: str) -> list[dict]:
    topics = ["天气", "周末", "电影", "吃饭", "工作", "旅行", "猫"]
    return [
        {
            "prompt": f"聊聊{topics[i % 7]}吧 {tag}{i}",
            "chosen": f"好呀😊 {topics[i % 7]}挺好的",
            "rejected": "首先需要说明。",
        }
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory):
    """Each run under FSDP2 on 2 processes (one launch): stopped after step 2's checkpoint, then
    resumed to step 3. Returns {run: (out dir, recipe, the overrides a one-process run uses)}.
    Defaults users get except size: LoRA dropout 0.05 (on in SFT; DPO and RM turn dropout off by
    default), packing, eval sets of 3 (odd across 2 processes), DPO's on-policy KL sampled at eval;
    QLoRA as examples/accelerate/fsdp_qlora.yaml sets it up."""
    d = tmp_path_factory.mktemp("fsdp")
    chat = write_jsonl(
        d / "chat.jsonl", [{**r, "instruction": f"{r['instruction']} #{i}"} for i, r in enumerate(CHAT_ROWS * 6)][:23]
    )
    pairs, eval_pairs = (
        write_jsonl(d / "pairs.jsonl", pair_rows(11, "t")),
        write_jsonl(d / "ev.jsonl", pair_rows(3, "e")),
    )
    common = [*quiet_args(tiny_model_dir), f"train.max_steps={STEPS}", "train.save_every=1", "train.lr=5e-3"]
    layers = {"auto_wrap_policy": "transformer_based_wrap"}  # one FSDP unit per decoder layer, as shipped
    specs = {
        "sft": ("sft", [f"data.train=[{chat}]"], layers),
        # No wrap policy (one unit, the root): the root keeps its weights gathered after the eval's
        # no-grad forwards, which the save right after must not read.
        "dpo": ("dpo", [f"data.train=[{pairs}]", f"data.eval=[{eval_pairs}]", "dpo.kl_max_new_tokens=4"], {}),
        "rm": ("rm", [f"data.train=[{pairs}]", f"data.eval=[{eval_pairs}]"], layers),
        "qlora": (
            "sft",
            [f"data.train=[{chat}]", "model.quant=4bit", "model.quant_storage=bf16"],
            {**layers, "cpu_ram_efficient_loading": True},
        ),
    }
    out, plan = {}, []
    for name, (recipe, more, plugin) in specs.items():
        out[name] = (d / name, recipe, [*common, *more])
        fsdp = [*common, *more, f"train.out={d / name / 'fsdp'}"]
        plan += [[recipe, [*fsdp, "train.stop_after=2"], plugin], [recipe, fsdp, plugin]]  # killed, resumed
    torchrun(
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={free_port()}",
        "tests/fsdp_driver.py",
        json.dumps(plan),
    )
    return out


def one_process(runs, name: str) -> tuple[Path, Path]:
    """(FSDP run dir, one-process run dir): the same steps by one process with grad_accum 2."""
    d, recipe, overrides = runs[name]
    module, config = RECIPES[recipe]
    module.run(load_config(config, None, [*overrides, "train.grad_accum=2", f"train.out={d / 'one'}"]))
    return d / "fsdp", d / "one"


def same_saves(a_dir: Path, b_dir: Path, n_keys: int) -> None:
    """Final adapter, every checkpoint's adapter and the last optimizer moments agree within 1e-5."""
    for sub in ("final", *(f"checkpoints/step-{k:06d}" for k in range(1, STEPS + 1))):
        a, b = adapter(a_dir / sub), adapter(b_dir / sub)
        assert a.keys() == b.keys() and len(a) == n_keys, sub
        for k in a:
            torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=0, msg=f"{sub} {k}")
    step2 = adapter(b_dir / "checkpoints" / "step-000002")
    assert [k for k in a if not torch.equal(a[k], step2[k])]  # negative control: step 3 (after resume) trained
    # Optimizer state saved whole (every shard gathered), as one process saves it.
    last = f"checkpoints/step-{STEPS:06d}/trainer_state.pt"
    opt_f = torch.load(a_dir / last, weights_only=False)["optimizer"]
    opt_1 = torch.load(b_dir / last, weights_only=False)["optimizer"]
    assert opt_f["state"].keys() == opt_1["state"].keys()
    for i, s in opt_1["state"].items():
        for key in ("exp_avg", "exp_avg_sq"):
            assert opt_f["state"][i][key].shape == s[key].shape
            torch.testing.assert_close(opt_f["state"][i][key], s[key], atol=1e-5, rtol=1e-4)


def same_logs(a_dir: Path, b_dir: Path, kind: str, keys: tuple[str, ...]) -> None:
    a, b = read_metrics(a_dir, kind), read_metrics(b_dir, kind)
    assert [r["step"] for r in a] == [r["step"] for r in b] and a
    for ra, rb in zip(a, b):
        for k in keys:
            assert ra[k] == pytest.approx(rb[k], abs=1e-5), (kind, ra["step"], k)


@pytest.mark.slow
def test_fsdp2_sft_with_lora_dropout_saves_what_one_process_trains(runs):
    """2 processes × 1 micro-batch under FSDP2, stopped after step 2 and resumed, = 1 process × grad_accum
    2 straight: the same global batches and, with LoRA dropout 0.05, the same dropout masks (drawn per
    micro-batch of the step, not per process), so the same adapter and optimizer state. Before the
    collective save, process 0 called save_pretrained on its shards (DTensors) and the run died at
    the first save; before per-micro-batch seeding both processes drew one stream's masks."""
    fsdp, one = one_process(runs, "sft")
    same_saves(fsdp, one, 28)  # 2 layers × 7 projections × (A, B)
    same_logs(fsdp, one, "train", ("loss", "grad_norm"))


@pytest.mark.slow
def test_fsdp2_dpo_saves_what_one_process_trains(runs):
    """DPO (reference = the adapter disabled) under FSDP2, stopped and resumed: the adapter, optimizer
    moments and train/eval metrics (with the on-policy KL sampled at eval) equal one process's."""
    fsdp, one = one_process(runs, "dpo")
    same_saves(fsdp, one, 28)
    same_logs(fsdp, one, "train", ("loss", "grad_norm", "margins"))
    same_logs(fsdp, one, "eval", ("eval_loss", "eval_accuracy", "eval_kl_onpolicy_seq"))


@pytest.mark.slow
def test_fsdp2_rm_saves_adapter_and_score_head_one_process_trains(runs):
    """Reward model under FSDP2: LoRA and the fully trained score head (peft modules_to_save), gathered
    from shards, equal one process's; the final folder holds what PPO and `weitiao score` load."""
    fsdp, one = one_process(runs, "rm")
    same_saves(fsdp, one, 29)  # 28 LoRA + the score head
    assert any("score" in k for k in adapter(fsdp / "final"))
    same_logs(fsdp, one, "eval", ("eval_loss", "eval_accuracy"))
    assert sorted(p.name for p in (fsdp / "final").iterdir()) == sorted(p.name for p in (one / "final").iterdir())


@pytest.mark.slow
def test_an_epoch_end_that_leaves_a_process_short_trains_under_fsdp2(tiny_model_dir, tmp_path):
    """9 rows / pairs, micro-batch 2, unpacked: 5 micro-batches, so the epoch's last step has 3 for 2 processes.
    Process 1 ran 2 forwards to process 0's 3 and FSDP2 hung in process 0's third (an all-gather nobody
    joined; ZeRO-3 crashed the same way). Now process 1 runs a filler that counts nothing, and each recipe
    saves what one process × grad_accum 2 saves."""
    chat = write_jsonl(tmp_path / "chat.jsonl", [{**r, "instruction": f"{r['instruction']} #{i}"}
                                                 for i, r in enumerate(CHAT_ROWS * 3)][:9])  # fmt: skip
    pairs = write_jsonl(tmp_path / "pairs.jsonl", pair_rows(9, "t"))
    common = [*quiet_args(tiny_model_dir), "data.packing=false", "train.lr=5e-3"]
    runs = {"sft": [*common, f"data.train=[{chat}]"], "dpo": [*common, f"data.train=[{pairs}]"]}
    runs["rm"] = runs["dpo"]
    layers = {"auto_wrap_policy": "transformer_based_wrap"}
    plan = [[name, [*args, f"train.out={tmp_path / name / 'fsdp'}"], layers] for name, args in runs.items()]
    torchrun("--nproc_per_node=2", "--master_addr=127.0.0.1", f"--master_port={free_port()}",
             "tests/fsdp_driver.py", json.dumps(plan), timeout=300)  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each process of the launch: other sums' rounding is what Adam's first steps amplify
    try:
        for name, args in runs.items():
            module, config = RECIPES[name]
            module.run(load_config(config, None, [*args, "train.grad_accum=2", f"train.out={tmp_path / name / 'one'}"]))
    finally:
        torch.set_num_threads(threads)
    for name in runs:
        fsdp, one = tmp_path / name / "fsdp", tmp_path / name / "one"
        assert [r["step"] for r in read_metrics(fsdp, "train")] == [1, 2]
        same_logs(fsdp, one, "train", ("loss", "grad_norm"))
        a, b = adapter(fsdp / "final"), adapter(one / "final")
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=0, msg=f"{name} {k}")


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


@pytest.mark.slow
def test_fsdp2_qlora_shards_bf16_stored_4bit_weights_and_saves_what_one_process_trains(runs):
    """QLoRA under FSDP2 as fsdp_qlora.yaml sets it up (model.quant_storage=bf16,
    fsdp_cpu_ram_efficient_loading): every 4-bit weight is an FSDP shard (a DTensor) of bf16-stored
    NF4 bytes on both processes, and the adapter, optimizer moments and losses after stop + resume
    equal one process's (the NF4 bytes survive the all-gather; quant_state is kept on the module)."""
    fsdp, one = one_process(runs, "qlora")
    seen = [json.loads(line) for line in Path(f"{fsdp}.sharding.jsonl").read_text().splitlines()]
    assert sorted(s["rank"] for s in seen) == [0, 0, 1, 1]  # 2 processes × (stopped run, resumed run)
    assert all(s["4bit"] == 14 and s["sharded"] == 14 and s["dtypes"] == ["torch.bfloat16"] for s in seen)
    plain = Path(f"{runs['sft'][0] / 'fsdp'}.sharding.jsonl").read_text().splitlines()
    assert len(plain) == 4 and all(json.loads(s)["4bit"] == 0 for s in plain)  # control: counts 4-bit only
    same_saves(fsdp, one, 28)
    same_logs(fsdp, one, "train", ("loss", "grad_norm"))
    qlora, lora = read_metrics(fsdp, "train"), read_metrics(runs["sft"][0] / "fsdp", "train")
    assert abs(qlora[0]["loss"] - lora[0]["loss"]) > 1e-4  # negative control: the base really is NF4


@pytest.mark.parametrize(
    "quant, storage, match",
    [("4bit", "uint8", "model.quant_storage: uint8 4-bit weights are not sharded"), ("8bit", "uint8", "8bit")],
)
def test_quantized_bases_fsdp_would_not_shard_are_refused_at_start(
    quant, storage, match, make_config, chat_file, monkeypatch
):
    """Before any model loads: accelerate leaves uint8-stored 4-bit weights whole on every process
    (only a warning), and 8-bit under FSDP is untested."""
    import accelerate

    class Fake:
        distributed_type, is_fsdp2 = DistributedType.FSDP, True

        def __init__(self, cpu: bool):
            pass

    monkeypatch.setattr(accelerate, "Accelerator", Fake)
    with pytest.raises(UserError, match=match) as e:
        sft.run(make_config("sft", chat_file, f"model.quant={quant}", f"model.quant_storage={storage}"))
    assert "\n" not in str(e.value) and "quant_storage=bf16" in str(e.value)
    ok = make_config("sft", chat_file, "model.quant=4bit", "model.quant_storage=bf16").model
    dist.refuse_unshardable(Fake(True), ok)  # negative controls: bf16 storage, and DDP with uint8
    ddp = SimpleNamespace(distributed_type=DistributedType.MULTI_GPU)
    dist.refuse_unshardable(ddp, make_config("sft", chat_file, "model.quant=4bit").model)


class Accel:
    def __init__(self, rank: int, world: int):
        self.process_index, self.num_processes = rank, world

    def no_sync(self, module):
        return contextlib.nullcontext()


def draws(accel: Accel, units: list, seed: tuple[int, int] | None) -> list[torch.Tensor]:
    """What dropout would draw in each of this process's micro-batches."""
    return [torch.rand(3) for _, _ in loop.micro_batches(accel, None, units, seed)]


def test_dropout_draws_follow_the_micro_batch_not_the_process():
    """Micro-batch g of a step draws the same random numbers whichever process runs it, so N processes
    train what one process with N × grad_accum trains; the run's own stream is left alone."""
    units = [[[i]] for i in range(4)]
    torch.manual_seed(0)
    one = draws(Accel(0, 1), units, (42, 7))
    after = torch.rand(1)
    torch.manual_seed(0)
    two = [draws(Accel(r, 2), units, (42, 7)) for r in (0, 1)]
    assert torch.equal(torch.rand(1), after)  # the global stream did not move
    for g in range(4):
        assert torch.equal(two[g % 2][g // 2], one[g])
    assert not torch.equal(one[0], one[1])
    assert not torch.equal(draws(Accel(0, 1), units, (42, 8))[0], one[0])  # another step, other masks
    # Negative control, the old behaviour: every process seeded alike draws the same masks as the others.
    old = []
    for r in (0, 1):
        torch.manual_seed(0)
        old.append(draws(Accel(r, 2), units, None))
    assert torch.equal(old[0][0], old[1][0])


@pytest.mark.parametrize(
    "kind, fsdp2", [(DistributedType.FSDP, True), (DistributedType.FSDP, False), (DistributedType.DEEPSPEED, False)]
)
def test_ppo_under_sharding_is_refused_at_start(kind, fsdp2, make_config, tmp_path, monkeypatch):
    """PPO keeps whole weights on every process and all-reduces its own gradients: under FSDP/DeepSpeed
    it would run unsharded without a word. Refused before any model loads, through the recipes' one
    `dist.accelerator`, with PPO's line even for setups the other recipes refuse otherwise (FSDP1; a
    DeepSpeed config `refuse_unsavable` would read first: this one has none)."""
    import accelerate

    from weitiao.recipes import ppo

    class Fake:
        is_fsdp2, state = fsdp2, SimpleNamespace(deepspeed_plugin=None)

        def __init__(self, cpu: bool):
            self.distributed_type = kind

    monkeypatch.setattr(accelerate, "Accelerator", Fake)
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "你好"}])
    cfg = make_config("ppo", prompts, "reward.kind=function", "reward.path=weitiao.recipes.rewards:short_emoji_reward")
    with pytest.raises(UserError, match=r"ppo does not run under (FSDP|DeepSpeed).*ddp.yaml") as e:
        ppo.run(cfg)
    assert "\n" not in str(e.value)
    for ok in (DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU):  # negative control
        dist.refuse_sharding(SimpleNamespace(distributed_type=ok), "ppo")
    if kind == DistributedType.FSDP and not fsdp2:  # negative control: without `whole`, the other recipes' line
        with pytest.raises(UserError, match="fsdp_version 1 is not supported"):
            dist.accelerator()


def test_golden_prompts_under_sharded_weights_are_refused_at_start(make_config, chat_file, tmp_path, monkeypatch):
    """train.golden is answered by each process for its own share of the prompts (by the main process alone, when
    this was written): under FSDP2 its forward crashed after step 1 (the root's weights were never gathered), under
    ZeRO-3 it hung (the others never joined the gathers). Refused before any model loads; DDP and ZeRO-2 (whole
    weights on every process) answer as before."""
    golden = write_jsonl(tmp_path / "g.jsonl", [{"prompt": "你好"}])

    def accel(kind, stage=None):
        config = {"zero_optimization": {"stage": stage}}
        return SimpleNamespace(distributed_type=kind, state=SimpleNamespace(deepspeed_plugin=SimpleNamespace(
            deepspeed_config=config)))  # fmt: skip

    for fake, engine in [(accel(DistributedType.FSDP), "FSDP"), (accel(DistributedType.DEEPSPEED, 3), "ZeRO-3")]:
        monkeypatch.setattr(dist, "accelerator", lambda model=None, fake=fake: fake)
        with pytest.raises(UserError, match=rf"train.golden: .* under .*{engine} .*weitiao eval golden") as e:
            sft.run(make_config("sft", chat_file, f"train.golden={golden}"))
        assert "\n" not in str(e.value)
    for ok in (DistributedType.MULTI_CPU, DistributedType.MULTI_GPU):  # negative controls: whole weights everywhere
        assert dist.sharding(accel(ok)) is None
    assert dist.sharding(accel(DistributedType.DEEPSPEED, 2)) is None
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_two_nodes_on_loopback_train_what_one_process_trains(tiny_model_dir, chat_file, tmp_path):
    """`torchrun --nnodes 2 --node-rank 0|1` on one machine: two "nodes" of one process each (gloo
    over 127.0.0.1, static rendezvous at the master's address, as on a cluster) run `weitiao sft`
    through its CLI; the adapter and checkpoints equal one process with grad_accum 2 (LoRA dropout
    0.05, 24 rows)."""
    config = tmp_path / "sft.yaml"
    config.write_text(f"model:\n  path: {tiny_model_dir}\ndata:\n  train: [{chat_file}]\n  max_len: 64\n")
    common = [
        "train.progress=false",
        "train.tensorboard=false",
        "train.micro_batch_size=2",
        f"train.max_steps={STEPS}",
        "train.save_every=1",
        "train.lr=5e-3",
    ]
    two_nodes(lambda r: ["-m", "weitiao", "sft", str(config), *common, f"train.out={tmp_path / 'nodes'}"])
    one = tmp_path / "one"
    sft.run(load_config(sft.SFTConfig, config, [*common, "train.grad_accum=2", f"train.out={one}"]))
    assert read_metrics(tmp_path / "nodes", "run")[0]["world"] == 2
    for sub in ("final", *(f"checkpoints/step-{k:06d}" for k in range(1, STEPS + 1))):
        a, b = adapter(tmp_path / "nodes" / sub), adapter(one / sub)
        assert a.keys() == b.keys() and len(a) == 28
        for k in a:
            torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=0, msg=f"{sub} {k}")
    same_logs(tmp_path / "nodes", one, "train", ("loss", "grad_norm"))


@pytest.mark.slow
def test_dpo_precompute_ref_on_two_nodes_without_shared_storage(tiny_model_dir, tmp_path):
    """`dpo.precompute_ref` on two loopback "nodes", each with its own train.out (no storage they share): node 1
    read back the reference log-probs process 0 wrote on node 0 (FileNotFoundError; a stale copy there would have
    been used unsaid). Each process now keeps what it computed; the adapter equals one process × grad_accum 2."""
    data = write_jsonl(tmp_path / "pairs.jsonl", pair_rows(8, "n"))
    config = tmp_path / "dpo.yaml"
    config.write_text(f"model:\n  path: {tiny_model_dir}\ndata:\n  train: [{data}]\n  max_len: 64\n")
    common = ["train.progress=false", "train.tensorboard=false", "train.micro_batch_size=2", "train.max_steps=2"]
    common += ["train.lr=5e-3", "dpo.precompute_ref=true"]
    two_nodes(lambda r: ["-m", "weitiao", "dpo", str(config), *common, f"train.out={tmp_path / f'node{r}'}"])
    assert (tmp_path / "node0" / "ref_logps.pt").exists() and not (tmp_path / "node1" / "ref_logps.pt").exists()
    one = tmp_path / "one"
    dpo.run(load_config(dpo.DPOConfig, config, [*common, "train.grad_accum=2", f"train.out={one}"]))
    a, b = adapter(tmp_path / "node0" / "final"), adapter(one / "final")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=0, msg=k)
