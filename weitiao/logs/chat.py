"""Chat-site behavior → preference pairs (chapter Q162), as SQL run by DuckDB or Spark (engine.py).

Inputs (files, or a team's warehouse tables under these names):
  responses(response_id, session_id, turn, ts, prompt, response)   one row per generated response (a row repeated
            whole is counted once, the copies as `duplicate`; one id with other content is refused);
            regenerations share session_id and turn; with a user_id column a session is user_id/session_id (ids
            numbered per user are not one conversation); `prompt` is that turn's user message (an edited
            message keeps the turn but is another prompt: its replies are not compared with the others,
            `prompt_edited`)
  events(response_id, event, ts, value)    thumbs_up, thumbs_down, copy, share, regenerate, follow_up,
            dwell (value = seconds); other names are counted as ignored (or mapped by event_names); a row
            that repeats another whole (response, event, ts, value) is counted once, the copies as `duplicate`

Each response gets one value per signal tier, strongest first:
  explicit  +1 thumbs up / −1 thumbs down (the user's last click wins; a thumbs up and a thumbs down at the same
            latest ts count as neither, 0: tables have no row order to break the tie, and an input order would
            decide otherwise)
  share     1 if shared or copied
  context   −1 regenerated, +1 followed up
  dwell     dwell seconds, or seconds / expected reading time (dwell_normalize)
Two responses to the same prompt are compared tier by tier; the first tier that separates them
decides chosen vs rejected and names the source (explicit, share_copy, regenerate, follow_up, dwell;
dwell only past its margins). A pair where another discrete tier points the other way is a
`conflict`; one whose chosen response was itself thumbed down or regenerated is `chosen_negative`.
Groups: in-session, the responses of one turn (a regenerate chain); cross-session (option),
first-turn responses of different sessions with the same normalized prompt (full-width Ｘ５ is X5) or similar
n-grams, where only the allowed sources decide, and chosen must carry a positive signal while rejected carries a
negative one or was abandoned (the session's last reply, with no signal at all): `polar`.
Caps: per prompt group, per source, and balance (a weak source keeps at most ratio × the pairs of all
stronger sources). Every event, response and candidate pair lands in the ledger.
"""

from __future__ import annotations

import re
from pathlib import Path

from weitiao.errors import UserError, near_miss, where
from weitiao.logs.config import CHAT_EVENTS, CHAT_SOURCES, ChatConfig
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
)
from weitiao.logs.engine import sql_num as n
from weitiao.logs.engine import sql_str as q

INPUTS = [  # the tables `sql_script` reads, for its header
    "responses(response_id, session_id, turn, ts, prompt, response)  one row per generated response; session_id "
    "unique across users",
    "events(response_id, event, ts, value)                           one row per user action",
]
EVENT_RULES = ("unknown_response", "ignored_event", "duplicate", "dwell_out_of_bounds", "alone", "unpaired", "paired")
CANDIDATE_RULES = (
    "prompt_edited",
    "no_signal",
    "below_margin",
    "conflict",
    "chosen_negative",
    "cross_not_allowed",
    "not_polar",
    "capped_prompt",
    "capped_source",
    "balanced",
    "kept",
)


def response_columns() -> list[Column]:
    """Columns read from the responses file."""
    return [
        Column("response_id", "id", "one generated response"),  # unique: `check_repeats`
        Column("session_id", "id", "the conversation"),
        Column(
            "user_id",
            "id",
            "whose conversation; session ids are read within one user",
            False,
            nullable=True,
            default="NULL",
        ),  # fmt: skip
        Column("turn", "int", "user turn number in the session, from 1", min=1),
        Column("ts", "time", "when the response was generated"),
        Column("prompt", "text", "the user message of this turn"),
        Column("response", "text", "the assistant reply"),
    ]


def event_columns() -> list[Column]:
    """Columns read from the events file."""
    return [
        Column("response_id", "id", "the response acted on"),
        Column("event", "id", f"one of {', '.join(CHAT_EVENTS)}"),
        Column("ts", "time", "when it happened"),
        Column("value", "number", "seconds, for dwell events", False, nullable=True, default="NULL"),
    ]


# The prompt key: full-width letters and digits read as ASCII (Ｘ５ is X5: Chinese input methods type both), then
# lower case without spaces of any kind (the ideographic space U+3000, NBSP), punctuation or symbols. The letters
# whose lower case Java (Spark) writes otherwise than DuckDB are read first as what DuckDB makes of them: İ (Java:
# i + U+0307) as i, and a final ς (Java's lower case of a word-final Σ) as σ; else the engines grouped apart. ASCII
# A-Z are lowered by translate, not lower(): Spark's lower() of a non-ASCII text follows the JVM's default locale
# (Turkish: I → dotless ı).
_ASCII_UP = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_FULL = "0123456789" + _ASCII_UP + _ASCII_UP.lower()
_WIDE = "".join(chr(ord(c) + 0xFEE0) for c in _FULL) + _ASCII_UP + "\u0130"
_NARROW = _FULL.lower() + _ASCII_UP.lower() + "i"


def _strength(col: str) -> str:
    return "CASE " + " ".join(f"WHEN {col} = {q(s)} THEN {i}" for i, s in enumerate(CHAT_SOURCES, 1)) + " END"


def _candidates_sql(cfg: ChatConfig) -> str:
    """Stage 3: candidate pairs (in-session and optionally cross-session) with their decision."""
    x = cfg.cross_session
    groups = """  SELECT a.session_id || '#' || a.turn AS grp, 'session' AS scope,
    a.response_id AS id_a, b.response_id AS id_b
  FROM wt_responses a JOIN wt_responses b
    ON a.session_id = b.session_id AND a.turn = b.turn AND a.response_id < b.response_id"""
    pool = ""
    if x.enabled:
        pool = """pool AS (
  SELECT response_id, session_id, prompt_key, row_number() OVER (
    PARTITION BY prompt_key ORDER BY (pos OR neg) DESC, md5(response_id)) AS k
  FROM wt_responses WHERE turn = 1),
"""
        if x.match == "exact":
            near = "near AS (SELECT DISTINCT prompt_key AS ka, prompt_key AS kb FROM pool WHERE k <= {m}),\n"
        else:
            g = x.ngram
            near = f"""keys AS (SELECT DISTINCT prompt_key FROM pool WHERE k <= {{m}}),
sh AS (
  SELECT prompt_key, unnest(list_distinct(list_transform(
    range(1, greatest(length(prompt_key) - {g} + 2, 2)), lambda i: substr(prompt_key, i, {g})))) AS g
  FROM keys),
ok AS (SELECT g FROM sh GROUP BY g HAVING count(*) <= {x.max_shingle_prompts}),
shk AS (SELECT sh.* FROM sh SEMI JOIN ok USING (g)),
size AS (SELECT prompt_key, count(*) AS m FROM shk GROUP BY prompt_key),
common AS (
  SELECT x.prompt_key AS ka, y.prompt_key AS kb, count(*) AS c
  FROM shk x JOIN shk y ON y.g = x.g AND x.prompt_key < y.prompt_key GROUP BY ALL),
near AS (
  SELECT prompt_key AS ka, prompt_key AS kb FROM keys
  UNION ALL
  SELECT ka, kb FROM common JOIN size sa ON sa.prompt_key = ka JOIN size sb ON sb.prompt_key = kb
  WHERE CAST(c AS DOUBLE) / (sa.m + sb.m - c) >= {n(x.min_similarity)}),
"""
        pool += near.format(m=x.max_responses)
        groups += f"""
  UNION ALL
  SELECT 'x#' || near.ka, 'cross_session', a.response_id, b.response_id
  FROM near JOIN pool a ON a.prompt_key = near.ka JOIN pool b ON b.prompt_key = near.kb
  WHERE a.k <= {x.max_responses} AND b.k <= {x.max_responses} AND a.session_id <> b.session_id
    AND (near.ka < near.kb OR a.response_id < b.response_id)"""
    on = set(cfg.sources)
    d1 = "sign(a.t_explicit - b.t_explicit)" if "explicit" in on else "0"
    d2 = "sign(a.t_share - b.t_share)" if "share_copy" in on else "0"
    rel, ab = n(1 + cfg.dwell_rel_margin), n(cfg.dwell_abs_margin)
    d4 = "0"
    if "dwell" in on:
        d4 = f"""CASE WHEN greatest(a.t_dwell, b.t_dwell) >= least(a.t_dwell, b.t_dwell) * {rel}
      AND abs(a.t_dwell - b.t_dwell) >= {ab} AND a.t_dwell <> b.t_dwell THEN sign(a.t_dwell - b.t_dwell) ELSE 0 END"""
    tier3 = ", ".join(q(s) for s in ("regenerate", "follow_up") if s in on) or "NULL"
    conf = " ".join(f"WHEN {q(k)} THEN {n(v)}" for k, v in cfg.confidence.items())
    allowed = ", ".join(q(s) for s in x.sources) or "NULL"
    return f"""WITH {pool}groups AS (
{groups}),
t AS (
  SELECT g.grp, g.scope, g.id_a, g.id_b, a.session_id, a.turn,
    {d1} AS d1, {d2} AS d2, sign(a.t_context - b.t_context) AS d3,
    CASE WHEN least(a.t_context, b.t_context) = -1 THEN 'regenerate' ELSE 'follow_up' END AS label3,
    {d4} AS d4,
    a.t_dwell IS NOT NULL AND b.t_dwell IS NOT NULL AND a.t_dwell <> b.t_dwell AS dwell_differs,
    a.t_explicit AS e_a, b.t_explicit AS e_b, a.pos AS pos_a, b.pos AS pos_b, a.neg AS neg_a, b.neg AS neg_b,
    a.abandoned AS ab_a, b.abandoned AS ab_b, a.prompt_key <> b.prompt_key AS edited
  FROM groups g JOIN wt_responses a ON a.response_id = g.id_a JOIN wt_responses b ON b.response_id = g.id_b),
u AS (SELECT *, CASE WHEN label3 IN ({tier3}) THEN d3 ELSE 0 END AS d3e FROM t),
v AS (
  SELECT *, CASE WHEN d1 <> 0 THEN d1 WHEN d2 <> 0 THEN d2 WHEN d3e <> 0 THEN d3e ELSE d4 END AS dir,
    CASE WHEN d1 <> 0 THEN 'explicit' WHEN d2 <> 0 THEN 'share_copy' WHEN d3e <> 0 THEN label3
      WHEN d4 <> 0 THEN 'dwell' END AS source
  FROM u),
w AS (
  SELECT *, CASE WHEN dir >= 0 THEN id_a ELSE id_b END AS chosen_id,
    CASE WHEN dir >= 0 THEN id_b ELSE id_a END AS rejected_id,
    CASE source WHEN 'explicit' THEN (CASE WHEN greatest(e_a, e_b) = 1 AND least(e_a, e_b) = -1 THEN 'thumbs_up_vs_down'
      WHEN greatest(e_a, e_b) = 1 THEN 'thumbs_up_vs_none' ELSE 'none_vs_thumbs_down' END) ELSE source END AS signal,
    CASE WHEN dir >= 0 THEN pos_a AND (neg_b OR ab_b) ELSE pos_b AND (neg_a OR ab_a) END AS polar,
    CASE WHEN dir >= 0 THEN neg_a ELSE neg_b END AS chosen_neg
  FROM v)
SELECT grp, scope, session_id, turn, chosen_id, rejected_id, source, signal,
  CAST((CASE signal {conf} ELSE 0.5 END) * (CASE WHEN scope = 'cross_session' THEN {n(x.discount)} ELSE 1 END)
    AS DOUBLE) AS confidence,
  CASE
    WHEN scope = 'session' AND edited THEN 'prompt_edited'
    WHEN dir = 0 AND dwell_differs AND {"true" if "dwell" in on else "false"} THEN 'below_margin'
    WHEN dir = 0 THEN 'no_signal'
    WHEN {"true" if cfg.drop_conflicts else "false"} AND (d1 = -dir OR d2 = -dir OR d3 = -dir) THEN 'conflict'
    WHEN {"true" if cfg.clean_chosen else "false"} AND chosen_neg THEN 'chosen_negative'
    WHEN scope = 'cross_session' AND source NOT IN ({allowed}) THEN 'cross_not_allowed'
    WHEN scope = 'cross_session' AND {"true" if x.polar else "false"} AND NOT polar THEN 'not_polar'
  END AS rule
FROM w"""


def build_stages(cfg: ChatConfig) -> list[Stage]:
    """The pairing pipeline for `cfg` as SQL statements over `responses` and `events`."""
    names = " ".join(f"WHEN {q(k)} THEN {q(v)}" for k, v in cfg.event_names.items())
    event = f"CASE e.event {names} ELSE e.event END" if names else "e.event"
    known = ", ".join(q(e) for e in CHAT_EVENTS)
    expected = f"3.0 + length(r.response) / {n(cfg.read_cps)}"
    dwell = "s.dwell_s" if cfg.dwell_normalize == "none" else f"s.dwell_s / ({expected})"
    stages = [
        Stage(  # at-least-once delivery repeats rows; a row with one id and other content is refused (check_repeats)
            "responses: a row repeated whole (delivered twice) counted once",
            "wt_replies",
            "SELECT DISTINCT response_id, session_id, turn, ts, prompt, response FROM responses",
        ),
        Stage(
            "events: canonical names; unknown responses, other events, repeats, out-of-bounds dwell set apart",
            "wt_events",
            f"""WITH m AS (SELECT e.response_id, {event} AS event, e.ts, e.value FROM events e),
e AS (  -- a row repeated whole (at-least-once delivery) is one event: a doubled dwell would double its seconds
  SELECT *, row_number() OVER (PARTITION BY response_id, event, ts, value ORDER BY ts) AS copy FROM m)
SELECT e.response_id, e.event, e.ts, e.value,
  CASE
    WHEN r.response_id IS NULL THEN 'unknown_response'
    WHEN e.event NOT IN ({known}) THEN 'ignored_event'
    WHEN e.copy > 1 THEN 'duplicate'
    WHEN e.event = 'dwell' AND (e.value IS NULL OR e.value < {n(cfg.min_dwell_s)} OR e.value > {n(cfg.max_dwell_s)})
      THEN 'dwell_out_of_bounds'
  END AS drop_rule
FROM e LEFT JOIN wt_replies r ON r.response_id = e.response_id""",
        ),
        Stage(
            "responses: one value per signal tier",
            "wt_responses",
            f"""WITH s AS (
  SELECT response_id, count(*) AS events,
    CASE WHEN max(ts) FILTER (WHERE event = 'thumbs_up') = max(ts) FILTER (WHERE event = 'thumbs_down') THEN 0
      ELSE arg_max(CASE event WHEN 'thumbs_up' THEN 1 ELSE -1 END, ts) FILTER (WHERE event IN ('thumbs_up',
        'thumbs_down')) END AS explicit,  -- the last click; an up and a down at the same last ts: neither
    bool_or(event IN ('share', 'copy')) AS shared, bool_or(event = 'regenerate') AS regenerated,
    bool_or(event = 'follow_up') AS followed, sum(value) FILTER (WHERE event = 'dwell') AS dwell_s
  FROM wt_events WHERE drop_rule IS NULL GROUP BY response_id),
t AS (
  SELECT r.response_id, r.session_id, r.turn, coalesce(s.events, 0) AS events, coalesce(s.explicit, 0) AS t_explicit,
    CASE WHEN s.shared THEN 1 ELSE 0 END AS t_share,
    CASE WHEN s.regenerated THEN -1 WHEN s.followed THEN 1 ELSE 0 END AS t_context, {dwell} AS t_dwell,
    regexp_replace(translate(lower(translate(r.prompt, {q(_WIDE)}, {q(_NARROW)})), 'ς', 'σ'),
      '[ \\t\\n\\f\\r\\p{{Z}}\\p{{P}}\\p{{S}}]', '', 'g') AS prompt_key,
    r.ts = max(r.ts) OVER (PARTITION BY r.session_id) AS last_in_session
  FROM wt_replies r LEFT JOIN s USING (response_id))
SELECT response_id, session_id, turn, events, t_explicit, t_share, t_context, t_dwell, prompt_key,
  t_explicit > 0 OR t_share > 0 OR t_context > 0 AS pos,
  t_explicit < 0 OR t_context < 0 AS neg,
  last_in_session AND t_explicit = 0 AND t_share = 0 AND t_context = 0 AS abandoned
FROM t""",
        ),
        Stage(
            "candidate pairs: strongest separating signal, conflicts, cross-session rules",
            "wt_decided",
            _candidates_sql(cfg),
        ),
    ]
    caps = " ".join(f"WHEN {q(k)} THEN {int(v)}" for k, v in cfg.max_pairs.items())
    cap = f"CASE source {caps} END" if caps else "NULL"
    bal = " ".join(f"WHEN {q(k)} THEN {n(v)}" for k, v in cfg.balance.items())
    per_prompt = cfg.max_pairs_per_prompt or "NULL"
    stages.append(
        Stage(
            "caps: per prompt group, per source, balance against stronger sources",
            "wt_candidates",
            f"""WITH c1 AS (
  SELECT *, CASE WHEN rule IS NULL AND row_number() OVER (PARTITION BY grp, rule IS NULL
    ORDER BY confidence DESC, md5(chosen_id || '>' || rejected_id)) > coalesce({per_prompt}, 1e18)
    THEN 'capped_prompt' ELSE rule END AS r1
  FROM wt_decided),
c2 AS (
  SELECT *, CASE WHEN r1 IS NULL AND row_number() OVER (PARTITION BY source, r1 IS NULL
    ORDER BY confidence DESC, md5(chosen_id || '>' || rejected_id)) > coalesce({cap}, 1e18)
    THEN 'capped_source' ELSE r1 END AS r2
  FROM c1),
counts AS (SELECT source, count(*) AS n, {_strength("source")} AS strength FROM c2 WHERE r2 IS NULL GROUP BY source),
allowed AS (
  SELECT source, floor({f"CASE source {bal} END" if bal else "NULL"}
    * coalesce(sum(n) OVER (ORDER BY strength ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0)) AS allowed
  FROM counts),
c3 AS (
  SELECT c2.*, CASE WHEN r2 IS NULL AND row_number() OVER (PARTITION BY c2.source, r2 IS NULL
    ORDER BY confidence DESC, md5(chosen_id || '>' || rejected_id)) > coalesce(allowed.allowed, 1e18)
    THEN 'balanced' ELSE r2 END AS r3
  FROM c2 LEFT JOIN allowed ON allowed.source = c2.source)
SELECT grp, scope, session_id, turn, chosen_id, rejected_id, source, signal, confidence, r3 AS rule FROM c3""",
        )
    )
    stages.append(
        Stage(
            "pairs: prompt with earlier turns as history, chosen and rejected texts",
            "wt_pairs",
            """WITH k AS (SELECT * FROM wt_candidates WHERE rule IS NULL),
final AS (  -- each earlier turn as the dialogue went on: its latest response, with that response's own prompt
  SELECT session_id, turn, prompt, response FROM (
    SELECT session_id, turn, prompt, response,
      row_number() OVER (PARTITION BY session_id, turn ORDER BY ts DESC, response_id DESC) AS latest
    FROM wt_replies WHERE session_id IN (SELECT session_id FROM k WHERE turn > 1)) AS r
  WHERE latest = 1),
hist AS (
  SELECT k.chosen_id, k.rejected_id,
    list_sort(list({'turn': f.turn, 'user': f.prompt, 'assistant': f.response})) AS history  -- by turn
  FROM k JOIN final f ON f.session_id = k.session_id AND f.turn < k.turn GROUP BY ALL)
SELECT rc.prompt, coalesce(h.history, []) AS history, rc.response AS chosen, rr.response AS rejected,
  k.source, k.signal,
  round(k.confidence, 4) AS confidence, k.scope, k.grp AS context, k.chosen_id, k.rejected_id
FROM k JOIN wt_replies rc ON rc.response_id = k.chosen_id JOIN wt_replies rr ON rr.response_id = k.rejected_id
LEFT JOIN hist h ON h.chosen_id = k.chosen_id AND h.rejected_id = k.rejected_id""",
        )
    )
    stages.append(
        Stage(
            "ledger: every event, response and candidate pair under one rule",
            "wt_ledger",
            f"""WITH status AS (
  SELECT id, bool_or(rule IS NULL) AS paired
  FROM (SELECT chosen_id AS id, rule FROM wt_candidates UNION ALL SELECT rejected_id, rule FROM wt_candidates)
  GROUP BY id),
fate AS (
  SELECT r.events, CASE WHEN s.paired THEN 'paired' WHEN s.paired IS NOT NULL THEN 'unpaired' ELSE 'alone' END AS rule
  FROM wt_responses r LEFT JOIN status s ON s.id = r.response_id)
SELECT 'events' AS ledger, drop_rule AS rule, count(*) AS n FROM wt_events WHERE drop_rule IS NOT NULL GROUP BY 2
UNION ALL SELECT 'responses', 'duplicate', n FROM (
  SELECT (SELECT count(*) FROM responses) - (SELECT count(*) FROM wt_replies) AS n) AS d WHERE n > 0
{ledger_tail("response", "fate", "events")}""",
        )
    )
    return stages


def check_events(engine: Engine, path: str, cfg: ChatConfig, types: dict[str, str]) -> None:
    """Refuse what would drop signals unsaid: an unmapped event name a case or typo away from ours (Thumbs_Up,
    thumbs-down) or from a mapped one (Like beside {like: thumbs_up}), dwell events in a file without a value column
    (all would be `dwell_out_of_bounds`), and dwell values nearly all out of bounds (milliseconds:
    `check_dwell_unit`)."""
    theirs = {ours: t for t, ours in cfg.columns.items() if t in types}
    counts = dict(engine.rows("SELECT event, count(*) FROM events GROUP BY 1"))
    # a name a case or typo away from one of ours, or from one the profile maps (Like beside event_names {like: …})
    mapped = {k: v for k, v in cfg.event_names.items() if v != "ignore"}
    targets = {t.casefold(): mapped.get(t, t) for t in (*mapped, *CHAT_EVENTS)}
    for name, count in sorted(counts.items(), key=lambda x: -x[1]):
        if name in cfg.event_names or name in CHAT_EVENTS:
            continue
        plain = re.sub(r"[\s-]+", "_", name.strip()).casefold()
        near = plain if plain in targets else near_miss(plain, tuple(targets))
        if near is not None:
            meant = targets[near]
            said = meant if near == meant else f"{near} (mapped to {meant} in event_names)"
            raise UserError(
                f"{where(path, field=theirs.get('event', 'event'))}: {name!r} ({count:,} rows) is not an event name we "
                f"read; did you mean {said}? Read as ignored_event its signal would be lost: rename it, or map it in "
                f"the profile (event_names: {{{name}: {meant}}}, or {{{name}: ignore}} if it is another event)"
            )
    names = [name for name in counts if cfg.event_names.get(name, name) == "dwell"]
    dwell = sum(counts[name] for name in names)
    if dwell and "dwell" in cfg.sources and theirs.get("value", "value") not in types:
        raise UserError(
            f"{where(path, field='value')}: missing column, and {dwell:,} dwell events need their seconds in it; "
            f"columns found: {', '.join(types)}: rename yours, or map it in the profile "
            "(e.g. columns: {seconds: value})"
        )
    if dwell and "dwell" in cfg.sources:
        values = f"SELECT value AS v FROM events WHERE event IN ({', '.join(map(q, names))}) AND value IS NOT NULL"
        check_dwell_unit(engine, path, theirs.get("value", "value"), values, cfg.min_dwell_s, cfg.max_dwell_s)


def sql_script(cfg: ChatConfig, dialect: str = "duckdb") -> str:
    """The whole pipeline as a runnable SQL script (DuckDB or Spark SQL) with a header naming its inputs."""
    return script(build_stages(cfg), "chat", cfg.profile, INPUTS, "response", dialect)


def run(
    events: str | Path,
    responses: str | Path,
    cfg: ChatConfig,
    progress: bool = True,
    threads: int | None = None,
    engine: Engine | None = None,
) -> PairsRun:
    """Check the logs, run the pipeline on `engine` (default: DuckDB); the run's `con` holds wt_pairs, wt_ledger."""
    engine = engine or DuckEngine(threads)
    check_mapping(cfg.columns, list(dict.fromkeys(c.name for c in response_columns() + event_columns())), "chat")
    src = open_table(engine, "wt_responses_src", responses, response_columns(), cfg.columns)
    # session ids numbered per user (alice's session 1, bob's session 1) are two conversations, not one turn of one
    engine.view(
        "responses",
        "SELECT response_id, CASE WHEN user_id IS NULL THEN session_id ELSE replace(user_id, '/', '//') || '/' || "
        "session_id END AS session_id, turn, ts, prompt, response FROM wt_responses_src",
    )
    column = file_column(cfg.columns, "response_id", src)
    other = "session, turn, ts, prompt or response"
    check_repeats(engine, "responses", "response_id", str(responses), column, "one generated response", other)
    n_responses = engine.rows("SELECT count(*) FROM responses")[0][0]
    types = open_table(engine, "events", events, event_columns(), cfg.columns)
    check_events(engine, str(events), cfg, types)
    n_events = engine.rows("SELECT count(*) FROM events")[0][0]
    seconds, sizes = run_stages(engine, build_stages(cfg), f"chat pairs ({cfg.profile})", n_events, progress)
    sizes["responses"] = n_responses  # rows read: the responses ledger adds up to it, duplicates included
    con = engine.results(["wt_pairs", "wt_ledger"])
    inputs = {"events": str(events), "responses": str(responses)}
    return PairsRun("chat", con, cfg, inputs, n_events, seconds, sizes, engine.name)
