"""Dwell logs → preference pairs: weitiao's DuckDB SQL vs a straightforward pandas version of the same rules.

    .venv/bin/python benchmarks/logs_pairs.py                          # 10 M events, zhihu profile
    .venv/bin/python benchmarks/logs_pairs.py --n 1000000 --profile xhs --json bench.json

Builds once into a temp dir (not timed): `logs synth` events.parquet + content.parquet. Each engine
then runs in its own subprocess (own peak RSS), in `--repeat` interleaved rounds (medians compared),
on the same files and profile, timed from opening the Parquet files to the pairs (ids, source, prompt
and texts) and the event ledger in each engine's own memory (a DuckDB table, a pandas DataFrame);
exporting them (JSONL, or DuckDB → pandas for the comparison) is left out of both. DuckDB's time
includes its column checks (Parquet statistics answer most of them).
The pandas version is written the way one would write it first: read, merge content, boolean masks,
groupby/transform, a self-merge on context for candidate pairs, np.select for the rules. Both must
produce the same pairs and ledger (checked; float rounding may flip a pair sitting exactly on a margin).
Targets from issue 8: DuckDB ≥ 1 M events/s and ≥ 5× pandas.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def pandas_pairs(events: Path, content: Path, cfg) -> tuple:
    """The dwell rules of weitiao/logs/dwell.py in pandas; returns (pairs DataFrame, events ledger dict)."""
    import numpy as np
    import pandas as pd

    ev = pd.read_parquet(events)
    for col in ("user_id", "ts"):
        if col not in ev:
            ev[col] = None
    ev = ev[["content_id", "dwell_s", "position", "liked", "collected", "user_id", "ts"]]
    ct = pd.read_parquet(content)
    ct["expected_s"] = cfg.base_s + ct.length_chars / cfg.read_cps + ct.images * cfg.image_s
    # 1. drop rules per view
    v = ev.merge(ct[["content_id", "expected_s", "length_chars"]], on="content_id", how="left")
    idle = v.dwell_s > cfg.max_dwell_s
    if cfg.idle_ratio:
        idle |= v.dwell_s > cfg.idle_ratio * v.expected_s
    known = v.user_id.notna() & v.ts.notna()  # a row repeated whole, user and time given: delivered twice
    copy = known & v.duplicated(["content_id", "user_id", "ts", "dwell_s", "position", "liked", "collected"])
    rule = pd.Series(
        np.select(
            [v.expected_s.isna(), copy, v.dwell_s < cfg.min_dwell_s, idle],
            ["unknown_content", "duplicate", "accidental", "idle"],
            "",
        ),
        index=v.index,
    )
    if cfg.one_view_per_user:
        order = v.assign(ok=rule == "").sort_values(["ts", "dwell_s"], kind="stable")
        repeat = order.duplicated(["user_id", "content_id", "ok"]) & order.ok
        rule[repeat[repeat].index] = "repeat_view"
    ledger = rule[rule != ""].value_counts().to_dict()
    k = v[rule == ""].copy()
    k["pos"] = k.position.clip(upper=cfg.max_position)
    k["engaged"] = (k.liked.astype(int) + k.collected.astype(int)) > 0
    # 2. position factors
    factor = 1.0
    if cfg.position_correction:
        mean = k.groupby("content_id").dwell_s.transform("mean")
        ok = mean > 0
        factor = k.pos.map((k.dwell_s[ok] / mean[ok]).groupby(k.pos[ok]).mean()).fillna(1.0)
    # 3. item scores
    weight = {"none": 1.0, "per_char": 1000.0 / k.length_chars.clip(lower=1), "completion": 1.0 / k.expected_s}
    k["value"] = k.dwell_s * weight[cfg.normalize] / factor
    items = k.groupby("content_id").agg(
        views=("value", "size"), score=("value", "mean"), score_var=("value", "var"), engagement=("engaged", "mean")
    )
    items["score_var"] = items.score_var.fillna(0.0)
    items = items.join(ct.set_index("content_id")[["context", "length_chars", "images"]]).reset_index()
    # 4. candidate pairs within a context
    q = items[items.views >= cfg.min_views]
    c = q.merge(q, on="context", suffixes=("_a", "_b"))
    c = c[c.content_id_a < c.content_id_b].reset_index(drop=True)
    s_hi, s_lo = np.maximum(c.score_a, c.score_b), np.minimum(c.score_a, c.score_b)
    e_hi, e_lo = np.maximum(c.engagement_a, c.engagement_b), np.minimum(c.engagement_a, c.engagement_b)
    z_dwell = (c.score_a - c.score_b).abs() / np.sqrt(c.score_var_a / c.views_a + c.score_var_b / c.views_b + 1e-12)
    pooled = (c.engagement_a * c.views_a + c.engagement_b * c.views_b) / (c.views_a + c.views_b)
    z_eng = (c.engagement_a - c.engagement_b).abs() / np.sqrt(
        pooled * (1 - pooled) * (1.0 / c.views_a + 1.0 / c.views_b) + 1e-12
    )
    conds, names = [], []
    if cfg.similar_length is not None:
        conds.append((c.length_chars_a - c.length_chars_b).abs() > cfg.similar_length * np.maximum(
            c.length_chars_a, c.length_chars_b))  # fmt: skip
        names.append("not_similar")
    if cfg.similar_images is not None:
        conds.append((c.images_a - c.images_b).abs() > cfg.similar_images)
        names.append("not_similar")
    if cfg.engagement_first:
        conds.append(
            (e_hi > e_lo)
            & (e_hi >= e_lo * (1 + cfg.engagement_rel_margin))
            & (e_hi - e_lo >= cfg.engagement_abs_margin)
            & (z_eng >= cfg.engagement_min_z)
        )
        names.append("engagement")
        conds.append(e_hi > cfg.engagement_quiet)
        names.append("engagement_tie")
    conds.append((s_hi <= s_lo) | (s_hi < s_lo * (1 + cfg.rel_margin)) | (s_hi - s_lo < cfg.abs_margin))
    names.append("below_margin")
    conds.append(z_dwell < cfg.min_z)
    names.append("not_significant")
    c["outcome"] = np.select(conds, names, "dwell")
    by_eng = c.outcome == "engagement"
    a_wins = np.where(by_eng, c.engagement_a > c.engagement_b, c.score_a > c.score_b)
    c["chosen_id"] = np.where(a_wins, c.content_id_a, c.content_id_b)
    c["rejected_id"] = np.where(a_wins, c.content_id_b, c.content_id_a)
    c["confidence"] = 1 / (1 + np.exp(-1.702 * np.minimum(np.where(by_eng, z_eng, z_dwell), 20)))
    kept = c.outcome.isin(["engagement", "dwell"])
    if cfg.max_pairs_per_context:
        rank = c[kept].sort_values(["confidence", "chosen_id", "rejected_id"], ascending=[False, True, True])
        over = rank.groupby("context").cumcount() >= cfg.max_pairs_per_context
        c.loc[over[over].index, "outcome"] = "capped"
        kept = c.outcome.isin(["engagement", "dwell"])
    # 5. pairs with texts; 6. ledger over items
    text = ct.set_index("content_id")
    pairs = c.loc[kept, ["context", "chosen_id", "rejected_id", "outcome", "confidence"]].rename(
        columns={"outcome": "source"}
    )
    prompt = text.prompt.reindex(pairs.chosen_id).to_numpy()
    pairs["prompt"] = np.where(pd.isna(prompt), pairs.context.to_numpy(), prompt)
    pairs["chosen"] = text.text.reindex(pairs.chosen_id).values
    pairs["rejected"] = text.text.reindex(pairs.rejected_id).values
    in_cand = pd.concat([c.content_id_a, c.content_id_b])
    paired = set(pairs.chosen_id) | set(pairs.rejected_id)
    status = np.select(
        [items.views < cfg.min_views, items.content_id.isin(paired), items.content_id.isin(in_cand)],
        ["min_views", "paired", "unpaired"],
        "single_in_context",
    )
    for name, n in items.views.groupby(status).sum().items():
        ledger[name] = ledger.get(name, 0) + int(n)
    return pairs, {k: int(n) for k, n in ledger.items()}


def child(engine: str, root: Path, profile: str, threads: int | None) -> None:
    """Run one engine, write its pairs (ids) and timing to root/ENGINE.*; prints nothing else."""
    import numpy  # noqa: F401  (both imported before the timer starts, for both engines)
    import pandas  # noqa: F401

    from weitiao.logs import dwell
    from weitiao.logs.config import load_profile

    cfg = load_profile("dwell", profile)
    events, content = root / "events.parquet", root / "content.parquet"
    t0 = time.perf_counter()
    if engine == "duckdb":  # pairs with texts end in a DuckDB table (wt_pairs), as in `weitiao logs dwell`
        run = dwell.run(events, cfg, content, progress=False, threads=threads)
        led = dict(run.con.execute("SELECT rule, n FROM wt_ledger WHERE ledger = 'events'").fetchall())
        seconds = time.perf_counter() - t0
        pairs = run.con.execute("SELECT chosen_id, rejected_id, source FROM wt_pairs").df()  # export, not timed
        n_events = run.events
    else:  # pairs with texts end in a DataFrame
        pairs, led = pandas_pairs(events, content, cfg)
        seconds = time.perf_counter() - t0
        n_events = None
    pairs[["chosen_id", "rejected_id", "source"]].to_parquet(root / f"{engine}.pairs.parquet")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = {"seconds": seconds, "pairs": len(pairs), "ledger": {k: int(v) for k, v in led.items()}, "rss_mb": rss}
    (root / f"{engine}.json").write_text(json.dumps(out | {"events": n_events}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000_000, help="events to generate")
    ap.add_argument("--profile", default="zhihu", help="xhs | zhihu (also the synthetic site's style)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="DuckDB threads [all cores]")
    ap.add_argument("--repeat", type=int, default=3, help="rounds; the median time per engine is compared")
    ap.add_argument("--skip-pandas", action="store_true")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--child", choices=["duckdb", "pandas"], help=argparse.SUPPRESS)
    ap.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.root, args.profile, args.threads)

    import pandas as pd

    from weitiao.logs.synth import synth_dwell

    with tempfile.TemporaryDirectory(prefix="weitiao_logs_bench_") as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        synth_dwell(root, args.n, style=args.profile, seed=args.seed, progress=False)
        print(f"synth: {args.n:,} events in {time.perf_counter() - t:.1f}s (not timed below)", flush=True)
        results: dict[str, dict] = {}
        engines = ["duckdb"] + ([] if args.skip_pandas else ["pandas"])
        for rnd in range(args.repeat):  # interleaved rounds: a busy neighbour slows both engines alike
            for engine in engines:
                cmd = [sys.executable, __file__, "--child", engine, "--root", str(root), "--profile", args.profile]
                cmd += ["--threads", str(args.threads)] if args.threads else []
                subprocess.run(cmd, check=True, env=os.environ | {"PYTHONPATH": str(ROOT)})
                r = json.loads((root / f"{engine}.json").read_text())
                results.setdefault(engine, r | {"runs": []})["runs"].append(r["seconds"])
                print(f"round {rnd + 1} {engine:>7}: {r['seconds']:7.2f}s  {args.n / r['seconds']:>12,.0f} events/s"
                      f"  {r['pairs']:,} pairs  peak RSS {r['rss_mb']:,.0f} MB", flush=True)  # fmt: skip
        for r in results.values():
            r["seconds"] = statistics.median(r["runs"])
        duck = results["duckdb"]
        report = {"n": args.n, "profile": args.profile, "cpus": os.cpu_count(), "results": results}
        report["duckdb_events_per_s"] = args.n / duck["seconds"]
        if "pandas" in results:
            pan = results["pandas"]
            a = pd.read_parquet(root / "duckdb.pairs.parquet")
            b = pd.read_parquet(root / "pandas.pairs.parquet")
            ka, kb = set(map(tuple, a.values.tolist())), set(map(tuple, b.values.tolist()))
            report["pairs_only_duckdb"], report["pairs_only_pandas"] = len(ka - kb), len(kb - ka)
            report["ledger_equal"] = {k: v for k, v in duck["ledger"].items() if v} == {
                k: v for k, v in pan["ledger"].items() if v
            }
            report["speedup"] = pan["seconds"] / duck["seconds"]
            print(
                f"same pairs: {len(ka & kb):,} shared, {len(ka - kb)} only DuckDB, {len(kb - ka)} only pandas;"
                f" event ledgers equal: {report['ledger_equal']}"
            )
            print(f"median: DuckDB {duck['seconds']:.2f}s, pandas {pan['seconds']:.2f}s → DuckDB / pandas speed "
                  f"{report['speedup']:.1f}×  (target ≥ 5×)")  # fmt: skip
        ok = report["duckdb_events_per_s"] >= 1e6
        print(f"DuckDB {report['duckdb_events_per_s']:,.0f} events/s on {os.cpu_count()} CPUs "
              f"({'meets' if ok else 'misses'} the 1 M events/s target)")  # fmt: skip
        if args.json:
            args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
