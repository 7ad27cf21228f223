"""Tests of `course-build --verify`: solutions get full marks, student notebooks zero.

The real lessons are graded by tests/test_grading.py (test_lesson_solutions_get_full_marks and
test_lesson_student_notebooks_get_zero_not_implemented); here one run of the real grader on the
fake lesson of tests/fixtures/grading (registered as lesson "99") checks the command end to end,
and a stand-in for the grader checks how failures are reported.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from course_lib import exercises
from course_lib.build import build_all, main, verify_problems
from course_lib.grading import runner

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "grading"

ADD = '''\
def add_boxes(a, b):
    """Element-wise sum of two (N, 4) box tensors."""
    ### BEGIN SOLUTION
    return a + b
    ### END SOLUTION
'''
COUNT = '''\
def count_positive(x):
    """How many entries of ``x`` are > 0."""
    ### BEGIN SOLUTION
    return int((x > 0).sum())
    ### END SOLUTION
'''


@pytest.fixture(autouse=True)
def fake_lessons(monkeypatch):
    monkeypatch.syspath_prepend(str(FIXTURES))
    monkeypatch.setitem(exercises.LESSONS, "98", "fake_lesson")
    monkeypatch.setitem(exercises.LESSONS, "99", "fake_lesson")


def solution(lesson: str, *sources: str) -> nbformat.NotebookNode:
    nb = new_notebook(metadata={"course": {"lesson": lesson}})
    nb.cells = [new_markdown_cell(f"# Lesson {lesson}")]
    nb.cells += [new_code_cell(s, metadata={"tags": ["exercise"]}) for s in sources]
    return nb


@pytest.fixture
def course(tmp_path):
    """solutions/ with 98_first and 99_second (both the fake lesson), notebooks/ built."""
    solutions, notebooks = tmp_path / "solutions", tmp_path / "notebooks"
    solutions.mkdir()
    nbformat.write(solution("98", ADD, COUNT), solutions / "98_first.ipynb")
    nbformat.write(solution("99", ADD, COUNT), solutions / "99_second.ipynb")
    build_all(solutions, notebooks)
    return solutions, notebooks


def run(capsys, *args) -> tuple[int, str, str]:
    code = main([*map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def fake_report(path, status, score, max_score=3.0, lesson=None, error=None):
    path = Path(path)
    return {"student": path.stem, "notebook": str(path), "lesson": lesson or path.name[:2],
            "score": score, "max_score": max_score, "error": error, "seconds": 0.1,
            "exercises": [] if error else [
                {"name": "add_boxes", "score": score, "max_score": max_score, "status": status,
                 "feedback": f"{status} feedback\nsecond line"}]}


# ---------------------------------------------------------------------------------------------
# The real grader, one fake lesson
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_verify_grades_the_solution_and_the_stub(capsys, course):
    solutions, notebooks = course
    code, out, err = run(capsys, "--verify", "--solutions", solutions, "--notebooks", notebooks,
                         "98_first")
    assert code == 0, out + err
    row = next(line for line in out.splitlines() if line.startswith("98_first.ipynb "))
    assert row.split()[1:3] == ["3/3", "0/3"] and row.endswith("ok")
    assert "99_second" not in out  # only the named notebook
    assert "course-build --verify: 1 lesson(s) ok" in out
    assert not list(notebooks.glob("*.tmp")) and sorted(p.name for p in notebooks.iterdir()) == [
        "98_first.ipynb", "99_second.ipynb"]  # --verify writes nothing


# ---------------------------------------------------------------------------------------------
# Failures, with a stand-in for the grader
# ---------------------------------------------------------------------------------------------


def test_verify_fails_with_a_message_per_lesson(capsys, monkeypatch, course):
    solutions, notebooks = course

    def grade(path, **kwargs):
        assert kwargs["device"] == "cpu" and kwargs["seed"] == 0 and kwargs["num_random"] == 2
        if Path(path).parent.name == "solutions":
            return fake_report(path, "failed", 1.0) if "98" in path.name else fake_report(
                path, "passed", 3.0)
        return fake_report(path, "error", 0.0) if "99" in path.name else fake_report(
            path, "not_implemented", 0.0)

    monkeypatch.setattr(runner, "grade_notebook", grade)
    code, out, err = run(capsys, "--verify", "--solutions", solutions, "--notebooks", notebooks)
    assert code == 1
    rows = {line.split()[0]: line.split() for line in out.splitlines()[3:] if ".ipynb  " in line}
    assert rows["98_first.ipynb"][1:3] == ["1/3", "0/3"] and rows["98_first.ipynb"][-1] == "FAIL"
    assert rows["99_second.ipynb"][1:3] == ["3/3", "0/3"] and rows["99_second.ipynb"][-1] == "FAIL"
    assert ("FAIL 98_first.ipynb: solution add_boxes is failed (1/3), expected passed: "
            "failed feedback") in err
    assert ("FAIL 99_second.ipynb: student stub add_boxes is error (0/3), expected "
            "not_implemented (NotImplementedError): error feedback") in err
    assert "2 of 2 lesson(s) failed" in err


def test_verify_fails_on_a_stale_or_missing_student_notebook(capsys, monkeypatch, course):
    solutions, notebooks = course
    graded = []

    def grade(path, **kwargs):
        graded.append(Path(path))
        ok = Path(path).parent.name == "solutions"
        return fake_report(path, "passed" if ok else "not_implemented", 3.0 if ok else 0.0)

    monkeypatch.setattr(runner, "grade_notebook", grade)
    (notebooks / "98_first.ipynb").unlink()
    nbformat.write(solution("99", ADD.replace("a + b", "b + a"), COUNT),
                   solutions / "99_second.ipynb")
    code, out, err = run(capsys, "--verify", "--solutions", solutions, "--notebooks", notebooks)
    assert code == 1
    assert "FAIL 98_first.ipynb: no student notebook: run `make build`" in err
    assert "FAIL 99_second.ipynb: the student notebook is stale" in err
    assert notebooks / "98_first.ipynb" not in graded  # nothing to grade
    assert notebooks / "99_second.ipynb" in graded  # graded anyway: its problems are shown too


def test_verify_broken_source_exits_2(capsys, course):
    solutions, notebooks = course
    (solutions / "97_broken.ipynb").write_text("{not json")
    code, _, err = run(capsys, "--verify", "--solutions", solutions, "--notebooks", notebooks)
    assert code == 2 and "97_broken.ipynb: not a valid notebook" in err


def test_verify_without_sources_fails(capsys, tmp_path):
    (tmp_path / "solutions").mkdir()
    code, _, err = run(capsys, "--verify", "--solutions", tmp_path / "solutions",
                       "--notebooks", tmp_path / "notebooks")
    assert code == 1 and "no source notebook" in err


def test_verify_and_check_are_exclusive(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--verify", "--check"])
    assert info.value.code == 2


@pytest.mark.parametrize("solution_report, student_report, expected", [
    (("passed", 3.0), ("not_implemented", 0.0), []),
    (("failed", 2.5), ("not_implemented", 0.0),
     ["solution add_boxes is failed (2.5/3), expected passed: failed feedback",
      "the solution scores 2.5/3, expected full marks"]),
    (("passed", 3.0), ("timeout", 0.0),
     ["student stub add_boxes is timeout (0/3), expected not_implemented"]),
    (("passed", 3.0), ("passed", 3.0),
     ["student stub add_boxes is passed (3/3)", "the student notebook scores 3/3, expected 0"]),
])
def test_verify_problems(solution_report, student_report, expected):
    problems = verify_problems("05_x.ipynb", fake_report("solutions/05_x.ipynb", *solution_report),
                               fake_report("notebooks/05_x.ipynb", *student_report))
    assert len(problems) == len(expected)
    for problem, fragment in zip(problems, expected, strict=True):
        assert problem.startswith("05_x.ipynb: ") and fragment in problem


def test_verify_problems_ungraded_wrong_lesson_and_empty():
    ungraded = fake_report("solutions/05_x.ipynb", "", 0.0, error="not a readable JSON notebook")
    assert verify_problems("05_x.ipynb", ungraded, None) == [
        "05_x.ipynb: the solution could not be graded: not a readable JSON notebook"]
    wrong = fake_report("notebooks/05_x.ipynb", "not_implemented", 0.0, lesson="06")
    assert verify_problems("05_x.ipynb", None, wrong) == [
        "05_x.ipynb: the student notebook is registered as lesson '06', expected '05' "
        "(metadata course.lesson)"]
    empty = {**fake_report("solutions/05_x.ipynb", "passed", 0.0, 0.0), "exercises": []}
    assert verify_problems("05_x.ipynb", empty, None) == [
        "05_x.ipynb: the solution has no graded exercise (max score 0)"]
