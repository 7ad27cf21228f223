"""Tests for course_lib.metrics.coco_evaluate and course_lib.coco_format.

The oracle is pycocotools itself (``coco_format.pycocotools_evaluate``): the 12 numbers must
agree to 1e-9 on many small random datasets built to hit every rule of COCOeval (crowds, area
boundaries, maxDets, score ties, IoU ties, empty images, ...), plus a few hand-worked cases.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from course_lib.coco_format import (
    COCO_STAT_NAMES,
    pycocotools_evaluate,
    to_coco_dt,
    to_coco_gt,
)
from course_lib.device import available_devices
from course_lib.metrics import (
    COCO_IOU_THRESHOLDS,
    _mask_iou_pairs,
    _mask_pixel_counts,
    coco_evaluate,
)

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
    with pytest.raises(ValueError, match=r"targets\[0\] has no 'masks'"):
        coco_evaluate(targets, preds, iou_type="segm")  # boxes only: no mask IoU
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


# ------------------------------------------------------------------ iou_type="segm"
# The same oracle, pycocotools' COCOeval(iouType="segm"), on random instance masks. The
# oracle takes a GT's area from its "area" field (else its box), ours from "area" else its
# mask: the tests give the oracle the masks' pixel counts as "area" where ours has none.

# pycocotools' decode passes copy=False to numpy 2's asarray: its warning, not ours.
segm_warning = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def random_mask(rng, height, width):
    """(H, W) bool: a rectangle, an ellipse or a hollow rectangle, sometimes of area 32^2."""
    mask = np.zeros((height, width), dtype=bool)
    if rng.random() < 0.2 and height >= 32 and width >= 32:  # exactly 1024 px: small/medium
        y, x = rng.integers(0, height - 31), rng.integers(0, width - 31)
        mask[y:y + 32, x:x + 32] = True
        return mask
    y1, x1 = rng.integers(0, height - 1), rng.integers(0, width - 1)
    y2, x2 = rng.integers(y1 + 1, height + 1), rng.integers(x1 + 1, width + 1)
    shape = rng.choice(["rect", "ellipse", "hollow"])
    if shape == "ellipse":
        ys, xs = np.mgrid[:height, :width]
        cy, cx, ry, rx = (y1 + y2) / 2, (x1 + x2) / 2, (y2 - y1) / 2 + 0.5, (x2 - x1) / 2 + 0.5
        mask = ((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2 <= 1
    else:
        mask[y1:y2, x1:x2] = True
        if shape == "hollow":
            cy, cx = (y1 + y2) // 2, (x1 + x2) // 2
            mask[cy - 2:cy + 2, cx - 2:cx + 2] = False
    return mask


def perturb(rng, mask):
    """A detection made from a GT mask: an exact copy, a shifted copy, or pixels flipped."""
    kind = rng.choice(["copy", "shift", "noise"])
    if kind == "copy":
        return mask.copy()
    if kind == "shift":
        dy, dx = rng.integers(-4, 5, 2)
        return np.roll(mask, (dy, dx), axis=(0, 1))
    return mask ^ (rng.random(mask.shape) < 0.05)


def tight_boxes(masks):
    boxes = []
    for m in masks:
        rows, cols = np.nonzero(m)
        boxes.append([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1] if len(rows)
                     else [0, 0, 0, 0])
    return torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)


def random_segm_dataset(seed, num_images=6):
    """Random targets/preds with masks: images of different sizes, crowds, empty images,
    "area" fields, masks as uint8, bool or probabilities, score ties, empty masks."""
    rng = np.random.default_rng(1000 + seed)
    targets, preds = [], []
    for _ in range(num_images):
        height, width = (int(v) for v in rng.integers(20, 110, 2))
        kind = rng.choice(["both", "both", "both", "empty", "gt_only", "dt_only"])
        num_gt = 0 if kind in ("empty", "dt_only") else int(rng.integers(1, 6))
        gt_masks = np.zeros((num_gt, height, width), dtype=bool)
        for j in range(num_gt):
            gt_masks[j] = random_mask(rng, height, width)
        gt_labels = rng.integers(1, NUM_CLASSES + 1, num_gt)
        target = {"masks": torch.from_numpy(gt_masks.astype(np.uint8)),
                  "labels": torch.tensor(gt_labels, dtype=torch.int64)}
        if rng.random() < 0.5:
            target["masks"] = target["masks"].bool()
        if rng.random() < 0.4:
            target["iscrowd"] = torch.from_numpy(rng.random(num_gt) < 0.3)
        if rng.random() < 0.3:
            area = gt_masks.sum(axis=(1, 2)) * rng.choice([0.5, 1.0, 3.0, 40.0], num_gt)
            area[rng.random(num_gt) < 0.3] = rng.choice([1024.0, 9216.0])
            target["area"] = torch.tensor(area, dtype=torch.float64)
        targets.append(target)

        det_masks, det_labels = [], []
        if kind in ("both", "dt_only"):
            for j in range(num_gt):
                for _ in range(int(rng.integers(0, 3))):
                    det_masks.append(perturb(rng, gt_masks[j]))
                    det_labels.append(gt_labels[j] if rng.random() > 0.1
                                      else rng.integers(1, NUM_CLASSES + 1))
            for _ in range(int(rng.integers(0, 4))):
                det_masks.append(random_mask(rng, height, width))
                det_labels.append(PRED_ONLY_CLASS if rng.random() < 0.2
                                  else rng.integers(1, NUM_CLASSES + 1))
            if rng.random() < 0.2:
                det_masks.append(np.zeros((height, width), dtype=bool))  # an empty mask
                det_labels.append(1)
        masks = np.array(det_masks, dtype=bool).reshape(-1, height, width)
        scores = rng.random(len(masks))
        if rng.random() < 0.5:
            scores = np.round(scores, 1)
        pred = {"labels": torch.tensor(det_labels, dtype=torch.int64).reshape(-1),
                "scores": torch.tensor(scores, dtype=torch.float32)}
        style = rng.choice(["uint8", "bool", "probs", "probs_flat"])
        if style.startswith("probs"):  # probabilities: object where > 0.5 (0.5 is not)
            probs = np.where(masks, rng.choice([0.51, 0.7, 1.0], masks.shape),
                             rng.choice([0.0, 0.3, 0.5], masks.shape))
            probs = torch.tensor(probs, dtype=torch.float32)
            pred["masks"] = probs[:, None] if style == "probs" else probs
        else:
            pred["masks"] = torch.from_numpy(masks.astype(np.uint8 if style == "uint8" else bool))
        preds.append(pred)
    return targets, preds


def oracle_segm(targets, preds):
    """pycocotools on the same data: GT boxes from the masks, "area" = pixels when missing."""
    full = []
    for t in targets:
        masks = t["masks"].numpy().astype(bool)
        full.append(dict(t, boxes=tight_boxes(masks),
                         area=t.get("area", torch.tensor(masks.sum(axis=(1, 2)),
                                                         dtype=torch.float64))))
    return pycocotools_evaluate(full, preds, iou_type="segm")


def square(height, width, x1, y1, x2, y2, hole=0):
    """(H, W) uint8: ones on rows y1:y2, columns x1:x2, minus a centred hole of side 2*hole."""
    mask = torch.zeros(height, width, dtype=torch.uint8)
    mask[y1:y2, x1:x2] = 1
    if hole:
        cy, cx = (y1 + y2) // 2, (x1 + x2) // 2
        mask[cy - hole:cy + hole, cx - hole:cx + hole] = 0
    return mask


@segm_warning
@pytest.mark.parametrize("seed", range(30))
def test_segm_matches_pycocotools_on_random_data(seed):
    targets, preds = random_segm_dataset(seed)
    assert_same_stats(coco_evaluate(targets, preds, iou_type="segm"), oracle_segm(targets, preds))


def test_random_segm_data_hits_the_interesting_cases():
    seen = dict.fromkeys(["crowd", "area", "no_area", "pred_only", "empty_image", "gt_only",
                          "dt_only", "probs", "probs_flat", "bool", "empty_mask", "area_1024",
                          "score_tie"], False)
    for seed in range(30):
        targets, preds = random_segm_dataset(seed)
        for t, p in zip(targets, preds, strict=True):
            seen["crowd"] |= bool("iscrowd" in t and t["iscrowd"].any())
            seen["area"] |= "area" in t
            seen["no_area"] |= "area" not in t and len(t["labels"]) > 0
            seen["pred_only"] |= bool((p["labels"] == PRED_ONLY_CLASS).any())
            seen["empty_image"] |= len(t["labels"]) == 0 and len(p["labels"]) == 0
            seen["gt_only"] |= len(t["labels"]) > 0 and len(p["labels"]) == 0
            seen["dt_only"] |= len(t["labels"]) == 0 and len(p["labels"]) > 0
            seen["probs"] |= p["masks"].dim() == 4
            seen["probs_flat"] |= p["masks"].dim() == 3 and p["masks"].is_floating_point()
            seen["bool"] |= p["masks"].dtype == torch.bool
            binary = p["masks"] > 0.5 if p["masks"].is_floating_point() else p["masks"] != 0
            seen["empty_mask"] |= bool((binary.flatten(1).sum(1) == 0).any())
            seen["area_1024"] |= bool((t["masks"].flatten(1).sum(1) == 1024).any())
            seen["score_tie"] |= len(p["scores"].unique()) < len(p["scores"])
    assert all(seen.values()), seen


def test_segm_mask_iou_equals_pycocotools():
    # our pixel-count IoU against pycocotools' run-length IoU, crowd and empty masks included
    rng = np.random.default_rng(0)
    height, width = 37, 53
    dt = np.array([random_mask(rng, height, width) for _ in range(12)] + [np.zeros(
        (height, width), dtype=bool)])
    gt = np.array([random_mask(rng, height, width) for _ in range(7)] + [dt[0], dt[-1]])
    crowd = rng.random(len(gt)) < 0.4
    pair_dt, pair_gt = (a.ravel() for a in np.meshgrid(np.arange(len(dt)), np.arange(len(gt)),
                                                       indexing="ij"))
    gt_pixels, dt_pixels, overlaps = _mask_pixel_counts(
        [{"masks": torch.from_numpy(gt)}], [{"masks": torch.from_numpy(dt).float()[:, None]}])
    ours = _mask_iou_pairs(overlaps, np.zeros(len(pair_dt), dtype=np.int64), pair_dt, pair_gt,
                           dt_pixels[0][pair_dt], gt_pixels[0][pair_gt], crowd[pair_gt])
    encode = [mask_utils.encode(np.asfortranarray(m.transpose(1, 2, 0).astype(np.uint8)))
              for m in (dt, gt)]
    expected = mask_utils.iou(encode[0], encode[1], crowd.astype(np.uint8))  # (D, G)
    assert np.array_equal(ours, np.asarray(expected).ravel())
    assert ours.max() == 1.0 and (ours > 0).sum() > 5


@segm_warning
def test_segm_hand_worked_hollow_square():
    # GT: a 20x20 square with a 10x10 hole (300 px). Prediction: the filled square (400 px).
    # Box IoU 1; mask IoU 300 / 400 = 0.75, a match at thresholds 0.5..0.75 only (6 of 10).
    gt = {"masks": square(40, 40, 10, 10, 30, 30, hole=5)[None], "labels": torch.tensor([1]),
          "boxes": torch.tensor([[10.0, 10.0, 30.0, 30.0]])}
    pred = {"masks": square(40, 40, 10, 10, 30, 30)[None], "labels": torch.tensor([1]),
            "scores": torch.tensor([0.9]), "boxes": torch.tensor([[10.0, 10.0, 30.0, 30.0]])}
    assert coco_evaluate([gt], [pred])["AP"] == pytest.approx(1.0)  # boxes
    segm = coco_evaluate([gt], [pred], iou_type="segm")
    assert_same_stats(segm, oracle_segm([gt], [pred]))
    assert segm["AP"] == pytest.approx(0.6, abs=1e-12)
    assert segm["AP75"] == pytest.approx(1.0) and segm["APs"] == pytest.approx(0.6)
    # as probabilities (D, 1, H, W) the same
    probs = dict(pred, masks=pred["masks"][:, None].float() * 0.8)
    assert coco_evaluate([gt], [probs], iou_type="segm") == segm


@segm_warning
def test_segm_area_is_the_mask_area():
    # GT: a 40x40 square (medium by area, 1600 px); without an "area" field its size is the
    # mask's. With "area" = 500 it is small. A detection's area is always its mask's: an
    # unmatched 10x10 (small) detection ranked first is an FP for APs.
    gt = {"masks": square(80, 80, 0, 0, 40, 40)[None], "labels": torch.tensor([1])}
    pred = {"masks": torch.stack([square(80, 80, 70, 70, 80, 80), square(80, 80, 0, 0, 40, 40)]),
            "labels": torch.tensor([1, 1]), "scores": torch.tensor([0.9, 0.5])}
    ours = coco_evaluate([gt], [pred], iou_type="segm")
    assert_same_stats(ours, oracle_segm([gt], [pred]))
    assert ours["APs"] == -1.0 and ours["APm"] == pytest.approx(1.0)
    small = dict(gt, area=torch.tensor([500.0]))
    ours = coco_evaluate([small], [pred], iou_type="segm")
    assert_same_stats(ours, oracle_segm([small], [pred]))
    assert ours["APm"] == -1.0 and ours["APs"] == pytest.approx(0.5)


@segm_warning
def test_segm_crowd_and_empty():
    person, crowd = square(60, 60, 0, 0, 10, 10), square(60, 60, 20, 20, 60, 60)
    gt = {"masks": torch.stack([person, crowd]), "labels": torch.tensor([1, 1]),
          "iscrowd": torch.tensor([0, 1])}
    pred = {"masks": torch.stack([square(60, 60, 30, 30, 40, 40), person,
                                  square(60, 60, 45, 25, 55, 35)]),
            "labels": torch.tensor([1, 1, 1]), "scores": torch.tensor([0.9, 0.8, 0.7])}
    ours = coco_evaluate([gt], [pred], iou_type="segm")
    assert_same_stats(ours, oracle_segm([gt], [pred]))
    assert ours["AP"] == pytest.approx(1.0) and ours["AR1"] == 0.0 and ours["AR10"] == 1.0
    # no detection at all, and an image with nothing
    empty_gt = {"masks": torch.zeros(0, 20, 30, dtype=torch.uint8),
                "labels": torch.zeros(0, dtype=torch.int64)}
    none = [{"masks": torch.zeros(0, *m.shape[1:]), "labels": torch.zeros(0, dtype=torch.int64),
             "scores": torch.zeros(0)} for m in (gt["masks"], empty_gt["masks"])]
    ours = coco_evaluate([gt, empty_gt], none, iou_type="segm")
    assert_same_stats(ours, oracle_segm([gt, empty_gt], none))
    assert ours["AP"] == 0.0 and ours["APl"] == -1.0
    assert set(coco_evaluate([empty_gt], none[1:], iou_type="segm").values()) == {-1.0}


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_segm_device_inputs(device):
    targets, preds = random_segm_dataset(3)
    moved = [[{k: v.to(device) for k, v in d.items()} for d in ds] for ds in (targets, preds)]
    assert_same_stats(coco_evaluate(*moved, iou_type="segm"),
                      coco_evaluate(targets, preds, iou_type="segm"), tol=0.0)


def test_segm_bad_arguments():
    targets, preds = random_segm_dataset(0, num_images=2)
    bad = [dict(p, masks=torch.zeros(len(p["labels"]), 5, 5)) for p in preds]
    with pytest.raises(ValueError, match=r"preds\[0\]\['masks'\] must be \("):
        coco_evaluate(targets, bad, iou_type="segm")
    bad = [dict(p, masks=torch.zeros(len(p["labels"]), 2, 5, 5)) for p in preds]
    with pytest.raises(ValueError, match=r"preds\[0\]\['masks'\] must have shape \(N, H, W\)"):
        coco_evaluate(targets, bad, iou_type="segm")
    bad = [dict(t, labels=torch.cat([t["labels"], torch.tensor([1])])) for t in targets]
    with pytest.raises(ValueError, match=r"targets\[0\]\['labels'\] must have shape"):
        coco_evaluate(bad, preds, iou_type="segm")
