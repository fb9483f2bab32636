"""Allowed roots: every path the browser names must resolve (symlinks followed) inside one of them."""

from __future__ import annotations

import os
from pathlib import Path

from weitiao.errors import UserError


class Roots:
    """Folders the console may read from and pick files in (`weitiao ui --root`, default the cwd), then
    `read_only` ones it may read but never write in (the shipped demo data, so a newcomer has data to pick)."""

    def __init__(self, roots: list[str | Path], read_only: list[str | Path] = ()):
        self.writable = [Path(os.path.realpath(r)) for r in roots]
        self.roots = [*self.writable, *(Path(os.path.realpath(r)) for r in read_only)]
        for r in self.roots:
            if not r.is_dir():
                raise UserError(f"--root {r}: not a folder")

    def inside(self, real: Path, roots: list[Path] | None = None) -> bool:
        return any(real == r or r in real.parents for r in (self.roots if roots is None else roots))

    def resolve(self, path: str, what: str = "path", write: bool = False) -> Path:
        """`path` (absolute, or relative to the first root) → its real path; outside every root (with
        `write`: every writable root) → UserError."""
        if not path or "\0" in path:
            raise UserError(f"{what}: empty or invalid path")
        p = Path(path).expanduser()
        real = Path(os.path.realpath(p if p.is_absolute() else self.roots[0] / p))
        if not self.inside(real):
            raise UserError(f"{what} {path}: outside the allowed folders ({', '.join(map(str, self.roots))})")
        if write and not self.inside(real, self.writable):
            raise UserError(f"{what} {path}: read-only here; write inside {', '.join(map(str, self.writable))}")
        return real

    def listing(self, path: str | None) -> dict:
        """A folder's entries for the file picker (folders first); no path → the roots themselves."""
        if not path:
            return {"path": None, "parent": None, "entries": [{"name": str(r), "path": str(r), "dir": True}
                                                              for r in self.roots]}  # fmt: skip
        real = self.resolve(path)
        if not real.is_dir():
            raise UserError(f"path {path}: not a folder")
        entries = []
        for e in sorted(real.iterdir(), key=lambda e: (not e.is_dir(), e.name)):
            if e.name.startswith(".") or not self.inside(Path(os.path.realpath(e))):
                continue  # hidden files, and links that lead out of the roots
            entries.append({"name": e.name, "path": str(e), "dir": e.is_dir()})
        parent = real.parent if real not in self.roots and self.inside(real.parent) else None
        return {"path": str(real), "parent": str(parent) if parent else None, "entries": entries[:2000]}
