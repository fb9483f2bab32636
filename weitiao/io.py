"""File I/O shared by every command.

Writes are atomic: a temp file beside the target, then os.replace; a full disk is one line naming the
target. The new file gets the mode a plain open() would give (0o666 less the umask), or keeps the mode
of the file it replaces: mkstemp's private 0600 would hide an export from a server running as another
user. Reads decode UTF-8 strictly (a leading BOM is dropped: Windows editors write one; in a line-by-line read also one
at a later line's start, where such files were joined; a GB18030/GBK or
Windows-1252 file is refused naming it, with the iconv line that converts it, `not_utf8`) and report bad bytes,
folders given as files and over-deep JSON as `file:line: problem`.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import stat
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, BinaryIO

from weitiao.errors import UserError, where

BOM = b"\xef\xbb\xbf"
SKIP_CHUNK = 1 << 20  # bytes read at a time while skipping an over-long line


def write_error(path: str | Path, e: OSError) -> UserError:
    """A failed write as one line: disk full, read-only or no permission, naming the target."""
    if e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return UserError(f"{path}: disk full while writing ({e.strerror}); free space or write elsewhere")
    return UserError(f"{path}: cannot write ({e.strerror or e})")


def read_error(path: str | Path, e: OSError) -> UserError:
    """A failed open/read as one line naming the file."""
    if isinstance(e, IsADirectoryError) or Path(path).is_dir():
        return UserError(f"{path}: is a folder; expected a file")
    if isinstance(e, FileNotFoundError):
        return UserError(f"{path}: file not found")
    return UserError(f"{path}: cannot read ({e.strerror or e})")


CJK = re.compile(r"[\u3000-\u303f\u3400-\u9fff\uff00-\uffef]")  # Han, CJK punctuation, full-width forms
HAN = re.compile(r"[\u3400-\u9fff]")
LATIN_MARKS = set("‘’‚“”„–—…•€£¥§©®°«»·™")  # cp1252 punctuation Western text holds beside accented letters


def gb18030_text(raw: bytes) -> bool:
    """Whether `raw` (bytes that are not UTF-8) reads whole as GB18030/GBK text holding Chinese, what Excel and Notepad
    on Chinese Windows save: its Han characters mostly GB2312's (both bytes ≥ 0xA1), where Western text misread as GBK
    (an accented letter and the ASCII letter after it: 'Müller' → 'M黮ler') makes rare GBK-extension characters."""
    try:
        text = raw.decode("gb18030")
    except UnicodeDecodeError:
        return False
    if "\0" in text:  # no text file holds NUL: UTF-16, or binary
        return False
    han = [c.encode("gb18030") for c in HAN.findall(text)]
    common = sum(1 for c in han if c[0] >= 0xB0 and c[1] >= 0xA1)
    return bool(CJK.search(text)) and (not han or common >= len(han) / 2)


def cp1252_text(raw: bytes) -> bool:
    """Whether `raw` reads whole as Windows-1252 (Latin-1) Western text: its non-ASCII characters letters or common
    punctuation, never three in a row (GBK's Chinese read so is runs of 'ÄãºÃ')."""
    try:
        text = raw.decode("cp1252")
    except UnicodeDecodeError:
        return False
    if "\0" in text or re.search(r"[^\x00-\x7f]{3}", text):
        return False
    return all(c.isalpha() or c in LATIN_MARKS for c in text if not c.isascii())


ENCODINGS = {"utf-16": "UTF-16 (its byte-order mark says so; Notepad's 'Unicode' and Excel's 'Unicode Text' save it)",
             "gb18030": "GB18030/GBK (as Excel and Notepad on Chinese Windows save)",
             "cp1252": "Windows-1252/Latin-1 (as Western Windows and older Excel save)"}  # fmt: skip


def to_utf8_command(path: str | Path, encoding: str = "gb18030") -> str:
    """The shell line that writes a file's UTF-8 copy beside it from `encoding` (through its compressor for
    .gz/.zst)."""
    import shlex

    p = Path(path)
    packer = {".gz": "gzip", ".zst": "zstd"}.get(p.suffix.lower())
    inner = p.with_suffix("") if packer else p
    out = p.with_name(f"{inner.stem}.utf8{inner.suffix}{p.suffix if packer else ''}")
    src, dst = shlex.quote(str(p)), shlex.quote(str(out))
    if packer:
        return f"{packer} -dc {src} | iconv -f {encoding} -t utf-8 | {packer} > {dst}"
    return f"iconv -f {encoding} -t utf-8 {src} > {dst}"


class NotUTF8(UserError):
    """A file that is not UTF-8 (`not_utf8`'s line)."""


def not_utf8(
    path: str | Path, line: int | None, col: int, byte: int, text: bytes, utf8_before: bool = False
) -> NotUTF8:
    """The one refusal of a file that is not UTF-8 (every reader's: data, bad cases, documents, behavior logs), at
    `line`, `col` (the bad `byte`), `text` the bytes of that line. The line's encoding is named, with the command that
    converts the file, when a UTF-16 byte-order mark opens the file or exactly one of GB18030/GBK and Windows-1252
    reads the line whole as plausible text; it is
    never decoded by a guess, which would read another encoding's bytes as wrong text. `utf8_before`: earlier lines
    held UTF-8 text beyond ASCII, so the file mixes encodings and converting it whole would garble them."""
    at = f"{where(path, line)}: not valid UTF-8 (byte 0x{byte:02x} at column {col})"
    if utf8_before:
        return NotUTF8(f"{at}, though the lines before it are UTF-8 text: the file mixes encodings (converting it "
                       "whole would garble those); save the lines from here as UTF-8")  # fmt: skip
    fits = [enc for enc, reads in (("gb18030", gb18030_text), ("cp1252", cp1252_text)) if reads(text)]
    if line in (None, 1) and text.startswith((b"\xff\xfe", b"\xfe\xff")):  # UTF-16's byte-order mark
        fits = ["utf-16"]
    if len(fits) == 1:
        return NotUTF8(f"{where(path, line)}: not UTF-8 but {ENCODINGS[fits[0]]}; weitiao reads UTF-8: convert it "
                       f"with `{to_utf8_command(path, fits[0])}`")  # fmt: skip
    which = " (it reads as GB18030/GBK text and as Windows-1252 text: name the one it was saved in)" if fits else ""
    return NotUTF8(f"{at}; save the file as UTF-8, e.g. `{to_utf8_command(path, 'ENCODING')}`{which}")


def bad_utf8(path: str | Path, raw: bytes, e: UnicodeDecodeError, line: int, utf8_before: bool = False) -> UserError:
    """`not_utf8` for bytes `raw` (starting at `line`) that failed to decode with `e`; `utf8_before`: lines before
    `raw` held non-ASCII UTF-8 (lines of `raw` before the bad one are looked at here)."""
    start = raw.rfind(b"\n", 0, e.start) + 1
    end = raw.find(b"\n", e.start)
    line += raw.count(b"\n", 0, start)
    col = len(raw[start : e.start].decode("utf-8", "replace")) + 1
    mixed = utf8_before or not raw[:start].isascii()
    return not_utf8(path, line, col, raw[e.start], raw[start : end if end >= 0 else len(raw)], mixed)


def utf8_problem(path: str | Path) -> UserError | None:
    """The refusal for the first line of a local (.gz: decompressed) file that is not UTF-8, None when all are: what
    an engine that read it (DuckDB, Spark) said is made the same line as every other reader's."""
    import gzip

    opener = (lambda: gzip.open(path, "rb")) if str(path).lower().endswith(".gz") else None
    try:
        for _ in iter_lines(path, opener=opener):
            pass
    except NotUTF8 as e:
        return e
    except (UserError, OSError, EOFError):  # not this check's to say: the engine's own reading reports it
        return None
    return None


def read_bytes(path: str | Path) -> bytes:
    """The file's bytes; a missing file or a folder is a UserError naming it."""
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise read_error(path, e) from None


def read_text(path: str | Path) -> str:
    """A whole UTF-8 text file (leading BOM dropped); bad bytes raise UserError `file:line`."""
    raw = read_bytes(path)
    raw = raw[len(BOM) :] if raw.startswith(BOM) else raw
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise bad_utf8(path, raw, e, 1) from None


def iter_lines(
    path: str | Path, max_bytes: int | None = None, opener: Callable[[], BinaryIO] | None = None
) -> Iterator[tuple[int, str | None, int]]:
    """Stream (line number, text, byte size) over a UTF-8 text file, one line in memory at a time.

    A line longer than `max_bytes` is skipped unread in chunks and yields text None with its size,
    so one huge row costs no memory; the caller reports it. Bad bytes raise UserError `file:line`.
    `opener` returns a binary stream to read instead of the file (a decompressor over it).
    """
    try:
        f = opener() if opener else open(path, "rb")  # noqa: SIM115 - closed below; binary: a huge line is never decoded
    except OSError as e:
        raise read_error(path, e) from None
    with f:
        n = 0
        utf8_before = False  # a line before held non-ASCII UTF-8: a bad line then is a file of mixed encodings
        while True:
            try:
                raw = f.readline(max_bytes + 2) if max_bytes else f.readline()
            except OSError as e:
                raise read_error(path, e) from None
            if not raw:
                return
            n += 1
            if raw.startswith(BOM):  # the first line's (Windows editors), a later line's when such files were joined
                raw = raw[len(BOM) :]
            size = len(raw.rstrip(b"\r\n"))
            if max_bytes and size > max_bytes:
                while not raw.endswith(b"\n"):
                    raw = f.readline(SKIP_CHUNK)
                    if not raw:
                        break
                    size += len(raw.rstrip(b"\r\n"))
                yield n, None, size
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise bad_utf8(path, raw, e, n, utf8_before) from None
            utf8_before = utf8_before or not raw.isascii()
            yield n, text, size


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    obj = dict(pairs)
    if len(obj) < len(pairs):  # json.loads keeps the last value of a repeated key, silently
        seen: set[str] = set()
        key = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise ValueError(f"key {key!r} appears twice in one object")
    return obj


_DECODER = json.JSONDecoder(object_pairs_hook=_unique_keys)  # one decoder: json.loads with a hook builds one a call


def loads(text: str) -> Any:
    """json.loads that refuses an object with a repeated key and turns a nesting too deep for Python into a
    ValueError instead of a RecursionError."""
    try:
        return _DECODER.decode(text)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def read_json(path: str | Path) -> Any:
    """A whole JSON file; bad UTF-8, bad JSON or over-deep nesting raise UserError `file:line`."""
    text = read_text(path)
    try:
        return loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{where(path, e.lineno, 'json')}: not valid JSON ({e.msg} at column {e.colno})") from None
    except ValueError as e:
        raise UserError(f"{where(path, None, 'json')}: not valid JSON ({e})") from None


_SPACE = re.compile(r"[ \t\n\r]*")


def _skip_space(text: str, i: int) -> int:
    return _SPACE.match(text, i).end()  # type: ignore[union-attr]  # [ \t\n\r]* always matches


def read_json_list(path: str | Path) -> list[tuple[int, Any]]:
    """A JSON file holding one list, as (line where each item starts, item), so a bad item can be named
    `file:line` (FastChat writes its battles as one indented list); bad JSON raises UserError `file:line`."""
    text = read_text(path)
    pos, line, at = _skip_space(text, 0), 1, 0

    def line_of(i: int) -> int:
        nonlocal line, at
        line, at = line + text.count("\n", at, i), i
        return line

    def bad(i: int, msg: str) -> UserError:
        return UserError(f"{where(path, line_of(i), 'json')}: not valid JSON ({msg})")

    if text[pos : pos + 1] != "[":
        raise bad(pos, "expected a list [...]")
    items: list[tuple[int, Any]] = []
    pos = _skip_space(text, pos + 1)
    while text[pos : pos + 1] != "]" or items:
        try:
            value, end = _DECODER.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise UserError(f"{where(path, e.lineno, 'json')}: not valid JSON ({e.msg} at column {e.colno})") from None
        except RecursionError:
            raise bad(pos, "nested too deeply") from None
        items.append((line_of(pos), value))
        pos = _skip_space(text, end)
        if text[pos : pos + 1] == "]":
            break
        if text[pos : pos + 1] != ",":
            raise bad(pos, "expected ',' or ']' after an item")
        pos = _skip_space(text, pos + 1)
    if text[_skip_space(text, pos + 1) :]:
        raise bad(pos + 1, "extra data after the list")
    return items


def read_jsonl(path: str | Path, max_bytes: int | None = None) -> Iterator[tuple[int, Any]]:
    """Stream (line number, value) from a JSONL file; the first bad line raises UserError `file:line`."""
    for n, line, size in iter_lines(path, max_bytes):
        if line is None:
            raise UserError(f"{where(path, n)}: line of {size:,} bytes is over the {max_bytes:,}-byte limit")
        if not line.strip():
            continue
        try:
            yield n, loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{where(path, n, 'json')}: not valid JSON ({e.msg} at column {e.colno})") from None
        except ValueError as e:
            raise UserError(f"{where(path, n, 'json')}: not valid JSON ({e})") from None


_UMASK_LOCK = threading.Lock()


def umask() -> int:
    """The process umask, read without changing it where Linux shows it (/proc), else set back at once."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o077)  # a file created by another thread in between is private, never too open
        os.umask(mask)
    return mask


def file_mode(path: str | Path) -> int:
    """The mode for a file written at `path`: that of the file it replaces, else what open() would give."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return 0o666 & ~umask()


def open_modes(folder: str | Path) -> None:
    """Give every regular file under `folder` (one weitiao just wrote) the mode open() would: libraries that
    write through a private temp file (safetensors) leave 0600, which a server running as another user cannot
    read."""
    mode = 0o666 & ~umask()
    for f in Path(folder).rglob("*"):
        if f.is_file() and not f.is_symlink():
            f.chmod(mode)


def publish_dir(dest: str | Path, fill: Callable[[Path], Any]) -> Any:
    """`fill(tmp)` writes a folder's files into a fresh temp dir beside `dest` (its result is returned); complete, the
    dir is renamed into place, a previous `dest` (ours: an earlier export, a run's `final/`) moved aside until then
    and removed after. A failure at any point leaves `dest` as it was and no temp dir behind; one writing the folder
    (no permission, read-only, disk full) is one line naming `dest`.

    A `dest` that is a mount point (a Docker volume) cannot be renamed: the temp dir is made inside it and its
    entries moved in (`_move_in`)."""
    import shutil

    dest = Path(dest)
    in_place = dest.is_dir() and not dest.is_symlink() and os.path.ismount(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=dest if in_place else dest.parent, prefix=f".{dest.name}.", suffix=".tmp"))
    except OSError as e:
        raise write_error(dest, e) from None
    tmp.chmod(0o777 & ~umask())  # mkdtemp makes it private; the folder gets a normal new dir's mode
    old = None
    try:
        result = fill(tmp)
        open_modes(tmp)  # safetensors writes 0600; a server running as another user must read the folder
        if in_place:
            _move_in(tmp, dest)
        else:
            if dest.exists():
                old = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".old"))
                dest.rename(old / dest.name)
            tmp.rename(dest)
    except BaseException as e:
        if old is not None:
            if not dest.exists() and (old / dest.name).exists():
                (old / dest.name).rename(dest)
            with suppress(OSError):
                old.rmdir()  # empty unless dest could not be put back: then it holds it
        shutil.rmtree(tmp, ignore_errors=True)
        failed = _write_failure(e, tmp)
        if failed is not None:
            raise write_error(dest, failed) from None
        raise
    if old is not None:
        shutil.rmtree(old)  # the previous folder, moved aside once the new one was complete
    return result


def _move_in(tmp: Path, dest: Path) -> None:
    """Replace `dest`'s entries (but `tmp`, made inside it) with `tmp`'s; on a failure, move everything back."""
    import shutil

    old = Path(tempfile.mkdtemp(dir=dest, prefix=f".{dest.name}.", suffix=".old"))
    before = [p for p in dest.iterdir() if p not in (tmp, old)]
    new = sorted(tmp.iterdir(), key=lambda p: p.name.startswith("."))  # dot files (an export's marker) last
    moved: list[tuple[Path, Path]] = []
    try:
        for src, into in [*((p, old) for p in before), *((p, dest) for p in new)]:
            src.rename(into / src.name)
            moved.append((src, into / src.name))
    except BaseException:
        for src, to in reversed(moved):
            to.rename(src)
        old.rmdir()
        raise
    tmp.rmdir()
    shutil.rmtree(old)


_DISK_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


def _write_failure(e: BaseException, tmp: Path) -> OSError | None:
    """The OSError for `e` when it is a failed write into `tmp` (a full disk, however the library said it:
    safetensors' `os error 28`, shutil.copytree's list), else None: other errors stay as raised."""
    if isinstance(e, OSError) and e.errno is not None:
        if e.errno in _DISK_FULL or (e.filename is not None and Path(e.filename).is_relative_to(tmp)):
            return e
        return None
    full = re.search(rf"(?:Errno|os error) ({'|'.join(str(n) for n in _DISK_FULL)})\b", str(e))
    return OSError(int(full[1]), os.strerror(int(full[1]))) if full else None


@contextmanager
def atomic_writer(path: str | Path) -> Iterator[Callable[[str], None]]:
    """Yield write(text) into a temp file beside `path`; on success it replaces `path`, on error it is removed.

    Writes go straight to os.write (no buffer), so a full disk surfaces at the write that hit it.
    """
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a folder; expected a file to write")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise write_error(path, e) from None
    try:
        os.fchmod(fd, file_mode(path))
    except OSError as e:
        os.close(fd)
        Path(tmp).unlink(missing_ok=True)
        raise write_error(path, e) from None

    def write(text: str) -> None:
        data = memoryview(text.encode("utf-8"))
        try:
            while data:  # os.write may write less than asked
                data = data[os.write(fd, data) :]
        except OSError as e:
            raise write_error(path, e) from None

    try:
        try:
            yield write
        finally:
            os.close(fd)
        try:
            os.replace(tmp, path)
        except OSError as e:
            raise write_error(path, e) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    remember(path)


# ----------------------------------------------------------------------------- what we wrote
# A ledger of the files weitiao wrote (size, mtime, inode at the time), so a command can tell its own earlier
# output, which it may replace, from a user's file or one edited since, which it never replaces.


def cache_home() -> Path:
    """$WEITIAO_CACHE, else $XDG_CACHE_HOME (or ~/.cache)/weitiao."""
    if base := os.environ.get("WEITIAO_CACHE"):
        return Path(base)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "weitiao"


def _ledger(path: Path) -> Path:
    return cache_home() / "written" / hashlib.sha1(str(path.resolve()).encode()).hexdigest()


def _stamp(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size} {st.st_mtime_ns} {st.st_ino}"


def remember(path: str | Path, source: str | Path | None = None) -> None:
    """Record `path` as written by weitiao, as it is now, and the input it was `source`d from when its name was
    derived from one (best effort: an unwritable cache only costs the record)."""
    path = Path(path)
    try:
        entry = _ledger(path)
        entry.parent.mkdir(parents=True, exist_ok=True)
        entry.write_text(_stamp(path) + (f"\n{Path(source).resolve()}" if source is not None else ""), "utf-8")
    except OSError:
        pass


def forget(path: str | Path) -> None:
    """Drop `path`'s record (a temp file of ours renamed or removed): the ledger names only files that stand."""
    try:
        _ledger(Path(path)).unlink(missing_ok=True)
    except OSError:
        pass


def _record(path: Path) -> list[str] | None:
    """The ledger's lines for `path` (stamp, then its source if recorded) when it is ours and unchanged, else None."""
    try:
        lines = _ledger(path).read_text(encoding="utf-8").split("\n")
        return lines if lines[0] == _stamp(path) else None
    except OSError:
        return None


def written_by_us(path: str | Path) -> bool:
    """True when `path` is a file weitiao wrote and nobody changed since."""
    return _record(Path(path)) is not None


def written_from(path: str | Path) -> Path | None:
    """The input `path` was written from (`remember(..., source)`), when it is ours, unchanged and one was recorded."""
    lines = _record(Path(path))
    return Path(lines[1]) if lines and len(lines) > 1 else None


def claim_outputs(
    outputs: Iterable[str | Path],
    inputs: Iterable[str | Path] = (),
    flag: str = "--out",
    sources: Iterable[str | Path] | None = None,
) -> None:
    """Refuse, before any work, to write an output that is one of the inputs or an existing file that weitiao
    did not write (or that was changed since), or one named twice (the second write would replace the first):
    nothing we did not create is overwritten. With `sources` (the input each output's default name was derived
    from), an output of ours written from another input is refused too: p.csv and p.jsonl.gz both default to
    p.<suffix>, and the second run would replace the first's result."""
    ins = {Path(i).resolve() for i in inputs}
    seen: set[Path] = set()
    outputs = list(map(Path, outputs))
    for out, src in zip(outputs, sources if sources is not None else [None] * len(outputs), strict=True):
        if src is not None and (was := written_from(out)) is not None and was != Path(src).resolve():
            raise UserError(
                f"{out}: holds what weitiao wrote from {was}; writing {src}'s result there would replace it; "
                f"choose another {flag}"
            )
        if out.resolve() in seen:
            raise UserError(f"{flag} {out}: named for two outputs; one would replace the other; choose two paths")
        seen.add(out.resolve())
        if out.resolve() in ins or (out.exists() and any(i.exists() and out.samefile(i) for i in ins)):
            raise UserError(f"{flag} {out}: is also an input; writing it would destroy the input; choose another path")
        if out.is_file() and not written_by_us(out):
            raise UserError(
                f"{out}: exists and was not written by weitiao (or was changed since); move it away or choose "
                f"another {flag}"
            )


# Chinese model names, prompts and labels: fonts with CJK glyphs that matplotlib falls back to after its default (the
# Makefile installs the first one; without any, CJK text draws as boxes, with matplotlib's warning)
CJK_FONTS = ("WenQuanYi Micro Hei", "Noto Sans CJK SC", "Noto Sans SC", "Source Han Sans SC", "SimHei", "PingFang SC")


def pyplot() -> Any:
    """matplotlib.pyplot for files (Agg backend), with the installed CJK_FONTS after the default sans-serif font."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import font_manager

    have = {f.name for f in font_manager.fontManager.ttflist}
    if fallback := [f for f in CJK_FONTS if f in have]:  # a family list: each glyph from the first font that has it
        matplotlib.rcParams["font.family"] = [*matplotlib.rcParams["font.sans-serif"][:1], *fallback]
    return plt


def save_figure(fig: Any, path: str | Path, dpi: int = 110) -> Path:
    """Save a matplotlib figure as PNG atomically (temp file, then rename) and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".png")
    except OSError as e:
        plt.close(fig)
        raise write_error(path, e) from None
    try:
        try:
            os.fchmod(fd, file_mode(path))
        finally:
            os.close(fd)
        fig.savefig(tmp, dpi=dpi, format="png")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        Path(tmp).unlink(missing_ok=True)
    remember(path)
    return path


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `text` to `path` so readers see the old file or the whole new one, never a part."""
    with atomic_writer(path) as write:
        write(text)


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> int:
    """Atomically write rows as UTF-8 JSONL; returns the row count."""
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return len(lines)


def append_jsonl(path: str | Path, row: dict[str, Any]) -> None:
    """Append one row to a log file (logs grow line by line; each line is written whole)."""
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    except OSError as e:
        raise write_error(path, e) from None
