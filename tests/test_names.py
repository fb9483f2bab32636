"""Names that say what they are: package docstrings list every module; no alias shadows torch's F."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "weitiao"


def test_safety_docstring_lists_every_module():
    doc = ast.get_docstring(ast.parse((PKG / "safety" / "__init__.py").read_text(encoding="utf-8"))) or ""
    listed = set(re.findall(r"^(\S+?)(?:\.py|/)\s", doc, re.M))
    have = {p.stem for p in (PKG / "safety").glob("*.py") if p.stem != "__init__"}
    have |= {p.name for p in (PKG / "safety").iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert have - listed == set(), f"safety/__init__ docstring misses {sorted(have - listed)}"
    assert listed - have == set(), f"safety/__init__ docstring lists missing {sorted(listed - have)}"


def test_F_means_torch_functional_only():
    """`F` is torch.nn.functional by convention; any other module imported as F is renamed."""
    bad = []
    for path in PKG.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for a in node.names:
                    full = f"{node.module}.{a.name}" if isinstance(node, ast.ImportFrom) else a.name
                    if a.asname == "F" and full != "torch.nn.functional":
                        bad.append(f"{path.relative_to(PKG.parent)}:{node.lineno}: {full} as F")
    assert not bad, "\n".join(bad)


def test_demo_config_ships_in_the_package_and_matches_the_example():
    """`weitiao demo` must find its config in a wheel install (no examples/ there); the twin stays equal."""
    import fnmatch

    import pytest

    from weitiao.config import load_config
    from weitiao.recipes import demo
    from weitiao.recipes.dpo import DPOConfig
    from weitiao.recipes.sft import SFTConfig

    tomllib = pytest.importorskip("tomllib")
    globs = tomllib.loads((PKG.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["weitiao"]
    for shipped, cls, twin in (
        (demo.EXAMPLE, SFTConfig, "demo_sft.yaml"),
        (demo.DPO_EXAMPLE, DPOConfig, "demo_dpo.yaml"),
    ):
        shipped = shipped.resolve()
        assert shipped.is_file() and PKG in shipped.parents, shipped
        assert any(fnmatch.fnmatch(shipped.relative_to(PKG).as_posix(), g) for g in globs)
        a = load_config(cls, shipped, ["train.out=runs/x"]).model_dump()
        b = load_config(cls, PKG.parent / "examples" / twin, ["train.out=runs/x"]).model_dump()
        assert a == b
