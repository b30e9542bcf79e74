"""Where the bundled demo model lives: package data, named here without importing torch, so that `--help` and the
parser stay fast."""

from __future__ import annotations

from pathlib import Path

BUNDLED_MODELS_DIR = Path(__file__).resolve().parent / "bundled_models"  # package data: in every wheel
DEFAULT_MODEL_CARD = BUNDLED_MODELS_DIR / "demo_phantom_small.json"
