"""Tests for course_lib.metrics (counts, PR curve, AP, matching, VOC mAP).

Oracles: the lecture's worked examples, cases worked by hand, loop implementations written
here (VOC devkit's AP, pycocotools' accumulate loop, exact-fraction greedy matching) and
pycocotools for mAP@0.5.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch

from course_lib.coco_format import pycocotools_evaluate
from course_lib.device import available_devices
from course_lib.metrics import (
    average_precision,
    f1_score,
    match_detections,
    mean_average_precision,
    precision_recall,
    precision_recall_curve,
)

DEVICES = available_devices()

# The lecture's dog example: 5 detections sorted by score, TP TP FP FP TP, 3 GT dogs.
DOG_SCORES = [0.99, 0.95, 0.90, 0.5, 0.10]
DOG_IS_TP = [True, True, False, False, True]
DOG_PRECISION = [1.0, 1.0, 2 / 3, 2 / 4, 3 / 5]
DOG_RECALL = [1 / 3, 2 / 3, 2 / 3, 2 / 3, 3 / 3]


# ------------------------------------------------------------------ precision / recall / F1


@pytest.mark.parametrize(
    ("tp", "fp", "fn", "expected"),
    [
        (3, 2, 0, (3 / 5, 1.0)),  # the dog example at the end of the list
        (3, 2, 1, (0.6, 0.75)),
        (0, 0, 0, (0.0, 0.0)),  # 0/0 -> 0
        (0, 4, 0, (0.0, 0.0)),
        (0, 0, 4, (0.0, 0.0)),
        (5, 0, 0, (1.0, 1.0)),
    ],
)
def test_precision_recall(tp, fp, fn, expected):
    assert precision_recall(tp, fp, fn) == pytest.approx(expected, abs=1e-15)


def test_precision_recall_accepts_tensor_counts():
    assert precision_recall(torch.tensor(3), torch.tensor(2), torch.tensor(1)) == (0.6, 0.75)


@pytest.mark.parametrize("bad", [(-1, 0, 0), (0, -2, 0), (0, 0, -3), (1.5, 0, 0)])
def test_precision_recall_rejects_bad_counts(bad):
    with pytest.raises(ValueError, match="non-negative integer"):
        precision_recall(*bad)


@pytest.mark.parametrize(
    ("p", "r", "expected"),
    [(0.0, 0.0, 0.0), (1.0, 1.0, 1.0), (0.6, 1.0, 0.75), (0.5, 0.0, 0.0), (0.25, 0.75, 0.375)],
)
def test_f1_score(p, r, expected):
    assert f1_score(p, r) == pytest.approx(expected, abs=1e-15)


@pytest.mark.parametrize(("p", "r"), [(1.5, 0.5), (0.5, -0.1)])
def test_f1_score_rejects_out_of_range(p, r):
    with pytest.raises(ValueError, match="must be in"):
        f1_score(p, r)


# ------------------------------------------------------------------ PR curve


@pytest.mark.parametrize("device", DEVICES)
def test_dog_example_pr_curve_and_ap(device):
    # Give the detections in a shuffled order: the curve ranks them by score.
    perm = [3, 0, 4, 2, 1]
    scores = torch.tensor([DOG_SCORES[i] for i in perm], device=device)
    is_tp = torch.tensor([DOG_IS_TP[i] for i in perm], device=device)
    precision, recall, thresholds = precision_recall_curve(scores, is_tp, num_gt=3)
    assert precision.device.type == recall.device.type == torch.device(device).type
    assert precision.dtype == recall.dtype == torch.float64
    torch.testing.assert_close(precision.cpu(), torch.tensor(DOG_PRECISION, dtype=torch.float64))
    torch.testing.assert_close(recall.cpu(), torch.tensor(DOG_RECALL, dtype=torch.float64))
    torch.testing.assert_close(thresholds.cpu(), torch.tensor(DOG_SCORES))
    assert precision[-1].item() == pytest.approx(3 / 5) and recall[-1].item() == 1.0
    # The lecture's "Dog AP = 0.86": 1/3 * 1 + 1/3 * 1 + 1/3 * 0.6 = 0.8667.
    assert average_precision(precision, recall) == pytest.approx(13 / 15, abs=1e-12)


def test_pr_curve_ties_keep_input_order():
    scores = torch.tensor([0.5, 0.9, 0.5, 0.5])
    is_tp = torch.tensor([False, True, True, False])
    precision, recall, thresholds = precision_recall_curve(scores, is_tp, num_gt=4)
    # ranked: 0.9 (TP), then the three 0.5 in input order: FP, TP, FP
    torch.testing.assert_close(precision, torch.tensor([1, 1 / 2, 2 / 3, 2 / 4],
                                                       dtype=torch.float64))
    torch.testing.assert_close(recall, torch.tensor([1 / 4, 1 / 4, 2 / 4, 2 / 4],
                                                    dtype=torch.float64))
    torch.testing.assert_close(thresholds, torch.tensor([0.9, 0.5, 0.5, 0.5]))


def test_pr_curve_empty_and_no_gt():
    precision, recall, thresholds = precision_recall_curve(torch.zeros(0), torch.zeros(0), 3)
    assert precision.shape == recall.shape == thresholds.shape == (0,)
    precision, recall, _ = precision_recall_curve(torch.tensor([0.3, 0.2]),
                                                  torch.tensor([False, False]), 0)
    assert recall.tolist() == [0.0, 0.0] and precision.tolist() == [0.0, 0.0]


def test_pr_curve_rejects_bad_input():
    with pytest.raises(ValueError, match="same length"):
        precision_recall_curve(torch.rand(3), torch.ones(2, dtype=torch.bool), 3)
    with pytest.raises(ValueError, match="true positives"):
        precision_recall_curve(torch.rand(3), torch.ones(3, dtype=torch.bool), 2)
    with pytest.raises(ValueError, match="num_gt"):
        precision_recall_curve(torch.rand(3), torch.ones(3, dtype=torch.bool), -1)


# ------------------------------------------------------------------ AP, hand cases


def test_dog_example_voc11_and_coco101():
    # voc11: recall levels 0..0.6 reach precision 1 (7 levels), 0.7..1.0 only 0.6 (4 levels).
    assert average_precision(DOG_PRECISION, DOG_RECALL, "voc11") == pytest.approx(
        (7 * 1.0 + 4 * 0.6) / 11, abs=1e-12)
    # coco101: levels 0.00..0.66 (67 of them) reach envelope 1, 0.67..1.00 (34) only 0.6.
    assert average_precision(DOG_PRECISION, DOG_RECALL, "coco101") == pytest.approx(
        (67 * 1.0 + 34 * 0.6) / 101, abs=1e-12)


def test_voc11_uses_exact_decimal_levels():
    # Recall exactly 0.3 reaches the level 0.3 (np.linspace would give 0.30000000000000004).
    assert average_precision([1.0], [0.3], "voc11") == pytest.approx(4 / 11, abs=1e-15)


def test_coco101_uses_pycocotools_levels():
    # 7 of 10 GT found at precision 1: recall 0.7, but pycocotools' level "0.70" is
    # np.linspace(0, 1, 101)[70] = 0.7000000000000001, so only the 70 levels 0.00..0.69 count.
    assert average_precision([1.0], [7 / 10], "coco101") == pytest.approx(70 / 101, abs=1e-15)
    assert average_precision([1.0], [0.71], "coco101") == pytest.approx(72 / 101, abs=1e-15)


@pytest.mark.parametrize("method", ["all", "voc11", "coco101"])
def test_ap_perfect_empty_and_zero(method):
    assert average_precision([1.0, 1.0], [0.5, 1.0], method) == pytest.approx(1.0, abs=1e-12)
    assert average_precision([], [], method) == 0.0
    assert average_precision(torch.zeros(3), torch.zeros(3), method) == 0.0
    assert isinstance(average_precision(torch.tensor([1.0]), torch.tensor([1.0]), method), float)


def test_all_point_envelope_uses_later_precision():
    # precision dips then rises: the envelope lifts the dip.
    precision, recall = [1.0, 0.5, 2 / 3], [1 / 4, 1 / 4, 2 / 4]
    assert average_precision(precision, recall) == pytest.approx(1 / 4 + 1 / 4 * 2 / 3)


def test_ap_rejects_bad_input():
    with pytest.raises(ValueError, match="method"):
        average_precision([1.0], [1.0], "voc12")
    with pytest.raises(ValueError, match="same shape"):
        average_precision([1.0, 0.5], [1.0])
    with pytest.raises(ValueError, match="recall values must be in"):
        average_precision([1.0], [1.5])
    with pytest.raises(ValueError, match="non-decreasing"):
        average_precision([1.0, 1.0], [0.5, 0.25])
    with pytest.raises(ValueError, match="1-D"):
        average_precision([[1.0]], [[1.0]])


# ------------------------------------------------------------------ AP vs loop oracles


def voc_all_point_oracle(precision, recall):
    """PASCAL VOC devkit (VOC2010+) AP, written with loops."""
    mrec = [0.0, *recall, 1.0]
    mpre = [0.0, *precision, 0.0]
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    return sum((mrec[i] - mrec[i - 1]) * mpre[i] for i in range(1, len(mrec))
               if mrec[i] != mrec[i - 1])


def voc11_oracle(precision, recall):
    total = 0.0
    for level in [i / 10 for i in range(11)]:
        reached = [p for p, r in zip(precision, recall, strict=True) if r >= level]
        total += max(reached) if reached else 0.0
    return total / 11


def coco101_oracle(precision, recall):
    """The loop of pycocotools' COCOeval.accumulate, for one curve."""
    pr, rc = list(precision), np.asarray(recall)
    for i in range(len(pr) - 1, 0, -1):
        if pr[i] > pr[i - 1]:
            pr[i - 1] = pr[i]
    q = [0.0] * 101
    inds = np.searchsorted(rc, np.linspace(0.0, 1.0, 101), side="left")
    try:
        for ri, pi in enumerate(inds):
            q[ri] = pr[pi]
    except IndexError:
        pass
    return float(np.mean(q))


def random_curve(rng):
    num_dets = int(rng.integers(1, 40))
    is_tp = rng.random(num_dets) < rng.random()
    num_gt = int(is_tp.sum() + rng.integers(0, 5)) or 1
    tp = np.cumsum(is_tp)
    precision = tp / np.arange(1, num_dets + 1)
    return precision.tolist(), (tp / num_gt).tolist()


@pytest.mark.parametrize(
    ("method", "oracle"),
    [("all", voc_all_point_oracle), ("voc11", voc11_oracle), ("coco101", coco101_oracle)],
)
def test_ap_matches_loop_oracle_on_random_curves(method, oracle):
    rng = np.random.default_rng(0)
    for _ in range(200):
        precision, recall = random_curve(rng)
        assert average_precision(precision, recall, method) == pytest.approx(
            oracle(precision, recall), abs=1e-12)


# ------------------------------------------------------------------ matching


def fraction_iou(a, b):
    """Exact IoU of two integer boxes, as a Fraction (no rounding, so ties are real ties)."""
    w = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return Fraction(inter, union)


def match_oracle(pred_boxes, pred_scores, gt_boxes, threshold):
    """Greedy matching with loops: best score first, best free GT (first on ties)."""
    order = sorted(range(len(pred_scores)), key=lambda i: -pred_scores[i])  # stable
    taken, is_tp, matched = set(), [False] * len(pred_scores), [-1] * len(pred_scores)
    for d in order:
        best, best_iou = -1, None
        for g in range(len(gt_boxes)):
            iou = fraction_iou(pred_boxes[d], gt_boxes[g])
            if g in taken or iou < threshold:
                continue
            if best_iou is None or iou > best_iou:
                best, best_iou = g, iou
        if best >= 0:
            taken.add(best)
            is_tp[d], matched[d] = True, best
    return is_tp, matched


def random_int_boxes(rng, n):
    xy = rng.integers(0, 12, (n, 2))
    return np.concatenate([xy, xy + rng.integers(1, 9, (n, 2))], axis=1).tolist()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_match_detections_matches_loop_oracle(device, dtype):
    # Small integer boxes: many exact IoU ties and IoUs exactly at the thresholds; scores
    # rounded to one decimal: many score ties.
    rng = np.random.default_rng(1)
    for _ in range(150):
        preds, gts = random_int_boxes(rng, int(rng.integers(0, 9))), random_int_boxes(
            rng, int(rng.integers(0, 7)))
        scores = np.round(rng.random(len(preds)), 1).tolist()
        threshold = [0.5, 0.25, Fraction(1, 3)][int(rng.integers(0, 3))]
        is_tp, matched = match_detections(
            torch.tensor(preds, dtype=dtype, device=device).reshape(-1, 4),
            torch.tensor(scores, dtype=dtype, device=device),
            torch.tensor(gts, dtype=dtype, device=device).reshape(-1, 4),
            iou_threshold=float(threshold),
        )
        expected_tp, expected_matched = match_oracle(preds, scores, gts, Fraction(threshold))
        assert is_tp.device.type == matched.device.type == torch.device(device).type
        assert is_tp.dtype == torch.bool and matched.dtype == torch.int64
        assert is_tp.tolist() == expected_tp
        assert matched.tolist() == expected_matched


@pytest.mark.parametrize("device", DEVICES)
def test_match_iou_exactly_at_threshold(device):
    gt = torch.tensor([[0.0, 0.0, 2.0, 1.0]], device=device)
    pred = torch.tensor([[0.0, 0.0, 1.0, 1.0]], device=device)  # IoU = 1/2 exactly
    score = torch.tensor([0.9], device=device)
    assert match_detections(pred, score, gt, 0.5)[0].tolist() == [True]  # >= (COCO)
    assert match_detections(pred, score, gt, 0.5 + 1e-6)[0].tolist() == [False]


def test_match_score_ties_and_best_iou():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 9.0]])
    preds = torch.tensor([[0.0, 0.0, 10.0, 9.0], [0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0]])
    scores = torch.tensor([0.5, 0.8, 0.8])
    is_tp, matched = match_detections(preds, scores, gt)
    # det 1 (first of the tied 0.8) takes GT 0 (IoU 1); det 2 takes GT 1 (IoU 0.9);
    # det 0 (lowest score) finds nothing free although it overlaps GT 1 perfectly.
    assert is_tp.tolist() == [False, True, True]
    assert matched.tolist() == [-1, 0, 1]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("num_dets", "num_gt"), [(0, 0), (0, 3), (3, 0)])
def test_match_empty(device, num_dets, num_gt):
    is_tp, matched = match_detections(torch.rand(num_dets, 4, device=device),
                                      torch.rand(num_dets, device=device),
                                      torch.rand(num_gt, 4, device=device))
    assert is_tp.shape == matched.shape == (num_dets,)
    assert is_tp.dtype == torch.bool and matched.dtype == torch.int64
    assert not is_tp.any() and (matched == -1).all()
    assert is_tp.device.type == torch.device(device).type


def test_match_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"pred_boxes must have shape \(N, 4\)"):
        match_detections(torch.rand(3, 5), torch.rand(3), torch.rand(2, 4))
    with pytest.raises(ValueError, match="gt_boxes"):
        match_detections(torch.rand(3, 4), torch.rand(3), torch.rand(2, 3))
    with pytest.raises(ValueError, match="pred_scores"):
        match_detections(torch.rand(3, 4), torch.rand(2), torch.rand(2, 4))


# ------------------------------------------------------------------ mAP


def grid_boxes(n, offset=0.0):
    """n disjoint 10x10 boxes on a row."""
    x = torch.arange(n, dtype=torch.float32) * 20 + offset
    return torch.stack([x, torch.zeros(n), x + 10, torch.full((n,), 10.0)], dim=1)


def lecture_map_example(device="cpu"):
    """Car AP 0.65 (13 of 20 GT found), cat 0.80 (4 of 5), dog 0.86 (43 of 50), over 2 images.

    Every found GT gets an exact copy as detection, ranked above one false positive per class.
    """
    preds, targets = [{"boxes": [], "scores": [], "labels": []} for _ in range(2)], []
    for _ in range(2):
        targets.append({"boxes": [], "labels": []})
    rows = 0
    for label, num_gt, num_found in [(1, 20, 13), (2, 5, 4), (3, 50, 43)]:
        for k in range(num_gt):
            image = k % 2  # alternate images
            box = grid_boxes(1, offset=20.0 * rows)[0]
            rows += 1
            targets[image]["boxes"].append(box)
            targets[image]["labels"].append(label)
            if k < num_found:
                preds[image]["boxes"].append(box)
                preds[image]["scores"].append(0.9 - 0.001 * k)
                preds[image]["labels"].append(label)
        preds[0]["boxes"].append(torch.tensor([0.0, 100.0, 10.0, 110.0]))  # a false positive
        preds[0]["scores"].append(0.01)
        preds[0]["labels"].append(label)
    stack = {"boxes": lambda v: torch.stack(v), "scores": torch.tensor, "labels": torch.tensor}
    preds = [{k: stack[k](v).to(device) for k, v in p.items()} for p in preds]
    targets = [{k: stack[k](v).to(device) for k, v in t.items()} for t in targets]
    return preds, targets


@pytest.mark.parametrize("device", DEVICES)
def test_lecture_map_example(device):
    preds, targets = lecture_map_example(device)
    result = mean_average_precision(preds, targets, iou_threshold=0.5)
    assert result["per_class"] == pytest.approx({1: 0.65, 2: 0.80, 3: 0.86}, abs=1e-12)
    assert result["map"] == pytest.approx(0.77, abs=1e-12)


def test_map_dog_example_from_boxes():
    gt = grid_boxes(3)
    fp = grid_boxes(2, offset=200.0)
    boxes = torch.cat([gt[:2], fp, gt[2:]])  # TP TP FP FP TP by score
    preds = [{"boxes": boxes, "scores": torch.tensor(DOG_SCORES), "labels": torch.full((5,), 7)}]
    targets = [{"boxes": gt, "labels": torch.full((3,), 7)}]
    result = mean_average_precision(preds, targets)
    assert result["per_class"] == pytest.approx({7: 13 / 15}, abs=1e-12)


def test_map_class_rules():
    box = grid_boxes(1)
    preds = [{"boxes": torch.cat([box, box]), "scores": torch.tensor([0.9, 0.8]),
              "labels": torch.tensor([1, 5])}]  # class 5 only predicted
    targets = [{"boxes": torch.cat([box, box]), "labels": torch.tensor([1, 2])}]  # 2 never found
    result = mean_average_precision(preds, targets)
    assert result["per_class"] == {1: 1.0, 2: 0.0}
    assert result["map"] == 0.5
    empty = mean_average_precision([{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0),
                                     "labels": torch.zeros(0, dtype=torch.int64)}],
                                   [{"boxes": torch.zeros(0, 4),
                                     "labels": torch.zeros(0, dtype=torch.int64)}])
    assert empty["per_class"] == {} and np.isnan(empty["map"])


def test_map_rejects_bad_input():
    with pytest.raises(ValueError, match="one entry per image"):
        mean_average_precision([], [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0)}])
    with pytest.raises(ValueError, match="method"):
        mean_average_precision([], [], method="area")


def test_map_coco101_equals_pycocotools_ap50():
    # No crowds, < 100 detections per image and class, float boxes (no IoU ties): then
    # pycocotools' AP50 is the mean over classes of the 101-point AP at IoU >= 0.5.
    rng = np.random.default_rng(3)
    for _ in range(5):
        preds, targets = [], []
        for _ in range(8):
            num_gt, num_fp = int(rng.integers(0, 6)), int(rng.integers(0, 4))
            xy = rng.uniform(0, 100, (num_gt, 2))
            wh = rng.uniform(5, 60, (num_gt, 2))
            gt = np.concatenate([xy, xy + wh], axis=1)
            labels = rng.integers(1, 4, num_gt)
            # detections: each GT moved and rescaled a little (never degenerate), plus FPs
            det_xy = xy + rng.normal(0, 3, xy.shape)
            det_wh = wh * np.exp(rng.normal(0, 0.2, wh.shape))
            fp_xy = rng.uniform(0, 100, (num_fp, 2))
            dets = np.concatenate([np.concatenate([det_xy, det_xy + det_wh], axis=1),
                                   np.concatenate([fp_xy, fp_xy + 20], axis=1)])
            det_labels = np.concatenate([labels, rng.integers(1, 4, num_fp)])
            targets.append({"boxes": torch.tensor(gt, dtype=torch.float64).reshape(-1, 4),
                            "labels": torch.tensor(labels)})
            preds.append({"boxes": torch.tensor(dets, dtype=torch.float64).reshape(-1, 4),
                          "scores": torch.tensor(rng.random(len(dets))),
                          "labels": torch.tensor(det_labels)})
        ours = mean_average_precision(preds, targets, 0.5, method="coco101")["map"]
        assert ours == pytest.approx(pycocotools_evaluate(targets, preds)["AP50"], abs=1e-9)


def test_match_two_empty_boxes_do_not_match():
    # Two identical zero-area boxes have IoU nan (0 / 0): no match.
    box = torch.tensor([[5.0, 5.0, 5.0, 5.0]])
    is_tp, matched = match_detections(box, torch.tensor([0.9]), box)
    assert is_tp.tolist() == [False] and matched.tolist() == [-1]
