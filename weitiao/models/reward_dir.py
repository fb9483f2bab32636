"""A `weitiao rm` output folder's reward_model.json: its name, the `format` of raw-text reward models, and reading it.

No torch here: `weitiao score` and PPO's config checks say a wrong --rm / reward.path at once, before any model code.
"""

from __future__ import annotations

import json
from pathlib import Path

from weitiao.config import is_step_dir
from weitiao.data.files import confined_tree
from weitiao.errors import UserError

META_FILE = "reward_model.json"
RAW = "preference_raw"  # `format` of a reward model trained on raw text pairs (prompt + reply + EOS, no template)


def reward_meta(path: str | Path) -> tuple[Path, dict]:
    """(the dir holding reward_model.json, its content) of a `weitiao rm` output dir or its final/."""
    root = Path(path)
    confined_tree(root)  # a console run's reward.path: inside its folders, as it is read
    if (root / "final" / META_FILE).exists():
        root = root / "final"
    if not (root / META_FILE).exists():
        if not root.exists():
            raise UserError(f"--rm {path}: no such file or folder; give a `weitiao rm` output dir")
        if any(is_step_dir(d) for d in (root, *root.parents[:2])):
            raise UserError(f"--rm {path}: a checkpoint of a `weitiao rm` run, which has no {META_FILE} (written with "
                            "final/ when the run ends); resume the run to its end and give its folder")  # fmt: skip
        raise UserError(f"--rm {path}: not a reward model dir (no {META_FILE}); train one with `weitiao rm`")
    return root, json.loads((root / META_FILE).read_text(encoding="utf-8"))
