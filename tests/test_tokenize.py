"""Batch encoding gives exactly `chat.encode`'s tokens, labels and flags, row for row."""

from dataclasses import asdict
from pathlib import Path

import pytest
from conftest import CHAT_ROWS, build_tokenizer

from weitiao.data.chat import IGNORE, EncodeOptions, encode, encode_all
from weitiao.data.formats import Conversation, load_conversations, parse_alpaca
from weitiao.data.preference import encode_pair, encode_pairs, load_pairs
from weitiao.data.templates import resolve_template
from weitiao.data.tokenize import encode_batch
from weitiao.models.load import load_tokenizer

DEMO = Path(__file__).parents[1] / "weitiao" / "demo"
ECHO = Conversation(  # the reply's text also occurs in the prompt, and a later turn repeats an earlier reply
    [
        {"role": "system", "content": "你是朋友"},
        {"role": "user", "content": "跟我说：好的👌"},
        {"role": "assistant", "content": "好的👌"},
        {"role": "user", "content": "再说一遍：好的👌"},
        {"role": "assistant", "content": "好的👌"},
    ],
    "echo:1",
)
MULTI = [Conversation(parse_alpaca(r), f"chat:{i}") for i, r in enumerate(CHAT_ROWS)] + [ECHO]
OPTIONS = [
    EncodeOptions(),
    EncodeOptions(train_on_prompt=True),
    EncodeOptions(train_turns="last"),
    EncodeOptions(train_eot=False),
    EncodeOptions(max_len=30, truncation="drop"),
    EncodeOptions(max_len=30, truncation="cut"),
    EncodeOptions(max_len=40, truncation="history"),
]


def reference(convs, tok, template, opts):
    return [encode(c, tok, template, opts) for c in convs]


def as_dicts(encs):
    return [None if e is None else asdict(e) for e in encs]


@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: "-".join(f"{v}" for v in asdict(o).values()))
def test_batch_equals_encode_multi_turn(tokenizer, opts):
    t = resolve_template(tokenizer)
    got, want = encode_batch(MULTI, tokenizer, t, opts), reference(MULTI, tokenizer, t, opts)
    assert as_dicts(got) == as_dicts(want)
    if opts.max_len < 1024:  # the max_len cases do bite
        assert any(e is None or e.truncated for e in want)


@pytest.mark.parametrize(
    "template,eos",
    [
        (None, "<|endoftext|>"),
        ("{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\\n' }}{% endfor %}", "<|endoftext|>"),
    ],
    ids=["plain", "appends-eos"],
)
def test_batch_equals_encode_other_templates(template, eos):
    tok = build_tokenizer(chat_template=template, eos=eos)
    t = resolve_template(tok)
    for opts in OPTIONS[:4]:
        assert as_dicts(encode_batch(MULTI, tok, t, opts)) == as_dicts(reference(MULTI, tok, t, opts))


def test_batch_equals_encode_on_demo_data():
    """Every shipped SFT row through the demo model's own tokenizer and template."""
    tok = load_tokenizer(str(DEMO / "model"))
    t = resolve_template(tok)
    files = [DEMO / "data" / f for f in ("style.jsonl", "safety.jsonl", "heldout_style.jsonl", "heldout_redline.jsonl")]
    convs = load_conversations([str(f) for f in files]).rows
    assert len(convs) > 500
    opts = EncodeOptions(max_len=128)
    assert as_dicts(encode_batch(convs, tok, t, opts)) == as_dicts(reference(convs, tok, t, opts))
    got, stats = encode_all(convs, tok, t, opts)
    assert stats.rows == len(convs) and as_dicts(got) == as_dicts([e for e in reference(convs, tok, t, opts) if e])


def test_naive_reply_search_would_mislabel(tokenizer):
    """Control: locating replies by searching the rendered text (no prefix render) trains the prompt's copy."""
    t = resolve_template(tokenizer)
    text = t.render(tokenizer, ECHO.messages)
    out = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    naive, pos = [], 0
    for m in ECHO.messages:
        if m["role"] == "assistant":
            s = text.find(m["content"], pos)
            naive.append((s, s + len(m["content"]) + len(t.eot)))
            pos = naive[-1][1]
    labels = [
        i if any(b > s and a < e for s, e in naive) else IGNORE
        for i, (a, b) in zip(out["input_ids"], out["offset_mapping"])
    ]
    exact = encode_batch([ECHO], tokenizer, t, EncodeOptions())[0]
    assert exact.input_ids == out["input_ids"] and labels != exact.labels


@pytest.mark.parametrize("max_len,truncation", [(10**6, "drop"), (96, "drop"), (96, "cut_response")])
def test_batch_pairs_equal_encode_pair(max_len, truncation):
    """DPO/RM pairs: `encode_pairs` (batched) gives `encode_pair`'s sequences and accounting on the demo prefs."""
    tok = load_tokenizer(str(DEMO / "model"))
    t = resolve_template(tok)
    pairs = load_pairs([str(DEMO / "data" / "prefs_heldout.jsonl")], "auto", False).rows
    want = [encode_pair(p, tok, t, max_len, truncation) for p in pairs]
    got, stats = encode_pairs(pairs, tok, t, max_len, truncation)
    assert as_dicts(got) == as_dicts([e for pair in want if pair for e in pair])
    assert stats.dropped_too_long == sum(w is None for w in want)
    assert stats.cut == sum(bool(w and any(e.truncated for e in w)) for w in want)
    if max_len == 96:
        assert stats.dropped_too_long + stats.cut > 0  # the limit bites


RENDER_ROWS = [
    [
        {"role": "system", "content": "你是朋友"},
        {"role": "user", "content": "在吗"},
        {"role": "assistant", "content": "在"},
    ],  # fmt: skip
    [
        {"role": "user", "content": ""},
        {"role": "assistant", "content": " 空 ", "weight": 0},
        {"role": "user", "content": "再说"},
        {"role": "assistant", "content": "好的👌"},
    ],  # fmt: skip
    [{"role": "user", "content": "only a question"}],
]


@pytest.mark.parametrize("name", ["auto", "chatml", "qwen", "llama3", "plain"])
def test_batched_rendering_is_apply_chat_templates(name):
    """render_many (transformers' compiled template on plain messages) == render (apply_chat_template), row by row."""
    from weitiao.data import templates

    tok = build_tokenizer()
    if name == "llama3":
        heads = ["<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"]
        tok.add_special_tokens({"additional_special_tokens": heads})
    t = resolve_template(tok, name)
    templates._DIRECT.clear()
    for agp in (False, True):
        assert t.render_many(tok, RENDER_ROWS, agp) == [t.render(tok, ms, agp) for ms in RENDER_ROWS]
    assert any(v is not None for v in templates._DIRECT.values())  # the direct path ran


def test_rows_transformers_rewrites_and_a_probe_that_differs_keep_to_apply_chat_template(monkeypatch):
    from weitiao.data import templates

    tok = build_tokenizer()
    t = resolve_template(tok)
    odd = [[{"role": "user", "content": "问", "name": None}, {"role": "assistant", "content": "答", "thinking": "想"}]]
    templates._DIRECT.clear()
    assert t.render_many(tok, odd) == [t.render(tok, odd[0])] and not templates._DIRECT  # not even probed
    # a transformers that renders otherwise than the direct call: its probe differs, every render goes through it
    real = tok.apply_chat_template

    def other(conversation, **kw):
        out = real(conversation, **kw)
        return [x + "!" for x in out] if isinstance(out, list) else out + "!"

    monkeypatch.setattr(tok, "apply_chat_template", other)
    assert t.render_many(tok, RENDER_ROWS) == [t.render(tok, ms) for ms in RENDER_ROWS]
    assert t.render_many(tok, RENDER_ROWS)[0].endswith("!") and list(templates._DIRECT.values()) == [None]
