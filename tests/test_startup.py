"""CLI startup: `--help` and the mistakes that need no model are answered without importing torch & co.

`weitiao sft missing.yaml` took 7.4 s to say the file is missing: `import weitiao.cli` imported torch
(calc.quant, eval.golden → train.checkpoint, provenance) and numpy, `main()` asked torch about CUDA for
DeepSpeed, and each recipe imported torch/transformers/peft before reading its config. Heavy libraries are
now imported by the code paths that use them; these tests run in a fresh interpreter (the suite has torch loaded).
"""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Libraries only a model, a tokenizer, a log query or a metric needs; `--help` and a config mistake import none.
HEAVY = ("torch", "transformers", "peft", "accelerate", "deepspeed", "bitsandbytes", "trl", "safetensors",
         "tokenizers", "datasets", "duckdb", "pyspark", "jieba", "pandas", "pyarrow", "sklearn", "fastapi",
         "numpy")  # fmt: skip


# A driver's run(args): the CLI in-process, its exit code and first line of output (in the subprocess codes below)
RUN = """
def run(args):
    sys.argv, out, err = ["weitiao", *args], io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            cli.main()
            code = 0
        except SystemExit as e:
            code = e.code or 0
    return [code, (err.getvalue() or out.getvalue()).strip().splitlines()[:1]]
"""


def fresh(code: str) -> dict:
    """Run `code` in a new interpreter; it prints one JSON line last."""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.splitlines()[-1])


LOADED = f"sorted(m for m in {HEAVY!r} if m in sys.modules)"


def test_importing_the_cli_imports_no_heavy_library():
    assert fresh(f"import json, sys\nimport weitiao.cli\nprint(json.dumps({LOADED}))") == []


def test_help_and_config_mistakes_import_no_heavy_library(tmp_path):
    """Every command's --help (found by walking the CLI), a missing config file, an unknown key, an unknown flag and
    flags a command checks itself: each answered as before (exit code, first line), with none of HEAVY imported."""
    (tmp_path / "bad.yaml").write_text("model:\n  path: demo\ndata:\n  train: [x.jsonl]\n  formt: alpaca\n")
    code = f"""
import contextlib, io, json, sys
from typer.main import get_command
from weitiao import cli

def walk(cmd, path):
    yield path
    for name, sub in getattr(cmd, "commands", {{}}).items():
        yield from walk(sub, [*path, name])

{RUN}
helps = {{" ".join(p): run([*p, "--help"])[0] for p in walk(get_command(cli.app), [])}}
bad = {str(tmp_path / "bad.yaml")!r}
errors = {{c: run([c, "missing.yaml"]) for c in ("sft", "dpo", "kto", "rm", "ppo")}}
errors.update(key=run(["sft", bad]), flag=run(["dpo", "--bogus", bad]), show=run(["config", "show", "sft"])[:1])
flags = [["chat", "--temperature", "-1"], ["export", "--adapter", "a", "--out", "b", "--dtype", "bf16"],
         ["export", "--adapter", "a", "--out", "b", "--for", "verl", "--merge"], ["serve", "--pii", "bogus"]]
errors.update(checked=[run(f) for f in flags])
print(json.dumps({{"helps": helps, "errors": errors, "loaded": {LOADED}}}))
"""
    got = fresh(code)
    assert len(got["helps"]) > 50 and set(got["helps"].values()) == {0}, got["helps"]
    assert {k: got["errors"][k] for k in ("sft", "dpo", "kto", "rm", "ppo")} == {
        c: [1, ["error: missing.yaml: config file not found"]] for c in ("sft", "dpo", "kto", "rm", "ppo")
    }
    assert got["errors"]["key"] == [
        1, [f"error: {tmp_path / 'bad.yaml'}:5: data.formt: Extra inputs are not permitted; did you mean data.format?"]
    ]  # fmt: skip
    assert got["errors"]["flag"][0] == 2 and got["errors"]["show"] == [0]
    assert got["errors"]["checked"] == [  # flags a command checks itself, before it imports the model code
        [1, ["error: --temperature -1.0: must be >= 0 (0 = greedy)"]],
        [1, ["error: --dtype bf16: only with --merge (or --for); an adapter export keeps the adapter's weights"]],
        [1, ["error: --for writes a merged model itself; drop --merge, --model, --gguf and --check"]],
        [1, ["error: --pii 'bogus' unknown; use redact or block"]],
    ]
    assert got["loaded"] == []


def test_score_demo_and_ui_mistakes_are_said_before_torch_loads(tmp_path):
    """`weitiao score` with a missing data file or --rm, `weitiao demo` with a bad flag, override or --model, and
    `weitiao ui` with a bad --root or --port imported torch (and transformers) first: 1.4-5 s to print one line
    (`ui --port 99999` ended in an OverflowError traceback, `demo --serve --port 99999` only after the whole demo).
    Each is one line now, with neither imported."""
    (tmp_path / "pairs.jsonl").write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n')
    (tmp_path / "folder").mkdir()
    code = f"""
import contextlib, io, json, os, sys
from weitiao import cli

{RUN}
os.chdir({str(tmp_path)!r})
cases = [["score", "missing.jsonl", "--rm", "folder"], ["score", "pairs.jsonl", "--rm", "nowhere"],
         ["score", "pairs.jsonl", "--rm", "folder"], ["score", "pairs.jsonl", "--rm", "folder", "--quant", "3bit"],
         ["demo", "--max-steps", "0"], ["demo", "--limit", "0"], ["demo", "--model", "./nowhere"],
         ["demo", "train.max_steps=5"], ["demo", "lora.rr=8"], ["demo", "--serve", "--port", "99999"],
         ["ui", "--root", "nowhere"], ["ui", "--port", "99999"]]
got = [run(c) for c in cases]
print(json.dumps({{"got": got, "loaded": sorted(m for m in ("torch", "transformers", "peft") if m in sys.modules)}}))
"""
    got = fresh(code)
    assert got["got"] == [
        [1, ["error: missing.jsonl: file not found"]],
        [1, ["error: --rm nowhere: no such file or folder; give a `weitiao rm` output dir"]],
        [1, ["error: --rm folder: not a reward model dir (no reward_model.json); train one with `weitiao rm`"]],
        [1, ["error: --quant 3bit: choose none, 4bit or 8bit"]],
        [1, ["error: --max-steps 0: must be at least 1"]],
        [1, ["error: --limit 0: must be at least 1"]],
        [1, ["error: ./nowhere: no such model folder (and not a Hugging Face hub id)"]],
        [1, ["error: override train.max_steps=5: the demo sets train.max_steps itself; use --max-steps N"]],
        [
            1,
            [
                "error: command line lora.rr=8: lora.rr: Extra inputs are not permitted; lora takes enabled, r, alpha, "
                "dropout, targets, dora, rslora, modules_to_save, init_from"
            ],
        ],
        [1, ["error: --port 99999: give a TCP port from 1 to 65535 (0: any free port)"]],
        [1, [f"error: --root {tmp_path / 'nowhere'}: not a folder"]],
        [1, ["error: --port 99999: give a TCP port from 1 to 65535 (0: any free port)"]],
    ]
    assert got["loaded"] == []
