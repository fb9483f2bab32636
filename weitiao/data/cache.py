"""Tokenized data on disk: Arrow shards, memory-mapped at train time, built once per key.

An entry holds every row of a list of data files encoded as `chat.encode` (a raw-text row:
`chat.encode_document`) encodes it (rows the truncation policy drops are kept as empty rows, so
accounting and eval splits still see them; a text document split into max_len pieces is one entry
row per piece, `piece` 1, 2, ... after the first), plus a 64-bit key of each row for eval splits and
overlap counts. Its folder name hashes everything the encoding depends on: the data files as the
reader expands them (path + content hash under 8 MB, else path + size + mtime_ns; with
`dataset_dir` also its dataset_info.json), the tokenizer (serialized backend, special tokens), the
template (jinja, end-of-turn), the EncodeOptions, the reading options (format, dataset_dir, ...),
the transformers/tokenizers versions and `VERSION`. A second run with the same key reads no data
file and makes no tokenizer call. Preference pairs (`preference.encode_pairs`) use the same entries,
keyed by the pairs' content instead of the files (they are split and filtered after loading).

Building streams: `formats.load_rows` parses rows one at a time into a sink, chunks of
`CHUNK_ROWS` are encoded (`tokenize.encode_batch`) by `num_proc` worker processes, and each chunk
is written as one shard, so memory stays flat in the data size. An entry is built in a temp folder
beside it and renamed into place under a file lock: concurrent runs and ranks build it once, the
others wait and read it. Nothing is deleted but our own temp folders (a failed build's, and under
the lock a killed build's `.tmp-KEY-PID` whose process is gone).
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import shutil
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from weitiao.data.chat import (
    IGNORE,
    Encoded,
    EncodeOptions,
    EncodeStats,
    row_check,
)
from weitiao.data.formats import (
    CONFIG_SKIP_HINT,
    Conversation,
    Document,
    LoadResult,
    PreferencePair,
    data_files,
    load_rows,
)
from weitiao.data.prep import conversation_key
from weitiao.data.templates import ChatTemplate
from weitiao.data.tools import uses_tools
from weitiao.errors import UserError
from weitiao.io import atomic_write_text, cache_home, read_json

VERSION = 12  # 2: raw-text rows, `piece` column, notes; 3: rows re-checked (misspelled and unimplemented keys);
# 4: LLaMA-Factory num_samples drawn at random; 5: tool rows' weight 0 read (an entry before it trained those turns),
# .json rows named by the line they start on, Parquet/Arrow struct nulls read as absent; 6: `tools` on Alpaca and
# conversational prompt/completion rows rendered (an entry before it trained those rows without them), a message
# holding a special token's text refused, named by the tokenizer or only special in tokenizer.json (an entry before it
# trained a fake turn); 7: Dolly rows (context, response) read as Alpaca (an entry before it trained an Alpaca row's
# `context` away), role developer read as system, a message's speaker `name` refused, a row holding special-token text
# set aside under skip_invalid; 8: meta `tool_rows` (the untrained-rows check probes the template's tool tokens);
# 9: a preference pair whose replies are the same tokens once cut_response cut them dropped (an entry before it kept it)
# 10: a preference pair whose replies render to the same tokens refused (the template trimmed what told them apart)
# 11: OpenAI text content parts joined by a newline, as `weitiao serve` and vLLM join them (an entry before it joined
# them with nothing: a model trained on it was served other prompts)
# 12: train_eot false masks the end-of-turn under train_on_prompt too (an entry before it trained it there)
CHUNK_ROWS = 4096  # rows per worker task and per shard
SMALL_FILE = 8 << 20  # data files under this size are keyed by content, larger ones by size + mtime
TRUNCATED = ("", "cut", "history")


def default_cache_dir() -> Path:
    """$WEITIAO_CACHE/tokenized, else $XDG_CACHE_HOME (or ~/.cache)/weitiao/tokenized."""
    return cache_home() / "tokenized"


def default_num_proc() -> int:
    return max(1, min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1, 8))


# ----------------------------------------------------------------------------- the key


def _file_identity(path: Path) -> list:
    try:
        st = path.stat()
        if st.st_size >= SMALL_FILE:
            return [str(path.resolve()), st.st_size, st.st_mtime_ns]
        return [str(path.resolve()), hashlib.sha256(path.read_bytes()).hexdigest()]
    except OSError:
        return [str(path), None]  # reading it reports the problem, with the reader's own message


def _tokenizer_identity(tokenizer: Any) -> str:
    h = hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode())
    h.update(repr((type(tokenizer).__name__, sorted(tokenizer.special_tokens_map.items(), key=str))).encode())
    h.update(repr(getattr(tokenizer, "split_special_tokens", False)).encode())
    return h.hexdigest()


def cache_key(
    paths: list[str], read: dict, tokenizer: Any, template: ChatTemplate, opts: EncodeOptions
) -> tuple[str, dict]:
    """(entry name, the parts it hashes): every input the encoded rows depend on."""
    parts = {
        "files": [_file_identity(f) for f in data_files(paths, read.get("dataset_dir"))],
        "paths": list(paths),
        "read": read,
        "options": asdict(opts),
    }
    return keyed(parts, tokenizer, template)


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def keyed(parts: dict, tokenizer: Any, template: ChatTemplate) -> tuple[str, dict]:
    """(entry name, parts): `parts` plus the tokenizer, template, library versions and VERSION, hashed."""
    import tokenizers
    import transformers

    parts = {
        "version": VERSION,
        **parts,
        "tokenizer": _tokenizer_identity(tokenizer),
        "template": [template.name, template.jinja, template.eot, template.appends_eos],
        "libs": [transformers.__version__, tokenizers.__version__, _version("tiktoken")],  # fastbpe's BPE too
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32], parts


# ----------------------------------------------------------------------------- writing shards


def row_key(row: Conversation | Document) -> int:
    """64-bit digest of `prep.conversation_key`: eval splits and overlap counts group rows by it."""
    return int.from_bytes(hashlib.blake2b(conversation_key(row).encode(), digest_size=8).digest(), "little")


def _list_array(lists: list[list[int]]) -> Any:
    import pyarrow as pa

    offsets = np.zeros(len(lists) + 1, dtype=np.int64)
    np.cumsum([len(x) for x in lists], out=offsets[1:])
    values = np.concatenate([np.asarray(x, dtype=np.int32) for x in lists]) if lists else np.zeros(0, np.int32)
    return pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(values))


def write_shard(path: Path, rows: list[Conversation | Document], results: list) -> None:
    """One Arrow IPC file (uncompressed, so it memory-maps): a row per example, a dropped row as an empty one.

    `results` are `tokenize.encode_batch`'s for `rows`; a document's pieces share its key and source.
    """
    from weitiao.data.tokenize import examples

    flat: list[tuple[str, int, int, Encoded | None]] = []  # (source, key, piece, example or None = dropped)
    for row, res in zip(rows, results):
        key = row_key(row)
        flat += [(row.source, key, k, e) for k, e in enumerate(examples(res) or [None])]
    write_examples(path, flat)


def write_examples(path: Path, flat: list[tuple[str, int, int, Encoded | None]]) -> None:
    """One Arrow IPC file of (source, key, piece, example or None = a dropped row) entries."""
    import pyarrow as pa

    encs = [e for _, _, _, e in flat]
    cols = {
        "input_ids": _list_array([e.input_ids if e else [] for e in encs]),
        "labels": _list_array([e.labels if e else [] for e in encs]),
        "dropped": pa.array([e is None for e in encs]),
        "truncated": pa.array([TRUNCATED.index(e.truncated) if e else 0 for e in encs], pa.int8()),
        "ends_with_eot": pa.array([bool(e and e.ends_with_eot) for e in encs]),
        "eot_end": pa.array([e.eot_end if e else -1 for e in encs], pa.int64()),
        "key": pa.array([k for _, k, _, _ in flat], pa.uint64()),
        "piece": pa.array([p for _, _, p, _ in flat], pa.int32()),
        "source": pa.array([src for src, _, _, _ in flat], pa.large_string()),
    }
    if any(e is not None and e.answer_labels is not None for e in encs):  # None: its labels are reply-only already
        answers = [[] if e is None else e.labels if e.answer_labels is None else e.answer_labels for e in encs]
        cols["answer_labels"] = _list_array(answers)
    batch = pa.record_batch(cols)
    with pa.OSFile(str(path), "wb") as f, pa.ipc.new_file(f, batch.schema) as w:
        w.write_batch(batch)


class _Encoder:
    """Encodes a chunk of rows and writes it as a shard; one per process (`Sink` takes any object with
    `check(row)` and `__call__(path, rows) -> rows written` that pickles)."""

    def __init__(self, tokenizer: Any, template: ChatTemplate, opts: EncodeOptions):
        self.tokenizer, self.template, self.opts = tokenizer, template, opts

    def check(self, row: Any) -> None:
        if isinstance(row, PreferencePair):
            raise UserError(f"{row.source}: chosen: preference row in SFT data; use `weitiao dpo`")

    def __call__(self, path: Path, rows: list[Conversation | Document]) -> int:
        from weitiao.data.tokenize import encode_batch

        write_shard(path, rows, encode_batch(rows, self.tokenizer, self.template, self.opts))
        return len(rows)


_WORKER: Any = None


def _worker_init(encoder: Any) -> None:
    global _WORKER
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one core per process: the processes are the parallelism
    _WORKER = encoder
    # The imports (torch, transformers) leave ~10^6 objects that every full collection would scan again
    # while chunks allocate millions of small ones: keep them out of the collector.
    gc.freeze()


def _worker_ready() -> int:
    """A task that only makes the pool spawn a worker (its initializer runs): no rows."""
    return 0


def _worker_encode(path: Path, rows: list) -> int:
    assert _WORKER is not None
    return _WORKER(path, rows)


class Ticker:
    """Rows encoded so far: a rich bar on a terminal, a plain line every 15 s otherwise."""

    def __init__(self, enabled: bool):
        self.enabled, self.done, self.t0, self.last, self.bar = enabled, 0, time.time(), time.time(), None
        if enabled and sys.stderr.isatty():
            from weitiao.progress import progress_bar

            self.bar = progress_bar()
            self.task = self.bar.add_task("tokenize", total=None, info="")
            self.bar.start()

    def add(self, n: int) -> None:
        self.done += n
        rate = self.done / max(time.time() - self.t0, 1e-9)
        if self.bar is not None:
            self.bar.update(self.task, completed=self.done, info=f"{rate:,.0f} rows/s")
        elif self.enabled and time.time() - self.last > 15:
            self.last = time.time()
            print(f"tokenize: {self.done:,} rows · {rate:,.0f} rows/s", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


class Sink:
    """The list `load_rows` appends to: rows go to the encoders in chunks instead of piling up."""

    def __init__(self, folder: Path, encoder: Any, num_proc: int, ticker: Ticker, big: bool = False):
        """`big`: the data is known to fill several chunks, so the workers start now (their imports overlap the
        reading of the first chunks) instead of at the second chunk."""
        self.folder, self.encoder, self.num_proc, self.ticker = folder, encoder, num_proc, ticker
        self.n, self.buf, self.shards = 0, [], []
        self.chats = 0  # rows rendered with the chat template (not raw-text documents)
        self.tool_rows = 0  # rows with tool specs, calls or results
        self.pool: ProcessPoolExecutor | None = None
        self.pending: deque[Future] = deque()
        self.held: list[tuple[Path, list]] = []  # chunks not yet sent (the first, until a second comes)
        if big and num_proc > 1:
            self._start_pool()
            self.pending.extend(self.pool.submit(_worker_ready) for _ in range(num_proc))  # one spawn a task

    def __len__(self) -> int:
        return self.n

    def append(self, row: Any) -> None:
        self.encoder.check(row)
        self.buf.append(row)
        self.n += 1
        self.chats += not isinstance(row, Document)
        self.tool_rows += isinstance(row, Conversation) and uses_tools(row)
        if len(self.buf) >= CHUNK_ROWS:
            self.flush()

    def flush(self, last: bool = False) -> None:
        """Send the buffered rows as one chunk (shard). With num_proc > 1 the first chunk waits for a second:
        only then is a worker pool worth starting, and both chunks go to it (none is encoded here alone)."""
        if self.buf:
            path = self.folder / f"rows-{len(self.shards):06d}.arrow"
            self.shards.append(path.name)
            self.held.append((path, self.buf))
            self.buf = []
        if self.num_proc > 1 and self.pool is None and len(self.shards) > 1:
            self._start_pool()
        if self.pool is None and not (self.num_proc <= 1 or last):
            return
        held, self.held = self.held, []
        for path, rows in held:
            if self.pool is None:
                self.ticker.add(self.encoder(path, rows))
            else:
                self.pending.append(self.pool.submit(_worker_encode, path, rows))
        while len(self.pending) > 2 * self.num_proc:  # bounded: rows in flight stay a few chunks
            self.ticker.add(self.pending.popleft().result())

    def _start_pool(self) -> None:
        ctx = get_context("spawn")  # no fork: torch and the tokenizer's own threads may be running
        init = (self.encoder,)
        self.pool = ProcessPoolExecutor(self.num_proc, mp_context=ctx, initializer=_worker_init, initargs=init)

    def finish(self) -> None:
        self.flush(last=True)
        while self.pending:
            self.ticker.add(self.pending.popleft().result())
        self.close()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None


def _build(
    folder: Path, paths: list[str], read: dict, tokenizer: Any, template: ChatTemplate, opts: EncodeOptions, **kw: Any
) -> dict:
    """Load and encode every row into shards under `folder`; returns the entry's meta."""
    t0 = time.time()
    ticker = Ticker(kw["progress"])
    big = sum(f.stat().st_size for f in data_files(paths, read.get("dataset_dir")) if f.is_file()) > SMALL_FILE
    sink = Sink(folder, _Encoder(tokenizer, template, opts), kw["num_proc"], ticker, big)
    try:
        check = row_check(tokenizer, template, opts.refuse_special)  # a bad row: skip_invalid sets it aside
        loaded = load_rows(
            paths, sink=sink, rejects_path=kw["rejects_path"], skip_hint=CONFIG_SKIP_HINT, row_check=check, **read
        )
        sink.finish()
    finally:
        sink.close()
        ticker.close()
    if loaded.rejects_path is not None:
        shutil.copyfile(loaded.rejects_path, folder / "rejects.jsonl")
    return {
        "rows": sink.n,
        "shards": sink.shards,
        "read": loaded.read,
        "rejected": loaded.rejected,
        "format": loaded.format,
        "chat_rows": sink.chats,  # 0: every row raw text (format text, string prompt/completion rows): no template
        "tool_rows": sink.tool_rows,
        "per_file": loaded.per_file,
        "notes": loaded.notes,
        "seconds": round(time.time() - t0, 3),
        "num_proc": kw["num_proc"] if sink.shards[1:] else 1,
    }


@contextmanager
def _lock(path: Path) -> Iterator[None]:
    """An exclusive lock on `path` (created, never deleted: deleting lock files races)."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): concurrent builders each build; the rename keeps one
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# ----------------------------------------------------------------------------- reading


class EncodedSet:
    """Every row of an entry (dropped ones too), memory-mapped, with the load accounting."""

    def __init__(self, folder: Path, meta: dict, mmap: bool = True):
        import pyarrow as pa

        self.folder, self.meta = folder, meta
        tables = []
        for name in meta["shards"]:
            path = str(folder / name)
            src = pa.memory_map(path) if mmap else pa.OSFile(path).read_buffer()  # mapped, or read into memory
            tables.append(pa.ipc.open_file(src).read_all())
        self._lists: list[dict[str, tuple[np.ndarray, np.ndarray]]] = []
        self._sources = []
        for t in tables:
            cols = {}
            for name in ("input_ids", "labels", "answer_labels"):
                if name in t.column_names:
                    arr = t.column(name).chunk(0)
                    cols[name] = (arr.offsets.to_numpy(), arr.values.to_numpy())
            self._lists.append(cols)
            self._sources.append(t.column("source").chunk(0))
        self.starts = np.cumsum([0] + [t.num_rows for t in tables])
        flat = {
            c: np.concatenate([t.column(c).to_numpy() for t in tables]) if tables else np.zeros(0)
            for c in ("dropped", "truncated", "ends_with_eot", "eot_end", "key", "piece")
        }
        self.dropped, self.truncated, self.ends = flat["dropped"].astype(bool), flat["truncated"], flat["ends_with_eot"]
        self.eot_end, self.keys, self.piece = flat["eot_end"], flat["key"].astype(np.uint64), flat["piece"]
        self.lengths = np.concatenate([np.diff(c["input_ids"][0]) for c in self._lists]) if tables else np.zeros(0)

    def __len__(self) -> int:
        return int(self.starts[-1])

    def load_result(self, rejects_path: Path) -> LoadResult:
        """What `load_rows` returned (rows left out), rejects written to `rejects_path`."""
        m = self.meta
        rejects = rejects_path if m["rejected"] else None
        return LoadResult([], m["format"], m["read"], m["rejected"], rejects, m["per_file"], list(m["notes"]))

    def source(self, i: int) -> str:
        s = int(np.searchsorted(self.starts, i, side="right")) - 1
        return self._sources[s][i - self.starts[s]].as_py()

    def encoded(self, i: int) -> Encoded:
        s = int(np.searchsorted(self.starts, i, side="right")) - 1
        j = i - int(self.starts[s])
        cols = self._lists[s]

        def take(name: str) -> list[int] | None:
            if name not in cols:
                return None
            off, val = cols[name]
            return val[off[j] : off[j + 1]].tolist()

        return Encoded(
            take("input_ids"),
            take("labels"),
            self._sources[s][j].as_py(),
            TRUNCATED[self.truncated[i]],
            bool(self.ends[i]),
            take("answer_labels"),
            int(self.eot_end[i]),
        )

    def targets(self) -> np.ndarray:
        """Trained tokens of every row, as `collate.n_targets` counts them (the first position never is one)."""
        out = []
        for cols in self._lists:
            off, val = cols["labels"]
            c = np.concatenate([[0], np.cumsum(val != IGNORE)])
            out.append(np.maximum(c[off[1:]] - c[np.minimum(off[:-1] + 1, off[1:])], 0))
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)

    def firsts(self, rows: np.ndarray) -> np.ndarray:
        """The rows among `rows` that start a loaded row (leaving out a document's later pieces)."""
        return rows[self.piece[rows] == 0]

    def with_pieces(self, firsts: np.ndarray) -> np.ndarray:
        """Each of `firsts` (rows that start a loaded row), followed by its document's later pieces."""
        firsts = np.asarray(firsts, dtype=np.int64)
        starts = np.flatnonzero(self.piece == 0)
        ends = np.append(starts[1:], len(self))
        n = ends[np.searchsorted(starts, firsts)] - firsts  # examples of each loaded row
        offset = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)
        return np.repeat(firsts, n) + offset

    def stats(self, rows: np.ndarray) -> EncodeStats:
        """`chat.encode_all`'s accounting for these rows (dropped ones and document pieces included)."""
        first = self.firsts(rows)
        dropped = self.dropped[first]
        kept = first[~dropped]
        cut = self.truncated[kept] == 1
        return EncodeStats(
            rows=len(first),
            kept=len(kept),
            dropped_too_long=int(dropped.sum()),
            cut=int(cut.sum()),
            history_trimmed=int((self.truncated[kept] == 2).sum()),
            lost_eot=int((cut & ~self.ends[kept].astype(bool)).sum()),
            doc_pieces=len(rows) - len(first),
            dropped_sources=[self.source(int(i)) for i in first[dropped]],
            dropped_rows=np.flatnonzero(dropped).tolist(),
        )

    def view(self, rows: np.ndarray) -> EncodedRows:
        """The kept rows among `rows`, in that order."""
        return EncodedRows(self, rows[~self.dropped[rows]])


class EncodedRows(Sequence):
    """A list of `Encoded` read from an `EncodedSet` on demand (rows: its row numbers, in order)."""

    def __init__(self, data: EncodedSet, rows: np.ndarray):
        self.data, self.rows = data, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return EncodedRows(self.data, self.rows[i])
        return self.data.encoded(int(self.rows[i]))

    def lengths(self) -> list[int]:
        return self.data.lengths[self.rows].tolist()


# ----------------------------------------------------------------------------- the entry point


def encoded_files(
    paths: list[str],
    read: dict,
    tokenizer: Any,
    template: ChatTemplate,
    opts: EncodeOptions,
    *,
    rejects_path: Path,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    num_proc: int = 0,
    progress: bool = True,
) -> EncodedSet:
    """Every row of `paths` encoded: from the cache entry when there is one, else built (and kept if use_cache).

    `read` holds `load_rows`' reading options (fmt, skip_invalid, max_row_bytes). On a cache hit the
    rejects of the build are copied to `rejects_path`, as a fresh load would write them.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise UserError("a fast tokenizer (tokenizer.json) is required for exact loss masking")
    build = {"rejects_path": rejects_path, "num_proc": num_proc or default_num_proc(), "progress": progress}
    args = (paths, read, tokenizer, template, opts)
    key, parts = cache_key(*args) if use_cache else ("", {})
    data = cached(key, parts, lambda folder: _build(folder, *args, **build), cache_dir, use_cache)
    if data.meta["hit"] and data.meta["rejected"]:
        rejects_path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(data.folder / "rejects.jsonl", rejects_path)
    return data


def cached(
    key: str, parts: dict, build: Callable[[Path], dict], cache_dir: str | Path | None, use_cache: bool = True
) -> EncodedSet:
    """The entry `key` of the cache: opened when it exists, else built by `build(folder) -> meta` (and kept if
    use_cache; else built in a temp folder, read into memory, and the folder removed)."""
    if not use_cache:
        import tempfile

        folder = Path(tempfile.mkdtemp(prefix="weitiao-tokenized-"))
        try:
            return _open(folder, build(folder), hit=False, mmap=False)  # in memory: the folder goes
        finally:
            shutil.rmtree(folder)
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    entry = root / key
    if not (entry / "meta.json").exists():
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(
                f"data.cache_dir {root}: cannot create ({e.strerror}); set it or data.cache=false"
            ) from None
        with _lock(root / f"{key}.lock"):
            if not (entry / "meta.json").exists():  # another run may have built it while we waited
                return _build_entry(entry, parts, build)
    return _open(entry, read_json(entry / "meta.json"), hit=True)


def _build_entry(entry: Path, parts: dict, build: Callable[[Path], dict]) -> EncodedSet:
    """Build into `.tmp-KEY-PID` beside the entry, then rename it into place."""
    if entry.exists():
        raise UserError(
            f"{entry}: a cache entry without meta.json (not ours to remove); delete it or set data.cache_dir"
        )
    for stale in entry.parent.glob(f".tmp-{entry.name}-*"):  # a killed build of this key; we hold its lock
        if not _alive(stale.name.rsplit("-", 1)[1]):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = entry.with_name(f".tmp-{entry.name}-{os.getpid()}")
    tmp.mkdir()
    try:
        meta = build(tmp)
        atomic_write_text(tmp / "meta.json", json.dumps({**meta, "key": parts}, ensure_ascii=False, indent=1))
        os.rename(tmp, entry)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _open(entry, meta, hit=False)


def _alive(pid: str) -> bool:
    """Whether process `pid` runs on this machine (unknown counts as alive: nothing is removed then)."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (ValueError, OSError):
        return True
    return True


def _open(folder: Path, meta: dict, hit: bool, mmap: bool = True) -> EncodedSet:
    data = EncodedSet(folder, meta, mmap)
    data.meta["hit"] = hit
    return data
