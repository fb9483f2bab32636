"""Keeper of one console-launched run: `python -m weitiao.ui.supervise RUN_DIR/ui`.

Started in its own session by the console, it outlives the page and the console itself. It runs the
command in `run.json` with output to `log.txt`, records the trainer's pid, and on exit writes the
final status (done, failed with the exit code, or stopped after SIGTERM, which it passes on).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from weitiao.io import atomic_write_text


def update(ui_dir: Path, **changes: object) -> dict:
    state = json.loads((ui_dir / "run.json").read_text(encoding="utf-8"))
    state.update(changes)
    atomic_write_text(ui_dir / "run.json", json.dumps(state, ensure_ascii=False, indent=1))
    return state


def main(ui_dir: Path) -> int:
    state = json.loads((ui_dir / "run.json").read_text(encoding="utf-8"))
    stopping = False
    child: subprocess.Popen | None = None

    def on_term(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            os.killpg(child.pid, signal.SIGTERM)  # the trainer and its helpers (tokenizing workers)

    signal.signal(signal.SIGTERM, on_term)  # before the trainer starts: a stop then must not orphan it
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(ui_dir / "log.txt", "ab") as log:
        log.write(f"$ {' '.join(state['command'])}\n".encode())
        log.flush()
        child = subprocess.Popen(state["command"], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=state["cwd"],
                                 start_new_session=True)  # fmt: skip
        if stopping:  # the stop came while it was starting
            os.killpg(child.pid, signal.SIGTERM)
        update(ui_dir, status="running", pid=os.getpid(), child_pid=child.pid, started=time.time())
        rc = child.wait()
    status = "done" if rc == 0 else "stopped" if stopping else "failed"  # a stop as it finished: trained to the end
    update(ui_dir, status=status, returncode=rc, ended=time.time())
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
