"""`weitiao demo`: plan by model size, the base → SFT → SFT+DPO pipeline on a user's model folder (a tiny
random Qwen2 here, not the shipped Llama), its report and golden HTML, and `--serve` answering a request."""

from __future__ import annotations

import json
import re
import socket
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import save_tiny_model

from weitiao.demo import DATA_DIR, MODEL_DIR
from weitiao.recipes import demo
from weitiao.recipes.demo_commands import RichView


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory, tokenizer) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("user") / "qwen2", tokenizer, arch="qwen2", hidden=64)


def test_plan_by_size_and_expected_time():
    tiny, half_b, big = demo.plan(4_200_000, 110), demo.plan(494_000_000, 110), demo.plan(7_000_000_000, 110)
    assert (tiny.micro_batch, tiny.sft_steps) == (8, 400) and (half_b.micro_batch, half_b.sft_steps) == (4, 60)
    assert big.micro_batch == 2 and big.max_len < half_b.max_len
    assert tiny.seconds < half_b.seconds < big.seconds  # more parameters, longer expected run
    capped = demo.plan(4_200_000, 110, max_steps=3)
    assert (capped.sft_steps, capped.dpo_steps) == (3, 3) and capped.seconds < tiny.seconds


class _Stop(Exception):
    pass


def _plan_and_configs(monkeypatch, qwen_dir, tmp_path, *overrides, **kw):
    """demo.run up to DPO's start (the base is not measured, nothing trains): (plan line, SFT config, DPO config)."""
    got, lines = {}, []

    class View(demo.PlainView):
        def step(self, text):
            lines.append(text)

    monkeypatch.setattr("weitiao.models.load.load_model", lambda *a, **k: None)  # demo.run imports them as it runs
    monkeypatch.setattr(demo, "_measure", lambda *a, **k: {})
    monkeypatch.setattr("weitiao.recipes.sft.run", lambda cfg: got.setdefault("sft", cfg))
    monkeypatch.setattr(
        "weitiao.recipes.dpo.run", lambda cfg: (got.setdefault("dpo", cfg), (_ for _ in ()).throw(_Stop()))
    )
    with pytest.raises(_Stop):
        demo.run(str(qwen_dir), str(tmp_path / "run"), overrides=list(overrides), view=View(), **kw)
    return lines[0], got["sft"], got["dpo"]


def test_plan_shown_is_what_runs_with_overrides(monkeypatch, qwen_dir, tmp_path):
    """SFT overrides of data.max_len / train.micro_batch_size ran while the plan line (and demo_report.json's
    plan) still said micro-batch 8, max_len 128; DPO kept 8 × 128 unsaid. Keys the demo sets itself
    (model.*, train.out, train.max_steps) were taken by SFT alone: the base and DPO ran another model/length."""
    line, s, d = _plan_and_configs(monkeypatch, qwen_dir, tmp_path, "data.max_len=64", "train.micro_batch_size=2",
                                   "train.lr=1e-3", max_steps=2, limit=1)  # fmt: skip
    assert "SFT 2 steps + DPO 2 steps, micro-batch 2, max_len 64" in line, line
    assert "set by you: data.max_len, train.micro_batch_size, train.lr" in line
    assert (s.data.max_len, s.train.micro_batch_size, s.train.lr, s.train.max_steps) == (64, 2, 1e-3, 2)
    assert (d.data.max_len, d.train.micro_batch_size, d.train.max_steps) == (64, 2, 2)
    # Negative control: without overrides the plan's own sizes run and no "set by you" is shown.
    line, s, d = _plan_and_configs(monkeypatch, qwen_dir, tmp_path, max_steps=2, limit=1)
    assert "micro-batch 8, max_len 128" in line and "set by you" not in line
    assert (s.data.max_len, s.train.micro_batch_size, d.data.max_len) == (128, 8, 128)
    # the shipped sft.yaml's epochs (for `weitiao sft`) is not the demo's length: no "drop one of them" note in the
    # newcomer's first minute; a train.epochs the user gives keeps it
    assert "epochs" not in s.train.model_fields_set
    assert (
        "epochs"
        in _plan_and_configs(monkeypatch, qwen_dir, tmp_path, "train.epochs=2", limit=1)[1].train.model_fields_set
    )


@pytest.mark.parametrize(
    ("kw", "overrides", "message"),
    [
        ({"limit": 0}, [], "--limit 0: must be at least 1"),  # trained for minutes, then ZeroDivisionError
        ({"limit": -1}, [], "--limit -1: must be at least 1"),  # measured all prompts but the last of each set
        ({"max_steps": 0}, [], "--max-steps 0: must be at least 1"),  # ran the full 400 steps
        ({}, ["model.quant=none"], "override model.quant=none: the demo sets model.quant itself; use --model"),
        ({}, ["model.path=/x"], "the demo sets model.path itself; use --model DIR"),
        ({}, ["train.max_steps=5"], "the demo sets train.max_steps itself; use --max-steps N"),
        ({}, ["train.out=/tmp/x"], "the demo sets train.out itself; use --out DIR"),
        (
            {},
            ["lora.rr=8"],
            "command line lora.rr=8: lora.rr: Extra inputs are not permitted; lora takes enabled, r,",
        ),  # said before the plan loads the tokenizer
        ({"serve": True, "port": 99999}, [], "--port 99999: give a TCP port"),  # was said after the whole demo
    ],
)
def test_demo_refuses_what_it_would_ignore_or_misread(monkeypatch, tmp_path, kw, overrides, message):
    monkeypatch.setattr("weitiao.models.load.load_model", lambda *a, **k: None)  # not refused: no minutes of work
    monkeypatch.setattr(demo, "_measure", lambda *a, **k: {})
    monkeypatch.setattr("weitiao.recipes.sft.run", lambda cfg: (_ for _ in ()).throw(_Stop()))
    with pytest.raises(demo.UserError) as e:
        demo.run(str(MODEL_DIR), str(tmp_path / "run"), overrides=overrides, view=demo.PlainView(), **kw)
    assert str(e.value).startswith(message) or message in str(e.value), str(e.value)
    assert not (tmp_path / "run").exists()  # refused before any work (SFT's config is read after it: no folder)


def test_speed_probe_runs_on_one_thread(monkeypatch):
    """The expected time's matmul probe runs on one thread (a 2-thread probe on a busy 2-core box read ~1/100 of
    the speed: 571 min announced for a 5-minute demo) and leaves torch's thread count as it was."""
    import torch

    seen = []
    randn = torch.randn
    monkeypatch.setattr(torch, "randn", lambda *a, **k: seen.append(torch.get_num_threads()) or randn(*a, **k))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert demo._flops_per_second() > 0
        assert seen == [1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_heldout_prompts_never_trained_on():
    """The demo's evaluation prompts appear in no training file of SFT, DPO or pre-training."""

    def prompts(name: str) -> set[str]:
        out = set()
        for line in (DATA_DIR / name).read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            out.add(row.get("instruction") or row.get("prompt") or row["messages"][0]["content"])
        return out

    trained = set().union(*(prompts(f) for f in (*demo.SFT_DATA, "dpo_pairs.jsonl", "pretrain.jsonl")))
    held = set().union(*(prompts(f) for f in demo.ORDINARY + demo.REDLINE))
    assert len(held) == 40 + 24 + 30 + 16 and not held & trained

    def bare(text: str) -> str:  # an opener or punctuation added to a held-out prompt is still that prompt
        return re.sub(r"[\s？！，。、?!,.]", "", text)

    def inside(held: set[str], trained: set[str]) -> list[str]:  # short greetings (哈喽, 在吗) aside
        ts = {bare(t) for t in trained}
        return [h for h in map(bare, held) if any(h in t or (len(t) >= 6 and t in h) for t in ts)]

    assert not inside(held, trained)
    some = sorted(held)[0]
    assert inside(held, trained | {"哥们，" + some + "😂"})  # negative control: an opener does not hide it


def test_sft_mix_does_not_teach_that_a_request_is_a_refusal():
    """The over-refusal cause: with style + safety alone, 75% of the SFT rows phrased as a request (怎么, 教我,
    帮我, 哪里…) were refusals, so the tiny model refused ordinary questions (0.58 over-refusal after SFT)."""
    from weitiao.eval.style import is_refusal

    request = re.compile("怎么|教我|帮我|哪里|咋|如何")

    def request_refusal_share(files: tuple[str, ...]) -> float:
        rows = [json.loads(x) for f in files for x in (DATA_DIR / f).read_text(encoding="utf-8").splitlines()]
        pairs = [(r["messages"][0]["content"], r["messages"][-1]["content"]) if "messages" in r
                 else (r["instruction"], r["output"]) for r in rows]  # fmt: skip
        replies = [reply for prompt, reply in pairs if request.search(prompt)]
        return sum(map(is_refusal, replies)) / len(replies)

    assert request_refusal_share(("style.jsonl", "safety.jsonl")) > 0.7  # negative control: the old mix
    # 0.48 now: safety_more.jsonl's red-line requests outnumber the old mix's, and helpful.jsonl's how-to requests
    # (3 phrasings each) balance them; the held-out over-refusal after SFT is 0.17 (0.39 with the old mix)
    assert request_refusal_share(demo.SFT_DATA) < 0.5


@pytest.fixture(scope="module")
def served(qwen_dir, tmp_path_factory):
    """`weitiao demo --model DIR --serve` run once, in-process: uvicorn serves from a thread instead of blocking."""
    import threading

    import uvicorn
    from rich.console import Console

    servers = []

    def run_in_thread(app, host, port, **kw):
        server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
        threading.Thread(target=server.run, daemon=True).start()
        servers.append(server)

    out, port = tmp_path_factory.mktemp("demo") / "run", _free_port()
    console = Console(record=True, width=200)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(uvicorn, "run", run_in_thread)
        rep = demo.run(str(qwen_dir), str(out), serve=True, port=port, max_steps=2, limit=3, view=RichView(console))
    yield rep, out, port, console.export_text()
    for server in servers:
        server.should_exit = True


@pytest.mark.slow
def test_demo_on_user_model(served, tmp_path):
    """`weitiao demo --model DIR` on a Qwen2 folder: all five steps, three stages measured, report + golden HTML."""
    rep, out, _, text = served
    assert re.search(r"qwen2 · 0\.\d+M parameters · SFT 2 steps \+ DPO 2 steps.*expected ≈ [\d.]+ min", text), text
    for line in ("1/5", "2/5", "3/5", "4/5", "5/5", "over_refusal", "redline_refusal", "sample replies"):
        assert line in text
    assert set(rep["numbers"]) == {"base", "sft", "sft+dpo"}
    assert rep["dpo"]["steps"] == 2 and rep["sft"]["steps"] == 2
    saved = json.loads((out / "demo_report.json").read_text(encoding="utf-8"))
    assert saved["numbers"] == rep["numbers"] and len(saved["replies"]["sft+dpo"]["redline"]["replies"]) == 3
    page = (out / "golden_report.html").read_text(encoding="utf-8")
    assert all(re.search(rf"<th class='(best)?'>{re.escape(s)}</th>", page) for s in ("base", "sft", "sft+dpo"))
    # the DPO run continued the SFT adapter: its reference was the SFT model
    assert str(out / "sft" / "final" / "adapter") in (out / "dpo" / "config.yaml").read_text(encoding="utf-8")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_demo_serve_prints_lines_and_answers(served):
    """`weitiao demo --serve`: prints the curl and openai lines, then the server answers one chat request."""
    _, _, port, text = served
    assert f"curl http://127.0.0.1:{port}/v1/chat/completions" in text, text
    assert f"OpenAI(base_url='http://127.0.0.1:{port}/v1'" in text, text
    body = json.dumps({"model": "run", "messages": [{"role": "user", "content": "你好"}], "max_tokens": 4})
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/chat/completions", body.encode(), {"Content-Type": "application/json"}
    )
    deadline = time.time() + 60
    while True:
        try:
            reply = json.loads(urllib.request.urlopen(req, timeout=30).read())
            break
        except OSError:
            assert time.time() < deadline, "server did not come up"
            time.sleep(0.2)
    assert reply["object"] == "chat.completion" and reply["model"] == "run"
    assert reply["choices"][0]["message"]["role"] == "assistant"


@pytest.mark.slow
def test_reduced_demo_pinned(tmp_path):
    """The shipped model through a reduced demo (3 SFT + 3 DPO steps, 4 prompts per set): frozen numbers."""
    from rich.console import Console

    rep = demo.run(None, str(tmp_path / "run"), max_steps=3, limit=4, view=RichView(Console(record=True, width=200)))
    got = {"sft_loss": rep["sft"]["train_loss"], "dpo_loss": rep["dpo"]["train_loss"]}
    got |= {f"{stage}/{k}": v for stage in ("base", "sft+dpo") for k, v in rep["numbers"][stage].items()}
    lengths = {k for k in PINNED if k.endswith("mean_len")}
    assert {k: v for k, v in got.items() if k not in lengths} == pytest.approx(
        {k: v for k, v in PINNED.items() if k not in lengths}, rel=1e-3
    )
    # greedy decoding is knife-edge: CPUs with other SIMD (AVX-512 vs AMX) flip one token of one reply
    # (seen: 68.0 vs 68.25 for the untrained base), so a length may move by 2 tokens over the 4 prompts
    assert {k: got[k] for k in lengths} == pytest.approx({k: PINNED[k] for k in lengths}, abs=0.5)


# Measured on the 2-core CPU box (torch 2.13, bitsandbytes NF4 on CPU); greedy replies, so the rates are exact.
# Re-pinned when the demo model became the 6-layer base with chat-app logs (weitiao/demo/README.md), the SFT mix
# gained style_more.jsonl and safety_more.jsonl, and the tiny plan went to 400 SFT steps at lr 2e-3, DPO lr 2e-4,
# RPO α 3.0 (3 steps here: the losses move, the greedy replies do not yet). dpo_loss is the objective trained on:
# the DPO term (~0.698) + α × the chosen replies' per-token NLL (~8.77), both means over the 3 steps. The losses are
# the summary's train_loss, the mean over the run's steps since it stopped meaning the last step's (7.4867, 27.4778).
# Re-pinned when the shipped weights became float16 on disk (loaded as float32): 7.8327 → 7.8306, 27.0063 → 27.0034
# (Intel Xeon with AMX, 2 cores shared with other jobs); the rates and lengths did not move.
PINNED = {
    "sft_loss": 7.8306, "dpo_loss": 27.0034,
    "base/mean_len": 68.0, "base/emoji_rate": 0.0, "base/stop_rate": 0.0, "base/redline_refusal": 0.0,
    "base/over_refusal": 0.0,
    "sft+dpo/mean_len": 70.5, "sft+dpo/emoji_rate": 0.0, "sft+dpo/stop_rate": 0.0,
    "sft+dpo/redline_refusal": 0.0, "sft+dpo/over_refusal": 0.0,
}  # fmt: skip


def test_shipped_model_is_stored_fp16_and_loads_fp32(tmp_path):
    """The demo weights are stored as float16 (the fp32 file was 23 MB, over the repo's 20 MB per file) and every
    user computes in float32 on CPU all the same: weitiao's loader and plain transformers 5, whose default dtype
    "auto" takes config.json's dtype (float32) before the file's."""
    import shutil

    import torch
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    from weitiao.models.load import ModelSpec, load_model

    weights = MODEL_DIR / "model.safetensors"
    with safe_open(str(weights), framework="pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}
        stored = {k: f.get_tensor(k) for k in f.keys()}
    assert weights.stat().st_size < 20e6
    ours, plain = load_model(ModelSpec(path="demo")), AutoModelForCausalLM.from_pretrained(MODEL_DIR)
    for model in (ours, plain):
        assert {p.dtype for p in model.parameters()} == {torch.float32}
        got = model.state_dict()
        assert all(torch.equal(got[k], t.float()) for k, t in stored.items())  # the fp16 values, exactly
    # Negative control: with config.json's dtype float16, transformers' default takes the file's fp16, weitiao's
    # loader (fp32 on CPU unless model.dtype says otherwise) does not
    copy = Path(shutil.copytree(MODEL_DIR, tmp_path / "m"))
    config = json.loads((copy / "config.json").read_text(encoding="utf-8"))
    (copy / "config.json").write_text(json.dumps({**config, "dtype": "float16"}), encoding="utf-8")
    assert next(AutoModelForCausalLM.from_pretrained(copy).parameters()).dtype == torch.float16
    assert {p.dtype for p in load_model(ModelSpec(path=str(copy))).parameters()} == {torch.float32}


def test_model_build_refuses_an_out_folder_it_did_not_write(tmp_path, monkeypatch):
    """scripts/build_demo_model.py replaces DEMO_OUT on every save: a folder with other files is refused."""
    import importlib.util

    script = Path(__file__).resolve().parents[1] / "scripts" / "build_demo_model.py"
    spec = importlib.util.spec_from_file_location("build_demo_model", script)
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    monkeypatch.setattr(build, "MODEL_DIR", tmp_path / "out")
    build.check_out_dir()  # absent: fine
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "config.json").write_text("{}")
    build.check_out_dir()  # a previous build's files: fine
    (tmp_path / "out" / "build.log").write_text("mine")
    with pytest.raises(SystemExit, match="build.log"):
        build.check_out_dir()


@pytest.mark.slow
def test_base_corpus_shows_every_token_the_sft_replies_use():
    """The base's pre-training must show every token `weitiao demo`'s SFT replies use: an unseen token's tied row only
    ever learned "not this token", QLoRA freezes it, and the tuned model could not say 抱歉 or 麻烦 ("被查到麻哦").
    The coverage documents (build_demo_corpus.cover) do it: without them 4% of the reply tokens are unseen."""
    import sys

    from transformers import AutoTokenizer

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from build_demo_corpus import MARKERS, corpus

    n_cover = 8000
    docs, chats = corpus(n_logs=20000, redline=0, n_cover=n_cover)
    tok = AutoTokenizer.from_pretrained(MODEL_DIR)
    pretrain = [json.loads(x) for x in (DATA_DIR / "pretrain.jsonl").read_text(encoding="utf-8").splitlines()]
    texts = [tok.apply_chat_template(c["messages"], tokenize=False) for c in pretrain + chats]
    ids = tok(texts + docs, add_special_tokens=False)["input_ids"]
    seen_without = {i for s in ids[: len(ids) - n_cover] for i in s}
    seen = seen_without | {i for s in ids[len(ids) - n_cover :] for i in s}
    rows = [json.loads(x) for f in demo.SFT_DATA for x in (DATA_DIR / f).read_text(encoding="utf-8").splitlines()]
    replies = [m["content"] for r in rows
               for m in r.get("messages", [{"role": "assistant", "content": r.get("output")}])
               if m["role"] == "assistant"]  # fmt: skip
    used = [i for s in tok(replies, add_special_tokens=False)["input_ids"] for i in s]
    assert [tok.decode([i]) for i in sorted(set(used) - seen)] == []
    assert sum(i not in seen_without for i in used) / len(used) > 0.03  # the negative control
    # the coverage documents never refuse: their one refusal marker is an apology's 抱歉
    assert not any(MARKERS.search(d.replace("抱歉", "")) for d in docs[-n_cover:])
