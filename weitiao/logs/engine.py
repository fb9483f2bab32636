"""DuckDB plumbing shared by `logs dwell` and `logs chat`: open and check log files, run SQL stages.

Log files (.parquet, .csv/.tsv, .jsonl/.ndjson/.json, globs allowed) become typed temp views. Every
column is checked in one scan before any pairing runs, so a malformed log is a one-line UserError
naming the file and the column (missing, wrong type, bad timestamp, empty or out-of-range values).
"""

from __future__ import annotations

import glob
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import duckdb

from weitiao.errors import UserError, where
from weitiao.train.log import progress_bar

NUMERIC = re.compile(r"^(U?(TINY|SMALL|BIG|HUGE)?INT(EGER)?|FLOAT|DOUBLE|REAL|DECIMAL.*)$")
EXPECT = {
    "id": "an id (text or integer)",
    "text": "text",
    "number": "a number",
    "int": "an integer",
    "flag": "a flag (true/false or a count)",
    "time": "a timestamp (ISO text, TIMESTAMP or epoch seconds)",
}


@dataclass(frozen=True)
class Column:
    """One expected column: `kind` is id|text|number|int|flag|time; `default` is SQL used when absent."""

    name: str
    kind: str
    help: str
    required: bool = True
    nullable: bool = False
    min: float | None = None
    default: str | None = None
    unique: bool = False


@dataclass
class PairsRun:
    """A finished pairing run: `con` holds wt_pairs (preference rows) and wt_ledger (ledger, rule, n)."""

    kind: str
    con: duckdb.DuckDBPyConnection
    cfg: Any
    inputs: dict[str, str]
    events: int
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Stage:
    """One SQL statement of a pipeline with the step title printed above it."""

    title: str
    sql: str


def connect(threads: int | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection in UTC with its own progress bar off (we draw ours).

    Row order is never relied on (every output has an ORDER BY), so DuckDB may write tables in
    parallel without keeping insertion order: ~1.3–1.7× faster on the 10 M-event benchmark.
    """
    con = duckdb.connect(":memory:")
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET enable_progress_bar = false")
    con.execute("SET preserve_insertion_order = false")
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    return con


def _reader(path: str) -> str:
    p, q = path.lower(), path.replace("'", "''")
    if p.endswith(".parquet"):
        return f"read_parquet('{q}')"
    if p.endswith((".csv", ".tsv", ".csv.gz", ".tsv.gz")):
        return f"read_csv('{q}', header = true)"
    if p.endswith((".jsonl", ".ndjson", ".json", ".jsonl.gz", ".ndjson.gz")):
        return f"read_json('{q}')"
    raise UserError(f"{path}: unsupported log file type; use .parquet, .csv, .tsv or .jsonl")


def _cast(col: str, kind: str, dtype: str) -> tuple[str | None, str | None]:
    """(typed SQL expression, SQL predicate for an unparseable value) or (None, None) for a wrong type."""
    c = f'"{col}"'
    if dtype == "JSON":  # mixed-type JSON fields arrive as JSON; read them as text
        c, dtype = f"({c} ->> '$')", "VARCHAR"
    numeric, text = bool(NUMERIC.match(dtype)), dtype == "VARCHAR"
    if kind == "id":
        return (f"CAST({c} AS VARCHAR)", "false") if numeric or text else (None, None)
    if kind == "text":
        return (c, "false") if text else (None, None)
    if kind in ("number", "int"):
        sql_t = "DOUBLE" if kind == "number" else "BIGINT"
        if numeric:
            bad = "false" if kind == "number" or "INT" in dtype else f"{c} <> round({c})"
            return f"CAST({c} AS {sql_t})", bad
        if text:
            return f"TRY_CAST({c} AS {sql_t})", f"{c} IS NOT NULL AND TRY_CAST({c} AS {sql_t}) IS NULL"
        return None, None
    if kind == "flag":
        if dtype == "BOOLEAN":  # not CAST: DuckDB pushes it into read_csv, which then parses "false" as an int
            return f"CASE WHEN {c} THEN 1 WHEN NOT {c} THEN 0 END", "false"
        if numeric:
            return f"CAST({c} > 0 AS INTEGER)", "false"
        if text:
            return f"CAST(TRY_CAST({c} AS BOOLEAN) AS INTEGER)", f"{c} IS NOT NULL AND TRY_CAST({c} AS BOOLEAN) IS NULL"
        return None, None
    if kind == "time":
        if dtype.startswith("TIMESTAMP") or dtype == "DATE":
            return f"CAST({c} AS TIMESTAMP)", "false"
        if numeric:
            return f"make_timestamp(CAST({c} * 1000000 AS BIGINT))", f"NOT isfinite(CAST({c} AS DOUBLE))"
        if text:  # via TIMESTAMPTZ so that offsets (+08:00) are honoured; the session is UTC
            parsed = f"TRY_CAST({c} AS TIMESTAMPTZ)"
            return f"CAST({parsed} AS TIMESTAMP)", f"{c} IS NOT NULL AND {parsed} IS NULL"
        return None, None
    raise ValueError(kind)


def _exists(path: str) -> bool:
    return bool(glob.glob(path)) if any(ch in path for ch in "*?[") else Path(path).is_file()


def check_mapping(mapping: dict[str, str], known: list[str], kind: str) -> None:
    """The profile's `columns` ({their name: ours}) may only name our columns, each once."""
    for theirs, ours in mapping.items():
        if ours not in known:
            raise UserError(f"columns: {theirs} → {ours}: {ours} is not a {kind} log column ({', '.join(known)})")
    twice = sorted({v for v in mapping.values() if list(mapping.values()).count(v) > 1})
    if twice:
        raise UserError(f"columns: {twice[0]} is the target of more than one column; map one column to it")


def open_table(
    con: duckdb.DuckDBPyConnection,
    name: str,
    path: str | Path,
    columns: list[Column],
    mapping: dict[str, str] | None = None,
) -> dict[str, str]:
    """Create temp view `name` with the typed `columns` of a log file; returns {column: source type}.

    `mapping` ({file column: our column}, the profile's `columns`) renames where the file has the
    column. Raises UserError(`file: column: problem`) for a missing file or column, a wrong type,
    unparseable values (bad numbers, bad timestamps), empty values in a required column, or values
    below `min`; errors name the file's own column.
    """
    path = str(path)
    if Path(path).is_dir():
        raise UserError(f"{path}: is a folder; expected a log file (or a glob such as {Path(path) / '*.parquet'})")
    if not _exists(path):
        raise UserError(f"{path}: file not found")
    reader = _reader(path)
    try:
        described = con.execute(f"DESCRIBE SELECT * FROM {reader}").fetchall()
    except duckdb.Error as e:
        raise UserError(f"{path}: cannot read: {str(e).splitlines()[0]}") from None
    types = {row[0]: row[1] for row in described}
    select, checks = [], []
    source = {ours: theirs for theirs, ours in (mapping or {}).items() if theirs in types}
    for col in columns:
        src = source.get(col.name, col.name)
        if src not in types:
            if col.required:
                found = ", ".join(types) or "none"
                raise UserError(f"{where(path, field=col.name)}: missing column ({col.help}); columns found: {found}")
            default = str(col.default)
            for ours, theirs in source.items():  # a default may read another column (length("text"))
                default = default.replace(f'"{ours}"', f'"{theirs}"')
            select.append(f"{default} AS {col.name}")
            continue
        typed, bad = _cast(src, col.kind, types[src])
        if typed is None:
            raise UserError(f"{where(path, field=src)}: expected {EXPECT[col.kind]}, got column type {types[src]}")
        select.append(f'{typed} AS "{col.name}"')
        raw, named = f'"{src}"', replace(col, name=src)  # checks report the file's column name
        if bad != "false":
            checks.append((named, "bad", f"count(*) FILTER (WHERE {bad})", bad))
        if not col.nullable:
            checks.append((named, "null", f"count(*) - count({raw})", f"{raw} IS NULL"))
        if col.unique:
            checks.append((named, "dup", f"count({raw}) - count(DISTINCT {raw})", None))
        if col.min is not None:  # min() comes from Parquet statistics when it can: no scan
            checks.append((named, "low", f"coalesce(min({typed}) < {col.min}, false)::INTEGER", f"{typed} < {col.min}"))
    _check(con, path, reader, checks)
    con.execute(f"CREATE OR REPLACE TEMP VIEW {name} AS SELECT {', '.join(select)} FROM {reader}")
    return types


def _check(con: duckdb.DuckDBPyConnection, path: str, reader: str, checks: list) -> None:
    """One aggregate scan for all checks; only a failing check pays for a second query (count, example)."""
    if not checks:
        return
    try:
        found = con.execute(f"SELECT {', '.join(agg for _, _, agg, _ in checks)} FROM {reader}").fetchone()
        for (col, what, _, pred), hit in zip(checks, found):
            if not hit:
                continue
            raw, loc = f'"{col.name}"', where(path, field=col.name)
            if what == "dup":
                example = con.execute(f"SELECT {raw} FROM {reader} GROUP BY 1 HAVING count(*) > 1 LIMIT 1").fetchone()
                raise UserError(f"{loc}: {hit} repeated ids, e.g. {example[0]!r} ({col.help}; must be unique)")
            count, example = con.execute(
                f"SELECT count(*), first(CAST({raw} AS VARCHAR)) FROM {reader} WHERE {pred}"
            ).fetchone()
            if what == "bad":
                raise UserError(f"{loc}: expected {EXPECT[col.kind]}, found {example!r} ({count} rows)")
            if what == "null":
                raise UserError(f"{loc}: {count} empty values ({col.help})")
            raise UserError(f"{loc}: {count} values below {col.min:g}, e.g. {example} ({col.help})")
    except duckdb.Error as e:
        raise UserError(f"{path}: cannot read: {str(e).splitlines()[0]}") from None


def run_stages(
    con: duckdb.DuckDBPyConnection, stages: list[Stage], label: str, rows: int | None = None, progress: bool = True
) -> dict[str, float]:
    """Execute stages in order under a rich bar (step, rows/s, elapsed); returns seconds per stage title."""
    seconds: dict[str, float] = {}
    bar = progress_bar(progress)
    t0 = time.perf_counter()
    with bar:
        task = bar.add_task(label, total=len(stages), info="")
        for st in stages:
            bar.update(task, info=st.title)
            t = time.perf_counter()
            try:
                con.execute(st.sql)
            except duckdb.Error as e:  # a bad config value can still reach SQL (e.g. a cast); keep it one line
                raise UserError(f"{label}: step {st.title!r} failed: {str(e).splitlines()[0]}") from None
            seconds[st.title] = time.perf_counter() - t
            bar.advance(task)
        total = time.perf_counter() - t0
        rate = f"{rows / total:,.0f} events/s" if rows and total > 0 else ""
        bar.update(task, info=f"done {rate}")
    return seconds


def script(stages: list[Stage], header: str) -> str:
    """The stages as one SQL script with numbered step comments (what `--print-sql` prints)."""
    parts = [header.rstrip()]
    for i, st in enumerate(stages, 1):
        parts.append(f"-- {i}. {st.title}\n{st.sql.strip()};")
    return "\n\n".join(parts) + "\n"


def sql_num(x: float | int) -> str:
    """A config number as a SQL literal; floats keep their point so no engine divides as integers."""
    if isinstance(x, bool):
        raise TypeError("bool")
    return repr(float(x)) if isinstance(x, float) else str(int(x))


def sql_str(s: str) -> str:
    """A config string as a quoted SQL literal."""
    return "'" + str(s).replace("'", "''") + "'"
