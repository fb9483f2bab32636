"""Preference pairs for DPO and the reward model: read, split off eval, filter, tokenize."""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from weitiao.data.chat import Encoded, row_check
from weitiao.data.files import number_cell
from weitiao.data.formats import CONFIG_SKIP_HINT, PreferencePair
from weitiao.data.preference import PairStats, encode_pairs, form_notes, load_pairs, refuse_column_typos
from weitiao.data.prep import (
    count_overlap,
    kept,
    overlap_warning,
    pair_key,
    require_eval_left,
    require_rows,
    split_eval,
)
from weitiao.data.templates import ChatTemplate, fallback_note, resolve_template
from weitiao.errors import UserError
from weitiao.train.spec import PrefDataSpec, TrainSpec


class PairConfig(Protocol):
    """What pair preparation reads of a recipe config (DPOConfig, RMConfig)."""

    data: PrefDataSpec
    train: TrainSpec


@dataclass
class PrefData:
    template: ChatTemplate
    train: list[Encoded]  # [chosen_0, rejected_0, chosen_1, ...]
    eval: list[Encoded]
    stats: PairStats
    read: int
    rejected: int
    weights: list[float] | None = None  # per train pair, from data.weight_field
    eval_weights: list[float] | None = None  # per eval pair, likewise: eval_loss is weighted as the training loss
    low_confidence: int = 0  # pairs dropped by data.min_confidence
    margins: tuple[list[float] | None, list[float] | None] | None = None  # train, eval: rows' `margin` (TRL's RM)
    content_key: str = ""  # digest of the train pairs' texts in order (resume on edited data is refused)
    eval_stats: PairStats = field(default_factory=PairStats)  # what encoding did to the eval pairs
    eval_copies: int = 0  # copies of held-out pairs kept out of both sides by data.eval_split

    @property
    def over_max_len(self) -> tuple[int, int]:
        """Pairs dropped for length and pairs cut, train and eval together: the pairs line and the `data` record
        account for every pair read (an eval pair dropped for length was missing from both)."""
        t, e = self.stats, self.eval_stats
        return t.dropped_too_long + e.dropped_too_long, t.cut + e.cut

    def pairs_line(self) -> str:
        """The start of DPO's and RM's pairs line: every pair read accounted for."""
        dropped, cut = self.over_max_len
        return (
            f"pairs: {self.read} read = {self.stats.kept} train + {len(self.eval) // 2} eval + {self.eval_copies} eval "
            f"copies + {self.rejected} rejected + {self.low_confidence} below min_confidence + {dropped} over max_len "
            f"({cut} cut)"
        )

    def counts(self) -> dict:
        """The same counts for the run's `data` record (metrics.jsonl); train and eval apart (pairs = kept +
        dropped_too_long for the train pairs; read = kept + eval_pairs + eval_copies + rejected + low_confidence + both
        drops)."""
        t, e = self.stats, self.eval_stats
        return {"read": self.read, "pairs": t.pairs, "kept": t.kept, "dropped_too_long": t.dropped_too_long,
                "cut": t.cut, "rejected": self.rejected, "eval_pairs": len(self.eval) // 2,
                "eval_copies": self.eval_copies, "eval_dropped_too_long": e.dropped_too_long, "eval_cut": e.cut,
                "low_confidence": self.low_confidence, "template": self.template.name}  # fmt: skip

    def pair_lengths(self) -> list[int]:
        """Tokens of each train pair (both sides): the packing unit."""
        return [len(self.train[2 * i]) + len(self.train[2 * i + 1]) for i in range(len(self.train) // 2)]


def _row_number(pair: PreferencePair, name: str, key: str) -> float:
    v = number_cell(pair.extra.get(name), pair.source)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        got = "missing" if v is None else f"{v!r} is not a number ≥ 0"
        raise UserError(f"{pair.source}: {name}: {got} ({key} reads it)")
    return float(v)


def _confident(pairs: list[PreferencePair], least: float | None) -> list[PreferencePair]:
    if least is None:
        return pairs
    return [p for p in pairs if _row_number(p, "confidence", "data.min_confidence") >= least]


def prepare_pairs(
    cfg: PairConfig,
    tokenizer: Any,
    read_margins: bool = False,
    read_weights: bool = True,
    rejects_dir: Path | None = None,
) -> PrefData:
    """Pairs read, split, filtered and tokenized; `read_margins`: each pair's `margin` column is read (the reward
    model), else a row with one is refused; `read_weights` false: the recipe has no per-pair weight (the reward
    model), so a `weight` column is refused without pointing to data.weight_field. Bad rows (data.skip_invalid) go
    to `rejects_dir` (default train.out)."""
    d = cfg.data
    if d.format == "preference_raw" and d.template != "auto":  # it rendered nothing, and the data record named it
        raise UserError(f"data.template: {d.template!r} renders no pair: data.format preference_raw trains every pair "
                        f"of {', '.join(map(str, [*d.train, *d.eval]))} as raw text (prompt + reply + EOS, as TRL); "
                        "drop data.template, or data.format to render the pairs through the template")  # fmt: skip
    template = resolve_template(tokenizer, d.template)
    rejects = Path(rejects_dir or cfg.train.out) / "rejects.jsonl"
    check = row_check(tokenizer, template)  # a bad row: set aside
    reading = (d.max_row_bytes, d.dataset_dir, CONFIG_SKIP_HINT, check)
    loaded = load_pairs(d.train, d.format, d.skip_invalid, rejects, *reading)
    require_rows(loaded, "data.train")
    pairs, read, rejected, copies = loaded.rows, loaded.read, loaded.rejected, 0
    if d.eval:
        ev_rejects = rejects.with_name("eval_rejects.jsonl")
        ev = load_pairs(d.eval, d.format, d.skip_invalid, ev_rejects, *reading)
        require_rows(ev, "data.eval")
        eval_pairs, read, rejected = ev.rows, read + ev.read, rejected + ev.rejected
    elif d.eval_split:
        split = split_eval(pairs, d.eval_split, cfg.train.seed, pair_key)  # copies stay on one side
        pairs, eval_pairs, copies = split.train, split.eval, split.eval_copies_dropped
    else:
        eval_pairs = []
    refuse_column_typos(pairs + eval_pairs)
    if (overlap := count_overlap(pairs, eval_pairs, pair_key)) and os.environ.get("RANK", "0") == "0":
        print("warning: " + overlap_warning("data.eval", overlap, len(eval_pairs)))  # once per run, not per process
    n_read = len(pairs) + len(eval_pairs)  # before min_confidence
    n_eval = len(eval_pairs)
    pairs, eval_pairs = _confident(pairs, d.min_confidence), _confident(eval_pairs, d.min_confidence)
    if not pairs:
        raise UserError(f"data.min_confidence: no train pair has confidence ≥ {d.min_confidence}")
    if n_eval and not eval_pairs:  # the run trained to the end with no eval metric, as truncation's (require_eval_left)
        raise UserError(f"data.min_confidence: no eval pair has confidence ≥ {d.min_confidence}; lower it, or give "
                        "eval pairs that pass it")  # fmt: skip
    enc = {"cache_dir": d.cache_dir, "use_cache": d.cache, "num_proc": d.num_proc, "progress": cfg.train.progress}
    for note in form_notes(pairs + eval_pairs, template) if os.environ.get("RANK", "0") == "0" else ():
        print(f"note: {note}")  # once for train and eval pairs; with or without a progress bar
    if (
        d.format != "preference_raw"
        and os.environ.get("RANK", "0") == "0"
        and (note := fallback_note(d.template, template, tokenizer))
    ):
        print(f"note: {note}")
    train, stats = encode_pairs(pairs, tokenizer, template, d.max_len, d.truncation, **enc)
    evals, eval_stats = encode_pairs(eval_pairs, tokenizer, template, d.max_len, d.truncation, **enc)
    if not train:
        raise UserError(f"data.train: no pairs left after truncation {d.truncation!r} (max_len {d.max_len})")
    require_eval_left(d, len(eval_pairs), len(evals), "pairs")
    weights = eval_weights = None
    if not d.weight_field and (p := next((p for p in pairs + eval_pairs if "weight" in p.extra), None)):
        if not read_weights:
            raise UserError(f"{p.source}: weight: not read here (the reward model has no per-pair weight; DPO reads "
                            "one with data.weight_field); drop the column")  # fmt: skip
        raise UserError(f"{p.source}: weight: not read unless data.weight_field=weight is set (it scales each "
                        "pair's loss; 0 drops the pair); set it, or drop the column")  # fmt: skip
    if d.weight_field:
        weights, eval_weights = (
            [_row_number(p, d.weight_field, "data.weight_field") for p in kept(ps, st.dropped_pairs)]
            for ps, st in ((pairs, stats), (eval_pairs, eval_stats))
        )
        for name, w in (("train", weights), ("eval", eval_weights)):
            if w and not sum(w) > 0:
                raise UserError(f"data.weight_field: every {name} pair has {d.weight_field} 0")
    low = n_read - len(pairs) - len(eval_pairs)
    margins = None
    if given := next((p.source for p in pairs + eval_pairs if "margin" in p.extra), None):
        if not read_margins:
            raise UserError(f"{given}: margin: not read here (a reward model's per-pair margin, which weitiao rm reads "
                            "as TRL does); drop the column")  # fmt: skip
        margins = _margins(pairs, stats), _margins(eval_pairs, eval_stats)
    content = hashlib.sha256("\x00".join(map(pair_key, pairs)).encode()).hexdigest()[:16]
    return PrefData(
        template, train, evals, stats, read, rejected, weights, eval_weights, low, margins, content, eval_stats, copies
    )


def _margins(pairs: list[PreferencePair], stats: PairStats) -> list[float] | None:
    """Each encoded pair's `margin`, or None when no row of the set has one."""
    if not any("margin" in p.extra for p in pairs):
        return None
    return [_margin(p) for p in kept(pairs, stats.dropped_pairs)]


def _margin(pair: PreferencePair) -> float:
    v = number_cell(pair.extra.get("margin"), pair.source)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        got = "missing (other rows have one)" if v is None else f"{v!r} is not a number"
        raise UserError(f"{pair.source}: margin: {got} (each pair's margin is read, as TRL's RewardTrainer does)")
    return float(v)


def check_pair_model(
    model: Any, tokenizer: Any, data: Any, spec: Any, no_dropout: bool, device, main: bool, raw: bool | None = None
) -> bool:
    """DPO's, KTO's and the reward model's checks of the model they train, before step 1: tokens the rows use that
    the base never trained (`raw`: no template renders them; default: data.format is preference_raw), dropout off
    when asked, trainable parameters, rows past the context, and packed rows kept apart by the attention. Returns
    whether packed rows need one row per micro-batch."""
    from weitiao.models.attention import check_isolation, needs_one_row, refuse_untrainable
    from weitiao.models.load import disable_dropout
    from weitiao.models.reward_dir import RAW
    from weitiao.models.untrained import refuse_untrained_tokens
    from weitiao.train import loop

    raw = getattr(spec, "format", None) == RAW if raw is None else raw
    refuse_untrained_tokens(model, tokenizer, None if raw else data.template, main)
    if no_dropout:
        disable_dropout(model)
    refuse_untrainable(model, device)
    loop.refuse_over_context(model, train=data.train, eval=data.eval)
    one_row = spec.packing and needs_one_row(model)
    if spec.packing:
        check_isolation(model, device, one_row)
    return one_row
