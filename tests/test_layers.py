"""Import layering of the weitiao package: a lower layer never imports a higher one, and no module cycle.

Walks every `import`/`from` statement (function-local ones too) with the AST, so a lazy import that
hides a cycle or an upward dependency is still caught.
"""

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "weitiao"

# Lowest first; names on one line share a layer. Top-level modules/packages of weitiao.
LAYERS = [
    ["errors", "io", "secrets", "config", "demo", "progress", "reports", "json_reply", "config_doc"],
    ["data"],
    ["losses"],
    ["models"],
    ["train"],
    ["infer"],
    ["teacher"],
    ["eval"],
    ["safety"],
    ["dataeng", "logs", "calc"],
    ["recipes"],
    ["cli", "cli_options", "ui", "__main__", "__init__"],
]
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}
# Known debts, each with its owner; an entry here must only ever be removed.
KNOWN_UPWARD: set[tuple[str, str]] = set()  # (importer, imported) pairs tolerated for now: none
KNOWN_CYCLES = [  # lazy back-imports inside one package (a dispatcher calling the module built on it)
    ["weitiao.data.formats", "weitiao.data.tools"],
    ["weitiao.data.chat", "weitiao.data.tokenize"],
    ["weitiao.safety.pii", "weitiao.safety.pii_fake"],
]
# A package's command module (`commands.py`, `*_commands.py`, `*_cli.py`) is CLI wiring that
# weitiao/cli.py mounts: it sits in the top layer whatever its package.
CLI = "cli"


def _is_command_module(mod: str) -> bool:
    last = mod.split(".")[-1]
    return last == "commands" or last.endswith(("_commands", "_cli"))


def _modules(pkg: Path = PKG) -> dict[str, Path]:
    out = {}
    for path in sorted(pkg.rglob("*.py")):
        parts = list(path.relative_to(pkg.parent).with_suffix("").parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _targets(mod: str, path: Path, node, mods: dict[str, Path]) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "weitiao"]
    if node.level:
        base = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        name = ".".join(base + ([node.module] if node.module else []))
    else:
        name = node.module or ""
    if name.split(".")[0] != "weitiao":
        return []
    # `from weitiao.x import y` imports the submodule y when there is one, else a name from x.
    return [f"{name}.{a.name}" if f"{name}.{a.name}" in mods else name for a in node.names]


def import_edges(pkg: Path = PKG) -> list[tuple[str, str, str]]:
    """(importer, imported, "file:line") for every weitiao-internal import in the package."""
    mods = _modules(pkg)
    edges = []
    for mod, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in _targets(mod, path, node, mods):
                    edges.append((mod, target, f"{path.relative_to(pkg.parent)}:{node.lineno}"))
    return list(dict.fromkeys(edges))  # `from m import a, b` counts once


def _layer(mod: str) -> str:
    if _is_command_module(mod):
        return CLI
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def layer_violations(edges) -> list[str]:
    bad = []
    for src, dst, where in edges:
        a, b = _layer(src), _layer(dst)
        if a not in RANK or b not in RANK:
            bad.append(f"{where}: {src} -> {dst}: module not in LAYERS (add it to tests/test_layers.py)")
        elif RANK[b] > RANK[a]:
            bad.append(f"{where}: {src} ({a}) imports {dst} ({b}), a higher layer")
    return bad


def cycles(edges) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), or a module importing itself."""
    graph: dict[str, set[str]] = {}
    for src, dst, _ in edges:
        graph.setdefault(src, set()).add(dst)
        graph.setdefault(dst, set())
    index, low, stack, on, comps = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph[v]:
                comps.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return comps


def test_every_module_has_a_layer():
    missing = {_layer(m) for m in _modules()} - set(RANK)
    assert not missing, f"top-level weitiao modules missing from LAYERS: {sorted(missing)}"


def test_no_import_goes_up_a_layer():
    bad = layer_violations([e for e in import_edges() if e[:2] not in KNOWN_UPWARD])
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_no_import_cycle():
    edges = import_edges()
    found = [c for c in cycles(edges) if c not in KNOWN_CYCLES]
    lines = []
    for comp in found:
        members = set(comp)
        lines += [f"{where}: {s} -> {d}" for s, d, where in edges if s in members and d in members]
    assert not found, "import cycles:\n" + "\n".join(lines)


def test_checker_catches_upward_lazy_import_and_cycle(tmp_path):
    """Negative control: a function-local upward import and a two-module cycle are both reported."""
    pkg = tmp_path / "weitiao"
    (pkg / "models").mkdir(parents=True)
    (pkg / "infer").mkdir()
    for d in (pkg, pkg / "models", pkg / "infer"):
        (d / "__init__.py").write_text("")
    (pkg / "models" / "load.py").write_text("def f():\n    from ..infer.export import g\n    return g\n")
    (pkg / "infer" / "export.py").write_text("from weitiao.models import load\n\ndef g():\n    pass\n")
    edges = import_edges(pkg)
    bad = layer_violations(edges)
    assert bad == [
        "weitiao/models/load.py:2: weitiao.models.load (models) imports weitiao.infer.export (infer), a higher layer"
    ]
    assert cycles(edges) == [["weitiao.infer.export", "weitiao.models.load"]]


if __name__ == "__main__":  # print the current offenders, one per line
    edges = import_edges()
    print("\n".join(layer_violations(edges)))
    for comp in cycles(edges):
        print("cycle:", " ".join(comp))
    raise SystemExit(pytest.main([__file__, "-q"]))
