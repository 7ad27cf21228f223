"""The widgets in JupyterLab, in a real browser: drive each widget with the keyboard.

One JupyterLab server (tests/browser/lab.py: 127.0.0.1, a free port, no token, no news or update
checks, a temporary copy of the notebooks) and one headless Chromium (tests/browser/chromium.py)
serve the whole module; both are shut down at the end and no process may be left behind.
Skipped without playwright or Chromium (`make browser` installs Debian's).

Lesson 05's student notebook runs whole (it must run before anything is solved) and its IoU
explorer follows the keyboard. Every other widget of ``course_lib.widgets`` is shown once, with
small arguments, in one scratch notebook (``SCRATCH_CELLS``, run once for the module, ~10 s,
instead of ~35 s per lesson), and its test presses keys on a control and waits for the readout
that an independent computation here predicts (torchvision, a loop, the lecture's formula).

A test for a new widget: add a cell to ``SCRATCH_CELLS`` that shows it with cheap arguments
(a tiny seeded model, or a fake one built from the ground truth), then in a test find the cell
with ``widget_cell``, a control with ``control(cell, "<its description>")`` or
``button(cell, "<its text>")``, ``press`` keys on it and ``wait_for_text`` of what the widget
must then show.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from browser import chromium
from browser.lab import (
    JupyterLab,
    button,
    control,
    press,
    run_all,
    scratch_notebook,
    wait_for_text,
    widget_cell,
)
from torchvision.ops import nms as torchvision_nms

from course_lib.boxes import box_iou
from course_lib.data import lecture_examples as ex

ROOT = Path(__file__).resolve().parents[1]
LESSON_05 = "05_iou_nms_map.ipynb"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lab_and_browser():
    with chromium.launch() as browser:  # skips the module without a browser
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


# ------------------------------------------------------------------ every other widget

# A 128 x 128 scene shared by the box widgets: boxes 0 and 1 share a YOLO cell (S = 7 or 8).
GT = [[10.0, 12, 50, 44], [20, 16, 32, 28], [60, 60, 120, 100], [70, 8, 90, 40]]
LABELS = [1, 2, 3, 1]
# 3 GT boxes and 10 ranked proposals for the proposal viewer (IoUs 0.62 to 1 with some of them)
PROPOSAL_GT = [[10.0, 12, 50, 44], [60, 60, 120, 100], [70, 8, 90, 40]]
PROPOSALS = [[12.0, 14, 52, 46], [0, 0, 128, 128], [66, 66, 126, 106], [30, 30, 60, 60],
             [5, 90, 40, 120], [70, 8, 90, 40], [56, 56, 116, 96], [68, 10, 92, 44],
             [100, 0, 128, 30], [8, 10, 48, 40]]
# Lesson 07/08's synthetic test scenes, as the explorers' defaults make them (smaller)
SEGMENTATION_DATA = {"split": "test", "num_images": 4, "kind": "segmentation", "image_size": 64,
                     "num_classes": 5, "cache": False, "progress": False}
INSTANCE_DATA = {"split": "test", "num_images": 3, "kind": "detection", "image_size": 64,
                 "num_classes": 3, "cache": False, "progress": False}

SCRATCH = "widgets.ipynb"
SCRATCH_CELLS = [
    f"""import torch
from course_lib import widgets
from course_lib.data.synthetic import SyntheticShapes
image = torch.zeros(3, 128, 128)
GT, LABELS = torch.tensor({GT}), torch.tensor({LABELS})""",
    "widgets.nms_stepper()",
    "widgets.pr_curve_builder()",
    "widgets.sliding_window_explorer(torch.zeros(3, 60, 100), size=20, stride=10)",
    "widgets.transposed_conv_explorer()",
    f"widgets.proposal_viewer(image, {{'boxes': torch.tensor({PROPOSAL_GT})}},\n"
    f"                        proposals=torch.tensor({PROPOSALS}))",
    "widgets.anchor_explorer(image, {'boxes': GT})",
    "widgets.default_box_explorer(image, {'boxes': GT})",
    "widgets.yolo_grid_explorer(image, {'boxes': GT, 'labels': LABELS})",
    f"""torch.manual_seed(0)  # an untrained 1 x 1 convolution: 3 colours -> 6 class scores
seg_model = torch.nn.Conv2d(3, 6, 1)
seg_data = SyntheticShapes(**{SEGMENTATION_DATA!r})
widgets.segmentation_explorer({{'conv': seg_model}}, seg_data, num_images=4, device='cpu')""",
    f"""inst_data = SyntheticShapes(**{INSTANCE_DATA!r})

def oracle(images):
    \"\"\"A perfect Mask R-CNN: the true objects of the image, scored 0.9, 0.73, 0.56, ...\"\"\"
    (i,) = [k for k in range(len(inst_data)) if torch.equal(inst_data[k][0], images[0])]
    target = inst_data[i][1]
    scores = 0.9 - 0.17 * torch.arange(len(target['labels']))
    return [{{'boxes': target['boxes'], 'scores': scores, 'labels': target['labels'],
             'masks': target['masks'][:, None].float()}}]

widgets.instance_explorer(oracle, inst_data, num_images=3, device='cpu')""",
]


class Scratch:
    """The scratch notebook's page, its error outputs and its JavaScript problems."""

    def __init__(self, page, errors: list[str], problems: list[str]):
        self.page, self.errors, self.problems = page, errors, problems

    def cell(self, call: str):
        """The cell that shows ``widgets.<call>``, after checking it raised nothing."""
        index = next(i for i, source in enumerate(SCRATCH_CELLS) if f"widgets.{call}" in source)
        assert not [e for e in self.errors if e.startswith(f"cell {index}:")], self.errors
        return widget_cell(self.page, f"widgets.{call}")

    def check(self) -> None:
        assert self.problems == []


@pytest.fixture(scope="module")
def scratch(lab_and_browser):
    lab, browser = lab_and_browser
    scratch_notebook(lab.root / SCRATCH, SCRATCH_CELLS)
    page = lab.open(browser, SCRATCH)
    problems = chromium.watch(page, allow=(lab.url,))
    try:
        errors = run_all(page, timeout=120)
        page.set_default_timeout(30_000)
        yield Scratch(page, errors, problems)
    finally:
        page.close()


def test_nms_stepper_follows_the_keyboard(scratch):
    cell = scratch.cell("nms_stepper(")
    wait_for_text(cell, "Step 0 / 2")  # the dog scene at IoU 0.5: two boxes kept
    press(control(cell, "IoU thresh."), "ArrowRight", 4)  # 0.50 -> 0.70
    boxes = torch.tensor([*ex.DOG_BOXES, ex.LOOSE_DOG_BOX])
    scores = torch.tensor([*ex.DOG_SCORES, ex.LOOSE_DOG_SCORE])
    kept = torchvision_nms(boxes, scores, 0.7).tolist()
    assert kept == [0, 2, 4]  # the loose green box (IoU 0.64 with blue) survives
    wait_for_text(cell, f"Step 0 / {len(kept)}")
    press(button(cell, "Run to end"), "Enter")
    wait_for_text(cell, f"Step {len(kept)} / {len(kept)}")
    wait_for_text(cell, f"Done: kept {kept}")
    wait_for_text(cell, "No remaining box overlaps it by more than 0.70.")  # the last, green
    scratch.check()


def test_pr_curve_builder_follows_the_keyboard(scratch):
    cell = scratch.cell("pr_curve_builder(")
    wait_for_text(cell, "precision = 0.600")  # every detection counted
    press(control(cell, "score \u2265"), "ArrowRight")  # 0.10 -> 0.11: the last one drops
    scores, is_tp, num_gt = ex.DOG_PR_SCORES, ex.DOG_PR_IS_TP, ex.DOG_PR_NUM_GT
    counted = [tp for s, tp in zip(scores, is_tp, strict=True) if s >= 0.11]
    tp, fp = sum(counted), len(counted) - sum(counted)
    wait_for_text(cell, f"{len(counted)} of {len(scores)} detections have score \u2265 0.11: "
                        f"TP = {tp}, FP = {fp}, FN = {num_gt - tp}")
    wait_for_text(cell, f"precision = {tp / (tp + fp):.3f}")
    wait_for_text(cell, f"recall = {tp / num_gt:.3f}")
    press(control(cell, "AP method"), "End")  # all -> coco101
    # by hand: the ranked curve, then the best precision at recall >= r for 101 levels of r
    hits = np.cumsum(sorted(zip(scores, is_tp, strict=True), reverse=True), axis=0)[:, 1]
    precision, recall = hits / np.arange(1, len(scores) + 1), hits / num_gt
    levels = [max([p for p, r in zip(precision, recall, strict=True) if r >= level - 1e-12],
                  default=0.0) for level in np.linspace(0, 1, 101)]
    wait_for_text(cell, f"AP (coco101) = {np.mean(levels):.4f}")
    scratch.check()


def test_sliding_window_explorer_follows_the_keyboard(scratch):
    cell = scratch.cell("sliding_window_explorer(")
    wait_for_text(cell, "9 columns \u00d7 5 rows = 45 windows")  # 100 x 60, size 20, stride 10
    press(control(cell, "stride"), "ArrowRight", 3)  # 10 -> 13
    xs, ys = range(0, 100 - 20 + 1, 13), range(0, 60 - 20 + 1, 13)
    wait_for_text(cell, "window 20 \u00d7 20 (w \u00d7 h), stride 13")
    wait_for_text(cell, f"{len(xs)} columns \u00d7 {len(ys)} rows = {len(xs) * len(ys)} "
                        "windows of this shape")
    press(control(cell, "window #"), "ArrowRight", len(xs) + 1)  # the second row's second
    x, y = xs[1], ys[1]
    wait_for_text(cell, f"window #{len(xs) + 1}: ({x}, {y}, {x + 20}, {y + 20})")
    scratch.check()


def test_transposed_conv_explorer_follows_the_keyboard(scratch):
    cell = scratch.cell("transposed_conv_explorer(")
    wait_for_text(cell, "+ (3 \u2212 1) + 1 = 5")  # the lecture: n = 2, k = 3, s = 2
    press(control(cell, "stride s"), "ArrowLeft")  # 2 -> 1
    x = torch.arange(1.0, 5).reshape(1, 1, 2, 2)
    out = F.conv_transpose2d(x, torch.ones(1, 1, 3, 3), stride=1)
    size = out.shape[-1]
    wait_for_text(cell, f"(2 \u2212 1)\u00b71 \u2212 2\u00b70 + (3 \u2212 1) + 1 = {size}")
    press(button(cell, "Write all"), "Enter")
    covers = F.conv_transpose2d(torch.ones(1, 1, 2, 2), torch.ones(1, 1, 3, 3), stride=1)
    wait_for_text(cell, f"Most kernels on one output cell so far: {int(covers.max())}")
    wait_for_text(cell, f"Done: the kept {size} \u00d7 {size} grid equals conv_transpose2d")
    scratch.check()


def test_proposal_viewer_follows_the_keyboard(scratch):
    cell = scratch.cell("proposal_viewer(")
    iou = box_iou(torch.tensor(PROPOSAL_GT), torch.tensor(PROPOSALS))  # (3, 10)

    def found(n, threshold):  # a loop: GT g is found by one of the first n proposals
        return sum(any(float(iou[g, p]) >= threshold for p in range(n)) for g in range(3))

    wait_for_text(cell, f"top N = 10 of 10 proposals, recall@IoU 0.50 = {found(10, 0.5)}/3")
    press(control(cell, "top N"), "ArrowLeft", 2)  # steps 1, 2, 3, 5, 7, 10: 10 -> 5
    wait_for_text(cell, f"top N = 5 of 10 proposals, recall@IoU 0.50 = {found(5, 0.5)}/3")
    press(control(cell, "IoU thresh."), "ArrowRight", 4)  # 0.50 -> 0.70
    wait_for_text(cell, f"top N = 5 of 10 proposals, recall@IoU 0.70 = {found(5, 0.7)}/3")
    assert (found(10, 0.5), found(5, 0.5), found(5, 0.7)) == (3, 2, 1)
    scratch.check()


def test_anchor_explorer_follows_the_keyboard(scratch):
    from torchvision.models.detection._utils import Matcher
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.image_list import ImageList

    cell = scratch.cell("anchor_explorer(")
    wait_for_text(cell, "A = H'\u00b7W'\u00b7K = 8\u00b78\u00b76 = 384 anchors")
    press(control(cell, "stride s"), "End")  # 16 -> 32: a 4 x 4 feature map
    # torchvision's RPN: its anchors, labelled by its Matcher with low-quality matches
    anchors = AnchorGenerator(((32, 64),), ((0.5, 1.0, 2.0),))(
        ImageList(torch.zeros(1, 3, 128, 128), [(128, 128)]), [torch.zeros(1, 1, 4, 4)])[0]
    wait_for_text(cell, f"A = H'\u00b7W'\u00b7K = 4\u00b74\u00b76 = {len(anchors)} anchors")

    def counts(pos_iou):
        matched = Matcher(pos_iou, 0.3, allow_low_quality_matches=True)(
            box_iou(torch.tensor(GT), anchors))
        return (int((matched >= 0).sum()), int((matched == Matcher.BELOW_LOW_THRESHOLD).sum()),
                int((matched == Matcher.BETWEEN_THRESHOLDS).sum()))

    p, n, i = counts(0.7)
    wait_for_text(cell, f"positives {p}, negatives {n}, ignored {i} out of {len(anchors)}")
    press(control(cell, "pos IoU \u2265"), "ArrowLeft", 2)  # 0.70 -> 0.60
    p, n, i = counts(0.6)
    wait_for_text(cell, f"labels (pos IoU \u2265 0.60, neg IoU < 0.30): positives {p}, "
                        f"negatives {n}, ignored {i}")
    scratch.check()


def test_default_box_explorer_follows_the_keyboard(scratch):
    from torchvision.models.detection._utils import SSDMatcher
    from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
    from torchvision.models.detection.image_list import ImageList

    cell = scratch.cell("default_box_explorer(")
    # the course SSD's settings with torchvision's generator: 5 maps, scales 0.1 .. 0.9, ratio 2
    sizes = [16, 8, 4, 2, 1]
    boxes = DefaultBoxGenerator([[2]] * 5, scales=[0.1, 0.3, 0.5, 0.7, 0.9, 1.0])(
        ImageList(torch.zeros(1, 3, 128, 128), [(128, 128)]),
        [torch.zeros(1, 1, s, s) for s in sizes])[0]  # (1364, 4)

    def positives(threshold):
        return int((SSDMatcher(threshold)(box_iou(torch.tensor(GT), boxes)) >= 0).sum())

    wait_for_text(cell, f"D = {len(boxes)} default boxes on 5 feature maps; "
                        f"{positives(0.5)} positives")
    press(control(cell, "match IoU \u2265"), "ArrowRight", 2)  # 0.50 -> 0.60
    wait_for_text(cell, f"{positives(0.6)} positives (matched to one of 4 GT boxes at IoU "
                        "\u2265 0.60")
    press(control(cell, "feature map"), "End")  # the 1 x 1 map: its 4 boxes are the last ones
    first = sum(s * s * 4 for s in sizes[:-1])
    wait_for_text(cell, f"position (row 0, column 0) of the 1 \u00d7 1 map: boxes "
                        f"{first}..{first + 3}")
    scratch.check()


def test_yolo_grid_explorer_follows_the_keyboard(scratch):
    cell = scratch.cell("yolo_grid_explorer(")
    wait_for_text(cell, "= 7 \u00d7 7 \u00d7 (2\u00b75 + 3) = 7 \u00d7 7 \u00d7 13")
    press(control(cell, "grid S"), "ArrowRight")  # 7 -> 8
    # a loop over the GT centres: the cell of each, one object per cell
    cells = {(math.floor((y1 + y2) / 2 * 8 / 128), math.floor((x1 + x2) / 2 * 8 / 128))
             for x1, y1, x2, y2 in GT}
    wait_for_text(cell, "= 8 \u00d7 8 \u00d7 (2\u00b75 + 3) = 8 \u00d7 8 \u00d7 13")
    wait_for_text(cell, f"S\u00b7S\u00b7B = {8 * 8 * 2} boxes")
    wait_for_text(cell, f"responsible cells: {len(cells)} for {len(GT)} objects, "
                        f"{len(GT) - len(cells)} dropped")
    press(control(cell, "boxes B"), "ArrowRight")  # 2 -> 3
    wait_for_text(cell, f"= 8 \u00d7 8 \u00d7 (3\u00b75 + 3) = 8 \u00d7 8 \u00d7 {3 * 5 + 3}")
    scratch.check()


def test_segmentation_explorer_follows_the_keyboard(scratch):
    from course_lib.data.synthetic import SyntheticShapes

    cell = scratch.cell("segmentation_explorer(")
    wait_for_text(cell, "image 0, model conv")
    # the same untrained convolution and scenes here; the scores counted pixel by pixel
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 6, 1)
    data = SyntheticShapes(**SEGMENTATION_DATA)
    with torch.no_grad():
        preds = [model(data[i][0][None])[0].argmax(0).numpy() for i in range(4)]
    truths = [data[i][1]["semantic"].numpy() for i in range(4)]

    def scores(indices):  # pixel accuracy and mIoU over these images (classes in either map)
        pred = np.concatenate([preds[i].ravel() for i in indices])
        truth = np.concatenate([truths[i].ravel() for i in indices])
        ious = [((pred == c) & (truth == c)).sum() / ((pred == c) | (truth == c)).sum()
                for c in range(6) if ((pred == c) | (truth == c)).any()]
        return (pred == truth).mean(), np.mean(ious)

    (accuracy, miou), (all_accuracy, all_miou) = scores([1]), scores(range(4))
    press(control(cell, "image"), "ArrowRight")  # image 0 -> 1
    wait_for_text(cell, f"image 1, model conv: pixel accuracy {accuracy:.3f}, mIoU {miou:.3f} "
                        f"(over the 4 images: {all_accuracy:.3f} and {all_miou:.3f})")
    press(control(cell, "class"), "End")  # all classes -> the last one
    c, name = 5, data.classes[4]
    pred, truth = preds[1] == c, truths[1] == c
    tp, fp, fn = int((pred & truth).sum()), int((pred & ~truth).sum()), int((~pred & truth).sum())
    wait_for_text(cell, f"{name}: IoU = TP / (TP + FP + FN) = {tp} / ({tp} + {fp} + {fn})"
                  if tp + fp + fn else f"{name} is in neither the truth nor the prediction")
    scratch.check()


def test_instance_explorer_follows_the_keyboard(scratch):
    from course_lib.data.synthetic import SyntheticShapes

    cell = scratch.cell("instance_explorer(")
    data = SyntheticShapes(**INSTANCE_DATA)
    objects = [len(data[i][1]["labels"]) for i in range(2)]

    def kept(index, threshold):  # the oracle's scores 0.9 - 0.17 j at or above the threshold
        return sum(0.9 - 0.17 * j >= threshold for j in range(objects[index]))

    wait_for_text(cell, f"image 0: {kept(0, 0.5)} of {objects[0]} detections with score "
                        "\u2265 0.50")
    press(control(cell, "image"), "ArrowRight")  # image 0 -> 1
    wait_for_text(cell, f"image 1: {kept(1, 0.5)} of {objects[1]} detections with score "
                        "\u2265 0.50")
    wait_for_text(cell, "mask IoU 1.000 with GT #0")  # the oracle's best instance is GT #0
    press(control(cell, "score \u2265"), "ArrowRight", 2)  # 0.50 -> 0.60
    wait_for_text(cell, f"image 1: {kept(1, 0.6)} of {objects[1]} detections with score "
                        "\u2265 0.60")
    assert kept(1, 0.5) != kept(1, 0.6)
    scratch.check()
