"""Read Alpaca, ShareGPT, OpenAI-messages, Firefly, TRL and plain-text rows into one conversation type.

Every row is validated; a bad row is reported as `file:line: field: problem`. With
`skip_invalid=True` bad rows go to a rejects file instead and `read == kept + rejected`.
Preference rows load into `PreferencePair`: an explicit prompt (prompt, messages, conversations or
instruction) or, as TRL's `extract_prompt` does, the prefix chosen and rejected share. TRL's standard
rows (prompt/chosen/rejected strings) are rendered as a one-turn chat through the template; with
format `preference_raw` they are raw text as TRL trains them (prompt + reply + EOS, no template).
Anthropic HH transcripts and BELLE multi-turn instructions are split into turns (`weitiao.data.transcripts`).
`{"text": ...}` rows load into `Document` (continued pre-training). Rows with a feedback `label` or
`kto_tag` (KTO, unpaired feedback) are refused, except by `load_rows(feedback=True)` (`weitiao kto`), which
reads each into `Feedback`: the row without its label, and whether the reply was good.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from weitiao.data import transcripts
from weitiao.data.files import (
    MAX_ROW_BYTES,
    TYPELESS,
    RowError,
    as_number,
    data_suffix,
    expand_paths,
    iter_records,
    not_a_row,
)
from weitiao.data.llamafactory import REASONING_KEYS, TURN_FLAGS
from weitiao.errors import UserError, near_miss
from weitiao.io import claim_outputs, write_jsonl

Message = dict[str, Any]  # {"role", "content"}; "weight": 0 = not trained; tool rows: weitiao.data.tools
Format = Literal[
    "auto", "alpaca", "sharegpt", "openai", "firefly", "prompt_completion", "text", "preference", "preference_raw"
]
FORMATS = ("alpaca", "sharegpt", "openai", "firefly", "prompt_completion", "text", "preference", "preference_raw")
ROLES = ("system", "user", "assistant")
# OpenAI's newer name for the system role, read as system (as `weitiao serve` reads it: weitiao.infer.tools.plan_chat)
ROLE_MAP = {r: r for r in ROLES} | {"developer": "system"}
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
SHAREGPT_ROLES |= {"system": "system"}
# Other speaker names in published chat sets, and the name we read for each, said in the unknown-role error
_RESULT = "'observation' (a tool result, as LLaMA-Factory writes ShareGPT; a call is 'function_call')"
ROLE_RENAMES = {
    "from": {"tool": _RESULT, "function": _RESULT, "chatgpt": "'gpt'", "bing": "'gpt'", "bard": "'gpt'",
             "model": "'gpt'", "bot": "'gpt'"},
    "role": {"human": "'user'", "gpt": "'assistant'", "model": "'assistant'", "bot": "'assistant'"},
}  # fmt: skip


def unknown_role(role: Any, role_key: str, expected: str) -> str:
    """The unknown-role problem, with the rename for a speaker name other data sets use."""
    rename = ROLE_RENAMES[role_key].get(role) if isinstance(role, str) else None
    return f"unknown role {role!r}; expected {expected}" + (f"; rename it {rename}" if rename else "")


@dataclass
class Conversation:
    """A validated chat: optional system message, then user/assistant turns ending with assistant."""

    messages: list[Message]
    source: str = ""  # file:line it came from
    tools: list[dict] | None = None  # function specs (OpenAI shape) the assistant may call

    @property
    def prompt_messages(self) -> list[Message]:
        """Everything before the last assistant turn."""
        return self.messages[:-1]


@dataclass
class Document:
    """Raw text, no chat template: a pre-training document (loss on every token) or, with `prompt`, a TRL
    standard prompt/completion row (loss on the completion only)."""

    text: str
    source: str = ""
    prompt: str | None = None


@dataclass
class PreferencePair:
    """A prompt (message history ending with a user turn) with a chosen and a rejected reply."""

    prompt: list[Message]
    chosen: str
    rejected: str
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # the row's other fields (confidence, weight...)
    # "chat": messages given; "string": TRL standard strings, rendered as a one-user-turn chat through the
    # template; "raw": those strings trained as raw text, no template (format preference_raw, as TRL does);
    # "hh": Anthropic HH transcripts read as chats (weitiao.data.transcripts)
    form: Literal["chat", "string", "raw", "hh"] = "chat"

    def conversation(self, which: Literal["chosen", "rejected"]) -> Conversation:
        """The prompt closed by the chosen or rejected reply."""
        reply = {"role": "assistant", "content": getattr(self, which)}
        return Conversation(self.prompt + [reply], self.source)


@dataclass
class Feedback:
    """One reply judged on its own (KTO): a chat whose last assistant turn is the reply, or a raw-text
    prompt/completion `Document` (TRL's standard unpaired row); `desirable` is its label."""

    row: Conversation | Document
    desirable: bool
    source: str = ""


@dataclass
class LoadResult:
    """Rows kept plus the accounting the summary prints."""

    rows: list[Any]
    format: str
    read: int = 0
    rejected: int = 0
    rejects_path: Path | None = None  # the first rejects file written (the only one unless `rejects_files` says more)
    per_file: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # columns read but not used (e.g. images)
    rejects_files: dict[str, Path] = field(default_factory=dict)  # data file → the rejects file its bad rows went to
    rejected_per_file: dict[str, int] = field(default_factory=dict)

    def rejects_line(self) -> str:
        """Where the bad rows went: the rejects file, or each one with its rows (one per data file beside it)."""
        if len(set(self.rejects_files.values())) < 2:
            return str(self.rejects_path)
        return ", ".join(f"{out} ({self.rejected_per_file[f]})" for f, out in self.rejects_files.items())

    @property
    def kept(self) -> int:
        return len(self.rows)


FIREFLY_TURN = ("human", "assistant")
# A question and its answer under other names (firefly-train-1.1M's input/target, question/answer, prompt/response):
# an Alpaca row spelt otherwise. Named in the unknown-format error, not guessed (`prompt` + `response` could as well
# be a pair's prompt and one side).
QUESTION_KEYS, ANSWER_KEYS = ("input", "question", "query", "prompt"), ("target", "answer", "response", "reply")


# A read key in one language of a bilingual set (silk-road/alpaca-data-gpt4-chinese: instruction_zh beside instruction)
LANGUAGE_VARIANT = re.compile(r"(?P<key>[a-z]+)[_-](?:zh|cn|en|chinese|english)")


def language_variants(keys: Any) -> dict[str, str]:
    """{column: the read key it is a language's copy of} for columns such as instruction_zh, output_en."""
    found = {k: m["key"] for k in sorted(map(str, keys)) if (m := LANGUAGE_VARIANT.fullmatch(k))}
    return {k: base for k, base in found.items() if base in READ_KEYS}


def _rename_hint(keys: set[str]) -> str:
    if variants := language_variants(keys):
        cols, bases = "/".join(variants), "/".join(dict.fromkeys(variants.values()))
        return f"; {cols} are one language's {bases}: rename the ones to train {bases}"
    q = next((k for k in QUESTION_KEYS if k in keys), None)
    a = next((k for k in ANSWER_KEYS if k in keys), None)
    if q is None or a is None:
        return ""
    seen = " (firefly-train-1.1M)" if (q, a) == ("input", "target") else ""
    system = next((f", and {k} system" for k in ("system_prompt", "system_message") if k in keys), "")
    return f"; {q}/{a}{seen} is a question and its answer: rename them instruction/output (Alpaca){system}"


def detect_format(record: Any) -> str:
    """Guess the format of one row from its keys ("kto" for unpaired feedback, which is refused)."""
    if not isinstance(record, dict):
        raise not_a_row(record)
    keys = set(record)
    if isinstance(record.get("label"), bool):
        return "kto"
    if {"chosen", "rejected"} <= keys:
        return "preference"
    if "messages" in keys:
        return "openai"
    if "conversations" in keys:
        return "sharegpt"
    if "conversation" in keys:
        return "firefly"
    if "instruction" in keys or "output" in keys:
        return "alpaca"
    if {"prompt", "completion"} <= keys:
        return "prompt_completion"
    if "text" in keys:
        return "text"
    raise RowError(
        "row",
        f"unknown format (keys {sorted(keys)}); expected instruction/output (alpaca), conversations (sharegpt), "
        "messages (openai), conversation (firefly), prompt/completion (TRL), text (pre-training) or chosen/rejected "
        "(preference)" + (_rename_hint(keys) or _typo_hint(keys)),
    )


def _typo_hint(keys: set[str]) -> str:
    """`; did you mean ...` for the keys that are near misses of keys a format reads (`Instruction`, ` output`)."""
    typos = {k: want for k in sorted(keys) if (want := _misspelled(k)) and want not in keys}
    if not typos:
        return ""
    return "; did you mean " + ", ".join(f"{w!r} for {k!r}" for k, w in typos.items()) + "? (rename them)"


# ----------------------------------------------------------------------------- row parsers


def join_text_parts(texts: Iterable[str]) -> str:
    """OpenAI text content parts as the one string a chat template reads: joined by a newline, as vLLM joins them
    (training rows and `weitiao serve` requests alike, so a model is served the prompts it was trained on)."""
    return "\n".join(texts)


def _text(value: Any, field: str, allow_empty: bool = False) -> str:
    if isinstance(value, list):  # OpenAI content parts
        parts = []
        for i, p in enumerate(value):
            if not (isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)):
                raise RowError(f"{field}[{i}]", "only text content parts are supported")
            parts.append(p["text"])
        value = join_text_parts(parts)
    if value is None:
        raise RowError(field, "missing")
    if not isinstance(value, str):
        raise RowError(field, f"expected a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise RowError(field, "is empty")
    return value


def _check_turns(
    messages: list[Message], field: str, last: str = "assistant", named: Callable[[int], tuple[str, Any]] | None = None
) -> list[Message]:
    """Roles: optional system first, then user/assistant alternating, ending with `last`. `named(i)`: message i's
    field and role as the row writes them (default `field[i].role`, the role read)."""
    body = messages[1:] if messages and messages[0]["role"] == "system" else messages
    if not body:
        raise RowError(field, "has no user/assistant turns")
    for i, m in enumerate(body):
        want = "user" if i % 2 == 0 else "assistant"
        if m["role"] != want:
            idx = i + (len(messages) - len(body))
            at, got = named(idx) if named else (f"{field}[{idx}].role", m["role"])
            if named and at.endswith(".from"):  # ShareGPT's names for the roles
                want = {"user": "human", "assistant": "gpt"}[want]
            where = " (a system or developer turn may only come first)" if m["role"] == "system" else ""
            raise RowError(at, f"expected {want!r}, got {got!r}{where}")
    if body[-1]["role"] != last:
        raise RowError(field, f"must end with {'an' if last[0] in 'aeiou' else 'a'} {last} turn, ends with "
                              f"{body[-1]['role']!r}")  # fmt: skip
    return messages


def _weight(m: dict, field: str, role: str) -> bool:
    """OpenAI fine-tuning's per-message `weight`: 1 (default) trains the turn, 0 masks it."""
    w = m["weight"]
    if role != "assistant":
        raise RowError(f"{field}.weight", "only assistant messages take a weight")
    if isinstance(w, bool) or w not in (0, 1):
        raise RowError(f"{field}.weight", f"expected 0 or 1, got {w!r}")
    return w == 1


def refuse_name(m: dict, field: str) -> None:
    """OpenAI's speaker `name` on a user/assistant/system message: messages reach the chat template as role and
    content, so training would drop it unsaid; refused (a tool message's `name`, the function's, is not passed here)."""
    if m.get("name") not in (None, ""):
        raise RowError(f"{field}.name", "a speaker name is not passed to the chat template (training would drop it); "
                                        "put it into the content (e.g. '小王: ...'), or drop the key")  # fmt: skip


def _messages(
    value: Any, field: str, role_key: str, text_key: str, roles: dict, allow_empty: bool = False
) -> list[Message]:
    if not isinstance(value, list) or not value:
        raise RowError(field, "expected a non-empty list of messages")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise RowError(f"{field}[{i}]", "expected an object")
        role = m.get(role_key)
        if reasoning := next((k for k in REASONING_KEYS if m.get(k) not in (None, "")), None):
            raise RowError(f"{field}[{i}].{reasoning}", "reasoning traces are not trained separately (the key would "
                                                       "be dropped); put them in content, or drop the key")  # fmt: skip
        other = {"from": ("role", "content", "'messages'"), "role": ("from", "value", "'conversations'")}.get(role_key)
        if role is None and other and other[0] in m:  # the other layout's keys (ShareGPT rows with role/content)
            raise RowError(f"{field}[{i}].{role_key}", f"missing; the message has {other[0]!r}/{other[1]!r} keys, the "
                           f"other chat layout: put the list under {other[2]}, or rename the keys")  # fmt: skip
        if role not in roles:
            raise RowError(f"{field}[{i}].{role_key}", unknown_role(role, role_key, str(sorted(roles))))
        refuse_name(m, f"{field}[{i}]")
        at = f"{field}[{i}].{text_key}"
        if roles[role] == "system" and isinstance(m.get(text_key), str) and not m[text_key].strip():
            raise RowError(at, "an empty system message; drop it (no system prompt: the chat template's default, if "
                               "it has one) or give it text")  # fmt: skip
        msg = {"role": roles[role], "content": _text(m.get(text_key), at, allow_empty)}
        if m.get("weight") is not None and not _weight(m, f"{field}[{i}]", roles[role]):
            msg["weight"] = 0
        out.append(msg)
    return out


def _with_system(record: dict, messages: list[Message]) -> list[Message]:
    system = record.get("system")
    if system in (None, ""):
        return messages
    if messages and messages[0]["role"] == "system":
        raise RowError("system", "given both as a key and as the first message")
    return [{"role": "system", "content": _text(system, "system")}] + messages


# Dolly's keys (databricks-dolly-15k and its translations) for Alpaca's, as LLaMA-Factory's column mapping reads them:
# context is the input, response the output (`category` stays an unread column).
DOLLY_KEYS = {"input": "context", "output": "response"}


def _alpaca_field(record: dict, key: str) -> tuple[Any, str]:
    """Alpaca's `input`/`output`, or Dolly's `context`/`response` for it, and the key it came from; a row giving
    both non-empty is refused (one would be dropped)."""
    alias = DOLLY_KEYS[key]
    if record.get(alias) in (None, ""):
        return record.get(key), key
    if record.get(key) not in (None, ""):
        raise RowError(alias, f"the row also has {key!r}: Dolly's {alias!r} is read as Alpaca's {key!r}, and one of "
                              "the two would be dropped; keep one (or join them)")  # fmt: skip
    return record[alias], alias


def _alpaca_prompt(record: dict) -> list[Message]:
    """History pairs, then instruction + "\n" + input (or Dolly's context) as the last user turn (an empty instruction
    beside an input: the input alone, as LLaMA-Factory joins them); a BELLE multi-turn instruction (Human:/Assistant:
    turns) as its turns."""
    extra, key = _alpaca_field(record, "input")  # null or "" is no input; 0 or false is no text either: refused
    if record.get("instruction") == "" and extra not in (None, ""):
        instruction = ""
    else:
        instruction = _text(record.get("instruction"), "instruction")
    history = record.get("history")
    history = [] if history in (None, "") else history  # "": a CSV's empty cell
    if transcripts.is_belle(instruction):  # BELLE multiturn_chat_0.8M: the earlier turns inside the instruction
        if at := next((k for k, v in ((key, extra), ("history", history)) if v not in (None, "", [])), None):
            raise RowError(at, "beside a BELLE multi-turn instruction (Human:/Assistant: turns), which holds the whole "
                               "conversation; put it into the transcript, or drop it")  # fmt: skip
        return transcripts.belle_messages(instruction)
    user = "\n".join(t for t in (instruction, _text(extra, key) if extra not in (None, "") else "") if t)
    messages: list[Message] = []
    if not isinstance(history, list):
        raise RowError("history", "expected a list of [question, answer] pairs")
    for i, pair in enumerate(history):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
            raise RowError(f"history[{i}]", "expected a [question, answer] pair")
        messages.append({"role": "user", "content": _text(pair[0], f"history[{i}][0]")})
        messages.append({"role": "assistant", "content": _text(pair[1], f"history[{i}][1]")})
    return messages + [{"role": "user", "content": user}]


def parse_alpaca(record: dict) -> list[Message]:
    messages = _alpaca_prompt(record)
    output, key = _alpaca_field(record, "output")
    messages.append({"role": "assistant", "content": _text(output, key)})
    return _with_system(record, messages)


def parse_sharegpt(record: dict) -> list[Message]:
    msgs = _messages(record.get("conversations"), "conversations", "from", "value", SHAREGPT_ROLES)
    return _with_system(record, msgs)


def parse_firefly(record: dict) -> list[Message]:
    """Firefly (YeungNLP) multi-turn rows: `conversation` is a list of {"human", "assistant"} turns, each reply
    trained; `system`, as in the other formats, comes first. Other keys of a row (conversation_id, category) stay
    unread; a turn's other keys are refused."""
    if tools := next((k for k in ("tools", "functions") if record.get(k) not in (None, "", [])), None):
        raise RowError(tools, "a Firefly row has no place for tool calls; write the row as OpenAI messages with tools")
    conv = record.get("conversation")
    if not isinstance(conv, list) or not conv:
        raise RowError("conversation", "expected a non-empty list of {human, assistant} turns")
    out: list[Message] = []
    for i, turn in enumerate(conv):
        at = f"conversation[{i}]"
        if not isinstance(turn, dict):
            raise RowError(at, "expected an object with human and assistant")
        if other := next((k for k in ("from", "role") if k in turn), None):
            key = "conversations" if other == "from" else "messages"
            kind = "a ShareGPT" if other == "from" else "an OpenAI"
            raise RowError(at, f"{kind} message ({other!r}) under 'conversation', Firefly's key, whose turns are "
                               f"{{human, assistant}}: rename the list {key!r}")  # fmt: skip
        for key in turn:
            if key not in FIREFLY_TURN:
                want = near_miss(key, FIREFLY_TURN, 0.7)
                hint = f"did you mean {want!r}? " if want and want not in turn else ""
                raise RowError(f"{at}.{key}", f"unknown key; {hint}a Firefly turn has human and assistant")
        out.append({"role": "user", "content": _text(turn.get("human"), f"{at}.human")})
        out.append({"role": "assistant", "content": _text(turn.get("assistant"), f"{at}.assistant")})
    return _with_system(record, out)


def parse_openai(record: dict) -> list[Message]:
    msgs = _messages(record.get("messages"), "messages", "role", "content", ROLE_MAP)
    weights = [m.get("weight", 1) for m in msgs if m["role"] == "assistant"]
    if weights and not any(weights):
        raise RowError("messages", "every assistant message has weight 0; nothing to train")
    return _with_system(record, msgs)


def parse_prompt_completion(record: dict) -> list[Message] | Document:
    """TRL prompt/completion: the completion is trained, the prompt (and any reply inside it) is not.

    Conversational rows (message lists) go through the chat template; standard rows (strings) are raw
    text, as TRL trains them: prompt + completion + EOS, no template.
    """
    prompt, completion = record.get("prompt"), record.get("completion")
    if record.get("history") not in (None, "", []):  # alpaca's key: this row has no place for it
        raise RowError("history", "not read in prompt/completion rows; put earlier turns in a prompt list of messages")
    if not isinstance(prompt, list):
        if isinstance(completion, list):
            raise RowError("completion", "a list of messages while the prompt is a string; give both as messages "
                                         "(chat template) or both as strings (raw text)")  # fmt: skip
        if record.get("system") not in (None, ""):
            raise RowError("system", "string prompt/completion rows are raw text (no template), with no place for "
                                     "a system prompt; give prompt as a list of messages, or drop the key")  # fmt: skip
        for key in ("tools", "functions"):
            if record.get(key) not in (None, "", [], "[]"):
                raise RowError(key, "string prompt/completion rows are raw text (no template), with no place for "
                                    "tools; give prompt and completion as lists of messages")  # fmt: skip
        return Document(_text(completion, "completion"), prompt=_text(prompt, "prompt"))
    msgs = _messages(prompt, "prompt", "role", "content", ROLE_MAP)
    msgs = [{**m, "weight": 0} if m["role"] == "assistant" else m for m in msgs]
    if not isinstance(completion, list):
        raise RowError("completion", "expected a list of messages, as the prompt is one")
    reply = _messages(completion, "completion", "role", "content", ROLE_MAP)
    if (weights := [m.get("weight", 1) for m in reply if m["role"] == "assistant"]) and not any(weights):
        raise RowError("completion", "every assistant message has weight 0; nothing to train")
    return _with_system(record, msgs + reply)


def parse_text(record: dict) -> Document:
    return Document(_text(record.get("text"), "text"))


def _reply(value: Any, field: str, allow_empty: bool = False) -> str:
    """A chosen/rejected reply: a string, a ShareGPT/OpenAI message, or a one-assistant-message list."""
    if isinstance(value, dict):
        value = [value]
    if isinstance(value, list):
        sharegpt = bool(value) and isinstance(value[0], dict) and "from" in value[0]
        keys = ("from", "value", SHAREGPT_ROLES) if sharegpt else ("role", "content", ROLE_MAP)
        msgs = _messages(value, field, *keys, allow_empty=allow_empty)
        if len(msgs) != 1 or msgs[0]["role"] != "assistant":
            raise RowError(field, "expected one assistant message (the prompt goes in 'prompt')")
        if "weight" in msgs[0]:
            raise RowError(f"{field}.weight", "a reply's weight is not read (a pair trains on both replies); a pair's "
                                              "own weight is the row's weight with data.weight_field")  # fmt: skip
        return msgs[0]["content"]
    return _text(value, field, allow_empty)


def _is_conversation(value: Any) -> bool:
    """A chosen/rejected list holding more than the reply (TRL implicit prompt, ultrafeedback_binarized)."""
    if not (isinstance(value, list) and value):
        return False
    return len(value) > 1 or (isinstance(value[0], dict) and value[0].get("role") != "assistant")


def split_shared_prefix(chosen: Any, rejected: Any) -> tuple[Any, Any, Any]:
    """(prompt, chosen, rejected) split at the longest shared prefix, as trl.data_utils.extract_prompt.

    Strings split by character (a space before the split stays with the replies); message lists by
    whole messages. Identical sides split before their last message, so the pair reads as identical.
    """
    if isinstance(chosen, str) and isinstance(rejected, str):
        n = min(len(chosen), len(rejected))
        idx = next((i for i in range(n) if chosen[i] != rejected[i]), n)
        if idx and chosen[idx - 1] == " ":
            idx -= 1
        return chosen[:idx], chosen[idx:], rejected[idx:]
    if chosen == rejected:
        return chosen[:-1], chosen[-1:], rejected[-1:]
    n = min(len(chosen), len(rejected))
    idx = next((i for i in range(n) if chosen[i] != rejected[i]), n)
    return chosen[:idx], chosen[idx:], rejected[idx:]


# Each side's score in published pair sets (ultrafeedback_binarized; argilla's dpo-mix and cleaned UltraFeedback):
# not trained on (DPO and RM learn chosen over rejected), but a row whose own scores prefer rejected is refused.
SCORE_COLUMNS = (("score_chosen", "score_rejected"), ("chosen_rating", "rejected_rating"),
                 ("chosen-rating", "rejected-rating"), ("chosen_score", "rejected_score"))  # fmt: skip


def _score(record: dict, key: str) -> float | None:
    v = record.get(key)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def prefers_rejected(record: dict) -> tuple[str, str] | None:
    """The (chosen, rejected) score columns of a row that rate rejected above chosen, if any."""
    for c, r in SCORE_COLUMNS:
        sc, sr = _score(record, c), _score(record, r)
        if sc is not None and sr is not None and sr > sc:
            return c, r
    return None


def check_scores(record: dict) -> None:
    """Refuse a pair whose score columns rate rejected above chosen (the sides would be trained the wrong way)."""
    if cr := prefers_rejected(record):
        c, r = cr
        raise RowError(r, f"{record[r]!r} is above {c} {record[c]!r}: the row's own scores prefer rejected; swap "
                          "chosen and rejected, or drop the row")  # fmt: skip


def score_columns(pair: PreferencePair) -> list[str]:
    """The score columns (SCORE_COLUMNS) a pair carries, unread by training."""
    return [k for cr in SCORE_COLUMNS if all(k in pair.extra for k in cr) for k in cr]


PROMPT_LIKE = ("question", "query", "input")  # prompt columns of other tools, unread by a pair without instruction


def parse_preference(record: dict, strict: bool = True, raw: bool = False) -> PreferencePair:
    """A pair from any supported layout; strict=False lets `data check` count empty or identical sides. An Anthropic
    HH transcript is read as a chat, or with `raw` (format preference_raw) split as text at its last Assistant turn."""
    if record.get("tools") not in (None, "", [], "[]"):  # "[]": LLaMA-Factory's tools column on a row without tools
        raise RowError("tools", "a pair is rendered without tools (the prompt would lose them); drop the column, or "
                                "train tool calls with SFT")  # fmt: skip
    chosen, rejected = record.get("chosen"), record.get("rejected")
    implicit = _is_conversation(chosen) and _is_conversation(rejected)
    hh = False
    if implicit:  # TRL implicit prompt and ultrafeedback_binarized: whole conversations
        for k in ("chosen", "rejected"):
            _messages(record[k], k, "role", "content", ROLE_MAP, allow_empty=not strict)
        prompt, chosen, rejected = split_shared_prefix(chosen, rejected)
        if not prompt:
            raise RowError("rejected", "shares no prompt with chosen (its first message differs)")
        if len(chosen) > 1 or len(rejected) > 1:
            raise RowError(f"rejected[{len(prompt)}]", "differs from chosen before the last reply; a pair is two last "
                                                       "replies to one shared conversation")  # fmt: skip
        field = "chosen"
        prompt = _messages(prompt, field, "role", "content", ROLE_MAP)
        p = record.get("prompt")
        if isinstance(p, str) and p.strip() != prompt[-1]["content"].strip():
            raise RowError("prompt", "differs from the last user turn that chosen and rejected share")
        whole = _messages(record["chosen"], "chosen", "role", "content", ROLE_MAP, allow_empty=not strict)
        for k in ("prompt", "messages"):  # ultrafeedback_binarized's messages: the chosen conversation
            if isinstance(record.get(k), list) and _messages(record[k], k, "role", "content", ROLE_MAP) not in (
                prompt,
                whole,
            ):
                raise RowError(k, "is neither the conversation chosen and rejected share nor the chosen one (it would "
                                  "be unread); drop it, or fix it")  # fmt: skip
    elif "instruction" in record:  # LLaMA-Factory alpaca ranking
        prompt, field = _alpaca_prompt(record), "instruction"
    elif "conversations" in record:  # LLaMA-Factory sharegpt ranking
        prompt, field = (
            _messages(record["conversations"], "conversations", "from", "value", SHAREGPT_ROLES),
            "conversations",
        )
    elif "messages" in record:
        prompt, field = _messages(record["messages"], "messages", "role", "content", ROLE_MAP), "messages"
    elif "prompt" in record:
        p, field = record["prompt"], "prompt"
        if isinstance(p, list):
            prompt = _messages(p, "prompt", "role", "content", ROLE_MAP)
        elif hh := transcripts.is_prompt(p) and not raw:  # Dahoas/rm-static, and its Chinese translations
            prompt = transcripts.messages(p, "prompt")
            chosen, rejected = (transcripts.reply(v) if isinstance(v, str) else v for v in (chosen, rejected))
        else:
            prompt = [{"role": "user", "content": _text(p, "prompt")}]
        if side := next((k for k in ("chosen", "rejected") if transcripts.is_transcript(record.get(k))), None):
            raise RowError(side, "a whole HH transcript ('\\n\\nHuman: …') beside a prompt; drop the prompt "
                                 "(transcripts split at their last Assistant turn) or keep only the reply")  # fmt: skip
    elif transcripts.is_transcript(chosen) and transcripts.is_transcript(rejected):  # Anthropic HH-RLHF
        p, chosen, rejected = transcripts.split_pair(chosen, rejected)
        field, hh = "chosen", not raw
        if hh:
            prompt, chosen, rejected = transcripts.messages(p, "chosen"), *map(transcripts.reply, (chosen, rejected))
        else:  # raw text, as TRL trains it, split where the transcript says rather than at the shared characters
            prompt = [{"role": "user", "content": p}]
    elif isinstance(chosen, str) and isinstance(rejected, str):  # TRL standard implicit prompt
        if unread := next((k for k in PROMPT_LIKE if record.get(k) not in (None, "")), None):
            # Intel/orca_dpo_pairs (question), ... : the shared prefix of the replies is no prompt
            raise RowError(unread, "not read as the prompt (a pair's prompt is 'prompt', 'messages', 'conversations' "
                                   "or 'instruction'); rename it to 'prompt'. Without one, chosen and rejected are "
                                   "split at the text they share (TRL's implicit prompt)")  # fmt: skip
        p, chosen, rejected = split_shared_prefix(chosen, rejected)
        if not p:
            raise RowError("rejected", "shares no prompt with chosen (they differ from the first character)")
        prompt, field = [{"role": "user", "content": _text(p, "chosen", allow_empty=not strict)}], "chosen"
    else:
        raise RowError("prompt", "missing (and chosen/rejected are not whole conversations sharing one)")
    if not implicit and field != "chosen":  # one prompt source: another that says something else would be dropped
        for other in ("instruction", "conversations", "messages", "prompt"):
            said = record.get(other)
            if (
                other == field
                or other not in record
                or (isinstance(said, str) and said.strip() == prompt[-1]["content"].strip())
            ):
                continue
            raise RowError(other, f"a second prompt beside {field!r}; keep one (the pair is read with {field!r})")
    prompt = _with_system(record, prompt)
    _check_turns(prompt, field, last="user")
    chosen, rejected = _reply(chosen, "chosen", not strict), _reply(rejected, "rejected", not strict)
    if strict and chosen == rejected:
        raise RowError("rejected", "is identical to chosen")
    if strict:
        check_scores(record)
    _refuse_sft_keys(record, field, chosen)
    known = ("prompt", "messages", "system", "chosen", "rejected")
    given = record.get("prompt") if field == "prompt" else ""  # field "chosen": implicit, from the strings
    strings = len(prompt) == 1 and all(isinstance(record.get(k), str) for k in ("chosen", "rejected"))
    strings = strings and field in ("prompt", "chosen") and isinstance(given, str)
    form = "hh" if hh else "string" if strings else "chat"
    return PreferencePair(
        prompt, chosen, rejected, extra={k: v for k, v in record.items() if k not in known}, form=form
    )


def _refuse_sft_keys(record: dict, field: str, chosen: str) -> None:
    """Keys the SFT formats read that a pair read through `field` would drop: `input`/`history` beside a prompt other
    than `instruction` (LLaMA-Factory's alpaca ranking rows read them), an `output`/`completion` other than chosen."""
    for k in ("input", "history") if field != "instruction" else ():
        if record.get(k) not in (None, "", []):
            raise RowError(k, f"not read beside {field!r} (a pair reads input and history with 'instruction' only, as "
                              "LLaMA-Factory's alpaca ranking rows); put it into the prompt, or drop it")  # fmt: skip
    for k in ("output", "completion"):
        if record.get(k) in (None, "", []):
            continue
        try:
            same = _reply(record[k], k) == chosen
        except RowError:
            same = False
        if not same:
            raise RowError(k, "a reply beside chosen/rejected that is not chosen (a pair trains chosen over rejected; "
                              "it would be unread); drop it, or make the row an SFT row")  # fmt: skip


def parse_raw_preference(record: dict, strict: bool = True) -> PreferencePair:
    """TRL's standard preference row (prompt, chosen, rejected strings, or chosen/rejected sharing a prefix),
    to be trained as raw text."""
    pair = parse_preference(record, strict, raw=True)
    if pair.form != "string":
        raise RowError(
            "chosen",
            "format preference_raw takes prompt/chosen/rejected strings (TRL's standard form); this row is a "
            "chat (messages or a system prompt): use format preference",
        )
    pair.form = "raw"
    return pair


KTO_REFUSED = (
    "label: unpaired feedback (KTO: a reply labelled true/false, desirable/undesirable, 👍/👎); training these rows "
    "as SFT would learn the bad replies too: train them with `weitiao kto`, or keep only the good replies without "
    "`label` for SFT"
)

PARSERS = {
    "alpaca": parse_alpaca,
    "sharegpt": parse_sharegpt,
    "openai": parse_openai,
    "firefly": parse_firefly,
    "prompt_completion": parse_prompt_completion,
}


# Keys some format reads. A row key one or two typos away from one of these that the row lacks (histroy, sytem,
# ouput) is refused, not ignored; other extra keys (id, source, meta, ...) are the user's and stay unread.
READ_KEYS = ("instruction", "input", "output", "history", "system", "messages", "conversations", "conversation",
             "prompt", "completion", "text", "chosen", "rejected", "tools", "functions")  # fmt: skip
CHAT_KEYS = {"messages": "openai", "conversations": "sharegpt", "conversation": "firefly", "instruction": "alpaca",
             "output": "alpaca"}  # fmt: skip


# Other sets' names for the system prompt (Open-Orca's system_prompt): refused as typos are, not left unread
SYSTEM_ALIASES = ("system_prompt", "system_message")


def _misspelled(key: str) -> str | None:
    return near_miss(key, READ_KEYS, 0.85) or ("system" if key in SYSTEM_ALIASES else None)


# Keys a message may carry that some format reads; a near miss (weigth, tool_call) of one the message lacks is refused,
# and so are other tools' per-turn training flags (axolotl `training`, ms-swift `loss`): the turn would be trained.
MESSAGE_KEYS = ("role", "content", "from", "value", "weight", "name", "tool_calls", "tool_call_id")
MESSAGE_LISTS = ("messages", "conversations", "prompt", "completion", "chosen", "rejected")


def _misspelled_in_message(key: str) -> str | None:
    return near_miss(key, MESSAGE_KEYS, 0.8)


_PLAIN_MESSAGE = frozenset(MESSAGE_KEYS)


def _check_message_keys(record: dict) -> None:
    if record.keys().isdisjoint(MESSAGE_LISTS):  # an Alpaca row: no message list
        return
    for name in MESSAGE_LISTS:
        msgs = record.get(name)
        for i, m in enumerate(msgs if isinstance(msgs, list) else [msgs] if isinstance(msgs, dict) else []):
            if not isinstance(m, dict) or m.keys() <= _PLAIN_MESSAGE:  # the common case, checked at C speed
                continue
            at = f"{name}[{i}]" if isinstance(msgs, list) else name
            for key in m:
                if key == "function_call":  # OpenAI's legacy call: dropped, the words around it would train alone
                    raise RowError(f"{at}.{key}", "the legacy functions/function_call layout is not supported; give "
                                                  "the call as tool_calls (the specs as tools)")  # fmt: skip
                if key in TURN_FLAGS and isinstance(m[key], bool):
                    raise RowError(f"{at}.{key}", "a per-turn training flag is not read (the turn would be trained "
                                                  "anyway); use weight: 0 on an assistant message to keep it as "
                                                  "context")  # fmt: skip
                if (want := _misspelled_in_message(key)) and want not in m:
                    raise RowError(f"{at}.{key}", f"unknown key; did you mean {want!r}? (rename it, or drop it)")


SFT_FORMATS = ("alpaca", "openai", "sharegpt", "firefly", "prompt_completion", "text")
# The key holding a chat format's list of messages (turns), which errors name
MESSAGES_KEY = {"sharegpt": "conversations", "openai": "messages", "firefly": "conversation"}
# A row's `label` that marks its reply good or bad (TRL's KTO bools, KTO's desirable/undesirable, thumbs): never trained
# as SFT. Strings compare case-folded. A float (a score) and other words are left alone: "positive", "good", "差评" are
# as often a classification dataset's class of the text as feedback on the reply, and such columns stay unread.
KTO_LABELS = (0, 1, -1)
FEEDBACK_WORDS = {"true", "false", "desirable", "undesirable", "thumbs_up", "thumbs_down", "thumbsup", "thumbsdown",
                  "👍", "👎"}  # fmt: skip


# On an unpaired prompt/completion row (TRL's KTO shape) a label can only judge the completion: there a float 0.0/1.0
# (what pandas makes of a bool column with gaps) and good/bad are feedback too.
UNPAIRED_WORDS = {"good", "bad"}


def is_feedback_label(record: dict) -> bool:
    """Whether a row's `label` says its reply is good or bad (true/false, 0/1/-1, "undesirable", "thumbs_down", 👎);
    the text "1", "0", "-1" too: a CSV or xlsx cell holds numbers as text; on a prompt/completion row also
    0.0/1.0/-1.0 and good/bad."""
    value = record.get("label")
    if isinstance(value, bool):
        return True
    if isinstance(value, int):
        return value in KTO_LABELS
    unpaired = "prompt" in record and "completion" in record
    if isinstance(value, float):
        return unpaired and value in KTO_LABELS
    if not isinstance(value, str):
        return False
    text = value.strip().casefold()
    if unpaired and text in UNPAIRED_WORDS or text in FEEDBACK_WORDS or text in map(str, KTO_LABELS):
        return True
    return unpaired and as_number(text) in KTO_LABELS  # "1.0" in a CSV cell


GOOD_LABELS = {"true", "1", "1.0", "desirable", "thumbs_up", "thumbsup", "👍", "good"}
BAD_LABELS = {"false", "0", "0.0", "-1", "-1.0", "undesirable", "thumbs_down", "thumbsdown", "👎", "bad"}
LABEL_SPELLINGS = (
    "true/false (also 1/0/-1, desirable/undesirable, thumbs_up/thumbs_down, thumbsup/thumbsdown, 👍/👎, good/bad)"
)


def split_feedback(record: dict) -> tuple[dict, bool]:
    """(the row without its label, whether the reply is good) for a KTO row: `label` (TRL) or `kto_tag`
    (LLaMA-Factory) in any spelling `is_feedback_label` knows, and good/bad; raises RowError naming the field."""
    if "chosen" in record and "rejected" in record:
        raise RowError("chosen", "a preference pair: KTO trains replies judged one at a time (prompt/completion/"
                                 "label); train pairs with `weitiao dpo`, or write each pair as two rows, chosen "
                                 "with label true and rejected with label false")  # fmt: skip
    keys = [k for k in ("label", "kto_tag") if k in record]
    if len(keys) > 1:
        raise RowError("kto_tag", "the row also has `label`: keep one of them")
    key = keys[0] if keys else "label"
    value = record.get(key)
    if value is None:
        raise RowError(key, f"missing: each KTO row needs a label, {LABEL_SPELLINGS}")
    text = str(value).strip().casefold() if isinstance(value, (bool, int, float, str)) else None
    if text not in GOOD_LABELS | BAD_LABELS:
        raise RowError(key, f"{value!r} is not a feedback label; use {LABEL_SPELLINGS}")
    return {k: v for k, v in record.items() if k != key}, text in GOOD_LABELS


def feedback_row(row: Any, record: dict) -> Conversation | Document:
    """A parsed KTO row (`record` without its label), refused unless it holds one judged reply: a chat ending with an
    assistant turn, or a string prompt/completion (a `text` row has no prompt; a completion list of several
    messages is more than one reply)."""
    if isinstance(row, Document) and row.prompt is None:
        raise RowError("text", "a raw-text row has no prompt and reply to judge; give prompt/completion/label")
    if isinstance(record.get("completion"), list) and len(record["completion"]) != 1:
        raise RowError("completion", "KTO judges one reply: give the completion as one assistant message (earlier "
                                     "turns go in the prompt)")  # fmt: skip
    return row


def check_keys(record: dict, fmt: str) -> None:
    """Refuse a near-miss of a key we read (in the row or in a message), a chat row holding two chat formats (one
    would be dropped), and keys whose meaning we do not implement: KTO labels (kto_tag, a label of 0/1/"true"/
    "false", "undesirable", 👎: `is_feedback_label`), a row-level weight in SFT rows and other tools' per-turn
    training flags."""
    if "kto_tag" in record or is_feedback_label(record):
        key = "kto_tag" if "kto_tag" in record else "label"
        raise RowError(key, KTO_REFUSED.removeprefix("label: "))
    keys = tuple(record)
    if problem := _key_problem(keys, fmt, messages=False):
        raise RowError(*problem)
    _check_message_keys(record)
    if problem := _key_problem(keys, fmt, messages=True):
        raise RowError(*problem)
    if fmt in MESSAGES_KEY:  # Alpaca's context keys, which a message list does not read: the turns would be lost
        for key in ("history", "input"):
            if record.get(key) not in (None, "", []):
                raise RowError(key, f"an Alpaca key beside {MESSAGES_KEY[fmt]!r}, which does not read it (its text "
                                    "would be dropped): put it into the messages, or drop the key")  # fmt: skip


@lru_cache(maxsize=1024)
def _key_problem(keys: tuple, fmt: str, messages: bool) -> tuple[str, str] | None:
    """`check_keys`' checks that read only the row's keys (rows of a file share them: computed once per key set), as
    (key, message): with `messages` false those before the message keys' check, else those after it."""
    if messages:
        if fmt in ("alpaca", "openai", "sharegpt", "firefly"):
            # `completion` marks a TRL prompt/completion row; `prompt` alone is not one (ultrachat rows carry it)
            found = {f: k for k, f in {**CHAT_KEYS, "completion": "prompt_completion"}.items() if k in keys}
            if len(found) > 1:
                a, b = sorted(found.values())
                return b, (f"the row also has {a!r}: two chat formats in one row ({', '.join(sorted(found))}); "
                           "keep one, the other would be dropped")  # fmt: skip
        return None
    if fmt in SFT_FORMATS and "weight" in keys:
        return "weight", ("a row-level weight is not read; OpenAI's per-message weight is (0 makes an assistant "
                          "turn context only); drop the key or move it onto the messages")  # fmt: skip
    for key, base in language_variants(keys).items():
        if base in keys:
            return key, (f"another language's {base!r} beside {base!r}, which alone would be read; give the "
                         f"columns to train the names {base!r} (and the like), and drop the others")  # fmt: skip
    for key in keys:
        want = _misspelled(key) or (near_miss(key, tuple(DOLLY_KEYS.values()), 0.85) if fmt == "alpaca" else None)
        if want and want not in keys:
            return key, f"unknown key; did you mean {want!r}? (rename it, or drop the column)"
    return None


def parse_row(record: Any, fmt: str, strict: bool = True) -> Conversation | PreferencePair | Document:
    """Parse one record of a known format; raises RowError."""
    if isinstance(record, RowError):
        raise record
    if not isinstance(record, dict):
        raise not_a_row(record)
    check_keys(record, fmt)
    if fmt == "preference":
        return parse_preference(record, strict)
    if fmt == "preference_raw":
        return parse_raw_preference(record, strict)
    if fmt == "text":
        return parse_text(record)
    if fmt == "kto":
        raise RowError("label", KTO_REFUSED.removeprefix("label: "))
    from weitiao.data import tools  # it builds on this module's row helpers

    if fmt in ("sharegpt", "openai") and tools.is_tool_row(record, fmt):
        return tools.parse_sharegpt_tools(record) if fmt == "sharegpt" else tools.parse_openai_tools(record)
    if fmt == "alpaca" and tools.gives_tools(record):
        return tools.parse_alpaca_tools(record)
    lists = fmt == "prompt_completion" and all(isinstance(record.get(k), list) for k in ("prompt", "completion"))
    if lists and tools.is_tool_row(tools.prompt_completion_messages(record), "openai"):
        return tools.parse_prompt_completion_tools(record)
    messages = PARSERS[fmt](record)
    if isinstance(messages, Document):
        return messages
    field = {**MESSAGES_KEY, "prompt_completion": "completion"}.get(fmt, "row")
    return Conversation(_check_turns(messages, field, named=_row_names(record, fmt, messages)))


def _row_names(
    record: dict, fmt: str, messages: list[Message], keys: tuple[str, ...] | None = None
) -> Callable[[int], tuple[str, Any]] | None:
    """For `_check_turns`: message i's field and role as the row writes them: the index in the row's own list (a
    `system` key's message, put first, is not in it), its key (`from` for ShareGPT), the role it gives. `keys`: the
    row's message lists, when not the format's own (a prompt file's `prompt` list)."""
    lists = {"sharegpt": ("conversations",), "openai": ("messages",), "prompt_completion": ("prompt", "completion")}
    if keys is None and fmt not in lists:
        return None
    rows = [(k, j, m) for k in keys or lists[fmt] for j, m in enumerate(record[k])]
    key = "from" if fmt == "sharegpt" else "role"
    shift = len(messages) - len(rows)  # 1 when the row's `system` key was put first

    def named(i: int) -> tuple[str, Any]:
        k, j, m = rows[i - shift]
        return f"{k}[{j}].{key}", m.get(key)

    return named


# ----------------------------------------------------------------------------- loading


def _sources(entries: list[str | Path], dataset_dir: str | Path | None) -> list[tuple[list[Path], Any]]:
    """(files, LLaMA-Factory dataset or None) per entry: paths, or names in DIR/dataset_info.json."""
    if dataset_dir is None:
        return [([p], None) for p in expand_paths(entries)]
    from weitiao.data.llamafactory import resolve

    return [(lf.files, lf) for lf in (resolve(dataset_dir, str(name)) for name in entries)]


def data_files(entries: list[str | Path], dataset_dir: str | Path | None = None) -> list[Path]:
    """Every file `load_rows` reads for `entries`; with `dataset_dir`, its dataset_info.json first (the mapping)."""
    files = [f for fs, _ in _sources(entries, dataset_dir) for f in fs]
    if dataset_dir is None:
        return files
    from weitiao.data.llamafactory import INFO

    return [Path(dataset_dir) / INFO, *files]


def _other_format(err: RowError, record: Any, file_fmt: str | None, strict: bool) -> RowError:
    """A row that reads as another format than the file's first row says so, instead of naming a key it lacks; one
    that is bad as its own format too says what is wrong with it there (it said only the key it lacks)."""
    try:
        other = detect_format(record)
    except RowError:
        return err
    if other in (file_fmt, "kto") or not file_fmt:
        return err
    try:
        parse_row(record, other, strict)
        also = ""
    except RowError as own:
        also = f", and as {other} {own.field}: {own.problem}"
    return RowError(err.field, f"{err.problem} (as {file_fmt}, the format of the file's first row; this row is "
                               f"{other}{also}: one format per file, split it or convert the row)")  # fmt: skip


def _cell_json(err: RowError, record: Any, path: Path) -> RowError:
    """A CSV/xlsx row refused for want of a list or object, whose cell holds one as text (JSON, or pandas' repr of a
    list column): said so, with the way to keep it (a cell is text; it is not parsed as a guess)."""
    key = re.match(r"\w*", err.field).group(0)
    cell = record.get(key) if isinstance(record, dict) else None
    if data_suffix(path) not in TYPELESS or not isinstance(cell, str) or cell.lstrip()[:1] not in ("[", "{"):
        return err
    return RowError(err.field, f"{err.problem}; the cell holds {cell.strip()[:30]!r}, text: a CSV/xlsx cell is not "
                               "parsed as JSON; write the rows as JSONL (pandas: df.to_json(path, orient='records', "
                               "lines=True, force_ascii=False))")  # fmt: skip


def _lf_format(lf: Any, fmt: str) -> str:
    """A LLaMA-Factory dataset's format is its entry's (formatting, ranking); a format given beside it must agree."""
    if fmt in ("auto", lf.fmt) or (fmt == lf.formatting and not lf.ranking):  # openai rows are read as sharegpt's
        return lf.fmt
    said = lf.fmt if lf.ranking else lf.formatting
    raise UserError(f"format {fmt!r}: dataset {lf.name!r} is {said} by its dataset_info.json entry (formatting, "
                    "ranking; rendered through the chat template, as LLaMA-Factory does); drop the format")  # fmt: skip


SKIP_HINT = "pass --skip-invalid"  # a command's flag; training configs say CONFIG_SKIP_HINT
CONFIG_SKIP_HINT = "set data.skip_invalid: true"


def load_rows(
    paths: str | Path | list[str | Path],
    fmt: Format = "auto",
    skip_invalid: bool = False,
    rejects_path: str | Path | None = None,
    max_row_bytes: int | None = MAX_ROW_BYTES,
    strict: bool = True,
    dataset_dir: str | Path | None = None,
    sink: Any = None,
    skip_hint: str | None = SKIP_HINT,
    row_check: Callable[[Any, Any], None] | None = None,
    on_record: Callable[[Any, Any], None] | None = None,
    feedback: bool | None = False,
) -> LoadResult:
    """Load and validate every row of every file (into `sink`, a list stand-in with append/len, if given).

    `paths` are files, globs or folders (see weitiao.data.files), or with `dataset_dir` dataset names
    in its LLaMA-Factory `dataset_info.json` (whose mapping then sets the format).
    fmt="auto" detects the format from each file's first row and holds the file to it.
    A bad row raises UserError(`file:line: field: problem`) unless skip_invalid, in which case it
    is written with its error to `rejects_path` (default: beside its own file, `<file>.rejects.jsonl`, one per file
    with bad rows: a file named after the first of several would hold the others' rows).
    A JSONL row over `max_row_bytes` is such a bad row (None = no limit). strict=False lets
    preference rows with empty or identical replies through, for `data check` to count. `skip_hint`: how
    the caller's user sets bad rows aside, said after a bad row's error (None: a command that cannot).
    `row_check(row, fields)` raises RowError for a parsed row (parsed from the JSON record `fields`) its caller cannot
    use (a bad row like the others: e.g. `chat.special_token_check`, which needs the tokenizer).
    `on_record(record, row)` sees the JSON record of every
    row kept, beside its parsed row (source set), so a caller needing the raw columns reads the file only once.
    `feedback`: every row is a KTO row (`split_feedback`), kept as `Feedback`; else such rows are refused. None: the
    first row decides (`data check`): a KTO row makes every row one, else KTO rows are refused.
    """
    if fmt != "auto" and fmt not in FORMATS:
        raise UserError(f"format {fmt!r} unknown; use one of auto, {', '.join(FORMATS)}")
    entries = paths if isinstance(paths, list) else [paths]
    result = LoadResult(rows=[] if sink is None else sink, format=fmt)
    rejects: list[dict] = []
    bad_files: list[Path] = []  # the data file of each reject
    resampled = 0  # rows added (+) or left out (-) by LLaMA-Factory num_samples
    for files, lf in _sources(entries, dataset_dir):
        # A dataset with num_samples is held until its rows are picked; all others stream into result.rows.
        rows = [] if lf and lf.num_samples is not None else result.rows
        for path in files:
            file_fmt = _lf_format(lf, fmt) if lf else None if fmt == "auto" else fmt
            kept_before = len(rows)
            for n, record in iter_records(path, max_row_bytes, result.notes):
                result.read += 1
                loc = f"{path}:{n}"
                fields, desirable = record, False  # the row's fields to parse: without its label, for a KTO row
                as_written = record  # a rejected row is written so, its keys the file's (not a mapping's)
                try:
                    if lf and not isinstance(record, RowError):
                        record = fields = lf.convert(record)
                    if feedback is None and isinstance(record, dict):
                        feedback = "kto_tag" in record or is_feedback_label(record)
                    if isinstance(record, dict) and not feedback and ("kto_tag" in record or is_feedback_label(record)):
                        kto = RowError("kto_tag" if "kto_tag" in record else "label", KTO_REFUSED.split(": ", 1)[1])
                        raise UserError(f"{loc}: {lf.rename(kto) if lf else kto}")  # even with skip_invalid
                    if feedback and isinstance(record, dict):
                        fields, desirable = split_feedback(record)
                    if file_fmt is None:
                        if isinstance(fields, RowError):
                            raise fields
                        file_fmt = detect_format(fields)
                    row = parse_row(fields, file_fmt, strict)
                    if row_check is not None:
                        row_check(row, fields)
                    if feedback:
                        row = Feedback(feedback_row(row, fields), desirable)
                except RowError as e:
                    e = _cell_json(e, fields, path)
                    e = lf.rename(e) if lf else _other_format(e, fields, file_fmt, strict) if fmt == "auto" else e
                    if not skip_invalid:
                        hint = f" (or {skip_hint} to set bad rows aside)" if skip_hint else ""
                        raise UserError(f"{loc}: {e}{hint}") from None
                    if isinstance(record, RowError):  # no JSON: the line's text, so it can be fixed and fed again
                        rejects.append({"source": loc, "error": str(e), "row": None, "text": record.raw})
                    else:
                        rejects.append({"source": loc, "error": str(e), "row": as_written})
                    bad_files.append(path)
                    continue
                row.source = loc
                if isinstance(row, Feedback):
                    row.row.source = loc
                if on_record is not None:
                    on_record(record, row)
                rows.append(row)
            result.per_file[str(path)] = len(rows) - kept_before
            if result.format == "auto" and file_fmt:
                result.format = file_fmt
            elif file_fmt and file_fmt != result.format:
                result.format = "mixed"
        if lf:
            lf.check_mapped()
            result.notes += lf.notes + lf.unread_notes() + lf.converter_notes()
            if lf.num_samples is not None and rows:
                picked = lf.sample(rows)
                for row in picked:
                    result.rows.append(row)
                resampled += len(picked) - len(rows)
                result.notes.append(
                    f"{lf.name}: num_samples {lf.num_samples} of {len(rows)} rows "
                    "(a seeded random sample, as LLaMA-Factory"
                    + (", drawn with replacement past them)" if lf.num_samples > len(rows) else ")")
                )
    result.rejected = len(rejects)
    if rejects:
        outs = [Path(rejects_path or f"{f}.rejects.jsonl") for f in bad_files]
        result.rejects_files = dict(zip(map(str, bad_files), outs))
        result.rejected_per_file = dict(Counter(map(str, bad_files)))
        result.rejects_path = outs[0]
        if rejects_path is None:  # beside the user's data: never over a file of theirs
            claim_outputs(dict.fromkeys(outs), list(map(Path, result.per_file)), "rejects file")
        for out in dict.fromkeys(outs):
            write_jsonl(out, [r for r, o in zip(rejects, outs) if o == out])
    assert result.read + resampled == result.kept + result.rejected
    return result


def load_conversations(
    paths: str | Path | list[str | Path], fmt: Format = "auto", allow_text: bool = False, **kw: Any
) -> LoadResult:
    """Like load_rows but every row must be an SFT conversation (or, with allow_text, a text document)."""
    result = load_rows(paths, fmt, **kw)
    for row in result.rows:
        if isinstance(row, PreferencePair):
            raise UserError(f"{row.source}: chosen: preference row in SFT data; use `weitiao dpo`")
        if isinstance(row, Document) and not allow_text:
            raise UserError(
                f"{row.source}: a raw-text row (text, or string prompt/completion); this command takes chats"
            )
    return result


def file_kind(path: str | Path, fmt: str = "auto") -> Literal["sft", "preference"]:
    """The trainer kind of a data file: preference when `fmt` says so or, with auto, when its first row is a
    chosen/rejected pair; sft otherwise."""
    if fmt != "auto":
        return "preference" if fmt in ("preference", "preference_raw") else "sft"
    records = iter_records(Path(path))
    try:
        _, first = next(records, (0, None))
    finally:
        records.close()
    try:
        return "preference" if detect_format(first) == "preference" else "sft"
    except RowError:  # not a row of any format: the SFT loader says where and why
        return "sft"
