"""PPO's models on one base: actor, reference and critic as LoRA adapters (or full copies) + a value head.

With `shared_critic` there is no critic trunk: the value head reads the actor's hidden states (TRL v0's
AutoModelForCausalLMWithValueHead), and `critic_params` is the value head alone.

peft switches the active adapter per forward (`Roles.use`); the reference is a frozen copy of the
starting adapter, or the base with adapters disabled; the critic adapter can start from a reward
model's LoRA weights, its score head and the modules it trained in full (`critic_init="reward"`; those are
the critic adapter's own copies, peft modules_to_save, so actor and reference keep the base's).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from weitiao.errors import UserError
from weitiao.losses.sft import logit_softcap
from weitiao.models.load import LoraSpec, ModelSpec, add_lora, load_lora, load_model, locate, shape_conflicts


class Roles(nn.Module):
    """Actor, reference and critic as LoRA adapters on one base (or full copies), plus the value head."""

    def __init__(
        self,
        model: ModelSpec,
        lora: LoraSpec,
        device: torch.device,
        reward_model: Any = None,
        critic_init: str = "auto",
        critic_lora: LoraSpec | None = None,
        reward_base: str | None = None,
        shared_critic: bool = False,
    ):
        """`reward_base`: how the weights under the reward model's score head differ from `model`'s, shapes alike
        (`recipes.rewards.critic_base_difference`), or None. A LoRA critic is the reward model's adapter on this base,
        so it then starts from zeros (auto) or is refused (reward); a full critic copies the reward model whole."""
        super().__init__()
        if critic_lora is not None and not lora.enabled:  # the critic is then a full copy: no adapter to shape
            raise UserError(
                "ppo.critic_lora would do nothing: lora.enabled is false (full fine-tuning, the critic is a full copy "
                "of the base); set lora.enabled: true to train LoRA adapters, or drop ppo.critic_lora"
            )
        if critic_lora is not None:
            _refuse_unused_critic_keys(critic_lora)
        base = load_model(model, device)
        self.lora, self.shared_critic = lora.enabled, shared_critic
        critic_spec = critic_settings(lora, critic_lora)
        init = critic_init
        other = _other_base(reward_model, base) if reward_model is not None and not shared_critic else None
        other = other or (reward_base if lora.enabled else None)
        if shared_critic:  # a value head on the actor, from zeros (ppo.critic_init is refused with it)
            init = "zeros"
        elif init == "auto":
            init = "reward" if reward_model is not None and not other else "zeros"
            if other:
                print(f"ppo.critic_init auto: zeros, the reward model's base is another model ({other})")
        self.critic_init = init  # what auto resolved to
        if init == "reward" and reward_model is None:
            raise UserError("ppo.critic_init: reward needs reward.kind: model (or use zeros)")
        if init == "reward" and other:
            raise UserError(f"ppo.critic_init: reward: the reward model was trained on another base ({other}), so its "
                            "weights cannot start the critic; set ppo.critic_init=zeros")  # fmt: skip
        if self.lora:
            from peft import LoraConfig

            if lora.init_from:
                self.model = load_lora(base, lora.init_from, spec=lora)  # checks path and shape, names lora.init_from
                self.model.load_adapter(locate(lora.init_from)[0], adapter_name="reference", is_trainable=False)
                self.has_ref_adapter = True
            else:
                self.model = add_lora(base, lora)
                self.has_ref_adapter = False
            rm_lora = _peft_of(reward_model) if init == "reward" else None
            if rm_lora is not None:  # the critic copies the reward model's adapter shape and scaling, then its weights
                rc = rm_lora.peft_config["default"]
                _refuse_critic_shape(critic_lora, rc)
                cc = LoraConfig(
                    r=rc.r, lora_alpha=rc.lora_alpha, target_modules=rc.target_modules, lora_dropout=0.0,
                    use_rslora=rc.use_rslora, use_dora=rc.use_dora, rank_pattern=rc.rank_pattern,
                    alpha_pattern=rc.alpha_pattern, modules_to_save=_full_modules(rc) or None,
                )  # fmt: skip
            else:
                a = critic_spec.alpha if critic_spec.alpha is not None else 2 * critic_spec.r
                cc = LoraConfig(
                    r=critic_spec.r, lora_alpha=a, target_modules=critic_spec.targets, lora_dropout=0.0,
                    use_rslora=critic_spec.rslora, use_dora=critic_spec.dora,
                )  # fmt: skip
            if not shared_critic:
                self.model.add_adapter("critic", cc)
            if rm_lora is not None:
                _copy_lora(rm_lora, self.model)
            self.model.base_model.set_adapter("default")
            self.ref_model = self.critic_model = None
        else:
            if model.quant != "none":
                raise UserError("model.quant: quantized weights cannot be fully fine-tuned; set lora.enabled: true")
            self.model = base
            self.ref_model = copy.deepcopy(base).requires_grad_(False)
            src = _plain_body(reward_model) if init == "reward" else None
            self.critic_model = None if shared_critic else copy.deepcopy(base)
            if src is not None:
                _decoder(self.critic_model).load_state_dict(_decoder(src).state_dict())
        hidden = base.config.hidden_size
        self.value_head = nn.Linear(hidden, 1, bias=False, device=device)
        nn.init.zeros_(self.value_head.weight)
        if init == "reward":
            self.value_head.weight.data.copy_(_score_head(reward_model).weight.data.float())
        self.softcap = logit_softcap(base)
        self.eval()  # rollouts and scoring run without dropout; the recipe switches to train() for updates
        self.actor_params = [p for n, p in self.model.named_parameters() if _is_actor(n, self.lora) and p.requires_grad]
        critic = None if shared_critic else self.model if self.lora else self.critic_model
        own = [] if critic is None else critic.named_parameters()
        self.critic_params = [p for n, p in own if ".critic." in n or not self.lora]
        self.critic_params += list(self.value_head.parameters())
        for p in self.critic_params:
            p.requires_grad_(True)

    def use(self, role: str) -> nn.Module:
        """The module that computes `role` (switches the active adapter in LoRA mode)."""
        if not self.lora:
            return {"actor": self.model, "reference": self.ref_model, "critic": self.critic_model}[role]
        if role == "critic" and self.shared_critic:
            raise ValueError("ppo.critic: shared has no critic trunk: its values come from the actor's hidden states")
        name = {"actor": "default", "reference": "reference", "critic": "critic"}[role]
        self.model.base_model.set_adapter(name)
        return self.model

    def train(self, mode: bool = True) -> Roles:
        """Actor and critic in training mode (dropout where p > 0); the reference copy always runs in eval."""
        super().train(mode)
        if self.ref_model is not None:
            self.ref_model.eval()
        return self

    @contextmanager
    def parts(self, role: str) -> Iterator[tuple[nn.Module, nn.Module]]:
        """(decoder, lm_head) of `role`, each role with its own weights and head.

        Use both inside the `with`: the reference without its own adapter is the base with the
        adapters disabled, which holds only there.
        """
        if role == "reference" and self.lora and not self.has_ref_adapter:
            self.use("actor")
            with self.model.disable_adapter():
                yield _decoder(self.model), _base(self.model).get_output_embeddings()
            return
        m = self.use(role)
        yield _decoder(m), _base(m).get_output_embeddings()

    def actor_module(self) -> nn.Module:
        return self.use("actor")


def _is_actor(name: str, lora: bool) -> bool:
    return not lora or (".default." in name)


def critic_settings(lora: LoraSpec, critic_lora: LoraSpec | None) -> LoraSpec:
    """The critic adapter's shape: the actor's (`lora` as it trains: a continued adapter's included) with the keys
    ppo.critic_lora sets over it. A key left out is the actor's, not LoRA's default: `critic_lora: {r: 4}` beside an
    actor on q_proj, v_proj put the critic on all-linear. alpha left out is the actor's (None: 2 × the critic's r)."""
    given = {k: getattr(critic_lora, k) for k in critic_lora.model_fields_set} if critic_lora is not None else {}
    return lora.model_copy(update={**given, "init_from": None})


def _refuse_unused_critic_keys(critic_lora: LoraSpec) -> None:
    """ppo.critic_lora keys the critic adapter never reads, refused instead of ignored. Compared with the defaults, not
    with the keys written: the config.yaml a run records holds every key (its dropout at the default 0.05, unused)."""
    default = LoraSpec()
    unused = [k for k in ("enabled", "init_from", "modules_to_save") if getattr(critic_lora, k) != getattr(default, k)]
    unused += ["dropout"] if critic_lora.dropout not in (0.0, default.dropout) else []
    if unused:
        keys = ", ".join(f"ppo.critic_lora.{k}={getattr(critic_lora, k)}" for k in unused)
        raise UserError(
            f"{keys} would do nothing: the critic is a LoRA adapter whenever lora.enabled is true, started from the "
            "reward model or zeros (ppo.critic_init), trained without dropout, with only its value head in full; "
            f"drop {', '.join(f'ppo.critic_lora.{k}' for k in unused)}"
        )


def _refuse_critic_shape(critic_lora: Any, rc: Any) -> None:
    """ppo.critic_lora keys set in the config that the reward model's adapter (the critic's start) contradicts."""
    if critic_lora is None:
        return
    for key, (want, have) in shape_conflicts(critic_lora, rc).items():
        if key in critic_lora.model_fields_set:
            raise UserError(
                f"ppo.critic_lora.{key}={want} but the critic starts from the reward model's adapter, which has "
                f"{have}; drop ppo.critic_lora.{key}, or set ppo.critic_init=zeros to train a critic of your shape"
            )


def _peft_of(model: Any) -> Any:
    return model if model is not None and hasattr(model, "peft_config") else None


def _base(model: Any) -> Any:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _decoder(model: Any) -> nn.Module:
    base = _base(model)
    return getattr(base, base.base_model_prefix)


def _plain_body(reward_model: Any) -> Any:
    """The reward model with its LoRA folded in, as a copy (the original keeps scoring)."""
    if _peft_of(reward_model) is not None:
        return copy.deepcopy(reward_model).merge_and_unload()
    return reward_model


def _score_head(reward_model: Any) -> nn.Linear:
    base = _base(reward_model)
    head = base.score
    saved = getattr(head, "modules_to_save", None)  # peft wraps heads it trains fully
    return saved["default"] if saved is not None and "default" in saved else head


def _other_base(reward_model: Any, base: Any) -> str | None:
    """How the reward model's base differs from the policy's (architecture or shape), or None."""
    keys = ("model_type", "hidden_size", "num_hidden_layers", "intermediate_size", "vocab_size")
    rc, pc = reward_model.config, base.config
    diff = [
        f"{k} {getattr(rc, k, None)} vs {getattr(pc, k, None)}"
        for k in keys
        if getattr(rc, k, None) != getattr(pc, k, None)
    ]
    return ", ".join(diff) or None


HEADS = ("score", "classifier")  # the sequence-classification heads peft adds to a reward model's modules_to_save


def _full_modules(rc: Any) -> list[str]:
    """The modules the reward model trained in full (lora.modules_to_save when it was trained), its score head apart:
    the critic has its own (the value head)."""
    return sorted(set(rc.modules_to_save or []) - set(HEADS))


def _is_head(module: str) -> bool:
    return module.rsplit(".", 1)[-1] in HEADS


def _copy_lora(rm: Any, policy: Any) -> None:
    """Reward model LoRA weights and fully trained modules (decoder part) → the policy model's `critic` adapter."""
    src = {
        n.replace(".default.", ".critic."): p
        for n, p in rm.named_parameters()
        if "lora_" in n or (".modules_to_save.default." in n and not _is_head(n.split(".modules_to_save.")[0]))
    }
    dst = dict(policy.named_parameters())
    copied = 0
    for n, p in src.items():
        key = n.split(".model.", 1)[-1]  # drop the task-specific wrapper prefix
        match = [d for d in dst if d.endswith(key) and ".critic." in d]
        if len(match) == 1 and dst[match[0]].shape == p.shape:
            dst[match[0]].data.copy_(p.data)
            copied += 1
        elif ".modules_to_save." in n:  # else the critic would run the base's copy of a module the RM trained
            raise UserError(
                f"ppo.critic_init: reward: the reward model trained {n.split('.modules_to_save.')[0]} in full "
                "(lora.modules_to_save) and the critic has no such module to take it; set ppo.critic_init=zeros"
            )
    if copied == 0:
        raise UserError("ppo.critic_init: reward: no LoRA weight of the reward model matches the policy base")
