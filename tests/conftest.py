"""Shared fixtures: a byte-level BPE tokenizer with ChatML, and tiny Llama/Qwen2 models saved to disk."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

# Before torch loads OpenMP: idle threads sleep instead of spinning, so a test's threads do not
# burn the cores other processes (servers, ranks, parallel jobs) need.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs one pytest worker per core: one thread each,
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # also for the CLI subprocesses a test starts

import pytest  # noqa: E402
import torch  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)

CORPUS = [
    "今天天气怎么样？挺好的，大晴天☀️，要出去玩吗？",
    "周末有什么安排？在家躺着😂 你呢？",
    "推荐一部电影吧。《流浪地球》不错哦👍",
    "怎么做番茄炒蛋？先炒蛋再炒番茄，最后一起翻炒，加点盐就好啦。",
    "Hello world, this is a tiny tokenizer for tests. 1234567890",
] * 20
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def build_tokenizer(chat_template: str | None = CHATML, eos: str = "<|im_end|>"):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=eos, pad_token="<|endoftext|>", additional_special_tokens=SPECIALS[1:]
    )
    if chat_template:
        fast.chat_template = chat_template
    return fast


@pytest.fixture(scope="session", autouse=True)
def _tokenized_cache(tmp_path_factory):
    """The tokenized-data cache (data.cache) of every test lives in a session temp dir, not ~/.cache."""
    os.environ["WEITIAO_CACHE"] = str(tmp_path_factory.mktemp("weitiao-cache"))


@pytest.fixture(scope="session")
def tokenizer():
    return build_tokenizer()


def save_tiny_model(
    path: Path, tokenizer, arch: str = "llama", hidden: int = 128, kv_heads: int = 4, seed: int = 0
) -> Path:
    """A random tiny causal LM + tokenizer saved as an HF dir (4-bit safe shapes by default)."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    kw = dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=kv_heads,
        max_position_embeddings=512,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(LlamaConfig(**kw)) if arch == "llama" else Qwen2ForCausalLM(Qwen2Config(**kw))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def parts(tiny_model_dir, tokenizer):
    """(model, tokenizer, template) of the tiny Llama for in-process servers."""
    from transformers import AutoModelForCausalLM

    from weitiao.data.templates import resolve_template

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    return model, tokenizer, resolve_template(tokenizer)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "llama", tokenizer)


def walked_mask(pattern, state, toks, size: int):
    """The constraint's mask by brute force: a token is allowed when the pattern steps through all its bytes."""
    want = torch.zeros(size, dtype=torch.bool)
    for i, seq in enumerate(toks.table):
        s = state
        for b in seq or b"":
            s = pattern.step(s, b)
        want[i] = seq is not None and s is not None
    return want


def count_renders(monkeypatch, tok) -> list:
    """A list that grows by one at each `tok.apply_chat_template` call from now on."""
    calls: list = []

    def counted(*a, render=tok.apply_chat_template, **kw):
        calls.append(1)
        return render(*a, **kw)

    monkeypatch.setattr(tok, "apply_chat_template", counted)
    return calls


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


CHAT_ROWS = [
    {"instruction": "今天天气怎么样？", "input": "", "output": "挺好的，大晴天☀️"},
    {"instruction": "周末有什么安排？", "output": "在家躺着😂 你呢？"},
    {"instruction": "推荐一部电影吧", "output": "《流浪地球》不错哦👍", "system": "你是朋友"},
    {
        "instruction": "怎么做番茄炒蛋？",
        "output": "先炒蛋再炒番茄，最后一起翻炒，加点盐就好啦。",
        "history": [["你会做饭吗？", "会一点哈哈"]],
    },
]


@pytest.fixture
def chat_file(tmp_path) -> Path:
    rows = [dict(r) for r in CHAT_ROWS for _ in range(6)]
    for i, r in enumerate(rows):
        r["instruction"] = r["instruction"] + f" #{i}"
    return write_jsonl(tmp_path / "chat.jsonl", rows)


RECIPES = {"sft": "SFTConfig", "dpo": "DPOConfig", "rm": "RMConfig", "ppo": "PPOConfig", "kto": "KTOConfig"}


def recipe_config(recipe: str, model_dir, data, out, *extra: str):
    """A recipe's config for a test: model dir, data file (PPO: prompts file), out dir, no progress bar
    or tensorboard, then `extra` overrides (`key.path=value`, as on the command line)."""
    import importlib

    from weitiao.config import load_config

    cls = getattr(importlib.import_module(f"weitiao.recipes.{recipe}"), RECIPES[recipe])
    key = "data.prompts" if recipe == "ppo" else "data.train"
    base = [f"model.path={model_dir}", f"{key}=[{data}]", f"train.out={out}"]
    return load_config(cls, None, [*base, "train.progress=false", "train.tensorboard=false", *extra])


@pytest.fixture
def make_config(tiny_model_dir, tmp_path):
    """`recipe_config` with the tiny Llama and tmp_path/run unless given: make_config("sft", data, *overrides)."""

    def make(recipe: str, data, *extra: str, out=None, model_dir=None):
        return recipe_config(recipe, model_dir or tiny_model_dir, data, out or tmp_path / "run", *extra)

    return make


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun_driver(
    driver: Path, *args: str, nproc: int = 2, timeout: int = 600, ok: bool = True, env: dict | None = None
) -> subprocess.CompletedProcess:
    """`python -m torch.distributed.run --nproc_per_node=NPROC DRIVER ARGS` on CPU (one thread a process, this
    checkout's weitiao first on the path, `env` added), asserted to exit 0 (else its first traceback; `ok` false:
    not 0); the finished launch."""
    root = Path(__file__).resolve().parents[1]
    ddp = ["-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(root), **(env or {})}
    cmd = [sys.executable, *ddp, f"--master_port={free_port()}", str(driver), *args]
    p = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True, timeout=timeout)
    assert (p.returncode == 0) == ok, p.stderr[max(0, p.stderr.find("Traceback")) :][-3000:]
    return p


@contextlib.contextmanager
def serve_process(model_dir, *args: str, env: dict | None = None):
    """A real `weitiao serve` process on a free loopback port, up and answering /health: yields (process, base URL)."""
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "weitiao", "serve", "--model", str(model_dir), "--port", str(port), *args]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(base + "/health").status_code == 200:
                    break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stdout.read().decode()
                time.sleep(0.2)
        yield proc, base
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.fixture(scope="module")
def adapter_run(tmp_path_factory, tokenizer) -> Path:
    """A run-shaped dir (RUN/final/adapter) holding a peft adapter made directly on a tiny non-demo base."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("exp")
    base = save_tiny_model(root / "base", tokenizer, hidden=64)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(r=2, target_modules=["q_proj"]))
    model.save_pretrained(root / "run" / "final" / "adapter")
    return root / "run"


def replaced(schema: dict, path: list, value) -> dict:
    """A deep copy of a JSON schema with the value at `path` replaced (None: deleted)."""
    out = json.loads(json.dumps(schema))
    at = out
    for k in path[:-1]:
        at = at[k]
    if value is None:
        del at[path[-1]]
    else:
        at[path[-1]] = value
    return out


@pytest.fixture(scope="module")
def one_thread():
    """Tiny matmuls: one thread is as fast, and does not stall on OpenMP barriers when other jobs share the CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
