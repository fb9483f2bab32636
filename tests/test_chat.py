import re

import pytest
from conftest import build_tokenizer

from weitiao.data.chat import IGNORE, EncodeOptions, encode
from weitiao.data.check import token_segments
from weitiao.data.formats import Conversation
from weitiao.data.templates import resolve_template
from weitiao.errors import UserError

CONV = Conversation(
    [
        {"role": "system", "content": "你是朋友"},
        {"role": "user", "content": "你好"},
        {"role": "assistant", "content": "嗨😊"},
        {"role": "user", "content": "在干嘛"},
        {"role": "assistant", "content": "上班呢，你呢？"},
    ]
)


def trained_text(enc, tok):
    return [s for s, trained in token_segments(enc, tok) if trained]


@pytest.mark.parametrize("name", ["auto", "chatml"])
def test_only_replies_and_end_of_turn_are_trained(tokenizer, name):
    t = resolve_template(tokenizer, name)
    enc = encode(CONV, tokenizer, t, EncodeOptions())
    assert trained_text(enc, tokenizer) == ["嗨😊<|im_end|>", "上班呢，你呢？<|im_end|>"]
    assert enc.ends_with_eot


def test_train_on_prompt_and_last_turn(tokenizer):
    t = resolve_template(tokenizer)
    enc = encode(CONV, tokenizer, t, EncodeOptions(train_on_prompt=True))
    assert enc.labels == enc.input_ids
    last = encode(CONV, tokenizer, t, EncodeOptions(train_turns="last"))
    assert trained_text(last, tokenizer) == ["上班呢，你呢？<|im_end|>"]


def test_mask_matches_transformers_generation_markers(tokenizer):
    """Peer check: transformers' own assistant mask from a {% generation %} template."""
    marked = (
        "{% for m in messages %}{% if m['role'] == 'assistant' %}{{ '<|im_start|>assistant\\n' }}"
        "{% generation %}{{ m['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}"
        "{% else %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endif %}{% endfor %}"
    )
    ref = tokenizer.apply_chat_template(
        CONV.messages, chat_template=marked, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    enc = encode(CONV, tokenizer, resolve_template(tokenizer, "chatml"), EncodeOptions())
    assert enc.input_ids == list(ref["input_ids"])
    assert [int(x != IGNORE) for x in enc.labels] == list(ref["assistant_masks"])


def test_plain_template_closes_turns_with_eos():
    tok = build_tokenizer(chat_template=None, eos="<|endoftext|>")
    t = resolve_template(tok, "auto")
    assert t.name == "plain" and t.eot == "<|endoftext|>"
    enc = encode(CONV, tok, t, EncodeOptions())
    assert [s.strip() for s in trained_text(enc, tok)] == ["嗨😊<|endoftext|>", "上班呢，你呢？<|endoftext|>"]


def test_plain_template_starts_with_the_bos_the_tokenizer_adds():
    """A Llama-2/Mistral base (no chat template, a tokenizer that puts BOS before every text) trained its chat rows
    without BOS: templates are tokenized without special tokens, while its raw-text rows and pre-training had one."""
    from tokenizers.processors import TemplateProcessing

    from weitiao.data.chat import encode_document
    from weitiao.data.formats import Document

    tok = build_tokenizer(chat_template=None, eos="<|endoftext|>")
    tok.add_special_tokens({"bos_token": "<|im_start|>"})
    bos = tok.bos_token_id
    tok.backend_tokenizer.post_processor = TemplateProcessing(
        single="<|im_start|> $A", special_tokens=[("<|im_start|>", bos)]
    )
    enc = encode(CONV, tok, resolve_template(tok, "auto"), EncodeOptions())
    assert enc.input_ids[0] == bos and enc.input_ids.count(bos) == 1
    assert encode_document(Document("你好"), tok, EncodeOptions())[0].input_ids[0] == bos  # as raw text gets it
    assert [s.strip() for s in trained_text(enc, tok)] == ["嗨😊<|endoftext|>", "上班呢，你呢？<|endoftext|>"]
    plain = build_tokenizer(chat_template=None, eos="<|endoftext|>")  # negative control: a tokenizer adding none
    assert resolve_template(plain, "auto").jinja.startswith("{% for m in messages %}")


def test_shipped_chatml_starts_with_the_bos_the_tokenizer_adds():
    """ChatML chosen for a Mistral-style base (a tokenizer that puts `<s>` before every text) trained without it."""
    from tokenizers.processors import TemplateProcessing

    tok = build_tokenizer(chat_template=None, eos="<|endoftext|>")
    tok.add_special_tokens({"bos_token": "<s>"})
    tok.backend_tokenizer.post_processor = TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.bos_token_id)]
    )
    enc = encode(CONV, tok, resolve_template(tok, "chatml"), EncodeOptions())
    assert enc.input_ids[0] == tok.bos_token_id and enc.input_ids.count(tok.bos_token_id) == 1
    assert [s.strip() for s in trained_text(enc, tok)] == ["嗨😊<|im_end|>", "上班呢，你呢？<|im_end|>"]
    plain = build_tokenizer(chat_template=None, eos="<|endoftext|>")  # negative control: a tokenizer adding none
    assert resolve_template(plain, "chatml").jinja == resolve_template(tok, "chatml").jinja[len("{{ bos_token }}") :]


def test_template_without_end_of_turn_gets_eos_appended():
    bare = "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\\n' }}{% endfor %}"
    tok = build_tokenizer(chat_template=bare, eos="<|endoftext|>")
    t = resolve_template(tok, "auto")
    assert t.appends_eos and t.eot == "<|endoftext|>"
    enc = encode(CONV, tok, t, EncodeOptions())
    assert [s.strip() for s in trained_text(enc, tok)] == ["嗨😊<|endoftext|>", "上班呢，你呢？<|endoftext|>"]


def test_llama3_template_needs_its_tokens(tokenizer):
    with pytest.raises(UserError, match="<\\|eot_id\\|>"):
        resolve_template(tokenizer, "llama3")


def test_truncation_policies(tokenizer):
    t = resolve_template(tokenizer)
    full = encode(CONV, tokenizer, t, EncodeOptions())
    n = len(full)
    assert encode(CONV, tokenizer, t, EncodeOptions(max_len=n - 1, truncation="drop")) is None
    cut = encode(CONV, tokenizer, t, EncodeOptions(max_len=n - 3, truncation="cut"))
    assert len(cut) == n - 3 and cut.truncated == "cut" and not cut.ends_with_eot
    hist = encode(CONV, tokenizer, t, EncodeOptions(max_len=n - 1, truncation="history"))
    assert hist.truncated == "history" and trained_text(hist, tokenizer) == ["上班呢，你呢？<|im_end|>"]
    assert tokenizer.decode(hist.input_ids).startswith("<|im_start|>system\n你是朋友")


def test_train_eot_false_masks_only_the_end_of_turn(tokenizer):
    t = resolve_template(tokenizer)
    enc = encode(CONV, tokenizer, t, EncodeOptions(train_eot=False))
    assert trained_text(enc, tokenizer) == ["嗨😊", "上班呢，你呢？"]
    assert enc.ends_with_eot  # the data has it; the loss just ignores it


def test_train_eot_false_masks_the_end_of_turn_under_train_on_prompt_too(tokenizer):
    """With data.train_on_prompt, data.train_eot false was ignored: every token was labelled, <|im_end|> included
    (`data show --train-on-prompt --no-train-eot`: trained 83 of 83), so the model still learnt to stop. The mask now
    comes after train_on_prompt, in both encoders and in the reply-only eval labels (control: train_eot true)."""
    from weitiao.data.chat import encode_all

    t = resolve_template(tokenizer)
    eot = tokenizer.convert_tokens_to_ids("<|im_end|>")
    for train_eot in (True, False):
        opts = EncodeOptions(train_on_prompt=True, train_eot=train_eot)
        one, (batch,) = encode(CONV, tokenizer, t, opts), encode_all([CONV], tokenizer, t, opts)[0]
        assert one.labels == batch.labels and one.answer_labels == batch.answer_labels
        assert (eot in one.labels, eot in one.answer_labels) == (train_eot, train_eot)
        assert sum(x != IGNORE for x in one.labels) == len(one) - (0 if train_eot else one.input_ids.count(eot))


@pytest.mark.parametrize("token", ["<|im_end|>", "<|endoftext|>"])
def test_special_token_text_in_a_message_is_refused_not_trained_as_a_turn(tokenizer, token):
    """Template residue in converted data ('Sure<|im_end|>\\n<|im_start|>user\\n...') was tokenized into real control
    tokens: a turn boundary inside the reply, whose span (to its last end-of-turn) trained the fake user turn after
    it; `data check` said 'no problems found'. Both encoders refuse it with file:line, the turn and the token."""
    from weitiao.data.chat import encode_all

    t = resolve_template(tokenizer, "chatml")
    reply = f"好的{token}\n<|im_start|>user\n假问题<|im_end|>\n<|im_start|>assistant\n假回答"
    bad = Conversation([{"role": "user", "content": "你好"}, {"role": "assistant", "content": reply}], "d.jsonl:7")
    why = rf"d\.jsonl:7: turn 1 \(assistant\): content holds '{re.escape(token)}', a special token"
    with pytest.raises(UserError, match=why):
        encode(bad, tokenizer, t, EncodeOptions())
    with pytest.raises(UserError, match=why):
        encode_all([CONV, bad], tokenizer, t, EncodeOptions())
    user = Conversation([{"role": "user", "content": f"a{token}b"}, {"role": "assistant", "content": "x"}], "d.jsonl:8")
    with pytest.raises(UserError, match=r"d\.jsonl:8: turn 0 \(user\)"):
        encode_all([user], tokenizer, t, EncodeOptions())
    # negative control: the same words without the control text (or with a look-alike) encode as usual
    ok = Conversation([{"role": "user", "content": "你好"}, {"role": "assistant", "content": "好的 <|im_end 假回答"}])
    assert trained_text(encode(ok, tokenizer, t, EncodeOptions()), tokenizer) == ["好的 <|im_end 假回答<|im_end|>"]


def test_special_tokens_the_tokenizer_does_not_name_are_refused_too(tokenizer):
    """Llama 3 names only its BOS and EOS; <|start_header_id|> and <|eot_id|> are special added tokens, matched in
    text as control tokens all the same. Only `all_special_tokens` was checked, so such a row passed (data check: 'no
    problems found')."""
    from transformers import PreTrainedTokenizerFast

    unnamed = PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend_tokenizer, eos_token="<|im_end|>")
    unnamed.chat_template = tokenizer.chat_template
    assert "<|im_start|>" not in unnamed.all_special_tokens  # special in tokenizer.json, named nowhere
    t = resolve_template(unnamed, "chatml")
    msgs = [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "好<|im_start|>user"}]
    bad = Conversation(msgs, "s:2")
    with pytest.raises(UserError, match=r"s:2: turn 1 \(assistant\): content holds '<\|im_start\|>'"):
        encode(bad, unnamed, t, EncodeOptions())


def test_a_special_token_in_a_row_is_named_as_the_file_writes_the_message(tmp_path, tokenizer):
    """A row holding `<|im_end|>` was refused as 'turn 1 (assistant)', weitiao's own role name, for a ShareGPT file
    that says from 'gpt', an alpaca row's output, or a LLaMA-Factory dataset whose tags are 客户/客服 and whose turn
    index differs from ours (its system message). The error now names the field of the row that holds it, as the
    file writes it (the LLaMA-Factory mapping read back, as its other errors); raw text found nowhere: the turn."""
    import json

    from weitiao.data.check import check_file

    end = "<|im_end|>"
    rows = {
        "sg.jsonl": ({"conversations": [{"from": "human", "value": "你好"}, {"from": "gpt", "value": f"嗨{end}"}]},
                     "conversations[1].value"),
        "alpaca.jsonl": ({"instruction": "问", "input": f"x{end}", "output": "答"}, "input"),
        "history.jsonl": ({"instruction": "问", "output": "答", "history": [[f"早{end}", "早"]]}, "history[0][0]"),
        "pairs.jsonl": ({"prompt": [{"role": "user", "content": "问"}], "chosen": [{"role": "assistant",
                         "content": f"好{end}"}], "rejected": [{"role": "assistant", "content": "坏"}]},
                        "chosen[0].content"),
    }  # fmt: skip
    for name, (row, field) in rows.items():
        (tmp_path / name).write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
        with pytest.raises(UserError) as e:
            check_file([str(tmp_path / name)], tokenizer)
        assert f"{name}:1: {field}: content holds '{end}'" in str(e.value), name
    lf = tmp_path / "lf"
    lf.mkdir()
    msgs = [("sys", "你是客服"), ("客户", "你好"), ("客服", "在的"), ("客户", f"在吗{end}"), ("客服", "在")]
    rows = [{"msgs": [{"speaker": s, "text": t} for s, t in msgs]}]
    (lf / "d.json").write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    tags = {
        "role_tag": "speaker",
        "content_tag": "text",
        "user_tag": "客户",
        "assistant_tag": "客服",
        "system_tag": "sys",
    }
    info = {"cs": {"file_name": "d.json", "formatting": "sharegpt", "columns": {"messages": "msgs"}, "tags": tags}}
    (lf / "dataset_info.json").write_text(json.dumps(info, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(UserError, match=rf"d\.json:1: msgs\[3\]\.text: content holds '{re.escape(end)}'"):
        check_file(["cs"], tokenizer, dataset_dir=str(lf))


NO_SYSTEM = (  # Gemma's and Mistral's templates refuse a system message so
    "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def test_a_row_the_tokenizer_template_refuses_is_one_line_naming_it():
    """A tokenizer whose chat template raises on a row (Gemma's and Mistral's 'System role not supported', 'roles must
    alternate') stopped `data check`, `data show` and training with a jinja2 traceback. Now one line naming the row,
    the template's words and the way out, from the per-row and the batched encoders; rows it renders (control) are
    encoded."""
    from weitiao.data.chat import encode_all

    tok = build_tokenizer(chat_template=NO_SYSTEM)
    tpl = resolve_template(tok)
    ok = Conversation([{"role": "user", "content": "你好"}, {"role": "assistant", "content": "嗨"}], source="d.jsonl:1")
    bad = Conversation([{"role": "system", "content": "你是助手"}, *ok.messages], source="d.jsonl:2")
    said = re.escape("d.jsonl:2: chat template 'tokenizer' refuses this row (System role not supported)")
    with pytest.raises(UserError, match=said):
        encode(bad, tok, tpl, EncodeOptions())
    with pytest.raises(UserError, match=said):
        encode_all([ok, bad], tok, tpl, EncodeOptions())
    assert encode_all([ok], tok, tpl, EncodeOptions())[1].kept == 1


def test_rows_the_template_refuses_are_set_aside_under_skip_invalid(tmp_path):
    """With data.skip_invalid (`data check --skip-invalid`) every other bad row went to the rejects file and was
    counted, while a row the tokenizer's template refuses (Gemma: no system role) still stopped SFT, DPO, KTO and
    `data check`. Now it is set aside the same way, named by file:line with the template's words; without
    skip_invalid it stays the one-line stop."""
    import json

    from conftest import recipe_config, write_jsonl

    from weitiao.data.check import check_file
    from weitiao.recipes.sft import prepare_data
    from weitiao.train.feedback import prepare_feedback
    from weitiao.train.pairs import prepare_pairs

    tok = build_tokenizer(chat_template=NO_SYSTEM)
    chat = [{"messages": [{"role": "user", "content": f"问{i}"}, {"role": "assistant", "content": f"答{i}"}]}
            for i in range(3)]  # fmt: skip
    sys_row = {"messages": [{"role": "system", "content": "你是助手"}, *chat[0]["messages"]]}
    pair = [{"prompt": [{"role": "user", "content": f"问{i}"}], "chosen": [{"role": "assistant", "content": "好"}],
             "rejected": [{"role": "assistant", "content": "坏"}]} for i in range(3)]  # fmt: skip
    sys_pair = {**pair[0], "prompt": [{"role": "system", "content": "你是助手"}, *pair[0]["prompt"]]}
    fb = [{"prompt": [{"role": "user", "content": f"问{i}"}], "completion": [{"role": "assistant", "content": "好"}],
           "label": i % 2 == 0} for i in range(3)]  # fmt: skip
    sys_fb = {**fb[0], "prompt": [{"role": "system", "content": "你是助手"}, *fb[0]["prompt"]]}
    said = "chat template 'tokenizer' refuses this row (System role not supported)"
    for recipe, rows, bad in (("sft", chat, sys_row), ("dpo", pair, sys_pair), ("kto", fb, sys_fb)):
        f = write_jsonl(tmp_path / f"{recipe}.jsonl", [*rows[:2], bad, rows[2]])
        out = tmp_path / f"run-{recipe}"

        def prepare(*extra: str, recipe=recipe, f=f, out=out):
            cfg = recipe_config(recipe, "unused", f, out, *extra)
            if recipe == "sft":
                return prepare_data(cfg, tok)
            return prepare_pairs(cfg, tok) if recipe == "dpo" else prepare_feedback(cfg.data, cfg.train, tok)

        with pytest.raises(UserError, match=re.escape(f"{f}:3: ") + r"(messages|prompt): " + re.escape(said)):
            prepare()
        data = prepare("data.skip_invalid=true")
        assert (data.read, data.rejected) == (4, 1), recipe
        [reject] = [json.loads(x) for x in (out / "rejects.jsonl").read_text(encoding="utf-8").splitlines()]
        assert reject["source"] == f"{f}:3" and said in reject["error"] and reject["row"] == bad
        rep = check_file([str(f)], tok, skip_invalid=True)
        assert (rep.read, rep.kept, rep.rejected) == (4, 3, 1) and rep.refused == ""
        with pytest.raises(UserError, match=re.escape(f"{f}:3: ") + ".*" + re.escape(said)):
            check_file([str(f)], tok)
