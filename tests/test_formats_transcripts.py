"""Human:/Assistant: transcripts: Anthropic HH-RLHF pairs (chosen/rejected as whole "\\n\\nHuman: …\\n\\nAssistant: …"
transcripts) and BELLE multi-turn Alpaca instructions.

Expected texts are written out by hand from the transcripts: the turns, and the split at the last
"\\n\\nAssistant:" even where both replies start with the same words (the shared-prefix split put "I think"
into the prompt); BELLE's earlier turns were one user message holding the whole transcript.
"""

import pytest
from conftest import write_jsonl

from weitiao.data.chat import IGNORE, EncodeOptions, encode
from weitiao.data.formats import load_conversations
from weitiao.data.preference import encode_pair, load_pairs
from weitiao.data.templates import resolve_template
from weitiao.errors import UserError

MULTI = "\n\nHuman: 怎么煮米饭？\n\nAssistant: 先洗米。\n\nHuman: Then what?\n\nAssistant: "
HH = [
    {"chosen": MULTI + "I think you add water, then cook it.", "rejected": MULTI + "I think it's easy."},
    {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello! How can I help?", "rejected": "\n\nHuman: Hi\n\nAssistant: What?"},
]


def side_texts(pair, tokenizer, template):
    """(rendered text, trained text) of chosen and rejected."""
    out = []
    for e in encode_pair(pair, tokenizer, template, 1024):
        trained = [t for t, lab in zip(e.input_ids, e.labels) if lab != IGNORE]
        out.append((tokenizer.decode(e.input_ids), tokenizer.decode(trained)))
    return out


def test_hh_transcripts_read_as_chats_split_at_the_last_assistant_turn(tmp_path, tokenizer):
    pairs = load_pairs([str(write_jsonl(tmp_path / "hh.jsonl", HH))], "auto", False).rows
    template = resolve_template(tokenizer, "chatml")
    prompt = "<|im_start|>user\n怎么煮米饭？<|im_end|>\n<|im_start|>assistant\n先洗米。<|im_end|>\n"
    prompt += "<|im_start|>user\nThen what?<|im_end|>\n<|im_start|>assistant\n"
    assert side_texts(pairs[0], tokenizer, template) == [
        (prompt + "I think you add water, then cook it.<|im_end|>\n", "I think you add water, then cook it.<|im_end|>"),
        (prompt + "I think it's easy.<|im_end|>\n", "I think it's easy.<|im_end|>"),
    ]
    assert [p.form for p in pairs] == ["hh", "hh"]
    assert (pairs[1].prompt, pairs[1].chosen, pairs[1].rejected) == (
        [{"role": "user", "content": "Hi"}],
        "Hello! How can I help?",
        "What?",
    )


def test_hh_raw_splits_at_the_last_assistant_turn(tmp_path, tokenizer):
    pairs = load_pairs([str(write_jsonl(tmp_path / "hh.jsonl", HH))], "preference_raw", False).rows
    template = resolve_template(tokenizer, "chatml")
    eos = tokenizer.eos_token
    assert side_texts(pairs[0], tokenizer, template) == [
        (MULTI + "I think you add water, then cook it." + eos, " I think you add water, then cook it." + eos),
        (MULTI + "I think it's easy." + eos, " I think it's easy." + eos),
    ]


def test_hh_prompt_column_and_bad_transcripts(tmp_path):
    # Dahoas/rm-static and full-hh-rlhf: the transcript up to "\n\nAssistant:" as `prompt`, replies beside it
    dahoas = {"prompt": "\n\nHuman: Hi\n\nAssistant:", "response": " Hello!", "chosen": " Hello!", "rejected": " Go."}
    pair = load_pairs([str(write_jsonl(tmp_path / "d.jsonl", [dahoas]))], "auto", False).rows[0]
    assert (pair.prompt, pair.chosen, pair.rejected) == ([{"role": "user", "content": "Hi"}], "Hello!", "Go.")
    # copies stripped of the first newlines, a prompt with the space before the reply (translated HH sets)
    stripped = {k: v.lstrip("\n") for k, v in HH[1].items()}
    spaced = {"prompt": "Human: 你好\n\nAssistant: ", "chosen": "你好！", "rejected": "滚。"}
    got = load_pairs([str(write_jsonl(tmp_path / "s.jsonl", [stripped, spaced]))], "auto", False).rows
    assert [(p.prompt, p.chosen, p.rejected) for p in got] == [
        ([{"role": "user", "content": "Hi"}], "Hello! How can I help?", "What?"),
        ([{"role": "user", "content": "你好"}], "你好！", "滚。"),
    ]
    differ = {"chosen": HH[0]["chosen"], "rejected": HH[0]["rejected"].replace("先洗米", "不知道")}
    bad = [
        (differ, r"x.jsonl:1: rejected: an HH transcript whose conversation before its last"),
        ({**dahoas, "chosen": HH[1]["chosen"]}, r"x.jsonl:1: chosen: a whole HH transcript .* beside a prompt"),
        ({"chosen": "\n\nHuman: \n\nAssistant: a", "rejected": "\n\nHuman: \n\nAssistant: b"}, "turn 1 .Human."),
    ]
    for row, message in bad:
        with pytest.raises(UserError, match=message):
            load_pairs([str(write_jsonl(tmp_path / "x.jsonl", [row]))], "auto", False)


@pytest.mark.slow
def test_a_raw_reward_model_trained_on_hh_scores_hh_as_trained(tiny_model_dir, tmp_path):
    """`score` reads HH rows as chats; a reward model trained on their raw text (preference_raw) scores the text it
    was trained on (it refused them as not raw strings): the eval margin equals score's."""
    from conftest import recipe_config

    from weitiao.recipes import rm, score
    from weitiao.train.log import read_metrics

    rows = [{k: v.replace("Hi", f"Hi {i}") for k, v in HH[1].items()} for i in range(4)] + HH[:1]
    f = write_jsonl(tmp_path / "hh.jsonl", rows)
    out = tmp_path / "rm"
    rm.run(recipe_config("rm", tiny_model_dir, f, out, "data.format=preference_raw", f"data.eval=[{f}]",
                         "train.max_steps=2", "train.eval_every=2", "train.lr=5e-3"))  # fmt: skip
    summary = score.run(str(out), str(f))
    assert summary["mean_margin"] == pytest.approx(read_metrics(out, "eval")[-1]["eval_margin"], abs=1e-4)


def test_belle_multiturn_instruction_reads_as_its_turns(tmp_path, tokenizer):
    belle = {"instruction": "Human:写一首关于秋天的诗。\nAssistant:秋风起，落叶黄。\nHuman:再短一点\nAssistant:",
             "input": "", "output": "秋叶黄。"}  # fmt: skip
    conv = load_conversations(write_jsonl(tmp_path / "belle.jsonl", [belle])).rows[0]
    enc = encode(conv, tokenizer, resolve_template(tokenizer, "chatml"), EncodeOptions(max_len=512))
    assert tokenizer.decode(enc.input_ids) == (
        "<|im_start|>user\n写一首关于秋天的诗。<|im_end|>\n<|im_start|>assistant\n秋风起，落叶黄。<|im_end|>\n"
        "<|im_start|>user\n再短一点<|im_end|>\n<|im_start|>assistant\n秋叶黄。<|im_end|>\n"
    )
    trained = tokenizer.decode([t for t, lab in zip(enc.input_ids, enc.labels) if lab != IGNORE])
    assert trained == "秋风起，落叶黄。<|im_end|>秋叶黄。<|im_end|>"
    bad = [
        ({**belle, "input": "补充"}, r"b.jsonl:1: input: beside a BELLE multi-turn instruction"),
        ({**belle, "instruction": "Human:一\nHuman:二\nAssistant:"}, r"instruction: .*turn 2 \(Human: where Assistant"),
    ]
    for row, message in bad:
        with pytest.raises(UserError, match=message):
            load_conversations(write_jsonl(tmp_path / "b.jsonl", [row]))
