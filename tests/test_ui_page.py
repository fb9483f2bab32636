"""`weitiao ui` in real headless Chromium (Selenium), end to end on the shipped demo model, the way a newcomer
goes: the demo preset fills the form (the shipped data is a read-only root), an SFT run starts from it, its
live chart, export, the golden-set report and a blind-vote arena over chosen checkpoints, chat with the result,
two checkpoints side by side, data preview (an SFT file, and a DPO/RM pair file: prompt, chosen and rejected
with their scored tokens) and mix ratios, the language switch (field help too), and markup in
file names, logs and model replies shown as text.

With WEITIAO_UI_SHOTS=DIR it also saves a PNG of each tab in both languages (scripts/ui_screenshots.py).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import httpx
import pytest
from loopback import running

from weitiao.demo import DATA_DIR
from weitiao.ui.app import create_app
from weitiao.ui.paths import Roots
from weitiao.ui.runs import RunStore

DEMO_DATA = Path(__file__).parents[1] / "weitiao" / "demo" / "data" / "style.jsonl"
XSS = "<img src=x onerror=window.__xss=1>"
PAIR = {"prompt": "怎么挑西瓜？", "chosen": f"拍一拍，声音清脆的熟了{XSS}",
        "rejected": f"西瓜是葫芦科植物，原产于非洲，{XSS}后来传入中国，" + "种植历史悠久，品种很多，" * 6}  # fmt: skip
PAIR_SIDES = ("chosen", "rejected")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (shutil.which("chromium") and shutil.which("chromedriver")),
        reason="needs Debian's chromium + chromium-driver (apt-get install -y chromium chromium-driver)",
    ),
]


def test_console_end_to_end_in_headless_chromium(tmp_path, monkeypatch):
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    shots = os.environ.get("WEITIAO_UI_SHOTS")
    root = tmp_path / "work"
    (root / "data").mkdir(parents=True)
    rows = DEMO_DATA.read_text(encoding="utf-8").splitlines()[:40]
    (root / "data" / "style.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    (root / "data" / f"{XSS}.jsonl").write_text(rows[0] + "\n", encoding="utf-8")
    pairs = [PAIR, {"prompt": "你好", "chosen": "你好呀", "rejected": "嗯"}]
    (root / "data" / f"{XSS}-pairs.jsonl").write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs))
    (tmp_path / "secret.jsonl").write_text(rows[1] + "\n", encoding="utf-8")  # outside the root
    (root / "data" / "lf").mkdir()  # a LLaMA-Factory folder: its columns 问题/答案 mapped in dataset_info.json
    faq = [
        {"问题": "几点开门？", "答案": "早上九点开门，晚上九点关门。"},
        {"问题": "周末开吗？", "答案": "周末照常营业。"},
    ]
    (root / "data" / "lf" / "faq.json").write_text(json.dumps(faq, ensure_ascii=False), encoding="utf-8")
    info = {"faq": {"file_name": "faq.json", "columns": {"prompt": "问题", "response": "答案"}}}
    (root / "data" / "lf" / "dataset_info.json").write_text(json.dumps(info, ensure_ascii=False), encoding="utf-8")
    golden = DATA_DIR.joinpath("heldout_style.jsonl").read_text(encoding="utf-8").splitlines()[:3]
    (root / "data" / "golden.jsonl").write_text("\n".join(golden) + "\n", encoding="utf-8")
    bad = root / "runs" / "bad"  # a run that diverged, with markup in what it wrote
    (bad / "ui").mkdir(parents=True)
    (bad / "ui" / "run.json").write_text(json.dumps({"name": "bad", "kind": "sft", "status": "failed", "created": 1}))
    (bad / "ui" / "log.txt").write_text(f"error: {XSS}\n")
    events = [{"kind": "train", "step": 1, "loss": 2.0}, {"kind": "diverged", "step": 2, "message": f"loss nan {XSS}"}]
    (bad / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    stores = (Roots([root], read_only=[DATA_DIR]), RunStore(root / "runs"))  # as `weitiao ui` serves

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--lang=zh-CN",
                 "--window-size=1400,1000"):  # fmt: skip
        opts.add_argument(flag)
    opts.add_experimental_option("prefs", {"intl.accept_languages": "zh-CN,zh"})
    with running(create_app(*stores)) as base, running(create_app(*stores, token="tok-123")) as remote:
        driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
        wait = WebDriverWait(driver, 30)
        by_id = lambda i: driver.find_element(By.ID, i)  # noqa: E731
        field = lambda k: driver.find_element(By.CSS_SELECTOR, f'#config-form [data-key="{k}"]')  # noqa: E731

        def tab(name: str) -> None:
            driver.find_element(By.CSS_SELECTOR, f'.tab[data-tab="{name}"]').click()

        def shot(name: str) -> None:
            if shots:
                lang = driver.execute_script("window.scrollTo(0, 0); return window.weitiaoUI.lang")
                if name == "watch":  # the whole tab: charts, checkpoints, golden report and arena, log
                    height = driver.execute_script("return document.documentElement.scrollHeight")
                    driver.set_window_size(1400, min(height + 100, 1700))
                driver.save_screenshot(str(Path(shots) / f"{name}-{lang}.png"))
                driver.set_window_size(1400, 1000)

        try:
            driver.get(base + "/")
            wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
            assert driver.find_element(By.CSS_SELECTOR, '.tab[data-tab="chat"]').text == "对话"  # from the browser

            # 1. the form: the demo preset (shipped model and data), Chinese field help, a data file from the
            # picker (file names shown as text), a few keys made small for the test
            help_of = lambda k: field(k).find_element(By.XPATH, "following-sibling::span[@class='help']").text  # noqa: E731
            assert help_of("train.lr") == "默认 LoRA 2e-4，全参数微调 2e-5"
            by_id("preset-btn").click()
            value = lambda k: field(k).get_attribute("value")  # noqa: E731
            wait.until(lambda d: value("data.eval") == json.dumps([str(DATA_DIR / "heldout_style.jsonl")]))
            assert json.loads(value("data.train"))[1] == str(DATA_DIR / "safety.jsonl")
            assert value("model.path") == "demo" and value("train.lr") == "0.003" and value("model.quant") == "4bit"
            by_id("run-name").clear()
            by_id("run-name").send_keys("demo1")
            settings = {"train.max_steps": "4", "train.save_every": "2", "train.eval_every": "2", "train.lr": "3e-3",
                        "train.micro_batch_size": "2", "data.max_len": "64", "data.train": ""}  # fmt: skip
            for key, value in settings.items():
                field(key).clear()
                field(key).send_keys(value)
            field("data.train").find_element(By.XPATH, "following-sibling::button").click()
            wait.until(lambda d: by_id("picker").is_displayed())
            driver.find_element(By.CSS_SELECTOR, "#picker-list a").click()  # the root
            wait.until(lambda d: d.find_elements(By.LINK_TEXT, "data/"))  # the root's listing, not the roots'
            driver.find_element(By.LINK_TEXT, "data/").click()
            wait.until(lambda d: "style.jsonl" in by_id("picker-list").text)
            assert f"{XSS}.jsonl" in by_id("picker-list").text
            driver.find_element(By.LINK_TEXT, "style.jsonl").click()
            assert json.loads(field("data.train").get_attribute("value")) == [str(root / "data" / "style.jsonl")]
            by_id("preview-btn").click()
            wait.until(lambda d: "max_steps: 4" in by_id("yaml").text)
            assert by_id("yaml-download").is_displayed() and f"out: {root}/runs/demo1" in by_id("yaml").text
            wait.until(lambda d: "qlora" in by_id("estimate").text or "lora" in by_id("estimate").text)
            field("model.quant").send_keys("4bit")
            wait.until(lambda d: "qlora" in by_id("estimate").text)
            Select(field("model.quant")).select_by_value("none")
            wait.until(lambda d: d.execute_script("return window.weitiaoUI.estimate.method") == "lora")
            by_id("preview-btn").click()
            # the YAML holds the keys set: quant back at its default (the preset's 4bit cleared) is left out
            wait.until(lambda d: "quant:" not in by_id("yaml").text and "max_steps: 4" in by_id("yaml").text)
            shot("runs")

            # 2. start; the chart fills from metrics.jsonl while it runs; the run ends done with checkpoints
            by_id("start-btn").click()
            wait.until(lambda d: by_id("tab-watch").is_displayed())
            series = "return (window.weitiaoUI.series.loss || [[]])[0].length"
            WebDriverWait(driver, 240).until(lambda d: d.execute_script(series) >= 1)
            WebDriverWait(driver, 240).until(lambda d: by_id("watch-status").text == "已完成")
            wait.until(lambda d: d.execute_script(series) == 4)
            assert driver.execute_script("return window.weitiaoUI.series.eval_loss[0]") == [2, 4]
            assert len(driver.find_elements(By.CSS_SELECTOR, "#charts canvas")) == 5
            ckpts = [e.get_attribute("data-ckpt") for e in driver.find_elements(By.CSS_SELECTOR, "#checkpoints li")]
            assert ckpts == ["base", "step-000002", "final"]  # step-000004 holds final's weights: listed once
            assert "step 4/4" in by_id("log").text and not by_id("banner").is_displayed()
            # a fresh page: the Watch tab shows the run its list shows (it was empty until another run was picked)
            driver.get(base + "/")
            wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
            wait.until(lambda d: by_id("watch-run").get_attribute("value") == "demo1")
            tab("watch")
            wait.until(lambda d: by_id("watch-status").text == "已完成" and d.execute_script(series) == 4)
            shot("watch")

            # 3. the golden-set report and an arena over the chosen checkpoints (prompts: the demo's by default)
            assert by_id("eval-prompts").get_attribute("value") == str(DATA_DIR / "heldout_style.jsonl")
            by_id("eval-prompts").clear()
            by_id("eval-prompts").send_keys("data/golden.jsonl")
            for c in ("base", "step-000002", "final"):
                driver.find_element(By.CSS_SELECTOR, f'#checkpoints input[data-choose="{c}"]').click()
            by_id("golden-btn").click()
            WebDriverWait(driver, 120).until(lambda d: d.find_elements(By.ID, "golden-link"))
            labels = [r.text.split()[0] for r in driver.find_elements(By.CSS_SELECTOR, "#golden-table tbody tr")]
            assert labels == ["step-000002", "step-000004"]  # final is step 4's weights; base has no answers
            report = httpx.get(by_id("golden-link").get_attribute("href"))
            assert report.status_code == 200 and json.loads(golden[0])["instruction"] in report.text
            by_id("arena-btn").click()
            WebDriverWait(driver, 120).until(lambda d: d.find_elements(By.ID, "arena-link"))
            arena_url = by_id("arena-link").get_attribute("href")
            assert by_id("golden-link").is_displayed()  # both results stay linked
            wait.until(lambda d: "demo1/base · demo1/final · demo1/step-000002 · 0" in by_id("arena-list").text)
            shot("watch")

            # 4. export the final adapter with one click
            driver.find_element(By.CSS_SELECTOR, '#checkpoints li[data-ckpt="final"] button:nth-of-type(2)').click()
            wait.until(lambda d: "exports/final-adapter" in by_id("export-result").text)
            assert (root / "runs/demo1/exports/final-adapter/adapter_config.json").is_file()
            driver.find_element(By.CSS_SELECTOR, '#checkpoints li[data-ckpt="step-000002"] [data-gguf="f16"]').click()
            WebDriverWait(driver, 120).until(lambda d: "exports/step-000002-gguf-f16" in by_id("export-result").text)
            assert (root / "runs/demo1/exports/step-000002-gguf-f16/model-f16.gguf").stat().st_size > 1e6

            # 5. chat with the result, and step 2 beside it on the same prompt (streamed replies)
            wait.until(lambda d: "demo1/final" in [o.get_attribute("value") for o in Select(by_id("chat-a")).options])
            driver.find_element(By.CSS_SELECTOR, '#checkpoints li[data-ckpt="final"] button').click()
            assert by_id("tab-chat").is_displayed() and by_id("chat-a").get_attribute("value") == "demo1/final"
            Select(by_id("chat-b")).select_by_value("demo1/step-000002")
            by_id("chat-input").send_keys("周末有什么安排？")
            by_id("chat-send").click()
            replies = "#chat-log-{} .msg.assistant.done .text"
            wait.until(lambda d: all(d.find_elements(By.CSS_SELECTOR, replies.format(s)) for s in "ab"))
            for side in "ab":
                assert driver.find_element(By.CSS_SELECTOR, replies.format(side)).text.strip()
            shot("chat")

            # 6. markup in a reply is shown as text, never run
            def fake_stream(*args, **kwargs):
                yield from (XSS[:5], XSS[5:])

            monkeypatch.setattr("weitiao.infer.generate.stream_reply", fake_stream)
            by_id("chat-input").send_keys("hi")
            by_id("chat-send").click()
            wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, replies.format("a"))) == 2)
            assert driver.find_elements(By.CSS_SELECTOR, replies.format("a"))[1].text == XSS
            assert driver.find_elements(By.CSS_SELECTOR, replies.format("b"))[1].text == XSS
            assert not driver.find_elements(By.CSS_SELECTOR, "#tab-chat img, #picker img")
            assert driver.execute_script("return window.__xss") is None
            monkeypatch.undo()
            by_id("chat-reset").click()
            by_id("chat-input").send_keys("你好")
            by_id("chat-send").click()
            wait.until(lambda d: all(d.find_elements(By.CSS_SELECTOR, replies.format(s)) for s in "ab"))

            # 7. data preview: the rendered template, trained tokens highlighted; a mix and its ratios
            tab("data")
            by_id("data-path").send_keys("data/../../secret.jsonl")  # path traversal to a real file: refused
            by_id("data-show").click()
            wait.until(lambda d: "outside the allowed folders" in by_id("data-info").text)
            by_id("data-path").clear()
            by_id("data-path").send_keys("data/style.jsonl")
            by_id("data-show").click()
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#data-view span.trained"))
            assert "<|im_start|>assistant" in by_id("data-view").text
            assert "读入 / 保留 / 拒绝的行\n40 / 40 / 0" in by_id("data-check").text
            trained = lambda: [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#data-view span.trained")]  # noqa: E731
            assert trained()[-1].endswith("<|im_end|>")
            by_id("data-train-eot").click()  # SFT's data.train_eot false: the end-of-turn token shown untrained
            by_id("data-show").click()
            wait.until(lambda d: "train_eot false" in by_id("data-check").text)
            assert not trained()[-1].endswith("<|im_end|>")
            by_id("data-train-eot").click()
            assert not by_id("mix-report").is_displayed()
            by_id("mix-pick").click()
            wait.until(lambda d: by_id("picker").is_displayed())
            driver.find_element(By.CSS_SELECTOR, "#picker-list a").click()
            wait.until(lambda d: d.find_elements(By.LINK_TEXT, "data/"))  # the root's listing, not the roots'
            driver.find_element(By.LINK_TEXT, "data/").click()
            wait.until(lambda d: "style.jsonl" in by_id("picker-list").text)
            driver.find_element(By.LINK_TEXT, "style.jsonl").click()
            assert by_id("mix-sources").get_attribute("value") == f"{root}/data/style.jsonl:1"
            by_id("mix-sources").send_keys(f"\n{DATA_DIR}/safety.jsonl:0.25")
            by_id("mix-total").send_keys("50")
            by_id("mix-out").send_keys("data/mixed.jsonl")
            by_id("mix-run").click()
            mix_rows = "return [...document.querySelectorAll('#mix-report tbody tr')].map((r) => r.innerText)"
            want = ["style.jsonl\t40\t0\t40\t1.00x\t80.0%\t80.0%", "safety.jsonl\t150\t0\t10\t0.07x\t20.0%\t20.0%"]
            wait.until(lambda d: d.execute_script(mix_rows) == want)
            by_id("data-show").click()  # the mixed file: its preview shows the ratios it was made with
            wait.until(lambda d: "mixed.jsonl" in by_id("data-info").text and d.execute_script(mix_rows) == want)
            shot("data")

            # a LLaMA-Factory dataset by name and a truncation, as `data check --dataset-dir --truncation`
            by_id("data-path").clear()
            by_id("data-path").send_keys("faq")
            by_id("data-dataset-dir").send_keys("data/lf")
            Select(by_id("data-truncation")).select_by_value("cut")
            by_id("data-max-len").clear()
            by_id("data-max-len").send_keys("16")
            by_id("data-show").click()
            wait.until(lambda d: "faq.json:1" in by_id("data-info").text)
            assert "几点开门？" in by_id("data-view").text and "已截到 max_len" in by_id("data-info").text
            assert "丢弃 / 截断 / 删去早期轮次的行 (truncation cut)\n0 / 2 / 0" in by_id("data-check").text
            Select(by_id("data-truncation")).select_by_value("drop")
            by_id("data-show").click()
            wait.until(lambda d: "训练时丢弃这一行 (truncation drop)" in by_id("data-info").text)
            assert "(truncation drop)\n2 / 0 / 0" in by_id("data-check").text
            Select(by_id("data-template")).select_by_value("plain")  # as `data check --template`: the page had none
            by_id("data-show").click()
            view = lambda d: by_id("data-view").text  # noqa: E731
            wait.until(lambda d: "几点开门" in view(d) and "<|im_start|>" not in view(d))
            Select(by_id("data-template")).select_by_value("auto")
            by_id("data-dataset-dir").clear()

            # 7b. a DPO/RM pair file (markup in its name and replies): the shared prompt, then chosen and rejected
            # with their scored tokens and RM's score token; under drop (selected above) the pair over max_len is
            # left out, shown whole; cut_response cuts the long reply; in both languages
            by_id("data-path").clear()
            by_id("data-path").send_keys(f"data/{XSS}-pairs.jsonl")
            by_id("data-max-len").clear()
            by_id("data-max-len").send_keys("64")
            by_id("data-show").click()
            wait.until(lambda d: by_id("data-pair").is_displayed())
            assert "训练时丢弃这一对 (truncation drop): its longer side is" in by_id("data-info").text
            assert PAIR["rejected"].replace(XSS, "") in by_id("pair-rejected").text.replace(XSS, "")  # whole
            Select(by_id("data-truncation")).select_by_value("cut_response")
            by_id("data-show").click()
            wait.until(lambda d: "较长的一边超过" in by_id("data-info").text)
            assert not by_id("data-view").is_displayed() and by_id("mix-note").is_displayed()
            assert by_id("pair-prompt").text.startswith("<|im_start|>user\n怎么挑西瓜？")
            scored = {k: driver.find_elements(By.CSS_SELECTOR, f"#pair-{k} span.trained") for k in PAIR_SIDES}
            assert [e.text for e in scored["chosen"]] == [PAIR["chosen"], "<|im_end|>"]  # the reply, then its EOT
            cut = "".join(e.text for e in scored["rejected"])  # cut at max_len: no EOT
            assert len(cut) > 20 and PAIR["rejected"].startswith(cut)
            for k, spans in scored.items():  # where RM reads its score: the last scored token
                assert spans[-1].get_attribute("class") == "trained score" and spans[-1].get_attribute("title"), k
            info = lambda k: by_id(f"pair-{k}-info").text  # noqa: E731
            assert "已截到 max_len" in info("rejected") and "已截到" not in info("chosen")
            assert f"{XSS}-pairs.jsonl:1" in by_id("data-info").text and "较长的一边超过" in by_id("data-info").text
            assert "偏好对 / 两边相同 / 空回复\n2 / 0 / 0" in by_id("data-check").text
            assert "选中的回复" in by_id("data-pair").text and "计分的 token" in by_id("legend-trained").text
            assert not driver.find_elements(By.CSS_SELECTOR, "main img")
            assert driver.execute_script("return window.__xss") is None
            shot("pairs")
            by_id("lang").click()
            assert "Chosen reply" in by_id("data-pair").text and "cut to max_len, whole" in info("rejected")
            title = scored["chosen"][-1].get_attribute("title")
            assert title == "the reward model (RM) reads its score here"
            assert "scored tokens" in by_id("legend-trained").text
            assert "refuses preference pairs" in by_id("mix-note").text
            shot("pairs")
            by_id("lang").click()
            Select(by_id("data-truncation")).select_by_value("drop")  # an SFT file's
            by_id("data-path").clear()
            by_id("data-path").send_keys("data/mixed.jsonl")
            by_id("data-show").click()
            wait.until(lambda d: "mixed.jsonl" in by_id("data-info").text and by_id("data-view").is_displayed())
            assert not by_id("data-pair").is_displayed() and not by_id("mix-note").is_displayed()

            # 8. English, kept across a reload; the run list still has the run (state on disk)
            by_id("lang").click()
            assert driver.find_element(By.CSS_SELECTOR, '.tab[data-tab="chat"]').text == "Chat"
            assert "rows read / kept / rejected\n50 / 50 / 0" in by_id("data-check").text  # the mixed file's
            tab("runs")
            assert help_of("train.lr") == "default 2e-4 with LoRA, 2e-5 full fine-tuning"
            for name in ("data", "chat", "watch"):
                tab(name)
                shot(name)
            driver.refresh()
            wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
            assert driver.find_element(By.CSS_SELECTOR, '.tab[data-tab="runs"]').text == "Runs"
            wait.until(lambda d: "done" in by_id("run-list").text and "demo1" in by_id("run-list").text)
            # the PPO form: its own sections from its class; an optional section is off until switched on
            Select(by_id("recipe")).select_by_value("ppo")
            toggle = '[data-section-on="ppo.critic_lora"]'
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, toggle))
            assert field("reward.path").get_attribute("placeholder") == "required"
            assert field("ppo.critic_lora.r").get_attribute("disabled")
            driver.find_element(By.CSS_SELECTOR, toggle).click()
            assert not field("ppo.critic_lora.r").get_attribute("disabled")
            Select(by_id("recipe")).select_by_value("sft")
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, '#config-form [data-key="data.train"]'))
            field("data.train").send_keys('["data/style.jsonl"]')
            by_id("preview-btn").click()
            wait.until(lambda d: "style.jsonl" in by_id("yaml").text)
            shot("runs")

            # 9. the banner for a diverged, failed run; its message and log shown as text
            tab("watch")
            Select(by_id("watch-run")).select_by_value("bad")
            wait.until(lambda d: by_id("banner").is_displayed())
            banner = by_id("banner").text
            assert f"Training diverged (step 2) loss nan {XSS}" in banner and f"Run failed error: {XSS}" in banner
            assert by_id("log").text == f"error: {XSS}"
            assert not driver.find_elements(By.CSS_SELECTOR, "main img")
            assert driver.execute_script("return window.__xss") is None
            # negative control: the same text put in as HTML does run, so the probe would have caught it
            html = "document.body.append(Object.assign(document.createElement('div'), {innerHTML: arguments[0]}))"
            driver.execute_script(html, XSS)
            wait.until(lambda d: d.execute_script("return window.__xss") == 1)

            # 10. the arena made in step 3: a blind round between two of the chosen checkpoints, names after the vote
            driver.get(arena_url)
            wait.until(lambda d: d.find_element(By.ID, "answer-a").text.strip() != "")
            assert not by_id("name-a").is_displayed()
            by_id("vote-a").click()
            wait.until(lambda d: by_id("name-a").text.startswith("A = demo1/"))

            # 11. a console started with a token: refused without it; ?token= logs the browser in (cookie)
            driver.get(remote + "/")
            assert "token required" in driver.find_element(By.TAG_NAME, "body").text
            driver.get(remote + "/?token=tok-123")
            wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
            assert driver.current_url == remote + "/"
            wait.until(lambda d: "demo1" in by_id("run-list").text)
        finally:
            driver.quit()
