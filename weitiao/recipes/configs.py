"""Each recipe's config file, as pydantic models: what `weitiao sft|dpo|kto|rm|ppo CONFIG.yaml` reads.

Kept free of torch (the sections come from `weitiao.models.spec`, `weitiao.train.spec` and
`weitiao.recipes.rewards`), so a missing file or a bad key is refused before a recipe imports torch,
transformers and peft. Each recipe module re-exports its own classes.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_serializer, field_validator, model_validator

from weitiao.config import ConfigPath, ModelRef
from weitiao.models.spec import LoraSpec, ModelSpec
from weitiao.recipes.rewards import RewardSpec
from weitiao.train.spec import (
    DataFilesSpec,
    FeedbackDataSpec,
    PairRecipeConfig,
    PairTrainSpec,
    RunSpec,
    TemplateName,
    TrainSpec,
    lr_field,
)

# ----------------------------------------------------------------------------- sft


class DataSpec(DataFilesSpec):
    """Training data and how it becomes tokens."""

    format: Literal["auto", "alpaca", "sharegpt", "openai", "firefly", "prompt_completion", "text"] = Field(
        "auto", description="row format; auto detects it per file"
    )
    max_len: int = Field(1024, gt=8, description="tokens per row")
    truncation: Literal["drop", "cut", "history"] = Field(
        "drop", description="over max_len: drop the row, cut its tail (counts rows losing end-of-turn), drop history"
    )
    train_on_prompt: bool = Field(
        False, description="loss on prompt tokens too; eval_loss follows, eval_loss_answer stays reply-only"
    )
    train_turns: Literal["all", "last"] = Field("all", description="assistant turns trained: all or the last")
    train_eot: bool = Field(True, description="false = never learn to stop (chapter Q147 experiment only)")
    packing: bool = Field(True, description="several rows per micro-batch row (first-fit); attention kept apart")


class SFTConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: ModelSpec = Field(default_factory=ModelSpec)
    lora: LoraSpec = Field(default_factory=LoraSpec)
    data: DataSpec
    train: TrainSpec = Field(default_factory=TrainSpec)


# ----------------------------------------------------------------------------- dpo


class DPOSpec(BaseModel):
    """The DPO objective."""

    model_config = ConfigDict(extra="forbid")

    beta: float = Field(0.1, gt=0, description="strength of the pull toward the reference")
    loss_type: Literal["sigmoid", "ipo", "hinge"] = Field("sigmoid", description="sigmoid (DPO), ipo or hinge")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="conservative DPO ε (sigmoid only)")
    rpo_alpha: float = Field(0.0, ge=0, description="weight of the NLL term on chosen replies (RPO)")
    precompute_ref: bool = Field(False, description="reference log-probs in one pass, cached to disk")
    reference: ModelRef | None = Field(None, description="reference model dir; default: base without adapter")
    warn_falling_chosen: int = Field(20, description="warn after this many steps of falling chosen log-probs")
    kl_max_new_tokens: int = Field(
        32, ge=0, description="reply tokens sampled per eval prompt for the on-policy KL; 0 = off"
    )

    @model_validator(mode="after")
    def _smoothing_needs_sigmoid(self) -> DPOSpec:
        if self.label_smoothing and self.loss_type != "sigmoid":
            raise ValueError(
                f"dpo.label_smoothing={self.label_smoothing} is only used by loss_type sigmoid, "
                f"not {self.loss_type}; set it to 0"
            )
        return self


class DPOTrainSpec(PairTrainSpec):
    LR = (5e-5, 5e-7)
    lr: float | None = lr_field(*LR)
    out: ConfigPath = Field("runs/dpo", description="run folder: checkpoints, final/, metrics.jsonl")


class DPOConfig(PairRecipeConfig):
    dpo: DPOSpec = Field(default_factory=DPOSpec)
    train: DPOTrainSpec = Field(default_factory=DPOTrainSpec)


# ----------------------------------------------------------------------------- kto


class KTOSpec(BaseModel):
    """The KTO objective."""

    model_config = ConfigDict(extra="forbid")

    beta: float = Field(0.1, gt=0, description="strength of the pull toward the reference")
    desirable_weight: float = Field(1.0, gt=0, description="λ_D: weight of a desirable reply's loss")
    undesirable_weight: float = Field(1.0, gt=0, description="λ_U: weight of an undesirable reply's loss")
    reference: ModelRef | None = Field(None, description="reference model dir; default: base without adapter")


class KTOTrainSpec(PairTrainSpec):
    LR = (5e-5, 5e-7)
    lr: float | None = lr_field(*LR)
    out: ConfigPath = Field("runs/kto", description="run folder: checkpoints, final/, metrics.jsonl")


class KTOConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: ModelSpec = Field(default_factory=ModelSpec)
    lora: LoraSpec = Field(default_factory=LoraSpec)
    data: FeedbackDataSpec
    kto: KTOSpec = Field(default_factory=KTOSpec)
    train: KTOTrainSpec = Field(default_factory=KTOTrainSpec)

    @model_validator(mode="after")
    def _kl_needs_two_rows(self) -> KTOConfig:
        if self.train.micro_batch_size == 1 and not self.data.packing:  # TRL refuses a batch of 1 too
            raise ValueError(
                "train.micro_batch_size 1 without data.packing puts one row in a micro-batch, whose KL reference "
                "point is then its own reward; set train.micro_batch_size ≥ 2 (e.g. 8)"
            )
        return self


# ----------------------------------------------------------------------------- rm


class RMSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    margin: float = Field(0.0, description="required reward gap m in −log σ(r_c − r_r − m)")
    center_coef: float = Field(0.0, ge=0, description="λ of the (r_c + r_r)² centring term")


class RMTrainSpec(PairTrainSpec):
    LR = (1e-4, 1e-5)
    lr: float | None = lr_field(*LR)
    out: ConfigPath = Field("runs/rm", description="run folder: checkpoints, final/, metrics.jsonl")


class RMConfig(PairRecipeConfig):
    rm: RMSpec = Field(default_factory=RMSpec)
    train: RMTrainSpec = Field(default_factory=RMTrainSpec)


# ----------------------------------------------------------------------------- ppo


class PPOSpec(BaseModel):
    """PPO hyper-parameters (OpenRLHF names where they exist)."""

    model_config = ConfigDict(extra="forbid")

    init_kl_coef: float = Field(0.05, ge=0, description="β of the per-token KL penalty")
    kl_target: float | None = Field(None, gt=0, description="adaptive β: target KL per sequence (None = fixed β)")
    kl_horizon: int = Field(10000, gt=0, description="adaptive β: horizon in samples")
    kl_estimator: Literal["k1", "k3"] = Field("k1", description="k1 = log π − log π_ref; k3 = r − 1 − log r")
    gamma: float = Field(1.0, ge=0, le=1, description="GAE discount γ")
    lambd: float = Field(0.95, ge=0, le=1, description="GAE λ")
    eps_clip: float = Field(0.2, gt=0, description="ε of the clipped policy ratio")
    value_clip: float | None = Field(0.2, gt=0, description="ε_v of the clipped value loss; None = unclipped")
    vf_coef: float = Field(0.5, ge=0, description="weight of the value loss (critic shared: in the joint loss)")
    entropy_loss_coef: float = Field(0.0, ge=0, description="weight of the entropy bonus")
    rollout_batch_size: int = Field(16, gt=0, description="prompts per step (per process)")
    n_samples_per_prompt: int = Field(1, gt=0, description="replies sampled per prompt")
    train_batch_size: int = Field(8, gt=0, description="samples per PPO minibatch (per process; one optimizer step)")
    micro_train_batch_size: int = Field(4, gt=0, description="samples per forward/backward in an update")
    micro_rollout_batch_size: int = Field(8, gt=0, description="samples per no-grad scoring forward")
    max_epochs: int = Field(2, gt=0, description="PPO epochs over each rollout batch")
    actor_learning_rate: float = Field(1e-4, gt=0, description="AdamW learning rate of the actor")
    critic_learning_rate: float = Field(1e-4, gt=0, description="AdamW learning rate of the critic (critic: separate)")
    max_norm: float = Field(1.0, gt=0, description="gradient clipping: actor and critic separately, or shared: jointly")
    prompt_max_len: int = Field(256, gt=0, description="longer prompts (in tokens) are dropped")
    generate_max_len: int = Field(64, gt=0, description="reply tokens sampled at most")
    temperature: float = Field(1.0, gt=0, description="rollout sampling temperature (log-probs use the same)")
    top_p: float = Field(1.0, description="only 1.0: log-probs score the full softmax(logits / temperature)")
    missing_eos_penalty: float | None = Field(1.0, ge=0, description="subtracted from the score of replies with no EOS")
    normalize_reward: bool = Field(False, description="divide scores by their running std (and subtract mean)")
    reward_clip_range: float | None = Field(None, gt=0, description="clip scores to ±this after normalization")
    whiten_advantages: bool = Field(True, description="advantages to mean 0, std 1 per batch")
    critic: Literal["separate", "shared"] = Field(
        "separate",
        description="separate: the critic is its own LoRA adapter (or full copy) + value head with its own optimizer; "
        "shared: a value head on the actor's last hidden states, one forward + backward of policy + vf_coef · value "
        "loss, one optimizer at actor_learning_rate (TRL v0's AutoModelForCausalLMWithValueHead, LLaMA-Factory): "
        "half the update's trunk passes, value gradients reach the actor; critic_learning_rate, critic_lora and "
        "critic_init are then not used (refused when set)",
    )
    critic_init: Literal["auto", "reward", "zeros"] = Field("auto", description="auto: reward if reward.kind=model")
    critic_lora: LoraSpec | None = Field(
        None, description="critic adapter: the keys set here over the actor's settings (a key left out: the actor's)"
    )
    old_logprobs: Literal["recompute", "rollout"] = Field(
        "recompute",
        description="π_old's log-probs: recompute = a no-grad forward after sampling; rollout = the sampler's own "
        "(no extra forward; a KV-cached decode rounds differently, ~1e-6 in float32, so float32 models only; "
        "the KL to the reference then carries that rounding, not exactly 0 at step 1)",
    )
    merge_rollout: bool = Field(
        False,
        description="sample with the actor's LoRA folded into the base weights: faster decoding, same samples, "
        "the base restored bit for bit after, but a copy of the adapted base weights is held meanwhile; "
        "LoRA on an unquantized base only (else refused)",
    )

    @field_validator("top_p")
    @classmethod
    def _full_softmax(cls, v: float) -> float:
        if v != 1.0:  # nucleus sampling would draw from a distribution the log-probs do not score (off-policy)
            raise ValueError("only 1.0 is supported: PPO's log-probs score the full softmax(logits / temperature)")
        return v

    @model_validator(mode="after")
    def _adaptive_needs_beta(self) -> PPOSpec:
        if self.kl_target is not None and self.init_kl_coef == 0:  # β·(1 + e) stays 0: the target would do nothing
            raise ValueError(
                f"ppo.kl_target={self.kl_target} scales β from ppo.init_kl_coef, which is 0 so stays 0; "
                "set init_kl_coef > 0 (e.g. 0.05) or remove kl_target"
            )
        return self

    @field_serializer("critic_lora")
    def _keys_set(self, critic: LoraSpec | None) -> dict | None:
        """The critic keys the config set, alone: the rest are the actor's, so the run's config.yaml trains the same
        critic again (all of LoraSpec's defaults in it would read as set, where the actor's values trained)."""
        return None if critic is None else critic.model_dump(mode="json", exclude_unset=True)

    @model_validator(mode="after")
    def _shared_critic_has_no_own_settings(self) -> PPOSpec:
        # compared with the defaults, not with the keys written: a run's config.yaml records every key
        unused = {k: getattr(self, k) for k in ("critic_learning_rate", "critic_init", "critic_lora")}
        unused = {k: v for k, v in unused.items() if v != type(self).model_fields[k].default}
        if self.critic == "shared" and unused:
            keys = ", ".join(f"ppo.{k}" for k in unused)
            raise ValueError(
                f"{keys} would do nothing with ppo.critic: shared (the value head sits on the actor, trained with it "
                f"by one optimizer at ppo.actor_learning_rate); drop {keys} or set ppo.critic: separate"
            )
        return self

    @model_validator(mode="after")
    def _micro_within_minibatch(self) -> PPOSpec:
        if self.micro_train_batch_size > self.train_batch_size:  # a minibatch never holds more: capped, unsaid
            raise ValueError(
                f"ppo.micro_train_batch_size={self.micro_train_batch_size} is more than ppo.train_batch_size="
                f"{self.train_batch_size} (samples per minibatch, one optimizer step); make it at most that"
            )
        return self


class PromptSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompts: list[ConfigPath] = Field(
        ..., description="files of prompts: {prompt}, {messages} ending with user, SFT rows"
    )
    template: TemplateName = Field("auto", description="chat template; auto = the tokenizer's own, else plain")


class PPOTrainSpec(RunSpec):
    out: ConfigPath = Field("runs/ppo", description="run folder: checkpoints, final/, metrics.jsonl")
    max_steps: int | None = Field(None, gt=0, description="stop after this many rollout steps")
    keep_last: int = Field(2, gt=0, description="checkpoints kept; at least 1")
    num_episodes: int = Field(1, gt=0, description="passes over the prompts")
    disable_dropout: bool = Field(True, description="dropout p=0 everywhere (else updates run with dropout: π ≠ π_old)")
    sample_every: int = Field(5, ge=0, description="log a few generations every N steps; 0 = never")
    hacking_window: int = Field(5, gt=1, description="steps compared by the reward-hacking check")
    hacking_kl: float = Field(20.0, gt=0, description="warn when score rises while KL per sequence exceeds this")
    hacking_length_ratio: float = Field(1.5, gt=1, description="... or mean length grows by this factor")


class PPOConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: ModelSpec = Field(default_factory=ModelSpec)
    lora: LoraSpec = Field(default_factory=LoraSpec)
    reward: RewardSpec
    data: PromptSpec
    ppo: PPOSpec = Field(default_factory=PPOSpec)
    train: PPOTrainSpec = Field(default_factory=PPOTrainSpec)

    @model_validator(mode="after")
    def _merge_needs_lora_on_plain_base(self) -> PPOConfig:
        # it sampled unmerged, unsaid: a quantized base cannot take the adapter exactly, a full actor has none
        why = f"the base is quantized (model.quant={self.model.quant})" if self.model.quant != "none" else None
        why = why or (None if self.lora.enabled else "the actor is trained in full (lora.enabled: false): no adapter")
        if self.ppo.merge_rollout and why:
            raise ValueError(f"ppo.merge_rollout folds the actor's LoRA into an unquantized base, but {why}; remove "
                             "ppo.merge_rollout (sampling is unmerged)")  # fmt: skip
        return self
