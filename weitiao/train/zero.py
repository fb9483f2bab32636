"""DeepSpeed ZeRO-2/ZeRO-3 through accelerate, stepped as weitiao's loops step and saved whole.

accelerate's DeepSpeed path takes the optimizer step inside `accelerator.backward` and counts
micro-batches itself; weitiao's loops choose their micro-batches, divide the loss by the step's
targets themselves, read the gradient norm, then step. So `prepare` fills DeepSpeed's config from
train.* and turns off its managed gradient accumulation: each backward only accumulates, unscaled,
and DeepSpeed's step (reduce, clip at train.max_grad_norm, update) runs when the loop asks for the
gradient norm (`loop.clip_grad`), since DeepSpeed measures the norm inside its step. It skips an
update whose norm is not finite, so the weights stay the last good ones, as elsewhere.

ZeRO-2 keeps whole weights on every process and partitions the fp32 master weights and Adam's
moments; ZeRO-3 partitions the weights too. A save gathers them on every process (DeepSpeed's
`safe_get_full_*`, `GatheredParameters`); the main process writes the adapter/model folder and the
one-process optimizer state a single process writes, and a resume sets them back (`safe_set_full_*`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from accelerate.utils import DistributedType

from weitiao.errors import UserError

STAGES = (2, 3)
HINT = "examples/accelerate/zero2.yaml or zero3.yaml"


def active(accel: Any) -> bool:
    return accel.distributed_type == DistributedType.DEEPSPEED


def refuse_unsavable(accel: Any) -> None:
    """One line at start for a DeepSpeed setup weitiao cannot step or save as one process would."""
    plugin = accel.state.deepspeed_plugin
    cfg = plugin.deepspeed_config
    zero = cfg.get("zero_optimization", {})
    where = "accelerate config deepspeed_config"
    if zero.get("stage") not in STAGES:
        raise UserError(f"{where}: zero_stage {zero.get('stage')} is not supported; use 2 or 3 ({HINT})")
    for key in ("offload_optimizer", "offload_param"):
        if zero.get(key, {}).get("device", "none") not in ("none", None):
            raise UserError(
                f"{where}: {key} to {zero[key]['device']} is not supported (DeepSpeed's CPU Adam is a compiled "
                f"op and its state is not gathered by weitiao's saves); set it to none ({HINT})"
            )
    for key in ("fp16", "bf16"):
        if cfg.get(key, {}).get("enabled") not in (False, None):
            raise UserError(
                f"{where}: {key} is not supported (weitiao picks the dtype itself: model.dtype); "
                f'set mixed_precision: "no" and remove the {key} section'
            )
    for key in ("optimizer", "scheduler"):
        if key in cfg:
            raise UserError(
                f"{where}: its {key} section is not used (weitiao builds AdamW and sets the LR from train.*); remove it"
            )
    if zero.get("stage") == 3 and plugin.zero3_init_flag:
        raise UserError(
            f"{where}: zero3_init_flag true is not supported (weitiao checks the loaded model with whole "
            f"weights before training); set zero3_init_flag: false ({HINT})"
        )
    if zero.get("stage") == 3:
        # accelerate registers the config with transformers, whose from_pretrained would then load the
        # model already partitioned (zero.Init); without zero3_init_flag the engine partitions it.
        from transformers.integrations import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()


def prepare(accel: Any, t: Any, module: Any, optimizer: Any) -> tuple[Any, Any]:
    """`accel.prepare(module, optimizer)`; under DeepSpeed, first fills its config from `t` (TrainSpec)
    and afterwards steps it as the loop expects (see the module docstring)."""
    if not active(accel):
        return accel.prepare(module, optimizer)
    cfg = accel.state.deepspeed_plugin.deepspeed_config
    ours = {"gradient_accumulation_steps": t.grad_accum, "gradient_clipping": float(t.max_grad_norm)}
    names = {"gradient_accumulation_steps": "train.grad_accum", "gradient_clipping": "train.max_grad_norm"}
    for key, value in ours.items():
        if cfg.get(key, "auto") != "auto" and float(cfg[key]) != value:
            raise UserError(
                f"accelerate config deepspeed_config: {key} {cfg[key]} differs from {names[key]} {value}; "
                f"remove it there (weitiao sets it from {names[key]})"
            )
    cfg.update(ours)
    cfg["train_micro_batch_size_per_gpu"] = t.micro_batch_size
    cfg["train_batch_size"] = t.micro_batch_size * t.grad_accum * accel.num_processes
    cfg["managed_gradient_accumulation"] = False  # backward accumulates, step() is the boundary
    accel.gradient_accumulation_steps = t.grad_accum
    params = [p for g in optimizer.param_groups for p in g["params"]]
    engine, ds_optimizer = accel.prepare(module, optimizer)
    steps = Steps(engine)
    accel.deepspeed_engine_wrapped = steps  # accel.backward and accel.clip_grad_norm_ call it
    return engine, ZeroOptimizer(steps, ds_optimizer, params)


class Steps:
    """Stands in for accelerate's DeepSpeedEngineWrapper: backward accumulates, the norm query steps."""

    def __init__(self, engine: Any):
        self.engine, self.pending = engine, False

    def backward(self, loss: torch.Tensor, sync_gradients: bool = True, **kwargs: Any) -> None:
        self.engine.backward(loss, scale_wrt_gas=False, **kwargs)  # our loss is already the step's mean
        self.pending = True

    def step(self) -> None:
        """DeepSpeed's step (reduce, clip, update, zero the gradients) once per backward-accumulated step."""
        if self.pending:
            self.engine.step()
            self.pending = False

    def get_global_grad_norm(self) -> float | None:
        self.step()
        norm = self.engine.get_global_grad_norm()
        return None if norm is None else float(norm)


class ZeroOptimizer:
    """The recipe's optimizer under DeepSpeed: the LR set through its param groups, `step` DeepSpeed's
    (done already when the loop read the norm), state dicts as one process's AdamW writes them."""

    def __init__(self, steps: Steps, ds_optimizer: Any, params: list):
        self.steps, self.ds_optimizer, self.params = steps, ds_optimizer, params

    @property
    def param_groups(self) -> list[dict]:
        return self.ds_optimizer.param_groups

    def step(self) -> None:
        self.steps.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        """DeepSpeed zeroes the gradients in its own step."""

    def base(self) -> Any:
        """The torch AdamW inside DeepSpeed; it steps this process's flat fp32 partitions (`flat`)."""
        return self.steps.engine.optimizer.optimizer

    def flat(self) -> list[torch.Tensor]:
        """This process's flat fp32 partitions, the keys of AdamW's state (ZeRO-3 hands them to AdamW's
        param groups only while it steps)."""
        zero = self.steps.engine.optimizer
        return list(getattr(zero, "fp32_partitioned_groups_flat", None) or zero.single_partition_of_fp32_groups)

    def state_dict(self) -> dict:
        """Collective: Adam's moments of every parameter gathered, as a one-process AdamW state dict."""
        from deepspeed.utils import safe_get_full_optimizer_state

        base = self.base()
        first = base.state.get(self.flat()[0], {})  # empty before the first step
        keys = sorted(k for k, v in first.items() if torch.is_tensor(v) and v.dim() > 0)
        state = {}
        for i, p in enumerate(self.params) if first else ():
            full = {k: safe_get_full_optimizer_state(p, k).detach().cpu().clone().view(shape(p)) for k in keys}
            state[i] = {"step": first["step"].detach().cpu().clone(), **full}
        hyper = {k: v for k, v in base.param_groups[0].items() if k != "params"}
        return {"state": state, "param_groups": [{**hyper, "params": list(range(len(self.params)))}]}

    def load_state_dict(self, sd: dict) -> None:
        """Collective: a one-process AdamW state dict set into this process's partitions."""
        from deepspeed.utils import safe_set_full_optimizer_state

        base = self.base()
        if sd["state"]:
            step = next(iter(sd["state"].values()))["step"]
            for flat in self.flat():  # AdamW creates its state at the first step: create it now
                s = base.state[flat]
                s["step"] = torch.as_tensor(step, dtype=torch.float32).clone()
                for k in ("exp_avg", "exp_avg_sq"):
                    s.setdefault(k, torch.zeros_like(flat))
            link = getattr(self.steps.engine.optimizer, "_lazy_init_hp_params_optimizer_state", None)
            if link is not None:  # ZeRO-1/2 link each parameter to its slice of that state
                link()
            for i, p in enumerate(self.params):
                for k, v in sd["state"][i].items():
                    if torch.is_tensor(v) and v.dim() > 0:
                        safe_set_full_optimizer_state(p, v.to(torch.float32), k)
        for g in base.param_groups:
            g.update({k: v for k, v in sd["param_groups"][0].items() if k != "params"})


def shape(p: Any) -> torch.Size:
    """A parameter's full shape (ZeRO-3 leaves an empty tensor in place of a partitioned one)."""
    return p.ds_shape if hasattr(p, "ds_id") else p.shape


def full_weights(model: Any, saved: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Collective: the model's state dict with ZeRO-3's partitions gathered (of a peft model only the
    entries whose names hold one of `saved`, what peft writes)."""
    import deepspeed

    peft = hasattr(model, "peft_config")
    out = {}
    for k, v in model.state_dict(keep_vars=True).items():  # the same order on every process
        if peft and not any(s in k for s in saved):
            continue
        with deepspeed.zero.GatheredParameters([v]):  # a no-op for a whole (not ZeRO-3) tensor
            out[k] = v.detach().cpu().clone()
    return out


def restore(model: Any, ckpt: Path, optimizer: ZeroOptimizer, opt_state: dict) -> None:
    """Collective: a checkpoint's whole weights and one-process optimizer state set into the engine:
    the model's weights (ZeRO-3: every process's partition) and DeepSpeed's fp32 master copy."""
    import deepspeed
    from deepspeed.utils import safe_set_full_fp32_param
    from safetensors.torch import load_file

    live = model.state_dict(keep_vars=True)
    if hasattr(model, "peft_config"):
        from peft import get_peft_model_state_dict

        # peft's file keys (adapter name removed) → the model's keys: peft returns the same tensor objects.
        key_of = {id(v): k for k, v in live.items()}
        names = {f: key_of[id(v)] for f, v in get_peft_model_state_dict(model, state_dict=live).items()}
        saved = {names[f]: v for f, v in load_file(str(ckpt / "adapter" / "adapter_model.safetensors")).items()}
    else:
        from weitiao.train.checkpoint import saved_full_model

        saved = saved_full_model(model, ckpt).state_dict()
    if missing := sorted(set(saved) - set(live)):
        raise UserError(f"train.resume: {ckpt} holds {missing[0]}, which this model does not have")
    for k in sorted(saved):  # the same order on every process: the gathers pair up
        p, full = live[k], saved[k]
        with deepspeed.zero.GatheredParameters([p], modifier_rank=0):  # ZeRO-3: repartitioned on exit
            p.data.copy_(full.to(p.dtype).view(p.shape))
        if p.requires_grad:
            safe_set_full_fp32_param(p, full.to(torch.float32).view(shape(p)))
    optimizer.load_state_dict(opt_state)
