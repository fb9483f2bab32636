"""`model:` and `lora:` of every recipe's config: which model to load and how, and the adapter's settings.

Kept free of torch so a config file is checked before a recipe imports its loaders (`weitiao.models.load`,
which takes these).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from weitiao.config import ModelRef


class ModelSpec(BaseModel):
    """Which model to load and how."""

    model_config = ConfigDict(extra="forbid")

    path: ModelRef = Field("demo", description="HF model dir or hub id (offline cache); 'demo' = shipped tiny model")
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = Field("auto", description="auto: bf16 on GPU, fp32 on CPU")
    quant: Literal["none", "4bit", "8bit"] = Field("none", description="4bit = NF4 + double quantization")
    quant_storage: Literal["uint8", "bf16"] = Field("uint8", description="bf16 lets FSDP shard 4-bit weights")
    attn: Literal["sdpa", "eager", "flash_attention_2", "flex_attention"] = Field(
        "sdpa", description="attention kernel (a model without sdpa, as Gemma-2, loads eager under sdpa: said at load)"
    )
    gradient_checkpointing: bool = Field(False, description="recompute activations in backward: less memory, slower")
    trust_remote_code: bool = Field(False, description="run the model repo's own Python code (repos you trust only)")

    @model_validator(mode="after")
    def _storage_needs_4bit(self) -> ModelSpec:
        if self.quant_storage != "uint8" and self.quant != "4bit":  # only the 4-bit weights are stored in it
            raise ValueError(
                f"quant_storage {self.quant_storage} applies to 4-bit weights only and quant is {self.quant}: "
                "set quant 4bit, or drop quant_storage"
            )
        return self


class LoraSpec(BaseModel):
    """LoRA adapter settings (chapter Q148 defaults: r=16, alpha=2r)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="false = full fine-tuning (every weight trains)")
    r: int = Field(16, gt=0, description="adapter rank")
    alpha: float | None = Field(None, gt=0, description="default 2*r")
    dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the adapter's input")
    targets: str | list[str] = Field(
        "all-linear", description="'all-linear', a list of module names, or one regex over full module names"
    )
    dora: bool = Field(False, description="DoRA: weight-decomposed LoRA (magnitude + direction)")
    rslora: bool = Field(False, description="rsLoRA scaling alpha/sqrt(r) instead of alpha/r")
    modules_to_save: list[str] | None = Field(None, description="modules trained in full and saved with the adapter")
    init_from: ModelRef | None = Field(
        None, description="continue training this adapter (run dir or peft dir) instead of a fresh one"
    )

    @model_validator(mode="after")
    def _keys_need_lora(self) -> LoraSpec:
        """Keys that would do nothing under full fine-tuning are refused. Compared with the defaults, not with the
        keys written: the config.yaml a full fine-tuning run records holds every key at its default."""
        if self.enabled:
            return self
        keys = [k for k, f in LoraSpec.model_fields.items() if k != "enabled" and getattr(self, k) != f.default]
        if not keys:
            return self
        merge = " (to fine-tune that adapter fully, merge it with `weitiao export --merge` and set model.path)"
        raise ValueError(
            f"{', '.join(f'{k}={getattr(self, k)}' for k in keys)} would do nothing: enabled is false (full "
            f"fine-tuning, no adapter); set enabled: true to train a LoRA adapter, or drop {', '.join(keys)}"
            + (merge if "init_from" in keys else "")
        )
