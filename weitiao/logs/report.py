"""What a pairing run produced: preference JSONL, a report (JSON + HTML); `weitiao logs` prints its summary.

The report holds the ledgers (every event / item or response / candidate pair under one rule, with a
check that they add up), pairs per source and per context, the effective config, and, given a truth
file (id, quality) such as `logs synth` writes, pair precision per source: the share of pairs whose
chosen item is truly better.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from weitiao.errors import UserError
from weitiao.io import atomic_write_text, write_jsonl
from weitiao.logs import chat, dwell
from weitiao.logs.engine import Column, DuckEngine, PairsRun, open_table
from weitiao.reports import page

RULE_ORDER = {"dwell": (dwell.EVENT_RULES, dwell.CANDIDATE_RULES), "chat": (chat.EVENT_RULES, chat.CANDIDATE_RULES)}


def ledgers(run: PairsRun) -> dict[str, dict[str, int]]:
    """{ledger: {rule: count}} in pipeline order; rules with no rows are listed with 0."""
    rows = run.con.execute("SELECT ledger, rule, n FROM wt_ledger").fetchall()
    events_order, cand_order = RULE_ORDER[run.kind]
    unit = "items" if run.kind == "dwell" else "responses"
    unit_order = tuple(
        r for r in events_order if r in ("min_views", "single_in_context", "alone", "unpaired", "paired")
    )
    if run.kind == "dwell":  # an item of the content file no kept view reached: no events of its own to count
        unit_order = ("no_kept_views", *unit_order)
    unit_order = ("duplicate", *unit_order)  # a responses or content row delivered twice: counted once
    out: dict[str, dict[str, int]] = {}
    for name, order in (("events", events_order), (unit, unit_order), ("candidates", cand_order)):
        got = {rule: int(n) for led, rule, n in rows if led == name}
        out[name] = {r: got.pop(r, 0) for r in order} | got
    return out


def check_ledgers(run: PairsRun, led: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    """Totals per ledger next to what they must equal; raises AssertionError when one does not add up."""
    unit, table = ("items", "wt_content") if run.kind == "dwell" else ("responses", "wt_responses")
    rows = run.sizes.get("content" if run.kind == "dwell" else "responses", run.sizes[table])  # rows read
    expect = {"events": run.events, unit: rows, "candidates": run.sizes["wt_candidates"]}
    totals = {k: {"total": sum(led[k].values()), "expected": int(v)} for k, v in expect.items()}
    for k, t in totals.items():
        if t["total"] != t["expected"]:  # a pipeline bug, never the user's input
            raise AssertionError(f"{k} ledger adds up to {t['total']}, not {t['expected']}")
    return totals


def precision(run: PairsRun, truth: str | Path) -> dict[str, dict[str, float]]:
    """Per source (and per chat signal): pairs, correct (chosen truly better), precision."""
    cols = [Column("id", "id", "item or response id", unique=True), Column("quality", "number", "hidden true quality")]
    # read here, next to the pairs, whatever engine made them
    open_table(DuckEngine(con=run.con), "truth", truth, cols)
    keys = ["source"] + (["signal"] if run.kind == "chat" else [])
    out: dict[str, dict[str, float]] = {}
    for key in keys + ["'all'"]:
        rows = run.con.execute(
            f"""SELECT {key} AS k, count(*) AS pairs, count(*) FILTER (WHERE tc.quality > tr.quality) AS correct,
              count(*) FILTER (WHERE tc.quality IS NULL OR tr.quality IS NULL) AS unknown
            FROM wt_pairs p LEFT JOIN truth tc ON tc.id = p.chosen_id LEFT JOIN truth tr ON tr.id = p.rejected_id
            GROUP BY 1 ORDER BY 1"""
        ).fetchall()
        for k, pairs, correct, unknown in rows:
            if unknown:
                raise UserError(f"{truth}: id: {unknown} paired ids have no quality in the truth file")
            name = k if key != "signal" else f"signal:{k}"
            out[name] = {"pairs": pairs, "correct": correct, "precision": round(correct / pairs, 4) if pairs else 0.0}
    return out


def build_report(run: PairsRun, truth: str | Path | None = None, top: int = 20) -> dict[str, Any]:
    """Everything worth looking at after a run, as plain JSON-able data."""
    con = run.con
    led = ledgers(run)
    sources = {
        s: {"pairs": p, "mean_confidence": round(c, 4)}
        for s, p, c in con.execute(
            "SELECT source, count(*), avg(confidence) FROM wt_pairs GROUP BY 1 ORDER BY 2 DESC"
        ).fetchall()
    }
    n_ctx, top_rows = (
        con.execute("SELECT count(DISTINCT context) FROM wt_pairs").fetchone()[0],
        con.execute(
            f"SELECT context, count(*) FROM wt_pairs GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT {int(top)}"
        ).fetchall(),
    )
    pairs = con.execute("SELECT count(*) FROM wt_pairs").fetchone()[0]
    rep: dict[str, Any] = {
        "kind": run.kind,
        "profile": run.cfg.profile,
        "inputs": run.inputs,
        "events": run.events,
        "pairs": pairs,
        "ledgers": led,
        "ledger_totals": check_ledgers(run, led),
        "sources": sources,
        "contexts_with_pairs": n_ctx,
        "top_contexts": {str(c): k for c, k in top_rows},
        "seconds": {k: round(v, 3) for k, v in run.seconds.items()},
        "config": run.cfg.model_dump(mode="json"),
        "notes": run.notes,
    }
    if run.kind == "chat":
        rep["scopes"] = dict(con.execute("SELECT scope, count(*) FROM wt_pairs GROUP BY 1 ORDER BY 1").fetchall())
    if truth is not None:
        rep["precision"] = precision(run, truth)
        rep["truth"] = str(truth)
    return rep


def pair_rows(run: PairsRun) -> list[dict[str, Any]]:
    """wt_pairs as preference rows; a chat pair with earlier turns gets its prompt as a message list."""
    res = run.con.execute("SELECT * FROM wt_pairs ORDER BY context, chosen_id, rejected_id")
    cols = [d[0] for d in res.description]
    out = [dict(zip(cols, row)) for row in res.fetchall()]
    for r in out:
        history = r.pop("history", None)
        if history:
            msgs = []
            for turn in history:
                msgs += [{"role": "user", "content": turn["user"]}, {"role": "assistant", "content": turn["assistant"]}]
            r["prompt"] = msgs + [{"role": "user", "content": r["prompt"]}]
    return out


def output_paths(out: str | Path) -> dict[str, Path]:
    """The pairs JSONL at `out`, report.json and report.html beside it."""
    out = Path(out)
    return {"pairs": out, "report_json": out.with_name("report.json"), "report_html": out.with_name("report.html")}


def write_outputs(run: PairsRun, out: str | Path, report: dict[str, Any]) -> dict[str, Path]:
    """Pairs JSONL at `out`, report.json and report.html beside it; every file written atomically."""
    paths = output_paths(out)
    write_jsonl(paths["pairs"], pair_rows(run))
    atomic_write_text(paths["report_json"], json.dumps(report, ensure_ascii=False, indent=2) + "\n")
    samples = run.con.execute("SELECT * EXCLUDE (prompt) FROM wt_pairs ORDER BY confidence DESC LIMIT 5").fetchall()
    cols = [d[0] for d in run.con.description]
    atomic_write_text(paths["report_html"], render_html(report, [dict(zip(cols, s)) for s in samples]))
    return paths


def _fmt(x: float | None) -> str:
    return "" if x is None else f"{x:.3f}"


def _bars(counts: dict[str, int]) -> str:
    total = sum(counts.values()) or 1
    rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td class=n>{v:,}</td><td class=n>{100 * v / total:.1f}%</td>"
        f"<td><div class=bar style='width:{300 * v / total:.0f}px'></div></td></tr>"
        for k, v in counts.items()
    )
    return f"<table>{rows}<tr><th>total</th><th class=n>{sum(counts.values()):,}</th></tr></table>"


def render_html(rep: dict[str, Any], samples: list[dict[str, Any]]) -> str:
    """A self-contained HTML page: ledgers as bars, sources with precision, top contexts, sample pairs."""
    prec = rep.get("precision", {})
    src_rows = "".join(
        f"<tr><td>{html.escape(s)}</td><td class=n>{v['pairs']:,}</td><td class=n>{v['mean_confidence']:.3f}</td>"
        f"<td class=n>{_fmt(prec.get(s, {}).get('precision'))}</td></tr>"
        for s, v in rep["sources"].items()
    )
    ledgers_html = "".join(f"<h3>{html.escape(k)}</h3>{_bars(v)}" for k, v in rep["ledgers"].items())
    sample_html = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))[:160]}</td>" for v in s.values()) + "</tr>" for s in samples
    )
    heads = "".join(f"<th>{html.escape(k)}</th>" for k in (samples[0] if samples else {}))
    cfg = html.escape(json.dumps(rep["config"], ensure_ascii=False, indent=1))
    title = f"weitiao logs {rep['kind']} · profile {rep['profile']}"
    body = f"""<h1>{html.escape(title)}</h1>
<p>{rep["events"]:,} events → <b>{rep["pairs"]:,} pairs</b> in {rep["contexts_with_pairs"]:,} contexts.
Inputs: {html.escape(", ".join(rep["inputs"].values()))}</p>
{"".join(f"<p class=note>note: {html.escape(n)}</p>" for n in rep.get("notes", []))}
<h2>Pairs per source</h2>
<table><tr><th>source</th><th>pairs</th><th>mean confidence</th><th>precision vs truth</th></tr>
{src_rows}</table>
<h2>Ledgers (each adds up to its input)</h2>{ledgers_html}
<h2>Top contexts</h2>{_bars(rep["top_contexts"])}
<h2>Highest-confidence pairs</h2><table><tr>{heads}</tr>{sample_html}</table>
<h2>Config</h2><pre>{cfg}</pre>
"""
    return page(title, body, "body{font-size:14px}td,th{padding:2px 8px}.bar{background:#4a7;height:10px}")
