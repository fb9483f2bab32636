"""dpo.rpo_alpha with data.weight_field: the chosen replies' NLL term is weighted like the DPO term, so a pair of
weight 0 trains nothing (it used to add its chosen reply's NLL at full weight)."""

import pytest
from conftest import write_jsonl
from test_dpo import make_pairs
from test_dpo_correctness import config

from weitiao.recipes import dpo
from weitiao.train.log import read_metrics


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_a_weight_0_pair_trains_nothing_with_rpo(tiny_model_dir, tmp_path, alpha):
    rows = [dict(r, w=1.0) for r in make_pairs(6)]
    zero = dict(make_pairs(7)[6], chosen="先炒蛋再炒番茄，最后一起翻炒，加点盐就好啦。" * 2, w=0.0)  # a long chosen
    logs = {}
    for name, data in {"with": rows + [zero], "without": rows}.items():
        out = tmp_path / name
        f = write_jsonl(tmp_path / f"{name}.jsonl", data)
        extra = ("data.weight_field=w", f"dpo.rpo_alpha={alpha}", "train.max_steps=1", "train.micro_batch_size=8")
        dpo.run(config(tiny_model_dir, f, out, *extra, "train.max_grad_norm=1e9", "dpo.kl_max_new_tokens=0"))
        logs[name] = read_metrics(out, "train")[0]
    got, want = logs["with"], logs["without"]
    assert got["loss"] == pytest.approx(want["loss"], abs=1e-6)
    assert got["grad_norm"] == pytest.approx(want["grad_norm"], rel=1e-4)
    if alpha:
        assert got["nll_chosen"] == pytest.approx(want["nll_chosen"], rel=1e-6)
