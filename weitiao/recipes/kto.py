"""Kahneman–Tversky optimization (KTO, Ethayarajh et al. 2024) on unpaired feedback, one run top to bottom.

    weitiao kto examples/demo_kto.yaml kto.beta=0.1

Rows are single replies judged good or bad: TRL's prompt/completion/label, LLaMA-Factory's kto_tag, any chat
row with a `label` (`weitiao.train.feedback`). Steps: 1. rows → tokens (loss on the reply only) → 2. policy and
reference, as DPO picks it (the base with the adapter disabled; the starting adapter, frozen, with
lora.init_from; a frozen copy for full tuning or kto.reference) → 3. resume → 4. loop: per micro-batch the
replies' summed log-probs under π and π_ref; the reference point z0 = mean over the same rows with their
replies rotated by one (prompt k, reply k − 1: mismatched pairs, as TRL) of log π − log π_ref, detached and
clamped at 0; the loss; metrics, eval, checkpoint → 5. save.

Loss as TRL's KTOTrainer (loss_type "kto"): λ_D·(1 − σ(β(r − z0))) per desirable reply, λ_U·(1 − σ(β(z0 − r)))
per undesirable one (`losses.preference.kto_terms`), averaged over the rows of a step. TRL averages per
micro-batch and then over micro-batches: the same when they hold equally many rows. TRL also averages z0 over
processes; here it stays the micro-batch's own, so N processes train as one process with N × grad_accum does
(tested), as in the other recipes. Metrics keep TRL's names: rewards/chosen and logps/chosen over the desirable
rows, rewards/rejected and logps/rejected over the undesirable ones (left out of a step that has none),
rewards/margins when both occur, kl = z0.

A command of its own rather than a DPO loss_type: its rows are not pairs, so the loader, the batch (one
reply per sequence plus a KL row) and the metrics differ; the reference model and the loop machinery are
DPO's (`weitiao.train.reference`, `weitiao.train.loop`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from weitiao.data.chat import Encoded
from weitiao.data.collate import Batch, collate, process_share
from weitiao.data.prep import kto_balance
from weitiao.losses.preference import kto_terms
from weitiao.losses.sft import CausalLMLoss
from weitiao.models.continued import check_continued
from weitiao.models.load import build_trainable, count_params, load_tokenizer, lora_as_trained, lora_continued
from weitiao.recipes.configs import KTOConfig, KTOSpec, KTOTrainSpec  # noqa: F401  (re-exported)
from weitiao.train import dist, loop
from weitiao.train.feedback import FeedbackData, mismatched, prepare_feedback
from weitiao.train.pairs import check_pair_model
from weitiao.train.reference import Reference, check_reference_tokenizer, reference_model, sequence_logps

SUM_KEYS = ("loss_sum", "rows", "desirable", "undesirable", "rewards/chosen_sum", "rewards/rejected_sum",
            "logps/chosen_sum", "logps/rejected_sum", "kl_sum", "kl_batches", "tokens")  # fmt: skip


def kto_step(
    loss_mod: Any,
    ref: Reference,
    b: Batch,
    kl_b: Batch,
    order: list[int],
    desirable: list[bool],
    cfg: KTOConfig,
) -> dict[str, torch.Tensor]:
    """Loss and metric sums of one micro-batch: rows `order` in `b`, their mismatched KL rows in `kl_b`."""
    k, n = cfg.kto, len(order)
    _, sums, counts = sequence_logps(loss_mod, b, n)
    ref_sums = ref.sequence_sums(b, order, sums)
    with torch.no_grad():  # z0 carries no gradient (TRL detaches it)
        _, kl_sums, _ = sequence_logps(loss_mod, kl_b, n)
        kl = (kl_sums - ref.sequence_sums(kl_b, order, kl_sums)).mean()
    good = torch.tensor([desirable[i] for i in order], device=sums.device)
    loss, rewards = kto_terms(sums, ref_sums, good, kl, k.beta, k.desirable_weight, k.undesirable_weight)
    one = torch.ones((), device=sums.device)
    return {
        "loss_sum": loss.sum(),
        "rows": one * n,
        "desirable": good.sum().to(one.dtype),
        "undesirable": (~good).sum().to(one.dtype),
        "rewards/chosen_sum": rewards[good].sum(),
        "rewards/rejected_sum": rewards[~good].sum(),
        "logps/chosen_sum": sums[good].detach().sum(),
        "logps/rejected_sum": sums[~good].detach().sum(),
        "kl_sum": kl.clamp_min(0),
        "kl_batches": one,
        "tokens": counts.sum(),
    }


def _means(sums: dict[str, torch.Tensor], prefix: str = "") -> dict[str, float]:
    """Per-row loss, per-kind rewards and log-probs (a kind with no row in `sums` is left out), mean z0."""
    out = {"loss": float(sums["loss_sum"]) / max(1.0, float(sums["rows"]))}
    out["kl"] = float(sums["kl_sum"]) / max(1.0, float(sums["kl_batches"]))
    for kind, name in (("desirable", "chosen"), ("undesirable", "rejected")):
        if float(sums[kind]):
            for what in ("rewards", "logps"):
                out[f"{what}/{name}"] = float(sums[f"{what}/{name}_sum"]) / float(sums[kind])
    if "rewards/chosen" in out and "rewards/rejected" in out:
        out["rewards/margins"] = out["rewards/chosen"] - out["rewards/rejected"]
    return {prefix + key: v for key, v in out.items()}


def batches(examples: list[Encoded], rows: list[list[int]], cfg: KTOConfig, ids: dict, device: Any) -> tuple:
    """(batch, KL batch, order) of a micro-batch's rows of example indices: the KL rows in the same layout, each cut
    at ids["kl_len"]."""
    order = [i for row in rows for i in row]
    kl_examples = mismatched(examples, order, ids["kl_len"])
    kl_rows, k = [], 0
    for row in rows:
        kl_rows.append(list(range(k, k + len(row))))
        k += len(row)
    b = collate(examples, rows, ids["pad"], cfg.data.packing, ids["one_row"]).to(device)
    kl_b = collate(kl_examples, kl_rows, ids["pad"], cfg.data.packing, ids["one_row"]).to(device)
    return b, kl_b, order


@torch.no_grad()
def evaluate(loss_mod: Any, ref: Reference, data: FeedbackData, cfg: KTOConfig, ids: dict, accel: Any) -> dict:
    """Held-out metrics over data.eval in micro-batches of consecutive rows (z0 each micro-batch's own), dealt to
    processes in turn, so any number of processes gives the same numbers; a process with fewer runs an uncounted
    filler, so every process runs as many forwards."""
    loss_mod.eval()
    mb = cfg.train.micro_batch_size
    chunks = [list(range(k, min(k + mb, len(data.eval)))) for k in range(0, len(data.eval), mb)]
    mine, per_process = process_share(len(chunks), accel.process_index, accel.num_processes)
    total = {key: torch.zeros((), dtype=torch.float64, device=accel.device) for key in SUM_KEYS}
    for j in range(per_process):
        chunk = chunks[mine[j]] if j < len(mine) else None
        b, kl_b, order = batches(data.eval, [[i] for i in chunk or chunks[0]], cfg, ids, accel.device)
        sums = kto_step(loss_mod, ref, b, kl_b, order, data.eval_desirable, cfg)
        for key, v in sums.items() if chunk else ():
            total[key] = total[key] + v.detach().double()
    keys = sorted(total)
    vec = accel.reduce(torch.stack([total[key] for key in keys]), reduction="sum")
    loss_mod.train()
    return _means(dict(zip(keys, vec)), "eval_")


def run(cfg: KTOConfig) -> dict:
    """Train with KTO; returns the summary with the last eval metrics."""
    t, k = cfg.train, cfg.kto
    cfg.lora = lora_continued(lora_as_trained(cfg.lora, t.disable_dropout))
    accel = dist.accelerator(cfg.model)
    main = accel.is_main_process
    torch.manual_seed(t.seed)
    out = Path(t.out)

    # 1. Rows → tokens.
    tokenizer = load_tokenizer(cfg.model.path)
    opened = loop.open_run(out, t, cfg, accel)  # refused on a changed config; `out` unchanged until loop.start
    with opened:  # a refusal before loop.start removes the staged rejects files
        data = prepare_feedback(cfg.data, t, tokenizer, rejects_dir=opened.staged)
        check_continued(cfg.model.path, cfg.lora, cfg.data.template, tokenizer, None if data.raw else data.template)
        lengths = [len(e) for e in data.train]
        extra = (data.desirable, data.eval_desirable)
        loop.same_on_every_process(accel, cfg, opened.config_yaml, opened.inputs, lengths, data.content_key,
                                   data.eval, *extra, rows="rows")  # fmt: skip
        loop.refuse_eval_without_data(t, bool(data.eval))
        world = accel.num_processes
        lr = t.default_lr(cfg.lora.enabled)
        evals = loop.eval_digest(data.eval, data.eval_desirable)
        plan = loop.EpochPlan(lengths, cfg.data.max_len, cfg.data.packing, t, world, data.content_key, evals)
        total = plan.total_steps(opened.state, cfg.data.train, cfg.data.eval)

        # 2. Policy, reference, optimizer. Packed rows must stay apart under the chosen attention: checked.
        check_reference_tokenizer("kto.reference", k.reference, tokenizer)
        model = build_trainable(cfg.model, cfg.lora, accel.device)
        one_row = check_pair_model(model, tokenizer, data, cfg.data, t.disable_dropout, accel.device, main, data.raw)
        # A KL row (prompt k + reply k − 1) can be longer than either row: cut at the model's context as well as
        # max_len (a long prompt + a long reply took 784 positions of a 512-position model, silently).
        context = loop.model_context(getattr(model, "config", None)) or cfg.data.max_len
        ids = {"pad": tokenizer.pad_token_id, "one_row": one_row, "kl_len": min(cfg.data.max_len, context)}
        ref_model = reference_model(cfg.model, cfg.lora, k.reference, accel.device)
        trainable, _ = count_params(model)
        loss_mod, optimizer, params = loop.adamw(accel, CausalLMLoss(model), model, t, lr)
        ref = Reference(loss_mod, model, ref_model)

        # 3. Resume.
        state, ckpt, log = loop.start(out, t, opened, accel, loss_mod, optimizer, plan)
    if main:
        reference = "frozen model" if ref.ref_loss else "adapter disabled"
        print(f"{data.rows_line()} · β={k.beta} · reference: {reference} · {trainable:,} trainable params")
        if ckpt is None:
            log.log("data", 0, **data.counts(), trainable_params=trainable, world=world)
        nd = sum(data.desirable)
        if msg := kto_balance(nd, len(data.desirable) - nd, k.desirable_weight, k.undesirable_weight):
            print(f"warning: {msg}")
        if plan.note:
            print(plan.note)
        if lone := sum(sum(map(len, mb)) == 1 for mb in plan.epoch(0)):
            print(
                f"warning: {lone} micro-batch of an epoch holds one row, whose KL reference point z0 is then its "
                "own log-ratio (as in TRL's last batch of one); change train.micro_batch_size or use data.packing"
            )

    def summarize(sums: loop.Sums, seconds: float) -> dict[str, float]:
        return {**_means(sums), "rows_per_s": float(sums["rows"]) / max(seconds, 1e-9)}

    # 4. Loop: the loss is the mean over the step's rows (all processes).
    with loop.Tracker("kto", t, accel, log, state, total, loss_mod, optimizer) as run:
        for step in range(state["step"], total):
            epoch, units = plan.step(step)
            n_rows = sum(len(row) for rows in units for row in rows)
            loop.set_lr(optimizer, t, lr, step, total)
            sums: loop.Sums = {}
            for rows, real in loop.micro_batches(accel, loss_mod, units, (t.seed, step)):
                b, kl_b, order = batches(data.train, rows, cfg, ids, accel.device)
                o = kto_step(loss_mod, ref, b, kl_b, order, data.desirable, cfg)
                accel.backward(o["loss_sum"] * world / n_rows * real)  # a filler (not real) keeps processes in step
                if real:
                    loop.add(sums, **o)
            norm = loop.clip_grad(accel, params, t.max_grad_norm)
            sums = loop.reduce_sums(accel, sums)
            m = summarize(sums, run.lap())
            run.check_finite(step + 1, loss=m["loss"], grad_norm=norm)  # the weights stay the last good ones
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            bar = f"loss {m['loss']:.4f} · kl {m['kl']:.3f}"
            run.record(step + 1, epoch, sums, m, norm, bar, plan.tokens(units))
            evaluate_now = (lambda: evaluate(loss_mod, ref, data, cfg, ids, accel)) if data.eval else None
            if run.eval_save_stop(step + 1, evaluate_now):
                break

    # 5. Save.
    summary = {"out": str(out), "beta": k.beta, **run.summary(summarize)}
    loop.finish(out, model, tokenizer, data.template, summary, log, accel, dist.full_weights(accel, loss_mod))
    return summary
