"""`weitiao serve` against OpenAI/vLLM semantics with the official `openai` client: model names (404), the
max_tokens limit (400), log-probs (chat and legacy shapes, stream and not, checked against a direct forward
pass), echo, penalties, min_tokens/ignore_eos/stop_token_ids, per-request seeds and several LoRA adapters."""

from __future__ import annotations

import copy
import json
import math
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
import torch
from loopback import decoding_blocker, running

from weitiao.data.decode import decode_whole, whole_chars
from weitiao.infer.api import ChatRequest, read_body
from weitiao.infer.generate import RowSampling, Sampler
from weitiao.infer.logprobs import _BYTE_DECODER, TextOffsets
from weitiao.infer.serve import Job, ServeSettings, _Row, create_app, run_batch

MSGS = [{"role": "user", "content": "今天天气怎么样？"}]
BYTE_ENCODER = {b: c for c, b in _BYTE_DECODER.items()}  # bytes → the byte-level BPE token's characters


@pytest.fixture(scope="module")
def url(parts):
    with running(create_app(*parts, ServeSettings(model_name="tiny", max_new_tokens=64))) as base:
        yield base


def client(base: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base + "/v1", api_key="none", max_retries=0, timeout=60)


def prompt_ids(parts, messages=MSGS) -> list[int]:
    _, tok, template = parts
    return tok(template.render(tok, messages, add_generation_prompt=True), add_special_tokens=False)["input_ids"]


@torch.no_grad()
def reference(model, ids, n, eot, freq=0.0, pres=0.0, rep=1.0) -> list[int]:
    """Greedy tokens by full forward passes and the penalties written out: OpenAI's frequency/presence
    (reply tokens) and HF's repetition penalty (prompt + reply tokens)."""
    out: list[int] = []
    for _ in range(n):
        logits = model(torch.tensor([ids + out])).logits[0, -1].float()
        if rep != 1:
            seen = torch.tensor(sorted(set(ids + out)))
            logits[seen] = torch.where(logits[seen] > 0, logits[seen] / rep, logits[seen] * rep)
        counts = torch.bincount(torch.tensor(out, dtype=torch.long), minlength=len(logits)).float()
        logits -= freq * counts + pres * (counts > 0).float()
        out.append(int(logits.argmax()))
        if out[-1] == eot:
            break
    return out


@torch.no_grad()
def raw_logprobs(model, ids: list[int]) -> torch.Tensor:
    """log_softmax of the model's logits at every position of `ids` (the raw distribution)."""
    return model(torch.tensor([ids])).logits[0].float().log_softmax(-1)


def test_unknown_model_is_404_and_known_names_answer(url):
    c = client(url)
    with pytest.raises(openai.NotFoundError) as e:
        c.chat.completions.create(model="gpt-4o", messages=MSGS, max_tokens=2)
    err = e.value.body
    assert err["code"] == "model_not_found" and err["param"] == "model" and "gpt-4o" in err["message"]
    with pytest.raises(openai.NotFoundError):
        c.completions.create(model="tiny-typo", prompt="今天", max_tokens=2)
    assert c.chat.completions.create(model="tiny", messages=MSGS, max_tokens=2).model == "tiny"
    r = httpx.post(url + "/v1/chat/completions", json={"messages": MSGS, "max_tokens": 2})  # no model: the base
    assert r.status_code == 200 and r.json()["model"] == "tiny"


def test_max_tokens_over_the_server_limit_is_400(url):
    c = client(url)
    for field in ("max_tokens", "max_completion_tokens"):
        with pytest.raises(openai.BadRequestError, match=f"{field}: 65 is over this server's limit of 64") as e:
            c.chat.completions.create(model="tiny", messages=MSGS, **{field: 65})
        assert e.value.body["param"] == field
    r = c.chat.completions.create(
        model="tiny", messages=MSGS, max_tokens=64, temperature=0, extra_body={"ignore_eos": True}
    )
    assert r.usage.completion_tokens == 64  # the limit itself is fine


def test_max_tokens_and_max_completion_tokens_that_disagree_are_400(url):
    """Both given, max_completion_tokens was taken and max_tokens dropped unsaid (as vLLM does); the same value twice
    is fine."""
    c = client(url)
    with pytest.raises(openai.BadRequestError, match="max_tokens: 3, but max_completion_tokens: 8; send one") as e:
        c.chat.completions.create(model="tiny", messages=MSGS, max_tokens=3, max_completion_tokens=8)
    assert e.value.body["param"] == "max_tokens"
    with pytest.raises(openai.BadRequestError, match="max_tokens: 3, but max_completion_tokens: 8"):
        c.completions.create(model="tiny", prompt="你好", max_tokens=3, extra_body={"max_completion_tokens": 8})
    kw = dict(model="tiny", messages=MSGS, temperature=0, extra_body={"ignore_eos": True})
    assert c.chat.completions.create(max_tokens=3, max_completion_tokens=3, **kw).usage.completion_tokens == 3


@pytest.fixture(scope="module")
def eot_url(parts):
    """A model that always wants to end its turn: its lm_head gets a +100 bias on the end-of-turn token."""
    model, tok, template = parts
    eager = copy.deepcopy(model)
    head = eager.lm_head
    eager.lm_head = torch.nn.Linear(head.in_features, head.out_features, bias=True)
    eager.lm_head.weight.data.copy_(head.weight.data)
    eager.lm_head.bias.data.zero_()
    eager.lm_head.bias.data[tok.convert_tokens_to_ids(template.eot)] = 100.0
    with running(create_app(eager, tok, template, ServeSettings(model_name="tiny", max_new_tokens=64))) as base:
        yield base


def test_usage_counts_the_end_of_turn_token_min_tokens_and_ignore_eos(eot_url):
    c = client(eot_url)
    r = c.chat.completions.create(model="tiny", messages=MSGS, max_tokens=8, temperature=0, logprobs=True)
    assert r.choices[0].message.content == "" and r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens == 1  # the end-of-turn token, as OpenAI and vLLM count it (was 0)
    assert [x.token for x in r.choices[0].logprobs.content] == ["<|im_end|>"]
    # min_tokens holds the end of turn back for 3 tokens; the 4th is it
    r = c.chat.completions.create(
        model="tiny", messages=MSGS, max_tokens=8, temperature=0, extra_body={"min_tokens": 3}, logprobs=True
    )
    assert r.choices[0].finish_reason == "stop" and r.usage.completion_tokens == 4
    assert len(r.choices[0].logprobs.content) == 4 and r.choices[0].logprobs.content[-1].token == "<|im_end|>"
    assert r.choices[0].logprobs.content[0].logprob < -50  # raw log-probs: the bias is there, the ban is not
    streamed = c.chat.completions.create(
        model="tiny", messages=MSGS, max_tokens=8, temperature=0, extra_body={"min_tokens": 3}, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(streamed)
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == r.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == 4
    # ignore_eos: generation runs to max_tokens; the end-of-turn tokens are generated but never shown
    r = c.completions.create(model="tiny", prompt="今天", max_tokens=5, temperature=0, extra_body={"ignore_eos": True})
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 5 and r.choices[0].text == ""


def test_stop_token_ids(url, parts):
    model, tok, template = parts
    c = client(url)
    eot = tok.convert_tokens_to_ids(template.eot)
    ids = reference(model, prompt_ids(parts), 12, eot)
    k = next(i for i in range(1, len(ids)) if ids[i] not in ids[:i] and ids[i] != eot)
    r = c.chat.completions.create(
        model="tiny", messages=MSGS, max_tokens=12, temperature=0, extra_body={"stop_token_ids": [ids[k]]}
    )
    assert r.choices[0].finish_reason == "stop" and r.usage.completion_tokens == k + 1  # the stop token counts
    assert r.choices[0].message.content == decode_whole(tok, ids[:k])


def _row_text(tok, letters: str, stop: list[str], min_tokens: int) -> tuple[str, str, int]:
    """Feed one token per letter to a serve row; its text as sent, finish_reason and token count."""
    job = Job([1], 1, 20, stop, min_tokens=min_tokens)
    row, out = _Row(job, 0, tok, set(), "cpu", None), []
    row.outbox = out
    for ch in letters:
        row.feed(tok.convert_tokens_to_ids(ch))
    sent = "".join(ev[2] for _, ev in out if ev[0] == "delta")
    done = [ev for _, ev in out if ev[0] == "done"]
    return sent, done[0][2] if done else "", done[0][3] if done else len(row.ids)


def test_a_stop_string_before_min_tokens_is_kept_and_the_next_one_cuts(tokenizer):
    # as vLLM: stop strings count from min_tokens on, looked for in each new token's text; the reply was
    # "ax" (the stop string shown, cut before text already sent) or "a" instead of "axb"
    assert _row_text(tokenizer, "axbxc", ["x"], 3) == ("axb", "stop", 4)
    assert _row_text(tokenizer, "axbxc", ["x"], 0) == ("a", "stop", 2)
    assert _row_text(tokenizer, "axbxc", ["x"], 5) == ("axbxc", "", 5)  # none after min_tokens: no cut
    assert _row_text(tokenizer, "axyzxy", ["xy"], 4) == ("axyz", "stop", 6)  # the first one was before
    assert _row_text(tokenizer, "abxyc", ["xy"], 4) == ("ab", "stop", 4)  # ends in the min_tokens-th token


def _row_logprobs(tok, pieces: list[str], stop: list[str]) -> tuple[str, list[list[str]]]:
    """Feed one token per piece, each with a log-prob entry; the text sent and the tokens of each delta's log-probs."""
    job = Job([1], 1, len(pieces), stop, logprobs=0)  # the last piece ends it if no stop string does
    row, out = _Row(job, 0, tok, set(), "cpu", None), []
    row.outbox = out
    for piece in pieces:
        tid = tok.convert_tokens_to_ids(piece)
        row.feed(tid, (tid, -1.0, []))
    deltas = [ev for _, ev in out if ev[0] == "delta"]
    return "".join(ev[2] for ev in deltas), [[tok.decode([t]) for t, _, _ in ev[3]] for ev in deltas]


def test_logprobs_after_a_stop_string_cut_cover_the_returned_text_only(tokenizer):
    """The log-probs of the tokens of a stop string (cut from the text) were returned too, and streamed before the
    cut was known: "ab" came with the log-probs of a, b, x, y. A token whose text begins before the cut stays."""
    assert _row_logprobs(tokenizer, list("abxyc"), ["xy"]) == ("ab", [["a"], ["b"]])
    assert _row_logprobs(tokenizer, list("abxyz"), ["xyz"]) == ("ab", [["a"], ["b"]])  # held two characters back
    assert _row_logprobs(tokenizer, list("xy"), ["xy"]) == ("", [])  # the whole reply cut: no log-probs
    # "Hello" straddles the cut at "lo": its text begins in the reply, so its log-prob stays
    hello = tokenizer.convert_ids_to_tokens(tokenizer("Hello", add_special_tokens=False)["input_ids"])
    assert hello == ["Hello"]
    assert _row_logprobs(tokenizer, [*"ab", "Hello", "c"], ["loc"]) == ("abHel", [["a", "b", "Hello"]])
    assert _row_logprobs(tokenizer, list("abc"), ["xy"]) == ("abc", [["a"], ["b", "c"]])  # no cut: all of them


def _cut_point(text: str, starts: list[int]) -> int:
    """Where a 2-character stop string taken from `text` cuts it: one that first occurs there, not at the start, and
    that tokens begin past (so the cut drops log-probs)."""
    ok = (k for k in range(1, len(text) - 1) if text.find(text[k : k + 2]) == k and starts[-1] >= k)
    return next(k for k in ok if text[k : k + 2].strip())


def _same(got: list[tuple], want: list[tuple]) -> bool:
    """Log-prob entries (token, log-prob, ...) alike: the same tokens and offsets, log-probs within 1e-4."""
    close = (
        a == b or isinstance(a, float) and math.isclose(a, b, abs_tol=1e-4)
        for g, w in zip(got, want)
        for a, b in zip(g, w)
    )
    return len(got) == len(want) and all(close)


def test_logprobs_of_a_cut_reply_through_the_api(url, parts):
    """Chat and completions, streamed and not: the log-probs of a reply cut by a stop string are those of the uncut
    reply's tokens that begin before the cut."""
    c = client(url)
    common = dict(model="tiny", max_tokens=16, temperature=0, extra_body={"ignore_eos": True})
    chat, legacy = dict(messages=MSGS, logprobs=True, **common), dict(prompt="今天天气", logprobs=0, **common)
    fields = ("tokens", "token_logprobs", "text_offset")

    full = c.chat.completions.create(**chat).choices[0]
    offsets = TextOffsets()
    starts = [offsets.take(bytes(x.bytes)) for x in full.logprobs.content]
    cut = _cut_point(full.message.content, starts)
    keep = sum(s < cut for s in starts)
    assert keep < len(starts)
    want = [(x.token, x.logprob) for x in full.logprobs.content[:keep]]
    stop = full.message.content[cut : cut + 2]
    r = c.chat.completions.create(stop=stop, **chat).choices[0]
    assert r.message.content == full.message.content[:cut]
    assert _same([(x.token, x.logprob) for x in r.logprobs.content], want)
    chunks = [ch.choices[0] for ch in c.chat.completions.create(stream=True, stop=stop, **chat) if ch.choices]
    assert "".join(ch.delta.content or "" for ch in chunks) == full.message.content[:cut]
    streamed = [(x.token, x.logprob) for ch in chunks if ch.logprobs for x in ch.logprobs.content]
    assert _same(streamed, want)

    plain = c.completions.create(**legacy).choices[0]
    cut = _cut_point(plain.text, plain.logprobs.text_offset)
    keep = sum(s < cut for s in plain.logprobs.text_offset)
    assert keep < len(plain.logprobs.text_offset)
    want = list(zip(*(getattr(plain.logprobs, f)[:keep] for f in fields)))
    stop = plain.text[cut : cut + 2]
    r = c.completions.create(stop=stop, **legacy).choices[0]
    assert r.text == plain.text[:cut]
    assert _same(list(zip(*(getattr(r.logprobs, f) for f in fields))), want)
    chunks = [ch.choices[0] for ch in c.completions.create(stream=True, stop=stop, **legacy)]
    assert "".join(ch.text for ch in chunks) == plain.text[:cut]
    streamed = [t for ch in chunks if ch.logprobs for t in zip(*(getattr(ch.logprobs, f) for f in fields))]
    assert _same(streamed, want)


def test_chat_logprobs_are_the_raw_model_distribution(url, parts):
    model, tok, template = parts
    c = client(url)
    ids = prompt_ids(parts)
    kw = dict(model="tiny", messages=MSGS, max_tokens=10, logprobs=True, top_logprobs=3)
    for temperature in (0, 0.7):  # sampled with temperature 0.7, log-probs stay those of the raw logits
        r = c.chat.completions.create(temperature=temperature, seed=3, **kw)
        content = r.choices[0].logprobs.content
        assert len(content) == r.usage.completion_tokens
        raw = bytes(b for x in content for b in x.bytes).decode("utf-8", "replace")
        if r.choices[0].finish_reason == "length":
            assert whole_chars(raw) == r.choices[0].message.content  # the bytes rebuild the text (whole characters)
        reply = [tok.convert_tokens_to_ids("".join(BYTE_ENCODER[b] for b in x.bytes)) for x in content]
        want = raw_logprobs(model, ids + reply)[len(ids) - 1 :]
        for i, x in enumerate(content):
            assert math.isclose(x.logprob, want[i, reply[i]].item(), abs_tol=1e-4)
            top = want[i].topk(3)
            assert [t.logprob for t in x.top_logprobs] == pytest.approx(top.values.tolist(), abs=1e-4)
        if temperature == 0:
            assert all(x.top_logprobs[0].token == x.token for x in content)
    # streamed: the same entries, spread over the chunks
    greedy = c.chat.completions.create(temperature=0, **kw)
    chunks = list(c.chat.completions.create(temperature=0, stream=True, **kw))
    streamed = [x for ch in chunks if ch.choices and ch.choices[0].logprobs for x in ch.choices[0].logprobs.content]
    assert [(x.token, x.bytes) for x in streamed] == [(x.token, x.bytes) for x in greedy.choices[0].logprobs.content]
    assert [x.logprob for x in streamed] == pytest.approx([x.logprob for x in greedy.choices[0].logprobs.content])
    plain = c.chat.completions.create(model="tiny", messages=MSGS, max_tokens=3, temperature=0)
    assert plain.choices[0].logprobs is None


def test_completions_logprobs_and_echo(url, parts):
    model, tok, template = parts
    c = client(url)
    prompt = "今天天气怎么样？"
    p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    r = c.completions.create(model="tiny", prompt=prompt, max_tokens=6, temperature=0, logprobs=2, echo=True)
    ch = r.choices[0]
    assert ch.text.startswith(prompt)
    lp = ch.logprobs
    n = len(p_ids) + r.usage.completion_tokens
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == n
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None  # the first prompt token has no context
    gen = reference(model, p_ids, 6, tok.convert_tokens_to_ids(template.eot))
    assert ch.text[len(prompt) :] == decode_whole(tok, gen)
    want = raw_logprobs(model, p_ids + gen)
    for i in range(1, len(p_ids) + len(gen)):
        assert math.isclose(lp.token_logprobs[i], want[i - 1, (p_ids + gen)[i]].item(), abs_tol=1e-4)
        assert 2 <= len(lp.top_logprobs[i]) <= 3 and lp.tokens[i] in lp.top_logprobs[i]
    assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)
    streamed = list(
        c.completions.create(
            model="tiny", prompt=prompt, max_tokens=6, temperature=0, logprobs=2, echo=True, stream=True
        )
    )
    assert "".join(s.choices[0].text for s in streamed) == ch.text
    assert [t for s in streamed if s.choices[0].logprobs for t in s.choices[0].logprobs.tokens] == lp.tokens
    offsets = [t for s in streamed if s.choices[0].logprobs for t in s.choices[0].logprobs.text_offset]
    assert offsets == lp.text_offset
    no_lp = c.completions.create(model="tiny", prompt=prompt, max_tokens=6, temperature=0, echo=True)
    assert no_lp.choices[0].text == ch.text and no_lp.choices[0].logprobs is None
    plain = c.completions.create(model="tiny", prompt=prompt, max_tokens=6, temperature=0, logprobs=0)
    assert plain.choices[0].text == ch.text[len(prompt) :]
    assert plain.choices[0].logprobs.token_logprobs == lp.token_logprobs[len(p_ids) :]


def test_text_offset_counts_characters_split_over_tokens(url, parts):
    """text[:text_offset[k]] is what the tokens before k decode to, for characters a byte-level BPE splits over
    several tokens (龘 and 🦄 are 3 byte tokens each in the demo's vocabulary). Summing the tokens' texts, each
    piece a U+FFFD, ran past the end of the text (21 for a 13-character reply)."""
    _, tok, _ = parts
    c = client(url)
    prompt = "龘🦄今天龘"
    p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    assert len(p_ids) > len(prompt) + 4  # the split this test is about
    r = c.completions.create(model="tiny", prompt=prompt, max_tokens=8, temperature=0, logprobs=0, echo=True)
    ch = r.choices[0]
    lp = ch.logprobs
    want = [whole_chars(tok.decode(p_ids[:k])) for k in range(len(p_ids))]  # what the tokens before k decode to
    assert [ch.text[:o] for o in lp.text_offset[: len(p_ids)]] == want
    assert lp.text_offset == sorted(lp.text_offset) and lp.text_offset[-1] <= len(ch.text)
    streamed = list(
        c.completions.create(
            model="tiny", prompt=prompt, max_tokens=8, temperature=0, logprobs=0, echo=True, stream=True
        )
    )
    assert [t for s in streamed if s.choices[0].logprobs for t in s.choices[0].logprobs.text_offset] == lp.text_offset
    plain = c.completions.create(model="tiny", prompt=prompt, max_tokens=8, temperature=0, logprobs=0)
    reply = plain.choices[0].logprobs.text_offset
    assert reply == [o - len(prompt) for o in lp.text_offset[len(p_ids) :]]  # a reply's own offsets start at 0


@pytest.mark.parametrize(
    "penalty", [{"frequency_penalty": 1.5}, {"presence_penalty": 2.0}, {"repetition_penalty": 3.0}], ids=str
)
def test_penalties_follow_their_definitions_alone_and_batched(url, parts, penalty):
    model, tok, template = parts
    c = client(url)
    eot = tok.convert_tokens_to_ids(template.eot)
    ids = prompt_ids(parts)
    names = {"frequency_penalty": "freq", "presence_penalty": "pres", "repetition_penalty": "rep"}
    want = reference(model, ids, 24, eot, **{names[k]: v for k, v in penalty.items()})
    assert want != reference(model, ids, 24, eot)  # negative control: the penalty changes this reply

    def ask(extra: dict) -> tuple[str, int]:
        body = {k: v for k, v in extra.items() if k != "repetition_penalty"}
        rep = {k: v for k, v in extra.items() if k == "repetition_penalty"}
        r = c.chat.completions.create(model="tiny", messages=MSGS, max_tokens=24, temperature=0, extra_body=rep, **body)
        return r.choices[0].message.content, r.usage.completion_tokens

    expected = (decode_whole(tok, want), len(want))
    assert ask(penalty) == expected
    with ThreadPoolExecutor(4) as pool:  # next to unpenalized rows in one batch
        together = list(pool.map(ask, [penalty, {}, penalty, {"frequency_penalty": -1.0}]))
    assert together[0] == together[2] == expected


def test_the_model_folder_generation_config_applies_as_in_chat_and_hf_generate(parts):
    """no_repeat_ngram_size and suppress_tokens of generation_config.json: HF generate and `weitiao chat` honoured
    them, serve ignored them (another greedy reply); a key the loop cannot honour is refused, as chat refuses it."""
    from fastapi.testclient import TestClient

    from weitiao.errors import UserError
    from weitiao.infer.generate import stream_reply

    model, tok, template = copy.deepcopy(parts[0]), parts[1], parts[2]
    ids = prompt_ids(parts)
    plain = model.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False)[0, len(ids) :].tolist()
    model.generation_config.no_repeat_ngram_size = 2
    model.generation_config.suppress_tokens = [plain[0]]
    hf = model.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False)[0, len(ids) :].tolist()
    assert hf != plain  # negative control: the folder's settings change the greedy reply
    want = decode_whole(tok, [t for t in hf if t != tok.convert_tokens_to_ids(template.eot)])
    assert "".join(stream_reply(model, tok, template, MSGS, max_new_tokens=24, temperature=0)) == want
    with TestClient(create_app(model, tok, template, ServeSettings(max_new_tokens=24))) as c:
        r = c.post("/v1/chat/completions", json={"messages": MSGS, "temperature": 0, "max_tokens": 24}).json()
    assert r["choices"][0]["message"]["content"] == want
    model.generation_config.num_beams = 4
    with pytest.raises(UserError, match="num_beams=4 is not supported"):
        create_app(model, tok, template, ServeSettings())


def test_the_model_folder_repetition_penalty_is_the_default_as_in_hf_generate(parts):
    """Qwen2.5-Instruct's generation_config.json sets repetition_penalty 1.05: HF generate (greedy too) and vLLM apply
    it, `weitiao chat` and serve ignored it; now it is their default, and a request's own value still wins."""
    from fastapi.testclient import TestClient

    from weitiao.infer.generate import stream_reply

    model, tok, template = copy.deepcopy(parts[0]), parts[1], parts[2]
    ids, eot = prompt_ids(parts), tok.convert_tokens_to_ids(parts[2].eot)
    plain = decode_whole(tok, reference(model, ids, 24, eot)[:24])
    model.generation_config.repetition_penalty = 3.0
    hf = model.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False)[0, len(ids) :].tolist()
    want = decode_whole(tok, [t for t in hf if t != eot])
    assert want != plain  # negative control
    assert "".join(stream_reply(model, tok, template, MSGS, max_new_tokens=24, temperature=0)) == want
    with TestClient(create_app(model, tok, template, ServeSettings(max_new_tokens=24))) as c:
        body = {"messages": MSGS, "temperature": 0, "max_tokens": 24}
        assert c.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]["content"] == want
        own = c.post("/v1/chat/completions", json={**body, "repetition_penalty": 1.0}).json()
        assert own["choices"][0]["message"]["content"] == plain
    from weitiao.infer.generate import generate  # eval gen's and the golden sets' path: the same default

    assert generate(model, tok, template, [MSGS], max_new_tokens=24)[0].text == want
    assert generate(model, tok, template, [MSGS], max_new_tokens=24, model_defaults=False)[0].text == plain


def test_the_model_folder_sampling_defaults_apply_where_a_request_leaves_them_open(parts):
    """vLLM's server takes temperature, top_p and top_k from generation_config.json when a request omits them
    (Qwen2.5-Instruct: 0.7, 0.8, 20); serve drew with OpenAI's 1, 1 and no top-k there, another distribution."""
    from fastapi.testclient import TestClient

    model, tok, template = copy.deepcopy(parts[0]), parts[1], parts[2]
    ids, eot = prompt_ids(parts), tok.convert_tokens_to_ids(parts[2].eot)
    greedy = decode_whole(tok, reference(model, ids, 24, eot)[:24])
    model.generation_config.top_k = 1  # the folder's: only the likeliest token, so a draw is the greedy reply
    with TestClient(create_app(model, tok, template, ServeSettings(max_new_tokens=24))) as c:
        body = {"messages": MSGS, "max_tokens": 24, "seed": 7}
        assert c.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]["content"] == greedy
        own = c.post("/v1/chat/completions", json={**body, "top_k": 0}).json()  # a request's own value wins
        assert own["choices"][0]["message"]["content"] != greedy


def test_seeded_request_same_alone_and_in_batches(parts):
    """The same seeded request gives the same text alone and in each of 4 batches of 4 different requests."""
    seeded = dict(messages=MSGS, max_tokens=16, temperature=1.0, seed=1234)
    others = [
        dict(messages=[{"role": "user", "content": "周末有什么安排？"}], max_tokens=12, temperature=0.9, seed=5),
        dict(messages=[{"role": "user", "content": "推荐一部电影吧"}], max_tokens=20, temperature=1.0),
        dict(messages=[{"role": "user", "content": "Hello world"}], max_tokens=16, temperature=0),
    ]
    with running(create_app(*parts, ServeSettings(model_name="tiny", max_batch=4))) as base:
        c = client(base)

        def ask(kw: dict) -> str:
            return c.chat.completions.create(model="tiny", **kw).choices[0].message.content

        alone = ask(seeded)
        batched = []
        for pos in range(4):  # the seeded request at each position of the batch
            reqs = others[:pos] + [seeded] + others[pos:]
            before = httpx.get(base + "/health").json()["joined"]
            with decoding_blocker(base, MSGS), ThreadPoolExecutor(4) as pool:  # the 4 queue behind the blocker
                texts = list(pool.map(ask, reqs))
            batched.append(texts[pos])
            # max_batch 4: three join the decoding blocker at once, the fourth when a place frees
            assert httpx.get(base + "/health").json()["joined"] - before >= 3
        two = c.chat.completions.create(model="tiny", n=2, **seeded)
    assert batched == [alone] * 4
    assert two.choices[0].message.content == alone  # choice i draws from seed + i (as vLLM's n > 1)
    assert two.choices[1].message.content != alone


def test_without_its_own_generator_a_seeded_row_depends_on_its_batch(parts):
    """Negative control at the batch level: seeding the global RNG once per batch (the old way) gives the
    row other draws once other rows share the batch; the row's own generator does not."""
    model, tok, template = parts
    stop = {tok.convert_tokens_to_ids(template.eot)}
    ids = [
        prompt_ids(parts, [{"role": "user", "content": p}]) for p in ("今天天气怎么样？", "周末有什么安排？", "Hello")
    ]

    def text(seed_in_job: bool, batchmates: int) -> str:
        jobs = [Job(p, 1, 12, [], RowSampling(temperature=1.0)) for p in ids[1 : 1 + batchmates]]
        jobs.insert(batchmates // 2, Job(ids[0], 1, 12, [], RowSampling(temperature=1.0), 99 if seed_in_job else None))
        torch.manual_seed(99)
        got: list = []
        run_batch(model, tok, jobs, stop, got.extend)
        mine = jobs[batchmates // 2]
        return "".join(ev[2] for j, ev in got if j is mine and ev[0] == "delta")

    assert text(True, 0) == text(True, 1) == text(True, 2)
    assert text(False, 0) != text(False, 2)


def test_sampler_top_k_top_p_match_hf():
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    torch.manual_seed(0)
    logits = torch.randn(4, 50) * 3
    rows = [RowSampling(1.0, 0.9, 0), RowSampling(1.0, 1.0, 5), RowSampling(1.0, 0.5, 10), RowSampling(1.0, 1.0, 0)]
    mine = Sampler(rows, [[1]] * 4, [1] * 4, 50, "cpu")._top_k_top_p(logits.clone())
    for i, r in enumerate(rows):
        want = logits[i : i + 1].clone()
        if r.top_k:
            want = TopKLogitsWarper(r.top_k)(None, want)
        if r.top_p < 1:
            want = TopPLogitsWarper(r.top_p)(None, want)
        assert torch.equal(torch.isinf(mine[i]), torch.isinf(want[0])), i


def batched_once(base: str, asks: list, call) -> list:
    """Answers of `call(x)` for each of `asks`, all sent while a long request decodes, so that they join its batch."""
    before = httpx.get(base + "/health").json()["joined"]
    with decoding_blocker(base, MSGS), ThreadPoolExecutor(len(asks)) as pool:
        out = list(pool.map(call, asks))
    assert httpx.get(base + "/health").json()["joined"] - before == len(asks)  # each joined the decoding blocker
    return out


@pytest.fixture(scope="module")
def two_adapters(tmp_path_factory, tiny_model_dir):
    """Two different tiny LoRA adapter dirs on the tiny Llama (random B, so each changes the replies)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    dirs = {}
    for name, seed in (("sft-a", 1), ("sft-b", 2)):
        torch.manual_seed(seed)
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        cfg = LoraConfig(r=4, lora_alpha=32, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
        dirs[name] = tmp_path_factory.mktemp(name) / "adapter"
        get_peft_model(base, cfg).save_pretrained(dirs[name])
    return dirs


def test_several_adapters_on_one_base_batch_together(two_adapters, parts):
    from weitiao.data.templates import resolve_template
    from weitiao.infer.chat import load_adapters

    model, tok, base = load_adapters(None, {k: str(v) for k, v in two_adapters.items()}, None)
    template = resolve_template(tok)
    eot = tok.convert_tokens_to_ids(template.eot)
    names = ["tiny", "sft-a", "sft-b"]
    prompts = ["今天天气怎么样？", "周末有什么安排？"]
    expected = {}
    for name in names:  # each adapter alone, the plain peft way (one active adapter, full forwards)
        for p in prompts:
            ids = prompt_ids((model, tok, template), [{"role": "user", "content": p}])
            if name == "tiny":
                with model.disable_adapter():
                    want = reference(model, ids, 10, eot)
            else:
                model.set_adapter(name)
                want = reference(model, ids, 10, eot)
            expected[name, p] = decode_whole(tok, want)
    assert len({expected[n, prompts[0]] for n in names}) == 3  # the adapters do change the reply
    settings = ServeSettings(model_name="tiny", max_batch=8, adapters=("sft-a", "sft-b"))
    with running(create_app(model, tok, template, settings)) as url:
        c = client(url)
        assert [m.id for m in c.models.list().data] == names

        def ask(job: tuple) -> str:
            r = c.chat.completions.create(
                model=job[0], messages=[{"role": "user", "content": job[1]}], max_tokens=10, temperature=0
            )
            return r.choices[0].message.content

        jobs = [(n, p) for p in prompts for n in names]
        assert [ask(j) for j in jobs] == [expected[j] for j in jobs]  # alone
        assert batched_once(url, jobs, ask) == [expected[j] for j in jobs]  # six rows, three adapters, one batch
        with pytest.raises(openai.NotFoundError):
            c.chat.completions.create(model="sft-c", messages=MSGS, max_tokens=2)


def test_cli_adapter_flags(two_adapters, monkeypatch):
    import uvicorn
    from fastapi.testclient import TestClient
    from typer.testing import CliRunner

    from weitiao.cli import app
    from weitiao.errors import UserError
    from weitiao.infer import serve
    from weitiao.infer.chat import parse_adapters

    assert parse_adapters(["runs/sft"]) is None  # one plain run: served as the model, as before
    assert parse_adapters(["a=runs/x", "b=/abs/y"]) == {"a": "runs/x", "b": "/abs/y"}
    for bad in (["a=x", "runs/y"], ["a=x", "a=y"], ["a.b=x", "c=y"], ["__base__=x"]):
        with pytest.raises(UserError, match="--adapter"):
            parse_adapters(bad)
    apps = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: apps.append(app))
    flags = [x for k, v in two_adapters.items() for x in ("--adapter", f"{k}={v}")]
    r = CliRunner().invoke(app, ["serve", *flags])
    assert r.exit_code == 0, r.output
    ids = [m["id"] for m in TestClient(apps[0]).get("/v1/models").json()["data"]]
    assert ids == ["llama", "sft-a", "sft-b"]  # the base under its folder's name, then the adapters
    with pytest.raises(UserError, match="taken"):
        serve.serve(adapter=[f"llama={two_adapters['sft-a']}"])


def test_several_adapters_load_the_base_as_they_trained_or_are_refused(tiny_model_dir, chat_file, tmp_path):
    """`--adapter q=QLORA --adapter f=FP32` loaded the base as the first adapter trained (4 bit here) and served the
    other on it, another model than it trained on, without a word; and adapters all trained in 4 bit loaded it so
    unsaid, where one `--adapter` says it. Adapters trained in different quantizations are refused in one line
    (--quant picks one for all); a shared training quantization is said at start, as for one adapter."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from conftest import free_port, recipe_config, serve_process

    from weitiao.infer.chat import load_adapters, load_chat_model
    from weitiao.recipes import sft

    runs = {}
    for quant in ("4bit", "none"):
        runs[quant] = tmp_path / quant
        over = (f"model.quant={quant}", "train.max_steps=1")
        sft.run(recipe_config("sft", tiny_model_dir, chat_file, runs[quant], *over))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    for order in (("4bit", "none"), ("none", "4bit")):
        flags = [x for q in order for x in ("--adapter", f"{'q' if q == '4bit' else 'f'}={runs[q]}")]
        cmd = [sys.executable, "-m", "weitiao", "serve", *flags, "--port", str(free_port())]
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)  # it served: killed here
        assert p.returncode == 1, p.stdout + p.stderr
        [line] = [x for x in p.stderr.splitlines() if x.startswith("error:")]
        assert line.startswith(f"error: --adapter {flags[3][:2]}") and "trained on the base in " in line, line
        assert "4-bit NF4" in line and "full precision" in line and "--quant" in line, line
    load_adapters(None, {"q": str(runs["4bit"]), "f": str(runs["none"])}, "none")  # --quant: one way for all
    # two adapters trained in 4 bit: the base in 4 bit, said; each answers as when served alone
    with serve_process(tiny_model_dir, "--adapter", f"q={runs['4bit']}", "--adapter", f"r={runs['4bit']}", env=env) as (
        proc,
        url,
    ):
        got = client(url).chat.completions.create(model="r", messages=MSGS, max_tokens=3, logprobs=True, temperature=0)
    assert "loaded in 4-bit NF4 as in training" in proc.stdout.read().decode()
    model, tok = load_chat_model(None, str(runs["4bit"]))
    ids = tok.apply_chat_template(MSGS, add_generation_prompt=True, return_dict=False)
    with torch.no_grad():
        alone = torch.log_softmax(model(torch.tensor([ids])).logits[0, -1].float(), -1)
    assert abs(got.choices[0].logprobs.content[0].logprob - float(alone.max())) < 1e-4


def test_null_means_default_and_logprobs_refused_under_an_output_filter(url, parts):
    nulls = {"logprobs": None, "top_logprobs": None, "echo": None, "presence_penalty": None, "min_tokens": None}
    r = httpx.post(url + "/v1/chat/completions", json={"messages": MSGS, "max_tokens": 2, **nulls}, timeout=30)
    assert r.status_code == 200 and r.json()["choices"][0]["logprobs"] is None
    # OpenAI's nullable sampling fields too (temperature: null was a 400): null is the default, same seeded text
    nulls = {k: None for k in ("temperature", "top_p", "n", "stream", "stop", "top_k", "repetition_penalty")}
    for path, body in (("/v1/chat/completions", {"messages": MSGS}), ("/v1/completions", {"prompt": "今天"})):
        body |= {"max_tokens": 6, "seed": 3}
        plain = httpx.post(url + path, json=body, timeout=30).json()["choices"]
        r = httpx.post(url + path, json={**body, **nulls}, timeout=30)
        assert r.status_code == 200 and r.json()["choices"] == plain
    r = httpx.post(url + "/v1/chat/completions", json={"messages": MSGS, "audio": None}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "audio"  # unknown stays refused, even null
    with running(create_app(*parts, ServeSettings(model_name="tiny"), output_filter=lambda t: t)) as base:
        with pytest.raises(openai.BadRequestError, match="--pii") as e:
            client(base).chat.completions.create(model="tiny", messages=MSGS, max_tokens=2, logprobs=True)
        assert e.value.body["param"] == "logprobs"


def test_a_raw_prompt_gets_the_bos_the_tokenizer_adds(parts):
    """Raw-text training (chat._raw_ids) and vLLM put a BOS tokenizer's BOS before a raw prompt; /v1/completions fed
    the text alone. Now the model reads BOS + text; usage counts it; the echo shows the text's own tokens, the first
    with its log-prob given the BOS."""
    from tokenizers import processors

    model, tok, template = parts
    tok = copy.deepcopy(tok)
    bos = "<|endoftext|>"
    tok._tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", special_tokens=[(bos, tok.convert_tokens_to_ids(bos))]
    )
    prompt = "今天天气怎么样？"
    p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    full = tok(prompt)["input_ids"]
    assert full == [tok.convert_tokens_to_ids(bos), *p_ids]  # negative control: this tokenizer does add one
    with running(create_app(model, tok, template, ServeSettings(model_name="tiny", max_new_tokens=16))) as base:
        r = client(base).completions.create(model="tiny", prompt=prompt, max_tokens=5, temperature=0, logprobs=1,
                                            echo=True)  # fmt: skip
        as_ids = client(base).completions.create(model="tiny", prompt=p_ids, max_tokens=1)  # token ids: as given
    assert as_ids.usage.prompt_tokens == len(p_ids)  # no BOS added, as vLLM
    assert r.usage.prompt_tokens == len(full)
    gen = reference(model, full, 5, tok.convert_tokens_to_ids(template.eot))
    assert r.choices[0].text == prompt + decode_whole(tok, gen)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(p_ids) + len(gen) and bos not in lp.tokens
    want = raw_logprobs(model, full + gen)
    assert math.isclose(lp.token_logprobs[0], want[0, p_ids[0]].item(), abs_tol=1e-4)  # given the BOS


def test_a_nested_null_is_its_default_an_unknown_nested_key_still_refused(url):
    """`stream_options: {"include_usage": null}` (the OpenAI client sends what it is given) was a 400: the null meant
    "default" only at the top level. Now null is the default at any depth; an unknown key stays refused, null or not."""
    c = client(url)
    for create, kw in ((c.chat.completions.create, {"messages": MSGS}), (c.completions.create, {"prompt": "今天"})):
        chunks = list(create(model="tiny", max_tokens=3, stream=True, stream_options={"include_usage": None}, **kw))
        assert chunks and all(ch.usage is None for ch in chunks)  # the default: no usage chunk
        with pytest.raises(openai.BadRequestError) as e:
            create(model="tiny", max_tokens=3, stream=True, stream_options={"continuous_usage_stats": None}, **kw)
        assert e.value.body["param"] == "stream_options.continuous_usage_stats"
    call = {"id": "c1", "type": None, "function": {"name": "f", "arguments": "{}"}}  # type: null → "function"
    turns = [*MSGS, {"role": "assistant", "content": None, "tool_calls": [call]}]
    turns += [{"role": "tool", "tool_call_id": "c1", "content": "晴"}]
    req = read_body(json.dumps({"messages": turns, "stream_options": None}).encode(), ChatRequest)
    assert req.messages[1].tool_calls[0].type == "function"  # this tiny template has no tools: checked here
    r = httpx.post(url + "/v1/chat/completions", json={"messages": MSGS, "response_format": {"type": None}}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "response_format.type"  # required: null is no type


def test_retrieve_model_answers_each_served_id_slashes_included(parts):
    """GET /v1/models/{id} (the client's models.retrieve) was a 404 for every id: it answers the card /v1/models
    lists, for an id with slashes too, and an id not served is OpenAI's 404 model_not_found."""
    settings = ServeSettings(model_name="Qwen/Qwen2.5-0.5B", adapters=("sft-a",))  # cards only: nothing generates
    with running(create_app(*parts, settings)) as base:
        c = client(base)
        listed = {m.id: m for m in c.models.list().data}
        assert list(listed) == ["Qwen/Qwen2.5-0.5B", "sft-a"]
        for name, card in listed.items():
            assert c.models.retrieve(name) == card
        raw = httpx.get(base + "/v1/models").json()["data"]
        assert [httpx.get(f"{base}/v1/models/{m['id']}").json() for m in raw] == raw  # the same JSON, key for key
        assert c.models.retrieve("sft-a").parent == "Qwen/Qwen2.5-0.5B"
        for name in ("gpt-4o", "Qwen", "Qwen/Qwen2.5-0.5B/extra", "sft-a/"):
            with pytest.raises(openai.NotFoundError) as e:
                c.models.retrieve(name)
            err = e.value.body
            assert err["code"] == "model_not_found" and err["param"] == "model" and name in err["message"], err


def by_index(chunks) -> dict[int, str]:
    """A streamed completion's text per choice index."""
    texts: dict[int, str] = {}
    for ch in chunks:
        for c in ch.choices:
            texts[c.index] = texts.get(c.index, "") + c.text
    return texts


def test_token_id_prompts_and_batches_of_prompts(url, parts):
    """`prompt` in OpenAI's four forms (a text, texts, token ids, lists of token ids; lists were a 400): token ids are
    the model's input as given, and prompt k of a batch answers choices k*n..k*n+n-1, each as when asked alone."""
    model, tok, template = parts
    c, eot = client(url), tok.convert_tokens_to_ids(template.eot)
    texts = ["今天天气怎么样？", "周末去哪儿玩"]
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    kw = {"model": "tiny", "max_tokens": 5, "temperature": 0}
    alone = [c.completions.create(prompt=t, logprobs=1, echo=True, **kw) for t in texts]
    for t, p, a in zip(texts, ids, alone):
        gen = reference(model, p, 5, eot)
        assert a.choices[0].text == t + decode_whole(tok, gen)
        r = c.completions.create(prompt=p, logprobs=1, echo=True, **kw)  # one prompt as token ids
        assert r.choices[0].text == a.choices[0].text and r.usage == a.usage
        assert r.choices[0].logprobs == a.choices[0].logprobs  # the echoed prompt's tokens and log-probs too
    for prompt in (texts, ids):  # several prompts, n 2: prompt k's choices are 2k and 2k+1
        r = c.completions.create(prompt=prompt, n=2, logprobs=1, echo=True, **kw)
        assert [ch.index for ch in r.choices] == [0, 1, 2, 3]
        for ch, a in zip(r.choices, [a.choices[0] for a in alone for _ in "ab"]):
            assert ch.text == a.text and ch.logprobs.tokens == a.logprobs.tokens
            assert ch.logprobs.text_offset == a.logprobs.text_offset
            got, want = ch.logprobs.token_logprobs, a.logprobs.token_logprobs
            assert got[0] is None and all(math.isclose(x, y, abs_tol=1e-4) for x, y in zip(got[1:], want[1:])), (
                got,
                want,
            )
        assert r.usage.prompt_tokens == sum(map(len, ids))  # each prompt once, whatever n
        assert r.usage.completion_tokens == 2 * sum(a.usage.completion_tokens for a in alone)
        chunks = list(
            c.completions.create(prompt=prompt, n=2, stream=True, stream_options={"include_usage": True}, **kw)
        )
        assert by_index(chunks) == {i: alone[i // 2].choices[0].text[len(texts[i // 2]) :] for i in range(4)}
        assert chunks[-1].usage == r.usage
        finished = [c_.index for ch in chunks for c_ in ch.choices if c_.finish_reason]
        assert sorted(finished) == [0, 1, 2, 3]
    bad = [
        [ids[0][0], len(tok)],  # past the vocabulary
        [ids[0], [-1]],
        [],
        [ids[0], []],
        [ids[0][0], "x"],
    ]
    for prompt in bad:
        r = httpx.post(url + "/v1/completions", json={"prompt": prompt, "max_tokens": 2}, timeout=30)
        assert r.status_code == 400 and r.json()["error"]["param"].split(".")[0] == "prompt", (prompt, r.text)
    with pytest.raises(openai.BadRequestError, match=f"token id {len(tok)} .*not in the vocabulary") as e:
        c.completions.create(prompt=[ids[0], [1, len(tok)]], **kw)
    assert e.value.body["param"] == "prompt"


def test_a_token_the_model_cannot_embed_is_refused_and_spares_the_batch(parts, tiny_model_dir):
    """A tokenizer token past the model's embeddings (added to the tokenizer, never to the model) in a request's text
    failed the embedding lookup of the batch it joined: a 500 for it and for every reply decoding beside it. Now a 400
    naming the field, and `weitiao chat`/`eval gen` refuse it in one line (they stopped on an IndexError)."""
    from weitiao.errors import UserError
    from weitiao.infer.generate import generate, stream_reply

    model, tok, template = parts
    tok = copy.deepcopy(tok)
    tok.add_special_tokens({"additional_special_tokens": ["<extra>"]})
    assert len(tok) > model.config.vocab_size
    with running(create_app(model, tok, template, ServeSettings(model_name="tiny", max_new_tokens=256))) as base:
        c = client(base)
        with ThreadPoolExecutor(1) as pool:
            kw = dict(model="tiny", messages=MSGS, max_tokens=200, temperature=0, extra_body={"ignore_eos": True})
            beside = pool.submit(c.chat.completions.create, **kw)
            with httpx.Client(timeout=60) as http:
                while http.get(base + "/health").json()["running"] == 0 and not beside.done():
                    pass
            for call, field in (
                (lambda: c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "你好<extra>"}]),
                 "messages"),
                (lambda: c.completions.create(model="tiny", prompt="你好<extra>", max_tokens=4), "prompt"),
            ):  # fmt: skip
                with pytest.raises(openai.BadRequestError) as e:
                    call()
                assert e.value.body["param"] == field and "'<extra>'" in e.value.body["message"]
            r = beside.result()
        assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 200
    msgs = [{"role": "user", "content": "你好<extra>"}]
    with pytest.raises(UserError, match=r"the conversation: it holds the token '<extra>'"):
        list(stream_reply(model, tok, template, msgs, max_new_tokens=4))
    with pytest.raises(UserError, match=r"conversation 1: it holds the token '<extra>'"):
        generate(model, tok, template, [MSGS, msgs], max_new_tokens=4)


def test_a_developer_message_is_the_system_message(url):
    """OpenAI's `developer` role (new clients send it instead of `system`) is rendered as the template's system turn,
    as training rows read it, never as a turn of a role named developer the model never saw."""
    c = client(url)
    kw = dict(model="tiny", max_tokens=6, temperature=0, logprobs=True)
    got = [
        c.chat.completions.create(messages=[{"role": role, "content": "简洁"}, *MSGS], **kw)
        for role in ("developer", "system")
    ]
    assert got[0].usage.prompt_tokens == got[1].usage.prompt_tokens
    assert [x.logprob for x in got[0].choices[0].logprobs.content] == [
        x.logprob for x in got[1].choices[0].logprobs.content
    ]


# a template that drops a system message after the first one, and one that renders it as a user turn
DROPS_LATE_SYSTEM = (
    "{% for m in messages %}{% if m['role'] != 'system' or loop.first %}"
    "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
LATE_SYSTEM_AS_USER = (
    "{% for m in messages %}{% set r = 'user' if m['role'] == 'system' and not loop.first else m['role'] %}"
    "{{ '<|im_start|>' + r + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
LATE = [*MSGS, {"role": "assistant", "content": "晴"}, {"role": "developer", "content": "简洁"}, *MSGS]


@pytest.mark.parametrize("jinja", [DROPS_LATE_SYSTEM, LATE_SYSTEM_AS_USER])
def test_a_late_system_message_the_template_cannot_place_is_400(parts, jinja):
    """A system/developer message after the first message was accepted whatever the template made of it: dropped, or
    read as a user turn, the reply was to another conversation than the one sent. Now a 400 naming the message; a
    template that renders it in its place (ChatML) serves it there, and a leading one is served as before."""
    from conftest import build_tokenizer

    from weitiao.data.templates import resolve_template

    model, tok, _ = parts
    tok = build_tokenizer(jinja)
    with running(create_app(model, tok, resolve_template(tok), ServeSettings(model_name="tiny"))) as base:
        c = client(base)
        with pytest.raises(openai.BadRequestError, match="messages.2: a system .developer. message after the first"):
            c.chat.completions.create(model="tiny", messages=LATE, max_tokens=2)
        assert c.chat.completions.create(model="tiny", messages=[LATE[3], *MSGS], max_tokens=2).choices


@pytest.mark.parametrize(("jinja", "want"), [(None, None), (DROPS_LATE_SYSTEM, 3), (LATE_SYSTEM_AS_USER, 3)])
def test_late_system_messages_cost_two_renders_whatever_their_number(jinja, want, monkeypatch):
    """Each late system message was checked by a render of the whole conversation as a user turn: quadratic, so a
    70 KB body of 2,000 alternating user/system messages held a prep thread 30 s (8 MB: hours). Now two renders and a
    scan, and the same answer: None for ChatML, the first late one where the template drops it or reads it as a
    user turn."""
    from conftest import build_tokenizer, count_renders

    from weitiao.data.templates import resolve_template

    tok = build_tokenizer(jinja) if jinja else build_tokenizer()
    template = resolve_template(tok)
    msgs = [{"role": r, "content": "好"} for r in ("user", "assistant", "user")]
    msgs += [{"role": ("system", "user")[k % 2], "content": "简洁"} for k in range(400)]
    calls = count_renders(monkeypatch, tok)
    assert template.misplaced_system(tok, msgs) == want
    assert len(calls) <= 2


def test_a_late_system_message_a_chatml_template_places_is_served_there(url, parts):
    r = client(url).chat.completions.create(model="tiny", messages=LATE, max_tokens=2, temperature=0)
    as_system = [*LATE[:2], {"role": "system", "content": "简洁"}, *LATE[3:]]
    assert r.usage.prompt_tokens == len(prompt_ids(parts, as_system))
    assert "<|im_start|>system\n简洁<|im_end|>\n<|im_start|>user" in parts[2].render(parts[1], as_system)


def test_a_tiny_temperature_samples_its_top_token_instead_of_failing(url):
    """temperature 1e-40 (allowed: above 0) divided float32 logits into inf, the draw saw NaN: a 500 'probability tensor
    contains either inf, nan'. The logits are shifted by their top first (the same distribution): it draws the top."""
    c = client(url)
    kw = dict(model="tiny", messages=MSGS, max_tokens=8)
    greedy = c.chat.completions.create(**kw, temperature=0).choices[0].message.content
    assert c.chat.completions.create(**kw, temperature=1e-40).choices[0].message.content == greedy
    assert c.chat.completions.create(**kw, temperature=1e-40, seed=3).choices[0].message.content == greedy


def test_vllm_top_k_minus_one_and_min_p(url):
    """vLLM clients send top_k -1 for 'off' (vLLM takes 0 or -1) and a request's min_p: both were 400s. Now -1 draws as
    0 does, and min_p applies per request (1: only the top token survives, the greedy reply)."""
    c = client(url)
    kw = dict(model="tiny", messages=MSGS, max_tokens=12, seed=5)
    drawn = [c.chat.completions.create(**kw, extra_body={"top_k": k}).choices[0].message.content for k in (0, -1)]
    assert drawn[0] == drawn[1]
    greedy = c.chat.completions.create(**{**kw, "temperature": 0}).choices[0].message.content
    assert c.chat.completions.create(**kw, extra_body={"min_p": 1.0}).choices[0].message.content == greedy != drawn[0]
    assert c.chat.completions.create(**kw, extra_body={"min_p": 0.0}).choices[0].message.content == drawn[0]
    with pytest.raises(openai.BadRequestError, match="top_k"):
        c.chat.completions.create(**kw, extra_body={"top_k": -2})
