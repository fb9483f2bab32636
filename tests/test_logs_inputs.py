"""Malformed logs and configs give one-line UserErrors naming the file and the column or key."""

import json
import re

import pytest

from weitiao.errors import UserError
from weitiao.logs import chat, dwell
from weitiao.logs.config import dump_config, load_profile

CONTENT = "content_id,context,text,length_chars\nA,q1,好回答,800\nB,q1,一般回答,800\n"
EVENTS = "content_id,dwell_s,position\nA,60,1\nB,30,2\n"
RESPONSES = "response_id,session_id,turn,ts,prompt,response\nr1,s1,1,2025-03-01 10:00:00,你好,在的\n"
CHAT_EVENTS = "response_id,event,ts,value\nr1,thumbs_up,2025-03-01 10:00:05,\n"


def error(tmp_path, kind="dwell", events=EVENTS, content=CONTENT, sets=(), suffix=".csv") -> str:
    ev, other = tmp_path / f"events{suffix}", tmp_path / f"other{suffix}"
    ev.write_text(events, encoding="utf-8")
    other.write_text(content, encoding="utf-8")
    with pytest.raises(UserError) as e:
        if kind == "dwell":
            dwell.run(ev, load_profile("dwell", "zhihu", list(sets)), other, progress=False)
        else:
            chat.run(ev, other, load_profile("chat", "chat", list(sets)), progress=False)
    msg = str(e.value)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


def test_good_csv_runs(tmp_path):
    (tmp_path / "e.csv").write_text(EVENTS)
    (tmp_path / "c.csv").write_text(CONTENT)
    cfg = load_profile("dwell", "zhihu", ["min_views=1", "min_z=0"])
    r = dwell.run(tmp_path / "e.csv", cfg, tmp_path / "c.csv", progress=False)
    assert r.con.execute("SELECT chosen_id, rejected_id FROM wt_pairs").fetchall() == [("A", "B")]


@pytest.mark.parametrize(
    "events,content,expected",
    [
        ("content_id,position\nA,1\n", CONTENT, "events.csv: dwell_s: missing column (seconds on the item)"),
        ("content_id,dwell_s\nA,60\n", CONTENT, "events.csv: position: missing column (feed position, 1 = top;"),
        (EVENTS + "A,abc,1\n", CONTENT, "events.csv: dwell_s: expected a number, found 'abc' (1 rows)"),
        (EVENTS + "A,-3,1\n", CONTENT, "events.csv: dwell_s: 1 values below 0, e.g. -3"),
        (EVENTS + "A,5,0\n", CONTENT, "events.csv: position: 1 values below 1"),
        (EVENTS + "A,5,1.5\n", CONTENT, "events.csv: position: expected an integer, found '1.5'"),
        (EVENTS + ",5,1\n", CONTENT, "events.csv: content_id: 1 empty values"),
        (EVENTS, "content_id,text\nA,x\n", "other.csv: context: missing column"),
    ],
)
def test_malformed_dwell_logs(tmp_path, events, content, expected):
    msg = error(tmp_path, events=events, content=content)
    file, rest = expected.split(": ", 1)
    assert msg.startswith(f"{tmp_path / file}: ") and rest in msg, msg


def test_wrong_column_type_and_bad_timestamps(tmp_path):
    msg = error(tmp_path, events="content_id,dwell_s,position\nA,true,1\n")
    assert "dwell_s: expected a number, got column type BOOLEAN" in msg
    msg = error(tmp_path, "chat", events=CHAT_EVENTS + "r1,copy,yesterday,\n", content=RESPONSES)
    assert "events.csv: ts: expected a timestamp" in msg and "found 'yesterday'" in msg
    msg = error(tmp_path, "chat", events=CHAT_EVENTS, content=RESPONSES.replace("2025-03-01 10:00:00", "soon"))
    assert "other.csv: ts: expected a timestamp" in msg
    msg = error(tmp_path, "chat", events=CHAT_EVENTS.replace("event,", "action,"), content=RESPONSES)
    assert "events.csv: event: missing column" in msg and "columns found: response_id, action, ts, value" in msg
    (tmp_path / "r.csv").write_text(RESPONSES, encoding="utf-8")
    (tmp_path / "e.jsonl").write_text('{"response_id": "r1", "event": "copy", "ts": "x"}\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"e.jsonl: ts: expected a timestamp .*, found 'x' \(1 rows\)$"):
        chat.run(tmp_path / "e.jsonl", tmp_path / "r.csv", load_profile("chat", "chat"), progress=False)
    with pytest.raises(UserError, match="nope.parquet: file not found"):
        dwell.run(tmp_path / "nope.parquet", load_profile("dwell", "zhihu"), progress=False)
    (tmp_path / "e.xlsx").write_text("x")
    with pytest.raises(UserError, match="unsupported log file type"):
        dwell.run(tmp_path / "e.xlsx", load_profile("dwell", "zhihu"), progress=False)


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(
        UserError, match=r"^command line rel_margn=0.2: rel_margn: Extra .*; did you mean rel_margin\?$"
    ):
        load_profile("dwell", "zhihu", ["rel_margn=0.2"])
    with pytest.raises(UserError, match=r"rel_margin: Input should be greater than or equal to 0"):
        load_profile("dwell", "xhs", ["rel_margin=-1"])
    with pytest.raises(UserError, match=r"profile 'douyin': not a built-in dwell profile \(xhs, zhihu\)"):
        load_profile("dwell", "douyin")
    with pytest.raises(UserError, match=r"chat.yaml: kind: this is a chat profile, not dwell"):
        load_profile("dwell", str(load_profile.__globals__["PROFILE_DIR"] / "chat.yaml"))
    with pytest.raises(UserError, match=r"cross_session.match: Input should be 'exact' or 'ngram'"):
        load_profile("chat", "chat", ["cross_session.match=fuzzy"])
    with pytest.raises(UserError, match=r"balance: Value error, explicit is the strongest source"):
        load_profile("chat", "chat", ["balance={explicit: 0.5}"])
    with pytest.raises(UserError, match=r"confidence: Value error, unknown signal 'thumb'"):
        load_profile("chat", "chat", ["confidence={thumb: 0.3}"])
    with pytest.raises(UserError, match=r"event_names: Value error, maps to 'thumbsup'"):
        load_profile("chat", "chat", ["event_names={like: thumbsup}"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("rel_margin: [\n")
    with pytest.raises(UserError, match=r"bad.yaml:2: not valid YAML"):
        load_profile("dwell", str(bad))


def test_config_errors_name_the_file_line_that_set_the_key(tmp_path):
    """A bad value named only `my.yaml` or `my.yaml with --set`, and `.inf` passed: as a SQL literal it failed the run
    later as "step 'events: …' failed: Binder Error: Referenced column "inf" not found", naming no key; so did an
    n-gram too large for DuckDB's range(). Now the line of the file that set the key (a base file's too) or the
    --set item is named, and non-finite numbers are refused at load."""
    base = tmp_path / "base.yaml"
    base.write_text("kind: chat\nbase: chat\n\ncross_session:\n  enabled: true\n  ngram: 1000000\n", encoding="utf-8")
    mine = tmp_path / "mine.yaml"
    mine.write_text("base: base.yaml\nread_cps: 5\nmax_dwell_s: .inf\n", encoding="utf-8")
    with pytest.raises(UserError, match=rf"^{re.escape(str(mine))}:3: max_dwell_s: Input should be a finite number"):
        load_profile("chat", str(mine))
    mine.write_text("base: base.yaml\nread_cps: 5\n", encoding="utf-8")
    with pytest.raises(UserError, match=rf"^{re.escape(str(base))}:6: cross_session.ngram: Input should be less than"):
        load_profile("chat", str(mine))
    with pytest.raises(UserError, match=r"^command line read_cps=nan: read_cps: Input should be a finite number$"):
        load_profile("chat", "chat", ["read_cps=nan"])
    with pytest.raises(UserError, match=r"^command line confidence.dwell=inf: confidence.dwell: Input should be a fin"):
        load_profile("chat", "chat", ["confidence.dwell=inf"])
    assert load_profile("chat", str(mine), ["cross_session.ngram=4"]).read_cps == 5


def test_custom_profile_inherits_and_round_trips(tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text("base: xhs\nrel_margin: 0.5\n", encoding="utf-8")
    cfg = load_profile("dwell", str(mine))
    assert cfg.profile == "mine" and cfg.rel_margin == 0.5 and cfg.similar_length == 0.3 and cfg.engagement_first
    dumped = tmp_path / "dumped.yaml"
    dumped.write_text(dump_config(cfg), encoding="utf-8")
    assert load_profile("dwell", str(dumped)) == cfg
    nested = tmp_path / "nested.yaml"
    nested.write_text("kind: chat\nbase: chat\ncross_session: {enabled: true}\n", encoding="utf-8")
    c = load_profile("chat", str(nested))
    assert c.cross_session.enabled and c.cross_session.discount == 0.9 and c.balance["dwell"] == 0.25


def test_csv_true_false_flags_decide_like_counts(tmp_path):
    """DuckDB types true/false CSV columns BOOLEAN; `logs dwell` crashed on them (the synth CSV has them)."""
    (tmp_path / "c.csv").write_text(CONTENT)
    rows = [("A", 60, i % 2 == 0) for i in range(20)] + [("B", 60, False) for _ in range(20)]
    pairs = {}
    for style, flag in (("bool", lambda x: str(x).lower()), ("int", lambda x: str(int(x)))):
        body = "".join(f"{cid},{d},1,{flag(liked)},false\n" for cid, d, liked in rows)
        (tmp_path / f"{style}.csv").write_text("content_id,dwell_s,position,liked,collected\n" + body)
        cfg = load_profile("dwell", "zhihu", ["min_views=1", "engagement_first=true"])
        r = dwell.run(tmp_path / f"{style}.csv", cfg, tmp_path / "c.csv", progress=False)
        pairs[style] = r.con.execute("SELECT chosen_id, rejected_id, source FROM wt_pairs").fetchall()
    assert pairs["bool"] == pairs["int"] == [("A", "B", "engagement")]  # equal dwell: the likes decide


def test_profile_column_mapping(tmp_path):
    """A warehouse's own names (item_id, secs, body) mapped in the profile give the same pairs."""
    (tmp_path / "e.csv").write_text(EVENTS)
    (tmp_path / "c.csv").write_text(CONTENT)
    cfg = load_profile("dwell", "zhihu", ["min_views=1", "min_z=0"])
    want = dwell.run(tmp_path / "e.csv", cfg, tmp_path / "c.csv", progress=False)
    want = want.con.execute("SELECT * FROM wt_pairs").fetchall()
    (tmp_path / "e2.csv").write_text(EVENTS.replace("content_id,dwell_s", "item_id,secs"))
    (tmp_path / "c2.csv").write_text("item_id,context,body,length_chars\nA,q1,好回答,800\nB,q1,一般回答,800\n")
    (tmp_path / "p.yaml").write_text(
        "kind: dwell\nbase: zhihu\nmin_views: 1\nmin_z: 0\ncolumns: {item_id: content_id, secs: dwell_s, body: text}\n"
    )
    mapped = load_profile("dwell", str(tmp_path / "p.yaml"))
    got = dwell.run(tmp_path / "e2.csv", mapped, tmp_path / "c2.csv", progress=False)
    assert len(want) == 1 and want[0][:3] == ("q1", "好回答", "一般回答")
    assert got.con.execute("SELECT * FROM wt_pairs").fetchall() == want
    # Without length_chars its default length("text") reads the mapped body: 3 chars, so 60 s is idle.
    (tmp_path / "c3.csv").write_text("item_id,context,body\nA,q1,好回答\nB,q1,一般回答\n")
    short = dwell.run(tmp_path / "e2.csv", mapped, tmp_path / "c3.csv", progress=False)
    assert short.con.execute("SELECT n FROM wt_ledger WHERE rule = 'idle'").fetchall() == [(2,)]
    # Errors name the file's own column; negative control: without the mapping the column is missing.
    (tmp_path / "e3.csv").write_text("item_id,secs,position\nA,abc,1\n")
    with pytest.raises(UserError, match=r"e3\.csv: secs: expected a number, found 'abc'"):
        dwell.run(tmp_path / "e3.csv", mapped, tmp_path / "c2.csv", progress=False)
    assert "content_id: missing column" in error(tmp_path, events=EVENTS.replace("content_id", "item_id"))
    bad = load_profile("dwell", "zhihu", ["columns={item_id: contentid}"])
    with pytest.raises(UserError, match=r"columns: item_id → contentid: contentid is not a dwell log column"):
        dwell.run(tmp_path / "e2.csv", bad, tmp_path / "c2.csv", progress=False)


def test_epoch_milliseconds_are_not_taken_for_seconds(tmp_path):
    """Epoch seconds beyond 1e11 (year 5138) are refused: 1740823200000 is milliseconds, not year 57 000."""
    ms = RESPONSES.replace("2025-03-01 10:00:00", "1740823200000")
    msg = error(tmp_path, "chat", events=CHAT_EVENTS, content=ms)
    assert "other.csv: ts: expected a timestamp (ISO text such as 2025-03-01 10:00:00" in msg
    assert "TIMESTAMP or epoch seconds), found '1740823200000'" in msg
    (tmp_path / "r.csv").write_text(RESPONSES.replace("2025-03-01 10:00:00", "1740823200"), encoding="utf-8")
    (tmp_path / "e.csv").write_text(CHAT_EVENTS, encoding="utf-8")  # control: epoch seconds read fine
    r = chat.run(tmp_path / "e.csv", tmp_path / "r.csv", load_profile("chat", "chat"), progress=False)
    assert r.events == 1


def test_an_all_null_optional_column_reads_as_empty(tmp_path):
    """JSONL events whose `value` is null on every row (no dwell events) come typed NULL from DuckDB: they are
    empty values, not a wrong type; a required column of nulls is still refused."""
    import json

    ev, resp = tmp_path / "events.jsonl", tmp_path / "responses.csv"
    rows = [{"response_id": "r1", "event": "thumbs_up", "ts": "2025-03-01 10:00:05", "value": None}]
    ev.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    resp.write_text(RESPONSES, encoding="utf-8")
    run = chat.run(ev, resp, load_profile("chat", "chat", []), progress=False)
    assert run.con.execute("SELECT count(*) FROM wt_events").fetchone()[0] == 1
    ev.write_text(json.dumps({**rows[0], "response_id": None}) + "\n", encoding="utf-8")
    with pytest.raises(UserError, match="response_id: 1 empty values"):
        chat.run(ev, resp, load_profile("chat", "chat", []), progress=False)


def test_events_without_content_file_must_agree_on_each_items_content(tmp_path):
    """Without --content the content columns ride on every event; an item whose events name two texts (an edited
    answer) or two questions has no one text to pair, and any_value() picked one of them silently."""
    head = "content_id,dwell_s,position,context,text,length_chars\n"
    good = head + "A,60,1,q1,好回答,800\nB,30,2,q1,一般回答,800\nA,62,1,q1,好回答,800\nB,31,2,q1,一般回答,800\n"
    (tmp_path / "e.csv").write_text(good, encoding="utf-8")
    cfg = load_profile("dwell", "zhihu", ["min_views=1", "min_z=0"])
    r = dwell.run(tmp_path / "e.csv", cfg, progress=False)
    assert r.con.execute("SELECT chosen_id, rejected_id, chosen FROM wt_pairs").fetchall() == [("A", "B", "好回答")]
    (tmp_path / "e.csv").write_text(good.replace("B,31,2,q1,一般回答", "B,31,2,q1,改过的回答"), encoding="utf-8")
    want = r"e\.csv: text: content_id 'B' differs between its events \(e\.g\. '一般回答' and '改过的回答'\)"
    with pytest.raises(UserError, match=want):
        dwell.run(tmp_path / "e.csv", cfg, progress=False)
    moved = head + "A,60,1,q1,好回答,800\nA,60,1,q2,好回答,800\n"
    (tmp_path / "m.csv").write_text(moved, encoding="utf-8")
    with pytest.raises(
        UserError, match=r"m\.csv: context: content_id 'A' differs between its events \(e\.g\. 'q1' and 'q2'\)"
    ):
        dwell.run(tmp_path / "m.csv", cfg, progress=False)


def test_an_optional_column_spelt_another_way_is_refused_not_defaulted(tmp_path):
    """`colected`, `Images` or `values` beside a missing optional column were unread, and the column read its default
    on every row (0 collects, 0 images, no dwell seconds): the pairs changed without a word. A column no typo away
    from ours stays an unread extra; the same names mapped in the profile read."""
    msg = error(tmp_path, content=CONTENT.replace("length_chars", "length_chars,Images").replace(",800", ",800,2"))
    assert msg.startswith(f"{tmp_path / 'other.csv'}: Images: not a column we read; did you mean images (number of ")
    assert msg.endswith("every row reads 0: rename it, or map it in the profile (columns: {Images: images})")
    msg = error(tmp_path, events="content_id,dwell_s,position,colected\nA,60,1,1\nB,30,2,0\n")
    assert "events.csv: colected: not a column we read; did you mean collected" in msg
    msg = error(tmp_path, "chat", events=CHAT_EVENTS.replace(",value", ",values"), content=RESPONSES)
    assert "events.csv: values: not a column we read; did you mean value (seconds, for dwell events)? " in msg
    assert "every row reads empty" in msg
    # controls: an extra column that is no near miss, and the typo mapped to our name
    (tmp_path / "e.csv").write_text("content_id,dwell_s,position,region\nA,60,1,bj\nB,30,2,sh\n")
    (tmp_path / "c.csv").write_text(CONTENT.replace("length_chars", "length_chars,image").replace(",800", ",800,0"))
    cfg = load_profile("dwell", "zhihu", ["min_views=1", "min_z=0", "columns={image: images}"])
    r = dwell.run(tmp_path / "e.csv", cfg, tmp_path / "c.csv", progress=False)
    assert r.con.execute("SELECT chosen_id, rejected_id FROM wt_pairs").fetchall() == [("A", "B")]
    # events that carry the content columns (no --content file) read them: `images` is no typo of another column
    head = "content_id,dwell_s,position,context,text,length_chars,images\n"
    (tmp_path / "r.csv").write_text(head + "A,60,1,q1,好回答,800,1\nB,30,2,q1,一般回答,800,1\n", encoding="utf-8")
    r = dwell.run(tmp_path / "r.csv", load_profile("dwell", "zhihu", ["min_views=1", "min_z=0"]), progress=False)
    assert r.con.execute("SELECT chosen_id FROM wt_pairs").fetchall() == [("A",)]


def test_text_times_with_an_offset_beside_times_without_one_are_refused(tmp_path):
    """A naive time is read as UTC, one with +08:00 as that instant: in one column, a 👎 at 10:03 (naive, meant as
    Beijing time) came after a 👍 at 10:05+08:00 (02:05 UTC) and won as the last click. All with offsets, or none,
    read as before; a date's `-01` is no offset."""
    events = CHAT_EVENTS + "r1,thumbs_down,2025-03-01T10:05:00+08:00,\n"
    msg = error(tmp_path, "chat", events=events, content=RESPONSES)
    assert msg.startswith(
        f"{tmp_path / 'events.csv'}: ts: 1 values carry a UTC offset (e.g. '2025-03-01T10:05:00+08:00')"
    )
    assert "and the others none (e.g. '2025-03-01 10:00:05')" in msg
    (tmp_path / "r.csv").write_text(RESPONSES.replace("2025-03-01 10:00:00", "2025-03-01"), encoding="utf-8")
    for ok in (CHAT_EVENTS.replace(":05,", ":05Z,") + "r1,copy,2025-03-01T10:05:00+08:00,\n", CHAT_EVENTS):
        (tmp_path / "e.csv").write_text(ok, encoding="utf-8")
        assert chat.run(tmp_path / "e.csv", tmp_path / "r.csv", load_profile("chat", "chat"), progress=False).events


def test_times_need_no_zone_but_parquet_files_of_one_glob_must_agree_on_having_one(tmp_path):
    """Times are compared only with each other within one column (the last click, a session's last response), so
    naive times give the pairs offsets give. A glob of Parquet files typed from one file cast the others: wall-clock
    times (10:00 Beijing) beside UTC instants read as UTC, 8 hours late, and r1's 10:01 thumbs-down became the last
    click (r2 chosen over it) without a word. Now that is refused naming a file of each kind."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    def run(events, responses):
        r = chat.run(events, responses, load_profile("chat", "chat"), progress=False)
        return r.con.execute("SELECT chosen_id, rejected_id, signal FROM wt_pairs ORDER BY 1").fetchall()

    responses = RESPONSES + "r2,s1,1,2025-03-01 10:00:01,你好,你好呀\n"
    events = CHAT_EVENTS + "r2,thumbs_down,2025-03-01 10:00:06,\n"
    (tmp_path / "r.csv").write_text(responses, encoding="utf-8")
    (tmp_path / "e.csv").write_text(events, encoding="utf-8")
    naive = run(tmp_path / "e.csv", tmp_path / "r.csv")
    (tmp_path / "e.csv").write_text(events.replace(",\n", "+08:00,\n").replace("value+08:00", "value"), "utf-8")
    assert naive == run(tmp_path / "e.csv", tmp_path / "r.csv") == [("r1", "r2", "thumbs_up_vs_down")]

    (tmp_path / "ev").mkdir()
    t = 1_740_794_400  # 2025-03-01 02:00 UTC = 10:00 in Beijing

    def part(name, event, ts, tz):
        table = {"response_id": ["r1"], "event": [event], "ts": pa.array([ts * 10**6], pa.timestamp("us", tz=tz))}
        pq.write_table(pa.table(table), tmp_path / "ev" / name)

    part("a.parquet", "thumbs_up", t + 300, "UTC")  # 10:05 Beijing, as an instant
    part("b.parquet", "thumbs_down", t + 8 * 3600 + 60, None)  # 10:01 Beijing, wall clock
    with pytest.raises(UserError, match=r"ev/\*.parquet: ts: .*a.parquet holds times with a zone \(instants\) and "
                                        r".*b.parquet times without one"):  # fmt: skip
        run(str(tmp_path / "ev" / "*.parquet"), tmp_path / "r.csv")
    part("b.parquet", "thumbs_down", t + 60, "UTC")
    assert run(str(tmp_path / "ev" / "*.parquet"), tmp_path / "r.csv") == [("r1", "r2", "thumbs_up_vs_none")]


def test_a_windows_line_break_inside_a_csv_text_cell_reads_as_one_line_break(tmp_path):
    """A content CSV saved on Windows: its quoted texts' CR LF reached the pairs' chosen/rejected ("\\r" in training
    text, where `data mix`/SFT read the same cell as LF). Text columns of a CSV now read CR LF as LF; JSON stays."""
    (tmp_path / "e.csv").write_text(EVENTS)
    content = 'content_id,context,text,length_chars\r\nA,q1,"好回答\r\n第二行",800\r\nB,q1,"一般\r\n回答",800\r\n'
    (tmp_path / "c.csv").write_bytes(content.encode())
    cfg = load_profile("dwell", "zhihu", ["min_views=1", "min_z=0"])
    r = dwell.run(tmp_path / "e.csv", cfg, tmp_path / "c.csv", progress=False)
    assert r.con.execute("SELECT chosen, rejected FROM wt_pairs").fetchall() == [("好回答\n第二行", "一般\n回答")]
    rows = [{"content_id": "A", "context": "q1", "text": "好\r\n的", "length_chars": 800},
            {"content_id": "B", "context": "q1", "text": "一般", "length_chars": 800}]  # fmt: skip
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))
    r = dwell.run(tmp_path / "e.csv", cfg, tmp_path / "c.jsonl", progress=False)
    assert r.con.execute("SELECT chosen FROM wt_pairs").fetchall() == [("好\r\n的",)]  # a JSON string's "\r\n" is data


def test_a_gbk_csv_is_named_as_not_utf8(tmp_path):
    """A content CSV saved by Excel on Chinese Windows (GBK) said only 'cannot read: Invalid Input Error: CSV Error on
    Line: 2'; it now gives every reader's line (GBK, the iconv command: test_encodings), also when the bad bytes come
    after the sniffed rows (found in the check scan)."""
    (tmp_path / "e.csv").write_text(EVENTS)
    (tmp_path / "c.csv").write_bytes(CONTENT.encode("gbk"))
    cfg = load_profile("dwell", "zhihu", ["min_views=1", "min_z=0"])
    utf8 = r"c\.csv:\d+: not UTF-8 but GB18030/GBK .* `iconv -f gb18030 -t utf-8 "
    with pytest.raises(UserError, match=utf8):
        dwell.run(tmp_path / "e.csv", cfg, tmp_path / "c.csv", progress=False)
    late = "content_id,context,text,length_chars\n" + "".join(f"X{i},q9,text{i},10\n" for i in range(30_000))
    (tmp_path / "c.csv").write_bytes(late.encode() + CONTENT.split("\n", 1)[1].encode("gbk"))
    with pytest.raises(UserError, match=utf8):
        dwell.run(tmp_path / "e.csv", cfg, tmp_path / "c.csv", progress=False)
    # UTF-8 Chinese before the GBK lines: converting the file whole would garble it, so no iconv line
    late = late.replace(",q9,text", ",q9,文本")
    (tmp_path / "c.csv").write_bytes(late.encode() + CONTENT.split("\n", 1)[1].encode("gbk"))
    with pytest.raises(UserError, match=r"c\.csv:30002: not valid UTF-8 .*, though the lines before it are UTF-8"):
        dwell.run(tmp_path / "e.csv", cfg, tmp_path / "c.csv", progress=False)


def csv_ids_like_numbers_and_dates(tmp_path):
    """A content CSV whose ids read as numbers (1e5, 1.50) and whose context reads as a date (2025/03/01), and events
    in JSON lines naming the ids as written."""
    (tmp_path / "c.csv").write_text("content_id,context,text,length_chars\n1e5,2025/03/01,好回答,800\n"
                                    "1.50,2025/03/01,一般回答,800\n", encoding="utf-8")  # fmt: skip
    rows = [{"content_id": c, "dwell_s": d + i % 3} for c, d in (("1e5", 60), ("1.50", 30)) for i in range(20)]
    (tmp_path / "e.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return tmp_path / "e.jsonl", tmp_path / "c.csv", load_profile("dwell", "zhihu", ["position_correction=false"])


def test_csv_ids_that_look_like_numbers_or_dates_stay_as_written(tmp_path):
    """A CSV context 2025/03/01 (DuckDB's reader: a DATE) was refused as 'expected an id, got column type DATE'; on
    Spark ids 1e5 and 1.50 came back as 100000.0 and 1.5, in the pairs and in the joins. An id or text column of a CSV
    is read as the text it holds now."""
    events, content, cfg = csv_ids_like_numbers_and_dates(tmp_path)
    r = dwell.run(events, cfg, content, progress=False)
    got = r.con.execute("SELECT chosen_id, rejected_id, context FROM wt_pairs").fetchall()
    assert got == [("1e5", "1.50", "2025/03/01")]


def test_a_csv_header_naming_a_column_twice_is_refused_and_an_empty_file_named(tmp_path):
    """DuckDB read a second `liked` column as liked_1 and left it unread, unsaid (here: the view the first says was
    liked, the second not); an empty events file said 'content_id: missing column ... columns found: column0'."""
    msg = error(tmp_path, events="content_id,dwell_s,position,liked,liked\nA,60,1,1,0\nB,30,2,0,0\n")
    assert msg.endswith("events.csv:1: liked: the header names this column twice; rename or drop one (the reader "
                        "would take one of them)")  # fmt: skip
    assert error(tmp_path, events="").endswith("events.csv: empty file; expected log rows (a CSV: a header line, "
                                               "then rows)")  # fmt: skip
    assert error(tmp_path, content="").startswith(f"{tmp_path / 'other.csv'}: empty file")  # the content file too
    (tmp_path / "e.csv").write_text("content_id,dwell_s,position,liked\nA,60,1,1\nB,30,2,0\n", encoding="utf-8")
    (tmp_path / "c.csv").write_text(CONTENT, encoding="utf-8")  # control: one liked column reads
    dwell.run(tmp_path / "e.csv", load_profile("dwell", "zhihu"), tmp_path / "c.csv", progress=False)


def test_csv_times_in_a_guessed_pattern_are_refused_not_read_day_first(tmp_path):
    """DuckDB's CSV reader took 03/01/2025 for 3 January (a pattern guessed from the values; Spark refused the same
    file): the thumbs-down of 01/03/2025 read as the later click and won. A CSV time is read as ISO text now, as on
    Spark: the pattern is refused naming the column and a value."""
    events = "response_id,event,ts,value\nr1,thumbs_up,03/01/2025 10:00:00,\nr1,thumbs_down,01/03/2025 10:00:00,\n"
    msg = error(tmp_path, "chat", events=events, content=RESPONSES)
    assert "events.csv: ts: expected a timestamp" in msg and "found '03/01/2025 10:00:00' (2 rows)" in msg
    iso = events.replace("03/01/2025", "2025-03-01").replace("01/03/2025", "2025-01-03")  # control: ISO reads
    (tmp_path / "e.csv").write_text(iso, encoding="utf-8")
    (tmp_path / "r.csv").write_text(RESPONSES, encoding="utf-8")
    chat.run(tmp_path / "e.csv", tmp_path / "r.csv", load_profile("chat", "chat"), progress=False)


def test_two_files_may_name_one_column_differently_but_one_file_may_not_hold_both(tmp_path):
    """The replies' time is created_at and the events' time is at: both map to ts (it was refused, 'ts is the target
    of more than one column', leaving no way to map both files); a file holding both columns is refused."""
    (tmp_path / "r.csv").write_text(
        RESPONSES.replace("response_id,session_id,turn,ts", "msg,session_id,turn,created_at")
    )
    (tmp_path / "e.csv").write_text(CHAT_EVENTS.replace("response_id,event,ts", "msg,event,at"))
    cfg = load_profile("chat", "chat", ["columns={msg: response_id, created_at: ts, at: ts}"])
    r = chat.run(tmp_path / "e.csv", tmp_path / "r.csv", cfg, progress=False)
    assert r.con.execute("SELECT n FROM wt_ledger WHERE ledger = 'events'").fetchall() == [(1,)]
    both = CHAT_EVENTS.replace("response_id,event,ts,value", "msg,event,at,value,created_at").replace(",\n", ",,\n")
    (tmp_path / "e2.csv").write_text(both)
    with pytest.raises(
        UserError, match=r"e2\.csv: at: the profile's columns map both created_at and at of this file to ts"
    ):
        chat.run(tmp_path / "e2.csv", tmp_path / "r.csv", cfg, progress=False)
    # dwell: the content file's own name for length_chars is the one found; a note said the file had no such column
    (tmp_path / "e.csv").write_text("content_id,dwell_s,position\nA,60,1\nB,30,2\n")
    (tmp_path / "c.csv").write_text("content_id,context,text,chars\nA,q1,好回答,10\nB,q1,一般回答,10\n")
    cfg = load_profile(
        "dwell", "zhihu", ["min_views=1", "min_z=0", "columns={nchars: length_chars, chars: length_chars}"]
    )
    r = dwell.run(tmp_path / "e.csv", cfg, tmp_path / "c.csv", progress=False)
    assert r.con.execute("SELECT n FROM wt_ledger WHERE rule = 'idle'").fetchall() == [(2,)] and r.notes == []
