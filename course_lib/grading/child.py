"""The code that runs in an exercise child: run the student's cells, call one function per case.

Started by :mod:`course_lib.grading.sandbox` with the working directory as its argument. The
directory holds ``task.json`` (function name, device, limits, the exercise cells, the cases'
inputs as :mod:`~course_lib.grading.transfer` trees) and the inputs' ``.npy`` files. For case
``i`` the child writes ``result_i.json`` (atomically, as soon as the case is done) with a
status: ``ok`` (and the output, made plain with :func:`~course_lib.exercises.core.to_plain`),
``not_implemented``, ``error`` (exception type, message, line of the student's cell),
``bad_output`` (not a tensor/number/tuple) or ``memory``. It never compares anything: the
parent does, with its own expected values, so nothing here decides a grade. ``ready.json``
marks that the cells have run; ``setup.json`` says why the function could not be found.
"""

from __future__ import annotations

import gc
import importlib
import re
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from course_lib.exercises.core import to_plain
from course_lib.grading import sandbox, transfer

# What an exercise cell may use without importing it (the lessons import these at the top).
PREAMBLE = "import math\nimport numpy as np\nimport torch\nimport torch.nn.functional as F\n"
MAX_MESSAGE = 300
_TORCH_PREFIX = re.compile(r"^\[enforce fail at [^]]*\] (err == 0\. )?")


def main(workdir: str) -> None:
    """Run the task in ``workdir`` (see the module docstring)."""
    root = Path(workdir)
    task = transfer.read_json(root / "task.json", max_bytes=256 << 20)  # written by the parent
    sandbox.limit_cpu_and_files(task["cpu_s"], task["file_mb"])
    device = torch.device(task["device"])
    if device.type == "cuda":  # create the CUDA context and load cuBLAS before capping memory
        x = torch.ones(8, 8, device=device)
        (x @ x).sort()
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, (task["memory_mb"] << 20) / total))
    sandbox.limit_memory(task["memory_mb"])

    prepare = _prepare(task.get("prepare"))  # resolved before any student code runs

    namespace: dict[str, Any] = {"__name__": "__main__"}
    exec(PREAMBLE, namespace)
    cell_errors = {}
    for cell in task["cells"]:
        try:
            exec(compile(cell["source"], _filename(cell["number"]), "exec"), namespace)
        except BaseException as exc:  # a broken cell must not stop the others
            cell_errors[cell["number"]] = _describe(exc)
    fn = namespace.get(task["function"])
    if not callable(fn):
        message = f"{task['function']} is not defined after running the exercise cells"
        error = cell_errors.get(task["cell"])
        if error:
            message += f"; its cell raised {error['message']} {error['where']}".rstrip()
        transfer.write_json(root / "setup.json", {"message": message})
        return

    transfer.write_json(root / "ready.json", {})  # the cells ran; the cases start
    for i, case in enumerate(task["cases"]):
        start = time.perf_counter()
        kwargs = transfer.load(case, root, device=device)
        result = _run_case(fn, prepare(kwargs) if prepare else kwargs, root, f"out_{i}")
        result["seconds"] = time.perf_counter() - start
        transfer.write_json(root / f"result_{i}.json", result)


def _prepare(name: str | None):
    """The exercise's ``prepare`` function from its ``"module:name"`` (see ``Exercise``)."""
    if name is None:
        return None
    module, _, attr = name.partition(":")
    if not module.startswith("course_lib.exercises."):
        raise ValueError(f"refusing to import prepare function {name!r}")
    return getattr(importlib.import_module(module), attr)


def _run_case(fn: Any, kwargs: dict[str, Any], root: Path, prefix: str) -> dict[str, Any]:
    """Call the student's function once; the output's arrays go to ``root/prefix_k.npy``."""
    try:
        value = fn(**kwargs)
    except NotImplementedError:
        return {"status": "not_implemented"}
    except BaseException as exc:  # SystemExit too: the student's exit() is an error
        gc.collect()
        return _describe(exc)
    try:
        return {"status": "ok", "output": transfer.dump(to_plain(value), root, prefix)}
    except (TypeError, transfer.TransferError) as exc:
        return {"status": "bad_output", "message": str(exc)[:MAX_MESSAGE]}
    except BaseException as exc:  # e.g. a hostile tensor subclass
        return _describe(exc)


def _describe(exc: BaseException) -> dict[str, Any]:
    """Status, type, message and the student's line for an exception."""
    try:
        message = _TORCH_PREFIX.sub("", str(exc))  # "[enforce fail at alloc_cpu.cpp:127] ..."
    except Exception:  # a student's exception class may break str()
        message = "<message could not be printed>"
    text = f"{type(exc).__name__}: {message}"
    low = text.lower()
    is_memory = isinstance(exc, MemoryError) or (
        isinstance(exc, RuntimeError)
        and ("can't allocate memory" in low or "out of memory" in low))
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if f.filename.startswith("<notebook cell")]
    where = f"line {frames[-1].lineno} of {frames[-1].filename.strip('<>')}" if frames else ""
    return {"status": "memory" if is_memory else "error", "type": type(exc).__name__,
            "message": text[:MAX_MESSAGE], "where": where}


def _filename(number: int) -> str:
    return f"<notebook cell {number}>"


if __name__ == "__main__":
    main(sys.argv[1])
