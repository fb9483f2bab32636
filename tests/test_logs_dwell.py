"""logs dwell (Q161): rules on a hand-made log, precision on synthetic logs, ablations, SQL and pandas parity."""

import sys
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from weitiao.data.formats import load_rows
from weitiao.errors import UserError
from weitiao.logs import dwell
from weitiao.logs.config import load_profile
from weitiao.logs.report import build_report, precision, write_outputs
from weitiao.logs.synth import synth_dwell

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


@pytest.fixture(scope="module")
def zhihu(tmp_path_factory):
    return synth_dwell(tmp_path_factory.mktemp("zhihu"), 60_000, "zhihu", seed=1, progress=False)


@pytest.fixture(scope="module")
def xhs(tmp_path_factory):
    return synth_dwell(tmp_path_factory.mktemp("xhs"), 80_000, "xhs", seed=2, progress=False)


def run(files, profile, *sets):
    return dwell.run(files["events"], load_profile("dwell", profile, list(sets)), files["content"], progress=False)


def prec(files, profile, *sets) -> dict:
    return precision(run(files, profile, *sets), files["truth"])


def test_zhihu_precision_and_what_each_rule_buys(zhihu):
    base = prec(zhihu, "zhihu")
    assert base["dwell"]["pairs"] > 500 and base["dwell"]["precision"] >= 0.95
    no_norm = prec(zhihu, "zhihu", "normalize=none")["dwell"]["precision"]
    no_margin = prec(zhihu, "zhihu", "rel_margin=0", "abs_margin=0", "min_z=0")["dwell"]["precision"]
    no_position = prec(zhihu, "zhihu", "position_correction=false")["dwell"]["precision"]
    assert no_norm < base["dwell"]["precision"] - 0.1  # long answers win on raw seconds
    assert no_margin < base["dwell"]["precision"] - 0.03
    assert no_position < base["dwell"]["precision"] - 0.01  # top slots get dwell they did not earn


def test_xhs_engagement_first_and_similar_items_only(xhs):
    r = run(xhs, "xhs")
    p = precision(r, xhs["truth"])
    assert p["engagement"]["pairs"] > 100 and p["engagement"]["precision"] >= 0.95
    bad = r.con.execute(
        """SELECT count(*) FROM wt_pairs p JOIN content a ON a.content_id = p.chosen_id
           JOIN content b ON b.content_id = p.rejected_id
           WHERE abs(a.length_chars - b.length_chars) > 0.3 * greatest(a.length_chars, b.length_chars)
              OR abs(a.images - b.images) > 1"""
    ).fetchone()[0]
    assert bad == 0
    dwell_only = precision(run(xhs, "xhs", "engagement_first=false"), xhs["truth"])
    assert set(dwell_only) == {"dwell", "all"}
    assert dwell_only["dwell"]["precision"] >= 0.9


@pytest.mark.parametrize(
    "sets", [[], ["one_view_per_user=true"], ["max_pairs_per_context=2", "min_views=5"], ["idle_ratio=null"]]
)
def test_ledgers_add_up(zhihu, sets):
    r = run(zhihu, "zhihu", *sets)
    rep = build_report(r)  # asserts inside: every ledger total equals its input
    assert rep["ledger_totals"]["events"] == {"total": 60_000, "expected": 60_000}
    led = rep["ledgers"]
    assert led["candidates"]["kept"] == rep["pairs"]
    if "max_pairs_per_context=2" in sets:
        assert led["candidates"]["capped"] > 0
        assert max(rep["top_contexts"].values()) == 2
    if "one_view_per_user=true" in sets:
        assert led["events"]["repeat_view"] > 0


def test_hand_made_log_counts_every_view(tmp_path):
    """q1: A holds readers twice as long as B; C has too few views; D is alone in q2; one unknown id."""
    content = pa.table(
        {
            "content_id": ["A", "B", "C", "D"],
            "context": ["q1", "q1", "q1", "q2"],
            "text": ["好回答", "一般回答", "冷门回答", "独苗"],
            "length_chars": [800, 800, 800, 800],
        }
    )
    rows = [("A", 60.0 + i % 3) for i in range(30)] + [("B", 30.0 + i % 3) for i in range(30)]
    rows += [("C", 50.0)] * 3 + [("D", 40.0)] * 25 + [("Z", 10.0)]
    rows += [("A", 0.5), ("B", 0.2), ("B", 5000.0)]  # two accidental clicks, one idle tab
    events = pa.table({"content_id": [r[0] for r in rows], "dwell_s": [r[1] for r in rows]})
    pq.write_table(content, tmp_path / "content.parquet")
    pq.write_table(events, tmp_path / "events.parquet")
    cfg = load_profile("dwell", "zhihu", ["position_correction=false"])
    r = dwell.run(tmp_path / "events.parquet", cfg, tmp_path / "content.parquet", progress=False)
    led = build_report(r)["ledgers"]
    assert {k: v for k, v in led["events"].items() if v} == {
        "unknown_content": 1,
        "accidental": 2,
        "idle": 1,
        "min_views": 3,
        "single_in_context": 25,
        "paired": 60,
    }
    pairs = r.con.execute("SELECT chosen_id, rejected_id, source, prompt FROM wt_pairs").fetchall()
    assert pairs == [("A", "B", "dwell", "q1")]
    out = write_outputs(r, tmp_path / "out" / "pairs.jsonl", build_report(r))
    loaded = load_rows(out["pairs"])
    assert loaded.format == "preference" and loaded.rows[0].chosen == "好回答" and loaded.rows[0].rejected == "一般回答"


def test_the_items_ledger_counts_every_item_of_the_content(tmp_path):
    """Of 4 items, C had accidental views only and D none: the ledger read `items 2 = paired 2`, as if the content
    held 2 items. Now they count under no_kept_views (no events of their own), and the events ledger still adds up."""
    content = (
        "content_id,context,text,length_chars\nA,q1,好回答,800\nB,q1,一般回答,800\nC,q1,冷门,800\nD,q2,没人看,800\n"
    )
    (tmp_path / "c.csv").write_text(content)
    (tmp_path / "e.csv").write_text("content_id,dwell_s\nA,60\nB,30\nC,0.5\n")
    cfg = load_profile("dwell", "zhihu", ["min_views=1", "min_z=0", "position_correction=false"])
    led = build_report(dwell.run(tmp_path / "e.csv", cfg, tmp_path / "c.csv", progress=False))["ledgers"]
    assert led["items"] == {
        "duplicate": 0, "no_kept_views": 2, "min_views": 0, "single_in_context": 0, "unpaired": 0, "paired": 2
    }  # fmt: skip
    assert {k: v for k, v in led["events"].items() if v} == {"accidental": 1, "paired": 2}  # control: events as before


def test_output_is_dpo_ready(zhihu, tmp_path):
    r = run(zhihu, "zhihu")
    rep = build_report(r, zhihu["truth"])
    paths = write_outputs(r, tmp_path / "pairs.jsonl", rep)
    loaded = load_rows(paths["pairs"])
    assert loaded.format == "preference" and loaded.kept == rep["pairs"] and loaded.rejected == 0
    assert "precision vs truth" in paths["report_html"].read_text(encoding="utf-8")
    row = paths["pairs"].read_text(encoding="utf-8").splitlines()[0]
    assert '"source": "dwell"' in row and '"confidence"' in row and '"context"' in row


@pytest.mark.parametrize("profile", ["zhihu", "xhs"])
def test_printed_sql_runs_on_plain_tables(zhihu, xhs, profile):
    """What --print-sql prints runs as-is on a fresh DuckDB holding `events` and `content` tables."""
    files = zhihu if profile == "zhihu" else xhs
    cfg = load_profile("dwell", profile)
    con = duckdb.connect()
    for name in ("events", "content"):
        con.execute(f"CREATE TABLE {name} AS SELECT * FROM read_parquet('{files[name]}')")
    con.execute(dwell.sql_script(cfg))
    got = con.execute("SELECT chosen_id, rejected_id, source FROM wt_pairs ORDER BY ALL").fetchall()
    want = run(files, profile).con.execute("SELECT chosen_id, rejected_id, source FROM wt_pairs ORDER BY ALL")
    assert got == want.fetchall() and len(got) > 100


@pytest.mark.parametrize("profile,sets", [("zhihu", []), ("xhs", []), ("zhihu", ["one_view_per_user=true"])])
def test_pandas_reference_gives_the_same_pairs(zhihu, xhs, profile, sets):
    from logs_pairs import pandas_pairs

    files = zhihu if profile == "zhihu" else xhs
    cfg = load_profile("dwell", profile, sets)
    r = dwell.run(files["events"], cfg, files["content"], progress=False)
    want = set(r.con.execute("SELECT chosen_id, rejected_id, source FROM wt_pairs").fetchall())
    pairs, ledger = pandas_pairs(files["events"], files["content"], cfg)
    assert set(zip(pairs.chosen_id, pairs.rejected_id, pairs.source)) == want
    duck = dict(r.con.execute("SELECT rule, n FROM wt_ledger WHERE ledger = 'events'").fetchall())
    assert ledger == {k: v for k, v in duck.items() if v}


def test_engagement_margin_is_finite(tmp_path):
    """A liked in 8 of 20 views, B in none: the margin was 0.4 / 1e-9 = 4e8; B's rate counts as 1/20."""
    content = pa.table(
        {"content_id": ["A", "B"], "context": ["q1", "q1"], "text": ["甲", "乙"], "length_chars": [800, 800]}
    )
    rows = [("A", 60.0, i < 8) for i in range(20)] + [("B", 60.0, False) for _ in range(20)]
    rows += [("C", 60.0, i < 10) for i in range(20)] + [("D", 60.0, i < 1) for i in range(20)]
    content = pa.concat_tables(
        [
            content,
            pa.table(
                {"content_id": ["C", "D"], "context": ["q2", "q2"], "text": ["丙", "丁"], "length_chars": [800, 800]}
            ),
        ]
    )
    events = pa.table(
        {"content_id": [r[0] for r in rows], "dwell_s": [r[1] for r in rows], "liked": [r[2] for r in rows]}
    )
    pq.write_table(content, tmp_path / "content.parquet")
    pq.write_table(events, tmp_path / "events.parquet")
    cfg = load_profile("dwell", "zhihu", ["position_correction=false", "min_views=1", "engagement_first=true"])
    r = dwell.run(tmp_path / "events.parquet", cfg, tmp_path / "content.parquet", progress=False)
    got = r.con.execute("SELECT chosen_id, rejected_id, source, margin FROM wt_pairs ORDER BY context").fetchall()
    # Control: D has one like in 20 views, so its rate 0.05 is used as is: (0.5 − 0.05) / 0.05 = 9.
    assert got == [("A", "B", "engagement", 8.0), ("C", "D", "engagement", 9.0)]


def test_a_view_delivered_twice_counts_once(tmp_path):
    """B's two long views, each delivered five times over (at-least-once logging), made B's mean dwell 59 s against
    A's 41 s: B > A was kept, where without the copies A > B. A row repeating another whole (with user_id and ts)
    now counts once, the copies as `duplicate`; the same view twice from a log without user_id/ts is two views."""
    content = "content_id,context,text,length_chars\nA,q1,好回答,800\nB,q1,一般回答,800\n"
    views = [("A", f"a{i}", 40 + i % 3) for i in range(10)] + [("B", f"b{i}", 20) for i in range(8)]
    views += [("B", "b8", 90), ("B", "b9", 90)]
    rows = [f"{c},{u},2025-03-01 10:00:{i:02d},{d},1" for i, (c, u, d) in enumerate(views)]
    rows += rows[-2:] * 4
    (tmp_path / "c.csv").write_text(content, encoding="utf-8")
    (tmp_path / "e.csv").write_text("content_id,user_id,ts,dwell_s,position\n" + "\n".join(rows) + "\n")
    cfg = load_profile("dwell", "zhihu", ["min_views=5", "position_correction=false", "min_z=0"])
    r = dwell.run(tmp_path / "e.csv", cfg, tmp_path / "c.csv", progress=False)
    assert r.con.execute("SELECT chosen_id, rejected_id FROM wt_pairs").fetchall() == [("A", "B")]
    assert build_report(r)["ledgers"]["events"]["duplicate"] == 8
    # Control: without user_id and ts a repeated row cannot be told from another view: all count, and B wins.
    bare = [",".join(x.split(",")[i] for i in (0, 3, 4)) for x in rows]
    (tmp_path / "n.csv").write_text("content_id,dwell_s,position\n" + "\n".join(bare) + "\n")
    r = dwell.run(tmp_path / "n.csv", cfg, tmp_path / "c.csv", progress=False)
    assert r.con.execute("SELECT chosen_id, rejected_id FROM wt_pairs").fetchall() == [("B", "A")]


CONTENT_TWICE = (
    'content_id,context,text,length_chars\nA,q1,"好回答\n第二行",800\nB,q1,一般回答,800\nA,q1,"好回答\n第二行",800\n'
)


def test_a_content_row_repeated_whole_is_one_item(tmp_path, engine=None):
    """A content row delivered twice (at-least-once pipelines) was refused as 'content_id: 1 repeated ids'; it is one
    item, the copy counted as `duplicate` in the items ledger, and the pairs are those of the file without it. The same
    id with other content is still refused, naming the file:line (or Parquet row) of both."""
    kw = {"engine": engine} if engine else {}
    cfg = load_profile("dwell", "zhihu", ["min_views=1", "min_z=0", "position_correction=false"])
    (tmp_path / "e.csv").write_text("content_id,dwell_s\nA,60\nB,30\n", encoding="utf-8")
    (tmp_path / "c.csv").write_text(CONTENT_TWICE, encoding="utf-8")
    r = dwell.run(tmp_path / "e.csv", cfg, tmp_path / "c.csv", progress=False, **kw)
    want = [("好回答\n第二行", "一般回答", "A", "B")]
    assert r.con.execute("SELECT chosen, rejected, chosen_id, rejected_id FROM wt_pairs").fetchall() == want
    led = build_report(r)["ledgers"]  # asserts inside: every ledger adds up to the rows read
    assert led["items"] == {
        "duplicate": 1, "no_kept_views": 0, "min_views": 0, "single_in_context": 0, "unpaired": 0, "paired": 2
    }  # fmt: skip
    once = CONTENT_TWICE.rsplit("A,", 1)[0]
    (tmp_path / "once.csv").write_text(once, encoding="utf-8")  # control: the file without the copy
    r = dwell.run(tmp_path / "e.csv", cfg, tmp_path / "once.csv", progress=False, **kw)
    assert r.con.execute("SELECT chosen, rejected, chosen_id, rejected_id FROM wt_pairs").fetchall() == want
    assert build_report(r)["ledgers"]["items"]["duplicate"] == 0
    other = CONTENT_TWICE.rsplit(",800", 1)[0] + ",900\n"  # the copy's length differs
    (tmp_path / "c.csv").write_text(other, encoding="utf-8")
    with pytest.raises(UserError) as e:
        dwell.run(tmp_path / "e.csv", cfg, tmp_path / "c.csv", progress=False, **kw)
    assert str(e.value).startswith(f"{tmp_path / 'c.csv'}:2 and {tmp_path / 'c.csv'}:5: content_id 'A' is given "
                                   "twice with other content")  # fmt: skip
    rows = [dict(zip(("content_id", "context", "text", "length_chars"), x)) for x in
            (("A", "q1", "好", 800), ("B", "q1", "一般", 800), ("A", "q1", "好", 900))]  # fmt: skip
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "c.parquet")
    with pytest.raises(UserError, match=r"c\.parquet: row 1 and .*c\.parquet: row 3: content_id 'A'"):
        dwell.run(tmp_path / "e.csv", cfg, tmp_path / "c.parquet", progress=False, **kw)


def test_repeats_that_cannot_be_told_from_deliveries_twice_are_said(tmp_path):
    """Views repeating another whole in a log without user_id/ts were counted as views without a word (the pairs
    above turned from A > B to B > A): now a note, on screen and in the report, names the count and the columns."""
    content = "content_id,context,text,length_chars\nA,q1,好回答,800\nB,q1,一般回答,800\n"
    (tmp_path / "c.csv").write_text(content, encoding="utf-8")
    rows = [f"A,{40 + i % 3},1" for i in range(10)] + ["B,20,1"] * 8 + ["B,90,1"] * 10  # 7 + 7 + 9 repeats
    (tmp_path / "n.csv").write_text("content_id,dwell_s,position\n" + "\n".join(rows) + "\n")
    cfg = load_profile("dwell", "zhihu", ["min_views=5", "position_correction=false", "min_z=0"])
    r = dwell.run(tmp_path / "n.csv", cfg, tmp_path / "c.csv", progress=False)
    [note] = build_report(r)["notes"]
    assert note.startswith(f"{tmp_path / 'n.csv'}: user_id, ts: no such column, so 23 views that repeat another")
    write_outputs(r, tmp_path / "o" / "pairs.jsonl", build_report(r))
    assert "23 views that repeat" in (tmp_path / "o" / "report.html").read_text(encoding="utf-8")
    head = "content_id,user_id,dwell_s,position"
    with_user = [head] + [f"{x.split(',')[0]},u{i},{x[2:]}" for i, x in enumerate(rows)]
    (tmp_path / "u.csv").write_text("\n".join(with_user) + "\n")  # control: every row its own user, no ts
    r = dwell.run(tmp_path / "u.csv", cfg, tmp_path / "c.csv", progress=False)
    assert r.notes == []  # none repeats another whole
    (tmp_path / "d.csv").write_text("\n".join([head, *(f"{x.split(',')[0]},u,{x[2:]}" for x in rows)]) + "\n")
    r = dwell.run(tmp_path / "d.csv", cfg, tmp_path / "c.csv", progress=False)
    assert [n.split(": no such")[0] for n in r.notes] == [f"{tmp_path / 'd.csv'}: ts"] and "so 23 views" in r.notes[0]


@pytest.mark.parametrize("scale,match", [(1000, "above max_dwell_s 1800 .* milliseconds"),
                                         (1 / 60, "below min_dwell_s 3 .* minutes")])  # fmt: skip
def test_dwell_nearly_all_out_of_bounds_is_refused_naming_the_unit(tmp_path, scale, match):
    """Dwell logged in milliseconds: every view was dropped as idle and the run said only 'no preference pair'."""
    (tmp_path / "c.csv").write_text("content_id,context,text\nA,q1,好回答\nB,q1,一般回答\n", encoding="utf-8")
    rows = [f"{c},{(40 if c == 'A' else 20) * scale + i % 3}" for i in range(20) for c in "AB"]
    (tmp_path / "e.csv").write_text("content_id,ms\n" + "\n".join(rows) + "\n")
    cfg = load_profile("dwell", "zhihu", ["position_correction=false", "columns={ms: dwell_s}"])
    with pytest.raises(UserError, match=rf"e\.csv: ms: 40 of 40 dwell values are {match}"):
        dwell.run(tmp_path / "e.csv", cfg, tmp_path / "c.csv", progress=False)
    # Control: seconds with some idle tabs (under 90% out of bounds) run.
    mostly_idle = [f"{c},{5000 if i < 30 else 40}" for i, c in enumerate("AB" * 20)]
    (tmp_path / "e.csv").write_text("content_id,ms\n" + "\n".join(mostly_idle) + "\n")
    dwell.run(tmp_path / "e.csv", cfg, tmp_path / "c.csv", progress=False)


def test_idle_views_because_the_text_is_short_are_said_when_length_chars_is_missing(tmp_path):
    """Without length_chars the reading time comes from `text`: previews made every view idle and the run ended with
    no pairs and no word of why. Now a note names the column, the share dropped and the fix."""
    rows = [f"A,{40 + i},1" for i in range(10)] + [f"B,{20 + i},1" for i in range(10)]  # no row repeats another
    (tmp_path / "e.csv").write_text("content_id,dwell_s,position\n" + "\n".join(rows) + "\n")
    cfg = load_profile("dwell", "zhihu", ["min_views=5", "position_correction=false", "min_z=0"])
    (tmp_path / "c.csv").write_text("content_id,context,text\nA,q1,好回答\nB,q1,一般回答\n", encoding="utf-8")
    r = dwell.run(tmp_path / "e.csv", cfg, tmp_path / "c.csv", progress=False)
    assert r.con.execute("SELECT count(*) FROM wt_pairs").fetchall() == [(0,)]  # every view idle: no pair
    [note] = build_report(r)["notes"]
    assert note.startswith(f"{tmp_path / 'c.csv'}: length_chars: no such column") and "20 of 20 views (100%)" in note
    # Controls: the full length given, or the idle ratio off, and nothing is said
    (tmp_path / "c.csv").write_text("content_id,context,text,length_chars\nA,q1,好回答,800\nB,q1,一般,800\n")
    r = dwell.run(tmp_path / "e.csv", cfg, tmp_path / "c.csv", progress=False)
    assert r.notes == [] and r.con.execute("SELECT chosen_id FROM wt_pairs").fetchall() == [("A",)]
    (tmp_path / "c.csv").write_text("content_id,context,text\nA,q1,好回答\nB,q1,一般回答\n", encoding="utf-8")
    off = load_profile("dwell", "zhihu", ["min_views=5", "position_correction=false", "min_z=0", "idle_ratio=null"])
    assert dwell.run(tmp_path / "e.csv", off, tmp_path / "c.csv", progress=False).notes == []
