"""Tests for course_lib.metrics.coco_evaluate and course_lib.coco_format.

The oracle is pycocotools itself (``coco_format.pycocotools_evaluate``): the 12 numbers must
agree to 1e-9 on many small random datasets built to hit every rule of COCOeval (crowds, area
boundaries, maxDets, score ties, IoU ties, empty images, ...), plus a few hand-worked cases.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from course_lib.coco_format import (
    COCO_STAT_NAMES,
    pycocotools_evaluate,
    to_coco_dt,
    to_coco_gt,
)
from course_lib.device import available_devices
from course_lib.metrics import COCO_IOU_THRESHOLDS, coco_evaluate

NUM_CLASSES = 4
PRED_ONLY_CLASS = NUM_CLASSES + 3  # a label that never occurs in the targets

# Box sizes (w, h) around the COCO area boundaries 32^2 = 1024 and 96^2 = 9216.
BOUNDARY_SIZES = [(32, 32), (16, 64), (31, 33), (33, 31), (32, 33), (96, 96), (48, 192),
                  (95, 97), (97, 95), (96, 97), (8, 8), (200, 150)]


def random_boxes(rng, n, integer):
    """n boxes: random sizes, or sizes on the area boundaries; integer or float corners."""
    xy = rng.uniform(0, 300, (n, 2))
    wh = np.exp(rng.uniform(np.log(4), np.log(250), (n, 2)))
    on_boundary = rng.random(n) < 0.3
    picks = rng.integers(0, len(BOUNDARY_SIZES), n)
    wh[on_boundary] = np.array(BOUNDARY_SIZES, dtype=float)[picks[on_boundary]]
    if integer:
        xy, wh = np.round(xy), np.maximum(np.round(wh), 1)
    return np.concatenate([xy, xy + wh], axis=1)


def random_dataset(seed, num_images=10):
    """Small random targets/preds that exercise the rules of COCOeval."""
    rng = np.random.default_rng(seed)
    integer = bool(rng.random() < 0.5)  # integer boxes: exact IoU ties / thresholds
    dtype = torch.float32 if rng.random() < 0.5 else torch.float64
    targets, preds = [], []
    for _ in range(num_images):
        kind = rng.choice(["both", "both", "both", "empty", "gt_only", "dt_only"])
        num_gt = 0 if kind in ("empty", "dt_only") else int(rng.integers(1, 7))
        gt_boxes = random_boxes(rng, num_gt, integer)
        gt_labels = rng.integers(1, NUM_CLASSES + 1, num_gt)
        target = {"boxes": torch.tensor(gt_boxes, dtype=dtype).reshape(-1, 4),
                  "labels": torch.tensor(gt_labels, dtype=torch.int64)}
        if rng.random() < 0.4:  # crowd regions: big boxes
            crowd = rng.random(num_gt) < 0.3
            target["boxes"][torch.from_numpy(crowd), 2:] += 100
            gt_boxes = target["boxes"].double().numpy()
            target["iscrowd"] = torch.tensor(crowd if rng.random() < 0.5 else crowd.astype(int))
        if rng.random() < 0.3:  # an "area" field that differs from w * h
            w, h = gt_boxes[:, 2] - gt_boxes[:, 0], gt_boxes[:, 3] - gt_boxes[:, 1]
            factor = rng.choice([0.5, 1.0, 3.0, 40.0], num_gt)
            area = w * h * factor
            area[rng.random(num_gt) < 0.3] = rng.choice([1024.0, 9216.0])  # exactly on a boundary
            target["area"] = torch.tensor(area, dtype=dtype)
        targets.append(target)

        det_boxes, det_labels = [np.zeros((0, 4))], [np.zeros(0, dtype=np.int64)]
        if kind in ("both", "dt_only"):
            if num_gt:  # jittered copies of the GT (sometimes several per GT, exact copies)
                copies = rng.integers(0, 3, num_gt)
                src = np.repeat(np.arange(num_gt), copies)
                scale = np.repeat(gt_boxes[src, 2:] - gt_boxes[src, :2], 2, axis=0).reshape(-1, 4)
                jitter = rng.normal(0, rng.choice([0.0, 0.05, 0.15]), (len(src), 4)) * scale
                jitter = np.round(jitter) if integer else jitter
                det_boxes.append(gt_boxes[src] + jitter)
                swap = rng.random(len(src)) < 0.1
                det_labels.append(np.where(swap, rng.integers(1, NUM_CLASSES + 1, len(src)),
                                           gt_labels[src]))
            num_fp = int(rng.integers(0, 5))
            det_boxes.append(random_boxes(rng, num_fp, integer))
            det_labels.append(np.where(rng.random(num_fp) < 0.2, PRED_ONLY_CLASS,
                                       rng.integers(1, NUM_CLASSES + 1, num_fp)))
            if rng.random() < 0.1:  # more than 100 detections of one class in one image
                many = 100 + int(rng.integers(1, 30))
                det_boxes.append(random_boxes(rng, many, integer))
                det_labels.append(np.full(many, 1))
        det_boxes, det_labels = np.concatenate(det_boxes), np.concatenate(det_labels)
        scores = rng.random(len(det_boxes))
        if rng.random() < 0.5:
            scores = np.round(scores, 1)  # score ties, inside an image and across images
        preds.append({"boxes": torch.tensor(det_boxes, dtype=dtype).reshape(-1, 4),
                      "labels": torch.tensor(det_labels, dtype=torch.int64),
                      "scores": torch.tensor(scores, dtype=dtype)})
    return targets, preds


def assert_same_stats(ours, ref, tol=1e-9):
    assert list(ours) == list(COCO_STAT_NAMES)
    worst = max(abs(ours[k] - ref[k]) for k in COCO_STAT_NAMES)
    assert worst <= tol, "\n".join(f"{k}: ours {ours[k]!r} pycocotools {ref[k]!r}"
                                   for k in COCO_STAT_NAMES)


def empty_pred(num=0):
    return {"boxes": torch.zeros(num, 4), "labels": torch.zeros(num, dtype=torch.int64),
            "scores": torch.zeros(num)}


# ------------------------------------------------------------------ against pycocotools


@pytest.mark.parametrize("seed", range(40))
def test_matches_pycocotools_on_random_data(seed):
    targets, preds = random_dataset(seed)
    assert_same_stats(coco_evaluate(targets, preds), pycocotools_evaluate(targets, preds))


def test_random_data_hits_the_interesting_cases():
    """Guard for the generator above: the 40 datasets do contain every special case."""
    seen = dict.fromkeys(["crowd", "area", "over100", "pred_only", "empty_image", "gt_only",
                          "dt_only", "score_tie", "boundary_area"], False)
    for seed in range(40):
        targets, preds = random_dataset(seed)
        for t, p in zip(targets, preds, strict=True):
            seen["crowd"] |= bool("iscrowd" in t and t["iscrowd"].any())
            seen["area"] |= "area" in t
            seen["over100"] |= bool((p["labels"] == 1).sum() > 100)
            seen["pred_only"] |= bool((p["labels"] == PRED_ONLY_CLASS).any())
            seen["empty_image"] |= len(t["boxes"]) == 0 and len(p["boxes"]) == 0
            seen["gt_only"] |= len(t["boxes"]) > 0 and len(p["boxes"]) == 0
            seen["dt_only"] |= len(t["boxes"]) == 0 and len(p["boxes"]) > 0
            seen["score_tie"] |= len(p["scores"].unique()) < len(p["scores"])
            wh = t["boxes"][:, 2:] - t["boxes"][:, :2]
            seen["boundary_area"] |= bool(torch.isin(wh.prod(1), torch.tensor(
                [1024.0, 9216.0], dtype=wh.dtype)).any())
    assert all(seen.values()), seen


def test_all_empty_predictions():
    targets, preds = random_dataset(7)
    preds = [empty_pred() for _ in preds]
    ours, ref = coco_evaluate(targets, preds), pycocotools_evaluate(targets, preds)
    assert_same_stats(ours, ref)
    assert set(ours.values()) <= {0.0, -1.0} and ours["AP"] == 0.0


def test_no_ground_truth_gives_minus_one():
    targets = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}] * 3
    preds = [empty_pred(), random_dataset(1)[1][0], empty_pred()]
    ours = coco_evaluate(targets, preds)
    assert_same_stats(ours, pycocotools_evaluate(targets, preds))
    assert set(ours.values()) == {-1.0}
    assert set(coco_evaluate([], []).values()) == {-1.0}


def test_max_dets_per_image_and_class():
    # 150 detections of class 1 in one image, the true one ranked 120th: it is cut by maxDets.
    gt = torch.tensor([[10.0, 10.0, 60.0, 60.0]])
    boxes = torch.tensor([[200.0, 200.0, 230.0, 230.0]]).repeat(150, 1)
    scores = torch.linspace(1.0, 0.01, 150)
    boxes[119] = gt[0]
    targets = [{"boxes": gt, "labels": torch.tensor([1])}]
    preds = [{"boxes": boxes, "labels": torch.ones(150, dtype=torch.int64), "scores": scores}]
    ours = coco_evaluate(targets, preds)
    assert_same_stats(ours, pycocotools_evaluate(targets, preds))
    assert ours["AR100"] == 0.0
    boxes[99] = gt[0]  # now the 100th: found
    ours = coco_evaluate(targets, preds)
    assert_same_stats(ours, pycocotools_evaluate(targets, preds))
    assert ours["AR100"] == 1.0 and ours["AR10"] == 0.0


def test_crowd_region_absorbs_detections():
    # One regular GT, found; three detections inside a crowd region: ignored, not FPs.
    targets = [{"boxes": torch.tensor([[0.0, 0.0, 20.0, 20.0], [100.0, 100.0, 300.0, 300.0]]),
                "labels": torch.tensor([1, 1]), "iscrowd": torch.tensor([0, 1])}]
    preds = [{"boxes": torch.tensor([[110.0, 110.0, 130.0, 130.0], [0.0, 0.0, 20.0, 20.0],
                                     [150.0, 150.0, 160.0, 160.0], [200.0, 200.0, 290.0, 250.0]]),
              "labels": torch.tensor([1, 1, 1, 1]), "scores": torch.tensor([0.9, 0.8, 0.7, 0.6])}]
    ours = coco_evaluate(targets, preds)
    assert_same_stats(ours, pycocotools_evaluate(targets, preds))
    # (pycocotools divides by tp + fp + eps, so "1" is 1 - 2e-16)
    assert ours["AP"] == pytest.approx(1.0) and ours["AR1"] == 0.0 and ours["AR10"] == 1.0
    targets[0]["iscrowd"] = torch.tensor([0, 0])  # as a regular GT it takes one, the rest FP
    assert coco_evaluate(targets, preds)["AP"] < 1.0


def test_equal_iou_goes_to_the_later_gt():
    # The first detection has IoU 0.6 with both GT; pycocotools gives it the LATER one, so the
    # second detection (a copy of that GT) is left without a match at IoU <= 0.6.
    targets = [{"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 0.0, 15.0, 10.0]]),
                "labels": torch.tensor([1, 1])}]
    preds = [{"boxes": torch.tensor([[2.5, 0.0, 12.5, 10.0], [5.0, 0.0, 15.0, 10.0]]),
              "labels": torch.tensor([1, 1]), "scores": torch.tensor([0.9, 0.8])}]
    ours = coco_evaluate(targets, preds)
    assert_same_stats(ours, pycocotools_evaluate(targets, preds))
    low = int(np.sum(COCO_IOU_THRESHOLDS <= 0.6))  # thresholds the first detection passes
    # low thresholds: TP then FP (precision 1 up to recall 0.5); high: FP then TP (0.5).
    expected = (low * 51 * 1.0 + (10 - low) * 51 * 0.5) / (10 * 101)
    assert ours["AP"] == pytest.approx(expected, abs=1e-12)


def test_area_boundaries_are_inclusive():
    # A 32x32 GT (area 1024) is both "small" and "medium"; a 96x96 one "medium" and "large".
    targets = [{"boxes": torch.tensor([[0.0, 0.0, 32.0, 32.0], [100.0, 0.0, 196.0, 96.0]]),
                "labels": torch.tensor([1, 2])}]
    preds = [{"boxes": targets[0]["boxes"].clone(), "labels": torch.tensor([1, 2]),
              "scores": torch.tensor([0.9, 0.8])}]
    ours = coco_evaluate(targets, preds)
    assert_same_stats(ours, pycocotools_evaluate(targets, preds))
    assert ours["APs"] == ours["APm"] == ours["APl"] == pytest.approx(1.0)


def test_target_area_field_decides_the_size():
    # A 20x20 box whose "area" says 5000: it counts as medium, not small.
    targets = [{"boxes": torch.tensor([[0.0, 0.0, 20.0, 20.0]]), "labels": torch.tensor([3]),
                "area": torch.tensor([5000.0])}]
    preds = [{"boxes": torch.tensor([[0.0, 0.0, 20.0, 20.0]]), "labels": torch.tensor([3]),
              "scores": torch.tensor([0.5])}]
    ours = coco_evaluate(targets, preds)
    assert_same_stats(ours, pycocotools_evaluate(targets, preds))
    assert ours["APs"] == -1.0 and ours["APm"] == pytest.approx(1.0)


def test_pred_only_class_changes_nothing():
    targets, preds = random_dataset(3)
    base = coco_evaluate(targets, [
        {k: v[p["labels"] != PRED_ONLY_CLASS] for k, v in p.items()} for p in preds])
    assert_same_stats(coco_evaluate(targets, preds), base, tol=0.0)


@pytest.mark.parametrize("device", available_devices())
def test_device_inputs(device):
    targets, preds = random_dataset(5)
    moved = [[{k: v.to(device) for k, v in d.items()} for d in ds] for ds in (targets, preds)]
    assert_same_stats(coco_evaluate(*moved), coco_evaluate(targets, preds), tol=0.0)


def test_bad_arguments():
    targets, preds = random_dataset(0, num_images=2)
    with pytest.raises(NotImplementedError, match="lesson 08"):
        coco_evaluate(targets, preds, iou_type="segm")
    with pytest.raises(ValueError, match="iou_type"):
        coco_evaluate(targets, preds, iou_type="keypoints")
    with pytest.raises(ValueError, match="one entry per image"):
        coco_evaluate(targets, preds[:1])
    bad = [dict(p, boxes=torch.zeros(2, 5)) for p in preds]
    with pytest.raises(ValueError, match=r"preds\[0\]\['boxes'\] must have shape \(N, 4\)"):
        coco_evaluate(targets, bad)
    bad = [dict(p, scores=p["scores"][:-1]) for p in preds if len(p["scores"])]
    with pytest.raises(ValueError, match="scores"):
        coco_evaluate(targets[:len(bad)], bad)


# ------------------------------------------------------------------ coco_format


def test_to_coco_gt_and_dt():
    targets = [
        {"boxes": torch.tensor([[1.0, 2.0, 11.0, 22.0], [0.0, 0.0, 4.0, 4.0]]),
         "labels": torch.tensor([3, 1]), "iscrowd": torch.tensor([False, True]),
         "area": torch.tensor([150.0, 9.0])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
        {"boxes": torch.tensor([[5.0, 5.0, 7.0, 9.0]]), "labels": torch.tensor([3])},
    ]
    gt = to_coco_gt(targets, image_size=(480, 640))
    assert gt["images"] == [{"id": i, "height": 480, "width": 640} for i in (1, 2, 3)]
    assert gt["annotations"] == [
        {"id": 1, "image_id": 1, "category_id": 3, "bbox": [1.0, 2.0, 10.0, 20.0],
         "area": 150.0, "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [0.0, 0.0, 4.0, 4.0],
         "area": 9.0, "iscrowd": 1},
        {"id": 3, "image_id": 3, "category_id": 3, "bbox": [5.0, 5.0, 2.0, 4.0],
         "area": 8.0, "iscrowd": 0},
    ]
    assert [c["id"] for c in gt["categories"]] == [1, 3]
    assert [c["id"] for c in to_coco_gt(targets, category_ids=[7, 1])["categories"]] == [1, 7]
    assert "height" not in to_coco_gt(targets)["images"][0]
    sizes = [(10, 20), (30, 40), (50, 60)]
    assert to_coco_gt(targets, image_size=sizes)["images"][2] == {"id": 3, "height": 50,
                                                                  "width": 60}

    preds = [{"boxes": torch.tensor([[1.0, 2.0, 3.0, 5.0]]), "labels": torch.tensor([2]),
              "scores": torch.tensor([0.25])}, empty_pred()]
    assert to_coco_dt(preds) == [{"image_id": 1, "category_id": 2, "bbox": [1.0, 2.0, 2.0, 3.0],
                                  "score": 0.25}]
    with pytest.raises(ValueError, match="labels"):
        to_coco_dt([{"boxes": torch.zeros(2, 4), "labels": torch.tensor([1]),
                     "scores": torch.zeros(2)}])
    with pytest.raises(ValueError, match="image_size"):
        to_coco_gt(targets, image_size=[(1, 2)])


def test_pycocotools_evaluate_rejects_segm_and_length_mismatch():
    targets, preds = random_dataset(0, num_images=2)
    with pytest.raises(NotImplementedError):
        pycocotools_evaluate(targets, preds, iou_type="segm")
    with pytest.raises(ValueError, match="one entry per image"):
        pycocotools_evaluate(targets, preds[:1])
