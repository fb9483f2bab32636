"""`weitiao data check` (linter + length report) and `weitiao data show` (masking dry run).

Preference rows are linted too: each side (prompt + chosen, prompt + rejected) is one sequence for the
length figures; pairs with identical or empty replies are counted, and `refused` set as training stops on them (unless
skip_invalid). Trained-token counts follow
`train_turns` as SFT does; pre-training documents longer than max_len are counted apart from the rows the
truncation policy acts on, since SFT splits them into pieces whatever that policy. `truncation` is the trainer's
data.truncation, applied by the trainer's own code (`encode_all`, `encode_pair`): rows it drops, cuts and trims, and
the sequences past the model's positions after it, are counted as training will find them. A file of unpaired feedback
(KTO rows: the first row decides) is linted as `weitiao kto` reads it: its last reply trained, labels counted, and a
reply labelled both ways reported.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, get_args

from weitiao.data.chat import (
    IGNORE,
    Encoded,
    EncodeOptions,
    Truncation,
    encode,
    encode_all,
    encode_document,
    row_check,
)
from weitiao.data.files import MAX_ROW_BYTES
from weitiao.data.formats import Conversation, Document, Feedback, PreferencePair, load_rows, prefers_rejected
from weitiao.data.preference import (
    PairTruncation,
    encode_pair,
    encode_side,
    form_notes,
    refuse_column_typos,
    side_rows,
)
from weitiao.data.prep import conversation_key, kto_balance, messages_key, pair_key, require_rows
from weitiao.data.templates import resolve_template
from weitiao.errors import UserError

BUCKETS = (32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
# data.truncation of the trainer that takes each kind of row: sft, kto (train.spec.FeedbackDataSpec), dpo/rm
TRUNCATIONS = {"SFT": get_args(Truncation), "KTO": ("drop", "cut"), "preference": get_args(PairTruncation)}
# how each surface names the SFT-only settings it refuses for other rows: its user set them under these names
CONFIG_NAMES = {"train_on_prompt": "train_on_prompt", "train_eot": "train_eot", "truncation": "truncation",
                "max_len": "max_len"}  # fmt: skip
CLI_NAMES = {"train_on_prompt": "--train-on-prompt", "train_eot": "--no-train-eot", "truncation": "--truncation",
             "max_len": "--max-len", "skip_invalid": "--skip-invalid"}  # fmt: skip


def refuse_max_len(max_len: int) -> None:
    """UserError for a max_len no trainer takes (their data.max_len is > 8): its counts would describe no run."""
    if max_len <= 8:
        raise UserError(f"max_len {max_len}: the trainers' data.max_len is over 8 (sft, dpo, rm, kto); give 9 or more")


def refuse_truncation(kind: str, truncation: str, name: str = "truncation") -> None:
    """UserError when rows of `kind` (a TRUNCATIONS key) cannot take data.truncation `truncation` (set as `name`)."""
    if truncation not in TRUNCATIONS[kind]:
        raise UserError(f"{name} {truncation!r}: {kind} rows take {'|'.join(TRUNCATIONS[kind])} (the "
                        "data.truncation of the trainer that reads them)")  # fmt: skip


@dataclass
class CheckReport:
    files: list[str]
    format: str
    template: str
    eot: str
    template_closes_turns: bool
    read: int
    kept: int
    rejected: int
    max_len: int
    over_max_len: int  # rows the truncation policy acts on (long text documents: split_documents)
    length_min: int = 0
    length_mean: float = 0.0
    length_p95: int = 0
    length_max: int = 0
    histogram: dict[str, int] = field(default_factory=dict)
    duplicate_rows: int = 0
    duplicate_prompts: int = 0
    missing_eos: int = 0
    no_trained_tokens: int = 0
    pairs: int = 0  # preference rows among `kept`; their sides count once each in the length figures
    identical_pairs: int = 0
    empty_replies: int = 0  # chosen or rejected sides with no text
    documents: int = 0  # raw-text rows (pre-training text, string prompt/completion) among `kept`
    split_documents: int = 0  # pre-training documents over max_len: SFT splits them, never truncates
    document_pieces: int = 0  # the pieces those documents become
    train_turns: str = "all"
    train_on_prompt: bool = False  # SFT's data.train_on_prompt: prompt tokens trained too
    train_eot: bool = True  # SFT's data.train_eot: false masks the end-of-turn token
    desirable: int = 0  # KTO rows among `kept` labelled good (undesirable: the others)
    undesirable: int = 0
    conflicting_labels: int = 0  # prompt + reply pairs labelled both desirable and undesirable
    context: int | None = None  # the model's positions (max_position_embeddings), when its config was read
    over_context: int = 0  # sequences longer than `context` once `truncation` acted: training refuses them
    truncation: str = "drop"  # the trainer's data.truncation the counts below follow
    dropped: int = 0  # rows (pairs) that truncation leaves out
    cut: int = 0  # rows (pairs) cut to max_len
    lost_eot: int = 0  # cut chat rows whose last end-of-turn token is cut away
    history_trimmed: int = 0  # rows whose oldest exchanges truncation history dropped
    refused: str = ""  # why training stops on this data as a whole ("" when it trains): data check exits 1
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, indent=2)


def histogram(lengths: list[int]) -> dict[str, int]:
    out: dict[str, int] = {}
    lo = 0
    for hi in BUCKETS:
        out[f"{lo + 1}-{hi}"] = sum(1 for n in lengths if lo < n <= hi)
        lo = hi
    out[f">{BUCKETS[-1]}"] = sum(1 for n in lengths if n > BUCKETS[-1])
    return {k: v for k, v in out.items() if v}


def pieces(lengths: list[int], max_len: int) -> list[int]:
    """The lengths of the max_len pieces SFT splits text documents of `lengths` tokens into (`encode_document`)."""
    return [min(max_len, n - i) for n in lengths for i in range(0, n, max_len)]


@contextmanager
def _measuring(tokenizer: Any, context: int | None) -> Iterator[None]:
    """With the model's `context` known, the tokenizer's own '721 > 512' warning off while rows are measured (the
    report counts them), its `model_max_length` restored after (the console shares one tokenizer)."""
    if context is None:
        yield
        return
    saved, tokenizer.model_max_length = tokenizer.model_max_length, 10**30
    try:
        yield
    finally:
        tokenizer.model_max_length = saved


def check_file(
    files: list[str],
    tokenizer: Any,
    template_name: str = "auto",
    max_len: int = 1024,
    fmt: str = "auto",
    skip_invalid: bool = False,
    dataset_dir: str | None = None,
    train_turns: Literal["all", "last"] = "all",
    context: int | None = None,
    truncation: str = "drop",
    train_on_prompt: bool = False,
    train_eot: bool = True,
    names: dict[str, str] = CONFIG_NAMES,
    max_row_bytes: int | None = MAX_ROW_BYTES,
) -> CheckReport:
    """Lint a data set against a tokenizer: lengths, duplicates, EOS, trainable tokens (as SFT's
    data.train_turns, data.train_on_prompt and data.train_eot pick them), pair sanity; `context`: the model's
    positions (training refuses longer rows); `truncation`: the trainer's data.truncation (SFT drop|cut|history, KTO
    drop|cut, DPO/RM drop|cut_response); `names`: what the caller's user set these as (CLI_NAMES: flags), for
    refusals; `max_row_bytes`: the trainer's data.max_row_bytes (a longer row is a bad row)."""
    refuse_max_len(max_len)
    template = resolve_template(tokenizer, template_name)
    check = row_check(tokenizer, template)  # bad rows, as training
    loaded = load_rows(files, fmt, skip_invalid=skip_invalid, max_row_bytes=max_row_bytes, strict=False,
                       dataset_dir=dataset_dir, row_check=check, feedback=None)  # fmt: skip
    require_rows(loaded)
    feedback = [r for r in loaded.rows if isinstance(r, Feedback)]
    if feedback:  # `weitiao kto` trains the judged (last) reply only
        train_turns = "last"
    pairs = [r for r in loaded.rows if isinstance(r, PreferencePair)]
    refuse_column_typos(pairs)  # as training refuses them (`margn` trained every pair with margin 0)
    convs = [r.row if isinstance(r, Feedback) else r for r in loaded.rows if not isinstance(r, PreferencePair)]
    kinds = [k for k, there in (("KTO", feedback), ("SFT", convs and not feedback), ("preference", pairs)) if there]
    for kind in kinds:
        refuse_truncation(kind, truncation, names["truncation"])
    for key, given in (("train_on_prompt", train_on_prompt), ("train_eot", not train_eot)):
        if given and "SFT" not in kinds:
            raise UserError(f"{names[key]}: SFT's data.{key}; these are {' and '.join(kinds)} rows, whose trainer has "
                            "no such key: drop it")  # fmt: skip
    # Encode without a length limit to measure; count what max_len would drop separately.
    with _measuring(tokenizer, context):
        whole = EncodeOptions(10**9, train_on_prompt, train_turns, train_eot=train_eot)
        encoded, _ = encode_all(convs, tokenizer, template, whole)
        sides = [tuple(encode_side(row, tokenizer, template) for row in side_rows(p)) for p in pairs]
        # what training keeps: the trainer's own truncation, over the same rows
        opts = replace(whole, max_len=max_len, truncation=truncation)  # type: ignore[arg-type]
        kept, stats = encode_all(convs, tokenizer, template, opts)
        fitted, refused = [], []  # refused: pairs training stops on (chosen and rejected render the same tokens)
        for p in pairs:
            if p.chosen != p.rejected and p.chosen.strip() and p.rejected.strip():  # else counted below
                try:
                    fitted.append(encode_pair(p, tokenizer, template, max_len, truncation))  # type: ignore[arg-type]
                except UserError as e:
                    refused.append(str(e))
    trained_seqs = kept + [e for f in fitted if f for e in f]
    assert len(encoded) == len(convs)  # nothing is over 10**9 tokens: one example per row
    # A pre-training document (no prompt) over max_len becomes ceil(n / max_len) pieces in SFT.
    split = [len(e) for c, e in zip(convs, encoded) if isinstance(c, Document) and c.prompt is None]
    split = [n for n in split if n > max_len]
    seqs = encoded + [e for side in sides for e in side]
    lengths = sorted(len(e) for e in seqs)
    rows = Counter([conversation_key(c) for c in convs] + [pair_key(p) for p in pairs])
    labels: dict[str, set[bool]] = {}
    for fb in feedback:
        labels.setdefault(conversation_key(fb.row), set()).add(fb.desirable)
    prompts = Counter(
        [messages_key(c.prompt_messages) for c in convs if isinstance(c, Conversation)]
        + [messages_key(p.prompt) for p in pairs]
    )
    rep = CheckReport(
        files=[str(f) for f in files],
        format=loaded.format,
        template=template.name,
        eot=template.eot,
        template_closes_turns=not template.appends_eos,
        read=loaded.read,
        kept=loaded.kept,
        rejected=loaded.rejected,
        max_len=max_len,
        over_max_len=sum(1 for e in encoded if len(e) > max_len)
        - len(split)
        + sum(1 for c, r in sides if max(len(c), len(r)) > max_len),
        histogram=histogram(lengths),
        duplicate_rows=sum(v - 1 for v in rows.values()),
        duplicate_prompts=sum(v - 1 for v in prompts.values()),
        missing_eos=sum(1 for e in seqs if not e.ends_with_eot),
        no_trained_tokens=sum(1 for e in seqs if e.n_trained == 0),
        pairs=len(pairs),
        identical_pairs=sum(1 for p in pairs if p.chosen == p.rejected),
        empty_replies=sum((not p.chosen.strip()) + (not p.rejected.strip()) for p in pairs),
        documents=sum(1 for c in convs if isinstance(c, Document)),
        split_documents=len(split),
        document_pieces=len(pieces(split, max_len)),
        train_turns=train_turns,
        train_on_prompt=train_on_prompt,
        train_eot=train_eot,
        desirable=sum(fb.desirable for fb in feedback),
        undesirable=sum(not fb.desirable for fb in feedback),
        conflicting_labels=sum(len(v) == 2 for v in labels.values()),
        context=context,
        over_context=sum(len(e) > context for e in trained_seqs) if context else 0,
        truncation=truncation,
        dropped=stats.dropped_too_long + sum(f is None for f in fitted),
        cut=stats.cut + sum(any(e.truncated == "cut" for e in f) for f in fitted if f),
        lost_eot=stats.lost_eot,
        history_trimmed=stats.history_trimmed,
        notes=list(loaded.notes) + form_notes(pairs, template),
    )
    if lengths:
        rep.length_min, rep.length_max = lengths[0], lengths[-1]
        rep.length_mean = round(sum(lengths) / len(lengths), 1)
        rep.length_p95 = lengths[min(len(lengths) - 1, int(0.95 * len(lengths)))]
    if template.appends_eos:
        rep.problems.append(
            f"template {template.name!r} does not close assistant turns; weitiao appends {template.eot!r} "
            "to every reply (a model trained without it never learns to stop)"
        )
    if (convs and not kept) or (fitted and not any(fitted)):  # as sft, kto and dpo/rm refuse it: no rows left
        what = "pairs" if fitted and not any(fitted) else "rows"
        rep.refused = (f"truncation {truncation} at max_len {max_len} leaves no {what} to train (all {rep.dropped} "
                       f"dropped) and training stops there; raise {names['max_len']} (data.max_len) or use another "
                       f"{names['truncation']} (data.truncation)")  # fmt: skip
    if rep.over_max_len:
        what = "rows (pairs: their longer side)" if pairs else "rows"
        acts = [f"{verb} {n}" for verb, n in (("drops", rep.dropped), ("cuts", rep.cut),
                                              ("trims the oldest exchanges of", rep.history_trimmed)) if n]  # fmt: skip
        rep.problems.append(f"{rep.over_max_len} {what} exceed max_len {max_len}: truncation {truncation} "
                            f"{', '.join(acts) or 'keeps them'} (data.truncation)")  # fmt: skip
    if rep.lost_eot:
        rep.problems.append(f"truncation cut: {rep.lost_eot} rows lose their end-of-turn token {template.eot!r} "
                            "(the model learns to run on past max_len there); use drop or history, or raise "
                            "max_len")  # fmt: skip
    if rep.over_context:  # the run stops on them (train.loop.refuse_over_context)
        rep.problems.append(
            f"{rep.over_context} sequences are longer than the model's {context} positions (max_position_embeddings) "
            f"after truncation {truncation} to max_len {max_len}: training refuses them; use --max-len {context} "
            "(data.max_len)"
        )
        rep.refused = rep.refused or rep.problems[-1]
    if split:
        rep.notes.append(
            f"{rep.split_documents} text documents longer than max_len {max_len} are split into "
            f"{rep.document_pieces} pieces (whatever data.truncation)"
        )
    if rep.missing_eos:
        rep.problems.append(f"{rep.missing_eos} sequences do not end with {template.eot!r}")
    if rep.duplicate_rows:
        rep.problems.append(f"{rep.duplicate_rows} duplicate rows")
    if rep.conflicting_labels:
        rep.problems.append(f"{rep.conflicting_labels} replies labelled both desirable and undesirable (KTO pushes "
                            "each copy its own way)")  # fmt: skip
    raw = all(isinstance(c, Document) for c in convs) and all(p.form == "raw" for p in pairs)
    if template_name != "auto" and raw:  # as training refuses it (sft, dpo, rm, kto)
        rep.problems.append(f"template {template_name!r} renders no row: every row is raw text (trained as the text + "
                            "EOS), and training refuses data.template set beside such files; drop it")  # fmt: skip
    if feedback and (msg := kto_balance(rep.desirable, rep.undesirable)):  # at the default weights, as kto warns
        rep.problems.append(msg)
    stops = []  # rows training stops on (data.skip_invalid skips them), as a trainer finds them
    if refused:
        stops.append(f"{len(refused)} pairs training refuses, first: {refused[0]}")
    if rep.identical_pairs:
        stops.append(f"{rep.identical_pairs} pairs with chosen == rejected (training refuses them)")
    if rep.empty_replies:
        stops.append(f"{rep.empty_replies} empty chosen/rejected replies (training refuses them)")
    if flipped := [p.source for p in pairs if prefers_rejected(p.extra)]:
        stops.append(f"{len(flipped)} pairs whose score columns prefer rejected (training refuses them), first "
                     f"{flipped[0]}")  # fmt: skip
    rep.problems += stops
    if stops and not skip_invalid and not rep.refused:
        flag = f"{names['skip_invalid']}, " if "skip_invalid" in names else ""  # the console has no such box
        rep.refused = (f"{stops[0]}: training stops at the first such row; fix or drop those rows, or skip them "
                       f"({flag}data.skip_invalid=true)")  # fmt: skip
    # training stops at the first of these, with no flag to set here: data check said nothing of them
    if weighted := [p.source for p in pairs if "weight" in p.extra]:
        rep.problems.append(
            f"{len(weighted)} pairs have a `weight` column (first {weighted[0]}): `weitiao dpo` reads it only with "
            "data.weight_field=weight and stops on it otherwise; `weitiao rm` refuses it"
        )
    if loaded.rejected:
        rep.problems.append(f"{loaded.rejected} invalid rows written to {loaded.rejects_line()}")
    return rep


def token_segments(enc: Encoded, tokenizer: Any) -> list[tuple[str, bool]]:
    """Consecutive runs of (decoded text, trained?) — decoded per run so multi-byte chars stay whole."""
    runs: list[tuple[list[int], bool]] = []
    for tok, lab in zip(enc.input_ids, enc.labels):
        trained = lab != IGNORE
        if runs and runs[-1][1] == trained:
            runs[-1][0].append(tok)
        else:
            runs.append(([tok], trained))
    return [(tokenizer.decode(ids), trained) for ids, trained in runs]


def show_example(
    conv: Conversation, tokenizer: Any, template_name: str = "auto", opts: EncodeOptions | None = None
) -> tuple[Encoded | None, list[tuple[str, bool]]]:
    template = resolve_template(tokenizer, template_name)
    enc = encode(conv, tokenizer, template, opts or EncodeOptions())
    return enc, (token_segments(enc, tokenizer) if enc else [])


def show_row(
    row: Conversation | Document, tokenizer: Any, template_name: str = "auto", opts: EncodeOptions | None = None
) -> tuple[list[Encoded], list[tuple[str, bool]]]:
    """(pieces, segments) of an SFT row as SFT encodes it: a chat or prompt/completion row one piece, none when
    `opts.truncation` drops it; a pre-training document over max_len several, shown one after another."""
    opts = opts or EncodeOptions()
    if isinstance(row, Document):
        pieces = encode_document(row, tokenizer, opts)
        return pieces, [s for e in pieces for s in token_segments(e, tokenizer)]
    enc, segments = show_example(row, tokenizer, template_name, opts)
    return ([enc] if enc else []), segments


def show_pair(
    pair: PreferencePair, tokenizer: Any, template_name: str, max_len: int, truncation: str = "drop"
) -> list[tuple[str, Encoded, list[tuple[str, bool]]]] | str:
    """Both sides of a pair as DPO and RM train them (`encode_pair` with data.truncation `truncation`): (side,
    encoding, segments) each; why, when that truncation leaves the pair out."""
    template = resolve_template(tokenizer, template_name)
    both = encode_pair(pair, tokenizer, template, max_len, truncation)  # type: ignore[arg-type]
    if both is None:
        whole = encode_pair(pair, tokenizer, template, 10**9)
        assert whole is not None  # nothing is over a limit of 10**9 tokens
        prompt = next(i for i, x in enumerate(whole[0].labels) if x != IGNORE)
        return pair_drop_reason(whole, prompt, max_len, truncation)
    return [(k, e, token_segments(e, tokenizer)) for k, e in zip(("chosen", "rejected"), both)]


def drop_reason(conv: Conversation | Document, tokenizer: Any, template_name: str, opts: EncodeOptions) -> str:
    """Why `opts.truncation` drops this row (`show_example` gave None), in words for `data show`."""
    if isinstance(conv, Document):  # a prompt/completion row: a document is split, never dropped; no history to drop
        full = encode_document(conv, tokenizer, replace(opts, max_len=10**9))[0]
    else:
        full = encode(conv, tokenizer, resolve_template(tokenizer, template_name), replace(opts, max_len=10**9))
    assert full is not None
    n, m = len(full), opts.max_len
    if opts.truncation == "history" and isinstance(conv, Document):
        return f"{n} tokens, over max_len {m} (a raw-text row has no earlier exchanges to drop)"
    if opts.truncation == "cut":
        first = next((i for i, x in enumerate(full.labels) if x != IGNORE), None)
        where = "it has none" if first is None else f"its first is token {first + 1} of {n}"
        return f"cut to max_len {m} it keeps no trained token ({where})"
    if opts.truncation == "history":
        return f"{n} tokens, and with its earlier exchanges dropped its last one is still over max_len {m}"
    return f"{n} tokens, over max_len {m}"


def pair_drop_reason(whole: tuple[Encoded, Encoded], prompt: int, max_len: int, truncation: str) -> str:
    """Why `encode_pair` with `truncation` leaves out a pair whose sides are `whole` (`prompt` tokens shared), in
    words for `data show` and the console."""
    n = max(len(e) for e in whole)
    if truncation == "drop":
        return f"its longer side is {n} tokens, over max_len {max_len}"
    if prompt >= max_len:
        return f"its prompt alone is {prompt} tokens: cut to max_len {max_len} no reply token is left"
    return f"cut to max_len {max_len} its replies are the same tokens (they differ only past it)"
