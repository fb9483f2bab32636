"""PPO vs DPO on the same prompts and data budget (chapter Q154): time per phase, peak memory, models held.

    .venv/bin/python benchmarks/ppo_vs_dpo.py                 # demo model, 64 samples each, ~3–6 min on 2 cores
    .venv/bin/python benchmarks/ppo_vs_dpo.py --samples 128 --json ppo_dpo.json

1. A reward model is trained on the demo pairs (weitiao rm), in its own process.
2. DPO trains on `--samples` pairs from weitiao/demo/data/prefs.jsonl; PPO generates `--samples` replies
   to the prompts of the same pairs and learns from the reward model's scores. Both: LoRA r=8 on the demo
   model, fp32, same seed, each in its own process (peak RSS is its own).
3. Both policies (and the base) answer the held-out prompts greedily; the reward model scores the replies.
PPO's cost is split into rollout (generation), scoring (reward model + old log-probs + values), reference
and update; DPO's is one training phase (its reference is the adapter-disabled forward inside each step).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from harness import run_child, spawn

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "weitiao/demo/data"
COMMON = ["model.path=demo", "lora.r=8", "lora.alpha=16", "lora.dropout=0", "train.progress=false"]
COMMON += ["train.tensorboard=false", "train.resume=none"]


def child_rm(a, root: Path) -> dict:
    from weitiao.config import load_config
    from weitiao.recipes import rm

    over = COMMON + [f"data.train=[{DATA / 'prefs.jsonl'}]", f"train.out={root / 'rm'}", "train.max_steps=40"]
    over += ["train.micro_batch_size=8", "train.lr=1e-3", f"train.seed={a.seed}", "data.max_len=256"]
    t0 = time.perf_counter()
    rm.run(load_config(rm.RMConfig, None, over))
    return {"train_s": time.perf_counter() - t0}


def child_dpo(a, root: Path) -> dict:
    from weitiao.config import load_config
    from weitiao.recipes import dpo

    steps = a.samples // 8
    over = COMMON + [f"data.train=[{DATA / 'prefs.jsonl'}]", f"train.out={root / 'dpo'}", f"train.max_steps={steps}"]
    over += ["train.micro_batch_size=8", "train.lr=5e-4", "dpo.beta=0.1", f"train.seed={a.seed}"]
    over += ["data.max_len=256", "data.packing=false"]  # exactly 8 pairs per step: the same sample budget
    t0 = time.perf_counter()
    dpo.run(load_config(dpo.DPOConfig, None, over))
    return {"train_s": time.perf_counter() - t0, "samples": steps * 8, "models_held": "1 base + 1 adapter"}


def child_ppo(a, root: Path) -> dict:
    from weitiao.config import load_config
    from weitiao.recipes import ppo

    steps = a.samples // 16
    over = COMMON + [f"data.prompts=[{DATA / 'prefs.jsonl'}]", f"train.out={root / 'ppo'}", f"train.max_steps={steps}"]
    over += ["reward.kind=model", f"reward.path={root / 'rm'}", "ppo.rollout_batch_size=16", "ppo.max_epochs=2"]
    over += ["ppo.generate_max_len=32", "ppo.actor_learning_rate=5e-4", "ppo.critic_learning_rate=5e-4"]
    over += ["ppo.init_kl_coef=0.1", f"train.seed={a.seed}"]
    t0 = time.perf_counter()
    s = ppo.run(load_config(ppo.PPOConfig, None, over))
    c = s["cost"]
    held = ", ".join(f"{k}: {v}" for k, v in c["models_held"].items())
    phases = {k: c[k] for k in ("rollout_s", "reference_s", "update_s")}
    phases["scoring_s"] = c["reward_s"] + c["logprobs_s"] + c["values_s"]
    return {"train_s": time.perf_counter() - t0, **phases, "samples": c["samples"], "models_held": held}


def child_eval(a, root: Path) -> dict:
    from peft import PeftModel

    from weitiao.data.formats import load_rows
    from weitiao.data.templates import resolve_template
    from weitiao.infer.generate import generate
    from weitiao.models.load import ModelSpec, load_model, load_tokenizer
    from weitiao.recipes.rewards import model_scorer

    score, _ = model_scorer(str(root / "rm"))
    tok = load_tokenizer("demo")
    template = resolve_template(tok, "auto")
    prompts = [p.prompt for p in load_rows(DATA / "prefs_heldout.jsonl").rows]
    out = {}
    for name in ("base", "dpo", "ppo"):
        m = load_model(ModelSpec(path="demo"))
        if name != "base":
            m = PeftModel.from_pretrained(m, root / name / "final" / "adapter")
        replies = [g.text for g in generate(m, tok, template, prompts, max_new_tokens=32)]
        s = score(prompts, replies)
        out[f"rm_score_{name}"] = sum(s) / len(s)
        out[f"len_{name}"] = sum(map(len, replies)) / len(replies)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--samples", type=int, default=64, help="DPO pairs trained on = PPO replies generated")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--json", default=None)
    p.add_argument("--child", default=None)
    p.add_argument("--root", default=None)
    a = p.parse_args()
    if run_child(a, {"rm": child_rm, "dpo": child_dpo, "ppo": child_ppo, "eval": child_eval}):
        return
    root = Path(tempfile.mkdtemp(prefix="ppo_dpo_"))
    res = {fw: spawn(__file__, fw, root) for fw in ("rm", "dpo", "ppo", "eval")}
    d, q, e = res["dpo"], res["ppo"], res["eval"]
    rows = [
        ("samples (pairs / replies)", d["samples"], q["samples"]),
        ("train wall s", d["train_s"], q["train_s"]),
        ("  rollout s", "-", q["rollout_s"]),
        ("  scoring s (RM, old logp, V)", "-", q["scoring_s"]),
        ("  reference s", "in step", q["reference_s"]),
        ("  update s", d["train_s"], q["update_s"]),
        ("samples / s", d["samples"] / d["train_s"], q["samples"] / q["train_s"]),
        ("peak RSS MB", d["rss_mb"], q["rss_mb"]),
        ("models held", d["models_held"], q["models_held"] + " + reward model"),
        ("held-out RM score (base {:.3f})".format(e["rm_score_base"]), e["rm_score_dpo"], e["rm_score_ppo"]),
        ("held-out reply length (base {:.1f})".format(e["len_base"]), e["len_dpo"], e["len_ppo"]),
    ]
    print(f"\nPPO vs DPO on the demo model ({res['dpo']['load']})")
    print(f"{'':<38} | {'DPO':>18} | {'PPO':>18}")
    for name, x, y in rows:
        fmt = lambda v: f"{v:>18.4g}" if isinstance(v, float | int) else f"{v:>18}"  # noqa: E731
        print(f"{name:<38} | {fmt(x)} | {fmt(y)}")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))
    print(f"ratio PPO/DPO wall time: {q['train_s'] / d['train_s']:.2f}×; peak RSS {q['rss_mb'] / d['rss_mb']:.2f}×")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
