"""Plain data across the process boundary: a JSON tree plus ``.npy`` files, never pickle.

The trusted parent writes each case's inputs with :func:`dump`; the child reads them with
:func:`load` (tensors rebuilt on the requested device) and writes each output with :func:`dump`;
the parent reads the output back with :func:`load` and ``validate=True``, which accepts only
plain values (what :func:`course_lib.exercises.core.to_plain` produces) within size caps, so a
child that writes garbage produces a clean error, never a crash or code execution.

JSON tree (a dict node is always one of these wrappers; plain values never contain dicts):

========================  =============================================================
``null/true/1/2.5/"s"``   ``None``, ``bool``, ``int``, ``float``, ``str``
``{"tuple": [...]}``      a tuple (lists also become tuples on the way back, as in
                          ``to_plain``; inputs keep lists as ``{"list": [...]}``)
``{"dict": {...}}``       a dict with ``str`` keys (inputs only, e.g. target dicts)
``{"array": "f.npy"}``    a NumPy array saved with ``np.save(allow_pickle=False)``
``{"tensor": "f.npy"}``   a tensor (inputs only), rebuilt with ``torch.from_numpy``
========================  =============================================================
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path
from typing import Any

import numpy as np
import torch

MAX_JSON_BYTES = 1 << 20          # one case's JSON tree
MAX_ARRAY_BYTES = 64 << 20        # one .npy file
MAX_STR_CHARS = 10_000
MAX_DEPTH = 20
_NPY_NAME = re.compile(r"^[A-Za-z0-9_]{1,64}\.npy$")


class TransferError(ValueError):
    """Data that cannot cross: an unsupported input type, or a malformed child output."""


def dump(value: Any, directory: Path, prefix: str) -> Any:
    """Write ``value`` as a JSON-ready tree; arrays and tensors go to ``directory/prefix_k.npy``.

    Raises:
        TransferError: for a value that is not plain data (or a tensor of an unsupported dtype).
    """
    counter = iter(range(1 << 30))

    def save(array: np.ndarray) -> str:
        if array.dtype.kind not in "biuf":
            raise TransferError(f"cannot transfer an array of dtype {array.dtype}")
        name = f"{prefix}_{next(counter)}.npy"
        # order="C", not ascontiguousarray: that one turns a 0-d array (a scalar loss) into (1,)
        np.save(directory / name, np.asarray(array, order="C"), allow_pickle=False)
        return name

    def walk(v: Any) -> Any:
        if v is None or type(v) in (bool, int, float, str):
            return v
        if type(v) is tuple:
            return {"tuple": [walk(x) for x in v]}
        if type(v) is list:
            return {"list": [walk(x) for x in v]}
        if type(v) is dict and all(type(k) is str for k in v):
            return {"dict": {k: walk(x) for k, x in v.items()}}
        if type(v) is np.ndarray:
            return {"array": save(v)}
        if isinstance(v, np.generic):
            return v.item()
        if isinstance(v, torch.Tensor):
            return {"tensor": save(v.detach().cpu().numpy())}
        raise TransferError(f"cannot transfer a value of type {type(v).__name__}")

    return walk(value)


def load(tree: Any, directory: Path, device: Any = None, validate: bool = False) -> Any:
    """Rebuild a value written by :func:`dump`.

    Args:
        tree: the JSON tree.
        directory: where its ``.npy`` files are.
        device: where to put tensors (``None``: CPU).
        validate: accept only plain output values (tuples, arrays, scalars, strings) within
            the size caps: the parent reading a child's output.

    Raises:
        TransferError: if the tree or a file is malformed or too large.
    """

    def walk(node: Any, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise TransferError("output is nested too deeply")
        if node is None or type(node) in (bool, float):
            return node
        if type(node) is int:
            if validate and abs(node) >= 1 << 63:
                raise TransferError("output holds an integer too large for int64")
            return node
        if type(node) is str:
            if validate and len(node) > MAX_STR_CHARS:
                raise TransferError("output holds a string that is too long")
            return node
        if type(node) is not dict or len(node) != 1:
            raise TransferError(f"unexpected node in output: {type(node).__name__}")
        (kind, item), = node.items()
        if kind == "tuple" and type(item) is list:
            return tuple(walk(x, depth + 1) for x in item)
        if kind == "array" and type(item) is str:
            return _load_array(directory, item)
        if validate:  # outputs are plain: no lists, dicts or tensors
            raise TransferError(f"unexpected node in output: {kind!r}")
        if kind == "list" and type(item) is list:
            return [walk(x, depth + 1) for x in item]
        if kind == "dict" and type(item) is dict:
            return {k: walk(x, depth + 1) for k, x in item.items()}
        if kind == "tensor" and type(item) is str:
            return torch.from_numpy(_load_array(directory, item)).to(device or "cpu")
        raise TransferError(f"unexpected node in output: {kind!r}")

    return walk(tree, 0)


def read_json(path: Path, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """Read a small JSON file written by the other side, refusing links and oversize files."""
    _check_regular_file(path, max_bytes)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise TransferError(f"{path.name} is not valid JSON: {exc}") from None


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temporary file, then ``os.replace``)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data), encoding="utf-8")
    os.replace(tmp, path)


def _load_array(directory: Path, name: str) -> np.ndarray:
    if not _NPY_NAME.match(name):
        raise TransferError(f"bad array file name {name[:80]!r}")
    path = directory / name
    _check_regular_file(path, MAX_ARRAY_BYTES)
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise TransferError(f"{name} is not a valid .npy file: {exc}") from None
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "biuf":
        raise TransferError(f"{name} holds an array of unsupported dtype")
    return array


def _check_regular_file(path: Path, max_bytes: int) -> None:
    try:
        info = os.lstat(path)
    except OSError:
        raise TransferError(f"{path.name} is missing") from None
    if not stat.S_ISREG(info.st_mode):
        raise TransferError(f"{path.name} is not a regular file")
    if info.st_size > max_bytes:
        raise TransferError(f"{path.name} is larger than {max_bytes} bytes")
