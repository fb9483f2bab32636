"""`weitiao export`: a trained adapter → a clean peft adapter dir, or a merged plain HF model.

Merging folds W + (alpha/r)·B·A (peft's merge, so DoRA/rsLoRA scaling is right) into weights
that are first de-quantized from NF4 when the base was trained in 4 bit: the adapter learned to
correct the de-quantized weights, so merging into the original full-precision weights would give a
different model. The tokenizer gets the chat template used in training. `--check FILE` re-encodes
training rows through the exported tokenizer's own template and compares token ids.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
import yaml

from weitiao.data.chat import EncodeOptions, encode
from weitiao.data.formats import load_conversations
from weitiao.data.templates import resolve_template
from weitiao.errors import UserError
from weitiao.models.load import ModelSpec, load_model, load_tokenizer


def locate(adapter: str | Path) -> tuple[Path, Path | None, ModelSpec]:
    """(adapter dir, training tokenizer dir or None, base model spec) from a run dir or adapter dir."""
    p = Path(adapter)
    for cand in (p / "final" / "adapter", p / "adapter", p):
        if (cand / "adapter_config.json").exists():
            adapter_dir = cand
            break
    else:
        raise UserError(f"--adapter {adapter}: no adapter_config.json (give a run dir or a peft adapter dir)")
    tok_dir = adapter_dir.parent / "tokenizer"
    run_cfg = next((d / "config.yaml" for d in adapter_dir.parents if (d / "config.yaml").exists()), None)
    base = json.loads((adapter_dir / "adapter_config.json").read_text())["base_model_name_or_path"]
    spec = ModelSpec(path=base)
    if run_cfg is not None:
        spec = ModelSpec.model_validate(yaml.safe_load(run_cfg.read_text())["model"])
    return adapter_dir, tok_dir if tok_dir.exists() else None, spec


def dequantized_base(spec: ModelSpec) -> Any:
    """The base as a plain fp32 model whose weights equal what training saw (NF4 de-quantized)."""
    plain = load_model(spec.model_copy(update={"quant": "none", "dtype": "fp32"}))
    if spec.quant == "none":
        return plain
    if spec.quant != "4bit":
        raise UserError(
            f"export --merge: base quant {spec.quant!r} is not supported; merge from a 4bit or unquantized base"
        )
    import bitsandbytes as bnb

    quant = load_model(spec.model_copy(update={"dtype": "fp32"}))
    modules = dict(plain.named_modules())
    with torch.no_grad():
        for name, m in quant.named_modules():
            if not isinstance(m, bnb.nn.Linear4bit):
                continue
            w = bnb.functional.dequantize_4bit(m.weight.data, m.weight.quant_state)
            modules[name].weight.copy_(w.reshape(modules[name].weight.shape).float())
    return plain


def export(adapter: str, out: str, merge: bool = False, dtype: str = "fp32") -> Path:
    """Write the export to `out` (atomically: built in a temp dir, then renamed)."""
    from peft import PeftModel

    adapter_dir, tok_dir, spec = locate(adapter)
    dest = Path(out)
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = load_tokenizer(str(tok_dir) if tok_dir else spec.path)
    if merge:
        model = PeftModel.from_pretrained(dequantized_base(spec), adapter_dir).merge_and_unload()
        model = model.to({"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype])
        model.config.use_cache = True
        model.save_pretrained(tmp, safe_serialization=True)
    else:
        shutil.copytree(adapter_dir, tmp)
    tokenizer.save_pretrained(tmp)
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    return dest


def check(export_dir: str, adapter: str, data: str, max_rows: int = 200) -> dict[str, int]:
    """Token ids of training rows: training tokenizer+template vs the exported tokenizer's own template."""
    adapter_dir, tok_dir, spec = locate(adapter)
    train_tok = load_tokenizer(str(tok_dir) if tok_dir else spec.path)
    train_tpl = resolve_template(train_tok, "tokenizer" if train_tok.chat_template else "auto")
    exp_tok = load_tokenizer(export_dir)
    exp_tpl = resolve_template(exp_tok, "tokenizer")
    rows = load_conversations(data).rows[:max_rows]
    opts = EncodeOptions(max_len=10**9)
    bad = [
        c.source
        for c in rows
        if encode(c, train_tok, train_tpl, opts).input_ids != encode(c, exp_tok, exp_tpl, opts).input_ids
    ]
    if bad:
        raise UserError(f"export check: {len(bad)}/{len(rows)} rows tokenize differently, first {bad[0]}")
    return {"rows": len(rows), "identical": len(rows)}
