"""Token ids → text on whole characters: never a broken byte (U+FFFD) in a reply, streamed or not.

A byte-level tokenizer can split one Chinese character (3 UTF-8 bytes) over two tokens; decoding the
first alone gives U+FFFD. `IncrementalDecoder` holds such a token back until its character is
complete, and drops bytes that never form one (a model can emit a lead byte and then something
else). The window trick is vLLM's incremental detokenization: each new piece is the text of
(some earlier tokens + the new ones) minus the text of those earlier tokens, so tokenizers that
drop a leading space at the start of a decode (SentencePiece) still give the right spaces.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-level BPE alphabet, character → byte: printable bytes stand for themselves, the other 68 are
    shifted to U+0100 onward (the characters a ByteLevel tokenizer's vocabulary is written in)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = [b for b in range(256) if b not in keep]
    return {chr(b): b for b in keep} | {chr(256 + n): b for n, b in enumerate(shifted)}


REPLACEMENT = "\ufffd"


def special_ids(tokenizer: Any) -> set[int]:
    """Ids of the tokenizer's special tokens: the named ones (EOS, pad, additional_special_tokens) and every added token
    marked special, often unnamed (Llama 3's <|start_header_id|>, a base's <|im_end|>), which a decode with
    skip_special_tokens drops as it drops the named ones."""
    added = getattr(tokenizer, "added_tokens_decoder", {})
    return set(tokenizer.all_special_ids) | {i for i, t in added.items() if getattr(t, "special", False)}


def whole_chars(text: str) -> str:
    """`text` without U+FFFD: what a decode of tokens that end or contain broken UTF-8 leaves out."""
    return text.replace(REPLACEMENT, "")


# C0 controls but tab and newline, DEL, C1 controls: shown as a visible mark on a terminal instead of acted on
_CONTROLS = {c: chr(0x2400 + c) for c in range(0x20) if c not in (0x09, 0x0A)}
_CONTROLS |= {0x7F: "\u2421", **{c: f"\\x{c:02x}" for c in range(0x80, 0xA0)}}


def terminal_safe(text: str) -> str:
    """`text` for a terminal: a model's control characters (ESC, BEL, NUL, CR, ...) become their visible Unicode
    control pictures (U+2400 block; C1 controls as the text \\x9b), so a reply cannot move the cursor, clear the
    screen or set the clipboard. Tab and newline stay. Replies kept or served (JSON, HTML) are not passed through this.
    """
    return text.translate(_CONTROLS)


def decode_whole(tokenizer: Any, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
    """`tokenizer.decode(ids)` without the characters that broken byte sequences decode to."""
    return whole_chars(tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens))


def no_whole_character(n_tokens: int) -> str:
    """What stands for a reply that decodes to "": `n_tokens` generated (broken UTF-8 bytes, dropped), or none."""
    return f"∅ {n_tokens} tokens, no whole character" if n_tokens else "∅ the model ended its turn at once"


class IncrementalDecoder:
    """Feed token ids as they are generated; get back only text made of complete characters.

        dec = IncrementalDecoder(tokenizer)
        for tok in stream: print(dec.push([tok]), end="")
        print(dec.finish())            # an unfinished character at the very end is dropped

    The concatenation of all pieces equals `decode_whole(tokenizer, all_ids)` whenever the ids end
    on a whole character.
    """

    def __init__(self, tokenizer: Any, skip_special_tokens: bool = True):
        self.tokenizer, self.skip = tokenizer, skip_special_tokens
        self.ids: list[int] = []
        self.prefix = 0  # start of the context window: tokens already shown, decoded again for spacing
        self.read = 0  # tokens before this index have been shown

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip)

    def push(self, ids: Iterable[int]) -> str:
        """Add generated ids; the new text, or "" while the last character is still incomplete."""
        self.ids.extend(ids)
        shown = self._decode(self.ids[self.prefix : self.read])
        full = self._decode(self.ids[self.prefix :])
        if full.endswith(REPLACEMENT) or len(full) <= len(shown):
            return ""  # a character split over tokens: wait for its remaining bytes
        self.prefix, self.read = self.read, len(self.ids)
        return whole_chars(full[len(shown) :])

    def finish(self) -> str:
        """The rest after the last token, without a character left unfinished."""
        shown = self._decode(self.ids[self.prefix : self.read])
        full = self._decode(self.ids[self.prefix :])
        self.prefix = self.read = len(self.ids)
        return whole_chars(full[len(shown) :])
