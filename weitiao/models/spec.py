"""`model:` and `lora:` of every recipe's config: which model to load and how, and the adapter's settings.

Kept free of torch so a config file is checked before a recipe imports its loaders (`weitiao.models.load`,
which takes these), and so is `resolve_path`: a model that is not there is said before torch loads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from weitiao.config import ModelRef
from weitiao.data.files import confined_tree
from weitiao.errors import UserError


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


def resolve_path(path: str) -> str:
    """'demo' → the shipped model; a file or folder stays; anything else is a hub id, checked at once.

    A hub id that is not in the local HF cache fails here in at most ~2 s when offline (HF_HUB_OFFLINE
    or the hub unreachable) instead of after transformers' retries; online it is left to download.
    """
    if path == "demo":
        from weitiao.demo import MODEL_DIR

        return str(MODEL_DIR)
    if not Path(path).expanduser().exists():
        _check_hub_id(path)
    else:  # the console's runs: inside its folders (a hub id reads the HF cache, not a path the browser gave)
        confined_tree(Path(path).expanduser())
    return path


def _check_hub_id(name: str) -> None:
    from huggingface_hub import constants, try_to_load_from_cache

    try:
        hits = [try_to_load_from_cache(name, f) for f in ("config.json", "tokenizer_config.json")]
    except ValueError:  # HFValidationError: not shaped like owner/name
        raise UserError(f"{name}: no such model folder (and not a Hugging Face hub id)") from None
    if any(isinstance(h, str) for h in hits):
        return
    reason = "offline" if constants.HF_HUB_OFFLINE else _unreachable(constants.ENDPOINT)
    if reason:
        raise UserError(
            f"{name}: not a folder and not in the Hugging Face cache ({reason}); "
            f"download it with `huggingface-cli download {name}` or give a folder"
        )


def _unreachable(endpoint: str, timeout: float = 2.0) -> str | None:
    """None when the hub endpoint answers HTTP within `timeout` seconds, else why not."""
    import threading
    import urllib.error
    import urllib.request
    from urllib.parse import urlparse

    ok: list[bool] = []

    def ask() -> None:  # in a thread: a stuck DNS lookup ignores socket timeouts
        try:
            urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout).close()
            ok.append(True)
        except urllib.error.HTTPError:
            ok.append(True)  # it answered
        except (OSError, ValueError):
            pass

    t = threading.Thread(target=ask, daemon=True)
    t.start()
    t.join(timeout)
    return None if ok else f"offline: cannot reach {urlparse(endpoint).hostname}"
