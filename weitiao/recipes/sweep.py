"""Run a recipe once per value of one config key; write a table (JSON + Markdown) and a plot.

weitiao dpo CONFIG.yaml --sweep beta=0.01,0.1,0.5     # the chapter's β trade-off, measured
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from weitiao.config import CONFIG_FILE, dump_config, load_config, parse_override
from weitiao.data.files import as_number
from weitiao.errors import UserError
from weitiao.io import atomic_write_text, claim_outputs, pyplot, save_figure
from weitiao.models.load import lora_as_trained, lora_continued
from weitiao.train.checkpoint import config_changes
from weitiao.train.log import read_metrics

ALIASES = {"beta": "dpo.beta", "lr": "train.lr", "r": "lora.r"}
# DPO's metrics: β-scaled margins, the unscaled log-ratio gap, the k3 term on the data's replies (not a
# KL of the policy) and the on-policy KL from replies sampled on the eval prompts (eval only).
COLUMNS = ("margins", "logp_gap", "accuracy", "kl_offpolicy_data", "kl_onpolicy_seq", "kl_onpolicy_tok", "loss")
PLOTTED = ("margins", "accuracy", "kl_onpolicy_seq")
SOURCES = {  # where a row's metrics come from
    "eval": "held-out eval set (data.eval / data.eval_split)",
    "train_last_step": "last training step's micro-batches (no eval set: set data.eval or data.eval_split for "
    "held-out numbers)",
}


def _cell(v: float | None) -> str:
    return "–" if v is None else f"{v:.4g}"


def parse_sweep(spec: str) -> tuple[str, list[str]]:
    """`beta=0.01,0.1` → ("dpo.beta", ["0.01", "0.1"])."""
    if "=" not in spec:
        raise UserError(f"--sweep {spec!r}: expected key=v1,v2,... e.g. beta=0.01,0.1,0.5")
    key, values = spec.split("=", 1)
    vals = [v.strip() for v in values.split(",") if v.strip()]
    if len(vals) < 2:
        raise UserError(f"--sweep {spec!r}: give at least two values")
    for v in vals:  # the table, its key column and the plot are per number
        if as_number(v) is None:
            raise UserError(f"--sweep {spec!r}: {v!r} is not a number; sweep a numeric key (run other settings apart)")
    if len({as_number(v) for v in vals}) < len(vals):
        raise UserError(f"--sweep {spec!r}: a value is given twice; each value is one run")
    return ALIASES.get(key.strip(), key.strip()), vals


def sweep(
    cls: type[BaseModel],
    run: Callable[[Any], dict],
    config: str | Path,
    overrides: list[str],
    spec: str,
) -> list[dict]:
    """One run per value under OUT/<key>-<value>; results table + plot in OUT."""
    key, values = parse_sweep(spec)
    if same := [o for o in overrides if parse_override(o)[0] == key.split(".")]:
        raise UserError(f"--sweep {spec!r}: {same[0]} would be replaced by each swept value; drop it")
    base = load_config(cls, config, overrides)
    root = Path(base.train.out)
    ins = [*base.data.train, *(base.data.eval or [])]  # the table and plot replace only our own earlier ones
    claim_outputs([root / "sweep.json", root / "sweep.md", root / "sweep.png"], ins, "train.out")
    # every value's config is checked before the first run (a bad last value used to stop the sweep after hours)
    cfgs = [load_config(cls, config, [*overrides, f"{key}={v}", f"train.out={root / f'{key}-{v}'}"]) for v in values]
    rows = []
    for v, cfg in zip(values, cfgs):
        summary = finished_summary(cfg)
        if summary is None:
            summary = run(cfg)
        elif os.environ.get("RANK", "0") == "0":
            print(f"note: --sweep {key}={v}: {cfg.train.out} finished under this config; its summary is read back")
        # held-out metrics when there is an eval set, else the last train step's (train_* are means over the run's
        # steps, early ones from a policy still near the reference); the row says which
        held_out = any(f"eval_{c}" in summary for c in COLUMNS)
        row = {key: float(v), **{c: summary.get(f"{'eval' if held_out else 'last_train'}_{c}") for c in COLUMNS}}
        rows.append({**row, "source": "eval" if held_out else "train_last_step"})
    if os.environ.get("RANK", "0") != "0":  # under torchrun every process runs the sweep; the first writes it
        return rows
    atomic_write_text(root / "sweep.json", json.dumps(rows, indent=2))
    sources = {r["source"]: SOURCES[r["source"]] for r in rows}
    note = "".join(f"Metrics of the {what}.\n\n" for what in sources.values())
    header = f"| {key} | " + " | ".join(COLUMNS) + " |\n|" + "---|" * (len(COLUMNS) + 1) + "\n"
    body = "".join(f"| {r[key]:g} | " + " | ".join(_cell(r[c]) for c in COLUMNS) + " |\n" for r in rows)
    atomic_write_text(root / "sweep.md", note + header + body)
    plot(rows, key, root / "sweep.png")
    return rows


def finished_summary(cfg: Any) -> dict | None:
    """The logged summary of a value's run that finished (final/ and a finished `done` record) under this very config,
    else None (run it: it trains, resumes, or refuses a changed config as any run does). A sweep run again after an
    interruption refused at its first finished value ('nothing would be trained')."""
    out = Path(cfg.train.out)
    saved = out / CONFIG_FILE
    if cfg.train.resume != "auto" or not ((out / "final").is_dir() and saved.is_file()):
        return None
    # the LoRA keys as the recipes record them (dropout off under train.disable_dropout, a continued adapter's shape)
    lora = lora_continued(lora_as_trained(cfg.lora, getattr(cfg.train, "disable_dropout", False)))
    if config_changes(saved.read_text(encoding="utf-8"), dump_config(cfg.model_copy(update={"lora": lora}))):
        return None
    done = read_metrics(out, "done")
    return done[-1] if done and done[-1].get("finished") else None


def plot(rows: list[dict], key: str, path: Path) -> None:
    plt = pyplot()

    xs = [r[key] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for ax, col in zip(axes, PLOTTED):
        pts = [(x, r[col]) for x, r in zip(xs, rows) if r[col] is not None]
        ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o")
        ax.set_xscale("log" if min(xs) > 0 and max(xs) / min(xs) >= 10 else "linear")
        ys = [y for _, y in pts]
        if ys and min(ys) > 0 and max(ys) / min(ys) >= 100:  # KL spans orders of magnitude across β
            ax.set_yscale("log")
        ax.set_xlabel(key)
        ax.set_title(col)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
