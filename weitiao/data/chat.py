"""Render a conversation through its chat template, tokenize once, and label the trained tokens.

Masking is done by character spans on the exact rendered string (the string inference will see),
mapped to tokens with the fast tokenizer's offsets. An assistant span runs from the end of the
generation prompt to the end-of-turn token inclusive (chapter Q149: loss on replies only, unless
`train_on_prompt`, which keeps the reply-only labels beside for the eval). Truncation is explicit:
`drop`, `cut` (counting rows whose last end-of-turn token is cut away), or `history` (drop the
oldest exchanges), and every encode says what it did. An assistant turn with `weight` 0 (OpenAI
fine-tuning files, the prompt side of TRL prompt/completion rows) is context, never trained.
A `Document` (continued pre-training, or a TRL standard prompt/completion row) is tokenized without a
template and closed with EOS; a pre-training document is trained on every token and one longer than
max_len is split into max_len pieces whatever the truncation policy.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal

from jinja2.exceptions import TemplateError

from weitiao.data.files import RowError
from weitiao.data.formats import Conversation, Document, Message, PreferencePair
from weitiao.data.templates import ChatTemplate
from weitiao.data.tools import uses_tools
from weitiao.errors import UserError

IGNORE = -100
Truncation = Literal["drop", "cut", "history"]


@dataclass
class Encoded:
    """Token ids with labels aligned to them (IGNORE where no loss)."""

    input_ids: list[int]
    labels: list[int]
    source: str = ""
    truncated: str = ""  # "", "cut", "history"
    ends_with_eot: bool = True  # the last reply keeps its end-of-turn token (false once `cut` removes it)
    answer_labels: list[int] | None = None  # reply-only labels when `labels` also cover the prompt
    eot_end: int = -1  # index just past the last reply's end-of-turn token; -1 when it has none

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def n_trained(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)


@dataclass
class EncodeOptions:
    max_len: int = 1024
    train_on_prompt: bool = False
    train_turns: Literal["all", "last"] = "all"
    truncation: Truncation = "drop"
    train_eot: bool = True  # False masks the end-of-turn token: the Q147 "no </s>" experiment only
    # training data: a message holding a special token's text is refused (`refuse_special_tokens`); False where the
    # text is a model's reply or an attack being scored (reward scoring, the injection screen): tokenized as it comes
    refuse_special: bool = True


@dataclass
class EncodeStats:
    """What encoding did to a data set; the counts add up to the rows given."""

    rows: int = 0
    kept: int = 0
    dropped_too_long: int = 0
    cut: int = 0
    history_trimmed: int = 0
    lost_eot: int = 0  # rows `cut` through (or before) their last end-of-turn token
    doc_pieces: int = 0  # examples added by splitting text documents longer than max_len
    dropped_sources: list[str] = field(default_factory=list)
    dropped_rows: list[int] = field(default_factory=list)  # their indices in the rows given (sources may repeat)


def assistant_spans(
    template: ChatTemplate, tokenizer: Any, messages: list[Message], tools: list | None = None
) -> tuple[str, list]:
    """Rendered text and the [start, end) character span of every assistant reply (or tool call) + end-of-turn;
    tool results and everything else stay out."""
    text = template.render(tokenizer, messages, tools=tools)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        head = template.render(tokenizer, messages[:i], add_generation_prompt=True, tools=tools)
        upto = template.render(tokenizer, messages[: i + 1], tools=tools)
        if not (text.startswith(head) and text.startswith(upto)):
            raise UserError(
                f"template {template.name!r} renders earlier turns differently once later turns are "
                "added, so replies cannot be located; use template: chatml/llama3/plain"
            )
        seg = text[len(head) : len(upto)]
        # The reply starts at its content (templates lacking a generation prompt put a header first).
        start = max(0, seg.find(m["content"].strip()))
        k = seg.rfind(template.eot)
        end = k + len(template.eot) if k >= 0 else len(seg)
        spans.append((len(head) + start, len(head) + end))
    return text, spans


@lru_cache(maxsize=8)
def _special_pattern(tokens: tuple[str, ...]) -> re.Pattern | None:
    return re.compile("|".join(map(re.escape, sorted(tokens, key=len, reverse=True)))) if tokens else None


SPECIAL_PROBLEM = (
    "a special token of the tokenizer, which would be read as that control token (a turn boundary "
    "inside the message); remove it from the data"
)


def special_tokens(tokenizer: Any) -> re.Pattern | None:
    """A pattern matching the text of any of the tokenizer's special tokens (None: it has none)."""
    added = getattr(tokenizer, "added_tokens_decoder", {}).values()  # Llama 3's <|start_header_id|>: special, unnamed
    specials = {*tokenizer.all_special_tokens, *(t.content for t in added if getattr(t, "special", False))}
    return _special_pattern(tuple(sorted(t for t in specials if t)))


def _special_hit(conv: Conversation, pattern: re.Pattern | None) -> tuple[int, str] | None:
    """(the first message holding special-token text, that text), or None."""
    if pattern is None:
        return None
    for i, m in enumerate(conv.messages):
        if isinstance(m.get("content"), str) and (hit := pattern.search(m["content"])):
            return i, hit.group()
    return None


def _special_error(conv: Conversation, pattern: re.Pattern | None) -> RowError | None:
    """The first message whose text holds one of the tokenizer's special tokens (`<|im_end|>`, `<|endoftext|>`,
    `</s>`: template residue in converted or scraped data), as a RowError naming the turn; None when none does. The
    rendered text is tokenized with special tokens parsed, so such text would become a real control token, a turn
    boundary inside the message, and the reply's span (up to its last end-of-turn) would train the text after it, a
    fake user turn included."""
    if (hit := _special_hit(conv, pattern)) is None:
        return None
    i, text = hit
    return RowError(f"turn {i} ({conv.messages[i]['role']})", f"content holds {text!r}, {SPECIAL_PROBLEM}")


def refuse_special_tokens(conv: Conversation, tokenizer: Any, pattern: re.Pattern | None = None) -> None:
    """UserError `source: turn i (role): ...` for `_special_error` (`pattern`: `special_tokens(tokenizer)`,
    computed once by a caller that checks many rows)."""
    if err := _special_error(conv, pattern or special_tokens(tokenizer)):
        raise UserError(f"{conv.source}: {err}")


def _field_holding(record: Any, hit: str, content: str, at: str = "") -> str | None:
    """The first string of a JSON record (as `messages[1].content`, `output`) holding `hit` that went into a message
    `content` (all of it, or a part: alpaca's instruction + input), or None."""
    if isinstance(record, str):
        return at if hit in record and (record in content or content in record) else None
    items = record.items() if isinstance(record, dict) else enumerate(record) if isinstance(record, list) else ()
    for k, v in items:
        if (found := _field_holding(v, hit, content, f"{at}[{k}]" if isinstance(k, int) else f"{at}.{k}")) is not None:
            return found.removeprefix(".")
    return None


def _chat_sides(row: Any) -> list[Conversation]:
    """The conversations of a row that a chat template renders: a chat row, both sides of a chat pair; else none."""
    if isinstance(row, Conversation):
        return [row]
    if isinstance(row, PreferencePair) and row.form != "raw":
        return [row.conversation("chosen"), row.conversation("rejected")]
    return []


def special_token_check(tokenizer: Any) -> Callable[[Any, Any], None]:
    """A `load_rows` row check raising `_special_error`'s RowError, so a row holding special-token text is a bad
    row like any other (set aside with skip_invalid, else the one-line stop); a chat pair's sides are checked as
    `encode` would check them (raw-text rows and pairs are tokenized as TRL does them, and not checked). The error
    names the field of `record` (the row's JSON) that holds the text, as the file writes it; else the turn."""
    pattern = special_tokens(tokenizer)

    def check(row: Any, record: Any = None) -> None:
        sides = _chat_sides(row)
        for n, conv in enumerate(sides):
            if err := _special_error(conv, pattern):
                i, hit = _special_hit(conv, pattern)  # type: ignore[misc]  # an error means a hit
                if field := _field_holding(record, hit, conv.messages[i]["content"]):
                    raise RowError(field, err.problem)
                last = i == len(conv.messages) - 1  # a pair's reply: named by its side
                raise RowError(("chosen", "rejected")[n], err.problem) if last and len(sides) == 2 else err

    return check


def encode(conv: Conversation, tokenizer: Any, template: ChatTemplate, opts: EncodeOptions) -> Encoded | None:
    """Tokenize and label one conversation; None when the truncation policy drops it."""
    if opts.refuse_special:
        refuse_special_tokens(conv, tokenizer)
    if not template.supports_tools and uses_tools(conv):
        raise UserError(
            f"{conv.source}: this row has tools or tool calls, which template {template.name!r} cannot render; "
            "set template: qwen or llama3 (data.template, or --template), or use a tokenizer whose "
            "chat_template uses `tools`"
        )
    messages = list(conv.messages)
    trimmed = False
    while True:
        try:
            enc = _encode_messages(messages, tokenizer, template, opts, conv.tools)
        except TemplateError as e:  # the tokenizer's own template refuses the row (Gemma: no system role)
            raise UserError(template_refusal(conv.source, template, e)) from None
        enc.source = conv.source
        if len(enc) <= opts.max_len:
            enc.truncated = "history" if trimmed else ""
            return enc
        if opts.truncation == "history":
            shorter = _drop_oldest_exchange(messages)
            if shorter is not None:
                messages, trimmed = shorter, True
                continue
            return None
        if opts.truncation == "cut":
            n = opts.max_len
            enc.input_ids, enc.labels = enc.input_ids[:n], enc.labels[:n]
            if enc.answer_labels is not None:
                enc.answer_labels = enc.answer_labels[:n]
            # Cutting only what follows the end-of-turn token (ChatML's trailing newline) keeps it.
            enc.truncated, enc.ends_with_eot = "cut", 0 <= enc.eot_end <= n
            return enc if enc.n_trained else None
        return None


def template_refusal(source: str, template: ChatTemplate, e: Exception) -> str:
    """The line for a row the chat template raises on (its `raise_exception`): the row, the template's words, the way
    out."""
    return f"{source}: {_refusal(template, e)}"


def _refusal(template: ChatTemplate, e: Exception) -> str:
    return (f"chat template {template.name!r} refuses this row ({e}); change the row as it asks (a system prompt such "
            "a template has no place for: fold it into the first user message), or set data.template (--template) to "
            "chatml, qwen or llama3")  # fmt: skip


# the keys a row's turns are read from, the first present named by a template's refusal
_TURN_KEYS = ("messages", "conversations", "conversation", "prompt", "instruction", "chosen")


def template_check(tokenizer: Any, template: ChatTemplate) -> Callable[[Any, Any], None]:
    """A `load_rows` row check raising RowError for a chat row (a chat pair's sides) that `template` refuses (its
    `raise_exception`: Gemma's "System role not supported", roles that do not alternate), so with skip_invalid it is
    set aside like any bad row instead of stopping the run in the encoder. A row is rendered once per shape (its roles
    and message keys, tools or not): a template refuses a shape, and the shapes that passed are not rendered again. A
    refusal that hangs on the text alone is still met by the encoder (the one-line stop)."""
    passed: set[tuple] = set()

    def check(row: Any, record: Any = None) -> None:
        for conv in _chat_sides(row):
            if not template.supports_tools and uses_tools(conv):  # `encode` says why it cannot render them
                continue
            shape = (tuple(m["role"] for m in conv.messages), tuple(tuple(m) for m in conv.messages), bool(conv.tools))
            if shape in passed:
                continue
            try:
                template.render(tokenizer, list(conv.messages), tools=conv.tools)
            except TemplateError as e:
                keys = record if isinstance(record, dict) else {}
                raise RowError(next((k for k in _TURN_KEYS if k in keys), "messages"), _refusal(template, e)) from None
            passed.add(shape)

    return check


def row_check(tokenizer: Any, template: ChatTemplate, special: bool = True) -> Callable[[Any, Any], None]:
    """The `load_rows` row check training runs, so both kinds of row are bad rows (set aside with skip_invalid, else
    the one-line stop): special-token text in a message (`special_token_check`; `special` false: data.refuse_special
    is off) and a row the template refuses (`template_check`)."""
    checks = [special_token_check(tokenizer)] if special else []
    checks.append(template_check(tokenizer, template))

    def check(row: Any, record: Any = None) -> None:
        for c in checks:
            c(row, record)

    return check


def _drop_oldest_exchange(messages: list[Message]) -> list[Message] | None:
    """Drop everything before the second user turn (an exchange may hold tool calls and results)."""
    sys = messages[:1] if messages[0]["role"] == "system" else []
    body = messages[len(sys) :]
    nxt = next((k for k in range(1, len(body)) if body[k]["role"] == "user"), None)
    return sys + body[nxt:] if nxt is not None else None


def _encode_messages(
    messages: list[Message], tokenizer: Any, template: ChatTemplate, opts: EncodeOptions, tools: list | None = None
) -> Encoded:
    text, spans = assistant_spans(template, tokenizer, messages, tools)
    out = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = out["input_ids"], out["offset_mapping"]
    turns = list(zip(spans, [m.get("weight", 1) for m in messages if m["role"] == "assistant"]))
    trained_spans = [span for span, weight in (turns[-1:] if opts.train_turns == "last" else turns) if weight]
    labels = [IGNORE] * len(ids)
    for s, e in trained_spans:
        for t, (a, b) in enumerate(offsets):
            if b > s and a < e:
                labels[t] = ids[t]
    eot_ids = tokenizer(template.eot, add_special_tokens=False)["input_ids"]
    reply = [t for t, x in enumerate(labels) if x != IGNORE]
    ends = bool(eot_ids) and [ids[t] for t in reply[-len(eot_ids) :]] == eot_ids
    answer = None
    if opts.train_on_prompt:
        answer, labels = labels, list(ids)
    if not opts.train_eot and len(eot_ids) == 1:  # after train_on_prompt, which trains every token, the eot too
        labels = [IGNORE if x == eot_ids[0] else x for x in labels]
        answer = None if answer is None else [IGNORE if x == eot_ids[0] else x for x in answer]
    return Encoded(list(ids), labels, ends_with_eot=ends, answer_labels=answer, eot_end=reply[-1] + 1 if ends else -1)


def _raw_ids(tokenizer: Any, text: str) -> list[int]:
    """Text tokenized as TRL does for non-chat rows (the tokenizer's own special tokens), closed with EOS."""
    ids = list(tokenizer(text)["input_ids"])
    return ids if ids and ids[-1] == tokenizer.eos_token_id else ids + [tokenizer.eos_token_id]


def encode_document(doc: Document, tokenizer: Any, opts: EncodeOptions) -> list[Encoded]:
    """A raw-text row: no template, closed with EOS (see Document).

    A pre-training document is trained on every token and split into pieces of at most max_len.
    A prompt/completion row is trained from where the tokens of prompt and prompt + completion diverge
    (trl's common_prefix_length); over max_len it follows the truncation policy (history = drop).
    """
    if tokenizer.eos_token_id is None:
        raise UserError("raw-text rows need the tokenizer's EOS token to close each one; this tokenizer has none")
    n = opts.max_len
    if doc.prompt is None:
        ids = _raw_ids(tokenizer, doc.text)
        return [Encoded(ids[i : i + n], ids[i : i + n], doc.source) for i in range(0, len(ids), n)]
    prompt = tokenizer(doc.prompt)["input_ids"]
    ids = _raw_ids(tokenizer, doc.prompt + doc.text)
    start = next((i for i, (a, b) in enumerate(zip(prompt, ids)) if a != b), min(len(prompt), len(ids)))
    labels = [IGNORE] * start + ids[start:]
    enc = Encoded(ids, labels, doc.source, eot_end=len(ids))
    if opts.train_on_prompt:
        enc.answer_labels, enc.labels = labels, list(ids)
    if len(ids) <= n:
        return [enc]
    if opts.truncation != "cut" or start >= n:
        return []
    enc.input_ids, enc.labels, enc.truncated, enc.ends_with_eot = ids[:n], enc.labels[:n], "cut", False
    if enc.answer_labels is not None:
        enc.answer_labels = enc.answer_labels[:n]
    return [enc]


def encode_all(
    convs: list[Conversation | Document], tokenizer: Any, template: ChatTemplate, opts: EncodeOptions
) -> tuple[list[Encoded], EncodeStats]:
    """Encode a data set and account for every row (in batches: `tokenize.encode_batch`, same result)."""
    from weitiao.data.tokenize import encode_batch, examples  # it builds on this module

    if not getattr(tokenizer, "is_fast", False):
        raise UserError("a fast tokenizer (tokenizer.json) is required for exact loss masking")
    stats = EncodeStats(rows=len(convs))
    encoded = []
    batched = (
        e for k in range(0, len(convs), 1024) for e in encode_batch(convs[k : k + 1024], tokenizer, template, opts)
    )
    for i, (conv, out) in enumerate(zip(convs, batched)):
        pieces = examples(out)
        if not pieces:
            stats.dropped_too_long += 1
            stats.dropped_sources.append(conv.source)
            stats.dropped_rows.append(i)
            continue
        stats.doc_pieces += len(pieces) - 1
        enc = pieces[0]  # a text document's pieces are never truncated
        stats.cut += enc.truncated == "cut"
        stats.lost_eot += enc.truncated == "cut" and not enc.ends_with_eot
        stats.history_trimmed += enc.truncated == "history"
        encoded += pieces
    stats.kept = len(encoded) - stats.doc_pieces
    assert stats.kept + stats.dropped_too_long == stats.rows
    return encoded, stats
