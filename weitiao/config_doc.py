"""Every key of a config class with its type, default and description: `weitiao CMD --help-config` and
`weitiao config show CMD`. Read from the pydantic classes themselves, so the list cannot drift from them;
nested sections are dotted keys (`train.lr`).
"""

from __future__ import annotations

import json
import types
import typing
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined


@dataclass
class KeyDoc:
    key: str  # dotted
    type: str
    default: str  # "required" when the key has none
    description: str


def section(annotation: Any) -> type[BaseModel] | None:
    """The config class of a nested section (also inside `X | None`), else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return next((m for a in typing.get_args(annotation) if (m := section(a))), None)
    if typing.get_origin(annotation) is typing.Annotated:
        return section(typing.get_args(annotation)[0])
    return None


def type_name(annotation: Any) -> str:
    """`Literal["a", "b"]` → a|b, `int | None` → int|null, `list[str]` → list[str]."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin is typing.Literal:
        return "|".join(str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return "|".join(type_name(a) for a in args)
    if annotation is type(None):
        return "null"
    if origin is not None:
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(type_name(a) for a in args)}]"
    return getattr(annotation, "__name__", str(annotation))


def _default(field: Any) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    if isinstance(value, BaseModel):
        value = value.model_dump()
    try:
        return json.dumps(value, ensure_ascii=False)
    except TypeError:
        return str(value)


def config_keys(cls: type[BaseModel], prefix: str = "") -> list[KeyDoc]:
    """Every leaf key of `cls`, sections walked in declaration order."""
    out = []
    for name, field in cls.model_fields.items():
        sub = section(field.annotation)
        if sub is not None:
            out += config_keys(sub, f"{prefix}{name}.")
        else:
            desc = " ".join((field.description or "").split())
            out.append(KeyDoc(prefix + name, type_name(field.annotation), _default(field), desc))
    return out


def render(cls: type[BaseModel], title: str) -> str:
    """Plain aligned text: one line per key (key, type, default), its description below it."""
    keys = config_keys(cls)
    width = max(len(k.key) for k in keys)
    lines = [f"{title}: {len(keys)} keys", ""]
    for k in keys:
        lines.append(f"{k.key:<{width}}  {k.type}  = {k.default}")
        if k.description:
            lines.append(f"{'':<{width}}  {k.description}")
    return "\n".join(lines) + "\n"
