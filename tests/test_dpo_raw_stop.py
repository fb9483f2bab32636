"""DPO on raw text pairs (data.format preference_raw) with a base whose EOS is not the template's end-of-turn: the
on-policy KL samples replies that stop at the EOS raw training closes replies with; they stopped only at the
template's end-of-turn, which raw training never shows the model, and ran to dpo.kl_max_new_tokens."""

import pytest
from conftest import build_tokenizer, save_tiny_model, write_jsonl
from test_dpo import make_pairs
from test_dpo_correctness import config

from weitiao.recipes import dpo


@pytest.mark.parametrize("fmt", ["preference_raw", "preference"])
def test_onpolicy_samples_stop_where_replies_were_trained_to(tmp_path, monkeypatch, fmt):
    tok = build_tokenizer(eos="<|endoftext|>")  # Qwen2.5 base: EOS <|endoftext|>, end-of-turn <|im_end|>
    base = save_tiny_model(tmp_path / "base", tok, hidden=64)
    data = write_jsonl(tmp_path / "p.jsonl", make_pairs(4))
    seen = []
    real = dpo.sample_replies

    def spy(model, prompts, eot_id, *args, **kw):
        seen.append(eot_id)
        return real(model, prompts, eot_id, *args, **kw)

    monkeypatch.setattr(dpo, "sample_replies", spy)
    extra = (f"data.format={fmt}", f"data.eval=[{data}]", "train.max_steps=1", "dpo.kl_max_new_tokens=2")
    dpo.run(config(base, data, tmp_path / "run", *extra))
    want = "<|endoftext|>" if fmt == "preference_raw" else "<|im_end|>"
    assert seen == [tok.convert_tokens_to_ids(want)]
