"""The Data tab's view of one row of a data file, encoded as the trainer that takes the file encodes it.

The file's kind comes from its first row (or from `fmt`): a preference row (chosen/rejected) makes it a
preference file, loaded as `weitiao dpo`/`weitiao rm` load it (`load_pairs`); anything else makes it an
SFT file, loaded as `weitiao sft` loads it (chats and raw-text rows). A row of the other kind, or one the
toolkit refuses (KTO labels), fails with that loader's own `file:line` error. A pair is shown as
`encode_pair` encodes it under the chosen data.truncation: the shared prompt, then each reply with its scored tokens
(DPO sums their log-probs; RM reads its score at the last one), cut where cut_response cuts it.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from weitiao.data.chat import IGNORE, Encoded, EncodeOptions
from weitiao.data.check import drop_reason, pair_drop_reason, refuse_truncation, show_row, token_segments
from weitiao.data.formats import CONFIG_SKIP_HINT, Document, PreferencePair, file_kind, load_conversations
from weitiao.data.preference import encode_pair, load_pairs
from weitiao.data.templates import resolve_template
from weitiao.errors import UserError


def load(path: str | Path, fmt: str = "auto", dataset_dir: str | Path | None = None) -> tuple[str, list[Any]]:
    """(kind, rows) through the loader of the trainer that takes this kind of file; with `dataset_dir`, `path` is a
    dataset name in its dataset_info.json (read through its mapping; `ranking: true` makes it pairs)."""
    if dataset_dir is not None and fmt == "auto":
        from weitiao.data.llamafactory import resolve

        kind = "preference" if resolve(dataset_dir, str(path)).ranking else "sft"
    else:
        kind = file_kind(path, fmt)
    kw: dict[str, Any] = {"skip_hint": CONFIG_SKIP_HINT, "dataset_dir": dataset_dir and str(dataset_dir)}
    if kind == "preference":
        return kind, load_pairs([str(path)], fmt, skip_invalid=False, **kw).rows
    return kind, load_conversations(str(path), fmt, allow_text=True, **kw).rows


def sft_view(row: Any, tokenizer: Any, template: str, max_len: int, train_on_prompt: bool, train_turns: str = "all",
             truncation: str = "drop", train_eot: bool = True) -> dict:  # fmt: skip
    """A chat or raw-text row as `weitiao sft` encodes it with data.train_turns `train_turns`, data.truncation
    `truncation` and data.train_eot `train_eot`. A row that policy drops is shown as its first max_len tokens (so what
    is over is seen), `dropped` saying why."""
    opts = EncodeOptions(max_len, train_on_prompt, train_turns, truncation, train_eot)  # type: ignore[arg-type]
    pieces, segments = show_row(row, tokenizer, template, opts)
    dropped = None
    if not pieces:
        dropped = (f"over max_len {max_len}" if isinstance(row, Document)
                   else drop_reason(row, tokenizer, template, opts))  # fmt: skip
        whole, _ = show_row(row, tokenizer, template, replace(opts, max_len=10**9))
        pieces = [Encoded(e.input_ids[:max_len], e.labels[:max_len], truncated="cut") for e in whole[:1]]
        segments = token_segments(pieces[0], tokenizer) if pieces else []
    return {
        "kind": "sft",
        "segments": segments,
        "tokens": sum(len(e) for e in pieces),
        "trained": sum(e.n_trained for e in pieces),
        "pieces": len(pieces),
        "cut": any(e.truncated == "cut" for e in pieces),
        "history": any(e.truncated == "history" for e in pieces),
        "truncation": truncation,
        "dropped": dropped,
    }


def _side(enc: Encoded, whole: Encoded, p: int, tokenizer: Any) -> dict:
    """One reply after the prompt's `p` tokens: segments [text, scored], the RM score token's segment."""
    ids, labels = enc.input_ids, enc.labels
    last = max(i for i, x in enumerate(labels) if x != IGNORE)
    segments = token_segments(Encoded(ids[p:last], labels[p:last]), tokenizer)
    score_at = len(segments)
    segments.append((tokenizer.decode(ids[last : last + 1]), True))
    segments += token_segments(Encoded(ids[last + 1 :], labels[last + 1 :]), tokenizer)
    return {"segments": segments, "score_at": score_at, "tokens": len(enc), "scored": enc.n_trained,
            "whole": len(whole), "cut": enc.truncated == "cut"}  # fmt: skip


def pair_view(pair: PreferencePair, tokenizer: Any, template: str, max_len: int, truncation: str = "drop") -> dict:
    """A pair as `weitiao dpo`/`weitiao rm` encode it with data.truncation `truncation` (`encode_pair`): the prompt
    tokens both sides share, then each reply, cut where cut_response cuts it. A pair that truncation leaves out is
    shown whole, `dropped` saying why."""
    tpl = resolve_template(tokenizer, template)
    whole = encode_pair(pair, tokenizer, tpl, 10**9)
    assert whole is not None  # nothing is over a limit of 10**9 tokens
    fitted = encode_pair(pair, tokenizer, tpl, max_len, truncation)  # type: ignore[arg-type]
    chosen, rejected = fitted or whole
    p = next(i for i, x in enumerate(chosen.labels) if x != IGNORE)  # both sides share these prompt tokens
    return {
        "kind": "preference",
        "form": pair.form,
        "prompt": {"text": tokenizer.decode(chosen.input_ids[:p]), "tokens": p},
        "chosen": _side(chosen, whole[0], p, tokenizer),
        "rejected": _side(rejected, whole[1], p, tokenizer),
        "max_len": max_len,
        "over": max(len(e) for e in whole) > max_len,
        "truncation": truncation,
        "dropped": None if fitted else pair_drop_reason(whole, p, max_len, truncation),
    }


def row_view(path: str | Path, index: int, tokenizer: Any, template: str, max_len: int, train_on_prompt: bool,
             fmt: str = "auto", train_turns: str = "all", truncation: str = "drop",
             dataset_dir: str | Path | None = None, train_eot: bool = True) -> dict:  # fmt: skip
    """Row `index` of the file (or of dataset `path` in `dataset_dir`), with the file's kind and row count."""
    kind, rows = load(path, fmt, dataset_dir)
    refuse_truncation("preference" if kind == "preference" else "SFT", truncation)  # as `data check` refuses it
    sft_only = [k for k, on in (("train_on_prompt", train_on_prompt), ("train_turns", train_turns != "all"),
                                ("train_eot", not train_eot)) if on]  # fmt: skip
    if kind == "preference" and sft_only:  # as `data show` refuses them for a pair
        raise UserError(f"{sft_only[0]}: SFT's data.{sft_only[0]}; a DPO/RM pair trains its last reply: set it back "
                        "to its default for this file")  # fmt: skip
    if not 0 <= index < len(rows):
        raise UserError(f"index {index}: {path} has {len(rows)} rows (0..{len(rows) - 1})")
    row = rows[index]
    view = (
        pair_view(row, tokenizer, template, max_len, truncation)
        if kind == "preference"
        else sft_view(row, tokenizer, template, max_len, train_on_prompt, train_turns, truncation, train_eot)
    )
    return {"rows": len(rows), "source": row.source, **view}
