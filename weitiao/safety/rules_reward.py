"""A PPO reward from a rule set (Q165): the rules' programmatic checks, weighted.

    reward: {kind: rules, path: examples/rules_zh.yaml, weights: {F001: 2.0, S010: 0.5}}

For a prompt (its last user turn) and a reply, the rules that count are the checked rules the prompt
exercises (global ones, and conditional ones whose `when` matches). Each passes (+1) or fails (−1);
the reward is their weighted mean, in [−1, 1]:

    reward = Σ_r w_r · (+1 if the reply passes r else −1) / Σ_r w_r

and 0 when the prompt exercises no checked rule. Weights default to 1; weight 0 leaves a rule out.
A mean rather than a sum keeps prompts that exercise many rules from dominating the batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from weitiao.errors import UserError
from weitiao.safety.rules import RuleSet, load_rules


def rule_weights(rs: RuleSet, weights: dict[str, float] | None) -> dict[str, float]:
    """Rule id → weight for every checked rule; `weights` names rules by id (unknown or unchecked: UserError)."""
    given = dict(weights or {})
    ids = {r.id: r for r in rs.rules}
    for rid, w in given.items():
        if rid not in ids:
            raise UserError(f"reward.weights.{rid}: {rs.path} has no rule {rid!r}")
        if ids[rid].check is None:
            raise UserError(f"reward.weights.{rid}: rule {rid} has no check, so it cannot be scored; remove it")
        if not isinstance(w, (int, float)) or isinstance(w, bool) or not 0 <= w < math.inf:  # .inf/.nan: nan rewards
            raise UserError(f"reward.weights.{rid}: {w!r}; give a finite number ≥ 0")
    return {r.id: float(given.get(r.id, 1.0)) for r in rs.rules if r.check is not None}


def score_reply(rs: RuleSet, weights: dict[str, float], prompt: str, reply: str) -> float:
    """The weighted mean of ±1 over the checked rules `prompt` exercises (0 when none)."""
    total = signed = 0.0
    for r in rs.exercised(prompt):
        w = weights.get(r.id, 0.0)
        if r.check is None or w == 0:
            continue
        total += w
        signed += -w if r.failures(reply) else w
    return signed / total if total else 0.0


def _last_user(messages: list[dict]) -> str:
    users = [m.get("content") or "" for m in messages if m.get("role") == "user"]
    return str(users[-1]) if users else ""


def rules_scorer(
    path: str, weights: dict[str, float] | None = None
) -> Callable[[list[list[dict]], list[str]], list[float]]:
    """`score(prompts, responses)` for PPO (the reward-source signature), from a rule file."""
    rs = load_rules(path)
    w = rule_weights(rs, weights)
    if not any(w.values()):
        raise UserError(f"reward.path {path}: no rule with a check and a weight > 0; nothing to score")

    def score(prompts: list[list[dict]], responses: list[str]) -> list[float]:
        return [score_reply(rs, w, _last_user(p), r) for p, r in zip(prompts, responses, strict=True)]

    return score
