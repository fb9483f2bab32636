"""Streaming clients of a real `weitiao serve` process over raw sockets: a slow reader (TCP back-pressure) keeps
its row and gets the whole reply; a client that closes mid-stream leaves the running batch (its KV cache row is
dropped) while the other streams complete.

The earlier "a client that stops reading is cancelled after ~15–23 tokens" was the client hanging up:
`next(r.iter_lines())` on httpx drops the line generator at once, and closing it closes the connection."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import httpx
import pytest
from conftest import serve_process

MSGS = [{"role": "user", "content": "今天天气怎么样？"}]


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    with serve_process(tiny_model_dir, "--max-batch", "4", "--max-new-tokens", "480") as (_, base):
        yield int(base.rsplit(":", 1)[1])


def health(port: int) -> dict:
    return httpx.get(f"http://127.0.0.1:{port}/health").json()


def wait_for(port: int, cond, what: str, timeout: float = 30) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        h = health(port)
        if cond(h):
            return h
        time.sleep(0.01)
    raise AssertionError(f"{what}: not seen within {timeout} s; last /health {h}")


def open_stream(port: int, max_tokens: int, rcvbuf: int = 0, **extra) -> socket.socket:
    """A raw HTTP/1.1 streaming chat request; returns the socket after the first bytes of the answer."""
    body = {"messages": MSGS, "max_tokens": max_tokens, "temperature": 0, "stream": True, "ignore_eos": True}
    data = json.dumps({**body, "stream_options": {"include_usage": True}, **extra}).encode()
    s = socket.socket()
    if rcvbuf:  # a small window, so the server's writes really back up while we do not read
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.connect(("127.0.0.1", port))
    head = "POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
    head += f"Content-Length: {len(data)}\r\n\r\n"
    s.sendall(head.encode() + data)
    s.settimeout(60)
    assert s.recv(64).startswith(b"HTTP/1.1 200")
    return s


def read_to_end(s: socket.socket) -> dict:
    """The rest of the stream; the usage chunk (include_usage) and whether [DONE] arrived."""
    data = b""
    while b"data: [DONE]" not in data:
        got = s.recv(65536)
        if not got:
            break
        data += got
    s.close()
    events = [json.loads(line[6:]) for line in data.decode(errors="replace").split("\n") if line.startswith("data: {")]
    usage = [e["usage"] for e in events if e.get("usage")]
    reasons = [c["finish_reason"] for e in events for c in e["choices"] if c.get("finish_reason")]
    return {"done": b"data: [DONE]" in data, "usage": usage[-1] if usage else None, "reasons": reasons}


def unsent_bytes(server_port: int, client_port: int) -> int | None:
    """The server socket's send queue for this connection (bytes the client has not taken), from /proc/net/tcp."""
    table = Path("/proc/net/tcp")
    if not table.exists():
        return None
    for line in table.read_text().splitlines()[1:]:
        f = line.split()
        local, remote = int(f[1].split(":")[1], 16), int(f[2].split(":")[1], 16)
        if (local, remote) == (server_port, client_port):
            return int(f[4].split(":")[0], 16)
    return None


@pytest.mark.slow
def test_a_slow_reader_is_not_a_hang_up_and_gets_the_whole_reply(server):
    before = health(server)
    # ~1 kB per token with 5 log-prob alternatives: far more than the 4 kB window holds while we sleep
    s = open_stream(server, 300, rcvbuf=4096, logprobs=True, top_logprobs=5)
    client_port = s.getsockname()[1]
    backed_up = 0
    for _ in range(40):  # up to 4 s not reading
        time.sleep(0.1)
        backed_up = max(backed_up, unsent_bytes(server, client_port) or 0)
    if Path("/proc/net/tcp").exists():
        assert backed_up > 0, "the server's writes never waited on the client: no back-pressure was exercised"
    assert health(server)["cancelled"] == before["cancelled"]
    got = read_to_end(s)
    assert got["done"] and got["reasons"] == ["length"] and got["usage"]["completion_tokens"] == 300
    after = wait_for(server, lambda h: h["served"] == before["served"] + 1, "the slow stream counted as served")
    assert after["cancelled"] == before["cancelled"]


@pytest.mark.slow
def test_a_client_that_closes_mid_stream_leaves_the_batch_and_the_others_finish(server):
    before = health(server)
    streams = [open_stream(server, 450) for _ in range(3)]
    wait_for(server, lambda h: h["kv_rows"] == 3, "three rows decoding")
    streams[0].close()  # a real hang-up: FIN on the socket
    h = wait_for(
        server, lambda h: h["cancelled"] == before["cancelled"] + 1 and h["kv_rows"] == 2, "the closed row leaving"
    )
    assert h["running"] == 2 and h["steps"] - before["steps"] < 450  # the other two are still generating
    for s in streams[1:]:
        got = read_to_end(s)
        assert got["done"] and got["usage"]["completion_tokens"] == 450
    h = wait_for(server, lambda h: h["served"] == before["served"] + 2 and h["kv_rows"] == 0, "the two finishing")
    assert h["cancelled"] == before["cancelled"] + 1
