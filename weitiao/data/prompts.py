"""Prompt files: the one reader for every command that asks a model (golden eval, PPO, rule sets, curve).

A row is a prompt (the messages, ending with a user turn) and an optional reference answer:
  {"prompt": "..." | [messages], "reference"|"answer"|"chosen"|"completion"|"output"|"response": "..."}
  ("question" = "prompt"; a reference is a string or an assistant message, anything else is an error)
  a preference pair (any layout `weitiao dpo` reads): its prompt; chosen is the reference
  a chat row (alpaca or Dolly, sharegpt, openai messages): a final assistant turn (alpaca's output, Dolly's
  response) is the reference, else the whole conversation is the prompt (a reference key beside it gives one)
A row gives one reference: two keys (or a key and a final assistant turn) that differ are an error, as are keys
the layout would leave unread: a near miss of a key we read (`sytem`, `histroy`), and `history`, `input`,
`context`, `instruction` or a message list beside `prompt`/`question` (the model would be asked without them).
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
    _alpaca_field,
    _alpaca_prompt,
    _check_turns,
    _messages,
    _misspelled,
    _reply,
    _row_names,
    _text,
    _with_system,
    detect_format,
    parse_preference,
)
from weitiao.data.tools import gives_tools, is_tool_row
from weitiao.errors import UserError, near_miss

REFERENCE_KEYS = ("reference", "answer", "chosen", "completion", "output", "response")
LAST_TURN = "the final assistant turn"
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


def _reference(rec: dict, given: tuple[str, str | None] | None = None) -> str | None:
    """The row's reference: `given` (where, text) from its layout (a final assistant turn, alpaca's output), and every
    reference key that is not "" or null, each a string or an assistant message; RowError when two of them differ
    (one would be scored, the other unread), for a value of another type, and for a row with none of them but a key
    one typo away (`referance`, `answers`), which would leave it unscored."""
    found = [given] if given is not None and given[1] is not None else []
    for k in REFERENCE_KEYS:
        value = rec.get(k)
        if value in (None, "") or (given is not None and k == given[0]):
            continue
        if isinstance(value, dict) or (isinstance(value, list) and value and isinstance(value[0], dict)):
            value = _reply(value, k)  # TRL conversational: [{"role": "assistant", "content": ...}]
        elif not isinstance(value, str):
            raise RowError(k, f"expected a string (the reference answer), got {type(value).__name__} {value!r:.40}")
        if not value.strip():  # it scored an empty reply as an exact match; "" or null is "no reference"
            raise RowError(k, "blank reference answer (only white space); give it, or drop the key for no reference")
        found.append((k, value))
    for k, value in found[1:]:
        if value != found[0][1]:
            first = found[0][0] if found[0][0] == LAST_TURN else repr(found[0][0])
            raise RowError(k, f"a second reference answer, different from {first} (one would be unread); keep one")
    typos = ((k, near) for k in rec if not k.endswith("_id") and (near := near_miss(k, REFERENCE_KEYS, 0.85)))
    if not found and (typo := next(typos, None)):
        raise RowError(typo[0], f"unknown key; did you mean {typo[1]!r}? (the reference answer; rename it, or drop it)")
    return found[0][1] if found else None


# Keys that hold part of a conversation in other layouts: beside `prompt`/`question` they would go unread
UNREAD_BESIDE_PROMPT = ("history", "input", "context", "instruction", "messages", "conversations", "conversation")


def _check_keys(rec: dict, key: str | None) -> None:
    """RowError for a key this row's layout would leave unread: a near miss of one we read (`sytem`, `histroy`, Open-
    Orca's `system_prompt`), and, beside `prompt`/`question` (`key`), one of UNREAD_BESIDE_PROMPT."""
    for k in rec:
        if (want := _misspelled(k) or near_miss(k, ("question",), 0.85)) and want not in rec:
            raise RowError(k, f"unknown key; did you mean {want!r}? (rename it, or drop it)")
    for k in UNREAD_BESIDE_PROMPT if key else ():
        if rec.get(k) not in (None, "", []):
            raise RowError(k, f"not read beside {key!r} (the model would be asked without it); put it into the "
                              f"{key} (earlier turns: a {key} list of messages), or drop it")  # fmt: skip


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
    _check_keys(rec, key)
    if key is not None:
        p = rec[key]
        listed = isinstance(p, list)
        msgs = _with_system(rec, _messages(p, key, "role", "content", ROLE_MAP) if listed
                            else [{"role": "user", "content": _text(p, key)}])  # fmt: skip
        msgs = _check_turns(msgs, key, last="user", named=_row_names(rec, "openai", msgs, (key,)) if listed else None)
        return Prompt(msgs, _reference(rec), source, rec)
    if "chosen" in rec or "rejected" in rec:
        pp = parse_preference(rec, strict=False)  # a prompt file needs no usable rejected reply
        return Prompt(pp.prompt, _reference(rec, ("chosen", pp.chosen or None)), source, rec)
    fmt = detect_format(rec)
    if fmt in ("sharegpt", "openai") and is_tool_row(rec, fmt):
        raise RowError("tools", tools)
    if fmt == "alpaca":
        msgs, where, named = _with_system(rec, _alpaca_prompt(rec)), "instruction", None
        out, out_key = _alpaca_field(rec, "output")  # Dolly's response is alpaca's output
        ref = _reference(rec, (out_key, None if out in (None, "") else _text(out, out_key)))
    elif fmt in ("sharegpt", "openai", "firefly"):
        msgs, last, where = PARSERS[fmt](rec), None, MESSAGES_KEY[fmt]
        named = _row_names(rec, fmt, msgs)  # before the reference reply is taken off the end
        if any(m["role"] == "user" for m in msgs) and msgs[-1]["role"] == "assistant":
            msgs, last = msgs[:-1], msgs[-1]["content"]
        ref = _reference(rec, (LAST_TURN, last))
    else:
        raise RowError("row", f"a {fmt} row is not a prompt; give prompt, messages or instruction")
    return Prompt(_check_turns(msgs, where, last="user", named=named), ref, source, rec)


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
