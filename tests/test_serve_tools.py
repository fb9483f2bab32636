"""Tools and response_format on `weitiao serve`, driven by the official `openai` client.

A random tiny model never calls a tool, so one fixture trains the tiny Llama a few dozen steps (on its
assistant labels, through the qwen template's tool format) to call get_weather for one question and to
answer after the tool's result: the server then parses real generated text, no stub anywhere. Constrained
decoding is checked against Python's own JSON reader on a random model.
"""

from __future__ import annotations

import json
import math
import random
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
import torch
from conftest import CORPUS, SPECIALS, build_tokenizer, save_tiny_model, walked_mask
from loopback import decoding_blocker, running

from weitiao.data.chat import EncodeOptions, encode
from weitiao.data.formats import Conversation
from weitiao.data.templates import QWEN, ChatTemplate, parse_tool_calls, resolve_template
from weitiao.infer.constrain import Constrain, MaskCache, Pattern, TokenBytes, json_object, tool_call_pattern
from weitiao.infer.logprobs import _BYTE_DECODER
from weitiao.infer.serve import ServeSettings, create_app
from weitiao.infer.tools import ToolStream, reply_with_calls

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "查天气",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
OTHER = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
ASK = [{"role": "user", "content": "北京天气怎么样？"}]
CALL = {
    "role": "assistant",
    "content": "",
    "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "北京"}}}],
}
RESULT = {"role": "tool", "content": "晴"}
FINAL = "北京今天是大晴天☀️"
CONVS = [
    Conversation([*ASK, CALL], tools=[WEATHER, OTHER]),
    Conversation([*ASK, CALL, RESULT, {"role": "assistant", "content": FINAL}], tools=[WEATHER, OTHER]),
]


def client(base: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base + "/v1", api_key="none", max_retries=0, timeout=60)


def tool_tokenizer(convs: list[Conversation] = CONVS):
    """The test tokenizer's recipe with the tool prompt in its corpus, so a tool conversation is ~150 tokens
    (the 512-token test vocabulary spells Qwen's English tool instructions out letter by letter)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    template = resolve_template(build_tokenizer(), "qwen")
    texts = [template.render(build_tokenizer(), c.messages, tools=c.tools) for c in convs]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1200,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        max_token_length=64,
    )
    tok.train_from_iterator((CORPUS + texts) * 10, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", additional_special_tokens=SPECIALS[1:]
    )
    fast.add_tokens(["<tool_call>", "</tool_call>"])  # as Qwen2.5 has them: added, not special
    return fast


def train_tool_model(folder, convs: list[Conversation]):
    """A tiny Llama trained 80 steps on the assistant labels of `convs` (qwen template): model, tokenizer, template."""
    from transformers import AutoModelForCausalLM

    tokenizer = tool_tokenizer(convs)
    model = AutoModelForCausalLM.from_pretrained(save_tiny_model(folder, tokenizer))
    template = resolve_template(tokenizer, "qwen")
    batch = [encode(c, tokenizer, template, EncodeOptions(max_len=512)) for c in convs]
    assert max(len(e) for e in batch) < 300  # well inside the 512 context, even with max_tokens
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(80):
        for e in batch:
            model(input_ids=torch.tensor([e.input_ids]), labels=torch.tensor([e.labels])).loss.backward()
        opt.step()
        opt.zero_grad()
    return model.eval(), tokenizer, template


@pytest.fixture(scope="module")
def tool_model(tmp_path_factory):
    """A tiny Llama trained to call get_weather for ASK and to answer FINAL after the tool's result."""
    return train_tool_model(tmp_path_factory.mktemp("tools") / "m", CONVS)


@pytest.fixture(scope="module")
def url(tool_model):
    with running(create_app(*tool_model, ServeSettings(model_name="tiny", max_new_tokens=64))) as base:
        yield base


@pytest.fixture(scope="module")
def long_url(tool_model):
    """The tool model served with a 256-token ceiling: room for `together`'s blocker to outlast its requests."""
    with running(create_app(*tool_model, ServeSettings(model_name="tiny", max_new_tokens=256))) as base:
        yield base


def test_tool_call_round_trip(url):
    c = client(url)
    r = c.chat.completions.create(model="tiny", messages=ASK, tools=[WEATHER, OTHER], temperature=0)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None, choice.message
    (call,) = choice.message.tool_calls
    assert call.id.startswith("call_") and call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "北京"}
    # the client sends the call back with the tool's result; the model answers in text
    history = [
        *ASK,
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "晴"},
    ]
    r2 = c.chat.completions.create(model="tiny", messages=history, tools=[WEATHER, OTHER], temperature=0)
    assert r2.choices[0].message.content == FINAL and r2.choices[0].finish_reason == "stop"
    assert r2.choices[0].message.tool_calls is None


def test_tool_call_streamed_as_tool_calls_deltas(url):
    c = client(url)
    full = c.chat.completions.create(model="tiny", messages=ASK, tools=[WEATHER, OTHER], temperature=0)
    chunks = list(
        c.chat.completions.create(model="tiny", messages=ASK, tools=[WEATHER, OTHER], temperature=0, stream=True)
    )
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    deltas = [tc for ch in chunks if ch.choices for tc in ch.choices[0].delta.tool_calls or []]
    assert text == "" and len(deltas) == 1  # nothing of <tool_call> leaks into content
    assert deltas[0].index == 0 and deltas[0].id.startswith("call_") and deltas[0].type == "function"
    want = full.choices[0].message.tool_calls[0].function
    assert (deltas[0].function.name, deltas[0].function.arguments) == (want.name, want.arguments)
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason] == [
        "tool_calls"
    ]


def test_tool_choice_none_reads_no_calls(url):
    """Negative control: with tool_choice none the tools leave the prompt and the reply is never parsed."""
    r = client(url).chat.completions.create(
        model="tiny", messages=ASK, tools=[WEATHER], tool_choice="none", temperature=0, max_tokens=30
    )
    assert r.choices[0].message.tool_calls is None and r.choices[0].finish_reason in ("stop", "length")
    assert isinstance(r.choices[0].message.content, str)


def test_named_tool_choice_forces_the_call(url):
    """The model was taught get_weather; tool_choice names get_time, and constrained decoding makes it so."""
    r = client(url).chat.completions.create(
        model="tiny",
        messages=ASK,
        tools=[WEATHER, OTHER],
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        temperature=0,
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls", choice.message.content
    assert choice.message.tool_calls[0].function.name == "get_time"
    assert isinstance(json.loads(choice.message.tool_calls[0].function.arguments), dict)


def test_required_tool_choice(url):
    r = client(url).chat.completions.create(
        model="tiny",
        messages=ASK,
        tools=[OTHER, WEATHER],
        tool_choice="required",
        temperature=0,
        parallel_tool_calls=False,  # honoured: required forces exactly one call
    )
    assert r.choices[0].finish_reason == "tool_calls"
    assert [c.function.name for c in r.choices[0].message.tool_calls] == ["get_weather"]


def _json_prefix(text: str) -> tuple[bool, bool]:
    """(every byte keeps `text` a prefix of one JSON object, the object is complete), by the server's own automaton."""
    from weitiao.infer.constrain import json_object

    pattern = json_object()
    state = pattern.start
    for b in text.encode():
        if (state := pattern.step(state, b)) is None:
            return False, False
    return True, pattern.done(state)


def test_json_object_is_enforced(url):
    """Every reply under json_object is JSON: whole and parsed when it stops, else a prefix of one object cut by
    max_tokens (how far the tiny model gets before the budget runs out moves with its training, not the mask)."""
    c = client(url)
    r = c.chat.completions.create(model="tiny", messages=ASK, response_format={"type": "json_object"}, temperature=0)
    text, reason = r.choices[0].message.content, r.choices[0].finish_reason
    prefix, whole = _json_prefix(text)
    assert prefix and reason in ("stop", "length"), (reason, text)
    if reason == "stop":
        assert whole and isinstance(json.loads(text), dict)
    plain = c.chat.completions.create(model="tiny", messages=ASK, temperature=0).choices[0].message.content
    assert not _json_prefix(plain)[0]  # negative control: unconstrained, the same model writes no JSON object


@pytest.mark.parametrize(
    ("fmt", "reply", "content", "names"),
    [
        ("hermes", 'Sure.\n<tool_call>\n{"name": "f", "arguments": {"a": 1}}\n</tool_call>', "Sure.", ["f"]),
        ("hermes", "  a < b <tool_ is not a call\n", "a < b <tool_ is not a call", []),
        ("hermes", '<tool_call>\n{"name": "f", "arguments": {bad}}\n</tool_call>', None, []),
        ("llama3_json", '{"name": "f", "parameters": {}}', "", ["f"]),
        ("llama3_json", '{"x": 1} is JSON, not a call', None, []),
        ("llama3_json", "plain {text}", "plain {text}", []),
    ],
)
def test_tool_stream_sends_a_prefix_of_the_final_content(fmt, reply, content, names):
    """Fed character by character, the stream sends only text that stays content, then the rest and the calls,
    and adds up to what the non-streamed reply says."""
    stream, sent = ToolStream(fmt), ""
    want = reply.strip() if content is None else content
    for ch in reply:
        sent += stream.feed(ch)
        assert want.startswith(sent)  # never a character that a call later takes back
    rest, calls = stream.finish()
    message, reason = reply_with_calls(reply, "stop", fmt)
    assert sent + rest == want == (message["content"] or "")
    assert (
        [c["function"]["name"] for c in calls]
        == names
        == [c["function"]["name"] for c in message.get("tool_calls", [])]
    )
    assert reason == ("tool_calls" if names else "stop")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (  # OpenAI's name: a-z, A-Z, 0-9, _ and -
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x y", "schema": {}}}},
            "response_format.json_schema.name",
        ),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
        (
            {
                "tools": [WEATHER],
                "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}},
            },
            "response_format",
        ),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [WEATHER], "response_format": {"type": "json_object"}}, "response_format"),
        (
            {
                "messages": [
                    *ASK,
                    {
                        "role": "assistant",
                        "tool_calls": [
                            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{bad"}}
                        ],
                    },
                ]
            },
            "messages.1.tool_calls.0.function.arguments",
        ),
        ({"tools": [{"type": "function", "function": {"name": "has space"}}]}, "tools.0.function.name"),
        (  # a schema beside json_object was ignored: the reply was any JSON object
            {"response_format": {"type": "json_object", "json_schema": {"name": "x", "schema": {"required": ["a"]}}}},
            "response_format.json_schema",
        ),
    ],
)
def test_bad_tool_requests_are_400(url, body, param):
    r = httpx.post(url + "/v1/chat/completions", json={"model": "tiny", "messages": ASK, **body}, timeout=30)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def called(*ids: str | None) -> dict:
    """An assistant message calling get_weather once per id (None: a call without an id), content null."""
    call = {"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "北京"}'}}
    return {"role": "assistant", "content": None, "tool_calls": [{"id": i, **call} if i else call for i in ids]}


def answer(call_id: str) -> dict:
    return {"role": "tool", "tool_call_id": call_id, "content": "晴"}


AGAIN = {"role": "user", "content": "上海？"}
SAID = {"role": "assistant", "content": FINAL}


@pytest.mark.parametrize(
    ("bad", "param", "good"),
    [
        (  # a tool message without tool_call_id
            {"messages": [*ASK, called("c1"), {"role": "tool", "content": "晴"}]},
            "messages.2.tool_call_id",
            {"messages": [*ASK, called("c1"), answer("c1")]},
        ),
        (  # a tool_call_id the assistant message before it did not make
            {"messages": [*ASK, called("c1"), answer("c9")]},
            "messages.2.tool_call_id",
            {"messages": [*ASK, called("c1"), answer("c1")]},
        ),
        (  # parallel calls, one unanswered before the next user message; answers in any order are fine
            {"messages": [*ASK, called("c1", "c2"), answer("c1"), AGAIN]},
            "messages.1.tool_calls.1.id",
            {"messages": [*ASK, called("c1", "c2"), answer("c2"), answer("c1"), AGAIN]},
        ),
        (  # a call left unanswered at the end
            {"messages": [*ASK, called("c1")]},
            "messages.1.tool_calls.0.id",
            {"messages": [*ASK, called("c1"), answer("c1")]},
        ),
        (  # a tool message first
            {"messages": [answer("c1"), *ASK]},
            "messages.0.role",
            {"messages": ASK},
        ),
        (  # a tool message answering a call of an earlier round, after the assistant's text reply
            {"messages": [*ASK, called("c1"), answer("c1"), SAID, answer("c1")]},
            "messages.4.role",
            {
                "messages": [
                    *ASK,
                    called("c1"),
                    answer("c1"),
                    SAID,
                    AGAIN,
                    called("c2", "c3"),
                    answer("c3"),
                    answer("c2"),
                ]
            },
        ),
        (  # a user message with content null
            {"messages": [{"role": "user", "content": None}]},
            "messages.0.content",
            {"messages": ASK},
        ),
        (  # two tools of one name
            {"messages": ASK, "tools": [WEATHER, OTHER, WEATHER]},
            "tools.2.function.name",
            {"messages": ASK, "tools": [WEATHER, OTHER]},
        ),
        (  # tool_call_id on a user message (it was dropped without a word)
            {"messages": [{**ASK[0], "tool_call_id": "c1"}]},
            "messages.0.tool_call_id",
            {"messages": ASK},
        ),
        (  # one call answered twice: which result the model should read would be a guess
            {"messages": [*ASK, called("c1", "c2"), answer("c1"), answer("c2"), answer("c1")]},
            "messages.4.tool_call_id",
            {"messages": [*ASK, called("c1", "c2"), answer("c1"), answer("c2")]},
        ),
        (  # two calls of one id in one message: a result could not say which it answers
            {"messages": [*ASK, called("c1", "c1"), answer("c1")]},
            "messages.1.tool_calls.1.id",
            {"messages": [*ASK, called("c1", "c2"), answer("c1"), answer("c2")]},
        ),
        (  # a tool message whose `name` (its function's, as LangChain sends it) is not the call's
            {"messages": [*ASK, called("c1"), {**answer("c1"), "name": "get_time"}]},
            "messages.2.name",
            {"messages": [*ASK, called("c1"), {**answer("c1"), "name": "get_weather"}]},
        ),
        (  # a speaker name the qwen template does not render (it was dropped without a word)
            {"messages": [{**ASK[0], "name": "小王"}]},
            "messages.0.name",
            {"messages": ASK},
        ),
        (  # a call without an id, which no tool message can name
            {"messages": [*ASK, called(None), {"role": "tool", "content": "晴"}]},
            "messages.1.tool_calls.0.id",
            {"messages": [*ASK, called("c1"), answer("c1")]},
        ),
    ],
)
def test_tool_turns_openai_refuses_are_400(url, bad, param, good):
    """Each request OpenAI answers with a 400 is one here, naming the field (and two ambiguous ones: a call
    answered twice, two calls of one id); the request set right (the negative control) is answered, whole
    and streamed."""
    base = {"model": "tiny", "tools": [WEATHER, OTHER], "max_tokens": 2}
    r = httpx.post(url + "/v1/chat/completions", json={**base, **bad}, timeout=30)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["message"].startswith(param + ": "), err
    r = httpx.post(url + "/v1/chat/completions", json={**base, **good}, timeout=30)
    assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] in ("length", "stop", "tool_calls"), r.text
    r = httpx.post(url + "/v1/chat/completions", json={**base, **good, "stream": True}, timeout=30)
    assert r.status_code == 200 and r.text.rstrip().endswith("data: [DONE]"), r.text


def test_template_without_tools_is_400(parts):
    """The test tokenizer's own template is plain ChatML: tools, tool turns and calls are refused by field."""
    msgs = [
        *ASK,
        {
            "role": "assistant",
            "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
        },
    ]
    with running(create_app(*parts, ServeSettings(model_name="tiny"))) as base:
        r = httpx.post(base + "/v1/chat/completions", json={"messages": ASK, "tools": [WEATHER]}, timeout=30)
        assert r.status_code == 400 and r.json()["error"]["param"] == "tools"
        assert "--template qwen or llama3" in r.json()["error"]["message"]
        r = httpx.post(base + "/v1/chat/completions", json={"messages": msgs}, timeout=30)
        assert r.status_code == 400 and r.json()["error"]["param"] == "messages.1.tool_calls"
        r = httpx.post(
            base + "/v1/chat/completions", json={"messages": [*ASK, {"role": "tool", "content": "x"}]}, timeout=30
        )
        assert r.status_code == 400 and r.json()["error"]["param"] == "messages.1.role"
        r = httpx.post(base + "/v1/chat/completions", json={"messages": ASK, "tools": []}, timeout=30)
        assert r.status_code == 200  # no tools: nothing to render


def test_template_whose_calls_cannot_be_read_is_400(parts):
    """Tools render, but calls come out in no known format: tools with tool_choice auto are refused, none is fine."""
    model, tokenizer, _ = parts
    odd = ChatTemplate("odd", QWEN.replace("<tool_call>", "<call>"), "<|im_end|>", False, True, None)
    with running(create_app(model, tokenizer, odd, ServeSettings(model_name="tiny"))) as base:
        r = httpx.post(base + "/v1/chat/completions", json={"messages": ASK, "tools": [WEATHER]}, timeout=30)
        assert r.status_code == 400 and "cannot be parsed back" in r.json()["error"]["message"]
        body = {"messages": ASK, "tools": [WEATHER], "tool_choice": "none", "max_tokens": 2}
        assert httpx.post(base + "/v1/chat/completions", json=body, timeout=30).status_code == 200


# ----------------------------------------------------------------------------- constrained decoding, no server


def accepts(pattern: Pattern, text: str) -> bool:
    state = pattern.start
    for b in text.encode():
        state = pattern.step(state, b)
    return pattern.done(state)


@pytest.mark.parametrize(
    "text",
    [
        "{}",
        '{"a": 1}',
        '{"a":[1,-2.5e-3,true,false,null,"x\\u00e9\\n\\"",[]],"b":{"c":-0}}',
        '{"城市": "北京☀️"}',
        '{"a": 01}',
        "{ }",
        "[1]",
        '{"a":1,}',
        '{"a":tru}',
        '{"a":1}x',
        '{"a":"\x01"}',
        '{"a": 1.}',
        '{"a":-}',
        '"s"',
        '{"a"  :1}',
    ],
)
def test_json_automaton_agrees_with_json_loads(text):
    try:
        want = isinstance(json.loads(text), dict) and " :" not in text and "{ " not in text
    except ValueError:
        want = False
    assert accepts(json_object(), text) == want


def test_tool_call_pattern_syntax():
    p = tool_call_pattern("hermes", ["get", "get_weather"])
    assert accepts(p, '<tool_call>\n{"name": "get_weather", "arguments": {"city": "北京"}}\n</tool_call>')
    assert not accepts(p, '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>')
    assert accepts(tool_call_pattern("llama3_json", ["f"]), '{"name": "f", "parameters": {}}')


def test_constrain_makes_random_scores_valid_json(tokenizer):
    """Decode 30 times from random scores (biased to close things): with the mask every reply is a JSON object
    that json.loads reads; without it (negative control) none is."""
    stop = tokenizer.convert_tokens_to_ids("<|im_end|>")
    cache = MaskCache(TokenBytes.of(tokenizer, {stop}))
    closing = torch.tensor([any(c in tokenizer.decode([i]) for c in '"}]') for i in range(len(tokenizer))])

    class Row:  # what Constrain reads of a serve row
        def __init__(self):
            self.ids, self.done, self.job = [], False, type("J", (), {"constraint": json_object()})()

    rng = random.Random(0)
    for masked in (True, False):
        valid = 0
        for _ in range(30):
            row = Row()
            proc = Constrain([row], cache)
            for _ in range(80):
                g = torch.Generator().manual_seed(rng.randrange(2**31))
                scores = torch.rand(1, len(tokenizer), generator=g) * 4 + 3 * closing
                if masked:
                    scores = proc(torch.zeros(1, 1, dtype=torch.long), scores)
                tok = int(scores.argmax())
                if tok == stop:
                    break
                row.ids.append(tok)
            try:
                valid += isinstance(json.loads(tokenizer.decode(row.ids)), dict)
            except ValueError:
                pass
        assert valid == (30 if masked else 0)


def test_unnamed_special_tokens_never_pass_as_text_in_a_constraint(tokenizer):
    """A tokenizer whose control tokens are special but not named (a base with EOS <|endoftext|> whose
    <|im_start|>/<|im_end|> are no additional_special_tokens; Llama 3's <|start_header_id|>) had them in the byte
    table as their text "<|im_end|>": plain string bytes inside JSON, so a forced tool call or json_object reply
    stopped half written at <|im_end|> (finish_reason "stop", no tool_calls). Now they are never allowed there,
    and a reply stops only once its pattern is complete (random scores pushed towards the stop token)."""
    from transformers import PreTrainedTokenizerFast

    from weitiao.infer.logprobs import LogprobFormat

    base = PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend_tokenizer, eos_token="<|endoftext|>")
    eot, start = base.convert_tokens_to_ids(["<|im_end|>", "<|im_start|>"])
    assert eot not in base.all_special_ids and start not in base.all_special_ids  # special, unnamed
    stops = {eot, base.eos_token_id}
    toks = TokenBytes.of(base, stops)
    assert toks.table[eot] is None and toks.table[start] is None
    assert eot in LogprobFormat(base).special
    cache = MaskCache(toks)
    closing = torch.tensor([any(c in base.decode([i]) for c in '"}]') for i in range(len(base))])

    class Row:  # what Constrain reads of a serve row; a complete pattern allows its stops
        def __init__(self, pattern):
            self.ids, self.done, self.stops, self.job = [], False, stops, type("J", (), {"constraint": pattern})()

    rng = random.Random(1)
    for pattern in (tool_call_pattern("hermes", ["get_weather", "get_time"]), json_object()):
        for _ in range(20):
            row = Row(pattern)
            proc = Constrain([row], cache)
            for _ in range(120):
                g = torch.Generator().manual_seed(rng.randrange(2**31))
                scores = torch.rand(1, len(base), generator=g) * 4 + 3 * closing
                scores[0, eot] = scores[0, start] = 100.0  # the model wants to end the turn, always
                tok = int(proc(torch.zeros(1, 1, dtype=torch.long), scores).argmax())
                if tok in stops:
                    break
                row.ids.append(tok)
            assert tok in stops and pattern.done(proc._advance(0)), base.decode(row.ids)


def test_mask_shortcuts_equal_the_plain_byte_walk(tokenizer):
    """The first-byte and plain-string shortcuts give exactly the mask of walking every token's bytes."""
    stop = tokenizer.convert_tokens_to_ids("<|im_end|>")
    toks = TokenBytes.of(tokenizer, {stop})
    cache = MaskCache(toks)
    text = '{"城市": "北京☀️ \\"q\\" \\u00e9", "n": [-1.5e3, true, {"k": null}]}'
    for pattern, prefix in (
        (json_object(), text),
        (tool_call_pattern("hermes", ["f", "g"]), '<tool_call>\n{"name": "g", "arguments": ' + text),
    ):
        state, raw = pattern.start, prefix.encode()
        for k in range(len(raw) + 1):
            want = walked_mask(pattern, state, toks, len(tokenizer))
            if pattern.done(state):
                want[:] = False
                want[stop] = True
            assert torch.equal(cache.get(pattern, state, len(tokenizer)), want), (prefix[:k], state)
            if k < len(raw):
                state = pattern.step(state, raw[k])


def together(url: str, asks: dict) -> dict:
    """The answers of each call in `asks`, all sent while a long request decodes, so that they join its batch."""
    before = httpx.get(url + "/health").json()["joined"]
    with decoding_blocker(url, ASK), ThreadPoolExecutor(len(asks)) as pool:
        futures = {k: pool.submit(f) for k, f in asks.items()}
        out = {k: f.result() for k, f in futures.items()}
    assert httpx.get(url + "/health").json()["joined"] - before >= len(asks)  # rows that joined the blocker's batch
    return out


def test_constrained_rows_with_logprobs_seed_and_n_share_a_batch_with_plain_rows(tool_model, long_url):
    """Sampled tool_choice=required with logprobs, a seed and n=2 (streamed and not), a named tool_choice and a
    plain request, all in one batch: each is answered as when alone. The log-probs are the raw model's at the
    constrained tokens (the named call's tokens are not all the model's top pick: the mask chose them)."""
    model, tok, template = tool_model
    encoder = {b: ch for ch, b in _BYTE_DECODER.items()}
    url = long_url
    c = client(url)
    lp = dict(logprobs=True, top_logprobs=2)
    required = dict(tools=[WEATHER, OTHER], tool_choice="required", temperature=0.9, seed=11, n=2, **lp)
    named = dict(tools=[WEATHER, OTHER], tool_choice={"type": "function", "function": {"name": "get_time"}})
    asks = {
        "required": lambda: c.chat.completions.create(model="tiny", messages=ASK, **required),
        "stream": lambda: list(c.chat.completions.create(model="tiny", messages=ASK, stream=True, **required)),
        "named": lambda: c.chat.completions.create(model="tiny", messages=ASK, temperature=0, **named, **lp),
        "plain": lambda: c.chat.completions.create(model="tiny", messages=ASK, temperature=0, max_tokens=20),
    }
    alone = {k: f() for k, f in asks.items()}
    batched = together(url, asks)

    def check_call(choice, names, last="<|im_end|>"):
        (call,) = choice.message.tool_calls
        assert choice.finish_reason == "tool_calls" and call.function.name in names
        assert isinstance(json.loads(call.function.arguments), dict)
        content = choice.logprobs.content
        # the end of turn is a reply token, with its log-prob; a named call's reply ends at the call's close
        assert content[-1].token == last
        reply = [tok.convert_tokens_to_ids("".join(encoder[b] for b in x.bytes)) for x in content]
        text = tok.decode(reply[:-1] if last == "<|im_end|>" else reply)
        assert [c["name"] for c in parse_tool_calls(text, "hermes")[1]] == [call.function.name]
        ids = tok(
            template.render(tok, ASK, add_generation_prompt=True, tools=[WEATHER, OTHER]), add_special_tokens=False
        )
        want = torch.log_softmax(model(torch.tensor([ids["input_ids"] + reply])).logits[0].float(), -1)
        n = len(ids["input_ids"])
        for i, x in enumerate(content):  # raw log-probs at each constrained token, before the mask
            assert math.isclose(x.logprob, want[n - 1 + i, reply[i]].item(), abs_tol=1e-3)
        return [x.token for x in content]

    for got in (alone, batched):
        r = got["required"]
        assert len(r.choices) == 2
        tokens = [check_call(ch, {"get_weather", "get_time"}) for ch in r.choices]
        assert r.usage.completion_tokens == sum(len(t) for t in tokens)
        streamed = [[], []]
        calls = [[], []]
        for ch in got["stream"]:
            for x in ch.choices:
                streamed[x.index] += [e.token for e in (x.logprobs.content if x.logprobs else [])]
                calls[x.index] += [(t.function.name, t.function.arguments) for t in x.delta.tool_calls or []]
        assert streamed == tokens  # the same seeded draws; the call's log-probs are not lost while held back
        assert calls == [[(t.function.name, t.function.arguments)] for ch in r.choices for t in ch.message.tool_calls]
        named_tokens = check_call(got["named"].choices[0], {"get_time"}, last="</tool_call>")
        top1 = [x.top_logprobs[0].token for x in got["named"].choices[0].logprobs.content]
        assert named_tokens != top1  # greedy, yet not the model's argmax everywhere: the mask decided
        assert got["plain"].choices[0].message.tool_calls is None

    def seen(r):  # what a client reads of a reply (call ids are random)
        out = []
        for ch in r.choices:
            calls = [(t.function.name, t.function.arguments) for t in ch.message.tool_calls or []]
            lps = [(x.token, round(x.logprob, 3)) for x in ch.logprobs.content] if ch.logprobs else None
            out.append((ch.finish_reason, ch.message.content, calls, lps))
        return out

    for k in ("required", "named", "plain"):  # batched as alone
        assert seen(batched[k]) == seen(alone[k]), k


def test_tool_requests_on_adapters_and_their_limits(tool_model):
    """Tools on a multi-adapter server: a required call on a random adapter batched with auto tool requests on
    the base and on an identity adapter (which answer as the base alone); unknown model 404 and max_tokens 400
    for tool requests; min_tokens yields to a named call or one under parallel_tool_calls false; ignore_eos
    without stop_token_ids is a 400."""
    import copy

    from peft import LoraConfig, get_peft_model

    model, tok, template = tool_model
    cfg = dict(r=4, lora_alpha=32, target_modules=["q_proj", "v_proj", "down_proj"])
    peft = get_peft_model(copy.deepcopy(model), LoraConfig(**cfg), adapter_name="same")  # B = 0: the base
    torch.manual_seed(1)
    peft.add_adapter("noisy", LoraConfig(**cfg, init_lora_weights=False))
    settings = ServeSettings(model_name="tiny", max_new_tokens=256, adapters=("same", "noisy"))  # `together`: 256
    tools = [WEATHER, OTHER]
    with running(create_app(peft.eval(), tok, template, settings)) as url:
        c = client(url)

        def ask(name: str, **kw):
            return lambda: c.chat.completions.create(model=name, messages=ASK, tools=tools, temperature=0, **kw)

        got = together(url, {"noisy": ask("noisy", tool_choice="required"), "same": ask("same"), "tiny": ask("tiny")})
        for name in ("same", "tiny"):
            (call,) = got[name].choices[0].message.tool_calls
            assert (call.function.name, json.loads(call.function.arguments)) == ("get_weather", {"city": "北京"})
        plain_noisy = ask("noisy")().choices[0]
        assert plain_noisy.message.tool_calls is None  # negative control: unforced, the random adapter calls nothing
        (call,) = got["noisy"].choices[0].message.tool_calls
        assert got["noisy"].choices[0].finish_reason == "tool_calls" and call.function.name in (
            "get_weather",
            "get_time",
        )
        assert isinstance(json.loads(call.function.arguments), dict)

        with pytest.raises(openai.NotFoundError):
            ask("tools-typo", tool_choice="required")()
        with pytest.raises(openai.BadRequestError) as e:
            ask("noisy", tool_choice="required", max_tokens=257)()
        assert e.value.body["param"] == "max_tokens"
        with pytest.raises(openai.BadRequestError) as e:
            ask("tiny", tool_choice="required", extra_body={"ignore_eos": True})()
        assert e.value.body["param"] == "ignore_eos"
        eot = tok.convert_tokens_to_ids("<|im_end|>")
        r = ask("tiny", tool_choice="required", extra_body={"ignore_eos": True, "stop_token_ids": [eot]})()
        assert r.choices[0].finish_reason == "tool_calls"
        named = {"type": "function", "function": {"name": "get_weather"}}
        for one in ({"tool_choice": named}, {"tool_choice": "required", "parallel_tool_calls": False}):
            r = ask("tiny", **one, extra_body={"min_tokens": 60})()  # longer than the call: the one call ends it
            assert r.choices[0].finish_reason == "tool_calls" and r.usage.completion_tokens < 60
            assert [c.function.name for c in r.choices[0].message.tool_calls] == ["get_weather"]


def test_output_filter_reads_streamed_tool_calls_too(tool_model):
    """With an output filter (--pii), a whole reply is filtered calls and all; streamed, the calls' arguments went out
    unfiltered (the PII that the filter hides in the whole reply). Now the stream says what the whole reply says;
    unfiltered (the negative control) the arguments hold the city."""
    hide = lambda text: text.replace("北京", "[地点]")  # noqa: E731  (a stand-in for --pii redact)
    for output_filter, city in ((hide, "[地点]"), (None, "北京")):
        with running(create_app(*tool_model, ServeSettings(model_name="tiny"), output_filter=output_filter)) as base:
            c = client(base)
            whole = c.chat.completions.create(model="tiny", messages=ASK, tools=[WEATHER, OTHER], temperature=0)
            (call,) = whole.choices[0].message.tool_calls
            assert json.loads(call.function.arguments) == {"city": city}
            chunks = list(
                c.chat.completions.create(
                    model="tiny", messages=ASK, tools=[WEATHER, OTHER], temperature=0, stream=True
                )
            )
            streamed = [tc.function.arguments for ch in chunks for x in ch.choices for tc in x.delta.tool_calls or []]
            assert streamed == [call.function.arguments]
            assert [x.finish_reason for ch in chunks for x in ch.choices if x.finish_reason] == ["tool_calls"]
