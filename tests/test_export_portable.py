"""Exports other tools read as training left them: a base-style tokenizer (EOS <|endoftext|>, turns end
with <|im_end|>) whose merged model stops under plain transformers generate(); the training template in
chat_template.jinja and tokenizer_config.json, rendering training's tokens (also one weitiao had to append
EOS for); files transformers 4.x reads (tokenizer_class, rope_theta); --check through plain transformers;
the vLLM notes; the run's own final/ folder."""

import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import CHAT_ROWS, CHATML, build_tokenizer, save_tiny_model, write_jsonl
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from weitiao.data.chat import EncodeOptions, encode
from weitiao.data.formats import load_conversations
from weitiao.data.templates import resolve_template
from weitiao.errors import UserError
from weitiao.infer import export as ex

# a tokenizer template that closes no turn: training appends EOS to every reply itself
NO_EOT = (
    "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
)
K = 5  # the residual-stream dimension held constant in the base (see make_run)


def read(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def make_run(root: Path, template: str) -> tuple[Path, Path]:
    """(run dir, base dir): a tiny Qwen2 base (rope_theta 1e6) with a base-style tokenizer, and an adapter
    that makes <|im_end|> the greedy next token everywhere, saved as a run from before this fix
    (final/adapter + final/tokenizer from a plain save_pretrained).

    The base keeps residual dimension K at 1 (embeddings 1, nothing writes to it), so the adapter's LoRA on
    lm_head can add a large logit to <|im_end|> whatever the input; the base's own row there is 0.
    """
    from peft import LoraConfig, get_peft_model

    tok = build_tokenizer(template, eos="<|endoftext|>")
    base = save_tiny_model(root / "base", tok, arch="qwen2", hidden=64)
    cfg = read(base / "config.json")
    cfg["rope_parameters"]["rope_theta"] = 1e6
    (base / "config.json").write_text(json.dumps(cfg))
    model = AutoModelForCausalLM.from_pretrained(base)
    eot = tok.convert_tokens_to_ids("<|im_end|>")
    with torch.no_grad():
        model.model.embed_tokens.weight[:, K] = 1.0
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight[K] = 0.0
            layer.mlp.down_proj.weight[K] = 0.0
        model.lm_head.weight[eot, K] = 0.0
    model.save_pretrained(base)
    peft = get_peft_model(model, LoraConfig(r=1, lora_alpha=1, target_modules=["lm_head"], lora_dropout=0.0))
    with torch.no_grad():
        peft.base_model.model.lm_head.lora_A["default"].weight.zero_()[0, K] = 1.0
        peft.base_model.model.lm_head.lora_B["default"].weight.zero_()[eot, 0] = 50.0
    peft.save_pretrained(root / "run" / "final" / "adapter")
    tok.save_pretrained(root / "run" / "final" / "tokenizer")
    return root / "run", base


@pytest.fixture(scope="module")
def chatml_run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("chatml"), CHATML)


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("rows") / "chat.jsonl", [dict(r) for r in CHAT_ROWS])


def reply_ids(model, tok, gen=None):
    """Plain transformers: chat template → greedy generate() (the model's own generation_config unless `gen`)."""
    msgs = [{"role": "user", "content": "今天天气怎么样？"}]
    enc = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**enc, generation_config=gen, max_new_tokens=8, do_sample=False)
    return out[0, enc["input_ids"].shape[1] :].tolist()


def test_standalone_template_appends_eos_itself():
    tok = build_tokenizer(NO_EOT, eos="<|endoftext|>")
    tpl = resolve_template(tok)
    assert tpl.appends_eos and tpl.eot == "<|endoftext|>"
    msgs = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "问"},
        {"role": "assistant", "content": "答"},
        {"role": "user", "content": "再"},
        {"role": "assistant", "content": "好"},
    ]
    trained = tpl.render(tok, msgs)
    assert trained.count("<|endoftext|>") == 2
    assert tok.apply_chat_template(msgs, chat_template=tpl.standalone(), tokenize=False) == trained
    # negative control: the template as the tokenizer had it drops the EOS training put after each reply
    assert tok.apply_chat_template(msgs, chat_template=tpl.jinja, tokenize=False) != trained
    # read back from a saved tokenizer it is a template that ends turns itself, rendering the same
    again = resolve_template(build_tokenizer(tpl.standalone(), eos="<|endoftext|>"))
    assert not again.appends_eos and again.render(tok, msgs) == trained
    assert resolve_template(build_tokenizer()).standalone() == CHATML  # nothing to add


def test_merged_base_model_stops_at_end_of_turn_in_plain_transformers(chatml_run, tmp_path):
    run, base = chatml_run
    dest = ex.export(str(run), str(tmp_path / "merged"), merge=True)
    tok = AutoTokenizer.from_pretrained(dest)
    eot, eos = tok.convert_tokens_to_ids("<|im_end|>"), tok.eos_token_id
    assert tok.eos_token == "<|endoftext|>" and eot != eos
    # field by field: what plain transformers, vLLM and llama.cpp's converter read
    assert read(dest / "generation_config.json")["eos_token_id"] == [eot, eos]
    tcfg = read(dest / "tokenizer_config.json")
    assert tcfg["chat_template"] == (dest / "chat_template.jinja").read_text() == CHATML
    assert tcfg["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert tcfg["additional_special_tokens"] == ["<|im_start|>", "<|im_end|>"]
    assert "extra_special_tokens" not in tcfg
    cfg = read(dest / "config.json")
    assert cfg["rope_theta"] == 1e6 and cfg["rope_parameters"]["rope_theta"] == 1e6
    # negative control: the base as transformers 5 saved it has none of these for 4.x readers
    assert read(base / "tokenizer_config.json")["tokenizer_class"] == "TokenizersBackend"
    assert "rope_theta" not in read(base / "config.json")
    assert "chat_template" not in read(base / "tokenizer_config.json")

    model = AutoModelForCausalLM.from_pretrained(dest).eval()
    assert reply_ids(model, tok) == [eot]  # stops at the end-of-turn
    # negative control: the base's generation_config (what export wrote before) never stops
    model.generation_config = GenerationConfig.from_pretrained(base)
    assert model.generation_config.eos_token_id == eos
    assert reply_ids(model, tok) == [eot] * 8


def test_check_compares_with_plain_transformers(tmp_path, rows):
    run, _ = make_run(tmp_path, NO_EOT)
    dest = ex.export(str(run), str(tmp_path / "adapter"))
    assert ex.check(str(dest), str(run), str(rows)) == {"rows": 4, "identical": 4, "stops_at": "<|endoftext|>"}
    # training's token ids come out of plain apply_chat_template, EOS after every reply included
    tok, plain = build_tokenizer(NO_EOT, eos="<|endoftext|>"), AutoTokenizer.from_pretrained(dest)
    conv = load_conversations(str(rows)).rows[3]
    want = encode(conv, tok, resolve_template(tok), EncodeOptions()).input_ids
    got = plain.apply_chat_template(list(conv.messages), tokenize=True, return_dict=True)["input_ids"]
    assert got == want and want.count(tok.eos_token_id) == 2
    # negative control: the template as exported before (without the EOS) fails the check
    old = tok.chat_template
    (dest / "chat_template.jinja").write_text(old)
    tcfg = read(dest / "tokenizer_config.json")
    (dest / "tokenizer_config.json").write_text(json.dumps({**tcfg, "chat_template": old}))
    with pytest.raises(UserError, match=r"4/4 rows tokenize differently with transformers' apply_chat_template"):
        ex.check(str(dest), str(run), str(rows))


def test_check_renders_a_row_s_tools_as_training_did(tmp_path):
    """--check left a row's `tools` out of apply_chat_template: every tool row 'tokenized differently' from training."""
    from test_tools_data import OPENAI_ROW

    from weitiao.data.templates import QWEN

    run, _ = make_run(tmp_path, QWEN)
    dest = ex.export(str(run), str(tmp_path / "adapter"))
    plain_row = {"messages": [*OPENAI_ROW["messages"][:2], {"role": "assistant", "content": "好"}]}
    tools = write_jsonl(tmp_path / "tools.jsonl", [OPENAI_ROW, plain_row])
    assert ex.check(str(dest), str(run), str(tools))["identical"] == 2
    tok, plain = build_tokenizer(QWEN, eos="<|endoftext|>"), AutoTokenizer.from_pretrained(dest)
    conv = load_conversations(str(tools)).rows[0]
    want = encode(conv, tok, resolve_template(tok), EncodeOptions(max_len=10**9)).input_ids
    got = plain.apply_chat_template(list(conv.messages), tools=conv.tools, tokenize=True, return_dict=True)
    assert got["input_ids"] == want
    bare = plain.apply_chat_template(list(conv.messages), tokenize=True, return_dict=True)
    assert bare["input_ids"] != want  # negative control: without the tools the prompt differs


def test_an_adapter_export_or_a_checkpoint_brings_the_training_template(tmp_path):
    """chat/serve/eval --adapter EXPORT_DIR (or a checkpoint of a run, finished or not) loaded the base's tokenizer, not
    the one training used: a run trained with ChatML on a base of another template was served in the base's format."""
    from weitiao.infer.chat import load_chat_model
    from weitiao.models.load import locate

    run, base = make_run(tmp_path, NO_EOT)
    build_tokenizer(CHATML, eos="<|endoftext|>").save_pretrained(run / "final" / "tokenizer")  # trained with ChatML
    dest = ex.export(str(run), str(tmp_path / "adapter"))
    shutil.copytree(run / "final" / "adapter", run / "checkpoints" / "step-000001" / "adapter")
    msgs = [{"role": "user", "content": "你好"}]
    trained = "<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n"
    for adapter in (run, dest, run / "checkpoints" / "step-000001"):
        _, tok = load_chat_model(None, str(adapter))
        assert resolve_template(tok).render(tok, msgs, add_generation_prompt=True) == trained, adapter
    assert locate(dest)[1] == dest
    unfinished = tmp_path / "unfinished" / "checkpoints" / "step-000001"  # no final/ yet: its config names the template
    shutil.copytree(run / "final" / "adapter", unfinished / "adapter")
    (unfinished / "config.yaml").write_text(f"model:\n  path: {base}\ndata:\n  template: chatml\n", encoding="utf-8")
    _, tok = load_chat_model(None, str(unfinished))
    assert resolve_template(tok).render(tok, msgs, add_generation_prompt=True) == trained
    from weitiao.infer.chat import load_adapters  # serve --adapter a=… --adapter b=…: the same for each

    for named in ({"a": str(unfinished)}, {"a": str(unfinished), "b": str(run)}):
        _, tok, _ = load_adapters(None, named, None)
        assert resolve_template(tok).render(tok, msgs, add_generation_prompt=True) == trained, named
    base_tok = AutoTokenizer.from_pretrained(base)  # negative control: the base renders otherwise
    assert resolve_template(base_tok).render(base_tok, msgs, add_generation_prompt=True) != trained


def test_check_fails_when_generation_would_not_stop(chatml_run, tmp_path, rows):
    run, base = chatml_run
    dest = ex.export(str(run), str(tmp_path / "adapter"))
    assert ex.check(str(dest), str(run), str(rows))["stops_at"] == "<|im_end|>"
    shutil.copy(base / "generation_config.json", dest / "generation_config.json")  # the base's: EOS only
    with pytest.raises(UserError, match=r"eos_token_id \[0\] lacks '<\|im_end\|>' \(id 2\)"):
        ex.check(str(dest), str(run), str(rows))


def test_adapter_export_carries_stop_ids_and_vllm_notes(chatml_run, tmp_path):
    run, base = chatml_run
    dest = ex.export(str(run), str(tmp_path / "lora"))
    assert read(dest / "generation_config.json")["eos_token_id"] == [2, 0]
    assert read(dest / "tokenizer_config.json")["chat_template"] == CHATML
    cmd = (
        f"serve with vLLM: vllm serve {base} --enable-lora --lora-modules lora={dest} --generation-config {dest} "
        f"--chat-template {dest}/chat_template.jinja"
    )
    # the base's generation_config stops at EOS only: the note on plain transformers comes first (its own test below)
    stop = [n for n in ex.serve_notes(dest) if n.startswith("note: transformers and peft")]
    assert len(stop) == 1
    assert ex.serve_notes(dest) == [*stop, cmd]  # rank 1: no warning (negative control)
    cfg = read(dest / "adapter_config.json")

    def notes(**change):
        (dest / "adapter_config.json").write_text(json.dumps({**cfg, **change}))
        notes = ex.serve_notes(dest)
        assert notes[0] == stop[0]
        return notes[1:]

    assert notes(r=16) == [cmd]
    assert notes(r=20) == [
        "warning: LoRA rank 20 is above vLLM's default --max-lora-rank 16; serve it with --max-lora-rank 32",
        cmd + " --max-lora-rank 32",
    ]
    assert notes(r=8, rank_pattern={"q_proj": 64})[1].endswith(" --max-lora-rank 64")
    for change, what in (
        ({"use_dora": True}, r"DoRA \(use_dora\)"),
        ({"modules_to_save": ["lm_head"]}, r"modules_to_save \['lm_head'\]"),
        ({"r": 1024}, "rank 1024 above 512"),
    ):
        [line] = notes(**change)
        assert line.startswith("warning: vLLM cannot load this adapter (") and "--merge" in line
        assert re.search(what, line)
    merged = ex.export(str(run), str(tmp_path / "merged"), merge=True)
    # a qwen2 model with a GPT-2-split tokenizer.json: transformers 5 (vLLM) would tokenize it as Qwen2Tokenizer
    note, cmd = ex.serve_notes(merged)
    assert note.startswith("note: merged: transformers builds its tokenizer as Qwen2Tokenizer") and "vLLM" in note
    assert cmd == f"serve with vLLM: vllm serve {merged}"


def test_adapter_export_says_transformers_takes_the_base_s_stop_ids(chatml_run, tmp_path):
    """transformers and peft loading an adapter folder take the base's generation_config.json, not the export's: on a
    base whose EOS is not the end-of-turn generate() ran past every reply with no word from export. The notes say so
    and how to stop (the export's own generation_config); a base that stops at the end-of-turn gets no such note."""
    from peft import AutoPeftModelForCausalLM

    run, base = chatml_run
    dest = ex.export(str(run), str(tmp_path / "lora"))
    tok = AutoTokenizer.from_pretrained(dest)
    # what a user of plain transformers / peft gets from the folder: the base's stop ids, no end-of-turn
    for model in (AutoModelForCausalLM.from_pretrained(dest), AutoPeftModelForCausalLM.from_pretrained(dest)):
        assert model.generation_config.eos_token_id == 0
        assert reply_ids(model.eval(), tok) == [2] * 8
        assert reply_ids(model, tok, GenerationConfig.from_pretrained(dest)) == [2]  # the note's fix stops
    [note] = [n for n in ex.serve_notes(dest) if "transformers" in n]
    assert note == (
        "note: transformers and peft (AutoModelForCausalLM, AutoPeftModelForCausalLM, PeftModel.from_pretrained) "
        f"load this adapter with the base's generation_config.json, whose eos_token_id [0] lacks '<|im_end|>' (id 2): "
        "generate() would not stop at the end of a reply; pass "
        f"generation_config=GenerationConfig.from_pretrained('{dest}') to generate(), or export with --merge"
    )
    # negative control: a base whose generation_config stops at the end-of-turn already
    stopping = tmp_path / "base"
    shutil.copytree(base, stopping)
    gen = read(stopping / "generation_config.json")
    (stopping / "generation_config.json").write_text(json.dumps({**gen, "eos_token_id": [2, 0]}))
    other = ex.export(str(run), str(tmp_path / "lora2"), model=str(stopping))
    assert not any("transformers" in n for n in ex.serve_notes(other))
    assert AutoModelForCausalLM.from_pretrained(other).generation_config.eos_token_id == [2, 0]


def test_run_final_folder_stops_and_carries_template(chatml_run, tmp_path):
    """train.loop.finish: final/adapter gets a generation_config stopping at <|im_end|>, final/tokenizer the
    standalone template in both places, readable by 4.x; a plain peft + transformers user stops."""
    from peft import PeftModel

    from weitiao.train import loop

    run, base = chatml_run
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), run / "final" / "adapter")
    tok = build_tokenizer(NO_EOT, eos="<|endoftext|>")
    logged = []
    log = SimpleNamespace(log=lambda *a, **k: logged.append(a), close=lambda: None)
    accel = SimpleNamespace(is_main_process=True, wait_for_everyone=lambda: None)
    final = loop.finish(tmp_path, peft, tok, resolve_template(tok), {"finished": True, "steps": 1}, log, accel)
    assert read(final / "adapter" / "generation_config.json")["eos_token_id"] == [0]  # NO_EOT: EOS ends turns
    tcfg = read(final / "tokenizer" / "tokenizer_config.json")
    assert tcfg["chat_template"] == resolve_template(tok).standalone() != NO_EOT
    assert tcfg["tokenizer_class"] == "PreTrainedTokenizerFast"

    chat = build_tokenizer(CHATML, eos="<|endoftext|>")
    final = loop.finish(tmp_path, peft, chat, resolve_template(chat), {"finished": True, "steps": 1}, log, accel)
    assert read(final / "adapter" / "generation_config.json")["eos_token_id"] == [2, 0]
    # a user with plain peft + transformers: generation_config from the adapter folder stops
    user = AutoTokenizer.from_pretrained(final / "tokenizer")
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), final / "adapter").eval()
    assert reply_ids(model, user, GenerationConfig.from_pretrained(final / "adapter")) == [2]
    assert reply_ids(model, user) == [2] * 8  # negative control: the base's generation_config


def test_stop_ids_when_end_of_turn_is_also_the_unknown_token():
    """transformers 5's Qwen2Tokenizer names <|endoftext|> unk, EOS and (plain template) end-of-turn:
    stop_ids must take it, not refuse it as 'not one token' (a base-model DPO run crashed at its final save)."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast

    from weitiao.data.templates import resolve_template
    from weitiao.models.portable import stop_ids

    vocab = {"<|endoftext|>": 0, "你好": 1, "再见": 2}
    raw = Tokenizer(WordLevel(vocab, unk_token="<|endoftext|>"))
    raw.pre_tokenizer = Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<|endoftext|>", eos_token="<|endoftext|>")
    assert tok.unk_token_id == tok.eos_token_id == 0
    template = resolve_template(tok, "plain")
    assert template.eot == "<|endoftext|>"
    assert stop_ids(tok, template) == [0]
    with pytest.raises(AssertionError, match="not one token"):  # control: a name the vocabulary lacks
        stop_ids(tok, template.__class__(**{**template.__dict__, "eot": "<|im_end|>"}))
