"""Checkpoints loaded for chat (the last few kept), streaming replies through weitiao.infer."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Generator
from pathlib import Path
from typing import Any

from weitiao.data.templates import resolve_template
from weitiao.demo import MODEL_DIR


def folder_state(model: str | Path | None) -> tuple:
    """(path, inode, size, mtime) of each file in a model folder and in its subfolders one level down (a checkpoint's
    model/, adapter/, tokenizer/; 'demo': the shipped model); () for anything else. A cache keyed on it loads the
    folder again once it is retrained, replaced or edited."""
    folder = Path(MODEL_DIR if model == "demo" else model or "")
    if model is None or not folder.is_dir():
        return ()
    out = []
    for e in folder.iterdir():
        for f in e.iterdir() if e.is_dir() else [e]:
            try:
                s = f.stat()
            except OSError:  # removed while a run rewrites the folder: its new files are keyed next time
                continue
            out.append((str(f.relative_to(folder)), s.st_ino, s.st_size, s.st_mtime_ns))
    return tuple(sorted(out))


def model_state(model: str | Path | None) -> tuple:
    """What a cache of `model` is keyed on: the reference itself and, for a folder ('demo': the shipped model), its
    `folder_state`; for a hub id, the revision the local Hugging Face cache resolves it to (its snapshot folder's
    commit, and that folder's state): a re-download of a newer revision is loaded again."""
    if model is None or model == "demo" or Path(model).expanduser().is_dir():
        return (str(model), folder_state(model))
    from huggingface_hub import try_to_load_from_cache

    for name in ("config.json", "tokenizer_config.json"):
        try:
            hit = try_to_load_from_cache(str(model), name)
        except ValueError:  # not shaped like a hub id: loading says why
            break
        if isinstance(hit, str):
            snapshot = Path(hit).parent
            return (str(model), snapshot.name, folder_state(snapshot))
    return (str(model), None)


def load_weights(base: str, weights: Path | None) -> tuple[Any, Any]:
    """(model, tokenizer) of a checkpoint folder: its adapter on the base, its full model (full
    fine-tuning), or the base itself (None); the run's tokenizer, carrying its chat template, if saved."""
    from weitiao.infer.chat import load_chat_model  # torch: here, so `weitiao ui` refuses a bad flag at once

    if weights is None:
        return load_chat_model(base, None)
    if (weights / "model" / "config.json").is_file():
        from weitiao.models.load import ModelSpec, load_model, load_tokenizer

        tok = weights / "tokenizer"
        model = load_model(ModelSpec(path=str(weights / "model"))).eval()
        return model, load_tokenizer(str(tok) if tok.is_dir() else base)
    return load_chat_model(None, str(weights))


class Loaded:
    def __init__(self, model: Any, tokenizer: Any):
        self.model, self.tokenizer = model, tokenizer
        self.template = resolve_template(tokenizer, "auto")
        self.lock = threading.Lock()  # one generation step at a time per model


class ChatModels:
    """At most `keep` models in memory (two: side-by-side comparison), the least recently used dropped."""

    def __init__(self, keep: int = 2):
        self.keep = keep
        self.models: OrderedDict[tuple, Loaded] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, base: str, weights: Path | None) -> Loaded:
        # the folders' files (a hub id's revision) in the key: a base retrained in place or downloaded anew, or a
        # checkpoint rewritten, is loaded again
        key = (model_state(base), str(weights) if weights else None, folder_state(weights))
        with self.lock:
            if key in self.models:
                self.models.move_to_end(key)
                return self.models[key]
            self.models[key] = Loaded(*load_weights(base, weights))
            while len(self.models) > self.keep:
                self.models.popitem(last=False)
            return self.models[key]

    def stream(self, loaded: Loaded, messages: list[dict], **sampling: Any) -> Generator[str, None, int]:
        """The reply piece by piece; returns the number of tokens generated. The model's lock is held for each step,
        never across a yield: when a client hangs up, Starlette leaves this generator suspended until the garbage
        collector finds it, and a lock held there made every later chat with this model wait (for ever on a quiet
        console)."""
        from weitiao.infer.generate import stream_reply

        pieces = stream_reply(loaded.model, loaded.tokenizer, loaded.template, messages, **sampling)
        while True:
            with loaded.lock:
                try:
                    piece = next(pieces)
                except StopIteration as end:
                    return end.value
            yield piece
