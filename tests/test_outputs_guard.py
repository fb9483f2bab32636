"""Nothing we did not create is overwritten: an --out that is an input, or an existing file weitiao did not write
(or that was edited since), is refused before any work; weitiao's own earlier output may be replaced."""

from __future__ import annotations

import json
import os

import pytest
from typer.testing import CliRunner

from weitiao.dataeng import mix
from weitiao.errors import UserError
from weitiao.io import atomic_write_text, claim_outputs, written_by_us
from weitiao.logs.commands import app as logs_app
from weitiao.safety.commands import app as pii_app


def rows(path, n=4):
    rows = (json.dumps({"instruction": f"{path.stem}问{i}", "output": f"答{i}"}, ensure_ascii=False) for i in range(n))
    path.write_text("".join(r + "\n" for r in rows), encoding="utf-8")
    return path


def test_claim_tells_our_files_from_users_and_edited_ones(tmp_path):
    mine, theirs = tmp_path / "mine.json", tmp_path / "theirs.json"
    theirs.write_text("{}")
    atomic_write_text(mine, "{}")
    claim_outputs([mine, tmp_path / "new.json"])  # ours, and a file that does not exist yet: fine
    with pytest.raises(UserError, match="theirs.json: exists and was not written by weitiao"):
        claim_outputs([theirs])
    with pytest.raises(UserError, match="--out .*mine.json: is also an input"):
        claim_outputs([mine], [tmp_path / "." / "mine.json"])
    mine.write_text('{"edited": 1}')  # the user changed our output: it is theirs now
    assert not written_by_us(mine)
    with pytest.raises(UserError, match="was changed since"):
        claim_outputs([mine])


def test_data_mix_never_overwrites_its_input_or_a_users_file(tmp_path):
    a, b = rows(tmp_path / "a.jsonl"), rows(tmp_path / "b.jsonl", 3)
    before = a.read_bytes()
    with pytest.raises(UserError, match="is also an input"):
        mix.run([f"{a}:0.5", f"{b}:0.5"], a, total=6)
    assert a.read_bytes() == before
    report = tmp_path / "m.jsonl.report.json"  # a user's file where the report would go
    report.write_text("mine")
    with pytest.raises(UserError, match="m.jsonl.report.json: exists and was not written by weitiao"):
        mix.run([f"{a}:0.5", f"{b}:0.5"], tmp_path / "m.jsonl", total=6)
    assert report.read_text() == "mine" and not (tmp_path / "m.jsonl").exists()  # refused before any work
    os.remove(report)
    for _ in range(2):  # negative control: our own earlier output is replaced
        mix.run([f"{a}:0.5", f"{b}:0.5"], tmp_path / "m.jsonl", total=6)
    assert len((tmp_path / "m.jsonl").read_text().splitlines()) == 6


def test_logs_report_beside_the_pairs_is_not_a_users_file(tmp_path):
    r = CliRunner().invoke(logs_app, ["synth", "--kind", "chat", "--n", "2000", "--out", str(tmp_path / "s"),
                                      "--no-progress"])  # fmt: skip
    assert r.exit_code == 0, r.output
    out = tmp_path / "mine" / "pairs.jsonl"
    out.parent.mkdir()
    (out.parent / "report.html").write_text("<p>my notes</p>")
    args = ["chat", str(tmp_path / "s" / "events.parquet"), "--responses", str(tmp_path / "s" / "responses.parquet"),
            "--out", str(out), "--no-progress"]  # fmt: skip
    r = CliRunner().invoke(logs_app, args)
    assert isinstance(r.exception, UserError) and "report.html: exists and was not written" in str(r.exception)
    assert (out.parent / "report.html").read_text() == "<p>my notes</p>" and not out.exists()
    r = CliRunner().invoke(logs_app, [*args[:-3], "--out", str(tmp_path / "s" / "events.parquet"), "--no-progress"])
    assert isinstance(r.exception, UserError) and "is also an input" in str(r.exception)
    synth_again = CliRunner().invoke(logs_app, ["synth", "--kind", "chat", "--n", "2000", "--out",
                                                str(tmp_path / "s"), "--no-progress"])  # fmt: skip
    assert synth_again.exit_code == 0, synth_again.output  # its own files: replaced


def test_pii_scrub_two_inputs_into_one_file_and_refusals_over_a_users_file(tmp_path):
    (tmp_path / "in").mkdir()
    a, b, c = rows(tmp_path / "in" / "u.jsonl"), rows(tmp_path / "u.jsonl"), rows(tmp_path / "v.jsonl")
    r = CliRunner().invoke(pii_app, ["scrub", str(a), str(b), "--out", str(tmp_path / "o")])
    assert isinstance(r.exception, UserError) and "two inputs would be scrubbed into one file" in str(r.exception)
    r = CliRunner().invoke(pii_app, ["scrub", str(a), str(c), "--out", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output  # negative control: different names
    theirs = tmp_path / "r.jsonl"
    theirs.write_text("keep")
    r = CliRunner().invoke(pii_app, ["refusals", "--n", "3", "--out", str(theirs)])
    assert isinstance(r.exception, UserError) and theirs.read_text() == "keep"


def test_one_path_named_for_two_outputs_is_refused(tmp_path):
    """`arena rank --json X --plot X` wrote the PNG over the JSON, and `logs chat --out D/report.json` the report over
    the pairs, both with exit 0 and 'wrote'; now refused before any work."""
    from weitiao.eval.commands import arena_app

    battles = tmp_path / "b.json"
    battle = [{"model_a": "甲", "model_b": "乙", "winner": w} for w in ["model_a", "model_b"] * 3]
    battles.write_text(json.dumps(battle))
    same = tmp_path / "ratings.out"
    r = CliRunner().invoke(arena_app, ["rank", "--battles", str(battles), "--json", str(same), "--plot", str(same)])
    assert isinstance(r.exception, UserError) and "named for two outputs" in str(r.exception) and not same.exists()
    with pytest.raises(UserError, match="named for two outputs"):
        claim_outputs([tmp_path / "a.jsonl", tmp_path / "." / "a.jsonl"])
    r = CliRunner().invoke(logs_app, ["synth", "--kind", "chat", "--n", "2000", "--out", str(tmp_path / "s"),
                                      "--no-progress"])  # fmt: skip
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(logs_app, ["chat", str(tmp_path / "s" / "events.parquet"), "--responses",
                                      str(tmp_path / "s" / "responses.parquet"), "--out",
                                      str(tmp_path / "o" / "report.json"), "--no-progress"])  # fmt: skip
    assert isinstance(r.exception, UserError) and "named for two outputs" in str(r.exception)
    assert not (tmp_path / "o").exists()
    claim_outputs([tmp_path / "a.jsonl", tmp_path / "b.jsonl"])  # negative control: two paths


def test_logs_synth_claims_every_table_before_writing_any(tmp_path):
    """synth checked each table only as it wrote it: a user's truth.parquet in --out was refused after events and
    content had already been written (a half-new folder, exit 1); and --style was silently ignored for --kind chat."""
    out = tmp_path / "s"
    out.mkdir()
    (out / "truth.parquet").write_text("我的标注")
    for kind in ("dwell", "chat"):
        r = CliRunner().invoke(logs_app, ["synth", "--kind", kind, "--n", "500", "--out", str(out), "--no-progress"])
        assert isinstance(r.exception, UserError) and "truth.parquet: exists and was not written" in str(r.exception)
        assert sorted(p.name for p in out.iterdir()) == ["truth.parquet"]  # nothing written before the refusal
    r = CliRunner().invoke(logs_app, ["synth", "--kind", "chat", "--style", "xhs", "--out", str(tmp_path / "c")])
    assert isinstance(r.exception, UserError) and "--style xhs: dwell only" in str(r.exception)
    r = CliRunner().invoke(logs_app, ["synth", "--kind", "dwell", "--style", "xhs", "--n", "500", "--out",
                                      str(tmp_path / "d"), "--no-progress"])  # fmt: skip
    assert r.exit_code == 0, r.output  # negative control


def test_logs_that_make_no_pair_exit_non_zero(tmp_path):
    """`logs chat` on events that pair nothing printed 'wrote 0 preference pairs' with exit 0; now the report is
    written (it says where every event went) and the command fails in one line."""
    ev, resp = tmp_path / "ev.jsonl", tmp_path / "resp.jsonl"
    ev.write_text('{"response_id": "r1", "event": "thumbs_up", "ts": 1740787200, "value": null}\n', encoding="utf-8")
    row = {"response_id": "r1", "session_id": "s1", "turn": 1, "ts": 1740787100, "prompt": "你好", "response": "你好呀"}
    resp.write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
    out = tmp_path / "o" / "pairs.jsonl"
    for extra in ([], ["--json"]):
        r = CliRunner().invoke(logs_app, ["chat", str(ev), "--responses", str(resp), "--out", str(out),
                                          "--no-progress", *extra])  # fmt: skip
        assert isinstance(r.exception, UserError) and "no preference pair from 1 events" in str(r.exception)
        assert json.loads((out.parent / "report.json").read_text())["pairs"] == 0


def test_logs_synth_csv_into_a_folder_with_a_quote_in_its_name(tmp_path):
    """--out "o'x" --format csv/jsonl ended DuckDB's COPY ... TO '...' string at the quote: a parser traceback."""
    out = tmp_path / "o'x"
    r = CliRunner().invoke(logs_app, ["synth", "--kind", "chat", "--n", "500", "--format", "csv", "--out", str(out),
                                      "--no-progress"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert (out / "events.csv").read_text(encoding="utf-8").startswith("response_id,")
