"""Arena page: the JSON API over real HTTP, and the page itself in headless Chromium driven by Selenium."""

from __future__ import annotations

import shutil
import sqlite3
import time

import httpx
import pytest
from loopback import running

from weitiao.eval.arena.app import COOKIE, ArenaLimits, create_app
from weitiao.eval.arena.store import ArenaStore

ANSWERS = [
    {"prompt": "今天天气怎么样？", "model": "alpha-模型", "answer": "挺好的，大晴天☀️"},
    {"prompt": "今天天气怎么样？", "model": "beta-模型", "answer": "不知道。"},
    {"prompt": "推荐一部电影", "model": "alpha-模型", "answer": "《流浪地球》不错哦"},
    {"prompt": "推荐一部电影", "model": "beta-模型", "answer": "看书吧。"},
]


@pytest.fixture
def store(tmp_path):
    s = ArenaStore(tmp_path / "arena.sqlite")
    s.serve_answers(ANSWERS)
    return s


def answer_model(text: str) -> str:
    return next(r["model"] for r in ANSWERS if r["answer"] == text)


def test_api_round_vote_reveal(store):
    with running(create_app(store, seed=0)) as base, httpx.Client(base_url=base) as c:
        page = c.get("/")
        assert page.status_code == 200 and COOKIE in page.cookies
        first = c.get("/api/round").json()
        assert set(first) == {"round", "prompt", "a", "b"}  # no names before the vote
        assert all(c.get("/api/round").json() == first for _ in range(5))  # one open round per voter
        r = first
        v = c.post("/api/vote", json={"round": r["round"], "choice": "b"})
        assert v.status_code == 200
        assert v.json() == {"model_a": answer_model(r["a"]), "model_b": answer_model(r["b"]), "outcome": "model_b"}
        assert c.post("/api/vote", json={"round": r["round"], "choice": "a"}).status_code == 409
        assert c.post("/api/vote", json={"round": "nope", "choice": "a"}).status_code == 404
        r2 = c.get("/api/round").json()
        assert r2["round"] != r["round"]
        assert c.post("/api/vote", json={"round": r2["round"], "choice": "left"}).status_code == 400
    votes = store.votes()
    assert len(votes) == 1 and votes[0]["voter"] == page.cookies[COOKIE].rpartition(".")[0]
    assert votes[0]["prompt"] == r["prompt"]
    assert votes[0]["swapped"] == int(votes[0]["model_a"] > votes[0]["model_b"])
    with sqlite3.connect(store.path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_two_arenas_mounted_in_one_app_keep_their_own_voter(tmp_path):
    """The console mounts each arena at /arena/<id>/; their cookies (one name, each signed with its arena's secret)
    were set for path / and replaced each other, so with two arena tabs open a vote in the first was a 403."""
    from fastapi import FastAPI

    console = FastAPI()
    for name in ("one", "two"):
        s = ArenaStore(tmp_path / f"{name}.sqlite")
        s.serve_answers(ANSWERS)
        console.mount(f"/arena/{name}", create_app(s, seed=0))
    with running(console) as base, httpx.Client(base_url=base) as c:
        rounds = {}
        for name in ("one", "two"):  # open both pages, as two tabs would
            assert c.get(f"/arena/{name}/").status_code == 200
            rounds[name] = c.get(f"/arena/{name}/api/round").json()["round"]
        for name in ("one", "two"):
            v = c.post(f"/arena/{name}/api/vote", json={"round": rounds[name], "choice": "a"})
            assert v.status_code == 200, v.text
    assert {ck.path for ck in c.cookies.jar} == {"/arena/one", "/arena/two"}


def test_sides_and_pairs_are_drawn_at_random(store):
    import random

    draws = [store.draw_round(random.Random(s)) for s in range(40)]
    assert {d["model_a"] for d in draws} == {"alpha-模型", "beta-模型"}
    assert all(d["a"] == next(r["answer"] for r in ANSWERS if r["model"] == d["model_a"] and r["prompt"] == d["prompt"])
               for d in draws)  # fmt: skip
    assert store.draw_round(random.Random(0), {("alpha-模型", "beta-模型")}) is None


@pytest.mark.slow
@pytest.mark.skipif(
    not (shutil.which("chromium") and shutil.which("chromedriver")),
    reason="needs Debian's chromium + chromium-driver (apt-get install -y chromium chromium-driver)",
)
def test_page_vote_in_headless_chromium(store):
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        opts.add_argument(flag)
    with running(create_app(store, seed=1, limits=ArenaLimits(vote_interval_s=4))) as base:
        driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
        try:
            wait = WebDriverWait(driver, 20)
            driver.get(base + "/")
            wait.until(lambda d: d.find_element(By.ID, "answer-a").text.strip() != "")
            text_a = driver.find_element(By.ID, "answer-a").text
            text_b = driver.find_element(By.ID, "answer-b").text
            prompt = driver.find_element(By.ID, "prompt").text
            assert not driver.find_element(By.ID, "name-a").is_displayed()
            assert "alpha-模型" not in driver.page_source and "beta-模型" not in driver.page_source

            driver.find_element(By.ID, "vote-a").click()
            wait.until(EC.visibility_of_element_located((By.ID, "name-a")))
            assert driver.find_element(By.ID, "name-a").text == "A = " + answer_model(text_a)
            assert driver.find_element(By.ID, "name-b").text == "B = " + answer_model(text_b)
            votes = store.votes()
            assert len(votes) == 1
            v = votes[0]
            assert (v["model_a"], v["model_b"], v["outcome"]) == (answer_model(text_a), answer_model(text_b), "model_a")
            assert v["prompt"] == prompt and v["voter"] == driver.get_cookie(COOKIE)["value"].rpartition(".")[0]

            driver.find_element(By.ID, "next").click()  # next round: names hidden again, then a tie vote
            wait.until(lambda d: not d.find_element(By.ID, "name-a").is_displayed())
            wait.until(EC.element_to_be_clickable((By.ID, "vote-tie"))).click()
            # within 4 s of the last vote: refused, nothing revealed, the buttons come back for a retry
            wait.until(lambda d: "too fast" in d.find_element(By.ID, "status").text)
            assert not driver.find_element(By.ID, "name-b").is_displayed() and len(store.votes()) == 1
            time.sleep(4)
            wait.until(EC.element_to_be_clickable((By.ID, "vote-tie"))).click()
            wait.until(EC.visibility_of_element_located((By.ID, "name-b")))
            assert [x["outcome"] for x in store.votes()] == ["model_a", "tie"]
        finally:
            driver.quit()


def test_live_models_pregenerate(tiny_model_dir, tmp_path):
    from conftest import write_jsonl

    from weitiao.errors import UserError
    from weitiao.eval.arena.store import parse_models, pregenerate

    assert parse_models("a=demo,b=demo:runs/x/final") == {"a": ("demo", None), "b": ("demo", "runs/x/final")}
    for bad in ("a=demo", "a=demo,b", "=x,b=y"):
        with pytest.raises(UserError):
            parse_models(bad)
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "你好"}, {"prompt": "推荐一部电影"}])
    rows = pregenerate(f"x={tiny_model_dir},y={tiny_model_dir}", prompts, max_new_tokens=8)
    assert [(r["model"], r["prompt"]) for r in rows] == [
        ("x", "你好"), ("x", "推荐一部电影"), ("y", "你好"), ("y", "推荐一部电影")
    ]  # fmt: skip
    assert all(isinstance(r["answer"], str) for r in rows)
    s = ArenaStore(tmp_path / "a.sqlite")
    s.serve_answers(rows)
    assert s.count_answers() == 4 and s.models() == ["x", "y"]
