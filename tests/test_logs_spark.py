"""logs on Spark (PySpark local mode): the same SQL gives the same pairs and ledgers as DuckDB.

One SparkSession for the module (local[2], 2 shuffle partitions, no UI); small synthetic logs.
Marked slow: the JVM alone takes 10–50 s to start on a busy 2-core machine.
"""

import json

import pytest
from typer.testing import CliRunner

from weitiao.errors import UserError
from weitiao.logs import chat, dwell
from weitiao.logs.config import load_profile
from weitiao.logs.engine import portable
from weitiao.logs.report import build_report
from weitiao.logs.spark import java_missing
from weitiao.logs.synth import synth_chat, synth_dwell

pytestmark = pytest.mark.slow
WHY = java_missing()
if WHY:
    pytest.skip(f"Spark engine not testable here: {WHY} (`make install` installs Java)", allow_module_level=True)

PAIRS = "SELECT * FROM wt_pairs ORDER BY context, chosen_id, rejected_id"
LEDGER = "SELECT ledger, rule, n FROM wt_ledger ORDER BY ALL"


@pytest.fixture(scope="module")
def spark():
    from weitiao.logs.spark import SparkEngine

    conf = {"spark.sql.shuffle.partitions": "2", "spark.ui.enabled": "false", "spark.driver.memory": "1g"}
    eng = SparkEngine.start("local[2]", conf)
    yield eng
    eng.spark.stop()


@pytest.fixture(scope="module")
def zhihu(tmp_path_factory):
    return synth_dwell(tmp_path_factory.mktemp("zhihu"), 20_000, "zhihu", seed=3, progress=False)


@pytest.fixture(scope="module")
def talk(tmp_path_factory):
    files = synth_chat(tmp_path_factory.mktemp("chat"), 3_000, seed=4, fmt="csv", progress=False)
    lines = files["events"].read_text(encoding="utf-8").splitlines(keepends=True)
    with files["events"].open("a", encoding="utf-8") as f:  # rows delivered twice, empty values among them
        f.writelines(lines[1:200:7])
    return files


def assert_same(duck, spark) -> dict:
    """Equal pairs (texts, ids, source; confidence and margin to their 4 printed digits) and ledgers."""
    a, b = duck.con.execute(PAIRS), spark.con.execute(PAIRS)
    cols = [d[0] for d in a.description]
    assert cols == [d[0] for d in b.description]
    rows_a, rows_b = a.fetchall(), b.fetchall()
    assert len(rows_a) == len(rows_b) > 20
    for ra, rb in zip(rows_a, rows_b):
        for col, x, y in zip(cols, ra, rb):
            if col in ("confidence", "margin"):  # both round(x, 4): DuckDB in binary, Spark in decimal
                assert x == pytest.approx(y, abs=1.01e-4), col
            else:
                assert x == y, col
    assert duck.con.execute(LEDGER).fetchall() == spark.con.execute(LEDGER).fetchall()
    rep_a, rep_b = build_report(duck), build_report(spark)  # asserts inside: every ledger adds up
    assert rep_a["ledgers"] == rep_b["ledgers"] and rep_a["ledger_totals"] == rep_b["ledger_totals"]
    return rep_a["ledgers"]


@pytest.mark.parametrize(
    "profile,sets",
    [("zhihu", ["one_view_per_user=true", "max_pairs_per_context=2", "min_views=10"]), ("xhs", ["min_views=10"])],
)
def test_dwell_same_pairs_and_ledger(spark, zhihu, profile, sets):
    cfg = load_profile("dwell", profile, sets)
    duck = dwell.run(zhihu["events"], cfg, zhihu["content"], progress=False)
    sp = dwell.run(zhihu["events"], cfg, zhihu["content"], progress=False, engine=spark)
    assert sp.engine == "spark" and sp.sizes == duck.sizes
    led = assert_same(duck, sp)
    assert led["events"]["accidental"] > 0 and led["events"]["idle"] > 0 and led["events"]["paired"] > 0
    if "max_pairs_per_context=2" in sets:
        assert led["events"]["repeat_view"] > 0 and led["candidates"]["capped"] > 0
    else:
        assert led["candidates"]["not_similar"] > 0
    # negative control: the comparison sees a change of one threshold
    other = dwell.run(zhihu["events"], load_profile("dwell", profile, sets + ["rel_margin=0.5"]), zhihu["content"],
                      progress=False)  # fmt: skip
    assert other.con.execute(PAIRS).fetchall() != duck.con.execute(PAIRS).fetchall()


def test_chat_same_pairs_history_and_ledger_from_csv(spark, talk):
    """CSV in (Spark infers its own types), ngram cross-session groups, md5 tie-breaks in the caps, history lists."""
    sets = ["cross_session.enabled=true", "cross_session.match=ngram", "clean_chosen=false", "balance={dwell: 0.02}",
            "max_pairs_per_prompt=20", "max_pairs={share_copy: 100}"]  # fmt: skip
    cfg = load_profile("chat", "chat", sets)
    duck = chat.run(talk["events"], talk["responses"], cfg, progress=False)
    sp = chat.run(talk["events"], talk["responses"], cfg, progress=False, engine=spark)
    cand = assert_same(duck, sp)["candidates"]
    rules = ("below_margin", "conflict", "cross_not_allowed", "not_polar", "capped_prompt", "capped_source", "balanced")
    assert all(cand[r] > 0 for r in rules), cand
    assert build_report(sp)["ledgers"]["events"]["duplicate"] == 29  # every copy, on both engines
    scopes = dict(sp.con.execute("SELECT scope, count(*) FROM wt_pairs GROUP BY 1").fetchall())
    assert scopes["cross_session"] > 0 and scopes["session"] > 0
    multi = sp.con.execute("SELECT history FROM wt_pairs WHERE len(history) > 1 LIMIT 1").fetchone()[0]
    assert [t["turn"] for t in multi] == sorted(t["turn"] for t in multi)


def test_dwell_from_jsonl_without_content_file(spark, tmp_path):
    """JSON lines, content columns on every event (any_value per item), epoch-second timestamps."""
    import pyarrow as pa

    from weitiao.logs.synth import write_table

    rows = []
    for item, ctx, mean in (("a", "q1", 40.0), ("b", "q1", 12.0), ("c", "q1", 25.0), ("d", "q2", 20.0)):
        rows += [(item, ctx, f"正文{item}" * 50, mean + (i % 5), 1_740_787_200 + i) for i in range(30)]
    cols = ("content_id", "context", "text", "dwell_s", "ts")
    events = write_table(pa.table({c: [r[k] for r in rows] for k, c in enumerate(cols)}), tmp_path / "ev.jsonl")
    cfg = load_profile("dwell", "zhihu", ["position_correction=false", "min_views=5", "one_view_per_user=false"])
    duck, sp = dwell.run(events, cfg, progress=False), dwell.run(events, cfg, progress=False, engine=spark)
    want = [("a", "b", "dwell"), ("a", "c", "dwell"), ("c", "b", "dwell")]
    got = "SELECT chosen_id, rejected_id, source FROM wt_pairs ORDER BY ALL"
    assert duck.con.execute(got).fetchall() == sp.con.execute(got).fetchall() == want
    assert duck.con.execute(LEDGER).fetchall() == sp.con.execute(LEDGER).fetchall()


def test_same_errors_on_bad_logs(spark, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"content_id": ["a"], "dwell": [3.0]}), tmp_path / "ev.parquet")
    pq.write_table(pa.table({"content_id": ["a", "b"], "dwell_s": ["3", "x"]}), tmp_path / "bad.parquet")
    (tmp_path / "dup.csv").write_text("content_id,dwell_s,liked,liked\na,3,1,0\n", encoding="utf-8")
    (tmp_path / "empty.csv").write_text("", encoding="utf-8")
    cfg = load_profile("dwell", "zhihu", ["position_correction=false"])
    for name, message in (("ev.parquet", "dwell_s: missing column"), ("bad.parquet", "dwell_s: expected a number"),
                          ("dup.csv", "dup.csv:1: liked: the header names this column twice"),
                          ("empty.csv", "empty.csv: empty file")):  # fmt: skip
        errors = []
        for engine in (None, spark):
            with pytest.raises(UserError) as e:
                dwell.run(tmp_path / name, cfg, progress=False, engine=engine)
            errors.append(str(e.value))
        assert message in errors[0] and errors[0] == errors[1]
    with pytest.raises(UserError, match="nope.parquet: file not found"):
        dwell.run(tmp_path / "nope.parquet", cfg, progress=False, engine=spark)
    (tmp_path / "arr.json").write_text('[{"content_id": "a",\n "dwell_s": 3}]', encoding="utf-8")
    with pytest.raises(UserError, match="not JSON lines"):
        dwell.run(tmp_path / "arr.json", cfg, progress=False, engine=spark)


def test_double_literals_are_what_keeps_spark_equal(spark):
    """Negative control for the dialect layer: Spark's own reading of 1.0 / 3 is DECIMAL (0.333333)."""
    raw = spark.spark.sql("SELECT 1.0 / 3 AS x").collect()[0][0]
    assert float(raw) == 0.333333
    assert spark.rows("SELECT 1.0 / 3 AS x")[0][0] == 1.0 / 3
    assert "1.0e0 / 3" in portable("SELECT 1.0 / 3", "spark")


def test_cli_engine_spark(spark, zhihu, tmp_path):
    from weitiao.logs.commands import app

    out = tmp_path / "pairs.jsonl"
    args = ["dwell", zhihu["events"], "--content", zhihu["content"], "--engine", "spark", "--out", out,
            "--truth", zhihu["truth"], "--set", "min_views=10", "--no-progress"]  # fmt: skip
    r = CliRunner().invoke(app, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    assert "events 20,000 = " in r.output and "precision vs truth" in r.output
    assert len(out.read_text(encoding="utf-8").splitlines()) > 20


def test_csv_ids_with_leading_zeros_stay_text(spark, tmp_path):
    """Spark read a CSV id column 007, 08 as the integers 7, 8 (DuckDB keeps them text): none joined the events' "007",
    every event was unknown_response and the pair DuckDB made was lost on Spark."""
    (tmp_path / "r.csv").write_text(
        "response_id,session_id,turn,ts,prompt,response\n"
        "007,s,1,2026-01-01 10:00:00,问,答一\n08,s,1,2026-01-01 10:00:10,问,答二\n10,t,1,2026-01-01 10:00:10,问,答三\n",
        encoding="utf-8",
    )
    events = [("007", "thumbs_up"), ("08", "thumbs_down"), ("10", "copy")]
    (tmp_path / "e.jsonl").write_text(
        "".join(json.dumps({"response_id": i, "event": e, "ts": "2026-01-01 10:01:00"}) + "\n" for i, e in events),
        encoding="utf-8",
    )
    cfg = load_profile("chat", "chat")
    duck = chat.run(tmp_path / "e.jsonl", tmp_path / "r.csv", cfg, progress=False)
    sp = chat.run(tmp_path / "e.jsonl", tmp_path / "r.csv", cfg, progress=False, engine=spark)
    query = "SELECT chosen_id, rejected_id, source FROM wt_pairs"
    assert sp.con.execute(query).fetchall() == duck.con.execute(query).fetchall() == [("007", "08", "explicit")]
    assert build_report(sp)["ledgers"] == build_report(duck)["ledgers"]
    raw = {f.name: f.dataType.simpleString() for f in spark.spark.table("wt_raw_wt_responses_src").schema}
    assert raw["response_id"] == "string" and raw["turn"] == "int"  # control: no leading zero, still a number


def test_csv_text_line_breaks_and_a_folder_of_part_files(spark, tmp_path):
    """A CR LF inside a quoted CSV text reads as LF on Spark as on DuckDB (and as `data mix` reads it); a folder of
    Parquet part files with a time column (Spark's own output) was refused as 'unsupported log file type'."""
    (tmp_path / "r.csv").write_bytes(
        "response_id,session_id,turn,ts,prompt,response\r\n"
        'a,s,1,2026-01-01 10:00:00,问,"答\r\n一"\r\nb,s,1,2026-01-01 10:00:10,问,答二\r\n'.encode()
    )
    (tmp_path / "e.jsonl").write_text(
        "".join(
            json.dumps({"response_id": i, "event": e, "ts": "2026-01-01 10:01:00"}) + "\n"
            for i, e in (("a", "thumbs_up"), ("b", "thumbs_down"))
        ),  # fmt: skip
        encoding="utf-8",
    )
    cfg = load_profile("chat", "chat")
    duck = chat.run(tmp_path / "e.jsonl", tmp_path / "r.csv", cfg, progress=False)
    sp = chat.run(tmp_path / "e.jsonl", tmp_path / "r.csv", cfg, progress=False, engine=spark)
    query = "SELECT chosen, rejected FROM wt_pairs"
    assert sp.con.execute(query).fetchall() == duck.con.execute(query).fetchall() == [("答\n一", "答二")]
    spark.spark.read.json(str(tmp_path / "e.jsonl")).write.parquet(str(tmp_path / "parts"))
    sp = chat.run(tmp_path / "parts", tmp_path / "r.csv", cfg, progress=False, engine=spark)
    assert sp.con.execute(query).fetchall() == [("答\n一", "答二")]


def test_dwell_duplicates_and_milliseconds_on_spark(spark, tmp_path):
    """A view delivered twice counts once on Spark as on DuckDB (same ledger), and dwell in milliseconds is refused
    with the same line (median() in Spark SQL)."""
    (tmp_path / "c.csv").write_text("content_id,context,text\nA,q1,好回答\nB,q1,一般回答\n", encoding="utf-8")
    views = [("A", f"a{i}", 40 + i % 3) for i in range(10)] + [("B", f"b{i}", 20 + i % 2) for i in range(10)]
    rows = [f"{c},{u},2025-03-01 10:00:{i:02d},{d}" for i, (c, u, d) in enumerate(views)]
    (tmp_path / "e.csv").write_text("content_id,user_id,ts,dwell_s\n" + "\n".join(rows + rows[-3:] * 2) + "\n")
    cfg = load_profile("dwell", "zhihu", ["min_views=5", "position_correction=false", "min_z=0"])
    duck = dwell.run(tmp_path / "e.csv", cfg, tmp_path / "c.csv", progress=False)
    sp = dwell.run(tmp_path / "e.csv", cfg, tmp_path / "c.csv", progress=False, engine=spark)
    assert duck.con.execute(LEDGER).fetchall() == sp.con.execute(LEDGER).fetchall()
    assert ("events", "duplicate", 6) in sp.con.execute(LEDGER).fetchall()
    ms = [f"{c},{u},{t},{int(d) * 1000}" for c, u, t, d in (r.split(",") for r in rows)]
    (tmp_path / "ms.csv").write_text("content_id,user_id,ts,dwell_s\n" + "\n".join(ms) + "\n")
    errors = []
    for engine in (None, spark):
        with pytest.raises(UserError) as e:
            dwell.run(tmp_path / "ms.csv", cfg, tmp_path / "c.csv", progress=False, engine=engine)
        errors.append(str(e.value))
    assert errors[0] == errors[1] and "20 of 20 dwell values are above max_dwell_s 1800 (median 30500)" in errors[0]


def test_a_gbk_csv_is_refused_not_read_as_replacement_characters(spark, tmp_path):
    """Spark decoded a GBK CSV's texts as U+FFFD, unsaid: the pairs' chosen/rejected were '�ش�...' (DuckDB refuses
    the file). A local file gets every reader's line (GBK, the iconv command: test_encodings), the same as DuckDB's."""
    (tmp_path / "e.csv").write_text(
        "content_id,dwell_s\n" + "".join(f"{c},{d}\n" for c, d in [("A", 40), ("B", 20)] * 8)
    )
    content = "content_id,context,text,length_chars\nA,q1,好回答,800\nB,q1,一般回答,800\n"
    (tmp_path / "c.csv").write_bytes(content.encode("gbk"))
    cfg = load_profile("dwell", "zhihu", ["min_views=1", "min_z=0", "position_correction=false"])
    with pytest.raises(UserError, match=r"c\.csv:2: not UTF-8 but GB18030/GBK .* `iconv -f gb18030 -t utf-8 "):
        dwell.run(tmp_path / "e.csv", cfg, tmp_path / "c.csv", progress=False, engine=spark)
    (tmp_path / "c.csv").write_text(content, encoding="utf-8")
    r = dwell.run(tmp_path / "e.csv", cfg, tmp_path / "c.csv", progress=False, engine=spark)  # control: UTF-8 runs
    assert r.con.execute("SELECT chosen, rejected FROM wt_pairs").fetchall() == [("好回答", "一般回答")]


REPEATS = [f"A,{40 + i % 3},1" for i in range(10)] + ["B,20,1"] * 8 + ["B,90,1"] * 10  # 7 + 7 + 9 repeats
DISTINCT = [f"A,{40 + i},1" for i in range(10)] + [f"B,{20 + i},1" for i in range(10)]


@pytest.mark.parametrize(
    "lengths,rows,said",
    [(",length_chars", REPEATS, "so 23 views"),  # repeats with no user_id/ts to tell them from deliveries twice
     ("", DISTINCT, "20 of 20 views (100%)")],  # no length_chars: short texts make every view idle
)  # fmt: skip
def test_a_dwell_note_is_the_same_on_both_engines(spark, tmp_path, lengths, rows, said):
    """The notes on what a ledger cannot show: one note, the same words and counts on Spark as on DuckDB."""
    items = "A,q1,好回答,800\nB,q1,一般回答,800\n" if lengths else "A,q1,好回答\nB,q1,一般回答\n"
    (tmp_path / "c.csv").write_text(f"content_id,context,text{lengths}\n{items}", encoding="utf-8")
    (tmp_path / "n.csv").write_text("content_id,dwell_s,position\n" + "\n".join(rows) + "\n")
    cfg = load_profile("dwell", "zhihu", ["min_views=5", "position_correction=false", "min_z=0"])
    duck = dwell.run(tmp_path / "n.csv", cfg, tmp_path / "c.csv", progress=False)
    sp = dwell.run(tmp_path / "n.csv", cfg, tmp_path / "c.csv", progress=False, engine=spark)
    assert len(sp.notes) == 1 and sp.notes == duck.notes and said in sp.notes[0]


def test_csv_ids_that_look_like_numbers_or_dates_stay_as_written(spark, tmp_path):
    """Spark read a CSV id 1e5 as 100000.0 and 1.50 as 1.5: the events' "1e5" joined nothing (all unknown_content)
    and a pair's ids were not the file's. Now an id or text column of a CSV is read as text, as on DuckDB."""
    from test_logs_inputs import csv_ids_like_numbers_and_dates

    events, content, cfg = csv_ids_like_numbers_and_dates(tmp_path)
    duck = dwell.run(events, cfg, content, progress=False)
    sp = dwell.run(events, cfg, content, progress=False, engine=spark)
    query = "SELECT chosen_id, rejected_id, context FROM wt_pairs"
    assert sp.con.execute(query).fetchall() == duck.con.execute(query).fetchall() == [("1e5", "1.50", "2025/03/01")]
    assert build_report(sp)["ledgers"] == build_report(duck)["ledgers"]


def test_year_first_csv_times_read_alike_on_both_engines_and_day_first_refused_alike(spark, tmp_path):
    """DuckDB read a CSV time 2025/03/01 10:00:00 and Spark refused it ('expected a timestamp'), and both refused
    2025.03.01: the same log gave pairs on one engine and an error on the other. A year-first date (- / . between its
    parts, T or spaces before the time) is read as the ISO time on both; 03/01/2025 (month or day first?) stays
    refused on both with the same line. Control: the ISO file's pairs, where r1's later thumbs-down wins."""
    responses = "response_id,session_id,turn,ts,prompt,response\nr1,s1,1,{0},你好,在的\nr2,s1,1,{1},你好,在呢\n"
    events = "response_id,event,ts,value\nr1,thumbs_up,{2},\nr1,thumbs_down,{3},\nr2,thumbs_up,{3},\n"
    iso = ["2025-03-01 10:00:00", "2025-03-01 10:00:01", "2025-03-01 10:00:05", "2025-03-01 10:00:06"]
    year_first = ["2025/03/01 10:00:00", "2025.03.01 10:00:01", "2025/3/1  10:00:05", "2025.03.01T10:00:06"]
    cfg = load_profile("chat", "chat")
    got = {}
    for name, times in (("iso", iso), ("year_first", year_first)):
        (tmp_path / "r.csv").write_text(responses.format(*times), encoding="utf-8")
        (tmp_path / "e.csv").write_text(events.format(*times), encoding="utf-8")
        for engine in (None, spark):
            kw = {"engine": engine} if engine else {}
            r = chat.run(tmp_path / "e.csv", tmp_path / "r.csv", cfg, progress=False, **kw)
            got[name, engine is None] = r.con.execute("SELECT chosen_id, rejected_id FROM wt_pairs").fetchall()
    assert got == dict.fromkeys(got, [("r2", "r1")])
    (tmp_path / "e.csv").write_text(events.format(*iso[:2], "03/01/2025 10:00:05", "03/01/2025 10:00:06"))
    errors = []
    for engine in (None, spark):
        with pytest.raises(UserError) as e:
            kw = {"engine": engine} if engine else {}
            chat.run(tmp_path / "e.csv", tmp_path / "r.csv", cfg, progress=False, **kw)
        errors.append(str(e.value))
    assert errors[0] == errors[1] and "ts: expected a timestamp (ISO text such as 2025-03-01 10:00:00" in errors[0]


def test_prompts_that_java_lower_cases_otherwise_are_one_prompt_on_both_engines(spark, tmp_path):
    """Spark's lower() (Java) writes İ as i + U+0307 and a word-final Σ as ς where DuckDB writes i and σ: İstanbul
    天气 beside istanbul天气, and ΟΔΟΣ beside οδοσ, met across sessions on DuckDB and not on Spark (each cross-session
    pair's context differed too). Now both engines key them alike."""
    rows = [("r1", "s1", "İstanbul 天气？"), ("r2", "s2", "istanbul天气"), ("r3", "s3", "ΟΔΟΣ"), ("r4", "s4", "οδοσ")]
    lines = [f"{rid},{sid},1,2025-03-01 10:00:0{i},{p},回复{rid}\n" for i, (rid, sid, p) in enumerate(rows)]
    (tmp_path / "r.csv").write_text("response_id,session_id,turn,ts,prompt,response\n" + "".join(lines))
    (tmp_path / "e.csv").write_text("response_id,event,ts,value\nr1,thumbs_up,2025-03-01 10:01:00,\n"
                                    "r2,thumbs_down,2025-03-01 10:01:00,\nr3,thumbs_up,2025-03-01 10:01:00,\n"
                                    "r4,thumbs_down,2025-03-01 10:01:00,\n", encoding="utf-8")  # fmt: skip
    cfg = load_profile("chat", "chat", ["cross_session.enabled=true"])
    query = "SELECT chosen_id, rejected_id, context FROM wt_pairs ORDER BY 1"
    want = [("r1", "r2", "x#istanbul天气"), ("r3", "r4", "x#οδοσ")]
    assert chat.run(tmp_path / "e.csv", tmp_path / "r.csv", cfg, progress=False).con.execute(query).fetchall() == want
    sp = chat.run(tmp_path / "e.csv", tmp_path / "r.csv", cfg, progress=False, engine=spark)
    assert sp.con.execute(query).fetchall() == want


def test_session_ids_numbered_per_user_are_two_conversations_on_spark(spark, tmp_path):
    from test_logs_chat import test_session_ids_numbered_per_user_are_two_conversations as same

    same(tmp_path, engine=spark)


def test_prompt_keys_do_not_follow_the_jvm_locale(spark, tmp_path):
    """Spark's lower() of a text that is not all ASCII follows the JVM's default locale: under Turkish (a driver started
    with -Duser.language=tr) ISTANBUL 中文 lowered to ıstanbul, and it met istanbul 中文 across sessions on DuckDB only.
    The key lowers A-Z by translate: the same pairs on both engines, whatever the locale (switched for this test)."""
    rows = [("r1", "s1", "İSTANBUL'da ne yenir? 中文"), ("r2", "s2", "istanbul'da ne yenir 中文"),
            ("r3", "s3", "ISTANBUL DA NE YENIR 中文")]  # fmt: skip
    lines = [f"{rid},{sid},1,2025-03-01 10:00:0{i},{p},回复{rid}\n" for i, (rid, sid, p) in enumerate(rows)]
    (tmp_path / "r.csv").write_text("response_id,session_id,turn,ts,prompt,response\n" + "".join(lines))
    (tmp_path / "e.csv").write_text("response_id,event,ts,value\nr1,thumbs_up,2025-03-01 10:01:00,\n"
                                    "r2,thumbs_down,2025-03-01 10:01:00,\nr3,thumbs_down,2025-03-01 10:01:00,\n",
                                    encoding="utf-8")  # fmt: skip
    cfg = load_profile("chat", "chat", ["cross_session.enabled=true"])
    query = "SELECT chosen_id, rejected_id, context FROM wt_pairs ORDER BY ALL"
    want = chat.run(tmp_path / "e.csv", tmp_path / "r.csv", cfg, progress=False).con.execute(query).fetchall()
    assert [p[:2] for p in want] == [("r1", "r2"), ("r1", "r3")]
    locale = spark.spark._jvm.java.util.Locale
    before = locale.getDefault()
    locale.setDefault(locale("tr", "TR"))
    try:
        assert spark.rows("SELECT lower('I 中') AS x") == [("ı 中",)]  # the locale took: Spark's lower() follows it
        sp = chat.run(tmp_path / "e.csv", tmp_path / "r.csv", cfg, progress=False, engine=spark)
    finally:
        locale.setDefault(before)
    assert sp.con.execute(query).fetchall() == want


def test_a_response_row_repeated_whole_is_one_response_on_spark(spark, tmp_path):
    from test_logs_chat import test_a_response_row_repeated_whole_is_one_response as same

    same(tmp_path, engine=spark)


def test_a_content_row_repeated_whole_is_one_item_on_spark(spark, tmp_path):
    from test_logs_dwell import test_a_content_row_repeated_whole_is_one_item as same

    same(tmp_path, engine=spark)
