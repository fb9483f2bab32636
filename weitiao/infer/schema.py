"""JSON schemas as `weitiao.infer.constrain.Pattern` grammars: a strict tool's arguments (`tools[].function.strict:
true`) and a `response_format` json_schema reply.

Strict (a strict tool; json_schema with strict: true): OpenAI's Structured Outputs rules. The root is an object;
every object lists all its properties in `required` and sets `additionalProperties: false`; every schema has a
`type` (or enum, const, anyOf, $ref). OpenAI refuses the request otherwise, and so does this, naming the path.

Not strict (json_schema with strict false or unset), the reply follows the schema too, as vLLM's guided decoding
does, with JSON Schema's own defaults: any root; a property missing from `required` may be left out; a schema
without `type` (`{}`, pydantic's `Any`) and an array without `items` hold any JSON value; an object without
`properties` is any object (`additionalProperties` unset or true) or one whose values follow
`additionalProperties`. An object with `properties` gets only those keys, whatever `additionalProperties` says
(as xgrammar, vLLM's default backend): the reply is still valid, the mask just writes no other key.

Enforced either way: `type` (one or a list), `properties`, `required`, `items`, `minItems`/`maxItems`, `minimum`,
`maximum`, `exclusiveMinimum`, `exclusiveMaximum`, `multipleOf` (an integer or a binary fraction such as 0.25:
weitiao.infer.bounds), `enum`, `const`, `anyOf`, `$ref` into the schema (`#`, `#/$defs/...`, recursion too), a
string's `minLength`, `maxLength`, `pattern` and `format` (both at once: the string holds each;
weitiao.infer.strings: a pattern the mask cannot keep, such as a backreference, and an unknown format are 400s
naming the keyword and the construct). Annotations (`description`, `title`, `default`, `examples`, `$comment`, and
the root's `$schema` when it names draft-04 to 2020-12) change nothing. Anything else (`oneOf`, `not`, a decimal
`multipleOf` such as 0.01, which validators check by dividing doubles, ...) is a 400: the mask could not keep it,
and a reply that breaks it must not pass as following the schema.

Keys come in the schema's order with the JSON style of weitiao.infer.constrain (`{"a": 1, "b": [true]}`): a
reply's text has one spelling per value, but strings, whose content is free.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from fractions import Fraction
from typing import Any

from weitiao.infer.api import BadRequest
from weitiao.infer.bounds import DIGITS, Bounds, feasible
from weitiao.infer.constrain import Pattern
from weitiao.infer.strings import FORMAT_LENGTH, FORMATS, MAX_LENGTH, UnsupportedRegex, text

_NOTES = {"description", "title", "default", "examples", "$comment", "$defs", "definitions"}
_KNOWN = _NOTES | {"type", "properties", "required", "additionalProperties", "items", "minItems", "maxItems"}
_KNOWN |= {"enum", "const", "anyOf", "$ref"}
_RANGE = ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum", "multipleOf")  # numbers: weitiao.infer.bounds
_KNOWN |= set(_RANGE)
_STRING = ("minLength", "maxLength", "pattern", "format")  # strings: weitiao.infer.strings
_KNOWN |= set(_STRING)
_DIALECT = re.compile(r"https?://json-schema\.org/(draft-0[467]/schema#?|draft/(2019-09|2020-12)/schema)")
_MAX_ITEMS = 64  # minItems/maxItems are unrolled into the grammar: one rule per place
_MAX_DEPTH = 64  # schemas inside schemas (properties, items, anyOf); compiled by recursion


def strict_arguments(p: Pattern, parameters: dict | None, where: str) -> int:
    """The node in `p` for a strict function's arguments; `where`: "tools.i.function" (for the 400s)."""
    if parameters is None:  # OpenAI: no parameters is an empty parameter list
        return p.lit(b"{}")
    return compile_schema(p, parameters, f"{where}.parameters", strict=True, unenforced=f"{where}.strict")


def compile_schema(p: Pattern, schema: Any, at: str, strict: bool, unenforced: str | None = None) -> int:
    """The node in `p` that JSON following `schema` matches, or `BadRequest`. `at`: the schema's path in the
    request; `strict`: OpenAI's rules (see the module); `unenforced`: the field a keyword the mask cannot keep
    is refused under (a strict tool's `strict`, which the client may drop), None: the keyword's own path."""
    refs: dict[str, int] = {}
    anything: list[int] = []  # the any-JSON-value node, made once

    def refuse(path: str, what: str) -> None:  # what the mask cannot enforce
        if unenforced is not None:
            msg = f"{unenforced}: {path} ({what}) is not enforced by this server's constrained decoding"
            raise BadRequest(f"{msg}; drop it, or send strict: false", unenforced)
        raise BadRequest(f"{path}: {what} is not enforced by this server's constrained decoding; drop it", path)

    def invalid(path: str, what: str) -> None:  # as OpenAI answers a schema that breaks its rules
        raise BadRequest(f"{path}: {what}" + (" (strict schemas: OpenAI's rules)" if strict else ""), path)

    if isinstance(schema, dict) and "$schema" in schema:  # the root's dialect (zod-to-json-schema writes draft-07)
        if not (isinstance(schema["$schema"], str) and _DIALECT.fullmatch(schema["$schema"])):
            invalid(f"{at}.$schema", f"{schema['$schema']!r} names no JSON Schema draft from 04 to 2020-12")
        schema = {k: v for k, v in schema.items() if k != "$schema"}  # the keywords enforced mean the same in each

    def resolve(ref: str, path: str) -> int:
        if ref in refs:
            return refs[ref]
        if not isinstance(ref, str) or not (ref == "#" or ref.startswith("#/")):
            refuse(f"{path}.$ref", f"{ref!r}, outside the schema")
        target: Any = schema
        for part in ref[2:].split("/") if ref != "#" else []:
            part = part.replace("~1", "/").replace("~0", "~")
            if isinstance(target, list) and part.isdigit() and int(part) < len(target):  # "#/.../anyOf/0"
                target = target[int(part)]
            elif isinstance(target, dict) and part in target:
                target = target[part]
            else:
                invalid(f"{path}.$ref", f"{ref!r} points to nothing in the schema")
        refs[ref] = p.seq()  # a placeholder first: the target may refer to itself
        p.define(refs[ref], build(target, at + "".join(f".{x}" for x in ref[2:].split("/") if x)))
        return refs[ref]

    depth = [0]

    def build(s: Any, path: str) -> int:
        depth[0] += 1
        try:
            if depth[0] > _MAX_DEPTH:  # a 300-deep schema was a RecursionError and a 500
                refuse(path, f"a schema nested over {_MAX_DEPTH} deep")
            return subschema(s, path)
        finally:
            depth[0] -= 1

    def subschema(s: Any, path: str) -> int:
        if s is True and not strict:  # JSON Schema's `true`: any value
            return any_value()
        if not isinstance(s, dict):
            invalid(path, "a schema must be an object")
        if unknown := sorted(set(s) - _KNOWN):
            refuse(f"{path}.{unknown[0]}", json.dumps(s[unknown[0]], ensure_ascii=False)[:60])
        if "$ref" in s:
            if extra := sorted(set(s) - _NOTES - {"$ref"}):
                refuse(f"{path}.{extra[0]}", "beside $ref")
            return resolve(s["$ref"], path)
        if "const" in s or "enum" in s:
            key = "const" if "const" in s else "enum"
            if extra := sorted(set(s) - _NOTES - {key, "type"}):  # the values are written as listed, nothing else read
                refuse(f"{path}.{extra[0]}", f"beside {key}")
            values = [s["const"]] if key == "const" else s["enum"]
            if not isinstance(values, list) or not values:
                invalid(f"{path}.enum", "must be a non-empty array")
            types = s.get("type", list(_TYPES))
            for v in values:
                if not any(_TYPES.get(t, lambda _: False)(v) for t in (types if isinstance(types, list) else [types])):
                    invalid(f"{path}.{key}", f"{json.dumps(v, ensure_ascii=False)} is not of type {types}")
            return p.alt(*(p.lit(_dump(v)) for v in values))
        if "anyOf" in s:
            if extra := sorted(set(s) - _NOTES - {"anyOf"}):
                refuse(f"{path}.{extra[0]}", "beside anyOf")
            if not isinstance(s["anyOf"], list) or not s["anyOf"]:
                invalid(f"{path}.anyOf", "must be a non-empty array")
            return p.alt(*(build(x, f"{path}.anyOf.{k}") for k, x in enumerate(s["anyOf"])))
        if "type" not in s:
            if strict or set(s) - _NOTES:  # {"properties": ...} alone would hold any value that is no object
                invalid(f"{path}.type", "required (or enum, const, anyOf, $ref)")
            return any_value()
        types = s["type"] if isinstance(s["type"], list) else [s["type"]]
        if not types:
            invalid(f"{path}.type", "an empty list")
        if "string" not in types and (unread := [k for k in _STRING if k in s]):  # OpenAPI's format: int32
            refuse(f"{path}.{unread[0]}", f"{json.dumps(s[unread[0]])} on type {s['type']} (strings' only)")
        return p.alt(*(typed(s, t, path) for t in types))

    def typed(s: dict, t: Any, path: str) -> int:
        if t == "string":
            spec = string_spec(s, path)
            return p.seq(p.lit(b'"'), p.node("str") if spec is None else p.node("text", spec))
        if t in ("number", "integer"):
            spec = number_range(s, t == "integer", path)
            return p.node("num", t == "integer") if spec is None else p.node("bnum", spec)
        if t == "boolean":
            return p.alt(p.lit(b"true"), p.lit(b"false"))
        if t == "null":
            return p.lit(b"null")
        if t == "object":
            return obj(s, path)
        if t == "array":
            return array(s, path)
        invalid(f"{path}.type", f"{t!r} is no JSON schema type")
        raise AssertionError

    def obj(s: dict, path: str) -> int:
        props, extra = s.get("properties", {}), s.get("additionalProperties")
        if not isinstance(props, dict):
            invalid(f"{path}.properties", "must be an object")
        if strict and extra is not False:
            invalid(f"{path}.additionalProperties", "must be false")
        if not (extra is None or isinstance(extra, bool | dict)):
            invalid(f"{path}.additionalProperties", "must be a boolean or a schema")
        required = s.get("required", [])
        if not isinstance(required, list) or not all(isinstance(k, str) for k in required):
            invalid(f"{path}.required", "must be an array of property names")
        if strict and (missing := [k for k in props if k not in required]):
            invalid(f"{path}.required", f"must list every key in properties; missing {missing}")
        if unknown := [k for k in required if k not in props]:  # with any value: the mask writes no other key
            invalid(f"{path}.required", f"{unknown} not in properties")
        if not props:
            if strict or extra is False:
                return p.lit(b"{}")
            if extra is None or extra is True:
                return p.node("json")  # any object
            return p.seq(p.lit(b"{"), p.map(build(extra, f"{path}.additionalProperties")))  # no key twice
        # the keys in the schema's order, from the last: rest[w] is what may follow once the keys before are
        # written (w: whether any of them was, so the next one needs ", "); a key not required may be skipped
        rest = {False: p.lit(b"}"), True: p.lit(b"}")}
        for name, sub in reversed(list(props.items())):
            value = build(sub, f"{path}.properties.{name}")
            now = {}
            for written in (False, True):
                take = p.seq(p.lit((b", " if written else b"") + _dump(name) + b": "), value, rest[True])
                now[written] = take if name in required else p.alt(take, rest[written])
            rest = now
        return p.seq(p.lit(b"{"), rest[False])

    def count_range(s: dict, path: str, what: str, cap: int) -> tuple[int, int | None]:
        """(min{what}, max{what}) of `s`: non-negative integers up to `cap`, the minimum 0 when absent."""
        lo, hi = s.get("min" + what, 0), s.get("max" + what)
        for key, v in (("min" + what, lo), ("max" + what, hi)):
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
                invalid(f"{path}.{key}", "must be a non-negative integer")
            if v is not None and v > cap:
                refuse(f"{path}.{key}", f"{v}, over {cap}")
        if hi is not None and hi < lo:
            invalid(f"{path}.max{what}", f"{hi} is under min{what} {lo}")
        return lo, hi

    def array(s: dict, path: str) -> int:
        if "items" not in s and strict:
            invalid(f"{path}.items", "required for an array")
        lo, hi = count_range(s, path, "Items", _MAX_ITEMS)
        item = build(s["items"], f"{path}.items") if "items" in s else any_value()
        more = p.seq()  # after one item or more, with no upper bound left: "]" or ", " item, again
        p.define(more, p.alt(p.lit(b"]"), p.seq(p.lit(b", "), item, more)))
        rest = more if hi is None else p.lit(b"]")  # after the last place
        for k in range((hi if hi is not None else lo) - 1, 0, -1):  # rest after k items
            nxt = p.seq(p.lit(b", "), item, rest)
            rest = nxt if k < lo else p.alt(p.lit(b"]"), nxt)
        first = p.seq(item, rest)
        return p.seq(p.lit(b"["), first if lo > 0 else p.alt(p.lit(b"]"), first) if hi != 0 else p.lit(b"]"))

    def string_spec(s: dict, path: str) -> Any:
        """The `strings.Text` a string follows, None when it is free."""
        if not set(_STRING) & set(s):
            return None
        lo, hi = count_range(s, path, "Length", MAX_LENGTH)
        regexes = []  # a string holds all: the pattern's automaton times the format's
        if "pattern" in s:
            if not isinstance(s["pattern"], str):
                invalid(f"{path}.pattern", "must be a string")
            try:
                text(s["pattern"])  # its own errors, named as the pattern's
            except UnsupportedRegex as e:
                refuse(f"{path}.pattern", str(e))
            regexes.append(s["pattern"])
        if "format" in s:
            if s["format"] not in FORMATS:
                refuse(f"{path}.format", f"{s['format']!r} (known: {', '.join(FORMATS)})")
            regexes.append(FORMATS[s["format"]])
            if s["format"] in FORMAT_LENGTH:
                hi = min(FORMAT_LENGTH[s["format"]], MAX_LENGTH if hi is None else hi)
        try:
            spec = text(tuple(regexes) if len(regexes) > 1 else regexes[0] if regexes else None, lo, hi)
        except UnsupportedRegex as e:
            refuse(f"{path}.pattern", f"{e}, beside format {s['format']!r}" if "format" in s else str(e))
        if not spec.live(*spec.init):
            what = ", ".join(f"{k} {json.dumps(s[k], ensure_ascii=False)}" for k in _STRING if k in s)
            invalid(path, f"no string satisfies {what}")
        return spec

    def number_range(s: dict, integer: bool, path: str) -> Bounds | None:
        """The bounds of a number or integer, None when it has none."""
        if not set(_RANGE) & set(s):
            return None
        got = {}
        for key in _RANGE:
            if key not in s:
                continue
            v = s[key]
            if isinstance(v, bool) or not isinstance(v, int | float) or v != v or v in (float("inf"), float("-inf")):
                invalid(
                    f"{path}.{key}",
                    "must be a number" + (" (draft-04's boolean form is not read)" if isinstance(v, bool) else ""),
                )
            if key == "multipleOf":
                if v <= 0:
                    invalid(f"{path}.{key}", "must be greater than 0")
                exact = Fraction(repr(v))  # the decimal as written: 0.1 is 1/10, not the double nearest it
                if exact.denominator & (exact.denominator - 1):  # validators divide doubles: 0.07 / 0.01 = 7.000...01
                    why = "not a binary fraction: validators divide as doubles and refuse exact multiples"
                    refuse(f"{path}.{key}", f"{v} ({why}, 0.07 / 0.01 = {0.07 / 0.01}; integers, 0.5, 0.25 are kept)")
                got[key] = exact
                continue
            if not integer and len(Decimal(repr(v)).normalize().as_tuple().digits) > DIGITS:
                refuse(f"{path}.{key}", f"{v!r}, over {DIGITS} significant digits on a number")
            got[key] = Fraction(v)

        def tighter(a: tuple, b: tuple, low: bool) -> tuple:  # (value, open) pairs; None: absent
            if a[0] is None or b[0] is None:
                return a if b[0] is None else b
            if a[0] != b[0]:
                return a if (a[0] > b[0]) == low else b
            return (a[0], a[1] or b[1])

        lo = tighter((got.get("minimum"), False), (got.get("exclusiveMinimum"), True), True)
        hi = tighter((got.get("maximum"), False), (got.get("exclusiveMaximum"), True), False)
        spec = Bounds(integer, lo[0], lo[1], hi[0], hi[1], got.get("multipleOf", Fraction(int(integer))))
        if not feasible(spec, ""):
            what = "integer" if integer else f"number of {DIGITS} digits or fewer"
            invalid(path, f"no {what} satisfies {', '.join(f'{k} {s[k]}' for k in _RANGE if k in s)}")
        return spec

    def any_value() -> int:
        if not anything:
            v, more = p.seq(), p.seq()
            anything.append(v)
            p.define(more, p.alt(p.lit(b"]"), p.seq(p.lit(b", "), v, more)))
            arr = p.seq(p.lit(b"["), p.alt(p.lit(b"]"), p.seq(v, more)))
            scalars = (p.seq(p.lit(b'"'), p.node("str")), p.node("num", False), p.lit(b"true"), p.lit(b"false"))
            p.define(v, p.alt(p.node("json"), arr, *scalars, p.lit(b"null")))
        return anything[0]

    if strict and (not isinstance(schema, dict) or schema.get("type") != "object" or "anyOf" in schema):
        invalid(f"{at}.type", "the root must be of type 'object'")
    root = build(schema, at)
    for ref, i in refs.items():  # {"$ref": "#/$defs/a"} as a's whole definition: no value can ever match it
        if not p.opens(i):
            where = at + "".join(f".{x}" for x in ref[2:].split("/") if x)
            raise BadRequest(f"{where}: refers only to itself ($ref {ref!r}): no value matches it", where)
    return root


_TYPES = {  # JSON schema type → whether a parsed JSON value is of it
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool) or isinstance(v, float) and v.is_integer(),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
}


def _dump(v: Any) -> bytes:
    return json.dumps(v, ensure_ascii=False).encode()
