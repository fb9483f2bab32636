"""LoRA calculator (Q144): trainable parameters, full-fine-tuning counts, memory and FLOPs of any model.

A LoRA of rank r on Linear(in, out) trains A (r×in) and B (out×r): r·(in+out) parameters, exact for
non-square MLPs and GQA (k/v project hidden → kv_heads·head_dim). Shapes come from the real modules
of a model built on the meta device from its config (no weights), or from --layers/--hidden flags
for a Llama-style decoder. Targets match module names the way peft does (a name ends the path;
all-linear = every nn.Linear except the output head). MoE experts stored as fused 3-D parameters are
not nn.Linear and are not counted, as peft's target_modules does not reach them either.

FLOPs per token follow PaLM (Chowdhery et al. 2022, app. B), causal masking not discounted:
    full fine-tuning   6N + 12·L·d_attn·T
    LoRA               4N + 6·N_lora + 12·L·d_attn·T
N = weights of every matmul (output head included, embedding lookups excluded); a frozen weight
costs 2N forward + 2N for the activation gradient and gets no weight gradient. The one departure
we ignore: the first layer's frozen q/k/v need no input gradient (a 1/L share of them).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from weitiao.errors import UserError
from weitiao.io import read_json

# Public config.json shapes written down here (nothing is downloaded). "chapter-96x12288" is the
# chapter's example: 96 blocks, every attention projection 12288×12288 (96 heads × 128, no GQA), a
# gated MLP of width 32768 (= 8/3·d, so 8d² MLP weights per block like GPT-3's 4d MLP) and GPT-3's
# tied 50257-token vocabulary: 174.6 B parameters.
# fmt: off
_SIZES = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
          "vocab_size", "tie_word_embeddings")
_PRESET_ROWS = [
    # name              model_type hidden intermediate layers heads kv_heads vocab   tied embeddings
    ("llama-3-8b",       "llama",   4096,  14336,       32,    32,   8,       128256, False),
    ("llama-3-70b",      "llama",   8192,  28672,       80,    64,   8,       128256, False),
    ("qwen2.5-7b",       "qwen2",   3584,  18944,       28,    28,   4,       152064, False),
    ("qwen2.5-72b",      "qwen2",   8192,  29568,       80,    64,   8,       152064, False),
    ("chapter-96x12288", "llama",   12288, 32768,       96,    96,   96,      50257,  True),
]
# fmt: on
PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    name: (arch, dict(zip(_SIZES, sizes))) for name, arch, *sizes in _PRESET_ROWS
}

ALIASES = {
    "q": ["q_proj"],
    "k": ["k_proj"],
    "v": ["v_proj"],
    "o": ["o_proj"],
    "gate": ["gate_proj"],
    "up": ["up_proj"],
    "down": ["down_proj"],
    "attn": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mlp": ["gate_proj", "up_proj", "down_proj"],
}

# Bytes per parameter of weights, gradients and optimizer states.
BYTES = {"fp32": 4.0, "bf16": 2.0, "int8": 1.0}
ADAM32 = 8.0  # m and v in fp32
ADAM8 = 2.0 * (1 + 4 / 256)  # bitsandbytes 8-bit Adam: m, v as uint8 + one fp32 scale per 256
MASTER = 4.0  # fp32 master copy of bf16 weights in mixed-precision full fine-tuning


@dataclass(frozen=True)
class LinearKind:
    """All Linear modules of one name and shape: `count` of them, e.g. 80 × q_proj 8192→8192."""

    name: str
    in_features: int
    out_features: int
    bias: bool
    count: int
    output: bool = False  # the LM head: never in all-linear, never quantized by bitsandbytes

    @property
    def weights(self) -> int:
        return self.in_features * self.out_features * self.count

    @property
    def params(self) -> int:
        return (self.in_features + int(self.bias)) * self.out_features * self.count


@dataclass
class ModelShape:
    """What the calculators need to know about a decoder: sizes and every Linear by kind."""

    name: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    total_params: int
    linears: list[LinearKind] = field(default_factory=list)

    @property
    def attn_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def matmul_params(self) -> int:
        """Weights that take part in a matmul per token (LM head included)."""
        return sum(k.weights for k in self.linears)

    @property
    def quantizable_params(self) -> int:
        """Weights bitsandbytes stores in 4 bit: every Linear except the LM head."""
        return sum(k.weights for k in self.linears if not k.output)

    @property
    def output_params(self) -> int:
        return sum(k.weights for k in self.linears if k.output)

    def names(self) -> list[str]:
        return sorted({k.name for k in self.linears})


def shape_from_flags(
    layers: int,
    hidden: int,
    intermediate: int | None = None,
    heads: int | None = None,
    kv_heads: int | None = None,
    head_dim: int | None = None,
    vocab: int = 0,
    mlp: Literal["gated", "plain"] = "gated",
    tied: bool = False,
) -> ModelShape:
    """A Llama-style decoder from sizes alone: q,k,v,o, gate/up/down (plain: up/down), RMSNorms.

    Defaults: heads = hidden/128, kv_heads = heads (no GQA), intermediate = 8/3·hidden rounded up to
    256 for a gated MLP (4·hidden for a plain one), no vocabulary (the blocks only).
    """
    if layers <= 0 or hidden <= 0:
        raise UserError(f"--layers {layers} --hidden {hidden}: both must be positive")
    sizes = {"--heads": heads, "--kv-heads": kv_heads, "--head-dim": head_dim, "--intermediate": intermediate}
    for flag, v in sizes.items():
        if v is not None and v <= 0:
            raise UserError(f"{flag} {v}: must be positive")
    if vocab < 0:
        raise UserError(f"--vocab {vocab}: must be 0 (no embeddings) or positive")
    heads = heads or max(1, hidden // 128)
    kv_heads = kv_heads or heads
    if head_dim is None and hidden % heads:
        raise UserError(f"--hidden {hidden} is not divisible by --heads {heads}; pass --head-dim or change --heads")
    head_dim = head_dim or hidden // heads
    if heads % kv_heads:
        raise UserError(f"--heads {heads} is not a multiple of --kv-heads {kv_heads}")
    if intermediate is None:
        intermediate = -(-8 * hidden // 3 // 256) * 256 if mlp == "gated" else 4 * hidden
    q, kv = heads * head_dim, kv_heads * head_dim
    kinds = [
        LinearKind("q_proj", hidden, q, False, layers),
        LinearKind("k_proj", hidden, kv, False, layers),
        LinearKind("v_proj", hidden, kv, False, layers),
        LinearKind("o_proj", q, hidden, False, layers),
    ]
    if mlp == "gated":
        kinds.append(LinearKind("gate_proj", hidden, intermediate, False, layers))
    kinds += [
        LinearKind("up_proj", hidden, intermediate, False, layers),
        LinearKind("down_proj", intermediate, hidden, False, layers),
    ]
    if vocab:
        kinds.append(LinearKind("lm_head", hidden, vocab, False, 1, output=True))
    embed = vocab * hidden * (1 if tied else 2) if vocab else 0
    norms = 2 * hidden * layers + (hidden if vocab else 0)
    total = sum(k.params for k in kinds if not k.output) + embed + norms
    name = f"{layers}×{hidden} ({mlp} MLP {intermediate}, {heads} heads, {kv_heads} kv)"
    return ModelShape(name, layers, hidden, heads, kv_heads, head_dim, intermediate, vocab, total, kinds)


SIZE_KEYS = ("num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim",
             "intermediate_size", "vocab_size")  # fmt: skip


def check_sizes(config: Any, name: str) -> None:
    """Every size a shape needs is a positive integer (a dict from config.json or a config object)."""
    get = config.get if isinstance(config, dict) else lambda k: getattr(config, k, None)
    for key in SIZE_KEYS:
        v = get(key)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int):
            raise UserError(f"{name}: {key}: expected a positive integer, got {v!r}")
        if v <= 0:
            raise UserError(f"{name}: {key}: must be positive, got {v}")
    hidden, heads = get("hidden_size"), get("num_attention_heads")
    if get("head_dim") is None and isinstance(hidden, int) and isinstance(heads, int) and hidden % heads:
        raise UserError(f"{name}: hidden_size {hidden} is not divisible by num_attention_heads {heads}")


def shape_from_config(config: Any, name: str) -> ModelShape:
    """Build the model on the meta device (no memory, no weights) and group its Linear modules."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.pytorch_utils import Conv1D

    check_sizes(config.get_text_config() if hasattr(config, "get_text_config") else config, name)
    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except (ValueError, KeyError) as e:
        raise UserError(f"model {name}: transformers cannot build a causal LM from this config ({e})") from None
    head = model.get_output_embeddings()
    groups: dict[tuple, int] = {}
    for path, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear):
            key = (mod.in_features, mod.out_features)
        elif isinstance(mod, Conv1D):  # GPT-2 style: weight is in×out
            key = tuple(mod.weight.shape)
        else:
            continue
        key = (path.rsplit(".", 1)[-1], *key, mod.bias is not None, mod is head)
        groups[key] = groups.get(key, 0) + 1
    kinds = [LinearKind(n, i, o, b, c, out) for (n, i, o, b, out), c in groups.items()]
    tc = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = tc.hidden_size
    heads = tc.num_attention_heads
    head_dim = getattr(tc, "head_dim", None) or hidden // heads
    return ModelShape(
        name=name,
        layers=tc.num_hidden_layers,
        hidden=hidden,
        heads=heads,
        kv_heads=getattr(tc, "num_key_value_heads", None) or heads,
        head_dim=head_dim,
        intermediate=getattr(tc, "intermediate_size", None) or 4 * hidden,
        vocab=tc.vocab_size,
        total_params=sum(p.numel() for p in model.parameters()),
        linears=kinds,
    )


@lru_cache(maxsize=16)
def load_shape(model: str) -> ModelShape:
    """A preset name, an HF model dir, a config.json, 'demo', or a hub id in the local HF cache."""
    from transformers import AutoConfig

    from weitiao.models.load import resolve_path

    if model in PRESETS:
        arch, kw = PRESETS[model]
        return shape_from_config(AutoConfig.for_model(arch, **kw), model)
    try:
        path = Path(resolve_path(model))
    except UserError as e:
        raise UserError(f"{e}; nor is it a preset ({', '.join(PRESETS)})") from None
    name = model if path.is_dir() else str(path)
    if path.is_dir() and (path / "config.json").is_file():
        path = path / "config.json"  # read and checked here: transformers raises bare TypeErrors on bad sizes
    if path.is_file():
        data = read_json(path)
        if not isinstance(data, dict) or not isinstance(data.get("model_type"), str):
            raise UserError(f"{path}: not an HF config.json (expected an object with a model_type)")
        for part in (data, data.get("text_config")):
            if isinstance(part, dict):
                check_sizes(part, str(path))
        try:
            config = AutoConfig.for_model(**data)
        except (ValueError, TypeError, KeyError) as e:
            raise UserError(f"{path}: not an HF config.json transformers can read ({e})") from None
        return shape_from_config(config, name)
    try:
        config = AutoConfig.from_pretrained(str(path))
    except (OSError, ValueError):
        raise UserError(
            f"model {model!r}: not a preset ({', '.join(PRESETS)}), a model dir, a config.json, "
            "or a hub id in the local HF cache"
        ) from None
    return shape_from_config(config, model)


@dataclass
class LoraInput:
    """The LoRA to count and the model it goes on (a preset, HF dir or config.json; or a Llama-style decoder
    from sizes)."""

    r: int = 16
    """LoRA rank."""
    targets: str = "all-linear"
    """all-linear, or q,k,v,o,gate,up,down / attn / mlp / module names."""
    dora: bool = False
    """DoRA: + one magnitude per output feature."""
    model: str | None = None
    """Preset (llama-3-70b, qwen2.5-7b, chapter-96x12288, ...), HF dir or config.json."""
    layers: int | None = None
    """Instead of --model: number of transformer blocks."""
    hidden: int | None = None
    """Instead of --model: hidden size d."""
    intermediate: int | None = None
    """MLP width (default 8/3·d gated, 4·d plain)."""
    heads: int | None = None
    """Attention heads (default d/128)."""
    kv_heads: int | None = None
    """Key/value heads for GQA (default = heads)."""
    head_dim: int | None = None
    """Default d/heads."""
    vocab: int = 0
    """Vocabulary (0 = the blocks only, no embeddings or head)."""
    mlp: Literal["gated", "plain"] = "gated"
    """gated (gate/up/down, Llama) or plain (up/down, GPT)."""
    seq_len: int = 2048
    """Tokens per sequence (attention FLOPs)."""
    batch_size: int = 1
    """Sequences per step (FLOPs per step)."""

    def __post_init__(self) -> None:
        sizes = {"--layers": self.layers, "--hidden": self.hidden, "--intermediate": self.intermediate,
                 "--heads": self.heads, "--kv-heads": self.kv_heads, "--head-dim": self.head_dim,
                 "--vocab": self.vocab or None, "--mlp": None if self.mlp == "gated" else self.mlp}  # fmt: skip
        if self.model is not None and (given := [k for k, v in sizes.items() if v is not None]):  # they were ignored
            raise UserError(f"{', '.join(given)}: --model {self.model} gives the shape; drop them, or --model")
        if (self.model is None) == (self.layers is None or self.hidden is None):
            raise UserError("give either --model, or --layers and --hidden (e.g. --layers 96 --hidden 12288)")
        if self.mlp not in ("gated", "plain"):
            raise UserError(f"--mlp {self.mlp}: expected gated or plain")

    def report(self) -> LoraReport:
        """Everything `weitiao calc lora` prints, as numbers."""
        if self.model is not None:
            shape = load_shape(self.model)
        else:
            shape = shape_from_flags(self.layers, self.hidden, self.intermediate, self.heads, self.kv_heads,  # type: ignore[arg-type]
                                     self.head_dim, self.vocab, self.mlp)  # fmt: skip
        return lora_report(shape, self.r, self.targets, self.seq_len, self.batch_size, self.dora)


def resolve_targets(shape: ModelShape, targets: str | list[str]) -> list[LinearKind]:
    """Linear kinds a peft target list reaches: 'all-linear', aliases (q,k,v,o,gate,up,down,attn,mlp), names."""
    items = targets.split(",") if isinstance(targets, str) else list(targets)
    items = [t.strip() for t in items if t.strip()]
    if not items:
        raise UserError("--targets: empty; use e.g. q,v or all-linear")
    if items == ["all-linear"]:
        return [k for k in shape.linears if not k.output]
    names: list[str] = []
    for t in items:
        names += ALIASES.get(t, [t])
    available = shape.names()
    missing = [n for n in names if n not in available]
    if missing:
        raise UserError(
            f"--targets: {', '.join(missing)} not in {shape.name} (its Linear modules: {', '.join(available)})"
        )
    return [k for k in shape.linears if k.name in names]


def lora_params(kind: LinearKind, r: int, dora: bool = False) -> int:
    """Trainable parameters peft adds to `kind`: r·(in+out) per module, + out for DoRA's magnitude."""
    return (r * (kind.in_features + kind.out_features) + (kind.out_features if dora else 0)) * kind.count


def flops_per_token(
    shape: ModelShape, method: Literal["full", "lora"], n_lora: int, seq_len: int, checkpointing: bool = False
) -> dict[str, float]:
    """Forward, backward and (with activation checkpointing) recompute FLOPs per trained token.

    `model` = forward + backward (what MFU counts); `hardware` adds the recomputed forward of the
    decoder layers (the head is not checkpointed).
    """
    n = shape.matmul_params
    attn = 4.0 * shape.layers * shape.attn_dim * seq_len  # QKᵀ and A·V forward, 2·T·d each
    adapters = n_lora if method == "lora" else 0
    forward = 2.0 * n + attn + 2.0 * adapters
    weight_grads = 2.0 * n if method == "full" else 0.0
    backward = 2.0 * n + weight_grads + 2.0 * attn + 4.0 * adapters
    recompute = forward - 2.0 * shape.output_params if checkpointing else 0.0
    return {
        "forward": forward,
        "backward": backward,
        "recompute": recompute,
        "model": forward + backward,
        "hardware": forward + backward + recompute,
    }


@dataclass
class LoraReport:
    model: str
    total_params: int
    r: int
    targets: str
    modules: list[dict]
    lora_params: int
    full_same_modules: int
    full_baselines: dict[str, int]
    memory_gib: list[dict]
    seq_len: int
    batch_size: int
    flops_per_token: dict[str, dict[str, float]]
    flops_per_step: dict[str, float]

    def to_dict(self) -> dict:
        return asdict(self)


def bits_per_param(method: str, block: int = 64, block2: int = 256, numel: int | None = None) -> float:
    """Storage per weight: 4-bit code + its share of fp32 scales (+ 8-bit scales with DQ)."""
    if method == "int4-tensor":
        return 4 + 32 / (numel or 1)
    if method in ("int4-block", "nf4"):
        return 4 + 32 / block
    if method == "nf4-dq":
        return 4 + 8 / block + 32 / (block * block2)
    raise ValueError(method)


def memory_rows(shape: ModelShape, n_lora: int, nf4_bits: float) -> list[dict]:
    """Weights, gradients and optimizer states (no activations) for each way to fine-tune, in GiB; `adam_*` hold the
    Adam moments plus the fp32 master copy where the method keeps one (full bf16)."""
    n, q = shape.total_params, shape.quantizable_params
    gib = 1024**3

    def row(method: str, weights: float, trained: float, grad_b: float, master_b: float) -> dict:
        return {
            "method": method,
            "weights": weights / gib,
            "grads": trained * grad_b / gib,
            "adam_fp32": trained * (master_b + ADAM32) / gib,
            "adam_8bit": trained * (master_b + ADAM8) / gib,
            "total_adam_fp32": (weights + trained * (grad_b + master_b + ADAM32)) / gib,
            "total_adam_8bit": (weights + trained * (grad_b + master_b + ADAM8)) / gib,
        }

    nf4 = q * nf4_bits / 8 + (n - q) * BYTES["bf16"]
    adapters = n_lora * BYTES["fp32"]  # peft keeps adapters in fp32 on a bf16/4-bit base
    return [
        row("full fp32", n * 4, n, 4, 0),
        row("full bf16+fp32 master", n * 2, n, 2, MASTER),
        row("LoRA, bf16 base", n * 2 + adapters, n_lora, 4, 0),
        row("QLoRA, NF4+DQ", nf4 + adapters, n_lora, 4, 0),
    ]


def lora_report(
    shape: ModelShape,
    r: int,
    targets: str,
    seq_len: int = 2048,
    batch_size: int = 1,
    dora: bool = False,
) -> LoraReport:
    """Everything `weitiao calc lora` prints, as numbers."""
    if r <= 0:
        raise UserError(f"--r {r}: the LoRA rank must be positive")
    chosen = resolve_targets(shape, targets)
    modules = [
        {
            "name": k.name,
            "in": k.in_features,
            "out": k.out_features,
            "count": k.count,
            "lora_per_module": lora_params(k, r, dora) // k.count,
            "lora": lora_params(k, r, dora),
            "full": k.params,
        }
        for k in chosen
    ]
    n_lora = sum(m["lora"] for m in modules)
    baselines = {"all linear layers": sum(k.params for k in shape.linears if not k.output)}
    attn = [k for k in shape.linears if k.name in ALIASES["attn"]]
    if len(attn) == 4:
        baselines["attention q,k,v,o"] = sum(k.params for k in attn)
    baselines["whole model"] = shape.total_params
    flops = {
        "full": flops_per_token(shape, "full", 0, seq_len),
        "lora": flops_per_token(shape, "lora", n_lora, seq_len),
    }
    tokens = seq_len * batch_size
    return LoraReport(
        model=shape.name,
        total_params=shape.total_params,
        r=r,
        targets=targets,
        modules=modules,
        lora_params=n_lora,
        full_same_modules=sum(m["full"] for m in modules),
        full_baselines=baselines,
        memory_gib=memory_rows(shape, n_lora, bits_per_param("nf4-dq")),
        seq_len=seq_len,
        batch_size=batch_size,
        flops_per_token=flops,
        flops_per_step={k: v["model"] * tokens for k, v in flops.items()},
    )
