"""Dwell logs → preference pairs on three engines: DuckDB, Spark SQL in local mode, pandas.

    .venv/bin/python benchmarks/logs_engines.py                        # 10 M events, 2 cores, all three
    .venv/bin/python benchmarks/logs_engines.py --n 1000000 --engines duckdb,spark --json out.json

Builds once into a temp dir (not timed): `logs synth` events.parquet + content.parquet (zhihu style).
First a check run at --check-n events: all three engines must give the same pairs (ids, source) and
the same event ledger, else the benchmark stops. Then each engine runs the full --n in its own
subprocess, one after the other, with --cores cores: DuckDB `SET threads`, Spark `local[cores]`
(shuffle partitions = 2 × cores), pandas single-threaded as pandas is.
Timed: from opening the Parquet files to the pairs (with texts) and the ledger in this machine's
memory: DuckDB tables; for Spark the whole `dwell.run` (column checks, the stages, pairs and ledger
brought back as Arrow); for pandas `logs_pairs.pandas_pairs`, the straightforward pandas version of the
same rules. Spark's session start (JVM) is measured apart. Peak RSS is the whole process tree (the
Python process plus Spark's JVM), sampled every 50 ms. The machine load (`uptime`) is recorded around
each run: on a shared machine the numbers only compare runs made under similar load.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def load() -> str:
    """The 1/5/15-minute load averages, as `uptime` prints them."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


class PeakRSS:
    """Peak resident memory of this process and all its descendants (Spark's JVM), sampled in a thread."""

    def __init__(self, every: float = 0.05):
        import psutil

        self.proc, self.every, self.peak, self._stop = psutil.Process(), every, 0, threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            total = 0
            for p in [self.proc] + self.proc.children(recursive=True):
                try:
                    total += p.memory_info().rss
                except psutil.Error:  # a child that just exited
                    pass
            self.peak = max(self.peak, total)
            self._stop.wait(self.every)

    def stop(self) -> float:
        self._stop.set()
        self._t.join()
        return self.peak / 2**20


def child(engine: str, root: Path, profile: str, cores: int, out: Path) -> None:
    """Run one engine on root/events.parquet + content.parquet; write pairs (ids) and numbers to `out`."""
    import numpy  # noqa: F401  (imported before the timer starts, for every engine)
    import pandas as pd

    from weitiao.logs import dwell
    from weitiao.logs.config import load_profile

    rss = PeakRSS()
    cfg = load_profile("dwell", profile)
    events, content = root / "events.parquet", root / "content.parquet"
    start = 0.0
    if engine == "spark":
        from weitiao.logs.spark import SparkEngine

        t = time.perf_counter()
        conf = {"spark.sql.shuffle.partitions": str(2 * cores), "spark.ui.enabled": "false"}
        conf |= {"spark.driver.memory": os.environ.get("SPARK_DRIVER_MEMORY", "4g")}
        eng = SparkEngine.start(f"local[{cores}]", conf)
        start = time.perf_counter() - t
    elif engine == "duckdb":
        from weitiao.logs.engine import DuckEngine

        eng = DuckEngine(threads=cores)
    t0 = time.perf_counter()
    if engine == "pandas":
        from logs_pairs import pandas_pairs

        pairs, led = pandas_pairs(events, content, cfg)
        seconds = time.perf_counter() - t0
    else:
        run = dwell.run(events, cfg, content, progress=False, engine=eng)
        seconds = time.perf_counter() - t0
        led = dict(run.con.execute("SELECT rule, n FROM wt_ledger WHERE ledger = 'events'").fetchall())
        pairs = run.con.execute("SELECT chosen_id, rejected_id, source FROM wt_pairs").df()  # export, not timed
    peak = rss.stop()
    pd.DataFrame(pairs[["chosen_id", "rejected_id", "source"]]).to_parquet(out.with_suffix(".pairs.parquet"))
    led = {k: int(v) for k, v in led.items() if v}
    out.write_text(json.dumps({"seconds": seconds, "start_s": start, "pairs": len(pairs), "ledger": led,
                               "peak_rss_mb": peak}))  # fmt: skip
    if engine == "spark":
        eng.spark.stop()


def run_all(root: Path, engines: list[str], args, tag: str) -> dict[str, dict]:
    """Each engine in its own subprocess on the files in `root`; returns their numbers."""
    out: dict[str, dict] = {}
    for engine in engines:
        res = root / f"{tag}.{engine}.json"
        before = load()
        cmd = [sys.executable, __file__, "--child", engine, "--root", str(root), "--profile", args.profile,
               "--cores", str(args.cores), "--out", str(res)]  # fmt: skip
        p = subprocess.run(cmd, env=os.environ | {"PYTHONPATH": str(ROOT)}, capture_output=True, text=True)
        if p.returncode:
            print(f"{tag} {engine}: failed (exit {p.returncode})\n{p.stderr[-3000:]}", flush=True)
            continue
        r = json.loads(res.read_text()) | {"load_before": before, "load_after": load()}
        out[engine] = r
        n = args.check_n if tag == "check" else args.n
        start = f"  (+ {r['start_s']:.1f}s JVM start)" if engine == "spark" else ""
        print(f"{tag:>5} {engine:>6}: {r['seconds']:8.2f}s{start}  {n / r['seconds']:>11,.0f} events/s  "
              f"{r['pairs']:,} pairs  peak RSS {r['peak_rss_mb']:,.0f} MB  load {before} → {r['load_after']}",
              flush=True)  # fmt: skip
    return out


def same(root: Path, results: dict[str, dict], tag: str) -> dict:
    """Pairs and event ledgers of every engine against DuckDB's."""
    import pandas as pd

    ref = set(map(tuple, pd.read_parquet(root / f"{tag}.duckdb.pairs.parquet").values.tolist()))
    out = {}
    for engine, r in results.items():
        got = set(map(tuple, pd.read_parquet(root / f"{tag}.{engine}.pairs.parquet").values.tolist()))
        out[engine] = {"only_here": len(got - ref), "only_duckdb": len(ref - got),
                       "ledger_equal": r["ledger"] == results["duckdb"]["ledger"]}  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000_000, help="events for the timed run")
    ap.add_argument("--check-n", type=int, default=200_000, help="events for the equality check (0: skip)")
    ap.add_argument("--profile", default="zhihu", help="xhs | zhihu (also the synthetic site's style)")
    ap.add_argument("--cores", type=int, default=2, help="cores each engine may use")
    ap.add_argument("--engines", default="duckdb,spark,pandas")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--child", choices=["duckdb", "spark", "pandas"], help=argparse.SUPPRESS)
    ap.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.root, args.profile, args.cores, args.out)

    from weitiao.logs.synth import synth_dwell

    engines = args.engines.split(",")
    report: dict = {"n": args.n, "check_n": args.check_n, "profile": args.profile, "cores": args.cores,
                    "cpus": os.cpu_count(), "engines": engines}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="weitiao_logs_engines_") as tmp:
        for tag, n in (("check", args.check_n), ("full", args.n)):
            if not n:
                continue
            root = Path(tmp) / tag
            t = time.perf_counter()
            synth_dwell(root, n, style=args.profile, seed=args.seed, progress=False)
            print(f"synth {tag}: {n:,} events in {time.perf_counter() - t:.1f}s (not timed)", flush=True)
            res = run_all(root, ["duckdb"] + [e for e in engines if e != "duckdb"], args, tag)
            report[tag] = {"results": res}
            if "duckdb" in res and len(res) > 1:
                eq = same(root, res, tag)
                report[tag]["same_as_duckdb"] = eq
                print(f"{tag}: same pairs and event ledger as DuckDB: {eq}", flush=True)
                bad = [e for e, v in eq.items() if v["only_here"] or v["only_duckdb"] or not v["ledger_equal"]]
                if bad and tag == "check":
                    raise SystemExit(f"engines disagree on the check run: {', '.join(bad)}")
            if len(res) < len(set(engines) | {"duckdb"}):
                raise SystemExit(f"{tag}: an engine failed (see above)")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
