"""Progress display for long loops: a rich bar on a terminal, plain timed lines in a log file.

Low in the layering (no weitiao imports) so data, teacher, logs and train all share one bar.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def console(stderr: bool = False) -> Console:
    """A rich console whose lines are not wrapped when it is not a terminal: a path printed into a log
    or a pipe stays whole (rich wraps at 80 columns there, splitting it over two lines)."""
    c = Console(stderr=stderr)
    c.soft_wrap = not c.is_terminal
    return c


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class PlainProgress:
    """For logs that are not a terminal (nohup, Slurm): one plain line every `every_s` seconds and
    at the end — `sft: step 12/100 · loss 1.2345 · 1,234 tok/s · elapsed 0:00:31 · ETA 0:03:47`.
    Speaks the part of rich's Progress API that our callers use."""

    def __init__(self, every_s: float):
        self.every_s = every_s
        self.console = console()  # for callers' console.print (markup stripped off a non-terminal)
        self.tasks: dict[int, dict] = {}

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        for task_id, task in self.tasks.items():
            if task["printed"] != task["completed"]:
                self._print(task_id, time.monotonic())

    def add_task(self, description: str, total: float | None = None, completed: float = 0, **fields: Any) -> int:
        now = time.monotonic()
        task = {"description": description, "total": total, "completed": completed, "fields": fields}
        task.update(start=now, start_completed=completed, last=now, printed=completed)
        self.tasks[len(self.tasks)] = task
        return len(self.tasks) - 1

    def update(self, task_id: int, completed: float | None = None, advance: float = 0, **fields: Any) -> None:
        task = self.tasks[task_id]
        task["completed"] = (task["completed"] if completed is None else completed) + advance
        task["fields"].update(fields)
        now = time.monotonic()
        if now - task["last"] >= self.every_s:
            self._print(task_id, now)

    def advance(self, task_id: int, advance: float = 1) -> None:
        self.update(task_id, advance=advance)

    def _print(self, task_id: int, now: float) -> None:
        task = self.tasks[task_id]
        done, total, elapsed = task["completed"], task["total"], now - task["start"]
        parts = [f"{task['description']}: step {done:g}" + (f"/{total:g}" if total else "")]
        if task["fields"].get("info"):
            parts.append(str(task["fields"]["info"]))
        parts.append(f"elapsed {_clock(elapsed)}")
        rate = (done - task["start_completed"]) / elapsed if elapsed > 0 else 0
        if total and rate > 0:
            parts.append(f"ETA {_clock((total - done) / rate)}")
        print(" · ".join(parts), file=sys.stdout, flush=True)  # flush: nohup files are block-buffered
        task.update(last=now, printed=done)


def progress_bar(enabled: bool = True, every_s: float = 30.0) -> Progress | PlainProgress:
    """A rich bar (step count, loss/tokens-per-second text, elapsed, ETA) on a terminal; elsewhere
    (a log file) a plain line every `every_s` seconds, since rich draws nothing until the end there."""
    if enabled and not Console().is_terminal:
        return PlainProgress(every_s)
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        disable=not enabled,
    )
