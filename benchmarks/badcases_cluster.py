"""Bad-case clustering time and peak RSS on generated Chinese cases (issue #18: sparse TF-IDF/k-means).

    .venv/bin/python benchmarks/badcases_cluster.py --cases 10000

Writes nothing: builds `--cases` cases (seeded; prompt, bad reply and one of 8 tags, Chinese clauses of
words drawn from the demo pretraining text, ~40 + ~80 characters), then times
`badcases.cluster(cases)` (TF-IDF of prompts and replies, k-means with k = round(sqrt(n / 2)))
(or with `--part tfidf` only the prompts' TF-IDF, 1-2-grams, top 20k) and reports wall seconds and the
process's peak RSS (`getrusage` ru_maxrss), after the imports and
the generated cases (the baseline line). Run it with PYTHONPATH at an older checkout to compare.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import resource
import time
from pathlib import Path

DEMO = Path(__file__).resolve().parents[1] / "weitiao" / "demo"
TAGS = ("事实错误", "拒答", "风格不符", "幻觉", "格式错误", "答非所问", "过长", "安全")


def cases(n: int, seed: int = 0) -> list[tuple[str, str, str]]:
    rng = random.Random(seed)
    text = "".join(
        m["content"]
        for line in open(DEMO / "data" / "pretrain.jsonl", encoding="utf-8")
        for m in json.loads(line)["messages"]
    )
    words = sorted({w[k : k + 2] for w in re.findall(r"[\u4e00-\u9fff]+", text) for k in range(0, len(w), 2)})

    def passage(chars: int) -> str:
        out = ""
        while len(out) < chars:
            out += "".join(rng.choice(words) for _ in range(rng.randint(2, 6))) + rng.choice("，。？")
        return out

    return [(passage(rng.randint(20, 60)), passage(rng.randint(40, 120)), rng.choice(TAGS)) for _ in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=10_000)
    ap.add_argument("--part", choices=("cluster", "tfidf"), default="cluster", help="tfidf: the prompts' TF-IDF only")
    a = ap.parse_args()
    from weitiao.dataeng import badcases, similarity

    try:  # imported before the clock starts (an older checkout may not use it)
        import sklearn.cluster  # noqa: F401
        import sklearn.feature_extraction.text  # noqa: F401
    except ImportError:
        pass

    rows = [badcases.Case(p, b, "好的", t, source=str(i)) for i, (p, b, t) in enumerate(cases(a.cases))]
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    if a.part == "tfidf":
        clusters = similarity.tfidf([c.prompt for c in rows])[1]  # (the vocabulary, for its length)
    else:
        clusters = badcases.cluster(rows)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "cases": a.cases,
                "part": a.part,
                "clusters" if a.part == "cluster" else "vocab": len(clusters),
                "seconds": round(seconds, 1),
                "peak_rss_mb": round(peak),
                "baseline_rss_mb": round(base),
                "module": badcases.__file__,
            }
        )
    )


if __name__ == "__main__":
    main()
