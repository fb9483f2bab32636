import json
import re
from pathlib import Path

import pytest
from conftest import write_jsonl

from weitiao.data.formats import PreferencePair, detect_format, load_conversations, load_rows
from weitiao.errors import UserError


def test_three_formats_give_the_same_conversation(tmp_path):
    alpaca = {
        "instruction": "你好",
        "input": "我是小王",
        "output": "嗨😊",
        "system": "简洁",
        "history": [["在吗", "在"]],
    }
    sharegpt = {
        "system": "简洁",
        "conversations": [
            {"from": "human", "value": "在吗"},
            {"from": "gpt", "value": "在"},
            {"from": "human", "value": "你好\n我是小王"},
            {"from": "gpt", "value": "嗨😊"},
        ],
    }
    openai = {
        "messages": [
            {"role": "system", "content": "简洁"},
            {"role": "user", "content": "在吗"},
            {"role": "assistant", "content": "在"},
            {"role": "user", "content": [{"type": "text", "text": "你好\n我是小王"}]},
            {"role": "assistant", "content": "嗨😊"},
        ]
    }
    got = []
    for name, row in [("a", alpaca), ("s", sharegpt), ("o", openai)]:
        got.append(load_conversations(write_jsonl(tmp_path / f"{name}.jsonl", [row])).rows[0].messages)
    assert got[0] == got[1] == got[2]
    assert [m["role"] for m in got[0]] == ["system", "user", "assistant", "user", "assistant"]


def test_json_and_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"instruction": f"问{i}", "input": "", "output": f"答{i}"} for i in range(3)]
    (tmp_path / "d.json").write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    a = load_conversations(tmp_path / "d.json")
    b = load_conversations(tmp_path / "d.parquet")
    assert a.format == b.format == "alpaca"
    assert [c.messages for c in a.rows] == [c.messages for c in b.rows]
    assert b.rows[2].source.endswith("d.parquet:3")


@pytest.mark.parametrize(
    "row, field",
    [
        ({"instruction": "问", "output": ""}, "output: is empty"),
        ({"messages": [{"role": "user", "content": "问"}, {"role": "bot", "content": "答"}]}, "messages[1].role"),
        ({"messages": [{"role": "user", "content": "问"}]}, "must end with an assistant turn"),
        ({"conversations": [{"from": "gpt", "value": "答"}]}, "conversations[0].from: expected 'human', got 'gpt'"),
        ({"instruction": "问", "output": 3}, "output: expected a string"),
        ({"output": "答"}, "instruction: missing"),
        ({"foo": 1}, "row: unknown format"),
    ],
)
def test_bad_row_is_one_line_with_file_line_field(tmp_path, row, field):
    good = {
        "messages": {"messages": [{"role": "user", "content": "问"}, {"role": "assistant", "content": "答"}]},
        "conversations": {"conversations": [{"from": "human", "value": "问"}, {"from": "gpt", "value": "答"}]},
    }.get(next(iter(row)), {"instruction": "问", "output": "答"})
    path = write_jsonl(tmp_path / "bad.jsonl", [good, good, row] if "foo" not in row else [row])
    with pytest.raises(UserError) as e:
        load_conversations(path)
    msg = str(e.value)
    line = 3 if "foo" not in row else 1
    assert msg.startswith(f"{path}:{line}: ") and field in msg and "\n" not in msg


def test_invalid_json_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"instruction": "a", "output": "b"}\n{"instruction": \n', encoding="utf-8")
    with pytest.raises(UserError, match=r"d.jsonl:2: json: not valid JSON"):
        load_conversations(path)


def test_skip_invalid_accounts_for_every_row(tmp_path):
    rows = [{"instruction": "问", "output": "答"}, {"instruction": "问", "output": ""}, {"instruction": "x"}]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    res = load_conversations(path, skip_invalid=True, rejects_path=tmp_path / "rej.jsonl")
    assert (res.read, res.kept, res.rejected) == (3, 1, 2)
    rejects = [json.loads(x) for x in (tmp_path / "rej.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["source"] for r in rejects] == [f"{path}:2", f"{path}:3"]
    assert rejects[0]["row"] == rows[1] and "output" in rejects[0]["error"]


def test_rejects_keep_a_broken_lines_text_and_never_replace_a_users_file(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"instruction": "问", "output": "答"}\n{"instruction": "问", "output": "答"\n', encoding="utf-8")
    mine = tmp_path / "d.jsonl.rejects.jsonl"
    mine.write_text("my notes\n")
    with pytest.raises(UserError, match="d.jsonl.rejects.jsonl: exists and was not written by weitiao"):
        load_rows(path, skip_invalid=True)
    assert mine.read_text() == "my notes\n"
    mine.unlink()
    for _ in range(2):  # negative control: our own rejects file is replaced
        assert load_rows(path, skip_invalid=True).rejected == 1
    reject = json.loads(mine.read_text(encoding="utf-8"))
    assert reject["row"] is None and reject["text"] == '{"instruction": "问", "output": "答"'


def test_rejects_of_several_files_go_beside_each_file(tmp_path):
    """With several files the rejects file was named after the first whatever file its rows came from: b.jsonl's
    bad rows in a.jsonl.rejects.jsonl (and a later check of a.jsonl alone replaced them). Each file's bad rows now go
    beside it, the line says where, and a user's file of that name still stops the load before anything is written."""
    good, bad = {"instruction": "问", "output": "答"}, {"instruction": "问"}
    a = write_jsonl(tmp_path / "a.jsonl", [good, bad])
    b = write_jsonl(tmp_path / "b.jsonl", [good, bad, bad])
    c = write_jsonl(tmp_path / "c.jsonl", [good])
    res = load_rows([a, b, c], skip_invalid=True)
    assert (res.read, res.kept, res.rejected) == (6, 3, 3)
    for f, lines in ((a, [2]), (b, [2, 3])):
        rejects = [json.loads(x) for x in Path(f"{f}.rejects.jsonl").read_text(encoding="utf-8").splitlines()]
        assert [r["source"] for r in rejects] == [f"{f}:{n}" for n in lines]
    assert not Path(f"{c}.rejects.jsonl").exists()
    assert res.rejects_line() == f"{a}.rejects.jsonl (1), {b}.rejects.jsonl (2)"
    Path(f"{a}.rejects.jsonl").unlink()
    mine = Path(f"{b}.rejects.jsonl")
    mine.write_text("my notes\n")
    with pytest.raises(UserError, match="b.jsonl.rejects.jsonl: exists and was not written by weitiao"):
        load_rows([a, b], skip_invalid=True)
    assert mine.read_text() == "my notes\n" and not Path(f"{a}.rejects.jsonl").exists()
    one = load_rows(a, skip_invalid=True, rejects_path=tmp_path / "rej.jsonl")  # a path given: every row there
    assert one.rejects_line() == str(tmp_path / "rej.jsonl")


def test_preference_rows(tmp_path):
    rows = [
        {"prompt": "讲个笑话", "chosen": "哈哈好呀😂", "rejected": "不想讲。"},
        {
            "messages": [
                {"role": "user", "content": "在吗"},
                {"role": "assistant", "content": "在"},
                {"role": "user", "content": "吃了吗"},
            ],
            "chosen": [{"role": "assistant", "content": "吃啦🍜"}],
            "rejected": "吃了吗吃了吗",
        },
    ]
    res = load_rows(write_jsonl(tmp_path / "p.jsonl", rows))
    assert res.format == "preference" and all(isinstance(r, PreferencePair) for r in res.rows)
    conv = res.rows[1].conversation("chosen")
    assert conv.messages[-1] == {"role": "assistant", "content": "吃啦🍜"} and len(conv.messages) == 4
    with pytest.raises(UserError, match="preference row in SFT data"):
        load_conversations(tmp_path / "p.jsonl")
    bad = write_jsonl(tmp_path / "b.jsonl", [{"prompt": "问", "chosen": "同", "rejected": "同"}])
    with pytest.raises(UserError, match=r"b.jsonl:1: rejected: is identical to chosen"):
        load_rows(bad)


def test_detect_format():
    assert detect_format({"instruction": "a", "output": "b"}) == "alpaca"
    assert detect_format({"conversations": []}) == "sharegpt"
    assert detect_format({"messages": []}) == "openai"
    assert detect_format({"prompt": "a", "chosen": "b", "rejected": "c"}) == "preference"


MSGS = [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "在呢"}]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"instruction": "a", "output": "b", "histroy": [["早", "好"]]}, "2: histroy: unknown key; did you mean"),
        ({"instruction": "a", "output": "b", "sytem": "你是猫"}, "2: sytem: unknown key; did you mean 'system'"),
        ({"instruction": "a", "ouput": "b"}, "2: ouput: unknown key; did you mean 'output'"),
        ({"messages": MSGS, "instruction": "a", "output": "b"}, "2: output: the row also has 'messages'"),
        ({"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}], "messages": MSGS},
         "two chat formats in one row"),
        # a TRL prompt/completion pair beside messages was dropped silently (`prompt` alone is fine: ultrachat)
        ({"messages": MSGS, "prompt": "别的问题", "completion": "别的回答"},
         "2: messages: the row also has 'completion'"),
        ({"instruction": "a", "output": "坏回复", "kto_tag": False}, "2: kto_tag: unpaired feedback"),
        ({"instruction": "a", "output": "坏回复", "label": "false"}, "2: label: unpaired feedback"),
        ({"messages": MSGS, "label": 1}, "2: label: unpaired feedback"),
        # a pandas bool column with gaps comes out 0.0/1.0: the bad completions trained as SFT
        ({"prompt": "天空是", "completion": "绿色的。", "label": 0.0}, "2: label: unpaired feedback"),
        ({"prompt": "天空是", "completion": "绿色的。", "label": "bad"}, "2: label: unpaired feedback"),
        ({"instruction": "a", "output": "b", "weight": 0}, "2: weight: a row-level weight is not read"),
        ({"messages": MSGS[:1], "prompt": "别的问题", "chosen": "好", "rejected": "坏"},
         "2: prompt: a second prompt beside 'messages'"),
        ({"messages": [MSGS[0], {**MSGS[1], "reasoning_content": "想一想"}]},
         r"2: messages\[1\].reasoning_content: reasoning traces are not trained"),
        ({"messages": [MSGS[0], {**MSGS[1], "weigth": 0}, *MSGS]}, r"2: messages\[1\].weigth: unknown key"),
        ({"messages": [MSGS[0], {**MSGS[1], "loss": False}, *MSGS]}, r"2: messages\[1\].loss: a per-turn training"),
        ({"messages": [MSGS[0], {**MSGS[1], "training": False}, *MSGS]}, r"2: messages\[1\].training: a per-turn"),
        ({"messages": MSGS[:1], "chosen": {**MSGS[1], "tool_call": {}}, "rejected": "坏"},
         r"2: chosen.tool_call: unknown key; did you mean 'tool_calls'"),
    ],
)  # fmt: skip
def test_misspelled_keys_and_two_formats_in_a_row_are_refused(tmp_path, row, message):
    first = {"prompt": "q", "chosen": "好", "rejected": "坏"} if "chosen" in row else \
        {"instruction": "q", "output": "a"} if "instruction" in row else {"messages": MSGS}  # fmt: skip
    path = write_jsonl(tmp_path / "d.jsonl", [first, row])
    with pytest.raises(UserError, match=message):
        load_rows(path)


def test_float_and_word_labels_are_feedback_only_on_unpaired_rows(tmp_path):
    """0.0/1.0 and good/bad judge the completion of a prompt/completion row (refused above); elsewhere, and a score
    like 0.5, they stay unread columns (a classification set's class or score)."""
    rows = [{"prompt": "天空是", "completion": "蓝色的。", "label": 0.5},
            {"instruction": "天空是", "output": "蓝色的。", "label": 1.0},
            {"instruction": "天空是", "output": "蓝色的。", "label": "good"}]  # fmt: skip
    for row in rows:
        assert len(load_rows(write_jsonl(tmp_path / "d.jsonl", [row])).rows) == 1
    # the same rows as CSV cells (text): "0.0" on a prompt/completion row is feedback, "0.5" is not
    (tmp_path / "k.csv").write_text("prompt,completion,label\n天空是,绿色的。,0.0\n", encoding="utf-8")
    with pytest.raises(UserError, match="k.csv:2: label: unpaired feedback"):
        load_rows(str(tmp_path / "k.csv"))
    (tmp_path / "s.csv").write_text("prompt,completion,label\n天空是,蓝色的。,0.5\n", encoding="utf-8")
    assert len(load_rows(str(tmp_path / "s.csv")).rows) == 1


def test_sharegpt_rows_with_role_and_content_get_a_hint(tmp_path):
    """They read 'conversations[0].from: unknown role None', which did not say what was wrong."""
    path = write_jsonl(tmp_path / "d.jsonl", [{"conversations": MSGS}])
    want = r"d.jsonl:1: conversations\[0\].from: missing; the message has 'role'/'content' keys, the other chat layout"
    with pytest.raises(UserError, match=want + ": put the list under 'messages'"):
        load_rows(path)


@pytest.mark.parametrize(
    "row, want",
    [
        ({"conversations": [{"from": "human", "value": "hi"}, {"from": "chatgpt", "value": "yo"}]},
         r"conversations\[1\].from: unknown role 'chatgpt'; expected .*; rename it 'gpt'"),
        ({"conversations": [{"from": "human", "value": "2+2?"}, {"from": "tool", "value": "4"}], "tools": "[]"},
         r"conversations\[1\].from: unknown role 'tool'; expected .*; rename it 'observation' \(a tool result"),
        ({"messages": [{"role": "human", "content": "hi"}, {"role": "gpt", "content": "yo"}]},
         r"messages\[0\].role: unknown role 'human'; expected .*; rename it 'user'"),
    ],
)  # fmt: skip
def test_an_unknown_role_names_the_rename(tmp_path, row, want):
    """ShareGPT V3's 'chatgpt', a 'tool' result and ShareGPT names in OpenAI messages were refused without saying
    which role to write instead."""
    with pytest.raises(UserError, match=want):
        load_rows(write_jsonl(tmp_path / "d.jsonl", [row]))


def test_open_orca_system_prompt_is_renamed_not_dropped(tmp_path):
    """Open-Orca rows (system_prompt, question, response): the rename hint left system_prompt out, and once the row was
    renamed to Alpaca the system prompt was an unread column, trained without."""
    row = {"id": "niv.1", "system_prompt": "你是一个AI助手。", "question": "2+2?", "response": "4"}
    want = r"rename them instruction/output \(Alpaca\), and system_prompt system"
    with pytest.raises(UserError, match=want):
        load_rows(write_jsonl(tmp_path / "o.jsonl", [row]))
    renamed = {"id": "niv.1", "system_prompt": "你是一个AI助手。", "instruction": "2+2?", "output": "4"}
    with pytest.raises(UserError, match=r"r.jsonl:1: system_prompt: unknown key; did you mean 'system'"):
        load_rows(write_jsonl(tmp_path / "r.jsonl", [renamed]))
    fixed = {"system": renamed.pop("system_prompt"), **renamed}
    assert load_rows(write_jsonl(tmp_path / "f.jsonl", [fixed])).rows[0].messages[0] == {
        "role": "system",
        "content": "你是一个AI助手。",
    }


def test_a_bilingual_sets_other_language_columns_are_not_dropped(tmp_path):
    """silk-road/alpaca-data-gpt4-chinese rows (instruction_zh, input_zh, output_zh beside the English ones) trained
    the English columns and dropped the Chinese without a word; a row of _zh columns alone had no rename hint."""
    zh = {"instruction_zh": "给出三个保持健康的建议。", "input_zh": "", "output_zh": "均衡饮食。"}
    both = {**zh, "instruction": "Give three tips.", "input": "", "output": "Eat well."}
    with pytest.raises(UserError, match=r"b.jsonl:1: input_zh: another language's 'input' beside 'input'"):
        load_rows(write_jsonl(tmp_path / "b.jsonl", [both]))
    want = r"input_zh/instruction_zh/output_zh are one language's input/instruction/output: rename the ones to train"
    with pytest.raises(UserError, match=want):
        load_rows(write_jsonl(tmp_path / "z.jsonl", [zh]))
    renamed = {k.removesuffix("_zh"): v for k, v in zh.items()}
    assert load_rows(write_jsonl(tmp_path / "r.jsonl", [renamed])).rows[0].messages[1]["content"] == "均衡饮食。"


def test_the_users_own_extra_columns_stay_unread(tmp_path):
    """Negative control: ids, sources, a formatted `text` (tatsu-lab/alpaca), ultrachat's prompt/prompt_id."""
    rows = [
        {"instruction": "a", "input": "", "output": "b", "text": "### a b", "id": 1, "label": "positive", "tag": "c"},
        {"instruction": "c", "output": "d", "history": [["早", "好"]], "system": "猫", "meta": {"k": 1}},
    ]
    assert len(load_rows(write_jsonl(tmp_path / "a.jsonl", rows)).rows) == 2
    chat = [{"prompt": "你好", "prompt_id": "9f", "messages": MSGS, "inputs": None}]
    with pytest.raises(UserError, match="inputs: unknown key; did you mean 'input'"):
        load_rows(write_jsonl(tmp_path / "b.jsonl", chat))
    pair = {"messages": MSGS[:1], "prompt": "你好", "chosen": "好", "rejected": "坏"}  # the same prompt twice: fine
    assert load_rows(write_jsonl(tmp_path / "p.jsonl", [pair])).rows[0].prompt[-1]["content"] == "你好"
    chat[0].pop("inputs")
    timed = [{"messages": [{**m, "timestamp": 1, "id": "m1"} for m in MSGS]}]  # a message's own keys, unread
    assert load_rows(write_jsonl(tmp_path / "t.jsonl", timed)).kept == 1
    assert load_rows(write_jsonl(tmp_path / "b.jsonl", chat)).rows[0].messages[-1]["content"] == "在呢"


def test_alpaca_input_and_history_that_are_no_text_are_refused_not_dropped(tmp_path):
    bad = [
        ({"input": 0}, "input: expected a string, got int"),
        ({"input": False}, "input: expected a string"),
        ({"history": {}}, "history: expected a list"),
        ({"history": 0}, "history: expected a list"),
    ]
    for row, why in bad:
        with pytest.raises(UserError, match=rf"d.jsonl:1: {why}"):
            load_rows(write_jsonl(tmp_path / "d.jsonl", [{"instruction": "问", "output": "答", **row}]))
    (tmp_path / "d.csv").write_text("instruction,input,output,history\n问,,答,\n", encoding="utf-8")  # empty cells
    assert load_rows(tmp_path / "d.csv").rows[0].messages == [
        {"role": "user", "content": "问"},
        MSGS[1] | {"content": "答"},
    ]


def test_a_row_of_another_format_than_the_file_says_so(tmp_path):
    sharegpt = {"conversations": [{"from": "human", "value": "问"}, {"from": "gpt", "value": "答"}]}
    path = write_jsonl(tmp_path / "d.jsonl", [{"instruction": "问", "output": "答"}, sharegpt])
    why = r"d.jsonl:2: instruction: missing \(as alpaca, the format of the file's first row; this row is sharegpt"
    with pytest.raises(UserError, match=why):
        load_rows(path)
    assert load_rows(write_jsonl(tmp_path / "s.jsonl", [sharegpt])).kept == 1  # negative control: alone, it loads


def test_a_bad_row_of_another_format_names_its_own_problem(tmp_path):
    """An OpenAI row that ends with a user turn, in a file whose first row is ShareGPT, stopped with
    'conversations: expected a non-empty list of messages': a key the row never had, and neither the row's format
    nor what is wrong with it as that format. Now the line says both."""
    sharegpt = {"conversations": [{"from": "human", "value": "问"}, {"from": "gpt", "value": "答"}]}
    openai = {"messages": [{"role": "user", "content": "问"}]}  # no assistant turn: bad as openai too
    path = write_jsonl(tmp_path / "d.jsonl", [sharegpt, openai])
    why = (
        r"d.jsonl:2: conversations: .*\(as sharegpt, the format of the file's first row; this row is openai, "
        r"and as openai messages: must end with an assistant turn"
    )
    with pytest.raises(UserError, match=why):
        load_rows(path)
    alpaca = {"instruction": "1+1", "output": 2}
    with pytest.raises(UserError, match=r"this row is alpaca, and as alpaca output: expected a string, got int"):
        load_rows(write_jsonl(tmp_path / "a.jsonl", [sharegpt, alpaca]))
    with pytest.raises(UserError, match=r"s.jsonl:1: messages: must end with an assistant turn, ends with 'user'"):
        load_rows(write_jsonl(tmp_path / "s.jsonl", [openai]))  # alone: its own error, as before


def test_dolly_rows_load_as_alpaca_context_as_input_response_as_output(tmp_path):
    """databricks-dolly-15k (instruction, context, response, category) stopped at 'output: missing', and an Alpaca
    row with `context` beside `output` trained without the context, unsaid. Read as LLaMA-Factory's mapping reads
    Dolly: context is the input, response the output; category stays an unread column."""
    dolly = [
        {"instruction": "维珍澳洲何时开航？", "context": "维珍澳洲于2000年8月31日开航。", "response": "2000年8月31日。",
         "category": "closed_qa"},
        {"instruction": "哪个是鱼？", "context": "", "response": "鲨鱼", "category": "classification"},
    ]  # fmt: skip
    rows = load_conversations(write_jsonl(tmp_path / "d.jsonl", dolly)).rows
    alpaca = [
        {"instruction": "维珍澳洲何时开航？", "input": "维珍澳洲于2000年8月31日开航。", "output": "2000年8月31日。"},
        {"instruction": "哪个是鱼？", "output": "鲨鱼"},
    ]
    assert [r.messages for r in rows] == [r.messages for r in load_rows(write_jsonl(tmp_path / "a.jsonl", alpaca)).rows]
    assert rows[0].messages[0]["content"] == "维珍澳洲何时开航？\n维珍澳洲于2000年8月31日开航。"
    mixed = [{"instruction": "何时？", "context": "2000年开航。", "output": "2000年。"}]  # context beside output
    assert load_rows(write_jsonl(tmp_path / "m.jsonl", mixed)).rows[0].messages[0]["content"] == "何时？\n2000年开航。"
    for row, key in [
        ({"instruction": "q", "input": "a", "context": "b", "output": "o"}, "context: the row also has 'input'"),
        ({"instruction": "q", "output": "a", "response": "b"}, "response: the row also has 'output'"),
        ({"instruction": "q", "contxt": "c", "response": "r"}, "contxt: unknown key; did you mean 'context'"),
        ({"instruction": "q", "context": 0, "response": "r"}, "context: expected a string"),
        ({"instruction": "q", "context": "c"}, "output: missing"),
    ]:
        with pytest.raises(UserError, match=f"b.jsonl:1: {key}"):
            load_rows(write_jsonl(tmp_path / "b.jsonl", [row]))
    # a pair's Alpaca prompt (LLaMA-Factory ranking rows) reads the context too
    pair = {"instruction": "何时？", "context": "2000年开航。", "chosen": "2000年。", "rejected": "不知道"}
    assert load_rows(write_jsonl(tmp_path / "p.jsonl", [pair])).rows[0].prompt[-1]["content"] == "何时？\n2000年开航。"


def test_role_developer_is_read_as_system_as_serve_reads_it(tmp_path):
    """OpenAI's newer name for the system role was refused ('unknown role developer') though `weitiao serve` takes it
    (as system); training data reads it the same way, with tools too."""
    from weitiao.data.tools import parse_openai_tools

    dev = [{"role": "developer", "content": "简洁"}, *MSGS]
    sys = [{"role": "system", "content": "简洁"}, *MSGS]
    got = load_rows(write_jsonl(tmp_path / "d.jsonl", [{"messages": dev}])).rows[0].messages
    assert got == load_rows(write_jsonl(tmp_path / "s.jsonl", [{"messages": sys}])).rows[0].messages
    assert got[0] == {"role": "system", "content": "简洁"}
    pc = {"prompt": dev[:2], "completion": dev[2:]}
    assert load_rows(write_jsonl(tmp_path / "p.jsonl", [pc])).rows[0].messages[0]["role"] == "system"
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    tool_row = {"messages": [dev[0], dev[1], {"role": "assistant", "tool_calls": [call]},
                             {"role": "tool", "tool_call_id": "c1", "content": "晴"}, dev[2]]}  # fmt: skip
    assert parse_openai_tools(tool_row).messages[0] == {"role": "system", "content": "简洁"}
    mid = r"messages\[1\].role: expected 'assistant', got 'developer' \(a system or developer turn may only come "
    mid += r"first\)"
    with pytest.raises(UserError, match=mid):
        load_rows(write_jsonl(tmp_path / "late.jsonl", [{"messages": [MSGS[0], dev[0], MSGS[1]]}]))


def test_a_speaker_name_is_refused_not_dropped(tmp_path):
    """OpenAI messages may carry `name` on user/assistant/system turns; it reached no template (messages are rendered
    as role and content) and was dropped unsaid. Refused naming the message; a tool message's `name` (the
    function's) is read as before."""
    from weitiao.data.tools import parse_openai_tools

    named = [{"messages": [{**MSGS[0], "name": "小王"}, MSGS[1]]}]
    how = r"messages\[0\].name: a speaker name is not passed to the chat template .*put it into the content"
    with pytest.raises(UserError, match=rf"n.jsonl:1: {how}"):
        load_rows(write_jsonl(tmp_path / "n.jsonl", named))
    for row, where in [
        ({"messages": [MSGS[0], {**MSGS[1], "name": "bot"}]}, r"messages\[1\].name"),
        ({"conversations": [{"from": "human", "value": "在吗", "name": "小王"}, {"from": "gpt", "value": "在"}]},
         r"conversations\[0\].name"),
        ({"prompt": [{**MSGS[0], "name": "小王"}], "completion": [MSGS[1]]}, r"prompt\[0\].name"),
        ({"prompt": "在吗", "chosen": [{**MSGS[1], "name": "bot"}], "rejected": "不在"}, r"chosen\[0\].name"),
    ]:  # fmt: skip
        with pytest.raises(UserError, match=rf"x.jsonl:1: {where}: a speaker name"):
            load_rows(write_jsonl(tmp_path / "x.jsonl", [row]))
    assert load_rows(write_jsonl(tmp_path / "e.jsonl", [{"messages": [{**MSGS[0], "name": None}, MSGS[1]]}])).kept == 1
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    tool = {"role": "tool", "tool_call_id": "c1", "name": "f", "content": "晴"}
    msgs = [MSGS[0], {"role": "assistant", "tool_calls": [call]}, tool, MSGS[1]]
    assert parse_openai_tools({"messages": msgs}).messages[2] == {"role": "tool", "content": "晴", "tool_call_id": "c1"}
    with pytest.raises(Exception, match=r"messages\[0\].name"):
        parse_openai_tools({"messages": [{**MSGS[0], "name": "小王"}, *msgs[1:]]})


def test_firefly_rows_load_as_the_same_conversation_as_sharegpt(tmp_path):
    """Firefly's multi-turn rows (YeungNLP: `conversation` of {human, assistant} turns, conversation_id and category
    beside) stopped at 'unknown format'. They read as the ShareGPT row of the same turns; a turn's typo, ShareGPT
    messages under Firefly's key, tools and firefly-train-1.1M's input/target rows are refused naming the key."""
    turns = [("在吗", "在"), ("你好", "嗨😊")]
    firefly = {"conversation_id": 7, "category": "Brainstorming", "system": "简洁",
               "conversation": [{"human": q, "assistant": a} for q, a in turns]}  # fmt: skip
    sharegpt = {"system": "简洁", "conversations": [
        {"from": who, "value": text} for q, a in turns for who, text in (("human", q), ("gpt", a))]}  # fmt: skip
    got = load_rows(write_jsonl(tmp_path / "f.jsonl", [firefly]))
    assert got.format == "firefly" and detect_format(firefly) == "firefly"
    want = load_rows(write_jsonl(tmp_path / "s.jsonl", [sharegpt])).rows
    assert [r.messages for r in got.rows] == [r.messages for r in want]
    from weitiao.data.prompts import parse_prompt  # a prompt file (eval, PPO): the last reply is the reference

    prompt = parse_prompt(firefly, "f.jsonl:1")
    assert prompt.messages == want[0].messages[:-1] and prompt.reference == "嗨😊"
    for row, msg in [
        ({"conversation": [{"human": "a", "assitant": "b"}]}, r"conversation\[0\].assitant: unknown key; did you mean"),
        (
            {"conversation": [{"from": "human", "value": "a"}]},
            r"conversation\[0\]: a ShareGPT message .* 'conversations'",
        ),
        ({"conversation": [{"human": "a", "assistant": ""}]}, r"conversation\[0\].assistant: is empty"),
        ({"conversation": []}, "conversation: expected a non-empty list"),
        ({"conversation": [{"human": "a", "assistant": "b"}], "tools": [{"type": "function"}]}, "tools: a Firefly row"),
        ({"conversation": [{"human": "a", "assistant": "b"}], "messages": MSGS}, "messages: the row also has 'conv"),
        (
            {"kind": "NLI", "input": "a", "target": "b"},
            r"row: unknown format .*input/target \(firefly-train-1.1M\) is a",
        ),
        ({"question": "a", "answer": "b"}, "row: unknown format .*question/answer is a question .* instruction/output"),
        ({"prompt": "a", "response": "b"}, "row: unknown format .*prompt/response is a question"),
    ]:
        with pytest.raises(UserError, match=f"b.jsonl:1: {msg}"):
            load_rows(write_jsonl(tmp_path / "b.jsonl", [row]))


@pytest.mark.parametrize(
    "row, said",
    [
        ({"system": "简洁", "conversations": [{"from": "human", "value": "问"}, {"from": "human", "value": "又问"}]},
         "conversations[1].from: expected 'gpt', got 'human'"),
        ({"system": "简洁", "messages": [{"role": "user", "content": "问"}, {"role": "user", "content": "又问"}]},
         "messages[1].role: expected 'assistant', got 'user'"),
        ({"prompt": [{"role": "user", "content": "问"}, {"role": "user", "content": "又问"}],
          "completion": [{"role": "assistant", "content": "答"}]}, "prompt[1].role: expected 'assistant', got 'user'"),
        ({"prompt": [{"role": "developer", "content": "简洁"}, {"role": "user", "content": "问"}],
          "completion": [{"role": "user", "content": "答"}]}, "completion[0].role: expected 'assistant', got 'user'"),
    ],
)  # fmt: skip
def test_turn_order_errors_name_the_message_as_the_row_writes_it(tmp_path, row, said):
    """A row with a `system` key was reported one message off ('conversations[2].role' for a row of two messages:
    the key's system message counted), a ShareGPT row by OpenAI's key and roles ('.role: expected 'assistant', got
    'user'' for from: human), and a TRL prompt/completion row by an index into prompt + completion joined
    ('completion[1]' for prompt[1]). Now the message's own list, index, key and role."""
    path = write_jsonl(tmp_path / "bad.jsonl", [row])
    with pytest.raises(UserError) as e:
        load_conversations(path)
    assert str(e.value).startswith(f"{path}:1: {said}"), str(e.value)


def test_alpaca_history_or_input_beside_a_message_list_is_refused_not_dropped(tmp_path):
    """`history` (earlier [q, a] turns) or `input` beside `messages`/`conversations`/`conversation` was dropped unsaid:
    the row trained without that context. Now refused naming the key; empty ones (a converter's leftovers) and the
    same keys on an Alpaca row (control) are read as before."""
    chat = {"messages": [{"role": "user", "content": "今天呢？"}, {"role": "assistant", "content": "晴"}]}
    sg = {"conversations": [{"from": "human", "value": "今天呢？"}, {"from": "gpt", "value": "晴"}]}
    ff = {"conversation": [{"human": "今天呢？", "assistant": "晴"}]}
    for i, row in enumerate((chat, sg, ff)):
        for key, value in (("history", [["昨天呢？", "雨"]]), ("input", "北京")):
            path = write_jsonl(tmp_path / f"d{i}{key}.jsonl", [{**row, key: value}])
            with pytest.raises(UserError, match=rf"d{i}{key}\.jsonl:1: {key}: an Alpaca key beside "):
                load_conversations(path)
        assert load_conversations(write_jsonl(tmp_path / "e.jsonl", [{**row, "history": [], "input": ""}])).rows
    alpaca = {"instruction": "今天呢？", "input": "北京", "output": "晴", "history": [["昨天呢？", "雨"]]}
    assert len(load_conversations(write_jsonl(tmp_path / "a.jsonl", [alpaca])).rows[0].messages) == 4


def test_an_empty_system_message_says_what_to_do(tmp_path):
    """An empty first system message (exports write `{"role": "system", "content": ""}`) was refused as
    'messages[0].content: is empty', no word of why or of the way out (an empty `system` key reads as no system
    prompt). Now the line says: drop the message, or give it text."""
    oai = {"messages": [{"role": "system", "content": ""}, *ROW_MSGS]}
    sg = {"conversations": [{"from": "system", "value": " "}, *ROW_SG]}
    for key, row in (("messages[0].content", oai), ("conversations[0].value", sg)):
        path = write_jsonl(tmp_path / "d.jsonl", [row])
        with pytest.raises(UserError, match=rf"d\.jsonl:1: {re.escape(key)}: an empty system message; drop it"):
            load_conversations(path)


ROW_MSGS = [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "嗨"}]
ROW_SG = [{"from": "human", "value": "你好"}, {"from": "gpt", "value": "嗨"}]


def test_an_empty_instruction_beside_an_input_is_the_input_alone_as_llamafactory_reads_it(tmp_path):
    """LLaMA-Factory joins the non-empty of instruction and input with a newline, so a row with "" instruction and
    the question in `input` trains on the input as the prompt; weitiao refused it ('instruction: is empty')."""
    rows = [{"instruction": "", "input": "把这句话翻译成英文：你好", "output": "Hello"},
            {"instruction": "翻译", "input": "你好", "output": "Hello"}]  # fmt: skip
    got = load_rows(write_jsonl(tmp_path / "d.jsonl", rows)).rows
    assert [c.messages[0]["content"] for c in got] == ["把这句话翻译成英文：你好", "翻译\n你好"]
    for bad, why in (({"instruction": "", "input": "", "output": "答"}, "instruction: is empty"),
                     ({"instruction": None, "input": "问", "output": "答"}, "instruction: missing")):  # fmt: skip
        with pytest.raises(UserError, match=rf"e.jsonl:1: {why}"):  # controls: no prompt at all is still refused
            load_rows(write_jsonl(tmp_path / "e.jsonl", [bad]))
