"""Model, adapter and tokenizer folders that other tools read as weitiao trained them.

Plain transformers, vLLM and llama.cpp's converter (which pins transformers 4.57) see only files:
- generation_config.json: its `eos_token_id` is the base's EOS, so a base model tuned on a template
  that ends turns with another token (Qwen2.5 base + ChatML: `<|im_end|>` vs `<|endoftext|>`)
  never stops there. We list the template's end-of-turn id first, then the base's EOS ids.
- the chat template: transformers 5 keeps it in chat_template.jinja only, older readers look in
  tokenizer_config.json, so it goes in both. A template that needs weitiao to append EOS to
  replies is written as one that does so itself (ChatTemplate.standalone).
- names transformers 5 writes that 4.x does not know: tokenizer_class "TokenizersBackend" and a
  list under `extra_special_tokens` (4.x wants a dict: the list is its `additional_special_tokens`),
  and config.json with `rope_theta` only inside `rope_parameters` (4.x reads 10000 instead).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from weitiao.data.templates import ChatTemplate
from weitiao.io import atomic_write_text

# the class every transformers version loads from tokenizer.json exactly as saved
PORTABLE_TOKENIZER_CLASS = "PreTrainedTokenizerFast"


def stop_ids(tokenizer: Any, template: ChatTemplate, base_eos: int | list[int] | None = None) -> list[int]:
    """Token ids generation stops at: the template's end-of-turn, the tokenizer's EOS, the base's EOS ids."""
    eot = tokenizer.convert_tokens_to_ids(template.eot)
    # a round trip, not `!= unk_token_id`: Qwen2 tokenizers name <|endoftext|> as unk, EOS and end-of-turn at once
    one_token = isinstance(eot, int) and tokenizer.convert_ids_to_tokens(eot) == template.eot
    assert one_token, f"end-of-turn {template.eot!r} is not one token"
    more = [base_eos] if isinstance(base_eos, int) else list(base_eos or [])
    return list(dict.fromkeys(i for i in (eot, tokenizer.eos_token_id, *more) if i is not None))


def _write_json(path: Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def save_tokenizer(tokenizer: Any, template: ChatTemplate, dest: Path) -> None:
    """Save `tokenizer` to `dest` carrying the training template, readable by transformers 4.x and 5.

    Sets `tokenizer.chat_template` to the template's standalone form.
    """
    tokenizer.chat_template = template.standalone()
    tokenizer.save_pretrained(dest)
    path = Path(dest) / "tokenizer_config.json"
    cfg = json.loads(path.read_text(encoding="utf-8"))
    cfg["chat_template"] = tokenizer.chat_template
    if (Path(dest) / "tokenizer.json").is_file():
        cfg["tokenizer_class"] = PORTABLE_TOKENIZER_CLASS
    extra = cfg.get("extra_special_tokens")
    if isinstance(extra, list):
        del cfg["extra_special_tokens"]
        cfg["additional_special_tokens"] = extra
    _write_json(path, cfg)


def write_generation_config(dest: Path, source: Any, eos_ids: list[int]) -> None:
    """generation_config.json in `dest`: `source` (a GenerationConfig, or None) with `eos_token_id` = eos_ids."""
    from transformers import GenerationConfig

    fields = source.to_dict() if source is not None else {}
    # not "from the model config": 4.x generate() would rebuild such a config from config.json's EOS
    fields.pop("_from_model_config", None)
    gc = GenerationConfig.from_dict({**fields, "eos_token_id": eos_ids})
    atomic_write_text(Path(dest) / "generation_config.json", gc.to_json_string(use_diff=True))


def legacy_config_keys(dest: Path) -> None:
    """Give config.json the top-level `rope_theta` (and `rope_scaling`) that transformers 4.x reads."""
    path = Path(dest) / "config.json"
    cfg = json.loads(path.read_text(encoding="utf-8"))
    rope = cfg.get("rope_parameters")
    if not isinstance(rope, dict) or "rope_theta" not in rope:
        return  # no rope, or one set per layer type: nothing 4.x would read at top level
    cfg.setdefault("rope_theta", rope["rope_theta"])
    if rope.get("rope_type", "default") != "default":
        cfg.setdefault("rope_scaling", {k: v for k, v in rope.items() if k != "rope_theta"})
    _write_json(path, cfg)
