"""``course-grade``: grade submitted notebooks and write per-student JSON and a class CSV.

Usage::

    course-grade SUBMISSION.ipynb [SUBMISSION.ipynb ...] --out DIR
                 [--device auto|cpu|cuda] [--timeout S] [--memory MB]
                 [--random N] [--seed N] [--jobs N]

The student id is the file's stem (``alice.ipynb`` -> ``alice``). Prints one line per student
as it is graded, then a table. Exit status: 0 when grading ran (even if students failed or a
notebook was malformed: that is in its report), 2 for a usage error (missing file, duplicate
student ids, CUDA asked for but not available).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from course_lib.device import get_device
from course_lib.grading.report import summary_line, summary_table
from course_lib.grading.runner import grade_many


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser of ``course-grade``."""
    parser = argparse.ArgumentParser(
        prog="course-grade",
        description="Grade submitted lesson notebooks in sandboxed processes.")
    parser.add_argument("submissions", nargs="+", type=Path, metavar="SUBMISSION.ipynb",
                        help="notebooks to grade; the file stem is the student id")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR",
                        help="where <student>.json and report.csv are written")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="where student code runs (auto: CUDA when available)")
    parser.add_argument("--timeout", type=float, default=30.0, metavar="S",
                        help="wall-clock seconds per exercise, torch import included "
                             "(default: 30)")
    parser.add_argument("--memory", type=int, default=2048, metavar="MB",
                        help="memory per exercise process beyond torch itself (default: 2048)")
    parser.add_argument("--random", type=int, default=3, metavar="N", dest="num_random",
                        help="hidden random cases per exercise (default: 3)")
    parser.add_argument("--jobs", type=int, default=1, metavar="N",
                        help="notebooks graded in parallel (default: 1; ~1 GB each)")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed for the hidden cases (default: a fresh secret seed)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``course-grade``; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 for --help
        return int(exc.code or 0)
    problems = [f"no such file: {p}" for p in args.submissions if not p.is_file()]
    stems = [p.stem for p in args.submissions]
    problems += [f"several submissions share the student id {s!r}"
                 for s in sorted(set(stems)) if stems.count(s) > 1]
    try:
        get_device(args.device)
    except ValueError as exc:
        problems.append(str(exc))
    if args.timeout <= 0 or args.memory <= 0 or args.jobs <= 0 or args.num_random < 0:
        problems.append("--timeout, --memory and --jobs must be positive, --random at least 0")
    if problems:
        for problem in problems:
            print(f"course-grade: error: {problem}", file=sys.stderr)
        return 2
    reports = grade_many(args.submissions, args.out, device=args.device,
                         timeout=args.timeout, memory_mb=args.memory, seed=args.seed,
                         num_random=args.num_random, jobs=args.jobs,
                         on_report=lambda r: print(summary_line(r), flush=True))
    print()
    print(summary_table(reports))
    print(f"\nWrote {len(reports)} student reports and {Path(args.out) / 'report.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
