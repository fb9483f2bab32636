"""DPO/RM pairs through the tokenized-data cache, and TRL's standard string pairs: templated (said so) or raw
(`data.format: preference_raw`, tokenized as TRL tokenizes them) (issue #17)."""

from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import write_jsonl

from weitiao.config import load_config
from weitiao.data import cache, preference
from weitiao.data.chat import IGNORE
from weitiao.data.check import check_file
from weitiao.data.formats import PreferencePair
from weitiao.data.preference import encode_pair, encode_pairs, load_pairs
from weitiao.data.templates import resolve_template
from weitiao.errors import UserError
from weitiao.models.load import load_tokenizer
from weitiao.recipes import dpo
from weitiao.train.pairs import prepare_pairs

DEMO = Path(__file__).resolve().parents[1] / "weitiao" / "demo"
PREFS = DEMO / "data" / "prefs_heldout.jsonl"


@pytest.fixture(scope="module")
def demo_tok():
    return load_tokenizer(str(DEMO / "model"))


@pytest.fixture
def calls(monkeypatch):
    """Counts `encode_batch` calls made for pairs (the only tokenizing step of a build, num_proc 1)."""
    n = {"encode": 0}
    real = preference.encode_batch

    def counted(*a, **k):
        n["encode"] += 1
        return real(*a, **k)

    monkeypatch.setattr(preference, "encode_batch", counted)
    return n


def enc(pairs, tok, tmp_path, template="auto", max_len=96, truncation="cut_response", **kw):
    kw = {"cache_dir": tmp_path / "cache", "num_proc": 1, "progress": False, **kw}
    return encode_pairs(pairs, tok, resolve_template(tok, template), max_len, truncation, **kw)


def dicts(seq):
    return [asdict(e) for e in seq]


def folders(tmp_path):
    return {p.name for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")}


def test_second_build_reads_the_cache_and_calls_no_tokenizer(demo_tok, tmp_path, calls):
    pairs = load_pairs([str(PREFS)], "auto", False).rows
    first, stats = enc(pairs, demo_tok, tmp_path)
    assert calls["encode"] == 2  # chosen and rejected sides, one chunk
    want = [encode_pair(p, demo_tok, resolve_template(demo_tok), 96, "cut_response") for p in pairs]
    assert dicts(first) == dicts([e for w in want if w for e in w])  # the reference encoder's sequences
    assert stats.cut > 0 and stats.pairs == len(pairs) == stats.kept + stats.dropped_too_long
    second, stats2 = enc(pairs, demo_tok, tmp_path)
    assert calls["encode"] == 2 and dicts(second) == dicts(first) and stats2 == stats
    assert isinstance(second, cache.EncodedRows)  # memory-mapped, not Python lists
    # Negative control: with the cache off the same call tokenizes again, and writes no entry.
    before = folders(tmp_path)
    off, _ = enc(pairs, demo_tok, tmp_path, use_cache=False)
    assert calls["encode"] == 4 and dicts(off) == dicts(first) and folders(tmp_path) == before


def test_key_changes_with_template_max_len_truncation_and_pairs(demo_tok, tmp_path):
    pairs = load_pairs([str(PREFS)], "auto", False).rows
    enc(pairs, demo_tok, tmp_path)
    base = folders(tmp_path)
    assert len(base) == 1
    enc(pairs, demo_tok, tmp_path, template="plain")
    enc(pairs, demo_tok, tmp_path, max_len=97)
    enc(pairs, demo_tok, tmp_path, truncation="drop")
    edited = [PreferencePair(pairs[0].prompt, pairs[0].chosen + "。", pairs[0].rejected, pairs[0].source)]
    enc(edited + pairs[1:], demo_tok, tmp_path)
    assert len(folders(tmp_path)) == 5
    enc(pairs, demo_tok, tmp_path)  # the same inputs again: no new entry
    assert len(folders(tmp_path)) == 5


def test_worker_processes_give_the_same_pairs(demo_tok, tmp_path, monkeypatch):
    pairs = load_pairs([str(PREFS)], "auto", False).rows
    monkeypatch.setattr(cache, "CHUNK_ROWS", 4)  # several chunks: the pool starts
    multi, s_multi = enc(pairs, demo_tok, tmp_path, num_proc=2, use_cache=False)
    single, s_single = enc(pairs, demo_tok, tmp_path, num_proc=1, use_cache=False)
    assert dicts(multi) == dicts(single) and s_multi == s_single


def test_dpo_prepare_pairs_second_run_from_cache(demo_tok, tmp_path, capsys, calls):
    from weitiao.config import load_config
    from weitiao.recipes.dpo import DPOConfig, prepare_pairs

    cfg_file = tmp_path / "d.yaml"
    cfg_file.write_text(f"data: {{train: [{PREFS}], eval_split: 0.25, cache_dir: {tmp_path / 'cache'}}}\n")
    cfg = load_config(DPOConfig, cfg_file, [f"train.out={tmp_path / 'run'}", "data.num_proc=1"])
    cold = prepare_pairs(cfg, demo_tok)
    n = calls["encode"]
    warm = prepare_pairs(cfg, demo_tok)
    out = capsys.readouterr().out
    assert n > 0 and calls["encode"] == n and "pairs from cache" in out and "pairs in" in out
    assert dicts(warm.train) == dicts(cold.train) and dicts(warm.eval) == dicts(cold.eval) and warm.stats == cold.stats


# ----------------------------------------------------------------------------- TRL standard (string) pairs

STRING_ROWS = [
    {"prompt": "天空是什么颜色的？", "chosen": "蓝色。", "rejected": "绿色。"},
    {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."},
    {"chosen": "一加一等于二。", "rejected": "一加一等于三。"},  # implicit prompt, as trl's extract_prompt
]


def test_string_pairs_are_templated_and_say_so(demo_tok, tmp_path, capsys):
    path = write_jsonl(tmp_path / "p.jsonl", STRING_ROWS + [{"prompt": [{"role": "user", "content": "嗯"}],
                                                             "chosen": "好", "rejected": "不"}])  # fmt: skip
    pairs = load_pairs([str(path)], "auto", False).rows
    assert [p.form for p in pairs] == ["string", "string", "string", "chat"]
    t = resolve_template(demo_tok)
    seqs, _ = encode_pairs(pairs, demo_tok, t, 256, "drop", cache_dir=tmp_path / "cache", num_proc=1)
    assert t.eot in demo_tok.decode(seqs[0].input_ids)  # the chat template was applied
    # said once for train and eval pairs together (it was said per set: twice, with two counts), also with
    # train.progress false (it was said only beside a progress bar: nohup and Slurm runs never saw it)
    held = write_jsonl(tmp_path / "e.jsonl", STRING_ROWS[:2])
    keys = [f"data.train=[{path}]", f"data.eval=[{held}]", f"train.out={tmp_path / 'o'}", "data.num_proc=1"]
    keys.append("train.progress=false")
    cfg = load_config(dpo.DPOConfig, None, [*keys, f"data.cache_dir={tmp_path / 'cache'}"])
    capsys.readouterr()
    prepare_pairs(cfg, demo_tok)
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note: ")]
    assert notes == [
        f"note: 5 pairs of prompt/chosen/rejected strings are rendered as a one-user-turn chat with template {t.name!r}"
        "; TRL trains such rows as raw text (data.format: preference_raw does that)"
    ]
    rep = check_file([str(path)], demo_tok)
    assert any("3 pairs of prompt/chosen/rejected strings" in n and t.name in n for n in rep.notes), rep.notes
    # Negative control: chat pairs alone get no such line.
    chat = write_jsonl(
        tmp_path / "c.jsonl", [{"prompt": [{"role": "user", "content": "嗯"}], "chosen": "好", "rejected": "不"}]
    )
    prepare_pairs(load_config(dpo.DPOConfig, None, [f"data.train=[{chat}]", f"train.out={tmp_path / 'c'}"]), demo_tok)
    assert "rendered as a one-user-turn chat" not in capsys.readouterr().out


def trl_tokens(rows, tok, tmp_path):
    """prompt_ids / chosen_ids / rejected_ids from TRL's own DPO dataset preparation (standard rows)."""
    import trl
    from datasets import Dataset
    from trl.data_utils import extract_prompt

    rows = [r if "prompt" in r else extract_prompt(r) for r in rows]  # what TRL does to a set without prompts

    args = trl.DPOConfig(str(tmp_path / "trl"), max_length=None, report_to=[], use_cpu=True, bf16=False)
    ds = trl.DPOTrainer._prepare_dataset(SimpleNamespace(_tokenizer=tok), Dataset.from_list(rows), tok, args, "t")
    return list(ds)


def test_preference_raw_tokenizes_as_trl(demo_tok, tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", STRING_ROWS)
    pairs = load_pairs([str(path)], "preference_raw", False).rows
    assert [p.form for p in pairs] == ["raw"] * 3
    seqs, stats = encode_pairs(pairs, demo_tok, resolve_template(demo_tok), 256, "drop", cache_dir=tmp_path / "c")
    assert stats.kept == 3
    for k, ref in enumerate(trl_tokens([dict(r) for r in STRING_ROWS], demo_tok, tmp_path)):
        p = ref["prompt_ids"]
        for e, reply in zip(seqs[2 * k : 2 * k + 2], (ref["chosen_ids"], ref["rejected_ids"])):
            assert e.input_ids == p + reply
            assert e.labels == [IGNORE] * len(p) + reply
            assert e.input_ids[-1] == demo_tok.eos_token_id
    # Negative control: the same rows in the default (templated) form give other tokens.
    templated, _ = encode_pairs(load_pairs([str(path)], "auto", False).rows, demo_tok, resolve_template(demo_tok),
                                256, "drop", cache_dir=tmp_path / "c")  # fmt: skip
    assert templated[0].input_ids != seqs[0].input_ids


def test_preference_raw_refuses_chat_rows(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": [{"role": "user", "content": "嗯"}], "chosen": "好",
                                              "rejected": "不"}])  # fmt: skip
    with pytest.raises(UserError, match=r"p.jsonl:1: chosen: format preference_raw takes .* use format preference"):
        load_pairs([str(path)], "preference_raw", False)
    sys_row = write_jsonl(tmp_path / "s.jsonl", [{**STRING_ROWS[0], "system": "你是助手"}])
    with pytest.raises(UserError, match="format preference_raw takes"):
        load_pairs([str(sys_row)], "preference_raw", False)


def test_pairs_holding_special_token_text_are_set_aside_under_skip_invalid(demo_tok, tmp_path):
    """A pair whose reply holds special-token text stopped DPO/RM even with data.skip_invalid (the refusal came at
    encoding); now it goes to the rejects file, named chosen/rejected, and read == kept + rejected."""
    rows = [
        {"prompt": "天空是什么颜色的？", "chosen": "蓝色。", "rejected": "绿色。"},
        {"prompt": "一加一？", "chosen": "二。", "rejected": "三<|im_end|>\n<|im_start|>user\n假"},
        {"prompt": "水是什么？", "chosen": "液体。", "rejected": "固体。"},
        {"prompt": "一加二？", "chosen": "三。", "rejected": "四。"},
    ]
    data = write_jsonl(tmp_path / "p.jsonl", rows)
    cfg_file = tmp_path / "d.yaml"
    cfg_file.write_text(f"data: {{train: [{data}], cache_dir: {tmp_path / 'cache'}}}\n")
    over = [f"train.out={tmp_path / 'run'}", "data.num_proc=1"]
    with pytest.raises(UserError, match=r"p\.jsonl:2: rejected: content holds '<\|im_end\|>'.*data.skip_invalid"):
        prepare_pairs(load_config(dpo.DPOConfig, cfg_file, over), demo_tok)
    got = prepare_pairs(load_config(dpo.DPOConfig, cfg_file, [*over, "data.skip_invalid=true"]), demo_tok)
    assert (got.read, len(got.train) // 2, got.rejected) == (4, 3, 1)
    rejects = (tmp_path / "run" / "rejects.jsonl").read_text(encoding="utf-8")
    assert "p.jsonl:2" in rejects and "a special token" in rejects


def test_cut_response_drops_a_pair_whose_replies_differ_only_past_max_len(demo_tok, tmp_path):
    """Cut to max_len, replies that differ only at their end become the same tokens: a tie whose DPO/RM loss is ln 2
    with no gradient (Adam turned the float noise, grad norm ~1e-7, into lr-sized steps, and the run exited 0). Such a
    pair is dropped and counted with the pairs over max_len; one that still differs after the cut is kept."""
    same = "Rain falls softly, leaves whisper. " * 8
    tie = PreferencePair(prompt=[{"role": "user", "content": "rain?"}], chosen=same + "Yes.", rejected=same + "No!",
                         source="t.jsonl:1", form="string")  # fmt: skip
    kept = PreferencePair(prompt=[{"role": "user", "content": "rain?"}], chosen="Yes." + same, rejected="No!" + same,
                          source="t.jsonl:2", form="string")  # fmt: skip
    template = resolve_template(demo_tok)
    whole = encode_pair(tie, demo_tok, template, 10**6)
    assert whole is not None and whole[0].input_ids != whole[1].input_ids  # they differ, past max_len 48
    assert len(whole[0]) > 48 and whole[0].input_ids[:48] == whole[1].input_ids[:48]
    assert encode_pair(tie, demo_tok, template, 48, "cut_response") is None
    c, r = encode_pair(kept, demo_tok, template, 48, "cut_response")
    assert c.truncated == r.truncated == "cut" and c.input_ids != r.input_ids
    seqs, stats = enc([tie, kept], demo_tok, tmp_path, max_len=48)
    assert (stats.pairs, stats.kept, stats.dropped_too_long, stats.cut) == (2, 1, 1, 1)
    assert stats.dropped_sources == ["t.jsonl:1"] and [s.source for s in seqs] == ["t.jsonl:2"] * 2


def test_a_pair_whose_replies_render_to_the_same_tokens_is_refused(demo_tok, tmp_path):
    """Replies that differ only in what the chat template drops (Llama-3's and many templates `trim` content) pass the
    text check (chosen == rejected is refused when read) but are the same tokens: a tie that trained nothing at
    ln 2 in every mean. Refused with the row's file:line; the reply that differs in a token trains."""
    tok = load_tokenizer(str(DEMO / "model"))
    tok.chat_template = tok.chat_template.replace("message['content']", "message['content'] | trim")
    assert "| trim" in tok.chat_template
    prompt = [{"role": "user", "content": "rain?"}]
    tie = PreferencePair(prompt=prompt, chosen="Rain falls.", rejected="Rain falls.\n", source="t.jsonl:1", form="chat")
    ok = PreferencePair(prompt=prompt, chosen="Rain falls.", rejected="Rain falls!", source="t.jsonl:2", form="chat")
    template = resolve_template(tok)
    assert encode_pair(ok, tok, template, 256) is not None
    with pytest.raises(UserError, match=r"t\.jsonl:1: rejected: renders to the same tokens as chosen"):
        encode_pair(tie, tok, template, 256)
    with pytest.raises(UserError, match=r"t\.jsonl:1: rejected: renders to the same tokens as chosen"):
        enc([ok, tie], tok, tmp_path, max_len=256)
    assert encode_pair(tie, demo_tok, resolve_template(demo_tok), 256) is not None  # its template keeps the newline
