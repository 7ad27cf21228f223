"""Tests of the batch grader (course_lib.grading) against a fake lesson and hostile notebooks.

The fake lesson (tests/fixtures/grading/fake_lesson.py, registered as lesson "99") lives only in
this process: the grader's children never load a lesson, they only run the student's cells on
inputs the parent wrote, so nothing extra has to be importable there.

Grading a whole fake class spawns about a dozen children (each imports torch, a few seconds);
it is done once per module and shared by the tests marked ``slow``.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch

from course_lib import exercises
from course_lib.exercises.core import Case
from course_lib.grading import cli, grade_many, grade_notebook, transfer
from course_lib.grading.child import _prepare
from course_lib.grading.notebook import NotebookError, read_submission
from course_lib.grading.report import write_class_csv
from course_lib.grading.runner import _Drawn, _hidden_reason, _import_name, _visible_only
from course_lib.grading.sandbox import child_env

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "grading"
SLEEP_MARKER = "987.654321"  # a grandchild `sleep` that the group kill must end


@pytest.fixture(scope="module", autouse=True)
def fake_lesson():
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(FIXTURES))
        mp.setitem(exercises.LESSONS, "99", "fake_lesson")
        yield


def make_notebook(path: Path, *cells: str, lesson: str | None = "99") -> Path:
    """Write a notebook whose code cells are tagged `exercise` (prefix '#plain\\n' to untag)."""
    nb = nbformat.v4.new_notebook()
    if lesson is not None:
        nb.metadata["course"] = {"lesson": lesson}
    nb.cells.append(nbformat.v4.new_markdown_cell("# Lesson 99"))
    for source in cells:
        cell = nbformat.v4.new_code_cell(source)
        if not source.startswith("#plain"):
            cell.metadata["tags"] = ["exercise"]
        nb.cells.append(cell)
    nbformat.write(nb, path)
    return path


ADD = "def add_boxes(a, b):\n    return a + b\n"
COUNT = "def count_positive(x):\n    return int((x > 0).sum())\n"
COUNT_VIA_ADD = (  # calls the student's other exercise, and has a magic line
    "%time y = 1\n"
    "def count_positive(x):\n"
    "    return int((add_boxes(x, torch.zeros_like(x)) > 0).sum())\n"
)
CLASS = {
    "alice": ["#plain\nraise RuntimeError('not an exercise cell: never run')", ADD,
              COUNT_VIA_ADD],
    "bob": ["def add_boxes(a, b):\n    raise NotImplementedError\n",
            "def count_positive(x):\n    raise NotImplementedError\n"],
    "dave": ["def add_boxes(a, b):\n    return a - b\n",
             "def count_positive(x):\n    values = x.tolist()\n    raise ValueError('boom')\n"],
    "erin": ["import os\nimport subprocess\n\ndef add_boxes(a, b):\n"
             f"    subprocess.Popen(['sleep', '{SLEEP_MARKER}'])\n    os._exit(0)\n",
             "class Always:\n    def __eq__(self, other):\n        return True\n\n"
             "def count_positive(x):\n    return Always()\n"],
    "frank": ["def add_boxes(a, b):\n    return torch.empty(50_000_000_000)\n",
              "def count_positive(x)\n    return 0\n"],
    "grace": ["def add_boxes(a, b):\n    hog = []\n    while True:\n"
              "        hog.append(torch.ones(50_000_000))\n"],
}


@pytest.fixture(scope="module")
def graded_class(tmp_path_factory):
    """Grade the fake class (plus malformed notebooks) once through the CLI."""
    src = tmp_path_factory.mktemp("submissions")
    paths = [make_notebook(src / f"{name}.ipynb", *cells) for name, cells in CLASS.items()]
    (src / "mallory.ipynb").write_text("this is not json {")
    paths.append(src / "mallory.ipynb")
    (src / "list.ipynb").write_text("[1, 2]")
    paths.append(src / "list.ipynb")
    paths.append(make_notebook(src / "nolesson.ipynb", ADD, lesson=None))
    paths.append(make_notebook(src / "unknown.ipynb", ADD, lesson="42"))
    out = tmp_path_factory.mktemp("grades")
    temp_before = set(Path(tempfile.gettempdir()).glob("course-grade-*"))
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        rc = cli.main([*map(str, paths), "--out", str(out), "--device", "cpu", "--seed", "0",
                       "--memory", "1024", "--jobs", "2"])
    reports = {p.stem: json.loads((out / f"{p.stem}.json").read_text()) for p in paths}
    leftover = set(Path(tempfile.gettempdir()).glob("course-grade-*")) - temp_before
    return {"rc": rc, "out": out, "reports": reports, "stdout": stdout.getvalue(),
            "paths": paths, "leftover": leftover}


def exercise(report: dict, name: str) -> dict:
    return next(e for e in report["exercises"] if e["name"] == name)


# ---------------------------------------------------------------------------------------------
# Whole-class run (children)
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_writes_json_per_student_and_one_csv_row_each(graded_class):
    assert graded_class["rc"] == 0
    out, paths = graded_class["out"], graded_class["paths"]
    for path in paths:
        assert (out / f"{path.stem}.json").is_file()
    with open(out / "report.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["student"] for r in rows] == [p.stem for p in paths]
    assert list(rows[0])[:4] == ["student", "lesson", "total", "max"]
    assert {"add_boxes_score", "add_boxes_status", "count_positive_status"} <= set(rows[0])
    alice = next(r for r in rows if r["student"] == "alice")
    assert (alice["total"], alice["max"], alice["add_boxes_status"]) == ("3", "3", "passed")
    stdout = graded_class["stdout"]
    assert all(f"{p.stem}:" in stdout for p in paths)  # one summary line each, then a table
    assert not list(out.glob("*.tmp"))
    assert not graded_class["leftover"]  # temporary working directories removed


@pytest.mark.slow
def test_correct_submission_gets_full_marks(graded_class):
    report = graded_class["reports"]["alice"]
    assert report["error"] is None and report["lesson"] == "99"
    assert report["score"] == report["max_score"] == 3.0
    assert [e["status"] for e in report["exercises"]] == ["passed", "passed"]
    assert exercise(report, "add_boxes")["cases"] == 2 + 3  # visible + hidden random
    assert report["grader_version"] and report["seconds"] > 0


@pytest.mark.slow
def test_unsolved_submission_gets_zero_not_implemented(graded_class):
    report = graded_class["reports"]["bob"]
    assert report["score"] == 0 and report["max_score"] == 3.0
    assert {e["status"] for e in report["exercises"]} == {"not_implemented"}
    assert "NotImplementedError" in exercise(report, "add_boxes")["feedback"]


@pytest.mark.slow
def test_wrong_answer_fails_naming_the_first_failing_visible_case(graded_class):
    result = exercise(graded_class["reports"]["dave"], "add_boxes")
    assert result["status"] == "failed"
    assert result["score"] == pytest.approx(2.0 * 1 / 5)  # only "no boxes" passes
    feedback = result["feedback"]
    assert "case 'two boxes'" in feedback
    assert "expected: [[1. , 1. , 3. , 3. ]" in feedback and "got:      [[-1. , -1." in feedback
    assert "hint: add the tensors" in feedback


@pytest.mark.slow
def test_exception_is_an_error_with_message_and_line(graded_class):
    result = exercise(graded_class["reports"]["dave"], "count_positive")
    assert result["status"] == "error" and result["score"] == 0
    assert "ValueError: boom" in result["feedback"]
    assert "line 3 of notebook cell 3" in result["feedback"]  # cell 1 is markdown


@pytest.mark.slow
def test_os_exit_is_an_error_and_the_process_group_is_killed(graded_class):
    result = exercise(graded_class["reports"]["erin"], "add_boxes")
    assert result["status"] == "error"
    assert "exited (code 0)" in result["feedback"]
    cmdlines = []
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            cmdlines.append((proc / "cmdline").read_bytes())
    assert not any(SLEEP_MARKER.encode() in c for c in cmdlines)


@pytest.mark.slow
def test_rigged_eq_object_fails(graded_class):
    result = exercise(graded_class["reports"]["erin"], "count_positive")
    assert result["status"] == "failed" and result["score"] == 0
    assert "returned a Always" in result["feedback"]


@pytest.mark.slow
def test_memory_hogs_get_memory(graded_class):
    huge = exercise(graded_class["reports"]["frank"], "add_boxes")
    loop = exercise(graded_class["reports"]["grace"], "add_boxes")
    assert huge["status"] == "memory" and loop["status"] == "memory"
    assert "memory limit" in huge["feedback"] and "enforce fail" not in huge["feedback"]


@pytest.mark.slow
def test_syntax_error_affects_only_its_exercise(graded_class):
    report = graded_class["reports"]["frank"]
    broken = exercise(report, "count_positive")
    assert broken["status"] == "error" and "SyntaxError" in broken["feedback"]
    assert exercise(report, "add_boxes")["status"] == "memory"  # the other cell still ran


@pytest.mark.slow
def test_missing_exercise_is_an_error(graded_class):
    result = exercise(graded_class["reports"]["grace"], "count_positive")
    assert result["status"] == "error"
    assert result["feedback"] == "no cell tagged 'exercise' defines count_positive"


@pytest.mark.slow
@pytest.mark.parametrize("student", ["mallory", "list", "nolesson", "unknown"])
def test_malformed_notebook_gets_an_error_report(graded_class, student):
    report = graded_class["reports"][student]
    assert report["error"] and report["exercises"] == [] and report["score"] == 0
    assert "alice" in graded_class["reports"]  # the others were still graded


@pytest.mark.slow
def test_infinite_loop_times_out_and_the_rest_gets_full_marks(tmp_path):
    path = make_notebook(tmp_path / "carol.ipynb",
                         "def add_boxes(a, b):\n    while True:\n        pass\n", COUNT)
    report = grade_notebook(path, device="cpu", timeout=4, seed=0)  # forked: no torch import
    loop, count = exercise(report, "add_boxes"), exercise(report, "count_positive")
    assert loop["status"] == "timeout" and loop["score"] == 0
    assert "time limit (4 s" in loop["feedback"]
    assert loop["seconds"] < 4 + 2
    assert count["status"] == "passed" and count["score"] == 1.0


# ---------------------------------------------------------------------------------------------
# The real lessons: every solution gets full marks, every student notebook 0 (not implemented)
# ---------------------------------------------------------------------------------------------


LESSON_NAMES = sorted(p.name for p in (ROOT / "solutions").glob("*.ipynb"))


@pytest.fixture(scope="module")
def lesson_reports(tmp_path_factory):
    """Grader reports of every solution and student notebook, keyed by (folder, name)."""
    paths = [ROOT / folder / name for name in LESSON_NAMES for folder in ("solutions", "notebooks")]
    # The same stem in both folders: grade each into its own output folder, two at a time.
    with ThreadPoolExecutor(2) as pool:
        reports = pool.map(lambda p: grade_many([p], tmp_path_factory.mktemp("lesson"),
                                                device="cpu", seed=0)[0], paths)
    return {(p.parent.name, p.name): r for p, r in zip(paths, reports, strict=True)}


@pytest.mark.slow
@pytest.mark.parametrize("name", LESSON_NAMES)
def test_lesson_solutions_get_full_marks(lesson_reports, name):
    report = lesson_reports["solutions", name]
    assert report["error"] is None and report["lesson"] == name[:2]
    assert report["max_score"] > 0
    assert report["score"] == report["max_score"], [e["feedback"] for e in report["exercises"]]


@pytest.mark.slow
@pytest.mark.parametrize("name", LESSON_NAMES)
def test_lesson_student_notebooks_get_zero_not_implemented(lesson_reports, name):
    report = lesson_reports["notebooks", name]
    assert report["error"] is None and report["lesson"] == name[:2]
    assert report["score"] == 0 and report["max_score"] > 0
    assert {e["status"] for e in report["exercises"]} == {"not_implemented"}, [
        e["feedback"] for e in report["exercises"]]


# ---------------------------------------------------------------------------------------------
# Fast tests (no children)
# ---------------------------------------------------------------------------------------------


def test_read_submission_finds_exercise_cells(tmp_path):
    path = make_notebook(tmp_path / "s.ipynb", "#plain\ndef add_boxes(a, b):\n    return 0\n",
                         ADD, COUNT_VIA_ADD, "def count_positive(x)\n    return 0\n")
    sub = read_submission(path)
    assert sub.lesson == "99"
    assert [c.number for c in sub.cells] == [3, 4, 5]  # markdown and untagged cells skipped
    assert sub.cells[0].defines == ("add_boxes",) and not sub.cells[0].syntax_error
    assert sub.cells[1].source.startswith("# %time")  # magics commented out
    assert sub.cells[2].defines == ("count_positive",)
    assert sub.cells[2].syntax_error.startswith("SyntaxError")
    assert sub.cell_defining("count_positive").number == 5  # the last definition wins
    assert "defines nms" in sub.missing_message("nms")


@pytest.mark.parametrize("text, message", [
    ("not json", "not a readable JSON notebook"),
    ("[]", "not a Jupyter notebook"),
    ('{"cells": [], "metadata": {}}', "no lesson id"),
    ('{"cells": [], "metadata": {"course": {"lesson": 5}}}', "no lesson id"),
])
def test_read_submission_rejects_malformed_files(tmp_path, text, message):
    path = tmp_path / "bad.ipynb"
    path.write_text(text)
    with pytest.raises(NotebookError, match=message):
        read_submission(path)


def test_grade_notebook_reports_unknown_lesson_without_raising(tmp_path):
    report = grade_notebook(make_notebook(tmp_path / "x.ipynb", ADD, lesson="42"), device="cpu")
    assert "unknown lesson '42'" in report["error"] and report["exercises"] == []


def test_transfer_round_trip_keeps_types_and_dtypes(tmp_path):
    value = {"boxes": torch.rand(3, 4), "idx": torch.tensor([2, 0], dtype=torch.int64),
             "mask": torch.tensor([True, False]), "loss": torch.tensor(1.25),
             "t": 0.5, "n": 3, "s": "linear", "none": None,
             "pair": (1, torch.zeros(0, 4)), "targets": [{"labels": torch.tensor([1])}]}
    tree = transfer.dump(value, tmp_path, "in_0")
    json.dumps(tree)  # plain JSON
    back = transfer.load(json.loads(json.dumps(tree)), tmp_path, device="cpu")
    assert back.keys() == value.keys()
    for key in ("boxes", "idx", "mask", "loss"):
        assert back[key].dtype == value[key].dtype and torch.equal(back[key], value[key])
    assert back["loss"].shape == ()  # a 0-d tensor stays 0-d
    assert (back["t"], back["n"], back["s"], back["none"]) == (0.5, 3, "linear", None)
    assert isinstance(back["pair"], tuple) and back["pair"][1].shape == (0, 4)
    assert torch.equal(back["targets"][0]["labels"], torch.tensor([1]))


def test_transfer_output_validation_rejects_garbage(tmp_path):
    good = transfer.dump((np.arange(3), 1.5, True), tmp_path, "out_0")
    assert transfer.load(good, tmp_path, validate=True)[1:] == (1.5, True)
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (tmp_path / "link.npy").symlink_to(tmp_path / "out_0_0.npy")
    bad = [{"array": "obj.npy"}, {"array": "link.npy"}, {"array": "../out_0_0.npy"},
           {"tensor": "out_0_0.npy"}, {"dict": {}}, {"list": []}, [1, 2], 1 << 70,
           {"tuple": [1], "array": "x.npy"}, "x" * 20_000]
    deep: object = 1
    for _ in range(50):
        deep = {"tuple": [deep]}
    for tree in [*bad, deep]:
        with pytest.raises(transfer.TransferError):
            transfer.load(tree, tmp_path, validate=True)


def test_hidden_case_feedback_never_shows_expected_values():
    for got, expected in [(3, 7), (np.array([1.0]), np.array([2.5])), ((1, 9.0), (1, 7.25)),
                          ("a", "secret")]:
        reason = _hidden_reason(got, expected, exercises.load_lesson("99")["add_boxes"])
        assert reason
        assert not any(str(v) in reason for v in ("7", "2.5", "1.5", "7.25", "secret")), reason


def test_child_environment_is_scrubbed(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADER_SECRET", "x")
    monkeypatch.setenv("PYTHONPATH", "/somewhere")
    env = child_env(tmp_path)
    assert set(env) <= {"PATH", "HOME", "TMPDIR", "LANG", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                        "CUDA_VISIBLE_DEVICES", "CUBLAS_WORKSPACE_CONFIG"}
    assert env["HOME"] == str(tmp_path)


def test_class_csv_has_a_row_for_an_ungraded_notebook(tmp_path):
    ok = {"student": "a", "lesson": "99", "score": 1.0, "max_score": 3.0, "error": None,
          "exercises": [{"name": "add_boxes", "score": 1.0, "status": "failed"}]}
    bad = {"student": "b", "lesson": None, "score": 0.0, "max_score": 0.0,
           "error": "not a notebook", "exercises": []}
    with open(write_class_csv([ok, bad], tmp_path), newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["student"], r["add_boxes_status"], r["error"]) for r in rows] == [
        ("a", "failed", ""), ("b", "", "not a notebook")]


def test_cli_usage_errors_exit_2(tmp_path, capsys):
    nb = make_notebook(tmp_path / "a.ipynb", ADD)
    (tmp_path / "sub").mkdir()
    twin = make_notebook(tmp_path / "sub" / "a.ipynb", ADD)
    assert cli.main([str(tmp_path / "missing.ipynb"), "--out", str(tmp_path)]) == 2
    assert cli.main([str(nb), str(twin), "--out", str(tmp_path)]) == 2
    assert cli.main([str(nb)]) == 2  # --out is required
    assert cli.main([str(nb), "--out", str(tmp_path), "--timeout", "0"]) == 2
    if not torch.cuda.is_available():
        assert cli.main([str(nb), "--out", str(tmp_path), "--device", "cuda"]) == 2
    assert "no such file" in capsys.readouterr().err
    assert not (tmp_path / "report.csv").exists()


def test_cli_help_exits_0(capsys):
    assert cli.main(["--help"]) == 0
    assert "--timeout" in capsys.readouterr().out


def test_prepare_travels_to_the_child_by_name_and_only_from_course_lib_exercises():
    from course_lib.exercises.lesson07 import with_model

    name = _import_name(with_model)
    assert name == "course_lib.exercises.lesson07:with_model" and _prepare(name) is with_model
    assert _import_name(None) is None and _prepare(None) is None
    with pytest.raises(ValueError, match="module-level function of course_lib.exercises"):
        _import_name(json.dumps)
    with pytest.raises(ValueError, match="refusing"):
        _prepare("os:system")


@pytest.mark.parametrize("visible, hidden, flagged", [
    (["passed", "passed"], ["failed", "failed", "failed"], True),
    (["passed"], ["failed", "failed"], True),
    (["passed", "passed"], ["failed", "passed", "failed"], False),  # a real bug, partly right
    (["passed", "failed"], ["failed", "failed"], False),  # fails a visible case: just failed
    (["passed"], ["failed", "error"], False),  # a crash is not a cheat sheet
    (["passed"], ["failed"], False),  # one hidden case is too little to flag
    ([], ["failed", "failed"], False),
])
def test_visible_only_answers_are_flagged_for_review(visible, hidden, flagged):
    drawn = [_Drawn(Case(f"v{i}", {}), False) for i in range(len(visible))]
    drawn += [_Drawn(Case(f"h{i}", {}), True) for i in range(len(hidden))]
    verdicts = [(status, "") for status in visible + hidden]
    assert _visible_only(drawn, verdicts) is flagged
