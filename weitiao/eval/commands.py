"""`weitiao eval gen|golden` and `weitiao arena serve|rank|import|export` as two typer sub-apps.

weitiao eval gen --model demo --prompts heldout.jsonl --out eval.json
weitiao eval golden --run runs/sft --prompts golden.jsonl --select rougeL
weitiao arena serve --answers answers.jsonl --db arena.sqlite --port 8300
weitiao arena rank --db arena.sqlite --plot ratings.png --json ratings.json
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import typer
from rich.table import Table

from weitiao import progress
from weitiao.cli_options import options_from
from weitiao.errors import UserError
from weitiao.eval.gen import GenSettings

eval_app = typer.Typer(no_args_is_help=True, help="Evaluate replies: metrics over a prompt file, golden-set reports.")
arena_app = typer.Typer(no_args_is_help=True, help="Blind pairwise arena: vote page, Bradley–Terry/Elo ratings.")
console = progress.console()
DB = typer.Option(Path("arena.sqlite"), help="SQLite file for answers and votes")
REFUSAL_PATTERN = typer.Option(
    None,
    help="regex counted as a refusal (default: any of 抱歉|不能|无法|不行|不可以|不会帮|拒绝|不提供, "
    "so '不能熬夜哦' counts too)",
)


def _judge(
    url: str | None, model: str | None, cache_dir: str | None, rubric: Path | None = None, scale: str | None = None
):
    """The judge for --judge-url; a judge option without it is refused, not ignored."""
    if not url:
        named = (("--judge-model", model), ("--cache-dir", cache_dir), ("--rubric", rubric), ("--score-scale", scale))
        given = [f for f, v in named if v]
        if given:
            raise UserError(f"{given[0]}: applies to the judge; add --judge-url URL or drop it")
        return None
    from weitiao.teacher import Teacher

    return Teacher(
        url, model or "judge", cache_dir=cache_dir, temperature=0.0, max_tokens=256, role="judge", flag="--judge-url"
    )


def _metric_table(title: str, metrics: dict[str, float]) -> Table:
    t = Table(title=title)
    t.add_column("metric")
    t.add_column("value", justify="right")
    for k, v in metrics.items():
        t.add_row(k, f"{v:.4g}")
    return t


@eval_app.command("gen")
@options_from(GenSettings)
def gen(
    settings: GenSettings,
    model: str = typer.Option(None, help="base model dir, hub id or 'demo' (default: the adapter's base, else demo)"),
    prompts: Path = typer.Option(..., help="prompt file (chat rows; a last assistant turn is the reference)"),
    adapter: str = typer.Option(None, help="LoRA adapter dir or run dir"),
    quant: str = typer.Option(None, help="load the base as none|4bit|8bit (default: as the adapter was trained)"),
    refs: Path = typer.Option(None, help="reference file, row-aligned with --prompts (last assistant turn)"),
    refusal_pattern: str = REFUSAL_PATTERN,
    judge_url: str = typer.Option(None, help="OpenAI-compatible base URL of a judge, e.g. http://127.0.0.1:8000/v1"),
    judge_model: str = typer.Option(None, help="judge model name"),
    rubric: Path = typer.Option(None, help='text file with the judge rubric (must ask for JSON {"score": n})'),
    score_scale: str = typer.Option(
        None, help="the rubric's score range LO-HI (default 1-10), mapped to judge in [0, 1]; others are errors"
    ),
    cache_dir: str = typer.Option(None, help="judge reply cache"),
    out: Path = typer.Option(None, help="write metrics + every reply as JSON here"),
) -> None:
    """Generate replies to every prompt and report all metrics (table, and JSON with --out)."""
    from weitiao.eval import gen as tool
    from weitiao.eval.golden import duplicate_note, empty_note, reference_note
    from weitiao.eval.metrics import RUBRIC, check_rubric_scale, parse_scale, refusal_settings
    from weitiao.io import atomic_write_text, claim_outputs, read_text

    metric_settings = refusal_settings(refusal_pattern)  # a bad regex: one line, before any model loads
    judge = _judge(judge_url, judge_model, cache_dir, rubric, score_scale)
    scale = parse_scale(score_scale) if score_scale else (1, 10)
    claim_outputs([out] if out else [], [p for p in (prompts, refs, rubric) if p])
    ps = tool.read_prompts(prompts, refs)
    text = read_text(rubric) if rubric else RUBRIC  # a BOM dropped, bad bytes one line
    if judge is not None and not rubric and scale != (1, 10):
        raise UserError(f"--score-scale {score_scale}: the built-in rubric asks for 1-10; add --rubric FILE that asks "
                        f"for {scale[0]}-{scale[1]}")  # fmt: skip
    if judge is not None and not check_rubric_scale(text, scale, f"--rubric {rubric}"):
        if not score_scale:  # a "5 分完美 … 1 分很差" list was read as 1-10: its perfect 5 reported as 0.44
            raise UserError(
                f"--rubric {rubric}: names no score range (such as '1-5'); add --score-scale LO-HI, the "
                "lowest and highest score it asks for (1-10 is assumed only for the built-in rubric)"
            )
        console.print(f"[yellow]note:[/] --rubric {rubric} names no score range; the judge's scores are read as "
                      f"{scale[0]}-{scale[1]} (--score-scale)")  # fmt: skip
    with console.status(f"generating {len(ps)} replies"):
        rep = tool.run(ps, model, adapter, quant, settings, metric_settings, judge, text, scale=scale)
    name = f"{model or ('demo' if not adapter else 'base')}{' + ' + adapter if adapter else ''}"
    console.print(_metric_table(f"{len(ps)} prompts · {name}", rep.metrics))
    if "judge" in rep.metrics:
        raw = scale[0] + rep.metrics["judge"] * (scale[1] - scale[0])
        console.print(f"judge: scores {scale[0]}-{scale[1]} mapped to [0, 1]; mean {raw:.3g} on {scale[0]}-{scale[1]}")
    empty = empty_note({"the model": rep.rows})
    for note in filter(None, (reference_note(ps), duplicate_note(ps), empty)):
        console.print(f"[yellow]note:[/] {note}")
    if rep.judge_errors:
        console.print(f"[yellow]judge failed on {len(rep.judge_errors)} replies[/] (first: {rep.judge_errors[0]})")
    if out:
        atomic_write_text(out, json.dumps(rep.to_dict(), ensure_ascii=False, indent=1))
        console.print(f"wrote {out}")
    if judge is not None and len(rep.judge_errors) == len(ps):  # exit 0 read as "judged"; the replies are kept
        raise judge.answered_none(rep.judge_errors, "replies", f"; the replies are in {out}" if out else "")


@eval_app.command("golden")
def golden(
    run: Path = typer.Option(..., help="run dir of `weitiao sft` (train.out)"),
    prompts: Path = typer.Option(..., help="golden prompt file"),
    select: str = typer.Option("rougeL", help="metric that picks the recommended checkpoint (see SELECT)"),
    max_new_tokens: int = typer.Option(128),
    judge_url: str = typer.Option(None, help="OpenAI-compatible judge base URL"),
    judge_model: str = typer.Option(None),
    cache_dir: str = typer.Option(None, help="judge reply cache"),
    refusal_pattern: str = REFUSAL_PATTERN,
    out: Path = typer.Option(None, help="report path (default RUN/golden_report.html)"),
) -> None:
    """Answer the golden prompts at every checkpoint; write one HTML report with curves and a recommendation."""
    from weitiao.eval.golden import golden_report
    from weitiao.eval.metrics import refusal_settings

    settings = refusal_settings(refusal_pattern)  # a bad regex: one line, before any model loads
    judge = _judge(judge_url, judge_model, cache_dir)
    path, res = golden_report(run, prompts, select, max_new_tokens, judge, settings, out=out)
    t = Table(title=f"golden set · {len(res.steps)} checkpoints")
    cols = ["rougeL", "bleu", "judge", "distinct_2", "loop_rate", "stop_rate", "eval_loss"]
    cols = [c for c in cols if any(c in res.summary[s] for s in res.steps)]
    t.add_column("step", no_wrap=True)
    for c in cols:
        t.add_column(c, justify="right")
    for s in res.steps:
        mark = (" final" if res.labels[s] == "final" else "") + (" ★" if s == res.recommended else "")
        vals = [f"{res.summary[s][c]:.4g}" if c in res.summary[s] else "" for c in cols]
        t.add_row(f"{s}{mark}", *vals)
    console.print(t)
    for note in res.notes:
        console.print(f"[yellow]note:[/] {note}")
    console.print(f"recommended by {select}: {res.labels.get(res.recommended, 'none')} · lowest eval loss: "
                  f"{res.labels.get(res.lowest_eval, 'none')} · report {path}")  # fmt: skip


# ---------------------------------------------------------------------------------------------- arena


@arena_app.command("serve")
def arena_serve(
    db: Path = DB,
    answers: Path = typer.Option(None, help="pre-generated answers: rows {prompt, model, answer}"),
    models: str = typer.Option(None, help="live models: a=MODEL[:ADAPTER],b=... (answers generated at start)"),
    prompts: Path = typer.Option(None, help="with --models: the prompts to answer"),
    max_new_tokens: int = typer.Option(None, min=1, help="with --models: tokens per answer [default: 128]"),
    host: str = typer.Option("127.0.0.1"),
    port: int = typer.Option(8300),
    vote_interval: float = typer.Option(2.0, min=0, help="least seconds between two votes of one voter (0: off)"),
    votes_per_minute: int = typer.Option(10, min=0, help="votes one voter may cast a minute (0: off)"),
    address_votes_per_minute: int = typer.Option(30, min=0, help="votes a minute from one client address (0: off)"),
    pair_votes: int = typer.Option(50, min=0, help="votes one voter may cast on one pair of models (0: off)"),
    new_voters_per_hour: int = typer.Option(30, min=0, help="voter ids issued to one client address an hour (0: off)"),
) -> None:
    """Serve the blind-vote page: a prompt, two anonymous answers, A/B/tie/both-bad, names revealed after."""
    import uvicorn

    from weitiao.eval.arena.app import ArenaLimits, create_app
    from weitiao.eval.arena.store import ArenaStore, check_live, paired_prompts, pregenerate, read_answers

    if (answers is None) == (models is None):
        raise UserError("give either --answers FILE or --models a=MODEL[:ADAPTER],b=... with --prompts")
    if answers is not None and (prompts is not None or max_new_tokens is not None):
        raise UserError(
            "--prompts and --max-new-tokens apply to --models (answers made at start); "
            "with --answers they would be ignored: drop them"
        )
    rows = read_answers(answers) if answers else None  # a bad file leaves no new db behind
    if models is not None:  # a bad prompt file or model list likewise, read before the db is made
        check_live(models, prompts)
    new_db = not Path(db).exists()
    store = ArenaStore(db)  # before generating: a foreign --db is refused first
    try:
        rows = rows if rows is not None else pregenerate(models or "", prompts, max_new_tokens or 128)
    except BaseException:  # a model that fails to load or answer: the db this call made goes too
        if new_db:
            for f in (Path(db), Path(f"{db}-wal"), Path(f"{db}-shm")):
                f.unlink(missing_ok=True)
        raise
    store.serve_answers(rows)
    console.print(f"{store.count_answers()} answers · {len(store.models())} models · http://{host}:{port}/")
    if lone := paired_prompts(rows)[1]:
        console.print(f"[yellow]{lone} prompt{'s' * (lone > 1)} answered by one model only: never shown (a round "
                      "needs two answers to the same prompt text)[/]")  # fmt: skip
    aside, n_aside = store.set_aside()
    if n_aside:  # an earlier run's models or prompts: kept in the db with their votes, never shown again
        what = f"{len(aside)} model{'s' * (len(aside) > 1)} ({', '.join(aside)}), " if aside else ""
        console.print(
            f"[yellow]set aside {what}{n_aside} answers in {db} that the answers given now do not hold: "
            "kept with their votes, not shown to voters (`arena rank` says if it counts them)[/]"
        )
    limits = ArenaLimits(
        vote_interval_s=vote_interval,
        voter_votes_per_minute=votes_per_minute,
        address_votes_per_minute=address_votes_per_minute,
        pair_votes=pair_votes,
        new_voters_per_hour=new_voters_per_hour,
    )
    uvicorn.run(create_app(store, limits=limits), host=host, port=port, log_level="warning")


@arena_app.command("rank")
def arena_rank(
    db: Path = typer.Option(None, help="arena SQLite file"),
    battles: Path = typer.Option(None, help="FastChat-style battle JSON instead of --db"),
    anchor: str = typer.Option(None, help="model pinned at 1000 (default: mean rating 1000)"),
    rounds: int = typer.Option(100, min=40, help="bootstrap rounds (≥ 40: each 2.5% tail of the CI needs a draw)"),
    seed: int = typer.Option(0),
    as_json: Path = typer.Option(None, "--json", help="write ratings JSON here"),
    plot: Path = typer.Option(None, help="write a PNG of ratings with 95% CI bars here"),
    bootstrap: str = typer.Option("voters", help="what the CIs resample: voters (all their votes) or battles"),
    min_voter_votes: int = typer.Option(0, min=0, help="drop voters with fewer battles"),
    max_voter_share: float = typer.Option(
        1.0, min=0.0, max=1.0, help="drop voters with more than this share of all battles"
    ),
    exclude_voter: list[str] = typer.Option([], help="drop this voter's battles (repeatable)"),
    skip_set_aside: bool = typer.Option(
        False, help="leave out battles of models a later `arena serve` set aside (default: counted and named)"
    ),
    keep_named: bool = typer.Option(
        False, help="count battles marked anony false (voters saw the names; left out by default, as FastChat does)"
    ),
) -> None:
    """Bradley–Terry MLE ratings with bootstrap 95% CIs, CI-overlap rank and online Elo."""
    from weitiao.eval.arena.rank import filter_voters, load_battles, plot_ratings, rank
    from weitiao.eval.arena.store import ArenaStore
    from weitiao.io import atomic_write_text, claim_outputs

    if (db is None) == (battles is None):
        raise UserError("give either --db arena.sqlite or --battles battles.json")
    if skip_set_aside and battles:
        raise UserError("--skip-set-aside: only an arena --db knows which models were set aside; drop it")
    claim_outputs([p for p in (as_json, plot) if p], [db or battles], "--json/--plot")
    store = ArenaStore(db, create=False) if db else None
    rows = store.battles() if store else load_battles(battles)  # type: ignore[arg-type]
    if bootstrap not in ("voters", "battles"):
        raise UserError(f"--bootstrap {bootstrap}: expected voters or battles")
    named = sum(r.get("anony") is False for r in rows)  # FastChat's field: the voter saw the model names
    if named and not keep_named:
        rows = [r for r in rows if r.get("anony") is not False]
        console.print(f"[yellow]left out {named:,} battles marked anony false (the voter saw the model names; "
                      "FastChat's leaderboard counts anonymous votes only): --keep-named counts them[/]")  # fmt: skip
        if not rows:
            raise UserError("every battle is marked anony false (the voters saw the model names); pass --keep-named "
                            "to rank them")  # fmt: skip
    aside = store.set_aside()[0] if store else []
    aside_battles = {m: sum(m in (r["model_a"], r["model_b"]) for r in rows) for m in aside}
    if skip_set_aside:
        rows = [r for r in rows if r["model_a"] not in aside and r["model_b"] not in aside]
        if not rows:
            raise UserError("every battle has a set-aside model; rank without --skip-set-aside")
    known = set(store.models() if store else []) | {r[k] for r in rows for k in ("model_a", "model_b")}
    rows, dropped = filter_voters(rows, min_voter_votes, max_voter_share, exclude_voter)
    for voter, why in dropped.items():
        console.print(f"[yellow]dropped voter {voter}: {why}[/]")
    if not rows:
        raise UserError("the voter filters dropped every battle; loosen --min-voter-votes / --max-voter-share")
    res = rank(rows, anchor=anchor, rounds=rounds, seed=seed, by_voter=bootstrap == "voters")
    title = f"{res.n_battles:,} battles · {len(res.ratings)} models · {rounds} bootstrap rounds over {res.bootstrap}"
    t = Table(title=title + (f" ({res.n_voters:,})" if res.n_voters else ""))
    for c in ("rank", "model", "BT rating", "95% CI", "Elo (K=4)", "battles", "win rate"):
        t.add_column(c, justify="left" if c == "model" else "right")
    for r in res.ratings:
        name = r.model + (" (set aside)" if r.model in aside else "")
        ci = " – ".join(f"{x:.1f}" if math.isfinite(x) else "—" for x in (r.lower, r.upper))
        t.add_row(str(r.rank), name, f"{r.rating:.1f}", ci, f"{r.elo:.1f}", f"{r.battles:,}", f"{r.win_rate:.3f}")
    console.print(t)
    if aside:
        counts = ", ".join(f"{m} ({n:,} battles)" for m, n in aside_battles.items())
        console.print(f"[yellow]set aside by a later `arena serve` (not shown to voters; votes kept): {counts}; "
                      + ("their battles left out[/]" if skip_set_aside else
                         "their battles are counted above; --skip-set-aside leaves them out[/]"))  # fmt: skip
    unranked = sorted(known - {r.model for r in res.ratings})
    if unranked:
        console.print(f"[yellow]not ranked, no votes left after the voter filters: {', '.join(unranked)}[/]"
                      if dropped else f"[yellow]not ranked, no votes yet: {', '.join(unranked)}[/]")  # fmt: skip
    if res.unbounded:
        which = ", ".join(f"{m} ({' and '.join(f'{e} {n}' for e, n in ends.items())} of {rounds} rounds)"
                          for m, ends in res.unbounded.items())  # fmt: skip
        console.print(f"[yellow]CI unbounded (—) for {which}: in those bootstrap rounds the resampled votes put no "
                      "limit on the rating (a model without a win or a loss there, or groups that never met); collect "
                      "more votes with it" + ("; with the mean as anchor every rating moves with such a model's: "
                                              "--anchor MODEL measures from one model" if res.anchor is None else "")
                      + "[/]")  # fmt: skip
    if as_json:
        out = {**res.to_json(), "unranked": unranked, "dropped_voters": dropped, "set_aside": aside_battles,
               "set_aside_counted": not skip_set_aside, "named_left_out": 0 if keep_named else named}  # fmt: skip
        atomic_write_text(as_json, json.dumps(out, ensure_ascii=False, indent=1))
    if plot:
        plot_ratings(res, plot, [] if skip_set_aside else aside)
        console.print(f"wrote {plot}")


@arena_app.command("import")
def arena_import(
    battles: Path = typer.Argument(..., help="FastChat-style battle JSON (list of {model_a, model_b, winner, ...})"),
    db: Path = DB,
) -> None:
    """Add FastChat-style battles to the vote table."""
    from weitiao.eval.arena.rank import load_battles
    from weitiao.eval.arena.store import ArenaStore

    rows = load_battles(battles)  # before opening the db: a bad file leaves no new db behind
    if not rows:
        raise UserError(f"{battles}: no battles")
    added, skipped, restored = ArenaStore(db).import_battles(rows)
    note = f" ({skipped:,} already there, skipped)" if skipped else ""
    if restored:  # imported by a weitiao that kept only model_a, model_b, winner, judge, tstamp and the prompt
        note += f"; {restored:,} of those given back the fields an older import dropped (question_id, ...)"
    console.print(f"imported {added:,} battles into {db}{note}")


@arena_app.command("export")
def arena_export(out: Path = typer.Argument(..., help="battle JSON to write"), db: Path = DB) -> None:
    """Write every vote as FastChat-style battle JSON."""
    from weitiao.eval.arena.store import ArenaStore
    from weitiao.io import atomic_write_text, claim_outputs

    claim_outputs([out], [db], "OUT")
    rows = ArenaStore(db, create=False).battles()
    if not rows:  # an empty list is no export: say so, as `arena import` does for a file without battles
        raise UserError(f"{db}: no votes yet; nothing written to {out}")
    atomic_write_text(out, json.dumps(rows, ensure_ascii=False, indent=1))
    console.print(f"wrote {len(rows):,} battles to {out}")
