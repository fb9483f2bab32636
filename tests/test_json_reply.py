"""The one parser for JSON in model replies: repaired for teacher answers, as written for rule checks."""

from __future__ import annotations

import pytest

from weitiao.json_reply import parse_json_reply


@pytest.mark.parametrize(
    "reply, value",
    [('{"a": 1}', {"a": 1}), ('```json\n{"a": 1}\n```', {"a": 1}), ("```\n[1, 2]```", [1, 2]), ("3", 3)],
)
def test_as_written_takes_the_reply_or_one_whole_fence(reply, value):
    assert parse_json_reply(reply, repair=False) == value


@pytest.mark.parametrize("reply", ['好的：{"a": 1}', '{"a": 1,}', '{"a"：1}', 'x ```{"a": 1}```'])
def test_as_written_refuses_what_repair_accepts(reply):
    """Negative control for the rule checks: prose, trailing commas, full-width colons are not valid JSON
    as written, though the teacher path repairs each of them."""
    with pytest.raises(ValueError):
        parse_json_reply(reply, repair=False)
    assert parse_json_reply(reply) == {"a": 1}


def test_rule_json_check_uses_the_unrepaired_parse():
    from weitiao.safety.rules import Check

    check = Check(json_schema={"type": "object", "required": ["a"]})
    assert check.failures('```json\n{"a": 1}\n```') == []
    assert check.failures('{"a": 1,}')[0].startswith("check.json_schema: not JSON")


def test_a_reply_that_is_json_is_read_though_its_strings_hold_a_code_fence():
    """kb2sft asked about a chunk quoting a code block: the teacher's valid JSON array, whose answers hold ``` (as
    escaped text), was cut at the first ``` pair as if fenced, and the chunk counted in 'replies not parseable as
    JSON' ("no JSON in reply"): its QA pairs lost; fenced, the same array read as its last object alone."""
    import json

    qas = [
        {"question": "怎么安装？", "answer": "运行：\n```\npip install weitiao\n```\n即可。"},
        {"question": "q", "answer": "a"},
    ]
    reply = json.dumps(qas, ensure_ascii=False)
    assert parse_json_reply(reply) == qas
    assert parse_json_reply(json.dumps({"score": 7, "reason": "含 ``` 代码块"}, ensure_ascii=False))["score"] == 7
    assert parse_json_reply(f"好的：\n```json\n{reply}\n```\n以上。") == qas  # fenced, prose around it
    # control: fences as models write them are still read
    assert parse_json_reply('```json\n[{"a": 1,},]\n```') == [{"a": 1}]
    assert parse_json_reply('看：```{"a": 1}``` 完') == {"a": 1}
