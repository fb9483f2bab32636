"""The CLI maps commands to typed functions: settings are declared once, in their domain dataclass."""

from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from weitiao.calc.commands import app as calc_app
from weitiao.calc.lora import LoraInput
from weitiao.calc.plan import PlanInput
from weitiao.errors import UserError
from weitiao.eval.gen import GenSettings

PKG = Path(__file__).resolve().parents[1] / "weitiao"
# modules that may talk to the terminal with rich/typer: the CLI layer and the shared progress display
TERMINAL = {"cli.py", "cli_options.py", "progress.py"}
KNOWN_TERMINAL: set[str] = set()  # no module outside the CLI layer prints with rich


def _params(path: Path, func: str) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    fn = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == func)
    return {a.arg for a in fn.args.args + fn.args.kwonlyargs}


@pytest.mark.parametrize(
    "path, func, cls",
    [
        ("calc/commands.py", "plan", PlanInput),
        ("calc/commands.py", "lora", LoraInput),
        ("eval/commands.py", "gen", GenSettings),
    ],
)
def test_commands_do_not_redeclare_their_settings(path, func, cls):
    """Before: `calc plan` re-declared PlanInput's 19 fields as typer options (and `eval gen` its 7)."""
    fields = {f.name for f in dataclasses.fields(cls)}
    assert not _params(PKG / path, func) & fields


def test_plan_flags_are_generated_from_plan_input():
    runner = CliRunner()
    shown = runner.invoke(calc_app, ["plan", "--help"], env={"COLUMNS": "200"}).output
    for f in dataclasses.fields(PlanInput):
        assert f"--{f.name.replace('_', '-')}" in shown, f.name
    assert "--no-checkpointing" in shown and "Rows per GPU per forward pass." in shown  # help = field docstring
    res = runner.invoke(
        calc_app, ["plan", "--method", "lora", "-r", "8", "--epochs", "2", "--no-checkpointing", "--json"]
    )
    inputs = json.loads(res.output)["inputs"]
    assert (inputs["method"], inputs["r"], inputs["epochs"], inputs["checkpointing"]) == ("lora", 8, [2.0, 2.0], False)


def test_settings_check_themselves_without_the_cli():
    with pytest.raises(UserError, match="--method dpo: expected one of full, lora, qlora"):
        PlanInput(method="dpo")
    with pytest.raises(UserError, match="--gpu tpu: unknown"):
        PlanInput(gpu="tpu")
    with pytest.raises(UserError, match="--repetition-penalty 0"):
        GenSettings(repetition_penalty=0)


def test_rich_and_typer_stay_in_the_cli():
    bad = []
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG).as_posix()
        if rel in TERMINAL | KNOWN_TERMINAL or path.stem == "commands" or path.stem.endswith(("_commands", "_cli")):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            bad += [f"{rel}:{node.lineno}: {n}" for n in names if n.split(".")[0] in ("rich", "typer")]
    assert not bad, "\n".join(bad)


def test_rules_sft_and_dpo_share_one_settings_class():
    """`rules sft` and `rules dpo` take TeacherRows' fields as flags; a field without a default is required."""
    from weitiao.safety.injection_rules_commands import TeacherRows, rules_app

    runner = CliRunner()
    for cmd in ("sft", "dpo"):
        shown = runner.invoke(rules_app, [cmd, "--help"], env={"COLUMNS": "200"}).output
        for f in dataclasses.fields(TeacherRows):
            assert f"--{f.name.replace('_', '-')}" in shown, (cmd, f.name)
        r = runner.invoke(rules_app, [cmd, "--prompts", "p.jsonl", "--out", "o.jsonl"])
        assert r.exit_code == 2 and "Missing option '--rules'" in r.output
