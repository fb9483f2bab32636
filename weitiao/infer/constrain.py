"""Constrained decoding for `weitiao serve`: a byte-level automaton that a reply must follow, as a LogitsProcessor.

A `Pattern` is a small grammar — fixed bytes, choices, sequences, JSON strings/numbers/objects, free text
until a trigger — and its state after any byte prefix is a hashable set of parse stacks. Before each step, a
row's allowed tokens are those whose bytes all keep the pattern alive (stop tokens only where it may end);
the mask is cached per state, so a reply walks through a few dozen distinct states and each costs at most one
pass over the vocabulary. weitiao.infer.schema turns a strict tool's JSON schema into such a grammar.
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

from weitiao.data.decode import byte_level_alphabet, special_ids
from weitiao.infer import bounds, strings
from weitiao.infer.strings import _LEADS, _cont_step

_WS = b" "
_ESC = set(b'"\\/bfnrt')
_HEX = set(b"0123456789abcdefABCDEF")
_DIGITS = set(b"0123456789")
_LITERALS = {ord("t"): b"rue", ord("f"): b"alse", ord("n"): b"ull"}


# ----------------------------------------------------------------------------- JSON, one byte at a time
# A JSON state is (mode, stack, aux): stack holds the open containers, "[" or ("{", the keys written in it, a
# frozenset: a key may not repeat, a parser keeps only its last value); aux is mode data.
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
            return ("key_or_close", (*stack, ("{", frozenset())), None)
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
            return ("key_str", stack, (b"", 0, 0))
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
            return ("key_sp", stack, None) if stack[-1] != "[" else ("value_sp", stack, False)
        if b == ord("}" if stack[-1] != "[" else "]"):
            return _after_value(stack[:-1])
        return None
    if mode == "str":
        return _str_step(stack, aux, b)
    if mode == "key_str":  # aux: (the key's bytes so far, UTF-8 bytes due, escape progress)
        got = _key_step(stack[-1][1], aux, b)
        if got is None or isinstance(got, tuple):
            return got and ("key_str", stack, got)
        return ("colon", (*stack[:-1], ("{", _add(stack[-1][1], got))), None)
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
    is_key, cont, esc = aux  # cont: UTF-8 continuation bytes still due (see _NARROW); esc: 1 after "\", 2..5 in \uXXXX
    if cont:
        left = _cont_step(cont, b)
        return None if left is None else ("str", stack, (is_key, left, 0))
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
    return ("str", stack, (is_key, _LEADS[b], 0)) if b in _LEADS else None


def _key_step(keys: frozenset | None, aux: tuple, b: int) -> tuple | str | None:
    """Inside an object's key (aux: bytes so far, UTF-8 bytes due, escape progress): the next aux, the key once its
    closing quote comes (None when `keys` already holds it: `"a"` and `"\\u0061"` alike), or None. `keys` None:
    the object's keys are not tracked (`Pattern.untracked`), so no key is read or refused."""
    raw, cont, esc = aux
    nxt = _str_step((), (False, cont, esc), b)
    if nxt is None:
        return None
    if nxt[0] == "str":
        return (raw + bytes([b]) if keys is not None else raw, *nxt[2][1:])
    if keys is None:
        return ""
    key = json.loads(b'"' + raw + b'"')
    return None if key in keys else key


def _add(keys: frozenset | None, key: str) -> frozenset | None:
    return None if keys is None else keys | {key}


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


# ----------------------------------------------------------------------------- patterns: a small grammar


_POP = object()  # a leaf's step result: the leaf is matched, go on with what lies under it
_WS_BYTES = b" \n\t\r"


class Pattern:
    """A grammar of nodes matched byte by byte as a pushdown automaton. Build nodes with `node`/`lit`/`seq`/
    `alt`, then `finish(root)`. Leaves: "lit" (fixed bytes), "str" (a JSON string's body after its opening
    quote), "num" (a JSON number; arg True: an integer), "bnum" (a number in range; arg a `bounds.Bounds`),
    "text" (a string's body, following a `strings.Text`: length, pattern, format), "json" (any JSON object,
    `json_step`), "key" (an object's key, none written before in it: see `map`), "free" (any bytes until arg, a
    trigger, has been written; arg b"": never ends), "ws" (optional whitespace), "not" (one byte not in arg). A
    state is a frozenset of stacks of (node, progress), top last: every way the bytes so far can be read (anyOf,
    enum, and a number's end need more than one)."""

    def __init__(self) -> None:
        self.nodes: list[tuple] = []
        self._memo: dict = {}

    def node(self, kind: str, arg: Any = None) -> int:
        self.nodes.append((kind, arg))
        return len(self.nodes) - 1

    def lit(self, data: bytes) -> int:
        return self.node("lit", data) if data else self.seq()

    def seq(self, *ids: int) -> int:
        return self.node("seq", ids)

    def alt(self, *ids: int) -> int:
        return self.node("alt", ids)

    def map(self, value: int) -> int:
        """An object's entries after its "{", each key new in it (a parser keeps only a repeated key's last value),
        each value following node `value`, and its "}". Its progress: (the keys written, phase)."""
        parts = (value, self.lit(b"}"), self.lit(b", "), self.lit(b": "), self.lit(b'"'), self.node("key"))
        return self.node("map", parts)

    def define(self, i: int, *ids: int) -> None:
        """Set placeholder node `i` (made by `seq()`) to the sequence `ids`: a recursive rule."""
        self.nodes[i] = ("seq", ids)

    def finish(self, root: int) -> Pattern:
        self.key = (root, tuple(self.nodes))  # equal grammars share masks
        self.start = self._closure({((root, self._init(root)),)})
        return self

    def opens(self, i: int) -> bool:
        """Whether node `i` can match anything (a rule that only refers to itself cannot)."""
        return bool(self._closure({((i, self._init(i)),)}))

    def _init(self, i: int) -> Any:
        kind, _ = self.nodes[i]
        init = {"lit": 0, "str": (False, 0, 0), "num": "", "bnum": "", "json": JSON_START, "free": 0, "ws": 0, "not": 0}
        if kind == "text":
            return (self.nodes[i][1].init, None)
        return (frozenset(), "first") if kind == "map" else init.get(kind)

    def _closure(self, stacks: set) -> frozenset:
        """`stacks` with every seq/alt expanded, until each stack has a leaf on top (or is empty: matched)."""
        out, todo, seen = set(), list(stacks), set()
        while todo:
            st = todo.pop()
            if st in seen:  # a rule that reaches itself without a byte (anyOf: [{$ref: "#"}]) adds nothing
                continue
            seen.add(st)
            if not st:
                out.add(st)
                continue
            i, sub = st[-1]
            kind, arg = self.nodes[i]
            if kind == "seq":
                todo.append(st[:-1] + tuple((c, self._init(c)) for c in reversed(arg)))
            elif kind == "alt":
                todo.extend(st[:-1] + ((c, self._init(c)),) for c in arg)
            elif kind == "map":  # phases: first (after "{"), key (after ", "), value (after a key), next
                value, close, comma, colon, quote, key = arg
                keys, phase = sub
                if phase in ("first", "next"):
                    todo.append(st[:-1] + ((close, 0),))
                if phase in ("first", "key"):
                    todo.append(st[:-1] + ((i, (keys, "value")), (key, (keys, b"", 0, 0)), (quote, 0)))
                elif phase == "next":
                    todo.append(st[:-1] + ((i, (keys, "key")), (comma, 0)))
                else:
                    todo.append(st[:-1] + ((i, (keys, "next")), (value, self._init(value)), (colon, 0)))
            else:
                out.add(st)
                if kind == "ws" or (kind == "num" and sub in ("0", "int", "frac", "exp")):  # may end here
                    todo.append(st[:-1])
                elif kind == "bnum" and bounds.ends(arg, sub):
                    todo.append(st[:-1])
        return frozenset(out)

    def _leaf(self, kind: str, arg: Any, sub: Any, b: int) -> Any:
        if kind == "lit":
            return None if arg[sub] != b else _POP if sub + 1 == len(arg) else sub + 1
        if kind == "str":
            nxt = _str_step((), sub, b)
            return None if nxt is None else nxt[2] if nxt[0] == "str" else _POP
        if kind == "num":
            if sub == "":
                nxt = "-" if b == ord("-") else ("0" if b == ord("0") else "int") if b in _DIGITS else None
            else:
                nxt = _num_step(sub, b)
            return None if arg and nxt in ("frac0", "exp0") else nxt
        if kind == "key":  # sub: (the keys written in the object, then _key_step's aux)
            got = _key_step(sub[0], sub[1:], b)
            return got if got is None else (sub[0], *got) if isinstance(got, tuple) else (_POP, got)
        if kind == "bnum":
            return bounds.step(arg, sub, b)
        if kind == "text":
            got = strings.step(arg, sub, b)
            return _POP if got is True else got
        if kind == "json":
            nxt = json_step(sub, b)
            return None if nxt is None else _POP if nxt[0] == "done" else nxt
        if kind == "free":
            if not arg:
                return 0
            seen = arg[:sub] + bytes([b])
            k = next(k for k in range(len(seen), -1, -1) if seen.endswith(arg[:k]))  # the trigger's part written
            return _POP if k == len(arg) else k
        if kind == "ws":
            return 0 if b in _WS_BYTES else None
        return _POP if b not in arg else None  # "not"

    def step(self, state: frozenset | None, b: int) -> frozenset | None:
        """The state after byte `b`, or None when no reading of the bytes goes on with it."""
        if state is None:
            return None
        key = (state, b)
        if key in self._memo:
            return self._memo[key]
        nxt = set()
        for st in state:
            if st:
                i, sub = st[-1]
                got = self._leaf(*self.nodes[i], sub, b)
                if got is None:
                    continue
                if got is _POP:
                    nxt.add(st[:-1])
                elif isinstance(got, tuple) and got[0] is _POP:  # a key written: its map (below it) records it
                    m, (keys, phase) = st[-2]
                    nxt.add(st[:-2] + ((m, (_add(keys, got[1]), phase)),))
                else:
                    nxt.add(st[:-1] + ((i, got),))
        out = self._closure(nxt) or None if nxt else None
        if len(self._memo) > 100_000:
            self._memo.clear()
        self._memo[key] = out
        return out

    def untracked(self, state: frozenset) -> frozenset:
        """`state` with its objects' keys forgotten: the same state, but that a key may repeat. Its mask holds the
        real state's, and differs from it only on tokens holding a quote, which alone can close a key; it is
        shared by every reply, where the real states (keys written, a key's bytes so far) are each new."""
        out = set()
        for st in state:
            forget = []
            for i, sub in st:
                kind = self.nodes[i][0]
                if kind == "map":
                    sub = (None, sub[1])
                elif kind == "key":
                    sub = (None, b"", *sub[2:])
                elif kind == "json" and sub[1]:
                    mode, stack, aux = sub
                    stack = tuple(x if x == "[" else ("{", None) for x in stack)
                    sub = (mode, stack, (b"", *aux[1:]) if mode == "key_str" else aux)
                forget.append((i, sub))
            out.add(tuple(forget))
        return frozenset(out)

    def open_key(self, state: frozenset) -> tuple | str | None:
        """Inside an object's key? None: no reading of `state` is (a token's one quote then closes no key);
        (the key so far, the object's keys) where the one reading is, between characters; "walk": otherwise."""
        keyed = []
        for st in state:
            if st and self.nodes[st[-1][0]][0] == "key":
                keyed.append(st[-1][1])
            elif st and self.nodes[st[-1][0]][0] == "json" and st[-1][1][0] == "key_str":
                _, stack, aux = st[-1][1]
                keyed.append((stack[-1][1], *aux))
        if not keyed:
            return None
        if len(state) > 1 or keyed[0][0] is None or keyed[0][2] or keyed[0][3]:
            return "walk"
        keys, raw = keyed[0][:2]
        return json.loads(b'"' + raw + b'"'), keys

    def done(self, state: frozenset | None) -> bool:
        """The bytes so far are a whole match: a stop token may follow (free text may go on, too)."""
        return state is not None and any(not st or self.nodes[st[-1][0]][0] == "free" for st in state)

    def final(self, state: frozenset | None) -> bool:
        """Matched, and nothing more may follow: only a stop token."""
        return bool(state) and all(not st for st in state)

    def fast(self, state: frozenset) -> tuple | None:
        """A shortcut for the mask: ("plain", due, room) inside a JSON string with `due` UTF-8 continuation bytes
        still due, where plain string bytes keep every reading alive (room: how many characters they may begin,
        None: any); ("without", byte) in free text whose trigger
        starts with `byte`, where a token without that byte stays free text; None: walk every token."""
        tops = {self.nodes[st[-1][0]] + (st[-1][1],) if st else None for st in state}
        if len(tops) != 1 or None in tops:
            return None
        kind, arg, sub = tops.pop()
        if kind == "str" and sub[2] == 0:
            return ("plain", sub[1], None)
        if kind == "key" and sub[3] == 0:  # plain bytes never close the key, so never repeat one
            return ("plain", sub[2], None)
        if kind == "text" and (sub[1] is None or sub[1][0] == "utf8"):  # see MaskCache.text
            return ("text", 0 if sub[1] is None else sub[1][3], arg, sub[0])
        if kind == "free" and sub == 0:
            return ("without", arg[0] if arg else -1)
        return None


def json_object() -> Pattern:
    p = Pattern()
    return p.finish(p.node("json"))


def tool_call_pattern(
    tool_format: str, names: list[str], args: list | None = None, auto: bool = False, p: Pattern | None = None
) -> Pattern:
    """Calls in the template's syntax to one of `names`. `args[k]`: the node in `p` that `names[k]`'s arguments
    follow (None: any JSON object). Forced (`auto` False): one call or more (hermes: blocks joined by a newline,
    as Qwen's template writes them; llama3_json: joined by "; "). `auto`: text is free until a call opens
    (hermes: `<tool_call>`, then free again after it; llama3_json: a reply opening with `{` is calls joined by
    "; "), and each call follows the pattern. Where one call is wanted, serve cuts the reply after it
    (weitiao.infer.tools.first_call_end) instead of banning what follows: a mask that did made the token that
    closes a call and opens the next (`}};`) impossible, and a model that meant it was pushed off its course."""
    p = p or Pattern()
    args = args or [None] * len(names)
    key = "arguments" if tool_format == "hermes" else "parameters"
    heads = [
        p.seq(p.lit(f'{json.dumps(n)[1:-1]}", "{key}": '.encode()), p.node("json") if a is None else a)
        for n, a in zip(names, args)
    ]
    if tool_format == "hermes":
        body = p.seq(p.lit(b'\n{"name": "'), p.alt(*heads), p.lit(b"}\n</tool_call>"))
        if not auto:
            calls = p.seq()
            p.define(calls, p.lit(b"<tool_call>"), body, p.alt(p.seq(), p.seq(p.lit(b"\n"), calls)))
            return p.finish(calls)
        text = p.seq()
        p.define(text, p.node("free", b"<tool_call>"), body, text)
        return p.finish(text)
    call = p.seq(p.lit(b'{"name": "'), p.alt(*heads), p.lit(b"}"))  # llama3_json, joined by "; "
    calls = p.seq()
    p.define(calls, call, p.alt(p.seq(p.lit(b"; "), calls), p.seq()))
    if not auto:
        return p.finish(calls)
    prose = p.seq(p.node("not", b"{" + _WS_BYTES), p.node("free", b""))
    return p.finish(p.seq(p.node("ws"), p.alt(calls, prose, p.seq())))


# ----------------------------------------------------------------------------- tokens → bytes → masks


def _plain_run(seq: bytes | None, cont: int) -> int:
    """UTF-8 continuation bytes due after `seq` inside a JSON string with `cont` due before; -1 when `seq` holds
    a quote, backslash, control byte or breaks UTF-8 (then the slow walk decides)."""
    if not seq:
        return -1
    for b in seq:
        if cont:
            if (left := _cont_step(cont, b)) is None:
                return -1
            cont = left
        elif b < 0x20 or b in (0x22, 0x5C, 0x7F):
            return -1
        elif b >= 0x80:
            if b not in _LEADS:
                return -1
            cont = _LEADS[b]
    return cont


class TokenBytes:
    """The bytes each token id stands for (None: never allowed, e.g. special tokens), per tokenizer."""

    def __init__(self, table: list[bytes | None], stop_ids: set[int]) -> None:
        self.table, self.stop_ids = table, stop_ids
        # Two shortcuts that keep a mask from walking every token's bytes in Python (a 150k vocabulary):
        # a token's first byte (-1: never allowed), and inside a JSON string, the UTF-8 continuation bytes
        # still due after a token made of plain string bytes, starting from each `cont` (-1: not plain there).
        self.first = torch.tensor([seq[0] if seq else -1 for seq in table])
        self.quotes = torch.tensor([seq.count(34) if seq else 0 for seq in table])  # keys close at a quote
        self.plain = torch.tensor([[_plain_run(seq, c) for c in range(8)] for seq in table])
        # for constrained strings (MaskCache.text): characters begun, the ASCII bytes held (two 64-bit masks,
        # as signed int64), all of them and those after the first byte, and whether one after it is not ASCII
        self.chars = torch.tensor([sum(not 0x80 <= b < 0xC0 for b in seq) if seq else 0 for seq in table])
        held = [sum(1 << b for b in set(seq) if b < 0x80) if seq else 0 for seq in table]
        self.ascii = torch.tensor([[_int64(h), _int64(h >> 64)] for h in held])
        rest = [sum(1 << b for b in set(seq[1:]) if b < 0x80) if seq else 0 for seq in table]  # after the first
        self.rest = torch.tensor([[_int64(h), _int64(h >> 64)] for h in rest])
        self.rest_wide = torch.tensor([len(seq) > 1 and max(seq[1:]) >= 0x80 if seq else False for seq in table])
        self._holding: dict[int, torch.Tensor] = {}

    def holding(self, byte: int) -> torch.Tensor:
        """True for tokens whose bytes hold `byte` (-1: none), and for those never allowed."""
        if byte not in self._holding:
            self._holding[byte] = torch.tensor([not seq or byte in seq for seq in self.table])
        return self._holding[byte]

    @staticmethod
    def of(tokenizer: Any, stop_ids: set[int]) -> TokenBytes | None:
        """None when the tokenizer's pieces cannot be mapped to bytes (then constrained decoding is refused)."""
        table = byte_table(tokenizer, stop_ids)
        return None if table is None else TokenBytes(table, stop_ids)


def byte_table(tokenizer: Any, stop_ids: set[int]) -> list[bytes | None] | None:
    """The bytes of each token id (None: special tokens and `stop_ids`); None for a tokenizer whose pieces are
    neither byte-level BPE nor SentencePiece with byte fallback."""
    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
    decoder = json.loads(backend.to_str()).get("decoder") if backend is not None else None
    kind = json.dumps(decoder)
    byte_level = '"ByteLevel"' in kind
    if not byte_level and '"ByteFallback"' not in kind:
        return None
    unicode_to_byte = byte_level_alphabet()
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
            table.append(bytes(unicode_to_byte[c] for c in piece) if all(c in unicode_to_byte for c in piece) else None)
        elif len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            table.append(bytes([int(piece[3:5], 16)]))
        else:
            table.append(piece.replace("▁", " ").encode())
    return table


class MaskCache:
    """Allowed-token masks per (pattern, state) for one tokenizer, least recently used dropped past `size`."""

    def __init__(self, toks: TokenBytes, size: int = 512) -> None:
        self.toks, self.size, self.masks = toks, size, OrderedDict()

    def get(self, pattern: Pattern, state: frozenset | None, width: int) -> torch.Tensor:
        toks = self.toks
        key = (pattern.key, state)
        mask = self.masks.get(key)
        if mask is None:
            mask = torch.zeros(width, dtype=torch.bool)
            loose = pattern.untracked(state) if state is not None else state
            if loose != state:  # only a token holding a quote may close a key
                mask = self.get(pattern, loose, width).clone()
                n = min(width, len(toks.table))
                quoted = mask[:n] & toks.holding(ord('"'))[:n]
                inside = pattern.open_key(state)
                if inside != "walk":  # a token with one quote closes the key written so far, or no key
                    one = quoted & (toks.quotes[:n] == 1)
                    quoted &= ~one
                    if inside is not None:
                        so_far, keys = inside
                        repeats = {k[len(so_far) :].encode() for k in keys if k.startswith(so_far)}
                        for i in one.nonzero().flatten().tolist():
                            before = toks.table[i][: toks.table[i].index(34)]
                            if b"\\" in before:
                                quoted[i] = True  # an escape: walk it
                            elif before in repeats:
                                mask[i] = False
                idx = quoted.nonzero().flatten().tolist()
                mask[idx] = torch.tensor([_walks(pattern, state, toks.table[i]) for i in idx], dtype=torch.bool)
            elif state is None or pattern.final(state):  # complete (or lost): only a stop token may follow
                mask[[i for i in toks.stop_ids if i < width]] = True
            else:
                n = min(width, len(toks.table))
                ok = torch.tensor([pattern.step(state, b) is not None for b in range(256)] + [False])
                walk = ok[toks.first[:n]]  # -1 indexes the trailing False
                fast = pattern.fast(state)
                if fast is not None:  # tokens sure to keep the pattern alive, without a walk
                    if fast[0] == "plain":
                        sure = toks.plain[:n, fast[1]] >= 0
                    elif fast[0] == "text":
                        sure, dead = self.text(*fast[1:], n)
                        walk &= ~dead
                    else:
                        sure = ~toks.holding(fast[1])[:n]
                    mask[:n] |= sure
                    walk &= ~sure
                idx = walk.nonzero().flatten().tolist()  # one write: a tensor's item write costs microseconds
                mask[idx] = torch.tensor([_walks(pattern, state, toks.table[i]) for i in idx], dtype=torch.bool)
                if pattern.done(state):  # free text that may end here
                    mask[[i for i in toks.stop_ids if i < width]] = True
            self.masks[key] = mask
            if len(self.masks) > self.size:
                self.masks.popitem(last=False)
        self.masks.move_to_end(key)
        return mask

    def text(self, due: int, text: strings.Text, state: tuple, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens of plain string bytes sure to keep a constrained string alive (`due`: UTF-8 bytes due), and those
        sure to end it: where every character keeps it alive (`Text.loose`), a token within the length left, and
        one past it; else a token whose characters after its first (all of them, with bytes due) leave the
        automaton's states as they are (`Text.loop`), with a count the length bounds still allow (`Text.room`)."""
        toks = self.toks
        plain, chars = toks.plain[:n, due] >= 0, toks.chars[:n]
        none = torch.zeros(n, dtype=torch.bool)
        room = text.loose(state)
        if room != -1:
            fits = chars + (due > 0) <= room if room is not None else ~none
            return plain & fits, plain & ~fits
        most = int(chars.max()) + 1 if n else 1
        if due:  # the character due must loop too
            bits, wide = text.loop(state[0])
            if not wide:
                return none, none
            inside = ((toks.ascii[:n, 0] & ~_int64(bits)) == 0) & ((toks.ascii[:n, 1] & ~_int64(bits >> 64)) == 0)
            return plain & inside & torch.tensor(text.room(state, most))[chars + 1], none
        # after the first character: per first byte (ASCII), the states it leads to, their loop and room
        lo, hi = torch.zeros(257, dtype=torch.long), torch.zeros(257, dtype=torch.long)
        wide = torch.zeros(257, dtype=torch.bool)
        ok = torch.zeros(257, most + 1, dtype=torch.bool)
        for c in range(0x20, 0x7F):
            after = text.char(state, c) if c not in (0x22, 0x5C) else None
            if after is not None:
                bits, wide[c] = text.loop(after[0])
                lo[c], hi[c] = _int64(bits), _int64(bits >> 64)
                ok[c] = torch.tensor(text.room(after, most))
        after = text.wide(state)  # where every non-ASCII first character leads, when it is one place
        if after is not None:
            bits, wide[0x80] = text.loop(after[0])
            lo[0x80:256], hi[0x80:256] = _int64(bits), _int64(bits >> 64)
            wide[0x80:256], ok[0x80:256] = wide[0x80], torch.tensor(text.room(after, most))
        first = toks.first[:n]
        inside = ((toks.rest[:n, 0] & ~lo[first]) == 0) & ((toks.rest[:n, 1] & ~hi[first]) == 0)
        known = (first < 0x80) | (after is not None)
        return plain & known & inside & (wide[first] | ~toks.rest_wide[:n]) & ok[first, chars - 1], none


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
        return state is None or self.rows[r].job.constraint.final(state)

    def ban(self, width: int, device: Any = None) -> torch.Tensor:
        """[rows, width] True where a row may not go; unconstrained and finished rows ban nothing. Where the
        pattern may end, the row's own `.stops` are what may end it, when it has them."""
        out = torch.zeros(len(self.rows), width, dtype=torch.bool)
        for r, row in enumerate(self.rows):
            if self.states[r] is None or row.done:
                continue
            state, pattern = self._advance(r), row.job.constraint
            out[r] = ~self.cache.get(pattern, state, width)
            stops = getattr(row, "stops", None)
            if stops and (state is None or pattern.done(state)):
                out[r, [t for t in self.toks.stop_ids if t < width]] = True
                out[r, [t for t in stops if t < width]] = False
        return out.to(device) if device is not None else out

    def keep(self, idx: list[int]) -> None:
        """Keep only rows `idx` (the batch dropped finished ones)."""
        self.rows, self.states = [self.rows[i] for i in idx], [self.states[i] for i in idx]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return scores.masked_fill(self.ban(scores.shape[-1], scores.device), float("-inf"))


def _int64(bits: int) -> int:
    """The low 64 bits of `bits` as a signed int64 (a torch bit mask)."""
    low = bits & (1 << 64) - 1
    return low - (1 << 64) if low >> 63 else low


def _walks(pattern: Any, state: Any, data: bytes) -> bool:
    """Whether `pattern` stays alive from `state` through every byte of `data`."""
    for b in data:
        state = pattern.step(state, b)
        if state is None:
            return False
    return True
