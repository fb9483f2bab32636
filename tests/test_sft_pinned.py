"""Pinned SFT losses (torchtune's habit): the logged train loss of steps 1–5 on the tiny model.

Defaults users get — LoRA r 16 / dropout 0.05, packing on, seed 42 — with odd sizes: 19 train rows,
micro_batch_size 2 × grad_accum 2, so micro-batches end short and step 5 runs into the second
epoch. A change in masking, packing, loss normalization, data order, dropout RNG or the optimizer
step moves these numbers; update them only for a change that is meant to move them.
"""

import pytest
import torch
from conftest import write_jsonl

from weitiao.config import load_config
from weitiao.recipes import sft
from weitiao.train.log import read_metrics

pytestmark = pytest.mark.slow

ROWS = [
    {"instruction": "今天天气怎么样？", "output": "挺好的，大晴天☀️"},
    {"instruction": "周末有什么安排？", "output": "在家躺着😂 你呢？"},
    {"instruction": "推荐一部电影吧", "output": "《流浪地球》不错哦👍", "system": "你是朋友"},
    {"instruction": "怎么做番茄炒蛋？", "output": "先炒蛋再炒番茄，最后一起翻炒，加点盐就好啦。"},
]

# train loss of steps 1-5, the epoch of each step, and the final eval loss
PINNED = {
    "packed": ([6.132942, 5.679292, 5.476477, 5.309028, 5.236253], [0, 0, 0, 1, 1], 5.186319),
    # re-pinned when an epoch's last step began taking the micro-batch left over (step 4 here; it was dropped)
    "padded": ([6.116371, 5.581035, 5.642814, 5.514539, 5.354893], [0, 0, 0, 0, 1], 5.244472),
    "qlora": ([6.145694, 5.687353, 5.475965, 5.331493, 5.249656], [0, 0, 0, 1, 1], 5.217021),
}
EXTRA = {"packed": [], "padded": ["data.packing=false"], "qlora": ["model.quant=4bit"]}


def run_losses(tiny_model_dir, tmp_path, *extra):
    """Train 5 steps on the CPU in fp32 (GPU kernels would round differently) → losses, epochs, summary."""
    rows = [{**ROWS[i % 4], "instruction": f"{ROWS[i % 4]['instruction']} #{i}"} for i in range(21)]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    cfg = load_config(
        sft.SFTConfig,
        None,
        [
            f"model.path={tiny_model_dir}",
            "model.dtype=fp32",
            f"data.train=[{data}]",
            "data.eval_split=0.2",  # 4 held out, 17 trained: odd against 2 × 2
            "data.max_len=64",
            f"train.out={tmp_path / 'run'}",
            "train.progress=false",
            "train.tensorboard=false",
            "train.micro_batch_size=2",
            "train.grad_accum=2",
            "train.max_steps=5",
            "train.lr=5e-3",
            *extra,
        ],
    )
    summary = sft.run(cfg)
    train = read_metrics(tmp_path / "run", "train")
    return [r["loss"] for r in train], [r["epoch"] for r in train], summary


@pytest.fixture(autouse=True)
def cpu_only(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # sft.run then trains on the CPU


@pytest.mark.parametrize("variant", list(PINNED))
def test_pinned_sft_losses(tiny_model_dir, tmp_path, variant):
    losses, epochs, summary = run_losses(tiny_model_dir, tmp_path, *EXTRA[variant])
    want_losses, want_epochs, want_eval = PINNED[variant]
    assert losses == pytest.approx(want_losses, rel=1e-3)
    assert epochs == want_epochs
    assert summary["eval_loss"] == pytest.approx(want_eval, rel=1e-3) == summary["eval_loss_answer"]


def test_pins_see_lora_dropout(tiny_model_dir, tmp_path):
    """Control: the pins are tight enough to see dropout 0.05 → 0 (the default matters)."""
    losses, _, _ = run_losses(tiny_model_dir, tmp_path, "lora.dropout=0")
    assert losses[0] == pytest.approx(PINNED["packed"][0][0], rel=1e-3)  # step 1: same weights, lower noise
    assert losses != pytest.approx(PINNED["packed"][0], rel=1e-3)
