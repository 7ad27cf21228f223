"""Conventions every lesson notebook follows (slides, exercises, self-checks, nbval tags)."""

import ast
from pathlib import Path

import nbformat
import pytest

from course_lib.exercises import LESSONS, load_lesson

ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS = sorted((ROOT / "solutions").glob("*.ipynb"))
SLIDE_TYPES = {"slide", "subslide", "fragment", "-", "skip", "notes"}


@pytest.fixture(params=SOLUTIONS, ids=lambda p: p.name)
def notebook(request):
    return nbformat.read(request.param, as_version=4)


def tags(cell):
    return cell.metadata.get("tags", [])


def test_every_lesson_has_a_solution_notebook():
    lessons = {nbformat.read(p, as_version=4).metadata["course"]["lesson"] for p in SOLUTIONS}
    assert lessons == set(LESSONS)


def test_file_name_matches_lesson_metadata(notebook):
    course = notebook.metadata["course"]
    assert course["title"]
    name = next(p.name for p in SOLUTIONS
                if nbformat.read(p, as_version=4).metadata["course"] == course)
    assert name.startswith(course["lesson"] + "_")


def test_every_cell_has_slide_metadata_and_the_deck_opens_with_a_title(notebook):
    for i, cell in enumerate(notebook.cells):
        slide_type = cell.metadata.get("slideshow", {}).get("slide_type")
        assert slide_type in SLIDE_TYPES, f"cell {i} has slide_type {slide_type!r}"
    first = notebook.cells[0]
    assert first.cell_type == "markdown" and first.source.startswith("# ")
    assert first.metadata.slideshow.slide_type == "slide"


def test_every_lesson_has_speaker_notes_for_the_instructor(notebook):
    # markdown cells of slide type "notes": the decks' speaker view, never the student version
    notes = [cell for cell in notebook.cells
             if cell.metadata.get("slideshow", {}).get("slide_type") == "notes"]
    assert 3 <= len(notes) <= 6
    assert all(cell.cell_type == "markdown" and cell.source.strip() for cell in notes)
    assert notebook.cells[1] in notes, "the title slide's notes give the lesson's timing"
    assert "Timing" in notebook.cells[1].source


def test_exercises_match_the_lesson_table_and_each_is_self_checked(notebook):
    exercises = load_lesson(notebook.metadata["course"]["lesson"])
    defined = []
    for i, cell in enumerate(notebook.cells):
        if "exercise" not in tags(cell):
            continue
        (fn,) = [n for n in ast.parse(cell.source).body if isinstance(n, ast.FunctionDef)]
        defined.append(fn.name)
        assert ast.get_docstring(fn), f"exercise {fn.name} needs a docstring"
        following = notebook.cells[i + 1]
        assert following.cell_type == "code" and f"check({fn.name})" in following.source, \
            f"the cell after exercise {fn.name} must run check({fn.name})"
    assert sorted(defined) == sorted(exercises)


def test_solution_notebooks_are_stored_executed_without_errors(notebook):
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code), "run the notebook (make execute)"
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors


def test_widget_cells_are_excluded_from_output_comparison(notebook):
    for cell in notebook.cells:
        shows_widget = any("application/vnd.jupyter.widget-view+json" in o.get("data", {})
                           for o in cell.get("outputs", []))
        if shows_widget:
            assert "nbval-ignore-output" in tags(cell), cell.source
