"""`weitiao serve` under bad input, oversized bodies, hang-ups and a key: real uvicorn, real HTTP clients."""

from __future__ import annotations

import json
import os
import socket
import threading
import time

import httpx
import pytest
from conftest import serve_process
from loopback import running

from weitiao.infer.serve import ServeSettings, create_app

MSGS = [{"role": "user", "content": "今天天气怎么样？"}]
CHAT, COMP = "/v1/chat/completions", "/v1/completions"


@pytest.fixture(scope="module")
def url(parts):
    with running(create_app(*parts, ServeSettings(model_name="tiny", max_new_tokens=480))) as base:
        yield base


def local_port(r: httpx.Response) -> int:
    """The client side's port: the same port twice means the same keep-alive connection."""
    return r.extensions["network_stream"].get_extra_info("client_addr")[1]


def chat(**kw) -> dict:
    return {"messages": MSGS, "max_tokens": 2, **kw}


# (path, body: dict or raw JSON text, the field the 400 must name)
BAD = [
    (CHAT, {"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}, "messages.0.content.0.text"),
    (CHAT, {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages.0.content.0.type"),
    (CHAT, '{"messages": [{"role": "user", "content": "\\ud800"}]}', "messages.0.content"),
    (CHAT, '{"messages": [{"role": "user", "content": "x"}], "user": "\\udfff"}', "user"),
    (CHAT, chat(seed=2**64), "seed"),
    (CHAT, chat(temperature=1.0, seed=2**70), "seed"),
    (CHAT, chat(repetition_penalty=1e-300), "repetition_penalty"),
    (CHAT, chat(repetition_penalty=0), "repetition_penalty"),
    (CHAT, chat(repetition_penalty=-1), "repetition_penalty"),
    (CHAT, '{"messages": [{"role": "user", "content": "x"}], "repetition_penalty": Infinity}', "repetition_penalty"),
    (CHAT, '{"messages": [{"role": "user", "content": "x"}], "temperature": NaN}', "temperature"),
    (COMP, {"prompt": "", "max_tokens": 2}, "prompt"),
    (COMP, {"prompt": [""], "max_tokens": 2}, "prompt"),
    (CHAT, chat(max_tokens=-5), "max_tokens"),
    (CHAT, chat(max_tokens=0), "max_tokens"),
    (CHAT, chat(max_tokens=10**30), "max_tokens"),
    (CHAT, chat(temperature=-0.5), "temperature"),
    (CHAT, chat(top_p=0), "top_p"),
    (CHAT, chat(top_p=1.5), "top_p"),
    (CHAT, chat(n=10**6), "n"),
    (CHAT, chat(max_tokns=3), "max_tokns"),
    (CHAT, chat(stream_options={"include_usage": True}), "stream_options"),  # was ignored without stream
    (COMP, {"prompt": "x", "stream": False, "stream_options": {"include_usage": True}}, "stream_options"),
    (CHAT, chat(temperature="0.5"), "temperature"),  # no coercion: OpenAI answers a string number with a 400
    (CHAT, chat(n=True), "n"),
    (CHAT, chat(stream=1), "stream"),
    (CHAT, chat(stop=""), "stop"),  # an empty stop string would end every reply at once
    (CHAT, chat(stop=["好", ""]), "stop.1"),
    (CHAT, chat(top_logprobs=3), "top_logprobs"),  # without logprobs: true
    (CHAT, chat(logprobs=True, top_logprobs=21), "top_logprobs"),
    (CHAT, chat(frequency_penalty=2.5), "frequency_penalty"),
    (CHAT, chat(echo=True), "echo"),
    (COMP, {"prompt": "x", "logprobs": 21}, "logprobs"),
    (CHAT, chat(max_tokens=481), "max_tokens"),  # over the server's --max-new-tokens 480
    (CHAT, {"messages": MSGS, "max_completion_tokens": 481}, "max_completion_tokens"),
    (CHAT, chat(min_tokens=3), "min_tokens"),  # over max_tokens 2
    (CHAT, chat(stop_token_ids=[10**6]), "stop_token_ids"),
    (CHAT, chat(stop_token_ids=[-1]), "stop_token_ids.0"),
    (CHAT, chat(stop=[5]), "stop.0"),
    (CHAT, chat(stream_options={"include_usage": True, "extra": 1}), "stream_options.extra"),
    (CHAT, {"messages": [{"role": "tool", "content": "x"}]}, "messages.0.role"),
    (CHAT, [1, 2], "body"),
    (CHAT, "[" * 100_000, None),  # nested past the JSON reader's recursion limit
    # a key given twice: the first value was dropped silently (greedy asked, temperature 1.5 used)
    (CHAT, '{"messages": [{"role": "user", "content": "x"}], "temperature": 0, "temperature": 1.5}', "temperature"),
    (CHAT, '{"messages": [{"role": "user", "content": "x", "content": "y"}]}', "content"),
    (COMP, '{"prompt": "x", "max_tokens": 2, "max_tokens": 3}', "max_tokens"),
]  # fmt: skip


@pytest.mark.parametrize("path,body,field", BAD, ids=[f"{i}-{b[2]}" for i, b in enumerate(BAD)])
def test_bad_request_is_400_naming_the_field_and_keeps_the_connection(url, path, body, field):
    with httpx.Client(base_url=url, timeout=30) as c:
        if isinstance(body, str):
            r = c.post(path, content=body.encode(), headers={"Content-Type": "application/json"})
        else:
            r = c.post(path, json=body)
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["type"] == "invalid_request_error" and err["message"]
        if field:
            assert err["param"] == field and err["message"].startswith(field), err
        ok = c.get("/v1/models")
        assert ok.status_code == 200 and local_port(ok) == local_port(r)  # same keep-alive connection


def test_accepted_no_op_fields_and_a_good_request_after_bad_ones(url):
    """OpenAI fields with a value that changes nothing are accepted (clients send them); then real generation."""
    with httpx.Client(base_url=url, timeout=30) as c:
        bad = c.post(CHAT, json=chat(temperature=-1))
        body = chat(user="u1", logprobs=False, frequency_penalty=0, presence_penalty=0.0, tools=[], seed=2**64 - 1)
        good = c.post(CHAT, json={**body, "temperature": 0.7})
        assert bad.status_code == 400 and good.status_code == 200, good.text
        assert good.json()["choices"][0]["message"]["role"] == "assistant"
        assert local_port(good) == local_port(bad)
        comp = c.post(COMP, json={"prompt": "今天", "max_tokens": 2, "temperature": 0, "echo": False})
        assert comp.status_code == 200 and comp.json()["usage"]["completion_tokens"] >= 1


def test_body_over_the_limit_is_413(parts):
    with running(create_app(*parts, ServeSettings(model_name="tiny", max_body_mb=1))) as base:
        big = json.dumps({"prompt": "天气" * 400_000}).encode()  # 2.4 MB
        with httpx.Client(base_url=base, timeout=30) as c:
            r = c.post(COMP, content=big, headers={"Content-Type": "application/json"})  # Content-Length says it
            assert r.status_code == 413 and "--max-body-mb" in r.json()["error"]["message"]
            chunked = c.post(COMP, content=iter([big[i : i + 65536] for i in range(0, len(big), 65536)]))
            assert chunked.status_code == 413  # no Content-Length: refused once the bytes read pass the limit
            assert c.get("/health").status_code == 200
            under = c.post(COMP, json={"prompt": "天气" * 100_000})  # 0.6 MB: through the guard, over the context
            assert under.status_code == 400 and under.json()["error"]["code"] == "context"


def test_health_stays_fast_while_a_7mb_prompt_is_read(url):
    """JSON parsing, the template and the tokenizer run off the event loop: /health answers < 100 ms meanwhile."""
    text = "今天天气怎么样？hello 12 " * 205_000
    big = json.dumps({"messages": [{"role": "user", "content": text}]}, ensure_ascii=False).encode()
    assert 6.5e6 < len(big) < 8 * 2**20
    in_flight, done, codes = threading.Event(), threading.Event(), []

    def hammer() -> None:
        with httpx.Client(base_url=url, timeout=60) as c:
            while not done.is_set():
                in_flight.set()
                codes.append(c.post(CHAT, content=big, headers={"Content-Type": "application/json"}).status_code)

    t = threading.Thread(target=hammer)
    t.start()
    lat = []
    try:
        in_flight.wait(10)
        with httpx.Client(base_url=url, timeout=30) as c:
            c.get("/health")
            for _ in range(30):
                t0 = time.perf_counter()
                assert c.get("/health").status_code == 200
                lat.append(time.perf_counter() - t0)
                time.sleep(0.02)
    finally:
        done.set()
        t.join(60)
    assert codes and set(codes) == {400}  # over the context (the body is under the 8 MB limit)
    assert len(codes) >= 2  # the health probes overlapped big requests, not an idle server
    lat.sort()
    assert lat[len(lat) // 2] < 0.05 and lat[-2] < 0.1, lat


def test_non_streaming_hangup_stops_its_generation(url):
    """A non-streaming client that hangs up mid-generation frees its rows at once, as a dropped stream does."""
    before = httpx.get(url + "/health").json()
    body = json.dumps({"messages": MSGS, "max_tokens": 480, "temperature": 0}).encode()
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as s:
        head = (
            f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        s.sendall(head.encode() + body)
        deadline = time.time() + 20
        while httpx.get(url + "/health").json()["running"] == 0 and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)  # its batch is generating; now hang up without reading
    hung_up = time.time()
    while time.time() < hung_up + 10:
        h = httpx.get(url + "/health").json()
        if h["running"] == 0:
            break
        time.sleep(0.01)
    assert h["cancelled"] == before["cancelled"] + 1 and h["running"] == 0 and h["queued"] == 0
    # greedy, this prompt runs to all 480 tokens (no EOS) when nobody stops it
    assert h["generated_tokens"] - before["generated_tokens"] < 400 and h["served"] == before["served"]
    r = httpx.post(url + CHAT, json={"messages": MSGS, "max_tokens": 4}, timeout=30)
    assert r.status_code == 200


def test_api_key_guards_every_route_but_health(parts):
    with running(create_app(*parts, ServeSettings(model_name="tiny", api_key="sk-test"))) as base:
        with httpx.Client(base_url=base, timeout=30) as c:
            for path in ("/docs", "/redoc", "/openapi.json", "/v1/models"):
                assert c.get(path).status_code == 401, path
                assert c.get(path, headers={"Authorization": "Bearer sk-tes"}).status_code == 401
                assert c.get(path, headers={"Authorization": "Bearer sk-test"}).status_code == 200, path
            r = c.post(COMP, json={"prompt": "x" * 100}, headers={"Authorization": "Bearer nope"})
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
            assert c.get("/health").status_code == 200
    with running(create_app(*parts, ServeSettings(model_name="tiny"))) as base:  # no key: docs stay open
        assert httpx.get(base + "/openapi.json").status_code == 200


@pytest.mark.slow
def test_cli_reads_the_key_from_the_environment(tiny_model_dir):
    """`weitiao serve` with WEITIAO_API_KEY set and no --api-key flag (which `ps` would show) requires the key."""
    env = {**os.environ, "WEITIAO_API_KEY": "sk-env"}
    with serve_process(tiny_model_dir, "--max-body-mb", "0.5", env=env) as (_, base):
        key = {"Authorization": "Bearer sk-env"}
        assert httpx.get(base + "/v1/models").status_code == 401
        assert httpx.get(base + "/v1/models", headers=key).status_code == 200
        r = httpx.post(base + COMP, content=b"x" * 600_000, headers=key)
        assert r.status_code == 413
