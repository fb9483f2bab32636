"""Load an HF causal LM and tokenizer: precision, 4/8-bit through bitsandbytes, LoRA through peft.

QLoRA is LoRA on a 4-bit NF4 base with double quantization: the same code on CPU and GPU.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from weitiao.errors import UserError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


class ModelSpec(BaseModel):
    """Which model to load and how."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field("demo", description="HF model dir or hub id (offline cache); 'demo' = shipped tiny model")
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = Field("auto", description="auto: bf16 on GPU, fp32 on CPU")
    quant: Literal["none", "4bit", "8bit"] = Field("none", description="4bit = NF4 + double quantization")
    quant_storage: Literal["uint8", "bf16"] = Field("uint8", description="bf16 lets FSDP shard 4-bit weights")
    attn: Literal["sdpa", "eager", "flash_attention_2", "flex_attention"] = "sdpa"
    gradient_checkpointing: bool = False
    trust_remote_code: bool = False


class LoraSpec(BaseModel):
    """LoRA adapter settings (chapter Q148 defaults: r=16, alpha=2r)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    r: int = Field(16, gt=0)
    alpha: float | None = Field(None, description="default 2*r")
    dropout: float = Field(0.05, ge=0, lt=1)
    targets: str | list[str] = Field("all-linear", description="'all-linear' or module names")
    dora: bool = False
    rslora: bool = False
    modules_to_save: list[str] | None = None
    init_from: str | None = Field(
        None, description="continue training this adapter (run dir or peft dir) instead of a fresh one"
    )


def resolve_path(path: str) -> str:
    """'demo' → the shipped model; a directory stays; anything else is a hub id for the local cache."""
    if path == "demo":
        from weitiao.demo import MODEL_DIR

        return str(MODEL_DIR)
    return path


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda_bf16 else torch.float32
    return DTYPES[name]


def load_tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    path = resolve_path(path)
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except OSError as e:
        raise UserError(
            f"model {path!r}: cannot load tokenizer (not a dir or not in the local HF cache): {e}"
        ) from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(spec: ModelSpec, device: torch.device | None = None, head: str = "lm") -> Any:
    """The base model, quantized if asked: causal LM (head="lm") or one-score classifier (head="score")."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, BitsAndBytesConfig

    device = device or torch.device("cpu")
    dtype = pick_dtype(spec.dtype, device)
    kwargs: dict[str, Any] = {"dtype": dtype, "attn_implementation": spec.attn}
    if spec.quant == "4bit":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
            bnb_4bit_quant_storage=torch.bfloat16 if spec.quant_storage == "bf16" else torch.uint8,
        )
    elif spec.quant == "8bit":
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
    if spec.quant != "none" and device.type != "cpu":
        kwargs["device_map"] = {"": device}
    path = resolve_path(spec.path)
    auto = AutoModelForCausalLM
    if head == "score":
        auto, kwargs["num_labels"] = AutoModelForSequenceClassification, 1
    try:
        model = auto.from_pretrained(path, trust_remote_code=spec.trust_remote_code, **kwargs)
    except OSError as e:
        raise UserError(f"model {path!r}: cannot load (not a dir or not in the local HF cache): {e}") from None
    if spec.quant == "none":
        model.to(device)
    model.config.use_cache = False
    return model


def add_lora(model: Any, spec: LoraSpec, gradient_checkpointing: bool = False, task_type: str = "CAUSAL_LM") -> Any:
    """Freeze the base and attach a peft LoRA (or DoRA/rsLoRA) adapter."""
    from peft import LoraConfig, get_peft_model

    for p in model.parameters():
        p.requires_grad_(False)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    config = LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha if spec.alpha is not None else 2 * spec.r,
        lora_dropout=spec.dropout,
        target_modules=spec.targets,
        use_dora=spec.dora,
        use_rslora=spec.rslora,
        modules_to_save=spec.modules_to_save,
        task_type=task_type,
    )
    try:
        return get_peft_model(model, config)
    except ValueError as e:
        raise UserError(f"lora.targets: {e}") from None


def load_lora(model: Any, adapter: str, gradient_checkpointing: bool = False) -> Any:
    """Freeze the base and attach a saved adapter, trainable (r, alpha, targets come from the adapter)."""
    from peft import PeftModel

    from weitiao.infer.export import locate

    try:
        adapter_dir, _, _ = locate(adapter)
    except UserError as e:
        raise UserError(f"lora.init_from: {e}".replace("--adapter ", "")) from None
    for p in model.parameters():
        p.requires_grad_(False)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return PeftModel.from_pretrained(model, adapter_dir, is_trainable=True)


def count_params(model: Any) -> tuple[int, int]:
    """(trainable, total) parameter counts; 4-bit weights count their real element number."""
    trainable = total = 0
    for p in model.parameters():
        n = p.numel() * (2 if p.dtype == torch.uint8 and hasattr(p, "quant_state") else 1)
        total += n
        trainable += n if p.requires_grad else 0
    return trainable, total


def build_trainable(model: ModelSpec, lora: LoraSpec, device: torch.device, head: str = "lm") -> Any:
    """Load the base and make it trainable: LoRA adapter on a frozen (maybe quantized) base, or full.

    With head="score" the new score head is trained fully (peft modules_to_save) beside the adapter.
    """
    base = load_model(model, device, head)
    if lora.enabled and lora.init_from:
        return load_lora(base, lora.init_from, model.gradient_checkpointing)
    if lora.enabled:
        return add_lora(base, lora, model.gradient_checkpointing, "SEQ_CLS" if head == "score" else "CAUSAL_LM")
    if model.quant != "none":
        raise UserError("model.quant: quantized weights cannot be fully fine-tuned; set lora.enabled: true")
    if model.gradient_checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return base


def disable_dropout(model: torch.nn.Module) -> int:
    """Set p=0 on every dropout layer (LoRA's included); returns how many were changed.

    Preference and RL updates compare the policy with a reference that runs without dropout; with
    dropout on, step 0 is not π = π_ref (TRL's `disable_dropout` does the same).
    """
    n = 0
    for m in model.modules():
        if isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0:
            m.p = 0.0
            n += 1
    return n
