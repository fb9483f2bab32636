"""Several PPO runs in one process group; launched by tests under torch.distributed.run.

python -m torch.distributed.run --nproc_per_node=2 tests/ppo_dist_driver.py '[[override, ...], ...]'
"""

import json
import sys

from weitiao.config import load_config
from weitiao.recipes import ppo

if __name__ == "__main__":
    for overrides in json.loads(sys.argv[1]):
        ppo.run(load_config(ppo.PPOConfig, None, overrides))
