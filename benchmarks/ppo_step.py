"""PPO step time on the demo config, phase by phase, for one or more checkouts (#24).

    .venv/bin/python benchmarks/ppo_step.py                                  # this checkout, 4 steps
    git archive 2a5da27 | tar -x -C /tmp/before                              # the code when #24 was filed
    .venv/bin/python benchmarks/ppo_step.py --checkout /tmp/before --checkout . --repeats 2
    .venv/bin/python benchmarks/ppo_step.py --checkout . --checkout ". ppo.critic=separate"   # overrides after a path

Each run is a child process with the checkout first on PYTHONPATH, running that checkout's recipe on its own
examples/demo_ppo.yaml plus the overrides given after its path, if any (`--model` replaces model.path: pass a
copy of the demo model so a rebuild does not change it between runs), `--steps` steps, no saves but the final
one, `--threads` torch threads. The child times the recipe's own functions, so old and new code are cut the same
way: rollout (`generate_ids`), reward (the score function), old log-probs (actor `token_logps` without gradients,
or `actor_logps_values` with `ppo.critic: shared`; 0 with the demo's `ppo.old_logprobs: rollout`, where the
sampler's own come inside the rollout, with the shared critic's values), values (`token_values`
without gradients), reference (reference `token_logps`), advantages (`gae` + `whiten`), update (the
end of the advantages to the β update); `other` is the rest of the steps' wall time (decoding texts, metrics,
the final save). Each phase is timed in wall seconds and in process CPU seconds: with 1 torch thread the CPU
seconds are the work done, which a loaded machine inflates far less than wall time (the CPU table's step is
the sum of the phases). Checkouts alternate over repeats; the tables show each checkout's median. The load
average is printed with each run: on a shared machine compare only runs made back to back.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PHASES = ("rollout", "reward", "old_logp", "values", "reference", "advantages", "update")


def child(a: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(a.threads)
    from weitiao.config import load_config
    from weitiao.losses import ppo as ppo_losses
    from weitiao.recipes import ppo

    def now() -> tuple[float, float]:
        return time.perf_counter(), time.process_time()

    wall, cpu = dict.fromkeys(PHASES, 0.0), dict.fromkeys(PHASES, 0.0)
    mark: dict[str, tuple[float, float]] = {}

    def add(name: str, t0: tuple[float, float]) -> None:
        t1 = now()
        wall[name] += t1[0] - t0[0]
        cpu[name] += t1[1] - t0[1]
        mark["last"] = t1

    def timed(fn, phase):  # phase: a name, or a function of the call's arguments giving one (None: not timed)
        def wrapper(*args, **kw):
            name = phase(*args, **kw) if callable(phase) else phase
            t0 = now()
            try:
                return fn(*args, **kw)
            finally:
                if name:
                    add(name, t0)

        return wrapper

    def scorer(build):
        def wrapper(*args, **kw):
            fn, model = build(*args, **kw)
            return timed(fn, "reward"), model

        return wrapper

    kl_update = ppo_losses.AdaptiveKL.update

    def after_update(self, *args, **kw):  # the first call after the update epochs (step 7)
        add("update", mark["last"])
        return kl_update(self, *args, **kw)

    ppo.generate_ids = timed(ppo.generate_ids, "rollout")
    ppo.build_scorer = scorer(ppo.build_scorer)
    ppo.token_logps = timed(
        ppo.token_logps,
        lambda roles, role, *r, **k: (
            None if torch.is_grad_enabled() else {"actor": "old_logp", "reference": "reference"}[role]
        ),
    )
    no_grad = lambda name: lambda *r, **k: None if torch.is_grad_enabled() else name  # noqa: E731
    if hasattr(ppo, "actor_logps_values"):  # ppo.critic: shared with old_logprobs: recompute (values come with them)
        ppo.actor_logps_values = timed(ppo.actor_logps_values, no_grad("old_logp"))
    ppo.token_values = timed(ppo.token_values, lambda *r, **k: None if torch.is_grad_enabled() else "values")
    ppo_losses.gae = timed(ppo_losses.gae, "advantages")
    ppo_losses.whiten = timed(ppo_losses.whiten, "advantages")  # the last call before the update epochs
    ppo_losses.AdaptiveKL.update = after_update
    over = [f"model.path={a.model}", f"train.max_steps={a.steps}", "train.save_every=0", f"train.out={a.out}"]
    over += ["train.resume=none", "train.progress=false", "train.sample_every=0", "train.tensorboard=false"]
    over += a.set or []
    cfg = load_config(ppo.PPOConfig, str(Path(a.checkout) / "examples/demo_ppo.yaml"), over)
    summary = ppo.run(cfg)
    steps, cost = summary["steps"], summary["cost"]
    res = {k: v / steps for k, v in wall.items()} | {f"cpu_{k}": v / steps for k, v in cpu.items()}
    res["step"] = cost["total_s"] / steps
    res["other"] = res["step"] - sum(res[k] for k in PHASES)
    res["recipe_cost"] = cost
    last = {k.removeprefix("last_train_"): v for k, v in summary.items()}  # the last step's (unprefixed before)
    res["metrics"] = {k: last[k] for k in ("score", "kl", "policy_loss", "value_loss") if k in last}
    print("RESULT " + json.dumps(res))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--checkout",
        action="append",
        help="repository root to run, then overrides of its demo config, e.g. '. ppo.critic=separate' "
        "(repeatable; default: .)",
    )
    ap.add_argument("--model", default="demo", help="model.path (a copy of the demo model keeps runs comparable)")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1, help="torch threads in the child")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--json", help="write every run here")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--set", action="append", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        a.checkout = a.checkout[0]
        return child(a)
    given = [c.split() for c in a.checkout or [str(REPO)]]
    checkouts = [" ".join([str(Path(c[0]).resolve()), *c[1:]]) for c in given]
    runs: dict[str, list[dict]] = {c: [] for c in checkouts}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(a.repeats):
            for label in checkouts:
                c, *overrides = label.split()
                cmd = [sys.executable, __file__, "--child", "--checkout", c, "--model", a.model]
                cmd += [f"--set={x}" for x in overrides]
                cmd += ["--steps", str(a.steps), "--threads", str(a.threads), "--out", f"{tmp}/run{i}"]
                env = {**os.environ, "PYTHONPATH": c, "HF_HUB_OFFLINE": "1", "OMP_WAIT_POLICY": "PASSIVE"}
                load0 = os.getloadavg()[0]
                p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=c)
                if p.returncode != 0:
                    sys.exit(f"{c} failed:\n{p.stdout[-3000:]}\n{p.stderr[-6000:]}")
                res = json.loads([x for x in p.stdout.splitlines() if x.startswith("RESULT ")][-1][7:])
                res["load"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
                runs[label].append(res)
                row = " ".join(f"{k} {res[k]:.3f}/{res['cpu_' + k]:.3f}" for k in PHASES)
                print(f"{label} run {i + 1}: step {res['step']:.3f} s; wall/CPU s: {row}  load {res['load']}")
    cols = (*PHASES, "other")
    print(f"\nseconds per step (median of {a.repeats}), {a.steps} steps, {a.threads} torch thread(s):")
    for kind, pre in (("wall", ""), ("process CPU", "cpu_")):
        print(f"\n{kind}:\n| checkout | step | " + " | ".join(cols) + " | load 1 min |")
        print("|---" * (len(cols) + 3) + "|")
        for c, rs in runs.items():
            for r in rs:
                r["cpu_step"] = sum(r["cpu_" + k] for k in PHASES)
                r["cpu_other"] = float("nan")  # not measured in CPU time
            med = {k: statistics.median(r[pre + k] for r in rs) for k in ("step", *cols)}
            loads = f"{min(r['load'][0] for r in rs)}–{max(r['load'][1] for r in rs)}"
            print(f"| {c} | {med['step']:.2f} | " + " | ".join(f"{med[k]:.2f}" for k in cols) + f" | {loads} |")
    if a.json:
        Path(a.json).write_text(json.dumps(runs, indent=1))


if __name__ == "__main__":
    main()
