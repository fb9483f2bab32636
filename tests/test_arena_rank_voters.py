"""Arena ratings when one voter stuffs the ballot: voter-level bootstrap and voter filters."""

from __future__ import annotations

import json

import numpy as np
import pytest

from weitiao.errors import UserError
from weitiao.eval.arena.rank import filter_voters, rank

TRUE = {"strong": 1100.0, "middle": 1000.0, "weak": 900.0}
NAMES = list(TRUE)


def honest(n_voters: int, per_voter: int, seed: int) -> list[dict]:
    """Voters whose votes follow the Bradley–Terry probabilities of TRUE."""
    rng = np.random.default_rng(seed)
    rows = []
    for v in range(n_voters):
        for _ in range(per_voter):
            x, y = (NAMES[i] for i in rng.choice(3, 2, replace=False))
            p = 1 / (1 + 10 ** ((TRUE[y] - TRUE[x]) / 400))
            winner = "model_a" if rng.random() < p else "model_b"
            rows.append({"model_a": x, "model_b": y, "winner": winner, "judge": f"h{v}", "tstamp": float(len(rows))})
    return rows


def stuffer(n: int, seed: int, target: str = "weak") -> list[dict]:
    """One voter who always votes for the target, whichever side it is on."""
    rng = np.random.default_rng(seed)
    rows = []
    for k in range(n):
        other = ("strong", "middle")[k % 2]
        a, b = (target, other) if rng.random() < 0.5 else (other, target)
        rows.append({"model_a": a, "model_b": b, "winner": "model_a" if a == target else "model_b",
                     "judge": "stuffer", "tstamp": 1e6 + k})  # fmt: skip
    return rows


def widths(res) -> dict[str, float]:
    return {r.model: r.upper - r.lower for r in res.ratings}


def test_voter_bootstrap_is_wide_when_one_voter_dominates():
    rows = honest(40, 15, seed=0) + stuffer(600, seed=1)
    by_battle, by_voter = rank(rows, rounds=200, by_voter=False), rank(rows, rounds=200)
    assert by_battle.bootstrap == "battles" and (by_voter.bootstrap, by_voter.n_voters) == ("voters", 41)
    assert by_battle.ratings[0].model == "weak"  # the stuffing worked on the point estimate...
    assert [r.rank for r in by_battle.ratings][:2] == [1, 2]  # ...and battle CIs certify it as the best
    assert [r.rank for r in by_voter.ratings] == [1, 1, 1]  # voter CIs: one voter cannot settle the order
    wb, wv = widths(by_battle), widths(by_voter)
    assert wv["weak"] > 4 * wb["weak"], (wv, wb)  # resampling votes hides that they are one voter's
    # negative control: honest voters only, voters are about as informative as their votes
    clean = honest(40, 15, seed=0)
    cb, cv = widths(rank(clean, rounds=200, by_voter=False)), widths(rank(clean, rounds=200))
    assert all(0.6 < cv[m] / cb[m] < 1.6 for m in NAMES), (cv, cb)


def test_voter_filters():
    rows = honest(40, 15, seed=2) + stuffer(600, seed=3)
    kept, dropped = filter_voters(rows, max_share=0.2)
    assert list(dropped) == ["stuffer"] and "50% of all" in dropped["stuffer"] and len(kept) == 600
    assert [r.model for r in rank(kept, rounds=50).ratings] == ["strong", "middle", "weak"]
    singles = [{**r, "judge": f"drive-by {n}"} for n, r in enumerate(stuffer(10, seed=4))]
    anonymous = [{k: v for k, v in r.items() if k != "judge"} for r in stuffer(5, seed=5)]
    kept, dropped = filter_voters(rows[:600] + singles + anonymous, min_votes=2, exclude=["h3"])
    assert sorted(dropped) == sorted([f"drive-by {n}" for n in range(10)] + ["h3"]) and dropped["h3"] == "excluded"
    assert len(kept) == 600 - 15 + 5  # battles without a voter id stay: no filter can tell their voters apart
    with pytest.raises(UserError, match="--exclude-voter nobody"):
        filter_voters(rows, exclude=["nobody"])


def test_battles_without_voters_resample_battles():
    rows = [{k: v for k, v in r.items() if k != "judge"} for r in honest(20, 10, seed=6)]
    res = rank(rows, rounds=20)
    assert (res.bootstrap, res.n_voters) == ("battles", 0)  # each battle its own voter: the same law


def test_cli_rank_voter_filters(tmp_path):
    from typer.testing import CliRunner

    from weitiao.eval.commands import arena_app

    src = tmp_path / "battles.json"
    src.write_text(json.dumps(honest(40, 15, seed=7) + stuffer(600, seed=8)))
    out = tmp_path / "r.json"
    args = ["rank", "--battles", str(src), "--rounds", "40", "--json", str(out)]
    r = CliRunner().invoke(arena_app, args + ["--max-voter-share", "0.2"])
    assert r.exit_code == 0, r.output
    assert "dropped voter stuffer" in r.output
    j = json.loads(out.read_text())
    assert list(j["dropped_voters"]) == ["stuffer"] and j["bootstrap"] == "voters" and j["n_voters"] == 40
    assert j["ratings"][0]["model"] == "strong"
    bad = CliRunner().invoke(arena_app, args + ["--min-voter-votes", "1000"])
    assert bad.exit_code != 0 and "dropped every battle" in str(bad.exception)
