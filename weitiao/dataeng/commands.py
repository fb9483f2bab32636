"""CLI for data engineering: `weitiao data kb2sft|mix|badcases|repeat-negatives` and `weitiao curve`.

Mounted by cli.py with `register(data_app, app)`. Each command maps to one `run` function.

    weitiao data kb2sft weitiao/demo/kb --out runs/kb --max-chars 150 --max-tokens 64
    weitiao data mix style.jsonl:0.85 safety.jsonl:0.15 --total 800 --out mixed.jsonl
    weitiao data badcases cases.jsonl --out runs/badcases --resume-from runs/demo
    weitiao data repeat-negatives dialogues.jsonl --out repeat_pairs.jsonl
    weitiao curve examples/demo_curve.yaml --sizes 100,200,400,800
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from weitiao import progress
from weitiao.cli_options import given_flags
from weitiao.errors import UserError

console = progress.console()

TEACHER_URL = typer.Option("http://127.0.0.1:8000/v1", "--teacher-url", help="OpenAI-compatible base URL")
TEACHER_MODEL = typer.Option("demo", "--teacher-model", help="model name sent to the teacher")
CACHE_DIR = typer.Option(Path(".weitiao_cache/teacher"), "--cache-dir", help="teacher reply cache (re-runs resume)")
CONCURRENCY = typer.Option(4, "--concurrency", help="teacher requests in flight")
MAX_TOKENS = typer.Option(512, "--max-tokens", help="max_tokens per teacher reply")
TEMPERATURE = typer.Option(0.7, "--temperature", help="teacher sampling temperature")


def _teacher(url: str, model: str, cache_dir: Path, concurrency: int, max_tokens: int, temperature: float):
    from weitiao.teacher import Teacher

    return Teacher(url, model, concurrency=concurrency, cache_dir=cache_dir, max_tokens=max_tokens,
                   temperature=temperature)  # fmt: skip


def _table(title: str, rows: list[tuple[str, object]]) -> None:
    t = Table(title=title, show_header=False)
    for k, v in rows:
        t.add_row(k, escape(str(v)))
    console.print(t)


def kb2sft(
    docs: list[Path] = typer.Argument(..., help="documents or folders (.md .txt; .docx .pdf when installed)"),
    out: Path = typer.Option(..., help="output folder: train/eval.jsonl, review.csv, rejects, summary"),
    chunker: str = typer.Option("heading", help="paragraph | heading | fixed | semantic"),
    max_chars: int = typer.Option(600, help="chunk size limit in characters (fixed: window size)"),
    overlap: int = typer.Option(100, help="fixed chunker: characters shared by neighbouring windows"),
    embed_model: str = typer.Option(None, help="semantic chunker: local encoder dir (default char TF-IDF)"),
    n_qa: int = typer.Option(3, help="QA pairs asked per chunk"),
    prompt: Path = typer.Option(None, help="prompt template file with {n} {chunk} {source} (default: built-in)"),
    min_grounding: float = typer.Option(0.5, help="min share of answer bigrams (chars; English words) in the chunk"),
    dedup: float = typer.Option(0.8, help="question near-duplicate threshold (char-trigram Jaccard)"),
    eval_fraction: float = typer.Option(0.1, help="share of chunks held out as eval"),
    system: str = typer.Option(None, help="system message for every row"),
    row_format: str = typer.Option("messages", "--format", help="output rows: messages | alpaca"),
    seed: int = typer.Option(0),
    teacher_url: str = TEACHER_URL,
    teacher_model: str = TEACHER_MODEL,
    cache_dir: Path = CACHE_DIR,
    concurrency: int = CONCURRENCY,
    max_tokens: int = MAX_TOKENS,
    temperature: float = TEMPERATURE,
) -> None:
    """Knowledge base → grounded, deduplicated QA pairs for SFT, with an eval split by chunk."""
    from weitiao.dataeng import kb2sft as tool
    from weitiao.dataeng.chunk import ChunkSpec

    spec = ChunkSpec(chunker, max_chars, overlap=overlap, embed_model=embed_model)  # type: ignore[arg-type]
    if prompt is not None and not prompt.is_file():
        raise UserError(f"--prompt {prompt}: file not found")
    from weitiao.io import read_text

    template = read_text(prompt) if prompt else tool.DEFAULT_PROMPT  # bad bytes: one line naming file:line
    cfg = tool.KBConfig(spec, n_qa, template, min_grounding, dedup, eval_fraction, system, seed, row_format)
    teacher = _teacher(teacher_url, teacher_model, cache_dir, concurrency, max_tokens, temperature)
    s = tool.run(docs, out, teacher, cfg)
    _table(
        f"kb2sft → {out}",
        [
            ("documents (empty) · files skipped", f"{s['docs']} ({len(s['empty_docs'])}) · {len(s['skipped_files'])}"),
            ("chunks asked / answered / teacher failed", f"{s['asked']} / {s['answered']} / {s['teacher_failed']}"),
            ("answers from the cache (same model name + request)", f"{s['from_cache']} ({cache_dir})"),
            ("replies not parseable as JSON", s["parse_failed"]),
            ("QA parsed (malformed items)", f"{s['qa_parsed']} ({s['items_malformed']})"),
            (f"rejected: grounding < {s['min_grounding']}", s["rejected_grounding"]),
            ("rejected: near-duplicate question", s["deduped"]),
            ("kept = train + eval", f"{s['kept']} = {s['train']} + {s['eval']} ({s['eval_chunks']} eval chunks)"),
        ],
    )
    if s["skipped_files"]:
        shown = ", ".join(s["skipped_files"][:5]) + (" …" if len(s["skipped_files"]) > 5 else "")
        console.print(f"[yellow]skipped {len(s['skipped_files'])} files (unsupported type, or in a hidden folder)[/]: "
                      f"{shown}")  # fmt: skip
    if s["teacher_failed"]:
        console.print(f"[yellow]{s['teacher_failed']} chunks got no reply; answered ones are cached — re-run to resume")
    if eval_fraction > 0 and s["kept"] and not s["eval"]:  # one chunk with kept QA: nothing can be held out
        console.print(
            f"[yellow]note:[/] --eval-fraction {eval_fraction}, but every kept QA pair comes from one chunk and eval "
            "holds out whole chunks: eval.jsonl is empty (smaller --max-chars makes more chunks)"
        )


def mix(
    sources: list[str] = typer.Argument(..., help="FILE:RATIO items, e.g. style.jsonl:0.85 safety.jsonl:0.15"),
    out: Path = typer.Option(..., help="mixed JSONL (messages rows with meta.source); report at OUT.report.json"),
    total: int = typer.Option(None, help="rows to write (default: the most that needs no up-sampling)"),
    seed: int = typer.Option(0),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
) -> None:
    """Mix SFT sources to target ratios with up/down-sampling and cross-source dedup."""
    from weitiao.dataeng import mix as tool

    rep = tool.run(sources, out, total, seed)
    if as_json:
        print(json.dumps(rep, ensure_ascii=False, indent=2))
        return
    t = Table(title=f"data mix → {out} ({rep['total']} rows)")
    for col in ("source", "read", "dups", "unique", "picked", "upsample", "target", "achieved"):
        t.add_column(col, overflow="fold")
    names = [Path(r["source"]).name for r in rep["sources"]]
    unique_names = len(set(names)) == len(names)
    for r, name in zip(rep["sources"], names):
        counts = [str(r[k]) for k in ("read", "duplicates", "unique", "picked")]
        ratios = [f"{r['upsample']:.2f}x", f"{r['target_ratio']:.1%}", f"{r['achieved_ratio']:.1%}"]
        t.add_row(name if unique_names else r["source"], *counts, *ratios)
    console.print(t)
    if "note" in rep:
        console.print(f"note: {rep['note']}")
    for file, cols in rep.get("typed_columns", {}).items():
        shown = ", ".join(f"{c} ({k}s)" for c, k in cols.items())
        console.print(f"note: {file}: {shown} written as JSON values, not text: every filled cell is one")


def badcases(
    ctx: typer.Context,
    files: list[Path] = typer.Argument(..., help="bad cases: JSONL or CSV with prompt, bad, golden, [tag]"),
    out: Path = typer.Option(..., help="output folder"),
    augment: int = typer.Option(4, help="paraphrases asked per case (3-5 suggested; 0 = no teacher)"),
    clusters: int = typer.Option(None, help="number of clusters (default round(sqrt(n/2)))"),
    embed_model: str = typer.Option(None, help="local encoder dir for clustering (default char TF-IDF)"),
    config: Path = typer.Option(None, help="the SFT config used before: writes OUT/followup_sft.yaml from it"),
    resume_from: str = typer.Option(None, help="run or adapter dir to continue training (lora.init_from)"),
    seed: int = typer.Option(0),
    holdout: float = typer.Option(0.25, help="without paraphrases: share of each cluster's cases held out"),
    teacher_url: str = TEACHER_URL,
    teacher_model: str = TEACHER_MODEL,
    cache_dir: Path = CACHE_DIR,
    concurrency: int = CONCURRENCY,
    max_tokens: int = typer.Option(256, "--max-tokens", help="max_tokens per teacher reply"),
    temperature: float = TEMPERATURE,
) -> None:
    """Bad-case loop: cluster report, paraphrases, SFT additions, DPO pairs, regression eval, next command."""
    from weitiao.dataeng import badcases as tool
    from weitiao.recipes.sft import SFTConfig

    teacher_flags = ("teacher_url", "teacher_model", "cache_dir", "concurrency", "max_tokens", "temperature")
    if not augment and (unused := given_flags(ctx, *teacher_flags)):
        raise UserError(f"{', '.join(unused)}: --augment 0 asks the teacher nothing; drop them, or set --augment N")
    if augment and (unused := given_flags(ctx, "holdout")):
        raise UserError("--holdout: only without a teacher (--augment 0); with paraphrases each case's last one is "
                        "held out")  # fmt: skip
    teacher = _teacher(teacher_url, teacher_model, cache_dir, concurrency, max_tokens, temperature) if augment else None
    s = tool.run(
        files,
        out,
        teacher,
        augment,
        clusters,
        embed_model,
        config,
        resume_from,
        seed,
        holdout=holdout,
        sft_config=SFTConfig,
    )
    rows = [("cases / clusters", f"{s['cases']} / {s['clusters']}  (report: {out / 'clusters.html'})")]
    if augment:
        rows += [("paraphrases (cases short of --augment)", f"{s['paraphrases']} ({s['short']})"),
                 ("teacher failed / unparseable", f"{s['teacher_failed']} / {s['parse_failed']}")]  # fmt: skip
    rows += [("SFT additions / DPO pairs / held-out regression eval", f"{s['sft_rows']} / {s['dpo_pairs']} / "
              f"{s['regression_eval']}")]  # fmt: skip
    _table(f"data badcases → {out}", rows)
    console.print(f"next: {s['next']}\n  or preference training: {s['dpo_next']}", markup=False, highlight=False)


def repeat_negatives(
    files: list[Path] = typer.Argument(..., help="multi-turn dialogues (any SFT format)"),
    out: Path = typer.Option(..., help="DPO pairs JSONL; report at OUT.report.json"),
    sft_out: Path = typer.Option(None, help="also write the kept long, novel dialogues here (SFT rows)"),
    min_turns: int = typer.Option(4, help="assistant turns a dialogue needs"),
    max_copy: float = typer.Option(0.2, help="highest mean copy-of-history rate to keep a dialogue"),
    min_distinct2: float = typer.Option(0.6, help="lowest distinct-2 of its replies to keep a dialogue"),
    pairs_per_dialog: int = typer.Option(2),
    echo_share: float = typer.Option(0.5, help="share of rejected replies that echo the user (rest copy a turn)"),
    stitch_turns: int = typer.Option(0, help="single-turn data: chain rows into dialogues of N turns (demo)"),
    seed: int = typer.Option(0),
) -> None:
    """DPO pairs against the repeater problem: rejected = a copied earlier turn or the echoed question."""
    from weitiao.dataeng import repeat as tool

    cfg = tool.RepeatConfig(min_turns, max_copy, min_distinct2, pairs_per_dialog=pairs_per_dialog,
                            echo_share=echo_share, stitch_turns=stitch_turns, seed=seed)  # fmt: skip
    r = tool.run(files, out, cfg, sft_out)
    a, k = r["all"], r["kept"]
    _table(
        f"repeat-negatives → {out}",
        [
            *(
                [
                    ("rows stitched / left over", f"{r['rows'] - r['stitch_left_over']} / {r['stitch_left_over']}"),
                    (
                        "earlier exchanges (rows) / system prompts dropped",
                        f"{d['earlier_exchanges']} ({d['rows_with_history']}) / {d['system_prompts']}",
                    ),
                ]  # fmt: skip
                if (d := r["stitch_dropped"])
                else []
            ),
            ("dialogues read / long / kept", f"{r['read']} / {r['long']} / {k['dialogues']}"),
            ("copy rate all → kept", f"{a['mean_copy_rate']:.3f} → {k['mean_copy_rate']:.3f}"),
            ("distinct-2 all → kept", f"{a['mean_distinct2']:.3f} → {k['mean_distinct2']:.3f}"),
            (
                "pairs (copy turn / echo user)",
                f"{r['pairs']} ({r['pairs_by_kind']['copy_turn']} / {r['pairs_by_kind']['echo_user']})",
            ),  # fmt: skip
            ("copy rate chosen vs rejected", f"{r['chosen_copy_rate']} vs {r['rejected_copy_rate']}"),
        ],
    )
    if (d := r["stitch_dropped"]) and (d["earlier_exchanges"] or d["system_prompts"]):
        console.print(f"[yellow]note:[/] --stitch-turns chains each row's last exchange only: "
                      f"{d['earlier_exchanges']} earlier exchanges of {d['rows_with_history']} rows and "
                      f"{d['system_prompts']} system prompts are not in the stitched dialogues; without "
                      "--stitch-turns multi-turn rows are read whole")  # fmt: skip


def curve(
    config: Path = typer.Argument(..., help="SFT YAML config"),
    overrides: list[str] = typer.Argument(None, help="key.path=value overrides"),
    sizes: str = typer.Option(..., help="training-set sizes, e.g. 250,500,1000,2000"),
    out: Path = typer.Option(None, help="output folder (default <train.out>/curve)"),
    metric: str = typer.Option("eval_loss", help="summary key to plot (eval_loss, best_eval, ...)"),
    higher_is_better: bool = typer.Option(
        None,
        "--higher-is-better/--lower-is-better",
        show_default=False,
        help="which way the metric is better (known for losses and golden rougeL/bleu/stop_rate/loop_rate/...)",
    ),
    min_gain: float = typer.Option(0.05, help="knee: first step gaining less than this per doubling"),
    seed: int = typer.Option(0),
    steps: str = typer.Option(
        "proportional",
        help="fixed: every size trains the largest size's steps; "
        "proportional: the config's epochs (more data = more steps, warned)",
    ),
    golden: Path = typer.Option(None, help="golden prompts answered by each size's model: golden_* metrics"),
) -> None:
    """Learning curve: SFT on nested subsets, metric vs data size, diminishing returns marked."""
    from weitiao.recipes import curve as tool

    r = tool.run(config, tool.parse_sizes(sizes), overrides or [], out, metric, higher_is_better, min_gain, seed,
                 steps, golden)  # fmt: skip
    t = Table(title=f"learning curve ({metric})")
    for col in ("rows", metric, "gain per doubling"):
        t.add_column(col)
    steps = {s["to"]: s for s in r["diminishing_returns"]["steps"]}
    for p in r["points"]:
        s = steps.get(p["size"], {})
        g = "" if not s else f"from 0: {s['from_zero']}" if "from_zero" in s else f"{s['gain_per_doubling']:+.1%}"
        t.add_row(str(p["size"]), f"{p[metric]:.4f}", g)
    console.print(t)
    knee = r["diminishing_returns"]["knee"]
    where_ = Path(r["points"][0]["out"]).parent
    console.print(f"knee: {knee if knee is not None else 'not reached'} ({r['diminishing_returns']['rule']}) · "
                  f"{where_ / 'curve.png'}")  # fmt: skip


def register(data_app: typer.Typer, app: typer.Typer) -> None:
    """Add the data-engineering commands to `weitiao data` and `weitiao curve` to the top level."""
    data_app.command("kb2sft")(kb2sft)
    data_app.command("mix")(mix)
    data_app.command("badcases")(badcases)
    data_app.command("repeat-negatives")(repeat_negatives)
    app.command("curve")(curve)
