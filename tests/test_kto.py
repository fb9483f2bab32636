"""`weitiao kto`: unpaired feedback rows (TRL prompt/completion/label, LLaMA-Factory kto_tag) read or refused in
one line, and end-to-end runs on a tiny model with the defaults users get (LoRA dropout 0.05, packing)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import build_tokenizer, save_tiny_model, write_jsonl

from weitiao.config import load_config
from weitiao.data.chat import IGNORE
from weitiao.data.formats import Document, load_rows
from weitiao.errors import UserError
from weitiao.recipes import kto
from weitiao.train.guard import DivergedError

Q = ["天空是什么颜色？", "怎么做番茄炒蛋？", "你好", "1+1等于几？", "推荐一本书", "今天天气怎么样？", "翻译 hello"]


def feedback_rows(n: int, good=lambda i: i % 3 != 0, chat: bool = True) -> list[dict]:
    rows = []
    for i in range(n):
        reply = ("好的，这是回答。" if good(i) else "不知道，滚。") * (1 + i % 3)
        q = Q[i % len(Q)] + "?" * (i // len(Q))
        if chat:
            rows.append({"prompt": [{"role": "user", "content": q}],
                         "completion": [{"role": "assistant", "content": reply}], "label": good(i)})  # fmt: skip
        else:
            rows.append({"prompt": q, "completion": reply, "label": good(i)})
    return rows


def metrics(out, kind="train") -> list[dict]:
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


@pytest.mark.parametrize(
    ("row", "desirable"),
    [
        ({"prompt": "天空", "completion": "是蓝的", "label": True}, True),
        (
            {
                "prompt": [{"role": "user", "content": "天空"}],
                "completion": [{"role": "assistant", "content": "绿"}],
                "label": False,
            },
            False,
        ),  # fmt: skip
        (
            {
                "messages": [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "滚"}],
                "kto_tag": "👎",
            },
            False,
        ),  # fmt: skip
        ({"instruction": "写诗", "output": "床前明月光", "label": "thumbs_up"}, True),
        ({"prompt": "a", "completion": "b", "label": 0.0}, False),
        ({"prompt": "a", "completion": "b", "label": "-1"}, False),
        ({"prompt": "a", "completion": "b", "label": "Desirable"}, True),
    ],
)
def test_feedback_rows_read(tmp_path, row, desirable):
    (fb,) = load_rows(write_jsonl(tmp_path / "f.jsonl", [row]), feedback=True).rows
    assert fb.desirable is desirable and fb.source.endswith("f.jsonl:1") and fb.row.source == fb.source
    assert isinstance(fb.row, Document) == isinstance(row.get("prompt"), str)


@pytest.mark.parametrize(
    ("row", "error"),
    [
        ({"prompt": "a", "completion": "b", "label": "maybe"}, r"f.jsonl:1: label: 'maybe' is not a feedback label"),
        ({"prompt": "a", "completion": "b", "label": 0.5}, r"f.jsonl:1: label: 0.5 is not a feedback label"),
        ({"prompt": "a", "completion": "b"}, r"f.jsonl:1: label: missing"),
        ({"prompt": "a", "completion": "b", "label": True, "kto_tag": True}, r"f.jsonl:1: kto_tag: the row also has"),
        ({"prompt": "a", "chosen": "b", "rejected": "c"}, r"f.jsonl:1: chosen: a preference pair: .* `weitiao dpo`"),
        ({"text": "abc", "label": True}, r"f.jsonl:1: text: a raw-text row has no prompt"),
        ({"prompt": [{"role": "user", "content": "q"}], "label": True,
          "completion": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"},
                         {"role": "assistant", "content": "c"}]}, r"f.jsonl:1: completion: KTO judges one reply"),
    ],
)  # fmt: skip
def test_bad_feedback_rows_are_one_line(tmp_path, row, error):
    with pytest.raises(UserError, match=error):
        load_rows(write_jsonl(tmp_path / "f.jsonl", [row]), feedback=True)


def test_llamafactory_kto_tag_is_read(tmp_path):
    info = {"kto": {"file_name": "kto.json", "formatting": "sharegpt", "columns": {"messages": "messages",
            "kto_tag": "label"}, "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
            "assistant_tag": "assistant"}}}  # fmt: skip
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Go away"}]
    (tmp_path / "dataset_info.json").write_text(json.dumps(info))
    (tmp_path / "kto.json").write_text(json.dumps([{"messages": msgs, "label": False}, {"messages": msgs}]))
    with pytest.raises(UserError, match=r"kto.json:\d+: label: missing"):
        load_rows(["kto"], dataset_dir=tmp_path, feedback=True)
    res = load_rows(["kto"], dataset_dir=tmp_path, feedback=True, skip_invalid=True, rejects_path=tmp_path / "r")
    assert [fb.desirable for fb in res.rows] == [False] and res.rejected == 1
    with pytest.raises(UserError, match=r"kto.json:1: label: unpaired feedback .*`weitiao kto`"):
        load_rows(["kto"], dataset_dir=tmp_path)  # SFT still refuses them


def test_data_check_lints_feedback_files_as_kto_reads_them(tmp_path, tokenizer):
    """`data check` refused every KTO file with the SFT refusal; now the first row decides: labels counted, the
    judged reply trained (train_turns last, as `weitiao kto`), a reply labelled both ways reported."""
    from weitiao.data.check import check_file

    rows = feedback_rows(7)
    conflict = {**rows[1], "label": not rows[1]["label"]}
    f = write_jsonl(tmp_path / "f.jsonl", [*rows, conflict])
    rep = check_file([str(f)], tokenizer)
    assert (rep.kept, rep.desirable, rep.undesirable) == (8, 4, 4) and rep.train_turns == "last"
    assert rep.conflicting_labels == 1 and any("labelled both" in p for p in rep.problems)
    only = check_file([str(write_jsonl(tmp_path / "g.jsonl", rows[1:3]))], tokenizer)
    assert any(p.startswith("every row is desirable") for p in only.problems)
    # 15 : 8 = 1.88, at which `weitiao kto` warns: data check said nothing; now the same line (one function)
    skewed = check_file([str(write_jsonl(tmp_path / "h.jsonl", feedback_rows(23, good=lambda i: i < 15)))], tokenizer)
    line = ("15 desirable × 1 : 8 undesirable × 1 = 1.88, outside the [1, 4/3] that KTO recommends; set "
            "kto.desirable_weight in [0.53, 0.71] or kto.undesirable_weight in [1.41, 1.88] (not both)")  # fmt: skip
    assert line in skewed.problems and line == kto.kto_balance(15, 8)
    assert not any("KTO recommends" in p for p in rep.problems)  # control: 4 : 4 is within it
    sft = {"instruction": "你好", "output": "你好呀"}
    with pytest.raises(UserError, match=r"f2.jsonl:2: label: missing"):  # a file is one kind of row
        check_file([str(write_jsonl(tmp_path / "f2.jsonl", [rows[0], sft]))], tokenizer)
    with pytest.raises(UserError, match=r"s.jsonl:2: label: unpaired feedback .*`weitiao kto`"):
        check_file([str(write_jsonl(tmp_path / "s.jsonl", [sft, rows[0]]))], tokenizer)
    assert check_file([str(write_jsonl(tmp_path / "t.jsonl", [sft]))], tokenizer).desirable == 0


@pytest.fixture(scope="module")
def eos_model(tmp_path_factory):
    """A tiny Llama whose tokenizer's EOS (<|endoftext|>) is not ChatML's end-of-turn (<|im_end|>)."""
    tok = build_tokenizer(eos="<|endoftext|>")
    return save_tiny_model(tmp_path_factory.mktemp("eos") / "llama", tok), tok


def config(model_dir, data, out, *extra):
    base = [f"model.path={model_dir}", f"data.train=[{data}]", f"train.out={out}", "train.progress=false",
            "train.tensorboard=false", "train.micro_batch_size=4"]  # fmt: skip
    return load_config(kto.KTOConfig, None, [*base, *extra])


def test_run_with_defaults(tmp_path, eos_model, capsys):
    """Default LoRA (dropout 0.05, turned off as in DPO and TRL) and packing: step 1 has π = π_ref, so every row's
    loss is 1 − σ(0) = 0.5 and z0 = 0; 11 rows in micro-batches of 4 packed rows; replies end with <|im_end|>."""
    model_dir, tok = eos_model
    data = write_jsonl(tmp_path / "fb.jsonl", feedback_rows(11))
    cfg = config(model_dir, data, tmp_path / "run", "train.max_steps=4", "train.lr=1e-3")
    assert cfg.lora.dropout == 0.05 and cfg.data.packing
    summary = kto.run(cfg)
    assert summary["finished"] and summary["steps"] == 4
    rows = metrics(tmp_path / "run")
    assert rows[0]["loss"] == pytest.approx(0.5, abs=1e-6) and rows[0]["kl"] == 0.0
    assert all(math.isfinite(v) for r in rows for v in r.values() if isinstance(v, float))
    assert {"rewards/chosen", "rewards/rejected", "rewards/margins", "kl", "logps/chosen"} <= set(rows[1])
    assert rows[-1]["loss"] != pytest.approx(0.5, abs=1e-4)  # it learned
    out = capsys.readouterr().out
    assert "rows: 11 read = 11 train (7 desirable, 4 undesirable)" in out
    assert "7 desirable × 1 : 4 undesirable × 1 = 1.75, outside the [1, 4/3]" in out
    data_rec = metrics(tmp_path / "run", "data")[0]
    assert (data_rec["desirable"], data_rec["undesirable"]) == (7, 4)


def test_replies_end_with_the_templates_end_of_turn(tmp_path, eos_model):
    from weitiao.train.feedback import prepare_feedback

    model_dir, tok = eos_model
    eot, eos = tok.convert_tokens_to_ids("<|im_end|>"), tok.eos_token_id
    for chat, end in ((True, eot), (False, eos)):  # chats: the template's end-of-turn; TRL's string rows: EOS
        data = write_jsonl(tmp_path / f"fb{chat}.jsonl", feedback_rows(5, chat=chat))
        cfg = config(model_dir, data, tmp_path / "run")
        d = prepare_feedback(cfg.data, cfg.train, tok)
        for e in d.train:
            assert [x for x in e.labels if x != IGNORE][-1] == end
        assert d.raw is not chat


def test_only_desirable_rows_log_no_nan(tmp_path, eos_model, capsys):
    model_dir, _ = eos_model
    data = write_jsonl(tmp_path / "fb.jsonl", feedback_rows(6, good=lambda i: True))
    kto.run(config(model_dir, data, tmp_path / "run", "train.max_steps=2", "data.eval_split=0.34"))
    for r in metrics(tmp_path / "run") + metrics(tmp_path / "run", "eval"):
        assert all(math.isfinite(v) for v in r.values() if isinstance(v, float)), r
        assert not any("rejected" in k or "margins" in k for k in r), r
    assert "every row is desirable" in capsys.readouterr().out


def test_resume_continues_as_the_uninterrupted_run(tmp_path, eos_model):
    """Resumed from the run's own config.yaml (it records data.cache/cache_dir/num_proc, which a first version
    refused as set), the run logs the uninterrupted run's losses."""
    model_dir, _ = eos_model
    data = write_jsonl(tmp_path / "fb.jsonl", feedback_rows(10))
    args = ("train.max_steps=4", "train.lr=1e-3", "data.packing=false", "train.save_every=1")
    kto.run(config(model_dir, data, tmp_path / "a", *args))
    kto.run(config(model_dir, data, tmp_path / "b", *args, "train.stop_after=2"))
    kto.run(load_config(kto.KTOConfig, tmp_path / "b" / "config.yaml", ["train.stop_after=null"]))
    a, b = metrics(tmp_path / "a"), metrics(tmp_path / "b")
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    assert [r["loss"] for r in a] == pytest.approx([r["loss"] for r in b], rel=1e-5)


def test_nan_loss_stops_with_an_error(tmp_path, eos_model, monkeypatch):
    model_dir, _ = eos_model
    data = write_jsonl(tmp_path / "fb.jsonl", feedback_rows(8))
    real, calls = kto.kto_terms, []

    def nan_at_step_2(*a, **kw):
        calls.append(1)
        loss, rewards = real(*a, **kw)
        return (loss * float("nan") if len(calls) == 2 else loss), rewards

    monkeypatch.setattr(kto, "kto_terms", nan_at_step_2)
    with pytest.raises(DivergedError, match="step 2: loss is nan"):
        kto.run(config(model_dir, data, tmp_path / "run", "train.max_steps=3"))


@pytest.mark.parametrize(
    ("extra", "error"),
    [
        (("train.micro_batch_size=1", "data.packing=false"), "its own reward; set train.micro_batch_size ≥ 2"),
        (("data.num_proc=2",), "num_proc: weitiao kto tokenizes in memory"),
        (("data.cache_dir=/tmp/c",), "cache_dir: weitiao kto tokenizes in memory"),
        (("kto.loss_type=apo",), "loss_type"),
    ],
)
def test_config_refusals(tmp_path, extra, error):
    with pytest.raises(UserError, match=error):
        config("m", tmp_path / "f.jsonl", tmp_path / "run", *extra)


def test_kto_terms_by_hand():
    """λ_D(1 − σ(β(r − z0))), λ_U(1 − σ(β(z0 − r))), z0 clamped at 0 and without gradient."""
    logps = torch.tensor([-3.0, -5.0], requires_grad=True)
    ref = torch.tensor([-4.0, -4.0])
    kl = torch.tensor(0.5, requires_grad=True)
    loss, rewards = kto.kto_terms(logps, ref, torch.tensor([True, False]), kl, 0.5, 2.0, 3.0)
    sig = torch.sigmoid
    want = torch.stack([2 * (1 - sig(torch.tensor(0.5 * (1 - 0.5)))), 3 * (1 - sig(torch.tensor(0.5 * (0.5 + 1))))])
    assert torch.allclose(loss, want) and torch.allclose(rewards, torch.tensor([0.5, -0.5]))
    loss.sum().backward()
    assert kl.grad is None
    clamped, _ = kto.kto_terms(logps, ref, torch.tensor([True, False]), torch.tensor(-7.0), 0.5)
    zero, _ = kto.kto_terms(logps, ref, torch.tensor([True, False]), torch.tensor(0.0), 0.5)
    assert torch.equal(clamped, zero)


def test_two_processes_train_as_one_with_grad_accum_2(tmp_path, eos_model):
    """DDP (2 gloo processes, an odd eval set) and one process with grad_accum 2 log the same losses and z0: each
    micro-batch keeps its own reference point."""
    from conftest import torchrun_driver

    model_dir, _ = eos_model
    data = write_jsonl(tmp_path / "fb.jsonl", feedback_rows(13))
    ev = write_jsonl(tmp_path / "ev.jsonl", feedback_rows(3, good=lambda i: i != 1))
    driver = tmp_path / "driver.py"
    driver.write_text("import sys\nfrom weitiao.cli import main\nsys.argv[0] = 'weitiao'\nmain()\n")
    (tmp_path / "empty.yaml").write_text("{}\n")
    over = [f"model.path={model_dir}", f"data.train=[{data}]", f"data.eval=[{ev}]", "train.progress=false",
            "train.tensorboard=false", "train.micro_batch_size=3", "train.max_steps=3", "train.lr=1e-3",
            "data.packing=false"]  # fmt: skip
    torchrun_driver(driver, "kto", str(tmp_path / "empty.yaml"), *over, f"train.out={tmp_path / 'two'}")
    kto.run(load_config(kto.KTOConfig, None, [*over, "train.grad_accum=2", f"train.out={tmp_path / 'one'}"]))
    for kind in ("train", "eval"):
        two, one = metrics(tmp_path / "two", kind), metrics(tmp_path / "one", kind)
        assert len(two) == len(one) > 0
        for a, b in zip(two, one):
            for key in ("loss", "kl", "rewards/chosen", "rewards/rejected"):
                key = key if kind == "train" else f"eval_{key}"
                assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), (kind, key, a, b)


def test_eval_split_copies_are_counted(tmp_path, eos_model, capsys):
    """'17 read = 10 train + 5 eval + 0 rejected …' left out the 2 copies data.eval_split drops of held-out rows."""
    model_dir, _ = eos_model
    rows = feedback_rows(11)
    data = write_jsonl(tmp_path / "fb.jsonl", rows + rows[:6])
    kto.run(config(model_dir, data, tmp_path / "run", "train.max_steps=1", "data.eval_split=0.5"))
    d = metrics(tmp_path / "run", "data")[0]
    assert d["eval_copies"] > 0
    assert d["read"] == 17 == d["kept"] + d["eval_rows"] + d["eval_copies"] + d["rejected"] + d["dropped_too_long"]
    assert f"17 read = {d['kept']} train (" in capsys.readouterr().out


def test_a_micro_batch_of_one_row_is_said(tmp_path, eos_model, capsys):
    """9 rows in unpacked micro-batches of 4: the last holds one row, whose z0 is its own log-ratio."""
    model_dir, _ = eos_model
    data = write_jsonl(tmp_path / "fb.jsonl", feedback_rows(9))
    kto.run(config(model_dir, data, tmp_path / "run", "train.max_steps=1", "data.packing=false"))
    assert "warning: 1 micro-batch of an epoch holds one row" in capsys.readouterr().out


def test_labels_of_a_one_line_json_array_stay_with_their_rows(tmp_path, eos_model):
    """json.dump writes a .json array on one line, so every row's source is 'f.json:1': labels looked up by source
    all became the last row's (23 rows read as 23 desirable); now each keeps its own, a dropped row included."""
    from weitiao.train.feedback import prepare_feedback

    model_dir, tok = eos_model
    rows = feedback_rows(7)
    rows.insert(2, {**rows[2], "completion": [{"role": "assistant", "content": "很长。" * 200}], "label": True})
    (tmp_path / "f.json").write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    cfg = config(model_dir, tmp_path / "f.json", tmp_path / "run", "data.max_len=160")
    d = prepare_feedback(cfg.data, cfg.train, tok)
    assert d.dropped == 1 and {e.source for e in d.train} == {f"{tmp_path / 'f.json'}:1"}
    want = [r["label"] for k, r in enumerate(rows) if k != 2]
    assert d.desirable == want == [False, True, True, False, True, True, False]


def test_kl_rows_stay_within_the_models_context(tmp_path, eos_model, monkeypatch):
    """A KL row joins prompt k to reply k − 1: a long prompt + a long reply made 784-token KL rows on this
    512-position model (each row ≤ 488, data.max_len 2048), trained silently; now cut at the context as at max_len."""
    model_dir, _ = eos_model
    rows = []
    for i in range(6):
        n = (150, 2) if i % 2 else (2, 150)  # (prompt, reply) repeats: a long prompt or a long reply
        rows.append({"prompt": [{"role": "user", "content": f"第{i}题：" + "你好" * n[0]}],
                     "completion": [{"role": "assistant", "content": f"答{i}：" + "好的" * n[1]}],
                     "label": i % 3 != 0})  # fmt: skip
    data = write_jsonl(tmp_path / "fb.jsonl", rows)
    seen, real = [], kto.mismatched
    monkeypatch.setattr(kto, "mismatched", lambda *a: seen.extend(map(len, real(*a))) or real(*a))
    extra = ("data.max_len=2048", "data.packing=false", "train.max_steps=2", "train.micro_batch_size=6")
    kto.run(config(model_dir, data, tmp_path / "run", *extra))
    assert seen and max(seen) == 512  # a long prompt + a long reply in every step (6 rows, one micro-batch)


def test_a_template_set_for_raw_text_rows_is_refused(tmp_path, eos_model):
    """TRL's string prompt/completion rows are raw text: data.template=chatml rendered none of them, silently (the
    data record still said 'chatml'); now one line. Chat rows take it."""
    from weitiao.train.feedback import prepare_feedback

    model_dir, tok = eos_model
    raw = write_jsonl(tmp_path / "raw.jsonl", feedback_rows(4, chat=False))
    cfg = config(model_dir, raw, tmp_path / "run", "data.template=chatml")
    with pytest.raises(UserError, match=r"^data.template: 'chatml' renders no row: every row is raw text"):
        prepare_feedback(cfg.data, cfg.train, tok)
    assert prepare_feedback(config(model_dir, raw, tmp_path / "run").data, cfg.train, tok).raw
    chat = write_jsonl(tmp_path / "chat.jsonl", feedback_rows(4))
    cfg = config(model_dir, chat, tmp_path / "run", "data.template=chatml")
    assert prepare_feedback(cfg.data, cfg.train, tok).template.name == "chatml"


def test_every_accepted_label_spelling_is_documented():
    """ "thumbsup" was read as desirable (and "thumbsdown" as undesirable) while neither README nor the refusal's
    list of spellings named them. Now every spelling the reader accepts is in both READMEs' KTO row and the list."""
    import re
    from pathlib import Path

    from weitiao.data.formats import BAD_LABELS, GOOD_LABELS, LABEL_SPELLINGS

    root = Path(__file__).resolve().parents[1]
    for readme in ("README.md", "README_zh.md"):
        row = next(x for x in (root / readme).read_text(encoding="utf-8").splitlines() if x.startswith("| KTO"))
        named = set(re.findall(r"[\w👍👎.\-]+", row.split("1/0/-1")[1].split("；")[0].split(";")[0]))
        named |= {"true", "false", "1", "0", "-1"}  # "labels true/false, 1/0/-1", before the part read above
        assert GOOD_LABELS | BAD_LABELS <= named, (readme, (GOOD_LABELS | BAD_LABELS) - named)
    words = set(re.findall(r"[\w👍👎.\-]+", LABEL_SPELLINGS))
    assert GOOD_LABELS | BAD_LABELS <= words | {"1.0", "0.0", "-1.0"}, (GOOD_LABELS | BAD_LABELS) - words


def test_a_reply_judged_both_ways_stays_on_one_side_of_the_eval_split(tmp_path, eos_model):
    """data.eval_split grouped copies by prompt, reply and label: the same reply labelled good in one row and bad in
    another were two rows, so one trained and the other was held out (eval measured a reply the model trained on).
    Now grouped by prompt and reply; data without such copies splits as before."""
    from weitiao.train.feedback import prepare_feedback

    model_dir, tok = eos_model
    rows = feedback_rows(12)
    both = write_jsonl(tmp_path / "both.jsonl", rows + [dict(r, label=not r["label"]) for r in rows])
    cfg = config(model_dir, both, tmp_path / "run", "data.eval_split=0.3")
    d = prepare_feedback(cfg.data, cfg.train, tok)
    trained = {tuple(e.input_ids) for e in d.train}
    assert d.eval and not [e for e in d.eval if tuple(e.input_ids) in trained]
    plain = write_jsonl(tmp_path / "plain.jsonl", rows)  # control: the split of data without copies is unchanged
    before = prepare_feedback(config(model_dir, plain, tmp_path / "r2", "data.eval_split=0.3").data, cfg.train, tok)
    assert sorted(tuple(e.input_ids) for e in before.eval) == sorted(tuple(e.input_ids) for e in d.eval)
