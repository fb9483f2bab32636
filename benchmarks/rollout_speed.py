"""PPO-style rollouts: HF `model.generate` on left-padded batches (what PPO's rollouts ran before #24) vs
the shared generation loop (`weitiao.infer.generate.generate_ids`, continuous batching), same process.

    .venv/bin/python benchmarks/rollout_speed.py                     # demo model + a LoRA, 16 prompts, 32 tokens
    .venv/bin/python benchmarks/rollout_speed.py --batches 8,16 --threads 0

The demo model gets a fresh LoRA (all linear layers, B drawn small so it changes the replies), as PPO's
actor. For each batch size: greedy and temperature-1 rollouts of the first `--prompts` demo style
prompts, best of `--repeats`; prints seconds, tokens, the speedup and whether greedy replies are equal
(they must be: the same left padding and position ids), and the load average (a shared machine).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model

from weitiao.data.templates import resolve_template
from weitiao.infer.generate import generate_ids
from weitiao.models.load import ModelSpec, load_model, load_tokenizer

STYLE = Path(__file__).resolve().parents[1] / "weitiao/demo/data/style.jsonl"


def hf_rollouts(model, tok, template, convs, max_new: int, temperature: float, batch: int) -> list[list[int]]:
    """PPO's rollouts before: one HF generate per batch, left-padded, cut after the first end of turn."""
    eot = tok.convert_tokens_to_ids(template.eot)
    out = []
    for k in range(0, len(convs), batch):
        ids = [
            tok(template.render(tok, c, add_generation_prompt=True), add_special_tokens=False)["input_ids"]
            for c in convs[k : k + batch]
        ]
        width = max(map(len, ids))
        x = torch.tensor([[tok.pad_token_id] * (width - len(i)) + i for i in ids])
        mask = torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i in ids])
        kw = {"temperature": temperature, "top_k": 0, "top_p": 1.0} if temperature else {}
        with torch.no_grad():
            gen = model.generate(
                input_ids=x, attention_mask=mask, max_new_tokens=max_new, eos_token_id=eot,
                pad_token_id=tok.pad_token_id, do_sample=bool(temperature), **kw,
            )[:, width:].tolist()  # fmt: skip
        out += [r[: r.index(eot) + 1] if eot in r else r for r in gen]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--batches", default="8,16")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0 = torch default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tok = load_tokenizer("demo")
    template = resolve_template(tok, "auto")
    lora = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear")
    model = get_peft_model(load_model(ModelSpec(path="demo")), lora)
    torch.manual_seed(0)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.02)
    model.eval()
    rows = [json.loads(line) for line in STYLE.read_text(encoding="utf-8").splitlines()[: args.prompts]]
    convs = [[{"role": "user", "content": r["instruction"]}] for r in rows]
    load0 = os.getloadavg()
    for batch in (int(b) for b in args.batches.split(",")):
        for temperature in (0.0, 1.0):
            timed = {}
            for name in ("hf", "loop"):
                best = float("inf")
                for _ in range(args.repeats):
                    torch.manual_seed(1)
                    t0 = time.perf_counter()
                    if name == "hf":
                        got = hf_rollouts(model, tok, template, convs, args.max_new_tokens, temperature, batch)
                    else:
                        got = generate_ids(
                            model, tok, template, convs, args.max_new_tokens, temperature, top_p=1.0, top_k=0,
                            batch_size=batch, model_defaults=False,
                        )  # fmt: skip
                        got = [s.response_ids for s in got]
                    best = min(best, time.perf_counter() - t0)
                timed[name] = (best, got)
            (hf_s, hf), (loop_s, loop) = timed["hf"], timed["loop"]
            same = f"  greedy equal: {hf == loop}" if temperature == 0 else ""
            print(
                f"batch {batch:>2} T={temperature}: HF generate {hf_s:6.2f} s ({sum(map(len, hf))} tok)  "
                f"loop {loop_s:6.2f} s ({sum(map(len, loop))} tok)  {hf_s / loop_s:.2f}x{same}",
                flush=True,
            )
    print(f"load average (1, 5, 15 min) before {load0}, after {os.getloadavg()} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
