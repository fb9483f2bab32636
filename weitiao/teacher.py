"""Teacher client: any OpenAI-compatible endpoint, with a disk cache, retries and concurrency.

The default teacher is the local server (`weitiao serve --model demo` → http://127.0.0.1:8000/v1).
Every reply is cached on disk, one JSON file per request, so a re-run after a crash or a dead teacher
asks only what is still missing:

    t = Teacher("http://127.0.0.1:8000/v1", "demo", cache_dir=".weitiao_cache/teacher")
    replies = t.chat_many([[{"role": "user", "content": "你好"}]])   # str or TeacherError per request

Replies meant as JSON are read with `weitiao.json_reply.parse_json_reply` (fences, prose, repairs).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai

from weitiao.errors import UserError
from weitiao.io import atomic_write_text
from weitiao.progress import progress_bar
from weitiao.secrets import redact


class TeacherError(Exception):
    """A request the teacher could not answer (after retries), with the URL and the reason in one line.

    Credentials in the message (URL userinfo, api_key=/token= parameters) are redacted: these lines
    end up in rejects files and on screen."""

    def __init__(self, message: str) -> None:
        super().__init__(redact(message))


# ---------------------------------------------------------------------------------------------- client


class Teacher:
    """OpenAI-compatible chat client with a disk cache, retries with backoff + jitter, and a thread pool."""

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str = "OPENAI_API_KEY",
        concurrency: int = 4,
        retries: int = 3,
        timeout: float = 60.0,
        cache_dir: str | Path | None = None,
        temperature: float = 0.7,
        max_tokens: int = 512,
        seed: int | None = 0,
        backoff: float = 0.5,
        role: str = "teacher",
        flag: str = "--teacher-url",
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.role, self.flag = role, flag  # what its errors call it, and the option that sets its URL
        self.model = model
        self.concurrency = max(1, concurrency)
        self.retries = max(0, retries)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.defaults: dict[str, Any] = {"temperature": temperature, "max_tokens": max_tokens, "seed": seed}
        self.backoff = backoff  # first wait in seconds; doubles per retry, plus up to 50% jitter
        self.http_calls = 0  # requests actually sent (cache hits send none)
        self.cache_hits = 0  # replies read from the cache (keyed on model and request, not on the URL)
        self._lock = threading.Lock()
        self._down: str | None = None  # in chat_many, set once the endpoint proved unreachable: the rest fail fast
        self._in_batch = False
        self.api_key_env = api_key_env
        key = os.environ.get(api_key_env) or "none"  # local servers accept any key
        self._client = openai.OpenAI(base_url=self.base_url, api_key=key, max_retries=0, timeout=timeout)

    # 1. cache ---------------------------------------------------------------------------------------
    def request(self, messages: list[dict], **overrides: Any) -> dict[str, Any]:
        """The request body (minus the URL): model, messages and sampling params, None values dropped."""
        params = {**self.defaults, **overrides}
        return {"model": self.model, "messages": messages, **{k: v for k, v in params.items() if v is not None}}

    def cache_path(self, body: dict[str, Any]) -> Path | None:
        """Where the reply to `body` is cached: sha256 of the canonical JSON (the base URL is not part of it)."""
        if self.cache_dir is None:
            return None
        key = hashlib.sha256(json.dumps(body, ensure_ascii=False, sort_keys=True).encode()).hexdigest()
        return self.cache_dir / key[:2] / f"{key}.json"

    def cached(self, messages: list[dict], **overrides: Any) -> str | None:
        """The cached reply to this request, or None."""
        path = self.cache_path(self.request(messages, **overrides))
        if path is None or not path.exists():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))["reply"]
        except (ValueError, KeyError):  # a damaged entry is asked again, not trusted
            return None

    # 2. one request ---------------------------------------------------------------------------------
    def chat(self, messages: list[dict], **overrides: Any) -> str:
        """The assistant reply to `messages` (from cache if asked before); raises TeacherError after retries."""
        hit = self.cached(messages, **overrides)
        if hit is not None:
            with self._lock:
                self.cache_hits += 1
            return hit
        body = self.request(messages, **overrides)
        reply = self._send(body)
        path = self.cache_path(body)
        if path is not None:
            atomic_write_text(path, json.dumps({"request": body, "reply": reply}, ensure_ascii=False, indent=1))
        return reply

    def _send(self, body: dict[str, Any]) -> str:
        """POST with our own retry loop: retry connection errors, timeouts, 429 and 5xx; fail at once on 4xx."""
        where = f"{self.role} {redact(self.base_url)} (model {self.model!r})"
        for attempt in range(self.retries + 1):
            if self._down:
                raise TeacherError(self._down)
            try:
                with self._lock:
                    self.http_calls += 1
                r = self._client.chat.completions.create(**body)
                choices = getattr(r, "choices", None)  # a proxy's HTML page comes back as a plain str
                if not isinstance(choices, list):
                    raise TeacherError(f"{where}: not an OpenAI chat completion: {str(r)[:120]!r}")
                # the client builds its objects without validating: a choice may lack `message`, content be a number
                message = getattr(choices[0], "message", None) if choices else None
                text = getattr(message, "content", None)
                if text is None:
                    raise TeacherError(f"{where}: empty reply (no choices, no message or no content)")
                if not isinstance(text, str):
                    raise TeacherError(f"{where}: reply content is {type(text).__name__} {str(text)[:60]!r}, not text")
                return text
            except ValueError as e:  # a 200 whose body is cut-off or broken JSON (the client raises JSONDecodeError)
                raise TeacherError(f"{where}: bad response: body is not valid JSON ({e})") from None
            except openai.APIConnectionError as e:  # also APITimeoutError
                reason = "timed out" if isinstance(e, openai.APITimeoutError) else "cannot connect"
                last = f"{where}: {reason}; is it running? (start one with `weitiao serve`, or set {self.flag})"
                transient, down = True, not isinstance(e, openai.APITimeoutError)
            except openai.APIStatusError as e:
                msg = _error_message(e)
                hint = f" (set ${self.api_key_env})" if e.status_code in (401, 403) else ""
                last = f"{where}: HTTP {e.status_code}: {msg}{hint}"
                transient, down = e.status_code == 429 or e.status_code >= 500, False
            except openai.OpenAIError as e:  # e.g. a reply that is not an OpenAI chat completion
                raise TeacherError(f"{where}: bad response: {str(e).splitlines()[0][:200]}") from None
            if not transient:
                raise TeacherError(last)
            if attempt < self.retries:
                time.sleep(self.backoff * 2**attempt * (1 + 0.5 * random.random()))
        if down and self._in_batch:  # unreachable after all retries: the other requests need not wait theirs out
            self._down = last + f" (after {self.retries + 1} tries)"
        raise TeacherError(last + f" (after {self.retries + 1} tries)")

    # 3. many requests -------------------------------------------------------------------------------
    def chat_many(
        self, requests: list[list[dict]], desc: str = "teacher", progress: bool = True, **overrides: Any
    ) -> list[str | TeacherError]:
        """Replies in input order; a failed item is its TeacherError (the rest are kept and cached)."""
        self._down, self._in_batch = None, True
        out: list[str | TeacherError] = [TeacherError("not asked")] * len(requests)
        bar = progress_bar(progress)
        failed = []

        def one(i: int) -> None:
            try:
                out[i] = self.chat(requests[i], **overrides)
            except TeacherError as e:
                out[i] = e
                failed.append(i)  # list.append is atomic under the GIL
            bar.update(task, advance=1, info=f"failed {len(failed)}" if failed else "")

        with bar:
            task = bar.add_task(desc, total=len(requests), info="")
            try:
                with ThreadPoolExecutor(self.concurrency) as pool:
                    list(pool.map(one, range(len(requests))))
            finally:
                self._down, self._in_batch = None, False
        return out

    def answered_none(self, errors: list[Any], what: str, after: str = "") -> UserError:
        """The one line for a run this model answered none of its requests in (`errors`, one per request): its table
        of blanks and exit 0 would read as a judged or generated result."""
        return UserError(
            f"{self.flag} {redact(self.base_url)}: the {self.role} answered none of the {len(errors)} {what} "
            f"({errors[0]}){after}"
        )


def _error_message(e: openai.APIStatusError) -> str:
    """The server's error message, one line."""
    body = e.body if isinstance(e.body, dict) else {}
    err = body.get("error", body) if isinstance(body, dict) else {}
    msg = err.get("message") if isinstance(err, dict) else None
    return str(msg or e.message or "").splitlines()[0][:200] if (msg or e.message) else "(no message)"
