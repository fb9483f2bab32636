"""Continuing an adapter (`lora.init_from`) in SFT, DPO, KTO and RM: the base weights and the chat template it was
trained with are checked before anything is written (weitiao/models/continued.py; PPO's own: test_ppo)."""

from __future__ import annotations

import json

import pytest
from conftest import CHAT_ROWS, build_tokenizer, save_tiny_model, write_jsonl
from test_dpo import make_pairs
from test_kto import feedback_rows

from weitiao.config import load_config
from weitiao.errors import UserError
from weitiao.models.continued import BASE_KEY
from weitiao.models.digest import weights_digest
from weitiao.recipes import dpo, kto, rm, sft

pytestmark = pytest.mark.slow

QUIET = ["train.progress=false", "train.tensorboard=false", "train.max_steps=1", "train.micro_batch_size=2"]
RECIPES = {"sft": (sft, "SFTConfig", "chat"), "dpo": (dpo, "DPOConfig", "pairs"), "kto": (kto, "KTOConfig", "kto"),
           "rm": (rm, "RMConfig", "pairs")}  # fmt: skip


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """Two bases of one shape and tokenizer, neither with a chat template (seeds 0 and 1: other weights), the data of
    each recipe, and an SFT adapter trained on base A with data.template=chatml."""
    root = tmp_path_factory.mktemp("continued")
    tok = build_tokenizer(chat_template=None)
    for name, seed in (("a", 0), ("b", 1)):
        save_tiny_model(root / name, tok, hidden=64, seed=seed)
    write_jsonl(root / "chat.jsonl", [dict(r) for r in CHAT_ROWS for _ in range(2)])
    write_jsonl(root / "pairs.jsonl", make_pairs(8))
    write_jsonl(root / "kto.jsonl", feedback_rows(8))
    sft.run(config("sft", root, "a", "sft", "data.template=chatml"))
    return root


def config(recipe: str, root, base: str, out: str, *extra: str):
    module, cls, data = RECIPES[recipe]
    paths = [f"model.path={root / base}", f"data.train=[{root / data}.jsonl]", f"train.out={root / out}"]
    return load_config(getattr(module, cls), None, [*paths, *QUIET, *extra])


def test_a_lora_run_records_its_base_weights(project):
    """What a later lora.init_from compares: the digest of model.path's weights in the run's inputs.json."""
    inputs = json.loads((project / "sft" / "inputs.json").read_text())
    assert inputs[BASE_KEY] == weights_digest(project / "a") != weights_digest(project / "b")


@pytest.mark.parametrize("recipe", ["sft", "dpo", "kto", "rm"])
def test_an_adapter_trained_on_another_template_is_refused_under_auto(project, recipe):
    """The chatml adapter continued with data.template left at auto on a base without a chat template: every recipe
    but PPO printed a note ('rows render in weitiao's plain format') and trained it on plain, a format it never saw,
    and saved plain as the tuned model's template. Now one line and nothing written, as PPO."""
    module = RECIPES[recipe][0]
    out = f"{recipe}-auto"
    with pytest.raises(UserError, match=r"^data.template: auto renders chats with plain here, but the adapter at "
                       r"lora.init_from \(.*/sft/final/adapter\) was trained on another rendering \(chatml\); set "
                       r"data.template=chatml, or data.template=plain to train it on plain knowingly$"):  # fmt: skip
        module.run(config(recipe, project, "a", out, f"lora.init_from={project / 'sft'}"))
    assert not (project / out).exists()


def test_a_template_set_explicitly_is_taken_as_meant(project):
    """Either fix of the line trains: the adapter's template, or the new one knowingly."""
    for name in ("chatml", "plain"):
        dpo.run(
            config("dpo", project, "a", f"dpo-{name}", f"lora.init_from={project / 'sft'}", f"data.template={name}")
        )
        assert (project / f"dpo-{name}" / "final" / "adapter").is_dir()


@pytest.mark.parametrize("recipe", ["sft", "dpo", "kto", "rm"])
def test_an_adapter_continued_on_another_base_of_its_shapes_is_refused(project, recipe):
    """Base B has base A's shapes, so peft loads A's adapter on it without a word and every recipe trained on."""
    module = RECIPES[recipe][0]
    out = f"{recipe}-other-base"
    with pytest.raises(UserError, match=rf"^lora.init_from: the adapter at .*/sft/final/adapter was trained on other "
                       rf"base weights than model.path {project / 'b'} holds \(digest \w+ in .*/sft/inputs.json, \w+ "
                       rf"here\).* set model.path to the base it trained on \({project / 'a'}\), or drop "
                       "lora.init_from"):  # fmt: skip
        module.run(config(recipe, project, "b", out, f"lora.init_from={project / 'sft'}", "data.template=chatml"))
    assert not (project / out).exists()


def test_ppo_refuses_another_base_too(project):
    """PPO shares the check (its template half: test_ppo)."""
    from test_ppo import config as ppo_config

    from weitiao.recipes import ppo

    prompts = write_jsonl(project / "prompts.jsonl", [{"prompt": f"今天天气怎么样？{i}"} for i in range(8)])
    cont = (f"lora.init_from={project / 'sft'}", "data.template=chatml", "train.max_steps=1")
    with pytest.raises(UserError, match=rf"^lora.init_from: .* other base weights than model.path {project / 'b'}"):
        ppo.run(ppo_config(project / "b", prompts, project / "ppo-other-base", *cont, lora=()))
    assert not (project / "ppo-other-base").exists()


def test_a_checkpoint_adapter_reads_its_runs_record(project):
    """checkpoints/step-N/adapter is compared with the record of the run it belongs to."""
    step = next((project / "sft" / "checkpoints").glob("step-*"))
    with pytest.raises(UserError, match="^lora.init_from: the adapter at .*step-.* was trained on other base weights"):
        sft.run(config("sft", project, "b", "sft-step", f"lora.init_from={step}", "data.template=chatml"))


def test_an_adapter_without_a_record_gets_a_note(project, capsys):
    """A run from before the record (or a bare peft adapter): one note, not a refusal."""
    import shutil

    old = project / "old"
    shutil.copytree(project / "sft", old)
    inputs = json.loads((old / "inputs.json").read_text())
    del inputs[BASE_KEY]
    (old / "inputs.json").write_text(json.dumps(inputs))
    capsys.readouterr()
    sft.run(config("sft", project, "b", "sft-old", f"lora.init_from={old}", "data.template=chatml"))
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note: lora.init_from")]
    want = (f"note: lora.init_from: {old}/final/adapter records no digest of its base (a bare peft adapter, or trained "
            "before weitiao had one): it is taken to be trained on model.path, unchecked")  # fmt: skip
    assert notes == [want]
