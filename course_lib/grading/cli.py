"""``course-grade``: grade a class's notebooks and write per-student JSON and a class CSV.

Usage::

    course-grade INPUT [INPUT ...] --out DIR
                 [--jobs N] [--device auto|cpu|cuda] [--timeout S] [--memory MB]
                 [--random N] [--seed N] [--force]

Each INPUT is a notebook, a folder (searched recursively for ``*.ipynb``; hidden files and
``.ipynb_checkpoints`` are skipped) or a ``.zip`` (extracted safely into a temporary folder).
The student id is the file stem (``alice.ipynb`` -> ``alice``), or, for a notebook alone in a
sub-folder of a folder or zip (LMS exports: ``alice_12345/05_iou_nms_map.ipynb``), the
sub-folder's name; :mod:`course_lib.grading.batch` gives the rules.

A progress bar goes to stderr (when it is a terminal); one line per student is printed as each
finishes, then a table. A submission whose ``DIR/<student>.json`` records the same content hash
and grader version is skipped ("unchanged, skipped") unless ``--force``, so an interrupted run
is resumed by running the same command again. Exit status: 0 when grading ran (even if students
failed or a notebook was malformed: that is in its report), 1 when a report could not be saved,
2 for a usage error (missing file, unsafe zip, duplicate student ids, CUDA asked for but not
available), 130 when interrupted (Ctrl-C; the reports written so far are kept).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from pathlib import Path

from tqdm import tqdm

from course_lib.device import get_device
from course_lib.grading.batch import (
    UsageError,
    find_submissions,
    grade_submissions,
    skipped_line,
)
from course_lib.grading.class_report import write_class_reports
from course_lib.grading.report import summary_line, summary_table


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser of ``course-grade``."""
    parser = argparse.ArgumentParser(
        prog="course-grade",
        description="Grade submitted lesson notebooks in sandboxed processes.")
    parser.add_argument("submissions", nargs="+", type=Path, metavar="INPUT",
                        help="notebooks, folders of notebooks or .zip archives; the student id "
                             "is the file stem, or the folder of a notebook alone in it")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR",
                        help="where <student>.json and report.csv are written")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="where student code runs (auto: CUDA when available)")
    parser.add_argument("--timeout", type=float, default=30.0, metavar="S",
                        help="wall-clock seconds per exercise: its cells and all its cases "
                             "(on CUDA also the torch import; default: 30)")
    parser.add_argument("--memory", type=int, default=2048, metavar="MB",
                        help="memory per exercise process beyond torch itself (default: 2048)")
    parser.add_argument("--random", type=int, default=3, metavar="N", dest="num_random",
                        help="hidden random cases per exercise (default: 3)")
    parser.add_argument("--jobs", type=int, default=1, metavar="N",
                        help="notebooks graded in parallel (default: 1; ~1 GB each)")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed for the hidden cases (default: a fresh secret seed)")
    parser.add_argument("--force", action="store_true",
                        help="grade again the submissions whose report is up to date")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``course-grade``; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 for --help
        return int(exc.code or 0)
    problems = []
    try:
        get_device(args.device)
    except ValueError as exc:
        problems.append(str(exc))
    if args.timeout <= 0 or args.memory <= 0 or args.jobs <= 0 or args.num_random < 0:
        problems.append("--timeout, --memory and --jobs must be positive, --random at least 0")
    # Zips are extracted into a temporary folder that lives as long as the grading.
    zips = any(p.suffix.lower() == ".zip" for p in args.submissions)
    with (tempfile.TemporaryDirectory(prefix=f"course-grade-zip-{os.getpid()}-") if zips
          else contextlib.nullcontext(".")) as workdir:
        try:
            submissions = find_submissions(args.submissions, workdir)
        except UsageError as exc:
            problems += str(exc).splitlines()
        if problems:
            for problem in problems:
                print(f"course-grade: error: {problem}", file=sys.stderr)
            return 2

        skipped: list[str] = []

        def show(report: dict, unchanged: bool) -> None:
            if unchanged:
                skipped.append(report["student"])
            line = skipped_line(report) if unchanged else summary_line(report)
            tqdm.write(line, file=sys.stdout)
            sys.stdout.flush()

        try:
            reports = grade_submissions(
                submissions, args.out, device=args.device, timeout=args.timeout,
                memory_mb=args.memory, seed=args.seed, num_random=args.num_random,
                jobs=args.jobs, force=args.force, progress=None, on_report=show)
        except KeyboardInterrupt:
            print(f"course-grade: interrupted; the reports written so far are in {args.out}; "
                  "run the same command again to grade the rest", file=sys.stderr)
            return 130
    print()
    print(summary_table(reports))
    written = write_class_reports(Path(args.out), reports)
    print(f"\nClass reports in {args.out}: class_report.md (pass rates, class_histogram.png, "
          f"common failures), junit.xml, gradescope/<student>/results.json ({len(written)} "
          "files)")
    print(f"\n{len(reports) - len(skipped)} graded, {len(skipped)} unchanged and skipped; "
          f"{len(reports)} student reports and {Path(args.out) / 'report.csv'} are up to date")
    unsaved = [r["student"] for r in reports
               if not (Path(args.out) / f"{r['student']}.json").is_file()]
    if unsaved:
        print(f"course-grade: error: reports not saved: {', '.join(unsaved)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
