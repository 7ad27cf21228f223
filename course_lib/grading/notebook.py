"""Read a submitted notebook and pick out its exercise cells, without running anything.

A submission is a ``.ipynb`` file whose notebook metadata names the lesson
(``metadata["course"]["lesson"]``, e.g. ``"05"``) and whose exercise cells are code cells
tagged ``exercise`` (``cell.metadata.tags``). Each exercise cell defines one top-level function
named like an exercise of the lesson; the grader runs all exercise cells, in notebook order, in
one namespace, so a student's function may call the student's other exercise functions.

Parsing is static (``ast``): a cell with a syntax error is still kept, with its error, so the
exercise it was meant to define gets a clear message and the other exercises are unaffected.
IPython magics (``%time``, ``!pip``) are commented out: they mean nothing outside Jupyter.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass
from pathlib import Path

MAX_NOTEBOOK_BYTES = 20 * 1024 * 1024
EXERCISE_TAG = "exercise"


class NotebookError(ValueError):
    """The file is not a gradable notebook (not JSON, not a notebook, no lesson metadata)."""


@dataclass(frozen=True)
class ExerciseCell:
    """One code cell tagged ``exercise``.

    Attributes:
        number: the cell's position in the notebook, counting from 1 (all cell types).
        source: the cell's code, magics commented out.
        defines: names of the top-level functions it defines.
        syntax_error: ``"SyntaxError: ... (line L)"`` when the cell does not parse, else ``""``.
    """

    number: int
    source: str
    defines: tuple[str, ...]
    syntax_error: str = ""


@dataclass(frozen=True)
class Submission:
    """What the grader needs from a notebook: the lesson id and the exercise cells in order."""

    lesson: str
    cells: tuple[ExerciseCell, ...]

    def cell_defining(self, name: str) -> ExerciseCell | None:
        """The last exercise cell that defines ``name`` (the one that wins when run in order)."""
        found = [c for c in self.cells if name in c.defines]
        return found[-1] if found else None

    def missing_message(self, name: str) -> str:
        """Feedback for an exercise that no cell defines (mentions unreadable cells)."""
        message = f"no cell tagged '{EXERCISE_TAG}' defines {name}"
        broken = [c for c in self.cells if c.syntax_error and not c.defines]
        if broken:
            notes = "; ".join(f"cell {c.number}: {c.syntax_error}" for c in broken)
            message += f" (cells that could not be read: {notes})"
        return message


def read_submission(path: str | Path) -> Submission:
    """Read a notebook file and extract its lesson id and exercise cells.

    Raises:
        NotebookError: if the file cannot be read, is not a JSON notebook, or has no lesson
            id in ``metadata["course"]["lesson"]``.
    """
    path = Path(path)
    try:
        if path.stat().st_size > MAX_NOTEBOOK_BYTES:
            raise NotebookError(f"{path.name} is larger than {MAX_NOTEBOOK_BYTES >> 20} MB")
        data = json.loads(path.read_text(encoding="utf-8"))
    except NotebookError:
        raise
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise NotebookError(f"{path.name} is not a readable JSON notebook: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("cells"), list):
        raise NotebookError(f"{path.name} is not a Jupyter notebook (no list of cells)")
    metadata = data.get("metadata")
    course = metadata.get("course") if isinstance(metadata, dict) else None
    lesson = course.get("lesson") if isinstance(course, dict) else None
    if not isinstance(lesson, str) or not lesson:
        raise NotebookError(
            f"{path.name} has no lesson id in its metadata (metadata['course']['lesson']); "
            "was it saved from the course's notebook?"
        )
    cells = []
    for number, cell in enumerate(data["cells"], start=1):
        if not isinstance(cell, dict) or cell.get("cell_type") != "code":
            continue
        cell_meta = cell.get("metadata")
        tags = cell_meta.get("tags") if isinstance(cell_meta, dict) else None
        if not isinstance(tags, list) or EXERCISE_TAG not in tags:
            continue
        cells.append(parse_cell(number, _joined_source(cell.get("source", ""))))
    return Submission(lesson=lesson, cells=tuple(cells))


def parse_cell(number: int, source: str) -> ExerciseCell:
    """Comment out magics and find the top-level functions a cell defines."""
    source = _comment_out_magics(source)
    try:
        tree = ast.parse(source, filename=f"<notebook cell {number}>")
    except SyntaxError as exc:
        # Keep the cell so its exercise gets the syntax error as feedback.
        names = tuple(re.findall(r"^(?:async\s+)?def\s+(\w+)", source, flags=re.MULTILINE))
        error = f"SyntaxError: {exc.msg} (line {exc.lineno})"
        return ExerciseCell(number, source, names, error)
    names = tuple(node.name for node in tree.body
                  if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)))
    return ExerciseCell(number, source, names)


def _joined_source(source: object) -> str:
    if isinstance(source, list):
        return "".join(s for s in source if isinstance(s, str))
    return source if isinstance(source, str) else ""


def _comment_out_magics(source: str) -> str:
    lines = source.splitlines()
    return "\n".join("# " + line if line.lstrip().startswith(("%", "!")) else line
                     for line in lines)
