"""Build the student notebooks from the solution notebooks: one source per notebook.

``solutions/NN_topic.ipynb`` is the source, complete and executed. ``course-build`` writes
``notebooks/NN_topic.ipynb``, the version students get (nbgrader style):

* A code cell tagged ``exercise`` defines one top-level function whose name equals the
  ``course_lib`` reference it is graded against. The student's part sits between the lines
  ``### BEGIN SOLUTION`` and ``### END SOLUTION`` (a cell may hold several such regions). Each
  region, markers included, becomes one line
  ``raise NotImplementedError("<name>: write your solution here")`` at the BEGIN marker's
  indentation; the signature and the docstring, outside the markers, stay.
* A cell tagged ``solution-only`` (a worked answer, a cell that only makes sense once the
  exercise is solved) is left out of the student version.
* A speaker-notes cell (slide type ``notes``: what the instructor says, asks and watches the
  clock for; the slide decks show it in the speaker view) is left out too.
* Every code cell loses its outputs and execution count, and the notebook loses the widget
  state saved by the execution (``metadata.widgets``: rendered widget views are outputs too).
  Everything else is kept as it is: cell ids, tags, slide types, the rest of the notebook's
  metadata (``course.lesson``). The written bytes depend on the source only, so two builds
  give identical files.

A mistake in a source raises :class:`BuildError`, one line per problem naming the notebook, the
cell (its index in the source, counted from 0, and its id) and the line within the cell:
unbalanced or nested markers, a marker in a cell not tagged ``exercise``, an ``exercise`` cell
without a region or without exactly one top-level function, a region outside that function,
a file that is not a notebook.

Command line (``make build`` runs the first form)::

    course-build                  # write notebooks/ from solutions/ (only what changed)
    course-build --check          # write nothing; exit 1 when notebooks/ is out of date
    course-build 05_iou_nms_map   # build one notebook
    course-build --verify         # grade every solution (full marks) and student notebook (0)

``--verify`` (:func:`verify_lessons`) grades each lesson's solution and student notebook with
the batch grader (:func:`course_lib.grading.runner.grade_notebook`, on CPU, a fixed seed) and
exits 1 unless every solution gets full marks and every student notebook gets 0 with every
exercise ``not_implemented`` (a stub that crashes, or returns something, is a build problem);
it writes nothing and also fails when a student notebook is missing or stale.
"""

from __future__ import annotations

import argparse
import ast
import copy
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nbformat
from nbformat import NotebookNode

BEGIN = "### BEGIN SOLUTION"
END = "### END SOLUTION"
EXERCISE_TAG = "exercise"
SOLUTION_ONLY_TAG = "solution-only"
NOTES = "notes"  # the slide type of a speaker-notes cell: instructors only
STUB = 'raise NotImplementedError("{name}: write your solution here")'


class BuildError(Exception):
    """A source notebook cannot be built; ``problems`` holds one line per mistake."""

    def __init__(self, problems: Iterable[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


@dataclass
class BuildReport:
    """What :func:`build_all` did, or with ``check=True`` would do, to each student notebook."""

    written: list[Path] = field(default_factory=list)
    unchanged: list[Path] = field(default_factory=list)
    missing: list[Path] = field(default_factory=list)  # check only: not built yet
    stale: list[Path] = field(default_factory=list)  # check only: differs from the build
    extra: list[Path] = field(default_factory=list)  # a student notebook without a source

    @property
    def in_sync(self) -> bool:
        """Whether ``notebooks/`` holds exactly what the build writes."""
        return not (self.missing or self.stale or self.extra)


# ---------------------------------------------------------------------------------------------
# One cell
# ---------------------------------------------------------------------------------------------


def _regions(lines: list[str]) -> tuple[list[tuple[int, int]], list[str]]:
    """The marked regions as (BEGIN, END) line indices, and the marker problems found."""
    regions, problems, start = [], [], None
    for i, line in enumerate(lines):
        marker = line.strip()
        if marker == BEGIN and start is not None:
            problems.append(f"line {i + 1}: {BEGIN!r} inside the region opened on line "
                            f"{start + 1} (regions cannot nest)")
        elif marker == BEGIN:
            start = i
        elif marker == END and start is None:
            problems.append(f"line {i + 1}: {END!r} without a matching {BEGIN!r}")
        elif marker == END:
            regions.append((start, i))
            start = None
    if start is not None:
        problems.append(f"line {start + 1}: {BEGIN!r} without a matching {END!r}")
    return regions, problems


def student_source(source: str, fn_name: str, where: str = "cell") -> str:
    """Replace every marked region of one cell's source with the stub.

    Args:
        source: the cell's source, as in the solution notebook.
        fn_name: the exercise function's name, quoted in the stub's message.
        where: names the cell in error messages (``"solutions/05_x.ipynb: cell 3 (id ab12)"``).

    Returns:
        The source with each region, markers included, replaced by one
        ``raise NotImplementedError(...)`` line at the BEGIN marker's indentation.

    Raises:
        BuildError: for a BEGIN without an END, an END without a BEGIN or nested regions.
    """
    lines = source.split("\n")
    regions, problems = _regions(lines)
    if problems:
        raise BuildError(f"{where}, {problem}" for problem in problems)
    for start, end in reversed(regions):  # from the bottom, so earlier indices stay valid
        begin = lines[start]
        indent = begin[: len(begin) - len(begin.lstrip())]
        lines[start : end + 1] = [indent + STUB.format(name=fn_name)]
    return "\n".join(lines)


def _parse(source: str, where: str, what: str) -> ast.Module:
    try:
        return ast.parse(source)
    except SyntaxError as exc:
        problem = f"{where}, line {exc.lineno}: {what} does not parse: {exc.msg}"
        raise BuildError([problem]) from None


def _functions(tree: ast.Module) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    return [node for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]


def _exercise_source(cell: NotebookNode, where: str) -> str:
    """The student version of an ``exercise`` cell's source, after checking the cell."""
    if cell.cell_type != "code":
        raise BuildError([f"{where}: tagged {EXERCISE_TAG!r} but is a {cell.cell_type} cell"])
    functions = _functions(_parse(cell.source, where, "the cell"))
    if len(functions) != 1:
        names = ", ".join(f"{f.name!r} (line {f.lineno})" for f in functions) or "none"
        raise BuildError([f"{where}: an {EXERCISE_TAG!r} cell defines exactly one top-level "
                          f"function, named like the reference it is graded against; "
                          f"found {names}"])
    name = functions[0].name
    regions, _ = _regions(cell.source.split("\n"))
    student = student_source(cell.source, name, where)  # raises on unbalanced markers
    if not regions:
        raise BuildError([f"{where}: tagged {EXERCISE_TAG!r} but has no region between "
                          f"{BEGIN!r} and {END!r}"])

    # Each stub must land inside the function, or the student's cell would raise when run.
    tree = _parse(student, where, "the student version (check the markers' indentation)")
    inside = {node.lineno for fn in _functions(tree) if fn.name == name
              for node in ast.walk(fn) if isinstance(node, ast.Raise)}
    outside, removed = [], 0
    for start, end in regions:
        if start - removed + 1 not in inside:  # the stub's line number in the student version
            outside.append(start + 1)
        removed += end - start
    if outside:
        raise BuildError(f"{where}, line {line}: the region is not inside the body of {name!r}"
                         for line in outside)
    return student


def build_notebook(nb: NotebookNode, path: str | Path = "notebook") -> NotebookNode:
    """The student version of a solution notebook (``nb`` itself is left unchanged).

    Args:
        nb: the solution notebook (nbformat 4).
        path: names the notebook in error messages.

    Returns:
        A new notebook: regions of ``exercise`` cells stubbed, ``solution-only`` cells and
        speaker notes (slide type ``notes``) removed, code cells' outputs and execution
        counts and the saved widget state cleared, everything else kept.

    Raises:
        BuildError: listing every problem found in the notebook, one line each.
    """
    student = copy.deepcopy(nb)
    cells, problems = [], []
    for index, cell in enumerate(student.cells):
        where = f"{path}: cell {index}" + (f" (id {cell.id})" if "id" in cell else "")
        tags = cell.get("metadata", {}).get("tags", [])
        notes = cell.get("metadata", {}).get("slideshow", {}).get("slide_type") == NOTES
        if SOLUTION_ONLY_TAG in tags or notes:
            if EXERCISE_TAG in tags:
                why = (f"tagged both {EXERCISE_TAG!r} and {SOLUTION_ONLY_TAG!r}"
                       if SOLUTION_ONLY_TAG in tags else
                       f"tagged {EXERCISE_TAG!r} but a speaker-notes cell (slide type {NOTES!r})")
                problems.append(f"{where}: {why}; keep one")
            continue
        try:
            if EXERCISE_TAG in tags:
                cell.source = _exercise_source(cell, where)
            else:
                problems += [f"{where}, line {i + 1}: {line.strip()!r} in a cell not tagged "
                             f"{EXERCISE_TAG!r} (tag the cell or remove the marker)"
                             for i, line in enumerate(cell.source.split("\n"))
                             if line.strip() in (BEGIN, END)]
        except BuildError as err:
            problems += err.problems
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        cells.append(cell)
    if problems:
        raise BuildError(problems)
    student.cells = cells
    student.metadata.pop("widgets", None)  # saved widget views: outputs of the executed source
    return student


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------


def _show(path: Path) -> str:
    """``path`` relative to the current directory when it lies below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def read_notebook(path: Path) -> NotebookNode:
    """Read and validate a notebook, as nbformat 4.

    Raises:
        BuildError: if the file is not valid JSON, not a notebook, or has cells without ids.
    """
    try:
        nb = nbformat.convert(nbformat.reader.reads(path.read_text(encoding="utf-8")), 4)
        # nbformat would invent random ids for these, and two builds would differ
        if nb.nbformat_minor >= 5 and any("id" not in cell for cell in nb.get("cells", [])):
            raise ValueError("a cell has no id (nbformat 4.5 needs one); re-save it in Jupyter")
        nbformat.validate(nb)
    except Exception as exc:  # nbformat raises many kinds: NotJSONError, ValidationError, ...
        reason = str(exc).strip().split("\n")[0]
        raise BuildError([f"{_show(path)}: not a valid notebook ({type(exc).__name__}: "
                          f"{reason})"]) from None
    return nb


def notebook_text(nb: NotebookNode) -> str:
    """The notebook as written to disk: the same bytes for the same notebook, every time."""
    return nbformat.writes(nb, indent=1, ensure_ascii=False) + "\n"


def build_all(solutions_dir: str | Path, notebooks_dir: str | Path, check: bool = False,
              only: Iterable[str] | None = None) -> BuildReport:
    """Build ``notebooks_dir/NAME.ipynb`` from every ``solutions_dir/NAME.ipynb``.

    Args:
        solutions_dir: the source notebooks.
        notebooks_dir: where the student notebooks go (created when needed).
        check: write nothing; report which student notebooks are missing or stale instead.
        only: build just these notebooks (names like ``05_iou_nms_map`` or paths; the file
            name is what counts). Extra notebooks are only looked for when this is ``None``.

    Returns:
        A :class:`BuildReport`.

    Raises:
        BuildError: listing every problem in every source; then nothing is written.
    """
    solutions_dir, notebooks_dir = Path(solutions_dir), Path(notebooks_dir)
    if not solutions_dir.is_dir():
        raise BuildError([f"{_show(solutions_dir)}: no such directory"])
    if only is None:
        sources = sorted(solutions_dir.glob("*.ipynb"))
    else:
        names = [Path(name).name for name in only]
        sources = [solutions_dir / (n if n.endswith(".ipynb") else n + ".ipynb") for n in names]

    built, problems = {}, []
    for src in sources:
        try:
            if not src.is_file():
                raise BuildError([f"{_show(src)}: no such source notebook"])
            built[notebooks_dir / src.name] = notebook_text(
                build_notebook(read_notebook(src), _show(src)))
        except BuildError as err:
            problems += err.problems
    if problems:
        raise BuildError(problems)

    report = BuildReport()
    for dst, text in built.items():
        data = text.encode("utf-8")
        old = dst.read_bytes() if dst.is_file() else None
        if old == data:
            report.unchanged.append(dst)
        elif check:
            (report.missing if old is None else report.stale).append(dst)
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(data)
            report.written.append(dst)
    if only is None and notebooks_dir.is_dir():
        report.extra = [p for p in sorted(notebooks_dir.glob("*.ipynb")) if p not in built]
    return report


# ---------------------------------------------------------------------------------------------
# --verify: the grader gives every solution full marks and every student notebook zero
# ---------------------------------------------------------------------------------------------

VERIFY_SEED = 0  # the hidden random cases are the same on every run
VERIFY_RANDOM = 2  # hidden random cases per exercise, on top of the visible ones
VERIFY_TIMEOUT = 120.0  # seconds per exercise: generous, a busy machine must not fail the check


@dataclass
class LessonCheck:
    """The grader's verdict on one lesson's solution and student notebook."""

    name: str  # the notebook's file name, e.g. 05_iou_nms_map.ipynb
    solution: dict[str, Any] | None = None  # grade_notebook's report, None if not graded
    student: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """Whether the solution gets full marks and the student notebook zero."""
        return not self.problems


def verify_problems(name: str, solution: dict[str, Any] | None,
                    student: dict[str, Any] | None) -> list[str]:
    """What is wrong with a lesson's grades, one line each (empty: all is well).

    Args:
        name: the notebook's file name (``05_iou_nms_map.ipynb``); its first two characters
            are the lesson id the notebooks must be registered under.
        solution: the grader's report of ``solutions/<name>`` (``None``: not graded).
        student: the grader's report of ``notebooks/<name>`` (``None``: not graded).

    Returns:
        Problems: the solution not getting full marks (per exercise, with the grader's first
        feedback line), the student notebook scoring above 0 or an exercise of it not being
        ``not_implemented`` (it crashed, timed out or returned something), either one not
        gradable, or registered under another lesson.
    """
    problems = []
    for what, report in (("solution", solution), ("student notebook", student)):
        if report is None:
            continue
        if report["error"]:
            problems.append(f"{name}: the {what} could not be graded: {report['error']}")
            continue
        if report["lesson"] != name[:2]:
            problems.append(f"{name}: the {what} is registered as lesson {report['lesson']!r}, "
                            f"expected {name[:2]!r} (metadata course.lesson)")
        if report["max_score"] <= 0:
            problems.append(f"{name}: the {what} has no graded exercise (max score 0)")
        for e in report["exercises"]:
            first = str(e.get("feedback", "")).strip().split("\n")[0][:200]
            score = f"{e['score']:g}/{e['max_score']:g}"
            if what == "solution" and e["status"] != "passed":
                problems.append(f"{name}: solution {e['name']} is {e['status']} ({score}), "
                                f"expected passed: {first}")
            elif what != "solution" and e["status"] != "not_implemented":
                problems.append(f"{name}: student stub {e['name']} is {e['status']} ({score}), "
                                f"expected not_implemented (NotImplementedError): {first}")
        if what == "solution" and report["score"] != report["max_score"]:
            problems.append(f"{name}: the solution scores {report['score']:g}/"
                            f"{report['max_score']:g}, expected full marks")
        if what != "solution" and report["score"] != 0:
            problems.append(f"{name}: the student notebook scores {report['score']:g}/"
                            f"{report['max_score']:g}, expected 0")
    return list(dict.fromkeys(problems))  # in order, without repeats


def verify_lessons(solutions_dir: str | Path, notebooks_dir: str | Path,
                   only: Iterable[str] | None = None, jobs: int = 1,
                   on_check: Callable[[LessonCheck], None] | None = None) -> list[LessonCheck]:
    """Grade every lesson's solution and student notebook; see :func:`verify_problems`.

    Grading runs the student code in the grader's sandbox on CPU, ``VERIFY_RANDOM`` hidden
    cases per exercise drawn with ``VERIFY_SEED``. A student notebook that is missing or stale
    (not what the build writes from its solution) is a problem too.

    Args:
        solutions_dir: the source notebooks.
        notebooks_dir: the student notebooks.
        only: just these notebooks (as for :func:`build_all`).
        jobs: notebooks graded at the same time (each child process needs about 1 GB).
        on_check: called with each lesson's result as soon as it is known.

    Returns:
        One :class:`LessonCheck` per source notebook, in name order.

    Raises:
        BuildError: if a source notebook does not build (nothing is graded then).
    """
    from course_lib.grading.runner import grade_notebook  # imports torch: only when verifying

    solutions_dir, notebooks_dir = Path(solutions_dir), Path(notebooks_dir)
    sync = build_all(solutions_dir, notebooks_dir, check=True, only=only)
    names = sorted(p.name for p in sync.unchanged + sync.stale + sync.missing)
    checks = {name: LessonCheck(name) for name in names}
    for path in sync.stale:
        checks[path.name].problems.append(f"{path.name}: the student notebook is stale (not what "
                                          f"its solution builds): run `make build`")
    for path in sync.missing:
        checks[path.name].problems.append(f"{path.name}: no student notebook: run `make build`")

    def grade(name: str) -> LessonCheck:
        check, start = checks[name], time.monotonic()
        check.solution = grade_notebook(solutions_dir / name, device="cpu",
                                        timeout=VERIFY_TIMEOUT, seed=VERIFY_SEED,
                                        num_random=VERIFY_RANDOM)
        if (notebooks_dir / name).is_file():
            check.student = grade_notebook(notebooks_dir / name, device="cpu",
                                           timeout=VERIFY_TIMEOUT, seed=VERIFY_SEED,
                                           num_random=VERIFY_RANDOM)
        check.problems += verify_problems(name, check.solution, check.student)
        check.seconds = time.monotonic() - start
        if on_check is not None:
            on_check(check)
        return check

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        return list(pool.map(grade, names))


def verify_table(checks: list[LessonCheck]) -> str:
    """A fixed-width table: lesson, solution score, student score, seconds, verdict."""
    def score(report: dict[str, Any] | None) -> str:
        if report is None:
            return "-"
        return "not graded" if report["error"] else (f"{report['score']:g}/"
                                                      f"{report['max_score']:g}")

    rows = [["notebook", "solution", "student", "seconds", "verdict"]]
    rows += [[c.name, score(c.solution), score(c.student), f"{c.seconds:.0f}",
              "ok" if c.ok else "FAIL"] for c in checks]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip()
             for r in rows]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def _problems(err: BuildError, command: str, outcome: str) -> int:
    """Print a :class:`BuildError`'s problems and their count to stderr; the exit status 2."""
    for problem in err.problems:
        print(problem, file=sys.stderr)
    print(f"{command}: {len(err.problems)} problem(s) in the sources{outcome}", file=sys.stderr)
    return 2


def _verify_main(solutions: Path, notebooks: Path, only: list[str] | None, jobs: int) -> int:
    def progress(check: LessonCheck) -> None:
        print(f"{check.name}: {'ok' if check.ok else 'FAIL'} ({check.seconds:.0f} s)", flush=True)

    start = time.monotonic()
    try:
        checks = verify_lessons(solutions, notebooks, only=only, jobs=jobs, on_check=progress)
    except BuildError as err:
        return _problems(err, "course-build --verify", "")
    print()
    print(verify_table(checks))
    failed = [c for c in checks if not c.ok]
    for check in failed:
        for problem in check.problems:
            print(f"FAIL {problem}", file=sys.stderr)
    took = f"in {time.monotonic() - start:.0f} s"
    if not checks:
        print(f"course-build --verify: no source notebook in {_show(solutions)}", file=sys.stderr)
        return 1
    if failed:
        print(f"course-build --verify: {len(failed)} of {len(checks)} lesson(s) failed {took}: "
              f"every solution must get full marks, every student notebook 0 "
              f"(not_implemented)", file=sys.stderr)
        return 1
    print(f"course-build --verify: {len(checks)} lesson(s) ok {took}: solutions get full "
          f"marks, student notebooks 0")
    return 0


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def find_repo_root(start: Path | None = None) -> Path:
    """The nearest directory at or above ``start`` (default: cwd) holding ``pyproject.toml``."""
    start = (start or Path.cwd()).resolve()
    return next((d for d in (start, *start.parents) if (d / "pyproject.toml").is_file()), start)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``course-build``; returns the exit status.

    0: done (or in sync, or verified); 1: ``--check`` found notebooks out of date, or
    ``--verify`` found a lesson whose grades are wrong; 2: a source does not build.
    """
    parser = argparse.ArgumentParser(
        prog="course-build",
        description="Write the student notebooks (notebooks/) from the solution notebooks "
                    "(solutions/): solution regions become stubs, outputs are cleared.")
    parser.add_argument("notebooks_only", nargs="*", metavar="NOTEBOOK",
                        help="build only these (a name like 05_iou_nms_map or a path); "
                             "default: every solutions/*.ipynb")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true",
                      help="write nothing; exit 1 when a student notebook is missing, stale "
                           "or has no source")
    mode.add_argument("--verify", action="store_true",
                      help="write nothing; grade every solution and student notebook (CPU, "
                           "fixed seed) and exit 1 unless each solution gets full marks and "
                           "each student notebook 0 (minutes: one process per exercise)")
    parser.add_argument("--jobs", type=int, default=1, metavar="N",
                        help="with --verify: notebooks graded at the same time (default: 1; "
                             "~1 GB each)")
    parser.add_argument("--solutions", type=Path, metavar="DIR",
                        help="the source notebooks (default: solutions/ in the repo root)")
    parser.add_argument("--notebooks", type=Path, metavar="DIR",
                        help="the student notebooks (default: notebooks/ in the repo root)")
    args = parser.parse_args(argv)
    root = find_repo_root()
    solutions = args.solutions or root / "solutions"
    notebooks = args.notebooks or root / "notebooks"
    if args.verify:
        return _verify_main(solutions, notebooks, args.notebooks_only or None, args.jobs)

    try:
        report = build_all(solutions, notebooks, check=args.check,
                           only=args.notebooks_only or None)
    except BuildError as err:
        return _problems(err, "course-build", "; nothing written")

    for path in report.written:
        print(f"{_show(path)}: written")
    for path in report.unchanged if not args.check else []:
        print(f"{_show(path)}: unchanged")
    for path in report.missing:
        print(f"{_show(path)}: missing (its source is {_show(solutions / path.name)})")
    for path in report.stale:
        print(f"{_show(path)}: stale (differs from what {_show(solutions / path.name)} builds)")
    for path in report.extra:
        print(f"{_show(path)}: extra (no source {_show(solutions / path.name)}; "
              f"{'delete it or add its source' if args.check else 'left alone'})")
    if not args.check:
        return 0
    if report.in_sync:
        print(f"course-build --check: {len(report.unchanged)} notebook(s) in sync")
        return 0
    print("course-build --check: student notebooks out of date - run `make build` "
          "(and delete extra ones)")
    return 1


if __name__ == "__main__":
    sys.exit(main())
