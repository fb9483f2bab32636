"""Build the demo preference pairs from the demo SFT data (deterministic, no model needed).

    .venv/bin/python scripts/build_demo_prefs.py

chosen  = the concise WeChat-style reply or the polite refusal written for the prompt;
rejected = a formal, verbose assistant reply (drawn from the base model's pretraining corpus),
which for red-line prompts means answering instead of refusing. Train pairs come from
style.jsonl + safety.jsonl, held-out pairs from the held-out files (no prompt shared).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "weitiao" / "demo" / "data"


def read(name: str) -> list[dict]:
    return [json.loads(x) for x in (DATA / name).read_text(encoding="utf-8").splitlines() if x.strip()]


def prompt_reply(row: dict) -> tuple[str, str]:
    if "messages" in row:
        return row["messages"][0]["content"], row["messages"][-1]["content"]
    return row["instruction"], row["output"]


def pairs(rows: list[dict], formal: list[str], rng: random.Random) -> list[dict]:
    out = []
    for row in rows:
        prompt, good = prompt_reply(row)
        out.append({"prompt": prompt, "chosen": good, "rejected": rng.choice(formal)})
    return out


def write(name: str, rows: list[dict]) -> None:
    tmp = DATA / f".{name}.tmp"
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    tmp.replace(DATA / name)


def main() -> None:
    rng = random.Random(2026)
    formal = [r["messages"][-1]["content"] for r in read("pretrain.jsonl")]
    style, safety = read("style.jsonl"), read("safety.jsonl")
    train = pairs(rng.sample(style, 400), formal, rng) + pairs(safety, formal, rng)
    rng.shuffle(train)
    heldout = pairs(read("heldout_style.jsonl"), formal, rng) + pairs(read("heldout_redline.jsonl"), formal, rng)
    assert not {p["prompt"] for p in train} & {p["prompt"] for p in heldout}
    write("prefs.jsonl", train)
    write("prefs_heldout.jsonl", heldout)
    print(f"prefs.jsonl: {len(train)} pairs · prefs_heldout.jsonl: {len(heldout)} pairs")


if __name__ == "__main__":
    main()
