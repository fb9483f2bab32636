"""The one generation loop: a KV-cached decoder with continuous batching (`Engine`), behind `weitiao serve`,
`generate`/`generate_ids` (eval, demo, arena, safety probes), PPO's rollouts and `weitiao chat`.

How `Engine.tick` runs:
1. Rows wait in arrival order. The next group of them (several short prompts, or one long one) is prefilled
   left-padded, at most `prefill_chunk` tokens (rows × columns) per tick, so a long prompt does not stall the
   rows already decoding: they take a step between its chunks.
2. When a group's prefill is done, its rows sample their first token and join the decoding batch: the two
   KV caches are left-padded to one width and concatenated (`KVBatch.join`; caches other than plain
   full-attention ones are recomputed instead).
3. Every tick the decoding batch takes one step: each row's logits go through its own settings and bans
   (`Sampler`), the token goes to `row.feed`, and rows that are done leave at once (their cache rows are
   dropped and columns that became padding in every row trimmed).

Departures from HF `model.generate`: one sampling setting per row, not per call; a batch without seeded rows
draws with `torch.multinomial` as HF does, but finished rows leave the batch, so sampled (not greedy) replies
differ from HF's for the same seed. `generate_ids` (and `weitiao serve`) honour only these keys of a
model folder's generation_config.json: min_p, no_repeat_ngram_size, suppress_tokens, begin_suppress_tokens,
bad_words_ids, and repetition_penalty where the caller leaves it open; others that change the distribution are
refused (`UserError`), never ignored.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any, Protocol

import torch

from weitiao.data.collate import left_pad
from weitiao.data.decode import IncrementalDecoder, decode_whole
from weitiao.data.formats import Message
from weitiao.data.templates import ChatTemplate
from weitiao.errors import UserError
from weitiao.models.portable import stop_ids


@dataclass
class Generation:
    text: str
    n_tokens: int
    stopped: bool  # ended with the end-of-turn token before max_new_tokens


@dataclass
class Sampled:
    """Token ids of one prompt and its reply; the reply ends with the end-of-turn id when `stopped`."""

    prompt_ids: list[int]
    response_ids: list[int]
    stopped: bool
    logps: list[float] | None = None  # with `generate_ids(logps=True)`: each reply token's log-prob where drawn
    values: list[float] | None = None  # with `generate_ids(values=...)`: its function of the hidden state there


@dataclass
class RowSampling:
    """One row's sampling settings, as the OpenAI/vLLM request fields name them; greedy when temperature == 0."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    repetition_penalty: float = 1.0  # HF/vLLM: over prompt + reply tokens, logit / p if > 0 else * p
    presence_penalty: float = 0.0  # OpenAI: logit -= frequency * count + presence * (count > 0), reply tokens only
    frequency_penalty: float = 0.0
    generator: torch.Generator | None = None  # the row's own random stream (a seeded request), else the global one
    min_p: float = 0.0  # HF/vLLM: drop tokens below min_p × the top token's probability; 0: off


class Row(Protocol):
    """What the engine needs of a row: its tokens, settings, and `feed` for each sampled token."""

    prompt_ids: list[int]
    ids: list[int]  # tokens fed so far (a stop token that ended the row may be left out)
    sampling: RowSampling
    adapter: str  # peft adapter name, "__base__" for none
    logprobs: int | None  # alternatives per token in the log-prob entries `feed` gets; None: no entries

    @property
    def done(self) -> bool: ...

    def feed(self, token: int, logprob: tuple | None) -> None: ...


class Sampler:
    """Per-row logits processing and sampling for a batch, in vLLM's order: banned tokens, penalties,
    then greedy argmax, or temperature, top-k, top-p, min-p and a draw. Vectorized over rows and vocabulary;
    the only Python loop is over seeded rows, each drawing from its own generator, so a seeded row's
    tokens do not depend on which rows share its batch."""

    def __init__(self, rows: list[RowSampling], history: list[list[int]], n_prompt: list[int], vocab: int, device: Any):
        f = lambda name: torch.tensor([getattr(r, name) for r in rows], dtype=torch.float32, device=device)  # noqa: E731
        self.rows, self.vocab, self.device = rows, vocab, device
        self.temp, self.top_p, self.rep, self.min_p = f("temperature"), f("top_p"), f("repetition_penalty"), f("min_p")
        self.top_k = torch.tensor([r.top_k for r in rows], device=device)
        self.pres, self.freq = f("presence_penalty"), f("frequency_penalty")
        self.counts = self.seen = None  # [rows, vocab]: reply-token counts; tokens of prompt + reply
        if bool((self.pres != 0).any() or (self.freq != 0).any()):
            self.counts = self._counts(history, n_prompt)
        if bool((self.rep != 1).any()):
            self.seen = self._seen(history)
        self._flags()

    def _counts(self, history: list[list[int]], n_prompt: list[int]) -> torch.Tensor:
        counts = torch.zeros(len(history), self.vocab, device=self.device)
        for i, (h, n) in enumerate(zip(history, n_prompt)):  # a row's reply so far
            reply = torch.tensor(h[n:], dtype=torch.long, device=self.device)
            counts[i].index_add_(0, reply, torch.ones(len(reply), device=self.device))
        return counts

    def _seen(self, history: list[list[int]]) -> torch.Tensor:
        seen = torch.zeros(len(history), self.vocab, dtype=torch.bool, device=self.device)
        for i, h in enumerate(history):
            seen[i, torch.tensor(h, dtype=torch.long, device=self.device)] = True
        return seen

    def _flags(self) -> None:  # decided once per batch (and per drop or join), not with a device sync every step
        self.all_greedy = all(r.temperature == 0 for r in self.rows)
        self.filtering = any(r.temperature > 0 and (r.top_k > 0 or r.top_p < 1 or r.min_p > 0) for r in self.rows)
        self.seeded = any(r.generator is not None and r.temperature > 0 for r in self.rows)

    def keep(self, idx: torch.Tensor) -> None:
        """Drop the rows not in `idx` (finished ones)."""
        self.rows = [self.rows[i] for i in idx.tolist()]
        for name in ("temp", "top_p", "rep", "min_p", "top_k", "pres", "freq", "counts", "seen"):
            if getattr(self, name) is not None:
                setattr(self, name, getattr(self, name)[idx])
        self._flags()

    def join(self, other: Sampler, history: list[list[int]], n_prompt: list[int]) -> None:
        """Append `other`'s rows; `history`/`n_prompt` are this sampler's rows' tokens so far (prompt + reply)."""
        for name in ("temp", "top_p", "rep", "min_p", "top_k", "pres", "freq"):
            setattr(self, name, torch.cat([getattr(self, name), getattr(other, name)]))
        for name, build, args in (("counts", "_counts", (n_prompt,)), ("seen", "_seen", ())):
            mine, theirs = getattr(self, name), getattr(other, name)
            if mine is None and theirs is None:
                continue
            if mine is None:  # the newcomers penalize: rebuild this side's state from its rows' tokens
                mine = getattr(self, build)(history, *args)
            if theirs is None:
                theirs = torch.zeros(len(other.rows), self.vocab, dtype=mine.dtype, device=self.device)
            setattr(self, name, torch.cat([mine, theirs]))
        self.rows = self.rows + other.rows
        self._flags()

    def __call__(self, logits: torch.Tensor, ban: torch.Tensor | None = None, logps: bool = False) -> torch.Tensor:
        """Next token of each row from its raw logits [rows, vocab]; `ban` [rows, vocab] True = never. With
        `logps`, `self.logps` [rows] is then each token's log-prob under the distribution it was drawn from
        (after bans, penalties, temperature and filtering; 0 for greedy rows)."""
        logits = logits.float()
        if ban is not None:
            logits = logits.masked_fill(ban, float("-inf"))
        if self.seen is not None:
            rep = self.rep[:, None].expand_as(logits)
            penalized = torch.where(logits > 0, logits / rep, logits * rep)
            logits = torch.where(self.seen, penalized, logits)
        if self.counts is not None:
            logits = logits - self.freq[:, None] * self.counts - self.pres[:, None] * (self.counts > 0)
        greedy = self.temp == 0
        tokens = logits.argmax(-1)
        if self.all_greedy:
            self.logps = torch.zeros(len(tokens), device=logits.device) if logps else None
            return self._record(tokens)
        # each row shifted by its top logit first: the same distribution, but a tiny temperature (1e-40) no longer
        # overflows the logits to inf (and the draw to NaN)
        top = logits.amax(-1, keepdim=True)
        logits = (logits - torch.where(top.isfinite(), top, 0.0)) / torch.where(greedy, 1.0, self.temp)[:, None]
        if self.filtering:
            logits = self._top_k_top_p(logits)
        probs = logits.softmax(-1)
        if not self.seeded:  # HF generate's draw, from the global generator
            drawn = torch.multinomial(probs, 1)[:, 0]
        else:  # exponential race: argmax(p / q), q ~ Exp(1), is a draw from p; each seeded row draws its own q
            q = torch.empty_like(probs).exponential_()
            for i, r in enumerate(self.rows):
                if r.generator is not None and r.temperature > 0:
                    q[i].exponential_(generator=r.generator)
            drawn = (probs / q).argmax(-1)
        tokens = torch.where(greedy, tokens, drawn)
        self.logps = None
        if logps:  # log_softmax, not log(probs): exact for tokens of tiny probability too
            self.logps = logits.log_softmax(-1).gather(-1, tokens[:, None])[:, 0].masked_fill(greedy, 0.0)
        return self._record(tokens)

    def _top_k_top_p(self, logits: torch.Tensor) -> torch.Tensor:
        """HF/vLLM semantics: keep the k most likely, then the smallest set with mass >= top_p (at least one),
        then those with at least min_p × the top probability."""
        srt, idx = logits.sort(-1)  # ascending
        k = torch.where(self.top_k > 0, self.top_k, self.vocab).clamp(max=self.vocab)
        kth = srt.gather(-1, (self.vocab - k)[:, None])
        srt = srt.masked_fill(srt < kth, float("-inf"))
        probs = srt.softmax(-1)
        drop = probs.cumsum(-1) <= (1 - self.top_p)[:, None]
        drop |= probs < self.min_p[:, None] * probs[:, -1:]
        drop[:, -1] = False
        srt = srt.masked_fill(drop, float("-inf"))
        return torch.empty_like(logits).scatter_(-1, idx, srt)

    def _record(self, tokens: torch.Tensor) -> torch.Tensor:
        rows = torch.arange(len(tokens), device=tokens.device)
        if self.counts is not None:
            self.counts[rows, tokens] += 1
        if self.seen is not None:
            self.seen[rows, tokens] = True
        return tokens


class KVBatch:
    """Left-padded rows decoded one token per step through a KV cache; rows can leave (`keep`) and join (`join`).

    Position ids count only each row's real tokens (`weitiao.data.collate.left_pad`), so a row's logits do
    not depend on how much padding its batch needs. `adapter_names` (one per row, "__base__" for none) picks
    each row's LoRA adapter in a peft model serving several (peft's mixed batches).
    """

    def __init__(self, model: Any, prompts: list[list[int]], pad_id: int, adapter_names: list[str] | None = None):
        from transformers import DynamicCache

        self.model, self.pad_id, self.adapter_names = model, pad_id, adapter_names
        self.device = next(model.parameters()).device
        ids, mask, pos = left_pad(prompts, pad_id)
        self.ids, self.mask, self.pos = ids.to(self.device), mask.to(self.device), pos.to(self.device)
        self.n_real = self.mask.sum(-1)
        self.filled = 0  # prompt columns already through the model
        self.cache = DynamicCache(config=getattr(model, "config", None))

    def _forward(self, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, **kw: Any) -> torch.Tensor:
        if self.adapter_names is not None:
            kw["adapter_names"] = self.adapter_names
        out = self.model(
            input_ids=ids, attention_mask=mask, position_ids=positions, cache=self.cache, use_cache=True, **kw
        )
        return out.logits

    def prefill(self, all_logits: bool = False) -> torch.Tensor:
        """Logits [rows, width, vocab] of every prompt position when `all_logits`, else of the last [rows, 1, vocab]."""
        self.filled = self.ids.shape[1]
        return self._forward(self.ids, self.pos, self.mask, logits_to_keep=0 if all_logits else 1)

    def prefill_part(self, budget: int) -> torch.Tensor | None:
        """Feed the next prompt columns, at most `budget` tokens (rows × columns; one column at least);
        the last position's logits [rows, vocab] once every column is in, else None."""
        rows, width = self.ids.shape
        start, end = self.filled, min(width, self.filled + max(1, budget // rows))
        logits = self._forward(self.ids[:, start:end], self.pos[:, start:end], self.mask[:, :end], logits_to_keep=1)
        self.filled = end
        return logits[:, -1] if end == width else None

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per row; the next logits [rows, vocab]."""
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(tokens), 1)], dim=-1)
        positions = self.n_real[:, None].clone()
        self.n_real = self.n_real + 1
        return self._forward(tokens[:, None], positions, self.mask)[:, -1]

    def keep(self, idx: torch.Tensor) -> None:
        """Keep only the rows `idx` (their cache, mask and positions); drop columns left padding in every row."""
        self.cache.batch_select_indices(idx)
        self.mask, self.n_real = self.mask[idx], self.n_real[idx]
        if self.adapter_names is not None:
            self.adapter_names = [self.adapter_names[i] for i in idx.tolist()]
        lead = int((self.mask.sum(0) == 0).cumprod(0).sum())
        if lead and self.joinable():
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[..., lead:, :], layer.values[..., lead:, :]
            self.mask = self.mask[:, lead:]

    def joinable(self) -> bool:
        """Whether the cache is plain full attention, whose rows can be left-padded and concatenated."""
        from transformers.cache_utils import DynamicLayer

        return all(type(layer) is DynamicLayer and layer.is_initialized for layer in self.cache.layers)

    def join(self, other: KVBatch) -> None:
        """Append `other`'s rows (prefilled): both caches and masks left-padded to the wider one."""
        width = max(self.mask.shape[1], other.mask.shape[1])
        for mine, theirs in zip(self.cache.layers, other.cache.layers):
            mine.keys = torch.cat([_lpad(mine.keys, width), _lpad(theirs.keys, width)])
            mine.values = torch.cat([_lpad(mine.values, width), _lpad(theirs.values, width)])
        masks = [_lpad(m[:, :, None], width)[:, :, 0] for m in (self.mask, other.mask)]
        self.mask = torch.cat(masks)
        self.n_real = torch.cat([self.n_real, other.n_real])
        if self.adapter_names is not None:
            self.adapter_names = self.adapter_names + (other.adapter_names or [])


def _lpad(x: torch.Tensor, width: int) -> torch.Tensor:
    """Zeros on the left of dim -2 up to `width` (a cache's sequence axis, or a mask given as [..., 1])."""
    short = width - x.shape[-2]
    return x if not short else torch.cat([x.new_zeros(*x.shape[:-2], short, x.shape[-1]), x], dim=-2)


def logprob_entries(raw: torch.Tensor, tokens: torch.Tensor, k: int) -> list[tuple]:
    """(token, its log-prob, [(alternative, log-prob)] * k) per row of `raw` log-probs [rows, vocab]."""
    chosen = raw.gather(-1, tokens[:, None])[:, 0].tolist()
    top_v, top_i = raw.topk(k, -1) if k else (raw[:, :0], tokens[:, None][:, :0])
    return [(t, c, list(zip(i, v))) for t, c, i, v in zip(tokens.tolist(), chosen, top_i.tolist(), top_v.tolist())]


@dataclass
class _Part:
    """Rows sharing one KV batch: a group being prefilled, or the decoding batch."""

    rows: list
    batch: KVBatch
    sampler: Sampler | None = None
    tokens: torch.Tensor | None = None  # each row's last sampled token, not yet through the model


class Engine:
    """The decode loop with continuous batching (steps in the module docstring). Add rows with `add`, call
    `tick` while `live()`; each row's `feed` gets its tokens. `ban(rows, vocab)` gives [rows, vocab] True =
    banned (or None) before each sampling. `stats` counts prefills (groups), joined (rows that joined a
    batch already decoding), steps (decode steps) and tokens (sampled)."""

    def __init__(
        self,
        model: Any,
        pad_id: int,
        max_rows: int = 16,
        prefill_chunk: int = 512,
        adapters: bool = False,
        ban: Callable[[list, int], torch.Tensor | None] | None = None,
        sampled_logps: bool = False,
        values: Callable[[], torch.Tensor] | None = None,
    ) -> None:
        self.model, self.pad_id, self.max_rows, self.chunk = model, pad_id, max_rows, prefill_chunk
        self.adapters, self.ban = adapters, ban
        self.sampled_logps = sampled_logps  # each row's `sampled` list gets its tokens' log-probs where drawn
        self.values = values  # [rows] of the forward just run (its last position): each row's `values` list gets them
        self.device = next(model.parameters()).device
        self.waiting: list = []
        self.filling: _Part | None = None
        self.running: _Part | None = None
        self.stats = {"prefills": 0, "joined": 0, "steps": 0, "tokens": 0}

    def add(self, rows: list) -> None:
        """Queue rows for prefill (in order)."""
        self.waiting += rows

    def live(self) -> int:
        """Rows not done: waiting, being prefilled or decoding."""
        parts = [p.rows for p in (self.filling, self.running) if p is not None]
        return sum(not r.done for rows in [self.waiting, *parts] for r in rows)

    def cached(self) -> int:
        """Rows whose KV cache the engine holds (being prefilled or decoding), done or not: a row that
        finished or was cancelled leaves it at the next tick."""
        return sum(len(p.rows) for p in (self.filling, self.running) if p is not None)

    def clear(self) -> list:
        """Drop every row (after a failed forward); returns them."""
        rows = self.waiting + [r for p in (self.filling, self.running) if p is not None for r in p.rows]
        self.waiting, self.filling, self.running = [], None, None
        return rows

    def recover(self, fail: Callable[[Any, Exception], None], ticked: Callable[[], None] | None = None) -> None:
        """After `tick` raised: the rows it was prefilling or decoding take one token each alone; a row that fails
        alone goes to `fail(row, error)`, the others wait again, re-prefilled from their tokens so far (a greedy
        reply is what it would have been). When none fails alone (the batch failed, e.g. out of memory), each runs
        to its end alone, and only those that fail then go to `fail`. `ticked()` after each lone tick."""
        suspects = list({id(r): r for p in (self.filling, self.running) if p is not None for r in p.rows}.values())
        self.filling = self.running = None
        solo = Engine(self.model, self.pad_id, 1, self.chunk, self.adapters, self.ban, self.sampled_logps, self.values)
        solo.stats = self.stats
        failed = []

        def alone(row: Any, to_end: bool) -> bool:
            before = len(row.ids)
            solo.add([row])
            try:
                while solo.live() and (to_end or len(row.ids) == before):
                    solo.tick()
                    if ticked:
                        ticked()
            except Exception as e:
                failed.append(row)
                fail(row, e)
                return False
            finally:
                solo.clear()
            return True

        passed = [r for r in suspects if not r.done and alone(r, False)]
        if not failed:  # nobody to blame: each to its end alone
            passed = [r for r in passed if not r.done and alone(r, True)]
        self.waiting = [r for r in passed if not r.done] + self.waiting

    @torch.no_grad()
    def tick(self) -> None:
        """At most `prefill_chunk` tokens of prefill, then one decode step of the running batch."""
        # 1. the next group of waiting rows: as many as fit the chunk budget and the free rows (one at least)
        self.waiting = [r for r in self.waiting if not r.done]
        if self.filling is not None and all(r.done for r in self.filling.rows):
            self.filling = None  # all cancelled: the rest of their prompts is not worth computing
        if self.filling is None and self.waiting:
            self._group()
        if self.filling is not None:
            self._prefill()
        # 3. one token for every decoding row
        if self.running is not None:
            part = self.running
            part.tokens = self._sample(part, part.batch.step(part.tokens))
            self.stats["steps"] += 1
            self._drop(part)
            if not part.rows:
                self.running = None

    def _history(self, row: Row) -> list[int]:
        return row.prompt_ids + row.ids

    def _group(self) -> None:
        free = self.max_rows - (sum(not r.done for r in self.running.rows) if self.running else 0)
        rows, width = [], 0
        for row in self.waiting[: max(0, free)]:
            w = max(width, len(self._history(row)))
            if rows and w * (len(rows) + 1) > self.chunk:
                break
            rows.append(row)
            width = w
        if not rows:
            return
        self.waiting = self.waiting[len(rows) :]
        names = [r.adapter for r in rows] if self.adapters else None
        self.filling = _Part(rows, KVBatch(self.model, [self._history(r) for r in rows], self.pad_id, names))

    def _prefill(self) -> None:
        part = self.filling
        logits = part.batch.prefill_part(self.chunk)
        if logits is None:
            return
        # 2. the group's first tokens, then it joins the decoding batch (it stays `filling` until it has joined:
        #    `recover` finds its rows there when this fails)
        self.stats["prefills"] += 1
        history = [self._history(r) for r in part.rows]
        n_prompt = [len(r.prompt_ids) for r in part.rows]
        part.sampler = Sampler([r.sampling for r in part.rows], history, n_prompt, logits.shape[-1], self.device)
        part.tokens = self._sample(part, logits)
        self._drop(part)
        if not part.rows or self.running is None:
            self.filling, self.running = None, self.running or (part if part.rows else None)
            return
        run = self.running
        self.stats["joined"] += len(part.rows)
        if run.batch.joinable() and part.batch.joinable():
            run.batch.join(part.batch)
        else:  # e.g. sliding-window layers: recompute every row's cache, all but the token not yet fed
            rows = run.rows + part.rows
            names = [r.adapter for r in rows] if self.adapters else None
            run.batch = KVBatch(self.model, [self._history(r)[:-1] for r in rows], self.pad_id, names)
            run.batch.prefill()
        # the running rows' tokens so far (all sampled ones, as the sampler has recorded them)
        hist = [self._history(r) for r in run.rows]
        run.sampler.join(part.sampler, hist, [len(r.prompt_ids) for r in run.rows])
        run.tokens = torch.cat([run.tokens, part.tokens])
        self.filling, run.rows = None, run.rows + part.rows

    def _sample(self, part: _Part, logits: torch.Tensor) -> torch.Tensor:
        """Each row's next token, fed to it. Raises on NaN logits (greedy and seeded draws would pick a garbage
        token silently); a seeded row that the raise leaves unfed gets its generator back as it was, so `recover`
        draws its token again from the same state (the reply it has alone)."""
        rows = part.rows
        if bool(logits.isnan().any()):
            bad = int(logits.isnan().any(-1).sum())
            raise FloatingPointError(f"the model's next-token logits are NaN ({bad} of {len(rows)} rows)")
        seeded = [(r, len(r.ids), g, g.get_state()) for r in rows if (g := r.sampling.generator) is not None]
        try:
            ban = self.ban(rows, logits.shape[-1]) if self.ban else None
            k = max((r.logprobs for r in rows if r.logprobs is not None), default=None)
            raw = logits.float().log_softmax(-1) if k is not None else None  # of the raw model distribution (vLLM's)
            tokens = part.sampler(logits, ban, logps=self.sampled_logps)
            if self.sampled_logps:
                for row, lp in zip(rows, part.sampler.logps.tolist()):
                    row.sampled.append(lp)
            if self.values is not None:  # the forward that gave `logits` (the hidden state the drawn token's came from)
                for row, v in zip(rows, self.values().tolist()):
                    row.values.append(v)
            entries = logprob_entries(raw, tokens, k) if raw is not None else [None] * len(rows)
            for row, tok, e in zip(rows, tokens.tolist(), entries):
                row.feed(tok, None if e is None or row.logprobs is None else (e[0], e[1], e[2][: row.logprobs]))
        except BaseException:
            for row, fed, generator, state in seeded:
                if len(row.ids) == fed and not row.done:  # its draw is lost with the step
                    generator.set_state(state)
            raise
        self.stats["tokens"] += len(rows)
        return tokens

    def _drop(self, part: _Part) -> None:
        live = [i for i, r in enumerate(part.rows) if not r.done]
        if len(live) == len(part.rows):
            return
        part.rows = [part.rows[i] for i in live]
        if live:
            idx = torch.tensor(live, device=self.device)
            part.batch.keep(idx)
            part.sampler.keep(idx)
            part.tokens = part.tokens[idx]


class _Reply:
    """A row of `generate_ids`: ends after the end-of-turn token (kept) or `max_new` tokens."""

    adapter, logprobs = "__base__", None

    def __init__(self, prompt_ids: list[int], sampling: RowSampling, stops: set[int], max_new: int) -> None:
        self.prompt_ids, self.sampling, self.stops, self.max_new = prompt_ids, sampling, stops, max_new
        self.ids: list[int] = []
        self.sampled: list[float] = []  # log-probs where drawn, when the engine keeps them
        self.values: list[float] = []  # the engine's `values` where drawn, when it has them
        self.stopped = False
        self.done = max_new <= 0

    def feed(self, token: int, logprob: tuple | None = None) -> None:
        self.ids.append(token)
        self.stopped = token in self.stops
        self.done = self.stopped or len(self.ids) >= self.max_new


# generation_config.json keys that change what is drawn and that the loop does not implement
_REFUSED = (
    "typical_p", "epsilon_cutoff", "eta_cutoff", "encoder_repetition_penalty", "encoder_no_repeat_ngram_size",
    "exponential_decay_length_penalty", "sequence_bias", "min_length", "min_new_tokens", "forced_bos_token_id",
    "forced_eos_token_id", "num_beams", "penalty_alpha", "guidance_scale", "watermarking_config",
)  # fmt: skip


def folder_config(model: Any) -> Any:
    """The model folder's generation_config.json as loaded (a peft model's base's), None for a model without one."""
    hf = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(hf, "generation_config", None)


def folder_settings(
    model: Any, sampling: RowSampling, no_repeat_ngram_size: int, model_defaults: bool
) -> tuple[RowSampling, Callable[[list, int], torch.Tensor | None] | None]:
    """The rows' settings and bans: the arguments, plus (with `model_defaults`) what the model folder's
    generation_config.json sets and the arguments leave open, as HF generate would apply it."""
    ngram, suppress, begin, bad = no_repeat_ngram_size, [], [], []
    if model_defaults:
        gc = folder_config(model)
        defaults = gc._get_default_generation_params() if gc is not None else {}
        for key in _REFUSED if gc is not None else ():
            value = getattr(gc, key, None)
            if value is not None and value != defaults.get(key):
                name = getattr(getattr(model, "config", None), "_name_or_path", "")  # a peft model's is its base's
                where = f"{name or 'the model'}/generation_config.json"
                raise UserError(f"{where}: {key}={value!r} is not supported by weitiao's generation loop; remove it")
        if gc is not None:
            if sampling.temperature > 0 and gc.min_p:
                sampling = replace(sampling, min_p=float(gc.min_p))
            ngram = ngram or (gc.no_repeat_ngram_size or 0)
            suppress, begin = list(gc.suppress_tokens or []), list(gc.begin_suppress_tokens or [])
            bad = [list(b) for b in gc.bad_words_ids or []]
    if not (ngram or suppress or begin or bad):
        return sampling, None

    def ban(rows: list, vocab: int) -> torch.Tensor:
        out = torch.zeros(len(rows), vocab, dtype=torch.bool)
        for i, row in enumerate(rows):
            h = row.prompt_ids + row.ids
            banned = list(suppress) + (begin if not row.ids else [])
            banned += [b[-1] for b in bad if len(b) == 1 or h[len(h) - len(b) + 1 :] == b[:-1]]
            if ngram and len(h) >= ngram - 1:  # no n-gram twice (HF's no_repeat_ngram_size): its last token is barred
                head = h[len(h) - ngram + 1 :] if ngram > 1 else []
                banned += [h[j + ngram - 1] for j in range(len(h) - ngram + 1) if h[j : j + ngram - 1] == head]
            out[i, [t for t in banned if t < vocab]] = True
        return out.to(next(model.parameters()).device)

    return sampling, ban


def folder_sampling(model: Any) -> dict[str, float]:
    """The sampling defaults the model folder's generation_config.json sets (temperature, top_p, top_k; Qwen2.5-Instruct
    0.7, 0.8, 20): what vLLM's server uses where a request leaves them open (its `--generation-config auto`)."""
    gc = folder_config(model)
    return {k: v for k in ("temperature", "top_p", "top_k") if (v := getattr(gc, k, None)) is not None}


def chat_sampling(
    model: Any, temperature: float | None, top_p: float | None, repetition_penalty: float | None
) -> tuple[float, float, int, float]:
    """temperature, top_p, top_k, repetition_penalty of a chat reply: the values given, else the model folder's
    generation_config.json (`folder_sampling`), else 0.7, 0.9, 50 (HF generate's top_k) and 1 (off)."""
    folder = {"temperature": 0.7, "top_p": 0.9, "top_k": 50, **folder_sampling(model)}
    return (
        folder["temperature"] if temperature is None else temperature,
        folder["top_p"] if top_p is None else top_p,
        folder["top_k"],
        folder_repetition_penalty(model) if repetition_penalty is None else repetition_penalty,
    )


def folder_repetition_penalty(model: Any) -> float:
    """The model folder's generation_config.json `repetition_penalty` (Qwen2.5-Instruct's 1.05), 1.0 when unset: what
    HF generate (greedy too) and vLLM apply when the caller leaves it open."""
    return float(getattr(folder_config(model), "repetition_penalty", None) or 1.0)


def _eot_pad(tokenizer: Any, template: ChatTemplate) -> tuple[int, int]:
    eot_id = tokenizer.convert_tokens_to_ids(template.eot)
    return eot_id, tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eot_id


def end_ids(model: Any, tokenizer: Any, template: ChatTemplate) -> set[int]:
    """Every id a served reply ends at: the template's end-of-turn, the tokenizer's EOS (Qwen2.5 base's
    <|endoftext|> beside <|im_end|>) and the model's generation_config.json eos_token_id, as HF generate."""
    return set(stop_ids(tokenizer, template, getattr(folder_config(model), "eos_token_id", None)))


def model_vocab(model: Any) -> int | None:
    """The embedding rows the model's config declares; None when it has no config (a wrapped or scripted model)."""
    return getattr(getattr(model, "config", None), "vocab_size", None)


def beyond_vocab(tokenizer: Any, ids: list[int], vocab: int | None) -> str | None:
    """Why `ids` cannot be fed to a model of `vocab` embeddings (a tokenizer token the model has no row for, such as
    one added to the tokenizer but never to the model), or None (also when `vocab` is unknown). Fed, it fails the
    embedding lookup of the whole batch."""
    bad = next((t for t in ids if t >= vocab), None) if vocab else None
    if bad is None:
        return None
    return (
        f"it holds the token {tokenizer.convert_ids_to_tokens(bad)!r} (id {bad}), which the model cannot read: it "
        f"embeds ids 0 to {vocab - 1}, the tokenizer has {len(tokenizer)} tokens; leave the token out of the text"
    )


def _seeded(sampling: RowSampling, seed: int | None, k: int, model: Any) -> RowSampling:
    """Row k's sampling with its own stream seeded seed + k (as `weitiao serve` seeds a request's choices), so a seeded
    reply depends on its prompt alone, not on `batch_size` or the rows beside it; unchanged when greedy or unseeded."""
    if seed is None or sampling.temperature == 0:
        return sampling
    device = next(model.parameters()).device
    return replace(sampling, generator=torch.Generator(device).manual_seed((seed + k) % 2**64))


def generate_ids(
    model: Any,
    tokenizer: Any,
    template: ChatTemplate,
    conversations: list[list[Message]],
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_p: float = 1.0,
    top_k: int = 0,
    repetition_penalty: float | None = None,
    batch_size: int = 16,
    seed: int | None = None,
    model_defaults: bool = True,
    no_repeat_ngram_size: int = 0,
    logps: bool = False,
    stops: set[int] | None = None,
    values: tuple[torch.nn.Module, Callable[[torch.Tensor], torch.Tensor]] | None = None,
) -> list[Sampled]:
    """Reply to each conversation (ending with a user turn); greedy when temperature == 0.

    Up to `batch_size` rows decode together; a finished row's place goes to the next conversation at once. With
    `seed` each sampled row draws from its own stream (seed + its index): the same replies at any `batch_size`.
    Replies are cut after the first end-of-turn token (kept). top_k=0 and top_p=1 are off. With
    model_defaults=False nothing comes from the model folder's generation_config.json (its min_p,
    no_repeat_ngram_size, repetition_penalty when None, ...): with the defaults above, sampling draws from exactly
    softmax(logits / temperature), the distribution PPO's log-probs score. With `logps` each reply token's
    log-prob under the distribution it was drawn from comes back too (`Sampled.logps`). `stops`: the ids a
    reply ends at (kept), the template's end-of-turn when None (PPO's sampler, which cuts its draws itself).
    `values` = (trunk, head): each reply token also gets head(h) [rows, H] → [rows], h the last hidden state (the
    `last_hidden_state` of `trunk`, a module inside `model`) at the position whose logits drew it (`Sampled.values`;
    PPO's shared critic: the values of a forward of the actor on the whole sequence, from the decode's own states).
    """
    if seed is not None:
        torch.manual_seed(seed)
    if repetition_penalty is None:  # the folder's (as HF generate and vLLM) unless nothing may come from there
        repetition_penalty = folder_repetition_penalty(model) if model_defaults else 1.0
    eot_id, pad_id = _eot_pad(tokenizer, template)
    greedy = temperature == 0
    sampling = RowSampling(temperature, 1.0 if greedy else top_p, 0 if greedy else top_k, repetition_penalty)
    sampling, ban = folder_settings(model, sampling, no_repeat_ngram_size, model_defaults)
    prompts = [
        tokenizer(template.render(tokenizer, c, add_generation_prompt=True), add_special_tokens=False)["input_ids"]
        for c in conversations
    ]
    vocab = model_vocab(model)  # a wrapped model (PPO's) may hide it
    for k, p in enumerate(prompts):
        if why := beyond_vocab(tokenizer, p, vocab):
            raise UserError(f"conversation {k}: {why}")
    rows = [
        _Reply(p, _seeded(sampling, seed, k, model), stops or {eot_id}, max_new_tokens) for k, p in enumerate(prompts)
    ]
    # all of a batch's prompts in one prefill: offline, nobody waits on the first token
    chunk = batch_size * max((len(p) for p in prompts), default=1)
    hidden: list[torch.Tensor] = []  # the trunk's last hidden states [rows, width, H] of the latest forward
    hook = read = None
    if values is not None:
        trunk, head = values

        def keep(_module: Any, _args: Any, out: Any) -> None:
            hidden[:] = [out[0]]

        hook = trunk.register_forward_hook(keep)
        read = lambda: head(hidden[0][:, -1])  # noqa: E731  (left-padded: the last column is each row's latest)
    engine = Engine(model, pad_id, max_rows=batch_size, prefill_chunk=chunk, ban=ban, sampled_logps=logps, values=read)
    engine.add(rows)
    was_training = model.training
    model.eval()
    try:
        while engine.live():
            engine.tick()
    finally:
        model.train(was_training)
        if hook is not None:
            hook.remove()
    return [
        Sampled(r.prompt_ids, r.ids, r.stopped, r.sampled if logps else None, r.values if values else None)
        for r in rows
    ]


def generate(
    model: Any, tokenizer: Any, template: ChatTemplate, conversations: list[list[Message]], *args: Any, **kw: Any
) -> list[Generation]:
    """Reply texts to each conversation; further arguments as in `generate_ids` (greedy by default). A reply
    ends where it would when served (`end_ids`: a tokenizer EOS apart from the end-of-turn too)."""
    out = []
    kw.setdefault("stops", end_ids(model, tokenizer, template))
    for s in generate_ids(model, tokenizer, template, conversations, *args, **kw):
        toks = s.response_ids[:-1] if s.stopped else s.response_ids
        out.append(Generation(decode_whole(tokenizer, toks), len(toks), s.stopped))
    return out


def stream_reply(
    model: Any,
    tokenizer: Any,
    template: ChatTemplate,
    messages: list[Message],
    max_new_tokens: int = 256,
    temperature: float | None = None,
    top_p: float | None = None,
    repetition_penalty: float | None = None,
    seed: int | None = None,
) -> Iterator[str]:
    """Yield the reply to one conversation piece by piece as it is generated (whole characters only); return the
    number of tokens generated (the end-of-turn not counted), so that a reply of no whole character can be said.

    Sampling left None, top_k and the rest come from the model's generation_config.json (`chat_sampling`), as
    `generate_ids` with model_defaults. With `seed` a sampled reply draws from its own stream seeded `seed`, as
    `weitiao serve` draws a request's first choice: the same conversation and seed give the same reply.
    """
    temperature, top_p, top_k, repetition_penalty = chat_sampling(model, temperature, top_p, repetition_penalty)
    _, pad_id = _eot_pad(tokenizer, template)
    hf = model.get_base_model() if hasattr(model, "get_base_model") else model
    greedy = temperature == 0
    sampling = RowSampling(temperature, 1.0 if greedy else top_p, 0 if greedy else top_k)
    sampling, ban = folder_settings(model, replace(sampling, repetition_penalty=repetition_penalty), 0, True)
    prompt = template.render(tokenizer, messages, add_generation_prompt=True)
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    # past the context a model reads positions it was never trained on and answers garbage, silently
    context = getattr(getattr(hf, "config", None), "max_position_embeddings", None) or tokenizer.model_max_length
    if len(ids) >= context:
        raise UserError(f"the conversation is {len(ids)} tokens; the model's context is {context}: shorten it")
    if why := beyond_vocab(tokenizer, ids, model_vocab(hf)):
        raise UserError(f"the conversation: {why}")
    max_new_tokens = min(max_new_tokens, context - len(ids))  # as serve's default max_tokens
    row = _Reply(ids, _seeded(sampling, seed, 0, model), end_ids(model, tokenizer, template), max_new_tokens)
    engine = Engine(model, pad_id, max_rows=1, prefill_chunk=len(row.prompt_ids), ban=ban)
    engine.add([row])
    decoder, fed = IncrementalDecoder(tokenizer), 0  # new tokens only, not the whole reply every step
    while engine.live():
        engine.tick()
        new, fed = row.ids[fed:], len(row.ids)
        if piece := decoder.push(new[:-1] if row.stopped else new):  # half a character waits
            yield piece
    if piece := decoder.finish():
        yield piece
    return len(row.ids) - row.stopped
