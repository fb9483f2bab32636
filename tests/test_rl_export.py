"""`weitiao export --for openrlhf|verl`: loaded the way OpenRLHF and verl load them, the reward model
gives our reward model's score; the policy is the merged causal LM.

Neither framework imports here (OpenRLHF's models package imports flash_attn, a CUDA build; verl's
package imports ray), so their loading and scoring lines are reproduced below, citing repo, commit,
file and function.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import recipe_config, write_jsonl
from test_dpo import make_pairs
from torch import nn

from weitiao.data.formats import PreferencePair
from weitiao.data.preference import encode_pairs
from weitiao.errors import UserError
from weitiao.infer.rl_export import export_for
from weitiao.models.heads import load_reward_model
from weitiao.recipes import rm, sft


@pytest.fixture(scope="module")
def rm_run(tiny_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rlx")
    data = write_jsonl(tmp / "pairs.jsonl", make_pairs(24))
    out = tmp / "rm"
    extra = ["data.eval_split=0.25", "train.micro_batch_size=4", "train.max_steps=3", "lora.dropout=0"]
    rm.run(recipe_config("rm", tiny_model_dir, data, out, *extra, "train.lr=5e-3"))
    return out


def batch(tokenizer, lengths_from: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded input ids and attention mask, as both frameworks receive rollouts."""
    width = max(map(len, lengths_from))
    ids = torch.full((len(lengths_from), width), tokenizer.pad_token_id)
    mask = torch.zeros_like(ids)
    for i, seq in enumerate(lengths_from):
        ids[i, : len(seq)], mask[i, : len(seq)] = torch.tensor(seq), 1
    return ids, mask


def our_scores(run) -> tuple[list[float], list[list[int]], object]:
    """weitiao's reward (read at the reply's end-of-turn token) of two replies, and their token ids."""
    model, tokenizer, _ = load_reward_model(run)
    pairs = [
        PreferencePair([{"role": "user", "content": r["prompt"]}], r["chosen"], r["rejected"]) for r in make_pairs(2)
    ]
    from weitiao.data.templates import resolve_template

    exs, _ = encode_pairs(pairs, tokenizer, resolve_template(tokenizer), 128, "drop")
    seqs = []
    for ex in exs[:2]:  # a chosen and a rejected reply of different lengths
        end = max(j for j, x in enumerate(ex.labels) if x != -100) + 1  # through the end-of-turn token
        seqs.append(ex.input_ids[:end])
    with torch.no_grad():
        scores = [model(input_ids=torch.tensor([s])).logits[0, 0].item() for s in seqs]
    return scores, seqs, tokenizer


def openrlhf_load(path, normalize: bool):
    """OpenRLHF/OpenRLHF@3c3be62 openrlhf/models/model.py get_llm_for_sequence_regression(model_type="reward")
    and _get_reward_model: AutoModel's base class under base_model_prefix + bias-free value head named by
    config.value_head_prefix; mean/std from config.json."""
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(path)
    config.normalize_reward = normalize
    value_head_prefix = getattr(config, "value_head_prefix", "score")
    base_class = AutoModel._model_mapping[type(config)]

    class RewardModel(base_class.__base__):
        def __init__(self, config):
            super().__init__(config)
            setattr(self, self.base_model_prefix, base_class(config))
            self.value_head_prefix = value_head_prefix
            setattr(self, value_head_prefix, nn.Linear(config.hidden_size, 1, bias=False))
            self.normalize_reward = config.normalize_reward
            self.register_buffer("mean", torch.zeros(1), persistent=False)
            self.register_buffer("std", torch.ones(1), persistent=False)
            if hasattr(config, "mean"):
                self.mean[0] = config.mean
                self.std[0] = config.std
            self.post_init()

        def forward(self, input_ids, attention_mask):
            eos_indices = attention_mask.size(1) - 1 - attention_mask.long().fliplr().argmax(dim=1, keepdim=True)
            position_ids = attention_mask.long().cumsum(-1) - 1
            position_ids.masked_fill_(attention_mask == 0, 1)
            outputs = getattr(self, self.base_model_prefix)(
                input_ids, attention_mask=attention_mask, position_ids=position_ids
            )
            values = getattr(self, self.value_head_prefix)(outputs["last_hidden_state"]).squeeze(-1)
            reward = values.gather(dim=1, index=eos_indices).squeeze(1)
            if not self.training and self.normalize_reward:
                reward = (reward - self.mean) / self.std
            return reward

    model, info = RewardModel.from_pretrained(path, config=config, output_loading_info=True)
    return model.eval(), info


def verl_load_and_score(path, ids, mask) -> tuple[torch.Tensor, dict]:
    """volcengine/verl@b178a3c verl/workers/fsdp_workers.py RewardModelWorker._build_model (config
    num_labels=1, classifier_dropout=0, AutoModelForTokenClassification; bf16 there, fp32 here) and
    _forward_micro_batch (reward at argmax(position_ids * attention_mask)); position ids as
    verl/utils/model.py compute_position_id_with_mask."""
    from transformers import AutoConfig, AutoModelForTokenClassification

    config = AutoConfig.from_pretrained(path)
    config.num_labels = 1
    config.classifier_dropout = 0.0
    model, info = AutoModelForTokenClassification.from_pretrained(path, config=config, output_loading_info=True)
    position_ids = torch.clip(torch.cumsum(mask, dim=-1) - 1, min=0, max=None)
    with torch.no_grad():
        rm_score = model.eval()(input_ids=ids, attention_mask=mask, position_ids=position_ids).logits.squeeze(-1)
    eos_mask_idx = torch.argmax(position_ids * mask, dim=-1)
    return rm_score[torch.arange(ids.shape[0]), eos_mask_idx], info


def test_openrlhf_reward_model_scores_as_ours(rm_run, tmp_path):
    ours, seqs, tokenizer = our_scores(rm_run)
    dest = export_for("openrlhf", str(rm_run), str(tmp_path / "openrlhf"))
    cfg = json.loads((dest / "config.json").read_text())
    evals = [json.loads(x) for x in (rm_run / "metrics.jsonl").read_text().splitlines()]
    last = [e for e in evals if e["kind"] == "eval"][-1]
    assert cfg["value_head_prefix"] == "score" and (cfg["mean"], cfg["std"]) == (
        last["eval_reward_mean"],
        last["eval_reward_std"],
    )
    model, info = openrlhf_load(dest, normalize=False)
    assert not info["missing_keys"] and not info["unexpected_keys"]  # every weight came from our export
    ids, mask = batch(tokenizer, seqs)
    with torch.no_grad():
        got = model(ids, mask)
    assert abs(ours[0] - ours[1]) > 1e-4  # negative control: the two replies score differently
    torch.testing.assert_close(got, torch.tensor(ours), atol=1e-5, rtol=0)
    # --normalize_reward reads config.mean/std (checked above) into non-persistent buffers in __init__;
    # under transformers 5.24 from_pretrained returns them as 0/0 (OpenRLHF pins 5.15), so the
    # normalized reward is not compared here.


def test_verl_reward_model_scores_as_ours(rm_run, tmp_path):
    ours, seqs, tokenizer = our_scores(rm_run)
    dest = export_for("verl", str(rm_run), str(tmp_path / "verl"))
    ids, mask = batch(tokenizer, seqs)
    got, info = verl_load_and_score(dest, ids, mask)
    assert not info["missing_keys"] and not info["unexpected_keys"]  # the head's bias came from the export too
    assert json.loads((dest / "config.json").read_text())["architectures"] == ["LlamaForTokenClassification"]
    assert json.loads((dest / ".weitiao-export.json").read_text())["format"] == "chat"
    torch.testing.assert_close(got, torch.tensor(ours), atol=1e-5, rtol=0)
    # Negative control: our classifier as it is (the OpenRLHF export) loaded verl's way lacks the head bias,
    # which transformers then initializes at random.
    plain = export_for("openrlhf", str(rm_run), str(tmp_path / "plain"))
    assert set(verl_load_and_score(plain, ids, mask)[1]["missing_keys"]) == {"score.bias"}


def test_policy_export_is_the_merged_causal_lm(tiny_model_dir, chat_file, tmp_path):
    from transformers import AutoModelForCausalLM

    run = tmp_path / "sft"
    sft.run(recipe_config("sft", tiny_model_dir, chat_file, run, "train.max_steps=1", "data.max_len=64"))
    dest = export_for("verl", str(run), str(tmp_path / "policy"))
    assert json.loads((dest / ".weitiao-export.json").read_text())["merged"] is True
    model = AutoModelForCausalLM.from_pretrained(dest)
    assert not any("lora" in k for k in model.state_dict())
    with pytest.raises(UserError, match="--for nemo: choose one of openrlhf, verl"):
        export_for("nemo", str(run), str(tmp_path / "x"))
