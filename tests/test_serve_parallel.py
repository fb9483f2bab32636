"""`parallel_tool_calls: false` under tool_choice auto, and tool-call `arguments` as the model wrote them.

Two tiny models are trained to answer with two calls, one in the hermes format (`<tool_call>` blocks), the
other in the llama3_json format (joined by "; "), its first call's arguments holding `0.10`.
Served as is (the negative control) each calls twice; with parallel_tool_calls false the reply ends with the first
call, streamed or not, in both formats. The arguments come back as the model's text: 0.10, not 0.1.
"""

from __future__ import annotations

import json

import pytest
from loopback import running
from test_serve_tools import OTHER, WEATHER, client, train_tool_model

from weitiao.data.formats import Conversation
from weitiao.data.templates import QWEN, ChatTemplate, parse_tool_calls
from weitiao.infer.serve import ServeSettings, create_app

ASK_H = [{"role": "user", "content": "北京天气和时间？"}]
ASK_L = [{"role": "user", "content": "上海呢？"}]
HERMES = (
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "北京", "days": 0.10}}\n</tool_call>\n'
    '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>'
)
LLAMA = '{"name": "get_weather", "parameters": {"city": "上海", "days": 0.10}}; {"name": "get_time", "parameters": {}}'
TOOLS = [WEATHER, OTHER]


@pytest.fixture(scope="module")
def urls(tmp_path_factory):
    """One model per format, trained on its reply's text as assistant content (the qwen template renders it as
    written), served with that format's parser."""
    settings = ServeSettings(model_name="tiny", max_new_tokens=96)
    llama = ChatTemplate("qwen-llama3-calls", QWEN, "<|im_end|>", False, True, "llama3_json")
    made = {}
    for fmt, ask, reply in (("hermes", ASK_H, HERMES), ("llama3_json", ASK_L, LLAMA)):
        convs = [Conversation([*ask, {"role": "assistant", "content": reply}], tools=TOOLS)] * 2  # 160 steps
        made[fmt] = train_tool_model(tmp_path_factory.mktemp(fmt) / "m", convs)
    hermes, llama3 = create_app(*made["hermes"], settings), create_app(*made["llama3_json"][:2], llama, settings)
    with running(hermes) as h, running(llama3) as ll:
        yield {"hermes": (h, ASK_H), "llama3_json": (ll, ASK_L)}


def calls_of(r) -> list[tuple[str, str]]:
    return [(t.function.name, t.function.arguments) for t in r.choices[0].message.tool_calls or []]


def streamed(c, **ask) -> tuple[list[tuple[str, str]], str | None, str]:
    calls, reason, content = [], None, ""
    for chunk in c.chat.completions.create(stream=True, **ask):
        for x in chunk.choices:
            calls += [(t.function.name, t.function.arguments) for t in x.delta.tool_calls or []]
            reason = x.finish_reason or reason
            content += x.delta.content or ""
    return calls, reason, content


@pytest.mark.parametrize("fmt", ["hermes", "llama3_json"])
def test_parallel_tool_calls_false_makes_one_call(urls, fmt):
    url, ask = urls[fmt]
    c = client(url)
    base = dict(model="tiny", messages=ask, tools=TOOLS, temperature=0)
    both = c.chat.completions.create(**base)  # the negative control: two calls
    assert [n for n, _ in calls_of(both)] == ["get_weather", "get_time"], both.choices[0].message
    assert both.choices[0].finish_reason == "tool_calls"
    one = c.chat.completions.create(parallel_tool_calls=False, **base)
    assert calls_of(one) == calls_of(both)[:1] and one.choices[0].finish_reason == "tool_calls", one.choices[0]
    assert one.usage.completion_tokens < both.usage.completion_tokens  # it ended after the first call
    calls, reason, content = streamed(c, parallel_tool_calls=False, **base)
    assert (calls, reason, content) == (calls_of(both)[:1], "tool_calls", "")
    assert streamed(c, **base)[0] == calls_of(both)


@pytest.mark.parametrize("fmt", ["hermes", "llama3_json"])
def test_required_allows_several_calls(urls, fmt):
    """tool_choice required is one call or more, as OpenAI and vLLM: the mask ended the reply after the first call
    (the second was lost though parallel_tool_calls is true by default). parallel_tool_calls false, or a named
    function: one, cut after it; a mask that banned a second call made llama3_json's `}};` token impossible and
    the model ran into digits until max_tokens (no call at all)."""
    url, ask = urls[fmt]
    c = client(url)
    base = dict(model="tiny", messages=ask, tools=TOOLS, tool_choice="required", temperature=0)
    both = c.chat.completions.create(**base)
    assert [n for n, _ in calls_of(both)] == ["get_weather", "get_time"], both.choices[0].message
    assert both.choices[0].finish_reason == "tool_calls"
    assert [n for n, _ in streamed(c, **base)[0]] == ["get_weather", "get_time"]
    one = c.chat.completions.create(parallel_tool_calls=False, **base)
    assert calls_of(one) == calls_of(both)[:1] and one.choices[0].finish_reason == "tool_calls"
    named = {"type": "function", "function": {"name": "get_weather"}}  # one call of it, however the model goes on
    assert calls_of(c.chat.completions.create(**{**base, "tool_choice": named})) == calls_of(both)[:1]
    assert streamed(c, **{**base, "tool_choice": named})[:2] == (calls_of(both)[:1], "tool_calls")


@pytest.mark.parametrize("fmt", ["hermes", "llama3_json"])
def test_arguments_are_the_models_own_text(urls, fmt):
    """The model wrote "days": 0.10; the arguments were re-serialized from the parsed JSON to 0.1."""
    url, ask = urls[fmt]
    c = client(url)
    (name, args), _ = calls_of(c.chat.completions.create(model="tiny", messages=ask, tools=TOOLS, temperature=0))
    city = "北京" if fmt == "hermes" else "上海"
    assert (name, args) == ("get_weather", f'{{"city": "{city}", "days": 0.10}}')
    calls = streamed(c, model="tiny", messages=ask, tools=TOOLS, temperature=0)[0]
    assert calls[0] == (name, args)


@pytest.mark.parametrize(
    ("text", "fmt", "arguments"),
    [
        (
            '<tool_call>\n{"name": "f", "arguments": {"x": 1e999, "y": 0.10}}\n</tool_call>',
            "hermes",
            ['{"x": 1e999, "y": 0.10}'],
        ),  # fmt: skip
        ('<tool_call>\n{ "name" :"f","arguments":{"s": "\\u4e2d"} }\n</tool_call>', "hermes", ['{"s": "\\u4e2d"}']),
        ('<tool_call>\n{"name": "f", "arguments": "{\\"a\\": 1.50}"}\n</tool_call>', "hermes", ['{"a": 1.50}']),
        ('<tool_call>\n{"name": "f", "arguments": {"x": NaN}}\n</tool_call>', "hermes", []),  # NaN is no JSON
        ('<tool_call>\n{"name": "f", "arguments": {"x": -Infinity}}\n</tool_call>', "hermes", []),
        ('{"name": "f", "parameters": {"a": 1.0}}; {"name": "g"}', "llama3_json", ['{"a": 1.0}', "{}"]),
        ('{"name": "f", "parameters": {"a": Infinity}}', "llama3_json", []),
    ],
)
def test_parsed_arguments_keep_the_models_text(text, fmt, arguments):
    """Numbers as written (1e999 was re-serialized to Infinity, which no JSON reader but Python's takes); a call
    holding NaN or Infinity is no JSON: the reply stays text, as any call that is not JSON."""
    content, calls = parse_tool_calls(text, fmt)
    assert [c["arguments"] for c in calls] == arguments
    assert content == ("" if calls else text)
    for a in arguments:
        json.loads(a)
