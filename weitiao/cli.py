"""Command line: each command maps to one recipe or tool function; nothing else lives here."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from weitiao import progress
from weitiao.calc.commands import app as calc_app
from weitiao.data.files import MAX_ROW_BYTES
from weitiao.dataeng.commands import register as register_dataeng
from weitiao.errors import UserError
from weitiao.eval.commands import arena_app, eval_app
from weitiao.eval.provenance_cli import provenance
from weitiao.logs.commands import app as logs_app
from weitiao.safety.commands import app as pii_app
from weitiao.safety.injection_rules_commands import injection_app, rules_app

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="weitiao (微调): fine-tune, align, evaluate.",
)
data_app = typer.Typer(
    no_args_is_help=True, help="Training data: check, show, knowledge base → SFT, mix, bad cases, repetition pairs."
)
app.add_typer(data_app, name="data")
app.add_typer(calc_app, name="calc")
app.add_typer(logs_app, name="logs")
app.add_typer(pii_app, name="pii")
app.add_typer(eval_app, name="eval")
app.add_typer(arena_app, name="arena")
register_dataeng(data_app, app)
safety_app = typer.Typer(no_args_is_help=True, help="Safety data and evals: prompt injection (PII: `weitiao pii`).")
safety_app.add_typer(injection_app, name="injection")
app.add_typer(safety_app, name="safety")
app.add_typer(rules_app, name="rules")
app.command("provenance")(provenance)
config_app = typer.Typer(no_args_is_help=True, help="Config files: every key with type, default and description.")
app.add_typer(config_app, name="config")
console = progress.console()


def _config_classes(name: str) -> list[tuple[str, type]]:
    """(title, pydantic class) of a command's config file; imported on demand to keep startup fast."""
    if name == "sft":
        from weitiao.recipes.configs import SFTConfig as cls
    elif name == "dpo":
        from weitiao.recipes.configs import DPOConfig as cls
    elif name == "kto":
        from weitiao.recipes.configs import KTOConfig as cls
    elif name == "rm":
        from weitiao.recipes.configs import RMConfig as cls
    elif name == "ppo":
        from weitiao.recipes.configs import PPOConfig as cls
    elif name == "logs":
        from weitiao.logs.config import ChatConfig, DwellConfig

        how = "--profile NAME | --set key=value"
        return [(f"weitiao logs dwell {how}", DwellConfig), (f"weitiao logs chat {how}", ChatConfig)]
    else:
        raise UserError(f"config show {name!r}: unknown; use one of sft, dpo, kto, rm, ppo, logs")
    return [(f"weitiao {name} CONFIG.yaml [key.path=value ...]", cls)]


def _print_config_help(name: str) -> None:
    from weitiao.config_doc import render

    print("\n".join(render(cls, title) for title, cls in _config_classes(name)), end="")


def _help_config(ctx: typer.Context, value: bool) -> None:
    """--help-config: print the command's config keys and exit before its arguments are checked."""
    if value and not ctx.resilient_parsing:
        _print_config_help(ctx.info_name or "")
        raise typer.Exit()


HELP_CONFIG = typer.Option(
    False, "--help-config", callback=_help_config, is_eager=True, expose_value=False,
    help="print every config key (type, default, description) and exit",
)  # fmt: skip
CONFIG = typer.Argument(..., help="YAML config (examples/demo_<command>.yaml; every key: --help-config)")
OVERRIDES = typer.Argument(None, help="key.path=value overrides, e.g. train.lr=1e-4")


@config_app.command("show")
def config_show(name: str = typer.Argument(..., help="sft, dpo, kto, rm, ppo or logs")) -> None:
    """Every key of a command's config (nested sections as dotted keys) with type, default and description."""
    _print_config_help(name)


def _summary(*parts: Any) -> None:
    """A training run's summary, printed once: by process 0 of a distributed run (torchrun/accelerate set RANK)."""
    if os.environ.get("RANK", "0") == "0":
        for part in parts:
            console.print(part)


@app.command()
def sft(config: Path = CONFIG, overrides: list[str] = OVERRIDES, help_config: bool = HELP_CONFIG) -> None:
    """Supervised fine-tuning: LoRA, QLoRA (model.quant=4bit) or full."""
    from weitiao.config import load_config
    from weitiao.recipes.configs import SFTConfig

    cfg = load_config(SFTConfig, config, overrides or [])  # before the recipe's imports (torch): mistakes said at once
    from weitiao.recipes import sft as recipe

    _summary(recipe.run(cfg))


@app.command()
def dpo(
    config: Path = CONFIG,
    overrides: list[str] = OVERRIDES,
    sweep: str = typer.Option(None, help="run once per value, e.g. beta=0.01,0.1,0.5; writes table + plot"),
    help_config: bool = HELP_CONFIG,
) -> None:
    """Direct preference optimization (sigmoid, ipo, hinge; label smoothing; RPO)."""
    from weitiao.config import load_config
    from weitiao.recipes.configs import DPOConfig

    if sweep:
        from weitiao.recipes import dpo as recipe
        from weitiao.recipes.sweep import sweep as run_sweep

        rows = run_sweep(recipe.DPOConfig, recipe.run, config, overrides or [], sweep)
        from weitiao.recipes.sweep import SOURCES

        what = "; ".join(dict.fromkeys(SOURCES[r["source"]] for r in rows))
        t = Table(title=f"sweep {sweep} · metrics of the {what}")
        cols = [c for c in rows[0] if c != "source"]
        for col in cols:
            t.add_column(col)
        for r in rows:
            t.add_row(*("–" if r[c] is None else f"{r[c]:.4g}" for c in cols))
        _summary(t)  # under torchrun every process runs the sweep: the first prints it
        return
    cfg = load_config(DPOConfig, config, overrides or [])  # before the recipe's imports (torch): mistakes said at once
    from weitiao.recipes import dpo as recipe

    _summary(recipe.run(cfg))


@app.command()
def kto(config: Path = CONFIG, overrides: list[str] = OVERRIDES, help_config: bool = HELP_CONFIG) -> None:
    """KTO on unpaired feedback: replies labelled good or bad (TRL prompt/completion/label, kto_tag)."""
    from weitiao.config import load_config
    from weitiao.recipes.configs import KTOConfig

    cfg = load_config(KTOConfig, config, overrides or [])  # before the recipe's imports (torch): mistakes said at once
    from weitiao.recipes import kto as recipe

    _summary(recipe.run(cfg))


@app.command()
def rm(config: Path = CONFIG, overrides: list[str] = OVERRIDES, help_config: bool = HELP_CONFIG) -> None:
    """Reward model: Bradley–Terry on preference pairs (LoRA or full), for PPO and `score`."""
    from weitiao.config import load_config
    from weitiao.recipes.configs import RMConfig

    cfg = load_config(RMConfig, config, overrides or [])  # before the recipe's imports (torch): mistakes said at once
    from weitiao.recipes import rm as recipe

    _summary(recipe.run(cfg))


@app.command()
def ppo(config: Path = CONFIG, overrides: list[str] = OVERRIDES, help_config: bool = HELP_CONFIG) -> None:
    """PPO (RLHF): actor + reference + critic adapters on one base; reward model, function or HTTP."""
    from weitiao.config import load_config
    from weitiao.recipes.configs import PPOConfig

    cfg = load_config(PPOConfig, config, overrides or [])  # before the recipe's imports (torch): mistakes said at once
    from weitiao.recipes import ppo as recipe

    summary = recipe.run(cfg)
    if "cost" not in summary:  # train.stop_after: the run goes on later; the cost report comes at its end
        _summary(summary)
        return
    cost = summary.pop("cost")
    t = Table(title="PPO cost report", show_header=False)
    for k in (*recipe.PHASES, "total_s", "peak_memory_gib", "steps", "samples"):
        if k in cost:
            t.add_row(k, str(cost[k]))
    t.add_row("models held", ", ".join(f"{k}: {v}" for k, v in cost.get("models_held", {}).items()))
    _summary({k: round(v, 4) if isinstance(v, float) else v for k, v in summary.items()}, t)


@app.command()
def score(
    file: Path = typer.Argument(..., help="rows to score: SFT formats (last reply) or preference pairs"),
    rm: str = typer.Option(..., "--rm", help="reward model dir from `weitiao rm` (its out dir or final/)"),
    out: Path = typer.Option(None, help="output JSONL (default FILE.scores.jsonl)"),
    model: str = typer.Option(None, help="base model for a LoRA reward model (default: the one it was trained on)"),
    quant: str = typer.Option(None, help="load that base as none|4bit|8bit (default: as trained)"),
    skip_invalid: bool = typer.Option(False, help="write bad rows to FILE.rejects.jsonl instead of stopping"),
) -> None:
    """Score replies with a trained reward model; pairs also get accuracy and mean margin."""
    from weitiao.recipes import score as tool

    console.print(tool.run(rm, str(file), str(out) if out else None, model, quant, skip_invalid))


@app.command()
def serve(
    model: str = typer.Option(None, help="base model dir or hub id (default: the adapter's base, else demo)"),
    adapter: list[str] = typer.Option(None, help="run or peft adapter dir; several: NAME=RUN each, picked by `model`"),
    host: str = typer.Option("127.0.0.1", help="bind address (0.0.0.0 to listen on the network)"),
    port: int = typer.Option(8000),
    api_key: str = typer.Option(None, envvar="WEITIAO_API_KEY", help="require Bearer KEY; prefer $WEITIAO_API_KEY"),
    max_batch: int = typer.Option(8, help="choices generated together in one batch"),
    max_queue: int = typer.Option(64, help="waiting requests beyond which the server answers 429"),
    max_new_tokens: int = typer.Option(256, help="default and ceiling for max_tokens"),
    quant: str = typer.Option(None, help="load the base as none|4bit|8bit (default: as the adapter was trained)"),
    template: str = typer.Option("auto", help="chat template: auto, tokenizer, chatml, qwen, llama3, plain"),
    pii: str = typer.Option(None, help="filter replies: redact (placeholders) or block (refuse) PII"),
    screen: str = typer.Option(None, help="prompt-injection input screen: 'default' or a YAML config (off if unset)"),
    max_body_mb: float = typer.Option(8.0, help="request bodies above this many MiB get 413"),
    prefill_chunk: int = typer.Option(512, help="prompt tokens prefilled per step, so long prompts do not stall"),
) -> None:
    """OpenAI-compatible HTTP server: /v1/chat/completions, /v1/completions, /v1/models, /health."""
    output_filter = input_screen = None
    if pii:
        from weitiao.safety.pii import output_filter as pii_filter

        output_filter = pii_filter(pii)
    if screen:
        from weitiao.safety.screen import Screen, load_screen_config

        input_screen = Screen(load_screen_config(screen))
    limits = (max_batch, max_queue, max_new_tokens)
    hooks = {"input_screen": input_screen, "output_filter": output_filter}
    from weitiao.infer import serve as tool  # torch, transformers, fastapi: after --pii and --screen are read

    tool.serve(
        model, adapter, host, port, api_key, *limits, quant, template, **hooks, max_body_mb=max_body_mb,
        prefill_chunk=prefill_chunk,
    )  # fmt: skip


def _read_check_rows(path: Path) -> None:
    """UserError `--check FILE...` for a missing, empty, non-chat or malformed --check file."""
    from weitiao.data.formats import load_conversations
    from weitiao.data.prep import require_rows

    try:
        require_rows(load_conversations(str(path), skip_hint=None))  # export cannot set bad rows aside
    except UserError as e:
        raise UserError(f"--check {e}") from None


@app.command()
def export(
    adapter: str = typer.Option(..., help="run dir (uses final/adapter) or a peft adapter dir"),
    out: Path = typer.Option(..., help="output dir: new, empty, or a previous export (with --force)"),
    merge: bool = typer.Option(False, help="fold the adapter into the (NF4 de-quantized) base weights"),
    dtype: str = typer.Option(None, help="dtype of merged weights (--merge, --for): fp32 (default), bf16, fp16"),
    check: Path = typer.Option(None, help="data file: confirm the exported template gives training's token ids"),
    force: bool = typer.Option(False, help="replace a previous export in --out (never other files)"),
    model: str = typer.Option(None, help="base model to merge into (default: the one the adapter was trained on)"),
    gguf: str = typer.Option(None, help="with --merge, also write model-<type>.gguf (f16 or q8_0) by llama.cpp"),
    for_: str = typer.Option(None, "--for", help="openrlhf or verl: the merged policy or reward model they load"),
) -> None:
    """Export a clean peft adapter dir, or a merged plain HF model with the training chat template."""
    if dtype is not None and not (merge or for_):  # an adapter export copies the adapter's files as saved
        raise UserError(f"--dtype {dtype}: only with --merge (or --for); an adapter export keeps the adapter's weights")
    dtype = dtype or "fp32"
    if for_:
        if merge or model or gguf or check:
            raise UserError("--for writes a merged model itself; drop --merge, --model, --gguf and --check")
        from weitiao.infer import export as tool  # torch: after the flags are checked
        from weitiao.infer.rl_export import export_for

        dest = export_for(for_, adapter, str(out), dtype, force)
        console.print(f"exported for {for_} → {dest}")
        for line in tool.recorded_warnings(dest):  # a policy's: as `export --merge` says them
            console.print(line, markup=False, highlight=False, soft_wrap=True)
        return
    if check:
        _read_check_rows(check)  # before anything is written: a bad FILE must not leave an export behind
    from weitiao.infer import export as tool  # torch: after the flags and --check FILE are checked

    dest = tool.export(adapter, str(out), merge, dtype, force, model, gguf)
    console.print(f"exported → {dest}")
    for line in tool.serve_notes(dest):
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    if check:
        console.print(tool.check(str(dest), adapter, str(check)))


@app.command()
def chat(
    model: str = typer.Option(None, help="base model dir or hub id (default: the adapter's base, else demo)"),
    adapter: str = typer.Option(None, help="run dir or peft adapter dir"),
    prompt: str = typer.Option(None, help="answer this once and exit (for scripts)"),
    system: str = typer.Option(None, help="system message"),
    quant: str = typer.Option(None, help="load the base as none|4bit|8bit (default: as the adapter was trained)"),
    max_new_tokens: int = typer.Option(256),
    temperature: float = typer.Option(None, help="0 = greedy; default: the model's generation_config.json, else 0.7"),
    top_p: float = typer.Option(None, help="default: the model's generation_config.json, else 0.9"),
    repetition_penalty: float = typer.Option(None, help="default: the model's generation_config.json, else 1 (off)"),
    seed: int = typer.Option(None, help="sample reproducibly: same chat + seed, same reply (as serve's seed)"),
) -> None:
    """Chat in the terminal (streaming, history, /reset, /system) or answer one --prompt."""
    from weitiao.eval.gen import check_decoding

    check_decoding(max_new_tokens, temperature, top_p, repetition_penalty)
    if seed is not None and not -(2**63) <= seed < 2**64:  # serve's range for `seed` (torch.manual_seed's)
        raise UserError(f"--seed {seed}: give a whole number from -2**63 to 2**64 - 1")
    from weitiao.infer import chat as tool  # torch: after the flags are checked

    tool.run(model, adapter, prompt, system, max_new_tokens, temperature, top_p, repetition_penalty, quant, seed)


@app.command()
def demo(
    overrides: list[str] = typer.Argument(
        None,
        help="SFT overrides for examples/demo_sft.yaml (e.g. lora.r=8); data.max_len and "
        "train.micro_batch_size apply to DPO too, and the plan shows them",
    ),
    model: str = typer.Option(None, help="your own Hugging Face model folder (default: the shipped tiny model)"),
    out: str = typer.Option("runs/demo", help="run folder: sft/, dpo/, demo_report.json, golden_report.html"),
    serve: bool = typer.Option(False, help="end by serving the tuned model (OpenAI-compatible API)"),
    port: int = typer.Option(8000, help="port for --serve"),
    max_steps: int = typer.Option(None, help="cap SFT and DPO steps (a quick look; the targets need the full run)"),
    limit: int = typer.Option(None, help="measure only the first N ordinary and N red-line held-out prompts"),
) -> None:
    """QLoRA SFT → DPO of a model on Chinese chat + safety data; base/SFT/SFT+DPO table on held-out prompts."""
    from weitiao.recipes import demo as recipe
    from weitiao.recipes.demo_commands import RichView

    recipe.run(model, out, serve, port, max_steps, overrides or [], limit, RichView())


def _choice(flag: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UserError(f"{flag} {value!r}: use one of {', '.join(choices)}")


@data_app.command("check")
def data_check(
    files: list[str] = typer.Argument(
        ..., help="data files, globs or folders (jsonl[.gz|.zst]/json/parquet/arrow/csv); names with --dataset-dir"
    ),
    model: str = typer.Option("demo", help="model dir or hub id whose tokenizer/template to use"),
    template: str = typer.Option("auto", help="auto|tokenizer|chatml|qwen|llama3|plain"),
    max_len: int = typer.Option(1024, help="training max length in tokens"),
    fmt: str = typer.Option(
        "auto", "--format", help="auto|alpaca|sharegpt|openai|firefly|prompt_completion|text|preference|preference_raw"
    ),
    dataset_dir: str = typer.Option(None, help="LLaMA-Factory data folder: FILES are names in its dataset_info.json"),
    skip_invalid: bool = typer.Option(False, help="write bad rows to FILE.rejects.jsonl instead of stopping"),
    max_row_bytes: int = typer.Option(
        MAX_ROW_BYTES, min=1, help="a longer JSONL row is rejected unread (file:line), as data.max_row_bytes"
    ),
    train_turns: str = typer.Option("all", help="all|last: assistant turns SFT trains (data.train_turns)"),
    train_on_prompt: bool = typer.Option(False, help="prompt tokens trained too, as SFT's data.train_on_prompt"),
    train_eot: bool = typer.Option(True, "--train-eot/--no-train-eot", help="as SFT's data.train_eot"),
    truncation: str = typer.Option(
        "drop",
        help="over max_len, as the trainer's data.truncation: SFT drop|cut|history, KTO drop|cut, DPO/RM "
        "drop|cut_response",
    ),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
) -> None:
    """Lint SFT, preference, KTO or text data: format, token lengths, over max_len, duplicates, EOS, pair sanity."""
    from weitiao.data.check import CLI_NAMES, check_file
    from weitiao.models.load import load_tokenizer
    from weitiao.train.loop import model_positions

    _choice("--train-turns", train_turns, ("all", "last"))
    tokenizer, context = load_tokenizer(model), model_positions(model)
    _choice("--truncation", truncation, ("drop", "cut", "history", "cut_response"))
    rep = check_file(files, tokenizer, template, max_len, fmt, skip_invalid, dataset_dir, train_turns, context,
                     truncation, train_on_prompt, train_eot, CLI_NAMES, max_row_bytes)  # fmt: skip
    if as_json:
        print(rep.to_json())
    else:
        _print_check(rep)
    if rep.refused:  # the report first, then the trainer's stop: a check of data training refuses did not pass
        raise UserError(rep.refused)


def _print_check(rep: Any) -> None:
    t = Table(title=f"data check · {', '.join(rep.files)}", show_header=False)
    rows = [
        ("format", rep.format),
        ("template", f"{rep.template} (turn ends with {rep.eot!r})"),
        ("rows read / kept / rejected", f"{rep.read} / {rep.kept} / {rep.rejected}"),
        (
            "tokens min / mean / p95 / max",
            f"{rep.length_min} / {rep.length_mean} / {rep.length_p95} / {rep.length_max}",
        ),
        (f"rows over max_len {rep.max_len}", str(rep.over_max_len)),
        (
            f"dropped / cut / history-trimmed (truncation {rep.truncation})",
            f"{rep.dropped} / {rep.cut} / {rep.history_trimmed}",
        ),  # fmt: skip
        ("duplicate rows / prompts", f"{rep.duplicate_rows} / {rep.duplicate_prompts}"),
        ("rows missing EOS", str(rep.missing_eos)),
        (
            f"rows with no trained token (train_turns {rep.train_turns}{', train_on_prompt' * rep.train_on_prompt}"
            f"{', train_eot false' * (not rep.train_eot)})",
            str(rep.no_trained_tokens),
        ),  # fmt: skip
    ]
    if rep.pairs:
        rows += [
            ("preference pairs (tokens: each side)", str(rep.pairs)),
            ("pairs chosen == rejected", str(rep.identical_pairs)),
            ("empty chosen/rejected replies", str(rep.empty_replies)),
        ]
    if rep.desirable or rep.undesirable:
        ratio = f" (ratio {rep.desirable / rep.undesirable:.2f})" if rep.undesirable else ""
        rows.append(("KTO rows desirable / undesirable", f"{rep.desirable} / {rep.undesirable}{ratio}"))
    if rep.documents:
        rows.append(("raw-text rows (no template, EOS-closed)", str(rep.documents)))
    for k, v in rows:
        t.add_row(k, v)
    console.print(t)
    peak = max(rep.histogram.values(), default=1)
    for bucket, n in rep.histogram.items():
        console.print(f"  {bucket:>10} tokens │{'█' * max(1, round(30 * n / peak))} {n}")
    for n in rep.notes:
        console.print(f"note: {n}", markup=False)
    for p in rep.problems:
        console.print(f"[yellow]warning:[/] {p}")
    if not rep.problems and not rep.refused:
        console.print("[green]no problems found[/]")


@data_app.command("show")
def data_show(
    file: str = typer.Argument(..., help="data file; with --dataset-dir, a dataset name"),
    model: str = typer.Option("demo", help="model dir or hub id whose tokenizer/template to use"),
    index: int = typer.Option(0, help="which row (0-based)"),
    dataset_dir: str = typer.Option(None, help="LLaMA-Factory data folder: FILE is a name in its dataset_info.json"),
    template: str = typer.Option("auto", help="auto|tokenizer|chatml|qwen|llama3|plain"),
    train_on_prompt: bool = typer.Option(False, help="label every token"),
    train_eot: bool = typer.Option(True, "--train-eot/--no-train-eot", help="as SFT's data.train_eot"),
    train_turns: str = typer.Option("all", help="all|last: assistant turns SFT trains (data.train_turns)"),
    last_turn_only: bool = typer.Option(False, hidden=True, help="same as --train-turns last"),
    max_len: int = typer.Option(1024, help="max length in tokens"),
    truncation: str = typer.Option(
        "drop",
        help="over max_len, as the trainer's data.truncation: SFT drop|cut|history, KTO drop|cut, DPO/RM "
        "drop|cut_response",
    ),
    plain: bool = typer.Option(False, help="mark trained text with ⟦ ⟧ instead of colour"),
    fmt: str = typer.Option("auto", "--format", help="as data.format (preference_raw: string pairs as raw text)"),
) -> None:
    """Print one rendered example (a pair: both sides) with trained tokens marked (green/⟦⟧) and masked ones dim."""
    from weitiao.data.chat import Encoded, EncodeOptions
    from weitiao.data.check import drop_reason, refuse_max_len, refuse_truncation, show_row
    from weitiao.data.formats import Document, Feedback, PreferencePair, load_conversations, load_rows
    from weitiao.models.load import load_tokenizer

    _choice("--train-turns", train_turns, ("all", "last"))
    _choice("--truncation", truncation, ("drop", "cut", "history", "cut_response"))
    refuse_max_len(max_len)
    kw = {"skip_hint": None, "dataset_dir": dataset_dir}  # the dataset's column mapping, as training reads it
    loaded = load_rows(file, fmt, feedback=None, **kw)  # type: ignore[arg-type]  # a KTO first row: a KTO file
    if not (loaded.rows and isinstance(loaded.rows[0], (PreferencePair, Feedback))):  # SFT's: chats and raw text
        loaded = load_conversations(file, fmt, allow_text=True, **kw)  # type: ignore[arg-type]
    rows = loaded.rows
    for n in loaded.notes:  # what the read left unread (unmapped LLaMA-Factory columns, ...): why the row looks so
        console.print(f"note: {n}", markup=False, soft_wrap=True)
    if not rows:
        raise UserError(f"{file}: no rows")
    if not 0 <= index < len(rows):
        raise UserError(f"--index {index}: {file} has {len(rows)} rows (0..{len(rows) - 1})")
    row, tok = rows[index], load_tokenizer(model)
    trainer, judged = "SFT", ""
    if isinstance(row, (PreferencePair, Feedback)):
        sft_only = {"--train-on-prompt": train_on_prompt, "--train-turns": train_turns != "all",
                    "--last-turn-only": last_turn_only, "--no-train-eot": not train_eot}  # fmt: skip
        if given := next((k for k, v in sft_only.items() if v), None):
            what = "a pair trains its last reply" if isinstance(row, PreferencePair) else "KTO judges the last reply"
            raise UserError(f"{given}: SFT's; {what}")
    if isinstance(row, PreferencePair):
        refuse_truncation("preference", truncation, "--truncation")
        return _show_pair(row, tok, template, max_len, truncation, plain)
    if isinstance(row, Feedback):  # as `weitiao kto` encodes it: the last reply trained, with its label
        refuse_truncation("KTO", truncation, "--truncation")
        opts = EncodeOptions(max_len, train_turns="last", truncation=truncation)  # type: ignore[arg-type]
        trainer, judged = "KTO", f" · KTO {'desirable' if row.desirable else 'undesirable'}"
        row = row.row
    else:
        refuse_truncation("SFT", truncation, "--truncation")
        opts = EncodeOptions(max_len, train_on_prompt, "last" if last_turn_only else train_turns, truncation, train_eot)
    pieces, segments = show_row(row, tok, template, opts)
    if not pieces:  # what the trainer does to this row, not a fault in the file: said plainly, exit 0
        why = drop_reason(row, tok, template, opts)
        console.print(
            f"{row.source}: {trainer} drops this row (truncation {truncation}): {why}", markup=False, soft_wrap=True
        )
        return
    enc = pieces[0]
    text = Text()
    for s, trained in segments:
        if plain:
            text.append(f"⟦{s}⟧" if trained else s)
        else:
            text.append(s, style="bold black on green" if trained else "dim")
    closing = "EOS" if isinstance(row, Document) else "end-of-turn"  # a raw-text row ends with EOS, no template
    done = {
        "cut": "cut to max_len" + ("" if enc.ends_with_eot else f"; the last reply lost its {closing} token"),
        "history": "oldest exchanges dropped to fit max_len",
    }.get(enc.truncated)
    if len(pieces) > 1:  # a pre-training document over max_len: SFT trains each piece as an example
        enc = Encoded([t for e in pieces for t in e.input_ids], [t for e in pieces for t in e.labels])
        done = f"{len(pieces)} pieces of max_len {max_len}"
    console.print(
        f"[bold]{row.source}[/]  tokens {len(enc)} · trained {enc.n_trained} · masked "
        f"{len(enc) - enc.n_trained}{judged}" + (f"  [yellow]({done})[/]" if done else ""),
        soft_wrap=True,
    )
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def _show_pair(pair: Any, tokenizer: Any, template: str, max_len: int, truncation: str, plain: bool) -> None:
    """`data show` of a preference pair: chosen and rejected as DPO and RM train them with data.truncation
    `truncation`."""
    from weitiao.data.check import show_pair

    sides = show_pair(pair, tokenizer, template, max_len, truncation)
    if isinstance(sides, str):
        console.print(f"{pair.source}: DPO and RM drop this pair (truncation {truncation}): {sides}", markup=False,
                      soft_wrap=True)  # fmt: skip
        return
    for side, enc, segments in sides:
        console.print(f"[bold]{pair.source} {side}[/]  tokens {len(enc)} · trained {enc.n_trained}", soft_wrap=True)
        text = Text()
        for s, trained in segments:
            text.append(
                f"⟦{s}⟧" if plain and trained else s, style="" if plain else "bold black on green" if trained else "dim"
            )
        console.print(text, markup=False, highlight=False, soft_wrap=True)


@app.command()
def ui(
    host: str = typer.Option("127.0.0.1", help="bind address; any other than loopback requires a token"),
    port: int = typer.Option(7860),
    root: list[Path] = typer.Option(None, help="folders the page may pick models/data in (default: cwd); repeatable"),
    runs: Path = typer.Option(None, help="where runs started from the page go (default: ROOT/runs)"),
    token: str = typer.Option(None, envvar="WEITIAO_UI_TOKEN", help="require this token (generated off loopback)"),
) -> None:
    """Web console (zh/en): configure, start and watch runs, chat with and compare checkpoints."""
    from weitiao.ui.app import serve

    serve(host, port, root or [Path.cwd()], runs, token)


def main() -> None:
    from weitiao.train.deepspeed_env import name_cpu_before_deepspeed

    name_cpu_before_deepspeed()  # every command: exports and merges import DeepSpeed too
    try:
        app()
    except UserError as e:
        line = Text("error: ", style="bold red") + Text(str(e))
        say = lambda: Console(stderr=True, soft_wrap=True).print(line)  # noqa: E731
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # under torchrun: once, not once per process
            from weitiao.train.dist import say_once

            say_once(say)
        else:
            say()
        sys.exit(1)  # on every process
    except Exception:
        # Another process stopped on a user error (said once, above), so this one's collective failed ("Connection
        # closed by peer"): its traceback would bury that line. Any other failure keeps its traceback.
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            from weitiao.train.dist import said_elsewhere

            if said_elsewhere():
                sys.exit(1)
        raise


if __name__ == "__main__":
    main()
