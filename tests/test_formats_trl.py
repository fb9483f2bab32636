"""TRL dataset types, OpenAI `weight`, KTO refusal and plain-text pre-training rows (issue #17).

TRL rows are its documented examples (docs: dataset_formats), written by `datasets`; the implicit-prompt
split is checked against trl.data_utils.extract_prompt.
"""

import pytest
from conftest import write_jsonl
from datasets import Dataset
from trl.data_utils import _tokenize, common_prefix_length, extract_prompt

from weitiao.data.chat import IGNORE, EncodeOptions, encode, encode_all
from weitiao.data.check import check_file
from weitiao.data.formats import Conversation, Document, PreferencePair, load_conversations, load_rows
from weitiao.data.preference import load_pairs
from weitiao.data.templates import resolve_template
from weitiao.errors import UserError
from weitiao.recipes import sft

SKY_USER = {"role": "user", "content": "What color is the sky?"}
BLUE = {"role": "assistant", "content": "It is blue."}
GREEN = {"role": "assistant", "content": "It is green."}
TRL_PREFERENCE = {
    "standard": {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."},
    "standard_implicit": {"chosen": "The sky is blue.", "rejected": "The sky is green."},
    "conversational": {"prompt": [SKY_USER], "chosen": [BLUE], "rejected": [GREEN]},
    "conversational_implicit": {"chosen": [SKY_USER, BLUE], "rejected": [SKY_USER, GREEN]},
}


def by_datasets(path, rows):
    Dataset.from_list(rows).to_json(str(path), force_ascii=False)
    return path


def trained_text(enc, tokenizer):
    return tokenizer.decode([t for t, lab in zip(enc.input_ids, enc.labels) if lab != IGNORE])


@pytest.mark.parametrize("kind", list(TRL_PREFERENCE))
def test_trl_preference_rows_split_like_extract_prompt(tmp_path, kind):
    row = TRL_PREFERENCE[kind]
    pair = load_pairs([str(by_datasets(tmp_path / "p.jsonl", [row] * 3))], "auto", False).rows[0]
    ref = extract_prompt(row) if "prompt" not in row else row
    prompt = ref["prompt"] if isinstance(ref["prompt"], list) else [{"role": "user", "content": ref["prompt"]}]

    def reply(v):
        return v[0]["content"] if isinstance(v, list) else v

    assert (pair.prompt, pair.chosen, pair.rejected) == (prompt, reply(ref["chosen"]), reply(ref["rejected"]))


def test_ultrafeedback_binarized_layout(tmp_path):
    multi = [SKY_USER, BLUE, {"role": "user", "content": "Why?"}]
    rows = [
        {"prompt": "What color is the sky?", "prompt_id": "a1", "chosen": [SKY_USER, BLUE],
         "rejected": [SKY_USER, GREEN], "messages": [SKY_USER, BLUE], "score_chosen": 8.0, "score_rejected": 3.0},
        {"prompt": "Why?", "prompt_id": "a2", "chosen": multi + [{"role": "assistant", "content": "Rayleigh."}],
         "rejected": multi + [{"role": "assistant", "content": "Paint."}],
         "messages": multi + [{"role": "assistant", "content": "Rayleigh."}],
         "score_chosen": 9.0, "score_rejected": 1.0},
    ]  # fmt: skip
    got = load_pairs([str(by_datasets(tmp_path / "uf.jsonl", rows))], "auto", False).rows
    assert [(p.prompt, p.chosen, p.rejected) for p in got] == [
        ([SKY_USER], "It is blue.", "It is green."),
        (multi, "Rayleigh.", "Paint."),
    ]
    # Old code read `messages` (the chosen conversation) as the prompt and refused the row; a prompt column
    # that disagrees with the shared conversation is refused, not silently dropped.
    bad = write_jsonl(tmp_path / "bad.jsonl", [{**rows[0], "prompt": "Something else?"}])
    with pytest.raises(UserError, match=r"bad.jsonl:1: prompt: differs from the last user turn"):
        load_pairs([str(bad)], "auto", False)
    # `messages` is the chosen conversation (or a prompt list, the shared one); another was unread without a word
    for k, other in (("messages", rows[0]["rejected"]), ("prompt", [SKY_USER, GREEN])):
        bad = write_jsonl(tmp_path / "bad.jsonl", [{**rows[0], k: other}])
        with pytest.raises(UserError, match=rf"bad.jsonl:1: {k}: is neither the conversation chosen and rejected"):
            load_pairs([str(bad)], "auto", False)
    ok = write_jsonl(tmp_path / "ok.jsonl", [{**rows[0], "prompt": [SKY_USER]}])
    assert load_pairs([str(ok)], "auto", False).rows[0].prompt == [SKY_USER]


def test_trl_prompt_completion_trains_only_the_completion(tmp_path, tokenizer):
    std = {"prompt": "The sky is", "completion": " blue."}
    conv = {"prompt": [SKY_USER, BLUE, {"role": "user", "content": "And at night?"}],
            "completion": [{"role": "assistant", "content": "Black."}]}  # fmt: skip
    template = resolve_template(tokenizer, "chatml")
    a = load_conversations(by_datasets(tmp_path / "s.jsonl", [std]), allow_text=True)
    b = load_conversations(by_datasets(tmp_path / "c.jsonl", [conv]))
    assert a.format == b.format == "prompt_completion"
    # Standard rows are raw text, as TRL's SFTTrainer tokenizes them: no template, EOS appended, loss from
    # where the prompt's tokens and the prompt+completion tokens diverge.
    assert a.rows[0] == Document(" blue.", a.rows[0].source, prompt="The sky is")
    (enc,), _ = encode_all(a.rows, tokenizer, template, EncodeOptions())
    p = _tokenize(tokenizer, "The sky is")["input_ids"]
    pc = _tokenize(tokenizer, "The sky is blue." + tokenizer.eos_token)["input_ids"]
    k = common_prefix_length(p, pc)
    assert enc.input_ids == pc and enc.labels == [IGNORE] * k + pc[k:] and k > 0
    enc = encode(b.rows[0], tokenizer, template, EncodeOptions())
    # The assistant turn inside the prompt is context (TRL's completion-only loss); negative control: the same
    # conversation as plain messages trains both replies.
    assert trained_text(enc, tokenizer) == "Black.<|im_end|>"
    plain = Conversation([{k: v for k, v in m.items() if k != "weight"} for m in b.rows[0].messages])
    assert "It is blue." in trained_text(encode(plain, tokenizer, template, EncodeOptions()), tokenizer)


def test_openai_weight_zero_turn_is_not_trained(tmp_path, tokenizer):
    msgs = [SKY_USER, {**BLUE, "weight": 0}, {"role": "user", "content": "Sure?"}, {**GREEN, "weight": 1}]
    conv = load_conversations(write_jsonl(tmp_path / "w.jsonl", [{"messages": msgs}])).rows[0]
    template = resolve_template(tokenizer, "chatml")
    assert trained_text(encode(conv, tokenizer, template, EncodeOptions()), tokenizer) == "It is green.<|im_end|>"
    unweighted = Conversation([{k: v for k, v in m.items() if k != "weight"} for m in conv.messages])
    both = trained_text(encode(unweighted, tokenizer, template, EncodeOptions()), tokenizer)
    assert "It is blue." in both and "It is green." in both  # negative control
    for bad, why in [
        ({**GREEN, "weight": 0.5}, r"messages\[3\].weight: expected 0 or 1, got 0.5"),
        ({**GREEN, "weight": True}, r"messages\[3\].weight: expected 0 or 1, got True"),
        ({**GREEN, "weight": 0}, r"messages: every assistant message has weight 0"),
    ]:
        path = write_jsonl(tmp_path / "bad.jsonl", [{"messages": msgs}, {"messages": msgs[:3] + [bad]}])
        with pytest.raises(UserError, match=rf"bad.jsonl:2: {why}"):
            load_conversations(path)
    path = write_jsonl(tmp_path / "u.jsonl", [{"messages": [{**SKY_USER, "weight": 1}, BLUE]}])
    with pytest.raises(UserError, match=r"u.jsonl:1: messages\[0\].weight: only assistant messages take a weight"):
        load_conversations(path)


def test_kto_rows_are_refused_not_trained(tmp_path):
    trl_kto = [{"prompt": "The sky is", "completion": " blue.", "label": True},
               {"prompt": "The sky is", "completion": " green.", "label": False}]  # fmt: skip
    lf_kto = [{"messages": [SKY_USER, GREEN], "label": False}]  # LLaMA-Factory kto_en_demo layout
    for name, rows in [("trl.jsonl", trl_kto), ("lf.jsonl", lf_kto)]:
        path = by_datasets(tmp_path / name, rows)
        for skip in (False, True):  # --skip-invalid does not turn refusal into partial training
            with pytest.raises(UserError, match=rf"{name}:1: label: unpaired feedback \(KTO"):
                load_conversations(path, skip_invalid=skip)
    # Negative control: the same rows without the label are plain SFT rows.
    assert load_conversations(write_jsonl(tmp_path / "sft.jsonl", [{"messages": [SKY_USER, GREEN]}])).kept == 1


def test_feedback_labels_in_words_are_refused_too(tmp_path):
    """A label of "undesirable" (KTO's word), "thumbs_down", 👎 or -1 trained the bad reply as SFT: only true/false and
    0/1 were read as feedback. A category label (a sentiment's "positive" too) and a float score stay plain SFT rows."""
    for label in ("undesirable", "Desirable", "👎", -1, "thumbs_down"):
        path = write_jsonl(tmp_path / "fb.jsonl", [{"prompt": "天空是", "completion": "绿色的。", "label": label}])
        for skip in (False, True):
            with pytest.raises(UserError, match=r"fb.jsonl:1: label: unpaired feedback \(KTO"):
                load_conversations(path, skip_invalid=skip)
    for label in ("greeting", "positive", 0.8):
        path = write_jsonl(tmp_path / "cat.jsonl", [{"messages": [SKY_USER, GREEN], "label": label}])
        assert load_conversations(path).kept == 1


def test_text_rows_are_documents_with_eos_and_full_loss(tmp_path, tokenizer):
    docs = [{"text": "天空是蓝色的。" * 3}, {"text": "The sky is blue. " * 40}]
    path = by_datasets(tmp_path / "t.jsonl", docs)
    loaded = load_conversations(path, allow_text=True)
    assert loaded.format == "text" and all(isinstance(d, Document) for d in loaded.rows)
    with pytest.raises(UserError, match=r"t.jsonl:1: a raw-text row"):
        load_conversations(path)  # commands that need conversations say so
    template = resolve_template(tokenizer, "chatml")
    enc, stats = encode_all(loaded.rows, tokenizer, template, EncodeOptions(max_len=64))
    # TRL's language-modeling path: text + EOS, tokenized without a template; every token trained.
    ids0 = _tokenize(tokenizer, docs[0]["text"] + tokenizer.eos_token)["input_ids"]
    assert enc[0].input_ids == enc[0].labels == ids0 and ids0[-1] == tokenizer.eos_token_id
    long_ids = _tokenize(tokenizer, docs[1]["text"] + tokenizer.eos_token)["input_ids"]
    pieces = enc[1:]
    assert [t for e in pieces for t in e.input_ids] == long_ids and all(len(e) <= 64 for e in pieces)
    assert stats.rows == stats.kept == 2 and stats.doc_pieces == len(pieces) - 1 > 0


def test_sft_prepares_text_rows_packed(tmp_path, tokenizer):
    path = by_datasets(tmp_path / "t.jsonl", [{"text": f"文档{i}:" + "天空是蓝色的。" * (i + 1)} for i in range(6)])
    cfg = sft.SFTConfig(
        data=sft.DataSpec(train=[str(path)], format="text", max_len=32), train=sft.TrainSpec(out=str(tmp_path / "r"))
    )
    data = sft.prepare_data(cfg, tokenizer)
    assert data.read == data.stats.kept == 6 and len(data.train) == 6 + data.stats.doc_pieces
    assert all(e.labels == e.input_ids for e in data.train)
    assert sum(e.input_ids[-1] == tokenizer.eos_token_id for e in data.train) == 6  # one EOS per document


def test_preference_rows_keep_their_types(tmp_path):
    # LLaMA-Factory's own ranking files (no dataset_info needed): alpaca and sharegpt layouts.
    alpaca = {"instruction": "天空", "input": "什么颜色", "chosen": "蓝色", "rejected": "绿色"}
    sharegpt = {"conversations": [{"from": "human", "value": "天空什么颜色"}],
                "chosen": {"from": "gpt", "value": "蓝色"}, "rejected": {"from": "gpt", "value": "绿色"}}  # fmt: skip
    for row in (alpaca, sharegpt):
        got = load_rows(write_jsonl(tmp_path / "r.jsonl", [row])).rows[0]
        assert isinstance(got, PreferencePair) and (got.chosen, got.rejected) == ("蓝色", "绿色")
        assert got.prompt[-1]["content"] in ("天空\n什么颜色", "天空什么颜色")


def test_data_check_counts_every_layout(tmp_path, tokenizer):
    import gzip
    import json

    import zstandard

    pref = [TRL_PREFERENCE["conversational_implicit"], TRL_PREFERENCE["standard_implicit"],
            {"chosen": [SKY_USER, BLUE], "rejected": [SKY_USER, BLUE]},  # identical
            {"prompt": "The sky is", "chosen": " blue.", "rejected": ""}]  # fmt: skip
    Dataset.from_list([{"text": "天空是蓝色的。"}] * 3).save_to_disk(str(tmp_path / "text_saved"))
    pc = by_datasets(tmp_path / "pc.jsonl", [{"prompt": "The sky is", "completion": " blue."}] * 2)
    (tmp_path / "pc.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(pc.read_bytes()))
    (tmp_path / "a.csv").write_text("instruction,input,output\n问,,答\n问2,补充,答2\n", encoding="utf-8")
    ds = Dataset.from_list([{"messages": [SKY_USER, {**BLUE, "weight": 0}, SKY_USER, GREEN]}] * 2)
    for i in range(2):
        ds.shard(2, i).to_parquet(str(tmp_path / f"w-{i}.parquet"))
    with gzip.open(tmp_path / "uf.jsonl.gz", "wt") as f:
        f.write(json.dumps({"prompt": SKY_USER["content"], "messages": [SKY_USER, BLUE],
                            "chosen": [SKY_USER, BLUE], "rejected": [SKY_USER, GREEN]}) + "\n")  # fmt: skip
    cases = [
        (str(tmp_path / "w-*.parquet"), dict(read=2, kept=2, format="openai", duplicate_rows=1)),
        (tmp_path / "uf.jsonl.gz", dict(read=1, kept=1, pairs=1, format="preference")),
        (tmp_path / "text_saved", dict(read=3, kept=3, documents=3, duplicate_rows=2, missing_eos=0)),
        (tmp_path / "pc.jsonl.zst", dict(read=2, kept=2, duplicate_rows=1, format="prompt_completion")),
        (tmp_path / "a.csv", dict(read=2, kept=2, format="alpaca")),
        (write_jsonl(tmp_path / "pref.jsonl", pref), dict(read=4, kept=4, pairs=4, identical_pairs=1, empty_replies=1)),
    ]
    for path, want in cases:
        rep = check_file([str(path)], tokenizer)
        assert {k: getattr(rep, k) for k in want} == want, path
    assert any("chosen == rejected" in p for p in rep.problems) and any("empty chosen" in p for p in rep.problems)
    with pytest.raises(UserError, match="is identical to chosen"):  # training still refuses them
        load_pairs([str(path)], "auto", False)
    # a pair's `weight` stops `weitiao dpo` without data.weight_field (and `weitiao rm` always): data check was silent
    weighted = write_jsonl(tmp_path / "w.jsonl", [{"prompt": "天空", "chosen": "蓝", "rejected": "绿", "weight": 2}])
    problems = check_file([str(weighted)], tokenizer).problems
    assert problems == [f"1 pairs have a `weight` column (first {weighted}:1): `weitiao dpo` reads it only with "
                        "data.weight_field=weight and stops on it otherwise; `weitiao rm` refuses it"]  # fmt: skip


@pytest.mark.slow
def test_sft_trains_on_text_rows(tmp_path, tiny_model_dir):
    from weitiao.config import load_config
    from weitiao.train.log import read_metrics

    path = by_datasets(tmp_path / "t.jsonl", [{"text": f"文档{i}:" + "天空是蓝色的。" * (i + 2)} for i in range(12)])
    over = [f"model.path={tiny_model_dir}", f"data.train=[{path}]", "data.format=text", f"train.out={tmp_path / 'r'}",
            "train.progress=false", "train.tensorboard=false", "train.micro_batch_size=2", "data.max_len=48",
            "train.max_steps=4", "train.lr=5e-3", "train.warmup_ratio=0"]  # fmt: skip
    sft.run(load_config(sft.SFTConfig, None, over))
    losses = [r["loss"] for r in read_metrics(tmp_path / "r", "train")]
    data = read_metrics(tmp_path / "r", "data")[0]
    assert len(losses) == 4 and losses[-1] < losses[0] - 0.3
    assert data["read"] == data["kept"] == 12 and data["doc_pieces"] > 0


def test_pair_prompt_in_a_column_we_do_not_read_is_refused_not_guessed(tmp_path):
    """Intel/orca_dpo_pairs keeps its prompt in `question`: read as TRL's implicit prompt, the pair's prompt was the
    replies' shared prefix ('The answer is') and the question was dropped."""
    orca = {"system": "", "question": "What is 2+2?", "chosen": "The answer is 4.", "rejected": "The answer is 5."}
    for key in ("question", "query", "input"):
        row = {**{k: v for k, v in orca.items() if k != "question"}, key: orca["question"]}
        with pytest.raises(UserError, match=rf"o.jsonl:1: {key}: not read as the prompt.*rename it to 'prompt'"):
            load_pairs([str(write_jsonl(tmp_path / "o.jsonl", [row]))], "auto", False)
    renamed = {**{k: v for k, v in orca.items() if k != "question"}, "prompt": orca["question"]}  # negative control
    pair = load_pairs([str(write_jsonl(tmp_path / "r.jsonl", [renamed]))], "auto", False).rows[0]
    assert (pair.prompt, pair.chosen) == ([{"role": "user", "content": "What is 2+2?"}], "The answer is 4.")
    implicit = {"chosen": "The sky is blue.", "rejected": "The sky is green.", "id": 7}  # TRL's: still split
    assert load_pairs([str(write_jsonl(tmp_path / "i.jsonl", [implicit]))], "auto", False).rows[0].chosen == " blue."
    apart = {"chosen": "Blue.", "rejected": "Green."}  # the reason, not "chosen: is empty"
    with pytest.raises(UserError, match=r"a.jsonl:1: rejected: shares no prompt with chosen"):
        load_pairs([str(write_jsonl(tmp_path / "a.jsonl", [apart]))], "auto", False)


def test_implicit_conversations_that_part_before_the_last_reply_say_where(tmp_path):
    why, again = {"role": "user", "content": "Why?"}, {"role": "assistant", "content": "Rayleigh."}
    row = {"chosen": [SKY_USER, BLUE, why, again], "rejected": [SKY_USER, GREEN, why, again]}
    with pytest.raises(UserError, match=r"p.jsonl:1: rejected\[1\]: differs from chosen before the last reply"):
        load_pairs([str(write_jsonl(tmp_path / "p.jsonl", [row]))], "auto", False)
    row["rejected"] = [SKY_USER, BLUE, why, {"role": "assistant", "content": "Paint."}]  # negative control
    assert load_pairs([str(write_jsonl(tmp_path / "p.jsonl", [row]))], "auto", False).rows[0].rejected == "Paint."


def test_pair_with_tools_is_refused_not_rendered_without_them(tmp_path):
    tools = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]
    row = {"prompt": [SKY_USER], "chosen": [BLUE], "rejected": [GREEN], "tools": tools}
    with pytest.raises(UserError, match=r"t.jsonl:1: tools: a pair is rendered without tools"):
        load_pairs([str(write_jsonl(tmp_path / "t.jsonl", [row]))], "auto", False)
    for none in ([], "[]"):  # negative control: no tools given (LLaMA-Factory writes "[]")
        row["tools"] = none
        got = load_pairs([str(write_jsonl(tmp_path / "t.jsonl", [row]))], "auto", False).rows[0]
        assert got.chosen == "It is blue."


@pytest.mark.parametrize(
    ("row", "why"),
    [
        ({"system": "简洁", "prompt": "The sky is", "completion": " blue."}, "system: string prompt/completion rows"),
        ({"prompt": "The sky is", "completion": " blue.", "history": [["a", "b"]]}, "history: not read"),
        (
            {"prompt": [SKY_USER], "completion": [{**BLUE, "weight": 0}]},
            "completion: every assistant message has weight",
        ),
        (
            {"prompt": "What color?", "completion": [BLUE]},
            "completion: a list of messages while the prompt is a string",
        ),
        (
            {"prompt": "What color?", "chosen": [{**BLUE, "weight": 0}], "rejected": [GREEN]},
            r"chosen.weight: a reply's",
        ),
    ],
)
def test_keys_a_row_has_no_place_for_are_refused_not_dropped(tmp_path, row, why):
    """The string row's system prompt was dropped (raw text has no place for it), a reply's weight 0 was dropped,
    a completion with weight 0 trained nothing."""
    with pytest.raises(UserError, match=rf"r.jsonl:1: {why}"):
        load_rows(write_jsonl(tmp_path / "r.jsonl", [row]))
    row = {k: v for k, v in row.items() if k not in ("system", "history")}  # negative control: the row without it
    if isinstance(row["prompt"], str) and "completion" in row:
        assert load_rows(write_jsonl(tmp_path / "ok.jsonl", [row | {"completion": " blue."}])).kept == 1
    elif "completion" in row:
        assert load_rows(write_jsonl(tmp_path / "ok.jsonl", [row | {"completion": [BLUE]}])).kept == 1
    else:
        assert load_rows(write_jsonl(tmp_path / "ok.jsonl", [row | {"chosen": [BLUE]}])).kept == 1


@pytest.mark.parametrize(
    "row, want",
    [
        ({"prompt": "翻译成英文", "input": "你好", "chosen": "Hello", "rejected": "Hi"},
         r"input: not read beside 'prompt'"),
        ({"prompt": "再说一遍", "history": [["你好", "你好！"]], "chosen": "你好！", "rejected": "不"},
         r"history: not read beside 'prompt'"),
        ({"messages": [SKY_USER], "history": [["a", "b"]], "chosen": "x", "rejected": "y"},
         r"history: not read beside 'messages'"),
        ({"prompt": [SKY_USER], "chosen": [BLUE], "rejected": [GREEN], "completion": [GREEN]},
         r"completion: a reply beside chosen/rejected that is not chosen"),
    ],
)  # fmt: skip
def test_a_pairs_sft_keys_are_refused_not_dropped(tmp_path, row, want):
    """The text to translate (`input`) and earlier turns (`history`) beside a pair's prompt, and a second reply,
    were dropped without a word: the pair trained on '翻译成英文' alone."""
    with pytest.raises(UserError, match=r"p.jsonl:1: " + want):
        load_pairs([str(write_jsonl(tmp_path / "p.jsonl", [row]))], "auto", False)
    # negative control: the same keys where a pair reads them (alpaca ranking), and a completion that is chosen
    ranked = {"instruction": "翻译成英文", "input": "你好", "history": [["在吗", "在"]], "chosen": "Hello",
              "rejected": "Hi"}  # fmt: skip
    pair = load_pairs([str(write_jsonl(tmp_path / "r.jsonl", [ranked]))], "auto", False).rows[0]
    assert pair.prompt[-1] == {"role": "user", "content": "翻译成英文\n你好"} and len(pair.prompt) == 3
    same = {"prompt": [SKY_USER], "chosen": [BLUE], "rejected": [GREEN], "completion": [BLUE]}
    assert load_pairs([str(write_jsonl(tmp_path / "s.jsonl", [same]))], "auto", False).rows[0].chosen == BLUE["content"]
