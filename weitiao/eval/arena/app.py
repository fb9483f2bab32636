"""The arena vote page: FastAPI serving `page.html` and a two-call JSON API.

    weitiao arena serve --answers answers.jsonl --db arena.sqlite --port 8300

GET /api/round → {round, prompt, a, b} (answers only, no names); POST /api/vote {round, choice: a|b|tie|bothbad}
→ the names of both sides.

Against ballot stuffing (a script once cast 300 votes in a second, learning each answer's model from the
names revealed after each vote, and lifted the weakest model to rank 1):
- A voter is an id the server issues in a signed cookie (HMAC with the database's secret); a vote without a
  valid one is refused, and one client address gets at most `new_voters_per_hour` ids.
- A voter has one open round at a time: /api/round repeats it until it is voted on or expires, so a script
  cannot draw rounds until its target's answer shows up. Open rounds live in memory (at most `max_open`,
  the oldest dropped); a round reaches the database only with its vote, so page loads add no rows.
- Votes are rate-limited per voter (`vote_interval_s`, `voter_votes_per_minute`) and per client address
  (`address_votes_per_minute`), and a voter votes on one pair of models at most `pair_votes` times.
  A refused vote reveals nothing; names come only with an accepted vote, so what a script learns about
  which answer is whose grows no faster than the limits let it vote.
`weitiao arena rank` then resamples voters, not votes, for its CIs, and can drop voters (rank.py).
Behind a reverse proxy every voter has the proxy's address: raise `address_votes_per_minute` there.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import random
import threading
import time
import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict

from weitiao.eval.arena.store import CHOICES, ArenaStore
from weitiao.infer.api import Guard, KnownQuery, UniqueKeys
from weitiao.reports import render

PAGE = Path(__file__).with_name("page.html")
COOKIE = "arena_voter"
MAX_BODY = 16 * 1024  # bytes; larger request bodies get 413 before they are read


@dataclass
class ArenaLimits:
    """Anti-stuffing limits; 0 turns one off."""

    vote_interval_s: float = 2.0  # least time between two votes of one voter
    voter_votes_per_minute: int = 10
    address_votes_per_minute: int = 30  # all voters behind one client address together
    pair_votes: int = 50  # votes one voter may ever cast on one pair of models
    new_voters_per_hour: int = 30  # voter ids issued to one client address
    round_ttl_s: float = 3600.0  # an open round unvoted this long is replaced by a new one
    max_open: int = 10_000  # open rounds held in memory; the oldest are dropped


class Vote(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # a field we would ignore is refused, not dropped

    round: str
    choice: str


class _Window:
    """Recent event times per key (`span` seconds), for at most `keys` keys: the least recently used go."""

    def __init__(self, span: float, keys: int = 100_000) -> None:
        self.span, self.keys = span, keys
        self.times: OrderedDict[str, deque[float]] = OrderedDict()

    def recent(self, key: str, now: float) -> deque[float]:
        q = self.times.get(key, deque())
        while q and q[0] <= now - self.span:
            q.popleft()
        return q

    def add(self, key: str, now: float) -> None:
        self.times[key] = q = self.recent(key, now)
        q.append(now)
        self.times.move_to_end(key)
        while len(self.times) > self.keys:
            self.times.popitem(last=False)


def _refused(status: int, message: str, retry_after: float | None = None) -> JSONResponse:
    headers = {"Retry-After": str(max(1, math.ceil(retry_after)))} if retry_after is not None else None
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def create_app(store: ArenaStore, seed: int | None = None, limits: ArenaLimits | None = None) -> FastAPI:
    """The arena app over `store`; `seed` makes the prompt/pair/side draws reproducible (tests)."""
    app = FastAPI(title="weitiao arena", docs_url=None, redoc_url=None, openapi_url=None)
    app.router.route_class = KnownQuery  # /api/round?x=1: a 400 naming it, not ignored
    app.add_middleware(UniqueKeys)
    app.add_middleware(Guard, api_key=None, max_body=MAX_BODY, flag="a vote is a few bytes")

    @app.exception_handler(RequestValidationError)
    def bad_request(_: Request, e: RequestValidationError) -> JSONResponse:
        """One line naming the field, in the `error` key the page shows (FastAPI's default is a 422 list)."""
        err = e.errors()[0]
        loc = ".".join(x for x in err["loc"][1:] if isinstance(x, str)) or "body"  # json_invalid gives a position
        msg = "unknown field; a vote is {round, choice}" if err["type"] == "extra_forbidden" else err["msg"]
        return _refused(400, f"{loc}: {msg}")

    lim = limits or ArenaLimits()
    rng = random.Random(seed)
    page = render(PAGE, title="weitiao arena · 盲评")  # a child of the shared base.html
    key = store.secret()
    lock = threading.Lock()  # handlers run in a thread pool: checks and their bookkeeping happen as one
    open_rounds: OrderedDict[str, dict] = OrderedDict()
    voter_votes = _Window(max(60.0, lim.vote_interval_s))
    address_votes = _Window(60.0)
    new_voters = _Window(3600.0)

    def sign(voter: str) -> str:
        return hmac.new(key, voter.encode(), hashlib.sha256).hexdigest()[:32]

    def voter_of(request: Request) -> str | None:
        """The voter id from a cookie this server signed, else None."""
        voter, _, sig = request.cookies.get(COOKIE, "").rpartition(".")
        return voter if voter and hmac.compare_digest(sig, sign(voter)) else None

    def address(request: Request) -> str:
        return request.client.host if request.client else "unknown"

    def new_voter(request: Request, now: float) -> str | None:
        """A fresh voter id, or None when this address had its share this hour (call under `lock`)."""
        addr = address(request)
        if lim.new_voters_per_hour and len(new_voters.recent(addr, now)) >= lim.new_voters_per_hour:
            return None
        new_voters.add(addr, now)
        return uuid.uuid4().hex

    def with_cookie(resp: JSONResponse | HTMLResponse, voter: str, request: Request) -> JSONResponse | HTMLResponse:
        # scoped to where the app is mounted (the console's /arena/<id>): two arenas, each signing with its own
        # secret, would otherwise replace each other's cookie, and a vote in the first tab was refused (403)
        path = request.scope.get("root_path") or "/"
        resp.set_cookie(COOKIE, f"{voter}.{sign(voter)}", max_age=365 * 86400, path=path, samesite="lax", httponly=True)
        return resp

    def vote_refusal(voter: str, addr: str, now: float) -> tuple[str, float] | None:
        """Why a vote is refused now and in how many seconds to retry, or None (call under `lock`)."""
        mine = voter_votes.recent(voter, now)
        last_minute = [t for t in mine if t > now - 60]
        if lim.vote_interval_s and mine and now - mine[-1] < lim.vote_interval_s:
            return f"one vote every {lim.vote_interval_s:g} s", mine[-1] + lim.vote_interval_s - now
        if lim.voter_votes_per_minute and len(last_minute) >= lim.voter_votes_per_minute:
            return f"at most {lim.voter_votes_per_minute} votes a minute", last_minute[0] + 60 - now
        theirs = address_votes.recent(addr, now)
        if lim.address_votes_per_minute and len(theirs) >= lim.address_votes_per_minute:
            return f"at most {lim.address_votes_per_minute} votes a minute from one address", theirs[0] + 60 - now
        return None

    @app.get("/", response_class=HTMLResponse)
    def index(request: Request) -> HTMLResponse:
        resp = HTMLResponse(page)
        if voter_of(request) is None:
            with lock:
                voter = new_voter(request, time.time())
            if voter:  # else no cookie: /api/round explains the refusal
                with_cookie(resp, voter, request)
        return resp

    @app.get("/api/round")
    def new_round(request: Request) -> JSONResponse:
        now, voter, issued = time.time(), voter_of(request), None
        with lock:
            if voter is None:
                voter = issued = new_voter(request, now)
                if voter is None:
                    return _refused(429, "too many new voters from this address; try again later", 3600)
            rnd = open_rounds.get(voter)
            if rnd is None or now - rnd["issued"] > lim.round_ttl_s:
                done = store.pair_votes(voter) if lim.pair_votes else {}
                rnd = store.draw_round(rng, {p for p, n in done.items() if n >= lim.pair_votes})
                if rnd is None and done:
                    return _refused(429, f"you have voted on every pair of models {lim.pair_votes} times; thank you")
                if rnd is None:
                    return _refused(404, "no prompt has answers from two models")
                open_rounds[voter] = rnd = {**rnd, "id": uuid.uuid4().hex, "issued": now}
                open_rounds.move_to_end(voter)
                while len(open_rounds) > lim.max_open:
                    open_rounds.popitem(last=False)
        resp = JSONResponse({"round": rnd["id"], "prompt": rnd["prompt"], "a": rnd["a"], "b": rnd["b"]})
        return with_cookie(resp, issued, request) if issued else resp

    @app.post("/api/vote")
    def vote(v: Vote, request: Request) -> JSONResponse:
        if v.choice not in CHOICES:
            return _refused(400, f"choice {v.choice!r}; expected one of {', '.join(CHOICES)}")
        voter, now = voter_of(request), time.time()
        if voter is None:
            return _refused(403, "no valid voter cookie; load the page first")
        with lock:
            rnd = open_rounds.get(voter)
            if rnd is None or rnd["id"] != v.round or now - rnd["issued"] > lim.round_ttl_s:
                if store.has_vote(v.round):
                    return _refused(409, "this round already has a vote")
                return _refused(404, "unknown or expired round; load a new one")
            refusal = vote_refusal(voter, address(request), now)
            if refusal:
                return _refused(429, f"too fast: {refusal[0]}; retry in {math.ceil(refusal[1])} s", refusal[1])
            pair = tuple(sorted((rnd["model_a"], rnd["model_b"])))
            if lim.pair_votes and store.pair_votes(voter).get(pair, 0) >= lim.pair_votes:  # type: ignore[call-overload]
                open_rounds.pop(voter)
                return _refused(429, f"you have voted on this pair of models {lim.pair_votes} times; load a new round")
            names = store.record_vote(rnd["id"], rnd, v.choice, voter)
            open_rounds.pop(voter)
            voter_votes.add(voter, now)
            address_votes.add(address(request), now)
        return JSONResponse(names)

    @app.get("/api/stats")
    def stats() -> dict:
        votes = store.votes()
        return {"votes": len(votes), "models": store.models()}

    return app
