"""The CLI as a user meets it: one-line errors with exit 1, data check and data show."""

import json
import subprocess
import sys
from pathlib import Path

from conftest import write_jsonl

ROOT = Path(__file__).resolve().parents[1]


def weitiao(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "weitiao", *map(str, args)], capture_output=True, text=True, cwd=cwd)


def test_malformed_data_is_one_line_error(tmp_path, tiny_model_dir):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"instruction": "问", "output": "答"}, {"instruction": "问"}])
    p = weitiao("data", "check", bad, "--model", tiny_model_dir)
    assert p.returncode == 1
    lines = [x for x in p.stderr.splitlines() if x.strip()]
    assert lines == [f"error: {bad}:2: output: missing (or pass --skip-invalid to set bad rows aside)"]


def test_bad_config_key_is_one_line_error(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data:\n  train: [x.jsonl]\ntrain:\n  lr: fast\n")
    p = weitiao("sft", cfg)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert f"{cfg}:4: train.lr: Input should be a valid number" in p.stderr
    p = weitiao("sft", cfg, "train.lr=1e-4", "train.lrr=3")
    assert p.returncode == 1 and "train.lrr: Extra inputs are not permitted" in p.stderr


def test_data_check_reports(tmp_path, tiny_model_dir):
    rows = [{"instruction": "今天天气怎么样？", "output": "挺好的☀️"}] * 3 + [
        {"instruction": "长" * 300, "output": "好"}
    ]
    f = write_jsonl(tmp_path / "d.jsonl", rows)
    p = weitiao("data", "check", f, "--model", tiny_model_dir, "--max-len", "64", "--json")
    assert p.returncode == 0, p.stderr
    rep = json.loads(p.stdout)
    assert rep["format"] == "alpaca" and rep["read"] == 4 and rep["kept"] == 4
    assert rep["duplicate_rows"] == 2 and rep["over_max_len"] == 1 and rep["missing_eos"] == 0
    assert sum(rep["histogram"].values()) == 4
    p = weitiao("data", "check", f, "--model", tiny_model_dir)
    assert "duplicate rows" in p.stdout and "exceed max_len" not in p.stdout  # default max_len 1024


def test_data_show_marks_trained_tokens(tmp_path, tiny_model_dir):
    f = write_jsonl(tmp_path / "d.jsonl", [{"instruction": "你好", "output": "嗨😊", "history": [["在吗", "在"]]}])
    p = weitiao("data", "show", f, "--model", tiny_model_dir, "--plain")
    assert p.returncode == 0, p.stderr
    assert "⟦在<|im_end|>⟧" in p.stdout and "⟦嗨😊<|im_end|>⟧" in p.stdout and "⟦你好" not in p.stdout
    p = weitiao("data", "show", f, "--model", tiny_model_dir, "--plain", "--last-turn-only")
    assert "⟦在<|im_end|>⟧" not in p.stdout and "⟦嗨😊<|im_end|>⟧" in p.stdout
    p = weitiao("data", "show", f, "--model", tiny_model_dir, "--index", "5")
    assert p.returncode == 1 and "--index 5" in p.stderr
