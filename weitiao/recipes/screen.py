"""`weitiao safety injection train-screen`: a learned prompt-injection screen, trained by the RM recipe.

    weitiao safety injection build --out runs/inj --heldout-families roleplay,indirect
    weitiao safety injection train-screen runs/inj --model demo --out runs/inj-screen
    weitiao serve --screen my_screen.yaml          # my_screen.yaml: {classifier: runs/inj-screen}

Steps (the data, threshold and metrics live in weitiao.safety.screen_learned):
1. split the built attacks by family, benign prompts by set → 2. benign-vs-attack preference pairs →
3. `weitiao.recipes.rm.run` (LoRA + score head) → 4. threshold on the training texts (Youden's J) →
5. detection / false positives on held-out families and benign sets: rules, classifier, both.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from weitiao.io import atomic_write_text, write_jsonl
from weitiao.safety import screen_learned as SL

console = Console()


def run(
    data: Path,
    model: str,
    out: Path,
    heldout_families: list[str] | None = None,
    steps: int = 60,
    lr: float = 1e-3,
    overrides: list[str] = (),
    seed: int = 0,
) -> dict[str, Any]:
    """Train the classifier under `out` (rm/ + screen.json); return the held-out report (also screen_report.json)."""
    from weitiao.config import load_config
    from weitiao.recipes import rm
    from weitiao.safety.screen import Screen

    # 1-2. data, split by family; pairs for the reward-model recipe
    split = SL.split_data(data, heldout_families)
    pairs_file = out / "pairs.jsonl"
    write_jsonl(pairs_file, SL.pairs(split, seed))
    # 3. train with the reward-model recipe
    cfg = load_config(
        rm.RMConfig,
        None,
        [
            f"model.path={model}",
            f"data.train=[{pairs_file}]",
            f"train.out={out / 'rm'}",
            f"train.max_steps={steps}",
            f"train.lr={lr}",
            f"train.seed={seed}",
            "train.warmup_ratio=0",
            *overrides,
        ],
    )
    rm.run(cfg)
    # 4. threshold on the training texts
    SL.save_meta(out, "rm", 0.0, split)
    clf = SL.Classifier(out)
    attack_s = clf.scores([SL.user_text(a.messages) for a in split.train_attacks])
    benign_s = clf.scores([t for ts in split.train_benign.values() for t in ts])
    clf.threshold = SL.youden_threshold(attack_s, benign_s)
    SL.save_meta(out, "rm", clf.threshold, split)
    # 5. held-out comparison
    report = SL.evaluate(split, Screen(), clf)
    atomic_write_text(out / "screen_report.json", json.dumps(report, ensure_ascii=False, indent=2))
    return report


def report_table(rep: dict[str, Any]) -> Table:
    """One row per held-out family / benign set; detection or false-positive rate per screen."""
    t = Table(title=f"injection screen on held-out data (classifier threshold {rep['threshold']:.3f})")
    for c in ("set", "n", "rules", "classifier", "both"):
        t.add_column(c, justify="left" if c == "set" else "right")
    for kind, label in (("detection", "attacks"), ("false_positive", "benign")):
        for name, v in rep["rules"][kind].items():
            cells = [f"{rep[s][kind][name]['rate']:.3f}" for s in ("rules", "classifier", "both")]
            t.add_row(f"{label}: {name}", str(v["n"]), *cells, style="bold" if name == "overall" else None)
    return t


def train_screen(
    data: Path = typer.Argument(..., help="the --out folder of `weitiao safety injection build`"),
    model: str = typer.Option("demo", help="base model for the classifier (HF dir, hub id or 'demo')"),
    out: Path = typer.Option(Path("runs/inj-screen"), help="output folder: rm/ (the classifier), screen.json, report"),
    heldout_families: str = typer.Option(
        None, help="families never trained on, e.g. roleplay,indirect [the build's heldout_attacks.jsonl]"
    ),
    steps: int = typer.Option(60, min=1, help="reward-model optimizer steps"),
    lr: float = typer.Option(1e-3, help="learning rate"),
    seed: int = typer.Option(0),
    overrides: list[str] = typer.Argument(None, help="reward-model config overrides, e.g. lora.r=8 data.max_len=512"),
) -> None:
    """Train a classifier screen with the reward-model recipe; compare it with the rules on held-out families."""
    fams = [x.strip() for x in (heldout_families or "").split(",") if x.strip()] or None
    rep = run(data, model, out, fams, steps, lr, overrides or [], seed)
    console.print(report_table(rep))
    console.print(f"train families {', '.join(rep['train_families'])} · held-out {', '.join(rep['heldout_families'])}")
    console.print(f"wrote {out / 'screen_report.json'}; serve it with a screen YAML `classifier: {out}`")
