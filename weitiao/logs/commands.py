"""`weitiao logs ...`: behavior logs → preference pairs (dwell, chat), and synthetic logs to test them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from weitiao import progress
from weitiao.cli_options import Flag, options_from
from weitiao.errors import UserError

if TYPE_CHECKING:
    from weitiao.logs.engine import PairsRun

app = typer.Typer(no_args_is_help=True, help="Behavior logs → DPO preference pairs (SQL on DuckDB or Spark).")
console = progress.console()


@dataclass
class PairsFlags:
    """The options `logs dwell` and `logs chat` share: config overrides, outputs, engine."""

    sets: list[str] | None = None
    """Override one config key, e.g. --set rel_margin=0.2 (repeatable)."""
    out: Path | None = None
    """Pairs JSONL, report.json/.html beside it (default: runs/logs/KIND-PROFILE/pairs.jsonl)."""
    truth: Path | None = None
    """Hidden quality (id, quality) to measure pair precision."""
    print_sql: bool = False
    """Print the pairing SQL (runs nothing without EVENTS)."""
    show_config: bool = False
    """Print the effective config as YAML."""
    as_json: bool = False
    """Print the report as JSON."""
    engine: str = "duckdb"
    """duckdb (in process) | spark (Spark SQL: local[*] or --spark-master)."""
    spark_master: str | None = None
    """Spark master URL for --engine spark: local[*], local[N], spark://host:7077, yarn, k8s://…"""
    threads: int | None = None
    """DuckDB threads (default: all cores)."""
    progress: bool = True
    """Show the progress bar."""


PAIRS_FLAGS = {
    "sets": Flag(("--set",)),
    "as_json": Flag(("--json",)),
    "print_sql": Flag(("--print-sql",)),
    "show_config": Flag(("--show-config",)),
}


def _engine(f: PairsFlags) -> Any:
    """The engine object for the flags; a flag the chosen engine does not use is refused, not ignored."""
    from weitiao.logs.engine import DuckEngine

    if f.engine == "duckdb":
        if f.spark_master is not None:
            raise UserError("--spark-master: only used with --engine spark")
        return DuckEngine(f.threads)
    if f.threads is not None:
        raise UserError("--threads: DuckDB only; for Spark give the cores in the master URL, e.g. local[4]")
    from weitiao.logs.spark import SparkEngine

    return SparkEngine.start(f.spark_master or "local[*]")


def _config(kind: str, profile: str, f: PairsFlags, events: str | None, what: str, **run_options: Any) -> Any:
    """The effective config; prints it and/or the SQL (in the engine's dialect) when asked.

    None when there is nothing more to do: no EVENTS, and only printing was asked for; an option that only a run
    uses (`run_options` are the command's own, by flag name) is then refused, not ignored."""
    from weitiao.logs import chat, dwell
    from weitiao.logs.config import dump_config, load_profile
    from weitiao.logs.engine import ENGINES

    if f.engine not in ENGINES:
        raise UserError(f"--engine {f.engine!r}: use {' or '.join(ENGINES)}")
    cfg = load_profile(kind, profile, f.sets or [])
    if f.show_config:
        print(dump_config(cfg), end="")
    if f.print_sql:
        print((dwell if kind == "dwell" else chat).sql_script(cfg, f.engine), end="")
    if events is None:
        if f.print_sql or f.show_config:
            given = {"--out": f.out, "--truth": f.truth, "--json": f.as_json or None, "--threads": f.threads,
                     "--spark-master": f.spark_master, **run_options}  # fmt: skip
            if unused := [flag for flag, v in given.items() if v is not None]:
                raise UserError(f"{', '.join(unused)}: only used when pairing EVENTS; give the events file too, "
                                "or drop them with --print-sql / --show-config alone")  # fmt: skip
            return None
        raise UserError(f"EVENTS: missing; give {what} (or --print-sql / --show-config alone)")
    return cfg


def _out(f: PairsFlags, kind: str, profile: str) -> Path:
    return f.out or Path(f"runs/logs/{kind}-{profile}/pairs.jsonl")


def _claim(f: PairsFlags, kind: str, profile: str, inputs: list) -> None:
    """Before any work: the pairs and report files may replace only our own earlier ones, never an input."""
    from glob import glob

    from weitiao.io import claim_outputs
    from weitiao.logs.report import output_paths

    files = [p for i in inputs if i is not None for p in (glob(str(i)) or [i])]
    claim_outputs(output_paths(_out(f, kind, profile)).values(), files)


def _finish(run: PairsRun, f: PairsFlags) -> None:
    """Report, write pairs + report files, print the summary (or the report as JSON); no pair is an error, after
    the report that says where every event went (as kb2sft and rules sft/dpo)."""
    import json

    from weitiao.logs.report import build_report, write_outputs

    rep = build_report(run, f.truth)
    paths = write_outputs(run, _out(f, run.kind, run.cfg.profile), rep)
    if f.as_json:
        print(json.dumps(rep, ensure_ascii=False, indent=2))
    else:
        print_report(rep)
    if not rep["pairs"]:
        raise UserError(f"{paths['pairs']}: no preference pair from {rep['events']:,} events; where they went: "
                        f"{paths['report_html']} (or --show-config to loosen the rules)")  # fmt: skip
    if not f.as_json:
        console.print(f"[green]wrote[/] {rep['pairs']:,} preference pairs → {paths['pairs']} (prompt/chosen/rejected)")
        console.print(f"[green]wrote[/] report → {paths['report_html']}, {paths['report_json']}")


def print_report(rep: dict[str, Any]) -> None:
    """Console summary: the notes, one line per ledger (total = its parts), then pairs per source with precision."""
    for note in rep.get("notes", []):
        console.print(f"note: {note}", markup=False, highlight=False)
    for name, counts in rep["ledgers"].items():
        parts = " + ".join(f"{rule} {n:,}" for rule, n in counts.items() if n)
        console.print(f"[bold]{name}[/] {rep['ledger_totals'][name]['total']:,} = {parts or '0'}", highlight=False)
    prec = rep.get("precision", {})
    t = Table(title=f"{rep['pairs']:,} pairs in {rep['contexts_with_pairs']:,} contexts", title_justify="left")
    for col in ("source", "pairs", "mean confidence") + (("precision vs truth",) if prec else ()):
        t.add_column(col, justify="left" if col == "source" else "right")
    for s, v in rep["sources"].items():
        extra = (f"{prec[s]['precision']:.3f}",) if prec else ()
        t.add_row(s, f"{v['pairs']:,}", f"{v['mean_confidence']:.3f}", *extra)
    for k, v in prec.items():
        if k.startswith("signal:") and k[7:] not in rep["sources"]:  # the explicit sub-signals
            t.add_row(f"  {k[7:]}", f"{v['pairs']:,}", "", f"{v['precision']:.3f}")
    if prec:
        t.add_row("[bold]all[/]", f"{rep['pairs']:,}", "", f"[bold]{prec['all']['precision']:.3f}[/]")
    console.print(t)


@app.command("dwell")
@options_from(PairsFlags, PAIRS_FLAGS)
def dwell_cmd(
    f: PairsFlags,
    events: str = typer.Argument(None, help="view events: .parquet/.csv/.jsonl (globs; Spark: any URI it reads)"),
    content: str = typer.Option(None, help="content table (content_id, context, text, ...); default: in EVENTS"),
    profile: str = typer.Option("zhihu", help="xhs (short image notes) | zhihu (long answers) | my.yaml"),
) -> None:
    """Content-site dwell time → pairs: filter, normalize, compare items of one context past a margin."""
    from weitiao.logs import dwell

    cfg = _config("dwell", profile, f, events, "a view-events file", **{"--content": content})
    if cfg is not None:
        _claim(f, "dwell", cfg.profile, [events, content, f.truth])
        _finish(dwell.run(events, cfg, content, progress=f.progress and not f.as_json, engine=_engine(f)), f)


@app.command("chat")
@options_from(PairsFlags, PAIRS_FLAGS)
def chat_cmd(
    f: PairsFlags,
    events: str = typer.Argument(None, help="user events (response_id, event, ts, value)"),
    responses: str = typer.Option(None, help="responses (response_id, session_id, turn, ts, prompt, response)"),
    profile: str = typer.Option("chat", help="chat | my.yaml"),
) -> None:
    """Chat-site thumbs, share/copy, regenerate, follow-up, dwell → pairs by signal strength.

    Thumbs: the last click; 👍 and 👎 at the same latest ts count as neither (no row order breaks the tie).

    --set cross_session.enabled=true also pairs replies across sessions."""
    from weitiao.logs import chat

    cfg = _config("chat", profile, f, events, "a user-events file", **{"--responses": responses})
    if cfg is None:
        return
    if responses is None:
        raise UserError("--responses: missing; the responses file holds prompts and replies")
    _claim(f, "chat", cfg.profile, [events, responses, f.truth])
    _finish(chat.run(events, responses, cfg, progress=f.progress and not f.as_json, engine=_engine(f)), f)


@app.command("synth")
def synth_cmd(
    kind: str = typer.Option(..., help="dwell | chat"),
    n: int = typer.Option(100_000, "--n", help="events to generate (chat: about this many)"),
    style: str = typer.Option(None, help="dwell site style: xhs | zhihu [zhihu]"),
    out: Path = typer.Option(None, help="output directory [runs/logs/synth-KIND]"),
    seed: int = typer.Option(0, help="random seed"),
    fmt: str = typer.Option("parquet", "--format", help="parquet | csv | jsonl"),
    progress: bool = typer.Option(True, help="show the progress bar"),
) -> None:
    """Synthetic logs with hidden true quality (truth file) to measure pair precision."""
    from weitiao.logs.synth import synth_chat, synth_dwell

    if fmt not in ("parquet", "csv", "jsonl"):
        raise UserError(f"--format {fmt!r}: use parquet, csv or jsonl")
    if kind == "dwell":
        style = style or "zhihu"
        out = out or Path(f"runs/logs/synth-dwell-{style}")
        paths = synth_dwell(out, n, style, seed, fmt, progress)
        nxt = f"weitiao logs dwell {paths['events']} --content {paths['content']} --profile {style}"
    elif kind == "chat":
        if style is not None:  # one chat site: the style would be silently ignored
            raise UserError(f"--style {style}: dwell only (a content site's style); drop it for --kind chat")
        out = out or Path("runs/logs/synth-chat")
        paths = synth_chat(out, n, seed, fmt, progress)
        nxt = f"weitiao logs chat {paths['events']} --responses {paths['responses']}"
    else:
        raise UserError(f"--kind {kind!r}: use dwell or chat")
    for name, p in paths.items():
        console.print(f"[green]wrote[/] {name:<9} {p}")
    console.print(f"next: {nxt} --truth {paths['truth']}")
