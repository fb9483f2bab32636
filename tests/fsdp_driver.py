"""Recipe runs under accelerate's FSDP2 on CPU (gloo), one after another in one process group;
launched by tests under torch.distributed.run:

python -m torch.distributed.run --nproc_per_node=2 tests/fsdp_driver.py '[["sft", [override, ...], {plugin}], ...]'

accelerate only turns FSDP on for accelerator devices: on CPU it silently keeps MULTI_CPU (DDP) and
ignores the plugin. torch's FSDP2 (fully_shard) does run on CPU with gloo, so this driver sets the
state accelerate would set on GPUs (and the environment `accelerate launch` exports for a
config's fsdp_cpu_ram_efficient_loading); everything after (prepare, clipping, state dicts) is
accelerate's. After each prepare every process appends to TRAIN_OUT.sharding.jsonl how many 4-bit
weights FSDP sharded.
"""

import json
import os
import sys
from pathlib import Path

from accelerate import Accelerator
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

from weitiao.config import load_config
from weitiao.recipes import dpo, rm, sft
from weitiao.train import dist, loop

RECIPES = {"sft": (sft, sft.SFTConfig), "dpo": (dpo, dpo.DPOConfig), "rm": (rm, rm.RMConfig)}


def fsdp2_on_cpu(plugin_kw: dict):
    def make(model=None) -> Accelerator:
        plugin = FullyShardedDataParallelPlugin(fsdp_version=2, state_dict_type="FULL_STATE_DICT", **plugin_kw)
        accel = Accelerator(cpu=True, fsdp_plugin=plugin)
        accel.state.distributed_type, accel.state.fsdp_plugin = DistributedType.FSDP, plugin
        dist.refuse_unsavable(accel)
        dist.refuse_unshardable(accel, model)
        return accel

    return make


def reporting(adamw):
    def wrapped(accel, module, model, t, lr):
        import bitsandbytes as bnb
        from torch.distributed.tensor import DTensor

        out = adamw(accel, module, model, t, lr)
        w4 = [m.weight for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
        stats = {"rank": accel.process_index, "4bit": len(w4), "sharded": sum(isinstance(w, DTensor) for w in w4)}
        stats["dtypes"] = sorted({str(w.dtype) for w in w4})
        report = Path(f"{t.out}.sharding.jsonl")  # beside the run folder, one line per process and run
        report.parent.mkdir(parents=True, exist_ok=True)
        with report.open("a") as f:
            f.write(json.dumps(stats) + "\n")
        return out

    return wrapped


if __name__ == "__main__":
    loop.adamw = reporting(loop.adamw)
    for name, overrides, *plugin in json.loads(sys.argv[1]):
        plugin_kw = plugin[0] if plugin else {}
        efficient = str(plugin_kw.get("cpu_ram_efficient_loading", False)).lower()
        os.environ.update(ACCELERATE_USE_FSDP="true", FSDP_CPU_RAM_EFFICIENT_LOADING=efficient)
        dist.accelerator = fsdp2_on_cpu(plugin_kw)
        module, config = RECIPES[name]
        print(module.run(load_config(config, None, overrides)), flush=True)
