"""Tool calling and `response_format` for `weitiao serve`, as OpenAI's chat API (and vLLM) answer them.

1. `plan_chat` turns request messages into what the chat template reads (assistant `tool_calls` with their
   `arguments` parsed into a dict, `tool` turns) and checks `tools`/`tool_choice`/`response_format` against
   the template: a template that cannot render tools, or whose calls cannot be parsed back, is a 400.
   tool_choice "none" leaves the tools out of the prompt and reads no calls. The turns follow OpenAI's rules
   (`_check_turns`): each tool message answers, by id, a call of the assistant message before it, and each
   call is answered; what OpenAI refuses is a 400 here too.
2. Replies are split by the template's `parse_tool_calls`: calls go to `message.tool_calls` (ids
   `call_...`, arguments a JSON string) with finish_reason "tool_calls"; the text around them, stripped,
   is the content. `ToolStream` does the same for a stream: it sends text up to the first `<tool_call>`
   (Llama's format: unless the reply opens with `{`) and the calls as `tool_calls` deltas at the end.
3. tool_choice "required" or a named function, and response_format json_object and json_schema, are enforced
   by constrained decoding (weitiao.infer.constrain): calls in the template's syntax with JSON-object
   `arguments` (required: one or more, as OpenAI and vLLM), one JSON object, or JSON following the schema
   (weitiao.infer.schema). A named function, and parallel_tool_calls false under any tool_choice, make one
   call at most: the reply ends where its first whole call closes (`first_call_end`; what the model writes
   past it, a second call, is cut off as a stop string cuts).
4. A tool with `strict: true` has its arguments follow its schema (weitiao.infer.schema; a schema OpenAI
   refuses, or one using what the mask cannot enforce, is a 400). Under tool_choice "auto", as vLLM's
   structural tags, any strict tool makes the reply free text until a call opens; from there the name is one
   of the tools and a strict tool's arguments follow its schema; under "required" or a named function the
   one forced call does.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from weitiao.data.templates import ChatTemplate, parse_tool_calls
from weitiao.infer.api import BadRequest
from weitiao.infer.constrain import Pattern, json_object, tool_call_pattern
from weitiao.infer.schema import compile_schema, strict_arguments

_MARK, _CLOSE = "<tool_call>", "</tool_call>"


@dataclass
class ChatPlan:
    messages: list[dict]  # for the template
    tools: list[dict] | None  # for the template; None when tool_choice is "none"
    tool_format: str | None  # read calls out of replies in this format; None: plain text
    constraint: Pattern | None  # the reply must match it (constrained decoding)
    by: str = "response_format"  # the field that asked for the constraint (named in the 400s about it)
    one_call: bool = False  # one call at most (parallel_tool_calls false, a named function): see `first_call_end`


def plan_chat(req: Any, template: ChatTemplate) -> ChatPlan:
    """The messages/tools to render and how replies are read, or `BadRequest` naming the field."""
    how = f"serve with --template qwen or llama3, or a model whose chat_template uses `tools` (now: {template.name})"
    messages = []
    for i, m in enumerate(req.messages):
        msg: dict[str, Any] = {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
        if m.name is not None:  # to the template, as vLLM passes it; serve refuses it where the template reads none
            msg["name"] = m.name
        if m.tool_calls and m.role != "assistant":
            raise BadRequest(f"messages.{i}.tool_calls: only assistant messages make calls", f"messages.{i}.tool_calls")
        if m.tool_calls or m.role == "tool":
            if not template.supports_tools:
                where = f"messages.{i}." + ("role" if m.role == "tool" else "tool_calls")
                raise BadRequest(f"{where}: tool turns need a chat template with tools; {how}", where)
            msg["tool_calls"] = [_call(c, f"messages.{i}.tool_calls.{j}") for j, c in enumerate(m.tool_calls or [])]
            if m.tool_call_id is not None:
                msg["tool_call_id"] = m.tool_call_id
        messages.append(msg)
    _check_turns(req.messages)
    tools = [t.model_dump(exclude_none=True) for t in req.tools or []]
    choice = req.tool_choice or "auto"
    if choice not in ("none", "auto") and not tools:
        raise BadRequest(f"tool_choice: {_show(choice)} needs `tools`", "tool_choice")
    names = [t["function"]["name"] for t in tools]
    for j, name in enumerate(names):
        if name in names[:j]:
            field = f"tools.{j}.function.name"
            raise BadRequest(f"{field}: {name!r} is also tools.{names.index(name)}'s name; names must differ", field)
    # each strict schema is checked (a 400 as on OpenAI) whatever tool_choice is; its node goes into `p`
    p = Pattern()
    args = [
        strict_arguments(p, t["function"].get("parameters"), f"tools.{j}.function") if t["function"].get("strict")
        else None
        for j, t in enumerate(tools)
    ]  # fmt: skip
    if not isinstance(choice, str) and choice.function.name not in names:
        raise BadRequest(f"tool_choice: function {choice.function.name!r} is not in tools ({names})", "tool_choice")
    fmt = req.response_format.type if req.response_format else "text"
    if fmt != "json_schema" and req.response_format and req.response_format.json_schema is not None:
        msg = f"response_format.json_schema: read only with type 'json_schema', not {fmt!r}; drop it"  # else ignored
        raise BadRequest(msg, "response_format.json_schema")
    reply = json_object() if fmt == "json_object" else None
    if fmt == "json_schema":
        js = req.response_format.json_schema
        if js is None:
            raise BadRequest(
                "response_format.json_schema: required with type 'json_schema'", "response_format.json_schema"
            )
        q = Pattern()
        reply = q.finish(compile_schema(q, js.json_schema, "response_format.json_schema.schema", bool(js.strict)))
    if choice == "none" or not tools:  # "auto" without tools is plain text too
        return ChatPlan(messages, None, None, reply)
    if not template.supports_tools:
        raise BadRequest(f"tools: the model's chat template cannot render tools; {how}", "tools")
    if template.tool_format is None:
        msg = f"tools: calls in this chat template's output cannot be parsed back; {how}"
        raise BadRequest(msg, "tools")
    if fmt != "text":
        raise BadRequest(f"response_format: {fmt} together with tools; send one or the other", "response_format")
    constraint, by = None, "tool_choice"
    if choice == "required" or choice == "auto" and any(a is not None for a in args):
        constraint = tool_call_pattern(template.tool_format, names, args, auto=choice == "auto", p=p)
        if choice == "auto":
            by = f"tools.{next(j for j, a in enumerate(args) if a is not None)}.function.strict"
    elif not isinstance(choice, str):
        k = names.index(choice.function.name)
        constraint = tool_call_pattern(template.tool_format, [names[k]], [args[k]], p=p)
    # required: one call or more, as OpenAI and vLLM; a named function, or parallel_tool_calls false: one call
    one = req.parallel_tool_calls is False or not isinstance(choice, str)
    return ChatPlan(messages, tools, template.tool_format, constraint, by, one)


def _check_turns(messages: list) -> None:
    """OpenAI's rules for the conversation, each a 400 there too: every message has content, but an assistant
    message that calls; `tool_call_id` is a tool message's alone, and required there; a tool message answers
    a call of the assistant message just before it (only tool messages between), and every call (each with
    its own id) is answered once, before the next user or assistant message, or the end."""
    # the calling assistant message tool messages answer now; its unanswered ids; the answered ones (by message)
    turn, waiting, answered = None, {}, {}
    for i, m in enumerate(messages):
        f = f"messages.{i}"
        if m.content is None and not (m.role == "assistant" and m.tool_calls):
            msg = f"{f}.content: missing or null; only an assistant message with tool_calls may leave it out"
            raise BadRequest(msg, f"{f}.content")
        if m.role != "tool" and m.tool_call_id is not None:
            msg = f"{f}.tool_call_id: only tool messages answer a call (this is a {m.role} message)"
            raise BadRequest(msg, f"{f}.tool_call_id")
        if m.role == "tool":
            if turn is None:
                msg = f"{f}.role: a tool message must answer a call of the assistant message with tool_calls before it"
                raise BadRequest(msg, f"{f}.role")
            ids = [c.id for c in messages[turn].tool_calls]
            if m.tool_call_id is None:
                msg = f"{f}.tool_call_id: required; the id of the call it answers (messages.{turn} made {ids})"
                raise BadRequest(msg, f"{f}.tool_call_id")
            if m.tool_call_id not in ids:
                msg = f"{f}.tool_call_id: {m.tool_call_id!r} answers no call of messages.{turn} (its ids: {ids})"
                raise BadRequest(msg, f"{f}.tool_call_id")
            if m.tool_call_id in answered:  # two results for one call: which one the model saw is a guess
                msg = (
                    f"{f}.tool_call_id: {m.tool_call_id!r} was already answered by messages.{answered[m.tool_call_id]}"
                )
                raise BadRequest(msg, f"{f}.tool_call_id")
            called = next(c.function.name for c in messages[turn].tool_calls if c.id == m.tool_call_id)
            if m.name is not None and m.name != called:  # the function's name (as LangChain sends it): which is meant?
                msg = f"{f}.name: {m.name!r}, but the call {m.tool_call_id!r} it answers is of {called!r}"
                raise BadRequest(msg, f"{f}.name")
            answered[m.tool_call_id] = i
            waiting.pop(m.tool_call_id, None)
            continue
        _all_answered(turn, waiting)
        turn, waiting, answered = None, {}, {}
        for j, c in enumerate(m.tool_calls or []):
            if not c.id:
                msg = f"{f}.tool_calls.{j}.id: required; the tool message with the result names it in tool_call_id"
                raise BadRequest(msg, f"{f}.tool_calls.{j}.id")
            if c.id in waiting:  # a result could not say which of the two calls it answers
                msg = f"{f}.tool_calls.{j}.id: {c.id!r} is also the id of tool_calls.{waiting[c.id]}; ids must differ"
                raise BadRequest(msg, f"{f}.tool_calls.{j}.id")
            turn = i
            waiting[c.id] = j
    _all_answered(turn, waiting)


def _all_answered(turn: int | None, waiting: dict[str, int]) -> None:
    """`waiting`: the unanswered call ids of messages[turn], each with its first place in tool_calls."""
    if waiting:
        field = f"messages.{turn}.tool_calls.{min(waiting.values())}.id"
        msg = f"{field}: no tool message answers {list(waiting)} before the next user or assistant message or the end"
        raise BadRequest(msg, field)


def _show(choice: Any) -> str:
    return repr(choice) if isinstance(choice, str) else f"function {choice.function.name!r}"


def _call(c: Any, field: str) -> dict:
    try:
        args = json.loads(c.function.arguments) if c.function.arguments.strip() else {}
    except ValueError as e:
        raise BadRequest(f"{field}.function.arguments: not valid JSON ({e})", f"{field}.function.arguments") from None
    if not isinstance(args, dict):
        raise BadRequest(f"{field}.function.arguments: expected a JSON object", f"{field}.function.arguments")
    call = {"type": "function", "function": {"name": c.function.name, "arguments": args}}
    return {"id": c.id, **call} if c.id else call


def call_objects(calls: list[dict]) -> list[dict]:
    """OpenAI `tool_calls` entries for parsed calls."""
    return [
        {
            "id": "call_" + uuid.uuid4().hex[:24],
            "type": "function",
            "function": {"name": c["name"], "arguments": c["arguments"]},
        }
        for c in calls
    ]


def first_call_end(text: str, tool_format: str) -> int | None:
    """Where the reply's first call ends when it holds one whole, valid call (text after it is cut off under
    parallel_tool_calls false, as a stop string cuts), else None."""
    if tool_format == "hermes":
        k = text.find(_CLOSE, max(text.find(_MARK), 0))
        end = k + len(_CLOSE) if k >= 0 and _MARK in text else None
    else:  # llama3_json: a reply that opens with { is calls; the first ends with its object
        body = text.lstrip()
        try:
            end = len(text) - len(body) + json.JSONDecoder().raw_decode(body)[1] if body.startswith("{") else None
        except ValueError:
            end = None
    return end if end is not None and parse_tool_calls(text[:end], tool_format)[1] else None  # type: ignore[arg-type]


def reply_with_calls(text: str, reason: str | None, tool_format: str) -> tuple[dict, str | None]:
    """The assistant message for a whole reply and its finish_reason ("tool_calls" when it called)."""
    content, calls = parse_tool_calls(text, tool_format)  # type: ignore[arg-type]
    content = content.strip()
    if not calls:
        return {"role": "assistant", "content": content}, reason
    return {"role": "assistant", "content": content or None, "tool_calls": call_objects(calls)}, "tool_calls"


class ToolStream:
    """One streamed choice: `feed(delta)` → content safe to send now; `finish()` → (rest of the content,
    tool_calls entries). What is sent is always a prefix of the final (stripped) content."""

    def __init__(self, tool_format: str) -> None:
        self.fmt, self.text, self.sent = tool_format, "", 0

    def _visible(self) -> str:
        t = self.text.lstrip()
        if self.fmt == "hermes":
            k = t.find(_MARK)
            if k >= 0:
                t = t[:k]
            else:  # hold back a tail that may be the start of <tool_call>
                t = t[: len(t) - max((n for n in range(1, len(_MARK)) if t.endswith(_MARK[:n])), default=0)]
        elif t.startswith("{"):  # llama3_json: a reply that opens with { may be a call as a whole
            return ""
        return t.rstrip()

    def feed(self, delta: str) -> str:
        self.text += delta
        view = self._visible()
        out, self.sent = view[self.sent :], max(self.sent, len(view))
        return out

    def finish(self) -> tuple[str, list[dict]]:
        content, calls = parse_tool_calls(self.text, self.fmt)  # type: ignore[arg-type]
        return content.strip()[self.sent :], call_objects(calls)
