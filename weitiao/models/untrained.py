"""Untrained embedding rows of a chat template's control tokens, refused where LoRA would keep them frozen.

Some bases ship rows that pre-training never touched for the very tokens an instruct template uses: Llama-3/3.1 base
has (near-)zero rows in embed_tokens and lm_head for <|eot_id|>, <|start_header_id|> and <|end_header_id|>. LoRA on
such a base trains with those rows frozen: the input rows carry nothing, and a zero lm_head row keeps the token's
logit at 0 whatever the hidden state, so the adapter can barely learn to end a turn and the tuned model may never
stop (Unsloth's and axolotl's `fix_untrained_tokens`). Weights are never changed here: a run is refused with the
fixes, or goes on with a note where those rows train (lora.modules_to_save, full fine-tuning).

A row looks untrained when its largest |value| is below `NEAR_ZERO` x the median of the matrix's rows' (a bf16 zero
row reads ~1e-23, trained rows ~1e-2), or when it is exactly equal to `COPIES` or more other rows (a placeholder,
e.g. every added token set to the mean row).
"""

from __future__ import annotations

from typing import Any

import torch

from weitiao.errors import UserError

NEAR_ZERO = 1e-3  # a row's max |value| below this fraction of the median row's looks untrained
COPIES = 2  # a row exactly equal to this many other rows or more is a placeholder
_CHUNK = 8192  # rows per step of the scan: no full-size temporary on a 128k x 4096 matrix
_PROBE = [
    {"role": "system", "content": "S"},
    {"role": "user", "content": "U"},
    {"role": "assistant", "content": "A"},
]
# a tool round for training rows with tools: the call's markup (Qwen's <tool_call>) is said by the assistant
_TOOLS = [{"type": "function", "function": {"name": "f", "description": "D", "parameters": {"type": "object"}}}]
_CALL = {
    "role": "assistant",
    "content": "",
    "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": {}}}],
}
_TOOL_ROUND = [
    {"role": "user", "content": "U"},
    _CALL,
    {"role": "tool", "content": "R"},
    {"role": "assistant", "content": "A"},
]


def _unwrap(m: Any) -> Any:
    """The module peft's wrappers run: modules_to_save's active copy, a LoRA layer's base."""
    while True:
        if hasattr(m, "modules_to_save") and hasattr(m, "original_module"):  # peft ModulesToSaveWrapper
            active = [a for a in m.active_adapters if a in m.modules_to_save]
            m = m.modules_to_save[active[0]] if active else m.original_module
        elif hasattr(m, "base_layer"):  # a LoRA layer on it
            m = m.base_layer
        else:
            return m


def _matrix(module: Any) -> tuple[torch.Tensor | None, bool]:
    """(the weight the module's forward uses, whether training changes it: any of its parameters trains); None
    when quantized or not materialized."""
    trains = any(p.requires_grad for p in module.parameters())
    w = getattr(_unwrap(module), "weight", None)
    if not isinstance(w, torch.Tensor) or w.dim() != 2 or not w.numel() or w.is_meta or not w.is_floating_point():
        return None, trains  # quantized (uint8/int8) or sharded away: nothing to read
    return w, trains


@torch.no_grad()
def untrained_rows(weight: torch.Tensor, ids: list[int]) -> list[int]:
    """Of `ids`, those whose row of `weight` looks untrained (near zero, or a placeholder copy)."""
    n = weight.shape[0]
    ids = [i for i in dict.fromkeys(ids) if 0 <= i < n]
    if not ids:
        return []
    peak = torch.empty(n, dtype=torch.float32, device=weight.device)
    total = torch.empty(n, dtype=torch.float32, device=weight.device)
    for s in range(0, n, _CHUNK):
        block = weight[s : s + _CHUNK].float()
        peak[s : s + _CHUNK], total[s : s + _CHUNK] = block.abs().amax(1), block.sum(1)
    limit = NEAR_ZERO * float(peak.median())
    found = []
    for i in ids:
        if float(peak[i]) <= limit:
            found.append(i)
            continue
        alike = ((peak == peak[i]) & (total == total[i])).nonzero().flatten()  # cheap fingerprint, then exact
        if len(alike) > COPIES and int((weight[alike] == weight[i]).all(1).sum()) > COPIES:
            found.append(i)
    return found


def untrained_ids(model: Any, ids: list[int], output_ids: list[int] | None = None) -> dict[str, list[int]]:
    """{"input": ids whose embed_tokens row looks untrained, "output": those of `output_ids` (default `ids`) whose
    lm_head row does}; a tied head is the same matrix, a quantized or absent matrix gives []. The embedding's
    padding_idx row (zero by design, never trained by nn.Embedding: a tiny model's pad = EOS) is no input row to
    check."""
    out_ids = ids if output_ids is None else output_ids
    emb = model.get_input_embeddings()
    w_in, _ = _matrix(emb)
    pad = getattr(_unwrap(emb), "padding_idx", None)
    ids = [i for i in ids if i != pad]
    head = model.get_output_embeddings()
    w_out = _matrix(head)[0] if head is not None else None
    found = {"input": untrained_rows(w_in, ids) if w_in is not None else []}
    if w_out is None:
        found["output"] = []
    elif w_in is not None and w_out.data_ptr() == w_in.data_ptr():  # tied: the same rows
        found["output"] = untrained_rows(w_in, out_ids)
    else:
        found["output"] = untrained_rows(w_out, out_ids)
    return found


def template_ids(
    tokenizer: Any, template: Any, tools: bool = False, raw_rows: bool = False
) -> tuple[list[int], list[int]]:
    """(the tokens whose input rows matter: the special/added tokens the template renders around a probe system +
    user + assistant conversation, and its end-of-turn; those trained as labels, whose lm_head rows matter: the
    end-of-turn; EOS only with `raw_rows`, raw-text rows among the chats: a chat row never trains a base EOS that
    differs from it). Template None (raw-text rows only): no input row, EOS as the label. With `tools` (training rows
    use tools) a tool round is rendered too: its special tokens are inputs, those of the assistant's call labels."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    if template is None:
        return [], eos
    specials = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}))
    rendered: list[int] = []
    for msgs in (_PROBE, _PROBE[1:]):  # some templates refuse a system turn
        try:
            rendered = tokenizer(template.render(tokenizer, msgs), add_special_tokens=False)["input_ids"]
            break
        except Exception:  # a template's raise_exception: the data check names the row that trips it
            continue
    eot = tokenizer.convert_tokens_to_ids(template.eot)
    eot_ids = [eot] if isinstance(eot, int) and eot >= 0 else []
    said: list[int] = []
    if tools and template.supports_tools:
        round_ids, said = _tool_round_ids(tokenizer, template)
        rendered += round_ids
    inputs = [i for i in rendered if i in specials] + eot_ids
    labels = eot_ids + (eos if raw_rows else []) + [i for i in said if i in specials]
    return list(dict.fromkeys(inputs)), list(dict.fromkeys(labels))


def _tool_round_ids(tokenizer: Any, template: Any) -> tuple[list[int], list[int]]:
    """(the token ids of a rendered tool round, those of the assistant's call: what follows the generation prompt)."""

    def ids(msgs: list[dict], gen: bool = False) -> list[int]:
        text = template.render(tokenizer, msgs, add_generation_prompt=gen, tools=_TOOLS)
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    try:
        whole, asked, called = ids(_TOOL_ROUND), ids(_TOOL_ROUND[:1], True), ids(_TOOL_ROUND[:2])
    except Exception:  # a template's raise_exception: the data check names the row that trips it
        return [], []
    return whole, called[len(asked) :] if called[: len(asked)] == asked else called


def _module_name(model: Any, module: Any) -> str:
    return next((n.rsplit(".", 1)[-1] for n, m in model.named_modules() if m is module), "?")


def refuse_untrained_tokens(
    model: Any, tokenizer: Any, template: Any, say: bool = True, tools: bool = False, raw_rows: bool = False
) -> None:
    """Refuse training a model whose template tokens (EOS alone for raw-text rows: template None; its tool markup too
    with `tools`, EOS too with `raw_rows`) have untrained rows that stay frozen (see module doc); with `say`, a
    one-line note where those rows are found but train."""
    ids, labels = template_ids(tokenizer, template, tools, raw_rows)
    where = f"data.template {template.name}" if template is not None else "raw-text rows (closed with EOS)"
    found = untrained_ids(model, ids, labels)
    if not found["input"] and not found["output"]:
        return
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    mods = {"input": emb, "output": head}
    stuck = [side for side in ("input", "output") if found[side] and not _matrix(mods[side])[1]]
    names = {side: _module_name(model, mods[side]) for side in stuck}
    sides = stuck or ["input", "output"]
    tokens = ", ".join(tokenizer.convert_ids_to_tokens(list(dict.fromkeys(i for s in sides for i in found[s]))))
    if not stuck:
        if say:
            print(f"note: {where}: {tokens} have untrained rows in the base; they train here")
        return
    rows = "; ".join(f"{names[s]}: {', '.join(tokenizer.convert_ids_to_tokens(found[s]))}" for s in stuck)
    stop = ""
    if "output" in stuck:
        ends = {tokenizer.eos_token_id} | ({tokenizer.convert_tokens_to_ids(template.eot)} if template else set())
        stop = f" (LoRA can barely teach it to emit {', '.join(tokenizer.convert_ids_to_tokens(found['output']))}"
        stop += ": the tuned model may never stop)" if ends & set(found["output"]) else ")"
    other = ", or a data.template whose tokens the base knows" if template is not None else ""
    raise UserError(
        f"{where}: tokens {tokens} have untrained rows in the base model ({rows}) that LoRA keeps frozen{stop}; "
        f"set lora.modules_to_save: [{', '.join(names.values())}] to train those rows, or lora.enabled: false "
        f"(full fine-tuning){other}"
    )
