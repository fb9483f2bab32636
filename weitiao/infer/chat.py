"""`weitiao chat`: terminal chat with history and streaming; `--prompt` answers once and exits.

Commands inside the chat: /reset clears the history, /system TEXT sets the system message,
/exit (or Ctrl-D) leaves.
"""

from __future__ import annotations

import re
import sys
from typing import Any

from weitiao.data.decode import no_whole_character, terminal_safe
from weitiao.data.templates import resolve_template
from weitiao.errors import UserError
from weitiao.infer.generate import chat_sampling, stream_reply
from weitiao.models.load import (
    ModelSpec,
    adapter_base,
    attach_adapter,
    load_adapted,
    load_model,
    load_tokenizer,
    precision_name,
    refuse_reward_adapter,
    trained_quant_note,
    training_tokenizer,
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
    warn_untrained_base(adapter_dir, model)
    tokenizer = training_tokenizer(adapter_dir, tok_dir, model or adapter_base(adapter_dir)[0])
    return load_adapted(adapter_dir, model, quant, "base", None).eval(), tokenizer


def warn_untrained_base(adapter_dir: Any, model: str | None, name: str = "") -> None:
    """A warning on stderr when the base an adapter is loaded on (`model`, else the recorded one) is not the base
    its run trained on: chat, serve and eval answered with such an adapter without a word (export said it)."""
    from weitiao.infer.export import trained_base_changed

    base = model or adapter_base(adapter_dir)[0]
    changed = trained_base_changed(adapter_dir, base, "--model" if model else "the base")
    if changed is not None:
        print(f"warning: {name}{changed}: the adapter runs on a base it never saw; give --model the base it "
              "trained on if that was not meant", file=sys.stderr)  # fmt: skip


def parse_adapters(specs: list[str]) -> dict[str, str] | None:
    """{name: run} from `--adapter NAME=RUN` flags; None for one plain `--adapter RUN` (served as the model)."""
    if len(specs) == 1 and not _NAMED.fullmatch(specs[0]):
        return None
    named: dict[str, str] = {}
    for spec in specs:
        m = _NAMED.fullmatch(spec)
        if not m:
            raise UserError(f"--adapter {spec}: give NAME=RUN (NAME of letters, digits, _ or -) to serve several")
        if m[1] in named or m[1] == "__base__":
            raise UserError(f"--adapter {spec}: the name {m[1]!r} is taken; give each adapter its own")
        named[m[1]] = m[2]
    return named


_NAMED = re.compile(r"([A-Za-z0-9_-]+)=(.+)")


def load_adapters(model: str | None, named: dict[str, str], quant: str | None) -> tuple[Any, Any, str]:
    """One base with several LoRA adapters, each under its own peft adapter name (= its served name); the
    tokenizer (a run's, with its template) and the base's path. The adapters must share the base they were
    trained on (unless `model` names one) and their chat template."""
    from weitiao.infer.export import locate

    if quant not in (None, "none", "4bit", "8bit"):
        raise UserError(f"--quant {quant}: choose none, 4bit or 8bit")
    located = {name: locate(run) for name, run in named.items()}
    for name, (adapter_dir, _, _) in located.items():
        refuse_reward_adapter(adapter_dir, f"--adapter {name}=")
        warn_untrained_base(adapter_dir, model, f"--adapter {name}: ")
    first, (_, _, spec) = next(iter(located.items()))
    for name, (_, _, other) in located.items():
        if model is None and other.path != spec.path:
            raise UserError(
                f"--adapter {name}={named[name]}: trained on {other.path!r}, but {first} on {spec.path!r}; "
                "serve adapters of one base (or give --model)"
            )
    base = model or spec.path
    # each run's training tokenizer: its own, or the base's with the template an unfinished run's config names
    toks = [training_tokenizer(adapter_dir, tok_dir, base) for adapter_dir, tok_dir, _ in located.values()]
    if len({t.chat_template for t in toks}) > 1:
        raise UserError("--adapter: the runs' chat templates differ; serve adapters trained with one template")
    # one base serves every adapter: loaded as they all trained, or as --quant says (it took the first one's way,
    # unsaid, and served the others on a base they never saw)
    if quant is None:
        for name, (_, _, other) in located.items():
            if other.quant != spec.quant:
                raise UserError(
                    f"--adapter {name}={named[name]}: trained on the base in {precision_name(other.quant)}, but "
                    f"{first} in {precision_name(spec.quant)}; they share one loaded base: serve them apart, or give "
                    "--quant none|4bit|8bit to load it one way for all"
                )
        if spec.quant != "none":
            print(trained_quant_note(f"base {base}", spec.quant), file=sys.stderr)
    m = load_model(ModelSpec(path=base, quant=quant or spec.quant))
    m = attach_adapter(m, located[first][0], base, adapter_name=first)
    for name, (adapter_dir, _, _) in list(located.items())[1:]:
        try:
            m.load_adapter(adapter_dir, adapter_name=name)
        except (RuntimeError, ValueError, KeyError) as e:
            raise UserError(f"--adapter {name}={named[name]}: does not fit base {base!r} ({str(e)[:200]})") from None
    return m.eval(), toks[0], base


def run(
    model: str | None,
    adapter: str | None,
    prompt: str | None,
    system: str | None,
    max_new_tokens: int,
    temperature: float | None,
    top_p: float | None,
    repetition_penalty: float | None,
    quant: str | None = None,
    seed: int | None = None,
) -> None:
    """`seed`: each sampled reply draws from its own stream seeded `seed`, as a `weitiao serve` request's `seed` (the
    same conversation and seed give the same reply); None: the global random stream."""
    m, tok = load_chat_model(model, adapter, quant)
    template = resolve_template(tok, "auto")
    temperature, top_p, top_k, repetition_penalty = chat_sampling(m, temperature, top_p, repetition_penalty)
    gen = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
               repetition_penalty=repetition_penalty, seed=seed)  # fmt: skip
    history: list[dict] = []

    def answer(text: str) -> str:
        msgs = ([{"role": "system", "content": system}] if system else []) + history
        msgs = msgs + [{"role": "user", "content": text}]
        parts, pieces = [], stream_reply(m, tok, template, msgs, **gen)
        while True:
            try:
                piece = next(pieces)
            except StopIteration as end:  # a reply of no whole character is said (on stderr: stdout is the reply)
                sys.stdout.write("\n")
                if not parts:
                    sys.stdout.flush()
                    print(no_whole_character(end.value), file=sys.stderr, flush=True)
                return "".join(parts)
            sys.stdout.write(terminal_safe(piece))
            sys.stdout.flush()
            parts.append(piece)

    if prompt is not None:
        answer(prompt)
        return
    print("weitiao chat · /reset clears history · /system TEXT sets the system message · /exit leaves")
    print(f"sampling: temperature {temperature:g}, top_p {top_p:g}, top_k {top_k}, repetition_penalty "
          f"{repetition_penalty:g} (unset: the model's generation_config.json, else 0.7, 0.9, 50, 1)"
          + ("" if seed is None else f", seed {seed}"))  # fmt: skip
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
        try:
            reply = answer(text)
        except UserError as e:  # the history outgrew the context: say so, keep the session
            print(f"error: {e} (/reset clears the history)")
            continue
        history += [{"role": "user", "content": text}, {"role": "assistant", "content": reply}]
