"""Bundled demo assets: Chinese chat data and a tiny Chinese base model (see README.md)."""

from pathlib import Path

DEMO_DIR = Path(__file__).parent
MODEL_DIR = DEMO_DIR / "model"
DATA_DIR = DEMO_DIR / "data"
