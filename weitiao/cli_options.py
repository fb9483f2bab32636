"""Command-line options generated from a settings dataclass (litgpt's habit): one flag per field, its type
from the annotation and its help from the field's docstring, so a command does not re-declare the fields.

    @app.command()
    @options_from(PlanInput, {"epochs": Flag(parse=parse_epochs, shown="1-3")})
    def plan(p: PlanInput, as_json: bool = typer.Option(False, "--json")) -> None: ...
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import typer


@dataclass(frozen=True)
class Flag:
    """How one field differs on the command line."""

    names: tuple[str, ...] = ()  # default: --field-name
    parse: Callable[[str], Any] | None = None  # the flag is text, parsed into the field's value
    shown: str | None = None  # the default as written on the command line (with `parse`)


def field_docs(cls: type) -> dict[str, str]:
    """Field name → the docstring written under it in the class body."""
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    docs = {}
    for a, b in zip(body, body[1:]):
        if isinstance(a, ast.AnnAssign) and isinstance(a.target, ast.Name) and isinstance(b, ast.Expr):
            if isinstance(b.value, ast.Constant) and isinstance(b.value.value, str):
                docs[a.target.id] = " ".join(b.value.value.split())
    return docs


def _cli_type(annotation: Any) -> Any:
    """Literal choices become plain text: the settings class checks them and says what is allowed."""
    if typing.get_origin(annotation) is typing.Literal:
        return str
    args = typing.get_args(annotation)
    if type(None) in args and len(args) == 2:
        return _cli_type(next(a for a in args if a is not type(None))) | None
    return annotation


def options_from(cls: type, flags: dict[str, Flag] | None = None) -> Callable[[Callable], Callable]:
    """Turn `fn(settings: cls, **options)` into a typer command taking every field of `cls` as an option."""
    flags = flags or {}
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    fields = dataclasses.fields(cls)

    def wrap(fn: Callable) -> Callable:
        fn_hints = typing.get_type_hints(fn)
        own = list(inspect.signature(fn).parameters.values())[1:]  # after the settings parameter
        params, annotations = [], {}
        for f in fields:
            flag = flags.get(f.name, Flag())
            kind = str if flag.parse else _cli_type(hints[f.name])
            default = flag.shown if flag.parse else ... if f.default is dataclasses.MISSING else f.default
            flag_name = f.name.replace("_", "-")
            names = flag.names or ((f"--{flag_name}/--no-{flag_name}",) if kind is bool else (f"--{flag_name}",))
            option = typer.Option(default, *names, help=docs.get(f.name))
            params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=kind))
            annotations[f.name] = kind
        for p in own:
            params.append(p.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=fn_hints[p.name]))
            annotations[p.name] = fn_hints[p.name]

        def command(**kw: Any) -> Any:
            values = {f.name: kw.pop(f.name) for f in fields}
            for name, flag in flags.items():
                if flag.parse and values[name] is not None:
                    values[name] = flag.parse(values[name])
            return fn(cls(**values), **kw)

        command.__name__, command.__qualname__, command.__doc__ = fn.__name__, fn.__qualname__, fn.__doc__
        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__annotations__ = annotations
        return command

    return wrap


def given_flags(ctx: typer.Context, *names: str) -> list[str]:
    """The options among `names` (parameter names) that the command line set, as --flag-names."""
    given = [n for n in names if getattr(ctx.get_parameter_source(n), "name", None) == "COMMANDLINE"]  # typer's click
    return [f"--{n.replace('_', '-')}" for n in given]
