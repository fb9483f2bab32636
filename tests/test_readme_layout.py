"""The README's layout section names every module of the package, and nothing that is gone."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _layout_block() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    return section.split("```", 2)[1]


def test_layout_names_every_module():
    block = _layout_block()
    named = set(re.findall(r"[\w.]+/|[\w]+\.py", block))
    missing = []
    for path in sorted((ROOT / "weitiao").rglob("*.py")):
        rel = path.relative_to(ROOT / "weitiao")
        if rel.name == "__init__.py" or "static" in rel.parts:
            continue
        if rel.name not in named or any(f"{d}/" not in named for d in rel.parts[:-1]):
            missing.append(rel.as_posix())
    assert not missing, f"README.md ## Layout lacks a line for: {', '.join(missing)}"


def test_layout_names_no_missing_file():
    block = _layout_block()
    have = {p.name for d in ("weitiao", "scripts", "benchmarks", "experiments") for p in (ROOT / d).rglob("*.py")}
    stale = sorted(set(re.findall(r"\b\w+\.py\b", block)) - have)
    assert not stale, f"README.md ## Layout names files that do not exist: {', '.join(stale)}"
