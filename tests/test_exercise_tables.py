"""Every exercise table of every lesson: the properties the self-checks and the grader rely on.

Lesson-specific checks (lecture numbers, comparisons with PyTorch, mutants that the visible
cases must catch) live in tests/test_lessonNN_exercises.py.
"""

import numpy as np
import pytest
import torch

from course_lib.device import available_devices
from course_lib.exercises import LESSONS, find_exercise, load_lesson
from course_lib.exercises.core import Case, check, compare, to_plain

EXERCISES = [(lesson, name) for lesson in sorted(LESSONS) for name in sorted(load_lesson(lesson))]
PLAIN_TYPES = (torch.Tensor, int, float, bool, str, tuple, type(None))  # what crosses


def exercise(lesson, name):
    return load_lesson(lesson)[name]


def test_exercise_names_are_unique_across_lessons():
    names = [name for _, name in EXERCISES]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("lesson, name", EXERCISES)
def test_name_equals_the_reference_it_is_graded_against(lesson, name):
    ex = exercise(lesson, name)
    assert ex.name == name == ex.reference.__name__
    assert find_exercise(name) is ex
    assert ex.cases and ex.points > 0


@pytest.mark.parametrize("lesson, name", EXERCISES)
def test_hand_worked_answers_agree_with_the_reference(lesson, name):
    ex = exercise(lesson, name)
    hand = [c for c in ex.cases if c.expected is not None]
    assert hand, "every table has hand-worked cases"
    for case in hand:
        got = to_plain(ex.reference(**ex.inputs(case.kwargs)))
        assert compare(got, to_plain(case.expected), ex.atol, ex.rtol, ex.exact) is None, case.name


@pytest.mark.parametrize("device", available_devices())
@pytest.mark.parametrize("lesson, name", EXERCISES)
def test_reference_passes_its_table(lesson, name, device, capsys):
    ex = exercise(lesson, name)
    assert check(ex.reference, ex, device=device)
    assert "all passed" in capsys.readouterr().out


@pytest.mark.parametrize("lesson, name", EXERCISES)
def test_random_cases_are_reproducible_plain_and_accepted_by_the_reference(lesson, name):
    ex = exercise(lesson, name)
    for seed in range(20):
        a = ex.random_case(np.random.default_rng(seed))
        b = ex.random_case(np.random.default_rng(seed))
        assert a.keys() == b.keys()
        for key in a:
            assert isinstance(a[key], PLAIN_TYPES), (key, type(a[key]))
            if isinstance(a[key], torch.Tensor):
                assert torch.equal(a[key], b[key]) and a[key].numel() <= 10_000  # small
            else:
                assert a[key] == b[key]
        to_plain(ex.reference(**ex.inputs(a)))


RANDOM_CASES = 150  # the grader draws 3 per student: a 2 % disagreement hits 1 class in 10


def _solution_functions(lesson):
    """The lesson's exercise cells, run as the grader runs them (the preamble, nothing else)."""
    import json
    from pathlib import Path

    from course_lib.grading.child import PREAMBLE

    root = Path(__file__).resolve().parents[1] / "solutions"
    nb = json.loads(next(root.glob(f"{lesson}_*.ipynb")).read_text(encoding="utf-8"))
    namespace = {}
    exec(PREAMBLE, namespace)
    for cell in nb["cells"]:
        if "exercise" in cell.get("metadata", {}).get("tags", []):
            exec("".join(cell["source"]), namespace)
    return namespace


@pytest.mark.parametrize("lesson", sorted(LESSONS))
def test_solutions_agree_with_the_reference_on_many_random_cases(lesson):
    """A hidden case the lesson's own solution fails costs every correct student points."""
    solutions = _solution_functions(lesson)
    for name, ex in load_lesson(lesson).items():
        rng = np.random.default_rng(20261128)
        for k in range(RANDOM_CASES):
            case = Case(f"random case {k}", ex.random_case(rng))
            got = to_plain(solutions[name](**ex.inputs(case.kwargs, "cpu")))
            reason = compare(got, ex.expected(case), ex.atol, ex.rtol, ex.exact)
            assert reason is None, f"{name}, {case.name} ({case.kwargs}): {reason}"
