"""Chat templates: the tokenizer's own, or shipped ChatML/Qwen, Llama-3 and a plain default.

Each resolved template knows its end-of-turn string (`eot`): the token that closes an assistant
turn. When a template does not close assistant turns itself, the tokenizer's EOS is appended to
every assistant message before rendering, so the model always learns to stop (chapter Q147).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from weitiao.errors import UserError

CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
LLAMA3 = (
    "{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + "
    "'<|end_header_id|>\\n\\n' + m['content'] + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
PLAIN = (
    "{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] + '\\n\\n' }}"
    "{% elif m['role'] == 'user' %}{{ '### 用户:\\n' + m['content'] + '\\n\\n' }}"
    "{% else %}{{ '### 助手:\\n' + m['content'] + eos_token + '\\n\\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '### 助手:\\n' }}{% endif %}"
)
SHIPPED = {"chatml": (CHATML, "<|im_end|>"), "qwen": (CHATML, "<|im_end|>"), "llama3": (LLAMA3, "<|eot_id|>")}
TEMPLATE_NAMES = ("auto", "tokenizer", "chatml", "qwen", "llama3", "plain")
_PROBE_USER, _PROBE_REPLY = "问", "答ZQX"


@dataclass(frozen=True)
class ChatTemplate:
    """A Jinja chat template plus how its assistant turns end."""

    name: str
    jinja: str
    eot: str  # string that closes each assistant turn
    appends_eos: bool  # True when the template lacks an end-of-turn and EOS is added to content

    def render(self, tokenizer: Any, messages: list[dict], add_generation_prompt: bool = False) -> str:
        if self.appends_eos:
            messages = [{**m, "content": m["content"] + self.eot} if m["role"] == "assistant" else m for m in messages]
        return tokenizer.apply_chat_template(
            messages,
            chat_template=self.jinja,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
        )

    def render_many(self, tokenizer: Any, conversations: list[list[dict]], add_generation_prompt: bool = False) -> list:
        """`render` of each conversation, in one batched `apply_chat_template` call."""
        if not conversations:
            return []
        if self.appends_eos:
            conversations = [
                [{**m, "content": m["content"] + self.eot} if m["role"] == "assistant" else m for m in ms]
                for ms in conversations
            ]
        return tokenizer.apply_chat_template(
            conversations, chat_template=self.jinja, tokenize=False, add_generation_prompt=add_generation_prompt
        )


def _special_tokens(tokenizer: Any) -> list[str]:
    toks = set(tokenizer.all_special_tokens)
    toks |= {t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values()}
    return sorted(toks, key=len, reverse=True)


def find_eot(tokenizer: Any, jinja: str) -> str | None:
    """The special token a template writes right after an assistant reply, or None."""
    msgs = [{"role": "user", "content": _PROBE_USER}, {"role": "assistant", "content": _PROBE_REPLY}]
    text = tokenizer.apply_chat_template(msgs, chat_template=jinja, tokenize=False)
    after = text[text.rindex(_PROBE_REPLY) + len(_PROBE_REPLY) :].lstrip()
    for tok in _special_tokens(tokenizer):
        if tok and after.startswith(tok):
            return tok
    return None


def resolve_template(tokenizer: Any, name: str = "auto") -> ChatTemplate:
    """Pick the template: `auto` uses the tokenizer's own when it has one, else `plain`."""
    if name not in TEMPLATE_NAMES:
        raise UserError(f"template {name!r} unknown; use one of {', '.join(TEMPLATE_NAMES)}")
    own = getattr(tokenizer, "chat_template", None)
    if isinstance(own, dict):  # several named templates: take the default one
        own = own.get("default")
    if name == "tokenizer" and not own:
        raise UserError("template: the tokenizer has no chat_template; choose chatml, llama3 or plain")
    if name in ("auto", "tokenizer") and own:
        name, jinja = "tokenizer", own
    elif name == "auto":
        name, jinja = "plain", PLAIN
    else:
        jinja = SHIPPED.get(name, (PLAIN, None))[0]
    if name == "plain" and tokenizer.eos_token is None:
        raise UserError("template plain needs tokenizer.eos_token; the tokenizer has none")
    if name in SHIPPED:
        eot = SHIPPED[name][1]
        if eot not in tokenizer.get_vocab():
            raise UserError(
                f"template {name!r} needs the token {eot!r}, which the tokenizer lacks; "
                "use template: auto or plain, or add the token to the tokenizer"
            )
        return ChatTemplate(name, jinja, eot, appends_eos=False)
    eot = find_eot(tokenizer, jinja)
    if eot is not None:
        return ChatTemplate(name, jinja, eot, appends_eos=False)
    if tokenizer.eos_token is None:
        raise UserError("tokenizer has no eos_token and its template closes no turn; set eos_token")
    return ChatTemplate(name, jinja, tokenizer.eos_token, appends_eos=True)
