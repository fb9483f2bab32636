"""Teacher client against real HTTP servers on loopback: `weitiao serve` (tiny model) and a scripted app.

`running` and `scripted_app` are imported by the other data-engineering tests.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from loopback import running
from transformers import AutoModelForCausalLM

from weitiao.data.templates import resolve_template
from weitiao.infer.serve import ServeSettings, create_app
from weitiao.json_reply import parse_json_reply
from weitiao.teacher import Teacher, TeacherError

MSGS = [{"role": "user", "content": "今天天气怎么样？"}]


def scripted_app(answer: Callable[[dict], tuple[int, str]], delay: float = 0.0) -> FastAPI:
    """A minimal /v1/chat/completions: `answer(body)` → (status, reply text); logs bodies in `app.state.log`."""
    app = FastAPI()
    app.state.log, app.state.inflight, app.state.max_inflight = [], 0, 0

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        app.state.log.append(body)
        app.state.inflight += 1
        app.state.max_inflight = max(app.state.max_inflight, app.state.inflight)
        try:
            await asyncio.sleep(delay)
            status, text = answer(body)
        finally:
            app.state.inflight -= 1
        if status != 200:
            return JSONResponse({"error": {"message": text, "type": "scripted", "code": None}}, status)
        message = {"role": "assistant", "content": text}
        return {
            "id": "x",
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }

    return app


def free_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/v1"  # closed again: nothing listens there


def sequence(*steps: tuple[int, str]) -> Callable[[dict], tuple[int, str]]:
    """Answer with each step in turn, then repeat the last."""
    it = iter(steps)
    last = [steps[-1]]

    def answer(body: dict) -> tuple[int, str]:
        last[0] = next(it, last[0])
        return last[0]

    return answer


# ---------------------------------------------------------------------------------------------- real server


@pytest.fixture(scope="module")
def serve_url(tiny_model_dir, tokenizer):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    with running(create_app(model, tokenizer, resolve_template(tokenizer), ServeSettings(model_name="tiny"))) as u:
        yield u


def test_weitiao_serve_as_teacher_and_cache(serve_url, tmp_path):
    t = Teacher(serve_url + "/v1", "tiny", cache_dir=tmp_path, max_tokens=8, temperature=0.0)
    served = httpx.get(serve_url + "/health").json()["served"]
    a = t.chat(MSGS)
    assert isinstance(a, str) and t.http_calls == 1
    assert httpx.get(serve_url + "/health").json()["served"] == served + 1
    assert t.chat(MSGS) == a and t.http_calls == 1  # cache hit: no request
    assert httpx.get(serve_url + "/health").json()["served"] == served + 1
    assert len(list(tmp_path.rglob("*.json"))) == 1
    # the key ignores the URL: another endpoint (even a dead one) with the same cache answers from disk
    other = Teacher(free_port_url(), "tiny", cache_dir=tmp_path, max_tokens=8, temperature=0.0)
    assert other.chat(MSGS) == a and other.http_calls == 0
    # ...but any sampling change is a new request
    t.chat(MSGS, max_tokens=6)
    assert t.http_calls == 2 and len(list(tmp_path.rglob("*.json"))) == 2


# ---------------------------------------------------------------------------------------------- retries


def test_retries_5xx_and_429_then_succeeds():
    app = scripted_app(sequence((500, "boom"), (429, "slow down"), (200, "好的")))
    with running(app) as u:
        t = Teacher(u + "/v1", "m", retries=3, backoff=0.01)
        assert t.chat(MSGS) == "好的"
    assert len(app.state.log) == 3 and t.http_calls == 3


def test_no_retry_on_400_and_give_up_after_retries():
    app = scripted_app(sequence((400, "bad field")))
    with running(app) as u:
        with pytest.raises(TeacherError, match=r"HTTP 400: bad field") as e:
            Teacher(u + "/v1", "m", retries=3, backoff=0.01).chat(MSGS)
        assert u in str(e.value)
    assert len(app.state.log) == 1
    app = scripted_app(sequence((503, "overloaded")))
    with running(app) as u:
        with pytest.raises(TeacherError, match=r"HTTP 503: overloaded .*after 3 tries"):
            Teacher(u + "/v1", "m", retries=2, backoff=0.01).chat(MSGS)
    assert len(app.state.log) == 3


def test_teacher_down_is_clear_and_fast(tmp_path):
    url = free_port_url()
    t = Teacher(url, "m", retries=2, backoff=0.01, cache_dir=tmp_path, concurrency=2)
    t0 = time.perf_counter()
    out = t.chat_many([[{"role": "user", "content": str(i)}] for i in range(20)], progress=False)
    assert all(isinstance(o, TeacherError) for o in out)
    assert url in str(out[0]) and "cannot connect" in str(out[0]) and "weitiao serve" in str(out[0])
    assert t.http_calls <= 2 * 3  # once one request exhausted its retries, the rest fail without trying
    assert time.perf_counter() - t0 < 5
    assert not list(tmp_path.rglob("*.json"))


# ---------------------------------------------------------------------------------------------- chat_many


def test_chat_many_order_partial_results_and_resume(tmp_path):
    def answer(body: dict) -> tuple[int, str]:
        text = body["messages"][-1]["content"]
        return (400, "refused") if "bad" in text else (200, text.upper())

    prompts = ["a", "bad1", "c", "d", "bad2", "f"]
    reqs = [[{"role": "user", "content": p}] for p in prompts]
    app = scripted_app(answer, delay=0.02)
    with running(app) as u:
        t = Teacher(u + "/v1", "m", cache_dir=tmp_path, concurrency=3, backoff=0.01)
        out = t.chat_many(reqs, progress=False)
        assert [o if isinstance(o, str) else None for o in out] == ["A", None, "C", "D", None, "F"]
        assert isinstance(out[1], TeacherError) and "refused" in str(out[1])
        assert len(app.state.log) == 6
        # re-run: the four good replies come from the cache; only the failures are asked again
        out2 = t.chat_many(reqs, progress=False)
        assert [str(o) for o in out2] == [str(o) for o in out]
        assert len(app.state.log) == 8
        assert {b["messages"][-1]["content"] for b in app.state.log[6:]} == {"bad1", "bad2"}


def test_concurrency_limit_and_request_body():
    app = scripted_app(lambda b: (200, "ok"), delay=0.15)
    with running(app) as u:
        t = Teacher(u + "/v1", "teacher-x", concurrency=3, temperature=0.3, max_tokens=99, seed=5)
        assert (
            t.chat_many([MSGS + [{"role": "user", "content": str(i)}] for i in range(9)], progress=False) == ["ok"] * 9
        )
    assert app.state.max_inflight == 3
    body = app.state.log[0]
    assert body["model"] == "teacher-x" and body["temperature"] == 0.3 and body["max_tokens"] == 99
    assert body["seed"] == 5


# ---------------------------------------------------------------------------------------------- JSON repair


@pytest.mark.parametrize(
    "reply, value",
    [
        ('[{"q": "a", "a": "b"}]', [{"q": "a", "a": "b"}]),
        ('好的，结果如下：\n```json\n[{"q": "问", "a": "答",},]\n```\n希望有帮助！', [{"q": "问", "a": "答"}]),
        ('以下是问答对：[{"q": "x"}] 以上。', [{"q": "x"}]),
        ('{"q": "含[括号]和{花括号}"}', {"q": "含[括号]和{花括号}"}),
        ("[{“q”：“问题”，“a”：“他说“你好”了”}]", [{"q": "问题", "a": "他说“你好”了"}]),
        ('[{"q"："你好"，"a"："在的，请讲"}]', [{"q": "你好", "a": "在的，请讲"}]),
        ('{"q": 1}\n{"q": 2}', [{"q": 1}, {"q": 2}]),
        ('[{"q": "第一行\n第二行"}]', [{"q": "第一行\n第二行"}]),
    ],
)
def test_parse_json_reply_repairs(reply, value):
    assert parse_json_reply(reply) == value


@pytest.mark.parametrize(
    "reply, reason",
    [
        ("", "empty"),
        ("我不知道。", "no JSON"),
        ('[{"q": "被截断', "cut off"),
        ('[{"q": "a" "a": "b"}]', "invalid JSON"),
    ],
)
def test_parse_json_reply_rejects(reply, reason):
    with pytest.raises(ValueError, match=reason):
        parse_json_reply(reply)


def test_non_openai_reply_and_401_are_teacher_errors():
    from fastapi.responses import PlainTextResponse

    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        if request.headers.get("authorization") == "Bearer none":
            return JSONResponse({"error": {"message": "invalid api key"}}, 401)
        return PlainTextResponse("<html>proxy error page</html>")

    with running(app) as u:
        with pytest.raises(TeacherError, match=r"HTTP 401: invalid api key \(set \$NO_SUCH_KEY_ENV\)"):
            Teacher(u + "/v1", "m", api_key_env="NO_SUCH_KEY_ENV").chat(MSGS)
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("WT_TEST_KEY", "secret")
            out = Teacher(u + "/v1", "m", api_key_env="WT_TEST_KEY").chat_many([MSGS], progress=False)
    assert isinstance(out[0], TeacherError) and "not an OpenAI chat completion: '<html>proxy" in str(out[0])


@pytest.mark.parametrize(
    "body, reason",
    [
        ('{"choices": [', "bad response: body is not valid JSON"),  # a 200 cut off by a proxy
        ('{"choices": [{}]}', "empty reply"),  # a choice without a message
        ('{"choices": [{"message": {"content": 5}}]}', "reply content is int '5', not text"),
    ],
)
def test_broken_completion_is_a_teacher_error_not_a_crash(body, reason):
    """A malformed 200 raised JSONDecodeError / AttributeError out of chat_many (traceback, the batch lost) or
    returned the number 5 as the reply (cached, then parsed as text); now each is that request's TeacherError."""
    from fastapi.responses import Response

    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        return Response(body, media_type="application/json")

    with running(app) as u:
        out = Teacher(u + "/v1", "m", retries=0).chat_many([MSGS, MSGS], progress=False)
    assert all(isinstance(o, TeacherError) and reason in str(o) for o in out), out
