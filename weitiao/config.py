"""YAML config files + dotted command-line overrides → a recipe's typed (pydantic) config."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from weitiao.errors import UserError

C = TypeVar("C", bound=BaseModel)


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


def read_yaml_mapping(path: Path, expected: str = "a mapping") -> dict:
    """Parse a YAML file that must hold a mapping; errors name the file (and line)."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise UserError(f"{path}{line}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected {expected}")
    return data


def load_config(cls: type[C], path: str | Path | None, overrides: list[str] | None = None) -> C:
    """Read YAML (if given), apply overrides, validate; errors name the file and the key."""
    data: dict = {}
    where = str(path) if path else "config"
    if path:
        p = Path(path)
        if not p.exists():
            raise UserError(f"{p}: config file not found")
        data = read_yaml_mapping(p, "a mapping of sections at the top level")
    data = apply_overrides(data, overrides or [])
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(x) for x in err["loc"])
        more = f" (and {len(e.errors()) - 1} more)" if len(e.errors()) > 1 else ""
        raise UserError(f"{where}: {key}: {err['msg']}{more}") from None


def dump_config(cfg: BaseModel) -> str:
    """The config as YAML, with credentials in URLs redacted (config.yaml is shared with runs)."""
    from weitiao.secrets import redact_data

    return yaml.safe_dump(redact_data(cfg.model_dump(mode="json")), allow_unicode=True, sort_keys=False)
