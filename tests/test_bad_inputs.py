"""Probe corpus for bad inputs (issue #15): every reader, through the real CLI.

Each probe writes its input files into its own folder and runs `weitiao ARGS` there. A bad input must
give exit code 1, exactly one line on stderr naming the place (file:line, config key or flag), no
traceback, and no new file left in the folder. A BOM probe must succeed. The probes share a few
driver processes (`python -c DRIVER`, calling `weitiao.cli.main` once per probe) so the ~2.5 s
import of torch is paid once per group, not once per probe.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEMO_MODEL = ROOT / "weitiao" / "demo" / "model"

GOOD = b'{"instruction": "hi", "output": "yo"}\n'
BAD_UTF8 = b'{"instruction": "h\xff\xfei", "output": "x"}\n'  # 0xff never occurs in UTF-8
BOM = b"\xef\xbb\xbf"
PAIR = b'{"prompt": "p", "chosen": "a", "rejected": "b"}\n'
PAIR_BAD = b'{"prompt": "p\xff", "chosen": "a", "rejected": "b"}\n'
BATTLE = b'{"model_a": "x", "model_b": "y", "winner": "model_a"}'
CALC_CFG = {
    "model_type": "llama",
    "hidden_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 256,
    "vocab_size": 100,
}
RULES_OK = "rules:\n  - id: r1\n    category: format\n    text: 回答要简短\n"


def yaml_cfg(**sections: dict) -> bytes:
    import yaml

    return yaml.safe_dump(sections, allow_unicode=True).encode()


def sft_cfg(train: str = "x.jsonl", **train_spec) -> bytes:
    return yaml_cfg(model={"path": "demo"}, data={"train": [train]}, train={"out": "out", **train_spec})


def calc_cfg(**kw) -> bytes:
    return json.dumps({**CALC_CFG, **kw}).encode()


@dataclass
class Probe:
    id: str
    argv: list[str]
    files: dict[str, bytes | None] = field(default_factory=dict)  # None = a folder
    expect: str | None = None  # text the one error line must contain; None = must succeed
    enospc: bool = False  # every os.write to a file fails with ENOSPC (a full disk)
    max_s: float | None = None  # wall-clock bound for the probe itself (imports already paid)
    group: str = "main"


PROBES = [
    # 1. invalid UTF-8 in every reader: one line with file:line
    Probe("utf8-sft-jsonl", ["data", "check", "x.jsonl"], {"x.jsonl": GOOD + BAD_UTF8}, "x.jsonl:2"),
    Probe(
        "utf8-sft-json", ["data", "check", "x.json"], {"x.json": b"[\n" + GOOD + b",\n" + BAD_UTF8 + b"]"}, "x.json:4"
    ),
    Probe("utf8-sft-config-data", ["sft", "c.yaml"], {"c.yaml": sft_cfg(), "x.jsonl": BAD_UTF8}, "x.jsonl:1"),
    Probe("utf8-dpo-pairs", ["dpo", "c.yaml"], {"c.yaml": sft_cfg("p.jsonl"), "p.jsonl": PAIR + PAIR_BAD}, "p.jsonl:2"),
    Probe(
        "utf8-ppo-prompts",
        ["ppo", "c.yaml"],
        {
            "c.yaml": yaml_cfg(
                model={"path": "demo"},
                data={"prompts": ["q.jsonl"]},
                train={"out": "out"},
                reward={"kind": "function", "path": "weitiao.recipes.rewards:short_emoji_reward"},
            ),
            "q.jsonl": b'{"prompt": "a"}\n{"prompt": "\xff"}\n',
        },
        "q.jsonl:2",
    ),
    Probe(
        "utf8-eval-prompts",
        ["eval", "gen", "--model", "demo", "--prompts", "q.jsonl"],
        {"q.jsonl": b'{"prompt": "a"}\n\n{"prompt": "\xff"}\n'},
        "q.jsonl:3",
    ),
    Probe(
        "utf8-config-yaml",
        ["sft", "c.yaml"],
        {"c.yaml": b"model:\n  path: demo\ndata:\n  train: [x\xff]\n"},
        "c.yaml:4",
    ),
    Probe(
        "duplicate-key-config-yaml",  # YAML keeps the last `train:`: lr would silently be the default
        ["sft", "c.yaml"],
        {"c.yaml": b"model:\n  path: demo\ntrain:\n  lr: 0.001\ndata:\n  train: [x.jsonl]\ntrain:\n  max_steps: 2\n"},
        "c.yaml:7: duplicate key 'train' (first at line 3)",
    ),
    Probe(
        "duplicate-key-rules-yaml",  # a rule's second `when:` silently replaced the first
        ["rules", "check", "r.yaml"],
        {"r.yaml": RULES_OK.encode() + "    when: 退款\n    when: 退货\n".encode()},
        "r.yaml:6: duplicate key 'when' (first at line 5)",
    ),
    Probe(
        "duplicate-key-log-profile",
        ["logs", "dwell", "--profile", "p.yaml", "--print-sql"],
        {"p.yaml": b"base: zhihu\nfilter:\n  min_views: 3\n  min_views: 5\n"},
        "p.yaml:4: duplicate key 'min_views'",
    ),
    Probe("utf8-rules-yaml", ["rules", "check", "r.yaml"], {"r.yaml": RULES_OK.encode() + b"# \xff\n"}, "r.yaml:5"),
    Probe(
        "utf8-rules-data",
        ["rules", "coverage", "d.jsonl", "--rules", "r.yaml"],
        {"r.yaml": RULES_OK.encode(), "d.jsonl": GOOD + BAD_UTF8},
        "d.jsonl:2",
    ),
    Probe(
        "utf8-log-profile",
        ["logs", "dwell", "--profile", "p.yaml", "--print-sql"],
        {"p.yaml": b"# \xff\nbase: zhihu\n"},
        "p.yaml:1",
    ),
    Probe(
        "utf8-arena-battles",
        ["arena", "import", "b.json", "--db", "a.sqlite"],
        {"b.json": b"[\n" + BATTLE + b",\n" + BATTLE.replace(b'"y"', b'"\xff"') + b"\n]"},
        "b.json:3",
    ),
    Probe(
        "utf8-arena-battles-jsonl",
        ["arena", "rank", "--battles", "b.jsonl"],
        {"b.jsonl": BATTLE + b"\n" + BATTLE.replace(b'"y"', b'"\xff"') + b"\n"},
        "b.jsonl:2",
    ),
    Probe("utf8-pii-scan", ["pii", "scan", "x.jsonl"], {"x.jsonl": GOOD + GOOD + BAD_UTF8}, "x.jsonl:3"),
    Probe(
        "utf8-calc-config",
        ["calc", "lora", "--model", "c5/config.json"],
        {"c5/config.json": calc_cfg()[:-1] + b', "name": "\xff"}'},
        "c5/config.json:1",
    ),
    Probe("utf8-kb-doc", ["data", "kb2sft", "doc.md", "--out", "o"], {"doc.md": b"# t\n\nabc \xff\xff\n"}, "doc.md"),
    Probe(
        "utf8-logs-events",
        ["logs", "dwell", "ev.jsonl", "--out", "o/p.jsonl", "--no-progress"],
        {"ev.jsonl": b'{"user_id": "u", "content_id": "c\xff"}\n'},
        "ev.jsonl",
    ),
    # a UTF-8 BOM (Windows editors) is accepted everywhere
    Probe("bom-jsonl", ["data", "check", "x.jsonl"], {"x.jsonl": BOM + GOOD + GOOD}),
    Probe("bom-json", ["data", "check", "x.json"], {"x.json": BOM + b"[" + GOOD + b"]"}),
    Probe("bom-rules-yaml", ["rules", "check", "r.yaml"], {"r.yaml": BOM + RULES_OK.encode()}),
    Probe(
        "bom-log-profile", ["logs", "dwell", "--profile", "p.yaml", "--print-sql"], {"p.yaml": BOM + b"base: zhihu\n"}
    ),
    Probe(
        "bom-arena-battles",
        ["arena", "rank", "--battles", "b.json"],
        {"b.json": BOM + b"[" + BATTLE + b"," + BATTLE.replace(b'winner": "model_a', b'winner": "model_b') + b"]"},
    ),
    Probe("bom-pii-scan", ["pii", "scan", "x.jsonl"], {"x.jsonl": BOM + GOOD}),
    Probe("bom-calc-config", ["calc", "lora", "--model", "c6/config.json"], {"c6/config.json": BOM + calc_cfg()}),
    # 2. folders named like files, deep nesting, corrupt binary files, outputs in the way, a full disk
    Probe("dir-as-data", ["data", "check", "x.jsonl"], {"x.jsonl": None}, "x.jsonl: is a folder"),
    Probe("dir-as-train", ["sft", "c.yaml"], {"c.yaml": sft_cfg(), "x.jsonl": None}, "x.jsonl: is a folder"),
    Probe("dir-as-config", ["sft", "c.yaml"], {"c.yaml": None}, "c.yaml: is a folder"),
    Probe(
        "deep-json",
        ["data", "check", "x.json"],
        {"x.json": b"[" * 200_000 + b"]" * 200_000},
        "x.json: json: not valid JSON (nested too deeply)",
    ),
    Probe(
        "deep-jsonl",
        ["data", "check", "x.jsonl"],
        {"x.jsonl": b"[" * 200_000 + b"]" * 200_000 + b"\n"},
        "x.jsonl:1: json: not valid JSON (nested too deeply)",
    ),
    Probe(
        "deep-battles", ["arena", "rank", "--battles", "b.json"], {"b.json": b"[" * 200_000 + b"]" * 200_000}, "b.json"
    ),
    Probe("deep-yaml", ["sft", "c.yaml"], {"c.yaml": b"a: " + b"[" * 100_000 + b"]" * 100_000}, "c.yaml"),
    Probe(
        "corrupt-parquet",
        ["data", "check", "x.parquet"],
        {"x.parquet": b"PAR1 not really"},
        "x.parquet: not a readable Parquet file",
    ),
    Probe(
        "corrupt-logs-parquet",
        ["logs", "dwell", "ev.parquet", "--out", "o/p.jsonl", "--no-progress"],
        {"ev.parquet": b"PAR1 garbage"},
        "ev.parquet: cannot read",
    ),
    Probe(
        "dir-as-logs",
        ["logs", "dwell", "ev.jsonl", "--out", "o/p.jsonl", "--no-progress"],
        {"ev.jsonl": None},
        "ev.jsonl: is a folder",
    ),
    Probe(
        "corrupt-safetensors",
        ["chat", "--model", "m", "--prompt", "hi"],
        {"m": None},
        "model.safetensors: weights not readable",
    ),
    Probe(
        "corrupt-safetensors-quant",
        ["calc", "quant", "--model", "m"],
        {"m": None},
        "model.safetensors: not a readable safetensors file",
    ),
    Probe(
        "corrupt-sqlite-rank",
        ["arena", "rank", "--db", "a.sqlite"],
        {"a.sqlite": b"SQLite format 2\0garbage" * 100},
        "a.sqlite: not a readable arena database",
    ),
    Probe(
        "corrupt-sqlite-import",
        ["arena", "import", "b.json", "--db", "a.sqlite"],
        {"b.json": b"[" + BATTLE + b"]", "a.sqlite": b"not a database at all" * 100},
        "a.sqlite: not a readable arena database",
    ),
    Probe(
        "train-out-is-file", ["sft", "c.yaml"], {"c.yaml": sft_cfg(), "x.jsonl": GOOD * 4, "out": b"mine"}, "train.out"
    ),
    Probe(
        "disk-full",
        ["pii", "scrub", "x.jsonl", "--out", "o.jsonl"],
        {"x.jsonl": GOOD},
        "o.jsonl: disk full",
        enospc=True,
    ),
    Probe(
        "disk-full-refusals",
        ["pii", "refusals", "--n", "3", "--out", "r/o.jsonl"],
        {"r": None},
        "r/o.jsonl: disk full",
        enospc=True,
    ),
    # 4. calc: wrong types, zero/negative sizes, terabyte tensors, hidden not divisible by heads
    Probe(
        "calc-config-type",
        ["calc", "lora", "--model", "c0/config.json"],
        {"c0/config.json": calc_cfg(hidden_size="abc")},
        "c0/config.json: hidden_size: expected a positive integer",
    ),
    Probe(
        "calc-config-zero",
        ["calc", "lora", "--model", "c1/config.json"],
        {"c1/config.json": calc_cfg(hidden_size=0)},
        "c1/config.json: hidden_size: must be positive",
    ),
    Probe(
        "calc-config-negative",
        ["calc", "plan", "--model", "c2/config.json"],
        {"c2/config.json": calc_cfg(num_hidden_layers=-2)},
        "c2/config.json: num_hidden_layers: must be positive",
    ),
    Probe(
        "calc-config-indivisible",
        ["calc", "lora", "--model", "c3/config.json"],
        {"c3/config.json": calc_cfg(hidden_size=250, num_attention_heads=3)},
        "c3/config.json: hidden_size 250",
    ),
    Probe(
        "calc-config-not-object",
        ["calc", "lora", "--model", "c4/config.json"],
        {"c4/config.json": b"[1, 2]"},
        "c4/config.json: not an HF config.json",
    ),
    Probe(
        "calc-quant-terabytes",
        ["calc", "quant", "--rows", "1000000", "--cols", "1000000"],
        {},
        "--rows 1000000 --cols 1000000",
    ),
    Probe(
        "calc-lora-indivisible",
        ["calc", "lora", "--layers", "2", "--hidden", "250", "--heads", "3"],
        {},
        "--hidden 250 is not divisible by --heads 3",
    ),
    Probe(
        "calc-lora-negative-heads",
        ["calc", "lora", "--layers", "2", "--hidden", "128", "--heads", "-4"],
        {},
        "--heads -4",
    ),
    # 5. a hub id that is not on disk, offline: fast, one line
    Probe(
        "hub-id-offline-tokenizer",
        ["data", "check", "x.jsonl", "--model", "nobody/not-here"],
        {"x.jsonl": GOOD},
        "nobody/not-here: not a folder and not in the Hugging Face cache (offline)",
        max_s=2.0,
    ),
    Probe(  # was transformers' ValueError traceback "Unrecognized model ... model_type"
        "run-dir-as-model",
        ["eval", "gen", "--model", "runs/sft", "--prompts", "p.jsonl"],
        {"runs/sft/final/adapter/adapter_config.json": b"{}", "p.jsonl": b'{"prompt": "hi"}\n'},
        "runs/sft: a LoRA adapter or training run, not a model; give it as the adapter (--adapter",
    ),
    Probe(
        "empty-dir-as-model",
        ["provenance", "--model", "m", "--prompt", "hi", "--text", "yo"],
        {"m": None},
        "m: no config.json; not a Hugging Face model folder",
    ),
    Probe(
        "hub-id-offline-model",
        ["chat", "--model", "nobody/not-here", "--prompt", "hi"],
        {},
        "nobody/not-here: not a folder and not in the Hugging Face cache (offline)",
        max_s=2.0,
    ),
    Probe(
        "hub-id-offline-calc",
        ["calc", "lora", "--model", "nobody/not-here"],
        {},
        "nobody/not-here: not a folder and not in the Hugging Face cache (offline)",
        max_s=2.0,
    ),
    # 6. YAML configs: syntax, top level, types (line where the YAML gives one)
    Probe("yaml-syntax", ["sft", "c.yaml"], {"c.yaml": b"model:\n  path: demo\ndata: [\n  train: x\n"}, "c.yaml:5"),
    Probe("yaml-top-list", ["sft", "c.yaml"], {"c.yaml": b"# runs\n- model\n- data\n"}, "c.yaml:2: expected a mapping"),
    Probe("yaml-top-scalar", ["dpo", "c.yaml"], {"c.yaml": b"just words\n"}, "c.yaml:1: expected a mapping"),
    Probe(
        "yaml-wrong-type",
        ["sft", "c.yaml"],
        {"c.yaml": b"data:\n  train: [x.jsonl]\n  max_len: lots\n"},
        "c.yaml:3: data.max_len",
    ),
    Probe(
        "yaml-wrong-type-nested",
        ["sft", "c.yaml"],
        {"c.yaml": b"model:\n  path: demo\nlora:\n  r: 8\n  targets: {a: 1}\ndata:\n  train: [x.jsonl]\n"},
        "c.yaml:5: lora.targets",
    ),
    Probe(
        "yaml-override-type",
        ["sft", "c.yaml", "data.max_len=lots"],
        {"c.yaml": sft_cfg()},
        "command line data.max_len=lots: data.max_len",
    ),
    Probe(
        "yaml-bom",
        ["sft", "c.yaml", "data.max_len=lots"],
        {"c.yaml": BOM + sft_cfg()},
        "command line data.max_len=lots: data.max_len",
    ),
    Probe(
        "yaml-log-profile-syntax",
        ["logs", "chat", "--profile", "p.yaml", "--print-sql"],
        {"p.yaml": b"base: chat\nweights: [1,\n"},
        "p.yaml:3",
    ),
    # Empty inputs and prompts beyond the context (exit 0 with empty output / a silent cut before).
    Probe("empty-pii-scrub", ["pii", "scrub", "e.jsonl", "--out", "o.jsonl"], {"e.jsonl": b""}, "e.jsonl: no rows"),
    Probe("empty-arena-import", ["arena", "import", "b.json", "--db", "a.sqlite"], {"b.json": b"[]"}, "no battles"),
    Probe(
        "eval-gen-over-context",
        ["eval", "gen", "--model", str(DEMO_MODEL), "--prompts", "p.jsonl", "--max-new-tokens", "4"],
        {"p.jsonl": json.dumps({"messages": [{"role": "user", "content": "很长的问题" * 400}]}).encode() + b"\n"},
        "p.jsonl:1: prompt is",
    ),
]

DRIVER = r"""
import contextlib, errno, io, json, os, sys, time, traceback
import weitiao.cli

def files(d):
    return {str(p.relative_to(d)) for p in __import__("pathlib").Path(d).rglob("*")}

real_write = os.write
def full_disk(fd, data):
    if fd > 2:
        raise OSError(errno.ENOSPC, "No space left on device")
    return real_write(fd, data)

results = {}
for probe in json.load(sys.stdin):
    os.chdir(probe["dir"])
    before = files(probe["dir"])
    out, err = io.StringIO(), io.StringIO()
    sys.argv = ["weitiao", *probe["argv"]]
    os.write = full_disk if probe["enospc"] else real_write
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            weitiao.cli.main()
            rc = 0
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:
            traceback.print_exc()
            rc = 1
    os.write = real_write
    results[probe["id"]] = {"rc": rc, "stderr": err.getvalue(), "stdout": out.getvalue()[-2000:],
                            "seconds": time.perf_counter() - t0, "new": sorted(files(probe["dir"]) - before)}
print("@@RESULTS@@" + json.dumps(results))
"""


def _make_files(d: Path, probe: Probe) -> None:
    d.mkdir(parents=True)
    for name, data in probe.files.items():
        p = d / name
        if data is None:
            p.mkdir(parents=True)
        else:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
    if probe.id.startswith("corrupt-safetensors"):  # the demo model with its weights cut short
        for f in DEMO_MODEL.iterdir():
            (d / "m" / f.name).write_bytes(f.read_bytes()[:20_000] if f.suffix == ".safetensors" else f.read_bytes())


def run_driver(probes: list[Probe], root: Path, env: dict | None = None, timeout: float = 240) -> dict:
    """Run the probes in one `python -c DRIVER` process; returns results by probe id."""
    spec = []
    for p in probes:
        _make_files(root / p.id, p)
        spec.append({"id": p.id, "argv": p.argv, "dir": str(root / p.id), "enospc": p.enospc})
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.environ.get("WEITIAO_PROBE_PATH", str(ROOT)),
        "COLUMNS": "200",
        **(env or {}),
    }
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=root,
    )
    marker = proc.stdout.rfind("@@RESULTS@@")
    assert marker >= 0, f"driver died (rc {proc.returncode}): {proc.stderr[-3000:]}"
    return json.loads(proc.stdout[marker + len("@@RESULTS@@") :])


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    return run_driver(PROBES, tmp_path_factory.mktemp("probes"))


@pytest.mark.parametrize("probe", PROBES, ids=[p.id for p in PROBES])
def test_probe(probe: Probe, results: dict) -> None:
    r = results[probe.id]
    assert "Traceback" not in r["stderr"], r["stderr"][-3000:]
    if probe.expect is None:
        assert r["rc"] == 0, r["stderr"][-2000:]
        assert not [f for f in r["new"] if f.endswith(".tmp")]
        return
    # transformers' own weight-loading progress bar may precede the error (a model was loaded)
    lines = [x for x in r["stderr"].splitlines() if x.strip() and not x.startswith("Loading weights")]
    assert r["rc"] == 1, (r["rc"], r["stderr"][-2000:], r["stdout"][-500:])
    assert len(lines) == 1, r["stderr"][-2000:]
    assert lines[0].startswith("error: ") and probe.expect in lines[0], lines[0]
    assert r["new"] == [], f"left behind: {r['new']}"
    if probe.max_s is not None:
        assert r["seconds"] < probe.max_s, f"took {r['seconds']:.1f} s"


# ---------------------------------------------------------------------------------------------- one huge row

HUGE_DRIVER = r"""
import json, resource, sys, time
import weitiao.cli
from weitiao.models.load import load_tokenizer
from weitiao.safety.pii import scan

load_tokenizer("demo"), scan("warm up 13812345678")
out = {}
for name, argv in json.loads(sys.argv[1]).items():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    sys.argv, t0 = ["weitiao", *argv], time.perf_counter()
    try:
        weitiao.cli.main()
        rc = 0
    except SystemExit as e:
        rc = e.code
    grew = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024  # MiB (ru_maxrss is KiB)
    out[name] = {"rc": rc, "grew_mib": grew, "seconds": time.perf_counter() - t0}
print("@@RESULTS@@" + json.dumps(out))
"""


def test_huge_row_bounded_memory(tmp_path):
    """A 20 MB row: `data check` rejects it unread (file:line), `pii scan` scans it in windows; RSS grows < 1 GiB.

    Before: data check tokenized the row (4.6 GB peak on 50 MB) and pii scan held several copies and
    ran jieba over the whole text (8.6 GB on 50 MB).
    """
    filler = "x " * 2_000 + "电话 13812345678 "
    big = {"instruction": "问", "output": filler * (20_000_000 // len(filler.encode()))}
    (tmp_path / "big.jsonl").write_text(json.dumps(big, ensure_ascii=False) + "\n" + GOOD.decode() * 3)
    runs = {
        "check": ["data", "check", "big.jsonl", "--skip-invalid", "--json"],
        "pii": ["pii", "scan", "big.jsonl", "--types", "mobile,email", "--json"],
    }
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.environ.get("WEITIAO_PROBE_PATH", str(ROOT))}
    proc = subprocess.run(
        [sys.executable, "-c", HUGE_DRIVER, json.dumps(runs)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    marker = proc.stdout.rfind("@@RESULTS@@")
    assert marker >= 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout[marker + len("@@RESULTS@@") :])
    assert res["check"]["rc"] == 0 and res["pii"]["rc"] == 0, (res, proc.stderr[-2000:])
    rejects = [json.loads(x) for x in (tmp_path / "big.jsonl.rejects.jsonl").read_text().splitlines()]
    assert [r["source"] for r in rejects] == ["big.jsonl:1"] and "data.max_row_bytes" in rejects[0]["error"]
    report = json.loads(proc.stdout[proc.stdout.rfind("\n[") : marker])  # pii scan --json: a list of reports
    assert report[0]["counts"]["mobile"] == 20_000_000 // len(filler.encode())  # every phone in the row found
    for name, r in res.items():
        assert r["grew_mib"] < 1024, f"{name}: RSS grew {r['grew_mib']:.0f} MiB"


# ---------------------------------------------------------------------------------------------- in-process units


def test_pii_scan_windows_equal_whole_text(monkeypatch):
    """Windowed scanning finds what one pass finds, also for entities cut by a window edge."""
    from weitiao.safety import pii

    text = "".join(
        f"{'字' * (i % 37)}电话13812345{i % 10}78，邮箱 a{i}@example.com，身份证11010519491231002X。" for i in range(60)
    )
    whole = pii._scan_window(text, None, 0.0)
    monkeypatch.setattr(pii, "CHUNK", 97)  # many cuts, each through some entity
    assert [(m.type, m.start, m.end) for m in pii.scan(text)] == [(m.type, m.start, m.end) for m in whole]
    monkeypatch.setattr(pii, "CONTEXT", 0)  # negative control: without context an entity cut in two is lost
    assert [(m.type, m.start, m.end) for m in pii.scan(text)] != [(m.type, m.start, m.end) for m in whole]


def test_max_row_bytes_rejects_with_line(tmp_path):
    from weitiao.data.formats import load_rows
    from weitiao.errors import UserError

    f = tmp_path / "d.jsonl"
    f.write_bytes(GOOD + b'{"instruction": "q", "output": "' + b"y" * 500 + b'"}\n' + GOOD)
    res = load_rows(f, skip_invalid=True, max_row_bytes=200)
    assert (res.read, res.kept, res.rejected) == (3, 2, 1)
    rej = json.loads(res.rejects_path.read_text())
    assert rej["source"] == f"{f}:2" and "534 bytes, over the 200-byte limit" in rej["error"] and rej["row"] is None
    with pytest.raises(UserError, match=r"d.jsonl:2: row: 534 bytes"):
        load_rows(f, max_row_bytes=200)
    assert load_rows(f, max_row_bytes=None).kept == 3  # control: no limit, the row loads


def test_max_row_bytes_config_key(tmp_path, tokenizer):
    from weitiao.config import load_config
    from weitiao.errors import UserError
    from weitiao.recipes.dpo import DPOConfig, prepare_pairs
    from weitiao.recipes.sft import SFTConfig, prepare_data

    (tmp_path / "x.jsonl").write_bytes(GOOD + b'{"instruction": "q", "output": "' + b"y" * 300 + b'"}\n')
    (tmp_path / "p.jsonl").write_bytes(PAIR + b'{"prompt": "p", "chosen": "' + b"a" * 300 + b'", "rejected": "b"}\n')
    (tmp_path / "c.yaml").write_bytes(sft_cfg(str(tmp_path / "x.jsonl")))
    (tmp_path / "d.yaml").write_bytes(sft_cfg(str(tmp_path / "p.jsonl")))
    assert len(prepare_data(load_config(SFTConfig, tmp_path / "c.yaml"), tokenizer).train) == 2
    with pytest.raises(UserError, match=r"x.jsonl:2: row: \d+ bytes, over the 100-byte limit"):
        prepare_data(load_config(SFTConfig, tmp_path / "c.yaml", ["data.max_row_bytes=100"]), tokenizer)
    with pytest.raises(UserError, match=r"p.jsonl:2: row: \d+ bytes, over the 100-byte limit"):
        prepare_pairs(load_config(DPOConfig, tmp_path / "d.yaml", ["data.max_row_bytes=100"]), tokenizer)


def test_disk_full_keeps_old_file(tmp_path, monkeypatch):
    import errno

    from weitiao.errors import UserError
    from weitiao.io import atomic_write_text, write_jsonl

    target = tmp_path / "out.jsonl"
    target.write_text("old\n")

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(UserError, match=rf"{target}: disk full"):
        write_jsonl(target, [{"a": 1}])
    with pytest.raises(UserError, match=rf"{target}: disk full"):
        atomic_write_text(target, "new")
    monkeypatch.undo()
    assert target.read_text() == "old\n" and sorted(tmp_path.iterdir()) == [target]  # no temp file left


def test_hub_id_cache_then_offline(tmp_path, monkeypatch):
    """A cached hub id resolves without the network; a missing one fails at once, offline or unreachable."""
    import time

    from huggingface_hub import constants

    from weitiao.errors import UserError
    from weitiao.models.load import resolve_path

    snap = tmp_path / "models--org--tiny" / "snapshots" / "abc"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    (tmp_path / "models--org--tiny" / "refs").mkdir()
    (tmp_path / "models--org--tiny" / "refs" / "main").write_text("abc")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert resolve_path("org/tiny") == "org/tiny"
    with pytest.raises(UserError, match=r"org/other: not a folder and not in the Hugging Face cache \(offline\)"):
        resolve_path("org/other")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens: no network
    t0 = time.perf_counter()
    with pytest.raises(UserError, match=r"\(offline: cannot reach 127.0.0.1\); download it with `huggingface-cli"):
        resolve_path("org/other")
    assert time.perf_counter() - t0 < 2.5
    with pytest.raises(UserError, match=r"no such model folder"):
        resolve_path("./not/a/dir/../x")
