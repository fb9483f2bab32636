"""Run forms generated from the recipes' pydantic config classes, and form values → a validated config.

The form is walked from `model_fields` (nested sections, defaults, descriptions, Literal choices), so a
renamed or new config key shows up without touching the console. Values come back as text parsed like
`key=value` command-line overrides (YAML scalars and lists); paths must lie inside the allowed roots.
"""

from __future__ import annotations

import importlib
import json
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ValidationError

from weitiao.config import guessed, list_hint, path_keys, read_yaml_mapping, resolve_paths
from weitiao.errors import UserError
from weitiao.ui.help_zh import zh
from weitiao.ui.paths import Roots

RECIPES = ("sft", "dpo", "rm", "ppo")
WRITTEN = {("data", "cache_dir")}  # path keys the run writes into (train.out is the console's): a writable root
OWN = ("train", "out")  # the console's run folder (`weitiao ui --runs`), set by `build`, not a path from the browser


def config_class(kind: str) -> type[BaseModel]:
    """The config class of recipe `kind` (weitiao.recipes.<kind>.<KIND>Config)."""
    if kind not in RECIPES:
        raise UserError(f"recipe {kind!r}: choose one of {', '.join(RECIPES)}")
    mod = importlib.import_module(f"weitiao.recipes.{kind}")
    for name, obj in vars(mod).items():
        if name.lower() == f"{kind}config" and isinstance(obj, type) and issubclass(obj, BaseModel):
            return obj
    raise LookupError(f"weitiao.recipes.{kind} has no {kind.upper()}Config class")


def _args(annotation: Any) -> tuple[Any, ...]:
    """The members of a Union / Optional, else the annotation itself."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def _strip(annotation: Any) -> Any:
    return typing.get_args(annotation)[0] if typing.get_origin(annotation) is typing.Annotated else annotation


def _section(annotation: Any) -> type[BaseModel] | None:
    for a in _args(_strip(annotation)):
        a = _strip(a)
        if isinstance(a, type) and issubclass(a, BaseModel):
            return a
    return None


def _choices(annotation: Any) -> list | None:
    members = [_strip(a) for a in _args(_strip(annotation)) if a is not type(None)]
    if len(members) == 1 and typing.get_origin(members[0]) is Literal:
        return list(typing.get_args(members[0]))
    return None


def as_text(value: Any) -> str:
    """A default as the text box shows it: plain scalars, YAML flow lists, '' for null."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple, dict)):
        return yaml.safe_dump(list(value) if isinstance(value, tuple) else value, default_flow_style=True,
                              allow_unicode=True, width=10_000).strip()  # fmt: skip
    return yaml.safe_dump(value).removesuffix("\n...\n").strip()


def form(cls: type[BaseModel], prefix: tuple[str, ...] = ()) -> list[dict]:
    """Every key of `cls`: {key, name, widget, default, help, help_zh, required, choices?, path?} or a section
    with fields (help_zh: the Chinese help, weitiao.ui.help_zh)."""
    paths = path_keys(cls)
    out: list[dict] = []
    for name, f in cls.model_fields.items():
        key = (*prefix, name)
        sub = _section(f.annotation)
        if sub is not None:
            doc = (sub.__doc__ or "").strip().splitlines()
            # a section that defaults to None (ppo.critic_lora) is sent only when the user switches it on
            off = not f.is_required() and f.get_default(call_default_factory=True) is None
            text = f.description or (doc[0] if doc else "")
            out.append({"key": ".".join(key), "name": name, "widget": "section", "help": text, "help_zh": zh(text),
                        "optional": off, "fields": form(sub, key)})  # fmt: skip
            continue
        default = None if f.is_required() else f.get_default(call_default_factory=True)
        item: dict[str, Any] = {
            "key": ".".join(key),
            "name": name,
            "help": f.description or "",
            "help_zh": zh(f.description or ""),
            "required": f.is_required(),
            "optional": type(None) in _args(_strip(f.annotation)),
        }
        choices = _choices(f.annotation)
        if default is not None and isinstance(default, bool) and _strip(f.annotation) is bool:
            item.update(widget="bool", default=default)
        elif choices is not None:
            item.update(widget="select", choices=[str(c) for c in choices], default=as_text(default))
        else:
            item.update(widget="text", default=as_text(default))
        if (kind := paths.get((name,))) is not None:
            item["path"] = "model" if kind.only_if_exists else "file"
            item["list"] = any(typing.get_origin(_strip(a)) is list for a in _args(_strip(f.annotation)))
        out.append(item)
    return out


def _fields(items: list[dict]) -> Iterator[dict]:
    """The keys of `form`'s output, sections opened."""
    for x in items:
        yield from _fields(x["fields"]) if x["widget"] == "section" else [x]


def _optional_sections(items: list[dict]) -> tuple[str, ...]:
    """'KEY.' of each section that defaults to None (ppo.critic_lora). Switched on, it takes its boxes as shown, each
    key set: one left unset there is not the class default its box shows but the actor's (`roles.critic_settings`)."""
    out: tuple[str, ...] = ()
    for x in items:
        if x["widget"] == "section":
            out += (f"{x['key']}.",) if x["optional"] else _optional_sections(x["fields"])
    return out


def parse_value(text: Any) -> Any:
    """Form text → value, as a `key=value` override is parsed (YAML scalar or list); '' → null."""
    if not isinstance(text, str):
        return text
    if text.strip() == "":
        return None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _check_paths(cls: type[BaseModel], data: dict, roots: Roots) -> None:
    """Every path-typed value must resolve inside the roots; model refs that are not paths (hub ids) pass."""
    for keys, kind in path_keys(cls).items():
        if keys == OWN:
            continue
        node: Any = data
        for k in keys[:-1]:
            node = node.get(k) if isinstance(node, dict) else None
        if not isinstance(node, dict) or node.get(keys[-1]) is None:
            continue
        value, what = node[keys[-1]], ".".join(keys)
        if kind.unless_set and node.get(kind.unless_set):  # dataset names: their dataset_info.json and files
            folder = roots.resolve(str(node[kind.unless_set]), ".".join((*keys[:-1], kind.unless_set)))
            check_reads(value, folder, what, roots)
            continue
        items = value if isinstance(value, list) else [value]
        fixed = []
        for v in items:
            if not isinstance(v, str) or v in kind.keywords or "://" in v:
                fixed.append(v)
                continue
            file, colon, fn = v.rpartition(":")
            if kind.only_if_exists and colon and file.endswith(".py"):  # reward.path rewards/my.py:score
                fixed.append(f"{roots.resolve(file, what)}:{fn}")  # as the trainer runs it: absolute, in the roots
                continue
            p = Path(v).expanduser()
            local = p if p.is_absolute() else roots.roots[0] / p
            if kind.only_if_exists and not local.exists() and not p.is_absolute() and not v.startswith((".", "~")):
                fixed.append(v)  # a hub id or module:function
                continue
            fixed.append(str(roots.resolve(v, what, write=keys in WRITTEN)))
        node[keys[-1]] = fixed if isinstance(value, list) else fixed[0]
        if kind.unless_set:  # data files: a folder or glob among them may hold a link out
            check_reads([v for v in fixed if isinstance(v, str) and "://" not in v], None, what, roots)


def check_reads(entries: Any, folder: Path | None, what: str, roots: Roots) -> None:
    """Every file the data entries `entries` (set as `what`) read must resolve inside the roots: a folder or glob may
    hold a link out. With `folder` (a LLaMA-Factory folder) they are dataset names: their dataset_info.json, read
    first, and every file_name, which may lead anywhere (`../`, an absolute path, a link). The run form and the Data
    tab both check here: one wording."""
    from weitiao.data.formats import data_files

    for entry in entries if isinstance(entries, list) else [entries]:
        files = data_files([str(entry)], folder)
        source = repr(str(entry))
        if folder is not None:
            info, *files = files
            roots.resolve(str(info), f"{what}: dataset {entry!r}: its")
            source = f"dataset {entry!r} of {info}"
        for f in files:
            roots.resolve(str(f), f"{what}: {source} reads")


def build(kind: str, values: dict[str, Any], roots: Roots, out: Path) -> BaseModel:
    """Form values {dotted key: text, bool or null} → the validated config, `train.out` set to `out`."""
    cls = config_class(kind)
    items = form(cls)
    shown = {f["key"]: f["default"] for f in _fields(items) if not f["required"]}
    opted = _optional_sections(items)
    data: dict = {}
    for key, text in values.items():
        if not isinstance(key, str) or not key:
            raise UserError(f"form key {key!r}: not a config key")
        if isinstance(text, str) and not text.strip() and not key.startswith(opted):
            continue  # left empty: the class default (the page sends null to clear an optional key)
        value = parse_value(text)  # '' → None: an empty box of a section switched on
        node = data
        parts = key.split(".")
        for k in parts[:-1]:
            node = node.setdefault(k, {})  # an optional section switched on is sent even with defaults only
            if not isinstance(node, dict):
                raise UserError(f"{key}: {k} is not a section")
        # The page sends every box; one still at its default is left unset, as a YAML that omits it: a recipe refuses
        # some keys when set (lora.dropout under train.disable_dropout), not when left at their default.
        if key not in shown or ("" if text is None else text) != shown[key] or key.startswith(opted):  # null: ""
            node[parts[-1]] = value
    given = data.get("train", {}).get("out") if isinstance(data.get("train"), dict) else None
    if given is not None and Path(str(given)).expanduser().resolve() != out.resolve():
        raise UserError(f"train.out {given}: the console writes every run to its own folder ({out}); leave it empty")
    data.setdefault("train", {})["out"] = str(out)
    _check_paths(cls, data, roots)
    try:
        cfg = cls.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        more = f" (and {len(e.errors()) - 1} more)" if len(e.errors()) > 1 else ""
        raise UserError(f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}{list_hint(err)}{more}") from None
    if guess := guessed(data, cfg):  # a box's `1` for a yes/no key, `true` for a number
        raise UserError(f"{'.'.join(str(x) for x in guess[0])}: {guess[1]}")
    if getattr(cfg.train, "disable_dropout", None) is not None:  # DPO, RM, PPO: the YAML holds the dropout they run
        from weitiao.models.load import lora_as_trained

        cfg.lora = lora_as_trained(cfg.lora, cfg.train.disable_dropout)
    return cfg


def recheck(kind: str, config_yaml: str, roots: Roots) -> None:
    """A run's saved config still reads only inside the roots (before a resume: a dataset_info.json, or a link
    among its files, may have changed since the run was made)."""
    _check_paths(config_class(kind), yaml.safe_load(config_yaml), roots)


def preset(path: Path, kind: str = "sft") -> dict[str, Any]:
    """A config file as form values {dotted key: text or bool}, its paths made absolute; train.out left out
    (each console run has its own folder)."""
    data = resolve_paths(read_yaml_mapping(path), config_class(kind), path.parent)
    out: dict[str, Any] = {}

    def walk(node: dict, prefix: str) -> None:
        for k, v in node.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            elif f"{prefix}{k}" != "train.out":
                # lists as JSON, which the page's file picker appends to
                out[f"{prefix}{k}"] = v if isinstance(v, bool) else json.dumps(v) if isinstance(v, list) else as_text(v)

    walk(data, "")
    return out
