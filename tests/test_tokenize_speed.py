"""The parallel tokenizing path (#24) gives the per-row reference's tokens: padded and packed batches,
the chat template on a base model whose EOS is not the template's end-of-turn; no chunk is encoded
in the main process once workers run."""

import numpy as np
import pytest
import torch
from conftest import CHAT_ROWS, build_tokenizer, write_jsonl

from weitiao.data import cache
from weitiao.data.chat import EncodeOptions, encode
from weitiao.data.collate import collate, plan_epoch
from weitiao.data.formats import load_conversations
from weitiao.data.templates import resolve_template

READ = {"fmt": "auto", "skip_invalid": False, "max_row_bytes": 10**6}


@pytest.fixture(scope="module")
def base_tok():
    tok = build_tokenizer(eos="<|endoftext|>")  # ChatML ends a turn with <|im_end|>: a base model's EOS differs
    assert resolve_template(tok).eot == "<|im_end|>" != tok.eos_token
    return tok


@pytest.fixture
def rows_file(tmp_path):
    rows = [{**CHAT_ROWS[i % 4], "instruction": CHAT_ROWS[i % 4]["instruction"] + "好" * (i % 7)} for i in range(23)]
    return write_jsonl(tmp_path / "d.jsonl", rows)


def built(path, tok, tmp_path, num_proc, opts):
    return cache.encoded_files(
        [str(path)], READ, tok, resolve_template(tok), opts, rejects_path=tmp_path / "rejects.jsonl",
        cache_dir=tmp_path / f"cache{num_proc}", num_proc=num_proc, progress=False, use_cache=False,
    )  # fmt: skip


@pytest.mark.parametrize("packing", [True, False])
def test_workers_give_the_reference_batches(rows_file, base_tok, tmp_path, monkeypatch, packing):
    monkeypatch.setattr(cache, "CHUNK_ROWS", 6)  # 4 chunks over 2 spawned workers
    opts = EncodeOptions(max_len=64)
    data = built(rows_file, base_tok, tmp_path, 2, opts)
    assert data.meta["num_proc"] == 2 and len(data.meta["shards"]) == 4
    got = data.view(np.arange(len(data)))
    template = resolve_template(base_tok)
    want = [e for c in load_conversations(str(rows_file)).rows if (e := encode(c, base_tok, template, opts))]
    assert len(got) == len(want) > 0
    plan = plan_epoch([len(e) for e in want], seed=1, epoch=0, micro_batch_size=3, packing=packing, capacity=64)
    pad = base_tok.pad_token_id
    for rows in plan:
        a, b = collate(got, rows, pad, packing), collate(want, rows, pad, packing)
        assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.targets, b.targets)
        assert torch.equal(a.position_ids, b.position_ids)
    assert all(base_tok.convert_tokens_to_ids("<|im_end|>") in e.labels for e in got)  # trained end-of-turn


def test_first_chunk_goes_to_the_workers(rows_file, tokenizer, tmp_path, monkeypatch):
    """Workers run: no chunk is encoded in the main process (it used to encode the first while they waited);
    one chunk only: encoded here, no pool started."""
    here = []
    monkeypatch.setattr(cache._Encoder, "__call__", lambda self, path, rows: here.append(path) or 0)
    monkeypatch.setattr(cache, "CHUNK_ROWS", 6)
    sink = cache.Sink(
        tmp_path, cache._Encoder(tokenizer, resolve_template(tokenizer), EncodeOptions()), 2, cache.Ticker(False)
    )
    submitted = []
    monkeypatch.setattr(
        cache,
        "ProcessPoolExecutor",
        lambda *a, **k: type(
            "P", (), {"submit": lambda s, f, *x: submitted.append(x[0]) or _done(), "shutdown": lambda s, **k: None}
        )(),
    )
    for row in load_conversations(str(rows_file)).rows:
        sink.append(row)
    sink.finish()
    assert here == [] and len(submitted) == 4
    one = cache.Sink(tmp_path, sink.encoder, 2, cache.Ticker(False))
    for row in load_conversations(str(rows_file)).rows[:5]:
        one.append(row)
    one.finish()
    assert len(here) == 1 and one.pool is None


def test_data_over_a_small_file_starts_the_workers_before_its_first_chunk(rows_file, base_tok, tmp_path, monkeypatch):
    """Data known to be big (files over SMALL_FILE): the pool starts when the build does, so worker imports overlap
    the reading; the rows are the same, and one chunk of such data goes to the workers too."""
    started = []
    real = cache.Sink._start_pool
    monkeypatch.setattr(cache.Sink, "_start_pool", lambda self: started.append(self.n) or real(self))
    monkeypatch.setattr(cache, "CHUNK_ROWS", 6)
    opts = EncodeOptions(max_len=64)
    small = built(rows_file, base_tok, tmp_path / "small", 2, opts)
    assert started == [12]  # after two chunks' rows
    monkeypatch.setattr(cache, "SMALL_FILE", 0)
    big = built(rows_file, base_tok, tmp_path / "big", 2, opts)
    assert started == [12, 0]
    want = [small.encoded(i) for i in range(len(small))]
    assert [big.encoded(i) for i in range(len(big))] == want and len(want) > 12
    monkeypatch.setattr(cache, "CHUNK_ROWS", 10**6)
    one = built(rows_file, base_tok, tmp_path / "one", 2, opts)
    assert started == [12, 0, 0] and [one.encoded(i) for i in range(len(one))] == want


def _done():
    from concurrent.futures import Future

    f = Future()
    f.set_result(0)
    return f
