"""Data files → records: which files a `data.train` entry names, and each file's rows, streamed.

An entry is a file, a glob (`data/*.parquet`), a folder of shards, or a Hugging Face `datasets`
`save_to_disk` folder. Files: .jsonl/.ndjson (also .jsonl.gz/.jsonl.zst, decompressed as a stream),
.json (also .json.gz/.json.zst), .parquet and .arrow (read a record batch at a time), .csv (also
.csv.gz/.csv.zst) and .xlsx (one sheet) with a header row. A folder or glob holding a data file we do not read (.tsv,
.parquet.gz, .jsonl.bz2, ...) is refused naming it, not skipped. A row that cannot be read (bad JSON,
over-long line) is yielded as a RowError so the caller can report it as `file:line`.
"""

from __future__ import annotations

import csv
import glob
import gzip
import io
import json
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from weitiao.errors import UserError, where
from weitiao.io import BOM, bad_utf8, iter_lines, loads, read_json, read_text, written_by_us

JSONL = (".jsonl", ".ndjson")
COMPRESSED = (".gz", ".zst")
SUFFIXES = (*JSONL, ".json", ".parquet", ".arrow", ".csv", ".xlsx")
STREAMED = (*JSONL, ".json", ".csv")  # read through a decompressor when .gz/.zst
READABLE = ".jsonl[.gz|.zst], .json[.gz|.zst], .parquet, .arrow, .csv[.gz|.zst], .xlsx"
LOOKS_LIKE_DATA = (*SUFFIXES, ".tsv", ".xls")  # in a name, with a suffix after it we cannot read: refused, not skipped
GLOB_CHARS = set("*?[")
BATCH_ROWS = 1024  # Parquet/Arrow rows decoded at a time
MAX_ROW_BYTES = 1_000_000  # a longer JSONL row is rejected unread: ~300k tokens, far over any max_len
READ_ROOTS = "WEITIAO_READ_ROOTS"  # folders (os.pathsep-separated) a run's data files must lie in: `confined`


class RowError(ValueError):
    """A problem in one row: `field` names the offending key path."""

    def __init__(self, field: str, problem: str, raw: str | None = None):
        super().__init__(f"{field}: {problem}")
        self.field, self.problem, self.raw = field, problem, raw  # raw: the line's text when it is no JSON


def data_suffix(path: Path) -> str:
    """`.jsonl` for `x.jsonl.gz`, else the lower-case suffix."""
    suffixes = [s.lower() for s in path.suffixes]
    if len(suffixes) >= 2 and suffixes[-1] in COMPRESSED:
        return suffixes[-2]
    return path.suffix.lower()


def _is_data_file(path: Path) -> bool:
    compressed = path.suffix.lower() in COMPRESSED
    return not _ours_or_hidden(path) and data_suffix(path) in (STREAMED if compressed else SUFFIXES)


def _ours_or_hidden(path: Path) -> bool:
    # `.rejects.jsonl` is what load_rows writes beside the data: never read it back as data; nor a report that
    # `data mix` / `repeat-negatives` wrote beside their output (OUT.report.json), while unchanged.
    report = path.name.endswith(".report.json") and written_by_us(path)
    return path.name.startswith(".") or path.name.endswith(".rejects.jsonl") or report


def _data_files(hits: list[Path], where: str) -> list[Path]:
    """The data files among a folder's or glob's files; one that looks like data but that we cannot read (a .tsv,
    a .parquet.gz) is refused rather than left out unsaid."""
    for f in hits:
        if not _is_data_file(f) and not _ours_or_hidden(f) and set(map(str.lower, f.suffixes)) & set(LOOKS_LIKE_DATA):
            raise UserError(
                f"{f}: in {where}, a data file weitiao does not read; convert it to one of {READABLE}, or move it out"
            )
    return [f for f in hits if _is_data_file(f)]


def _hf_saved(folder: Path) -> list[Path] | None:
    """The .arrow shards of a `Dataset.save_to_disk` folder, None when `folder` is not one."""
    if (folder / "dataset_dict.json").is_file():
        splits = read_json(folder / "dataset_dict.json").get("splits", [])
        raise UserError(
            f"{folder}: a DatasetDict with splits {splits}; give one split's folder, e.g. {folder / 'train'}"
        )
    state = folder / "state.json"
    if not (state.is_file() and (folder / "dataset_info.json").is_file()):
        return None
    files = read_json(state).get("_data_files")
    if not isinstance(files, list) or not all(isinstance(f, dict) and "filename" in f for f in files):
        raise UserError(f"{state}: _data_files: expected the list `datasets` save_to_disk writes")
    return [folder / f["filename"] for f in files]


def expand_paths(entries: list[str | Path]) -> list[Path]:
    """Files named by each entry (file, glob, folder of shards, save_to_disk folder), in a stable order. A file two
    entries reach (`a.jsonl` and `*.jsonl`, a folder and a file in it) is refused: its rows were read, and trained,
    twice without a word."""
    out = _expand(entries)
    seen: dict[Path, str] = {}
    for entry, f in out:
        key = f.resolve()
        if key in seen:
            how = "again" if seen[key] == str(entry) else f"again (also named by {seen[key]})"
            raise UserError(
                f"{entry}: names {f} {how}; its rows would be read and trained twice: name each file once "
                "(to up-sample a file on purpose, `weitiao data mix FILE:WEIGHT ...` writes the copies)"
            )
        seen[key] = str(entry)
    return [f for _, f in out]


LF_SOURCES = ("file_name", "hf_hub_url", "ms_hub_url", "om_hub_url", "script_url")


def refuse_lf_info(files: list[Path]) -> None:
    """LLaMA-Factory's dataset_info.json among the files given as data: its datasets are read by name through it
    (their columns, tags and formatting), not as rows; said with the settings that do that."""
    for f in files:
        if f.name != "dataset_info.json" or not f.is_file():
            continue
        try:
            info = json.loads(f.read_text(encoding="utf-8-sig"))
        except (OSError, UnicodeDecodeError, ValueError):
            continue  # not one: read as data, which says what is wrong with it
        if isinstance(info, dict) and any(isinstance(v, dict) and set(v) & set(LF_SOURCES) for v in info.values()):
            raise UserError(
                f"{f}: LLaMA-Factory's dataset_info.json, whose datasets are read by name through it (columns, tags, "
                f"formatting): set data.dataset_dir: {f.parent} and data.train: [NAME, ...] (`data check NAME "
                f"--dataset-dir {f.parent}`), or give the data files themselves"
            )


def _expand(entries: list[str | Path]) -> list[tuple[str | Path, Path]]:
    """(entry, file) for every file each entry names."""
    out: list[tuple[str | Path, Path]] = []
    for entry in entries:
        p = Path(entry)
        if not p.exists() and GLOB_CHARS & set(str(entry)):
            hits = sorted(Path(h) for h in glob.glob(str(entry), recursive=True))
            hits = _data_files([h for h in hits if h.is_file()], f"glob {entry}")
            if not hits:
                raise UserError(f"{entry}: no data files match ({READABLE})")
            out += [(entry, h) for h in hits]
        elif p.is_dir():
            shards = _hf_saved(p)
            if shards is None:
                shards = sorted(f for f in p.rglob("*") if f.is_file())
                shards = [f for f in shards if not any(part.startswith(".") for part in f.relative_to(p).parts)]
                shards = _data_files(shards, f"folder {p}")
            if not shards:
                raise UserError(f"{p}: is a folder with no data files ({READABLE})")
            out += [(entry, f) for f in shards]
        else:
            out.append((entry, p))  # iter_records reports a missing file or a bad suffix
    refuse_lf_info([f for _, f in out])
    return out


def _open_stream(path: Path) -> BinaryIO:
    """A binary stream of the file's (decompressed) bytes; never the whole file in memory."""
    suffix = path.suffix.lower()
    if suffix == ".gz":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    f = open(path, "rb")  # noqa: SIM115 - the caller closes it
    if suffix == ".zst":
        try:
            import zstandard
        except ImportError:
            f.close()
            raise UserError(f"{path}: reading .zst needs the zstandard package: pip install zstandard") from None
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(f, closefd=True))
    return f


ARRAY = "a JSON array, not one object per line (JSON lines); a file of one JSON array is read as .json: name it .json"
BARE = (
    'a bare list of messages; give each row as an object: {"messages": [...]} (role/content) or '
    '{"conversations": [...]} (from/value)'
)


def not_a_row(record: Any) -> RowError:
    """The error for a record that is not a JSON object; a list of messages says how to wrap it."""
    bare = (
        isinstance(record, list) and record and all(isinstance(m, dict) and {"role", "from"} & m.keys() for m in record)
    )
    return RowError("row", BARE if bare else f"expected a JSON object, got {type(record).__name__}")


@contextmanager
def _readable(path: Path) -> Iterator[None]:
    """A compressed file that cannot be read (truncated, not compressed at all) as one line naming it."""
    try:
        yield
    except (OSError, EOFError) as e:  # gzip/zstd: truncated or not compressed at all
        if isinstance(e, UserError):
            raise
        raise UserError(f"{path}: not a readable {path.suffix} file ({e})") from None
    except Exception as e:  # zstandard.ZstdError is not an OSError
        if type(e).__name__ != "ZstdError":
            raise
        raise UserError(f"{path}: not a readable .zst file ({e})") from None


def _jsonl(path: Path, max_row_bytes: int | None) -> Iterator[tuple[int, Any]]:
    opener = (lambda: _open_stream(path)) if path.suffix.lower() in COMPRESSED else None
    with _readable(path):
        for n, line, size in iter_lines(path, max_row_bytes, opener=opener):
            if line is None:
                limit = f"{max_row_bytes:,}"
                yield n, RowError("row", f"{size:,} bytes, over the {limit}-byte limit (data.max_row_bytes)")
            elif line.strip():
                try:
                    row = loads(line)
                except json.JSONDecodeError as e:
                    why = f"not valid JSON ({e.msg} at column {e.colno})"
                    if "\r" in line.rstrip("\r\n"):  # never inside JSON (a string holds it as \r): line ends
                        why = "lines end in a lone CR (old Mac line endings); save the file with LF or CR LF line ends"
                    yield n, RowError("json", ARRAY if n == 1 and line.strip() == "[" else why, line.rstrip("\r\n"))
                except ValueError as e:
                    yield n, RowError("json", f"not valid JSON ({e})", line.rstrip("\r\n"))
                else:  # one JSON array on one line: a list, where rows are objects (unless it holds messages)
                    if n == 1 and isinstance(row, list) and not_a_row(row).problem != BARE:
                        row = RowError("json", ARRAY, line.rstrip("\r\n"))
                    yield n, row


def _json_text(path: Path) -> str:
    """A whole .json/.json.gz/.json.zst file's text, BOM dropped; bad UTF-8 names file:line."""
    if path.suffix.lower() not in COMPRESSED:
        return read_text(path)
    with _readable(path), _open_stream(path) as f:
        raw = f.read()
    raw = raw.removeprefix(BOM)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise bad_utf8(path, raw, e, 1) from None


_SPACE_COMMA = re.compile(r"[ \t\n\r]*,?[ \t\n\r]*")
_PLAIN = json.JSONDecoder()


def _start_lines(text: str, start: int, count: int) -> list[int]:
    """The line each of the `count` values of the (valid) JSON array opening at `start` starts on."""
    lines, at, line = [], start + 1, 1 + text.count("\n", 0, start)
    for _ in range(count):
        at = _SPACE_COMMA.match(text, at).end()  # type: ignore[union-attr]
        line += text.count("\n", start, at)
        lines.append(line)
        start = at
        _, at = _PLAIN.raw_decode(text, at)
    return lines


def _json_rows(path: Path) -> Iterator[tuple[int, Any]]:
    """Rows of a .json file (a list, or {"data": [...]}), each numbered by the line it starts on, as JSONL rows are:
    LLaMA-Factory's files are indented arrays, whose row 2 starts on line 6."""
    text = _json_text(path)
    try:
        data = loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{where(path, e.lineno, 'json')}: not valid JSON ({e.msg} at column {e.colno})") from None
    except ValueError as e:
        raise UserError(f"{where(path, None, 'json')}: not valid JSON ({e})") from None
    if isinstance(data, list):
        yield from zip(_start_lines(text, len(text) - len(text.lstrip()), len(data)), data)
        return
    keyed = data if isinstance(data, dict) else {}
    lists = [k for k, v in keyed.items() if isinstance(v, list) and v and isinstance(v[0], dict)]  # lists of rows
    if not (isinstance(data, dict) and isinstance(data.get("data"), list)):
        named = f"rows under {', '.join(map(repr, lists))}: save each list as its own file; " if lists else ""
        raise UserError(f"{path}: json: {named}expected a list of rows (or {{'data': [...]}})")
    if others := [k for k in lists if k != "data"]:  # only `data` is read: the others' rows would be dropped
        raise UserError(f"{path}: json: rows under 'data' and also under {', '.join(map(repr, others))}, which "
                        "would be left unread; keep one list of rows per file")  # fmt: skip
    yield from enumerate(data["data"], 1)  # rows counted: where the list sits in the object is not looked for


class Header:
    """A CSV's or a sheet's header row (file line `line`): its names must be unique. A column without a name (Excel
    writes `a,b,` for a column it once held) is left out when it is empty in every row, with a note (`done`); a row
    holding a value there is a bad row naming the column: CSV and xlsx read the same."""

    def __init__(self, path: Path, line: int, cells: list[str]):
        names = [c for c in cells if c.strip()]
        if not names:
            raise UserError(f"{path}:{line}: header: no column names; the first row names the columns")
        if twice := next((c for i, c in enumerate(names) if c in names[:i]), None):
            raise UserError(f"{path}:{line}: header: column {twice!r} named twice; give each column its own name")
        self.path, self.line, self.cells = path, line, cells
        self.unnamed = [i for i, c in enumerate(cells) if not c.strip()]

    def row(self, values: list[str]) -> dict[str, str] | RowError:
        """A row of the header's width as {name: value}; a RowError when a column without a name holds a value."""
        if (at := next((i for i in self.unnamed if values[i].strip()), None)) is not None:
            return self.nameless(at, values[at])
        if [v.strip() for v in values] == [c.strip() for c in self.cells]:  # files joined with their headers
            return RowError("row", f"the header row (line {self.line}) again, as when files are joined with their "
                                   "headers: delete this line")  # fmt: skip
        return {c: v for c, v in zip(self.cells, values) if c.strip()}

    def nameless(self, at: int, value: str) -> RowError:
        """The bad row holding `value` in 0-based column `at`, a column without a name."""
        pandas = " (pandas writes its index there: to_csv(..., index=False))" if at == 0 else ""
        return RowError("row", f"column {at + 1} holds {value[:40]!r} but has no name in the header (line "
                               f"{self.line}); name it there, or delete the column{pandas}")  # fmt: skip

    def done(self, notes: list[str] | None) -> None:
        """Note the nameless columns left out, every row read (all empty there)."""
        if self.unnamed and notes is not None:
            cols = ", ".join(str(i + 1) for i in self.unnamed[:5]) + (", ..." if len(self.unnamed) > 5 else "")
            many = "s" if len(self.unnamed) > 1 else ""
            notes.append(f"{self.path}: column{many} {cols} without a name in the header, empty in every row: left out")


TYPELESS = (".csv", ".xlsx")  # files whose cells all read as text
NUMBER = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")  # JSON's number: 007, +1, " 1" are not


def as_number(text: str) -> float | None:
    """`text` as Python's float() reads it ("1.0", "1e-4", " 2 ", "nan"), None when it reads no number."""
    try:
        return float(text)
    except ValueError:
        return None


def number_cell(value: Any, source: str) -> Any:
    """`value` as a float when it is a CSV/xlsx cell (`source` file:line) holding a number, else `value`: such a file
    has no number type, and a column read as a number (a weight, a margin) came as the text "0.5"."""
    if isinstance(value, str) and data_suffix(Path(source.rpartition(":")[0])) in TYPELESS and NUMBER.fullmatch(value):
        return float(value)
    return value


def cell_text(text: str) -> str:
    """A spreadsheet cell's text with each Windows line break (CR LF) read as one line break (LF): a file saved on
    Windows holds them inside quoted cells too, and a training text would keep the CR. A lone CR stays."""
    return text.replace("\r\n", "\n")


def csv_rows(
    path: Path, opener: Any = None, max_cell: int | None = MAX_ROW_BYTES, notes: list[str] | None = None
) -> Iterator[tuple[int, Any]]:
    """Rows of a CSV with a header line, numbered by the file line where each row starts; a line break inside a
    quoted cell is LF, whatever the file's line endings (`cell_text`). A cell may be `max_cell` characters long
    (data.max_row_bytes, as a JSONL row; None: any length); what the csv module cannot parse is one line naming
    file:line. `opener` returns a binary stream of UTF-8 to read instead of the file. Columns: `Header`; its note
    goes to `notes`."""
    line_no = [0]

    def lines() -> Iterator[str]:
        for n, text, _ in iter_lines(path, opener=opener):
            line_no[0] = n
            yield text

    csv.field_size_limit(max_cell or sys.maxsize)  # csv's own default, 131,072 characters, cut long documents
    rows = csv.reader(lines())

    def parsed() -> Iterator[list[str]]:
        try:
            yield from rows
        except csv.Error as e:
            if "field larger than field limit" in str(e):
                why = (f"a cell over {max_cell:,} characters (data.max_row_bytes, counted in characters here); raise "
                       "it, or split the cell")  # fmt: skip
            elif "new-line character seen in unquoted field" in str(e):
                why = "a line ends in a lone CR (old Mac line endings); save the file with LF or CR LF line endings"
            else:
                why = f"not readable as CSV ({e})"
            raise UserError(f"{path}:{line_no[0]}: {why}") from None

    reader = parsed()
    header = next(reader, None)
    if header is None:
        return
    columns = Header(path, 1, header)
    if len(header) == 1 and (sep := next((c for c in (";", "\t") if c in header[0]), None)):
        raise UserError(f"{path}:1: header: one column {header[0]!r}, its names split by {sep!r}: weitiao reads "
                        "comma-separated CSV; save it with commas (Excel: 'CSV UTF-8 (comma delimited)')")  # fmt: skip
    start = line_no[0] + 1
    for values in reader:
        values = [cell_text(v) for v in values]
        if values:
            if len(values) != len(header):
                yield start, RowError("row", f"{len(values)} columns, the header has {len(header)}")
            else:
                yield start, columns.row(values)
        start = line_no[0] + 1
    columns.done(notes)


def _cell(value: Any) -> str:
    """An Excel cell's value as text: 42 not 42.0, dates in ISO form (a midnight as the date alone), empty as "",
    CR LF as LF (`cell_text`). The value, not its display format: a cell shown as 25% reads 0.25."""
    import datetime as dt

    if value is None:
        return ""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, dt.datetime):
        return value.date().isoformat() if value.time() == dt.time() else value.isoformat(sep=" ")
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()
    return cell_text(str(value))


def _has_values(sheet: Any, rows: int = 100) -> bool:
    """Whether a sheet has a filled cell in its first `rows` rows (a data sheet's header is there)."""
    return any(v is not None for row in sheet.iter_rows(max_row=rows, values_only=True) for v in row)


def _xlsx(path: Path, notes: list[str] | None = None) -> Iterator[tuple[int, Any]]:
    """Rows of an Excel workbook's one sheet with a header row, numbered by sheet row (as Excel shows them).

    A workbook with several non-empty sheets is refused (which one is the data is not guessed), and so is a formula
    cell without a saved value (a file written by a script and never opened in Excel reads as empty there).
    """
    try:
        import openpyxl
    except ImportError:
        raise UserError(f"{path}: reading .xlsx needs openpyxl: pip install openpyxl (or 'weitiao[xlsx]')") from None
    from zipfile import BadZipFile

    try:
        values = openpyxl.load_workbook(path, read_only=True, data_only=True)
        formulas = openpyxl.load_workbook(path, read_only=True, data_only=False)
    except (BadZipFile, KeyError, OSError, ValueError) as e:
        raise UserError(f"{path}: not a readable .xlsx workbook ({str(e).splitlines()[0] if str(e) else e})") from None
    try:
        sheets = [ws for ws in values.worksheets if _has_values(ws)]
        if len(sheets) > 1:
            names = ", ".join(ws.title for ws in sheets)
            raise UserError(f"{path}: {len(sheets)} sheets hold data ({names}); keep the data in one sheet, or save "
                            "each sheet as its own .xlsx or .csv")  # fmt: skip
        if not sheets:
            return
        name = sheets[0].title
        rows = zip(sheets[0].iter_rows(values_only=True), formulas[name].iter_rows(values_only=True))
        header: Header | None = None
        for n, (cells, raw) in enumerate(rows, 1):
            text = [_cell(v) for v in cells]
            for col, (v, f) in enumerate(zip(cells, raw)):
                if v is None and isinstance(f, str) and f.startswith("="):
                    at = f"{openpyxl.utils.get_column_letter(col + 1)}{n}"
                    raise UserError(f"{path}: sheet {name!r} cell {at}: formula {f} has no saved value (the file was "
                                    "not saved by a spreadsheet app); open and save it in Excel or WPS, or paste "
                                    "values")  # fmt: skip
            if header is None:
                while text and not text[-1].strip():  # the sheet's width may pass the last named column
                    text.pop()
                if text:
                    header = Header(path, n, text)
                continue
            if not any(t.strip() for t in text):
                continue  # an empty row, as a blank CSV line
            width = len(header.cells)  # a filled cell right of the last name: a column without one, as in a CSV
            if (at := next((i for i in range(width, len(text)) if text[i].strip()), None)) is not None:
                yield n, header.nameless(at, text[at])
            else:
                yield n, header.row(text[:width] + [""] * (width - len(text)))
        if header is not None:
            header.done(notes)
    finally:
        values.close()
        formulas.close()


def _absent_nulls(value: Any) -> Any:
    """`value` without the null fields of its nested structs. An Arrow struct has every field any row gave it, null
    where a row had none: one row's tool schema gained `"zone": null` from another row's tool, rendered into the
    prompt, and a call's arguments a null argument it never had. In a struct, null is absence."""
    if isinstance(value, dict):
        return {k: _absent_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list) and value and isinstance(value[0], (dict, list)):  # Arrow lists hold one type
        return [_absent_nulls(v) for v in value]
    return value


def _batches(path: Path, kind: str) -> Iterator[tuple[int, Any]]:
    """Rows of a Parquet or Arrow file, one record batch decoded at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if kind == "parquet":
            batches = pq.ParquetFile(path).iter_batches(batch_size=BATCH_ROWS)
        else:  # `datasets` writes the Arrow IPC stream format; other tools the file format
            try:
                batches = iter(pa.ipc.open_stream(pa.memory_map(str(path))))
            except pa.ArrowInvalid:
                reader = pa.ipc.open_file(pa.memory_map(str(path)))
                batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
        n = 0
        for batch in batches:
            for row in batch.to_pylist():
                n += 1
                yield n, {k: _absent_nulls(v) if isinstance(v, (dict, list)) else v for k, v in row.items()}
    except (pa.ArrowException, OSError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        name = "Parquet" if kind == "parquet" else "Arrow"
        raise UserError(f"{path}: not a readable {name} file ({msg})") from None


def confined(path: Path) -> None:
    """Refuse a file outside the folders READ_ROOTS names, when set (`weitiao ui` sets it for the runs it starts: its
    roots): checked as the run opens the file, so a file, link or dataset_info.json swapped after the console checked
    the run's config is refused too."""
    allowed = [Path(r) for r in os.environ.get(READ_ROOTS, "").split(os.pathsep) if r]
    real = Path(os.path.realpath(path))
    if allowed and not any(real == r or r in real.parents for r in allowed):
        shown = f"{path}" if real == Path(path) else f"{path} (→ {real})"  # a link, or ../ in a file_name
        raise UserError(f"{shown}: outside the allowed folders ({', '.join(map(str, allowed))})")


def confined_tree(path: Path) -> None:
    """`confined` for a model, adapter, run folder or reward file a run's config names, and for every file and folder
    under a folder (a link among them may lead out), as the run opens it: the console checked the path itself when it
    made the run, and a folder or file swapped for a link since was read. Nothing to walk unless READ_ROOTS is set."""
    if not os.environ.get(READ_ROOTS):
        return
    confined(path)
    for top, dirs, files in os.walk(path) if path.is_dir() else ():  # links are listed, not followed: checked here
        for name in (*dirs, *files):
            confined(Path(top) / name)


def iter_records(
    path: Path, max_row_bytes: int | None = MAX_ROW_BYTES, notes: list[str] | None = None
) -> Iterator[tuple[int, Any]]:
    """Yield (line or row number, record) from one data file (`confined`); unreadable rows come as RowError. What was
    read but left out (a CSV/xlsx column without a name, empty in every row) is said in `notes`."""
    path = Path(path)
    confined(path)
    if not path.exists():
        raise UserError(f"{path}: file not found")
    if path.is_dir():
        raise UserError(f"{path}: is a folder; expected a data file (.jsonl, .json, .parquet, .arrow, .csv or .xlsx)")
    suffix = data_suffix(path)
    compressed = path.suffix.lower() in COMPRESSED
    if compressed and suffix not in STREAMED:
        raise UserError(f"{path}: only JSONL, JSON and CSV are read compressed (.gz, .zst); decompress it first")
    if suffix in JSONL:
        yield from _jsonl(path, max_row_bytes)
    elif suffix == ".json":
        yield from _json_rows(path)
    elif suffix in (".parquet", ".arrow"):
        yield from _batches(path, suffix[1:])
    elif suffix == ".csv":
        yield from csv_rows(path, (lambda: _open_stream(path)) if compressed else None, max_row_bytes, notes)
    elif suffix == ".xlsx":
        yield from _xlsx(path, notes)
    else:
        kind = f"unsupported file type {suffix!r}" if suffix else "no file-name ending to tell its type by"
        raise UserError(f"{path}: {kind}; the ending names the format: {READABLE} (a pipe: save it to such a file)")
