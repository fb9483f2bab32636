"""The demo: QLoRA SFT of the shipped tiny Chinese model on WeChat-style + safety data.

    weitiao demo            # or: make demo

1. measure the base model on held-out chat and red-line prompts → 2. QLoRA SFT (NF4 + double
quantization, LoRA r=16 alpha=32) → 3. measure again → 4. print and save the before/after table.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from weitiao.config import load_config
from weitiao.data.formats import load_conversations
from weitiao.data.templates import resolve_template
from weitiao.eval.style import style_metrics
from weitiao.infer.generate import generate
from weitiao.io import atomic_write_text
from weitiao.models.load import ModelSpec, load_model, load_tokenizer
from weitiao.recipes import sft

EXAMPLE = Path(__file__).resolve().parents[1] / "demo" / "sft.yaml"  # in the wheel; twin of examples/demo_sft.yaml


def measure(model: Any, tokenizer: Any, sets: dict[str, list], max_new_tokens: int) -> dict[str, dict]:
    template = resolve_template(tokenizer, "auto")
    out = {}
    for name, convs in sets.items():
        gens = generate(model, tokenizer, template, [c.prompt_messages for c in convs], max_new_tokens=max_new_tokens)
        out[name] = {
            "metrics": style_metrics([g.text for g in gens], [g.stopped for g in gens]),
            "samples": [{"prompt": c.messages[-2]["content"], "reply": g.text} for c, g in zip(convs, gens)],
        }
    return out


def run(config: str | None = None, overrides: list[str] | None = None, max_new_tokens: int = 48) -> dict:
    from peft import PeftModel

    from weitiao.demo import DATA_DIR

    console = Console()
    # Data paths point at the installed package, so the demo runs from any directory.
    paths = [
        f"data.train=[{DATA_DIR / 'style.jsonl'},{DATA_DIR / 'safety.jsonl'}]",
        f"data.eval=[{DATA_DIR / 'heldout_style.jsonl'}]",
    ]
    if config is None:  # the example's own train.out is next to the example; the demo writes under the cwd
        paths.append("train.out=runs/demo")
    cfg = load_config(sft.SFTConfig, config or EXAMPLE, paths + list(overrides or []))
    tokenizer = load_tokenizer(cfg.model.path)
    sets = {
        "chat": load_conversations(DATA_DIR / "heldout_style.jsonl").rows,
        "redline": load_conversations(DATA_DIR / "heldout_redline.jsonl").rows,
    }
    console.print("[bold]1/3[/] base model on held-out prompts")
    base = load_model(ModelSpec(path=cfg.model.path))
    before = measure(base, tokenizer, sets, max_new_tokens)
    del base
    console.print(f"[bold]2/3[/] QLoRA SFT ({cfg.model.quant}, r={cfg.lora.r}) → {cfg.train.out}")
    summary = sft.run(cfg)
    console.print("[bold]3/3[/] fine-tuned model on the same prompts")
    tuned = PeftModel.from_pretrained(load_model(cfg.model), Path(cfg.train.out) / "final" / "adapter")
    after = measure(tuned, tokenizer, sets, max_new_tokens)
    report = {"before": before, "after": after, "train": summary}
    atomic_write_text(Path(cfg.train.out) / "demo_report.json", json.dumps(report, ensure_ascii=False, indent=2))
    console.print(_table(before, after))
    for s_before, s_after in (
        list(zip(before["chat"]["samples"], after["chat"]["samples"]))[:3]
        + list(zip(before["redline"]["samples"], after["redline"]["samples"]))[:2]
    ):
        console.print(
            f"[cyan]问[/] {s_before['prompt']}\n  [dim]前[/] {s_before['reply']}\n  [green]后[/] {s_after['reply']}"
        )
    console.print(f"report: {Path(cfg.train.out) / 'demo_report.json'}")
    return report


def _table(before: dict, after: dict) -> Table:
    table = Table(title="weitiao demo: before → after QLoRA SFT")
    for col in ("set", "metric", "before", "after"):
        table.add_column(col)
    rows = [
        ("chat", "mean_len"),
        ("chat", "emoji_rate"),
        ("chat", "stop_rate"),
        ("chat", "refusal_rate"),
        ("redline", "refusal_rate"),
        ("redline", "stop_rate"),
    ]
    for s, m in rows:
        b, a = before[s]["metrics"][m], after[s]["metrics"][m]
        table.add_row(s, m, f"{b:.2f}", f"{a:.2f}")
    return table
