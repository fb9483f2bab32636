"""`weitiao logs` as a user meets it: synth → dwell/chat with a report, --print-sql, --show-config, errors."""

import json

import duckdb
import pytest
import yaml
from typer.testing import CliRunner

from weitiao.errors import UserError
from weitiao.logs.commands import app

runner = CliRunner()


def logs(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_synth_then_dwell_writes_pairs_and_report(tmp_path):
    r = logs("synth", "--kind", "dwell", "--n", 30000, "--style", "xhs", "--out", tmp_path / "s", "--no-progress")
    assert r.exit_code == 0, r.output
    assert "next: weitiao logs dwell" in r.output and (tmp_path / "s" / "truth.parquet").exists()
    out = tmp_path / "run" / "pairs.jsonl"
    r = logs("dwell", tmp_path / "s" / "events.parquet", "--content", tmp_path / "s" / "content.parquet",
             "--profile", "xhs", "--truth", tmp_path / "s" / "truth.parquet", "--out", out,
             "--no-progress")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "events 30,000 = " in r.output and "precision vs truth" in r.output and "engagement" in r.output
    rep = json.loads((tmp_path / "run" / "report.json").read_text(encoding="utf-8"))
    assert rep["ledger_totals"]["events"] == {"total": 30000, "expected": 30000}
    assert rep["precision"]["all"]["pairs"] == rep["pairs"] == len(out.read_text(encoding="utf-8").splitlines())
    assert (tmp_path / "run" / "report.html").exists()


def test_chat_json_report(tmp_path):
    assert (
        logs("synth", "--kind", "chat", "--n", 3000, "--out", tmp_path, "--no-progress", "--format", "csv").exit_code
        == 0
    )
    r = logs("chat", tmp_path / "events.csv", "--responses", tmp_path / "responses.csv", "--json",
             "--out", tmp_path / "o" / "pairs.jsonl", "--set", "cross_session.enabled=true")  # fmt: skip
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output)
    assert rep["kind"] == "chat" and rep["pairs"] > 0 and set(rep["scopes"]) <= {"session", "cross_session"}
    assert rep["config"]["cross_session"]["enabled"] is True


def test_print_sql_and_show_config_need_no_logs(tmp_path):
    r = logs("dwell", "--print-sql", "--profile", "xhs", "--set", "rel_margin=0.45")
    assert r.exit_code == 0, r.output
    sql = r.output
    assert sql.startswith("-- weitiao logs dwell · profile xhs") and "* 1.45" in sql and "'not_similar'" in sql
    con = duckdb.connect()  # the printed script runs as-is on empty tables of the documented shape
    con.execute(
        "CREATE TABLE content(content_id TEXT, context TEXT, prompt TEXT, text TEXT, length_chars INT, images INT)"
    )
    con.execute(
        "CREATE TABLE events(content_id TEXT, user_id TEXT, ts TIMESTAMP, dwell_s DOUBLE, position INT, "
        "liked BOOL, collected BOOL)"
    )
    con.execute(sql)
    assert con.execute("SELECT count(*) FROM wt_pairs").fetchone() == (0,)
    r = logs("chat", "--print-sql", "--set", "cross_session.enabled=true", "--set", "cross_session.match=ngram")
    assert r.exit_code == 0 and "list_transform" in r.output.lower() and "'cross_session'" in r.output
    r = logs("chat", "--print-sql", "--engine", "spark", "--set", "cross_session.enabled=true", "--set",
             "cross_session.match=ngram")  # fmt: skip
    assert r.exit_code == 0 and "spark SQL" in r.output and "CACHE TABLE wt_decided;" in r.output
    assert "TRANSFORM(" in r.output and "list_transform" not in r.output.lower()
    r = logs("dwell", "--show-config", "--profile", "zhihu")
    cfg = yaml.safe_load(r.output)
    assert cfg["kind"] == "dwell" and cfg["normalize"] == "completion" and cfg["position_correction"] is True


@pytest.mark.parametrize(
    "args,message",
    [
        (["dwell"], "EVENTS: missing"),
        (
            ["dwell", "x.parquet", "--set", "min_view=3"],
            "command line min_view=3: min_view: Extra inputs are not permitted",
        ),
        (["chat", "e.parquet"], "--responses: missing"),
        (["synth", "--kind", "clicks"], "--kind 'clicks': use dwell or chat"),
        (["dwell", "nope.parquet"], "nope.parquet: file not found"),
        (["dwell", "s3a://bucket/ev.parquet"], "s3a://bucket/ev.parquet: the DuckDB engine reads local files"),
        (["dwell", "--print-sql", "--engine", "flink"], "--engine 'flink': use duckdb or spark"),
        (["dwell", "x.parquet", "--engine", "spark", "--threads", "2"], "--threads: DuckDB only"),
        (["chat", "e.parquet", "--responses", "r.parquet", "--spark-master", "local[2]"], "--spark-master: only"),
        # printing alone runs nothing: an option only a run uses is refused (it was ignored: no pairs, exit 0)
        (["chat", "--print-sql", "--responses", "r.csv", "--out", "o/p.jsonl"], "--out, --responses: only used when"),
        (["dwell", "--show-config", "--truth", "t.parquet", "--content", "c.parquet"], "--truth, --content: only"),
        (["dwell", "--print-sql", "--json"], "--json: only used when pairing EVENTS"),
    ],
)
def test_errors_are_user_errors(args, message):
    r = logs(*args)
    assert isinstance(r.exception, UserError) and message in str(r.exception)
    assert "\n" not in str(r.exception)


def test_a_profile_base_file_is_beside_the_profile(tmp_path, monkeypatch):
    """`base: common.yaml` is the file next to the profile that names it, from any cwd (it was read from the cwd:
    'profile file not found', or another folder's common.yaml silently); a cycle through `../` is still named."""
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "common.yaml").write_text("kind: dwell\nbase: zhihu\nrel_margin: 0.31\n")
    (tmp_path / "cfg" / "my.yaml").write_text("kind: dwell\nbase: common.yaml\n")
    (tmp_path / "cfg" / "loop.yaml").write_text("kind: dwell\nbase: ../cfg/loop.yaml\n")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "common.yaml").write_text("kind: dwell\nbase: xhs\nrel_margin: 0.77\n")
    monkeypatch.chdir(tmp_path / "run")
    cfg = yaml.safe_load(logs("dwell", "--show-config", "--profile", "../cfg/my.yaml").output)
    assert cfg["profile"] == "my" and cfg["rel_margin"] == 0.31 and cfg["normalize"] == "completion"  # zhihu's
    r = logs("dwell", "--show-config", "--profile", "../cfg/loop.yaml")
    assert isinstance(r.exception, UserError) and "profiles include each other" in str(r.exception)
