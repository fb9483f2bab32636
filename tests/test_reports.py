"""HTML pages share one base template and one stylesheet, shipped as package data."""

from __future__ import annotations

import ast
import fnmatch
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from weitiao.reports import STYLE, page

ROOT = Path(__file__).resolve().parents[1]
PAGE_MODULES = ["eval/golden.py", "eval/provenance_report.py", "logs/report.py", "dataeng/badcases.py"]


def _shared(html: str, title: str) -> None:
    assert html.startswith("<!doctype html>") and html.count("<html") == 1 and html.rstrip().endswith("</html>")
    assert STYLE.strip() in html and f"<title>{title}</title>" in html


def test_page_escapes_title_not_body():
    html = page("a<b", "<p>x</p>", ".x{color:red}")
    _shared(html, "a&lt;b")
    assert "<p>x</p>" in html and ".x{color:red}" in html


def test_no_report_writes_its_own_head():
    """Negative control on the source: a page module that still builds <!doctype>/<style> itself fails here."""
    for rel in PAGE_MODULES:
        src = (ROOT / "weitiao" / rel).read_text(encoding="utf-8")
        strings = [
            n.value for n in ast.walk(ast.parse(src)) if isinstance(n, ast.Constant) and isinstance(n.value, str)
        ]
        assert not [s for s in strings if "<!doctype" in s.lower() or "<style" in s], rel
        assert "from weitiao.reports import page" in src, rel


def test_reports_render_through_the_base():
    from weitiao.data.prompts import Prompt
    from weitiao.dataeng.badcases import Case, report_html
    from weitiao.eval.golden import GoldenResult, render_report
    from weitiao.logs.report import render_html

    res = GoldenResult([1], {1: "step-1"}, {1: [{"reply": "好", "stopped": True, "metrics": {}}]}, {1: {}}, 1, None,
                       "rougeL", [])  # fmt: skip
    prompts = [Prompt([{"role": "user", "content": "你好"}], None, "g:1")]
    _shared(render_report(Path("runs/x"), prompts, res, []), "golden report · runs/x")
    _shared(report_html([{"cluster": 0, "size": 1, "keywords": ["k"], "tag": ""}], [Case("p", "b", "g")]),
            "bad-case clusters")  # fmt: skip
    rep = {"precision": {}, "sources": {}, "ledgers": {"events": {"kept": 1}}, "top_contexts": {}, "config": {},
           "kind": "dwell", "profile": "p<1>", "events": 1, "pairs": 0, "contexts_with_pairs": 0,
           "inputs": {}}  # fmt: skip
    _shared(render_html(rep, []), "weitiao logs dwell · profile p&lt;1&gt;")


def test_arena_page_extends_the_base(tmp_path):
    from weitiao.eval.arena.app import create_app
    from weitiao.eval.arena.store import ArenaStore

    store = ArenaStore(tmp_path / "a.sqlite")
    html = TestClient(create_app(store)).get("/").text
    _shared(html, "weitiao arena · 盲评")
    assert 'id="vote-a"' in html and "{%" not in html


def test_templates_and_stylesheet_are_package_data():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["weitiao"]
    files = [p.relative_to(ROOT / "weitiao").as_posix() for p in (ROOT / "weitiao").rglob("*")
             if p.suffix in (".html", ".css") and p.is_file()]  # fmt: skip
    assert files and all(any(fnmatch.fnmatch(f, g) for g in globs) for f in files), files
