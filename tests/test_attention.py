"""Packed micro-batches (several rows) under each attention implementation vs one sequence at a time.

flash-attention cannot run on CPU, so `fake_varlen` stands in for it: plain causal attention per row,
varlen segments from position_ids only for a one-row batch — transformers' own condition
(`modeling_flash_attention_utils._is_packed_sequence`), the cause of the leak this guards against.
"""

import pytest
import torch
from test_collate import make_examples
from transformers import AttentionInterface, AutoModelForCausalLM
from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask
from transformers.modeling_flash_attention_utils import _is_packed_sequence

from weitiao.data.collate import collate, n_targets
from weitiao.errors import UserError
from weitiao.losses.sft import CausalLMLoss
from weitiao.models import packed_attention
from weitiao.models.attention import check_isolation, implementation, needs_one_row, probe_error, refuse_untrainable


def fake_varlen(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    b, _, n, _ = query.shape
    pos = kwargs.get("position_ids")
    allowed = torch.ones(n, n, dtype=torch.bool, device=query.device).tril().expand(b, n, n)
    if attention_mask is not None:  # padded batch: FA2 unpads with the 2D mask
        allowed = allowed & attention_mask[:, None, :].bool()
    elif _is_packed_sequence(pos, b):  # varlen: segments where positions restart
        seg = (torch.diff(pos, prepend=pos[:, :1] - 1, dim=-1) != 1).cumsum(-1)
        allowed = allowed & (seg[:, :, None] == seg[:, None, :])
    key = key.repeat_interleave(query.shape[1] // key.shape[1], dim=1)
    value = value.repeat_interleave(query.shape[1] // value.shape[1], dim=1)
    out = torch.nn.functional.scaled_dot_product_attention(query, key, value, allowed[:, None], scale=scaling)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register("fake_varlen", fake_varlen)
AttentionMaskInterface.register("fake_varlen", flash_attention_mask)


def load(model_dir, attn):
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation=attn)


def loss_and_grad(model, b, count):
    model.zero_grad()
    s, _ = CausalLMLoss(model)(b.input_ids, b.targets, b.position_ids, b.attention_mask)
    (s / count).backward()
    return s.item() / count, model.model.layers[0].self_attn.q_proj.weight.grad.clone()


@pytest.mark.parametrize("attn", ["sdpa", "eager", "fake_varlen"])
def test_packed_micro_batch_of_two_rows_equals_one_by_one(tiny_model_dir, tokenizer, attn):
    model = load(tiny_model_dir, attn)
    exs = make_examples(tokenizer, n=6, seed=2)
    count = sum(n_targets(e) for e in exs)
    pad = tokenizer.pad_token_id
    rows = [[0, 1, 2], [3, 4, 5]]  # micro_batch_size 2, three documents per row
    want_loss, want_grad = 0.0, 0.0
    for i in range(len(exs)):
        lo, g = loss_and_grad(model, collate(exs, [[i]], pad, packing=True), count)
        want_loss, want_grad = want_loss + lo, want_grad + g
    one_row = needs_one_row(model)
    assert one_row == (attn == "fake_varlen")
    b = collate(exs, rows, pad, packing=True, one_row=one_row)
    assert b.input_ids.shape[0] == (1 if one_row else 2)
    lo, g = loss_and_grad(model, b, count)
    assert abs(lo - want_loss) < 1e-5 * want_loss and torch.allclose(g, want_grad, atol=1e-6, rtol=1e-4)
    if one_row:  # negative control: two rows under a kernel that only splits one-row batches
        leaky, _ = loss_and_grad(model, collate(exs, rows, pad, packing=True), count)
        assert abs(leaky - want_loss) > 1e-3


def test_isolation_probe_refuses_attention_that_leaks(tiny_model_dir):
    for attn in ("sdpa", "eager"):
        assert check_isolation(load(tiny_model_dir, attn), torch.device("cpu"), one_row=False) < 1e-5
    flash = load(tiny_model_dir, "fake_varlen")
    assert check_isolation(flash, torch.device("cpu"), one_row=True) < 1e-5
    assert probe_error(flash, torch.device("cpu"), one_row=False) > 1e-2  # two rows: documents mix
    with pytest.raises(UserError, match="model.attn: fake_varlen: packed documents attend to each other"):
        check_isolation(flash, torch.device("cpu"), one_row=False)


@pytest.mark.slow
def test_flex_attention_packed_rows_forward_on_cpu(tiny_model_dir, tokenizer):
    """flex_attention (compiled on first use, ~40 s on CPU): masks documents at any batch size."""
    model = load(tiny_model_dir, "flex_attention").eval()
    assert not needs_one_row(model)
    exs = make_examples(tokenizer, n=6, seed=2)
    pad = tokenizer.pad_token_id
    loss = CausalLMLoss(model)
    with torch.no_grad():
        want = 0.0
        for i in range(6):
            b = collate(exs, [[i]], pad, packing=True)
            want += loss(b.input_ids, b.targets, b.position_ids, None)[0].item()
        b = collate(exs, [[0, 1, 2], [3, 4, 5]], pad, packing=True)
        got = loss(b.input_ids, b.targets, b.position_ids, None)[0].item()
    assert abs(got - want) < 1e-5 * want
    assert check_isolation(model, torch.device("cpu"), one_row=False) < 1e-5
    with pytest.raises(UserError, match="model.attn: flex_attention cannot train on CPU"):
        refuse_untrainable(model, torch.device("cpu"))


@pytest.mark.parametrize("recipe", ["sft", "dpo", "rm"])
def test_recipes_refuse_packing_when_attention_leaks(tiny_model_dir, tmp_path, monkeypatch, recipe):
    """Negative control at run level: transformers stops reading packed position_ids (as flash-attention
    does for batches of several rows) → each recipe refuses at start with one line, before training."""
    import transformers.masking_utils as mu
    from conftest import write_jsonl
    from test_dpo import make_pairs

    from weitiao.config import load_config
    from weitiao.recipes import dpo, rm, sft

    mod = {"sft": sft, "dpo": dpo, "rm": rm}[recipe]
    cls = {"sft": sft.SFTConfig, "dpo": dpo.DPOConfig, "rm": rm.RMConfig}[recipe]
    rows = make_pairs(8) if recipe != "sft" else [{"instruction": f"问{i}", "output": "好"} for i in range(8)]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    cfg = load_config(
        cls, None, [f"model.path={tiny_model_dir}", f"data.train=[{data}]", f"train.out={tmp_path / 'o'}"]
    )
    monkeypatch.setattr(mu, "find_packed_sequence_indices", lambda position_ids: None)
    # SFT attends per conversation (models/packed_attention.py): break its segments too, one per row.
    monkeypatch.setattr(packed_attention, "segment_lengths", lambda pos: [[pos.shape[1]]] * pos.shape[0])
    monkeypatch.setattr(packed_attention, "_last", None)
    with pytest.raises(UserError, match="model.attn: sdpa(_packed)?: packed documents attend to each other"):
        mod.run(cfg)
    assert not (tmp_path / "o" / "metrics.jsonl").exists()


def test_packed_run_with_lora_on_the_embedding_trains(tiny_model_dir, chat_file, tmp_path):
    """LoRA on embed_tokens wraps the embedding: the isolation probe read `num_embeddings` off the wrapper and
    refused every packed run ('use sdpa', already the setting)."""
    from conftest import recipe_config

    from weitiao.recipes import sft

    cfg = recipe_config("sft", tiny_model_dir, chat_file, tmp_path / "o", "lora.targets=[embed_tokens,q_proj]",
                        "train.max_steps=1")  # fmt: skip
    assert cfg.data.packing and sft.run(cfg)["finished"]


def tiny_gemma2(path, tokenizer):
    """A tiny Gemma-2 as its checkpoints are: attention scores soft-capped (50), a sliding window every other layer
    (4 tokens here, so packed rows cross it)."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    cfg = Gemma2Config(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=256, sliding_window=4,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
        tie_word_embeddings=False,
    )  # fmt: skip
    Gemma2ForCausalLM(cfg).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.mark.parametrize("packing", ["true", "false"])
def test_gemma2_under_the_default_sdpa_trains_as_eager(tokenizer, chat_file, tmp_path, monkeypatch, capsys, packing):
    """transformers 5 has no sdpa for Gemma-2 (it cannot soft-cap scores): the default model.attn was a ValueError
    traceback at load. Now it loads eager, said in one line, and trains exactly as model.attn: eager does."""
    import transformers
    from conftest import recipe_config

    from weitiao.models import load as load_mod
    from weitiao.recipes import sft
    from weitiao.train.log import read_metrics

    model = tiny_gemma2(tmp_path / "gemma2", tokenizer)
    monkeypatch.setattr(load_mod, "_SAID_EAGER", set(), raising=False)
    losses = {}
    for attn in ("sdpa", "eager"):
        out = tmp_path / attn
        cfg = recipe_config("sft", model, chat_file, out, f"model.attn={attn}", f"data.packing={packing}",
                            "data.max_len=256", "train.max_steps=2")  # fmt: skip
        assert sft.run(cfg)["finished"]
        losses[attn] = [r["loss"] for r in read_metrics(out, "train")]
        said = [line for line in capsys.readouterr().err.splitlines() if line.startswith("model.attn")]
        note = (f"model.attn: sdpa: Gemma2ForCausalLM has no sdpa attention in transformers {transformers.__version__};"
                " loading it with eager (the same attention, more memory on long rows); set model.attn: eager to "
                "silence this, or flash_attention_2 on a GPU")  # fmt: skip
        assert said == ([note] if attn == "sdpa" else [])
    assert losses["sdpa"] == losses["eager"] and len(losses["sdpa"]) == 2


def test_gemma2_packed_rows_equal_one_by_one_across_its_sliding_window(tokenizer, tmp_path, tiny_model_dir):
    """Packed Gemma-2 (eager, as loaded for sdpa): soft-capped scores and 4-token sliding windows stay per
    conversation; the reward model's classifier loads eager too, a Llama keeps sdpa."""
    from weitiao.models.load import ModelSpec, load_model

    d = tiny_gemma2(tmp_path / "gemma2", tokenizer)
    model = load_model(ModelSpec(path=str(d)))
    assert implementation(model) == "eager" and not needs_one_row(model)
    exs = make_examples(tokenizer, n=6, seed=2)
    count = sum(n_targets(e) for e in exs)
    pad = tokenizer.pad_token_id
    want = sum(loss_and_grad(model, collate(exs, [[i]], pad, packing=True), count)[0] for i in range(6))
    got = loss_and_grad(model, collate(exs, [[0, 1, 2], [3, 4, 5]], pad, packing=True), count)[0]
    assert abs(got - want) < 1e-5 * want
    assert implementation(load_model(ModelSpec(path=str(d)), head="score")) == "eager"
    assert implementation(load_model(ModelSpec(path=str(tiny_model_dir)))) == "sdpa"
