"""Bad-case loop on the demo (chapter Q151): planted failures fixed, general golden set held.

    .venv/bin/python experiments/badcase_loop.py [self|SAFETY_SHARE]   # needs runs/demo (make demo); ~5 min

1. The deployed model is the demo's QLoRA adapter (runs/demo). 12 planted bad cases
   (examples/demo_badcases.jsonl: wrong return-policy facts and so on) go through
   `weitiao data badcases` → SFT additions + regression eval + follow-up config. The teacher is a
   local OpenAI-compatible server answering with 3 hand-written rewordings per case
   (examples/demo_badcases_paraphrases.json): each case trains on its prompt + 2 rewordings, and its
   3rd rewording is the held-out regression set (never trained on).
2. Replay mix (`weitiao data mix`): the additions (upsampled to 25%) beside a replay of what the model
   already does — by default its own greedy replies to 400 training prompts ("self"), or the original
   style data with a given share of safety rows — so the fix does not drag the rest along.
3. Continue the adapter (`lora.init_from=runs/demo`) for a few steps.
4. Before/after, greedy: ROUGE-L vs the golden answers on the held-out rewordings and on the trained
   wordings, and on the general held-out chat set ROUGE-L vs its references plus length / emoji /
   refusal / stop rates.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from weitiao.config import load_config
from weitiao.data.formats import Conversation, load_conversations
from weitiao.data.templates import resolve_template
from weitiao.dataeng import badcases, mix
from weitiao.demo import DATA_DIR
from weitiao.eval.metrics import rouge_l
from weitiao.eval.style import style_metrics
from weitiao.infer.chat import load_chat_model
from weitiao.infer.generate import generate
from weitiao.recipes import sft
from weitiao.teacher import Teacher

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "runs" / "badcase-loop"


def measure(adapter: str, sets: dict[str, list]) -> dict[str, dict]:
    model, tok = load_chat_model("demo", adapter, quant="4bit")
    template = resolve_template(tok, "auto")
    res = {}
    for name, convs in sets.items():
        gens = generate(model, tok, template, [c.prompt_messages for c in convs], max_new_tokens=48)
        replies = [g.text for g in gens]
        rouge = sum(rouge_l(r, c.messages[-1]["content"]) for r, c in zip(replies, convs)) / len(convs)
        res[name] = {"rougeL": rouge, **style_metrics(replies, [g.stopped for g in gens])}
    return res


def self_replay(adapter: str, n: int, path: Path) -> None:
    """The deployed model's own greedy replies to n training prompts, as SFT rows (keeps its behaviour)."""
    from weitiao.io import write_jsonl

    convs = load_conversations(DATA_DIR / "style.jsonl").rows[:n]
    model, tok = load_chat_model("demo", adapter, quant="4bit")
    gens = generate(model, tok, resolve_template(tok, "auto"), [c.prompt_messages for c in convs], max_new_tokens=48)
    rows = [{"messages": c.prompt_messages + [{"role": "assistant", "content": g.text}]} for c, g in zip(convs, gens)]
    write_jsonl(path, [r for r, g in zip(rows, gens) if g.stopped and g.text.strip()])


def original_cases() -> list:
    """The planted cases as they were reported (prompt → golden): wordings the follow-up trains on."""
    rows = [json.loads(line) for line in (ROOT / "examples" / "demo_badcases.jsonl").open(encoding="utf-8")]
    msgs = [[{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["golden"]}] for r in rows]
    return [Conversation(m) for m in msgs]


def paraphrase_teacher() -> Any:
    """A local OpenAI-compatible chat server that answers a paraphrase request with the shipped rewordings."""
    import threading

    import uvicorn
    from fastapi import FastAPI

    from weitiao.dataeng.badcases import PARAPHRASE_PROMPT

    table = json.loads((ROOT / "examples" / "demo_badcases_paraphrases.json").read_text(encoding="utf-8"))
    head = PARAPHRASE_PROMPT.split("{prompt}")[0]
    app = FastAPI()

    @app.post("/v1/chat/completions")
    def chat(body: dict) -> dict:
        text = body["messages"][-1]["content"]
        prompt = text[text.index("用户提问：") + len("用户提问：") :].strip() if text.startswith(head[:6]) else ""
        reply = json.dumps(table.get(prompt, []), ensure_ascii=False)
        choice = {"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}
        return {"id": "p", "object": "chat.completion", "created": 0, "model": "paraphraser", "choices": [choice]}

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}/v1"


def main() -> None:
    # replay: "self" = the deployed model's own replies; a number = that share of safety rows beside style data
    replay = sys.argv[1] if len(sys.argv) > 1 else "self"
    deployed = ROOT / "runs" / "demo"
    if not (deployed / "final" / "adapter").exists():
        sys.exit("runs/demo/final/adapter missing: run `make demo` first")
    # 1. bad cases → additions, regression eval, follow-up config
    server, url = paraphrase_teacher()
    teacher = Teacher(url, "paraphraser", cache_dir=None)
    badcases.run(
        [ROOT / "examples" / "demo_badcases.jsonl"], OUT / "cases", teacher=teacher, n_aug=3,
        config=ROOT / "examples" / "demo_sft.yaml", resume_from=str(deployed), progress=False, sft_config=sft.SFTConfig,
    )  # fmt: skip
    server.should_exit = True
    sets = {
        "held-out wordings": load_conversations(OUT / "cases" / "regression_eval.jsonl").rows,
        "trained wordings": original_cases(),
        "general chat": load_conversations(DATA_DIR / "heldout_style.jsonl").rows,
    }
    before = measure(str(deployed), sets)
    # 2. replay mix: original data + the additions upsampled
    if replay == "self":
        self_replay(str(deployed), 400, OUT / "self_replay.jsonl")
        specs = [f"{OUT / 'self_replay.jsonl'}:0.75"]
    else:
        safety = float(replay)
        specs = [f"{DATA_DIR / 'style.jsonl'}:{0.75 - safety}"]
        specs += [f"{DATA_DIR / 'safety.jsonl'}:{safety}"] if safety > 0 else []
    specs.append(f"{OUT / 'cases' / 'sft_additions.jsonl'}:0.25")
    mix.run(specs, OUT / "mixed.jsonl", total=480, seed=0)
    # 3. continue the deployed adapter
    cfg = load_config(
        sft.SFTConfig,
        OUT / "cases" / "followup_sft.yaml",
        [f"data.train=[{OUT / 'mixed.jsonl'}]", f"train.out={OUT / 'sft'}", "train.max_steps=80"]
        + ["train.lr=3e-3", "train.eval_every=0", "train.save_every=0", "train.progress=false"],
    )
    sft.run(cfg)
    after = measure(str(OUT / "sft"), sets)
    # 4. table
    print(f"\n{'set':<14} {'metric':<12} {'before':>8} {'after':>8}")
    for name in sets:
        for k in ("rougeL", "mean_len", "emoji_rate", "refusal_rate", "stop_rate"):
            print(f"{name:<14} {k:<12} {before[name][k]:>8.3f} {after[name][k]:>8.3f}")
    report = {"replay": replay, "before": before, "after": after}
    (OUT / "report.json").write_text(json.dumps(report, ensure_ascii=False, indent=2))
    print(f"report: {OUT / 'report.json'}")


if __name__ == "__main__":
    main()
