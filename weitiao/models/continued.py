"""Continuing a saved adapter (`lora.init_from`), in every recipe: it must go on the base and the chat template it
was trained with, or the run trains (and saves) a model on weights or a text format the adapter never saw.

The base is compared by `digest.weights_digest` (tensor names, shapes and first rows), which the run recorded in
its `inputs.json` (`BASE_KEY`, LoRA runs) or, for a reward model, its `reward_model.json`: the same for the same
weights however stored, another for any other base of the same shapes. The template is compared by rendering one
probe chat with both. Both checks run before anything is written in `train.out`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from weitiao.config import EXPORT_MARKER, INPUTS_FILE
from weitiao.errors import UserError
from weitiao.models.load import adapter_base, locate, recorded_run, training_tokenizer
from weitiao.models.spec import LoraSpec

BASE_KEY = "model.path weights"  # inputs.json: weights_digest of model.path, recorded by LoRA runs


def check_continued(model_path: str, lora: LoraSpec, name: str, tokenizer: Any, template: Any) -> None:
    """With lora.init_from: `refuse_other_base`, then `refuse_other_template` unless `template` is None (raw-text
    rows, which no template renders). `name` is data.template as set; `template` what it resolved to."""
    if not (lora.enabled and lora.init_from):
        return
    refuse_other_base(model_path, lora.init_from)
    if template is not None:
        refuse_other_template(lora, name, tokenizer, template)


def recorded_inputs(adapter_dir: Path) -> tuple[Path | None, dict]:
    """The inputs.json of the run an adapter dir sits in (a checkpoint's copy, else its run's), or an adapter
    export's own copy of its run's, and its contents; (None, {}) for a bare peft adapter or a run from before
    inputs.json."""
    cfg_file, _ = recorded_run(adapter_dir)
    # an adapter export's own copy (`weitiao export` writes it beside its marker): a server may be given no run
    dirs = [Path(adapter_dir)] if (Path(adapter_dir) / EXPORT_MARKER).is_file() else []
    if cfg_file is not None:
        dirs.append(cfg_file.parent)
        if cfg_file.parent.parent.name == "checkpoints":
            dirs.append(cfg_file.parent.parent.parent)
    file = next((d / INPUTS_FILE for d in dirs if (d / INPUTS_FILE).is_file()), None)
    data = json.loads(file.read_text(encoding="utf-8")) if file else {}
    return file, data if isinstance(data, dict) else {}


def trained_base_digest(adapter_dir: Path) -> tuple[str | None, Path | None]:
    """(weights digest of the base an adapter was trained on, the file recording it), or (None, None): its run's
    inputs.json, else a reward model's reward_model.json (`base_weights`, recorded since reward models had one)."""
    from weitiao.models.reward_dir import META_FILE

    file, inputs = recorded_inputs(adapter_dir)
    if isinstance(inputs.get(BASE_KEY), str):
        return inputs[BASE_KEY], file
    meta = adapter_dir.parent / META_FILE
    base = json.loads(meta.read_text(encoding="utf-8")).get("base_weights") if meta.is_file() else None
    return (base, meta) if isinstance(base, str) else (None, None)


def refuse_other_base(model_path: str, init_from: str) -> None:
    """The adapter at `init_from` continued on model.path whose weights are not the base it was trained on (same
    shapes, so peft loads it without a word): refused in one line. No record (a bare peft adapter, a run from before
    the record): a note, once. A warning would not do here as it does in chat and export: a whole run trains on."""
    from weitiao.models.digest import model_digest

    try:
        adapter_dir = locate(init_from)[0]
    except UserError as e:
        raise UserError(f"lora.init_from: {e}".replace("--adapter ", "")) from None
    trained, where = trained_base_digest(adapter_dir)
    now = model_digest(model_path) if trained else None
    if trained and now and trained != now:
        raise UserError(
            f"lora.init_from: the adapter at {adapter_dir} was trained on other base weights than model.path "
            f"{model_path} holds (digest {trained} in {where}, {now} here): it would train on a base it never saw; set "
            f"model.path to the base it trained on ({adapter_base(adapter_dir)[0]}), or drop lora.init_from to train "
            "a new adapter on this base"
        )
    if os.environ.get("RANK", "0") != "0" or (trained and now):
        return
    why = (
        f"model.path {model_path} has no local safetensors weights to compare"
        if trained
        else f"{adapter_dir} records no digest of its base (a bare peft adapter, or trained before weitiao had one)"
    )
    print(f"note: lora.init_from: {why}: it is taken to be trained on model.path, unchecked")


def refuse_other_template(lora: LoraSpec, name: str, tokenizer: Any, template: Any) -> None:
    """With lora.init_from and data.template auto: refused when the template auto picked renders a conversation
    otherwise than the one the continued adapter was trained with (its run's tokenizer, else its config.yaml's
    data.template); auto took the base's own or plain, and the continued model ran on a format it never saw. A
    data.template set explicitly is taken as meant: the adapter's own, or the new one knowingly."""
    if not (lora.enabled and lora.init_from) or name != "auto":
        return
    from weitiao.data.templates import TEMPLATE_NAMES, resolve_template

    adapter_dir, tok_dir, _ = locate(lora.init_from)
    trained_tok = training_tokenizer(adapter_dir, tok_dir, tokenizer.name_or_path)
    trained = resolve_template(trained_tok, "auto")
    probe = [
        {"role": "user", "content": "问"},
        {"role": "assistant", "content": "答"},
        {"role": "user", "content": "再问"},
    ]
    ours = template.render(tokenizer, probe, add_generation_prompt=True)
    if ours == trained.render(trained_tok, probe, add_generation_prompt=True):
        return
    data = recorded_run(adapter_dir)[1].get("data")
    was = data.get("template") if isinstance(data, dict) else None
    fix = (
        f"set data.template={was}"
        if was in TEMPLATE_NAMES and was not in ("auto", "tokenizer")
        else f"set data.template to the one it was trained with (its tokenizer: {tok_dir})"
        if tok_dir is not None
        else "set data.template to the one it was trained with"
    )
    raise UserError(
        f"data.template: auto renders chats with {template.name} here, but the adapter at lora.init_from "
        f"({adapter_dir}) was trained on another rendering ({was or trained.name}); {fix}, or "
        f"data.template={template.name} to train it on {template.name} knowingly"
    )
