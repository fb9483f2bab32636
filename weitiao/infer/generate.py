"""Batched, KV-cached generation through the chat template; stops on the end-of-turn token."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from weitiao.data.decode import TextPieces, decode_whole
from weitiao.data.formats import Message
from weitiao.data.templates import ChatTemplate


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


@torch.no_grad()
def generate_ids(
    model: Any,
    tokenizer: Any,
    template: ChatTemplate,
    conversations: list[list[Message]],
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_p: float = 1.0,
    top_k: int = 0,
    repetition_penalty: float = 1.0,
    batch_size: int = 16,
    seed: int | None = None,
    model_defaults: bool = True,
    no_repeat_ngram_size: int = 0,
) -> list[Sampled]:
    """Reply to each conversation (ending with a user turn); greedy when temperature == 0.

    Replies are cut after the first end-of-turn token (kept); tokens after it are padding, never
    part of the reply, whatever the pad id is. top_k=0 and top_p=1 are off. With
    model_defaults=False nothing comes from the model folder's generation_config.json (its min_p,
    top_k, repetition_penalty, ...): with the defaults above, sampling draws from exactly
    softmax(logits / temperature), the distribution PPO's log-probs score.
    """
    if seed is not None:
        torch.manual_seed(seed)
    eot_id = tokenizer.convert_tokens_to_ids(template.eot)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eot_id
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: list[Sampled] = []
    for k in range(0, len(conversations), batch_size):
        prompts = [template.render(tokenizer, c, add_generation_prompt=True) for c in conversations[k : k + batch_size]]
        ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        width = max(len(x) for x in ids)
        input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(input_ids)
        for r, x in enumerate(ids):  # left padding keeps every prompt's end aligned
            input_ids[r, width - len(x) :] = torch.tensor(x)
            mask[r, width - len(x) :] = 1
        kw: dict[str, Any] = {"do_sample": temperature > 0}
        if temperature > 0:
            kw.update(temperature=temperature, top_p=top_p, top_k=top_k)  # top_k=None would mean HF's 50
        if no_repeat_ngram_size:
            kw["no_repeat_ngram_size"] = no_repeat_ngram_size
        with _own_defaults(model, not model_defaults):
            gen = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=max_new_tokens,
                eos_token_id=eot_id,
                pad_token_id=pad_id,
                repetition_penalty=repetition_penalty,
                use_cache=True,
                **kw,
            )
        for prompt, row in zip(ids, gen[:, width:].tolist()):
            stopped = eot_id in row
            out.append(Sampled(prompt, row[: row.index(eot_id) + 1] if stopped else row, stopped))
    model.train(was_training)
    return out


@contextmanager
def _own_defaults(model: Any, active: bool) -> Iterator[None]:
    """Replace the model's generation_config (which fills every sampling setting left unset) with HF's bare one."""
    if not active:
        yield
        return
    from transformers import GenerationConfig

    hf = model.get_base_model() if hasattr(model, "get_base_model") else model
    saved = hf.generation_config
    hf.generation_config = GenerationConfig()
    try:
        yield
    finally:
        hf.generation_config = saved


def generate(
    model: Any, tokenizer: Any, template: ChatTemplate, conversations: list[list[Message]], *args: Any, **kw: Any
) -> list[Generation]:
    """Reply texts to each conversation; further arguments as in `generate_ids` (greedy by default)."""
    out = []
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
    temperature: float = 0.7,
    top_p: float = 0.9,
    repetition_penalty: float = 1.0,
) -> Iterator[str]:
    """Yield the reply to one conversation piece by piece as it is generated."""
    from threading import Thread

    eot_id = tokenizer.convert_tokens_to_ids(template.eot)
    prompt = template.render(tokenizer, messages, add_generation_prompt=True)
    ids = torch.tensor(
        [tokenizer(prompt, add_special_tokens=False)["input_ids"]], device=next(model.parameters()).device
    )
    streamer = TextPieces(tokenizer)  # whole characters only, never a broken byte
    kw: dict[str, Any] = {"do_sample": temperature > 0}
    if temperature > 0:
        kw.update(temperature=temperature, top_p=top_p)
    args = dict(
        input_ids=ids,
        max_new_tokens=max_new_tokens,
        eos_token_id=eot_id,
        streamer=streamer,
        pad_token_id=tokenizer.pad_token_id,
        repetition_penalty=repetition_penalty,
        **kw,
    )
    thread = Thread(target=lambda: torch.no_grad()(model.generate)(**args), daemon=True)
    thread.start()
    yield from streamer
    thread.join()


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


class Sampler:
    """Per-row logits processing and sampling for a batch, in vLLM's order: banned tokens, penalties,
    then greedy argmax, or temperature, top-k, top-p and a draw. Vectorized over rows and vocabulary;
    the only Python loop is over seeded rows, each drawing from its own generator, so a seeded row's
    tokens do not depend on which rows share its batch."""

    def __init__(self, rows: list[RowSampling], history: list[list[int]], n_prompt: list[int], vocab: int, device: Any):
        f = lambda name: torch.tensor([getattr(r, name) for r in rows], dtype=torch.float32, device=device)  # noqa: E731
        self.rows, self.vocab, self.device = rows, vocab, device
        self.temp, self.top_p, self.rep = f("temperature"), f("top_p"), f("repetition_penalty")
        self.top_k = torch.tensor([r.top_k for r in rows], device=device)
        self.pres, self.freq = f("presence_penalty"), f("frequency_penalty")
        b = len(rows)
        self.counts = self.seen = None  # [rows, vocab]: reply-token counts; tokens of prompt + reply
        if bool((self.pres != 0).any() or (self.freq != 0).any()):
            self.counts = torch.zeros(b, vocab, device=device)
            for i, (h, n) in enumerate(zip(history, n_prompt)):  # a resumed row's reply so far
                reply = torch.tensor(h[n:], dtype=torch.long, device=device)
                self.counts[i].index_add_(0, reply, torch.ones(len(reply), device=device))
        if bool((self.rep != 1).any()):
            self.seen = torch.zeros(b, vocab, dtype=torch.bool, device=device)
            for i, h in enumerate(history):
                self.seen[i, torch.tensor(h, dtype=torch.long, device=device)] = True
        self._flags()

    def _flags(self) -> None:  # decided once per batch (and per drop), not with a device sync every step
        self.all_greedy = all(r.temperature == 0 for r in self.rows)
        self.filtering = any(r.temperature > 0 and (r.top_k > 0 or r.top_p < 1) for r in self.rows)

    def keep(self, idx: torch.Tensor) -> None:
        """Drop the rows not in `idx` (finished ones)."""
        self.rows = [self.rows[i] for i in idx.tolist()]
        for name in ("temp", "top_p", "rep", "top_k", "pres", "freq", "counts", "seen"):
            if getattr(self, name) is not None:
                setattr(self, name, getattr(self, name)[idx])
        self._flags()

    def __call__(self, logits: torch.Tensor, ban: torch.Tensor | None = None) -> torch.Tensor:
        """Next token of each row from its raw logits [rows, vocab]; `ban` [rows, vocab] True = never."""
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
            return self._record(tokens)
        logits = logits / torch.where(greedy, 1.0, self.temp)[:, None]
        if self.filtering:
            logits = self._top_k_top_p(logits)
        probs = logits.softmax(-1)
        # exponential race: argmax(p / q), q ~ Exp(1), is a draw from p; each seeded row draws its own q
        q = torch.empty_like(probs).exponential_()
        for i, r in enumerate(self.rows):
            if r.generator is not None and r.temperature > 0:
                q[i].exponential_(generator=r.generator)
        drawn = (probs / q).argmax(-1)
        return self._record(torch.where(greedy, tokens, drawn))

    def _top_k_top_p(self, logits: torch.Tensor) -> torch.Tensor:
        """HF/vLLM semantics: keep the k most likely, then the smallest set with mass >= top_p (at least one)."""
        srt, idx = logits.sort(-1)  # ascending
        k = torch.where(self.top_k > 0, self.top_k, self.vocab).clamp(max=self.vocab)
        kth = srt.gather(-1, (self.vocab - k)[:, None])
        srt = srt.masked_fill(srt < kth, float("-inf"))
        cum = srt.softmax(-1).cumsum(-1)
        drop = cum <= (1 - self.top_p)[:, None]
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
    """Left-padded rows decoded one token per step through a KV cache; finished rows can be dropped.

    Position ids count only each row's real tokens (as HF generate does with left padding), so a row's
    logits do not depend on how much padding its batch needs. `adapter_names` (one per row, "__base__"
    for none) picks each row's LoRA adapter in a peft model serving several (peft's mixed batches).
    """

    def __init__(self, model: Any, prompts: list[list[int]], pad_id: int, adapter_names: list[str] | None = None):
        from transformers import DynamicCache

        self.model, self.adapter_names = model, adapter_names
        self.device = next(model.parameters()).device
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, p in enumerate(prompts):
            ids[r, width - len(p) :] = torch.tensor(p)
            mask[r, width - len(p) :] = 1
        self.ids, self.mask = ids.to(self.device), mask.to(self.device)
        self.n_real = self.mask.sum(-1)
        self.cache = DynamicCache(config=getattr(model, "config", None))

    def _forward(self, ids: torch.Tensor, positions: torch.Tensor, **kw: Any) -> torch.Tensor:
        if self.adapter_names is not None:
            kw["adapter_names"] = self.adapter_names
        out = self.model(
            input_ids=ids, attention_mask=self.mask, position_ids=positions, cache=self.cache,
            use_cache=True, **kw,
        )  # fmt: skip
        return out.logits

    def prefill(self, all_logits: bool = False) -> torch.Tensor:
        """Logits [rows, width, vocab] of every prompt position when `all_logits`, else of the last [rows, 1, vocab]."""
        positions = (self.mask.cumsum(-1) - 1).clamp(min=0)
        return self._forward(self.ids, positions, logits_to_keep=0 if all_logits else 1)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per row; the next logits [rows, vocab]."""
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(tokens), 1)], dim=-1)
        positions = self.n_real[:, None].clone()
        self.n_real = self.n_real + 1
        return self._forward(tokens[:, None], positions)[:, -1]

    def keep(self, idx: torch.Tensor) -> None:
        """Keep only the rows `idx` (their cache, mask and positions)."""
        self.cache.batch_select_indices(idx)
        self.mask, self.n_real = self.mask[idx], self.n_real[idx]
        if self.adapter_names is not None:
            self.adapter_names = [self.adapter_names[i] for i in idx.tolist()]
