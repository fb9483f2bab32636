"""Golden-set report on a real tiny SFT run: answers per checkpoint, curves, recommendation, callback rows."""

from __future__ import annotations

import json

import pytest
from conftest import torchrun_driver, write_jsonl

from weitiao.eval.golden import (
    GOLDEN_FILE,
    answered,
    curve,
    evaluate_golden,
    golden_callback,
    golden_report,
    golden_rows,
    load_prompts,
    pick,
    prompts_key,
    read_golden,
)
from weitiao.eval.metrics import rouge_l

GOLDEN = [
    {"instruction": "今天天气怎么样？", "output": "挺好的，大晴天☀️"},
    {"instruction": "推荐一部电影吧", "output": "《流浪地球》不错哦👍"},
    {"messages": [{"role": "user", "content": "你会做饭吗？"}, {"role": "assistant", "content": "会一点哈哈"},
                  {"role": "user", "content": "怎么做番茄炒蛋？"}]},
]  # fmt: skip


def test_load_prompts_formats(tmp_path):
    p = write_jsonl(tmp_path / "g.jsonl", GOLDEN + [{"prompt": "你好", "reference": "你好呀"}])
    ps = load_prompts(p)
    assert [x.reference for x in ps] == ["挺好的，大晴天☀️", "《流浪地球》不错哦👍", None, "你好呀"]
    assert ps[2].messages[-1] == {"role": "user", "content": "怎么做番茄炒蛋？"} and ps[2].history[0] == "你会做饭吗？"
    from weitiao.errors import UserError

    with pytest.raises(UserError, match="g2.jsonl:2"):
        load_prompts(write_jsonl(tmp_path / "g2.jsonl", [{"prompt": "x"}, {"foo": 1}]))


def test_curve_keeps_last_value_per_step():
    log = [{"kind": "train", "step": 2, "loss": 5.0}, {"kind": "train", "step": 1, "loss": 9.0},
           {"kind": "eval", "step": 2, "eval_loss": 4.0}, {"kind": "train", "step": 2, "loss": 3.0}]  # fmt: skip
    assert curve(log, "train", "loss") == [(1, 9.0), (2, 3.0)]


def test_pick_direction_and_ties():
    summary = {2: {"rougeL": 0.5, "eval_loss": 3.0}, 4: {"rougeL": 0.7, "eval_loss": 2.0}, 6: {"rougeL": 0.7}}
    assert pick(summary, "rougeL") == 4  # tie between 4 and 6 -> earlier
    assert pick(summary, "eval_loss") == 4
    assert pick(summary, "judge") is None


def test_a_tie_at_the_best_value_is_said(tmp_path):
    """Every checkpoint at rougeL 0 printed "recommended by rougeL: step-000002" and starred it, as if ROUGE-L had
    chosen it; a tie is now a note naming the tied checkpoints."""
    from weitiao.infer.generate import Generation

    prompts = load_prompts(write_jsonl(tmp_path / "g.jsonl", GOLDEN))
    rows = []
    for step, text in ((2, "嗯"), (4, "呃"), (6, "咦")):  # no character shared with any reference: rougeL 0
        rows += golden_rows(step, f"step-{step:06d}", prompts, [Generation(text, 1, True)] * len(prompts))
    res = evaluate_golden(rows, prompts, [], "rougeL")
    assert res.recommended == 2 and [res.summary[s]["rougeL"] for s in res.steps] == [0, 0, 0]
    assert res.notes[-1] == ("all 3 checkpoints tie at rougeL 0 (step-000002, step-000004, step-000006): rougeL does "
                             "not choose among them; the earliest is named")  # fmt: skip
    res = evaluate_golden(rows, prompts, [], "stop_rate")  # all stopped: tie
    assert res.notes[-1].startswith("all 3 checkpoints tie at stop_rate 1 ")
    best = GOLDEN[0]["output"]
    rows += golden_rows(8, "step-000008", prompts, [Generation(best, 4, True)] * len(prompts))  # control
    res = evaluate_golden(rows, prompts, [], "rougeL")
    assert res.recommended == 8 and not any("tie at" in n for n in res.notes)


def test_empty_replies_are_said_beside_stop_rate(tmp_path):
    """A checkpoint that answered nothing at all (it ends its turn at once) read stop_rate 1, the best, and
    `--select stop_rate` recommended it without a word; a note now names the checkpoints with empty replies."""
    from weitiao.infer.generate import Generation

    prompts = load_prompts(write_jsonl(tmp_path / "g.jsonl", GOLDEN))
    rows = golden_rows(2, "step-000002", prompts, [Generation("", 0, True)] * len(prompts))
    rows += golden_rows(4, "step-000004", prompts, [Generation("好的", 2, True)] * len(prompts))  # control
    res = evaluate_golden(rows, prompts, [], "stop_rate")
    assert res.summary[2]["stop_rate"] == 1 and res.recommended == 2
    n = len(prompts)
    assert f"empty replies (step-000002 {n} of {n}): they count as stopped in stop_rate" in res.notes
    res = evaluate_golden(rows[n:], prompts, [], "stop_rate")
    assert not any(note.startswith("empty replies") for note in res.notes)


def test_empty_replies_of_broken_bytes_are_not_said_to_be_stops(tmp_path):
    """An undertrained checkpoint that wrote 48 broken UTF-8 bytes per reply (decoded to "", never ended its turn)
    got the note 'they count as stopped in stop_rate' while its stop_rate was 0; now the note says what they are."""
    from weitiao.eval.golden import empty_note
    from weitiao.infer.generate import Generation

    prompts = load_prompts(write_jsonl(tmp_path / "g.jsonl", GOLDEN))
    n = len(prompts)
    rows = golden_rows(2, "step-000002", prompts, [Generation("", 48, False)] * n)
    res = evaluate_golden(rows, prompts, [], "stop_rate")
    assert res.summary[2]["stop_rate"] == 0
    assert (
        f"empty replies (step-000002 {n} of {n}): {n} are tokens that make no whole character (broken UTF-8 bytes are "
        f"dropped); 0 ended their turn and count as stopped in stop_rate, {n} ran to max_new_tokens"
    ) in res.notes
    rows = [{"reply": "", "stopped": True, "n_tokens": 3}, {"reply": "", "stopped": True, "n_tokens": 0}]
    assert "1 are tokens that make no whole character" in empty_note({"m": rows})


def test_saved_answers_count_only_for_the_settings_they_were_made_with(tmp_path):
    from weitiao.infer.generate import Generation

    prompts = load_prompts(write_jsonl(tmp_path / "g.jsonl", GOLDEN))
    g16 = {"max_new_tokens": 16, "temperature": 0.0, "template": "0123456789ab"}
    g128 = {**g16, "max_new_tokens": 128}

    def saved(step: int, ends: list[tuple[int, bool]], gen: dict | None = None) -> list[dict]:
        return golden_rows(step, f"step-{step:06d}", prompts, [Generation("好" * n, n, s) for n, s in ends], gen)

    rows = saved(4, [(128, False)] * 3, g128)  # written by training with 128 new tokens
    # rows saved without their settings: their lengths prove the budget, or do not
    rows += saved(2, [(5, True), (15, True), (16, False)])  # stopped within 16, or cut at exactly 16
    rows += saved(6, [(5, True), (128, False), (3, True)])  # cut at 128
    rows += saved(8, [(5, True), (20, False), (3, True)])  # cut at 20: matches neither
    assert "gen" not in rows[3] and rows[0]["gen"] == g128
    assert sorted(answered(rows, prompts, g16)) == [2]
    assert sorted(answered(rows, prompts, g128)) == [4, 6]
    assert sorted(answered(rows, prompts, {**g128, "template": "ba9876543210"})) == [6]
    res = evaluate_golden(rows, prompts, [], "rougeL", gen=g16)
    assert res.steps == [2] and all(r["n_tokens"] <= 16 for r in res.replies[2])
    assert res.notes == [
        "1 of 3 prompts have no reference: ROUGE-L/BLEU/exact match over the others",
        "left out step-000004, step-000006, step-000008: no saved answer to every prompt with these generation "
        "settings, and no weights to answer again with",
    ]


@pytest.mark.slow
def test_golden_report_on_tiny_sft_run(tiny_model_dir, tokenizer, chat_file, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from weitiao.config import load_config
    from weitiao.data.templates import resolve_template
    from weitiao.infer.chat import load_chat_model
    from weitiao.infer.generate import generate
    from weitiao.recipes import sft
    from weitiao.train.log import read_metrics

    run = tmp_path / "run"
    over = [f"model.path={tiny_model_dir}", f"data.train=[{chat_file}]", "data.eval_split=0.2", f"train.out={run}",
            "train.progress=false", "train.tensorboard=false", "train.micro_batch_size=2", "data.max_len=128",
            "train.lr=5e-3", "train.warmup_ratio=0", "train.max_steps=8", "train.eval_every=2",
            "train.save_every=2", "train.keep_last=3"]  # fmt: skip
    sft.run(load_config(sft.SFTConfig, None, over))
    golden = write_jsonl(tmp_path / "golden.jsonl", GOLDEN)
    prompts = load_prompts(golden)

    # the training hook: at step 2 (whose checkpoint keep-last-3 deletes) it answers with the model in hand
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    template = resolve_template(tokenizer)
    hook = golden_callback(
        golden, 2, model=base, tokenizer=tokenizer, template=template, run_dir=run, max_new_tokens=16
    )
    hook(2, {})
    hook(3, {})  # not a multiple of 2: nothing written
    assert len((run / GOLDEN_FILE).read_text().splitlines()) == 3

    path, res = golden_report(run, golden, select="rougeL", max_new_tokens=16)
    ckpts = sorted(int(p.name.split("-")[1]) for p in (run / "checkpoints").glob("step-*"))
    assert 2 not in ckpts and ckpts[-1] == 8
    assert res.steps == sorted({2, *ckpts})  # final (= step 8) not repeated

    # answers at step 4 and 8 equal a direct greedy generation with that checkpoint's adapter
    rows = [json.loads(x) for x in (run / GOLDEN_FILE).read_text().splitlines()]
    key = prompts_key(prompts)
    by = {(r["step"], r["index"]): r["reply"] for r in rows if r["prompts"] == key}
    convs = [p.messages for p in prompts]
    m4 = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir), run / "checkpoints" / f"step-{ckpts[0]:06d}" / "adapter"
    )
    assert [by[(ckpts[0], i)] for i in range(3)] == [
        g.text for g in generate(m4.eval(), tokenizer, template, convs, 16)
    ]
    final, tok = load_chat_model(str(tiny_model_dir), str(run / "final"))
    assert [by[(8, i)] for i in range(3)] == [g.text for g in generate(final, tok, resolve_template(tok), convs, 16)]
    assert [by[(2, i)] for i in range(3)] == [g.text for g in generate(base, tokenizer, template, convs, 16)]
    assert [by[(8, i)] for i in range(3)] != [by[(2, i)] for i in range(3)]  # training changed the answers

    # recommendation: best mean ROUGE-L over the two prompts with references; lowest eval loss from metrics.jsonl
    mean_rouge = {s: sum(rouge_l(by[(s, i)], prompts[i].reference) for i in (0, 1)) / 2 for s in res.steps}
    best = max(mean_rouge.values())
    assert res.recommended == min(s for s in res.steps if mean_rouge[s] == best)
    evals = {m["step"]: m["eval_loss"] for m in read_metrics(run, "eval")}
    assert res.lowest_eval == min((evals[s], s) for s in res.steps)[1]

    page = path.read_text(encoding="utf-8")
    assert page.startswith("<!doctype html>") and "<svg" in page and "<polyline" in page
    assert "Recommended by rougeL" in page and "Lowest eval loss" in page and "怎么做番茄炒蛋？" in page
    assert all(f"step-{s:06d}" in page for s in res.steps) and "src=" not in page  # self-contained

    # a second report reuses golden.jsonl: no new rows
    golden_report(run, golden, select="loop_rate", max_new_tokens=16)
    assert len((run / GOLDEN_FILE).read_text().splitlines()) == len(rows)
    # weights newer than their answers (a fresh run in the same dir): only that checkpoint is answered again
    import os
    import time

    f = run / "checkpoints" / f"step-{ckpts[0]:06d}" / "adapter" / "adapter_model.safetensors"
    os.utime(f, (time.time() + 1000, time.time() + 1000))
    golden_report(run, golden, max_new_tokens=16)
    new = [json.loads(x) for x in (run / GOLDEN_FILE).read_text().splitlines()][len(rows) :]
    assert [(r["step"], r["index"]) for r in new] == [(ckpts[0], i) for i in range(3)]

    # other settings: every checkpoint with weights answers again (before: the 16-token answers were reused); the
    # hook's step-2 answers stay in the file but are left out, with a note, as its weights are gone
    os.utime(f, (time.time(), time.time()))  # the weights no longer newer than their answers
    before = [json.loads(x) for x in (run / GOLDEN_FILE).read_text().splitlines()]
    path, res4 = golden_report(run, golden, max_new_tokens=4)
    new = [json.loads(x) for x in (run / GOLDEN_FILE).read_text().splitlines()][len(before) :]
    assert sorted({r["step"] for r in new}) == ckpts and all(r["gen"]["max_new_tokens"] == 4 for r in new)
    assert res4.steps == ckpts and all(r["n_tokens"] <= 4 for s in ckpts for r in res4.replies[s])
    assert any(n.startswith("left out step-000002:") for n in res4.notes) and "left out step-000002" in path.read_text()
    # back to 16 tokens: the 16-token answers were kept, nothing is generated
    n_rows = len((run / GOLDEN_FILE).read_text().splitlines())
    _, res16 = golden_report(run, golden, max_new_tokens=16)
    assert res16.steps == res.steps and len((run / GOLDEN_FILE).read_text().splitlines()) == n_rows


def test_golden_report_out_never_replaces_the_prompts_or_a_users_file(tiny_model_dir, chat_file, tmp_path):
    """--out was written without a check after every checkpoint answered: `--out golden.jsonl` replaced the prompts
    with the HTML report, and a user's file was overwritten; now both are refused before any generation."""
    from weitiao.config import load_config
    from weitiao.errors import UserError
    from weitiao.recipes import sft

    run = tmp_path / "run"
    over = [f"model.path={tiny_model_dir}", f"data.train=[{chat_file}]", f"train.out={run}", "train.progress=false",
            "train.tensorboard=false", "train.micro_batch_size=2", "data.max_len=64", "train.max_steps=1"]  # fmt: skip
    sft.run(load_config(sft.SFTConfig, None, over))
    golden = write_jsonl(tmp_path / "golden.jsonl", GOLDEN)
    before = golden.read_bytes()
    with pytest.raises(UserError, match="is also an input"):
        golden_report(run, golden, max_new_tokens=2, out=tmp_path / "." / "golden.jsonl")
    theirs = tmp_path / "notes.html"
    theirs.write_text("我的笔记", encoding="utf-8")
    with pytest.raises(UserError, match="exists and was not written by weitiao"):
        golden_report(run, golden, max_new_tokens=2, out=theirs)
    assert golden.read_bytes() == before and theirs.read_text(encoding="utf-8") == "我的笔记"
    assert not (run / GOLDEN_FILE).exists()  # refused before any generation
    path, _ = golden_report(run, golden, max_new_tokens=2, out=tmp_path / "report.html")  # negative control
    assert path.read_text(encoding="utf-8").startswith("<!doctype html>")


def test_golden_report_with_nothing_to_report_exits_with_why(tokenizer, tiny_model_dir, tmp_path):
    """A run without weights whose golden.jsonl holds answers to other prompts (or made with other settings) wrote a
    report of 0 checkpoints and exited 0; now one UserError says why, and no page is written."""
    from weitiao.errors import UserError
    from weitiao.infer.generate import Generation

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(f"model:\n  path: {tiny_model_dir}\n", encoding="utf-8")
    (run / "metrics.jsonl").write_text("", encoding="utf-8")
    other = load_prompts(write_jsonl(tmp_path / "other.jsonl", [{"prompt": "别的问题"}]))
    gen = {"max_new_tokens": 16, "temperature": 0.0, "template": "0123456789ab"}
    write_jsonl(run / GOLDEN_FILE, golden_rows(4, "step-000004", other, [Generation("好", 1, True)], gen))
    golden = write_jsonl(tmp_path / "golden.jsonl", GOLDEN)
    with pytest.raises(UserError, match=f"no checkpoint to report: {GOLDEN_FILE} holds no answers to the prompts of"):
        golden_report(run, golden, max_new_tokens=16)
    with pytest.raises(UserError, match="no checkpoint to report: left out step-000004: no saved answer"):
        golden_report(run, tmp_path / "other.jsonl", "stop_rate", 8)  # its answers were made with other settings
    assert not (run / "golden_report.html").exists()


def test_a_users_checkpoint_copy_is_not_read_as_a_step(tmp_path):
    """checkpoints/step-final (a user's copy) crashed eval golden with int('final'): a traceback."""
    from weitiao.eval.golden import read_run

    run = tmp_path / "run"
    for name in ("step-000002", "step-final", "step-000004-best"):
        (run / "checkpoints" / name / "adapter").mkdir(parents=True)
    (run / "config.yaml").write_text("model: {path: demo}\n", encoding="utf-8")
    _, ckpts, _ = read_run(run)
    assert [(c.label, c.step) for c in ckpts] == [("step-000002", 2)]


@pytest.mark.slow
def test_golden_answers_on_two_processes_longer_than_the_process_group_timeout(tiny_model_dir, chat_file, tmp_path):
    """train.golden on 2 processes: process 0 answered every prompt while process 1 waited at the next step's
    collective, so answers that took longer than the process group's timeout (NCCL: 10 minutes) killed process 1.
    Here the timeout is 15 s and each answering takes 25 s: every process answers its share and waits only for
    the others' share. The rows equal a one-process run's (same steps, prompts in order)."""
    from weitiao.config import load_config
    from weitiao.recipes import sft

    golden = write_jsonl(tmp_path / "golden.jsonl", [*GOLDEN, {"prompt": "你好", "reference": "你好呀"}])
    over = [f"model.path={tiny_model_dir}", f"data.train=[{chat_file}]", f"train.golden={golden}", "data.max_len=64"]
    over += ["train.progress=false", "train.tensorboard=false", "train.micro_batch_size=2", "train.max_steps=2"]
    over += ["train.save_every=1"]
    driver = tmp_path / "slow_golden.py"
    driver.write_text(
        "import datetime, sys, time\nimport accelerate\nfrom accelerate.utils import InitProcessGroupKwargs\n"
        "from weitiao.eval import golden\n\n"
        "make, answer = accelerate.Accelerator, golden.answer\n"
        "short = InitProcessGroupKwargs(timeout=datetime.timedelta(seconds=15))\n"
        "accelerate.Accelerator = lambda **kw: make(kwargs_handlers=[short], **kw)\n"
        "golden.answer = lambda *a, **kw: time.sleep(25) or answer(*a, **kw)\n"
        "from weitiao.cli import main\nsys.argv[0] = 'weitiao'\nmain()\n"
    )
    (tmp_path / "empty.yaml").write_text("{}\n")
    torchrun_driver(driver, "sft", str(tmp_path / "empty.yaml"), *over, f"train.out={tmp_path / 'two'}")
    sft.run(load_config(sft.SFTConfig, None, [*over, "train.grad_accum=2", f"train.out={tmp_path / 'one'}"]))

    def rows(run: str) -> list[tuple]:
        lines = (tmp_path / run / GOLDEN_FILE).read_text(encoding="utf-8").splitlines()
        return [(r["step"], r["index"], r["reply"], r["n_tokens"]) for r in map(json.loads, lines)]

    assert rows("two") == rows("one") and len(rows("one")) == 2 * 4


def _bare_run(tmp_path, model_dir):
    """A run folder with no checkpoints yet, the GOLDEN file, its prompts and the run's decoding settings."""
    from weitiao.eval.golden import _load_chat, decoding, read_run

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(f"model:\n  path: {model_dir}\n", encoding="utf-8")
    (run / "metrics.jsonl").write_text("", encoding="utf-8")
    golden = write_jsonl(tmp_path / "golden.jsonl", GOLDEN)
    prompts = load_prompts(golden)
    return run, golden, prompts, decoding(*_load_chat(read_run(run)[0], run), prompts, 16)


def test_golden_report_with_a_judge_that_scored_nothing_writes_no_page(tokenizer, tiny_model_dir, tmp_path):
    """`--select judge` with a judge that could not be reached wrote a page recommending no checkpoint and exited 0
    ("recommended by judge: none"); now one UserError says the judge scored nothing, and no page is written."""
    from weitiao.errors import UserError
    from weitiao.infer.generate import Generation
    from weitiao.teacher import Teacher

    run, golden, prompts, gen = _bare_run(tmp_path, tiny_model_dir)
    saved = [Generation("好" * (i + 1), i + 1, True) for i in range(len(prompts))]
    write_jsonl(run / GOLDEN_FILE, golden_rows(4, "step-000004", prompts, saved, gen))
    judge = Teacher("http://127.0.0.1:9/v1", "j", retries=0, role="judge", flag="--judge-url")
    path, res = golden_report(run, golden, "rougeL", max_new_tokens=16)  # the answers alone make a report
    assert res.steps == [4] and path.is_file()
    path.unlink()
    for select in ("judge", "rougeL"):
        with pytest.raises(UserError, match=r"^--judge-url http://127.0.0.1:9/v1: the judge answered none of the "):
            golden_report(run, golden, select, max_new_tokens=16, judge=judge)
        assert not path.exists()


def test_golden_report_says_which_answers_the_judge_left_unscored(tokenizer, tiny_model_dir, tmp_path):
    """A judge that gave no score for some answers left each checkpoint's judge a mean over the others: step 2, whose
    two poor answers went unscored, was recommended by judge over step 4 and the console said nothing (the page gave
    a count, with the errors named 'reply 1', an index over all checkpoints). Now a note, printed and on the page,
    counts them per checkpoint and names the first by checkpoint and prompt file:line."""
    from fastapi import FastAPI
    from loopback import running

    from weitiao.infer.generate import Generation
    from weitiao.teacher import Teacher

    app = FastAPI()

    @app.post("/v1/chat/completions")
    def chat(body: dict) -> dict:  # no JSON for an answer with 坏 in it, else 1 + count('好')
        reply = body["messages"][-1]["content"].split("助手的回答：\n", 1)[1].split("\n\n参考答案", 1)[0]
        content = "这个没法打分" if "坏" in reply else f'{{"score": {min(10, 1 + reply.count("好"))}}}'
        message = {"role": "assistant", "content": content}
        return {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}  # fmt: skip

    run, golden, prompts, gen = _bare_run(tmp_path, tiny_model_dir)
    answers = {2: ["好好好好", "坏", "坏坏"], 4: ["好好", "好好", "好"]}
    rows = [r for s, a in answers.items() for r in golden_rows(s, f"step-{s:06d}", prompts,
                                                                 [Generation(x, 1, True) for x in a], gen)]  # fmt: skip
    write_jsonl(run / GOLDEN_FILE, rows)
    with running(app) as base:
        judge = Teacher(base + "/v1", "j", retries=0, role="judge", flag="--judge-url")
        path, res = golden_report(run, golden, "judge", max_new_tokens=16, judge=judge)
    assert res.recommended == 2  # over its one scored answer
    note = (f"the judge gave no score for 2 of 6 answers (step-000002 2); a checkpoint's judge is the mean over its "
            f"scored answers (first: step-000002 {golden}:2: no JSON in reply")  # fmt: skip
    assert any(n.startswith(note) for n in res.notes), res.notes
    assert res.judge_errors[1].startswith(f"step-000002 {golden}:3: ")
    import html

    assert html.escape(note) in path.read_text(encoding="utf-8")


def test_a_select_metric_no_checkpoint_can_have_is_refused(tokenizer, tiny_model_dir, tmp_path):
    """`--select rougeL` (the default) on prompts without references answered with every checkpoint, then printed
    "recommended by rougeL: none" and exited 0 with a page; now refused before answering (rougeL, bleu, exact_match
    without references, copy_rate without earlier turns, eval_loss without an eval) or, when no checkpoint has the
    value after answering, with no page."""
    from weitiao.errors import UserError
    from weitiao.infer.generate import Generation

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(f"model:\n  path: {tiny_model_dir}\n", encoding="utf-8")
    (run / "metrics.jsonl").write_text("", encoding="utf-8")
    noref = write_jsonl(tmp_path / "noref.jsonl", [{"prompt": "你好"}, {"prompt": "在吗"}])
    ps = load_prompts(noref)
    write_jsonl(run / GOLDEN_FILE, golden_rows(4, "step-000004", ps, [Generation("好", 1, True)] * 2))
    for select in ("rougeL", "bleu", "exact_match"):
        with pytest.raises(UserError, match=f"--select {select}: no prompt in .*noref.jsonl has a reference answer"):
            golden_report(run, noref, select, max_new_tokens=16)
    with pytest.raises(UserError, match="--select copy_rate: no prompt in .* has earlier turns"):
        golden_report(run, noref, "copy_rate", max_new_tokens=16)
    with pytest.raises(UserError, match="--select eval_loss: .*metrics.jsonl holds no eval loss"):
        golden_report(run, noref, "eval_loss", max_new_tokens=16)
    (run / "metrics.jsonl").write_text(json.dumps({"kind": "eval", "step": 3, "eval_loss": 2.0}) + "\n")
    with pytest.raises(UserError, match="--select eval_loss: none of the 1 checkpoints has a value for eval_loss"):
        golden_report(run, noref, "eval_loss", max_new_tokens=16)  # evaluated at step 3, answered at step 4
    assert not (run / "golden_report.html").exists()
    path, res = golden_report(run, noref, "stop_rate", max_new_tokens=16)  # a metric every answer has
    assert res.recommended == 4 and "Recommended by stop_rate:</b> step-000004" in path.read_text(encoding="utf-8")
    path, res = golden_report(run, noref, None, max_new_tokens=16)  # the console without references: none asked
    assert res.recommended is None and "Recommended:</b> none asked" in path.read_text(encoding="utf-8")


def test_a_prompt_past_the_context_is_refused_before_answering(tiny_model_dir, tokenizer, tmp_path):
    """`eval golden`, the training-time golden answers, `curve --golden` and the arena answered a prompt longer than
    the model's context (an 817-token prompt on a 512-position model): replies decoded at positions the model never
    had, scored and recommended from; `eval gen` alone refused it. Now each refuses it naming file:line."""
    from transformers import AutoModelForCausalLM

    from weitiao.data.templates import resolve_template
    from weitiao.errors import UserError
    from weitiao.eval.arena.store import answer_rows
    from weitiao.eval.golden import answer

    model, template = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval(), resolve_template(tokenizer)
    long = write_jsonl(tmp_path / "long.jsonl", [{"prompt": "你好"}, {"prompt": "今天天气怎么样？" * 300}])
    ps = load_prompts(long)
    past = r"long\.jsonl:2: prompt is [\d,]+ tokens; with 16 new tokens it exceeds the model's context of 512; "
    with pytest.raises(UserError, match=past + "shorten the prompt or lower --max-new-tokens$"):
        answer(model, tokenizer, template, ps, 16)
    with pytest.raises(UserError, match=past + "shorten the prompt or lower --max-new-tokens$"):
        answer_rows("a", model, tokenizer, ps, 16)
    with pytest.raises(UserError, match=past + "shorten the prompt or drop it from train.golden$"):
        golden_callback(long, 1, model=model, tokenizer=tokenizer, template=template, run_dir=tmp_path,
                        max_new_tokens=16)  # fmt: skip
    assert len(answer(model, tokenizer, template, ps[:1], 4)) == 1  # control: the short prompt is answered


def test_repeated_prompts_are_named_not_counted_twice_unsaid():
    """A prompt file holding one conversation twice weighed it twice in every average, without a word."""
    from weitiao.data.prompts import Prompt
    from weitiao.eval.golden import duplicate_note

    def p(text, line, history=()):
        return Prompt([*history, {"role": "user", "content": text}], None, f"g.jsonl:{line}")

    turn = [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好呀"}]
    prompts = [p("你好", 1), p("在吗", 2), p("你好", 3), p("你好", 4, turn), p("在吗", 5)]
    assert duplicate_note(prompts) == (
        "2 prompts repeat an earlier one (g.jsonl:3 = g.jsonl:1), each counted again in the averages"
    )
    assert duplicate_note(prompts[:2] + prompts[3:4]) is None  # same last turn, other history: not a repeat
    assert duplicate_note(prompts[:3]).startswith("1 prompt repeats an earlier one (g.jsonl:3 = g.jsonl:1)")


@pytest.mark.slow
def test_a_qlora_report_answers_as_training_did(tiny_model_dir, chat_file, tmp_path, monkeypatch):
    """On a 4-bit base the report's fresh load, in eval mode, repacked for bitsandbytes' CPU bf16 kernel (CPUs with
    AVX512-BF16) while the train.golden hook answered through the training kernel: 7 of 12 answers of a tiny QLoRA
    run were the same, and one report compared checkpoints answered in two ways. The flag is forced on here, so
    the check does not depend on the CPU; answers regenerated by the report equal those saved during training."""
    import shutil

    import bitsandbytes.nn.modules as bnb_modules

    from weitiao.config import load_config
    from weitiao.eval import golden as g
    from weitiao.recipes import sft

    prompts = write_jsonl(tmp_path / "golden.jsonl", GOLDEN)
    run = tmp_path / "run"
    over = [f"model.path={tiny_model_dir}", "model.quant=4bit", f"data.train=[{chat_file}]", f"train.out={run}",
            "train.progress=false", "train.tensorboard=false", "train.micro_batch_size=2", "data.max_len=128",
            "train.lr=5e-3", "train.max_steps=2", "train.save_every=1", f"train.golden={prompts}"]  # fmt: skip
    sft.run(load_config(sft.SFTConfig, None, over))
    base = g._load_base({"model": {"path": str(tiny_model_dir), "quant": "4bit"}})
    flags = [m.support_avx512bf16_for_cpu for m in base.modules() if hasattr(m, "support_avx512bf16_for_cpu")]
    assert flags and not any(flags)  # even where bitsandbytes would pick the bf16 kernel:
    monkeypatch.setattr(bnb_modules, "has_avx512bf16", lambda: True)
    base = g._load_base({"model": {"path": str(tiny_model_dir), "quant": "4bit"}})
    assert not any(m.support_avx512bf16_for_cpu for m in base.modules() if hasattr(m, "support_avx512bf16_for_cpu"))
    monkeypatch.undo()
    saved = [json.loads(x) for x in (run / GOLDEN_FILE).read_text().splitlines()]
    again = tmp_path / "again"
    shutil.copytree(run, again)
    (again / GOLDEN_FILE).unlink()
    golden_report(again, prompts, select="stop_rate")
    fresh = [json.loads(x) for x in (again / GOLDEN_FILE).read_text().splitlines()]
    assert {(r["step"], r["index"]): r["reply"] for r in fresh} == {(r["step"], r["index"]): r["reply"] for r in saved}


def test_golden_prompts_in_the_runs_answers_file_are_refused(tokenizer, tiny_model_dir, tmp_path):
    """My golden prompts saved as RUN/golden.jsonl (the file answers are appended to) ended in a KeyError traceback
    ('prompts') whether passed as --prompts or kept elsewhere; now one line each, and the file is left as it was."""
    from weitiao.errors import UserError
    from weitiao.infer.generate import Generation

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(f"model:\n  path: {tiny_model_dir}\n", encoding="utf-8")
    (run / "metrics.jsonl").write_text("", encoding="utf-8")
    mine = write_jsonl(run / GOLDEN_FILE, GOLDEN)
    before = mine.read_bytes()
    with pytest.raises(UserError, match=r"^--prompts .*golden\.jsonl: is the run's answers file"):
        golden_report(run, mine, "stop_rate", 8)
    golden = write_jsonl(tmp_path / "golden.jsonl", GOLDEN)
    with pytest.raises(UserError, match=r"^.*run/golden\.jsonl:1: not a golden answer row \(no step\)"):
        golden_report(run, golden, "stop_rate", 8)
    assert mine.read_bytes() == before
    # control: the answers weitiao writes there are read
    prompts = load_prompts(golden)
    gen = {"max_new_tokens": 8, "temperature": 0.0, "template": "0123456789ab"}
    write_jsonl(run / GOLDEN_FILE, golden_rows(4, "step-000004", prompts, [Generation("好", 1, True)] * 3, gen))
    assert len(read_golden(run / GOLDEN_FILE)) == 3
