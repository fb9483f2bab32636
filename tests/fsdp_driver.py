"""One SFT run under accelerate's FSDP2 on CPU (gloo); launched by tests under torch.distributed.run.

python -m torch.distributed.run --nproc_per_node=2 tests/fsdp_driver.py override ...

accelerate only turns FSDP on for accelerator devices: on CPU it silently keeps MULTI_CPU (DDP) and
ignores the plugin. torch's FSDP2 (fully_shard) does run on CPU with gloo, so this driver sets the
state accelerate would set on GPUs; everything after (prepare, clipping, state dicts) is accelerate's.
"""

import sys

from accelerate import Accelerator
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

from weitiao.config import load_config
from weitiao.recipes import sft
from weitiao.train import dist


def fsdp2_on_cpu() -> Accelerator:
    plugin = FullyShardedDataParallelPlugin(fsdp_version=2, state_dict_type="FULL_STATE_DICT")
    accel = Accelerator(cpu=True, fsdp_plugin=plugin)
    accel.state.distributed_type, accel.state.fsdp_plugin = DistributedType.FSDP, plugin
    dist.refuse_unsavable(accel)
    return accel


if __name__ == "__main__":
    dist.accelerator = fsdp2_on_cpu
    print(sft.run(load_config(sft.SFTConfig, None, sys.argv[1:])))
