"""Batched, KV-cached generation through the chat template; stops on the end-of-turn token."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

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
        out.append(Generation(tokenizer.decode(toks, skip_special_tokens=True), len(toks), s.stopped))
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

    from transformers import TextIteratorStreamer

    eot_id = tokenizer.convert_tokens_to_ids(template.eot)
    prompt = template.render(tokenizer, messages, add_generation_prompt=True)
    ids = torch.tensor(
        [tokenizer(prompt, add_special_tokens=False)["input_ids"]], device=next(model.parameters()).device
    )
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
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
