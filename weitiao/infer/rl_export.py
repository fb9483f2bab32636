"""`weitiao export --for openrlhf|verl`: a run in the layout those PPO frameworks load unchanged.

Policy (an SFT or DPO run): the merged plain HF causal LM of `export --merge`; both load it with
AutoModelForCausalLM (OpenRLHF `openrlhf/models/actor.py` Actor, verl `verl/utils/model.py`).

Reward model (a `weitiao rm` run), merged into one HF dir, loadable as the reward model or as the
critic's starting point:
- OpenRLHF (`openrlhf/models/model.py`, get_llm_for_sequence_regression / _get_reward_model): the base
  model under `base_model_prefix` plus a bias-free `nn.Linear(hidden, 1)` named by
  config.value_head_prefix, the reward read at the last attention-mask position and, under
  --normalize_reward, standardized with config.mean/std. Our `*ForSequenceClassification` weights are
  exactly that (`model.*`, `score.weight`); the config gains value_head_prefix "score" and the run's
  last eval reward mean/std.
- verl (`verl/workers/fsdp_workers.py`, RewardModelWorker._build_model / _forward_micro_batch):
  AutoModelForTokenClassification with num_labels 1, the reward read at the last attention-mask
  position. That class's `score` has a bias (transformers' default) that our head lacks: it is
  written as zeros, so nothing is initialized at random when verl loads it.
Both read the score at a sequence's last token; weitiao reads it at the reply's end-of-turn token, so
the scores agree on sequences that end with it (rollouts that stop at the end-of-turn token do).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch

from weitiao.errors import UserError
from weitiao.infer import export as plain
from weitiao.models.heads import load_reward_model
from weitiao.models.load import DTYPES, adapter_base
from weitiao.models.reward_dir import META_FILE, RAW, reward_meta

TARGETS = ("openrlhf", "verl")


def export_for(target: str, run: str, out: str, dtype: str = "fp32", force: bool = False) -> Path:
    """Write `run` (a run dir, its final/ dir, or an adapter dir) for `target` into `out` (as `export`:
    new, empty, or a previous export with `force`; written whole or not at all)."""
    if target not in TARGETS:
        raise UserError(f"--for {target}: choose one of {', '.join(TARGETS)}")
    root = next((p for p in (Path(run) / "final", Path(run)) if (p / META_FILE).is_file()), None)
    if root is None:  # a policy: the merged causal LM both frameworks load
        return plain.export(run, out, merge=True, dtype=dtype, force=force)
    if dtype not in DTYPES:
        raise UserError(f"--dtype {dtype}: choose fp32, bf16 or fp16")
    if (root / "adapter").is_dir() and (quant := adapter_base(root / "adapter")[1]) != "none":
        raise UserError(
            f"--adapter {run}: a reward model trained on a {quant} base cannot be merged for {target} yet "
            "(its head learned on de-quantized weights); retrain it with model.quant=none"
        )
    dest = Path(out)
    replace = plain.check_out(dest, root, force)
    model, tokenizer, _ = load_reward_model(root, quant="none")
    merged = (model.merge_and_unload() if hasattr(model, "merge_and_unload") else model).to(DTYPES[dtype])
    stats = eval_reward_stats(root.parent / "metrics.jsonl")
    if target == "openrlhf" and stats is None and root.parent.joinpath("metrics.jsonl").exists():
        print(
            f"note: {root.parent}/metrics.jsonl has no eval reward mean/std (train with eval data): "
            "OpenRLHF's --normalize_reward would leave the rewards as they are"
        )

    fmt = reward_meta(root)[1].get("format", "chat")
    if fmt == RAW:  # both frameworks template the prompts they roll out unless told not to
        print(
            f"note: {run} was trained on raw text (prompt + reply + EOS, no chat template, data.format {RAW}): "
            f"{target} must score the same raw text, without the chat template, or its scores mean little"
        )

    def fill(tmp: Path) -> dict[str, Any]:
        if target == "openrlhf":
            openrlhf_reward(merged, stats).save_pretrained(tmp, safe_serialization=True)
        else:
            model, weights = verl_reward(merged)
            model.save_pretrained(tmp, state_dict=weights, safe_serialization=True)
        tokenizer.save_pretrained(tmp)  # the run's tokenizer: it carries the training chat template
        info = {"adapter": str(root.resolve()), "for": target, "reward_model": True, "merged": True, "dtype": dtype}
        return {**info, "format": fmt}

    return plain.publish(dest, replace, fill)


def eval_reward_stats(metrics: Path) -> tuple[float, float] | None:
    """(mean, std) of the rewards in the run's last eval record, or None without one."""
    if not metrics.is_file():
        return None
    last = None
    for line in metrics.read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        if rec.get("kind") == "eval" and "eval_reward_mean" in rec:
            last = rec
    return None if last is None else (float(last["eval_reward_mean"]), float(last["eval_reward_std"]))


def openrlhf_reward(model: Any, stats: tuple[float, float] | None) -> Any:
    """The merged classifier with the config keys OpenRLHF's reward/critic loader reads."""
    model.config.value_head_prefix = "score"
    if stats is not None:
        model.config.mean, model.config.std = stats
    return model


def verl_reward(model: Any) -> tuple[Any, dict[str, torch.Tensor]]:
    """(an empty `*ForTokenClassification` of the same base, the merged weights with a zero head bias)."""
    from transformers import AutoModelForTokenClassification

    config = copy.deepcopy(model.config)
    config.architectures = [
        a.replace("ForSequenceClassification", "ForTokenClassification") for a in config.architectures
    ]
    config.num_labels, config.classifier_dropout = 1, 0.0
    with torch.device("meta"):  # only its class and config are written: the weights are `model`'s
        target = AutoModelForTokenClassification.from_config(config)
    weights = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    bias = target.score.bias
    if bias is not None:
        weights["score.bias"] = torch.zeros(bias.shape, dtype=weights["score.weight"].dtype)
    if set(weights) != set(target.state_dict()):
        raise RuntimeError(f"verl layout: keys differ: {sorted(set(weights) ^ set(target.state_dict()))[:4]}")
    return target, weights
