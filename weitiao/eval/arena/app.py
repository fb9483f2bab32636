"""The arena vote page: FastAPI serving `page.html` and a two-call JSON API.

    weitiao arena serve --answers answers.jsonl --db arena.sqlite --port 8300

GET /api/round → {round, prompt, a, b} (answers only, no names); POST /api/vote {round, choice: a|b|tie|bothbad}
→ the names of both sides. The voter id is a random cookie set on the first page load.
"""

from __future__ import annotations

import random
import uuid
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel

from weitiao.eval.arena.store import ArenaStore

PAGE = Path(__file__).with_name("page.html")
COOKIE = "arena_voter"


class Vote(BaseModel):
    round: str
    choice: str


def create_app(store: ArenaStore, seed: int | None = None) -> FastAPI:
    """The arena app over `store`; `seed` makes the prompt/pair/side draws reproducible (tests)."""
    app = FastAPI(title="weitiao arena")
    rng = random.Random(seed)
    page = PAGE.read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse)
    def index(request: Request) -> HTMLResponse:
        resp = HTMLResponse(page)
        if not request.cookies.get(COOKIE):
            resp.set_cookie(COOKIE, uuid.uuid4().hex, max_age=365 * 86400, samesite="lax")
        return resp

    @app.get("/api/round")
    def new_round() -> JSONResponse:
        r = store.new_round(rng)
        if r is None:
            return JSONResponse({"error": "no prompt has answers from two models"}, status_code=404)
        return JSONResponse(r)

    @app.post("/api/vote")
    def vote(v: Vote, request: Request) -> JSONResponse:
        try:
            names = store.vote(v.round, v.choice, request.cookies.get(COOKIE, "anonymous"))
        except KeyError:
            return JSONResponse({"error": "unknown round"}, status_code=404)
        except ValueError as e:
            return JSONResponse({"error": str(e)}, status_code=409 if "already" in str(e) else 400)
        return JSONResponse(names)

    @app.get("/api/stats")
    def stats() -> dict:
        votes = store.votes()
        return {"votes": len(votes), "models": store.models()}

    return app
