"""Data-prep checks shared by SFT, DPO, RM and KTO: no empty inputs, an eval split that cannot leak, KTO's label
balance (`kto_balance`, which `weitiao kto` and `data check` both print).

A held-out split by row leaks when the data holds copies (an up-sampling `data mix` writes every row
k times): copies land on both sides and the eval loss measures recall. `split_eval` therefore splits
unique rows — identical rows go to the same side, and the eval side keeps one copy of each — and
`count_overlap` says how many eval rows also occur in train, for eval files given separately too.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from weitiao.data.formats import Conversation, Document, LoadResult, Message, PreferencePair
from weitiao.errors import UserError

T = TypeVar("T")


def require_rows(loaded: LoadResult, key: str = "") -> None:
    """UserError `FILE: no rows` for the first file that gave no rows; `key` names its config entry."""
    for path, kept in loaded.per_file.items():
        if kept == 0:
            rejects = loaded.rejects_files.get(path, loaded.rejects_path)
            why = f"no valid rows (invalid rows are in {rejects})" if loaded.rejected else "no rows"
            raise UserError(f"{path}: {why}" + (f" ({key})" if key else ""))


def require_eval_left(d: Any, before: int, left: int, what: str = "rows") -> None:
    """Refuse an eval set the config asks for (data.eval, data.eval_split) that truncation emptied: the run trained
    to the end with no eval and no eval metric, the rows line's drop count the only trace. `before`: eval rows (pairs)
    read, `left`: those tokenization kept."""
    if before and not left:
        key = "data.eval" if d.eval else f"data.eval_split {d.eval_split}"
        raise UserError(f"{key}: no eval {what} left after truncation {d.truncation!r} (max_len {d.max_len}); raise "
                        "data.max_len, or give eval rows that fit")  # fmt: skip


def messages_key(messages: Sequence[Message]) -> str:
    """Identity of a conversation: every role and text, whitespace runs collapsed."""
    return "\x1f".join(f"{m['role']}\x1e{' '.join(m['content'].split())}{_calls(m)}" for m in messages)


def _calls(m: Message) -> str:
    return "\x1e" + json.dumps(m["tool_calls"], ensure_ascii=False, sort_keys=True) if m.get("tool_calls") else ""


def conversation_key(conv: Conversation | Document) -> str:
    if isinstance(conv, Document):
        return messages_key([{"role": "prompt", "content": conv.prompt or ""}, {"role": "text", "content": conv.text}])
    tools = "\x1d" + json.dumps(conv.tools, ensure_ascii=False, sort_keys=True) if conv.tools else ""
    return messages_key(conv.messages) + tools


def pair_key(pair: PreferencePair) -> str:
    """A preference row's identity: prompt, chosen and rejected."""
    replies = [{"role": "chosen", "content": pair.chosen}, {"role": "rejected", "content": pair.rejected}]
    return messages_key(pair.prompt + replies)


@dataclass
class Split(Generic[T]):
    train: list[T]
    eval: list[T]
    eval_copies_dropped: int  # copies of eval rows left out of both sides


def kept(items: list[T], dropped: Sequence[int]) -> list[T]:
    """The items encoding kept, in order (`dropped`: the positions it dropped). By position, not by source: the rows
    of a JSON array written on one line all read 'file.json:1'."""
    out = set(dropped)
    return [x for i, x in enumerate(items) if i not in out]


def split_eval(rows: list[T], fraction: float, seed: int, key: Callable[[T], Any]) -> Split[T]:
    """Hold out `fraction` of the unique rows; every copy of a row goes to the same side.

    The eval side keeps one copy per unique row; `eval_copies_dropped` counts the others. Without
    copies this is the plain seeded row split (same permutation as before copies were grouped).
    """
    import torch  # here: tokenizer worker processes import this module and need no torch

    groups: dict[Any, list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(key(row), []).append(i)
    members = list(groups.values())
    n_eval = max(1, int(len(members) * fraction))
    if n_eval >= len(members):
        raise UserError(
            f"data.eval_split {fraction}: the data has {len(members)} unique rows, too few to hold "
            f"{n_eval} out and train on the rest; add rows or give data.eval"
        )
    perm = torch.randperm(len(members), generator=torch.Generator().manual_seed(seed)).tolist()
    held, kept = [members[g] for g in perm[:n_eval]], [members[g] for g in perm[n_eval:]]
    return Split(
        train=[rows[i] for m in kept for i in m],
        eval=[rows[m[0]] for m in held],
        eval_copies_dropped=sum(len(m) - 1 for m in held),
    )


def count_overlap(train: list[T], eval: list[T], key: Callable[[T], Any]) -> int:
    """How many eval rows also occur (same key) in train."""
    seen = {key(r) for r in train}
    return sum(1 for r in eval if key(r) in seen)


KTO_RATIO = (1.0, 4 / 3)  # desirable : undesirable weighted ratio the KTO paper (eq. 8) and TRL recommend


def kto_balance(nd: int, nu: int, desirable_weight: float = 1.0, undesirable_weight: float = 1.0) -> str | None:
    """A line when KTO rows' weighted ratio nd·λ_D : nu·λ_U is outside KTO_RATIO (TRL warns the same), with the
    weights that fix it, or when every row is of one kind; `weitiao kto` and `data check` say it alike."""
    if not nd or not nu:
        kind = "desirable" if nd else "undesirable"
        return f"every row is {kind}: KTO then only moves these replies against the KL reference point"
    ratio = nd * desirable_weight / (nu * undesirable_weight)
    if KTO_RATIO[0] <= ratio <= KTO_RATIO[1] + 1e-9:
        return None
    lo, hi = (nu * undesirable_weight / nd * r for r in KTO_RATIO)
    ulo, uhi = (nd * desirable_weight / nu / r for r in reversed(KTO_RATIO))
    return (
        f"{nd} desirable × {desirable_weight:g} : {nu} undesirable × {undesirable_weight:g} = {ratio:.2f}, outside "
        f"the [1, 4/3] that KTO recommends; set kto.desirable_weight in [{lo:.2f}, {hi:.2f}] or "
        f"kto.undesirable_weight in [{ulo:.2f}, {uhi:.2f}] (not both)"
    )


def overlap_warning(where: str, overlap: int, n_eval: int) -> str:
    return (
        f"{where}: {overlap} of {n_eval} eval rows also occur in train (same prompt and reply); "
        "their eval loss measures recall, not generalization — remove them from one side"
    )
