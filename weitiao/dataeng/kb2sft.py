"""Knowledge base → SFT question/answer data, asked of a teacher model and checked against the source.

    weitiao serve --model demo &      # or any OpenAI-compatible endpoint via --teacher-url
    weitiao data kb2sft weitiao/demo/kb --out runs/kb --chunker heading --n-qa 3

Steps: 1. read + chunk → 2. ask the teacher for N QA pairs per chunk (JSON) → 3. parse (with repair)
→ 4. grounding: keep answers whose bigrams (characters; English words) come from the chunk → 5. near-duplicate questions
dropped across the whole set → 6. train/eval split by chunk (no chunk in both) → 7. write train/eval
JSONL (messages rows + meta provenance), a review CSV (Excel-friendly), rejects and a summary.

Grounding is lexical: a faithful paraphrase with other words scores low, a fluent hallucination that
reuses chunk words can score high. It filters the worst; the review CSV is for the rest.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from weitiao.dataeng.chunk import Chunk, ChunkSpec, chunk_docs, collect_docs, skipped_docs
from weitiao.dataeng.similarity import grounding_score, near_duplicates
from weitiao.errors import UserError
from weitiao.io import atomic_write_text, claim_outputs, write_jsonl
from weitiao.json_reply import parse_json_reply
from weitiao.teacher import Teacher, TeacherError

DEFAULT_PROMPT = """你在为企业知识库整理问答训练数据。请通读下面的【资料】，围绕其中的事实写出 {n} 组问答。

要求：
1. 问题要像真实用户会问的那样自然、具体，类型尽量不同：至少一个问“是什么/有哪些/多少”，至少一个问“怎么做/为什么”。
2. 答案只能依据资料，尽量沿用资料里的原话，简洁准确，不要补充资料里没有的内容。
3. 资料里找不到答案的问题不要出。
4. 只输出一个 JSON 数组，不要输出任何其他文字，格式如下：
[{{"question": "……", "answer": "……"}}]

【资料出处】{source}
【资料】
{chunk}"""

_Q_KEYS = ("question", "q", "问题", "instruction")
_A_KEYS = ("answer", "a", "答案", "output")


@dataclass
class KBConfig:
    """kb2sft settings (the CLI flags)."""

    chunk: ChunkSpec = field(default_factory=ChunkSpec)
    n_qa: int = 3  # QA pairs asked per chunk
    prompt: str = DEFAULT_PROMPT  # placeholders {n} {chunk} {source}
    min_grounding: float = 0.5  # keep answers with at least this fraction of bigrams in the chunk (similarity.units)
    dedup_threshold: float = 0.8  # char-trigram Jaccard of normalized questions at or above = duplicate
    eval_fraction: float = 0.1  # share of chunks (with kept QA) held out for eval
    system: str | None = None  # optional system message on every row
    seed: int = 0
    row_format: str = "messages"  # or "alpaca" (instruction/input/output); both load in `weitiao sft`


@dataclass
class QA:
    question: str
    answer: str
    chunk: Chunk
    score: float = 0.0


def qa_items(value: object) -> tuple[list[tuple[str, str]], list]:
    """(question, answer) pairs in a parsed reply, and the malformed items skipped."""
    if isinstance(value, dict):  # a single pair (perhaps with list fields: keywords) or a wrapper {"qa": [...]}
        is_pair = any(k in value for k in _Q_KEYS) and any(k in value for k in _A_KEYS)
        lists = [v for v in value.values() if isinstance(v, list)]
        value = lists[0] if len(lists) == 1 and not is_pair else [value]
    if not isinstance(value, list):
        return [], [value]
    pairs, bad = [], []
    for item in value:
        q = next((item[k] for k in _Q_KEYS if isinstance(item, dict) and k in item), None)
        a = next((item[k] for k in _A_KEYS if isinstance(item, dict) and k in item), None)
        if isinstance(q, str) and isinstance(a, str) and q.strip() and a.strip():
            pairs.append((q.strip(), a.strip()))
        else:
            bad.append(item)
    return pairs, bad


def check_prompt(prompt: str) -> str:
    """A prompt template must contain {chunk}; other braces must be doubled."""
    try:
        prompt.format(n=1, chunk="x", source="x")
    except (KeyError, IndexError, ValueError) as e:
        hint = "use {n} {chunk} {source}; double any other braces"
        raise UserError(f"--prompt: bad placeholder {e}; {hint}") from None
    if "{chunk}" not in prompt:
        raise UserError("--prompt: the template must contain {chunk} (where the source text goes)")
    return prompt


def split_by_chunk(qas: list[QA], fraction: float, seed: int) -> tuple[list[QA], list[QA]]:
    """Hold out whole chunks: shuffle the chunk ids once, take the first round(fraction · n) for eval
    (at least one when fraction > 0 and there are two or more chunks)."""
    ids = sorted({q.chunk.chunk_id for q in qas})
    random.Random(seed).shuffle(ids)
    n_eval = round(fraction * len(ids))
    if fraction > 0 and len(ids) >= 2:
        n_eval = min(max(1, n_eval), len(ids) - 1)
    held = set(ids[:n_eval])
    return [q for q in qas if q.chunk.chunk_id not in held], [q for q in qas if q.chunk.chunk_id in held]


def to_row(qa: QA, system: str | None, row_format: str = "messages") -> dict:
    """A messages (or alpaca) row with `meta` provenance; the SFT loader ignores `meta`."""
    meta = {"doc": qa.chunk.doc, "chunk_id": qa.chunk.chunk_id, "heading": qa.chunk.heading, "score": qa.score}
    if row_format == "alpaca":
        return {"instruction": qa.question, "input": "", "output": qa.answer, **({"system": system} if system else {}),
                "meta": meta}  # fmt: skip
    msgs = [{"role": "system", "content": system}] if system else []
    msgs += [{"role": "user", "content": qa.question}, {"role": "assistant", "content": qa.answer}]
    return {"messages": msgs, "meta": meta}


# A cell starting with one of these is a formula to Excel/LibreOffice (CSV injection): QA text comes from
# documents and a teacher model, so `=HYPERLINK(...)` in a chunk would run in the reviewer's spreadsheet. The
# full-width forms too: Excel with a Chinese or Japanese IME takes ＝SUM(…) as =SUM(…).
FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "＝", "＋", "－", "＠")


def spreadsheet_csv(header: list[str], rows: list[list[str]]) -> str:
    """CSV for people to open in a spreadsheet: a UTF-8 BOM (Excel reads it as Chinese text) and every cell that
    starts like a formula prefixed with a single quote, OWASP's advice; other cells are written as they are."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerows(["'" + c if c.startswith(FORMULA_START) else c for c in row] for row in [header, *rows])
    return "\ufeff" + buf.getvalue()


def review_csv(train: list[QA], evals: list[QA]) -> str:
    """The review sheet, with an empty `ok` column for reviewers (spreadsheet_csv: BOM, formulas neutralized)."""
    header = ["split", "doc", "chunk_id", "heading", "score", "question", "answer", "chunk", "ok"]
    rows = [[split, q.chunk.doc, q.chunk.chunk_id, q.chunk.heading, f"{q.score:.3f}", q.question, q.answer,
             q.chunk.text, ""] for split, qs in (("train", train), ("eval", evals)) for q in qs]  # fmt: skip
    return spreadsheet_csv(header, rows)


OUTPUTS = ("chunks.jsonl", "train.jsonl", "eval.jsonl", "review.csv", "rejects.jsonl", "summary.json")


def run(docs: list[str | Path], out: str | Path, teacher: Teacher, cfg: KBConfig, progress: bool = True) -> dict:
    """Build train/eval/review files under `out`; returns the summary (also written as summary.json)."""
    out = Path(out)
    prompt = check_prompt(cfg.prompt)
    # the CLI's flag names (`--format` for the row format: the message said --row-format, a flag that does not exist)
    for name, value, ok, rule in [
        ("--n-qa", cfg.n_qa, cfg.n_qa >= 1, "out of range, must be ≥ 1"),
        ("--min-grounding", cfg.min_grounding, 0 <= cfg.min_grounding <= 1, "out of range, must be in [0, 1]"),
        ("--dedup", cfg.dedup_threshold, 0 < cfg.dedup_threshold <= 1, "out of range, must be in (0, 1]"),
        ("--eval-fraction", cfg.eval_fraction, 0 <= cfg.eval_fraction < 1, "out of range, must be in [0, 1)"),
        ("--format", cfg.row_format, cfg.row_format in ("messages", "alpaca"), "use messages or alpaca"),
    ]:
        if not ok:
            raise UserError(f"{name} {value}: {rule}")

    # 1. Read and chunk.
    paths = collect_docs(list(docs))
    claim_outputs([out / n for n in OUTPUTS], paths)
    chunks, empty = chunk_docs(paths, cfg.chunk)
    if not chunks:
        raise UserError(f"{', '.join(map(str, docs))}: every document is empty; nothing to ask")

    # 2. Ask: one request per chunk; failures stay failures, successes are cached for the re-run.
    hits_before = teacher.cache_hits
    requests = [
        [{"role": "user", "content": prompt.format(n=cfg.n_qa, chunk=c.text, source=c.source())}] for c in chunks
    ]
    replies = teacher.chat_many(requests, desc="kb2sft: asking teacher", progress=progress)
    failed = [r for r in replies if isinstance(r, TeacherError)]
    if len(failed) == len(replies):
        # nothing is written: chunks.jsonl beside an earlier run's train/eval/summary would be a folder of two runs
        raise UserError(f"{failed[0]}; no chunk answered, nothing written")

    # 3. Parse; 4. grounding.
    rejects: list[dict] = []
    counts = dict(parse_failed=0, items_malformed=0, qa_parsed=0, rejected_grounding=0, deduped=0)
    candidates: list[QA] = []
    for c, reply in zip(chunks, replies):
        if isinstance(reply, TeacherError):
            rejects.append({"chunk_id": c.chunk_id, "reason": "teacher", "error": str(reply)})
            continue
        try:
            pairs, bad = qa_items(parse_json_reply(reply))
        except ValueError as e:
            counts["parse_failed"] += 1
            rejects.append({"chunk_id": c.chunk_id, "reason": "parse", "error": str(e), "reply": reply[:2000]})
            continue
        counts["items_malformed"] += len(bad)
        rejects += [{"chunk_id": c.chunk_id, "reason": "malformed", "item": item} for item in bad]
        counts["qa_parsed"] += len(pairs)
        for q, a in pairs:
            qa = QA(q, a, c, round(grounding_score(a, c.text), 4))
            if qa.score < cfg.min_grounding:
                counts["rejected_grounding"] += 1
                rejects.append({"chunk_id": c.chunk_id, "reason": "grounding", "score": qa.score, "q": q, "a": a})
            else:
                candidates.append(qa)

    # 5. Dedup questions over the whole set before splitting, so no near-copy straddles train and eval.
    dups = near_duplicates([q.question for q in candidates], cfg.dedup_threshold)
    kept = []
    for qa, dup in zip(candidates, dups):
        if dup is None:
            kept.append(qa)
        else:
            counts["deduped"] += 1
            rejects.append({"chunk_id": qa.chunk.chunk_id, "reason": "duplicate", "q": qa.question,
                            "duplicate_of": candidates[dup].question})  # fmt: skip

    if not kept:  # empty train/eval files are no result, and would replace an earlier run's: write nothing in `out`
        fd, aside = tempfile.mkstemp(prefix="weitiao-kb2sft-rejects-", suffix=".jsonl")
        os.close(fd)
        write_jsonl(Path(aside), rejects)
        raise UserError(
            f"{out}: no QA pair kept ({counts['qa_parsed']} parsed, {counts['items_malformed']} malformed items, "
            f"{counts['rejected_grounding']} below "
            f"--min-grounding {cfg.min_grounding}, {counts['parse_failed']} replies not JSON, {len(failed)} chunks "
            f"unanswered); nothing written there; the rejects are in {aside}"
        )

    # 6. Split by chunk; 7. write.
    train, evals = split_by_chunk(kept, cfg.eval_fraction, cfg.seed)
    write_jsonl(out / "chunks.jsonl", [asdict(c) for c in chunks])
    write_jsonl(out / "train.jsonl", [to_row(q, cfg.system, cfg.row_format) for q in train])
    write_jsonl(out / "eval.jsonl", [to_row(q, cfg.system, cfg.row_format) for q in evals])
    atomic_write_text(out / "review.csv", review_csv(train, evals))
    write_jsonl(out / "rejects.jsonl", rejects)
    summary = {
        "docs": len(paths),
        "skipped_files": [str(f) for f in skipped_docs(list(docs))],
        "empty_docs": empty,
        "chunks": len(chunks),
        "asked": len(requests),
        "teacher_failed": len(failed),
        "answered": len(replies) - len(failed),
        "from_cache": teacher.cache_hits - hits_before,
        **counts,
        "grounded": len(candidates),
        "kept": len(kept),
        "train": len(train),
        "eval": len(evals),
        "eval_chunks": len({q.chunk.chunk_id for q in evals}),
        "chunker": cfg.chunk.method,
        "min_grounding": cfg.min_grounding,
        "out": str(out),
    }
    atomic_write_text(out / "summary.json", json.dumps(summary, ensure_ascii=False, indent=2))
    return summary
