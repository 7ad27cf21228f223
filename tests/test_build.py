"""Tests of the single-source notebook build (course_lib/build.py, the `course-build` command)."""

from __future__ import annotations

import ast
import copy
import json
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from course_lib.build import (
    BuildError,
    build_all,
    build_notebook,
    find_repo_root,
    main,
    notebook_text,
    student_source,
)

REPO = Path(__file__).resolve().parents[1]
REPO_SOURCES = sorted((REPO / "solutions").glob("*.ipynb"))

SCALE = '''\
def scale(x, factor=2):
    """Multiply ``x`` by ``factor``.

    Args:
        x: a number.
        factor: another number.
    """
    ### BEGIN SOLUTION
    return x * factor
    ### END SOLUTION
'''
SCALE_STUB = '''\
def scale(x, factor=2):
    """Multiply ``x`` by ``factor``.

    Args:
        x: a number.
        factor: another number.
    """
    raise NotImplementedError("scale: write your solution here")
'''

RUNNING_SUM = '''\
import math


def running_sum(values):
    """Running sums of ``values``."""
    ### BEGIN SOLUTION
    total = 0
    ### END SOLUTION
    out = []
    for v in values:
        if not math.isnan(v):
            ### BEGIN SOLUTION
            total += v
            out.append(total)
            ### END SOLUTION
    return out'''
RUNNING_SUM_STUB = '''\
import math


def running_sum(values):
    """Running sums of ``values``."""
    raise NotImplementedError("running_sum: write your solution here")
    out = []
    for v in values:
        if not math.isnan(v):
            raise NotImplementedError("running_sum: write your solution here")
    return out'''


def slide(kind: str) -> dict:
    return {"slideshow": {"slide_type": kind}}


def make_solution() -> nbformat.NotebookNode:
    """A small executed solution notebook using every feature of the build."""
    nb = new_notebook(metadata={"course": {"lesson": "99"},
                                "kernelspec": {"name": "python3", "display_name": "Python 3",
                                               "language": "python"}})
    nb.cells = [
        new_markdown_cell("# Scaling\n\nWrite `scale` – a ✓ non-ASCII line.",
                          metadata=slide("slide")),
        new_code_cell("import math", metadata=slide("-"), execution_count=1),
        new_code_cell(SCALE, metadata={"tags": ["exercise"], **slide("subslide")},
                      execution_count=2),
        new_code_cell(RUNNING_SUM, metadata={"tags": ["exercise", "keep-me"], **slide("-")},
                      execution_count=3),
        new_code_cell("print(scale(2, 3))", metadata={"tags": ["solution-only"], **slide("-")},
                      execution_count=4,
                      outputs=[new_output("stream", name="stdout", text="6\n")]),
        new_code_cell("running_sum([1, 2])", metadata=slide("fragment"), execution_count=5,
                      outputs=[new_output("execute_result", data={"text/plain": "[1, 3]"},
                                          execution_count=5)]),
    ]
    return nb


def write(path: Path, nb: nbformat.NotebookNode) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(notebook_text(nb), encoding="utf-8")
    return path


@pytest.fixture
def dirs(tmp_path):
    """(solutions, notebooks) directories with one valid source, 01_scale.ipynb."""
    solutions, notebooks = tmp_path / "solutions", tmp_path / "notebooks"
    write(solutions / "01_scale.ipynb", make_solution())
    return solutions, notebooks


def run_cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------------------------------------
# Building one notebook
# ---------------------------------------------------------------------------------------------


def test_stub_replaces_the_function_body_keeping_signature_and_docstring():
    student = build_notebook(make_solution())
    assert student.cells[2].source == SCALE_STUB


def test_stubs_in_a_nested_block_and_two_regions_in_one_cell():
    student = build_notebook(make_solution())
    assert student.cells[3].source == RUNNING_SUM_STUB


@pytest.mark.parametrize("cell, name", [(2, "scale"), (3, "running_sum")])
def test_stubbed_cell_compiles_and_raises_not_implemented(cell, name):
    source = build_notebook(make_solution()).cells[cell].source
    namespace = {}
    exec(compile(source, f"<cell {cell}>", "exec"), namespace)
    with pytest.raises(NotImplementedError, match=f"^{name}: write your solution here$"):
        namespace[name]([1.0, 2.0]) if name == "running_sum" else namespace[name](3)


def test_solution_cells_still_work():
    namespace = {}
    for cell in make_solution().cells[1:4]:
        exec(cell.source, namespace)
    assert namespace["scale"](3) == 6
    assert namespace["running_sum"]([1, float("nan"), 2]) == [1, 3]


def test_outputs_and_execution_counts_cleared_in_every_code_cell():
    student = build_notebook(make_solution())
    code_cells = [c for c in student.cells if c.cell_type == "code"]
    assert len(code_cells) == 4
    for cell in code_cells:
        assert cell.outputs == [] and cell.execution_count is None


def test_saved_widget_state_is_dropped():
    solution = make_solution()
    solution.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    student = build_notebook(solution)
    assert "widgets" not in student.metadata and "widgets" in solution.metadata
    assert student.metadata.course.lesson == "99"


def test_solution_only_cells_removed_and_everything_else_kept():
    solution = make_solution()
    student = build_notebook(solution)
    kept = [c for c in solution.cells if "solution-only" not in c.metadata.get("tags", [])]
    assert len(kept) == len(solution.cells) - 1
    assert [c.id for c in student.cells] == [c.id for c in kept]
    assert [c.metadata for c in student.cells] == [c.metadata for c in kept]
    assert student.cells[3].metadata.tags == ["exercise", "keep-me"]
    assert student.cells[0] == kept[0]  # markdown untouched
    assert student.cells[1].source == kept[1].source  # non-exercise code: only outputs change
    assert student.metadata == solution.metadata
    assert student.metadata.course.lesson == "99"
    assert (student.nbformat, student.nbformat_minor) == (solution.nbformat,
                                                          solution.nbformat_minor)


def test_speaker_notes_do_not_reach_the_student_version():
    solution = make_solution()
    notes = new_markdown_cell("Ask: what is 2 x 3? (1 minute)", metadata=slide("notes"))
    solution.cells.insert(3, notes)
    student = build_notebook(solution)
    assert notes.id not in [c.id for c in student.cells]
    assert "Ask:" not in notebook_text(student)
    kept = [c.id for c in solution.cells
            if c is not notes and "solution-only" not in c.metadata.get("tags", [])]
    assert [c.id for c in student.cells] == kept  # only the notes (and solution-only) go
    assert solution.cells[3] is notes  # the source keeps its notes


def test_speaker_notes_cell_tagged_exercise_is_a_build_error():
    solution = make_solution()
    solution.cells[2].metadata.slideshow.slide_type = "notes"  # the SCALE exercise
    with pytest.raises(BuildError, match=r"cell 2 .*tagged 'exercise' but a speaker-notes"):
        build_notebook(solution)


def test_source_notebook_is_not_modified():
    solution = make_solution()
    before = copy.deepcopy(solution)
    build_notebook(solution)
    assert solution == before


def test_student_source_whitespace_tabs_and_last_line():
    source = ("def f(x):\n\t###   BEGIN SOLUTION\n\t### BEGIN SOLUTION   \n\treturn x\n"
              "  ### END SOLUTION")
    # the first line is not a marker (three spaces), so it stays as an ordinary comment
    assert student_source(source, "f") == (
        "def f(x):\n\t###   BEGIN SOLUTION\n\traise NotImplementedError(\"f: write your "
        "solution here\")")


def test_marker_text_inside_a_longer_line_is_not_a_marker(dirs):
    solutions, notebooks = dirs
    nb = make_solution()
    nb.cells[1].source = "import math  # ### BEGIN SOLUTION is only a marker on its own line"
    nb.cells[0].source += "\n\nMarkers look like `### END SOLUTION`."
    student = build_notebook(nb)
    assert student.cells[1].source == nb.cells[1].source


# ---------------------------------------------------------------------------------------------
# Files and determinism
# ---------------------------------------------------------------------------------------------


def test_two_builds_give_identical_bytes(tmp_path, dirs):
    solutions, notebooks = dirs
    report = build_all(solutions, notebooks)
    assert report.written == [notebooks / "01_scale.ipynb"]
    other = tmp_path / "other"
    build_all(solutions, other)
    data = (notebooks / "01_scale.ipynb").read_bytes()
    assert data == (other / "01_scale.ipynb").read_bytes()
    assert data.endswith(b"}\n") and data.startswith(b'{\n "cells": [\n  {\n')
    assert "✓".encode() in data  # ensure_ascii=False
    again = build_all(solutions, notebooks)
    assert again.written == [] and again.unchanged == [notebooks / "01_scale.ipynb"]
    source = nbformat.read(solutions / "01_scale.ipynb", as_version=4)
    assert nbformat.reads(data.decode(), as_version=4) == build_notebook(source)


def test_cli_writes_then_reports_unchanged(capsys, dirs):
    solutions, notebooks = dirs
    code, out, _ = run_cli(capsys, "--solutions", solutions, "--notebooks", notebooks)
    assert code == 0 and "01_scale.ipynb: written" in out
    code, out, _ = run_cli(capsys, "--solutions", solutions, "--notebooks", notebooks)
    assert code == 0 and "01_scale.ipynb: unchanged" in out


def test_cli_builds_only_the_named_notebooks(capsys, dirs):
    solutions, notebooks = dirs
    write(solutions / "02_other.ipynb", make_solution())
    code, out, _ = run_cli(capsys, "--solutions", solutions, "--notebooks", notebooks,
                           "02_other")
    assert code == 0
    assert sorted(p.name for p in notebooks.iterdir()) == ["02_other.ipynb"]
    code, _, err = run_cli(capsys, "--solutions", solutions, "--notebooks", notebooks, "03_no")
    assert code == 2 and "03_no.ipynb: no such source notebook" in err


def test_cli_defaults_to_the_repo_root(capsys, monkeypatch, tmp_path, dirs):
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "sub" / "deeper")
    assert find_repo_root() == tmp_path.resolve()
    code, out, _ = run_cli(capsys)
    assert code == 0 and "01_scale.ipynb: written" in out
    assert (tmp_path / "notebooks" / "01_scale.ipynb").is_file()


# ---------------------------------------------------------------------------------------------
# --check
# ---------------------------------------------------------------------------------------------


def test_check_in_sync_exits_0(capsys, dirs):
    solutions, notebooks = dirs
    build_all(solutions, notebooks)
    code, out, _ = run_cli(capsys, "--check", "--solutions", solutions, "--notebooks", notebooks)
    assert code == 0 and "in sync" in out


def test_check_stale_exits_1_and_names_the_notebook(capsys, dirs):
    solutions, notebooks = dirs
    build_all(solutions, notebooks)
    nb = make_solution()
    nb.cells[1].source = "import math  # changed"
    write(solutions / "01_scale.ipynb", nb)
    before = (notebooks / "01_scale.ipynb").read_bytes()
    code, out, _ = run_cli(capsys, "--check", "--solutions", solutions, "--notebooks", notebooks)
    assert code == 1
    assert "01_scale.ipynb: stale" in out and "run `make build`" in out
    assert (notebooks / "01_scale.ipynb").read_bytes() == before  # --check writes nothing


def test_check_names_missing_and_extra_notebooks(capsys, dirs):
    solutions, notebooks = dirs
    write(notebooks / "07_orphan.ipynb", make_solution())
    code, out, _ = run_cli(capsys, "--check", "--solutions", solutions, "--notebooks", notebooks)
    assert code == 1
    assert "01_scale.ipynb: missing" in out
    assert "07_orphan.ipynb: extra" in out
    assert "run `make build`" in out
    assert not (notebooks / "01_scale.ipynb").exists()


def test_check_report_fields(dirs):
    solutions, notebooks = dirs
    report = build_all(solutions, notebooks, check=True)
    assert report.missing == [notebooks / "01_scale.ipynb"] and not report.in_sync
    assert not notebooks.exists()


# ---------------------------------------------------------------------------------------------
# Malformed sources
# ---------------------------------------------------------------------------------------------

EXERCISE = {"tags": ["exercise"]}
MALFORMED = {
    "begin without end": (
        "def f(x):\n    ### BEGIN SOLUTION\n    return x\n", EXERCISE, "code",
        ["line 2", "'### BEGIN SOLUTION' without a matching '### END SOLUTION'"]),
    "end without begin": (
        "def f(x):\n    return x\n    ### END SOLUTION\n", EXERCISE, "code",
        ["line 3", "'### END SOLUTION' without a matching '### BEGIN SOLUTION'"]),
    "nested begin": (
        "def f(x):\n    ### BEGIN SOLUTION\n    ### BEGIN SOLUTION\n    return x\n"
        "    ### END SOLUTION\n", EXERCISE, "code",
        ["line 3", "cannot nest"]),
    "marker in an untagged code cell": (
        "def f(x):\n    ### BEGIN SOLUTION\n    return x\n    ### END SOLUTION\n", {}, "code",
        ["line 2", "line 4", "not tagged 'exercise'"]),
    "marker in a markdown cell": (
        "Some text\n\n### END SOLUTION\n", {}, "markdown",
        ["line 3", "not tagged 'exercise'"]),
    "exercise without a region": (
        "def f(x):\n    return x\n", EXERCISE, "code", ["has no region"]),
    "two functions": (
        "def f(x):\n    ### BEGIN SOLUTION\n    return x\n    ### END SOLUTION\n\n\n"
        "def g(x):\n    return x\n", EXERCISE, "code",
        ["exactly one top-level function", "'f' (line 1), 'g' (line 7)"]),
    "no function": (
        "### BEGIN SOLUTION\nx = 1\n### END SOLUTION\n", EXERCISE, "code",
        ["exactly one top-level function", "found none"]),
    "region outside the function": (
        "def f(x):\n    return x\n\n\nfor i in range(3):\n    ### BEGIN SOLUTION\n"
        "    print(i)\n    ### END SOLUTION\n", EXERCISE, "code",
        ["line 6", "not inside the body of 'f'"]),
    "does not parse": (
        "def f(x):\n    ### BEGIN SOLUTION\n    return x +\n    ### END SOLUTION\n",
        EXERCISE, "code", ["line 3", "does not parse"]),
    "exercise tag on markdown": (
        "### BEGIN SOLUTION\ntext\n### END SOLUTION\n", EXERCISE, "markdown",
        ["tagged 'exercise' but is a markdown cell"]),
}


def malformed_notebook(source: str, metadata: dict, cell_type: str) -> nbformat.NotebookNode:
    nb = make_solution()
    new = new_code_cell if cell_type == "code" else new_markdown_cell
    bad = new(source, metadata=copy.deepcopy(metadata))
    bad.id = "badc0ffe"
    nb.cells.insert(1, bad)
    return nb


@pytest.mark.parametrize("case", list(MALFORMED), ids=list(MALFORMED))
def test_malformed_source_raises_build_error_naming_notebook_cell_and_line(case):
    source, metadata, cell_type, fragments = MALFORMED[case]
    with pytest.raises(BuildError) as info:
        build_notebook(malformed_notebook(source, metadata, cell_type), "solutions/05_x.ipynb")
    for problem in info.value.problems:
        assert problem.startswith("solutions/05_x.ipynb: cell 1 (id badc0ffe)"), problem
    text = str(info.value)
    for fragment in fragments:
        assert fragment in text


@pytest.mark.parametrize("case", ["end without begin", "marker in a markdown cell"])
def test_malformed_source_cli_exits_2_and_writes_nothing(capsys, dirs, case):
    solutions, notebooks = dirs
    source, metadata, cell_type, fragments = MALFORMED[case]
    write(solutions / "05_bad.ipynb", malformed_notebook(source, metadata, cell_type))
    code, out, err = run_cli(capsys, "--solutions", solutions, "--notebooks", notebooks)
    assert code == 2
    assert not notebooks.exists()  # the valid 01_scale.ipynb is not written either
    first = err.splitlines()[0]
    assert "05_bad.ipynb: cell 1 (id badc0ffe), " + fragments[0] in first
    assert fragments[1] in first


def test_every_problem_in_every_notebook_is_reported(capsys, dirs):
    solutions, _ = dirs
    write(solutions / "05_a.ipynb", malformed_notebook(*MALFORMED["end without begin"][:3]))
    write(solutions / "06_b.ipynb", malformed_notebook(*MALFORMED["two functions"][:3]))
    with pytest.raises(BuildError) as info:
        build_all(solutions, solutions.parent / "notebooks")
    assert len(info.value.problems) == 2
    assert "05_a.ipynb" in info.value.problems[0] and "06_b.ipynb" in info.value.problems[1]


@pytest.mark.parametrize("text", ["{not json", "[]", "{}", '{"nbformat": 4, "cells": []}'])
def test_unreadable_notebook_is_a_build_error(capsys, dirs, text):
    solutions, notebooks = dirs
    (solutions / "05_broken.ipynb").write_text(text)
    code, _, err = run_cli(capsys, "--solutions", solutions, "--notebooks", notebooks)
    assert code == 2
    assert "05_broken.ipynb: not a valid notebook" in err


def test_cells_without_ids_are_rejected_not_given_random_ids(dirs):
    solutions, notebooks = dirs
    data = json.loads(notebook_text(make_solution()))
    del data["cells"][1]["id"]
    (solutions / "01_scale.ipynb").write_text(json.dumps(data))
    with pytest.raises(BuildError, match="01_scale.ipynb: not a valid notebook .*has no id"):
        build_all(solutions, notebooks)


# ---------------------------------------------------------------------------------------------
# The real repository (pass once the lesson notebooks exist and `make build` has run)
# ---------------------------------------------------------------------------------------------


def marked_lines(nb: nbformat.NotebookNode) -> tuple[set[str], set[str]]:
    """Stripped lines inside and outside solution regions (solution-only cells: neither)."""
    inside, outside = set(), set()
    for cell in nb.cells:
        if "solution-only" in cell.metadata.get("tags", []):
            continue
        in_region = False
        for line in cell.source.split("\n"):
            text = line.strip()
            if text in ("### BEGIN SOLUTION", "### END SOLUTION"):
                in_region = text == "### BEGIN SOLUTION"
                continue
            (inside if in_region else outside).add(text)
    return inside, outside


def test_repo_has_solution_notebooks():
    assert REPO_SOURCES, "no solutions/*.ipynb yet"


def test_repo_notebooks_in_sync(capsys):
    code, out, err = run_cli(capsys, "--check", "--solutions", REPO / "solutions",
                             "--notebooks", REPO / "notebooks")
    assert code == 0, out + err


@pytest.mark.parametrize("source", REPO_SOURCES, ids=[p.stem for p in REPO_SOURCES])
def test_repo_exercise_stubs_raise_not_implemented(source):
    from course_lib.exercises import load_lesson
    from course_lib.grading.child import PREAMBLE

    student = nbformat.read(REPO / "notebooks" / source.name, as_version=4)
    exercises = load_lesson(student.metadata["course"]["lesson"])
    cells = [c for c in student.cells if "exercise" in c.metadata.get("tags", [])]
    solution = nbformat.read(source, as_version=4)
    assert len(cells) == sum("exercise" in c.metadata.get("tags", []) for c in solution.cells)
    for cell in cells:
        assert "NotImplementedError" in cell.source
        (fn,) = [n for n in ast.parse(cell.source).body if isinstance(n, ast.FunctionDef)]
        assert fn.name in exercises, f"{fn.name} is not an exercise of the lesson"
        namespace = {}
        exec(PREAMBLE, namespace)
        exec(compile(cell.source, f"{source.name}: {fn.name}", "exec"), namespace)
        kwargs = exercises[fn.name].inputs(exercises[fn.name].cases[0].kwargs)
        with pytest.raises(NotImplementedError):
            namespace[fn.name](**kwargs)


@pytest.mark.parametrize("source", REPO_SOURCES, ids=[p.stem for p in REPO_SOURCES])
def test_repo_student_notebook_leaks_no_solution_line(source):
    solution = nbformat.read(source, as_version=4)
    student = nbformat.read(REPO / "notebooks" / source.name, as_version=4)
    inside, outside = marked_lines(solution)
    secret = {line for line in inside - outside if len(line) > 5}
    shown = {line.strip() for cell in student.cells for line in cell.source.split("\n")}
    assert not secret & shown, f"solution lines in the student notebook: {secret & shown}"
    for cell in student.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None
