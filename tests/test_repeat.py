"""data repeat-negatives: selection by length/novelty, pair construction, demo stitching, CLI."""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

from weitiao.data.formats import PreferencePair, load_conversations, load_rows
from weitiao.dataeng import repeat
from weitiao.dataeng.commands import register
from weitiao.demo import DATA_DIR
from weitiao.errors import UserError

NOVEL = [
    ("周末有什么好玩的地方推荐吗", "可以去植物园看看，最近郁金香开得正好"),
    ("植物园门票贵不贵", "成人票二十块，学生半价"),
    ("那里停车方便吗", "停车场不大，建议坐地铁四号线过去"),
    ("附近有什么好吃的", "东门外有家老字号面馆，牛肉面很有名"),
    ("面馆几点关门", "一般晚上九点打烊，周末会晚一点"),
]
REPEATER = [
    ("周末有什么好玩的地方推荐吗", "可以去植物园看看，最近郁金香开得正好"),
    ("植物园门票贵不贵", "可以去植物园看看，最近郁金香开得正好"),
    ("那里停车方便吗", "那里停车方便吗？可以去植物园看看"),
    ("附近有什么好吃的", "可以去植物园看看，最近郁金香开得正好"),
]


def convo(turns):
    msgs = [{"role": "system", "content": "你是朋友"}]
    for q, a in turns:
        msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    return {"messages": msgs}


def write(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_measure_by_hand():
    c = load_conversations_row(convo(REPEATER))
    m = repeat.measure(c, copy_n=4)
    assert m["turns"] == 4
    # turns 2 and 4 copy turn 1 whole (rate 1.0); turn 3 "那里停车方便吗？可以去植物园看看" has 13 char
    # 4-grams: the 4 containing "？" are new, the other 9 come from the question and turn 1
    assert m["copy"] == pytest.approx((1 + 9 / 13 + 1) / 3)
    assert repeat.measure(load_conversations_row(convo(NOVEL)), 4)["copy"] == 0.0


def load_conversations_row(row):
    from weitiao.data.formats import Conversation, parse_openai

    return Conversation(parse_openai(row))


def test_select_and_pairs(tmp_path):
    src = write(tmp_path / "d.jsonl", [convo(NOVEL), convo(REPEATER), convo(NOVEL[:2])])
    cfg = repeat.RepeatConfig(min_turns=4, pairs_per_dialog=3, echo_share=0.5, seed=0)
    rep = repeat.run([src], tmp_path / "p.jsonl", cfg, sft_out=tmp_path / "long.jsonl")
    assert (rep["read"], rep["long"], rep["kept"]["dialogues"]) == (3, 2, 1)
    kept = load_conversations(str(tmp_path / "long.jsonl")).rows
    assert len(kept) == 1 and kept[0].messages[2]["content"] == NOVEL[0][1]
    pairs = load_rows(str(tmp_path / "p.jsonl")).rows
    assert len(pairs) == rep["pairs"] == 3 and all(isinstance(p, PreferencePair) for p in pairs)
    replies = [a for _, a in NOVEL]
    for p, raw in zip(pairs, map(json.loads, open(tmp_path / "p.jsonl", encoding="utf-8"))):
        turn = raw["meta"]["turn"]  # 1-based assistant turn, ≥ 2 (there is an earlier reply to copy)
        assert turn >= 2 and p.chosen == replies[turn - 1] and p.prompt[-1]["content"] == NOVEL[turn - 1][0]
        assert len(p.prompt) == 1 + 2 * (turn - 1) + 1 and p.prompt[0]["role"] == "system"
        if raw["meta"]["kind"] == "echo_user":
            assert p.rejected == NOVEL[turn - 1][0]
        else:
            assert p.rejected in replies[: turn - 1]
    assert rep["rejected_copy_rate"] == 1.0 and rep["chosen_copy_rate"] == 0.0
    # all echo / all copy
    for share, kind in ((1.0, "echo_user"), (0.0, "copy_turn")):
        cfg = repeat.RepeatConfig(min_turns=4, pairs_per_dialog=4, echo_share=share)
        r = repeat.run([src], tmp_path / "q.jsonl", cfg)
        assert r["pairs_by_kind"][kind] == 4


def test_demo_stitched(tmp_path):
    cfg = repeat.RepeatConfig(min_turns=6, stitch_turns=6, pairs_per_dialog=2, seed=1)
    rep = repeat.run([DATA_DIR / "style.jsonl"], tmp_path / "p.jsonl", cfg)
    assert rep["read"] == 850 // 6 and rep["kept"]["dialogues"] > 0.5 * rep["read"]
    assert (rep["rows"], rep["stitch_left_over"]) == (850, 850 % 6)  # rows no whole dialogue took, said
    assert rep["kept"]["mean_copy_rate"] <= rep["all"]["mean_copy_rate"] <= 1
    assert rep["pairs"] <= 2 * rep["kept"]["dialogues"] and rep["rejected_copy_rate"] > rep["chosen_copy_rate"]
    assert len(load_rows(str(tmp_path / "p.jsonl")).rows) == rep["pairs"]


def test_stitching_multi_turn_rows_says_what_it_leaves_out(tmp_path):
    """--stitch-turns on multi-turn rows kept each row's last exchange and dropped its history and system prompt
    with no word; now the report and the table count them (the stitched dialogues still hold the last exchanges)."""
    rows = [convo(NOVEL[:3]), convo(NOVEL[3:]), {"messages": convo(NOVEL[1:2])["messages"][1:]}, convo(NOVEL[:1])]
    src = write(tmp_path / "d.jsonl", rows)
    cfg = repeat.RepeatConfig(min_turns=2, max_copy=1, min_distinct2=0, stitch_turns=2, pairs_per_dialog=1)
    rep = repeat.run([src], tmp_path / "p.jsonl", cfg, tmp_path / "sft.jsonl")
    assert rep["stitch_dropped"] == {"earlier_exchanges": 3, "rows_with_history": 2, "system_prompts": 3}
    stitched = [r.messages for r in load_conversations(str(tmp_path / "sft.jsonl")).rows]
    assert all(m["role"] != "system" for msgs in stitched for m in msgs) and sum(map(len, stitched)) == 8
    data, cli = typer.Typer(), typer.Typer()
    cli.add_typer(data, name="data")
    register(data, cli)
    r = CliRunner().invoke(cli, ["data", "repeat-negatives", str(src), "--out", str(tmp_path / "q.jsonl"),
                                 "--stitch-turns", "2", "--min-turns", "2", "--max-copy", "1"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "3 earlier exchanges of 2 rows and 3 system prompts are not in the stitched dialogues" in " ".join(
        r.output.split()
    )
    assert (
        repeat.run([src], tmp_path / "p.jsonl", repeat.RepeatConfig(min_turns=2, max_copy=1))["stitch_dropped"] is None
    )


def test_nothing_selected_is_explained(tmp_path):
    src = write(tmp_path / "d.jsonl", [convo(NOVEL[:2])])
    with pytest.raises(UserError, match="longest has 2 turns.*--stitch-turns"):
        repeat.run([src], tmp_path / "p.jsonl", repeat.RepeatConfig())
    # long enough but copying: the message named only the turn count, sending users to --min-turns
    copying = convo([(q, "关于这个话题，我的建议是多读书、多运动、早睡早起。") for q, _ in NOVEL[:4]])
    src = write(tmp_path / "c.jsonl", [copying, convo(NOVEL[:2])])
    with pytest.raises(UserError, match=r"longest has 4 turns; of 2: 1 fewer turns \(--min-turns\), 1 copy rate over "):
        repeat.run([src], tmp_path / "p2.jsonl", repeat.RepeatConfig())


def test_cli_repeat(tmp_path):
    src = write(tmp_path / "d.jsonl", [convo(NOVEL), convo(REPEATER)])
    cli, data = typer.Typer(), typer.Typer()
    cli.add_typer(data, name="data")
    register(data, cli)
    r = CliRunner().invoke(cli, ["data", "repeat-negatives", str(src), "--out", str(tmp_path / "p.jsonl")])
    assert r.exit_code == 0, r.output
    assert "2 / 2 / 1" in r.output and "0.0 vs 1.0" in r.output


def test_a_weight_0_turn_is_never_the_chosen_reply():
    """A turn marked weight 0 is context the user chose not to train: DPO must not push the model toward it."""
    import random

    from weitiao.data.formats import Conversation

    turns = [("第一个问题", "第一个回答"), ("第二个问题", "我也不太确定，也许吧"), ("第三个问题", "第三个回答"),
             ("第四个问题", "第四个回答")]  # fmt: skip
    msgs = [m for q, a in turns for m in ({"role": "user", "content": q}, {"role": "assistant", "content": a})]
    msgs[3]["weight"] = 0
    cfg = repeat.RepeatConfig(pairs_per_dialog=10)
    for seed in range(5):
        pairs = repeat.make_pairs(Conversation(msgs), cfg, random.Random(seed))
        assert pairs and all(p["chosen"] != "我也不太确定，也许吧" for p in pairs)
        assert {p["chosen"] for p in pairs} == {"第三个回答", "第四个回答"}  # negative control: the others are used


def test_tool_call_dialogues_are_refused_not_turned_into_broken_pairs(tmp_path):
    """A tool dialogue gave pairs with chosen "" (the tool call dropped), "echo_user" rejected replies echoing the tool
    result, and prompts DPO then refused: the row is named instead; the same dialogue without tools pairs fine."""
    msgs = []
    for q, a in NOVEL:
        call = {
            "type": "function",
            "function": {"name": "search", "arguments": json.dumps({"q": q}, ensure_ascii=False)},
        }
        msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": "", "tool_calls": [call]},
                 {"role": "tool", "content": a}, {"role": "assistant", "content": a}]  # fmt: skip
    src = write(tmp_path / "t.jsonl", [convo(NOVEL), {"messages": msgs}])
    cfg = repeat.RepeatConfig(max_copy=1.0, min_distinct2=0.0, pairs_per_dialog=8)
    with pytest.raises(UserError, match=r"t\.jsonl:2: a tool-call dialogue; .*leave such rows out"):
        repeat.run([src], tmp_path / "p.jsonl", cfg)
    assert not (tmp_path / "p.jsonl").exists()
    rep = repeat.run([write(tmp_path / "n.jsonl", [convo(NOVEL)])], tmp_path / "p.jsonl", cfg)  # negative control
    assert rep["pairs"] == len(load_rows(str(tmp_path / "p.jsonl")).rows) == 4


@pytest.mark.parametrize(
    "field, value",
    [("pairs_per_dialog", -1), ("pairs_per_dialog", 0), ("echo_share", 2.0), ("min_turns", 1), ("max_copy", -0.5),
     ("min_distinct2", 1.5), ("stitch_turns", -3)],
)  # fmt: skip
def test_options_out_of_range_are_refused(tmp_path, field, value):
    """-1 pairs per dialog crashed (ValueError from random.sample), 0 wrote an empty file with exit 0, echo share 2
    read as 1, stitch turns -3 as 0."""
    src = write(tmp_path / "d.jsonl", [convo(NOVEL)])
    flag = "--" + field.replace("_", "-")
    with pytest.raises(UserError, match=f"^{flag} {value}: out of range"):
        repeat.run([src], tmp_path / "p.jsonl", repeat.RepeatConfig(**{field: value}))
    assert not (tmp_path / "p.jsonl").exists()


def test_kept_dialogues_without_a_pair_are_an_error(tmp_path):
    row = convo(NOVEL)
    for m in row["messages"][4:]:  # every assistant turn after the first is context (weight 0)
        if m["role"] == "assistant":
            m["weight"] = 0
    with pytest.raises(UserError, match="1 dialogues kept but no pair made"):
        repeat.run([write(tmp_path / "d.jsonl", [row])], tmp_path / "p.jsonl", repeat.RepeatConfig())


def test_sft_out_equal_to_out_or_its_report_is_refused(tmp_path):
    """--sft-out p.jsonl --out p.jsonl wrote the SFT rows over the pairs (the table still said 2 pairs), exit 0."""
    src = write(tmp_path / "d.jsonl", [convo(NOVEL)])
    for sft_out in (tmp_path / "p.jsonl", tmp_path / "p.jsonl.report.json", tmp_path / "." / "p.jsonl"):
        with pytest.raises(UserError, match="--sft-out .*: the same file as --out or its report"):
            repeat.run([src], tmp_path / "p.jsonl", repeat.RepeatConfig(), sft_out=sft_out)
    assert not (tmp_path / "p.jsonl").exists()
    rep = repeat.run([src], tmp_path / "p.jsonl", repeat.RepeatConfig(), sft_out=tmp_path / "s.jsonl")  # control
    assert len(load_rows(str(tmp_path / "p.jsonl")).rows) == rep["pairs"] == 2


def test_an_sft_out_refused_is_named_by_its_own_flag(tmp_path):
    """--sft-out on the input (or on a file of the user's) was refused as '--out d.jsonl: is also an input', naming
    the flag that was right. Now the line names --sft-out."""
    src = write(tmp_path / "d.jsonl", [convo(NOVEL)])
    (tmp_path / "mine.jsonl").write_text("{}\n", encoding="utf-8")
    theirs = "mine\\.jsonl: exists and was not written by weitiao .* --sft-out"
    for sft_out, said in ((src, "--sft-out .*d\\.jsonl: is also an input"), (tmp_path / "mine.jsonl", theirs)):
        with pytest.raises(UserError, match=said):
            repeat.run([src], tmp_path / "p.jsonl", repeat.RepeatConfig(), sft_out=sft_out)
