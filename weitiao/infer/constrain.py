"""Constrained decoding for `weitiao serve`: a byte-level automaton that a reply must follow, as a LogitsProcessor.

A `Pattern` is a row of segments — fixed bytes, one of several byte strings, or one JSON object — and its
state after any byte prefix is a small hashable tuple. Before each step, a row's allowed tokens are those
whose bytes all keep the pattern alive (stop tokens only once it is complete); the mask is cached per state,
so a reply walks through a few dozen distinct states and each costs one pass over the vocabulary.
Scores of other tokens become -inf before temperature/top-k/top-p (HF runs custom processors first).

The JSON is RFC 8259 with one restriction to keep a weak model from looping on whitespace: no whitespace
outside strings except one optional space after `:` and `,` (`{"a": 1, "b": [true, null]}` style).
Token bytes come from the tokenizer's byte-level alphabet (GPT-2/Qwen/Llama-3) or SentencePiece pieces
with byte fallback (`<0x0A>`, `▁`); other tokenizers are refused by `TokenBytes.of`.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any

import torch
from transformers import LogitsProcessor

from weitiao.data.decode import special_ids

_WS = b" "
_ESC = set(b'"\\/bfnrt')
_HEX = set(b"0123456789abcdefABCDEF")
_DIGITS = set(b"0123456789")
_LITERALS = {ord("t"): b"rue", ord("f"): b"alse", ord("n"): b"ull"}


# ----------------------------------------------------------------------------- JSON, one byte at a time
# A JSON state is (mode, stack, aux): stack holds b"{" / b"[" of the open containers; aux is mode data.
JSON_START = ("value", (), True)  # aux of "value": whether the next value must be an object (top level)


def _after_value(stack: tuple) -> tuple:
    return ("done", (), None) if not stack else ("after", stack, None)


def json_step(state: tuple, b: int) -> tuple | None:
    """The state after byte `b`, or None when `b` cannot continue valid JSON."""
    mode, stack, aux = state
    if mode == "value" or mode == "value_sp":
        if b == 0x20 and mode == "value_sp":
            return ("value", stack, aux)
        if b == ord("{"):
            return ("key_or_close", (*stack, "{"), None)
        if aux is True:  # the top level must be an object
            return None
        if b == ord("["):
            return ("value_or_close", (*stack, "["), None)
        if b == ord('"'):
            return ("str", stack, (False, 0, 0))
        if b == ord("-"):
            return ("num", stack, "-")
        if b in _DIGITS:
            return ("num", stack, "0" if b == ord("0") else "int")
        if b in _LITERALS:
            return ("lit", stack, _LITERALS[b])
        return None
    if mode == "key_or_close" or mode == "key" or mode == "key_sp":
        if b == 0x20 and mode == "key_sp":
            return ("key", stack, None)
        if b == ord('"'):
            return ("str", stack, (True, 0, 0))
        if b == ord("}") and mode == "key_or_close":
            return _after_value(stack[:-1])
        return None
    if mode == "value_or_close":
        if b == ord("]"):
            return _after_value(stack[:-1])
        return json_step(("value", stack, False), b)
    if mode == "colon":
        return ("value_sp", stack, False) if b == ord(":") else None
    if mode == "after":
        if b == ord(","):
            return ("key_sp", stack, None) if stack[-1] == "{" else ("value_sp", stack, False)
        if b == ord("}" if stack[-1] == "{" else "]"):
            return _after_value(stack[:-1])
        return None
    if mode == "str":
        return _str_step(stack, aux, b)
    if mode == "num":
        nxt = _num_step(aux, b)
        if nxt is not None:
            return ("num", stack, nxt)
        if aux in ("0", "int", "frac", "exp"):  # the number ended; `b` belongs to what follows it
            return json_step(_after_value(stack), b)
        return None
    if mode == "lit":
        if b != aux[0]:
            return None
        return ("lit", stack, aux[1:]) if len(aux) > 1 else _after_value(stack)
    return None  # "done": nothing may follow


def _str_step(stack: tuple, aux: tuple, b: int) -> tuple | None:
    is_key, cont, esc = aux  # cont: UTF-8 continuation bytes still due; esc: 1 after "\", 2..5 in \uXXXX
    if cont:
        return ("str", stack, (is_key, cont - 1, 0)) if 0x80 <= b <= 0xBF else None
    if esc == 1:
        if b == ord("u"):
            return ("str", stack, (is_key, 0, 2))
        return ("str", stack, (is_key, 0, 0)) if b in _ESC else None
    if esc:
        return ("str", stack, (is_key, 0, 0 if esc == 5 else esc + 1)) if b in _HEX else None
    if b == ord('"'):
        return ("colon", stack, None) if is_key else _after_value(stack)
    if b == ord("\\"):
        return ("str", stack, (is_key, 0, 1))
    if b < 0x20 or b == 0x7F:
        return None
    if b < 0x80:
        return ("str", stack, aux)
    for lead, n in ((0xC2, 1), (0xE0, 2), (0xF0, 3)):  # a UTF-8 lead byte and how many follow it
        if lead <= b < {0xC2: 0xE0, 0xE0: 0xF0, 0xF0: 0xF5}[lead]:
            return ("str", stack, (is_key, n, 0))
    return None


def _num_step(sub: str, b: int) -> str | None:
    digit = b in _DIGITS
    if sub == "-":
        return ("0" if b == ord("0") else "int") if digit else None
    if sub in ("0", "int"):
        if digit and sub == "int":
            return "int"
        return "frac0" if b == ord(".") else "exp0" if b in b"eE" else None
    if sub in ("frac0", "frac"):
        return "frac" if digit else ("exp0" if sub == "frac" and b in b"eE" else None)
    if sub == "exp0":
        return "exp" if digit else ("exp_sign" if b in b"+-" else None)
    if sub in ("exp_sign", "exp"):
        return "exp" if digit else None
    return None


# ----------------------------------------------------------------------------- patterns of segments


class Pattern:
    """Segments matched in order: `bytes` (fixed), `list[bytes]` (one of them; prefix-free), or "json"."""

    def __init__(self, *segments: bytes | list[bytes] | str) -> None:
        for seg in segments:
            if isinstance(seg, list):
                assert not any(a != b and b.startswith(a) for a in seg for b in seg), "choices must be prefix-free"
        self.segments = segments
        self.key = tuple(tuple(s) if isinstance(s, list) else s for s in segments)  # equal patterns share masks
        self.start = self._enter(0)

    def _enter(self, i: int) -> tuple:
        if i == len(self.segments):
            return (i, None)
        seg = self.segments[i]
        return (i, JSON_START if seg == "json" else b"")

    def step(self, state: tuple | None, b: int) -> tuple | None:
        if state is None or state[0] == len(self.segments):
            return None
        i, sub = state
        seg = self.segments[i]
        if seg == "json":
            nxt = json_step(sub, b)
            if nxt is None:
                return None
            return self._enter(i + 1) if nxt[0] == "done" else (i, nxt)
        got = sub + bytes([b])
        options = [seg] if isinstance(seg, bytes) else seg
        if not any(o.startswith(got) for o in options):
            return None
        return self._enter(i + 1) if got in options else (i, got)

    def done(self, state: tuple | None) -> bool:
        return state is not None and state[0] == len(self.segments)


def json_object() -> Pattern:
    return Pattern("json")


def tool_call_pattern(tool_format: str, names: list[str]) -> Pattern:
    """One call in the template's syntax to one of `names`, its arguments a JSON object."""
    if tool_format == "hermes":
        head, args, tail = b'<tool_call>\n{"name": "', b'", "arguments": ', b"}\n</tool_call>"
    else:  # llama3_json
        head, args, tail = b'{"name": "', b'", "parameters": ', b"}"
    return Pattern(head, [json.dumps(n)[1:-1].encode() + args for n in names], "json", tail)


# ----------------------------------------------------------------------------- tokens → bytes → masks


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-level BPE alphabet, character → byte: printable bytes stand for themselves, the other
    68 are shifted to U+0100 onward."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = [b for b in range(256) if b not in keep]
    return {chr(b): b for b in keep} | {chr(256 + n): b for n, b in enumerate(shifted)}


def _plain_run(seq: bytes | None, cont: int) -> int:
    """UTF-8 continuation bytes due after `seq` inside a JSON string with `cont` due before; -1 when `seq` holds
    a quote, backslash, control byte or breaks UTF-8 (then the slow walk decides)."""
    if not seq:
        return -1
    for b in seq:
        if cont:
            if not 0x80 <= b <= 0xBF:
                return -1
            cont -= 1
        elif b < 0x20 or b in (0x22, 0x5C, 0x7F):
            return -1
        elif b >= 0x80:
            if 0xC2 <= b < 0xE0:
                cont = 1
            elif 0xE0 <= b < 0xF0:
                cont = 2
            elif 0xF0 <= b < 0xF5:
                cont = 3
            else:
                return -1
    return cont


class TokenBytes:
    """The bytes each token id stands for (None: never allowed, e.g. special tokens), per tokenizer."""

    def __init__(self, table: list[bytes | None], stop_ids: set[int]) -> None:
        self.table, self.stop_ids = table, stop_ids
        # Two shortcuts that keep a mask from walking every token's bytes in Python (a 150k vocabulary):
        # a token's first byte (-1: never allowed), and inside a JSON string, the UTF-8 continuation bytes
        # still due after a token made of plain string bytes, starting from 0-3 due (-1: not plain there).
        self.first = torch.tensor([seq[0] if seq else -1 for seq in table])
        self.plain = torch.tensor([[_plain_run(seq, c) for c in range(4)] for seq in table])

    @staticmethod
    def of(tokenizer: Any, stop_ids: set[int]) -> TokenBytes | None:
        """None when the tokenizer's pieces cannot be mapped to bytes (then constrained decoding is refused)."""
        backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
        decoder = json.loads(backend.to_str()).get("decoder") if backend is not None else None
        kind = json.dumps(decoder)
        byte_level = '"ByteLevel"' in kind
        if not byte_level and '"ByteFallback"' not in kind:
            return None
        unicode_to_byte = _byte_level_alphabet()
        added = {t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values()}
        # control tokens never stand for their text: an unnamed special <|im_end|> passed as the bytes "<|im_end|>"
        # inside a JSON string, so a stop token ended a forced tool call half written
        special = special_ids(tokenizer) | set(stop_ids)
        table: list[bytes | None] = []
        for i, piece in enumerate(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))):
            if piece is None or i in special:
                table.append(None)
            elif piece in added:  # added tokens (Qwen's <tool_call>) are stored as their text
                table.append(piece.encode())
            elif byte_level:
                table.append(
                    bytes(unicode_to_byte[c] for c in piece) if all(c in unicode_to_byte for c in piece) else None
                )
            elif len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
                table.append(bytes([int(piece[3:5], 16)]))
            else:
                table.append(piece.replace("▁", " ").encode())
        return TokenBytes(table, stop_ids)


class MaskCache:
    """Allowed-token masks per (pattern, state) for one tokenizer, least recently used dropped past `size`."""

    def __init__(self, toks: TokenBytes, size: int = 512) -> None:
        self.toks, self.size, self.masks = toks, size, OrderedDict()

    def get(self, pattern: Pattern, state: tuple | None, width: int) -> torch.Tensor:
        toks = self.toks
        key = (pattern.key, state)
        mask = self.masks.get(key)
        if mask is None:
            mask = torch.zeros(width, dtype=torch.bool)
            if pattern.done(state) or state is None:  # complete (or lost): only a stop token may follow
                mask[[i for i in toks.stop_ids if i < width]] = True
            else:
                n = min(width, len(toks.table))
                ok = torch.tensor([pattern.step(state, b) is not None for b in range(256)] + [False])
                walk = ok[toks.first[:n]]  # -1 indexes the trailing False
                sub = state[1] if isinstance(state[1], tuple) and len(state[1]) == 3 else None
                if sub is not None and sub[0] == "str" and sub[2][2] == 0:  # plain bytes keep a string open
                    plain = toks.plain[:n, sub[2][1]] >= 0
                    mask[:n] |= plain
                    walk &= ~plain
                for i in walk.nonzero().flatten().tolist():
                    s = state
                    for b in toks.table[i]:
                        s = pattern.step(s, b)
                        if s is None:
                            break
                    mask[i] = s is not None
            self.masks[key] = mask
            if len(self.masks) > self.size:
                self.masks.popitem(last=False)
        self.masks.move_to_end(key)
        return mask


class Constrain(LogitsProcessor):
    """Masks each constrained row's scores to the tokens its pattern allows. `rows[r]` has `.ids` (tokens so
    far, stop token excluded), `.done` and `.job.constraint` (a Pattern or None); the state is rebuilt from
    `.ids`, so a paused row resumes where it was. A complete pattern allows the row's own `.stops` when it
    has them (serve's per-row stop tokens), else the cache's stop tokens."""

    def __init__(self, rows: list, cache: MaskCache) -> None:
        self.rows, self.toks, self.cache = rows, cache.toks, cache
        self.states = [(r.job.constraint.start, 0) if r.job.constraint else None for r in rows]

    def _advance(self, r: int) -> tuple | None:
        row = self.rows[r]
        pattern, (state, seen) = row.job.constraint, self.states[r]
        for tok in row.ids[seen:]:
            for b in self.toks.table[tok] if tok < len(self.toks.table) and self.toks.table[tok] else b"\xff":
                state = pattern.step(state, b)
        self.states[r] = (state, len(row.ids))
        return state

    def complete(self, r: int) -> bool:
        """Whether row `r`'s pattern is complete (or lost): only a stop token may follow."""
        if self.states[r] is None:
            return False
        state = self._advance(r)
        return state is None or self.rows[r].job.constraint.done(state)

    def ban(self, width: int, device: Any = None) -> torch.Tensor:
        """[rows, width] True where a row may not go; unconstrained and finished rows ban nothing."""
        out = torch.zeros(len(self.rows), width, dtype=torch.bool)
        for r, row in enumerate(self.rows):
            if self.states[r] is None or row.done:
                continue
            if self.complete(r) and getattr(row, "stops", None):
                out[r] = True
                out[r, [t for t in row.stops if t < width]] = False
            else:
                out[r] = ~self.cache.get(row.job.constraint, self.states[r][0], width)
        return out.to(device) if device is not None else out

    def keep(self, idx: list[int]) -> None:
        """Keep only rows `idx` (the batch dropped finished ones)."""
        self.rows, self.states = [self.rows[i] for i in idx], [self.states[i] for i in idx]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return scores.masked_fill(self.ban(scores.shape[-1], scores.device), float("-inf"))
