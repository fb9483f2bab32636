"""Arena ratings: weitiao's Bradley–Terry on aggregated counts vs per-battle scikit-learn logistic regression.

    .venv/bin/python benchmarks/arena_rank.py                       # 1 M votes, 20 models, 100 bootstrap rounds
    .venv/bin/python benchmarks/arena_rank.py --n 200000 --sk-rounds 5 --json bench.json

Both sides get the same simulated battles (seeded: 20 models with true ratings spread over ~600 points,
random pairs, 10% ties, the winner drawn from the Bradley–Terry probability), as index arrays.
- weitiao: `aggregate` (np.bincount into pair × outcome counts) + `rank_counts` (Newton fit, 100 bootstrap
  rounds by multinomial resampling of the count table, percentiles, CI rank). Timed end to end from the arrays.
- scikit-learn: FastChat's recipe (`compute_mle_elo`): a dense per-battle design (+1 model_a, −1 model_b),
  ties as two rows of weight 1/2, `LogisticRegression(fit_intercept=False, tol=1e-6)` without penalty; bootstrap
  = resample battles with replacement and refit. A full 100-round bootstrap would take many minutes, so
  `--sk-rounds` rounds are timed and the 100-round time is extrapolated: design + point fit + 100 × mean round.
Online Elo (a Python loop over all votes) is timed on its own; it is the same work for any BT method.
Also printed: the largest difference between the two point estimates (same anchoring, mean = 1000).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from weitiao.eval.arena.rank import aggregate, anchored, online_elo, rank_counts  # noqa: E402


def simulate(n: int, k: int, seed: int, tie_rate: float = 0.1) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    true = np.linspace(1300, 700, k)
    a = rng.integers(0, k, n)
    b = (a + rng.integers(1, k, n)) % k
    win = rng.random(n) < 1 / (1 + 10 ** ((true[b] - true[a]) / 400))
    o = np.where(rng.random(n) < tie_rate, 2, np.where(win, 0, 1))
    return a, b, o, true


def sklearn_design(a: np.ndarray, b: np.ndarray, o: np.ndarray, k: int) -> tuple[np.ndarray, ...]:
    """FastChat-style per-battle rows; a tie is two rows (a won / b won) of weight 1/2; column 0 dropped."""
    tie = o == 2
    rows_a = np.concatenate([a, a[tie]])
    rows_b = np.concatenate([b, b[tie]])
    y = np.concatenate([(o == 0) | tie, np.zeros(tie.sum(), bool)]).astype(np.int64)
    w = np.concatenate([np.where(tie, 0.5, 1.0), np.full(tie.sum(), 0.5)])
    X = np.zeros((len(rows_a), k))
    X[np.arange(len(rows_a)), rows_a] = 1.0
    X[np.arange(len(rows_a)), rows_b] = -1.0
    return X[:, 1:], y, w


def sk_fit(X: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression

    lr = LogisticRegression(C=np.inf, fit_intercept=False, tol=1e-6, max_iter=1000)
    lr.fit(X, y, sample_weight=w)
    return np.concatenate([[0.0], lr.coef_[0]])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1_000_000, help="votes")
    p.add_argument("--models", type=int, default=20)
    p.add_argument("--rounds", type=int, default=100, help="bootstrap rounds")
    p.add_argument("--sk-rounds", type=int, default=3, help="scikit-learn bootstrap rounds actually timed")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None)
    a_ = p.parse_args()
    names = [f"model-{i:02d}" for i in range(a_.models)]
    a, b, o, _ = simulate(a_.n, a_.models, a_.seed)
    print(f"{a_.n:,} votes · {a_.models} models · {a_.rounds} bootstrap rounds · load {os.getloadavg()[0]:.2f}")

    # 1. weitiao: aggregate + fit + bootstrap, from the arrays
    t0 = time.perf_counter()
    res = rank_counts(aggregate(a, b, o, names), rounds=a_.rounds, seed=a_.seed)
    ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    online_elo(a, b, o, a_.models)
    elo_s = time.perf_counter() - t0

    # 2. scikit-learn per battle: design, point fit, a few bootstrap rounds (extrapolated to --rounds)
    t0 = time.perf_counter()
    X, y, w = sklearn_design(a, b, o, a_.models)
    design_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    sk_point = anchored(sk_fit(X, y, w), names, None)
    point_s = time.perf_counter() - t0
    rng = np.random.default_rng(a_.seed)
    per_round = []
    for _ in range(a_.sk_rounds):
        t0 = time.perf_counter()
        pick = rng.integers(0, a_.n, a_.n)
        Xb, yb, wb = sklearn_design(a[pick], b[pick], o[pick], a_.models)
        sk_fit(Xb, yb, wb)
        per_round.append(time.perf_counter() - t0)
    sk_total = design_s + point_s + a_.rounds * float(np.mean(per_round))

    ours_point = {r.model: r.rating for r in res.ratings}
    diff = max(abs(ours_point[m] - sk_point[i]) for i, m in enumerate(names))
    out = {
        "votes": a_.n,
        "models": a_.models,
        "rounds": a_.rounds,
        "weitiao_s": ours,
        "online_elo_s": elo_s,
        "sklearn_design_s": design_s,
        "sklearn_point_fit_s": point_s,
        "sklearn_round_s": per_round,
        "sklearn_total_s_extrapolated": sk_total,
        "speedup": sk_total / ours,
        "max_rating_diff_points": diff,
        "mean_ci_width": float(np.mean([r.upper - r.lower for r in res.ratings])),
    }
    print(f"weitiao  BT + {a_.rounds} bootstrap rounds (aggregated counts): {ours:8.2f} s")
    print(f"          online Elo over all votes (Python loop, separate):     {elo_s:8.2f} s")
    print(
        f"sklearn  design {design_s:.2f} s + point fit {point_s:.2f} s + {a_.rounds} × {np.mean(per_round):.2f} s/round"
    )
    print(f"         = {sk_total:8.2f} s (extrapolated from {a_.sk_rounds} timed rounds)")
    print(f"ratio sklearn / weitiao: {sk_total / ours:,.0f}x")
    print(f"point estimates agree to {diff:.2e} rating points (sklearn tol 1e-6)")
    print(f"mean 95% CI width {out['mean_ci_width']:.1f} points · load after {os.getloadavg()[0]:.2f}")
    if a_.json:
        a_.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
