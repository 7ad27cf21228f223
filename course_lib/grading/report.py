"""Write grading results: one JSON file per student and one CSV for the class, atomically.

``DIR/<student>.json`` holds the report of :func:`course_lib.grading.runner.grade_notebook`,
with the device it ran on and, under ``versions``, the library versions of the grader
(:func:`library_versions`). The class-wide Gradescope, JUnit and Markdown reports are written by
:mod:`course_lib.grading.class_report`.

``DIR/report.csv`` has one row per submission: ``student, lesson, total, max``, then
``<exercise>_score`` and ``<exercise>_status`` for every exercise seen in the run (in lesson
order), then ``error`` (why a notebook could not be graded, else empty). Files are written to a
temporary file in the same directory and moved into place with ``os.replace``, so a reader
never sees half a file.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import os
import platform
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any


def write_atomic(path: Path, text: str | bytes) -> None:
    """Write ``text`` (UTF-8) or bytes to ``path`` via a temporary file and ``os.replace``."""
    data = text.encode("utf-8") if isinstance(text, str) else text
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@functools.cache
def library_versions() -> dict[str, str]:
    """The versions a grade depends on: python, torch, torchvision, numpy and course_lib.

    Read from the installed packages' metadata (nothing is imported); a package that is not
    installed is reported as ``"not installed"``.
    """
    versions = {"python": platform.python_version()}
    for package in ("torch", "torchvision", "numpy", "course_lib"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def write_student_json(report: dict[str, Any], out_dir: Path) -> Path:
    """Write ``out_dir/<student>.json`` and return its path.

    The file holds ``report`` as it is, plus ``versions`` (:func:`library_versions`) when the
    report has none; ``report`` itself is not changed.
    """
    if "versions" not in report:
        report = {**report, "versions": dict(library_versions())}
    path = out_dir / f"{report['student']}.json"
    write_atomic(path, json.dumps(report, indent=2) + "\n")
    return path


def write_class_csv(reports: list[dict[str, Any]], out_dir: Path) -> Path:
    """Write ``out_dir/report.csv`` with one row per report and return its path."""
    names: list[str] = []
    for report in reports:
        names += [e["name"] for e in report["exercises"] if e["name"] not in names]
    columns = ["student", "lesson", "total", "max"]
    columns += [f"{name}_{field}" for name in names for field in ("score", "status")]
    columns.append("error")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    for report in reports:
        row = {"student": report["student"], "lesson": report["lesson"] or "",
               "total": _number(report["score"]), "max": _number(report["max_score"]),
               "error": report["error"] or ""}
        for e in report["exercises"]:
            row[f"{e['name']}_score"] = _number(e["score"])
            row[f"{e['name']}_status"] = e["status"]
        writer.writerow(row)
    path = out_dir / "report.csv"
    write_atomic(path, buffer.getvalue())
    return path


def summary_line(report: dict[str, Any]) -> str:
    """One line per student: total and each exercise's status."""
    if report["error"]:
        return f"{report['student']}: not graded - {report['error']}"
    parts = ", ".join(f"{e['name']} {e['status']}" for e in report["exercises"])
    return (f"{report['student']}: {_short(report['score'])}/{_short(report['max_score'])}"
            f"  ({parts})  [{report['seconds']:.1f} s]")


def summary_table(reports: list[dict[str, Any]]) -> str:
    """A fixed-width table of the class: student, total, max, then one status per exercise."""
    names: list[str] = []
    for report in reports:
        names += [e["name"] for e in report["exercises"] if e["name"] not in names]
    header = ["student", "total", "max", *names]
    rows = []
    for report in reports:
        by_name = {e["name"]: e["status"] for e in report["exercises"]}
        status = [by_name.get(n, "not graded" if report["error"] else "-") for n in names]
        rows.append([report["student"], _short(report["score"]),
                     _short(report["max_score"]), *status])
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=True)).rstrip()
             for r in [header, *rows]]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def _number(x: float) -> str:
    return f"{x:g}"


def _short(x: float) -> str:
    return f"{round(x, 2):g}"
