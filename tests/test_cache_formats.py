"""Every reader's rows through the tokenized-data cache and the batch encoder: raw-text documents (text
pieces, TRL prompt/completion), OpenAI weight-0 turns, LLaMA-Factory dataset_dir names, notes, KTO refusal,
compressed/CSV/Parquet files; tokens equal the per-row functions, a second run reads nothing."""

import gzip
import json
from dataclasses import asdict

import numpy as np
import pytest
from conftest import write_jsonl

from weitiao.data import cache
from weitiao.data.chat import EncodeOptions, encode, encode_all, encode_document
from weitiao.data.formats import Conversation, Document, load_conversations
from weitiao.data.prep import conversation_key, split_eval
from weitiao.data.templates import resolve_template
from weitiao.data.tokenize import encode_batch
from weitiao.errors import UserError
from weitiao.recipes import sft

SKY = {"role": "user", "content": "今天天气怎么样？"}
SUN = {"role": "assistant", "content": "挺好的，大晴天☀️"}
RAIN = {"role": "assistant", "content": "要下雨了，带伞。"}
MORE = {"role": "user", "content": "周末有什么安排？"}
WEIGHTED = [SKY, {**SUN, "weight": 0}, MORE, RAIN]  # the first reply is context only
LAST_UNTRAINED = [SKY, SUN, MORE, {**RAIN, "weight": 0}]
DOCS = [{"text": f"文档{i}：" + "今天天气怎么样？挺好的，大晴天。" * (1 + 3 * i)} for i in range(8)]


def dicts(encs):
    return [asdict(e) for e in encs]


def plain(result):
    """An encode/encode_document/encode_batch result as plain data."""
    return dicts(result) if isinstance(result, list) else None if result is None else asdict(result)


def test_batch_encoder_takes_documents_and_weights(tokenizer):
    """encode_batch: a Document gives encode_document's pieces, a weight-0 turn chat.encode's labels."""
    t = resolve_template(tokenizer)
    rows = [
        Conversation(WEIGHTED, "w:1"),
        Document(DOCS[7]["text"], "t:1"),
        Document("挺好的", "pc:1", prompt="今天天气怎么样？"),
        Conversation(LAST_UNTRAINED, "w:2"),
    ]
    for opts in [EncodeOptions(max_len=40), EncodeOptions(train_turns="last"), EncodeOptions(train_on_prompt=True)]:
        got = encode_batch(rows, tokenizer, t, opts)
        want = [encode_document(r, tokenizer, opts) if isinstance(r, Document) else encode(r, tokenizer, t, opts)
                for r in rows]  # fmt: skip
        assert [plain(g) for g in got] == [plain(w) for w in want]
    pieces = encode_batch(rows[1:2], tokenizer, t, EncodeOptions(max_len=40))[0]
    assert len(pieces) > 1 and [x for p in pieces for x in p.input_ids][-1] == tokenizer.eos_token_id
    # Negative control: the weights bite (the same turns unweighted train the first reply too).
    bare = Conversation([{k: v for k, v in m.items() if k != "weight"} for m in WEIGHTED])
    weighted, unweighted = encode_batch([rows[0], bare], tokenizer, t, EncodeOptions())
    assert weighted.n_trained < unweighted.n_trained


def test_every_row_kind_through_cache_workers(tmp_path, tokenizer, monkeypatch):
    """Chunks of 3 rows over 2 spawned processes: every file kind's rows equal encode_all's, accounting too."""
    pc = [{"prompt": "今天天气怎么样？" * (1 + 6 * (i % 2)), "completion": "挺好的，大晴天。"} for i in range(5)]
    folder = tmp_path / "mixed"
    folder.mkdir()
    with gzip.open(folder / "docs.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in DOCS))
    (folder / "pc.csv").write_text("prompt,completion\n" + "".join(f"{r['prompt']},{r['completion']}\n" for r in pc))
    write_jsonl(folder / "w.jsonl", [{"messages": WEIGHTED}, {"messages": LAST_UNTRAINED}] * 4)
    monkeypatch.setattr(cache, "CHUNK_ROWS", 3)
    t = resolve_template(tokenizer)
    rows = load_conversations(str(folder), allow_text=True).rows
    read = {"fmt": "auto", "skip_invalid": False, "max_row_bytes": 10**6}
    for num_proc, opts in [
        (2, EncodeOptions(max_len=40, truncation="cut")),
        (1, EncodeOptions(max_len=64, train_turns="last", truncation="history")),
    ]:
        want, stats = encode_all(rows, tokenizer, t, opts)
        data = cache.encoded_files(
            [str(folder)], read, tokenizer, t, opts, rejects_path=tmp_path / "r.jsonl",
            use_cache=False, num_proc=num_proc, progress=False,
        )  # fmt: skip
        assert data.meta["format"] == "mixed" and data.meta["num_proc"] == num_proc
        everything = np.arange(len(data))
        assert dicts(data.view(everything)) == dicts(want), opts
        assert asdict(data.stats(everything)) == asdict(stats), opts
    assert stats.doc_pieces > 0 and stats.rows == 8 + 5 + 8  # long documents split into pieces


def prepare(train, tmp_path, tokenizer, **data):
    cfg = sft.SFTConfig(
        data=sft.DataSpec(train=train, max_len=48, cache_dir=str(tmp_path / "cache"), **data),
        train=sft.TrainSpec(out=str(tmp_path / "run")),
    )
    return sft.prepare_data(cfg, tokenizer)


def reference(rows, tokenizer, eval_split=0.0, **opts):
    """What prepare_data trained on before the cache: split the rows, then encode_all each side."""
    split = split_eval(rows, eval_split, 42, conversation_key) if eval_split else None
    t = resolve_template(tokenizer)
    o = EncodeOptions(max_len=48, **opts)
    train, stats = encode_all(split.train if split else rows, tokenizer, t, o)
    return train, stats, encode_all(split.eval, tokenizer, t, o)[0] if split else []


@pytest.fixture
def lf_dir(tmp_path):
    d = tmp_path / "lf"
    d.mkdir()
    tags = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}
    info = {
        "chat": {"file_name": "chat.json", "formatting": "sharegpt", "tags": tags,
                 "columns": {"messages": "messages", "images": "images"}},
        "qa": {"file_name": "qa.jsonl", "columns": {"prompt": "q", "response": "a"}, "num_samples": 5},
    }  # fmt: skip
    (d / "dataset_info.json").write_text(json.dumps(info), encoding="utf-8")
    turns = [{"role": "user", "content": "<image>这是什么？"}, {"role": "assistant", "content": "猫。"}]
    chat = [{"messages": turns, "images": [f"{i}.jpg"]} for i in range(3)]
    (d / "chat.json").write_text(json.dumps(chat, ensure_ascii=False), encoding="utf-8")
    write_jsonl(d / "qa.jsonl", [{"q": "一加一", "a": "二"}, {"q": "二加二", "a": "四"}])
    return d


def test_text_file_and_dataset_dir_train_through_the_cache(tmp_path, tokenizer, lf_dir, monkeypatch, capsys):
    """Cold build, then a hit that reads no file: tokens equal the per-row path; a mapping change misses."""
    docs = write_jsonl(tmp_path / "docs.jsonl", DOCS)
    rows = load_conversations(str(docs), allow_text=True).rows
    want, want_stats, want_eval = reference(rows, tokenizer, eval_split=0.25)
    cold = prepare([str(docs)], tmp_path, tokenizer, eval_split=0.25)
    names = ["chat", "qa"]
    lf_rows = load_conversations(names, dataset_dir=str(lf_dir)).rows
    lf_want, lf_stats, _ = reference(lf_rows, tokenizer, train_turns="last")
    lf_cold = prepare(names, tmp_path, tokenizer, dataset_dir=str(lf_dir), train_turns="last")
    assert "rows in" in cold.cache_line and "rows in" in lf_cold.cache_line
    monkeypatch.setattr(cache, "load_rows", lambda *a, **k: pytest.fail("a cache hit read the data"))
    warm = prepare([str(docs)], tmp_path, tokenizer, eval_split=0.25)
    lf_warm = prepare(names, tmp_path, tokenizer, dataset_dir=str(lf_dir), train_turns="last")
    monkeypatch.undo()
    assert "from cache" in warm.cache_line and "from cache" in lf_warm.cache_line
    for d in (cold, warm):
        assert dicts(d.train) == dicts(want) and dicts(d.eval) == dicts(want_eval)
        assert asdict(d.stats) == asdict(want_stats) and want_stats.doc_pieces > 0 and d.eval_stats.rows == 2
    for d in (lf_cold, lf_warm):
        assert dicts(d.train) == dicts(lf_want) and asdict(d.stats) == asdict(lf_stats)
        assert d.read == 5 and d.stats.rows == 8  # num_samples 5 of qa's 2 rows
        assert any("columns.images (images) ignored" in w for w in d.warnings)  # the note comes back on a hit
    # The key holds the dataset_info.json mapping and the files behind each name, not just the names.
    info = json.loads((lf_dir / "dataset_info.json").read_text(encoding="utf-8"))
    info["qa"]["num_samples"] = 3
    (lf_dir / "dataset_info.json").write_text(json.dumps(info), encoding="utf-8")
    changed = prepare(names, tmp_path, tokenizer, dataset_dir=str(lf_dir), train_turns="last")
    assert "rows in" in changed.cache_line and changed.stats.rows == 6
    write_jsonl(lf_dir / "qa.jsonl", [{"q": "三加三", "a": "六"}, {"q": "二加二", "a": "四"}])
    changed = prepare(names, tmp_path, tokenizer, dataset_dir=str(lf_dir), train_turns="last")
    assert "rows in" in changed.cache_line and any("三加三" in tokenizer.decode(e.input_ids) for e in changed.train)


def test_kto_rows_refused_through_the_cache(tmp_path, tokenizer):
    kto = write_jsonl(tmp_path / "kto.jsonl", [{"prompt": "天空是", "completion": "蓝的", "label": True}])
    with pytest.raises(UserError, match=r"kto.jsonl:1: label: unpaired feedback \(KTO"):
        prepare([str(kto)], tmp_path, tokenizer, skip_invalid=True)
    assert not [p for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")]  # nothing half-built
