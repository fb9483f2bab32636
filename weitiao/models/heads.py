"""Sequence scores from a `*ForSequenceClassification` model (one label) on packed rows.

The score is read at the last trained token of each sequence (the reply's end-of-turn token), not
at "the last non-pad token of the row" as transformers' own pooling does, so packing works.
Saved reward models are ordinary HF/peft artifacts: `adapter/` (LoRA + `score` in modules_to_save)
or `model/`, plus `reward_model.json` naming the base, read by `load_reward_model`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from weitiao.data.chat import IGNORE
from weitiao.errors import UserError
from weitiao.io import atomic_write_text
from weitiao.models.reward_dir import META_FILE, reward_meta


def last_target_positions(targets: torch.Tensor, seq_index: torch.Tensor, n_seqs: int) -> torch.Tensor:
    """Flat index (row-major) of the last labelled token of each sequence.

    targets[p] is the label of token p+1, so the last labelled token sits one after the last target.
    """
    flat = torch.arange(targets.numel(), device=targets.device)
    has = (targets.reshape(-1) != IGNORE) & (seq_index.reshape(-1) >= 0)
    last = torch.full((n_seqs,), -1, dtype=torch.long, device=targets.device)
    last = last.scatter_reduce(0, seq_index.reshape(-1)[has], flat[has], reduce="amax")
    if bool((last < 0).any()):  # would read the score at the batch's first token, the same number for any such row
        raise ValueError(f"sequences {(last < 0).nonzero().flatten().tolist()} have no labelled token to score at")
    return last + 1


class SequenceScorer(nn.Module):
    """forward(batch tensors, n_seqs) → one score per sequence."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def _parts(self) -> tuple[nn.Module, nn.Module]:
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        return getattr(base, base.base_model_prefix), base.score

    def forward(
        self,
        input_ids: torch.Tensor,
        targets: torch.Tensor,
        position_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        seq_index: torch.Tensor,
        n_seqs: int,
    ) -> torch.Tensor:
        decoder, score = self._parts()
        hidden = decoder(
            input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask, use_cache=False
        ).last_hidden_state
        idx = last_target_positions(targets, seq_index, n_seqs)
        return score(hidden.reshape(-1, hidden.shape[-1])[idx]).squeeze(-1).float()


def save_reward_meta(
    out: Path, base_path: str, template_jinja: str, fmt: str = "chat", base_weights: str | None = None
) -> None:
    """reward_model.json: the base, the chat template and the text `format` scores were learned on (chat or RAW), and
    the base's `digest.weights_digest` (PPO's critic starts from the adapter on its own base's weights only)."""
    meta = {"base": base_path, "chat_template": template_jinja, "format": fmt, "base_weights": base_weights}
    atomic_write_text(out / META_FILE, json.dumps(meta, indent=2))


def refuse_other_base(root: Path, meta: dict, base: str | None) -> None:
    """A LoRA reward model scores on the weights it was trained on: a base folder whose weights changed since (a
    re-download or another checkpoint at the same path) is refused, not scored on (its digest is in META_FILE)."""
    from weitiao.models.digest import model_digest

    now = model_digest(base or meta["base"]) if meta.get("base_weights") else None
    if now is not None and now != meta["base_weights"]:
        raise UserError(
            f"reward model {root}: its base {base or meta['base']} holds other weights than it was trained on (digest "
            f"{meta['base_weights']} in {META_FILE}, {now} now); point to the base it was trained on, or train the "
            "reward model again on this one"
        )


def load_reward_model(
    path: str | Path, device: torch.device | None = None, base: str | None = None, quant: str | None = "none"
) -> tuple[Any, Any, str]:
    """(scorer-ready model, tokenizer, chat template) from a `weitiao rm` output dir (its final/).

    A LoRA reward model goes on `base` (default: the recorded one) loaded as `quant` (None: as trained).
    """
    from weitiao.models.load import ModelSpec, load_adapted, load_model, load_tokenizer

    root, meta = reward_meta(path)
    if (root / "adapter").exists():
        base = base or (meta["base"] if Path(meta["base"]).is_dir() else None)
        model = load_adapted(root / "adapter", base, quant, "reward model base", device, head="score")
        refuse_other_base(root, meta, base)  # after: a base of other shapes gets load_adapted's "does not fit"
    else:
        model = load_model(ModelSpec(path=str(root / "model")), device, head="score")
    tokenizer = load_tokenizer(str(root / "tokenizer"))
    return model.eval(), tokenizer, meta["chat_template"]
