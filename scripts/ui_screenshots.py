"""PNG screenshots of each `weitiao ui` tab in Chinese and English, taken by the headless-Chromium test.

    python scripts/ui_screenshots.py            # → docs/ui/{runs,watch,chat,data,pairs}-{zh,en}.png
    python scripts/ui_screenshots.py OUT_DIR

Runs tests/test_ui_page.py (an SFT run of the demo model made from the form, then chat, compare, data, a
DPO/RM pair file) with WEITIAO_UI_SHOTS=OUT_DIR. Needs chromium + chromium-driver and a CJK font, on Debian:
apt-get install -y chromium chromium-driver fonts-wqy-microhei
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NAMES = [f"{tab}-{lang}.png" for tab in ("runs", "watch", "chat", "data", "pairs") for lang in ("zh", "en")]


def main() -> int:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "docs" / "ui").resolve()
    out.mkdir(parents=True, exist_ok=True)
    if shutil.which("fc-list") and not subprocess.run(["fc-list", ":lang=zh"], capture_output=True).stdout.strip():
        print("warning: no CJK font installed; Chinese text will show as boxes (apt-get install fonts-wqy-microhei)")
    env = {**os.environ, "WEITIAO_UI_SHOTS": str(out)}
    test = str(ROOT / "tests" / "test_ui_page.py")
    rc = subprocess.call([sys.executable, "-m", "pytest", "-q", "-x", "-rs", test], env=env, cwd=ROOT)
    missing = [n for n in NAMES if not (out / n).is_file()]
    if rc or missing:
        print(f"screenshots incomplete (pytest exit {rc}; missing: {', '.join(missing) or 'none'})", file=sys.stderr)
        return 1
    for n in NAMES:
        print(out / n)
    return 0


if __name__ == "__main__":
    sys.exit(main())
