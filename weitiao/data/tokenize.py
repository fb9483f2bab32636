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
    fast = fast_bpe(tokenizer)
    ids = [fast.encode(t) for t in texts] if fast is not None else [None] * len(texts)
    rest = [k for k, x in enumerate(ids) if x is None]  # texts FastBPE declines: the backend, with its offsets
    backend = tokenizer.backend_tokenizer.encode_batch([texts[k] for k in rest], add_special_tokens=False)
    char_offsets = dict(zip(rest, (enc.offsets for enc in backend)))
    for k, enc in zip(rest, backend):
        ids[k] = enc.ids
    keep, spans_kept = [], []
    for k, (i, conv, sp) in enumerate(zip(at, convs, spans)):
        if len(ids[k]) > opts.max_len:  # rare: the truncation policy decides, through the reference
            out[i] = encode(conv, tokenizer, template, opts)
            continue
        # As chat._encode_messages: the last turn alone under train_turns=last, then weight-0 turns untrained.
        turns = list(zip(sp, [m.get("weight", 1) for m in conv.messages if m["role"] == "assistant"]))
        trained = [span for span, weight in (turns[-1:] if opts.train_turns == "last" else turns) if weight]
        if k not in char_offsets:  # FastBPE offsets count UTF-8 bytes: so do the spans (overlaps stay the same)
            trained = [(len(texts[k][:s].encode()), len(texts[k][:e].encode())) for s, e in trained]
        keep.append(k)
        spans_kept.append(trained)
    kept_ids = [ids[k] for k in keep]
    lens = np.fromiter(map(len, kept_ids), dtype=np.int64, count=len(keep))
    bounds = np.zeros(len(keep) + 1, dtype=np.int64)
    np.cumsum(lens, out=bounds[1:])
    flat = np.fromiter(chain.from_iterable(kept_ids), dtype=np.int64, count=int(bounds[-1]))
    offsets = fast.offsets(flat, bounds) if fast is not None else np.zeros((len(flat), 2), dtype=np.int64)
    for r, k in enumerate(keep):
        if k in char_offsets:  # the backend's (character) offsets for the texts it encoded
            pairs = chain.from_iterable(char_offsets[k])
            offsets[bounds[r] : bounds[r + 1]] = np.fromiter(pairs, dtype=np.int64, count=2 * lens[r]).reshape(-1, 2)
    for k, enc in zip(keep, _label(kept_ids, flat, bounds, offsets, spans_kept, eot_ids, opts)):
        enc.source = convs[k].source
        out[at[k]] = enc
    return out


def examples(result: Encoded | None | list[Encoded]) -> list[Encoded]:
    """The training examples of one row's `encode_batch` result: [] when dropped, pieces of a long document."""
    if isinstance(result, list):
        return result
    return [] if result is None else [result]


def _label(
    ids: list[list[int]],
    flat: np.ndarray,
    bounds: np.ndarray,
    offsets: np.ndarray,
    spans: list[list[tuple[int, int]]],
    eot_ids: list[int],
    opts: EncodeOptions,
) -> list[Encoded]:
    """`chat._encode_messages` of many rows from their tokens, in one numpy pass: a token is trained when it
    overlaps a trained span of its row. Row r is ids[r] = flat[bounds[r]:bounds[r + 1]], its tokens' (start, end)
    `offsets` in the units of its spans."""
    lens = np.diff(bounds)
    starts, ends = offsets[:, 0], offsets[:, 1]
    row = np.repeat(np.arange(len(ids)), lens)
    width = max(map(len, spans), default=0)
    table = np.zeros((len(ids), max(width, 1), 2), dtype=np.int64)  # (0, 0) overlaps no token
    for r, sp in enumerate(spans):
        if sp:  # a row whose every reply is weight 0 has none
            table[r, : len(sp)] = sp
    trained = np.zeros(len(flat), dtype=bool)
    for j in range(width):
        trained |= (ends > table[row, j, 0]) & (starts < table[row, j, 1])
    labels = np.where(trained, flat, IGNORE)
    last = np.full(len(ids), -1, dtype=np.int64)  # each row's last trained token
    filled = lens > 0
    if filled.any():
        last[filled] = np.maximum.reduceat(np.where(trained, np.arange(len(flat)), -1), bounds[:-1][filled])
    if len(eot_ids) == 1:
        eot_ends = (last >= 0) & (flat[np.maximum(last, 0)] == eot_ids[0]) if len(flat) else last >= 0
    else:  # the last len(eot) trained tokens of the row (none: no end-of-turn)
        eot_ends = np.array(
            [
                bool(eot_ids) and flat[b + np.flatnonzero(trained[b:e])[-len(eot_ids) :]].tolist() == eot_ids
                for b, e in zip(bounds[:-1], bounds[1:])
            ],  # fmt: skip
            dtype=bool,
        )
    answer = None
    if opts.train_on_prompt:
        answer, labels = labels, flat
    if not opts.train_eot and len(eot_ids) == 1:  # after train_on_prompt, which trains every token, the eot too
        labels = np.where(labels == eot_ids[0], IGNORE, labels)
        answer = None if answer is None else np.where(answer == eot_ids[0], IGNORE, answer)
    lab, ans = labels.tolist(), None if answer is None else answer.tolist()
    return [
        Encoded(
            ids[r],
            lab[b:e],
            ends_with_eot=bool(eot_ends[r]),
            answer_labels=None if ans is None else ans[b:e],
            eot_end=int(last[r] - b) + 1 if eot_ends[r] else -1,
        )
        for r, (b, e) in enumerate(zip(bounds[:-1].tolist(), bounds[1:].tolist()))
    ]
