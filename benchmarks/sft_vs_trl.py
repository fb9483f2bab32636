"""weitiao SFT vs TRL SFTTrainer: same model, data, LoRA, optimizer and steps; a table of ratios.

    .venv/bin/python benchmarks/sft_vs_trl.py          # 30 steps × 4 packed rows of 1024 tokens, ~2 min
    .venv/bin/python benchmarks/sft_vs_trl.py --layout batch --quant 4bit --repeat 2 --json bench.json

Builds once into a temp dir: a byte-level BPE tokenizer with ChatML, a random tiny Llama/Qwen2 and a
seeded synthetic chat set (OpenAI messages JSONL, rendered lengths 16–1024 tokens). Each framework
then trains in its own subprocess (peak RSS per framework) with LoRA r=16 α=32 dropout 0 on all
linear layers, AdamW at a constant lr, loss on assistant replies + <|im_end|> only, fp32, sdpa.
weitiao packs first-fit into rows of max_len (position_ids restart per conversation → block-diagonal
attention). TRL uses packing_strategy="bfd", which forces padding_free (a micro-batch's rows are
flattened into one sequence; sdpa gets the block-diagonal mask from position_ids), and
assistant_only_loss through a ChatML template with {% generation %} marks. --layout accum (default):
both run 1 packed row per micro-batch, --batch micro-batches per step (equal attention work);
--layout batch: --batch rows per micro-batch (TRL then attends over one --batch × max_len sequence).
Throughput is timed the same way for both: wall clock from the end of step --warmup to the end of
the last step, over the tokens of those steps (end-of-step timestamps: weitiao's metrics.jsonl,
a TRL on_step_end callback). The machine's other load skews timings: --repeat alternates runs.
`--frameworks weitiao@REV,weitiao,trl` adds weitiao as of git revision REV (before/after, same run).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from harness import REPO, print_table, run_all, run_child, spawn

CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# Renders exactly like CHATML; marks reply + <|im_end|> (the span weitiao trains on) for TRL's assistant mask.
CHATML_GEN = (
    "{% for m in messages %}{% if m['role'] == 'assistant' %}{{ '<|im_start|>assistant\\n' }}"
    "{% generation %}{{ m['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}"
    "{% else %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
ZH = (
    "的一是不了人我在有他这中大来上个们到说时地也子就道要出会可那你对生能而着下过天去好都和还没小心多"
    "今气怎么样挺晴玩周末安排家躺呢推荐部电影吧流浪球错哦做番茄炒蛋先再最后起翻加点盐啦吃饭喝茶学习工作"
)
EN = "hello world model token data train loss step batch pack chat reply python 2024 ok thanks 😂 👍".split()


def words(rng: random.Random, n: int) -> list[str]:
    out = []
    for _ in range(n):
        out.append(rng.choice(EN) + " " if rng.random() < 0.2 else "".join(rng.choices(ZH, k=rng.randint(1, 4))))
    return out


def build_tokenizer(vocab: int, seed: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    rng = random.Random(seed)
    corpus = ["".join(words(rng, 64)) for _ in range(2000)] + ["user assistant system"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=specials, initial_alphabet=alphabet)
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", additional_special_tokens=specials[1:]
    )
    fast.chat_template = CHATML
    return fast


def synth_conversation(tok, rng: random.Random, target: int) -> tuple[list[dict], int]:
    """Messages whose rendered length is the largest ≤ target (word counts found by bisection)."""
    roles = (["system"] if rng.random() < 0.3 else []) + ["user", "assistant"] * rng.choice([1, 1, 1, 2, 3])
    pools = [words(rng, 700) for _ in roles]
    shares = [rng.uniform(0.2, 1.0) * (2.5 if r == "assistant" else 1.0) for r in roles]

    def make(total: int) -> tuple[list[dict], int]:
        ks = [max(1, round(total * s / sum(shares))) for s in shares]
        msgs = [{"role": r, "content": "".join(p[:k]).strip() or "好"} for r, p, k in zip(roles, pools, ks)]
        return msgs, len(tok.apply_chat_template(msgs, tokenize=True, return_dict=False))

    lo, hi = 1, 700
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if make(mid)[1] <= target else (lo, mid - 1)
    return make(lo)


def build(a, root: Path) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    tok = build_tokenizer(a.vocab, a.seed)
    torch.manual_seed(a.seed)
    kw = dict(
        vocab_size=len(tok),
        hidden_size=a.hidden,
        intermediate_size=a.hidden * 3,
        num_hidden_layers=a.layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=a.max_len,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    cls, conf = (LlamaForCausalLM, LlamaConfig) if a.arch == "llama" else (Qwen2ForCausalLM, Qwen2Config)
    model = cls(conf(**kw))
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    rng, rows, total = random.Random(a.seed), [], 0
    need = 1.3 * a.steps * a.batch * a.max_len  # > one pass of max_steps for both: no epoch wrap
    while total < need:
        msgs, n = synth_conversation(tok, rng, rng.randint(16, a.max_len))
        rows.append({"messages": msgs})
        total += n
    (root / "train.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    return {"conversations": len(rows), "tokens": total, "vocab": len(tok), "params": model.num_parameters()}


def child_weitiao(a, root: Path) -> dict:
    from weitiao.config import load_config
    from weitiao.data.collate import n_targets
    from weitiao.recipes import sft
    from weitiao.train.log import MetricsLog

    rec = {"targets": [], "tokens": [], "data_targets": 0, "times": [], "cpu": [], "losses": []}
    collate, prepare, log = sft.collate, sft.prepare_data, MetricsLog.log

    def clocked_log(self, kind, step, **values):  # "data" is logged just before step 1, "train" after each step
        log(self, kind, step, **values)
        if kind in ("data", "train"):
            rec["times"].append(time.time())
            rec["cpu"].append(time.process_time())
            rec["losses"] += [values["loss"]] if kind == "train" else []

    def counting_collate(examples, rows, *args, **kw):  # measurement only: real and trained tokens per micro-batch
        b = collate(examples, rows, *args, **kw)
        rec["tokens"].append(sum(len(examples[i]) for row in rows for i in row))
        rec["targets"].append(b.n_target_tokens)
        return b

    def counting_prepare(*args, **kw):
        d = prepare(*args, **kw)
        rec["data_targets"] = sum(n_targets(e) for e in d.train)
        return d

    sft.collate, sft.prepare_data, MetricsLog.log = counting_collate, counting_prepare, clocked_log
    out = Path(tempfile.mkdtemp(prefix="weitiao_out_", dir=root))  # fresh per run: metrics.jsonl appends
    over = [f"model.path={root / 'model'}", f"data.train=[{root / 'train.jsonl'}]", f"train.out={out}"]
    k = a.batch if a.layout == "accum" else 1  # micro-batches per optimizer step
    over += [f"train.max_steps={a.steps}", f"train.micro_batch_size={a.batch // k}", f"train.grad_accum={k}"]
    over += ["train.resume=none", "train.progress=false", "train.tensorboard=false", "data.packing=true"]
    over += [f"train.lr={a.lr}", "train.warmup_ratio=0", "train.scheduler=constant", f"data.max_len={a.max_len}"]
    over += ["lora.r=16", "lora.alpha=32", "lora.dropout=0", "lora.targets=all-linear", f"train.seed={a.seed}"]
    over += [f"model.quant={a.quant}"]
    sft.run(load_config(sft.SFTConfig, None, over))
    n = len(rec["losses"])
    return rec | {
        "start": rec["times"].pop(0),
        "cpu_start": rec["cpu"].pop(0),
        "tokens": [sum(rec["tokens"][i * k : (i + 1) * k]) for i in range(n)],
        "targets": [sum(rec["targets"][i * k : (i + 1) * k]) for i in range(n)],
        "packing": f"first-fit rows of max_len, {a.batch // k} row(s) per micro-batch × grad_accum {k}",
    }


def child_trl(a, root: Path) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    tok = AutoTokenizer.from_pretrained(root / "model")
    tok.chat_template = CHATML_GEN
    lines = (root / "train.jsonl").read_text("utf-8").splitlines()
    ds = Dataset.from_list([json.loads(x) for x in lines])
    kw = {"dtype": torch.float32, "attn_implementation": "sdpa"}
    if a.quant == "4bit":  # the same NF4 + double-quant config weitiao builds (fp32 compute on CPU)
        kw["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.float32,
        )
    model = AutoModelForCausalLM.from_pretrained(root / "model", **kw)
    accum = a.layout == "accum"
    rec = {"times": [], "cpu": [], "tokens": [], "targets": [], "losses": [], "start": None}
    pad, acc = tok.pad_token_id, [0, 0]

    class Timer(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            rec["start"], rec["cpu_start"] = time.time(), time.process_time()

        def on_step_end(self, args, state, control, **kw):
            rec["times"].append(time.time())
            rec["cpu"].append(time.process_time())
            rec["tokens"].append(acc[0])
            rec["targets"].append(acc[1])
            acc[:] = [0, 0]

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                rec["losses"].append(float(logs["loss"]))

    class Counting(SFTTrainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            acc[0] += int((inputs["input_ids"] != pad).sum())
            acc[1] += int((inputs["labels"][:, 1:] != -100).sum())
            return super().training_step(model, inputs, num_items_in_batch)

    args = SFTConfig(
        output_dir=(out := tempfile.mkdtemp(prefix="trl_out_", dir=root)),
        max_steps=a.steps,
        per_device_train_batch_size=1 if accum else a.batch,
        gradient_accumulation_steps=a.batch if accum else 1,
        learning_rate=a.lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        bf16=False,
        fp16=False,
        use_cpu=True,
        gradient_checkpointing=False,
        packing=True,
        packing_strategy="bfd",
        padding_free=True,
        max_length=a.max_len,
        assistant_only_loss=True,
        seed=a.seed,
    )
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    tr = Counting(model=model, args=args, train_dataset=ds, processing_class=tok, peft_config=lora, callbacks=[Timer()])
    data_targets = sum(sum(x != -100 for x in lab[1:]) for lab in tr.train_dataset["labels"])
    tr.train()
    tr.save_model(f"{out}/final")  # weitiao always writes its adapter; so does this run
    how = f"1 row per micro-batch × grad_accum {a.batch}" if accum else f"{a.batch} rows flattened into 1 sequence"
    rec |= {"data_targets": int(data_targets), "packing": f"bfd + padding_free, {how}"}
    return rec


def checkout(rev: str, root: Path) -> str:
    """`git archive` of this repository at `rev`, unpacked under root: a `weitiao@rev` framework imports it."""
    dest = root / f"src_{rev.replace('/', '_')}"
    dest.mkdir()
    tar = subprocess.run(["git", "-C", str(REPO), "archive", rev], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=tar, check=True)
    return str(dest)


def summarize(r: dict, warmup: int) -> dict:
    n, w = len(r["times"]), min(warmup, len(r["times"]) - 1)
    dt = r["times"][-1] - r["times"][w - 1] if w > 0 else r["times"][-1] - r["start"]
    cpu = r["cpu"][-1] - (r["cpu"][w - 1] if w > 0 else r["cpu_start"])
    ends = [r["start"]] + r["times"]
    steps = sorted(b - c for b, c in zip(ends[w + 1 :], ends[w:]))
    tail = r["losses"][-5:]
    return {
        "target tok/s": sum(r["targets"][w:]) / dt,
        "total tok/s": sum(r["tokens"][w:]) / dt,
        "s/step (timed mean)": dt / (n - w),
        "s/step (timed median)": steps[len(steps) // 2],
        "CPU s/step (timed)": cpu / (n - w),
        "train loop s (all steps)": r["times"][-1] - r["start"],
        "end-to-end wall s": r["wall"],
        "peak RSS MB": r["rss_mb"],
        "tokens/step": sum(r["tokens"]) / n,
        "target tokens/step": sum(r["targets"]) / n,
        "loss step 1": r["losses"][0],
        "final loss (last 5)": sum(tail) / len(tail),
        "data set target tokens": r["data_targets"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=30, help="optimizer steps")
    ap.add_argument("--batch", type=int, default=4, help="packed rows of max_len per step")
    ap.add_argument("--max-len", type=int, default=1024)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=4096, help="BPE vocab size to train")
    ap.add_argument("--arch", choices=["llama", "qwen2"], default="llama")
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--warmup", type=int, default=2, help="steps left out of the timed window")
    ap.add_argument("--quant", choices=["none", "4bit"], default="none")
    ap.add_argument(
        "--frameworks",
        default="weitiao,trl",
        help="comma list; weitiao@REV runs weitiao from a git archive of this repository at REV (before/after)",
    )
    ap.add_argument(
        "--layout",
        choices=["accum", "batch"],
        default="accum",
        help="accum: both take 1 packed row per micro-batch and accumulate --batch of them per step; batch: "
        "micro-batch = --batch rows (weitiao micro_batch_size, TRL per_device_train_batch_size; TRL's padding_free "
        "then flattens them into one sequence of --batch × max_len)",
    )
    ap.add_argument("--threads", type=int, default=0, help="torch threads per child (0 = torch default)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per framework (alternating); the fastest is shown")
    ap.add_argument("--json", help="write all results here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--root", help=argparse.SUPPRESS)
    a = ap.parse_args()
    fws = [f.strip() for f in a.frameworks.split(",") if f.strip()]
    if run_child(a, {"weitiao": child_weitiao, "trl": child_trl} | {fw: child_weitiao for fw in fws if "@" in fw}):
        return
    with tempfile.TemporaryDirectory(prefix="weitiao_bench_") as tmp:
        root = Path(tmp)
        info = build(a, root)
        print(f"built: {info}  (steps={a.steps} batch={a.batch}×{a.max_len} quant={a.quant})", flush=True)
        envs = {fw: {"PYTHONPATH": checkout(fw.split("@", 1)[1], root)} for fw in fws if "@" in fw}
        runs = run_all(fws, a.repeat, lambda fw: spawn(__file__, fw, root, env=envs.get(fw)))
    key = "s/step (timed median)"
    raw = {fw: min(rs, key=lambda r: summarize(r, a.warmup)[key]) for fw, rs in runs.items()}
    res = {fw: summarize(r, a.warmup) for fw, r in raw.items()}
    print_table(res, fws, f"timed window: steps {a.warmup + 1}..{a.steps}; ratio = weitiao / TRL")
    for fw in fws:
        print(f"{fw}: {raw[fw]['packing']}; {raw[fw]['load']}")
        if a.repeat > 1:
            tps = ", ".join(f"{summarize(r, a.warmup)['target tok/s']:.0f}" for r in runs[fw])
            print(f"  target tok/s of each run: {tps} (table: the run with the lowest median step time)")
    if "trl" in fws and a.repeat > 1:  # the measure: median over the alternating repeats
        med = {fw: statistics.median(summarize(r, a.warmup)["target tok/s"] for r in runs[fw]) for fw in fws}
        rss = {fw: max(r["rss_mb"] for r in runs[fw]) for fw in fws}
        print(f"\nmedian target tok/s of {a.repeat} repeats (ratio to TRL), highest peak RSS MB:")
        for fw in fws:
            print(f"  {fw:<22} {med[fw]:>8.0f} ({med[fw] / med['trl']:.2f}×)  {rss[fw]:>6.0f} MB")
    if a.json:
        Path(a.json).write_text(json.dumps({"args": vars(a), "data": info, "summary": res, "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
