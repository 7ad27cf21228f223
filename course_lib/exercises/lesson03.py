"""Lesson 03 exercises: anchors, anchor labels, the RPN loss and proposal selection.

Each table starts with the lecture's examples worked by hand (the four anchors of a 2 x 2
feature map with stride 16, the K = 9 anchors of one position, anchors with IoU 1, 0.7, 0.5,
0.3 and 0.2 with a ground-truth box), then the edge cases that separate a correct answer from
an almost-correct one (the order of the anchors, IoU exactly at a threshold, a GT whose best
anchor is below 0.7, ties, images without objects). The same tables drive the notebook's
``check(...)`` cells, the tests and the grader; the grader adds fresh random cases drawn by
``random_case``.

Inputs cross the grader as tensors, numbers and strings, so sequences arrive as 1-D tensors:
``feature_size`` and ``image_size`` as ``tensor([H, W])``, ``sizes`` and ``aspect_ratios`` as
float tensors (``H, W = feature_size`` and ``for s in sizes`` work as for tuples). Outputs are
tensors or tuples of them, so two exercises differ from their ``course_lib`` function in one
respect, stated in their docstrings: :func:`rpn_loss` returns ``(objectness, box)`` instead of
a dict and takes the GT boxes of the batch as one ``Tensor[B, G, 4]``; :func:`select_proposals`
returns its two lists as tuples (done by the checker: lists of tensors compare as tuples).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from course_lib import anchors as _anchors
from course_lib import boxes as _boxes
from course_lib import matching as _matching
from course_lib.coder import decode_boxes
from course_lib.exercises.core import Case, Exercise
from course_lib.models import rpn as _rpn

__all__ = ["EXERCISES", "LECTURE_ANCHORS", "rpn_loss"]


def _t(rows, dtype=torch.float32) -> torch.Tensor:
    return torch.tensor(rows, dtype=dtype)


def _size(h: int, w: int) -> torch.Tensor:
    """A ``(H, W)`` pair (feature map or image size) as an int64 tensor."""
    return torch.tensor([h, w], dtype=torch.int64)


def _floats(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def _randn(rng: np.random.Generator, *shape: int, std: float = 1.0) -> torch.Tensor:
    return torch.tensor((rng.normal(size=shape) * std).round(3), dtype=torch.float32)


# The lecture's 2 x 2 feature map with stride 16 and one 32 x 32 anchor per position: the
# positions are centred on the image pixels (0, 0), (16, 0), (0, 16) and (16, 16).
LECTURE_ANCHORS = _t([[-16, -16, 16, 16], [0, -16, 32, 16], [-16, 0, 16, 32], [0, 0, 32, 32]])

# ---------------------------------------------------------------------------------------------
# generate_anchors
# ---------------------------------------------------------------------------------------------

# The K = 9 cell anchors of sizes (32, 64, 128) and ratios (0.5, 1, 2), ratio-major: for ratio
# r = h / w, w = s / sqrt(r) and h = s * sqrt(r), corners (-w/2, -h/2, w/2, h/2) rounded.
_NINE = [[-23, -11, 23, 11], [-45, -23, 45, 23], [-91, -45, 91, 45],
         [-16, -16, 16, 16], [-32, -32, 32, 32], [-64, -64, 64, 64],
         [-11, -23, 11, 23], [-23, -45, 23, 45], [-45, -91, 45, 91]]
_RATIO_CHOICES = (0.25, 0.5, 1.0, 2.0, 3.0, 4.0)


def _random_anchor_case(rng: np.random.Generator) -> dict:
    while True:  # no half-side near a half: every rounding rule (and dtype) then agrees
        sizes = rng.integers(4, 200, size=int(rng.integers(1, 4)))
        ratios = rng.choice(_RATIO_CHOICES, size=int(rng.integers(1, 4)), replace=False)
        halves = np.concatenate([np.outer(np.sqrt(ratios), sizes),
                                 np.outer(1 / np.sqrt(ratios), sizes)]).ravel() / 2
        if (np.abs(halves - np.floor(halves) - 0.5) > 1e-3).all():
            break
    return {"feature_size": _size(int(rng.integers(0, 6)), int(rng.integers(1, 6))),
            "stride": int(rng.choice([4, 8, 16, 32])),
            "sizes": _floats(*sizes.tolist()), "aspect_ratios": _floats(*ratios.tolist())}


GENERATE_ANCHORS = Exercise(
    name="generate_anchors",
    reference=_anchors.generate_anchors,
    cases=(
        Case("the lecture's 2 x 2 map, stride 16, one 32 x 32 anchor per position",
             {"feature_size": _size(2, 2), "stride": 16, "sizes": _floats(32),
              "aspect_ratios": _floats(1.0)},
             expected=LECTURE_ANCHORS,
             note="position (y, x) is centred on the image pixel (x * stride, y * stride), "
                  "torchvision's convention (not the cell centre); rows go (0, 0), (0, 1), "
                  "(1, 0), (1, 1): row-major"),
        Case("K = 9 anchors at one position: 3 ratios x 3 sizes, ratio-major",
             {"feature_size": _size(1, 1), "stride": 16, "sizes": _floats(32, 64, 128),
              "aspect_ratios": _floats(0.5, 1.0, 2.0)},
             expected=_t(_NINE),
             note="anchor k has ratio k // len(sizes) and size k % len(sizes); ratio = h / w, "
                  "so 0.5 gives a wide box: w = s / sqrt(0.5), h = s * sqrt(0.5)"),
        Case("the corners are rounded, not the sizes: size 10, ratio 2 -> (-4, -7, 4, 7)",
             {"feature_size": _size(1, 1), "stride": 8, "sizes": _floats(10),
              "aspect_ratios": _floats(2.0)},
             expected=_t([[-4, -7, 4, 7]]),
             note="w = 10 / sqrt(2) = 7.07, so w / 2 = 3.54 rounds to 4; rounding w first "
                  "would give 7 and corners at 3.5"),
        Case("the K anchors of a position are consecutive: 2 x 2 map, sizes 16 and 32",
             {"feature_size": _size(2, 2), "stride": 16, "sizes": _floats(16, 32),
              "aspect_ratios": _floats(1.0)},
             expected=_t([[-8, -8, 8, 8], [-16, -16, 16, 16], [8, -8, 24, 8], [0, -16, 32, 16],
                          [-8, 8, 8, 24], [-16, 0, 16, 32], [8, 8, 24, 24], [0, 0, 32, 32]]),
             note="anchor (y * W + x) * K + k is anchor k at position (y, x): the order of the "
                  "RPN head's outputs after (N, K*4, H, W) -> (N, H, W, K, 4)"),
        Case("a non-square 2 x 3 map, stride 8",
             {"feature_size": _size(2, 3), "stride": 8, "sizes": _floats(8),
              "aspect_ratios": _floats(1.0)},
             expected=_t([[-4, -4, 4, 4], [4, -4, 12, 4], [12, -4, 20, 4],
                          [-4, 4, 4, 12], [4, 4, 12, 12], [12, 4, 20, 12]]),
             note="feature_size is (H, W): 2 rows of 3 positions; x moves fastest"),
        Case("a 3 x 2 map with 2 ratios and 2 sizes, stride 32",
             {"feature_size": _size(3, 2), "stride": 32, "sizes": _floats(32, 64),
              "aspect_ratios": _floats(0.5, 2.0)}),
        Case("an empty feature map gives shape (0, 4)",
             {"feature_size": _size(0, 3), "stride": 16, "sizes": _floats(32),
              "aspect_ratios": _floats(1.0)},
             expected=torch.zeros(0, 4)),
    ),
    random_case=_random_anchor_case,
    atol=1e-5,
    hint="cell anchors: for each ratio r, for each size s: w = s / sqrt(r), h = s * sqrt(r), "
         "round((-w/2, -h/2, w/2, h/2)); then add (x*stride, y*stride, x*stride, y*stride) "
         "for each position, y-major, keeping a position's K anchors together.",
)

# ---------------------------------------------------------------------------------------------
# label_anchors
# ---------------------------------------------------------------------------------------------

_GT0 = _t([[0, 0, 10, 10]])
# Anchors with IoU 1, 0.7, 0.5, 0.3, 0.2 and 0 with _GT0.
_LADDER = _t([[0, 0, 10, 10], [0, 0, 10, 7], [0, 0, 10, 5], [0, 0, 10, 3], [0, 0, 10, 2],
              [20, 20, 30, 30]])


def _labels(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def _idx(*values: int) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int64)


def _random_label_case(rng: np.random.Generator) -> dict:
    while True:
        grid = rng.integers(2, 5)
        step = 20.0
        anchors = []
        for y in range(grid):
            for x in range(grid):
                for w, h in ((20.0, 20.0), (28.0, 14.0), (14.0, 28.0)):
                    cx, cy = x * step + 10, y * step + 10
                    anchors.append([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
        anchors = np.array(anchors)
        g = int(rng.integers(0, 4))
        centre = rng.uniform(5, grid * step - 5, size=(g, 2))
        wh = rng.uniform(8, 40, size=(g, 2))
        gt = np.concatenate([centre - wh / 2, centre + wh / 2], axis=1).round(1)
        pos_iou, neg_iou = ((0.7, 0.3), (0.5, 0.4), (0.6, 0.2))[int(rng.integers(3))]
        a_t = torch.tensor(anchors, dtype=torch.float64)
        g_t = torch.tensor(gt, dtype=torch.float64)
        iou = _boxes.box_iou(g_t, a_t)  # (G, A)
        if g == 0:
            break
        # every GT overlaps some anchor (no quirk), no IoU near a threshold, no near-ties
        near = ((iou - pos_iou).abs() < 1e-3) | ((iou - neg_iou).abs() < 1e-3)
        top2 = iou.topk(2, dim=0).values if g > 1 else None
        gt_tie = top2 is not None and bool(((top2[0] - top2[1]).abs() < 1e-3).any()
                                          & (top2[0] > 0).any())
        if bool((iou.max(dim=1).values > 0.05).all()) and not bool(near.any()) and not gt_tie:
            break
    return {"anchors": torch.tensor(anchors, dtype=torch.float32),
            "gt_boxes": torch.tensor(gt.reshape(-1, 4), dtype=torch.float32),
            "pos_iou": pos_iou, "neg_iou": neg_iou}


LABEL_ANCHORS = Exercise(
    name="label_anchors",
    reference=_matching.label_anchors,
    cases=(
        Case("IoU 1, 0.7, 0.5, 0.3, 0.2, 0: positive, positive, ignored, ignored, negative, "
             "negative",
             {"anchors": _LADDER, "gt_boxes": _GT0},
             expected=(_labels(1, 1, -1, -1, 0, 0), _idx(0, 0, 0, 0, 0, 0)),
             note="IoU >= 0.7 is positive (0.7 exactly too); IoU < 0.3 is negative, so 0.3 "
                  "exactly is ignored (-1)"),
        Case("a GT whose best anchor has IoU 0.5 still gets that anchor as a positive",
             {"anchors": _t([[0, 0, 10, 5], [0, 0, 10, 2], [50, 50, 60, 60]]),
              "gt_boxes": _GT0},
             expected=(_labels(1, 0, 0), _idx(0, 0, 0)),
             note="the low-quality rule: for each GT, its highest-IoU anchor is positive, "
                  "whatever the thresholds say"),
        Case("... even when that IoU is below 0.3",
             {"anchors": _t([[0, 0, 10, 2], [50, 50, 60, 60]]), "gt_boxes": _GT0},
             expected=(_labels(1, 0), _idx(0, 0))),
        Case("ties: both anchors with the GT's best IoU become positive",
             {"anchors": _t([[0, 0, 10, 5], [0, 5, 10, 10], [0, 0, 10, 2]]),
              "gt_boxes": _GT0},
             expected=(_labels(1, 1, 0), _idx(0, 0, 0)),
             note="IoU 0.5 and 0.5: every anchor equal to the maximum counts, not only the "
                  "argmax"),
        Case("two GTs: a positive points at its own best GT, others at 0",
             {"anchors": _t([[20, 20, 30, 29], [0, 0, 10, 9], [50, 50, 60, 60], [0, 0, 10, 5]]),
              "gt_boxes": _t([[0, 0, 10, 10], [20, 20, 30, 30]])},
             expected=(_labels(1, 1, 0, -1), _idx(1, 0, 0, 0)),
             note="matched_gt is the index of the best GT for positives, and 0 (not -1) for "
                  "negative and ignored anchors"),
        Case("made positive by one GT, matched to another: its own best GT",
             {"anchors": _t([[0, 0, 10, 10], [0, 0, 10, 6], [50, 50, 60, 60]]),
              "gt_boxes": _t([[0, 0, 10, 10], [8, 0, 18, 6]])},
             expected=(_labels(1, 1, 0), _idx(0, 0, 0)),
             note="anchor 1 is GT 1's best anchor (IoU 0.11), so it is positive; but its best "
                  "GT is GT 0 (IoU 0.6), and that is the box it learns to reach"),
        Case("other thresholds: pos_iou 0.5, neg_iou 0.4",
             {"anchors": _LADDER, "gt_boxes": _GT0, "pos_iou": 0.5, "neg_iou": 0.4},
             expected=(_labels(1, 1, 1, 0, 0, 0), _idx(0, 0, 0, 0, 0, 0))),
        Case("no GT boxes: a background image, every anchor negative",
             {"anchors": _LADDER, "gt_boxes": torch.zeros(0, 4)},
             expected=(torch.zeros(6), torch.zeros(6, dtype=torch.int64)),
             note="with no objects there is nothing to match: labels 0, matched_gt 0"),
        Case("no anchors give two empty tensors",
             {"anchors": torch.zeros(0, 4), "gt_boxes": _GT0},
             expected=(torch.zeros(0), torch.zeros(0, dtype=torch.int64))),
        Case("torchvision's quirk: a GT that overlaps no anchor makes every IoU-0 anchor "
             "positive",
             {"anchors": _t([[0, 0, 10, 10], [20, 0, 30, 10]]),
              "gt_boxes": _t([[0, 0, 10, 10], [50, 50, 60, 60]])},
             expected=(_labels(1, 1), _idx(0, 0)),
             note="GT 1's highest IoU is 0 and both anchors tie at it, so both are its 'best' "
                  "anchors; with anchors covering the image this does not happen"),
    ),
    random_case=_random_label_case,
    hint="iou = box_iou(gt, anchors) (G, A); best = iou.max(dim=0); thresholds on best; then "
         "every anchor with iou == iou.max(dim=1) for some GT is positive too.",
)

# ---------------------------------------------------------------------------------------------
# rpn_loss
# ---------------------------------------------------------------------------------------------


def rpn_loss(objectness: Tensor, deltas: Tensor, anchors: Tensor, gt_boxes_list: Tensor,
             batch_size_per_image: int = 256, positive_fraction: float = 0.5,
             pos_iou: float = 0.7, neg_iou: float = 0.3) -> tuple[Tensor, Tensor]:
    """The notebook's ``rpn_loss``: :func:`course_lib.models.rpn.rpn_loss` as a tuple.

    Exercise outputs are tensors or tuples, so this returns ``(objectness, box)`` where the
    library returns ``{"objectness": ..., "box": ...}``; the GT boxes of the batch come as one
    tensor (each image has the same number G of boxes; iterating over it gives the images'
    ``Tensor[G, 4]``, like the library's list), and there is no ``generator`` argument.

    Args:
        objectness (Tensor[B, K, H, W]): objectness logits.
        deltas (Tensor[B, 4K, H, W]): box deltas; channels ``4k .. 4k+3`` belong to anchor k.
        anchors (Tensor[H*W*K, 4]): the anchors, in the order of ``generate_anchors``.
        gt_boxes_list (Tensor[B, G, 4]): the GT boxes of each image.
        batch_size_per_image: anchors sampled per image.
        positive_fraction: the largest fraction of positives in each image's sample.
        pos_iou: IoU from which an anchor is positive.
        neg_iou: IoU below which an anchor is negative.

    Returns:
        tuple[Tensor, Tensor]: the scalar objectness loss (mean BCE over the sampled anchors)
        and the box loss (smooth L1, beta 1/9, over the sampled positives, divided by the
        number of sampled anchors).
    """
    losses = _rpn.rpn_loss(objectness, deltas, anchors, gt_boxes_list, batch_size_per_image,
                           positive_fraction, pos_iou=pos_iou, neg_iou=neg_iou)
    return losses["objectness"], losses["box"]


def _bce(logit: float, label: float) -> float:
    """Binary cross-entropy of one logit: ``-log sigmoid(z)`` or ``-log (1 - sigmoid(z))``."""
    return math.log1p(math.exp(-logit if label else logit))


def _smooth_l1(x: float, beta: float = 1 / 9) -> float:
    return 0.5 * x * x / beta if abs(x) < beta else abs(x) - 0.5 * beta


def _map(rows, channels: int = 1) -> torch.Tensor:
    """A (1, C, 2, 2) map: ``rows`` for channel 0 (the others zero)."""
    out = torch.zeros(1, channels, 2, 2)
    out[0, 0] = _t(rows)
    return out


# With LECTURE_ANCHORS and the GT (0, 0, 32, 32): anchor 3 has IoU 1 (positive), anchors 1
# and 2 IoU 1/3 (ignored), anchor 0 IoU 1/7 (negative). Two anchors are sampled.
_GT_SQUARE = _t([[[0, 0, 32, 32]]])  # (B=1, G=1, 4)
_LOGITS = _map([[-2.0, 0.0], [0.0, 3.0]])


def _deltas_at(position: tuple[int, int], code) -> torch.Tensor:
    """(1, 4, 2, 2) deltas, ``code`` at one position (K = 1) and zero elsewhere."""
    out = torch.zeros(1, 4, 2, 2)
    out[0, :, position[0], position[1]] = _t(code)
    return out


# GT (2, 2, 34, 30): IoU 0.78 with anchor 3 (positive), below 0.3 with the others (negative).
_GT_SHIFTED = _t([[[2, 2, 34, 30]]])
_SHIFTED_TARGET = (2 / 32, 0.0, 0.0, math.log(28 / 32))


def _random_rpn_case(rng: np.random.Generator) -> dict:
    b = int(rng.integers(1, 3))
    h, w = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    sizes, ratios = ((32.0,), (1.0,)) if rng.random() < 0.5 else ((24.0, 40.0), (0.5, 1.0))
    k = len(sizes) * len(ratios)
    anchors = _anchors.generate_anchors((h, w), 16, sizes, ratios)
    g = int(rng.integers(0, 3))
    while True:
        centre = rng.uniform(0, 16 * max(h, w), size=(b, g, 2))
        wh = rng.uniform(12, 48, size=(b, g, 2))
        gt = torch.tensor(np.concatenate([centre - wh / 2, centre + wh / 2], axis=2).round(1),
                          dtype=torch.float32)
        ious = [_boxes.box_iou(img.double(), anchors.double()) for img in gt]
        ok = all(
            bool((iou.max(dim=1).values > 0.05).all())  # every GT overlaps an anchor
            and not bool((((iou - 0.7).abs() < 1e-3) | ((iou - 0.3).abs() < 1e-3)).any())
            for iou in ious if iou.numel())
        if ok:
            break
    return {"objectness": _randn(rng, b, k, h, w, std=2.0),
            "deltas": _randn(rng, b, 4 * k, h, w, std=0.3),
            "anchors": anchors, "gt_boxes_list": gt}


RPN_LOSS = Exercise(
    name="rpn_loss",
    reference=rpn_loss,
    cases=(
        Case("all logits 0, zero deltas on the lecture's anchors: (ln 2, 0)",
             {"objectness": torch.zeros(1, 1, 2, 2), "deltas": torch.zeros(1, 4, 2, 2),
              "anchors": LECTURE_ANCHORS, "gt_boxes_list": _GT_SQUARE},
             expected=(torch.tensor(math.log(2)), torch.tensor(0.0)),
             note="anchor 3 is positive (IoU 1), anchor 0 negative (IoU 1/7), anchors 1 and 2 "
                  "ignored (IoU 1/3): two sampled anchors, each with BCE ln 2; the deltas "
                  "already equal the target 0"),
        Case("objectness: the mean BCE of the sampled anchors only",
             {"objectness": _LOGITS, "deltas": torch.zeros(1, 4, 2, 2),
              "anchors": LECTURE_ANCHORS, "gt_boxes_list": _GT_SQUARE},
             expected=(torch.tensor((_bce(-2.0, 0) + _bce(3.0, 1)) / 2), torch.tensor(0.0)),
             note="BCE with logits (a sigmoid per anchor, not a softmax over anchors); the "
                  "ignored anchors 1 and 2 take no part"),
        Case("box loss: smooth L1 with beta 1/9, divided by the 2 sampled anchors",
             {"objectness": _LOGITS, "deltas": _deltas_at((1, 1), [0.1, 0.0, 0.5, -0.05]),
              "anchors": LECTURE_ANCHORS, "gt_boxes_list": _GT_SQUARE},
             expected=(torch.tensor((_bce(-2.0, 0) + _bce(3.0, 1)) / 2),
                       torch.tensor((_smooth_l1(0.1) + _smooth_l1(0.5) + _smooth_l1(-0.05))
                                    / 2)),
             note="quadratic 4.5 x^2 below |x| = 1/9, |x| - 1/18 above; summed over the "
                  "positives' 4 codes and divided by all sampled anchors (2), not the "
                  "positives (1)"),
        Case("the target is encode(GT, anchor): GT (2, 2, 34, 30) on anchor (0, 0, 32, 32)",
             {"objectness": torch.zeros(1, 1, 2, 2), "deltas": torch.zeros(1, 4, 2, 2),
              "anchors": LECTURE_ANCHORS, "gt_boxes_list": _GT_SHIFTED},
             expected=(torch.tensor(math.log(2)),
                       torch.tensor(sum(_smooth_l1(t) for t in _SHIFTED_TARGET) / 4)),
             note="the three other anchors are negative (IoU < 0.3): 4 sampled anchors; the "
                  "target of anchor 3 is (2/32, 0, 0, log(28/32))"),
        Case("deltas of negative anchors do not count in the box loss",
             {"objectness": torch.zeros(1, 1, 2, 2),
              "deltas": _deltas_at((0, 0), [5.0, 5.0, 5.0, 5.0]),
              "anchors": LECTURE_ANCHORS, "gt_boxes_list": _GT_SHIFTED},
             expected=(torch.tensor(math.log(2)),
                       torch.tensor(sum(_smooth_l1(t) for t in _SHIFTED_TARGET) / 4)),
             note="a negative anchor has no box to reach: only positives are regressed"),
        Case("a background image: every anchor negative, box loss 0",
             {"objectness": _LOGITS, "deltas": torch.ones(1, 4, 2, 2),
              "anchors": LECTURE_ANCHORS, "gt_boxes_list": torch.zeros(1, 0, 4)},
             expected=(torch.tensor((_bce(-2.0, 0) + 2 * _bce(0.0, 0) + _bce(3.0, 0)) / 4),
                       torch.tensor(0.0))),
        Case("two images: both losses are averaged over the 6 sampled anchors of the batch",
             {"objectness": torch.cat([_LOGITS, -_LOGITS]),
              "deltas": torch.cat([_deltas_at((1, 1), [0.1, 0.0, 0.5, -0.05]),
                                   _deltas_at((0, 0), [0.2, 0.2, 0.0, 0.0])]),
              "anchors": LECTURE_ANCHORS,
              "gt_boxes_list": torch.cat([_GT_SQUARE, _GT_SHIFTED])},
             note="the sampled anchors of all images are pooled before the mean (2 + 4)"),
        Case("K = 2 anchors per position: deltas channels 4k..4k+3 belong to anchor k",
             {"objectness": torch.tensor([[[[0.5, -1.0], [1.0, 2.0]], [[-0.5, 0.0], [1.5, 0.3]]]]),
              "deltas": torch.linspace(-0.4, 0.4, 32).reshape(1, 8, 2, 2),
              "anchors": _anchors.generate_anchors((2, 2), 16, (24.0, 40.0), (1.0,)),
              "gt_boxes_list": _t([[[0, 0, 32, 32], [10, 12, 40, 36]]])},
             note="flatten (B, K, H, W) -> (B, H*W*K) and (B, 4K, H, W) -> (B, H*W*K, 4) in "
                  "the anchors' order: position-major, the K anchors of a position together"),
    ),
    random_case=_random_rpn_case,
    atol=1e-5,
    rtol=1e-5,
    hint="label the anchors, sample them, then BCE-with-logits over the sampled anchors and "
         "smooth L1 (beta=1/9, summed) over the sampled positives, divided by the number "
         "sampled.",
)

# ---------------------------------------------------------------------------------------------
# select_proposals
# ---------------------------------------------------------------------------------------------

_SCORES = _map([[0.0, 1.0], [2.0, 3.0]])  # anchor k has logit k
_SIG = [1 / (1 + math.exp(-z)) for z in (0.0, 1.0, 2.0, 3.0)]
# ty = 0.5 moves anchor 1 (0, -16, 32, 16) down by 16 pixels onto anchor 3 (0, 0, 32, 32)
_ONTO_3 = _deltas_at((0, 1), [0.0, 0.5, 0.0, 0.0])


def _random_proposal_case(rng: np.random.Generator) -> dict:
    b = int(rng.integers(1, 3))
    h, w = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    anchors = _anchors.generate_anchors((h, w), 16, (24.0, 40.0), (0.5, 1.0))
    image = (16 * h, 16 * w)
    settings = {"pre_nms_top_n": int(rng.integers(1, 20)), "post_nms_top_n": int(rng.integers(
        1, 10)), "nms_thresh": float(rng.choice([0.5, 0.7])),
        "min_size": float(rng.choice([1e-3, 4.0, 12.0])),
        "score_thresh": float(rng.choice([0.0, 0.3]))}
    while True:
        objectness = _randn(rng, b, 4, h, w, std=2.0)
        deltas = _randn(rng, b, 16, h, w, std=0.3)
        if _clear_of_thresholds(objectness, deltas, anchors, image, settings):
            break
    return {"objectness": objectness, "deltas": deltas, "anchors": anchors,
            "image_size": _size(*image), **settings}


def _clear_of_thresholds(objectness, deltas, anchors, image, settings) -> bool:
    """No candidate box near min_size, score_thresh or nms_thresh, and no equal logits."""
    scores, codes = _rpn.flatten_predictions(objectness.double(), deltas.double())
    for s, c in zip(scores, codes, strict=True):
        if len(s.unique()) != len(s):
            return False
        boxes = decode_boxes(c, anchors.double())
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, image[1])
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, image[0])
        sides = torch.cat([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]])
        if bool(((sides - settings["min_size"]).abs() < 1e-2).any()):
            return False
        if bool(((torch.sigmoid(s) - settings["score_thresh"]).abs() < 1e-3).any()):
            return False
        iou = _boxes.box_iou(boxes, boxes)
        if bool(((iou - settings["nms_thresh"]).abs() < 1e-3).any()):
            return False
    return True


SELECT_PROPOSALS = Exercise(
    name="select_proposals",
    reference=_rpn.select_proposals,
    cases=(
        Case("zero deltas: the anchors clipped to the 32 x 32 image, best first",
             {"objectness": _SCORES, "deltas": torch.zeros(1, 4, 2, 2),
              "anchors": LECTURE_ANCHORS, "image_size": _size(32, 32)},
             expected=((_t([[0, 0, 32, 32], [0, 0, 16, 32], [0, 0, 32, 16], [0, 0, 16, 16]]),),
                       (_t(_SIG[::-1]),)),
             note="clip x to [0, W] and y to [0, H]; the scores are sigmoid(logit), sorted "
                  "from the best; the result is one tensor per image (a list, or a tuple)"),
        Case("NMS: anchor 1 moved onto anchor 3 is suppressed",
             {"objectness": _SCORES, "deltas": _ONTO_3, "anchors": LECTURE_ANCHORS,
              "image_size": _size(32, 32)},
             expected=((_t([[0, 0, 32, 32], [0, 0, 16, 32], [0, 0, 16, 16]]),),
                       (_t([_SIG[3], _SIG[2], _SIG[0]]),)),
             note="decode the deltas first, then NMS on the decoded boxes (IoU 1 > 0.7)"),
        Case("pre_nms_top_n = 2 keeps the 2 best logits before NMS: one box survives",
             {"objectness": _map([[0.0, 2.5], [2.0, 3.0]]), "deltas": _ONTO_3,
              "anchors": LECTURE_ANCHORS, "image_size": _size(32, 32), "pre_nms_top_n": 2},
             expected=((_t([[0, 0, 32, 32]]),), (_t([1 / (1 + math.exp(-3.0))]),)),
             note="the top-k by objectness comes before NMS; NMS then removes the second"),
        Case("post_nms_top_n = 2 keeps the 2 best after NMS",
             {"objectness": _SCORES, "deltas": _ONTO_3, "anchors": LECTURE_ANCHORS,
              "image_size": _size(32, 32), "post_nms_top_n": 2},
             expected=((_t([[0, 0, 32, 32], [0, 0, 16, 32]]),), (_t([_SIG[3], _SIG[2]]),))),
        Case("min_size = 20 drops every box narrower or lower than 20 pixels",
             {"objectness": _SCORES, "deltas": torch.zeros(1, 4, 2, 2),
              "anchors": LECTURE_ANCHORS, "image_size": _size(32, 32), "min_size": 20.0},
             expected=((_t([[0, 0, 32, 32]]),), (_t([_SIG[3]]),)),
             note="after clipping, boxes 0, 1 and 2 are 16 pixels wide or high"),
        Case("score_thresh = 0.8 compares the probability, not the logit",
             {"objectness": _SCORES, "deltas": torch.zeros(1, 4, 2, 2),
              "anchors": LECTURE_ANCHORS, "image_size": _size(32, 32), "score_thresh": 0.8},
             expected=((_t([[0, 0, 32, 32], [0, 0, 16, 32]]),), (_t([_SIG[3], _SIG[2]]),)),
             note="sigmoid(3) = 0.95 and sigmoid(2) = 0.88 pass; sigmoid(1) = 0.73 does not"),
        Case("a 20 x 32 image (H x W): y is clipped at 20, x at 32",
             {"objectness": _SCORES, "deltas": torch.zeros(1, 4, 2, 2),
              "anchors": LECTURE_ANCHORS, "image_size": _size(20, 32)},
             expected=((_t([[0, 0, 32, 20], [0, 0, 16, 20]]),), (_t([_SIG[3], _SIG[2]]),)),
             note="image_size is (height, width); clipped at y = 20, boxes 1 and 0 overlap "
                  "boxes 3 and 2 with IoU 0.8, so NMS removes them"),
        Case("two images: one result per image, of different lengths",
             {"objectness": torch.cat([_SCORES, _SCORES]),
              "deltas": torch.cat([torch.zeros(1, 4, 2, 2), _ONTO_3]),
              "anchors": LECTURE_ANCHORS, "image_size": _size(32, 32)},
             note="image 1 loses a box to NMS, image 0 does not"),
        Case("K = 2 anchors per position with random deltas",
             {"objectness": torch.tensor([[[[0.5, -1.0], [1.0, 2.0]], [[-0.5, 0.1], [1.5, 0.3]]]]),
              "deltas": torch.linspace(-0.4, 0.4, 32).reshape(1, 8, 2, 2),
              "anchors": _anchors.generate_anchors((2, 2), 16, (24.0, 40.0), (1.0,)),
              "image_size": _size(32, 32), "nms_thresh": 0.5}),
    ),
    random_case=_random_proposal_case,
    atol=1e-4,
    rtol=1e-5,
    hint="per image: topk(pre_nms_top_n) logits, decode and clip, drop boxes smaller than "
         "min_size or with sigmoid < score_thresh, NMS, then the first post_nms_top_n.",
)

EXERCISES: dict[str, Exercise] = {
    ex.name: ex for ex in (GENERATE_ANCHORS, LABEL_ANCHORS, RPN_LOSS, SELECT_PROPOSALS)
}
