"""sdpa per conversation (`models/packed_attention.py`) vs transformers' sdpa with its block-diagonal mask.

Same losses and LoRA gradients (within float rounding) on packed rows under the defaults users get
(LoRA dropout 0.05, GQA, several rows of odd lengths), the fallback for padded batches and
generation, and a negative control: rows given as one segment let conversations see each other.
"""

import pytest
import torch
from peft import LoraConfig, get_peft_model
from test_collate import make_examples
from transformers import AutoModelForCausalLM

from weitiao.data.collate import collate, n_targets
from weitiao.losses.sft import PACKED_SDPA, CausalLMLoss, segment_lengths
from weitiao.models import packed_attention


@pytest.fixture(scope="module")
def gqa_dir(tmp_path_factory, tokenizer):
    from conftest import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("gqa") / "llama", tokenizer, kv_heads=2)


def lora_model(model_dir, packed: bool):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules="all-linear"))
    for name, p in model.named_parameters():  # B starts at 0: give the adapter an effect on the loss
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)
    if packed:
        assert packed_attention.enable(model)
    return model.train()


def loss_and_grads(model, b, count, seed=1):
    model.zero_grad()
    torch.manual_seed(seed)  # same LoRA dropout masks on both paths
    s, _ = CausalLMLoss(model)(b.input_ids, b.targets, b.position_ids, b.attention_mask)
    (s / count).backward()
    return s.item() / count, {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_segment_lengths_follow_position_restarts():
    pos = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3], [0, 1, 2, 3, 4, 5, 0, 1, 2]])
    assert segment_lengths(pos) == [[3, 2, 4], [6, 3]]
    assert segment_lengths(torch.tensor([[5, 6, 7, 9]])) == [[3, 1]]  # a jump also starts one (as transformers)


@pytest.mark.parametrize("padded", [False, True])
def test_packed_sdpa_equals_masked_sdpa(gqa_dir, tokenizer, padded):
    exs = make_examples(tokenizer, n=7, seed=3)
    rows = [[0, 1, 2], [3, 4], [5, 6]]  # three rows of different lengths, padding at the end of two
    b = collate(exs, rows if not padded else [[i] for i in range(7)], tokenizer.pad_token_id, packing=not padded)
    count = sum(n_targets(e) for e in exs)
    want, want_g = loss_and_grads(lora_model(gqa_dir, packed=False), b, count)
    model = lora_model(gqa_dir, packed=True)
    assert model.get_base_model().config._attn_implementation == PACKED_SDPA
    got, got_g = loss_and_grads(model, b, count)
    assert got == pytest.approx(want, rel=1e-5)
    assert want_g.keys() == got_g.keys() and len(got_g) > 0
    for name, g in want_g.items():
        assert torch.allclose(got_g[name], g, atol=1e-6, rtol=1e-5), name


def test_packed_path_runs_and_isolates(gqa_dir, tokenizer, monkeypatch):
    """The per-conversation path is the one taken for packed rows, and it is what keeps them apart:
    with each row given as a single segment the conversations see each other and the loss moves."""
    exs = make_examples(tokenizer, n=6, seed=2)
    b = collate(exs, [[0, 1, 2], [3, 4, 5]], tokenizer.pad_token_id, packing=True)
    model, count = lora_model(gqa_dir, packed=True), sum(n_targets(e) for e in exs)
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(
        torch.nn.functional, "scaled_dot_product_attention", lambda *a, **k: calls.append(k) or sdpa(*a, **k)
    )
    good, _ = loss_and_grads(model, b, count)
    assert calls and all(k["is_causal"] and k.get("attn_mask") is None for k in calls)
    assert len(calls) == 2 * sum(map(len, segment_lengths(b.position_ids)))  # per layer: one call a segment
    monkeypatch.setattr(packed_attention, "segment_lengths", lambda pos: [[pos.shape[1]]] * pos.shape[0])
    monkeypatch.setattr(packed_attention, "_last", None)
    leaky, _ = loss_and_grads(model, b, count)
    assert abs(leaky - good) > 1e-3


def test_generation_falls_back_to_sdpa(tiny_model_dir, tokenizer):
    ids = torch.tensor([tokenizer("今天天气怎么样？")["input_ids"]])
    outs = []
    for packed in (False, True):
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation="sdpa")
        if packed:
            packed_attention.enable(model)
        outs.append(model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id))
    assert torch.equal(outs[0], outs[1])


def test_enable_leaves_other_attention_alone(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation="eager")
    assert not packed_attention.enable(model)
    assert model.config._attn_implementation == "eager"


def test_segments_are_read_again_when_position_ids_change():
    pos = torch.tensor([[0, 1, 2, 3]])
    assert packed_attention.segments(pos) == [[4]]
    assert packed_attention.segments(pos) is packed_attention.segments(pos)  # once per forward, not per layer
    pos[0, 2] = 0  # in place: a new version of the same tensor
    assert packed_attention.segments(pos) == [[2, 1, 1]]
