"""Grade one notebook: per exercise, pick cases, run a sandboxed child, compare in the parent.

For each exercise of the notebook's lesson the parent (trusted) draws the cases: every visible
case plus ``num_random`` fresh hidden ones from ``exercise.random_case(rng)`` (a new random seed
per run unless ``seed`` is given). It writes their inputs as plain data, runs one child for all
cases of the exercise (:mod:`~course_lib.grading.sandbox`), reads the outputs back strictly,
and compares each with ``exercise.expected(case)`` computed here on CPU, using the exercise's
tolerances (:func:`course_lib.exercises.core.compare`).

On CUDA (``device="cuda"``, or ``"auto"`` with a GPU) the student's function runs on the GPU
with TF32 off and deterministic algorithms, and float outputs are compared with the exercise's
tolerances times :data:`CUDA_TOLERANCE_FACTOR` (the report's ``device`` says where it ran).

Scoring: partial credit, ``points * passed_cases / all_cases``; a case the child never reported
(time limit, crash, ``os._exit``) counts as not passed. The exercise's status is ``passed`` when
every case passed; else ``timeout`` when the time limit stopped the child, ``error`` when it
crashed or exited early, otherwise the status of the first case that did not pass, visible cases
first: ``failed`` (wrong value, or not a tensor/number/tuple), ``error`` (an exception),
``memory`` (``MemoryError`` or torch's allocation error under the memory limit) or
``not_implemented``. An exercise whose visible cases all passed while every hidden case (two
or more) returned a wrong value is flagged ``review`` (its partial score stands until a person
has looked: hard-coded visible answers look like this, and so does a bug only general inputs
show). Feedback names the first visible case that did not pass, with its small
input, the expected and the received value; a hidden case is described by its input shapes
(:func:`~course_lib.exercises.core.describe_kwargs`) and a reason that reveals no expected value.
"""

from __future__ import annotations

import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from course_lib import __version__
from course_lib.device import get_device
from course_lib.exercises import load_lesson
from course_lib.exercises.core import Case, Exercise, compare, describe_kwargs, shorten
from course_lib.grading import sandbox, transfer
from course_lib.grading.notebook import Submission, read_submission
from course_lib.grading.sandbox import ChildResult, Limits
from course_lib.grading.zygote import run_child

GRADER_VERSION = "1"
STATUSES = ("passed", "failed", "error", "timeout", "memory", "not_implemented",
            "forbidden", "review")  # per exercise


@dataclass(frozen=True)
class _Drawn:
    """A case the parent drew, and whether it is hidden (a fresh random case)."""

    case: Case
    hidden: bool


def grade_notebook(path: str | Path, device: str = "auto", timeout: float = 30.0,
                   memory_mb: int = 2048, seed: int | None = None,
                   num_random: int = 3) -> dict[str, Any]:
    """Grade one submitted notebook.

    Args:
        path: the ``.ipynb`` file; its stem is the student id.
        device: where the student's functions run: ``"auto"`` (CUDA when available),
            ``"cpu"`` or ``"cuda"``. Expected values are always computed on CPU.
        timeout: wall-clock seconds per exercise child (its cells and cases; on CUDA also
            the torch import, see :func:`~course_lib.grading.zygote.run_child`).
        memory_mb: memory each child may allocate after importing torch (MB).
        seed: seed for the hidden random cases (``None``: a fresh secret seed).
        num_random: hidden random cases per exercise, on top of the visible ones.

    Returns:
        The per-student report: ``student``, ``notebook``, ``lesson``, ``grader_version``,
        ``device``, ``score``, ``max_score``, ``exercises`` (one dict each: ``name``,
        ``score``, ``max_score``, ``status``, ``passed``, ``cases``, ``feedback``,
        ``seconds``), ``error`` (``None``, or why the notebook could not be graded),
        ``seconds`` (the whole notebook), ``limits`` and ``graded_at`` (UTC). The seed of the
        hidden cases is not recorded.

    Raises:
        ValueError: if ``device`` is unknown or unavailable.
    """
    start = time.monotonic()
    path = Path(path)
    dev = str(get_device(device))
    report: dict[str, Any] = {
        "student": path.stem, "notebook": str(path), "lesson": None,
        "grader_version": GRADER_VERSION, "course_lib_version": __version__, "device": dev,
        "score": 0.0, "max_score": 0.0, "exercises": [], "error": None, "seconds": 0.0,
        "limits": {"timeout_s": timeout, "memory_mb": memory_mb, "random_cases": num_random},
        "graded_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    try:
        submission = read_submission(path)
        report["lesson"] = submission.lesson
        exercises = load_lesson(submission.lesson)
    except ValueError as exc:  # NotebookError, or an unknown lesson id
        report["error"] = str(exc)
    except Exception as exc:  # a broken lesson module must not stop the class
        report["error"] = (f"grader problem: lesson {report['lesson']} does not load: "
                           f"{type(exc).__name__}: {exc}")
    if report["error"]:
        report["seconds"] = round(time.monotonic() - start, 3)
        return report
    rng = np.random.default_rng(seed if seed is not None else secrets.randbits(64))
    limits = Limits(timeout_s=timeout, memory_mb=memory_mb)
    for exercise in exercises.values():
        try:
            result = grade_exercise(exercise, submission, dev, limits, rng, num_random)
        except Exception as exc:  # a grader bug in one exercise must not stop the class
            result = {"name": exercise.name, "score": 0.0, "max_score": float(exercise.points),
                      "status": "error", "passed": 0, "cases": 0, "seconds": 0.0,
                      "feedback": f"grader problem: {type(exc).__name__}: {exc}"}
        report["exercises"].append(result)
    report["score"] = round(sum(e["score"] for e in report["exercises"]), 6)
    report["max_score"] = float(sum(e["max_score"] for e in report["exercises"]))
    report["seconds"] = round(time.monotonic() - start, 3)
    return report


def grade_many(paths: list[str | Path], out_dir: str | Path, device: str = "auto",
               timeout: float = 30.0, memory_mb: int = 2048, seed: int | None = None,
               num_random: int = 3, jobs: int = 1,
               on_report: Callable[[dict[str, Any]], None] | None = None,
               force: bool = False) -> list[dict[str, Any]]:
    """Grade several notebook files, writing ``out_dir/<student>.json`` and ``out_dir/report.csv``.

    The student id is each file's stem. This is :func:`course_lib.grading.batch.grade_submissions`
    for a list of files (folders and zips: :func:`~course_lib.grading.batch.find_submissions`):
    each student's JSON is written atomically as soon as that notebook is graded and the CSV is
    rewritten after each one, so an interrupted run keeps what it did; a notebook whose report
    already records the same content hash and grader version is not graded again unless
    ``force``. Arguments are those of :func:`grade_notebook`, plus ``jobs`` (notebooks graded at
    the same time; each runs one child at a time, and a child needs about 1 GB for torch) and
    ``on_report`` (called with each report as it is done or found up to date).

    Returns:
        The reports, in the order of ``paths``.

    Raises:
        ValueError: if two paths have the same stem (the student id), or ``device`` is unknown.
    """
    from course_lib.grading import batch  # batch imports this module

    paths = [Path(p) for p in paths]
    submissions = [batch.SubmissionFile(p.stem, p, str(p),
                                        batch.sha256_of(p) if p.is_file() else "")
                   for p in paths]
    return batch.grade_submissions(
        submissions, out_dir, device=device, timeout=timeout, memory_mb=memory_mb, seed=seed,
        num_random=num_random, jobs=jobs, force=force,
        on_report=None if on_report is None else lambda report, _skipped: on_report(report))


def grade_exercise(exercise: Exercise, submission: Submission, device: str, limits: Limits,
                   rng: np.random.Generator, num_random: int = 3) -> dict[str, Any]:
    """Grade one exercise of a submission (see the module docstring for the scoring).

    Code that used one of the exercise's forbidden APIs (:attr:`Exercise.forbidden_apis`, or a
    hidden file) scores 0 with status ``forbidden``, whatever its cases gave.
    """
    result: dict[str, Any] = {
        "name": exercise.name, "score": 0.0, "max_score": float(exercise.points),
        "status": "error", "passed": 0, "cases": 0, "feedback": "", "seconds": 0.0,
    }
    if device.startswith("cuda") and not exercise.exact:
        exercise = cuda_tolerances(exercise)
    cell = submission.cell_defining(exercise.name)
    if cell is None:
        result["feedback"] = submission.missing_message(exercise.name)
        return result
    if cell.syntax_error:
        result["feedback"] = f"cell {cell.number} does not run: {cell.syntax_error}"
        return result

    drawn = [_Drawn(case, False) for case in exercise.cases]
    drawn += [_Drawn(Case(f"hidden random case {k + 1}", exercise.random_case(rng)), True)
              for k in range(num_random)]
    result["cases"] = len(drawn)
    task_dir = sandbox.scratch_dir("course-grade")  # the child's working directory
    try:
        task = {
            "function": exercise.name, "cell": cell.number, "device": device,
            "prepare": _import_name(exercise.prepare), "forbidden": list(exercise.forbidden_apis),
            "hide": sandbox.protected(),
            "cpu_s": limits.cpu_s, "file_mb": limits.file_mb, "memory_mb": limits.memory_mb,
            "cells": [{"number": c.number, "source": c.source} for c in submission.cells
                      if not c.syntax_error],
            "cases": [transfer.dump(dict(d.case.kwargs), task_dir, f"in_{i}")
                      for i, d in enumerate(drawn)],
        }
        transfer.write_json(task_dir / "task.json", task)
        child = run_child(task_dir, limits, device)
        verdicts = [_verdict(exercise, d, task_dir, i) for i, d in enumerate(drawn)]
        setup = _setup_message(task_dir)
        ready = (task_dir / "ready.json").exists()
        uses = _forbidden_uses(task_dir, len(drawn))
    finally:
        shutil.rmtree(task_dir, ignore_errors=True)

    result["seconds"] = round(child.seconds, 3)
    passed = sum(status == "passed" for status, _ in verdicts)
    result["passed"] = passed
    result["score"] = round(exercise.points * passed / len(drawn), 6) if drawn else 0.0
    result["status"], result["feedback"] = _summarise(exercise, drawn, verdicts, child, limits,
                                                      setup, ready)
    if _visible_only(drawn, verdicts):
        result["status"] = "review"
        result["feedback"] = (f"flagged for review: every visible case passed but none of the "
                              f"{sum(d.hidden for d in drawn)} hidden random cases did. Answers "
                              f"written for the visible inputs would do this; so would a bug "
                              f"that only general inputs show. {result['feedback']}")
    if uses:  # whatever the cases gave: no credit for an answer that uses a forbidden API
        result["score"], result["status"] = 0.0, "forbidden"
        result["feedback"] = (f"uses the forbidden {', '.join(uses)}: {exercise.name} must be "
                              f"written without it (it is what the exercise asks you to build). "
                              f"{result['feedback']}")
    return result


CUDA_TOLERANCE_FACTOR = 10.0


def cuda_tolerances(exercise: Exercise) -> Exercise:
    """The exercise with ``atol`` and ``rtol`` times :data:`CUDA_TOLERANCE_FACTOR`.

    Expected values are computed on CPU; a correct answer computed on the GPU differs from them
    by its kernels' summation order (float32: about 1e-6 relative), not by TF32, which the
    child turns off (:func:`course_lib.grading.child.deterministic_cuda`).
    """
    return replace(exercise, atol=exercise.atol * CUDA_TOLERANCE_FACTOR,
                   rtol=exercise.rtol * CUDA_TOLERANCE_FACTOR)


def _visible_only(drawn: list[_Drawn], verdicts: list[tuple[str, str]]) -> bool:
    """Every visible case passed and every hidden one (two or more) got a wrong value."""
    visible = [status for d, (status, _) in zip(drawn, verdicts, strict=True) if not d.hidden]
    hidden = [status for d, (status, _) in zip(drawn, verdicts, strict=True) if d.hidden]
    return (bool(visible) and all(status == "passed" for status in visible)
            and len(hidden) >= 2 and all(status == "failed" for status in hidden))


def _import_name(prepare) -> str | None:
    """``"module:name"`` of an exercise's ``prepare`` function, for the child to import."""
    if prepare is None:
        return None
    name = f"{prepare.__module__}:{prepare.__qualname__}"
    if not prepare.__module__.startswith("course_lib.exercises.") or "." in prepare.__qualname__:
        raise ValueError(f"prepare must be a module-level function of course_lib.exercises, "
                         f"got {name}")
    return name


def _verdict(exercise: Exercise, drawn: _Drawn, task_dir: Path, i: int) -> tuple[str, str]:
    """``(status, feedback)`` of case ``i``; status ``missing`` when the child did not report."""
    path = task_dir / f"result_{i}.json"
    if not path.exists():
        return "missing", ""
    try:
        data = transfer.read_json(path)
        status = data["status"] if isinstance(data, dict) else None
        if status == "ok":
            got = transfer.load(data.get("output"), task_dir, validate=True)
    except (transfer.TransferError, KeyError, TypeError) as exc:
        return "error", f"{_case_label(drawn)}: the output could not be read back ({exc})"
    if status == "not_implemented":
        return "not_implemented", (f"{exercise.name} is not implemented yet (it raises "
                                   "NotImplementedError)")
    if status in ("error", "memory"):
        message = str(data.get("message", ""))[:300]
        where = str(data.get("where", ""))[:80]
        text = f"{_case_label(drawn)} raised {message}" + (f" ({where})" if where else "")
        if status == "memory":
            text += " - the memory limit was reached"
        return status, text
    if status == "forbidden":
        return "forbidden", f"{_case_label(drawn)}: {str(data.get('message', ''))[:300]}"
    if status == "bad_output":
        return "failed", f"{_case_label(drawn)}: {str(data.get('message', ''))[:300]}"
    if status != "ok":
        return "error", f"{_case_label(drawn)}: the child reported an unknown status"
    try:
        expected = exercise.expected(drawn.case)
    except Exception as exc:  # a grader bug must not stop the class
        return "error", f"grader problem: the reference failed on {_case_label(drawn)}: {exc}"
    reason = compare(got, expected, exercise.atol, exercise.rtol, exercise.exact)
    if reason is None:
        return "passed", ""
    if drawn.hidden:
        return "failed", f"{_case_label(drawn)}: {_hidden_reason(got, expected, exercise)}"
    inputs = ", ".join(f"{k}={shorten(v, 120)}" for k, v in drawn.case.kwargs.items())
    lines = [f"{_case_label(drawn)}: {reason}", f"input:    {inputs}",
             f"expected: {shorten(expected)}", f"got:      {shorten(got)}"]
    if drawn.case.note:
        lines.append(f"why it matters: {drawn.case.note}")
    if exercise.hint:
        lines.append(f"hint: {exercise.hint}")
    return "failed", "\n".join(lines)


def _hidden_reason(got: Any, expected: Any, exercise: Exercise) -> str:
    """Why a hidden case failed, revealing no expected value (types and shapes only)."""
    if isinstance(expected, tuple) and isinstance(got, tuple) and len(got) == len(expected):
        for i, (g, e) in enumerate(zip(got, expected, strict=True)):
            if compare(g, e, exercise.atol, exercise.rtol, exercise.exact) is not None:
                return f"element {i} of the tuple: {_hidden_reason(g, e, exercise)}"
    reason = compare(got, expected, exercise.atol, exercise.rtol, exercise.exact) or ""
    if isinstance(expected, (tuple, np.ndarray)):
        # Structural reasons (types, lengths, shapes, dtypes) reveal no values; a difference does.
        return "values differ" if reason.startswith("values differ") else reason
    if isinstance(got, (bool, int, float, np.ndarray)):
        return f"returned {shorten(got)}, which is not the expected value"
    return f"returned {type(got).__name__}; expected {type(expected).__name__}"


def _summarise(exercise: Exercise, drawn: list[_Drawn], verdicts: list[tuple[str, str]],
               child: ChildResult, limits: Limits, setup: str,
               ready: bool) -> tuple[str, str]:
    """The exercise's status and feedback from its cases and how the child ended."""
    statuses = [status for status, _ in verdicts]
    if all(status == "passed" for status in statuses):
        return "passed", f"all {len(verdicts)} cases passed"
    tally = f"{statuses.count('passed')}/{len(verdicts)} cases passed"
    # The first visible case that did not pass (else the first hidden one) gives the feedback.
    order = sorted(range(len(drawn)), key=lambda i: drawn[i].hidden)
    first = next((i for i in order if statuses[i] not in ("passed", "missing")), None)
    earlier = f"{verdicts[first][1]}" if first is not None else ""
    if "missing" not in statuses:
        return statuses[first], f"{tally}. {earlier}"

    # The child stopped before reporting every case: say why.
    during = (f"while running {_case_label(drawn[statuses.index('missing')])}" if ready
              else "while running the exercise cells")
    if setup:
        status, why = "error", setup
    elif child.timed_out or child.signal_name == "SIGXCPU":
        status = "timeout"
        why = f"stopped by the time limit ({limits.timeout_s:g} s) {during}"
    elif child.signal_name:
        status, why = "error", f"the process crashed ({child.signal_name}) {during}"
    else:
        status = "error"
        why = (f"the process exited (code {child.returncode}) {during}; does the code call "
               "exit(), os._exit() or quit()?")
        if child.returncode != 0 and _last_line(child.stderr):
            why += f" Last error output: {_last_line(child.stderr)}"
    return status, f"{tally}. {why}" + (f"\nEarlier: {earlier}" if earlier else "")


def _forbidden_uses(task_dir: Path, cases: int) -> list[str]:
    """The forbidden APIs the child recorded (its log, its setup note and its results)."""
    found: list[Any] = []
    names = ["forbidden.json", "setup.json", *(f"result_{i}.json" for i in range(cases))]
    for name in names:
        try:
            data = transfer.read_json(task_dir / name)
        except transfer.TransferError:
            continue
        if isinstance(data, dict):
            data = data.get("forbidden") or []
            if not data and name.startswith("result_"):
                continue
        if isinstance(data, list):
            found += data
    uses = []
    for use in found:
        if isinstance(use, str) and use[:200] not in uses:
            uses.append(use[:200])
    return uses[:5]


def _setup_message(task_dir: Path) -> str:
    try:
        data = transfer.read_json(task_dir / "setup.json")
    except transfer.TransferError:
        return ""
    return str(data.get("message", ""))[:400] if isinstance(data, dict) else ""


def _case_label(drawn: _Drawn) -> str:
    if drawn.hidden:
        return f"a hidden random case ({describe_kwargs(drawn.case.kwargs)})"
    return f"case '{drawn.case.name}'"


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""

