"""LLaMA-Factory `dataset_info.json` folders: column and tag mapping, ranking, kto_tag, images, remote
entries, num_samples; `data.dataset_dir` in configs and `data check NAME --dataset-dir` (issue #17)."""

import json
import re
import subprocess
import sys

import pytest
from conftest import write_jsonl

from weitiao.data.check import check_file
from weitiao.data.formats import Conversation, PreferencePair, load_rows
from weitiao.errors import UserError
from weitiao.recipes import dpo, sft
from weitiao.train.spec import PrefDataSpec

ROLE_TAGS = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}
INFO = {
    # Entries as in LLaMA-Factory's data/dataset_info.json
    "alpaca_zh_demo": {"file_name": "alpaca_zh_demo.json"},
    "dpo_zh_demo": {"file_name": "dpo_zh_demo.json", "ranking": True, "formatting": "sharegpt",
                    "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"}},
    "kto_en_demo": {"file_name": "kto_en_demo.json", "formatting": "sharegpt",
                    "columns": {"messages": "messages", "kto_tag": "label"}, "tags": ROLE_TAGS},
    "mllm_demo": {"file_name": "mllm_demo.json", "formatting": "sharegpt",
                  "columns": {"messages": "messages", "images": "images"}, "tags": ROLE_TAGS},
    "alpaca_en": {"hf_hub_url": "llamafactory/alpaca_en"},
    # Custom mappings
    "custom": {"file_name": "custom.jsonl", "columns": {"prompt": "q", "query": "ctx", "response": "a",
                                                        "history": "hist", "system": "sys"}},
    "pairs": {"file_name": "pairs.jsonl", "ranking": True, "columns": {"prompt": "q", "chosen": "good",
                                                                      "rejected": "bad", "system": "sys"}},
    "shards": {"file_name": "shards", "num_samples": 5},
}  # fmt: skip


@pytest.fixture
def lf_dir(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    (d / "dataset_info.json").write_text(json.dumps(INFO), encoding="utf-8")

    def dump(name, rows):
        (d / name).write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")

    dump("alpaca_zh_demo.json", [{"instruction": "识别并解释给定列表中的两个科学理论", "input": "细胞理论和日心说",
                                  "output": "细胞理论是……", "system": "unused unless mapped"}] * 3)  # fmt: skip
    dump("dpo_zh_demo.json", [{"conversations": [{"from": "human", "value": "天空什么颜色"}],
                               "chosen": {"from": "gpt", "value": "蓝色"},
                               "rejected": {"from": "gpt", "value": "绿色"}}] * 2)  # fmt: skip
    dump("kto_en_demo.json", [{"messages": [{"role": "user", "content": "Hi"},
                                            {"role": "assistant", "content": "Go away"}], "label": False}])  # fmt: skip
    dump("mllm_demo.json", [{"messages": [{"role": "user", "content": "<image>Who are they?"},
                                          {"role": "assistant", "content": "Footballers."}],
                             "images": ["mllm_demo_data/1.jpg"]}])  # fmt: skip
    write_jsonl(
        d / "custom.jsonl", [{"q": "翻译", "ctx": "hello", "a": "你好", "hist": [["在吗", "在"]], "sys": "简洁"}]
    )
    write_jsonl(d / "pairs.jsonl", [{"q": "1+1", "good": "2", "bad": "3", "sys": "算术"}] * 4)
    (d / "shards").mkdir()
    write_jsonl(d / "shards" / "a.jsonl", [{"instruction": "甲", "output": "一"}])
    write_jsonl(d / "shards" / "b.jsonl", [{"instruction": "乙", "output": "二"}])
    return d


def test_mapping_follows_llamafactory(lf_dir):
    got = load_rows(["alpaca_zh_demo"], dataset_dir=lf_dir)
    assert (got.format, got.read, got.kept) == ("alpaca", 3, 3)
    assert got.rows[0].messages == [
        {"role": "user", "content": "识别并解释给定列表中的两个科学理论\n细胞理论和日心说"},
        {"role": "assistant", "content": "细胞理论是……"},
    ]  # unmapped `system` column unused, as in LLaMA-Factory, and said: it used to be dropped unsaid
    assert got.notes == [
        "alpaca_zh_demo: 3 row(s) hold a 'system' column that the entry's columns do not map: unread, as in "
        'LLaMA-Factory (add "system": "system" to its columns to train with it)'
    ]
    assert load_rows(["custom"], dataset_dir=lf_dir).notes == []  # negative control: mapped under other names
    custom = load_rows(["custom"], dataset_dir=lf_dir).rows[0]
    assert custom.messages == [
        {"role": "system", "content": "简洁"},
        {"role": "user", "content": "在吗"},
        {"role": "assistant", "content": "在"},
        {"role": "user", "content": "翻译\nhello"},
        {"role": "assistant", "content": "你好"},
    ]
    pairs = load_rows(["dpo_zh_demo", "pairs"], dataset_dir=lf_dir)
    assert pairs.format == "preference" and pairs.kept == 6 and all(isinstance(p, PreferencePair) for p in pairs.rows)
    assert (pairs.rows[0].prompt, pairs.rows[0].chosen) == ([{"role": "user", "content": "天空什么颜色"}], "蓝色")
    assert pairs.rows[-1].prompt == [{"role": "system", "content": "算术"}, {"role": "user", "content": "1+1"}]


def test_unmapped_tools_column_is_noted(lf_dir):
    """A glaive-style sharegpt file whose entry forgets columns.tools trains the calls without the tool list (as
    LLaMA-Factory does); that is said in a note, and mapping the column reads it."""
    tools = json.dumps([{"name": "get_weather", "parameters": {"type": "object"}}])
    call = json.dumps({"name": "get_weather", "arguments": {"city": "北京"}})
    turns = [("human", "天气?"), ("function_call", call), ("observation", "晴"), ("gpt", "晴天")]
    row = {"conversations": [{"from": f, "value": v} for f, v in turns], "tools": tools}
    write_jsonl(lf_dir / "glaive.jsonl", [row])
    info = json.loads((lf_dir / "dataset_info.json").read_text())
    info["glaive"] = {"file_name": "glaive.jsonl", "formatting": "sharegpt"}
    info["glaive_mapped"] = {**info["glaive"], "columns": {"messages": "conversations", "tools": "tools"}}
    (lf_dir / "dataset_info.json").write_text(json.dumps(info))
    got = load_rows(["glaive"], dataset_dir=lf_dir)
    assert got.rows[0].tools == [] and got.notes == [
        "glaive: 1 row(s) hold a 'tools' column that the entry's columns do not map: unread, as in LLaMA-Factory "
        '(add "tools": "tools" to its columns to train with it)'
    ]
    got = load_rows(["glaive_mapped"], dataset_dir=lf_dir)
    assert got.rows[0].tools[0]["function"]["name"] == "get_weather" and got.notes == []


def test_images_noted_kto_and_remote_refused(lf_dir):
    mllm = load_rows(["mllm_demo"], dataset_dir=lf_dir)
    assert isinstance(mllm.rows[0], Conversation) and mllm.rows[0].messages[0]["role"] == "user"
    assert mllm.notes == ["mllm_demo: columns.images (images) ignored: weitiao trains on text only"]
    with pytest.raises(UserError, match=r"kto_en_demo.json:1: label: unpaired feedback \(KTO"):
        load_rows(["kto_en_demo"], dataset_dir=lf_dir, skip_invalid=True)
    with pytest.raises(
        UserError, match=r"dataset_info.json: alpaca_en.hf_hub_url: 'llamafactory/alpaca_en' is not local"
    ):
        load_rows(["alpaca_en"], dataset_dir=lf_dir)
    with pytest.raises(UserError, match=r"dataset_info.json: no dataset 'nope' \(known: alpaca_en, alpaca_zh_demo"):
        load_rows(["nope"], dataset_dir=lf_dir)


def test_num_samples_folder_and_bad_row_names_the_column(lf_dir):
    got = load_rows(["shards"], dataset_dir=lf_dir)
    firsts = [c.messages[0]["content"] for c in got.rows]
    assert len(firsts) == 5 and sorted(firsts[:2]) == ["乙", "甲"]  # both rows once, then 3 draws with replacement
    assert got.read == 2 and got.notes == [
        "shards: num_samples 5 of 2 rows (a seeded random sample, as LLaMA-Factory, drawn with replacement past them)"
    ]
    assert [c.messages[0]["content"] for c in load_rows(["shards"], dataset_dir=lf_dir).rows] == firsts  # seeded
    write_jsonl(lf_dir / "custom.jsonl", [{"q": "翻译", "a": ""}])
    with pytest.raises(UserError, match=r"custom.jsonl:1: a: is empty"):
        load_rows(["custom"], dataset_dir=lf_dir)
    (lf_dir / "kto_en_demo.json").write_text(json.dumps([{"messages": [{"role": "bot", "content": "x"}]}]))
    with pytest.raises(UserError, match=r"kto_en_demo.json:1: messages\[0\].role: 'bot' is none of the entry's roles"):
        load_rows(["kto_en_demo"], dataset_dir=lf_dir)


def test_num_samples_samples_at_random_like_llamafactory(tmp_path):
    """A sorted file: the first N rows would all be one topic (the old rule); LLaMA-Factory's random sample is not."""
    rows = [{"instruction": f"{'数学' if i < 50 else '语文'}题{i}", "output": "好"} for i in range(100)]
    write_jsonl(tmp_path / "sorted.jsonl", rows)
    info = {
        "sorted": {"file_name": "sorted.jsonl", "num_samples": 20},
        "more": {"file_name": "sorted.jsonl", "num_samples": 130},
    }
    (tmp_path / "dataset_info.json").write_text(json.dumps(info), encoding="utf-8")
    got = [c.messages[0]["content"] for c in load_rows(["sorted"], dataset_dir=tmp_path).rows]
    assert len(got) == len(set(got)) == 20 and 4 <= sum(t.startswith("语文") for t in got) <= 16
    more = [c.messages[0]["content"] for c in load_rows(["more"], dataset_dir=tmp_path).rows]
    assert len(more) == 130 and len(set(more[:100])) == 100  # every row once, then 30 drawn again


def test_configs_take_dataset_dir_and_names(lf_dir, tokenizer, monkeypatch):
    monkeypatch.chdir(lf_dir.parent)  # dataset_dir is CWD-relative, like data.train paths
    out = str(lf_dir.parent / "run")
    cfg = sft.SFTConfig(data=sft.DataSpec(train=["alpaca_zh_demo", "custom"], dataset_dir="data", max_len=256),
                        train=sft.TrainSpec(out=out))  # fmt: skip
    assert sft.prepare_data(cfg, tokenizer).read == 4
    cfg = dpo.DPOConfig(data=PrefDataSpec(train=["dpo_zh_demo"], dataset_dir="data"),
                        train=dpo.DPOTrainSpec(out=out))  # fmt: skip
    assert dpo.prepare_pairs(cfg, tokenizer).stats.kept == 2


def test_data_check_counts(lf_dir, tokenizer, tiny_model_dir):
    rep = check_file(["alpaca_zh_demo", "custom", "dpo_zh_demo", "pairs"], tokenizer, dataset_dir=str(lf_dir))
    assert (rep.read, rep.kept, rep.pairs, rep.duplicate_rows) == (10, 10, 6, 2 + 1 + 3)
    # The CLI: names with --dataset-dir, one JSON report.
    cmd = [sys.executable, "-m", "weitiao", "data", "check", "pairs", "mllm_demo", "--dataset-dir", str(lf_dir)]
    r = subprocess.run([*cmd, "--model", str(tiny_model_dir), "--json"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    rep = json.loads(r.stdout)
    assert (rep["read"], rep["kept"], rep["pairs"], rep["duplicate_rows"]) == (5, 5, 4, 3)
    assert rep["notes"] == ["mllm_demo: columns.images (images) ignored: weitiao trains on text only"]


def test_entry_without_required_column_is_one_line(lf_dir):
    info = json.loads((lf_dir / "dataset_info.json").read_text())
    info["bad"] = {"file_name": "pairs.jsonl", "ranking": True, "columns": {"prompt": "q", "chosen": "good"}}
    (lf_dir / "dataset_info.json").write_text(json.dumps(info))
    with pytest.raises(UserError, match=r"dataset_info.json: bad.columns.rejected: not set"):
        load_rows(["bad"], dataset_dir=lf_dir)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"colums": {"prompt": "q", "response": "a", "system": "sys"}}, r"custom.colums: unknown key; did you mean"),
        ({"ranknig": True}, r"custom.ranknig: unknown key; did you mean 'ranking'"),
        ({"columns": {"promt": "q", "response": "a"}}, r"custom.columns.promt: unknown key; did you mean 'prompt'"),
        ({"columns": {"messages": "q", "response": "a"}}, r"custom.columns.messages: a column of sharegpt formatting"),
        ({"ranking": "false"}, r"custom.ranking: expected true or false, got 'false'"),
        ({"subset": "zh"}, r"custom.subset: 'zh' picks part of a hub dataset"),
        ({"tags": {"role_tag": "role"}}, r"custom.tags: only sharegpt and openai formatting read tags"),
        (  # LLaMA-Factory sets a tag left out to None, not to its default: it was read as "value"
            {"formatting": "sharegpt", "columns": {"messages": "m"}, "tags": {"role_tag": "from", "user_tag": "human"}},
            r'custom.tags.content_tag: not set; LLaMA-Factory reads a tag left out of "tags" as unset, .* give '
            r'"content_tag": "value" or',
        ),
    ],
)
def test_entry_keys_llamafactory_would_not_read_are_refused(lf_dir, entry, message):
    """A typo in dataset_info.json (colums, ranknig, promt) was ignored: the entry fell back to the default mapping
    or to SFT, and trained something other than what it described."""
    info = json.loads((lf_dir / "dataset_info.json").read_text())
    info["custom"] = {k: v for k, v in info["custom"].items() if k != "columns" or "colums" not in entry} | entry
    (lf_dir / "dataset_info.json").write_text(json.dumps(info))
    with pytest.raises(UserError, match=rf"dataset_info.json: {message}"):
        load_rows(["custom"], dataset_dir=lf_dir)


def test_llamafactory_own_entry_keys_still_load(lf_dir):
    """Negative control: keys LLaMA-Factory's own dataset_info.json entries carry."""
    info = json.loads((lf_dir / "dataset_info.json").read_text())
    info["custom"] |= {"file_sha1": "e655af3db557a4197f7b0cf92e1986b08fae6311", "split": "train", "ranking": False,
                       "subset": None, "formatting": "alpaca"}  # fmt: skip
    (lf_dir / "dataset_info.json").write_text(json.dumps(info))
    assert load_rows(["custom", "dpo_zh_demo", "mllm_demo"], dataset_dir=lf_dir).kept == 4


def test_a_format_beside_dataset_dir_must_agree_with_the_entry(lf_dir):
    """data.format was ignored for dataset_info.json names: text or preference_raw trained as the entry said."""
    for names, fmt in [(["alpaca_zh_demo"], "text"), (["pairs"], "preference_raw"), (["pairs"], "alpaca")]:
        with pytest.raises(UserError, match=rf"format '{fmt}': dataset '{names[0]}' is (alpaca|preference) by its"):
            load_rows(names, fmt, dataset_dir=lf_dir)
    assert load_rows(["pairs"], "preference", dataset_dir=lf_dir).kept == 4  # negative control: the entry's own


def test_an_unmapped_input_column_is_said_and_a_mapped_column_no_row_holds_is_refused(tmp_path):
    """An alpaca entry mapping prompt and response alone trained '翻译' → 'Hello' without the row's input '你好', unsaid
    (a note was given for system/history/tools only), and `"query": "inp"` where the rows hold `input` trained without
    it too (LLaMA-Factory stops with a KeyError). The first is a note, the second refused naming the key. Control: the
    entry that maps query reads the input, with no note."""
    write_jsonl(tmp_path / "d.jsonl", [{"instruction": "翻译", "input": "你好", "output": "Hello"}])
    cols = {"prompt": "instruction", "response": "output"}
    info = {"bare": {"file_name": "d.jsonl", "columns": cols},
            "typo": {"file_name": "d.jsonl", "columns": {**cols, "query": "inp"}},
            "full": {"file_name": "d.jsonl", "columns": {**cols, "query": "input"}}}  # fmt: skip
    (tmp_path / "dataset_info.json").write_text(json.dumps(info), encoding="utf-8")
    got = load_rows(["bare"], dataset_dir=tmp_path)
    assert got.rows[0].messages[0]["content"] == "翻译" and got.notes == [
        "bare: 1 row(s) hold a 'input' column that the entry's columns do not map: unread, as in LLaMA-Factory "
        '(add "query": "input" to its columns to train with it)'
    ]
    with pytest.raises(UserError, match=r"dataset_info\.json: typo\.columns\.query: 'inp' is a column no row holds"):
        load_rows(["typo"], dataset_dir=tmp_path)
    got = load_rows(["full"], dataset_dir=tmp_path)
    assert got.rows[0].messages[0]["content"] == "翻译\n你好" and got.notes == []


def test_openai_tool_calls_through_sharegpt_tags_are_refused_as_unread_not_empty(tmp_path):
    """OpenAI messages with `tool_calls` (content null) mapped by sharegpt tags failed with 'messages[2].content:
    missing' (with content "": 'is empty'): LLaMA-Factory's sharegpt converter reads role and content only, so the
    call is lost there. Now one line names the tool_calls and the fix; the file given by its path (the negative
    control) trains the call, and so does a `formatting: openai` entry."""
    calls = [{"id": "c1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "北京"}'}}]
    msgs = [{"role": "user", "content": "北京天气？"}, {"role": "assistant", "content": None, "tool_calls": calls},
            {"role": "tool", "tool_call_id": "c1", "content": "晴"},
            {"role": "assistant", "content": "北京晴"}]  # fmt: skip
    write_jsonl(tmp_path / "oa.jsonl", [{"messages": msgs}, {"messages": [msgs[0], {**msgs[1], "content": ""}]}])
    tags = {**ROLE_TAGS, "observation_tag": "tool"}
    info = {"oa": {"file_name": "oa.jsonl", "formatting": "sharegpt", "columns": {"messages": "messages"},
                   "tags": tags}, "oai": {"file_name": "oa.jsonl", "formatting": "openai"}}  # fmt: skip
    (tmp_path / "dataset_info.json").write_text(json.dumps(info))
    r = load_rows(["oa"], dataset_dir=tmp_path, skip_invalid=True, rejects_path=tmp_path / "rej.jsonl")
    errors = [json.loads(line)["error"] for line in (tmp_path / "rej.jsonl").read_text().splitlines()]
    assert r.rejected == 2 and all(e.startswith("messages[1].tool_calls: OpenAI tool calls, which LLaMA-Factory's")
                                   for e in errors), errors  # fmt: skip
    assert '"formatting": "openai"' in errors[0] and "content" not in errors[0].split(":")[0]
    rows = load_rows(str(tmp_path / "oa.jsonl"), skip_invalid=True, rejects_path=tmp_path / "r2.jsonl").rows
    assert rows[0].messages[1]["tool_calls"][0]["function"] == {"name": "weather", "arguments": {"city": "北京"}}
    info["oai"] |= {
        "columns": {"messages": "messages"},
        "tags": tags | {"function_tag": "function_call"},
    }  # read as calls
    (tmp_path / "dataset_info.json").write_text(json.dumps(info))
    rows = load_rows(["oai"], dataset_dir=tmp_path).rows
    assert rows[0].messages[2]["tool_calls"][0]["function"] == {"name": "weather", "arguments": {"city": "北京"}}


def test_a_role_the_entrys_tags_do_not_name_is_refused_as_llamafactory_skips_the_row(tmp_path):
    """A role the entry's tags leave unnamed was read by weitiao's own role names, though LLaMA-Factory's converter
    skips the row: tags without system_tag (as LLaMA-Factory's own OpenAI-style entries) trained a first 'system'
    message as the system prompt, tags giving only role_tag/content_tag (every other tag unset) trained 'user' and
    'assistant', and the default tags (human/gpt) trained 'user'/'assistant' rows. Now refused naming the tag to set;
    the negative control, the same rows with the tag set, load."""
    sys_row = {"messages": [{"role": "system", "content": "你是客服"}, {"role": "user", "content": "你好"},
                            {"role": "assistant", "content": "您好"}]}  # fmt: skip
    write_jsonl(tmp_path / "m.jsonl", [sys_row])
    write_jsonl(tmp_path / "c.jsonl", [{"conversations": [{"from": "user", "value": "你好"},
                                                         {"from": "gpt", "value": "您好"}]}])  # fmt: skip
    entry = {"file_name": "m.jsonl", "formatting": "sharegpt", "columns": {"messages": "messages"}}
    info = {"no_system": entry | {"tags": ROLE_TAGS}, "roles_only": entry | {"tags": {"role_tag": "role",
            "content_tag": "content"}}, "with_system": entry | {"tags": ROLE_TAGS | {"system_tag": "system"}},
            "default": {"file_name": "c.jsonl", "formatting": "sharegpt"}}  # fmt: skip
    (tmp_path / "dataset_info.json").write_text(json.dumps(info))
    for name, want in [
        ("no_system", r"m.jsonl:1: messages\[0\].role: 'system' is none of the entry's roles \('user', 'assistant'\): "
         r'LLaMA-Factory skips the row; set "system_tag": "system" in its tags'),
        ("roles_only", r"m.jsonl:1: messages\[0\].role: 'system' is none of the entry's roles \(its tags name none\)"),
        ("default", r'c.jsonl:1: conversations\[0\].from: \'user\' is none of .* set "user_tag": "user" in its tags'),
    ]:  # fmt: skip
        with pytest.raises(UserError, match=want):
            load_rows([name], dataset_dir=tmp_path)
    assert load_rows(["with_system"], dataset_dir=tmp_path).rows[0].messages == sys_row["messages"]


OAI_TAGS = {**ROLE_TAGS, "system_tag": "system", "observation_tag": "tool", "function_tag": "function_call"}


def test_formatting_openai_is_read_as_llamafactorys_openai_converter(tmp_path):
    """`formatting: openai` (LLaMA-Factory's OpenAIDatasetConverter) was refused as not read. Now read as that
    converter does: a first system message is the system prompt, assistant tool_calls become one call turn,
    consecutive tool results join into one observation, and rows without tools get 'detailed thinking off' in their
    system prompt (a note says how many); a text beside tool_calls, results after the last turn and a system column
    beside a system message, which it drops, are refused naming the message (or column) in the row."""
    call = {"type": "function", "function": {"name": "weather", "arguments": '{"city": "北京"}'}}
    user, reply = {"role": "user", "content": "北京天气？"}, {"role": "assistant", "content": "北京晴"}
    calling = {"role": "assistant", "content": None, "tool_calls": [call, call]}
    results = [{"role": "tool", "content": "晴"}, {"role": "tool", "content": "多云"}]
    spec = [{"type": "function", "function": {"name": "weather", "parameters": {}}}]
    write_jsonl(tmp_path / "oa.jsonl", [
        {"messages": [{"role": "system", "content": "你是客服"}, user, calling, *results, reply], "tools": spec},
        {"messages": [user, reply]},
        {"messages": [user, {**calling, "content": "我查一下"}, *results, reply]},
        {"messages": [{"role": "system", "content": "你是客服"}, user, calling, *results]},
        {"messages": [{"role": "system", "content": "你是客服"}, user, reply], "sys": "简洁"},
    ])  # fmt: skip
    cols = {"messages": "messages", "tools": "tools", "system": "sys"}
    info = {"oa": {"file_name": "oa.jsonl", "formatting": "openai", "columns": cols, "tags": OAI_TAGS}}
    (tmp_path / "dataset_info.json").write_text(json.dumps(info))
    got = load_rows(["oa"], dataset_dir=tmp_path, skip_invalid=True, rejects_path=tmp_path / "rej.jsonl")
    tools_row, plain = got.rows
    assert tools_row.messages[0] == {"role": "system", "content": "你是客服\n"}  # LLaMA-Factory: a newline with tools
    assert [c["function"] for c in tools_row.messages[2]["tool_calls"]] == [
        {"name": "weather", "arguments": {"city": "北京"}}
    ] * 2
    assert tools_row.messages[3] == {"role": "tool", "content": "晴\n</tool_response>\n<tool_response>\n多云"}
    assert tools_row.tools == spec and tools_row.messages[4] == reply
    assert plain.messages == [{"role": "system", "content": "detailed thinking off"}, user, reply]
    assert got.notes == [
        "oa: 1 row(s) without tools have 'detailed thinking off' in their system prompt, added as LLaMA-Factory's "
        "openai formatting adds it (formatting sharegpt, with the same tags, trains them without it)"
    ]
    errors = [json.loads(line)["error"] for line in (tmp_path / "rej.jsonl").read_text().splitlines()]
    assert errors[0].startswith("messages[1].content: text beside tool_calls, which LLaMA-Factory's openai")
    assert errors[1].startswith("messages[3]: tool results after the last assistant turn, which LLaMA-Factory's")
    assert errors[2].startswith("sys: given both as a column and as the first message; LLaMA-Factory reads the")
    # data.format openai beside it agrees with the entry (it said the dataset is sharegpt); alpaca does not
    assert load_rows(["oa"], "openai", dataset_dir=tmp_path, skip_invalid=True, rejects_path=tmp_path / "r").kept == 2
    with pytest.raises(UserError, match="format 'alpaca': dataset 'oa' is openai by its dataset_info.json entry"):
        load_rows(["oa"], "alpaca", dataset_dir=tmp_path)


def test_a_turn_order_error_names_the_roles_and_key_the_entrys_tags_use(tmp_path):
    """With tags renaming roles (speaker: usr/bot), a turn-order error named weitiao's own names: 'dialog[1].role:
    expected 'assistant', got 'user'' (neither key nor roles are in the file). Now said in the entry's tags, as
    LLaMA-Factory's converter checks the order (it skips the row); the well-ordered row (negative control) loads."""
    tags = {"role_tag": "speaker", "content_tag": "text", "user_tag": "usr", "assistant_tag": "bot"}
    good = [{"speaker": "usr", "text": "你好"}, {"speaker": "bot", "text": "您好"}]
    write_jsonl(tmp_path / "d.jsonl", [{"dialog": good}, {"dialog": [good[0], good[0]]}, {"dialog": good[:1]}])
    info = {"d": {"file_name": "d.jsonl", "formatting": "sharegpt", "columns": {"messages": "dialog"}, "tags": tags}}
    (tmp_path / "dataset_info.json").write_text(json.dumps(info))
    got = load_rows(["d"], dataset_dir=tmp_path, skip_invalid=True, rejects_path=tmp_path / "rej.jsonl")
    errors = [json.loads(line)["error"] for line in (tmp_path / "rej.jsonl").read_text().splitlines()]
    assert got.kept == 1 and errors == [
        "dialog[1].speaker: expected 'bot' after 'usr', got 'usr': LLaMA-Factory's sharegpt alternates 'usr' with "
        "'bot' turns and skips this row",
        "dialog: ends with 'usr'; LLaMA-Factory takes a row ending with 'bot' and skips this one",
    ]


def test_message_keys_lf_does_not_read_are_refused_not_dropped(tmp_path):
    """Through dataset_info.json a message became its role and content alone: an OpenAI fine-tuning file's
    `weight: 0` (this reply is context) was trained, a speaker `name` and a `reasoning_content` trace were dropped,
    unsaid (LLaMA-Factory reads role and content only). Now refused naming the key, under sharegpt and openai
    formatting; the same rows without them (negative control) load, and the file by its path reads the weight."""
    user, reply = {"role": "user", "content": "你好"}, {"role": "assistant", "content": "您好"}
    odd = [{"weight": 0}, {"name": "小王"}, {"reasoning_content": "想一想"}, {"weight": 1}]
    rows = [{"messages": [user, {**reply, **k}, user, reply]} for k in odd]
    write_jsonl(tmp_path / "ft.jsonl", rows)
    cols = {"messages": "messages"}
    info = {
        f: {"file_name": "ft.jsonl", "formatting": f, "columns": cols, "tags": OAI_TAGS} for f in ("sharegpt", "openai")
    }
    (tmp_path / "dataset_info.json").write_text(json.dumps(info))
    for f in info:
        got = load_rows([f], dataset_dir=tmp_path, skip_invalid=True, rejects_path=tmp_path / f"{f}.rej")
        errors = [json.loads(line)["error"] for line in (tmp_path / f"{f}.rej").read_text().splitlines()]
        assert got.kept == 1 and [e.split(",")[0] for e in errors] == [
            "messages[1].weight: a per-turn training flag (the turn would be trained anyway)",
            "messages[1].name: a speaker name",
            "messages[1].reasoning_content: a reasoning trace (it would not be trained)",
        ], errors
        assert all(f"which LLaMA-Factory's {f} formatting does not read" in e for e in errors)
    assert load_rows(str(tmp_path / "ft.jsonl"), skip_invalid=True).rows[0].messages[1]["weight"] == 0


def test_a_legacy_function_call_through_dataset_info_is_refused_not_dropped(tmp_path):
    """Through dataset_info.json an assistant message's OpenAI legacy `function_call` was dropped unsaid (LLaMA-Factory
    reads role and content, and tool_calls under openai formatting): `{"content": "我查一下", "function_call": {...}}`
    trained the words without the call. Now refused naming it under sharegpt and openai formatting, as its
    tool_calls are under sharegpt."""
    user = {"role": "user", "content": "北京天气？"}
    said = {"role": "assistant", "content": "我查一下", "function_call": {"name": "get_weather", "arguments": "{}"}}
    write_jsonl(tmp_path / "ft.jsonl", [{"messages": [user, said]}])
    info = {f: {"file_name": "ft.jsonl", "formatting": f, "columns": {"messages": "messages"}, "tags": OAI_TAGS}
            for f in ("sharegpt", "openai")}  # fmt: skip
    (tmp_path / "dataset_info.json").write_text(json.dumps(info))
    for f, fix in (("sharegpt", 'tool_calls with "formatting": "openai" in the entry, or as a function_call turn'),
                   ("openai", "tool_calls")):  # fmt: skip
        with pytest.raises(
            UserError, match=r"ft\.jsonl:1: messages\[1\]\.function_call: an OpenAI legacy function "
        ) as e:
            load_rows([f], dataset_dir=tmp_path)
        assert f"the call would be lost), which LLaMA-Factory's {f} formatting does not read" in str(e.value)
        assert f"write it as {fix} (or pass --skip-invalid" in str(e.value), e.value


def test_a_llamafactory_folder_given_as_data_points_to_dataset_dir(tmp_path):
    """LLaMA-Factory's data folder (dataset_info.json beside the files it maps) given as data (`data.train: [data]`,
    `data check data/`) was refused with 'dataset_info.json: json: expected a list of rows', no word of reading it
    by name. Now the line says how: data.dataset_dir and the names (--dataset-dir on the CLI); the same folder through
    dataset_dir reads (control)."""
    d = tmp_path / "data"
    d.mkdir()
    write_jsonl(d / "faq.jsonl", [{"问题": "几点开门", "答案": "九点"}])
    info = {"faq": {"file_name": "faq.jsonl", "columns": {"prompt": "问题", "response": "答案"}}}
    (d / "dataset_info.json").write_text(json.dumps(info, ensure_ascii=False), encoding="utf-8")
    for entry in (d, d / "*.json*", d / "dataset_info.json"):
        with pytest.raises(UserError, match=re.escape(f"{d / 'dataset_info.json'}: LLaMA-Factory's dataset_info.json")):
            load_rows(str(entry))
    assert load_rows(["faq"], dataset_dir=d).rows[0].messages[-1]["content"] == "九点"


def test_a_rejected_row_of_a_mapped_dataset_is_written_as_the_user_wrote_it(tmp_path):
    """With skip_invalid, a bad row of a dataset whose columns are mapped (问题/答案) went to the rejects file as
    weitiao's conversion of it ({"instruction", "output"}): its own keys renamed and its other columns (`id`) gone,
    while the error named 答案. The rejects file is there to fix rows and feed them again: now the row as the file
    holds it."""
    rows = [{"问题": "几点开门", "答案": "九点", "id": 1}, {"问题": "周末开吗", "答案": "", "id": 2}]
    write_jsonl(tmp_path / "faq.jsonl", rows)
    info = {"faq": {"file_name": "faq.jsonl", "columns": {"prompt": "问题", "response": "答案"}}}
    (tmp_path / "dataset_info.json").write_text(json.dumps(info, ensure_ascii=False), encoding="utf-8")
    got = load_rows(["faq"], dataset_dir=tmp_path, skip_invalid=True, rejects_path=tmp_path / "rej.jsonl")
    rejected = [json.loads(line) for line in (tmp_path / "rej.jsonl").read_text(encoding="utf-8").splitlines()]
    assert got.kept == 1 and rejected == [{"source": f"{tmp_path / 'faq.jsonl'}:2", "error": "答案: is empty",
                                           "row": rows[1]}]  # fmt: skip
