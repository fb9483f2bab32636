"""Learning curve: SFT on nested subsets of the training data, eval metric vs data size.

    weitiao curve examples/demo_curve.yaml --sizes 100,200,400,800 [key.path=value ...]

Steps: 1. load the SFT config and its training rows; fix one eval set for every size (the config's
eval files, else an eval_split carved out once), written as eval.jsonl (messages rows, as every train_N.jsonl)
→ 2. shuffle once with the seed; subset i is the first size_i rows, so every subset contains the smaller ones
→ 3. one `weitiao sft` run per size (out dir `<out>/size_<n>`), largest first → 4. curve.json + curve.png.

Steps (`steps`): `proportional` keeps the config's epochs, so a bigger set also trains more steps
and "more data" is confounded with "more training" (warned); `fixed` gives every size the steps of
the largest one (train.max_steps), so only the data differs. With a config that sets
train.max_steps both are fixed. `golden`: a prompt file answered greedily by each size's final
model; its metrics (golden_stop_rate, golden_refusal_rate, golden_rougeL, ...) can be the curve metric.

Diminishing returns (chapter Q146: "if doubling the data barely helps, you are at the knee"): for
each step s_i → s_{i+1}, gain per doubling = relative improvement / log2(s_{i+1} / s_i). The knee is
the first size s_i whose next step gains less than `min_gain` (default 5%) per doubling.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

from weitiao.config import load_config
from weitiao.data.formats import CONFIG_SKIP_HINT, data_files, load_conversations
from weitiao.data.prep import conversation_key
from weitiao.data.tools import to_record
from weitiao.errors import UserError, near_miss
from weitiao.eval.metrics import REPLY_METRICS
from weitiao.io import atomic_write_text, claim_outputs, pyplot, save_figure, write_jsonl


def parse_sizes(text: str) -> list[int]:
    """'250,500,1000' → [250, 500, 1000] (sorted, unique, all > 0)."""
    try:
        sizes = sorted({int(s) for s in text.split(",") if s.strip()})
    except ValueError:
        raise UserError(f"--sizes {text!r}: expected comma-separated integers, e.g. 250,500,1000") from None
    if not sizes or sizes[0] <= 0:
        raise UserError(f"--sizes {text!r}: give at least one size > 0")
    return sizes


def knee(sizes: list[int], values: list[float], higher_is_better: bool, min_gain: float) -> dict:
    """Gain per doubling for each step and the first size after which it drops below min_gain (or None).

    A step from 0 has no relative gain: better than 0 is no knee, equal or worse is one; its gain is null with
    `from_zero` saying which way it went (a rate of 0 at a small size that rises read as a knee there)."""
    steps, gains = [], []
    for (a, va), (b, vb) in zip(zip(sizes, values), zip(sizes[1:], values[1:])):
        better = (vb - va) if higher_is_better else (va - vb)
        step: dict = {"from": a, "to": b}
        if not (math.isfinite(va) and math.isfinite(vb)):
            gain = float("nan")
        elif va == 0:
            gain = math.copysign(math.inf, better) if better else 0.0
            step["from_zero"] = "better" if better > 0 else "worse" if better < 0 else "same"
        else:
            gain = better / abs(va) / math.log2(b / a)
        steps.append({**step, "gain_per_doubling": gain if math.isfinite(gain) or math.isnan(gain) else None})
        gains.append(gain)
    first = next((s["from"] for s, g in zip(steps, gains) if not g >= min_gain), None)
    return {"rule": f"first size whose next step gains < {min_gain:.0%} per doubling", "steps": steps, "knee": first}


# The curve metrics an SFT run's summary (and --golden: the reply metrics) gives; another numeric summary key may be
# asked for, a near miss of one of these is a typo refused before the first size trains. train_loss is the mean over
# the run's steps (early, untrained steps included: the fewer steps a size trains, the higher it is), last_train_loss
# the last step's, on one batch; neither is measured on the same rows at every size, as eval_loss is.
KNOWN_METRICS = ("eval_loss", "eval_loss_answer", "train_loss", "last_train_loss",
                 *(f"golden_{k}" for k in REPLY_METRICS))  # fmt: skip
# Which way is better, for the metrics where that is clear; the knee of any other (length, emoji or refusal rate, a
# summary key) needs --higher-is-better or --lower-is-better.
LOWER_IS_BETTER = {"eval_loss", "eval_loss_answer", "train_loss", "last_train_loss", "best_eval", "golden_loop_rate",
                   "golden_copy_rate"}  # fmt: skip
HIGHER_IS_BETTER = {f"golden_{k}" for k in ("stop_rate", "distinct_1", "distinct_2", "rougeL", "exact_match", "judge",
                                             "bleu")}  # fmt: skip


def direction(metric: str, higher_is_better: bool | None) -> bool:
    """Whether a larger `metric` is better: known for losses and most golden metrics, else the flag; a flag against
    the known way is refused (the gains would change sign and the knee land on the first size)."""
    known = True if metric in HIGHER_IS_BETTER else False if metric in LOWER_IS_BETTER else None
    flag = {True: "--higher-is-better", False: "--lower-is-better"}
    if known is None and higher_is_better is None:
        raise UserError(f"--metric {metric}: which way is better is not known for it; add --higher-is-better or "
                        "--lower-is-better")  # fmt: skip
    if known is not None and higher_is_better is not None and known != higher_is_better:
        raise UserError(f"{flag[higher_is_better]}: --metric {metric} is better {'higher' if known else 'lower'}; "
                        "drop the flag")  # fmt: skip
    return known if known is not None else bool(higher_is_better)


def golden_metrics(run_dir: Path, prompts: list) -> dict[str, float]:
    """Greedy replies of the run's final model to the golden prompts → reply metrics named golden_*."""
    from weitiao.data.templates import resolve_template
    from weitiao.eval.golden import answer
    from weitiao.eval.metrics import Item, reply_metrics
    from weitiao.infer.chat import load_chat_model

    model, tok = load_chat_model(None, str(run_dir))
    gens = answer(model, tok, resolve_template(tok, "auto"), prompts, fix="drop it from --golden")
    items = [Item(g.text, g.stopped, p.reference, p.history) for p, g in zip(prompts, gens)]
    return {f"golden_{k}": v for k, v in reply_metrics(items).items() if k != "n"}


def plot(path: Path, sizes: list[int], values: list[float], metric: str, knee_size: int | None) -> None:
    """Metric vs size on a log2 x axis, the knee marked."""
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(sizes, values, "o-")
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [str(s) for s in sizes])
    ax.set_xlabel("training rows")
    ax.set_ylabel(metric)
    if knee_size is not None:
        ax.axvline(knee_size, color="tab:red", ls="--")
        ax.annotate("diminishing returns", (knee_size, values[sizes.index(knee_size)]), color="tab:red",
                    textcoords="offset points", xytext=(6, 8))  # fmt: skip
    ax.set_title(f"learning curve: {metric} vs data size")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def run(
    config: str | Path,
    sizes: list[int],
    overrides: list[str] | None = None,
    out: str | Path | None = None,
    metric: str = "eval_loss",
    higher_is_better: bool | None = None,
    min_gain: float = 0.05,
    seed: int = 0,
    steps: str = "proportional",
    golden: str | Path | None = None,
) -> dict:
    """Train once per size; returns and writes curve.json (+ curve.png) under `out` (default <train.out>/curve).
    `higher_is_better` None: the metric's known direction (`direction`)."""
    from weitiao.data.chat import row_check
    from weitiao.data.templates import resolve_template
    from weitiao.models.load import load_tokenizer
    from weitiao.recipes import sft

    if steps not in ("fixed", "proportional"):
        raise UserError(f"--steps {steps!r}: use fixed or proportional")
    if metric.startswith("golden_") and golden is None:  # found only after the largest size had trained
        raise UserError(f"--metric {metric}: golden_* metrics come from --golden PROMPTS.jsonl, which is not given")
    if metric not in KNOWN_METRICS and (near := near_miss(metric, KNOWN_METRICS)):  # a typo, before training
        raise UserError(f"--metric {metric}: did you mean {near}? (known: {', '.join(KNOWN_METRICS)})")
    higher_is_better = direction(metric, higher_is_better)

    # 1. config, rows, one fixed eval set
    cfg = load_config(sft.SFTConfig, config, overrides or [])
    out = Path(out or Path(cfg.train.out) / "curve")
    # before any work: the files we write in `out` may replace only our own earlier ones, never an input
    written = ["rejects.jsonl", "eval_rejects.jsonl", "eval.jsonl", "curve.json", "curve.png",
               *(f"train_{n}.jsonl" for n in sizes)]  # fmt: skip
    inputs = [config, golden, *data_files([*cfg.data.train, *cfg.data.eval], cfg.data.dataset_dir)]
    claim_outputs([out / f for f in written], [i for i in inputs if i])
    if not cfg.data.eval and cfg.data.eval_split <= 0:
        raise UserError(f"{config}: the curve needs an eval set: set data.eval or data.eval_split")
    # Every size trains on train_N.jsonl and evaluates on eval.jsonl, written here as OpenAI messages rows: the
    # config's data.format and dataset_dir describe its own files (under `format: alpaca` train_N.jsonl was read as
    # alpaca, "instruction: missing"; under dataset_dir its path as a dataset name, "no dataset").
    # the rows training would keep (a row the template refuses: one more bad row), so size N trains N rows
    tok = load_tokenizer(cfg.model.path)
    check = row_check(tok, resolve_template(tok, cfg.data.template))
    read = dict(skip_invalid=cfg.data.skip_invalid, max_row_bytes=cfg.data.max_row_bytes,
                dataset_dir=cfg.data.dataset_dir, skip_hint=CONFIG_SKIP_HINT, row_check=check)  # fmt: skip
    rows = load_conversations(cfg.data.train, cfg.data.format, rejects_path=out / "rejects.jsonl", **read).rows
    rng = random.Random(seed)
    # 2. one shuffle; nested prefixes
    order = list(range(len(rows)))
    rng.shuffle(order)
    if cfg.data.eval:
        ev = load_conversations(cfg.data.eval, cfg.data.format, rejects_path=out / "eval_rejects.jsonl", **read).rows
        if not ev:
            raise UserError(f"data.eval {', '.join(cfg.data.eval)}: no valid rows")
        write_jsonl(out / "eval.jsonl", [to_record(c) for c in ev])
    else:  # as `weitiao sft`'s own eval_split: every copy of a row on the side of its first, eval holding it once
        groups: dict[str, list[int]] = {}  # (a copy left in the subsets trained on the row its eval loss measured)
        for i in order:
            groups.setdefault(conversation_key(rows[i]), []).append(i)
        held = list(groups.values())[: max(1, int(len(groups) * cfg.data.eval_split))]
        write_jsonl(out / "eval.jsonl", [to_record(rows[m[0]]) for m in held])
        out_of_train = {i for m in held for i in m}
        order = [i for i in order if i not in out_of_train]
    eval_files = [str(out / "eval.jsonl")]
    if sizes[-1] > len(order):
        raise UserError(f"--sizes: {sizes[-1]} is more than the {len(order)} training rows available")
    # 3. one run per size, largest first (under --steps fixed its step count is every size's)
    golden_prompts = None
    if golden is not None:
        from weitiao.eval.golden import load_prompts

        golden_prompts = load_prompts(golden)
    fixed_steps = cfg.train.max_steps
    points = []
    for n in sorted(sizes, reverse=True):
        subset = out / f"train_{n}.jsonl"
        write_jsonl(subset, [to_record(rows[i]) for i in order[:n]])
        run_cfg = cfg.model_copy(deep=True)
        run_cfg.data.train, run_cfg.data.eval, run_cfg.data.eval_split = [str(subset)], eval_files, 0.0
        run_cfg.data.format, run_cfg.data.dataset_dir = "openai", None  # the files written above
        run_cfg.train.out, run_cfg.train.resume = str(out / f"size_{n}"), "none"
        if steps == "fixed" and fixed_steps is not None:
            run_cfg.train.max_steps = fixed_steps
        print(f"curve: training on {n} rows → {run_cfg.train.out}")
        summary = sft.run(run_cfg)
        if steps == "fixed" and fixed_steps is None:
            fixed_steps = summary["steps"]
        if golden_prompts is not None:
            summary.update(golden_metrics(Path(run_cfg.train.out), golden_prompts))
        value = summary.get(metric)
        if not isinstance(value, (int, float)):
            keys = ", ".join(k for k, v in summary.items() if isinstance(v, (int, float)))
            raise UserError(f"--metric {metric!r}: not in the run summary; numeric keys: {keys}")
        extra = {k: v for k, v in summary.items() if k.startswith("golden_")}
        points.insert(0, {"size": n, metric: float(value), "steps": summary.get("steps"), "out": run_cfg.train.out,
                          **extra})  # fmt: skip
    confounded = len({p["steps"] for p in points}) > 1
    if confounded:
        print(f"curve: warning: steps grew with the data ({', '.join(str(p['steps']) for p in points)}): the curve "
              "mixes more data with more training; --steps fixed gives every size the same steps")  # fmt: skip
    # 4. knee, json, plot
    values = [p[metric] for p in points]
    k = knee(sizes, values, higher_is_better, min_gain)
    result = {"config": str(config), "metric": metric, "higher_is_better": higher_is_better, "points": points,
              "diminishing_returns": k, "eval": eval_files, "eval_from": cfg.data.eval or f"data.eval_split "
              f"{cfg.data.eval_split}", "seed": seed, "steps": steps,
              "steps_confounded": confounded, "golden": str(golden) if golden else None}  # fmt: skip
    atomic_write_text(out / "curve.json", json.dumps(result, ensure_ascii=False, indent=2))
    plot(out / "curve.png", sizes, values, metric, k["knee"])
    return result
