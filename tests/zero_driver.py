"""One SFT, DPO or RM run under accelerate's DeepSpeed ZeRO on CPU (gloo), launched under torch.distributed.run.

DS_ACCELERATOR=cpu python -m torch.distributed.run --nproc_per_node=2 tests/zero_driver.py STAGE RECIPE override ...

accelerate only turns DeepSpeed on for accelerator devices: with cpu=True it keeps MULTI_CPU (gloo DDP)
and ignores the plugin. DeepSpeed itself runs on CPU (its CPU accelerator, gloo without oneCCL), so
this driver sets the state accelerate would set on GPUs; everything after (prepare → deepspeed.initialize,
the engine, its ZeRO optimizer) is accelerate's and DeepSpeed's.
"""

import importlib
import sys

from accelerate import Accelerator, PartialState
from accelerate.utils import DeepSpeedPlugin, DistributedType

from weitiao.config import load_config
from weitiao.recipes import dpo, rm, sft
from weitiao.train import dist

# DeepSpeed builds a C++ shared-memory all-reduce for inference on first use (g++, seconds); training
# never calls it, so the test needs no compiler.
importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None  # the module, not torch


def zero_on_cpu(stage: int) -> Accelerator:
    plugin = DeepSpeedPlugin(zero_stage=stage, zero3_init_flag=False)
    accel = Accelerator(cpu=True, deepspeed_plugin=plugin)
    accel.state.distributed_type, accel.state.deepspeed_plugins = DistributedType.DEEPSPEED, plugin
    PartialState._shared_state["distributed_type"] = DistributedType.DEEPSPEED  # AcceleratorState() re-reads it
    plugin.select(_from_accelerator_state=True)
    dist.refuse_unsavable(accel)
    return accel


if __name__ == "__main__":
    stage, recipe, overrides = int(sys.argv[1]), {"sft": sft, "dpo": dpo, "rm": rm}[sys.argv[2]], sys.argv[3:]
    dist.accelerator = lambda model=None: zero_on_cpu(stage)
    config = {"sft": sft.SFTConfig, "dpo": dpo.DPOConfig, "rm": rm.RMConfig}[sys.argv[2]]
    print(recipe.run(load_config(config, None, overrides)))
