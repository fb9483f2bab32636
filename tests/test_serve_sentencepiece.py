"""`weitiao serve` with a SentencePiece tokenizer (Llama-2, Mistral, Yi: "▁" pieces, byte fallback): a completion's
text continues the prompt's ("▁Paris" after "is" is " Paris", as vLLM and a decode of prompt + reply give), and
log-prob tokens join into the reply's text (chat bytes, legacy tokens and text_offset), word spaces included."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import CHATML, CORPUS
from fastapi.testclient import TestClient

from weitiao.data.templates import resolve_template
from weitiao.infer.logprobs import LogprobFormat, TextOffsets
from weitiao.infer.serve import Job, ServeSettings, _Row, create_app


def build_sp_tokenizer():
    """A Llama-style tokenizer.json: BPE pieces with Metaspace ("▁" for a space, prepended at the start)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Sequence(
        [decoders.ByteFallback(), decoders.Metaspace(replacement="▁", prepend_scheme="first")]
    )
    specials = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    alphabet = [f"<0x{i:02X}>" for i in range(256)]
    tok.train_from_iterator(
        CORPUS, trainers.BpeTrainer(vocab_size=600, special_tokens=specials, initial_alphabet=alphabet)
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<unk>",
        additional_special_tokens=specials[3:],
    )  # fmt: skip
    fast.chat_template = CHATML
    return fast


@pytest.fixture(scope="module")
def sp():
    return build_sp_tokenizer()


def test_a_completion_keeps_the_space_of_its_first_word(sp):
    prompt = sp("<s>Hello world, this is", add_special_tokens=False)["input_ids"]
    reply = sp.convert_tokens_to_ids(["▁world,", "▁this", "天"])
    job = Job(prompt, 1, 10, [], continues=True)
    row = _Row(job, 0, sp, {sp.eos_token_id}, "cpu", None)
    row.outbox = []
    for t in [*reply, sp.eos_token_id]:
        row.feed(t)
    text = "".join(ev[2] for _, ev in row.outbox if ev[0] == "delta")
    whole = sp.decode(prompt + reply, skip_special_tokens=True)
    assert text == " world, this天" == whole[len(sp.decode(prompt, skip_special_tokens=True)) :]
    chat = Job(prompt, 1, 10, [])  # a chat reply is decoded on its own, as `weitiao chat` and HF users decode it
    row = _Row(chat, 0, sp, {sp.eos_token_id}, "cpu", None)
    row.outbox = []
    for t in [*reply, sp.eos_token_id]:
        row.feed(t)
    assert "".join(ev[2] for _, ev in row.outbox if ev[0] == "delta") == sp.decode(reply) == "world, this天"


def test_logprob_tokens_join_into_the_text(sp):
    fmt = LogprobFormat(sp)
    ids = sp.convert_tokens_to_ids(["▁Hello", "▁world,", "天", "▁"])
    offsets = TextOffsets()
    legacy = fmt.legacy([(i, -1.0, [(i, -1.0)]) for i in ids], offsets, echoed=len(ids))
    assert legacy["tokens"] == ["Hello", " world,", "天", " "]
    assert legacy["text_offset"] == [0, 5, 12, 13] and offsets.chars == 14
    assert list(legacy["top_logprobs"][1]) == [" world,"]
    content = fmt.chat([(i, -1.0, []) for i in ids[:2]], start=False)["content"]
    assert [c["token"] for c in content] == [" Hello", " world,"] and content[1]["bytes"] == list(b" world,")


@pytest.fixture(scope="module")
def sp_model(sp):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(sp), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=256, eos_token_id=sp.eos_token_id,
        bos_token_id=sp.bos_token_id, pad_token_id=sp.pad_token_id,
    )  # fmt: skip
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def client(sp, sp_model):
    app = create_app(sp_model, sp, resolve_template(sp, "auto"), ServeSettings(model_name="sp", max_new_tokens=16))
    with TestClient(app) as c:
        yield c


def events(resp) -> list[dict]:
    return [json.loads(x[6:]) for x in resp.text.split("\n\n") if x.startswith("data: {")]


def test_served_logprobs_spell_the_reply(client):
    """The random model's greedy replies here have words after spaces (" a", "☀️ 怎么"): the tokens must keep them."""
    chat = {"messages": [{"role": "user", "content": "hi"}], "temperature": 0, "logprobs": True, "top_logprobs": 1}
    c = client.post("/v1/chat/completions", json=chat).json()["choices"][0]
    content = c["message"]["content"]
    assert " " in content
    assert c["finish_reason"] == "length"  # no </s> among the tokens
    assert bytes(b for e in c["logprobs"]["content"] for b in e["bytes"]).decode() == content
    chunks = events(client.post("/v1/chat/completions", json={**chat, "stream": True}))
    streamed = [
        e
        for ch in chunks
        if ch["choices"] and ch["choices"][0]["logprobs"]
        for e in ch["choices"][0]["logprobs"]["content"]
    ]
    assert streamed == c["logprobs"]["content"]

    body = {"prompt": "Hello world, this is", "temperature": 0, "max_tokens": 12, "logprobs": 1, "echo": True}
    r = client.post("/v1/completions", json=body).json()["choices"][0]
    lp = r["logprobs"]
    assert "".join(lp["tokens"]) == r["text"] and r["text"].startswith("Hello world, this is")
    assert [r["text"][o : o + len(t)] for o, t in zip(lp["text_offset"], lp["tokens"])] == lp["tokens"]
    s = events(client.post("/v1/completions", json={**body, "stream": True}))
    tokens = [
        t for ch in s if ch["choices"] and ch["choices"][0]["logprobs"] for t in ch["choices"][0]["logprobs"]["tokens"]
    ]
    offsets = [
        o
        for ch in s
        if ch["choices"] and ch["choices"][0]["logprobs"]
        for o in ch["choices"][0]["logprobs"]["text_offset"]
    ]
    assert tokens == lp["tokens"] and offsets == lp["text_offset"]


class _Says(torch.nn.Module):
    """The model, with `token` far ahead of every other at each position (a greedy reply repeats it)."""

    def __init__(self, model, token: int) -> None:
        super().__init__()
        self.inner, self.config, self.token = model, model.config, token

    def forward(self, *args, **kw):
        out = self.inner(*args, **kw)
        out.logits[..., self.token] += 100.0
        return out


def test_a_continued_message_keeps_the_space_of_its_next_word(sp_model, sp):
    """continue_final_message: the reply goes on from the assistant's text, so it is decoded after it as a completion
    is ("▁world," → " world,"); decoded alone it lost the space, and the message read "…is world," as "…isworld,". Its
    log-prob tokens keep the space too, streamed or not."""
    model = _Says(sp_model, sp.convert_tokens_to_ids("▁world,"))
    app = create_app(model, sp, resolve_template(sp, "auto"), ServeSettings(model_name="sp", max_new_tokens=16))
    said = "Hello, this is"
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": said}]
    body = {"messages": msgs, "temperature": 0, "max_tokens": 3, "continue_final_message": True,
            "add_generation_prompt": False, "logprobs": True}  # fmt: skip
    with TestClient(app) as c:
        got = c.post("/v1/chat/completions", json=body).json()["choices"][0]
        chunks = events(c.post("/v1/chat/completions", json={**body, "stream": True}))
    assert got["message"]["content"] == " world, world, world,"
    assert bytes(b for e in got["logprobs"]["content"] for b in e["bytes"]).decode() == " world, world, world,"
    assert "".join(ch["choices"][0]["delta"].get("content") or "" for ch in chunks if ch["choices"]) == (
        " world, world, world,"
    )
    streamed = [e for ch in chunks if ch["choices"] and ch["choices"][0]["logprobs"] for e in ch["choices"][0][
        "logprobs"]["content"]]  # fmt: skip
    assert streamed == got["logprobs"]["content"]
