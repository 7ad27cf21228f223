"""Grade a whole class: find the submissions, skip unchanged ones, grade the rest in parallel.

What ``course-grade`` is given can be notebooks, folders and ``.zip`` archives, mixed:

* a file is one submission; its student id is the file stem (``alice.ipynb`` -> ``alice``);
* a folder is searched recursively for ``*.ipynb`` files, skipping hidden files and folders
  (``.ipynb_checkpoints``, ``.DS_Store``, ``._x.ipynb``). A notebook directly in the folder is
  named by its stem. A notebook in a sub-folder that holds no other notebook is named by that
  sub-folder, as in LMS exports with one folder per student
  (``alice_12345/05_iou_nms_map.ipynb`` -> ``alice_12345``); a sub-folder holding several
  notebooks (``section_a/alice.ipynb``, ``section_a/bob.ipynb``) names each by its stem;
* a ``.zip`` is extracted into a temporary folder (only its notebooks, at most
  ``MAX_ZIP_MEMBERS`` members, ``MAX_ZIP_NOTEBOOK_BYTES`` per notebook and
  ``MAX_ZIP_TOTAL_BYTES`` in all) and then read like a folder. An archive with an absolute
  path, a ``..`` component, a symbolic link or a compression ratio over ``MAX_ZIP_RATIO`` is
  refused as a whole: nothing of it is graded.

Two submissions with the same student id are a usage error that lists them; nothing is graded.

Resuming: each report records the SHA-256 of the notebook's bytes (``content_sha256``) and the
``grader_version``. When ``OUT/<student>.json`` already holds both for the same bytes, the
submission is skipped ("unchanged, skipped") unless ``force``. Reports are written atomically
(temporary file + rename) as each student finishes, and the class CSV is rewritten after each,
so a batch killed at any moment loses at most the notebooks in progress, and a rerun grades
exactly those that have no up-to-date report. A grader problem while grading one notebook (an
unexpected exception in the parent) becomes that student's report with an ``error``; it records
no hash, so the next run tries that student again.
"""

from __future__ import annotations

import hashlib
import json
import stat
import sys
import zipfile
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from tqdm import tqdm

from course_lib.device import get_device
from course_lib.grading import runner, sandbox
from course_lib.grading.report import write_class_csv, write_student_json

MAX_ZIP_MEMBERS = 10_000
MAX_ZIP_NOTEBOOK_BYTES = 100 * 1024 * 1024  # larger ones would be refused by read_submission
MAX_ZIP_TOTAL_BYTES = 4 * 1024 * 1024 * 1024
MAX_ZIP_RATIO = 200  # uncompressed / compressed size of one member; notebooks are ~3-10

OnReport = Callable[[dict[str, Any], bool], None]


class UsageError(ValueError):
    """The inputs cannot be graded as given (missing file, unsafe zip, duplicate student ids)."""


@dataclass(frozen=True)
class SubmissionFile:
    """One notebook to grade.

    Attributes:
        student: the student id (the name of ``OUT/<student>.json``).
        path: the file to read (inside a temporary folder when it came from a zip).
        source: where it came from, for messages and the report (``subs.zip:alice/05.ipynb``).
        sha256: the hex SHA-256 of the file's bytes.
    """

    student: str
    path: Path
    source: str
    sha256: str


def find_submissions(inputs: Iterable[str | Path], workdir: str | Path) -> list[SubmissionFile]:
    """The submissions in ``inputs`` (files, folders, zips), in a stable order.

    Args:
        inputs: notebooks, folders and ``.zip`` archives (see the module docstring).
        workdir: an empty folder where archives are extracted; it must outlive the grading.

    Raises:
        UsageError: with every problem found (one per line): a missing input, an unsafe or
            unreadable zip, a folder without notebooks, two submissions with one student id.
    """
    found: list[tuple[str, Path, str]] = []  # (student, path, source)
    problems: list[str] = []
    for k, item in enumerate(Path(p) for p in inputs):
        if item.is_dir():
            notebooks = _notebooks_in(item, str(item))
            if not notebooks:
                problems.append(f"no notebooks (*.ipynb) in the folder {item}")
            found += notebooks
        elif item.is_file() and item.suffix.lower() == ".zip":
            target = Path(workdir) / f"zip{k}"
            try:
                _extract_notebooks(item, target)
            except UsageError as exc:
                problems.append(str(exc))
                continue
            notebooks = _notebooks_in(target, f"{item}:")
            if not notebooks:
                problems.append(f"no notebooks (*.ipynb) in the archive {item}")
            found += notebooks
        elif item.is_file():
            found.append((item.stem, item, str(item)))
        else:
            problems.append(f"no such file or folder: {item}")
    by_student: dict[str, list[str]] = {}
    for student, _, source in found:
        by_student.setdefault(student, []).append(source)
    problems += [f"several submissions share the student id {student!r}: {', '.join(sources)}"
                 for student, sources in by_student.items() if len(sources) > 1]
    if problems:
        raise UsageError("\n".join(problems))
    return [SubmissionFile(student, path, source, sha256_of(path))
            for student, path, source in found]


def grade_submissions(
    submissions: list[SubmissionFile], out_dir: str | Path, device: str = "auto",
    timeout: float = 30.0, memory_mb: int = 2048, seed: int | None = None,
    num_random: int = 3, jobs: int = 1, force: bool = False, progress: bool | None = False,
    on_report: OnReport | None = None,
) -> list[dict[str, Any]]:
    """Grade the submissions that have no up-to-date report, writing each report as it is done.

    Args:
        submissions: from :func:`find_submissions` (student ids must be distinct).
        out_dir: where ``<student>.json`` and ``report.csv`` are written (created if needed).
        device: where the student's functions run (``"auto"``, ``"cpu"`` or ``"cuda"``).
        timeout: wall-clock seconds per exercise child (see :func:`runner.grade_notebook`).
        memory_mb: memory each child may allocate after importing torch (MB).
        seed: seed for the hidden random cases (``None``: a fresh secret seed).
        num_random: hidden random cases per exercise, on top of the visible ones.
        jobs: notebooks graded at the same time (each runs one child at a time; ~1 GB each).
        force: grade every submission, even one whose report is up to date.
        progress: show a progress bar on stderr (``None``: only when stderr is a terminal).
        on_report: called in this thread with ``(report, skipped)`` for each submission, the
            skipped ones first, then the others as they finish.

    Returns:
        One report per submission, in the order of ``submissions``. The CSV covers them all.

    Raises:
        ValueError: if two submissions share a student id, or ``device`` is unknown.
        KeyboardInterrupt: after Ctrl-C, once the notebooks in progress are done and written
            (a second Ctrl-C abandons them); the ones not started are left for the next run.
    """
    students = [s.student for s in submissions]
    duplicates = sorted({s for s in students if students.count(s) > 1})
    if duplicates:
        raise ValueError(f"several submissions share the student id {duplicates}")
    get_device(device)
    sandbox.remove_stale_dirs()  # what a grader killed with SIGKILL left in the temporary folder
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    done: dict[int, dict[str, Any]] = {}
    unsaved: list[str] = []
    bar = tqdm(total=len(submissions), unit="notebook", desc="grading", file=sys.stderr,
               disable=None if progress is None else not progress, dynamic_ncols=True)

    def finish(i: int, report: dict[str, Any], skipped: bool) -> None:
        done[i] = report
        try:
            if not skipped:
                write_student_json(report, out)
            write_class_csv([done[k] for k in sorted(done)], out)
        except OSError as exc:  # e.g. a full disk: the next run grades this student again
            unsaved.append(report["student"])
            tqdm.write(f"course-grade: could not save the report of {report['student']}: "
                       f"{exc}", file=sys.stderr)
        bar.update(1)
        if on_report is not None:
            on_report(report, skipped)

    # No child may write a report or read a classmate's notebook (while this batch runs).
    with sandbox.protecting([out, *{s.path.parent for s in submissions}]), bar:
        todo = []
        for i, sub in enumerate(submissions):
            previous = None if force else up_to_date_report(sub, out)
            if previous is not None:
                finish(i, previous, True)
            else:
                todo.append(i)
        pool = ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="course-grade")
        futures: dict[Future, int] = {}
        try:
            futures = {pool.submit(_grade_one, submissions[i], device, timeout, memory_mb, seed,
                                   num_random): i for i in todo}
            for future in as_completed(futures):  # files are written from this thread only
                finish(futures[future], future.result(), False)
        except KeyboardInterrupt:
            running = [f for f in futures if not f.cancel() and futures[f] not in done]
            tqdm.write(f"course-grade: interrupted; finishing the {len(running)} notebook(s) in "
                       "progress (Ctrl-C again to abandon them)", file=sys.stderr)
            for future in as_completed(running):
                finish(futures[future], future.result(), False)
            raise
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
            if unsaved:
                tqdm.write(f"course-grade: {len(unsaved)} report(s) not saved "
                           f"({', '.join(unsaved)}); run again to grade them", file=sys.stderr)
    return [done[i] for i in range(len(submissions))]


def up_to_date_report(submission: SubmissionFile, out_dir: Path) -> dict[str, Any] | None:
    """The report in ``out_dir`` for these exact bytes and this grader version, else ``None``."""
    path = Path(out_dir) / f"{submission.student}.json"
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(report, dict):
        return None
    keys_ok = all(k in report for k in ("lesson", "score", "max_score", "exercises", "error"))
    if (keys_ok and report.get("student") == submission.student
            and report.get("content_sha256") == submission.sha256
            and report.get("grader_version") == runner.GRADER_VERSION):
        return report
    return None


def skipped_line(report: dict[str, Any]) -> str:
    """The line printed for a submission whose report is up to date."""
    if report["error"]:
        return f"{report['student']}: unchanged, skipped (not graded - {report['error']})"
    return (f"{report['student']}: unchanged, skipped "
            f"({round(report['score'], 2):g}/{round(report['max_score'], 2):g})")


def _grade_one(sub: SubmissionFile, device: str, timeout: float, memory_mb: int,
               seed: int | None, num_random: int) -> dict[str, Any]:
    """Grade one submission; never raises (a grader problem becomes the report's error)."""
    try:
        # Looked up at call time, so a test can wrap it to count the notebooks graded.
        report = runner.grade_notebook(sub.path, device, timeout, memory_mb, seed, num_random)
        report["content_sha256"] = sub.sha256
    except Exception as exc:  # one notebook must never stop the class
        report = {
            "lesson": None, "grader_version": runner.GRADER_VERSION, "device": device,
            "score": 0.0, "max_score": 0.0, "exercises": [], "seconds": 0.0,
            "error": f"grader problem: {type(exc).__name__}: {exc}; run course-grade again",
            "limits": {"timeout_s": timeout, "memory_mb": memory_mb, "random_cases": num_random},
            "graded_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "content_sha256": None,  # no hash: the next run grades it again
        }
    report["student"] = sub.student
    report["notebook"] = sub.source
    return report


def _notebooks_in(root: Path, label: str) -> list[tuple[str, Path, str]]:
    """``(student, path, source)`` of the notebooks under ``root``, by the naming rule."""
    paths = sorted(p for p in root.rglob("*")
                   if p.suffix.lower() == ".ipynb" and p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    per_folder: dict[Path, int] = {}
    for p in paths:
        per_folder[p.parent] = per_folder.get(p.parent, 0) + 1
    found = []
    for p in paths:
        lms = p.parent != root and per_folder[p.parent] == 1
        source = f"{label}{p.relative_to(root)}" if label.endswith(":") else str(p)
        found.append((p.parent.name if lms else p.stem, p, source))
    return found


def _extract_notebooks(archive: Path, target: Path) -> None:
    """Extract the notebooks of ``archive`` into ``target`` after checking every member."""
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            if len(members) > MAX_ZIP_MEMBERS:
                raise UsageError(f"{archive}: {len(members)} members, more than the "
                                 f"{MAX_ZIP_MEMBERS} allowed")
            wanted, total = [], 0
            for info in members:
                parts = _safe_parts(archive, info)
                if info.is_dir() or not parts[-1].lower().endswith(".ipynb"):
                    continue
                if any(part.startswith(".") for part in parts):
                    continue  # hidden files, .ipynb_checkpoints, macOS resource forks
                if info.file_size > MAX_ZIP_NOTEBOOK_BYTES or (
                        info.file_size > (1 << 20)
                        and info.file_size > MAX_ZIP_RATIO * max(info.compress_size, 1)):
                    raise UsageError(f"{archive}: refusing a possible zip bomb: {info.filename} "
                                     f"unpacks to {info.file_size} bytes from "
                                     f"{info.compress_size}")
                total += info.file_size
                wanted.append((info, parts))
            if total > MAX_ZIP_TOTAL_BYTES:
                raise UsageError(f"{archive}: its notebooks unpack to {total} bytes, more than "
                                 f"the {MAX_ZIP_TOTAL_BYTES} allowed")
            for info, parts in wanted:
                dest = target.joinpath(*parts)
                dest.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(dest, "xb") as dst:
                    left = info.file_size + 1  # never write more than the member declares
                    while chunk := src.read(min(1 << 20, left)):
                        left -= len(chunk)
                        if left <= 0:
                            raise UsageError(f"{archive}: {info.filename} is longer than "
                                             "it declares")
                        dst.write(chunk)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, RuntimeError, NotImplementedError,
            OSError, EOFError) as exc:  # not a zip, encrypted, unknown compression, disk full
        raise UsageError(f"{archive}: could not extract its notebooks: {exc}") from None


def _safe_parts(archive: Path, info: zipfile.ZipInfo) -> tuple[str, ...]:
    """The path components of a zip member, refusing absolute paths, ``..`` and links."""
    name = info.filename.replace("\\", "/")
    path = PurePosixPath(name)
    if ("\x00" in name or path.is_absolute() or not path.parts or ":" in path.parts[0]
            or ".." in path.parts):
        raise UsageError(f"{archive}: refusing the unsafe member path {info.filename!r}")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise UsageError(f"{archive}: refusing the symbolic link {info.filename!r}")
    return path.parts


def sha256_of(path: Path) -> str:
    """The hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
