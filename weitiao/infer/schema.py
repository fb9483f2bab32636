"""A strict tool's JSON schema (`tools[].function.strict: true`) as a `weitiao.infer.constrain.Pattern` grammar.

OpenAI's Structured Outputs rules: the root is an object; every object lists all its properties in `required`
and sets `additionalProperties: false` (OpenAI refuses the request otherwise, and so does this, naming the
path). What is enforced: `type` (one or a list), `properties`, `items`, `minItems`/`maxItems`, `enum`, `const`,
`anyOf`, `$ref` into the schema (`#`, `#/$defs/...`, recursion too). Annotations (`description`, `title`,
`default`, `examples`, `$comment`) change nothing. Anything else (`pattern`, `format`, `minimum`,
`minLength`, ...) is a 400 naming `tools.i.function.strict`: the mask could not keep it, and a reply that
breaks it must not pass as strict.

Keys come in the schema's order with the JSON style of weitiao.infer.constrain (`{"a": 1, "b": [true]}`): a
strict reply's text has one spelling per value, but strings, whose content is free.
"""

from __future__ import annotations

import json
from typing import Any

from weitiao.infer.api import BadRequest
from weitiao.infer.constrain import Pattern

_NOTES = {"description", "title", "default", "examples", "$comment", "$defs", "definitions"}
_KNOWN = _NOTES | {"type", "properties", "required", "additionalProperties", "items", "minItems", "maxItems"}
_KNOWN |= {"enum", "const", "anyOf", "$ref"}
_MAX_ITEMS = 64  # minItems/maxItems are unrolled into the grammar: one rule per place
_MAX_DEPTH = 64  # schemas inside schemas (properties, items, anyOf); compiled by recursion


def strict_arguments(p: Pattern, parameters: dict | None, where: str) -> int:
    """The node in `p` for a strict function's arguments; `where`: "tools.i.function" (for the 400s)."""
    strict = f"{where}.strict"
    if parameters is None:  # OpenAI: no parameters is an empty parameter list
        return p.lit(b"{}")
    refs: dict[str, int] = {}

    def refuse(path: str, what: str) -> None:
        msg = f"{strict}: {path} ({what}) is not enforced by this server's constrained decoding"
        raise BadRequest(f"{msg}; drop it, or send strict: false", strict)

    def openai_refuses(path: str, what: str) -> None:  # as OpenAI answers a strict schema that breaks its rules
        raise BadRequest(f"{path}: {what} (strict function schemas: OpenAI's rules)", path)

    def resolve(ref: str, path: str) -> int:
        if ref in refs:
            return refs[ref]
        if not (ref == "#" or ref.startswith("#/")):
            refuse(f"{path}.$ref", f"{ref!r}, outside the schema")
        target: Any = parameters
        for part in ref[2:].split("/") if ref != "#" else []:
            part = part.replace("~1", "/").replace("~0", "~")
            if isinstance(target, list) and part.isdigit() and int(part) < len(target):  # "#/.../anyOf/0"
                target = target[int(part)]
            elif isinstance(target, dict) and part in target:
                target = target[part]
            else:
                openai_refuses(f"{path}.$ref", f"{ref!r} points to nothing in the schema")
        refs[ref] = p.seq()  # a placeholder first: the target may refer to itself
        p.define(refs[ref], build(target, f"{where}.parameters" + "".join(f".{x}" for x in ref[2:].split("/") if x)))
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
        if not isinstance(s, dict):
            openai_refuses(path, "a schema must be an object")
        if unknown := sorted(set(s) - _KNOWN):
            refuse(f"{path}.{unknown[0]}", json.dumps(s[unknown[0]], ensure_ascii=False)[:60])
        if "$ref" in s:
            if extra := sorted(set(s) - _NOTES - {"$ref"}):
                refuse(f"{path}.{extra[0]}", "beside $ref")
            return resolve(s["$ref"], path)
        if "const" in s or "enum" in s:
            key = "const" if "const" in s else "enum"
            if extra := sorted({"const", "enum", "anyOf"} & set(s) - {key}):  # one of them would be dropped
                refuse(f"{path}.{extra[0]}", f"beside {key}")
            values = [s["const"]] if key == "const" else s["enum"]
            if not isinstance(values, list) or not values:
                openai_refuses(f"{path}.enum", "must be a non-empty array")
            types = s.get("type", list(_TYPES))
            for v in values:
                if not any(_TYPES.get(t, lambda _: False)(v) for t in (types if isinstance(types, list) else [types])):
                    openai_refuses(f"{path}.{key}", f"{json.dumps(v, ensure_ascii=False)} is not of type {types}")
            return p.alt(*(p.lit(_dump(v)) for v in values))
        if "anyOf" in s:
            if extra := sorted(set(s) - _NOTES - {"anyOf"}):
                refuse(f"{path}.{extra[0]}", "beside anyOf")
            if not isinstance(s["anyOf"], list) or not s["anyOf"]:
                openai_refuses(f"{path}.anyOf", "must be a non-empty array")
            return p.alt(*(build(x, f"{path}.anyOf.{k}") for k, x in enumerate(s["anyOf"])))
        if "type" not in s:
            openai_refuses(f"{path}.type", "required (or enum, const, anyOf, $ref)")
        types = s["type"] if isinstance(s["type"], list) else [s["type"]]
        return p.alt(*(typed(s, t, path) for t in types))

    def typed(s: dict, t: Any, path: str) -> int:
        if t == "string":
            return p.seq(p.lit(b'"'), p.node("str"))
        if t in ("number", "integer"):
            return p.node("num", t == "integer")
        if t == "boolean":
            return p.alt(p.lit(b"true"), p.lit(b"false"))
        if t == "null":
            return p.lit(b"null")
        if t == "object":
            return obj(s, path)
        if t == "array":
            return array(s, path)
        openai_refuses(f"{path}.type", f"{t!r} is no JSON schema type")
        raise AssertionError

    def obj(s: dict, path: str) -> int:
        props = s.get("properties", {})
        if not isinstance(props, dict):
            openai_refuses(f"{path}.properties", "must be an object")
        if s.get("additionalProperties") is not False:
            openai_refuses(f"{path}.additionalProperties", "must be false")
        required = s.get("required", [])
        missing = [k for k in props if not isinstance(required, list) or k not in required]
        if missing or not isinstance(required, list):
            openai_refuses(f"{path}.required", f"must list every key in properties; missing {missing}")
        if extra := [k for k in required if k not in props]:
            openai_refuses(f"{path}.required", f"{extra} not in properties")
        if not props:
            return p.lit(b"{}")
        parts = []
        for k, (name, sub) in enumerate(props.items()):
            parts += [p.lit((b"{" if k == 0 else b", ") + _dump(name) + b": "), build(sub, f"{path}.properties.{name}")]
        return p.seq(*parts, p.lit(b"}"))

    def array(s: dict, path: str) -> int:
        if "items" not in s:
            openai_refuses(f"{path}.items", "required for an array")
        lo, hi = s.get("minItems", 0), s.get("maxItems")
        for key, v in (("minItems", lo), ("maxItems", hi)):
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
                openai_refuses(f"{path}.{key}", "must be a non-negative integer")
            if v is not None and v > _MAX_ITEMS:
                refuse(f"{path}.{key}", f"{v}, over {_MAX_ITEMS}")
        if hi is not None and hi < lo:
            openai_refuses(f"{path}.maxItems", f"{hi} is under minItems {lo}")
        item = build(s["items"], f"{path}.items")
        more = p.seq()  # after one item or more, with no upper bound left: "]" or ", " item, again
        p.define(more, p.alt(p.lit(b"]"), p.seq(p.lit(b", "), item, more)))
        rest = more if hi is None else p.lit(b"]")  # after the last place
        for k in range((hi if hi is not None else lo) - 1, 0, -1):  # rest after k items
            nxt = p.seq(p.lit(b", "), item, rest)
            rest = nxt if k < lo else p.alt(p.lit(b"]"), nxt)
        first = p.seq(item, rest)
        return p.seq(p.lit(b"["), first if lo > 0 else p.alt(p.lit(b"]"), first) if hi != 0 else p.lit(b"]"))

    if not isinstance(parameters, dict) or parameters.get("type") != "object" or "anyOf" in parameters:
        openai_refuses(f"{where}.parameters.type", "a strict function's parameters must be of type 'object'")
    root = build(parameters, f"{where}.parameters")
    for ref, i in refs.items():  # {"$ref": "#/$defs/a"} as a's whole definition: no value can ever match it
        if not p.opens(i):
            at = f"{where}.parameters" + "".join(f".{x}" for x in ref[2:].split("/") if x)
            raise BadRequest(f"{at}: refers only to itself ($ref {ref!r}): no value matches it", at)
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
