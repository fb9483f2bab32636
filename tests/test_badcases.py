"""data badcases: ingest (JSONL/CSV), k-means clusters, paraphrases via a loopback teacher, emitted files."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import typer
from loopback import running
from test_teacher import free_port_url, scripted_app
from typer.testing import CliRunner

from weitiao.config import load_config
from weitiao.data.formats import PreferencePair, load_conversations, load_rows
from weitiao.dataeng import badcases
from weitiao.dataeng.commands import register
from weitiao.errors import UserError
from weitiao.recipes.sft import SFTConfig
from weitiao.teacher import Teacher

GROUPS = {
    "事实错误": [("退货运费谁出？", "我们不支持退货", "7 天内可无理由退货，运费由你承担；质量问题由我们承担。"),
             ("退货要在几天内申请？", "30 天", "签收后 7 天内可以无理由退货。"),
             ("退货需要保留包装吗？", "不需要", "需要，商品完好、配件和包装齐全才能退货。"),
             ("质量问题退货运费呢？", "你自己出", "质量问题导致的退货，运费由青禾承担。")],
    "拒答": [("帮我写一条诈骗短信", "好的：您的账户异常……", "这个不行哦，诈骗违法"),
           ("怎么写诈骗短信骗老人", "首先……", "抱歉，这个我不能帮你"),
           ("诈骗短信怎么写才像真的", "要模仿银行……", "这个真帮不了，小心别被骗"),
           ("给我一个诈骗短信模板", "模板如下……", "抱歉，这个我无法提供")],
    "风格不符": [("今天天气怎么样啊", "根据气象部门的权威数据，今日天气状况总体良好。", "大晴天☀️"),
             ("明天天气好吗", "明日天气预计为多云转晴，气温适宜。", "还不错，出去玩吧😄"),
             ("周末天气咋样", "周末天气情况如下：周六晴，周日小雨。", "周六晴，周日下雨🌧️"),
             ("天气好热啊", "高温天气需注意防暑降温，多补充水分。", "热死了🥵 多喝水")],
}  # fmt: skip


def write_cases(path, extra=()):
    rows = [{"prompt": p, "bad": b, "golden": g, "tag": tag} for tag, cases in GROUPS.items() for p, b, g in cases]
    rows += list(extra)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def paraphraser(body: dict) -> tuple[int, str]:
    """3 new rewrites + a copy of the original + a duplicate; prose (no JSON) for one prompt."""
    prompt = body["messages"][-1]["content"].rsplit("用户提问：", 1)[1]
    if prompt == "天气好热啊":
        return 200, "好的，我来改写一下。"
    items = [prompt + "呀", "请问" + prompt, prompt, "请问" + prompt, "麻烦问下，" + prompt]
    return 200, "```json\n" + json.dumps(items, ensure_ascii=False) + "\n```"


def test_kmeans_separates_planted_groups():
    cs = [badcases.Case(p, b, g, tag) for tag, rows in GROUPS.items() for p, b, g in rows]
    clusters = badcases.cluster(cs, k=3, seed=0)
    groups = {frozenset(c.prompt for c in cs if c.cluster == j) for j in range(3)}
    assert groups == {frozenset(p for p, _, _ in rows) for rows in GROUPS.values()}
    assert sorted(cl["tag"] for cl in clusters) == sorted(GROUPS) and [cl["size"] for cl in clusters] == [4, 4, 4]
    kw = {cl["tag"]: cl["keywords"] for cl in clusters}
    assert "退货" in kw["事实错误"] and "诈骗" in kw["拒答"] and "天气" in kw["风格不符"]
    # kmeans on hand-made unit vectors: two tight pairs
    x = np.array([[1, 0], [0.99, 0.141], [0, 1], [0.141, 0.99]])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    lab = badcases.kmeans(x, 2, seed=3)
    assert lab[0] == lab[1] and lab[2] == lab[3] and lab[0] != lab[2]


def test_badcases_end_to_end(tmp_path):
    same = {"prompt": "退货流程是什么？", "bad": "联系客服", "golden": "联系客服", "tag": "事实错误"}
    cases = write_cases(tmp_path / "cases.jsonl", [same])
    app = scripted_app(paraphraser)
    (run := tmp_path / "runs" / "demo").mkdir(parents=True)  # the run the follow-up continues (it must exist)
    with running(app) as url:
        t = Teacher(url + "/v1", "t", cache_dir=tmp_path / "c")
        s = badcases.run([cases], tmp_path / "o", t, n_aug=4, k=3, config=Path("examples/demo_sft.yaml"),
                         resume_from=str(run), progress=False, sft_config=SFTConfig)  # fmt: skip
    n = 13
    # 12 prompts get 3 usable rewrites (copy and duplicate dropped), "天气好热啊" gets prose → unparseable
    assert (s["cases"], s["clusters"], s["teacher_failed"], s["parse_failed"]) == (n, 3, 0, 1)
    assert s["paraphrases"] == 3 * (n - 1) and s["short"] == n - 1
    # each paraphrased case trains on its prompt + 2 rewrites; its 3rd rewrite is the held-out regression row
    assert s["sft_rows"] == n + 2 * (n - 1) and s["golden_equals_bad"] == 1
    assert s["dpo_pairs"] == s["sft_rows"] - 3  # the golden == bad case contributes no pair (nor its 2 rewrites)
    sft = load_conversations(str(tmp_path / "o/sft_additions.jsonl")).rows
    pairs = load_rows(str(tmp_path / "o/dpo_pairs.jsonl")).rows
    reg = load_conversations(str(tmp_path / "o/regression_eval.jsonl")).rows
    assert (len(sft), len(pairs), len(reg)) == (s["sft_rows"], s["dpo_pairs"], n - 1)
    assert all(isinstance(p, PreferencePair) for p in pairs)
    trained = {c.messages[0]["content"] for c in sft} | {p.prompt[-1]["content"] for p in pairs}
    assert not trained & {c.messages[0]["content"] for c in reg}  # held out: never a training prompt
    golden = {p: g for rows in GROUPS.values() for p, _, g in rows}
    by_golden = {g for g in golden.values()}
    assert all(c.messages[-1]["content"] in by_golden | {"联系客服"} for c in reg)
    rewrites = [c for c in reg if c.messages[0]["content"] == "麻烦问下，退货运费谁出？"]  # its 3rd rewrite
    assert len(rewrites) == 1 and rewrites[0].messages[1]["content"] == golden["退货运费谁出？"]
    assert "诈骗" in (tmp_path / "o/clusters.html").read_text(encoding="utf-8")
    # the follow-up config: base config + additions + regression eval + init_from, all absolute, and it
    # validates from any folder (the base config's paths were relative to examples/)
    cfg = load_config(SFTConfig, tmp_path / "o/followup_sft.yaml")
    assert cfg.data.train[-1] == str(tmp_path / "o/sft_additions.jsonl") and len(cfg.data.train) == 3
    assert all(Path(f).is_file() for f in cfg.data.train[:2])
    heldout_style = str(Path("weitiao/demo/data/heldout_style.jsonl").resolve())
    assert cfg.data.eval == [heldout_style, str(tmp_path / "o/regression_eval.jsonl")]
    assert cfg.lora.init_from == str(run.resolve()) and cfg.train.out == str(tmp_path / "o/sft")
    assert s["next"] == f"weitiao sft {tmp_path / 'o/followup_sft.yaml'}"
    # re-run: all from cache
    with running(scripted_app(paraphraser)) as url:
        t2 = Teacher(url + "/v1", "t", cache_dir=tmp_path / "c")
        badcases.run([cases], tmp_path / "o2", t2, n_aug=4, k=3, progress=False)
    assert t2.http_calls == 0


def test_badcases_csv_and_bad_input(tmp_path):
    with open(tmp_path / "c.csv", "w", encoding="utf-8-sig", newline="") as f:
        w = csv.writer(f)
        w.writerow(["question", "response", "golden_answer"])
        w.writerow(["退货运费谁出？", "我们不支持退货", "7 天内可无理由退货"])
        w.writerow(["怎么写诈骗短信", "首先……", "抱歉，这个不行"])
    s = badcases.run([tmp_path / "c.csv"], tmp_path / "o", None, n_aug=0, progress=False)
    # no paraphrases: one of the two cases of the one cluster is held out whole
    assert (s["cases"], s["sft_rows"], s["dpo_pairs"], s["clusters"], s["regression_eval"]) == (2, 1, 1, 1, 1)
    assert "YOUR_SFT.yaml" in s["next"] and "lora.init_from" not in s["next"]
    with open(tmp_path / "bad.csv", "w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows([["prompt", "bad"], ["你好", "滚"]])
    with pytest.raises(UserError, match=r"bad\.csv:2: golden: missing"):
        badcases.ingest([tmp_path / "bad.csv"])
    with pytest.raises(UserError, match="not found"):
        badcases.ingest([tmp_path / "nope.jsonl"])
    (tmp_path / "empty.jsonl").write_text("\n", encoding="utf-8")
    with pytest.raises(UserError, match="no bad cases"):
        badcases.ingest([tmp_path / "empty.jsonl"])
    t = Teacher(free_port_url(), "t", retries=0, cache_dir=tmp_path / "cache")
    with pytest.raises(UserError, match=r"cannot connect.*--augment 0"):
        badcases.run([tmp_path / "c.csv"], tmp_path / "o", t, n_aug=3, progress=False)


def test_cli_badcases(tmp_path):
    cases = write_cases(tmp_path / "cases.jsonl")
    cli, data = typer.Typer(), typer.Typer()
    cli.add_typer(data, name="data")
    register(data, cli)
    (run := tmp_path / "runs" / "demo").mkdir(parents=True)
    with running(scripted_app(paraphraser)) as url:
        r = CliRunner().invoke(cli, ["data", "badcases", str(cases), "--out", str(tmp_path / "o"), "--teacher-url",
                                     url + "/v1", "--cache-dir", str(tmp_path / "c"), "--augment", "3",
                                     "--resume-from", str(run)])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert f"lora.init_from={run}" in r.output.replace("\n", "") and "34 / 34 / 11" in r.output


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--augment", "0", "--teacher-url", "http://h:1/v1", "--temperature", "0.2"],
         "--teacher-url, --temperature: --augment 0 asks the teacher nothing"),
        (["--holdout", "0.5"], "--holdout: only without a teacher (--augment 0)"),
    ],
)  # fmt: skip
def test_options_the_run_would_ignore_are_refused(tmp_path, flags, message):
    """--augment 0 with teacher options (or --holdout with a teacher) ran and ignored them."""
    cases = write_cases(tmp_path / "cases.jsonl")
    cli, data = typer.Typer(), typer.Typer()
    cli.add_typer(data, name="data")
    register(data, cli)
    r = CliRunner().invoke(cli, ["data", "badcases", str(cases), "--out", str(tmp_path / "o"), *flags])
    assert isinstance(r.exception, UserError) and str(r.exception).startswith(message), r.output
    assert not (tmp_path / "o").exists()
    ok = CliRunner().invoke(cli, ["data", "badcases", str(cases), "--out", str(tmp_path / "o"), "--augment", "0",
                                  "--holdout", "0.5"])  # fmt: skip
    assert ok.exit_code == 0, ok.output  # control: --holdout is what --augment 0 reads


def test_clusters_by_failure_not_prompt_alone():
    # same two questions, each failing two ways: clusters must follow the failure (reply + tag)
    rows = [("退货运费谁出？", "运费您自己出", "事实错误"), ("退货要几天到账？", "一个月后到账", "事实错误"),
            ("退货运费谁出啊？", "亲亲😊😊运费的事情呢亲亲～～", "风格不符"),
            ("退货要几天到账啊？", "亲亲😊😊到账的事情呢亲亲～～", "风格不符")]  # fmt: skip
    cases = [badcases.Case(p, b, "好的", t, source=str(i)) for i, (p, b, t) in enumerate(rows)]
    badcases.cluster(cases, k=2)
    assert cases[0].cluster == cases[1].cluster != cases[2].cluster == cases[3].cluster
    # negative control: on the prompts alone the same k-means pairs the look-alike questions instead
    x, _ = badcases.tfidf([c.prompt for c in cases], ns=(2,))
    lab = badcases.kmeans(x, 2)
    assert lab[0] == lab[2] and lab[1] == lab[3] and lab[0] != lab[1]


def test_features_are_sparse():
    # 10k texts took 1.6 GB per dense TF-IDF block; sparse rows hold only the n-grams a text has
    from scipy.sparse import issparse

    cs = [badcases.Case(p + str(i), b, g, tag) for i in range(50) for tag, rows in GROUPS.items() for p, b, g in rows]
    x = badcases.features(cs)
    assert issparse(x) and x.shape[0] == len(cs)
    assert np.allclose(np.sqrt(x.multiply(x).sum(axis=1)), 1.0)  # unit rows
    assert issparse(badcases.tfidf([c.prompt for c in cs])[0])


def test_a_case_logged_twice_is_held_out_whole_and_never_trained(tmp_path):
    """Real failure logs repeat a case: every copy of a held-out prompt is held out, none trained on."""
    dup = {"prompt": "怎么申请退款？", "bad": "不知道", "golden": "订单页点申请退款就行。", "tag": "事实错误"}
    cases = write_cases(tmp_path / "c.jsonl", [dup, dup, dup])
    for seed in range(4):
        badcases.run([cases], tmp_path / f"o{seed}", None, n_aug=0, k=3, seed=seed, progress=False)
        rows = {n: [json.loads(x) for x in (tmp_path / f"o{seed}" / n).read_text().splitlines()]
                for n in ("regression_eval.jsonl", "sft_additions.jsonl")}  # fmt: skip
        held = [r["messages"][0]["content"] for r in rows["regression_eval.jsonl"]]
        trained = {r["messages"][0]["content"] for r in rows["sft_additions.jsonl"]}
        assert held and len(held) == len(set(held)) and not trained & set(held), (seed, held)


def test_a_base_config_the_follow_up_cannot_extend_is_refused_before_any_work(tmp_path):
    cases = write_cases(tmp_path / "c.jsonl")
    for data, msg in [("train: [a.jsonl]\n  eval_split: 0.2", "data.eval_split holds the general eval set"),
                      ("dataset_dir: lf\n  train: [mine]", "data.dataset_dir names datasets")]:  # fmt: skip
        (tmp_path / "base.yaml").write_text(f"data:\n  {data}\n", encoding="utf-8")
        with pytest.raises(UserError, match=msg):
            badcases.run([cases], tmp_path / "o", None, n_aug=0, config=tmp_path / "base.yaml", sft_config=SFTConfig)
        assert not (tmp_path / "o").exists()
    (tmp_path / "base.yaml").write_text("data:\n  train: [a.jsonl]\n  eval: [e.jsonl]\n", encoding="utf-8")
    badcases.run([cases], tmp_path / "o", None, n_aug=0, config=tmp_path / "base.yaml", sft_config=SFTConfig,
                 progress=False)  # fmt: skip
    assert len(load_config(SFTConfig, tmp_path / "o" / "followup_sft.yaml").data.eval) == 2  # general + regression


def test_a_gbk_csv_from_excel_is_refused_with_the_command_and_bad_options_are_refused(tmp_path):
    """Excel on Chinese Windows saves CSV as GBK: it crashed with UnicodeDecodeError, then was read by a guess here
    while every other reader refused it; it is refused as they do, naming GBK and the iconv command
    (test_encodings). --augment -2 crashed with KeyError after writing; --clusters 0 / -1 read as default / 1."""
    rows = "prompt,bad,golden,tag\n退货运费谁出？,我们不支持退货,7 天内可无理由退货,事实错误\n"
    rows += "怎么写诈骗短信,首先……,抱歉,拒答\n"
    (tmp_path / "gbk.csv").write_bytes(rows.encode("gbk"))
    with pytest.raises(UserError, match=r"gbk\.csv:2: not UTF-8 but GB18030/GBK .*`iconv -f gb18030 -t utf-8 "):
        badcases.ingest([tmp_path / "gbk.csv"])
    (tmp_path / "utf8.csv").write_text(rows, encoding="utf-8")  # negative control: the same cases
    cases = badcases.ingest([tmp_path / "utf8.csv"])
    assert [(c.prompt, c.tag, c.source) for c in cases] == [
        ("退货运费谁出？", "事实错误", f"{tmp_path / 'utf8.csv'}:2"),
        ("怎么写诈骗短信", "拒答", f"{tmp_path / 'utf8.csv'}:3"),
    ]
    (tmp_path / "bin.csv").write_bytes(b"prompt,bad,golden\n\xff\xfe\x80,x,y\n")
    with pytest.raises(UserError, match=r"bin\.csv:2: not valid UTF-8"):
        badcases.ingest([tmp_path / "bin.csv"])
    for kw, msg in (({"n_aug": -2}, "--augment -2: must be ≥ 0"), ({"k": 0}, "--clusters 0: must be ≥ 1"),
                    ({"k": -1}, "--clusters -1: must be ≥ 1"),
                    ({"resume_from": str(tmp_path / "no-run")}, "--resume-from .*no-run: not found")):  # fmt: skip
        with pytest.raises(UserError, match=msg):
            badcases.run([tmp_path / "utf8.csv"], tmp_path / "o", None, **{"n_aug": 0, **kw}, progress=False)
    assert not (tmp_path / "o").exists()


def test_csv_errors_name_the_line_after_a_cell_with_line_breaks(tmp_path):
    """A quoted cell spanning two lines pushed the next row down a line; the error named line 3 for a row on line 4."""
    (tmp_path / "c.csv").write_text('prompt,bad,golden\n"第一行\n第二行",坏,好\n你好,滚\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"c\.csv:4: 2 columns, the header has 3; quote"):
        badcases.ingest([tmp_path / "c.csv"])
    (tmp_path / "c.csv").write_text('prompt,bad,golden\n"第一行\n第二行",坏,好\n你好,滚,好的\n', encoding="utf-8")
    assert [c.source.rsplit(":", 1)[1] for c in badcases.ingest([tmp_path / "c.csv"])] == ["2", "4"]


def test_a_split_cell_a_repeated_column_and_a_blank_answer_are_refused(tmp_path):
    """Read silently before: an unquoted comma in a cell pushed the row's last cells under no column (the golden
    answer cut, the rest dropped), a column named twice kept the last, a golden of spaces trained an empty reply."""
    split = tmp_path / "split.csv"
    split.write_text("prompt,bad,golden\n退货要多久,不知道,七天内到账,节假日顺延\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"split\.csv:2: 4 columns, the header has 3; quote a cell"):
        badcases.ingest([split])
    twice = tmp_path / "twice.csv"
    twice.write_text("prompt,bad,golden,prompt\n你好,滚,您好,\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"twice\.csv:1: header: column 'prompt' named twice"):
        badcases.ingest([twice])
    blank = tmp_path / "blank.jsonl"
    blank.write_text(json.dumps({"prompt": "你好", "bad": "滚", "golden": "   "}) + "\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"blank\.jsonl:1: golden: missing"):
        badcases.ingest([blank])
    ok = tmp_path / "ok.csv"  # negative control: a quoted comma, and a blank alias beside a filled one
    ok.write_text('prompt,question,bad,golden\n" ",退货要多久,不知道,"七天内到账,节假日顺延"\n', encoding="utf-8")
    [case] = badcases.ingest([ok])
    assert (case.prompt, case.golden) == ("退货要多久", "七天内到账,节假日顺延")


def test_two_columns_naming_one_field_with_different_text_are_refused(tmp_path):
    """An export with both `response` (the model's reply) and `bad` took `bad` and dropped the other silently;
    when they differ nobody can tell which one was meant."""
    two = tmp_path / "two.csv"
    two.write_text("prompt,bad,response,golden\n退货要多久,不知道,三天,七天内到账\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"^.*two\.csv:2: response: differs from 'bad'; both name the bad"):
        badcases.ingest([two])
    same = tmp_path / "same.jsonl"  # control: the same text under two names is no conflict
    row = {"query": "退货要多久", "prompt": "退货要多久", "bad": "不知道", "golden": "七天"}
    same.write_text(json.dumps(row) + "\n", encoding="utf-8")
    assert badcases.ingest([same])[0].prompt == "退货要多久"


def test_a_rerun_whose_teacher_fails_leaves_the_earlier_run_whole(tmp_path):
    """clusters.html/json were written before the teacher was asked: a rerun into the same --out with other cases whose
    teacher failed (or that was interrupted while paraphrasing) left its clusters beside the earlier run's additions
    and summary, a folder of two runs that looked complete."""
    few = tmp_path / "few.jsonl"
    lines = write_cases(tmp_path / "all.jsonl").read_text("utf-8").splitlines(True)
    few.write_text("".join(lines[:4]), encoding="utf-8")
    out = tmp_path / "o"
    s = badcases.run([few], out, None, n_aug=0, progress=False)
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    t = Teacher(free_port_url(), "t", retries=0)
    with pytest.raises(UserError, match="cannot connect"):
        badcases.run([tmp_path / "all.jsonl"], out, t, n_aug=3, progress=False)
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before
    assert sum(c["size"] for c in json.loads((out / "clusters.json").read_text("utf-8"))) == s["cases"] == 4


def test_a_windows_line_break_inside_a_cell_reads_as_one_line_break(tmp_path):
    """A CSV saved on Windows: the prompt cell's CR LF stayed in the prompt and golden answer (as data mix reads it)."""
    (tmp_path / "c.csv").write_bytes('prompt,bad,golden\r\n"第一行\r\n第二行",坏,"好\r\n的"\r\n'.encode())
    (case,) = badcases.ingest([tmp_path / "c.csv"])
    assert (case.prompt, case.golden) == ("第一行\n第二行", "好\n的")


def test_a_csv_cell_over_131072_characters_is_read(tmp_path):
    """badcases had its own CSV parser: a bad reply over 131,072 characters (csv's default field limit) stopped it
    with a _csv.Error traceback; it reads CSV with the project's reader now."""
    long = "坏" * 140_000
    for name, enc in (("utf8.csv", "utf-8"), ("bom.csv", "utf-8-sig")):
        with open(tmp_path / name, "w", encoding=enc, newline="") as f:
            csv.writer(f).writerows([["prompt", "bad", "golden"], ["退货要多久", long, "七天"], ["你好", "滚", "您好"]])
        cases = badcases.ingest([tmp_path / name])
        assert [(c.bad, c.source.rsplit(":", 1)[1]) for c in cases] == [(long, "2"), ("滚", "3")]


def test_a_key_the_case_would_leave_unread_is_refused(tmp_path):
    """An alpaca `input` (the text to translate) was dropped: the additions trained "把下面的句子翻译成英文" → two
    different translations; a `Tag` (or `catgory`) column was ignored: the failure kind never reached the clusters."""
    rows = {"input": {"instruction": "把下面的句子翻译成英文", "input": "我今天很开心", "bad": "我今天很开心",
                      "golden": "I am very happy today."},
            "history": {"prompt": "那第二个呢", "history": [["推荐两本书", "《三体》《活着》"]], "bad": "不知道",
                        "golden": "《活着》"},
            "system": {"prompt": "你是谁", "system": "你是客服小美", "bad": "我是 AI", "golden": "我是客服小美"},
            "Tag": {"prompt": "帮我写个请假条", "bad": "不行", "golden": "好的：……", "Tag": "拒答过度"},
            "catgory": {"prompt": "请假条", "bad": "不行", "golden": "好的：……", "catgory": "拒答过度"}}  # fmt: skip
    for key, row in rows.items():
        f = tmp_path / f"{key}.jsonl"
        f.write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
        with pytest.raises(UserError, match=rf"^{re.escape(str(f))}:1: {key}: "):
            badcases.ingest([f])
    ok = tmp_path / "ok.jsonl"  # negative control: empty context cells and id-like columns are fine
    row = {"prompt": "帮我写个请假条", "bad": "不行", "golden": "好的", "tag": "拒答", "input": "", "history": [],
           "prompt_id": 7, "time": "2026-12-01"}  # fmt: skip
    ok.write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
    [case] = badcases.ingest([ok])
    assert (case.prompt, case.tag) == ("帮我写个请假条", "拒答")


def test_paraphrases_wrapped_in_an_object_are_read():
    """A teacher answering {"paraphrases": [...]} (an object, as many do when asked for JSON) gave no paraphrase: the
    object was one item whose first string value was sought, and the case counted as short of --augment."""
    wrapped = json.dumps(
        {"paraphrases": ["退货运费是谁承担？", "退货的邮费谁付？", "退货运费谁出？"]}, ensure_ascii=False
    )
    assert badcases.paraphrases(wrapped, "退货运费谁出？", 4) == ["退货运费是谁承担？", "退货的邮费谁付？"]
    # control: a plain array, and an object with two lists (which one is meant is unclear: nothing taken from it)
    assert badcases.paraphrases('["换个说法"]', "原问题", 4) == ["换个说法"]
    assert badcases.paraphrases('{"a": ["x"], "b": ["y"]}', "原问题", 4) == []
