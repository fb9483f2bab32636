"""Rule sets: validation errors, checks by hand, coverage, and sft/dpo/eval over real HTTP (scripted teacher,
scripted judge, `weitiao serve` with a tiny model)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from loopback import running
from test_injection import scripted
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from weitiao.data.formats import load_conversations, load_rows
from weitiao.data.templates import resolve_template
from weitiao.errors import UserError
from weitiao.infer.serve import ServeSettings, create_app
from weitiao.safety.injection_rules_commands import rules_app
from weitiao.safety.rules import Check, coverage, load_rules, read_rules, schema_errors, to_sample

REPO = Path(__file__).resolve().parents[1]
RULES = """rules:
  - {id: R1, category: format, text: 不超过20字, check: {max_length: 20}}
  - {id: R2, category: fact, text: 提到会员时说明25元, when: "会员", check: {required: ["25元"]}}
  - {id: R3, category: style, text: 语气友好}
  - id: R4
    category: format
    text: JSON时输出含name的对象
    when: "JSON"
    check: {json_schema: {type: object, required: [name]}}
"""


@pytest.fixture
def rules_file(tmp_path) -> Path:
    p = tmp_path / "rules.yaml"
    p.write_text(RULES, encoding="utf-8")
    return p


def run(*args: str):
    r = CliRunner().invoke(rules_app, list(args))
    return r


# ----------------------------------------------------------------------------- file validation


def test_example_rule_file_is_valid_and_big():
    rules, errors = read_rules(REPO / "examples/rules_zh.yaml")
    assert errors == []
    assert len(rules) >= 100
    assert {r.category for r in rules} == {"style", "format", "content", "fact"}
    assert sum(r.check is not None for r in rules) >= 80
    r = run("check", str(REPO / "examples/rules_zh.yaml"))
    assert r.exit_code == 0 and "ok" in r.output


def test_an_id_yaml_reads_as_another_number_is_refused(tmp_path):
    """`id: 010` loaded as rule 8 and `id: 06` as rule 6 (YAML 1.1 octal), silently; plain numbers stay fine."""
    p = tmp_path / "ids.yaml"
    p.write_text(
        "rules:\n"
        "  - {id: 010, category: style, text: a}\n"
        "  - {id: 7, category: style, text: b}\n"
        "  - {id: '06', category: style, text: c}\n"
        "  - id: 1.50\n    category: style\n    text: d\n",
        encoding="utf-8",
    )
    rules, errors = read_rules(p)
    assert errors == [
        f"{p}:5: rule #4: id: expected text, got float 1.5; quote it",  # was 'missing or empty'
        f"{p}:2: id: 010 reads as the number 8 in YAML; quote it: id: '010'",
    ]
    assert [r.id for r in rules] == ["8", "7", "06"]  # what the file used to mean, silently


def test_malformed_rule_file_errors_name_rule_and_field(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text(
        "- {id: R001, category: style, text: ok}\n"
        "- {id: R017, category: format, text: x, check: {regex: '(unclosed'}}\n"
        "- {id: R001, category: style, text: dup}\n"
        "- {id: R020, category: tone, text: x}\n"
        "- {id: R021, category: fact, text: x, check: {regexp: 'a'}}\n"
        "- {id: R022, category: fact, text: x, check: {max_length: -1}}\n"
        "- {id: R023, category: fact, text: x, check: {json_schema: {properties: {a: {minLength: -1}}}}}\n"
        "- {id: R024, category: fact, text: x, check: {min_length: 9, max_length: 3}}\n"
        "- {category: fact, text: no id}\n"
        "- {id: R026, category: fact, text: '', colour: red}\n"
        "- {id: R027, category: fact, text: x, when: '[a-'}\n"
        "- {id: R028, category: fact, text: x, when: ''}\n"  # empty: matches every prompt, yet not global
        "- {id: R029, category: fact, text: x, check: {ends_with: ['']}}\n"  # every reply ends with ''
        "- {id: R030, category: fact, text: x, check: {required: ['好', '']}}\n"
        "- {id: R031, category: fact, text: x, check: {not_regex: ''}}\n"  # every reply matches ''
        "- {id: R032, category: fact, text: x, check: {ends_with: ['。', '！']}}\n",  # control: fine
        encoding="utf-8",
    )
    rules, errors = read_rules(p)
    want = [
        r":2: rule R017: check\.regex: invalid pattern \(missing \), unterminated subpattern",
        r":3: rule R001: id: duplicate of rule #1",
        r":4: rule R020: category: 'tone' unknown",
        r":5: rule R021: check\.regexp: unknown key",
        r":6: rule R022: check\.max_length: expected a non-negative integer, got -1",
        r":7: rule R023: check\.json_schema\.properties\.a\.minLength: -1 is less than the minimum of 0",
        r":8: rule R024: check\.min_length: 9 > max_length 3",
        r":9: rule #9: id: missing or empty",
        r":10: rule R026: colour: unknown key",
        r":10: rule R026: text: missing or empty",
        r":11: rule R027: when: invalid pattern",
        r":12: rule R028: when: empty pattern \(it matches every prompt\)",
        r":13: rule R029: check\.ends_with: expected a non-empty string",
        r":14: rule R030: check\.required: expected a non-empty string",
        r":15: rule R031: check\.not_regex: expected a non-empty pattern",
    ]
    assert [r.id for r in rules] == ["R001", "R032"]
    assert len(errors) == len(want)
    for w, e in zip(want, errors):
        assert e.startswith(str(p)) and re.search(w, e), (w, e)
    with pytest.raises(UserError, match=r"rule R017: check\.regex: invalid pattern .*\(and 14 more"):
        load_rules(p)
    r = run("check", str(p))
    assert r.exit_code == 1 and "R022" in r.output
    p.write_text("rules: [\n", encoding="utf-8")
    assert "not valid YAML" in read_rules(p)[1][0]


def test_a_pattern_that_is_not_a_string_is_named_as_such(tmp_path):
    """`regex: [a, b]` was reported as an empty pattern and `when: 123` as Python's TypeError text."""
    p = tmp_path / "r.yaml"
    p.write_text("- {id: B7, category: format, text: x, check: {regex: [a, b]}}\n"
                 "- {id: B8, category: format, text: x, when: 123}\n", encoding="utf-8")  # fmt: skip
    errors = read_rules(p)[1]
    assert errors[0].endswith(
        "rule B7: check.regex: expected one pattern string, got list ['a', 'b'] (alternatives: a|b)"
    )
    assert errors[1].endswith("rule B8: when: expected a pattern string, got int 123 (quote it)")
    p.write_text("{}", encoding="utf-8")
    assert "non-empty list of rules" in read_rules(p)[1][0]


def test_checks_no_reply_can_pass_are_errors(tmp_path):
    """A rule whose check contradicts itself, or a global rule's, fails every reply: `rules sft` keeps nothing for it
    and `rules eval` marks every model wrong. Conditional rules only meet on some prompts and are left alone."""
    p = tmp_path / "never.yaml"
    p.write_text(
        "- {id: A, category: style, text: 问好, check: {required: ['您好']}}\n"
        "- {id: B, category: style, text: 不客套, check: {forbidden: ['您']}}\n"  # global: A can never pass
        "- {id: C, category: style, text: x, check: {required: ['谢谢'], forbidden: ['谢']}}\n"
        "- {id: D, category: style, text: x, check: {ends_with: ['呢。', '吧。'], forbidden: ['呢', '吧']}}\n"
        "- {id: E, category: format, text: x, when: 价格, check: {required: ['价格是99元'], max_length: 4}}\n"
        "- {id: F, category: fact, text: x, when: 会员, check: {required: ['您的会员']}}\n"  # meets global B
        "- {id: G, category: fact, text: x, when: 退款, check: {forbidden: ['好']}}\n"  # conditional: not checked
        "- {id: H, category: style, text: x, check: {ends_with: ['呢。', '。'], forbidden: ['呢']}}\n",  # '。' passes
        encoding="utf-8",
    )
    rules, errors = read_rules(p)
    assert [r.id for r in rules] == ["A", "B", "F", "G", "H"]
    want = [
        r":3: rule C: check\.required: '谢谢': contains '谢', forbidden; no reply passes",
        r":4: rule D: check\.ends_with: \['呢。', '吧。'\]: contains '呢', forbidden; no reply passes",
        r":5: rule E: check\.required: '价格是99元': longer than max_length 4; no reply passes",
        r":1: rule A: check\.required: '您好': contains '您', forbidden \(rule B, a global rule\); no reply passes",
        r":6: rule F: check\.required: '您的会员': contains '您', forbidden \(rule B, a global rule\)",
    ]
    assert_errors(p, errors, want)
    assert run("check", str(p)).exit_code == 1


def assert_errors(path, errors: list[str], want: list[str]) -> None:
    """One error per pattern of `want`, in order, each naming the rules file."""
    assert len(errors) == len(want), errors
    for w, e in zip(want, errors):
        assert e.startswith(str(path)) and re.search(w, e), (w, e)


def test_a_phrase_a_not_regex_always_matches_is_a_contradiction(tmp_path):
    """ends_with 。 beside not_regex 。$ loaded fine and failed every reply. A phrase a rule needs (required, every
    starts_with/ends_with option) that a not_regex there always matches is refused naming both checks; a pattern whose
    match could depend on the rest of the reply (an anchor or lookaround on that side) is not decided."""
    p = tmp_path / "nr.yaml"
    lines = [
        "{id: A, category: format, text: x, check: {ends_with: '。', not_regex: '。$'}}",
        "{id: B, category: format, text: x, check: {starts_with: [您好, 你好], not_regex: '^[您你]'}}",
        "{id: C, category: format, text: x, check: {required: [谢谢], not_regex: '(?i)谢+'}}",
        "{id: D, category: format, text: x, when: 退款, check: {ends_with: '吗？'}}",  # meets global G
        # no contradiction: a reply passes each of these (`passing` below)
        "{id: E1, category: format, text: x, when: e, check: {ends_with: ['。', '！'], not_regex: '。$'}}",
        "{id: E2, category: format, text: x, when: e, check: {required: [谢谢], not_regex: '谢谢$'}}",
        "{id: E3, category: format, text: x, when: e, check: {ends_with: '。', not_regex: '^。'}}",
        "{id: E4, category: format, text: x, when: e, check: {starts_with: 您好, not_regex: '您好$'}}",
        "{id: E5, category: format, text: x, when: e, check: {ends_with: '。', not_regex: '\\b。'}}",  # undecided
        "{id: G, category: style, text: x, check: {not_regex: '？(?!x)'}}",  # global: matches a final ？
    ]
    p.write_text("".join(f"- {x}\n" for x in lines), encoding="utf-8")
    rules, errors = read_rules(p)
    assert [r.id for r in rules] == ["D", "E1", "E2", "E3", "E4", "E5", "G"]
    want = [
        r":1: rule A: check\.ends_with: '。': always matches check\.not_regex '。\$'; no reply passes",
        r":2: rule B: check\.starts_with: \['您好', '你好'\]: always matches check\.not_regex '\^\[您你\]'",
        r":3: rule C: check\.required: '谢谢': always matches check\.not_regex '\(\?i\)谢\+'",
        r":4: rule D: check\.ends_with: '吗？': always matches check\.not_regex '？\(\?!x\)' \(rule G, a global rule\)",
    ]
    assert_errors(p, errors, want)
    passing = {"E1": "好的！", "E2": "谢谢你", "E3": "好。", "E4": "您好，请问", "E5": "好！。"}  # controls: they pass
    assert all(not r.failures(passing[r.id]) for r in rules if r.id in passing)
    with pytest.raises(UserError, match=r"rule A: check\.ends_with: '。': always matches check\.not_regex"):
        load_rules(p)


# ----------------------------------------------------------------------------- checks by hand


def test_each_check_field():
    assert Check(regex=r"\d+元").failures("价格25元") == []
    assert Check(regex=r"\d+元").failures("很便宜") == [r"check.regex: no match for '\\d+元'"]
    assert Check(not_regex="[!！]{2,}").failures("好！！") == ["check.not_regex: matched '！！'"]
    assert Check(max_length=3).failures("  一二三  ") == []  # stripped
    assert Check(max_length=3).failures("一二三四") == ["check.max_length: 4 > 3"]
    assert Check(min_length=5).failures("一二") == ["check.min_length: 2 < 5"]
    assert Check(required=["A", "B"]).failures("A") == ["check.required: missing 'B'"]
    assert Check(forbidden=["亲，"]).failures("亲，你好") == ["check.forbidden: contains '亲，'"]
    assert Check(ends_with=["。", "！"]).failures("好的！") == []
    assert Check(ends_with=["。"]).failures("好的") == ["check.ends_with: not one of ['。']"]
    assert Check(starts_with=["是"]).failures("不是") == ["check.starts_with: not one of ['是']"]
    schema = {"type": "object", "required": ["name"], "properties": {"name": {"type": "string", "minLength": 1}}}
    assert Check(json_schema=schema).failures('```json\n{"name": "小明"}\n```') == []
    assert Check(json_schema=schema).failures('{"name": ""}') == ["check.json_schema: $.name: '' should be non-empty"]
    assert Check(json_schema=schema).failures("不是JSON")[0].startswith("check.json_schema: not JSON")


def test_lengths_count_characters_as_eval_does(tmp_path):
    """max_length counted code points (len) while eval's mean_len counts what a reader sees: 好👍🏽 failed a
    max_length 2 rule at '3 > 2' though eval measured it 2 long. Now both count grapheme clusters."""
    from weitiao.eval.style import chars

    for reply in ("好👍🏽", "好🇨🇳", "好👨‍👩‍👧"):
        assert chars(reply) == 2 and Check(max_length=2, min_length=2).failures(reply) == []
    assert Check(max_length=1).failures("好👍🏽") == ["check.max_length: 2 > 1"]
    assert Check(min_length=3).failures("好👍🏽") == ["check.min_length: 2 < 3"]
    assert Check(max_length=1, ends_with=["👍🏽"]).failures("👍🏽") == []
    p = tmp_path / "r.yaml"  # nor is such a rule one no reply passes ('longer than max_length 1')
    p.write_text("- {id: A, category: style, text: x, check: {ends_with: ['👍🏽'], max_length: 1}}\n", encoding="utf-8")
    assert [r.id for r in read_rules(p)[0]] == ["A"] and read_rules(p)[1] == []


def test_json_schema_by_the_library():
    s = {
        "type": "object",
        "required": ["a", "b"],
        "additionalProperties": False,
        "properties": {
            "a": {"type": "integer", "minimum": 1, "maximum": 3},
            "b": {"type": "array", "items": {"enum": ["x", "y"]}, "maxItems": 2},
            "c": {"type": "string", "pattern": "^[0-9]+$"},  # beyond the old hand-written subset
        },
    }
    assert schema_errors({"a": 2, "b": ["x"], "c": "12"}, s) == []
    assert schema_errors({"a": 5, "b": ["x", "z", "y"], "d": 1}, s) == [
        "$: Additional properties are not allowed ('d' was unexpected)",
        "$.a: 5 is greater than the maximum of 3",
        "$.b: ['x', 'z', 'y'] is too long",
        "$.b[1]: 'z' is not one of ['x', 'y']",
    ]
    assert schema_errors({"a": True, "b": [], "c": "x1"}, s) == [
        "$.a: True is not of type 'integer'",
        "$.c: 'x1' does not match '^[0-9]+$'",
    ]
    assert schema_errors([1], {"type": ["object", "null"]}) == ["$: [1] is not of type 'object', 'null'"]


def test_coverage_by_hand(rules_file, tmp_path):
    rows = [
        {"messages": [{"role": "user", "content": "会员多少钱？"}, {"role": "assistant", "content": "25元一个月"}]},
        {"instruction": "JSON格式给我", "output": "不是json"},
        {"prompt": "会员呢", "chosen": "会员25元", "rejected": "会员挺便宜的，你可以去官网看看呀，真的非常非常便宜"},
        {
            "messages": [{"role": "user", "content": "讲个笑话"}, {"role": "assistant", "content": "哈"}],
            "rule_ids": ["R4"],
        },
    ]
    rep = coverage(load_rules(rules_file), [to_sample(r, f"row {i}") for i, r in enumerate(rows, 1)])
    per = rep["per_rule"]
    assert {k: per["R1"][k] for k in ("exercised", "pass", "fail", "contrast")} == {
        "exercised": 4, "pass": 4, "fail": 0, "contrast": 1}  # fmt: skip
    assert (per["R2"]["exercised"], per["R2"]["pass"], per["R2"]["contrast"]) == (2, 2, 1)
    assert (per["R3"]["exercised"], per["R3"]["checked"]) == (4, False)
    assert (per["R4"]["exercised"], per["R4"]["pass"], per["R4"]["fail"]) == (2, 0, 2)
    assert (rep["conditional_rules"], rep["conditional_rules_exercised"], rep["uncovered"]) == (2, 2, [])
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows[:1]), encoding="utf-8")
    out = tmp_path / "cov.json"
    r = run("coverage", str(data), "--rules", str(rules_file), "--out", str(out))
    assert r.exit_code == 0, r.output
    assert json.loads(out.read_text())["uncovered"] == ["R4"]
    (tmp_path / "empty.jsonl").write_text("\n", encoding="utf-8")  # a table of zeros and exit 0 before
    r = run("coverage", str(tmp_path / "empty.jsonl"), "--rules", str(rules_file))
    assert isinstance(r.exception, UserError) and str(r.exception).endswith("empty.jsonl: no rows; give the SFT or "
                                                                            "preference data to measure")  # fmt: skip


COVERAGE_RULES = """rules:
  - {id: R1, category: format, text: 至少5字, check: {min_length: 5}}
  - {id: R2, category: content, text: 病症建议就医, when: "发烧|咳嗽", check: {regex: "医生|医院"}}
  - {id: R3, category: style, text: 不说呵呵, check: {forbidden: [呵呵]}}
"""


def _turn(role: str, text: str) -> dict:
    return {"role": role, "content": text}


def test_coverage_reads_every_training_shape(tmp_path):
    """TRL prompt/completion (string and conversational), an empty alpaca output, a TRL implicit-prompt pair and
    openai messages: every row counts, pass + fail = rows for a global checked rule (before: 1 of 5 rows)."""
    ask = _turn("user", "我发烧了怎么办")
    rows = [
        {"prompt": "我发烧了怎么办", "completion": "呵呵"},
        {"prompt": [_turn("user", "我咳嗽好几天了")], "completion": [_turn("assistant", "呵呵")]},
        {"instruction": "我发烧了", "output": ""},
        {"chosen": [ask, _turn("assistant", "去医院看医生吧")], "rejected": [ask, _turn("assistant", "呵呵")]},
        {"messages": [_turn("user", "我嗓子疼"), _turn("assistant", "多喝热水呵呵")]},
    ]
    (tmp_path / "r.yaml").write_text(COVERAGE_RULES, encoding="utf-8")
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    r = run("coverage", str(data), "--rules", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "cov.json"))
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "cov.json").read_text(encoding="utf-8"))
    got = {k: [v[c] for c in ("exercised", "pass", "fail", "contrast")] for k, v in rep["per_rule"].items()}
    # R1: fails 呵呵, 呵呵 and the empty output; R2: rows 1-4 ask about 发烧/咳嗽; R3: the empty output passes
    assert (rep["rows"], got) == (5, {"R1": [5, 2, 3, 1], "R2": [4, 1, 3, 1], "R3": [5, 2, 3, 1]})


@pytest.mark.parametrize(
    ("row", "error"),
    [
        ({"text": "一段文字"}, "d.jsonl:2: text: a pre-training document has no prompt and reply"),
        ({"instruction": "讲个笑话"}, "d.jsonl:2: output: missing"),
        ({"prompt": "hi", "completion": "ok", "rule_ids": {"R1": 1}}, "d.jsonl:2: rule_ids: expected a list"),
    ],
)
def test_coverage_unreadable_row_names_file_and_line(tmp_path, row, error):
    data = tmp_path / "d.jsonl"
    good = {"messages": [_turn("user", "你好"), _turn("assistant", "你好呀")]}
    data.write_text(json.dumps(good) + "\n" + json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
    (tmp_path / "r.yaml").write_text(COVERAGE_RULES, encoding="utf-8")
    r = run("coverage", str(data), "--rules", str(tmp_path / "r.yaml"))
    assert r.exit_code != 0 and isinstance(r.exception, UserError) and error in str(r.exception)


# ----------------------------------------------------------------------------- teacher flows over HTTP

PROMPTS = ["会员多少钱？", "你好", "讲个笑话"]
ANSWERS = {
    "会员多少钱？": "会员每月25元。",  # passes R1, R2
    "你好": "你好！有什么可以帮你？",  # passes R1
    "讲个笑话": "从前有一只小猫，它每天都去河边钓鱼，可是一条鱼也没钓到，后来它学会了耐心。",  # fails R1
    "会员怎么开通？": "在App里开通即可。",  # fails R2
    "输出JSON格式的用户名": '{"name": "小明"}',  # passes R4
    "用JSON给我一个例子": '{"id": 1}',  # fails R4
}
VIOLATIONS = {
    "会员多少钱？": "会员的价格是每个月二十五元人民币，非常划算，欢迎开通。",  # breaks R1 (verified)
    "你好": "你好呀",  # does not break R1 → dropped
    "输出JSON格式的用户名": "这是一个非常非常长的而且完全不是JSON格式的回答，超过二十个字了",  # breaks R1
}


def teacher_reply(messages: list[dict]) -> str:
    user = messages[-1]["content"]
    if "每个提问都必须让回答者用到下面这条规则" in user:
        if "25元" in user:
            return '["会员怎么开通？", "今天天气", "会员能退吗？"]'
        return '```json\n["输出JSON格式的用户名", "用JSON给我一个例子",]\n```'  # trailing comma: repaired
    if "故意违反" in user:
        return VIOLATIONS[user.split("用户的问题：")[1].split("\n")[0]]
    assert messages[0]["role"] == "system" and "[R1] 不超过20字" in messages[0]["content"]
    return ANSWERS[user]


@pytest.fixture
def prompts_file(tmp_path) -> Path:
    p = tmp_path / "prompts.jsonl"
    p.write_text("".join(json.dumps({"prompt": t}, ensure_ascii=False) + "\n" for t in PROMPTS), encoding="utf-8")
    return p


def test_rules_sft_and_dpo_with_a_scripted_teacher(rules_file, prompts_file, tmp_path):
    with running(scripted(teacher_reply)) as base:
        common = ["--rules", str(rules_file), "--prompts", str(prompts_file), "--teacher-url", base + "/v1"]
        common += ["--min-prompts", "2", "--cache-dir", str(tmp_path / "cache")]
        r = run("sft", *common, "--out", str(tmp_path / "sft.jsonl"))
        assert r.exit_code == 0, r.output
        r2 = run("dpo", *common, "--out", str(tmp_path / "dpo.jsonl"))
        assert r2.exit_code == 0, r2.output
    rep = json.loads((tmp_path / "sft.report.json").read_text())
    assert (rep["prompts"], rep["kept"], rep["rejected"]) == (6, 3, 3)
    per = rep["per_rule"]
    assert per["R1"] == {"prompts_given": 3, "passed": 5, "failed": 1}
    assert per["R2"] == {"prompts_given": 1, "prompts_generated": 1, "prompts_rejected": 1, "passed": 1, "failed": 1}
    assert per["R3"] == {"prompts_given": 3}
    assert per["R4"] == {"prompts_given": 0, "prompts_generated": 2, "prompts_rejected": 0, "passed": 1, "failed": 1}
    sft = load_conversations(tmp_path / "sft.jsonl")
    assert [c.messages[0]["content"] for c in sft.rows] == ["会员多少钱？", "你好", "输出JSON格式的用户名"]
    rows = [json.loads(x) for x in (tmp_path / "sft.jsonl").read_text().splitlines()]
    assert rows[2]["rule_ids"] == ["R4"]
    rejects = [json.loads(x) for x in (tmp_path / "sft.rejects.jsonl").read_text().splitlines()]
    assert {tuple(x["failed"]) for x in rejects} == {("R1",), ("R2",), ("R4",)}

    drep = json.loads((tmp_path / "dpo.report.json").read_text())
    assert (drep["compliant"], drep["pairs"]) == (3, 2)
    # least-asked first: the conditional rules R2 and R4 get verified pairs (a rotation asked R1 three times)
    got = {
        rid: {k: v for k, v in c.items() if k.startswith(("violation", "not_"))} for rid, c in drep["per_rule"].items()
    }
    verified = {"violation_asked": 1, "violation_verified": 1}
    assert got == {"R1": {"violation_asked": 1, "not_violated": 1}, "R2": verified, "R3": {}, "R4": verified}
    # one warning line per rule no generated row targets, with the reason
    assert rep["untargeted"] == []
    heads = [w.split(":")[1].strip() for w in drep["untargeted"]]
    assert heads == [f"rule {r} (global) is targeted by no generated row" for r in ("R1", "R3")]
    lines = [x for x in r2.output.splitlines() if x.startswith("warning: rule")]
    assert lines == drep["untargeted"] and "never broke it" in lines[0] and "has no check" in lines[1]
    pairs = load_rows(tmp_path / "dpo.jsonl")
    assert pairs.format == "preference" and pairs.kept == 2
    assert pairs.rows[0].chosen == "会员每月25元。" and pairs.rows[0].rejected == VIOLATIONS["会员多少钱？"]
    assert [json.loads(x)["violated"] for x in (tmp_path / "dpo.jsonl").read_text().splitlines()] == [["R2"], ["R4"]]


def test_rules_eval_endpoint_with_judge_and_local_model(rules_file, prompts_file, tmp_path, tiny_model_dir, tokenizer):
    """Replies from real `weitiao serve` (tiny model); judge scripted: pass, fail, unparseable."""
    verdicts = iter(['{"R3": "pass"}', '[{"id": "R3", "verdict": "fail"}]', "我觉得还行"])
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    app = create_app(model, tokenizer, resolve_template(tokenizer), ServeSettings(model_name="tiny"))
    out = tmp_path / "eval.json"
    with running(app) as base, running(scripted(lambda m: next(verdicts))) as judge:
        r = run("eval", "--rules", str(rules_file), "--prompts", str(prompts_file), "--endpoint", base + "/v1",
                "--endpoint-model", "tiny", "--max-new-tokens", "12", "--judge-url", judge + "/v1",
                "--out", str(out))  # fmt: skip
    assert r.exit_code == 0, r.output
    rep = json.loads(out.read_text())
    replies = [x["reply"] for x in rep["replies_text"]]
    r1_pass = sum(len(t.strip()) <= 20 for t in replies)  # independent recomputation of R1
    assert rep["per_rule"]["R1"].get("check_pass", 0) == r1_pass
    assert rep["per_rule"]["R1"].get("check_fail", 0) == 3 - r1_pass
    assert rep["per_rule"]["R2"]["exercised"] == 1 and rep["per_rule"]["R4"].get("exercised", 0) == 0
    r3 = rep["per_rule"]["R3"]
    assert (r3["judge_pass"], r3["judge_fail"], r3["judge_missing"], r3["compliance"]) == (1, 1, 1, 0.5)

    out2 = tmp_path / "local.json"
    r = run("eval", "--rules", str(rules_file), "--prompts", str(prompts_file), "--model", str(tiny_model_dir),
            "--max-new-tokens", "12", "--out", str(out2))  # fmt: skip
    assert r.exit_code == 0, r.output
    local = json.loads(out2.read_text())
    assert local["replies"] == 3 and local["per_rule"]["R1"]["exercised"] == 3
    assert [x["reply"] for x in local["replies_text"]] == replies  # greedy: local path = served path


def test_eval_needs_a_model_or_endpoint(rules_file, prompts_file):
    r = run("eval", "--rules", str(rules_file), "--prompts", str(prompts_file))
    assert r.exit_code != 0 and isinstance(r.exception, UserError)


def test_rule_subset_by_ids(rules_file):
    assert [r.id for r in load_rules(rules_file, ["R4", "R1"]).rules] == ["R1", "R4"]
    with pytest.raises(UserError, match="--ids: .* has no rule R9"):
        load_rules(rules_file, ["R1", "R9"])


def test_untargeted_rules_get_one_warning_line_each(rules_file):
    from weitiao.safety.rules_build import Tally, untargeted

    rs = load_rules(rules_file)
    t = Tally()
    t.add("R2", "prompts_given", 0)  # no prompt matches 会员, the teacher's were rejected
    t.add("R4", "prompts_given", 2)
    t.add("R4", "failed", 2)  # both answers failed the JSON check
    warn = untargeted(rs, t, {"R1", "R3"}, "sft")
    assert len(warn) == 2
    assert warn[0].startswith("warning: rule R2 (conditional, when '会员') is targeted by no generated row: no prompt")
    assert warn[1].startswith("warning: rule R4 (conditional, when 'JSON')") and "every answer to its 2" in warn[1]
    assert untargeted(rs, t, {"R1", "R2", "R3", "R4"}, "sft") == []  # negative control: all targeted


def test_coverage_refuses_a_rule_id_the_file_does_not_have(rules_file, tmp_path):
    """A row naming R44 (a typo for R4) exercised nothing and coverage said nothing; an id outside an --ids subset
    but in the file is fine."""
    row = {"messages": [{"role": "user", "content": "讲个笑话"}, {"role": "assistant", "content": "哈"}]}
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({**row, "rule_ids": ["R44"]}, ensure_ascii=False) + "\n", encoding="utf-8")
    r = run("coverage", str(data), "--rules", str(rules_file))
    assert (
        isinstance(r.exception, UserError)
        and str(r.exception) == f"{data}:1: rule_ids: 'R44' is no rule of {rules_file}"
    )
    data.write_text(json.dumps({**row, "rule_ids": ["R4"]}, ensure_ascii=False) + "\n", encoding="utf-8")
    assert run("coverage", str(data), "--rules", str(rules_file), "--ids", "R1").exit_code == 0
    rep = coverage(load_rules(rules_file), [to_sample({**row, "rule_ids": ["R4"]}, "x")])
    assert rep["per_rule"]["R4"]["exercised"] == 1


def test_zero_samples_or_violations_are_refused(rules_file):
    """--samples 0 asked nothing and --violations 0 asked for no violation: both wrote an empty file with exit 0."""
    from weitiao.safety import rules_build as rb

    rs = load_rules(rules_file)
    with pytest.raises(UserError, match=r"^--samples 0: must be ≥ 1$"):
        rb.compliant_answers(rs, [], None, rb.Tally(), samples=0)
    with pytest.raises(UserError, match=r"^--violations 0: must be ≥ 1$"):
        rb.violation_pairs(rs, [], None, rb.Tally(), violations=0)


def test_compliance_says_how_many_replies_no_check_or_judge_decided(rules_file):
    """R3 (no check) is exercised by every prompt: without a judge every reply counted as fully compliant and nothing
    said that R3 was never looked at; `unverified` says it (1.0), and a judge's pass/fail verdicts clear it."""
    from weitiao.safety import rules_build as rb
    from weitiao.safety.rules import Prompt

    rs = load_rules(rules_file)
    items = [(Prompt("你好"), "你好呀"), (Prompt("会员多少钱"), "会员25元"), (Prompt("会员呢"), "很便宜")]
    rep = rb.compliance(rs, items, None)
    assert (rep["fully_compliant"], rep["unverified"]) == (2 / 3, 1.0)  # the third fails R2's check
    rep = rb.compliance(rs, items, [{"R3": "pass"}, {"R3": "fail"}, {"R3": "missing"}])
    assert (rep["fully_compliant"], rep["unverified"]) == (1 / 3, 1 / 3)


def test_outputs_that_are_inputs_are_refused_before_any_work(rules_file, prompts_file, tmp_path):
    """`rules coverage data.jsonl --out data.jsonl` replaced a data file weitiao had written with the report;
    `rules sft --out P` equal to --prompts could do the same. Refused before any work, the file left as it was."""
    from weitiao.io import write_jsonl

    data = tmp_path / "ours.jsonl"
    write_jsonl(data, [{"instruction": "会员多少钱？", "output": "25元"}])  # ours: claim_outputs alone let it go
    before = data.read_bytes()
    r = run("coverage", str(data), "--rules", str(rules_file), "--out", str(data))
    assert isinstance(r.exception, UserError) and "is also an input" in str(r.exception), r.output
    assert data.read_bytes() == before
    r = run("sft", "--rules", str(rules_file), "--prompts", str(prompts_file), "--out", str(prompts_file),
            "--teacher-url", "http://127.0.0.1:9/v1")  # fmt: skip
    assert "is also an input" in str(r.exception), r.output  # before any teacher request (port 9: none answers)
    r = run("coverage", str(data), "--rules", str(rules_file), "--out", str(tmp_path / "cov.json"))
    assert r.exit_code == 0, r.output  # negative control: another --out is written


def test_no_row_kept_is_an_error_not_an_empty_file(rules_file, prompts_file, tmp_path):
    """Every teacher answer failing its checks wrote an empty file with exit 0."""
    with running(scripted(lambda msgs: "呵" * 30)) as base:  # over R1's 20 characters: every answer fails
        r = run("sft", "--rules", str(rules_file), "--prompts", str(prompts_file), "--teacher-url", base + "/v1",
                "--min-prompts", "0", "--cache-dir", "", "--out", str(tmp_path / "sft.jsonl"))  # fmt: skip
    assert isinstance(r.exception, UserError) and "no row kept" in str(r.exception), r.output
    assert not (tmp_path / "sft.jsonl").exists() and (tmp_path / "sft.rejects.jsonl").exists()


def test_rules_eval_with_a_judge_that_answered_nothing_exits_non_zero(
    rules_file, prompts_file, tmp_path, tiny_model_dir
):
    """A --judge-url nobody listens on: every judged rule was counted '?' and the table printed with exit 0, read as an
    evaluation; its error said 'set --teacher-url', a flag rules eval does not have. Now one line naming --judge-url."""
    from conftest import free_port

    judge = f"http://127.0.0.1:{free_port()}/v1"
    r = run("eval", "--rules", str(rules_file), "--prompts", str(prompts_file), "--model", str(tiny_model_dir),
            "--max-new-tokens", "4", "--judge-url", judge)  # fmt: skip
    assert isinstance(r.exception, UserError), r.output
    msg = str(r.exception)
    assert msg.startswith(f"--judge-url {judge}: the judge answered none of the") and "set --judge-url" in msg
    assert "--teacher-url" not in msg


def test_rules_eval_with_a_judge_that_gave_no_verdict_exits_non_zero(rules_file, prompts_file):
    """A judge that answered every request in prose (no JSON, no pass/fail): each judged rule was counted '?' and the
    run printed 'fully compliant 1.000' with exit 0. Now the same one line as a judge that answered nothing."""
    with running(scripted(lambda m: "好的")) as base, running(scripted(lambda m: "我觉得都还行")) as judge:
        common = ["eval", "--rules", str(rules_file), "--prompts", str(prompts_file), "--endpoint", base + "/v1"]
        r = run(*common, "--judge-url", judge + "/v1")
        assert isinstance(r.exception, UserError), r.output
        assert "the judge answered none of the 3 requests (reply 0: no verdict (no JSON in reply)" in str(r.exception)
        r = run(*common)  # negative control: no judge, and the share nothing decided is in the title
    assert r.exit_code == 0, r.output
    assert "unverified 1.000" in r.output


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--model", "demo"], "--model: the replies would come from --endpoint"),
        (["--adapter", "runs/x"], "--adapter: the replies would come from --endpoint"),
        (["--judge-all"], "--judge-all: no judge is asked without --judge-url"),
        (["--judge-model", "gpt"], "--judge-model: no judge is asked without --judge-url"),
    ],
)
def test_rules_eval_refuses_options_the_run_would_ignore(rules_file, prompts_file, flags, message):
    """--endpoint beside --model/--adapter asked the endpoint and ignored the model (the table titled with the
    adapter); --judge-all/--judge-model without --judge-url asked no judge. Refused before any request."""
    common = ["eval", "--rules", str(rules_file), "--prompts", str(prompts_file), "--endpoint", "http://127.0.0.1:9/v1"]
    r = run(*common, *flags)
    assert isinstance(r.exception, UserError) and str(r.exception).startswith(message), r.output
    r = run("eval", "--rules", str(rules_file), "--prompts", str(prompts_file), "--endpoint-model", "m")
    assert str(r.exception).startswith("--endpoint-model: names the model behind --endpoint"), r.output


def test_prompt_rule_ids_from_a_csv_cell_are_one_id_and_checked(tmp_path, rules_file):
    """A prompts CSV's rule_ids cell R4 was read letter by letter (['R', '4']): the prompt exercised nothing it was made
    for and `rules sft/dpo` wrote rule_ids ['R', '4']. A text is one id; an id no rule of the file has is refused."""
    from weitiao.safety.rules import read_prompts

    rs = load_rules(rules_file)
    (tmp_path / "p.csv").write_text("prompt,rule_ids\n请介绍一下你们的产品,R4\n", encoding="utf-8")
    assert [p.rule_ids for p in read_prompts(tmp_path / "p.csv", rs)] == [["R4"]]
    (tmp_path / "p.jsonl").write_text(
        json.dumps({"prompt": "你好", "rule_ids": ["R4", "R44"]}) + "\n", encoding="utf-8"
    )
    with pytest.raises(UserError, match=rf"p\.jsonl:1: rule_ids: 'R44' is no rule of {re.escape(str(rules_file))}"):
        read_prompts(tmp_path / "p.jsonl", rs)
    assert read_prompts(tmp_path / "p.jsonl")[0].rule_ids == ["R4", "R44"]  # control: without the rules, unchecked


def test_rule_prompts_with_a_system_prompt_or_earlier_turns_are_refused(tmp_path):
    """`rules sft|dpo|eval` send the last user turn alone: a row's system prompt and earlier turns were dropped, and
    `rules eval` scored the model on a conversation other than the file's."""
    from weitiao.safety.rules import read_prompts

    turns = [{"role": "user", "content": "我买了本书"}, {"role": "assistant", "content": "好的"},
             {"role": "user", "content": "能退吗？"}]  # fmt: skip
    for rows, what in (([{"prompt": "你好"}, {"prompt": "怎么退款？", "system": "你是书店客服"}], "a system prompt"),
                       ([{"messages": turns}], "earlier turns")):  # fmt: skip
        path = tmp_path / "p.jsonl"
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        with pytest.raises(UserError, match=rf"p\.jsonl:{len(rows)}: {what}: rules sft\|dpo\|eval send one user turn"):
            read_prompts(path)
    path.write_text(json.dumps({"messages": turns[-1:]}, ensure_ascii=False) + "\n", encoding="utf-8")  # control
    assert [p.text for p in read_prompts(path)] == ["能退吗？"]
