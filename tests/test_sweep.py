"""`weitiao dpo --sweep`: every value is checked before the first run; the table's numbers say where they come from."""

from __future__ import annotations

import pytest

from weitiao.errors import UserError
from weitiao.recipes import dpo
from weitiao.recipes.sweep import sweep


def _config(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data: {{train: [p.jsonl]}}\ntrain: {{out: {tmp_path / 'sw'}}}\n")
    return cfg


@pytest.mark.parametrize(
    "spec,overrides,message",
    [
        ("beta=0.1,-1", [], r"dpo.beta: Input should be greater than"),  # the last value: refused before run 1
        ("dpo.loss_type=sigmoid,ipo", [], r"'sigmoid' is not a number"),  # was float('sigmoid') after run 1
        ("beta=0.1,0.10", [], r"a value is given twice"),  # both runs in one folder
        ("beta=0.1,0.5", ["dpo.beta=0.3"], r"dpo.beta=0.3 would be replaced by each swept value"),
    ],
)
def test_a_sweep_is_refused_before_any_run(tmp_path, spec, overrides, message):
    runs = []
    with pytest.raises(UserError, match=message):
        sweep(dpo.DPOConfig, runs.append, _config(tmp_path), overrides, spec)
    assert runs == []


def test_a_good_sweep_runs_each_value_in_its_folder(tmp_path):
    seen = []

    def run(cfg):
        seen.append((cfg.dpo.beta, cfg.train.out))
        return {"eval_margins": cfg.dpo.beta * 10, "eval_accuracy": 1.0}

    rows = sweep(dpo.DPOConfig, run, _config(tmp_path), ["dpo.loss_type=ipo"], "beta=0.1,0.5")
    assert seen == [(0.1, str(tmp_path / "sw" / "dpo.beta-0.1")), (0.5, str(tmp_path / "sw" / "dpo.beta-0.5"))]
    assert [r["margins"] for r in rows] == [1.0, 5.0]


def test_without_an_eval_set_the_table_says_its_numbers_are_the_last_training_steps(tmp_path):
    """Without eval data the table showed the last training step's single-batch numbers under the column names of
    held-out results, with nothing saying which they were."""

    def run(cfg):  # the summary's train_margins is the mean over the run's steps, last_train_margins the last step's
        return {"train_margins": cfg.dpo.beta, "last_train_margins": cfg.dpo.beta * 10}

    rows = sweep(dpo.DPOConfig, run, _config(tmp_path), [], "beta=0.1,0.5")
    assert [(r["margins"], r["source"]) for r in rows] == [(1.0, "train_last_step"), (5.0, "train_last_step")]
    md = (tmp_path / "sw" / "sweep.md").read_text()
    assert md.startswith("Metrics of the last training step's micro-batches (no eval set")
    held = sweep(dpo.DPOConfig, lambda cfg: {"eval_margins": 2.0, "last_train_margins": 9.0}, _config(tmp_path), [],
                 "beta=0.1,0.5")  # fmt: skip
    assert [(r["margins"], r["source"]) for r in held] == [(2.0, "eval"), (2.0, "eval")]  # control: eval wins


def test_a_table_we_did_not_write_is_not_replaced(tmp_path):
    """sweep.json/.md/.png went into train.out without the output guard every other command has."""
    (tmp_path / "sw").mkdir()
    (tmp_path / "sw" / "sweep.md").write_text("my notes\n")
    runs = []
    with pytest.raises(UserError, match=r"sweep.md: exists and was not written by weitiao"):
        sweep(dpo.DPOConfig, runs.append, _config(tmp_path), [], "beta=0.1,0.5")
    assert runs == [] and (tmp_path / "sw" / "sweep.md").read_text() == "my notes\n"
    (tmp_path / "sw" / "sweep.md").unlink()
    for _ in range(2):  # control: our own table is replaced on the next sweep
        sweep(dpo.DPOConfig, lambda cfg: {"eval_margins": 1.0}, _config(tmp_path), [], "beta=0.1,0.5")


def test_sweep_values_and_csv_labels_are_read_as_numbers_by_one_function():
    """recipes/sweep.py and data/formats.py each had their own `_number` (float() or None): one home now,
    data.files.as_number, that both import (recipes sit above data)."""
    from weitiao.data import files, formats
    from weitiao.recipes import sweep as sweep_module

    assert sweep_module.as_number is formats.as_number is files.as_number
    assert not hasattr(sweep_module, "_number") and not hasattr(formats, "_number")
    assert [files.as_number(t) for t in ("1.0", "1e-4", "x", "")] == [1.0, 1e-4, None, None]
    assert formats.is_feedback_label({"prompt": "问", "completion": "答", "label": "1.0"})  # a CSV cell "1.0"


@pytest.mark.slow
def test_a_sweep_run_again_reads_back_finished_values_and_trains_the_rest(tiny_model_dir, tmp_path):
    """An interrupted sweep run again refused at its first finished value ('nothing would be trained'), so the only
    way on was train.resume=none: every value trained again. Now a value that finished under the same config is read
    back from its run, the others train; a changed config still goes to the run (which refuses it)."""
    from conftest import write_jsonl
    from test_dpo import make_pairs

    write_jsonl(tmp_path / "p.jsonl", make_pairs(6))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"model: {{path: {tiny_model_dir}}}\ndata: {{train: [p.jsonl]}}\n"
        f"train: {{out: {tmp_path / 'sw'}, max_steps: 1, micro_batch_size: 2, progress: false, tensorboard: false}}\n"
    )
    trained = []

    def interrupted(c):
        if c.dpo.beta == 0.5:
            raise KeyboardInterrupt
        trained.append(c.dpo.beta)
        return dpo.run(c)

    with pytest.raises(KeyboardInterrupt):
        sweep(dpo.DPOConfig, interrupted, cfg, [], "beta=0.1,0.5")
    first = (tmp_path / "sw" / "dpo.beta-0.1" / "final" / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns

    def counted(c):
        trained.append(c.dpo.beta)
        return dpo.run(c)

    rows = sweep(dpo.DPOConfig, counted, cfg, [], "beta=0.1,0.5")
    assert trained == [0.1, 0.5] and [r["dpo.beta"] for r in rows] == [0.1, 0.5]
    assert all(r["loss"] is not None for r in rows)
    adapter = tmp_path / "sw" / "dpo.beta-0.1" / "final" / "adapter" / "adapter_model.safetensors"
    assert adapter.stat().st_mtime_ns == first  # read back, not trained again
    with pytest.raises(UserError, match=r"train.resume: .* was trained with another config: dpo.loss_type"):
        sweep(dpo.DPOConfig, counted, cfg, ["dpo.loss_type=ipo"], "beta=0.1,0.5")  # control: a changed config
