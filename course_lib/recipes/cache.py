"""The checkpoint cache shared by the recipes: a trained model and what was measured, one file.

``data/checkpoints/<prefix>_<hash>.pt`` holds ``{"model": state_dict, "info": {...}}``, where
the hash covers the recipe (every field) and the recipe module's cache version: change either
and the old file is simply not used. Files are written atomically (temp file + rename), so a
reader never sees half a checkpoint, and a corrupt or foreign file means "train again".
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from course_lib.data import data_dir
from course_lib.train import History


def checkpoint_path(prefix: str, recipe: Any, version: int) -> Path:
    """``data/checkpoints/<prefix>_<12 hex digits of the hash of the recipe and version>.pt``.

    Args:
        prefix: the file name's start, e.g. ``"ssd"`` or ``"seg_unet"``.
        recipe: a dataclass instance; all its fields enter the hash.
        version: the recipe module's cache version.
    """
    key = json.dumps({"version": version, **asdict(recipe)}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return data_dir() / "checkpoints" / f"{prefix}_{digest}.pt"


def load_cached(path: Path, model: torch.nn.Module) -> dict | None:
    """Load the weights at ``path`` into ``model`` and return the stored info.

    Returns:
        The info dict (its ``"history"`` as a :class:`~course_lib.train.History`, plus
        ``"path"``), or ``None`` when there is no file or it cannot be used (a message says
        why; the caller trains again).
    """
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        return {**state["info"], "history": History(**state["info"]["history"]), "path": path}
    except Exception as error:  # a stale, corrupt or foreign file: train again
        print(f"Cannot use {path} ({error}); training again.")
        return None


def save_cached(path: Path, model: torch.nn.Module, info: dict) -> dict:
    """Write ``model``'s weights and ``info`` (plain data; a History is stored as a dict).

    Returns:
        ``info`` with ``"path"`` added, as :func:`load_cached` returns it.
    """
    history = info["history"]
    stored = {**info, "history": asdict(history) if isinstance(history, History) else history}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    torch.save({"model": model.cpu().state_dict(), "info": stored}, tmp)
    os.replace(tmp, path)  # atomic: readers never see half a file
    return {**info, "path": path}
