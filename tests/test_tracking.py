"""Experiment tracking: every tracker in train.report_to, read back with its own reader, holds the
numbers of metrics.jsonl and the resolved config; plain progress lines off a terminal."""

from __future__ import annotations

import importlib.util
import json
import re
import struct
import time
from pathlib import Path

import pytest
import yaml

from weitiao.config import load_config
from weitiao.errors import UserError
from weitiao.recipes import sft
from weitiao.train.log import MetricsLog, flat_config, progress_bar, read_metrics

CONFIG = """\
model: {path: tiny, quant: null}
lora: {r: 8, target: [q_proj, v_proj]}
train: {lr: 0.0002, out: runs/x, seed: 42, tensorboard: true}
"""


def expected(run: Path) -> dict[tuple[str, int], float]:
    """metrics.jsonl's numbers as {(kind/key, step): value}: what every tracker must hold."""
    return {
        (f"{r['kind']}/{k}", r["step"]): float(v)
        for r in read_metrics(run)
        for k, v in r.items()
        if k not in ("kind", "step", "time") and isinstance(v, (int, float))
    }


def write_events(run: Path, report_to: list[str]) -> None:
    log = MetricsLog(run, report_to=report_to, config_yaml=CONFIG)
    log.log("data", 0, rows=12, template="chatml")
    for step in (1, 2, 3):
        log.log("train", step, loss=2.0 / step, lr=1e-4 * step, tokens_per_s=100.5 + step)
    log.log("eval", 3, eval_loss=0.75)
    log.log("warning", 3, message="text stays in metrics.jsonl only")
    log.log("done", 3, steps=3, finished=True)
    log.close()


def tensorboard_scalars(run: Path) -> tuple[dict, dict]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    ea = EventAccumulator(str(run / "tb"))
    ea.Reload()
    got = {(tag, e.step): e.value for tag in ea.Tags()["scalars"] for e in ea.Scalars(tag)}
    hp = {}
    for content in ea.PluginTagToContent("hparams").values():
        data = HParamsPluginData.FromString(content)
        for k, v in data.session_start_info.hparams.items():
            hp[k] = getattr(v, v.WhichOneof("kind"))
    return got, hp


def wandb_records(run: Path, wait_s: float = 60.0) -> list:
    """The .wandb transaction log once it holds the run's exit record: wandb-core writes it from its own process,
    and under load `finish()` returned before its last flush (no run record read once, in a 2-worker suite)."""
    deadline = time.monotonic() + wait_s
    while True:
        out = _wandb_log(run)
        kinds = [r.WhichOneof("record_type") for r in out]
        if "exit" in kinds:
            return out
        assert time.monotonic() < deadline, kinds
        time.sleep(0.5)


def _wandb_log(run: Path) -> list:
    """LevelDB log framing after a 7-byte W&B header (wandb ships no Python reader any more), records parsed
    with wandb's own protobuf."""
    from wandb.proto import wandb_internal_pb2 as pb

    found = list(run.glob("wandb/*run-*/run-*.wandb"))
    assert len(found) == 1, sorted(str(p.relative_to(run)) for p in run.rglob("*"))
    path = found[0]
    data, i, buf, out = path.read_bytes(), 7, b"", []
    assert data[:4] == b":W&B"
    while i + 7 <= len(data):
        if 32768 - i % 32768 < 7:  # block trailer too short for a header: zero padding
            i += 32768 - i % 32768
            continue
        _, n, kind = struct.unpack("<IHB", data[i : i + 7])
        if n == 0 and kind == 0:
            break
        buf, i = buf + data[i + 7 : i + 7 + n], i + 7 + n
        if kind in (1, 4):  # FULL or LAST
            record = pb.Record()
            record.ParseFromString(buf)
            out.append(record)
            buf = b""
    return out


# mlflow's import and SQLite schema set-up alone take 5–20 s here.
@pytest.mark.parametrize("tracker", ["tensorboard", "wandb", "swanlab", pytest.param("mlflow", marks=pytest.mark.slow)])
def test_tracker_holds_metrics_jsonl_and_config(tracker, tmp_path, monkeypatch):
    if importlib.util.find_spec(tracker) is None:
        pytest.skip(f"{tracker} is not installed here (pip install {tracker})")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("SWANLAB_MODE", "offline")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)  # nothing may land in the working directory
    run = tmp_path / "run"
    run.mkdir()
    write_events(run, [tracker])
    want = expected(run)
    assert ("train/loss", 2) in want and ("done/finished", 3) in want and len(want) == 13
    config = yaml.safe_load(CONFIG)
    flat = flat_config(config)
    assert flat["lora.target"] == '["q_proj", "v_proj"]' and flat["model.quant"] == "null"

    if tracker == "tensorboard":
        got, hp = tensorboard_scalars(run)
        assert got == pytest.approx(want)
        assert hp == {k: (float(v) if not isinstance(v, str) else v) for k, v in flat.items()}
    elif tracker == "wandb":
        records = wandb_records(run)
        (start,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
        cfg = {u.key: json.loads(u.value_json) for u in start.config.update if u.key != "_wandb"}
        assert cfg == config
        got = {}
        for r in records:
            if r.WhichOneof("record_type") == "history":
                items = {it.key or "/".join(it.nested_key): json.loads(it.value_json) for it in r.history.item}
                got.update({(k, items["_step"]): v for k, v in items.items() if not k.startswith("_")})
        assert got == pytest.approx(want)
    elif tracker == "swanlab":
        from swanlab.proto.swanlab.record.v1.record_pb2 import Record
        from swanlab.sdk.internal.core_python.store import DataStoreReader

        (path,) = run.glob("swanlog/run-*/run-*.swanlab")
        reader, got = DataStoreReader(), {}
        reader.open(path)
        while (raw := reader.scan()) is not None:
            record = Record()
            record.ParseFromString(raw)
            if record.WhichOneof("record_type") == "scalar":
                got[(record.scalar.key, record.scalar.step)] = record.scalar.value.number
        reader.close()
        assert got == pytest.approx(want)
        saved = yaml.safe_load(next(run.glob("swanlog/run-*/files/config.yaml")).read_text(encoding="utf-8"))
        assert {k: v["value"] for k, v in saved.items()} == config
    else:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=f"sqlite:///{run / 'mlflow.db'}")
        (found,) = client.search_runs([client.get_experiment_by_name("weitiao").experiment_id])
        got = {
            (m.key, m.step): m.value
            for key in found.data.metrics
            for m in client.get_metric_history(found.info.run_id, key)
        }
        assert got == pytest.approx(want)
        assert found.data.params == {k: str(v) for k, v in flat.items()}
        assert found.info.status == "FINISHED"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_only_the_main_process_reports(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    log = MetricsLog(run, enabled=False, report_to=["tensorboard"], config_yaml=CONFIG)
    log.log("train", 1, loss=1.0)
    log.close()
    assert list(run.iterdir()) == []
    write_events(run, ["tensorboard"])  # control: the main process does write
    assert {p.name for p in run.iterdir()} == {"tb", "metrics.jsonl"}


def test_report_to_names_and_packages_are_checked(tmp_path, monkeypatch):
    with pytest.raises(UserError, match=r"train\.report_to.*unknown tracker 'tensorbord'"):
        load_config(sft.SFTConfig, None, ["data.train=[x.jsonl]", "train.report_to=[tensorbord]"])
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(UserError, match=r"train\.report_to.*wandb is not installed: pip install wandb"):
        load_config(sft.SFTConfig, None, ["data.train=[x.jsonl]", "train.report_to=[tensorboard, wandb]"])
    cfg = load_config(sft.SFTConfig, None, ["data.train=[x.jsonl]"])
    assert cfg.train.report_to == ["tensorboard"]  # the default needs no extra package


def test_plain_progress_lines_off_a_terminal(capsys, monkeypatch):
    clock = iter(range(0, 1000, 5))
    monkeypatch.setattr("weitiao.train.log.time.monotonic", lambda: next(clock))
    with progress_bar(True, every_s=9) as bar:
        task = bar.add_task("sft", total=10, completed=2, info="")  # resumed at step 2
        for step in range(3, 11):
            bar.update(task, completed=step, info=f"loss {1 / step:.4f} · 1,234 tok/s")
    lines = capsys.readouterr().out.splitlines()
    # One line per ≥9 s of the fake clock (5 s a step) and the last step.
    assert [re.match(r"sft: step (\d+)/10", x).group(1) for x in lines] == ["4", "6", "8", "10"]
    assert lines[0] == "sft: step 4/10 · loss 0.2500 · 1,234 tok/s · elapsed 0:00:10 · ETA 0:00:30"
    assert lines[-1].endswith("elapsed 0:00:40 · ETA 0:00:00")


def test_console_off_a_terminal_keeps_a_long_path_on_one_line(capsys):
    """Commands print through progress.console(): a path in a log or pipe stays one line (rich wraps at 80 there)."""
    from rich.console import Console

    from weitiao import progress

    path = "/tmp/pytest-of-root/pytest-424/popen-gw1/test_curve_cli_two_sizes0/runs/curve/curve.png"
    progress.console().print(f"plot: {path}")
    assert capsys.readouterr().out == f"plot: {path}\n"
    Console().print(f"plot: {path}")  # negative control: rich's default console splits it
    assert capsys.readouterr().out.count("\n") > 1


@pytest.mark.slow
def test_sft_reports_resolved_config_and_prints_progress(tiny_model_dir, chat_file, tmp_path, capsys):
    out = tmp_path / "run"
    overrides = [
        f"model.path={tiny_model_dir}",
        f"data.train=[{chat_file}]",
        f"train.out={out}",
        "train.max_steps=3",
        "train.micro_batch_size=2",
        "data.max_len=128",
        "train.progress_every_s=1e-9",  # a line at every step
    ]
    sft.run(load_config(sft.SFTConfig, None, overrides))
    got, hp = tensorboard_scalars(out)
    assert got == pytest.approx(expected(out))  # default report_to: tensorboard
    config = yaml.safe_load((out / "config.yaml").read_text(encoding="utf-8"))
    assert hp == {k: (float(v) if not isinstance(v, str) else v) for k, v in flat_config(config).items()}
    assert hp["train.max_steps"] == 3 and hp["train.report_to"] == '["tensorboard"]'
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("sft: step")]
    assert len(lines) == 3, lines
    assert all(re.search(r"step \d/3 · loss \d+\.\d{4} · [\d,]+ tok/s · elapsed \S+ · ETA \S+$", x) for x in lines)
