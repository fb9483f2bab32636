"""Bad-case loop: ingest failures → cluster → report → paraphrase-augment → SFT additions, DPO pairs,
regression eval, and the follow-up training command that continues the deployed adapter.

    weitiao data badcases cases.jsonl --out runs/badcases --config examples/demo_sft.yaml --resume-from runs/demo
    weitiao sft runs/badcases/followup_sft.yaml          # printed by the command above

Input rows (JSONL or CSV): prompt, bad (the wrong reply), golden (the right one), optional tag.
Clustering: scikit-learn k-means (k-means++ seeding, sparse rows) on prompt, bad reply (char 2-gram TF-IDF or a
local encoder's embeddings, --embed-model) and failure tag, weighted equally. k defaults to round(sqrt(n / 2)).

The regression set is held out, never trained on: with paraphrases, each case's last paraphrase
(a new wording of a fixed case); without, a `holdout` share of the cases of every cluster of two or
more (a new case of a fixed failure kind). The follow-up config keeps the general eval set beside it.
"""

from __future__ import annotations

import html
import json
import math
import os
import random
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from scipy.sparse import csr_array
from scipy.sparse import hstack as sparse_hstack

from weitiao.data.files import RowError, csv_rows
from weitiao.dataeng.similarity import embed, normalize, tfidf, unit_rows
from weitiao.errors import UserError, near_miss, where
from weitiao.io import atomic_write_text, claim_outputs, read_jsonl, write_jsonl
from weitiao.json_reply import parse_json_reply
from weitiao.reports import page
from weitiao.teacher import Teacher, TeacherError

ALIASES = {
    "prompt": ("prompt", "question", "instruction", "query"),
    "bad": ("bad", "bad_response", "response", "rejected"),
    "golden": ("golden", "golden_answer", "expected", "answer", "chosen"),
    "tag": ("tag", "category", "label"),
}
PARAPHRASE_PROMPT = """请把下面这条用户提问换 {n} 种说法重写：意思完全不变，
但用词和句式要各不相同，像不同的真实用户会问的那样。
只输出一个 JSON 字符串数组，不要输出其他文字，例如 ["……", "……"]。

用户提问：{prompt}"""


@dataclass
class Case:
    prompt: str
    bad: str
    golden: str
    tag: str = ""
    source: str = ""
    cluster: int = 0
    paraphrases: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- 1. ingest


def _records(path: Path) -> list[tuple[int, dict]]:
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    if path.suffix.lower() == ".csv":
        # the project's CSV reader: UTF-8 as every reader (a GBK file: one line with the iconv command), any cell
        # length, one line for what it cannot parse; csv.DictReader stopped at a cell over 131,072 characters
        out = []
        for line, rec in csv_rows(path, max_cell=None):
            if isinstance(rec, RowError):  # more cells than the header: an unquoted comma split a cell
                comma = "; quote a cell that holds a comma, and give every column (an empty cell is fine)"
                raise UserError(f"{where(path, line)}: {rec.problem}{comma if 'the header has' in rec.problem else ''}")
            out.append((line, rec))
        return out
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        return list(read_jsonl(path))
    raise UserError(f"{path}: unsupported file type {path.suffix!r}; use .jsonl or .csv")


# Keys that hold part of the conversation in other layouts: a case is one user turn, so they would go unread and the
# additions would train the golden reply on a prompt without them (an alpaca `input` held the text to translate)
UNREAD = ("input", "history", "context", "system", "messages", "conversations", "conversation")


def _check_keys(rec: dict, path: Path, n: int) -> None:
    """A key the case would leave unread (UNREAD), or a near miss of one it reads (`Tag`, `tga`), is one UserError."""
    names = tuple(k for ks in ALIASES.values() for k in ks)
    for k, v in rec.items():
        if k in UNREAD and v not in (None, "", []):
            raise UserError(
                f"{where(path, n, k)}: not read (a case is one user turn: the additions would train the golden "
                "reply on the prompt without it); put it into the prompt, or drop it"
            )
        if not k.endswith("_id") and (want := near_miss(k, names, 0.85)) and want not in rec:
            raise UserError(f"{where(path, n, k)}: unknown key; did you mean {want!r}? (rename it, or drop it)")


def ingest(paths: list[str | Path]) -> list[Case]:
    """Cases from JSONL/CSV files; a row missing prompt/bad/golden, or with a key it would leave unread (an alpaca
    `input`, `history`, `system`; a near miss such as `Tag`), is an error naming file:line and the key."""
    cases = []
    for path in map(Path, paths):
        for n, rec in _records(path):
            if not isinstance(rec, dict):
                raise UserError(f"{where(path, n)}: expected an object with prompt, bad, golden")
            _check_keys(rec, path, n)
            got = {}
            for key, names in ALIASES.items():
                given = [k for k in names if rec.get(k) is not None and str(rec[k]).strip()]
                if len(given) > 1 and len({str(rec[k]).strip() for k in given}) > 1:  # which one was meant?
                    raise UserError(f"{where(path, n, given[1])}: differs from {given[0]!r}; both name the {key} "
                                    "(keep one column)")  # fmt: skip
                value = rec[given[0]] if given else None
                if value is None and key != "tag":
                    typo = next((f"; did you mean {w!r} for {k!r}?" for k in rec if (w := near_miss(k, names))), "")
                    raise UserError(f"{where(path, n, key)}: missing (accepted names: {', '.join(names)}){typo}")
                if value is not None and not isinstance(value, str):
                    raise UserError(f"{where(path, n, key)}: expected text, got {type(value).__name__}")
                got[key] = (value or "").strip()
            cases.append(Case(**got, source=f"{path}:{n}"))
    if not cases:
        raise UserError(f"{', '.join(map(str, paths))}: no bad cases")
    return cases


# ---------------------------------------------------------------------------------------------- 2. cluster


def kmeans(x: Any, k: int, seed: int = 0, iters: int = 50, restarts: int = 10) -> np.ndarray:
    """scikit-learn k-means (Lloyd, k-means++ seeding, best of `restarts`) on unit rows, dense or sparse:
    on unit rows the nearest centre by distance is close to the one by cosine. Returns labels 0..k-1."""
    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning

    k = max(1, min(k, x.shape[0]))
    with warnings.catch_warnings():  # fewer distinct rows than k: some clusters stay empty, which is fine
        warnings.simplefilter("ignore", ConvergenceWarning)
        km = KMeans(n_clusters=k, n_init=restarts, max_iter=iters, random_state=seed).fit(x)
    return km.labels_


def features(cases: list[Case], embed_model: str | None = None) -> Any:
    """Unit rows (sparse) of three equal blocks: the prompt, the bad reply (TF-IDF or embeddings) and the tag
    (one-hot).

    Equal weights: two failures of the same kind on different questions sit closer together than
    two different failures of look-alike questions.
    """
    blocks = []
    for texts in ([c.prompt for c in cases], [c.bad for c in cases]):
        blocks.append(csr_array(embed(texts, embed_model)) if embed_model else tfidf(texts, ns=(2,))[0])
    tags = sorted({c.tag for c in cases if c.tag})
    if tags:
        col = {t: j for j, t in enumerate(tags)}
        rows = [i for i, c in enumerate(cases) if c.tag]
        cols = np.array([col[cases[i].tag] for i in rows], dtype=np.int32)  # sklearn takes 32-bit indices only
        one_hot = (np.ones(len(rows)), (np.array(rows, dtype=np.int32), cols))
        blocks.append(csr_array(one_hot, shape=(len(cases), len(tags))))
    return unit_rows(csr_array(sparse_hstack(blocks, format="csr")))


def cluster(cases: list[Case], k: int | None = None, embed_model: str | None = None, seed: int = 0) -> list[dict]:
    """Assign `case.cluster`; returns clusters (largest first) with a label of top n-grams and top tag."""
    k = k or max(1, round(math.sqrt(len(cases) / 2)))
    x, vocab = tfidf([c.prompt for c in cases], ns=(2,))
    labels = kmeans(features(cases, embed_model), k, seed)
    order = [j for j, _ in Counter(labels.tolist()).most_common()]  # renumber: 0 = largest
    rank = {j: i for i, j in enumerate(order)}
    out = []
    for j in order:
        idx = [i for i in range(len(cases)) if labels[i] == j]
        for i in idx:
            cases[i].cluster = rank[j]
        weight = x[idx].sum(0)
        top = [vocab[t] for t in np.argsort(-weight)[:4] if weight[t] > 0]
        tags = Counter(cases[i].tag for i in idx if cases[i].tag).most_common(1)
        out.append({"cluster": rank[j], "size": len(idx), "keywords": top, "tag": tags[0][0] if tags else "",
                    "cases": [cases[i].source for i in idx]})  # fmt: skip
    return out


def report_html(clusters: list[dict], cases: list[Case], examples: int = 5) -> str:
    """One section per cluster: size, keywords, majority tag, and example prompt / bad / golden rows."""
    e = html.escape
    parts = [f"<h1>Bad-case clusters</h1><p>{len(cases)} cases in {len(clusters)} clusters.</p>"]
    for cl in clusters:
        members = [c for c in cases if c.cluster == cl["cluster"]]
        parts.append(f"<h2>#{cl['cluster']} · {cl['size']} cases · {e(' / '.join(cl['keywords']))}"
                     + (f" · tag {e(cl['tag'])}" if cl["tag"] else "") + "</h2>")  # fmt: skip
        parts.append("<table><tr><th>prompt</th><th>bad reply</th><th>golden</th><th>tag</th></tr>")
        for c in members[:examples]:
            parts.append(f"<tr><td>{e(c.prompt)}</td><td class=bad>{e(c.bad)}</td>"
                         f"<td class=gold>{e(c.golden)}</td><td>{e(c.tag)}</td></tr>")  # fmt: skip
        parts.append("</table>")
    return page(
        "bad-case clusters", "\n".join(parts), "td{border-bottom:1px solid #ddd}.bad{color:#a00}.gold{color:#060}"
    )


# ---------------------------------------------------------------------------------------------- 3. augment


def paraphrases(reply: str, original: str, n: int) -> list[str]:
    """Up to n distinct rewrites from a teacher reply (JSON array of strings, or an object holding one such array, as
    kb2sft reads {"qa": [...]}); drops copies of the original."""
    value = parse_json_reply(reply)
    if isinstance(value, dict) and len(lists := [v for v in value.values() if isinstance(v, list)]) == 1:
        value = lists[0]  # {"paraphrases": [...]} was read as one item without a string: every rewrite dropped
    items = value if isinstance(value, list) else [value]
    seen, out = {normalize(original)}, []
    for it in items:
        if isinstance(it, dict):  # [{"text": "..."}]: take its first string value
            it = next((v for v in it.values() if isinstance(v, str)), None)
        text = it if isinstance(it, str) else None
        if text and text.strip() and normalize(text) not in seen:
            seen.add(normalize(text))
            out.append(text.strip())
    return out[:n]


def augment(cases: list[Case], teacher: Teacher, n: int, progress: bool = True) -> dict:
    """Fill `case.paraphrases` through the teacher; returns counts (failed requests stay uncached)."""
    reqs = [[{"role": "user", "content": PARAPHRASE_PROMPT.format(n=n, prompt=c.prompt)}] for c in cases]
    replies = teacher.chat_many(reqs, desc="badcases: paraphrasing", progress=progress)
    counts = {"teacher_failed": 0, "parse_failed": 0, "paraphrases": 0, "short": 0}
    for c, r in zip(cases, replies):
        if isinstance(r, TeacherError):
            counts["teacher_failed"] += 1
            continue
        try:
            c.paraphrases = paraphrases(r, c.prompt, n)
        except ValueError:
            counts["parse_failed"] += 1
            continue
        counts["paraphrases"] += len(c.paraphrases)
        counts["short"] += len(c.paraphrases) < n
    if replies and counts["teacher_failed"] == len(replies):
        first = next(r for r in replies if isinstance(r, TeacherError))
        raise UserError(f"{first}; no paraphrases (use --augment 0 to skip the teacher)")
    return counts


# ---------------------------------------------------------------------------------------------- 4. emit


def followup(
    out: Path,
    config: Path | None,
    resume_from: str | None,
    sft_file: Path,
    eval_file: Path,
    sft_config: type | None = None,
) -> str:
    """Write followup_sft.yaml from the base config (train += additions, eval += regression set,
    lora.init_from = resume_from) and return the command; without a config, return an overrides form.
    `sft_config` is the SFT config class (recipes.sft.SFTConfig, passed down: dataeng sits below recipes);
    it says which keys are paths to make absolute."""
    init = f" lora.init_from={resume_from}" if resume_from else ""
    if config is None:
        return (f"weitiao sft YOUR_SFT.yaml 'data.train=[ORIGINAL_TRAIN.jsonl,{sft_file}]' "
                f"'data.eval=[GENERAL_EVAL.jsonl,{eval_file}]' "
                f"train.out={out / 'sft'} train.resume=none{init}")  # fmt: skip
    from weitiao.config import read_yaml_mapping, resolve_paths

    if sft_config is None:
        raise TypeError("followup: a config needs sft_config, the SFT config class")
    if not config.is_file():
        raise UserError(f"--config {config}: file not found")
    # the follow-up file lives elsewhere: every path in it is absolute, so it runs from any folder
    data = resolve_paths(read_yaml_mapping(config), sft_config, config.parent)
    d = data.setdefault("data", {})  # run() checked it with check_base before any work
    d["train"] = [*(d.get("train") or []), str(sft_file.resolve())]
    d["eval"] = [*(d.get("eval") or []), str(eval_file.resolve())]  # the general held-out set stays
    if resume_from:
        data.setdefault("lora", {})["init_from"] = os.path.abspath(os.path.expanduser(resume_from))
    data.setdefault("train", {}).update(out=str((out / "sft").resolve()), resume="none")
    path = out / "followup_sft.yaml"
    head = f"# written by `weitiao data badcases`: {config} + bad-case additions\n"
    atomic_write_text(path, head + yaml.safe_dump(data, allow_unicode=True, sort_keys=False))
    return f"weitiao sft {path}"


def check_base(config: Path, data: dict) -> None:
    """The follow-up adds files to the base config's data.train and data.eval: refuse a base it cannot extend
    that way (LLaMA-Factory dataset names; an eval_split, which data.eval files would turn off)."""
    if data.get("dataset_dir"):
        raise UserError(f"--config {config}: data.dataset_dir names datasets, and the follow-up adds files; give a "
                        "config with data.train as file paths (or register sft_additions.jsonl in dataset_info.json "
                        "and add its name yourself)")  # fmt: skip
    if (data.get("eval_split") or 0) > 0:
        raise UserError(f"--config {config}: data.eval_split holds the general eval set out of data.train; the "
                        "follow-up adds the regression set as data.eval files, which turn the split off (its rows "
                        "would be trained on); write the held-out rows to a file, set data.eval")  # fmt: skip


def held_out_cases(cases: list[Case], share: float, seed: int) -> set[int]:
    """Indices of cases held out whole: round(share * size) (at least 1) of the distinct prompts of every cluster
    with 2 or more; every copy of a held-out prompt (the same case logged twice) is held out with it."""
    rng = random.Random(seed)
    out: set[int] = set()
    for j in sorted({c.cluster for c in cases}):
        groups: dict[str, list[int]] = {}
        for i, c in enumerate(cases):
            if c.cluster == j:
                groups.setdefault(normalize(c.prompt), []).append(i)
        keys = list(groups)
        if len(keys) >= 2 and share > 0:
            for k in rng.sample(keys, min(len(keys) - 1, max(1, round(share * len(keys))))):
                out.update(groups[k])
    return out


OUTPUTS = ("clusters.html", "clusters.json", "sft_additions.jsonl", "dpo_pairs.jsonl", "regression_eval.jsonl",
           "summary.json", "followup_sft.yaml")  # fmt: skip


def run(
    files: list[str | Path],
    out: str | Path,
    teacher: Teacher | None,
    n_aug: int = 4,
    k: int | None = None,
    embed_model: str | None = None,
    config: Path | None = None,
    resume_from: str | None = None,
    seed: int = 0,
    progress: bool = True,
    holdout: float = 0.25,
    sft_config: type | None = None,
) -> dict:
    """The whole loop; writes clusters.html/json, sft_additions, dpo_pairs, regression_eval, summary."""
    if not 0 <= holdout < 1:
        raise UserError(f"--holdout {holdout}: must be in [0, 1)")
    if n_aug < 0:
        raise UserError(f"--augment {n_aug}: must be ≥ 0 (0 = no teacher)")
    if k is not None and k < 1:
        raise UserError(f"--clusters {k}: must be ≥ 1 (leave it out for round(sqrt(n/2)))")
    if resume_from and not Path(resume_from).expanduser().exists():  # the follow-up SFT would fail much later
        raise UserError(f"--resume-from {resume_from}: not found; give the run or adapter dir to continue from")
    out = Path(out)
    claim_outputs([out / n for n in OUTPUTS], [*files, *([config] if config else [])])
    if config is not None and config.is_file():  # before the work: a base the follow-up cannot extend
        from weitiao.config import read_yaml_mapping

        check_base(config, read_yaml_mapping(config).get("data") or {})
    cases = ingest(list(files))
    clusters = cluster(cases, k, embed_model, seed)
    # the teacher step may fail or be interrupted: nothing is written before it, so a rerun into the same --out never
    # leaves this run's clusters beside an earlier run's additions and summary
    counts = augment(cases, teacher, n_aug, progress) if teacher is not None and n_aug > 0 else {}
    whole = held_out_cases(cases, holdout, seed) if not any(c.paraphrases for c in cases) else set()
    sft, dpo, regression, same = [], [], [], 0
    for i, c in enumerate(cases):
        meta = {"case": c.source, "cluster": c.cluster, "tag": c.tag}
        prompts = [c.prompt, *c.paraphrases]
        # 1. the held-out wording: the last paraphrase, or the whole case
        if c.paraphrases or i in whole:
            held = prompts.pop()
            regression.append({"messages": [{"role": "user", "content": held}, {"role": "assistant",
                               "content": c.golden}], "meta": {**meta, "held_out": "paraphrase" if c.paraphrases
                               else "case"}})  # fmt: skip
        # 2. the rest is trained on
        for j, prompt in enumerate(prompts):
            m = {**meta, "paraphrase": j > 0}
            sft.append({"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": c.golden}],
                        "meta": m})  # fmt: skip
            if normalize(c.golden) != normalize(c.bad):
                dpo.append({"prompt": prompt, "chosen": c.golden, "rejected": c.bad, "meta": m})
        same += normalize(c.golden) == normalize(c.bad)
    # held out means never trained on: a wording held out for one case (a copy of it, or a paraphrase that another
    # case has too) leaves the training rows, and the regression set keeps each wording once
    held = {normalize(r["messages"][0]["content"]): r for r in reversed(regression)}
    regression = [r for r in regression if held.get(normalize(r["messages"][0]["content"])) is r]
    sft = [r for r in sft if normalize(r["messages"][0]["content"]) not in held]
    dpo = [r for r in dpo if normalize(r["prompt"]) not in held]
    random.Random(seed).shuffle(sft)
    atomic_write_text(out / "clusters.html", report_html(clusters, cases))
    atomic_write_text(out / "clusters.json", json.dumps(clusters, ensure_ascii=False, indent=2))
    write_jsonl(out / "sft_additions.jsonl", sft)
    write_jsonl(out / "dpo_pairs.jsonl", dpo)
    write_jsonl(out / "regression_eval.jsonl", regression)
    command = followup(out, config, resume_from, out / "sft_additions.jsonl", out / "regression_eval.jsonl", sft_config)
    summary = {"cases": len(cases), "clusters": len(clusters), **counts, "sft_rows": len(sft), "dpo_pairs": len(dpo),
               "golden_equals_bad": same, "regression_eval": len(regression),
               "held_out_cases": len(whole), "next": command,
               "dpo_next": f"weitiao dpo YOUR_DPO.yaml 'data.train=[{out / 'dpo_pairs.jsonl'}]'"}  # fmt: skip
    atomic_write_text(out / "summary.json", json.dumps(summary, ensure_ascii=False, indent=2))
    return summary
