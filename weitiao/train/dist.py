"""The recipes' Accelerator, and saving that works when weights are sharded across processes.

Under DDP (and one process) every process holds all weights: the main process saves them as before.
Under FSDP2 each process holds a shard, so a save is collective: every process calls
`full_weights`/`save_checkpoint`, the full state dict (weights, then optimizer) is gathered with
`DTensor.full_tensor`, and the main process writes the same adapter/model folder and optimizer state a
one-process run writes; a resume scatters them back into shards. DeepSpeed ZeRO-2/3: see `zero`.
Setups whose state we cannot save whole (FSDP1, other DeepSpeed setups) are refused at start.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import DistributedType, gather_object

from weitiao.errors import UserError
from weitiao.train import checkpoint as ck
from weitiao.train import zero
from weitiao.train.deepspeed_env import name_cpu_for_deepspeed

# Keys of what peft saves in an adapter folder (LoRA/DoRA weights, modules_to_save such as a score head).
PEFT_SAVED = ("lora_", "modules_to_save", "trainable_tokens")
FSDP_HINT = "use FSDP2 (fsdp_version: 2, examples/accelerate/fsdp.yaml) or DDP (examples/accelerate/ddp.yaml)"


def gather_objects(value: Any) -> list:
    """`value` of every process, in rank order (picklable objects; every process must call it)."""
    return gather_object([value])


def say_once(say: Callable[[], None], what: str = "user_error") -> None:
    """Call `say` on one process of a multi-process run, not on each: the first to get here (an atomic add on
    the run's store), so a mistake that only some processes hit is still said, by one of them. The others
    wait a little for it to be said (one that exits first gets the rest stopped by torchrun) and say nothing.
    With no store to ask (a launcher other than torchrun, before the process group is up) every process says it."""
    key = f"weitiao/{what}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
    try:
        store = _run_store()
        first = store is None or store.add(key, 1) == 1
    except Exception:  # the store's host is gone (its process ended): better twice than not at all
        store, first = None, True
    if first:
        say()
        if store is not None:
            store.set(f"{key}/said", "1")
        return
    try:
        store.wait([f"{key}/said"], timedelta(seconds=10))
    except Exception:
        pass


def said_elsewhere(what: str = "user_error") -> bool:
    """Whether a process of this run has said its `what` through `say_once` (False without a store to ask): a
    process that then fails in a collective failed because that one stopped, and has nothing of its own to say."""
    key = f"weitiao/{what}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/said"
    try:
        store = _run_store()
        return store is not None and store.check([key])
    except Exception:  # the store's host is gone: nothing to tell
        return False


def _run_store() -> Any:
    """torchrun's agent store (every process can reach it from its start: the same keys before and after the
    process group is set up), else the process group's store once it is up, else None."""
    import torch.distributed as tdist

    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        addr, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
        return tdist.TCPStore(addr, port, is_master=False, timeout=timedelta(seconds=10))
    if tdist.is_available() and tdist.is_initialized():
        return tdist.distributed_c10d._get_default_store()
    return None


def accelerator(model: Any = None, whole: str | None = None) -> Any:
    """The recipes' Accelerator (cpu=True on a machine without CUDA: gloo DDP), after `refuse_unsavable`
    and, given the run's `model` spec, `refuse_unshardable`. `whole` names a recipe that keeps whole weights
    on every process (PPO): `refuse_sharding` comes first, so any FSDP/DeepSpeed setup gets its line."""
    from accelerate import Accelerator

    if not torch.cuda.is_available():
        refuse_dropped_sharding()
    refuse_lone_cpu_process()
    accel = Accelerator(cpu=not torch.cuda.is_available())
    if whole:
        refuse_sharding(accel, whole)
    refuse_unsavable(accel)
    if model is not None:
        refuse_unshardable(accel, model)
    return accel


def refuse_dropped_sharding() -> None:
    """One line when `accelerate launch` asked for DeepSpeed or FSDP on a machine without a GPU: accelerate
    would silently run plain gloo DDP there (it turns both on for accelerator devices only)."""
    for var, kind in (("ACCELERATE_USE_DEEPSPEED", "DeepSpeed"), ("ACCELERATE_USE_FSDP", "FSDP")):
        if os.environ.get(var, "false").lower() == "true":
            raise UserError(
                f"accelerate config: distributed_type {kind} needs a GPU (on CPU accelerate would silently run "
                "plain DDP instead); launch with examples/accelerate/ddp.yaml here, or on a GPU machine"
            )


def refuse_lone_cpu_process() -> None:
    """One line when `accelerate launch --cpu --num_processes N` (N > 1) started a single process: accelerate starts
    several CPU processes only through mpirun, and the one it starts trained alone, unsaid (world 1 in metrics.jsonl).
    Its sign: MASTER_ADDR, which that launcher sets for N > 1 only, and no world size from any launcher."""
    if os.environ.get("ACCELERATE_USE_CPU", "").lower() != "true" or "MASTER_ADDR" not in os.environ:
        return
    if any(v in os.environ for v in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")):
        return
    raise UserError(
        "accelerate launch --cpu: several processes were asked for (MASTER_ADDR is set) and accelerate started one "
        "(it starts several on CPU only through mpirun), which would train alone; launch `torchrun "
        "--nproc_per_node N -m weitiao ...` or `accelerate launch --config_file examples/accelerate/ddp.yaml "
        "--num_processes N -m weitiao ...` (gloo on CPU), or unset MASTER_ADDR for one process"
    )


def refuse_unshardable(accel: Any, model: Any) -> None:
    """One line at start for quantized weights FSDP would not shard: 4-bit weights stored as uint8
    (accelerate leaves them whole on every process, with a warning) and 8-bit (untested)."""
    if accel.distributed_type != DistributedType.FSDP or model.quant == "none":
        return
    if model.quant == "8bit":
        raise UserError(
            "model.quant: 8bit is not supported under FSDP (untested); use model.quant=4bit with "
            "model.quant_storage=bf16 (examples/accelerate/fsdp_qlora.yaml), or DDP"
        )
    if model.quant_storage != "bf16":
        raise UserError(
            f"model.quant_storage: {model.quant_storage} 4-bit weights are not sharded by FSDP (every process "
            "would hold the whole base); set model.quant_storage=bf16 (examples/accelerate/fsdp_qlora.yaml)"
        )


def refuse_unsavable(accel: Any) -> None:
    """One line, before any model loads, for a distributed setup whose checkpoints would not be whole."""
    kind = accel.distributed_type
    if kind == DistributedType.DEEPSPEED:
        zero.refuse_unsavable(accel)  # ZeRO-2/3 only, as weitiao steps and saves them
    if kind == DistributedType.FSDP and not accel.is_fsdp2:
        raise UserError(f"accelerate config: fsdp_version 1 is not supported (untested save/resume); {FSDP_HINT}")


def refuse_sharding(accel: Any, recipe: str) -> None:
    """One line at start for a recipe that keeps whole weights on every process and all-reduces its
    own gradients (PPO): under FSDP or DeepSpeed it would silently not shard anything."""
    kind = accel.distributed_type
    if kind in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        engine = "FSDP" if kind == DistributedType.FSDP else "DeepSpeed"
        raise UserError(
            f"accelerate config: {recipe} does not run under {engine} (every process holds the whole policy, "
            "critic and reference and all-reduces gradients itself); use DDP (examples/accelerate/ddp.yaml), "
            "or for models that need sharding hand PPO to OpenRLHF/verl"
        )


def sharding(accel: Any) -> str | None:
    """The engine that splits the weights themselves across processes (FSDP, DeepSpeed ZeRO-3), else None: under
    it a forward needs every process (DDP and ZeRO-2 keep whole weights on each)."""
    if accel.distributed_type == DistributedType.FSDP:
        return "FSDP"
    if not zero.active(accel):
        return None
    stage = accel.state.deepspeed_plugin.deepspeed_config.get("zero_optimization", {}).get("stage")
    return "DeepSpeed ZeRO-3" if stage == 3 else None


def sharded(module: Any) -> bool:
    """Whether FSDP2 shards the module's parameters (DTensors, or gathered for now by a module of it)."""
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    return any(isinstance(m, FSDPModule) for m in module.modules()) or any(
        isinstance(p, DTensor) for p in module.parameters()
    )


def inner_model(accel: Any, module: Any) -> Any:
    """The HF/peft model inside the module a recipe prepared (its loss wrapper's `.model`)."""
    name_cpu_for_deepspeed()
    return accel.unwrap_model(module).model


def full_weights(accel: Any, module: Any) -> dict[str, torch.Tensor] | None:
    """Collective under FSDP: the inner model's full state dict on every process (of a peft model its
    adapter, score-head and other saved entries only); None when the model's own tensors are whole
    (save_pretrained then reads them, as in a one-process run)."""
    model = inner_model(accel, module)
    if zero.active(accel):
        return zero.full_weights(model, PEFT_SAVED)
    if not sharded(model):
        return None
    reshard(module)
    peft = ck.is_peft(model)
    out = {}
    for k, v in model.state_dict().items():  # the same order on every process: the gathers pair up
        if peft and not any(s in k for s in PEFT_SAVED):
            continue  # frozen base weights: peft does not save them, no need to gather them
        out[k] = whole(v).cpu().clone()  # own storage: safetensors refuses views of gathered buffers
    return out


def reshard(module: Any) -> None:
    """Put FSDP2 modules back into shards. After a no-grad forward (an eval, DPO's sampled replies)
    parameters can stay gathered, as whole tensors in buffers FSDP frees later: a save must not read
    them there."""
    from torch.distributed.fsdp import FSDPModule

    for m in module.modules():
        if isinstance(m, FSDPModule):
            m.reshard()


def whole(x: Any) -> Any:
    """A DTensor (an FSDP2 shard) gathered into a full tensor (collective); anything else unchanged."""
    from torch.distributed.tensor import DTensor

    return x.full_tensor().detach() if isinstance(x, DTensor) else x


def optimizer_state(accel: Any, module: Any, optimizer: Any) -> dict:
    """Collective under FSDP: the optimizer's state dict with every shard gathered, as a one-process
    run would save it (so DDP or one process can resume it)."""
    sd = optimizer.state_dict()
    if not sharded(module):
        return sd
    state = {i: {k: whole(v).cpu() for k, v in s.items()} for i, s in sorted(sd["state"].items())}
    return {**sd, "state": state}


def save_checkpoint(
    accel: Any,
    run_dir: Path,
    step: int,
    module: Any,
    optimizer: Any,
    state: dict[str, Any],
    keep_last: int,
    protect: set[int] | None = None,
) -> None:
    """Every process calls this: weights, optimizer state and each process's RNG are gathered; the
    main process writes checkpoint `step` (see checkpoint.save_checkpoint)."""
    rngs = gather_object([ck.rng_state()]) if accel.num_processes > 1 else None  # every process's own stream
    sd, opt = full_weights(accel, module), optimizer_state(accel, module, optimizer)
    if accel.is_main_process:
        model = inner_model(accel, module)
        ck.save_checkpoint(run_dir, step, model, opt, state, keep_last, protect, rngs, weights=sd)


def load_checkpoint(
    ckpt: Path, accel: Any, module: Any, optimizer: Any, rank: int, world: int, force: bool, same_steps: bool = False
) -> dict[str, Any]:
    """Restore a checkpoint into a prepared module and optimizer (see checkpoint.load_checkpoint);
    under FSDP every process reads the whole saved tensors and keeps its shard of each."""
    model = inner_model(accel, module)
    restore = zero.restore if zero.active(accel) else restore_shards if sharded(model) else None
    return ck.load_checkpoint(ckpt, model, optimizer, rank, world, force, restore, same_steps)


def restore_shards(model: Any, ckpt: Path, optimizer: Any, opt_state: dict) -> None:
    """Saved full weights and optimizer state → this process's shards of them (collective)."""
    from safetensors.torch import load_file

    live = model.state_dict()  # detached views of the parameters: copying into them sets the weights
    if ck.is_peft(model):
        from peft import get_peft_model_state_dict

        # peft's file keys (adapter name removed) → the model's keys: peft returns the same tensor objects.
        key_of = {id(v): k for k, v in live.items()}
        names = {f: key_of[id(v)] for f, v in get_peft_model_state_dict(model, state_dict=live).items()}
        saved = {names[f]: v for f, v in load_file(str(ckpt / "adapter" / "adapter_model.safetensors")).items()}
    else:
        saved = ck.saved_full_model(model, ckpt).state_dict()
    if missing := sorted(set(saved) - set(live)):
        raise UserError(f"train.resume: {ckpt} holds {missing[0]}, which this model does not have")
    for k in sorted(saved):  # the same order on every process: the scatters pair up
        shard_into(live[k], saved[k])
    params = [p for g in optimizer.param_groups for p in g["params"]]
    for i, s in opt_state["state"].items():
        p = params[int(i)]
        s.update({k: as_shard(v, p) for k, v in s.items() if torch.is_tensor(v) and v.shape == p.shape})
    optimizer.load_state_dict(opt_state)


def as_shard(full: torch.Tensor, like: Any) -> Any:
    """`full` split as the DTensor `like` is (collective); a plain tensor stays as it is."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if not isinstance(like, DTensor):
        return full
    return distribute_tensor(full.to(like.device), like.device_mesh, like.placements)


def shard_into(target: Any, full: torch.Tensor) -> None:
    """Copy `full` into `target` (a DTensor view of a parameter: only this process's shard)."""
    shard = as_shard(full.to(target.dtype), target)
    (target.to_local() if hasattr(target, "to_local") else target).copy_(
        shard.to_local() if hasattr(shard, "to_local") else shard
    )
