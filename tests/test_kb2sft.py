"""kb2sft end to end: chunkers, a scripted teacher that answers from the chunk, real `weitiao serve`."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import pytest
import typer
from loopback import running
from test_teacher import free_port_url, scripted_app, serve_url  # noqa: F401 (fixture)
from typer.testing import CliRunner

from weitiao.data.formats import load_conversations
from weitiao.dataeng import kb2sft
from weitiao.dataeng.chunk import (
    ChunkSpec,
    by_fixed,
    by_heading,
    by_paragraph,
    by_semantic,
    chunk_docs,
    collect_docs,
    sentences,
)
from weitiao.dataeng.commands import register
from weitiao.dataeng.similarity import grounding_score, near_duplicates, normalize, tfidf
from weitiao.demo import DEMO_DIR
from weitiao.errors import UserError
from weitiao.teacher import Teacher

KB = DEMO_DIR / "kb"
FAKE = {"question": "公司的首席执行官是谁？", "answer": "张三丰担任首席执行官多年"}


def chunk_of(body: dict) -> str:
    return body["messages"][-1]["content"].split("【资料】\n", 1)[1]


def first_sentences(chunk: str, k: int = 2) -> list[str]:
    return [s for s in re.split(r"(?<=。)", chunk) if s.strip()][:k]


def answer_from_chunk(body: dict) -> tuple[int, str]:
    """Grounded QA from the chunk's first two sentences, one made-up pair, one repeated question, one malformed item;
    fenced JSON with trailing commas. Membership chunks get prose (no JSON)."""
    chunk = chunk_of(body)
    if "积分" in chunk:
        return 200, "抱歉，这段资料我暂时无法整理成问答。"
    sents = first_sentences(chunk)
    qas = [{"question": f"关于“{s.strip()}”能具体说说吗？", "answer": s.strip()} for s in sents]
    qas += [FAKE, dict(qas[0]), {"question": "只有问题没有答案？"}]  # the last one is malformed
    body_json = json.dumps(qas, ensure_ascii=False, indent=1).replace("}\n]", "},\n]")
    return 200, f"好的，下面是问答：\n```json\n{body_json}\n```"


def expected(chunks: list[dict]) -> dict:
    """Hand accounting for `answer_from_chunk` on these chunks."""
    normal = [c for c in chunks if "积分" not in c["text"]]
    k = sum(len(first_sentences(c["text"])) for c in normal)
    return {"parse_failed": len(chunks) - len(normal), "qa_parsed": k + 2 * len(normal),
            "rejected_grounding": len(normal), "deduped": len(normal), "kept": k}  # fmt: skip


def test_similarity_measures():
    assert normalize("ＡＢＣ， 你 好！") == "abc你好"
    assert grounding_score("整机保修3年", "净水器整机保修 3 年，滤芯不保修。") == 1.0
    assert grounding_score("保修十年", "整机保修 3 年") == pytest.approx(1 / 3)  # 保修 of 保修/修十/十年
    assert grounding_score("保修2025年", "保修 2024 年") == pytest.approx(1 / 3)  # a number is one unit: 保修 only
    src = "The Q3 purifier has a three-year warranty on the unit. Filters are not covered and must be replaced."
    assert grounding_score("The unit has a three-year warranty.", src) == pytest.approx(5 / 6)
    # English answered against the chunk: word bigrams, not character bigrams (which any English text shares)
    wrong = "Filters are covered for ten years and never need replacing."
    assert grounding_score(wrong, src) == pytest.approx(1 / 9)
    old_char_bigrams = [normalize(wrong)[i : i + 2] for i in range(len(normalize(wrong)) - 1)]
    assert sum(g in normalize(src) for g in old_char_bigrams) / len(old_char_bigrams) > 0.5  # what it used to pass
    assert near_duplicates(["滤芯多久换一次？", "滤芯多久换一次呢？", "怎么安装？"], 0.6) == [None, 0, None]
    x, vocab = tfidf(["净水器", "净水器", "会员积分"])
    assert x.shape == (3, len(vocab)) and x[0] @ x[1] == pytest.approx(1.0) and x[0] @ x[2] == 0.0


def test_chunkers_on_demo_kb():
    text = (KB / "purifier_manual.md").read_text(encoding="utf-8")
    heads = by_heading(text, ChunkSpec(max_chars=10_000))
    assert [h for h, _ in heads] == [
        "青禾 Q3 厨下净水器 使用手册 > 产品简介",
        "青禾 Q3 厨下净水器 使用手册 > 安装 > 安装条件",
        "青禾 Q3 厨下净水器 使用手册 > 安装 > 安装步骤",
        "青禾 Q3 厨下净水器 使用手册 > 滤芯更换",
        "青禾 Q3 厨下净水器 使用手册 > 故障排查",
        "青禾 Q3 厨下净水器 使用手册 > 技术参数",
    ]
    assert all("#" not in body for _, body in heads)
    fixed = [b for _, b in by_fixed("一二三四五六七八九十" * 3, ChunkSpec(max_chars=12, overlap=4))]
    assert fixed == ["一二三四五六七八九十一二", "九十一二三四五六七八九十", "七八九十一二三四五六七八", "五六七八九十"]
    # semantic: two topics, two sentences each; the break falls between the topics
    two = "净水器滤芯需要定期更换。净水器滤芯更换很简单。会员积分可以兑换礼品。会员积分每年清零。"
    assert sentences(two)[2] == "会员积分可以兑换礼品。"
    sem = [b for _, b in by_semantic(two, ChunkSpec(max_chars=100, min_chars=5, percentile=40))]
    assert sem == ["净水器滤芯需要定期更换。净水器滤芯更换很简单。", "会员积分可以兑换礼品。会员积分每年清零。"]


def test_a_paragraph_over_max_chars_is_cut_at_sentence_ends():
    """Chinese documents often hold one long paragraph (single line breaks, no blank lines): it was cut every max_chars
    characters, splitting a model name from its price ("X3" | "1售价3147元"), so a question asked about the second
    chunk could name X1 and still ground. Now the cut falls after the last sentence end that fits."""
    text = "".join(f"第{i}条：星河手机X{i}售价{2000 + i * 37}元，电池{4000 + i * 11}毫安时。" for i in range(40))
    for chunker in (by_paragraph, by_heading):
        chunks = [b for _, b in chunker(text, ChunkSpec(max_chars=600))]
        assert len(chunks) > 1 and "".join(chunks) == text and all(len(c) <= 600 for c in chunks)
        assert all(c.startswith("第") and c.endswith("。") for c in chunks), [c[:10] for c in chunks]
    lines = "第一行的说明\n" * 40  # a line break ends a sentence too
    chunks = [b for _, b in by_paragraph(lines, ChunkSpec(max_chars=100))]
    assert len(chunks) > 1 and all(c.startswith("第") and c.endswith("说明") for c in chunks)
    # one sentence longer than max_chars is still cut into windows
    assert [len(b) for _, b in by_paragraph("甲" * 250, ChunkSpec(max_chars=100))] == [100, 100, 50]


def test_a_short_last_paragraph_joins_the_chunk_before_it_and_no_text_is_lost_or_doubled():
    """`out[-2] = out[-2] + sep + out.pop()` assigned after the pop, to the chunk two before: three paragraphs of a
    section (the last under min_chars) came out as [second + third, second] — the first paragraph gone from the
    knowledge base, the second asked about twice — and a full chunk followed by a short paragraph ended in an IndexError
    traceback."""
    first, second, tail = "退货须知：" + "签收后七天内可退。" * 5, "换货须知：" + "质量问题包换。" * 7, "联系客服。"
    text = f"{first}\n\n{second}\n\n{tail}"
    for chunker in (by_paragraph, by_heading):
        chunks = [b for _, b in chunker(text, ChunkSpec(max_chars=60, min_chars=20))]
        assert chunks == [first, f"{second}\n\n{tail}"], chunks
        two = [b for _, b in chunker("甲。" * 30 + "\n\n乙。", ChunkSpec(max_chars=60, min_chars=20))]
        assert two == ["甲。" * 30 + "\n\n乙。"], two


def test_a_comment_in_a_code_block_is_no_heading_and_skipped_files_are_listed(tmp_path):
    from weitiao.dataeng.chunk import skipped_docs

    text = "# 安装\n先装依赖：\n\n```bash\n# 这不是标题，是 shell 注释\npip install x\n```\n\n# 使用\n运行即可。"
    heads = [h for h, _ in by_heading(text, ChunkSpec(max_chars=10_000, min_chars=1))]
    assert heads == ["安装", "使用"]  # negative control: the real headings still split
    (tmp_path / "kb").mkdir()
    for name in ("a.md", "access.html", "parking.json", ".DS_Store"):
        (tmp_path / "kb" / name).write_text("x", encoding="utf-8")
    assert [f.name for f in skipped_docs([tmp_path / "kb"])] == ["access.html", "parking.json"]
    assert [f.name for f in collect_docs([tmp_path / "kb"])] == ["a.md"]


def test_chunk_docs_errors_and_docx(tmp_path):
    with pytest.raises(UserError, match="not found"):
        collect_docs([tmp_path / "nope.md"])
    (tmp_path / "a.csv").write_text("x")
    with pytest.raises(UserError, match="unsupported"):
        collect_docs([tmp_path / "a.csv"])
    (tmp_path / "empty.md").write_text("\n\n", encoding="utf-8")
    (tmp_path / "u.txt").write_bytes("售后热线每天早上8点到晚上10点。".encode("utf-8-sig"))
    chunks, empty = chunk_docs(collect_docs([tmp_path / "empty.md", tmp_path / "u.txt"]), ChunkSpec("paragraph"))
    assert empty == [str(tmp_path / "empty.md")] and chunks[0].text.startswith("售后热线")
    (tmp_path / "u.txt").write_bytes("售后热线每天早上8点到晚上10点。".encode("gb18030"))  # as every reader: refused
    with pytest.raises(UserError, match=r"u\.txt:1: not UTF-8 but GB18030/GBK .*`iconv -f gb18030"):
        chunk_docs(collect_docs([tmp_path / "u.txt"]), ChunkSpec("paragraph"))
    docx = pytest.importorskip("docx")
    d = docx.Document()
    d.add_heading("退货", level=1)
    d.add_paragraph("签收后七天内可以无理由退货。")
    d.save(tmp_path / "p.docx")
    (c,), _ = chunk_docs([tmp_path / "p.docx"], ChunkSpec("heading"))
    assert (c.heading, c.text) == ("退货", "签收后七天内可以无理由退货。")


@pytest.fixture
def kb_teacher(tmp_path):
    app = scripted_app(answer_from_chunk)
    with running(app) as url:
        yield app, Teacher(url + "/v1", "t", cache_dir=tmp_path / "cache", backoff=0.01)


def test_kb2sft_end_to_end_accounting_and_outputs(kb_teacher, tmp_path):
    app, teacher = kb_teacher
    cfg = kb2sft.KBConfig(ChunkSpec("heading", max_chars=300), eval_fraction=0.25)
    s = kb2sft.run([KB], tmp_path / "out", teacher, cfg, progress=False)
    chunks = [json.loads(line) for line in (tmp_path / "out/chunks.jsonl").open(encoding="utf-8")]
    assert s["chunks"] == len(chunks) == len(app.state.log) and s["teacher_failed"] == 0
    assert {k: s[k] for k in expected(chunks)} == expected(chunks)
    assert s["kept"] == s["train"] + s["eval"] and s["eval"] > 0
    # outputs load unchanged in the SFT loader; no chunk is in both splits
    train = load_conversations(str(tmp_path / "out/train.jsonl")).rows
    evals = load_conversations(str(tmp_path / "out/eval.jsonl")).rows
    assert (len(train), len(evals)) == (s["train"], s["eval"])
    rows = [json.loads(line) for f in ("train", "eval") for line in (tmp_path / f"out/{f}.jsonl").open()]
    by_split = {f: {json.loads(line)["meta"]["chunk_id"] for line in (tmp_path / f"out/{f}.jsonl").open()}
                for f in ("train", "eval")}  # fmt: skip
    assert not by_split["train"] & by_split["eval"]
    text = {c["chunk_id"]: c["text"] for c in chunks}
    assert all(r["messages"][1]["content"] in text[r["meta"]["chunk_id"]] for r in rows)
    assert all(r["meta"]["score"] == 1.0 for r in rows)
    review = (tmp_path / "out/review.csv").read_text(encoding="utf-8")
    assert review.startswith("\ufeff")
    table = list(csv.DictReader(review[1:].splitlines()))
    assert len(table) == s["kept"] and {t["split"] for t in table} == {"train", "eval"}
    reasons = [json.loads(line)["reason"] for line in (tmp_path / "out/rejects.jsonl").open()]
    assert reasons.count("grounding") == s["rejected_grounding"] and reasons.count("parse") == s["parse_failed"]
    assert reasons.count("malformed") == s["items_malformed"] == len(chunks) - s["parse_failed"] > 0  # kept, not lost
    # re-run: every reply comes from the cache
    s2 = kb2sft.run([KB], tmp_path / "out2", teacher, cfg, progress=False)
    assert s["from_cache"] == 0 and s2["from_cache"] == s["chunks"]
    assert len(app.state.log) == s["chunks"] and s2 == {**s, "out": str(tmp_path / "out2"), "from_cache": s["chunks"]}


def test_kb2sft_partial_failure_resumes(tmp_path):
    def flaky(body: dict) -> tuple[int, str]:
        return (400, "refused") if "售后" in chunk_of(body) else answer_from_chunk(body)

    cfg = kb2sft.KBConfig(ChunkSpec("paragraph", max_chars=200))
    app = scripted_app(flaky)
    with running(app) as url:
        s = kb2sft.run([KB], tmp_path / "o", Teacher(url + "/v1", "t", cache_dir=tmp_path / "c"), cfg, progress=False)
    assert 0 < s["teacher_failed"] < s["chunks"] and s["answered"] == s["chunks"] - s["teacher_failed"]
    app = scripted_app(answer_from_chunk)
    with running(app) as url:
        s2 = kb2sft.run([KB], tmp_path / "o", Teacher(url + "/v1", "t", cache_dir=tmp_path / "c"), cfg, progress=False)
    assert len(app.state.log) == s["teacher_failed"] and s2["teacher_failed"] == 0
    chunks = [json.loads(line) for line in (tmp_path / "o/chunks.jsonl").open(encoding="utf-8")]
    assert {k: s2[k] for k in expected(chunks)} == expected(chunks)


def test_kb2sft_bad_input(tmp_path):
    t = Teacher(free_port_url(), "t", retries=1, backoff=0.01, cache_dir=tmp_path / "c")
    with pytest.raises(UserError, match="not found"):
        kb2sft.run([tmp_path / "missing.md"], tmp_path / "o", t, kb2sft.KBConfig(), progress=False)
    (tmp_path / "empty.md").write_text("", encoding="utf-8")
    with pytest.raises(UserError, match="empty"):
        kb2sft.run([tmp_path / "empty.md"], tmp_path / "o", t, kb2sft.KBConfig(), progress=False)
    with pytest.raises(UserError, match=r"127\.0\.0\.1.*cannot connect"):
        kb2sft.run([KB], tmp_path / "o", t, kb2sft.KBConfig(), progress=False)
    with pytest.raises(UserError, match=r"\{chunk\}"):
        kb2sft.run([KB], tmp_path / "o", t, kb2sft.KBConfig(prompt="出{n}个问答"), progress=False)
    with pytest.raises(UserError, match="--eval-fraction 1.0: out of range"):
        kb2sft.run([KB], tmp_path / "o", t, kb2sft.KBConfig(eval_fraction=1.0), progress=False)
    # the message named --row-format, which the CLI does not have (its flag is --format)
    with pytest.raises(UserError, match="^--format jsonl: use messages or alpaca$"):
        kb2sft.run([KB], tmp_path / "o", t, kb2sft.KBConfig(row_format="jsonl"), progress=False)


def test_kb2sft_real_serve_malformed_json_is_counted(serve_url, tmp_path):  # noqa: F811
    t = Teacher(serve_url + "/v1", "tiny", cache_dir=tmp_path / "c", max_tokens=12, temperature=0.0)
    cfg = kb2sft.KBConfig(ChunkSpec("fixed", max_chars=30, overlap=0), prompt="{chunk}\n出{n}个问答，JSON：")
    (tmp_path / "kb.md").write_text((KB / "faq.md").read_text(encoding="utf-8")[:100], encoding="utf-8")
    with pytest.raises(
        UserError, match=r"no QA pair kept \(0 parsed, 0 malformed items, 0 below --min-grounding 0\.5, 4 replies not"
    ):
        kb2sft.run([tmp_path / "kb.md"], tmp_path / "o", t, cfg, progress=False)
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())  # no empty train/eval files


def test_cli_kb2sft(kb_teacher, tmp_path):
    app, teacher = kb_teacher
    cli, data = typer.Typer(), typer.Typer()
    cli.add_typer(data, name="data")
    register(data, cli)
    args = ["data", "kb2sft", str(KB / "faq.md"), "--out", str(tmp_path / "o"), "--teacher-url", teacher.base_url,
            "--cache-dir", str(tmp_path / "c"), "--eval-fraction", "0", "--format", "alpaca",
            "--system", "你是客服"]  # fmt: skip
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    chunks = [json.loads(line) for line in (tmp_path / "o/chunks.jsonl").open(encoding="utf-8")]
    k = expected(chunks)["kept"]
    assert k == 9 and f"{k} = {k} + 0" in r.output  # 5 FAQ answers: four of two sentences, one of one
    rows = load_conversations(str(tmp_path / "o/train.jsonl"))
    assert rows.format == "alpaca" and len(rows.rows) == 9
    assert rows.rows[0].messages[0] == {"role": "system", "content": "你是客服"}
    assert "eval.jsonl is empty" not in " ".join(r.output.split())  # --eval-fraction 0 asked for none
    # one chunk cannot be split by chunk: an eval fraction asked for came back as an empty eval.jsonl in silence
    one = tmp_path / "one.md"
    one.write_text("# 退货\n签收后七天内可以无理由退货。商品需保持完好。", encoding="utf-8")
    args[2], args[4], args[10] = str(one), str(tmp_path / "o2"), "0.5"
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0 and " + 0 (0 eval chunks)" in r.output, r.output
    assert "--eval-fraction 0.5, but every kept QA pair comes from one chunk" in " ".join(r.output.split())


def test_semantic_chunker_with_local_embedding_model(tiny_model_dir):
    text = "净水器滤芯需要定期更换。净水器滤芯更换很简单。会员积分可以兑换礼品。会员积分每年清零。"
    spec = ChunkSpec(max_chars=100, min_chars=5, percentile=40, embed_model=str(tiny_model_dir))
    pieces = [b for _, b in by_semantic(text, spec)]
    assert "".join(pieces) == text and len(pieces) >= 2  # random weights: where it cuts is arbitrary
    with pytest.raises(UserError, match="cannot load"):
        by_semantic(text, ChunkSpec(embed_model=str(tiny_model_dir) + "-missing"))


def test_no_qa_pair_kept_is_an_error_not_an_empty_success(kb_teacher, tmp_path):
    """A teacher whose every answer is ungrounded leaves nothing to train: a non-zero exit naming the counts and a
    rejects file to look at (it exited 0 with empty train/eval files; then it exited 1 but still replaced an earlier
    run's train/eval in the same --out with empty ones). Now the earlier run stays byte for byte."""
    _, good = kb_teacher
    kb2sft.run([KB], tmp_path / "o", good, kb2sft.KBConfig(), progress=False)
    before = {f.name: f.read_bytes() for f in (tmp_path / "o").iterdir()}
    assert json.loads(before["summary.json"])["kept"] > 0
    app = scripted_app(lambda body: (200, json.dumps([FAKE], ensure_ascii=False)))
    with running(app) as url:
        teacher = Teacher(url + "/v1", "t", cache_dir=tmp_path / "c")
        with pytest.raises(
            UserError, match=r"no QA pair kept \(\d+ parsed, \d+ malformed items, \d+ below --min-grounding 0\.5"
        ) as e:
            kb2sft.run([KB], tmp_path / "o", teacher, kb2sft.KBConfig(), progress=False)
    assert "nothing written there" in str(e.value)
    parsed = int(re.search(r"\((\d+) parsed", str(e.value))[1])
    aside = Path(re.search(r"the rejects are in (\S+\.jsonl)", str(e.value))[1])
    assert parsed > 0 and aside.read_text(encoding="utf-8").count('"grounding"') == parsed
    aside.unlink()
    assert {f.name: f.read_bytes() for f in (tmp_path / "o").iterdir()} == before


def test_a_rerun_no_chunk_of_which_is_answered_leaves_the_earlier_outputs_whole(kb_teacher, tmp_path):
    """A rerun into the same --out whose teacher is down wrote a new chunks.jsonl beside the earlier run's train, eval
    and summary (summary.json's chunk count no longer matched chunks.jsonl): now it writes nothing."""
    _, teacher = kb_teacher
    kb2sft.run([KB], tmp_path / "o", teacher, kb2sft.KBConfig(), progress=False)
    before = {f.name: f.read_bytes() for f in (tmp_path / "o").iterdir()}
    (tmp_path / "one.md").write_text("# 新文档\n只有一段话。", encoding="utf-8")
    down = Teacher(free_port_url(), "t", retries=1, backoff=0.01, cache_dir=tmp_path / "c2")
    with pytest.raises(UserError, match="no chunk answered, nothing written$"):
        kb2sft.run([tmp_path / "one.md"], tmp_path / "o", down, kb2sft.KBConfig(), progress=False)
    assert {f.name: f.read_bytes() for f in (tmp_path / "o").iterdir()} == before
    with pytest.raises(UserError, match="no chunk answered"):
        kb2sft.run([tmp_path / "one.md"], tmp_path / "o2", down, kb2sft.KBConfig(), progress=False)
    assert not (tmp_path / "o2/chunks.jsonl").exists()


def test_files_in_hidden_folders_are_left_out_and_listed(tmp_path):
    """A notes app's .trash/ holds deleted notes (stale facts), .github/ holds templates: they were read as knowledge;
    they are now listed as skipped. A folder given by a hidden path is still read, and so is a hidden file given."""
    from weitiao.dataeng.chunk import skipped_docs

    kb = tmp_path / ".notes" / "kb"
    for name in ("a.md", ".trash/old.md", ".github/ISSUE.md", "sub/b.txt"):
        (kb / name).parent.mkdir(parents=True, exist_ok=True)
        (kb / name).write_text("退货政策：七天无理由。", encoding="utf-8")
    assert [f.relative_to(kb).as_posix() for f in collect_docs([kb])] == ["a.md", "sub/b.txt"]
    assert [f.relative_to(kb).as_posix() for f in skipped_docs([kb])] == [".github/ISSUE.md", ".trash/old.md"]
    assert collect_docs([kb / ".trash/old.md"]) == [kb / ".trash/old.md"]


def test_a_prompt_file_not_in_utf8_is_one_line_naming_it(tmp_path):
    """A GBK --prompt file crashed with a UnicodeDecodeError traceback."""
    (tmp_path / "p.txt").write_bytes("根据{chunk}出{n}个问答".encode("gbk"))
    cli, data = typer.Typer(), typer.Typer()
    cli.add_typer(data, name="data")
    register(data, cli)
    args = ["data", "kb2sft", str(KB / "faq.md"), "--out", str(tmp_path / "o"), "--prompt", str(tmp_path / "p.txt"),
            "--teacher-url", free_port_url()]  # fmt: skip
    r = CliRunner().invoke(cli, args)
    assert isinstance(r.exception, UserError)
    assert f"{tmp_path / 'p.txt'}:1: not UTF-8 but GB18030/GBK" in str(r.exception)


def test_review_csv_cells_a_spreadsheet_would_run_as_formulas_are_quoted():
    """A chunk or teacher reply starting `=HYPERLINK(...)` opened in Excel as a live formula (CSV injection): a
    cell starting with = + - @ tab or CR now gets OWASP's leading quote; other text is written byte for byte."""
    from weitiao.dataeng.chunk import Chunk

    def sheet(qa):
        return list(csv.reader(kb2sft.review_csv([qa], [])[1:].splitlines(keepends=True)))[1]

    evil = kb2sft.QA("=HYPERLINK(\"http://x\",\"点我\")", "+1+cmd|' /C calc'!A0",
                     Chunk("@SUM(A1)", "@SUM(A1)#0", "\t=1+1\n正文", "-2+3"), 0.5)  # fmt: skip
    assert sheet(evil) == ["train", "'@SUM(A1)", "'@SUM(A1)#0", "'-2+3", "0.500", "'=HYPERLINK(\"http://x\",\"点我\")",
                           "'+1+cmd|' /C calc'!A0", "'\t=1+1\n正文", ""]  # fmt: skip
    assert sheet(kb2sft.QA("问", "\r=1", Chunk("d", "d#0", "t")))[6] == "'\r=1"
    wide = sheet(kb2sft.QA('＝HYPERLINK("http://x")', "＋1", Chunk("＠d", "＠d#0", "－1", "ｘ＝1")))
    assert wide[1:4] == ["'＠d", "'＠d#0", "ｘ＝1"] and wide[5:8] == ['\'＝HYPERLINK("http://x")', "'＋1", "'－1"]
    chunk = Chunk("员工手册.md", "员工手册.md#3", "“年假”\n5 天", "假期 > 年假")
    plain = kb2sft.QA("年假有几天？", "入职满一年 5 天，a=b 也行", chunk, 1.0)
    buf = io.StringIO()
    csv.writer(buf).writerows([["split", "doc", "chunk_id", "heading", "score", "question", "answer", "chunk", "ok"],
                               ["eval", "员工手册.md", "员工手册.md#3", "假期 > 年假", "1.000", "年假有几天？",
                                "入职满一年 5 天，a=b 也行", "“年假”\n5 天", ""]])  # fmt: skip
    assert kb2sft.review_csv([], [plain]) == "\ufeff" + buf.getvalue()  # normal text: as before, BOM and all


def test_docx_tables_are_read_in_document_order(tmp_path):
    """A .docx knowledge base lost its tables (price lists, specs): python-docx's `paragraphs` leaves them out, so no
    QA was ever asked about them, silently. Rows are lines of cells joined by " | ", a merged cell once."""
    docx = pytest.importorskip("docx")
    d = docx.Document()
    d.add_heading("运费", level=1)
    d.add_paragraph("运费按会员等级收取：")
    t = d.add_table(rows=3, cols=2)
    for i, (a, b) in enumerate([("会员等级", "运费"), ("白银", "10元"), ("钻石  会员", "免运费")]):
        t.cell(i, 0).text, t.cell(i, 1).text = a, b
    t.cell(0, 0).merge(t.cell(0, 1)).text = "会员运费表"
    d.add_heading("保修", level=1)
    d.add_paragraph("电子产品保修一年。")
    d.save(tmp_path / "p.docx")
    a, b = chunk_docs([tmp_path / "p.docx"], ChunkSpec("heading"))[0]
    assert (a.heading, a.text) == ("运费", "运费按会员等级收取：\n\n会员运费表\n白银 | 10元\n钻石 会员 | 免运费")
    assert (b.heading, b.text) == ("保修", "电子产品保修一年。")


def test_semantic_chunks_keep_line_breaks_and_max_chars():
    """The semantic chunker glued lines together ("open the app" + "Step two" → "appStep", an English word no answer
    grounds on) and kept a sentence over --max-chars whole (a page without 。 was one chunk of any size)."""
    steps = "# Refund\nStep one: open the app\nStep two: tap Settings\n退款三到五天到账。It opens! Then tap."
    ((_, text),) = by_semantic(steps, ChunkSpec(max_chars=600, min_chars=600))  # one chunk: no cut
    assert text == "Refund\nStep one: open the app\nStep two: tap Settings\n退款三到五天到账。It opens! Then tap."
    assert grounding_score("open the app", text) == 1.0
    long = "会员积分规则说明" * 50 + "。积分一年有效。"
    pieces = [b for _, b in by_semantic(long, ChunkSpec(max_chars=100, min_chars=5))]
    assert max(map(len, pieces)) <= 100 and "".join(pieces) == long


def test_semantic_chunks_keep_headings_and_code_blocks_verbatim():
    """The semantic chunker dropped heading lines ("## 退款规则" gone, and the section's topic with it) and cut a fenced
    code block into sentences: its indentation and blank line went, and its `# comment` line was read as a heading and
    dropped. Headings now stay as their words, open a section (a break once the chunk holds min_chars) and label the
    chunks after them; a code block is one piece, as written."""
    code = "```python\nimport os\n# 读取密钥\ndef key():\n    k = os.environ.get('K')\n\n    return k\n```"
    doc = f"# 会员手册\n\n## 积分规则\n积分一年有效。消费一元得一分。\n\n## 接口示例\n{code}\n调用前先登录。"
    ((heading, text),) = by_semantic(doc, ChunkSpec(max_chars=600, min_chars=600))  # one chunk: no cut
    assert heading == "会员手册"
    assert text == f"会员手册\n积分规则\n积分一年有效。消费一元得一分。\n接口示例\n{code}\n调用前先登录。"
    chunks = by_semantic(doc, ChunkSpec(max_chars=600, min_chars=10, percentile=0))
    assert chunks[0] == ("会员手册", "会员手册\n积分规则\n积分一年有效。消费一元得一分。")  # no break before 积分规则
    assert ("会员手册 > 接口示例", f"接口示例\n{code}") in chunks  # a break before 接口示例; the block whole


def test_a_damaged_pdf_or_docx_is_one_line_naming_it(tmp_path):
    """A truncated PDF ended kb2sft in pypdf's PdfStreamError traceback, a .docx that is no zip in python-docx's."""
    from weitiao.dataeng.chunk import read_doc

    pytest.importorskip("pypdf")
    pytest.importorskip("docx")
    (tmp_path / "手册.pdf").write_bytes(b"%PDF-1.4 cut off here")
    (tmp_path / "说明.docx").write_bytes(b"PK not a zip")
    for name in ("手册.pdf", "说明.docx"):
        with pytest.raises(UserError, match=re.escape(f"{name}: not a readable .{name.rsplit('.', 1)[1]} (")):
            read_doc(tmp_path / name)


def test_a_document_named_twice_is_refused(tmp_path):
    """`kb2sft kb kb/a.md` read a.md twice: its chunks were asked twice (a real teacher's second answers kept beside
    the first) and its QA pairs weighed double in train.jsonl, silently."""
    (kb := tmp_path / "kb").mkdir()
    (kb / "a.md").write_text("退货七天内申请。", encoding="utf-8")
    (kb / "b.md").write_text("换货十五天内申请。", encoding="utf-8")
    with pytest.raises(UserError, match=r"a\.md: named twice, by .*kb and by .*kb/a\.md; name each document once"):
        collect_docs([kb, kb / "a.md"])
    with pytest.raises(UserError, match="named twice"):
        collect_docs([kb / "b.md", tmp_path / "." / "kb" / "b.md"])
    assert collect_docs([kb / "a.md", kb / "b.md"]) == [kb / "a.md", kb / "b.md"]  # negative control


def test_a_single_pair_with_a_list_field_is_that_pair_not_a_wrapper():
    """A teacher reply of one QA object with a list-valued field (`keywords`, `sources`) was read as a wrapper
    ({"qa": [...]}) around that list: the pair was lost and each keyword counted as a malformed item, and the run with
    no pair kept said '0 parsed' without naming them. Now an object holding a question and an answer is that pair;
    the no-pair line counts the malformed items."""
    one = {"question": "几点开门？", "answer": "九点开门", "keywords": ["营业时间", "开门"]}
    assert kb2sft.qa_items(one) == ([("几点开门？", "九点开门")], [])
    assert kb2sft.qa_items({"qa": [FAKE], "note": "…"}) == ([(FAKE["question"], FAKE["answer"])], [])  # a wrapper
    assert kb2sft.qa_items({"items": [FAKE, {"q": "x"}]}) == ([(FAKE["question"], FAKE["answer"])], [{"q": "x"}])
