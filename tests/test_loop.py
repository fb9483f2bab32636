"""The shared optimizer-step loop on a toy model: train mode, non-finite stop, zero steps, rates, log cadence."""

from __future__ import annotations

import contextlib
import re
import shutil
from pathlib import Path

import pytest
import torch
from accelerate.utils import DistributedType

from weitiao.errors import UserError
from weitiao.train import checkpoint as ck
from weitiao.train import loop
from weitiao.train.guard import DivergedError
from weitiao.train.log import MetricsLog, read_metrics
from weitiao.train.spec import TrainSpec


class OneProcess:
    """The parts of accelerate.Accelerator the loop helpers use, for one process."""

    num_processes, process_index, is_main_process = 1, 0, True
    distributed_type = DistributedType.NO
    device = torch.device("cpu")

    def no_sync(self, _):
        return contextlib.nullcontext()

    def clip_grad_norm_(self, params, max_norm):
        return torch.nn.utils.clip_grad_norm_(params, max_norm)

    def reduce(self, x, reduction="sum"):
        return x

    def unwrap_model(self, module):
        return module

    def wait_for_everyone(self):
        pass


class Toy(torch.nn.Module):
    """What `from_pretrained` hands back: a module in eval mode, with dropout."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(4, 1)
        self.drop = torch.nn.Dropout(0.5)
        self.eval()

    def forward(self, z):
        return self.lin(self.drop(z))

    def save_pretrained(self, path, safe_serialization=True, state_dict=None):
        Path(path).mkdir(parents=True)
        torch.save(state_dict or self.state_dict(), Path(path) / "w.pt")


class Wrapper(torch.nn.Module):
    """A recipe's loss wrapper: the model is `.model`."""

    def __init__(self, model):
        super().__init__()
        self.model = model


def run_loop(tmp_path, t: TrainSpec, *, loss_of=None, after_step=None, state=None, seen=None, evaluate=None):
    """A recipe loop, written as the recipes write theirs, around a toy model."""
    t = t.model_copy(update={"out": str(tmp_path)})
    model = Toy()
    module, accel = Wrapper(model), OneProcess()
    params = list(model.parameters())
    optimizer = torch.optim.AdamW(params, lr=t.lr)
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(1))
    log = MetricsLog(tmp_path, tensorboard=False)
    state = state or loop.new_state()
    plan = loop.EpochPlan([1] * 8, 8, False, t, accel.num_processes)
    total = plan.total_steps(state)

    def summarize(s, sec):
        return {"loss": float(s["loss"] / s["n"]), "tokens_per_s": float(s["tokens"]) / (sec or 1)}

    with loop.Tracker("toy", t, accel, log, state, total, module, optimizer) as run:
        for step in range(state["step"], total):
            epoch, units = plan.step(step)
            loop.set_lr(optimizer, t, t.lr, step, total)
            sums: loop.Sums = {}
            for rows, _ in loop.micro_batches(accel, module, units):
                if seen is not None:
                    seen.append(model.training)
                z = x[rows[0]]
                loss = model(z).pow(2).mean() if loss_of is None else loss_of(model, z)
                loss.backward()
                loop.add(sums, loss=loss, n=torch.tensor(1.0), tokens=torch.tensor(100.0))
            norm = loop.clip_grad(accel, params, t.max_grad_norm)
            sums = loop.reduce_sums(accel, sums)
            m = summarize(sums, run.lap())
            run.check_finite(step + 1, loss=m["loss"], grad_norm=norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            run.record(step + 1, epoch, sums, m, norm, "", plan.tokens(units))
            if after_step:
                after_step(step + 1, m)
            if run.eval_save_stop(step + 1, evaluate):
                break
    return run.summary(summarize), model


def spec(**kw) -> TrainSpec:
    return TrainSpec(**{"lr": 1e-2, "micro_batch_size": 1, "progress": False, "tensorboard": False, **kw})


def test_epoch_plan_steps_cross_epochs_where_an_uninterrupted_run_does():
    t = spec(grad_accum=3, epochs=2)
    plan = loop.EpochPlan([1] * 8, 8, False, t, world=1)
    assert plan.steps_in(0) == 2 and plan.total_steps(loop.new_state()) == 4  # 8 // 3 per epoch, 2 left over
    epoch0 = plan.epoch(0)
    assert plan.step(1) == (0, epoch0[3:8])  # the epoch's last step takes the 2 left over too
    assert plan.step(2) == (1, plan.epoch(1)[0:3]) and plan.epoch(1) != epoch0  # reshuffled per epoch
    two = loop.EpochPlan([1] * 8, 8, False, spec(grad_accum=1, epochs=2), world=3)  # 3 processes × 1
    assert two.step(1) == plan.step(1)  # a step is processes × grad_accum micro-batches either way


@pytest.mark.parametrize(("n", "world", "accum"), [(37, 2, 1), (23, 2, 4), (10, 3, 2), (5, 4, 1), (7, 1, 8)])
def test_every_micro_batch_is_trained_once_per_epoch(n, world, accum):
    """Counts that are not multiples of processes × grad_accum: nothing is left out at an epoch's end (it used to
    be: 37 rows on 2 processes × micro-batch 3 trained 27), and every process gets a micro-batch of every step."""
    plan = loop.EpochPlan([1] * n, 8, False, spec(grad_accum=accum, epochs=2), world=world)
    total = plan.total_steps(loop.new_state())
    seen: dict[int, list] = {0: [], 1: []}
    for k in range(total):
        epoch, units = plan.step(k)
        assert all(units[rank::world] for rank in range(world))
        seen[epoch] += [u for rows in units for row in rows for u in row]
    assert sorted(seen[0]) == sorted(seen[1]) == list(range(n))
    assert total == 2 * max(n // (world * accum), 1)


def test_too_few_micro_batches_for_the_processes_is_refused():
    with pytest.raises(UserError, match="train: 3 micro-batches for 4 processes, so some process would train"):
        loop.EpochPlan([1] * 3, 8, False, spec(), world=4).total_steps(loop.new_state())
    assert loop.EpochPlan([1] * 3, 8, False, spec(grad_accum=4), world=2).total_steps(loop.new_state()) == 1


def test_a_packed_epoch_too_small_for_the_processes_is_refused_not_skipped():
    """Packing varies an epoch's micro-batches: an epoch with fewer than the processes had 0 steps and was skipped,
    its rows untrained (3 epochs on 2 processes trained 1 step; one process × grad_accum 2 trains 3)."""

    def plan(world: int, accum: int, **kw) -> loop.EpochPlan:
        t = spec(micro_batch_size=2, grad_accum=accum, seed=42, **kw)
        return loop.EpochPlan([27, 13, 29, 37, 68], 100, True, t, world)

    assert [len(plan(2, 1, epochs=3).epoch(e)) for e in range(3)] == [2, 1, 1]
    assert plan(1, 2, epochs=3).total_steps(loop.new_state()) == 3
    for kw in ({"epochs": 3}, {"epochs": 1.5}, {"max_steps": 2}):
        with pytest.raises(UserError, match="train: epoch 1 packs into 1 micro-batches for 2 processes, so some"):
            plan(2, 1, **kw).total_steps(loop.new_state())
    assert plan(2, 1, epochs=1).total_steps(loop.new_state()) == 1  # negative control: epoch 0 alone trains


def test_micro_batches_sync_gradients_on_the_last_only():
    entered = []

    class Rank1(OneProcess):
        num_processes, process_index = 2, 1

        def no_sync(self, module):
            entered.append(module)
            return contextlib.nullcontext()

    units = [[[i]] for i in range(6)]
    seen = []
    for rows, real in loop.micro_batches(Rank1(), "m", units):
        seen.append((rows, real, len(entered)))
    assert seen == [([[1]], True, 1), ([[3]], True, 2), ([[5]], True, 2)]  # no_sync around all but the last


def test_a_process_short_of_micro_batches_runs_a_filler_to_stay_in_step():
    """An epoch's last step of 5 micro-batches on 2 processes: process 1 had 2 to process 0's 3, and FSDP2 hung
    (ZeRO-3 crashed: 'collective mismatch') on process 0's third forward. Every process now runs 3; process 1's
    third is its first again, not real (the recipe multiplies its loss by 0 and counts nothing of it)."""

    class Rank(OneProcess):
        num_processes = 2

        def __init__(self, rank):
            self.process_index, self.synced = rank, []

        def no_sync(self, module):
            self.synced.append(False)
            return contextlib.nullcontext()

    units = [[[i]] for i in range(5)]
    ranks = [Rank(0), Rank(1)]
    got = [list(loop.micro_batches(r, "m", units)) for r in ranks]
    assert got[0] == [([[0]], True), ([[2]], True), ([[4]], True)]
    assert got[1] == [([[1]], True), ([[3]], True), ([[1]], False)]
    assert [len(r.synced) for r in ranks] == [2, 2]  # both sync on their third: the gradients' one all-reduce
    real = sorted(rows[0][0] for g in got for rows, ok in g if ok)
    assert real == list(range(5))  # every micro-batch counted once
    even = [list(loop.micro_batches(r, "m", units[:4])) for r in ranks]  # negative control: no filler needed
    assert [len(g) for g in even] == [2, 2] and all(ok for g in even for _, ok in g)


def test_resume_on_other_data_is_refused():
    state = {**loop.new_state(), **loop.EpochPlan([1] * 8, 8, False, spec(max_steps=4), world=1).keys, "step": 2}
    with pytest.raises(UserError, match="the training data changed since the checkpoint"):
        loop.EpochPlan([2] * 8, 8, False, spec(max_steps=4), world=1).total_steps(state)
    assert loop.EpochPlan([2] * 8, 8, False, spec(max_steps=4, resume="force"), world=1).total_steps(state) == 4


def test_first_micro_step_runs_in_train_mode(tmp_path):
    seen: list[bool] = []
    run_loop(tmp_path, spec(max_steps=3), seen=seen)
    assert seen == [True, True, True]  # was [False, False, False]: from_pretrained's eval mode


def test_non_finite_loss_stops_before_the_step_and_keeps_last_checkpoint(tmp_path):
    def loss_of(model, z):  # finite for two steps, then NaN
        calls.append(1)
        loss = model.lin(z).pow(2).mean()
        return loss * float("nan") if len(calls) == 3 else loss

    calls: list[int] = []
    with pytest.raises(DivergedError, match=r"step 3: loss is nan; training diverged \(lower train.lr"):
        run_loop(tmp_path, spec(max_steps=5, save_every=1), loss_of=loss_of)
    assert [p.name for p in ck.list_checkpoints(tmp_path)] == ["step-000001", "step-000002"]
    assert [r["step"] for r in read_metrics(tmp_path, "train")] == [1, 2]
    assert read_metrics(tmp_path, "diverged")[0]["step"] == 3


def test_keep_last_prunes_and_resumes_only_the_checkpoints_it_wrote(tmp_path):
    """A user's copy in checkpoints/ (step-000002-best, step-2) used to count as a checkpoint of its step: keep_last
    deleted it, and resume could pick it."""
    run_loop(tmp_path, spec(max_steps=2, save_every=1, keep_last=2))
    root = tmp_path / "checkpoints"
    for name in ("step-000002-best", "step-9"):
        shutil.copytree(root / "step-000002", root / name)
    run_loop(tmp_path, spec(max_steps=4, save_every=1, keep_last=2))
    assert sorted(p.name for p in root.iterdir()) == ["step-000002-best", "step-000003", "step-000004", "step-9"]
    assert ck.resume_point(tmp_path, "auto") == root / "step-000004"


def test_the_best_eval_step_is_saved_and_kept_off_the_save_cadence(tmp_path):
    """keep_last keeps "the best eval one", but an eval that set a new best off the save_every cadence was never
    saved: the run reported best_step 2 and no checkpoint of it existed (protected, but not there)."""
    losses = iter([1.0, 0.5, 0.7, 0.8, 0.9, 0.9])
    t = spec(max_steps=6, eval_every=1, save_every=3, keep_last=1)
    run_loop(tmp_path, t, evaluate=lambda: {"eval_loss": next(losses)})
    assert [p.name for p in ck.list_checkpoints(tmp_path)] == ["step-000002", "step-000006"]
    assert torch.load(tmp_path / "checkpoints" / "step-000002" / ck.STATE_FILE)["best_step"] == 2


def test_non_finite_grad_norm_stops_even_without_clipping(tmp_path):
    def loss_of(model, z):  # finite value (sqrt(0) = 0), NaN gradient (d sqrt at 0 × 0)
        return model.lin(z).pow(2).mean() + torch.sqrt(model.lin.weight.abs() * 0).sum()

    with pytest.raises(DivergedError, match="step 1: grad_norm is nan"):
        run_loop(tmp_path, spec(max_steps=2, max_grad_norm=0), loss_of=loss_of)
    assert ck.list_checkpoints(tmp_path) == []


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_eval_loss_stops_the_run_before_it_is_logged_compared_or_saved(tmp_path, bad):
    """SFT, DPO and RM evaluate through `eval_save_stop`. A NaN eval loss used to count as a bad eval (NaN < best is
    False), an inf one too: logged, checkpointed, feeding early stopping, and the run exited 0."""
    losses = iter([1.0, bad, 0.5, 0.5])
    with pytest.raises(DivergedError, match=rf"^step 2: eval_loss is {bad}; the loss on the eval data is not finite"):
        run_loop(tmp_path, spec(max_steps=4, eval_every=1, save_every=1), evaluate=lambda: {"eval_loss": next(losses)})
    assert [p.name for p in ck.list_checkpoints(tmp_path)] == ["step-000001"]
    assert [r["step"] for r in read_metrics(tmp_path, "eval")] == [1]
    assert read_metrics(tmp_path, "diverged")[0]["step"] == 2


def test_zero_steps_is_an_error_not_a_finished_run(tmp_path):
    state = {**loop.new_state(), "step": 4}  # a checkpoint already at the end
    with pytest.raises(UserError, match="checkpoint is at step 4 and the run has 4 steps"):
        run_loop(tmp_path, spec(max_steps=4), state=state)


def test_summary_rate_is_the_wall_clock_mean_not_the_last_step(tmp_path, monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(loop.time, "perf_counter", lambda: clock[0])

    def after_step(step, metrics):  # step 1 takes 10 s, the others 1 s
        clock[0] += 10.0 if step == 1 else 1.0

    out, _ = run_loop(tmp_path, spec(max_steps=4), after_step=after_step)
    # 4 steps × 100 tokens in 13 s; the last step alone ran at 100 tokens/s.
    assert out["train_tokens_per_s"] == pytest.approx(400 / 13)
    assert read_metrics(tmp_path, "train")[-1]["tokens_per_s"] == pytest.approx(100.0)


def test_summary_train_loss_is_the_mean_over_the_runs_steps_and_the_last_is_named(tmp_path):
    """train_loss was the last step's loss, read by HF/TRL users as the mean over the run: now the mean of the
    step losses (as HF's), the last under last_train_loss. A resume from a checkpoint older than the mean averages
    the steps since the resume and says how many (tests/test_sft.py: a resume from a newer one averages all)."""
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    losses = iter([4.0, 3.0, 2.0, 0.5, 9.0, 7.0])

    def loss_of(model, z):  # the step's loss is the next value, with the toy's gradient
        loss = model(z).pow(2).mean()
        return loss - loss.detach() + next(losses)

    out, _ = run_loop(tmp_path / "a", spec(max_steps=4), loss_of=loss_of)
    logged = [r["loss"] for r in read_metrics(tmp_path / "a", "train")]
    assert logged == [4.0, 3.0, 2.0, 0.5]
    assert (out["train_loss"], out["last_train_loss"], out["train_mean_steps"]) == (2.375, 0.5, 4)
    assert out["last_train_tokens_per_s"] == read_metrics(tmp_path / "a", "train")[-1]["tokens_per_s"]
    state = {**loop.new_state(), "step": 2}
    del state["train_sums"], state["train_steps"]  # a checkpoint from before the mean: the steps since the resume
    out, _ = run_loop(tmp_path / "b", spec(max_steps=4), loss_of=loss_of, state=state)
    assert (out["train_loss"], out["last_train_loss"], out["train_mean_steps"]) == (8.0, 7.0, 2)


def test_log_every_is_honoured(tmp_path):
    run_loop(tmp_path, spec(max_steps=5, log_every=2))
    assert [r["step"] for r in read_metrics(tmp_path, "train")] == [2, 4, 5]


def test_rng_saved_and_restored_per_process(tmp_path, monkeypatch):
    model = Toy()
    opt = torch.optim.AdamW(model.parameters())
    states = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        states.append(ck.rng_state())
    ckpt = ck.save_checkpoint(tmp_path, 3, model, opt, loop.new_state(), 2, rngs=states)
    assert sorted(p.name for p in ckpt.glob("rng_state_*.pt")) == ["rng_state_0.pt", "rng_state_1.pt"]
    monkeypatch.setattr(ck, "load_weights", lambda m, c: None)  # the toy has no HF weights; RNG is under test
    for rank, seed in enumerate((1, 2)):
        torch.manual_seed(99)
        ck.load_checkpoint(ckpt, model, opt, rank=rank, world=2)
        torch.manual_seed(seed)
        want = torch.rand(3)
        ck.load_checkpoint(ckpt, model, opt, rank=rank, world=2)
        assert torch.equal(torch.rand(3), want)
    with pytest.raises(UserError, match=r"written by 2 process\(es\), this run has 1; resume with 2"):
        ck.load_checkpoint(ckpt, model, opt, rank=0, world=1)


def test_changed_config_lists_only_keys_that_change_training():
    old = "model:\n  path: a\nlora:\n  r: 16\ntrain:\n  lr: 0.001\n  max_steps: 10\n  betas: [0.9, 0.999]\n"
    new = "model:\n  path: a\nlora:\n  r: 8\ntrain:\n  lr: 0.001\n  max_steps: 20\n  betas: [0.9, 0.99]\n"
    changes = ck.config_changes(old, new)
    assert changes == {"lora.r": (16, 8), "train.betas": ([0.9, 0.999], [0.9, 0.99]), "train.max_steps": (10, 20)}
    assert {k for k in changes if k not in ck.FREE_KEYS} == {"lora.r", "train.betas"}
    # A key an older version did not write is no change; a section that replaced a plain value is.
    assert ck.config_changes("ppo:\n  critic_lora: null\n", "ppo:\n  critic_lora: null\n  new_key: 1\n") == {}
    assert ck.config_changes("ppo:\n  critic_lora: null\n", "ppo:\n  critic_lora:\n    r: 8\n") == {
        "ppo.critic_lora": (None, "{…}")
    }
    # A DPO/RM/PPO run from before it recorded the dropout trained with (0 under disable_dropout) resumes as is;
    # a dropout kept on is still a change.
    off = "lora:\n  dropout: {}\ntrain:\n  disable_dropout: {}\n"
    assert ck.config_changes(off.format(0.05, "true"), off.format(0.0, "true")) == {}
    assert ck.config_changes(off.format(0.05, "false"), off.format(0.0, "false")) == {"lora.dropout": (0.05, 0.0)}


@pytest.mark.parametrize(
    "override, key",
    [
        ("train.max_steps=0", "train.max_steps"),
        ("train.max_steps=-5", "train.max_steps"),
        ("train.lr=0", "train.lr"),
        ("train.lr=-1e-4", "train.lr"),
        ("lora.alpha=-16", "lora.alpha"),
        ("train.keep_last=0", "train.keep_last"),
        ("train.log_every=0", "train.log_every"),
        ("train.eval_every=-1", "train.eval_every"),
        ("train.save_every=-1", "train.save_every"),
        ("train.max_grad_norm=-1", "train.max_grad_norm"),
        ("train.weight_decay=-0.1", "train.weight_decay"),
        ("train.betas=[1.0,0.999]", "train.betas.0"),
        ("train.betas=[0.9,-0.1]", "train.betas.1"),
        ("train.warmup_ratio=-0.1", "train.warmup_ratio"),
        ("train.min_lr_ratio=2", "train.min_lr_ratio"),
        ("train.grad_accum=0", "train.grad_accum"),
        ("train.micro_batch_size=0", "train.micro_batch_size"),
        ("train.stop_after=0", "train.stop_after"),
        ("lora.r=0", "lora.r"),
    ],
)
def test_out_of_range_train_and_lora_keys_are_one_line_errors(override, key):
    from weitiao.config import load_config
    from weitiao.recipes.dpo import DPOConfig
    from weitiao.recipes.sft import SFTConfig

    for cls in (SFTConfig, DPOConfig):  # DPO and RM inherit the train spec
        with pytest.raises(UserError, match=rf"^command line {re.escape(override)}: {re.escape(key)}: ") as e:
            load_config(cls, None, ["data.train=[x.jsonl]", override])
        assert "\n" not in str(e.value)


def test_in_range_defaults_validate():
    from weitiao.config import load_config
    from weitiao.recipes.sft import SFTConfig

    cfg = load_config(SFTConfig, None, ["data.train=[x.jsonl]", "train.max_grad_norm=0", "train.eval_every=0"])
    assert cfg.train.max_steps is None and cfg.lora.alpha is None  # None: run by epochs; alpha = 2r


def test_min_lr_ratio_with_the_constant_schedule_is_refused():
    """scheduler constant never decays: a min_lr_ratio there was accepted and did nothing."""
    from weitiao.config import load_config
    from weitiao.recipes.sft import SFTConfig

    base = ["data.train=[x.jsonl]", "train.min_lr_ratio=0.1"]
    with pytest.raises(UserError, match="min_lr_ratio 0.1 has no effect with scheduler constant"):
        load_config(SFTConfig, None, [*base, "train.scheduler=constant"])
    for kind in ("cosine", "linear"):  # negative control: the decaying schedules use it
        assert load_config(SFTConfig, None, [*base, f"train.scheduler={kind}"]).train.min_lr_ratio == 0.1


def test_early_stop_patience_without_eval_every_is_refused():
    """eval_every 0 evaluates once, at the last step: a patience there could never stop anything."""
    from weitiao.config import load_config
    from weitiao.recipes.sft import SFTConfig

    base = ["data.train=[x.jsonl]", "train.early_stop_patience=3"]
    with pytest.raises(UserError, match="early_stop_patience 3 needs evals during the run, and eval_every 0"):
        load_config(SFTConfig, None, base)
    assert load_config(SFTConfig, None, [*base, "train.eval_every=50"]).train.early_stop_patience == 3  # control


def test_golden_in_dpo_or_rm_is_refused():
    """train.golden (TrainSpec) was accepted by DPO and RM, whose loops never answer it."""
    from weitiao.config import load_config
    from weitiao.recipes.dpo import DPOConfig
    from weitiao.recipes.rm import RMConfig
    from weitiao.recipes.sft import SFTConfig

    for cls in (DPOConfig, RMConfig):
        with pytest.raises(UserError, match="golden is answered during training by weitiao sft only"):
            load_config(cls, None, ["data.train=[x.jsonl]", "train.golden=g.jsonl"])
    assert load_config(SFTConfig, None, ["data.train=[x.jsonl]", "train.golden=g.jsonl"]).train.golden  # control


def test_step_rate_leaves_out_the_checkpoint_before_it(tmp_path, monkeypatch):
    """A step after a save (or eval) logged tokens/s over the save too: 100 tok/s steps showed 17 after a 5 s save."""
    clock = [0.0]
    monkeypatch.setattr(loop.time, "perf_counter", lambda: clock[0])
    save = loop.dist.save_checkpoint

    def slow_save(*a, **kw):
        clock[0] += 5.0
        return save(*a, **kw)

    def loss_of(model, z):  # each step trains for 1 s
        clock[0] += 1.0
        return model(z).pow(2).mean()

    monkeypatch.setattr(loop.dist, "save_checkpoint", slow_save)
    out, _ = run_loop(tmp_path, spec(max_steps=4, save_every=2), loss_of=loss_of)
    assert [r["tokens_per_s"] for r in read_metrics(tmp_path, "train")] == [100.0] * 4
    assert out["train_tokens_per_s"] == pytest.approx(400 / 14)  # the summary stays the wall-clock mean


def test_first_save_on_cpu_prints_no_deepspeed_accelerator_warning():
    """accelerate's unwrap (every save) imports DeepSpeed where installed; its accelerator probe warned 'Setting
    accelerator to CPU. If you have GPU ...' into each CPU run (make demo's output): CPU is named for it."""
    import subprocess
    import sys

    pytest.importorskip("deepspeed")
    code = (
        "import os, torch; from accelerate import Accelerator; from weitiao.train import dist\n"
        "os.environ.pop('DS_ACCELERATOR', None)\n"
        "class Wrap(torch.nn.Module):\n"
        "    def __init__(self): super().__init__(); self.model = torch.nn.Linear(2, 2)\n"
        "accel = Accelerator(cpu=True); m = accel.prepare(Wrap())\n"
        "assert isinstance(dist.inner_model(accel, m), torch.nn.Linear)\n"
        "import deepspeed\n"  # what unwrap may not have imported yet: the probe runs here at the latest
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != "DS_ACCELERATOR"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Setting accelerator" not in done.stderr + done.stdout


def test_max_steps_over_epochs_the_config_set_is_said_once():
    """`epochs: 3` beside `max_steps: 6` trained 6 steps (a third of an epoch here) without a word: now a note names
    both keys; no note when epochs is left unset or gives the same length."""
    lengths = [1] * 40  # micro-batch 1, grad_accum 2: 20 steps an epoch
    plan = loop.EpochPlan(lengths, 8, False, spec(grad_accum=2, epochs=3, max_steps=6), world=1)
    assert plan.total_steps(loop.new_state()) == 6
    assert plan.note == (
        "note: train.max_steps 6 sets the run's length (0.3 × the 20 steps of an epoch), so train.epochs 3 (about "
        "60 steps) is not used; drop one of them"
    )
    for kw in ({"max_steps": 6}, {"epochs": 3}, {"epochs": 0.5, "max_steps": 10}):  # negative controls
        quiet = loop.EpochPlan(lengths, 8, False, spec(grad_accum=2, **kw), world=1)
        quiet.total_steps(loop.new_state())
        assert quiet.note == ""


def test_processes_that_read_other_config_models_or_data_are_refused(tmp_path, monkeypatch, make_config, chat_file):
    """Multi-node with a copy of the config, data and model per node: a stale copy on node 1 trained its share of
    its own rows at its own settings (another lr, another model) and the run was recorded as process 0's, exit 0.
    Each process's inputs are now compared; paths and host-local keys (data.cache_dir…) may differ."""
    from weitiao.config import dump_config
    from weitiao.data.chat import Encoded

    class TwoProcesses(OneProcess):
        num_processes = 2

    def inputs(*over: str, models=None, lengths=(5, 7), content="abc", evals=((1, 2, 3),)) -> tuple:
        cfg = make_config("sft", chat_file, *over)
        return (
            cfg,
            dump_config(cfg),
            models or {"model.path": "f0"},
            list(lengths),
            content,
            [Encoded(list(e), [-100, *e[1:]]) for e in evals],
        )

    def gathered(args: tuple) -> tuple:
        """What the process given `args` hands to the gather."""
        seen = []
        monkeypatch.setattr(loop.dist, "gather_objects", lambda v: seen.append(v) or [v, v])
        loop.same_on_every_process(TwoProcesses(), *args)
        return seen[0]

    def two(mine: tuple, theirs: tuple) -> None:
        values = [gathered(mine), gathered(theirs)]
        monkeypatch.setattr(loop.dist, "gather_objects", lambda v: values)
        loop.same_on_every_process(TwoProcesses(), *mine)

    two(inputs(), inputs("data.cache_dir=/node1/cache", f"train.out={tmp_path}/node1"))  # the same run: accepted
    for theirs, says in [
        (inputs("train.lr=0.01"), "config key train.lr: None on process 0, 0.01 on process 1"),
        (inputs(models={"model.path": "f1"}), "what model.path names"),
        (inputs(lengths=(5, 7, 9)), "data.train: 2 rows (pairs) on process 0, 3 on process 1"),
        (inputs(content="abd"), "data.train: other texts in its 2 rows"),
        (inputs(evals=((1, 2, 4),)), "eval data"),
    ]:
        with pytest.raises(UserError, match=re.escape(says)):
            two(inputs(), theirs)
    # train.golden is a path (each node its own copy): what it holds is compared, not where it is
    from conftest import write_jsonl

    golden = [
        write_jsonl(tmp_path / f"golden{i}.jsonl", [{"prompt": p}]) for i, p in enumerate(["你好", "你好", "再见"])
    ]
    two(inputs(f"train.golden={golden[0]}"), inputs(f"train.golden={golden[1]}"))  # the same prompts: accepted
    with pytest.raises(UserError, match=re.escape("train.golden: other prompts behind the same path")):
        two(inputs(f"train.golden={golden[0]}"), inputs(f"train.golden={golden[2]}"))  # a stale copy on process 1


def test_other_processes_refusal_names_the_grad_accum_to_resume_with(tmp_path):
    """A checkpoint of 1 process × grad_accum 2 resumed on 3 × 1 was told 'resume with 1 processes', and on 1 process
    with this config's grad_accum 1 the resume was then refused for that change: the line names both now, and
    following it resumes."""
    ckpt = tmp_path / "checkpoints" / "step-000002"
    ckpt.mkdir(parents=True)
    torch.save({"step": 2, "world": 1}, ckpt / ck.STATE_FILE)
    saved = "train:\n  grad_accum: 2\n  lr: 0.001\n"
    (ckpt / "config.yaml").write_text(saved)
    now = saved.replace("grad_accum: 2", "grad_accum: 1")
    with pytest.raises(UserError, match=r"resume with 1 process\(es\) and train\.grad_accum 2 \(as many"):
        ck.open_run(tmp_path, "auto", now, False, world=3, write=False, move=False)
    with pytest.raises(UserError, match=r"train\.grad_accum 2 → 1"):  # only the processes, as it said before
        ck.open_run(tmp_path, "auto", now, False, world=1, write=False, move=False)
    assert ck.open_run(tmp_path, "auto", saved, False, world=1, write=False, move=False) == ckpt
