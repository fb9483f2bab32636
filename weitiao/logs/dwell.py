"""Content-site dwell time → preference pairs (chapter Q161), as SQL run by DuckDB or Spark (engine.py).

Inputs are two relations (files, or a team's own warehouse tables under these names):
  events(content_id, user_id, ts, dwell_s, position, liked, collected)   one row per view
  content(content_id, context, prompt, text, length_chars, images)      one row per item
(a content row repeated whole is counted once, the copies as `duplicate`; one id with other content is refused),
where `context` is what makes items comparable (a tag or topic for notes, the question for answers).
Without a content file the content columns are read from the events file, and must be the same on every event of
an item (two texts or contexts for one content_id are an error, not a silent pick).

Steps (each one SQL statement; `build_stages(cfg)` returns them, `--print-sql` prints them):
  1. content: each row once (a row delivered twice: `duplicate`), an integer key and the expected reading time
     (base_s + chars / read_cps + images × image_s)
  2. cells: one pass over the events, joined to content, grouped by item × feed position × drop rule:
     unknown content, duplicate (a row repeating another whole, user_id and ts given: a view delivered twice),
     accidental (< min_dwell_s), idle (> max_dwell_s or > idle_ratio × expected time), optionally repeat views;
     kept views keep count, Σ dwell, Σ dwell², likes/collects
  3. position factors: Σ (dwell / item mean dwell) / views per position; an item's own mean cancels
     its quality, so what is left is how much attention the slot gets
  4. items: score = mean of dwell × weight, weight = 1 (none), 1000 / chars (per_char) or
     1 / expected time (completion), divided by the position factor; each score is linear in dwell,
     so it and its variance come from the cell sums without a second pass over the events
  5. candidate pairs: every two items of one context with ≥ min_views; each gets one outcome:
     not_similar → engagement (decides) → engagement_tie → below_margin → not_significant → dwell
     (decides); then the per-context cap
  6. pairs: the kept candidates with prompt and texts
  7. ledger: every event, item and candidate pair counted under exactly one rule
The confidence of a pair is Φ(z) of the deciding signal, approximated by 1 / (1 + e^(−1.702 z)); its
margin is the relative difference of that signal, (hi − lo) / lo, where an engagement rate of 0 counts
as 1 / views (no like in n views only says the rate is below about 1/n).
"""

from __future__ import annotations

from pathlib import Path

from weitiao.errors import UserError, where
from weitiao.logs.config import DwellConfig
from weitiao.logs.engine import (
    Column,
    DuckEngine,
    Engine,
    PairsRun,
    Stage,
    check_dwell_unit,
    check_mapping,
    check_repeats,
    file_column,
    ledger_tail,
    open_table,
    run_stages,
    script,
    sql_str,
)
from weitiao.logs.engine import sql_num as n

INPUTS = [  # the tables `sql_script` reads, for its header
    "events(content_id, user_id, ts, dwell_s, position, liked, collected)  one row per view",
    "content(content_id, context, prompt, text, length_chars, images)     one row per item",
]
EVENT_RULES = (
    "unknown_content",
    "duplicate",
    "accidental",
    "idle",
    "repeat_view",
    "min_views",
    "single_in_context",
    "unpaired",
    "paired",
)
CANDIDATE_RULES = ("not_similar", "engagement_tie", "below_margin", "not_significant", "capped", "kept")


def event_columns(cfg: DwellConfig) -> list[Column]:
    """Columns read from the events file (some only when a rule needs them)."""
    need_user = cfg.one_view_per_user
    return [
        Column("content_id", "id", "the item viewed"),
        Column("user_id", "id", "who viewed; needed by one_view_per_user", need_user, default="NULL"),
        Column("ts", "time", "view time; needed by one_view_per_user", need_user, default="NULL"),
        Column("dwell_s", "number", "seconds on the item", min=0),
        Column(
            "position",
            "int",
            "feed position, 1 = top; needed by position_correction",
            cfg.position_correction,
            min=1,
            default="1",
        ),
        Column("liked", "flag", "liked in this view; needed by engagement_first", cfg.engagement_first, default="0"),
        Column("collected", "flag", "collected (saved) in this view", False, default="0"),
    ]


def content_columns() -> list[Column]:
    """Columns read from the content file, or from the events file when there is none (ids repeat in either:
    `check_repeats`, `_same_content_on_every_event`)."""
    return [
        Column("content_id", "id", "item id"),
        Column("context", "id", "what makes items comparable: tag, topic or question"),
        Column("text", "text", "the item's text (becomes chosen/rejected)"),
        Column("prompt", "text", "prompt for DPO; default: the context", False, nullable=True, default="NULL"),
        Column("length_chars", "int", "length in characters", False, min=0, default='length("text")'),
        Column("images", "int", "number of images", False, min=0, default="0"),
    ]


def expected_sql(cfg: DwellConfig, table: str = "") -> str:
    """An item's expected reading time in seconds, over `table`'s length_chars and images."""
    return f"{n(cfg.base_s)} + {table}length_chars / {n(cfg.read_cps)} + {table}images * {n(cfg.image_s)}"


def build_stages(cfg: DwellConfig) -> list[Stage]:
    """The pairing pipeline for `cfg` as SQL statements over `events` and `content`."""
    stages = [
        Stage(  # at-least-once delivery repeats rows; a row with one id and other content is refused (check_repeats)
            "content: a row repeated whole (delivered twice) counted once",
            "wt_content_rows",
            "SELECT DISTINCT content_id, context, prompt, text, length_chars, images FROM content",
        ),
        Stage(
            "content: integer key and expected reading time per item",
            "wt_content",
            f"""SELECT CAST(row_number() OVER (ORDER BY content_id) AS INTEGER) AS idx, content_id, context,
  length_chars, images, {expected_sql(cfg)} AS expected_s
FROM wt_content_rows""",
        ),
    ]
    idle = f" OR e.dwell_s > {n(cfg.idle_ratio)} * c.expected_s" if cfg.idle_ratio else ""
    who, repeat, src = "", "", "v"
    if cfg.one_view_per_user:  # a window over user × item: exact, but the slowest step by far
        who, src = "e.user_id, e.ts, ", "r"
        repeat = """,
r AS (
  SELECT idx, pos, dwell_s, engaged, CASE WHEN drop_rule IS NULL AND row_number() OVER (
    PARTITION BY user_id, idx, drop_rule IS NULL ORDER BY ts, dwell_s) > 1 THEN 'repeat_view' ELSE drop_rule END
    AS drop_rule
  FROM v)"""
    stages.append(
        Stage(
            "cells: views per item × position, accidental/idle/unknown counted apart",
            "wt_cells",
            f"""WITH d AS (  -- a row repeated whole by one user at one ts (at-least-once delivery) is one view
  SELECT *, CASE WHEN user_id IS NOT NULL AND ts IS NOT NULL THEN row_number() OVER (PARTITION BY content_id, user_id,
    ts, dwell_s, position, liked, collected ORDER BY ts) ELSE 1 END AS copy
  FROM events),
v AS (
  SELECT c.idx, {who}least(e.position, {cfg.max_position}) AS pos, e.dwell_s,
    CAST(e.liked AS INTEGER) + CAST(e.collected AS INTEGER) > 0 AS engaged,
    CASE
      WHEN c.idx IS NULL THEN 'unknown_content'
      WHEN e.copy > 1 THEN 'duplicate'
      WHEN e.dwell_s < {n(cfg.min_dwell_s)} THEN 'accidental'
      WHEN e.dwell_s > {n(cfg.max_dwell_s)}{idle} THEN 'idle'
    END AS drop_rule
  FROM d e LEFT JOIN wt_content c ON c.content_id = e.content_id){repeat}
SELECT idx, pos, drop_rule, count(*) AS views, sum(dwell_s) AS dwell_sum, sum(dwell_s * dwell_s) AS dwell_sq,
  count(*) FILTER (WHERE engaged) AS engaged
FROM {src} GROUP BY ALL""",
        )
    )
    weight = {"none": "1.0", "per_char": "1000.0 / greatest(c.length_chars, 1)", "completion": "1.0 / c.expected_s"}
    weight = weight[cfg.normalize]
    join_pos = ""
    if cfg.position_correction:
        stages.append(
            Stage(
                "position factors: attention per feed position",
                "wt_position",
                """WITH kept AS (SELECT idx, pos, views, dwell_sum FROM wt_cells WHERE drop_rule IS NULL),
item AS (SELECT idx, sum(dwell_sum) / sum(views) AS mean_dwell FROM kept GROUP BY idx)
SELECT pos, sum(dwell_sum / mean_dwell) / sum(views) AS factor, sum(views) AS views
FROM kept JOIN item USING (idx) WHERE mean_dwell > 0 GROUP BY pos""",
            )
        )
        weight = f"{weight} / coalesce(p.factor, 1.0)"
        join_pos = "\n  LEFT JOIN wt_position p ON p.pos = x.pos"
    stages.append(
        Stage(
            f"items: mean {cfg.normalize} score (dwell × weight), its variance, views, engagement",
            "wt_items",
            f"""WITH w AS (
  SELECT x.idx, x.views, x.engaged, x.dwell_sum, x.dwell_sq, {weight} AS w
  FROM wt_cells x JOIN wt_content c ON c.idx = x.idx{join_pos}
  WHERE x.drop_rule IS NULL),
a AS (
  SELECT idx, sum(views) AS views, sum(dwell_sum * w) AS s1, sum(dwell_sq * w * w) AS s2, sum(engaged) AS engaged
  FROM w GROUP BY idx)
SELECT c.content_id, c.context, c.length_chars, c.images, a.views, a.s1 / a.views AS score,
  CASE WHEN a.views > 1 THEN greatest(a.s2 - a.s1 * a.s1 / a.views, 0.0) / (a.views - 1) ELSE 0.0 END AS score_var,
  CAST(a.engaged AS DOUBLE) / a.views AS engagement
FROM a JOIN wt_content c ON c.idx = a.idx""",
        )
    )

    rules = []
    if cfg.similar_length is not None:
        rules.append(f"WHEN abs(len_a - len_b) > {n(cfg.similar_length)} * greatest(len_a, len_b) THEN 'not_similar'")
    if cfg.similar_images is not None:
        rules.append(f"WHEN abs(img_a - img_b) > {cfg.similar_images} THEN 'not_similar'")
    if cfg.engagement_first:
        e_ok = (
            f"e_hi > e_lo AND e_hi >= e_lo * {n(1 + cfg.engagement_rel_margin)}"
            f" AND e_hi - e_lo >= {n(cfg.engagement_abs_margin)} AND z_eng >= {n(cfg.engagement_min_z)}"
        )
        rules.append(f"WHEN {e_ok} THEN 'engagement'")
        rules.append(f"WHEN e_hi > {n(cfg.engagement_quiet)} THEN 'engagement_tie'")
    rules.append(
        f"WHEN s_hi <= s_lo OR s_hi < s_lo * {n(1 + cfg.rel_margin)} OR s_hi - s_lo < {n(cfg.abs_margin)}"
        " THEN 'below_margin'"
    )
    rules.append(f"WHEN z_dwell < {n(cfg.min_z)} THEN 'not_significant'")
    cap = ""
    if cfg.max_pairs_per_context:
        cap = f"""CASE WHEN rule IS NULL AND row_number() OVER (
    PARTITION BY context, rule IS NULL ORDER BY confidence DESC, chosen_id, rejected_id) > {cfg.max_pairs_per_context}
    THEN 'capped' ELSE rule END AS """
    case = "\n      ".join(rules)
    stages.append(
        Stage(
            "candidate pairs: same context, similar items, margins, significance, cap",
            "wt_candidates",
            f"""WITH q AS (SELECT * FROM wt_items WHERE views >= {cfg.min_views}),
p AS (
  SELECT a.context, a.content_id AS id_a, b.content_id AS id_b, a.score AS s_a, b.score AS s_b,
    a.score_var AS v_a, b.score_var AS v_b, a.views AS n_a, b.views AS n_b, a.engagement AS e_a,
    b.engagement AS e_b, a.length_chars AS len_a, b.length_chars AS len_b, a.images AS img_a, b.images AS img_b
  FROM q a JOIN q b ON a.context = b.context AND a.content_id < b.content_id),
z AS (
  SELECT *, greatest(s_a, s_b) AS s_hi, least(s_a, s_b) AS s_lo, greatest(e_a, e_b) AS e_hi,
    least(e_a, e_b) AS e_lo, abs(s_a - s_b) / sqrt(v_a / n_a + v_b / n_b + 1e-12) AS z_dwell,
    abs(e_a - e_b) / sqrt((e_a * n_a + e_b * n_b) / (n_a + n_b) * (1 - (e_a * n_a + e_b * n_b) / (n_a + n_b))
      * (1.0 / n_a + 1.0 / n_b) + 1e-12) AS z_eng
  FROM p),
d AS (
  SELECT *, CASE
      {case}
      ELSE 'dwell'
    END AS outcome
  FROM z),
o AS (
  SELECT context, id_a, id_b,
    CASE WHEN outcome IN ('engagement', 'dwell') THEN NULL ELSE outcome END AS rule,
    CASE WHEN outcome IN ('engagement', 'dwell') THEN outcome END AS source,
    CASE WHEN outcome = 'engagement' THEN (CASE WHEN e_a > e_b THEN id_a ELSE id_b END)
         ELSE (CASE WHEN s_a > s_b THEN id_a ELSE id_b END) END AS chosen_id,
    CASE WHEN outcome = 'engagement' THEN (CASE WHEN e_a > e_b THEN id_b ELSE id_a END)
         ELSE (CASE WHEN s_a > s_b THEN id_b ELSE id_a END) END AS rejected_id,
    CASE WHEN outcome = 'engagement'
         THEN (e_hi - e_lo) / greatest(e_lo, 1.0 / (CASE WHEN e_a > e_b THEN n_b ELSE n_a END))
         ELSE (s_hi - s_lo) / greatest(s_lo, 1e-9) END AS margin,
    1 / (1 + exp(-1.702 * least(CASE WHEN outcome = 'engagement' THEN z_eng ELSE z_dwell END, 20))) AS confidence
  FROM d)
SELECT context, id_a, id_b, {cap}rule, source, chosen_id, rejected_id, margin, confidence
FROM o""",
        )
    )
    stages.append(
        Stage(
            "pairs: prompt, chosen and rejected texts",
            "wt_pairs",
            """SELECT coalesce(cc.prompt, d.context) AS prompt, cc.text AS chosen, cr.text AS rejected, d.source,
  round(d.confidence, 4) AS confidence, d.context, d.chosen_id, d.rejected_id, round(d.margin, 4) AS margin
FROM wt_candidates d
JOIN wt_content_rows cc ON cc.content_id = d.chosen_id
JOIN wt_content_rows cr ON cr.content_id = d.rejected_id
WHERE d.rule IS NULL""",
        )
    )
    stages.append(
        Stage(
            "ledger: every event, item and candidate pair under one rule",
            "wt_ledger",
            f"""WITH status AS (
  SELECT id AS content_id, bool_or(rule IS NULL) AS paired
  FROM (SELECT id_a AS id, rule FROM wt_candidates UNION ALL SELECT id_b, rule FROM wt_candidates)
  GROUP BY id),
items AS (  -- every item of the content, those no kept view reached too
  SELECT coalesce(i.views, 0) AS views, CASE WHEN i.content_id IS NULL THEN 'no_kept_views'
    WHEN i.views < {cfg.min_views} THEN 'min_views' WHEN s.paired THEN 'paired'
    WHEN s.paired IS NOT NULL THEN 'unpaired' ELSE 'single_in_context' END AS rule
  FROM wt_content c LEFT JOIN wt_items i ON i.content_id = c.content_id
  LEFT JOIN status s ON s.content_id = c.content_id)
SELECT 'events' AS ledger, drop_rule AS rule, sum(views) AS n FROM wt_cells WHERE drop_rule IS NOT NULL GROUP BY 2
UNION ALL SELECT 'items', 'duplicate', n FROM (
  SELECT (SELECT count(*) FROM content) - (SELECT count(*) FROM wt_content_rows) AS n) AS d WHERE n > 0
{ledger_tail("item", "items", "views")}""",
        )
    )
    return stages


def sql_script(cfg: DwellConfig, dialect: str = "duckdb") -> str:
    """The whole pipeline as a runnable SQL script (DuckDB or Spark SQL) with a header naming its inputs."""
    return script(build_stages(cfg), "dwell", cfg.profile, INPUTS, "item", dialect)


def load_inputs(
    engine: Engine, cfg: DwellConfig, events: str | Path, content: str | Path | None, notes: list[str] | None = None
) -> int:
    """Open and check the log files as views `events` and `content`; returns the event count. `notes` gets what the
    ledger cannot show (`_untold_repeats`)."""
    known = [c.name for c in event_columns(cfg)] + [c.name for c in content_columns()[1:]]
    check_mapping(cfg.columns, known, "dwell")
    riding = () if content is not None else tuple(c.name for c in content_columns())
    types = open_table(engine, "events", events, event_columns(cfg), cfg.columns, others=riding)
    missing = [c for c in ("user_id", "ts") if file_column(cfg.columns, c, types) not in types]
    if missing and notes is not None and (note := _untold_repeats(engine, events, missing)):
        notes.append(note)
    theirs = file_column(cfg.columns, "dwell_s", types)
    values = "SELECT dwell_s AS v FROM events WHERE dwell_s IS NOT NULL"
    check_dwell_unit(engine, str(events), theirs, values, cfg.min_dwell_s, cfg.max_dwell_s)
    if content is not None:
        ctypes = open_table(engine, "content", content, content_columns(), cfg.columns)
        column = file_column(cfg.columns, "content_id", ctypes)
        other = "context, prompt, text, length_chars or images"
        check_repeats(engine, "content", "content_id", str(content), column, "one item", other)
        lengths = file_column(cfg.columns, "length_chars", ctypes) in ctypes
    else:  # content columns ride along on every event: one row per item, the same on each of its events
        own = tuple(c.name for c in event_columns(cfg))
        open_table(engine, "wt_content_src", events, content_columns(), cfg.columns, others=own)
        cols = [c.name for c in content_columns()[1:]]
        engine.table(
            "wt_content_all",
            f"SELECT content_id, {', '.join(f'any_value({c}) AS {c}' for c in cols)}, "
            f"{', '.join(f'min({c}) <> max({c}) AS d_{c}' for c in cols)} FROM wt_content_src GROUP BY content_id",
        )
        _same_content_on_every_event(engine, events, cols, cfg.columns, types)
        engine.view("content", f"SELECT content_id, {', '.join(cols)} FROM wt_content_all")
        lengths = file_column(cfg.columns, "length_chars", types) in types
    if not lengths and notes is not None and (note := _idle_by_text_length(engine, cfg, content or events)):
        notes.append(note)
    return engine.rows("SELECT count(*) FROM events")[0][0]


def _idle_by_text_length(engine: Engine, cfg: DwellConfig, file: str | Path) -> str | None:
    """A note when most views are idle by a reading time taken from `text` (no length_chars column): a text that is a
    preview or summary makes every longer read look idle, and the pairs came out empty with no word of why."""
    if not cfg.idle_ratio:
        return None
    expected = expected_sql(cfg, "c.")
    total, idle, chars = engine.rows(
        f"SELECT count(*), count(*) FILTER (WHERE e.dwell_s > {n(cfg.idle_ratio)} * ({expected}) AND e.dwell_s <= "
        f"{n(cfg.max_dwell_s)} AND e.dwell_s >= {n(cfg.min_dwell_s)}), avg(c.length_chars) "
        "FROM events e JOIN content c ON c.content_id = e.content_id"
    )[0]
    if not total or idle * 2 < total:
        return None
    return (f"{where(file, field='length_chars')}: no such column, so reading time comes from the text itself "
            f"({chars:.0f} characters on average): {idle:,} of {total:,} views ({idle / total:.0%}) last over "
            f"idle_ratio {n(cfg.idle_ratio)} × that and are dropped as idle; if the text is a preview or summary, give "
            "length_chars (the item's full length), or set idle_ratio: null")  # fmt: skip


def _untold_repeats(engine: Engine, events: str | Path, missing: list[str]) -> str | None:
    """A note on the views that repeat another whole when the events have no `missing` (user_id, ts) column to tell a
    view delivered twice (dropped as `duplicate`) from a second real view: they are counted as views, unsaid before."""
    cols = "content_id, user_id, ts, dwell_s, position, liked, collected"
    n = engine.rows(f"SELECT count(*) FROM (SELECT row_number() OVER (PARTITION BY {cols} ORDER BY dwell_s) AS k "
                    "FROM events) WHERE k > 1")[0][0]  # fmt: skip
    if not n:
        return None
    return (f"{where(events, field=', '.join(missing))}: no such column, so {n:,} views that repeat another whole "
            "cannot be told from a view delivered twice; they are counted as views (not as duplicate): add the "
            "user_id and ts columns to set repeated deliveries apart")  # fmt: skip


def _same_content_on_every_event(
    engine: Engine, events: str | Path, cols: list[str], mapping: dict, types: dict
) -> None:
    """An item whose events disagree on its text or context (an edited answer, a moved question) has no one text to
    pair: refused, naming the file's column and two of the values, rather than pairing whichever row came first."""
    found = engine.rows(f"SELECT content_id, {', '.join(f'd_{c}' for c in cols)} FROM wt_content_all "
                        f"WHERE {' OR '.join(f'd_{c}' for c in cols)} LIMIT 1")  # fmt: skip
    if not found:
        return
    cid, *differs = found[0]
    col = cols[differs.index(True)]
    values = [v for (v,) in engine.rows(f"SELECT DISTINCT CAST({col} AS VARCHAR) FROM wt_content_src WHERE content_id "
                                        f"= {sql_str(str(cid))} AND {col} IS NOT NULL ORDER BY 1 LIMIT 2")]  # fmt: skip
    theirs = file_column(mapping, col, types)
    raise UserError(
        f"{where(events, field=theirs)}: content_id {cid!r} differs between its events "
        f"(e.g. {values[0]!r} and {values[1]!r}); without --content each item's content columns must be the same on "
        "every event: give a --content file (one row per item) or make them agree"
    )


def run(
    events: str | Path,
    cfg: DwellConfig,
    content: str | Path | None = None,
    progress: bool = True,
    threads: int | None = None,
    engine: Engine | None = None,
) -> PairsRun:
    """Check the logs, run the pipeline on `engine` (default: DuckDB); the run's `con` holds wt_pairs, wt_ledger."""
    engine = engine or DuckEngine(threads)
    notes: list[str] = []
    n_events = load_inputs(engine, cfg, events, content, notes)
    inputs = {"events": str(events)} | ({"content": str(content)} if content else {})
    n_content = engine.rows("SELECT count(*) FROM content")[0][0]
    seconds, sizes = run_stages(engine, build_stages(cfg), f"dwell pairs ({cfg.profile})", n_events, progress)
    sizes["content"] = n_content  # rows read: the items ledger adds up to it, duplicates included
    con = engine.results(["wt_pairs", "wt_ledger"])
    return PairsRun("dwell", con, cfg, inputs, n_events, seconds, sizes, engine.name, notes)
