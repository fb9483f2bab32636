"""Credentials in URLs never reach files or screens: teacher errors and rejects, config.yaml, the PPO HTTP
reward's errors."""

import pytest
from loopback import running
from test_kb2sft import KB, answer_from_chunk, chunk_of
from test_teacher import MSGS, free_port_url, scripted_app

from weitiao.config import dump_config, load_config
from weitiao.errors import UserError
from weitiao.secrets import redact

SECRETS = ("s3cret", "k3y", "t0ken")


def with_secrets(url: str, query: bool = True) -> str:
    """`url` with a password in its userinfo and (an OpenAI base URL takes none) secret query parameters."""
    scheme, rest = url.split("://")
    return f"{scheme}://alice:s3cret@{rest}" + ("?api_key=k3y&token=t0ken" if query else "")


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("http://alice:s3cret@host:8000/v1", "http://***@host:8000/v1"),
        ("see https://tok@github.com/x.git now", "see https://***@github.com/x.git now"),
        ("http://h/v1?model=m&api_key=k3y&x=1", "http://h/v1?model=m&api_key=***&x=1"),
        ("http://h/s?token=t0ken#frag", "http://h/s?token=***#frag"),
        ("Authorization: Bearer sk-abc.def", "Authorization: Bearer ***"),
        # negative controls: nothing secret, nothing changed
        ("http://127.0.0.1:8000/v1?model=demo", "http://127.0.0.1:8000/v1?model=demo"),
        ("write to alice@example.com", "write to alice@example.com"),
        ("runs/monkey=1/token", "runs/monkey=1/token"),
    ],
)
def test_redact(text, want):
    assert redact(text) == want


def test_teacher_errors_and_rejects_are_redacted(tmp_path):
    from weitiao.dataeng import kb2sft
    from weitiao.dataeng.chunk import ChunkSpec
    from weitiao.teacher import Teacher, TeacherError

    down = Teacher(with_secrets(free_port_url()), "t", retries=0)
    with pytest.raises(TeacherError) as e:
        down.chat(MSGS)
    assert "cannot connect" in str(e.value) and "alice" not in str(e.value)

    def flaky(body: dict) -> tuple[int, str]:
        return (400, "refused") if "售后" in chunk_of(body) else answer_from_chunk(body)

    with running(scripted_app(flaky)) as url:
        teacher = Teacher(with_secrets(url + "/v1", query=False), "t", retries=0)
        kb2sft.run([KB], tmp_path / "out", teacher, kb2sft.KBConfig(ChunkSpec("paragraph", max_chars=200)), False)
    rejects = (tmp_path / "out" / "rejects.jsonl").read_text(encoding="utf-8")
    assert "HTTP 400: refused" in rejects and "***@127.0.0.1" in rejects
    assert not any(s in rejects for s in SECRETS)
    with running(scripted_app(lambda body: (401, "bad key"))) as url:
        with pytest.raises(TeacherError, match="HTTP 401") as e:
            Teacher(with_secrets(url + "/v1", query=False), "t", retries=0).chat(MSGS)
    assert not any(s in str(e.value) for s in SECRETS)


def test_config_yaml_is_redacted():
    from weitiao.recipes import ppo

    url = with_secrets("http://127.0.0.1:9000/score")
    cfg = load_config(ppo.PPOConfig, None, ["reward.kind=http", f"reward.path={url}", "data.prompts=[p.jsonl]"])
    text = dump_config(cfg)
    assert "path: http://***@127.0.0.1:9000/score?api_key=***&token=***" in text
    assert not any(s in text for s in SECRETS)
    assert cfg.reward.path == url  # only what is written is redacted; the run still uses the real URL


def test_http_reward_errors_are_redacted():
    from fastapi import FastAPI

    from weitiao.recipes.rewards import http_scorer

    for_prompts = ([[{"role": "user", "content": "你好"}]], ["嗨"])
    with pytest.raises(UserError) as e:
        http_scorer(with_secrets(free_port_url()), timeout=5)(*for_prompts)
    assert "ConnectError" in str(e.value) and not any(s in str(e.value) for s in SECRETS)
    app = FastAPI()

    @app.post("/score")
    async def score() -> dict:
        return {"scores": [1.0, 2.0]}  # one too many

    with running(app) as url:
        with pytest.raises(UserError, match="returned 2 scores for 1 responses") as e:
            http_scorer(with_secrets(url + "/score"), timeout=5)(*for_prompts)
    assert not any(s in str(e.value) for s in SECRETS)
    with running(FastAPI()) as url:  # 404: httpx's message repeats the whole URL
        with pytest.raises(UserError, match="HTTP 404") as e:
            http_scorer(with_secrets(url + "/score"), timeout=5)(*for_prompts)
    assert not any(s in str(e.value) for s in SECRETS)
