"""Prompt files: the one reader for every command that asks a model (golden eval, PPO, rule sets, curve).

A row is a prompt (the messages, ending with a user turn) and an optional reference answer:
  {"prompt": "..." | [messages], "reference"|"answer"|"chosen"|"completion": "..."}   ("question" = "prompt")
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
    PARSERS,
    ROLE_MAP,
    Message,
    _alpaca_prompt,
    _check_turns,
    _messages,
    _text,
    _with_system,
    detect_format,
    parse_preference,
)
from weitiao.data.tools import is_tool_row
from weitiao.errors import UserError

REFERENCE_KEYS = ("reference", "answer", "chosen", "completion")
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


def parse_prompt(rec: Any, source: str = "", tools: str = NO_TOOLS) -> Prompt:
    """One row → Prompt; RowError(field, problem) when it is not a prompt. `tools`: the refusal for tool rows."""
    if isinstance(rec, RowError):
        raise rec
    if not isinstance(rec, dict):
        raise RowError("row", f"expected a JSON object, got {type(rec).__name__}")
    key = next((k for k in ("prompt", "question") if k in rec), None)
    if key is not None:
        p = rec[key]
        msgs = (
            _messages(p, key, "role", "content", ROLE_MAP)
            if isinstance(p, list)
            else [{"role": "user", "content": _text(p, key)}]
        )
        msgs = _check_turns(_with_system(rec, msgs), key, last="user")
        ref = next((rec[k] for k in REFERENCE_KEYS if isinstance(rec.get(k), str) and rec[k]), None)
        return Prompt(msgs, ref, source, rec)
    if "chosen" in rec or "rejected" in rec:
        pair = parse_preference(rec)
        return Prompt(pair.prompt, pair.chosen, source, rec)
    fmt = detect_format(rec)
    if fmt in ("sharegpt", "openai") and is_tool_row(rec, fmt):
        raise RowError("tools", tools)
    if fmt == "alpaca":
        msgs, ref, where = _with_system(rec, _alpaca_prompt(rec)), rec.get("output") or None, "instruction"
        if ref is not None:
            ref = _text(ref, "output")
    elif fmt in ("sharegpt", "openai"):
        msgs, ref, where = PARSERS[fmt](rec), None, "conversations" if fmt == "sharegpt" else "messages"
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
