"""Provenance scoring (chapter Q143): how well does a text fit "model M wrote it from prompt P"?

    weitiao provenance --model demo --prompt "今天天气怎么样？" --text "挺好的" --samples 20 --html out.html

The math, top to bottom:
1. `encode`: prompt rendered by the chat template with the generation prompt, then the text
   (plus the end-of-turn token with `with_eos`; `likeliest_end` swaps in the base's EOS where the model ends
   its reply with that instead); only text tokens are scored.
2. `token_stats`: per text token, the raw log-prob and rank (1 = argmax), and under the claimed
   sampling distribution q (temperature T, then top-k, then top-p, the Hugging Face / vLLM order)
   the tempered log-prob s = log p_T(x), its expectation E_q[log p_T] and variance Var_q[log p_T],
   and whether x lies inside q's support.
3. `summarize`: sums, perplexity, bits, rank buckets and the analytic sampling-discrepancy
   z = (Σ s − Σ E) / sqrt(Σ Var). If the text was sampled from q, each s has mean E given its prefix,
   so z is a martingale sum and close to N(0, 1). Fast-DetectGPT (Bao et al. 2024, eq. 4) uses the
   same statistic at T = 1 without truncation; here the claimed T and top-p define q.
4. `score_tokens`: long texts in sliding windows; every window keeps the whole prompt, each text
   token is scored exactly once, with up to `window − len(prompt) − stride` text tokens of context.
5. `sample`: K replies drawn from exactly that q (our own KV-cached loop, so the samples follow
   the same truncation the analytic z assumes); T = 0 gives the greedy reply.
6. `search_segmentation`: a sampled reply is a token sequence, and its text can re-tokenize into other tokens (a model
   that wrote 挺 好 的 is scored on the merged 挺好的, which it may never emit). A beam search over the token
   sequences that spell the text's bytes finds those q likeliest emitted: fewest tokens outside q's support, then
   the highest Σ log q. Scoring the best of several would bias z (`provenance_report._searched` averages z over the
   segmentations found, weighted by q, and takes off the lean the same search shows on the model's own samples).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import torch

from weitiao.data.templates import ChatTemplate
from weitiao.errors import UserError
from weitiao.eval.metrics import lcs_length

LN2 = math.log(2.0)
CHUNK = 2**20  # logits per token_stats call (rows x vocab)
NEAR = 0.1  # mass_above is exact within this distance of top_p (support tolerances must stay below it)
RANK_BUCKETS = (("1", 1, 1), ("2-10", 2, 10), ("11-100", 11, 100), ("101-1000", 101, 1000), (">1000", 1001, None))


@dataclass(frozen=True)
class Sampling:
    """The claimed decoding settings."""

    temperature: float = 0.7  # 0 = greedy
    top_p: float = 0.9  # nucleus mass kept (1 = off)
    top_k: int = 0  # keep the k most likely tokens first (0 = off)


@dataclass
class Encoded:
    """Token ids of the context (prompt rendered with the generation prompt) and of the scored text."""

    context_ids: list[int]
    text_ids: list[int]
    notes: list[str] = field(default_factory=list)  # tokenization warnings, shown in the report


# ---------------------------------------------------------------- 1. tokenization


def encode(tokenizer: Any, template: ChatTemplate, messages: list[dict], text: str, with_eos: bool = False) -> Encoded:
    """Tokenize as generation would: template(messages, generation prompt) tokens, then the text's tokens."""
    prompt = template.render(tokenizer, messages, add_generation_prompt=True)
    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    t_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    full = tokenizer(prompt + text, add_special_tokens=False)["input_ids"]
    notes: list[str] = []
    if full[: len(p_ids)] != p_ids:
        # A model that generates the text emits its tokens after the prompt tokens; a merge across
        # the boundary can only appear when the concatenated string is re-tokenized.
        notes.append(
            "BPE merges across the prompt/text boundary when re-tokenized together; scored as prompt tokens "
            "+ text tokens, the split a model produces when it generates the text"
        )
    elif full[len(p_ids) :] != t_ids:
        # e.g. SentencePiece adds a prefix space to a text tokenized alone: trust the in-context split
        t_ids = full[len(p_ids) :]
        notes.append("the text tokenizes differently alone than after the prompt; used the in-context tokens")
    if tokenizer.decode(t_ids) != text:
        notes.append("decoding the text tokens does not give the text back exactly (tokenizer normalization)")
    if with_eos:
        t_ids = t_ids + [tokenizer.convert_tokens_to_ids(template.eot)]
    if not t_ids:
        raise UserError("provenance: the text is empty; pass --text or --text-file with some content")
    return Encoded(p_ids, t_ids, notes)


def empty_context(tokenizer: Any, template: ChatTemplate) -> tuple[list[int], str]:
    """Context for "the text without the prompt": an empty user turn, else the BOS/EOS token alone."""
    try:
        prompt = template.render(tokenizer, [{"role": "user", "content": ""}], add_generation_prompt=True)
        return tokenizer(prompt, add_special_tokens=False)["input_ids"], "an empty user turn"
    except Exception:  # templates may reject an empty turn
        tid = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        return [tid], "the BOS token alone"


# ---------------------------------------------------------------- 2. per-token statistics


def tempered_support(logits: torch.Tensor, s: Sampling) -> tuple[torch.Tensor, torch.Tensor]:
    """log p_T (untruncated) and the boolean support mask of q (top-k, then top-p), both [N, V].

    A token is kept by top-p when the tempered mass of the tokens sorted above it is < top_p
    (the same rule as transformers' TopPLogitsWarper); at least one token is always kept.
    """
    if s.temperature <= 0:  # greedy: the support is the argmax
        logp = torch.log_softmax(logits.float(), -1)
        return logp, logits == logits.max(-1, keepdim=True).values
    logp_t = torch.log_softmax(logits.float() / s.temperature, -1)
    if s.top_p >= 1 and s.top_k <= 0:
        return logp_t, torch.ones_like(logp_t, dtype=torch.bool)
    sorted_lp, order = logp_t.sort(-1, descending=True)
    p = sorted_lp.exp()
    if s.top_k > 0:
        p[..., s.top_k :] = 0.0  # top-k first, then top-p on the renormalized rest
        p = p / p.sum(-1, keepdim=True)
    keep = (p.cumsum(-1) - p) < s.top_p
    keep &= p > 0
    keep[..., 0] = True
    return logp_t, torch.zeros_like(keep).scatter(-1, order, keep)


def token_stats(logits: torch.Tensor, targets: torch.Tensor, s: Sampling, k0: int = 16) -> dict[str, torch.Tensor]:
    """Per-token statistics of `targets` [N] given the logits [N, V] that predict them.

    Speed: a few passes over the vocabulary (two log-sum-exps and a top-`k0`); ranks come from the
    top-`k0` and only targets below it are counted over the vocabulary; the
    nucleus and q's mean / variance come from the top-`k0` tempered log-probs; only rows whose
    nucleus is wider take a wider top-k (8x a round). For targets below a closed nucleus and
    below the top k, `mass_above` is the top-k mass (a lower bound) unless that is within NEAR
    of top_p, where it is computed exactly.
    """
    logits = logits.float()
    x = targets[:, None]
    lx = logits.gather(-1, x)
    v = logits.shape[1]
    k = min(v, s.top_k if s.top_k > 0 else k0)
    top_logits = logits.topk(k, -1).values
    rank = 1 + (top_logits > lx).sum(-1)  # exact when the target is within the top k
    deep = lx[:, 0] < top_logits[:, -1]
    if bool(deep.any()):  # one pass over all rows: cheaper than copying out the deep ones
        rank = torch.where(deep, 1 + (logits > lx).sum(-1), rank)
    # the max comes with the top k; clamping at −80 (e^−80 ≈ 2e-35) keeps exp off the slow denormal path
    shifted = (logits - top_logits[:, :1]).clamp_(min=-80.0)
    lp_x = (lx - top_logits[:, :1])[:, 0] - shifted.exp().sum(-1).log()
    if s.temperature <= 0:  # greedy: q is the argmax, z is undefined
        zero = torch.zeros_like(lp_x, dtype=torch.float64)
        return {
            "logp": lp_x.double(),
            "rank": rank,
            "logp_t": lp_x.double(),
            "mean_t": zero,
            "var_t": zero,
            "mass_above": zero,
            "in_support": rank == 1,
            "log_q": torch.where(rank == 1, 0.0, -math.inf).double(),
        }
    z = logits / s.temperature
    tempered_sum = shifted.div_(s.temperature).clamp_(min=-80.0).exp_().sum(-1, keepdim=True)
    lse_t = top_logits[:, :1] / s.temperature + tempered_sum.log()
    s_x = (lx / s.temperature - lse_t)[:, 0]
    if s.top_p >= 1 and s.top_k <= 0:  # q = p_T over the whole vocabulary
        logq = z - lse_t
        q = logq.exp()
        mean = (q * logq).sum(-1)
        var = (q * (logq - mean[:, None]) ** 2).sum(-1)
        mass_above = torch.where(logits > lx, q, 0.0).sum(-1)
        in_support = torch.ones_like(rank, dtype=torch.bool)
        log_kept = torch.zeros_like(s_x)
    else:
        top = top_logits / s.temperature - lse_t
        mean, var, mass_above, in_support, log_kept = _nucleus(top, rank, s)
        rows = torch.arange(len(z), device=z.device)
        while s.top_k <= 0 and k < v:  # widen (8x a round) the rows whose nucleus may reach past the top k
            open_ = top.exp().sum(-1) < s.top_p
            rows, k = rows[open_], min(v, 8 * k)
            if len(rows) == 0:
                break
            top = z[rows].topk(k, -1).values - lse_t[rows]
            mean[rows], var[rows], mass_above[rows], in_support[rows], log_kept[rows] = _nucleus(top, rank[rows], s)
        # targets below the top k of a closed nucleus: the top-k mass is a lower bound of the mass
        # above them; exact only where it can decide a tolerance (bound < top_p + NEAR)
        far = mass_above < 0
        if s.top_k <= 0 and bool(far.any()):
            bound = top_logits.div(s.temperature).sub(lse_t).exp().sum(-1)
            near = far & (bound < s.top_p + NEAR)
            mass_above = torch.where(far, bound, mass_above)
            if bool(near.any()):
                mass_above[near] = torch.where(
                    logits[near] > lx[near], (z[near] - lse_t[near]).clamp(min=-80).exp(), 0.0
                ).sum(-1)
    return {
        "logp": lp_x.double(),
        "rank": rank,
        "logp_t": s_x.double(),
        "mean_t": mean.double(),
        "var_t": var.double(),
        "mass_above": mass_above.double(),
        "in_support": in_support,
        "log_q": (s_x - log_kept).double(),
    }


def _nucleus(
    sorted_logp: torch.Tensor, rank: torch.Tensor, s: Sampling
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """q's E[log p_T], Var[log p_T], the mass above the target, its membership and log of the p_T mass q keeps, from
    the top tempered log-probs [N, k] sorted descending. mass_above is −1 where the target ranks below k (unknown)."""
    p = sorted_logp.exp()
    if s.top_k > 0:  # top-k first, then top-p on the renormalized rest (transformers / vLLM order)
        p = p[:, : s.top_k] / p[:, : s.top_k].sum(-1, keepdim=True)
        sorted_logp = sorted_logp[:, : s.top_k]
    before = p.cumsum(-1) - p
    keep = (before < s.top_p) & (p > 0)
    keep[:, 0] = True
    q = torch.where(keep, p, 0.0)
    q = q / q.sum(-1, keepdim=True)
    lq = torch.where(keep, sorted_logp, 0.0)
    mean = (q * lq).sum(-1)
    var = (q * torch.where(keep, sorted_logp - mean[:, None], 0.0) ** 2).sum(-1)
    k = p.shape[1]
    pos = (rank - 1).clamp(max=k - 1)[:, None]
    inside = rank <= k
    mass_above = torch.where(inside, before.gather(-1, pos)[:, 0], 1.0 if s.top_k > 0 else -1.0)
    log_kept = torch.where(keep, sorted_logp, -math.inf).logsumexp(-1)
    return mean, var, mass_above, inside & keep.gather(-1, pos)[:, 0], log_kept


def cat_stats(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


# ---------------------------------------------------------------- 3. summary numbers


def outside_support(st: dict[str, torch.Tensor], s: Sampling, tol: float) -> torch.Tensor:
    """Tokens outside q's support by more than `tol` of nucleus mass (or past top-k; greedy: not rank 1)."""
    if tol >= NEAR:
        raise ValueError(f"support tolerance {tol} must be below NEAR = {NEAR}")
    if s.temperature <= 0:
        return st["rank"] > 1
    out = ~st["in_support"] & (st["mass_above"] >= min(1.0, s.top_p + tol))
    if s.top_k > 0:
        out |= st["rank"] > s.top_k
    return out


def summarize(st: dict[str, torch.Tensor], s: Sampling, n_chars: int, tol: float = 0.02) -> dict[str, Any]:
    """Token count, log-prob sums, perplexity, bits, rank statistics and the analytic z."""
    n = len(st["logp"])
    total = float(st["logp"].sum())
    rank = st["rank"]
    buckets = {}
    for name, lo, hi in RANK_BUCKETS:
        hit = (rank >= lo) & (rank <= hi) if hi else rank >= lo
        buckets[name] = float(hit.double().mean())
    top1 = (rank == 1).tolist()
    prefix = top1.index(False) if False in top1 else n
    var = float(st["var_t"].sum())
    z = None
    if s.temperature > 0 and var > 0:
        z = (float(st["logp_t"].sum()) - float(st["mean_t"].sum())) / math.sqrt(var)
    return {
        "n_tokens": n,
        "n_chars": n_chars,
        "sum_logp": total,
        "mean_logp": total / n,
        "perplexity": math.exp(-total / n),
        "log2_prob": total / LN2,
        "bits_per_char": -total / LN2 / max(1, n_chars),
        "top1_rate": float((rank == 1).double().mean()),
        "rank_buckets": buckets,
        "mean_log_rank": float(rank.double().log().mean()),
        "greedy_prefix_tokens": prefix,
        "z": z,
        "sum_logp_t": float(st["logp_t"].sum()),
        "expected_logp_t": float(st["mean_t"].sum()),
        "sd_logp_t": math.sqrt(var),
        "outside_support": int(outside_support(st, s, tol).sum()),
        "outside_support_strict": int((~st["in_support"]).sum()),
    }


# ---------------------------------------------------------------- 4. sliding-window scoring


def max_positions(model: Any) -> int:
    cfg = getattr(model, "config", None)
    return int(getattr(cfg, "max_position_embeddings", 0) or 2048)


def _logits(model: Any, ids: torch.Tensor, keep: int) -> torch.Tensor:
    try:
        return model(input_ids=ids, logits_to_keep=keep, use_cache=False).logits[0, -keep:]
    except TypeError:  # models without `logits_to_keep`
        return model(input_ids=ids, use_cache=False).logits[0, -keep:]


@torch.no_grad()
def score_tokens(
    model: Any,
    context_ids: list[int],
    text_ids: list[int],
    s: Sampling,
    window: int | None = None,
    stride: int | None = None,
) -> dict[str, torch.Tensor]:
    """Per-token stats of `text_ids` after `context_ids`, in windows of at most `window` tokens."""
    if not context_ids:
        raise UserError("provenance: the context is empty; the first text token needs a token before it")
    if (window is not None and window < 1) or (stride is not None and stride < 1):
        raise UserError(f"provenance: window {window} / stride {stride}; both are token counts ≥ 1")
    if window is not None and window > max_positions(model):  # it was lowered to the maximum without a word
        raise UserError(
            f"provenance: --window {window} is over the model's {max_positions(model)} positions "
            "(max_position_embeddings); use at most that, or leave --window out"
        )
    window = window or max_positions(model)
    room = window - len(context_ids)  # text tokens that fit beside the whole prompt
    if room < 2:
        raise UserError(
            f"provenance: the prompt has {len(context_ids)} tokens, the window {window}; "
            "use a shorter prompt or a larger --window"
        )
    stride = min(stride or max(1, room // 2), room)
    device = next(model.parameters()).device
    parts, done, n = [], 0, len(text_ids)
    while done < n:
        end = min(n, done + (room if done == 0 else stride))
        start = max(0, end - room)
        ids = torch.tensor([context_ids + text_ids[start:end]], device=device)
        k = end - done  # the last k tokens are new; k + 1 logits predict them
        logits = _logits(model, ids, k + 1)[:-1]
        targets = torch.tensor(text_ids[done:end], device=device)
        rows = max(1, CHUNK // logits.shape[-1])  # blocks of ~1M logits keep the temporaries in cache
        parts += [token_stats(logits[i : i + rows], targets[i : i + rows], s) for i in range(0, k, rows)]
        done = end
    return {k: v.cpu() for k, v in cat_stats(parts).items()}


@torch.no_grad()
def likeliest_end(
    model: Any, context_ids: list[int], text_ids: list[int], ends: list[int], window: int | None = None
) -> int:
    """Of `ends`, the ids a reply ends at (the template's end-of-turn, the base's EOS), the one the model finds
    likeliest after `text_ids`, seen as the last window of `score_tokens` sees it (`ends[0]` when no room)."""
    keep = min(window or max_positions(model), max_positions(model)) - len(context_ids) - 1
    if len(ends) < 2 or keep < 1:
        return ends[0]
    ids = torch.tensor([context_ids + text_ids[len(text_ids) - min(keep, len(text_ids)) :]])
    logits = _logits(model, ids.to(next(model.parameters()).device), 1)[-1]
    return ends[int(logits[ends].argmax())]


# ---------------------------------------------------------------- 5. sampling from q


@torch.no_grad()
def sample(
    model: Any,
    context_ids: list[int],
    k: int,
    max_new: int,
    s: Sampling,
    stop_id: int | list[int],
    seed: int = 0,
    ends: Collection[int] = (),
) -> list[list[int]]:
    """K replies from q (KV cache, one batch); each stops after `stop_id` (a token, or a token sequence such
    as a multi-token `</think>`) or any id of `ends` (a base's EOS beside the end-of-turn), which it keeps."""
    stop = [stop_id] if isinstance(stop_id, int) else list(stop_id)
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    ids = torch.tensor([context_ids] * k, device=device)
    out = model(input_ids=ids, use_cache=True)
    seqs: list[list[int]] = [[] for _ in range(k)]
    done = torch.zeros(k, dtype=torch.bool, device=device)
    for _ in range(max_new):
        logits = out.logits[:, -1].float()
        if s.temperature <= 0:
            nxt = logits.argmax(-1)
        else:
            logp_t, keep = tempered_support(logits, s)
            probs = torch.where(keep, logp_t.exp(), 0.0)
            nxt = torch.multinomial(probs, 1, generator=gen)[:, 0]
        for i, t in enumerate(nxt.tolist()):
            if not done[i]:
                seqs[i].append(t)
                done[i] = seqs[i][-len(stop) :] == stop or t in ends
        if bool(done.all()):
            break
        # transformers ≥ 5.2x names the KV cache `cache` (was `past_key_values`)
        kv = {"cache": out.cache} if hasattr(out, "cache") else {"past_key_values": out.past_key_values}
        out = model(input_ids=nxt[:, None], use_cache=True, **kv)
    return seqs


# ---------------------------------------------------------------- 6. the segmentation a sample likeliest had


@dataclass
class Segmentation:
    """The likeliest token sequence found that spells the text, and what the search saw."""

    ids: list[int]
    outside: int  # its tokens outside q's support (strict)
    sum_log_q: float  # Σ log q of its tokens (outside the support: log p_T over the mass q keeps)
    found: int  # complete segmentations left in the final beam
    log_p_found: float  # log Σ p over them (untempered): a lower bound of log p(text)
    candidates: list[list[int]] = field(default_factory=list)  # those segmentations, likeliest first


def _common_prefix(paths: list[list[int]], cap: int) -> list[int]:
    """The longest prefix (at most `cap` ids) all `paths` share."""
    n = 0
    while n < cap and all(p[n] == paths[0][n] for p in paths):
        n += 1
    return paths[0][:n]


def _last_logits(model: Any, context: Any, paths: list[list[int]]) -> torch.Tensor:
    """Logits after a shared prefix (`context`, its KV cache) and each path, in one forward: the paths right-padded
    (causal attention keeps a row's real positions from the padding after it), on a copy of the prefix's cache."""
    device = next(model.parameters()).device
    width = max(map(len, paths))
    rows = torch.tensor([[*p, *[p[-1]] * (width - len(p))] for p in paths], device=device)
    cache = copy.deepcopy(context)
    cache.batch_repeat_interleave(len(paths))
    out = model(input_ids=rows, past_key_values=cache, use_cache=True).logits
    return out[torch.arange(len(paths)), torch.tensor([len(p) - 1 for p in paths])].float()


@torch.no_grad()
def search_segmentation(
    model: Any, table: list[bytes | None], context_ids: list[int], data: bytes, s: Sampling, beam: int = 4
) -> Segmentation | None:
    """Beam search, by byte position, over token sequences whose bytes (`table`, per id) are `data`; at each position
    the `beam` likeliest under q (fewest tokens outside its support, then highest Σ log q) are kept and extended. None
    when no sequence spells `data` (a byte no token holds)."""
    by_bytes: dict[bytes, list[int]] = {}
    for i, b in enumerate(table):
        if b:
            by_bytes.setdefault(b, []).append(i)
    longest = max(map(len, by_bytes))
    device = next(model.parameters()).device
    first = model(input_ids=torch.tensor([context_ids], device=device), use_cache=True)
    shared, cache = [], first.past_key_values  # cache: of context_ids + shared, a prefix every live path has
    # frontier[i]: the `beam` best paths ending at byte i as (outside, −Σ log q, Σ log p, ids), all extended at once
    frontier: list[list[tuple]] = [[] for _ in range(len(data) + 1)]
    frontier[0] = [(0, 0.0, 0.0, [])]
    for i in range(len(data)):
        if not frontier[i]:
            continue
        if i == 0:
            logits = first.logits[:, -1].float()
        else:
            live = [p[3] for f in frontier[i:] for p in f]
            common = _common_prefix(live, min(map(len, live)) - 1)  # every path keeps a token to feed
            if len(common) > len(shared):
                new = torch.tensor([common[len(shared) :]], device=device)
                cache = model(input_ids=new, past_key_values=cache, use_cache=True).past_key_values
                shared = common
            logits = _last_logits(model, cache, [p[3][len(shared) :] for p in frontier[i]])
        logp_t, keep = tempered_support(logits, s)
        log_q = logp_t - torch.where(keep, logp_t, -math.inf).logsumexp(-1, keepdim=True)  # as token_stats' log_q
        logp = torch.log_softmax(logits, -1)
        for row, (out_n, neg, lp, ids) in enumerate(frontier[i]):
            for n in range(1, min(longest, len(data) - i) + 1):
                for t in by_bytes.get(data[i : i + n], ()):
                    out_t, lq = out_n + int(not keep[row, t]), neg - float(log_q[row, t])
                    frontier[i + n].append((out_t, lq, lp + float(logp[row, t]), [*ids, t]))
        for n in range(1, min(longest, len(data) - i) + 1):
            frontier[i + n] = sorted(frontier[i + n], key=lambda p: p[:2])[:beam]
    done = sorted(frontier[-1], key=lambda p: p[:2])
    if not done:
        return None
    best, log_p = done[0], float(torch.tensor([p[2] for p in done]).logsumexp(0))
    return Segmentation(best[3], best[0], -best[1], len(done), log_p, [p[3] for p in done])


# ---------------------------------------------------------------- text overlap


def rouge_l_chars(candidate: str, reference: str) -> float:
    """Character-level ROUGE-L F1 (whitespace ignored), the usual choice for Chinese."""
    a, b = "".join(candidate.split()), "".join(reference.split())
    if not a or not b:
        return float(a == b)
    m = lcs_length(a, b)
    return 0.0 if m == 0 else 2 * m / (len(a) + len(b))


def common_prefix(a: str, b: str) -> int:
    """Number of leading characters two strings share."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n
