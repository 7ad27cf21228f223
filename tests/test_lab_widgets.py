"""The widgets in JupyterLab, in a real browser: run a notebook, drive a widget with the keyboard.

One JupyterLab server (tests/browser/lab.py: 127.0.0.1, a free port, no token, no news or update
checks, a temporary copy of the notebooks) and one headless Chromium (tests/browser/chromium.py)
serve the whole module; both are shut down at the end and no process may be left behind.
Skipped without playwright or Chromium (`make browser` installs Debian's).

A test for a new widget: open its lesson's student notebook, ``run_all`` (no error outputs: the
student notebook runs before anything is solved), find the cell with ``widget_cell``, ``press``
keys on a control and ``wait_for_text`` of what the widget must then show.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from browser import chromium
from browser.lab import JupyterLab, press, run_all, wait_for_text, widget_cell

from course_lib.boxes import box_iou

ROOT = Path(__file__).resolve().parents[1]
LESSON_05 = "05_iou_nms_map.ipynb"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lab_and_browser():
    reason = chromium.skip_reason()
    if reason:
        pytest.skip(reason)
    with chromium.launch() as browser:
        lab = JupyterLab([ROOT / "notebooks" / LESSON_05])
        with lab:
            yield lab, browser
        assert lab.leftovers == [], "processes left after JupyterLab's shutdown"


def test_lesson_05_iou_explorer_follows_the_keyboard(lab_and_browser):
    lab, browser = lab_and_browser
    page = lab.open(browser, LESSON_05)
    problems = chromium.watch(page, allow=(lab.url,))
    try:
        assert run_all(page) == [], "the student notebook must run before anything is solved"
        cell = widget_cell(page, "iou_explorer()")
        sliders = cell.locator(".widget-slider")
        assert sliders.count() == 4  # B x1, B y1, B width, B height
        wait_for_text(cell, "IoU = 0.235")  # the default boxes
        press(sliders.nth(0), "ArrowLeft", 10)  # B x1: 40 -> 30
        a, b = torch.tensor([[20.0, 20, 70, 70]]), torch.tensor([[30.0, 35, 85, 90]])
        expected = float(box_iou(a, b)[0, 0])  # 1400 / 4125
        wait_for_text(cell, f"IoU = {expected:.3f}")
        assert f"{expected:.3f}" == "0.339"
        assert problems == []
    finally:
        page.close()


def test_lesson_05_solution_runs_without_error_outputs(lab_and_browser):
    lab, browser = lab_and_browser
    name = f"solution_{LESSON_05}"  # beside the student version, in the server's folder
    shutil.copy(ROOT / "solutions" / LESSON_05, lab.root / name)
    page = lab.open(browser, name)
    try:
        assert run_all(page) == []
    finally:
        page.close()
