"""LLaMA-Factory datasets: a name in `DIR/dataset_info.json` → its files and a row mapper.

Follows LLaMA-Factory's `data/parser.py` and `data/converter.py`: `formatting` alpaca|sharegpt|openai (`_openai`),
`ranking` (preference pairs), `columns` (when given, a column not named there is unused, as in
LLaMA-Factory: alpaca `history`/`system` are read only when mapped) and sharegpt `tags`. Rows are
renamed into weitiao's own alpaca/sharegpt/preference keys and parsed by `formats`. An entry, column or tag key
LLaMA-Factory does not read (a typo: colums, ranknig, promt) is refused where LLaMA-Factory ignores it, and so is a
row it skips: a message role none of the tags name, turns out of its order (said in the entry's own tags), OpenAI
tool_calls (its sharegpt reads role and content). Departures:
hub/script/cloud datasets are refused (weitiao never downloads), `kto_tag` rows are refused but by
`weitiao kto`, image/video/audio columns are ignored with a note, and a row opening with an observation (which
LLaMA-Factory trains) or, under openai, calling tools with no function_tag set (read by an accident of its tag map) is
refused. `num_samples` picks rows as LLaMA-Factory
does (a random permutation's first N, then draws with replacement past the data's size), seeded by the
dataset's name instead of the run's seed, so a dataset's sample (and its tokenized cache) never changes.
"""

from __future__ import annotations

import json
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from weitiao.data.files import RowError, confined, expand_paths
from weitiao.errors import UserError, near_miss
from weitiao.io import read_json

INFO = "dataset_info.json"
REMOTE = ("hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name")
ALPACA = {"prompt": "instruction", "query": "input", "response": "output", "history": None, "system": None}
SHAREGPT = {"messages": "conversations", "system": None}
COMMON = {"tools": None, "images": None, "videos": None, "audios": None, "chosen": None, "rejected": None}
COMMON |= {"kto_tag": None}
TAGS = {
    "role_tag": "from",
    "content_tag": "value",
    "user_tag": "human",
    "assistant_tag": "gpt",
    "observation_tag": "observation",
    "function_tag": "function_call",
    "system_tag": "system",
}
# Our ShareGPT role names for LLaMA-Factory's tags (function/observation: tool-calling rows).
OUR_ROLE = {
    "user_tag": "human",
    "assistant_tag": "gpt",
    "observation_tag": "observation",
    "function_tag": "function_call",
    "system_tag": "system",
}
# The tag a row's role name is usually meant for, said in the refusal of a role the entry's tags do not name
ROLE_TAG_OF = {"user_tag": ("user", "human"), "assistant_tag": ("assistant", "gpt"), "system_tag": ("system",),
               "observation_tag": ("observation", "tool"), "function_tag": ("function_call", "function")}  # fmt: skip
MEDIA = ("images", "videos", "audios")
THINKING_OFF = "detailed thinking off"  # LLaMA-Factory's openai converter puts it in every tool-less row's system
# Optional columns LLaMA-Factory reads only when the entry maps them (key → the column's usual name); rows holding one
# unmapped get a note, not a guess: an alpaca entry mapping prompt and response alone trains without its `input`.
OPTIONAL = {"alpaca": {"query": "input", "system": "system", "history": "history", "tools": "tools"},
            "sharegpt": {"system": "system", "tools": "tools"}}  # fmt: skip
OPTIONAL["openai"] = OPTIONAL["sharegpt"]
# An entry's keys as LLaMA-Factory's data/parser.py reads them; any other key (colums, ranknig) is refused, not ignored.
ENTRY_KEYS = (*REMOTE, "file_name", "file_sha1", "formatting", "ranking", "subset", "split", "folder", "num_samples",
              "revision", "columns", "tags")  # fmt: skip
HUB_ONLY = ("subset", "folder", "revision")  # pick part of a hub dataset: a local file has none of them

# Message keys formats.py reads too (here, below formats in the import order): a message's reasoning trace beside its
# content, and other tools' per-turn training flags (axolotl `training`, ms-swift `loss`).
REASONING_KEYS = ("reasoning_content", "reasoning", "thinking")
TURN_FLAGS = ("train", "training", "loss")


def _unknown(keys: Any, known: list[str] | tuple[str, ...], where: str) -> None:
    for k in keys:
        if k not in known:
            close = near_miss(str(k), tuple(known), 0.6)
            hint = f"did you mean {close!r}? " if close else ""
            raise UserError(f"{where}.{k}: unknown key; {hint}LLaMA-Factory reads {', '.join(known)}")


@dataclass
class LFDataset:
    """One dataset_info.json entry, resolved to local files."""

    name: str
    files: list[Path]
    formatting: str
    ranking: bool
    columns: dict[str, str | None]
    tags: dict[str, str]
    num_samples: int | None = None
    notes: list[str] = field(default_factory=list)
    unread: dict[str, int] = field(default_factory=dict)  # optional key → rows holding its usual column unmapped
    held: set[str] = field(default_factory=set)  # the mapped columns some row holds
    given: tuple[str, ...] = ()  # the keys the entry's own `columns` maps (not LLaMA-Factory's defaults)
    info: Path = Path(INFO)
    thinking_off: int = 0  # openai rows given "detailed thinking off" in their system prompt, as LLaMA-Factory does
    _at: list[int] = field(default_factory=list)  # the last converted row's messages: each one's index in the row

    @property
    def fmt(self) -> str:
        """The weitiao format the renamed rows are in."""
        return "preference" if self.ranking else "alpaca" if self.formatting == "alpaca" else "sharegpt"

    def sample(self, rows: list) -> list:
        """`num_samples` of `rows` as LLaMA-Factory picks them: a random permutation's first N, then draws with
        replacement past len(rows); seeded by the dataset's name."""
        import numpy as np  # here, not at import: every data reader imports this module

        assert self.num_samples is not None and rows
        rng = np.random.default_rng(zlib.crc32(self.name.encode("utf-8")))
        idx = rng.permutation(len(rows))[: self.num_samples]
        if self.num_samples > len(rows):
            idx = np.concatenate([idx, rng.choice(len(rows), self.num_samples - len(rows))])
        return [rows[i] for i in idx]

    def column(self, record: dict, key: str, required: bool = False) -> Any:
        col = self.columns.get(key)
        if col is None:  # `resolve` checked the required columns are named
            return None
        if col not in record:
            if required:
                raise RowError(col, "missing")
            return None
        return record[col]

    def convert(self, record: Any) -> dict:
        """The row in weitiao's keys; raises RowError naming the dataset's own column."""
        if not isinstance(record, dict):
            raise RowError("row", f"expected a JSON object, got {type(record).__name__}")
        self.held.update(c for c in self.columns.values() if c in record)  # a bad row holds its columns too
        out: dict[str, Any] = {}
        if self.columns.get("kto_tag") in record:  # read by `weitiao kto`, refused by the others
            out["kto_tag"] = record[self.columns["kto_tag"]]
        if self.formatting == "alpaca":
            # LLaMA-Factory: user turn = "\n".join of the non-empty prompt and query columns.
            parts = [self.column(record, "prompt"), self.column(record, "query")]
            out["instruction"] = "\n".join(p for p in parts if p)
            if self.column(record, "history") is not None:
                out["history"] = self.column(record, "history")
            if not self.ranking:
                out["output"] = self.column(record, "response", required=True)
        else:
            col = self.columns["messages"]
            msgs = self._list(record)
            if self.formatting == "openai":
                msgs, system, tools = self._openai(msgs, record)
                out |= {k: v for k, v in (("system", system), ("tools", tools)) if v}
            else:
                self._at = list(range(len(msgs)))
            out["conversations"] = [self._message(m, f"{col}[{self._at[i]}]") for i, m in enumerate(msgs)]
            self._order(msgs)
        if self.ranking:
            for k in ("chosen", "rejected"):
                v = self.column(record, k, required=True)
                out[k] = self._message(v, self.columns[k]) if self.formatting != "alpaca" else v
        for k in ("system", "tools") if self.formatting != "openai" else ():  # openai: set by `_openai`
            if self.column(record, k) not in (None, ""):
                out[k] = self.column(record, k)
        for k, col in OPTIONAL[self.formatting].items():
            if (
                self.columns.get(k) is None
                and record.get(col) not in (None, "", [], "[]")
                and col not in self.columns.values()
            ):
                self.unread[k] = self.unread.get(k, 0) + 1
        return out

    def unread_notes(self) -> list[str]:
        """One line per optional column the rows hold but the entry does not map (LLaMA-Factory ignores it too)."""
        return [
            f"{self.name}: {n} row(s) hold a {OPTIONAL[self.formatting][k]!r} column that the entry's columns do not "
            f'map: unread, as in LLaMA-Factory (add "{k}": "{OPTIONAL[self.formatting][k]}" to its columns to train '
            "with it)"
            for k, n in self.unread.items()
        ]

    def converter_notes(self) -> list[str]:
        """What LLaMA-Factory's openai converter wrote into the rows (`_openai`), in one line."""
        if not self.thinking_off:
            return []
        return [f"{self.name}: {self.thinking_off} row(s) without tools have {THINKING_OFF!r} in their system prompt, "
                "added as LLaMA-Factory's openai formatting adds it (formatting sharegpt, with the same tags, trains "
                "them without it)"]  # fmt: skip

    def check_mapped(self) -> None:
        """Refuse a mapped column no row holds (a typo in the entry, `"query": "inp"`): LLaMA-Factory stops there with a
        KeyError; its text would go untrained unsaid. Called once every row was converted."""
        if self.held and (k := next((k for k in self.given if self.columns[k] not in self.held), None)):
            raise UserError(f"{self.info}: {self.name}.columns.{k}: {self.columns[k]!r} is a column no row holds; "
                            "name the column that holds it, or drop the key")  # fmt: skip

    def rename(self, err: RowError) -> RowError:
        """An error on a weitiao key, renamed to the dataset's column and tags (output → its response column)."""
        ours = {"instruction": "prompt", "input": "query", "output": "response", "conversations": "messages"}
        key = re.match(r"\w*", err.field).group(0)
        col = self.columns.get(ours.get(key, key)) or key
        rest = err.field[len(key) :]
        if key == "conversations" and (m := re.match(r"\[(\d+)\]", rest)) and int(m.group(1)) < len(self._at):
            rest = f"[{self._at[int(m.group(1))]}]" + rest[m.end() :]  # the message's index in the row
        if self.formatting != "alpaca":
            rest = rest.replace(".from", f".{self.tags['role_tag']}").replace(".value", f".{self.tags['content_tag']}")
        return RowError(col + rest, err.problem)

    def _order(self, msgs: list) -> None:
        """LLaMA-Factory's turn check (converter.py), said in the entry's own tags: after a first system message,
        user|observation and assistant|function turns alternate, the last an assistant|function one (ranking: a
        user|observation one, the replies being chosen/rejected); it skips any other row. Departure: a row opening
        with an observation is refused (with no user turn, llama3 renders no tool specs)."""
        t, col = self.tags, self.columns["messages"]
        roles = [m[t["role_tag"]] for m in msgs]
        start = 1 if t["system_tag"] and roles[0] == t["system_tag"] else 0
        sides = (
            [r for r in (t["user_tag"], t["observation_tag"]) if r],
            [r for r in (t["assistant_tag"], t["function_tag"]) if r],
        )
        said = [" or ".join(map(repr, side)) for side in sides]
        where = f"{col}[{self._at[start] if start < len(roles) else 0}].{t['role_tag']}"
        if start == len(roles):
            raise RowError(col, "holds only the system message; LLaMA-Factory skips the row")
        if roles[start] != t["user_tag"]:
            raise RowError(where, f"expected {t['user_tag']!r} first, got {roles[start]!r}" + (
                " (LLaMA-Factory trains a row opening with an observation; weitiao refuses it: with no user turn, "
                "the llama3 template renders no tool specs)" if roles[start] in sides[0] else ""))  # fmt: skip
        for i in range(start + 1, len(roles)):
            if self.formatting == "sharegpt" and roles[i] == roles[i - 1] == t["observation_tag"]:
                raise RowError(f"{col}[{i}].{t['role_tag']}", f"a second {roles[i]!r} after one call: LLaMA-Factory's "
                               "sharegpt takes one observation per call turn (it skips this row); put the results "
                               "into one observation, or give each call its own function_call turn")  # fmt: skip
            if roles[i] not in sides[(i - start) % 2]:
                raise RowError(f"{col}[{self._at[i]}].{t['role_tag']}", f"expected {said[(i - start) % 2]} after "
                               f"{roles[i - 1]!r}, got {roles[i]!r}: LLaMA-Factory's {self.formatting} alternates "
                               f"{said[0]} with {said[1]} turns and skips this row")  # fmt: skip
        if (len(roles) - start) % 2 == (0 if self.ranking else 1):
            want = f"{said[0]} (the prompt: chosen/rejected hold the replies)" if self.ranking else said[1]
            raise RowError(col, f"ends with {roles[-1]!r}; LLaMA-Factory takes a row ending with {want} and skips "
                                "this one")  # fmt: skip

    def _openai(self, msgs: list, record: dict) -> tuple[list, Any, Any]:
        """(messages in sharegpt shape, system, tools) of an `openai` row as LLaMA-Factory's OpenAIDatasetConverter
        reads it: a first system message (or the system column) is the system prompt; an assistant|function message's
        `tool_calls` become one function message, the JSON list of their `function`s; consecutive observations join
        into one, "\n</tool_response>\n<tool_response>\n" between them; rows without tools get "detailed thinking off"
        in their system prompt (one with tools: a newline after it). What its converter would drop (a text beside
        tool calls, results after the last turn) is refused. `self._at`: each message's index in the row."""
        t, col = self.tags, self.columns["messages"]
        role_tag, content_tag = t["role_tag"], t["content_tag"]
        for i, m in enumerate(msgs):
            if not isinstance(m, dict):
                raise RowError(f"{col}[{i}]", "expected an object")
            if role_tag not in m:
                self._message(m, f"{col}[{i}]")  # says the role key is missing
        start = 1 if t["system_tag"] and msgs[0][role_tag] == t["system_tag"] else 0
        system = msgs[0].get(content_tag) if start else self.column(record, "system")
        if start and self.column(record, "system") not in (None, ""):  # as sharegpt rows: one would be dropped
            raise RowError(self.columns["system"], "given both as a column and as the first message; LLaMA-Factory "
                           "reads the message and drops the column: keep one")  # fmt: skip
        if system is not None and not isinstance(system, str):
            raise RowError(f"{col}[0].{content_tag}" if start else self.columns["system"], "expected a string")
        out: list[dict] = []
        self._at, results = [], []  # results: the observations not yet joined, with their indices
        for i, m in enumerate(msgs[start:], start):
            self._unread(m, f"{col}[{i}]")
            role, content = m[role_tag], m.get(content_tag)
            if role in (t["assistant_tag"], t["function_tag"]) and m.get("tool_calls"):
                if not t["function_tag"]:
                    raise RowError(f"{col}[{i}].tool_calls", "tool calls, and the entry's tags leave "
                                   "function_tag unset (LLaMA-Factory then reads the call as whichever role its tags "
                                   'leave unset last): set "function_tag": "function_call"')  # fmt: skip
                if content not in (None, ""):
                    raise RowError(f"{col}[{i}].{content_tag}", "text beside tool_calls, which LLaMA-Factory's openai "
                                   "formatting drops (it trains the calls alone): move it to an assistant turn of its "
                                   "own, or drop it")  # fmt: skip
                calls = m["tool_calls"]
                if not (isinstance(calls, list) and all(isinstance(c, dict) and "function" in c for c in calls)):
                    raise RowError(f"{col}[{i}].tool_calls", 'expected a list of {"type": "function", "function": '
                                   '{"name", "arguments"}}')  # fmt: skip
                role, content = t["function_tag"], json.dumps([c["function"] for c in calls], ensure_ascii=False)
            elif m.get("tool_calls") not in (None, [], ""):
                raise RowError(f"{col}[{i}].tool_calls", f"on a {role!r} message: LLaMA-Factory reads tool calls on "
                               f"{t['assistant_tag']!r} messages only (these would be lost)")  # fmt: skip
            if role == t["observation_tag"]:
                results.append((i, content))
                continue
            if results:
                joined = "\n</tool_response>\n<tool_response>\n".join(str(c) for _, c in results)
                out.append({role_tag: t["observation_tag"], content_tag: joined})
                self._at.append(results[0][0])
                results = []
            out.append({role_tag: role, content_tag: content})
            self._at.append(i)
        if results:
            raise RowError(f"{col}[{results[0][0]}]", "tool results after the last assistant turn, which "
                           "LLaMA-Factory's openai formatting drops: answer them with an assistant turn, or drop "
                           "them")  # fmt: skip
        if not out:
            raise RowError(col, "holds only the system message; LLaMA-Factory skips the row")
        tools = self.column(record, "tools")
        if isinstance(tools, (dict, list)):
            tools = json.dumps(tools, ensure_ascii=False)
        system = system or ""
        if not tools and not ("detailed thinking on" in system or "detailed thinking off" in system):
            system = (system + "\n" if system else "") + THINKING_OFF
            self.thinking_off += 1
        elif tools and system:
            system += "\n"
        return out, system, tools

    def _list(self, record: dict) -> list:
        msgs = self.column(record, "messages", required=True)
        if not isinstance(msgs, list) or not msgs:
            raise RowError(self.columns["messages"], "expected a non-empty list of messages")
        return msgs

    def _unread(self, m: dict, where: str) -> None:
        """Refuse what a message asks of training that reading its role and content alone (as LLaMA-Factory does)
        would drop: a weight or per-turn flag against training it, a speaker name, a reasoning trace, a legacy
        function_call."""
        for k, v in m.items():
            if (k == "weight" and v != 1) or (k in TURN_FLAGS and v is False):
                what, fix = "a per-turn training flag (the turn would be trained anyway)", (
                    "drop the key, or give the file's path itself, without data.dataset_dir (weitiao reads OpenAI "
                    "messages' weight: 0)")  # fmt: skip
            elif k == "function_call" and v not in (None, {}, ""):  # OpenAI's legacy call
                what = "an OpenAI legacy function call (the call would be lost)"
                fix = "write it as tool_calls" + (
                    "" if self.formatting == "openai" else ' with "formatting": "openai" in the entry, or as a '
                    "function_call turn")  # fmt: skip
            elif (k == "name" or k in REASONING_KEYS) and v not in (None, ""):
                what = "a speaker name" if k == "name" else "a reasoning trace (it would not be trained)"
                fix = "put its text into the content, or drop the key"
            else:
                continue
            raise RowError(f"{where}.{k}", f"{what}, which LLaMA-Factory's {self.formatting} formatting does not "
                           f"read (it reads role and content only): {fix}")  # fmt: skip

    def _message(self, m: Any, where: str) -> dict:
        """A message with LLaMA-Factory's tags → weitiao's ShareGPT keys (`from`, `value`)."""
        if not isinstance(m, dict):
            raise RowError(where, "expected an object")
        if m.get("tool_calls") not in (None, [], ""):  # LLaMA-Factory's sharegpt reads role and content only
            raise RowError(f"{where}.tool_calls", "OpenAI tool calls, which LLaMA-Factory's sharegpt formatting "
                           "does not read (the call would be lost): set \"formatting\": \"openai\" in the entry "
                           "(LLaMA-Factory reads them there), or write the calls as function_call turns")  # fmt: skip
        self._unread(m, where)
        key = self.tags["role_tag"]
        role = m.get(key)
        ours = {self.tags[t]: r for t, r in OUR_ROLE.items() if self.tags.get(t)}
        if role is None:
            raise RowError(f"{where}.{key}", f"missing (the message has {', '.join(map(repr, m)) or 'no keys'}; the "
                           "entry's tags.role_tag names the key)")  # fmt: skip
        if role not in ours:  # LLaMA-Factory's converter skips the row (an untagged role fits neither turn)
            tag = next((t for t, names in ROLE_TAG_OF.items() if role in names), None)
            fix = f'set "{tag}": {json.dumps(role)} in its tags' if tag else "use one of them, or map it in its tags"
            named = ", ".join(map(repr, ours)) or "its tags name none"
            raise RowError(f"{where}.{key}", f"{role!r} is none of the entry's roles ({named}): LLaMA-Factory skips "
                           f"the row; {fix}")  # fmt: skip
        return {"from": ours[role], "value": m.get(self.tags["content_tag"])}


def resolve(dataset_dir: str | Path, name: str) -> LFDataset:
    """The dataset `name` of `DIR/dataset_info.json`, its files found under DIR."""
    d = Path(dataset_dir)
    info_path = d / INFO
    if not info_path.is_file():
        raise UserError(f"{info_path}: file not found (data.dataset_dir names a LLaMA-Factory data folder)")
    confined(info_path)
    info = read_json(info_path)
    if not isinstance(info, dict):
        raise UserError(f"{info_path}: expected a mapping of dataset names")
    if name not in info:
        known = ", ".join(sorted(info)[:8]) + (", ..." if len(info) > 8 else "")
        raise UserError(f"{info_path}: no dataset {name!r} (known: {known})")
    entry = info[name]
    where = f"{info_path}: {name}"
    if not isinstance(entry, dict):
        raise UserError(f"{where}: expected an object")
    if remote := [k for k in REMOTE if k in entry]:
        raise UserError(
            f"{where}.{remote[0]}: {entry[remote[0]]!r} is not local; weitiao never downloads; save the data "
            "under data.dataset_dir and give file_name instead"
        )
    _unknown(entry, ENTRY_KEYS, where)
    if "file_name" not in entry:
        raise UserError(f"{where}: file_name missing")
    if hub := next((k for k in HUB_ONLY if entry.get(k) is not None), None):
        raise UserError(f"{where}.{hub}: {entry[hub]!r} picks part of a hub dataset; a local file has none: drop it")
    formatting = entry.get("formatting", "alpaca")
    if formatting not in ("alpaca", "sharegpt", "openai"):
        raise UserError(f"{where}.formatting: {formatting!r} unsupported; use alpaca, sharegpt or openai")
    if not isinstance(entry.get("ranking", False), bool):
        raise UserError(f"{where}.ranking: expected true or false, got {entry['ranking']!r}")
    if entry.get("split", "train") != "train":
        raise UserError(f"{where}.split: {entry['split']!r}: a local file has one split, train")
    n = entry.get("num_samples")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n <= 0):
        raise UserError(f"{where}.num_samples: expected a positive integer, got {n!r}")
    base = dict(ALPACA if formatting == "alpaca" else SHAREGPT) | COMMON
    if "columns" in entry:  # as LLaMA-Factory: given columns replace the defaults, unnamed ones are unused
        cols = entry["columns"]
        if not isinstance(cols, dict):
            raise UserError(f"{where}.columns: expected an object")
        other = SHAREGPT if formatting == "alpaca" else ALPACA
        if wrong := next((k for k in cols if k in other and k not in base), None):
            raise UserError(f"{where}.columns.{wrong}: a column of {'alpaca' if other is ALPACA else 'sharegpt'} "
                            f"formatting; this entry's formatting is {formatting}")  # fmt: skip
        _unknown(cols, list(base), f"{where}.columns")
        columns = {k: cols.get(k) for k in base}
    else:
        columns = base
    tags = dict(TAGS)
    if "tags" in entry and formatting == "alpaca":
        raise UserError(
            f"{where}.tags: only sharegpt and openai formatting read tags; this entry's formatting is alpaca"
        )
    if "tags" in entry and not isinstance(entry["tags"], dict):
        raise UserError(f"{where}.tags: expected an object")
    if "tags" in entry:
        _unknown(entry["tags"], list(TAGS), f"{where}.tags")
        tags = {k: entry["tags"].get(k) for k in TAGS}
        if unset := next((k for k in ("role_tag", "content_tag") if not tags[k]), None):
            raise UserError(f'{where}.tags.{unset}: not set; LLaMA-Factory reads a tag left out of "tags" as unset, '
                            f'not as its default (it then fails on every row): give "{unset}": "{TAGS[unset]}" or the '
                            "key the messages use")  # fmt: skip
    ranking = bool(entry.get("ranking"))
    need = ["chosen", "rejected"] if ranking else []
    need += ["messages"] if formatting != "alpaca" else [] if ranking else ["response"]
    if missing := [k for k in need if not columns.get(k)]:
        raise UserError(f"{where}.columns.{missing[0]}: not set; name the column that holds it")
    path = d / entry["file_name"]
    if not path.exists():
        raise UserError(f"{where}.file_name: {path} not found")
    notes = [
        f"{name}: columns.{m} ({columns[m]}) ignored: weitiao trains on text only" for m in MEDIA if columns.get(m)
    ]
    given = tuple(k for k, c in entry.get("columns", {}).items() if c)
    return LFDataset(
        name, expand_paths([path]), formatting, ranking, columns, tags, n, notes, given=given, info=info_path
    )
