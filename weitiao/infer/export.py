"""`weitiao export`: a trained adapter → a clean peft adapter dir, or a merged plain HF model.

Merging folds W + (alpha/r)·B·A (peft's merge, so DoRA/rsLoRA scaling is right) into weights
that are first de-quantized when the base was trained quantized (NF4 in 4 bit, LLM.int8 in 8 bit):
the adapter learned to correct the de-quantized weights, so merging into the original full-precision
weights would give a different model. On a base with tied embeddings an adapter on embed_tokens is merged after lm_head
gets its own copy of the original weight, as in training (untie_adapted_embedding). Either export
carries what other tools need to behave as training did (models.portable): the training chat
template in the tokenizer, generation_config.json stopping at the template's end-of-turn, files
transformers 4.x reads. `--check FILE` tokenizes training rows
with plain transformers on the export and compares them with training's token ids.
"""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path
from typing import Any

import torch

from weitiao.config import EXPORT_MARKER, INPUTS_FILE
from weitiao.data.chat import EncodeOptions, encode
from weitiao.data.formats import load_conversations
from weitiao.data.templates import resolve_template
from weitiao.errors import UserError
from weitiao.infer import gguf as to_gguf
from weitiao.io import atomic_write_text, publish_dir
from weitiao.models.continued import recorded_inputs
from weitiao.models.digest import local_model
from weitiao.models.load import (
    DTYPES,
    ModelSpec,
    attach_adapter,
    load_model,
    load_tokenizer,
    locate,
    refuse_reward_adapter,
    resolve_path,
    split_difference,
    training_tokenizer,
)
from weitiao.models.portable import legacy_config_keys, save_tokenizer, stop_ids, write_generation_config
from weitiao.train.checkpoint import fingerprint

QUANT_KINDS = {"4bit": "4-bit NF4", "8bit": "8-bit LLM.int8"}  # model.quant → what the notes call the base
MARKER = EXPORT_MARKER  # written into every export: only such a dir may be replaced (--force)


def dequantized_base(spec: ModelSpec) -> Any:
    """The base as a plain fp32 model whose weights equal what training saw: each quantized linear's weight
    de-quantized (NF4 for 4 bit; for 8 bit LLM.int8's int8 rows × their absmax / 127, the weight its matmul uses)."""
    plain = load_model(spec.model_copy(update={"quant": "none", "dtype": "fp32"}))
    if spec.quant == "none":
        return plain
    import bitsandbytes as bnb

    quant = load_model(spec.model_copy(update={"dtype": "fp32"}))
    modules = dict(plain.named_modules())
    with torch.no_grad():
        for name, m in quant.named_modules():
            if isinstance(m, bnb.nn.Linear4bit):
                w = bnb.functional.dequantize_4bit(m.weight.data, m.weight.quant_state)
            elif isinstance(m, bnb.nn.Linear8bitLt):
                w = bnb.functional.int8_vectorwise_dequant(m.weight.data, m.weight.SCB)
            else:
                continue
            modules[name].weight.copy_(w.reshape(modules[name].weight.shape).float())
    return plain


def untie_adapted_embedding(model: Any) -> Any:
    """Give lm_head its own copy of a tied input embedding weight that the adapter changes.

    Training left lm_head's weight as it was (or adapted it on its own, peft's ensure_weight_tying);
    merging into the shared weight would change the output head too (or fold the delta in twice).
    """
    base = model.get_base_model()
    emb, head = base.get_input_embeddings(), base.get_output_embeddings()
    if head is None or isinstance(emb, torch.nn.Embedding):
        return model  # the adapter does not touch the input embedding

    def inner(m: Any) -> Any:  # the module peft wrapped: a LoRA layer's base, modules_to_save's original
        return m.get_base_layer() if hasattr(m, "get_base_layer") else getattr(m, "original_module", m)

    head = inner(head)
    if head.weight is not inner(emb).weight:
        return model
    head.weight = torch.nn.Parameter(head.weight.detach().clone(), requires_grad=False)
    base.config.get_text_config().tie_word_embeddings = False
    base.config.tie_word_embeddings = False
    if hasattr(base, "all_tied_weights_keys"):  # transformers 5 keeps the tied pairs it found at load time
        base.all_tied_weights_keys = {}
    return model


def _files(root: Path) -> set[str]:
    return {str(f.relative_to(root)) for f in root.rglob("*") if f.is_file() or f.is_symlink()}


def check_out(dest: Path, adapter_dir: Path, force: bool) -> bool:
    """Refuse an --out that export must not replace; True when it holds a previous export to replace.

    Only what export made may go: a dir with our marker whose files are all listed in it (--force),
    or an empty dir. Never a symlink, a file, the current dir, the adapter dir or what contains it (its run).
    """
    where = f"--out {dest}"
    if dest.is_symlink():
        raise UserError(f"{where}: is a symlink; give the real directory path")
    if dest.exists() and not dest.is_dir():
        raise UserError(f"{where}: is a file, not a directory; choose a new directory")
    real, run = dest.resolve(), adapter_dir.resolve()
    for inside, what in ((Path.cwd(), "the current directory"), (run, f"the adapter dir {adapter_dir}")):
        if inside == real or real in inside.parents:
            raise UserError(f"{where}: is {what} or contains it; choose a new directory")
    if run in real.parents:
        raise UserError(f"{where}: is inside the adapter dir {adapter_dir}; choose a directory outside it")
    if not dest.exists() or not any(dest.iterdir()):
        return False
    marker = dest / MARKER
    if not marker.is_file():
        raise UserError(f"{where}: not empty and not a weitiao export; choose a new or empty directory")
    if not force:
        raise UserError(f"{where}: holds a previous export; --force replaces it")
    try:
        ours = set(json.loads(marker.read_text(encoding="utf-8"))["files"]) | {MARKER}
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{where}: {MARKER} is damaged; remove the directory yourself") from None
    extra = sorted(_files(dest) - ours)
    if extra:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise UserError(f"{where}: holds {extra[0]}{more} that export did not write; move them out or choose a "
                        "new directory")  # fmt: skip
    return True


def copy_adapter(adapter_dir: Path, dest: Path) -> None:
    """Copy the adapter dir's files; a symlink leading outside the dir is refused (it would copy that file)."""
    root = adapter_dir.resolve()
    for f in sorted(adapter_dir.rglob("*")):
        if f.is_symlink() and root not in f.resolve().parents:
            raise UserError(
                f"--adapter {adapter_dir}: {f.relative_to(adapter_dir)} links to {f.resolve()} outside the adapter "
                "dir; export copies only files inside it (replace the link with the file)"
            )
    shutil.copytree(adapter_dir, dest, dirs_exist_ok=True)


def export(
    adapter: str,
    out: str,
    merge: bool = False,
    dtype: str = "fp32",
    force: bool = False,
    model: str | None = None,
    gguf: str | None = None,
) -> Path:
    """Write the export to `out`: built in a fresh temp dir beside it, renamed into place when complete.

    `out` must be new, empty, or (with `force`) a previous export (see check_out); a failure at any
    point leaves `out` as it was and no temp dir behind. `model` replaces the recorded base.
    """
    if dtype not in ("fp32", "bf16", "fp16"):
        raise UserError(f"--dtype {dtype}: choose fp32, bf16 or fp16")
    if gguf is not None:
        to_gguf.check_request(gguf, merge)
    if (full := full_finetune(adapter)) is not None:
        return export_full(full, Path(out), dtype, force, model, gguf)
    adapter_dir, tok_dir, spec = locate(adapter)
    refuse_reward_adapter(adapter_dir)  # merged into a causal LM, the trained score head would be dropped
    spec = spec.model_copy(update={"path": model}) if model else spec
    changed = check_trained_base(adapter_dir, spec.path, "--model" if model else "the base", merge)
    dest = Path(out)
    replace = check_out(dest, adapter_dir, force)
    tokenizer = training_tokenizer(adapter_dir, tok_dir, spec.path)
    template = resolve_template(tokenizer, "auto")  # a run's tokenizer carries the training template
    unread = beyond_embedding(tokenizer, embedding_rows(spec.path), gguf)

    def fill(tmp: Path) -> dict[str, Any]:
        gen = _generation_config(adapter_dir, spec.path, named=model is not None)  # merged or not: the same one
        if merge:
            adapted = untie_adapted_embedding(attach_adapter(dequantized_base(spec), adapter_dir, spec.path))
            merged = adapted.merge_and_unload()
            merged = merged.to(DTYPES[dtype])
            merged.config.use_cache = True
            merged.save_pretrained(tmp, safe_serialization=True)
            legacy_config_keys(tmp)
        else:
            copy_adapter(adapter_dir, tmp)
            # the run's record of its base, so chat, serve and lora.init_from given the export compare bases as
            # they do given the run; not with --model another base, which the record does not describe
            _, recorded = recorded_inputs(adapter_dir)
            base_record = {k: v for k, v in recorded.items() if k.split(" ")[0] == "model.path"}
            if base_record and (model is None or changed is None):
                atomic_write_text(tmp / INPUTS_FILE, json.dumps(base_record, indent=1))
            if model:  # peft, vLLM and AutoPeftModel load the base the adapter names: the one asked for
                cfg_file = tmp / "adapter_config.json"
                cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
                cfg_file.write_text(json.dumps({**cfg, "base_model_name_or_path": model}, indent=2), encoding="utf-8")
        stops = stop_ids(tokenizer, template, gen.eos_token_id if gen else None)
        write_generation_config(tmp, gen, stops)
        save_tokenizer(tokenizer, template, tmp)
        if gguf is not None:
            to_gguf.convert(tmp, tmp / f"model-{gguf}.gguf", gguf, name=dest.name, stops=stops)
        info = {"adapter": str(adapter_dir.resolve()), "base": spec.path, "quant": spec.quant, "merged": merge}
        # in the export's record, so that every caller shows them with its notes (`serve_notes`): the console too
        warnings = [*([f"warning: {changed}"] if changed else []), *([unread] if unread else [])]
        return {**info, "dtype": dtype if merge else None, "warnings": warnings}

    return publish(dest, replace, fill)


def embedding_rows(model: str) -> int | None:
    """The vocabulary size (embedding rows) in a model's config.json; None when it cannot be read here."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(resolve_path(model)).get_text_config().vocab_size
    except (OSError, UserError, ValueError):  # a hub base not in the cache, a config transformers cannot read
        return None


def beyond_embedding(tokenizer: Any, rows: int | None, gguf: str | None) -> str | None:
    """A warning when the tokenizer holds ids the model has no embedding row for (tokens added to the tokenizer
    only): vLLM fails a request holding one. With `gguf` a refusal: llama.cpp's converter stops on such a
    tokenizer (an assertion, after the merge)."""
    extra = sorted(i for i in tokenizer.get_vocab().values() if rows and i >= rows)
    if not extra:
        return None
    shown = ", ".join(f"{tokenizer.convert_ids_to_tokens(i)!r} (id {i})" for i in extra[:3])
    more = f" and {len(extra) - 3} more" if len(extra) > 3 else ""
    why = (f"the tokenizer has {extra[-1] + 1} token ids but the model embeds {rows} (ids 0 to {rows - 1}): "
           f"{shown}{more} cannot be read by the model")  # fmt: skip
    if gguf is not None:
        fix = "remove them from the tokenizer (tokenizer.json added_tokens), or export without --gguf"
        raise UserError(f"--gguf {gguf}: {why}, and llama.cpp's converter refuses such a tokenizer; {fix}")
    return f"warning: {why}; a text holding one fails in vLLM, and llama.cpp's GGUF converter refuses the tokenizer"


def check_trained_base(adapter_dir: Path, base: str, named_by: str, merge: bool = True) -> str | None:
    """A warning when the base of the export is not the one the run trained on (`trained_base_changed`): a base
    retrained, replaced or edited at the same path, or another --model, gets the adapter folded into weights it
    never saw (`merge`), or is the base the adapter export's serve line names (it was said for --merge only). A
    warning, not a refusal: an edited generation_config.json or tokenizer file changes it too."""
    changed = trained_base_changed(adapter_dir, base, named_by)
    if changed is None:
        return None
    done = "the adapter was merged into" if merge else "the export is for"
    return (
        f"{changed}: {done} a base it never saw; export onto the base it trained on with `weitiao export --model "
        "DIR` (the console exports onto model.path as it is now) if that was not meant"
    )


def trained_base_changed(adapter_dir: Path, base: str, named_by: str) -> str | None:
    """'NAMED_BY BASE is not what the run trained on (...)' when the run's inputs.json (or its checkpoint's copy)
    holds another fingerprint of its base (weight and .json files, as resume compares them); None when it matches
    or nothing was recorded (a bare peft adapter, a hub base not in the cache)."""
    inputs, recorded = recorded_inputs(adapter_dir)  # (None, {}): a bare peft adapter, nothing to compare
    saved = recorded.get("model.path")
    local = local_model(base) if saved else None
    now = fingerprint(local) if local is not None else None
    if not (saved and now and saved != now):
        return None
    return (
        f"{named_by} {base} is not what the run trained on ({inputs}: model.path {saved}, now {now}: its weight or "
        ".json files changed, or another model)"
    )


def full_finetune(run: str) -> Path | None:
    """A full fine-tune's final/ (model/ and tokenizer/), given as its run or final/ dir; else None."""
    p = Path(run)
    found = (f for f in (p / "final", p) if (f / "model" / "config.json").is_file() and (f / "tokenizer").is_dir())
    return next(found, None)


def export_full(final: Path, dest: Path, dtype: str, force: bool, model: str | None, gguf: str | None) -> Path:
    """A full fine-tune's model/ and tokenizer/ as one folder (what other tools load), weights as training saved
    them (their generation_config already stops at the end-of-turn)."""
    if model or dtype != "fp32":
        raise UserError(
            f"--adapter {final}: a full fine-tune exports its own weights as saved; drop --model and --dtype"
        )
    replace = check_out(dest, final, force)
    tokenizer = load_tokenizer(str(final / "tokenizer"))
    template = resolve_template(tokenizer, "auto")
    unread = beyond_embedding(tokenizer, embedding_rows(str(final / "model")), gguf)

    def fill(tmp: Path) -> dict[str, Any]:
        shutil.copytree(final / "model", tmp, dirs_exist_ok=True)
        save_tokenizer(tokenizer, template, tmp)
        if gguf is not None:
            gen = tmp / "generation_config.json"  # training wrote its stop ids there
            eos = json.loads(gen.read_text(encoding="utf-8")).get("eos_token_id") if gen.is_file() else None
            stops = stop_ids(tokenizer, template, eos)
            to_gguf.convert(tmp, tmp / f"model-{gguf}.gguf", gguf, name=dest.name, stops=stops)
        info = {"adapter": str(final.resolve()), "base": None, "quant": "none", "merged": True, "dtype": None}
        return {**info, "warnings": [unread] if unread else []}

    return publish(dest, replace, fill)


def publish(dest: Path, replace: bool, fill: Any) -> Path:
    """`fill(tmp)` writes an export into a fresh temp dir beside `dest` and returns what the marker records; the dir
    is renamed into place when complete (`publish_dir`: a previous export, `replace`, or the empty folder `check_out`
    let by, moved aside until then). A failure at any point leaves `dest` as it was and no temp dir behind."""

    def with_marker(tmp: Path) -> None:
        info = fill(tmp)
        atomic_write_text(tmp / MARKER, json.dumps({**info, "files": sorted(_files(tmp))}, indent=1))

    if dest.exists() and not replace and any(dest.iterdir()):  # check_out lets by only an empty folder
        raise UserError(f"{dest}: not empty; choose another --out")
    publish_dir(dest, with_marker)
    return dest


def _generation_config(adapter_dir: Path, base: str, named: bool) -> Any:
    """The generation config an export extends, adapter-only or merged: with --model (`named`) that model's, else the
    run's (beside its adapter), else the base's; a model without generation_config.json gives what its config.json
    implies, as from_pretrained makes it. None when none is found (a hub base not in the cache: the stop ids still
    get written). With --model the adapter export used to keep the training base's sampling settings where the
    merged one took the named model's."""
    from transformers import AutoConfig, GenerationConfig

    for where in ([] if named else [adapter_dir]) + [base]:
        try:
            return GenerationConfig.from_pretrained(resolve_path(str(where)))
        except (OSError, UserError):  # none there
            continue
    try:
        return GenerationConfig.from_model_config(AutoConfig.from_pretrained(resolve_path(base)))
    except (OSError, UserError, ValueError):  # not in the cache, or a config transformers cannot read here
        return None


# vllm/config/lora.py: `--max-lora-rank` takes one of these, default 16
VLLM_LORA_RANKS, VLLM_DEFAULT_RANK = (1, 8, 16, 32, 64, 128, 256, 320, 512), 16


def recorded_warnings(dest: Path) -> list[str]:
    """The warnings an export recorded in its marker (none when it has no marker)."""
    marker = dest / MARKER
    return json.loads(marker.read_text(encoding="utf-8")).get("warnings", []) if marker.is_file() else []


def serve_notes(dest: Path) -> list[str]:
    """Lines for the user after an export: what vLLM cannot load (then: merge), else the `vllm serve` command
    after notes on a rank above vLLM's default and on a quantized training base."""
    info = json.loads((dest / MARKER).read_text(encoding="utf-8"))
    stops = [] if info["merged"] else _transformers_stop_note(dest)
    return [*recorded_warnings(dest), *_tokenizer_note(dest), *stops, *_serve_lines(dest, info)]


def _transformers_stop_note(dest: Path) -> list[str]:
    """A note when transformers and peft would not stop this adapter's replies: loading an adapter folder they take
    the generation_config.json of the base its adapter_config names, not the export's, so on a base whose EOS is not
    the template's end-of-turn (a Qwen2.5/Llama-3 base tuned on ChatML) generate() ran past every reply unsaid."""
    from transformers import AutoTokenizer, GenerationConfig

    def ids(gen: Any) -> list[int]:
        eos = gen.eos_token_id if gen is not None else None
        return [eos] if isinstance(eos, int) else list(eos or [])

    base = json.loads((dest / "adapter_config.json").read_text(encoding="utf-8")).get("base_model_name_or_path")
    theirs = ids(_generation_config(dest, str(base), named=True)) if base else []
    if not base or not theirs:  # a hub base not in the cache: nothing to compare
        return []
    lacking = [i for i in ids(GenerationConfig.from_pretrained(dest)) if i not in theirs]
    if not lacking:
        return []
    tok = AutoTokenizer.from_pretrained(str(dest))
    named = ", ".join(f"{tok.convert_ids_to_tokens(i)!r} (id {i})" for i in lacking)
    fix = f"pass generation_config=GenerationConfig.from_pretrained('{dest}') to generate(), or export with --merge"
    return [
        "note: transformers and peft (AutoModelForCausalLM, AutoPeftModelForCausalLM, PeftModel.from_pretrained) "
        f"load this adapter with the base's generation_config.json, whose eos_token_id {theirs} lacks {named}: "
        f"generate() would not stop at the end of a reply; {fix}"
    ]


def _tokenizer_note(dest: Path) -> list[str]:
    """A note when transformers 5's AutoTokenizer (what vLLM loads) splits the export's text otherwise than training."""
    from transformers import AutoTokenizer

    if not (dest / "tokenizer.json").is_file():
        return []
    diff = split_difference(AutoTokenizer.from_pretrained(str(dest)), dest)
    if diff is None:
        return []
    return [f"note: {dest.name}: {diff[1]}; training used tokenizer.json, as llama.cpp (GGUF) does, but vLLM and "
            "other servers on transformers 5 tokenize with that class: such text gets other ids there"]  # fmt: skip


def _serve_lines(dest: Path, info: dict) -> list[str]:
    q = shlex.quote
    if info["merged"]:
        dq = []
        if (kind := QUANT_KINDS.get(info.get("quant"))) is not None:  # the quantized grid's weights, not the original
            dq = [f"note: merged into the {kind} base de-quantized to {info.get('dtype') or 'fp32'} (the weights "
                  "training saw, not the original base's); the export itself is not quantized"]  # fmt: skip
        return [*dq, f"serve with vLLM: vllm serve {q(str(dest))}"]
    cfg = json.loads((dest / "adapter_config.json").read_text(encoding="utf-8"))
    rank = max([int(cfg.get("r") or 0), *(int(v) for v in (cfg.get("rank_pattern") or {}).values())])
    cannot = [
        *(["DoRA (use_dora)"] if cfg.get("use_dora") else []),
        *([f"modules_to_save {cfg['modules_to_save']}"] if cfg.get("modules_to_save") else []),
        *(["LoRA bias (lora_bias)"] if cfg.get("lora_bias") else []),
        *([f"rank {rank} above {VLLM_LORA_RANKS[-1]}"] if rank > VLLM_LORA_RANKS[-1] else []),
    ]
    if cannot:
        return [
            f"warning: vLLM cannot load this adapter ({', '.join(cannot)}); export a merged model with --merge "
            "and serve that (vllm serve DIR)"
        ]
    base = resolve_path("demo") if info["base"] == "demo" else info["base"]
    cmd = (
        f"vllm serve {q(base)} --enable-lora --lora-modules {q(dest.name + '=' + str(dest))} "
        f"--generation-config {q(str(dest))} --chat-template {q(str(dest / 'chat_template.jinja'))}"
    )
    lines = []
    if (quant := info.get("quant", "none")) != "none":  # exports made before the key was recorded: none
        kind = QUANT_KINDS.get(quant, quant)
        lines.append(f"note: the adapter was trained against the {kind} base; on the full-precision base vLLM "
                     "loads it is not exactly the model that was trained; --merge writes the model that was trained "
                     "(de-quantized base + adapter)")  # fmt: skip
    if rank > VLLM_DEFAULT_RANK:
        need = next(r for r in VLLM_LORA_RANKS if r >= rank)
        lines.append(f"warning: LoRA rank {rank} is above vLLM's default --max-lora-rank {VLLM_DEFAULT_RANK}; "
                     f"serve it with --max-lora-rank {need}")  # fmt: skip
        cmd += f" --max-lora-rank {need}"
    return [*lines, f"serve with vLLM: {cmd}"]


def check(export_dir: str, adapter: str, data: str, max_rows: int = 200) -> dict[str, Any]:
    """Training rows through plain transformers on the export vs the token ids training used.

    The export's tokenizer is loaded fresh with AutoTokenizer and renders with its own
    apply_chat_template; its generation_config must stop at the token training put after each reply.
    """
    from transformers import AutoTokenizer, GenerationConfig

    if (full := full_finetune(adapter)) is not None:
        train_tok = load_tokenizer(str(full / "tokenizer"))
    else:
        adapter_dir, tok_dir, spec = locate(adapter)
        train_tok = training_tokenizer(adapter_dir, tok_dir, spec.path)
    train_tpl = resolve_template(train_tok, "auto")
    plain = AutoTokenizer.from_pretrained(export_dir)
    rows = load_conversations(data, skip_hint=None).rows[:max_rows]
    opts = EncodeOptions(max_len=10**9)

    def plain_ids(c: Any) -> list[int]:  # a row's tools too, as training rendered them
        kw = {"tools": c.tools} if c.tools else {}
        return list(plain.apply_chat_template(list(c.messages), tokenize=True, return_dict=True, **kw)["input_ids"])

    bad = [c.source for c in rows if encode(c, train_tok, train_tpl, opts).input_ids != plain_ids(c)]
    if bad:
        raise UserError(
            f"export check: {len(bad)}/{len(rows)} rows tokenize differently with transformers' apply_chat_template "
            f"on {export_dir}, first {bad[0]}"
        )
    eot = train_tok.convert_tokens_to_ids(train_tpl.eot)
    stops = GenerationConfig.from_pretrained(export_dir).eos_token_id
    stops = [stops] if isinstance(stops, int) else list(stops or [])
    if eot not in stops:
        raise UserError(
            f"export check: {export_dir}/generation_config.json eos_token_id {stops} lacks {train_tpl.eot!r} "
            f"(id {eot}), the token that ends every trained reply: generation would not stop"
        )
    return {"rows": len(rows), "identical": len(rows), "stops_at": train_tpl.eot}
