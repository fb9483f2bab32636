"""Quantization analyzer (Q145): per-tensor int4, blockwise int4, NF4 and NF4 + double quantization.

Each method is written out in torch so the arithmetic can be read; tests check NF4 and NF4+DQ against
bitsandbytes' quantize_4bit/dequantize_4bit on the same tensor.
- absmax int4: symmetric round-to-nearest on -7..7 (the 16th code, -8, stays unused), one fp32 scale
  per tensor or per block of 64;
- NF4 (as bitsandbytes): each block of 64 divided by its absmax, nearest of 16 normal-quantile levels;
- double quantization (as bitsandbytes): the fp32 block absmaxes minus their mean become 8-bit codes of
  the dynamic map with one fp32 scale per 256 blocks: 4 + 8/64 + 32/(64·256) = 4.127 bits/param.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from weitiao.calc.lora import bits_per_param
from weitiao.errors import UserError

# The 16 NF4 levels (QLoRA, Dettmers et al. 2023, app. E); `nf4_levels()` derives them.
NF4 = torch.tensor(
    [
        -1.0,
        -0.6961928009986877,
        -0.5250730514526367,
        -0.39491748809814453,
        -0.28444138169288635,
        -0.18477343022823334,
        -0.09105003625154495,
        0.0,
        0.07958029955625534,
        0.16093020141124725,
        0.24611230194568634,
        0.33791524171829224,
        0.44070982933044434,
        0.5626170039176941,
        0.7229568362236023,
        1.0,
    ]
)


def nf4_levels(offset: float = 0.9677083) -> torch.Tensor:
    """NF4 from first principles: 8 positive and 7 negative quantiles of N(0,1), an exact 0, scaled to ±1."""
    pos = torch.special.ndtri(torch.linspace(offset, 0.5, 9)[:-1].double())
    neg = -torch.special.ndtri(torch.linspace(offset, 0.5, 8)[:-1].double())
    v = torch.cat([pos, neg, torch.zeros(1, dtype=torch.float64)]).sort().values
    return (v / v.max()).float()


def dynamic_map() -> torch.Tensor:
    """bitsandbytes' signed 8-bit dynamic map (exponent bits shrink the fraction), sorted, 256 values."""
    data: list[float] = []
    for i in range(7):  # exponents 10^-6 .. 10^0, 2^i fraction steps each (float32 as bitsandbytes computes it)
        edges = torch.linspace(0.1, 1, 2**i + 1)
        means = (edges[:-1] + edges[1:]) / 2
        data += (10 ** (i - 6) * means).tolist() + (-(10 ** (i - 6)) * means).tolist()
    data += [0.0, 1.0]
    return torch.tensor(sorted(data), dtype=torch.float32)


def _blocks(x: torch.Tensor, block: int) -> torch.Tensor:
    """Flatten into rows of `block`, zero-padding the last one (zeros never change an absmax)."""
    flat = x.reshape(-1).float()
    pad = -flat.numel() % block
    return torch.nn.functional.pad(flat, (0, pad)).view(-1, block)


def _nearest(values: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Index of the nearest level (levels sorted): the midpoint rule bitsandbytes uses."""
    return torch.bucketize(values, (levels[:-1] + levels[1:]) / 2)


def absmax_int4(x: torch.Tensor, block: int | None = None) -> torch.Tensor:
    """Symmetric absmax int4 per tensor (block=None) or per block; returns the dequantized tensor."""
    b = _blocks(x, block) if block else x.reshape(1, -1).float()
    scale = b.abs().amax(dim=1, keepdim=True).clamp(min=1e-38) / 7
    deq = (b / scale).round().clamp(-7, 7) * scale
    return deq.reshape(-1)[: x.numel()].view(x.shape)


def nf4_codes(x: torch.Tensor, block: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """(4-bit level index per weight, fp32 absmax per block)."""
    b = _blocks(x, block)
    absmax = b.abs().amax(dim=1)
    scaled = (b * (1.0 / absmax.clamp(min=1e-38)).unsqueeze(1)).clamp(-1, 1)
    return _nearest(scaled, NF4), absmax


def double_quantize(absmax: torch.Tensor, block2: int = 256) -> torch.Tensor:
    """The block scales as bitsandbytes stores them with DQ, dequantized: 8-bit code · fp32 scale + mean."""
    offset = absmax.mean()
    b = _blocks(absmax - offset, block2)
    scale2 = b.abs().amax(dim=1, keepdim=True)
    code = dynamic_map()
    idx = _nearest((b * (1.0 / scale2.clamp(min=1e-38))).clamp(-1, 1), code)
    return (code[idx] * scale2).reshape(-1)[: absmax.numel()] + offset


def nf4(x: torch.Tensor, block: int = 64, double_quant: bool = False, block2: int = 256) -> torch.Tensor:
    """NF4 blockwise (optionally with double-quantized scales); returns the dequantized tensor."""
    idx, absmax = nf4_codes(x, block)
    if double_quant:
        absmax = double_quantize(absmax, block2)
    deq = NF4[idx] * absmax.unsqueeze(1)
    return deq.reshape(-1)[: x.numel()].view(x.shape)


BLOCK_SIZES = (64, 128, 256)  # bitsandbytes' NF4 block sizes worth comparing (64 is QLoRA's)
METHODS = {  # label and dequantized tensor, given the block size
    "int4-tensor": ("absmax int4, per tensor", lambda x, b: absmax_int4(x)),
    "int4-block": ("absmax int4, block {b}", lambda x, b: absmax_int4(x, b)),
    "nf4": ("NF4, block {b}", lambda x, b: nf4(x, b)),
    "nf4-dq": ("NF4 + double quant, block {b}", lambda x, b: nf4(x, b, double_quant=True)),
}


@dataclass
class QuantRow:
    method: str
    label: str
    bits_per_param: float
    mse: float
    max_abs_err: float
    snr_db: float
    zeroed_pct: float  # nonzero weights that come back as exactly 0


def error_row(method: str, x: torch.Tensor, deq: torch.Tensor, block: int = 64) -> QuantRow:
    x, deq = x.float(), deq.float()
    err = x - deq
    noise = float(err.pow(2).sum(dtype=torch.float64))
    signal = float(x.pow(2).sum(dtype=torch.float64))
    nonzero = int((x != 0).sum())
    zeroed = int(((deq == 0) & (x != 0)).sum())
    return QuantRow(
        method=method,
        label=METHODS[method][0].format(b=block),
        bits_per_param=bits_per_param(method, block, numel=x.numel()),
        mse=noise / x.numel(),
        max_abs_err=float(err.abs().max()),
        snr_db=10 * math.log10(signal / noise) if noise > 0 else math.inf,
        zeroed_pct=100 * zeroed / max(1, nonzero),
    )


def analyze(x: torch.Tensor, block: int = 64) -> list[QuantRow]:
    return [error_row(m, x, fn(x, block), block) for m, (_, fn) in METHODS.items()]


MAX_ELEMENTS = 1 << 27  # 134M weights = 0.5 GiB per fp32 copy; the analysis holds several copies


def check_size(numel: int, what: str) -> None:
    """Refuse tensors whose analysis would need tens of GiB (or terabytes) of memory."""
    if numel > MAX_ELEMENTS:
        gib = numel * 4 / 2**30
        raise UserError(f"{what}: {numel:,} weights ({gib:,.0f} GiB per fp32 copy) is over the {MAX_ELEMENTS:,} limit")


def synthetic_weight(
    rows: int = 2048,
    cols: int = 2048,
    std: float = 0.02,
    outlier_frac: float = 1e-4,
    outlier_scale: float = 50.0,
    seed: int = 0,
) -> torch.Tensor:
    """N(0, std²) weights with a fraction of entries replaced by ±outlier_scale·std."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * std
    k = int(round(outlier_frac * w.numel()))
    if k:
        pos = torch.randperm(w.numel(), generator=g)[:k]
        sign = torch.randint(0, 2, (k,), generator=g).float() * 2 - 1
        w.view(-1)[pos] = sign * outlier_scale * std
    return w


def outlier_facts(x: torch.Tensor, block: int = 64) -> dict[str, float]:
    """The chapter's argument in numbers: one absmax for all vs one per block."""
    flat = x.reshape(-1).float()
    std = float(flat.std())
    step_tensor = float(flat.abs().max()) / 7
    absmax = _blocks(x, block).abs().amax(dim=1)
    return {
        "std": std,
        "max_over_std": float(flat.abs().max()) / std,
        "tensor_step": step_tensor,
        "tensor_step_over_std": step_tensor / std,
        "pct_within_half_step": 100 * float((flat.abs() < step_tensor / 2).float().mean()),
        "median_block_step": float(absmax.median()) / 7,
        "pct_blocks_with_outlier": 100 * float((absmax > 6 * std).float().mean()),
    }


def read_tensor(model: str, name: str | None) -> tuple[str, torch.Tensor]:
    """One weight from a safetensors model dir/file; default: the first q_proj weight, else the largest 2-D."""
    from safetensors import SafetensorError, safe_open

    from weitiao.models.load import resolve_path

    path = Path(resolve_path(model))
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
    if not files or not all(f.exists() for f in files):
        raise UserError(f"--model {model}: no .safetensors weights found")
    shapes: dict[str, tuple[Path, list[int]]] = {}
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as fh:
                for key in fh.keys():
                    shapes[key] = (f, fh.get_slice(key).get_shape())
        except (SafetensorError, OSError) as e:
            raise UserError(f"{f}: not a readable safetensors file (truncated or corrupt: {e})") from None
    if name is None:
        two_d = [k for k, (_, s) in shapes.items() if len(s) == 2]
        q = [k for k in two_d if "q_proj.weight" in k]
        if not two_d:
            raise UserError(f"--model {model}: no 2-D weight inside; pass --tensor NAME")
        name = q[0] if q else max(two_d, key=lambda k: math.prod(shapes[k][1]))
    if name not in shapes:
        near = [k for k in shapes if name.split(".")[-2:][0] in k][:5] or list(shapes)[:5]
        raise UserError(f"--tensor {name}: not in {model} (e.g. {', '.join(near)})")
    check_size(math.prod(shapes[name][1]), f"--tensor {name}")
    try:
        with safe_open(str(shapes[name][0]), framework="pt") as fh:
            return name, fh.get_tensor(name).float()
    except (SafetensorError, OSError) as e:
        raise UserError(f"{shapes[name][0]}: not a readable safetensors file (truncated or corrupt: {e})") from None


@dataclass
class QuantReport:
    source: str
    shape: list[int]
    rows: list[QuantRow]
    facts: dict[str, float]
    clean_rows: list[QuantRow] | None = None  # synthetic only: the same tensor without outliers
    block: int = 64

    def to_dict(self) -> dict:
        return asdict(self)


def plot_histogram(x: torch.Tensor, path: str | Path, block: int = 64, title: str = "") -> Path:
    """Two panels: raw weights with per-tensor int4 levels; block-normalized weights with the NF4 levels."""
    try:
        from weitiao.io import pyplot

        plt = pyplot()
    except ImportError:
        raise UserError("--plot needs matplotlib: pip install matplotlib") from None
    from weitiao.io import save_figure

    path = Path(path)
    flat = x.reshape(-1).float()
    sample = flat[torch.randperm(flat.numel(), generator=torch.Generator().manual_seed(0))[:2_000_000]]
    b = _blocks(x, block)
    normed = (b / b.abs().amax(dim=1, keepdim=True).clamp(min=1e-38)).reshape(-1)[: flat.numel()]
    normed = normed[torch.randperm(normed.numel(), generator=torch.Generator().manual_seed(1))[:2_000_000]]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.2))
    a1.hist(sample.numpy(), bins=200, color="#4c72b0", log=True)
    step = float(flat.abs().max()) / 7
    for k in range(-7, 8):
        a1.axvline(k * step, color="#c44e52", lw=0.8, alpha=0.7)
    a1.set_title("weights (log count) · red: per-tensor int4 levels")
    a2.hist(normed.numpy(), bins=200, color="#55a868")
    for v in NF4.tolist():
        a2.axvline(v, color="#c44e52", lw=0.8, alpha=0.8)
    a2.set_title(f"w / block absmax (block {block}) · red: NF4 levels")
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def check_block_size(block: int) -> None:
    if block not in BLOCK_SIZES:
        raise UserError(f"--block-size {block}: choose one of {', '.join(map(str, BLOCK_SIZES))}")


def quant_report(x: torch.Tensor, source: str, clean: torch.Tensor | None = None, block: int = 64) -> QuantReport:
    check_block_size(block)
    return QuantReport(
        source=source,
        shape=list(x.shape),
        rows=analyze(x, block),
        facts=outlier_facts(x, block),
        clean_rows=analyze(clean, block) if clean is not None else None,
        block=block,
    )
