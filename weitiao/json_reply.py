"""JSON in a model's reply: the one parser for teacher answers, judge verdicts and JSON-rule checks.

Models wrap JSON in ``` fences, prose, trailing commas and full-width punctuation; `parse_json_reply`
finds and repairs it, or (repair=False) takes the reply as written.
"""

from __future__ import annotations

import json
import re
from typing import Any

from weitiao.io import loads

_FENCE = re.compile(r"```[a-zA-Z]*\s*\n?(.*?)```", re.S)
# a fence whose closing ``` starts a line: a ``` inside a JSON string (escaped as \n```) never does
_LINE_FENCE = re.compile(r"```[a-zA-Z]*[ \t]*\n(.*?)\n[ \t]*```", re.S)
_WHOLE_FENCE = re.compile(r"^```[a-zA-Z]*\s*\n?(.*?)\n?```$", re.S)
_OPEN = {"[": "]", "{": "}"}


def _spans(text: str) -> tuple[list[tuple[int, int]], bool]:
    """Top-level balanced [...] / {...} spans (brackets inside JSON strings skipped), and whether the text
    ends inside an unclosed one (a reply cut off by max_tokens)."""
    spans, stack, start, in_str, esc = [], [], 0, False, False
    for i, ch in enumerate(text):
        if in_str:
            esc = not esc and ch == "\\"
            if ch == '"' and not esc:
                in_str = False
            continue
        if ch == '"' and stack:
            in_str = True
        elif ch in _OPEN:
            if not stack:
                start = i
            stack.append(_OPEN[ch])
        elif stack and ch == stack[-1]:
            stack.pop()
            if not stack:
                spans.append((start, i + 1))
    return spans, bool(stack)


def _outside_strings(text: str, fix: Any) -> str:
    """Apply `fix` to the parts of `text` that are not inside JSON string literals."""
    parts, buf, in_str, esc = [], [], False, False
    for ch in text:
        if in_str:
            buf.append(ch)
            esc = not esc and ch == "\\"
            if ch == '"' and not esc:
                parts.append("".join(buf))
                buf, in_str = [], False
            continue
        if ch == '"':
            parts.append(fix("".join(buf)))
            buf, in_str = [ch], True
        else:
            buf.append(ch)
    parts.append("".join(buf) if in_str else fix("".join(buf)))
    return "".join(parts)


def _repairs(s: str) -> list[str]:
    """Candidate repairs, each applied on top of the previous: trailing commas, full-width punctuation/quotes."""
    # a. trailing commas before ] or }
    a = _outside_strings(s, lambda t: re.sub(r",(\s*[\]}])", r"\1", t))
    # b. full-width ：and ，between values (outside strings only, so Chinese text inside values is untouched)
    b = _outside_strings(a, lambda t: t.replace("：", ":").replace("，", ",").replace("、", ","))
    b = _outside_strings(b, lambda t: re.sub(r",(\s*[\]}])", r"\1", t))
    # c. full-width quotes “” used as JSON quotes: only where they sit next to structure ({ [ , :)
    c = re.sub(r"([{\[,:：，]\s*)[“”]", r'\1"', b)
    c = re.sub(r"[“”](\s*[:：,，}\]])", r'"\1', c)
    c = _outside_strings(c, lambda t: t.replace("：", ":").replace("，", ",").replace("、", ","))
    c = _outside_strings(c, lambda t: re.sub(r",(\s*[\]}])", r"\1", t))
    return [a, b, c]


def _loads(s: str) -> Any:
    return json.loads(s, strict=False)  # strict=False: raw newlines inside strings are common in LLM output


def parse_json_reply(text: str, repair: bool = True) -> Any:
    """The JSON array/object in an LLM reply: strips ``` fences and prose around it, repairs trailing commas
    and full-width punctuation where safe, joins several top-level objects into a list; raises ValueError.

    repair=False is for judging a reply that was asked to be JSON: the whole reply (inside at most one
    ``` fence) must parse as it stands, any JSON value."""
    if not repair:
        body = text.strip()
        m = _WHOLE_FENCE.match(body)
        return loads(m.group(1) if m else body)
    if not isinstance(text, str) or not text.strip():
        raise ValueError("empty reply")
    try:  # a reply that is JSON as it stands, before looking for fences: ``` inside its strings (an answer quoting a
        value = _loads(text.strip())  # code block) was taken for a fence, and the valid reply refused as "no JSON"
        if isinstance(value, (list, dict)):
            return value
    except ValueError:
        pass
    fenced = _LINE_FENCE.findall(text) or _FENCE.findall(text)
    body = max(fenced, key=len) if fenced else text
    body = body.strip()
    try:
        value = _loads(body)
        if isinstance(value, (list, dict)):
            return value
    except ValueError:
        pass
    spans, cut = _spans(body)
    if not spans:
        raise ValueError("JSON is cut off (brackets never closed); raise max_tokens" if cut else "no JSON in reply")
    chunks = [body[a:b] for a, b in spans]
    if len(chunks) > 1 and all(c.startswith("{") for c in chunks):
        chunks = ["[" + ",".join(chunks) + "]"]  # several objects in a row (one per line): read them as a list
    first = chunks[0]
    last: ValueError | None = None
    for cand in [first, *_repairs(first)]:
        try:
            return _loads(cand)
        except ValueError as e:
            last = e
    msg = getattr(last, "msg", str(last))
    raise ValueError(f"invalid JSON even after repair: {msg} (at char {getattr(last, 'pos', '?')})")
