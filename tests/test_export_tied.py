"""export --merge on a base with tied embeddings (Qwen2.5-0.5B's tie_word_embeddings): a LoRA on embed_tokens
must not reach lm_head, which kept the original weight in training; an adapter that leaves the embedding
alone keeps the export tied."""

import json

import pytest
import torch
from conftest import build_tokenizer
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors import safe_open
from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

from weitiao.infer import export as ex

TEXTS = ["今天天气怎么样？挺好的☀️", "Hello world, 1234", "推荐一部电影吧"]


@pytest.fixture(scope="module")
def tied(tmp_path_factory):
    """(root, tokenizer): a tiny Qwen2 with tied embeddings saved at root/base."""
    root = tmp_path_factory.mktemp("tied")
    tok = build_tokenizer()
    torch.manual_seed(0)
    cfg = Qwen2Config(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=512, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, tie_word_embeddings=True,
    )  # fmt: skip
    model = Qwen2ForCausalLM(cfg)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    model.save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    return root, tok


def make_run(base, run, targets):
    """A run-shaped dir (RUN/final/adapter) with a LoRA on `targets` whose factors are all non-zero, as after
    training (peft starts a linear's B and an embedding's A at zero)."""
    torch.manual_seed(1)
    peft = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(r=4, target_modules=targets))
    with torch.no_grad():
        for n, p in peft.named_parameters():
            if ".lora_" in n:
                p.normal_(0, 0.1)
    peft.save_pretrained(run / "final" / "adapter")
    return run


def max_diff(merged, base, run, tok):
    """Largest logit gap between the merged model and peft's base + adapter, unmerged."""
    ref = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), run / "final" / "adapter")
    with torch.no_grad():
        return max(
            (merged.eval()(input_ids=ids).logits - ref.eval()(input_ids=ids).logits).abs().max().item()
            for ids in (torch.tensor([tok(t)["input_ids"]]) for t in TEXTS)
        )


def load(dest):
    return AutoModelForCausalLM.from_pretrained(dest, dtype=torch.float32)


def test_merged_embedding_adapter_leaves_the_tied_output_head_as_trained(tied, tmp_path, monkeypatch):
    root, tok = tied
    run = make_run(root / "base", tmp_path / "run", ["embed_tokens", "q_proj"])
    dest = ex.export(str(run), str(tmp_path / "merged"), merge=True)
    assert max_diff(load(dest), root / "base", run, tok) < 1e-5  # measured 1.5e-7
    assert json.loads((dest / "config.json").read_text())["tie_word_embeddings"] is False
    with safe_open(str(dest / "model.safetensors"), "pt") as f:
        assert {"lm_head.weight", "model.embed_tokens.weight"} <= set(f.keys())
    # negative control: merged into the shared weight, the output head moves with the embedding (measured 4.3)
    monkeypatch.setattr(ex, "untie_adapted_embedding", lambda model: model)
    dest = ex.export(str(run), str(tmp_path / "shared"), merge=True)
    assert max_diff(load(dest), root / "base", run, tok) > 1.0


def test_adapter_without_embedding_keeps_the_export_tied(tied, tmp_path):
    root, tok = tied
    run = make_run(root / "base", tmp_path / "run", ["q_proj", "v_proj"])
    dest = ex.export(str(run), str(tmp_path / "merged"), merge=True)
    assert max_diff(load(dest), root / "base", run, tok) < 1e-5
    assert json.loads((dest / "config.json").read_text()).get("tie_word_embeddings", True) is True
    with safe_open(str(dest / "model.safetensors"), "pt") as f:
        assert "lm_head.weight" not in f.keys()


def test_gguf_of_the_demo_keeps_the_untied_output_head(tmp_path):
    """The shipped demo base is tied too. The GGUF is converted from the merged export, so it carries lm_head
    as output.weight (llama.cpp ties only when that tensor is absent) and gives peft's logits within f16."""
    gguf = pytest.importorskip("gguf")
    from test_gguf import DEMO, TOL, gguf_model
    from transformers import AutoTokenizer

    run = make_run(DEMO, tmp_path / "run", ["embed_tokens", "q_proj"])
    dest = ex.export(str(run), str(tmp_path / "merged"), merge=True, gguf="f16")
    assert "output.weight" in {t.name for t in gguf.GGUFReader(dest / "model-f16.gguf").tensors}
    tok = AutoTokenizer.from_pretrained(DEMO)
    assert max_diff(gguf_model(dest / "model-f16.gguf", dest), DEMO, run, tok) < TOL["f16"]
