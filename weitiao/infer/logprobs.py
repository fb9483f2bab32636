"""Token log-probs in OpenAI's two response shapes: chat (`logprobs.content[]` with token, logprob, bytes,
top_logprobs) and the legacy completions form (tokens, token_logprobs, top_logprobs, text_offset).

An entry is (token id, log-prob or None, [(alternative id, log-prob), ...] or None); None marks the first
prompt token of an echo, which has nothing before it. -inf is no JSON number, so log-probs are clamped
to -9999.0, as vLLM does.

A token's text is what it adds to the decoded text. A SentencePiece piece ("▁world") adds " world", its
word-initial space, except at the start of a text, where the decoder drops that space (a chat reply's first
token, an echoed prompt's first): there it is what `decode([id])` gives. So the token texts (and bytes) join
into the reply's text, except a piece of a character split over tokens (a byte-level BPE splits most rare
Chinese characters and emoji), which shows as U+FFFD as in vLLM (chat `bytes` say which piece).
`text_offset` counts characters of the text: `text[:text_offset[k]]` is what the tokens before k decode to.
"""

from __future__ import annotations

import codecs
import json
from typing import Any

from weitiao.data.decode import byte_level_alphabet, special_ids, whole_chars

_BYTE_DECODER = byte_level_alphabet()  # character of the byte-level alphabet → its byte


def _clamp(lp: float) -> float:
    return max(lp, -9999.0)


class TextOffsets:
    """The legacy `text_offset` of one choice's tokens, fed in order: where each token begins in the choice's
    text, in characters. A character split over tokens counts once, when its last byte comes (summed token texts,
    as vLLM counts, would count each piece's U+FFFD and run past the end of the text); bytes that never form a
    character are left out, as the text leaves them out; a special token counts where the text shows it (an echoed
    prompt), not in a reply, which is decoded without them."""

    def __init__(self) -> None:
        self.chars = 0
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace")

    def take(self, raw: bytes) -> int:
        """This token's offset; then its bytes are added to the text before the next one."""
        at = self.chars
        self.chars += len(whole_chars(self._utf8.decode(raw)))
        return at


class LogprobFormat:
    """Formats entries for one tokenizer; each token's text and bytes are worked out once and cached."""

    def __init__(self, tokenizer: Any) -> None:
        self.tok, self.cache = tokenizer, {}
        self.special = special_ids(tokenizer)  # unnamed special tokens too: a reply's decode drops them
        backend = getattr(tokenizer, "backend_tokenizer", None)
        decoder = json.loads(backend.to_str()).get("decoder") if backend is not None else None
        kind = json.dumps(decoder, ensure_ascii=False)
        self.byte_level = '"ByteLevel"' in kind
        self.metaspace = not self.byte_level and "\u2581" in kind  # SentencePiece: "▁" stands for a space

    def token(self, tid: int, start: bool = False) -> tuple[str, list[int]]:
        """A token's text and its exact bytes, `start`: at the start of a text (see the module docstring); a
        piece of a multi-byte character shows as U+FFFD (as in vLLM), its bytes say which piece."""
        key = (tid, start and self.metaspace)
        if key not in self.cache:
            piece = self.tok.convert_ids_to_tokens(tid)
            if tid in self.special or not isinstance(piece, str):
                raw = self.tok.decode([tid]).encode()
            elif self.byte_level and all(c in _BYTE_DECODER for c in piece):
                raw = bytes(_BYTE_DECODER[c] for c in piece)
            elif len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):  # sentencepiece byte fallback
                raw = bytes([int(piece[3:5], 16)])
            elif self.metaspace and not start:
                raw = piece.replace("\u2581", " ").encode()
            else:
                raw = self.tok.decode([tid]).encode()
            self.cache[key] = (raw.decode("utf-8", "replace"), list(raw))
        return self.cache[key]

    def chat(self, entries: list[tuple], start: bool = False) -> dict:
        """The chat form; `start`: the first entry is the reply's first token."""

        def one(tid: int, lp: float, first: bool) -> dict:
            text, raw = self.token(tid, first)
            return {"token": text, "logprob": _clamp(lp), "bytes": raw}

        return {
            "content": [
                {**one(t, lp, start and k == 0), "top_logprobs": [one(*x, start and k == 0) for x in tops]}
                for k, (t, lp, tops) in enumerate(entries)
            ]
        }

    def legacy(self, entries: list[tuple], offsets: TextOffsets, echoed: int = 0) -> dict:
        """The completions form, its text offsets counted on in `offsets` (one per choice, fed in order). The
        sampled token is always among top_logprobs (so up to n + 1, as OpenAI). `echoed`: the first entries are an
        echoed prompt's tokens (its first token starts the text, and its special tokens are shown)."""
        out: dict = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        for k, (t, lp, tops) in enumerate(entries):
            first = echoed > 0 and k == 0
            text, raw = self.token(t, first)
            out["tokens"].append(text)
            out["token_logprobs"].append(None if lp is None else _clamp(lp))
            top = None if tops is None else {self.token(a, first)[0]: _clamp(v) for a, v in tops}
            if top is not None:
                top.setdefault(text, _clamp(lp))
            out["top_logprobs"].append(top)
            shown = k < echoed or t not in self.special  # a reply's text is decoded without special tokens
            out["text_offset"].append(offsets.take(bytes(raw) if shown else b""))
        return out
