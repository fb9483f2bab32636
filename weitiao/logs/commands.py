"""`weitiao logs ...`: behavior logs → preference pairs (dwell, chat), and synthetic logs to test them."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console

from weitiao.errors import UserError

if TYPE_CHECKING:
    from weitiao.logs.engine import PairsRun

app = typer.Typer(no_args_is_help=True, help="Behavior logs → DPO preference pairs (SQL on DuckDB or Spark).")
console = Console()

SET_HELP = "override one config key, e.g. --set rel_margin=0.2 (repeatable)"
ENGINE_HELP = "duckdb (in process) | spark (Spark SQL: local[*] or --spark-master)"
MASTER_HELP = "Spark master URL for --engine spark: local[*], local[N], spark://host:7077, yarn, k8s://…"


def _engine(engine: str, master: str | None, threads: int | None) -> Any:
    """The engine object for the flags; a flag the chosen engine does not use is refused, not ignored."""
    from weitiao.logs.engine import DuckEngine

    if engine == "duckdb":
        if master is not None:
            raise UserError("--spark-master: only used with --engine spark")
        return DuckEngine(threads)
    if threads is not None:
        raise UserError("--threads: DuckDB only; for Spark give the cores in the master URL, e.g. local[4]")
    from weitiao.logs.spark import SparkEngine

    return SparkEngine.start(master or "local[*]")


def _finish(run: PairsRun, out: Path, truth: Path | None, as_json: bool) -> None:
    """Report, write pairs + report files, print the summary (or the report as JSON)."""
    import json

    from weitiao.logs.report import build_report, print_report, write_outputs

    rep = build_report(run, truth)
    paths = write_outputs(run, out, rep)
    if as_json:
        print(json.dumps(rep, ensure_ascii=False, indent=2))
        return
    print_report(rep, console)
    console.print(f"[green]wrote[/] {rep['pairs']:,} preference pairs → {paths['pairs']} (prompt/chosen/rejected)")
    console.print(f"[green]wrote[/] report → {paths['report_html']}, {paths['report_json']}")


def _config(kind: str, profile: str, sets: list[str] | None, show_config: bool, print_sql: bool, engine: str) -> Any:
    """The effective config; prints it and/or the SQL (in the engine's dialect) when asked."""
    from weitiao.logs import chat, dwell
    from weitiao.logs.config import dump_config, load_profile
    from weitiao.logs.engine import ENGINES

    if engine not in ENGINES:
        raise UserError(f"--engine {engine!r}: use {' or '.join(ENGINES)}")
    cfg = load_profile(kind, profile, sets or [])
    if show_config:
        print(dump_config(cfg), end="")
    if print_sql:
        print((dwell if kind == "dwell" else chat).sql_script(cfg, engine), end="")
    return cfg


@app.command("dwell")
def dwell_cmd(
    events: str = typer.Argument(None, help="view events: .parquet/.csv/.jsonl (globs; Spark: any URI it reads)"),
    content: str = typer.Option(None, help="content table (content_id, context, text, ...); default: in EVENTS"),
    profile: str = typer.Option("zhihu", help="xhs (short image notes) | zhihu (long answers) | my.yaml"),
    sets: list[str] = typer.Option(None, "--set", help=SET_HELP),
    out: Path = typer.Option(None, help="pairs JSONL (report.json/.html beside it) [runs/logs/dwell-PROFILE/]"),
    truth: Path = typer.Option(None, help="hidden quality (id, quality) to measure pair precision"),
    print_sql: bool = typer.Option(False, "--print-sql", help="print the pairing SQL (runs nothing without EVENTS)"),
    show_config: bool = typer.Option(False, "--show-config", help="print the effective config as YAML"),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
    engine: str = typer.Option("duckdb", help=ENGINE_HELP),
    spark_master: str = typer.Option(None, "--spark-master", help=MASTER_HELP),
    threads: int = typer.Option(None, help="DuckDB threads [all cores]"),
    progress: bool = typer.Option(True, help="show the progress bar"),
) -> None:
    """Content-site dwell time → pairs: filter, normalize, compare items of one context past a margin."""
    from weitiao.logs import dwell

    cfg = _config("dwell", profile, sets, show_config, print_sql, engine)
    if events is None:
        if print_sql or show_config:
            return
        raise UserError("EVENTS: missing; give a view-events file (or --print-sql / --show-config alone)")
    eng = _engine(engine, spark_master, threads)
    run = dwell.run(events, cfg, content, progress=progress and not as_json, engine=eng)
    _finish(run, out or Path(f"runs/logs/dwell-{cfg.profile}/pairs.jsonl"), truth, as_json)


@app.command("chat")
def chat_cmd(
    events: str = typer.Argument(None, help="user events (response_id, event, ts, value)"),
    responses: str = typer.Option(None, help="responses (response_id, session_id, turn, ts, prompt, response)"),
    profile: str = typer.Option("chat", help="chat | my.yaml"),
    sets: list[str] = typer.Option(None, "--set", help=SET_HELP + "; cross_session.enabled=true pairs across sessions"),
    out: Path = typer.Option(None, help="pairs JSONL (report.json/.html beside it) [runs/logs/chat-PROFILE/]"),
    truth: Path = typer.Option(None, help="hidden quality (id, quality) to measure pair precision"),
    print_sql: bool = typer.Option(False, "--print-sql", help="print the pairing SQL (runs nothing without EVENTS)"),
    show_config: bool = typer.Option(False, "--show-config", help="print the effective config as YAML"),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
    engine: str = typer.Option("duckdb", help=ENGINE_HELP),
    spark_master: str = typer.Option(None, "--spark-master", help=MASTER_HELP),
    threads: int = typer.Option(None, help="DuckDB threads [all cores]"),
    progress: bool = typer.Option(True, help="show the progress bar"),
) -> None:
    """Chat-site thumbs, share/copy, regenerate, follow-up, dwell → pairs by signal strength."""
    from weitiao.logs import chat

    cfg = _config("chat", profile, sets, show_config, print_sql, engine)
    if events is None:
        if print_sql or show_config:
            return
        raise UserError("EVENTS: missing; give a user-events file (or --print-sql / --show-config alone)")
    if responses is None:
        raise UserError("--responses: missing; the responses file holds prompts and replies")
    eng = _engine(engine, spark_master, threads)
    run = chat.run(events, responses, cfg, progress=progress and not as_json, engine=eng)
    _finish(run, out or Path(f"runs/logs/chat-{cfg.profile}/pairs.jsonl"), truth, as_json)


@app.command("synth")
def synth_cmd(
    kind: str = typer.Option(..., help="dwell | chat"),
    n: int = typer.Option(100_000, "--n", help="events to generate (chat: about this many)"),
    style: str = typer.Option("zhihu", help="dwell site style: xhs | zhihu"),
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
        out = out or Path(f"runs/logs/synth-dwell-{style}")
        paths = synth_dwell(out, n, style, seed, fmt, progress)
        nxt = f"weitiao logs dwell {paths['events']} --content {paths['content']} --profile {style}"
    elif kind == "chat":
        out = out or Path("runs/logs/synth-chat")
        paths = synth_chat(out, n, seed, fmt, progress)
        nxt = f"weitiao logs chat {paths['events']} --responses {paths['responses']}"
    else:
        raise UserError(f"--kind {kind!r}: use dwell or chat")
    for name, p in paths.items():
        console.print(f"[green]wrote[/] {name:<9} {p}")
    console.print(f"next: {nxt} --truth {paths['truth']}")
