"""Chapter Q147, measured: a model fine-tuned without the end-of-turn token does not learn to stop.

    .venv/bin/python experiments/eos_stop.py            # ~5 min on 2 CPU cores

Two LoRA SFT runs of the demo model on the WeChat-style data, identical except `data.train_eot`:
with it the loss covers `<|im_end|>` after every reply; without it that token is masked, which is
what a template missing `</s>` amounts to. Both answer the 40 held-out chat prompts greedily
(max 64 new tokens); we report the stop rate and the mean reply length.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from peft import PeftModel

from weitiao.config import load_config
from weitiao.data.formats import load_conversations
from weitiao.data.templates import resolve_template
from weitiao.demo import DATA_DIR
from weitiao.eval.style import style_metrics
from weitiao.infer.generate import generate
from weitiao.models.load import ModelSpec, load_model, load_tokenizer
from weitiao.recipes import sft


def main(out: Path = Path("runs/eos_stop")) -> dict:
    tok = load_tokenizer("demo")
    prompts = [c.prompt_messages for c in load_conversations(DATA_DIR / "heldout_style.jsonl").rows]
    results = {}
    for train_eot in (True, False):
        run = out / f"train_eot={train_eot}"
        cfg = load_config(
            sft.SFTConfig,
            None,
            [
                f"data.train=[{DATA_DIR / 'style.jsonl'}]",
                f"train.out={run}",
                f"data.train_eot={train_eot}",
                "data.max_len=128",
                "train.lr=3e-3",
                "train.epochs=4",
                "train.progress=false",
                "train.resume=none",
            ],
        )
        sft.run(cfg)
        model = PeftModel.from_pretrained(load_model(ModelSpec(path="demo")), run / "final" / "adapter")
        gens = generate(model, tok, resolve_template(tok), prompts, max_new_tokens=64)
        results[f"train_eot={train_eot}"] = {
            **style_metrics([g.text for g in gens], [g.stopped for g in gens]),
            "samples": [g.text for g in gens[:3]],
        }
    (out / "results.json").write_text(json.dumps(results, ensure_ascii=False, indent=2), encoding="utf-8")
    for k, v in results.items():
        print(f"{k}: stop rate {v['stop_rate']:.2f} · mean length {v['mean_len']:.1f} chars · e.g. {v['samples'][0]!r}")
    return results


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("runs/eos_stop"))
