"""`weitiao serve`: an OpenAI-compatible HTTP server (FastAPI + uvicorn) with a batching queue.

    weitiao serve --model demo --port 8000          # then: OpenAI(base_url="http://127.0.0.1:8000/v1")

Endpoints: /v1/chat/completions and /v1/completions (stream and not, `n`, usage), /v1/models, /health.
Tools (`tools`, `tool_choice`, `tool` turns) and `response_format`: weitiao.infer.tools.

How a request flows:
1. A guard in front of every route (weitiao.infer.api) checks the API key (constant-time; /health stays
   open) and the body size (413 over `max_body_mb`, from Content-Length or while reading, never buffering more).
   The handler then validates the body (400 naming the field: bad JSON, unknown or unsupported fields,
   values out of range, a prompt over the context), runs the input screen and tokenizes, all in a
   thread so /health and streams keep answering, and appends a Job to the waiting list (429 when
   `max_queue` jobs wait).
2. One worker task owns the model. It takes the oldest waiting job plus later ones with the same
   sampling settings, up to `max_batch` rows (a job with `n` choices is `n` rows), and runs them as one
   left-padded, KV-cached `model.generate` in a thread, so the event loop keeps serving.
3. Every step a stopping criterion reads each row's new token, decodes it, and hands the text deltas to
   the jobs' asyncio queues. Streaming is real: batched rows stream token by token, and time-to-first-token
   is one prefill + one step, not the whole batch.
4. The same criterion ends rows early: end-of-turn/EOS token, a stop string, the job's own `max_tokens`,
   or a client that went away (streaming or not, a hang-up stops its rows, so it frees its slot).
5. Once half a batch's rows are done and compatible jobs wait, the batch stops; its live rows go back to
   the front of the queue and resume next to the newcomers from prompt + tokens so far (KV recomputed).
   This keeps batches full (a cheap stand-in for continuous batching); seeded requests are never paused.

Departures from `weitiao.infer.generate.generate`: it has no hook for per-step streaming, per-row limits,
cancellation or pausing, so `run_batch` calls `model.generate` itself with the same padding and sampling
rules. With an output filter set, a streamed choice arrives as one filtered delta at its end, because
the filter needs the whole text.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from transformers import LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from weitiao.data.templates import ChatTemplate, resolve_template
from weitiao.infer import tools as tooling
from weitiao.infer.api import BadRequest, ChatRequest, CompletionRequest, Guard, Sampling, error, read_body
from weitiao.infer.constrain import Constrain, MaskCache, TokenBytes


@dataclass
class ServeSettings:
    model_name: str = "weitiao"  # the id /v1/models reports and responses echo
    api_key: str | None = None  # when set, every route but /health needs `Authorization: Bearer <key>`
    max_batch: int = 8  # rows (choices) generated together in one batch
    max_queue: int = 64  # waiting jobs beyond which new requests get 429
    max_new_tokens: int = 256  # default and ceiling for max_tokens
    max_body_mb: float = 8.0  # request bodies above this get 413


@dataclass
class Job:
    prompt_ids: list[int]
    n: int
    max_tokens: int
    key: tuple  # sampling settings; only jobs with equal keys share a batch
    stop: list[str]
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: bool = False
    rows: list[_Row] = field(default_factory=list)  # its choices, kept across batches when paused
    constraint: Any = None  # a weitiao.infer.constrain.Pattern every choice must follow

    def width(self) -> int:
        """Rows it still needs in a batch."""
        return sum(not r.done for r in self.rows) if self.rows else self.n


class _Row:
    """One choice being generated: decodes its tokens and emits text deltas, holding back a possible stop."""

    def __init__(self, job: Job, index: int, tokenizer: Any, stop_ids: set[int]) -> None:
        self.job, self.index, self.tok, self.stop_ids = job, index, tokenizer, stop_ids
        self.outbox: list = []  # the running batch's, set by run_batch
        self.ids: list[int] = []
        self.sent = 0  # characters already emitted
        self.hold = max((len(s) for s in job.stop), default=1) - 1
        self.done = False

    def feed(self, token: int) -> None:
        if self.done:
            return
        if self.job.cancelled:
            self.done = True
            return
        if token in self.stop_ids:
            return self.finish(self.tok.decode(self.ids, skip_special_tokens=True), "stop")
        self.ids.append(token)
        text = self.tok.decode(self.ids, skip_special_tokens=True)
        cuts = [i for i in (text.find(s) for s in self.job.stop) if i >= 0]
        if cuts:
            return self.finish(text[: min(cuts)], "stop")
        if len(self.ids) >= self.job.max_tokens:
            return self.finish(text, "length")
        if text.endswith("\ufffd"):  # half of a multi-byte character: wait for the rest
            return
        safe = len(text) - self.hold
        if safe > self.sent:
            self.outbox.append((self.job, ("delta", self.index, text[self.sent : safe])))
            self.sent = safe

    def finish(self, text: str, reason: str) -> None:
        if len(text) > self.sent:
            self.outbox.append((self.job, ("delta", self.index, text[self.sent :])))
        self.outbox.append((self.job, ("done", self.index, reason, len(self.ids))))
        self.done = True


class _FeedRows(StoppingCriteria):
    """Called by `model.generate` after every step: feeds each row its new token, publishes the step's
    events in one hand-off to the event loop (one wake-up per step, not per row), returns which rows are done.
    When half the rows or more are done and `can_pause()` says compatible jobs wait, it stops the whole batch
    (`paused`) so the live rows can continue next to the newcomers instead of leaving slots idle."""

    def __init__(self, rows: list[_Row], outbox: list, publish: Callable, can_pause: Callable[[], bool]) -> None:
        self.rows, self.outbox, self.publish, self.can_pause = rows, outbox, publish, can_pause
        self.paused = False

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        for row, tok in zip(self.rows, input_ids[:, -1].tolist()):
            row.feed(tok)
        if self.outbox:
            self.publish(self.outbox[:])
            self.outbox.clear()
        done = [r.done for r in self.rows]
        live = len(done) - sum(done)
        if live and 2 * live <= len(done) and self.can_pause():
            self.paused = True
            done = [True] * len(done)
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


@torch.no_grad()
def run_batch(
    model: Any,
    tokenizer: Any,
    jobs: list[Job],
    stop_ids: set[int],
    publish: Callable[[list], None],
    can_pause: Callable[[], bool] = lambda: False,
    masks: MaskCache | None = None,
) -> list[Job]:
    """Generate the unfinished choices of `jobs` in one left-padded batch (blocking; runs in a worker thread).

    `publish([(job, event), ...])` receives each step's events: ("delta", index, text) and ("done", index,
    finish_reason, n_tokens). Returns the jobs paused with rows unfinished: a paused row resumes in a later
    batch from its prompt + the tokens it has so far (the KV cache is recomputed, as vLLM does on preemption).
    """
    outbox: list = []
    for job in jobs:
        job.rows = job.rows or [_Row(job, i, tokenizer, stop_ids) for i in range(job.n)]
    rows = [r for job in jobs for r in job.rows if not r.done]
    for row in rows:
        row.outbox = outbox
    prompts = [row.job.prompt_ids + row.ids for row in rows]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(stop_ids)
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    for r, p in enumerate(prompts):  # left padding keeps every prompt's end aligned
        input_ids[r, width - len(p) :] = torch.tensor(p)
        mask[r, width - len(p) :] = 1
    temperature, top_p, top_k, repetition_penalty, seed = jobs[0].key
    kw: dict[str, Any] = {"do_sample": temperature > 0}
    if temperature > 0:
        kw.update(temperature=temperature, top_p=top_p, top_k=top_k or None)
        if seed is not None:  # reproducible only when never paused
            torch.manual_seed(seed)
            can_pause = lambda: False  # noqa: E731
    device = next(model.parameters()).device
    feed = _FeedRows(rows, outbox, publish, can_pause)
    if masks is not None and any(row.job.constraint for row in rows):
        kw["logits_processor"] = LogitsProcessorList([Constrain(rows, masks)])
    model.generate(
        input_ids=input_ids.to(device),
        attention_mask=mask.to(device),
        max_new_tokens=max(row.job.max_tokens - len(row.ids) for row in rows),
        eos_token_id=sorted(stop_ids),
        pad_token_id=pad_id,
        repetition_penalty=repetition_penalty,
        stopping_criteria=StoppingCriteriaList([feed]),
        use_cache=True,
        **kw,
    )
    paused = []
    for row in rows:
        if row.done or row.job.cancelled:
            continue
        if feed.paused:
            paused += [row.job] if row.job not in paused else []
        else:  # ran to the batch's max_new_tokens without stopping (its own limit would have caught it)
            row.finish(tokenizer.decode(row.ids, skip_special_tokens=True), "length")
    if outbox:
        publish(outbox)
    return paused


def create_app(
    model: Any,
    tokenizer: Any,
    template: ChatTemplate,
    settings: ServeSettings | None = None,
    input_screen: Callable[[list[dict]], str | None] | None = None,
    output_filter: Callable[[str], str] | None = None,
) -> FastAPI:
    """The FastAPI app. `input_screen(messages)` returns a refusal reason or None (answered as a reply
    with finish_reason "content_filter", nothing generated); `output_filter(text)` rewrites each reply."""
    cfg = settings or ServeSettings()
    context = getattr(model.config, "max_position_embeddings", None) or tokenizer.model_max_length
    stop_ids = {tokenizer.convert_tokens_to_ids(template.eot), tokenizer.eos_token_id} - {None}
    token_bytes = TokenBytes.of(tokenizer, stop_ids)
    masks = MaskCache(token_bytes) if token_bytes else None  # constrained decoding (tool_choice, json_object)
    pending: list[Job] = []
    stats = {"running": 0, "served": 0, "cancelled": 0, "rejected": 0, "batches": 0, "paused": 0, "busy_s": 0.0}
    stats["generated_tokens"] = 0
    prep = ThreadPoolExecutor(2, thread_name_prefix="weitiao-prep")  # JSON, template, tokenizer: off the loop
    wake = asyncio.Event()

    async def worker() -> None:
        loop = asyncio.get_running_loop()

        def publish(events: list) -> None:  # called from the generate thread, once per step
            loop.call_soon_threadsafe(lambda: [job.events.put_nowait(ev) for job, ev in events])

        while True:
            while not pending:
                wake.clear()
                await wake.wait()
            # 1. the oldest job, then later ones with the same sampling settings, up to max_batch rows
            batch, rows = [], 0
            for job in list(pending):
                if job.cancelled:
                    pending.remove(job)
                elif not batch or (job.key == batch[0].key and rows + job.width() <= cfg.max_batch):
                    pending.remove(job)
                    batch.append(job)
                    rows += job.width()
            if not batch:
                continue
            # 2. one blocking batched generate, off the event loop; paused jobs go back to the front
            stats["running"], t0 = rows, time.perf_counter()
            stats["batches"] += 1

            def can_pause(key: tuple = batch[0].key) -> bool:  # in the generate thread; list() copies atomically
                return any(j.key == key and not j.cancelled for j in list(pending))

            before = sum(len(r.ids) for job in batch for r in job.rows)
            try:
                paused = await loop.run_in_executor(
                    None, run_batch, model, tokenizer, batch, stop_ids, publish, can_pause, masks
                )
                pending[:0] = paused
                stats["paused"] += len(paused)
            except Exception as e:  # a failed batch answers its jobs with an error, the server lives on
                for job in batch:
                    job.events.put_nowait(("error", f"generation failed: {e}"))
            stats["generated_tokens"] += sum(len(r.ids) for job in batch for r in job.rows) - before
            stats["running"] = 0
            stats["busy_s"] += time.perf_counter() - t0

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(worker())
        yield
        task.cancel()
        prep.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="weitiao", lifespan=lifespan)
    app.add_middleware(Guard, api_key=cfg.api_key, max_body=int(cfg.max_body_mb * 2**20))

    def tokenize(text: str, param: str) -> list[int]:
        # a prompt far over the context is refused from its head alone: tokenizing megabytes takes seconds
        head = 32 * context
        if len(text) > head and len(tokenizer(text[:head], add_special_tokens=False)["input_ids"]) > context + 32:
            raise BadRequest(f"{param}: more than {context} tokens, the model's context", param, "context")
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    def build_chat(body: bytes) -> tuple[ChatRequest, list[int], str | None, tooling.ChatPlan]:
        req = read_body(body, ChatRequest)
        plan = tooling.plan_chat(req, template)
        messages = plan.messages
        if plan.constraint is not None and masks is None:
            field = "tool_choice" if plan.tools else "response_format"
            raise BadRequest(f"{field}: constrained decoding needs a byte-level or SentencePiece tokenizer", field)
        try:
            prompt = template.render(tokenizer, messages, add_generation_prompt=True, tools=plan.tools)
        except Exception as e:  # e.g. a template that insists on alternating roles
            raise BadRequest(f"messages: the chat template refused them: {e}", "messages") from None
        ids = tokenize(prompt, "messages")  # first: the screen's regexes hold the GIL, keep megabytes from them
        return req, ids, input_screen(messages) if input_screen else None, plan

    def build_completion(body: bytes) -> tuple[CompletionRequest, list[int], str | None]:
        req = read_body(body, CompletionRequest)
        if isinstance(req.prompt, list) and len(req.prompt) != 1:
            raise BadRequest("prompt: give one string (lists of prompts are not supported)", "prompt")
        prompt = req.prompt if isinstance(req.prompt, str) else req.prompt[0]
        if not prompt:
            raise BadRequest("prompt: empty; give some text to continue", "prompt")
        ids = tokenize(prompt, "prompt")
        return req, ids, input_screen([{"role": "user", "content": prompt}]) if input_screen else None

    async def prepared(request: Request, build: Callable[[bytes], tuple]) -> tuple | JSONResponse:
        body = await request.body()  # already read (and size-checked) by Guard
        try:
            return await asyncio.get_running_loop().run_in_executor(prep, build, body)
        except BadRequest as e:
            return error(400, e.message, code=e.code, param=e.param)

    def make_job(req: Sampling, prompt_ids: list[int], field: str) -> Job | JSONResponse:
        if not prompt_ids:
            return error(400, f"{field}: no tokens; give some text", code="invalid_field", param=field)
        if len(prompt_ids) >= context:
            msg = f"{field}: the prompt is {len(prompt_ids)} tokens; the model's context is {context}"
            return error(400, msg, code="context", param=field)
        asked = req.max_completion_tokens or req.max_tokens
        if asked and len(prompt_ids) + asked > context:
            name = "max_completion_tokens" if req.max_completion_tokens else "max_tokens"
            msg = f"{name}: prompt ({len(prompt_ids)} tokens) + {name} ({asked}) exceeds the context of {context}"
            return error(400, msg, code="context", param=name)
        if req.n > cfg.max_batch:
            msg = f"n: at most {cfg.max_batch} (the server's max_batch)"
            return error(400, msg, code="invalid_field", param="n")
        if len(pending) >= cfg.max_queue:
            stats["rejected"] += 1
            return error(429, f"server busy: {len(pending)} requests waiting; retry later", "rate_limit_error")
        stop = [req.stop] if isinstance(req.stop, str) else [s for s in req.stop or [] if s]
        greedy = req.temperature == 0
        key = (req.temperature, 1.0 if greedy else req.top_p, 0 if greedy else req.top_k, req.repetition_penalty)
        max_tokens = min(asked or cfg.max_new_tokens, cfg.max_new_tokens, context - len(prompt_ids))
        return Job(prompt_ids, req.n, max_tokens, (*key, None if greedy else req.seed), stop)

    async def answer(
        request: Request,
        req: Sampling,
        prompt_ids: list[int],
        chat: bool,
        refusal: str | None,
        plan: tooling.ChatPlan | None = None,
    ) -> Any:
        created, rid = int(time.time()), ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        obj = "chat.completion" if chat else "text_completion"
        head = {"id": rid, "created": created, "model": req.model or cfg.model_name}

        def choice(i: int, text: str | None, reason: str | None, stream: bool) -> dict:
            if not chat:
                return {"index": i, "text": text or "", "logprobs": None, "finish_reason": reason}
            body = {"role": "assistant", "content": text} if not stream else ({"content": text} if text else {})
            return {"index": i, ("delta" if stream else "message"): body, "logprobs": None, "finish_reason": reason}

        def usage(done: int, n: int = len(prompt_ids)) -> dict:
            return {"prompt_tokens": n, "completion_tokens": done, "total_tokens": n + done}

        if refusal is not None:
            job = Job(prompt_ids, req.n, 0, (), [])
            for i in range(req.n):
                job.events.put_nowait(("delta", i, refusal))
                job.events.put_nowait(("done", i, "content_filter", 0))
        else:
            job = make_job(req, prompt_ids, "messages" if chat else "prompt")
            if isinstance(job, JSONResponse):
                return job
            job.constraint = plan.constraint if plan else None
            pending.append(job)
            wake.set()

        async def events() -> AsyncIterator[tuple]:
            left = job.n
            while left:
                ev = await job.events.get()
                left -= ev[0] == "done"
                yield ev
                if ev[0] in ("error", "gone"):
                    return

        if not req.stream:

            async def watch() -> None:  # the body is read, so the next message is the client's hang-up
                while (await request.receive())["type"] != "http.disconnect":
                    pass
                job.events.put_nowait(("gone",))

            watcher = asyncio.create_task(watch())
            texts, reasons, used = [""] * job.n, [None] * job.n, 0
            try:
                async for ev in events():
                    if ev[0] == "gone":  # nobody reads the answer: stop its rows like a dropped stream
                        stats["cancelled"] += 1
                        return error(499, "client closed the request")
                    if ev[0] == "error":
                        return error(500, ev[1], "server_error")
                    if ev[0] == "delta":
                        texts[ev[1]] += ev[2]
                    else:
                        reasons[ev[1]], used = ev[2], used + ev[3]
            finally:
                watcher.cancel()
                job.cancelled = True  # no-op when finished; frees the rows of a hang-up or a cancelled handler
            stats["served"] += 1
            if output_filter and refusal is None:
                texts = [output_filter(t) for t in texts]
            choices = [choice(i, t, r, False) for i, (t, r) in enumerate(zip(texts, reasons))]
            if plan and plan.tool_format and refusal is None:  # calls parsed out of each reply
                for c, t, r in zip(choices, texts, reasons):
                    c["message"], c["finish_reason"] = tooling.reply_with_calls(t, r, plan.tool_format)
            return JSONResponse({**head, "object": obj, "choices": choices, "usage": usage(used)})

        chunk_obj = "chat.completion.chunk" if chat else "text_completion"
        with_usage = bool(req.stream_options and req.stream_options.include_usage)

        def sse(choices: list[dict], **extra: Any) -> str:
            return "data: " + json.dumps({**head, "object": chunk_obj, "choices": choices, **extra}) + "\n\n"

        async def stream() -> AsyncIterator[str]:
            buffered, used, finished, out = [""] * job.n, 0, False, []
            filtering = output_filter is not None and refusal is None
            calls = [tooling.ToolStream(plan.tool_format) for _ in range(job.n)] if plan and plan.tool_format else None
            tail: list[str] = []
            if chat:
                out = [sse([{**choice(i, None, None, True), "delta": {"role": "assistant"}}]) for i in range(job.n)]
            try:
                async for ev in events():
                    if ev[0] == "error":
                        out.append(f"data: {json.dumps({'error': {'message': ev[1], 'type': 'server_error'}})}\n\n")
                        break
                    if ev[0] == "delta" and calls and refusal is None:  # text that may be a call is held back
                        ev = ("delta", ev[1], calls[ev[1]].feed(ev[2]))
                    elif ev[0] == "done" and calls and refusal is None:
                        rest, made = calls[ev[1]].finish()
                        if filtering:
                            buffered[ev[1]] += rest
                        elif rest:
                            out.append(sse([choice(ev[1], rest, None, True)]))
                        head_ = choice(ev[1], None, None, True)
                        tail = [
                            sse([{**head_, "delta": {"tool_calls": [{"index": k, **c}]}}]) for k, c in enumerate(made)
                        ]
                        ev = (*ev[:2], "tool_calls" if made else ev[2], *ev[3:])
                    if ev[0] == "delta" and filtering:
                        buffered[ev[1]] += ev[2]
                    elif ev[0] == "delta":
                        if ev[2]:
                            out.append(sse([choice(ev[1], ev[2], None, True)]))
                    else:
                        used += ev[3]
                        if filtering and buffered[ev[1]]:
                            out.append(sse([choice(ev[1], output_filter(buffered[ev[1]]), None, True)]))
                        out += tail  # the choice's tool_calls deltas, after its content
                        tail = []
                        out.append(sse([choice(ev[1], None, ev[2], True)]))
                    if job.events.empty():  # send what has piled up in one write
                        yield "".join(out)
                        out = []
                if with_usage:
                    out.append(sse([], usage=usage(used)))
                yield "".join(out) + "data: [DONE]\n\n"
                finished = True
                stats["served"] += 1
            finally:
                if not finished:  # the client went away (or the batch failed): stop its rows
                    stats["cancelled"] += 1
                job.cancelled = True

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        ready = await prepared(request, build_chat)
        return ready if isinstance(ready, JSONResponse) else await answer(request, *ready[:2], True, *ready[2:])

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        ready = await prepared(request, build_completion)
        return ready if isinstance(ready, JSONResponse) else await answer(request, *ready[:2], False, ready[2])

    @app.get("/v1/models")
    async def models() -> Any:
        model_card = {"id": cfg.model_name, "object": "model", "created": 0, "owned_by": "weitiao"}
        return {"object": "list", "data": [model_card]}

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": cfg.model_name, "queued": len(pending), "context": context, **stats}

    return app


def serve(
    model: str | None = None,
    adapter: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    max_batch: int = 8,
    max_queue: int = 64,
    max_new_tokens: int = 256,
    quant: str | None = None,
    template: str = "auto",
    model_name: str | None = None,
    pii: str | None = None,
    screen: str | None = None,
    max_body_mb: float = 8.0,
) -> None:
    """Load the model (+ adapter) and serve it until Ctrl-C; `pii` = redact|block filters replies;
    `screen` = "default" or a YAML file turns on the prompt-injection input screen (weitiao.safety.screen).
    `api_key` defaults to $WEITIAO_API_KEY (a key on the command line shows in `ps`)."""
    import uvicorn

    from weitiao.infer.chat import load_chat_model
    from weitiao.models.load import resolve_path

    m, tok = load_chat_model(resolve_path(model) if model else None, adapter, quant)
    name = model_name or (adapter or model or "demo").rstrip("/").split("/")[-1]
    api_key = api_key or os.environ.get("WEITIAO_API_KEY") or None
    settings = ServeSettings(name, api_key, max_batch, max_queue, max_new_tokens, max_body_mb)
    hook = None
    if pii:
        from weitiao.safety.pii import output_filter

        hook = output_filter(pii)
    guard = None
    if screen:
        from weitiao.safety.screen import Screen, load_screen_config

        guard = Screen(load_screen_config(screen))
    app = create_app(m, tok, resolve_template(tok, template), settings, input_screen=guard, output_filter=hook)
    uvicorn.run(app, host=host, port=port, log_level="warning")
