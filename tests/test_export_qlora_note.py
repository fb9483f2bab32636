"""A plain adapter export of a QLoRA run says the adapter was trained against the quantized base: vLLM
serves it on the full-precision base, which is not the model that was trained (--merge writes that one)."""

import json

import pytest
from conftest import recipe_config

from weitiao.infer import export as ex
from weitiao.recipes import sft

pytestmark = pytest.mark.slow

NOTE = "note: the adapter was trained against the 4-bit NF4 base"


@pytest.mark.parametrize("quant", ["4bit", "none"])
def test_qlora_adapter_export_notes_the_quantized_base(tiny_model_dir, chat_file, tmp_path, quant):
    run = tmp_path / "run"
    sft.run(recipe_config("sft", tiny_model_dir, chat_file, run, f"model.quant={quant}", "train.max_steps=1"))
    dest = ex.export(str(run), str(tmp_path / "lora"))
    notes = ex.serve_notes(dest)
    assert notes[-1].startswith("serve with vLLM: vllm serve ")
    if quant == "4bit":
        [note] = [n for n in notes if n.startswith("note:")]
        assert note.startswith(NOTE) and "--merge writes the model that was trained" in note
        info = json.loads((dest / ex.MARKER).read_text())
        (dest / ex.MARKER).write_text(json.dumps({**info, "quant": "8bit"}))  # an 8-bit base merges too
        [note] = [n for n in ex.serve_notes(dest) if n.startswith("note:")]
        assert "8-bit LLM.int8 base" in note and "--merge writes the model that was trained" in note
        cfg = json.loads((dest / "adapter_config.json").read_text())
        (dest / "adapter_config.json").write_text(json.dumps({**cfg, "use_dora": True}))  # vLLM cannot load DoRA
        assert "export a merged model with --merge" in ex.serve_notes(dest)[0]
    else:  # negative control
        assert not any(n.startswith("note:") for n in notes)
    merged = ex.export(str(run), str(tmp_path / "merged"), merge=True)
    dq = ["note: merged into the 4-bit NF4 base de-quantized to fp32 (the weights training saw, not the original "
          "base's); the export itself is not quantized"] if quant == "4bit" else []  # fmt: skip
    assert ex.serve_notes(merged) == [*dq, f"serve with vLLM: vllm serve {merged}"]
    if quant == "4bit":
        info = json.loads((merged / ex.MARKER).read_text())
        (merged / ex.MARKER).write_text(json.dumps({**info, "quant": "8bit"}))
        assert ex.serve_notes(merged)[0].startswith("note: merged into the 8-bit LLM.int8 base de-quantized to fp32")
