"""LoRA calculator: counts equal peft's on meta-device models of real configs; FLOPs equal torch's counter.

The chapter's Q144 model ("96 blocks, each with a 12288×12288 weight matrix") is read as: every
attention projection q, k, v, o of a block is 12288×12288 (96 heads × 128, no GQA). The chapter puts
LoRA on q and v, so 2 adapted matrices per block; we also check one matrix per block and all four.
"""

import json

import pytest
import torch
from typer.testing import CliRunner

from weitiao.calc.commands import app
from weitiao.calc.lora import PRESETS, flops_per_token, load_shape, lora_report, resolve_targets, shape_from_flags
from weitiao.errors import UserError


def peft_count(preset: str, targets, r: int = 8, dora: bool = False) -> tuple[int, int]:
    """(trainable, base total) as peft reports them on the real architecture built on the meta device."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    arch, kw = PRESETS[preset]
    with torch.device("meta"):  # adapters too: nothing is allocated or initialized
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(arch, **kw))
        base = sum(p.numel() for p in model.parameters())
        peft_model = get_peft_model(model, LoraConfig(r=r, target_modules=targets, use_dora=dora))
    trainable, _ = peft_model.get_nb_trainable_parameters()
    return trainable, base


CASES = [
    ("llama-3-70b", "all-linear", "all-linear"),
    ("llama-3-70b", "q,v", ["q_proj", "v_proj"]),
    ("qwen2.5-7b", "k,v", ["k_proj", "v_proj"]),  # GQA: 3584 → 4 × 128 = 512
    ("qwen2.5-7b", "mlp", ["gate_proj", "up_proj", "down_proj"]),  # non-square 3584 ↔ 18944
    ("chapter-96x12288", "attn", ["q_proj", "k_proj", "v_proj", "o_proj"]),
]


@pytest.mark.parametrize("preset,ours,theirs", CASES, ids=[f"{c[0]}:{c[1]}" for c in CASES])
def test_counts_equal_peft(preset, ours, theirs):
    shape = load_shape(preset)
    rep = lora_report(shape, 8, ours)
    trainable, base = peft_count(preset, theirs)
    assert rep.lora_params == trainable
    assert shape.total_params == base


def test_dora_adds_one_magnitude_per_output():
    shape = load_shape("qwen2.5-7b")
    assert (
        lora_report(shape, 4, "q,k", dora=True).lora_params
        == peft_count("qwen2.5-7b", ["q_proj", "k_proj"], 4, True)[0]
    )


def test_flags_match_the_real_config():
    """--layers/--hidden/... give the same modules and totals as the real Llama-3-70B config."""
    flags = shape_from_flags(80, 8192, 28672, 64, 8, vocab=128256)
    real = load_shape("llama-3-70b")
    assert flags.total_params == real.total_params == 70_553_706_496
    for t in ("all-linear", "q,v", "mlp", "k"):
        assert lora_report(flags, 16, t).lora_params == lora_report(real, 16, t).lora_params
    k = resolve_targets(flags, "k")[0]
    assert (k.in_features, k.out_features) == (8192, 1024)  # GQA: 8 kv heads × 128


def test_chapter_q144_numbers():
    d, L, r = 12288, 96, 8
    blocks = shape_from_flags(L, d)  # the chapter's blocks only: no vocabulary
    assert (blocks.heads, blocks.kv_heads, blocks.intermediate) == (96, 96, 32768)
    per_matrix = 2 * r * d
    assert per_matrix == 196_608
    one = lora_report(blocks, r, "q")  # "one 12288×12288 matrix per block"
    qv = lora_report(blocks, r, "q,v")  # the chapter's choice
    qkvo = lora_report(blocks, r, "q,k,v,o")
    assert one.lora_params == L * per_matrix == 18_874_368
    assert qv.lora_params == 2 * L * per_matrix == 37_748_736  # chapter: ≈ 3775 万
    assert qkvo.lora_params == 4 * L * per_matrix == 75_497_472
    assert qv.full_same_modules == 2 * L * d * d == 28_991_029_248
    full_qkvo = qv.full_baselines["attention q,k,v,o"]
    assert full_qkvo == 4 * L * d * d == 57_982_058_496  # chapter: ≈ 580 亿
    assert round(qv.lora_params / full_qkvo, 6) == 0.000651  # chapter: ≈ 0.065% (q,v vs q,k,v,o)
    assert round(qv.lora_params / qv.full_same_modules, 5) == 0.00130  # like for like: 0.13%
    # FLOPs per token at T = 2048: N = 96 · (4d² + 3·d·32768) = 96 · 12d²
    n, T = L * 12 * d * d, 2048
    attn = 12 * L * d * T
    assert blocks.matmul_params == n
    assert qv.flops_per_token["full"]["model"] == 6 * n + attn
    assert qv.flops_per_token["lora"]["model"] == 4 * n + 6 * qv.lora_params + attn
    assert qv.flops_per_step["lora"] == (4 * n + 6 * qv.lora_params + attn) * T
    # the preset adds GPT-3's tied 50257-token vocabulary: ~175 B parameters
    assert lora_report(load_shape("chapter-96x12288"), r, "q,v").lora_params == qv.lora_params
    assert load_shape("chapter-96x12288").total_params == n + 50257 * d + (2 * L + 1) * d


def tiny_llama(kv_heads=2):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        hidden_size=64,
        intermediate_size=176,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=kv_heads,
        vocab_size=300,
        attn_implementation="eager",
        tie_word_embeddings=False,
    )
    return cfg, LlamaForCausalLM(cfg)


def counted_flops(model, tokens: torch.Tensor) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        model(input_ids=tokens, labels=tokens).loss.backward()
    return fc.get_total_flops()


def test_flops_equal_torch_counter_full_and_lora(tmp_path):
    """Forward + backward FLOPs of a tiny Llama (GQA) counted by torch equal the formula."""
    from peft import LoraConfig, get_peft_model

    cfg, model = tiny_llama()
    cfg_file = tmp_path / "config.json"
    cfg_file.write_text(json.dumps(cfg.to_dict()))
    shape = load_shape(str(cfg_file))
    b, T = 2, 32
    tokens = torch.randint(0, 300, (b, T))
    assert counted_flops(model, tokens) == b * T * flops_per_token(shape, "full", 0, T)["model"]

    r = 4
    lora = get_peft_model(model, LoraConfig(r=r, target_modules="all-linear", lora_dropout=0.0))
    n_lora = lora_report(shape, r, "all-linear").lora_params
    formula = b * T * flops_per_token(shape, "lora", n_lora, T)["model"]
    # The one known departure: layer 0's q/k/v (base and lora_A) read the frozen embedding, so torch
    # computes no input gradient for them.
    qkv0 = sum(
        k.in_features * k.out_features + r * k.in_features
        for k in shape.linears
        if k.name in ("q_proj", "k_proj", "v_proj")
    )
    assert counted_flops(lora, tokens) == formula - 2 * b * T * qkv0


def test_unknown_target_and_bad_input_are_user_errors():
    with pytest.raises(UserError, match="gate_proj not in"):
        resolve_targets(shape_from_flags(2, 256, mlp="plain"), "gate")
    with pytest.raises(UserError, match="nor is it a preset"):
        load_shape("no/such-model-anywhere")
    with pytest.raises(UserError, match="rank"):
        lora_report(shape_from_flags(2, 256), 0, "q")


def test_cli_table_and_json():
    runner = CliRunner()
    res = runner.invoke(app, ["lora", "--layers", "96", "--hidden", "12288", "--r", "8", "--targets", "q,v"])
    assert res.exit_code == 0, res.output
    assert "37,748,736" in res.output and "0.0651%" in res.output
    res = runner.invoke(app, ["lora", "--model", "qwen2.5-7b", "--targets", "q,k,v,o", "--json"])
    data = json.loads(res.output)
    assert data["lora_params"] == 16 * 28 * ((3584 + 3584) * 2 + (3584 + 512) * 2)
    res = runner.invoke(app, ["lora"])
    assert isinstance(res.exception, UserError)


def test_memory_table_of_a_tiny_model_shows_its_sizes():
    """Every memory cell of a tiny model printed 0.0 GiB (one decimal); below 1 GiB two significant digits."""
    res = CliRunner().invoke(
        app, ["lora", "--layers", "2", "--hidden", "64", "--vocab", "1000", "--intermediate", "128"]
    )
    assert res.exit_code == 0, res.output
    table = res.output.split("weights + gradients")[1].split("FLOPs")[0]
    rows = [line for line in table.splitlines() if line.startswith("│ full fp32")]
    cells = [c.strip() for c in rows[0].split("│")[2:-1]]
    assert cells == ["0.00078", "0.00078", "0.0016", "0.0031", "0.0004", "0.002"], cells


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"hidden_size": "abc"}, "hidden_size: expected a positive integer, got 'abc'"),
        ({"num_attention_heads": 0}, "num_attention_heads: must be positive, got 0"),
        ({"hidden_size": 250, "num_attention_heads": 3}, "hidden_size 250 is not divisible by num_attention_heads 3"),
    ],
)
def test_bad_sizes_in_a_model_dir_are_user_errors(tmp_path, config, message):
    """A model dir's config.json is checked before transformers sees it (it raised bare TypeErrors)."""
    base = {"model_type": "llama", "hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
            "intermediate_size": 256, "vocab_size": 100}  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps({**base, **config}))
    with pytest.raises(UserError, match=f"config.json: {message}"):
        load_shape(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps(base))  # control: the same dir with good sizes
    load_shape.cache_clear()
    assert load_shape(str(tmp_path)).hidden == 128


def test_flag_sizes_are_checked():
    with pytest.raises(UserError, match="--hidden 250 is not divisible by --heads 3"):
        shape_from_flags(2, 250, heads=3)
    with pytest.raises(UserError, match="--kv-heads -1: must be positive"):
        shape_from_flags(2, 256, heads=2, kv_heads=-1)
    assert shape_from_flags(2, 250, heads=5).head_dim == 50  # control: divisible


def test_size_flags_beside_a_model_are_refused():
    """--model qwen2.5-7b --layers 10 (or --vocab, --mlp plain, ...) printed 28 layers: they were ignored."""
    runner = CliRunner()
    res = runner.invoke(app, ["lora", "--model", "qwen2.5-7b", "--layers", "10", "--vocab", "5", "--json"])
    assert isinstance(res.exception, UserError) and str(res.exception).startswith("--layers, --vocab: --model qwen")
    res = runner.invoke(app, ["lora", "--model", "qwen2.5-7b", "--mlp", "plain"])
    assert isinstance(res.exception, UserError) and "--mlp" in str(res.exception)
    res = runner.invoke(app, ["lora", "--model", "qwen2.5-7b", "--vocab", "0", "--json"])  # control: the defaults
    assert res.exit_code == 0 and json.loads(res.output)["total_params"] > 7e9
