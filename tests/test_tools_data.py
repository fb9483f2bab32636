"""Tool calling in templates and training data: Qwen2.5 / Llama-3.1 formats, parsing calls back, tool rows
(LLaMA-Factory ShareGPT, OpenAI fine-tuning) and their loss masks."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import pytest
from conftest import CHATML, build_tokenizer, write_jsonl

from weitiao.data.chat import EncodeOptions, encode, encode_all
from weitiao.data.check import token_segments
from weitiao.data.formats import load_conversations
from weitiao.data.prep import conversation_key
from weitiao.data.templates import LLAMA3, LLAMA3_TOOLS, QWEN, ChatTemplate, parse_tool_calls, resolve_template
from weitiao.errors import UserError

WEATHER = {
    "name": "get_weather",
    "description": "查天气",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
SHAREGPT_ROW = {
    "conversations": [
        {"from": "human", "value": "北京天气怎么样？"},
        {"from": "function_call", "value": json.dumps({"name": "get_weather", "arguments": {"city": "北京"}})},
        {"from": "observation", "value": "OBS晴25度"},
        {"from": "gpt", "value": "北京今天晴，25度。"},
    ],
    "system": "你是助手",
    "tools": json.dumps([WEATHER], ensure_ascii=False),
}
OPENAI_ROW = {
    "messages": [
        {"role": "system", "content": "你是助手"},
        {"role": "user", "content": "北京天气怎么样？"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "北京"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "OBS晴25度"},
        {"role": "assistant", "content": "北京今天晴，25度。"},
    ],
    "tools": [{"type": "function", "function": WEATHER}],
}
MSGS = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}, {"role": "assistant", "content": "A"}]


def llama_tokenizer(chat_template=None):
    tok = build_tokenizer(chat_template)
    tok.add_special_tokens({"additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]})
    return tok


def test_toolless_rendering_is_unchanged(tokenizer):
    """qwen and llama3 gained tool branches; conversations without tools render exactly as ChatML / Llama-3."""
    q = resolve_template(tokenizer, "qwen")
    assert q.render(tokenizer, MSGS) == tokenizer.apply_chat_template(MSGS, chat_template=CHATML, tokenize=False)
    ltok = llama_tokenizer()
    ll = resolve_template(ltok, "llama3")
    for gen in (False, True):
        want = ltok.apply_chat_template(MSGS[:2], chat_template=LLAMA3, tokenize=False, add_generation_prompt=gen)
        assert ll.render(ltok, MSGS[:2], add_generation_prompt=gen) == want
    assert (q.supports_tools, q.tool_format, ll.tool_format) == (True, "hermes", "llama3_json")
    assert not resolve_template(tokenizer, "chatml").supports_tools  # negative control: plain ChatML has none


def test_qwen_renders_qwen25_tool_format(tokenizer):
    conv = load_rows_one(SHAREGPT_ROW)
    text = resolve_template(tokenizer, "qwen").render(tokenizer, conv.messages, tools=conv.tools)
    tool_json = json.dumps({"type": "function", "function": WEATHER}, ensure_ascii=False)
    assert text == (
        "<|im_start|>system\n你是助手\n\n# Tools\n\nYou may call one or more functions to assist with the user query."
        "\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
        + tool_json
        + "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
        '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}'
        "\n</tool_call><|im_end|>\n<|im_start|>user\n北京天气怎么样？<|im_end|>\n<|im_start|>assistant\n<tool_call>\n"
        '{"name": "get_weather", "arguments": {"city": "北京"}}\n</tool_call><|im_end|>\n<|im_start|>user\n'
        "<tool_response>\nOBS晴25度\n</tool_response><|im_end|>\n<|im_start|>assistant\n北京今天晴，25度。<|im_end|>\n"
    )


def test_llama3_renders_llama31_json_calls_and_ipython_results():
    tok = llama_tokenizer()
    conv = load_rows_one(OPENAI_ROW)
    text = resolve_template(tok, "llama3").render(tok, conv.messages, tools=conv.tools)
    assert "<|start_header_id|>system<|end_header_id|>\n\nEnvironment: ipython\n\n你是助手<|eot_id|>" in text
    assert "Given the following functions, please respond with a JSON for a function call" in text
    assert '<|end_header_id|>\n\n{"name": "get_weather", "parameters": {"city": "北京"}}<|eot_id|>' in text
    assert "<|start_header_id|>ipython<|end_header_id|>\n\nOBS晴25度<|eot_id|>" in text


@pytest.mark.parametrize(
    ("fmt", "text", "content", "calls"),
    [
        ("hermes", 'ok\n<tool_call>\n{"name": "f", "arguments": {"a": 1}}\n</tool_call>', "ok", [("f", {"a": 1})]),
        (
            "hermes",
            '<tool_call>{"name": "f", "arguments": {}}</tool_call>\n'
            '<tool_call>{"name": "g", "arguments": "{\\"b\\": 2}"}',
            "",
            [("f", {}), ("g", {"b": 2})],  # arguments as a JSON string; the last block cut before its close tag
        ),
        ("hermes", '<tool_call>\n{"name": "f", "arguments": {"a": 1</tool_call>', None, []),  # broken JSON
        ("hermes", "no call here", None, []),
        ("llama3_json", '{"name": "f", "parameters": {"a": "北京"}}', "", [("f", {"a": "北京"})]),
        (
            "llama3_json",
            '{"name": "f", "parameters": {}}; {"name": "g", "parameters": {"x": 1}}',
            "",
            [("f", {}), ("g", {"x": 1})],
        ),
        ("llama3_json", '{"name": "f", "parameters": {}} and more', None, []),
        ("llama3_json", '{"city": "北京"}', None, []),  # JSON, but not a call
        (None, '<tool_call>{"name": "f", "arguments": {}}</tool_call>', None, []),  # a template without a format
    ],
)
def test_parse_tool_calls(fmt, text, content, calls):
    got_content, got = parse_tool_calls(text, fmt)
    assert got_content == (text if content is None else content)
    assert [(c["name"], json.loads(c["arguments"])) for c in got] == calls
    assert all(isinstance(c["arguments"], str) for c in got)


def test_tokenizer_template_tools_detected_by_probe():
    """`template: tokenizer` supports tools when its Jinja uses them; the call format is found by rendering."""
    t = resolve_template(build_tokenizer(QWEN), "tokenizer")
    assert (t.name, t.supports_tools, t.tool_format) == ("tokenizer", True, "hermes")
    t = resolve_template(llama_tokenizer(LLAMA3_TOOLS), "tokenizer")
    assert (t.supports_tools, t.tool_format) == (True, "llama3_json")
    t = resolve_template(build_tokenizer(CHATML), "tokenizer")
    assert (t.supports_tools, t.tool_format) == (False, None)
    mentions = CHATML.replace("{% endfor %}", "{% endfor %}{% if tools %}{{ 'TOOLS' }}{% endif %}")
    t = resolve_template(build_tokenizer(mentions), "tokenizer")  # reads `tools` but shows neither tool nor call
    assert (t.supports_tools, t.tool_format) == (False, None)
    odd = (
        "{% for t in tools or [] %}{{ t['function']['name'] + '\\n' }}{% endfor %}{% for m in messages %}"
        "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] }}{% for c in m['tool_calls'] or [] %}"
        "{{ 'CALL ' + c['function']['name'] }}{% endfor %}{{ '<|im_end|>\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )
    t = resolve_template(build_tokenizer(odd), "tokenizer")  # renders tools and calls, in no known format
    assert (t.supports_tools, t.tool_format) == (True, None)


def load_rows_one(row):
    with tempfile.TemporaryDirectory() as d:
        return load_conversations(write_jsonl(Path(d) / "t.jsonl", [row])).rows[0]


@pytest.mark.parametrize("template_name", ["qwen", "llama3"])
def test_tool_rows_loss_on_calls_and_replies_only(template_name):
    tok = llama_tokenizer()
    template = resolve_template(tok, template_name)
    share, oai = load_rows_one(SHAREGPT_ROW), load_rows_one(OPENAI_ROW)
    a = encode(share, tok, template, EncodeOptions(max_len=4096))
    b = encode(oai, tok, template, EncodeOptions(max_len=4096))
    assert (a.input_ids, a.labels) == (b.input_ids, b.labels)  # both layouts: one conversation
    trained = "".join(t for t, on in token_segments(a, tok) if on)
    untrained = "".join(t for t, on in token_segments(a, tok) if not on)
    assert '"get_weather"' in trained and "北京今天晴，25度。" in trained and trained.count(template.eot) == 2
    # negative control: the observation, the tool specs and the question are in the input, never in the loss
    for text in ("OBS晴25度", "查天气", "北京天气怎么样"):
        assert text in untrained and text not in trained


@pytest.mark.parametrize("row", [SHAREGPT_ROW, OPENAI_ROW])
def test_tool_rows_read_the_message_weight(row, tmp_path):
    """weight 0 on a call or reply of a tool row was dropped (the turn trained); it is context, as in plain rows."""
    key = "conversations" if "conversations" in row else "messages"
    msgs = [{**m, "weight": 0} if m.get("tool_calls") or m.get("from") == "function_call" else m for m in row[key]]
    tok = llama_tokenizer()
    enc = encode(load_rows_one({**row, key: msgs}), tok, resolve_template(tok, "qwen"), EncodeOptions(max_len=4096))
    trained = "".join(t for t, on in token_segments(enc, tok) if on)
    assert "北京今天晴，25度。" in trained and '"get_weather"' not in trained
    assert trained.count("<|im_end|>") == 1
    user = 0 if key == "conversations" else 1  # a question has no weight to read
    bad = [{**m, "weight": 1} if i == user else m for i, m in enumerate(msgs)]
    path = write_jsonl(tmp_path / "w.jsonl", [{**row, key: bad}])
    with pytest.raises(UserError, match=r"w\.jsonl:1: \w+\[\d\]\.weight: only assistant messages take a weight"):
        load_conversations(path)
    reply_too = [{**m, "weight": 0} if m.get("role") == "assistant" or m.get("from") == "gpt" else m for m in msgs]
    path = write_jsonl(tmp_path / "z.jsonl", [{**row, key: reply_too}])
    with pytest.raises(UserError, match=rf"z\.jsonl:1: {key}: every assistant message has weight 0"):
        load_conversations(path)


def test_tool_rows_need_a_tool_template(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "tools.jsonl", [SHAREGPT_ROW, SHAREGPT_ROW])
    convs = load_conversations(path).rows
    chatml = resolve_template(tokenizer, "auto")  # the test tokenizer's own template: ChatML, no tools
    with pytest.raises(UserError, match=r"tools\.jsonl:1: .*template 'tokenizer'.*template: qwen or llama3"):
        encode_all(convs, tokenizer, chatml, EncodeOptions())
    with pytest.raises(UserError, match=r"tools\.jsonl:2: "):  # `data show` and export checks encode one row
        encode(convs[1], tokenizer, chatml, EncodeOptions())
    encoded, _ = encode_all(convs, tokenizer, resolve_template(tokenizer, "qwen"), EncodeOptions())
    assert len(encoded) == 2


def test_prompt_readers_refuse_tool_rows(tmp_path):
    """PPO prompts and golden eval prompts render no tools: a tool row there is one line, not a silent drop."""
    from weitiao.eval import golden
    from weitiao.recipes import ppo

    path = write_jsonl(tmp_path / "p.jsonl", [OPENAI_ROW])
    with pytest.raises(UserError, match=r"p\.jsonl:1: tools: tool rows train with `weitiao sft` only"):
        ppo.load_prompts([str(path)])
    with pytest.raises(UserError, match=r"p\.jsonl:1: tools: tool rows are not eval prompts"):
        golden.load_prompts(path)


@pytest.mark.parametrize(
    ("row", "where"),
    [
        ({**SHAREGPT_ROW, "tools": "[{bad"}, "tools: not valid JSON"),
        ({**SHAREGPT_ROW, "tools": '[{"description": "x"}]'}, "tools[0]: expected"),
        (
            {"conversations": [{"from": "human", "value": "q"}, {"from": "function_call", "value": "get_weather()"}]},
            "conversations[1].value: not valid JSON",
        ),
        (
            {"conversations": [{"from": "human", "value": "q"}, {"from": "observation", "value": "r"}]},
            "conversations[1].from: expected 'gpt' or 'function_call' after 'human', got 'observation'",
        ),  # a ShareGPT row's turns named as the row names them (it said `.role`, 'assistant', 'user', 'tool')
        (  # OpenAI's calls on a ShareGPT turn: 'value: missing', or dropped unsaid beside a value
            {
                "conversations": [
                    SHAREGPT_ROW["conversations"][0],
                    {"from": "gpt", "value": None, "tool_calls": OPENAI_ROW["messages"][2]["tool_calls"]},
                    *SHAREGPT_ROW["conversations"][2:],
                ]
            },
            "conversations[1].tool_calls: OpenAI tool calls in a ShareGPT message, whose calls are function_call",
        ),
        (
            {"conversations": SHAREGPT_ROW["conversations"][:3]},
            "conversations: must end with a gpt or function_call turn, ends with 'observation'",
        ),
        (
            {"messages": [*OPENAI_ROW["messages"][:3], {"role": "tool", "tool_call_id": "call_9", "content": "r"}]},
            "messages[3].tool_call_id: 'call_9' answers no call",
        ),
        (  # one call answered twice
            {"messages": [*OPENAI_ROW["messages"][:4], *OPENAI_ROW["messages"][3:]]},
            "messages[4].tool_call_id: 'call_1' was already answered by messages[3]",
        ),
        (  # two calls of one id
            {
                "messages": [
                    *OPENAI_ROW["messages"][:2],
                    {**OPENAI_ROW["messages"][2], "tool_calls": OPENAI_ROW["messages"][2]["tool_calls"] * 2},
                    *OPENAI_ROW["messages"][3:],
                ]
            },
            "messages[2].tool_calls[1].id: 'call_1' is also the id of tool_calls[0]",
        ),
        ({"messages": OPENAI_ROW["messages"][:4]}, "messages: must end with an assistant turn"),
        (
            {
                "messages": [
                    *OPENAI_ROW["messages"][:2],
                    {
                        "role": "assistant",
                        "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "[1]"}}],
                    },
                ]
            },
            "messages[2].tool_calls[0].function: expected a JSON object",
        ),
        ({"messages": OPENAI_ROW["messages"][1:2], "functions": [WEATHER]}, "functions: the legacy"),
    ],
)
def test_bad_tool_rows_name_line_and_field(tmp_path, row, where):
    path = write_jsonl(tmp_path / "bad.jsonl", [OPENAI_ROW if "messages" in row else SHAREGPT_ROW, row])
    with pytest.raises(UserError, match="bad.jsonl:2: " + re.escape(where)):
        load_conversations(path)


def test_a_legacy_function_call_on_a_message_is_refused_not_dropped(tmp_path):
    """OpenAI's legacy layout puts a call in an assistant message's `function_call` (results in `function` messages,
    specs in the row's `functions`). A row's `functions` was refused, but a message's `function_call` was dropped
    unsaid: `{"content": "我查一下", "function_call": {...}}` trained the words without the call. Now refused naming it,
    in every list of messages (a TRL completion too)."""
    call = {"name": "get_weather", "arguments": '{"city": "北京"}'}
    ask = {"role": "user", "content": "北京天气？"}
    said = {"role": "assistant", "content": "我查一下", "function_call": call}
    rows = [{"messages": [ask, said]}, {"prompt": [ask], "completion": [said]}]
    for row, field in zip(rows, ("messages[1]", "completion[0]")):
        path = write_jsonl(tmp_path / "legacy.jsonl", [row])
        with pytest.raises(UserError, match=re.escape(f"legacy.jsonl:1: {field}.function_call: the legacy ")):
            load_conversations(path)
    with_call = {"role": "assistant", "content": "我查一下", "tool_calls": [{"type": "function", "function": call}]}
    assert load_conversations(write_jsonl(tmp_path / "ok.jsonl", [{"messages": [ask, with_call]}])).rows  # control


def test_two_observations_after_one_sharegpt_call_are_refused_as_llamafactory_skips_them(tmp_path):
    """Two `observation` turns after one `function_call` trained as two tool results; LLaMA-Factory's ShareGPT
    converter alternates human|observation with gpt|function_call and skips such a row. Now refused naming the turn;
    a call per observation (its negative control) and OpenAI's several tool messages per call turn still load."""
    ask, call, obs, reply = SHAREGPT_ROW["conversations"]
    two = {**SHAREGPT_ROW, "conversations": [ask, call, obs, {**obs, "value": "雨"}, reply]}
    path = write_jsonl(tmp_path / "two.jsonl", [SHAREGPT_ROW, two])
    with pytest.raises(UserError, match=r"two\.jsonl:2: conversations\[3\]\.from: a second 'observation' after one "):
        load_conversations(path)
    each = {**two, "conversations": [*two["conversations"][:3], call, *two["conversations"][3:]]}
    system, user, calls, result, answer = OPENAI_ROW["messages"]
    calls = {**calls, "tool_calls": [*calls["tool_calls"], {**calls["tool_calls"][0], "id": "call_2"}]}
    second = {**result, "tool_call_id": "call_2", "content": "雨"}
    openai = {**OPENAI_ROW, "messages": [system, user, calls, result, second, answer]}
    assert [m["role"] for m in load_conversations(write_jsonl(tmp_path / "each.jsonl", [each])).rows[0].messages] == [
        "system", "user", "assistant", "tool", "assistant", "tool", "assistant"]  # fmt: skip
    assert [m["role"] for m in load_conversations(write_jsonl(tmp_path / "o.jsonl", [openai])).rows[0].messages] == [
        "system", "user", "assistant", "tool", "tool", "assistant"]  # fmt: skip
    # through a dataset_info.json entry: the row's own keys named
    cols = {"messages": "conversations", "system": "system", "tools": "tools"}
    entry = {"file_name": "two.jsonl", "formatting": "sharegpt", "columns": cols}
    (tmp_path / "dataset_info.json").write_text(json.dumps({"t": entry}))
    with pytest.raises(UserError, match=r"two\.jsonl:2: conversations\[3\]\.from: a second 'observation'"):
        load_conversations(["t"], dataset_dir=tmp_path)


@pytest.mark.parametrize("via_info", [False, True])
def test_sharegpt_tool_turn_orders_are_those_llamafactorys_converter_trains(tmp_path, tokenizer, via_info):
    """LLaMA-Factory's ShareGPT converter alternates human|observation with gpt|function_call turns; a call answered
    by a human turn (the user gives up) and an observation after a plain reply were refused ('expected 'observation'
    after 'function_call''). Now trained as written, as there (and rendered: the call and both replies trained, the
    results not); a row it skips (two calls in a row, its negative control) is still refused, and so is one opening
    with an observation, which it trains (a departure: no user turn to carry llama3's tool specs). Written out as
    OpenAI messages (data mix, curve) they read back."""
    from weitiao.data.tools import to_record

    ask, call, obs, reply = SHAREGPT_ROW["conversations"]
    human = {"from": "human", "value": "算了"}
    rows = [
        {**SHAREGPT_ROW, "conversations": [ask, call, human, reply]},
        {**SHAREGPT_ROW, "conversations": [ask, reply, obs, reply]},
        {**SHAREGPT_ROW, "conversations": [ask, call, call]},
        {**SHAREGPT_ROW, "conversations": [obs, reply]},
    ]
    path = write_jsonl(tmp_path / "o.jsonl", rows)
    (tmp_path / "dataset_info.json").write_text(json.dumps({"o": {"file_name": "o.jsonl", "formatting": "sharegpt",
        "columns": {"messages": "conversations", "system": "system", "tools": "tools"}}}))  # fmt: skip
    got = load_conversations(["o"] if via_info else path, dataset_dir=tmp_path if via_info else None,
                             skip_invalid=True, rejects_path=tmp_path / "rej.jsonl")  # fmt: skip
    assert [[m["role"] for m in r.messages] for r in got.rows] == [
        ["system", "user", "assistant", "user", "assistant"],
        ["system", "user", "assistant", "tool", "assistant"],
    ]
    errors = [json.loads(line)["error"] for line in (tmp_path / "rej.jsonl").read_text().splitlines()]
    assert errors[0].startswith("conversations[2].from: expected 'human' or 'observation' after 'function_call', got "
                                "'function_call'") and "LLaMA-Factory" in errors[0]  # fmt: skip
    assert errors[1].startswith("conversations[0].from: expected 'human' first") and "llama3" in errors[1], errors
    # written out by a data tool (data mix, curve) as OpenAI messages, they read back the same
    back = load_conversations(write_jsonl(tmp_path / "back.jsonl", [to_record(r) for r in got.rows])).rows
    assert [r.messages for r in back] == [r.messages for r in got.rows]
    template = resolve_template(tokenizer, "qwen")
    for row, trained in zip(got.rows, (["get_weather", "北京今天晴"], ["北京今天晴", "北京今天晴"])):
        enc = encode(row, tokenizer, template, EncodeOptions(max_len=4096))
        text = "".join(s for s, t in token_segments(enc, tokenizer) if t)
        assert [w for w in trained if w in text] == trained and "OBS" not in text and "算了" not in text


def test_tool_rows_keep_their_calls_in_dedup_and_history_truncation(tokenizer):
    conv = load_rows_one(SHAREGPT_ROW)
    other = load_rows_one(
        {
            **SHAREGPT_ROW,
            "conversations": [
                SHAREGPT_ROW["conversations"][0],
                {"from": "function_call", "value": json.dumps({"name": "get_weather", "arguments": {"city": "上海"}})},
                *SHAREGPT_ROW["conversations"][2:],
            ],
        }
    )
    assert conversation_key(conv) != conversation_key(other)  # same texts, different call: not duplicates
    two = load_rows_one(
        {
            **SHAREGPT_ROW,
            "conversations": SHAREGPT_ROW["conversations"]
            + [{"from": "human", "value": "谢谢"}, {"from": "gpt", "value": "不客气"}],
        }
    )
    template = resolve_template(tokenizer, "qwen")
    full = encode(two, tokenizer, template, EncodeOptions(max_len=4096))
    short = encode(two, tokenizer, template, EncodeOptions(max_len=len(full) - 1, truncation="history"))
    assert short.truncated == "history"
    kept = tokenizer.decode(short.input_ids)
    assert "谢谢" in kept and "OBS" not in kept and "<tools>" in kept  # the whole tool exchange went, tools stay


def test_chatml_template_type_unchanged():
    t = ChatTemplate("x", CHATML, "<|im_end|>", False)  # old positional construction still works
    assert (t.supports_tools, t.tool_format) == (False, None)


def test_written_rows_keep_tools_and_calls(tmp_path):
    """`to_record` (used by mix, repeat, curve) writes a tool row that reads back the same; mix end to end."""
    from weitiao.data.tools import to_record
    from weitiao.dataeng import mix

    conv = load_rows_one(SHAREGPT_ROW)
    back = load_rows_one(to_record(conv))
    assert (back.messages, back.tools) == (conv.messages, conv.tools)
    src = write_jsonl(tmp_path / "t.jsonl", [OPENAI_ROW])
    mix.run([f"{src}:1"], tmp_path / "m.jsonl")
    (row,) = load_conversations(tmp_path / "m.jsonl").rows
    assert (row.messages, row.tools) == (load_rows_one(OPENAI_ROW).messages, load_rows_one(OPENAI_ROW).tools)
    assert (
        json.loads(open(tmp_path / "m.jsonl").readline())["messages"][2]["tool_calls"][0]["function"]["arguments"]
        == '{"city": "北京"}'
    )


@pytest.mark.slow
def test_sft_on_tool_rows_saves_a_template_serve_reads_tools_from(tmp_path, monkeypatch):
    """`weitiao sft` with data.template=qwen on both tool layouts (packed, the default); the saved chat template
    is the qwen one, so `template: auto` on the result supports tools and reads hermes calls."""
    import torch
    from conftest import save_tiny_model
    from test_serve_tools import tool_tokenizer  # tool prompts fit the tiny model's 512 positions with it

    from weitiao.config import load_config
    from weitiao.models.load import load_tokenizer
    from weitiao.recipes import sft

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    share = write_jsonl(tmp_path / "share.jsonl", [SHAREGPT_ROW] * 3)
    oai = write_jsonl(tmp_path / "oai.jsonl", [OPENAI_ROW] * 3)
    tiny_model_dir = save_tiny_model(tmp_path / "m", tool_tokenizer())
    overrides = [f"model.path={tiny_model_dir}", "model.dtype=fp32", f"data.train=[{share},{oai}]"]
    overrides += ["data.template=qwen", "data.max_len=512", f"train.out={tmp_path / 'run'}", "train.progress=false"]
    overrides += ["train.tensorboard=false", "train.max_steps=2", "train.micro_batch_size=2"]
    summary = sft.run(load_config(sft.SFTConfig, None, overrides))
    assert summary["steps"] == 2
    final = tmp_path / "run" / "final"
    assert (final / "chat_template.jinja").read_text() == QWEN
    t = resolve_template(load_tokenizer(str(final / "tokenizer")), "auto")
    assert (t.name, t.supports_tools, t.tool_format) == ("tokenizer", True, "hermes")


def test_tool_rows_batch_encode_like_the_row_encoder(tokenizer):
    """The batch encoder (and so the tokenized-data cache) sends tool rows through chat.encode, exactly."""
    from weitiao.data.chat import EncodeOptions, encode
    from weitiao.data.formats import parse_row
    from weitiao.data.templates import resolve_template
    from weitiao.data.tokenize import encode_batch

    template = resolve_template(tokenizer, "qwen")
    rows = [
        parse_row({"messages": [{"role": "user", "content": "北京天气？"},
                                {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {
                                    "name": "get_weather", "arguments": "{\"city\": \"北京\"}"}}]},
                                {"role": "tool", "tool_call_id": "c1", "content": "晴"},
                                {"role": "assistant", "content": "北京今天晴"}],
                   "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {
                       "type": "object", "properties": {"city": {"type": "string"}}}}}]}, "openai"),
        parse_row({"messages": [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好呀"}]},
                  "openai"),
    ]  # fmt: skip
    opts = EncodeOptions(max_len=8192)  # the Qwen2.5 tool instructions are long in the tiny byte-level vocab
    got = encode_batch(rows, tokenizer, template, opts)
    for row, enc in zip(rows, got):
        want = encode(row, tokenizer, template, opts)
        assert (enc.input_ids, enc.labels) == (want.input_ids, want.labels)
    assert any(t != -100 for t in got[0].labels) and "get_weather" in tokenizer.decode(got[0].input_ids)


def test_alpaca_and_prompt_completion_rows_keep_their_tools(tmp_path):
    """`tools` on an Alpaca row (LLaMA-Factory's tools column, mapped for an alpaca entry) and on a TRL
    conversational prompt/completion row was dropped unsaid: the model trained to call functions it was never shown;
    a completion holding a call was refused as 'content: missing'. They render as the OpenAI row does."""
    tok = llama_tokenizer()
    qwen, opts = resolve_template(tok, "qwen"), EncodeOptions(max_len=8192)

    def tokens(row):
        enc = encode(load_rows_one(row), tok, qwen, opts)
        return enc.input_ids, enc.labels

    msgs, specs = OPENAI_ROW["messages"], OPENAI_ROW["tools"]
    alpaca = {"instruction": "北京天气怎么样？", "output": "北京今天晴，25度。", "system": "你是助手"}
    plain = {"messages": [msgs[0], msgs[1], msgs[4]], "tools": specs}
    assert tokens({**alpaca, "tools": json.dumps([WEATHER], ensure_ascii=False)}) == tokens(plain)
    assert tokens(alpaca) != tokens(plain)  # negative control: the specs are in the row's tokens
    (tmp_path / "lf").mkdir()
    write_jsonl(tmp_path / "lf" / "a.jsonl", [{**alpaca, "tools": json.dumps([WEATHER], ensure_ascii=False)}])
    cols = {"prompt": "instruction", "response": "output", "system": "system", "tools": "tools"}
    info = {"t": {"file_name": "a.jsonl", "columns": cols}}
    (tmp_path / "lf" / "dataset_info.json").write_text(json.dumps(info))
    lf = load_conversations(["t"], dataset_dir=tmp_path / "lf").rows[0]
    assert lf.tools == specs and (lf.messages, lf.tools) == (load_rows_one(plain).messages, specs)

    # TRL prompt/completion: the call in the completion trains, as in the OpenAI row; in the prompt it is context
    assert tokens({"prompt": msgs[:2], "completion": msgs[2:], "tools": specs}) == tokens(OPENAI_ROW)
    in_prompt = tokens({"prompt": msgs[:4], "completion": msgs[4:], "tools": specs})
    assert in_prompt == tokens({"messages": [*msgs[:2], {**msgs[2], "weight": 0}, *msgs[3:]], "tools": specs})
    trained = tok.decode([t for t, label in zip(*in_prompt) if label != -100])
    assert "北京今天晴" in trained and "get_weather" not in trained

    bad = [
        ({"prompt": "北京天气？", "completion": "晴", "tools": specs}, "tools: string prompt/completion rows"),
        ({"prompt": msgs[:4], "completion": [{**msgs[3], "content": "雨"}, msgs[4]]},
         r"completion\[0\]\.tool_call_id: 'call_1' was already answered by prompt\[3\]"),
    ]  # fmt: skip
    for row, why in bad:
        with pytest.raises(UserError, match=rf"b\.jsonl:1: {why}"):
            load_conversations(write_jsonl(tmp_path / "b.jsonl", [row]), allow_text=True)


def test_prompt_files_refuse_tools_in_every_layout(tmp_path):
    """A prompt file's `prompt` or Alpaca row kept its question and dropped its `tools` unsaid."""
    from weitiao.data.prompts import read_prompts

    alpaca = {"instruction": "北京天气？", "output": "晴", "tools": "[{}]"}
    for row in ({"prompt": "北京天气？", "tools": [WEATHER]}, alpaca):
        with pytest.raises(UserError, match=r"p\.jsonl:1: tools: tool rows are not prompts here"):
            read_prompts(write_jsonl(tmp_path / "p.jsonl", [row]))
        assert read_prompts(write_jsonl(tmp_path / "p.jsonl", [{**row, "tools": "[]"}]))[0].text == "北京天气？"
