"""JupyterLab in a real browser: start a throw-away server, open a notebook, run it, drive widgets.

Used by test_lab_widgets.py; a new widget's test needs three calls::

    with JupyterLab(notebooks=[ROOT / "notebooks" / "05_iou_nms_map.ipynb"]) as lab, \\
            chromium.launch() as browser:
        page = lab.open(browser, "05_iou_nms_map.ipynb")
        assert run_all(page) == []                        # the error outputs (none)
        cell = widget_cell(page, "iou_explorer()")        # the cell that shows the widget
        press(cell.locator(".widget-slider").first, "ArrowLeft", 10)
        wait_for_text(cell, "IoU = 0.339")

A widget that needs no lesson around it is cheaper to test in a scratch notebook:
``scratch_notebook(lab.root / "widgets.ipynb", [source, ...])`` writes one code cell per source,
and ``control(cell, "stride")`` / ``button(cell, "Run to end")`` find a control by its label.

Keys that drive a control in JupyterLab (the notebook is in command mode while a widget has the
focus, and JupyterLab's shortcuts take the keys they are bound to): a slider, ArrowLeft /
ArrowRight (one step), Home / End; a dropdown, Home / End / PageUp / PageDown (ArrowUp /
ArrowDown select another cell instead, and letters are shortcuts too); a button, a toggle
button or a checkbox, Enter or Space.

The server (:class:`JupyterLab`) listens on 127.0.0.1 on a free port, without a token (tests
only), with news and update checks off, autosave off and every cell rendered (no windowing, so
the page holds every cell). It serves a temporary copy of the notebooks it is given, so running
them never changes the repository. On exit it asks the server to shut down (which stops the
kernels), then ends whatever is left of its process tree, and :attr:`JupyterLab.leftovers`
says whether anything had to be killed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import psutil

# User settings of the test server (JUPYTERLAB_SETTINGS_DIR), one file per plugin.
SETTINGS = {
    # no "Would you like to receive official Jupyter news?" toast, no request to jupyter.org
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false",
                                                    "checkForUpdates": False},
    "@jupyterlab/docmanager-extension/plugin": {"autosave": False},
    # every cell in the DOM, so that a widget far down the notebook can be found and driven
    "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
}
START_TIMEOUT = 90.0  # seconds for the server to answer (the first start compiles nothing)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class JupyterLab:
    """A JupyterLab server for one test session; a context manager.

    Args:
        notebooks: files copied into the server's (temporary) root folder.
        timeout: seconds to wait for the server to start.

    Attributes:
        url: ``http://127.0.0.1:<port>/``.
        root: the server's root folder (the copies of ``notebooks``).
        leftovers: after exit, the processes of the server's tree that were still alive after
            the shutdown and had to be killed (``"<pid> <name>"``); empty when it went cleanly.
    """

    def __init__(self, notebooks: list[Path], timeout: float = START_TIMEOUT):
        self.notebooks = [Path(p) for p in notebooks]
        self.timeout = timeout
        self.leftovers: list[str] = []
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> JupyterLab:
        self._tmp = Path(tempfile.mkdtemp(prefix="course-lab-"))
        self.root = self._tmp / "root"
        self.root.mkdir()
        for notebook in self.notebooks:
            shutil.copy2(notebook, self.root / notebook.name)
        settings = self._tmp / "settings"
        for plugin, values in SETTINGS.items():
            path = settings / f"{plugin}.jupyterlab-settings"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(values))
        env = {**os.environ, "JUPYTERLAB_SETTINGS_DIR": str(settings),
               "JUPYTERLAB_WORKSPACES_DIR": str(self._tmp / "workspaces"),
               "JUPYTER_CONFIG_DIR": str(self._tmp / "config"),
               "JUPYTER_RUNTIME_DIR": str(self._tmp / "runtime")}
        env.pop("MPLBACKEND", None)  # the kernel draws inline, as for a student
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        command = [
            sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1",
            f"--port={self.port}", "--port-retries=0", f"--ServerApp.root_dir={self.root}",
            "--IdentityProvider.token=", "--ServerApp.password=",
            "--ServerApp.disable_check_xsrf=True",  # POST /api/shutdown without a cookie
            "--LabApp.news_url=None",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            "--LabApp.expose_app_in_browser=True",  # window.jupyterapp: run commands
        ]
        if os.geteuid() == 0:
            command.append("--allow-root")
        self._log = open(self._tmp / "server.log", "wb")  # noqa: SIM115 (closed in __exit__)
        self.process = subprocess.Popen(command, cwd=self.root, env=env, stdout=self._log,
                                        stderr=subprocess.STDOUT)
        try:
            self._wait_until_up()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _wait_until_up(self) -> None:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with status {self.process.returncode}:\n"
                                   f"{self.log()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url + "api/status", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.3)
        raise RuntimeError(f"JupyterLab did not answer within {self.timeout:.0f} s:\n"
                           f"{self.log()[-3000:]}")

    def log(self) -> str:
        """What the server printed so far."""
        return (self._tmp / "server.log").read_text(errors="replace")

    def __exit__(self, *exc) -> None:
        if self.process is not None:
            try:
                tree = psutil.Process(self.process.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                tree = []
            try:  # the server stops its kernels, then itself
                request = urllib.request.Request(self.url + "api/shutdown", method="POST")
                urllib.request.urlopen(request, timeout=10).close()
            except (urllib.error.URLError, OSError):
                self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                self.leftovers.append(f"{self.process.pid} jupyter-lab")
            _, alive = psutil.wait_procs(tree, timeout=10)
            for proc in alive:
                self.leftovers.append(f"{proc.pid} {proc.name()}")
                proc.kill()
            psutil.wait_procs(alive, timeout=5)
            self.process = None
        if getattr(self, "_log", None):
            self._log.close()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def open(self, browser, notebook: str, viewport: dict | None = None):
        """Open ``notebook`` (a name in the root folder) in a new page; wait for its kernel.

        Returns:
            The playwright ``Page``, its kernel started and idle.
        """
        page = browser.new_page(viewport=viewport or {"width": 1400, "height": 900})
        page.goto(f"{self.url}lab/tree/{notebook}")
        page.wait_for_function(
            """(name) => {
                const app = window.jupyterapp;
                const panel = app && app.shell.currentWidget;
                return !!(panel && panel.context && panel.context.path.endsWith(name)
                          && panel.sessionContext.session && panel.sessionContext.session.kernel
                          && panel.sessionContext.session.kernel.status === 'idle');
            }""", arg=notebook, timeout=self.timeout * 1000)
        return page


def run_all(page, timeout: float = 600.0) -> list[str]:
    """Run every cell of the page's notebook (Run > Run All Cells) and wait until it is done.

    Returns:
        The error outputs, as ``"cell <i>: <ename>: <evalue>"`` (empty when none).
    """
    page.set_default_timeout(timeout * 1000)
    return page.evaluate(
        """async () => {
            const app = window.jupyterapp;
            const panel = app.shell.currentWidget;
            await app.commands.execute('notebook:run-all-cells');  // resolves when all ran
            const errors = [];
            const cells = panel.content.model.cells;
            for (let i = 0; i < cells.length; i++) {
                const cell = cells.get(i);
                if (cell.type !== 'code') continue;
                for (const out of cell.outputs.toJSON()) {
                    if (out.output_type === 'error') {
                        errors.push(`cell ${i}: ${out.ename}: ${out.evalue}`);
                    }
                }
            }
            return errors;
        }""")


def scratch_notebook(path: Path, cells: Sequence[str]) -> Path:
    """Write a notebook of code cells (Python 3 kernel, not run) to ``path``.

    Put it in :attr:`JupyterLab.root` and open it with :meth:`JupyterLab.open`: a test can
    show several widgets with cheap arguments without running a whole lesson.

    Returns:
        ``path``.
    """
    import nbformat

    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                       "language": "python"}
    notebook.cells = [nbformat.v4.new_code_cell(source) for source in cells]
    nbformat.write(notebook, str(path))
    return path


def widget_cell(page, source: str):
    """The code cell whose source contains ``source``, once its widget is drawn.

    Returns:
        A playwright ``Locator`` of the cell (search it for ``.widget-slider``, ``.widget-html``).
    """
    cell = page.locator(".jp-CodeCell").filter(
        has=page.locator(".jp-InputArea", has_text=source)).first
    # the first visible one: a widget's empty description label is in the DOM but hidden
    cell.locator(".jp-OutputArea .jupyter-widgets").filter(visible=True).first.wait_for()
    cell.scroll_into_view_if_needed()
    return cell


def control(cell, label: str):
    """The control (slider, dropdown, checkbox, ...) of ``cell`` whose description is ``label``.

    The whole label must match (``"stride"`` does not find ``"stride s"``).
    """
    exact = re.compile(rf"^\s*{re.escape(label)}\s*$")
    return cell.locator(".widget-inline-hbox").filter(
        has=cell.page.locator(".widget-label", has_text=exact)).first


def button(cell, name: str):
    """The button (or toggle button) of ``cell`` that says ``name``."""
    return cell.get_by_role("button", name=name, exact=True).first


def press(control, key: str, times: int = 1) -> None:
    """Focus a widget control and press ``key`` ``times`` times.

    ``control`` may be the control's whole box (``control(cell, label)``, a
    ``.widget-slider``): the key goes to a slider's handle, a dropdown's ``select`` or a
    checkbox's ``input`` inside it, else to ``control`` itself (a button).
    """
    target = control
    for inner in (".noUi-handle", "select", "input[type=checkbox]"):
        if control.locator(inner).count():
            target = control.locator(inner).first
            break
    target.focus()
    for _ in range(times):
        target.press(key)


def readouts(cell) -> list[str]:
    """The text of the widget's HTML readouts in ``cell`` (for messages)."""
    return [text.strip() for text in cell.locator(".widget-html").all_inner_texts()]


def wait_for_text(locator, text: str, timeout: float = 30.0) -> None:
    """Wait until ``locator`` shows ``text`` (a kernel round trip per change).

    Raises:
        AssertionError: after ``timeout`` seconds, with what the readouts show instead.
    """
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        locator.filter(has_text=text).first.wait_for(timeout=timeout * 1000)
    except PlaywrightTimeout:
        shown = "\n".join(readouts(locator)) or locator.inner_text()[:2000]
        raise AssertionError(f"{text!r} not shown after {timeout:.0f} s; the widget shows:\n"
                             f"{shown}") from None
