"""Golden-set reports: answers of every checkpoint of a run to the same prompts, side by side, in one HTML file.

    weitiao eval golden --run runs/sft --prompts golden.jsonl --select rougeL     # → runs/sft/golden_report.html

Steps: 1. read the run (config.yaml, metrics.jsonl, checkpoints/step-N and final/) → 2. reuse answers already
in `RUN/golden.jsonl` (written during training by `golden_callback`) that were generated with the same settings
(`decoding`: max_new_tokens, greedy, the prompts as the run's template renders them), generate the missing ones
greedily with each checkpoint's adapter → 3. per-answer and per-checkpoint metrics (`weitiao.eval.metrics`), optional
judge → 4. recommend a checkpoint by the chosen metric and, separately, by lowest eval loss → 5. write the report
(loss curves as inline SVG, one table row per golden prompt, one column per checkpoint).

Golden prompts: any chat file (alpaca/sharegpt/openai messages; a last assistant turn becomes the reference)
or rows `{"prompt": "...", "reference": "..."}` (a DPO pair's `chosen` is its reference).
"""

from __future__ import annotations

import hashlib
import html
import json
import time
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from weitiao.config import is_step_dir
from weitiao.data.prompts import Prompt, read_prompts
from weitiao.errors import UserError
from weitiao.eval.metrics import Item, MetricSettings, item_metrics, reply_metrics
from weitiao.io import append_jsonl, atomic_write_text, claim_outputs, read_jsonl
from weitiao.progress import progress_bar
from weitiao.reports import page

GOLDEN_FILE = "golden.jsonl"
REPORT_FILE = "golden_report.html"
# metric → True when higher is better
SELECT = {
    "rougeL": True,
    "bleu": True,
    "exact_match": True,
    "judge": True,
    "distinct_2": True,
    "stop_rate": True,
    "loop_rate": False,
    "copy_rate": False,
    "eval_loss": False,
}


# ---------------------------------------------------------------------------------------------- prompts


def load_prompts(path: str | Path) -> list[Prompt]:
    """Read prompts from a chat file (data.prompts rows); a final assistant turn is the reference."""
    return read_prompts(path, tools="tool rows are not eval prompts here (generation renders no tools)")


def reference_note(prompts: Sequence[Prompt]) -> str | None:
    """How many prompts lack a reference (no ROUGE-L/BLEU/exact match for their replies); None when none do."""
    missing = sum(p.reference is None for p in prompts)
    if not missing:
        return None
    rest = "none of those metrics" if missing == len(prompts) else "ROUGE-L/BLEU/exact match over the others"
    return f"{missing} of {len(prompts)} prompts have no reference: {rest}"


def empty_note(replies: dict[str, Sequence[dict]]) -> str | None:
    """Which models (label → reply rows: reply, stopped, n_tokens) gave empty replies, and how stop_rate counts them:
    one that ended its turn is a stop (every checkpoint of a run that said nothing read stop_rate 1, the best); one
    whose tokens make no whole character (broken UTF-8 bytes, dropped) may have run to max_new_tokens instead, and
    is said apart. None when none did."""
    hits, empty = [], []
    for who, rows in replies.items():
        mine = [r for r in rows if not r["reply"].strip()]
        empty += mine
        hits += [f"{who} {len(mine)} of {len(rows)}"] if mine else []
    if not hits:
        return None
    more = f", ... ({len(hits)} in all)" if len(hits) > 4 else ""
    broken = sum(r["reply"] == "" and r.get("n_tokens", 0) > 0 for r in empty)
    stopped = sum(r.get("stopped", True) for r in empty)
    if not broken and stopped == len(empty):
        return f"empty replies ({', '.join(hits[:4])}{more}): they count as stopped in stop_rate"
    why = f"{broken} are tokens that make no whole character (broken UTF-8 bytes are dropped); " if broken else ""
    return (f"empty replies ({', '.join(hits[:4])}{more}): {why}{stopped} ended their turn and count as stopped in "
            f"stop_rate, {len(empty) - stopped} ran to max_new_tokens")  # fmt: skip


def duplicate_note(prompts: Sequence[Prompt]) -> str | None:
    """Prompts whose whole conversation repeats an earlier one's: each copy weighs in the averages. None when none."""
    first: dict[str, str] = {}
    repeats = []
    for p in prompts:
        key = json.dumps(p.messages, ensure_ascii=False, sort_keys=True)
        if key in first:
            repeats.append(f"{p.source} = {first[key]}")
        else:
            first[key] = p.source
    if not repeats:
        return None
    n = len(repeats)
    what = f"{n} prompts repeat" if n > 1 else "1 prompt repeats"
    return f"{what} an earlier one ({repeats[0]}), each counted again in the averages"


def prompts_key(prompts: Sequence[Prompt]) -> str:
    """Short hash of the prompt messages, so answers to a different golden set are never mixed in."""
    blob = json.dumps([p.messages for p in prompts], ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def check_context(
    model: Any, tok: Any, template: Any, prompts: Sequence[Prompt], max_new_tokens: int, fix: str = "--max-new-tokens"
) -> None:
    """A prompt that leaves no room for `max_new_tokens` in the model's context (`model_context`: RoPE scaling
    counted) is one line naming its file:line, not replies decoded at positions the model never had. `fix`: the
    setting that gives the budget, or what else to do."""
    from weitiao.train.loop import model_context

    ctx = model_context(getattr(model, "config", None))
    if not ctx:
        return
    for p in prompts:
        text = template.render(tok, p.messages, add_generation_prompt=True)
        n = len(tok(text, add_special_tokens=False)["input_ids"])
        if n + max_new_tokens > ctx:
            raise UserError(
                f"{p.source}: prompt is {n:,} tokens; with {max_new_tokens} new tokens it exceeds the model's context "
                f"of {ctx:,}; shorten the prompt or {fix if ' ' in fix else f'lower {fix}'}"
            )


def answer(
    model: Any, tokenizer: Any, template: Any, prompts: Sequence[Prompt], max_new_tokens: int = 128, fix: str = ""
) -> list:
    """Greedy replies (`Generation`s) to every prompt (`check_context` first; `fix` as there)."""
    from weitiao.infer.generate import generate

    check_context(model, tokenizer, template, prompts, max_new_tokens, fix or "--max-new-tokens")
    convs = [p.messages for p in prompts]
    return generate(model, tokenizer, template, convs, max_new_tokens=max_new_tokens, temperature=0.0, batch_size=8)


def decoding(tokenizer: Any, template: Any, prompts: Sequence[Prompt], max_new_tokens: int) -> dict:
    """What decides the answers besides the weights, saved with each row: the token budget, greedy decoding,
    and a hash of the prompts as the template renders them, with its end-of-turn token."""
    rendered = [template.render(tokenizer, p.messages, add_generation_prompt=True) for p in prompts]
    blob = json.dumps([template.eot, rendered], ensure_ascii=False)
    return {
        "max_new_tokens": max_new_tokens,
        "temperature": 0.0,
        "template": hashlib.sha256(blob.encode()).hexdigest()[:12],
    }


def same_decoding(row: dict, gen: dict) -> bool:
    """Whether a saved answer was generated with `gen`. A row saved without its settings (always greedy, with the
    run's template) counts only when its length proves the budget: it stopped within it, or was cut exactly at it."""
    if "gen" in row:
        return row["gen"] == gen
    n, budget = row.get("n_tokens"), gen["max_new_tokens"]
    if not isinstance(n, int):
        return False
    return n + 1 <= budget if row.get("stopped") else n == budget


def answered(rows: list[dict], prompts: Sequence[Prompt], gen: dict | None) -> dict[int, dict[int, dict]]:
    """step → prompt index → the last saved answer to these prompts generated with `gen` (None: any settings),
    for the steps that have an answer to every prompt."""
    key = prompts_key(prompts)
    by: dict[int, dict[int, dict]] = {}
    for r in rows:
        if r["prompts"] == key and (gen is None or same_decoding(r, gen)):
            by.setdefault(r["step"], {})[r["index"]] = r
    return {s: got for s, got in by.items() if len(got) == len(prompts)}


def golden_rows(
    step: int, label: str, prompts: Sequence[Prompt], gens: Sequence[Any], gen: dict | None = None
) -> list[dict]:
    """The rows golden.jsonl keeps for one checkpoint's answers; `gen` (from `decoding`) says how they were made."""
    key, now, made = prompts_key(prompts), round(time.time(), 3), {"gen": gen} if gen is not None else {}
    return [
        {"step": step, "label": label, "prompts": key, "index": i, "reply": g.text, "stopped": g.stopped,
         "n_tokens": g.n_tokens, "time": now, **made}
        for i, g in enumerate(gens)
    ]  # fmt: skip


def golden_callback(
    prompts_path: str | Path,
    every_n_steps: int,
    *,
    model: Any,
    tokenizer: Any,
    template: Any,
    run_dir: str | Path,
    max_new_tokens: int = 128,
    rank: int = 0,
    world: int = 1,
    gather: Callable[[Any], list] | None = None,
) -> Callable[[int, dict], None]:
    """An `after_step(step, metrics)` hook for the training loop: every `every_n_steps` steps, answer the
    golden prompts greedily with the model being trained and append the rows to RUN/golden.jsonl.

    On `world` processes that each hold the whole model (DDP) every process calls it: process `rank` answers
    every world-th prompt, `gather` (every process's value, in rank order) brings the answers to process 0,
    which writes them. Process 0 used to answer alone while the others waited at the next step's collective,
    which kills them after the process group's timeout (NCCL: 10 minutes) when the answers take longer."""
    prompts = load_prompts(prompts_path)
    path = Path(run_dir) / GOLDEN_FILE
    gen = decoding(tokenizer, template, prompts, max_new_tokens)
    check_context(model, tokenizer, template, prompts, max_new_tokens, "drop it from train.golden")  # before step 1

    def after_step(step: int, metrics: dict) -> None:
        if every_n_steps <= 0 or step % every_n_steps:
            return
        share = prompts[rank::world]
        mine = answer(model, tokenizer, template, share, max_new_tokens) if share else []
        if world > 1:
            shares = gather(mine)
            mine = [shares[i % world][i // world] for i in range(len(prompts))]
        if rank == 0:
            for row in golden_rows(step, f"step-{step:06d}", prompts, mine, gen):
                append_jsonl(path, row)

    return after_step


# ---------------------------------------------------------------------------------------------- the run


@dataclass
class Checkpoint:
    label: str  # step-000004 or final
    step: int
    weights: Path | None  # adapter/ or model/ dir; None when deleted (answers only from golden.jsonl)


def read_run(run_dir: Path) -> tuple[dict, list[Checkpoint], list[dict]]:
    """The run's config, its checkpoints on disk (final last, unless it equals the last step), and metrics."""
    import yaml

    from weitiao.train.log import read_metrics

    cfg_path = run_dir / "config.yaml"
    if not cfg_path.exists():
        raise UserError(f"{run_dir}: no config.yaml; is this a `weitiao sft` run dir (train.out)?")
    cfg = yaml.safe_load(cfg_path.read_text(encoding="utf-8")) or {}
    ckpts = []
    root = run_dir / "checkpoints"
    for d in sorted(root.glob("step-*")) if root.exists() else []:
        if not is_step_dir(d):  # a user's copy (step-final, step-400-best): not a step of this run; was a traceback
            continue
        w = d / "adapter" if (d / "adapter").exists() else d / "model"
        if w.exists():
            ckpts.append(Checkpoint(d.name, int(d.name.split("-")[1]), w))
    metrics = read_metrics(run_dir)
    done = [m["step"] for m in metrics if m["kind"] == "done"]
    final = run_dir / "final"
    w = final / "adapter" if (final / "adapter").exists() else final / "model"
    if w.exists() and not (done and any(c.step == done[-1] for c in ckpts)):
        ckpts.append(Checkpoint("final", done[-1] if done else (ckpts[-1].step + 1 if ckpts else 0), w))
    return cfg, ckpts, metrics


def _load_chat(cfg: dict, run_dir: Path) -> tuple[Any, Any]:
    """The tokenizer and chat template the run trained with (final/tokenizer carries the template)."""
    from weitiao.data.templates import resolve_template
    from weitiao.models.load import load_tokenizer

    tok_dir = run_dir / "final" / "tokenizer"
    tok = load_tokenizer(str(tok_dir) if tok_dir.exists() else (cfg.get("model", {}) or {}).get("path", "demo"))
    name = "auto" if tok_dir.exists() else (cfg.get("data", {}) or {}).get("template", "auto")
    return tok, resolve_template(tok, name)


def _load_base(cfg: dict) -> Any:
    """The base as trained (a 4-bit one on the CPU keeps bitsandbytes' training kernel: load_model)."""
    from weitiao.models.load import ModelSpec, load_model

    mcfg = cfg.get("model", {}) or {}
    return load_model(ModelSpec(**{**mcfg, "gradient_checkpointing": False})).eval()


def generate_missing(
    run_dir: Path, cfg: dict, ckpts: list[Checkpoint], prompts: list[Prompt], gen: dict, chat: tuple[Any, Any]
) -> None:
    """Answer the golden prompts with every checkpoint that golden.jsonl lacks answers from `gen` for; append
    the rows. `chat`: the run's tokenizer and template."""
    from peft import PeftModel

    path = run_dir / GOLDEN_FILE
    # answers older than the checkpoint's weights came from an earlier run in the same dir: answer again
    have = {
        s: min(r.get("time", 0.0) for r in got.values()) for s, got in answered(read_golden(path), prompts, gen).items()
    }
    todo = [c for c in ckpts if c.weights is not None and have.get(c.step, -1.0) < _mtime(c.weights)]
    if not todo:
        return
    (tok, template), base = chat, _load_base(cfg)
    peft_model = None
    with progress_bar() as bar:
        task = bar.add_task("golden answers", total=len(todo), info="")
        for c in todo:
            if c.weights.name == "adapter":  # type: ignore[union-attr]
                if peft_model is None:
                    peft_model = PeftModel.from_pretrained(base, str(c.weights), adapter_name=c.label).eval()
                else:
                    peft_model.load_adapter(str(c.weights), adapter_name=c.label)
                peft_model.set_adapter(c.label)
                model = peft_model
            else:
                from weitiao.models.load import ModelSpec, load_model

                model = load_model(ModelSpec(path=str(c.weights), quant="none")).eval()
            gens = answer(model, tok, template, prompts, gen["max_new_tokens"])
            for row in golden_rows(c.step, c.label, prompts, gens, gen):
                append_jsonl(path, row)
            bar.advance(task)


def _mtime(weights: Path) -> float:
    return (
        max((f.stat().st_mtime for f in weights.iterdir()), default=0.0) - 120.0
    )  # slack: a save may end well after the hook wrote


ANSWER_KEYS = ("step", "label", "prompts", "index", "reply")  # of every row `golden_rows` writes


def read_golden(path: Path) -> list[dict]:
    """The answer rows of RUN/golden.jsonl; a row we did not write (the golden prompts copied there) is one UserError:
    it ended in a KeyError traceback, and answers would have been appended to that file."""
    if not path.exists():
        return []
    rows = []
    for n, row in read_jsonl(path):
        missing = [k for k in ANSWER_KEYS if k not in row] if isinstance(row, dict) else ["object"]
        if missing:
            raise UserError(f"{path}:{n}: not a golden answer row (no {missing[0]}); weitiao appends the checkpoints' "
                            f"answers to RUN/{GOLDEN_FILE}: move this file out of the run folder")  # fmt: skip
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------- selection


@dataclass
class GoldenResult:
    steps: list[int]
    labels: dict[int, str]
    replies: dict[int, list[dict]]  # step → per prompt: {"reply", "stopped", "metrics"}
    summary: dict[int, dict[str, float]]  # step → set metrics (+ eval_loss when logged at that step)
    recommended: int | None  # by the chosen metric
    lowest_eval: int | None
    select: str | None  # None: no recommendation asked
    judge_errors: list[str]
    notes: list[str] = field(default_factory=list)  # prompts without a reference, checkpoints left out
    gen: dict | None = None  # the `decoding` the answers came from


# --select metrics computed only from some prompts: the reference answer, or earlier turns (copy-of-history)
NEEDS = {"rougeL": "reference", "bleu": "reference", "exact_match": "reference", "copy_rate": "history"}


def check_select(select: str | None, prompts: Sequence[Prompt], prompts_path: str | Path) -> None:
    """UserError when no prompt can give `select` a value: every checkpoint would lack it and none be recommended
    (an exit 0 with "recommended: none", after every answer was generated). None: no recommendation asked."""
    need = NEEDS.get(select or "")
    if need == "reference" and not any(p.reference is not None for p in prompts):
        raise UserError(f"--select {select}: no prompt in {prompts_path} has a reference answer (reference/answer/"
                        "output, or a last assistant turn) to compare with; add references or choose --select "
                        "stop_rate, loop_rate, distinct_2, eval_loss or judge")  # fmt: skip
    if need == "history" and not any(p.history for p in prompts):
        raise UserError(f"--select copy_rate: no prompt in {prompts_path} has earlier turns to copy from; give "
                        "multi-turn prompts or choose another --select")  # fmt: skip


def pick(summary: dict[int, dict[str, float]], metric: str) -> int | None:
    """The step with the best value of `metric` (ties → the earliest step); None if no step has it."""
    have = [(s, m[metric]) for s, m in sorted(summary.items()) if metric in m and m[metric] == m[metric]]
    if not have:
        return None
    sign = 1 if SELECT[metric] else -1
    return max(have, key=lambda sv: (sign * sv[1], -sv[0]))[0]


def evaluate_golden(
    rows: list[dict],
    prompts: list[Prompt],
    metrics_log: list[dict],
    select: str | None,
    settings: MetricSettings | None = None,
    judge: Any = None,
    gen: dict | None = None,
) -> GoldenResult:
    """Per-answer and per-checkpoint metrics for the golden rows of this prompt set generated with `gen` (None:
    any settings); pick checkpoints."""
    from weitiao.eval.metrics import judge_scores

    if select is not None and select not in SELECT:
        raise UserError(f"--select {select}: choose one of {', '.join(SELECT)}")
    key = prompts_key(prompts)
    labels = {r["step"]: r["label"] for r in rows if r["prompts"] == key}
    by_step = answered(rows, prompts, gen)
    steps = sorted(by_step)
    gone = [labels[s] for s in sorted(set(labels) - set(steps))]  # answers only from other settings, or partial
    notes = [n for n in (reference_note(prompts), duplicate_note(prompts), _left_out(gone)) if n]
    judged: dict[tuple[int, int], float | None] = {}
    errors: list[str] = []
    if judge is not None:
        pairs = [(s, i) for s in steps for i in range(len(prompts))]
        scores, errors = judge_scores(
            judge, [prompts[i].messages for _, i in pairs], [by_step[s][i]["reply"] for s, i in pairs],
            references=[prompts[i].reference for _, i in pairs],
        )  # fmt: skip
        judged = dict(zip(pairs, scores))
        missed = [pair for pair, score in zip(pairs, scores) if score is None]  # in the order of `errors`
        errors = [f"{labels[s]} {prompts[i].source}: {e.split(': ', 1)[1]}" for (s, i), e in zip(missed, errors)]
        if errors and len(errors) < len(pairs):
            notes.append(_judge_note(missed, errors, len(pairs), labels))
    evals = {m["step"]: m["eval_loss"] for m in metrics_log if m["kind"] == "eval" and "eval_loss" in m}
    replies, summary = {}, {}
    for s in steps:
        items = [
            Item(by_step[s][i]["reply"], by_step[s][i]["stopped"], p.reference, p.history, judged.get((s, i)))
            for i, p in enumerate(prompts)
        ]
        replies[s] = [{**by_step[s][i], "metrics": item_metrics(it, settings)} for i, it in enumerate(items)]
        summary[s] = reply_metrics(items, settings)
        if s in evals:
            summary[s]["eval_loss"] = evals[s]
    if note := empty_note({labels[s]: replies[s] for s in steps}):
        notes.append(note)
    best = pick(summary, select) if select is not None else None
    if best is not None and (tie := tie_note(summary, select, best, labels)):  # type: ignore[arg-type]
        notes.append(tie)
    return GoldenResult(steps, labels, replies, summary, best, pick(summary, "eval_loss"), select, errors, notes, gen)


def tie_note(summary: dict[int, dict[str, float]], metric: str, best: int, labels: dict[int, str]) -> str | None:
    """A note when other checkpoints share the recommended one's `metric` value: the metric did not choose among
    them (`pick` names the earliest; every checkpoint at rougeL 0 read as step 1 recommended by ROUGE-L). None when
    the value is the best alone."""
    value = summary[best][metric]
    same = [s for s, m in sorted(summary.items()) if m.get(metric) == value]
    if len(same) < 2:
        return None
    who = "all" if len(same) == len(summary) else f"{len(same)} of"
    return (
        f"{who} {len(summary)} checkpoints tie at {metric} {value:.4g} ({', '.join(labels[s] for s in same[:4])}"
        f"{', ...' if len(same) > 4 else ''}): {metric} does not choose among them; the earliest is named"
    )


def _judge_note(missed: list[tuple[int, int]], errors: list[str], asked: int, labels: dict[int, str]) -> str:
    """The judge scored some answers only: say how many per checkpoint, as each one's judge averages the others (a
    checkpoint whose worst answers got no score read as better; the console said nothing)."""
    per = Counter(s for s, _ in missed)
    counts = ", ".join(f"{labels[s]} {n}" for s, n in sorted(per.items()))
    return (f"the judge gave no score for {len(errors)} of {asked} answers ({counts}); a checkpoint's judge is the "
            f"mean over its scored answers (first: {errors[0]})")  # fmt: skip


def _left_out(labels: list[str]) -> str | None:
    if not labels:
        return None
    return (f"left out {', '.join(labels)}: no saved answer to every prompt with these generation settings, and no "
            "weights to answer again with")  # fmt: skip


# ---------------------------------------------------------------------------------------------- HTML


def svg_lines(
    series: dict[str, list[tuple[float, float]]], marks: Sequence[int] = (), w: int = 720, h: int = 260
) -> str:
    """A small inline SVG line chart: one polyline per series, dashed verticals at `marks`, axes with ticks."""
    pts = [p for s in series.values() for p in s]
    if not pts:
        return "<p>(no loss logged)</p>"
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    y0, y1 = min(p[1] for p in pts), max(p[1] for p in pts)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)
    L, R, T, B = 50, 110, 10, 30

    def X(x: float) -> float:
        return L + (x - x0) / (x1 - x0) * (w - L - R)

    def Y(y: float) -> float:
        return T + (y1 - y) / (y1 - y0) * (h - T - B)

    colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-size="11">']
    out.append(f'<rect x="{L}" y="{T}" width="{w - L - R}" height="{h - T - B}" fill="none" stroke="#999"/>')
    for k in range(5):
        yv = y0 + (y1 - y0) * k / 4
        out.append(f'<text x="{L - 4}" y="{Y(yv) + 4:.1f}" text-anchor="end">{yv:.3g}</text>')
    for k in range(5):
        xv = x0 + (x1 - x0) * k / 4
        out.append(f'<text x="{X(xv):.1f}" y="{h - B + 14}" text-anchor="middle">{xv:.0f}</text>')
    out.append(f'<text x="{(w - R + L) / 2}" y="{h - 2}" text-anchor="middle">step</text>')
    for m in marks:
        if x0 <= m <= x1:
            out.append(
                f'<line x1="{X(m):.1f}" x2="{X(m):.1f}" y1="{T}" y2="{h - B}" stroke="#bbb" stroke-dasharray="3"/>'
            )
    for k, (name, s) in enumerate(series.items()):
        c = colors[k % len(colors)]
        poly = " ".join(f"{X(x):.1f},{Y(y):.1f}" for x, y in s)
        out.append(f'<polyline points="{poly}" fill="none" stroke="{c}" stroke-width="1.5"/>')
        out.extend(f'<circle cx="{X(x):.1f}" cy="{Y(y):.1f}" r="2.5" fill="{c}"/>' for x, y in s if len(s) < 40)
        out.append(f'<text x="{w - R + 8}" y="{T + 14 + 16 * k}" fill="{c}">{html.escape(name)}</text>')
    out.append("</svg>")
    return "".join(out)


CSS = """td,th{border:1px solid #ccc;font-size:13px}
.best{background:#e6f4ea}.low{background:#e8f0fe}.reply{white-space:pre-wrap;max-width:360px}
.m{color:#666;font-size:11px}.tag{font-size:11px;padding:1px 4px;border-radius:3px;background:#ddd}"""
SHOWN = ["rougeL", "bleu", "exact_match", "judge", "distinct_2", "loop_rate", "copy_rate", "stop_rate", "mean_len",
         "emoji_rate", "refusal_rate", "eval_loss"]  # fmt: skip


def curve(metrics_log: list[dict], kind: str, key: str) -> list[tuple[float, float]]:
    """(step, value) sorted by step; a step logged twice (a resumed or re-run run appends) keeps its last value."""
    last = {m["step"]: m[key] for m in metrics_log if m["kind"] == kind and key in m}
    return sorted(last.items())


def render_report(run_dir: Path, prompts: list[Prompt], res: GoldenResult, metrics_log: list[dict]) -> str:
    """The self-contained HTML report (no external files or scripts)."""
    e = html.escape
    train = curve(metrics_log, "train", "loss")
    evals = curve(metrics_log, "eval", "eval_loss")
    parts = [f"<h1>Golden-set report</h1><p>run <code>{e(str(run_dir))}</code> · "]
    budget = f", at most {res.gen['max_new_tokens']} new tokens" if res.gen else ""
    parts.append(f"{len(prompts)} prompts · {len(res.steps)} checkpoints · greedy decoding{budget}</p>")
    parts += [f"<p>note: {e(n)}</p>" for n in res.notes]

    def lab(s: int | None) -> str:
        return "none" if s is None else f"{res.labels[s]} (step {s})"

    by = (
        f"Recommended by {e(res.select)}:</b> {e(lab(res.recommended))}"
        if res.select
        else "Recommended:</b> none asked"
    )
    parts.append(f"<p><b>{by} &nbsp; ")
    parts.append(f"<b>Lowest eval loss:</b> {e(lab(res.lowest_eval))}</p>")
    parts.append("<h2>Loss</h2>" + svg_lines({"train loss": train, "eval loss": evals}, res.steps))
    cols = [k for k in SHOWN if any(k in res.summary[s] for s in res.steps)]
    parts.append(
        "<h2>Checkpoints</h2><table><tr><th>checkpoint</th>" + "".join(f"<th>{c}</th>" for c in cols) + "</tr>"
    )
    for s in res.steps:
        cls = "best" if s == res.recommended else ("low" if s == res.lowest_eval else "")
        tags = (" <span class='tag'>recommended</span>" if s == res.recommended else "") + (
            " <span class='tag'>lowest eval loss</span>" if s == res.lowest_eval else ""
        )
        vals = "".join(f"<td>{res.summary[s][c]:.4g}</td>" if c in res.summary[s] else "<td></td>" for c in cols)
        parts.append(f"<tr class='{cls}'><td>{e(lab(s))}{tags}</td>{vals}</tr>")
    parts.append("</table><h2>Answers</h2><table><tr><th>prompt</th><th>reference</th>")
    parts.append(
        "".join(f"<th class='{'best' if s == res.recommended else ''}'>{e(res.labels[s])}</th>" for s in res.steps)
    )
    parts.append("</tr>")
    for i, p in enumerate(prompts):
        convo = "<br>".join(f"<b>{e(m['role'])}</b>: {e(m['content'])}" for m in p.messages)
        parts.append(f"<tr><td class='reply'>{convo}</td><td class='reply'>{e(p.reference or '')}</td>")
        for s in res.steps:
            r = res.replies[s][i]
            ms = " · ".join(f"{k} {v:.3g}" for k, v in r["metrics"].items() if k not in ("emoji", "refusal"))
            cls = "reply best" if s == res.recommended else "reply"
            parts.append(f"<td class='{cls}'>{e(r['reply'])}<div class='m'>{e(ms)}</div></td>")
        parts.append("</tr>")
    parts.append("</table>")
    return page(f"golden report · {run_dir}", "".join(parts), CSS)


def check_max_new_tokens(max_new_tokens: int) -> None:
    """UserError for a reply length that generates nothing (`eval golden`, `eval gen`, `chat`)."""
    if max_new_tokens < 1:
        raise UserError(f"--max-new-tokens {max_new_tokens}: must be >= 1")


def golden_report(
    run_dir: str | Path,
    prompts_path: str | Path,
    select: str | None = "rougeL",
    max_new_tokens: int = 128,
    judge: Any = None,
    settings: MetricSettings | None = None,
    out: str | Path | None = None,
    steps: Collection[int] | None = None,
) -> tuple[Path, GoldenResult]:
    """Steps 1–5 above, over the checkpoints at `steps` (default all); returns the report path and the numbers.

    An `out` that is the prompt file or a file weitiao did not write is refused before any generation, as is a
    `select` metric these prompts cannot give (ROUGE-L without references); one no checkpoint has after answering
    is refused too (no page). `select` None: no recommendation."""
    run_dir = Path(run_dir)
    path = Path(out) if out else run_dir / REPORT_FILE
    claim_outputs([path] if out else [], [prompts_path])  # the default, in the run's own folder, is ours
    if Path(prompts_path).resolve() == (run_dir / GOLDEN_FILE).resolve():  # answers are appended there
        raise UserError(f"--prompts {prompts_path}: is the run's answers file, which eval golden appends the "
                        "checkpoints' answers to; keep the golden prompts outside the run folder")  # fmt: skip
    check_max_new_tokens(max_new_tokens)
    if select is not None and select not in SELECT:
        raise UserError(f"--select {select}: choose one of {', '.join(SELECT)}")
    if select == "judge" and judge is None:
        raise UserError("--select judge needs a judge: pass --judge-url and --judge-model")
    prompts = load_prompts(prompts_path)
    check_select(select, prompts, prompts_path)
    cfg, ckpts, metrics_log = read_run(run_dir)  # 1
    if select == "eval_loss" and not any(m["kind"] == "eval" and "eval_loss" in m for m in metrics_log):
        raise UserError(f"--select eval_loss: {run_dir}/metrics.jsonl holds no eval loss (the run had no eval set); "
                        "choose another --select")  # fmt: skip
    if steps is not None:
        ckpts = [c for c in ckpts if c.step in steps]
    if not ckpts and not (run_dir / GOLDEN_FILE).exists():
        raise UserError(f"{run_dir}: no checkpoints (checkpoints/step-*/ or final/) and no {GOLDEN_FILE}")
    chat = _load_chat(cfg, run_dir)
    gen = decoding(*chat, prompts, max_new_tokens)
    generate_missing(run_dir, cfg, ckpts, prompts, gen, chat)  # 2
    rows = [r for r in read_golden(run_dir / GOLDEN_FILE) if steps is None or r["step"] in steps]
    res = evaluate_golden(rows, prompts, metrics_log, select, settings, judge, gen)  # 3, 4
    if judge is not None and res.steps and len(res.judge_errors) == len(res.steps) * len(prompts):
        # a page without the judge (and, with --select judge, no recommendation) read as a judged report
        raise judge.answered_none(
            res.judge_errors, "answers", f"; no report written (the answers stay in {run_dir / GOLDEN_FILE})"
        )
    if not res.steps:  # an empty page and exit 0 read as "done"
        why = next((n for n in res.notes if n.startswith("left out")), None) or (
            f"{GOLDEN_FILE} holds no answers to the prompts of {prompts_path} and no checkpoint has weights to answer "
            "them"
        )
        raise UserError(f"{run_dir}: no checkpoint to report: {why}")
    if select is not None and res.recommended is None:  # "recommended by X: none" and exit 0 read as a choice made
        why = " (eval loss is logged at eval_every steps only)" if select == "eval_loss" else ""
        raise UserError(
            f"--select {select}: none of the {len(res.steps)} checkpoints has a value for {select}{why}; "
            f"choose another --select; no report written (the answers stay in {run_dir / GOLDEN_FILE})"
        )
    atomic_write_text(path, render_report(run_dir, prompts, res, metrics_log))  # 5
    return path, res
