"""Atomic writes give a new file the mode a plain open() would (0o666 less the umask), not mkstemp's 0600,
and keep the mode of a file they replace."""

import os
import stat

import pytest

from weitiao import io


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_umask_is_read_without_changing_it(umask_022):
    assert io.umask() == 0o022
    os.umask(0o027)
    assert io.umask() == 0o027 and os.umask(0o022) == 0o027


def test_new_file_gets_open_mode_and_a_replaced_file_keeps_its_own(umask_022, tmp_path):
    io.atomic_write_text(tmp_path / "config.json", "{}")
    assert mode(tmp_path / "config.json") == 0o644
    with open(tmp_path / "plain.json", "w") as f:  # what a plain open() gives, for comparison
        f.write("{}")
    assert mode(tmp_path / "plain.json") == 0o644
    secret = tmp_path / "secret.json"
    secret.write_text("old")
    secret.chmod(0o600)
    io.atomic_write_text(secret, "new")
    assert secret.read_text() == "new" and mode(secret) == 0o600
    os.umask(0o077)  # the umask is followed, not a fixed 0644
    io.write_jsonl(tmp_path / "rows.jsonl", [{"a": 1}])
    assert mode(tmp_path / "rows.jsonl") == 0o600
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_figure_gets_open_mode(umask_022, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    io.save_figure(plt.figure(), tmp_path / "curve.png")
    assert mode(tmp_path / "curve.png") == 0o644


def test_saved_weights_and_synth_tables_get_open_mode(umask_022, tmp_path, tiny_model_dir):
    """safetensors writes through a private temp file (0600): a run's final/adapter and `logs synth` tables
    used to be unreadable to a server running as another user."""
    import pyarrow as pa
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from weitiao.logs.synth import write_table
    from weitiao.train.checkpoint import save_weights

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), LoraConfig(target_modules=["q_proj"]))
    target = save_weights(model, tmp_path / "final")
    files = [f for f in target.rglob("*") if f.is_file()]
    assert any(f.suffix == ".safetensors" for f in files) and {mode(f) for f in files} == {0o644}
    for suffix in (".parquet", ".csv", ".jsonl"):
        path = write_table(pa.table({"a": [1, 2]}), tmp_path / f"events{suffix}")
        assert mode(path) == 0o644, suffix
