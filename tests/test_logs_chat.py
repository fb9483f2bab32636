"""logs chat (Q162): the signal hierarchy on a hand-made log, precision on synthetic logs, caps and balance."""

import csv
import datetime
import io
import json

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from weitiao.data.formats import load_rows
from weitiao.errors import UserError
from weitiao.logs import chat
from weitiao.logs.config import load_profile
from weitiao.logs.report import build_report, precision, write_outputs
from weitiao.logs.synth import synth_chat

RESPONSES = [  # response_id, session_id, turn, ts (s), prompt
    ("r1", "s1", 1, 1, "怎么做番茄炒蛋？"),
    ("r2", "s1", 1, 2, "怎么做番茄炒蛋？"),
    ("r3", "s1", 1, 3, "怎么做番茄炒蛋？"),
    ("r4", "s1", 2, 10, "能再详细一点吗？"),
    ("r4b", "s1", 2, 11, "能再详细一点吗？"),
    ("r5", "s2", 1, 1, "写一首关于秋天的诗"),
    ("r6", "s2", 1, 2, "写一首关于秋天的诗"),
    ("r7", "s3", 1, 1, "解释梯度下降"),
    ("r8", "s3", 1, 2, "解释梯度下降"),
    ("r9", "s4", 1, 1, "怎么做 番茄炒蛋 ?"),
]
EVENTS = [  # response_id, event, value
    ("r1", "regenerate", None),
    ("r2", "thumbs_down", None),
    ("r2", "regenerate", None),
    ("r3", "follow_up", None),
    ("r3", "copy", None),
    ("r4", "regenerate", None),
    ("r4b", "dwell", 30.0),
    ("r4b", "view", None),  # not a signal: ignored_event
    ("r5", "thumbs_up", None),
    ("r5", "dwell", 0.3),  # accidental: dwell_out_of_bounds
    ("r6", "thumbs_down", None),
    ("r7", "thumbs_up", None),
    ("r7", "regenerate", None),  # liked, yet regenerated; r8 followed up: conflict
    ("r8", "follow_up", None),
    ("r9", "thumbs_down", None),
    ("r99", "copy", None),  # unknown_response
]


def write_log(tmp_path, events=EVENTS):
    t0 = 1_740_787_200
    resp = {
        "response_id": [r[0] for r in RESPONSES],
        "session_id": [r[1] for r in RESPONSES],
        "turn": [r[2] for r in RESPONSES],
        "ts": pa.array([(t0 + r[3]) * 10**6 for r in RESPONSES], pa.timestamp("us")),
        "prompt": [r[4] for r in RESPONSES],
        "response": [f"回复{r[0]}" for r in RESPONSES],
    }
    ev = {
        "response_id": [e[0] for e in events],
        "event": [e[1] for e in events],
        "ts": pa.array([(t0 + 100 + i) * 10**6 for i in range(len(events))], pa.timestamp("us")),
        "value": pa.array([e[2] for e in events], pa.float64()),
    }
    pq.write_table(pa.table(resp), tmp_path / "responses.parquet")
    pq.write_table(pa.table(ev), tmp_path / "events.parquet")
    return tmp_path / "events.parquet", tmp_path / "responses.parquet"


def pairs_of(r) -> set:
    return set(r.con.execute("SELECT chosen_id, rejected_id, source, signal, scope FROM wt_pairs").fetchall())


def test_signal_hierarchy_on_hand_made_log(tmp_path):
    events, responses = write_log(tmp_path)
    r = chat.run(events, responses, load_profile("chat", "chat"), progress=False)
    assert pairs_of(r) == {
        ("r3", "r1", "share_copy", "share_copy", "session"),  # copied vs regenerated
        ("r3", "r2", "explicit", "none_vs_thumbs_down", "session"),
        ("r5", "r6", "explicit", "thumbs_up_vs_down", "session"),
        ("r4b", "r4", "regenerate", "regenerate", "session"),
    }
    led = build_report(r)["ledgers"]
    assert {k: v for k, v in led["candidates"].items() if v} == {"chosen_negative": 1, "conflict": 1, "kept": 4}
    assert {k: v for k, v in led["responses"].items() if v} == {"alone": 1, "unpaired": 2, "paired": 7}
    assert {k: v for k, v in led["events"].items() if v} == {
        "unknown_response": 1,
        "ignored_event": 1,
        "dwell_out_of_bounds": 1,
        "alone": 1,
        "unpaired": 3,
        "paired": 9,
    }
    # the turn-2 pair carries turn 1 (with the reply the user kept, r3) as history
    rows = {(row.chosen, row.rejected): row for row in load_rows(write_outputs(r, tmp_path / "p.jsonl", {
        "kind": "chat", "profile": "chat", "inputs": {}, "events": 16, "pairs": 4, "contexts_with_pairs": 3,
        "sources": {}, "ledgers": {}, "top_contexts": {}, "config": {}})["pairs"]).rows}  # fmt: skip
    assert rows[("回复r4b", "回复r4")].prompt == [
        {"role": "user", "content": "怎么做番茄炒蛋？"},
        {"role": "assistant", "content": "回复r3"},
        {"role": "user", "content": "能再详细一点吗？"},
    ]


def test_cross_session_pairs_need_same_prompt_and_polar_signals(tmp_path):
    events, responses = write_log(tmp_path)
    cfg = load_profile("chat", "chat", ["cross_session.enabled=true"])
    r = chat.run(events, responses, cfg, progress=False)
    cross = {p for p in pairs_of(r) if p[4] == "cross_session"}
    assert cross == {("r3", "r9", "explicit", "none_vs_thumbs_down", "cross_session")}
    conf = r.con.execute("SELECT confidence FROM wt_pairs WHERE scope = 'cross_session'").fetchone()[0]
    assert conf == pytest.approx(0.8 * 0.9)
    ngram = load_profile("chat", "chat", ["cross_session.enabled=true", "cross_session.match=ngram"])
    assert pairs_of(chat.run(events, responses, ngram, progress=False)) == pairs_of(r)


def test_event_names_map_warehouse_names(tmp_path):
    renamed = [(rid, {"thumbs_up": "like", "thumbs_down": "dislike"}.get(e, e), v) for rid, e, v in EVENTS]
    events, responses = write_log(tmp_path, renamed)
    plain = chat.run(events, responses, load_profile("chat", "chat"), progress=False)
    assert ("r5", "r6", "explicit", "thumbs_up_vs_down", "session") not in pairs_of(plain)
    cfg = load_profile("chat", "chat", ["event_names={like: thumbs_up, dislike: thumbs_down}"])
    mapped = chat.run(events, responses, cfg, progress=False)
    assert ("r5", "r6", "explicit", "thumbs_up_vs_down", "session") in pairs_of(mapped)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return synth_chat(tmp_path_factory.mktemp("chat"), 25_000, seed=3, progress=False)


def run_synth(files, *sets):
    cfg = load_profile("chat", "chat", list(sets))
    return chat.run(files["events"], files["responses"], cfg, progress=False)


def test_strong_sources_are_precise_and_clean_chosen_matters(synth):
    p = precision(run_synth(synth), synth["truth"])
    for source in ("explicit", "share_copy"):
        assert p[source]["pairs"] > 200 and p[source]["precision"] >= 0.9, (source, p[source])
    loose = precision(run_synth(synth, "clean_chosen=false"), synth["truth"])
    assert loose["explicit"]["precision"] < p["explicit"]["precision"] - 0.03
    assert loose["all"]["precision"] < p["all"]["precision"] - 0.015
    raw = precision(run_synth(synth, "clean_chosen=false", "dwell_normalize=none"), synth["truth"])["dwell"]
    no_margin = run_synth(synth, "clean_chosen=false", "dwell_rel_margin=0", "dwell_abs_margin=0")
    no_margin = precision(no_margin, synth["truth"])["dwell"]
    assert raw["precision"] < loose["dwell"]["precision"] - 0.03  # long replies hold readers longer
    assert no_margin["precision"] < loose["dwell"]["precision"] - 0.03
    cross = precision(run_synth(synth, "cross_session.enabled=true"), synth["truth"])
    assert cross["explicit"]["pairs"] > p["explicit"]["pairs"] and cross["explicit"]["precision"] >= 0.9


def test_caps_and_balance(synth):
    r = run_synth(synth, "clean_chosen=false", "balance={dwell: 0.02}", "max_pairs={share_copy: 50}")
    rep = build_report(r)
    src = {k: v["pairs"] for k, v in rep["sources"].items()}
    assert src["share_copy"] == 50 and rep["ledgers"]["candidates"]["capped_source"] > 0
    stronger = sum(n for s, n in src.items() if s not in ("dwell",))  # counted before balancing, after caps
    before = r.con.execute("SELECT count(*) FROM wt_candidates WHERE source = 'dwell' AND rule IS NULL").fetchone()[0]
    assert before == src["dwell"] and src["dwell"] <= 0.02 * stronger + 1
    assert rep["ledgers"]["candidates"]["balanced"] > 0
    per_prompt = r.con.execute("SELECT max(n) FROM (SELECT context, count(*) n FROM wt_pairs GROUP BY 1)").fetchone()
    assert per_prompt[0] <= 6


def test_printed_sql_runs_and_output_is_dpo_ready(synth, tmp_path):
    cfg = load_profile("chat", "chat", ["cross_session.enabled=true"])
    con = duckdb.connect()
    for name in ("events", "responses"):
        con.execute(f"CREATE TABLE {name} AS SELECT * FROM read_parquet('{synth[name]}')")
    con.execute(chat.sql_script(cfg))
    r = run_synth(synth, "cross_session.enabled=true")
    query = "SELECT chosen_id, rejected_id, source, scope FROM wt_pairs ORDER BY ALL"
    assert con.execute(query).fetchall() == r.con.execute(query).fetchall()
    rep = build_report(r, synth["truth"])
    paths = write_outputs(r, tmp_path / "pairs.jsonl", rep)
    loaded = load_rows(paths["pairs"])
    assert loaded.format == "preference" and loaded.kept == rep["pairs"] and loaded.rejected == 0
    multi = [row for row in loaded.rows if len(row.prompt) > 1]
    assert multi and all(row.prompt[-1]["role"] == "user" for row in multi)
    first = json.loads(paths["pairs"].read_text(encoding="utf-8").splitlines()[0])
    assert {"source", "signal", "confidence", "scope", "context"} <= set(first)


def test_edited_prompt_is_not_compared_and_history_keeps_its_own_prompt(tmp_path):
    """An edited message keeps its turn number: its reply answers another prompt (no pair with the first reply),
    and the history of the next turn carries the edited prompt with the reply to it, not another row's prompt."""
    t0 = 1_740_787_200
    rows = [  # response_id, turn, ts, prompt, response
        ("r1", 1, 0, "怎么煮米饭", "用电饭煲煮。"),
        ("r2", 1, 30, "怎么煮米饭？要软一点", "多加水，煮久一点。"),  # the user edited turn 1
        ("r3", 2, 60, "那粥呢", "粥要加更多水。"),
        ("r4", 2, 90, "那粥呢", "水米比例10:1。"),
    ]
    pq.write_table(pa.table({
        "response_id": [r[0] for r in rows], "session_id": ["s1"] * 4, "turn": [r[1] for r in rows],
        "ts": pa.array([(t0 + r[2]) * 10**6 for r in rows], pa.timestamp("us")),
        "prompt": [r[3] for r in rows], "response": [r[4] for r in rows],
    }), tmp_path / "responses.parquet")  # fmt: skip
    events = [("r1", "thumbs_down"), ("r2", "thumbs_up"), ("r3", "regenerate"), ("r4", "thumbs_up")]
    pq.write_table(pa.table({
        "response_id": [e[0] for e in events], "event": [e[1] for e in events],
        "ts": pa.array([(t0 + 10 + 30 * i) * 10**6 for i in range(4)], pa.timestamp("us")),
    }), tmp_path / "events.parquet")  # fmt: skip
    r = chat.run(tmp_path / "events.parquet", tmp_path / "responses.parquet", load_profile("chat", "chat"),
                 progress=False)  # fmt: skip
    assert pairs_of(r) == {("r4", "r3", "explicit", "thumbs_up_vs_none", "session")}
    assert build_report(r)["ledgers"]["candidates"]["prompt_edited"] == 1
    history = r.con.execute("SELECT history FROM wt_pairs").fetchone()[0]
    assert [(h["user"], h["assistant"]) for h in history] == [("怎么煮米饭？要软一点", "多加水，煮久一点。")]


def test_full_width_letters_digits_and_wide_spaces_are_one_prompt_across_sessions(tmp_path):
    """Ｘ５ and X5 (a Chinese input method types either), or an ideographic space U+3000, made two prompts, so the
    cross-session exact match never met them."""
    t0 = 1_740_787_200
    rows = [("r1", "s1", "X5 多少钱？"), ("r2", "s2", "Ｘ５\u3000多少钱?"), ("r3", "s3", "x5多少钱")]
    pq.write_table(pa.table({
        "response_id": [r[0] for r in rows], "session_id": [r[1] for r in rows], "turn": [1, 1, 1],
        "ts": pa.array([(t0 + i) * 10**6 for i in range(3)], pa.timestamp("us")),
        "prompt": [r[2] for r in rows], "response": ["2999元", "不知道", "大概三千"],
    }), tmp_path / "responses.parquet")  # fmt: skip
    events = [("r1", "thumbs_up"), ("r2", "thumbs_down")]
    pq.write_table(pa.table({
        "response_id": [e[0] for e in events], "event": [e[1] for e in events],
        "ts": pa.array([(t0 + 10 + i) * 10**6 for i in range(2)], pa.timestamp("us")),
    }), tmp_path / "events.parquet")  # fmt: skip
    cfg = load_profile("chat", "chat", ["cross_session.enabled=true"])
    r = chat.run(tmp_path / "events.parquet", tmp_path / "responses.parquet", cfg, progress=False)
    keys = {k for (k,) in r.con.execute("SELECT DISTINCT prompt_key FROM wt_responses").fetchall()}
    assert keys == {"x5多少钱"}
    assert ("r1", "r2", "explicit", "thumbs_up_vs_down", "cross_session") in pairs_of(r)


@pytest.mark.parametrize("order", [("thumbs_up", "thumbs_down"), ("thumbs_down", "thumbs_up")])
def test_a_thumbs_up_and_down_at_the_same_last_ts_count_as_neither_whatever_the_row_order(tmp_path, order):
    """r6 got 👍 and 👎 at one ts: 'the last click wins' took whichever row came last (+1 in one order, −1 in the
    other), so the pair r5/r6 and its signal depended on how the file was written."""
    events, responses = write_log(tmp_path)
    table = pq.read_table(events)
    rows = [r for r in table.to_pylist() if r["response_id"] != "r6"]
    same = rows[0]["ts"]
    tied = [{"response_id": "r6", "event": e, "ts": same, "value": None} for e in order]
    last = max(r["ts"] for r in rows) + datetime.timedelta(seconds=1)  # after r7's own 👍
    later = {"response_id": "r7", "event": "thumbs_down", "ts": last, "value": None}
    pq.write_table(pa.Table.from_pylist(rows + tied + [later], schema=table.schema), events)
    r = chat.run(events, responses, load_profile("chat", "chat"), progress=False)
    explicit = dict(r.con.execute("SELECT response_id, t_explicit FROM wt_responses").fetchall())
    assert explicit["r6"] == 0 and explicit["r7"] == -1  # control, r7: 👍 then 👎 later: the later one wins
    assert ("r5", "r6", "explicit", "thumbs_up_vs_none", "session") in pairs_of(r)


def test_a_row_repeated_whole_is_one_event(tmp_path):
    """Logs delivered at least once repeat rows: r8's dwell event twice summed to 3 × 4 s, past the margin over r7's
    6 s, and made r8 > r7 a dwell pair; the copy is now counted once, as `duplicate`, and the pair is gone."""
    t0 = datetime.datetime(2026, 3, 2, 11)
    responses = [("r7", "s", 1, t0, "问", "一个回答" * 4), ("r8", "s", 1, t0, "问", "另一个回答" * 3)]
    cols = ("response_id", "session_id", "turn", "ts", "prompt", "response")
    pq.write_table(pa.Table.from_pylist([dict(zip(cols, r)) for r in responses]), tmp_path / "responses.parquet")
    later = t0 + datetime.timedelta(seconds=30)
    events = [("r7", "dwell", later, 6.0), ("r8", "dwell", later, 4.0), ("r8", "dwell", later, 4.0)]
    events.append(("r8", "dwell", later + datetime.timedelta(seconds=1), 4.0))  # control: same value, other ts
    events_path = tmp_path / "events.parquet"
    cols = ("response_id", "event", "ts", "value")
    pq.write_table(pa.Table.from_pylist([dict(zip(cols, e)) for e in events]), events_path)
    cfg = load_profile("chat", "chat", ["balance={}"])  # a lone dwell pair, not balanced away
    r = chat.run(events_path, tmp_path / "responses.parquet", cfg, progress=False)
    dwell = dict(r.con.execute("SELECT response_id, t_dwell * (3 + length(response) / 10) FROM wt_responses "
                               "JOIN responses USING (response_id)").fetchall())  # fmt: skip
    assert dwell == pytest.approx({"r7": 6.0, "r8": 8.0})  # the control's 4 s counts, the copy's does not
    assert pairs_of(r) == set()
    led = build_report(r)["ledgers"]
    assert led["events"]["duplicate"] == 1 and led["candidates"]["below_margin"] == 1


def test_an_event_name_a_case_or_typo_away_is_refused_not_ignored(tmp_path):
    """r5 👍 logged as `Thumbs_Up` and r6 👎 as `thumbs-down` were `ignored_event`: the pair r5 > r6 was lost unsaid
    (on a log where the other reply was copied, the pair came out reversed). Now one line names the name and the fix."""
    renamed = [(rid, {"thumbs_up": "Thumbs_Up", "thumbs_down": "thumbs-down"}.get(e, e), v) for rid, e, v in EVENTS]
    events, responses = write_log(tmp_path, renamed)
    with pytest.raises(UserError, match=r"parquet: event: 'thumbs-down' \(3 rows\) .*did you mean thumbs_down\?"):
        chat.run(events, responses, load_profile("chat", "chat"), progress=False)
    mapped = load_profile("chat", "chat", ["event_names={Thumbs_Up: thumbs_up, thumbs-down: thumbs_down}"])
    assert ("r5", "r6", "explicit", "thumbs_up_vs_down", "session") in pairs_of(chat.run(events, responses, mapped,
                                                                                           progress=False))  # fmt: skip
    ignored = load_profile("chat", "chat", ["event_names={Thumbs_Up: ignore, thumbs-down: ignore}"])
    led = build_report(chat.run(events, responses, ignored, progress=False))["ledgers"]["events"]
    assert led["ignored_event"] == 1 + 2 + 3  # `view` (control: a name near none of ours stays ignored) + the two
    events, responses = write_log(tmp_path, EVENTS)  # control: the canonical names pass
    assert ("r5", "r6", "explicit", "thumbs_up_vs_down", "session") in pairs_of(
        chat.run(events, responses, load_profile("chat", "chat"), progress=False)
    )


def test_an_event_name_a_case_or_typo_away_from_a_mapped_name_is_refused_not_ignored(tmp_path):
    """The profile maps {like: thumbs_up, dislike: thumbs_down} and the log also holds `Like` and `dis_like`: they were
    `ignored_event`, r5 > r6 lost unsaid. Now one line names the mapped name and the fix."""
    names = {"thumbs_up": "like", "thumbs_down": "dislike"}
    mapped = load_profile("chat", "chat", ["event_names={like: thumbs_up, dislike: thumbs_down}"])
    events, responses = write_log(tmp_path, [(rid, names.get(e, e), v) for rid, e, v in EVENTS])
    want = pairs_of(chat.run(events, responses, mapped, progress=False))  # control: the mapped names pass
    assert ("r5", "r6", "explicit", "thumbs_up_vs_down", "session") in want
    names = {"thumbs_up": "Like", "thumbs_down": "dis_like"}
    events, responses = write_log(tmp_path, [(rid, names.get(e, e), v) for rid, e, v in EVENTS])
    with pytest.raises(UserError, match=r"'dis_like' \(3 rows\) .*did you mean dislike \(mapped to thumbs_down"):
        chat.run(events, responses, mapped, progress=False)
    both = load_profile("chat", "chat", ["event_names={like: thumbs_up, Like: thumbs_up, dis_like: thumbs_down}"])
    assert pairs_of(chat.run(events, responses, both, progress=False)) == want


TWO_USERS = """user_id,response_id,session_id,turn,ts,prompt,response
alice,a1,1,1,2026-03-01 10:00:00,帮我写个请假条,好的，请假条如下
alice,a2,1,2,2026-03-01 10:01:00,你好,你好！有什么可以帮你？
bob,b1,1,1,2026-03-01 11:00:00,我的银行卡丢了怎么办,请立即挂失
bob,b2,1,2,2026-03-01 11:01:00,你好,您好，还有什么问题？
"""
TWO_USERS_EVENTS = (
    "response_id,event,ts,value\na2,thumbs_up,2026-03-01 10:02:00,\nb2,thumbs_down,2026-03-01 11:02:00,\n"
)


def test_session_ids_numbered_per_user_are_two_conversations(tmp_path, engine=None):
    """Alice's session 1 and Bob's session 1 were one conversation: a2 (alice) > b2 (bob) came out as a regenerate
    pair of one turn, under Bob's history (我的银行卡丢了怎么办), and the user_id column went unread. With a user_id
    column a session is user_id/session_id; control: without it the ids are one session, as the file says."""
    (tmp_path / "r.csv").write_text(TWO_USERS, encoding="utf-8")
    (tmp_path / "e.csv").write_text(TWO_USERS_EVENTS, encoding="utf-8")
    kw = {"engine": engine} if engine else {}
    r = chat.run(tmp_path / "e.csv", tmp_path / "r.csv", load_profile("chat", "chat"), progress=False, **kw)
    assert pairs_of(r) == set()
    assert r.con.execute("SELECT rule, n FROM wt_ledger WHERE ledger = 'responses'").fetchall() == [("alone", 4)]
    one = "\n".join(line.split(",", 1)[1] for line in TWO_USERS.splitlines()) + "\n"
    (tmp_path / "r.csv").write_text(one, encoding="utf-8")
    r = chat.run(tmp_path / "e.csv", tmp_path / "r.csv", load_profile("chat", "chat"), progress=False, **kw)
    assert pairs_of(r) == {("a2", "b2", "explicit", "thumbs_up_vs_down", "session")}


def test_dwell_events_without_a_value_column_are_refused(tmp_path):
    """Without a `value` column every dwell event was `dwell_out_of_bounds` and the run went on without dwell."""
    events, responses = write_log(tmp_path)
    table = pq.read_table(events).rename_columns(["response_id", "event", "ts", "seconds"])
    pq.write_table(table, events)
    with pytest.raises(UserError, match=r"events.parquet: value: missing column, and 2 dwell events need their"):
        chat.run(events, responses, load_profile("chat", "chat"), progress=False)
    mapped = chat.run(events, responses, load_profile("chat", "chat", ["columns={seconds: value}"]), progress=False)
    assert build_report(mapped)["ledgers"]["events"]["dwell_out_of_bounds"] == 1  # the 0.3 s one only
    no_dwell = load_profile("chat", "chat", ["sources=[explicit, share_copy, regenerate, follow_up]", "balance={}"])
    assert pairs_of(chat.run(events, responses, no_dwell, progress=False))  # control: dwell not used, no value needed


def test_dwell_events_in_milliseconds_are_refused_naming_the_unit(tmp_path):
    """Chat dwell values in milliseconds were all `dwell_out_of_bounds`, unsaid: the dwell tier decided nothing."""
    resp = ["response_id,session_id,turn,ts,prompt,response"]
    resp += [f"r{i}{k},s{i},1,2025-03-01 10:00:0{k},问{i},答{k}" for i in range(6) for k in (1, 2)]
    (tmp_path / "r.csv").write_text("\n".join(resp) + "\n", encoding="utf-8")

    def events(scale):
        rows = [f"r{i}{k},stay,2025-03-01 10:01:00,{(30 if k == 1 else 10) * scale}" for i in range(6) for k in (1, 2)]
        (tmp_path / "e.csv").write_text("response_id,event,ts,value\n" + "\n".join(rows) + "\n", encoding="utf-8")

    cfg = load_profile("chat", "chat", ["event_names={stay: dwell}", "balance={}"])
    events(1000)
    with pytest.raises(UserError, match=r"e\.csv: value: 12 of 12 dwell values are above max_dwell_s 600 \(median "
                                        r"20000\) .* milliseconds\? divide it by 1000"):  # fmt: skip
        chat.run(tmp_path / "e.csv", tmp_path / "r.csv", cfg, progress=False)
    events(1)  # control: the same log in seconds pairs on dwell
    r = chat.run(tmp_path / "e.csv", tmp_path / "r.csv", cfg, progress=False)
    assert r.con.execute("SELECT count(*) FROM wt_pairs WHERE source = 'dwell'").fetchone()[0] == 6


DELIVERED_TWICE = (
    "response_id,session_id,turn,ts,prompt,response\n"
    "q1,s1,1,2026-03-01 10:00:00,周末去哪玩,去爬山\n"
    'q2,s1,1,2026-03-01 10:00:05,周末去哪玩,"在家看书，\n喝茶"\n'  # a cell over two lines: q1's copy is on line 5
    "q1,s1,1,2026-03-01 10:00:00,周末去哪玩,去爬山\n"
)
DELIVERED_TWICE_EVENTS = (
    "response_id,event,ts,value\nq1,thumbs_down,2026-03-01 10:01:00,\nq2,thumbs_up,2026-03-01 10:02:00,\n"
)


def test_a_response_row_repeated_whole_is_one_response(tmp_path, engine=None):
    """A responses row delivered twice (at-least-once pipelines) was refused as '1 repeated ids'; it is one response,
    the copy counted as `duplicate` in the responses ledger, and the pairs are those of the file without it. The same
    id with other content is still refused, naming the file:line (or Parquet row) of both."""
    kw = {"engine": engine} if engine else {}
    (tmp_path / "e.csv").write_text(DELIVERED_TWICE_EVENTS, encoding="utf-8")
    (tmp_path / "r.csv").write_text(DELIVERED_TWICE, encoding="utf-8")
    r = chat.run(tmp_path / "e.csv", tmp_path / "r.csv", load_profile("chat", "chat"), progress=False, **kw)
    assert pairs_of(r) == {("q2", "q1", "explicit", "thumbs_up_vs_down", "session")}
    led = build_report(r)["ledgers"]  # asserts inside: every ledger adds up to the rows read
    assert led["responses"] == {"duplicate": 1, "alone": 0, "unpaired": 0, "paired": 2}
    once = DELIVERED_TWICE.rsplit("q1,", 1)[0]
    (tmp_path / "once.csv").write_text(once, encoding="utf-8")  # control: the file without the copy
    r = chat.run(tmp_path / "e.csv", tmp_path / "once.csv", load_profile("chat", "chat"), progress=False, **kw)
    assert pairs_of(r) == {("q2", "q1", "explicit", "thumbs_up_vs_down", "session")}
    assert build_report(r)["ledgers"]["responses"]["duplicate"] == 0
    other = DELIVERED_TWICE.replace("去爬山\n", "去爬山了\n").replace("去爬山了\n", "去爬山\n", 1)
    (tmp_path / "r.csv").write_text(other, encoding="utf-8")
    with pytest.raises(UserError) as e:
        chat.run(tmp_path / "e.csv", tmp_path / "r.csv", load_profile("chat", "chat"), progress=False, **kw)
    assert str(e.value).startswith(f"{tmp_path / 'r.csv'}:2 and {tmp_path / 'r.csv'}:5: response_id 'q1' is given "
                                   "twice with other content")  # fmt: skip
    rows = list(csv.DictReader(io.StringIO(other)))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "r.parquet")
    with pytest.raises(UserError, match=r"r\.parquet: row 1 and .*r\.parquet: row 3: response_id 'q1'"):
        chat.run(tmp_path / "e.csv", tmp_path / "r.parquet", load_profile("chat", "chat"), progress=False, **kw)
