"""Chat templates: the tokenizer's own, or shipped ChatML/Qwen, Llama-3 and a plain default.

Each resolved template knows its end-of-turn string (`eot`): the token that closes an assistant
turn. When a template does not close assistant turns itself, the tokenizer's EOS is appended to
every assistant message before rendering, so the model always learns to stop (chapter Q147).

Tools: `qwen` renders Qwen2.5's format (tool specs in the system turn inside <tools></tools>, calls
as <tool_call> JSON blocks, results as user-side <tool_response> blocks) and `llama3` Llama-3.1's
(tools in the first user turn, a call as a bare JSON object, results in `ipython` turns). Without
tools both render exactly as plain ChatML / Llama-3. A tokenizer's own template supports tools when
its Jinja uses `tools`; its call format (hermes <tool_call> or Llama JSON) is found by rendering a probe
call. Messages carry calls as OpenAI `tool_calls` with `arguments` a dict (what HF templates expect).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from weitiao.data.llamafactory import REASONING_KEYS
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
# Qwen2.5's tool format (its tokenizer_config chat_template) on top of CHATML; departure: no default
# "You are Qwen..." system text, as our tool-less rendering has none either.
QWEN = (
    "{% set sys = messages and messages[0]['role'] == 'system' %}"
    "{% if tools %}{{ '<|im_start|>system\\n' }}{% if sys %}{{ messages[0]['content'] + '\\n\\n' }}{% endif %}"
    "{{ '# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n'"
    " + 'You are provided with function signatures within <tools></tools> XML tags:\\n<tools>' }}"
    "{% for t in tools %}{{ '\\n' + (t | tojson) }}{% endfor %}"
    "{{ '\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within '"
    ' + \'<tool_call></tool_call> XML tags:\\n<tool_call>\\n{"name": <function-name>, "arguments": \''
    " + '<args-json-object>}\\n</tool_call><|im_end|>\\n' }}{% endif %}"
    "{% for m in messages %}{% if tools and sys and loop.first %}"
    "{% elif m['role'] == 'assistant' and m['tool_calls'] %}{{ '<|im_start|>assistant' }}"
    "{% if m['content'] %}{{ '\\n' + m['content'] }}{% endif %}"
    "{% for c in m['tool_calls'] %}{% set f = c['function'] if c['function'] is defined else c %}"
    "{{ '\\n<tool_call>\\n{\"name\": \"' + f['name'] + '\", \"arguments\": ' + (f['arguments'] | tojson) }}"
    "{{ '}\\n</tool_call>' }}"
    "{% endfor %}{{ '<|im_end|>\\n' }}"
    "{% elif m['role'] == 'tool' %}{% if loop.first or messages[loop.index0 - 1]['role'] != 'tool' %}"
    "{{ '<|im_start|>user' }}{% endif %}{{ '\\n<tool_response>\\n' + m['content'] + '\\n</tool_response>' }}"
    "{% if loop.last or messages[loop.index0 + 1]['role'] != 'tool' %}{{ '<|im_end|>\\n' }}{% endif %}"
    "{% else %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# Llama-3.1's JSON tool format (tools_in_user_message, its default) on top of LLAMA3; departures: no
# "Cutting Knowledge/Today Date" lines, and several calls in one turn are joined by "; " (vLLM's llama3_json
# parser reads that) where Meta's template refuses them.
_L3_HEAD = "'<|start_header_id|>' + {role} + '<|end_header_id|>\\n\\n'"
LLAMA3_TOOLS = (
    "{{ bos_token }}{% set ns = namespace(first_user=true) %}"
    "{% if tools and not (messages and messages[0]['role'] == 'system') %}"
    "{{ " + _L3_HEAD.format(role="'system'") + " + 'Environment: ipython<|eot_id|>' }}{% endif %}"
    "{% for m in messages %}"
    "{% if m['role'] == 'system' and tools %}"
    "{{ " + _L3_HEAD.format(role="'system'") + " + 'Environment: ipython\\n\\n' + m['content'] + '<|eot_id|>' }}"
    "{% elif m['role'] == 'user' and tools and ns.first_user %}{% set ns.first_user = false %}"
    "{{ " + _L3_HEAD.format(role="'user'") + " + 'Given the following functions, please respond with a JSON for a '"
    " + 'function call with its proper arguments that best answers the given prompt.\\n\\n'"
    ' + \'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.\''
    " + 'Do not use variables.\\n\\n' }}{% for t in tools %}{{ (t | tojson(indent=4)) + '\\n\\n' }}{% endfor %}"
    "{{ m['content'] + '<|eot_id|>' }}"
    "{% elif m['role'] == 'assistant' and m['tool_calls'] %}{{ " + _L3_HEAD.format(role="'assistant'") + " }}"
    "{% for c in m['tool_calls'] %}{% set f = c['function'] if c['function'] is defined else c %}"
    "{% if not loop.first %}{{ '; ' }}{% endif %}"
    "{{ '{\"name\": \"' + f['name'] + '\", \"parameters\": ' + (f['arguments'] | tojson) + '}' }}"
    "{% endfor %}{{ '<|eot_id|>' }}"
    "{% elif m['role'] == 'tool' %}{{ " + _L3_HEAD.format(role="'ipython'") + " + m['content'] + '<|eot_id|>' }}"
    "{% else %}{{ " + _L3_HEAD.format(role="m['role']") + " + m['content'] + '<|eot_id|>' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
TEMPLATE_NAMES = ("auto", "tokenizer", "chatml", "qwen", "llama3", "plain")
SHIPPED = {"chatml": (CHATML, "<|im_end|>"), "qwen": (QWEN, "<|im_end|>"), "llama3": (LLAMA3_TOOLS, "<|eot_id|>")}
TOOL_FORMATS = {"qwen": "hermes", "llama3": "llama3_json"}
_PROBE_USER, _PROBE_REPLY = "问", "答ZQX"
_PROBE_TOOL = {"type": "function", "function": {"name": "probe_fn_zqx", "description": "", "parameters": {}}}
_PROBE_CALL = {"type": "function", "function": {"name": "probe_fn_zqx", "arguments": {"q": 7}}}
_HERMES = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.S)
ToolFormat = Literal["hermes", "llama3_json"]


def late_system(template: ChatTemplate) -> str:
    """Why a system (developer) message after the first message is refused where `misplaced_system` finds it."""
    return (f"a system (developer) message after the first message, which chat template {template.name!r} does not "
            "render where it stands (it drops, moves or merges it); give it as the first message, or fold it into a "
            "user message")  # fmt: skip


@dataclass(frozen=True)
class ChatTemplate:
    """A Jinja chat template plus how its assistant turns end and whether (and how) it renders tool calls."""

    name: str
    jinja: str
    eot: str  # string that closes each assistant turn
    appends_eos: bool  # True when the template lacks an end-of-turn and EOS is added to content
    supports_tools: bool = False  # renders `tools`, assistant `tool_calls` and `tool` results
    tool_format: ToolFormat | None = None  # how calls appear in generated text; None: cannot parse them back

    def render(
        self,
        tokenizer: Any,
        messages: list[dict],
        add_generation_prompt: bool = False,
        tools: list | None = None,
        continue_final: bool = False,
    ) -> str:
        """The prompt text; `continue_final`: it ends inside the last message, after its content (no end-of-turn),
        as transformers' continue_final_message (a template that does not show that content raises ValueError)."""
        if self.appends_eos:
            last = len(messages) - 1 if continue_final else -1
            messages = [
                {**m, "content": m["content"] + self.eot} if m["role"] == "assistant" and i != last else m
                for i, m in enumerate(messages)
            ]
        kw: dict[str, Any] = {"tools": tools} if tools else {}  # tool-less renders stay byte-identical to before
        if continue_final:
            kw["continue_final_message"] = True
        return tokenizer.apply_chat_template(
            messages,
            chat_template=self.jinja,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            **kw,
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
        if all(map(_plain, conversations)) and (direct := _direct_renderer(tokenizer, self.jinja)) is not None:
            return [direct(ms, add_generation_prompt) for ms in conversations]
        return tokenizer.apply_chat_template(
            conversations, chat_template=self.jinja, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def misplaced_system(self, tokenizer: Any, messages: list[dict], tools: list | None = None) -> int | None:
        """The index of the first system message after the first message that this template does not render in its
        place (dropped, moved, repeated, or rendered as a user turn would be), or None. Rendered with each content
        replaced by a marker, and once more with every such message as a user turn: one whose text on both sides of
        its marker is the same there is rendered as a user turn. Two renders and a scan, whatever the length (a
        render per message was quadratic: 2,000 messages, a 70 KB body, took 30 s). A template that raises on such
        a message raises here too."""
        late = [i for i, m in enumerate(messages) if i and m["role"] == "system"]
        if not late:
            return None
        probe = [{**m, "content": f"ZQX{i}MSG"} for i, m in enumerate(messages)]
        text = self.render(tokenizer, probe, add_generation_prompt=True, tools=tools)
        spans: dict[int, list[tuple[int, int]]] = {}
        for m in re.finditer(r"ZQX(\d+)MSG", text):
            spans.setdefault(int(m[1]), []).append(m.span())
        for i in late:
            if len(spans.get(i, ())) != 1:
                return i
            at, prev, after = spans[i][0][0], spans.get(i - 1, [(-1, -1)])[0][0], spans.get(i + 1, [(-1, -1)])[0][0]
            if not prev < at or (i + 1 < len(messages) and not after > at):
                return i
        as_user = [{**m, "role": "user"} if k in set(late) else m for k, m in enumerate(probe)]
        user = self.render(tokenizer, as_user, add_generation_prompt=True, tools=tools)
        users: dict[int, tuple[int, int]] = {}
        for m in re.finditer(r"ZQX(\d+)MSG", user):
            users.setdefault(int(m[1]), m.span())

        def around(t: str, where: dict[int, tuple[int, int]], i: int) -> tuple[str, str]:
            start, end = where[i]
            before = where[i - 1][1] if i - 1 in where else 0
            return t[before:start], t[end : where[i + 1][0] if i + 1 in where else len(t)]

        first = {k: v[0] for k, v in spans.items()}
        return next((i for i in late if i in users and around(text, first, i) == around(user, users, i)), None)

    def unread_name(self, tokenizer: Any, messages: list[dict], tools: list | None = None) -> int | None:
        """The index of the first message whose `name` this template does not read (the prompt is the same without
        it), or None. A tool message's `name` is left out: it is the function's, which its tool_call_id names. Each
        name is rendered as a marker; only one whose marker does not show is checked by a render without it (at most
        16), so a long conversation costs a few renders, not one per message."""
        named = [i for i, m in enumerate(messages) if "name" in m and m["role"] != "tool"]
        if not named:
            return None
        mark = {i: f"zqxname{i}q" for i in named}
        marked = [{**m, "name": mark[i]} if i in mark else m for i, m in enumerate(messages)]
        shown = {int(k) for k in re.findall(r"zqxname(\d+)q", self.render(tokenizer, marked, tools=tools).lower())}
        full = None
        for i in [i for i in named if i not in shown][:16]:
            full = full or self.render(tokenizer, messages, tools=tools)
            without = [{k: v for k, v in m.items() if k != "name"} if k == i else m for k, m in enumerate(messages)]
            if self.render(tokenizer, without, tools=tools) == full:
                return i
        return None

    def parse_tool_calls(self, text: str) -> tuple[str, list[dict]]:
        """Split generated text into (content, calls), each call {"name", "arguments": JSON string}.

        Text with no call, or with a call that is not valid JSON, comes back whole as content (no calls)."""
        return parse_tool_calls(text, self.tool_format)

    def standalone(self) -> str:
        """The Jinja that renders like `render` through a plain `apply_chat_template` (no weitiao).

        With `appends_eos` it appends the end-of-turn to assistant content itself. The prefix ends
        with a block tag and a newline, which trim_blocks removes, so the template proper starts a
        line exactly as before (lstrip_blocks and a leading newline behave the same).
        """
        if not self.appends_eos:
            return self.jinja
        eot = json.dumps(self.eot)  # a JSON string is a valid Jinja string literal
        return (
            "{% set ns = namespace(msgs=[]) %}{% for m in messages %}{% if m['role'] == 'assistant' %}"
            f"{{% set ns.msgs = ns.msgs + [dict(m, content=m['content'] + {eot})] %}}"
            "{% else %}{% set ns.msgs = ns.msgs + [m] %}{% endif %}{% endfor %}{% set messages = ns.msgs %}\n"
            + self.jinja
        )


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # NaN, Infinity: Python's reader takes them, JSON has no such value


_JSON = json.JSONDecoder(parse_constant=_not_json)
_JSON_WS = re.compile(r"[ \t\n\r]*")


def _members(text: str, i: int) -> dict[str, str]:
    """Each member of the JSON object that starts at text[i] (valid JSON), its value's text as written."""
    out = {}
    i = _JSON_WS.match(text, i + 1).end()  # type: ignore[union-attr]
    while text[i] != "}":
        key, i = _JSON.raw_decode(text, i)
        i = _JSON_WS.match(text, _JSON_WS.match(text, i).end() + 1).end()  # type: ignore[union-attr]  # past ":"
        _, end = _JSON.raw_decode(text, i)
        out[key] = text[i:end]
        i = _JSON_WS.match(text, end).end()  # type: ignore[union-attr]
        if text[i] == ",":
            i = _JSON_WS.match(text, i + 1).end()  # type: ignore[union-attr]
    return out


def _call(text: str, i: int, args_key: str) -> dict | None:
    """The call written as the JSON object at text[i:], or None. Its `arguments` are the model's own text (0.10
    stays 0.10, 1e999 stays 1e999: re-serialized they were 0.1 and Infinity, which is no JSON)."""
    obj = _JSON.raw_decode(text, i)[0]
    if not (isinstance(obj, dict) and isinstance(obj.get("name"), str) and obj["name"]):
        return None
    key = args_key if args_key in obj else "arguments" if "arguments" in obj else None
    if key is None:
        return {"name": obj["name"], "arguments": "{}"}
    args, raw = obj[key], _members(text, i)[key]
    if isinstance(args, str):  # a model may write the arguments as a JSON string, as OpenAI sends them
        try:
            args, raw = _JSON.decode(args), args.strip(" \t\n\r")
        except ValueError:
            return None
    if not isinstance(args, dict):
        return None
    return {"name": obj["name"], "arguments": raw}


def parse_tool_calls(text: str, fmt: ToolFormat | None) -> tuple[str, list[dict]]:
    """(content, calls) from generated text in `fmt`: hermes `<tool_call>{json}</tool_call>` blocks after optional
    content, or llama3_json: the whole reply is one JSON call, or several joined by "; ". A call's `arguments` is
    its JSON text as the model wrote it; a call that is not JSON (NaN and Infinity are not) leaves the text whole."""
    if fmt == "hermes":
        k = text.find("<tool_call>")
        if k < 0:
            return text, []
        calls = []
        for body in _HERMES.findall(text[k:]):
            try:
                _JSON.decode(body)  # one JSON value, nothing after it
                call = _call(body, 0, "arguments")
            except ValueError:
                call = None
            if call is None:
                return text, []
            calls.append(call)
        return text[:k].strip(), calls
    if fmt == "llama3_json":
        body = text.strip()
        if not body.startswith("{"):
            return text, []
        calls, i = [], 0
        while i < len(body):
            try:
                call, end = _call(body, i, "parameters"), _JSON.raw_decode(body, i)[1]
            except ValueError:
                return text, []
            if call is None:
                return text, []
            calls.append(call)
            rest = body[end:].lstrip()
            if rest and not rest.startswith(";"):
                return text, []
            i = len(body) - len(rest[1:].lstrip()) if rest else len(body)  # past "; "
        return "", calls
    return text, []


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


def fallback_note(requested: str, template: ChatTemplate, tokenizer: Any) -> str | None:
    """The note for `auto` on a tokenizer without a chat template: rows render in weitiao's plain format, which a base
    never saw and other tools do not write (the tuned model's tokenizer carries it, so an export renders the same).
    It names the standard templates whose end-of-turn token the tokenizer has (it named chatml and llama3 to a
    tokenizer holding neither token, and both were then refused)."""
    if requested != "auto" or template.name != "plain":
        return None
    vocab = tokenizer.get_vocab()
    usable = [name for name in ("chatml", "llama3") if SHIPPED[name][1] in vocab]
    standard = (
        f"set data.template: {' or '.join(usable)} for a standard one"
        if usable
        else "the standard ones (chatml, llama3) need <|im_end|> or <|eot_id|>, which this tokenizer lacks"
    )
    return (
        "data.template auto: the tokenizer has no chat template, so rows render in weitiao's plain format "
        f"('### 用户:' / '### 助手:', replies end with EOS; it is written into the tuned model's tokenizer); {standard}"
    )


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
    # Llama-2/Mistral bases: every text they saw began with BOS (chatml on them too, as OpenHermes/Dolphin render it)
    if (name == "plain" or name in SHIPPED) and "bos_token" not in jinja and _adds_bos(tokenizer):
        jinja = "{{ bos_token }}" + jinja
    if name in SHIPPED:
        eot = SHIPPED[name][1]
        if eot not in tokenizer.get_vocab():
            raise UserError(
                f"template {name!r} needs the token {eot!r}, which the tokenizer lacks; "
                "use template: auto or plain, or add the token to the tokenizer"
            )
        return ChatTemplate(name, jinja, eot, False, name in TOOL_FORMATS, TOOL_FORMATS.get(name))
    eot = find_eot(tokenizer, jinja)
    if eot is not None:
        tools, fmt = _probe_tools(tokenizer, jinja, eot) if _uses_tools(jinja) else (False, None)
        return ChatTemplate(name, jinja, eot, False, tools, fmt)
    if tokenizer.eos_token is None:
        raise UserError("tokenizer has no eos_token and its template closes no turn; set eos_token")
    return ChatTemplate(name, jinja, tokenizer.eos_token, appends_eos=True)


def _adds_bos(tokenizer: Any) -> bool:
    """The tokenizer puts its BOS before a text of its own accord (as raw-text rows are tokenized); templates are
    rendered and tokenized without special tokens, so `plain` and the shipped ones write it themselves."""
    bos = tokenizer.bos_token_id
    return (
        bos is not None
        and tokenizer("a")["input_ids"][:1] == [bos] != tokenizer("a", add_special_tokens=False)["input_ids"][:1]
    )


def _uses_tools(jinja: str) -> bool:
    """A template renders tools when its Jinja reads the `tools` variable (transformers passes it)."""
    return re.search(r"\btools\b", jinja) is not None


def _probe_tools(tokenizer: Any, jinja: str, eot: str) -> tuple[bool, ToolFormat | None]:
    """Render a probe tool and call: (tools and calls both show up, the format calls come out in or None)."""
    msgs = [{"role": "user", "content": _PROBE_USER}, {"role": "assistant", "content": "", "tool_calls": [_PROBE_CALL]}]
    try:
        head = tokenizer.apply_chat_template(
            msgs[:1], chat_template=jinja, tokenize=False, add_generation_prompt=True, tools=[_PROBE_TOOL]
        )
        full = tokenizer.apply_chat_template(msgs, chat_template=jinja, tokenize=False, tools=[_PROBE_TOOL])
    except Exception:  # a template that refuses the probe (e.g. raise_exception) cannot be used with tools
        return False, None
    name = _PROBE_TOOL["function"]["name"]
    if not (full.startswith(head) and name in head and name in full[len(head) :]):
        return False, None  # it reads `tools` but shows neither the tool nor the call (e.g. mentions the word)
    reply = full[len(head) :].split(eot)[0]
    for fmt in ("hermes", "llama3_json"):
        _, calls = parse_tool_calls(reply, fmt)
        if [(c["name"], json.loads(c["arguments"])) for c in calls] == [(name, {"q": 7})]:
            return True, fmt
    return True, None


_PLAIN_VALUES = (str, int, float, bool)


def _plain(messages: list) -> bool:
    """Messages `apply_chat_template` hands to the template unchanged: dicts of plain values (no None, which it drops;
    no objects, which it converts; no reasoning field, which it copies under its other names)."""
    return all(
        # REASONING_KEYS: the fields transformers copies under each other's names before rendering
        type(m) is dict and not (m.keys() & REASONING_KEYS) and all(type(v) in _PLAIN_VALUES for v in m.values())
        for m in messages
    )


def _direct_renderer(tokenizer: Any, jinja: str) -> Callable[[list, bool], str] | None:
    """Render plain messages with transformers' own compiled template and arguments, skipping the per-conversation
    normalizing copies `apply_chat_template` makes (~40% of a batch's rendering); None when transformers lacks the
    compiler or a probe renders otherwise than `apply_chat_template` (then every render goes through it)."""
    try:
        from transformers.utils.chat_template_utils import _compile_jinja_template, _plain_template_data
    except ImportError:
        return None
    kwargs = _plain_template_data(dict(tokenizer.special_tokens_map))
    key = (jinja, repr(sorted(kwargs.items())))
    if key not in _DIRECT:
        compiled = _compile_jinja_template(jinja)

        def render(messages: list, add_generation_prompt: bool) -> str:
            return compiled.render(
                messages=messages, tools=None, documents=None, add_generation_prompt=add_generation_prompt, **kwargs
            )

        probes = [([{"role": "user", "content": "你好 hi"}, {"role": "assistant", "content": "好的", "weight": 1}], f)
                  for f in (False, True)] + [([{"role": "user", "content": "问"}], True)]  # fmt: skip
        try:
            same = all(
                render(ms, agp) == tokenizer.apply_chat_template(
                    ms, chat_template=jinja, tokenize=False, add_generation_prompt=agp
                )
                for ms, agp in probes
            )  # fmt: skip
        except Exception:  # a template that refuses a probe: keep to apply_chat_template
            same = False
        _DIRECT.clear()  # one template and tokenizer at a time
        _DIRECT[key] = render if same else None
    return _DIRECT[key]


_DIRECT: dict[tuple, Callable[[list, bool], str] | None] = {}
