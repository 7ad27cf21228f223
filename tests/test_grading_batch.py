"""Tests of whole-class grading (course_lib.grading.batch and the course-grade CLI).

Most tests replace ``runner.grade_notebook`` by a fake that returns at once, so finding the
submissions, skipping unchanged ones and surviving a grader problem are tested without children.
One slow test kills a real batch (the fake lesson "99" of test_grading, one child per student)
midway and runs it again.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import nbformat
import pytest

from course_lib.grading import batch, cli, grade_many, runner
from course_lib.grading.batch import UsageError, find_submissions

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "grading"
ADD = "def add_boxes(a, b):\n    return a + b\n"


class FakeGrader:
    """Stands in for ``runner.grade_notebook``: records each call, raises on ``CRASH``."""

    def __init__(self):
        self.calls: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, path, device="auto", timeout=30.0, memory_mb=2048, seed=None,
                 num_random=3):
        path = Path(path)
        with self.lock:
            self.calls.append(path.read_text())
        if "CRASH" in path.read_text():
            raise RuntimeError("a bug in the grader")
        return {"student": path.stem, "notebook": str(path), "lesson": "99",
                "grader_version": runner.GRADER_VERSION, "device": "cpu", "score": 2.0,
                "max_score": 2.0, "error": None, "seconds": 0.01,
                "exercises": [{"name": "add_boxes", "score": 2.0, "max_score": 2.0,
                               "status": "passed", "passed": 5, "cases": 5, "feedback": "",
                               "seconds": 0.01}],
                "graded_at": "2026-01-01T00:00:00+00:00"}


@pytest.fixture
def fake(monkeypatch):
    grader = FakeGrader()
    monkeypatch.setattr(runner, "grade_notebook", grader)
    return grader


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def run_cli(*args: str) -> tuple[int, str]:
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        rc = cli.main([*args, "--device", "cpu"])
    return rc, stdout.getvalue()


def csv_rows(out: Path) -> list[dict]:
    with open(out / "report.csv", newline="") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------------------------------------
# Finding the submissions
# ---------------------------------------------------------------------------------------------


def test_folder_ids_are_stems_or_the_folder_of_a_lone_notebook(tmp_path):
    subs = tmp_path / "subs"
    write(subs / "carol.ipynb", "carol")
    write(subs / "alice_123" / "05_iou_nms_map.ipynb", "alice")
    write(subs / "alice_123" / ".ipynb_checkpoints" / "05_iou_nms_map-checkpoint.ipynb", "old")
    write(subs / "bob_456" / "deep" / "05_iou_nms_map.ipynb", "bob")
    write(subs / "section" / "dave.ipynb", "dave")
    write(subs / "section" / "erin.ipynb", "erin")
    write(subs / ".ipynb_checkpoints" / "carol-checkpoint.ipynb", "old")
    write(subs / "._carol.ipynb", "macOS resource fork")
    write(subs / "notes.txt", "not a notebook")
    frank = write(tmp_path / "frank.ipynb", "frank")
    found = find_submissions([subs, frank], tmp_path / "work")
    assert {s.student: s.path.read_text() for s in found} == {
        "alice_123": "alice", "deep": "bob", "carol": "carol", "dave": "dave", "erin": "erin",
        "frank": "frank"}
    alice = next(s for s in found if s.student == "alice_123")
    assert alice.sha256 == hashlib.sha256(b"alice").hexdigest()
    assert alice.source == str(subs / "alice_123" / "05_iou_nms_map.ipynb")


def test_two_submissions_with_one_id_are_a_usage_error_listing_both(tmp_path, capsys):
    subs = tmp_path / "subs"
    write(subs / "alice.ipynb", "a")
    write(subs / "late" / "alice.ipynb", "b")
    write(subs / "late" / "bob.ipynb", "c")
    with pytest.raises(UsageError, match="'alice'") as info:
        find_submissions([subs], tmp_path / "work")
    assert str(subs / "alice.ipynb") in str(info.value)
    assert str(subs / "late" / "alice.ipynb") in str(info.value)
    assert cli.main([str(subs), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "several submissions share the student id 'alice'" in err
    assert str(subs / "late" / "alice.ipynb") in err
    assert not (tmp_path / "out").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main([str(empty), "--out", str(tmp_path / "out")]) == 2
    assert "no notebooks" in capsys.readouterr().err


def make_zip(path: Path, members: dict[str, bytes], symlinks: tuple[str, ...] = ()) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        for name in symlinks:
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "/etc/passwd")
    return path


def test_zip_of_an_lms_export_is_extracted_and_named_by_folder(tmp_path):
    archive = make_zip(tmp_path / "export.zip", {
        "export/alice_1/05_iou_nms_map.ipynb": b"alice",
        "export/bob_2/05_iou_nms_map.ipynb": b"bob",
        "export/bob_2/.ipynb_checkpoints/05_iou_nms_map-checkpoint.ipynb": b"old",
        "__MACOSX/export/bob_2/._05_iou_nms_map.ipynb": b"fork",
        "export/bob_2/report.pdf": b"%PDF",
    })
    found = find_submissions([archive], tmp_path / "work")
    assert [(s.student, s.path.read_bytes()) for s in found] == [
        ("alice_1", b"alice"), ("bob_2", b"bob")]
    assert found[0].source == f"{archive}:export/alice_1/05_iou_nms_map.ipynb"
    assert found[0].path.is_relative_to(tmp_path / "work")
    assert not list((tmp_path / "work").rglob("*.pdf"))  # only notebooks are extracted


@pytest.mark.parametrize("members, symlinks, message", [
    ({"../evil.ipynb": b"x"}, (), "unsafe member path"),
    ({"ok/../../evil.ipynb": b"x"}, (), "unsafe member path"),
    ({"/tmp/evil.ipynb": b"x"}, (), "unsafe member path"),
    ({"a.ipynb": b"x"}, ("link.ipynb",), "symbolic link"),
    ({"bomb.ipynb": bytes(5 << 20)}, (), "zip bomb"),
    ({f"s{i}.ipynb": b"x" for i in range(5)}, (), "members, more than"),
    ({"a.ipynb": b"x" * 40}, (), "unpack to 40 bytes, more than"),
])
def test_unsafe_zips_are_refused_with_a_clear_message(tmp_path, monkeypatch, members, symlinks,
                                                     message):
    monkeypatch.setattr(batch, "MAX_ZIP_MEMBERS", 4)
    monkeypatch.setattr(batch, "MAX_ZIP_TOTAL_BYTES", 30)
    archive = make_zip(tmp_path / "subs.zip", members, symlinks)
    work = tmp_path / "work"
    with pytest.raises(UsageError, match=message):
        find_submissions([archive], work)
    assert not list(tmp_path.rglob("evil.ipynb"))


def test_a_file_that_is_not_a_zip_is_a_usage_error(tmp_path, capsys):
    write(tmp_path / "subs.zip", "not a zip")
    assert cli.main([str(tmp_path / "subs.zip"), "--out", str(tmp_path / "out")]) == 2
    assert "could not extract its notebooks" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Resuming, and one submission never stopping the others (fake grader: no children)
# ---------------------------------------------------------------------------------------------


def test_rerun_skips_unchanged_submissions_and_regrades_changed_ones(tmp_path, fake,
                                                                     monkeypatch):
    subs, out = tmp_path / "subs", tmp_path / "out"
    for name in ("alice", "bob", "carol"):
        write(subs / f"{name}.ipynb", name)
    rc, stdout = run_cli(str(subs), "--out", str(out), "--jobs", "2")
    assert rc == 0 and sorted(fake.calls) == ["alice", "bob", "carol"]
    assert "alice: 2/2" in stdout and "3 graded, 0 unchanged and skipped" in stdout
    report = json.loads((out / "alice.json").read_text())
    assert report["content_sha256"] == hashlib.sha256(b"alice").hexdigest()
    assert report["grader_version"] == runner.GRADER_VERSION
    assert report["notebook"] == str(subs / "alice.ipynb")

    fake.calls.clear()
    rc, stdout = run_cli(str(subs), "--out", str(out))
    assert rc == 0 and fake.calls == []
    assert stdout.count("unchanged, skipped (2/2)") == 3
    assert [r["student"] for r in csv_rows(out)] == ["alice", "bob", "carol"]

    write(subs / "bob.ipynb", "bob, resubmitted")
    rc, stdout = run_cli(str(subs), "--out", str(out))
    assert fake.calls == ["bob, resubmitted"] and "bob: 2/2" in stdout

    fake.calls.clear()
    rc, _ = run_cli(str(subs), "--out", str(out), "--force")
    assert len(fake.calls) == 3

    fake.calls.clear()
    monkeypatch.setattr(runner, "GRADER_VERSION", "999")
    rc, _ = run_cli(str(subs), "--out", str(out))
    assert len(fake.calls) == 3
    assert json.loads((out / "carol.json").read_text())["grader_version"] == "999"
    assert not list(out.glob(".*.tmp"))


def test_grader_problem_is_that_students_error_and_is_retried(tmp_path, fake):
    subs, out = tmp_path / "subs", tmp_path / "out"
    for name in ("alice", "bob", "carol", "dave"):
        write(subs / f"{name}.ipynb", name)
    write(subs / "bob.ipynb", "bob CRASH")
    rc, stdout = run_cli(str(subs), "--out", str(out), "--jobs", "3")
    assert rc == 0 and len(fake.calls) == 4
    bob = json.loads((out / "bob.json").read_text())
    assert bob["error"].startswith("grader problem: RuntimeError: a bug in the grader")
    assert bob["student"] == "bob" and bob["content_sha256"] is None and bob["exercises"] == []
    assert "bob: not graded - grader problem" in stdout
    rows = {r["student"]: r for r in csv_rows(out)}
    assert rows["alice"]["total"] == "2" and rows["bob"]["error"].startswith("grader problem")

    fake.calls.clear()
    rc, stdout = run_cli(str(subs), "--out", str(out))
    assert fake.calls == ["bob CRASH"]  # only the student without a valid report is retried


def test_grade_many_keeps_its_file_api_and_resumes(tmp_path, fake):
    paths = [write(tmp_path / f"{name}.ipynb", name) for name in ("bob", "alice")]
    seen = []
    reports = grade_many(paths, tmp_path / "out", device="cpu", on_report=seen.append)
    assert [r["student"] for r in reports] == ["bob", "alice"] and len(seen) == 2
    again = grade_many(paths, tmp_path / "out", device="cpu")
    assert len(fake.calls) == 2
    assert [(r["student"], r["content_sha256"], r["score"]) for r in again] == [
        (r["student"], r["content_sha256"], r["score"]) for r in reports]
    grade_many(paths, tmp_path / "out", device="cpu", force=True)
    assert len(fake.calls) == 4
    with pytest.raises(ValueError, match="share the student id"):
        grade_many([paths[0], write(tmp_path / "x" / "bob.ipynb", "b2")], tmp_path / "out")


def test_the_batch_protects_its_folders_while_it_runs_and_only_then(tmp_path, fake):
    from course_lib.grading import sandbox

    paths = [write(tmp_path / "class" / f"{name}.ipynb", name) for name in ("bob", "alice")]
    out = tmp_path / "out"
    during = []
    grade_many(paths, out, device="cpu",
               on_report=lambda report, skipped=False: during.append(sandbox.protected()))
    folders = {os.path.realpath(out), os.path.realpath(tmp_path / "class")}
    assert during and all(folders <= set(hidden) for hidden in during)
    assert not folders & set(sandbox.protected())  # given back: later batches start clean
    # a path protected before the batch (here: by hand) stays protected after it
    sandbox.protect([out])
    try:
        grade_many(paths, out, device="cpu", force=True)
        assert os.path.realpath(out) in sandbox.protected()
    finally:
        sandbox.unprotect([out])


# ---------------------------------------------------------------------------------------------
# Killed midway, run again (real children)
# ---------------------------------------------------------------------------------------------


# Registers the fake lesson, counts each notebook graded in a log, then runs course-grade.
WRAPPER = """
import os, sys
from pathlib import Path
fixtures, log = sys.argv[1], sys.argv[2]
sys.path.insert(0, fixtures)
from course_lib import exercises
from course_lib.grading import cli, runner
exercises.LESSONS["99"] = "fake_lesson"
grade = runner.grade_notebook
def counted(path, *args, **kwargs):
    with open(log, "a") as f:
        f.write(f"{os.getpid()} {Path(path).parent.name}\\n")
    return grade(path, *args, **kwargs)
runner.grade_notebook = counted
sys.exit(cli.main(sys.argv[3:]))
"""


@pytest.mark.slow
def _orphaned_zygotes_are_gone(wait_s: float = 10.0) -> bool:
    """Whether every zygote not started by this process has exited (within ``wait_s``)."""
    deadline = time.monotonic() + wait_s
    while True:
        orphans = []
        for proc in Path("/proc").iterdir():
            try:
                cmdline = (proc / "cmdline").read_bytes()
                ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if b"course_lib.grading.zygote" in cmdline and ppid != os.getpid():
                orphans.append(proc.name)
        if not orphans or time.monotonic() > deadline:
            return not orphans
        time.sleep(0.05)


def test_killed_batch_resumes_without_losing_or_regrading_anyone(tmp_path):
    subs, out, log = tmp_path / "subs", tmp_path / "out", tmp_path / "graded.log"
    students = [f"student_{k}" for k in range(6)]
    for student in students:  # an LMS layout: one folder per student
        nb = nbformat.v4.new_notebook(metadata={"course": {"lesson": "99"}})
        nb.cells.append(nbformat.v4.new_code_cell(ADD + f"# {student}\n",
                                                  metadata={"tags": ["exercise"]}))
        (subs / student).mkdir(parents=True)
        nbformat.write(nb, subs / student / "99_fake.ipynb")
    command = [sys.executable, "-c", WRAPPER, str(FIXTURES), str(log), str(subs),
               "--out", str(out), "--device", "cpu", "--jobs", "2", "--random", "1",
               "--timeout", "20", "--seed", "0"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}

    first = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while not list(out.glob("*.json")) and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert _orphaned_zygotes_are_gone(), "a zygote of the killed batch is still running"
    saved = {p.stem: p.read_bytes() for p in out.glob("*.json")}
    assert 1 <= len(saved) < len(students), "the batch was not killed midway"

    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert second.returncode == 0, second.stderr
    graded = [line.split()[1] for line in log.read_text().splitlines()
              if line.split()[0] != str(first.pid)]
    assert sorted(graded) == sorted(set(students) - set(saved))  # each once, none twice
    for student in saved:
        assert f"{student}: unchanged, skipped (2/3)" in second.stdout  # 1 of 2 exercises
        assert (out / f"{student}.json").read_bytes() == saved[student]  # untouched
    assert sorted(p.name for p in out.glob("*.json")) == [f"{s}.json" for s in students]
    for student in students:
        report = json.loads((out / f"{student}.json").read_text())
        sha = hashlib.sha256((subs / student / "99_fake.ipynb").read_bytes()).hexdigest()
        assert (report["student"], report["content_sha256"]) == (student, sha)
        assert report["error"] is None and report["lesson"] == "99"
        assert [e["status"] for e in report["exercises"]][0] == "passed"
    assert [r["student"] for r in csv_rows(out)] == students
    assert all(r["add_boxes_status"] == "passed" for r in csv_rows(out))


def test_ctrl_c_finishes_the_notebooks_in_progress_and_a_rerun_grades_the_rest(tmp_path):
    subs, out, log = tmp_path / "subs", tmp_path / "out", tmp_path / "graded.log"
    students = [f"student_{k}" for k in range(5)]
    slow_add = "import time\ndef add_boxes(a, b):\n    time.sleep(0.3)\n    return a + b\n"
    for student in students:
        nb = nbformat.v4.new_notebook(metadata={"course": {"lesson": "99"}})
        nb.cells.append(nbformat.v4.new_code_cell(slow_add + f"# {student}\n",
                                                  metadata={"tags": ["exercise"]}))
        (subs / student).mkdir(parents=True)  # one folder per student: the log names them
        nbformat.write(nb, subs / student / "99_fake.ipynb")
    command = [sys.executable, "-c", WRAPPER, str(FIXTURES), str(log), str(subs),
               "--out", str(out), "--device", "cpu", "--jobs", "2", "--random", "1",
               "--timeout", "20", "--seed", "0"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}

    # A shell running this suite in the background may ignore SIGINT, and Python keeps an
    # ignored SIGINT ignored: a terminal's grader has the default disposition.
    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, start_new_session=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not list(out.glob("*.json")) and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(first.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    _, stderr = first.communicate(timeout=120)
    assert first.returncode == 130, stderr
    assert "interrupted; finishing the" in stderr and "run the same command again" in stderr
    assert "Traceback" not in stderr
    started = {line.split()[1] for line in log.read_text().splitlines()}
    saved = {p.stem for p in out.glob("*.json")}
    assert started == saved, "a notebook in progress at Ctrl-C was not finished and saved"
    assert 1 <= len(saved) < len(students)
    assert _orphaned_zygotes_are_gone()

    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert second.returncode == 0, second.stderr
    regraded = [line.split()[1] for line in log.read_text().splitlines()][len(started):]
    assert sorted(regraded) == sorted(set(students) - saved)
    assert sorted(p.stem for p in out.glob("*.json")) == students
