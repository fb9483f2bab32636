"""Values generation cannot use stop with one line naming the flag, before any model loads or file is written:
`eval gen`, `eval golden`, `chat`; `export --check FILE` is read before the export; provenance names an empty
baseline text's file and line, and shows sampled replies on whole characters."""

from __future__ import annotations

import json
import math
import shutil
import sys

import pytest
from conftest import write_jsonl

import weitiao.cli
from weitiao.errors import UserError
from weitiao.eval.gen import GenSettings


def cli(capsys, monkeypatch, *args) -> tuple[int, list[str]]:
    """Run `weitiao ARGS` in-process as the console script does; (exit code, non-empty stderr lines)."""
    monkeypatch.setattr(sys, "argv", ["weitiao", *map(str, args)])
    try:
        weitiao.cli.main()
        rc = 0
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else 1
    cli.out, err = capsys.readouterr()
    return rc, [x for x in err.splitlines() if x.strip() and not x.startswith("Loading weights")]


def refuse_to_start(monkeypatch, target: str, attr: str) -> None:
    """Reaching `target.attr` (generation, a chat) is the bug: fail instead of running (or hanging)."""

    def reached(*a, **k):
        raise AssertionError(f"{attr} was called with values it cannot use")

    monkeypatch.setattr(f"{target}.{attr}", reached)


BAD_DECODING = [
    ({"batch_size": 0}, "--batch-size 0: must be >= 1"),
    ({"batch_size": -2}, "--batch-size -2: must be >= 1"),
    ({"max_new_tokens": 0}, "--max-new-tokens 0: must be >= 1"),
    ({"max_new_tokens": -5}, "--max-new-tokens -5: must be >= 1"),
    ({"temperature": -0.5}, "--temperature -0.5: must be >= 0"),
    ({"temperature": math.nan}, "--temperature nan: must be >= 0"),
    ({"top_p": 0.0}, "--top-p 0.0: must be in (0, 1]"),
    ({"top_p": -0.1}, "--top-p -0.1: must be in (0, 1]"),
    ({"top_p": 1.5}, "--top-p 1.5: must be in (0, 1]"),
    ({"repetition_penalty": -1.0}, "--repetition-penalty -1.0: must be > 0"),
]


@pytest.mark.parametrize("kw, msg", BAD_DECODING, ids=[m.split(":")[0] for _, m in BAD_DECODING])
def test_gen_settings_refuse_values_generation_cannot_use(kw, msg):
    """Before: batch_size 0 hung forever (no row admitted), max_new_tokens 0 gave all-zero metrics, a negative
    temperature or a top-p outside (0, 1] sampled from a garbled distribution."""
    with pytest.raises(UserError) as e:
        GenSettings(**kw)
    assert str(e.value).startswith(msg)


def test_gen_settings_accept_the_edges():
    GenSettings(max_new_tokens=1, temperature=0.0, top_p=1.0, batch_size=1, repetition_penalty=0.01)
    GenSettings(temperature=2.5, top_p=1e-6)


@pytest.mark.parametrize(
    "flags, msg",
    [
        (["--batch-size", "0"], "--batch-size 0: must be >= 1"),
        (["--max-new-tokens", "0"], "--max-new-tokens 0: must be >= 1"),
        (["--temperature", "-1"], "--temperature -1.0: must be >= 0"),
        (["--top-p", "1.2"], "--top-p 1.2: must be in (0, 1]"),
    ],
)
def test_eval_gen_cli_refuses_before_generating(flags, msg, tmp_path, monkeypatch, capsys):
    refuse_to_start(monkeypatch, "weitiao.eval.gen", "run")
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "你好"}])
    out = tmp_path / "eval.json"
    rc, lines = cli(capsys, monkeypatch, "eval", "gen", "--model", "demo", "--prompts", prompts, "--out", out, *flags)
    assert rc == 1 and len(lines) == 1 and lines[0].startswith(f"error: {msg}"), (rc, lines)
    assert not out.exists()


@pytest.mark.parametrize(
    "refs, msg",
    [
        ([{"prompt": "你好", "reference": "你好呀"}, {"prompt": "在吗"}], "r.jsonl:2: no reference"),
        ([{"prompt": "在吗", "reference": "在的"}, {"prompt": "你好", "reference": "你好呀"}],
         "r.jsonl:1: asks '在吗', but {p}:1 asks '你好'; --refs rows must align with --prompts rows"),
    ],
    ids=["no-reference", "shifted"],
)  # fmt: skip
def test_eval_gen_refs_rows_must_align_and_give_a_reference(refs, msg, tmp_path, monkeypatch, capsys):
    """--refs took each row's reference whatever it asked: a row without one erased the prompt file's own reference,
    and a shifted file scored every reply against another prompt's answer, without a word."""
    refuse_to_start(monkeypatch, "weitiao.eval.gen", "run")
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "你好"}, {"prompt": "在吗", "reference": "在的"}])
    r = write_jsonl(tmp_path / "r.jsonl", refs)
    rc, lines = cli(capsys, monkeypatch, "eval", "gen", "--model", "demo", "--prompts", prompts, "--refs", r)
    assert rc == 1 and len(lines) == 1 and lines[0].startswith(f"error: {r.parent / msg.format(p=prompts)}"), lines
    from weitiao.eval.gen import read_prompts

    aligned = write_jsonl(tmp_path / "ok.jsonl", [{"instruction": "你好", "output": "你好呀"},
                                                  {"prompt": "在吗", "reference": "在呢"}])  # fmt: skip
    assert [p.reference for p in read_prompts(prompts, aligned)] == ["你好呀", "在呢"]


def test_eval_gen_score_scale_is_checked_before_a_model_loads(tmp_path, monkeypatch, capsys):
    """--score-scale: a malformed one, one beside the built-in 1-10 rubric, or one a rubric contradicts is one line;
    a rubric naming no range needs --score-scale (it was read as 1-10 with a note), and is sent with a note saying
    which scale its scores are read on."""
    seen = {}

    def run(*a, **k):
        seen["scale"] = k["scale"]
        raise AssertionError("stop before generating")

    monkeypatch.setattr("weitiao.eval.gen.run", run)
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "你好"}])
    args = ["eval", "gen", "--model", "demo", "--prompts", prompts, "--judge-url", "http://127.0.0.1:9/v1"]
    rubric = tmp_path / "r.txt"
    rubric.write_text('按 0-100 打分，只输出 {"score": n}', encoding="utf-8")
    for extra, msg in [
        (["--score-scale", "10"], "--score-scale '10': give the judge's lowest and highest score as LO-HI"),
        (["--score-scale", "1-5"], "--score-scale 1-5: the built-in rubric asks for 1-10; add --rubric FILE that"),
        (["--rubric", rubric], f"--rubric {rubric}: asks for scores 0-100, but they are read as 1-10; add --score-"),
    ]:
        rc, lines = cli(capsys, monkeypatch, *args, *extra)
        assert rc == 1 and len(lines) == 1 and lines[0].startswith(f"error: {msg}"), lines
    rubric.write_text('评分：5 分完美，3 分一般，1 分很差。只输出 {"score": n}', encoding="utf-8")
    rc, lines = cli(capsys, monkeypatch, *args, "--rubric", rubric)  # a 1-5 Likert list: its 5 was read as 0.44
    assert rc == 1 and lines == [f"error: --rubric {rubric}: names no score range (such as '1-5'); add --score-scale "
                                 "LO-HI, the lowest and highest score it asks for (1-10 is assumed only for the "
                                 "built-in rubric)"], lines  # fmt: skip
    rubric.write_text('给回答打分，只输出 {"score": n}', encoding="utf-8")
    with pytest.raises(AssertionError, match="stop before generating"):
        cli(capsys, monkeypatch, *args, "--rubric", rubric, "--score-scale", "0-5")
    assert seen["scale"] == (0, 5)
    out = " ".join(capsys.readouterr().out.split())
    assert f"note: --rubric {rubric} names no score range; the judge's scores are read as 0-5" in out


@pytest.mark.parametrize("flag", ["--rubric", "--judge-model", "--cache-dir"])
def test_eval_gen_judge_options_without_a_judge_are_refused(flag, tmp_path, monkeypatch, capsys):
    """--rubric, --judge-model, --cache-dir without --judge-url were silently ignored (no judge, no judge column)."""
    refuse_to_start(monkeypatch, "weitiao.eval.gen", "run")
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "你好"}])
    rubric = tmp_path / "rubric.txt"
    rubric.write_text('按1-10打分，回复JSON {"score": n}', encoding="utf-8")
    value = rubric if flag == "--rubric" else "x"
    rc, lines = cli(capsys, monkeypatch, "eval", "gen", "--model", "demo", "--prompts", prompts, flag, value)
    assert rc == 1 and lines == [f"error: {flag}: applies to the judge; add --judge-url URL or drop it"], lines


def test_eval_gen_rubric_with_a_bom_reaches_the_judge_without_it(tmp_path, monkeypatch, capsys):
    """A rubric saved by a Windows editor was sent to the judge with its BOM (U+FEFF) in front."""
    seen = {}

    def run(*a, **k):
        seen["rubric"] = a[-1]
        raise AssertionError("stop before generating")

    monkeypatch.setattr("weitiao.eval.gen.run", run)
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "你好"}])
    rubric = tmp_path / "rubric.txt"
    rubric.write_bytes('\ufeff按1-10打分，回复JSON {"score": n}'.encode())
    with pytest.raises(AssertionError, match="stop before generating"):
        cli(capsys, monkeypatch, "eval", "gen", "--model", "demo", "--prompts", prompts, "--rubric", rubric,
            "--judge-url", "http://127.0.0.1:9/v1")  # fmt: skip
    assert seen["rubric"] == '按1-10打分，回复JSON {"score": n}'


@pytest.mark.parametrize(
    "flags, msg",
    [
        (["--max-new-tokens", "0"], "--max-new-tokens 0: must be >= 1"),
        (["--max-new-tokens", "-3"], "--max-new-tokens -3: must be >= 1"),
        (["--temperature", "-0.7"], "--temperature -0.7: must be >= 0"),
        (["--top-p", "0"], "--top-p 0.0: must be in (0, 1]"),
        (["--top-p", "2"], "--top-p 2.0: must be in (0, 1]"),
        (["--repetition-penalty", "0"], "--repetition-penalty 0.0: must be > 0"),
        (["--seed", str(2**64)], f"--seed {2**64}: give a whole number from -2**63 to 2**64 - 1"),
    ],
)
def test_chat_refuses_before_loading(flags, msg, monkeypatch, capsys):
    """Before: `chat --temperature -0.7` or `--top-p 2` loaded the model and sampled anyway."""
    refuse_to_start(monkeypatch, "weitiao.infer.chat", "run")
    rc, lines = cli(capsys, monkeypatch, "chat", "--model", "demo", "--prompt", "你好", *flags)
    assert rc == 1 and len(lines) == 1 and lines[0].startswith(f"error: {msg}"), (rc, lines)


def test_chat_defaults_pass_the_check(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr("weitiao.infer.chat.run", lambda *a, **k: calls.append(a))
    rc, lines = cli(capsys, monkeypatch, "chat", "--model", "demo", "--prompt", "你好")
    assert rc == 0 and lines == [] and calls[0][4:8] == (256, None, None, None)  # None: the model folder's


def test_chat_samples_as_the_model_folder_says(tmp_path, tiny_model_dir, capsys, monkeypatch):
    """Unset --temperature/--top-p take the folder's generation_config.json (as serve and vLLM); they were 0.7/0.9
    whatever the folder said, so a model shipped with temperature 1e-5 (greedy in effect) sampled freely in `chat`."""
    import torch
    from transformers import GenerationConfig

    model = tmp_path / "m"
    shutil.copytree(tiny_model_dir, model)
    GenerationConfig(do_sample=True, temperature=1e-5, top_p=1.0, top_k=0).save_pretrained(model)

    def replies(*flags):
        out = set()
        for seed in range(3):
            torch.manual_seed(seed)
            rc, lines = cli(capsys, monkeypatch, "chat", "--model", model, "--prompt", "你好", "--max-new-tokens", 12,
                            *flags)  # fmt: skip
            assert rc == 0, lines
            out.add(cli.out)
        return out

    assert len(folder := replies()) == 1  # temperature 1e-5 draws the argmax token: one reply whatever the seed
    assert replies("--temperature", "0") == folder  # that reply is the greedy one
    assert len(replies("--temperature", "1")) > 1  # control: the flag still wins over the folder


@pytest.fixture
def golden_run(tmp_path, tiny_model_dir):
    """A run dir with one full-weights checkpoint and a golden prompt file."""
    run = tmp_path / "run"
    shutil.copytree(tiny_model_dir, run / "checkpoints" / "step-000002" / "model")
    (run / "config.yaml").write_text(f"model:\n  path: {tiny_model_dir}\n", encoding="utf-8")
    golden = write_jsonl(tmp_path / "golden.jsonl", [{"prompt": "今天天气怎么样？", "reference": "挺好的"}])
    return run, golden


def test_eval_golden_refuses_zero_new_tokens(golden_run, monkeypatch, capsys):
    """Before: all-zero metrics, empty answers appended to RUN/golden.jsonl, a checkpoint recommended, exit 0."""
    run, golden = golden_run
    for n in ("0", "-1"):
        rc, lines = cli(capsys, monkeypatch, "eval", "golden", "--run", run, "--prompts", golden, "--max-new-tokens", n)
        assert rc == 1 and lines == [f"error: --max-new-tokens {n}: must be >= 1"], (rc, lines)
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "config.yaml"]  # nothing written
    # the same run answers with a budget of 2 (so the refusal above is the check, not a broken run)
    rc, lines = cli(capsys, monkeypatch, "eval", "golden", "--run", run, "--prompts", golden, "--max-new-tokens", "2")
    assert rc == 0, lines
    rows = [json.loads(x) for x in (run / "golden.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 1 and 1 <= rows[0]["n_tokens"] <= 2


@pytest.mark.parametrize("command", ["golden", "gen"])
@pytest.mark.parametrize(
    "pattern, msg",
    [("(抱歉", "--refusal-pattern '(抱歉': not a regular expression (missing ), unterminated subpattern at position"),
     ("", "--refusal-pattern '': empty; it would count every reply as a refusal")],
    ids=["unbalanced", "empty"],
)  # fmt: skip
def test_a_bad_refusal_pattern_is_one_line_before_any_model(command, pattern, msg, golden_run, monkeypatch, capsys):
    """`eval gen` answered every prompt, then died on re.error with a traceback; `eval golden` had no such flag."""
    run, golden = golden_run
    refuse_to_start(monkeypatch, "weitiao.eval.gen", "run")
    refuse_to_start(monkeypatch, "weitiao.eval.golden", "golden_report")
    where = ["--run", run] if command == "golden" else ["--model", "demo"]
    rc, lines = cli(capsys, monkeypatch, "eval", command, *where, "--prompts", golden, "--refusal-pattern", pattern)
    assert rc == 1 and len(lines) == 1 and lines[0].startswith(f"error: {msg}"), (rc, lines)
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "config.yaml"]  # nothing written


def test_eval_golden_counts_refusals_by_the_given_pattern(golden_run, monkeypatch, capsys):
    """`eval golden --refusal-pattern` reaches the golden metrics (as `eval gen`'s does): '.' makes every reply one."""
    import weitiao.eval.golden as golden_mod

    run, golden = golden_run
    seen = []
    real = golden_mod.evaluate_golden
    monkeypatch.setattr(golden_mod, "evaluate_golden", lambda *a, **k: seen.append(real(*a, **k)) or seen[-1])
    rates = []
    for flags in ([], ["--refusal-pattern", "."], ["--refusal-pattern", "绝不会出现的词"]):
        rc, lines = cli(capsys, monkeypatch, "eval", "golden", "--run", run, "--prompts", golden,
                        "--max-new-tokens", "2", *flags)  # fmt: skip
        assert rc == 0, lines
        rates.append([m["refusal_rate"] for m in seen[-1].summary.values()])
    assert rates[1] == [1.0] and rates[2] == [0.0], rates


# ---------------------------------------------------------------------------------------------- export --check


@pytest.fixture(scope="module")
def adapter(adapter_run):
    return adapter_run


@pytest.mark.parametrize(
    "name, data, expect",
    [
        ("empty.jsonl", "", "--check {f}: no rows"),
        ("blank.jsonl", "\n\n", "--check {f}: no rows"),
        ("missing.jsonl", None, "--check {f}: file not found"),
        ("notjson.jsonl", "not json\n", "--check {f}:1: json: not valid JSON"),
        ("text.jsonl", '{"text": "abc"}\n', "--check {f}:1: a raw-text row"),
    ],
)
def test_export_check_file_is_read_before_the_export(name, data, expect, adapter, tmp_path, monkeypatch, capsys):
    """Before: an empty FILE passed ({'rows': 0}, exit 0); a missing or bad FILE failed only after the export
    was written (a rerun then needed --force), and the non-JSON error suggested --skip-invalid, which export
    does not have."""
    f = tmp_path / name
    if data is not None:
        f.write_text(data, encoding="utf-8")
    out = tmp_path / "export"
    rc, lines = cli(capsys, monkeypatch, "export", "--adapter", adapter, "--out", out, "--check", f)
    assert rc == 1 and len(lines) == 1 and lines[0].startswith("error: " + expect.format(f=f)), (rc, lines)
    assert "--skip-invalid" not in lines[0]
    assert not out.exists()


def test_export_check_passes_on_chat_rows(adapter, chat_file, tmp_path, monkeypatch, capsys):
    out = tmp_path / "export"
    rc, lines = cli(capsys, monkeypatch, "export", "--adapter", adapter, "--out", out, "--check", chat_file)
    assert rc == 0, lines
    assert (out / "adapter_config.json").is_file() and "'identical': 24" in cli.out


def test_export_dtype_without_merge_is_refused(adapter, tmp_path, monkeypatch, capsys):
    """--dtype bf16 on an adapter export was silently ignored (the adapter's fp32 weights were copied as saved)."""
    out = tmp_path / "export"
    rc, lines = cli(capsys, monkeypatch, "export", "--adapter", adapter, "--out", out, "--dtype", "bf16")
    assert rc == 1 and lines == [
        "error: --dtype bf16: only with --merge (or --for); an adapter export keeps the adapter's weights"
    ]
    assert not out.exists()
    rc, lines = cli(capsys, monkeypatch, "export", "--adapter", adapter, "--out", out)  # negative control
    assert rc == 0 and (out / "adapter_config.json").is_file(), lines


# ---------------------------------------------------------------------------------------------- provenance


@pytest.mark.parametrize(
    "name, data, where",
    [
        ("b.jsonl", '{"text": "在家躺着"}\n{"text": ""}\n', "b.jsonl:2"),
        ("c.jsonl", '{"text": "在家躺着"}\n\n{"text": "在家"}\n{"text": ""}\n', "c.jsonl:4"),
        ("d.txt", "\n", "d.txt"),
    ],
)
def test_provenance_names_an_empty_baseline_text(name, data, where, tmp_path, monkeypatch, capsys):
    """Before: "the text is empty; pass --text or --text-file", blaming the --text that was fine."""
    base = tmp_path / name
    base.write_text(data, encoding="utf-8")
    refuse_to_start(monkeypatch, "weitiao.infer.chat", "load_chat_model")
    args = ["provenance", "--model", "demo", "--prompt", "周末？", "--text", "在家", "--baseline-text", base]
    rc, lines = cli(capsys, monkeypatch, *args)
    assert rc == 1 and len(lines) == 1, (rc, lines)
    assert lines[0].startswith(f"error: {tmp_path / where}: the baseline text is empty")
    assert "--text-file" not in lines[0]


def test_provenance_files_with_a_bom_are_read_without_it(tmp_path, monkeypatch, capsys):
    """--prompt-file, --text-file and a plain --baseline-text saved with a BOM (Windows Notepad) were checked with
    U+FEFF as the first character: another prompt, and a text the model never wrote."""
    from weitiao.eval import provenance_cli

    seen = {}

    def check(m, tok, tpl, messages, text, cfg, bases, texts, **kw):
        seen.update(prompt=messages[-1]["content"], text=text, texts=texts)
        raise AssertionError("stop before checking")

    monkeypatch.setattr("weitiao.infer.chat.load_chat_model", lambda *a: (None, None))
    monkeypatch.setattr(provenance_cli, "resolve_template", lambda *a: None)
    monkeypatch.setattr("weitiao.eval.provenance_report.check", check)
    files = {}
    for name, body in (("p.txt", "周末去哪儿？\r\n"), ("t.txt", "在家看书。\r\n第二行"), ("b.txt", "出去玩")):
        files[name] = tmp_path / name
        files[name].write_bytes(("\ufeff" + body).encode())
    with pytest.raises(AssertionError, match="stop before checking"):
        cli(capsys, monkeypatch, "provenance", "--model", "demo", "--prompt-file", files["p.txt"], "--text-file",
            files["t.txt"], "--baseline-text", files["b.txt"])  # fmt: skip
    assert seen == {"prompt": "周末去哪儿？", "text": "在家看书。\n第二行", "texts": ["出去玩"]}


def test_provenance_samples_are_shown_on_whole_characters(tokenizer, tiny_model_dir, monkeypatch):
    """Before: a sampled reply cut inside a character printed `�` in the examples (and the greedy reply)."""
    from transformers import AutoModelForCausalLM

    from weitiao.data.templates import resolve_template
    from weitiao.eval import provenance_report
    from weitiao.eval.provenance import Sampling
    from weitiao.eval.provenance_report import CheckConfig, check

    ids = tokenizer("挺好的", add_special_tokens=False)["input_ids"]
    half = next(i for i in range(len(tokenizer)) if "\ufffd" in tokenizer.decode([i]))  # a lone UTF-8 byte
    assert "\ufffd" in tokenizer.decode(ids + [half])  # what the report showed before
    monkeypatch.setattr(provenance_report, "sample", lambda model, ctx, k, *a, **kw: [ids + [half]] * k)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    cfg = CheckConfig(sampling=Sampling(0.7, 0.9), samples=3, prompt_dependence=False)
    rep = check(model, tokenizer, resolve_template(tokenizer), [{"role": "user", "content": "好吗"}], "挺好的", cfg)
    assert rep["samples"]["examples"] == ["挺好的"] * 3
    assert rep["greedy"]["text"] == "挺好的" and rep["greedy"]["rouge_l"] == 1.0


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--max-new-tokens", "0"), ("--pair-votes", "-1"), ("--vote-interval", "-2"), ("--new-voters-per-hour", "-5")],
)
def test_arena_serve_refuses_values_out_of_range(capsys, monkeypatch, tmp_path, flag, value):
    """Before: --max-new-tokens 0 generated empty answers to vote on; a negative limit read as a limit."""
    refuse_to_start(monkeypatch, "weitiao.eval.arena.store", "pregenerate")
    args = ["arena", "serve", "--db", tmp_path / "a.sqlite", "--models", "a=demo", "--prompts", tmp_path / "p.jsonl"]
    rc, lines = cli(capsys, monkeypatch, *args, flag, value)
    assert rc == 2 and any(flag in x for x in lines), lines
    assert not (tmp_path / "a.sqlite").exists()


def test_eval_gen_with_a_judge_that_scored_nothing_exits_non_zero(tiny_model_dir, tmp_path, monkeypatch, capsys):
    """A judge that could not be reached scored none of the replies, and eval gen exited 0 with a table and a JSON
    without the judge, its hint naming --teacher-url, a flag eval gen does not have. Now: exit 1, one line naming
    --judge-url; the replies are still written."""
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "你好"}, {"prompt": "周末有什么安排？"}])
    out = tmp_path / "eval.json"
    rc, lines = cli(capsys, monkeypatch, "eval", "gen", "--model", tiny_model_dir, "--prompts", prompts,
                    "--max-new-tokens", "4", "--judge-url", "http://127.0.0.1:9/v1", "--out", out)  # fmt: skip
    errors = [x for x in lines if x.startswith("error:")]
    assert rc == 1 and len(errors) == 1, lines
    assert errors[0].startswith("error: --judge-url http://127.0.0.1:9/v1: the judge answered none of the 2 replies ")
    assert "judge http://127.0.0.1:9/v1 (model 'judge'): cannot connect" in errors[0]
    assert "set --judge-url" in errors[0] and "--teacher-url" not in errors[0]
    assert errors[0].endswith(f"; the replies are in {out}")
    rep = json.loads(out.read_text(encoding="utf-8"))
    assert len(rep["rows"]) == 2 and len(rep["judge_errors"]) == 2 and "judge" not in rep["metrics"]


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_a_model_folder_without_tokenizer_files_is_one_line(arch, tokenizer, tmp_path, monkeypatch, capsys):
    """A model folder without tokenizer files (a full fine-tune's RUN/final/model, weights copied alone) loaded, under
    transformers 5, as an empty Qwen2 tokenizer: every text became no ids, `eval gen` died in a reshape traceback and
    `serve` answered every request "no tokens"; a Llama one was a ValueError traceback. Now one line names the
    folder, before the model loads."""
    from conftest import save_tiny_model

    from weitiao.models.load import load_tokenizer

    full = save_tiny_model(tmp_path / arch, tokenizer, arch=arch)
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in ("config.json", "model.safetensors"):
        shutil.copy(full / f, bare / f)
    capsys.readouterr()  # save_pretrained's progress bar
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "你好"}])
    rc, lines = cli(capsys, monkeypatch, "eval", "gen", "--model", bare, "--prompts", prompts, "--max-new-tokens", "4")
    assert rc == 1 and lines == [
        f"error: model {bare}: no tokenizer files (tokenizer.json, tokenizer_config.json, tokenizer.model, ...); "
        "copy the tokenizer the model was trained with into it"
    ], lines
    assert len(load_tokenizer(str(full))) == len(tokenizer)  # a folder with them loads as before
