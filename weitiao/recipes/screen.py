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

from weitiao.io import atomic_write_text, write_jsonl
from weitiao.safety import screen_learned as SL


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
