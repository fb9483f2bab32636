"""`weitiao serve`: an OpenAI-compatible HTTP server (FastAPI + uvicorn) with a batching queue.

    weitiao serve --model demo --port 8000          # then: OpenAI(base_url="http://127.0.0.1:8000/v1")
    weitiao serve --adapter a=runs/a --adapter b=runs/b   # base + two LoRA adapters, picked by `model`

Endpoints: /v1/chat/completions and /v1/completions (stream and not, `n`, usage, log-probs), /v1/models,
/v1/models/{id}, /health. A `model` that is not served is a 404 (model_not_found); a field this server does not
implement is a 400 naming it, never ignored. Tools (`tools`, `tool_choice`, `tool` turns) and `response_format`:
weitiao.infer.tools.

How a request flows:
1. A guard in front of every route (weitiao.infer.api) checks the API key (constant-time; /health stays
   open) and the body size (413 over `max_body_mb`, from Content-Length or while reading, never buffering more).
   The handler then validates the body (400 naming the field: bad JSON, unknown or unsupported fields,
   values out of range, a prompt over the context, max_tokens over `max_new_tokens`), runs the input
   screen and tokenizes, all in a thread so /health and streams keep answering, and appends a Job to the
   waiting list (429 when `max_queue` jobs wait).
2. One engine thread owns the model (`weitiao.infer.generate.Engine`, continuous batching). Between two
   tokens it admits the oldest waiting jobs whose rows (a job with `n` choices is `n` rows) fit next to
   those generating, up to `max_batch` rows, whatever their sampling settings or adapter. Their prompts are
   prefilled at most `prefill_chunk` tokens per tick, between the decode steps of the running rows, and
   then join the running batch; the event loop keeps serving meanwhile.
3. Every step each row's logits go through its own settings (`weitiao.infer.generate.Sampler`: bans from
   min_tokens, from a tool_choice/response_format constraint (`weitiao.infer.constrain.Constrain`) and from the
   model folder's generation_config.json (`weitiao.infer.generate.folder_settings`), penalties,
   temperature, top-k/top-p, its own generator when seeded), then the new token is decoded and the text
   deltas (with their log-probs) go to the jobs' asyncio queues. Streaming is real: rows stream token by
   token, and time-to-first-token is the newcomer's prefill plus one step, not the running rows' replies.
4. A row ends on an end-of-turn/EOS token or one of its stop_token_ids (counted in usage, as OpenAI and
   vLLM do), a stop string, its own `max_tokens`, or a client that went away (streaming or not, a hang-up
   stops its rows, so it frees its slot); a finished row leaves the batch at once and its slot goes to the
   next waiting job. A step that raises is retried row by row (`weitiao.infer.generate.Engine.recover`): only
   the job whose row fails alone gets the error (/health: `failed`). A client that is connected but reads
   slowly is no hang-up: TCP back-pressure only holds its deltas in its queue, and its row keeps generating.
   /health counts `batches` (prompt groups prefilled), `joined` (rows that joined a batch already decoding),
   `steps` and `kv_rows` (rows holding a KV cache now).

With an output filter set, a streamed choice arrives as one filtered delta at its end, because the filter
needs the whole text, and log-probs are refused (they would show what the filter hides).
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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from weitiao.data.decode import decode_whole
from weitiao.data.templates import ChatTemplate, late_system, resolve_template
from weitiao.errors import UserError
from weitiao.infer import tools as tooling
from weitiao.infer.api import BadRequest, ChatRequest, CompletionRequest, Guard, Sampling, error, read_body
from weitiao.infer.constrain import Constrain, MaskCache, TokenBytes
from weitiao.infer.generate import (
    Engine,
    KVBatch,
    RowSampling,
    beyond_vocab,
    end_ids,
    folder_repetition_penalty,
    folder_sampling,
    folder_settings,
    logprob_entries,
)
from weitiao.infer.logprobs import LogprobFormat, TextOffsets


@dataclass
class ServeSettings:
    model_name: str = "weitiao"  # the id /v1/models reports and responses echo
    api_key: str | None = None  # when set, every route but /health needs `Authorization: Bearer <key>`
    max_batch: int = 8  # rows (choices) generated together in one batch
    max_queue: int = 64  # waiting jobs beyond which new requests get 429
    max_new_tokens: int = 256  # default and ceiling for max_tokens
    max_body_mb: float = 8.0  # request bodies above this get 413
    adapters: tuple[str, ...] = ()  # peft adapters loaded in the model, each served under its own name next
    # to the base (model_name), as vLLM's multi-LoRA; empty: the model as it is, under model_name
    prefill_chunk: int = 512  # prompt tokens prefilled per engine tick, so a long prompt does not stall streams


@dataclass(eq=False)  # a job is itself: compared and hashed by identity
class Job:
    prompt_ids: list[int]
    n: int
    max_tokens: int
    stop: list[str]
    sampling: RowSampling = field(default_factory=RowSampling)
    seed: int | None = None  # choice i draws from its own generator seeded seed + i (as vLLM's n > 1)
    logprobs: int | None = None  # log-probs of each reply token with this many alternatives; None: off
    prompt_logprobs: int | None = None  # the same for the prompt's tokens (completions' echo)
    min_tokens: int = 0
    ignore_eos: bool = False
    stop_token_ids: frozenset[int] = frozenset()
    adapter: str = "__base__"  # the peft adapter of its rows (served model name), when several are served
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: bool = False
    prompt_scored: bool = False
    prompt_skip: int = 0  # leading prompt ids the echo does not show (a BOS the tokenizer adds to a raw prompt)
    rows: list[_Row] = field(default_factory=list)  # its choices, made when the engine takes the job
    constraint: Any = None  # a weitiao.infer.constrain.Pattern every choice must follow
    one_call: str | None = None  # a tool format: each choice ends where its first call closes (tools.first_call_end)
    continues: bool = False  # a completion (or continue_final_message): its text continues the prompt's (decoded
    # after the prompt's last tokens)
    first: int = 0  # the `index` of its first choice: prompt k of a batch of completions answers k*n..k*n+n-1


@dataclass
class Prompt:
    """One prompt of a request: its ids, the text an echo shows, the input screen's refusal (None: answer it)."""

    ids: list[int]
    echo: str = ""
    refusal: str | None = None
    skip: int = 0  # leading ids the echo does not show (the BOS added to a text prompt)


class _Row:
    """One choice being generated (a `weitiao.infer.generate.Row`): decodes its tokens and emits text deltas
    (with the log-probs of the tokens behind them), holding back a possible stop string."""

    def __init__(self, job: Job, index: int, tokenizer: Any, eos_ids: set[int], device: Any, masks: Any) -> None:
        self.job, self.index, self.tok, self.device = job, index, tokenizer, device
        self.choice = job.first + index  # its `index` in the answer (`index` seeds it: seed + i per prompt, as vLLM)
        self.prompt_ids, self.adapter, self.logprobs = job.prompt_ids, job.adapter, job.logprobs
        self.stops = set(job.stop_token_ids) | (set() if job.ignore_eos else eos_ids)
        generator = None
        if job.seed is not None and job.sampling.temperature > 0:
            generator = torch.Generator(device).manual_seed((job.seed + index) % 2**64)
        self.sampling = replace(job.sampling, generator=generator)
        # tool_choice required/named, response_format json_object/json_schema: the pattern masks this row's logits
        self.constrain = Constrain([self], masks) if job.constraint is not None and masks is not None else None
        self.outbox: list = []  # the worker's, set at admission
        self.ids: list[int] = []
        self.lps: list = []  # log-prob entries not yet sent
        self.starts: list[int] = []  # where each of their tokens begins in the text (characters)
        self.sent = 0  # characters already emitted
        self.scanned = 0  # characters already searched for stop strings
        self.hold = max((len(s) for s in job.stop), default=1) - 1
        self.finished = False
        # a completion is decoded after the prompt's last tokens, as vLLM: decoded alone, a SentencePiece reply
        # would lose the space of its first word ("▁Paris" → "Paris"), and prompt + text would read "isParis"
        self.context = job.prompt_ids[-6:] if job.continues else []
        self.head = decode_whole(tokenizer, self.context)

    def text(self) -> str:
        """The text of the reply's tokens so far (whole characters)."""
        if not self.context:
            return decode_whole(self.tok, self.ids)
        full = decode_whole(self.tok, self.context + self.ids)
        return full[len(self.head) :] if full.startswith(self.head) else decode_whole(self.tok, self.ids)

    @property
    def done(self) -> bool:
        """Finished, or its client went away (the engine then drops the row without feeding it)."""
        return self.finished or self.job.cancelled

    def feed(self, token: int, logprob: tuple | None = None) -> None:
        if self.done:
            return
        if logprob is not None:
            self.lps.append(logprob)
            self.starts.append(self.scanned)  # the text so far: this token's text begins there
        if token in self.stops:  # counted in usage (as OpenAI and vLLM do), never shown
            return self.finish(self.text(), "stop", 1)
        self.ids.append(token)
        text = self.text()
        # a stop string is looked for only where it would end in this token's text, as vLLM: one shown
        # before min_tokens stays shown, and the cut can never fall inside text already sent
        cuts = []
        if len(self.ids) >= self.job.min_tokens:
            found = (text.find(s, max(0, self.scanned - len(s) + 1)) for s in self.job.stop)
            cuts = [i for i in found if i >= 0]
        # one call wanted (parallel_tool_calls false, a named tool_choice): a second is cut off, as by a stop string;
        # looked for at every token, min_tokens or not (as a complete forced call may stop), so the cut always falls
        # in this token's text, never in text already sent
        if self.job.one_call and (end := tooling.first_call_end(text, self.job.one_call)) is not None:
            cuts.append(end)
        self.scanned = len(text)
        if cuts:
            return self.finish(text[: min(cuts)], "stop", cut=True)
        if len(self.ids) >= self.job.max_tokens:
            return self.finish(text, "length")
        if text.endswith("\ufffd"):  # half of a multi-byte character: wait for the rest
            return
        safe = len(text) - self.hold
        if safe > self.sent:
            self.outbox.append((self.job, ("delta", self.choice, text[self.sent : safe], self._take(safe))))
            self.sent = safe

    def _take(self, end: int) -> list:
        """The pending log-probs of the tokens that begin before character `end`; the others wait: a held-back
        token may turn out to be part of a stop string."""
        k = next((i for i, s in enumerate(self.starts) if s >= end), len(self.starts))
        taken, self.lps, self.starts = self.lps[:k], self.lps[k:], self.starts[k:]
        return taken

    def finish(self, text: str, reason: str, stop_token: int = 0, cut: bool = False) -> None:
        """`cut`: a stop string cut `text`; the log-probs of the tokens past the cut are dropped with their text, so
        they cover the returned text (a token that straddles the cut is kept: its text begins in the reply)."""
        lps = self._take(len(text)) if cut else self.lps
        if len(text) > self.sent or lps:
            self.outbox.append((self.job, ("delta", self.choice, text[self.sent :], lps)))
        self.lps, self.starts = [], []
        self.outbox.append((self.job, ("done", self.choice, reason, len(self.ids) + stop_token)))
        self.finished = True


def bans(rows: list[_Row], vocab: int) -> torch.Tensor | None:
    """[rows, vocab] True where a row may not go: its constraint's pattern (tool_choice, response_format), and its
    stop tokens before min_tokens, except where a complete constrained reply may only stop."""
    early = [len(r.ids) < r.job.min_tokens and bool(r.stops) for r in rows]
    if not any(early) and not any(r.constrain for r in rows):
        return None
    out = torch.zeros(len(rows), vocab, dtype=torch.bool)
    for i, row in enumerate(rows):
        if row.constrain is not None:
            out[i] = row.constrain.ban(vocab)[0]
            early[i] = early[i] and not row.constrain.complete(0)
        if early[i]:
            out[i, list(row.stops)] = True
    return out.to(rows[0].device)


def _pad_id(tokenizer: Any, stop_ids: set[int]) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(stop_ids)


def added_prefix(tokenizer: Any) -> list[int]:
    """The ids the tokenizer puts before a text of its own accord (Llama's BOS), [] for most chat models; what it
    appends (an EOS some configs add) is left out: a prompt to continue must not end."""
    full, plain = tokenizer("a")["input_ids"], tokenizer("a", add_special_tokens=False)["input_ids"]
    at = next((i for i in range(len(full) - len(plain) + 1) if full[i : i + len(plain)] == plain), 0)
    return list(full[:at])


def admit(model: Any, tokenizer: Any, job: Job, stop_ids: set[int], outbox: list, adapters: bool, masks: Any) -> list:
    """The rows of `job` for the engine; an echoing job's prompt log-probs go to `outbox` first (a prefill of
    its own, so only this prompt's logits [len, vocab] are kept)."""
    device = next(model.parameters()).device
    job.rows = [_Row(job, i, tokenizer, stop_ids, device, masks) for i in range(job.n)]
    for row in job.rows:
        row.outbox = outbox
    if job.prompt_logprobs is not None and not job.prompt_scored:
        p, pad_id = job.prompt_ids, _pad_id(tokenizer, stop_ids)
        with torch.no_grad():
            batch = KVBatch(model, [p], pad_id, [job.adapter] if adapters else None)
            logits = batch.prefill(all_logits=True)[0, :-1]
        entries = [(p[0], None, None)]
        for a in range(0, len(p) - 1, 256):  # position a's logits predict token a + 1; in slices, to bound memory
            raw = logits[a : a + 256].float().log_softmax(-1)
            entries += logprob_entries(raw, torch.tensor(p[a + 1 : a + 257], device=device), job.prompt_logprobs)
        outbox.append((job, ("prompt", job.first, entries[job.prompt_skip :])))
        job.prompt_scored = True
    return job.rows


def run_batch(
    model: Any,
    tokenizer: Any,
    jobs: list[Job],
    stop_ids: set[int],
    publish: Callable[[list], None],
    adapters: bool = False,
    masks: MaskCache | None = None,
    prefill_chunk: int = 512,
) -> None:
    """Generate every choice of `jobs` to its end through one `Engine` (blocking), as the server's worker does
    but without newcomers. `publish([(job, event), ...])` receives each tick's events: ("delta", index, text,
    logprob entries), ("done", index, finish_reason, n_tokens) and, once per echoing job, ("prompt", first, entries)
    (`index`: the choice's, `job.first` + its row).
    Log-probs are of the raw model distribution (log_softmax of the logits before bans, penalties,
    temperature, top-k/top-p), as vLLM's default. With `adapters`, each row runs its job's adapter."""
    outbox: list = []
    rows = sum(j.n for j in jobs)
    engine = Engine(model, _pad_id(tokenizer, stop_ids), rows, prefill_chunk, adapters, bans)
    for job in jobs:
        engine.add(admit(model, tokenizer, job, stop_ids, outbox, adapters, masks))
    while engine.live():
        engine.tick()
        if outbox:
            publish(outbox[:])
            outbox.clear()


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
    stop_ids = end_ids(model, tokenizer, template)  # as `weitiao chat` and HF generate stop
    vocab = model.config.vocab_size
    vocab_ids = min(vocab, len(tokenizer))  # a token-id prompt's ids: the model embeds them, the tokenizer decodes them
    bos = added_prefix(tokenizer)  # a raw prompt gets it, as raw-text training (chat._raw_ids) and vLLM give it
    served = [cfg.model_name, *cfg.adapters]
    cards = [{"id": cfg.model_name, "object": "model", "created": 0, "owned_by": "weitiao"}]  # GET /v1/models
    cards += [{**cards[0], "id": a, "parent": cfg.model_name} for a in cfg.adapters]

    def unknown_model(name: str) -> JSONResponse:
        msg = f"The model `{name}` does not exist. Served: {', '.join(served)} (GET /v1/models)"
        return error(404, msg, code="model_not_found", param="model")

    fmt = LogprobFormat(tokenizer)
    # the model folder's generation_config.json as `weitiao chat` and HF generate apply it (min_p, no_repeat_ngram_size,
    # suppress_tokens, bad_words_ids); a key the loop cannot honour stops the server here, as it stops chat
    folder, folder_bans = folder_settings(model, RowSampling(), 0, True)
    folder_rep = folder_repetition_penalty(model)  # a request's default repetition_penalty
    # a request's default temperature, top_p and top_k: the folder's, else OpenAI's (as vLLM's server)
    defaults = {"temperature": 1.0, "top_p": 1.0, "top_k": 0, **folder_sampling(model)}

    def banned(rows: list[_Row], vocab: int) -> torch.Tensor | None:
        own, theirs = bans(rows, vocab), folder_bans(rows, vocab) if folder_bans else None
        return theirs if own is None else own if theirs is None else own | theirs

    token_bytes = TokenBytes.of(tokenizer, stop_ids)
    masks = MaskCache(token_bytes) if token_bytes else None  # constrained decoding (tool_choice, response_format)
    pending: list[Job] = []  # waiting for rows in the engine; appended here, taken by the engine thread
    engine = Engine(model, _pad_id(tokenizer, stop_ids), cfg.max_batch, cfg.prefill_chunk, bool(cfg.adapters), banned)
    stats = {"running": 0, "served": 0, "cancelled": 0, "rejected": 0, "busy_s": 0.0, "generated_tokens": 0}
    stats["failed"] = 0  # requests answered with a generation error (a 500, or an error event in their stream)
    stats |= {"batches": 0, "joined": 0, "steps": 0}  # prefilled groups, rows joining a decoding batch, steps
    stats["kv_rows"] = 0  # rows holding a KV cache in the engine (a hung-up row's goes at the next token)
    prep = ThreadPoolExecutor(2, thread_name_prefix="weitiao-prep")  # JSON, template, tokenizer: off the loop
    wake = asyncio.Event()

    async def worker() -> None:
        loop = asyncio.get_running_loop()
        outbox: list = []

        def publish(events: list) -> None:  # called from the engine thread, once per tick
            loop.call_soon_threadsafe(lambda: [job.events.put_nowait(ev) for job, ev in events])

        def flush() -> None:  # one hand-off to the event loop per tick, not per row
            if outbox:
                publish(outbox[:])
                outbox.clear()

        def fail(of: _Row | Job, e: Exception) -> None:
            job = of if isinstance(of, Job) else of.job
            outbox.append((job, ("error", f"generation failed: {e}")))
            job.cancelled = True

        def drive() -> None:
            """In a thread: admit waiting jobs, tick the engine, hand the events over; until nothing is left."""
            while True:
                # 1. the oldest jobs first (any settings, any adapter: rows sample on their own) while their
                #    rows fit next to those in the engine; they join at the next token boundary
                free = cfg.max_batch - engine.live()
                for job in list(pending):
                    if job.cancelled:
                        pending.remove(job)
                    elif job.n <= free:
                        pending.remove(job)
                        try:  # an echo's prompt log-probs are a prefill of its own ([len, vocab] logits): its failure
                            rows = admit(model, tokenizer, job, stop_ids, outbox, bool(cfg.adapters), masks)
                        except Exception as e:  # is its job's, and must not end this thread (nothing would run)
                            fail(job, e)
                            continue
                        free -= job.n
                        engine.add(rows)
                stats["running"] = engine.live()
                if not stats["running"]:
                    return flush()
                # 2. one tick: a prefill chunk of the next group, one decode step of the running batch
                try:
                    engine.tick()
                except Exception:  # only the job whose row fails alone gets the error; the server lives on
                    engine.recover(fail, flush)
                stats.update(
                    batches=engine.stats["prefills"], joined=engine.stats["joined"], steps=engine.stats["steps"],
                    generated_tokens=engine.stats["tokens"], kv_rows=engine.cached(),
                )  # fmt: skip
                flush()

        while True:
            while not pending:
                wake.clear()
                await wake.wait()
            t0 = time.perf_counter()
            await loop.run_in_executor(None, drive)
            stats["running"] = stats["kv_rows"] = 0
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

    def build_chat(body: bytes) -> tuple[ChatRequest, list[Prompt], tooling.ChatPlan]:
        req = read_body(body, ChatRequest)
        if req.echo:
            raise BadRequest("echo: not supported on chat completions; use /v1/completions with echo", "echo")
        if req.top_logprobs and not req.logprobs:
            raise BadRequest("top_logprobs: needs logprobs: true", "top_logprobs")
        plan = tooling.plan_chat(req, template)
        messages = plan.messages
        if plan.constraint is not None and masks is None:
            field = plan.by
            raise BadRequest(f"{field}: constrained decoding needs a byte-level or SentencePiece tokenizer", field)
        last = len(messages) - 1
        if req.continue_final_message and req.add_generation_prompt:  # vLLM's 400 too: which one is meant is a guess
            msg = ("continue_final_message: true needs add_generation_prompt: false (add_generation_prompt, true by "
                   "default, opens a new assistant turn after the message to continue)")  # fmt: skip
            raise BadRequest(msg, "continue_final_message")
        if req.continue_final_message and messages[last]["role"] != "assistant":
            msg = (f"messages.{last}.role: continue_final_message continues the last message, which must be the "
                   f"assistant's (it is {req.messages[last].role!r})")  # fmt: skip
            raise BadRequest(msg, f"messages.{last}.role")
        if req.continue_final_message and plan.constraint is not None:  # the pattern would start over mid-message
            field = plan.by
            msg = (f"continue_final_message: {field} constrains a reply from its start (one whole JSON object or "
                   f"call), not the rest of messages.{last}; send one or the other")  # fmt: skip
            raise BadRequest(msg, "continue_final_message")
        try:
            prompt = template.render(
                tokenizer, messages, req.add_generation_prompt, plan.tools, continue_final=req.continue_final_message
            )
            late = template.misplaced_system(tokenizer, messages, plan.tools)
            unread = template.unread_name(tokenizer, messages, plan.tools)
        except Exception as e:  # e.g. a template that insists on alternating roles
            raise BadRequest(f"messages: the chat template refused them: {e}", "messages") from None
        if unread is not None:  # dropped, the model would answer without knowing who spoke
            where = f"messages.{unread}.name"
            msg = (f"{where}: chat template {template.name!r} does not render a message's name (the prompt is the "
                   "same without it); put the name into the content (e.g. '小王: ...'), or drop the key")  # fmt: skip
            raise BadRequest(msg, where)
        if late is not None:  # the model would read the conversation without it, or somewhere else
            raise BadRequest(f"messages.{late}: {late_system(template)}", f"messages.{late}")
        ids = tokenize(prompt, "messages")  # first: the screen's regexes hold the GIL, keep megabytes from them
        if why := beyond_vocab(tokenizer, ids, vocab):  # fed, it would fail the batch it joins: others' replies too
            raise BadRequest(f"messages: {why}", "messages")
        return req, [Prompt(ids, refusal=input_screen(messages) if input_screen else None)], plan

    def build_completion(body: bytes) -> tuple[CompletionRequest, list[Prompt]]:
        req = read_body(body, CompletionRequest)
        # OpenAI's four forms: a text, texts, token ids (one prompt), lists of token ids (one prompt each)
        one = isinstance(req.prompt, str) or (req.prompt and isinstance(req.prompt[0], int))
        given: list = [req.prompt] if one else req.prompt
        if not given:
            raise BadRequest("prompt: an empty list; give a text, texts, token ids or lists of token ids", "prompt")
        prompts = []
        for k, p in enumerate(given):
            where = f" (prompt {k} of {len(given)})" if len(given) > 1 else ""
            if not p:
                raise BadRequest(f"prompt: empty{where}; give some text or token ids to continue", "prompt")
            if isinstance(p, str):
                prompt = Prompt(bos + tokenize(p, "prompt"), p if req.echo else "", skip=len(bos))
                if why := beyond_vocab(tokenizer, prompt.ids, vocab):
                    raise BadRequest(f"prompt{where}: {why}", "prompt")
            else:  # token ids are the model's input as given, no BOS added (as vLLM); the echo is their decoding
                if (bad := next((t for t in p if not 0 <= t < vocab_ids), None)) is not None:
                    msg = f"prompt: token id {bad}{where} is not in the vocabulary (ids 0 to {vocab_ids - 1})"
                    raise BadRequest(msg, "prompt")
                prompt = Prompt(list(p), tokenizer.decode(p, skip_special_tokens=False) if req.echo else "")
            if input_screen:  # token ids are screened as the text they decode to
                text = p if isinstance(p, str) else prompt.echo or tokenizer.decode(p, skip_special_tokens=False)
                prompt.refusal = input_screen([{"role": "user", "content": text}])
            prompts.append(prompt)
        return req, prompts

    async def prepared(request: Request, build: Callable[[bytes], tuple]) -> tuple | JSONResponse:
        body = await request.body()  # already read (and size-checked) by Guard
        try:
            return await asyncio.get_running_loop().run_in_executor(prep, build, body)
        except BadRequest as e:
            return error(400, e.message, code=e.code, param=e.param)

    def make_job(req: Sampling, prompt_ids: list[int], field: str, top: int | None, echo: bool) -> Job:
        """The job for a valid request, or `BadRequest`; `top`: log-prob alternatives per token, None: off."""
        if not prompt_ids:
            raise BadRequest(f"{field}: no tokens; give some text", field)
        if len(prompt_ids) >= context:
            msg = f"{field}: the prompt is {len(prompt_ids)} tokens; the model's context is {context}"
            raise BadRequest(msg, field, "context")
        asked = req.max_completion_tokens or req.max_tokens
        name = "max_completion_tokens" if req.max_completion_tokens else "max_tokens"
        if asked and asked > cfg.max_new_tokens:
            msg = f"{name}: {asked} is over this server's limit of {cfg.max_new_tokens} (serve --max-new-tokens)"
            raise BadRequest(msg, name)
        if asked and len(prompt_ids) + asked > context:
            msg = f"{name}: prompt ({len(prompt_ids)} tokens) + {name} ({asked}) exceeds the context of {context}"
            raise BadRequest(msg, name, "context")
        max_tokens = asked or min(cfg.max_new_tokens, context - len(prompt_ids))
        if (req.min_tokens or 0) > max_tokens:
            raise BadRequest(f"min_tokens: {req.min_tokens} is over max_tokens ({max_tokens})", "min_tokens")
        if any(t >= vocab for t in req.stop_token_ids or []):
            raise BadRequest(f"stop_token_ids: ids must be below the vocabulary size {vocab}", "stop_token_ids")
        if req.n > cfg.max_batch:  # a job's choices share one batch: refused, never queued for ever or cut short
            msg = f"n: {req.n} choices; this server generates at most {cfg.max_batch} together (serve --max-batch)"
            raise BadRequest(msg, "n")
        if top is not None and output_filter is not None:  # token log-probs would show what the filter hides
            raise BadRequest("logprobs: not available while the server filters replies (--pii)", "logprobs")
        stop = [req.stop] if isinstance(req.stop, str) else [s for s in req.stop or [] if s]
        temperature, top_p, top_k = (defaults[k] if getattr(req, k) is None else getattr(req, k) for k in defaults)
        greedy = temperature == 0
        sampling = RowSampling(
            temperature, 1.0 if greedy else top_p, 0 if greedy else max(top_k, 0),
            folder_rep if req.repetition_penalty is None else req.repetition_penalty,
            req.presence_penalty or 0.0, req.frequency_penalty or 0.0,
            min_p=0.0 if greedy else folder.min_p if req.min_p is None else req.min_p,
        )  # fmt: skip
        adapter = req.model if req.model in cfg.adapters else "__base__"
        return Job(
            prompt_ids, req.n, max_tokens, stop, sampling, req.seed, top, top if echo else None,
            req.min_tokens or 0, bool(req.ignore_eos), frozenset(req.stop_token_ids or ()), adapter,
        )  # fmt: skip

    async def answer(
        request: Request, req: Sampling, prompts: list[Prompt], chat: bool, plan: tooling.ChatPlan | None = None
    ) -> Any:
        """The response to a valid request: one job per prompt (a chat has one), choices indexed k*n+i for choice i
        of prompt k, all read from one events queue."""
        if req.model is not None and req.model not in served:
            return unknown_model(req.model)
        created, rid = int(time.time()), ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        obj = "chat.completion" if chat else "text_completion"
        head = {"id": rid, "created": created, "model": req.model or cfg.model_name}
        top = ((req.top_logprobs or 0) if req.logprobs else None) if chat else req.logprobs
        n, total = req.n, req.n * len(prompts)
        echoes = [p.echo for p in prompts for _ in range(n)]  # per choice
        refused = {k * n + i for k, p in enumerate(prompts) if p.refusal is not None for i in range(n)}

        def choice(i: int, text: str | None, reason: str | None, stream: bool, lps: Any = None) -> dict:
            if not chat:
                return {"index": i, "text": text or "", "logprobs": lps, "finish_reason": reason}
            body = {"role": "assistant", "content": text} if not stream else ({"content": text} if text else {})
            return {"index": i, ("delta" if stream else "message"): body, "logprobs": lps, "finish_reason": reason}

        def usage(done: int) -> dict:
            read = sum(len(p.ids) for p in prompts)  # each prompt once, whatever n (as OpenAI and vLLM)
            return {"prompt_tokens": read, "completion_tokens": done, "total_tokens": read + done}

        events: asyncio.Queue = asyncio.Queue()  # every job's
        # a reply that goes on from the prompt's text (a completion, a continued message) is decoded after it: a
        # SentencePiece reply's first word keeps its space, in the text and in its log-prob tokens
        continues = not chat or bool(getattr(req, "continue_final_message", False))
        jobs: list[Job] = []
        try:
            for k, p in enumerate(prompts):
                if p.refusal is not None:  # answered with the refusal, nothing generated
                    for i in range(k * n, k * n + n):
                        events.put_nowait(("delta", i, p.refusal, []))
                        events.put_nowait(("done", i, "content_filter", 0))
                    continue
                job = make_job(req, p.ids, "messages" if chat else "prompt", top, bool(p.echo))
                job.events, job.first, job.prompt_skip, job.continues = events, k * n, p.skip, continues
                job.constraint = plan.constraint if plan else None
                job.one_call = plan.tool_format if plan and plan.one_call else None
                if job.constraint is not None and job.ignore_eos and not job.stop_token_ids:
                    field = plan.by  # type: ignore[union-attr]
                    msg = f"ignore_eos: a reply constrained by {field} must end; drop ignore_eos or give stop_token_ids"
                    raise BadRequest(msg, "ignore_eos")
                jobs.append(job)
            if len(jobs) > cfg.max_queue:
                raise BadRequest(f"prompt: {len(jobs)} prompts; this server queues at most {cfg.max_queue}", "prompt")
        except BadRequest as e:
            return error(400, e.message, code=e.code, param=e.param)
        if jobs and len(pending) + len(jobs) > cfg.max_queue:
            stats["rejected"] += 1
            return error(429, f"server busy: {len(pending)} requests waiting; retry later", "rate_limit_error")
        pending.extend(jobs)
        wake.set()

        def cancel() -> None:  # no-op when finished; frees the rows of a hang-up or a cancelled handler
            for job in jobs:
                job.cancelled = True

        async def replies() -> AsyncIterator[tuple]:
            left = total
            while left:
                ev = await events.get()
                left -= ev[0] == "done"
                yield ev
                if ev[0] in ("error", "gone"):
                    return

        if not req.stream:

            async def watch() -> None:  # the body is read, so the next message is the client's hang-up
                while (await request.receive())["type"] != "http.disconnect":
                    pass
                events.put_nowait(("gone",))

            watcher = asyncio.create_task(watch())
            texts, reasons, used = [""] * total, [None] * total, 0
            lps: list[list] = [[] for _ in range(total)]
            prompt_lps: list[list] = [[] for _ in range(total)]
            try:
                async for ev in replies():
                    if ev[0] == "gone":  # nobody reads the answer: stop its rows like a dropped stream
                        stats["cancelled"] += 1
                        return error(499, "client closed the request")
                    if ev[0] == "error":
                        stats["failed"] += 1
                        return error(500, ev[1], "server_error")
                    if ev[0] == "prompt":
                        prompt_lps[ev[1] : ev[1] + n] = [ev[2]] * n
                    elif ev[0] == "delta":
                        texts[ev[1]] += ev[2]
                        lps[ev[1]] += ev[3]
                    else:
                        reasons[ev[1]], used = ev[2], used + ev[3]
            finally:
                watcher.cancel()
                cancel()
            stats["served"] += 1
            if output_filter:
                texts = [t if i in refused else output_filter(t) for i, t in enumerate(texts)]
            shown: list = [None] * total
            for i in range(total) if top is not None else ():  # a refused choice has no log-probs
                if i in refused:
                    continue
                p = prompt_lps[i]  # its prompt's tokens, when echoed
                if chat:
                    shown[i] = {**fmt.chat(lps[i], start=not continues), "refusal": None}
                else:
                    shown[i] = fmt.legacy(p + lps[i], TextOffsets(), echoed=len(p))
            choices = [choice(i, echoes[i] + t, r, False, shown[i]) for i, (t, r) in enumerate(zip(texts, reasons))]
            if plan and plan.tool_format and not refused:  # calls parsed out of each reply
                for c, t, r in zip(choices, texts, reasons):
                    c["message"], c["finish_reason"] = tooling.reply_with_calls(t, r, plan.tool_format)
            return JSONResponse({**head, "object": obj, "choices": choices, "usage": usage(used)})

        chunk_obj = "chat.completion.chunk" if chat else "text_completion"
        with_usage = bool(req.stream_options and req.stream_options.include_usage)

        def sse(choices: list[dict], **extra: Any) -> str:
            return "data: " + json.dumps({**head, "object": chunk_obj, "choices": choices, **extra}) + "\n\n"

        async def stream() -> AsyncIterator[str]:
            buffered, used, finished, out = [""] * total, 0, False, []
            offsets = [TextOffsets() for _ in range(total)]  # text_offset of the legacy log-probs, per choice
            begun = [False] * total  # a chat choice's log-probs have begun (its first token starts the reply)
            filtering = output_filter is not None  # refused choices are not filtered: the refusal is ours

            def delta(i: int, text: str, entries: list, prompt: bool = False) -> str:
                if top is None or i in refused:
                    return sse([choice(i, text, None, True)])
                if chat:
                    start, begun[i] = not (begun[i] or continues), begun[i] or bool(entries)
                    return sse([choice(i, text, None, True, fmt.chat(entries, start))])
                shown = fmt.legacy(entries, offsets[i], echoed=len(entries) if prompt else 0)
                return sse([choice(i, text, None, True, shown)])

            calls = None
            if plan and plan.tool_format and not refused:
                calls = [tooling.ToolStream(plan.tool_format) for _ in range(total)]
            held: list[list] = [[] for _ in range(total)]  # log-probs of text a ToolStream holds back
            filtered = [False] * total  # buffered[i] is already the filter's (a reply with tools)
            tail: list[str] = []
            if chat:
                out = [sse([{**choice(i, None, None, True), "delta": {"role": "assistant"}}]) for i in range(total)]
            else:  # an echo without log-probs leads its choice; with them it comes with the prompt's log-probs
                out = [
                    sse([choice(i, e, None, True)]) for i, e in enumerate(echoes) if e and (top is None or i in refused)
                ]
            failed = False
            try:
                async for ev in replies():
                    if ev[0] == "error":
                        out.append(f"data: {json.dumps({'error': {'message': ev[1], 'type': 'server_error'}})}\n\n")
                        failed = True
                        break
                    if ev[0] == "delta" and calls:  # text that may be a call is held back
                        i, text = ev[1], calls[ev[1]].feed(ev[2])
                        held[i] += ev[3]
                        ev, held[i] = ("delta", i, text, held[i] if text else []), [] if text else held[i]
                    elif ev[0] == "done" and calls:
                        if filtering:  # the filter reads the whole reply, calls too, as when not streamed (the
                            # calls' arguments went out unfiltered: PII that --pii redacts in a whole reply)
                            whole = output_filter(calls[ev[1]].text)
                            message, reason = tooling.reply_with_calls(whole, ev[2], calls[ev[1]].fmt)
                            buffered[ev[1]], made = message["content"] or "", message.get("tool_calls", [])
                            ev, filtered[ev[1]] = (*ev[:2], reason, *ev[3:]), True
                        else:
                            rest, made = calls[ev[1]].finish()
                            if rest or (held[ev[1]] and top is not None):  # the call's tokens' log-probs too
                                out.append(delta(ev[1], rest, held[ev[1]]))
                            ev = (*ev[:2], "tool_calls" if made else ev[2], *ev[3:])
                        head_ = choice(ev[1], None, None, True)
                        tail = [
                            sse([{**head_, "delta": {"tool_calls": [{"index": k, **c}]}}]) for k, c in enumerate(made)
                        ]
                    if ev[0] == "prompt":  # echo with log-probs: the prompt and its tokens' log-probs first
                        out += [delta(i, echoes[i], ev[2], prompt=True) for i in range(ev[1], ev[1] + n)]
                    elif ev[0] == "delta" and filtering and ev[1] not in refused:
                        buffered[ev[1]] += ev[2]
                    elif ev[0] == "delta":
                        if ev[2] or (ev[3] and top is not None):
                            out.append(delta(*ev[1:]))
                    else:
                        used += ev[3]
                        if filtering and ev[1] not in refused:
                            shown = buffered[ev[1]] if filtered[ev[1]] else output_filter(buffered[ev[1]])
                            if shown:
                                out.append(sse([choice(ev[1], shown, None, True)]))
                        out += tail  # the choice's tool_calls deltas, after its content
                        tail = []
                        out.append(sse([choice(ev[1], None, ev[2], True)]))
                    if events.empty():  # send what has piled up in one write
                        yield "".join(out)
                        out = []
                if with_usage and not failed:
                    out.append(sse([], usage=usage(used)))
                yield "".join(out) + "data: [DONE]\n\n"
                finished = True
                stats["failed" if failed else "served"] += 1
            finally:
                if not finished:  # the client went away (or the batch failed): stop its rows
                    stats["cancelled"] += 1
                cancel()

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        ready = await prepared(request, build_chat)
        return ready if isinstance(ready, JSONResponse) else await answer(request, *ready[:2], True, *ready[2:])

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        ready = await prepared(request, build_completion)
        return ready if isinstance(ready, JSONResponse) else await answer(request, *ready, False)

    @app.get("/v1/models")
    async def models() -> Any:
        return {"object": "list", "data": cards}

    @app.get("/v1/models/{model:path}")  # `path`: a served id may hold slashes ("Qwen/Qwen2.5-0.5B")
    async def model_card(model: str) -> Any:
        return next((c for c in cards if c["id"] == model), None) or unknown_model(model)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": cfg.model_name, "queued": len(pending), "context": context, **stats}

    return app


def check_limits(
    port: int, max_batch: int, max_queue: int, max_new_tokens: int, max_body_mb: float, prefill_chunk: int
) -> None:
    """Refuse, before the model loads, a setting that would leave every request refused or the bind failing (a
    server with --max-batch 0 started and answered each request "n: at most 0")."""
    for flag, value, what in (
        ("--max-batch", max_batch, "choices generated together"),
        ("--max-queue", max_queue, "requests waiting"),
        ("--max-new-tokens", max_new_tokens, "the ceiling of max_tokens"),
        ("--prefill-chunk", prefill_chunk, "prompt tokens per engine tick"),
    ):
        if value < 1:
            raise UserError(f"{flag} {value}: must be at least 1 ({what})")
    if not (0 < max_body_mb < 2**20):  # NaN too; int(inf MiB) would fail in the guard
        raise UserError(f"--max-body-mb {max_body_mb}: give a size above 0 MiB (request bodies above it get 413)")
    if not 0 <= port <= 65535:
        raise UserError(f"--port {port}: give a TCP port from 1 to 65535 (0: any free port)")


def served_name(ref: str) -> str:
    """The id a model is served under: a folder's own name, however the command line reached it (`--model .`, `./`
    or `x/..` were served as "." or ".."), else a hub id's last part."""
    path = Path(ref).expanduser()
    return (path.resolve().name if path.exists() else "") or ref.rstrip("/").split("/")[-1] or ref


def serve(
    model: str | None = None,
    adapter: str | list[str] | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    max_batch: int = 8,
    max_queue: int = 64,
    max_new_tokens: int = 256,
    quant: str | None = None,
    template: str = "auto",
    model_name: str | None = None,
    input_screen: Callable[[list[dict]], str | None] | None = None,
    output_filter: Callable[[str], str] | None = None,
    max_body_mb: float = 8.0,
    prefill_chunk: int = 512,
) -> None:
    """Load the model (+ adapter) and serve it until Ctrl-C; `input_screen`/`output_filter` as in `create_app`
    (the CLI builds them from --screen and --pii). `adapter`: one run (served as the model), or several
    `NAME=RUN` served next to the base, picked by the request's `model`. `api_key` defaults to
    $WEITIAO_API_KEY (a key on the command line shows in `ps`)."""
    import uvicorn

    from weitiao.infer.chat import load_adapters, load_chat_model, parse_adapters
    from weitiao.models.load import resolve_path

    check_limits(port, max_batch, max_queue, max_new_tokens, max_body_mb, prefill_chunk)
    specs = [adapter] if isinstance(adapter, str) else list(adapter or [])
    named = parse_adapters(specs) if specs else None
    if named:
        m, tok, base = load_adapters(resolve_path(model) if model else None, named, quant)
        name = model_name or served_name(base)
        if name in named:
            raise UserError(f"--adapter {name}=...: the name {name!r} is taken by the base; give the adapter another")
    else:
        one = specs[0] if specs else None
        m, tok = load_chat_model(resolve_path(model) if model else None, one, quant)
        name = model_name or served_name(one or model or "demo")
    api_key = api_key or os.environ.get("WEITIAO_API_KEY") or None
    limits = (max_batch, max_queue, max_new_tokens, max_body_mb, tuple(named or ()), prefill_chunk)
    settings = ServeSettings(name, api_key, *limits)
    app = create_app(m, tok, resolve_template(tok, template), settings, input_screen, output_filter)
    given = {**folder_sampling(m), "repetition_penalty": folder_repetition_penalty(m)}
    if shown := ", ".join(f"{k} {v:g}" for k, v in given.items() if k != "repetition_penalty" or v != 1.0):
        print(f"serve: requests that leave them open get the model's generation_config.json {shown}")  # as vLLM says
    uvicorn.run(app, host=host, port=port, log_level="warning")
