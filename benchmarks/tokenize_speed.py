"""Tokenization speed and memory: the per-row path (before the cache) vs the cached batch path (issues #17, #24).

    .venv/bin/python benchmarks/tokenize_speed.py                          # 100k rows: old, cold, warm (~3 min quiet)
    .venv/bin/python benchmarks/tokenize_speed.py --rows 1000000 --modes cold,warm --json 1m.json   # the RSS claim

Writes `--rows` synthetic alpaca rows (seeded; Chinese clauses of words drawn Zipf-like from the
demo pretraining text, so most clauses are new to the tokenizer's word cache; ~285 characters a
row; past 100k rows, instructions and outputs of the first 100k are recombined into new pairs) to a
temp JSONL, then runs each mode in its own subprocess, with the demo model's tokenizer and chat
template (max_len 1024, truncation drop):
  old   `load_conversations` + one `chat.encode` per row: what SFT ran before the cache
  cold  `cache.encoded_files` into an empty cache dir (rows streamed, `--num-proc` worker processes,
        Arrow shards written) + the epoch's packing plan from the lengths
  warm  the same call again (a cache hit: memory-maps the shards) + the packing plan
Each reports wall seconds, rows/s, the peak RSS of its process and of its largest worker
(`getrusage` ru_maxrss) and of it plus its workers (summed, sampled every 50 ms with psutil), and a
SHA-256 of every row's input_ids and labels, so old and new are shown to give the same tokens. The
load average before and after each mode is printed: the machine may be shared.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "weitiao" / "demo"
BASE = 100_000  # rows with their own text; more rows recombine their instructions and outputs


def synthetic_rows(n: int, path: Path, seed: int = 0) -> int:
    """n alpaca rows of Chinese clauses; returns the characters written (instruction + input + output)."""
    rng = random.Random(seed)
    text = "".join(
        m["content"]
        for line in open(DEMO / "data" / "pretrain.jsonl", encoding="utf-8")
        for m in json.loads(line)["messages"]
    )
    words = sorted(
        {
            w[k : k + rng.choice((2, 2, 3, 4))]
            for w in re.findall(r"[\u4e00-\u9fff]+", text)
            for k in range(0, len(w), 2)
        }
    )
    rng.shuffle(words)
    cum = np.cumsum(1 / np.arange(1, len(words) + 1))  # Zipf-like word frequencies
    draw = np.random.default_rng(seed)
    punct = "，，，。。！？；"

    def passage(chars: int) -> str:
        # ~3.5 characters a word: draw enough words and clause sizes at once, then cut at `chars`
        ids = np.searchsorted(cum, draw.random(chars // 2 + 8) * cum[-1])
        sizes, marks = draw.integers(2, 7, size=len(ids)), draw.integers(0, len(punct), size=len(ids))
        out, size, k, c = [], 0, 0, 0
        while size < chars and k < len(ids):
            clause = "".join(words[i] for i in ids[k : k + sizes[c]]) + punct[marks[c]]
            out.append(clause)
            size, k, c = size + len(clause), k + sizes[c], c + 1
        return "".join(out)

    # Passages for up to BASE rows; beyond that, row i pairs the instruction of row i % BASE with the
    # output of another base row, so every row is distinct and generation stays fast.
    base = min(n, BASE)
    ins = [passage(int(draw.integers(20, 91))) for _ in range(base)]
    extra = [passage(int(draw.integers(10, 41))) if j % 5 == 0 else "" for j in range(base)]
    outs = [passage(int(draw.integers(120, 301))) for _ in range(base)]
    total = 0
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            k, j = divmod(i, base)
            row = {"instruction": ins[j], "input": extra[j], "output": outs[(j + k * 7919) % base]}
            total += len(row["instruction"]) + len(row["input"]) + len(row["output"])
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return total


def digest(examples) -> str:
    h = hashlib.sha256()
    for e in examples:
        h.update(json.dumps([e.input_ids, e.labels]).encode())
    return h.hexdigest()[:16]


class TreeRSS:
    """Peak of the summed RSS of this process and its children, sampled every 50 ms (psutil)."""

    def __init__(self):
        import psutil

        self.me, self.peak, self.stop = psutil.Process(), 0, threading.Event()
        self.thread = threading.Thread(target=self.sample, daemon=True)
        self.thread.start()

    def sample(self) -> None:
        import psutil

        while not self.stop.wait(0.05):
            total = 0
            for p in [self.me, *self.me.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except psutil.Error:  # a worker that just exited
                    pass
            self.peak = max(self.peak, total)

    def close(self) -> int:
        self.stop.set()
        self.thread.join()
        return self.peak


def run_mode(mode: str, data: Path, cache_dir: Path, num_proc: int) -> dict:
    """One mode, in this process: the timed part, then (untimed) the token digest."""
    from weitiao.data import cache
    from weitiao.data.chat import EncodeOptions, EncodeStats, encode
    from weitiao.data.collate import example_lengths, plan_epoch
    from weitiao.data.formats import load_conversations
    from weitiao.data.templates import resolve_template
    from weitiao.models.load import load_tokenizer

    tok = load_tokenizer(str(DEMO / "model"))
    template, opts = resolve_template(tok), EncodeOptions(max_len=1024)
    tree = TreeRSS()
    t0 = time.perf_counter()
    if mode == "old":
        convs = load_conversations(str(data)).rows
        stats, examples = EncodeStats(rows=len(convs)), []
        for conv in convs:  # the loop `chat.encode_all` ran before the batch encoder
            enc = encode(conv, tok, template, opts)
            stats.dropped_too_long += enc is None
            if enc is not None:
                examples.append(enc)
        rows, lengths = len(convs), [len(e) for e in examples]
    else:
        read = {"fmt": "auto", "skip_invalid": False, "max_row_bytes": 10**6}
        data_set = cache.encoded_files(
            [str(data)], read, tok, template, opts, rejects_path=cache_dir / "rejects.jsonl",
            cache_dir=cache_dir, num_proc=num_proc, progress=False,
        )  # fmt: skip
        assert data_set.meta["hit"] == (mode == "warm")
        rows, examples = len(data_set), data_set.view(__import__("numpy").arange(len(data_set)))
        lengths = example_lengths(examples)
    encoded = time.perf_counter() - t0
    plan = plan_epoch(lengths, seed=42, epoch=0, micro_batch_size=4, packing=True, capacity=1024)
    seconds = time.perf_counter() - t0
    tree_peak = tree.close()
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "mode": mode,
        "rows": rows,
        "kept": len(examples),
        "encode_s": round(encoded, 2),
        "pack_s": round(seconds - encoded, 2),
        "total_s": round(seconds, 2),
        "rows_per_s": round(rows / encoded),
        "micro_batches": len(plan),
        "peak_rss_mb": round(me.ru_maxrss / 1024),
        "peak_worker_rss_mb": round(kids.ru_maxrss / 1024),  # ru_maxrss of the largest worker
        "peak_tree_rss_mb": round(tree_peak / 2**20),
        "cpu_s": round(me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime, 1),
        "tokens": digest(examples),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--modes", default="old,cold,warm")
    ap.add_argument("--num-proc", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--mode", help=argparse.SUPPRESS)  # internal: run one mode in this process
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--cache-dir", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.mode:
        print(json.dumps(run_mode(a.mode, Path(a.data), Path(a.cache_dir), a.num_proc)))
        return
    with tempfile.TemporaryDirectory(prefix="tokenize-speed-") as tmp:
        data = Path(tmp) / "alpaca.jsonl"
        t = time.time()
        chars = synthetic_rows(a.rows, data, a.seed)
        print(
            f"{a.rows:,} rows, {chars:,} characters, {data.stat().st_size / 2**20:,.0f} MiB ({time.time() - t:.0f} s)"
        )
        results = []
        for mode in a.modes.split(","):
            load = os.getloadavg()
            cmd = [sys.executable, __file__, "--mode", mode, "--data", str(data), "--cache-dir", f"{tmp}/cache"]
            out = subprocess.run([*cmd, "--num-proc", str(a.num_proc)], check=True, capture_output=True, text=True)
            r = {**json.loads(out.stdout.splitlines()[-1]), "load_before": load, "load_after": os.getloadavg()}
            results.append(r)
            print(json.dumps(r), flush=True)
    base = next((r["rows_per_s"] for r in results if r["mode"] == "old"), None)
    print(
        "\n| mode | rows/s | × old | encode s | pack s | peak RSS MB (main / main + workers) | CPU s | tokens |", end=""
    )
    print(" load 1 min |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        ratio = f"{r['rows_per_s'] / base:.1f}×" if base else "–"
        rss = f"{r['peak_rss_mb']:,} / {r['peak_tree_rss_mb']:,}"
        load = f"{r['load_before'][0]:.1f} → {r['load_after'][0]:.1f}"
        print(
            f"| {r['mode']} | {r['rows_per_s']:,} | {ratio} | {r['encode_s']} | {r['pack_s']} | {rss} | "
            f"{r['cpu_s']} | `{r['tokens']}` | {load} |"
        )
    if a.json:
        Path(a.json).write_text(json.dumps({"rows": a.rows, "chars": chars, "results": results}, indent=1))


if __name__ == "__main__":
    main()
