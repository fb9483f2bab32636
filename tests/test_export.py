"""export: merged model (NF4 / LLM.int8 de-quantized first) reproduces adapter logits; template check."""

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from weitiao.config import load_config
from weitiao.infer import export as ex
from weitiao.models.load import ModelSpec, load_model
from weitiao.recipes import sft

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("quant", ["4bit", "8bit", "none"])
def test_merged_logits_equal_adapter_logits(tiny_model_dir, chat_file, tmp_path, quant):
    run = tmp_path / "run"
    cfg = load_config(
        sft.SFTConfig,
        None,
        [
            f"model.path={tiny_model_dir}",
            f"model.quant={quant}",
            f"data.train=[{chat_file}]",
            f"train.out={run}",
            "train.max_steps=3",
            "train.lr=2e-2",
            "train.progress=false",
            "train.tensorboard=false",
            "lora.dropout=0",
        ],
    )
    sft.run(cfg)
    dest = ex.export(str(run), str(tmp_path / "merged"), merge=True)
    merged = AutoModelForCausalLM.from_pretrained(dest, dtype=torch.float32).eval()  # plain transformers
    adapted = PeftModel.from_pretrained(
        load_model(ModelSpec(path=str(tiny_model_dir), quant=quant)), run / "final" / "adapter"
    ).eval()
    base = load_model(ModelSpec(path=str(tiny_model_dir), quant=quant)).eval()
    ids = torch.tensor([AutoTokenizer.from_pretrained(dest)("今天天气怎么样？挺好的☀️")["input_ids"]])
    # The same adapter on the de-quantized base, unmerged: the exact fp32 computation merging must keep.
    deq = PeftModel.from_pretrained(ex.dequantized_base(cfg.model), run / "final" / "adapter").eval()
    with torch.no_grad():
        a, m, b = adapted(input_ids=ids).logits, merged(input_ids=ids).logits, base(input_ids=ids).logits
        d = deq(input_ids=ids).logits
    assert (d - m).abs().max().item() < 1e-4
    # bitsandbytes' CPU kernel multiplies 4-bit weights in bf16, so the live 4-bit model is only ~1e-2 close; an 8-bit
    # one in eval mode also rounds its inputs to int8 (LLM.int8's matmul; measured 1.9e-3, logits std 0.27).
    assert (a - m).abs().max().item() < {"4bit": 3e-2, "8bit": 1e-2, "none": 1e-4}[quant]
    if quant == "8bit":
        # Training on CPU multiplies by the int8 weight de-quantized to fp32 (bitsandbytes' MatMul8bitFp): the
        # live 8-bit model in train mode is the trained computation, and the merge keeps it (measured 3.6e-7).
        with torch.no_grad():
            t = adapted.train()(input_ids=ids).logits
            full = PeftModel.from_pretrained(load_model(ModelSpec(path=str(tiny_model_dir))), run / "final" / "adapter")
            f = full.eval()(input_ids=ids).logits
        assert (t - m).abs().max().item() < 1e-5
        # Negative control: the adapter on the full-precision base from disk is another model (measured 1.8e-3).
        assert (f - m).abs().max().item() > 1e-4
    assert (a - b).abs().max().item() > 1e-2  # the adapter really changed the model
    assert "<|im_start|>" in AutoTokenizer.from_pretrained(dest).chat_template
    assert ex.check(str(dest), str(run), str(chat_file))["identical"] == 24


def test_unmerged_export_is_clean_adapter_dir(tiny_model_dir, chat_file, tmp_path):
    run = tmp_path / "run"
    sft.run(
        load_config(
            sft.SFTConfig,
            None,
            [
                f"model.path={tiny_model_dir}",
                f"data.train=[{chat_file}]",
                f"train.out={run}",
                "train.max_steps=1",
                "train.progress=false",
                "train.tensorboard=false",
            ],
        )
    )
    dest = ex.export(str(run), str(tmp_path / "adapter"))
    names = {p.name for p in dest.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= names
    assert not any(n.startswith("step-") or n == "trainer_state.pt" for n in names)
    # A damaged export record or adapter_config.json: one line naming the file (a JSONDecodeError traceback before).
    from weitiao.errors import UserError
    from weitiao.models.load import adapter_base

    assert adapter_base(dest)[1] == "none"  # control: the export as written
    for name, text, said in ((".weitiao-export.json", '{"quant": ', "not valid JSON"), ("adapter_config.json", "[1]",
                             "not a JSON object but list; save the adapter again")):  # fmt: skip
        good = (dest / name).read_text()
        (dest / name).write_text(text)
        with pytest.raises(UserError, match=rf"{name}.*{said}"):
            adapter_base(dest)
        (dest / name).write_text(good)


def test_a_full_finetune_exports_as_one_folder(tmp_path, tokenizer):
    """`export --adapter RUN` of a full fine-tune stopped with 'give it as the model (--model ...)', which export
    (it needs --adapter) cannot take: a dead end. Its final/model and final/tokenizer now make one folder that
    plain transformers loads with the training template."""
    from conftest import save_tiny_model, write_jsonl
    from safetensors.torch import load_file

    from weitiao.errors import UserError
    from weitiao.models.load import load_tokenizer, locate

    final = tmp_path / "run" / "final"
    save_tiny_model(final / "model", tokenizer, hidden=64)
    for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (final / "model" / f).unlink(missing_ok=True)  # as training saves them: the tokenizer beside, not inside
    tokenizer.save_pretrained(final / "tokenizer")
    dest = ex.export(str(tmp_path / "run"), str(tmp_path / "out"))
    saved, got = load_file(final / "model" / "model.safetensors"), load_file(dest / "model.safetensors")
    assert saved.keys() == got.keys() and all(torch.equal(saved[k], got[k]) for k in saved)
    plain = AutoTokenizer.from_pretrained(dest)
    msgs = [{"role": "user", "content": "你好"}]
    assert plain.apply_chat_template(msgs, tokenize=False) == tokenizer.apply_chat_template(msgs, tokenize=False)
    assert ex.check(str(dest), str(tmp_path / "run"), str(write_jsonl(tmp_path / "d.jsonl", [{"messages": [
        *msgs, {"role": "assistant", "content": "嗨"}]}])))["identical"] == 1  # fmt: skip
    with pytest.raises(UserError, match="a full fine-tune exports its own weights as saved; drop --model and --dtype"):
        ex.export(str(tmp_path / "run"), str(tmp_path / "bf16"), merge=True, dtype="bf16")
    # `--adapter RUN` (chat, serve, eval) points to that export: it said `--model RUN/final/model`, a folder without
    # the tokenizer (one line now, an empty tokenizer and a traceback before)
    with pytest.raises(UserError, match=r"export it with its tokenizer \(weitiao export --adapter .*/run --out DIR\)"):
        locate(tmp_path / "run")
    with pytest.raises(UserError, match=r"no tokenizer files"):
        load_tokenizer(str(final / "model"))
    assert len(load_tokenizer(str(dest))) == len(tokenizer)
    with pytest.raises(UserError, match=rf"give it as the model \(--model {dest}\) instead"):  # it holds one
        locate(dest)


def test_a_full_finetune_run_given_as_adapter_says_what_it_is(tmp_path):
    """`export`/`chat --adapter RUN` on a full fine-tune said 'no adapter_config.json': it now names the model dir."""
    from weitiao.errors import UserError
    from weitiao.models.load import locate

    (tmp_path / "run" / "final" / "model").mkdir(parents=True)
    (tmp_path / "run" / "final" / "model" / "config.json").write_text("{}")
    with pytest.raises(UserError, match=r"a full fine-tune, not an adapter; .*final/model is a whole Hugging Face"):
        locate(tmp_path / "run")
    (tmp_path / "merged").mkdir()  # `weitiao export --merge`'s folder (its marker): not called a full fine-tune
    (tmp_path / "merged" / "config.json").write_text("{}")
    (tmp_path / "merged" / ex.MARKER).write_text('{"merged": true}')
    with pytest.raises(UserError, match=r"merged: a merged export, not an adapter; .*merged is a whole Hugging Face"):
        locate(tmp_path / "merged")
    (tmp_path / "empty").mkdir()  # negative control: a folder with neither
    with pytest.raises(UserError, match="no adapter_config.json"):
        locate(tmp_path / "empty")


def test_merging_into_a_base_other_than_the_trained_one_is_said(tiny_model_dir, chat_file, tmp_path):
    """A base retrained or edited at its path (or another --model) got the adapter merged into weights it never saw,
    unsaid: the run's inputs.json fingerprint is compared (a copy of the same files says nothing)."""
    import shutil

    run = tmp_path / "run"
    over = [f"model.path={tiny_model_dir}", f"data.train=[{chat_file}]", f"train.out={run}", "train.max_steps=1"]
    sft.run(load_config(sft.SFTConfig, None, [*over, "train.progress=false", "train.tensorboard=false"]))
    same, other = tmp_path / "same", tmp_path / "other"
    shutil.copytree(tiny_model_dir, same)
    shutil.copytree(tiny_model_dir, other)
    w = load_model(ModelSpec(path=str(other)))
    with torch.no_grad():
        w.model.embed_tokens.weight[0] += 1  # retrained in place, say
    w.save_pretrained(other)

    def notes(dest) -> str:  # what `weitiao export` and the console's export print after it
        return "\n".join(ex.serve_notes(dest))

    for k, base in enumerate((None, str(same))):
        assert "warning" not in notes(ex.export(str(run), str(tmp_path / f"m{k}"), merge=True, model=base))
    said = notes(ex.export(str(run), str(tmp_path / "m2"), merge=True, model=str(other)))
    assert f"warning: --model {other} is not what the run trained on" in said
    said = notes(ex.export(str(run), str(tmp_path / "a2"), model=str(other)))  # adapter only: its serve line names it
    assert "the export is for a base it never saw" in said
    assert "warning" not in notes(ex.export(str(run), str(tmp_path / "a3"), model=str(same)))  # a copy of the base
    # The adapter export's adapter_config.json named the training base, so peft's AutoPeftModel (and anything
    # reading base_model_name_or_path) loaded that one, not --model's: it names --model's now.
    named = {
        k: json.loads((tmp_path / k / "adapter_config.json").read_text())["base_model_name_or_path"]
        for k in ("a2", "a3")
    }
    assert named == {"a2": str(other), "a3": str(same)}
    from peft import AutoPeftModelForCausalLM

    loaded = AutoPeftModelForCausalLM.from_pretrained(tmp_path / "a2")
    assert torch.equal(loaded.get_base_model().model.embed_tokens.weight[0], w.model.embed_tokens.weight[0])
    ex.export(str(run), str(tmp_path / "a4"))  # without --model: the recorded base, as trained
    assert json.loads((tmp_path / "a4" / "adapter_config.json").read_text())["base_model_name_or_path"] == str(
        tiny_model_dir
    )


def test_chat_serve_and_eval_say_a_base_other_than_the_trained_one(tiny_model_dir, chat_file, tmp_path, capsys):
    """`chat`, `serve` and `eval gen` put a run's adapter on a base retrained at its path (or another --model) without
    a word, where export warned: they say it now; the trained base or a copy of it says nothing."""
    import shutil

    from weitiao.infer.chat import load_adapters, load_chat_model

    base, run, same = tmp_path / "base", tmp_path / "run", tmp_path / "same"
    shutil.copytree(tiny_model_dir, base)
    shutil.copytree(tiny_model_dir, same)
    over = [f"model.path={base}", f"data.train=[{chat_file}]", f"train.out={run}", "train.max_steps=1"]
    sft.run(load_config(sft.SFTConfig, None, [*over, "train.progress=false", "train.tensorboard=false"]))
    capsys.readouterr()
    for model in (None, str(same)):  # negative controls
        load_chat_model(model, str(run))
        assert "warning" not in capsys.readouterr().err
    w = load_model(ModelSpec(path=str(base)))
    with torch.no_grad():
        w.model.embed_tokens.weight[0] += 1  # retrained in place, say
    w.save_pretrained(base)
    load_chat_model(None, str(run))
    assert f"warning: the base {base} is not what the run trained on" in capsys.readouterr().err
    load_adapters(None, {"a": str(run)}, None)  # serve's --adapter a=RUN
    assert f"warning: --adapter a: the base {base} is not what the run trained on" in capsys.readouterr().err
    load_chat_model(str(same), str(run))  # --model the trained base: silent again
    assert "warning" not in capsys.readouterr().err


def test_an_adapter_export_keeps_the_record_of_the_base_it_trained_on(tiny_model_dir, chat_file, tmp_path, capsys):
    """An adapter export lost its run's inputs.json: served, chatted or continued (lora.init_from) on a base retrained
    at its path or another --model it said nothing, where the run itself warned (refused, continued). The export
    carries the run's base record now; the trained base or a copy of it says nothing."""
    import os
    import shutil

    from conftest import serve_process

    from weitiao.errors import UserError
    from weitiao.infer.chat import load_adapters, load_chat_model
    from weitiao.models.continued import refuse_other_base

    base, run, same = tmp_path / "base", tmp_path / "run", tmp_path / "same"
    shutil.copytree(tiny_model_dir, base)
    shutil.copytree(tiny_model_dir, same)
    over = [f"model.path={base}", f"data.train=[{chat_file}]", f"train.out={run}", "train.max_steps=1"]
    sft.run(load_config(sft.SFTConfig, None, [*over, "train.progress=false", "train.tensorboard=false"]))
    lora = ex.export(str(run), str(tmp_path / "lora"))
    assert json.loads((lora / "inputs.json").read_text()) == json.loads((run / "inputs.json").read_text())
    capsys.readouterr()
    for model in (None, str(same)):  # negative controls: the trained base, a copy of it
        load_chat_model(model, str(lora))
        assert "warning" not in capsys.readouterr().err
        refuse_other_base(model or str(base), str(lora))
    w = load_model(ModelSpec(path=str(base)))
    with torch.no_grad():
        w.model.embed_tokens.weight[0] += 1  # retrained in place, say
    w.save_pretrained(base)
    said = f"the base {base} is not what the run trained on ({lora / 'inputs.json'}: model.path "
    load_chat_model(None, str(lora))
    assert f"warning: {said}" in capsys.readouterr().err
    load_adapters(None, {"a": str(lora)}, None)  # serve's --adapter a=EXPORT
    assert f"warning: --adapter a: {said}" in capsys.readouterr().err
    with pytest.raises(UserError, match="lora.init_from"):
        refuse_other_base(str(base), str(lora))
    # a real `weitiao serve --model BASE --adapter EXPORT` says it at start
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    with serve_process(base, "--adapter", str(lora), env=env) as (proc, _):
        pass
    out = proc.stdout.read().decode()
    assert f"warning: --model {base} is not what the run trained on ({lora / 'inputs.json'}" in out, out
    load_chat_model(str(same), str(lora))  # --model a copy of the trained base: silent again
    assert "warning" not in capsys.readouterr().err
    # --model another base: the export is for that one, which the run's record does not describe (export warned)
    assert not (ex.export(str(run), str(tmp_path / "other"), model=str(base)) / "inputs.json").exists()
    assert (ex.export(str(run), str(tmp_path / "copy"), model=str(same)) / "inputs.json").is_file()


def test_adapter_and_merged_exports_take_the_same_generation_config(tiny_model_dir, chat_file, tmp_path):
    """`--model OTHER`: the merged export took OTHER's generation_config.json (its sampling settings), the adapter
    export the training base's, so one adapter served two ways sampled differently. Both now take the named
    model's (a model without the file: what its config.json implies), with training's stop ids; without --model
    both the training base's."""
    import json
    import shutil

    run = tmp_path / "run"
    over = [f"model.path={tiny_model_dir}", f"data.train=[{chat_file}]", f"train.out={run}", "train.max_steps=1"]
    sft.run(load_config(sft.SFTConfig, None, [*over, "train.progress=false", "train.tensorboard=false"]))
    other, bare = tmp_path / "other", tmp_path / "bare"
    shutil.copytree(tiny_model_dir, other)
    gen = json.loads((other / "generation_config.json").read_text())
    (other / "generation_config.json").write_text(json.dumps({**gen, "do_sample": True, "temperature": 0.3}))
    shutil.copytree(tiny_model_dir, bare)
    (bare / "generation_config.json").unlink()

    def written(name: str, **kw) -> dict:
        return json.loads((ex.export(str(run), str(tmp_path / name), **kw) / "generation_config.json").read_text())

    stops = json.loads((run / "final" / "adapter" / "generation_config.json").read_text())["eos_token_id"]
    for k, model in enumerate((str(other), str(bare), None)):
        adapter, merged = written(f"a{k}", model=model), written(f"m{k}", model=model, merge=True)
        assert adapter == merged
        assert (adapter.get("temperature"), adapter.get("do_sample")) == ((0.3, True) if k == 0 else (None, None))
        assert adapter["eos_token_id"] == stops  # training's stop ids either way


def test_a_tokenizer_with_ids_beyond_the_embedding_is_said_and_refused_for_gguf(tmp_path, tokenizer):
    """A tokenizer holding tokens the model has no embedding row for (added to the tokenizer only) was exported as
    it was, silently; --gguf stopped after the merge on the converter's `assert max(tokenizer.vocab.values()) <
    vocab_size`. Now a warning naming both sizes and the tokens, and --gguf refused before any work."""
    import copy

    from conftest import save_tiny_model

    from weitiao.errors import UserError

    bigger = copy.deepcopy(tokenizer)
    bigger.add_special_tokens({"additional_special_tokens": ["<tool>"]})
    for name, tok in (("same", tokenizer), ("bigger", bigger)):
        final = tmp_path / name / "final"
        save_tiny_model(final / "model", tokenizer, hidden=64)  # embeds len(tokenizer) ids
        tok.save_pretrained(final / "tokenizer")
    n = len(tokenizer)
    assert not [x for x in ex.serve_notes(ex.export(str(tmp_path / "same"), str(tmp_path / "a"))) if "warn" in x]
    notes = ex.serve_notes(ex.export(str(tmp_path / "bigger"), str(tmp_path / "b")))
    assert notes[0].startswith(f"warning: the tokenizer has {n + 1} token ids but the model embeds {n} (ids 0 to "
                               f"{n - 1}): '<tool>' (id {n}) cannot be read by the model")  # fmt: skip
    with pytest.raises(UserError, match=rf"--gguf f16: the tokenizer has {n + 1} token ids but the model embeds {n}"):
        ex.export(str(tmp_path / "bigger"), str(tmp_path / "c"), merge=True, gguf="f16")
    assert not (tmp_path / "c").exists()
