"""`tools[].function.strict: true` on `weitiao serve`, through the official `openai` client.

A tiny model is trained to call get_weather with {"city": "北京"} though the tool's strict schema says otherwise;
decoding that prompt by itself (the negative control) it writes those arguments, and served with strict: true the
mask makes them follow the schema, under tool_choice auto (as vLLM's structural tags), required and named, whole,
streamed and with n > 1. A random model forced to call writes arguments outside the schema unless strict, in the
llama3_json format too.
"""

from __future__ import annotations

import json

import httpx
import jsonschema
import openai
import pytest
import torch
from conftest import replaced, walked_mask
from loopback import running
from test_serve_tools import ASK, CALL, FINAL, OTHER, RESULT, client, train_tool_model

from weitiao.data.formats import Conversation
from weitiao.data.templates import QWEN, ChatTemplate, parse_tool_calls
from weitiao.infer.constrain import Pattern, tool_call_pattern
from weitiao.infer.schema import strict_arguments
from weitiao.infer.serve import ServeSettings, create_app

SCHEMA = {  # {"city": "北京"} breaks it three ways: the city's enum, `days` missing, `unit` missing
    "type": "object",
    "properties": {
        "city": {"type": "string", "enum": ["上海", "广州"]},
        "days": {"type": "integer"},
        "unit": {"anyOf": [{"type": "null"}, {"enum": ["c", "f"]}]},
    },
    "required": ["city", "days", "unit"],
    "additionalProperties": False,
}


def weather(strict: bool, schema: dict = SCHEMA) -> dict:
    fn = {"name": "get_weather", "description": "查天气", "parameters": schema, "strict": strict}
    return {"type": "function", "function": fn}


@pytest.fixture(scope="module")
def strict_model(tmp_path_factory):
    """Trained to call get_weather with {"city": "北京"} for ASK, its tools in the prompt as a strict client sends."""
    tools = [weather(True), OTHER]
    convs = [
        Conversation([*ASK, CALL], tools=tools),
        Conversation([*ASK, CALL, RESULT, {"role": "assistant", "content": FINAL}], tools=tools),
    ]
    return train_tool_model(tmp_path_factory.mktemp("strict") / "m", convs)


@pytest.fixture(scope="module")
def url(strict_model):
    with running(create_app(*strict_model, ServeSettings(model_name="tiny", max_new_tokens=64))) as base:
        yield base


def breaks(arguments: str) -> bool:
    try:
        jsonschema.validate(json.loads(arguments), SCHEMA)
    except jsonschema.ValidationError:
        return True
    return False


def test_strict_auto_call_follows_the_schema(strict_model, url):
    """Under tool_choice auto the model opens its call by itself; strict makes the arguments follow the schema,
    non-streamed, streamed, and in each of n sampled choices. Negative control: the same prompt decoded greedily
    without the server gives {"city": "北京"}, which breaks it."""
    model, tok, template = strict_model
    tools = [weather(True), OTHER]
    ids = tok(template.render(tok, ASK, True, tools), add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=60, do_sample=False, eos_token_id=tok.eos_token_id)
    (free,) = parse_tool_calls(tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True), "hermes")[1]
    assert json.loads(free["arguments"]) == {"city": "北京"} and breaks(free["arguments"])

    c = client(url)
    r = c.chat.completions.create(model="tiny", messages=ASK, tools=tools, temperature=0)
    (call,) = r.choices[0].message.tool_calls
    assert r.choices[0].finish_reason == "tool_calls" and call.function.name == "get_weather"
    assert not breaks(call.function.arguments), call.function.arguments
    chunks = list(c.chat.completions.create(model="tiny", messages=ASK, tools=tools, temperature=0, stream=True))
    streamed = [tc for ch in chunks if ch.choices for tc in ch.choices[0].delta.tool_calls or []]
    assert [(t.function.name, t.function.arguments) for t in streamed] == [("get_weather", call.function.arguments)]
    many = c.chat.completions.create(model="tiny", messages=ASK, tools=tools, temperature=1.0, seed=3, n=3)
    for ch in many.choices:  # sampled: each choice that calls get_weather follows the schema
        for t in ch.message.tool_calls or []:
            assert t.function.name in ("get_weather", "get_time")
            assert t.function.name != "get_weather" or not breaks(t.function.arguments), t.function.arguments


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_weather"}}])
def test_strict_forced_call_follows_the_schema(url, choice):
    c = client(url)
    loose = c.chat.completions.create(
        model="tiny", messages=ASK, tools=[weather(False), OTHER], tool_choice=choice, temperature=0
    )
    assert breaks(loose.choices[0].message.tool_calls[0].function.arguments)  # negative control
    r = c.chat.completions.create(
        model="tiny", messages=ASK, tools=[weather(True), OTHER], tool_choice=choice, temperature=0
    )
    (call,) = r.choices[0].message.tool_calls
    assert call.function.name == "get_weather" and not breaks(call.function.arguments), call.function.arguments


def test_random_model_forced_call_in_llama3_json_follows_the_schema(strict_model, tmp_path):
    """A random model, forced to call in the llama3_json format, writes any JSON object as arguments; strict makes
    them follow the schema (sampled, n=4, whole and streamed)."""
    from conftest import save_tiny_model
    from transformers import AutoModelForCausalLM

    tokenizer = strict_model[1]  # its tool prompt fits the 512 positions
    model = AutoModelForCausalLM.from_pretrained(save_tiny_model(tmp_path / "m", tokenizer)).eval()
    fmt = ChatTemplate("qwen-llama3-calls", QWEN, "<|im_end|>", False, True, "llama3_json")
    with running(create_app(model, tokenizer, fmt, ServeSettings(model_name="tiny", max_new_tokens=200))) as base:
        c = client(base)
        ask = dict(model="tiny", messages=ASK, tool_choice="required", temperature=1.0, seed=5, n=4, max_tokens=200)
        loose = c.chat.completions.create(tools=[weather(False)], **ask)  # the negative control
        assert any(breaks(t.function.arguments) for ch in loose.choices for t in ch.message.tool_calls or [])
        r = c.chat.completions.create(tools=[weather(True)], **ask)
        done = [ch for ch in r.choices if ch.finish_reason == "tool_calls"]
        assert done, [ch.message.content for ch in r.choices]
        for ch in done:
            assert not breaks(ch.message.tool_calls[0].function.arguments), ch.message.tool_calls[0]
        chunks = list(c.chat.completions.create(tools=[weather(True)], stream=True, **ask))
        args = [tc.function.arguments for ch in chunks for x in ch.choices for tc in x.delta.tool_calls or []]
        assert args and not any(breaks(a) for a in args)


def bad(schema_path: list, value) -> dict:
    """SCHEMA with the value at `schema_path` replaced (None: deleted)."""
    return replaced(SCHEMA, schema_path, value)


@pytest.mark.parametrize(
    ("schema", "param"),
    [  # what OpenAI refuses in a strict schema, by the path at fault
        (bad(["required"], ["city", "days"]), "tools.0.function.parameters.required"),
        (bad(["additionalProperties"], None), "tools.0.function.parameters.additionalProperties"),
        (
            bad(["properties", "unit"], {"type": "object", "properties": {}}),
            "tools.0.function.parameters.properties.unit.additionalProperties",
        ),
        (bad(["properties", "days"], {"description": "no type"}), "tools.0.function.parameters.properties.days.type"),
        # what the mask cannot enforce: refused, never passed as strict
        (bad(["properties", "days", "multipleOf"], 0.1), "tools.0.function.strict"),
        (bad(["properties", "city"], {"type": "string", "pattern": "(a)\\1"}), "tools.0.function.strict"),
        (bad(["properties", "city"], {"oneOf": [{"type": "string"}]}), "tools.0.function.strict"),
        # an enum beside the type it breaks, or beside anyOf: the reply would break the type, or anyOf was dropped
        (bad(["properties", "days", "enum"], [1, "2"]), "tools.0.function.parameters.properties.days.enum"),
        (bad(["properties", "unit", "enum"], ["c"]), "tools.0.function.strict"),
    ],
)
def test_strict_schemas_openai_refuses_or_we_cannot_enforce_are_400(url, schema, param):
    """Each is a 400 naming the field, whatever tool_choice (none too, as OpenAI checks the schema); the same schema
    without strict is answered (the negative control: only strict asks for the schema to hold)."""
    for choice in ("auto", "none"):
        body = {"model": "tiny", "messages": ASK, "tools": [weather(True, schema)], "tool_choice": choice}
        r = httpx.post(url + "/v1/chat/completions", json={**body, "max_tokens": 2}, timeout=30)
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["param"] == param and err["message"].startswith(param + ": "), err
    body["tools"] = [weather(False, schema)]
    assert httpx.post(url + "/v1/chat/completions", json={**body, "max_tokens": 2}, timeout=30).status_code == 200


def accepts(pattern: Pattern, text: str) -> bool:
    state = pattern.start
    for b in text.encode():
        if (state := pattern.step(state, b)) is None:
            return False
    return pattern.done(state)


def test_strict_grammar_reads_the_schema():
    """The grammar behind strict: keys in the schema's order, arrays within minItems/maxItems, $ref recursion, free
    text around hermes calls under auto, and llama3_json's prose-or-calls."""
    schema = {
        "type": "object",
        "properties": {
            "tags": {"type": "array", "items": {"type": "number"}, "minItems": 1, "maxItems": 2},
            "tree": {"$ref": "#/$defs/node"},
        },
        "required": ["tags", "tree"],
        "additionalProperties": False,
        "$defs": {
            "node": {
                "type": ["object", "null"],
                "properties": {"kid": {"$ref": "#/$defs/node"}},
                "required": ["kid"],
                "additionalProperties": False,
            }
        },
    }
    p = Pattern()
    hermes = tool_call_pattern("hermes", ["f", "g"], [strict_arguments(p, schema, "tools.0.function"), None], True, p)

    def call(name: str, args: str) -> str:
        return f'<tool_call>\n{{"name": "{name}", "arguments": {args}}}\n</tool_call>'

    good = '{"tags": [1.5, -2], "tree": {"kid": {"kid": null}}}'
    assert accepts(hermes, "") and accepts(hermes, "Let me see <tool") and accepts(hermes, "ok " + call("f", good))
    assert accepts(hermes, call("f", good) + "\n" + call("g", '{"x": [1]}') + " done")
    for wrong in (
        '{"tree": null, "tags": [1]}',  # the schema's order
        '{"tags": [], "tree": null}',  # minItems
        '{"tags": [1, 2, 3], "tree": null}',  # maxItems
        '{"tags": [1], "tree": {"kid": 1}}',  # $ref
        '{"tags": [1], "tree": null, "x": 1}',  # additionalProperties
    ):
        assert not accepts(hermes, call("f", wrong)), wrong
    assert not accepts(hermes, call("h", "{}"))  # names are the tools'
    p = Pattern()
    llama = tool_call_pattern("llama3_json", ["f"], [strict_arguments(p, schema, "tools.0.function")], True, p)
    assert accepts(llama, "plain {text}") and accepts(llama, "")
    assert accepts(llama, f' {{"name": "f", "parameters": {good}}}; {{"name": "f", "parameters": {good}}}')
    assert not accepts(llama, '{"x": 1} is JSON, not a call')
    assert not accepts(llama, '{"name": "f", "parameters": {"tags": [1], "tree": 2}}')


def test_strict_tool_without_parameters_calls_with_none(url):
    """A strict tool whose schema is fine but whose parameters are left out is OpenAI's empty parameter list: the
    call's arguments are {}."""
    fn = {"name": "get_weather", "strict": True}
    r = client(url).chat.completions.create(
        model="tiny", messages=ASK, tools=[{"type": "function", "function": fn}], temperature=0
    )
    for t in r.choices[0].message.tool_calls or []:
        assert t.function.arguments == "{}"
    with pytest.raises(openai.BadRequestError) as e:
        fn = {"name": "get_weather", "strict": True, "parameters": {"type": "array", "items": {"type": "string"}}}
        client(url).chat.completions.create(model="tiny", messages=ASK, tools=[{"type": "function", "function": fn}])
    assert e.value.body["param"] == "tools.0.function.parameters.type"


def test_mask_shortcuts_equal_the_plain_byte_walk_in_free_text_and_strict_arguments(strict_model):
    """The free-text and plain-string shortcuts give exactly the mask of walking every token's bytes, along a reply
    with text, a half-written trigger, a call and strict arguments."""
    from weitiao.infer.constrain import MaskCache, TokenBytes

    tok = strict_model[1]
    stop = tok.convert_tokens_to_ids("<|im_end|>")
    toks = TokenBytes.of(tok, {stop})
    cache = MaskCache(toks)
    schema = {**SCHEMA, "properties": {**SCHEMA["properties"], "note": {"type": "string"}}}
    schema["required"] = [*SCHEMA["required"], "note"]
    p = Pattern()
    args = [strict_arguments(p, schema, "t"), None]
    pattern = tool_call_pattern("hermes", ["get_weather", "get_time"], args, True, p)
    call = '{"city": "上海", "days": 12, "unit": null, "note": "晴☀️ \\"q\\" \\u00e9"}'
    raw = f'好的 a <tool <tool_call>\n{{"name": "get_weather", "arguments": {call}}}\n</tool_call> 再见'.encode()
    state = pattern.start
    for k in range(len(raw) + 1):
        want = walked_mask(pattern, state, toks, len(tok))
        want[stop] = pattern.done(state)
        assert torch.equal(cache.get(pattern, state, len(tok)), want), raw[:k]
        if k < len(raw):
            state = pattern.step(state, raw[k])
    assert pattern.done(state) and not pattern.final(state)


def test_deep_strict_schema_is_a_400_not_a_500(url):
    """A strict schema 300 objects deep was compiled by recursion into a RecursionError: a 500 with a traceback. Now
    a 400 naming tools.0.function.strict; 12 deep (the negative control) is served."""

    def nest(depth: int) -> dict:
        s: dict = {"type": "string"}
        for _ in range(depth):
            s = {"type": "object", "properties": {"a": s}, "required": ["a"], "additionalProperties": False}
        return s

    for depth, status in ((12, 200), (300, 400)):
        fn = {"name": "f", "parameters": nest(depth), "strict": True}
        body = {"model": "tiny", "messages": ASK, "max_tokens": 2, "tools": [{"type": "function", "function": fn}]}
        r = httpx.post(url + "/v1/chat/completions", json=body, timeout=60)
        assert r.status_code == status, r.text[:300]
    assert r.json()["error"]["param"] == "tools.0.function.strict"


def test_self_referring_strict_schema_is_a_400():
    """{"$ref": "#/$defs/x"} as x's whole definition matches no value: the grammar had no state after `{"a": ` and a
    call would have had no allowed token. Now a 400 naming the definition; x as null-or-itself (the negative
    control) is fine."""
    from weitiao.infer.api import BadRequest

    def schema(x: dict) -> dict:
        props = {"a": {"$ref": "#/$defs/x"}}
        return {**SCHEMA, "properties": props, "required": ["a"], "$defs": {"x": x}}

    with pytest.raises(BadRequest) as e:
        strict_arguments(Pattern(), schema({"$ref": "#/$defs/x"}), "tools.0.function")
    assert e.value.param == "tools.0.function.parameters.$defs.x"
    p = Pattern()
    loop = tool_call_pattern(
        "hermes", ["f"], [strict_arguments(p, schema({"anyOf": [{"$ref": "#/$defs/x"}, {"type": "null"}]}), "t")], p=p
    )
    assert accepts(loop, '<tool_call>\n{"name": "f", "arguments": {"a": null}}\n</tool_call>')


def test_ref_into_a_list_of_the_schema():
    """A $ref's JSON pointer may step through a list ("#/properties/a/anyOf/0"); it was refused as pointing to
    nothing."""
    schema = {
        "type": "object",
        "properties": {
            "a": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
            "b": {"$ref": "#/properties/a/anyOf/0"},
        },
        "required": ["a", "b"],
        "additionalProperties": False,
    }
    p = Pattern()
    pattern = tool_call_pattern("llama3_json", ["f"], [strict_arguments(p, schema, "tools.0.function")], p=p)
    assert accepts(pattern, '{"name": "f", "parameters": {"a": null, "b": 3}}')
    assert not accepts(pattern, '{"name": "f", "parameters": {"a": null, "b": null}}')
