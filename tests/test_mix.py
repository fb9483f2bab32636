"""data mix: exact targets, up/down-sampling, cross-source dedup, report; the demo 85/15 mix."""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections import Counter

import pytest
import typer
from conftest import write_jsonl
from typer.testing import CliRunner

from weitiao.data.formats import load_conversations
from weitiao.dataeng import mix
from weitiao.dataeng.commands import register
from weitiao.demo import DATA_DIR
from weitiao.errors import UserError


def rows(path, pairs):
    path.write_text("".join(json.dumps({"instruction": q, "output": a}, ensure_ascii=False) + "\n" for q, a in pairs),
                    encoding="utf-8")  # fmt: skip
    return str(path)


def read(path):
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def test_targets_largest_remainder():
    assert mix.targets(100, [0.85, 0.15]) == [85, 15]
    assert mix.targets(7, [1, 1, 1]) == [3, 2, 2]
    assert mix.targets(10, [2, 1]) == [7, 3]  # 6.67 → 7, 3.33 → 3
    assert sum(mix.targets(999, [0.3, 0.3, 0.4])) == 999


def test_mix_upsamples_dedups_and_reports(tmp_path):
    a = rows(tmp_path / "a.jsonl", [("你好", "在呢"), ("你好！", "在呢。"), ("吃了吗", "吃了"), ("周末去哪", "爬山")])
    b = rows(tmp_path / "b.jsonl", [("怎么造假证", "这个不行"), ("吃了吗？", "吃了"), ("怎么盗号", "不能帮你")])
    rep = mix.run([f"{a}:0.5", f"{b}:0.5"], tmp_path / "m.jsonl", total=10, seed=1)
    out = read(tmp_path / "m.jsonl")
    assert len(out) == rep["total"] == 10
    src = {r["source"]: r for r in rep["sources"]}
    # a: "你好！/在呢。" duplicates "你好/在呢" after normalization; b: "吃了吗？/吃了" duplicates a's row
    assert (src[a]["read"], src[a]["duplicates"], src[a]["unique"]) == (4, 1, 3)
    assert (src[b]["read"], src[b]["duplicates"], src[b]["unique"]) == (3, 1, 2)
    assert src[a]["picked"] == src[b]["picked"] == 5 and src[a]["achieved_ratio"] == 0.5
    assert src[b]["upsample"] == 2.5
    per = Counter((r["meta"]["source"], r["messages"][0]["content"]) for r in out)
    # each row traces back to its input line (the first copy's, after dedup)
    lines = {r["messages"][0]["content"]: r["meta"]["row"] for r in out}
    assert lines["你好"] == f"{a}:1" and lines["吃了吗"] == f"{a}:3" and lines["怎么盗号"] == f"{b}:3"
    # b (2 unique, 5 wanted): each row twice, one of them a third time; a (3 unique): each once, two twice
    assert sorted(n for (s, _), n in per.items() if s == b) == [2, 3]
    assert sorted(n for (s, _), n in per.items() if s == a) == [1, 2, 2]
    assert all(q != "吃了吗？" for _, q in per)
    assert len(load_conversations(str(tmp_path / "m.jsonl")).rows) == 10
    assert json.loads((tmp_path / "m.jsonl.report.json").read_text())["total"] == 10
    # no --total: the largest mix without up-sampling = min(3 / 0.5, 2 / 0.5) = 4
    assert mix.run([f"{a}:1", f"{b}:1"], tmp_path / "n.jsonl")["total"] == 4
    # the seed fixes the output
    mix.run([f"{a}:0.5", f"{b}:0.5"], tmp_path / "m2.jsonl", total=10, seed=1)
    assert read(tmp_path / "m2.jsonl") == out


def test_mix_demo_85_15(tmp_path):
    style, safety = str(DATA_DIR / "style.jsonl"), str(DATA_DIR / "safety.jsonl")
    rep = mix.run([f"{style}:0.85", f"{safety}:0.15"], tmp_path / "m.jsonl", total=1000)
    achieved = {r["source"]: r["achieved_ratio"] for r in rep["sources"]}
    assert achieved == {style: 0.85, safety: 0.15}
    out = read(tmp_path / "m.jsonl")
    assert Counter(r["meta"]["source"] for r in out) == {style: 850, safety: 150}
    keys = [mix.conv_key(c) for c in load_conversations(str(tmp_path / "m.jsonl")).rows]
    uniq = {r["source"]: r["unique"] for r in rep["sources"]}
    assert len(set(keys)) == min(850, uniq[style]) + min(150, uniq[safety])  # down-sampling never repeats


def test_mix_bad_input(tmp_path):
    a = rows(tmp_path / "a.jsonl", [("你好", "在呢")])
    with pytest.raises(UserError, match="FILE:RATIO"):
        mix.run([a], tmp_path / "m.jsonl")
    with pytest.raises(UserError, match="FILE:RATIO"):
        mix.run([f"{a}:-1"], tmp_path / "m.jsonl")
    with pytest.raises(UserError, match="not found"):
        mix.run([f"{tmp_path / 'x.jsonl'}:1"], tmp_path / "m.jsonl")
    with pytest.raises(UserError, match="duplicates an earlier source"):
        mix.run([f"{a}:1", f"{rows(tmp_path / 'b.jsonl', [('你好', '在呢')])}:1"], tmp_path / "m.jsonl")
    pairs = tmp_path / "p.jsonl"  # a DPO/RM file is named as such, not "preference row in SFT data"
    pairs.write_text(json.dumps({"prompt": "你好", "chosen": "在呢", "rejected": "不行"}) + "\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"^mix source .*p\.jsonl: preference pairs; `data mix` mixes SFT rows only$"):
        mix.run([f"{a}:1", f"{pairs}:1"], tmp_path / "m.jsonl")
    assert not (tmp_path / "m.jsonl").exists()


def test_cli_mix(tmp_path):
    a = rows(tmp_path / "a.jsonl", [("你好", "在呢"), ("吃了吗", "吃了")])
    b = rows(tmp_path / "b.jsonl", [("怎么盗号", "不能帮你")])
    cli, data = typer.Typer(), typer.Typer()
    cli.add_typer(data, name="data")
    register(data, cli)
    r = CliRunner().invoke(cli, ["data", "mix", f"{a}:0.75", f"{b}:0.25", "--total", "8", "--out",
                                 str(tmp_path / "m.jsonl"), "--json"])  # fmt: skip
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output)
    assert [s["picked"] for s in rep["sources"]] == [6, 2] and [s["upsample"] for s in rep["sources"]] == [3.0, 2.0]


def test_ratios_not_adding_up_to_one_are_rescaled_with_a_note(tmp_path):
    a = rows(tmp_path / "a.jsonl", [(f"问{i}", "答") for i in range(10)])
    b = rows(tmp_path / "b.jsonl", [(f"题{i}", "答") for i in range(10)])
    rep = mix.run([f"{a}:0.5", f"{b}:0.2"], tmp_path / "m.jsonl", total=7)
    assert [r["picked"] for r in rep["sources"]] == [5, 2] and "add up to 0.7, not 1" in rep["note"]
    assert "note" not in mix.run([f"{a}:0.7", f"{b}:0.3"], tmp_path / "n.jsonl", total=10)  # negative control


def test_rows_differing_in_a_number_or_a_symbol_are_not_duplicates(tmp_path):
    """Dedup drops punctuation and spacing variants, but 1.5 is not 15, 5% not 5 and C++ not C: such rows were dropped
    as duplicates of each other (read 8, duplicates 5, before)."""
    pairs = [("运费是1.5元吗", "是"), ("运费是15元吗", "是"), ("涨了5%吗", "对"), ("涨了5吗", "对"),
             ("学C++难吗", "不难"), ("学C难吗", "不难"),
             ("运费是 1.5 元吗？", "是。"), ("运费是１．５元吗", "是")]  # fmt: skip
    a = rows(tmp_path / "a.jsonl", pairs)
    rep = mix.run([f"{a}:1"], tmp_path / "m.jsonl")
    assert (rep["sources"][0]["read"], rep["sources"][0]["duplicates"]) == (8, 2)  # the last two: 1.5 spaced, wide
    kept = [r["messages"][0]["content"] for r in read(tmp_path / "m.jsonl")]
    assert sorted(kept) == sorted(["运费是1.5元吗", "运费是15元吗", "涨了5%吗", "涨了5吗", "学C++难吗", "学C难吗"])


def test_tool_rows_differing_only_in_a_call_are_not_duplicates(tmp_path):
    """Two rows asking for the weather whose tool calls name different cities were one row to dedup (only the
    text of each turn was compared); the same row twice is still a duplicate."""

    def row(city):
        call = {"type": "function", "function": {"name": "weather", "arguments": json.dumps({"city": city})}}
        spec = {"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}
        return {"messages": [{"role": "user", "content": "查天气"}, {"role": "assistant", "content": "",
                "tool_calls": [call]}, {"role": "tool", "content": "晴"}, {"role": "assistant", "content": "晴天"}],
                "tools": [spec]}  # fmt: skip

    src = tmp_path / "t.jsonl"
    src.write_text("".join(json.dumps(row(c), ensure_ascii=False) + "\n" for c in ("北京", "上海", "北京")), "utf-8")
    rep = mix.run([f"{src}:1"], tmp_path / "m.jsonl")
    assert (rep["sources"][0]["read"], rep["sources"][0]["duplicates"], rep["total"]) == (3, 1, 2)


def test_rows_differing_in_which_turns_are_trained_are_not_duplicates(tmp_path):
    """A row whose first reply is context (weight 0) and the same row training it were one row to dedup: the first
    kept, the other's trained turn dropped without a word. The same row twice is still a duplicate."""
    turns = [("user", "你好"), ("assistant", "您好"), ("user", "再见"), ("assistant", "再见")]

    def row(w):
        return {"messages": [{"role": r, "content": t, **({"weight": w} if i == 1 and w is not None else {})}
                             for i, (r, t) in enumerate(turns)]}  # fmt: skip

    src = tmp_path / "w.jsonl"
    src.write_text("".join(json.dumps(row(w), ensure_ascii=False) + "\n" for w in (0, None, 1)), "utf-8")
    rep = mix.run([f"{src}:1"], tmp_path / "m.jsonl")
    assert (rep["sources"][0]["read"], rep["sources"][0]["duplicates"], rep["total"]) == (3, 1, 2)  # weight 1 = none


def test_default_total_is_exact_when_the_division_falls_just_below(tmp_path):
    """93 rows at 0.93 and 7 at 0.07 mix 100 rows without up-sampling; 7 / 0.07 is 99.999… in floats, which made the
    default total 99 and dropped a row of the first source."""
    a = rows(tmp_path / "a.jsonl", [(f"问题{i}", f"回答{i}") for i in range(93)])
    b = rows(tmp_path / "b.jsonl", [(f"安全{i}", f"拒绝{i}") for i in range(7)])
    rep = mix.run([f"{a}:0.93", f"{b}:0.07"], tmp_path / "m.jsonl")
    assert rep["total"] == 100 and [s["picked"] for s in rep["sources"]] == [93, 7]
    # and never more than needs no up-sampling: 3 rows at 1/3 with 5 at 2/3 is 7 (8 would repeat a row of a)
    c = rows(tmp_path / "c.jsonl", [(f"c{i}", "x") for i in range(3)])
    d = rows(tmp_path / "d.jsonl", [(f"d{i}", "y") for i in range(5)])
    rep = mix.run([f"{c}:1", f"{d}:2"], tmp_path / "n.jsonl")
    assert all(s["upsample"] <= 1 for s in rep["sources"]) and rep["total"] == 7


def test_a_rows_own_columns_are_kept_and_a_clash_with_what_mix_writes_is_refused(tmp_path):
    """The mixed rows had only messages and meta {source, row}: a row's rule_ids, id and own meta keys were dropped."""
    a = tmp_path / "a.jsonl"
    a.write_text(json.dumps({"instruction": "你好", "output": "在呢", "rule_ids": ["r1"], "id": 7,
                             "meta": {"lang": "zh"}}, ensure_ascii=False) + "\n", encoding="utf-8")  # fmt: skip
    b = tmp_path / "b.jsonl"
    b.write_text(json.dumps({"messages": [{"role": "user", "content": "怎么盗号"},
                                          {"role": "assistant", "content": "不能帮你"}], "tags": ["safety"]},
                            ensure_ascii=False) + "\n", encoding="utf-8")  # fmt: skip
    out = tmp_path / "m.jsonl"
    mix.run([f"{a}:0.5", f"{b}:0.5"], out, total=2)
    got = {r["meta"]["row"]: r for r in read(out)}
    assert got[f"{a}:1"] == {
        "messages": [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "在呢"}],
        "rule_ids": ["r1"], "id": 7, "meta": {"lang": "zh", "source": str(a), "row": f"{a}:1"},
    }  # fmt: skip
    assert got[f"{b}:1"]["tags"] == ["safety"] and got[f"{b}:1"]["meta"] == {"source": str(b), "row": f"{b}:1"}
    assert len(load_conversations(str(out)).rows) == 2  # still reads as chat rows
    for meta, msg in (({"row": "mine"}, ":1: meta.row: the row has its own; `data mix` writes meta.row"),
                      ("zh", ":1: meta: str; `data mix` writes meta.source and meta.row into it")):  # fmt: skip
        b.write_text(json.dumps({"instruction": "q", "output": "a", "meta": meta}) + "\n", encoding="utf-8")
        with pytest.raises(UserError, match=re.escape(f"{b}{msg}")):
            mix.run([f"{a}:0.5", f"{b}:0.5"], tmp_path / "m2.jsonl", total=2)
        assert not (tmp_path / "m2.jsonl").exists()


def test_dolly_rows_leave_their_context_and_response_in_the_messages_only(tmp_path):
    """A Dolly row's context and response are its input and output: mixed, they are in `messages` and were also kept
    as unread columns beside it (category stays: it is the row's own); a messages row's own `context` column stays."""
    a = tmp_path / "dolly.jsonl"
    a.write_text(json.dumps({"instruction": "总结", "context": "北京是首都。", "response": "首都是北京。",
                             "category": "summarization"}, ensure_ascii=False) + "\n", encoding="utf-8")  # fmt: skip
    b = tmp_path / "b.jsonl"
    b.write_text(json.dumps({"messages": [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "嗨"}],
                             "context": "mine"}, ensure_ascii=False) + "\n", encoding="utf-8")  # fmt: skip
    out = tmp_path / "m.jsonl"
    mix.run([f"{a}:0.5", f"{b}:0.5"], out, total=2)
    got = {r["meta"]["row"]: r for r in read(out)}
    assert set(got[f"{a}:1"]) == {"messages", "category", "meta"}
    assert got[f"{a}:1"]["messages"][0]["content"] == "总结\n北京是首都。" and got[f"{b}:1"]["context"] == "mine"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs a FIFO")
def test_each_source_is_read_once_so_a_fifo_works(tmp_path):
    """Mix read every source twice (rows, then each row's own columns): a FIFO gave nothing the second time and the
    run hung, a huge file was parsed twice. The watchdog ends any second read at once (EOF) instead of a hang."""
    a = tmp_path / "a.jsonl"
    os.mkfifo(a)
    text = "".join(json.dumps({"instruction": f"问题{i}", "output": f"回答{i}", "id": i}, ensure_ascii=False) + "\n"
                   for i in range(5))  # fmt: skip
    b = rows(tmp_path / "b.jsonl", [("怎么盗号", "不能帮你")])
    done = threading.Event()

    def writer():
        with open(a, "w", encoding="utf-8") as f:
            f.write(text)
        while not done.is_set():  # a second reader of the FIFO finds it empty at once
            try:
                os.close(os.open(a, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:  # ENXIO: nobody is reading
                time.sleep(0.01)

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    try:
        rep = mix.run([f"{a}:0.5", f"{b}:0.5"], tmp_path / "m.jsonl", total=10)
    finally:
        done.set()
        t.join(5)
    assert rep["sources"][0]["read"] == 5
    got = [r for r in read(tmp_path / "m.jsonl") if r["meta"]["source"] == str(a)]
    assert sorted(r["id"] for r in got) == [0, 1, 2, 3, 4]  # own columns from the one read


def test_number_columns_of_a_csv_or_xlsx_source_are_written_as_numbers(tmp_path):
    """A CSV/xlsx source's own columns came out as text (score "0.5", id "1001") beside a JSONL source's numbers. A
    column of such a file whose every filled cell is a number (true/false) is now written as numbers (booleans), an
    empty cell as null; a column with 007 or any word in it stays text, and the report names the typed columns."""
    (tmp_path / "a.csv").write_text("instruction,output,score,id,ok,code\n问一,答一,0.5,1001,TRUE,007\n"
                                    "问二,答二,,1002,false,12\n", encoding="utf-8")  # fmt: skip
    write_jsonl(tmp_path / "b.jsonl", [{"instruction": "问三", "output": "答三", "score": 0.9, "id": 1003}])
    rep = mix.run([f"{tmp_path / 'a.csv'}:0.5", f"{tmp_path / 'b.jsonl'}:0.5"], tmp_path / "m.jsonl", total=3)
    rows = {r["id"]: r for r in map(json.loads, (tmp_path / "m.jsonl").read_text(encoding="utf-8").splitlines())}
    assert [(r["score"], r.get("ok"), r.get("code")) for _, r in sorted(rows.items())] == [
        (0.5, True, "007"), (None, False, "12"), (0.9, None, None)]  # fmt: skip
    assert rep["typed_columns"] == {str(tmp_path / "a.csv"): {"score": "number", "id": "number", "ok": "boolean"}}
    # a column one of whose numbers would be written otherwise stays text: 1e5 came out 100000.0, 1.50 as 1.5
    (tmp_path / "v.csv").write_text("instruction,output,code,version,n\n问一,答一,1e5,1.50,-0\n问二,答二,12,2.0,-1\n",
                                    encoding="utf-8")  # fmt: skip
    rep = mix.run([f"{tmp_path / 'v.csv'}:1"], tmp_path / "v.jsonl")
    rows = sorted(
        map(json.loads, (tmp_path / "v.jsonl").read_text(encoding="utf-8").splitlines()), key=lambda r: r["n"]
    )
    assert [(r["code"], r["version"], r["n"]) for r in rows] == [("1e5", "1.50", "-0"), ("12", "2.0", "-1")]
    assert "typed_columns" not in rep
    openpyxl = pytest.importorskip("openpyxl")
    book = openpyxl.Workbook()
    for row in (["instruction", "output", "score"], ["问四", "答四", 0.25], ["问五", "答五", 3]):
        book.active.append(row)
    book.save(tmp_path / "c.xlsx")
    mix.run([f"{tmp_path / 'c.xlsx'}:1"], tmp_path / "x.jsonl")
    scores = [json.loads(line)["score"] for line in (tmp_path / "x.jsonl").read_text(encoding="utf-8").splitlines()]
    assert sorted(scores) == [0.25, 3] and all(not isinstance(s, str) for s in scores)


def test_a_kto_label_in_a_csv_is_refused_as_in_jsonl(tmp_path):
    """label 1/0 from a CSV is the text "1": it was mixed (and trained as SFT) where JSONL's 1 is refused as KTO."""
    (tmp_path / "k.csv").write_text("instruction,output,label\n问,坏回复,0\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"k\.csv:2: label: unpaired feedback"):
        mix.run([f"{tmp_path / 'k.csv'}:1"], tmp_path / "m.jsonl")
    (tmp_path / "c.csv").write_text("instruction,output,label\n问,回复,positive\n", encoding="utf-8")
    mix.run([f"{tmp_path / 'c.csv'}:1"], tmp_path / "m.jsonl")  # control: a class word stays unread


def test_own_columns_of_a_one_line_json_array_stay_with_their_rows(tmp_path):
    """json.dump writes a .json array on one line, so every row's source is 'a.json:1': own columns looked up by
    source all became the last row's (id 3 on every row); now each row keeps its own."""
    rows = [{"instruction": f"问{i}", "output": f"答{i}", "id": i} for i in range(4)]
    (tmp_path / "a.json").write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    mix.run([f"{tmp_path / 'a.json'}:1"], tmp_path / "m.jsonl")
    out = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text(encoding="utf-8").splitlines()]
    assert sorted((r["messages"][0]["content"], r["id"]) for r in out) == [(f"问{i}", i) for i in range(4)]
