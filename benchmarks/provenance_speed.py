"""Speed of the provenance scorer vs a plain forward over the same tokens (target: ≤ 15% overhead).

    .venv/bin/python benchmarks/provenance_speed.py                  # demo model, CPU, ~1 min
    .venv/bin/python benchmarks/provenance_speed.py --random 1024,8,32000 --tokens 1024   # random Llama
    .venv/bin/python benchmarks/provenance_speed.py --model DIR --device cuda --tokens 8192

The demo model is the worst case for the overhead: 5.8 M parameters for a 4,096-token vocabulary,
so the vocabulary-wide statistics weigh much more than beside a real LLM (7 B params / 152 k vocab).
`--random H,L,V[,S]` builds a random Llama (hidden H, L layers, vocab V) in memory for a realistic ratio,
its output head scaled by S (default 30) so next-token distributions are peaked like a trained model's:
a random init is near-uniform, its top-p nucleus spans most of the vocabulary and forces a full sort.
The mean nucleus size at T=0.7, top-p=0.9 is printed, since the cost depends on it.

The text is the demo pretraining replies joined and cut to `--tokens` tokens after one chat prompt, scored in
sliding windows (`--window`, default the model's max positions; stride = half the room).
Three timings over exactly the same windows:
  plain     model(input_ids).logits for each window: what a perplexity script runs
  plain-k   the same forward, keeping only the logits of the newly scored tokens (logits_to_keep)
  scorer    `score_tokens` (forward with logits_to_keep + every per-token statistic at T=0.7, top-p=0.9)
Sampling, greedy decoding and baselines are not included. The three alternate `--repeat` times and the
best (fastest) run of each is reported: other processes on a shared machine only ever slow a run down.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from weitiao.data.templates import resolve_template
from weitiao.demo import DATA_DIR
from weitiao.eval.provenance import Sampling, encode, max_positions, score_tokens, tempered_support
from weitiao.models.load import ModelSpec, load_model, load_tokenizer


def windows(n_ctx: int, n: int, window: int) -> list[tuple[int, int, int]]:
    """(start, done, end) of each window, the same schedule as `score_tokens` with its default stride."""
    room = window - n_ctx
    stride, out, done = max(1, room // 2), [], 0
    while done < n:
        end = min(n, done + (room if done == 0 else stride))
        out.append((max(0, end - room), done, end))
        done = end
    return out


@torch.no_grad()
def plain(model, ctx: list[int], ids: list[int], window: int, keep: bool, device) -> None:
    for start, done, end in windows(len(ctx), len(ids), window):
        x = torch.tensor([ctx + ids[start:end]], device=device)
        kw = {"logits_to_keep": end - done + 1} if keep else {}
        model(input_ids=x, use_cache=False, **kw).logits.float()


def random_llama(hidden: int, layers: int, vocab: int, sharp: float = 30.0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=hidden * 8 // 3,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        num_key_value_heads=max(1, hidden // 256),
        max_position_embeddings=512,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        model.lm_head.weight.mul_(sharp)
    return model


def timed(fn, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="demo")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--window", type=int, default=None)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--random", default=None, help="H,L,V: random Llama instead of --model")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    tok = load_tokenizer("demo" if a.model == "demo" else a.model)
    if a.random:
        model = random_llama(*map(int, a.random.split(","))).to(device).eval()
    else:
        model = load_model(ModelSpec(path=a.model), device=device).eval()
    tpl = resolve_template(tok)
    lines = (DATA_DIR / "pretrain.jsonl").read_text(encoding="utf-8").splitlines()[:2000]
    corpus = "\n".join(json.loads(x)["messages"][-1]["content"] for x in lines)
    enc = encode(tok, tpl, [{"role": "user", "content": "写一段话"}], corpus[: a.tokens * 8])
    ids = enc.text_ids[: a.tokens]
    window = a.window or max_positions(model)
    s = Sampling(0.7, 0.9)
    runs = {
        "plain": lambda: plain(model, enc.context_ids, ids, window, False, device),
        "plain-k": lambda: plain(model, enc.context_ids, ids, window, True, device),
        "scorer": lambda: score_tokens(model, enc.context_ids, ids, s, window),
    }
    for fn in runs.values():  # warm-up
        fn()
    best = {k: float("inf") for k in runs}
    for _ in range(a.repeat):
        for k, fn in runs.items():
            best[k] = min(best[k], timed(fn, device))
    n = len(ids)
    with torch.no_grad():
        x = torch.tensor([enc.context_ids + ids[: window - len(enc.context_ids)]], device=device)
        nucleus = tempered_support(model(input_ids=x).logits[0, len(enc.context_ids) :], s)[1].sum(-1)
    res = {
        "device": str(device) + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else ""),
        "threads": torch.get_num_threads(),
        "model_params_M": sum(p.numel() for p in model.parameters()) / 1e6,
        "vocab": model.config.vocab_size,
        "tokens": n,
        "window": window,
        "n_windows": len(windows(len(enc.context_ids), n, window)),
        "mean_nucleus_tokens": float(nucleus.float().mean()),
        **{f"{k}_tok_per_s": n / v for k, v in best.items()},
        "overhead_vs_plain_pct": 100 * (best["scorer"] / best["plain"] - 1),
        "overhead_vs_plain_k_pct": 100 * (best["scorer"] / best["plain-k"] - 1),
        "repeat": a.repeat,
        "load_avg_1min": os.getloadavg()[0],
    }
    for k, v in res.items():
        print(f"{k:<26} {v:.4g}" if isinstance(v, float) else f"{k:<26} {v}")
    return res


if __name__ == "__main__":
    main()
