"""`data show` shows what SFT trains: its truncation policy (default drop) and train_turns, and a row that
policy drops is one plain line, exit 0 (it crashed with a TypeError under the hard-coded `cut`)."""

import json
import re

from conftest import write_jsonl
from typer.testing import CliRunner

from weitiao.cli import app

runner = CliRunner()
LONG_PROMPT = {"instruction": "长" * 60, "output": "好"}  # its reply lies far past max_len 10
MULTI = {"instruction": "你好", "output": "嗨😊", "history": [["在吗" * 20, "在"]]}


def show(f, model, *args):
    r = runner.invoke(app, ["data", "show", str(f), "--model", str(model), "--plain", *args])
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    return r


def test_a_dropped_row_is_one_line_not_a_crash(tmp_path, tiny_model_dir):
    f = write_jsonl(tmp_path / "d.jsonl", [LONG_PROMPT])
    r = show(f, tiny_model_dir, "--max-len", "10")  # default truncation: drop, as data.truncation
    assert r.exit_code == 0
    line = rf"{re.escape(str(f))}:1: SFT drops this row \(truncation drop\): \d+ tokens, over max_len 10"
    assert re.fullmatch(line, r.output.strip()), r.output
    r = show(f, tiny_model_dir, "--max-len", "10", "--truncation", "cut")  # the old hard-coded policy
    assert r.exit_code == 0 and "SFT drops this row (truncation cut): cut to max_len 10 it keeps no trained" in r.output
    r = show(f, tiny_model_dir, "--max-len", "10", "--truncation", "history")
    assert r.exit_code == 0 and "still over max_len 10" in r.output


def test_truncation_policies_as_sft_applies_them(tmp_path, tiny_model_dir):
    f = write_jsonl(tmp_path / "d.jsonl", [MULTI])
    full = show(f, tiny_model_dir)
    n = int(full.output.split("tokens ")[1].split(" ")[0])
    assert full.exit_code == 0 and "⟦在<|im_end|>⟧" in full.output
    r = show(f, tiny_model_dir, "--max-len", str(n - 3))
    assert r.exit_code == 0 and "SFT drops this row (truncation drop)" in r.output  # cut used to show it cut
    r = show(f, tiny_model_dir, "--max-len", str(n - 3), "--truncation", "history")
    assert "(oldest exchanges dropped to fit max_len)" in r.output and "在吗" not in r.output
    assert "⟦嗨😊<|im_end|>⟧" in r.output
    r = show(f, tiny_model_dir, "--max-len", str(n - 3), "--truncation", "cut")
    assert "(cut to max_len; the last reply lost its end-of-turn token)" in r.output


def test_train_turns_option_matches_sft_and_last_turn_only_still_works(tmp_path, tiny_model_dir):
    f = write_jsonl(tmp_path / "d.jsonl", [MULTI])
    last = show(f, tiny_model_dir, "--train-turns", "last")
    assert "⟦在<|im_end|>⟧" not in last.output and "⟦嗨😊<|im_end|>⟧" in last.output
    assert show(f, tiny_model_dir, "--last-turn-only").output == last.output
    r = runner.invoke(app, ["data", "show", str(f), "--model", str(tiny_model_dir), "--truncation", "trim"])
    assert "--truncation 'trim': use one of drop, cut, history" in str(r.exception)


def test_a_pair_shows_both_sides_as_dpo_trains_them(tmp_path, tiny_model_dir):
    """A preference file was refused ('preference row in SFT data; use `weitiao dpo`'): there was no way to see how
    a pair (an HH transcript, ultrafeedback_binarized) is read before a run."""
    said = "\n\nHuman: 你好\n\nAssistant: I think "
    hh = {"chosen": said + "你好！", "rejected": said + "滚。"}
    f = write_jsonl(tmp_path / "hh.jsonl", [hh])
    r = show(f, tiny_model_dir)
    head = "<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n"
    assert r.exit_code == 0, r.output
    assert "chosen  tokens" in r.output and head + "⟦I think 你好！<|im_end|>⟧" in r.output
    assert "rejected  tokens" in r.output and head + "⟦I think 滚。<|im_end|>⟧" in r.output
    raw = show(f, tiny_model_dir, "--format", "preference_raw")
    assert "\n\nHuman: 你好\n\nAssistant:⟦ I think 滚。<|im_end|>⟧" in raw.output, raw.output  # the tiny EOS
    r = runner.invoke(app, ["data", "show", str(f), "--model", str(tiny_model_dir), "--train-turns", "last"])
    assert "--train-turns: SFT's; a pair trains its last reply" in str(r.exception)


def lf_dir(path):
    """A LLaMA-Factory data folder: dataset 'faq' maps the columns 问题/答案 of faq.json to prompt/response."""
    path.mkdir()
    rows = [{"问题": "几点开门", "答案": "九点"}, {"问题": "周末开吗", "答案": "开到五点"}]
    (path / "faq.json").write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    info = {"faq": {"file_name": "faq.json", "columns": {"prompt": "问题", "response": "答案"}}}
    (path / "dataset_info.json").write_text(json.dumps(info, ensure_ascii=False), encoding="utf-8")
    return path


def test_dataset_dir_shows_a_mapped_llamafactory_row(tmp_path, tiny_model_dir):
    """`data show` had no --dataset-dir: a LLaMA-Factory dataset with mapped columns (问题/答案) could not be
    previewed ('unknown format (keys ['答案', '问题'])' for its file). Now a name in dataset_info.json, read through
    its mapping as training reads it."""
    d = lf_dir(tmp_path / "lf")
    r = show("faq", tiny_model_dir, "--dataset-dir", str(d), "--index", "1")
    assert r.exit_code == 0, r.output
    assert "周末开吗" in r.output and "⟦开到五点<|im_end|>⟧" in r.output
    for name, index, said in (("faq", "2", "--index 2: faq has 2 rows (0..1)"),
                              ("nope", "0", "no dataset 'nope' (known: faq)")):  # fmt: skip
        r = runner.invoke(app, ["data", "show", name, "--model", str(tiny_model_dir), "--dataset-dir", str(d),
                                "--index", index])  # fmt: skip
        assert said in str(r.exception)


def test_a_pair_over_max_len_is_shown_as_the_chosen_truncation_treats_it(tmp_path, tiny_model_dir):
    """`data show --truncation cut_response` on a pair was refused ('SFT's; ... DPO/RM drop a pair over --max-len'),
    though DPO and RM take data.truncation cut_response: there was no way to see the cut a run trains. Now the pair
    goes through `encode_pair` with the truncation given: drop (the default) says why it is left out, cut_response
    shows the cut replies, an SFT-only truncation is refused."""
    pair = {"prompt": "你好", "chosen": "你好！", "rejected": "你好呀，" + "很高兴见到你，" * 8}
    f = write_jsonl(tmp_path / "p.jsonl", [pair])
    r = show(f, tiny_model_dir, "--max-len", "30")
    assert r.exit_code == 0 and "DPO and RM drop this pair (truncation drop): its longer side is" in r.output, r.output
    cut = show(f, tiny_model_dir, "--max-len", "30", "--truncation", "cut_response")
    assert cut.exit_code == 0 and "rejected  tokens 30 ·" in cut.output and "⟦你好！<|im_end|>⟧" in cut.output
    r = show(f, tiny_model_dir, "--max-len", "20", "--truncation", "cut_response")  # both cut inside 你好 (a tie)
    assert "(truncation cut_response): cut to max_len 20 its replies are the same tokens" in r.output, r.output
    r = show(f, tiny_model_dir, "--max-len", "12", "--truncation", "cut_response")
    assert "(truncation cut_response): its prompt alone is" in r.output, r.output
    r = runner.invoke(app, ["data", "show", str(f), "--model", str(tiny_model_dir), "--truncation", "cut"])
    assert "truncation 'cut': preference rows take drop|cut_response" in str(r.exception)


def test_a_max_len_no_trainer_takes_is_refused(tmp_path, tiny_model_dir):
    """`data check --max-len 0` reported '2 rows exceed max_len 0: truncation drop drops 2' and `data show --max-len 8`
    a row cut to 8 tokens, lengths every trainer refuses (data.max_len > 8); now one line, as the console's Data tab
    (whose own check let 1..8 through). Control: 9, the least a trainer takes, is shown."""
    f = write_jsonl(tmp_path / "d.jsonl", [{"instruction": "你好", "output": "你好呀"}])
    for cmd in ("check", "show"):
        for n in ("0", "8"):
            r = runner.invoke(app, ["data", cmd, str(f), "--model", str(tiny_model_dir), "--max-len", n])
            assert f"max_len {n}: the trainers' data.max_len is over 8" in str(r.exception), (cmd, n, r.output)
        r = runner.invoke(app, ["data", cmd, str(f), "--model", str(tiny_model_dir), "--max-len", "9"])
        if cmd == "check":  # checked at 9: the row's 25 tokens leave nothing to train, which fails as training does
            assert "max_len 9 leaves no rows to train" in str(r.exception), r.output
        else:
            assert r.exit_code == 0, r.output


def test_raw_text_rows_are_shown_as_sft_trains_them(tmp_path, tiny_model_dir):
    """`data show` refused a file `weitiao sft` trains ('a raw-text row (text, or string prompt/completion); this
    command takes chats'), even for its chat rows: a TRL string prompt/completion row or a `text` document could not be
    previewed from the CLI (the console's Data tab shows them). Now shown as SFT encodes them: raw text + EOS, no
    template; the completion trained, the prompt not; a document trained whole, in pieces of max_len."""
    rows = [
        {"prompt": "问：今天天气怎么样？\n答：", "completion": "挺好的"},
        {"prompt": [{"role": "user", "content": "你好"}], "completion": [{"role": "assistant", "content": "嗨"}]},
    ]
    f = write_jsonl(tmp_path / "raw.jsonl", rows)
    r = show(f, tiny_model_dir)
    assert r.exit_code == 0, r.output
    assert r.output.endswith("问：今天天气怎么样？\n答：⟦挺好的<|im_end|>⟧\n"), r.output
    assert "<|im_start|>" not in r.output and "raw.jsonl:1  tokens" in r.output
    r = show(f, tiny_model_dir, "--index", "1")
    assert r.exit_code == 0 and "<|im_start|>assistant\n⟦嗨<|im_end|>⟧" in r.output, r.output
    text = "今天天气怎么样？挺好的，大晴天☀️，要出去玩吗？" * 2  # 16 tokens + EOS
    doc = write_jsonl(tmp_path / "doc.jsonl", [{"text": text}])
    r = show(doc, tiny_model_dir)
    assert r.exit_code == 0 and r.output.endswith(f"⟦{text}<|im_end|>⟧\n"), r.output
    r = show(doc, tiny_model_dir, "--max-len", "9")  # a long document is trained in pieces
    assert r.exit_code == 0 and "tokens 17 · trained 17 · masked 0  (2 pieces of max_len 9)" in r.output, r.output
    assert r.output.count("⟦") == 2, r.output
    r = show(f, tiny_model_dir, "--max-len", "10")  # 14 tokens + EOS
    assert (
        r.exit_code == 0 and "raw.jsonl:1: SFT drops this row (truncation drop): 15 tokens, over max_len 10" in r.output
    ), r.output
    r = show(f, tiny_model_dir, "--max-len", "14", "--truncation", "cut")  # raw text ends with EOS: no end-of-turn
    assert r.exit_code == 0 and "(cut to max_len; the last reply lost its EOS token)" in r.output, r.output


def test_the_notes_of_the_read_are_shown(tmp_path, tiny_model_dir):
    """`data show` printed a LLaMA-Factory alpaca row without its `system` and `history` and said nothing (`data check`
    and `weitiao sft` say the entry's columns do not map them): the user looking at the row was not told why its
    system prompt and earlier turns were missing."""
    d = tmp_path / "lf"
    d.mkdir()
    row = {"instruction": "几点开门", "output": "九点", "system": "你是店员。", "history": [["在吗", "在"]]}
    (d / "a.json").write_text(json.dumps([row], ensure_ascii=False), encoding="utf-8")
    (d / "dataset_info.json").write_text(json.dumps({"a": {"file_name": "a.json"}}), encoding="utf-8")
    r = show("a", tiny_model_dir, "--dataset-dir", str(d))
    assert r.exit_code == 0 and "你是店员" not in r.output and "⟦九点<|im_end|>⟧" in r.output, r.output
    assert "note: a: 1 row(s) hold a 'system' column that the entry's columns do not map" in r.output, r.output
    assert "note: a: 1 row(s) hold a 'history' column that the entry's columns do not map" in r.output, r.output


def test_a_kto_file_is_shown_as_weitiao_kto_trains_it(tmp_path, tiny_model_dir):
    """`data show` of a KTO file (`data check` lints it as one) said 'train them with `weitiao kto`' and showed nothing:
    the rows of the trainer it names could not be previewed. Now shown as `weitiao kto` encodes them: the last reply
    trained, with its label; SFT's flags and SFT's truncation are refused."""
    u, a = {"role": "user", "content": "你好"}, {"role": "assistant", "content": "嗨"}
    earlier = [u, {**a, "content": "在"}, u]
    rows = [{"prompt": [u], "completion": [a], "label": True},
            {"prompt": earlier, "completion": [{**a, "content": "滚"}], "label": False}]  # fmt: skip
    f = write_jsonl(tmp_path / "kto.jsonl", rows)
    r = show(f, tiny_model_dir)
    assert r.exit_code == 0 and "· KTO desirable" in r.output and "assistant\n⟦嗨<|im_end|>⟧" in r.output, r.output
    r = show(f, tiny_model_dir, "--index", "1")  # the judged reply alone: the earlier one is context
    assert "· KTO undesirable" in r.output and "⟦在" not in r.output and "⟦滚<|im_end|>⟧" in r.output, r.output
    for flag, said in (("--train-on-prompt", "--train-on-prompt: SFT's; KTO judges the last reply"),
                       ("--truncation=history", "--truncation 'history': KTO rows take drop|cut")):  # fmt: skip
        r = runner.invoke(app, ["data", "show", str(f), "--model", str(tiny_model_dir), flag])
        assert said in str(r.exception), r.output


def test_a_file_without_rows_is_said_so(tmp_path, tiny_model_dir):
    """`data show` of an empty (or blank-lines) file said '--index 0: FILE has 0 rows (0..-1)', blaming the index;
    now 'FILE: no rows', as `data check` says it."""
    f = tmp_path / "blank.jsonl"
    f.write_text("\n\n", encoding="utf-8")
    r = runner.invoke(app, ["data", "show", str(f), "--model", str(tiny_model_dir)])
    assert str(r.exception) == f"{f}: no rows", r.exception
