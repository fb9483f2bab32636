"""Shared plumbing of the framework-vs-framework benchmarks: each framework runs in its own
subprocess (so peak RSS is its own), frameworks alternate across repeats, and one table prints
every metric with the weitiao / peer ratio."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
ENV = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "HF_DATASETS_OFFLINE": "1"}


def run_child(a: Any, children: dict[str, Callable[[Any, Path], dict]]) -> bool:
    """In a child process (--child FW): run that framework, print `RESULT {json}`; False in the parent."""
    if not a.child:
        return False
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    res = children[a.child](a, Path(a.root))
    res["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(res))
    return True


def spawn(script: str, fw: str, root: Path, extra: list[str] | None = None, env: dict | None = None) -> dict:
    """Run `script` again as the child for `fw` (with `env` added); its RESULT plus wall time and machine load."""
    cmd = [sys.executable, script, *sys.argv[1:], "--child", fw, "--root", str(root), *(extra or [])]
    t0, load0 = time.perf_counter(), os.getloadavg()[0]
    p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **ENV, **(env or {})}, cwd=REPO)
    if p.returncode != 0:
        sys.exit(f"{fw} child failed:\n{p.stdout[-3000:]}\n{p.stderr[-6000:]}")
    line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")][-1]
    load = f"load avg 1 min {load0:.2f} before, {os.getloadavg()[0]:.2f} after (other processes skew timings)"
    return json.loads(line[7:]) | {"wall": time.perf_counter() - t0, "load": load}


def run_all(fws: list[str], repeat: int, one: Callable[[str], dict]) -> dict[str, list[dict]]:
    """`repeat` rounds, frameworks alternating so background load hits both alike."""
    runs: dict[str, list[dict]] = {fw: [] for fw in fws}
    for i in range(repeat):
        for fw in fws:
            print(f"running {fw} ({i + 1}/{repeat}) ...", flush=True)
            runs[fw].append(one(fw))
    return runs


def print_table(res: dict[str, dict[str, float]], fws: list[str], title: str) -> None:
    """One row per metric, one column per framework, and the first / second ratio."""
    two = len(fws) == 2
    print(f"\n{title}")
    head = f"{'metric':<26} | " + " | ".join(f"{fw:>10}" for fw in fws) + (f" | {'ratio':>7}" if two else "")
    print(head + "\n" + "-" * len(head))
    for key in next(iter(res.values())):
        vals = [res[fw][key] for fw in fws]
        ratio = f" | {vals[0] / vals[1]:>7.3f}" if two and vals[1] else ""
        print(f"{key:<26} | " + " | ".join(f"{v:>10.4g}" for v in vals) + ratio)
