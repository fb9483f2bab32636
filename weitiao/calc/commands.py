"""`weitiao calc lora|plan|quant`: planning tools as a typer sub-app; each prints rich tables or --json."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from weitiao import progress
from weitiao.calc.lora import LoraInput
from weitiao.calc.plan import PlanInput, parse_range
from weitiao.cli_options import Flag, options_from
from weitiao.errors import UserError

app = typer.Typer(no_args_is_help=True, help="Planning tools: LoRA counts, GPU memory/hours, 4-bit quantization error.")
console = progress.console()


def _count(n: float) -> str:
    """12,345,678 (12.3 M)."""
    for div, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n:,.0f} ({n / div:.3g} {unit})"
    return f"{n:,.0f}"


def _gib(x: float) -> str:
    """1,234.5 for large sizes; two significant digits below 1 GiB (a tiny model's 0.00021 printed as 0.0)."""
    return f"{x:,.1f}" if x >= 1 or x == 0 else f"{x:.2g}"


def _pct(x: float) -> str:
    return f"{100 * x:.3g}%"


def _dump(obj: dict) -> None:
    print(json.dumps(obj, ensure_ascii=False, indent=2, default=str))


def _table(title: str, *cols: str) -> Table:
    """A table whose first column names the row (left) and the others hold numbers (right)."""
    t = Table(title=title)
    for i, c in enumerate(cols):
        t.add_column(c, justify="right" if i else "left")
    return t


@app.command()
@options_from(LoraInput, {"r": Flag(("--r", "-r"))})
def lora(p: LoraInput, as_json: bool = typer.Option(False, "--json", help="print the report as JSON")) -> None:
    """LoRA trainable parameters, full-fine-tuning counts, memory and FLOPs per token/step."""
    rep = p.report()
    if as_json:
        _dump(rep.to_dict())
        return
    cols = ("module", "shape in→out", "count", "LoRA / module", "LoRA total", "full fine-tuning")
    t = _table(f"LoRA r={p.r} · {p.targets} · {rep.model} (LoRA 参数量)", *cols)
    for m in rep.modules:
        counts = (f"{m[k]:,}" for k in ("lora_per_module", "lora", "full"))
        t.add_row(m["name"], f"{m['in']}→{m['out']}", str(m["count"]), *counts)
    t.add_row("[bold]total", "", "", "", f"[bold]{rep.lora_params:,}", f"[bold]{rep.full_same_modules:,}")
    console.print(t)

    c = _table("trainable parameters vs full fine-tuning (相比全量微调)", "what", "parameters", "LoRA / this")
    c.add_row("LoRA trainable", _count(rep.lora_params), "")
    c.add_row(
        "full fine-tuning, same modules", _count(rep.full_same_modules), _pct(rep.lora_params / rep.full_same_modules)
    )
    for name, n in rep.full_baselines.items():
        c.add_row(f"full fine-tuning, {name}", _count(n), _pct(rep.lora_params / n))
    console.print(c)

    cols = ("method", "weights", "grads", "optimizer: Adam fp32", "total", "optimizer: Adam 8-bit", "total 8-bit")
    title = "weights + gradients + optimizer states, GiB (optimizer: Adam moments + the fp32 master copy where one "
    mt = _table(title + "is kept; no activations: see `calc plan`)", *cols)
    for row in rep.memory_gib:
        mt.add_row(
            row["method"],
            *(
                _gib(row[k])
                for k in ("weights", "grads", "adam_fp32", "total_adam_fp32", "adam_8bit", "total_adam_8bit")
            ),
        )
    console.print(mt)

    cols = ("", "forward / token", "backward / token", "total / token", "total / step", "vs full")
    ft = _table(f"FLOPs (seq {rep.seq_len}, step = {rep.batch_size} × {rep.seq_len} tokens) (每步计算量)", *cols)
    full = rep.flops_per_token["full"]["model"]
    for name, f in rep.flops_per_token.items():
        label = "full (6N)" if name == "full" else "LoRA (4N+6N_lora)"
        ft.add_row(
            label,
            f"{f['forward']:.4g}",
            f"{f['backward']:.4g}",
            f"{f['model']:.4g}",
            f"{rep.flops_per_step[name]:.4g}",
            _pct(f["model"] / full),
        )
    console.print(ft)
    console.print(
        "LoRA cuts trainable parameters and optimizer memory by orders of magnitude, but compute per step only "
        "by the weight-gradient third: the frozen weights still run forward and pass gradients back."
    )


@app.command()
@options_from(
    PlanInput, {"r": Flag(("--r", "-r")), "epochs": Flag(parse=lambda s: parse_range(s, "--epochs"), shown="1-3")}
)
def plan(
    p: PlanInput,
    claim: str = typer.Option(None, help="hours someone estimated for this job, e.g. 8-24, to place in the range"),
    calibrate: Path = typer.Option(None, help="a finished weitiao run dir: use its measured tokens/s → MFU"),
    calibrate_tflops: float = typer.Option(None, help="peak TFLOP/s per device of the calibration run (default --gpu)"),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
) -> None:
    """GPU memory per device and training hours; defaults are the chapter's 70B QLoRA scenario."""
    from weitiao.calc.plan import GPUS
    from weitiao.calc.plan import calibrate as run_calibration
    from weitiao.calc.plan import plan as make_plan

    lora_flags = (("--r", p.r, PlanInput.r), ("--targets", p.targets, PlanInput.targets),
                  ("--lora-dropout", p.lora_dropout, PlanInput.lora_dropout))  # fmt: skip
    if p.method == "full" and (given := [flag for flag, value, default in lora_flags if value != default]):
        raise UserError(f"{', '.join(given)}: LoRA settings, unused by --method full (it trains every weight)")
    if calibrate_tflops is not None and calibrate is None:
        raise UserError("--calibrate-tflops: the peak of a --calibrate RUN_DIR's devices; give --calibrate too")
    cal = run_calibration(calibrate, calibrate_tflops or GPUS[p.gpu].tflops) if calibrate is not None else None
    rep = make_plan(p, cal, parse_range(claim, "--claim") if claim else None)
    if as_json:
        _dump(rep.to_dict())
        return
    g = GPUS[p.gpu]
    console.print(
        f"[bold]{p.method}[/] · {rep.model} · {_count(rep.total_params)} params, "
        f"{_count(rep.trainable_params)} trained · "
        f"{p.gpus} × {g.name} · {p.parallel} · micro-batch {p.micro_batch} × accum {p.grad_accum} × {p.gpus} GPUs = "
        f"{rep.global_batch} rows/step · {rep.steps_per_epoch} steps/epoch"
    )
    m = _table("memory per GPU, GiB (每卡显存)", "component", "GiB")
    for k, v in rep.memory_gib.items():
        m.add_row(f"[bold]{k}" if k == "total" else k, f"[bold]{v:.1f}" if k == "total" else f"{v:.2f}")
    fits = "[green]fits" if rep.fits else "[red]does not fit"
    m.add_row(f"{g.name} ({g.mem_gib:g} GiB, 10% kept free)", fits)
    m.add_row("largest micro-batch that fits", str(rep.max_micro_batch))
    console.print(m)

    f = rep.flops_per_token
    t = Table(title=f"time at MFU {_pct(rep.mfu)} (训练时间)")
    t.add_column("epochs", justify="right")
    t.add_column("tokens", justify="right")
    t.add_column("hours", justify="right")
    for e, h in rep.hours.items():
        t.add_row(e, f"{float(e) * rep.tokens_per_epoch:,.0f}", f"{h:.1f}")
    console.print(t)
    console.print(
        f"FLOPs/token: model {f['model']:.3g} (forward {f['forward']:.3g} + backward {f['backward']:.3g}), "
        f"hardware {f['hardware']:.3g} with recompute → HFU {_pct(rep.hfu)}"
    )
    s = Table(title="hours by MFU and epochs (MFU 敏感性)")
    s.add_column("MFU", justify="right")
    epochs_cols = list(next(iter(rep.sensitivity.values())))
    for e in epochs_cols:
        s.add_column(f"{e} epoch" + ("s" if e != "1" else ""), justify="right")
    for u, row in rep.sensitivity.items():
        s.add_row(u, *(f"{row[e]:.1f}" for e in epochs_cols))
    console.print(s)
    if rep.claim:
        c = rep.claim
        lo, hi = (_pct(u) for u in c["implied_mfu"])
        implied = lo if lo == hi else f"{lo}-{hi}"
        ours = f"{c['our_hours'][0]:.1f}-{c['our_hours'][1]:.1f} h"
        console.print(
            f"[bold]{c['source']}[/]: {c['hours'][0]:g}-{c['hours'][1]:g} h ⇔ MFU {implied}; "
            f"at {_pct(rep.mfu)} we get {ours}, "
            f"so the claim sits [bold]{c['position']}[/] our range (×{c['factor']:.2g})."
        )
    if rep.calibration:
        cal = rep.calibration
        console.print(
            f"calibration {cal.run_dir}: {cal.method} {cal.model}, {cal.world} device(s), "
            f"{cal.tokens_per_s:,.0f} tok/s × "
            f"{cal.flops_per_token:.3g} FLOPs/token = {cal.achieved_tflops:.3g} TFLOP/s of {cal.peak_tflops:g} → "
            f"MFU {_pct(cal.mfu)}"
        )
    console.print("[dim]assumptions:[/]")
    for a in rep.assumptions:
        console.print(f"[dim]  · {a}[/]")
    for n in rep.notes:
        console.print(f"[yellow]note:[/] {n}")


@app.command()
def quant(
    model: str = typer.Option(None, help="HF model dir or .safetensors file (default: a synthetic tensor)"),
    tensor: str = typer.Option(None, help="weight name in the model (default: first q_proj weight)"),
    rows: int = typer.Option(2048, help="synthetic tensor rows"),
    cols: int = typer.Option(2048, help="synthetic tensor columns"),
    std: float = typer.Option(0.02, help="synthetic weight std"),
    outlier_frac: float = typer.Option(1e-4, help="fraction of synthetic weights made outliers"),
    outlier_scale: float = typer.Option(50.0, help="outlier magnitude in stds"),
    seed: int = typer.Option(0, help="synthetic tensor seed"),
    plot: Path = typer.Option(None, help="write a PNG histogram with the int4 and NF4 levels"),
    block_size: int = typer.Option(64, help="weights per block (one absmax each): 64 | 128 | 256"),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
) -> None:
    """Error and bits/param of per-tensor int4, blockwise int4, NF4 and NF4 + double quantization."""
    from weitiao.calc import quant as q
    from weitiao.io import claim_outputs

    q.check_block_size(block_size)
    synthetic = {"--rows": (rows, 2048), "--cols": (cols, 2048), "--std": (std, 0.02), "--seed": (seed, 0),
                 "--outlier-frac": (outlier_frac, 1e-4), "--outlier-scale": (outlier_scale, 50.0)}  # fmt: skip
    if model is not None and (given := [flag for flag, (v, default) in synthetic.items() if v != default]):
        raise UserError(f"{', '.join(given)}: settings of the synthetic tensor, unused with --model {model}; drop them")
    if tensor is not None and model is None:
        raise UserError(f"--tensor {tensor}: names a weight of --model; give --model DIR, or drop --tensor")
    claim_outputs([plot] if plot else [], [], "--plot")
    if model is not None:
        name, x = q.read_tensor(model, tensor)
        rep = q.quant_report(x, f"{model}: {name}", block=block_size)
    else:
        if rows <= 0 or cols <= 0 or not 0 <= outlier_frac < 1:
            raise UserError("--rows/--cols must be positive and --outlier-frac in [0, 1)")
        q.check_size(rows * cols, f"--rows {rows} --cols {cols}")
        x = q.synthetic_weight(rows, cols, std, outlier_frac, outlier_scale, seed)
        clean = q.synthetic_weight(rows, cols, std, 0.0, outlier_scale, seed)
        source = f"synthetic N(0, {std}²), {outlier_frac:g} outliers at ±{outlier_scale:g}σ"
        rep = q.quant_report(x, source, clean, block_size)
    if plot is not None:
        q.plot_histogram(x, plot, block_size, title=rep.source)
    if as_json:
        _dump(rep.to_dict())
        return
    cols = ("method", "bits/param", "MSE", "max |err|", "SNR dB", "zeroed %")
    t = _table(f"4-bit quantization · {rep.source} · {'×'.join(map(str, rep.shape))} (分块量化)", *cols)
    groups = [("with outliers" if rep.clean_rows else "", rep.rows)]
    if rep.clean_rows:
        groups.append(("no outliers", rep.clean_rows))
    for label, rows_ in groups:
        if label:
            t.add_row(f"[bold]{label}", "", "", "", "", "")
        for r_ in rows_:
            t.add_row(
                r_.label,
                f"{r_.bits_per_param:.3f}",
                f"{r_.mse:.3g}",
                f"{r_.max_abs_err:.3g}",
                f"{r_.snr_db:.1f}",
                f"{r_.zeroed_pct:.1f}",
            )
    console.print(t)
    fx = rep.facts
    console.print(
        f"one absmax for the whole tensor: max|w| = {fx['max_over_std']:.0f}σ, so the int4 step is "
        f"{fx['tensor_step_over_std']:.1f}σ and {fx['pct_within_half_step']:.2f}% of weights fall within half a step "
        f"of 0; per block of {block_size} the median step is {fx['median_block_step'] / fx['std']:.2f}σ and "
        f"{fx['pct_blocks_with_outlier']:.2f}% of blocks hold a weight beyond 6σ."
    )
    b = block_size
    saved = 32 / b - 8 / b - 32 / (b * 256)
    console.print(
        f"double quantization: scales cost {32 / b:.3f} → {8 / b + 32 / (b * 256):.3f} bits/param, "
        f"saving {saved:.3f} bits/param (about {saved * 65e9 / 8 / 1024**3:.1f} GiB on a 65B model)."
    )
    if plot is not None:
        console.print(f"histogram → {plot}")
