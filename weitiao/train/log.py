"""Metrics to JSONL (always) and to the trackers in `train.report_to`, plus progress display.

Trackers get the same numeric values as `metrics.jsonl`, named `{kind}/{key}` at the same step, and
the resolved config as hyper-parameters. Where each writes (each can run without a network):
tensorboard → `out/tb`; wandb → `out/wandb` (WANDB_MODE=offline keeps it local; `wandb sync` later);
swanlab → `out/swanlog` (SWANLAB_MODE=offline likewise; `swanlab sync`); mlflow → MLFLOW_TRACKING_URI,
else the SQLite store `out/mlflow.db` (mlflow 3 refuses plain `./mlruns` folders). Project / experiment:
WANDB_PROJECT, SWANLAB_PROJECT, MLFLOW_EXPERIMENT_NAME (default weitiao); the run is named after `out`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import AfterValidator

from weitiao.errors import UserError
from weitiao.io import append_jsonl, atomic_write_text, read_jsonl
from weitiao.progress import progress_bar  # noqa: F401 - moved to weitiao.progress; train.loop imports it here

TRACKERS = ("tensorboard", "wandb", "swanlab", "mlflow")


def check_report_to(names: list[str]) -> list[str]:
    """Validator for `train.report_to`: known names whose package is installed, each once."""
    for name in names:
        if name not in TRACKERS:
            raise ValueError(f"unknown tracker {name!r}; choose from {', '.join(TRACKERS)}")
        if importlib.util.find_spec(name) is None:
            raise ValueError(f"{name} is not installed: pip install {name} (or drop it from train.report_to)")
    return list(dict.fromkeys(names))


ReportTo = Annotated[list[str], AfterValidator(check_report_to)]
REPORT_TO_HELP = "trackers: tensorboard, wandb, swanlab, mlflow (all but tensorboard are a pip install)"


def flat_config(node: Any, prefix: str = "") -> dict[str, str | int | float | bool]:
    """Nested config → {"train.lr": 2e-4, ...}; lists and null as JSON text (trackers take scalars)."""
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(flat_config(v, f"{prefix}{k}."))
        return out
    key = prefix[:-1]
    return {key: node if isinstance(node, (str, int, float, bool)) else json.dumps(node, ensure_ascii=False)}


def _scalars(kind: str, values: dict[str, Any]) -> dict[str, float]:
    return {f"{kind}/{k}": float(v) for k, v in values.items() if isinstance(v, (int, float))}


class _TensorBoard:
    def __init__(self, run_dir: Path, config: dict | None, resumed_at: int | None = None):
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        # purge_step: TensorBoard drops the events a resumed run will log again (those after its checkpoint)
        self.w = SummaryWriter(str(run_dir / "tb"), purge_step=None if resumed_at is None else resumed_at + 1)
        if config is not None:  # in this run's own event file (add_hparams would start a sub-run)
            for summary in hparams(flat_config(config), {}):
                self.w._get_file_writer().add_summary(summary)

    def log(self, step: int, scalars: dict[str, float]) -> None:
        for k, v in scalars.items():
            self.w.add_scalar(k, v, step)

    def close(self) -> None:
        self.w.close()


class _RunTracker:
    """wandb and swanlab share a run object with `log(scalars, step=)` and `finish()`."""

    run: Any

    def log(self, step: int, scalars: dict[str, float]) -> None:
        self.run.log(scalars, step=step)

    def close(self) -> None:
        self.run.finish()


class _Wandb(_RunTracker):
    def __init__(self, run_dir: Path, config: dict | None):
        import wandb

        try:
            project = os.environ.get("WANDB_PROJECT", "weitiao")
            self.run = wandb.init(dir=str(run_dir), project=project, name=run_dir.name, config=config)
        except Exception as e:  # no login and no WANDB_MODE: its own message says which
            msg = f"train.report_to: wandb did not start ({e}); run `wandb login` or set WANDB_MODE=offline"
            raise UserError(msg) from None


class _Swanlab(_RunTracker):
    def __init__(self, run_dir: Path, config: dict | None):
        import swanlab

        try:
            project = os.environ.get("SWANLAB_PROJECT", "weitiao")
            self.run = swanlab.init(log_dir=str(run_dir / "swanlog"), project=project, name=run_dir.name, config=config)
        except Exception as e:
            msg = f"train.report_to: swanlab did not start ({e}); run `swanlab login` or set SWANLAB_MODE=offline"
            raise UserError(msg) from None


class _Mlflow:
    def __init__(self, run_dir: Path, config: dict | None):
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        # A client of our own, not mlflow's process-global active run.
        uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(run_dir / 'mlflow.db').resolve()}"
        self.client = MlflowClient(tracking_uri=uri)
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "weitiao")
        exp = self.client.get_experiment_by_name(name)
        exp_id = exp.experiment_id if exp else self.client.create_experiment(name)
        self.run_id = self.client.create_run(exp_id, run_name=run_dir.name).info.run_id
        params = [Param(k, str(v)) for k, v in flat_config(config or {}).items()]
        for i in range(0, len(params), 100):  # mlflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[i : i + 100])

    def log(self, step: int, scalars: dict[str, float]) -> None:
        from mlflow.entities import Metric

        ms = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, ms, step) for k, v in scalars.items()])

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


OPEN = {"tensorboard": _TensorBoard, "wandb": _Wandb, "swanlab": _Swanlab, "mlflow": _Mlflow}


class MetricsLog:
    """Append one JSON object per event to `metrics.jsonl`; send its numbers to each tracker.

    `config_yaml`: the resolved config (config.yaml's text), logged as hyper-parameters. Only the
    main process passes `enabled=True`, so only rank 0 writes or reports.
    """

    def __init__(
        self,
        run_dir: Path,
        enabled: bool = True,
        tensorboard: bool = True,
        report_to: list[str] | None = None,
        config_yaml: str | None = None,
        resumed_at: int | None = None,
    ):
        """`resumed_at`: the step of the checkpoint a resumed run continues from (None: a fresh run)."""
        config = yaml.safe_load(config_yaml) if config_yaml else None
        self.path = run_dir / "metrics.jsonl"
        self.enabled = enabled
        names = [n for n in (["tensorboard"] if report_to is None else report_to) if tensorboard or n != "tensorboard"]
        if enabled and resumed_at is not None:
            set_aside_after(self.path, resumed_at)
        self.trackers = []
        for n in check_report_to(names) if enabled else []:
            self.trackers.append(
                _TensorBoard(run_dir, config, resumed_at) if n == "tensorboard" else OPEN[n](run_dir, config)
            )

    def log(self, kind: str, step: int, **values: Any) -> None:
        if not self.enabled:
            return
        append_jsonl(self.path, {"kind": kind, "step": step, "time": round(time.time(), 3), **values})
        scalars = _scalars(kind, values)
        if scalars:
            for tracker in self.trackers:
                tracker.log(step, scalars)

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.close()
        self.trackers = []


def set_aside_after(path: Path, step: int) -> int:
    """Move the rows of `path` logged after `step` (a run stopped past its last checkpoint, which the resumed run
    logs again: step 16 twice) to metrics.abandoned.jsonl beside it, so each step is in metrics.jsonl once.
    A line cut short by the kill goes there too. Returns the rows moved."""
    if not path.exists():
        return 0
    keep, moved = [], []
    for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
        try:
            row = json.loads(line)
            after = int(row["step"]) > step
        except (ValueError, KeyError, TypeError):
            after = True
        (moved if after else keep).append(line if line.endswith("\n") else line + "\n")
    if moved:
        aside = path.with_name("metrics.abandoned.jsonl")
        with open(aside, "a", encoding="utf-8") as f:
            f.writelines(moved)
        atomic_write_text(path, "".join(keep))
        print(
            f"resume: {len(moved)} rows of {path.name} after step {step} (logged past the checkpoint) "
            f"moved to {aside.name}"
        )
    return len(moved)


def read_metrics(run_dir: str | Path, kind: str | None = None) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [r for _, r in read_jsonl(path) if kind is None or r["kind"] == kind]


def places(shows_it: Callable[[int], bool], least: int) -> int:
    """The fewest decimal places, from `least` up to 6, at which a printed number `shows_it`: a warning rounded
    a mean reply length of 7.6 → 8.4 to '8 → 8 tokens', a KL of 20.04 to '20.0 > 20.0'."""
    return next((d for d in range(least, 7) if shows_it(d)), 6)
