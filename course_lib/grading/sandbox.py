"""Run one child process under limits and always kill its whole process group.

What applies to every exercise child (one per exercise of a submission):

* a fresh temporary working directory holding only that exercise's inputs (the parent deletes it
  afterwards); ``HOME`` and ``TMPDIR`` point there;
* a scrubbed environment: ``PATH``, ``HOME``, ``TMPDIR``, ``LANG``, one thread for
  OpenMP/MKL, and ``CUDA_VISIBLE_DEVICES`` when the grader has it; Python runs isolated
  (``-I``: no ``PYTHONPATH``, no user site, no current directory on ``sys.path``), and the only
  path added is the directory that holds ``course_lib`` (needed while the package is not
  pip-installed; harmless when it is). torch/numpy come from the interpreter's site-packages;
* a new session (``start_new_session=True``), so the child and anything it spawns share one
  process group, which is killed with ``SIGKILL`` when the child is done, in every outcome;
* a wall-clock limit (``timeout_s``, torch import included);
* set by the child itself (:func:`limit_cpu_and_files`, :func:`limit_memory`): ``RLIMIT_CPU``
  a little above the wall-clock limit, ``RLIMIT_FSIZE`` (``file_mb``), no core files, and
  ``RLIMIT_AS`` = the address space after importing torch (its CUDA build maps a lot of
  virtual memory at import) plus ``memory_mb``; on CUDA also a per-process share of GPU memory.

Deferred to the whole-class grading issue (not done here): an unprivileged user (a child
running as root can raise its own hard limits), network and mount namespaces or a container
(the child can read the file system and open sockets), cgroups (a grandchild that calls
``setsid`` escapes the group kill; no process-count limit, since ``RLIMIT_NPROC`` also counts
torch's threads and does not apply to root), and read-only or stripped copies of ``course_lib``
(student code can import the reference implementations or patch the child's helpers, which
only changes what that child reports about itself: the verdict is computed in the parent).
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import course_lib

# The directory that holds the ``course_lib`` package (the repository root before installing).
PACKAGE_ROOT = str(Path(course_lib.__file__).resolve().parent.parent)
BOOTSTRAP = ("import sys; sys.path.insert(0, sys.argv.pop(1)); "
             "from course_lib.grading.child import main; main(sys.argv[1])")


@dataclass(frozen=True)
class Limits:
    """Resource limits of one child.

    Attributes:
        timeout_s: wall-clock seconds for the whole child, torch import included.
        memory_mb: address space the child may add after importing torch (MB).
        file_mb: largest file the child may write (MB).
    """

    timeout_s: float = 30.0
    memory_mb: int = 2048
    file_mb: int = 64

    @property
    def cpu_s(self) -> int:
        """CPU-time limit: a little above the wall-clock limit (the child uses one thread)."""
        return int(self.timeout_s) + 5


@dataclass(frozen=True)
class ChildResult:
    """How a child ended.

    Attributes:
        returncode: the exit status (negative: killed by that signal).
        timed_out: the wall-clock limit was reached and the group was killed.
        seconds: wall-clock time from start to end.
        stderr: the last characters the child wrote to stderr.
    """

    returncode: int
    timed_out: bool
    seconds: float
    stderr: str

    @property
    def signal_name(self) -> str:
        """The name of the signal that ended the child (``""`` if it exited)."""
        if self.returncode >= 0:
            return ""
        try:
            return signal.Signals(-self.returncode).name
        except ValueError:
            return f"signal {-self.returncode}"


def child_env(workdir: Path) -> dict[str, str]:
    """The scrubbed environment of a child."""
    env = {
        "PATH": os.defpath,
        "HOME": str(workdir),
        "TMPDIR": str(workdir),
        "LANG": "C.UTF-8",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        env["CUDA_VISIBLE_DEVICES"] = os.environ["CUDA_VISIBLE_DEVICES"]
    return env


def run_child(workdir: Path, limits: Limits) -> ChildResult:
    """Run ``course_lib.grading.child`` on ``workdir`` and wait at most ``limits.timeout_s``.

    The child's stdout is discarded; its stderr goes to an anonymous temporary file. Whatever
    happens (normal exit, crash, timeout, an exception here), the child's process group is
    killed before this returns.
    """
    # An anonymous file: the child cannot swap it for a link or a FIFO by its path.
    with tempfile.TemporaryFile() as log:
        start = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-I", "-c", BOOTSTRAP, PACKAGE_ROOT, str(workdir)],
            cwd=workdir, env=child_env(workdir), stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=log, start_new_session=True,
        )
        timed_out = False
        try:
            timed_out = not _wait_without_reaping(proc.pid, start + limits.timeout_s)
        finally:
            # The leader is a zombie (or still running): its group id cannot be reused yet.
            _kill_group(proc.pid)
            returncode = proc.wait()
        seconds = time.monotonic() - start
        log.seek(max(0, os.fstat(log.fileno()).st_size - 4000))
        stderr = log.read().decode("utf-8", errors="replace")
    return ChildResult(returncode, timed_out, seconds, stderr)


def _wait_without_reaping(pid: int, deadline: float) -> bool:
    """Wait until ``pid`` exits (leaving it a zombie) or the deadline passes; True if it exited."""
    delay = 0.005
    while time.monotonic() < deadline:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT | os.WNOHANG)
        if info is not None:
            return True
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
    return False


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


# ---------------------------------------------------------------------------------------------
# Called inside the child
# ---------------------------------------------------------------------------------------------


def limit_cpu_and_files(cpu_s: int, file_mb: int) -> None:
    """Set the CPU-time, file-size and core-file limits of the current process."""
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
    size = file_mb << 20
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    # Writing past the size limit then raises OSError instead of killing the child.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def limit_memory(memory_mb: int) -> None:
    """Cap the address space at what is mapped now plus ``memory_mb`` (call after imports)."""
    with open("/proc/self/status") as status:
        vm_kb = next(int(line.split()[1]) for line in status if line.startswith("VmSize:"))
    limit = (vm_kb << 10) + (memory_mb << 20)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
