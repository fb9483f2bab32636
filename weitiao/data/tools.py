"""Tool-calling rows: LLaMA-Factory's ShareGPT layout and OpenAI fine-tuning messages, into one Conversation.

ShareGPT (LLaMA-Factory): `conversations` with roles human/gpt plus `function_call` (the value is a JSON call
`{"name", "arguments"}` or a list of them) and `observation` (the tool's result), and `tools`, the function
specs as a JSON string (or a list). OpenAI: assistant messages with `tool_calls`
(`{"id", "type": "function", "function": {"name", "arguments": JSON string}}`), `role: "tool"` messages
(`tool_call_id`, `content`) and a `tools` list.

Both become messages in the form HF chat templates read: an assistant turn with `tool_calls` whose
`arguments` is a dict, `tool` turns with the result, and `Conversation.tools` in OpenAI's
`{"type": "function", "function": {...}}` shape. Loss goes on assistant turns (calls and replies) only.
"""

from __future__ import annotations

import json
import re
from typing import Any

from weitiao.data.formats import (
    ROLE_MAP,
    SHAREGPT_ROLES,
    Conversation,
    Message,
    RowError,
    _check_turns,
    _text,
    _weight,
    _with_system,
    parse_alpaca,
    refuse_name,
    unknown_role,
)

SHAREGPT_TOOL_ROLES = {"function_call", "observation"}


def is_tool_row(record: dict, fmt: str) -> bool:
    """Whether a sharegpt/openai row uses tools (a `tools` field, tool roles or tool calls)."""
    if record.get("tools") not in (None, "", []) or "functions" in record:
        return True
    key, role = ("conversations", "from") if fmt == "sharegpt" else ("messages", "role")
    msgs = record.get(key)
    if not isinstance(msgs, list):
        return False
    tool_roles = SHAREGPT_TOOL_ROLES if fmt == "sharegpt" else {"tool", "function"}
    return any(isinstance(m, dict) and (m.get(role) in tool_roles or m.get("tool_calls")) for m in msgs)


def gives_tools(record: dict) -> bool:
    """Whether a row gives function specs: `tools` (LLaMA-Factory writes "[]" for none) or the legacy `functions`."""
    return record.get("tools") not in (None, "", [], "[]") or "functions" in record


def parse_tools(value: Any, field: str = "tools") -> list[dict]:
    """Function specs (a JSON string or a list; bare `{"name", ...}` or OpenAI `{"type": "function", ...}`)
    in OpenAI's shape."""
    if value in (None, "", []):
        return []
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as e:
            raise RowError(field, f"not valid JSON ({e})") from None
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise RowError(field, "expected a list of function specs")
    tools = []
    for i, t in enumerate(value):
        spec = t.get("function") if isinstance(t, dict) and t.get("type") == "function" else t
        if not (isinstance(spec, dict) and isinstance(spec.get("name"), str) and spec["name"]):
            raise RowError(f"{field}[{i}]", 'expected {"name": ..., "parameters": {...}} (or OpenAI\'s type/function)')
        if not isinstance(spec.get("parameters", {}), dict):
            raise RowError(f"{field}[{i}].parameters", "expected a JSON-schema object")
        tools.append({"type": "function", "function": spec})
    return tools


def _arguments(value: Any, field: str) -> dict:
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else {}
        except ValueError as e:
            raise RowError(field, f"not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise RowError(field, "expected a JSON object of arguments")
    return value


def _call(obj: Any, field: str, call_id: str | None = None) -> dict:
    if not (isinstance(obj, dict) and isinstance(obj.get("name"), str) and obj["name"]):
        raise RowError(field, 'expected a call {"name": ..., "arguments": {...}}')
    call = {"type": "function", "function": {"name": obj["name"], "arguments": _arguments(obj.get("arguments"), field)}}
    return {"id": call_id, **call} if call_id else call


def _weighted(msg: Message, m: dict, field: str) -> Message:
    """`msg` with the row message's OpenAI `weight` (0: context, not trained), as plain chat rows read it."""
    if m.get("weight") is not None and not _weight(m, field, msg["role"]):
        msg["weight"] = 0
    return msg


def _trains(msgs: list[Message], field: str) -> list[Message]:
    if not any(m.get("weight", 1) for m in msgs if m["role"] == "assistant"):
        raise RowError(field, "every assistant message has weight 0; nothing to train")
    return msgs


def check_tool_turns(messages: list[Message], field: str, sharegpt: bool = False) -> list[Message]:
    """Order, LLaMA-Factory's converters' rule: optional system, a user turn first, then user|tool and assistant turns
    alternate (a call answered by a user turn, or a tool result after a reply, is trained as written; a row written
    out by a data tool as OpenAI messages reads back), several tool turns in a row allowed but in ShareGPT (one
    observation per call turn, as LLaMA-Factory's ShareGPT takes it); the conversation ends with an assistant turn (a
    call or a reply). `sharegpt`: errors name the turns as the row does (`from`: human, gpt, ...). Departure: a row
    opening with an observation (LLaMA-Factory trains it) is refused: with no user turn, llama3 renders no tools."""
    key = "from" if sharegpt else "role"

    def said(role: str, m: Message | None = None) -> str:
        """`role` (of message `m`) as the row names it."""
        if not sharegpt:
            return repr(role)
        if role == "assistant":
            return "'function_call'" if m and m.get("tool_calls") else "'gpt'" if m else "'gpt' or 'function_call'"
        return repr({"user": "human", "tool": "observation"}.get(role, role))

    body = messages[1:] if messages and messages[0]["role"] == "system" else messages
    off = len(messages) - len(body)
    if not body or body[0]["role"] != "user":
        opens = sharegpt and body and body[0]["role"] == "tool"  # LLaMA-Factory trains it; llama3 would lose tools
        raise RowError(f"{field}[{off}].{key}", f"expected {said('user')} first" + (
            " (LLaMA-Factory trains a row opening with an observation; weitiao refuses it: with no user turn, the "
            "llama3 template renders no tool specs)" if opens else ""))  # fmt: skip
    for i, (prev, m) in enumerate(zip(body, body[1:]), off + 1):
        if sharegpt and prev["role"] == m["role"] == "tool":
            raise RowError(f"{field}[{i}].from", "a second 'observation' after one function_call: LLaMA-Factory's "
                           "ShareGPT takes one observation per call turn (it skips this row); put the results into "
                           "one observation, or give each call its own function_call turn")  # fmt: skip
        if prev["role"] == "assistant":  # as LLaMA-Factory: a call answered by a user turn, a result after a reply
            want = ("user", "tool")
        elif prev["role"] == "tool":
            want = ("tool", "assistant")
        else:
            want = ("assistant",)
        if m["role"] not in want:
            shown = " or ".join(said(w) for w in want)
            skips = " (LLaMA-Factory skips this row)" if sharegpt else ""
            raise RowError(f"{field}[{i}].{key}", f"expected {shown} after {said(prev['role'], prev)}, got "
                                                  f"{said(m['role'], m)}{skips}")  # fmt: skip
    if body[-1]["role"] != "assistant":
        raise RowError(field, f"must end with {'a gpt or function_call' if sharegpt else 'an assistant'} turn, ends "
                              f"with {said(body[-1]['role'], body[-1])}")  # fmt: skip
    return messages


def parse_sharegpt_tools(record: dict) -> Conversation:
    """A LLaMA-Factory ShareGPT row with function_call/observation turns and/or `tools`."""
    value = record.get("conversations")
    if not isinstance(value, list) or not value:
        raise RowError("conversations", "expected a non-empty list of messages")
    roles = sorted({*SHAREGPT_ROLES, *SHAREGPT_TOOL_ROLES})
    msgs: list[Message] = []
    for i, m in enumerate(value):
        f = f"conversations[{i}]"
        if not isinstance(m, dict):
            raise RowError(f, "expected an object")
        role = m.get("from")
        if role != "observation":
            refuse_name(m, f)
        if m.get("tool_calls") not in (None, [], ""):  # OpenAI's key: ShareGPT (and LLaMA-Factory) reads from/value
            raise RowError(f"{f}.tool_calls", "OpenAI tool calls in a ShareGPT message, whose calls are function_call "
                           "turns (value: the JSON call); write them so, or the row as OpenAI messages")  # fmt: skip
        if role == "function_call":
            raw = _text(m.get("value"), f"{f}.value")
            try:
                calls = json.loads(raw)
            except ValueError as e:
                raise RowError(f"{f}.value", f"not valid JSON ({e})") from None
            calls = calls if isinstance(calls, list) else [calls]
            if not calls:
                raise RowError(f"{f}.value", "no call in the list")
            tool_calls = [_call(c, f"{f}.value") for c in calls]
            msgs.append(_weighted({"role": "assistant", "content": "", "tool_calls": tool_calls}, m, f))
        elif role == "observation":
            msgs.append(_weighted({"role": "tool", "content": _text(m.get("value"), f"{f}.value")}, m, f))
        elif role in SHAREGPT_ROLES:
            msgs.append(_weighted({"role": SHAREGPT_ROLES[role], "content": _text(m.get("value"), f"{f}.value")}, m, f))
        else:
            raise RowError(f"{f}.from", unknown_role(role, "from", str(roles)))
    # checked before the row's `system` key joins them: an index names the turn in the row's own list
    msgs = _trains(_with_system(record, check_tool_turns(msgs, "conversations", sharegpt=True)), "conversations")
    return Conversation(msgs, tools=parse_tools(record.get("tools")))


def parse_openai_tools(record: dict) -> Conversation:
    """An OpenAI fine-tuning row with assistant `tool_calls`, `tool` messages and/or `tools`."""
    if "functions" in record:
        raise RowError("functions", "the legacy functions/function_call layout is not supported; use tools/tool_calls")
    value = record.get("messages")
    if not isinstance(value, list) or not value:
        raise RowError("messages", "expected a non-empty list of messages")
    msgs: list[Message] = []
    open_ids: set[str] = set()  # ids of the last assistant turn's calls, which tool turns answer
    answered: dict[str, int] = {}  # those answered so far, by message
    for i, m in enumerate(value):
        f = f"messages[{i}]"
        if not isinstance(m, dict):
            raise RowError(f, "expected an object")
        role = m.get("role")
        if role not in ("system", "developer", "user", "assistant", "tool"):
            raise RowError(f"{f}.role", unknown_role(role, "role", "assistant, developer, system, tool or user"))
        role = ROLE_MAP.get(role, role)  # developer: the system role's newer name
        if role != "tool":  # a tool message's name is the function's: not rendered, and the call's id says which
            refuse_name(m, f)
        if role == "assistant" and m.get("tool_calls"):
            calls = m["tool_calls"]
            if not isinstance(calls, list):
                raise RowError(f"{f}.tool_calls", "expected a list of calls")
            tool_calls, seen = [], {}
            for j, c in enumerate(calls):
                cf = f"{f}.tool_calls[{j}]"
                if not (isinstance(c, dict) and c.get("type", "function") == "function" and "function" in c):
                    raise RowError(cf, 'expected {"id", "type": "function", "function": {"name", "arguments"}}')
                if c.get("id") and c["id"] in seen:  # a result could not say which of the two it answers
                    raise RowError(f"{cf}.id", f"{c['id']!r} is also the id of tool_calls[{seen[c['id']]}]")
                seen.setdefault(c.get("id"), j)
                tool_calls.append(_call(c["function"], f"{cf}.function", c.get("id")))
            content = m.get("content")
            text = _text(content, f"{f}.content") if content not in (None, "") else ""
            msgs.append(_weighted({"role": "assistant", "content": text, "tool_calls": tool_calls}, m, f))
            open_ids, answered = {c["id"] for c in tool_calls if c.get("id")}, {}
            continue
        msg = _weighted({"role": role, "content": _text(m.get("content"), f"{f}.content")}, m, f)
        if role == "tool":
            call_id = m.get("tool_call_id")
            if call_id is not None:
                if open_ids and call_id not in open_ids:
                    raise RowError(f"{f}.tool_call_id", f"{call_id!r} answers no call of the assistant turn before it")
                if call_id in answered:  # two results for one call: which one to train on would be a guess
                    raise RowError(
                        f"{f}.tool_call_id", f"{call_id!r} was already answered by messages[{answered[call_id]}]"
                    )
                answered[call_id] = i
                msg["tool_call_id"] = call_id
        msgs.append(msg)
    msgs = _trains(_with_system(record, check_tool_turns(msgs, "messages")), "messages")
    return Conversation(msgs, tools=parse_tools(record.get("tools")))


def parse_alpaca_tools(record: dict) -> Conversation:
    """An Alpaca row with `tools` (LLaMA-Factory's tools column maps to it for alpaca entries too): the specs are
    rendered as for ShareGPT rows (Qwen: in the system turn), the turns read as in any Alpaca row."""
    if "functions" in record:
        raise RowError("functions", "the legacy functions layout is not supported; give the specs as tools")
    return Conversation(_check_turns(parse_alpaca(record), "row"), tools=parse_tools(record.get("tools")))


def prompt_completion_messages(record: dict) -> dict:
    """A TRL conversational prompt/completion row as an OpenAI row (prompt + completion as `messages`), for
    `is_tool_row` and `parse_prompt_completion_tools`."""
    keys = ("tools", "functions")
    return {"messages": [*record["prompt"], *record["completion"]], **{k: record[k] for k in keys if k in record}}


def parse_prompt_completion_tools(record: dict) -> Conversation:
    """A TRL conversational prompt/completion row with `tools`, tool calls or tool results (TRL renders `tools`
    through the chat template): read as OpenAI messages; the prompt's assistant turns are context (weight 0), as
    in prompt/completion rows without tools. Errors name prompt[i] / completion[j], not the joined list."""
    n = len(record["prompt"])

    def named(m: re.Match) -> str:
        i = int(m.group(1))
        return f"prompt[{i}]" if i < n else f"completion[{i - n}]"

    try:
        conv = parse_openai_tools(prompt_completion_messages(record))
        for m in conv.messages[:n]:
            if m["role"] == "assistant":
                m["weight"] = 0
        _trains(conv.messages, "completion")
    except RowError as e:
        field = "completion" if e.field == "messages" else re.sub(r"^messages\[(\d+)\]", named, e.field)
        raise RowError(field, re.sub(r"messages\[(\d+)\]", named, e.problem)) from None
    conv.messages = _with_system(record, conv.messages)
    return conv


def uses_tools(conv: Conversation) -> bool:
    """Whether rendering this conversation needs a template with tool support."""
    return bool(conv.tools) or any(m["role"] == "tool" or m.get("tool_calls") for m in conv.messages)


def to_record(conv: Conversation) -> dict:
    """The conversation as an OpenAI-messages row that reads back the same: calls' arguments as JSON strings,
    `tools` kept (data tools that write conversations out use it, so tool rows survive them)."""
    msgs = []
    for m in conv.messages:
        if m.get("tool_calls"):
            calls = [
                {
                    **c,
                    "function": {
                        **c["function"],
                        "arguments": json.dumps(c["function"]["arguments"], ensure_ascii=False),
                    },
                }
                for c in m["tool_calls"]
            ]
            m = {**m, "content": m["content"] or None, "tool_calls": calls}
        msgs.append(m)
    return {"messages": msgs, **({"tools": conv.tools} if conv.tools else {})}
