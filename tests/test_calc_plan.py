"""Resource planner: the chapter's 70B QLoRA scenario, hand-computed memory, measured activations, calibration."""

import json
import math
from dataclasses import replace

import pytest
import torch
from typer.testing import CliRunner

from weitiao.calc.commands import app
from weitiao.calc.lora import flops_per_token, load_shape, lora_report
from weitiao.calc.plan import GPUS, PlanInput, calibrate, head_bytes, layer_activation_bytes, plan
from weitiao.errors import UserError

GIB = 1024**3
TINY = dict(
    model_type="llama",
    hidden_size=256,
    intermediate_size=688,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=1000,
    tie_word_embeddings=False,
)


@pytest.fixture
def tiny_config(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(TINY))
    return str(path)


def test_chapter_scenario():
    """70B QLoRA, 20k × 512 tokens, 8 × A100 80GB, 1-3 epochs: where the chapter's 8-24 h sits."""
    rep = plan(PlanInput())
    shape = load_shape("llama-3-70b")
    assert rep.tokens_per_epoch == 20000 * 512 and rep.global_batch == 64 and rep.steps_per_epoch == 313
    n_lora = lora_report(shape, 16, "all-linear").lora_params
    assert rep.trainable_params == n_lora == 207_093_760
    f = flops_per_token(shape, "lora", n_lora, 512)["model"]
    assert f == 4 * shape.matmul_params + 6 * n_lora + 12 * 80 * 8192 * 512
    peak = 8 * 312e12
    assert rep.hours["1"] == pytest.approx(10_240_000 * f / (0.25 * peak) / 3600)
    assert rep.hours["3"] == pytest.approx(3 * rep.hours["1"])
    assert 1.0 < rep.hours["1"] < 1.6  # ~1.3 h per epoch at 25% MFU
    c = rep.claim
    assert c["source"] == "chapter Q142" and c["hours"] == [8.0, 24.0] and c["position"] == "above"
    assert c["implied_mfu"][0] == pytest.approx(10_240_000 * f / (8 * 3600 * peak))  # ≈ 4%
    assert 0.035 < c["implied_mfu"][0] < 0.045
    # NF4+DQ base on every GPU (DDP): 68.4 B linear weights at 4.127 bits + 2.1 B bf16 embeddings/head
    q = shape.quantizable_params
    weights = (q * (4 + 8 / 64 + 32 / (64 * 256)) / 8 + (shape.total_params - q) * 2) / GIB
    assert rep.memory_gib["weights"] == pytest.approx(weights)
    assert 36 < weights < 38 and rep.fits and rep.memory_gib["total"] < 0.9 * 80
    assert rep.max_micro_batch >= 8  # 512-token rows: one 80 GB card would do, the chapter's "2 minimum" is cautious


def test_claim_inside_and_below():
    p = PlanInput()
    ours = plan(p).hours
    assert plan(p, claim=(ours["1"] * 0.9, ours["3"] * 1.1)).claim["position"] == "inside"
    assert plan(p, claim=(0.1, 0.2)).claim["position"] == "below"


def test_memory_by_hand_full_ddp(tiny_config):
    """Full fine-tuning without checkpointing, every byte counted by hand."""
    p = PlanInput(
        model=tiny_config, method="full", seq_len=128, micro_batch=4, checkpointing=False, gpus=1, gpu="rtx4090"
    )
    rep = plan(p)
    h, i, kv, L, V = 256, 688, 128, 2, 1000
    n = 2 * V * h + L * (h * h * 2 + h * kv * 2 + 3 * h * i + 2 * h) + h
    assert rep.total_params == n
    tokens = 4 * 128
    layer = 8 * h + 4 * h + 4 * kv + 6 * i + 8 * h + 2 * i
    expect = {
        "weights": 2 * n,
        "adapters": 0,
        "grads": 2 * n,
        "optimizer": 12 * n,
        "activations": tokens * L * layer,
        "logits": tokens * (6 * h + 10 * V),
        "workspace": GIB,
    }
    for k, v in expect.items():
        assert rep.memory_gib[k] == pytest.approx(v / GIB), k
    assert rep.memory_gib["total"] == pytest.approx(sum(expect.values()) / GIB)


def test_fsdp_shards_and_checkpointing_shrinks():
    ddp = plan(PlanInput(method="lora", gpus=8))
    fsdp = plan(PlanInput(method="lora", gpus=8, parallel="fsdp"))
    shape = load_shape("llama-3-70b")
    layer = shape.quantizable_params * 2 / 80
    assert fsdp.memory_gib["weights"] == pytest.approx((ddp.memory_gib["weights"] * GIB / 8 + 2 * layer) / GIB)
    assert fsdp.memory_gib["optimizer"] == pytest.approx(ddp.memory_gib["optimizer"] / 8)
    assert not ddp.fits and fsdp.fits  # 141 GB of bf16 weights need sharding on 80 GB cards
    no_ckpt = plan(PlanInput(checkpointing=False))
    assert no_ckpt.memory_gib["activations"] > 10 * plan(PlanInput()).memory_gib["activations"]
    assert no_ckpt.hours == plan(PlanInput()).hours  # MFU counts model FLOPs; recompute shows in HFU


def saved_bytes_per_token(model, vocab: int, b: int = 2, s: int = 64) -> float:
    """Bytes autograd keeps for backward (parameters excluded), per token."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in params:
            seen[st.data_ptr()] = st.nbytes()
        return t

    x = torch.randint(0, vocab, (b, s))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(input_ids=x, labels=x)
    out.loss.backward()
    return sum(seen.values()) / (b * s)


@pytest.mark.parametrize(
    "method,targets,dropout",
    [("full", None, 0.0), ("lora", "all-linear", 0.0), ("lora", ["q_proj", "v_proj"], 0.05)],
)
def test_activation_formula_matches_saved_tensors(tiny_config, method, targets, dropout):
    """Per-layer activation bytes of the formula vs what autograd really keeps (bf16, SDPA)."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = load_shape(tiny_config)

    def build(layers: int):
        torch.manual_seed(0)
        cfg = LlamaConfig(**{**TINY, "num_hidden_layers": layers}, attn_implementation="sdpa")
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
        if method == "lora":
            model = get_peft_model(model, LoraConfig(r=8, target_modules=targets, lora_dropout=dropout))
        return model

    # layer 0 reads the frozen embedding (keeps less): measure the difference between 3 and 1 layers
    per_layer = (saved_bytes_per_token(build(3), 1000) - saved_bytes_per_token(build(1), 1000)) / 2
    names = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    adapted = (
        sum(
            k.in_features * k.count
            for k in shape.linears
            if targets == "all-linear" and k.name in names or targets and k.name in targets
        )
        // shape.layers
    )
    formula = layer_activation_bytes(shape, method, adapted, dropout > 0)
    assert per_layer == pytest.approx(formula, rel=0.03)
    assert head_bytes(shape, method) > 10 * 1000


def test_calibrate_reads_a_run(tmp_path, tiny_model_dir):
    """A run dir as weitiao sft writes it: config.yaml + metrics.jsonl → implied MFU."""
    from weitiao.config import dump_config
    from weitiao.recipes.sft import SFTConfig
    from weitiao.train.log import MetricsLog

    run = tmp_path / "run"
    run.mkdir()
    cfg = SFTConfig.model_validate(
        {"model": {"path": str(tiny_model_dir)}, "lora": {"r": 8}, "data": {"train": ["x.jsonl"], "max_len": 256}}
    )
    (run / "config.yaml").write_text(dump_config(cfg))
    log = MetricsLog(run, tensorboard=False)
    log.log("data", 0, world=2)
    for step, tps in enumerate([50.0, 200.0, 210.0, 190.0], 1):
        log.log("train", step, loss=1.0, tokens_per_s=tps)
    log.close()
    cal = calibrate(run, peak_tflops=0.5)
    shape = load_shape(str(tiny_model_dir))
    n_lora = lora_report(shape, 8, "all-linear").lora_params
    f = flops_per_token(shape, "lora", n_lora, 256)["model"]
    assert cal.world == 2 and cal.tokens_per_s == 200.0 and cal.flops_per_token == f
    assert cal.mfu == pytest.approx(200 * f / (2 * 0.5e12))
    rep = plan(PlanInput(), calibration=cal)
    assert rep.mfu == cal.mfu and any("calibration run used" in n for n in rep.notes)
    assert plan(PlanInput(mfu=0.3), calibration=cal).mfu == 0.3  # an explicit --mfu wins
    with pytest.raises(UserError, match="no config.yaml"):
        calibrate(tmp_path, 1.0)


def test_cli_plan_table_json_and_errors():
    runner = CliRunner()
    res = runner.invoke(app, ["plan"], env={"COLUMNS": "160"})
    assert res.exit_code == 0, res.output
    assert "chapter Q142: 8-24 h" in res.output and "assumptions" in res.output and "fits" in res.output
    res = runner.invoke(app, ["plan", "--method", "full", "--gpus", "16", "--parallel", "fsdp", "--json"])
    data = json.loads(res.output)
    assert data["claim"] is None and data["inputs"]["method"] == "full"
    assert math.isclose(data["memory_gib"]["optimizer"], 12 * data["total_params"] / 16 / GIB)
    for bad in (["--gpu", "tpu"], ["--epochs", "3-1"], ["--method", "dpo"], ["--mfu", "1.5"]):
        assert isinstance(runner.invoke(app, ["plan", *bad]).exception, UserError), bad
    assert "h100-80g" in GPUS


@pytest.mark.parametrize(
    "args,message",
    [
        (["--method", "full", "--r", "64", "--targets", "q,v"], "--r, --targets: LoRA settings, unused by"),
        (["--method", "full", "--lora-dropout", "0"], "--lora-dropout: LoRA settings"),
        (["--calibrate-tflops", "100"], "--calibrate-tflops: the peak of a --calibrate RUN_DIR's devices"),
    ],
)
def test_cli_plan_refuses_options_its_mode_ignores(args, message):
    """They were accepted and ignored: a full fine-tuning plan printed the same numbers for any --r."""
    runner = CliRunner()
    res = runner.invoke(app, ["plan", "--model", "qwen2.5-7b", *args, "--json"])
    assert isinstance(res.exception, UserError) and str(res.exception).startswith(message)
    res = runner.invoke(app, ["plan", "--model", "qwen2.5-7b", "--method", "lora", *args[2:4], "--json"])  # control
    assert res.exit_code == 0, res.output


def test_gpu_memory_is_what_the_card_reports_in_gib():
    """The product name's GB is not GiB: a "48GB" L40S reports 46,068 MiB; the fit checks read GiB."""
    assert GPUS["l40s"].mem_gib == pytest.approx(44.99, abs=0.01) and GPUS["h100-80g"].mem_gib < 80
    assert GPUS["h200"].mem_gib == pytest.approx(140.4, abs=0.1) and GPUS["a100-80g"].mem_gib == 80


def test_calibrate_from_a_cpu_run_warns_and_plans(tmp_path, tiny_model_dir):
    """A CPU run gives an MFU of ~1e-8 against a GPU peak: the sensitivity table divided by
    round(mfu, 4) = 0; and its MFU must not pass silently into a 70B GPU plan."""
    from weitiao.config import dump_config
    from weitiao.recipes.sft import SFTConfig
    from weitiao.train.log import MetricsLog

    run = tmp_path / "run"
    run.mkdir()
    cfg = SFTConfig.model_validate({"model": {"path": str(tiny_model_dir)}, "data": {"train": ["x.jsonl"]}})
    (run / "config.yaml").write_text(dump_config(cfg))
    log = MetricsLog(run, tensorboard=False)
    log.log("run", 0, device="cpu", world=1)
    for step in (1, 2, 3):
        log.log("train", step, loss=1.0, tokens_per_s=900.0)
    log.close()
    cal = calibrate(run, peak_tflops=GPUS["a100-80g"].tflops)
    assert cal.device == "cpu" and 0 < cal.mfu < 1e-4
    rep = plan(PlanInput(), calibration=cal)  # the chapter's 70B QLoRA on 8 × A100
    assert rep.mfu == cal.mfu and all(math.isfinite(h) for h in rep.hours.values())
    warned = [n for n in rep.notes if "calibration run" in n]
    assert any("ran on cpu" in n for n in warned) and any("× fewer parameters" in n for n in warned), rep.notes
    # Negative control: the same run on a GPU of a similar model size gets no such notes.
    same = plan(PlanInput(model=str(tiny_model_dir), method="lora"), calibration=replace(cal, device="cuda"))
    assert not [n for n in same.notes if "calibration run" in n], same.notes
