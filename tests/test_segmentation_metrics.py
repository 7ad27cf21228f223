"""Confusion matrix, IoU, Dice and pixel accuracy against loop oracles and hand-worked maps;
the meter's accumulated matrix equals the matrix of the concatenated data set."""

import math

import pytest
import torch

from course_lib.losses import dice_coefficient
from course_lib.segmentation_metrics import (
    SegmentationMeter,
    confusion_matrix,
    dice_per_class,
    iou_per_class,
    mean_iou,
    pixel_accuracy,
)

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]

# truth and prediction of the hand-worked example: 3 classes, 3 x 4 pixels
TARGET = torch.tensor([[0, 0, 1, 1],
                       [0, 0, 1, 1],
                       [2, 2, 2, 2]])
PRED = torch.tensor([[0, 0, 0, 1],
                     [0, 1, 1, 1],
                     [2, 2, 0, 2]])
# rows = truth: class 0 (4 pixels): 3 -> 0, 1 -> 1; class 1 (4): 1 -> 0, 3 -> 1;
# class 2 (4): 1 -> 0, 3 -> 2
HAND_CM = [[3, 1, 0], [1, 3, 0], [1, 0, 3]]


def _loop_confusion(pred, target, num_classes, ignore_index=None):
    cm = [[0] * num_classes for _ in range(num_classes)]
    for p, t in zip(pred.flatten().tolist(), target.flatten().tolist(), strict=True):
        if t != ignore_index:
            cm[t][p] += 1
    return torch.tensor(cm, dtype=torch.int64)


def test_confusion_matrix_by_hand():
    assert _loop_confusion(PRED, TARGET, 3).tolist() == HAND_CM
    cm = confusion_matrix(PRED, TARGET, 3)
    assert cm.dtype == torch.int64 and cm.tolist() == HAND_CM
    assert int(cm.sum()) == TARGET.numel()


def test_scores_by_hand():
    cm = torch.tensor(HAND_CM)
    # IoU: class 0: TP 3, FN 1, FP 2 -> 3/6; class 1: 3, 1, 1 -> 3/5; class 2: 3, 1, 0 -> 3/4
    assert iou_per_class(cm).tolist() == pytest.approx([3 / 6, 3 / 5, 3 / 4])
    assert mean_iou(PRED, TARGET, 3) == pytest.approx((1 / 2 + 3 / 5 + 3 / 4) / 3)
    # Dice: 2 TP / (|A| + |B|): 6 / 9, 6 / 8, 6 / 7
    assert dice_per_class(cm).tolist() == pytest.approx([6 / 9, 6 / 8, 6 / 7])
    assert pixel_accuracy(cm) == pytest.approx(9 / 12)
    # Dice = 2 IoU / (1 + IoU), and equals the hard Dice of the masks
    iou = iou_per_class(cm)
    assert torch.allclose(dice_per_class(cm), 2 * iou / (1 + iou))
    hard = dice_coefficient(PRED, TARGET, num_classes=3).double()
    assert torch.allclose(dice_per_class(cm), hard, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8])
@pytest.mark.parametrize("ignore_index", [None, 255])
def test_confusion_matrix_against_a_loop(device, dtype, ignore_index):
    g = torch.Generator().manual_seed(0)
    pred = torch.randint(0, 5, (3, 6, 7), generator=g)
    target = torch.randint(0, 5, (3, 6, 7), generator=g)
    if ignore_index is not None:
        target[torch.rand(3, 6, 7, generator=g) < 0.2] = ignore_index
    expected = _loop_confusion(pred, target, 5, ignore_index)
    got = confusion_matrix(pred.to(device, dtype), target.to(device, dtype), 5, ignore_index)
    assert got.dtype == torch.int64 and got.device == pred.to(device).device
    assert torch.equal(got.cpu(), expected)


def _loop_iou(pred, target, c):
    a = {i for i, v in enumerate(pred.flatten().tolist()) if v == c}
    b = {i for i, v in enumerate(target.flatten().tolist()) if v == c}
    return len(a & b) / len(a | b) if a | b else math.nan


def test_iou_against_sets_with_absent_and_missed_classes():
    g = torch.Generator().manual_seed(1)
    target = torch.randint(0, 3, (2, 5, 5), generator=g)              # classes 0..2
    pred = torch.randint(0, 4, (2, 5, 5), generator=g)                # class 3 predicted only
    iou = iou_per_class(confusion_matrix(pred, target, 5))
    expected = [_loop_iou(pred, target, c) for c in range(5)]
    assert iou.dtype == torch.float64
    assert math.isnan(iou[4]) and math.isnan(expected[4])             # absent from both: nan
    assert iou[3] == 0.0                                              # predicted, never true
    assert iou[:4].tolist() == pytest.approx(expected[:4])
    assert mean_iou(pred, target, 5) == pytest.approx(sum(expected[:4]) / 4)


def test_a_class_in_truth_but_never_predicted_scores_zero():
    target = torch.tensor([[0, 1], [0, 0]])
    pred = torch.zeros(2, 2, dtype=torch.long)
    # class 0: TP 3, union 4 -> 3/4; class 1: TP 0 -> 0; mean 3/8
    assert iou_per_class(confusion_matrix(pred, target, 2)).tolist() == [0.75, 0.0]
    assert mean_iou(pred, target, 2) == pytest.approx(3 / 8)
    assert pixel_accuracy(confusion_matrix(pred, target, 2)) == pytest.approx(3 / 4)


def test_ignore_index_and_empty_inputs():
    target = torch.tensor([[0, 255], [1, 255]])
    pred = torch.tensor([[0, 1], [1, 0]])
    cm = confusion_matrix(pred, target, 2, ignore_index=255)
    assert cm.tolist() == [[1, 0], [0, 1]]
    assert mean_iou(pred, target, 2, ignore_index=255) == 1.0
    empty = confusion_matrix(torch.zeros(0, 4, 4, dtype=torch.long),
                             torch.zeros(0, 4, 4, dtype=torch.long), 3)
    assert empty.tolist() == [[0] * 3] * 3
    assert math.isnan(pixel_accuracy(empty))
    assert torch.isnan(iou_per_class(empty)).all() and torch.isnan(dice_per_class(empty)).all()
    everything_ignored = torch.full((2, 2), 255)
    assert math.isnan(mean_iou(pred, everything_ignored, 2, ignore_index=255))


@pytest.mark.parametrize("pred, target, kwargs, match", [
    (torch.zeros(2, 2, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long), {},
     r"same shape, got \(2, 2\) and \(2, 3\)"),
    (torch.zeros(2, 2), torch.zeros(2, 2, dtype=torch.long), {},
     "pred must hold integer labels, got dtype torch.float32"),
    (torch.tensor([0, 3]), torch.tensor([0, 1]), {}, r"pred labels must lie in \[0, 3\)"),
    (torch.tensor([0, 1]), torch.tensor([0, 255]), {}, r"target labels must lie in \[0, 3\)"),
    (torch.tensor([0, 1]), torch.tensor([0, 1]), {"num_classes": 0}, "num_classes"),
])
def test_confusion_matrix_bad_input(pred, target, kwargs, match):
    with pytest.raises(ValueError, match=match):
        confusion_matrix(pred, target, **{"num_classes": 3, **kwargs})


@pytest.mark.parametrize("fn", [iou_per_class, dice_per_class, pixel_accuracy])
def test_scores_need_a_square_matrix(fn):
    with pytest.raises(ValueError, match=r"square confusion matrix .*got \(2, 3\)"):
        fn(torch.zeros(2, 3, dtype=torch.long))


# ---------------------------------------------------------------- SegmentationMeter


@pytest.mark.parametrize("device", DEVICES)
def test_meter_accumulates_the_matrix_of_the_whole_data_set(device):
    g = torch.Generator().manual_seed(2)
    meter = SegmentationMeter(4, ignore_index=255)
    preds, targets = [], []
    for size in [(2, 5, 6), (1, 5, 6), (3, 5, 6)]:
        logits = torch.randn(size[0], 4, *size[1:], generator=g).to(device)
        target = torch.randint(0, 4, size, generator=g)
        target[torch.rand(size, generator=g) < 0.1] = 255
        target = target.to(device)
        meter.update(logits, target)                                # scores: argmax first
        preds.append(logits.argmax(dim=1))
        targets.append(target)
    pred_all, target_all = torch.cat(preds), torch.cat(targets)
    cm = confusion_matrix(pred_all, target_all, 4, ignore_index=255)
    assert torch.equal(meter.matrix, cm.cpu())
    result = meter.compute()
    assert set(result) == {"pixel_accuracy", "mean_iou", "iou", "dice", "mean_dice"}
    assert result["mean_iou"] == pytest.approx(mean_iou(pred_all, target_all, 4, 255))
    assert result["iou"] == pytest.approx(iou_per_class(cm).tolist())
    assert result["dice"] == pytest.approx(dice_per_class(cm).tolist())
    assert result["mean_dice"] == pytest.approx(sum(result["dice"]) / 4)
    assert result["pixel_accuracy"] == pytest.approx(pixel_accuracy(cm))
    # the data-set mIoU is not the mean of per-batch mIoUs
    per_batch = [mean_iou(p, t, 4, 255) for p, t in zip(preds, targets, strict=True)]
    assert result["mean_iou"] != pytest.approx(sum(per_batch) / 3)


def test_meter_with_labels_hand_worked_and_reset():
    meter = SegmentationMeter(3)
    meter.update(PRED[:2], TARGET[:2])                               # labels, used as they are
    meter.update(PRED[2:], TARGET[2:])
    assert meter.matrix.tolist() == HAND_CM
    result = meter.compute()
    assert result["iou"] == pytest.approx([1 / 2, 3 / 5, 3 / 4])
    assert result["pixel_accuracy"] == pytest.approx(0.75)
    meter.reset()
    assert meter.matrix.sum() == 0
    result = meter.compute()
    assert math.isnan(result["mean_iou"]) and math.isnan(result["pixel_accuracy"])
    assert all(math.isnan(v) for v in result["iou"])


def test_meter_nan_classes_stay_out_of_the_means():
    meter = SegmentationMeter(4)
    meter.update(torch.tensor([[0, 1]]), torch.tensor([[0, 1]]))
    result = meter.compute()
    assert result["mean_iou"] == 1.0 and result["mean_dice"] == 1.0
    assert [math.isnan(v) for v in result["iou"]] == [False, False, True, True]


def test_meter_bad_input():
    with pytest.raises(ValueError, match="num_classes"):
        SegmentationMeter(0)
    meter = SegmentationMeter(3)
    with pytest.raises(ValueError, match=r"C = 3 channels in dim 1, got \(1, 2, 2, 2\)"):
        meter.update(torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="same shape"):
        meter.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.zeros(1, 2, 3,
                                                                          dtype=torch.long))

