"""Lesson 05 exercises: IoU, NMS, soft-NMS and average precision.

Each table starts with the lecture's worked examples, then the edge cases that separate a
correct answer from an almost-correct one (empty input, ties, IoU exactly at the threshold).
The same tables drive the notebook's ``check(...)`` cells, the tests of the reference and the
grader; the grader adds fresh random cases drawn by ``random_case``.
"""

from __future__ import annotations

import numpy as np
import torch

from course_lib import boxes as _boxes
from course_lib import metrics as _metrics
from course_lib import nms as _nms
from course_lib.data import lecture_examples as lecture
from course_lib.exercises.core import Case, Exercise

__all__ = ["EXERCISES", "LECTURE_DOG_BOXES", "LECTURE_DOG_SCORES"]


def _t(rows, dtype=torch.float32) -> torch.Tensor:
    return torch.tensor(rows, dtype=dtype)


def _random_boxes(rng: np.random.Generator, n: int, canvas: float = 100.0,
                  dtype=torch.float32) -> torch.Tensor:
    """``n`` random xyxy boxes inside a ``canvas`` square, some of them duplicated."""
    xy = rng.uniform(0, canvas * 0.8, size=(n, 2))
    wh = rng.uniform(2, canvas * 0.5, size=(n, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1).round(1)
    if n >= 2 and rng.random() < 0.5:
        boxes[-1] = boxes[0]  # an exact duplicate: IoU 1
    return torch.tensor(boxes, dtype=dtype)


# The lecture's NMS example (two dogs): blue/orange overlap with IoU 0.78, purple/yellow with
# 0.74, blue/purple 0.05 and blue/yellow 0.07.
LECTURE_DOG_BOXES = _t(lecture.DOG_BOXES)
LECTURE_DOG_SCORES = _t(lecture.DOG_SCORES)

# ---------------------------------------------------------------------------------------------
# box_iou
# ---------------------------------------------------------------------------------------------

BOX_IOU = Exercise(
    name="box_iou",
    reference=_boxes.box_iou,
    forbidden=("torchvision.ops.box_iou", "torchvision.ops.boxes.box_iou"),
    cases=(
        Case("half-shifted squares: 25 / 175",
             {"boxes1": _t([[0, 0, 10, 10]]), "boxes2": _t([[5, 5, 15, 15]])},
             expected=_t([[25 / 175]])),
        Case("identical boxes have IoU 1",
             {"boxes1": _t([[2, 3, 12, 9]]), "boxes2": _t([[2, 3, 12, 9]])},
             expected=_t([[1.0]])),
        Case("a box inside another: 16 / 100",
             {"boxes1": _t([[0, 0, 10, 10]]), "boxes2": _t([[2, 2, 6, 6]])},
             expected=_t([[0.16]])),
        Case("disjoint boxes have IoU 0",
             {"boxes1": _t([[0, 0, 10, 10]]), "boxes2": _t([[20, 20, 30, 30]])},
             expected=_t([[0.0]]),
             note="the intersection width and height must be clamped at 0"),
        Case("touching edges have IoU 0",
             {"boxes1": _t([[0, 0, 10, 10]]), "boxes2": _t([[10, 0, 20, 10]])},
             expected=_t([[0.0]])),
        Case("the lecture's dog boxes: 4 x 4 matrix",
             {"boxes1": LECTURE_DOG_BOXES, "boxes2": LECTURE_DOG_BOXES}),
        Case("2 x 3 boxes give a 2 x 3 matrix",
             {"boxes1": _t([[0, 0, 4, 4], [1, 1, 3, 5]]),
              "boxes2": _t([[0, 0, 2, 2], [2, 2, 6, 6], [0, 0, 4, 4]])},
             note="every pair (i, j): use broadcasting, (N, 1, 2) against (1, M, 2)"),
        Case("a zero-width box has IoU 0",
             {"boxes1": _t([[5, 0, 5, 10]]), "boxes2": _t([[0, 0, 10, 10]])},
             expected=_t([[0.0]])),
        Case("no boxes in boxes1 gives shape (0, M)",
             {"boxes1": torch.zeros(0, 4), "boxes2": _t([[0, 0, 1, 1], [0, 0, 2, 2]])},
             note="empty input must give an empty (0, M) result, not an error"),
        Case("float64 stays float64",
             {"boxes1": _t([[0, 0, 3, 3]], torch.float64),
              "boxes2": _t([[1, 1, 4, 4]], torch.float64)},
             expected=_t([[4 / 14]], torch.float64)),
    ),
    random_case=lambda rng: {
        "boxes1": _random_boxes(rng, int(rng.integers(0, 7))),
        "boxes2": _random_boxes(rng, int(rng.integers(1, 7))),
    },
    atol=1e-6,
    hint="IoU = intersection / (area1 + area2 - intersection); clamp widths and heights at 0.",
)

# ---------------------------------------------------------------------------------------------
# nms
# ---------------------------------------------------------------------------------------------


def _random_nms_case(rng: np.random.Generator) -> dict:
    n = int(rng.integers(0, 12))
    centres = rng.uniform(10, 90, size=(max(1, n // 3), 2))
    pick = centres[rng.integers(0, len(centres), size=n)]
    size = rng.uniform(8, 30, size=(n, 1))
    jitter = rng.normal(0, 3, size=(n, 4))
    boxes = np.concatenate([pick - size, pick + size], axis=1) + jitter
    boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
    scores = rng.uniform(0, 1, size=n).round(1)  # rounded: ties happen
    boxes = torch.tensor(boxes.round(1), dtype=torch.float32)
    # Hidden cases stay clear of IoU == threshold: there, float32 and float64 comparisons can
    # disagree (the visible cases test the exact-threshold rule on a value exact in both).
    ious = _boxes.box_iou(boxes, boxes).double()
    threshold = float(rng.choice([0.3, 0.5, 0.7]))
    while bool(((ious - threshold).abs() < 1e-4).any()):
        threshold = round(threshold + 0.01, 2)
    return {"boxes": boxes, "scores": torch.tensor(scores, dtype=torch.float32),
            "iou_threshold": threshold}


NMS = Exercise(
    name="nms",
    reference=_nms.nms,
    forbidden=("course_lib.nms.batched_nms", "torchvision.ops.nms", "torchvision.ops.boxes.nms",
               "torchvision.ops.batched_nms", "torchvision.ops.boxes.batched_nms",
               "torch.ops.torchvision.nms"),
    cases=(
        Case("the lecture's two dogs, threshold 0.7: keep blue and purple",
             {"boxes": LECTURE_DOG_BOXES, "scores": LECTURE_DOG_SCORES, "iou_threshold": 0.7},
             expected=torch.tensor([0, 2])),
        Case("a lower threshold does not change the dogs",
             {"boxes": LECTURE_DOG_BOXES, "scores": LECTURE_DOG_SCORES, "iou_threshold": 0.3},
             expected=torch.tensor([0, 2])),
        Case("a threshold above every overlap keeps all four, best first",
             {"boxes": LECTURE_DOG_BOXES, "scores": LECTURE_DOG_SCORES, "iou_threshold": 0.8},
             expected=torch.tensor([0, 1, 2, 3])),
        Case("the result is sorted by score, not by index",
             {"boxes": _t([[0, 0, 10, 10], [50, 50, 60, 60], [100, 0, 110, 10]]),
              "scores": _t([0.2, 0.9, 0.5]), "iou_threshold": 0.5},
             expected=torch.tensor([1, 2, 0])),
        Case("IoU exactly at the threshold is kept (suppress only when IoU > threshold)",
             {"boxes": _t([[0, 0, 10, 10], [0, 0, 10, 5]]), "scores": _t([0.9, 0.8]),
              "iou_threshold": 0.5},
             expected=torch.tensor([0, 1]),
             note="the two boxes have IoU 50 / 100 = 0.5 exactly"),
        Case("equal scores: the lower index wins",
             {"boxes": _t([[0, 0, 10, 10], [1, 1, 11, 11], [40, 40, 50, 50]]),
              "scores": _t([0.5, 0.5, 0.5]), "iou_threshold": 0.5},
             expected=torch.tensor([0, 2]),
             note="sort with a stable sort (torch.sort(..., stable=True)) like torchvision"),
        Case("a suppressed box cannot suppress others",
             {"boxes": _t([[0, 0, 10, 10], [3, 0, 13, 10], [6, 0, 16, 10]]),
              "scores": _t([0.9, 0.8, 0.7]), "iou_threshold": 0.5},
             expected=torch.tensor([0, 2]),
             note="box 1 is removed by box 0, so box 2 (IoU 0.25 with box 0) survives"),
        Case("a single box is kept",
             {"boxes": _t([[1, 2, 3, 4]]), "scores": _t([0.3]), "iou_threshold": 0.5},
             expected=torch.tensor([0])),
        Case("no boxes give an empty int64 tensor",
             {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "iou_threshold": 0.5},
             expected=torch.zeros(0, dtype=torch.int64)),
    ),
    random_case=_random_nms_case,
    exact=True,
    hint="repeat: take the best remaining box, keep it, drop the others with IoU > threshold.",
)

# ---------------------------------------------------------------------------------------------
# soft_nms
# ---------------------------------------------------------------------------------------------


def _random_soft_nms_case(rng: np.random.Generator) -> dict:
    case = _random_nms_case(rng)
    case["scores"] = case["scores"] * 0.9 + torch.tensor(rng.uniform(0, 0.09, size=len(
        case["scores"])), dtype=torch.float32)  # distinct scores: no ties in the decayed ranking
    return {"boxes": case["boxes"], "scores": case["scores"],
            "iou_threshold": 0.3, "sigma": 0.5,
            "method": str(rng.choice(["linear", "gaussian"])), "score_threshold": 0.001}


_THREE = _t([[0, 0, 10, 10], [1, 0, 11, 10], [30, 30, 40, 40]])

SOFT_NMS = Exercise(
    name="soft_nms",
    reference=_nms.soft_nms,
    cases=(
        Case("linear: the overlapping dog box decays instead of vanishing",
             {"boxes": LECTURE_DOG_BOXES, "scores": LECTURE_DOG_SCORES, "iou_threshold": 0.3,
              "sigma": 0.5, "method": "linear", "score_threshold": 0.001}),
        Case("gaussian: every box decays by exp(-IoU^2 / sigma)",
             {"boxes": LECTURE_DOG_BOXES, "scores": LECTURE_DOG_SCORES, "iou_threshold": 0.3,
              "sigma": 0.5, "method": "gaussian", "score_threshold": 0.001}),
        Case("linear by hand: IoU 90/110, score 0.8 -> 0.8 * (1 - 9/11)",
             {"boxes": _THREE, "scores": _t([0.9, 0.8, 0.7]), "iou_threshold": 0.3,
              "sigma": 0.5, "method": "linear", "score_threshold": 0.001},
             expected=(torch.tensor([0, 2, 1]), _t([0.9, 0.7, 0.8 * (1 - 90 / 110)]))),
        Case("a decayed score changes the order of selection",
             {"boxes": _THREE, "scores": _t([0.9, 0.85, 0.5]), "iou_threshold": 0.3,
              "sigma": 0.5, "method": "gaussian", "score_threshold": 0.001},
             note="after each pick, choose the highest *current* score"),
        Case("boxes below score_threshold are dropped",
             {"boxes": _THREE, "scores": _t([0.9, 0.8, 0.7]), "iou_threshold": 0.3,
              "sigma": 0.5, "method": "linear", "score_threshold": 0.2},
             expected=(torch.tensor([0, 2]), _t([0.9, 0.7]))),
        Case("no boxes give empty results",
             {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "iou_threshold": 0.3,
              "sigma": 0.5, "method": "linear", "score_threshold": 0.001},
             expected=(torch.zeros(0, dtype=torch.int64), torch.zeros(0))),
    ),
    random_case=_random_soft_nms_case,
    atol=1e-5,
    hint="linear: s *= (1 - IoU) when IoU >= iou_threshold; gaussian: s *= exp(-IoU**2 / sigma).",
)

# ---------------------------------------------------------------------------------------------
# average_precision
# ---------------------------------------------------------------------------------------------


def _curve(is_tp: list[bool], num_gt: int) -> dict:
    tp = np.cumsum(is_tp)
    fp = np.cumsum(np.logical_not(is_tp))
    return {"precision": torch.tensor(tp / np.maximum(tp + fp, 1), dtype=torch.float64),
            "recall": torch.tensor(tp / num_gt, dtype=torch.float64)}


def _random_ap_case(rng: np.random.Generator) -> dict:
    num_det = int(rng.integers(1, 15))
    is_tp = list(rng.random(num_det) < 0.6)
    num_gt = max(1, sum(is_tp) + int(rng.integers(0, 4)))
    return {**_curve(is_tp, num_gt), "method": str(rng.choice(["all", "voc11", "coco101"]))}


# The lecture's dog example: five detections ranked by score, TP TP FP FP TP, three dogs.
_DOG = _curve(list(lecture.DOG_PR_IS_TP), lecture.DOG_PR_NUM_GT)

AVERAGE_PRECISION = Exercise(
    name="average_precision",
    reference=_metrics.average_precision,
    forbidden=("pycocotools",),
    cases=(
        Case("the lecture's dog example: 1/3 + 1/3 + 1/3 * 3/5 = 0.8667",
             {**_DOG, "method": "all"}, expected=1 / 3 + 1 / 3 + 0.6 / 3),
        Case("perfect detector: AP 1",
             {**_curve([True, True, True], 3), "method": "all"}, expected=1.0),
        Case("half the objects found, no false positive: AP 0.5",
             {**_curve([True, True], 4), "method": "all"}, expected=0.5),
        Case("a dip in precision is filled by the envelope",
             {**_curve([True, False, True], 2), "method": "all"}, expected=0.5 + 0.5 * 2 / 3,
             note="use the interpolated precision: the max precision at any higher recall"),
        Case("first detection wrong: precision starts at 0",
             {**_curve([False, True], 1), "method": "all"}, expected=0.5),
        Case("VOC 11-point on the dog example",
             {**_DOG, "method": "voc11"}),
        Case("VOC 11-point: a recall of exactly 0.3 reaches the level 0.3",
             {**_curve([True] * 3, 10), "method": "voc11"}, expected=4 / 11,
             note="the VOC levels are the exact decimals k / 10: recall 3/10 reaches 0, 0.1, "
                  "0.2 and 0.3 (4 of 11 levels). np.linspace(0, 1, 11) gives "
                  "0.30000000000000004 there, which 3/10 falls just short of (3/11)"),
        Case("COCO 101-point on the dog example",
             {**_DOG, "method": "coco101"}),
        Case("COCO 101-point: a recall of exactly 0.7 does not reach pycocotools' level 0.70",
             {**_curve([True] * 7, 10), "method": "coco101"}, expected=70 / 101,
             note="pycocotools' recall levels are np.linspace(0, 1, 101), whose level 70 is "
                  "0.7000000000000001: recall 7/10 falls just short of it, so 70 of the 101 "
                  "levels are reached. torch.linspace gives exactly 0.7 there (71/101): take "
                  "the levels from np.linspace, as pycocotools does"),
        Case("no detections: AP 0",
             {"precision": torch.zeros(0, dtype=torch.float64),
              "recall": torch.zeros(0, dtype=torch.float64), "method": "all"}, expected=0.0),
    ),
    random_case=_random_ap_case,
    atol=1e-9,
    hint="make precision monotone from the right, then sum (recall step) x precision.",
)

EXERCISES: dict[str, Exercise] = {
    ex.name: ex for ex in (BOX_IOU, NMS, SOFT_NMS, AVERAGE_PRECISION)
}
