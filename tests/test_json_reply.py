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
