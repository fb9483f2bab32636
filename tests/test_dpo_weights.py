"""data.weight_field: a per-pair weight in the DPO loss (Σ w·ℓ / Σ w), checked against plain forwards;
data.min_confidence: pairs below it are dropped and counted."""

import json
import math

import pytest
import torch
from conftest import save_tiny_model, write_jsonl
from test_dpo import make_pairs
from transformers import AutoModelForCausalLM

from weitiao.config import load_config
from weitiao.data.chat import IGNORE
from weitiao.data.collate import collate
from weitiao.data.formats import load_rows
from weitiao.data.preference import encode_pairs, pair_rows
from weitiao.data.templates import resolve_template
from weitiao.errors import UserError
from weitiao.losses.sft import CausalLMLoss
from weitiao.recipes import dpo
from weitiao.train.log import read_metrics


def seq_logp(model, ex) -> float:
    """Σ log p(reply tokens) of one sequence from its own unpadded forward."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ex.input_ids])).logits[0, :-1]
    tgt = torch.tensor(ex.labels[1:])
    lp = torch.log_softmax(logits.double(), -1).gather(-1, tgt.clamp_min(0)[:, None])[:, 0]
    return lp[tgt != IGNORE].sum().item()


def test_weighted_pair_loss_equals_plain_forwards(tiny_model_dir, tokenizer, tmp_path):
    policy = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    other = save_tiny_model(tmp_path / "ref", tokenizer, seed=1)  # π ≠ π_ref, so the losses differ per pair
    ref_model = AutoModelForCausalLM.from_pretrained(other, dtype=torch.float32).eval()
    rows = [dict(r, confidence=c) for r, c in zip(make_pairs(5), [0.9, 0.5, 1.0, 0.0, 0.7])]
    pairs = load_rows([str(write_jsonl(tmp_path / "p.jsonl", rows))], "auto").rows
    exs, _ = encode_pairs(pairs, tokenizer, resolve_template(tokenizer), 256, "drop")
    cfg = load_config(dpo.DPOConfig, None, ["data.train=[x.jsonl]", "dpo.beta=0.5"])
    loss_mod = CausalLMLoss(policy)
    ref = dpo.Reference(loss_mod, policy, ref_model)
    weights = [p.extra["confidence"] for p in pairs]
    losses = []
    for i in range(5):
        h = seq_logp(policy, exs[2 * i]) - seq_logp(ref_model, exs[2 * i])
        h -= seq_logp(policy, exs[2 * i + 1]) - seq_logp(ref_model, exs[2 * i + 1])
        losses.append(math.log1p(math.exp(-0.5 * h)))  # −log σ(β h)
    assert max(losses) - min(losses) > 0.01  # the weights matter
    want = sum(w * x for w, x in zip(weights, losses))
    for packing in (True, False):  # packed rows and padded rows
        batch = pair_rows([[0, 1, 2], [3, 4]], packing)
        b = collate(exs, batch, tokenizer.pad_token_id, packing=packing)
        order = [i for row in batch for i in row]
        with torch.no_grad():
            got = dpo.pair_step(loss_mod, ref, b, order, cfg, weights)
            plain = dpo.pair_step(loss_mod, ref, b, order, cfg)
        check(got, plain, losses, want)


def check(got, plain, losses, want):
    assert got["loss_sum"].item() == pytest.approx(want, abs=1e-4)
    assert got["weight_sum"].item() == pytest.approx(3.1)
    means = dpo._means({k: v.double() for k, v in got.items()})
    assert means["loss"] == pytest.approx(want / 3.1, abs=1e-4) and means["weight"] == pytest.approx(3.1 / 5)
    # Negative control: without weights every pair counts once.
    assert plain["loss_sum"].item() == pytest.approx(sum(losses), abs=1e-4) and plain["weight_sum"].item() == 5
    assert abs(plain["loss_sum"].item() / 5 - want / 3.1) > 1e-3


@pytest.mark.slow
def test_min_confidence_and_weight_field_in_a_run(tiny_model_dir, tmp_path):
    rows = [dict(r, confidence=c) for r, c in zip(make_pairs(8), [0.9, 0.5, 1.0, 0.2, 0.7, 0.95, 0.6, 0.8])]
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    base = [
        f"model.path={tiny_model_dir}",
        f"data.train=[{data}]",
        "train.progress=false",
        "train.tensorboard=false",
        "data.max_len=128",
        "train.max_steps=1",
        "train.micro_batch_size=8",
        "dpo.kl_max_new_tokens=0",
    ]
    out = tmp_path / "run"
    extra = [f"train.out={out}", "data.min_confidence=0.6", "data.weight_field=confidence"]
    dpo.run(load_config(dpo.DPOConfig, None, base + extra))
    assert read_metrics(out, "data")[0]["low_confidence"] == 2 and read_metrics(out, "data")[0]["kept"] == 6
    step = read_metrics(out, "train")[0]
    assert step["weight"] == pytest.approx((0.9 + 1.0 + 0.7 + 0.95 + 0.6 + 0.8) / 6)
    assert step["loss"] == pytest.approx(math.log(2), abs=1e-6)  # π = π_ref at step 0: every pair log 2
    # A row without the field is named by file:line.
    (tmp_path / "bad.jsonl").write_text(
        (data.read_text() + json.dumps(make_pairs(9)[8], ensure_ascii=False) + "\n"), encoding="utf-8"
    )
    bad = [f"data.train=[{tmp_path / 'bad.jsonl'}]", f"train.out={tmp_path / 'bad'}", "data.weight_field=confidence"]
    with pytest.raises(UserError, match=r"bad\.jsonl:9: confidence: missing \(data\.weight_field reads it\)"):
        dpo.run(load_config(dpo.DPOConfig, None, base + bad))
    # A `weight` column without data.weight_field is refused, not ignored (negative control: `confidence` is fine).
    (tmp_path / "w.jsonl").write_text("".join(json.dumps(dict(r, weight=0), ensure_ascii=False) + "\n" for r in rows))
    unread = [f"data.train=[{tmp_path / 'w.jsonl'}]", f"train.out={tmp_path / 'w'}"]
    with pytest.raises(UserError, match=r"w\.jsonl:1: weight: not read unless data.weight_field=weight is set"):
        dpo.run(load_config(dpo.DPOConfig, None, base + unread))
    assert not (tmp_path / "w").exists()


def test_eval_loss_is_weighted_as_the_training_loss(tiny_model_dir, tmp_path):
    """Eval pairs carry data.weight_field too: eval_loss is Σ w·ℓ / Σ w like the training loss (it was the plain mean
    while `loss` was weighted, so the two curves measured different things); weight-0 eval sets are refused."""
    from test_dpo_correctness import FakeAccel, build

    rows = [dict(r, confidence=c) for r, c in zip(make_pairs(10), [0.9, 0.5, 1.0, 0.1, 0.7] * 2)]
    train = write_jsonl(tmp_path / "t.jsonl", rows[:5])
    evals = write_jsonl(tmp_path / "e.jsonl", rows[5:])
    extra = (f"data.eval=[{evals}]", "data.weight_field=confidence", "train.micro_batch_size=2", "dpo.beta=0.5")
    cfg, d, model, loss_mod, ref, ids = build(tiny_model_dir, train, tmp_path / "o", *extra)
    torch.nn.init.normal_(model.base_model.model.model.layers[0].self_attn.q_proj.lora_B.default.weight)
    assert d.eval_weights == [0.9, 0.5, 1.0, 0.1, 0.7]
    per_pair = []
    for i in range(5):  # each pair alone through the same step: its own loss
        per_pair.append(
            dpo.evaluate(loss_mod, ref, d.eval[2 * i : 2 * i + 2], cfg, ids, FakeAccel(0, 1, []))["eval_loss"]
        )
    assert max(per_pair) - min(per_pair) > 0.01  # the weights matter
    want = sum(w * x for w, x in zip(d.eval_weights, per_pair)) / sum(d.eval_weights)
    got = dpo.evaluate(loss_mod, ref, d.eval, cfg, ids, FakeAccel(0, 1, []), weights=d.eval_weights)["eval_loss"]
    assert got == pytest.approx(want, abs=1e-5)
    plain = dpo.evaluate(loss_mod, ref, d.eval, cfg, ids, FakeAccel(0, 1, []))["eval_loss"]  # negative control
    assert plain == pytest.approx(sum(per_pair) / 5, abs=1e-5) and abs(plain - want) > 1e-3
    zero = write_jsonl(tmp_path / "z.jsonl", [dict(r, confidence=0) for r in rows[5:]])
    with pytest.raises(UserError, match="^data.weight_field: every eval pair has confidence 0$"):
        build(tiny_model_dir, train, tmp_path / "z", *extra, f"data.eval=[{zero}]")
    unread = write_jsonl(tmp_path / "w.jsonl", [dict(r, weight=1) for r in make_pairs(3)])
    with pytest.raises(UserError, match=r"w\.jsonl:1: weight: not read unless data.weight_field=weight"):
        build(tiny_model_dir, train, tmp_path / "w", f"data.eval=[{unread}]")  # an eval file's column too


def test_a_weight_or_margin_from_a_csv_cell_is_the_number_it_holds(tmp_path):
    """A CSV has no number type: a pair's confidence 0.5 read as the text "0.5", refused as "'0.5' is not a number ≥ 0"
    (data.weight_field, data.min_confidence, an RM margin), while the same rows as JSONL trained. A CSV/xlsx cell
    holding a JSON number is that number; a JSONL string stays refused, and so does CSV text that is no number."""
    from weitiao.train.pairs import _margin, _row_number

    (tmp_path / "p.csv").write_text("prompt,chosen,rejected,confidence,margin\n问,好,坏,0.5,1e-1\n问二,好,坏,abc,-2\n")
    ok, bad = load_rows([str(tmp_path / "p.csv")], "auto").rows
    assert _row_number(ok, "confidence", "data.weight_field") == 0.5 and _margin(ok) == 0.1
    assert _margin(bad) == -2.0
    with pytest.raises(UserError, match=r"p\.csv:3: confidence: 'abc' is not a number"):
        _row_number(bad, "confidence", "data.weight_field")
    write_jsonl(tmp_path / "p.jsonl", [{"prompt": "问", "chosen": "好", "rejected": "坏", "confidence": "0.5"}])
    (text,) = load_rows([str(tmp_path / "p.jsonl")], "auto").rows
    with pytest.raises(UserError, match=r"p\.jsonl:1: confidence: '0.5' is not a number"):
        _row_number(text, "confidence", "data.weight_field")


def test_weights_and_margins_of_a_one_line_json_array_stay_with_their_pairs(tmp_path, tiny_model_dir, tokenizer):
    """json.dump writes a .json array on one line, so every pair's source is 'p.json:1': weights and margins looked
    up by source all became the last pair's ([6.0] * 6 for weights 1..6); now each keeps its own, a dropped pair
    (too long) included."""
    from weitiao.recipes import rm
    from weitiao.train.pairs import prepare_pairs

    rows = make_pairs(6)
    rows[2]["chosen"] = "很长。" * 200
    for key, values in (("w", [float(i + 1) for i in range(6)]), ("margin", [i / 2 for i in range(6)])):
        text = json.dumps([dict(r, **{key: v}) for r, v in zip(rows, values)], ensure_ascii=False)
        (tmp_path / f"{key}.json").write_text(text, encoding="utf-8")
    over = ["data.cache=false", "data.max_len=200", f"train.out={tmp_path / 'run'}", f"model.path={tiny_model_dir}"]
    cfg = load_config(dpo.DPOConfig, None, [*over, f"data.train=[{tmp_path / 'w.json'}]", "data.weight_field=w"])
    d = prepare_pairs(cfg, tokenizer, rejects_dir=tmp_path)
    assert d.stats.dropped_too_long == 1 and d.weights == [1.0, 2.0, 4.0, 5.0, 6.0]
    cfg = load_config(rm.RMConfig, None, [*over, f"data.train=[{tmp_path / 'margin.json'}]"])
    d = prepare_pairs(cfg, tokenizer, read_margins=True, rejects_dir=tmp_path)
    assert d.margins[0] == [0.0, 0.5, 1.5, 2.0, 2.5]


def test_an_eval_set_that_min_confidence_empties_is_refused(tiny_model_dir, tmp_path):
    """Every eval pair below data.min_confidence: the run trained to the end with no eval metric, exit 0 (the data
    line's low_confidence count the only trace), as an eval set truncation empties did; now one line."""
    rows = [dict(r, confidence=c) for r, c in zip(make_pairs(6), [0.9, 0.8, 1.0, 0.7, 0.2, 0.3])]
    train, evals = write_jsonl(tmp_path / "t.jsonl", rows[:4]), write_jsonl(tmp_path / "e.jsonl", rows[4:])
    base = [f"model.path={tiny_model_dir}", f"data.train=[{train}]", f"data.eval=[{evals}]", "train.progress=false",
            "train.tensorboard=false", "train.max_steps=1", f"train.out={tmp_path / 'run'}"]  # fmt: skip
    with pytest.raises(UserError, match=r"^data.min_confidence: no eval pair has confidence ≥ 0.6; lower it"):
        dpo.run(load_config(dpo.DPOConfig, None, [*base, "data.min_confidence=0.6"]))
    assert not (tmp_path / "run").exists()
    dpo.run(load_config(dpo.DPOConfig, None, [*base, "data.min_confidence=0.25"]))  # control: one eval pair passes
    assert "eval_loss" in read_metrics(tmp_path / "run", "eval")[0]
