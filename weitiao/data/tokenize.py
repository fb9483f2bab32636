"""Batch encoding: the same tokens and labels as `chat.encode`, row for row, several times faster.

`chat.encode` renders one conversation per call, once more per assistant turn to find where each
reply starts, and calls the tokenizer twice. Here a chunk of rows is rendered in batched
`apply_chat_template` calls (the same code path, so the same strings; the last turn's prefix is the
full text and is not rendered again), tokenized in one batched call of the Rust tokenizer (the call
`tokenizer(...)` makes, without its per-row Python conversion), and labelled from the offsets with
numpy. A row over max_len goes through `chat.encode` itself, so every truncation policy is its own,
and a raw-text `Document` (no template) through `chat.encode_document`.
"""

from __future__ import annotations

from itertools import chain
from typing import Any

import numpy as np
from jinja2.exceptions import TemplateError

from weitiao.data.chat import (
    IGNORE,
    Encoded,
    EncodeOptions,
    encode,
    encode_document,
    refuse_special_tokens,
    special_tokens,
)
from weitiao.data.fastbpe import fast_bpe
from weitiao.data.formats import Conversation, Document
from weitiao.data.templates import ChatTemplate
from weitiao.data.tools import uses_tools
from weitiao.errors import UserError


def render_spans(
    convs: list[Conversation], tokenizer: Any, template: ChatTemplate
) -> tuple[list[str], list[list[tuple[int, int]]]]:
    """Rendered text and assistant character spans of each conversation, as `chat.assistant_spans`."""
    msgs = [list(c.messages) for c in convs]
    turns = [[i for i, m in enumerate(ms) if m["role"] == "assistant"] for ms in msgs]
    heads = [ms[:i] for ms, ts in zip(msgs, turns) for i in ts]
    uptos = [ms[: i + 1] for ms, ts in zip(msgs, turns) for i in ts[:-1]]  # the last one is the full text
    texts = template.render_many(tokenizer, msgs)
    head_texts = iter(template.render_many(tokenizer, heads, add_generation_prompt=True))
    upto_texts = iter(template.render_many(tokenizer, uptos))
    all_spans = []
    for ms, ts, text in zip(msgs, turns, texts):
        spans = []
        for k, i in enumerate(ts):
            head = next(head_texts)
            upto = next(upto_texts) if k < len(ts) - 1 else text
            if not (text.startswith(head) and text.startswith(upto)):
                raise UserError(
                    f"template {template.name!r} renders earlier turns differently once later turns are "
                    "added, so replies cannot be located; use template: chatml/llama3/plain"
                )
            seg = text[len(head) : len(upto)]
            start = max(0, seg.find(ms[i]["content"].strip()))
            e = seg.rfind(template.eot)
            end = e + len(template.eot) if e >= 0 else len(seg)
            spans.append((len(head) + start, len(head) + end))
        all_spans.append(spans)
    return texts, all_spans


def encode_batch(
    rows: list[Conversation | Document], tokenizer: Any, template: ChatTemplate, opts: EncodeOptions
) -> list[Encoded | None | list[Encoded]]:
    """`chat.encode(c, ...)` of each conversation and `chat.encode_document(d, ...)` (a list) of each document,
    the conversations without tools computed in batches."""
    out: list[Encoded | None | list[Encoded]] = [None] * len(rows)
    at = []  # positions of the conversations
    special = special_tokens(tokenizer) if opts.refuse_special else None  # once, not per row
    for i, row in enumerate(rows):
        if isinstance(row, Document):
            out[i] = encode_document(row, tokenizer, opts)
        elif uses_tools(row):  # tool formats render per row (tools in the prompt, calls in replies): exact path
            out[i] = encode(row, tokenizer, template, opts)
        else:
            if special is not None:
                refuse_special_tokens(row, tokenizer, special)
            at.append(i)
    convs = [rows[i] for i in at]
    if not convs:
        return out
    # This call also leaves the backend as `tokenizer(...)` sets it: no truncation, no padding.
    eot_ids = tokenizer(template.eot, add_special_tokens=False)["input_ids"]
    try:
        texts, spans = render_spans(convs, tokenizer, template)
    except TemplateError:  # a row the template refuses: the per-row encoder names it
        for conv in convs:
            encode(conv, tokenizer, template, opts)
        raise
    for i, conv, sp, text, (ids, offsets, in_bytes) in zip(at, convs, spans, texts, _tokens(texts, tokenizer)):
        if len(ids) > opts.max_len:  # rare: the truncation policy decides, through the reference
            out[i] = encode(conv, tokenizer, template, opts)
            continue
        # As chat._encode_messages: the last turn alone under train_turns=last, then weight-0 turns untrained.
        turns = list(zip(sp, [m.get("weight", 1) for m in conv.messages if m["role"] == "assistant"]))
        trained = [span for span, weight in (turns[-1:] if opts.train_turns == "last" else turns) if weight]
        if in_bytes:  # FastBPE offsets count UTF-8 bytes: so do the spans (a token overlaps a span just the same)
            trained = [(len(text[:s].encode()), len(text[:e].encode())) for s, e in trained]
        out[i] = _label(ids, offsets, trained, eot_ids, opts)
        out[i].source = conv.source
    return out


def _tokens(texts: list[str], tokenizer: Any) -> list[tuple[list[int], np.ndarray, bool]]:
    """(ids, offsets, offsets in bytes?) of each text: the backend's tokens, through `fastbpe` where it is exact."""
    fast = fast_bpe(tokenizer)
    ids = [fast.encode(t) for t in texts] if fast is not None else [None] * len(texts)
    out: list = [None if x is None else (x, fast.offsets(x), True) for x in ids]
    rest = [k for k, x in enumerate(ids) if x is None]
    if rest:
        for k, enc in zip(
            rest, tokenizer.backend_tokenizer.encode_batch([texts[k] for k in rest], add_special_tokens=False)
        ):
            # fromiter over the flat pairs: ~2× faster than np.asarray on the list of tuples
            offsets = np.fromiter(chain.from_iterable(enc.offsets), dtype=np.int64, count=2 * len(enc.ids))
            out[k] = (enc.ids, offsets.reshape(-1, 2), False)
    return out


def examples(result: Encoded | None | list[Encoded]) -> list[Encoded]:
    """The training examples of one row's `encode_batch` result: [] when dropped, pieces of a long document."""
    if isinstance(result, list):
        return result
    return [] if result is None else [result]


def _label(ids: list[int], offsets: np.ndarray, spans: list, eot_ids: list[int], opts: EncodeOptions) -> Encoded:
    """`chat._encode_messages` from the tokens: a token is trained when it overlaps a trained span."""
    arr = np.asarray(ids, dtype=np.int64)
    trained = np.zeros(len(ids), dtype=bool)
    for s, e in spans:
        trained |= (offsets[:, 1] > s) & (offsets[:, 0] < e)
    labels = np.where(trained, arr, IGNORE)
    reply = np.flatnonzero(trained)
    ends = bool(eot_ids) and arr[reply[-len(eot_ids) :]].tolist() == eot_ids
    answer = None
    if opts.train_on_prompt:
        answer, labels = labels, arr
    if not opts.train_eot and len(eot_ids) == 1:  # after train_on_prompt, which trains every token, the eot too
        labels = np.where(labels == eot_ids[0], IGNORE, labels)
        answer = None if answer is None else np.where(answer == eot_ids[0], IGNORE, answer)
    return Encoded(
        list(ids),
        labels.tolist(),
        ends_with_eot=ends,
        answer_labels=None if answer is None else answer.tolist(),
        eot_end=int(reply[-1]) + 1 if ends else -1,
    )
