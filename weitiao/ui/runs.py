"""Console runs on disk: `RUNS/<name>/` is the run's `train.out`; `RUNS/<name>/ui/` holds what the console adds.

ui/run.json  {name, kind, command, cwd, status, pid (the keeper), child_pid, returncode, created, ...}
ui/config.yaml  the YAML the run trains with (shown and downloadable in the page)
ui/log.txt  the trainer's stdout and stderr

State lives only there, so a page reload or a console restart finds every run as it is. A run whose
keeper process is gone while run.json still says running (the machine rebooted) shows as `lost`.
"""

from __future__ import annotations

import filecmp
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from weitiao.data.files import READ_ROOTS
from weitiao.errors import UserError
from weitiao.io import atomic_write_text
from weitiao.ui.supervise import update

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
STEP_DIR = re.compile(r"step-\d+")
CHART_KEYS = ("loss", "eval_loss", "lr", "grad_norm", "tokens_per_s")


def _alive(pid: int | None) -> bool:
    """Is `pid` our keeper (not a reused pid)?"""
    if not pid:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        return b"weitiao.ui.supervise" in cmdline
    except FileNotFoundError:
        return False
    except OSError:  # no /proc (macOS): any live process
        try:
            os.kill(pid, 0)
            return True
        except OSError:
            return False


def _finite(row: dict) -> dict:
    """JSON for the browser: Infinity/NaN (JSON.parse refuses them) become null."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}


def _same_weights(step: Path, final: Path) -> bool:
    """Whether a checkpoint's weight files (adapter/ or model/) are final's, byte for byte (filecmp compares sizes
    first and caches by size and mtime, so a run list does not reread them)."""
    for sub in ("adapter", "model"):
        mine, theirs = step / sub, final / sub
        if mine.is_dir() and theirs.is_dir():
            names = sorted(f.name for f in mine.iterdir() if f.suffix in (".safetensors", ".bin"))
            same = names == sorted(f.name for f in theirs.iterdir() if f.suffix in (".safetensors", ".bin"))
            return bool(names) and same and all(filecmp.cmp(mine / n, theirs / n, shallow=False) for n in names)
    return False


class RunStore:
    def __init__(self, root: Path, python: str = sys.executable, read_roots: list[Path] | None = None):
        """`read_roots`: the folders the runs' data files must lie in, checked by each run as it opens them
        (`weitiao.data.files.confined`); None: unchecked."""
        self.root = root
        self.python = python
        self.read_roots = read_roots

    def run_dir(self, name: str) -> Path:
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise UserError(f"run name {name!r}: use letters, digits, . _ - (at most 64, not starting with . _ -)")
        return self.root / name

    def existing(self, name: str) -> Path:
        d = self.run_dir(name)
        if not (d / "ui" / "run.json").is_file():
            raise UserError(f"run {name}: no such console run in {self.root}")
        return d

    def create(self, name: str, kind: str, config_yaml: str) -> dict:
        d = self.run_dir(name)
        self.root.mkdir(parents=True, exist_ok=True)
        try:  # one mkdir decides: two creates of one name at once, or a leftover link, never share a folder
            d.mkdir()
        except FileExistsError:
            raise UserError(f"run {name}: {d} exists already; choose another name") from None
        (d / "ui").mkdir()
        atomic_write_text(d / "ui" / "config.yaml", config_yaml)
        state = {"name": name, "kind": kind, "status": "created", "created": time.time(), "cwd": str(d)}
        atomic_write_text(d / "ui" / "run.json", json.dumps(state, ensure_ascii=False, indent=1))
        return self.start(name)

    def start(self, name: str, resume: bool = False) -> dict:
        """Launch (or relaunch with train.resume=auto) `python -m weitiao KIND ui/config.yaml` under a keeper."""
        d = self.existing(name)
        state = self.state(name)
        if state["status"] in ("starting", "running"):
            raise UserError(f"run {name}: is {state['status']} already")
        if resume and state["status"] == "done":  # the trainer would refuse (nothing left), leaving it shown failed
            raise UserError(f"run {name}: finished; nothing to resume (its steps are done): start a new run to train "
                            "more")  # fmt: skip
        cmd = [self.python, "-m", "weitiao", state["kind"], str(d / "ui" / "config.yaml")]
        if resume:
            cmd.append("train.resume=auto")
        update(d / "ui", status="starting", command=cmd, returncode=None, child_pid=None)
        # the keeper and the trainer import the same weitiao as this console (a checkout or an install)
        here = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)}
        if self.read_roots is not None:
            env[READ_ROOTS] = os.pathsep.join(map(str, self.read_roots))
        with open(d / "ui" / "keeper.txt", "ab") as err:
            keeper = subprocess.Popen(
                [self.python, "-m", "weitiao.ui.supervise", str(d / "ui")],
                start_new_session=True,  # survives the console: its own session, not our process group
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                cwd=str(d),
                env=env,
            )
        return update(d / "ui", pid=keeper.pid)

    def stop(self, name: str) -> dict:
        d = self.existing(name)
        state = self.state(name)
        if state["status"] not in ("starting", "running") or not _alive(state.get("pid")):
            raise UserError(f"run {name}: not running ({state['status']})")
        state = update(d / "ui", status="stopping")  # first: the keeper's final write must come after this one
        os.kill(state["pid"], signal.SIGTERM)  # the keeper passes it on and records `stopped`
        return state

    def state(self, name: str) -> dict:
        d = self.existing(name)
        state = json.loads((d / "ui" / "run.json").read_text(encoding="utf-8"))
        if state["status"] in ("starting", "running", "stopping") and not _alive(state.get("pid")):
            # the keeper may have just written its final status: read once more before calling it lost
            state = json.loads((d / "ui" / "run.json").read_text(encoding="utf-8"))
            if state["status"] in ("starting", "running", "stopping"):
                state["status"] = "lost"
        return state

    def list(self) -> list[dict]:
        if not self.root.is_dir():
            return []
        names = [p.parent.parent.name for p in self.root.glob("*/ui/run.json")]
        rows = [self.summary(n) for n in names if NAME.fullmatch(n)]
        return sorted(rows, key=lambda r: -r["created"])

    def summary(self, name: str) -> dict:
        s = self.state(name)
        path = self.existing(name) / "metrics.jsonl"
        size = path.stat().st_size if path.is_file() else 0
        tail = self.metrics(name, max(0, size - 65536))[0]  # the last train row is near the end
        last = next((r for r in reversed(tail) if r.get("kind") == "train"), {})
        return {k: s.get(k) for k in ("name", "kind", "status", "created", "returncode")} | {
            "step": last.get("step"),
            "loss": last.get("loss"),
            "checkpoints": self.checkpoints(name),
        }

    def metrics(self, name: str, offset: int = 0) -> tuple[list[dict], int]:
        """metrics.jsonl rows from byte `offset` on (complete lines only), and the offset after them."""
        path = self.existing(name) / "metrics.jsonl"
        if not path.is_file():
            return [], 0
        with open(path, "rb") as f:
            if offset > f.seek(0, 2):
                offset = 0  # a fresh run moved the old file aside
            f.seek(offset)
            data = f.read()
        end = data.rfind(b"\n") + 1
        rows = []
        for line in data[:end].splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue  # the cut first line of a tail read
            if isinstance(row, dict):
                rows.append(_finite(row))
        return rows, offset + end

    def warnings(self, name: str) -> list[dict]:
        """What the run itself reported: divergence, recipe warnings (reward hacking, falling chosen), early stop."""
        out = []
        for r in self.metrics(name)[0]:
            if r.get("kind") == "diverged":
                out.append({"kind": "diverged", "step": r["step"], "message": r.get("message", "")})
            elif r.get("kind") == "warning":
                out.append({"kind": "warning", "step": r["step"], "message": r.get("message", "")})
            elif r.get("kind") == "done" and r.get("stopped_early"):
                out.append({"kind": "stopped_early", "step": r["step"], "message": ""})
        s = self.state(name)
        if s["status"] in ("failed", "lost"):
            tail = [x for x in self.log_tail(name, 4000).splitlines() if x.strip()]
            out.append({"kind": s["status"], "step": None, "message": tail[-1] if tail else ""})
        return out

    def log_tail(self, name: str, size: int = 20_000) -> str:
        path = self.existing(name) / "ui" / "log.txt"
        if not path.is_file():
            return ""
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, 2) - size))
            return f.read().decode("utf-8", errors="replace")

    def _saved(self, name: str) -> list[str]:
        """Every checkpoint name of a run on disk: 'base', 'step-NNNNNN'…, 'final'."""
        d = self.existing(name)
        steps = sorted(p.name for p in (d / "checkpoints").glob("step-*") if STEP_DIR.fullmatch(p.name))
        return ["base", *steps, *(["final"] if (d / "final").is_dir() else [])]

    def checkpoints(self, name: str) -> list[str]:
        """Chat-able weights of a run: 'base', 'step-NNNNNN'…, 'final' (names, never paths); a step whose weights are
        final's, file for file (the checkpoint of the run's last step), is listed once, as 'final'."""
        d, saved = self.existing(name), self._saved(name)
        dup = {c for c in saved if c.startswith("step-") and _same_weights(d / "checkpoints" / c, d / "final")}
        return [c for c in saved if c not in dup]

    def base_model(self, name: str) -> str:
        """The run's model.path, as its trainer reads ui/config.yaml: 'demo' (ModelSpec's default) when left out."""
        cfg = yaml.safe_load((self.existing(name) / "ui" / "config.yaml").read_text(encoding="utf-8")) or {}
        return str((cfg.get("model") or {}).get("path", "demo"))

    def weights(self, name: str, ckpt: str) -> Path | None:
        """The folder of checkpoint `ckpt` of run `name` (None: the base model); only names on disk pass (a step
        listed as 'final' too)."""
        if ckpt not in self._saved(name):
            raise UserError(f"run {name}: no checkpoint {ckpt!r}")
        d = self.existing(name)
        return None if ckpt == "base" else d / "final" if ckpt == "final" else d / "checkpoints" / ckpt
