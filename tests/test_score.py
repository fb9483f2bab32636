"""`weitiao score`: an empty file is an error; rows are bounded by the model's context (history dropped
first, a too-long last exchange refused and counted), never tokenized and run at any length."""

import json
import re

import pytest
from conftest import CHATML, save_tiny_model, write_jsonl

from weitiao.errors import UserError
from weitiao.recipes import score


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory, tokenizer):
    """A full-model reward model dir as `weitiao rm` writes it, on a tiny base with a 64-token context."""
    from transformers import AutoModelForSequenceClassification

    root = tmp_path_factory.mktemp("rm")
    base = save_tiny_model(root / "base", tokenizer, hidden=64)
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1, max_position_embeddings=64)
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "tokenizer")
    (root / "reward_model.json").write_text(json.dumps({"base": str(base), "chat_template": CHATML}))
    return root


def test_empty_file_is_an_error(rm_dir, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(UserError, match=f"^{empty}: no rows$"):
        score.run(str(rm_dir), str(empty))
    assert not (tmp_path / "empty.jsonl.scores.jsonl").exists()


@pytest.mark.parametrize("row", [{"prompt": "你好", "completion": "嗨"}, {"text": "你好，嗨"}])
def test_a_raw_text_row_is_refused_not_left_out(rm_dir, tmp_path, row):
    """String prompt/completion and text rows load as raw-text documents, neither chat nor pair: `score` wrote an
    empty output, reported `rows: 1` and exited 0."""
    f = write_jsonl(tmp_path / "raw.jsonl", [row])
    with pytest.raises(UserError, match=r"raw\.jsonl:1: a raw-text row .*chat rows"):
        score.run(str(rm_dir), str(f))
    assert not (tmp_path / "raw.jsonl.scores.jsonl").exists()


def test_rows_are_bounded_by_the_context(rm_dir, tmp_path):
    short = {"instruction": "你好", "output": "嗨"}
    history = [["今天天气怎么样？" * 8, "挺好的，大晴天☀️" * 8]] * 2  # each exchange alone overflows
    long_history = {"instruction": "你好", "output": "嗨", "history": history}  # fits once history is dropped
    long_reply = {"instruction": "你好", "output": "挺好的，大晴天☀️" * 20}  # the last exchange alone is too long
    f = write_jsonl(tmp_path / "rows.jsonl", [short, long_history, long_reply])
    summary = score.run(str(rm_dir), str(f))
    assert summary["context"] == 64
    assert summary["cut_to_context"] == 1 and summary["refused_over_context"] == 1
    out = [json.loads(x) for x in (tmp_path / "rows.jsonl.scores.jsonl").read_text().splitlines()]
    assert out[2]["score"] is None and out[0]["score"] is not None
    # the cut row is scored as its last exchange alone: the same as the short row
    assert out[1]["score"] == pytest.approx(out[0]["score"], abs=1e-5)


def test_pairs_over_the_context_are_counted_as_rows(rm_dir, tmp_path):
    """A pair's two sides were counted apart: one pair over the context read `refused_over_context: 2` beside
    `rows: 3`, as if two of the three rows had no score; now pairs count as the rows they are."""
    long = "挺好的，大晴天☀️" * 20  # the last exchange alone is over the 64-token context
    history = [{"role": "user", "content": "今天天气怎么样？" * 8}, {"role": "assistant", "content": "挺好的" * 8}]
    rows = [
        {"prompt": "你好", "chosen": "你好呀", "rejected": "滚"},
        {"prompt": [*history, {"role": "user", "content": "你好"}], "chosen": "你好呀", "rejected": "滚"},  # cut
        {"prompt": "你好", "chosen": long, "rejected": long + "。"},  # both sides refused: one row
    ]
    summary = score.run(str(rm_dir), str(write_jsonl(tmp_path / "pairs.jsonl", rows)))
    assert (summary["rows"], summary["cut_to_context"], summary["refused_over_context"]) == (3, 1, 1)
    out = [json.loads(x) for x in (tmp_path / "pairs.jsonl.scores.jsonl").read_text().splitlines()]
    assert out[2]["score_chosen"] is None and out[2]["score_rejected"] is None and out[1]["score_chosen"] is not None


def test_a_last_reply_of_weight_0_is_scored(rm_dir, tmp_path):
    """`weight: 0` (OpenAI files: not trained) left the last reply with no labelled token, and its score was read at
    the batch's first token: the same number for any row."""
    chat = [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "嗨"}]
    turns = [("天气", "挺好的", 0), ("电影", "《流浪地球》不错哦👍", 0), ("天气", "挺好的", 1)]
    last = [[{"role": "user", "content": q}, {"role": "assistant", "content": a, "weight": w}] for q, a, w in turns]
    rows = [{"messages": chat + turn} for turn in last]
    score.run(str(rm_dir), str(write_jsonl(tmp_path / "w.jsonl", rows)))
    got = [json.loads(x)["score"] for x in (tmp_path / "w.jsonl.scores.jsonl").read_text().splitlines()]
    assert got[0] == pytest.approx(got[2], abs=1e-6) and abs(got[0] - got[1]) > 1e-4


def test_ppo_reward_model_over_context_is_one_line(rm_dir):
    from weitiao.recipes.rewards import model_scorer

    score, _ = model_scorer(str(rm_dir))
    prompt = [[{"role": "user", "content": "你好"}]]
    assert score(prompt, ["嗨"])[0] is not None  # negative control
    with pytest.raises(UserError, match=r"longer than its context \(64 tokens\)"):
        score(prompt, ["挺好的，大晴天☀️" * 20])


def test_score_head_loads_without_the_newly_initialized_report(tokenizer, tmp_path):
    import logging

    from transformers import AutoModelForSequenceClassification

    from weitiao.models.load import ModelSpec, load_model

    base = save_tiny_model(tmp_path / "base", tokenizer, hidden=64)
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logging.getLogger("transformers").addHandler(handler)
    try:
        # negative control: transformers itself reports the fresh head of a causal LM checkpoint
        AutoModelForSequenceClassification.from_pretrained(base, num_labels=1)
        assert any("score.weight" in m for m in seen)
        seen.clear()
        model = load_model(ModelSpec(path=str(base)), head="score")
    finally:
        logging.getLogger("transformers").removeHandler(handler)
    assert not any("score.weight" in m or "LOAD REPORT" in m for m in seen) and model.score.out_features == 1


def _score_options() -> set[str]:
    """The --options `weitiao score` really has."""
    from typer.main import get_command

    from weitiao.cli import app

    cmd = get_command(app).commands["score"]
    return {o for p in cmd.params for o in p.opts if o.startswith("--")}


def test_every_option_a_hint_names_exists(rm_dir, tmp_path):
    """Each error `weitiao score` can give names only options it has (or reward-model config keys)."""
    from weitiao.config import load_config
    from weitiao.recipes.rm import RMConfig

    opts = _score_options()
    bad_rows = write_jsonl(tmp_path / "bad.jsonl", [{"instruction": "你好", "output": "嗨"}, {"instruction": 5}])
    tools_row = {"messages": [{"role": "user", "content": "几点了"}, {"role": "assistant", "content": "",
                 "tool_calls": [{"type": "function", "function": {"name": "now", "arguments": "{}"}}]},
                 {"role": "tool", "content": "10点"}, {"role": "assistant", "content": "10点"}]}  # fmt: skip
    tools = write_jsonl(tmp_path / "tools.jsonl", [tools_row])
    good = write_jsonl(tmp_path / "good.jsonl", [{"instruction": "你好", "output": "嗨"}])
    hints = []
    for rm, f in ((str(tmp_path), good), (str(rm_dir), bad_rows), (str(rm_dir), tools)):
        with pytest.raises(UserError) as e:
            score.run(rm, str(f))
        hints.append(str(e.value))
    assert "--rm" in hints[0] and "--skip-invalid" in hints[1] and "data.template" in hints[2]
    for h in hints:
        for opt in re.findall(r"(?<![\w-])--[a-z][a-z-]*", h):
            assert opt in opts, (opt, h)
        for key in re.findall(r"\b(?:data|model|lora|train|rm)\.[a-z_]+\b", h):
            load_config(RMConfig, None, ["data.train=[x.jsonl]", f"{key}=qwen"])  # a real config key
    # the option the hint names works: the bad row is set aside, the good one scored
    summary = score.run(str(rm_dir), str(bad_rows), skip_invalid=True)
    assert summary["rows"] == 1 and (tmp_path / "bad.jsonl.rejects.jsonl").exists()


@pytest.mark.slow
def test_a_raw_text_reward_model_scores_as_it_was_trained(tiny_model_dir, tmp_path, capsys):
    """An RM trained with data.format preference_raw learned on prompt + reply + EOS; `score` rendered the pairs
    through the chat template and reported other margins (a user measured 0.41 against the run's eval 2.37)."""
    from conftest import recipe_config

    from weitiao.models.heads import load_reward_model
    from weitiao.recipes import rm
    from weitiao.recipes.rewards import model_scorer
    from weitiao.train.log import read_metrics

    pairs = [{"prompt": f"问题{i}：天气如何？", "chosen": "晴天，适合出门😊" * (1 + i % 3), "rejected": "不知道。"}
             for i in range(8)]  # fmt: skip
    f = write_jsonl(tmp_path / "raw.jsonl", pairs)
    out = tmp_path / "rm"
    rm.run(recipe_config("rm", tiny_model_dir, f, out, "data.format=preference_raw", f"data.eval=[{f}]",
                         "train.max_steps=3", "train.eval_every=3", "train.lr=5e-3"))  # fmt: skip
    eval_margin = read_metrics(out, "eval")[-1]["eval_margin"]
    summary = score.run(str(out), str(f))
    assert summary["mean_margin"] == pytest.approx(eval_margin, abs=1e-4)
    # negative control: the same pairs through the chat template (what score did) give other scores
    chat = score.score_pairs(*load_reward_model(str(out))[:2], score.load_rows(str(f)).rows)
    assert abs(sum(c - r for c, r in zip(*chat)) / len(pairs) - eval_margin) > 1e-3
    chats = write_jsonl(tmp_path / "chats.jsonl", [{"instruction": "你好", "output": "嗨"}])
    with pytest.raises(UserError, match="trained on raw text pairs .* scores prompt/chosen/rejected strings only"):
        score.run(str(out), str(chats), out=str(tmp_path / "c.scores.jsonl"))
    with pytest.raises(UserError, match="trained on raw text pairs .* PPO scores chat-rendered"):
        model_scorer(str(out))
    # an export for OpenRLHF/verl says so (both template the prompts they roll out) and records the format
    from weitiao.infer.rl_export import export_for

    capsys.readouterr()
    dest = export_for("verl", str(out), str(tmp_path / "verl"))
    assert "trained on raw text" in capsys.readouterr().out
    assert json.loads((dest / ".weitiao-export.json").read_text())["format"] == "preference_raw"


def test_out_inside_a_folder_given_as_the_data_is_refused(rm_dir, tmp_path):
    """`score RM DIR --out DIR/pairs.jsonl` checked --out against the folder only, so a data file in it that weitiao
    wrote (logs pairs, a data mix) was read, then replaced by the scores."""
    from weitiao.io import write_jsonl as ours

    data = tmp_path / "data"
    pairs = data / "pairs.jsonl"
    ours(pairs, [{"prompt": "你好", "chosen": "你好呀", "rejected": "滚"}])
    before = pairs.read_bytes()
    for given in (data, data / "*.jsonl"):
        with pytest.raises(UserError, match="is also an input"):
            score.run(str(rm_dir), str(given), out=str(pairs))
    assert pairs.read_bytes() == before


def test_scores_are_written_in_the_files_row_order(rm_dir, tmp_path):
    """A folder of a chat file and a pair file got every pair's line first, so the lines no longer followed the rows
    as they were read (a.jsonl, then b.jsonl)."""
    (d := tmp_path / "d").mkdir()
    write_jsonl(d / "a.jsonl", [{"instruction": "你好", "output": "嗨"}, {"instruction": "在吗", "output": "在"}])
    write_jsonl(d / "b.jsonl", [{"prompt": "你好", "chosen": "嗨", "rejected": "滚"}])
    score.run(str(rm_dir), str(d), out=str(tmp_path / "s.jsonl"))
    out = [json.loads(x) for x in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert [o["source"].rsplit("/", 1)[1] for o in out] == ["a.jsonl:1", "a.jsonl:2", "b.jsonl:1"]
    assert ["score" in o for o in out] == [True, True, False]


def test_a_pair_whose_sides_score_the_same_is_wrong_and_counted_as_a_tie(rm_dir, tmp_path):
    """pair_accuracy is strict (chosen above rejected, as training's accuracy): exact ties counted as wrong unsaid. A
    reward head of zeros scores every reply 0: every pair a tie."""
    import shutil

    from transformers import AutoModelForSequenceClassification

    flat = shutil.copytree(rm_dir, tmp_path / "flat")
    model = AutoModelForSequenceClassification.from_pretrained(flat / "model")
    model.score.weight.data.zero_()
    model.save_pretrained(flat / "model")
    rows = [
        {"prompt": "你好", "chosen": "你好呀", "rejected": "滚"},
        {"prompt": "在吗", "chosen": "在的", "rejected": "不在"},
    ]
    pairs = write_jsonl(tmp_path / "pairs.jsonl", rows)
    flat_summary = score.run(str(flat), str(pairs), str(tmp_path / "flat.jsonl"))
    assert flat_summary["pair_ties"] == 2 and flat_summary["pair_accuracy"] == 0.0
    assert score.run(str(rm_dir), str(pairs), str(tmp_path / "real.jsonl"))["pair_ties"] == 0  # control


def test_model_and_quant_a_full_reward_model_cannot_take_are_refused_not_ignored(rm_dir, tmp_path):
    """`score --rm FULL --quant 4bit` (or --model B) loaded the full reward model as saved and scored with it, the flag
    silently ignored; `--quant 3bit` was a pydantic traceback after the model code loaded. Each is one line now."""
    pairs = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "你好", "chosen": "嗨", "rejected": "滚"}])
    with pytest.raises(UserError, match=r"^--quant 4bit: .* is a full reward model \(model/\), loaded as saved"):
        score.run(str(rm_dir), str(pairs), quant="4bit")
    with pytest.raises(UserError, match=r"^--model other and --quant none: .* is a full reward model"):
        score.run(str(rm_dir), str(pairs), model="other", quant="none")
    with pytest.raises(UserError, match=r"^--quant 3bit: choose none, 4bit or 8bit$"):
        score.run(str(rm_dir), str(pairs), quant="3bit")
    assert not (tmp_path / "p.jsonl.scores.jsonl").exists()
