"""Direct preference optimization (sigmoid/ipo/hinge, label smoothing, RPO), one run top to bottom.

    weitiao dpo examples/demo_dpo.yaml dpo.beta=0.1
    weitiao dpo examples/demo_dpo.yaml --sweep beta=0.01,0.1,0.5

Steps: 1. pairs → tokens (shared prompt tokens, loss on replies only) → 2. policy (LoRA or full)
and reference (the same base with the adapter disabled; the starting adapter, frozen, with
lora.init_from; a frozen copy for full tuning; or log-probs precomputed once and cached) →
3. resume → 4. loop: chosen and rejected of each pair packed into one forward, per-sequence
log-probs by segment sums, loss, metrics, eval, checkpoint → 5. save.

Pairs are packed padding-free like SFT rows: both sides of a pair sit in the same row, positions
restart per sequence, so log-probs equal those of separate forwards (tested; checked at start).
Metrics: `margins` are β-scaled; `logp_gap` is the unscaled (log π − log π_ref)(chosen) − (same)(rejected);
`kl_offpolicy_data` is the per-token k3 term exp(r)−1−r, r = log π_ref − log π, on the *data's* reply
tokens — not a KL of the policy (rejected replies the policy learned to avoid dominate it). Eval adds
the on-policy KL(π‖π_ref): replies sampled from π (temperature 1, `dpo.kl_max_new_tokens` tokens),
Σ(log π − log π_ref) over the sampled tokens, per sequence (`kl_onpolicy_seq`) and per token.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from weitiao.config import ConfigPath, DataPath, ModelRef, dump_config
from weitiao.data.chat import IGNORE, Encoded
from weitiao.data.collate import Batch, collate, n_targets, process_share
from weitiao.data.formats import MAX_ROW_BYTES, PreferencePair
from weitiao.data.preference import PairStats, encode_pairs, load_pairs, pair_rows
from weitiao.data.prep import count_overlap, overlap_warning, pair_key, require_rows, split_eval
from weitiao.data.templates import ChatTemplate, resolve_template
from weitiao.errors import UserError
from weitiao.losses.preference import LENGTH_AVERAGED, dpo_terms, k3_kl
from weitiao.losses.sft import CausalLMLoss
from weitiao.models.attention import check_isolation, needs_one_row, refuse_untrainable
from weitiao.models.load import (
    LoraSpec,
    ModelSpec,
    build_trainable,
    count_params,
    disable_dropout,
    load_lora,
    load_model,
    load_tokenizer,
    resolve_path,
)
from weitiao.recipes.sft import TrainSpec
from weitiao.train import loop

METRICS = ("loss", "rewards/chosen", "rewards/rejected", "margins", "accuracy", "logps/chosen", "logps/rejected")
# Sums every micro-step returns (evaluate() starts from zeros for these, so a rank without pairs still reduces).
SUM_KEYS = (
    "loss_sum",
    "rewards/chosen_sum",
    "rewards/rejected_sum",
    "margins_sum",
    "accuracy_sum",
    "logp_gap_sum",
    "logps/chosen_sum",
    "logps/rejected_sum",
    "kl_offpolicy_data_sum",
    "tokens",
    "nll_chosen_sum",
    "chosen_tokens",
    "pairs",
    "weight_sum",
)


class PrefDataSpec(BaseModel):
    """Preference data: prompt (or history) + chosen + rejected rows."""

    model_config = ConfigDict(extra="forbid")

    train: list[DataPath]
    eval: list[DataPath] = Field(default_factory=list)
    dataset_dir: ConfigPath | None = Field(
        None, description="LLaMA-Factory data folder: train/eval are names in its dataset_info.json"
    )
    eval_split: float = Field(0.0, ge=0, lt=1)
    format: Literal["auto", "preference", "preference_raw"] = Field(
        "auto", description="preference_raw: prompt/chosen/rejected strings as raw text, no template (as TRL)"
    )
    template: Literal["auto", "tokenizer", "chatml", "qwen", "llama3", "plain"] = "auto"
    max_len: int = Field(1024, gt=8, description="per sequence (prompt + one reply)")
    truncation: Literal["drop", "cut_response"] = "drop"
    packing: bool = True
    skip_invalid: bool = False
    max_row_bytes: int = Field(MAX_ROW_BYTES, gt=0, description="a longer JSONL row is rejected unread (file:line)")
    weight_field: str | None = Field(
        None, description="row field with a per-pair loss weight ≥ 0, e.g. confidence (DPO: Σ w·loss / Σ w)"
    )
    min_confidence: float | None = Field(
        None, ge=0, le=1, description="drop train and eval pairs whose `confidence` field is below this"
    )
    cache: bool = Field(
        True, description="keep tokenized pairs on disk (Arrow, memory-mapped); a rerun skips tokenizing"
    )
    cache_dir: ConfigPath | None = Field(
        None, description="default $WEITIAO_CACHE/tokenized, else ~/.cache/weitiao/tokenized"
    )
    num_proc: int = Field(0, ge=0, description="tokenizing processes; 0 = CPU cores (at most 8)")


class DPOSpec(BaseModel):
    """The DPO objective."""

    model_config = ConfigDict(extra="forbid")

    beta: float = Field(0.1, gt=0, description="strength of the pull toward the reference")
    loss_type: Literal["sigmoid", "ipo", "hinge"] = "sigmoid"
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="conservative DPO ε (sigmoid only)")
    rpo_alpha: float = Field(0.0, ge=0, description="weight of the NLL term on chosen replies (RPO)")
    precompute_ref: bool = Field(False, description="reference log-probs in one pass, cached to disk")
    reference: ModelRef | None = Field(None, description="reference model dir; default: base without adapter")
    warn_falling_chosen: int = Field(20, description="warn after this many steps of falling chosen log-probs")
    kl_max_new_tokens: int = Field(
        32, ge=0, description="reply tokens sampled per eval prompt for the on-policy KL; 0 = off"
    )

    @model_validator(mode="after")
    def _smoothing_needs_sigmoid(self) -> DPOSpec:
        if self.label_smoothing and self.loss_type != "sigmoid":
            raise ValueError(
                f"dpo.label_smoothing={self.label_smoothing} is only used by loss_type sigmoid, "
                f"not {self.loss_type}; set it to 0"
            )
        return self


class DPOTrainSpec(TrainSpec):
    out: ConfigPath = "runs/dpo"
    disable_dropout: bool = Field(True, description="dropout off in the policy, so step 0 has π = π_ref")


class DPOConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: ModelSpec = Field(default_factory=ModelSpec)
    lora: LoraSpec = Field(default_factory=LoraSpec)
    data: PrefDataSpec
    dpo: DPOSpec = Field(default_factory=DPOSpec)
    train: DPOTrainSpec = Field(default_factory=DPOTrainSpec)


@dataclass
class PrefData:
    template: ChatTemplate
    train: list[Encoded]  # [chosen_0, rejected_0, chosen_1, ...]
    eval: list[Encoded]
    stats: PairStats
    read: int
    rejected: int
    weights: list[float] | None = None  # per train pair, from data.weight_field
    low_confidence: int = 0  # pairs dropped by data.min_confidence


def _row_number(pair: PreferencePair, name: str, key: str) -> float:
    v = pair.extra.get(name)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        got = "missing" if v is None else f"{v!r} is not a number ≥ 0"
        raise UserError(f"{pair.source}: {name}: {got} ({key} reads it)")
    return float(v)


def _confident(pairs: list[PreferencePair], least: float | None) -> list[PreferencePair]:
    if least is None:
        return pairs
    return [p for p in pairs if _row_number(p, "confidence", "data.min_confidence") >= least]


def prepare_pairs(cfg: DPOConfig, tokenizer: Any) -> PrefData:
    d = cfg.data
    template = resolve_template(tokenizer, d.template)
    rejects = Path(cfg.train.out) / "rejects.jsonl"
    loaded = load_pairs(d.train, d.format, d.skip_invalid, rejects, d.max_row_bytes, d.dataset_dir)
    require_rows(loaded, "data.train")
    pairs, read, rejected = loaded.rows, loaded.read, loaded.rejected
    if d.eval:
        ev_rejects = rejects.with_name("eval_rejects.jsonl")
        ev = load_pairs(d.eval, d.format, d.skip_invalid, ev_rejects, d.max_row_bytes, d.dataset_dir)
        require_rows(ev, "data.eval")
        eval_pairs, read, rejected = ev.rows, read + ev.read, rejected + ev.rejected
    elif d.eval_split:
        split = split_eval(pairs, d.eval_split, cfg.train.seed, pair_key)  # copies stay on one side
        pairs, eval_pairs = split.train, split.eval
    else:
        eval_pairs = []
    if overlap := count_overlap(pairs, eval_pairs, pair_key):
        print("warning: " + overlap_warning("data.eval", overlap, len(eval_pairs)))
    n_read = len(pairs) + len(eval_pairs)
    pairs, eval_pairs = _confident(pairs, d.min_confidence), _confident(eval_pairs, d.min_confidence)
    if not pairs:
        raise UserError(f"data.min_confidence: no train pair has confidence ≥ {d.min_confidence}")
    enc = {"cache_dir": d.cache_dir, "use_cache": d.cache, "num_proc": d.num_proc, "progress": cfg.train.progress}
    train, stats = encode_pairs(pairs, tokenizer, template, d.max_len, d.truncation, **enc)
    evals, _ = encode_pairs(eval_pairs, tokenizer, template, d.max_len, d.truncation, **enc)
    if not train:
        raise UserError(f"data.train: no pairs left after truncation {d.truncation!r} (max_len {d.max_len})")
    weights = None
    if d.weight_field:  # by source (file:line): encoding may drop pairs
        by_source = {p.source: _row_number(p, d.weight_field, "data.weight_field") for p in pairs}
        weights = [by_source[e.source] for e in train[0::2]]
        if not sum(weights) > 0:
            raise UserError(f"data.weight_field: every train pair has {d.weight_field} 0")
    low = n_read - len(pairs) - len(eval_pairs)
    return PrefData(template, train, evals, stats, read, rejected, weights, low)


def sequence_logps(loss_mod: Any, b: Batch, n_seqs: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-target log-probs (row-major), their sum per sequence, and target count per sequence."""
    tok = loss_mod(b.input_ids, b.targets, b.position_ids, b.attention_mask, per_token=True)
    seq = b.seq_index[b.targets != IGNORE]
    sums = torch.zeros(n_seqs, device=tok.device, dtype=tok.dtype).index_add(0, seq, tok)
    counts = torch.zeros(n_seqs, device=tok.device, dtype=tok.dtype).index_add(0, seq, torch.ones_like(tok))
    return tok, sums, counts


def _files_identity(path: str | None) -> Any:
    """What identifies weights on disk: (name, size, mtime) of each file; content hash for small files."""
    if not path:
        return None
    root = Path(resolve_path(path))
    if not root.is_dir():
        return path  # a hub id: the name is all we know here
    files = []
    for f in sorted(x for x in root.rglob("*") if x.is_file() and "checkpoints" not in x.parts):
        st = f.stat()
        digest = hashlib.sha256(f.read_bytes()).hexdigest() if st.st_size < 64 << 20 else st.st_mtime_ns
        files.append([str(f.relative_to(root)), st.st_size, digest])
    return {"path": str(root.resolve()), "files": files}


def cache_key(cfg: DPOConfig, template: ChatTemplate, examples: list[Encoded]) -> dict[str, Any]:
    """Everything the reference log-probs depend on, one entry per part (named when a part changes)."""
    d, m = cfg.dpo, cfg.model
    kind = "model" if d.reference or not cfg.lora.enabled else "adapter" if cfg.lora.init_from else "no-adapter"
    data = hashlib.sha256()
    for e in examples:
        data.update(json.dumps([e.input_ids, e.labels]).encode())
    return {
        "model": {"weights": _files_identity(m.path), "dtype": m.dtype, "quant": m.quant},
        "reference": {"kind": kind, "weights": _files_identity(d.reference)},
        "adapter": _files_identity(cfg.lora.init_from),
        "template": template.jinja,
        "max_len": [cfg.data.max_len, cfg.data.truncation],
        "data": data.hexdigest(),
    }


class Reference:
    """Reference log-probs: adapter disabled, a frozen model, or a precomputed per-example cache."""

    def __init__(self, loss_mod: Any, policy: Any, ref_model: Any = None):
        self.loss_mod, self.policy = loss_mod, policy
        self.ref_loss = CausalLMLoss(ref_model) if ref_model is not None else None
        self.cache: dict[int, torch.Tensor] | None = None

    @torch.no_grad()
    def token_logps(self, b: Batch, order: list[int]) -> torch.Tensor:
        if self.cache is not None:
            return torch.cat([self.cache[i] for i in order]).to(b.input_ids.device)
        if self.ref_loss is not None:
            return self.ref_loss(b.input_ids, b.targets, b.position_ids, b.attention_mask, per_token=True)
        with self.policy.disable_adapter():
            return self.loss_mod(b.input_ids, b.targets, b.position_ids, b.attention_mask, per_token=True)

    def precompute(
        self, examples: list[Encoded], cfg: DPOConfig, key: dict, pad_id: int, one_row: bool, accel: Any, path: Path
    ) -> None:
        """Reference log-probs of every example, cached in `path` under `key`; a cache with another key is
        rebuilt. Every process computes (the forwards stay in step under DDP); process 0 writes the file
        atomically; all then read that one file."""
        saved = torch.load(path, weights_only=False) if path.exists() else None
        accel.wait_for_everyone()  # every process has read the old file before process 0 may replace it
        if saved is not None and saved.get("key") == key:
            self.cache = saved["logps"]
            return
        if saved is not None and accel.is_main_process:
            old = saved.get("key") if isinstance(saved.get("key"), dict) else {}
            changed = [k for k in key if old.get(k) != key[k]] or ["format"]
            print(f"{path}: cached reference log-probs are for another {', '.join(changed)}; rebuilding")
        rows = [[i] for i in range(len(examples) // 2)]
        cache: dict[int, torch.Tensor] = {}
        for k in range(0, len(rows), cfg.train.micro_batch_size):
            rr = pair_rows(rows[k : k + cfg.train.micro_batch_size], cfg.data.packing)
            b = collate(examples, rr, pad_id, cfg.data.packing, one_row).to(accel.device)
            order = [i for row in rr for i in row]
            tok = self.token_logps(b, order)
            seq = b.seq_index[b.targets != IGNORE]
            for j, i in enumerate(order):
                cache[i] = tok[seq == j].float().cpu()
        if accel.is_main_process:
            tmp = path.with_name(f".{path.name}.tmp")
            torch.save({"key": key, "logps": cache}, tmp)
            os.replace(tmp, path)
        accel.wait_for_everyone()
        self.cache = torch.load(path, weights_only=False)["logps"]


def pair_step(
    loss_mod: Any, ref: Reference, b: Batch, order: list[int], cfg: DPOConfig, weights: list[float] | None = None
) -> dict[str, torch.Tensor]:
    """Loss sums and metric sums for one micro-batch of pairs (order alternates chosen, rejected);
    `weights` (per pair of the data) scale each pair's loss, and `weight_sum` is what to divide by."""
    d = cfg.dpo
    n = len(order)
    tok, sums, counts = sequence_logps(loss_mod, b, n)
    ref_tok = ref.token_logps(b, order).to(tok.dtype)
    seq = b.seq_index[b.targets != IGNORE]
    ref_sums = torch.zeros_like(sums).index_add(0, seq, ref_tok)
    pol, rfs = sums, ref_sums
    if d.loss_type in LENGTH_AVERAGED:
        pol, rfs = sums / counts.clamp_min(1), ref_sums / counts.clamp_min(1)
    loss, m = dpo_terms(pol[0::2], pol[1::2], rfs[0::2], rfs[1::2], d.beta, d.loss_type, d.label_smoothing)
    w = torch.ones_like(loss) if weights is None else loss.new_tensor([weights[i // 2] for i in order[0::2]])
    out = {"loss_sum": (w * loss).sum(), "weight_sum": w.sum(), **{f"{k}_sum": v.sum() for k, v in m.items()}}
    gap = (sums - ref_sums).detach()
    out["logp_gap_sum"] = (gap[0::2] - gap[1::2]).sum()
    out["logps/chosen_sum"] = sums[0::2].detach().sum()
    out["logps/rejected_sum"] = sums[1::2].detach().sum()
    out["kl_offpolicy_data_sum"] = k3_kl(tok.detach(), ref_tok).sum()
    out["tokens"] = counts.sum()
    out["nll_chosen_sum"] = -sums[0::2].sum()
    out["chosen_tokens"] = counts[0::2].sum()
    out["pairs"] = torch.tensor(float(n // 2), device=tok.device)
    return out


def _means(sums: dict[str, torch.Tensor], prefix: str = "") -> dict[str, float]:
    pairs = max(1.0, float(sums["pairs"]))
    per_token = {"kl_offpolicy_data_sum", "kl_onpolicy_sum"}
    out = {prefix + k[:-4]: float(v) / pairs for k, v in sums.items() if k.endswith("_sum") and k not in per_token}
    out.pop(prefix + "nll_chosen", None)
    out[prefix + "loss"] = float(sums["loss_sum"]) / max(1e-12, float(sums["weight_sum"]))  # weighted mean
    out[prefix + "kl_offpolicy_data"] = float(sums["kl_offpolicy_data_sum"]) / max(1.0, float(sums["tokens"]))
    if "kl_onpolicy_sum" in sums:
        out[prefix + "kl_onpolicy_seq"] = float(sums["kl_onpolicy_sum"]) / max(1.0, float(sums["kl_onpolicy_seqs"]))
        out[prefix + "kl_onpolicy_tok"] = float(sums["kl_onpolicy_sum"]) / max(1.0, float(sums["kl_onpolicy_tokens"]))
    return out


def prompt_ids(ex: Encoded) -> list[int]:
    """The prompt tokens of an encoded pair side (everything before the first labelled token)."""
    return ex.input_ids[: next(i for i, x in enumerate(ex.labels) if x != IGNORE)]


@torch.no_grad()
def sample_replies(
    model: Any,
    prompts: list[list[int]],
    eot_id: int,
    pad_id: int,
    max_new_tokens: int,
    seeds: list[int],
    synced: bool = False,
) -> list[list[int]]:
    """One reply per prompt sampled from the model's own distribution (temperature 1, no top-k/top-p),
    cut after the end-of-turn token; prompt i is sampled under torch seed seeds[i] (so samples do not
    depend on how prompts are split across processes) and the global RNG is left as it was. `synced`:
    every process keeps stepping until all are done (all call this with the same number of prompts)."""
    device = next(model.parameters()).device
    out: list[list[int]] = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for p, seed in zip(prompts, seeds):  # one at a time: no padding, so nothing but π decides the samples
            torch.manual_seed(seed)
            gen = model.generate(
                input_ids=torch.tensor([p], device=device),
                attention_mask=torch.ones(1, len(p), dtype=torch.long, device=device),
                do_sample=True,
                temperature=1.0,
                top_k=0,
                top_p=1.0,
                min_p=None,
                repetition_penalty=1.0,
                max_new_tokens=max_new_tokens,
                eos_token_id=eot_id,
                pad_token_id=pad_id,
                use_cache=True,
                synced_gpus=synced,
            )[0, len(p) :].tolist()
            out.append(gen[: gen.index(eot_id) + 1] if eot_id in gen else gen)
    return out


@torch.no_grad()
def onpolicy_kl_sums(
    loss_mod: Any,
    ref: Reference,
    model: Any,
    prompts: list[list[int]],
    cfg: DPOConfig,
    ids: dict,
    accel: Any,
    n_real: int | None = None,
    seeds: list[int] | None = None,
) -> dict[str, torch.Tensor]:
    """Σ over sampled reply tokens of log π − log π_ref (the k1 estimate of KL(π‖π_ref), unbiased for
    samples from π), with the sequence and token counts. Prompts after the first `n_real` are fillers
    that keep processes in step and are not counted."""
    dev = accel.device
    n_real = len(prompts) if n_real is None else n_real
    zero = torch.zeros((), dtype=torch.float64, device=dev)
    sums = {"kl_onpolicy_sum": zero, "kl_onpolicy_seqs": zero.clone(), "kl_onpolicy_tokens": zero.clone()}
    if not prompts:
        return sums
    synced = accel.num_processes > 1 and torch.distributed.is_initialized()
    seeds = seeds or [cfg.train.seed + i for i in range(len(prompts))]
    replies = sample_replies(model, prompts, ids["eot"], ids["pad"], cfg.dpo.kl_max_new_tokens, seeds, synced)
    exs = [Encoded(p + r, [IGNORE] * len(p) + r) for p, r in zip(prompts, replies)]  # r has ≥ 1 token
    mb = cfg.train.micro_batch_size
    for k in range(0, len(exs), mb):
        rows = [[i] for i in range(k, min(k + mb, len(exs)))]
        b = collate(exs, rows, ids["pad"], cfg.data.packing, ids["one_row"]).to(dev)
        diff = loss_mod(b.input_ids, b.targets, b.position_ids, b.attention_mask, per_token=True).double()
        diff = diff - ref.token_logps(b, [i for row in rows for i in row]).double()
        real = (b.seq_index[b.targets != IGNORE] + k) < n_real
        sums["kl_onpolicy_sum"] += diff[real].sum()
        sums["kl_onpolicy_tokens"] += real.sum()
    sums["kl_onpolicy_seqs"] += n_real
    return sums


@torch.no_grad()
def evaluate(
    loss_mod, ref: Reference, examples: list[Encoded], cfg: DPOConfig, ids: dict, accel, model: Any = None
) -> dict:
    """Held-out metrics; pairs are split across processes by index, and with `model` and
    dpo.kl_max_new_tokens > 0 the on-policy KL on the eval prompts. Every process runs the same number
    of forwards (DDP/FSDP forwards are collective): one with fewer pairs runs pair 0 as an uncounted filler."""
    if not examples:
        return {}
    loss_mod.eval()
    n_pairs = len(examples) // 2
    mine, per_process = process_share(n_pairs, accel.process_index, accel.num_processes)
    mb = cfg.train.micro_batch_size
    total = {k: torch.zeros((), dtype=torch.float64, device=accel.device) for k in SUM_KEYS}
    for k in range(0, per_process, mb):
        chunk = mine[k : k + mb]
        rr = pair_rows([[i] for i in chunk or [0]], cfg.data.packing)
        b = collate(examples, rr, ids["pad"], cfg.data.packing, ids["one_row"]).to(accel.device)
        sums = pair_step(loss_mod, ref, b, [i for row in rr for i in row], cfg)
        for key, v in sums.items() if chunk else ():
            total[key] = total[key] + v.detach().double()
    if model is not None and cfg.dpo.kl_max_new_tokens:
        padded = mine + [0] * (per_process - len(mine))
        prompts = [prompt_ids(examples[2 * i]) for i in padded]
        seeds = [cfg.train.seed + i for i in padded]
        total.update(onpolicy_kl_sums(loss_mod, ref, model, prompts, cfg, ids, accel, len(mine), seeds))
    keys = sorted(total)
    vec = accel.reduce(torch.stack([total[k] for k in keys]), reduction="sum")
    loss_mod.train()
    return _means(dict(zip(keys, vec)), "eval_")


def run(cfg: DPOConfig) -> dict:
    """Train with DPO; returns the summary with the last eval metrics."""
    from accelerate import Accelerator

    t, d = cfg.train, cfg.dpo
    accel = Accelerator(cpu=not torch.cuda.is_available())
    main = accel.is_main_process
    torch.manual_seed(t.seed)
    out = Path(t.out)

    # 1. Pairs → tokens.
    tokenizer = load_tokenizer(cfg.model.path)
    data = prepare_pairs(cfg, tokenizer)
    pad_id = tokenizer.pad_token_id
    pair_len = [len(data.train[2 * i]) + len(data.train[2 * i + 1]) for i in range(len(data.train) // 2)]
    world = accel.num_processes
    lr = t.lr if t.lr is not None else (5e-5 if cfg.lora.enabled else 5e-7)

    # 2. Policy, reference, optimizer. Packed rows must stay apart under the chosen attention: checked.
    model = build_trainable(cfg.model, cfg.lora, accel.device)
    if t.disable_dropout:
        disable_dropout(model)
    refuse_untrainable(model, accel.device)
    one_row = cfg.data.packing and needs_one_row(model)
    if cfg.data.packing:
        check_isolation(model, accel.device, one_row)
    ids = {"pad": pad_id, "eot": tokenizer.convert_tokens_to_ids(data.template.eot), "one_row": one_row}
    loss_mod = CausalLMLoss(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, betas=t.betas, weight_decay=t.weight_decay)
    ref_model = None
    if d.reference or not cfg.lora.enabled:
        ref_model = load_model(cfg.model.model_copy(update={"path": d.reference or cfg.model.path}), accel.device)
        ref_model.eval().requires_grad_(False)
    elif cfg.lora.init_from:  # continuing an SFT adapter: the reference is that SFT model, not the bare base
        ref_model = load_lora(load_model(cfg.model, accel.device), cfg.lora.init_from)
        ref_model.eval().requires_grad_(False)
    loss_mod, optimizer = accel.prepare(loss_mod, optimizer)
    ref = Reference(loss_mod, model, ref_model)
    eval_ref = Reference(loss_mod, model, ref_model)  # eval pairs are never cached: always live
    trainable, total_params = count_params(model)

    # 3. Resume (a fresh run clears the previous run's files, its reference cache included).
    state, ckpt, log = loop.start(out, t, dump_config(cfg), model, optimizer, main)
    cache_file = out / "ref_logps.pt"
    if ckpt is None and main and cache_file.exists():
        cache_file.unlink()
        print(f"fresh run in {out}: removed the previous run's {cache_file.name}")
    if d.precompute_ref:
        key = cache_key(cfg, data.template, data.train)
        ref.precompute(data.train, cfg, key, pad_id, one_row, accel, cache_file)
    if main:
        s = data.stats
        print(
            f"pairs: {data.read} read = {s.kept} train + {len(data.eval) // 2} eval + {data.rejected} rejected + "
            f"{data.low_confidence} below min_confidence + "
            f"{s.dropped_too_long} over max_len ({s.cut} cut) · β={d.beta} {d.loss_type} · "
            f"reference: {'cache' if ref.cache else 'frozen model' if ref.ref_loss else 'adapter disabled'} · "
            f"{trainable:,} trainable params"
        )
        if ckpt is None:
            log.log(
                "data",
                0,
                read=data.read,
                pairs=s.pairs,
                kept=s.kept,
                dropped_too_long=s.dropped_too_long,
                cut=s.cut,
                rejected=data.rejected,
                eval_pairs=len(data.eval) // 2,
                low_confidence=data.low_confidence,
            )

    # 4. Loop: each micro-batch packs whole pairs; the loss is normalized by the step's pair count.
    def step_info(plan: list) -> dict:
        # Example 2i is pair i's chosen side, whether a row holds whole pairs (packed) or one sequence.
        chosen = [i for rows in plan for row in rows for i in row if i % 2 == 0]
        weight = sum(data.weights[i // 2] for i in chosen) if data.weights else len(chosen)
        return {"pairs": len(chosen), "weight": weight, "chosen_tokens": sum(n_targets(data.train[i]) for i in chosen)}

    def micro_step(rows: list, info: dict) -> dict:
        b = collate(data.train, rows, pad_id, cfg.data.packing, one_row).to(accel.device)
        o = pair_step(loss_mod, ref, b, [i for row in rows for i in row], cfg, data.weights)
        objective = o["loss_sum"] * world / max(info["weight"], 1e-12)  # a step of weight-0 pairs learns nothing
        if d.rpo_alpha:
            objective = objective + d.rpo_alpha * o["nll_chosen_sum"] * world / max(1, info["chosen_tokens"])
        accel.backward(objective)
        return {k: v.detach() for k, v in o.items()}

    def summarize(sums: dict, seconds: float) -> dict:
        return {**_means(sums), "pairs_per_s": float(sums["pairs"]) / max(seconds, 1e-9)}

    falling: deque = deque(maxlen=max(2, d.warn_falling_chosen))
    warned: list[bool] = []

    def after_step(step: int, m: dict) -> None:
        falling.append(m["logps/chosen"])
        if warned or len(falling) < falling.maxlen or not all(a > b for a, b in zip(falling, list(falling)[1:])):
            return
        warned.append(True)
        msg = (
            f"chosen log-probs fell for {len(falling)} steps in a row ({falling[0]:.2f} → {falling[-1]:.2f}): "
            "both replies are being pushed down; consider dpo.rpo_alpha > 0 or a lower lr"
        )
        log.log("warning", step, message=msg)
        if main:
            print(f"warning: {msg}")

    parts = loop.LoopParts(
        name="dpo",
        lengths=pair_len,
        capacity=2 * cfg.data.max_len,
        packing=cfg.data.packing,
        to_rows=lambda rows: pair_rows(rows, cfg.data.packing),
        micro_step=micro_step,
        step_info=step_info,
        summarize=summarize,
        evaluate=(lambda: evaluate(loss_mod, eval_ref, data.eval, cfg, ids, accel, model)) if data.eval else None,
        bar_info=lambda m: f"loss {m['loss']:.4f} · acc {m['accuracy']:.2f} · margin {m['margins']:.3f}",
        after_step=after_step,
    )
    result = loop.fit(parts, t, accel, loss_mod, model, optimizer, params, lr, out, log, state)

    # 5. Save.
    summary = {"out": str(out), "beta": d.beta, "loss_type": d.loss_type, **result}
    loop.finish(out, accel.unwrap_model(loss_mod).model, tokenizer, data.template, summary, log, accel)
    return summary
