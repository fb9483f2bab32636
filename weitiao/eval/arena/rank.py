"""Arena ratings: Bradley–Terry MLE on aggregated pair counts, bootstrap CIs, CI-overlap rank, online Elo.

    weitiao arena rank --db arena.sqlite --json ratings.json --plot ratings.png

1. Aggregate battles into counts per (pair, outcome): a-wins, b-wins, ties ("tie (bothbad)" is a tie).
   The fit never touches single battles again, so a million votes cost one pass of np.bincount.
2. Bradley–Terry (Bradley & Terry 1952): P(i beats j) = σ(s_i − s_j); a tie counts half a win each way.
   Maximize Σ_ij W_ij log σ(s_i − s_j) by Newton's method with s_0 = 0 fixed (the log-likelihood is
   concave; the reduced Hessian is negative definite when every model has a win and a loss path to
   every other — checked first). This is the same estimate as FastChat's per-battle logistic regression
   without penalty; theirs adds a small L2 penalty, ours none.
3. Scale to Elo points: rating = 400/ln 10 · s, then anchor (mean = 1000, or a named model = 1000).
4. 95% CIs: resample voters (a battle's `judge`) with replacement, each bringing all of their battles, refit,
   anchor, take the 2.5/97.5 percentiles. Seeded. A resample without a finite maximum (a model with no win in it,
   say, when it won 1 of 40 battles) is not patched with a ridge: there the votes put no limit on some gaps, so
   those ratings count as ±∞ in that round (`round_ratings`), and a bound whose tail reaches such a round is
   unbounded (±inf; "—" in the table, null in JSON), listed in `unbounded`. A ridge there gave a number set by the
   ridge, not the votes (a lower bound of −163 for such a model with 1e-3), and with the mean as anchor it pushed
   every other model's upper bound up by the same shift (+220 for three peers); `--anchor MODEL` keeps the other
   models' bounds finite, as their gaps to it stay measured. Votes of one voter are not independent: one voter who
   casts hundreds of votes moves the estimate as one unit, and resampling votes would hide that behind
   narrow CIs. A battle without a voter id counts as its own voter; when every voter has a single battle
   this equals resampling battles, done as Multinomial(N, counts/N) on the count table (same law).
   `filter_voters` drops voters first: too few votes, too large a share, or named.
5. Rank = 1 + number of models whose lower CI bound is above this model's upper bound (LMSYS style).
6. Online Elo (K=4, base 10, scale 400, start 1000) over battles in time order, as a secondary column.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from weitiao.errors import UserError, where
from weitiao.io import pyplot, read_json_list, read_jsonl, read_text, save_figure

SCALE = 400 / math.log(10)
WINNERS = {"model_a": 0, "model_b": 1, "tie": 2, "tie (bothbad)": 2}


# ---------------------------------------------------------------------------------------------- 1. counts


@dataclass
class Counts:
    """Battles aggregated by unordered pair: counts[p] = (i-wins, j-wins, ties) for pair (i[p], j[p]), i < j."""

    models: list[str]
    i: np.ndarray
    j: np.ndarray
    counts: np.ndarray  # (pairs, 3) float

    def wins(self, counts: np.ndarray | None = None) -> np.ndarray:
        """W[i, j] = wins of i over j, ties as half a win for each side."""
        c = self.counts if counts is None else counts
        k = len(self.models)
        W = np.zeros((k, k))
        np.add.at(W, (self.i, self.j), c[:, 0] + 0.5 * c[:, 2])
        np.add.at(W, (self.j, self.i), c[:, 1] + 0.5 * c[:, 2])
        return W


def _canonical(a: np.ndarray, b: np.ndarray, outcome: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pair order i < j; a swapped win becomes a j-win."""
    a, b, outcome = np.asarray(a), np.asarray(b), np.asarray(outcome)
    swap = a > b
    return np.where(swap, b, a), np.where(swap, a, b), np.where(swap & (outcome < 2), 1 - outcome, outcome)


def aggregate(a: np.ndarray, b: np.ndarray, outcome: np.ndarray, models: list[str]) -> Counts:
    """Counts from index arrays: model a, model b, outcome 0 = a wins, 1 = b wins, 2 = tie."""
    if np.any(np.asarray(a) == np.asarray(b)):
        raise UserError("a battle pits a model against itself; remove it")
    i, j, o = _canonical(a, b, outcome)
    k = len(models)
    flat = np.bincount((i * k + j) * 3 + o, minlength=k * k * 3).reshape(k * k, 3)
    pairs = np.flatnonzero(flat.sum(1))
    return Counts(models, pairs // k, pairs % k, flat[pairs].astype(float))


def battle_arrays(rows: Sequence[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Index arrays (a, b, outcome) and the sorted model list from FastChat-style battle dicts."""
    models = sorted({r["model_a"] for r in rows} | {r["model_b"] for r in rows})
    idx = {m: n for n, m in enumerate(models)}
    a = np.fromiter((idx[r["model_a"]] for r in rows), dtype=np.int64, count=len(rows))
    b = np.fromiter((idx[r["model_b"]] for r in rows), dtype=np.int64, count=len(rows))
    o = np.fromiter((WINNERS[r["winner"]] for r in rows), dtype=np.int64, count=len(rows))
    return a, b, o, models


@dataclass
class Clusters:
    """Battles per (voter, cell of `Counts.counts.ravel()`), to resample voters instead of battles."""

    voter: np.ndarray
    cell: np.ndarray
    n: np.ndarray
    n_voters: int


def voter_clusters(voters: Sequence[str | None], a: np.ndarray, b: np.ndarray, o: np.ndarray, c: Counts) -> Clusters:
    """Clusters for battles (a, b, o) cast by `voters` (None or "": unknown, then each battle its own voter)."""
    ids = [v if v else f"\0battle {n}" for n, v in enumerate(voters)]
    _, voter = np.unique(np.array(ids, dtype=object), return_inverse=True)
    i, j, oo = _canonical(a, b, o)
    k = len(c.models)
    cell = np.searchsorted(c.i * k + c.j, i * k + j) * 3 + oo
    cells = c.counts.size
    keys, n = np.unique(voter * cells + cell, return_counts=True)
    return Clusters(keys // cells, keys % cells, n.astype(float), int(voter.max()) + 1 if len(ids) else 0)


def filter_voters(
    rows: Sequence[dict], min_votes: int = 0, max_share: float = 1.0, exclude: Sequence[str] = ()
) -> tuple[list[dict], dict[str, str]]:
    """Battles kept, and {voter: why dropped}: fewer than `min_votes` battles, more than `max_share` of all
    battles (one pass over the original counts), or named in `exclude`. The voter is a battle's `judge`;
    battles without one are kept, since no filter can tell their voters apart."""
    n = Counter(r.get("judge") for r in rows if r.get("judge"))
    unknown = sorted(set(exclude) - n.keys())
    if unknown:
        raise UserError(f"--exclude-voter {unknown[0]}: no battle has this voter (judge)")
    why = {}
    for v, k in n.items():
        if v in exclude:
            why[v] = "excluded"
        elif k < min_votes:
            why[v] = f"{k} battles < --min-voter-votes {min_votes}"
        elif k / len(rows) > max_share:
            why[v] = f"{k} battles = {k / len(rows):.0%} of all > --max-voter-share {max_share:g}"
    return [r for r in rows if r.get("judge") not in why], why


# ---------------------------------------------------------------------------------------------- 2. fit


def strongly_connected(W: np.ndarray) -> bool:
    """True when every model reaches every other along "beat (or tied) someone" edges, both ways."""
    k = len(W)

    def reach(adj: np.ndarray) -> int:
        seen, todo = {0}, [0]
        while todo:
            for n in np.flatnonzero(adj[todo.pop()] > 0):
                if n not in seen:
                    seen.add(int(n))
                    todo.append(int(n))
        return len(seen)

    return k <= 1 or (reach(W) == k and reach(W.T) == k)


def _loglik(W: np.ndarray, s: np.ndarray, l2: float) -> float:
    d = s[:, None] - s[None, :]
    return float(-(W * np.logaddexp(0, -d)).sum() - 0.5 * l2 * (s @ s))


def fit_bt(W: np.ndarray, l2: float = 0.0, tol: float = 1e-10, max_iter: int = 100) -> np.ndarray:
    """Bradley–Terry strengths s (natural log-odds units, s_0 = 0) maximizing Σ W_ij log σ(s_i − s_j) − l2/2·|s|².

    Newton steps on s_1..s_{k−1} with step halving whenever the log-likelihood would drop.
    """
    k = len(W)
    n = W + W.T
    s = np.zeros(k)
    ll = _loglik(W, s, l2)
    for _ in range(max_iter):
        p = 1 / (1 + np.exp(-(s[:, None] - s[None, :])))
        g = (W - n * p).sum(1) - l2 * s
        w = n * p * (1 - p)
        H = w - np.diag(w.sum(1)) - l2 * np.eye(k)  # Hessian of the log-likelihood
        step = np.zeros(k)
        step[1:] = np.linalg.solve(-H[1:, 1:], g[1:])
        t = 1.0
        while t > 1e-6:
            cand = s + t * step
            new = _loglik(W, cand, l2)
            if new >= ll - 1e-12 * abs(ll):
                break
            t /= 2
        s, ll = cand, new
        if np.max(np.abs(t * step)) < tol:
            break
    return s


def groups(W: np.ndarray, models: list[str]) -> list[list[str]]:
    """Models grouped by who met whom in a vote (connected components of the comparison graph)."""
    k, seen, out = len(W), set(), []
    for start in range(k):
        if start in seen:
            continue
        seen.add(start)
        comp, todo = [start], [start]
        while todo:
            for n in np.flatnonzero((W + W.T)[todo.pop()] > 0).tolist():
                if n not in seen:
                    seen.add(n)
                    comp.append(n)
                    todo.append(n)
        out.append([models[n] for n in sorted(comp)])
    return out


def _why_infinite(W: np.ndarray, models: list[str]) -> str:
    """Why W has no finite Bradley–Terry maximum, in the user's terms."""
    parts = groups(W, models)
    if len(parts) > 1:  # no vote links the groups: any shift of one group fits as well, so no rating compares
        shown = " | ".join(", ".join(p) for p in parts)
        return (f"the models fall into {len(parts)} groups that never met in a vote ({shown}): ratings in different "
                "groups are not comparable; collect votes between the groups")  # fmt: skip
    never_lost = [m for m, lo in zip(models, W.sum(0)) if lo == 0]
    never_won = [m for m, w in zip(models, W.sum(1)) if w == 0]
    said = [f"{', '.join(ms)} never {what}" for ms, what in ((never_lost, "loses"), (never_won, "wins")) if ms]
    return (
        "; ".join(said) or "some group of models never loses (or never wins) against the rest"
    ) + "; collect more votes"


def reach(W: np.ndarray) -> np.ndarray:
    """R[i, j]: i = j, or a chain of "beat (or tied)" edges leads from i to j."""
    R = (W > 0) | np.eye(len(W), dtype=bool)
    while True:
        nxt = R | ((R.astype(np.int64) @ R.astype(np.int64)) > 0)
        if (nxt == R).all():
            return R
        R = nxt


def round_ratings(W: np.ndarray, models: list[str], anchor: str | None) -> np.ndarray:
    """Anchored ratings of a resample W without a finite maximum, as the likelihood's supremum leaves them: a gap
    between two groups that no chain of wins links both ways grows without limit (+inf/−inf), a gap no chain links
    at all is unknown (nan). Anchored at a model: the models its wins and losses link both ways keep their finite
    fit (the other battles' terms vanish at the supremum); every other rating is ±inf or nan. Anchored at the mean:
    +inf for a model above some group and below none, −inf for the reverse, nan for the rest."""
    R = reach(W)
    k = len(W)
    out = np.full(k, np.nan)
    if anchor is not None:
        a = models.index(anchor)
        same = R[a] & R[:, a]
        idx = np.flatnonzero(same)
        out[idx] = anchored(fit_bt(W[np.ix_(idx, idx)]), [models[n] for n in idx], anchor)
        out[R[:, a] & ~same] = np.inf  # reaches the anchor's group by wins, never beaten back
        out[R[a] & ~same] = -np.inf
        return out
    for m in range(k):
        other = ~(R[m] & R[:, m])
        above, below = (R[m] & other)[other], (R[:, m] & other)[other]
        if above.all():
            out[m] = np.inf
        elif below.all():
            out[m] = -np.inf
    return out


def percentile_bounds(boots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """2.5/97.5 percentiles per column (numpy's linear rule) of ratings that may hold ±inf or nan (unknown): an
    unknown counts as −inf for the lower bound and +inf for the upper; a bound that reaches an infinite draw is
    infinite."""
    big = np.finfo(float).max / 4

    def one(values: np.ndarray, q: float) -> np.ndarray:
        v = np.percentile(np.clip(values, -big, big), q, axis=0)
        return np.where(v <= -big / 2, -np.inf, np.where(v >= big / 2, np.inf, v))

    return one(np.where(np.isnan(boots), -np.inf, boots), 2.5), one(np.where(np.isnan(boots), np.inf, boots), 97.5)


def anchored(s: np.ndarray, models: list[str], anchor: str | None) -> np.ndarray:
    """Elo-scale ratings: 400/ln10 · s shifted so the anchor model (or the mean) is 1000."""
    r = SCALE * s
    ref = r[models.index(anchor)] if anchor else r.mean()
    return r + 1000 - ref


# ---------------------------------------------------------------------------------------------- 6. Elo


def online_elo(a: np.ndarray, b: np.ndarray, outcome: np.ndarray, k_models: int, K: float = 4.0) -> np.ndarray:
    """Sequential Elo over battles in the given order (FastChat's compute_online_elo)."""
    r = [1000.0] * k_models
    score = (1.0, 0.0, 0.5)
    for x, y, o in zip(a.tolist(), b.tolist(), outcome.tolist()):
        ea = 1 / (1 + 10 ** ((r[y] - r[x]) / 400))
        sa = score[o]
        r[x] += K * (sa - ea)
        r[y] -= K * (sa - ea)
    return np.array(r)


# ---------------------------------------------------------------------------------------------- all steps


@dataclass
class Rating:
    model: str
    rating: float
    lower: float
    upper: float
    rank: int
    elo: float
    battles: int
    win_rate: float  # (wins + ties/2) / battles


@dataclass
class RankResult:
    ratings: list[Rating]  # best first
    n_battles: int
    rounds: int
    anchor: str | None
    infinite_rounds: int  # bootstrap rounds without a finite maximum (e.g. a model with no win or no loss in it)
    bootstrap: str = "battles"  # what the CIs resample: voters or battles
    n_voters: int = 0  # voters resampled (battles without a voter id count one each); 0 for battles
    unbounded: dict[str, dict[str, int]] = field(default_factory=dict)  # model → {"lower"/"upper": rounds}

    def to_json(self) -> dict[str, Any]:
        """JSON-safe: an unbounded CI end is null (JSON has no infinity)."""
        finite = lambda x: x if math.isfinite(x) else None  # noqa: E731
        return {
            "n_battles": self.n_battles,
            "rounds": self.rounds,
            "anchor": self.anchor,
            "infinite_rounds": self.infinite_rounds,
            "bootstrap": self.bootstrap,
            "n_voters": self.n_voters,
            "unbounded": self.unbounded,
            "ratings": [{**asdict(r), "lower": finite(r.lower), "upper": finite(r.upper)} for r in self.ratings],
        }


def ci_rank(lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """1 + the number of models whose lower bound exceeds this model's upper bound."""
    return 1 + (lower[None, :] > upper[:, None]).sum(1)


def rank_counts(
    counts: Counts,
    elo: np.ndarray | None = None,
    anchor: str | None = None,
    rounds: int = 100,
    seed: int = 0,
    l2: float = 0.0,
    clusters: Clusters | None = None,
) -> RankResult:
    """Steps 2–5 on aggregated counts (`elo`: online Elo per model, computed by the caller from the order).
    With `clusters` the bootstrap resamples voters, else battles."""
    models = counts.models
    if anchor is not None and anchor not in models:
        raise UserError(f"--anchor {anchor}: no such model; models are {', '.join(models)}")
    W = counts.wins()
    if l2 == 0 and not strongly_connected(W):
        raise UserError(f"Bradley–Terry has no finite maximum: {_why_infinite(W, models)}")
    point = anchored(fit_bt(W, l2), models, anchor)
    # 4. bootstrap: voters with all their battles, or (every voter a single battle) the count table
    rng = np.random.default_rng(seed)
    total = int(counts.counts.sum())
    flat = counts.counts.ravel()
    boots = np.empty((rounds, len(models)))
    infinite = 0
    if clusters is not None and clusters.n_voters < total:
        cl = clusters

        def voters_draw() -> np.ndarray:
            w = np.bincount(rng.integers(0, cl.n_voters, cl.n_voters), minlength=cl.n_voters)[cl.voter] * cl.n
            return np.bincount(cl.cell, weights=w, minlength=flat.size)

        draws: Any = (voters_draw() for _ in range(rounds))
    else:
        cl = None
        draws = rng.multinomial(total, flat / total, size=rounds)
    for r, draw in enumerate(draws):
        Wb = counts.wins(draw.reshape(-1, 3).astype(float))
        if l2 > 0 or strongly_connected(Wb):
            boots[r] = anchored(fit_bt(Wb, l2), models, anchor)
        else:  # no finite maximum: the gaps the votes leave open are ±inf or unknown, not a ridge's guess
            infinite += 1
            boots[r] = round_ratings(Wb, models, anchor)
    lower, upper = percentile_bounds(boots) if rounds else (point, point)
    tails = {"lower": np.where(np.isnan(boots), -np.inf, boots) == -np.inf,
             "upper": np.where(np.isnan(boots), np.inf, boots) == np.inf}  # fmt: skip
    unbounded = {
        m: {end: int(tails[end][:, n].sum()) for end, b in (("lower", lower[n]), ("upper", upper[n])) if np.isinf(b)}
        for n, m in enumerate(models)
        if np.isinf(lower[n]) or np.isinf(upper[n])
    }
    ranks = ci_rank(lower, upper)
    games = (W + W.T).sum(1)
    elo = elo if elo is not None else np.full(len(models), np.nan)
    ratings = [
        Rating(m, float(point[n]), float(lower[n]), float(upper[n]), int(ranks[n]), float(elo[n]), int(games[n]),
               float(W[n].sum() / games[n]) if games[n] else 0.0)
        for n, m in enumerate(models)
    ]  # fmt: skip
    ratings.sort(key=lambda x: -x.rating)
    how = ("voters", cl.n_voters) if cl else ("battles", 0)
    return RankResult(ratings, total, rounds, anchor, infinite, *how, unbounded=unbounded)


def rank(
    rows: Sequence[dict], anchor: str | None = None, rounds: int = 100, seed: int = 0, by_voter: bool = True
) -> RankResult:
    """Ratings for FastChat-style battle dicts (Elo follows their `tstamp` order when present); the CIs
    resample voters (`judge`) unless `by_voter` is False."""
    if not rows:
        raise UserError(
            "no battles to rank: no votes yet (vote on `weitiao arena serve` or `weitiao arena import` a battle file)"
        )
    # untimed battles (an import without times) after the timed ones, in their order, as FastChat's sort by tstamp
    # (pandas puts NaN last); they went first, at 1970
    rows = sorted(rows, key=lambda r: (r.get("tstamp") is None, r.get("tstamp") or 0))
    a, b, o, models = battle_arrays(rows)
    counts = aggregate(a, b, o, models)
    voters = {r.get("judge") for r in rows}
    if by_voter and rounds and len(rows) > 1 and len(voters) == 1 and None not in voters and "" not in voters:
        raise UserError(
            f"all {len(rows)} battles come from one voter ({next(iter(voters))}): resampling voters cannot give a "
            "confidence interval (it would have zero width); pass --bootstrap battles to treat the votes as independent"
        )
    clusters = voter_clusters([r.get("judge") for r in rows], a, b, o, counts) if by_voter else None
    return rank_counts(counts, online_elo(a, b, o, len(models)), anchor, rounds, seed, clusters=clusters)


# ---------------------------------------------------------------------------------------------- files


def load_battles(path: Path) -> list[dict]:
    """FastChat-style battles from a JSON list (its clean_battle files) or JSONL: model_a, model_b, winner, and any
    other fields (tstamp, judge, question_id, ...); a bad battle is named by the file line where it starts."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: file not found")
    text = read_text(path)
    numbered = read_json_list(path) if text.lstrip().startswith("[") else list(read_jsonl(path))
    for line, r in numbered:
        _check_battle(path, line, r)
    return [r for _, r in numbered]


def _check_battle(path: Path, line: int, r: Any) -> None:
    """One battle's fields, refused with `file:line: field`."""
    for f in ("model_a", "model_b", "winner"):
        if not isinstance(r, dict) or not isinstance(r.get(f), str):
            raise UserError(f"{where(path, line, f)}: missing or not a string")
    if r["winner"] not in WINNERS:
        raise UserError(f"{where(path, line, 'winner')}: {r['winner']!r}; expected one of {', '.join(WINNERS)}")
    if r["model_a"] == r["model_b"]:
        raise UserError(f"{where(path, line, 'model_b')}: same model on both sides")
    t = r.get("tstamp")
    if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t)):
        raise UserError(f"{where(path, line, 'tstamp')}: {t!r}; expected seconds since 1970 (a number) or null")
    if r.get("judge") is not None and not isinstance(r["judge"], str):
        raise UserError(f"{where(path, line, 'judge')}: {r['judge']!r}; expected the voter id as a string or null")
    if "anony" in r and not isinstance(r["anony"], bool):  # "false" would read as true
        raise UserError(f"{where(path, line, 'anony')}: {r['anony']!r}; expected true or false (a JSON boolean)")


def plot_ratings(res: RankResult, path: str | Path, aside: Sequence[str] = ()) -> None:
    """PNG: one row per model, BT rating with its 95% CI bar, best at the top; models in `aside` (set aside by a later
    `arena serve`, their battles counted) are labelled so and drawn in grey."""
    plt = pyplot()

    rs = res.ratings[::-1]
    y = np.arange(len(rs))
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(rs) + 1.2))
    x = np.array([r.rating for r in rs])
    ends = np.array([[r.lower, r.upper] for r in rs])
    finite = np.concatenate([x, ends[np.isfinite(ends)]])
    pad = 0.1 * (finite.max() - finite.min()) + 1
    lo, hi = finite.min() - pad, finite.max() + pad  # an unbounded end runs to the frame's edge
    err = np.array([x - np.maximum(ends[:, 0], lo), np.minimum(ends[:, 1], hi) - x])
    grey = np.array([r.model in set(aside) for r in rs])
    for mask, color in ((~grey, "C0"), (grey, "0.6")):
        if mask.any():
            ax.errorbar(x[mask], y[mask], xerr=err[:, mask], fmt="o", capsize=3, color=color)
    open_end = [" · CI unbounded" if not (math.isfinite(r.lower) and math.isfinite(r.upper)) else "" for r in rs]
    ax.set_yticks(
        y, [f"{r.model} (#{r.rank}){o}" + (" · set aside" if g else "") for r, g, o in zip(rs, grey, open_end)]
    )
    ax.set_xlim(lo, hi)
    ax.set_xlabel("Bradley–Terry rating (95% bootstrap CI)")
    ax.set_title(f"{res.n_battles:,} battles")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
