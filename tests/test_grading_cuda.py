"""Grading on the GPU: every lesson's solution still gets full marks, memory limits hold.

Skipped without CUDA (the ``cuda`` marker, see conftest.py); run on a machine with a GPU. The
CPU-only parts (tolerances, which children are forked) are tested here too.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from course_lib.exercises import LESSONS, load_lesson
from course_lib.grading import grade_notebook
from course_lib.grading.notebook import read_submission
from course_lib.grading.runner import CUDA_TOLERANCE_FACTOR, cuda_tolerances, grade_exercise
from course_lib.grading.sandbox import Limits

ROOT = Path(__file__).resolve().parents[1]
SOLUTIONS = sorted((ROOT / "solutions").glob("*.ipynb"))


def test_cuda_tolerances_scale_float_tolerances_only():
    nms, iou = load_lesson("05")["nms"], load_lesson("05")["box_iou"]
    loose = cuda_tolerances(iou)
    assert (loose.atol, loose.rtol) == (iou.atol * CUDA_TOLERANCE_FACTOR,
                                        iou.rtol * CUDA_TOLERANCE_FACTOR)
    assert loose.cases == iou.cases and loose.reference is iou.reference
    assert nms.exact  # exact exercises (indices, counts) are compared exactly everywhere


@pytest.mark.cuda
@pytest.mark.slow
@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.stem)
def test_solutions_get_full_marks_on_cuda(path):
    report = grade_notebook(path, device="cuda", seed=0)
    assert report["device"].startswith("cuda")
    assert report["error"] is None
    failed = {e["name"]: e["feedback"] for e in report["exercises"] if e["status"] != "passed"}
    assert failed == {}
    assert report["score"] == report["max_score"] > 0


@pytest.mark.cuda
@pytest.mark.slow
def test_student_notebooks_get_zero_on_cuda():
    lesson = sorted(LESSONS)[4]  # lesson 05
    path = next((ROOT / "notebooks").glob(f"{lesson}_*.ipynb"))
    report = grade_notebook(path, device="cuda", seed=0)
    assert report["score"] == 0
    assert {e["status"] for e in report["exercises"]} == {"not_implemented"}


GPU_BOMB = """
def box_iou(boxes1, boxes2):
    hoard = []
    while True:
        hoard.append(torch.empty(256 << 20, dtype=torch.uint8, device="cuda"))
"""


@pytest.mark.cuda
@pytest.mark.slow
def test_gpu_memory_bomb_hits_the_memory_limit(tmp_path):
    nb = json.loads((ROOT / "notebooks" / "05_iou_nms_map.ipynb").read_text(encoding="utf-8"))
    for cell in nb["cells"]:
        if "def box_iou" in "".join(cell["source"]) and "exercise" in cell["metadata"].get(
                "tags", []):
            cell["source"] = GPU_BOMB
    path = tmp_path / "bomb.ipynb"
    path.write_text(json.dumps(nb), encoding="utf-8")
    result = grade_exercise(load_lesson("05")["box_iou"], read_submission(path), "cuda",
                            Limits(timeout_s=60, memory_mb=1024), np.random.default_rng(0), 1)
    assert result["status"] == "memory" and result["score"] == 0, result["feedback"]
