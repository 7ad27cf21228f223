"""The adversarial battery: each attack earns nothing, costs the honest exercises nothing and
leaves the grader (and the machine) as it was.

Every notebook is lesson 05's solution with one attack (see ``make_attacks.py``). A test grades
the attacked exercise and one honest exercise of the same notebook, at the same time (two
children), and checks: the attacked exercise's status and score 0, the honest one's full
marks, that grading returned normally and that no process of the sandbox is left.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from make_attacks import ATTACKS, BACKGROUND_MARKER, NOTEBOOK_ATTACKS, SOURCE, Attack, make

from course_lib.exercises import load_lesson
from course_lib.grading import grade_notebook, sandbox
from course_lib.grading.notebook import read_submission
from course_lib.grading.runner import grade_exercise
from course_lib.grading.sandbox import Limits

pytestmark = pytest.mark.slow
EXERCISES = load_lesson("05")
ROOT = os.geteuid() == 0
SEED = 20261128  # fixed: a rare hidden-case disagreement must not make the battery flaky
NEEDS_MOUNTS = {  # root, or a non-root grader where unprivileged user namespaces are allowed
    "read_solution_with_cat": "no mount namespace (not root, no unprivileged user namespaces): "
                              "a program the child starts (cat) can still read solutions/",
}
NEEDS_ROOT = {
    "background_overwrite": "no per-child user id without root: a process that calls setsid "
                            "leaves the process group and survives the child",
}


def _marks(attack: Attack) -> list:
    if attack.name in NEEDS_MOUNTS and not (ROOT or sandbox.hides_without_root()):
        return [pytest.mark.xfail(strict=True, reason=NEEDS_MOUNTS[attack.name])]
    if attack.name in NEEDS_ROOT and not ROOT:
        return [pytest.mark.xfail(strict=True, reason=NEEDS_ROOT[attack.name])]
    return []


def _honest(attack: Attack) -> str:
    return "box_iou" if attack.target == "average_precision" else "average_precision"


def _sandbox_processes() -> list[tuple[int, str]]:
    """Live processes of this grader's sandbox (its user ids, or the attack's marker)."""
    found = []
    uids = range(sandbox._UID_BASE, sandbox._UID_BASE + 64)
    for pid, uid, _ in sandbox._processes():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if uid in uids or BACKGROUND_MARKER in cmdline:
            found.append((pid, cmdline))
    return found


def _no_process_left() -> bool:
    """Whether the sandbox left no process; kills what it left (an escapee would hit the next
    tests' children)."""
    left = _sandbox_processes()
    for pid, _ in left:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    return not left


def grade(attack: Attack, tmp_path: Path) -> tuple[dict, dict]:
    """Grade the attacked exercise and an honest one of the attacked notebook, side by side."""
    out = tmp_path / "grades"
    out.mkdir()
    submission = read_submission(make(attack, tmp_path / f"{attack.name}.ipynb", str(out)))
    shutil.copy(SOURCE, tmp_path / "classmate.ipynb")  # an honest classmate's submission
    sandbox.protect([out, tmp_path])  # as the batch protects its output and submissions
    jobs = [(attack.target, Limits(timeout_s=attack.timeout, memory_mb=512), 2),
            (_honest(attack), Limits(timeout_s=30, memory_mb=512), 1)]
    with ThreadPoolExecutor(2) as pool:
        attacked, honest = pool.map(
            lambda job: grade_exercise(EXERCISES[job[0]], submission, "cpu", job[1],
                                       np.random.default_rng(SEED), job[2]), jobs)
    assert not list(out.iterdir()), "the child wrote into the grader's output folder"
    return attacked, honest


@pytest.mark.parametrize("attack", [pytest.param(a, id=a.name, marks=_marks(a))
                                    for a in ATTACKS + NOTEBOOK_ATTACKS if a.mutate is None
                                    or a.statuses])
def test_attack_earns_nothing_and_costs_the_honest_exercise_nothing(attack, tmp_path):
    attacked, honest = grade(attack, tmp_path)
    clean = _no_process_left()
    assert attacked["status"] in attack.statuses, attacked["feedback"]
    if attack.zero:
        assert attacked["score"] == 0, attacked["feedback"]
    elif attack.statuses == ("review",):  # a cheat sheet: the visible cases only, flagged
        visible = len(EXERCISES[attack.target].cases)
        assert attacked["passed"] == visible < attacked["cases"], attacked["feedback"]
        assert attacked["feedback"].startswith("flagged for review: every visible case passed")
    assert len(attacked["feedback"]) < 2000
    assert honest["status"] == "passed" and honest["score"] == honest["max_score"], \
        honest["feedback"]
    assert clean, "a process started by the student's code outlived its child"
    if attack.statuses == ("forbidden",):
        assert attacked["feedback"].startswith("uses the forbidden ")


@pytest.mark.parametrize("attack", [a for a in NOTEBOOK_ATTACKS if not a.statuses],
                         ids=lambda a: a.name)
def test_unreadable_notebook_gets_an_error_report(attack, tmp_path):
    report = grade_notebook(make(attack, tmp_path / f"{attack.name}.ipynb"), device="cpu")
    assert report["error"] and "not a readable JSON notebook" in report["error"]
    assert report["score"] == 0 and report["exercises"] == []


def test_the_battery_is_big_enough():
    assert len(ATTACKS) + len(NOTEBOOK_ATTACKS) >= 15
    assert len({a.name for a in ATTACKS + NOTEBOOK_ATTACKS}) == len(ATTACKS + NOTEBOOK_ATTACKS)
