"""Serve an ASGI app with uvicorn on a free loopback port, in a thread (real HTTP for tests)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn


@contextmanager
def running(app) -> Iterator[str]:
    """Yield the base URL (no /v1) while `app` is served; stop the server on exit."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 10
    while not server.started and time.time() < deadline:
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@contextmanager
def decoding_blocker(base: str, messages: list, max_tokens: int = 256) -> Iterator[None]:
    """A streamed request decoding `max_tokens` (ignore_eos) for as long as the block lasts, then hung up on.

    Requests sent inside the block find it decoding and join its running batch however slow the box is: a blocker of
    a fixed 60 tokens ended before they arrived on a loaded CI box (none joined). Leaving the block closes the stream,
    the server cancels the blocker's row, and this waits until nothing runs, so the next blocker starts alone."""
    import httpx

    body = {"messages": messages, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True, "stream": True}
    with httpx.Client(timeout=60) as http:
        with http.stream("POST", base + "/v1/chat/completions", json=body) as r:
            assert r.status_code == 200
            while http.get(base + "/health").json()["running"] == 0:
                time.sleep(0.005)
            yield
        deadline = time.time() + 60
        while http.get(base + "/health").json()["running"]:
            assert time.time() < deadline, "the blocker's row was not cancelled"
            time.sleep(0.01)
