"""Build the tiny Chinese demo base model in weitiao/demo/model/ (tokenizer + pretrained Llama).

Run from the repo root, after scripts/build_demo_data.py:

    python scripts/build_demo_model.py

Trains a 4096-token byte-level BPE on all demo data and the generated corpus
(scripts/build_demo_corpus.py), pretrains a 6-layer Llama (about 5.8M parameters) on pretrain.jsonl
and the corpus's chat rows (ChatML) plus its plain documents (each ending with <|endoftext|>),
saves it with save_pretrained (weights stored as float16, config.json's dtype float32: see store_fp16), then prints
greedy generations and reply metrics on the held-out prompts. Seeded; needs no network and no GPU.
`python scripts/build_demo_model.py --fp16` only rewrites an existing DEMO_OUT's fp32 weights as float16 (how the
shipped file was made from the fp32 build; no training).

The run is bounded by steps and by wall time (DEMO_MINUTES, default 60): the cosine schedule follows
whichever of the two is further along, so a run cut by time still ends at the low learning rate; DEMO_STOP
ends it earlier at a step count. DEMO_INIT=DIR continues from a saved model (a second stage); the commands that
built the shipped model are in weitiao/demo/README.md.
A checkpoint is saved every DEMO_SAVE_MINUTES (default 10) to DEMO_OUT (default weitiao/demo/model).
Uses 2 threads; on a CPU shared with other work, DEMO_THREADS=1 is much faster. Run it under
`nice -n 10` on a shared machine. DEMO_AUTOCAST=bf16 runs forward and backward under bf16 autocast (fp32
weights and optimizer): 1.5x the steps per second on a 2-core CPU with AMX (0.80 vs 1.23 s a step, smoothed loss
5.906 vs 5.903 after 61 steps from scratch); the default
(auto) takes it where /proc/cpuinfo lists amx_bf16 or avx512_bf16 and says so, none elsewhere (slower there).
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SEED = 1234
ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = ROOT / "weitiao" / "demo" / "data"
MODEL_DIR = Path(os.environ.get("DEMO_OUT", ROOT / "weitiao" / "demo" / "model"))
DATA_FILES = ("pretrain", "style", "safety", "heldout_style", "heldout_redline")
ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
VOCAB_SIZE, SEQ_LEN, BATCH, STEPS, WARMUP = 4096, 256, 16, int(os.environ.get("DEMO_STEPS", "6000")), 40
MINUTES = float(os.environ.get("DEMO_MINUTES", "60"))
STOP = int(os.environ.get("DEMO_STOP", "0"))  # stop after this many steps; the schedule still runs to STEPS/MINUTES
SAVE_MINUTES = float(os.environ.get("DEMO_SAVE_MINUTES", "10"))
PEAK_LR, MIN_LR = float(os.environ.get("DEMO_PEAK_LR", "2e-3")), 2e-4
# DEMO_INIT=DIR continues from a model this script saved (its tokenizer kept): a second stage
INIT = os.environ.get("DEMO_INIT")
# chat-app logs with emoji in the corpus (build_demo_corpus.chat_log), and the share of them with a turned-down
# red-line request (the shipped model: stage 1 without logs, stage 2 with 20,000 at share 0; see demo/README.md)
N_LOGS = int(os.environ.get("DEMO_LOGS", "20000"))
LOG_REDLINE = float(os.environ.get("DEMO_LOG_REDLINE", "0"))
# documents that use the SFT replies' words outside refusals (build_demo_corpus.cover): a stage 3 with 8000 of them
# was tried on the shipped model and not kept (weitiao/demo/README.md); for the next base
N_COVER = int(os.environ.get("DEMO_COVER", "0"))
MAX_NEW_TOKENS = 80
AUTOCAST = os.environ.get("DEMO_AUTOCAST", "auto")
if AUTOCAST not in ("auto", "bf16", "none"):
    raise SystemExit(f"DEMO_AUTOCAST={AUTOCAST!r}: use auto, bf16 or none")
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content']"
    " + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
REFUSAL_MARKERS = ("抱歉", "不能", "无法", "不行", "不可以", "不会帮")
EMOJI_RE = re.compile("[\U0001f000-\U0001faff\u2600-\u27bf\u2b00-\u2bff]")


def read_jsonl(name: str) -> list[dict]:
    """Rows of weitiao/demo/data/<name>.jsonl."""
    with (DATA_DIR / f"{name}.jsonl").open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def row_texts(row: dict) -> list[str]:
    """Every text field of an Alpaca or messages row."""
    if "messages" in row:
        return [m["content"] for m in row["messages"]]
    return [row["instruction"], row["input"], row["output"]]


def build_tokenizer(data: dict[str, list[dict]], docs: list[str]) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on all demo texts and documents and wrap it with the ChatML template."""
    texts = list(docs)
    for rows in data.values():
        for row in rows:
            texts += [t for t in row_texts(row) if t] + ["user\n", "assistant\n"]
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=[ENDOFTEXT, IM_START, IM_END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    raw.train_from_iterator(texts, trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        extra_special_tokens=[IM_START],
        model_max_length=512,
        clean_up_tokenization_spaces=False,
        chat_template=CHATML,
    )
    assert len(tok) == VOCAB_SIZE, len(tok)
    for text, ids in zip(texts, tok(texts, add_special_tokens=False)["input_ids"]):
        assert tok.decode(ids) == text, f"round-trip failed: {text!r}"
    msgs = [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好呀😊"}]
    rendered = tok.apply_chat_template(msgs, tokenize=False)
    assert rendered == f"{IM_START}user\n你好{IM_END}\n{IM_START}assistant\n你好呀😊{IM_END}\n", rendered
    assert tok.decode(tok.encode(rendered, add_special_tokens=False)) == rendered
    return tok


def pack_blocks(
    tok: PreTrainedTokenizerFast, rows: list[dict], docs: list[str], rng: random.Random
) -> tuple[torch.Tensor, torch.Tensor]:
    """Render conversations with the chat template, end documents with <|endoftext|>, and greedily pack
    both into padded blocks.

    Returns token ids and position ids; positions restart at 0 for every sequence, which makes
    transformers mask attention block-diagonally, so each sequence is trained as if alone.
    """
    texts = [tok.apply_chat_template(r["messages"], tokenize=False) for r in rows] + [d + ENDOFTEXT for d in docs]
    seqs = tok(texts, add_special_tokens=False)["input_ids"]
    assert all(tok.decode(s) == t for s, t in zip(seqs, texts)), "round-trip failed"
    seqs = [s[:SEQ_LEN] for s in seqs]
    rng.shuffle(seqs)
    blocks, positions, cur, pos = [], [], [], []
    for s in seqs + [[]]:
        if len(cur) + len(s) > SEQ_LEN or not s:
            blocks.append(cur + [tok.pad_token_id] * (SEQ_LEN - len(cur)))
            positions.append(pos + list(range(SEQ_LEN - len(cur))))
            cur, pos = [], []
        cur, pos = cur + s, pos + list(range(len(s)))
    return torch.tensor(blocks), torch.tensor(positions)


def unseen_report(tok: PreTrainedTokenizerFast, blocks: torch.Tensor) -> None:
    """Print how many tokens the pre-training never shows, and what share of `weitiao demo`'s SFT reply tokens they
    are. Such a token's tied embedding row only ever learns "not this token" (softmax pushes every non-target down),
    so the frozen row under SFT's LoRA keeps it unsayable: the shipped base's SFT model put p < 0.01 on 烦 after
    被查到麻 and said "被查到麻哦" (see demo/README.md). A rebuild should see every token the SFT data uses."""
    from weitiao.recipes.demo import SFT_DATA

    seen = torch.zeros(len(tok), dtype=torch.bool)
    seen[blocks.flatten()] = True
    replies = [m["content"] for f in SFT_DATA for r in read_jsonl(f.removesuffix(".jsonl"))
               for m in r.get("messages", [{"role": "assistant", "content": r.get("output", "")}])
               if m["role"] == "assistant"]  # fmt: skip
    ids = torch.tensor([i for ids in tok(replies, add_special_tokens=False)["input_ids"] for i in ids])
    print(f"tokens never in the pre-training blocks: {int((~seen).sum())} of {len(tok)}; "
          f"{float((~seen[ids]).float().mean()):.1%} of the demo SFT replies' {len(ids)} tokens")  # fmt: skip


def build_model(tok: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    """The tiny Llama; shapes keep every linear weight a multiple of 64*256 elements (NF4)."""
    config = LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=256,
        intermediate_size=768,
        num_hidden_layers=6,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        rms_norm_eps=1e-5,
        bos_token_id=None,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, do_sample=False
    )
    return model


def use_bf16() -> bool:
    """DEMO_AUTOCAST: bf16, none, or auto (bf16 where the CPU multiplies bf16 natively: AMX or AVX-512 BF16)."""
    if AUTOCAST != "auto":
        return AUTOCAST == "bf16"
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        flags = set()
    return bool(flags & {"amx_bf16", "avx512_bf16"})


def lr_at(step: int, elapsed: float) -> float:
    """Linear warmup, then cosine decay from PEAK_LR to MIN_LR over steps or wall time, whichever is further."""
    if step < WARMUP:
        return PEAK_LR * (step + 1) / WARMUP
    progress = min(1.0, max((step - WARMUP) / max(1, STEPS - WARMUP), elapsed / (60 * MINUTES)))
    return MIN_LR + 0.5 * (PEAK_LR - MIN_LR) * (1 + math.cos(math.pi * progress))


def pretrain(
    model: LlamaForCausalLM, tok: PreTrainedTokenizerFast, blocks: torch.Tensor, positions: torch.Tensor
) -> float:
    """Train on all tokens (padding masked) until STEPS or MINUTES; return the final smoothed loss.

    Saves a checkpoint (model + tokenizer) every SAVE_MINUTES, so a killed build keeps its progress.
    """
    opt = torch.optim.AdamW(model.parameters(), lr=PEAK_LR, betas=(0.9, 0.95), weight_decay=0.01)
    gen = torch.Generator().manual_seed(SEED)
    order = torch.randperm(len(blocks), generator=gen)
    model.train()
    bf16 = use_bf16()
    print(f"autocast: {'bf16' if bf16 else 'none'} (DEMO_AUTOCAST={AUTOCAST})", flush=True)
    start, pos, smooth, saved = time.time(), 0, None, time.time()
    for step in range(STEPS):
        elapsed = time.time() - start
        if elapsed > 60 * MINUTES:
            print(f"time cap of {MINUTES:.0f} min reached after {step} steps", flush=True)
            break
        if STOP and step >= STOP:
            print(f"DEMO_STOP={STOP} reached", flush=True)
            break
        if pos + BATCH > len(order):
            order, pos = torch.randperm(len(blocks), generator=gen), 0
        idx = order[pos : pos + BATCH]
        batch = blocks[idx]
        pos += BATCH
        labels = batch.masked_fill(batch == tok.pad_token_id, -100)
        lr = lr_at(step, elapsed)
        for group in opt.param_groups:
            group["lr"] = lr
        # No attention_mask and no cache: transformers derives the per-sequence mask from positions.
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=batch, position_ids=positions[idx], labels=labels, use_cache=False).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        smooth = loss.item() if smooth is None else 0.98 * smooth + 0.02 * loss.item()
        if step % 20 == 0:
            print(
                f"step {step + 1:5d}/{STEPS}  loss {loss.item():.3f}  (avg {smooth:.3f})  "
                f"lr {lr:.1e}  {elapsed:5.0f}s  epoch {(step + 1) * BATCH / len(blocks):.2f}",
                flush=True,
            )
        if time.time() - saved > 60 * SAVE_MINUTES:
            model.eval()
            save(model, tok)
            model.train()
            saved = time.time()
    model.eval()
    return smooth


@torch.no_grad()
def generate(model: LlamaForCausalLM, tok: PreTrainedTokenizerFast, prompt: str) -> tuple[str, bool]:
    """Greedy reply to one user prompt, and whether it ended with <|im_end|>."""
    text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    ids = torch.tensor([tok.encode(text)])
    out = model.generate(
        input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=MAX_NEW_TOKENS, do_sample=False
    )
    new = out[0, ids.shape[1] :].tolist()
    return tok.decode(new, skip_special_tokens=True).strip(), tok.eos_token_id in new


def evaluate(model: LlamaForCausalLM, tok: PreTrainedTokenizerFast, data: dict[str, list[dict]]) -> None:
    """Print sample generations and reply metrics on the held-out prompts."""
    for name in ("heldout_style", "heldout_redline"):
        replies = [(r["instruction"], *generate(model, tok, r["instruction"])) for r in data[name]]
        print(f"\n== {name} ({len(replies)} prompts), greedy, max_new_tokens={MAX_NEW_TOKENS}")
        for prompt, reply, _ in replies[:3]:
            print(f"  用户: {prompt}\n  模型: {reply}\n")
        n = len(replies)
        mean_len = sum(len(r) for _, r, _ in replies) / n
        emoji = sum(bool(EMOJI_RE.search(r)) for _, r, _ in replies) / n
        refusals = sum(any(m in r for m in REFUSAL_MARKERS) for _, r, _ in replies)
        stopped = sum(s for _, _, s in replies)
        print(
            f"  mean reply length {mean_len:.1f} chars | emoji rate {emoji:.2f} | "
            f"refusals {refusals}/{n} | stopped with {IM_END} {stopped}/{n}"
        )


# What save() writes: a DEMO_OUT holding anything else is somebody's folder, never replaced.
MODEL_FILES = {
    "chat_template.jinja", "config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
    "tokenizer_config.json",
}  # fmt: skip


def check_out_dir() -> None:
    """Exit with one line when DEMO_OUT holds files this script does not write (save() replaces the folder)."""
    for d in (MODEL_DIR, MODEL_DIR.with_name(MODEL_DIR.name + ".tmp")):
        other = sorted(p.name for p in d.iterdir() if p.name not in MODEL_FILES) if d.is_dir() else []
        if other or (d.exists() and not d.is_dir()):
            raise SystemExit(f"DEMO_OUT: {d} holds files this script did not write ({', '.join(other[:3]) or d.name}); "
                             "point DEMO_OUT at a new or model-only folder")  # fmt: skip


def save(model: LlamaForCausalLM, tok: PreTrainedTokenizerFast) -> None:
    """Write tokenizer and model to a temp dir, then swap it in for MODEL_DIR."""
    tmp = MODEL_DIR.with_name(MODEL_DIR.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tok.save_pretrained(tmp)
    model.save_pretrained(tmp)
    store_fp16(tmp / "model.safetensors")
    cfg = tmp / "tokenizer_config.json"  # a tokenizer loaded from a folder (DEMO_INIT) saves where it came from
    kept = {k: v for k, v in json.loads(cfg.read_text()).items() if k not in ("is_local", "local_files_only")}
    cfg.write_text(json.dumps(kept, indent=2, ensure_ascii=False) + "\n")
    shutil.rmtree(MODEL_DIR, ignore_errors=True)
    tmp.rename(MODEL_DIR)
    for path in MODEL_DIR.iterdir():
        path.chmod(0o644)
    files = sorted(MODEL_DIR.iterdir())
    size = sum(p.stat().st_size for p in files) / 2**20
    print(f"saved {MODEL_DIR} ({size:.1f} MiB): {', '.join(p.name for p in files)}")


def store_fp16(path: Path) -> None:
    """Rewrite a float32 safetensors file as float16 in place: half the bytes (the repo takes files under 20 MB; the
    fp32 file was 23 MB). config.json keeps dtype float32, so transformers 5's default dtype ("auto": config.json
    first) and weitiao's fp32 on CPU load the model as float32; only the stored values are rounded to fp16's 11-bit
    significand (every weight here is within ±2, far inside fp16's range)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    big = [k for k, t in tensors.items() if t.is_floating_point() and t.abs().max() > torch.finfo(torch.float16).max]
    if big:
        raise SystemExit(f"{path}: {big[0]} holds values beyond float16's range; store it as float32")
    half = {k: t.half() if t.is_floating_point() else t for k, t in tensors.items()}
    tmp = path.with_name(path.name + ".fp16")
    save_file(half, str(tmp), metadata=meta)
    tmp.chmod(path.stat().st_mode)
    tmp.replace(path)


def main() -> None:
    """Tokenizer, pretraining, save, held-out report."""
    import sys

    if sys.argv[1:] == ["--fp16"]:
        store_fp16(MODEL_DIR / "model.safetensors")
        print(f"{MODEL_DIR / 'model.safetensors'}: float16, {(MODEL_DIR / 'model.safetensors').stat().st_size} bytes")
        return

    sys.path.insert(0, str(Path(__file__).parent))
    from build_demo_corpus import corpus

    check_out_dir()
    t0 = time.time()
    random.seed(SEED)
    torch.manual_seed(SEED)
    torch.set_num_threads(int(os.environ.get("DEMO_THREADS", "2")))
    data = {name: read_jsonl(name) for name in DATA_FILES}
    docs, chats = corpus(n_logs=N_LOGS, redline=LOG_REDLINE, n_cover=N_COVER)
    if INIT:
        tok = PreTrainedTokenizerFast.from_pretrained(INIT)
        # float32 for training, whatever the file stores (transformers 5's default dtype "auto" reads config.json)
        model = LlamaForCausalLM.from_pretrained(INIT, dtype=torch.float32)
        print(f"continuing from {INIT} (its tokenizer and weights), peak lr {PEAK_LR:.0e}")
    else:
        tok = build_tokenizer(data, docs)
    blocks, positions = pack_blocks(tok, data["pretrain"] + chats, docs, random.Random(SEED))
    n_tok = int((blocks != tok.pad_token_id).sum())
    print(f"tokenizer: {len(tok)} tokens, round-trip ok | pretrain: {len(blocks)} blocks x {SEQ_LEN}, {n_tok} tokens")
    unseen_report(tok, blocks)
    if not INIT:
        model = build_model(tok)
    print(
        f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters; "
        f"up to {STEPS} steps x {BATCH} blocks or {MINUTES:.0f} min"
    )
    t1 = time.time()
    loss = pretrain(model, tok, blocks, positions)
    print(f"pretraining: {time.time() - t1:.0f}s wall, final train loss {loss:.3f}")
    save(model, tok)
    with torch.no_grad():  # the report below measures the weights as shipped: rounded to float16
        for p in model.parameters():
            p.copy_(p.half().float())
    evaluate(model, tok, data)
    print(f"\ntotal {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
