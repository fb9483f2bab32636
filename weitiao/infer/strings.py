"""Constrained JSON strings for constrained decoding (the "text" leaf of weitiao.infer.constrain): JSON Schema's
`minLength`, `maxLength`, `pattern` and `format` on a string, kept exactly, byte by byte.

A string's characters are read after JSON unescaping (`\\u4e2d` is one character, 中, as JSON Schema counts them:
code points). A prefix is allowed while some string that follows the schema can still start with it, so the mask
never leads into a dead end: a character automaton (an NFA read as sets of states) gives each set the lengths a
string may still take to an accepting state (`_lengths`), and a byte inside a character (UTF-8, `\\u` escapes) is
allowed while some character it can still become is.

`pattern` is an ECMA-262 regex, NOT anchored (JSON Schema: the string holds a match somewhere, `re.search`); a
pattern anchors itself with `^...$` (pydantic writes them). xgrammar and outlines read a pattern as the whole string
instead; here the reply follows the schema as a validator reads it. Supported: literals, `.`, classes and ranges,
`\\d \\w \\s` (and negations), `\\t \\n \\r \\f \\v \\0 \\xHH \\uHHHH`, `\\p{..}` and `\\P{..}` (general categories
and scripts, as the `regex` package reads them: `_property`), escaped syntax characters, groups (`(...)`, `(?:...)`,
`(?<name>...)`), alternation, `* + ? {n} {n,} {n,m}` (lazy too), `^` at the start and `$` at the end of a top-level
alternative. Refused (`UnsupportedRegex`): backreferences, lookarounds, `\\b`, inline flags, `^`/`$` elsewhere,
other escapes. Where ECMA-262 and Python's `re` (which Python validators use) read a class differently, the string
keeps to both: `\\d` is [0-9], `\\w` [A-Za-z0-9_], `.` no line terminator, `\\D \\W \\S` no character either reads
as a digit, word or space.

`format` is a pattern of our own (`FORMATS`); beside a `pattern`, the two automata are read as one product (a string
holds both): date, time and date-time as RFC 3339 with real dates (Feb 29 in leap years only, no year 0000, no leap
second, `T` and `Z` upper case), duration (RFC 3339 appendix A: P1Y2M3DT4H5M6S, P2W; numbers of 6 digits at most,
which Python's timedelta holds), uuid (any version), email (a dot-atom local part @ a dotted domain, no quoted or IP
forms), hostname (RFC 1123), ipv4 (no leading zeros), ipv6 (hex groups with `::`, no embedded ipv4), uri
(scheme://host[:port] and an optional path, query and fragment of unreserved and sub-delims characters and
%-escapes: a practical subset of RFC 3986, which pydantic's AnyUrl reads).

A string holds no surrogate (`\\ud83d` is refused: write the character as UTF-8) and no raw DEL, as the plain
string leaf.
"""

from __future__ import annotations

import array
import re
import sys
from functools import cache, lru_cache

MAX = 0x10FFFF
_SURR = (0xD800, 0xDFFF)
_ANY = ((0, _SURR[0] - 1), (_SURR[1] + 1, MAX))
_LINE = ((0x0A, 0x0A), (0x0D, 0x0D), (0x2028, 0x2029))  # ECMA-262's line terminators: `.` matches none
_DIGIT = ((0x30, 0x39),)
_WORD = ((0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A))
_SPACE = ((0x09, 0x0D), (0x20, 0x20), (0xA0, 0xA0), (0x1680, 0x1680), (0x2000, 0x200A), (0x2028, 0x2029))
_SPACE += ((0x202F, 0x202F), (0x205F, 0x205F), (0x3000, 0x3000))  # ECMA's \s and str.isspace both (no U+FEFF)
_SYNTAX = set("^$\\.*+?()[]{}|/-")
_ESCAPES = {"t": 9, "n": 10, "r": 13, "f": 12, "v": 11, "0": 0}
MAX_STATES = 4000  # NFA states; {n,m} copies its atom m times
MAX_LENGTH = 10_000  # minLength/maxLength: lengths are tracked up to the larger one


class UnsupportedRegex(ValueError):
    """A construct of the pattern that the mask cannot enforce (the message names it)."""


def _norm(ranges) -> tuple:
    out: list[list[int]] = []
    for lo, hi in sorted(r for r in ranges if r[0] <= r[1]):
        if out and lo <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return tuple((a, b) for a, b in out)


def _minus(a, b) -> tuple:
    """Code points in ranges `a`, not in `b`."""
    out, b = [], _norm(b)
    for lo, hi in _norm(a):
        for blo, bhi in b:
            if bhi < lo or blo > hi:
                continue
            if blo > lo:
                out.append((lo, blo - 1))
            lo = bhi + 1
        if lo <= hi:
            out.append((lo, hi))
    return _norm(out)


@cache
def _python_class(kind: str) -> tuple:
    """Code points Python's `re` reads as \\d, \\w or \\s (Unicode), which \\D, \\W, \\S must avoid."""
    test = {"d": str.isdecimal, "w": lambda c: c.isalnum() or c == "_", "s": str.isspace}[kind]
    out, start = [], None
    for cp in range(sys.maxunicode + 1):
        if test(chr(cp)):
            start = cp if start is None else start
        elif start is not None:
            out.append((start, cp - 1))
            start = None
    return _norm(out + ([(start, MAX)] if start is not None else []))


def _negated(kind: str) -> tuple:
    ecma = {"d": _DIGIT, "w": _WORD, "s": _SPACE + ((0xFEFF, 0xFEFF),)}[kind]
    return _minus(_ANY, ecma + _python_class(kind))


_GC = {  # ECMA-262's General_Category values: short name → long name (and the old ones it also takes)
    "L": "Letter", "LC": "Cased_Letter", "Lu": "Uppercase_Letter", "Ll": "Lowercase_Letter",
    "Lt": "Titlecase_Letter", "Lm": "Modifier_Letter", "Lo": "Other_Letter", "M": "Mark", "Mn": "Nonspacing_Mark",
    "Mc": "Spacing_Mark", "Me": "Enclosing_Mark", "N": "Number", "Nd": "Decimal_Number", "Nl": "Letter_Number",
    "No": "Other_Number", "P": "Punctuation", "Pc": "Connector_Punctuation", "Pd": "Dash_Punctuation",
    "Ps": "Open_Punctuation", "Pe": "Close_Punctuation", "Pi": "Initial_Punctuation", "Pf": "Final_Punctuation",
    "Po": "Other_Punctuation", "S": "Symbol", "Sm": "Math_Symbol", "Sc": "Currency_Symbol", "Sk": "Modifier_Symbol",
    "So": "Other_Symbol", "Z": "Separator", "Zs": "Space_Separator", "Zl": "Line_Separator",
    "Zp": "Paragraph_Separator", "C": "Other", "Cc": "Control", "Cf": "Format", "Cs": "Surrogate",
    "Co": "Private_Use", "Cn": "Unassigned",
}  # fmt: skip
_GC_NAMES = {**{v: k for k, v in _GC.items()}, **dict.fromkeys(_GC)} | {
    "Combining_Mark": "M", "digit": "Nd", "punct": "P", "cntrl": "Cc"
}  # fmt: skip
_GC_NAMES = {name: short or name for name, short in _GC_NAMES.items()}
_PROPERTIES = "general categories (L, Lu, Ll, Lo, N, Nd, P, S, Z, ... or their long names, gc=...), scripts (Han, "
_PROPERTIES += "Latin, Script=..., sc=..., Script_Extensions=..., scx=...), Any, ASCII, Assigned"


@cache
def _regex_class(prop: str) -> tuple:
    """The code points the `regex` package reads as \\p{prop} (Python's `re` has no \\p; validators that read it in
    Python use `regex`)."""
    import regex

    return _norm((a, b - 1) for a, b in (m.span() for m in regex.finditer(rf"\p{{{prop}}}+", _every())))


@cache
def _every() -> str:
    """Every code point, each at its own index."""
    return array.array("I", range(MAX + 1)).tobytes().decode("utf-32-le", "surrogatepass")


def _property(name: str, neg: bool) -> tuple:
    """\\p{name} (neg: \\P{name}) as code point ranges, or UnsupportedRegex naming what is supported."""
    key, eq, value = name.partition("=")
    if not eq:
        key, value = ("gc", name) if name in _GC_NAMES else ("", name)
    if key in ("General_Category", "gc") and value in _GC_NAMES:
        sets = [_regex_class(f"gc={_GC_NAMES[value]}")]
    elif not eq and value in ("Any", "ASCII", "Assigned"):
        sets = [{"Any": ((0, MAX),), "ASCII": ((0, 0x7F),)}.get(value) or _regex_class("Assigned")]
    elif key in ("Script", "sc", "Script_Extensions", "scx", "") and re.fullmatch(r"[A-Za-z_]+", value):
        kinds = {"Script": ["sc"], "sc": ["sc"], "Script_Extensions": ["scx"], "scx": ["scx"]}.get(key, ["sc", "scx"])
        import regex

        try:  # a bare script name: Script in Python's regex, Script_Extensions in Rust's (pydantic): keep to both
            sets = [_regex_class(f"{k}={value}") for k in kinds]
        except regex.error:  # no script of that name
            raise UnsupportedRegex(f"the property \\p{{{name}}} (supported: {_PROPERTIES})") from None
    else:
        raise UnsupportedRegex(f"the property \\p{{{name}}} (supported: {_PROPERTIES})")
    if neg:
        return _minus(_ANY, [r for x in sets for r in x])
    out = sets[0]
    for x in sets[1:]:
        out = _meet(out, x)
    return _minus(out, (_SURR,))


class _Parser:
    """ECMA-262 pattern → AST: ("chars", ranges), ("seq", [...]), ("alt", [...]), ("rep", node, lo, hi|None),
    ("bol",), ("eol",)."""

    def __init__(self, src: str) -> None:
        self.src, self.i = src, 0

    def fail(self, what: str) -> None:
        raise UnsupportedRegex(f"{what} at {self.i} in {self.src!r}")

    def peek(self) -> str | None:
        return self.src[self.i] if self.i < len(self.src) else None

    def parse(self) -> tuple:
        node = self.alt()
        if self.i < len(self.src):
            self.fail(f"unbalanced {self.src[self.i]!r}")
        return node

    def alt(self) -> tuple:
        items = [self.seq()]
        while self.peek() == "|":
            self.i += 1
            items.append(self.seq())
        return ("alt", items) if len(items) > 1 else items[0]

    def seq(self) -> tuple:
        items = []
        while self.peek() not in (None, "|", ")"):
            atom = self.atom()
            items.append(self.quantified(atom))
        return ("seq", items)

    def quantified(self, atom: tuple) -> tuple:
        c = self.peek()
        if c not in ("*", "+", "?", "{"):
            return atom
        if atom[0] in ("bol", "eol"):
            self.fail("a quantifier on an anchor")
        if c == "{":
            end = self.src.find("}", self.i)
            body = self.src[self.i + 1 : end] if end > 0 else ""
            lo, comma, hi = body.partition(",")
            if not (lo.isdigit() and (hi.isdigit() or not hi)):
                self.fail("'{' that is no {n}, {n,} or {n,m} quantifier (escape it: \\{)")
            lo_n, hi_n = int(lo), (int(hi) if hi else None if comma else int(lo))
            if hi_n is not None and hi_n < lo_n:
                self.fail(f"{{{body}}} with its maximum under its minimum")
            self.i = end + 1
        else:
            lo_n, hi_n = {"*": (0, None), "+": (1, None), "?": (0, 1)}[c]
            self.i += 1
        if self.peek() == "?":  # lazy: the same strings match
            self.i += 1
        if self.peek() in ("*", "+", "?", "{"):
            self.fail(f"a quantifier after a quantifier ({self.peek()!r})")
        return ("rep", atom, lo_n, hi_n)

    def atom(self) -> tuple:
        c = self.src[self.i]
        self.i += 1
        if c == "(":
            if self.src.startswith("?:", self.i):
                self.i += 2
            elif self.src.startswith("?<", self.i) and self.src[self.i + 2 : self.i + 3] not in ("=", "!"):
                end = self.src.find(">", self.i)
                if end < 0:
                    self.fail("an unclosed group name")
                self.i = end + 1
            elif self.peek() == "?":
                kinds = {"?=": "a lookahead", "?!": "a lookahead", "?<=": "a lookbehind", "?<!": "a lookbehind"}
                what = next((v for k, v in kinds.items() if self.src.startswith(k, self.i)), "an inline flag group")
                self.i -= 1
                self.fail(what)
            node = self.alt()
            if self.peek() != ")":
                self.fail("an unclosed '('")
            self.i += 1
            return node
        if c == "^":
            return ("bol",)
        if c == "$":
            return ("eol",)
        if c == ".":
            return ("chars", _minus(_ANY, _LINE))
        if c == "[":
            return ("chars", self.cls())
        if c in ")*+?{":
            self.i -= 1
            self.fail(f"a lone {c!r}")
        if c == "\\":
            return ("chars", self.escape(in_class=False))
        return ("chars", ((ord(c), ord(c)),))

    def escape(self, in_class: bool) -> tuple:
        c = self.peek()
        if c is None:
            self.fail("a trailing backslash")
        self.i += 1
        if c in "dws":
            return {"d": _DIGIT, "w": _WORD, "s": _SPACE}[c]
        if c in "DWS":
            return _negated(c.lower())
        if c in _ESCAPES and not (c == "0" and (self.peek() or "").isdigit()):
            return ((_ESCAPES[c],) * 2,)
        if c == "b" and in_class:
            return ((8, 8),)
        if c in "xu":
            n = 2 if c == "x" else 4
            digits = self.src[self.i : self.i + n]
            if len(digits) != n or any(d not in "0123456789abcdefABCDEF" for d in digits):
                self.fail(f"\\{c} without {n} hex digits")
            self.i += n
            cp = int(digits, 16)
            if _SURR[0] <= cp <= _SURR[1]:
                self.fail("a surrogate escape")
            return ((cp, cp),)
        if c in "pP":
            end = self.src.find("}", self.i)
            if self.peek() != "{" or end < 0:
                self.i -= 2
                self.fail(f"\\{c} without {{name}}")
            name, self.i = self.src[self.i + 1 : end], end + 1
            try:
                return _property(name, c == "P")
            except UnsupportedRegex as e:
                self.i -= len(name) + 4
                self.fail(str(e))
        if c in _SYNTAX:
            return ((ord(c), ord(c)),)
        self.i -= 2
        what = {"b": "a word boundary \\b", "B": "a word boundary \\B", "k": "a backreference"}.get(c)
        self.fail(what or ("a backreference" if c.isdigit() else f"the escape \\{c}"))
        raise AssertionError

    def cls(self) -> tuple:
        neg = self.peek() == "^"
        self.i += neg
        ranges: list = []
        first = True
        while True:
            c = self.peek()
            if c is None:
                self.fail("an unclosed '['")
            if c == "]" and not first:
                self.i += 1
                break
            first = False
            lo = self.class_atom()
            if self.peek() == "-" and self.src[self.i + 1 : self.i + 2] not in ("]", ""):
                self.i += 1
                hi = self.class_atom()
                if len(lo) != 1 or len(hi) != 1 or lo[0][0] != lo[0][1] or hi[0][0] != hi[0][1]:
                    self.fail("a range with a class at one end")
                if hi[0][0] < lo[0][0]:
                    self.fail("a range out of order")
                ranges.append((lo[0][0], hi[0][0]))
            else:
                ranges.extend(lo)
        if neg:
            return _minus(_ANY, ranges)
        return _minus(ranges, (_SURR,))

    def class_atom(self) -> tuple:
        c = self.src[self.i]
        self.i += 1
        if c == "\\":
            return self.escape(in_class=True)
        if c == "[":
            self.fail("a nested '[' (escape it: \\[)")
        return ((ord(c), ord(c)),)


@lru_cache(maxsize=64)
def text(regex: str | tuple[str, ...] | None, lo: int = 0, hi: int | None = None) -> Text:
    """The `Text` for a pattern (or a tuple of patterns a string must all hold: a `pattern` beside a `format`) and
    length bounds, shared by requests (its steps are memoized)."""
    return Text(regex, lo, hi)


class _Nfa:
    """One pattern's automaton: `eps` and `moves` per state, `start`, `accept`, and `free` (accepts, loops on every
    character)."""

    def __init__(self) -> None:
        self.eps: list[list[int]] = []
        self.moves: list[list[tuple]] = []  # state → [(ranges, target)]

    def new(self) -> int:
        if len(self.eps) >= MAX_STATES:
            raise UnsupportedRegex(f"a pattern over {MAX_STATES} automaton states (shorten its {{n,m}} counts)")
        self.eps.append([])
        self.moves.append([])
        return len(self.eps) - 1

    @classmethod
    def of(cls, regex: str | None) -> _Nfa:
        self = cls()
        self.free = self.new()
        self.moves[self.free].append((_ANY, self.free))
        ast = _Parser(regex).parse() if regex is not None else None
        self.start, self.accept = self.new(), self.new()
        alts = ast[1] if ast is not None and ast[0] == "alt" else [ast]
        for a in alts:  # each alternative: anchored at either end by its own ^ / $, else any text around it
            if a is None:
                self.eps[self.start].append(self.free)
                continue
            items = list(a[1]) if a[0] == "seq" else [a]
            bol = bool(items) and items[0] == ("bol",)
            eol = bool(items) and len(items) > bol and items[-1] == ("eol",)
            items = items[bol : len(items) - eol]
            if ("bol",) in items or ("eol",) in items:
                raise UnsupportedRegex(f"'^' or '$' inside {regex!r} (only at the ends of a top-level alternative)")
            s, e = self.build(("seq", items))
            if bol:
                self.eps[self.start].append(s)
            else:
                pre = self.new()
                self.eps[self.start].append(pre)
                self.moves[pre].append((_ANY, pre))
                self.eps[pre].append(s)
            self.eps[e].append(self.accept if eol else self.free)
        self.eps[self.free].append(self.accept)
        return self

    def build(self, node: tuple) -> tuple[int, int]:
        kind = node[0]
        s = self.new()
        if kind == "chars":
            e = self.new()
            self.moves[s].append((node[1], e))
            return s, e
        if kind == "seq":
            e = s
            for item in node[1]:
                a, b = self.build(item)
                self.eps[e].append(a)
                e = b
            return s, e
        if kind == "alt":
            e = self.new()
            for item in node[1]:
                a, b = self.build(item)
                self.eps[s].append(a)
                self.eps[b].append(e)
            return s, e
        _, sub, lo, hi = node  # "rep": lo copies, then (hi - lo) optional ones or a loop
        e = s
        for _ in range(lo - (hi is None and lo > 0)):
            a, b = self.build(sub)
            self.eps[e].append(a)
            e = b
        if hi is None:  # the last copy loops (x+ is one loop, not x then x*: the same states after each x)
            a, b = self.build(sub)
            end = self.new()  # its own end: what follows must not inherit the loop
            self.eps[e].append(a)
            self.eps[b] += [a, end]
            if lo == 0:
                self.eps[a].append(end)
            return s, end
        end = self.new()
        for _ in range(hi - lo):
            self.eps[e].append(end)
            a, b = self.build(sub)
            self.eps[e].append(a)
            e = b
        self.eps[e].append(end)
        return s, end

    def closure(self, states: set) -> frozenset:
        todo, seen = list(states), set(states)
        while todo:
            for t in self.eps[todo.pop()]:
                if t not in seen:
                    seen.add(t)
                    todo.append(t)
        return frozenset(seen)

    def reads(self) -> tuple[dict[int, list[tuple]], set[int]]:
        """Without ε-moves: from the start and each state a character leads to, the moves of its closure; and
        the states among them whose closure accepts."""
        keep = {self.start} | {t for ms in self.moves for _, t in ms}
        out, accepting = {}, set()
        for s in keep:
            c = self.closure({s})
            out[s] = [m for x in c for m in self.moves[x]]
            if self.accept in c:
                accepting.add(s)
        return out, accepting

    @classmethod
    def both(cls, a: _Nfa, b: _Nfa) -> _Nfa:
        """The product automaton: a string reaches its accepting state when it reaches both `a`'s and `b`'s."""
        self = cls()
        (ma, acc_a), (mb, acc_b) = a.reads(), b.reads()
        ids: dict[tuple[int, int], int] = {}

        def pair(x: int, y: int) -> int:
            if (x, y) not in ids:
                ids[(x, y)] = self.new()
                todo.append((x, y))
            return ids[(x, y)]

        todo: list[tuple[int, int]] = []
        self.accept = self.new()
        self.start = pair(a.start, b.start)
        try:
            while todo:
                x, y = todo.pop()
                s = ids[(x, y)]
                if x in acc_a and y in acc_b:
                    self.eps[s].append(self.accept)
                for ra, ta in ma[x]:
                    for rb, tb in mb[y]:
                        if r := _meet(ra, rb):
                            self.moves[s].append((r, pair(ta, tb)))
        except UnsupportedRegex:
            raise UnsupportedRegex(f"patterns that together take over {MAX_STATES} automaton states") from None
        self.free = ids.get((a.free, b.free))
        if self.free is None:  # never reached: a state no string is in
            self.free = self.new()
            self.moves[self.free].append((_ANY, self.free))
            self.eps[self.free].append(self.accept)
        return self


def _meet(a: tuple, b: tuple) -> tuple:
    """Code points in both range tuples (each sorted and merged)."""
    out, i, j = [], 0, 0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if lo <= hi:
            out.append((lo, hi))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return tuple(out)


class Text:
    """A string's constraint as a character automaton. State (between characters): (NFA states, characters so
    far, capped at the larger length bound + 1). `free`: an NFA state that accepts and loops on every character.
    Several patterns (a tuple) are one product automaton: a string must hold each."""

    def __init__(self, regex: str | tuple[str, ...] | None, lo: int = 0, hi: int | None = None) -> None:
        self.spec = (regex, lo, hi)
        self.lo, self.hi = lo, hi
        # a pattern or format: an escape only where JSON needs one (", \, control characters, DEL), as outlines and
        # xgrammar read a pattern; else a weak model, its likelier characters masked, spells "2025" as \u0032… until
        # max_tokens. A free or length-bounded string keeps every escape (models trained on ensure_ascii text).
        self.escapes = regex is None
        self.cap = max(lo, hi or 0) + 1  # lengths from here on: bit `cap` of a length set means "cap or more"
        nfa = _Nfa.of(regex) if not isinstance(regex, tuple) else None
        for r in regex if isinstance(regex, tuple) else ():
            nfa = _Nfa.of(r) if nfa is None else _Nfa.both(nfa, _Nfa.of(r))
        nfa = nfa or _Nfa.of(None)
        self.eps, self.moves, self.free, self.start, self.accept = nfa.eps, nfa.moves, nfa.free, nfa.start, nfa.accept
        self._close = [nfa.closure({s}) for s in range(len(self.eps))]
        self.init = (self._close[self.start], 0)
        self._lens = self._lengths()
        self._step: dict = {}
        self._live: dict = {}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Text) and other.spec == self.spec

    def __hash__(self) -> int:
        return hash(self.spec)

    def _lengths(self) -> list[int]:
        """Per NFA state, the set of character counts (bits; bit `cap`: that many or more) that lead from it to
        the accepting state: a fixpoint, spread backwards from the accepting state to the states before."""
        n, full, top = len(self.eps), (1 << (self.cap + 1)) - 1, 1 << self.cap
        before: list[list[tuple[int, bool]]] = [[] for _ in range(n)]  # t → [(s, whether s → t reads a character)]
        for s in range(n):
            for t in self.eps[s]:
                before[t].append((s, False))
            for _, t in self.moves[s]:
                before[t].append((s, True))
        lens = [0] * n
        lens[self.accept] = 1
        todo = [self.accept]
        while todo:
            t = todo.pop()
            got = lens[t]
            shifted = got << 1
            shifted = (shifted & full) | (top if shifted >> (self.cap + 1) else 0)
            for s, reads in before[t]:
                new = lens[s] | (shifted if reads else got)
                if new != lens[s]:
                    lens[s] = new
                    todo.append(s)
        return lens

    def live(self, states: frozenset, count: int) -> bool:
        """Whether a string with `count` characters so far, in `states`, can still end within the bounds."""
        key = (states, count)
        if key not in self._live:
            got = 0
            for s in states:
                got |= self._lens[s]
            if len(self._live) > 200_000:  # a memo, bounded as `_step` is (a cached Text lives across requests)
                self._live.clear()
            a = max(0, self.lo - count)  # the counts k still to write that end within the bounds: a..b
            b = self.cap if self.hi is None else min(self.hi - count, self.cap - 1)
            self._live[key] = b >= a and bool(got >> a & (1 << (b - a + 1)) - 1)
        return self._live[key]

    def ends(self, state: tuple) -> bool:
        states, count = state
        return self.accept in states and count >= self.lo and (self.hi is None or count <= self.hi)

    def delta(self, states: frozenset, cp: int) -> frozenset:
        """The NFA states after character `cp` (empty: none)."""
        key = (states, cp)
        if key not in self._step:
            nxt: set = set()
            for s in states:
                for ranges, t in self.moves[s]:
                    if _holds(ranges, cp):
                        nxt |= self._close[t]
            if len(self._step) > 200_000:
                self._step.clear()
            self._step[key] = frozenset(nxt)
        return self._step[key]

    def char(self, state: tuple, cp: int) -> tuple | None:
        """The state after character `cp`, or None when no string in bounds goes on with it."""
        out = (self.delta(state[0], cp), min(state[1] + 1, self.cap))
        return out if out[0] and self.live(*out) else None

    def loop(self, states: frozenset) -> tuple[int, bool]:
        """The characters that leave `states` as they are: printable ASCII ones but '"' and '\\' (bit c set), and
        whether every non-ASCII character does."""
        key = ("loop", states)
        if key not in self._live:
            bits = sum(1 << c for c in range(0x20, 0x7F) if c not in (0x22, 0x5C) and self.delta(states, c) == states)
            cuts = {0x80, MAX + 1}
            for s in states:
                for ranges, _ in self.moves[s]:
                    cuts |= {a for a, _ in ranges if a > 0x80} | {b + 1 for _, b in ranges if b >= 0x80}
            cuts = sorted(cuts)
            wide = all(
                self.delta(states, x) == states
                for a, b in zip(cuts, cuts[1:])
                for x, _ in _minus(((a, b - 1),), (_SURR,))
            )
            self._live[key] = (bits, wide)
        return self._live[key]

    def some(self, state: tuple, lo: int, hi: int) -> bool:
        """Whether some character in [lo, hi] (surrogates excepted) keeps the string alive."""
        cuts = {lo, hi + 1}
        for s in state[0]:
            for ranges, _ in self.moves[s]:
                for a, b in ranges:
                    cuts |= {a, b + 1}
        cuts = sorted(c for c in cuts if lo <= c <= hi + 1)
        for a, b in zip(cuts, cuts[1:]):  # each piece reads the same under every move: one character tells
            for x, _ in _minus(((a, b - 1),), (_SURR,)):
                if self.char(state, x) is not None:
                    return True
        return False

    def loose(self, state: tuple) -> int | None:
        """Characters any plain text may add from here, every one keeping the string alive (`free` is among the
        states); None: no bound; -1: not so."""
        if self.free not in state[0]:
            return -1
        return None if self.hi is None else self.hi - state[1]

    def wide(self, state: tuple) -> tuple | None:
        """The state after any non-ASCII character, when all lead to one live state; else None."""
        key = ("wide", state)
        if key not in self._live:
            cuts = {0x80, MAX + 1}
            for s in state[0]:
                for ranges, _ in self.moves[s]:
                    cuts |= {a for a, _ in ranges if a > 0x80} | {b + 1 for _, b in ranges if b >= 0x80}
            cuts = sorted(cuts)
            got = {self.char(state, x) for a, b in zip(cuts, cuts[1:]) for x, _ in _minus(((a, b - 1),), (_SURR,))}
            self._live[key] = got.pop() if len(got) == 1 and None not in got else None
        return self._live[key]

    def room(self, state: tuple, most: int) -> list[bool]:
        """For k in 0..most: whether the string stays alive with k more characters that leave its states as they
        are (`loop`)."""
        states, count = state
        return [self.live(states, min(count + k, self.cap)) for k in range(most + 1)]


def _holds(ranges: tuple, cp: int) -> bool:
    lo, hi = 0, len(ranges)
    while lo < hi:
        mid = (lo + hi) // 2
        if ranges[mid][1] < cp:
            lo = mid + 1
        else:
            hi = mid
    return lo < len(ranges) and ranges[lo][0] <= cp


# ----------------------------------------------------------------------------- bytes of a JSON string
# The leaf's progress: (state, pending) with pending None between characters, ("\\",) after a backslash,
# ("u", hex so far) in a \u escape, or ("utf8", bits so far, bytes left, constrain's `cont` code, total length).

_QUOTED = {ord('"'): 0x22, ord("\\"): 0x5C, ord("/"): 0x2F, ord("b"): 8, ord("f"): 12, ord("n"): 10}
_QUOTED |= {ord("r"): 13, ord("t"): 9}
_FIRST = {2: 0x80, 3: 0x800, 4: 0x10000}
_HEXES = set(b"0123456789abcdefABCDEF")


# UTF-8 as Python decodes it (RFC 3629): no overlong forms, surrogates or code points past U+10FFFF. A string's
# `cont` is 0-3 continuation bytes due, or 4-7: after E0, ED, F0, F4, whose next byte has a narrower range.
_NARROW = {4: (0xA0, 0xBF, 1), 5: (0x80, 0x9F, 1), 6: (0x90, 0xBF, 2), 7: (0x80, 0x8F, 2)}
_LEADS = {**dict.fromkeys(range(0xC2, 0xE0), 1), **dict.fromkeys(range(0xE1, 0xF0), 2), 0xE0: 4, 0xED: 5}
_LEADS |= {**dict.fromkeys(range(0xF1, 0xF4), 3), 0xF0: 6, 0xF4: 7}


def _cont_step(cont: int, b: int) -> int | None:
    """The continuation bytes due after `b` with `cont` due (a `_NARROW` code first), or None."""
    lo, hi, left = _NARROW.get(cont, (0x80, 0xBF, cont - 1))
    return left if lo <= b <= hi else None


def step(text: Text, sub: tuple, b: int) -> tuple | bool | None:
    """The progress after byte `b`: a new progress, True when `b` is the closing quote of a string that follows
    `text`, or None."""
    state, pending = sub
    if pending is None:
        if b == 0x22:
            return True if text.ends(state) else None
        if b == 0x5C:
            short = [c for k, c in _QUOTED.items() if text.escapes or k != ord("/")]
            ok = any(text.char(state, c) for c in short) or _hex_ok(text, state, 0, 0xFFFF)
            return (state, ("\\",)) if ok else None
        if b < 0x20 or b == 0x7F:
            return None
        if b < 0x80:
            nxt = text.char(state, b)
            return None if nxt is None else (nxt, None)
        cont = _LEADS.get(b)
        if cont is None:
            return None
        total = {1: 2, 2: 3, 3: 4, 4: 3, 5: 3, 6: 4, 7: 4}[cont]
        return _pending(text, state, (b & (0x7F >> total), total - 1, cont, total))
    if pending[0] == "\\":
        if b == ord("u"):
            return (state, ("u", "")) if _hex_ok(text, state, 0, 0xFFFF) else None
        needless = b == ord("/") and not text.escapes
        nxt = text.char(state, _QUOTED[b]) if b in _QUOTED and not needless else None
        return None if nxt is None else (nxt, None)
    if pending[0] == "u":
        if b not in _HEXES:
            return None
        digits = pending[1] + chr(b)
        if len(digits) == 4:
            cp = int(digits, 16)
            ok = not _SURR[0] <= cp <= _SURR[1] and _hex_ok(text, state, cp, cp)
            nxt = text.char(state, cp) if ok else None
            return None if nxt is None else (nxt, None)
        lo, hi = int(digits.ljust(4, "0"), 16), int(digits.ljust(4, "f"), 16)
        return (state, ("u", digits)) if _hex_ok(text, state, lo, hi) else None
    _, bits, left, cont, total = pending
    nxt_cont = _cont_step(cont, b)
    if nxt_cont is None:
        return None
    return _pending(text, state, (bits << 6 | (b & 0x3F), left - 1, nxt_cont, total))


def _hex_ok(text: Text, state: tuple, lo: int, hi: int) -> bool:
    """Whether a \\u escape of a code point in [lo, hi] may follow: any the string takes, or (`Text.escapes` off)
    only those JSON cannot hold raw: control characters, the quote, the backslash and DEL."""
    if text.escapes:
        return text.some(state, lo, hi)
    if lo <= 0x1F and text.some(state, lo, min(hi, 0x1F)):
        return True
    return any(lo <= c <= hi and text.some(state, c, c) for c in (0x22, 0x5C, 0x7F))


def _pending(text: Text, state: tuple, utf8: tuple) -> tuple | None:
    bits, left, cont, total = utf8
    if left == 0:
        nxt = text.char(state, bits)
        return None if nxt is None else (nxt, None)
    lo, hi = max(bits << 6 * left, _FIRST[total]), min((bits + 1 << 6 * left) - 1, MAX)
    return (state, ("utf8", bits, left, cont, total)) if lo <= hi and text.some(state, lo, hi) else None


_YEAR = r"(000[1-9]|00[1-9]\d|0[1-9]\d\d|[1-9]\d{3})"
_LEAP = r"(\d\d(0[48]|[2468][048]|[13579][26])|(0[48]|[2468][048]|[13579][26])00)"
_DATE = (
    rf"({_YEAR}-((0[13578]|1[02])-(0[1-9]|[12]\d|3[01])|(0[469]|11)-(0[1-9]|[12]\d|30)|02-(0[1-9]|1\d|2[0-8]))"
    rf"|{_LEAP}-02-29)"
)
_TIME = r"([01]\d|2[0-3]):[0-5]\d:[0-5]\d(\.\d{1,9})?(Z|[+-]([01]\d|2[0-3]):[0-5]\d)"
_H4 = r"[0-9a-fA-F]{1,4}"
_IPV6 = "|".join(
    [rf"({_H4}:){{7}}{_H4}", rf"({_H4}:){{1,7}}:", rf"::({_H4}:){{0,6}}{_H4}", "::"]
    + [rf"({_H4}:){{{k}}}(:{_H4}){{1,{7 - k}}}" for k in range(1, 7)]
)
_OCTET = r"(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9]+(-+[A-Za-z0-9]+)*"  # no hyphen at either end
_HOST = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
_N = r"\d{1,6}"  # a duration's numbers: 6 digits at most, so that the sum fits Python's timedelta (pydantic's)
_DUR_TIME = rf"T({_N}H({_N}M({_N}S)?)?|{_N}M({_N}S)?|{_N}S)"
_DURATION = rf"P(({_N}D|{_N}M({_N}D)?|{_N}Y({_N}M({_N}D)?)?)({_DUR_TIME})?|{_DUR_TIME}|{_N}W)"  # RFC 3339 appendix A
_PORT = r"(6553[0-5]|655[0-2]\d|65[0-4]\d\d|6[0-4]\d{3}|[1-5]\d{4}|[1-9]\d{0,3})"  # 1 to 65535
_PCHAR = r"([A-Za-z0-9._~!$&'()*+,;=:@-]|%[0-9A-Fa-f]{2})"
# A URL's last host label is an IPv4 number to WHATWG parsers (pydantic's AnyUrl, browsers) when it is all digits or 0x
# and hex digits ("a.8", "a.0x1f": invalid IPv4 address): here it has a hyphen or a letter outside such a number.
_ALNUM = "[A-Za-z0-9]"
_LAST = "|".join(
    [f"{_ALNUM}+(-+{_ALNUM}+)+", f"[A-Za-z]{_ALNUM}*", f"[1-9][0-9]*[A-Za-z]{_ALNUM}*", f"0[0-9]+[A-Za-z]{_ALNUM}*"]
    + [f"0[A-WYZa-wyz]{_ALNUM}*", f"0[xX][0-9a-fA-F]*[G-Zg-z]{_ALNUM}*"]
)
_URI = rf"[A-Za-z][A-Za-z0-9+.-]*://(({_LABEL}\.)*({_LAST})|{_OCTET}(\.{_OCTET}){{3}})(:{_PORT})?"
_URI += rf"(/{_PCHAR}*)*(\?({_PCHAR}|[/?])*)?(#({_PCHAR}|[/?])*)?"
FORMATS = {
    "date": f"^{_DATE}$",
    "time": f"^{_TIME}$",
    "date-time": f"^{_DATE}T{_TIME}$",
    "uuid": r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$",
    "email": rf"^{_ATOM}(\.{_ATOM})*@{_LABEL}(\.{_LABEL})+$",  # 254 in all (FORMAT_LENGTH)
    "ipv4": rf"^{_OCTET}(\.{_OCTET}){{3}}$",
    "ipv6": f"^({_IPV6})$",
    "hostname": f"^{_HOST}$",  # RFC 1123 labels of 63 at most; 253 in all (FORMAT_LENGTH)
    "duration": f"^{_DURATION}$",
    "uri": f"^{_URI}$",
}
FORMAT_LENGTH = {"hostname": 253, "email": 254}  # a format's own maxLength (email: RFC 5321's path, as pydantic)
