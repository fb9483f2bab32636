import random

import pytest
import torch
from transformers import AutoModelForCausalLM

from weitiao.data.chat import EncodeOptions, encode
from weitiao.data.collate import collate, n_targets, pack_first_fit, plan_epoch
from weitiao.data.formats import Conversation
from weitiao.data.templates import resolve_template
from weitiao.losses.sft import CausalLMLoss

WORDS = ["今天", "天气", "不错", "哈哈", "😂", "吃饭", "了吗", "周末", "电影", "hello", "world", "123"]


def make_examples(tokenizer, n=7, seed=0, train_on_prompt=False):
    rng = random.Random(seed)
    t = resolve_template(tokenizer)
    out = []
    for _ in range(n):
        q = "".join(rng.choices(WORDS, k=rng.randint(1, 12)))
        a = "".join(rng.choices(WORDS, k=rng.randint(1, 30)))
        conv = Conversation([{"role": "user", "content": q}, {"role": "assistant", "content": a}])
        out.append(encode(conv, tokenizer, t, EncodeOptions(train_on_prompt=train_on_prompt)))
    return out


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("train_on_prompt", [False, True])
def test_packed_loss_equals_one_by_one(tiny_model_dir, tokenizer, attn, train_on_prompt):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation=attn)
    model.eval()
    exs = make_examples(tokenizer, train_on_prompt=train_on_prompt)
    pad = tokenizer.pad_token_id
    # Independent reference: HF's own loss on each conversation alone, token-weighted.
    total, count = 0.0, 0
    with torch.no_grad():
        for ex in exs:
            ids = torch.tensor([ex.input_ids])
            out = model(input_ids=ids, labels=torch.tensor([ex.labels]))
            total += out.loss.item() * n_targets(ex)
            count += n_targets(ex)
        ref = total / count
        loss = CausalLMLoss(model, chunk_size=16)  # several chunks: exercises the chunked path
        rows = pack_first_fit(list(range(len(exs))), [len(e) for e in exs], capacity=120)
        assert any(len(r) > 1 for r in rows)
        b = collate(exs, rows, pad, packing=True)
        s, n = loss(b.input_ids, b.targets, b.position_ids, b.attention_mask)
        assert int(n) == count
        assert abs(s.item() / count - ref) < 1e-4
        # Padded batches give the same number.
        p = collate(exs, [[i] for i in range(len(exs))], pad, packing=False)
        s2, _ = loss(p.input_ids, p.targets, p.position_ids, p.attention_mask)
        assert abs(s2.item() / count - ref) < 1e-4
        # And the test can fail: without restarting positions attention crosses conversations.
        leaky = torch.arange(b.input_ids.shape[1]).expand_as(b.input_ids)
        s3, _ = loss(b.input_ids, b.targets, leaky, None)
        assert abs(s3.item() / count - ref) > 1e-3


def test_packed_gradients_equal_one_by_one(tiny_model_dir, tokenizer):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    exs = make_examples(tokenizer, n=4, seed=1)
    loss = CausalLMLoss(model)
    count = sum(n_targets(e) for e in exs)
    for ex_rows, packing in [([[0, 1, 2, 3]], True), ([[0], [1], [2], [3]], False)]:
        model.zero_grad()
        b = collate(exs, ex_rows, tokenizer.pad_token_id, packing)
        s, _ = loss(b.input_ids, b.targets, b.position_ids, b.attention_mask)
        (s / count).backward()
        g = model.model.layers[0].self_attn.q_proj.weight.grad.clone()
        if packing:
            g_packed = g
    assert torch.allclose(g_packed, g, atol=1e-5)


def test_first_fit_and_epoch_plan():
    lengths = [random.Random(i).randint(10, 100) for i in range(50)]
    rows = pack_first_fit(list(range(50)), lengths, capacity=128)
    assert sorted(i for r in rows for i in r) == list(range(50))
    assert all(sum(lengths[i] for i in r) <= 128 for r in rows)
    a = plan_epoch(lengths, seed=1, epoch=0, micro_batch_size=2, packing=True, capacity=128)
    assert a == plan_epoch(lengths, seed=1, epoch=0, micro_batch_size=2, packing=True, capacity=128)
    assert a != plan_epoch(lengths, seed=1, epoch=1, micro_batch_size=2, packing=True, capacity=128)
    padded = plan_epoch(lengths, seed=1, epoch=0, micro_batch_size=4, packing=False, capacity=128)
    assert sorted(r[0] for b in padded for r in b) == list(range(50))
