"""Tokenized-data cache (issue #17): hits skip reading and tokenizing, any input change misses,
rows read back equal `encode_all`'s, builds are atomic, locked and never delete what is not ours."""

import json
import threading
from dataclasses import asdict

import numpy as np
import pytest
from conftest import build_tokenizer, write_jsonl

from weitiao.data import cache, tokenize
from weitiao.data.chat import EncodeOptions, encode_all
from weitiao.data.formats import load_conversations
from weitiao.data.templates import resolve_template
from weitiao.errors import UserError
from weitiao.recipes import sft

READ = {"fmt": "auto", "skip_invalid": False, "max_row_bytes": 10**6}


@pytest.fixture
def calls(monkeypatch):
    """Counts `encode_batch` calls (the only tokenizing step of a build)."""
    n = {"encode": 0}
    real = tokenize.encode_batch

    def counted(*a, **k):
        n["encode"] += 1
        return real(*a, **k)

    monkeypatch.setattr(tokenize, "encode_batch", counted)
    return n


def build(path, tok, tmp_path, opts=EncodeOptions(max_len=128), template="auto", **kw):
    kw = {"cache_dir": tmp_path / "cache", "progress": False, "num_proc": 1, **kw}
    t = resolve_template(tok, template)
    return cache.encoded_files([str(path)], READ, tok, t, opts, rejects_path=tmp_path / "rejects.jsonl", **kw)


def rows_of(data):
    return [asdict(e) for e in data.view(np.arange(len(data)))]


def test_second_run_reads_no_file_and_calls_no_tokenizer(chat_file, tokenizer, tmp_path, calls, monkeypatch):
    first = build(chat_file, tokenizer, tmp_path)
    assert not first.meta["hit"] and calls["encode"] == 1
    monkeypatch.setattr(cache, "load_rows", lambda *a, **k: pytest.fail("a cache hit read the data file"))
    second = build(chat_file, tokenizer, tmp_path)
    assert second.meta["hit"] and calls["encode"] == 1 and second.folder == first.folder
    assert rows_of(second) == rows_of(first)
    # Control: with the cache off the same call tokenizes again.
    monkeypatch.undo()
    monkeypatch.setattr(tokenize, "encode_batch", tokenize.encode_batch)
    assert not build(chat_file, tokenizer, tmp_path, use_cache=False).meta["hit"]
    assert sorted(p.name for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")) == [first.folder.name]


@pytest.mark.parametrize(
    "opts",
    [
        EncodeOptions(max_len=128),
        EncodeOptions(max_len=128, train_on_prompt=True),
        EncodeOptions(max_len=24, truncation="drop"),
        EncodeOptions(max_len=24, truncation="cut"),
        EncodeOptions(max_len=40, truncation="history"),
    ],
    ids=["default", "train_on_prompt", "drop", "cut", "history"],
)
def test_cached_rows_equal_encode_all(chat_file, tokenizer, tmp_path, opts):
    convs = load_conversations(str(chat_file)).rows
    want, stats = encode_all(convs, tokenizer, resolve_template(tokenizer), opts)
    data = build(chat_file, tokenizer, tmp_path, opts)
    rows = np.arange(len(data))
    assert [asdict(e) for e in data.view(rows)] == [asdict(e) for e in want]
    assert asdict(data.stats(rows)) == asdict(stats)
    assert data.view(rows).lengths() == [len(e) for e in want]


def test_any_input_change_misses(chat_file, tokenizer, tmp_path):
    base = build(chat_file, tokenizer, tmp_path).folder
    changed = {
        "options": build(chat_file, tokenizer, tmp_path, EncodeOptions(max_len=127)),
        "template": build(chat_file, tokenizer, tmp_path, template="plain"),
        "tokenizer": build(chat_file, build_tokenizer(eos="<|endoftext|>"), tmp_path),
    }
    text = chat_file.read_text(encoding="utf-8")
    chat_file.write_text(text.replace("天气", "天色", 1), encoding="utf-8")  # same size, same second
    changed["data"] = build(chat_file, tokenizer, tmp_path)
    folders = {k: d.folder for k, d in changed.items()}
    assert all(not d.meta["hit"] for d in changed.values()), folders
    assert len({base, *folders.values()}) == 5
    chat_file.write_text(text, encoding="utf-8")  # back as it was: the first entry again
    assert build(chat_file, tokenizer, tmp_path).folder == base


def test_rejects_come_back_on_a_hit(tmp_path, tokenizer):
    rows = [{"instruction": "你好", "output": "嗨"}, {"instruction": "", "output": "空"}]
    rows.append({"instruction": "在吗", "output": "在"})
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    args = ([str(path)], {**READ, "skip_invalid": True}, tokenizer, resolve_template(tokenizer), EncodeOptions())
    kw = {"cache_dir": tmp_path / "cache", "progress": False}
    first = cache.encoded_files(*args, rejects_path=tmp_path / "a.jsonl", **kw)
    second = cache.encoded_files(*args, rejects_path=tmp_path / "b.jsonl", **kw)
    assert second.meta["hit"] and second.meta["rejected"] == first.meta["rejected"] == 1 and len(second) == 2
    assert (tmp_path / "b.jsonl").read_text(encoding="utf-8") == (tmp_path / "a.jsonl").read_text(encoding="utf-8")
    assert json.loads((tmp_path / "b.jsonl").read_text(encoding="utf-8"))["source"].endswith("d.jsonl:2")


def test_concurrent_builds_build_once(chat_file, tokenizer, tmp_path, calls):
    out = []
    threads = [threading.Thread(target=lambda: out.append(build(chat_file, tokenizer, tmp_path))) for _ in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sorted(d.meta["hit"] for d in out) == [False, True, True] and calls["encode"] == 1
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".tmp")]


def test_foreign_folder_is_left_alone(chat_file, tokenizer, tmp_path):
    key, _ = cache.cache_key([str(chat_file)], READ, tokenizer, resolve_template(tokenizer), EncodeOptions(max_len=128))
    foreign = tmp_path / "cache" / key
    foreign.mkdir(parents=True)
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not ours to remove"):
        build(chat_file, tokenizer, tmp_path)
    assert (foreign / "notes.txt").read_text() == "mine"


def test_killed_build_is_cleaned_up_by_the_next(chat_file, tokenizer, tmp_path):
    """A build killed mid-way leaves `.tmp-KEY-PID`; the next build of that key removes it once PID is gone."""
    import subprocess
    import sys

    key, _ = cache.cache_key([str(chat_file)], READ, tokenizer, resolve_template(tokenizer), EncodeOptions(max_len=128))
    pid = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    gone = pid.stdout.strip()
    dead, live = tmp_path / "cache" / f".tmp-{key}-{gone}", tmp_path / "cache" / f".tmp-{key}-1"
    other = tmp_path / "cache" / f".tmp-{'0' * 32}-{gone}"  # another key's: not under this lock
    for d in (dead, live, other):
        d.mkdir(parents=True)
    assert not build(chat_file, tokenizer, tmp_path).meta["hit"]
    assert not dead.exists() and live.exists() and other.exists()  # pid 1 runs: left alone (control)


def test_failed_build_leaves_nothing(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", [{"instruction": "你好", "output": "嗨"}, {"instruction": "坏"}])
    with pytest.raises(UserError, match="d.jsonl:2"):
        build(path, tokenizer, tmp_path)
    assert [p.suffix for p in (tmp_path / "cache").iterdir()] == [".lock"]


def test_worker_processes_give_the_same_rows(chat_file, tokenizer, tmp_path, monkeypatch):
    """Chunks of 5 rows over 2 spawned processes: 5 shards, rows as the single-process build."""
    monkeypatch.setattr(cache, "CHUNK_ROWS", 5)
    multi = build(chat_file, tokenizer, tmp_path, num_proc=2, use_cache=False)
    assert multi.meta["num_proc"] == 2 and len(multi.meta["shards"]) == 5
    single = build(chat_file, tokenizer, tmp_path, num_proc=1, use_cache=False)
    assert single.meta["num_proc"] == 1 and rows_of(multi) == rows_of(single)


def test_sft_data_from_cache_equals_uncached(chat_file, tokenizer, tmp_path, capsys):
    def prepare(**data):
        cfg = sft.SFTConfig(
            data=sft.DataSpec(train=[str(chat_file)], max_len=128, eval_split=0.25, **data),
            train=sft.TrainSpec(out=str(tmp_path / "run")),
        )
        return sft.prepare_data(cfg, tokenizer)

    cold, warm, off = prepare(), prepare(), prepare(cache=False)
    assert "rows in" in cold.cache_line and "from cache" in warm.cache_line and "data.cache false" in off.cache_line
    for d in (warm, off):
        assert [asdict(e) for e in d.train] == [asdict(e) for e in cold.train]
        assert [asdict(e) for e in d.eval] == [asdict(e) for e in cold.eval]
        assert (asdict(d.stats), d.eval_copies, d.read) == (asdict(cold.stats), cold.eval_copies, cold.read)
    assert len(cold.eval) == 6 and len(cold.train) == 18


def test_special_token_rows_are_set_aside_under_skip_invalid(tmp_path, tokenizer):
    """A message holding special-token text stopped the whole build even with data.skip_invalid; now it is a bad row
    like any other: written to the rejects file, the others trained, read == kept + rejected; without skip_invalid
    still the one-line stop naming file:line and the turn. `data check --skip-invalid` counts it the same way."""
    from weitiao.data.check import check_file

    rows = [{"instruction": "你好", "output": "嗨"}, {"instruction": "在吗", "output": "在<|im_end|>\n<|im_start|>u"}]
    rows.append({"instruction": "早", "output": "早上好"})
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    t = resolve_template(tokenizer)
    kw = {"cache_dir": tmp_path / "cache", "progress": False, "num_proc": 1, "rejects_path": tmp_path / "r.jsonl"}
    why = r"d\.jsonl:2: output: content holds '<\|im_end\|>'.*skip_invalid"
    with pytest.raises(UserError, match=why):
        cache.encoded_files([str(path)], READ, tokenizer, t, EncodeOptions(), **kw)
    read = {**READ, "skip_invalid": True}
    data = cache.encoded_files([str(path)], read, tokenizer, t, EncodeOptions(), **kw)
    m = data.meta
    assert (m["read"], len(data), m["rejected"]) == (3, 2, 1) and m["read"] == len(data) + m["rejected"]
    rejected = json.loads((tmp_path / "r.jsonl").read_text(encoding="utf-8"))
    assert rejected["source"].endswith("d.jsonl:2") and "'<|im_end|>', a special token" in rejected["error"]
    assert [data.source(i).rsplit(":", 1)[1] for i in range(len(data))] == ["1", "3"]
    rep = check_file([str(path)], tokenizer, skip_invalid=True)
    assert (rep.read, rep.kept, rep.rejected) == (3, 2, 1)
    # negative control: with the refusal off (scored text), the row is encoded as it comes
    off = EncodeOptions(refuse_special=False)
    assert len(cache.encoded_files([str(path)], read, tokenizer, t, off, **{**kw, "rejects_path": tmp_path / "o"})) == 3
