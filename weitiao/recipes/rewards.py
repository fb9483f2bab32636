"""Reward sources for PPO: a trained reward model, a Python function, or an HTTP endpoint.

Every source is called as `score(conversations, responses) -> list[float]`, where each conversation
is the prompt's messages (ending with a user turn) and each response the decoded reply text (special tokens the
policy drew kept, the stop token that ends it dropped: `ppo.reply_text`).

    reward: {kind: model, path: runs/demo-rm}
    reward: {kind: function, path: "mypkg.rewards:short_with_emoji"}   # f(prompts, responses)
    reward: {kind: http, path: "http://127.0.0.1:9000/score"}          # POST {prompts, responses} → {scores}
    reward: {kind: rules, path: rules.yaml, weights: {F001: 2}}        # weitiao.safety.rules_reward
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from weitiao.config import ModelRef
from weitiao.data.files import confined_tree
from weitiao.data.formats import Conversation, Message
from weitiao.errors import UserError

Scorer = Callable[[list[list[Message]], list[str]], list[float]]


class RewardSpec(BaseModel):
    """Where PPO's sequence scores come from."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["model", "function", "http", "rules"] = Field(
        "model", description="model: a `weitiao rm` run; function: module:function; http: a URL; rules: a rule file"
    )
    path: ModelRef = Field(..., description="reward model dir | module:function | URL | rule file")
    weights: dict[str, float] | None = Field(None, description="kind rules: rule id → weight (default 1 each)")
    batch_size: int = Field(16, gt=0, description="responses per scoring call")
    timeout: float = Field(60.0, gt=0, description="seconds per HTTP request")


def _check(scores: Any, n: int, where: str) -> list[float]:
    try:
        items = list(scores) if not isinstance(scores, (str, bytes, dict)) else None
    except TypeError:
        items = None
    if items is None:
        raise UserError(f"reward {where}: must return a list of numbers, got {type(scores).__name__}")
    out = []
    for i, s in enumerate(items):
        try:
            if isinstance(s, (str, bytes)):  # text such as "1.5" is not read as a number
                raise TypeError
            out.append(float(s))
        except (TypeError, ValueError):
            raise UserError(f"reward {where}: score {i} is {s!r} ({type(s).__name__}); return numbers") from None
    if len(out) != n:
        raise UserError(f"reward {where}: returned {len(out)} scores for {n} responses")
    bad = next((i for i, s in enumerate(out) if not math.isfinite(s)), None)
    if bad is not None:
        raise UserError(f"reward {where}: score {out[bad]} for response {bad}: scores must be finite numbers")
    return out


def model_scorer(path: str, device: Any = None, batch_size: int = 16) -> tuple[Scorer, Any]:
    """Scores from a `weitiao rm` output; also returns the model (for the cost report)."""
    from weitiao.models.heads import load_reward_model
    from weitiao.models.reward_dir import RAW, reward_meta
    from weitiao.recipes.score import score_conversations

    try:
        meta = reward_meta(path)[1]
    except UserError as e:  # it names the flag of `weitiao score` (--rm), not this config's key
        raise UserError(str(e).replace("--rm ", "reward.path: ", 1)) from None
    if meta.get("format") == RAW:  # its scores hold only on raw text, not on rendered chats
        raise UserError(
            f"reward.path {path}: this reward model was trained on raw text pairs (data.format: preference_raw), "
            "but PPO scores chat-rendered prompts and replies; train it on chat pairs (data.format: auto/preference)"
        )
    model, tokenizer, _ = load_reward_model(path, device)

    def score(prompts: list[list[Message]], responses: list[str]) -> list[float]:
        convs = [Conversation(list(p) + [{"role": "assistant", "content": r}]) for p, r in zip(prompts, responses)]
        scores = score_conversations(model, tokenizer, convs, batch_size)
        if None in scores:
            n = model.config.max_position_embeddings
            raise UserError(f"reward {path}: a prompt + response is longer than its context ({n} tokens); "
                            "shorten prompts or the generation length")  # fmt: skip
        return scores  # type: ignore[return-value]

    return score, model


def critic_base_difference(rm_path: str, policy_base: str) -> str | None:
    """How the weights under the reward model's score head differ from the policy's base, or None when they are the
    same. PPO's LoRA critic is the reward model's adapter on the policy's base: the reward model itself only on the
    base it was trained on (its digest as recorded then; a reward model from before that record: its base now). A
    fully fine-tuned reward model's own weights are never the policy's base."""
    from weitiao.models.digest import model_digest, weights_digest
    from weitiao.models.reward_dir import reward_meta

    root, meta = reward_meta(rm_path)
    if (root / "adapter").exists():
        theirs, where = meta.get("base_weights") or model_digest(meta["base"]), f"reward model base {meta['base']}"
    else:
        theirs, where = weights_digest(root / "model"), f"reward model {root / 'model'} (fully fine-tuned)"
    ours = model_digest(policy_base)
    if theirs is None or ours is None:
        print(
            f"note: ppo.critic_init: the weights of the {where} and of model.path {policy_base} could not be "
            "compared (no safetensors files): a critic started from the reward model takes them to be the same"
        )
        return None
    if theirs == ours:
        return None
    return f"{where} vs model.path {policy_base}: same shapes, other weights (digest {theirs} vs {ours})"


def _raised_at(e: BaseException) -> str:
    at = traceback.extract_tb(e.__traceback__)[-1]
    return f"{at.filename}:{at.lineno}"


def function_scorer(spec: str, batch_size: int | None = None) -> Scorer:
    """`module:function` (module importable, or a .py path) called with (prompts, responses), `batch_size`
    responses at a time (None: all at once)."""
    mod_name, _, fn_name = spec.partition(":")
    if not fn_name:
        raise UserError(f"reward.path {spec!r}: write module:function, e.g. mypkg.rewards:length_reward")
    if mod_name.endswith(".py"):  # a console run's file: inside its folders as it is run, not only when made
        confined_tree(Path(mod_name))
    try:
        if mod_name.endswith(".py"):
            loader = importlib.util.spec_from_file_location("weitiao_user_reward", mod_name)
            if loader is None or loader.loader is None:
                raise ImportError(mod_name)
            module = importlib.util.module_from_spec(loader)
            loader.loader.exec_module(module)
        else:
            module = importlib.import_module(mod_name)
        fn = getattr(module, fn_name)
    except ModuleNotFoundError as e:
        if e.name != mod_name.split(".")[0]:  # the user's module itself imports something missing
            raise UserError(f"reward.path {spec!r}: cannot import ({e})") from None
        file = mod_name.replace(".", "/") + ".py"
        raise UserError(f"reward.path {spec!r}: no module {mod_name!r} on the Python path; a file beside the config "
                        f"is written with its ending: {file}:{fn_name}") from None  # fmt: skip
    except (ImportError, AttributeError, FileNotFoundError) as e:
        raise UserError(f"reward.path {spec!r}: cannot import ({e})") from None
    except Exception as e:  # the user's module failed while it loaded (SyntaxError, 1/0 at top level): where
        syntax = isinstance(e, SyntaxError)
        what, where = (e.msg, f"{e.filename}:{e.lineno}") if syntax else (e, _raised_at(e))
        raise UserError(f"reward.path {spec!r}: cannot import: {type(e).__name__}: {what} ({where})") from None
    if not callable(fn):  # was a TypeError at the first step, located in this file
        raise UserError(f"reward.path {spec!r}: {fn_name} is a {type(fn).__name__}, not a function")

    def score(prompts: list[list[Message]], responses: list[str]) -> list[float]:
        step, out = batch_size or max(1, len(responses)), []
        for k in range(0, len(responses), step):
            part = responses[k : k + step]
            try:
                got = fn(prompts[k : k + step], part)
            except Exception as e:  # the user's code: one line naming the error and where it was raised
                raise UserError(f"reward {spec}: raised {type(e).__name__}: {e} ({_raised_at(e)})") from None
            out += _check(got, len(part), spec)
        return out

    return score


def http_scorer(url: str, timeout: float = 60.0, batch_size: int = 16) -> Scorer:
    """POST {"prompts": [[messages]], "responses": [str]} → {"scores": [float]} per batch."""
    import httpx

    from weitiao.secrets import redact

    def score(prompts: list[list[Message]], responses: list[str]) -> list[float]:
        out: list[float] = []
        for k in range(0, len(responses), batch_size):
            body = {"prompts": prompts[k : k + batch_size], "responses": responses[k : k + batch_size]}
            try:
                r = httpx.post(url, json=body, timeout=timeout)
                got = r.json() if r.is_success else None
            except (httpx.HTTPError, ValueError) as e:  # unreachable, timed out, a body that is not JSON
                raise UserError(redact(f"reward endpoint {url}: {type(e).__name__}: {e}")) from None
            if not r.is_success:  # httpx's own message runs to two lines and leaves out what the server said
                raise UserError(redact(f"reward endpoint {url} answered HTTP {r.status_code}: {r.text[:200]!r}"))
            if not isinstance(got, dict) or "scores" not in got:  # a bare list, a number: was a TypeError traceback
                want = '{"scores": [one number per response]}'
                raise UserError(redact(f"reward endpoint {url}: answered {r.text[:80]!r}; return {want}"))
            scores = got["scores"]
            out += _check(scores, len(body["responses"]), redact(url))
        return out

    return score


def build_scorer(spec: RewardSpec, device: Any = None) -> tuple[Scorer, Any]:
    """(score function, reward model or None)."""
    if spec.weights is not None and spec.kind != "rules":
        raise UserError(f"reward.weights: only used by kind: rules (this reward is kind: {spec.kind}); remove it")
    # Compared with the defaults, not with the keys written: the config.yaml a run records holds every key.
    for key, kinds in (("timeout", ("http",)), ("batch_size", ("model", "function", "http"))):
        if getattr(spec, key) != RewardSpec.model_fields[key].default and spec.kind not in kinds:
            raise UserError(f"reward.{key}: not used by kind: {spec.kind} (only {', '.join(kinds)}); remove it")
    if spec.kind == "model":
        return model_scorer(spec.path, device, spec.batch_size)
    if spec.kind == "function":
        return function_scorer(spec.path, spec.batch_size), None
    if spec.kind == "rules":  # (this module sits in recipes/ once moved; safety is below recipes)
        from weitiao.safety.rules_reward import rules_scorer

        return rules_scorer(spec.path, spec.weights), None
    return http_scorer(spec.path, spec.timeout, spec.batch_size), None


def short_emoji_reward(prompts: list[list[Message]], responses: list[str]) -> list[float]:
    """Demo rule reward: +1 for an emoji, +1 for ≤ 20 characters, −0.02 per character beyond 20."""
    from weitiao.eval.style import has_emoji

    return [float(has_emoji(r)) + (1.0 if len(r) <= 20 else -0.02 * (len(r) - 20)) for r in responses]
