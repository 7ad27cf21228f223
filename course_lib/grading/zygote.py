"""A zygote: a process that imports torch once and forks one sandboxed child per exercise.

Starting a Python process that imports torch costs 1.5-3 s of CPU; a notebook has 4-6
exercises and a class 200 notebooks. A zygote pays that once: it starts with the children's
scrubbed environment (:func:`~course_lib.grading.sandbox.child_env`), imports torch,
torchvision and the grading and exercise modules, and then waits for requests on a Unix socket.
For each request it forks; the fork becomes exactly what :func:`sandbox.run_child` would have
started (a new session, stdin and stdout on ``/dev/null``, stderr to the parent's log file,
every other file descriptor closed, the working directory and environment of the task) and runs
:func:`course_lib.grading.child.main`, which sets the limits and isolates itself as before.

What the fork inherits is the zygote's memory: modules, nothing else. The zygote never reads a
task, an expected value or another submission, never initialises CUDA (a forked CUDA context
is unusable; each child creates its own) and never runs a parallel torch operation (OpenMP is
not fork-safe once its threads exist).

Protocol (``SOCK_SEQPACKET``, one JSON message per packet): the zygote says
``{"ready": pid}``; the parent sends ``{"workdir", "uid"}`` with the log file descriptor
attached; the zygote answers ``{"pid"}`` after forking and ``{"returncode"}`` once the child
has ended and its process group has been killed (killed *before* the child is reaped, so its
group id cannot have been reused). On a timeout the parent kills the group itself; the zygote
then reports the signal. One zygote serves one request at a time: :func:`borrow` lends each
grading thread its own.

If the zygote cannot start, :func:`run_child` falls back to
:func:`course_lib.grading.sandbox.run_child` (a fresh interpreter per child). If it dies while
a child runs (student code in the non-root fallback can signal it: same user id), that child
counts as crashed and the zygote is replaced.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from course_lib.grading import sandbox
from course_lib.grading.sandbox import ChildResult, Limits

BOOTSTRAP = ("import sys; sys.path.insert(0, sys.argv.pop(1)); "
             "from course_lib.grading.zygote import serve; serve(int(sys.argv[1]))")
START_TIMEOUT_S = 120.0  # importing torch on a busy machine
REPLY_TIMEOUT_S = 30.0  # fork, or reaping a killed child
MAX_PACKET = 4096


class ZygoteError(RuntimeError):
    """The zygote could not start or stopped answering."""


class Zygote:
    """The parent's handle on one zygote process (see the module docstring)."""

    def __init__(self) -> None:
        self.home = sandbox.scratch_dir("course-zygote")
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock = ours
        self.errors = tempfile.TemporaryFile()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-c", BOOTSTRAP, sandbox.PACKAGE_ROOT,
                 str(theirs.fileno())],
                pass_fds=[theirs.fileno()], cwd=self.home, env=sandbox.child_env(self.home),
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self.errors,
                start_new_session=True,
            )
        except OSError as exc:
            self.close()
            raise ZygoteError(f"could not start the zygote: {exc}") from exc
        finally:
            theirs.close()
        try:
            self._receive("ready", time.monotonic() + START_TIMEOUT_S)
        except ZygoteError:
            self.close()
            raise

    def run_child(self, workdir: Path, limits: Limits) -> ChildResult:
        """Like :func:`course_lib.grading.sandbox.run_child`, with a forked child.

        Raises:
            ZygoteError: if the request could not be sent (nothing ran; the caller may retry
                elsewhere). A zygote that dies later yields a crashed :class:`ChildResult`.
        """
        with sandbox.child_identity(workdir) as uid, tempfile.TemporaryFile() as log:
            start = time.monotonic()
            request = json.dumps({"workdir": str(workdir), "uid": uid}).encode()
            try:
                socket.send_fds(self.sock, [request], [log.fileno()])
                pid = self._receive("pid", start + REPLY_TIMEOUT_S)
            except (OSError, ZygoteError) as exc:
                self.close()
                raise ZygoteError(f"the zygote did not start the child: {exc}") from exc
            timed_out, returncode = False, -signal.SIGKILL
            try:
                try:
                    returncode = self._receive("returncode", start + limits.timeout_s)
                except TimeoutError:
                    timed_out = True
                    sandbox.kill_group(pid)  # not reaped yet: the zygote waits for this
                    returncode = self._receive("returncode",
                                               time.monotonic() + REPLY_TIMEOUT_S)
            except (ZygoteError, TimeoutError):  # the zygote died or hangs: replace it
                sandbox.kill_group(pid)
                self.close()
            finally:
                if uid is not None:
                    sandbox.kill_uid(uid)
            seconds = time.monotonic() - start
            stderr = sandbox.tail(log)
        return ChildResult(returncode, timed_out, seconds, stderr)

    @property
    def alive(self) -> bool:
        """Whether the zygote process is still running and its socket open."""
        return self.sock.fileno() >= 0 and self.proc.poll() is None

    def close(self) -> None:
        """Stop the zygote (SIGKILL to its group) and remove its home folder."""
        self.sock.close()
        proc = getattr(self, "proc", None)
        if proc is not None:
            sandbox.kill_group(proc.pid)
            proc.wait()
        self.errors.close()
        with contextlib.suppress(OSError):
            os.rmdir(self.home)

    def _receive(self, key: str, deadline: float):
        """The value of ``key`` in the zygote's next message.

        Raises:
            TimeoutError: nothing came before ``deadline``.
            ZygoteError: the zygote closed the socket or sent garbage.
        """
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        self.sock.settimeout(remaining)
        try:
            packet = self.sock.recv(MAX_PACKET)
        except TimeoutError:
            raise
        except OSError as exc:
            raise ZygoteError(str(exc)) from exc
        if not packet:
            raise ZygoteError(f"the zygote exited{self._last_error()}")
        try:
            return json.loads(packet)[key]
        except (ValueError, KeyError, TypeError) as exc:
            raise ZygoteError(f"unexpected message from the zygote: {packet[:100]!r}") from exc

    def _last_error(self) -> str:
        with contextlib.suppress(OSError, ValueError):
            self.proc.wait(timeout=1)
            text = sandbox.tail(self.errors).strip().splitlines()
            return f" ({text[-1][:300]})" if text else ""
        return ""


# ---------------------------------------------------------------------------------------------
# A pool: each grading thread borrows its own zygote
# ---------------------------------------------------------------------------------------------

_idle: list[Zygote] = []
_pool_lock = threading.Lock()


@contextlib.contextmanager
def borrow() -> Iterator[Zygote]:
    """An idle zygote (or a new one) for the duration of the block; dead ones are dropped."""
    with _pool_lock:
        zygote = _idle.pop() if _idle else None
    if zygote is None or not zygote.alive:
        if zygote is not None:
            zygote.close()
        zygote = Zygote()
    try:
        yield zygote
    finally:
        if zygote.alive:
            with _pool_lock:
                _idle.append(zygote)


def shutdown() -> None:
    """Stop every idle zygote (also done at interpreter exit)."""
    with _pool_lock:
        zygotes = list(_idle)
        _idle.clear()
    for zygote in zygotes:
        zygote.close()


atexit.register(shutdown)


def run_child(workdir: Path, limits: Limits, device: str = "cpu") -> ChildResult:
    """Run the exercise child of ``workdir``: forked from a zygote, else a fresh interpreter.

    Only CPU children are forked: a CUDA child starts a fresh interpreter (CUDA must not be
    initialised before a fork, and each child creates its own context anyway). Setting the
    environment variable ``COURSE_GRADE_NO_ZYGOTE`` also turns the zygote off.
    """
    if device != "cpu" or os.environ.get("COURSE_GRADE_NO_ZYGOTE"):
        return sandbox.run_child(workdir, limits)
    try:
        with borrow() as zygote:
            return zygote.run_child(workdir, limits)
    except ZygoteError:
        return sandbox.run_child(workdir, limits)


# ---------------------------------------------------------------------------------------------
# Inside the zygote
# ---------------------------------------------------------------------------------------------


def serve(fd: int) -> None:
    """The zygote's loop: preload, then fork one child per request until the socket closes."""
    sock = socket.socket(fileno=fd)
    _preload()
    sock.send(json.dumps({"ready": os.getpid()}).encode())
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(sock, MAX_PACKET, 1)
        except OSError:
            return
        if not message:
            return  # the grader closed its end
        if len(fds) != 1:
            for extra in fds:
                os.close(extra)
            return
        request = json.loads(message)
        pid = os.fork()
        if pid == 0:
            _become_child(request["workdir"], request["uid"], fds[0])
        os.close(fds[0])
        sock.send(json.dumps({"pid": pid}).encode())
        grader_gone = _wait(pid, sock)  # the child is a zombie now: its group id is still taken
        sandbox.kill_group(pid)
        if grader_gone and request["uid"] is not None:
            sandbox.kill_uid(request["uid"])
        _, status = os.waitpid(pid, 0)
        if grader_gone:
            return
        sock.send(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}).encode())


def _wait(pid: int, sock: socket.socket) -> bool:
    """Wait until the child exits (without reaping it) or the grader goes away (True)."""
    pidfd = os.pidfd_open(pid)
    try:
        while True:
            readable, _, _ = select.select([pidfd, sock], [], [])
            if pidfd in readable:
                os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
                return False
            if not sock.recv(MAX_PACKET, socket.MSG_PEEK):  # end of file: the grader died
                sandbox.kill_group(pid)
                os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
                return True
            sock.recv(MAX_PACKET)  # an unexpected message while a child runs: drop it
    finally:
        os.close(pidfd)


def _preload() -> None:
    """Import what every child needs (torch first); no CUDA, no parallel torch operation."""
    import torch  # noqa: F401
    import torchvision  # noqa: F401

    import course_lib.grading.child  # noqa: F401
    from course_lib.exercises import LESSONS, load_lesson

    for lesson in LESSONS:
        load_lesson(lesson)


def _become_child(workdir: str, uid: int | None, log_fd: int) -> None:
    """In the fork: become a sandbox child and run the task; never returns."""
    code = 1
    try:
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(devnull, 1)
        os.dup2(log_fd, 2)
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))  # the zygote's socket above all
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD, signal.SIGPIPE):
            signal.signal(sig, signal.default_int_handler if sig == signal.SIGINT
                          else signal.SIG_DFL)
        os.chdir(workdir)
        os.environ.clear()
        os.environ.update(sandbox.child_env(Path(workdir)))
        from course_lib.grading import child

        child.main(workdir, "" if uid is None else str(uid))
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        with contextlib.suppress(BaseException):
            import traceback

            traceback.print_exc()
    finally:
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)
