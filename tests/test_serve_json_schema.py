"""`response_format: {"type": "json_schema", ...}` on `weitiao serve`, through the official `openai` client.

A random tiny model asked for a json_object writes JSON that breaks the schema (the negative control); with the
schema as json_schema every finished reply parses and validates, strict or not, whole, streamed, with n > 1 and
batched with other rows. What OpenAI refuses, and what the mask cannot enforce, is a 400 naming its path.
"""

from __future__ import annotations

import json

import httpx
import jsonschema
import openai
import pytest
import torch
from conftest import replaced
from loopback import running
from test_serve_strict import accepts as walks
from test_serve_tools import client, together

from weitiao.infer.api import BadRequest
from weitiao.infer.constrain import Pattern
from weitiao.infer.schema import _RANGE, compile_schema
from weitiao.infer.serve import ServeSettings, create_app

ASK = [{"role": "user", "content": "给我一个人"}]
PERSON = {  # strict: every key required, no other key; a pet by $ref or null
    "type": "object",
    "properties": {
        "name": {"enum": ["小明", "Bob"]},
        "age": {"type": "integer"},
        "ok": {"type": "array", "items": {"type": "boolean"}, "maxItems": 3},
        "pet": {"anyOf": [{"type": "null"}, {"$ref": "#/$defs/pet"}]},
    },
    "required": ["name", "age", "ok", "pet"],
    "additionalProperties": False,
    "$defs": {
        "pet": {
            "type": "object",
            "properties": {"kind": {"enum": ["cat", "dog"]}},
            "required": ["kind"],
            "additionalProperties": False,
        }
    },
}
LOOSE = {  # not strict, as pydantic writes it: optional keys, no additionalProperties, a map and an Any
    "type": "object",
    "title": "Loose",
    "properties": {
        "a": {"type": "integer", "title": "A"},
        "b": {"anyOf": [{"type": "boolean"}, {"type": "null"}], "default": None},
        "scores": {"type": "object", "additionalProperties": {"type": "integer"}},
        "extra": {},
    },
    "required": ["a"],
}


def fmt(schema: dict, strict: bool | None = True, name: str = "person") -> dict:
    js = {"name": name, "schema": schema} | ({} if strict is None else {"strict": strict})
    return {"type": "json_schema", "json_schema": js}


@pytest.fixture(scope="module")
def url(parts):
    with running(create_app(*parts, ServeSettings(model_name="tiny", max_new_tokens=256))) as base:
        yield base


def valid(text: str | None, schema: dict) -> bool:
    try:
        jsonschema.validate(json.loads(text or ""), schema)
    except (ValueError, jsonschema.ValidationError):
        return False
    return True


def test_json_schema_replies_follow_the_schema(url):
    """Negative control: json_object leaves the random model free to write any object, and none of its 4 sampled
    replies follows PERSON. As json_schema (strict), every reply that stops parses and validates, whole, streamed
    (the deltas joined) and batched with a plain row."""
    c = client(url)
    ask = dict(model="tiny", messages=ASK, temperature=1.0, seed=7, n=4, max_tokens=160)
    loose = c.chat.completions.create(response_format={"type": "json_object"}, **ask)
    assert not any(valid(ch.message.content, PERSON) for ch in loose.choices)
    r = c.chat.completions.create(response_format=fmt(PERSON), **ask)
    done = [ch for ch in r.choices if ch.finish_reason == "stop"]
    assert len(done) >= 2, [(ch.finish_reason, ch.message.content) for ch in r.choices]
    for ch in done:
        assert valid(ch.message.content, PERSON), ch.message.content
    streamed = [""] * 4
    for chunk in c.chat.completions.create(response_format=fmt(PERSON), stream=True, **ask):
        for x in chunk.choices:
            streamed[x.index] += x.delta.content or ""
    assert streamed == [ch.message.content for ch in r.choices]  # the same seeded draws
    asks = {
        "schema": lambda: c.chat.completions.create(response_format=fmt(PERSON), **ask),
        "plain": lambda: c.chat.completions.create(model="tiny", messages=ASK, temperature=0, max_tokens=20),
    }
    batched = together(url, asks)
    assert [ch.message.content for ch in batched["schema"].choices] == [ch.message.content for ch in r.choices]
    assert not valid(batched["plain"].choices[0].message.content, PERSON)


@pytest.mark.parametrize("strict", [False, None])
def test_json_schema_not_strict_is_enforced_too(url, strict):
    """strict false or unset: JSON Schema's defaults (optional keys, a map, any value), still enforced; the same
    schema with strict: true is a 400, as OpenAI's strict rules refuse it."""
    c = client(url)
    r = c.chat.completions.create(
        model="tiny", messages=ASK, response_format=fmt(LOOSE, strict), temperature=1.0, seed=3, n=4, max_tokens=160
    )
    done = [ch.message.content for ch in r.choices if ch.finish_reason == "stop"]
    assert done, [ch.message.content for ch in r.choices]
    for text in done:
        assert valid(text, LOOSE) and set(json.loads(text)) <= set(LOOSE["properties"]), text
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model="tiny", messages=ASK, response_format=fmt(LOOSE, True), max_tokens=2)
    assert e.value.body["param"] == "response_format.json_schema.schema.additionalProperties"


def bad(path: list, value, schema: dict = PERSON) -> dict:
    """`schema` with the value at `path` replaced (None: deleted)."""
    return replaced(schema, path, value)


S = "response_format.json_schema.schema"


@pytest.mark.parametrize(
    ("response_format", "param"),
    [
        # OpenAI's strict rules, by the path at fault
        (fmt(bad(["required"], ["name"])), f"{S}.required"),
        (fmt(bad(["additionalProperties"], None)), f"{S}.additionalProperties"),
        (fmt({"type": "array", "items": {"type": "integer"}}), f"{S}.type"),
        (fmt(bad(["properties", "age"], {"description": "no type"})), f"{S}.properties.age.type"),
        # what the mask cannot enforce, strict or not: a 400 naming the keyword, never a reply that breaks it
        (fmt(bad(["properties", "age"], {"type": "number", "multipleOf": 0.01})), f"{S}.properties.age.multipleOf"),
        (fmt(bad(["properties", "age", "multipleOf"], 0.1), False), f"{S}.properties.age.multipleOf"),
        (
            fmt(bad(["properties", "age"], {"type": "number", "maximum": 0.1234567890123456})),
            f"{S}.properties.age.maximum",
        ),
        (fmt(bad(["properties", "age", "minimum"], "1")), f"{S}.properties.age.minimum"),
        (fmt(bad(["properties", "name", "maximum"], 1)), f"{S}.properties.name.maximum"),  # beside enum: not read
        (fmt(bad(["properties", "ok", "enum"], [[True]])), f"{S}.properties.ok.items"),  # items, maxItems unread
        # no number in range, a bound that is no number (draft-04's boolean exclusiveMinimum)
        (
            fmt(replaced(bad(["properties", "age", "minimum"], 5), ["properties", "age", "maximum"], 4)),
            f"{S}.properties.age",
        ),
        (fmt(bad(["properties", "age", "exclusiveMinimum"], True)), f"{S}.properties.age.exclusiveMinimum"),
        (
            fmt(bad(["properties", "name"], {"type": "string", "format": "idn-hostname"}), None),
            f"{S}.properties.name.format",
        ),
        (fmt(bad(["properties", "name"], {"type": "string", "pattern": "^(a)\\1$"})), f"{S}.properties.name.pattern"),
        (fmt(bad(["properties", "name"], {"type": "string", "pattern": "a(?=b)"})), f"{S}.properties.name.pattern"),
        (
            fmt(bad(["properties", "name"], {"type": "string", "maxLength": 1, "minLength": 2})),
            f"{S}.properties.name.maxLength",
        ),
        (fmt(bad(["$defs", "pet", "oneOf"], [{"type": "null"}]), False), f"{S}.$defs.pet.oneOf"),
        (fmt(bad(["required"], ["name", "nick"], LOOSE), False), f"{S}.required"),  # a key the mask never writes
        # the json_schema object itself
        (fmt(PERSON, name="a person"), "response_format.json_schema.name"),
        (fmt(PERSON, name="x" * 65), "response_format.json_schema.name"),
        ({"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON, "strcit": True}}, None),
        ({"type": "json_schema", "json_schema": {"name": "p"}}, "response_format.json_schema.schema"),
        ({"type": "json_schema", "json_schema": {"schema": PERSON}}, "response_format.json_schema.name"),
    ],
)
def test_json_schemas_refused_name_their_path(url, response_format, param):
    body = {"model": "tiny", "messages": ASK, "max_tokens": 2, "response_format": response_format}
    r = httpx.post(url + "/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    want = param or "response_format.json_schema.strcit"
    assert err["param"] == want and err["message"].startswith(want + ": "), err
    ok = {"model": "tiny", "messages": ASK, "max_tokens": 2, "response_format": fmt(PERSON)}  # negative control
    assert httpx.post(url + "/v1/chat/completions", json=ok, timeout=30).status_code == 200


def accepts(schema: dict, text: str, strict: bool = False) -> bool:
    p = Pattern()
    return walks(p.finish(compile_schema(p, schema, "s", strict)), text)


def test_json_schema_grammar_reads_json_schema_defaults():
    """Not strict: optional keys in order (with or without those before them), a map's values, any value, any
    root type; strict: PERSON's one shape."""
    good = [
        '{"a": 1}',
        '{"a": 1, "extra": [1, {"x": null}, "s"]}',
        '{"a": -2, "b": null, "scores": {}}',
        '{"a": 0, "scores": {"数学": 90, "x": 1}}',
        '{"a": 1, "b": true, "scores": {"q": 2}, "extra": 1.5}',
    ]
    for text in good:
        assert accepts(LOOSE, text) and valid(text, LOOSE), text
    for text in (
        '{"b": true}',
        '{"a": 1.5}',
        '{"b": true, "a": 1}',
        '{"a": 1, "scores": {"x": "y"}}',
        '{"a": 1, "z": 1}',
    ):
        assert not accepts(LOOSE, text), text
    assert accepts({"type": "array", "items": {"type": "integer"}}, "[1, 2]")
    assert accepts({"anyOf": [{"type": "integer"}, {"type": "string"}]}, "12")
    person = '{"name": "小明", "age": 3, "ok": [true], "pet": {"kind": "cat"}}'
    assert accepts(PERSON, person, strict=True) and valid(person, PERSON)
    # zod-to-json-schema's root $schema names the dialect: read (it was a 400); anything but a draft URI is not
    for uri in ("http://json-schema.org/draft-07/schema#", "https://json-schema.org/draft/2020-12/schema"):
        assert accepts({**PERSON, "$schema": uri}, person, strict=True)
    with pytest.raises(BadRequest, match=r"^s\.\$schema: 'draft-07' names no JSON Schema draft"):
        accepts({**PERSON, "$schema": "draft-07"}, person)
    with pytest.raises(BadRequest, match=r"^s\.properties\.age\.\$schema: "):  # the root's only
        accepts(replaced(PERSON, ["properties", "age", "$schema"], "http://json-schema.org/draft-07/schema#"), person)
    assert not accepts(PERSON, '{"name": "小明", "age": 3, "ok": [true]}', strict=True)


def _no_repeat(pairs: list) -> dict:
    keys = [k for k, _ in pairs]
    assert len(keys) == len(set(keys)), f"a key written twice: {keys}"
    return dict(pairs)


@pytest.mark.parametrize("kind", ["map", "json_object"])
def test_constrained_objects_never_repeat_a_key(tokenizer, kind):
    """A "model" that wants `{"a": 1, "a": 1, "a": 1}` (greedy on the longest token matching that text, else the
    lowest allowed id, then `": 2}`): a map's keys (additionalProperties, strict false) and any object's
    (json_object) were free strings, so the reply held "a" twice and a parser kept one. Now the key's closing
    quote is banned where it would repeat a key of its object (`\\u0061` too); the reply validates, no key twice,
    and the mask equals the byte walk of every token (the in-key shortcut) at each step."""
    from conftest import walked_mask

    from weitiao.infer.constrain import MaskCache, TokenBytes, json_object

    stop = tokenizer.convert_tokens_to_ids("<|im_end|>")
    toks = TokenBytes.of(tokenizer, {stop})
    cache, width = MaskCache(toks), len(tokenizer)
    schema = {"type": "object", "additionalProperties": {"type": "integer"}}
    if kind == "map":
        p = Pattern()
        pattern = p.finish(compile_schema(p, schema, "s", strict=False))
    else:
        pattern = json_object()
    state, out, want = pattern.start, b"", b'{"a": 1, "a": 1, "a": 1}'
    for _ in range(60):
        mask = cache.get(pattern, state, width)
        walked = walked_mask(pattern, state, toks, width)
        walked[stop] = pattern.done(state)
        assert torch.equal(mask, walked), out
        allowed = mask.nonzero().flatten().tolist()
        fits = [i for i in allowed if i != stop and want.startswith(toks.table[i])]
        if fits:
            pick = max(fits, key=lambda i: len(toks.table[i]))
            want = want[len(toks.table[pick]) :]
        else:
            pick = allowed[0] if stop not in allowed or want else stop
            want = b'": 2}'
        if pick == stop:
            break
        out += toks.table[pick]
        for b in toks.table[pick]:
            state = pattern.step(state, b)
    else:
        raise AssertionError(out)
    reply = json.loads(out, object_pairs_hook=_no_repeat)
    jsonschema.validate(reply, schema)
    assert len(reply) >= 2 and "a" in reply, out
    assert not accepts(schema, '{"a": 1, "\\u0061": 2}') and accepts(schema, '{"a": 1, "b": 1}')


def test_json_strings_hold_only_utf8_that_python_decodes():
    """The string automaton took any lead byte's count of 80-BF bytes: overlong `E0 80 80`, surrogate `ED A0 80`,
    `F4 90 80 80` past U+10FFFF; a reply holding them decoded with U+FFFD (and a key's 500'd once keys are read).
    Now a string's bytes are accepted exactly when Python decodes them, over every lead byte and second byte."""
    from weitiao.infer.constrain import json_object

    pattern = json_object()
    for lead in range(0x80, 0x100):
        for second in range(0x80, 0xC0):
            for tail in (b"", b"\x80", b"\x80\xbf", b"\xbf\x80\x80"):
                raw = bytes([lead, second]) + tail
                try:
                    raw.decode()
                    ok = True
                except UnicodeDecodeError:
                    ok = False
                state = pattern.start
                for b in b'{"' + raw + b'": 1}':
                    state = pattern.step(state, b)
                assert pattern.done(state) == ok, raw


RANGED = {  # OpenAI's strict number and array keywords
    "type": "object",
    "properties": {
        "n": {"type": "integer", "minimum": -3, "exclusiveMaximum": 40, "multipleOf": 4},
        "x": {"type": "number", "exclusiveMinimum": 0.1, "maximum": 2.5, "multipleOf": 0.125},
        "xs": {"type": "array", "items": {"type": "integer", "exclusiveMinimum": 99}, "minItems": 1, "maxItems": 3},
    },
    "required": ["n", "x", "xs"],
    "additionalProperties": False,
}


def test_number_bounds_are_enforced_and_replies_validate(url):
    """minimum, maximum, exclusiveMinimum/exclusiveMaximum and multipleOf (OpenAI's strict set; on a number, a
    binary fraction) were a 400. Now enforced, strict or not: every finished reply of the random model validates
    against RANGED; the same schema without them (the negative control) lets it write numbers out of range."""
    c = client(url)
    ask = dict(model="tiny", messages=ASK, temperature=1.0, seed=11, n=4, max_tokens=160)
    free = {k: {kk: vv for kk, vv in v.items() if kk not in _RANGE} for k, v in RANGED["properties"].items()}
    free["xs"]["items"] = {"type": "integer"}
    loose = c.chat.completions.create(response_format=fmt({**RANGED, "properties": free}), **ask)
    texts = [ch.message.content for ch in loose.choices if ch.finish_reason == "stop"]
    assert texts and not all(valid(t, RANGED) for t in texts), texts
    for strict in (True, False):
        r = c.chat.completions.create(response_format=fmt(RANGED, strict), **ask)
        done = [ch.message.content for ch in r.choices if ch.finish_reason == "stop"]
        assert len(done) >= 2, [(ch.finish_reason, ch.message.content) for ch in r.choices]
        for text in done:
            assert valid(text, RANGED), text


@pytest.mark.parametrize(
    ("schema", "good", "bad_"),
    [
        ({"type": "integer", "minimum": -3, "maximum": 12}, ["-3", "-0", "0", "9", "12"], ["-4", "13", "120", "-30"]),
        ({"type": "integer", "exclusiveMinimum": 5, "multipleOf": 7}, ["7", "700", "14"], ["0", "5", "6", "-7", "15"]),
        ({"type": "integer", "exclusiveMaximum": -1}, ["-2", "-100000000000000000000"], ["-1", "0", "-0", "1"]),
        ({"type": "integer", "minimum": 0.5, "maximum": 1.5}, ["1"], ["0", "2", "1.0"]),
        (
            {"type": "number", "exclusiveMinimum": 0.1, "maximum": 2.5},
            ["0.11", "2.5", "2.50", "1"],
            ["0.1", "0.10", "2.51", "3", "0.1e1", "0.0999999"],
        ),
        ({"type": "number", "minimum": -1e3}, ["-1000", "-999.5", "123456789012345"], ["-1000.5", "1234567890123456"]),
        ({"type": "number", "exclusiveMaximum": 0}, ["-0.000000000000001", "-3"], ["0", "-0", "-0.0", "0.5"]),
        (  # a binary fraction: doubles divide it exactly, as validators do
            {"type": "number", "multipleOf": 0.25, "minimum": -1, "maximum": 2},
            ["0", "0.25", "1.75", "2", "-0.5", "1.50", "2.00"],
            ["0.1", "0.3", "2.25", "-1.25", "0.125"],
        ),
        ({"type": "number", "multipleOf": 2}, ["4", "-2", "2.0", "0"], ["1", "2.5", "0.2"]),
        ({"type": "integer", "multipleOf": 0.5, "maximum": 3}, ["1", "3", "-8"], ["3.5", "0.5", "4"]),
    ],
)
def test_number_bounds_grammar(schema, good, bad_):
    """The grammar writes exactly the numbers in range (numbers: no exponent, 15 digits at most), each of which
    validates; and it is never stuck: a prefix is allowed only where a number in range still starts with it."""
    from weitiao.infer.bounds import feasible

    root = {"type": "object", "properties": {"v": schema}, "required": ["v"], "additionalProperties": False}
    for text in good:
        assert accepts(root, f'{{"v": {text}}}', strict=True) and valid(f'{{"v": {text}}}', root), text
    for text in bad_:
        assert not accepts(root, f'{{"v": {text}}}', strict=True), text
    p = Pattern()
    node = compile_schema(p, schema, "s", strict=False)
    spec = p.nodes[node][1] if p.nodes[node][0] == "bnum" else p.nodes[p.nodes[node][1][0]][1]
    for text in good:  # every prefix of a good number stays open
        assert all(feasible(spec, text[:k]) for k in range(len(text) + 1)), text


def test_number_bounds_prefixes_by_brute_force(monkeypatch):
    """With numbers cut to 2 digits, the mask's answers equal a brute force over every JSON number of up to 5
    characters (integers and numbers, open and closed ends, multipleOf): a text ends a number exactly when it is one
    of the numbers in range, and a prefix is allowed exactly when one of them starts with it, asked wherever the mask
    asks (every prefix of such a number, and every character after one)."""
    import bisect
    import itertools
    import random
    import re
    from fractions import Fraction

    from weitiao.infer import bounds

    monkeypatch.setattr(bounds, "DIGITS", 2)
    rng = random.Random(0)
    chars = {i: "-0123456789" + "." * (not i) for i in (True, False)}
    shape = {True: re.compile(r"-?(0|[1-9][0-9]*)"), False: re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?")}
    numbers = {}  # JSON numbers of up to 5 characters (numbers: at most 2 digits, the 0 of 0.5 not counted), by value
    for i in chars:
        texts = ("".join(t) for k in range(1, 6) for t in itertools.product(chars[i], repeat=k))
        found = [t for t in texts if shape[i].fullmatch(t)]
        parts = ((t, t.lstrip("-").partition(".")) for t in found)
        found = [t for t, (w, _, f) in parts if i or (w != "0") * len(w) + len(f) <= 2]
        numbers[i] = sorted((Fraction(t), t) for t in found)
    for trial in range(40):
        integer = trial % 2 == 0
        lo = Fraction(rng.randint(-120, 120), rng.choice([1, 10, 4]))
        hi = lo + Fraction(rng.randint(0, 150), rng.choice([1, 10]))
        step = Fraction(rng.choice([1, 3, 0.5] if integer else [0, 0.25, 0.5, 2]))  # multipleOf (0: none)
        lo_open, hi_open = rng.random() < 0.5, rng.random() < 0.5
        spec = bounds.Bounds(integer, lo, lo_open, hi, hi_open, step)
        values = numbers[integer]
        span = values[bisect.bisect_left(values, (lo, "")) : bisect.bisect_right(values, (hi, "~"))]
        whole = {t for v, t in span if not (lo_open and v == lo or hi_open and v == hi or step and v % step)}
        starts = {t[:k] for t in whole for k in range(len(t) + 1)}
        for t in starts | {t + c for t in starts for c in chars[integer]}:
            assert bounds.ends(spec, t) == (t in whole), (spec, t)
            if bounds._PREFIX[integer].fullmatch(t):
                assert bounds.feasible(spec, t) == (t in starts), (spec, t)
