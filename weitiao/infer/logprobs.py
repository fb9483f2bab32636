"""Token log-probs in OpenAI's two response shapes: chat (`logprobs.content[]` with token, logprob, bytes,
top_logprobs) and the legacy completions form (tokens, token_logprobs, top_logprobs, text_offset).

An entry is (token id, log-prob or None, [(alternative id, log-prob), ...] or None); None marks the first
prompt token of an echo, which has nothing before it. -inf is no JSON number, so log-probs are clamped
to -9999.0, as vLLM does.
"""

from __future__ import annotations

from typing import Any


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level BPE alphabet, inverted: the printable character standing for each byte."""
    keep = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


_BYTE_DECODER = _byte_decoder()


def _clamp(lp: float) -> float:
    return max(lp, -9999.0)


class LogprobFormat:
    """Formats entries for one tokenizer; each token's text and bytes are worked out once and cached."""

    def __init__(self, tokenizer: Any) -> None:
        self.tok, self.cache = tokenizer, {}
        self.special = set(tokenizer.all_special_ids)
        decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
        self.byte_level = type(decoder).__name__ == "ByteLevel"

    def token(self, tid: int) -> tuple[str, list[int]]:
        """A token's text and its exact bytes; a piece of a multi-byte character shows as U+FFFD (as in
        vLLM), its bytes say which piece."""
        if tid not in self.cache:
            piece = self.tok.convert_ids_to_tokens(tid)
            if tid in self.special or not isinstance(piece, str):
                raw = self.tok.decode([tid]).encode()
            elif self.byte_level and all(c in _BYTE_DECODER for c in piece):
                raw = bytes(_BYTE_DECODER[c] for c in piece)
            elif len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):  # sentencepiece byte fallback
                raw = bytes([int(piece[3:5], 16)])
            else:
                raw = self.tok.decode([tid]).encode()
            self.cache[tid] = (raw.decode("utf-8", "replace"), list(raw))
        return self.cache[tid]

    def chat(self, entries: list[tuple]) -> dict:
        def one(tid: int, lp: float) -> dict:
            text, raw = self.token(tid)
            return {"token": text, "logprob": _clamp(lp), "bytes": raw}

        return {"content": [{**one(t, lp), "top_logprobs": [one(*x) for x in tops]} for t, lp, tops in entries]}

    def legacy(self, entries: list[tuple], offset: int = 0) -> tuple[dict, int]:
        """The completions form with text offsets counted from `offset` (summed token texts, as vLLM); it
        and the offset after it. The sampled token is always among top_logprobs (so up to n + 1, as OpenAI)."""
        out: dict = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        for t, lp, tops in entries:
            text = self.token(t)[0]
            out["tokens"].append(text)
            out["token_logprobs"].append(None if lp is None else _clamp(lp))
            top = None if tops is None else {self.token(a)[0]: _clamp(v) for a, v in tops}
            if top is not None:
                top.setdefault(text, _clamp(lp))
            out["top_logprobs"].append(top)
            out["text_offset"].append(offset)
            offset += len(text)
        return out, offset
