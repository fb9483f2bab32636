"""loop.adamw: the fused AdamW kernel gives the single-tensor AdamW's updates (negative control: fused off)."""

import torch
from accelerate import Accelerator

from weitiao.train import loop
from weitiao.train.spec import TrainSpec


def test_fused_adamw_equals_plain_adamw():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.Linear(8, 3))
    model[0].weight.requires_grad_(False)  # frozen weights stay out, as a LoRA base
    ref = [p.detach().clone().requires_grad_() for p in model.parameters() if p.requires_grad]
    t = TrainSpec(weight_decay=0.1, betas=(0.8, 0.95))
    _, opt, params = loop.adamw(Accelerator(cpu=True), model, model, t, lr=1e-2)
    plain = torch.optim.AdamW(ref, lr=1e-2, betas=t.betas, weight_decay=0.1, foreach=False, fused=False)
    assert opt.defaults["fused"] and not plain.defaults["fused"]
    for _ in range(5):
        grads = [torch.randn_like(p) for p in params]
        for p, q, g in zip(params, ref, grads):
            p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        plain.step()
    for p, q in zip(params, ref):
        assert torch.allclose(p, q, atol=1e-6, rtol=1e-5)
