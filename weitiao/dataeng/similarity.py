"""Character n-gram text similarity (no model needed), plus optional local-embedding vectors.

Chinese has no spaces, so the measures work on characters: normalized text → char n-grams, for
near-duplicate dedup, semantic chunk breaks and bad-case clustering. Grounding (answer vs source chunk)
counts n-grams of units instead: a Chinese character, or a whole English word or number. TF-IDF is
scikit-learn's, sparse: 10k texts take megabytes, not gigabytes.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from functools import partial
from typing import Any

import numpy as np

_DROP = re.compile(r"[\s\W_]+", re.UNICODE)  # whitespace and punctuation (CJK characters are \w)


def normalize(text: str) -> str:
    """NFKC (full-width → half-width), lower case, whitespace and punctuation removed."""
    return _DROP.sub("", unicodedata.normalize("NFKC", text).lower())


def char_ngrams(text: str, n: int = 2) -> list[str]:
    """Character n-grams of the normalized text; a text shorter than n gives itself (if non-empty)."""
    s = normalize(text)
    if len(s) < n:
        return [s] if s else []
    return [s[i : i + n] for i in range(len(s) - n + 1)]


def jaccard(a: set, b: set) -> float:
    """|a ∩ b| / |a ∪ b| (0.0 for two empty sets)."""
    return len(a & b) / len(a | b) if a or b else 0.0


_UNIT = re.compile(r"[^\W_]+", re.UNICODE)
_CJK = re.compile(r"([\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff\U00020000-\U0002fa1f])")


def units(text: str) -> list[str]:
    """Words of the normalized text: a run of letters/digits in a spaced script (English, 2024) is one unit,
    each CJK character (Chinese, Japanese kana, Korean) is one; whitespace and punctuation are dropped."""
    s = unicodedata.normalize("NFKC", text).lower()
    return [u for word in _UNIT.findall(s) for u in _CJK.split(word) if u]


def grounding_score(answer: str, source: str, n: int = 2) -> float:
    """Fraction of the answer's unit n-grams (with multiplicity; units as in `units`: characters of Chinese,
    words of English) found in the source: 1.0 = every n-gram of the answer appears in the source; an answer
    made up of other words scores near 0. Word units keep English honest: its character bigrams are so common
    that a contradicting English answer shared most of them with any chunk."""
    u = units(answer)
    if not u:
        return 0.0
    grams = [tuple(u[i : i + n]) for i in range(max(1, len(u) - n + 1))]
    src = units(source)
    have = {tuple(src[i : i + len(grams[0])]) for i in range(max(1, len(src) - len(grams[0]) + 1))}
    return sum(g in have for g in grams) / len(grams)


def near_duplicates(texts: Sequence[str], threshold: float = 0.8, n: int = 3) -> list[int | None]:
    """For each text, the index of an earlier kept text it nearly duplicates (char n-gram Jaccard ≥
    threshold), else None. Greedy in input order; an inverted index keeps it near-linear."""
    index: dict[str, list[int]] = {}
    grams = [set(char_ngrams(t, n)) for t in texts]
    out: list[int | None] = []
    for i, g in enumerate(grams):
        # 1. candidates: kept texts sharing at least one n-gram; 2. the first one over the threshold wins
        cands = sorted({j for x in g for j in index.get(x, ())})
        dup = next((j for j in cands if jaccard(g, grams[j]) >= threshold), None)
        out.append(dup)
        if dup is None:
            for x in g:
                index.setdefault(x, []).append(i)
    return out


def _grams(text: str, ns: tuple[int, ...]) -> list[str]:
    return [g for n in ns for g in char_ngrams(text, n)]


def tfidf(texts: Sequence[str], ns: tuple[int, ...] = (1, 2), top_vocab: int = 20000) -> tuple[Any, list[str]]:
    """L2-normalized TF-IDF rows over char n-grams (scikit-learn's smooth idf, ln((1+N)/(1+df)) + 1), as a
    sparse `csr_array` (`x[i] @ x[j]` is the cosine); returns (matrix, vocabulary). Keeps the `top_vocab`
    most frequent n-grams."""
    from scipy.sparse import csr_array
    from sklearn.feature_extraction.text import TfidfVectorizer

    vec = TfidfVectorizer(analyzer=partial(_grams, ns=ns), max_features=top_vocab, dtype=np.float64)
    if not any(_grams(t, ns) for t in texts):  # sklearn refuses an empty vocabulary
        return csr_array((len(texts), 0)), []
    x = vec.fit_transform(texts)
    return csr_array(x), vec.get_feature_names_out().tolist()


def unit_rows(x: Any) -> Any:
    """Each row divided by its L2 norm (all-zero rows stay zero); sparse stays sparse."""
    from sklearn.preprocessing import normalize as l2_rows

    return l2_rows(x) if x.shape[0] else x  # sklearn refuses zero rows


def embed(texts: Sequence[str], model_path: str, batch_size: int = 16) -> np.ndarray:
    """L2-normalized mean-pooled last hidden states of a local HF encoder (any AutoModel dir)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from weitiao.errors import UserError

    try:
        tok = AutoTokenizer.from_pretrained(model_path)
        model = AutoModel.from_pretrained(model_path).eval()
    except (OSError, ValueError) as e:
        raise UserError(f"--embed-model {model_path}: cannot load ({str(e).splitlines()[0][:120]})") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    rows = []
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            batch = list(texts[i : i + batch_size])
            enc = tok(batch, padding=True, truncation=True, max_length=256, return_tensors="pt")
            h = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
            rows.append(((h * mask).sum(1) / mask.sum(1).clamp_min(1)).float().numpy())
    return unit_rows(np.concatenate(rows) if rows else np.zeros((0, 1)))
