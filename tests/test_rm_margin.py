"""A pair's `margin` column (TRL's RewardTrainer reads it: −log σ(r_c − r_r − m)) is each pair's margin in weitiao rm;
it was silently ignored. DPO, which has no margin, refuses it; so does rm.margin beside it."""

import pytest
from conftest import recipe_config, write_jsonl
from test_dpo import make_pairs

from weitiao.errors import UserError
from weitiao.recipes import dpo, rm
from weitiao.train.log import read_metrics

FAST = ("data.max_len=96", "train.max_steps=1", "train.micro_batch_size=8", "train.max_grad_norm=1e9")


def test_a_margin_column_is_each_pairs_margin(tiny_model_dir, tmp_path):
    rows = make_pairs(6)
    given = write_jsonl(tmp_path / "m.jsonl", [dict(r, margin=2.0) for r in rows])
    plain = write_jsonl(tmp_path / "p.jsonl", rows)
    got = {}
    for name, data, extra in [("column", given, []), ("config", plain, ["rm.margin=2.0"]), ("none", plain, [])]:
        evals = [f"data.eval=[{data}]", "train.eval_every=1"]
        rm.run(recipe_config("rm", tiny_model_dir, data, tmp_path / name, *FAST, *extra, *evals))
        got[name] = read_metrics(tmp_path / name, "train")[0]
    assert got["column"]["loss"] == pytest.approx(got["config"]["loss"], abs=1e-6)
    assert got["column"]["grad_norm"] == pytest.approx(got["config"]["grad_norm"], rel=1e-5)
    assert got["column"]["loss"] - got["none"]["loss"] > 0.5  # negative control: a margin of 2 costs ~1.4 at r_c = r_r
    # the eval reads the eval rows' margins
    ev = {k: read_metrics(tmp_path / k, "eval")[0]["eval_loss"] for k in ("column", "config")}
    assert ev["column"] == pytest.approx(ev["config"], abs=1e-6)


def test_a_margin_column_is_refused_where_unread(tiny_model_dir, tmp_path):
    rows = make_pairs(4)
    data = write_jsonl(tmp_path / "m.jsonl", [rows[0], dict(rows[1], margin=1.0), *rows[2:]])
    with pytest.raises(UserError, match=r"m\.jsonl:2: margin: not read here"):
        dpo.run(recipe_config("dpo", tiny_model_dir, data, tmp_path / "d", *FAST))
    with pytest.raises(UserError, match=r"m\.jsonl:1: margin: missing \(other rows have one\)"):
        rm.run(recipe_config("rm", tiny_model_dir, data, tmp_path / "r", *FAST))
    every = write_jsonl(tmp_path / "all.jsonl", [dict(r, margin=1.0) for r in rows])
    with pytest.raises(UserError, match=r"rm\.margin=0\.5: the data has a margin column"):
        rm.run(recipe_config("rm", tiny_model_dir, every, tmp_path / "r", *FAST, "rm.margin=0.5"))


def test_a_weight_column_in_reward_model_pairs_is_refused_without_a_dead_end_hint(tiny_model_dir, tmp_path):
    """The refusal told the reward model's user to set data.weight_field=weight, which weitiao rm then refuses (per-pair
    weights are DPO's)."""
    data = write_jsonl(tmp_path / "w.jsonl", [dict(r, weight=0.5) for r in make_pairs(4)])
    with pytest.raises(UserError, match=r"w\.jsonl:1: weight: not read here") as e:
        rm.run(recipe_config("rm", tiny_model_dir, data, tmp_path / "r", *FAST))
    assert "data.weight_field=" not in str(e.value)
    with pytest.raises(UserError, match=r"data\.weight_field: per-pair weights are used by DPO only"):
        rm.run(recipe_config("rm", tiny_model_dir, data, tmp_path / "r", *FAST, "data.weight_field=weight"))
    with pytest.raises(UserError, match=r"w\.jsonl:1: weight: not read unless data\.weight_field=weight is set"):
        dpo.run(recipe_config("dpo", tiny_model_dir, data, tmp_path / "d", *FAST))  # DPO's hint names its key


def test_a_near_miss_of_a_pair_column_is_refused_not_left_unread(tokenizer, tmp_path):
    """`margn` (or `margins`) on every pair: weitiao rm trained each pair with margin 0 without a word, as other extra
    columns stay unread; `weights` beside DPO's data.weight_field=weight likewise. Refused naming the row; a row that
    holds the column itself keeps its other near names, and unrelated columns (`height`) stay unread."""
    from weitiao.train.pairs import prepare_pairs

    rows = make_pairs(4)
    for recipe, column, extra in (
        ("rm", "margn", ()),
        ("rm", "margins", ()),
        ("dpo", "weights", ("data.weight_field=weight",)),
    ):
        data = write_jsonl(tmp_path / f"{column}.jsonl", [dict(r, **{column: 1.0}) for r in rows])
        cfg = recipe_config(recipe, "unused", data, tmp_path / "r", *FAST, *extra)
        want = "margin" if column.startswith("marg") else "weight"
        with pytest.raises(UserError, match=rf"{column}\.jsonl:1: {column}: unknown key; did you mean '{want}'\?"):
            prepare_pairs(cfg, tokenizer, read_margins=recipe == "rm")
    kept = write_jsonl(tmp_path / "kept.jsonl", [dict(r, margin=1.0, margins=[1, 2], height=3) for r in rows])
    assert prepare_pairs(recipe_config("rm", "unused", kept, tmp_path / "r", *FAST), tokenizer, read_margins=True)


def test_data_check_refuses_a_pair_column_typo_as_training_does(tokenizer, tmp_path):
    """`weitiao data check` reads pairs with its own loader: it said nothing of `margn`, which training refuses."""
    from weitiao.data.check import check_file

    rows = make_pairs(4)
    typo = write_jsonl(tmp_path / "typo.jsonl", [dict(r, margn=1.0) for r in rows])
    with pytest.raises(UserError, match=r"typo\.jsonl:1: margn: unknown key; did you mean 'margin'\?"):
        check_file([str(typo)], tokenizer, "chatml")
    kept = write_jsonl(tmp_path / "kept.jsonl", [dict(r, margin=1.0, height=3) for r in rows])
    assert check_file([str(kept)], tokenizer, "chatml").pairs == 4  # control: the column itself, an unrelated one
