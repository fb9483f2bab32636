"""YAML config files + dotted `key.path=value` overrides → a typed (pydantic) config: recipes
(`load_config`) and log profiles (weitiao.logs.config) read theirs through the same functions.

Paths written in a config file are relative to that file's folder (`~` expands; absolute paths
stay): fields typed `ConfigPath` always, `ModelRef` (model dir, hub id, module:function or URL)
when the path exists there or starts with ./ or ../ (no hub id does: a missing folder is then named as
missing beside the config, not looked up in the current folder). Paths given as command-line overrides are
relative to the current directory, as on any command line. Either way the config a run records holds absolute paths.
"""

from __future__ import annotations

import os
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from weitiao.errors import UserError, near_miss
from weitiao.io import read_text

C = TypeVar("C", bound=BaseModel)


@dataclass(frozen=True)
class _PathKind:
    only_if_exists: bool  # True: a model dir/hub id/module:function; a relative path is taken only if it exists
    keywords: tuple[str, ...] = ()  # values that are not paths (train.resume: auto, none, force)
    unless_set: str | None = None  # a sibling key that, when set, makes the values names (data.dataset_dir)


ConfigPath = Annotated[str, _PathKind(only_if_exists=False)]
DataPath = Annotated[str, _PathKind(only_if_exists=False, unless_set="dataset_dir")]
ModelRef = Annotated[str, _PathKind(only_if_exists=True, keywords=("demo",))]
ResumeRef = Annotated[str, _PathKind(only_if_exists=False, keywords=("auto", "none", "force"))]


def _kind_of(annotation: Any) -> _PathKind | None:
    """The path marker inside an annotation such as ConfigPath, list[ConfigPath] or ModelRef | None."""
    if typing.get_origin(annotation) is Annotated:
        marks = [m for m in annotation.__metadata__ if isinstance(m, _PathKind)]
        return marks[0] if marks else _kind_of(typing.get_args(annotation)[0])
    for arg in typing.get_args(annotation):
        if (kind := _kind_of(arg)) is not None:
            return kind
    return None


def _submodel(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return next((m for a in typing.get_args(annotation) if (m := _submodel(a))), None)
    return None


def path_keys(cls: type[BaseModel], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], _PathKind]:
    """Dotted keys of every path-typed field of a config class (nested sections included)."""
    out: dict[tuple[str, ...], _PathKind] = {}
    for name, f in cls.model_fields.items():
        kind = next((m for m in f.metadata if isinstance(m, _PathKind)), None) or _kind_of(f.annotation)
        if kind is not None:
            out[(*prefix, name)] = kind
        elif (sub := _submodel(f.annotation)) is not None:
            out |= path_keys(sub, (*prefix, name))
    return out


def resolve_config_path(value: str, base: Path, kind: _PathKind) -> str:
    """`value` as written in a config file in folder `base` → an absolute path (or unchanged)."""
    if not value or value in kind.keywords or "://" in value:
        return value
    p = Path(value).expanduser()
    if p.is_absolute():
        return str(p)
    full = os.path.abspath(base / p)
    explicit = value.startswith(("./", "../", ".\\", "..\\")) or value in (".", "..")  # a path, never a hub id
    if kind.only_if_exists and not explicit and not os.path.exists(full):
        file, colon, fn = value.rpartition(":")
        if colon and file.endswith(".py") and os.path.isfile(base / file):  # rewards/my.py:score beside the config
            return f"{os.path.abspath(base / file)}:{fn}"
        return value  # a hub id or module:function, not a path next to the config
    return full


def resolve_paths(data: dict, cls: type[BaseModel], base: Path, overridden: set[tuple[str, ...]] = frozenset()) -> dict:
    """Rewrite the path fields of a config mapping: against `base` (the config file's folder), or the
    cwd for the keys in `overridden` (given on the command line)."""
    for keys, kind in path_keys(cls).items():
        node: Any = data
        for k in keys[:-1]:
            node = node.get(k) if isinstance(node, dict) else None
        if not isinstance(node, dict) or keys[-1] not in node or (kind.unless_set and node.get(kind.unless_set)):
            continue
        root = Path.cwd() if any(keys[:i] in overridden for i in range(1, len(keys) + 1)) else base
        value = node[keys[-1]]
        if isinstance(value, str):
            node[keys[-1]] = resolve_config_path(value, root, kind)
        elif isinstance(value, list):
            node[keys[-1]] = [resolve_config_path(v, root, kind) if isinstance(v, str) else v for v in value]
    return data


def parse_override(item: str) -> tuple[list[str], Any]:
    """`train.lr=2e-4` → (["train", "lr"], 2e-4); values are parsed as YAML scalars/lists."""
    if "=" not in item:
        raise UserError(f"override {item!r}: expected key.path=value, e.g. train.lr=2e-4")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for item in overrides:
        keys, value = parse_override(item)
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise UserError(f"override {item!r}: {k} is not a section")
        node[keys[-1]] = value
    return data


def _yaml_error(path: Path, e: yaml.YAMLError) -> UserError:
    mark = getattr(e, "problem_mark", None)
    line = f":{mark.line + 1}" if mark else ""
    return UserError(f"{path}{line}: not valid YAML ({getattr(e, 'problem', None) or e})")


def read_yaml_mapping(path: Path, expected: str = "a mapping") -> dict:
    """Parse a YAML file that must hold a mapping; errors name the file (and line)."""
    data, _ = _read_yaml(path, expected)
    return data


def read_yaml_node(path: Path, expected: str = "a mapping") -> tuple[dict, yaml.Node | None]:
    """`read_yaml_mapping` plus the composed node tree, for `validate` to name the line of a bad key."""
    return _read_yaml(path, expected)


def _read_yaml(path: Path, expected: str) -> tuple[dict, yaml.Node | None]:
    """(mapping, node tree for line numbers); UTF-8 with or without BOM, errors as `file:line: problem`."""
    text = read_text(path)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise _yaml_error(path, e) from None
    except RecursionError:
        raise UserError(f"{path}: not valid YAML (nested too deeply)") from None
    if data is None:
        return {}, None
    if not isinstance(data, dict):
        line = f":{node.start_mark.line + 1}" if node is not None else ""
        raise UserError(f"{path}{line}: expected {expected}, got {type(data).__name__}")
    if dup := duplicate_key(path, node):
        raise UserError(dup)
    return _unaliased(data), node


def _unaliased(value: Any) -> Any:
    """A copy in which a YAML alias (`critic_lora: *lora`) is its own mapping: PyYAML hands back one shared object,
    so an override of `lora.r` changed the critic's r too."""
    if isinstance(value, dict):
        return {k: _unaliased(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unaliased(v) for v in value]
    return value


def duplicate_key(path: str | Path, node: yaml.Node | None) -> str | None:
    """`file:line: duplicate key …` for the first key repeated within one mapping, anywhere in the tree (YAML
    would silently keep the last), or None."""
    stack = [node] if node is not None else []
    while stack:
        n = stack.pop()
        if isinstance(n, yaml.MappingNode):
            seen: dict[str, int] = {}
            for k, v in n.value:
                if isinstance(k, yaml.ScalarNode) and k.tag != "tag:yaml.org,2002:merge":
                    if k.value in seen:
                        return (f"{path}:{k.start_mark.line + 1}: duplicate key {k.value!r} (first at line "
                                f"{seen[k.value]}): YAML keeps only the last; merge the two")  # fmt: skip
                    seen[k.value] = k.start_mark.line + 1
                stack.append(v)
        elif isinstance(n, yaml.SequenceNode):
            stack.extend(n.value)
    return None


def yaml_line(node: yaml.Node | None, keys: tuple) -> int | None:
    """Line of the deepest node along `keys` (a pydantic error loc) in a composed YAML tree."""
    line = None
    for k in keys:
        if isinstance(node, yaml.MappingNode):
            node = next((v for kn, v in node.value if kn.value == str(k)), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(k, int) and k < len(node.value):
            node = node.value[k]
        else:
            break
        if node is None:
            break
        line = node.start_mark.line + 1
    return line


def _named_key(node: yaml.Node | None, loc: tuple, msg: str) -> tuple:
    """The first key of the section at `loc` that a section-wide error names as `key=` (`r=64 would do nothing`), as a
    one-key suffix of `loc`, so the line is that key's, not the section's; () when it names none written there."""
    for k in loc:
        mapping = isinstance(node, yaml.MappingNode)
        node = next((v for kn, v in node.value if kn.value == str(k)), None) if mapping else None
    if not isinstance(node, yaml.MappingNode):
        return ()
    found = ((re.search(rf"(?<![\w.]){re.escape(kn.value)}=", msg), kn.value) for kn, _ in node.value)
    named = [(m.start(), key) for m, key in found if m]
    return (min(named)[1],) if named else ()


def load_config(cls: type[C], path: str | Path | None, overrides: list[str] | None = None) -> C:
    """Read YAML (if given), apply overrides, validate; errors name the file, line and key."""
    data: dict = {}
    node = None
    where = str(path) if path else "config"
    if path:
        p = Path(path)
        if not p.exists():
            raise UserError(f"{p}: config file not found")
        data, node = _read_yaml(p, "a mapping of sections at the top level")
    data = apply_overrides(data, overrides or [])
    overridden = {tuple(parse_override(o)[0]) for o in overrides or []}
    data = resolve_paths(data, cls, Path(path).parent if path else Path.cwd(), overridden)
    cfg = validate(cls, data, where, node, overrides)
    out = getattr(getattr(cfg, "train", None), "out", None)  # checked now, not after loading the model
    if isinstance(out, str) and Path(out).exists() and not Path(out).is_dir():  # named where it was set
        raise _located(
            ("train", "out"), f"{out} is an existing file; give a folder for the run", where, node, overrides
        )
    if isinstance(out, str) and (clash := _input_in_run_files(cls, cfg, Path(out), Path(path) if path else None)):
        raise _located(("train", "out"), clash, where, node, overrides)
    return cfg


def _dump_file(cls: type[BaseModel], path: Path) -> str:
    """The config file `path` alone (no overrides) as a run records it."""
    data, node = _read_yaml(path, "a mapping of sections at the top level")
    return dump_config(validate(cls, resolve_paths(data, cls, path.parent), str(path), node, []))


# What a run writes into train.out besides checkpoints/step-NNNNNN (train.checkpoint writes them; a fresh run moves
# them aside), here so that loading a config can refuse an input among them.
CONFIG_FILE = "config.yaml"
INPUTS_FILE = "inputs.json"  # fingerprints of the models/adapters the config names (ModelRef keys)
EXPORT_MARKER = ".weitiao-export.json"  # in every `weitiao export`: its files, base, training quant
RUN_FILES = ("metrics.jsonl", "metrics.abandoned.jsonl", "tb", "wandb", "swanlog", "mlflow.db", "final", "golden.jsonl",
             "cost.jsonl", "rejects.jsonl", "eval_rejects.jsonl", CONFIG_FILE, INPUTS_FILE)  # fmt: skip


def is_step_dir(p: Path) -> bool:
    """A name `write_checkpoint` gives (step-NNNNNN): a user's copy (step-000400-best, step-400) is not ours to
    prune or resume from."""
    digits = p.name[5:]
    return p.name.startswith("step-") and digits.isdigit() and p.name == f"step-{int(digits):06d}"


def _input_in_run_files(cls: type[BaseModel], cfg: BaseModel, out: Path, path: Path | None) -> str | None:
    """What is wrong when an input of the run (the config file, a path key's file or folder) is one of the files a
    run writes in `out` (`RUN_FILES`: config.yaml, golden.jsonl, final/, ...) or inside one: the run would
    record over it, or a fresh run move it to out/previous/ as the previous run's (then read it as missing). The
    config.yaml a run recorded (it reads back to the same text) runs again in its own folder."""
    owned = {(out / name).resolve(): name for name in RUN_FILES}
    steps = (out / "checkpoints").resolve()

    def clash(p: Path) -> str | None:
        p = p.expanduser().resolve()
        if step := next((d for d in (p, *p.parents) if d.parent == steps and is_step_dir(d)), None):
            return f"checkpoints/{step.name}"  # a fresh run moves these too
        return next((name for f, name in owned.items() if p == f or f in p.parents), None)

    if path is not None and (name := clash(path)):
        recorded = name == "config.yaml" and path.read_text(encoding="utf-8") == _dump_file(cls, path)
        if not recorded:
            return (
                f"{path} is the config file this run reads, and {out / name} is where a run records its own "
                "(a fresh run moves the previous run's files aside first); keep the config outside train.out, or "
                "set train.out to another folder"
            )
    for keys, kind in path_keys(cls).items():
        if keys in (("train", "out"), ("train", "resume")):
            continue
        section: Any = cfg
        for k in keys[:-1]:
            section = getattr(section, k, None)
        if kind.unless_set and getattr(section, kind.unless_set, None):  # names in data.dataset_dir, not paths
            continue
        value = getattr(section, keys[-1], None)
        for v in value if isinstance(value, list) else [value]:
            if not isinstance(v, str) or not v or v in kind.keywords or "://" in v:
                continue
            file = v.rpartition(":")[0] if v.rpartition(":")[0].endswith(".py") else v  # a reward's file.py:name
            if name := clash(Path(file)):
                return (
                    f"{'.'.join(keys)} is {file}, in {out / name}, which a run writes (a fresh run first moves the "
                    "previous run's to previous/, then writes its own); move it out of train.out, or set train.out "
                    "to another folder"
                )
    return None


def list_hint(err: dict) -> str:
    """For a pydantic error: a key that takes a list given one value (`data.train: chat.jsonl`) → how to write the
    list; '' for any other error."""
    if err["type"] != "list_type" or err.get("input") is None or isinstance(err["input"], (dict, list)):
        return ""
    key, value = ".".join(str(x) for x in err["loc"]), err.get("input")
    shown = value if isinstance(value, str) else repr(value)
    return f"; {key} takes a list: write [{shown}] (YAML, or {key}=[{shown}] on the command line)"


def validate(
    cls: type[C], data: dict, where: str, node: yaml.Node | None = None, overrides: list[str] | None = None
) -> C:
    """`cls` from a mapping, or one line `where[:line]: key.path: problem` (the line from `node`, the
    composed YAML, unless the key came from an `overrides` item)."""
    try:
        cfg = cls.model_validate(data)
    except ValidationError as e:
        errors = e.errors()
        err = errors[0]
        others = [".".join(str(x) for x in o["loc"]) for o in errors[1:]]
        more = f" (also: {', '.join(others[:3])}{', …' * (len(others) > 3)})" if others else ""
        hint = _unknown_key_hint(cls, err["loc"]) if err["type"] == "extra_forbidden" else list_hint(err)
        raise _located(err["loc"], err["msg"], where, node, overrides, f"{hint}{more}") from None
    if guess := guessed(data, cfg):
        raise _located(*guess, where, node, overrides)
    return cfg


def _sets(override: str, key: str) -> bool:
    """Whether `override` gave `key`: its own key, or an item of its list (train.betas=[1.0,0.9] gives .0 and .1)."""
    given = override.split("=", 1)[0].strip()
    return key == given or (key.startswith(given + ".") and key[len(given) + 1 :].isdigit())


def _named_in(override: str, section: str, msg: str) -> bool:
    """Whether an error of `section` (a check across its keys) names the key `override` gave: `init_kl_coef` or
    `ppo.init_kl_coef` in an error of ppo, as a whole word."""
    given = override.split("=", 1)[0].strip()
    if section and not given.startswith(section + "."):
        return False
    names = {given, given[len(section) + 1 :]} if section else {given}
    return any(re.search(rf"(?<![\w.]){re.escape(n)}(?!\w)", msg) for n in names)


def _located(
    loc: tuple, msg: str, where: str, node: yaml.Node | None, overrides: list[str] | None, tail: str = ""
) -> UserError:
    """`where[:line]: key.path: msg{tail}`, the line that of `loc` in `node`; a key that came from an override is
    named there instead, `command line KEY=VALUE: key.path: msg{tail}` (it used to name the config file, where the
    key is not, or holds another value)."""
    key = ".".join(str(x) for x in loc)
    what = f"{key}: {msg}" if key else msg  # a check across sections (loc ()) names its keys in msg
    given = next((o.strip() for o in overrides or [] if _sets(o, key)), None)
    if given is not None:
        return UserError(f"command line {given}: {what}{tail}")
    if named := [o.strip() for o in overrides or [] if _named_in(o, key, msg)]:  # a cross-field error (a section's)
        return UserError(f"command line {' '.join(named)}: {what}{tail}")
    # a key the config file does not hold, made by an override of a key under it (`bad.key=1` makes the unknown `bad`)
    made = next((o.strip() for o in overrides or [] if o.split("=", 1)[0].strip().startswith(f"{key}.")), None)
    if key and made is not None and node is not None and not yaml_line(node, tuple(loc)):
        return UserError(f"command line {made}: {what}{tail}")
    line = yaml_line(node, tuple(loc) + _named_key(node, loc, msg))
    return UserError(f"{f'{where}:{line}' if line else where}: {what}{tail}")


def guessed(data: Any, value: Any, loc: tuple = ()) -> tuple[tuple, str] | None:
    """(key path, problem) of the first value pydantic's lax mode read by guessing, else None: a yes/no read as a
    number (`lora.r: true` → r 1, `train.lr: yes` → 1.0) or a number or word read as a yes/no (`data.packing: 1`,
    `"yes"`, `"off"`). `data` is the mapping as written, `value` what validating it made. Numbers written as
    strings stay accepted: PyYAML reads `lr: 2e-4` (no dot) as the string '2e-4', and it can mean nothing else."""
    if isinstance(value, BaseModel) and isinstance(data, dict):
        pairs = [(k, v, getattr(value, k)) for k, v in data.items() if k in type(value).model_fields]
    elif isinstance(value, dict) and isinstance(data, dict):
        pairs = [(k, v, value[k]) for k, v in data.items() if k in value]
    elif isinstance(value, (list, tuple)) and isinstance(data, (list, tuple)) and len(value) == len(data):
        pairs = list(zip(range(len(data)), data, value))
    elif isinstance(data, bool) and isinstance(value, (int, float)) and not isinstance(value, bool):
        return loc, f"a yes/no ({str(data).lower()}) where a number goes would be read as {value}; write the number"
    elif isinstance(value, bool) and not isinstance(data, bool):
        return loc, f"{data!r} where true or false goes would be read as {str(value).lower()}; write true or false"
    else:
        return None
    return next((g for k, v, out in pairs if (g := guessed(v, out, (*loc, k)))), None)


def _unknown_key_hint(cls: type[BaseModel], loc: tuple) -> str:
    """What to write instead of the unknown key `loc[-1]`: the key one or two typos away (`eval_evry` → eval_every),
    else the keys its section takes (when few), else where they are listed."""
    if near := _near_key(cls, loc):
        return f"; did you mean {near}?"
    section = _section(cls, loc[:-1])
    if section is None:
        return ""
    name = ".".join(map(str, loc[:-1])) or "the top level"
    if len(section.model_fields) <= 12:
        return f"; {name} takes {', '.join(section.model_fields)}"
    recipe = cls.__name__.removesuffix("Config").lower()
    recipe = "logs" if recipe in ("dwell", "chat") else recipe
    known = recipe in ("sft", "dpo", "rm", "ppo", "logs")
    return f"; `weitiao config show{f' {recipe}' * known}` lists the keys of {name}"


def _section(cls: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The config class of the section at `loc` (`()`: `cls` itself), None where `loc` is not a section."""
    for k in loc:
        field = cls.model_fields.get(k) if isinstance(k, str) else None
        if field is None or (cls := _submodel(field.annotation)) is None:
            return None
    return cls


def _near_key(cls: type[BaseModel], loc: tuple) -> str | None:
    """The key of the section at `loc[:-1]` one or two typos from the unknown `loc[-1]` (`eval_evry` → eval_every)."""
    if (section := _section(cls, loc[:-1])) is None:
        return None
    near = near_miss(str(loc[-1]), tuple(section.model_fields), 0.75)
    return ".".join([*map(str, loc[:-1]), near]) if near else None


def dump_config(cfg: BaseModel, set_only: bool = False) -> str:
    """The config as YAML, with credentials in URLs redacted (config.yaml is shared with runs); `set_only`: the keys
    set alone, so that it loads with the same keys set (the rest: their defaults)."""
    from weitiao.secrets import redact_data

    data = cfg.model_dump(mode="json", exclude_unset=set_only)
    return yaml.safe_dump(redact_data(data), allow_unicode=True, sort_keys=False)
