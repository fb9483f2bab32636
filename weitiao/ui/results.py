"""Results of console runs beyond chat: the golden-set report over chosen checkpoints, and blind-vote arenas.

Golden: `weitiao eval golden` (weitiao.eval.golden) restricted to the chosen checkpoints' steps, its HTML report
written to RUNS/<run>/golden_report.html. Arena: the chosen checkpoints answer a prompt file (sampled, as
`weitiao arena serve --models`), the answers go to RUNS/_arena/<id>/arena.sqlite and the vote page
(weitiao.eval.arena) is mounted at /arena/<id>/ inside the console, behind its token. `_arena` cannot be a
run name (names start with a letter or digit), so arenas and runs never share a folder.
"""

from __future__ import annotations

import re
import secrets
import time
from pathlib import Path

from weitiao.errors import UserError
from weitiao.ui.chat import load_weights
from weitiao.ui.runs import RunStore

ARENA_ID = re.compile(r"\d{8}-\d{6}-[0-9a-f]{4}")


def _steps(runs: RunStore, name: str, ckpts: list[str]) -> set[int]:
    """Training steps of the chosen checkpoints ('final' = the step the run ended at)."""
    steps = set()
    for c in ckpts:
        runs.weights(name, c)  # only listed names pass
        if c == "base":
            raise UserError("golden: the base model has no checkpoint in the run; choose step-N or final")
        if c == "final":
            done = [r["step"] for r in runs.metrics(name)[0] if r.get("kind") == "done"]
            if not done:
                raise UserError(f"run {name}: final/ exists but metrics.jsonl has no done row")
            steps.add(done[-1])
        else:
            steps.add(int(c.split("-")[1]))
    return steps


def golden(runs: RunStore, name: str, ckpts: list[str], prompts: Path, max_new_tokens: int = 64) -> dict:
    """Answer the golden prompts with each chosen checkpoint; the report's address and one row per checkpoint,
    the one with the best ROUGE-L recommended (none when no prompt has a reference answer)."""
    from weitiao.eval.golden import golden_report, load_prompts

    if not ckpts:
        raise UserError("golden: choose at least one checkpoint")
    select = "rougeL" if any(p.reference is not None for p in load_prompts(prompts)) else None
    path, res = golden_report(runs.existing(name), prompts, select, max_new_tokens, steps=_steps(runs, name, ckpts))
    rows = [{"label": res.labels[s], "step": s, "recommended": s == res.recommended,
             **{k: v for k, v in res.summary[s].items() if k in ("rougeL", "stop_rate", "loop_rate", "eval_loss")}}
            for s in res.steps]  # fmt: skip
    return {"report": f"/api/runs/{name}/{path.name}", "rows": rows}


class Arenas:
    """Arena folders under RUNS/_arena/; `app_for` gives each its vote app (built once)."""

    def __init__(self, runs: RunStore):
        self.runs = runs
        self.root = runs.root / "_arena"

    def ids(self) -> list[str]:
        found = self.root.glob("*/arena.sqlite") if self.root.is_dir() else []
        return sorted((p.parent.name for p in found if ARENA_ID.fullmatch(p.parent.name)), reverse=True)

    def list(self) -> list[dict]:
        from weitiao.eval.arena.store import ArenaStore

        out = []
        for i in self.ids():
            store = ArenaStore(self.root / i / "arena.sqlite", create=False)
            out.append({"id": i, "url": f"/arena/{i}/", "models": store.models(), "votes": len(store.votes())})
        return out

    def create(self, entries: list[str], prompts: Path, max_new_tokens: int = 64) -> dict:
        """`entries` are 'run/checkpoint' (at least two): each answers every prompt once."""
        from weitiao.eval.arena.store import ArenaStore, answer_rows, arena_prompts

        if len(set(entries)) < 2 or not all(isinstance(e, str) and "/" in e for e in entries):
            raise UserError("arena: choose at least two different checkpoints (run/checkpoint)")
        chosen = []
        for e in dict.fromkeys(entries):
            name, ckpt = e.split("/", 1)
            weights = self.runs.weights(name, ckpt)
            chosen.append((e, self.runs.base_model(name), weights))
        ps = arena_prompts(prompts)
        rows = []
        for label, base, weights in chosen:
            model, tok = load_weights(base, weights)
            rows += answer_rows(label, model.eval(), tok, ps, max_new_tokens)
        arena_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
        folder = self.root / arena_id
        folder.mkdir(parents=True)
        store = ArenaStore(folder / "arena.sqlite")
        store.serve_answers(rows)
        return {"id": arena_id, "url": f"/arena/{arena_id}/", "models": store.models(), "votes": 0}

    def app_for(self, arena_id: str):  # -> FastAPI
        from weitiao.eval.arena.app import create_app
        from weitiao.eval.arena.store import ArenaStore

        return create_app(ArenaStore(self.root / arena_id / "arena.sqlite", create=False))
