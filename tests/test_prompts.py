"""One prompt-file reader: golden eval, PPO and rule sets read the same rows the same way."""

from __future__ import annotations

import json

import pytest

from weitiao.data.prompts import read_prompts
from weitiao.errors import UserError

ROWS = [
    {"prompt": "你好", "reference": "你好呀"},
    {"question": "退货运费谁出？", "rule_ids": ["R1"]},
    {"prompt": [{"role": "user", "content": "在吗"}], "system": "友好"},
    {"prompt": "选哪个", "chosen": "A", "rejected": "B"},
    {"chosen": [{"role": "user", "content": "几点了"}, {"role": "assistant", "content": "三点"}],
     "rejected": [{"role": "user", "content": "几点了"}, {"role": "assistant", "content": "不知道"}]},
    {"instruction": "推荐电影", "input": "科幻", "output": "流浪地球"},
    {"instruction": "讲个笑话"},
    {"conversations": [{"from": "human", "value": "早"}, {"from": "gpt", "value": "早上好"}]},
    {"messages": [{"role": "user", "content": "会做饭吗"}, {"role": "assistant", "content": "会"},
                  {"role": "user", "content": "番茄炒蛋呢"}]},
]  # fmt: skip
TEXTS = ["你好", "退货运费谁出？", "在吗", "选哪个", "几点了", "推荐电影\n科幻", "讲个笑话", "早", "番茄炒蛋呢"]


def _write(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_every_layout_reads_to_prompt_and_reference(tmp_path):
    ps = read_prompts(_write(tmp_path / "p.jsonl", ROWS))
    assert [p.text for p in ps] == TEXTS
    assert [p.reference for p in ps] == ["你好呀", None, None, "A", "三点", "流浪地球", None, "早上好", None]
    assert ps[2].messages[0] == {"role": "system", "content": "友好"} and ps[8].history == ["会做饭吗", "会"]
    assert ps[1].row["rule_ids"] == ["R1"] and ps[4].source.endswith("p.jsonl:5")


def test_golden_ppo_and_rules_share_the_reader(tmp_path):
    """The three commands that read prompt files agree row for row (before: three readers, three answers)."""
    from weitiao.eval import golden
    from weitiao.recipes import ppo
    from weitiao.safety import rules

    path = _write(tmp_path / "p.jsonl", ROWS)
    assert [p.text for p in golden.load_prompts(path)] == TEXTS
    assert [m[-1]["content"] for m in ppo.load_prompts([str(path)])] == TEXTS
    # rule prompts are one user turn: the rows with a system prompt or earlier turns are refused (test_rules.py)
    one = [(r, t) for r, p, t in zip(ROWS, golden.load_prompts(path), TEXTS) if len(p.messages) == 1]
    got = rules.read_prompts(_write(tmp_path / "one.jsonl", [r for r, _ in one]))
    assert [p.text for p in got] == [t for _, t in one] and got[1].rule_ids == ["R1"] and len(got) == len(ROWS) - 2


def test_bad_rows_are_one_line_with_file_and_line(tmp_path):
    with pytest.raises(UserError, match=r"b\.jsonl:2: messages\[0\]\.role: expected 'user', got 'assistant'"):
        read_prompts(
            _write(tmp_path / "b.jsonl", [{"prompt": "x"}, {"messages": [{"role": "assistant", "content": "hi"}]}])
        )
    with pytest.raises(UserError, match=r"c\.jsonl:1: row: a text row is not a prompt"):
        read_prompts(_write(tmp_path / "c.jsonl", [{"text": "一段文字"}]))
    with pytest.raises(UserError, match=r"data\.prompts .*e\.jsonl: no prompts found"):
        read_prompts([_write(tmp_path / "e.jsonl", [])], what="data.prompts")


def _turn(role: str, text: str) -> dict:
    return {"role": role, "content": text}


def test_reply_keys_give_the_reference(tmp_path):
    """output / response / answer / a TRL conversational completion / an ultrafeedback pair (before: None)."""
    ask = _turn("user", "几点了")
    rows = [
        {"prompt": "你好", "output": "你好呀"},
        {"prompt": "在吗", "response": "在的"},
        {"question": "退货运费谁出？", "answer": "商家出"},
        {"prompt": [_turn("user", "早")], "completion": [_turn("assistant", "早上好")]},
        {"prompt": "几点了", "messages": [ask], "chosen": [ask, _turn("assistant", "三点")],
         "rejected": [ask, _turn("assistant", "不知道")]},
        {"prompt": "讲个笑话", "reference": "", "answer": "从前有座山"},  # an empty key is no reference
    ]  # fmt: skip
    ps = read_prompts(_write(tmp_path / "p.jsonl", rows))
    assert [p.reference for p in ps] == ["你好呀", "在的", "商家出", "早上好", "三点", "从前有座山"]
    assert [p.text for p in ps] == ["你好", "在吗", "退货运费谁出？", "早", "几点了", "讲个笑话"]


@pytest.mark.parametrize("value", [["商家出"], 42])
def test_a_reference_that_is_not_a_string_is_an_error(tmp_path, value):
    rows = [{"prompt": "x", "reference": "y"}, {"question": "退货运费谁出？", "answer": value}]
    with pytest.raises(UserError, match=r"b\.jsonl:2: answer: expected a string \(the reference answer\), got "):
        read_prompts(_write(tmp_path / "b.jsonl", rows))


def test_a_misspelled_reference_key_is_refused(tmp_path):
    """{"prompt": ..., "referance": ...} read as a prompt without a reference: its reply went unscored, and only the
    'N of M prompts have no reference' note hinted at it."""
    rows = [{"prompt": "你好", "reference": "在呢"}, {"prompt": "退货运费谁出？", "referance": "商家出"}]
    with pytest.raises(UserError, match=r"b\.jsonl:2: referance: unknown key; did you mean 'reference'\?"):
        read_prompts(_write(tmp_path / "b.jsonl", rows))
    ok = [{"prompt": "你好", "reference_id": "r1"}, {"prompt": "在吗", "referance": "x", "answer": "在"}]  # controls
    assert [p.reference for p in read_prompts(_write(tmp_path / "ok.jsonl", ok))] == [None, "在"]


def test_keys_a_layout_would_leave_unread_are_refused(tmp_path):
    """Beside `prompt`/`question`, history, input and context were dropped (the model was asked without them), as was a
    misspelled `sytem` or Open-Orca's `system_prompt`; eval replies were scored as if the row had none of them."""
    bad = [
        ({"prompt": "Q", "history": [["早", "早上好"]], "reference": "A"}, r"history: not read beside 'prompt'"),
        ({"question": "积分多久过期？", "context": "会员积分一年有效。", "answer": "一年"}, r"context: not read"),
        ({"prompt": "Q", "input": "补充", "reference": "A"}, r"input: not read beside 'prompt'"),
        ({"prompt": "Q", "sytem": "你是客服", "reference": "A"}, r"sytem: unknown key; did you mean 'system'\?"),
        ({"prompt": "Q", "system_prompt": "你是客服"}, r"system_prompt: unknown key; did you mean 'system'\?"),
        ({"messages": [_turn("user", "Q")], "sytem": "你是客服"}, r"sytem: unknown key; did you mean 'system'\?"),
    ]
    for i, (row, match) in enumerate(bad):
        with pytest.raises(UserError, match=rf"b{i}\.jsonl:2: {match}"):
            read_prompts(_write(tmp_path / f"b{i}.jsonl", [{"prompt": "x"}, row]))
    ok = [{"prompt": "Q", "history": [], "input": "", "id": 3, "category": "x", "rule_ids": ["R1"]}]  # control
    assert read_prompts(_write(tmp_path / "ok.jsonl", ok))[0].messages == [_turn("user", "Q")]


def test_a_row_gives_one_reference_from_any_layout(tmp_path):
    """A reference beside messages/conversations, Dolly's response and an answer beside alpaca's instruction were
    dropped (the reply went unscored); a second reference that differs from the first was dropped too."""
    rows = [
        {"messages": [_turn("user", "Q1")], "reference": "R1"},
        {"conversations": [{"from": "human", "value": "Q2"}], "answer": "R2"},
        {"instruction": "Q3", "context": "C3", "response": "R3"},  # databricks-dolly-15k
        {"instruction": "Q4", "answer": "R4"},
        {"messages": [_turn("user", "Q5"), _turn("assistant", "R5")], "reference": "R5"},  # the same twice: fine
    ]
    ps = read_prompts(_write(tmp_path / "p.jsonl", rows))
    assert [p.reference for p in ps] == ["R1", "R2", "R3", "R4", "R5"] and ps[2].text == "Q3\nC3"
    bad = [
        ({"messages": [_turn("user", "Q"), _turn("assistant", "A")], "reference": "X"},
         r"reference: a second reference answer, different from the final assistant turn"),
        ({"prompt": "Q", "reference": "A", "answer": "B"}, r"answer: a second reference answer, different from 'ref"),
        ({"instruction": "Q", "output": "A", "reference": "X"}, r"reference: .* different from 'output'"),
        ({"prompt": "Q", "chosen": "C", "rejected": "R", "reference": "X"}, r"reference: .* different from 'chosen'"),
        ({"prompt": "Q", "reference": " \n"}, r"reference: blank reference answer"),  # an empty reply matched it
    ]  # fmt: skip
    for i, (row, match) in enumerate(bad):
        with pytest.raises(UserError, match=rf"b{i}\.jsonl:1: {match}"):
            read_prompts(_write(tmp_path / f"b{i}.jsonl", [row]))


U, A = {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}


@pytest.mark.parametrize(
    ("row", "said"),
    [
        ({"system": "s", "prompt": [U, A, A]}, "prompt[2].role: expected 'user', got 'assistant'"),
        ({"system": "s", "question": [U, U]}, "question[1].role: expected 'assistant', got 'user'"),
        ({"system": "s", "prompt": [U, {"role": "developer", "content": "x"}]}, "prompt[1].role: expected 'assistant', "
         "got 'developer'"),
        ({"system": "s", "conversations": [{"from": "human", "value": "a"}, {"from": "human", "value": "b"},
                                           {"from": "gpt", "value": "c"}]},
         "conversations[1].from: expected 'gpt', got 'human'"),
        ({"system": "s", "messages": [U, U, A]}, "messages[1].role: expected 'assistant', got 'user'"),
    ],
)  # fmt: skip
def test_turn_order_errors_name_the_prompts_own_message(tmp_path, row, said):
    """A prompt row with a `system` key was reported one message off (`prompt[3].role` in a list of three: the key's
    system message counted), a ShareGPT one by OpenAI's key and roles. Now the row's own list, index, key and role,
    as training rows say it (formats._row_names)."""
    path = _write(tmp_path / "p.jsonl", [row])
    with pytest.raises(UserError) as e:
        read_prompts(path)
    assert str(e.value).startswith(f"{path}:1: {said}"), str(e.value)
