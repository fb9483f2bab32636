"""Reply metrics: repetition (hand-computed), ROUGE-L/BLEU/exact match, judge over real HTTP."""

from __future__ import annotations

import math

import pytest

from weitiao.eval.repetition import Loop, copy_of_history_rate, distinct_n, loop_span, ngram_loop, units

# --- repetition -------------------------------------------------------------------------------


def test_units_split_cjk_words_and_punctuation():
    assert units("我爱NLP! GPT-4 很好") == ["我", "爱", "NLP", "!", "GPT", "-", "4", "很", "好"]


def test_units_and_length_keep_an_emoji_whole():
    """An emoji with its skin tone, VS16 or ZWJ-joined parts, a flag and a keycap are one unit and one character: split
    into code points, the ZWJ and VS16 became units of their own that every such emoji shared (distinct-1 of
    ["好👍🏽", "谢👍🏽"] read 4/6 instead of 3/4) and a family emoji was 5 characters of mean_len."""
    from weitiao.eval.style import chars

    family, thumb, flag, keycap, smile = "👨\u200d👩\u200d👧", "👍🏽", "🇨🇳", "1\ufe0f\u20e3", "☺\ufe0f"
    text = f"{family} {thumb}{flag}{keycap}{smile}好!"
    assert units(text) == [family, thumb, flag, keycap, smile, "好", "!"]
    assert distinct_n(["好👍🏽", "谢👍🏽"], 1) == pytest.approx(3 / 4)
    assert chars(text) == 8 and chars("今天 OK") == len("今天 OK")
    assert reply_metrics([Item(f"好的{thumb}"), Item(family)])["mean_len"] == pytest.approx((3 + 1) / 2)


def test_distinct_n_hand_values():
    # units 我 爱 你 | 我 爱 他: 6 unigrams, 4 distinct; bigrams 我爱 爱你 我爱 爱他: 4, 3 distinct
    assert distinct_n(["我爱你", "我爱他"], 1) == pytest.approx(4 / 6)
    assert distinct_n(["我爱你", "我爱他"], 2) == pytest.approx(3 / 4)
    # n-grams never cross texts: "我" + "爱" gives no bigram
    assert distinct_n(["我", "爱"], 2) == 0.0
    assert distinct_n(["I love NLP 我爱NLP!"], 1) == pytest.approx(6 / 7)


def test_copy_of_history_rate_hand_values():
    # reply has 11 chars -> 8 char 4-grams; 今天天气 天天气很 天气很好 are in the history
    assert copy_of_history_rate("今天天气很好我们去公园", ["今天天气很好", "别的"], n=4) == pytest.approx(3 / 8)
    assert copy_of_history_rate("今天 天气很好我们去 公园", ["今天天气 很好"], n=4) == pytest.approx(3 / 8)
    assert copy_of_history_rate("短", ["长一点的"], n=4) == 0.0
    assert copy_of_history_rate("完全不同的一句话", [], n=4) == 0.0
    assert copy_of_history_rate("abcdefgh", ["xxabcdefghxx"], n=8) == 1.0


def test_copy_of_history_counts_short_exact_repeats():
    # "在的" answered again and again: 2 characters, no 8-gram, but a whole-turn copy
    history = ["在吗", "在的", "还在吗", "在的。"]
    assert copy_of_history_rate("在的", history) == 1.0
    assert copy_of_history_rate(" 在的！", history) == 1.0  # spacing and end punctuation aside
    assert copy_of_history_rate("在呢", history) == 0.0  # a different short reply is no copy
    assert copy_of_history_rate("在", history) == 0.0  # a substring of a turn is not a whole-turn repeat
    assert copy_of_history_rate("。", ["。"]) == 0.0  # nothing left after stripping: not a copy


def test_ngram_loop_periods_and_span():
    assert loop_span("的的的的的的", n=4, min_repeats=3) == Loop(start=0, end=6, period=1, repeats=6)
    assert not ngram_loop("的的的的的")  # only two 4-grams one apart: 5 units
    assert not ngram_loop("哈哈哈")
    assert loop_span("我是AI。我是AI。我是AI。") == Loop(start=0, end=15, period=4, repeats=3)
    assert not ngram_loop("我是AI。我是AI。")  # two repeats only
    assert loop_span("你好。的的的的的的结束") == Loop(start=3, end=9, period=1, repeats=6)
    assert not ngram_loop("今天天气很好，我们去公园散步吧。")
    assert ngram_loop("我是AI。我是AI。", min_repeats=2)


# --- overlap metrics ----------------------------------------------------------------------------

from weitiao.eval.metrics import (  # noqa: E402
    Item,
    MetricSettings,
    bleu,
    exact_match,
    item_metrics,
    judge_scores,
    lcs_length,
    parse_score,
    reply_metrics,
    rouge_l,
    sentence_bleu,
)


def test_rouge_l_hand_values():
    assert lcs_length(list("ABCBDAB"), list("BDCABA")) == 4  # the textbook (CLRS) example
    # 我爱北京天安门 vs 我爱天安门广场: LCS 我爱天安门 = 5 of 7 and 7 -> P = R = F = 5/7
    assert rouge_l("我爱北京天安门", "我爱天安门广场") == pytest.approx(5 / 7)
    # 今天天气好 (5) vs 天气 (2): LCS 2, P = 2/5, R = 1, F = 2·0.4·1/1.4
    assert rouge_l("今天天气好", "天气") == pytest.approx(2 * 0.4 / 1.4)
    assert rouge_l("完全无关", "别的东西") == 0.0
    assert rouge_l("", "参考") == 0.0


class _Chars:
    """Independent tokenizer for rouge-score: every non-space character is a token."""

    def tokenize(self, text):
        return [c for c in text if not c.isspace()]


PAIRS = [
    ("今天天气很好，我们去公园散步吧。", "今天天气不错，一起去公园走走吧！"),
    ("先炒蛋再炒番茄，最后加盐。", "先把鸡蛋炒好，再炒番茄，最后加点盐就好啦。"),
    ("推荐《流浪地球》这部电影", "《流浪地球》不错哦"),
    ("我不知道", "抱歉，我无法回答这个问题。"),
]


def test_rouge_l_matches_rouge_score_package():
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    zh = rouge_scorer.RougeScorer(["rougeL"], tokenizer=_Chars())
    for cand, ref in PAIRS:
        assert rouge_l(cand, ref) == pytest.approx(zh.score(ref, cand)["rougeL"].fmeasure, abs=1e-12)
    en = rouge_scorer.RougeScorer(["rougeL"])  # its own lower-case word tokenizer on plain English
    cand, ref = "the cat sat on the mat", "the cat is on the mat today"
    assert rouge_l(cand, ref) == pytest.approx(en.score(ref, cand)["rougeL"].fmeasure, abs=1e-12)


def test_bleu_matches_sacrebleu_zh():
    sacrebleu = pytest.importorskip("sacrebleu")
    cands, refs = [c for c, _ in PAIRS], [r for _, r in PAIRS]
    assert bleu(cands, refs) == pytest.approx(sacrebleu.corpus_bleu(cands, [refs], tokenize="zh").score / 100)
    for c, r in PAIRS + [("I like GPT models 很多", "I like GPT 很多 models")]:
        ref = sacrebleu.sentence_bleu(c, [r], tokenize="zh").score / 100
        assert sentence_bleu(c, r) == pytest.approx(ref, abs=1e-9), (c, r)


def test_bleu_mixed_script_matches_sacrebleu():
    # digits, Latin words, full- and half-width punctuation: sacrebleu's zh tokenizer, called directly
    sacrebleu = pytest.importorskip("sacrebleu")
    pairs = [
        ("价格是3.5元，对吗？", "价格是3.5元,对吧?"),
        ("Hello, world! 你好。", "Hello world 你好"),
        ("用户ID: abc-123，已更新。", "用户 ID：abc-123 已更新"),
        ("温度为-5°C（摄氏度）", "温度为 -5 °C (摄氏度)"),
    ]
    for c, r in pairs:
        assert sentence_bleu(c, r) == pytest.approx(sacrebleu.sentence_bleu(c, [r], tokenize="zh").score / 100)
    cands, refs = [c for c, _ in pairs], [r for _, r in pairs]
    assert bleu(cands, refs) == pytest.approx(sacrebleu.corpus_bleu(cands, [refs], tokenize="zh").score / 100)
    assert bleu([], []) == 0.0


def test_bleu_hand_value():
    # cand 猫坐在垫子上 vs ref 猫坐在垫子上了: p1..p4 = 1, BP = exp(1 - 7/6)
    assert bleu(["猫坐在垫子上"], ["猫坐在垫子上了"]) == pytest.approx(math.exp(1 - 7 / 6))
    assert bleu(["一二三"], ["四五六"]) == 0.0
    assert exact_match("  好的  明白 ", "好的 明白") and not exact_match("好的", "好的。")


def test_emoji_by_unicode_emoji_properties():
    """An emoji is what Unicode's emoji data says (UTS #51): the old code-point ranges missed ⌚ ⏰ ⬛ 1️⃣ ©️ ▶️ and counted
    text symbols (★☆ ratings, ✓ lists, ♪) in Chinese replies as emoji."""
    from weitiao.eval.style import has_emoji

    emoji = (
        "好的😊 👨\u200d👩\u200d👧 🇨🇳 👍🏽 ☺\ufe0f ☺ ❤ ✔ 1\ufe0f\u20e3 #\u20e3 ⌚ ⏰ ▶\ufe0f ⬅\ufe0f ©\ufe0f ™\ufe0f "
        "〽\ufe0f ㊗\ufe0f ⭐ 🀄 ‼\ufe0f"
    ).split()
    text = [
        "推荐指数：★★★★☆",
        "✓ 已完成",
        "♪ 哼歌",
        "→ 下一步",
        "①",
        "r5\ufe0f",
        "© 2024",
        "™",
        "‼",
        "【注意】※ ■ ● ◆ ○ △ ℃ …",
    ]
    assert [s for s in emoji if not has_emoji(s)] == []
    assert [s for s in text if has_emoji(s)] == []


def test_refusal_words_are_the_documented_ones():
    """refusal_rate is a keyword rate: the READMEs list its words and say that a helpful reply with one counts."""
    from pathlib import Path

    from weitiao.eval.style import REFUSAL, is_refusal

    assert is_refusal("不能熬夜哦，早点睡。")  # documented: a keyword rate, not a classifier
    root = Path(__file__).resolve().parents[1]
    for readme in ("README.md", "README_zh.md"):
        text = " ".join((root / readme).read_text(encoding="utf-8").split())
        assert "不能熬夜哦" in text and all(w in text for w in REFUSAL.pattern.split("|")), readme


def test_reply_metrics_hand_values():
    items = [
        Item("好的😊", True, reference="好的", history=[]),
        Item("抱歉，我不能帮你", False, reference="抱歉，我不能帮你"),
        Item("的的的的的的", True, history=["的的的的的的的的"]),
    ]
    m = reply_metrics(items)
    assert m["n"] == 3 and m["mean_len"] == pytest.approx((3 + 8 + 6) / 3)
    assert m["emoji_rate"] == pytest.approx(1 / 3) and m["refusal_rate"] == pytest.approx(1 / 3)
    assert m["stop_rate"] == pytest.approx(2 / 3) and m["loop_rate"] == pytest.approx(1 / 3)
    assert m["exact_match"] == 0.5  # only items with a reference count
    assert m["rougeL"] == pytest.approx((2 * (2 / 3) * 1 / (2 / 3 + 1) + 1.0) / 2)
    # copy-of-history only on the item with history: 6 chars < 8 -> no 8-grams -> 0
    assert m["copy_rate"] == 0.0 and "judge" not in m
    assert item_metrics(items[2])["loop"] == 1.0
    custom = reply_metrics(items, MetricSettings(refusal_pattern="好的"))
    assert custom["refusal_rate"] == pytest.approx(1 / 3)


def test_parse_score():
    assert parse_score('```json\n{"score": 10, "reason": "好"}\n```') == 1.0
    assert parse_score('分数如下 {"score": 4,}') == pytest.approx(3 / 9)
    for bad in ('{"reason": "x"}', '{"score": 11}', "没有 JSON"):
        with pytest.raises(ValueError):
            parse_score(bad)


# --- judge over real HTTP -------------------------------------------------------------------------


def scripted_judge(cap: int = 10):
    """A FastAPI judge: score = number of '好' in the reply under judgement (+1), capped at `cap`; 'BROKEN' → no
    JSON."""
    from fastapi import FastAPI

    app = FastAPI()

    @app.post("/v1/chat/completions")
    def chat(body: dict) -> dict:
        text = body["messages"][-1]["content"]
        reply = text.split("助手的回答：\n", 1)[1].split("\n\n参考答案", 1)[0]
        content = "我拒绝打分" if "BROKEN" in reply else f'```json\n{{"score": {min(cap, 1 + reply.count("好"))}}}\n```'
        return {
            "id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }  # fmt: skip

    return app


def test_judge_scores_over_loopback_http(tmp_path):
    from loopback import running

    from weitiao.teacher import Teacher

    with running(scripted_judge()) as base:
        t = Teacher(base + "/v1", "judge", cache_dir=tmp_path / "cache", retries=0)
        prompts = [[{"role": "user", "content": "你好"}]] * 3
        scores, errors = judge_scores(t, prompts, ["好好", "BROKEN", "不"], references=["好", None, None])
    assert scores == [pytest.approx(2 / 9), None, 0.0]
    assert len(errors) == 1 and errors[0].startswith("reply 1:")


def test_judge_scores_on_a_1_to_5_scale_over_http(tmp_path):
    """A 1-5 judge's top score read as 1-10 gave 0.44, and a 7 (off its scale) was averaged in; on scale (1, 5) a
    5 is 1.0 and a 7 is an error line, not a score."""
    from loopback import running

    from weitiao.teacher import Teacher

    with running(scripted_judge(cap=100)) as base:
        t = Teacher(base + "/v1", "judge", cache_dir=tmp_path / "cache", retries=0)
        prompts = [[{"role": "user", "content": "你好"}]] * 3
        scores, errors = judge_scores(t, prompts, ["好好好好", "好" * 6, "不"], scale=(1, 5))
    assert scores == [1.0, None, 0.0]
    assert errors == ["reply 1: judge score 7.0 outside [1, 5]"]


@pytest.mark.parametrize(
    "text, named",
    [
        ('按 1-5 分打分，只输出 JSON {"score": n}', (1, 5)),
        ("给出 1～5 分的整数", (1, 5)),
        ("score from 0 to 100", (0, 100)),
        ("满分 5 分", (1, 5)),
        ("rate it out of 5", (1, 5)),
        ("（1-10 的整数）", (1, 10)),
    ],
)
def test_check_rubric_scale_refuses_another_scale(text, named):
    from weitiao.errors import UserError
    from weitiao.eval.metrics import check_rubric_scale

    other = (1, 10) if named != (1, 10) else (1, 5)
    lo, hi = named
    with pytest.raises(UserError, match=rf"scores {lo}-{hi}, but they are read as {other[0]}-{other[1]}; add "
                                        rf"--score-scale {lo}-{hi}"):  # fmt: skip
        check_rubric_scale(text, other, "--rubric r.txt")
    assert check_rubric_scale(text, named, "--rubric r.txt") is True


def test_check_rubric_scale_ignores_what_is_not_a_score_range():
    from weitiao.eval.metrics import RUBRIC, check_rubric_scale

    for text in ("用 1-2 句话说明理由，打个分", "日期 2024-1-15 之后的数据", "第 11-20 条", '只输出 {"score": n}'):
        assert check_rubric_scale(text, (1, 10), "r") is False, text
    assert check_rubric_scale(RUBRIC, (1, 10), "r") is True  # the built-in rubric names its 1-10
    bands = "1-10 分：1-5 分表示不合格，6-10 分表示合格"  # bands inside a scale: the widest range is the scale
    assert check_rubric_scale(bands, (1, 10), "r") is True
    assert check_rubric_scale("1-5 分表示不合格，6-10 分表示合格", (1, 10), "r") is True


def test_check_rubric_scale_skips_ranges_of_other_units():
    """A rubric asking for 1-10 scores and a reply of 0-200 字 was refused with "add --score-scale 0-200", and
    following that read a perfect 10 as 0.05: a range followed by a unit (字, 个, 句, 岁, words) is no score range."""
    from weitiao.errors import UserError
    from weitiao.eval.metrics import check_rubric_scale

    for text in ('请按 1 到 10 分打分，回答长度 0-200 字为宜，只输出 {"score": n}', "打分 1-10；用户年龄 18-35 岁",
                 "score 1-10, answer in 1-3 sentences of 0-100 words", "1-10 分，列出 1-5 个要点"):  # fmt: skip
        assert check_rubric_scale(text, (1, 10), "r") is True, text
        with pytest.raises(UserError, match="asks for scores 1-10"):
            check_rubric_scale(text, (1, 5), "r")
    with pytest.raises(UserError, match="asks for scores 1-10"):  # 满分 10 still names the scale
        check_rubric_scale("满分 10 分，检查是否包含 1-5 个要点", (1, 5), "r")


# --- weitiao eval gen ------------------------------------------------------------------------------


def test_eval_gen_cli_on_tiny_model(tiny_model_dir, tokenizer, tmp_path):
    import json

    from conftest import write_jsonl
    from loopback import running
    from transformers import AutoModelForCausalLM
    from typer.testing import CliRunner

    from weitiao.data.templates import resolve_template
    from weitiao.eval.commands import eval_app
    from weitiao.infer.generate import generate

    prompts = write_jsonl(
        tmp_path / "p.jsonl",
        [
            {"instruction": "今天天气怎么样？", "output": "挺好的，大晴天"},
            {"prompt": "推荐一部电影吧"},
            {"messages": [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好呀"},
                          {"role": "user", "content": "周末有什么安排？"}]},
        ],
    )  # fmt: skip
    out = tmp_path / "eval.json"
    with running(scripted_judge()) as base:
        args = ["gen", "--model", str(tiny_model_dir), "--prompts", str(prompts), "--max-new-tokens", "12"]
        args += ["--judge-url", base + "/v1", "--judge-model", "j", "--out", str(out)]
        r = CliRunner().invoke(eval_app, args)
    assert r.exit_code == 0, r.output
    rep = json.loads(out.read_text())
    rows, m = rep["rows"], rep["metrics"]
    # the replies are exactly what greedy generation gives for those conversations
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    convs = [[{"role": "user", "content": "今天天气怎么样？"}], [{"role": "user", "content": "推荐一部电影吧"}],
             rows[2]["prompt"]]  # fmt: skip
    gens = generate(model, tokenizer, resolve_template(tokenizer), convs, max_new_tokens=12)
    assert [row["reply"] for row in rows] == [g.text for g in gens]
    assert [row["reference"] for row in rows] == ["挺好的，大晴天", None, None]
    assert m["n"] == 3 and m["stop_rate"] == pytest.approx(sum(g.stopped for g in gens) / 3)
    assert m["mean_len"] == pytest.approx(sum(len(g.text) for g in gens) / 3)
    assert m["rougeL"] == pytest.approx(rouge_l(gens[0].text, "挺好的，大晴天"))  # one reference
    assert "copy_rate" in m  # one multi-turn prompt
    # judge: the scripted judge scores 1 + count('好'), capped at 10, mapped to [0, 1]
    assert m["judge"] == pytest.approx(sum(min(10, 1 + g.text.count("好")) - 1 for g in gens) / 9 / 3)
    assert "judge" in r.output or "rougeL" in r.output
    note = "note: 2 of 3 prompts have no reference: ROUGE-L/BLEU/exact match over the others"
    assert note in " ".join(r.output.split())  # before: the missing references went unmentioned


def test_eval_gen_reads_a_1_to_5_rubric_on_its_own_scale(tiny_model_dir, tmp_path):
    """A rubric asking for 1-5 was read as 1-10 (a perfect 5 reported as judge 0.44). Without --score-scale it is
    refused in one line; with --score-scale 1-5 the JSON names the scale and judge = (score - 1) / 4."""
    import json

    from conftest import write_jsonl
    from loopback import running
    from typer.testing import CliRunner

    from weitiao.eval.commands import eval_app

    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "今天天气怎么样？"}, {"prompt": "推荐一部电影吧"}])
    rubric = tmp_path / "rubric5.txt"
    rubric.write_text('按 1-5 分给回答打分，5 分最好。只输出 JSON：{"score": 整数}', encoding="utf-8")
    out = tmp_path / "eval.json"
    args = ["gen", "--model", str(tiny_model_dir), "--prompts", str(prompts), "--max-new-tokens", "8"]
    with running(scripted_judge(cap=5)) as base:
        args += ["--judge-url", base + "/v1", "--rubric", str(rubric), "--out", str(out)]
        refused = CliRunner().invoke(eval_app, args)
        assert refused.exit_code == 1 and not out.exists()
        r = CliRunner().invoke(eval_app, [*args, "--score-scale", "1-5"])
    assert f"--rubric {rubric}: asks for scores 1-5, but they are read as 1-10; add --score-scale 1-5" in " ".join(
        str(refused.exception).split()
    )
    assert r.exit_code == 0, r.output
    rep = json.loads(out.read_text())
    assert rep["judge_scale"] == [1, 5] and rep["judge_errors"] == []
    want = [(min(5, 1 + row["reply"].count("好")) - 1) / 4 for row in rep["rows"]]
    assert [row["metrics"]["judge"] for row in rep["rows"]] == pytest.approx(want)
    assert rep["metrics"]["judge"] == pytest.approx(sum(want) / 2)
    assert "judge: scores 1-5 mapped to [0, 1]" in r.output


def test_eval_gen_repetition_controls(tiny_model_dir, tokenizer, tmp_path):
    import json

    from conftest import write_jsonl
    from transformers import AutoModelForCausalLM
    from typer.testing import CliRunner

    from weitiao.data.templates import resolve_template
    from weitiao.eval.commands import eval_app
    from weitiao.infer.generate import generate_ids

    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "你好"}, {"prompt": "讲个故事"}])
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    convs = [[{"role": "user", "content": "你好"}], [{"role": "user", "content": "讲个故事"}]]
    template = resolve_template(tokenizer)
    plain = generate_ids(model, tokenizer, template, convs, max_new_tokens=24)
    # negative control: the random tiny model repeats tokens when nothing forbids it
    assert any(len(set(s.response_ids)) < len(s.response_ids) for s in plain)
    barred = generate_ids(model, tokenizer, template, convs, max_new_tokens=24, no_repeat_ngram_size=1)
    for s in barred:  # with n=1 no token may occur twice in prompt + reply
        assert not set(s.response_ids) & set(s.prompt_ids) and len(set(s.response_ids)) == len(s.response_ids)
    out = tmp_path / "eval.json"
    args = ["gen", "--model", str(tiny_model_dir), "--prompts", str(prompts), "--max-new-tokens", "24"]
    r = CliRunner().invoke(eval_app, [*args, "--no-repeat-ngram-size", "1", "--out", str(out)])
    assert r.exit_code == 0, r.output
    got = [row["n_tokens"] for row in json.loads(out.read_text())["rows"]]
    assert got == [len(s.response_ids) - s.stopped for s in barred]
    r = CliRunner().invoke(eval_app, [*args, "--repetition-penalty", "0"])
    assert r.exit_code != 0 and "--repetition-penalty 0.0: must be > 0" in str(r.exception)


def test_distinct_is_left_out_when_no_reply_holds_an_ngram():
    """Replies of one unit each ('，', '好') read distinct_2 0.0, the score of total repetition; nothing repeated."""
    from weitiao.eval.metrics import item_metrics

    short = reply_metrics([Item("，"), Item("好")])
    assert "distinct_2" not in short and short["distinct_1"] == 1.0
    assert "distinct_2" not in item_metrics(Item("好"))
    assert reply_metrics([Item("好好"), Item("好")])["distinct_2"] == 1.0  # control: one bigram, defined
    assert item_metrics(Item("好好好"))["distinct_2"] == 0.5
    assert "distinct_1" not in reply_metrics([Item("")])
