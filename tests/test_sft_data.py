"""SFT data hygiene: leak-free eval splits, answer-only eval loss, cut accounting, EOS ≠ end-of-turn,
empty inputs (issues #14, #15)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import CHAT_ROWS, build_tokenizer, write_jsonl

from weitiao.data.chat import IGNORE, EncodeOptions, encode, encode_all
from weitiao.data.collate import collate
from weitiao.data.formats import Conversation, PreferencePair, load_conversations, parse_alpaca
from weitiao.data.prep import conversation_key, count_overlap, pair_key, split_eval
from weitiao.data.templates import resolve_template
from weitiao.dataeng import mix
from weitiao.errors import UserError
from weitiao.recipes import sft

ROOT = Path(__file__).resolve().parents[1]


def sft_cfg(tmp_path, train, **data):
    return sft.SFTConfig(
        data=sft.DataSpec(train=[str(train)], max_len=128, **data), train=sft.TrainSpec(out=str(tmp_path / "run"))
    )


def unique_rows(n, tag=""):
    return [
        {"instruction": f"{CHAT_ROWS[i % 4]['instruction']}{tag} #{i}", "output": CHAT_ROWS[i % 4]["output"]}
        for i in range(n)
    ]


# ----------------------------------------------------------------------------- 1. eval split / overlap


def test_eval_split_after_upsampling_mix_does_not_leak(tmp_path, tokenizer):
    src = write_jsonl(tmp_path / "src.jsonl", unique_rows(10))
    mixed = tmp_path / "mixed.jsonl"
    mix.run([f"{src}:1"], mixed, total=40, seed=0)  # every row written 4 times
    rows = load_conversations(str(mixed)).rows
    # Negative control: a per-row split of this file puts copies of eval rows in train.
    perm = torch.randperm(40, generator=torch.Generator().manual_seed(42)).tolist()
    naive_eval, naive_train = [rows[i] for i in perm[:10]], [rows[i] for i in perm[10:]]
    assert count_overlap(naive_train, naive_eval, conversation_key) >= 8

    data = sft.prepare_data(sft_cfg(tmp_path, mixed, eval_split=0.25), tokenizer)
    assert len({conversation_key(c) for c in rows}) == 10
    split = split_eval(rows, 0.25, 42, conversation_key)
    eval_keys = [conversation_key(c) for c in split.eval]
    assert len(eval_keys) == len(set(eval_keys)) == 2  # 25% of the 10 unique conversations, one copy each
    assert not set(eval_keys) & {conversation_key(c) for c in split.train}
    assert len(split.train) == 32 and split.eval_copies_dropped == 6
    assert not {tuple(e.input_ids) for e in data.eval} & {tuple(e.input_ids) for e in data.train}
    assert len(data.eval) == 2 and len(data.train) == 32 and data.eval_copies == 6
    assert data.read == len(data.train) + len(data.eval) + data.eval_copies + data.rejected
    assert not data.warnings


def test_eval_split_without_copies_is_the_plain_row_split(tmp_path):
    rows = [Conversation(parse_alpaca(r)) for r in unique_rows(20)]
    split = split_eval(rows, 0.2, 7, conversation_key)
    perm = torch.randperm(20, generator=torch.Generator().manual_seed(7)).tolist()
    assert split.eval == [rows[i] for i in perm[:4]] and split.train == [rows[i] for i in perm[4:]]
    with pytest.raises(UserError, match="1 unique rows"):
        split_eval(rows[:1] * 5, 0.5, 0, conversation_key)


def test_pair_split_keeps_copies_together():
    """The same helper for DPO/RM pairs: a pair is its prompt, chosen and rejected."""
    pairs = [PreferencePair([{"role": "user", "content": f"问{i}"}], f"好{i}", "不") for i in range(6)] * 3
    split = split_eval(pairs, 0.34, 0, pair_key)
    assert len(split.eval) == 2 and split.eval_copies_dropped == 4 and len(split.train) == 12
    assert count_overlap(split.train, split.eval, pair_key) == 0
    other = PreferencePair(pairs[0].prompt, pairs[0].chosen, "另一个")  # control: a different rejected
    assert count_overlap(pairs, [other], pair_key) == 0 and count_overlap(pairs, [pairs[0]], pair_key) == 1


def test_separate_eval_file_overlap_is_warned(tmp_path, tokenizer, capsys):
    rows = unique_rows(12)
    train = write_jsonl(tmp_path / "train.jsonl", rows[:10])
    leaky = write_jsonl(tmp_path / "leaky.jsonl", rows[7:12])  # 3 of its 5 rows are in train
    data = sft.prepare_data(sft_cfg(tmp_path, train, eval=[str(leaky)]), tokenizer)
    msg = "data.eval: 3 of 5 eval rows also occur in train"
    assert any(w.startswith(msg) for w in data.warnings) and msg in capsys.readouterr().out
    # Control: a disjoint eval file is not warned about.
    clean = write_jsonl(tmp_path / "clean.jsonl", rows[10:12])
    assert not sft.prepare_data(sft_cfg(tmp_path, train, eval=[str(clean)]), tokenizer).warnings


# ----------------------------------------------------------------------------- 2. answer-only eval loss


class OneProcess:
    device, process_index, num_processes = torch.device("cpu"), 0, 1

    @staticmethod
    def reduce(t, reduction):
        return t


@pytest.mark.parametrize("packing", [True, False], ids=["packed", "padded"])
def test_eval_loss_answer_matches_answer_only_run(tmp_path, tokenizer, tiny_model_dir, packing):
    from transformers import AutoModelForCausalLM

    from weitiao.losses.sft import CausalLMLoss

    f = write_jsonl(tmp_path / "d.jsonl", unique_rows(7))
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    loss_mod = CausalLMLoss(model)
    res = {}
    for top in (True, False):
        cfg = sft_cfg(tmp_path, f, eval=[str(f)], train_on_prompt=top, packing=packing)
        cfg.train.micro_batch_size = 3
        data = sft.prepare_data(cfg, tokenizer)
        res[top] = sft.evaluate(loss_mod, data.eval, cfg, tokenizer.pad_token_id, OneProcess())
    assert res[True]["eval_loss_answer"] == pytest.approx(res[False]["eval_loss"], rel=1e-6)
    assert res[False]["eval_loss_answer"] == res[False]["eval_loss"]
    # Control: the training-mask eval loss really differs (it includes the prompt tokens).
    assert abs(res[True]["eval_loss"] - res[False]["eval_loss"]) > 0.01


# ----------------------------------------------------------------------------- 3. truncation: cut


@pytest.mark.parametrize("train_on_prompt", [False, True])
def test_cut_counts_rows_that_lost_end_of_turn(tokenizer, train_on_prompt):
    template = resolve_template(tokenizer)
    rows = [{"instruction": "问", "output": "好"}, {"instruction": "问问问问", "output": "好"}, CHAT_ROWS[3]]
    fits, edge, deep = convs = [Conversation(parse_alpaca(r), f"r{i}") for i, r in enumerate(rows)]
    full = {c.source: len(encode(c, tokenizer, template, EncodeOptions(max_len=10**9))) for c in convs}
    max_len = full[edge.source] - 1  # cuts only `edge`'s trailing newline after <|im_end|>
    assert full[fits.source] <= max_len < full[deep.source] - 5
    opts = EncodeOptions(max_len=max_len, truncation="cut", train_on_prompt=train_on_prompt)
    encoded, stats = encode_all([fits, edge, deep], tokenizer, template, opts)
    assert stats.cut == 2 and stats.lost_eot == 1
    eot_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    e_fits, e_edge, e_deep = encoded
    assert e_edge.ends_with_eot and e_edge.input_ids[-1] == eot_id and e_edge.labels[-1] == eot_id
    assert not e_deep.ends_with_eot and eot_id not in e_deep.input_ids[-3:]
    assert e_fits.ends_with_eot and not e_fits.truncated


def test_cut_warns_in_prepare_data(tmp_path, tokenizer, capsys):
    rows = unique_rows(4) + [{"instruction": "长", "output": "好" * 200}]
    f = write_jsonl(tmp_path / "d.jsonl", rows)
    data = sft.prepare_data(sft_cfg(tmp_path, f, truncation="cut"), tokenizer)
    assert data.stats.cut == data.stats.lost_eot == 1
    assert "data.truncation cut: 1 rows lost their end-of-turn token '<|im_end|>'" in capsys.readouterr().out


# ----------------------------------------------------------------------------- 4. EOS ≠ end-of-turn


@pytest.mark.parametrize("packing", [True, False], ids=["packed", "padded"])
def test_base_eos_differs_from_end_of_turn_trains_the_stop_token(packing):
    """Qwen2.5-base-like: eos <|endoftext|> (also pad), ChatML turns end with <|im_end|>."""
    tok = build_tokenizer(eos="<|endoftext|>")
    template = resolve_template(tok)
    stop_id = tok.convert_tokens_to_ids(template.eot)  # what infer/generate.py and serve stop on
    eos_id = tok.eos_token_id
    assert template.eot == "<|im_end|>" and stop_id != eos_id and tok.pad_token_id == eos_id
    convs = [Conversation(parse_alpaca(r)) for r in CHAT_ROWS]  # the last one has two assistant turns
    encoded, _ = encode_all(convs, tok, template, EncodeOptions(max_len=256))
    rows = [[0, 1, 2, 3]] if packing else [[0], [1], [2], [3]]
    b = collate(encoded, rows, tok.pad_token_id, packing)
    targets = b.targets[b.targets != IGNORE].tolist()
    assert targets.count(stop_id) == 5  # one per assistant turn: 1 + 1 + 1 + 2
    assert eos_id not in targets
    # Each <|im_end|> target is predicted from the reply's last content token, never from the prompt.
    for r, row in enumerate(b.targets.tolist()):
        for t, x in enumerate(row):
            if x == stop_id:
                assert b.input_ids[r, t + 1] == stop_id and b.input_ids[r, t] not in (stop_id, eos_id)


# ----------------------------------------------------------------------------- 6. empty input (#15)


def test_empty_train_or_eval_file_is_named(tmp_path, tokenizer):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(UserError, match=rf"^{empty}: no rows \(data.train\)$"):
        sft.prepare_data(sft_cfg(tmp_path, empty), tokenizer)
    good = write_jsonl(tmp_path / "good.jsonl", unique_rows(3))
    with pytest.raises(UserError, match=rf"^{empty}: no rows \(data.eval\)$"):
        sft.prepare_data(sft_cfg(tmp_path, good, eval=[str(empty)]), tokenizer)
    (tmp_path / "empty.json").write_text("[]", encoding="utf-8")
    cfg = sft_cfg(tmp_path, good)
    cfg.data.train.append(str(tmp_path / "empty.json"))
    with pytest.raises(UserError, match="empty.json: no rows"):
        sft.prepare_data(cfg, tokenizer)
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"instruction": "问"}])  # every row invalid, set aside
    with pytest.raises(UserError, match=r"bad.jsonl: no valid rows \(invalid rows are in .*rejects.jsonl\)"):
        sft.prepare_data(sft_cfg(tmp_path, bad, skip_invalid=True), tokenizer)


def test_data_check_on_empty_file_fails(tmp_path, tiny_model_dir):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    p = subprocess.run(
        [sys.executable, "-m", "weitiao", "data", "check", str(empty), "--model", str(tiny_model_dir)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert p.returncode == 1 and "no problems found" not in p.stdout
    assert [x for x in p.stderr.splitlines() if x.strip()] == [f"error: {empty}: no rows"]


# ----------------------------------------------------------------------------- 7. data check counts as SFT trains


def test_data_check_counts_trained_tokens_as_train_turns_picks_them(tmp_path, tokenizer):
    """train_turns last with a weight-0 last reply trains nothing; data check said 0 such rows whatever train_turns."""
    from weitiao.data.check import check_file

    masked_last = {
        "messages": [
            {"role": "user", "content": "你好"},
            {"role": "assistant", "content": "嗨"},
            {"role": "user", "content": "在吗"},
            {"role": "assistant", "content": "在", "weight": 0},
        ]
    }
    rows = [masked_last, {"messages": [{"role": "user", "content": "问"}, {"role": "assistant", "content": "好"}]}]
    f = write_jsonl(tmp_path / "d.jsonl", rows)
    convs = load_conversations(str(f)).rows
    template = resolve_template(tokenizer)
    for turns, expected in (("all", 0), ("last", 1)):  # all: the first reply of row 1 trains (negative control)
        trained, _ = encode_all(convs, tokenizer, template, EncodeOptions(train_turns=turns))
        assert sum(e.n_trained == 0 for e in trained) == expected  # what SFT trains
        assert check_file([str(f)], tokenizer, train_turns=turns).no_trained_tokens == expected


def test_data_check_train_turns_option(tmp_path, tiny_model_dir):
    import json

    from typer.testing import CliRunner

    from weitiao.cli import app

    msgs = [{"role": "user", "content": "问"}, {"role": "assistant", "content": "好"}] * 2
    msgs[-1] = {**msgs[-1], "weight": 0}
    f = write_jsonl(tmp_path / "d.jsonl", [{"messages": msgs}])
    args = ["data", "check", str(f), "--model", str(tiny_model_dir), "--json"]
    rep = json.loads(CliRunner().invoke(app, [*args, "--train-turns", "last"]).output)
    assert rep["no_trained_tokens"] == 1 and rep["train_turns"] == "last"
    assert json.loads(CliRunner().invoke(app, args).output)["no_trained_tokens"] == 0


def test_data_check_train_on_prompt_counts_what_sft_trains_with_it(tmp_path, tiny_model_dir, tokenizer):
    """`data check` had no --train-on-prompt: for a user who sets SFT's data.train_on_prompt it reported a row whose
    last reply has weight 0 as training no token (train_turns last) and, under truncation cut, two rows whose prompt
    fills max_len as dropped, while SFT trains all three. The flag now goes to the same EncodeOptions SFT builds;
    the counts equal `prepare_data`'s (without the flag too: the control). Pair files refuse it."""
    import json

    from typer.testing import CliRunner

    from weitiao.cli import app

    def chat(*turns: tuple[str, bool]) -> dict:  # (text, weight 0?) from the user's turn on
        roles = ("user", "assistant") * 2
        return {
            "messages": [{"role": r, "content": t, **({"weight": 0} if z else {})} for r, (t, z) in zip(roles, turns)]
        }

    # 47 tokens, the last reply untrained; prompts of 65 and 57 tokens (over max_len 48); a row that fits
    rows = [
        chat(("你好", 0), ("好", 0), ("嗨", 0), ("嗨", 1)),
        chat(("推荐一部电影吧。" * 24, 0), ("好", 0)),
        chat(("怎么做番茄炒蛋？" * 20, 0), ("先炒蛋", 0)),
        chat(("今天天气怎么样？", 0), ("挺好的", 0)),
    ]
    f = write_jsonl(tmp_path / "d.jsonl", rows)
    args = ["data", "check", str(f), "--model", str(tiny_model_dir), "--json", "--max-len", "48", "--truncation",
            "cut", "--train-turns", "last"]  # fmt: skip
    for on in (False, True):
        out = CliRunner().invoke(app, args + ["--train-on-prompt"] * on)
        assert out.exit_code == 0, out.output
        rep = json.loads(out.output)
        data = sft.DataSpec(train=[str(f)], max_len=48, truncation="cut", train_turns="last", train_on_prompt=on,
                            cache=False)  # fmt: skip
        got = sft.prepare_data(sft.SFTConfig(data=data, train=sft.TrainSpec(out=str(tmp_path / "run"))), tokenizer)
        assert rep["train_on_prompt"] == on and rep["dropped"] == got.stats.dropped_too_long
        assert rep["cut"] == got.stats.cut and rep["no_trained_tokens"] == sum(e.n_trained == 0 for e in got.train)
        assert (rep["dropped"], rep["no_trained_tokens"]) == ((0, 0) if on else (2, 1))
    pairs = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "问", "chosen": "好", "rejected": "坏"}])
    out = CliRunner().invoke(app, ["data", "check", str(pairs), "--model", str(tiny_model_dir), "--train-on-prompt"])
    assert str(out.exception).startswith("--train-on-prompt: SFT's data.train_on_prompt; these are preference rows")


def test_data_check_and_show_take_train_eot_as_sft_does(tmp_path, tiny_model_dir, tokenizer):
    """SFT's data.train_eot had no flag in `data check`/`data show`: a user training with it false was shown the
    end-of-turn token trained. `--no-train-eot` now goes to the EncodeOptions SFT builds (trained counts equal
    `prepare_data`'s; the default is the control). A pair file refuses it, and `data check` refuses an SFT-only flag
    naming the flag typed (it said `train_on_prompt:`, the config key), as `--truncation` for a pair."""
    import json

    from typer.testing import CliRunner

    from weitiao.cli import app

    f = write_jsonl(tmp_path / "d.jsonl", [{"instruction": "你好", "output": "你好呀"}])
    model = ["--model", str(tiny_model_dir)]
    for eot in (True, False):
        flag = [] if eot else ["--no-train-eot"]
        data = sft.DataSpec(train=[str(f)], train_eot=eot, cache=False)
        got = sft.prepare_data(sft.SFTConfig(data=data, train=sft.TrainSpec(out=str(tmp_path / "run"))), tokenizer)
        shown = CliRunner().invoke(app, ["data", "show", str(f), *model, "--plain", *flag])
        assert f"trained {got.train[0].n_trained} ·" in shown.output, shown.output
        assert ("<|im_end|>⟧" in shown.output) == eot
        rep = json.loads(CliRunner().invoke(app, ["data", "check", str(f), *model, "--json", *flag]).output)
        assert rep["train_eot"] == eot
    pairs = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "问", "chosen": "好", "rejected": "坏"}])
    for cmd, flag, said in (
        ("check", "--no-train-eot", "--no-train-eot: SFT's data.train_eot; these are preference rows"),
        ("show", "--no-train-eot", "--no-train-eot: SFT's; a pair trains its last reply"),
        ("check", "--truncation=cut", "--truncation 'cut': preference rows take drop|cut_response"),
        ("show", "--truncation=cut", "--truncation 'cut': preference rows take drop|cut_response"),
    ):
        out = CliRunner().invoke(app, ["data", cmd, str(pairs), *model, flag])
        assert out.exit_code == 1 and str(out.exception).startswith(said), (cmd, flag, out.exception)


def test_data_check_reports_long_documents_as_split_not_truncated(tmp_path, tokenizer):
    """SFT splits a {"text"} document over max_len into pieces whatever data.truncation; a chat row over it is
    truncated. data check counted both as 'exceed max_len: see data.truncation'."""
    from weitiao.data.check import check_file

    docs = write_jsonl(tmp_path / "docs.jsonl", [{"text": "今天天气怎么样？挺好的。" * 30}, {"text": "短"}])
    chats = write_jsonl(tmp_path / "chats.jsonl", [{"instruction": "长" * 300, "output": "好"}] + unique_rows(2))
    rows = load_conversations(str(docs), allow_text=True).rows
    _, stats = encode_all(rows, tokenizer, resolve_template(tokenizer), EncodeOptions(max_len=32))
    pieces = stats.doc_pieces + 1  # the pieces of the one long document in SFT
    rep = check_file([str(docs), str(chats)], tokenizer, max_len=32)
    assert (rep.over_max_len, rep.split_documents, rep.document_pieces) == (1, 1, pieces) and pieces > 2
    assert [p for p in rep.problems if "max_len" in p] == ["1 rows exceed max_len 32: truncation drop drops 1 "
                                                           "(data.truncation)"]  # fmt: skip
    assert f"1 text documents longer than max_len 32 are split into {pieces} pieces (whatever data.truncation)" in (
        rep.notes
    )


def test_data_check_counts_document_pieces_over_the_models_positions_as_training_refuses_them(tmp_path, tokenizer):
    """A text document over max_len is split into max_len pieces; with max_len past the model's positions every full
    piece is past them too, and training refuses it ('6 train sequence(s) over it'), but data check counted only
    sequences within max_len and said nothing. Now it counts the pieces training counts (a short document and a chat
    row over max_len, dropped, are not: the control)."""
    from types import SimpleNamespace

    from weitiao.data.check import check_file
    from weitiao.train.loop import refuse_over_context

    docs = write_jsonl(tmp_path / "docs.jsonl", [{"text": "今天天气怎么样？挺好的。" * 30}, {"text": "短"}])
    chats = write_jsonl(tmp_path / "chats.jsonl", [{"instruction": "长" * 300, "output": "好"}] + unique_rows(2))
    rows = load_conversations([str(docs), str(chats)], allow_text=True).rows
    encoded, _ = encode_all(rows, tokenizer, resolve_template(tokenizer), EncodeOptions(max_len=32))
    model = SimpleNamespace(config=SimpleNamespace(max_position_embeddings=20))
    with pytest.raises(UserError, match=r"; (\d+) train sequence\(s\) over it\)") as refused:
        refuse_over_context(model, train=encoded)
    over = int(re.search(r"; (\d+) train sequence", str(refused.value)).group(1))
    rep = check_file([str(docs), str(chats)], tokenizer, max_len=32, context=20)
    assert rep.over_context == over and over >= 2 and rep.over_max_len == 1, (rep.over_context, over)
    assert f"{over} sequences are longer than the model's 20 positions" in " ".join(rep.problems)
    assert "1 rows exceed max_len 32: truncation drop drops 1" in " ".join(rep.problems)
    cut = check_file([str(docs), str(chats)], tokenizer, max_len=32, context=20, truncation="cut")
    assert (cut.over_context, cut.dropped) == (over, 1)  # its reply is past max_len: cut drops the chat row too


class Process:
    """Process `rank` of `world`; reduce adds the vectors the ranks before it reduced (run ranks in turn)."""

    def __init__(self, rank, world, seen):
        self.process_index, self.num_processes, self.seen = rank, world, seen
        self.device = torch.device("cpu")

    def reduce(self, vec, reduction="sum"):
        self.seen.append(vec.clone())
        return sum(self.seen)


def test_eval_sharding_gives_every_process_the_same_forwards(tmp_path, tokenizer, tiny_model_dir):
    """3 eval batches on 2 processes: both run 2 forwards (FSDP forwards are collective); the
    filler is not counted, so the 2-process loss equals the 1-process loss."""
    from transformers import AutoModelForCausalLM

    from weitiao.losses.sft import CausalLMLoss

    f = write_jsonl(tmp_path / "d.jsonl", unique_rows(3))
    cfg = sft_cfg(tmp_path, f, eval=[str(f)], packing=False)
    cfg.train.micro_batch_size = 1
    data = sft.prepare_data(cfg, tokenizer)
    loss_mod = CausalLMLoss(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32))
    calls = []
    forward = loss_mod.forward
    loss_mod.forward = lambda *a, **kw: calls.append(1) or forward(*a, **kw)
    one = sft.evaluate(loss_mod, data.eval, cfg, tokenizer.pad_token_id, Process(0, 1, []))
    seen, per_rank = [], []
    for rank in range(2):
        before = len(calls)
        two = sft.evaluate(loss_mod, data.eval, cfg, tokenizer.pad_token_id, Process(rank, 2, seen))
        per_rank.append(len(calls) - before)
    assert per_rank == [2, 2]
    assert two["eval_loss"] == pytest.approx(one["eval_loss"], rel=1e-9)


@pytest.mark.parametrize("recipe", ["sft", "dpo", "rm"])
def test_eval_files_and_eval_split_together_are_refused(recipe):
    """With data.eval files the split was silently off and its rows trained on (negative control: each alone)."""
    import importlib

    from weitiao.config import load_config

    cls = {"sft": "SFTConfig", "dpo": "DPOConfig", "rm": "RMConfig"}[recipe]
    config = getattr(importlib.import_module(f"weitiao.recipes.{recipe}"), cls)
    base = ["data.train=[a.jsonl]"]
    with pytest.raises(UserError, match="eval_split 0.2 is not used when data.eval files are given"):
        load_config(config, None, [*base, "data.eval=[b.jsonl]", "data.eval_split=0.2"])
    load_config(config, None, [*base, "data.eval=[b.jsonl]"])
    load_config(config, None, [*base, "data.eval_split=0.2"])


@pytest.mark.parametrize("key", [{"train_on_prompt": True}, {"train_turns": "last"}])
def test_prompt_and_turn_keys_on_raw_text_are_refused(tmp_path, tokenizer, key):
    """Raw-text rows train every token: train_on_prompt / train_turns would silently change nothing."""
    docs = write_jsonl(tmp_path / "docs.jsonl", [{"text": "今天天气怎么样？挺好的。"}, {"text": "短句"}])
    with pytest.raises(UserError, match=rf"^data.{next(iter(key))}: data.train is raw text"):
        sft.prepare_data(sft_cfg(tmp_path, docs, **key), tokenizer)
    assert sft.prepare_data(sft_cfg(tmp_path, docs), tokenizer).stats.kept == 2  # control: the defaults train
    mixed = write_jsonl(tmp_path / "mixed.jsonl", unique_rows(2))  # with chat rows beside them the keys act
    cfg = sft_cfg(tmp_path, docs, **key)
    cfg.data.train.append(str(mixed))
    assert sft.prepare_data(cfg, tokenizer).stats.kept == 4


@pytest.mark.parametrize("truncation", ["drop", "cut", "history"])
def test_data_check_truncation_counts_what_sft_training_does(tmp_path, tokenizer, truncation):
    """`data check` had no --truncation: over max_len it said 'see data.truncation', and counted the rows past the
    model's positions as if every row over max_len were dropped, while SFT with truncation cut trains them cut to
    max_len (and refuses those past the positions) and history trims them. Now data check applies the trainer's
    truncation with the trainer's code: its dropped/cut/trimmed/lost-end-of-turn counts are SFT's own, and the rows
    past the positions are those training keeps."""
    from weitiao.data.check import check_file

    rows = [
        {"instruction": "long question " * 40, "output": "ok"},  # reply past max_len: dropped even when cut
        {"instruction": "hi", "output": "a long answer " * 40},  # cut: trained up to max_len, end-of-turn lost
        {"instruction": "now?", "output": "yes", "history": [["an old question " * 12, "an old answer " * 12]]},
        {"instruction": "hi", "output": "hello"},
    ]
    f = write_jsonl(tmp_path / "d.jsonl", rows)
    s = sft.prepare_data(sft_cfg(tmp_path, f, truncation=truncation), tokenizer).stats  # max_len 128
    rep = check_file([str(f)], tokenizer, max_len=128, context=100, truncation=truncation)
    assert (rep.dropped, rep.cut, rep.lost_eot, rep.history_trimmed) == (
        s.dropped_too_long, s.cut, s.lost_eot, s.history_trimmed)  # fmt: skip
    assert (rep.over_max_len, rep.truncation, rep.dropped + rep.cut + rep.history_trimmed) == (3, truncation, 3)
    assert {"drop": (3, 0, 0), "cut": (2, 1, 0), "history": (2, 0, 1)}[truncation] == (
        rep.dropped, rep.cut, rep.history_trimmed)  # fmt: skip
    # the cut rows are max_len (128) long, past the 100 positions: training refuses them
    assert rep.over_context == {"drop": 0, "cut": 1, "history": 0}[truncation], rep
    assert any(f"truncation {truncation} " in p for p in rep.problems)


def test_data_check_truncation_option_takes_the_trainers_choices(tmp_path, tiny_model_dir):
    import json

    from typer.testing import CliRunner

    from weitiao.cli import app

    f = write_jsonl(tmp_path / "d.jsonl", [{"instruction": "hi", "output": "a long answer " * 40}])
    args = ["data", "check", str(f), "--model", str(tiny_model_dir), "--max-len", "64", "--json"]
    rep = json.loads(CliRunner().invoke(app, [*args, "--truncation", "cut"]).output)
    assert (rep["truncation"], rep["cut"], rep["lost_eot"], rep["dropped"]) == ("cut", 1, 1, 0)
    assert json.loads(CliRunner().invoke(app, args).output)["dropped"] == 1  # drop, the default
    bad = CliRunner().invoke(app, [*args, "--truncation", "cut_response"])  # DPO/RM's, not SFT's
    assert bad.exit_code != 0 and "SFT rows take drop|cut|history" in str(bad.output) + str(bad.exception)


def test_data_check_says_a_template_renders_no_raw_row_as_training_refuses_it(tmp_path, tokenizer):
    """`data check --template chatml` on a file of only raw text said 'no problems found', and training refuses that
    template; now the same finding. Chat rows and --template auto: no such line."""
    from weitiao.data.check import check_file

    text = write_jsonl(tmp_path / "t.jsonl", [{"text": f"周末在家躺着 {i}"} for i in range(3)])
    pc = write_jsonl(tmp_path / "pc.jsonl", [{"prompt": f"问{i}", "completion": "答"} for i in range(3)])
    pairs = write_jsonl(
        tmp_path / "p.jsonl", [{"prompt": f"问{i}", "chosen": "好", "rejected": "坏"} for i in range(3)]
    )
    chat = write_jsonl(tmp_path / "c.jsonl", CHAT_ROWS)
    said = "template 'chatml' renders no row: every row is raw text"
    for f, fmt in ((text, "auto"), (pc, "auto"), (pairs, "preference_raw")):
        assert any(p.startswith(said) for p in check_file([str(f)], tokenizer, "chatml", fmt=fmt).problems), f
        assert not any(p.startswith("template ") for p in check_file([str(f)], tokenizer, fmt=fmt).problems)
    for f in (chat, pairs):  # the template renders these
        assert not any(p.startswith("template ") for p in check_file([str(f)], tokenizer, "chatml").problems)
