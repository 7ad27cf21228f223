"""Run one child process under limits and always kill everything it started.

What applies to every exercise child (one per exercise of a submission); the threat model,
with what is not defended, is in ``docs/grading.md``:

* a fresh temporary working directory holding only that exercise's inputs (the parent deletes it
  afterwards); ``HOME`` and ``TMPDIR`` point there;
* a scrubbed environment: ``PATH``, ``HOME``, ``TMPDIR``, ``LANG``, one thread for
  OpenMP/MKL, cuBLAS's deterministic workspace setting, and ``CUDA_VISIBLE_DEVICES`` when the
  grader has it; Python runs isolated
  (``-I``: no ``PYTHONPATH``, no user site, no current directory on ``sys.path``), and the only
  path added is the directory that holds ``course_lib`` (needed while the package is not
  pip-installed; harmless when it is). torch/numpy come from the interpreter's site-packages;
* a new session (``start_new_session=True``), so the child and anything it spawns share one
  process group, which is killed with ``SIGKILL`` when the child is done, in every outcome;
* a wall-clock limit (``timeout_s``; it includes the torch import only for a child started
  by :func:`run_child`, not for one forked from a :mod:`~course_lib.grading.zygote`);
* set by the child itself (:func:`limit_cpu_and_files`, :func:`limit_memory`): ``RLIMIT_CPU``
  a little above the wall-clock limit, ``RLIMIT_FSIZE`` (``file_mb``), no core files, and
  ``RLIMIT_AS`` = the address space after importing torch (its CUDA build maps a lot of
  virtual memory at import) plus ``memory_mb``; on CUDA also a per-process share of GPU memory;
* :func:`isolate`, in the child before student code runs. When the grader is root: each
  running child has its own user id (the working directory is ``chown``ed to it, mode 0700),
  network and mount namespaces with ``solutions/``, ``tests/`` and the forbidden modules' files
  hidden, ``RLIMIT_NPROC``, and after the child ends every process of that user id is killed
  (also a grandchild that left the group with ``setsid``). Otherwise: a network namespace
  where unprivileged user namespaces are allowed, and ``RLIMIT_NPROC`` relative to the user's
  current threads;
* the child's :class:`~course_lib.grading.child.Guard` makes the exercise's forbidden APIs
  unusable and records their use.

Not done: cgroups, seccomp, read-only copies of ``course_lib`` (student code can patch the
child's helpers, which only changes what that child reports about itself: the verdict is
computed in the parent).
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import course_lib

# The directory that holds the ``course_lib`` package (the repository root before installing).
PACKAGE_ROOT = str(Path(course_lib.__file__).resolve().parent.parent)
BOOTSTRAP = ("import sys; sys.path.insert(0, sys.argv.pop(1)); "
             "from course_lib.grading.child import main; main(*sys.argv[1:])")
# As root, each running child gets its own user id: this process's block of 64 ids (so two
# graders on one machine never share one), one per concurrently running child.
_UID_BASE = 1_000_000_000 + (os.getpid() % (1 << 22)) * 64
_uid_lock = threading.Condition()
_uids_in_use: set[int] = set()


@dataclass(frozen=True)
class Limits:
    """Resource limits of one child.

    Attributes:
        timeout_s: wall-clock seconds for the whole child.
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


def repository_dirs() -> list[str]:
    """The repository's folders a child must not see (solutions, tests), where they exist."""
    root = Path(PACKAGE_ROOT)
    return [str(root / name) for name in ("solutions", "tests") if (root / name).is_dir()]


def child_env(workdir: Path) -> dict[str, str]:
    """The scrubbed environment of a child."""
    env = {
        "PATH": os.defpath,
        "HOME": str(workdir),
        "TMPDIR": str(workdir),
        "LANG": "C.UTF-8",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "CUBLAS_WORKSPACE_CONFIG": ":4096:8",  # deterministic cuBLAS (read when CUDA starts)
    }
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        env["CUDA_VISIBLE_DEVICES"] = os.environ["CUDA_VISIBLE_DEVICES"]
    return env


def run_child(workdir: Path, limits: Limits) -> ChildResult:
    """Run ``course_lib.grading.child`` on ``workdir`` and wait at most ``limits.timeout_s``.

    A fresh interpreter per child (it imports torch: 1.5-3 s); the grader normally forks
    children from a :mod:`~course_lib.grading.zygote` instead and falls back to this. The
    child's stdout is discarded; its stderr goes to an anonymous temporary file. Whatever
    happens (normal exit, crash, timeout, an exception here), the child's process group is
    killed before this returns.
    """
    # An anonymous file: the child cannot swap it for a link or a FIFO by its path.
    with child_identity(workdir) as uid, tempfile.TemporaryFile() as log:
        start = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-I", "-c", BOOTSTRAP, PACKAGE_ROOT, str(workdir),
             "" if uid is None else str(uid)],
            cwd=workdir, env=child_env(workdir), stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=log, start_new_session=True,
        )
        timed_out = False
        try:
            timed_out = not _wait_without_reaping(proc.pid, start + limits.timeout_s)
        finally:
            # The leader is a zombie (or still running): its group id cannot be reused yet.
            kill_group(proc.pid)
            if uid is not None:  # also what left the group (setsid) or the session
                kill_uid(uid)
            returncode = proc.wait()
        seconds = time.monotonic() - start
        stderr = tail(log)
    return ChildResult(returncode, timed_out, seconds, stderr)


@contextlib.contextmanager
def child_identity(workdir: Path) -> Iterator[int | None]:
    """As root: a user id of its own for one child, owning ``workdir`` (mode 0700); else None."""
    uid = _acquire_uid() if os.geteuid() == 0 else None
    try:
        if uid is not None:  # the child's own directory, out of reach of every other child
            os.chown(workdir, uid, uid)
            os.chmod(workdir, 0o700)
        yield uid
    finally:
        if uid is not None:
            with _uid_lock:
                _uids_in_use.discard(uid)
                _uid_lock.notify()


def scratch_dir(kind: str) -> Path:
    """A new temporary folder ``<kind>-<this pid>-<random>`` (see :func:`remove_stale_dirs`)."""
    return Path(tempfile.mkdtemp(prefix=f"{kind}-{os.getpid()}-"))


_SCRATCH = re.compile(r"^course-(grade|zygote|grade-zip)-(\d+)-")


def remove_stale_dirs() -> list[Path]:
    """Delete the temporary folders left by graders that no longer run; returns them.

    A grader killed with ``SIGKILL`` cannot clean up: its children's working folders (and a
    zip's extracted notebooks) stay in the temporary directory. Their names carry the grader's
    process id; a folder whose process is gone is removed. (A reused process id only keeps a
    folder until a later run.)
    """
    removed = []
    for entry in Path(tempfile.gettempdir()).iterdir():
        match = _SCRATCH.match(entry.name)
        if not match or not entry.is_dir() or entry.is_symlink():
            continue
        try:
            os.kill(int(match.group(2)), 0)
            continue  # that grader still runs
        except ProcessLookupError:
            pass
        except PermissionError:  # runs as another user
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


def tail(log, size: int = 4000) -> str:
    """The last ``size`` bytes of an open binary file, decoded."""
    log.seek(max(0, os.fstat(log.fileno()).st_size - size))
    return log.read().decode("utf-8", errors="replace")


def _acquire_uid() -> int:
    with _uid_lock:
        while len(_uids_in_use) >= 64:
            _uid_lock.wait()
        uid = next(u for u in range(_UID_BASE, _UID_BASE + 64) if u not in _uids_in_use)
        _uids_in_use.add(uid)
        return uid


def kill_uid(uid: int) -> None:
    """SIGKILL every live process of ``uid`` until none is left (zombies are already dead)."""
    for _ in range(500):
        pids = [pid for pid, real_uid, _ in _processes() if real_uid == uid]
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.005)


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


def kill_group(pid: int) -> None:
    """SIGKILL the process group ``pid`` (nothing if it is gone)."""
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


# Linux constants (not in the os module of Python 3.11).
_CLONE_NEWNS, _CLONE_NEWUSER, _CLONE_NEWNET = 0x00020000, 0x10000000, 0x40000000
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 1, 2, 4, 8
_MS_BIND, _MS_REC, _MS_PRIVATE = 4096, 16384, 1 << 18
CHILD_THREADS = 64  # RLIMIT_NPROC headroom: torch's threads plus a few processes


def isolate(uid: int | None, hide: list[str]) -> list[str]:
    """Cut the child off before student code runs; returns what could be done, for the log.

    As root (``uid`` given): new network and mount namespaces (mounts made private first, so
    nothing propagates to the host), an empty read-only ``tmpfs`` over each directory of
    ``hide`` and ``/dev/null`` over each file of it, then all groups dropped and ``uid``/``gid``
    set (this also drops every capability), then ``RLIMIT_NPROC``. Otherwise: network and
    mount namespaces inside a new user namespace where the kernel allows unprivileged ones,
    with ``hide`` covered the same way, and ``RLIMIT_NPROC`` at the processes this user already
    has plus :data:`CHILD_THREADS`. A path of ``hide`` that holds the child's folder, Python or
    ``course_lib`` is left visible (covering it would break the child).
    """
    done = []
    libc = _libc()
    hide = [path for path in hide if _can_hide(path)]
    if uid is not None:
        if libc is not None and libc.unshare(_CLONE_NEWNET | _CLONE_NEWNS) == 0:
            done.append("network namespace")
            # Private first: a mount made below must never reach the host's namespace.
            if libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None) == 0:
                done += _open_the_way(libc, _needed_paths(), os.getcwd())
                done += [f"hid {path}" for path in hide if _hide(libc, path)]
        if not all(_reachable(path) for path in _needed_paths()):
            return [*done, "kept root: Python is not reachable by another user"]
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
        done.append(f"uid {uid}")
        _limit_processes(_threads_of(uid) + CHILD_THREADS)
    else:
        count = _threads_of(os.getuid())  # before the new user namespace renames our uid
        if libc is not None and libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNET | _CLONE_NEWNS) == 0:
            done.append("network namespace")
            if libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None) == 0:
                done += [f"hid {path}" for path in hide if _hide(libc, path)]
        elif libc is not None and libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNET) == 0:
            done.append("network namespace")
        _limit_processes(count + CHILD_THREADS)
    return done


def hides_without_root() -> bool:
    """Whether a non-root grader's children get a mount namespace (tried in a throwaway fork).

    True where the kernel allows unprivileged user namespaces.
    """
    pid = os.fork()
    if pid == 0:  # the child: never returns
        libc = _libc()
        ok = libc is not None and libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNS) == 0
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


def _can_hide(path: str) -> bool:
    """Whether covering ``path`` leaves the child what it needs (its folder, Python, course_lib)."""
    real = os.path.realpath(path)
    needed = [os.getcwd(), *_needed_paths()]
    return not any(n == real or n.startswith(real.rstrip(os.sep) + os.sep) for n in needed)


# Paths every child must not see, besides the repository's and the forbidden modules': what
# the grader is working on (the output folder, the submissions). Set by the batch.
_protected: set[str] = set()


def protect(paths) -> list[str]:
    """Hide these files and folders from every child started from now on (see :func:`isolate`).

    The batch protects its output folder (no child may write a report) and the submissions (no
    child may read another student's notebook), and gives them back with :func:`unprotect`
    when it ends.

    Returns:
        the real paths that were not protected yet: what the caller should unprotect (a path
        that another batch of this process protects stays protected).
    """
    added = sorted({os.path.realpath(p) for p in paths} - _protected)
    _protected.update(added)
    return added


def unprotect(paths) -> None:
    """Stop hiding these paths (as :func:`protect` returned them) from children started later."""
    _protected.difference_update(os.path.realpath(p) for p in paths)


@contextlib.contextmanager
def protecting(paths):
    """:func:`protect` these paths for the ``with`` block, then :func:`unprotect` what it added."""
    added = protect(paths)
    try:
        yield added
    finally:
        unprotect(added)


def protected() -> list[str]:
    """The paths :func:`protect` was given, sorted."""
    return sorted(_protected)


def _libc():
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p,
                               ctypes.c_ulong, ctypes.c_void_p]
        return libc
    except (OSError, AttributeError):
        return None


def _needed_paths() -> list[str]:
    """What the child must still read after dropping root: Python, its libraries, course_lib."""
    paths = [os.path.dirname(os.path.realpath(sys.executable)), PACKAGE_ROOT]
    return sorted({os.path.realpath(p) for p in [*paths, *sys.path] if p and os.path.isdir(p)})


def _reachable(path: str) -> bool:
    """Whether a user who is neither owner nor group member can enter ``path``."""
    parts = Path(path).parts
    return (all(os.stat(os.path.join(*parts[:i])).st_mode & 0o001 for i in range(1, len(parts)))
            and os.stat(path).st_mode & 0o005 == 0o005)


def _open_the_way(libc, paths: list[str], scratch: str) -> list[str]:
    """Make ``paths`` reachable for another user (e.g. a Python installed under ``/root``).

    Each directory on the way that only its owner may enter is covered by a tmpfs that holds
    just the needed entries, bound back from the real ones; the rest of it disappears from the
    child's view. ``scratch`` holds the temporary mount points.
    """
    needed: dict[str, set[str]] = {}
    for path in paths:
        parts = Path(path).parts
        for i in range(2, len(parts)):
            closed = os.path.join(*parts[:i])
            if not os.stat(closed).st_mode & 0o001:
                needed.setdefault(closed, set()).add(parts[i])
                break
    done, stashes = [], []
    for closed, entries in needed.items():
        bound = []
        for entry in sorted(entries):
            stash = os.path.join(scratch, f".stash{len(stashes)}")
            os.mkdir(stash)
            stashes.append(stash)
            if libc.mount(os.path.join(closed, entry).encode(), stash.encode(), None,
                          _MS_BIND | _MS_REC, None) == 0:
                bound.append((entry, stash))
        if libc.mount(b"tmpfs", closed.encode(), b"tmpfs", _MS_NOSUID | _MS_NODEV,
                      b"size=64k,mode=755") == 0:
            for entry, stash in bound:
                os.mkdir(os.path.join(closed, entry))
                libc.mount(stash.encode(), os.path.join(closed, entry).encode(), None,
                           _MS_BIND | _MS_REC, None)
            done.append(f"covered {closed}")
    for stash in stashes:
        libc.umount2(stash.encode(), 2)  # MNT_DETACH
        with contextlib.suppress(OSError):
            os.rmdir(stash)
    return done


def _hide(libc, path: str) -> bool:
    target = os.fsencode(path)
    if os.path.isdir(path):
        flags = _MS_RDONLY | _MS_NOSUID | _MS_NODEV | _MS_NOEXEC
        return libc.mount(b"tmpfs", target, b"tmpfs", flags, b"size=4k,mode=555") == 0
    if os.path.isfile(path):
        return libc.mount(b"/dev/null", target, None, _MS_BIND, None) == 0
    return False


def _limit_processes(count: int) -> None:
    try:
        resource.setrlimit(resource.RLIMIT_NPROC, (count, count))
    except (ValueError, OSError):
        pass


def _threads_of(uid: int) -> int:
    """Threads (what ``RLIMIT_NPROC`` counts) of the processes owned by ``uid``."""
    return sum(threads for _, real_uid, threads in _processes() if real_uid == uid)


def _processes():
    """``(pid, real uid, threads)`` of every process in ``/proc``."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status") as status:
                fields = dict(line.split(":", 1) for line in status if ":" in line)
            if fields["State"].split()[0] in ("Z", "X"):  # dead, waiting to be reaped
                continue
            yield int(entry.name), int(fields["Uid"].split()[0]), int(fields["Threads"])
        except (OSError, KeyError, ValueError):
            continue
