"""`weitiao chat`: terminal chat with history and streaming; `--prompt` answers once and exits.

Commands inside the chat: /reset clears the history, /system TEXT sets the system message,
/exit (or Ctrl-D) leaves.
"""

from __future__ import annotations

import sys
from typing import Any

from weitiao.data.templates import resolve_template
from weitiao.errors import UserError
from weitiao.infer.generate import stream_reply
from weitiao.models.load import (
    ModelSpec,
    adapter_base,
    attach_adapter,
    load_model,
    load_tokenizer,
    trained_quant_note,
)


def load_chat_model(model: str | None, adapter: str | None, quant: str | None = None) -> tuple[Any, Any]:
    """Base model (+ peft adapter), and the tokenizer (the adapter run's, with its template, if any).

    Without `model`/`quant` an adapter gets the base and quantization it was trained with.
    """
    if quant not in (None, "none", "4bit", "8bit"):
        raise UserError(f"--quant {quant}: choose none, 4bit or 8bit")
    if not adapter:
        model = model or "demo"
        return load_model(ModelSpec(path=model, quant=quant or "none")).eval(), load_tokenizer(model)
    from weitiao.infer.export import locate

    adapter_dir, tok_dir, _ = locate(adapter)
    base, trained_quant = adapter_base(adapter_dir)
    if quant is None and trained_quant != "none":
        print(trained_quant_note(f"base {model or base}", trained_quant), file=sys.stderr)
    model, quant = model or base, quant or trained_quant
    tokenizer = load_tokenizer(str(tok_dir) if tok_dir else model)
    m = attach_adapter(load_model(ModelSpec(path=model, quant=quant)), adapter_dir, model)
    return m.eval(), tokenizer


def run(
    model: str | None,
    adapter: str | None,
    prompt: str | None,
    system: str | None,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    repetition_penalty: float,
    quant: str | None = None,
) -> None:
    m, tok = load_chat_model(model, adapter, quant)
    template = resolve_template(tok, "auto")
    gen = dict(
        max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, repetition_penalty=repetition_penalty
    )
    history: list[dict] = []

    def answer(text: str) -> str:
        msgs = ([{"role": "system", "content": system}] if system else []) + history
        msgs = msgs + [{"role": "user", "content": text}]
        parts = []
        for piece in stream_reply(m, tok, template, msgs, **gen):
            sys.stdout.write(piece)
            sys.stdout.flush()
            parts.append(piece)
        sys.stdout.write("\n")
        return "".join(parts)

    if prompt is not None:
        answer(prompt)
        return
    print("weitiao chat · /reset clears history · /system TEXT sets the system message · /exit leaves")
    while True:
        try:
            text = input("你> ").strip()
        except EOFError:
            break
        if not text:
            continue
        if text in ("/exit", "/quit"):
            break
        if text == "/reset":
            history.clear()
            print("(history cleared)")
            continue
        if text.startswith("/system"):
            system = text[len("/system") :].strip() or None
            print(f"(system: {system or 'none'})")
            continue
        sys.stdout.write("AI> ")
        reply = answer(text)
        history += [{"role": "user", "content": text}, {"role": "assistant", "content": reply}]
