"""The zygote: children forked from one process that imported torch, with the same sandbox.

Oracle: the same task run by a fresh interpreter (``sandbox.run_child``) gives the same result
files; timeouts, a dying zygote and a dying grader leave no process behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from course_lib.grading import sandbox, transfer, zygote
from course_lib.grading.sandbox import ChildResult, Limits

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def make_task(source: str, cases: list[dict], timeout: float = 30) -> Path:
    """A child's working folder for ``f`` defined by ``source``, called on ``cases``."""
    workdir = Path(tempfile.mkdtemp(prefix="course-grade-test-"))
    limits = Limits(timeout_s=timeout, memory_mb=1024)
    transfer.write_json(workdir / "task.json", {
        "function": "f", "cell": 1, "device": "cpu", "prepare": None, "forbidden": [],
        "cpu_s": limits.cpu_s, "file_mb": limits.file_mb, "memory_mb": limits.memory_mb,
        "cells": [{"number": 1, "source": source}],
        "cases": [transfer.dump(case, workdir, f"in_{i}") for i, case in enumerate(cases)],
    })
    return workdir


def results(workdir: Path, count: int) -> list[dict]:
    out = []
    for i in range(count):
        data = json.loads((workdir / f"result_{i}.json").read_text())
        data.pop("seconds")
        if data["status"] == "ok":
            data["output"] = transfer.load(data["output"], workdir, validate=True).tolist()
        out.append(data)
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


DOUBLE = "def f(x):\n    return x * 2 + torch.get_num_threads() - 1\n"
CASES = [{"x": __import__("torch").arange(4.0)}, {"x": __import__("torch").ones(2, 3)}]


def test_forked_child_writes_what_a_fresh_interpreter_writes():
    forked, spawned = make_task(DOUBLE, CASES), make_task(DOUBLE, CASES)
    with zygote.borrow() as z:
        first = z.run_child(forked, Limits(timeout_s=30))
    second = sandbox.run_child(spawned, Limits(timeout_s=30))
    assert (first.returncode, first.timed_out) == (second.returncode, second.timed_out) == (0, 0)
    assert results(forked, 2) == results(spawned, 2)
    assert results(forked, 2)[0]["output"] == [0.0, 2.0, 4.0, 6.0]  # one thread, as spawned
    assert first.seconds < second.seconds  # no torch import


def test_child_sees_the_scrubbed_environment_and_its_own_folder():
    source = ("import os\ndef f():\n    return torch.tensor([len(os.environ), "
              "int(os.getcwd() == os.environ['HOME'] == os.environ['TMPDIR']), "
              "len(os.listdir('/proc/self/fd'))])\n")
    workdir = make_task(source, [{}])
    with zygote.borrow() as z:
        assert z.run_child(workdir, Limits(timeout_s=30)).returncode == 0
    count, own_folder, fds = results(workdir, 1)[0]["output"]
    assert count == len(sandbox.child_env(workdir)) and own_folder == 1
    assert fds <= 5  # 0, 1, 2, listdir's own and at most the result file: no zygote socket


def test_timeout_kills_the_child_and_the_zygote_serves_the_next_one():
    slow = make_task("import time\ndef f():\n    time.sleep(60)\n", [{}])
    with zygote.borrow() as z:
        result = z.run_child(slow, Limits(timeout_s=1.0))
        assert result.timed_out and result.returncode == -signal.SIGKILL
        assert 1.0 <= result.seconds < 5
        assert z.alive
        fast = make_task(DOUBLE, CASES)
        assert z.run_child(fast, Limits(timeout_s=30)).returncode == 0
    assert results(fast, 2)[1]["output"] == [[2.0] * 3] * 2


def test_a_dying_zygote_is_a_crash_and_is_replaced():
    slow = make_task("import os, time\ndef f():\n    print(os.getpid(), file=open("
                     "'pid.txt', 'w'))\n    time.sleep(60)\n", [{}])
    with zygote.borrow() as z:
        killer = threading.Timer(1.5, os.kill, (z.proc.pid, signal.SIGKILL))
        killer.start()
        result = z.run_child(slow, Limits(timeout_s=30))
        killer.join()
        assert not z.alive
    assert isinstance(result, ChildResult) and not result.timed_out
    assert result.returncode == -signal.SIGKILL and result.seconds < 10
    child = int((slow / "pid.txt").read_text())
    deadline = time.monotonic() + 5  # SIGKILL is sent; dying takes a moment
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not alive(child)  # its child went with it
    with zygote.borrow() as replacement:
        assert replacement is not z and replacement.alive


GRADER = """
import sys, time
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from course_lib.grading import zygote
from course_lib.grading.sandbox import Limits
with zygote.borrow() as z:
    print(z.proc.pid, flush=True)
    z.run_child(Path(sys.argv[2]), Limits(timeout_s=60))
"""


def test_a_killed_grader_takes_its_zygote_and_the_running_child_along():
    slow = make_task("import os, time\ndef f():\n    print(os.getpid(), file=open("
                     "'pid.txt', 'w'))\n    time.sleep(60)\n", [{}])
    grader = subprocess.Popen([sys.executable, "-c", GRADER, str(REPO), str(slow)],
                              stdout=subprocess.PIPE, text=True)
    zygote_pid = int(grader.stdout.readline())
    deadline = time.monotonic() + 60
    while not (slow / "pid.txt").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    child_pid = int((slow / "pid.txt").read_text())
    grader.kill()
    grader.wait()
    deadline = time.monotonic() + 10
    while (alive(zygote_pid) or alive(child_pid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(child_pid) and not alive(zygote_pid)


def test_cuda_tasks_and_the_switch_use_a_fresh_interpreter(monkeypatch):
    calls = []
    monkeypatch.setattr(sandbox, "run_child", lambda w, lim: calls.append(w) or "spawned")
    assert zygote.run_child(Path("/nowhere"), Limits(), device="cuda:0") == "spawned"
    monkeypatch.setenv("COURSE_GRADE_NO_ZYGOTE", "1")
    assert zygote.run_child(Path("/nowhere"), Limits()) == "spawned"
    assert len(calls) == 2


def test_a_zygote_that_cannot_start_falls_back_to_a_fresh_interpreter(monkeypatch):
    def broken():
        raise zygote.ZygoteError("no zygote today")

    monkeypatch.setattr(zygote, "Zygote", broken)
    monkeypatch.setattr(zygote, "_idle", [])
    monkeypatch.setattr(sandbox, "run_child", lambda w, lim: "spawned")
    assert zygote.run_child(Path("/nowhere"), Limits()) == "spawned"


def test_a_zygote_that_fails_while_importing_says_why(monkeypatch):
    monkeypatch.setattr(zygote, "BOOTSTRAP", "raise SystemExit('preload broke: no torch')")
    with pytest.raises(zygote.ZygoteError, match="preload broke: no torch"):
        zygote.Zygote()


def test_folders_of_graders_that_died_are_removed_and_live_ones_kept():
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead_pid = int(dead.stdout)
    tmp = Path(tempfile.gettempdir())
    stale = [tmp / f"course-{kind}-{dead_pid}-test" for kind in ("grade", "zygote", "grade-zip")]
    live = tmp / f"course-grade-{os.getpid()}-test"
    other = tmp / f"course-grades-{dead_pid}-test"  # not ours: a similar name
    for folder in [*stale, live, other]:
        (folder / "sub").mkdir(parents=True, exist_ok=True)
        (folder / "sub" / "result_0.json").write_text("{}")
    try:
        removed = sandbox.remove_stale_dirs()
        assert set(stale) <= set(removed) and not any(f.exists() for f in stale)
        assert live.is_dir() and other.is_dir()
    finally:
        for folder in [*stale, live, other]:
            subprocess.run(["rm", "-rf", str(folder)], check=True)


def test_working_folders_are_named_after_the_grader():
    folder = sandbox.scratch_dir("course-grade")
    try:
        assert folder.name.startswith(f"course-grade-{os.getpid()}-")
    finally:
        folder.rmdir()
