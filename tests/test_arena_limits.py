"""Arena vote page against ballot stuffing, over real HTTP: rate limits, pair caps, signed voters, no rows per GET."""

from __future__ import annotations

import json
import sqlite3
import time

import httpx
import pytest
from loopback import running

from weitiao.eval.arena.app import COOKIE, ArenaLimits, create_app
from weitiao.eval.arena.store import ArenaStore

MODELS = ["strong", "middle", "weak"]
OFF = dict(vote_interval_s=0, voter_votes_per_minute=0, address_votes_per_minute=0, pair_votes=0)


@pytest.fixture
def store(tmp_path):
    s = ArenaStore(tmp_path / "arena.sqlite")
    s.serve_answers([{"prompt": f"问题{i}", "model": m, "answer": f"{m} 的回答 {i}"} for i in range(5) for m in MODELS])
    return s


def stuff(c: httpx.Client, n: int, target: str = "weak") -> list[httpx.Response]:
    """What the script did: draw a round, vote for the target's side (known from earlier reveals)."""
    out = []
    for _ in range(n):
        got = c.get("/api/round")
        if got.status_code != 200:
            out.append(got)
            continue
        r = got.json()
        choice = "a" if r["a"].startswith(target) else "b" if r["b"].startswith(target) else "tie"
        out.append(c.post("/api/vote", json={"round": r["round"], "choice": choice}))
    return out


def rows(store: ArenaStore, table: str) -> int:
    with sqlite3.connect(store.path) as db:
        return db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]


@pytest.mark.parametrize(
    "limits,n",
    [
        (ArenaLimits(), 300),  # the defaults: one vote every 2 s, 10 a minute
        (ArenaLimits(**{**OFF, "voter_votes_per_minute": 5}), 300),
        (ArenaLimits(**OFF), 60),  # negative control: no limits, the whole burst goes through (the old server)
    ],
)
def test_vote_burst_is_refused_beyond_the_limits(store, limits, n):
    with running(create_app(store, seed=0, limits=limits)) as base, httpx.Client(base_url=base) as c:
        c.get("/")
        t0 = time.monotonic()
        answers = stuff(c, n)
        elapsed = time.monotonic() - t0
    ok = [r for r in answers if r.status_code == 200]
    refused = [r for r in answers if r.status_code != 200]
    assert len(ok) == rows(store, "votes")
    if limits.vote_interval_s:
        assert 1 <= len(ok) <= min(1 + elapsed / limits.vote_interval_s, limits.voter_votes_per_minute)
    elif limits.voter_votes_per_minute:
        assert len(ok) == limits.voter_votes_per_minute and elapsed < 60
    else:
        assert len(ok) == n
    assert all(r.status_code == 429 and int(r.headers["Retry-After"]) >= 1 for r in refused)
    assert not any(m in r.text for r in refused for m in MODELS)  # a refused vote reveals no names


def test_address_limit_holds_across_voters(store):
    limits = ArenaLimits(**{**OFF, "address_votes_per_minute": 12})
    with running(create_app(store, seed=0, limits=limits)) as base:
        clients = [httpx.Client(base_url=base) for _ in range(6)]  # six cookies, one address
        try:
            codes = [r.status_code for _ in range(20) for c in clients for r in stuff(c, 1)]
        finally:
            for c in clients:
                c.close()
    assert codes.count(200) == 12 == rows(store, "votes") and set(codes) == {200, 429}


def test_new_voter_ids_are_limited_per_address(store):
    with running(create_app(store, seed=0, limits=ArenaLimits(new_voters_per_hour=3))) as base:
        codes = [httpx.get(base + "/api/round").status_code for _ in range(5)]  # no cookie jar: a new voter each
    assert codes == [200, 200, 200, 429, 429]


def test_pair_cap_per_voter(store):
    limits = ArenaLimits(**{**OFF, "pair_votes": 2})
    with running(create_app(store, seed=0, limits=limits)) as base, httpx.Client(base_url=base) as c:
        answers = stuff(c, 10)
        last = c.get("/api/round")
    assert [r.status_code for r in answers] == [200] * 6 + [429] * 4  # 3 pairs x 2; then no round to vote on
    assert last.status_code == 429 and "every pair" in last.json()["error"]
    assert set(store.pair_votes(store.votes()[0]["voter"]).values()) == {2}


def test_round_requests_store_nothing_and_stay_bounded(store):
    limits = ArenaLimits(**{**OFF, "new_voters_per_hour": 0, "max_open": 50})
    with running(create_app(store, seed=0, limits=limits)) as base, httpx.Client(base_url=base) as c:
        first = c.get("/api/round").json()
        assert all(c.get("/api/round").json()["round"] == first["round"] for _ in range(999))
        assert rows(store, "rounds") == 0
        for _ in range(120):  # cookie-less: a new voter and an open round each, held in memory at most 50
            assert httpx.get(base + "/api/round").status_code == 200
        assert rows(store, "rounds") == 0
        gone = c.post("/api/vote", json={"round": first["round"], "choice": "a"})
        assert gone.status_code == 404  # the oldest open rounds were dropped
        r = c.get("/api/round").json()
        assert c.post("/api/vote", json={"round": r["round"], "choice": "a"}).status_code == 200
    assert rows(store, "rounds") == 1 == rows(store, "votes")


def test_votes_need_a_signed_voter_and_their_own_round(store):
    with running(create_app(store, seed=0, limits=ArenaLimits(**OFF))) as base:
        with httpx.Client(base_url=base) as alice, httpx.Client(base_url=base) as bob:
            r = alice.get("/api/round").json()
            bob.get("/")
            assert bob.post("/api/vote", json={"round": r["round"], "choice": "a"}).status_code == 404
            voter, _, sig = alice.cookies[COOKIE].rpartition(".")
            forged = {COOKIE: f"{voter}.{'0' * len(sig)}"}
            vote = {"round": r["round"], "choice": "a"}
            assert httpx.post(base + "/api/vote", json=vote, cookies=forged).status_code == 403
            assert httpx.post(base + "/api/vote", json=vote).status_code == 403
            assert alice.post("/api/vote", json=vote).status_code == 200
    assert rows(store, "votes") == 1


def test_vote_body_size_is_limited(store):
    with running(create_app(store, seed=0, limits=ArenaLimits(**OFF))) as base, httpx.Client(base_url=base) as c:
        r = c.get("/api/round").json()
        big = c.post("/api/vote", json={"round": r["round"], "choice": "a", "pad": "x" * 100_000})
        assert big.status_code == 413
        assert c.post("/api/vote", json={"round": r["round"], "choice": "a"}).status_code == 200


def test_a_vote_giving_a_key_twice_is_refused(store):
    """{"choice": "a", "choice": "b"} counted as b (FastAPI's parser kept the last value): a 400 naming the key."""
    with running(create_app(store, seed=0, limits=ArenaLimits(**OFF))) as base, httpx.Client(base_url=base) as c:
        r = c.get("/api/round").json()
        twice = f'{{"round": {json.dumps(r["round"])}, "choice": "a", "choice": "b"}}'.encode()
        got = c.post("/api/vote", content=twice, headers={"content-type": "application/json"})
        assert got.status_code == 400 and got.json()["error"] == "choice: given twice in one object; send it once"
        assert rows(store, "votes") == 0
        assert c.post("/api/vote", json={"round": r["round"], "choice": "b"}).status_code == 200  # control
    assert rows(store, "votes") == 1


def test_unknown_query_parameters_are_refused(store):
    """`/api/round?model=weak` or `/api/stats?since=…` asked for something the server ignored: a 400 line naming it.
    The page keeps taking stray parameters (a shared link's `?utm_source=`), and plain calls work as before."""
    with running(create_app(store, seed=0)) as base, httpx.Client(base_url=base) as c:
        assert c.get("/?utm_source=wechat").status_code == 200
        for path, name in (("/api/round?model=weak", "model"), ("/api/stats?since=2026", "since")):
            r = c.get(path)
            assert r.status_code == 400, path
            route = path.split("?")[0]
            assert r.json()["error"] == f"unknown query parameter {name!r}; {route} takes no query parameters"
        assert c.get("/api/round").status_code == 200 and c.get("/api/stats").json()["votes"] == 0
