"""The same tokens as a byte-level BPE `tokenizers` backend, ~3.5× faster: tiktoken's encoder on its vocab.

tiktoken merges the adjacent pair whose *concatenation* has the lowest rank; `tokenizers` merges the pair
with the lowest *merge-list* index. With ranks = token ids both runs are the same step by step when
(checked once per tokenizer, `fast_bpe` returns None otherwise):
  - each merge makes a new token, token ids increase along the merge list, every byte is a token;
  - no dropout, prefixes, suffixes, byte fallback; no normalizer (or NFC, the identity on the texts taken);
  - the pre-tokenizer is ByteLevel's GPT-2 regex, or a Split on one of the known Qwen2/Llama-3 regexes
    followed by ByteLevel without its regex: the same pattern, run by another engine;
  - added tokens split the text first (tiktoken's special tokens), as `tokenizers` does; none strips spaces or
    starts/ends with "Ġ" (trimmed as a space), none is the start of another (so the leftmost match is the
    leftmost-longest one `tokenizers` takes), none normalized overlaps one that is not (`tokenizers` splits on
    those first) or changes under NFC; and split_special_tokens is off.
Two differences are left, and a text they could touch goes to the backend (`encode` returns None):
  - a "phantom" pair x + y = t where t is made by another merge: tiktoken would merge it, the merge list would
    not. `_never_adjacent` proves most can never stand side by side; a text holding the bytes of another t is
    declined;
  - tiktoken looks a whole word up before merging (`tokenizers` only with ignore_merges): without it, a text
    holding the bytes of a token the merges do not make whole is declined.
A text is also declined when a character is outside `SAFE_RANGES` (ASCII print/tab/newlines, Latin, general
punctuation, CJK, kana, Hangul, full-width forms, no combining marks (NFC reorders a run of them): where both
regex engines and NFC agree; tested on every one of them).
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Iterator
from functools import lru_cache
from typing import Any

import numpy as np

from weitiao.data.decode import byte_level_alphabet

GPT2 = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
_WORDS = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|"""
_REST = r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
# Split regexes (Qwen2, Llama 3) whose meaning is the same in Oniguruma (tokenizers) and fancy-regex (tiktoken)
KNOWN_SPLITS = {_WORDS + r"\p{N}" + _REST, _WORDS + r"\p{N}{1,3}" + _REST}
SAFE_RANGES = (
    "\t\n\r\x20-\x7e",  # ASCII: no other control characters (engines differ on \x1c-\x1f as \s)
    "\xa1-\xac\xae-\u017e",  # Latin-1 and Extended-A but the soft hyphen and ſ (a case fold of s)
    "\u2010-\u2027\u2030-\u205e",  # general punctuation, no spaces or format characters
    "\u3000-\u3029\u3030-\u3098\u309b-\u30ff",  # CJK punctuation, kana: not the combining marks (NFC reorders)
    "\u3400-\u4db5\u4e00-\u9fef",  # CJK ideographs
    "\uac00-\ud7a3",  # Hangul syllables
    "\uff01-\uff5e\uff61-\uff9f",  # full-width ASCII, half-width kana
)
_UNSAFE = re.compile("[^" + "".join(SAFE_RANGES) + "]")


class FastBPE:
    """`encode(text)`: the backend's ids for `text` (None for a text it declines: a character outside SAFE_RANGES,
    a phantom's bytes); `offsets(ids)`: each token's [start, end) in the text's UTF-8 bytes, trimmed as the backend
    trims them."""

    def __init__(self, core: Any, lengths: np.ndarray, trim: tuple | None, risky: list):
        self.core, self.lengths, self.trim = core, lengths, trim
        self.risky = re.compile(b"|".join(re.escape(r) for r in risky)) if risky else None

    def encode(self, text: str) -> list[int] | None:
        if _UNSAFE.search(text) or (self.risky is not None and self.risky.search(text.encode())):
            return None
        return self.core.encode(text, allowed_special="all")  # added tokens split off first, as the backend does

    def offsets(self, ids: Any, bounds: np.ndarray | None = None) -> np.ndarray:
        """(start, end) of each token in its text's UTF-8 bytes, trimmed as the backend trims; `ids` of several
        texts back to back, text r being ids[bounds[r]:bounds[r + 1]] (None: one text)."""
        arr = np.asarray(ids, dtype=np.int64)
        bounds = np.array([0, len(arr)]) if bounds is None else bounds
        lens = np.diff(bounds)
        cum = np.zeros(len(arr) + 1, dtype=np.int64)
        np.cumsum(self.lengths[arr], out=cum[1:])
        base = np.repeat(cum[bounds[:-1]], lens)
        starts, ends = cum[:-1] - base, cum[1:] - base
        if self.trim is not None:  # tokenizers' ByteLevel process_offsets: spaces off both ends of a token
            lead_tab, trail_tab, prefix_space = self.trim
            lead, trail = lead_tab[arr], trail_tab[arr]
            if prefix_space:
                first = starts == 0
                first[bounds[:-1][lens > 0]] = True
                lead = np.where(first & (lead == 1), 0, lead)
            starts = np.where(lead > 0, np.minimum(starts + lead, ends), starts)
            ends = np.where((trail > 0) & (ends >= trail), np.maximum(ends - trail, starts), ends)
        return np.stack([starts, ends], axis=1)


_SEEN: list = []  # [backend, its added tokens, the answer]: the last backend asked about, held (so not another's id)


def fast_bpe(tokenizer: Any) -> FastBPE | None:
    """A FastBPE giving `tokenizer.backend_tokenizer`'s tokens, or None when that is not provably so."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or getattr(backend, "encode_special_tokens", False):  # split_special_tokens: not split off
        return None
    if backend.truncation is not None or backend.padding is not None:  # the backend would cut or pad: not ours
        return None
    # Serializing a 150k vocabulary takes ~75 ms a chunk: skipped while it is the same backend with the same added
    # tokens (what encode_batch can change; the rest of a loaded tokenizer stays as loaded)
    added = str(backend.get_added_tokens_decoder())
    if _SEEN and _SEEN[0] is backend and _SEEN[1] == added:
        return _SEEN[2]
    spec = backend.to_str()
    _SEEN[:] = [backend, added, _build(hashlib.sha256(spec.encode()).hexdigest(), spec)]
    return _SEEN[2]


@lru_cache(maxsize=4)
def _build(digest: str, spec: str) -> FastBPE | None:
    try:
        import tiktoken
    except ImportError:
        return None
    t = json.loads(spec)
    model = t.get("model") or {}
    if model.get("type") != "BPE" or model.get("dropout") or model.get("byte_fallback"):
        return None
    if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        return None
    if (t.get("normalizer") or {"type": "NFC"})["type"] != "NFC":  # NFC is the identity on SAFE texts
        return None
    pattern = _pattern(t.get("pre_tokenizer"))
    trim = _trim(t.get("post_processor"))
    if pattern is None or trim == "unknown":
        return None
    added, normalized = {}, set()
    for a in t.get("added_tokens", []):
        c = a["content"]
        if a.get("lstrip") or a.get("rstrip") or a.get("single_word") or c != c.strip().strip("\u0120"):
            return None  # (the backend trims "Ġ", its space, off an added token's offsets too)
        if a.get("normalized") and t.get("normalizer") and unicodedata.normalize("NFC", c) != c:
            return None  # matched as its NFC form
        added[c] = a["id"]
        normalized |= {c} if a.get("normalized") else set()
    if any(x != y and y.startswith(x) for x in added for y in added):  # leftmost = leftmost-longest: no prefix pairs
        return None
    if any(_overlap(x, y) for x in normalized for y in added if y not in normalized):
        return None  # the backend splits the text on the tokens not normalized first, tiktoken on all at once
    u2b = byte_level_alphabet()
    vocab: dict[str, int] = model["vocab"]
    plain = {s: i for s, i in vocab.items() if added.get(s) != i}  # added tokens split off before the BPE
    try:
        ranks = {bytes(u2b[c] for c in s): i for s, i in plain.items()}
    except KeyError:  # a token that is not byte-level text
        return None
    if len(ranks) != len(plain) or len(set(ranks.values())) != len(ranks):
        return None
    if any(bytes([b]) not in ranks for b in range(256)):
        return None
    plain_of = {i: s for s, i in plain.items()}
    merges = [m.split(" ") if isinstance(m, str) else m for m in model.get("merges", [])]
    made: dict[bytes, tuple[bytes, bytes]] = {}
    last = -1
    for pair in merges:
        if len(pair) != 2 or pair[0] + pair[1] not in plain:
            return None
        a, b = (bytes(u2b[c] for c in s) for s in pair)
        new = plain[pair[0] + pair[1]]
        if a + b in made or new <= last:  # a token made twice, or ids out of merge order
            return None
        made[a + b], last = (a, b), new
    monotone = all(ranks.get(p, -1) < ranks.get(t, -1) for t, parts in made.items() for p in parts if len(p) > 1)
    seen: dict = {}  # pairs answered, shared by all the phantom pairs' questions
    risky = {t for t, x, y in _phantoms(ranks, made) if not _ruled_out(x, y, made, ranks, monotone, seen)}
    if not model.get("ignore_merges"):  # tiktoken looks a whole word up first: the merges must make it whole too
        bpe = _hf_model(spec)
        risky |= {tok for tok, i in ranks.items() if len(tok) > 1 and [x.id for x in bpe.tokenize(plain_of[i])] != [i]}
    core = tiktoken.Encoding(f"weitiao-{digest[:12]}", pat_str=pattern, mergeable_ranks=ranks, special_tokens=added)
    size = max([*vocab.values(), *added.values()]) + 1
    lengths = np.zeros(size, dtype=np.int64)
    lead, trail = np.zeros(size, dtype=np.int64), np.zeros(size, dtype=np.int64)
    for b, i in ranks.items():
        lengths[i] = len(b)
        lead[i], trail[i] = len(b) - len(b.lstrip(b" ")), len(b) - len(b.rstrip(b" "))
    for s, i in added.items():
        lengths[i], lead[i], trail[i] = len(s.encode()), 0, 0
    return FastBPE(core, lengths, None if trim is None else (lead, trail, trim), sorted(risky))


def _overlap(x: str, y: str) -> bool:
    """Whether x and y can match overlapping stretches of a text (one inside the other, or an end of one
    the start of the other)."""
    return x in y or y in x or any(x.endswith(y[:k]) or y.endswith(x[:k]) for k in range(1, min(len(x), len(y))))


def _phantoms(ranks: dict[bytes, int], made: dict[bytes, tuple[bytes, bytes]]) -> Iterator[tuple]:
    """(t, x, y): token t written as tokens x + y that are not its merge (tiktoken would merge them)."""
    for t in ranks:
        for k in range(1, len(t)):
            x, y = t[:k], t[k:]
            if x in ranks and y in ranks and made.get(t) != (x, y):
                yield t, x, y


def _ruled_out(*args: Any) -> bool:
    """`_never_adjacent`, False where its question goes deeper than Python's recursion limit."""
    try:
        return _never_adjacent(*args)
    except RecursionError:
        return False


def _never_adjacent(x: bytes, y: bytes, made: dict, ranks: dict[bytes, int], monotone: bool, seen=None) -> bool:
    """True when pieces x, y can never stand side by side in a merge run, so their phantom pair never fires.

    Pieces only grow, and a run merges the lowest-ranked pair present. A single byte is there from the
    start; a longer token no merge makes is never a piece beside another. Take the moment the later of x, y
    is made: if that is x, by (x1, x2), y stands right of x2, and if a merge (x2, y) ranks below x's own it
    would have run first, so that moment never comes; the same for y made by (y1, y2) beside x, where a tie
    also rules it out (the same pair further left runs first: "   " is "  " + " ", never " " + "  "). Nor does
    it come when x2, y (or x, y1) can never stand side by side themselves: the same question on shorter pieces
    (" " never stands left of "  ", so never left of "   " = "  " + " "). When every token ranks above the
    tokens it is made of (`monotone`), merges run in rank order, so the later one is the higher-ranked one;
    otherwise both orders must be ruled out.
    """
    seen = {} if seen is None else seen
    if (x, y) in seen:  # answered, or asked again inside its own answer (then: not ruled out)
        return seen[(x, y)]
    seen[(x, y)] = False

    def blocked(last: bytes, pair: tuple[bytes, bytes], left: bool) -> bool:
        joined = pair[0] + pair[1]
        if made.get(joined) == pair and joined in ranks:
            if ranks[joined] <= ranks[last] if left else ranks[joined] < ranks[last]:  # ties: the leftmost first
                return True
        return _never_adjacent(*pair, made, ranks, monotone, seen)

    made_x, made_y = len(x) > 1, len(y) > 1
    if not (made_x or made_y):  # two bytes stand side by side from the start
        return False
    if (made_x and x not in made) or (made_y and y not in made):
        seen[(x, y)] = True
        return True
    if monotone and made_x and made_y:
        later_x = ranks[x] > ranks[y]
        result = blocked(x, (made[x][1], y), left=False) if later_x else blocked(y, (x, made[y][0]), left=True)
    else:
        result = (not made_x or blocked(x, (made[x][1], y), left=False)) and (
            not made_y or blocked(y, (x, made[y][0]), left=True)
        )
    seen[(x, y)] = result
    return result


def _pattern(pre: dict | None) -> str | None:
    """The regex of a ByteLevel pre-tokenizer (alone, or a known Split before it), else None."""
    if pre is None:
        return None
    if pre["type"] == "ByteLevel":
        return GPT2 if pre.get("use_regex", True) and not pre.get("add_prefix_space") else None
    if pre["type"] != "Sequence" or len(pre["pretokenizers"]) != 2:
        return None
    split, level = pre["pretokenizers"]
    if level["type"] != "ByteLevel" or level.get("use_regex", True) or level.get("add_prefix_space"):
        return None
    if split["type"] != "Split" or split.get("behavior") != "Isolated" or split.get("invert"):
        return None
    regex = (split.get("pattern") or {}).get("Regex")
    return regex if regex in KNOWN_SPLITS else None


def _trim(post: dict | None) -> bool | None | str:
    """A post-processor's offset trimming: None (none), its add_prefix_space (ByteLevel's), "unknown"."""
    if post is None:
        return None
    kind = post["type"]
    if kind == "TemplateProcessing":  # adds tokens only with add_special_tokens, which encode_batch leaves off
        return None
    if kind == "ByteLevel":
        return bool(post.get("add_prefix_space")) if post.get("trim_offsets", True) else None
    if kind == "Sequence":
        found = [_trim(p) for p in post["processors"]]
        if "unknown" in found or sum(f is not None for f in found) > 1:
            return "unknown"
        return next((f for f in found if f is not None), None)
    return "unknown"


def _hf_model(spec: str) -> Any:
    from tokenizers import Tokenizer

    return Tokenizer.from_str(spec).model
