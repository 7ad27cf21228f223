"""Per-lesson exercise tables and the self-check entry points used in the notebooks.

In a notebook::

    from course_lib.exercises import check, solved_or_reference
    check(box_iou)                           # one line per case
    box_iou_fn = solved_or_reference(box_iou)  # the reference until yours passes
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from course_lib.exercises.core import Case, CaseResult, CheckReport, Exercise
from course_lib.exercises.core import check as check_exercise
from course_lib.exercises.core import solved_or_reference as _solved_or_reference

__all__ = [
    "LESSONS", "Case", "CaseResult", "CheckReport", "Exercise",
    "check", "find_exercise", "load_lesson", "solved_or_reference",
]

# lesson id (as in the notebook metadata ``course.lesson``) -> module with an ``EXERCISES`` dict
LESSONS: dict[str, str] = {
    "01": "course_lib.exercises.lesson01",
    "02": "course_lib.exercises.lesson02",
    "03": "course_lib.exercises.lesson03",
    "04": "course_lib.exercises.lesson04",
    "05": "course_lib.exercises.lesson05",
    "06": "course_lib.exercises.lesson06",
    "07": "course_lib.exercises.lesson07",
    "08": "course_lib.exercises.lesson08",
}


def load_lesson(lesson: str) -> dict[str, Exercise]:
    """The exercises of a lesson, by name.

    Raises:
        ValueError: if the lesson id is unknown.
    """
    if lesson not in LESSONS:
        raise ValueError(f"unknown lesson {lesson!r}; known lessons: {sorted(LESSONS)}")
    return importlib.import_module(LESSONS[lesson]).EXERCISES


def find_exercise(name: str) -> Exercise:
    """Look an exercise up by its function name across all lessons.

    Raises:
        ValueError: if no lesson has an exercise of that name.
    """
    for lesson in LESSONS:
        exercises = load_lesson(lesson)
        if name in exercises:
            return exercises[name]
    raise ValueError(f"no exercise is called {name!r}; is the function named as in the lesson?")


def check(fn: Callable[..., Any], device: str = "auto") -> CheckReport:
    """Self-check a student function against the cases of the exercise of the same name."""
    return check_exercise(fn, find_exercise(fn.__name__), device=device)


def solved_or_reference(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` when it passes its self-check, else the reference implementation (with a notice)."""
    return _solved_or_reference(fn, find_exercise(fn.__name__))
