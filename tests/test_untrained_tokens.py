"""Untrained rows of a chat template's control tokens (Llama-3 base's <|eot_id|> and headers): LoRA is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import build_tokenizer, save_tiny_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from weitiao.errors import UserError
from weitiao.models.untrained import refuse_untrained_tokens, untrained_ids, untrained_rows

CONTROL = ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
LLAMA3_STYLE = (  # Llama-3's own chat template, without the BOS the tiny tokenizer lacks
    "{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + m['content'] + "
    "'<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)


def llama3_tokenizer():
    tok = build_tokenizer(LLAMA3_STYLE, eos="<|endoftext|>")  # Llama-3 base: EOS <|end_of_text|>, turns <|eot_id|>
    tok.add_special_tokens({"additional_special_tokens": CONTROL})
    return tok


def zeroed_rows(folder: Path, tok, tokens: list[str]) -> tuple[Path, Path]:
    """(a tiny Llama whose `tokens` rows are zero in embed_tokens and lm_head, the same with its rows kept)."""
    good = save_tiny_model(folder / "good", tok, hidden=64)
    model = AutoModelForCausalLM.from_pretrained(good)
    with torch.no_grad():
        for i in tok.convert_tokens_to_ids(tokens):
            model.get_input_embeddings().weight[i] = 0
            model.get_output_embeddings().weight[i] = 0
    model.save_pretrained(folder / "base")
    tok.save_pretrained(folder / "base")
    return folder / "base", good


@pytest.fixture(scope="module")
def llama3_dirs(tmp_path_factory):
    """(a tiny Llama whose control-token rows are zero in embed_tokens and lm_head, the same with its rows kept)."""
    return zeroed_rows(tmp_path_factory.mktemp("l3"), llama3_tokenizer(), CONTROL)


@pytest.mark.parametrize("quant", ["none", "4bit"])
def test_lora_on_untrained_control_rows_is_refused(llama3_dirs, chat_file, make_config, quant):
    """The refusal is one line naming the three tokens, the rows and the fixes; nothing is trained. Under QLoRA too:
    bitsandbytes leaves embed_tokens and lm_head unquantized."""
    from weitiao.recipes import sft

    cfg = make_config("sft", chat_file, "train.max_steps=2", f"model.quant={quant}", model_dir=llama3_dirs[0])
    with pytest.raises(UserError) as e:
        sft.run(cfg)
    msg = str(e.value)
    assert "\n" not in msg and all(t in msg for t in CONTROL), msg
    assert "untrained rows in the base" in msg and "lora.modules_to_save: [embed_tokens, lm_head]" in msg
    assert "lora.enabled: false" in msg and "data.template" in msg
    assert not (Path(cfg.train.out) / "final").exists()


def test_modules_to_save_trains_the_rows(llama3_dirs, chat_file, make_config, capsys):
    """With embed_tokens and lm_head trained in full the run goes on (a note said), and their <|eot_id|> rows move."""
    from weitiao.recipes import sft

    cfg = make_config(
        "sft", chat_file, "train.max_steps=2", "lora.modules_to_save=[embed_tokens,lm_head]", model_dir=llama3_dirs[0]
    )
    sft.run(cfg)
    assert "untrained rows in the base; they train here" in capsys.readouterr().out
    saved = load_file(str(Path(cfg.train.out) / "final" / "adapter" / "adapter_model.safetensors"))
    eot = llama3_tokenizer().convert_tokens_to_ids("<|eot_id|>")
    rows = [w[eot] for k, w in saved.items() if "embed_tokens" in k or "lm_head" in k]
    assert len(rows) == 2 and all(r.abs().max() > 0 for r in rows)


def test_raw_text_rows_are_not_refused_for_template_tokens(llama3_dirs, make_config, tmp_path, capsys):
    """String prompt/completion rows are raw text (prompt + completion + EOS, no template): the template's untrained
    rows are never fed, so LoRA trains (it was refused naming tokens the run does not use); a chat row among them
    brings the refusal back."""
    from conftest import write_jsonl

    from weitiao.recipes import sft

    rows = [{"prompt": f"问题{i}：", "completion": f"回答{i}"} for i in range(8)]
    data = write_jsonl(tmp_path / "pc.jsonl", rows)
    sft.run(make_config("sft", data, "train.max_steps=1", model_dir=llama3_dirs[0]))
    assert "untrained" not in capsys.readouterr().out
    mixed = write_jsonl(
        tmp_path / "mixed.jsonl",
        rows
        + [{"prompt": [{"role": "user", "content": "你好"}], "completion": [{"role": "assistant", "content": "嗨"}]}],
    )
    with pytest.raises(UserError, match="untrained rows in the base"):
        out = f"train.out={tmp_path / 'mixed'}"
        sft.run(make_config("sft", mixed, "train.max_steps=1", out, model_dir=llama3_dirs[0]))


def test_trained_rows_train_without_a_word(llama3_dirs, chat_file, make_config, capsys):
    """Negative control: the same model with its control rows kept trains with LoRA and says nothing about them."""
    from weitiao.recipes import sft

    sft.run(make_config("sft", chat_file, "train.max_steps=2", model_dir=llama3_dirs[1]))
    assert "untrained" not in capsys.readouterr().out


def test_full_fine_tuning_is_not_refused(llama3_dirs, capsys):
    """Every weight trains: the rows learn from where they are; a note, no refusal."""
    from weitiao.data.templates import resolve_template

    tok = llama3_tokenizer()
    model = AutoModelForCausalLM.from_pretrained(llama3_dirs[0])
    refuse_untrained_tokens(model, tok, resolve_template(tok))
    assert "<|eot_id|>" in capsys.readouterr().out
    model.requires_grad_(False)  # what LoRA leaves of it
    with pytest.raises(UserError, match="eot_id"):
        refuse_untrained_tokens(model, tok, resolve_template(tok))


def test_bf16_near_zero_placeholder_tied_and_quantized():
    """bf16 rows of 1e-23 are caught; a row shared by 3+ tokens is a placeholder, two equal rows are not; a tied head
    is read once; a quantized (integer) matrix is skipped."""
    torch.manual_seed(0)
    w = (torch.randn(300, 64) * 0.02).to(torch.bfloat16)
    w[5] = 1e-23
    w[7] = w[8] = w[9] = w[100]  # a mean row written into three added tokens
    w[11] = w[12]  # two equal rows alone: not "many"
    assert float(w[5].abs().max()) > 0  # a bf16 1e-23 is not exactly zero
    assert untrained_rows(w, [5, 6, 7, 11, 400]) == [5, 7]

    class Tied(torch.nn.Module):
        def __init__(self, weight: torch.Tensor):
            super().__init__()
            self.embed_tokens = torch.nn.Embedding(*weight.shape, _weight=weight)
            self.lm_head = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
            self.lm_head.weight = self.embed_tokens.weight

        def get_input_embeddings(self):
            return self.embed_tokens

        def get_output_embeddings(self):
            return self.lm_head

    assert untrained_ids(Tied(w.float()), [5, 6], [5]) == {"input": [5], "output": [5]}
    quant = Tied(w.float())
    quant.embed_tokens.weight = quant.lm_head.weight = torch.nn.Parameter(
        torch.zeros(300, 64, dtype=torch.uint8), requires_grad=False
    )
    assert untrained_ids(quant, [5]) == {"input": [], "output": []}


TOOL_TOKENS = ["<tool_call>", "</tool_call>"]
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "查天气",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}  # fmt: skip


def tool_row(i: int) -> dict:
    call = {"id": f"c{i}", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "北京"}'}}
    return {"tools": [WEATHER], "messages": [
        {"role": "user", "content": f"北京天气怎么样？{i}"}, {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": f"c{i}", "content": "晴"}, {"role": "assistant", "content": "北京晴天😊"},
    ]}  # fmt: skip


@pytest.fixture(scope="module")
def qwen_tool_dir(tmp_path_factory):
    """A tiny Llama with ChatML and Qwen2.5's tool markup as added tokens whose rows are zero (never trained)."""
    tok = build_tokenizer()
    tok.add_tokens(TOOL_TOKENS)  # added, not special: as Qwen2.5 ships them
    return zeroed_rows(tmp_path_factory.mktemp("qt"), tok, TOOL_TOKENS)[0]


def test_tool_rows_on_untrained_tool_markup_are_refused(qwen_tool_dir, make_config, tmp_path, capsys):
    """Tool-call rows make the model say <tool_call>…</tool_call>: with those rows untrained and frozen under LoRA it
    could not learn to call (the check probed only a plain system/user/assistant turn and let the run train). The
    same base with plain chat rows trains: the tool tokens are never fed there."""
    from conftest import write_jsonl

    from weitiao.recipes import sft

    tools = write_jsonl(tmp_path / "tools.jsonl", [tool_row(i) for i in range(6)])
    cfg = make_config("sft", tools, "train.max_steps=1", "data.template=qwen", model_dir=qwen_tool_dir)
    with pytest.raises(UserError) as e:
        sft.run(cfg)
    msg = str(e.value)
    assert "\n" not in msg and all(t in msg for t in TOOL_TOKENS) and "may never stop" not in msg, msg
    assert "lm_head: <tool_call>, </tool_call>" in msg  # the call's markup is a label: its head rows matter
    plain = write_jsonl(tmp_path / "plain.jsonl", [{"messages": tool_row(i)["messages"][:1] + [
        {"role": "assistant", "content": "北京晴天😊"}]} for i in range(6)])  # fmt: skip
    out = f"train.out={tmp_path / 'plain'}"
    sft.run(make_config("sft", plain, "train.max_steps=1", "data.template=qwen", out, model_dir=qwen_tool_dir))
    assert "untrained" not in capsys.readouterr().out


def test_an_untrained_eos_apart_from_the_end_of_turn_matters_only_to_raw_rows(tmp_path_factory, make_config, capsys):
    """ChatML rows train <|im_end|>, never a base EOS that differs from it (<|endoftext|> here, its rows zero): chat
    rows train without a word (they were refused, "the tuned model may never stop", over a token they never train);
    raw-text rows among them are closed with EOS, so then the refusal names it."""
    from conftest import write_jsonl

    from weitiao.recipes import sft

    base = zeroed_rows(tmp_path_factory.mktemp("eos"), build_tokenizer(eos="<|endoftext|>"), ["<|endoftext|>"])[0]
    tmp = tmp_path_factory.mktemp("eosdata")
    chats = [{"messages": [{"role": "user", "content": f"你好{i}"}, {"role": "assistant", "content": "嗨"}]}
             for i in range(6)]  # fmt: skip
    sft.run(make_config("sft", write_jsonl(tmp / "chat.jsonl", chats), "train.max_steps=1", model_dir=base))
    assert "untrained" not in capsys.readouterr().out
    raw = write_jsonl(tmp / "raw.jsonl", [{"prompt": "问题：", "completion": "回答"}])
    mixed = f"{tmp / 'chat.jsonl'},{raw}"
    with pytest.raises(UserError, match=r"tokens <\|endoftext\|> have untrained rows .*lm_head: <\|endoftext\|>"):
        sft.run(make_config("sft", mixed, "train.max_steps=1", out=tmp / "mixed", model_dir=base))
