"""The engines `logs dwell` and `logs chat` run on, and the checks every log file passes first.

The pipelines are written once, as DuckDB SQL. `portable()` is the one dialect layer: it writes every
fractional literal as a DOUBLE (0.1 → 0.1e0: both engines parse 0.1 as DECIMAL, and Spark then keeps
decimal arithmetic, 1.0 / 3 = 0.333333, where DuckDB switches to DOUBLE) and lets SQLGlot write the
statement in the engine's dialect. The pipeline SQL keeps to what means the same on both: tie-breaks
by md5() (each engine's hash() differs), windows with an ORDER BY, ordered lists as list_sort() of
structs led by the key (SQLGlot drops list(… ORDER BY …) for Spark), no SELECT * EXCLUDE, regex
whitespace spelled out character by character (RE2's and Java's shorthand classes differ).
`DuckEngine` (default) runs it in process; `weitiao.logs.spark.SparkEngine` runs it
on Spark SQL. Both read .parquet, .csv/.tsv, .jsonl/.ndjson/.json (globs allowed) into typed views;
every column is checked in one scan before any pairing runs, so a malformed log is a one-line
UserError naming the file and the column (missing, wrong type, bad timestamp, empty or out-of-range).
"""

from __future__ import annotations

import csv
import glob
import gzip
import re
import time
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import duckdb
import sqlglot
from sqlglot import exp

from weitiao.errors import UserError, near_miss, where
from weitiao.io import utf8_problem
from weitiao.train.log import progress_bar

NUMERIC = re.compile(r"^(U?(TINY|SMALL|BIG|HUGE)?INT(EGER)?|FLOAT|DOUBLE|REAL|DECIMAL.*)$")
EXPECT = {
    "id": "an id (text or integer)",
    "text": "text",
    "number": "a number",
    "int": "an integer",
    "flag": "a flag (true/false or a count)",
    "time": "a timestamp (ISO text such as 2025-03-01 10:00:00 or year-first 2025/03/01 10:00, TIMESTAMP or epoch "
    "seconds)",
}
ENGINES = ("duckdb", "spark")


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
    """A finished pairing run: `con` (DuckDB, whatever the engine) holds wt_pairs and wt_ledger.

    `sizes` holds the row count of every table the pipeline made (the ledgers are checked against them).
    """

    kind: str
    con: duckdb.DuckDBPyConnection
    cfg: Any
    inputs: dict[str, str]
    events: int
    seconds: dict[str, float] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    engine: str = "duckdb"
    notes: list[str] = field(default_factory=list)  # what the counts cannot show (said on screen and in the report)


@dataclass(frozen=True)
class Stage:
    """One step of a pipeline: the title printed above it, the table it makes and its SELECT (DuckDB SQL)."""

    title: str
    table: str
    select: str


@lru_cache(maxsize=256)
def portable(sql: str, dialect: str) -> str:
    """DuckDB SQL as `dialect` (duckdb | spark) runs it: fractional literals typed DOUBLE, then SQLGlot."""

    def double(node: exp.Expression) -> exp.Expression:  # 0.1 → 0.1e0, a DOUBLE literal in both
        if isinstance(node, exp.Literal) and not node.is_string and re.fullmatch(r"\d+\.\d*", node.this):
            return exp.Literal.number(node.this + "e0")
        return node

    tree = sqlglot.parse_one(sql, read="duckdb").transform(double)
    return tree.sql(dialect=dialect, pretty=True)


class Engine(Protocol):
    """What the pipelines need from an engine; every SQL string passed in is DuckDB SQL."""

    name: str
    errors: tuple[type[BaseException], ...]

    def source(self, name: str, path: str, text: tuple[str, ...] = ()) -> tuple[str, dict[str, str]]:
        """Open a log file: (what to put after FROM, {column: DuckDB type name}); UserError if unreadable. A CSV's
        `text` columns are read as the text they hold, whatever their values look like (007, 1e5, 2025/03/01)."""

    def file_kind(self, path: str) -> str:
        """parquet | csv | tsv | json: how the engine reads `path` (a file, glob or folder of part files)."""

    def rows(self, sql: str) -> list[tuple]:
        """Run a query and fetch its rows."""

    def view(self, name: str, sql: str) -> None:
        """Name a query (computed again where used)."""

    def table(self, name: str, sql: str) -> int:
        """Compute a query once and keep it under `name`; returns its row count."""

    def results(self, tables: list[str]) -> duckdb.DuckDBPyConnection:
        """A DuckDB connection holding these tables (for reports and JSONL on this machine)."""


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


def unreadable(path: str, e: BaseException) -> UserError:
    """`path: cannot read: ...` from an engine's error; bytes that are not UTF-8 are the line every reader gives
    (`not_utf8`: a GBK file named so, with the iconv command), where DuckDB's first line was only 'CSV Error on Line:
    2'."""
    text = str(e).strip()
    if re.search(r"not utf-8 encoded|invalid utf-8|malformed input|malformed utf-8", text, re.IGNORECASE):
        if found := not_utf8_file(path):
            return found
        line = re.search(r"on Line: (\d+)", text)
        at = f" (near line {line.group(1)})" if line else ""
        return UserError(f"{path}: cannot read: not valid UTF-8{at}; save it as UTF-8")
    return UserError(f"{path}: cannot read: {text.splitlines()[0]}")


def local_files(path: str, suffixes: tuple[str, ...] = (".csv", ".tsv", ".gz")) -> list[str]:
    """The local files a path, glob or folder (its files with `suffixes`) names; none for a remote path."""
    if "://" in path:
        return []
    files = sorted(glob.glob(path)) if any(ch in path for ch in "*?[") else [path]
    if len(files) == 1 and Path(files[0]).is_dir():
        files = sorted(str(f) for f in Path(files[0]).iterdir() if f.suffix.lower() in suffixes)
    return [f for f in files if Path(f).is_file()]


def not_utf8_file(path: str) -> UserError | None:
    """The refusal for the first local file of `path` that is not UTF-8 (`weitiao.io.not_utf8`), else None."""
    exts = (".csv", ".tsv", ".gz", ".jsonl", ".ndjson", ".json")
    return next((found for f in local_files(path, exts) if (found := utf8_problem(f))), None)


def rows_holding(path: str, column: str, value: str, most: int = 2) -> list[str]:
    """Where the first `most` rows whose `column` reads `value` are in a local file, glob or folder: `file:line` for
    CSV, TSV and JSON lines (the line a row starts on), `file: row N` for Parquet; [] when none can be read here."""
    import json

    import pyarrow.parquet as pq

    out: list[str] = []
    exts = (".csv", ".tsv", ".gz", ".jsonl", ".ndjson", ".json", ".parquet")
    for f in local_files(path, exts):
        try:
            kind = file_format(f)
            if kind == "parquet":
                got = pq.read_table(f, columns=[column]).column(0).to_pylist()
                out += [f"{f}: row {i}" for i, v in enumerate(got, 1) if v is not None and str(v) == value]
                continue
            with (gzip.open if f.lower().endswith(".gz") else open)(f, "rt", encoding="utf-8-sig", newline="") as fh:
                if kind == "json":
                    for i, line in enumerate(fh, 1):
                        v = json.loads(line).get(column) if line.strip() else None
                        if v is not None and str(v) == value:
                            out.append(where(f, i))
                        if len(out) >= most:
                            break
                    continue
                rows = csv.reader(fh, delimiter="\t" if kind == "tsv" else ",")
                k, start = next(rows).index(column), rows.line_num + 1
                for row in rows:
                    if k < len(row) and row[k] == value:
                        out.append(where(f, start))
                    start = rows.line_num + 1
                    if len(out) >= most:
                        break
        except (OSError, UnicodeDecodeError, csv.Error, EOFError, ValueError, KeyError, AttributeError, StopIteration):
            continue  # unreadable here: the message names the file without lines
        if len(out) >= most:
            break
    return out[:most]


def check_repeats(engine: Engine, table: str, key: str, path: str, column: str, one: str, other: str) -> None:
    """Two rows of `table` with one `key` and other content (`other` names those columns) are refused, naming where
    both are (`file:line` for local files; `column` is the key's name in the file, `one` what one id stands for). Rows
    repeated whole (a log delivered twice) pass: the pipeline keeps one and its ledger counts the copies."""
    rows = engine.rows(
        f"SELECT {key} FROM (SELECT DISTINCT * FROM {table}) AS d GROUP BY 1 HAVING count(*) > 1 ORDER BY 1 LIMIT 1"
    )
    if rows:
        found = rows_holding(path, column, str(rows[0][0])) or [where(path, field=column)]
        both = " and ".join(found) if len(found) > 1 else f"{found[0]} (twice)"
        raise UserError(
            f"{both}: {key} {rows[0][0]!r} is given twice with other content ({other}): one id is {one}; give the "
            "other one its own id, or drop one row (a row repeated whole is counted once)"
        )


def path_exists(path: str) -> bool:
    return bool(glob.glob(path)) if any(ch in path for ch in "*?[") else Path(path).is_file()


def _twice_in_header(path: str, sep: str) -> tuple[str, str] | None:
    """(file, column) for a local CSV/TSV (or each file of a glob or folder) whose header names a column twice: DuckDB
    reads the second as `name_1` (not read, unsaid), Spark renames both. None for remote or unreadable files."""
    for f in local_files(path):
        try:
            with (gzip.open if f.lower().endswith(".gz") else open)(f, "rt", encoding="utf-8-sig", newline="") as fh:
                header = next(csv.reader(fh, delimiter=sep), [])
        except (OSError, UnicodeDecodeError, csv.Error, EOFError):
            continue  # the engine's own read says what is wrong with it
        if twice := next((c for i, c in enumerate(header) if c and c in header[:i]), None):
            return f, twice
    return None


def file_format(path: str) -> str:
    """parquet | csv | tsv | json from a file name (compressed .gz too); UserError for anything else."""
    p = path.lower().removesuffix(".gz").rstrip("/")
    for fmt, ends in (("parquet", (".parquet",)), ("csv", (".csv",)), ("tsv", (".tsv",))):
        if p.endswith(ends):
            return fmt
    if p.endswith((".jsonl", ".ndjson", ".json")):
        return "json"
    raise UserError(f"{path}: unsupported log file type; use .parquet, .csv, .tsv or .jsonl")


class DuckEngine:
    """The default engine: DuckDB in this process (`threads`: DuckDB threads, default all cores)."""

    name = "duckdb"
    errors: tuple[type[BaseException], ...] = (duckdb.Error,)

    def __init__(self, threads: int | None = None, con: duckdb.DuckDBPyConnection | None = None):
        self.con = con or connect(threads)

    def source(self, name: str, path: str, text: tuple[str, ...] = ()) -> tuple[str, dict[str, str]]:
        if "://" in path:
            raise UserError(f"{path}: the DuckDB engine reads local files; for remote paths use --engine spark")
        if Path(path).is_dir():
            raise UserError(f"{path}: is a folder; expected a log file (or a glob such as {Path(path) / '*.parquet'})")
        if not path_exists(path):
            raise UserError(f"{path}: file not found")
        fmt, q = self.file_kind(path), path.replace("'", "''")
        types = ", ".join(f"'{c.replace(chr(39), chr(39) * 2)}': 'VARCHAR'" for c in text)
        csv = f"read_csv('{q}', header = true{f', types = {{{types}}}' if types else ''})"
        reader = {"parquet": f"read_parquet('{q}')", "csv": csv, "tsv": csv, "json": f"read_json('{q}')"}[fmt]
        try:
            described = self.con.execute(f"DESCRIBE SELECT * FROM {reader}").fetchall()
        except duckdb.Error as e:
            raise unreadable(path, e) from None
        return reader, {row[0]: row[1] for row in described}

    def file_kind(self, path: str) -> str:
        return file_format(path)

    def rows(self, sql: str) -> list[tuple]:
        return self.con.execute(portable(sql, "duckdb")).fetchall()

    def view(self, name: str, sql: str) -> None:
        self.con.execute(f"CREATE OR REPLACE TEMP VIEW {name} AS {portable(sql, 'duckdb')}")

    def table(self, name: str, sql: str) -> int:
        return self.con.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS {portable(sql, 'duckdb')}").fetchone()[0]

    def results(self, tables: list[str]) -> duckdb.DuckDBPyConnection:
        return self.con


# A text time that ends in a UTC offset or Z after its clock time (10:00:00+08:00, 10:00Z); a date's -01 is no offset
_OFFSET = r"\d:\d{2}(:\d{2}(\.\d+)?)?\s*([+-]\d{2}(:?\d{2})?|[Zz])$"


# A year-first date with any of - / . between its parts, then spaces or T and the time: unambiguous, and read alike by
# both engines once written as ISO (DuckDB's cast took 2025/03/01 and Spark's refused it; neither took 2025.03.01)
_YEAR_FIRST = "^([0-9]{4})[-/.]([0-9]{1,2})[-/.]([0-9]{1,2})([ T]+(.+))?$"


def _iso(c: str) -> str:
    """SQL: text time `c` with a year-first date (2025/3/1, 2025.03.01 10:00) written as ISO (2025-03-01 10:00), else
    as it is: month- or day-first (03/01/2025) stays unread by both engines, and is refused as no timestamp."""
    t = f"trim({c})"
    part = [f"regexp_extract({t}, '{_YEAR_FIRST}', {i})" for i in range(6)]
    date = f"{part[1]} || '-' || lpad({part[2]}, 2, '0') || '-' || lpad({part[3]}, 2, '0')"
    time = f"CASE WHEN {part[5]} = '' THEN '' ELSE ' ' || {part[5]} END"
    return f"CASE WHEN regexp_matches({t}, '{_YEAR_FIRST}') THEN {date} || {time} ELSE {t} END"


def _cast(col: str, kind: str, dtype: str) -> tuple[str | None, str | None]:
    """(typed SQL expression, SQL predicate for an unparseable value) or (None, None) for a wrong type."""
    c = f'"{col}"'
    if dtype.strip('"') == "NULL":  # every value empty (JSON leaves it untyped): typed NULLs; required columns fail
        sql_t = {"id": "VARCHAR", "text": "VARCHAR", "number": "DOUBLE", "int": "BIGINT", "flag": "INTEGER"}
        return f"CAST(NULL AS {sql_t.get(kind, 'TIMESTAMP')})", "false"
    if dtype == "JSON":  # mixed-type JSON fields arrive as JSON in DuckDB; read them as text
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
        if numeric:  # |epoch seconds| < 1e11 (year 5138) also catches NaN, ±inf and epoch milliseconds
            return f"make_timestamp(CAST({c} * 1000000 AS BIGINT))", f"NOT abs(CAST({c} AS DOUBLE)) < 1e11"
        if text:  # via TIMESTAMPTZ so that offsets (+08:00) are honoured; the session is UTC
            parsed = f"TRY_CAST({_iso(c)} AS TIMESTAMPTZ)"
            return f"CAST({parsed} AS TIMESTAMP)", f"{c} IS NOT NULL AND {parsed} IS NULL"
        return None, None
    raise ValueError(kind)


def check_mapping(mapping: dict[str, str], known: list[str], kind: str) -> None:
    """The profile's `columns` ({their name: ours}) may only name our columns. Two names may map to one of ours (the
    responses' `created_at` and the events' `at` to ts); `open_table` refuses a file holding both."""
    for theirs, ours in mapping.items():
        if ours not in known:
            raise UserError(f"columns: {theirs} → {ours}: {ours} is not a {kind} log column ({', '.join(known)})")


def file_column(mapping: dict[str, str], ours: str, types: dict[str, str]) -> str:
    """The name our column `ours` has in a file with columns `types`: the mapped column it holds, else `ours`."""
    return next((t for t, o in mapping.items() if o == ours and t in types), ours)


def open_table(
    engine: Engine,
    name: str,
    path: str | Path,
    columns: list[Column],
    mapping: dict[str, str] | None = None,
    others: tuple[str, ...] = (),
) -> dict[str, str]:
    """Create view `name` with the typed `columns` of a log file; returns {column: source type}.

    An optional column that is absent while the file has an unread column a typo or a case away from it
    (`colected`, `Images`) is an error naming both: its default on every row would silently change the pairs.
    `others` are the file's columns another view reads (events that carry the content columns).

    `mapping` ({file column: our column}, the profile's `columns`) renames where the file has the
    column. Raises UserError(`file: column: problem`) for a missing file or column, a wrong type,
    unparseable values (bad numbers, bad timestamps), empty values in a required column, or values
    below `min`; errors name the file's own column.
    """
    path = str(path)
    if "://" not in path and Path(path).is_file() and Path(path).stat().st_size == 0:  # DuckDB: "columns found: json"
        raise UserError(f"{path}: empty file; expected log rows (a CSV: a header line, then rows)")
    reader, types = engine.source(name, path)
    kind = engine.file_kind(path)
    if kind in ("csv", "tsv") and (twice := _twice_in_header(path, "\t" if kind == "tsv" else ",")):
        raise UserError(f"{where(twice[0], 1, twice[1])}: the header names this column twice; rename or drop one "
                        "(the reader would take one of them)")  # fmt: skip
    source: dict[str, str] = {}
    for theirs, ours in (mapping or {}).items():
        if theirs in types and ours in source:  # the file has two columns the profile maps to one of ours
            raise UserError(f"{where(path, field=theirs)}: the profile's columns map both {source[ours]} and {theirs} "
                            f"of this file to {ours}; map one of them")  # fmt: skip
        if theirs in types:
            source[ours] = theirs
    # a CSV has no types: an id or text the reader took for a number or a date (00123, 1e5, 1.50, 2025/03/01) is read
    # again as what the file says, else it came back changed (1e5 → 100000.0) or was refused as no id (a DATE); so is
    # a time it read by a guessed pattern (03/01/2025 as 3 January), to be read as ISO text as Spark reads it
    guessed = tuple(dict.fromkeys(src for c in columns if (src := source.get(c.name, c.name)) in types and (
        c.kind in ("id", "text") and types[src] != "VARCHAR" or c.kind == "time" and types[src] in ("DATE", "TIMESTAMP",
        "TIMESTAMP WITH TIME ZONE"))))  # fmt: skip
    if guessed and kind in ("csv", "tsv"):
        reader, types = engine.source(name, path, text=guessed)
    select, checks = [], []
    read = {source.get(c.name, c.name) for c in columns} | set(mapping or {}) | set(others)
    unread = tuple(t for t in types if t not in read)
    for col in columns:
        src = source.get(col.name, col.name)
        if src not in types:
            if col.required:
                found = ", ".join(types) or "none"
                raise UserError(f"{where(path, field=col.name)}: missing column ({col.help}); columns found: {found}")
            typo = next((t for t in unread if t.casefold() == col.name or near_miss(t.casefold(), (col.name,))), None)
            if typo is not None:
                shown = str(col.default)
                shown = (
                    "empty" if shown == "NULL" else shown if re.fullmatch(r"-?\d+(\.\d+)?", shown) else "its default"
                )
                raise UserError(
                    f"{where(path, field=typo)}: not a column we read; did you mean {col.name} ({col.help})? Without "
                    f"it every row reads {shown}: rename it, or map it in the profile (columns: {{{typo}: "
                    f"{col.name}}})"
                )
            default = str(col.default)
            for ours, theirs in source.items():  # a default may read another column (length("text"))
                default = default.replace(f'"{ours}"', f'"{theirs}"')
            select.append(f"{default} AS {col.name}")
            continue
        typed, bad = _cast(src, col.kind, types[src])
        if typed is None:
            raise UserError(f"{where(path, field=src)}: expected {EXPECT[col.kind]}, got column type {types[src]}")
        if col.kind == "text" and kind in ("csv", "tsv"):  # CR LF in a quoted cell: one line break, as data reads it
            typed = f"replace({typed}, chr(13) || chr(10), chr(10))"
        select.append(f'{typed} AS "{col.name}"')
        raw, named = f'"{src}"', replace(col, name=src)  # checks report the file's column name
        if bad != "false":
            checks.append((named, "bad", f"count(*) FILTER (WHERE {bad})", bad))
        if not col.nullable:
            checks.append((named, "null", f"count(*) - count({raw})", f"{raw} IS NULL"))
        if col.kind == "time" and kind == "parquet" and "://" not in path:
            _same_zone_kind(path, src)
        if col.kind == "time":  # text times: an offset on all or none (DuckDB's CSV sniffer types a mix TIMESTAMPTZ)
            has = f"regexp_matches(CAST({raw} AS VARCHAR), '{_OFFSET}')"
            mixed = f"count(*) FILTER (WHERE {has}) > 0 AND count(*) FILTER (WHERE {raw} IS NOT NULL AND NOT {has}) > 0"
            if types[src] in ("VARCHAR", "JSON"):
                checks.append((named, "mixed", f"({mixed})::INTEGER", has))
            elif types[src] == "TIMESTAMP WITH TIME ZONE" and reader.startswith("read_csv("):
                _check(
                    engine, path, reader[:-1] + ", all_varchar = true)", [(named, "mixed", f"({mixed})::INTEGER", has)]
                )
        if engine.name == "spark" and kind != "parquet" and col.kind in ("id", "text") and types[src] == "VARCHAR":
            fffd = f"instr({raw}, '\ufffd') > 0"  # Spark decodes bytes that are not UTF-8 as U+FFFD, unsaid
            checks.append((named, "fffd", f"count(*) FILTER (WHERE {fffd})", fffd))
        if col.unique:
            checks.append((named, "dup", f"count({raw}) - count(DISTINCT {raw})", None))
        if col.min is not None:  # min() comes from Parquet statistics when it can: no scan
            checks.append((named, "low", f"coalesce(min({typed}) < {col.min}, false)::INTEGER", f"{typed} < {col.min}"))
    _check(engine, path, reader, checks)
    engine.view(name, f"SELECT {', '.join(select)} FROM {reader}")
    return types


def _same_zone_kind(path: str, col: str) -> None:
    """Parquet files of one glob must all store `col` as instants (isAdjustedToUTC) or all as wall-clock times: the
    reader types the glob from one file and casts the others, so wall-clock times beside instants read as UTC."""
    q = path.replace("'", "''")
    try:
        rows = (
            duckdb.connect()
            .execute(
                f"SELECT file_name, logical_type FROM parquet_schema('{q}') WHERE name = ? AND logical_type LIKE "
                "'TimestampType(%' ORDER BY 1",
                [col],
            )
            .fetchall()
        )
    except duckdb.Error:  # unreadable: the column checks say so
        return
    kinds = {"isAdjustedToUTC=1" in t: f for f, t in rows}
    if len(kinds) > 1:
        raise UserError(
            f"{where(path, field=col)}: {kinds[True]} holds times with a zone (instants) and {kinds[False]} times "
            "without one, which would be read as UTC beside them: write every file's times the same way"
        )


def _check(engine: Engine, path: str, reader: str, checks: list) -> None:
    """One aggregate scan for all checks; only a failing check pays for a second query (count, example)."""
    if not checks:
        return
    try:
        found = engine.rows(f"SELECT {', '.join(agg for _, _, agg, _ in checks)} FROM {reader}")[0]
        for (col, what, _, pred), hit in zip(checks, found):
            if not hit:
                continue
            raw, loc = f'"{col.name}"', where(path, field=col.name)
            if what == "mixed":  # naive times read as UTC beside +08:00 ones: the order of clicks silently shifts
                (n, with_off), (without,) = (
                    engine.rows(f"SELECT count(*), first(CAST({raw} AS VARCHAR)) FROM {reader} WHERE {pred}")[0],
                    engine.rows(f"SELECT first(CAST({raw} AS VARCHAR)) FROM {reader} WHERE NOT ({pred})")[0],
                )
                raise UserError(
                    f"{loc}: {n} values carry a UTC offset (e.g. {with_off!r}) and the others none (e.g. {without!r}), "
                    "which would be read as UTC: give every value its offset, or none"
                )
            if what == "dup":
                example = engine.rows(f"SELECT {raw} FROM {reader} GROUP BY 1 HAVING count(*) > 1 LIMIT 1")[0]
                raise UserError(f"{loc}: {hit} repeated ids, e.g. {example[0]!r} ({col.help}; must be unique)")
            count, example = engine.rows(f"SELECT count(*), first(CAST({raw} AS VARCHAR)) FROM {reader} WHERE {pred}")[
                0
            ]
            if what == "bad":
                raise UserError(f"{loc}: expected {EXPECT[col.kind]}, found {example!r} ({count} rows)")
            if what == "fffd":
                if found := not_utf8_file(path):  # a local file: the line every reader gives
                    raise found
                raise UserError(f"{loc}: {count} values hold U+FFFD (�), e.g. {example[:40]!r}: what Spark reads bytes "
                                "that are not UTF-8 as (a CSV saved on Chinese Windows is GBK); save the file as UTF-8 "
                                "(a text that really holds �: --engine duckdb)")  # fmt: skip
            if what == "null":
                raise UserError(f"{loc}: {count} empty values ({col.help})")
            raise UserError(f"{loc}: {count} values below {col.min:g}, e.g. {example} ({col.help})")
    except engine.errors as e:
        raise unreadable(path, e) from None


def run_stages(
    engine: Engine, stages: list[Stage], label: str, rows: int | None = None, progress: bool = True
) -> tuple[dict[str, float], dict[str, int]]:
    """Make each stage's table in order under a rich bar (step, rows/s, elapsed).

    Returns (seconds per stage title, rows per table).
    """
    seconds: dict[str, float] = {}
    sizes: dict[str, int] = {}
    bar = progress_bar(progress)
    t0 = time.perf_counter()
    with bar:
        task = bar.add_task(label, total=len(stages), info="")
        for st in stages:
            bar.update(task, info=st.title)
            t = time.perf_counter()
            try:
                sizes[st.table] = engine.table(st.table, st.select)
            except engine.errors as e:  # a bad config value can still reach SQL (e.g. a cast); keep it one line
                raise UserError(f"{label}: step {st.title!r} failed: {str(e).strip().splitlines()[0]}") from None
            seconds[st.title] = time.perf_counter() - t
            bar.advance(task)
        total = time.perf_counter() - t0
        rate = f"{rows / total:,.0f} events/s" if rows and total > 0 else ""
        bar.update(task, info=f"done {rate}")
    return seconds, sizes


def ledger_tail(unit: str, fate: str, events: str) -> str:
    """The `wt_ledger` rows after the events a filter dropped: every kept event and every `unit` under its
    fate (`fate`: one row per unit with its `rule` and its event count in column `events`; a fate no event has is
    left out of the events ledger), then every
    candidate pair under its rule ('kept' when none). Each ledger adds up to its input (report.check_ledgers)."""
    return (
        f"UNION ALL SELECT 'events', rule, sum({events}) FROM {fate} GROUP BY 2 HAVING sum({events}) > 0\n"
        f"UNION ALL SELECT '{unit}s', rule, count(*) FROM {fate} GROUP BY 2\n"
        "UNION ALL SELECT 'candidates', coalesce(rule, 'kept'), count(*) FROM wt_candidates GROUP BY 2"
    )


def script(stages: list[Stage], kind: str, profile: str, inputs: list[str], unit: str, dialect: str = "duckdb") -> str:
    """The stages as one SQL script in `dialect`, with numbered step comments (what `--print-sql` prints),
    under a header naming the profile, the `inputs` (one table a line) and the outputs."""
    header = [
        f"-- weitiao logs {kind} · profile {profile} · {dialect} SQL made from the config, thresholds inlined",
        *(f"-- {'inputs: ' if i == 0 else '':9}{x}" for i, x in enumerate(inputs)),
        f"-- outputs: wt_pairs (preference rows), wt_ledger (ledger, rule, n: every event, {unit} and candidate "
        "counted once)",
    ]
    parts = ["\n".join(header)]
    for i, st in enumerate(stages, 1):
        sql = portable(st.select, dialect)
        if dialect == "spark":  # CACHE TABLE computes the view once, as the engine does
            made = f"CREATE OR REPLACE TEMPORARY VIEW {st.table} AS\n{sql};\nCACHE TABLE {st.table};"
        else:
            made = f"CREATE OR REPLACE TEMP TABLE {st.table} AS\n{sql};"
        parts.append(f"-- {i}. {st.title}\n{made}")
    return "\n\n".join(parts) + "\n"


def sql_num(x: float | int) -> str:
    """A config number as a SQL literal; floats keep their point so no engine divides as integers."""
    if isinstance(x, bool):
        raise TypeError("bool")
    return repr(float(x)) if isinstance(x, float) else str(int(x))


def sql_str(s: str) -> str:
    """A config string as a quoted SQL literal."""
    return "'" + str(s).replace("'", "''") + "'"


NEARLY_ALL = 0.9  # a share of dwell values outside [min, max] that says the unit is not seconds
FEW = 10  # fewer dwell values say nothing about their unit


def check_dwell_unit(engine: Engine, path: str, column: str, values: str, low: float, high: float) -> None:
    """Refuse dwell values nearly all outside [low, high] seconds (the `values` query's column v): a column logged in
    milliseconds was dropped whole as idle/out of bounds and the run said only 'no pair'. Names the file's column,
    the count, the median and the unit it looks like."""
    counts = f"count(v), count(*) FILTER (WHERE v > {sql_num(high)}), count(*) FILTER (WHERE v < {sql_num(low)})"
    n, above, below, mid = engine.rows(f"SELECT {counts}, median(v) FROM ({values}) AS t")[0]
    if n < FEW or above + below < NEARLY_ALL * n:
        return
    if above >= below:
        what, fix = f"{above:,} of {n:,} dwell values are above max_dwell_s {high:g}", "milliseconds? divide it by 1000"
        bound = "raise max_dwell_s"
    else:
        what, fix = f"{below:,} of {n:,} dwell values are below min_dwell_s {low:g}", "minutes? multiply it by 60"
        bound = "lower min_dwell_s"
    raise UserError(f"{where(path, field=column)}: {what} (median {mid:g}) and would be dropped: the column is read in "
                    f"seconds; {fix}, or {bound} if they are seconds")  # fmt: skip
