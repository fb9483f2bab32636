"""Prompt files: the one reader for every command that asks a model (golden eval, PPO, rule sets, curve).

A row is a prompt (the messages, ending with a user turn) and an optional reference answer:
  {"prompt": "..." | [messages], "reference"|"answer"|"chosen"|"completion"|"output"|"response": "..."}
  ("question" = "prompt"; the first of those keys given, not empty, is the reference: a string or an assistant
  message, anything else is an error)
  a preference pair (any layout `weitiao dpo` reads): its prompt; chosen is the reference
  a chat row (alpaca, sharegpt, openai messages): a final assistant turn is the reference, else the
  whole conversation is the prompt
Any file type the data loader reads (JSONL, JSON, Parquet, Arrow, CSV). Other fields of the row stay
in `Prompt.row` (rule files read `rule_ids` there). A bad row is one UserError `file:line: field: problem`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from weitiao.data.files import RowError, iter_records
from weitiao.data.formats import (
    MESSAGES_KEY,
    PARSERS,
    ROLE_MAP,
    Message,
    _alpaca_prompt,
    _check_turns,
    _messages,
    _reply,
    _text,
    _with_system,
    detect_format,
    parse_preference,
)
from weitiao.data.tools import gives_tools, is_tool_row
from weitiao.errors import UserError, near_miss

REFERENCE_KEYS = ("reference", "answer", "chosen", "completion", "output", "response")
NO_TOOLS = "tool rows are not prompts here (generation renders no tools)"


@dataclass
class Prompt:
    """Messages ending with a user turn, the reference answer if the row gave one, and where it came from."""

    messages: list[Message]
    reference: str | None
    source: str  # file:line
    row: dict = field(default_factory=dict, repr=False)

    @property
    def text(self) -> str:
        """The last user turn."""
        return self.messages[-1]["content"]

    @property
    def history(self) -> list[str]:
        """Texts of the turns before the last user turn (for copy-of-history)."""
        return [m["content"] for m in self.messages[:-1] if m["role"] != "system"]


def _reference(rec: dict) -> str | None:
    """The first reference key given (not "" or null): a string or an assistant message; RowError otherwise, and for
    a row with none of them but a key one typo away (`referance`, `answers`), which would leave it unscored."""
    key = next((k for k in REFERENCE_KEYS if rec.get(k) not in (None, "")), None)
    typos = ((k, near) for k in rec if not k.endswith("_id") and (near := near_miss(k, REFERENCE_KEYS, 0.85)))
    if key is None and (typo := next(typos, None)):
        raise RowError(typo[0], f"unknown key; did you mean {typo[1]!r}? (the reference answer; rename it, or drop it)")
    value = rec.get(key) if key else None
    if isinstance(value, dict) or (isinstance(value, list) and value and isinstance(value[0], dict)):
        return _reply(value, key)  # TRL conversational: [{"role": "assistant", "content": ...}]
    if value is not None and not isinstance(value, str):
        raise RowError(key, f"expected a string (the reference answer), got {type(value).__name__} {value!r:.40}")
    return value


def parse_prompt(rec: Any, source: str = "", tools: str = NO_TOOLS) -> Prompt:
    """One row → Prompt; RowError(field, problem) when it is not a prompt. `tools`: the refusal for tool rows."""
    if isinstance(rec, RowError):
        raise rec
    if not isinstance(rec, dict):
        raise RowError("row", f"expected a JSON object, got {type(rec).__name__}")
    pair = "chosen" in rec and "rejected" in rec and "question" not in rec  # ultrafeedback: prompt + conversations
    if not pair and gives_tools(rec):  # any layout: the tools would be dropped (a pair's own reader refuses them)
        raise RowError("tools" if "tools" in rec else "functions", tools)
    key = None if pair else next((k for k in ("prompt", "question") if k in rec), None)
    if key is not None:
        p = rec[key]
        msgs = (
            _messages(p, key, "role", "content", ROLE_MAP)
            if isinstance(p, list)
            else [{"role": "user", "content": _text(p, key)}]
        )
        msgs = _check_turns(_with_system(rec, msgs), key, last="user")
        return Prompt(msgs, _reference(rec), source, rec)
    if "chosen" in rec or "rejected" in rec:
        pp = parse_preference(rec, strict=False)  # a prompt file needs no usable rejected reply
        return Prompt(pp.prompt, pp.chosen or None, source, rec)
    fmt = detect_format(rec)
    if fmt in ("sharegpt", "openai") and is_tool_row(rec, fmt):
        raise RowError("tools", tools)
    if fmt == "alpaca":
        msgs, ref, where = _with_system(rec, _alpaca_prompt(rec)), rec.get("output"), "instruction"
        ref = None if ref in (None, "") else _text(ref, "output")
    elif fmt in ("sharegpt", "openai", "firefly"):
        msgs, ref, where = PARSERS[fmt](rec), None, MESSAGES_KEY[fmt]
        if any(m["role"] == "user" for m in msgs) and msgs[-1]["role"] == "assistant":
            msgs, ref = msgs[:-1], msgs[-1]["content"]
    else:
        raise RowError("row", f"a {fmt} row is not a prompt; give prompt, messages or instruction")
    return Prompt(_check_turns(msgs, where, last="user"), ref, source, rec)


def read_prompts(paths: str | Path | Sequence[str | Path], tools: str = NO_TOOLS, what: str = "") -> list[Prompt]:
    """Every prompt of one or more files, in order. `what` names the setting in the no-prompts error."""
    files = [paths] if isinstance(paths, (str, Path)) else list(paths)
    out = []
    for path in files:
        for n, rec in iter_records(Path(path)):
            try:
                out.append(parse_prompt(rec, f"{path}:{n}", tools))
            except RowError as e:
                raise UserError(f"{path}:{n}: {e}") from None
    if not out:
        raise UserError(f"{what + ' ' if what else ''}{', '.join(map(str, files))}: no prompts found")
    return out
