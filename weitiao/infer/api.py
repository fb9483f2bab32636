"""The OpenAI request schema and the checks in front of `weitiao serve`: strict fields (an unknown or
unsupported one is a 400 naming it), valid Unicode, and an ASGI guard for the API key and body size. `KnownQuery`
is the route class of the console's and the arena's JSON APIs (not of the OpenAI routes, where clients add their own
parameters such as `api-version`).

Every refusal is an OpenAI-style error body whose `param` names the field at fault.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi import Request
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from weitiao.data.formats import join_text_parts


class _Strict(BaseModel):
    # unknown fields are refused by name (a typo like `max_tokns` must not be silently ignored); NaN and
    # ±Infinity, which Python's JSON reader accepts, are refused too; no type coercion ("0.5" is not a number,
    # true is not 1), as OpenAI's API answers such a field with a 400
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)

    @model_validator(mode="before")
    @classmethod
    def _null_is_default(cls, data: Any) -> Any:
        # null is "unset" for every optional field, at any depth (OpenAI declares temperature, n, stream,
        # stream_options.include_usage... nullable, default when null; vLLM's fields are Optional); a required
        # field's null and an unknown field stay refused, null or not
        if not isinstance(data, dict):
            return data
        fields = cls.model_fields
        return {k: v for k, v in data.items() if v is not None or k not in fields or fields[k].is_required()}


class _StreamOptions(_Strict):
    include_usage: bool = False


class Sampling(_Strict):
    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    # unset: the model folder's generation_config.json value, else OpenAI's 1, 1 and off (top_k), as vLLM
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1)  # vLLM extension; 0 or -1: off (vLLM's two spellings)
    min_p: float | None = Field(None, ge=0, le=1)  # vLLM extension; unset: the model folder's, else off
    # extension; HF divides logits by it, so tiny values overflow to inf and the sampler fails
    # unset: the model folder's generation_config.json value (1 when it has none), as HF generate and vLLM
    repetition_penalty: float | None = Field(None, ge=0.01, le=100)
    n: int = Field(1, ge=1)
    stream: bool = False
    stop: Annotated[str, Field(min_length=1)] | list[Annotated[str, Field(min_length=1)]] | None = Field(
        None, max_length=16
    )  # an empty stop string would end every reply at once
    seed: int | None = Field(None, ge=-(2**63), lt=2**64)  # torch.manual_seed's range
    stream_options: _StreamOptions | None = None
    presence_penalty: float | None = Field(0.0, ge=-2, le=2)  # OpenAI's definition, over the reply's tokens
    frequency_penalty: float | None = Field(0.0, ge=-2, le=2)
    min_tokens: int | None = Field(0, ge=0)  # vLLM extension: no stop token or stop string before this many
    ignore_eos: bool | None = False  # vLLM extension: end-of-turn/EOS tokens do not stop (stop_token_ids still do)
    stop_token_ids: list[Annotated[int, Field(ge=0)]] | None = Field(None, max_length=64)  # vLLM extension


# OpenAI fields this server does not implement, accepted only with a value that changes nothing
# (None: any value; null is always fine). Anything else is refused by name instead of ignored.
NO_OP_FIELDS: dict[str, tuple | None] = {
    "user": None,
    "store": None,
    "metadata": None,
    "service_tier": None,
    "logit_bias": ({},),
    "best_of": (1,),
    "suffix": ("",),
}


class _TextPart(_Strict):
    type: Literal["text"]  # only text parts: images and audio are refused, not dropped
    text: str


class _Function(_Strict):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON schema, shown to the model as given
    strict: bool | None = None  # true: arguments follow `parameters` (constrained decoding; weitiao.infer.schema)


class _Tool(_Strict):
    type: Literal["function"]
    function: _Function


class _CalledFunction(_Strict):
    name: str = Field(min_length=1)
    arguments: str  # a JSON object, as OpenAI sends it


class _ToolCall(_Strict):
    id: str | None = None
    type: Literal["function"] = "function"
    function: _CalledFunction


class _FunctionName(_Strict):
    name: str


class _NamedToolChoice(_Strict):
    type: Literal["function"]
    function: _FunctionName


class _JsonSchema(_Strict):
    # OpenAI's: name a-z, A-Z, 0-9, _ and -, at most 64; the reply follows `schema` (weitiao.infer.schema)
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_\-]+$")
    description: str | None = None
    json_schema: dict[str, Any] = Field(alias="schema")  # `schema` is a BaseModel method's name
    strict: bool | None = None  # true: OpenAI's strict rules; false or unset: JSON Schema's (still enforced)


class _ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: _JsonSchema | None = None


class _Message(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[_TextPart] | None = None
    # to the chat template; 400 where it reads none (a tool message's: its call's function). OpenAI's pattern: no
    # whitespace, none of < | \ / > (a name goes into the prompt, and the input screen reads only contents)
    name: str | None = Field(None, min_length=1, max_length=64, pattern=r"^[^\s<|\\/>]+$")
    tool_calls: list[_ToolCall] | None = None  # an assistant turn's calls
    tool_call_id: str | None = None  # the call a `tool` turn answers

    def text(self) -> str:
        if isinstance(self.content, list):  # a template reads a string: joined as training rows' parts are
            return join_text_parts(p.text for p in self.content)
        return self.content or ""


class ChatRequest(Sampling):
    messages: list[_Message] = Field(min_length=1)
    logprobs: bool | None = False  # null, as clients send for "unset", means the default
    top_logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool | None = False  # vLLM's chat echo is not implemented: true is refused
    tools: list[_Tool] | None = None  # rendered through the chat template; see weitiao.infer.tools
    tool_choice: Literal["none", "auto", "required"] | _NamedToolChoice | None = None
    response_format: _ResponseFormat | None = None
    parallel_tool_calls: bool | None = None  # false: one call at most (tools.first_call_end)
    # vLLM extensions: the prompt ends with the template's assistant header (a new turn), or, continuing, inside the
    # last message, which must be the assistant's (the reply goes on from its content); both true is a 400, as vLLM
    add_generation_prompt: bool = True
    continue_final_message: bool = False


class CompletionRequest(Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]  # OpenAI's: a text, texts, token ids, lists of token ids
    logprobs: int | None = Field(None, ge=0, le=20)  # the legacy form: alternatives per token
    echo: bool | None = False  # the prompt leads the text (and its tokens the log-probs, the first one null)


NO_KEY = "invalid or missing API key (Authorization: Bearer ...)"


def error(
    status: int, message: str, type_: str = "invalid_request_error", code: str | None = None, param: str | None = None
) -> JSONResponse:
    message = message.encode("utf-8", "backslashreplace").decode()  # a lone surrogate echoed from a body
    return JSONResponse({"error": {"message": message, "type": type_, "param": param, "code": code}}, status)


class BadRequest(Exception):
    """A 400 naming the request field (`param`) at fault."""

    def __init__(self, message: str, param: str | None = None, code: str | None = "invalid_field") -> None:
        super().__init__(message)
        self.message, self.param, self.code = message, param, code


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:  # a lone surrogate such as "\ud800", which JSON escapes can carry
        return False


def _lone_surrogate(data: Any) -> str | None:
    """Path of the first string or key that is not valid Unicode, or None. Iterative: bodies nest deep."""
    todo: list[tuple[tuple, Any]] = [((), data)]
    while todo:
        path, x = todo.pop()
        if isinstance(x, str) and not _encodable(x):
            return ".".join(map(str, path)) or "body"
        if isinstance(x, dict):
            for k, v in x.items():
                if not _encodable(k):
                    return ".".join(map(str, path)) or "body"
                todo.append(((*path, k), v))
        elif isinstance(x, list):
            todo.extend(((*path, i), v) for i, v in enumerate(x))
    return None


def _field_path(loc: tuple, data: Any) -> str:
    """`messages.0.content.0.text` from a pydantic error location, leaving out union-member tags
    (`str`, `list[_TextPart]`), which are no place in the body."""
    parts, cur = [], data
    for n, x in enumerate(loc):
        if isinstance(cur, list) and isinstance(x, int) and x < len(cur):
            parts.append(str(x))
            cur = cur[x]
        elif isinstance(cur, dict) and x in cur:
            parts.append(str(x))
            cur = cur[x]
        elif isinstance(cur, dict) and n == len(loc) - 1:  # a required field that is missing
            parts.append(str(x))
    return ".".join(parts)


class _Repeated(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique(pairs: list[tuple[str, Any]]) -> dict:
    """An object of the body; a key given twice is refused (json.loads kept the last value, dropping the first)."""
    obj = dict(pairs)
    if len(obj) < len(pairs):
        seen: set[str] = set()
        raise _Repeated(next(k for k, _ in pairs if k in seen or seen.add(k)))
    return obj


_BODY = json.JSONDecoder(object_pairs_hook=_unique)


def _decode(body: bytes) -> Any:
    """The body as json.loads reads bytes (UTF-8, or UTF-16/32 by their BOM); a key given twice raises _Repeated."""
    return _BODY.decode(body.decode(json.detect_encoding(body), "surrogatepass"))


def read_body(body: bytes, schema: type[Sampling]) -> Any:
    """The validated request, or `BadRequest` naming the field at fault."""
    try:
        data = _decode(body)
    except _Repeated as e:
        raise BadRequest(f"{e.key}: given twice in one object; send it once", e.key) from None
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise BadRequest(f"malformed JSON body: {e}", code=None) from None
    if not isinstance(data, dict):
        raise BadRequest("body: expected a JSON object", "body")
    bad = _lone_surrogate(data)
    if bad is not None:
        raise BadRequest(f"{bad}: not valid Unicode (a lone UTF-16 surrogate \\ud800-\\udfff)", bad)
    for name in sorted(NO_OP_FIELDS.keys() & data.keys()):
        allowed, value = NO_OP_FIELDS[name], data.pop(name)
        if value is not None and allowed is not None and value not in allowed:
            msg = f"{name}: not supported by this server; leave it out or send {json.dumps(allowed[0])}"
            raise BadRequest(msg, name)
    try:
        req = schema.model_validate(data)
    except ValidationError as e:
        err = max(e.errors(), key=lambda x: len(x["loc"]))  # the deepest is the most specific
        where = _field_path(err["loc"], data) or "body"
        msg = "unknown field (this server does not implement it)" if err["type"] == "extra_forbidden" else err["msg"]
        raise BadRequest(f"{where}: {msg}", where) from None
    if req.stream_options is not None and not req.stream:  # as OpenAI and vLLM: include_usage would be dropped
        raise BadRequest("stream_options: only allowed with stream: true", "stream_options")
    if None not in (req.max_tokens, req.max_completion_tokens) and req.max_tokens != req.max_completion_tokens:
        # vLLM takes max_completion_tokens and drops the other silently
        msg = (f"max_tokens: {req.max_tokens}, but max_completion_tokens: {req.max_completion_tokens}; send one "
               "(max_tokens is OpenAI's older name for it)")  # fmt: skip
        raise BadRequest(msg, "max_tokens")
    return req


def _replay(body: bytes, receive: Callable) -> Callable:
    """An ASGI `receive` giving the app the body a middleware already read, then what the server says next (the
    client's hang-up)."""
    replayed = False

    async def replay() -> dict:
        nonlocal replayed
        if replayed:
            return await receive()
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


class Guard:
    """ASGI middleware in front of every route: the API key (constant-time compare; /health stays open for
    probes) and the body-size limit (413 from Content-Length, or as soon as a chunked body passes it). The
    body is read here, at most `max_body` bytes, and replayed to the app."""

    def __init__(self, app: Any, api_key: str | None, max_body: int, flag: str = "--max-body-mb") -> None:
        self.app, self.max_body, self.flag = app, max_body, flag
        self.expected = f"Bearer {api_key}".encode() if api_key else None

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if self.expected is not None and scope["path"] != "/health":
            if not hmac.compare_digest(headers.get(b"authorization", b""), self.expected):
                await self._drain(receive, 0)
                return await error(401, NO_KEY, code="invalid_api_key")(scope, receive, send)
        too_big = error(413, f"request body over the server's limit of {self.max_body:,} bytes ({self.flag})")
        declared = headers.get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > self.max_body:
            await self._drain(receive, 0)
            return await too_big(scope, receive, send)
        chunks, size, more = [], 0, True
        while more:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            chunks.append(msg.get("body", b""))
            size += len(chunks[-1])
            more = msg.get("more_body", False)
            if size > self.max_body:
                chunks.clear()
                if more:
                    await self._drain(receive, size)
                return await too_big(scope, receive, send)
        await self.app(scope, _replay(b"".join(chunks), receive), send)

    async def _drain(self, receive: Callable, read: int) -> None:
        """Read and drop the rest of a refused body (up to 16x the limit) so the client gets the answer
        instead of a reset connection."""
        more = True
        while more and read <= 16 * self.max_body:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            read += len(msg.get("body", b""))
            more = msg.get("more_body", False)


def repeated_key(body: bytes) -> str | None:
    """The first key a JSON body gives twice in one object (json.loads keeps the last), or None; None too for a body
    that is no JSON: the route says what is wrong with it."""
    try:
        _decode(body)
    except _Repeated as e:
        return e.key
    except (ValueError, RecursionError):
        return None
    return None


class UniqueKeys:
    """ASGI middleware for the console and arena JSON routes: a body that gives a key twice in one object is a 400
    `{"error": ...}` naming it (FastAPI's parser kept the last value silently). The body is read and replayed."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or b"json" not in dict(scope["headers"]).get(b"content-type", b""):
            return await self.app(scope, receive, send)
        chunks, more = [], True
        while more:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            chunks.append(msg.get("body", b""))
            more = msg.get("more_body", False)
        body = b"".join(chunks)
        if body and (key := repeated_key(body)) is not None:
            resp = JSONResponse({"error": f"{key}: given twice in one object; send it once"}, status_code=400)
            return await resp(scope, receive, send)
        await self.app(scope, _replay(body, receive), send)


def _query_names(dependant: Any) -> list[str]:
    """The query parameters a route's function (and its dependencies) take, in signature order."""
    names = [p.alias for p in dependant.query_params] + [n for d in dependant.dependencies for n in _query_names(d)]
    return list(dict.fromkeys(names))


class KnownQuery(APIRoute):
    """An /api/ route that refuses, with a 400 `{"error": line}`, a query parameter its function does not take or one
    given twice: `?lmit=5` or `?offest=` would otherwise be dropped and the default silently used."""

    def get_route_handler(self) -> Any:
        handler, names = super().get_route_handler(), _query_names(self.dependant)
        if not self.path.startswith("/api/"):
            return handler  # a page itself: a stray `?utm_source=` changes nothing there

        async def checked(request: Request) -> Any:
            keys = request.query_params.keys()
            takes = f"{self.path} takes {', '.join(names)}" if names else f"{self.path} takes no query parameters"
            if unknown := sorted(set(keys) - set(names)):
                return JSONResponse({"error": f"unknown query parameter {unknown[0]!r}; {takes}"}, 400)
            if twice := sorted(k for k in set(keys) if len(request.query_params.getlist(k)) > 1):
                once = f"query parameter {twice[0]!r} is given more than once; give it once"
                return JSONResponse({"error": once}, 400)
            return await handler(request)

        return checked
