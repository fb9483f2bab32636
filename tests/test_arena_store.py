"""Arena store and API as a user meets them: a foreign SQLite file, unknown vote fields, concurrent voters,
restarts, and `arena rank` inputs that used to give a confident-looking table (one voter, no rounds)."""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import random
import re
import sqlite3
import threading
import uuid

import httpx
import pytest
from loopback import running
from typer.testing import CliRunner

from weitiao.errors import UserError
from weitiao.eval.arena.app import ArenaLimits, create_app
from weitiao.eval.arena.store import SCHEMA, ArenaStore
from weitiao.eval.commands import arena_app

OFF = ArenaLimits(vote_interval_s=0, voter_votes_per_minute=0, address_votes_per_minute=0, pair_votes=0)


def fill(path) -> ArenaStore:
    s = ArenaStore(path)
    s.serve_answers([{"prompt": f"问题{i}", "model": m, "answer": f"{m} 答 {i}"} for i in range(4) for m in "xyz"])
    return s


def test_a_foreign_sqlite_file_is_refused_and_left_untouched(tmp_path):
    path = tmp_path / "mine.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE notes (x TEXT)")
        db.execute("INSERT INTO notes VALUES ('mine')")
    db.close()
    before = path.read_bytes()
    with pytest.raises(UserError, match=r"did not write \(tables: notes\); left untouched"):
        ArenaStore(path)
    r = CliRunner().invoke(arena_app, ["export", str(tmp_path / "out.json"), "--db", str(path)])
    assert r.exit_code != 0 and "did not write" in str(r.exception)  # was: exit 0, "wrote 0 battles"
    assert path.read_bytes() == before and not (tmp_path / "mine.sqlite-wal").exists()
    assert not (tmp_path / "out.json").exists()
    # ours opens again, with its votes
    ours = fill(tmp_path / "arena.sqlite")
    ours.import_battles([{"model_a": "x", "model_b": "y", "winner": "tie"}])
    with sqlite3.connect(ours.path) as db:
        db.execute("ANALYZE")  # SQLite's own sqlite_stat1 table does not make it foreign
    db.close()
    assert len(ArenaStore(tmp_path / "arena.sqlite", create=False).votes()) == 1


def _open(path: str, out) -> None:
    try:
        ArenaStore(path)
        out.put("ok")
    except Exception as e:  # noqa: BLE001 - reported to the parent
        out.put(repr(e))


def test_processes_opening_a_new_store_at_once_all_succeed(tmp_path):
    ctx = mp.get_context("fork")
    got = []
    for trial in range(12):  # before: some saw a half-made schema (refused as foreign) or 'database is locked'
        out, path = ctx.Queue(), str(tmp_path / f"{trial}.sqlite")
        procs = [ctx.Process(target=_open, args=(path, out)) for _ in range(4)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        got += [out.get() for _ in procs]
    assert got == ["ok"] * 48


def _votes(path: str, voter: str, n: int) -> None:
    st, rng = ArenaStore(path), random.Random(voter)
    for _ in range(n):
        st.record_vote(uuid.uuid4().hex, {**st.draw_round(rng), "issued": 0.0}, "a", voter)


def test_concurrent_votes_from_threads_and_processes_are_all_kept(tmp_path):
    path = str(tmp_path / "arena.sqlite")
    fill(path)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_votes, args=(path, f"p{i}", 30)) for i in range(2)]
    threads = [threading.Thread(target=_votes, args=(path, f"t{i}", 30)) for i in range(3)]
    for w in procs + threads:
        w.start()
    for w in procs + threads:
        w.join()
    assert [p.exitcode for p in procs] == [0, 0]
    got = ArenaStore(path, create=False).votes()
    assert len(got) == 150 and len({v["round_id"] for v in got}) == 150


def test_vote_api_refuses_unknown_fields_in_one_line_and_survives_a_restart(tmp_path):
    store = fill(tmp_path / "arena.sqlite")
    with running(create_app(store, seed=0, limits=OFF)) as base, httpx.Client(base_url=base) as c:
        r = c.get("/api/round").json()
        for body, said in [
            ({"round": r["round"], "choice": "a", "model": "z"}, "model: unknown field"),  # was: 200, vote stored
            ({"round": r["round"]}, "choice: Field required"),
            ({"round": 5, "choice": "a"}, "round: "),
        ]:
            got = c.post("/api/vote", json=body)
            assert got.status_code == 400 and got.json()["error"].startswith(said), got.text
        bad = c.post("/api/vote", content=b"{not json", headers={"content-type": "application/json"})
        assert bad.status_code == 400 and bad.json()["error"].startswith("body: ")
        assert store.votes() == []
        assert c.post("/api/vote", json={"round": r["round"], "choice": "b"}).status_code == 200
        cookies = dict(c.cookies)
    # a restarted server keeps the votes and the voter's cookie
    with running(create_app(ArenaStore(store.path), seed=1, limits=OFF)) as base:
        with httpx.Client(base_url=base, cookies=cookies) as c:
            r = c.get("/api/round")
            assert "set-cookie" not in r.headers
            assert c.post("/api/vote", json={"round": r.json()["round"], "choice": "tie"}).status_code == 200
    votes = store.votes()
    assert len(votes) == 2 and votes[0]["voter"] == votes[1]["voter"]


def test_rank_cli_one_voter_few_rounds_unvoted_models_and_bad_battles(tmp_path):
    store = fill(tmp_path / "arena.sqlite")  # x, y, z have answers; z gets no vote
    outcomes = ["a", "b", "tie", "a", "a", "b"]
    for n, o in enumerate(outcomes):
        a, b = ("x", "y") if n % 2 else ("y", "x")
        store.record_vote(f"r{n}", {"prompt": "问题0", "model_a": a, "model_b": b, "swapped": 0}, o, "alice")
    run, db = CliRunner(), str(store.path)
    one = run.invoke(arena_app, ["rank", "--db", db])  # was: a 95% CI of zero width and distinct ranks
    assert one.exit_code != 0 and "all 6 battles come from one voter (alice)" in str(one.exception)
    few = run.invoke(arena_app, ["rank", "--db", db, "--bootstrap", "battles", "--rounds", "0"])
    assert few.exit_code != 0 and "--rounds" in few.output  # was: the point estimate shown as its own CI
    out = tmp_path / "r.json"
    ok = run.invoke(arena_app, ["rank", "--db", db, "--bootstrap", "battles", "--json", str(out)])
    assert ok.exit_code == 0, ok.output
    assert "not ranked, no votes yet: z" in ok.output and json.loads(out.read_text())["unranked"] == ["z"]
    bad = tmp_path / "b.json"
    bad.write_text(json.dumps([{"model_a": "x", "model_b": "y", "winner": "tie", "tstamp": "yesterday"}]))
    r = run.invoke(arena_app, ["import", str(bad), "--db", str(tmp_path / "new.sqlite")])  # was: a traceback
    assert r.exit_code != 0 and "b.json:1: tstamp: 'yesterday'" in str(r.exception)
    assert not (tmp_path / "new.sqlite").exists()


def test_answers_with_an_unknown_field_are_refused_before_a_db_is_made(tmp_path):
    from weitiao.eval.arena.store import read_answers

    src = tmp_path / "answers.jsonl"
    rows = [
        {"prompt": "p", "model": "x", "answer": "喵", "system": "你是猫"},
        {"prompt": "p", "model": "y", "answer": "好"},
    ]
    src.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    with pytest.raises(UserError, match="answers.jsonl:1: system: unknown field"):
        read_answers(src)  # was: the system prompt dropped, the answer shown without it
    src.write_text(json.dumps({"prompt": "p", "model": "x"}) + "\n", encoding="utf-8")
    db = tmp_path / "arena.sqlite"
    r = CliRunner().invoke(arena_app, ["serve", "--answers", str(src), "--db", str(db)])
    assert r.exit_code != 0 and "answers.jsonl:1: answer: missing" in str(r.exception)
    assert not db.exists()  # was: an empty arena db left behind


def test_two_answers_of_one_model_to_one_prompt_are_refused_with_lines_before_a_db_is_made(tmp_path):
    """serve_answers refused them after ArenaStore had made the --db ("answers: model 'x' has two different answers",
    no file or line): a bad answers file left a new empty arena db behind."""
    src, db = tmp_path / "answers.jsonl", tmp_path / "arena.sqlite"
    rows = [
        {"prompt": "你好", "model": m, "answer": a} for m, a in (("x", "好"), ("y", "嗯"), ("x", "好"), ("x", "您好"))
    ]
    src.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    r = CliRunner().invoke(arena_app, ["serve", "--answers", str(src), "--db", str(db)])
    assert r.exit_code != 0 and "answers.jsonl:4: answer: model 'x' answered this prompt differently at line 1" in str(
        r.exception
    )
    assert not db.exists()


def test_answers_without_a_prompt_two_models_answered_are_refused_and_lone_ones_named(tmp_path, monkeypatch):
    """Two models' answer files whose prompts differ by a character started a server whose every round was a 404
    ("no prompt has answers from two models"), and a prompt one model answered was never shown, without a word."""
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda *_, **__: None)
    src, db = tmp_path / "answers.jsonl", tmp_path / "arena.sqlite"
    rows = [{"prompt": "你好？", "model": "x", "answer": "好"}, {"prompt": "你好?", "model": "y", "answer": "嗯"}]
    src.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    r = CliRunner().invoke(arena_app, ["serve", "--answers", str(src), "--db", str(db)])
    assert r.exit_code != 0 and "answers.jsonl: no prompt has answers from two models" in str(r.exception)
    assert not db.exists()
    rows.append({"prompt": "你好？", "model": "y", "answer": "嗯嗯"})
    src.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    r = CliRunner().invoke(arena_app, ["serve", "--answers", str(src), "--db", str(db)])
    assert r.exit_code == 0 and "1 prompt answered by one model only: never shown" in " ".join(r.output.split())


def test_live_models_refuse_a_prompt_given_twice_before_answering(tmp_path, monkeypatch):
    """--models with a prompt file holding one prompt twice answered every prompt with every model, then stopped
    with "answers: model 'a' has two different answers" (two samples of one prompt), naming no file or line."""
    from conftest import write_jsonl

    import weitiao.eval.arena.store as store

    monkeypatch.setattr(store, "_answer_all", lambda *_: pytest.fail("answered before the check"))
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "你好"}, {"prompt": "在吗"}, {"prompt": "你好"}])
    with pytest.raises(UserError, match=r"p.jsonl:3: the same prompt as .*p.jsonl:1; the arena keeps one answer"):
        store.pregenerate("a=demo,b=demo", prompts)


def test_a_model_name_given_twice_is_refused():
    from weitiao.eval.arena.store import parse_models

    with pytest.raises(UserError, match="the name 'a' is given twice"):
        parse_models("a=demo,b=demo:runs/x/final,a=other")  # was: the first 'a' silently replaced


@pytest.mark.parametrize("extra", [["--prompts", "p.jsonl"], ["--max-new-tokens", "64"]])
def test_generation_options_with_answers_are_refused(tmp_path, extra, monkeypatch):
    import uvicorn

    def served(*_, **__):
        raise RuntimeError("the server started")

    monkeypatch.setattr(uvicorn, "run", served)
    src = tmp_path / "answers.jsonl"
    rows = [{"prompt": "p", "model": m, "answer": "好"} for m in "xy"]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    db = tmp_path / "arena.sqlite"
    r = CliRunner().invoke(arena_app, ["serve", "--answers", str(src), "--db", str(db), *extra])
    assert r.exit_code != 0 and "with --answers they would be ignored" in str(r.exception)  # was: ignored, served
    assert not db.exists()


def test_a_later_serve_sets_aside_what_its_answers_file_no_longer_holds(tmp_path, monkeypatch):
    """A second `arena serve` whose answers drop model z (and prompt 问题3) kept drawing z's old answers into
    rounds next to the new ones: now only the file's answers are served, the rest is kept with its votes and
    named at start, and `arena rank` says it counts z's battles (or leaves them out with --skip-set-aside)."""
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda *_, **__: None)
    db, src = tmp_path / "arena.sqlite", tmp_path / "answers.jsonl"

    def serve(models: str, prompts: int) -> str:
        rows = [{"prompt": f"问题{i}", "model": m, "answer": f"{m} 答 {i}"} for i in range(prompts) for m in models]
        src.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        r = CliRunner().invoke(arena_app, ["serve", "--answers", str(src), "--db", str(db)])
        assert r.exit_code == 0, r.output
        return " ".join(r.output.split())

    assert "set aside" not in serve("xyz", 4)
    store = ArenaStore(db)
    for n, (a, b, o) in enumerate([("x", "y", "a"), ("y", "z", "b"), ("z", "x", "tie"), ("x", "z", "a"),
                                   ("y", "x", "a"), ("z", "y", "b"), ("x", "y", "tie"), ("y", "z", "a")]):  # fmt: skip
        store.record_vote(f"r{n}", {"prompt": "问题0", "model_a": a, "model_b": b, "swapped": 0}, o, "ab"[n % 2])
    said = serve("xy", 3)
    assert "set aside 1 model (z), 6 answers" in said and "not shown to voters" in said
    drawn = [store.draw_round(random.Random(i)) for i in range(200)]
    assert {(d["model_a"], d["prompt"]) for d in drawn} | {(d["model_b"], d["prompt"]) for d in drawn} == {
        (m, f"问题{i}") for m in "xy" for i in range(3)}  # fmt: skip
    assert store.models() == ["x", "y"] and store.count_answers() == 6 and len(store.votes()) == 8
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT COUNT(*) FROM answers").fetchone()[0] == 12  # kept, not deleted
    con.close()
    out = tmp_path / "r.json"
    rank = ["rank", "--db", str(db), "--bootstrap", "battles", "--rounds", "40", "--json", str(out)]
    r = CliRunner().invoke(arena_app, rank)
    said = " ".join(r.output.split())
    assert r.exit_code == 0 and "z (5 battles); their battles are counted" in said, said
    assert "z (set" in said  # the table's row: z (set aside), wrapped
    j = json.loads(out.read_text())
    assert j["set_aside"] == {"z": 5} and j["set_aside_counted"] and j["n_battles"] == 8
    from weitiao.eval.arena import rank as rank_mod

    labels: list[list[str]] = []  # the plot's model labels, as drawn
    monkeypatch.setattr(rank_mod, "save_figure", lambda fig, *_, **__: labels.append(
        [t.get_text() for t in fig.axes[0].get_yticklabels()]))  # fmt: skip
    for extra in ([], ["--skip-set-aside"]):
        assert CliRunner().invoke(arena_app, [*rank, "--plot", str(tmp_path / "r.png"), *extra]).exit_code == 0
    assert [sorted(x for x in ls if "set aside" in x) for ls in labels] == [[labels[0][0]], []]
    assert labels[0][0].startswith("z (#") and labels[0][0].endswith(" · set aside")
    r = CliRunner().invoke(arena_app, [*rank, "--skip-set-aside"])
    assert r.exit_code == 0 and "their battles left out" in " ".join(r.output.split()), r.output
    j = json.loads(out.read_text())
    assert [x["model"] for x in j["ratings"]] == ["x", "y"] and j["n_battles"] == 3 and not j["set_aside_counted"]
    r = CliRunner().invoke(arena_app, ["rank", "--battles", str(out), "--skip-set-aside"])
    assert r.exit_code != 0 and "only an arena --db knows" in str(r.exception)


def test_a_database_from_before_served_answers_serves_all_it_holds(tmp_path):
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as db:
        db.executescript(SCHEMA.replace("served INTEGER NOT NULL DEFAULT 1, ", ""))
        db.executemany("INSERT INTO answers VALUES (?, ?, ?)", [("p", "x", "甲"), ("p", "y", "乙")])
    db.close()
    s = ArenaStore(path)
    assert s.models() == ["x", "y"] and s.set_aside() == ([], 0) and s.draw_round(random.Random(0))


def test_a_battle_imported_without_a_time_is_exported_without_one(tmp_path):
    """`arena export` wrote `"tstamp": 0.0` (1970) for an imported battle that had no time: invented data."""
    db, src, out = tmp_path / "arena.sqlite", tmp_path / "in.json", tmp_path / "out.json"
    src.write_text(json.dumps([{"model_a": "x", "model_b": "y", "winner": "model_a"},
                               {"model_a": "y", "model_b": "x", "winner": "tie", "tstamp": 1700000000.5}]))  # fmt: skip
    run = CliRunner()
    for args in (["import", str(src), "--db", str(db)], ["export", str(out), "--db", str(db)]):
        assert run.invoke(arena_app, args).exit_code == 0
    assert [b.get("tstamp", "absent") for b in json.loads(out.read_text())] == ["absent", 1700000000.5]  # as given
    again = run.invoke(arena_app, ["import", str(out), "--db", str(db)])  # read back: the same battles, skipped
    assert again.exit_code == 0 and "(2 already there, skipped)" in " ".join(again.output.split())
    r = run.invoke(arena_app, ["rank", "--battles", str(out), "--bootstrap", "battles", "--rounds", "40"])
    assert r.exit_code == 0 and "x" in r.output, r.output


def test_votes_cast_on_the_page_exported_and_imported_back_are_not_counted_twice(tmp_path):
    """Only imported battles were recognised on a re-import: the page's own votes, exported and imported into the
    same database (or a copy of it, to merge servers), were added again and every one counted twice."""
    db, out = tmp_path / "arena.sqlite", tmp_path / "out.json"
    st = fill(db)
    for n, choice in enumerate(["a", "b", "tie"]):
        st.record_vote(f"r{n}", {"prompt": "问题0", "model_a": "x", "model_b": "y", "swapped": 0}, choice, "alice")
    run = CliRunner()
    assert run.invoke(arena_app, ["export", str(out), "--db", str(db)]).exit_code == 0
    again = run.invoke(arena_app, ["import", str(out), "--db", str(db)])
    assert again.exit_code == 0 and "imported 0 battles" in again.output, again.output
    assert len(st.votes()) == 3
    # a battle that differs in any field, here the time, is a new one; a copy within the file is its own battle
    battle = {**json.loads(out.read_text())[0]}
    assert st.import_battles([{**battle, "tstamp": battle["tstamp"] + 1}, battle, battle]) == (2, 1, 0)


def test_a_database_from_before_unknown_times_gets_them_back_as_null(tmp_path):
    """votes.tstamp was NOT NULL and an import without a time stored 0.0: opening the file makes it nullable and those
    imported zeros null; a vote cast on the page keeps its time, and a file imported before is still recognised."""
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as db:  # the votes table as the old code made it
        db.executescript(SCHEMA)
        db.execute("DROP TABLE votes")
        db.execute(
            "CREATE TABLE votes (id INTEGER PRIMARY KEY, round_id TEXT UNIQUE, prompt TEXT, model_a TEXT NOT NULL, "
            "model_b TEXT NOT NULL, swapped INTEGER, outcome TEXT NOT NULL, voter TEXT, tstamp REAL NOT NULL)"
        )
    db.close()
    battle = {"model_a": "x", "model_b": "y", "winner": "tie"}
    with sqlite3.connect(path) as db:
        fields = (None, "x", "y", "tie", None, 0.0)
        digest = hashlib.sha1(json.dumps(fields).encode()).hexdigest()[:20]
        db.execute("INSERT INTO votes VALUES (1, ?, NULL, 'x', 'y', NULL, 'tie', NULL, 0.0)", (f"import:{digest}:0",))
        db.execute("INSERT INTO votes VALUES (2, 'r1', '问题', 'y', 'x', 1, 'model_a', 'v', 1700000000.5)")
    db.close()
    s = ArenaStore(path)
    assert [(b["winner"], b["tstamp"]) for b in s.battles()] == [("tie", None), ("model_a", 1700000000.5)]
    assert [r[3] for r in s._table_info("votes") if r[1] == "tstamp"] == [0]  # no longer NOT NULL
    assert s.import_battles([battle]) == (0, 1, 1)  # the same battle as before the migration, its keys kept now
    assert s.import_battles([{**battle, "winner": "model_b"}]) == (1, 0, 0)  # a new one, still without a time
    assert [b.get("tstamp") for b in s.battles()] == [None, None, 1700000000.5]


def test_export_of_a_db_without_votes_is_refused(tmp_path):
    """`arena export` of a db with answers but no votes wrote [] and said 'wrote 0 battles' with exit 0."""
    fill(tmp_path / "arena.sqlite")
    out = tmp_path / "battles.json"
    r = CliRunner().invoke(arena_app, ["export", str(out), "--db", str(tmp_path / "arena.sqlite")])
    assert isinstance(r.exception, UserError) and "no votes yet" in str(r.exception) and not out.exists()
    ArenaStore(tmp_path / "arena.sqlite").import_battles([{"model_a": "x", "model_b": "y", "winner": "tie"}])
    r = CliRunner().invoke(arena_app, ["export", str(out), "--db", str(tmp_path / "arena.sqlite")])
    assert r.exit_code == 0 and len(json.loads(out.read_text())) == 1  # negative control


def test_live_models_that_fail_leave_no_db_behind(tmp_path, monkeypatch):
    """--models: the db was made before the prompt file was read or any model loaded, so a bad prompt file or a
    model that failed to load left an empty arena db behind."""
    from conftest import write_jsonl

    import weitiao.eval.arena.store as store

    db = tmp_path / "arena.sqlite"
    twice = write_jsonl(tmp_path / "twice.jsonl", [{"prompt": "你好"}, {"prompt": "你好"}])
    r = CliRunner().invoke(arena_app, ["serve", "--models", "a=demo,b=demo", "--prompts", str(twice), "--db", str(db)])
    assert "the same prompt as" in str(r.exception) and not db.exists()

    def fail(*_):
        raise UserError("nope: no config.json")

    monkeypatch.setattr(store, "_answer_all", fail)
    ok = write_jsonl(tmp_path / "ok.jsonl", [{"prompt": "你好"}])
    r = CliRunner().invoke(arena_app, ["serve", "--models", "a=demo,b=demo", "--prompts", str(ok), "--db", str(db)])
    assert "no config.json" in str(r.exception) and not db.exists()
    mine = tmp_path / "mine.sqlite"  # control: a db that was there before stays
    store.ArenaStore(mine)
    r = CliRunner().invoke(arena_app, ["serve", "--models", "a=demo,b=demo", "--prompts", str(ok), "--db", str(mine)])
    assert "no config.json" in str(r.exception) and mine.exists()


def test_a_database_from_before_extra_fields_keeps_its_votes_and_a_reimport_gives_the_fields_back(tmp_path):
    """Opening a database whose votes table has no `extra` column adds it, every vote kept; a FastChat battle the
    older import had stripped (question_id stored as the prompt) is recognised when imported again and gets its
    fields back, so the export equals the file; a vote cast on the page is untouched."""
    path = tmp_path / "old.sqlite"
    old = SCHEMA.replace(", tstamp REAL, extra TEXT)", ", tstamp REAL)")
    assert old != SCHEMA
    battle = {"question_id": "abc123", "model_a": "x", "model_b": "y", "winner": "tie (bothbad)",
              "judge": "arena_user_7", "turn": 1, "anony": True, "language": "Chinese",
              "tstamp": 1700000001.0}  # fmt: skip
    fields = ("abc123", "x", "y", "tie (bothbad)", "arena_user_7", 1700000001.0)  # as the older import hashed it
    digest = hashlib.sha1(json.dumps(fields).encode()).hexdigest()[:20]
    with sqlite3.connect(path) as db:
        db.executescript(old)
        db.execute("INSERT INTO votes VALUES (1, ?, 'abc123', 'x', 'y', NULL, 'tie (bothbad)', 'arena_user_7', "
                   "1700000001.0)", (f"import:{digest}:0",))  # fmt: skip
        db.execute("INSERT INTO votes VALUES (2, 'r1', '问题', 'y', 'x', 1, 'model_a', 'v', 1700000000.5)")
    db.close()
    s = ArenaStore(path)
    page = {"model_a": "y", "model_b": "x", "winner": "model_a", "tstamp": 1700000000.5, "judge": "v", "prompt": "问题"}
    assert s.battles() == [page, {**page, "model_a": "x", "model_b": "y", "winner": "tie (bothbad)",
                                  "tstamp": 1700000001.0, "judge": "arena_user_7", "prompt": "abc123"}]  # fmt: skip
    assert s.import_battles([battle]) == (0, 1, 1)
    assert s.battles() == [page, battle] and list(s.battles()[1]) == list(battle)
    assert s.import_battles([battle]) == (0, 1, 0)  # nothing left to give back


@pytest.mark.parametrize(
    ("row", "msg"),
    [
        ({"prompt": "你好", "model": "", "answer": "嗯"}, "answers.jsonl:1: model: ''; a model name is not empty"),
        ({"prompt": "你好", "model": "x ", "answer": "嗯"}, "answers.jsonl:1: model: 'x '; a model name"),
        ({"prompt": " ", "model": "x", "answer": "嗯"}, "answers.jsonl:1: prompt: empty"),
    ],
)
def test_a_blank_model_name_or_prompt_is_refused(tmp_path, row, msg):
    """A model named '' was served, voted on and ranked as a blank row; 'x ' beside 'x' made two models of one; a blank
    prompt made rounds that ask nothing."""
    from weitiao.eval.arena.store import read_answers

    src = tmp_path / "answers.jsonl"
    other = {"prompt": row["prompt"], "model": "y", "answer": "好"}
    src.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in (row, other)), encoding="utf-8")
    with pytest.raises(UserError, match=re.escape(msg)):
        read_answers(src)
