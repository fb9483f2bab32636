"""`weitiao chat`: terminal chat with history and streaming; `--prompt` answers once and exits.

Commands inside the chat: /reset clears the history, /system TEXT sets the system message,
/exit (or Ctrl-D) leaves.
"""

from __future__ import annotations

import sys
from typing import Any

from weitiao.data.templates import resolve_template
from weitiao.infer.generate import stream_reply
from weitiao.models.load import ModelSpec, load_model, load_tokenizer


def load_chat_model(model: str, adapter: str | None, quant: str = "none") -> tuple[Any, Any]:
    """Base model (+ peft adapter), and the tokenizer (the adapter run's, with its template, if any)."""
    from pathlib import Path

    tok_path = model
    if adapter:
        from weitiao.infer.export import locate

        adapter_dir, tok_dir, _ = locate(adapter)
        tok_path = str(tok_dir) if tok_dir else model
    tokenizer = load_tokenizer(tok_path)
    m = load_model(ModelSpec(path=model, quant=quant))
    if adapter:
        from peft import PeftModel

        m = PeftModel.from_pretrained(m, Path(adapter_dir))
    return m.eval(), tokenizer


def run(
    model: str,
    adapter: str | None,
    prompt: str | None,
    system: str | None,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    repetition_penalty: float,
    quant: str = "none",
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
