"""Decoding on whole characters: a Chinese character split over two byte-level tokens never shows as U+FFFD."""

from __future__ import annotations

import torch

from weitiao.data.decode import IncrementalDecoder, decode_whole


def split_char_tokenizer():
    """Byte-level BPE with the bytes alphabet plus one merge: the first two bytes of 好 (E5 A5), so 好 = 2 tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    b2u = {b: c for b, c in zip(range(256), _bytes_to_unicode())}
    first = b2u[0xE5] + b2u[0xA5]
    vocab = {c: i for i, c in enumerate(alphabet)} | {first: len(alphabet), "<|im_end|>": len(alphabet) + 1}
    raw = Tokenizer(models.BPE(vocab=vocab, merges=[(b2u[0xE5], b2u[0xA5])]))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|im_end|>", pad_token="<|im_end|>")


def _bytes_to_unicode() -> list[str]:
    """GPT-2's byte → printable character table, in byte order."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for _, c in sorted(zip(bs, cs))]


def test_char_over_two_tokens_streams_whole():
    tok = split_char_tokenizer()
    ids = tok.encode("你好呀", add_special_tokens=False)
    hao = tok.encode("好", add_special_tokens=False)
    assert len(hao) == 2 and tok.decode(hao[:1]) == "\ufffd"  # the split this test is about
    # negative control: per-token decoding (what a naive streamer prints) shows broken bytes
    assert "\ufffd" in "".join(tok.decode([i]) for i in ids)
    dec = IncrementalDecoder(tok)
    pieces = [dec.push([i]) for i in ids] + [dec.finish()]
    assert "".join(pieces) == "你好呀" and not any("\ufffd" in p for p in pieces)
    assert "" in pieces  # a piece was held back while 好 was incomplete


def test_broken_sequences_are_dropped():
    tok = split_char_tokenizer()
    lead = tok.encode("好", add_special_tokens=False)[:1]  # a lead byte pair that never completes
    xia = tok.encode("下吧", add_special_tokens=False)
    ids = tok.encode("这个不行，", add_special_tokens=False) + lead + xia + lead
    assert tok.decode(ids) == "这个不行，\ufffd下吧\ufffd"  # negative control: the broken reply
    assert decode_whole(tok, ids) == "这个不行，下吧"
    dec = IncrementalDecoder(tok)
    streamed = "".join(dec.push([i]) for i in ids)
    assert streamed == "这个不行，下吧" and dec.finish() == ""  # the unfinished tail is dropped


def test_incremental_decoder_pieces_and_spacing(tokenizer):
    """Pieces come on whole characters (the unfinished 好 at the end dropped); an English tokenizer keeps its spaces."""
    tok = split_char_tokenizer()
    dec = IncrementalDecoder(tok)
    ids = tok.encode("好的好", add_special_tokens=False) + tok.encode("好", add_special_tokens=False)[:1]
    pieces = [p for p in [*(dec.push([i]) for i in ids), dec.finish()] if p]
    assert pieces == ["好", "的", "好"]
    dec2 = IncrementalDecoder(tokenizer)
    ids = tokenizer.encode("Hello world, 今天天气怎么样？", add_special_tokens=False)
    assert "".join([*(dec2.push([i]) for i in ids), dec2.finish()]) == "Hello world, 今天天气怎么样？"


class _Scripted(torch.nn.Module):
    """A 'model' that emits fixed reply ids: its logits put all the mass on the next scripted token
    (then on `end`), whatever the KV-cached loop feeds it."""

    def __init__(self, reply: list[int], vocab: int, end: int):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.script, self.vocab, self.end, self.at = reply, vocab, end, 0

    def forward(self, input_ids, logits_to_keep=0, **_):
        from types import SimpleNamespace

        rows, width = input_ids.shape
        nxt = self.script[self.at] if self.at < len(self.script) else self.end
        self.at += 1
        logits = torch.full((rows, 1 if logits_to_keep else width, self.vocab), -1e4)
        logits[..., nxt] = 1e4
        return SimpleNamespace(logits=logits)


def test_generate_and_stream_reply_never_print_broken_bytes():
    from weitiao.data.templates import resolve_template
    from weitiao.infer.generate import generate, stream_reply

    tok = split_char_tokenizer()
    template = resolve_template(tok, "plain")
    enc = lambda text: tok.encode(text, add_special_tokens=False)  # noqa: E731
    reply = enc("这个不行，") + enc("好")[:1] + enc("下吧") + enc("好")[:1]
    end = tok.convert_tokens_to_ids(template.eot)
    msgs = [{"role": "user", "content": "hi"}]
    text = generate(_Scripted(reply, len(tok), end), tok, template, [msgs], max_new_tokens=len(reply))[0].text
    assert text == "这个不行，下吧"
    pieces = list(stream_reply(_Scripted(reply, len(tok), end), tok, template, msgs, max_new_tokens=len(reply)))
    assert "".join(pieces) == "这个不行，下吧"


def test_terminal_safe_shows_control_characters():
    from weitiao.data.decode import terminal_safe

    assert terminal_safe("a\x1b[2Jb\x07\tc\nd\r\x00\x7f\x9b好😊") == "a␛[2Jb␇\tc\nd␍␀␡\\x9b好😊"


def test_chat_and_demo_print_a_models_escape_sequences_visibly(monkeypatch, capsys):
    """A reply holding ESC [2J (clear screen) and BEL reaches the terminal as ␛[2J and ␇ in `weitiao chat`, the
    demo's streamed reply and its side-by-side table."""
    from io import StringIO

    from rich.console import Console

    from weitiao.data.templates import resolve_template
    from weitiao.infer import chat
    from weitiao.recipes.demo import PlainView
    from weitiao.recipes.demo_commands import RichView, side_by_side

    tok = split_char_tokenizer()
    template = resolve_template(tok, "plain")
    reply = tok.encode("好\x1b[2J\x07", add_special_tokens=False)
    end = tok.convert_tokens_to_ids(template.eot)
    monkeypatch.setattr(chat, "load_chat_model", lambda *a: (_Scripted(reply, len(tok), end), tok))
    chat.run("m", None, "hi", None, len(reply), 0.0, 1.0, 1.0)
    assert capsys.readouterr().out == "好␛[2J␇\n"

    PlainView().stream("hi", ["好\x1b[2J", "\x07"])
    assert capsys.readouterr().out == "问 hi\n答 好␛[2J␇\n"
    buf = StringIO()
    RichView(Console(file=buf, width=120)).stream("hi", ["\x1b[2J"])
    assert "\x1b[2J" not in buf.getvalue() and "␛[2J" in buf.getvalue()

    row = {"replies": [{"prompt": "hi\x1b]52;c;eA==\x07", "reply": "好\x1b[2J"}]}
    measured = {s: {"ordinary": row, "redline": {"replies": []}} for s in ("base", "sft", "sft+dpo")}
    buf = StringIO()
    Console(file=buf, width=120).print(side_by_side(measured))
    assert "\x1b]52" not in buf.getvalue() and "\x1b[2J" not in buf.getvalue() and "␛[2J" in buf.getvalue()
    blank = {"replies": [{"prompt": "hi", "reply": "\n" * 40}]}  # an untrained model's reply: one cell, not 40 rows
    measured = {s: {"ordinary": blank, "redline": {"replies": []}} for s in ("base", "sft", "sft+dpo")}
    buf = StringIO()
    Console(file=buf, width=120).print(side_by_side(measured))
    assert len(buf.getvalue().splitlines()) < 12 and "⏎" * 10 in buf.getvalue()


def test_demo_says_when_a_reply_has_no_whole_character(capsys):
    """A model that spends its tokens on broken UTF-8 bytes (a user's base after a few demo steps wrote 48 lone
    continuation bytes per reply) decodes to "": the table and the streamed reply say so instead of a blank."""
    from io import StringIO

    from rich.console import Console

    from weitiao.recipes.demo import EMPTY_REPLY, PlainView
    from weitiao.recipes.demo_commands import RichView, side_by_side

    row = {"replies": [{"prompt": "hi", "reply": "", "stopped": False, "n_tokens": 48}]}
    measured = {s: {"ordinary": row, "redline": {"replies": []}} for s in ("base", "sft", "sft+dpo")}
    buf = StringIO()
    Console(file=buf, width=160).print(side_by_side(measured))
    assert buf.getvalue().count("48 tokens, no whole character") == 3
    PlainView().stream("hi", ["", ""])
    assert capsys.readouterr().out == f"问 hi\n答 {EMPTY_REPLY}\n"
    buf = StringIO()
    RichView(Console(file=buf, width=120)).stream("hi", [])
    assert EMPTY_REPLY in buf.getvalue()
    PlainView().stream("hi", ["好"])
    assert capsys.readouterr().out == "问 hi\n答 好\n"


def test_a_reply_of_no_whole_character_is_said_in_chat_and_the_console(monkeypatch, capsys, tmp_path):
    """Greedy decoding of an undertrained model gave 3 tokens, each the first half of 好 (broken UTF-8, dropped):
    `weitiao chat --prompt` printed a blank line and the console's /api/chat a 200 with an empty body, both as if the
    model had said nothing. Now chat says '∅ 3 tokens, no whole character' on stderr (stdout stays the reply) and
    the console's reply carries X-Empty-Reply-Tokens: 3, which the page shows; a model ending at once says 0."""
    import json

    from fastapi.testclient import TestClient

    from weitiao.data.templates import resolve_template
    from weitiao.infer import chat
    from weitiao.infer.generate import stream_reply
    from weitiao.ui import chat as ui_chat
    from weitiao.ui.app import create_app
    from weitiao.ui.paths import Roots
    from weitiao.ui.runs import RunStore

    tok = split_char_tokenizer()
    half = tok.encode("好", add_special_tokens=False)[:1] * 3
    end = tok.convert_tokens_to_ids("<|im_end|>")
    msgs = [{"role": "user", "content": "hi"}]
    pieces = stream_reply(_Scripted(half, len(tok), end), tok, resolve_template(tok, "plain"), msgs, max_new_tokens=9)
    assert next(pieces, None) is None  # nothing whole came out
    monkeypatch.setattr(chat, "load_chat_model", lambda *a: (_Scripted(half, len(tok), end), tok))
    chat.run("m", None, "hi", None, 9, 0.0, 1.0, 1.0)
    assert capsys.readouterr()[:2] == ("\n", "∅ 3 tokens, no whole character\n")

    run = tmp_path / "runs" / "r"
    (run / "ui").mkdir(parents=True)
    (run / "ui" / "run.json").write_text(json.dumps({"name": "r", "kind": "sft", "status": "done", "created": 1}))
    (run / "ui" / "config.yaml").write_text("model:\n  path: m\n")
    body = {"run": "r", "ckpt": "base", "messages": msgs, "max_new_tokens": 9, "temperature": 0}
    for script, said in ((half, "3"), ([], "0"), (tok.encode("好", add_special_tokens=False), None)):
        monkeypatch.setattr(ui_chat, "load_weights", lambda *a, s=script: (_Scripted(s, len(tok), end), tok))
        app = create_app(Roots([tmp_path]), RunStore(tmp_path / "runs"), None)
        with TestClient(app, base_url="http://127.0.0.1") as c:
            r = c.post("/api/chat", json=body)
        assert r.status_code == 200 and r.headers.get("X-Empty-Reply-Tokens") == said
        assert r.text == ("" if said else "好")
