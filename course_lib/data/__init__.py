"""Data for the lessons: synthetic scenes, Penn-Fudan, lesson 05's toy detections."""

from __future__ import annotations

import os
from pathlib import Path


def data_dir() -> Path:
    """Where datasets and caches live: ``$COURSE_DATA_DIR`` when set, else ``<repo>/data``."""
    env = os.environ.get("COURSE_DATA_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "data"
