"""`weitiao pii ...`: find and scrub personal information in training data; make privacy-refusal data.

weitiao pii scan data.jsonl [--json]
weitiao pii scan corpus.jsonl --fields text,meta.notes      # any JSON rows, not only training formats
weitiao pii scrub data.jsonl --mode pseudonym --out clean.jsonl
weitiao pii eval                                            # precision, recall, chars left in clear, held-out set
weitiao pii refusals --n 200 --out runs/pii/refusal_sft.jsonl
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path

import typer
from rich import box
from rich.table import Table

from weitiao import progress
from weitiao.errors import UserError

app = typer.Typer(no_args_is_help=True, help="PII: scan and scrub data files; privacy-refusal SFT/DPO rows.")
console = progress.console()

TYPES_HELP = (
    "comma-separated types to look for (id_card,mobile,bank_card,email,ip,landline,passport,qq,wechat,plate,name,"
    "address)"
)


FIELDS_HELP = (
    "comma-separated field paths to scan, as the report names them (text, meta.notes, messages[].content); "
    "a path covers what is nested under it [every string field]"
)


def _types(types: str | None) -> list[str] | None:
    return [t.strip() for t in types.split(",") if t.strip()] if types else None


def _stem(path: Path) -> str:
    """The name without its data suffix (`.jsonl`, `.json.gz`, ...): chat.2024-05.jsonl → chat.2024-05. Cutting at the
    first dot named chat.2024-05.jsonl and chat.2024-06.jsonl both chat, so one's output replaced the other's."""
    from weitiao.data.files import COMPRESSED, SUFFIXES

    name = path.name
    for group in (COMPRESSED, SUFFIXES):
        if (cut := next((s for s in group if name.lower().endswith(s) and len(name) > len(s)), None)) is not None:
            name = name[: -len(cut)]
    return name


def _confidence(value: float) -> float:
    """--min-confidence is a share: 5 or -1 would silently keep every match or none."""
    if not 0 <= value <= 1:
        raise UserError(f"--min-confidence {value:g}: must be in [0, 1]")
    return value


def _print(reports: list, as_json: bool, action: str) -> None:
    from weitiao.safety.pii import NAMES_NEED_JIEBA, TYPES, _jieba_ok

    if as_json:
        print(json.dumps([asdict(r) for r in reports], ensure_ascii=False, indent=2))
        return
    t = Table(title=f"PII {action}")
    t.add_column("type")
    t.add_column("placeholder")
    for r in reports:
        t.add_column(Path(r.path).name, justify="right")
    for typ, ph in TYPES.items():
        t.add_row(typ, ph, *(f"{r.counts[typ]:,}" for r in reports))
    t.add_row("rows with PII", "", *(f"{r.rows_with_pii:,} / {r.rows:,}" for r in reports), style="bold")
    console.print(t)
    for r in reports:
        if r.low_confidence:
            console.print(
                f"{r.path}: {r.low_confidence} low-confidence matches (Luhn-failing numbers after 卡号, "
                "ID-shaped numbers with a wrong check character)"
            )
        if r.pseudonyms:
            kept = {"scan": "", "scrub (pseudonym)": "; left as they were"}.get(action, "; replaced as well")
            console.print(f"{r.path}: {r.pseudonyms} pseudonyms an earlier `pii scrub --mode pseudonym` wrote (154 "
                          f"mobiles, tagged ID and card numbers, user########@example.com, ...): not PII, not counted"
                          + kept)  # fmt: skip
        if r.retyped and action != "scan":
            shown = ", ".join(f"{k} ×{v}" for k, v in sorted(r.retyped.items()))
            console.print(f"[yellow]note:[/] {r.path}: JSON numbers became strings in the output ({shown}): a masked "
                          "or placeholder value is no number; a reader of these fields must take text (--mode "
                          "pseudonym keeps numbers)")  # fmt: skip
    if not _jieba_ok():
        console.print(f"[yellow]note:[/] {NAMES_NEED_JIEBA}")


@app.command("scan")
def scan_cmd(
    files: list[Path] = typer.Argument(
        ..., help="data files (.jsonl/.json/.parquet): training formats or any JSON rows"
    ),
    types: str = typer.Option(None, help=TYPES_HELP),
    fields: str = typer.Option(None, help=FIELDS_HELP),
    min_confidence: float = typer.Option(0.0, help="drop matches below this confidence (0..1)"),
    examples: int = typer.Option(0, help="print this many matches per file"),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
) -> None:
    """Count PII per type and field in data files; writes nothing."""
    from weitiao.safety.pii_files import process_file

    min_confidence = _confidence(min_confidence)
    reports = [
        process_file(f, None, "placeholder", _types(types), min_confidence, fields=_types(fields)) for f in files
    ]
    _print(reports, as_json, "scan")
    if examples and not as_json:
        for r in reports:
            for e in r.examples[:examples]:
                console.print(f"{r.path}:{e['line']}: {e['field']}: {e['type']} {e['text']!r}")


@app.command("scrub")
def scrub_cmd(
    files: list[Path] = typer.Argument(
        ..., help="data files (.jsonl/.json/.parquet): training formats or any JSON rows"
    ),
    mode: str = typer.Option(
        "placeholder", help="placeholder ([手机号]) | pseudonym (consistent fakes) | mask (138****5678)"
    ),
    out: Path = typer.Option(None, help="output JSONL (one input) or folder (several) [FILE.scrubbed.jsonl beside it]"),
    types: str = typer.Option(None, help=TYPES_HELP),
    fields: str = typer.Option(None, help=FIELDS_HELP),
    min_confidence: float = typer.Option(0.0, help="leave matches below this confidence in place (0..1)"),
    seed: int = typer.Option(None, help="pseudonym seed (--mode pseudonym only) [0]"),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
) -> None:
    """Replace PII field by field, keeping each row's shape; writes JSONL atomically, every output or none."""
    from weitiao.io import claim_outputs, forget, remember
    from weitiao.safety.pii import MODES
    from weitiao.safety.pii_files import process_file

    if mode not in MODES:
        raise UserError(f"--mode {mode!r} unknown; use one of {', '.join(MODES)}")
    if seed is not None and mode != "pseudonym":
        raise UserError(f"--seed {seed}: only --mode pseudonym draws fakes; {mode} replaces without one, drop --seed")
    min_confidence = _confidence(min_confidence)
    if out is not None and len(files) > 1 and out.suffix:
        raise UserError(f"--out {out}: several input files need an output folder, not a file")
    targets = [
        f.with_name(_stem(f) + ".scrubbed.jsonl")
        if out is None
        else out / (_stem(f) + ".scrubbed.jsonl")
        if len(files) > 1
        else out
        for f in files
    ]
    if len({t.resolve() for t in targets}) < len(targets):
        raise UserError(f"{', '.join(map(str, files))}: two inputs would be scrubbed into one file; rename one")
    claim_outputs(targets, files, sources=files if out is None or len(files) > 1 else None)
    reports, pending = [], []  # each file scrubbed to a temp file beside its target; renamed once all passed
    try:
        for f, target in zip(files, targets):
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".pending", dir=target.parent)
            os.close(fd)
            pending.append(Path(tmp))
            try:
                reports.append(process_file(f, pending[-1], mode, _types(types), min_confidence, seed or 0,
                                            _types(fields)))  # fmt: skip
            except UserError as e:  # a write error (disk full) names the file the user asked for
                raise UserError(str(e).replace(tmp, str(target))) from None
    except BaseException:  # a later input failed: no output of this run is left behind, half a folder is no result
        for tmp in pending:
            tmp.unlink(missing_ok=True)
            forget(tmp)
        raise
    for f, tmp, target in zip(files, pending, targets):
        tmp.replace(target)
        forget(tmp)  # atomic_writer recorded the temp name; the ledger names only the output that stands
        remember(target, f)  # the ledger knew the temp name only: a rerun took its own output for the user's
        if not as_json:
            console.print(f"[green]wrote[/] {target}")
    _print(reports, as_json, f"scrub ({mode})")


@app.command("refusals")
def refusals_cmd(
    n: int = typer.Option(200, "--n", help="rows to generate"),
    out: Path = typer.Option(Path("runs/pii/refusal_sft.jsonl"), help="SFT rows (openai messages)"),
    dpo_out: Path = typer.Option(None, help="DPO pairs (prompt/chosen/rejected) [OUT with .dpo.jsonl]"),
    seed: int = typer.Option(0),
) -> None:
    """Privacy-refusal SFT rows and DPO pairs (rejected = leak of a fabricated, checksum-invalid value)."""
    from weitiao.io import claim_outputs, write_jsonl
    from weitiao.safety.pii_files import make_refusals

    if n < 1:
        raise UserError(f"--n {n}: must be at least 1")
    dpo_out = dpo_out or out.with_name(_stem(out) + ".dpo.jsonl")
    if dpo_out.resolve() == out.resolve():
        raise UserError(f"--dpo-out {dpo_out}: the same file as --out; choose another path")
    claim_outputs([out])
    claim_outputs([dpo_out], flag="--dpo-out")  # a refusal names the flag that set the path
    sft, dpo = make_refusals(n, seed)
    write_jsonl(out, sft)
    write_jsonl(dpo_out, dpo)
    console.print(f"[green]wrote[/] {len(sft)} SFT rows → {out}; {len(dpo)} DPO pairs → {dpo_out}")
    distinct = len({json.dumps(r["messages"][:-1], ensure_ascii=False) for r in sft})
    if distinct < len(sft):  # drawn with replacement from templates × names: a repeat weighs more in training
        console.print(f"[yellow]note:[/] {distinct:,} distinct prompts among the {len(sft):,} rows: each is drawn "
                      "from request templates and names, so some repeat (with another reply or leaked value); "
                      "a repeated prompt weighs more in training")  # fmt: skip


@app.command("eval")
def eval_cmd(
    file: Path = typer.Argument(None, help="labelled JSONL (schema in weitiao/safety/pii_eval.py) [the held-out set]"),
    min_confidence: float = typer.Option(0.5, help="a match counts as a prediction at this confidence or above"),
    show: int = typer.Option(0, help="print this many missed or spurious spans"),
    as_json: bool = typer.Option(False, "--json", help="print the scores as JSON"),
) -> None:
    """Span precision, label recall and characters left in clear per PII type on a labelled set (default: the shipped
    held-out Chinese set)."""
    from weitiao.safety.pii import NAMES_NEED_JIEBA, _jieba_ok
    from weitiao.safety.pii_eval import HELD_OUT, load_labelled, match_rule, misses, score

    path = file or HELD_OUT
    min_confidence = _confidence(min_confidence)
    rows = load_labelled(path)
    res = score(rows, min_confidence)

    # a type with no label has no recall (nor characters), and one with no prediction no precision: 1.000 read as a
    # perfect score on a set without bank cards; null in the JSON, "—" in the table
    def defined(v) -> tuple[float | None, float | None, float | None]:
        labels = v.labels_found + v.labels_missed
        return (
            v.span_precision if v.predictions_on_label + v.predictions_on_no_label else None,
            v.label_recall if labels else None,
            v.share_left_in_clear if labels else None,
        )

    if as_json:
        keys = ("span_precision", "label_recall", "share_left_in_clear")
        print(
            json.dumps({t: {"match": match_rule(t)} | dict(zip(keys, defined(v))) | asdict(v) for t, v in res.items()})
        )
        return
    t = Table(
        title=f"PII eval: {path} ({len(rows):,} rows, {sum(not r['spans'] for r in rows):,} without PII)",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    cols = ("type", "match", "span\nprecision", "label\nrecall", "missed\n/labels", "spurious", "chars\nleft in\nclear",
            "chars\nmasked\noutside")  # fmt: skip
    for col in cols:
        t.add_column(col, justify="left" if col in ("type", "match") else "right", no_wrap=True)
    for typ, v in res.items():
        p, r, c = ("—" if x is None else f"{x:.3f}" for x in defined(v))
        clear = "—" if c == "—" else f"{v.chars_left_in_clear:,}/{v.chars_labelled:,}"
        t.add_row(typ, match_rule(typ), p, r, f"{v.labels_missed}/{v.labels_found + v.labels_missed}",
                  str(v.predictions_on_no_label), clear, f"{v.chars_masked_outside_labels:,}")  # fmt: skip
    console.print(t)
    console.print(
        f"span precision: predictions (confidence >= {min_confidence:g}) matching a label / predictions; label recall: "
        "labels matched / labels (match: exact span, or any overlap); chars left in clear: labelled characters no "
        "prediction of any type covers (what `pii scrub` at this --min-confidence leaves readable); chars masked "
        "outside: characters of this type's predictions in no label",
        markup=False,
    )
    for line in misses(rows, min_confidence, show) if show else []:
        console.print(line, markup=False)
    if not _jieba_ok():
        console.print(f"[yellow]note:[/] {NAMES_NEED_JIEBA}")
