"""Reply metrics: style, repetition, reference overlap (ROUGE-L, BLEU, exact match) and LLM-judge scores.

    weitiao eval gen --model demo --prompts heldout.jsonl [--adapter runs/demo/final] [--judge-url URL]

All scores are in [0, 1] (BLEU too: sacrebleu's number / 100). BLEU is sacrebleu's with
`tokenize="zh"`. ROUGE-L splits texts by `weitiao.eval.repetition.units` (each CJK character one
unit, punctuation too, Latin words whole, case kept), so it is character-level for Chinese (tested against
rouge-score with a per-character tokenizer; rouge-score's own tokenizer lower-cases and drops punctuation).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from weitiao.errors import UserError
from weitiao.eval.repetition import copy_of_history_rate, distinct_n, ngram_loop, units
from weitiao.eval.style import EMOJI, REFUSAL, chars


@dataclass
class MetricSettings:
    """Knobs for `reply_metrics`."""

    refusal_pattern: str = REFUSAL.pattern  # regex; a reply matching it counts as a refusal
    loop_n: int = 4  # n-gram size for loop detection
    loop_repeats: int = 3  # back-to-back repeats that make a loop
    copy_n: int = 8  # character n-gram size for copy-of-history


def refusal_settings(pattern: str | None) -> MetricSettings:
    """Settings for `--refusal-pattern PATTERN` (None: the default words); a pattern `re` cannot compile is refused
    in one line before any model loads (`eval gen`, `eval golden`)."""
    if pattern is None:
        return MetricSettings()
    if not pattern:
        raise UserError(
            "--refusal-pattern '': empty; it would count every reply as a refusal (drop it for the default)"
        )
    try:
        re.compile(pattern)
    except re.error as e:
        raise UserError(
            f"--refusal-pattern {pattern!r}: not a regular expression ({e}); escape ( [ * + ? with \\"
        ) from None
    return MetricSettings(refusal_pattern=pattern)


# ---------------------------------------------------------------------------------------------- overlap


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (O(len(a)·len(b)) dynamic programme, one row kept)."""
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F1 (Lin 2004, beta = 1) over units: 2PR / (P + R) with P = LCS/|cand|, R = LCS/|ref|."""
    c, r = units(candidate), units(reference)
    lcs = lcs_length(c, r)
    if lcs == 0:
        return 0.0
    p, rec = lcs / len(c), lcs / len(r)
    return 2 * p * rec / (p + rec)


@lru_cache(maxsize=8)
def _bleu_scorer(max_n: int, effective_order: bool) -> Any:
    from sacrebleu.metrics import BLEU

    return BLEU(tokenize="zh", max_ngram_order=max_n, effective_order=effective_order)


def bleu(candidates: Sequence[str], references: Sequence[str], max_n: int = 4, effective_order: bool = False) -> float:
    """Corpus BLEU in [0, 1]: sacrebleu's score / 100 with its Chinese tokenizer (`tokenize="zh"`: each CJK
    character a token), one reference per candidate, `exp` smoothing; `effective_order` averages only the
    n-gram orders present (sacrebleu's sentence-level default)."""
    if len(candidates) != len(references):
        raise ValueError(f"{len(candidates)} candidates but {len(references)} references")
    if not candidates:
        return 0.0
    return _bleu_scorer(max_n, effective_order).corpus_score(list(candidates), [list(references)]).score / 100


def sentence_bleu(candidate: str, reference: str) -> float:
    """BLEU of one reply against its reference (effective order, as sacrebleu.sentence_bleu)."""
    return bleu([candidate], [reference], effective_order=True)


_SPACES = re.compile(r"\s+")


def exact_match(candidate: str, reference: str) -> bool:
    """Equal after trimming the ends and collapsing runs of whitespace."""
    return _SPACES.sub(" ", candidate.strip()) == _SPACES.sub(" ", reference.strip())


# ---------------------------------------------------------------------------------------------- per reply


@dataclass
class Item:
    """One generated reply with what its metrics need."""

    reply: str
    stopped: bool = True
    reference: str | None = None
    history: list[str] = field(default_factory=list)  # earlier turns' texts (multi-turn prompts)
    judge: float | None = None  # judge score in [0, 1], when a judge ran


def _distinct(texts: Sequence[str], n: int) -> float | None:
    """Corpus distinct-n, or None when no text holds an n-gram (nothing to tell repeated from varied)."""
    return distinct_n(texts, n) if any(len(units(t)) >= n for t in texts) else None


def item_metrics(it: Item, s: MetricSettings | None = None) -> dict[str, float]:
    """Per-reply numbers: length, emoji, refusal, stop, loop, copy (multi-turn), overlap (with a reference)."""
    s = s or MetricSettings()
    out = {
        "len": float(chars(it.reply)),
        "emoji": float(bool(EMOJI.search(it.reply))),
        "refusal": float(bool(re.search(s.refusal_pattern, it.reply))),
        "stop": float(it.stopped),
        "loop": float(ngram_loop(it.reply, s.loop_n, s.loop_repeats)),
    }
    if (d2 := _distinct([it.reply], 2)) is not None:
        out["distinct_2"] = d2
    if it.history:
        out["copy"] = copy_of_history_rate(it.reply, it.history, s.copy_n)
    if it.reference is not None:
        out["rougeL"] = rouge_l(it.reply, it.reference)
        out["bleu"] = sentence_bleu(it.reply, it.reference)
        out["exact"] = float(exact_match(it.reply, it.reference))
    if it.judge is not None:
        out["judge"] = it.judge
    return out


# Every key `reply_metrics` can return besides the count `n`, in its order; `curve` names its golden_* metrics
# from this (tests/test_curve.py holds the two in step).
REPLY_METRICS = ("mean_len", "emoji_rate", "refusal_rate", "stop_rate", "loop_rate", "distinct_1", "distinct_2",
                 "copy_rate", "rougeL", "exact_match", "judge", "bleu")  # fmt: skip


def reply_metrics(items: Sequence[Item], s: MetricSettings | None = None) -> dict[str, float]:
    """Set-level metrics (REPLY_METRICS and `n`): means of the per-reply numbers, corpus distinct-1/2 and corpus BLEU.

    `copy_rate` averages over replies that have history; overlap metrics over replies with a
    reference; `judge` over judged replies. A metric with no eligible reply is left out, distinct-n when no reply
    holds n units (it would read 0, the score of total repetition).
    """
    s = s or MetricSettings()
    per = [item_metrics(it, s) for it in items]
    n = max(1, len(items))
    out = {
        "n": float(len(items)),
        "mean_len": sum(p["len"] for p in per) / n,
        "emoji_rate": sum(p["emoji"] for p in per) / n,
        "refusal_rate": sum(p["refusal"] for p in per) / n,
        "stop_rate": sum(p["stop"] for p in per) / n,
        "loop_rate": sum(p["loop"] for p in per) / n,
    }
    for k in (1, 2):
        if (d := _distinct([it.reply for it in items], k)) is not None:
            out[f"distinct_{k}"] = d

    def mean(key: str) -> float | None:
        vals = [p[key] for p in per if key in p]
        return sum(vals) / len(vals) if vals else None

    for key, name in (("copy", "copy_rate"), ("rougeL", "rougeL"), ("exact", "exact_match"), ("judge", "judge")):
        if (v := mean(key)) is not None:
            out[name] = v
    refd = [it for it in items if it.reference is not None]
    if refd:
        out["bleu"] = bleu([it.reply for it in refd], [it.reference or "" for it in refd])
    return out


# ---------------------------------------------------------------------------------------------- judge

RUBRIC = """你是严格的评审。根据下面的评分标准给助手的回答打分（1-10 的整数）。
标准：1. 是否回答了用户的问题；2. 事实是否正确；3. 语气是否自然友好；4. 有无重复、跑题或不必要的拒绝。
只输出 JSON：{"score": 整数, "reason": "一句话理由"}"""


def judge_messages(prompt: Sequence[dict], reply: str, rubric: str = RUBRIC, reference: str | None = None) -> list:
    """The judge request: rubric as system, then the conversation, the reply and (optionally) a reference."""
    convo = "\n".join(f"[{m['role']}] {m['content']}" for m in prompt)
    body = f"对话：\n{convo}\n\n助手的回答：\n{reply}"
    if reference is not None:
        body += f"\n\n参考答案：\n{reference}"
    return [{"role": "system", "content": rubric}, {"role": "user", "content": body}]


Scale = tuple[int, int]  # the judge's lowest and highest score, e.g. (1, 10)

# "1-5", "1～5 分", "0 到 100", "1 to 10" and "满分 5", "out of 5": the score ranges a rubric names; one followed by a
# unit of something else ("0-200 字", "1-5 个要点", "18-35 岁") is no score range.
_NOT_SCORE = (
    r"(?!\s*(?:字|个|句|词|条|段|行|项|秒|分钟|小时|天|周|月|年|岁|次|%|％"
    r"|(?:tokens?|words?|characters?|chars?|sentences?|items?|points?)\b))"
)
_RANGE = re.compile(r"(?<![\d.\-])([01])\s*(?:-|–|—|~|～|到|至|to)\s*(\d{1,3})(?![\d.])" + _NOT_SCORE, re.I)
_BAND = re.compile(r"(?<![\d.\-])(\d{1,3})\s*(?:-|–|—|~|～|到|至)\s*(\d{1,3})\s*分")  # "6-10 分": a band's end
_TOP = re.compile(r"(?:满分|out of)\s*(\d{1,3})(?![\d.])", re.IGNORECASE)


def parse_scale(text: str, flag: str = "--score-scale") -> Scale:
    """`LO-HI` (integers, LO < HI) as a Scale; anything else one UserError naming `flag`."""
    m = re.fullmatch(r"\s*(\d+)\s*-\s*(\d+)\s*", text)
    if not m or int(m[1]) >= int(m[2]):
        raise UserError(f"{flag} {text!r}: give the judge's lowest and highest score as LO-HI, e.g. 1-10 or 1-5")
    return int(m[1]), int(m[2])


def check_rubric_scale(rubric: str, scale: Scale, where: str) -> bool:
    """Refuse a rubric whose score range is not `scale` (its 1-5 scores were read as 1-10: a perfect 5 became 0.44);
    False when it names none (the caller says which scale is assumed). A range from 0 or 1 up to 4 or more ("1-5",
    "1～5 分", "0 到 100"), "满分 N" or "out of N" names one; with bands ("1-5 分差，6-10 分好") the scale runs from
    the lowest start to the highest end of them."""
    named = [(int(a), int(b)) for a, b in _RANGE.findall(rubric) if int(b) >= 4]
    named += [(scale[0], int(b)) for b in _TOP.findall(rubric)]
    if not named:
        return False
    ends = [hi for _, hi in named] + [int(b) for a, b in _BAND.findall(rubric) if int(a) < int(b)]
    lo, hi = min(lo for lo, _ in named), max(ends)
    if (lo, hi) != tuple(scale):
        raise UserError(f"{where}: asks for scores {lo}-{hi}, but they are read as {scale[0]}-{scale[1]}; "
                        f"add --score-scale {lo}-{hi}")  # fmt: skip
    return True


def parse_score(text: str, lo: float = 1, hi: float = 10) -> float:
    """The judge's `score` mapped from [lo, hi] to [0, 1]; raises ValueError if missing or out of range."""
    from weitiao.json_reply import parse_json_reply

    obj = parse_json_reply(text)
    if isinstance(obj, list) and obj and isinstance(obj[0], dict):
        obj = obj[0]
    if not isinstance(obj, dict) or not isinstance(obj.get("score"), (int, float)) or isinstance(obj["score"], bool):
        raise ValueError(f"no numeric 'score' in judge reply: {text[:80]!r}")
    score = float(obj["score"])
    if not lo <= score <= hi:
        raise ValueError(f"judge score {score} outside [{lo}, {hi}]")
    return (score - lo) / (hi - lo)


def judge_scores(
    teacher: object,
    prompts: Sequence[Sequence[dict]],
    replies: Sequence[str],
    rubric: str = RUBRIC,
    references: Sequence[str | None] | None = None,
    scale: Scale = (1, 10),
) -> tuple[list[float | None], list[str]]:
    """Ask the judge (a `weitiao.teacher.Teacher`) to score each reply on `scale`; returns scores mapped to [0, 1]
    (None = failed: no score, or one outside the scale) and one error line per failure, so nothing is dropped
    silently."""
    refs = list(references) if references is not None else [None] * len(replies)
    reqs = [judge_messages(p, r, rubric, ref) for p, r, ref in zip(prompts, replies, refs)]
    answers = teacher.chat_many(reqs, desc="judge", temperature=0)  # type: ignore[attr-defined]
    scores: list[float | None] = []
    errors: list[str] = []
    for i, a in enumerate(answers):
        try:
            if isinstance(a, Exception):
                raise ValueError(str(a))
            scores.append(parse_score(a, *scale))
        except ValueError as e:
            scores.append(None)
            errors.append(f"reply {i}: {e}")
    return scores, errors
