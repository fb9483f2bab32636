"""`fastbpe`: tiktoken's encoder gives the backend's exact ids and offsets, or declines the text / tokenizer."""

import json
import random
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import CORPUS, SPECIALS, build_tokenizer

from weitiao.data import fastbpe
from weitiao.data.chat import EncodeOptions, encode
from weitiao.data.fastbpe import KNOWN_SPLITS, fast_bpe
from weitiao.data.formats import Conversation
from weitiao.data.templates import resolve_template
from weitiao.data.tokenize import encode_batch
from weitiao.models.load import load_tokenizer

DEMO = Path(__file__).parents[1] / "weitiao" / "demo" / "model"
QWEN2, LLAMA3 = sorted(KNOWN_SPLITS, key=len)
MIXED = [
    "Hello  world, it's  me.\n\n  x  ",
    "中文 English  混合\n\n\n  ",
    "IT'S 12345678 ＡＢＣ　全角。「引号」…",
    "   ",
    " leading and trailing ",
    "a\tb\r\nc",
]


def _wrap(raw, **kw):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|im_end|>", **kw)


def _trained(pattern: str | None, nfc: bool = False, trim: bool = False, ignore_merges: bool = False):
    """A byte-level BPE trained here, pre-tokenized as GPT-2 (pattern None) or by a Split on `pattern`."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    if pattern is None:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    if nfc:
        tok.normalizer = normalizers.NFC()
    if trim:
        tok.post_processor = processors.ByteLevel(trim_offsets=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=700, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS + MIXED * 5, trainer)
    if ignore_merges:
        spec = json.loads(tok.to_str())
        spec["model"]["ignore_merges"] = True
        tok = Tokenizer.from_str(json.dumps(spec))
    return _wrap(tok)


TOKENIZERS = {
    "gpt2": lambda: build_tokenizer(),
    "qwen2-nfc-trim": lambda: _trained(QWEN2, nfc=True, trim=True),
    "llama3-ignore-merges": lambda: _trained(LLAMA3, ignore_merges=True),
    "demo": lambda: load_tokenizer(str(DEMO)),
}


def _char_offsets(text: str, offsets: np.ndarray) -> list[tuple[int, int]]:
    """Byte offsets as the backend's character offsets (a token inside a character spans all of it)."""
    char_of = np.repeat(np.arange(len(text)), [len(c.encode()) for c in text])
    char_of = np.append(char_of, len(text))
    return [(int(char_of[s]), int(char_of[e - 1]) + 1 if e > s else int(char_of[s])) for s, e in offsets]


def _texts(tok, n: int, seed: int) -> list[str]:
    """Random concatenations of the tokenizer's own tokens, corpus words, spaces, newlines and specials."""
    rng = random.Random(seed)
    pool = [tok.convert_tokens_to_string([t]) for t in tok.get_vocab()] + MIXED + SPECIALS
    pool += [w for line in CORPUS[:3] for w in line.split()] + [" ", "  ", "\n", "\n\n", " \n", "'s", "'S", "7"]
    pool = [p for p in pool if not fastbpe._UNSAFE.search(p)]  # whole characters the fast path takes
    return ["".join(rng.choice(pool) for _ in range(rng.randint(1, 30))) for _ in range(n)]


@pytest.mark.parametrize("name", list(TOKENIZERS))
def test_same_ids_and_offsets_as_the_backend(name):
    tok = TOKENIZERS[name]()
    fast = fast_bpe(tok)
    assert fast is not None
    texts = _texts(tok, 2000, seed=len(name)) + MIXED
    taken = 0
    for text, enc in zip(texts, tok.backend_tokenizer.encode_batch(texts, add_special_tokens=False)):
        ids = fast.encode(text)
        if ids is None:
            continue
        taken += 1
        assert ids == enc.ids, text
        assert _char_offsets(text, fast.offsets(ids)) == enc.offsets, text
    assert taken > 0.9 * len(texts)


@pytest.mark.parametrize("name", ["gpt2", "qwen2-nfc-trim", "llama3-ignore-merges"])
def test_every_safe_character_splits_as_the_backend_splits_it(name):
    """Both regex engines (and NFC) agree on every character `fastbpe` takes, in letter, digit, space contexts."""
    tok = TOKENIZERS[name]()
    fast = fast_bpe(tok)
    chars = [chr(c) for c in range(0x10000) if not fastbpe._UNSAFE.match(chr(c))]
    assert len(chars) > 28000
    texts = [f"x{c}y {c}1{c} {c}{c}\n{c}'{c}s{c}" for c in chars]
    for text, enc in zip(texts, tok.backend_tokenizer.encode_batch(texts, add_special_tokens=False)):
        assert fast.encode(text) == enc.ids, ascii(text)


def _bpe(merges: list[tuple[str, str]], extra: list[str] = ()):
    """A byte-level BPE from an explicit merge list (token ids in merge order) plus unmerged tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    for a, b in merges:
        vocab[a + b] = len(vocab)
    for t in extra:
        vocab[t] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=list(merges)))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    return _wrap(tok)


def test_a_pair_tiktoken_would_merge_and_the_merge_list_would_not_sends_its_text_to_the_backend():
    # ab, then bc, then abc made as a + bc: in "abc" the backend merges ab first and stops at [ab, c], while
    # tiktoken also merges ab + c (their concatenation is a token): the text is declined, others are not
    tok = _bpe([("a", "b"), ("b", "c"), ("a", "bc")])
    fast = fast_bpe(tok)
    vocab = tok.get_vocab()
    assert tok.backend_tokenizer.encode("abc", add_special_tokens=False).ids == [vocab["ab"], vocab["c"]]
    assert fast.core.encode_ordinary("abc") == [vocab["abc"]]  # the negative control: tiktoken alone differs
    assert fast.encode("abc") is None and fast.encode("xx abc") is None
    assert fast.encode("ab c") == tok.backend_tokenizer.encode("ab c", add_special_tokens=False).ids


def test_a_pair_the_merge_order_rules_out_is_taken():
    # bc, then ab (after bc, so in "abc" bc is made first: a + bc), then abc made as a + bc: ab + c never meet
    tok = _bpe([("b", "c"), ("a", "b"), ("a", "bc")])
    fast = fast_bpe(tok)
    assert fast.encode("abc abcab") == tok.backend_tokenizer.encode("abc abcab", add_special_tokens=False).ids


def test_a_token_no_merge_makes_is_never_merged_into():
    # "bc" is a token but no merge makes it: the backend leaves b, c apart, tiktoken would join them
    tok = _bpe([("a", "b")], extra=["bc"])
    fast = fast_bpe(tok)
    vocab = tok.get_vocab()
    assert tok.backend_tokenizer.encode("bc", add_special_tokens=False).ids == [vocab["b"], vocab["c"]]
    assert fast.core.encode_ordinary("bc") == [vocab["bc"]]
    assert fast.encode("abc") is None
    assert fast.encode("ab") == [vocab["ab"]]


def test_characters_outside_the_checked_ranges_go_to_the_backend():
    fast = fast_bpe(build_tokenizer())
    for text in ["emoji 😀", "e\u0301", "ſ", "a\x1cb", "\u00a0", "\u2028", "ｶﾞ\u3099"]:
        assert fast.encode(text) is None, ascii(text)


@pytest.mark.parametrize(
    "change",
    [
        lambda t: t["model"].update(dropout=0.1),
        lambda t: t["model"].update(byte_fallback=True),
        lambda t: t.update(normalizer={"type": "Lowercase"}),
        lambda t: t["pre_tokenizer"].update(add_prefix_space=True),
        lambda t: t["added_tokens"][1].update(lstrip=True),
        lambda t: t.update(post_processor={"type": "BertProcessing", "sep": ["x", 1], "cls": ["y", 2]}),
    ],
    ids=["dropout", "byte_fallback", "lowercase", "prefix-space", "lstrip", "bert-processor"],
)
def test_tokenizers_it_cannot_match_are_declined(change):
    from tokenizers import Tokenizer

    spec = json.loads(build_tokenizer().backend_tokenizer.to_str())
    change(spec)
    assert fast_bpe(_wrap(Tokenizer.from_str(json.dumps(spec)))) is None


def test_an_unknown_split_regex_is_declined():
    assert fast_bpe(_trained(r"\p{L}+|\s+|[^\s\p{L}]+")) is None


def test_encode_batch_is_the_same_with_and_without_it(monkeypatch):
    """Rows through FastBPE (and rows it declines) get chat.encode's tokens and labels on a trimming tokenizer."""
    from weitiao.data import tokenize

    tok = _trained(QWEN2, nfc=True, trim=True)
    tok.chat_template = build_tokenizer().chat_template
    template = resolve_template(tok)
    rows = [
        Conversation(
            [
                {"role": "system", "content": " 你是朋友 "},
                {"role": "user", "content": text},
                {"role": "assistant", "content": f"  {text[::-1]}  "},
                {"role": "user", "content": "再说一遍"},
                {"role": "assistant", "content": text + " 😀" * (k % 3 == 0), "weight": k % 2},
            ],
            f"r:{k}",
        )
        for k, text in enumerate(t.replace("<|", "<") for t in _texts(tok, 60, seed=3))
    ]
    for opts in [EncodeOptions(), EncodeOptions(train_on_prompt=True), EncodeOptions(train_eot=False)]:
        want = [encode(r, tok, template, opts) for r in rows]
        assert encode_batch(rows, tok, template, opts) == want
        monkeypatch.setattr(tokenize, "fast_bpe", lambda _tok: None)
        assert encode_batch(rows, tok, template, opts) == want
        monkeypatch.undo()


def test_without_tiktoken_the_backend_encodes(monkeypatch):
    monkeypatch.setitem(sys.modules, "tiktoken", None)
    fastbpe._build.cache_clear()
    try:
        assert fast_bpe(build_tokenizer()) is None
    finally:
        fastbpe._build.cache_clear()


def test_an_end_of_turn_of_several_tokens_is_labelled_as_chat_encode_labels_it(tokenizer):
    from weitiao.data.templates import ChatTemplate

    jinja = "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + ' [end]\n' }}{% endfor %}"
    jinja += "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
    template = ChatTemplate("custom", jinja, " [end]", False)
    assert len(tokenizer(" [end]", add_special_tokens=False)["input_ids"]) > 1
    rows = [
        Conversation([{"role": "user", "content": f"问题 {k}"}, {"role": "assistant", "content": "好的" * k}], f"r:{k}")
        for k in range(4)
    ]
    for opts in [EncodeOptions(), EncodeOptions(train_on_prompt=True), EncodeOptions(train_eot=False)]:
        got = encode_batch(rows, tokenizer, template, opts)
        assert got == [encode(r, tokenizer, template, opts) for r in rows]
        assert any(e.ends_with_eot for e in got) and any(e.eot_end > 0 for e in got)


def _agrees(tok, texts) -> None:
    """FastBPE declines the tokenizer or each text, or gives the backend's ids and offsets."""
    fast = fast_bpe(tok)
    for text in texts if fast is not None else []:
        ids, enc = fast.encode(text), tok.backend_tokenizer.encode(text, add_special_tokens=False)
        assert ids is None or (ids, _char_offsets(text, fast.offsets(ids))) == (enc.ids, enc.offsets), ascii(text)


def test_nfc_reordering_combining_tone_marks_is_not_assumed_away():
    # U+302A..U+302F are combining marks: NFC sorts a run of them by combining class, so the backend
    # encodes "x\u302a\u302b" for "x\u302b\u302a" (each one alone is unchanged)
    _agrees(TOKENIZERS["qwen2-nfc-trim"](), ["x\u302b\u302a", "中\u302d\u302a文", "\u302f\u302a"])


def test_added_tokens_the_backend_matches_in_another_pass_or_trims_are_not_assumed_away():
    from transformers import AddedToken

    # the backend splits off tokens that are not normalized first (over the whole text), then the normalized
    # ones: "ab>" wins over the leftmost "<xa"; it also trims a leading "Ġ" (its space) off an added token
    tok = _trained(QWEN2, nfc=True, trim=True)
    tok.add_tokens([AddedToken("ab>", normalized=False, special=True), AddedToken("<xa", normalized=True)])
    _agrees(tok, ["<xab>", "q <xab> z"])
    tok = _trained(QWEN2, nfc=True, trim=True)
    tok.add_tokens([AddedToken("\u0120foo", normalized=False)])
    _agrees(tok, ["a \u0120foo b"])


def test_split_special_tokens_is_the_backends_choice():
    tok = build_tokenizer()
    tok = _wrap(tok.backend_tokenizer, split_special_tokens=True)
    assert tok.backend_tokenizer.encode_special_tokens
    _agrees(tok, ["hi<|im_end|>x", "<|im_start|>user\n你好<|im_end|>"])


def test_a_phantom_pair_ruled_out_through_shorter_pieces_is_taken():
    # "    " = " " + "   " is no merge; " " can stand left of "   " (= "  " + " ") only where it stood left of "  ",
    # and the tie rule forbids that (" " + " " + " " merges the left pair first): indented code is taken
    tok = _bpe([("Ġ", "Ġ"), ("ĠĠ", "Ġ"), ("ĠĠ", "ĠĠ")])
    fast = fast_bpe(tok)
    texts = ["x" + " " * n + "y\n" + " " * (n + 1) for n in range(1, 20)] + ["def f():\n    return 1\n        "]
    for text in texts:
        assert fast.encode(text) == tok.backend_tokenizer.encode(text, add_special_tokens=False).ids, text


def test_random_merge_lists_give_the_backends_tokens():
    """Tiny random merge lists (parts listed after what they make, tokens no merge makes, ignore_merges), so
    that phantom pairs abound: every text FastBPE takes is encoded as the backend encodes it."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    rng, alphabet = random.Random(0), sorted(pre_tokenizers.ByteLevel.alphabet())
    taken = 0
    for _ in range(300):
        letters = rng.choice(["ab", "abc", "aĠ", "abĠ"])
        toks, merges = set(letters), []
        for _ in range(rng.randint(2, 40)):
            x, y = rng.choice(sorted(toks)), rng.choice(sorted(toks))
            if len(x + y) <= 8 and x + y not in toks:
                toks.add(x + y)
                merges.append((x, y))
        if rng.random() < 0.5:
            rng.shuffle(merges)  # a part listed after the token it makes: not monotone
        unmade = {"".join(rng.choices(letters, k=rng.randint(2, 5))) for _ in range(rng.randint(0, 3))} - toks
        vocab = {c: i for i, c in enumerate(alphabet)}
        for t in [a + b for a, b in merges] + sorted(unmade):
            vocab[t] = len(vocab)
        raw = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=rng.random() < 0.4))
        raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        fast = fast_bpe(_wrap(raw))
        chars = letters.replace("Ġ", " ") + " "
        texts = ["".join(rng.choices(chars, k=rng.randint(1, 16))) for _ in range(60)]
        for text, enc in zip(texts, raw.encode_batch(texts, add_special_tokens=False)):
            ids = fast.encode(text)
            taken += ids is not None
            assert ids is None or ids == enc.ids, (text, merges, sorted(unmade))
    assert taken > 0.7 * 300 * 60


def test_a_backend_that_truncates_or_pads_is_declined():
    tok = build_tokenizer()
    tok.backend_tokenizer.enable_truncation(4)
    assert fast_bpe(tok) is None
    tok.backend_tokenizer.no_truncation()
    tok.backend_tokenizer.enable_padding(length=64)
    assert fast_bpe(tok) is None
    tok.backend_tokenizer.no_padding()
    assert fast_bpe(tok) is not None


def test_a_token_added_after_the_first_call_is_split_off():
    tok = build_tokenizer()
    assert fast_bpe(tok).encode("x<|new|>y") == tok.backend_tokenizer.encode("x<|new|>y", add_special_tokens=False).ids
    tok.add_special_tokens({"additional_special_tokens": ["<|new|>"]})
    want = tok.backend_tokenizer.encode("x<|new|>y", add_special_tokens=False).ids
    assert tok.convert_tokens_to_ids("<|new|>") in want and fast_bpe(tok).encode("x<|new|>y") == want
