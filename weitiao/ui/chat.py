"""Checkpoints loaded for chat (the last few kept), streaming replies through weitiao.infer."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from weitiao.data.templates import resolve_template
from weitiao.infer import generate
from weitiao.infer.chat import load_chat_model


class Loaded:
    def __init__(self, model: Any, tokenizer: Any):
        self.model, self.tokenizer = model, tokenizer
        self.template = resolve_template(tokenizer, "auto")
        self.lock = threading.Lock()  # one generation at a time per model


class ChatModels:
    """At most `keep` models in memory (two: side-by-side comparison), the least recently used dropped."""

    def __init__(self, keep: int = 2):
        self.keep = keep
        self.models: OrderedDict[tuple, Loaded] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, base: str, adapter: Path | None) -> Loaded:
        key = (base, str(adapter) if adapter else None)
        with self.lock:
            if key in self.models:
                self.models.move_to_end(key)
                return self.models[key]
            m, tok = load_chat_model(None, str(adapter)) if adapter else load_chat_model(base, None)
            self.models[key] = Loaded(m, tok)
            while len(self.models) > self.keep:
                self.models.popitem(last=False)
            return self.models[key]

    def stream(self, loaded: Loaded, messages: list[dict], **sampling: Any) -> Iterator[str]:
        with loaded.lock:
            yield from generate.stream_reply(loaded.model, loaded.tokenizer, loaded.template, messages, **sampling)
