"""weitiao's DPO loss (and gradient) equals TRL DPOTrainer's on one batch: same model, LoRA, tokens and β.

One tiny Llama + LoRA (dropout 0, B weights perturbed so policy ≠ reference; the reference is the
adapter-disabled base on both sides) is shared: TRL builds the peft model from `peft_config`, and
weitiao's `pair_step` runs on that same object through `CausalLMLoss` + `Reference`. weitiao packs
the 5 pairs into 2 padding-free rows; TRL pads 10 rows. TRL gets the prompt pre-rendered with the
ChatML template and each reply ending in `<|im_end|>` (its standard, non-conversational format);
the test checks that its tokens are exactly weitiao's.

TRL 1.16 semantics checked here:
- sigmoid, hinge, ipo: same formula, same length averaging for ipo (completion-token count) → equal.
  Both log rewards/margins/accuracy on summed log-probs, ipo too (weitiao logged ipo's on the
  length-averaged ones until a user saw margins and logp_gap of opposite signs).
- label smoothing: TRL's `sigmoid` ignores `label_smoothing` (it is only read by robust/exo_pair/aot).
  weitiao's conservative DPO is the label-flip mixture (1−ε)·L(c≻r) + ε·L(r≻c), i.e. TRL's sigmoid on
  the batch and on the batch with chosen/rejected swapped. TRL's `robust` is a different objective:
  robust = sigmoid − ε·β·h/(1−2ε), while cDPO = sigmoid + ε·β·h (h = chosen minus rejected log-ratio).
- TRL's conversational format trains one more token per reply than weitiao: the "\n" after <|im_end|>.
"""

from __future__ import annotations

import pytest
import torch

trl = pytest.importorskip("trl")

from datasets import Dataset  # noqa: E402
from peft import LoraConfig  # noqa: E402
from test_dpo import make_pairs  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from weitiao.data.chat import IGNORE  # noqa: E402
from weitiao.data.collate import collate  # noqa: E402
from weitiao.data.formats import PreferencePair  # noqa: E402
from weitiao.data.preference import encode_pairs, pair_rows  # noqa: E402
from weitiao.data.templates import resolve_template  # noqa: E402
from weitiao.losses.sft import CausalLMLoss  # noqa: E402
from weitiao.recipes import dpo  # noqa: E402
from weitiao.train.spec import PrefDataSpec  # noqa: E402

N = 5
TOL = 1e-4


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(tiny_model_dir, tokenizer, tmp_path_factory):
    rows = make_pairs(N, seed=3)
    template = resolve_template(tokenizer)
    pairs = [PreferencePair([{"role": "user", "content": r["prompt"]}], r["chosen"], r["rejected"]) for r in rows]
    exs, stats = encode_pairs(pairs, tokenizer, template, 256, "drop")
    assert stats.kept == N
    eot = template.eot
    prompts = [
        template.render(tokenizer, list(p.conversation("chosen").messages)[:-1], add_generation_prompt=True)
        for p in pairs
    ]
    ds = Dataset.from_list(
        [{"prompt": p, "chosen": r["chosen"] + eot, "rejected": r["rejected"] + eot} for p, r in zip(prompts, rows)]
    )
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation="sdpa")
    args = trl.DPOConfig(
        output_dir=str(tmp_path_factory.mktemp("trl")),
        per_device_train_batch_size=N,
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        report_to="none",
        max_length=None,
    )
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    tr = trl.DPOTrainer(model=model, args=args, train_dataset=ds, processing_class=tokenizer, peft_config=lora)
    g = torch.Generator().manual_seed(0)
    for name, p in tr.model.named_parameters():
        if "lora_B" in name:
            p.data.copy_(torch.randn(p.shape, generator=g) * 0.05)
    tr.model.train()
    return tr, exs, tokenizer


def trl_loss(tr, loss_type: str, beta: float, eps: float = 0.0, swap: bool = False) -> tuple[torch.Tensor, dict]:
    tr.loss_types, tr.loss_weights, tr.beta, tr.label_smoothing = [loss_type], [1.0], beta, eps
    feats = [dict(tr.train_dataset[i]) for i in range(N)]
    if swap:
        feats = [f | {"chosen_ids": f["rejected_ids"], "rejected_ids": f["chosen_ids"]} for f in feats]
    tr._metrics["train"].clear()
    loss = tr.compute_loss(tr.model, tr.data_collator(feats))
    return loss, {k: v[-1] for k, v in tr._metrics["train"].items()}


def weitiao_loss(tr, exs, tokenizer, loss_type: str, beta: float, eps: float = 0.0) -> tuple[torch.Tensor, dict]:
    cfg = dpo.DPOConfig(
        data=PrefDataSpec(train=["unused.jsonl"]),
        dpo=dpo.DPOSpec(beta=beta, loss_type=loss_type, label_smoothing=eps),
    )
    loss_mod = CausalLMLoss(tr.model)
    rows = pair_rows([[0, 1, 2], [3, 4]])  # packed, padding-free, 2 rows of different length
    b = collate(exs, rows, tokenizer.pad_token_id, packing=True)
    o = dpo.pair_step(loss_mod, dpo.Reference(loss_mod, tr.model), b, [i for r in rows for i in r], cfg)
    return o["loss_sum"] / N, {k[:-4]: float(v) / N for k, v in o.items() if k.endswith("_sum")}


def test_trl_tokens_equal_weitiao_tokens(setup):
    tr, exs, tokenizer = setup
    for i in range(N):
        row = tr.train_dataset[i]
        for side, ex in (("chosen_ids", exs[2 * i]), ("rejected_ids", exs[2 * i + 1])):
            trained = [k for k, x in enumerate(ex.labels) if x != IGNORE]
            assert len(row["prompt_ids"]) == trained[0]  # completion starts where weitiao's labels start
            assert row["prompt_ids"] + row[side] == ex.input_ids[: trained[-1] + 1]  # …and ends at <|im_end|>


def test_trl_conversational_format_adds_the_newline_after_eot(setup):
    tr, exs, tokenizer = setup
    r = make_pairs(1, seed=3)[0]
    conv = Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": r["prompt"]}],
                "chosen": [{"role": "assistant", "content": r["chosen"]}],
                "rejected": [{"role": "assistant", "content": r["rejected"]}],
            }
        ]
    )
    row = tr._prepare_dataset(conv, tokenizer, tr.args, "conv")[0]
    ex = exs[0]
    target = [x for x in ex.labels if x != IGNORE]
    assert row["chosen_ids"] == target + tokenizer("\n", add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize(("loss_type", "beta"), [("sigmoid", 0.1), ("ipo", 0.1), ("hinge", 0.1), ("hinge", 0.75)])
def test_loss_equals_trl(setup, loss_type, beta):
    tr, exs, tokenizer = setup
    with torch.no_grad():
        want, m = trl_loss(tr, loss_type, beta)
        got, wm = weitiao_loss(tr, exs, tokenizer, loss_type, beta)
    assert abs(m["rewards/margins"]) > 0.01  # policy ≠ reference
    assert abs(got.item() - want.item()) < TOL, (got.item(), want.item())
    assert abs(wm["margins"] - m["rewards/margins"]) < TOL  # ipo too: rewards on summed log-probs, as TRL
    assert abs(wm["rewards/chosen"] - m["rewards/chosen"]) < TOL
    assert abs(wm["accuracy"] - m["rewards/accuracies"]) < 1e-6
    assert abs(wm["logps/chosen"] - m["logps/chosen"]) < 1e-3  # sums over ~10 tokens of ~-6
    assert abs(wm["logps/rejected"] - m["logps/rejected"]) < 1e-3
    if loss_type == "hinge" and beta > 0.5:  # both branches of max(0, 1 − β·h) occur: mean relu > relu of mean > 0
        assert want.item() > max(0.0, 1 - m["rewards/margins"]) + 1e-3, (want.item(), m["rewards/margins"])


def test_gradient_equals_trl(setup):
    tr, exs, tokenizer = setup
    params = [p for p in tr.model.parameters() if p.requires_grad]

    def grads(loss):
        for p in params:
            p.grad = None
        loss.backward()
        return torch.cat([p.grad.flatten() for p in params])

    want = grads(trl_loss(tr, "sigmoid", 0.1)[0])
    got = grads(weitiao_loss(tr, exs, tokenizer, "sigmoid", 0.1)[0])
    assert want.abs().max() > 1e-4
    assert torch.allclose(got, want, atol=1e-6, rtol=1e-3), (got - want).abs().max()


def test_label_smoothing_is_conservative_dpo_not_trl_robust(setup):
    tr, exs, tokenizer = setup
    beta, eps = 0.1, 0.2
    with torch.no_grad():
        got, _ = weitiao_loss(tr, exs, tokenizer, "sigmoid", beta, eps)
        plain, m = trl_loss(tr, "sigmoid", beta)
        ignored, _ = trl_loss(tr, "sigmoid", beta, eps)  # TRL's sigmoid does not read label_smoothing
        flipped, _ = trl_loss(tr, "sigmoid", beta, swap=True)
        robust, _ = trl_loss(tr, "robust", beta, eps)
    assert abs(ignored.item() - plain.item()) < 1e-7
    assert abs(got.item() - ((1 - eps) * plain + eps * flipped).item()) < TOL  # cDPO = label-flip mixture
    mean_margin = m["rewards/margins"]  # mean β·h over the batch
    assert abs(got.item() - (plain.item() + eps * mean_margin)) < TOL
    assert abs(robust.item() - (plain.item() - eps * mean_margin / (1 - 2 * eps))) < TOL
    assert abs(robust.item() - got.item()) > 1e-3
