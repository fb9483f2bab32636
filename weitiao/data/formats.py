"""Read Alpaca, ShareGPT and OpenAI-messages rows (JSONL, JSON, Parquet) into one conversation type.

Every row is validated; a bad row is reported as `file:line: field: problem`. With
`skip_invalid=True` bad rows go to a rejects file instead and `read == kept + rejected`.
Preference rows (prompt/chosen/rejected, or messages + chosen/rejected) load into `PreferencePair`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from weitiao.errors import UserError
from weitiao.io import iter_lines, loads, read_json, write_jsonl

Message = dict[str, str]  # {"role": "system"|"user"|"assistant", "content": str}
Format = Literal["auto", "alpaca", "sharegpt", "openai", "preference"]
FORMATS = ("alpaca", "sharegpt", "openai", "preference")
ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
SHAREGPT_ROLES |= {"system": "system"}
MAX_ROW_BYTES = 1_000_000  # a longer JSONL row is rejected unread: ~300k tokens, far over any max_len


class RowError(ValueError):
    """A problem in one row: `field` names the offending key path."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field}: {problem}")
        self.field, self.problem = field, problem


@dataclass
class Conversation:
    """A validated chat: optional system message, then user/assistant turns ending with assistant."""

    messages: list[Message]
    source: str = ""  # file:line it came from

    @property
    def prompt_messages(self) -> list[Message]:
        """Everything before the last assistant turn."""
        return self.messages[:-1]


@dataclass
class PreferencePair:
    """A prompt (message history ending with a user turn) with a chosen and a rejected reply."""

    prompt: list[Message]
    chosen: str
    rejected: str
    source: str = ""

    def conversation(self, which: Literal["chosen", "rejected"]) -> Conversation:
        """The prompt closed by the chosen or rejected reply."""
        reply = {"role": "assistant", "content": getattr(self, which)}
        return Conversation(self.prompt + [reply], self.source)


@dataclass
class LoadResult:
    """Rows kept plus the accounting the summary prints."""

    rows: list[Any]
    format: str
    read: int = 0
    rejected: int = 0
    rejects_path: Path | None = None
    per_file: dict[str, int] = field(default_factory=dict)

    @property
    def kept(self) -> int:
        return len(self.rows)


# ----------------------------------------------------------------------------- reading files


def iter_records(path: Path, max_row_bytes: int | None = MAX_ROW_BYTES) -> Iterator[tuple[int, Any]]:
    """Yield (line or row number, record) from a .jsonl/.json/.parquet file.

    JSONL is streamed line by line; a line that is not JSON, or longer than `max_row_bytes` (never read
    into memory), is yielded as a RowError so `load_rows` can reject it with its line number.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: file not found")
    if path.is_dir():
        raise UserError(f"{path}: is a folder; expected a data file (.jsonl, .json or .parquet)")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        for n, line, size in iter_lines(path, max_row_bytes):
            if line is None:
                limit = f"{max_row_bytes:,}"
                yield n, RowError("row", f"{size:,} bytes, over the {limit}-byte limit (data.max_row_bytes)")
            elif line.strip():
                try:
                    yield n, loads(line)
                except json.JSONDecodeError as e:
                    yield n, RowError("json", f"not valid JSON ({e.msg} at column {e.colno})")
                except ValueError as e:
                    yield n, RowError("json", f"not valid JSON ({e})")
    elif suffix == ".json":
        data = read_json(path)
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list):
            raise UserError(f"{path}: json: expected a list of rows (or {{'data': [...]}})")
        yield from enumerate(data, 1)
    elif suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except (pa.ArrowException, OSError) as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise UserError(f"{path}: not a readable Parquet file ({msg})") from None
        yield from enumerate(table.to_pylist(), 1)
    else:
        raise UserError(f"{path}: unsupported file type {suffix!r}; use .jsonl, .json or .parquet")


def detect_format(record: Any) -> str:
    """Guess the format of one row from its keys."""
    if not isinstance(record, dict):
        raise RowError("row", f"expected a JSON object, got {type(record).__name__}")
    keys = set(record)
    if {"chosen", "rejected"} <= keys:
        return "preference"
    if "messages" in keys:
        return "openai"
    if "conversations" in keys:
        return "sharegpt"
    if "instruction" in keys or "output" in keys:
        return "alpaca"
    raise RowError(
        "row",
        f"unknown format (keys {sorted(keys)}); expected instruction/output (alpaca), "
        "conversations (sharegpt), messages (openai) or prompt/chosen/rejected (preference)",
    )


# ----------------------------------------------------------------------------- row parsers


def _text(value: Any, field: str, allow_empty: bool = False) -> str:
    if isinstance(value, list):  # OpenAI content parts
        parts = []
        for i, p in enumerate(value):
            if not (isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)):
                raise RowError(f"{field}[{i}]", "only text content parts are supported")
            parts.append(p["text"])
        value = "".join(parts)
    if value is None:
        raise RowError(field, "missing")
    if not isinstance(value, str):
        raise RowError(field, f"expected a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise RowError(field, "is empty")
    return value


def _check_turns(messages: list[Message], field: str, last: str = "assistant") -> list[Message]:
    """Roles: optional system first, then user/assistant alternating, ending with `last`."""
    body = messages[1:] if messages and messages[0]["role"] == "system" else messages
    if not body:
        raise RowError(field, "has no user/assistant turns")
    for i, m in enumerate(body):
        want = "user" if i % 2 == 0 else "assistant"
        if m["role"] != want:
            idx = i + (len(messages) - len(body))
            raise RowError(f"{field}[{idx}].role", f"expected {want!r}, got {m['role']!r}")
    if body[-1]["role"] != last:
        raise RowError(field, f"must end with a {last} turn, ends with {body[-1]['role']!r}")
    return messages


def _messages(value: Any, field: str, role_key: str, text_key: str, roles: dict) -> list[Message]:
    if not isinstance(value, list) or not value:
        raise RowError(field, "expected a non-empty list of messages")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise RowError(f"{field}[{i}]", "expected an object")
        role = m.get(role_key)
        if role not in roles:
            raise RowError(f"{field}[{i}].{role_key}", f"unknown role {role!r}; expected {sorted(roles)}")
        out.append({"role": roles[role], "content": _text(m.get(text_key), f"{field}[{i}].{text_key}")})
    return out


def _with_system(record: dict, messages: list[Message]) -> list[Message]:
    system = record.get("system")
    if system in (None, ""):
        return messages
    if messages[0]["role"] == "system":
        raise RowError("system", "given both as a key and as the first message")
    return [{"role": "system", "content": _text(system, "system")}] + messages


def parse_alpaca(record: dict) -> list[Message]:
    instruction = _text(record.get("instruction"), "instruction")
    extra = record.get("input") or ""
    user = instruction + ("\n" + _text(extra, "input") if extra else "")
    messages: list[Message] = []
    history = record.get("history") or []
    if not isinstance(history, list):
        raise RowError("history", "expected a list of [question, answer] pairs")
    for i, pair in enumerate(history):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
            raise RowError(f"history[{i}]", "expected a [question, answer] pair")
        messages.append({"role": "user", "content": _text(pair[0], f"history[{i}][0]")})
        messages.append({"role": "assistant", "content": _text(pair[1], f"history[{i}][1]")})
    messages.append({"role": "user", "content": user})
    messages.append({"role": "assistant", "content": _text(record.get("output"), "output")})
    return _with_system(record, messages)


def parse_sharegpt(record: dict) -> list[Message]:
    msgs = _messages(record.get("conversations"), "conversations", "from", "value", SHAREGPT_ROLES)
    return _with_system(record, msgs)


def parse_openai(record: dict) -> list[Message]:
    msgs = _messages(record.get("messages"), "messages", "role", "content", {r: r for r in ROLES})
    return _with_system(record, msgs)


def _reply(value: Any, field: str) -> str:
    """A chosen/rejected reply: a string, or a message list whose last item is the assistant turn."""
    if isinstance(value, list):
        msgs = _messages(value, field, "role", "content", {r: r for r in ROLES})
        if len(msgs) != 1 or msgs[0]["role"] != "assistant":
            raise RowError(field, "expected one assistant message (the prompt goes in 'prompt')")
        return msgs[0]["content"]
    return _text(value, field)


def parse_preference(record: dict) -> PreferencePair:
    if "messages" in record:
        prompt = parse_openai({"messages": record["messages"], "system": record.get("system")})
    else:
        p = record.get("prompt")
        if isinstance(p, list):
            prompt = _messages(p, "prompt", "role", "content", {r: r for r in ROLES})
        else:
            prompt = [{"role": "user", "content": _text(p, "prompt")}]
        prompt = _with_system(record, prompt)
    field = "messages" if "messages" in record else "prompt"
    _check_turns(prompt, field, last="user")
    chosen, rejected = _reply(record.get("chosen"), "chosen"), _reply(record.get("rejected"), "rejected")
    if chosen == rejected:
        raise RowError("rejected", "is identical to chosen")
    return PreferencePair(prompt, chosen, rejected)


PARSERS = {"alpaca": parse_alpaca, "sharegpt": parse_sharegpt, "openai": parse_openai}


def parse_row(record: Any, fmt: str) -> Conversation | PreferencePair:
    """Parse one record of a known format; raises RowError."""
    if isinstance(record, RowError):
        raise record
    if not isinstance(record, dict):
        raise RowError("row", f"expected a JSON object, got {type(record).__name__}")
    if fmt == "preference":
        return parse_preference(record)
    messages = PARSERS[fmt](record)
    field = {"sharegpt": "conversations", "openai": "messages"}.get(fmt, "row")
    return Conversation(_check_turns(messages, field))


# ----------------------------------------------------------------------------- loading


def load_rows(
    paths: str | Path | list[str | Path],
    fmt: Format = "auto",
    skip_invalid: bool = False,
    rejects_path: str | Path | None = None,
    max_row_bytes: int | None = MAX_ROW_BYTES,
    sink: Any = None,
) -> LoadResult:
    """Load and validate every row of every file (into `sink`, a list stand-in with append/len, if given).

    fmt="auto" detects the format from each file's first row and holds the file to it.
    A bad row raises UserError(`file:line: field: problem`) unless skip_invalid, in which case it
    is written with its error to `rejects_path` (default: `<first file>.rejects.jsonl`).
    A JSONL row over `max_row_bytes` is such a bad row (None = no limit).
    """
    if fmt != "auto" and fmt not in FORMATS:
        raise UserError(f"format {fmt!r} unknown; use one of auto, {', '.join(FORMATS)}")
    paths = [Path(p) for p in (paths if isinstance(paths, list) else [paths])]
    result = LoadResult(rows=[] if sink is None else sink, format=fmt)
    rejects: list[dict] = []
    for path in paths:
        file_fmt = None if fmt == "auto" else fmt
        kept_before = len(result.rows)
        for n, record in iter_records(path, max_row_bytes):
            result.read += 1
            loc = f"{path}:{n}"
            try:
                if file_fmt is None:
                    if isinstance(record, RowError):
                        raise record
                    file_fmt = detect_format(record)
                row = parse_row(record, file_fmt)
            except RowError as e:
                if not skip_invalid:
                    raise UserError(f"{loc}: {e} (or pass --skip-invalid to set bad rows aside)") from None
                raw = record if not isinstance(record, RowError) else None
                rejects.append({"source": loc, "error": str(e), "row": raw})
                continue
            row.source = loc
            result.rows.append(row)
        result.per_file[str(path)] = len(result.rows) - kept_before
        if result.format == "auto" and file_fmt:
            result.format = file_fmt
        elif file_fmt and file_fmt != result.format:
            result.format = "mixed"
    result.rejected = len(rejects)
    if rejects:
        result.rejects_path = Path(rejects_path or f"{paths[0]}.rejects.jsonl")
        write_jsonl(result.rejects_path, rejects)
    assert result.read == result.kept + result.rejected
    return result


def load_conversations(paths: str | Path | list[str | Path], fmt: Format = "auto", **kw: Any) -> LoadResult:
    """Like load_rows but every row must be an SFT conversation (not a preference pair)."""
    result = load_rows(paths, fmt, **kw)
    for row in result.rows:
        if isinstance(row, PreferencePair):
            raise UserError(f"{row.source}: chosen: preference row in SFT data; use `weitiao dpo`")
    return result
