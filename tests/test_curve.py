"""weitiao curve: knee rule by hand; nested subsets and a real 2-size run on the tiny model via the CLI."""

from __future__ import annotations

import json

import pytest
import typer
import yaml
from typer.testing import CliRunner

from weitiao.dataeng.commands import register
from weitiao.errors import UserError
from weitiao.recipes import curve


def test_knee_rule_by_hand():
    k = curve.knee([100, 200, 400, 800], [2.0, 1.6, 1.5, 1.49], higher_is_better=False, min_gain=0.05)
    gains = [s["gain_per_doubling"] for s in k["steps"]]
    assert gains == pytest.approx([0.2, 0.1 / 1.6, 0.01 / 1.5])
    assert k["knee"] == 400
    assert curve.knee([100, 200, 400, 800], [2.0, 1.6, 1.5, 1.49], False, 0.1)["knee"] == 200
    # 4x the data in one step counts as two doublings; accuracy: higher is better
    k = curve.knee([100, 400, 800], [0.5, 0.7, 0.72], higher_is_better=True, min_gain=0.05)
    assert [s["gain_per_doubling"] for s in k["steps"]] == pytest.approx([0.2, 0.02 / 0.7])
    assert k["knee"] == 400
    assert curve.knee([1, 2], [1.0, 0.5], False, 0.05)["knee"] is None
    # from 0 there is no relative gain: a rate rising from 0 (stop rate 0 → 1 → 1) was a NaN gain, read as the knee
    k = curve.knee([10, 20, 40], [0.0, 1.0, 1.0], True, 0.05)
    assert k["knee"] == 20 and k["steps"][0] == {"from": 10, "to": 20, "from_zero": "better", "gain_per_doubling": None}
    assert curve.knee([10, 20], [0.0, 0.0], True, 0.05)["knee"] == 10  # no gain at all: the knee
    assert curve.knee([10, 20], [0.0, 0.5], False, 0.05)["steps"][0]["from_zero"] == "worse"
    json.dumps(k, allow_nan=False)  # curve.json stays JSON (no Infinity)
    assert curve.parse_sizes("500, 250,1000,250") == [250, 500, 1000]
    with pytest.raises(UserError, match="integers"):
        curve.parse_sizes("250,lots")


@pytest.fixture
def config(tmp_path, tiny_model_dir, chat_file):
    cfg = {
        "model": {"path": str(tiny_model_dir), "quant": "none"},
        "lora": {"r": 4},
        "data": {"train": [str(chat_file)], "eval_split": 0.25, "max_len": 256, "packing": False},
        "train": {"out": str(tmp_path / "runs"), "epochs": 1, "micro_batch_size": 4, "lr": 1e-3,
                  "tensorboard": False, "progress": False},
    }  # fmt: skip
    path = tmp_path / "sft.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


@pytest.mark.slow
def test_curve_cli_two_sizes(config, tmp_path):
    cli, data = typer.Typer(), typer.Typer()
    cli.add_typer(data, name="data")
    register(data, cli)
    r = CliRunner().invoke(cli, ["curve", str(config), "--sizes", "8,16", "train.seed=3"])
    assert r.exit_code == 0, r.output
    out = tmp_path / "runs/curve"
    res = json.loads((out / "curve.json").read_text())
    assert [p["size"] for p in res["points"]] == [8, 16]
    assert [p["steps"] for p in res["points"]] == [2, 4]  # one epoch of 8 and 16 rows at 4 per step
    assert all(p["eval_loss"] > 0 for p in res["points"]) and (out / "curve.png").stat().st_size > 1000
    # one eval set for all sizes (24 rows · 0.25 = 6), carved out before the subsets; subsets are nested
    ev = [json.loads(line) for line in open(out / "eval.jsonl", encoding="utf-8")]
    small, big = ([json.loads(line) for line in open(out / f"train_{n}.jsonl", encoding="utf-8")] for n in (8, 16))
    assert len(ev) == 6 and big[:8] == small and not {json.dumps(r) for r in ev} & {json.dumps(r) for r in big}
    assert "knee" in r.output and "curve.png" in r.output
    assert "steps grew with the data (2, 4)" in r.output and res["steps_confounded"]  # proportional: warned


@pytest.mark.slow
def test_curve_fixed_steps_and_golden_metric(config, tmp_path):
    from conftest import write_jsonl

    golden = write_jsonl(tmp_path / "golden.jsonl", [
        {"messages": [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好呀"}]},
        {"messages": [{"role": "user", "content": "今天吃什么"}]},
    ])  # fmt: skip
    cli, data = typer.Typer(), typer.Typer()
    cli.add_typer(data, name="data")
    register(data, cli)
    args = ["curve", str(config), "--sizes", "8,16", "--steps", "fixed", "--golden", str(golden)]
    r = CliRunner().invoke(cli, [*args, "--metric", "golden_stop_rate", "--higher-is-better", "train.seed=3"])
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "runs/curve/curve.json").read_text())
    assert [p["steps"] for p in res["points"]] == [4, 4]  # 8 rows train as many steps as 16 (two epochs)
    assert not res["steps_confounded"] and "steps grew" not in r.output
    for p in res["points"]:
        assert 0 <= p["golden_stop_rate"] <= 1 and "golden_rougeL" in p and "golden_mean_len" in p
    with pytest.raises(UserError, match="--steps 'some'"):
        curve.run(config, [8], steps="some")


def test_curve_errors(config):
    with pytest.raises(UserError, match="more than the 18 training rows"):
        curve.run(config, [8, 100])
    with pytest.raises(UserError, match="needs an eval set"):
        curve.run(config, [8], ["data.eval_split=0"])


def test_a_golden_metric_without_golden_prompts_is_refused_before_training(config, monkeypatch):
    """--metric golden_stop_rate without --golden trained the largest size, then said the key was not in its summary."""
    from weitiao.recipes import sft

    monkeypatch.setattr(sft, "run", lambda cfg: pytest.fail("trained before refusing"))
    with pytest.raises(UserError, match=r"^--metric golden_stop_rate: golden_\* metrics come from --golden"):
        curve.run(config, [8], metric="golden_stop_rate", higher_is_better=True)


def test_a_misspelled_metric_is_refused_before_training(config, monkeypatch):
    """--metric eval_los trained the largest size, then said the key was not in its summary."""
    from weitiao.recipes import sft

    monkeypatch.setattr(sft, "run", lambda cfg: pytest.fail("trained before refusing"))
    with pytest.raises(UserError, match=r"^--metric eval_los: did you mean eval_loss\?"):
        curve.run(config, [8], metric="eval_los")
    monkeypatch.setattr(sft, "run", lambda cfg: {"steps": 1, "tokens_per_s": 5.0})  # control: another summary key
    with pytest.raises(UserError, match="not in the run summary"):  # is tried: far from every known metric
        curve.run(config, [8], metric="best_evl_score", higher_is_better=False)


def test_a_metric_is_read_the_way_it_is_better(config, monkeypatch):
    """`--metric golden_stop_rate` without --higher-is-better read a fall from 1.0 to 0.0 as a +100% gain (lower is
    better was the default for every metric) and put the knee where the rate rose again; the way is now known for
    losses and golden quality metrics, a flag against it is refused, and any other metric needs one."""
    from weitiao.recipes import sft

    rates = iter([0.0, 1.0])  # trained largest first: 16 rows stop 0%, 8 rows 100% — worse with more data
    monkeypatch.setattr(sft, "run", lambda cfg: {"steps": 1, "train_loss": 1.0})
    monkeypatch.setattr(curve, "golden_metrics", lambda run, ps: {"golden_stop_rate": next(rates)})
    r = curve.run(config, [8, 16], metric="golden_stop_rate", golden=config.parent / "chat.jsonl")
    assert r["higher_is_better"] is True and r["diminishing_returns"]["steps"][0]["gain_per_doubling"] == -1.0
    assert r["diminishing_returns"]["knee"] == 8
    monkeypatch.setattr(sft, "run", lambda cfg: pytest.fail("trained before refusing"))
    with pytest.raises(UserError, match="^--lower-is-better: --metric golden_rougeL is better higher; drop the flag"):
        curve.run(config, [8], metric="golden_rougeL", higher_is_better=False, golden=config)
    with pytest.raises(UserError, match="^--higher-is-better: --metric eval_loss is better lower"):
        curve.run(config, [8], higher_is_better=True)
    with pytest.raises(UserError, match="^--metric golden_mean_len: which way is better is not known"):
        curve.run(config, [8], metric="golden_mean_len", golden=config)
    assert curve.LOWER_IS_BETTER | curve.HIGHER_IS_BETTER <= {*curve.KNOWN_METRICS, "best_eval"}


def test_the_last_steps_train_loss_is_a_curve_metric_beside_the_runs_mean(config, monkeypatch):
    """The summary's train_loss is the mean over the run's steps, the last step's is last_train_loss: --metric
    last_train_loss was refused as a typo of train_loss (did you mean train_loss?) before it trained."""
    from weitiao.recipes import sft

    monkeypatch.setattr(sft, "run", lambda cfg: {"steps": 2, "train_loss": 3.0, "last_train_loss": 2.0})
    points = {m: curve.run(config, [8], metric=m)["points"][0][m] for m in ("train_loss", "last_train_loss")}
    assert points == {"train_loss": 3.0, "last_train_loss": 2.0}


def test_every_reply_metric_is_a_known_curve_metric():
    """curve spelled the reply metrics out by hand: a key added to reply_metrics alone would have been refused as a
    near miss of a known one (golden_exact_matches → did you mean golden_exact_match). Replies with a reference, a
    history and a judge score give every optional key."""
    from weitiao.eval.metrics import REPLY_METRICS, Item, reply_metrics

    items = [Item("你好呀", True, "你好呀", ["上一轮"], 0.8), Item("好的好的好的好的", False, "不", [], 0.2)]
    given = set(reply_metrics(items)) - {"n"}
    assert given == set(REPLY_METRICS)
    assert {f"golden_{k}" for k in given} <= set(curve.KNOWN_METRICS)


def test_copies_of_a_held_out_row_stay_out_of_every_subset(tmp_path, tiny_model_dir, monkeypatch):
    """curve's own data.eval_split carve held rows out one by one: a row the data holds twice went to eval once and
    trained in the subsets too (its eval loss then measured recall, more so at larger sizes), and both copies could
    sit in eval, counted twice. Now every copy goes to the side of its first one, eval holding it once, as `weitiao
    sft`'s own eval_split does."""
    from conftest import write_jsonl

    from weitiao.recipes import sft

    rows = [{"messages": [{"role": "user", "content": f"问题{i % 6}"}, {"role": "assistant", "content": f"答{i % 6}"}]}
            for i in range(18)]  # fmt: skip
    data = write_jsonl(tmp_path / "dup.jsonl", rows)  # 6 unique rows, 3 copies each
    cfg = {"model": {"path": str(tiny_model_dir)}, "data": {"train": [str(data)], "eval_split": 0.34},
           "train": {"out": str(tmp_path / "runs")}}  # fmt: skip
    path = tmp_path / "sft.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    monkeypatch.setattr(sft, "run", lambda cfg: {"steps": 1, "eval_loss": 1.0})
    curve.run(path, [4, 8])
    out = tmp_path / "runs/curve"
    ev = [json.dumps(json.loads(line)) for line in open(out / "eval.jsonl", encoding="utf-8")]
    big = {json.dumps(json.loads(line)) for line in open(out / "train_8.jsonl", encoding="utf-8")}
    assert len(ev) == len(set(ev)) == 2 and not set(ev) & big  # 6 unique · 0.34 = 2 held out, once each


def test_a_row_training_sets_aside_is_in_no_subset(tmp_path, monkeypatch):
    """Under data.skip_invalid a row the tokenizer's template refuses (Gemma: no system role) passed curve's read,
    went into train_N.jsonl, and the size-N run set it aside: 'training on 10 rows' trained 9 and the table said 10.
    Now curve reads the rows with the trainer's row checks: the row goes to curve's rejects.jsonl, each subset holds
    N rows training keeps."""
    from conftest import build_tokenizer, write_jsonl
    from test_chat import NO_SYSTEM

    from weitiao.recipes import sft

    build_tokenizer(chat_template=NO_SYSTEM).save_pretrained(tmp_path / "tok")
    rows = [{"messages": [{"role": "user", "content": f"问题{i}"}, {"role": "assistant", "content": f"答{i}"}]}
            for i in range(8)]  # fmt: skip
    rows.insert(3, {"messages": [{"role": "system", "content": "你是助手"}, *rows[0]["messages"]]})
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    cfg = {"model": {"path": str(tmp_path / "tok")}, "data": {"train": [str(data)], "eval_split": 0.25,
           "skip_invalid": True}, "train": {"out": str(tmp_path / "runs")}}  # fmt: skip
    path = tmp_path / "sft.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    monkeypatch.setattr(sft, "run", lambda cfg: {"steps": 1, "eval_loss": 1.0})
    curve.run(path, [3, 6])
    out = tmp_path / "runs/curve"
    subsets = [out / "train_6.jsonl", out / "eval.jsonl"]
    assert not any("system" in f.read_text(encoding="utf-8") for f in subsets)
    assert sum(1 for _ in open(out / "train_6.jsonl", encoding="utf-8")) == 6
    [reject] = [json.loads(line) for line in open(out / "rejects.jsonl", encoding="utf-8")]
    assert reject["source"] == f"{data}:4" and "System role not supported" in reject["error"]


def test_curve_out_never_replaces_a_users_file(config, tmp_path, chat_file):
    """The curve wrote eval.jsonl, train_N.jsonl and curve.json into --out unchecked: `--out` the folder holding the
    user's own eval.jsonl (or the training file itself) replaced it; now refused before any training."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "eval.jsonl").write_text('{"instruction": "我的评测集", "output": "别动"}\n', encoding="utf-8")
    with pytest.raises(UserError, match="eval.jsonl: exists and was not written by weitiao"):
        curve.run(config, [8, 16], out=mine)
    assert "别动" in (mine / "eval.jsonl").read_text(encoding="utf-8") and not (mine / "train_8.jsonl").exists()
    train = tmp_path / "train_8.jsonl"
    train.write_bytes(chat_file.read_bytes())
    with pytest.raises(UserError, match="is also an input"):
        curve.run(config, [8, 16], [f"data.train=[{train}]"], out=tmp_path)
    assert train.read_bytes() == chat_file.read_bytes()


@pytest.mark.slow
def test_a_config_with_a_data_format_or_a_dataset_dir_runs(tmp_path, tiny_model_dir):
    """Each size read train_N.jsonl (messages rows written by the curve) with the config's data.format and dataset_dir:
    `format: alpaca` refused it ("train_20.jsonl:1: instruction: missing") and a LLaMA-Factory dataset_dir looked its
    path up as a dataset name ("no dataset '.../train_20.jsonl'"), after the model had loaded: no curve was drawn."""
    from conftest import write_jsonl

    rows = [{"instruction": f"问题{i}", "input": "", "output": f"答案{i}。"} for i in range(12)]
    write_jsonl(tmp_path / "train.jsonl", rows)
    write_jsonl(tmp_path / "eval.jsonl", [{"instruction": "评测", "input": "上下文", "output": "好的。"}])
    lf = tmp_path / "lf"
    lf.mkdir()
    (lf / "my.json").write_text(json.dumps([{"q": r["instruction"], "a": r["output"]} for r in rows]), "utf-8")
    (lf / "ev.json").write_text(json.dumps([{"q": "评测\n上下文", "a": "好的。"}]), "utf-8")
    info = {
        n: {"file_name": f, "columns": {"prompt": "q", "response": "a"}}
        for n, f in (("mine", "my.json"), ("myeval", "ev.json"))
    }
    (lf / "dataset_info.json").write_text(json.dumps(info), "utf-8")
    cfg = {"model": {"path": str(tiny_model_dir), "quant": "none"}, "lora": {"r": 4},
           "data": {"max_len": 64, "packing": False},
           "train": {"epochs": 1, "micro_batch_size": 4, "tensorboard": False, "progress": False}}  # fmt: skip
    data = {"alpaca": {"train": [str(tmp_path / "train.jsonl")], "eval": [str(tmp_path / "eval.jsonl")],
                       "format": "alpaca"},
            "dataset_dir": {"train": ["mine"], "eval": ["myeval"], "dataset_dir": str(lf)}}  # fmt: skip
    losses = []
    for name, d in data.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({**cfg, "data": {**cfg["data"], **d}, "train": {**cfg["train"],
                        "out": str(tmp_path / name)}}), encoding="utf-8")  # fmt: skip
        res = curve.run(path, [4, 8], ["train.seed=3"])
        evals = [json.loads(line) for line in open(tmp_path / name / "curve/eval.jsonl", encoding="utf-8")]
        assert evals == [{"messages": [{"role": "user", "content": "评测\n上下文"},
                                       {"role": "assistant", "content": "好的。"}]}]  # fmt: skip
        assert res["eval_from"] == d["eval"] and [p["size"] for p in res["points"]] == [4, 8]
        losses.append([p["eval_loss"] for p in res["points"]])
    assert losses[0] == pytest.approx(losses[1])  # the same rows in two layouts: the same curve
