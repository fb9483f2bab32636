"""Supervised fine-tuning (LoRA, QLoRA or full), one run top to bottom.

    weitiao sft examples/demo_sft.yaml train.lr=1e-4 train.max_steps=50
    accelerate launch --config_file examples/accelerate/ddp.yaml -m weitiao sft CONFIG.yaml

Steps: 1. data → 2. model → 3. resume → 4. train loop (accumulate, clip, step, log, eval,
checkpoint, early stop) → 5. save adapter/model + tokenizer with the training chat template.

Loss is the token-weighted mean over every target token of the optimizer step, across gradient
accumulation and processes: each micro-batch contributes nll_sum × world / tokens_in_step, so DDP's
gradient average equals the single-process gradient of the same global batch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from weitiao.data.cache import EncodedSet, encoded_files
from weitiao.data.chat import IGNORE, Encoded, EncodeOptions, EncodeStats
from weitiao.data.collate import collate, example_lengths, n_targets, plan_epoch, process_share
from weitiao.data.prep import count_overlap, overlap_warning, require_eval_left, require_rows, split_eval
from weitiao.data.templates import ChatTemplate, fallback_note, resolve_template
from weitiao.errors import UserError
from weitiao.io import atomic_write_text
from weitiao.losses.sft import CausalLMLoss
from weitiao.models import packed_attention
from weitiao.models.attention import check_isolation, needs_one_row, refuse_untrainable
from weitiao.models.continued import check_continued
from weitiao.models.load import build_trainable, count_params, load_tokenizer, lora_continued
from weitiao.models.untrained import refuse_untrained_tokens
from weitiao.recipes.configs import DataSpec, SFTConfig  # noqa: F401  (re-exported)
from weitiao.train import dist, loop
from weitiao.train.spec import TrainSpec


@dataclass
class SFTData:
    tokenizer: object
    template: ChatTemplate
    train: Sequence[Encoded]  # memory-mapped rows (`cache.EncodedRows`)
    eval: Sequence[Encoded]
    stats: EncodeStats
    eval_stats: EncodeStats
    read: int
    rejected: int
    eval_copies: int = 0  # copies of held-out rows kept out of both sides by eval_split
    warnings: list[str] = field(default_factory=list)
    cache_line: str = ""  # where the tokenized rows came from
    content_key: str = ""  # digest of the training rows' texts in order (resume on edited data is refused)
    text_only: bool = False  # every train row raw text (format text, string prompt/completion): no template
    tool_rows: bool = False  # some train rows use tools (their markup tokens are checked for untrained rows)
    raw_rows: bool = False  # some train rows are raw text (closed with EOS: its row is checked too)


def _chat_only_keys(d: DataSpec) -> str:
    """The data keys set away from their defaults that only act on prompts and turns, as 'data.x, data.y'."""
    keys = {"train_on_prompt": d.train_on_prompt, "train_turns": d.train_turns != "all"}
    return ", ".join(f"data.{k}" for k, v in keys.items() if v)


def prepare_data(cfg: SFTConfig, tokenizer: object, rejects_dir: Path | None = None) -> SFTData:
    """Load, validate, template and tokenize train/eval data (or read them from the cache); account for every row.
    Bad rows (data.skip_invalid) go to `rejects_dir` (default train.out): rejects.jsonl, eval_rejects.jsonl.

    An eval split holds out unique conversations (copies stay on one side, one copy evaluated);
    eval rows that also occur in train are counted and warned about, eval files given too.
    """
    d = cfg.data
    template = resolve_template(tokenizer, d.template)
    rejects = Path(rejects_dir or cfg.train.out) / "rejects.jsonl"
    opts = EncodeOptions(d.max_len, d.train_on_prompt, d.train_turns, d.truncation, d.train_eot)
    first = not (torch.distributed.is_initialized() and torch.distributed.get_rank() > 0)
    kw = {
        "read": {
            "fmt": d.format,
            "skip_invalid": d.skip_invalid,
            "max_row_bytes": d.max_row_bytes,
            "dataset_dir": d.dataset_dir,
        },
        "tokenizer": tokenizer,
        "template": template,
        "opts": opts,
        "cache_dir": d.cache_dir,
        "use_cache": d.cache,
        "num_proc": d.num_proc,
        "progress": cfg.train.progress and first,
    }
    tr = encoded_files(d.train, rejects_path=rejects, **kw)
    require_rows(tr.load_result(rejects), "data.train")
    if tr.meta["format"] == "text" and (unused := _chat_only_keys(d)):  # every token of raw text is trained anyway
        raise UserError(f"{unused}: data.train is raw text (format text: no prompt, no turns, every token trained), "
                        "so it would change nothing; remove it, or give chat / prompt-completion rows")  # fmt: skip
    rows = np.arange(len(tr))
    read, rejected, eval_copies, ev, eval_rows = tr.meta["read"], tr.meta["rejected"], 0, tr, rows[:0]
    if d.eval:
        ev = encoded_files(d.eval, rejects_path=rejects.with_name("eval_rejects.jsonl"), **kw)
        require_rows(ev.load_result(rejects.with_name("eval_rejects.jsonl")), "data.eval")
        eval_rows, read, rejected = np.arange(len(ev)), read + ev.meta["read"], rejected + ev.meta["rejected"]
    elif d.eval_split > 0:  # rows grouped by their conversation's 64-bit key, as split_eval groups conversations
        split = split_eval(tr.firsts(rows).tolist(), d.eval_split, cfg.train.seed, tr.keys.tolist().__getitem__)
        rows, eval_rows = tr.with_pieces(np.array(split.train)), tr.with_pieces(np.array(split.eval))
        eval_copies = split.eval_copies_dropped
    if d.template != "auto" and tr.meta["chat_rows"] == 0 and (ev is tr or ev.meta["chat_rows"] == 0):
        files = ", ".join(map(str, [*d.train, *(d.eval or [])]))  # it rendered nothing, and the data line named it
        raise UserError(f"data.template: {d.template!r} renders no row: every row of {files} is raw text (format "
                        "text, or string prompt and completion: trained as the text + EOS); drop data.template, or "
                        "write chat rows (messages, or prompt and completion as message lists)")  # fmt: skip
    train, stats, evals, eval_stats = tr.view(rows), tr.stats(rows), ev.view(eval_rows), ev.stats(eval_rows)
    if not train:
        raise UserError(f"data.train: no rows left after truncation policy {d.truncation!r} (max_len {d.max_len})")
    require_eval_left(d, len(eval_rows), len(evals))
    warnings = list(dict.fromkeys(tr.meta["notes"] + ev.meta["notes"]))
    if tr.meta["format"] != "text" and (note := fallback_note(d.template, template, tokenizer)):
        warnings.append(note)
    kept = rows[~tr.dropped[rows]]
    if len(idle := kept[tr.targets()[kept] == 0]):  # e.g. train_turns last on a row whose last reply has weight 0
        why = f"data.train_turns {d.train_turns!r}, weight-0 replies, data.truncation {d.truncation!r}"
        if len(idle) == len(kept):
            raise UserError(f"data.train: no row has a token to train ({why}); first: {tr.source(int(idle[0]))}")
        warnings.append(f"{len(idle)} training rows have no token to train ({why}); first: {tr.source(int(idle[0]))}")
    if overlap := count_overlap(tr.keys[tr.firsts(rows)].tolist(), ev.keys[ev.firsts(eval_rows)].tolist(), int):
        warnings.append(overlap_warning("data.eval", overlap, eval_stats.rows))
    if lost := stats.lost_eot + eval_stats.lost_eot:
        warnings.append(
            f"data.truncation cut: {lost} rows lost their end-of-turn token {template.eot!r} "
            "(the model learns to run on past max_len there); use drop or history, or raise data.max_len"
        )
    if first:  # once per run
        for w in warnings:
            print(f"warning: {w}")
    content = hashlib.sha256(np.ascontiguousarray(tr.keys[rows]).tobytes()).hexdigest()[:16]  # texts, in order
    return SFTData(
        tokenizer, template, train, evals, stats, eval_stats, read, rejected, eval_copies, warnings, cache_line(tr, ev),
        content, tr.meta["chat_rows"] == 0, tr.meta["tool_rows"] > 0, tr.meta["chat_rows"] < tr.meta["rows"],
    )  # fmt: skip


def cache_line(*sets: EncodedSet) -> str:
    """`tokenized: …` for the data summary: cache hits, or rows/s of the build and where it went."""
    parts = []
    for s in dict.fromkeys(sets):  # train, and eval when it is another set
        m = s.meta
        if m["hit"]:
            parts.append(f"{m['rows']:,} rows from cache {s.folder}")
        else:
            rate = m["rows"] / max(m["seconds"], 1e-9)
            where = f" → {s.folder}" if s.folder.exists() else " (data.cache false)"
            parts.append(
                f"{m['rows']:,} rows in {m['seconds']:.1f} s ({rate:,.0f} rows/s, {m['num_proc']} proc){where}"
            )
    return "tokenized: " + "; ".join(parts)


@torch.no_grad()
def evaluate(
    loss_mod, examples: list[Encoded], cfg: SFTConfig, pad_id: int, accel, one_row: bool = False
) -> dict[str, float]:
    """Token-weighted eval losses over the whole eval set (split across processes).

    `eval_loss` uses the training labels, so under train_on_prompt it includes prompt tokens;
    `eval_loss_answer` counts reply tokens only and compares across train_on_prompt settings.
    """
    if not examples:
        return {"eval_loss": float("nan"), "eval_loss_answer": float("nan")}
    loss_mod.eval()
    lengths = [len(e) for e in examples]
    batches = plan_epoch(
        lengths,
        seed=0,
        epoch=0,
        micro_batch_size=cfg.train.micro_batch_size,
        packing=cfg.data.packing,
        capacity=cfg.data.max_len,
    )
    answers = [replace(e, labels=e.answer_labels) if e.answer_labels is not None else e for e in examples]
    total = torch.zeros(4, device=accel.device, dtype=torch.float64)
    # Every process runs the same number of forwards (FSDP forwards are collective): one left short
    # repeats batch 0 as an uncounted filler.
    mine, per_process = process_share(len(batches), accel.process_index, accel.num_processes)
    for k in range(per_process):
        rows = batches[mine[k] if k < len(mine) else 0]
        b = collate(examples, rows, pad_id, cfg.data.packing, one_row).to(accel.device)
        # One forward: reply targets are a subset of the training targets at the same positions.
        logp = loss_mod(b.input_ids, b.targets, b.position_ids, b.attention_mask, per_token=True).double()
        answer = collate(answers, rows, pad_id, cfg.data.packing, one_row).targets.to(accel.device)
        is_answer = (answer != IGNORE)[b.targets != IGNORE]
        counts = logp.new_tensor([logp.numel(), int(is_answer.sum())])
        if k < len(mine):
            total += torch.stack([-logp.sum(), counts[0], -logp[is_answer].sum(), counts[1]])
    total = accel.reduce(total, reduction="sum")
    loss_mod.train()
    return {
        "eval_loss": float(total[0] / total[1].clamp_min(1)),
        "eval_loss_answer": float(total[2] / total[3].clamp_min(1)),
    }


def _golden_hook(t: TrainSpec, model: Any, tokenizer: Any, template: Any, out: Path, accel: Any) -> Any:
    """Answer the golden prompts at each checkpoint saved (the last step, an early stop and a new best eval
    included) or, without save_every, at each eval step, for `weitiao eval golden` (Q148). Every process
    answers its share, so none waits at a collective while another generates."""
    from weitiao.eval.golden import golden_callback

    every = t.save_every or t.eval_every
    share = {"rank": accel.process_index, "world": accel.num_processes, "gather": dist.gather_objects}
    answer = golden_callback(t.golden, 1, model=model, tokenizer=tokenizer, template=template, run_dir=out, **share)

    def at(step: int, metrics: dict, saved: bool) -> None:
        if saved or (every and step % every == 0):  # saved: every save_every step, the last, an early stop, a best
            answer(step, metrics)

    return at


def run(cfg: SFTConfig) -> dict:
    """Train; returns a summary (final/best eval loss, steps, tokens/s, output dir)."""
    t = cfg.train
    cfg.lora = lora_continued(cfg.lora)  # the continued adapter's r, alpha, ... in the config.yaml it records
    accel = dist.accelerator(cfg.model)
    if t.golden and (engine := dist.sharding(accel)):  # each process answers its own prompts: it would crash or hang
        raise UserError(
            f"train.golden: each process answers its own share of the golden prompts, and under {engine} every "
            "forward needs all processes in step; drop train.golden and run "
            "`weitiao eval golden --run RUN --prompts FILE` on the run"
        )
    main = accel.is_main_process
    torch.manual_seed(t.seed)
    out = Path(t.out)

    # 1. Data: validate, template, tokenize; every row accounted for.
    tokenizer = load_tokenizer(cfg.model.path)
    opened = loop.open_run(out, t, cfg, accel)  # refused on a changed config; `out` unchanged until loop.start
    with opened:  # a refusal before loop.start removes the staged rejects files
        data = prepare_data(cfg, tokenizer, opened.staged)
        check_continued(
            cfg.model.path, cfg.lora, cfg.data.template, tokenizer, None if data.text_only else data.template
        )
        lengths = example_lengths(data.train)
        loop.same_on_every_process(accel, cfg, opened.config_yaml, opened.inputs, lengths, data.content_key, data.eval)
        loop.refuse_eval_without_data(t, bool(data.eval), golden_cadence=True)
        pad_id = tokenizer.pad_token_id
        world = accel.num_processes
        lr = t.default_lr(cfg.lora.enabled)
        evals = loop.eval_digest(data.eval)
        plan = loop.EpochPlan(lengths, cfg.data.max_len, cfg.data.packing, t, world, data.content_key, evals)
        total = plan.total_steps(opened.state, cfg.data.train, cfg.data.eval)

        # 2. Model, loss wrapper, optimizer.
        model = build_trainable(cfg.model, cfg.lora, accel.device)
        template = None if data.text_only else data.template
        refuse_untrained_tokens(model, tokenizer, template, main, data.tool_rows, data.raw_rows)
        refuse_untrainable(model, accel.device)
        loop.refuse_over_context(model, train=data.train, eval=data.eval)
        if cfg.data.packing:  # sdpa per conversation of a packed row instead of a block-diagonal mask
            packed_attention.enable(model)
        one_row = cfg.data.packing and needs_one_row(model)  # varlen kernels split documents in one row only
        if cfg.data.packing:
            check_isolation(model, accel.device, one_row)
        loss_mod = CausalLMLoss(model)
        trainable, total_params = count_params(model)
        loss_mod, optimizer, params = loop.adamw(accel, loss_mod, model, t, lr)
        golden = _golden_hook(t, model, tokenizer, data.template, out, accel) if t.golden else None

        # 3. Resume: weights, optimizer, RNG, data position, early-stopping state.
        state, ckpt, log = loop.start(out, t, opened, accel, loss_mod, optimizer, plan)
    if main:
        print_data_summary(data, cfg, trainable, total_params, world, log if ckpt is None else None)
        if plan.note:
            print(plan.note)

    def evaluate_now() -> dict[str, float]:
        return evaluate(loss_mod, data.eval, cfg, pad_id, accel, one_row)

    def summarize(sums: loop.Sums, seconds: float) -> dict[str, float]:
        return {
            "loss": float(sums["nll"] / sums["targets"].clamp_min(1)),
            "tokens_per_s": float(sums["tokens"]) / max(seconds, 1e-9),
        }

    # 4. Loop: loss = Σ nll / (target tokens in the whole step, all processes and micro-batches).
    with loop.Tracker("sft", t, accel, log, state, total, loss_mod, optimizer) as run:
        for step in range(state["step"], total):
            epoch, units = plan.step(step)
            targets = sum(n_targets(data.train[i]) for rows in units for row in rows for i in row)
            loop.set_lr(optimizer, t, lr, step, total)
            sums: loop.Sums = {}
            for rows, real in loop.micro_batches(accel, loss_mod, units, (t.seed, step)):
                b = collate(data.train, rows, pad_id, cfg.data.packing, one_row).to(accel.device)
                nll, n = loss_mod(b.input_ids, b.targets, b.position_ids, b.attention_mask)
                accel.backward(nll * world / max(1, targets) * real)  # a filler (not real) only keeps processes in step
                if real:
                    loop.add(sums, nll=nll, targets=n, tokens=(b.seq_index >= 0).sum())
            norm = loop.clip_grad(accel, params, t.max_grad_norm)
            sums = loop.reduce_sums(accel, sums)
            m = summarize(sums, run.lap())
            run.check_finite(step + 1, loss=m["loss"], grad_norm=norm)  # the weights stay the last good ones
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            bar = f"loss {m['loss']:.4f} · {m['tokens_per_s']:,.0f} tok/s"
            run.record(step + 1, epoch, sums, m, norm, bar, plan.tokens(units))
            stop = run.eval_save_stop(step + 1, evaluate_now if data.eval else None)
            if golden:
                golden(step + 1, m, run.saved)
                run.lap()  # answering is not training: left out of the next step's tokens/s
            if stop:
                break

    # 5. Final weights with the chat template used in training written into the tokenizer.
    summary = {
        "out": str(out),
        "best_eval": state["best_eval"] if state["best_step"] is not None else None,  # no eval ran: none, not inf
        "best_step": state["best_step"],
        "tokens": state["tokens"],
        **run.summary(summarize),
    }
    weights = dist.full_weights(accel, loss_mod)  # every process: FSDP gathers the shards
    loop.finish(out, model, tokenizer, data.template, summary, log, accel, weights,
                lambda final: atomic_write_text(final / "chat_template.jinja", data.template.standalone()))  # fmt: skip
    return summary


def print_data_summary(
    data: SFTData, cfg: SFTConfig, trainable: int, total_params: int, world: int, log: Any = None
) -> None:
    """The data line (every row accounted for) and where tokens came from; `log`: also a `data` record."""
    s = data.stats
    dropped = s.dropped_too_long + data.eval_stats.dropped_too_long
    pieces, n_eval = s.doc_pieces + data.eval_stats.doc_pieces, data.eval_stats.kept  # rows, not pieces
    print(
        f"data: {data.read} rows read = {s.kept} train + {n_eval} eval + {data.eval_copies} eval copies "
        f"+ {data.rejected} rejected + {dropped} over max_len {cfg.data.max_len} (truncation "
        f"{cfg.data.truncation}: {s.cut} cut, {s.lost_eot + data.eval_stats.lost_eot} lost end-of-turn, "
        f"{s.history_trimmed} history-trimmed) · template {data.template.name} · "
        f"{trainable:,} trainable / {total_params:,} params"
        + (f" · text documents over max_len split into {pieces} more pieces" if pieces else "")
    )
    print(data.cache_line)
    if log is not None:
        log.log(
            "data",
            0,
            read=data.read,
            rows=s.rows,
            kept=s.kept,
            dropped_too_long=s.dropped_too_long,
            eval_dropped_too_long=data.eval_stats.dropped_too_long,  # the line adds both
            cut=s.cut,
            lost_eot=s.lost_eot + data.eval_stats.lost_eot,
            history_trimmed=s.history_trimmed,
            rejected=data.rejected,
            eval_rows=n_eval,
            doc_pieces=pieces,
            eval_copies=data.eval_copies,
            template=data.template.name,
            trainable_params=trainable,
            total_params=total_params,
            world=world,
        )
