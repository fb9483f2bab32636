"""Anti-"repeater" data: keep long, novel multi-turn dialogues; build DPO pairs whose rejected turn
copies an earlier assistant turn or echoes the user's question.

    weitiao data repeat-negatives dialogues.jsonl --out runs/repeat/pairs.jsonl --sft-out runs/repeat/long.jsonl
    weitiao data repeat-negatives weitiao/demo/data/style.jsonl --stitch-turns 6 --out runs/repeat/pairs.jsonl

Steps: 1. load (or, for single-turn data such as the demo, stitch turns from different rows into
long dialogues: incoherent, but novel, so only for trying the pipeline) → 2. measure each dialogue
(assistant turns, mean copy-of-history rate, distinct-2 of its replies, n-gram loops) → 3. keep the
long novel ones → 4. per kept dialogue pick turns k ≥ 2 and pair prompt = history up to user turn k,
chosen = the real reply, rejected = an earlier assistant reply (copy) or the user's question (echo)
→ 5. write pairs, the kept dialogues as SFT rows, and a report (metrics of all vs kept, chosen vs rejected).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from statistics import mean

from weitiao.data.formats import Conversation, data_files, load_conversations
from weitiao.data.tools import to_record
from weitiao.dataeng.similarity import normalize
from weitiao.errors import UserError
from weitiao.eval.repetition import copy_of_history_rate, distinct_n, ngram_loop
from weitiao.io import atomic_write_text, claim_outputs, write_jsonl


@dataclass
class RepeatConfig:
    """Selection thresholds and pair construction."""

    min_turns: int = 4  # assistant turns a dialogue needs to count as long
    max_copy: float = 0.2  # highest mean copy-of-history rate of its assistant turns
    min_distinct2: float = 0.6  # lowest distinct-2 over its assistant turns
    copy_n: int = 4  # character n-gram size for copy-of-history (chat replies are short)
    pairs_per_dialog: int = 2
    echo_share: float = 0.5  # share of pairs whose rejected reply echoes the user (the rest copy a turn)
    stitch_turns: int = 0  # > 0: build dialogues of this many turns from single-turn rows
    seed: int = 0


def stitch(convs: list[Conversation], turns: int, seed: int) -> tuple[list[Conversation], int, dict[str, int]]:
    """Chain the last user/assistant exchange of shuffled rows into dialogues of `turns` exchanges each; also the
    number of rows left out (the rest of the division, which make no whole dialogue) and what the stitched rows lost:
    their earlier exchanges and system prompts (a dialogue of rows with different system prompts has none that
    fits, and a row's history would sit mid-dialogue), both said in the report."""
    rows = [c for c in convs if len(c.messages) >= 2]
    random.Random(seed).shuffle(rows)
    out, used = [], rows[: len(rows) // turns * turns]
    for i in range(0, len(used), turns):
        msgs = [m for c in used[i : i + turns] for m in c.messages[-2:]]
        out.append(Conversation(msgs, f"stitched:{i // turns}"))
    earlier = [sum(m["role"] == "assistant" for m in c.messages[:-2]) for c in used]
    lost = {"earlier_exchanges": sum(earlier), "rows_with_history": sum(n > 0 for n in earlier),
            "system_prompts": sum(any(m["role"] == "system" for m in c.messages) for c in used)}  # fmt: skip
    return out, len(convs) - len(used), lost


def measure(c: Conversation, copy_n: int) -> dict:
    """Assistant turns, mean copy-of-history rate (turns after the first), distinct-2, any n-gram loop."""
    replies = [(i, m["content"]) for i, m in enumerate(c.messages) if m["role"] == "assistant"]
    copies = [
        copy_of_history_rate(text, [m["content"] for m in c.messages[:i] if m["role"] != "system"], n=copy_n)
        for i, text in replies[1:]
    ]
    return {
        "turns": len(replies),
        "copy": mean(copies) if copies else 0.0,
        "distinct2": distinct_n([t for _, t in replies], 2),
        "loop": any(ngram_loop(t) for _, t in replies),
    }


def make_pairs(c: Conversation, cfg: RepeatConfig, rng: random.Random) -> list[dict]:
    """Up to pairs_per_dialog pairs at assistant turns that have an earlier assistant turn; a turn marked
    `weight: 0` (context, not to be trained) is never the chosen reply."""
    idx = [i for i, m in enumerate(c.messages) if m["role"] == "assistant"]
    spots = [i for i in idx[1:] if c.messages[i].get("weight", 1) != 0]
    out = []
    for k in sorted(rng.sample(spots, min(cfg.pairs_per_dialog, len(spots)))):
        chosen, question = c.messages[k]["content"], c.messages[k - 1]["content"]
        earlier = [c.messages[i]["content"] for i in idx if i < k]
        kind = "echo_user" if rng.random() < cfg.echo_share else "copy_turn"
        rejected = question if kind == "echo_user" else rng.choice(earlier)
        if normalize(rejected) == normalize(chosen):  # would teach nothing (and the loader rejects it)
            continue
        out.append({"prompt": c.messages[:k], "chosen": chosen, "rejected": rejected,
                    "meta": {"kind": kind, "source": c.source, "turn": idx.index(k) + 1}})  # fmt: skip
    return out


def _stats(ms: list[dict]) -> dict:
    if not ms:
        return {"dialogues": 0}
    return {
        "dialogues": len(ms),
        "mean_turns": round(mean(m["turns"] for m in ms), 2),
        "mean_copy_rate": round(mean(m["copy"] for m in ms), 4),
        "mean_distinct2": round(mean(m["distinct2"] for m in ms), 4),
        "loop_share": round(mean(m["loop"] for m in ms), 4),
    }


def run(files: list[str | Path], out: str | Path, cfg: RepeatConfig, sft_out: str | Path | None = None) -> dict:
    """Write DPO pairs to `out` (and kept dialogues to `sft_out`); returns the report (also `<out>.report.json`)."""
    for name, value, ok in [
        ("--min-turns", cfg.min_turns, cfg.min_turns >= 2),  # a pair needs an earlier assistant turn to copy
        ("--max-copy", cfg.max_copy, 0 <= cfg.max_copy <= 1),
        ("--min-distinct2", cfg.min_distinct2, 0 <= cfg.min_distinct2 <= 1),
        ("--pairs-per-dialog", cfg.pairs_per_dialog, cfg.pairs_per_dialog >= 1),
        ("--echo-share", cfg.echo_share, 0 <= cfg.echo_share <= 1),
        ("--stitch-turns", cfg.stitch_turns, cfg.stitch_turns == 0 or cfg.stitch_turns >= 2),
    ]:
        if not ok:
            raise UserError(f"{name} {value}: out of range (min-turns ≥ 2; max-copy, min-distinct2, echo-share in "
                            "[0, 1]; pairs-per-dialog ≥ 1; stitch-turns 0 or ≥ 2)")  # fmt: skip
    outs = [out, f"{out}.report.json"] + ([sft_out] if sft_out else [])
    if len({Path(o).resolve() for o in outs}) < len(outs):  # the SFT rows would replace the pairs, or the report
        raise UserError(f"--sft-out {sft_out}: the same file as --out or its report; choose another path")
    ins = data_files([str(f) for f in files])
    claim_outputs(outs[:2], ins)
    claim_outputs(outs[2:], ins, "--sft-out")  # a refusal names the flag that set the path
    # 1. load (or stitch)
    convs = load_conversations([str(f) for f in files], skip_hint=None).rows
    for c in convs:  # a pair's prompt is rendered without tools, and a tool-call turn has no text to prefer
        if c.tools or any(m["role"] in ("tool", "function") or m.get("tool_calls") for m in c.messages):
            raise UserError(f"{c.source}: a tool-call dialogue; repeat-negatives builds preference pairs, which "
                            "carry no tools or tool calls; leave such rows out")  # fmt: skip
    rows, left_over, lost = len(convs), 0, None
    if cfg.stitch_turns > 0:
        convs, left_over, lost = stitch(convs, cfg.stitch_turns, cfg.seed)
    if not convs:
        raise UserError(f"{', '.join(map(str, files))}: no dialogues")
    # 2. measure; 3. select
    ms = [measure(c, cfg.copy_n) for c in convs]
    ok = [
        m["turns"] >= cfg.min_turns and m["copy"] <= cfg.max_copy and m["distinct2"] >= cfg.min_distinct2
        and not m["loop"] for m in ms
    ]  # fmt: skip
    kept = [c for c, good in zip(convs, ok) if good]
    if not kept:
        longest = max(m["turns"] for m in ms)
        # what set each dialogue aside: a message naming only the turns sent long-enough dialogues to --min-turns
        why = {"fewer turns (--min-turns)": sum(m["turns"] < cfg.min_turns for m in ms),
               "copy rate over --max-copy": sum(m["copy"] > cfg.max_copy for m in ms),
               "distinct-2 under --min-distinct2": sum(m["distinct2"] < cfg.min_distinct2 for m in ms),
               "a loop": sum(bool(m["loop"]) for m in ms)}  # fmt: skip
        counts = ", ".join(f"{n} {k}" for k, n in why.items() if n)
        raise UserError(
            f"no dialogue has ≥ {cfg.min_turns} assistant turns with copy rate ≤ {cfg.max_copy} and distinct-2 ≥ "
            f"{cfg.min_distinct2} (longest has {longest} turns; of {len(ms)}: {counts}); relax that option, or "
            "--stitch-turns N for single-turn data"
        )
    # 4. pairs
    rng = random.Random(cfg.seed)
    pairs = [p for c in kept for p in make_pairs(c, cfg, rng)]
    if not pairs:
        raise UserError(f"{len(kept)} dialogues kept but no pair made: every assistant turn after the first is "
                        "weight 0 or repeats the text it would be paired with")  # fmt: skip

    def copy_rate(p: dict, key: str) -> float:
        return copy_of_history_rate(p[key], [m["content"] for m in p["prompt"] if m["role"] != "system"], cfg.copy_n)

    # 5. write
    write_jsonl(out, pairs)
    if sft_out:
        write_jsonl(sft_out, [{**to_record(c), "meta": {"source": c.source}} for c in kept])
    report = {
        "rows": rows,  # as loaded; with --stitch-turns, `stitch_left_over` of them made no whole dialogue
        "stitch_left_over": left_over,
        "stitch_dropped": lost,  # with --stitch-turns: the stitched rows' earlier exchanges and system prompts
        "read": len(convs),
        "all": _stats(ms),
        "long": sum(m["turns"] >= cfg.min_turns for m in ms),
        "kept": _stats([m for m, good in zip(ms, ok) if good]),
        "pairs": len(pairs),
        "pairs_by_kind": {k: sum(p["meta"]["kind"] == k for p in pairs) for k in ("copy_turn", "echo_user")},
        "chosen_copy_rate": round(mean(copy_rate(p, "chosen") for p in pairs), 4) if pairs else None,
        "rejected_copy_rate": round(mean(copy_rate(p, "rejected") for p in pairs), 4) if pairs else None,
        "out": str(out),
        "sft_out": str(sft_out) if sft_out else None,
    }
    atomic_write_text(f"{out}.report.json", json.dumps(report, ensure_ascii=False, indent=2))
    return report
