"""Semantic segmentation metrics from a confusion matrix: pixel accuracy, IoU, Dice.

Every metric here is a function of one ``C x C`` *confusion matrix* ``cm`` whose entry
``cm[t, p]`` counts the pixels of true class ``t`` predicted as class ``p`` (rows = truth,
columns = prediction, as in scikit-learn). For class ``c``::

    TP = cm[c, c]      FN = row c minus TP      FP = column c minus TP

    IoU_c  = TP / (TP + FP + FN)         (|A ∩ B| / |A ∪ B|)
    Dice_c = 2 TP / (2 TP + FP + FN)     (2 |A ∩ B| / (|A| + |B|))
    pixel accuracy = trace(cm) / sum(cm)

A class absent from both the prediction and the truth has ``0 / 0``: its IoU and Dice are
``nan`` and the means over classes (``nanmean``) leave it out. Counting a data set means adding
the confusion matrices of its images (:class:`SegmentationMeter`), never averaging per-image
scores. The matrices are int64, the scores float64 (a data set easily has more than the 2^24
pixels that float32 counts exactly).

Shape shorthand: ``N`` images, ``C`` classes, ``H x W`` pixels.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from course_lib.segmentation import collapse

__all__ = ["SegmentationMeter", "confusion_matrix", "dice_per_class", "iou_per_class",
           "mean_iou", "pixel_accuracy"]


def _check_labels(value: Tensor, name: str) -> None:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a Tensor of labels, got {type(value).__name__}")
    if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer labels, got dtype {value.dtype}")


def _check_matrix(cm: Tensor) -> None:
    if not isinstance(cm, Tensor) or cm.dim() != 2 or cm.shape[0] != cm.shape[1]:
        shape = tuple(cm.shape) if isinstance(cm, Tensor) else type(cm).__name__
        raise ValueError(f"cm must be a square confusion matrix of shape (C, C), got {shape}")


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int,
                     ignore_index: int | None = None) -> Tensor:
    """Count pixels by (true class, predicted class).

    Each pixel becomes one index ``t * C + p`` of a flattened ``C x C`` matrix, and
    ``torch.bincount`` counts them all at once.

    Args:
        pred (Tensor[...]): predicted integer labels in ``0..C-1`` (e.g. ``(N, H, W)``).
        target (Tensor[...]): true labels, same shape; ``ignore_index`` pixels are skipped.
        num_classes (int): ``C``.
        ignore_index (int, optional): a target label that is not counted (e.g. 255, "void").

    Returns:
        Tensor[C, C], int64 (on the device of ``pred``): ``cm[t, p]`` pixels of true class
        ``t`` predicted ``p``; all zeros for empty inputs.

    Raises:
        ValueError: on shapes that differ, non-integer labels or labels outside ``[0, C)``.
    """
    _check_labels(pred, "pred")
    _check_labels(target, "target")
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape, got {tuple(pred.shape)} "
                         f"and {tuple(target.shape)}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")
    pred, target = pred.reshape(-1).long(), target.reshape(-1).long()       # (P,)
    if ignore_index is not None:
        keep = target != ignore_index
        pred, target = pred[keep], target[keep]
    for name, value in (("pred", pred), ("target", target)):
        if value.numel() and (value.min() < 0 or value.max() >= num_classes):
            raise ValueError(f"{name} labels must lie in [0, {num_classes}), got values in "
                             f"[{int(value.min())}, {int(value.max())}]")
    flat = target * num_classes + pred                                       # (P,) in [0, C*C)
    counts = torch.bincount(flat, minlength=num_classes * num_classes)        # (C*C,)
    return counts.reshape(num_classes, num_classes)


def _ratio(numerator: Tensor, denominator: Tensor) -> Tensor:
    """``numerator / denominator`` in float64, nan where the denominator is 0."""
    numerator, denominator = numerator.double(), denominator.double()
    return torch.where(denominator > 0, numerator / denominator.clamp(min=1),
                       torch.full_like(denominator, math.nan))


def iou_per_class(cm: Tensor) -> Tensor:
    """Intersection over union of each class: ``TP / (TP + FP + FN)``.

    Args:
        cm (Tensor[C, C]): a confusion matrix (rows = truth, columns = prediction).

    Returns:
        Tensor[C], float64: the IoU of each class; ``nan`` for a class that appears neither in
        the truth nor in the prediction (0 for one that appears in only one of them).

    Raises:
        ValueError: if ``cm`` is not a square matrix.
    """
    _check_matrix(cm)
    tp = cm.diagonal()
    union = cm.sum(dim=1) + cm.sum(dim=0) - tp         # |A| + |B| - |A ∩ B| = TP + FN + FP
    return _ratio(tp, union)


def dice_per_class(cm: Tensor) -> Tensor:
    """Dice (F1) of each class: ``2 TP / (2 TP + FP + FN) = 2 |A ∩ B| / (|A| + |B|)``.

    Dice and IoU rank predictions alike: ``Dice = 2 IoU / (1 + IoU)``.

    Args:
        cm (Tensor[C, C]): a confusion matrix (rows = truth, columns = prediction).

    Returns:
        Tensor[C], float64: the Dice of each class; ``nan`` for a class absent from both.

    Raises:
        ValueError: if ``cm`` is not a square matrix.
    """
    _check_matrix(cm)
    tp = cm.diagonal()
    return _ratio(2 * tp, cm.sum(dim=1) + cm.sum(dim=0))


def pixel_accuracy(cm: Tensor) -> float:
    """The fraction of pixels labelled correctly: ``trace(cm) / sum(cm)``.

    Easy to read but dominated by the large classes: predicting "background" everywhere
    scores high on an image that is mostly background.

    Args:
        cm (Tensor[C, C]): a confusion matrix.

    Returns:
        float: in ``[0, 1]``; ``nan`` when no pixel was counted.

    Raises:
        ValueError: if ``cm`` is not a square matrix.
    """
    _check_matrix(cm)
    return float(_ratio(cm.diagonal().sum(), cm.sum()))


def _nanmean(values: Tensor) -> float:
    present = values[~values.isnan()]
    return float(present.mean()) if present.numel() else math.nan


def mean_iou(pred: Tensor, target: Tensor, num_classes: int,
             ignore_index: int | None = None) -> float:
    """Mean intersection over union (mIoU) of two label maps, the standard segmentation score.

    The IoU of every class (:func:`iou_per_class` of :func:`confusion_matrix`), averaged over
    the classes that appear in the truth or in the prediction (the others are ``nan`` and left
    out).

    Args:
        pred (Tensor[...]): predicted integer labels in ``0..C-1`` (e.g. ``(N, H, W)``).
        target (Tensor[...]): true labels, same shape.
        num_classes (int): ``C``.
        ignore_index (int, optional): a target label that is not counted.

    Returns:
        float: in ``[0, 1]``; ``nan`` when no pixel was counted.

    Raises:
        ValueError: as :func:`confusion_matrix`.
    """
    return _nanmean(iou_per_class(confusion_matrix(pred, target, num_classes, ignore_index)))


class SegmentationMeter:
    """Accumulate a confusion matrix over a data set, then report every metric.

    Example::

        meter = SegmentationMeter(num_classes=3)
        for images, targets in loader:
            meter.update(model(images), targets)   # logits (N, C, H, W) or labels (N, H, W)
        meter.compute()["mean_iou"]

    Args:
        num_classes (int): ``C``.
        ignore_index (int, optional): a target label that is not counted.

    Attributes:
        matrix (Tensor[C, C]): the confusion matrix so far, int64 on the CPU.
    """

    def __init__(self, num_classes: int, ignore_index: int | None = None) -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def reset(self) -> None:
        """Forget everything counted so far."""
        self.matrix.zero_()

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Count one batch.

        Args:
            pred (Tensor[N, H, W] or Tensor[N, C, H, W]): predicted labels, or class scores
                (logits, probabilities) that are collapsed by argmax first.
            target (Tensor[N, H, W]): the true labels.

        Raises:
            ValueError: on shapes that do not match or labels out of range.
        """
        if isinstance(pred, Tensor) and isinstance(target, Tensor) \
                and pred.dim() == target.dim() + 1 and pred.is_floating_point():
            if pred.shape[1] != self.num_classes:
                raise ValueError(f"scores must have C = {self.num_classes} channels in dim 1, "
                                 f"got {tuple(pred.shape)}")
            pred = collapse(pred)                                    # (N, C, H, W) -> (N, H, W)
        cm = confusion_matrix(pred.detach(), target.detach(), self.num_classes,
                              self.ignore_index)
        self.matrix += cm.cpu()

    def compute(self) -> dict[str, float | list[float]]:
        """The metrics of everything counted so far.

        Returns:
            dict with ``"pixel_accuracy"`` (float), ``"mean_iou"`` (float, nanmean over
            classes), ``"iou"`` (list of C floats, nan for absent classes), ``"dice"`` (list
            of C floats) and ``"mean_dice"`` (float).
        """
        iou, dice = iou_per_class(self.matrix), dice_per_class(self.matrix)
        return {"pixel_accuracy": pixel_accuracy(self.matrix), "mean_iou": _nanmean(iou),
                "iou": iou.tolist(), "dice": dice.tolist(), "mean_dice": _nanmean(dice)}
