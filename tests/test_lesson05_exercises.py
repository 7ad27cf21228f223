"""The lesson 05 case tables: hand-worked answers agree with the reference, and the tables
catch the classic mistakes (each mutant below must fail at least one visible case)."""

import numpy as np
import pytest
import torch

from course_lib.exercises import load_lesson
from course_lib.exercises.core import check
from course_lib.exercises.lesson05 import LECTURE_DOG_BOXES, LECTURE_DOG_SCORES

EXERCISES = load_lesson("05")


def test_names_match_references():
    assert set(EXERCISES) == {"box_iou", "nms", "soft_nms", "average_precision"}


def test_lecture_dog_boxes_have_the_lecture_ious():
    iou = EXERCISES["box_iou"].reference(LECTURE_DOG_BOXES, LECTURE_DOG_BOXES)
    assert iou[0, 1] == pytest.approx(0.78, abs=0.005)  # blue / orange
    assert iou[0, 2] == pytest.approx(0.05, abs=0.005)  # blue / purple
    assert iou[0, 3] == pytest.approx(0.07, abs=0.005)  # blue / yellow
    assert iou[2, 3] == pytest.approx(0.74, abs=0.005)  # purple / yellow
    assert LECTURE_DOG_SCORES.argsort(descending=True).tolist() == [0, 1, 2, 3]


# --- mutants: plausible wrong answers that the visible cases must catch -----------------------

def iou_without_clamp(boxes1, boxes2):
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    lt = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])
    rb = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = rb - lt
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area1[:, None] + area2[None, :] - inter)


def iou_diagonal_only(boxes1, boxes2):
    return EXERCISES["box_iou"].reference(boxes1, boxes2).diagonal()[:, None]


def make_nms(greater_equal=False, stable=True, suppressed_can_suppress=False):
    iou_fn = EXERCISES["box_iou"].reference

    def nms(boxes, scores, iou_threshold):
        order = torch.sort(scores, descending=True, stable=stable).indices
        if not stable:
            order = torch.argsort(-scores - 1e-3 * torch.arange(len(scores)))  # ties: high index
        keep, removed = [], set()
        for i in order.tolist():
            if i in removed and not suppressed_can_suppress:
                continue
            if i not in removed:
                keep.append(i)
            for j in order.tolist():
                iou = float(iou_fn(boxes[i:i + 1], boxes[j:j + 1]))
                if j != i and (iou >= iou_threshold if greater_equal else iou > iou_threshold):
                    if scores[j] <= scores[i] and j not in keep:
                        removed.add(j)
        return torch.tensor(keep, dtype=torch.int64)
    return nms


def soft_nms_never_reselects(boxes, scores, iou_threshold=0.3, sigma=0.5, method="linear",
                             score_threshold=0.001):
    # decays the scores but keeps the initial ranking: wrong when a decay changes the order
    keep, new = EXERCISES["soft_nms"].reference(boxes, scores, iou_threshold, sigma, method,
                                                score_threshold)
    order = torch.argsort(scores[keep], descending=True, stable=True)
    return keep[order], new[order]


def ap_without_envelope(precision, recall, method="all"):
    if precision.numel() == 0:
        return 0.0
    steps = torch.diff(recall, prepend=recall.new_zeros(1))
    return float((steps * precision).sum())


@pytest.mark.parametrize("name, mutant", [
    ("box_iou", iou_without_clamp),
    ("box_iou", iou_diagonal_only),
    ("nms", make_nms(greater_equal=True)),
    ("nms", make_nms(stable=False)),
    ("nms", make_nms(suppressed_can_suppress=True)),
    ("soft_nms", soft_nms_never_reselects),
    ("average_precision", ap_without_envelope),
])
def test_visible_cases_catch_mutant(name, mutant):
    mutant.__name__ = name
    assert not check(mutant, EXERCISES[name], device="cpu", verbose=False)


def test_hidden_nms_cases_stay_clear_of_the_threshold():
    iou_fn = EXERCISES["box_iou"].reference
    for seed in range(200):
        case = EXERCISES["nms"].random_case(np.random.default_rng(seed))
        ious = iou_fn(case["boxes"], case["boxes"]).double()
        assert not ((ious - case["iou_threshold"]).abs() < 1e-4).any()
