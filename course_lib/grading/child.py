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
import glob
import importlib
import importlib.util
import os
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


def main(workdir: str, uid: str = "") -> None:
    """Run the task in ``workdir`` (see the module docstring); as root, then as ``uid``."""
    root = Path(workdir)
    task = transfer.read_json(root / "task.json", max_bytes=256 << 20)  # written by the parent
    sandbox.limit_cpu_and_files(task["cpu_s"], task["file_mb"])
    device = torch.device(task["device"])
    if device.type == "cuda":  # create the CUDA context and load cuBLAS before capping memory
        deterministic_cuda()
        x = torch.ones(8, 8, device=device)
        (x @ x).sort()
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, (task["memory_mb"] << 20) / total))

    prepare = _prepare(task.get("prepare"))  # resolved before any student code runs
    guard = Guard(task.get("forbidden", []), root / "forbidden.json")
    sandbox.limit_memory(task["memory_mb"])  # after the guard's imports (torchvision)
    sandbox.isolate(int(uid) if uid else None,
                    guard.dirs + guard.files + [str(p) for p in task.get("hide", [])])
    guard.activate()

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
        transfer.write_json(root / "setup.json", {"message": message, "forbidden": USES})
        return

    transfer.write_json(root / "ready.json", {})  # the cells ran; the cases start
    for i, case in enumerate(task["cases"]):
        start = time.perf_counter()
        kwargs = transfer.load(case, root, device=device)
        result = _run_case(fn, prepare(kwargs) if prepare else kwargs, root, f"out_{i}")
        result["seconds"] = time.perf_counter() - start
        result["forbidden"] = USES
        transfer.write_json(root / f"result_{i}.json", result)


def deterministic_cuda() -> None:
    """Full-precision, repeatable CUDA: no TF32, deterministic cuDNN and algorithms.

    TF32 (cuDNN's default for convolutions on Ampere and later) rounds float32 inputs to 10
    mantissa bits: a correct transposed convolution would then miss a 1e-5 tolerance.
    """
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=True)


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
    except ForbiddenError as exc:
        return {"status": "forbidden", "message": str(exc)[:MAX_MESSAGE]}
    except NotImplementedError:
        return {"status": "not_implemented"}
    except BaseException as exc:  # SystemExit too: the student's exit() is an error
        result = _describe(exc)
        if result["status"] == "memory":  # free what a reference cycle may still hold
            gc.collect()
        return result
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
    # lookup_lines=False: reading source files here could touch files the guard refuses
    summary = traceback.StackSummary.extract(traceback.walk_tb(exc.__traceback__),
                                             lookup_lines=False)
    frames = [f for f in summary if f.filename.startswith("<notebook cell")]
    where = f"line {frames[-1].lineno} of {frames[-1].filename.strip('<>')}" if frames else ""
    return {"status": "memory" if is_memory else "error", "type": type(exc).__name__,
            "message": text[:MAX_MESSAGE], "where": where}


# ---------------------------------------------------------------------------------------------
# Forbidden APIs
# ---------------------------------------------------------------------------------------------

USES: list[str] = []  # the forbidden APIs the student's code tried, in order


class ForbiddenError(RuntimeError):
    """Raised in place of a forbidden API."""


class Guard:
    """Make an exercise's forbidden APIs unusable and record every attempt.

    Built before any student code runs. A dotted function name (``"torchvision.ops.nms"``,
    ``"torch.ops.torchvision.nms"``): its module is imported and the function is replaced, in
    that module and under every other name a loaded module binds it to, by a stub that records
    the use and raises :class:`ForbiddenError`; no reference to the original is kept. A
    top-level package name (``"pycocotools"``): its import raises. Once :meth:`activate` d, an
    audit hook refuses to open the source or bytecode of those modules (no ``reload`` or
    ``exec`` of their text), to open or list the repository's ``solutions/`` and ``tests/``, or
    to search the heap with ``gc.get_objects``/``get_referrers``. Student code can still tamper
    with this process's records; what it reports is only believed as far as the parent
    validates it.
    """

    def __init__(self, forbidden: list[str], log: Path):
        self.log = log
        self.packages = [name for name in forbidden if "." not in name]
        self.files: list[str] = []  # module files to hide and refuse to open
        self.dirs = [str(Path(d)) for d in sandbox.repository_dirs()]
        for name in forbidden:
            if "." in name:
                self._replace(name)
        for package in self.packages:
            for key in [k for k in sys.modules if k == package or k.startswith(package + ".")]:
                del sys.modules[key]
            spec = importlib.util.find_spec(package)
            if spec is not None and spec.submodule_search_locations:
                self.dirs += [os.path.realpath(d) for d in spec.submodule_search_locations]
            elif spec is not None and spec.origin:
                self.files.append(spec.origin)
        sys.meta_path.insert(0, self)

    def _replace(self, name: str) -> None:
        parts = name.split(".")
        owner = None
        for k in range(len(parts) - 1, 0, -1):  # the longest importable module prefix
            try:
                owner = importlib.import_module(".".join(parts[:k]))
                break
            except Exception:  # not installed, or broken here: then not usable here either
                continue
        if owner is None:
            return  # not installed: nothing to forbid
        for attr in parts[k:-1]:
            owner = getattr(owner, attr, None)
        original = getattr(owner, parts[-1], None)
        if original is None or getattr(original, "_forbidden_stub", False):
            return  # absent, or already replaced under another name
        stub = _stub(name, self)
        setattr(owner, parts[-1], stub)
        for module in list(sys.modules.values()):
            namespace = getattr(module, "__dict__", {})
            for key, value in list(namespace.items()):
                if value is original:
                    namespace[key] = stub
        source = getattr(sys.modules.get(getattr(original, "__module__", "")), "__file__", None)
        if source:
            source = os.path.realpath(source)
            self.files.append(source)
            self.files += glob.glob(os.path.join(
                os.path.dirname(source), "__pycache__",
                os.path.splitext(os.path.basename(source))[0] + ".*.pyc"))

    def activate(self) -> None:
        """Start refusing (see the class docstring); call just before student code runs.

        The audit hook keeps its own frozen copies: changing this object afterwards (student
        code can reach it through a stub's closure) does not change what the hook refuses.
        """
        files, dirs, record = frozenset(self.files), tuple(self.dirs), self.record

        def audit(event: str, args: tuple) -> None:
            if event in ("open", "os.listdir", "os.scandir") and args:
                path = args[0]
                if isinstance(path, (str, bytes, os.PathLike)):
                    real = os.path.realpath(os.fsdecode(path))
                    if real in files or any(real == d or real.startswith(d + os.sep)
                                            for d in dirs):
                        record(f"file {real}")
                        raise ForbiddenError(f"reading {real} is forbidden during grading")
            elif event in ("gc.get_objects", "gc.get_referrers", "gc.get_referents"):
                record(event)
                raise ForbiddenError(f"{event} is forbidden during grading")

        sys.addaudithook(audit)

    def record(self, what: str) -> None:
        """Remember a forbidden use (and write it at once, in case the process dies)."""
        if what not in USES:
            USES.append(what)
            try:
                transfer.write_json(self.log, USES)
            except OSError:
                pass

    def find_spec(self, name, path=None, target=None):  # noqa: D102 (a meta path finder)
        if any(name == p or name.startswith(p + ".") for p in self.packages):
            self.record(name.partition(".")[0])
            raise ForbiddenError(f"{name} is forbidden in this exercise")
        return None


def _stub(name: str, guard: Guard):
    def forbidden(*args, **kwargs):
        guard.record(name)
        raise ForbiddenError(f"{name} is forbidden in this exercise")

    forbidden.__name__ = forbidden.__qualname__ = name.rpartition(".")[2]
    forbidden._forbidden_stub = True
    return forbidden


def _filename(number: int) -> str:
    return f"<notebook cell {number}>"


if __name__ == "__main__":
    main(sys.argv[1])
