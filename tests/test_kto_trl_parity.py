"""weitiao's KTO loss equals TRL KTOTrainer's (loss_type "kto") on the same model, tokens and batches.

One tiny Llama + LoRA (dropout 0.05, which both trainers turn off; a few SFT steps so policy ≠ reference;
the reference is the adapter-disabled base on both sides) is shared: TRL builds the peft model from
`peft_config`, and weitiao's `kto_step` runs on that same object. TRL gets each prompt pre-rendered with the
ChatML template and each reply ending in `<|im_end|>` (its standard format; the tokenizer's EOS is `<|im_end|>`,
so TRL appends nothing); the test checks its tokens are weitiao's. 7 rows in batches of 3 (3, 3, 1): TRL's KL
rows rotate completions within each batch, as weitiao's do within a micro-batch. Negative controls: the
undesirable term with the wrong sign, or without z0, miss TRL's loss by far more than the tolerance.
"""

from __future__ import annotations

import copy

import pytest
import torch

trl = pytest.importorskip("trl")

from datasets import Dataset  # noqa: E402
from peft import LoraConfig  # noqa: E402
from test_dpo import make_pairs  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from weitiao.data.chat import IGNORE, EncodeOptions, encode_all  # noqa: E402
from weitiao.data.formats import Conversation  # noqa: E402
from weitiao.data.templates import resolve_template  # noqa: E402
from weitiao.losses import preference  # noqa: E402
from weitiao.losses.sft import CausalLMLoss  # noqa: E402
from weitiao.recipes import kto  # noqa: E402
from weitiao.train.reference import Reference  # noqa: E402
from weitiao.train.spec import FeedbackDataSpec  # noqa: E402

N, BATCH, TOL = 7, 3, 1e-4
LABELS = [True, False, True, True, False, False, True]
BATCHES = [list(range(k, min(k + BATCH, N))) for k in range(0, N, BATCH)]  # 3, 3, 1: not a multiple of N


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(tiny_model_dir, tokenizer, tmp_path_factory):
    pairs = make_pairs(N, seed=5)
    replies = [p["chosen"] if good else p["rejected"] for p, good in zip(pairs, LABELS)]
    template = resolve_template(tokenizer)
    convs = [
        Conversation([{"role": "user", "content": p["prompt"]}, {"role": "assistant", "content": r}], f"x:{i}")
        for i, (p, r) in enumerate(zip(pairs, replies))
    ]
    exs, stats = encode_all(convs, tokenizer, template, EncodeOptions(256, train_turns="last"))
    assert len(exs) == N
    prompts = [template.render(tokenizer, c.messages[:-1], add_generation_prompt=True) for c in convs]
    ds = Dataset.from_list(
        [{"prompt": p, "completion": r + template.eot, "label": good} for p, r, good in zip(prompts, replies, LABELS)]
    )
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation="sdpa")
    args = trl.KTOConfig(
        output_dir=str(tmp_path_factory.mktemp("trl")),
        per_device_train_batch_size=BATCH,
        use_cpu=True,
        bf16=False,
        report_to="none",
        max_length=None,
        desirable_weight=1.0,
        undesirable_weight=1.0,
    )
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")
    tr = trl.KTOTrainer(model=model, args=args, train_dataset=ds, processing_class=tokenizer, peft_config=lora)
    torch.manual_seed(0)
    opt = torch.optim.Adam([p for p in tr.model.parameters() if p.requires_grad], lr=3e-3)
    for _ in range(3):  # a little SFT on every reply: π ≠ π_ref, and the mismatched replies' z0 > 0
        for ex in exs:
            opt.zero_grad()
            tr.model(input_ids=torch.tensor([ex.input_ids]), labels=torch.tensor([ex.labels])).loss.backward()
            opt.step()
    tr.model.train()
    return tr, exs, tokenizer


def trl_loss(tr, batch: list[int], weights=(1.0, 1.0)) -> tuple[torch.Tensor, dict]:
    tr.desirable_weight, tr.undesirable_weight = weights
    tr._metrics["train"].clear()
    loss = tr.compute_loss(tr.model, tr.data_collator([dict(tr.train_dataset[i]) for i in batch]))
    return loss, {k: v[-1] for k, v in tr._metrics["train"].items()}


def weitiao_loss(model, exs, tokenizer, batch: list[int], packing: bool, weights=(1.0, 1.0)) -> tuple:
    cfg = kto.KTOConfig(
        data=FeedbackDataSpec(train=["unused.jsonl"], packing=packing),
        kto=kto.KTOSpec(desirable_weight=weights[0], undesirable_weight=weights[1]),
    )
    loss_mod = CausalLMLoss(model)
    rows = [batch[:2], batch[2:]] if packing and len(batch) > 2 else [[i] for i in batch]  # packed: 2 rows
    ids = {"pad": tokenizer.pad_token_id, "one_row": False, "kl_len": cfg.data.max_len}
    b, kl_b, order = kto.batches(exs, [r for r in rows if r], cfg, ids, "cpu")
    o = kto.kto_step(loss_mod, Reference(loss_mod, model), b, kl_b, order, LABELS, cfg)
    return o["loss_sum"] / len(batch), kto._means(o)


def test_trl_tokens_equal_weitiao_tokens(setup):
    tr, exs, _ = setup
    for i in range(N):
        row, ex = tr.train_dataset[i], exs[i]
        trained = [k for k, x in enumerate(ex.labels) if x != IGNORE]
        assert len(row["prompt_ids"]) == trained[0]
        assert row["prompt_ids"] + row["completion_ids"] == ex.input_ids[: trained[-1] + 1]  # ends at <|im_end|>
    assert tr.train_dataset[6]["KL_completion_ids"] == tr.train_dataset[6]["completion_ids"]  # a batch of 1


@pytest.mark.parametrize("packing", [True, False])
@pytest.mark.parametrize("weights", [(1.0, 1.0), (1.0, 1.6)])
def test_loss_and_metrics_equal_trl(setup, packing, weights):
    tr, exs, tokenizer = setup
    for batch in BATCHES:
        with torch.no_grad():
            want, m = trl_loss(tr, batch, weights)
            got, wm = weitiao_loss(tr.model, exs, tokenizer, batch, packing, weights)
        assert abs(got.item() - want.item()) <= TOL * abs(want.item()), (batch, got.item(), want.item())
        assert abs(wm["kl"] - m["kl"]) < 1e-4
        for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected"):
            assert (key in wm) == (key in m), key  # a batch without undesirable rows logs no rejected metric
            if key in m:
                assert abs(wm[key] - m[key]) < 1e-3 * max(1.0, abs(m[key])), (key, wm[key], m[key])
    assert m["kl"] > 0 or batch == BATCHES[-1]


def broken_no_kl(logps, ref_logps, desirable, kl, beta, dw=1.0, uw=1.0):
    return preference.kto_terms(logps, ref_logps, desirable, kl * 0, beta, dw, uw)


def broken_sign(logps, ref_logps, desirable, kl, beta, dw=1.0, uw=1.0):
    r, z0 = logps - ref_logps, kl.detach().clamp_min(0)
    z = torch.where(desirable, r - z0, r - z0)  # the undesirable term with the desirable sign
    w = torch.where(desirable, dw, uw)
    return w * (1 - torch.sigmoid(beta * z)), beta * r.detach()


@pytest.mark.parametrize("broken", [broken_no_kl, broken_sign])
def test_negative_controls_miss_trl(setup, monkeypatch, broken):
    """The parity check is sensitive: a KTO loss without z0, or with the undesirable sign flipped, fails it."""
    tr, exs, tokenizer = setup
    monkeypatch.setattr(kto, "kto_terms", broken)
    with torch.no_grad():
        want, m = trl_loss(tr, BATCHES[0])
        got, _ = weitiao_loss(tr.model, exs, tokenizer, BATCHES[0], True)
    assert m["kl"] > 0.01  # z0 matters on this batch
    assert abs(got.item() - want.item()) > 100 * TOL * abs(want.item()), (got.item(), want.item())


def test_three_steps_track_trl(setup):
    """Three AdamW steps (batches of 3, 3, 1), each side on its own copy of the model: the losses stay together."""
    tr, exs, tokenizer = setup
    ours = copy.deepcopy(tr.model)
    start = {k: v.clone() for k, v in tr.model.state_dict().items()}
    opt_t = torch.optim.AdamW([p for p in tr.model.parameters() if p.requires_grad], lr=1e-3)
    opt_w = torch.optim.AdamW([p for p in ours.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    try:
        for batch in BATCHES:
            lt, _ = trl_loss(tr, batch)
            lw, _ = weitiao_loss(ours, exs, tokenizer, batch, True)
            for loss, opt in ((lt, opt_t), (lw, opt_w)):
                opt.zero_grad()
                loss.backward()
                opt.step()
            losses.append((lt.item(), lw.item()))
    finally:
        tr.model.load_state_dict(start)
    for lt, lw in losses:
        assert abs(lt - lw) <= 1e-3 * lt, losses
    assert abs(losses[1][0] - losses[0][0]) > 1e-3  # the steps moved the loss
