"""Resource planner (Q142): GPU memory per device and wall time for model × method × data × GPUs.

Memory = weights at their precision (NF4 + double-quant scales for QLoRA) + trainable state (fp32
adapters or bf16 weights, their gradients, Adam) + activations + the logits of one micro-batch.
Activation bytes per token and layer were measured (autograd's saved tensors, bf16, SDPA) on
transformers 5 + peft 0.21 and are checked by tests/test_calc_plan.py:
    frozen base   8h (the two RMSNorms keep an fp32 copy) + 4·d_attn (q, attention out)
                  + 4·d_kv (k, v) + 6i (gate, SiLU, up of a gated MLP; 4i for a plain one)
    full          + 8h + 2i (inputs kept for the weight gradients)
    each adapted Linear  + 4·in (peft casts its input to the fp32 adapter) + 4·in more if dropout > 0
With activation checkpointing only each layer's bf16 input (2h) stays, plus one layer being recomputed.
Time = tokens × model FLOPs per token (weitiao.calc.lora) / (GPUs × peak × MFU); communication is taken
as overlapped with compute, which holds inside one NVLink node, not across slow links.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from weitiao.calc.lora import (
    ADAM8,
    ADAM32,
    MASTER,
    ModelShape,
    bits_per_param,
    flops_per_token,
    load_shape,
    lora_params,
    resolve_targets,
)
from weitiao.errors import UserError

GIB = 1024**3


@dataclass(frozen=True)
class GPU:
    name: str
    tflops: float  # dense bf16 tensor-core peak, TFLOP/s
    mem_gib: float


# mem_gib: the total nvidia-smi reports (MiB / 1024), not the GB in the product name: an "80GB" H100 has
# 81,559 MiB (79.6 GiB), a "48GB" L40S 46,068 MiB (45.0 GiB).
GPUS = {
    "a100-80g": GPU("A100 80GB SXM", 312, 81920 / 1024),
    "a100-40g": GPU("A100 40GB SXM", 312, 40960 / 1024),
    "a800-80g": GPU("A800 80GB SXM", 312, 81920 / 1024),
    "h100-80g": GPU("H100 80GB SXM", 989, 81559 / 1024),
    "h800-80g": GPU("H800 80GB SXM", 989, 81559 / 1024),
    "h200": GPU("H200 141GB SXM", 989, 143771 / 1024),
    "h20": GPU("H20 96GB", 148, 97871 / 1024),
    "l40s": GPU("L40S 48GB", 362, 46068 / 1024),
    "rtx4090": GPU("RTX 4090 24GB", 165, 24564 / 1024),
}
DEFAULT_MFU = {"full": 0.35, "lora": 0.30, "qlora": 0.25}
CONTEXT_GIB = 1.0  # CUDA context, cuBLAS workspace
HEADROOM = 0.10  # keep 10% free for allocator fragmentation
# Chapter Q142: Llama-3 70B QLoRA, 20k samples × 512 tokens, 8 × A100 80GB, 1-3 epochs → "8-24 h".
CHAPTER = {"model": "llama-3-70b", "method": "qlora", "samples": 20000, "seq_len": 512, "gpu": "a100-80g", "gpus": 8}
CHAPTER_HOURS = (8.0, 24.0)


@dataclass
class PlanInput:
    """One fine-tuning job to plan; the defaults are the chapter's Q142 scenario."""

    model: str = "llama-3-70b"
    """Preset, HF model dir, config.json or cached hub id (see weitiao.calc.lora.PRESETS)."""
    method: Literal["full", "lora", "qlora"] = "qlora"
    """full: bf16 weights + fp32 master/Adam; lora: bf16 frozen base; qlora: NF4 + double-quant base."""
    r: int = 16
    """LoRA rank."""
    targets: str = "all-linear"
    """LoRA target modules."""
    lora_dropout: float = 0.05
    """Dropout before the adapters: > 0 keeps an extra copy of each adapted input."""
    seq_len: int = 512
    """Tokens per sample (packed: no padding)."""
    samples: int = 20000
    """Training samples per epoch."""
    epochs: tuple[float, float] = (1.0, 3.0)
    """Epochs to time: a number or a range like 1-3."""
    gpu: str = "a100-80g"
    """a100-80g a100-40g a800-80g h100-80g h800-80g h200 h20 l40s rtx4090 (GPUS)."""
    gpus: int = 8
    """Number of GPUs (data parallel)."""
    parallel: Literal["ddp", "fsdp"] = "ddp"
    """ddp: every GPU holds the whole model; fsdp (ZeRO-3): weights, gradients and optimizer sharded."""
    micro_batch: int = 2
    """Rows per GPU per forward pass."""
    grad_accum: int = 4
    """Micro-batches per optimizer step."""
    checkpointing: bool = True
    """Activation (gradient) checkpointing of every decoder layer."""
    optimizer: Literal["adamw", "adamw8bit"] = "adamw"
    """Optimizer states: fp32 Adam (8 B/param) or bitsandbytes 8-bit Adam (~2 B/param)."""
    mfu: float | None = None
    """Model FLOPs utilization; None = DEFAULT_MFU of the method (or the calibrated one)."""

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("--method", self.method, ("full", "lora", "qlora")),
            ("--parallel", self.parallel, ("ddp", "fsdp")),
            ("--optimizer", self.optimizer, ("adamw", "adamw8bit")),
        ):
            if value not in allowed:
                raise UserError(f"{name} {value}: expected one of {', '.join(allowed)}")
        if self.gpu not in GPUS:
            raise UserError(f"--gpu {self.gpu}: unknown; choose one of {', '.join(GPUS)}")


@dataclass
class Calibration:
    run_dir: str
    model: str
    method: str
    world: int
    seq_len: int
    tokens_per_s: float
    flops_per_token: float
    achieved_tflops: float
    peak_tflops: float
    mfu: float
    params: int = 0  # the run's model size
    device: str | None = None  # cpu | cuda | ...; None for runs that did not record it


@dataclass
class PlanReport:
    inputs: dict
    model: str
    total_params: int
    trainable_params: int
    memory_gib: dict[str, float]
    gpu_mem_gib: float
    fits: bool
    max_micro_batch: int
    flops_per_token: dict[str, float]
    tokens_per_epoch: int
    steps_per_epoch: int
    global_batch: int
    mfu: float
    hfu: float
    hours: dict[str, float]
    sensitivity: dict[str, dict[str, float]]
    claim: dict | None
    assumptions: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    calibration: Calibration | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def layer_activation_bytes(shape: ModelShape, method: str, adapted_inputs: int = 0, dropout: bool = False) -> float:
    """Saved-for-backward bytes per token of one decoder layer (see the module docstring).

    `adapted_inputs` = Σ in_features of the LoRA-adapted Linears of one layer.
    """
    gated = any(k.name == "gate_proj" for k in shape.linears)
    frozen = 8 * shape.hidden + 4 * shape.attn_dim + 4 * shape.kv_dim + (6 if gated else 4) * shape.intermediate
    if method == "full":
        return frozen + 8 * shape.hidden + 2 * shape.intermediate
    return frozen + 4 * adapted_inputs * (2 if dropout else 1)


def head_bytes(shape: ModelShape, method: str) -> float:
    """Per token: final norm (fp32 copy, + bf16 output for full) and the logits: bf16 output, fp32 copy, fp32 grad."""
    return (6 if method == "full" else 4) * shape.hidden + 10 * shape.vocab


def _usable(gpu: GPU) -> float:
    return gpu.mem_gib * (1 - HEADROOM)


def memory(shape: ModelShape, p: PlanInput, n_lora: int, adapted_inputs: int) -> dict[str, float]:
    """Bytes per GPU by component (GiB), for p.micro_batch rows of p.seq_len tokens."""
    n, q = shape.total_params, shape.quantizable_params
    if p.method == "qlora":
        weights = q * bits_per_param("nf4-dq") / 8 + (n - q) * 2
    else:
        weights = n * 2.0
    trained = n if p.method == "full" else n_lora
    adam = ADAM32 if p.optimizer == "adamw" else ADAM8
    adapters = 0.0 if p.method == "full" else n_lora * 4.0
    grads = trained * (2.0 if p.method == "full" else 4.0)
    optim = trained * ((MASTER if p.method == "full" else 0.0) + adam)
    gathered = 0.0
    if p.parallel == "fsdp":
        layer_bytes = q * (bits_per_param("nf4-dq") / 8 if p.method == "qlora" else 2.0) / max(1, shape.layers)
        gathered = 2 * layer_bytes  # the layer being computed + the prefetched next one, unsharded
        weights, adapters, grads, optim = (x / p.gpus for x in (weights, adapters, grads, optim))
    tokens = p.micro_batch * p.seq_len
    method = "full" if p.method == "full" else "lora"
    layer = layer_activation_bytes(shape, method, adapted_inputs, p.lora_dropout > 0)
    if p.checkpointing:
        acts = tokens * (shape.layers * 2 * shape.hidden + layer)
    else:
        acts = tokens * shape.layers * layer
    logits = tokens * head_bytes(shape, method)
    dequant = 0.0
    if p.method == "qlora":  # bitsandbytes dequantizes one weight to bf16 per matmul
        dequant = max(k.in_features * k.out_features for k in shape.linears if not k.output) * 2.0
    parts = {
        "weights": weights + gathered,
        "adapters": adapters,
        "grads": grads,
        "optimizer": optim,
        "activations": acts,
        "logits": logits,
        "workspace": dequant + CONTEXT_GIB * GIB,
    }
    out = {k: v / GIB for k, v in parts.items()}
    out["total"] = sum(out.values())
    return out


def parse_range(text: str, what: str) -> tuple[float, float]:
    """'1-3' → (1, 3); '2' → (2, 2)."""
    try:
        lo, _, hi = text.partition("-")
        a, b = float(lo), float(hi or lo)
    except ValueError:
        raise UserError(f"{what} {text!r}: expected a number or a range like 1-3") from None
    if not 0 < a <= b:
        raise UserError(f"{what} {text!r}: expected 0 < low <= high")
    return a, b


def calibrate(run_dir: str | Path, peak_tflops: float) -> Calibration:
    """Implied MFU of a finished weitiao run: measured tokens/s × FLOPs per token / (devices × peak)."""
    from weitiao.train.log import read_metrics

    run = Path(run_dir)
    cfg_path = run / "config.yaml"
    if not cfg_path.exists():
        raise UserError(f"--calibrate {run}: no config.yaml (not a weitiao run dir)")
    cfg = yaml.safe_load(cfg_path.read_text(encoding="utf-8")) or {}
    model_cfg, lora_cfg, data_cfg = cfg.get("model", {}), cfg.get("lora", {}), cfg.get("data", {})
    rows = [r for r in read_metrics(run, "train") if r.get("tokens_per_s")]
    if not rows:
        raise UserError(f"--calibrate {run}: metrics.jsonl has no train rows with tokens_per_s")
    if len(rows) > 2:
        rows = rows[1:]  # the first step includes warm-up
    tps = statistics.median(r["tokens_per_s"] for r in rows)
    world = next((int(r.get("world", 1)) for r in read_metrics(run, "data")), 1)
    device = next((r.get("device") for r in reversed(read_metrics(run, "run"))), None)
    shape = load_shape(str(model_cfg.get("path", "demo")))
    seq_len = int(data_cfg.get("max_len", 1024))
    lora_on = bool(lora_cfg.get("enabled", True))
    n_lora = 0
    if lora_on:
        kinds = resolve_targets(shape, lora_cfg.get("targets", "all-linear"))
        n_lora = sum(lora_params(k, int(lora_cfg.get("r", 16)), bool(lora_cfg.get("dora", False))) for k in kinds)
    method = "full" if not lora_on else ("qlora" if model_cfg.get("quant") == "4bit" else "lora")
    f = flops_per_token(shape, "lora" if lora_on else "full", n_lora, seq_len)["model"]
    achieved = tps * f / 1e12
    return Calibration(
        run_dir=str(run),
        model=shape.name,
        method=method,
        world=world,
        seq_len=seq_len,
        tokens_per_s=tps,
        flops_per_token=f,
        achieved_tflops=achieved,
        peak_tflops=peak_tflops * world,
        mfu=achieved / (peak_tflops * world),
        params=shape.total_params,
        device=device,
    )


def plan(p: PlanInput, calibration: Calibration | None = None, claim: tuple[float, float] | None = None) -> PlanReport:
    """Memory per GPU, time per epoch range, MFU sensitivity, and where a claimed duration sits."""
    for name, v in (
        ("--gpus", p.gpus),
        ("--micro-batch", p.micro_batch),
        ("--grad-accum", p.grad_accum),
        ("--seq-len", p.seq_len),
        ("--samples", p.samples),
    ):
        if v <= 0:
            raise UserError(f"{name} {v}: must be positive")
    gpu = GPUS[p.gpu]
    shape = load_shape(p.model)
    n_lora, adapted_inputs = 0, 0
    if p.method != "full":
        kinds = resolve_targets(shape, p.targets)
        n_lora = sum(lora_params(k, p.r) for k in kinds)
        adapted_inputs = sum(k.in_features * k.count for k in kinds) // max(1, shape.layers)
    mem = memory(shape, p, n_lora, adapted_inputs)
    # Largest micro-batch that fits: everything but activations/logits is fixed.
    per_row = (mem["activations"] + mem["logits"]) / p.micro_batch
    fixed = mem["total"] - per_row * p.micro_batch
    max_mb = max(0, math.floor((_usable(gpu) - fixed) / per_row)) if per_row > 0 else 0

    method = "full" if p.method == "full" else "lora"
    flops = flops_per_token(shape, method, n_lora, p.seq_len, p.checkpointing)
    tokens = p.samples * p.seq_len
    global_batch = p.micro_batch * p.grad_accum * p.gpus
    cluster = p.gpus * gpu.tflops * 1e12
    if calibration is not None and p.mfu is None:
        mfu = calibration.mfu
    else:
        mfu = p.mfu if p.mfu is not None else DEFAULT_MFU[p.method]
    if not 0 < mfu <= 1:
        raise UserError(f"--mfu {mfu}: expected a fraction in (0, 1]")

    def hours(epochs: float, util: float) -> float:
        return epochs * tokens * flops["model"] / (util * cluster) / 3600

    lo, hi = p.epochs
    epoch_list = sorted({lo, hi, *[float(e) for e in range(math.ceil(lo), math.floor(hi) + 1)]})
    sens_mfu = sorted({0.05, 0.1, 0.2, 0.3, 0.4, float(f"{mfu:.4g}")})  # 4 digits: a CPU's 1e-8 stays > 0
    sensitivity = {f"{100 * u:g}%": {f"{e:g}": hours(e, u) for e in epoch_list} for u in sens_mfu}
    chapter_like = all(getattr(p, k) == v for k, v in CHAPTER.items())
    if claim is None and chapter_like:
        claim = CHAPTER_HOURS
    claim_info = None
    if claim is not None:
        implied = (
            tokens * lo * flops["model"] / (claim[0] * 3600 * cluster),
            tokens * hi * flops["model"] / (claim[1] * 3600 * cluster),
        )
        ours = (hours(lo, mfu), hours(hi, mfu))
        where = "inside" if claim[0] <= ours[1] and claim[1] >= ours[0] else "above" if claim[0] > ours[1] else "below"
        claim_info = {
            "source": "chapter Q142" if chapter_like else "--claim",
            "hours": list(claim),
            "implied_mfu": list(implied),
            "our_hours": list(ours),
            "position": where,
            "factor": (claim[0] / ours[0] + claim[1] / ours[1]) / 2,
        }
    assumptions = _assumptions(p, gpu, mfu, calibration)
    notes = []
    if not mem["total"] <= _usable(gpu):
        notes.append(f"does not fit: {mem['total']:.1f} GiB > {_usable(gpu):.1f} GiB usable per GPU")
    if calibration is not None and calibration.model != shape.name:
        notes.append(f"calibration run used {calibration.model}: its MFU transfers only to similar sizes and hardware")
    if calibration is not None and calibration.device not in (None, "cuda"):
        notes.append(
            f"calibration run ran on {calibration.device}: its MFU {calibration.mfu:.2g} is that device's speed "
            "against a GPU peak and says nothing about GPUs; calibrate on the target GPU or pass --mfu"
        )
    if calibration is not None and calibration.params and shape.total_params > 10 * calibration.params:
        notes.append(
            f"calibration run trained {shape.total_params / calibration.params:,.0f}× fewer parameters "
            f"({calibration.params:,} vs {shape.total_params:,}); MFU grows with model size, so these hours "
            "are an upper bound"
        )
    if p.method == "qlora" and p.parallel == "fsdp":
        notes.append("FSDP with 4-bit weights needs model.quant_storage: bf16 so the packed weights can be sharded")
    return PlanReport(
        inputs=asdict(p),
        model=shape.name,
        total_params=shape.total_params,
        trainable_params=n_lora if p.method != "full" else shape.total_params,
        memory_gib=mem,
        gpu_mem_gib=gpu.mem_gib,
        fits=mem["total"] <= _usable(gpu),
        max_micro_batch=max_mb,
        flops_per_token=flops,
        tokens_per_epoch=tokens,
        steps_per_epoch=math.ceil(p.samples / global_batch),
        global_batch=global_batch,
        mfu=mfu,
        hfu=mfu * flops["hardware"] / flops["model"],
        hours={f"{e:g}": hours(e, mfu) for e in epoch_list},
        sensitivity=sensitivity,
        claim=claim_info,
        assumptions=assumptions,
        notes=notes,
        calibration=calibration,
    )


def _assumptions(p: PlanInput, gpu: GPU, mfu: float, calibration: Calibration | None) -> list[str]:
    if p.mfu is not None:
        source = "--mfu"
    elif calibration is not None:
        source = f"measured in {calibration.run_dir}"
    else:
        source = f"default for {p.method}; pass --mfu or --calibrate RUN_DIR"
    if p.method == "qlora":
        weights = (
            f"Linear weights NF4 + double quant ({bits_per_param('nf4-dq'):.3f} bits); embeddings, head, norms bf16"
        )
    else:
        weights = "weights bf16"
    trained = "bf16 grads, fp32 master weights" if p.method == "full" else "fp32 adapters and grads"
    shard = "weights, grads, optimizer sharded; 2 layers gathered" if p.parallel == "fsdp" else "a full copy per GPU"
    return [
        f"{gpu.name}: {gpu.tflops:g} TFLOP/s dense bf16 peak, {gpu.mem_gib:g} GiB; {HEADROOM:.0%} kept free, "
        f"{CONTEXT_GIB:g} GiB CUDA context",
        f"tokens = samples × seq_len = {p.samples:,} × {p.seq_len} (packed rows, no padding)",
        "FLOPs/token: 6N full, 4N + 6·N_lora LoRA/QLoRA, + 12·L·d·T attention (PaLM convention)",
        f"MFU {100 * mfu:.3g}% = model FLOPs / peak ({source})",
        f"{weights}; {trained}; optimizer {p.optimizer}; {p.parallel}: {shard}",
        "activations: bf16, SDPA, HF transformers eager (measured coefficients, see plan.py); "
        + ("every layer checkpointed" if p.checkpointing else "no checkpointing"),
        "communication overlapped with compute (one NVLink node); eval and checkpoint saving not counted",
    ]
