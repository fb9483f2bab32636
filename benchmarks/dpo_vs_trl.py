"""weitiao DPO vs TRL DPOTrainer: same model, pairs, LoRA, β, optimizer and steps; pairs/s, peak RSS, loss curves.

    .venv/bin/python benchmarks/dpo_vs_trl.py                   # 20 steps × 8 pairs on the demo model, ~1–2 min
    .venv/bin/python benchmarks/dpo_vs_trl.py --batches own --repeat 2 --json dpo_bench.json

Both train the shipped demo model (weitiao/demo/model: Llama, hidden 256, 6 layers, vocab 4096) on the
shipped pairs (weitiao/demo/data/prefs.jsonl), each in its own subprocess: LoRA r=16 α=32 dropout 0 on
all linear layers, reference = the same model with the adapter disabled (TRL does this itself for a
peft_config with ref_model=None), sigmoid DPO at β, AdamW at a constant lr, clip 1.0, fp32, sdpa, same
seed. Both score the same tokens (reply + <|im_end|>): TRL gets the ChatML-rendered prompt and replies
ending in <|im_end|> (tests/test_dpo_trl_parity.py checks the ids). TRL runs --batch pairs per step as
2 × batch padded rows. weitiao packs them padding-free into --rows rows: with --batches same (default)
exactly TRL's batches (TRL's epoch order for a seed is weitiao's pair permutation for that seed: both
torch.randperm on a generator seeded with it), so the loss curves must agree to float noise; with
--batches own, weitiao's first-fit plan, data.max_len picked so steps average --batch pairs.
Timing is the same for both: wall clock from the end of step --warmup to the end of the last step
(weitiao: its per-step metrics log; TRL: an on_step_end callback) over the pairs of those steps.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from harness import print_table, run_all, run_child, spawn

REPO = Path(__file__).resolve().parents[1]
MODEL, PAIRS = REPO / "weitiao/demo/model", REPO / "weitiao/demo/data/prefs.jsonl"


def weitiao_overrides(a, max_len: int, out: Path) -> list[str]:
    over = [f"model.path={MODEL}", f"data.train=[{PAIRS}]", f"train.out={out}", f"train.max_steps={a.steps}"]
    over += [f"train.micro_batch_size={a.rows}", f"data.max_len={max_len}", "data.packing=true", f"train.seed={a.seed}"]
    over += [f"train.lr={a.lr}", "train.warmup_ratio=0", "train.scheduler=constant", "train.resume=none"]
    over += [f"dpo.beta={a.beta}", "dpo.loss_type=sigmoid", "train.progress=false", "train.tensorboard=false"]
    return over + ["lora.r=16", "lora.alpha=32", "lora.dropout=0", "lora.targets=all-linear"]


def same_batches(n_pairs: int, batch: int, rows: int) -> list[list[list[int]]]:
    """TRL's batches in weitiao's pair order: consecutive groups of `batch` pairs, each split into `rows` rows."""
    cut = [batch * r // rows for r in range(rows + 1)]
    return [
        [list(range(k + cut[r], k + cut[r + 1])) for r in range(rows)] for k in range(0, n_pairs - batch + 1, batch)
    ]


def plan(a, root: Path) -> dict:
    """weitiao's pairs per step and data.max_len: for --batches own, the max_len whose plan averages --batch pairs."""
    from weitiao.config import load_config
    from weitiao.data.collate import n_targets, plan_epoch
    from weitiao.models.load import load_tokenizer
    from weitiao.recipes import dpo

    cfg = load_config(dpo.DPOConfig, None, weitiao_overrides(a, 1024, root / "plan"))
    data = dpo.prepare_pairs(cfg, load_tokenizer(str(MODEL)))
    lens = [len(data.train[2 * i]) + len(data.train[2 * i + 1]) for i in range(len(data.train) // 2)]

    def per_step(max_len: int) -> list[int]:
        own = a.batches == "own"
        mbs = plan_epoch(lens, seed=a.seed, epoch=0, micro_batch_size=a.rows, packing=True, capacity=2 * max_len)
        return [sum(len(row) for row in mb) for mb in (mbs if own else same_batches(len(lens), a.batch, a.rows))]

    longest = max(len(e) for e in data.train)  # nothing is dropped
    best = a.max_len or (512 if a.batches == "same" else longest)
    if a.batches == "own" and not a.max_len:
        best = min(range(longest, 1025), key=lambda n: (abs(statistics.mean(per_step(n)[: a.steps]) - a.batch), n))
    steps = per_step(best)
    if len(steps) < a.steps:
        sys.exit(f"weitiao's first epoch has only {len(steps)} steps; lower --steps or --batch")
    targets = sum(n_targets(e) for e in data.train)
    return {"max_len": best, "planned_pairs": steps[: a.steps], "pairs": len(lens), "data_targets": targets}


def child_weitiao(a, root: Path) -> dict:
    from weitiao.config import load_config
    from weitiao.recipes import dpo
    from weitiao.train.log import MetricsLog

    rec = {k: [] for k in ("times", "cpu", "losses", "acc", "margins", "pairs", "tokens", "padded", "targets")}
    collate, log = dpo.collate, MetricsLog.log

    def clocked_log(self, kind, step, **v):  # "data" is logged just before step 1, "train" right after each step
        log(self, kind, step, **v)
        if kind in ("data", "train"):
            rec["times"].append(time.time())
            rec["cpu"].append(time.process_time())
        if kind == "train":
            rec["losses"].append(v["loss"])
            rec["acc"].append(v["accuracy"])
            rec["margins"].append(v["margins"])

    def counting_collate(examples, rows, *args, **kw):  # measurement only; 1 micro-batch per step here
        b = collate(examples, rows, *args, **kw)
        rec["pairs"].append(sum(len(r) for r in rows) // 2)
        rec["tokens"].append(sum(len(examples[i]) for r in rows for i in r))
        rec["padded"].append(b.input_ids.numel())
        rec["targets"].append(b.n_target_tokens)
        return b

    dpo.collate, MetricsLog.log = counting_collate, clocked_log
    if a.batches == "same":  # replace weitiao's first-fit plan by TRL's batches; data order is the same permutation
        import weitiao.train.loop as loop

        def fixed_plan(lengths, *, seed, epoch, micro_batch_size, packing, capacity):
            assert epoch == 0, "--batches same covers one epoch"
            return same_batches(len(lengths), a.batch, a.rows)

        loop.plan_epoch = fixed_plan
    out = Path(tempfile.mkdtemp(prefix="weitiao_out_", dir=root))
    dpo.run(load_config(dpo.DPOConfig, None, weitiao_overrides(a, a.max_len, out)))
    rec["start"], rec["cpu_start"] = rec["times"].pop(0), rec["cpu"].pop(0)
    how = f"TRL's batches, {a.batch} pairs" if a.batches == "same" else f"own first-fit plan, ≤{2 * a.max_len} tokens"
    return rec | {"layout": f"{a.rows} packed rows per step ({how}; data.max_len={a.max_len})"}


def child_trl(a, root: Path) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    tok = AutoTokenizer.from_pretrained(MODEL)
    eot = tok.eos_token  # <|im_end|>: ends every assistant turn in the ChatML template
    rows = [json.loads(x) for x in PAIRS.read_text("utf-8").splitlines() if x.strip()]

    def render(r: dict) -> dict:  # the prompt as weitiao renders it; replies closed like the template closes them
        msgs = [{"role": "user", "content": r["prompt"]}]
        prompt = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        return {"prompt": prompt, "chosen": r["chosen"] + eot, "rejected": r["rejected"] + eot}

    ds = Dataset.from_list([render(r) for r in rows])
    model = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32, attn_implementation="sdpa")
    rec = {k: [] for k in ("times", "cpu", "losses", "acc", "margins", "pairs", "tokens", "padded", "targets")}

    class Timer(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            rec["start"], rec["cpu_start"] = time.time(), time.process_time()

        def on_step_end(self, args, state, control, **kw):
            rec["times"].append(time.time())
            rec["cpu"].append(time.process_time())

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                rec["losses"].append(float(logs["loss"]))
                rec["acc"].append(float(logs["rewards/accuracies"]))
                rec["margins"].append(float(logs["rewards/margins"]))

    class Counting(DPOTrainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            rec["pairs"].append(inputs["input_ids"].shape[0] // 2)
            rec["tokens"].append(int(inputs["attention_mask"].sum()))
            rec["padded"].append(inputs["input_ids"].numel())
            rec["targets"].append(int(inputs["completion_mask"][:, 1:].sum()))
            return super().training_step(model, inputs, num_items_in_batch)

    kw = dict(max_steps=a.steps, per_device_train_batch_size=a.batch, gradient_accumulation_steps=1, seed=a.seed)
    kw |= dict(learning_rate=a.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0)
    kw |= dict(beta=a.beta, loss_type=["sigmoid"], max_length=None, logging_steps=1, save_strategy="no")
    kw |= dict(report_to="none", disable_tqdm=True, bf16=False, fp16=False, use_cpu=True, gradient_checkpointing=False)
    args = DPOConfig(output_dir=(out := tempfile.mkdtemp(prefix="trl_out_", dir=root)), dataloader_num_workers=0, **kw)
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    tr = Counting(model=model, args=args, train_dataset=ds, processing_class=tok, peft_config=lora, callbacks=[Timer()])
    data_targets = sum(len(r["chosen_ids"]) + len(r["rejected_ids"]) for r in tr.train_dataset)
    tr.train()
    tr.save_model(f"{out}/final")  # weitiao always writes its adapter; so does this run
    return rec | {"data_targets": data_targets, "layout": f"{a.batch} pairs = {2 * a.batch} padded rows per step"}


def summarize(r: dict, warmup: int) -> dict:
    n, w = len(r["times"]), min(warmup, len(r["times"]) - 1)
    t0, c0 = (r["times"][w - 1], r["cpu"][w - 1]) if w > 0 else (r["start"], r["cpu_start"])
    dt, cpu = r["times"][-1] - t0, r["cpu"][-1] - c0
    ends = [r["start"]] + r["times"]
    steps = sorted(b - c for b, c in zip(ends[w + 1 :], ends[w:]))
    last = slice(-3, None)
    return {
        "pairs/s": sum(r["pairs"][w:]) / dt,
        "real tok/s": sum(r["tokens"][w:]) / dt,
        "s/step (timed median)": steps[len(steps) // 2],
        "CPU s/step (timed)": cpu / (n - w),
        "train loop s (all steps)": r["times"][-1] - r["start"],
        "end-to-end wall s": r["wall"],
        "peak RSS MB": r["rss_mb"],
        "pairs/step": sum(r["pairs"]) / n,
        "real tokens/step": sum(r["tokens"]) / n,
        "padded tokens/step": sum(r["padded"]) / n,
        "target tokens/step": sum(r["targets"]) / n,
        "loss step 1": r["losses"][0],
        "final loss (last 3)": statistics.mean(r["losses"][last]),
        "accuracy (last 3)": statistics.mean(r["acc"][last]),
        "margins (last 3)": statistics.mean(r["margins"][last]),
        "data set target tokens": r["data_targets"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=20, help="optimizer steps")
    ap.add_argument("--batch", type=int, default=8, help="pairs per step (weitiao: on average, see --rows)")
    ap.add_argument(
        "--batches",
        choices=["same", "own"],
        default="same",
        help="same: weitiao trains on TRL's batches; own: weitiao's first-fit packing plan, data.max_len "
        "picked so steps average --batch pairs",
    )
    ap.add_argument("--rows", type=int, default=2, help="weitiao packed rows per step (micro_batch_size)")
    ap.add_argument("--max-len", type=int, default=0, help="weitiao data.max_len; 0 = 512 (same) or auto (own)")
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--warmup", type=int, default=2, help="steps left out of the timed window")
    ap.add_argument("--frameworks", default="weitiao,trl")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per child (0 = torch default)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per framework (alternating); the fastest is shown")
    ap.add_argument("--curve", type=int, default=20, help="loss-curve steps to print")
    ap.add_argument("--json", help="write all results here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--root", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if run_child(a, {"weitiao": child_weitiao, "trl": child_trl}):
        return
    fws = [f.strip() for f in a.frameworks.split(",") if f.strip()]
    with tempfile.TemporaryDirectory(prefix="weitiao_dpo_bench_") as tmp:
        root = Path(tmp)
        p = plan(a, root)
        a.max_len = p["max_len"]
        print(f"{p['pairs']} pairs; weitiao: --batches {a.batches}, data.max_len={a.max_len}, {a.rows} rows/step")
        extra = ["--max-len", str(a.max_len)]
        runs = run_all(fws, a.repeat, lambda fw: spawn(__file__, fw, root, extra))
        runs["weitiao"] = [r | {"data_targets": p["data_targets"]} for r in runs.get("weitiao", [])]
    raw = {fw: min(rs, key=lambda r: summarize(r, a.warmup)["s/step (timed median)"]) for fw, rs in runs.items()}
    res = {fw: summarize(r, a.warmup) for fw, r in raw.items()}
    two = len(fws) == 2
    print_table(res, fws, f"timed window: steps {a.warmup + 1}..{a.steps}; ratio = {fws[0]} / {fws[-1]}")
    for fw in fws:
        print(f"{fw}: {raw[fw]['layout']}; {raw[fw]['load']}")
        if a.repeat > 1:
            each = ", ".join(f"{summarize(r, a.warmup)['pairs/s']:.2f}" for r in runs[fw])
            print(f"  pairs/s of each run: {each} (table: the run with the lowest median step time)")
    print("\nloss curve (pairs in that step)")
    print(f"{'step':>4} | " + " | ".join(f"{fw + ' loss':>18}" for fw in fws) + (f" | {'ratio':>6}" if two else ""))
    for s in range(min(a.curve, a.steps)):
        ls = [raw[fw]["losses"][s] for fw in fws]
        cells = " | ".join(f"{v:>12.4f} ({raw[fw]['pairs'][s]:>2})" for fw, v in zip(fws, ls))
        print(f"{s + 1:>4} | {cells}" + (f" | {ls[0] / ls[1]:>6.3f}" if two else ""))
    if two:
        gap = max(abs(x - y) for x, y in zip(*(raw[fw]["losses"] for fw in fws)))
        same = all(raw[fw]["pairs"] == raw[fws[0]]["pairs"] for fw in fws)
        print(
            f"max |loss difference| over {a.steps} steps: {gap:.2e} ({'same' if same else 'different'} pairs per step)"
        )
    if a.json:
        Path(a.json).write_text(json.dumps({"args": vars(a), "plan": p, "summary": res, "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
