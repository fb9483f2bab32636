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


def test_a_qlora_adapter_export_loads_on_the_quantized_base_as_its_run(tiny_model_dir, chat_file, tmp_path):
    """`--adapter EXPORT` of a QLoRA run (chat, serve, eval gen) loaded the base in full precision, where `--adapter
    RUN` loads it in 4 bit as trained: the same adapter answered from another model, unsaid. The export's record
    (its marker's `quant`) now gives the training quantization, as the run's config.yaml does."""
    import os
    from pathlib import Path

    import torch
    from conftest import serve_process

    from weitiao.infer.chat import load_chat_model
    from weitiao.models.load import locate

    run = tmp_path / "run"
    sft.run(recipe_config("sft", tiny_model_dir, chat_file, run, "model.quant=4bit", "train.max_steps=1"))
    dest = ex.export(str(run), str(tmp_path / "lora"))
    assert locate(dest)[2].quant == locate(run)[2].quant == "4bit"
    x = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        want = load_chat_model(None, str(run))[0](x).logits
        assert torch.equal(load_chat_model(None, str(dest))[0](x).logits, want)
        full = load_chat_model(None, str(dest), quant="none")[0](x).logits  # --quant none still overrides
    assert (full - want).abs().max() > 1e-3  # negative control: the full-precision base is another model
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    with serve_process(tiny_model_dir, "--adapter", str(dest), env=env) as (proc, _):
        pass  # a real `weitiao serve --model BASE --adapter EXPORT`: the base in 4 bit, said at start
    assert "loaded in 4-bit NF4 as in training" in proc.stdout.read().decode()
