"""Spark SQL engine for `weitiao logs dwell|chat --engine spark`: the same pipeline SQL, run by Spark.

Every statement is the DuckDB pipeline passed through `engine.portable(sql, "spark")`; nothing here
states a rule. Spark reads what it can reach (local paths, hdfs://, s3a://, globs, folders of part
files named *.parquet/*.csv/*.jsonl or holding such files). Each stage is computed once and kept on
the executors with its lineage cut (localCheckpoint; its count is the stage's size): with `persist`
every later stage planned all earlier queries again, 10× slower on 20 k events. A lost executor loses
its blocks, so on a cluster run without dynamic deallocation of executors. wt_pairs and wt_ledger then
come to this machine as Arrow into DuckDB, where the report and the pairs JSONL are written as for the
DuckDB engine.
Needs Java 17+ (Debian: openjdk-17-jre-headless; `make install` installs it) and `pip install pyspark`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import duckdb

from weitiao.errors import UserError
from weitiao.logs.engine import file_format, not_utf8_file, path_exists, portable, unreadable

# Spark type names → the DuckDB names the column checks (engine._cast) are written against
TYPES = {
    "string": "VARCHAR",
    "bigint": "BIGINT",
    "int": "INTEGER",
    "smallint": "SMALLINT",
    "tinyint": "TINYINT",
    "double": "DOUBLE",
    "float": "FLOAT",
    "boolean": "BOOLEAN",
    "timestamp": "TIMESTAMP",
    "timestamp_ntz": "TIMESTAMP",
    "date": "DATE",
}
_NUMBERS = ("BIGINT", "INTEGER", "SMALLINT", "TINYINT", "DOUBLE", "FLOAT")
CONF = {
    "spark.sql.session.timeZone": "UTC",  # as DuckDB's session: offsets in ISO text are honoured
    "spark.ui.showConsoleProgress": "false",  # our bar shows the step
    "spark.sql.execution.arrow.pyspark.enabled": "true",
}


def java_missing() -> str | None:
    """Why Spark cannot start here (no Java, no pyspark), or None."""
    try:
        import pyspark  # noqa: F401
    except ImportError:
        return "pyspark is not installed; pip install 'weitiao[spark]' (or use --engine duckdb)"
    java = Path(os.environ["JAVA_HOME"]) / "bin" / "java" if os.environ.get("JAVA_HOME") else shutil.which("java")
    if not java or not Path(java).exists():
        return "Java not found; install a JRE 17+ (Debian: apt-get install openjdk-17-jre-headless) or set JAVA_HOME"
    return None


class SparkEngine:
    """Spark SQL on a SparkSession (`start()` makes one for a master URL: local[*] or a cluster)."""

    name = "spark"

    def __init__(self, session):
        from py4j.protocol import Py4JError
        from pyspark.errors import PySparkException

        self.spark = session
        self.errors: tuple[type[BaseException], ...] = (PySparkException, Py4JError)
        self.cached: dict[str, object] = {}

    @classmethod
    def start(cls, master: str = "local[*]", conf: dict[str, str] | None = None) -> SparkEngine:
        """A SparkSession on `master` (local[*], local[N], spark://…, yarn, k8s://…) with our settings."""
        why = java_missing()
        if why:
            raise UserError(f"--engine spark: {why}")
        from pyspark.sql import SparkSession

        builder = SparkSession.builder.master(master).appName("weitiao logs")
        for k, v in (CONF | (conf or {})).items():
            builder = builder.config(k, v)
        try:
            session = builder.getOrCreate()
        except Exception as e:  # a bad master URL, a cluster we cannot reach: one line, not a JVM trace
            raise UserError(f"--spark-master {master}: Spark did not start: {str(e).strip().splitlines()[0]}") from None
        session.sparkContext.setLogLevel("ERROR")
        return cls(session)

    def file_kind(self, path: str) -> str:
        """The file format of a path; a local folder of part files takes its files' format."""
        p = Path(path)
        if "://" not in path and p.is_dir() and not p.name.lower().endswith((".parquet", ".csv", ".tsv", ".jsonl")):
            kinds = {file_format(str(f)) for f in p.iterdir() if f.is_file() and not f.name.startswith(("_", "."))}
            if len(kinds) != 1:
                raise UserError(f"{path}: folder holds no single kind of .parquet/.csv/.tsv/.jsonl files")
            return kinds.pop()
        return file_format(path)

    def source(self, name: str, path: str, text: tuple[str, ...] = ()) -> tuple[str, dict[str, str]]:
        local = self.spark.sparkContext.master.startswith("local")  # elsewhere /x may mean the cluster's own FS
        if local and "://" not in path and not Path(path).is_dir() and not path_exists(path):
            raise UserError(f"{path}: file not found")
        fmt, read = self.file_kind(path), self.spark.read
        try:
            if fmt == "parquet":
                df = read.parquet(path)
            elif fmt in ("csv", "tsv"):  # RFC 4180 quoting ("" inside quotes), as DuckDB writes and reads it
                df = self._csv(path, "\t" if fmt == "tsv" else ",", text)
            else:
                df = read.json(path)
        except self.errors as e:
            raise unreadable(path, e) from None
        if "_corrupt_record" in df.columns:
            if found := not_utf8_file(path):
                raise found
            raise UserError(f"{path}: cannot read: not JSON lines in UTF-8; Spark reads one JSON object per line "
                            "(.jsonl), UTF-8 (a file saved as GBK: save it as UTF-8)")  # fmt: skip
        view = f"wt_raw_{name}"
        df.createOrReplaceTempView(view)
        types = {f.name: TYPES.get(f.dataType.simpleString(), f.dataType.simpleString().upper()) for f in df.schema}
        return view, types

    def _csv(self, path: str, sep: str, text: tuple[str, ...] = ()):
        """A CSV file with inferred types, except that the `text` columns and a number column holding a value with a
        leading zero (an id such as 007) stay text, as DuckDB's reader keeps it: read as 7 it no longer joins the
        other file's 007."""
        from pyspark.sql import functions as sf
        from pyspark.sql.types import StringType, StructField, StructType

        opts = dict(header=True, sep=sep, quote='"', escape='"', multiLine=True)
        df = self.spark.read.csv(path, inferSchema=True, **opts)
        numbers = [f.name for f in df.schema if TYPES.get(f.dataType.simpleString(), "") in _NUMBERS]
        zeros = set(text)
        if numbers:
            raw = self.spark.read.csv(path, inferSchema=False, **opts)
            col = [sf.col("`" + c.replace("`", "``") + "`") for c in numbers]
            found = raw.select([sf.max(c.rlike("^0[0-9]").cast("int")) for c in col]).first()
            zeros |= {c for c, hit in zip(numbers, found) if hit}
        if not zeros:
            return df
        schema = StructType([StructField(f.name, StringType()) if f.name in zeros else f for f in df.schema])
        return self.spark.read.schema(schema).csv(path, **opts)

    def rows(self, sql: str) -> list[tuple]:
        return [tuple(r) for r in self.spark.sql(portable(sql, "spark")).collect()]

    def view(self, name: str, sql: str) -> None:
        self.spark.sql(portable(sql, "spark")).createOrReplaceTempView(name)

    def table(self, name: str, sql: str) -> int:
        # computed now (the stage's time is its own) and cut from its lineage: later stages plan
        # against the stored rows, not against every earlier query again
        df = self.spark.sql(portable(sql, "spark")).localCheckpoint(eager=True)
        n = df.count()
        df.createOrReplaceTempView(name)
        old = self.cached.pop(name, None)
        if old is not None:
            old.unpersist()
        self.cached[name] = df
        return n

    def results(self, tables: list[str]) -> duckdb.DuckDBPyConnection:
        con = duckdb.connect(":memory:")
        con.execute("SET TimeZone = 'UTC'")
        for name in tables:
            arrow = self.spark.table(name).toArrow()  # noqa: F841 (read by DuckDB below)
            con.execute(f"CREATE TABLE {name} AS SELECT * FROM arrow")
        return con

    def close(self) -> None:
        """Drop the cached stages (the session stays for the next run)."""
        for df in self.cached.values():
            df.unpersist()
        self.cached.clear()
