"""Checkpoints: atomic directory writes, keep-last-K, and everything exact resume needs.

A checkpoint is `checkpoints/step-NNNNNN/` holding the weights users load (`adapter/` for LoRA,
a peft adapter dir; `model/` for full fine-tuning) plus `trainer_state.pt` (optimizer, step,
data position, early-stopping state, number of processes), one `rng_state_{rank}.pt` per process
and a copy of the run's `config.yaml`. It is written under a temp name and renamed, so a run
killed mid-save leaves the previous checkpoints intact.

Resuming checks that the config still trains the same thing (`check_config`) and that the models and adapters
it names still hold the same weights (`inputs.json`: a retrained `lora.init_from` at the same path would otherwise
become DPO's reference unnoticed); a fresh run in a used dir moves the previous run's files aside
(`move_previous_run`), it never deletes them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import yaml

from weitiao.config import CONFIG_FILE, INPUTS_FILE, RUN_FILES, is_step_dir
from weitiao.errors import UserError
from weitiao.io import atomic_write_text, open_modes
from weitiao.models.digest import local_model

STATE_FILE = "trainer_state.pt"
TMP_PREFIX = ".tmp-"  # write_checkpoint fills .tmp-step-NNNNNN, then renames it to step-NNNNNN
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")
# Config keys that may change on resume: how long to run and how often to log, eval and save.
# Every other key (model, lora, data, loss, optimizer, batch, seed) changes what a step computes.
FREE_KEYS = {
    *(
        f"train.{k}"
        for k in (
            "max_steps",
            "epochs",
            "num_episodes",
            "stop_after",
            "log_every",
            "eval_every",
            "save_every",
            "keep_last",
            "early_stop_patience",
            "out",
            "resume",
            "tensorboard",
            "report_to",
            "progress",
            "progress_every_s",
            "golden",
            "sample_every",
            "hacking_window",
            "hacking_kl",
            "hacking_length_ratio",
        )
    ),
    "dpo.warn_falling_chosen",
    # how a step is computed or the data read, not what: the same tokens, the same (or, compiled, within 1e-5) numbers
    # (gradient checkpointing after an out-of-memory is the usual resume with a changed config)
    "model.gradient_checkpointing",
    "train.compile",
    "train.fused_lora",
    "data.cache",
    "data.cache_dir",
    "data.num_proc",
}


def rng_file(rank: int) -> str:
    return f"rng_state_{rank}.pt"


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def is_peft(model: Any) -> bool:
    return hasattr(model, "peft_config")


def save_weights(model: Any, out: Path, state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """Save the user-facing weights: adapter dir for peft models, full HF dir otherwise.

    `state_dict`: the model's full state dict when its own tensors are shards (FSDP, see `dist`).
    """
    target = out / ("adapter" if is_peft(model) else "model")
    kw = {} if state_dict is None else {"state_dict": state_dict}
    model.save_pretrained(target, safe_serialization=True, **kw)
    open_modes(target)  # safetensors leaves 0600: `final/` is what a server (maybe another user) loads
    return target


def load_weights(model: Any, ckpt: Path) -> None:
    """Restore trained weights saved by `save_weights` into an identically built model."""
    from safetensors.torch import load_file

    if is_peft(model):
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(str(ckpt / "adapter" / "adapter_model.safetensors")))
    else:
        model.load_state_dict(saved_full_model(model, ckpt).state_dict())


def saved_full_model(model: Any, ckpt: Path) -> Any:
    """The `model/` folder of a checkpoint, loaded with the model's own class (a reward model's
    `score` head is not a causal LM's `lm_head`) and dtype."""
    return type(model).from_pretrained(ckpt / "model", dtype=next(model.parameters()).dtype)


def save_checkpoint(
    run_dir: Path,
    step: int,
    model: Any,
    optimizer: torch.optim.Optimizer | dict,
    state: dict[str, Any],
    keep_last: int,
    protect: set[int] | None = None,
    rngs: list[dict[str, Any]] | None = None,
    weights: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write checkpoint `step` atomically, then drop the oldest beyond `keep_last` (never `protect`).

    `optimizer`: the optimizer or its (gathered) state dict; `rngs`: every process's `rng_state()`, by
    rank (default: this process's only); `weights`: the model's gathered full state dict (`save_weights`).
    """
    rngs = rngs or [rng_state()]
    opt = optimizer if isinstance(optimizer, dict) else optimizer.state_dict()

    def fill(tmp: Path) -> None:
        save_weights(model, tmp, weights)
        torch.save({**state, "step": step, "world": len(rngs), "optimizer": opt}, tmp / STATE_FILE)
        for rank, rng in enumerate(rngs):
            torch.save(rng, tmp / rng_file(rank))

    return write_checkpoint(run_dir, step, fill, keep_last, protect)


def write_checkpoint(
    run_dir: Path, step: int, fill: Callable[[Path], None], keep_last: int, protect: set[int] | None = None
) -> Path:
    """`fill(dir)` writes a checkpoint into a temp dir, renamed to `step-NNNNNN` when done; then only the
    newest `keep_last` (≥ 1) and `protect` are kept.

    The run's config.yaml is copied in, so a resume compares against the config these weights saw.
    """
    if keep_last < 1:
        raise ValueError(f"keep_last must be ≥ 1, got {keep_last}")  # the config validates it
    root = run_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    tmp = root / f"{TMP_PREFIX}{final.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    if (run_dir / CONFIG_FILE).exists():
        shutil.copyfile(run_dir / CONFIG_FILE, tmp / CONFIG_FILE)
    fill(tmp)
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    ckpts = list_checkpoints(run_dir)
    keep = set(ckpts[-keep_last:])
    for c in ckpts:
        if c not in keep and step_of(c) not in (protect or set()):
            shutil.rmtree(c)
    return final


def step_of(ckpt: Path) -> int:
    return int(ckpt.name.split("-")[1])


def list_checkpoints(run_dir: Path) -> list[Path]:
    root = run_dir / "checkpoints"
    if not root.exists():
        return []
    return sorted((p for p in root.iterdir() if is_step_dir(p) and (p / STATE_FILE).exists()), key=step_of)


@contextlib.contextmanager
def resume_hint(out: Path, t: Any, step: Callable[[], int], main: bool) -> Iterator[None]:
    """Around a training loop: on Ctrl-C, the main process says in one line where the run can resume (its last
    checkpoint) and how, then the interrupt goes on (exit 130). `t`: the run's train spec; `step()`: steps done."""
    try:
        yield
    except KeyboardInterrupt:
        if main:
            print(interrupted_line(out, t, step()), file=sys.stderr, flush=True)
        raise


def interrupted_line(out: Path, t: Any, step: int) -> str:
    """What `resume_hint` says: the last checkpoint in `out` and the command that resumes there, or that none was
    saved."""
    saved = list_checkpoints(out)
    if not saved:
        when = f"train.save_every {t.save_every}" if t.save_every else "train.save_every 0: only at the end"
        return f"interrupted after step {step} before any checkpoint was saved ({when}); a rerun starts over"
    how = "run the same command again" if t.resume in ("auto", "force") else "run it again with train.resume=auto"
    return f"interrupted after step {step}: {how} to resume from {saved[-1]} (step {step_of(saved[-1])})"


def load_checkpoint(
    ckpt: Path,
    model: Any,
    optimizer: torch.optim.Optimizer,
    rank: int = 0,
    world: int = 1,
    force: bool = False,
    restore: Callable[[Any, Path, Any, dict], None] | None = None,
    same_steps: bool = False,
) -> dict[str, Any]:
    """Restore weights, optimizer and this process's RNG; returns the saved trainer state.

    A checkpoint written by another number of processes is refused (each process's data share and
    RNG stream depend on it) unless `force` or `same_steps` (`same_steps`: its steps took as many
    micro-batches as this run's, see `same_steps`); then processes without a saved RNG keep their own.
    `restore(model, ckpt, optimizer, optimizer_state)` replaces the weight and optimizer loading
    (for sharded models, see `dist`).
    """
    state = torch.load(ckpt / STATE_FILE, weights_only=False)
    saved_world = state.pop("world", 1)
    check_world(ckpt, saved_world, world, force or same_steps)
    if saved_world != world and rank == 0 and not same_steps:
        print(f"train.resume=force: {ckpt} was written by {saved_world} process(es), resuming with {world}: a step now "
              "reads other micro-batches, so the rest of this epoch may train some rows twice and others not at all, "
              "and the step count follows the new batch")  # fmt: skip
    if restore is not None:
        restore(model, ckpt, optimizer, state.pop("optimizer"))
    else:
        load_weights(model, ckpt)
        optimizer.load_state_dict(state.pop("optimizer"))
    legacy = state.pop("rng", None)  # checkpoints before per-process RNG files: process 0's only
    if (ckpt / rng_file(rank)).exists():
        set_rng_state(torch.load(ckpt / rng_file(rank), weights_only=False))
    elif legacy is not None and rank == 0:
        set_rng_state(legacy)
    elif rank == 0 or not (force or same_steps):
        raise UserError(f"train.resume: {ckpt} has no {rng_file(rank)}; it is not a complete checkpoint")
    return state


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix[:-1]: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}."))
    return out


def config_changes(old_yaml: str, new_yaml: str) -> dict[str, tuple[Any, Any]]:
    """Keys (dotted) whose value differs between two config.yaml texts: key → (old, new).

    A key only one side has (a setting of an older or newer weitiao) is no change, unless the other
    side has a plain value where this side has a section (`critic_lora: null` → `{r: 8}`).
    """
    old, new = _flat(yaml.safe_load(old_yaml) or {}), _flat(yaml.safe_load(new_yaml) or {})
    out = {k: (old[k], new[k]) for k in old.keys() & new.keys() if old[k] != new[k]}
    if new.get("train.disable_dropout") and new.get("lora.dropout") == 0.0:
        out.pop("lora.dropout", None)  # a run from before load.lora_as_trained recorded the default it switched off
    for k in old.keys() ^ new.keys():
        for parent in (k.rsplit(".", i)[0] for i in range(1, k.count(".") + 1)):
            if parent in old or parent in new:
                out[parent] = (old.get(parent, "{…}"), new.get(parent, "{…}"))
    return dict(sorted(out.items()))


SCHEDULE_KEYS = ("train.max_steps", "train.epochs", "train.num_episodes")  # free, but they stretch the lr schedule


def _saved(ckpt: Path, name: str) -> Path | None:
    """A run file (config.yaml, inputs.json) saved with checkpoint `ckpt`, else the run's own, else None."""
    return next((p for p in (ckpt / name, ckpt.parent.parent / name) if p.exists()), None)


def schedule_note(changes: dict[str, tuple[Any, Any]]) -> str:
    """A line when a resume changes the run's length: the learning-rate schedule is recomputed for the new one."""
    moved = [f"{k} {old} → {new}" for k, (old, new) in changes.items() if k in SCHEDULE_KEYS]
    if not moved:
        return ""
    return (f"note: {', '.join(moved)}: the learning-rate schedule (warm-up, decay) is recomputed for the new length, "
            "so the next steps follow the new curve, not the old one")  # fmt: skip


def refuse_other_recipe(ckpt: Path, old_yaml: str, new_yaml: str) -> None:
    """A checkpoint another recipe wrote (its config's sections differ: sft model/lora/data/train, dpo adds dpo, rm
    rm, ppo reward and ppo) is refused, force or not: a key only one side has counts as no change, so an RM run
    resumed a DPO checkpoint on the same pairs without a word."""
    old, new = (list(yaml.safe_load(y) or {}) for y in (old_yaml, new_yaml))
    if set(old) != set(new):
        raise UserError(
            f"train.resume: {ckpt} was written by another recipe (config sections {', '.join(old)}; this run's "
            f"{', '.join(new)}): resume it with the recipe that wrote it, or give this run another train.out; to start "
            "from its weights, use lora.init_from"
        )


def check_config(
    ckpt: Path, config_yaml: str, force: bool, free: set[str] = frozenset()
) -> tuple[str, dict[str, tuple[Any, Any]]]:
    """Refuse to resume `ckpt` under a config that trains something else; returns the changes `force` let by
    (as one line) and every change (key → (old, new)).

    Run length and cadence (FREE_KEYS, and `free`) may change. Anything else changed (model, LoRA shape, data,
    loss, optimizer, batch, seed) raises one line naming the keys, old → new, unless `force`.
    """
    saved = _saved(ckpt, CONFIG_FILE)
    if saved is None:
        if force:
            return "", {}
        raise UserError(
            f"train.resume: {ckpt} has no {CONFIG_FILE} beside it, so an unchanged config cannot be checked; "
            "set train.resume=force to resume anyway"
        )
    saved_yaml = saved.read_text(encoding="utf-8")
    refuse_other_recipe(ckpt, saved_yaml, config_yaml)
    changes = config_changes(saved_yaml, config_yaml)
    blocked = [f"{k} {old!r} → {new!r}" for k, (old, new) in changes.items() if k not in FREE_KEYS | free]
    shown = ", ".join(blocked[:6]) + (f" (and {len(blocked) - 6} more)" if len(blocked) > 6 else "")
    if blocked and not force:
        raise UserError(
            f"train.resume: {ckpt} was trained with another config: {shown}; revert them, "
            "set train.resume=none (or another train.out) for a new run, or train.resume=force"
        )
    return shown, changes


def _weights_dir(path: Path) -> Path:
    """Where a model/adapter reference keeps its weights: a run dir's final/adapter or final/, else the dir."""
    for d in (path / "final" / "adapter", path / "final", path / "adapter", path):
        if d.is_dir() and any(f.suffix in WEIGHT_SUFFIXES for f in d.iterdir()):
            return d
    return path


def fingerprint(path: Path, chunk: int = 1 << 20) -> str:
    """Size plus the hash of each weight/config file's first and last MiB (a retrained model differs in both):
    cheap on a 70B checkpoint, and the same on any machine."""
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(f for f in _weights_dir(path).iterdir() if f.is_file()
                                                 and (f.suffix in WEIGHT_SUFFIXES or f.suffix == ".json"))  # fmt: skip
    for f in files:
        size = f.stat().st_size
        h.update(f"{f.name} {size}".encode())
        with open(f, "rb") as fh:
            h.update(fh.read(chunk))
            if size > 2 * chunk:
                fh.seek(size - chunk)
                h.update(fh.read(chunk))
    return h.hexdigest()[:16]


def input_fingerprints(cfg: Any) -> dict[str, str]:
    """Dotted ModelRef key (model.path, lora.init_from, dpo.reference, reward.path) → fingerprint of the local file
    or folder it names now; hub ids through the local cache, URLs and module:function left out. A LoRA run also
    records its base's `digest.weights_digest` (`continued.BASE_KEY`), which its adapter is continued on only."""
    from weitiao.config import path_keys

    out = {}
    for keys, kind in path_keys(type(cfg)).items():
        value: Any = cfg
        for k in keys:
            value = getattr(value, k, None)
        if not kind.only_if_exists or not isinstance(value, str) or not value or "://" in value:
            continue
        file = Path(value.rpartition(":")[0]).expanduser()  # a reward function file.py:name
        local = file if file.suffix == ".py" and file.is_file() else local_model(value)
        if local is not None:
            out[".".join(keys)] = fingerprint(local)
    lora, model = getattr(cfg, "lora", None), getattr(cfg, "model", None)
    if lora is not None and lora.enabled and model is not None:  # what a later lora.init_from compares its base with
        from weitiao.models.continued import BASE_KEY
        from weitiao.models.digest import model_digest

        if (digest := model_digest(model.path)) is not None:
            out[BASE_KEY] = digest
    return out


def check_inputs(ckpt: Path, inputs: dict[str, str], force: bool) -> str:
    """Refuse to resume when a model or adapter the config names holds other weights than when `ckpt`'s run
    started; returns the changes `force` let by."""
    saved_file = _saved(ckpt, INPUTS_FILE)
    if saved_file is None:  # a run from before inputs.json
        return ""
    saved = json.loads(saved_file.read_text(encoding="utf-8"))
    changed = [k for k in inputs.keys() & saved.keys() if inputs[k] != saved[k]]
    if changed and not force:
        raise UserError(
            f"train.resume: {', '.join(sorted(changed))} changed since {ckpt.parent.parent} started (retrained, "
            "replaced or edited at the same path): the run would continue on other inputs; restore them, "
            "set train.resume=none (or another train.out) for a new run, or train.resume=force"
        )
    return ", ".join(sorted(changed))


def _run_files(out: Path) -> tuple[list[Path], list[Path]]:
    """What a run wrote in `out`, by name: its RUN_FILES, and its checkpoints/step-NNNNNN (a crashed save's
    .tmp-step-NNNNNN too), not a user's copy such as step-000100-keep."""
    root = out / "checkpoints"
    steps = [p for p in root.iterdir() if is_step_dir(Path(p.name.removeprefix(TMP_PREFIX)))] if root.is_dir() else []
    return [out / n for n in RUN_FILES if (out / n).exists()], sorted(steps)


def refuse_foreign_files(out: Path) -> None:
    """A fresh run moves a previous run's files aside; files of those names that no run wrote (no inputs.json, final/
    or checkpoint: a user's own config.yaml or metrics.jsonl kept in `out`) are refused instead of moved."""
    paths, steps = _run_files(out)
    names = [p.name for p in paths]
    if names and not ({INPUTS_FILE, "final"} & set(names) or steps):
        raise UserError(
            f"train.out: {out} holds {', '.join(names)}, which no weitiao run wrote there (no {INPUTS_FILE}, final/ "
            "or checkpoints/step-*); a fresh run would move them to previous/ and write its own: "
            "set train.out to another folder, or move those files out"
        )


def move_previous_run(out: Path) -> Path | None:
    """A fresh run in a used dir: move the previous run's files to `out/previous/<time>/`.

    Only what a run writes moves (RUN_FILES, checkpoints/step-NNNNNN and a crashed save's .tmp-step-NNNNNN);
    anything else stays where it is, a user's copy such as checkpoints/step-000100-keep included.
    Left in place, metrics would append to the old file and `resume: auto` could pick up the old
    run's checkpoints. Returns the new home, or None when there was nothing to move.
    """
    names, steps = _run_files(out)
    root = out / "checkpoints"
    if not names and not steps:
        return None
    stamp, n = time.strftime("%Y%m%d-%H%M%S"), 0
    while True:
        dest = out / "previous" / (stamp if n == 0 else f"{stamp}-{n}")
        try:
            dest.mkdir(parents=True)
            break
        except FileExistsError:
            n += 1
    for p in names:
        p.rename(dest / p.name)
    if steps:
        (dest / "checkpoints").mkdir()
        for p in steps:
            p.rename(dest / "checkpoints" / p.name)
        if not any(root.iterdir()):
            root.rmdir()
    return dest


def resume_point(out: Path, resume: str) -> Path | None:
    """`auto`/`force`: latest checkpoint under `out` (None if none); `none`; or an explicit checkpoint dir."""
    if resume == "none":
        return None
    if resume in ("auto", "force"):
        ckpts = list_checkpoints(out)
        return ckpts[-1] if ckpts else None
    p = Path(resume)
    if not (p / STATE_FILE).exists():
        raise UserError(f"train.resume: {p} is not a checkpoint dir (no {STATE_FILE})")
    return p


def saved_state(ckpt: Path) -> dict[str, Any]:
    """A checkpoint's trainer state, memory-mapped (its optimizer tensors are not read)."""
    return torch.load(ckpt / STATE_FILE, weights_only=False, mmap=True)


def _saved_step(ckpt: Path) -> int:
    if ckpt.name.startswith("step-") and ckpt.name[5:].isdigit():
        return step_of(ckpt)
    return int(saved_state(ckpt)["step"])


def saved_world(state: dict[str, Any]) -> int:
    """Processes that wrote a checkpoint's state: `world` (SFT/DPO/RM) or one RNG state each (PPO)."""
    if "world" in state:
        return int(state["world"])
    rng = state.get("rng")
    return len(rng) if isinstance(rng, list) else 1


def check_world(ckpt: Path, was: int, world: int, force: bool, steps: tuple[int, int] | None = None) -> None:
    """Refuse resuming a checkpoint `was` processes wrote with `world` of them, unless `force`. `steps`: micro-batches
    a step took then and takes now (`step_micro_batches`); where they are equal the steps are the same: no refusal."""
    if was == world or force or (steps is not None and steps[0] == steps[1]):
        return
    if steps is None:
        raise UserError(
            f"train.resume: {ckpt} was written by {was} process(es), this run has {world}; resume with {was} "
            "(the data split and RNG streams depend on it) or set train.resume=force"
        )
    if steps[0] % world == 0:
        accum = f"train.grad_accum {steps[0] // world} on {world} process(es)"
    else:  # back on the checkpoint's processes, with its grad_accum (else that change is refused next)
        was_accum = steps[0] // was
        accum = f"{was} process(es)" + (f" and train.grad_accum {was_accum}" if was_accum != steps[1] // world else "")
    raise UserError(
        f"train.resume: {ckpt} was written by {was} process(es) taking {steps[0]} micro-batches a step (processes × "
        f"train.grad_accum), this run takes {steps[1]} on {world}: a step would read other micro-batches than the "
        f"checkpoint's run (rows of this epoch trained twice or skipped); resume with {accum} (as many micro-batches "
        "a step: the same steps) or set train.resume=force"
    )


def step_micro_batches(ckpt: Path, config_yaml: str, was: int, world: int) -> tuple[int, int] | None:
    """Micro-batches an optimizer step took in `ckpt`'s run (`was` processes × its train.grad_accum) and takes under
    `config_yaml` (`world` processes); None when a config has no grad_accum (PPO) or the checkpoint no config.

    Where they are equal, a resume on another number of processes is exact (SFT, DPO, RM): step k reads the same
    micro-batches of its epoch (`loop.EpochPlan`), micro-batch g of it draws its dropout masks from the seed (step, g)
    on whichever process runs it (`loop.micro_batches`), and the loss is normalized by the whole step's targets; no
    process's own RNG stream is drawn from in the loop."""
    saved = _saved(ckpt, CONFIG_FILE)
    if saved is None:
        return None
    old, new = (_flat(yaml.safe_load(y) or {}).get("train.grad_accum") for y in (saved.read_text("utf-8"), config_yaml))
    if not isinstance(old, int) or not isinstance(new, int):
        return None
    return was * old, world * new


def same_steps(ckpt: Path, config_yaml: str, was: int, world: int) -> bool:
    """Whether `ckpt`, written by `was` processes, came from other processes than this run's `world` whose steps took
    as many micro-batches as this run's (`step_micro_batches`): the resume is then exact."""
    steps = step_micro_batches(ckpt, config_yaml, was, world)
    return was != world and steps is not None and steps[0] == steps[1]


def same_checkpoint_everywhere(ckpt: Path | None, gather: Callable[[Any], list]) -> None:
    """Refuse a resume where the processes found different checkpoints (a train.out folder per node): each would
    load other weights, or none, and the run would train on mismatched replicas until a collective hangs."""
    found = gather(None if ckpt is None else f"{ckpt.resolve()} (step {_saved_step(ckpt)})")
    if len(set(found)) > 1:
        seen = "; ".join(f"process {rank}: {f or 'no checkpoint'}" for rank, f in enumerate(found))
        raise UserError(
            f"train.resume: the processes found different checkpoints ({seen}); put train.out on storage every "
            "node shares (or copy the run folder to each node), or set train.resume=none"
        )


def open_run(
    out: Path,
    resume: str,
    config_yaml: str,
    main: bool,
    inputs: dict[str, str] | None = None,
    world: int = 1,
    gather: Callable[[Any], list] | None = None,
    write: bool = True,
    schedule: bool = True,
    move: bool = True,
) -> Path | None:
    """Start or resume the run in `out`; returns the checkpoint to load (None: fresh start). `schedule`: the
    recipe's learning rate follows a schedule over the run's length (PPO's is constant: no note on a new length).

    Resume (`train.resume`: auto, force or a checkpoint dir) checks that every process found the same
    checkpoint (`gather`: one value per process, for a run of several) and that `world` processes wrote it,
    then the config (`check_config`) and the weights behind its model/adapter paths (`inputs`, from
    `input_fingerprints`: `check_inputs`); a fresh start moves a previous run's files aside (`set_aside`; with `move`
    false the caller does). The main process then writes config.yaml and inputs.json (`record`; with `write` false
    the caller does, once its data and model are ready: a run refused before changes nothing in `out`).
    """
    ckpt = resume_point(out, resume)
    if gather is not None and world > 1:
        same_checkpoint_everywhere(ckpt, gather)
    if ckpt is not None:
        was = saved_world(saved_state(ckpt))
        steps = step_micro_batches(ckpt, config_yaml, was, world)
        check_world(ckpt, was, world, resume == "force", steps)
        alike = was != world and steps is not None and steps[0] == steps[1]  # grad_accum took up the process change
        forced, changes = check_config(ckpt, config_yaml, resume == "force", {"train.grad_accum"} if alike else set())
        forced_inputs = check_inputs(ckpt, inputs or {}, force=resume == "force")
        if main:
            print(f"resuming from step {_saved_step(ckpt)} (checkpoint {ckpt})")  # the data checks follow
            if alike:
                print(f"note: {ckpt} was written by {was} process(es), this run has {world}, each step taking "
                      f"{steps[1]} micro-batches as there: the same steps")  # fmt: skip
            if schedule and (note := schedule_note(changes)):
                print(note)
            if changed := ", ".join(filter(None, [forced, forced_inputs])):
                print(f"train.resume=force: training on with changed {changed}")
            if was == world and steps is not None and steps[0] != steps[1]:
                print(f"train.resume=force: a step took {steps[0]} micro-batches and now takes {steps[1]} (processes × "
                      "train.grad_accum): the rest of this epoch may train some rows twice and others not at all, "
                      "and the step count follows the new batch")  # fmt: skip
    else:
        refuse_foreign_files(out)  # every process: all of them stop, before anything is loaded or written
        if move:
            set_aside(out, main)
    if write:
        record(out, resume, config_yaml, main, inputs, ckpt)
    return ckpt


def set_aside(out: Path, main: bool) -> None:
    """A fresh run's start: the main process moves a previous run's files in `out` aside, saying where."""
    if main and (moved := move_previous_run(out)) is not None:
        print(f"fresh run in {out}: the previous run's files were moved to {moved}")


def record(
    out: Path, resume: str, config_yaml: str, main: bool, inputs: dict[str, str] | None, ckpt: Path | None
) -> None:
    """config.yaml and (fresh, forced or first recorded) inputs.json of the run `open_run` opened; main process."""
    if main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / CONFIG_FILE, config_yaml)
        if inputs is not None and (ckpt is None or not (out / INPUTS_FILE).exists() or resume == "force"):
            atomic_write_text(out / INPUTS_FILE, json.dumps(inputs, indent=1))
