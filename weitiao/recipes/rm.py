"""Reward model: a one-score head on a causal LM trained on preference pairs (Bradley–Terry).

    weitiao rm examples/demo_rm.yaml
    weitiao score --rm runs/rm data.jsonl

Steps: 1. pairs → tokens (as DPO) → 2. `*ForSequenceClassification` base + LoRA (score head fully
trained) → 3. resume → 4. loop: chosen and rejected packed in one forward, score at each reply's
end-of-turn token, loss −log σ(r_c − r_r − margin) [+ λ·(r_c + r_r)² to keep rewards centred] →
5. save adapter/model + tokenizer + reward_model.json (what PPO and `weitiao score` load).

`lora.init_from` starts from a saved adapter (an SFT run's, or a reward model's to continue it): its
LoRA weights are loaded onto the classifier base and the score head is trained beside them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from weitiao.data.collate import collate, process_share
from weitiao.data.preference import pair_rows
from weitiao.errors import UserError
from weitiao.losses.preference import bradley_terry
from weitiao.models.continued import check_continued
from weitiao.models.digest import model_digest
from weitiao.models.heads import SequenceScorer, save_reward_meta
from weitiao.models.load import (
    LoraSpec,
    adapter_targets,
    build_trainable,
    count_params,
    load_model,
    load_tokenizer,
    lora_as_trained,
    lora_continued,
    match_adapter,
)
from weitiao.models.reward_dir import RAW
from weitiao.recipes.configs import RMConfig, RMSpec, RMTrainSpec  # noqa: F401  (re-exported)
from weitiao.train import dist, loop
from weitiao.train.pairs import check_pair_model, prepare_pairs

SUM_KEYS = ("loss_sum", "accuracy_sum", "margin_sum", "reward_sum", "reward_sq_sum", "pairs")


def load_scoring_adapter(base: Any, spec: LoraSpec, gradient_checkpointing: bool = False) -> Any:
    """The adapter at `spec.init_from` on a `*ForSequenceClassification` base, trainable, with the score head
    trained beside it (loaded too when the adapter saved one, as a reward model's does); lora.* keys the config
    sets are checked against it."""
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
    from peft.utils import load_peft_weights

    from weitiao.infer.export import locate

    adapter = spec.init_from
    try:
        adapter_dir, _, _ = locate(adapter)
    except UserError as e:
        raise UserError(f"lora.init_from: {e}".replace("--adapter ", "")) from None
    config = LoraConfig.from_pretrained(str(adapter_dir))
    config.task_type = "SEQ_CLS"  # an SFT adapter says CAUSAL_LM: peft would then expect a generating model
    config.modules_to_save = sorted(set(config.modules_to_save or []) | {"score"})
    config.inference_mode = False  # saved adapters say True: get_peft_model would freeze everything
    for p in base.parameters():
        p.requires_grad_(False)
    if gradient_checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    targets = adapter_targets(base, config, spec)
    model = get_peft_model(base, config)
    saved = load_peft_weights(str(adapter_dir))
    # An SFT adapter has no score weights: those keep the fresh head (peft would refuse the missing key).
    result = set_peft_model_state_dict(model, {**get_peft_model_state_dict(model), **saved})
    if missing := [k for k in result.missing_keys if "lora_" in k]:
        raise UserError(f"lora.init_from: {adapter_dir} does not fit this model (missing {missing[0]})")
    match_adapter(model, spec, adapter, targets)
    return model


def pair_rewards(
    scorer: Any, examples: list, rows: list[list[int]], pad_id: int, packing: bool, device: Any, one_row: bool = False
):
    """Rewards of (chosen, rejected) for the pairs in `rows` (example rows, chosen first)."""
    b = collate(examples, rows, pad_id, packing, one_row).to(device)
    n = sum(len(r) for r in rows)
    r = scorer(b.input_ids, b.targets, b.position_ids, b.attention_mask, b.seq_index, n)
    return r[0::2], r[1::2]


def _terms(
    rc: torch.Tensor, rr: torch.Tensor, spec: RMSpec, margin: torch.Tensor | float | None = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-pair loss and metric sums; `margin`: each pair's (its row's `margin`), else rm.margin."""
    loss = bradley_terry(rc, rr, spec.margin if margin is None else margin) + spec.center_coef * (rc + rr) ** 2
    d = (rc - rr).detach()
    sums = {
        "loss_sum": loss.detach().sum(),
        "accuracy_sum": (d > 0).float().sum(),
        "margin_sum": d.sum(),
        "reward_sum": (rc + rr).detach().sum(),
        "reward_sq_sum": (rc**2 + rr**2).detach().sum(),
        "pairs": torch.tensor(float(len(rc)), device=rc.device),
    }
    return loss, sums


def _means(s: dict, prefix: str = "") -> dict[str, float]:
    n = max(1.0, float(s["pairs"]))
    mean = float(s["reward_sum"]) / (2 * n)
    var = max(0.0, float(s["reward_sq_sum"]) / (2 * n) - mean**2)
    return {
        prefix + "loss": float(s["loss_sum"]) / n,
        prefix + "accuracy": float(s["accuracy_sum"]) / n,
        prefix + "margin": float(s["margin_sum"]) / n,
        prefix + "reward_mean": mean,
        prefix + "reward_std": var**0.5,
    }


@torch.no_grad()
def evaluate(
    scorer: Any,
    examples: list,
    cfg: RMConfig,
    pad_id: int,
    accel: Any,
    one_row: bool = False,
    margins: list[float] | None = None,
) -> dict[str, float]:
    """Held-out metrics; pairs are split across processes by index. Every process runs the same number
    of forwards (DDP/FSDP forwards are collective): one with fewer pairs runs pair 0 as an uncounted filler."""
    scorer.eval()
    n_pairs = len(examples) // 2
    mine, per_process = process_share(n_pairs, accel.process_index, accel.num_processes)
    mb = cfg.train.micro_batch_size
    total = {k: torch.zeros((), dtype=torch.float64, device=accel.device) for k in SUM_KEYS}
    for k in range(0, per_process, mb):
        chunk = mine[k : k + mb]
        rows = pair_rows([[i] for i in chunk or [0]], cfg.data.packing)
        rc, rr = pair_rewards(scorer, examples, rows, pad_id, cfg.data.packing, accel.device, one_row)
        m = None if margins is None else rc.new_tensor([margins[i] for i in chunk or [0]])
        for key, v in _terms(rc, rr, cfg.rm, m)[1].items() if chunk else ():
            total[key] = total[key] + v.double()
    keys = sorted(total)
    red = dict(zip(keys, accel.reduce(torch.stack([total[x] for x in keys]), reduction="sum")))
    scorer.train()
    return _means(red, "eval_")


def print_pairs_summary(data: Any, trainable: int, world: int, log: Any = None) -> None:
    """The pairs line (every row accounted for); `log`: also a `data` record, as SFT and DPO write."""
    print(f"{data.pairs_line()} · {trainable:,} trainable params")
    if log is not None:  # margin_pairs: train pairs scored with their `margin`; calc plan --calibrate reads `world`
        margins = len(data.margins[0] or []) if data.margins else 0
        log.log("data", 0, **data.counts(), margin_pairs=margins, trainable_params=trainable, world=world)


def run(cfg: RMConfig) -> dict:
    """Train the reward model; returns the summary with held-out accuracy/margin/reward stats."""
    t = cfg.train
    cfg.lora = lora_continued(lora_as_trained(cfg.lora, t.disable_dropout))
    accel = dist.accelerator(cfg.model)
    main = accel.is_main_process
    torch.manual_seed(t.seed)
    out = Path(t.out)

    # 1. Pairs → tokens.
    tokenizer = load_tokenizer(cfg.model.path)
    if cfg.data.weight_field:
        raise UserError("data.weight_field: per-pair weights are used by DPO only; remove it for the reward model")
    opened = loop.open_run(out, t, cfg, accel)  # refused on a changed config; `out` unchanged until loop.start
    with opened:  # a refusal before loop.start removes the staged rejects files
        data = prepare_pairs(cfg, tokenizer, read_margins=True, read_weights=False, rejects_dir=opened.staged)
        check_continued(
            cfg.model.path, cfg.lora, cfg.data.template, tokenizer, None if cfg.data.format == RAW else data.template
        )
        pairs = data.pair_lengths(), data.content_key, data.eval, data.margins
        loop.same_on_every_process(accel, cfg, opened.config_yaml, opened.inputs, *pairs)
        loop.refuse_eval_without_data(cfg.train, bool(data.eval))
        if data.margins and cfg.rm.margin:
            raise UserError(f"rm.margin={cfg.rm.margin}: the data has a margin column, read per pair as TRL does, so "
                            "rm.margin would be ignored; drop rm.margin, or the column")  # fmt: skip
        train_margins, eval_margins = data.margins or (None, None)
        pad_id = tokenizer.pad_token_id
        world = accel.num_processes
        lr = t.default_lr(cfg.lora.enabled)
        evals = loop.eval_digest(data.eval, eval_margins)
        plan = loop.EpochPlan(pairs[0], 2 * cfg.data.max_len, cfg.data.packing, t, world, data.content_key, evals)
        total = plan.total_steps(opened.state, cfg.data.train, cfg.data.eval)

        # 2. Scorer (LoRA + fully trained score head), optimizer.
        if cfg.lora.enabled and cfg.lora.init_from:
            base = load_model(cfg.model, accel.device, head="score")
            model = load_scoring_adapter(base, cfg.lora, cfg.model.gradient_checkpointing)
        else:
            model = build_trainable(cfg.model, cfg.lora, accel.device, head="score")
        model.config.pad_token_id = pad_id
        one_row = check_pair_model(model, tokenizer, data, cfg.data, t.disable_dropout, accel.device, main)
        scorer = SequenceScorer(model)
        trainable, _ = count_params(model)
        scorer, optimizer, params = loop.adamw(accel, scorer, model, t, lr)

        # 3. Resume.
        state, ckpt, log = loop.start(out, t, opened, accel, scorer, optimizer, plan)
    if main:
        print_pairs_summary(data, trainable, world, log if ckpt is None else None)
    if main and plan.note:
        print(plan.note)

    def evaluate_now() -> dict[str, float]:
        return evaluate(scorer, data.eval, cfg, pad_id, accel, one_row, eval_margins)

    def summarize(sums: loop.Sums, seconds: float) -> dict[str, float]:
        return {**_means(sums), "pairs_per_s": float(sums["pairs"]) / max(seconds, 1e-9)}

    # 4. Loop: the loss is the mean over the step's pairs (all processes, all micro-batches).
    with loop.Tracker("rm", t, accel, log, state, total, scorer, optimizer) as run:
        for step in range(state["step"], total):
            epoch, units = plan.step(step)
            n_pairs = sum(len(row) for pairs in units for row in pairs)
            loop.set_lr(optimizer, t, lr, step, total)
            sums: loop.Sums = {}
            for pairs, real in loop.micro_batches(accel, scorer, units, (t.seed, step)):
                rows = pair_rows(pairs, cfg.data.packing)
                rc, rr = pair_rewards(scorer, data.train, rows, pad_id, cfg.data.packing, accel.device, one_row)
                m = None if train_margins is None else rc.new_tensor([train_margins[i] for r in pairs for i in r])
                loss, terms = _terms(rc, rr, cfg.rm, m)
                accel.backward(loss.sum() * world / n_pairs * real)  # a filler (not real) only keeps processes in step
                if real:
                    loop.add(sums, **terms)
            norm = loop.clip_grad(accel, params, t.max_grad_norm)
            sums = loop.reduce_sums(accel, sums)
            m = summarize(sums, run.lap())
            run.check_finite(step + 1, loss=m["loss"], grad_norm=norm)  # the weights stay the last good ones
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            bar = f"loss {m['loss']:.4f} · acc {m['accuracy']:.2f} · margin {m['margin']:.3f}"
            run.record(step + 1, epoch, sums, m, norm, bar, plan.tokens(units))
            if run.eval_save_stop(step + 1, evaluate_now if data.eval else None):
                break

    # 5. Save what PPO and `weitiao score` load.
    summary = {"out": str(out), **run.summary(summarize)}
    weights = dist.full_weights(accel, scorer)  # every process: FSDP gathers the shards

    def meta(final: Path) -> None:
        base = Path(cfg.model.path)
        base_path = str(base.resolve()) if base.exists() else cfg.model.path
        digest = model_digest(cfg.model.path) if cfg.lora.enabled else None  # read for adapter reward models only
        save_reward_meta(final, base_path, data.template.jinja, RAW if cfg.data.format == RAW else "chat", digest)

    loop.finish(out, model, tokenizer, data.template, summary, log, accel, weights, meta)
    return summary
