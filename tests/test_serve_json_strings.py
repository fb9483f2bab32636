"""Strings under `response_format` json_schema: `minLength`/`maxLength`, `pattern` and `format`, enforced by the
mask (weitiao.infer.strings), checked against the `jsonschema` package as the independent validator.

The grammar is compared with jsonschema on every short string over a small alphabet, each written with random
JSON escapes; random byte walks through each format validate under jsonschema's FormatChecker (date-time by
`datetime.fromisoformat`, which that checker skips without rfc3339-validator); the mask's shortcuts equal the
byte walk on a tokenizer with CJK and split UTF-8 tokens; and a tiny random model served over HTTP writes replies
that validate, where json_object replies do not.
"""

from __future__ import annotations

import datetime
import itertools
import json
import random

import httpx
import jsonschema
import pytest
import torch
from conftest import walked_mask
from pydantic import AnyUrl, TypeAdapter
from test_serve_json_schema import accepts, fmt, url  # noqa: F401  (url: the served tiny model)
from test_serve_tools import client

from weitiao.infer.api import BadRequest
from weitiao.infer.constrain import MaskCache, Pattern, TokenBytes
from weitiao.infer.schema import compile_schema
from weitiao.infer.strings import FORMATS

CHECK = jsonschema.FormatChecker()


@CHECK.checks("date-time", raises=ValueError)
def _date_time(s: object) -> bool:
    """RFC 3339 (upper-case T and Z, as the mask writes them), by Python's own parser."""
    return not isinstance(s, str) or (s[10:11] == "T" and datetime.datetime.fromisoformat(s).tzinfo is not None)


@CHECK.checks("time", raises=ValueError)
def _time(s: object) -> bool:
    return not isinstance(s, str) or datetime.datetime.fromisoformat("2000-01-01T" + s).tzinfo is not None


@CHECK.checks("duration", raises=ValueError)
def _duration(s: object) -> bool:
    """As pydantic reads a timedelta (isoduration, jsonschema's own checker, is not installed)."""
    return not isinstance(s, str) or TypeAdapter(datetime.timedelta).validate_python(s) is not None


@CHECK.checks("uri", raises=ValueError)
def _uri(s: object) -> bool:
    return not isinstance(s, str) or (TypeAdapter(AnyUrl).validate_python(s) is not None and "://" in s)


@CHECK.checks("hostname")
def _hostname(s: object) -> bool:
    """RFC 1123 (fqdn, jsonschema's own checker, is not installed)."""
    labels = s.split(".") if isinstance(s, str) else []
    ok = all(0 < len(x) <= 63 and x[0] != "-" and x[-1] != "-" and x.replace("-", "").isalnum() for x in labels)
    return not isinstance(s, str) or (len(s) <= 253 and s.isascii() and ok)


def valid(value, schema: dict) -> bool:
    return jsonschema.Draft202012Validator(schema, format_checker=CHECK).is_valid(value)


def escaped(s: str, rng: random.Random, needless: bool = True) -> str:
    """`s` as a JSON string, each character escaped as \\uXXXX where JSON needs it and (`needless`) at random."""
    out = []
    for ch in s:
        must = ch in '"\\' or ord(ch) < 0x20
        out.append(f"\\u{ord(ch):04x}" if ord(ch) < 0x10000 and (must or needless and rng.random() < 0.3) else ch)
    return '"' + "".join(out) + '"'


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "string", "minLength": 2, "maxLength": 3},
        {"type": "string", "pattern": "^a(b|中)*-?$"},
        {"type": "string", "pattern": "b\\d"},  # not anchored: a match anywhere
        {"type": "string", "pattern": "^.{2}$", "maxLength": 2},
        {"type": "string", "pattern": "[^a]中$", "minLength": 3},
        {"type": "string", "pattern": "a|^b$", "maxLength": 4},
        {"type": "string", "pattern": "^(?:ab){1,2}\\x41?$"},
        {"type": ["string", "null"], "pattern": "^\\S\\s\\D$"},
        {"type": "string", "pattern": "^(a|b-)+中?$"},
        {"type": "string", "pattern": "^(?:a*b?)+-$", "minLength": 1},
        {"type": "string", "pattern": "^(-a*)*$"},  # a loop's end is its own: "a" alone must not pass
        {"type": "string", "pattern": "^((ab)*-)+b?$"},
    ],
)
def test_string_grammar_is_jsonschema_on_every_short_string(schema):
    """Every string of up to 5 characters over an alphabet with CJK, an emoji, a quote, a backslash and a tab,
    escaped at random: the grammar accepts exactly what jsonschema does. Lengths count code points after
    unescaping (`\\u4e2d` is one). No newline: Python's `$` also matches before a final one, ECMA-262's not."""
    rng = random.Random(0)
    for n in range(6):
        for chars in itertools.islice(itertools.product('ab-1中é\t"\\😀 A', repeat=n), 4000):
            s = "".join(chars)
            text = escaped(s, rng, needless=not {"pattern", "format"} & set(schema))
            assert accepts(schema, text) == valid(s, schema), (schema, s)


def walk(pattern: Pattern, rng: random.Random, most: int = 300) -> bytes | None:
    """A random reply, byte by byte among the bytes the pattern allows; it must never be left with none."""
    state, out = pattern.start, b""
    for _ in range(most):
        if pattern.done(state) and (pattern.final(state) or rng.random() < 0.1):
            return out
        ok = [b for b in range(256) if pattern.step(state, b) is not None]
        assert ok, out  # a dead end: the mask would leave the model no token
        ascii_ = [b for b in ok if 0x20 <= b < 0x7F]
        b = rng.choice(ascii_ if ascii_ and rng.random() < 0.8 else ok)
        out, state = out + bytes([b]), pattern.step(state, b)
    return None


def walks_validate(schema: dict, rng: random.Random, n: int) -> int:
    """How many of `n` random walks through `schema`'s grammar end; each that ends validates."""
    p = Pattern()
    pattern, done = p.finish(compile_schema(p, schema, "s", strict=False)), 0
    for _ in range(n):
        out = walk(pattern, rng)
        if out is not None:
            assert valid(json.loads(out), schema), out
            done += 1
    return done


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_formats_random_walks_validate(name):
    """Random walks through each format (ASCII-biased, so that the walks end) all validate, with a maxLength
    beside it; a string the format refuses is refused by the grammar too."""
    schema = {"type": "object", "properties": {"v": {"type": "string", "format": name, "maxLength": 40}}}
    schema["required"] = ["v"]
    assert walks_validate(schema, random.Random(1), 60) >= 30
    wrong = {"date": "2023-02-29", "time": "24:00:00Z", "date-time": "2024-01-01T10:00:00", "uuid": "123",
             "email": "bob", "ipv4": "01.2.3.4", "ipv6": "1::2::3", "hostname": "-a.b", "duration": "P1H",
             "uri": "http://a b"}[name]  # fmt: skip
    assert not valid(wrong, schema["properties"]["v"])
    assert not accepts(schema, json.dumps({"v": wrong}))


def test_format_edges():
    """Feb 29 in leap years only (2000 yes, 1900 no), no year 0000, no leap second; ipv4 without leading zeros;
    hostname labels of 63 at most, 253 in all; an email 254 in all (a greedy model looped in its local part until
    max_tokens); duration as RFC 3339's appendix A (no P1Y1D, no P1H); a port
    under 65536."""
    for name, good, bad in [
        ("date", ["2024-02-29", "2000-02-29", "0001-01-01", "1999-12-31"], ["1900-02-29", "0000-01-01", "2024-04-31"]),
        ("date-time", ["2024-02-29T23:59:59.123456789+05:30", "2024-01-01T00:00:00Z"], ["2024-01-01T00:00:60Z"]),
        ("ipv4", ["255.255.255.255", "0.0.0.0"], ["256.1.1.1", "1.2.3"]),
        ("ipv6", ["::", "::1", "1:2:3:4:5:6:7:8", "1::8", "fe80::1:2"], ["1:2:3:4:5:6:7:8:9", ":1"]),
        (
            "email",
            ["a.b+c@x-y.example.cn", "a" * 64 + "@" + ("b" * 61 + ".") * 3 + "cnn"],  # 254 characters
            ["a..b@x.cn", "a@x", "@x.cn", "a" * 64 + "@" + ("b" * 61 + ".") * 3 + "cnnn"],
        ),
        ("hostname", ["a", "x-y.example.cn", "a" * 63 + ".b"], ["a" * 64, "a-.b", "a..b", ("a" * 63 + ".") * 4]),
        ("duration", ["P1Y2M3DT4H5M6S", "PT1H", "P2W", "P1D"], ["P", "PT", "P1Y1D", "P1H", "P1234567D"]),
        ("uri", ["https://example.com:8080/a/b?q=1&r=%20#f", "ftp://1.2.3.4"], ["example.com", "http://a:99999"]),
    ]:
        s = {"type": "string", "format": name}
        for v in good:
            assert accepts(s, json.dumps(v)) and valid(v, s), (name, v)
        for v in bad:
            assert not accepts(s, json.dumps(v)), (name, v)


@pytest.mark.parametrize(
    "pattern",
    [
        "^\\p{Han}+$",
        "^[\\p{L}\\p{N}]{1,3}$",
        "^\\p{Lu}\\p{Ll}*$",
        "\\P{Han}",
        "^[^\\p{P}\\p{Z}]*$",
        "^\\p{Script=Latin}\\p{gc=Decimal_Number}?$",
        "^\\p{Letter}\\P{L}$",
    ],
)
def test_unicode_properties_are_the_regex_package(pattern):
    """\\p{..} and \\P{..} (general categories, scripts: how Chinese text is matched) accept exactly what the
    `regex` package's search does (Python's `re` has no \\p), on every string of up to 3 characters over an alphabet
    of Han, kana, Latin, digits, full-width and ASCII punctuation, escaped at random. A bare script name (\\p{Han},
    no ECMA-262 syntax) is Script in `regex`, Script_Extensions in Rust's regex (pydantic): 。 is Common with Han
    among its extensions, so a string keeps to both readings."""
    import regex

    rng, s = random.Random(0), {"type": "string", "pattern": pattern}
    readings = [pattern.replace("{Han}", "{sc=Han}"), pattern.replace("{Han}", "{scx=Han}")]
    for n in range(4):
        for chars in itertools.product("中文あAbé1١。, 、-", repeat=n):
            v = "".join(chars)
            assert accepts(s, escaped(v, rng, needless=False)) == all(regex.search(r, v) for r in readings), (
                pattern,
                v,
            )


@pytest.mark.parametrize(
    ("pattern", "name", "good", "bad"),
    [
        ("^2024-", "date", ["2024-02-29", "2024-12-31"], ["2023-01-01", "2024-02-30", "2024-"]),
        ("-01$", "date", ["1999-12-01", "2000-02-01"], ["2000-01-02", "2000-01-32"]),
        ("^[^@]+@example\\.cn$", "email", ["a.b@example.cn"], ["a@b.example.cn", "a..b@example.cn", "a@example.cnx"]),
        ("^fe80:", "ipv6", ["fe80::1", "fe80:0:0:0:0:0:0:1"], ["fe81::1", "fe80:::1"]),
        ("^[^A-F]*$", "uuid", ["0123abcd-0000-1111-2222-333344445555"], ["0123ABCD-0000-1111-2222-333344445555"]),
        ("Z$", "date-time", ["2024-01-01T00:00:00Z"], ["2024-01-01T00:00:00+08:00", "2024-01-01Z"]),
        ("^https://", "uri", ["https://a.cn/x"], ["http://a.cn/x", "https:/a"]),
    ],
)
def test_pattern_beside_format_holds_both(pattern, name, good, bad):
    """`pattern` and `format` on one string (a 400 before): the string must hold both, as a validator reads the
    schema, by one product automaton; random walks through it never dead-end and validate under jsonschema."""
    s = {"type": "string", "pattern": pattern, "format": name}
    for v in good:
        assert valid(v, s) and accepts(s, json.dumps(v)), v
    for v in bad:
        assert not accepts(s, json.dumps(v)), v  # (jsonschema's email check is only an "@")
    schema = {"type": "object", "properties": {"v": s | {"maxLength": 40}}, "required": ["v"]}
    assert walks_validate(schema, random.Random(2), 40) >= 20


def _escaping_walk(schema: dict) -> bytes:
    """The bytes a model writes that starts a \\u escape whenever the mask allows one (else the first byte allowed)."""
    p = Pattern()
    pattern, out, esc = p.finish(compile_schema(p, schema, "s", strict=False)), b"", False
    state = pattern.start
    while not pattern.done(state):
        ok = [b for b in range(256) if pattern.step(state, b) is not None]
        b = next((x for x in (b"u0" if esc else b"\\0") if x in ok), ok[0])
        out, state, esc = out + bytes([b]), pattern.step(state, b), b == 0x5C and not esc
        assert len(out) < 200, out
    return out


def test_free_and_length_bounded_strings_keep_needless_escapes():
    """JSON's own escapes ("\\u0061" for "a"; models trained on ensure_ascii text write \\u4e2d) stay allowed where no
    pattern or format holds the string, and count as the character they write."""
    for schema in ({"type": "string", "maxLength": 3}, {"type": "string", "minLength": 2, "maxLength": 4}):
        out = _escaping_walk(schema)
        assert b"\\u" in out and valid(json.loads(out), schema), out


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "string", "pattern": "^[a-z]{2,3}$"},
        {"type": "string", "pattern": "^2", "format": "date"},
        {"type": "string", "format": "date"},
        {"type": "string", "pattern": "^\\p{Han}{2}$"},
    ],
)
def test_a_pattern_or_format_takes_no_needless_escape(schema):
    """My own model (vocab 551, greedy) under {"format": "date", "pattern": "^2025-"} wrote "\\u0032\\u0030\\u0032…"
    until max_tokens: the digits it was less sure of than a backslash were masked, the escape was not. As outlines and
    xgrammar read a pattern, an escape is allowed only where JSON needs one, so such a walk writes plain characters."""
    out = _escaping_walk(schema)
    assert b"\\" not in out, out
    assert valid(json.loads(out), schema) if "\\p" not in schema.get("pattern", "") else len(json.loads(out)) == 2


def test_a_pattern_keeps_the_escapes_json_needs():
    """A quote, a backslash and a control character the pattern takes are still written (\\", \\\\, \\n, \\u0001, also
    \\u0022 as json.dumps-trained models may), and needless escapes (\\/ for /, \\u0061 for a) are not."""
    p = Pattern()
    schema = {"type": "string", "pattern": '^a"\\\\\\n\\x01/$'}
    pattern = p.finish(compile_schema(p, schema, "s", strict=False))

    def walk(text: bytes):
        state = pattern.start
        for b in text:
            state = pattern.step(state, b)
            if state is None:
                return None
        return state

    assert pattern.done(walk(b'"a\\"\\\\\\n\\u0001/"')) and pattern.done(walk(b'"a\\u0022\\u005c\\u000a\\u0001/"'))
    for needless in (b'"a\\"\\\\\\n\\u0001\\/', b'"\\u0061'):
        assert walk(needless) is None, needless


@pytest.mark.parametrize(
    ("schema", "where", "what"),
    [
        ({"pattern": "(a)\\1"}, "s.pattern", "a backreference"),
        ({"pattern": "(?<n>a)\\k<n>"}, "s.pattern", "a backreference"),
        ({"pattern": "a(?=b)"}, "s.pattern", "a lookahead"),
        ({"pattern": "(?<!a)b"}, "s.pattern", "a lookbehind"),
        ({"pattern": "\\bword"}, "s.pattern", "a word boundary"),
        ({"pattern": "(?i)a"}, "s.pattern", "an inline flag group"),
        ({"pattern": "a^b"}, "s.pattern", "'^' or '$' inside"),
        ({"pattern": "\\p{Emoji}"}, "s.pattern", "the property \\p{Emoji} (supported: general categories"),
        ({"pattern": "[\\p{l}]"}, "s.pattern", "the property \\p{l} (supported"),  # ECMA's names are case-sensitive
        ({"pattern": "\\p{Script=Klingon}"}, "s.pattern", "the property \\p{Script=Klingon}"),
        ({"pattern": "\\pL"}, "s.pattern", "\\p without {name}"),
        ({"format": "idn-hostname"}, "s.format", "'idn-hostname' (known: date, "),
        ({"format": "date", "pattern": "^0000"}, "s", 'no string satisfies pattern "^0000", format "date"'),
        ({"format": "date", "pattern": "(a)\\1"}, "s.pattern", "a backreference"),
        ({"maxLength": 100_001}, "s.maxLength", "over 10000"),
        ({"minLength": 3, "maxLength": 2}, "s.maxLength", "under minLength"),
        ({"pattern": "^a{3}$", "maxLength": 2}, "s", "no string satisfies"),
        ({"format": "uuid", "minLength": 37}, "s", "no string satisfies"),
        ({"format": "date", "pattern": "^1", "maxLength": 9}, "s", "no string satisfies"),
        ({"pattern": "^(ab)+$", "minLength": 5001, "maxLength": 5001}, "s", "no string satisfies"),  # odd
    ],
)
def test_string_keywords_refused_name_path_and_construct(schema, where, what):
    with pytest.raises(BadRequest) as e:
        compile_schema(Pattern(), {"type": "string"} | schema, "s", strict=False)
    assert e.value.param == where and what in str(e.value), str(e.value)


@pytest.mark.parametrize(
    "schema",
    [{"type": "integer", "format": "int32"}, {"type": "number", "format": "double"}, {"type": "array", "minLength": 1}],
)
def test_string_keywords_off_strings_are_refused_not_dropped(schema):
    """OpenAPI writes format int32/double on numbers: the mask keeps no such range, so it is a 400 naming the
    keyword, not a format read as a string's and dropped (any integer passed as int32). On a type list with
    string, the keyword is the string's (test above)."""
    key = next(k for k in schema if k != "type")
    with pytest.raises(BadRequest) as e:
        compile_schema(Pattern(), schema, "s", strict=False)
    assert e.value.param == f"s.{key}" and "strings' only" in str(e.value), str(e.value)
    compile_schema(Pattern(), {"type": ["string", "null"], key: schema[key] if key != "format" else "date"}, "s", False)


def test_long_patterns_with_long_lengths_compile_at_once():
    """Lengths up to 10,000 beside a pattern of a thousand states: the lengths each state can still reach are
    spread from the accepting state (sweeping every state until nothing changed took 9 s, in the request)."""
    import time

    t = time.perf_counter()
    schema = {"type": "string", "pattern": "^[a-z]{1,50}(-[a-z]{1,50}){0,10}$", "minLength": 9999, "maxLength": 10_000}
    with pytest.raises(BadRequest, match="no string satisfies"):  # 560 characters at most
        compile_schema(Pattern(), schema, "s", strict=False)
    assert accepts(schema | {"minLength": 560}, json.dumps("a" * 50 + ("-" + "b" * 50) * 10))
    assert time.perf_counter() - t < 3


def test_text_mask_shortcuts_equal_the_byte_walk(tokenizer):
    """The shortcuts for constrained strings (any plain text within the length; a token's characters after its
    first looping on the automaton's states) give exactly the mask of walking every token's bytes, on the test
    tokenizer plus tokens of CJK, split UTF-8, quotes and escapes."""
    stop = tokenizer.convert_tokens_to_ids("<|im_end|>")
    base = TokenBytes.of(tokenizer, {stop})
    extra = ["中文", "你好世界", "中".encode()[:2], "中".encode()[2:], "é", "a中", "中a", "abc", " xyz", '"}']
    extra += ["\\u4e2d"]
    extra += ["2024", "-02-", "29T", "10:00", ":00Z", "@ex", "ample.com", "aaaa", "a\\n", "12", "5 now"]
    table = base.table + [x if isinstance(x, bytes) else x.encode() for x in extra]
    toks = TokenBytes(table, {stop})
    cache, width = MaskCache(toks), len(table)
    for schema, reply in [
        ({"type": "string", "maxLength": 6}, '"ab中文\\u4e2dx"'),
        ({"type": "string", "minLength": 2}, '"中a b"'),
        ({"type": "string", "pattern": "^[a-z ]+$", "maxLength": 9}, '"abc xyz"'),
        ({"type": "string", "pattern": "[0-9]{3}"}, '"call 555 now 中"'),
        ({"type": "string", "pattern": "^中.*a$"}, '"中文a中a"'),
        ({"type": "string", "format": "date-time"}, '"2024-02-29T10:00:00Z"'),
        ({"type": "string", "format": "email"}, '"bob@example.com"'),
        ({"type": "string", "pattern": "^\\p{Han}+[\\p{P}]?$", "maxLength": 5}, '"中文你好。"'),
        ({"type": "string", "pattern": "^2024", "format": "date"}, '"2024-02-29"'),
    ]:
        p = Pattern()
        pattern = p.finish(compile_schema(p, {"type": "array", "items": schema}, "s", strict=False))
        state, raw = pattern.start, f"[{reply}]".encode()
        for k in range(len(raw) + 1):
            want = walked_mask(pattern, state, toks, width)
            if pattern.done(state):  # the whole array: only the stop token
                want[:] = False
                want[stop] = True
            assert torch.equal(cache.get(pattern, state, width), want), (schema, raw[:k])
            if k < len(raw):
                state = pattern.step(state, raw[k])
                assert state is not None, raw[: k + 1]


STRINGS = {
    "type": "object",
    "properties": {
        "code": {"type": "string", "pattern": "^[A-Z]{2}-\\d{3}$"},
        "day": {"type": "string", "format": "date"},
        "id": {"type": "string", "format": "uuid"},
        "nick": {"type": "string", "minLength": 2, "maxLength": 4},
    },
    "required": ["code", "day", "id", "nick"],
    "additionalProperties": False,
}


def test_served_replies_follow_string_keywords(url):  # noqa: F811
    """Over HTTP, the tiny random model: json_object replies break STRINGS (negative control); with STRINGS as
    json_schema (strict) every finished reply validates, formats included, and so does each streamed one."""
    c = client(url)
    ask = dict(model="tiny", messages=[{"role": "user", "content": "code?"}], temperature=1.0, seed=5, n=4)
    loose = c.chat.completions.create(response_format={"type": "json_object"}, max_tokens=160, **ask)
    assert not any(valid(_json(ch.message.content), STRINGS) for ch in loose.choices)
    r = c.chat.completions.create(response_format=fmt(STRINGS), max_tokens=200, **ask)
    done = [ch.message.content for ch in r.choices if ch.finish_reason == "stop"]
    assert len(done) >= 2, [(ch.finish_reason, ch.message.content) for ch in r.choices]
    for text in done:
        assert valid(json.loads(text), STRINGS), text
    body = {"model": "tiny", "messages": ask["messages"], "max_tokens": 2}
    bad = fmt(STRINGS | {"properties": STRINGS["properties"] | {"code": {"type": "string", "pattern": "(?=A)"}}})
    r = httpx.post(url + "/v1/chat/completions", json=body | {"response_format": bad}, timeout=30)
    err = r.json()["error"]
    assert r.status_code == 400 and err["param"] == "response_format.json_schema.schema.properties.code.pattern"
    assert "a lookahead" in err["message"]


def _json(text: str | None):
    try:
        return json.loads(text or "")
    except ValueError:
        return None


def test_served_pydantic_model_parses(url):  # noqa: F811
    """A pydantic model as OpenAI's SDK sends it (`parse`: strict, its formats, pattern, lengths, a binary-fraction
    multiple_of, a timedelta's duration): every finished reply of the tiny model validates as the model."""
    import uuid

    from openai.lib._parsing._completions import type_to_response_format_param
    from pydantic import BaseModel, Field

    class Order(BaseModel):
        id: uuid.UUID
        when: datetime.date
        wait: datetime.timedelta
        sku: str = Field(pattern=r"^[A-Z]{2}\d{2}$")
        price: float = Field(multiple_of=0.25, ge=0, le=100)
        name: str = Field(min_length=1, max_length=3)

    c = client(url)
    ask = dict(model="tiny", messages=[{"role": "user", "content": "order"}], temperature=1.0, seed=9, n=4)
    schema = type_to_response_format_param(Order)  # what `parse` sends; parse itself raises on a cut reply
    r = c.chat.completions.create(response_format=schema, max_tokens=256, **ask)
    done = [ch.message.content for ch in r.choices if ch.finish_reason == "stop"]
    assert done, [ch.message.content for ch in r.choices]
    for text in done:
        Order.model_validate_json(text)


def test_a_uri_host_never_ends_in_what_url_parsers_read_as_an_ipv4_number():
    """A walk through format: uri wrote https://9cDQ.8:61, which pydantic's AnyUrl (WHATWG parsing) refuses:
    a host whose last label is all digits or 0x and hex digits is an IPv4 number there ("invalid IPv4 address")."""
    s = {"type": "string", "format": "uri"}
    for host in ("a.8", "9cDQ.8", "a.0x1f", "a.0X", "x-y.12"):
        assert not valid(f"https://{host}/p", s) and not accepts(s, json.dumps(f"https://{host}/p")), host
    for host in ("a.b8", "a.8b", "a.0xg", "a.07a", "a.1-2", "1.2.3.4", "localhost", "a.0b"):
        assert valid(f"https://{host}/p", s) and accepts(s, json.dumps(f"https://{host}/p")), host
