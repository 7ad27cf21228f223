"""Tests for the mask parts of course_lib.coco_format: RLE export and ``iou_type="segm"``.

Oracles: pycocotools' own ``mask.decode``/``mask.area``, and cases worked by hand where the
mask IoU differs from the box IoU (a hollow square against a filled one).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from course_lib.coco_format import (
    COCO_STAT_NAMES,
    masks_to_rle,
    pycocotools_evaluate,
    to_coco_dt,
    to_coco_gt,
)
from course_lib.metrics import COCO_IOU_THRESHOLDS

# pycocotools' decode passes copy=False to numpy 2's asarray: its warning, not ours.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def square_mask(height, width, x1, y1, x2, y2, hole=0):
    """(H, W) uint8: ones on rows y1:y2, columns x1:x2, minus a centred hole of side 2*hole."""
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[y1:y2, x1:x2] = 1
    if hole:
        cy, cx = (y1 + y2) // 2, (x1 + x2) // 2
        mask[cy - hole:cy + hole, cx - hole:cx + hole] = 0
    return torch.from_numpy(mask)


def target_of(masks, labels, **extra):
    """A target whose boxes are the masks' tight boxes and area their pixel counts."""
    boxes = []
    for m in masks:
        rows, cols = np.nonzero(m.numpy())
        boxes.append([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1])
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "masks": torch.stack(list(masks)) if len(masks) else torch.zeros(0, 20, 30,
                                                                             dtype=torch.uint8),
            "area": torch.tensor([float(m.sum()) for m in masks]), **extra}


# ------------------------------------------------------------------ masks_to_rle


@pytest.mark.parametrize("dtype", [torch.uint8, torch.bool, torch.int64])
def test_rle_round_trip(dtype):
    rng = np.random.default_rng(0)
    masks = torch.from_numpy(rng.random((4, 17, 23)) < 0.3)  # (N, H, W), H != W
    masks[1] = False  # an empty mask
    masks[2] = True  # a full one
    rles = masks_to_rle(masks.to(dtype))
    assert len(rles) == 4
    json.dumps(rles)  # plain json: counts is a str
    for rle, mask in zip(rles, masks, strict=True):
        assert rle["size"] == [17, 23] and isinstance(rle["counts"], str)
        assert np.array_equal(mask_utils.decode(rle), mask.numpy().astype(np.uint8))
        assert mask_utils.area(rle) == mask.sum().item()


def test_rle_of_probabilities_thresholds_above_half():
    probs = torch.tensor([[[0.2, 0.5, 0.51], [1.0, 0.0, 0.7]]])[:, None]  # (1, 1, 2, 3)
    decoded = mask_utils.decode(masks_to_rle(probs)[0])
    assert decoded.tolist() == [[0, 0, 1], [1, 0, 1]]  # 0.5 itself is background
    assert masks_to_rle(probs.double()) == masks_to_rle(probs[:, 0] > 0.5)


def test_rle_edge_cases():
    assert masks_to_rle(torch.zeros(0, 5, 6)) == []
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        masks_to_rle(torch.zeros(5, 6))
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        masks_to_rle(torch.zeros(2, 3, 5, 6))


# ------------------------------------------------------------------ to_coco_gt / to_coco_dt


def test_gt_carries_segmentation_and_image_size():
    masks = [square_mask(20, 30, 2, 3, 12, 9), square_mask(20, 30, 20, 10, 28, 18)]
    targets = [target_of(masks, [1, 2]), target_of([], [])]
    gt = to_coco_gt(targets)
    assert gt["images"] == [{"id": 1, "height": 20, "width": 30},
                            {"id": 2, "height": 20, "width": 30}]
    for ann, mask in zip(gt["annotations"], masks, strict=True):
        assert np.array_equal(mask_utils.decode(ann["segmentation"]), mask.numpy())
    assert gt["annotations"][0]["bbox"] == [2.0, 3.0, 10.0, 6.0]
    assert gt["annotations"][0]["area"] == 60.0
    json.dumps(gt)
    without = to_coco_gt(targets, segmentation=False)
    assert all("segmentation" not in ann for ann in without["annotations"])
    assert to_coco_gt(targets, image_size=(20, 30)) == gt
    with pytest.raises(ValueError, match=r"targets\[0\]\['masks'\] must have shape \(2, 40, 30\)"):
        to_coco_gt(targets, image_size=(40, 30))
    with pytest.raises(ValueError, match=r"targets\[0\]\['masks'\]"):
        to_coco_gt([dict(targets[0], masks=targets[0]["masks"][:1])])


def test_dt_fields_follow_iou_type():
    mask = square_mask(20, 30, 2, 3, 12, 9)
    pred = {"boxes": torch.tensor([[2.0, 3.0, 12.0, 9.0]]), "labels": torch.tensor([4]),
            "scores": torch.tensor([0.5]), "masks": mask[None, None].float() * 0.9}
    both = to_coco_dt([pred])
    assert set(both[0]) == {"image_id", "category_id", "bbox", "segmentation", "score"}
    assert np.array_equal(mask_utils.decode(both[0]["segmentation"]), mask.numpy())
    assert set(to_coco_dt([pred], iou_type="segm")[0]) == {"image_id", "category_id",
                                                             "segmentation", "score"}
    assert to_coco_dt([pred], iou_type="bbox") == to_coco_dt(
        [{k: v for k, v in pred.items() if k != "masks"}])
    masks_only = {k: v for k, v in pred.items() if k != "boxes"}
    assert to_coco_dt([masks_only]) == to_coco_dt([pred], iou_type="segm")
    with pytest.raises(ValueError, match="'masks'"):
        to_coco_dt([{k: v for k, v in pred.items() if k != "masks"}], iou_type="segm")
    with pytest.raises(ValueError, match=r"preds\[0\]\['masks'\] must have shape \(1,"):
        to_coco_dt([dict(pred, masks=torch.zeros(2, 20, 30))])
    with pytest.raises(ValueError, match="iou_type"):
        to_coco_dt([pred], iou_type="keypoints")


# ------------------------------------------------------------------ pycocotools_evaluate segm


def test_mask_iou_differs_from_box_iou():
    # GT: a 20x20 square with a 10x10 hole (300 px). Prediction: the filled square (400 px).
    # Box IoU 1; mask IoU 300 / 400 = 0.75, a match at thresholds 0.5..0.75 only (6 of 10).
    gt = target_of([square_mask(40, 40, 10, 10, 30, 30, hole=5)], [1])
    pred = {"boxes": gt["boxes"].clone(), "labels": torch.tensor([1]),
            "scores": torch.tensor([0.9]), "masks": square_mask(40, 40, 10, 10, 30, 30)[None]}
    assert pycocotools_evaluate([gt], [pred], iou_type="bbox")["AP"] == pytest.approx(1.0)
    segm = pycocotools_evaluate([gt], [pred], iou_type="segm")
    expected = float(np.mean(COCO_IOU_THRESHOLDS <= 0.75))
    assert segm["AP"] == pytest.approx(expected, abs=1e-12) and expected == 0.6
    assert segm["AP50"] == pytest.approx(1.0) and segm["AP75"] == pytest.approx(1.0)
    # the same prediction as probabilities (D, 1, H, W) gives the same numbers
    probs = dict(pred, masks=pred["masks"][:, None].float() * 0.8)
    assert pycocotools_evaluate([gt], [probs], iou_type="segm") == segm


def test_segm_uses_mask_area_for_detections():
    # An unmatched detection whose box is medium (60x60 = 3600 px) but whose mask is small
    # (100 px). As a segmentation result its area is the mask's: it counts against APs.
    gt = target_of([square_mask(80, 80, 0, 0, 8, 8)], [1])  # small GT, 64 px
    hit = square_mask(80, 80, 0, 0, 8, 8)
    stray = square_mask(80, 80, 70, 70, 80, 80)  # 100 px, far away
    pred = {"boxes": torch.tensor([[0.0, 0.0, 8.0, 8.0], [20.0, 20.0, 80.0, 80.0]]),
            "labels": torch.tensor([1, 1]), "scores": torch.tensor([0.5, 0.9]),
            "masks": torch.stack([hit, stray])}
    segm = pycocotools_evaluate([gt], [pred], iou_type="segm")
    bbox = pycocotools_evaluate([gt], [pred], iou_type="bbox")
    assert segm["APs"] == pytest.approx(0.5)  # the stray mask (small) ranks first: FP
    assert bbox["APs"] == pytest.approx(1.0)  # the stray box (medium) is outside "small"


def test_segm_crowd_region_absorbs_detections():
    person = square_mask(60, 60, 0, 0, 10, 10)
    crowd = square_mask(60, 60, 20, 20, 60, 60)
    gt = target_of([person, crowd], [1, 1], iscrowd=torch.tensor([0, 1]))
    pred = {"labels": torch.tensor([1, 1, 1]), "scores": torch.tensor([0.9, 0.8, 0.7]),
            "masks": torch.stack([square_mask(60, 60, 30, 30, 40, 40), person,
                                  square_mask(60, 60, 45, 25, 55, 35)]),
            "boxes": torch.tensor([[30.0, 30.0, 40.0, 40.0], [0.0, 0.0, 10.0, 10.0],
                                   [45.0, 25.0, 55.0, 35.0]])}
    segm = pycocotools_evaluate([gt], [pred], iou_type="segm")
    assert segm["AP"] == pytest.approx(1.0) and segm["AR1"] == 0.0 and segm["AR10"] == 1.0


def test_segm_empty_predictions_and_images():
    gt = target_of([square_mask(20, 30, 2, 3, 12, 9)], [2])
    empty_gt = target_of([], [])
    none = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
            "scores": torch.zeros(0), "masks": torch.zeros(0, 20, 30, dtype=torch.uint8)}
    stats = pycocotools_evaluate([gt, empty_gt], [none, none], iou_type="segm")
    assert list(stats) == list(COCO_STAT_NAMES)
    assert stats["AP"] == 0.0 and stats["APl"] == -1.0


def test_segm_argument_errors():
    gt = target_of([square_mask(20, 30, 2, 3, 12, 9)], [2])
    pred = {"boxes": gt["boxes"], "labels": gt["labels"], "scores": torch.ones(1),
            "masks": gt["masks"]}
    with pytest.raises(NotImplementedError, match=r"preds\[0\] has none"):
        pycocotools_evaluate([gt], [{k: v for k, v in pred.items() if k != "masks"}],
                             iou_type="segm")
    with pytest.raises(NotImplementedError, match=r"targets\[0\] has none"):
        pycocotools_evaluate([{k: v for k, v in gt.items() if k != "masks"}], [pred],
                             iou_type="segm")
    with pytest.raises(ValueError, match=r"preds\[0\]\['masks'\] must be \(20, 30\)"):
        pycocotools_evaluate([gt], [dict(pred, masks=torch.zeros(1, 20, 31))], iou_type="segm")
    with pytest.raises(ValueError, match="iou_type"):
        pycocotools_evaluate([gt], [pred], iou_type="keypoints")
