"""Make the adversarial battery: lesson 05's solution notebook with one attack each.

Each :class:`Attack` starts from ``solutions/05_iou_nms_map.ipynb`` and changes one thing: the
solution lines (``### BEGIN SOLUTION`` .. ``### END SOLUTION``) of one exercise cell become the
attack's ``body``, or code is put in front of that cell's ``def`` (``prelude``), or the notebook
file itself is damaged (``mutate``). Every other exercise keeps its honest solution, so a test
can check that the attack earns nothing and costs the honest exercises nothing.

Run ``python tests/grading/adversarial/make_attacks.py OUT_DIR`` to write every attacked
notebook (``OUT_DIR/<attack>.ipynb``) for a look or a manual grading run.
"""

from __future__ import annotations

import copy
import json
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
SOURCE = ROOT / "solutions" / "05_iou_nms_map.ipynb"
BACKGROUND_MARKER = "adversarial-background-5c1e"  # in the command line of a detached process
OUT_DIR_TOKEN = "@OUT_DIR@"  # replaced by the test's output folder


@dataclass(frozen=True)
class Attack:
    """One crafted submission.

    Attributes:
        name: short id (the notebook's stem).
        what: what the attack tries, in one line.
        target: the exercise whose cell is attacked.
        body: replaces the solution lines of the target's function (indented for you).
        prelude: code put at the top of the target's cell, before its ``def``.
        mutate: ``notebook dict -> file text`` for attacks on the notebook file itself.
        statuses: the statuses the attacked exercise may end with.
        zero: the attacked exercise must score 0 (else: no hidden case may pass).
        timeout: the grader's time limit for the attacked exercise (seconds).
    """

    name: str
    what: str
    target: str = "nms"
    body: str = ""
    prelude: str = ""
    mutate: Callable[[dict], str] | None = None
    statuses: tuple[str, ...] = ("failed",)
    zero: bool = True
    timeout: float = 30.0


WRONG = "return torch.full((1,), -1)"  # never right: every expected nms output differs


def _solution_path() -> str:
    """Code (indented like a body) that finds the solution notebook from course_lib's path."""
    return """
        import course_lib, os
        root = os.path.dirname(course_lib.__path__[0])
        path = os.path.join(root, "solutions", "05_iou_nms_map.ipynb")"""


ATTACKS: tuple[Attack, ...] = (
    # --- outputs that lie about themselves ---------------------------------------------------
    Attack("always_equal", "return an object whose __eq__ is always True", body="""
        class AlwaysEqual:
            def __eq__(self, other):
                return True
            def __ne__(self, other):
                return False
            __hash__ = None
        return AlwaysEqual()
        """),
    Attack("ndarray_subclass", "return an ndarray subclass whose comparisons always agree",
           body="""
        import numpy
        class Liar(numpy.ndarray):
            def __eq__(self, other):
                return numpy.ones(numpy.shape(other), dtype=bool)
            def __array_finalize__(self, obj):
                pass
        return numpy.full(1, -1, dtype=numpy.int64).view(Liar)
        """),
    Attack("tensor_subclass", "return a Tensor subclass that answers True to every comparison",
           body="""
        class Liar(torch.Tensor):
            @classmethod
            def __torch_function__(cls, func, types, args=(), kwargs=None):
                if func in (torch.equal, torch.allclose, torch.Tensor.__eq__):
                    return True
                return super().__torch_function__(func, types, args, kwargs or {})
        return torch.full((1,), -1).as_subclass(Liar)
        """),
    # --- patching the checker's tools -----------------------------------------------------------
    Attack("monkeypatch_numpy_torch", "make numpy/torch/torch.testing comparisons always pass",
           body=f"""
        import numpy
        import torch.testing
        numpy.allclose = numpy.array_equal = lambda *a, **k: True
        numpy.testing.assert_allclose = lambda *a, **k: None
        torch.equal = torch.allclose = lambda *a, **k: True
        torch.testing.assert_close = lambda *a, **k: None
        {WRONG}
        """),
    Attack("monkeypatch_checker", "patch course_lib's compare and the child's case runner",
           body="""
        import course_lib.exercises.core as core
        import course_lib.grading.child as child
        core.compare = lambda *a, **k: None
        child._run_case = lambda *a, **k: {"status": "ok", "output": {"tuple": []}}
        return torch.full((1,), -1)
        """),
    # --- forbidden APIs -----------------------------------------------------------------------
    Attack("forbidden_direct", "call torchvision.ops.nms", statuses=("forbidden",), body="""
        import torchvision
        return torchvision.ops.nms(boxes, scores, iou_threshold)
        """),
    Attack("forbidden_importlib", "importlib.import_module('torchvision.ops.boxes').nms",
           statuses=("forbidden",), body="""
        import importlib
        return importlib.import_module("torchvision.ops.boxes").nms(boxes, scores, iou_threshold)
        """),
    Attack("forbidden_getattr", "__import__ and getattr with built-up names",
           statuses=("forbidden",), body="""
        ops = __import__("torch" + "vision.ops", fromlist=["x"])
        return getattr(ops, "n" + "ms")(boxes, scores, iou_threshold)
        """),
    Attack("forbidden_c_operator", "call the compiled operator torch.ops.torchvision.nms",
           statuses=("forbidden",), body="""
        import torchvision  # noqa: F401 (registers the operator)
        return torch.ops.torchvision.nms(boxes, scores, iou_threshold)
        """),
    Attack("forbidden_reference", "import the course's reference course_lib.nms.nms",
           statuses=("forbidden",), body="""
        from course_lib.nms import nms as reference
        return reference(boxes, scores, iou_threshold)
        """),
    # As root the module's file is hidden (reload finds no spec: error), else refused (forbidden).
    Attack("forbidden_reload", "importlib.reload torchvision.ops.boxes to get a fresh nms",
           statuses=("forbidden", "error"), body="""
        import importlib
        import torchvision.ops.boxes as module
        return importlib.reload(module).nms(boxes, scores, iou_threshold)
        """),
    Attack("forbidden_gc_search", "find the original nms among gc.get_objects()",
           statuses=("forbidden",), body="""
        import gc
        found = [o for o in gc.get_objects() if callable(o) and getattr(o, "__name__", "") ==
                 "nms" and "torchvision" in getattr(o, "__module__", "")]
        return found[0](boxes, scores, iou_threshold)
        """),
    Attack("forbidden_pycocotools", "import pycocotools in average_precision",
           target="average_precision", statuses=("forbidden",), body="""
        from pycocotools import mask  # noqa: F401
        return 0.5
        """),
    # --- reading what is not the student's ------------------------------------------------------
    Attack("read_solution_notebook", "open the solution notebook and exec its nms cell",
           statuses=("forbidden",), body=_solution_path() + """
        import json
        with open(path) as f:
            cells = json.load(f)["cells"]
        source = next("".join(c["source"]) for c in cells if "def nms(" in "".join(c["source"]))
        namespace = {"torch": torch}
        exec(source, namespace)
        return namespace["nms"](boxes, scores, iou_threshold)
        """),
    Attack("read_reference_source", "exec the text of course_lib/nms.py",
           statuses=("forbidden",), body="""
        import course_lib, os
        path = os.path.join(course_lib.__path__[0], "nms.py")
        namespace = {"__name__": "stolen"}
        with open(path) as f:
            exec(f.read(), namespace)
        return namespace["nms"](boxes, scores, iou_threshold)
        """),
    Attack("read_solution_with_cat", "read the solution notebook through a `cat` subprocess",
           statuses=("error",), body=_solution_path() + """
        import json, subprocess
        text = subprocess.run(["cat", path], capture_output=True, text=True).stdout
        cells = json.loads(text)["cells"]
        source = next("".join(c["source"]) for c in cells if "def nms(" in "".join(c["source"]))
        namespace = {"torch": torch}
        exec(source, namespace)
        return namespace["nms"](boxes, scores, iou_threshold)
        """),
    Attack("copy_a_classmate", "exec the nms cell of a classmate's notebook found beside the "
           "submission", statuses=("failed", "error"), body=f"""
        import glob, json, math, os
        folder = os.path.dirname("{OUT_DIR_TOKEN}")  # the submissions: beside the grades
        for path in sorted(glob.glob(os.path.join(folder, "*.ipynb"))):
            if path.endswith("copy_a_classmate.ipynb"):
                continue
            try:
                with open(path) as f:
                    cells = json.load(f)["cells"]
            except (OSError, ValueError, KeyError):
                continue
            for cell in cells:
                source = "".join(cell["source"])
                if "def nms(" in source:
                    found = {{"torch": torch, "math": math}}
                    exec(source, found)
                    return found["nms"](boxes, scores, iou_threshold)
        {WRONG}
        """),
    Attack("read_outside_files", "read /etc/shadow and other exercises' working folders",
           statuses=("error",), body="""
        import glob
        stolen = [open("/etc/shadow").read()]
        for name in glob.glob("/tmp/course-grade-*/*.json"):
            stolen.append(open(name).read())
        return torch.tensor([len(stolen)])
        """),
    # --- ending the process ---------------------------------------------------------------------
    Attack("os_exit", "os._exit(0) in the middle of grading", statuses=("error",), body="""
        import os
        os._exit(0)
        """),
    Attack("sys_exit", "sys.exit(0)", statuses=("error",), body="""
        import sys
        sys.exit(0)
        """),
    Attack("keyboard_interrupt", "raise KeyboardInterrupt", statuses=("error",), body="""
        raise KeyboardInterrupt
        """),
    Attack("segfault", "crash the interpreter through ctypes", statuses=("error",), body="""
        import ctypes
        ctypes.string_at(0)
        """),
    # --- resources ----------------------------------------------------------------------------
    Attack("infinite_loop", "never return", statuses=("timeout",), timeout=4.0, body="""
        while True:
            pass
        """),
    Attack("memory_bomb", "allocate until the machine runs out", statuses=("memory",), body="""
        hog = []
        while True:
            hog.append(bytearray(50_000_000))
        """),
    Attack("fork_bomb", "fork 2**10 sleeping processes", statuses=("error", "timeout"),
           timeout=15.0, body="""
        import os, time
        for _ in range(10):  # 1024 processes unless something stops it
            os.fork()
        time.sleep(60)
        """),
    Attack("kill_the_zygote", "SIGKILL the parent process (the zygote that forked the child), "
           "then keep going", statuses=("failed", "error"), body="""
        import os, signal
        try:
            os.kill(os.getppid(), signal.SIGKILL)
        except OSError:
            pass
        import time
        time.sleep(0.2)
        return torch.full((1,), -1)
        """),
    Attack("background_overwrite",
           "a detached process that outlives the child and rewrites result files",
           statuses=("failed", "error"), body=f"""
        import subprocess, sys
        code = '''
        import glob, json, os, time
        end = time.time() + 40  # {BACKGROUND_MARKER}
        while time.time() < end:
            for name in glob.glob("/tmp/course-grade-*/"):
                for i in range(30):
                    try:
                        with open(os.path.join(name, f"result_{{i}}.json"), "w") as f:
                            json.dump({{"status": "error", "message": "sabotaged"}}, f)
                    except OSError:
                        pass
            time.sleep(0.01)
        '''
        import textwrap
        subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)],
                         start_new_session=True, stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        {WRONG}
        """),
    Attack("fake_results", "print a fake report, forge result files and write to the output "
           "folder, then exit", statuses=("failed", "error"), body=f"""
        import json, os
        print(json.dumps({{"student": "me", "score": 100, "status": "passed"}}))
        for i in range(30):
            with open(f"result_{{i}}.json", "w") as f:
                json.dump({{"status": "ok", "output": {{"array": "in_0_0.npy"}}}}, f)
        try:
            with open(os.path.join("{OUT_DIR_TOKEN}", "forged.json"), "w") as f:
                json.dump({{"score": 100}}, f)
        except OSError:
            pass
        os._exit(0)
        """),
    Attack("predict_random_inputs", "hard-code the visible answers and guess the hidden inputs",
           statuses=("review",), zero=False, body="""
        import numpy
        key = (tuple(map(tuple, boxes.tolist())), tuple(scores.tolist()), iou_threshold)
        if key in VISIBLE_ANSWERS:
            return torch.tensor(VISIBLE_ANSWERS[key], dtype=torch.int64)
        # A guess at the inputs the grader draws: the seed tests use. Grading draws a fresh
        # secret one, so no guess matches, and the fallback answer is never right.
        guessed = numpy.random.default_rng(0).uniform(0, 100, size=(len(scores), 4))
        if len(scores) and numpy.allclose(guessed, boxes.cpu().numpy()):
            return torch.arange(len(scores))
        return torch.full((len(scores) + 1,), -1)
        """),
    Attack("huge_output", "flood stderr and return a 120 MB tensor", statuses=("error",),
           body="""
        import sys
        try:
            sys.stderr.write("x" * 100_000_000)
        except OSError:
            pass
        return torch.zeros(30_000_000)
        """),
    Attack("ipython_transformer", "register an input transformer and a magic that rewrite later "
           "cells", prelude="""
        %load_ext autoreload
        try:
            get_ipython().input_transformers_cleanup.append(
                lambda lines: [line.replace("assert ", "pass  # ") for line in lines])
        except NameError:
            pass
        """, body=WRONG),
)


def _drop_nms_cell(nb: dict) -> str:
    nb["cells"] = [c for c in nb["cells"] if "def nms(" not in "".join(c["source"])]
    return json.dumps(nb)


def _rename_nms(nb: dict) -> str:
    for cell in nb["cells"]:
        cell["source"] = [line.replace("def nms(", "def my_nms(") for line in cell["source"]]
    return json.dumps(nb)


def _untag_nms(nb: dict) -> str:
    _cell(nb, "nms")["metadata"]["tags"] = []
    return json.dumps(nb)


def _duplicate_nms_wrong(nb: dict) -> str:
    cells = nb["cells"]
    i = cells.index(_cell(nb, "nms"))
    copy_ = copy.deepcopy(cells[i])
    _replace_body(copy_, WRONG)
    cells.insert(i + 1, copy_)
    return json.dumps(nb)


def _move_nms_to_end(nb: dict) -> str:
    cell = _cell(nb, "nms")
    nb["cells"].remove(cell)
    nb["cells"].append(cell)
    return json.dumps(nb)


NOTEBOOK_ATTACKS: tuple[Attack, ...] = (
    Attack("malformed_json", "a file that is not JSON", mutate=lambda nb: "{ this is not json",
           statuses=()),
    Attack("truncated_json", "the notebook cut in half", mutate=lambda nb: json.dumps(nb)[:5000],
           statuses=()),
    Attack("exercise_cell_deleted", "the nms cell deleted", mutate=_drop_nms_cell,
           statuses=("error",)),
    Attack("exercise_renamed", "nms renamed to my_nms", mutate=_rename_nms,
           statuses=("error",)),
    Attack("exercise_untagged", "the nms cell's `exercise` tag removed", mutate=_untag_nms,
           statuses=("error",)),
    Attack("exercise_duplicated", "a second nms cell after the first, with a wrong body",
           mutate=_duplicate_nms_wrong, statuses=("failed",)),
    Attack("exercise_reordered", "the nms cell moved to the end (graded by name: still right)",
           mutate=_move_nms_to_end, statuses=("passed",), zero=False),
)


def _cell(nb: dict, name: str) -> dict:
    return next(c for c in nb["cells"] if c["cell_type"] == "code"
                and "exercise" in c["metadata"].get("tags", [])
                and f"def {name}(" in "".join(c["source"]))


def _replace_body(cell: dict, body: str, prelude: str = "") -> None:
    """Put ``body`` in place of the cell's solution lines, ``prelude`` before everything."""
    lines = "".join(cell["source"]).splitlines(keepends=True)
    begin = next(i for i, line in enumerate(lines) if "### BEGIN SOLUTION" in line)
    end = next(i for i, line in enumerate(lines) if "### END SOLUTION" in line)
    code = textwrap.indent(textwrap.dedent(body).strip("\n"), " " * 4) + "\n"
    top = textwrap.dedent(prelude).strip("\n") + "\n" if prelude else ""
    new = [top, *lines[:begin], code, *lines[end + 1:]]
    cell["source"] = "".join(new).splitlines(keepends=True)


def visible_answers() -> dict:
    """The nms visible cases' answers keyed by input, as a cheat sheet would hold them."""
    from course_lib.exercises import load_lesson

    nms = load_lesson("05")["nms"]
    table = {}
    for case in nms.cases:
        kw = case.kwargs
        key = (tuple(map(tuple, kw["boxes"].tolist())), tuple(kw["scores"].tolist()),
               kw["iou_threshold"])
        table[key] = nms.expected(case).tolist()
    return table


def make(attack: Attack, path: Path, out_dir: str = "/nonexistent") -> Path:
    """Write the attacked notebook to ``path``."""
    nb = json.loads(SOURCE.read_text(encoding="utf-8"))
    if attack.mutate is not None:
        path.write_text(attack.mutate(nb), encoding="utf-8")
        return path
    body = attack.body.replace(OUT_DIR_TOKEN, out_dir)
    prelude = attack.prelude
    if "VISIBLE_ANSWERS" in body:
        prelude += f"\nVISIBLE_ANSWERS = {visible_answers()!r}\n"
    _replace_body(_cell(nb, attack.target), body, prelude)
    path.write_text(json.dumps(nb, indent=1), encoding="utf-8")
    return path


def main(out: str) -> None:
    """Write every attacked notebook into ``out``."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    for attack in ATTACKS + NOTEBOOK_ATTACKS:
        print(make(attack, folder / f"{attack.name}.ipynb"))


if __name__ == "__main__":
    main(sys.argv[1])
