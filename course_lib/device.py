"""Device selection and seeding: one place for ``device="auto"`` and for reproducibility."""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def get_device(device: str | torch.device = "auto") -> torch.device:
    """Turn a device request into a ``torch.device``.

    Args:
        device: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``,
            ``"cuda:N"`` or a ``torch.device``.

    Returns:
        The device to use.

    Raises:
        ValueError: if the name is unknown or CUDA is asked for but not available.
    """
    if isinstance(device, torch.device):
        return device
    if not isinstance(device, str):
        raise TypeError(f"device must be a str or torch.device, got {type(device).__name__}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device={device!r} was requested but CUDA is not available here")
        return torch.device(device)
    raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}")


def available_devices() -> list[str]:
    """The devices tests should run on: always ``"cpu"``, plus ``"cuda"`` when present."""
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def seed_everything(seed: int = 0, deterministic: bool = False) -> None:
    """Seed Python, NumPy and PyTorch (CPU and CUDA) so that a run can be repeated.

    Args:
        seed: the seed.
        deterministic: also make PyTorch choose deterministic algorithms: cuDNN's deterministic
            kernels and no benchmarking, TF32 off, and the cuBLAS workspace setting that
            deterministic CUDA matrix products need. Slower on CUDA; no effect on CPU speed.
    """
    os.environ["PYTHONHASHSEED"] = str(seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.use_deterministic_algorithms(True, warn_only=True)
