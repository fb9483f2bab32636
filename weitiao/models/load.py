"""Load an HF causal LM and tokenizer: precision, 4/8-bit through bitsandbytes, LoRA through peft.

QLoRA is LoRA on a 4-bit NF4 base with double quantization: the same code on CPU and GPU.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
import yaml

from weitiao.config import EXPORT_MARKER
from weitiao.data.files import confined_tree
from weitiao.errors import UserError
from weitiao.models.spec import LoraSpec, ModelSpec, resolve_path

# peft 0.21 reads the alias transformers 5 deprecated on every PeftModel: one FutureWarning per adapter in users'
# output that is not about their code (tests/test_load.py::test_peft_wrap_prints_no_future_warning).
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


ADAPTER_MARKS = ("adapter_config.json", "adapter/adapter_config.json", "final/adapter/adapter_config.json")


def _check_model_dir(path: str) -> None:
    """A local folder without config.json is one line, not transformers' ValueError traceback; a LoRA adapter or a
    training run given as the model is told where it goes."""
    p = Path(path).expanduser()
    if not p.is_dir() or (p / "config.json").exists():
        return
    if any((p / f).exists() for f in ADAPTER_MARKS):
        raise UserError(f"{path}: a LoRA adapter or training run, not a model; give it as the adapter (--adapter, "
                        "or lora.init_from in a config): its base model is read from it")  # fmt: skip
    raise UserError(f"{path}: no config.json; not a Hugging Face model folder")


def _bad_weights(path: str) -> str:
    """The first .safetensors file in `path` whose header does not parse (for the error line)."""
    from safetensors import safe_open

    for f in sorted(Path(path).glob("*.safetensors")):
        try:
            with safe_open(str(f), framework="pt"):
                pass
        except Exception:  # noqa: BLE001 - any failure names this file
            return str(f)
    return path


def _first_line(e: BaseException) -> str:
    return next((x.strip() for x in str(e).splitlines() if x.strip()), type(e).__name__)


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda_bf16 else torch.float32
    return DTYPES[name]


# files a tokenizer is read from (transformers' vocab file names; a tokenizer_config.json may name a class with its own)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt",
                   "spiece.model", "sentencepiece.bpe.model", "tekken.json")  # fmt: skip


def has_tokenizer(folder: Path) -> bool:
    """Whether a model folder holds tokenizer files (TOKENIZER_FILES or a *.tiktoken)."""
    return any((folder / f).exists() for f in TOKENIZER_FILES) or any(folder.glob("*.tiktoken"))


def load_tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    path = resolve_path(path)
    folder = Path(path).expanduser()
    if folder.is_dir() and not has_tokenizer(folder):
        # transformers 5 builds an empty tokenizer of the config's class here: every text became no ids, and
        # generation stopped in a reshape traceback (a server answered every request "empty prompt")
        raise UserError(f"model {path}: no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...); copy the "
                        "tokenizer the model was trained with into it")  # fmt: skip
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except OSError as e:
        raise UserError(f"model {path!r}: cannot load tokenizer: {_first_line(e)}") from None
    if folder.is_dir():
        tok = _as_written(tok, folder)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


# Digits, spaces, newlines, contractions, CJK, full-width marks, an emoji and a decomposed é (NFC): the pieces where
# one pre-tokenizer or normalizer splits differently from another.
_SPLIT_PROBE = "It's 2024: 12345 apples,  3.14\n\n\tdon't 我喜欢喝咖啡！今天１２３ 🙂 cafe\u0301 x  y\r\nend"
_SAID_TOKENIZER: set[str] = set()
_AGREES: set[tuple[str, int]] = set()  # (tokenizer.json, its mtime) whose class and file split the probe alike


def split_difference(tok: Any, folder: Path) -> tuple[Any, str] | None:
    """(tokenizer.json as written, how they differ) when `tok`, transformers' tokenizer of `folder`, splits text
    otherwise than the folder's tokenizer.json; None when they agree or there is no tokenizer.json.

    transformers 5 builds some model types' tokenizers with their class's own normalizer and pre-tokenizer (any
    `qwen2` model gets Qwen2Tokenizer's, whatever tokenizer_config.json names), so a tokenizer its author trained
    or edited gives other ids than its tokenizer.json, as the tokenizers library, llama.cpp and transformers 4
    read it."""
    from transformers import TokenizersBackend

    file = folder / "tokenizer.json"
    if type(tok) is TokenizersBackend or not file.is_file():
        return None
    seen = (str(file.resolve()), file.stat().st_mtime_ns)
    if seen in _AGREES:  # a process loads one tokenizer many times: the second load of the file is not repeated
        return None
    written = TokenizersBackend.from_pretrained(str(folder))
    ours, theirs = written(_SPLIT_PROBE)["input_ids"], tok(_SPLIT_PROBE)["input_ids"]
    if ours == theirs:
        _AGREES.add(seen)
        return None
    at = next(i for i, (a, b) in enumerate(zip([*ours, None], [*theirs, None])) if a != b)
    piece = written.decode(ours[max(0, at - 1) : at + 2])
    how = f"transformers builds its tokenizer as {type(tok).__name__}, which splits text otherwise than its "
    return written, how + f"tokenizer.json (around {piece!r}: {len(theirs)} ids of a probe text, not {len(ours)})"


def _as_written(tok: Any, folder: Path) -> Any:
    """`tok`, or the folder's tokenizer.json as written when transformers' class splits text otherwise (a note)."""
    diff = split_difference(tok, folder)
    if diff is None:
        return tok
    written, how = diff
    # once, however the folder is named, and by one process of a torchrun/accelerate run (its RANK 0), not by each
    if (key := str(folder.resolve())) not in _SAID_TOKENIZER and os.environ.get("RANK", "0") == "0":
        _SAID_TOKENIZER.add(key)
        print(f"note: {folder}: {how}; weitiao uses tokenizer.json as written, as the tokenizers library, llama.cpp "
              "and transformers 4 do (transformers 5's AutoTokenizer, and servers built on it, would not)",
              file=sys.stderr)  # fmt: skip
    if written.pad_token is None and tok.pad_token is not None:
        written.pad_token = tok.pad_token
    return written


def load_model(spec: ModelSpec, device: torch.device | None = None, head: str = "lm") -> Any:
    """The base model, quantized if asked: causal LM (head="lm") or one-score classifier (head="score")."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, BitsAndBytesConfig

    device = device or torch.device("cpu")
    dtype = pick_dtype(spec.dtype, device)
    kwargs: dict[str, Any] = {"dtype": dtype}
    if spec.quant == "4bit":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
            bnb_4bit_quant_storage=torch.bfloat16 if spec.quant_storage == "bf16" else torch.uint8,
        )
    elif spec.quant == "8bit":
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
        _cast_warning_once()
    if spec.quant != "none" and device.type != "cpu":
        kwargs["device_map"] = {"": device}
    path = resolve_path(spec.path)
    _check_model_dir(path)
    auto = AutoModelForCausalLM
    if head == "score":
        auto, kwargs["num_labels"] = AutoModelForSequenceClassification, 1
    from safetensors import SafetensorError

    try:
        kwargs["attn_implementation"] = _attention(path, spec, head)
        if head == "score":
            model = _score_model(path, spec, kwargs)
        else:
            model = auto.from_pretrained(path, trust_remote_code=spec.trust_remote_code, **kwargs)
    except SafetensorError as e:
        raise UserError(f"{_bad_weights(path)}: weights not readable (truncated or corrupt: {e})") from None
    except OSError as e:
        raise UserError(f"model {path!r}: cannot load: {_first_line(e)}") from None
    if spec.quant == "none":
        model.to(device)
    elif spec.quant == "4bit" and device.type == "cpu":
        refuse_cpu_4bit_widths(model, path)
        keep_4bit_training_path(model)  # eval gen, chat, serve and reports answer as training computed
    model.config.use_cache = False
    return model


NF4_BLOCK = 64  # weights per absmax block of the 4-bit base (bitsandbytes' default, QLoRA's)


def refuse_cpu_4bit_widths(model: Any, path: str) -> None:
    """UserError for a 4-bit Linear whose input width is not a multiple of the block on CPU.

    bitsandbytes 0.50's CPU kernels read such a weight as rows of whole blocks, but it was quantized in blocks
    over the flat tensor: dequantized with other blocks' scales (6× the NF4 error in training, tested), and
    the eval-mode kernel crashes with a reshape error. CUDA dequantizes the flat tensor and is unaffected.
    """
    for name, m in model.named_modules():
        if hasattr(getattr(m, "weight", None), "quant_state") and m.in_features % NF4_BLOCK:
            raise UserError(
                f"model {path!r}: {name} takes {m.in_features} inputs, not a multiple of {NF4_BLOCK}; bitsandbytes' "
                "CPU 4-bit kernels dequantize such weights with the wrong block scales; use model.quant none "
                "(--quant none) on CPU, or a GPU"
            )


_SAID_EAGER: set[str] = set()


def _attention(path: str, spec: ModelSpec, head: str) -> str:
    """`spec.attn`, or eager where it is sdpa and the model class has no sdpa attention: transformers 5 refuses it
    for Gemma-2 (`_supports_sdpa = False`: sdpa cannot soft-cap attention scores), which was a traceback under the
    default model.attn. Eager computes the same attention (more memory on long rows); said once per class."""
    if spec.attn != "sdpa":
        return spec.attn
    import transformers
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING, MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING, AutoConfig

    config = AutoConfig.from_pretrained(path, trust_remote_code=spec.trust_remote_code)
    mapping = MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING if head == "score" else MODEL_FOR_CAUSAL_LM_MAPPING
    cls = mapping.get(type(config), None)  # None: remote code, left to transformers
    if cls is None or getattr(cls, "_supports_sdpa", True):
        return "sdpa"
    if cls.__name__ not in _SAID_EAGER:
        _SAID_EAGER.add(cls.__name__)
        print(f"model.attn: sdpa: {cls.__name__} has no sdpa attention in transformers {transformers.__version__}; "
              "loading it with eager (the same attention, more memory on long rows); set model.attn: eager to silence "
              "this, or flash_attention_2 on a GPU", file=sys.stderr)  # fmt: skip
    return "eager"


class _Once(logging.Filter):
    """Let the first record of each message starting with `prefix` through, drop its repeats; others all pass."""

    def __init__(self, prefix: str):
        super().__init__()
        self.prefix, self.seen = prefix, set()

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if not msg.startswith(self.prefix):
            return True
        if msg in self.seen:
            return False
        self.seen.add(msg)
        record.msg, record.args = msg + " (shown once; weitiao hides its repeats)", ()
        return True


def _cast_warning_once() -> None:
    """bitsandbytes warns that it casts a non-fp16 input to fp16 in every 8-bit matmul that is not training on
    CPU (evals, generation) and in every one on GPU: per layer per forward, dozens of lines a step on a tiny
    model. Said once per process here, on that one logger and message only; its other warnings stay as they are."""
    log = logging.getLogger("bitsandbytes.autograd._functions")
    if not any(isinstance(f, _Once) for f in log.filters):
        log.addFilter(_Once("MatMul8bitLt: inputs will be cast"))


class _NoLoadReport(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "LOAD REPORT" not in record.getMessage()


def _score_model(path: str, spec: ModelSpec, kwargs: dict) -> Any:
    """A one-score classifier from a causal LM or reward model folder.

    A causal LM folder has no `score` weights: the head starts fresh by design (trained by `weitiao
    rm`, or replaced by the adapter's saved head), so transformers' "newly initialized" report is
    dropped; any other missing or mismatched weight is still reported.
    """
    from transformers import AutoModelForSequenceClassification

    log = logging.getLogger("transformers.modeling_utils")
    quiet = _NoLoadReport()
    log.addFilter(quiet)
    try:
        model, info = AutoModelForSequenceClassification.from_pretrained(
            path, trust_remote_code=spec.trust_remote_code, output_loading_info=True, **kwargs
        )
    finally:
        log.removeFilter(quiet)
    missing = sorted(k for k in info.get("missing_keys", ()) if not k.startswith("score."))
    mismatched = [k[0] if isinstance(k, tuple) else k for k in info.get("mismatched_keys", ())]
    if missing or mismatched:
        print(f"model {path}: weights not in the checkpoint, newly initialized: {', '.join(missing + mismatched)}",
              file=sys.stderr)  # fmt: skip
    return model


def keep_4bit_training_path(model: Any) -> int:
    """Stop bitsandbytes from repacking 4-bit weights for its CPU inference kernel (training and inference alike);
    returns modules set.

    On CPUs with AVX512-BF16, Linear4bit repacks its weight the first time it runs in eval mode
    without grad (an eval pass) and from then on multiplies through a bf16 kernel with no autograd:
    training after the first eval would differ from training before it, and a resumed run (fresh,
    unpacked weights) from an uninterrupted one.
    """
    n = 0
    for m in model.modules():
        if hasattr(m, "support_avx512bf16_for_cpu"):
            m.support_avx512bf16_for_cpu = False
            n += 1
    return n


def add_lora(model: Any, spec: LoraSpec, gradient_checkpointing: bool = False, task_type: str = "CAUSAL_LM") -> Any:
    """Freeze the base and attach a peft LoRA (or DoRA/rsLoRA) adapter."""
    from peft import LoraConfig, get_peft_model

    keep_4bit_training_path(model)
    for p in model.parameters():
        p.requires_grad_(False)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    config = LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha if spec.alpha is not None else 2 * spec.r,
        lora_dropout=spec.dropout,
        target_modules=spec.targets,
        use_dora=spec.dora,
        use_rslora=spec.rslora,
        modules_to_save=list(spec.modules_to_save) if spec.modules_to_save else None,  # peft extends it (SEQ_CLS)
        task_type=task_type,
    )
    leaves = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if n and not list(m.children())})
    try:
        peft_model = get_peft_model(model, config)
    except ValueError as e:
        if isinstance(spec.targets, str) and "not found" in str(e):  # peft reads one string as a regex
            raise UserError(
                f"lora.targets: {spec.targets!r} matches no module: a single string is a regular expression over "
                "full module names (peft); give names as a list, e.g. lora.targets=[q_proj,v_proj] "
                f"(its modules: {', '.join(leaves)})"
            ) from None
        raise UserError(f"lora.targets: {e}") from None
    refuse_unmatched(peft_model, spec, leaves)
    return peft_model


def refuse_unmatched(peft_model: Any, spec: LoraSpec, leaves: list[str]) -> None:
    """A name in lora.targets or lora.modules_to_save that matched no module is one line (peft only refuses a
    list of which no name matches, so `[q_proj, v_prj]` trained q_proj alone, silently)."""
    from peft.utils.other import ModulesToSaveWrapper

    targeted = list(peft_model.targeted_module_names)
    saved = [n for n, m in peft_model.named_modules() if isinstance(m, ModulesToSaveWrapper)]
    lists = {
        "targets": (spec.targets if isinstance(spec.targets, list) else [], targeted, True),
        "modules_to_save": (spec.modules_to_save or [], saved, False),
    }
    for key, (names, found, dotted) in lists.items():
        for name in names:  # peft's own matching: targets by whole name parts, modules_to_save by name suffix
            if not any(f == name or f.endswith(("." + name) if dotted else name) for f in found):
                if dotted and any(f.endswith("." + name) for f in saved):  # peft trains it in full instead
                    raise UserError(
                        f"lora.targets: {name!r} is also in lora.modules_to_save, which trains it in full (no adapter "
                        "on it); keep it in one of the two"
                    )
                raise UserError(
                    f"lora.{key}: {name!r} matches no module of the model (its modules: {', '.join(leaves)})"
                )


def load_lora(model: Any, adapter: str, gradient_checkpointing: bool = False, spec: LoraSpec | None = None) -> Any:
    """Freeze the base and attach a saved adapter, trainable (r, alpha, targets come from the adapter).

    Keys of `spec` set in the config are checked against the adapter: a different r, alpha, dora, rslora or
    target list is refused (a continued adapter keeps its shape), a different dropout is applied.
    """
    from peft import PeftModel

    try:
        adapter_dir, _, _ = locate(adapter)
    except UserError as e:
        raise UserError(f"lora.init_from: {e}".replace("--adapter ", "")) from None
    # on a causal LM its score head would be dropped and the policy would start from a stray adapter, unsaid
    refuse_reward_adapter(adapter_dir, "lora.init_from:", "start from an SFT or DPO run's adapter (a reward model "
                          "continues with `weitiao rm`; PPO reads one as reward.path)")  # fmt: skip
    keep_4bit_training_path(model)
    for p in model.parameters():
        p.requires_grad_(False)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    targets = None
    if spec is not None:
        from peft import PeftConfig

        targets = adapter_targets(model, PeftConfig.from_pretrained(str(adapter_dir)), spec)
    peft_model = PeftModel.from_pretrained(model, adapter_dir, is_trainable=True)
    if spec is not None:
        match_adapter(peft_model, spec, adapter, targets)
    return peft_model


def shape_conflicts(spec: LoraSpec, saved: Any, list_targets: bool = True) -> dict[str, tuple[Any, Any]]:
    """The adapter-shape keys of `spec` a saved peft LoraConfig contradicts: key → (spec's, saved's). alpha None
    (= 2r for a new adapter; what a config.yaml records when it was left out) contradicts nothing; targets are
    compared as lists when `list_targets` (a name or regex: not at all; `match_adapter` compares modules)."""
    checks = {
        "r": (spec.r, saved.r),
        "alpha": (spec.alpha, saved.lora_alpha),
        "dora": (spec.dora, bool(saved.use_dora)),
        "rslora": (spec.rslora, bool(saved.use_rslora)),
    }
    if list_targets and isinstance(spec.targets, list):
        checks["targets"] = (sorted(spec.targets), sorted(saved.target_modules or []))
    return {
        k: (want, have) for k, (want, have) in checks.items() if want != have and not (k == "alpha" and want is None)
    }


def adapter_targets(base: Any, saved: Any, spec: LoraSpec) -> tuple[list[str], list[str]] | None:
    """(modules lora.targets selects, modules the saved adapter config `saved` is on) on `base` before the adapter
    wraps it, for `match_adapter`; None when the config does not set lora.targets."""
    if "targets" not in spec.model_fields_set:
        return None
    return _targeted(base, saved, spec.targets), _targeted(base, saved, saved.target_modules)


def _targeted(model: Any, saved: Any, target_modules: Any) -> list[str]:
    """The module names peft puts an adapter on for `target_modules` (names, one regex or 'all-linear'), under the
    rest of the adapter config `saved` (task type, exclusions)."""
    import copy

    from peft.tuners.tuners_utils import _maybe_include_all_linear_layers, check_target_module_exists

    config = copy.copy(saved)
    config.target_modules = target_modules
    config = _maybe_include_all_linear_layers(config, model)
    return sorted(n for n, _ in model.named_modules() if n and check_target_module_exists(config, n))


def match_adapter(
    peft_model: Any, spec: LoraSpec, adapter: str, targets: tuple[list[str], list[str]] | None = None
) -> None:
    """Refuse lora.* keys the config sets that the saved adapter contradicts; apply lora.dropout. `targets`: the
    modules lora.targets and the adapter select (`_targeted`), compared as modules: `all-linear` and the adapter's
    list of every linear layer are the same."""
    from peft.tuners.lora import LoraLayer

    saved = peft_model.peft_config["default"]
    given = spec.model_fields_set
    if targets is not None and targets[0] != targets[1]:
        want = sorted({n.rsplit(".", 1)[-1] for n in targets[0]})
        have = sorted({n.rsplit(".", 1)[-1] for n in targets[1]})
        raise UserError(
            f"lora.targets={spec.targets} puts adapters on {len(targets[0])} modules ({', '.join(want) or 'none'}) "
            f"but the adapter at lora.init_from ({adapter}) is on {len(targets[1])} ({', '.join(have)}): a continued "
            "adapter keeps its shape; drop lora.targets"
        )
    conflicts = shape_conflicts(spec, saved, list_targets=False)
    mts = (sorted(spec.modules_to_save or []), sorted(saved.modules_to_save or []))
    if spec.modules_to_save is not None and mts[0] != mts[1]:  # None (a recorded config.yaml's null): unset
        conflicts["modules_to_save"] = mts
    for key, (want, have) in conflicts.items():
        if key in given:
            raise UserError(
                f"lora.{key}={want} but the adapter at lora.init_from ({adapter}) has {have}: a continued adapter "
                f"keeps its shape; drop lora.{key} or set it to {have}"
            )
    if "dropout" in given and spec.dropout != saved.lora_dropout:
        for m in peft_model.modules():
            if isinstance(m, LoraLayer) and "default" in m.lora_dropout:
                m.lora_dropout["default"] = torch.nn.Dropout(spec.dropout) if spec.dropout else torch.nn.Identity()
        saved.lora_dropout = spec.dropout  # the saved adapter_config.json says what was trained


def count_params(model: Any) -> tuple[int, int]:
    """(trainable, total) parameter counts; 4-bit weights count their real element number."""
    trainable = total = 0
    for p in model.parameters():
        n = p.numel() * (2 if p.dtype == torch.uint8 and hasattr(p, "quant_state") else 1)
        total += n
        trainable += n if p.requires_grad else 0
    return trainable, total


def build_trainable(model: ModelSpec, lora: LoraSpec, device: torch.device, head: str = "lm") -> Any:
    """Load the base and make it trainable: LoRA adapter on a frozen (maybe quantized) base, or full.

    With head="score" the new score head is trained fully (peft modules_to_save) beside the adapter.
    """
    base = load_model(model, device, head)
    if lora.enabled and lora.init_from:
        return load_lora(base, lora.init_from, model.gradient_checkpointing, lora)
    if lora.enabled:
        return add_lora(base, lora, model.gradient_checkpointing, "SEQ_CLS" if head == "score" else "CAUSAL_LM")
    if model.quant != "none":
        raise UserError("model.quant: quantized weights cannot be fully fine-tuned; set lora.enabled: true")
    if model.gradient_checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return base


def lora_as_trained(lora: LoraSpec, disable: bool) -> LoraSpec:
    """The LoRA spec a DPO, RM or PPO run trains with: dropout 0 when train.disable_dropout (on by default there)
    switches it off, so the run's config.yaml records what ran and loads again. A lora.dropout > 0 the config sets
    is refused with one line instead of being ignored."""
    if not (disable and lora.enabled and lora.dropout > 0):
        return lora
    if "dropout" in lora.model_fields_set:
        raise UserError(
            f"lora.dropout={lora.dropout} would be switched off: train.disable_dropout is true (the default here, so "
            "the first update compares π with its reference without dropout); set train.disable_dropout=false to "
            "train with it, or drop lora.dropout"
        )
    return lora.model_copy(update={"dropout": 0.0})


def lora_continued(lora: LoraSpec) -> LoraSpec:
    """With lora.init_from: the keys the config leaves unset take the adapter's values (r, alpha, dropout, DoRA,
    rsLoRA from its adapter_config.json; targets and modules_to_save from its run's config.yaml, else from the
    adapter), so the run's config.yaml records the adapter that trained and runs again; it recorded the defaults
    (r 16, dropout 0.05), which the adapter then contradicted."""
    if not (lora.enabled and lora.init_from):
        return lora
    from peft import PeftConfig

    try:
        adapter_dir, _, _ = locate(lora.init_from)
    except UserError as e:
        raise UserError(f"lora.init_from: {e}".replace("--adapter ", "")) from None
    saved = PeftConfig.from_pretrained(str(adapter_dir))
    run = recorded_run(adapter_dir)[1].get("lora")
    run = run if isinstance(run, dict) else {}
    targets = run.get("targets") or saved.target_modules
    has = {
        "r": saved.r,
        "alpha": float(saved.lora_alpha),
        "dropout": float(saved.lora_dropout),
        "dora": bool(saved.use_dora),
        "rslora": bool(saved.use_rslora),
        "targets": targets if isinstance(targets, str) else sorted(targets),
        "modules_to_save": run.get("modules_to_save", saved.modules_to_save),
    }
    unset = {k: v for k, v in has.items() if k not in lora.model_fields_set}
    return lora.model_copy(update=unset)


def disable_dropout(model: torch.nn.Module) -> int:
    """Set p=0 on every dropout layer (LoRA's included); returns how many were changed.

    Preference and RL updates compare the policy with a reference that runs without dropout; with
    dropout on, step 0 is not π = π_ref (TRL's `disable_dropout` does the same).
    """
    n = 0
    for m in model.modules():
        if isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0:
            m.p = 0.0
            n += 1
    return n


def _training_dir(run_dir: Any, out: Any) -> Any:
    """The directory training ran in: the run dir with its recorded relative `train.out` taken off."""
    import os
    from pathlib import Path

    if not isinstance(out, str) or not out or Path(out).is_absolute():
        return None
    parts = Path(os.path.normpath(out)).parts
    run = Path(run_dir).resolve()
    if ".." in parts or run.parts[-len(parts) :] != parts:
        return None
    return run.parents[len(parts) - 1]


def recorded_run(adapter_dir: Path) -> tuple[Path | None, dict]:
    """The config.yaml of the run an adapter dir sits in (RUN/final/adapter, RUN/checkpoints/step-N/adapter: the
    nearest of its three parents that has one) and its contents ({} when none, or not a mapping)."""
    file = next((d / "config.yaml" for d in Path(adapter_dir).parents[:3] if (d / "config.yaml").is_file()), None)
    cfg = (yaml.safe_load(file.read_text(encoding="utf-8")) or {}) if file else {}
    return file, cfg if isinstance(cfg, dict) else {}


def _json_object(path: Path, fix: str) -> dict:
    """A JSON file that must hold one object; a damaged one is one line naming it (a traceback before)."""
    from weitiao.io import read_json

    data = read_json(path)
    if not isinstance(data, dict):
        raise UserError(f"{path}: not a JSON object but {type(data).__name__}; {fix}")
    return data


def adapter_base(adapter_dir: Any) -> tuple[str, str]:
    """(base model path, training quant) recorded with a peft adapter dir.

    The run's config.yaml (model.path, model.quant) wins over adapter_config.json's
    base_model_name_or_path (quant: an adapter export's record, else "none"). A relative path is tried
    against the directory training ran in (the run dir minus its relative train.out), then the current
    one; a path found nowhere is returned as written (a hub id, or 'demo').
    """
    from pathlib import Path

    adapter_dir = Path(adapter_dir)
    cfg_file, cfg = recorded_run(adapter_dir)
    model = cfg.get("model") if isinstance(cfg.get("model"), dict) else {}
    train = cfg.get("train") if isinstance(cfg.get("train"), dict) else {}
    if not model and (adapter_dir / EXPORT_MARKER).is_file():  # an adapter export: its run's quant, in its record
        model = {"quant": _json_object(adapter_dir / EXPORT_MARKER, "export again").get("quant") or "none"}
    recorded = _json_object(adapter_dir / "adapter_config.json", "save the adapter again")
    names = [str(x) for x in (model.get("path"), recorded.get("base_model_name_or_path")) if x]
    if not names or names[0] == "demo":
        return "demo", str(model.get("quant", "none"))
    run_dir = cfg_file.parent if cfg_file else None
    if run_dir is not None and run_dir.parent.name == "checkpoints":  # a checkpoint's copy of config.yaml
        run_dir = run_dir.parent.parent
    root = _training_dir(run_dir, train.get("out")) if run_dir else None
    candidates = [root / n for n in names if root] + [Path(n) for n in names]
    found = next((c.resolve() for c in candidates if c.is_dir()), None)
    return str(found) if found else names[0], str(model.get("quant", "none"))


def locate(adapter: str | Path) -> tuple[Path, Path | None, ModelSpec]:
    """(adapter dir, training tokenizer dir or None, base model spec) from a run dir or adapter dir.

    The base is the one recorded with the adapter (models.load.adapter_base), with the quantization
    and loading settings of the run's config.yaml.
    """
    p = Path(adapter)
    confined_tree(p.expanduser())  # a run of the console's: inside its folders, as it is read
    for cand in (p / "final" / "adapter", p / "adapter", p):
        if (cand / "adapter_config.json").exists():
            adapter_dir = cand
            break
    else:
        full = next((c for c in (p / "final" / "model", p / "model", p) if (c / "config.json").is_file()), None)
        if full is not None:  # a full fine-tune: nothing to merge or load on a base
            # a run's final/model holds no tokenizer (it is beside it, with the template): export joins them
            fix = (
                f"give it as the model (--model {full}) instead"
                if has_tokenizer(full)
                else f"export it with its tokenizer (weitiao export --adapter {adapter} --out DIR) and give --model DIR"
            )
            # a merged export (`weitiao export --merge`) is no full fine-tune: saying so sent users looking for one
            what = "a merged export" if (full / EXPORT_MARKER).is_file() else "a full fine-tune"
            raise UserError(f"--adapter {adapter}: {what}, not an adapter; {full} is a whole Hugging Face "
                            f"model: {fix}")  # fmt: skip
        raise UserError(f"--adapter {adapter}: no adapter_config.json (give a run dir or a peft adapter dir)")
    # the training tokenizer (with its template): beside the adapter in a run's final/, in an adapter export's own
    # folder, or, for a checkpoint (checkpoints/step-N/adapter), in its finished run's final/
    run = (
        adapter_dir.parents[2]
        if len(adapter_dir.parents) > 2 and adapter_dir.parents[1].name == "checkpoints"
        else None
    )
    found = (adapter_dir.parent / "tokenizer", adapter_dir, *([run / "final" / "tokenizer"] if run else []))
    tok_dir = next((d for d in found if (d / "tokenizer_config.json").is_file()), None)
    base, quant = adapter_base(adapter_dir)
    spec = ModelSpec(path=base, quant=quant)  # type: ignore[arg-type]
    recorded = recorded_run(adapter_dir)[1].get("model")
    if isinstance(recorded, dict):
        spec = ModelSpec.model_validate({**recorded, "path": base, "quant": quant, "gradient_checkpointing": False})
    return adapter_dir, tok_dir, spec


def training_tokenizer(adapter_dir: Path, tok_dir: Path | None, base: str) -> Any:
    """The tokenizer training used, with its chat template: `tok_dir` (from `locate`), else the base's, carrying the
    template the run's config.yaml names in `data.template` (a checkpoint of a run that has not finished)."""
    from weitiao.data.templates import resolve_template

    if tok_dir is not None:
        return load_tokenizer(str(tok_dir))
    tok = load_tokenizer(base)
    data = recorded_run(adapter_dir)[1].get("data")
    name = data.get("template", "auto") if isinstance(data, dict) else "auto"
    if name not in ("auto", "tokenizer"):
        tok.chat_template = resolve_template(tok, name).jinja
    return tok


def precision_name(quant: str) -> str:
    """model.quant in words, for messages: full precision, 4-bit NF4, 8-bit."""
    return "full precision" if quant == "none" else {"4bit": "4-bit NF4", "8bit": "8-bit"}.get(quant, quant)


def trained_quant_note(what: str, quant: str) -> str:
    """The one line saying a base was loaded quantized because training used it (a QLoRA adapter served
    on a full-precision base is not the model that was trained)."""
    return f"{what} loaded in {precision_name(quant)} as in training (--quant none to override)"


def attach_adapter(model: Any, adapter_dir: Any, base: str, **kwargs: Any) -> Any:
    """PeftModel.from_pretrained; a base whose shapes or modules do not fit the adapter is one line."""
    import re

    from peft import PeftModel

    try:
        return PeftModel.from_pretrained(model, adapter_dir, **kwargs)
    except (RuntimeError, ValueError, KeyError) as e:
        m = re.search(r"size mismatch for (\S+): copying a param with shape (.+?) from checkpoint, .* shape in "
                      r"current model is (.+?)\.?$", str(e), re.M)  # fmt: skip
        why = f"{m[1]}: adapter {m[2]}, base {m[3]}" if m else str(e).splitlines()[0][:200]
        recorded = adapter_base(adapter_dir)[0]
        raise UserError(
            f"adapter {adapter_dir} does not fit base {base!r} ({why}); it was trained on {recorded!r}"
        ) from None


def refuse_reward_adapter(adapter_dir: Any, flag: str = "--adapter", hint: str | None = None) -> None:
    """A reward model's adapter (LoRA + score head, `weitiao rm`) on a causal LM generates from a stray adapter and
    drops the trained head: one line pointing to what reads it instead (`hint`, default: score or export it)."""
    import json

    adapter_dir = Path(adapter_dir)
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    if cfg.get("task_type") == "SEQ_CLS" or (adapter_dir.parent / "reward_model.json").exists():
        raise UserError(
            f"{flag} {adapter_dir}: a reward model (LoRA + score head), not a model that writes replies; "
            + (hint or "score with `weitiao score --rm RUN`, or export it with `weitiao export --for openrlhf|verl`")
        )


def load_adapted(
    adapter_dir: Any, base: str | None, quant: str | None, what: str, device: torch.device | None = None, head="lm"
) -> Any:
    """`base` (default: the base the adapter was trained on) with the peft adapter attached, loaded as `quant`;
    None loads it as training did, and a quantized training base is then said on stderr (`what`: whose base)."""
    if head == "lm":
        refuse_reward_adapter(adapter_dir)
    recorded, trained = adapter_base(adapter_dir)
    base = base or recorded
    if quant is None and trained != "none":
        print(trained_quant_note(f"{what} {base}", trained), file=sys.stderr)
    model = load_model(ModelSpec(path=base, quant=quant or trained), device, head=head)  # type: ignore[arg-type]
    return attach_adapter(model, adapter_dir, base)
