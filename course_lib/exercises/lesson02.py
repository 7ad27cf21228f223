"""Lesson 02 exercises: the box coder and RoI pooling (R-CNN, Fast and Faster R-CNN).

Each table starts with the lecture's examples worked by hand (a proposal shifted by 2 pixels
gives ``tx = 0.2``, a 2 x 2 max pool of the whole feature map, RoI Align on a map whose values
are ``4 * row + col`` so that every bilinear read is easy to check), then the edge cases that
separate a correct answer from an almost-correct one (the weights, the exp clamp, rounding in
RoI Pool, the half-cell shift of ``aligned=True``, empty inputs). The same tables drive the
notebook's ``check(...)`` cells, the tests and the grader; the grader adds fresh random cases
drawn by ``random_case``.

Inputs cross the grader as tensors, numbers and strings, so the coder's ``weights`` arrive as a
1-D tensor of 4 numbers (``wx, wy, ww, wh = weights`` works for a tuple and a tensor alike), and
the RoIs as one ``Tensor[K, 5]`` of rows ``(batch_index, x1, y1, x2, y2)``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from course_lib import coder as _coder
from course_lib import roi as _roi
from course_lib.exercises.core import Case, Exercise

__all__ = ["EXERCISES", "LECTURE_FEATURE_MAP", "LINEAR_FEATURE_MAP"]


def _t(rows, dtype=torch.float32) -> torch.Tensor:
    return torch.tensor(rows, dtype=dtype)


def _w(wx: float, wy: float, ww: float, wh: float) -> torch.Tensor:
    """The coder weights ``(wx, wy, ww, wh)`` as a 1-D tensor."""
    return _t([wx, wy, ww, wh])


def _img(rows, dtype=torch.float32) -> torch.Tensor:
    """A (1, 1, H, W) feature map from a list of rows."""
    return torch.tensor(rows, dtype=dtype)[None, None]


def _randn(rng: np.random.Generator, *shape: int) -> torch.Tensor:
    return torch.tensor(rng.normal(size=shape).round(2), dtype=torch.float32)


# ---------------------------------------------------------------------------------------------
# encode_boxes
# ---------------------------------------------------------------------------------------------

_LOG = math.log
# A 20 x 10 proposal and a 24 x 16 ground truth: centres (10, 5) and (14, 8).
_PROPOSAL = _t([[0, 0, 20, 10]])
_GT = _t([[2, 0, 26, 16]])
_GT_CODE = [4 / 20, 3 / 10, _LOG(24 / 20), _LOG(16 / 10)]


def _random_pairs(rng: np.random.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random proposals and ground-truth boxes near them (positive sizes)."""
    xy = rng.uniform(0, 80, size=(n, 2))
    wh = rng.uniform(4, 60, size=(n, 2))
    proposals = np.concatenate([xy, xy + wh], axis=1)
    shift = rng.normal(0, 0.2, size=(n, 2)) * wh
    scale = np.exp(rng.normal(0, 0.4, size=(n, 2)))
    centre, gwh = xy + wh / 2 + shift, wh * scale
    gt = np.concatenate([centre - gwh / 2, centre + gwh / 2], axis=1)
    return (torch.tensor(gt.round(2), dtype=torch.float32),
            torch.tensor(proposals.round(2), dtype=torch.float32))


_WEIGHT_CHOICES = ((1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0), (2.0, 2.0, 1.0, 1.0))


def _random_encode_case(rng: np.random.Generator) -> dict:
    gt, proposals = _random_pairs(rng, int(rng.integers(0, 8)))
    weights = _WEIGHT_CHOICES[int(rng.integers(len(_WEIGHT_CHOICES)))]
    return {"reference_boxes": gt, "proposals": proposals, "weights": _w(*weights)}


ENCODE_BOXES = Exercise(
    name="encode_boxes",
    reference=_coder.encode_boxes,
    cases=(
        Case("the lecture's example: proposal (0, 0, 10, 10), GT (2, 2, 12, 12)",
             {"reference_boxes": _t([[2, 2, 12, 12]]), "proposals": _t([[0, 0, 10, 10]])},
             expected=_t([[0.2, 0.2, 0.0, 0.0]]),
             note="the centre moves by 2 pixels, 2 / 10 of the proposal's width; same size, "
                  "so tw = th = log(1) = 0"),
        Case("a GT twice as large, same centre: tw = th = log 2",
             {"reference_boxes": _t([[-5, -5, 15, 15]]), "proposals": _t([[0, 0, 10, 10]])},
             expected=_t([[0.0, 0.0, _LOG(2), _LOG(2)]]),
             note="the shift is between the centres, not the corners; sizes go in log space"),
        Case("a 20 x 10 proposal: x is divided by the width, y by the height",
             {"reference_boxes": _GT, "proposals": _PROPOSAL},
             expected=_t([_GT_CODE]),
             note="centres (10, 5) -> (14, 8): tx = 4 / 20, ty = 3 / 10, tw = log(24 / 20), "
                  "th = log(16 / 10); always divide by the proposal's size, not the GT's"),
        Case("Faster R-CNN's box-head weights (10, 10, 5, 5)",
             {"reference_boxes": _GT, "proposals": _PROPOSAL, "weights": _w(10, 10, 5, 5)},
             expected=_t([[10 * _GT_CODE[0], 10 * _GT_CODE[1], 5 * _GT_CODE[2],
                           5 * _GT_CODE[3]]]),
             note="each target is multiplied by its weight: (wx * tx, wy * ty, ww * tw, wh * th)"),
        Case("identical boxes give all zeros",
             {"reference_boxes": _t([[3, 4, 17, 9]]), "proposals": _t([[3, 4, 17, 9]]),
              "weights": _w(10, 10, 5, 5)},
             expected=_t([[0.0, 0.0, 0.0, 0.0]])),
        Case("a batch of three pairs: row i codes proposal i onto GT i",
             {"reference_boxes": _t([[2, 2, 12, 12], [-5, -5, 15, 15], [2, 0, 26, 16]]),
              "proposals": _t([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 20, 10]])},
             expected=_t([[0.2, 0.2, 0, 0], [0, 0, _LOG(2), _LOG(2)], _GT_CODE]),
             note="work on whole columns (boxes[:, 0] ...) and stack to (N, 4)"),
        Case("a GT smaller than the proposal and to its upper left: negative codes",
             {"reference_boxes": _t([[10, 20, 30, 30]]), "proposals": _t([[20, 20, 60, 60]]),
              "weights": _w(2, 2, 1, 1)},
             expected=_t([[2 * -20 / 40, 2 * -15 / 40, _LOG(0.5), _LOG(0.25)]])),
        Case("no boxes give shape (0, 4)",
             {"reference_boxes": torch.zeros(0, 4), "proposals": torch.zeros(0, 4)},
             expected=torch.zeros(0, 4),
             note="empty input must give an empty (0, 4) result, not an error"),
    ),
    random_case=_random_encode_case,
    atol=1e-5,
    rtol=1e-4,
    hint="centres and sizes first: px = x1 + 0.5 * pw; then tx = wx * (gx - px) / pw and "
         "tw = ww * log(gw / pw), likewise for y and h.",
)

# ---------------------------------------------------------------------------------------------
# decode_boxes
# ---------------------------------------------------------------------------------------------

_CLIP = _coder.BBOX_XFORM_CLIP  # log(1000 / 16): a box grows at most 62.5-fold


def _random_decode_case(rng: np.random.Generator) -> dict:
    n, classes = int(rng.integers(0, 8)), int(rng.integers(1, 3))
    _, boxes = _random_pairs(rng, n)
    weights = _WEIGHT_CHOICES[int(rng.integers(len(_WEIGHT_CHOICES)))]
    codes = rng.normal(0, 0.5, size=(n, classes, 4)) * np.array(weights)
    if n and rng.random() < 0.5:  # a wild width or height, beyond the clamp
        codes[rng.integers(n), rng.integers(classes), 2 + rng.integers(2)] = \
            weights[2] * rng.uniform(5, 12)
    return {"rel_codes": torch.tensor(codes.reshape(n, 4 * classes).round(3),
                                      dtype=torch.float32),
            "boxes": boxes, "weights": _w(*weights)}


DECODE_BOXES = Exercise(
    name="decode_boxes",
    reference=_coder.decode_boxes,
    cases=(
        Case("the lecture's example backwards: (0.2, 0.2, 0, 0) on (0, 0, 10, 10)",
             {"rel_codes": _t([[0.2, 0.2, 0.0, 0.0]]), "boxes": _t([[0, 0, 10, 10]])},
             expected=_t([[2, 2, 12, 12]]),
             note="the centre moves by tx * width; exp(0) = 1 keeps the size"),
        Case("tw = th = log 2 doubles the box around its centre",
             {"rel_codes": _t([[0.0, 0.0, _LOG(2), _LOG(2)]]), "boxes": _t([[0, 0, 10, 10]])},
             expected=_t([[-5, -5, 15, 15]]),
             note="width = pw * exp(tw): decode the log back with exp"),
        Case("a 20 x 10 box with the weights (10, 10, 5, 5)",
             {"rel_codes": _t([[10 * _GT_CODE[0], 10 * _GT_CODE[1], 5 * _GT_CODE[2],
                                5 * _GT_CODE[3]]]),
              "boxes": _PROPOSAL, "weights": _w(10, 10, 5, 5)},
             expected=_GT,
             note="divide each code by its weight first; x goes with the width, y with the "
                  "height"),
        Case("a huge tw is clamped at log(1000 / 16): the width grows 62.5-fold, not e^10",
             {"rel_codes": _t([[0.0, 0.0, 10.0, 0.0]]), "boxes": _t([[0, 0, 16, 16]])},
             expected=_t([[8 - 500, 0, 8 + 500, 16]]),
             note="clamp tw and th at bbox_xform_clip before exp, or early training "
                  "predictions overflow to inf"),
        Case("the clamp applies to tw / ww, after dividing by the weight",
             {"rel_codes": _t([[0.0, 0.0, 25.0, 5.0 * _LOG(2)]]), "boxes": _t([[0, 0, 16, 16]]),
              "weights": _w(10, 10, 5, 5)},
             expected=_t([[8 - 500, -8, 8 + 500, 24]]),
             note="25 / 5 = 5 > log(62.5) = 4.14 is clamped; 5 log 2 / 5 = log 2 is not"),
        Case("a smaller bbox_xform_clip: log 2 lets a box at most double",
             {"rel_codes": _t([[0.0, 0.0, 3.0, -3.0]]), "boxes": _t([[0, 0, 10, 10]]),
              "bbox_xform_clip": _LOG(2)},
             expected=_t([[-5, 5 - 5 * math.exp(-3), 15, 5 + 5 * math.exp(-3)]]),
             note="only the upper side is clamped: a negative th still shrinks the box"),
        Case("two classes: (N, 8) codes give two boxes per row, both from the same box",
             {"rel_codes": _t([[0.2, 0.2, 0, 0, 0, 0, _LOG(2), _LOG(2)]]),
              "boxes": _t([[0, 0, 10, 10]])},
             expected=_t([[2, 2, 12, 12, -5, -5, 15, 15]]),
             note="reshape (N, 4 * C) -> (N, C, 4), decode, and reshape back"),
        Case("a batch of three boxes, mixed codes",
             {"rel_codes": _t([[0.1, -0.2, 0.3, -0.4], [0, 0, 0, 0], [-1.0, 0.5, 0.0, 1.0]]),
              "boxes": _t([[0, 0, 10, 20], [5, 5, 6, 6], [100, 50, 140, 60]])}),
        Case("no boxes give shape (0, 4)",
             {"rel_codes": torch.zeros(0, 4), "boxes": torch.zeros(0, 4)},
             expected=torch.zeros(0, 4)),
    ),
    random_case=_random_decode_case,
    atol=1e-4,
    rtol=1e-5,
    hint="x = px + pw * tx / wx; w = pw * exp(min(tw / ww, bbox_xform_clip)); the box is "
         "(x - w / 2, y - h / 2, x + w / 2, y + h / 2).",
)

# ---------------------------------------------------------------------------------------------
# roi_pool
# ---------------------------------------------------------------------------------------------

# A readable 4 x 4 feature map: its 2 x 2 max pool is [[8, 9], [7, 6]].
LECTURE_FEATURE_MAP = _img([[1, 8, 2, 0],
                            [3, 5, 9, 4],
                            [7, 0, 6, 2],
                            [4, 3, 1, 5]])


def _rois(*rows) -> torch.Tensor:
    """RoIs ``(batch_index, x1, y1, x2, y2)`` as a ``Tensor[K, 5]``."""
    return _t(rows) if rows else torch.zeros(0, 5)


def _random_rois(rng: np.random.Generator, n_images: int, height: int, width: int,
                 scale: float, aligned_offset: float = 0.0, margin: float = 0.0) -> torch.Tensor:
    """Up to 5 random RoIs in image coordinates whose scaled corners lie in the feature map.

    Corners are drawn in feature-map cells (multiples of 0.05, never a whole number plus a
    half, so that rounding does not depend on the tie rule), then divided by ``scale``.
    """
    k = int(rng.integers(0, 6))
    rows = []
    for _ in range(k):
        corners = []
        for size in (width, height):
            lo = -1.0 + margin
            hi = size - margin - (1.0 if margin else 0.0)
            a, b = np.sort(rng.uniform(lo, max(hi, lo + 0.3), size=2))
            b = max(b, a + 0.1)
            corners.append((a, b))
        (x1, x2), (y1, y2) = corners
        cells = np.array([x1, y1, x2, y2]).round(2)
        frac = np.abs(cells - np.floor(cells) - 0.5)
        cells = np.where(frac < 0.02, cells + 0.03, cells)  # no .5 ties
        image = (cells + aligned_offset) / scale
        rows.append([int(rng.integers(n_images)), *image.tolist()])
    return torch.tensor(rows, dtype=torch.float32) if rows else torch.zeros(0, 5)


def _random_pool_case(rng: np.random.Generator) -> dict:
    n, c = int(rng.integers(1, 3)), int(rng.integers(1, 4))
    h, w = int(rng.integers(1, 8)), int(rng.integers(1, 8))
    scale = float(rng.choice([1.0, 0.5, 0.25]))
    return {"input": _randn(rng, n, c, h, w), "boxes": _random_rois(rng, n, h, w, scale),
            "output_size": int(rng.integers(1, 4)), "spatial_scale": scale}


ROI_POOL = Exercise(
    name="roi_pool",
    reference=_roi.roi_pool,
    cases=(
        Case("the lecture's 2 x 2 max pool of the whole 4 x 4 map",
             {"input": LECTURE_FEATURE_MAP, "boxes": _rois([0, 0, 0, 3, 3]), "output_size": 2},
             expected=_img([[8, 9], [7, 6]]),
             note="the box (0, 0, 3, 3) covers cells 0..3 inclusive: 4 x 4 cells, four 2 x 2 "
                  "bins"),
        Case("spatial_scale 0.5: the image box (0, 0, 6, 6) is the whole 4 x 4 map",
             {"input": LECTURE_FEATURE_MAP, "boxes": _rois([0, 0, 0, 6, 6]), "output_size": 2,
              "spatial_scale": 0.5},
             expected=_img([[8, 9], [7, 6]]),
             note="multiply the box by spatial_scale before anything else"),
        Case("a 2 x 3 region pooled to 1 x 1: its maximum",
             {"input": LECTURE_FEATURE_MAP, "boxes": _rois([0, 0, 2, 2, 3]), "output_size": 1},
             expected=_img([[7]])),
        Case("quantisation: (0.4, 0.6, 2.4, 2.2) is rounded to cells (0, 1, 2, 2)",
             {"input": LECTURE_FEATURE_MAP, "boxes": _rois([0, 0.4, 0.6, 2.4, 2.2]),
              "output_size": 2},
             expected=_img([[5, 9], [7, 6]]),
             note="RoI Pool rounds the box corners to whole cells: x1 0.4 -> 0, y1 0.6 -> 1, "
                  "x2 2.4 -> 2, y2 2.2 -> 2"),
        Case("a half is rounded away from zero, as C's round(): 2.5 -> 3",
             {"input": LECTURE_FEATURE_MAP, "boxes": _rois([0, 2.5, 1, 3, 1]),
              "output_size": 1},
             expected=_img([[4]]),
             note="torchvision rounds with C's round(): x1 = 2.5 -> 3, so the RoI is the one "
                  "cell (row 1, col 3) = 4; torch.round (half to even) would give 2 and read 9"),
        Case("uneven bins: 3 cells split into 2 bins overlap in the middle cell",
             {"input": LECTURE_FEATURE_MAP, "boxes": _rois([0, 0, 0, 2, 0]),
              "output_size": (1, 2)},
             expected=_img([[8, 8]]),
             note="bin j covers floor(j * 1.5) .. ceil((j + 1) * 1.5) - 1: cells 0..1 and 1..2"),
        Case("a box hanging off the map: bins outside give 0",
             {"input": LECTURE_FEATURE_MAP, "boxes": _rois([0, 2, 2, 5, 5]), "output_size": 2},
             expected=_img([[6, 0], [0, 0]]),
             note="clip the bins to the map; a bin with no cell inside is 0, not -inf"),
        Case("two images and three boxes: the first column picks the image",
             {"input": torch.stack([LECTURE_FEATURE_MAP[0], -LECTURE_FEATURE_MAP[0]]),
              "boxes": _rois([1, 0, 0, 3, 3], [0, 0, 0, 3, 3], [1, 1, 1, 2, 2]),
              "output_size": 2},
             expected=torch.tensor([[[[-1, 0], [0, -1]]], [[[8, 9], [7, 6]]],
                                    [[[-5, -9], [0, -6]]]], dtype=torch.float32),
             note="output k comes from input[boxes[k, 0]]; for a 2-cell box each bin is 1 cell"),
        Case("several channels are pooled independently",
             {"input": torch.arange(32, dtype=torch.float32).reshape(1, 2, 4, 4),
              "boxes": _rois([0, 0, 0, 3, 1]), "output_size": 2}),
        Case("no boxes give shape (0, C, PH, PW)",
             {"input": LECTURE_FEATURE_MAP, "boxes": _rois(), "output_size": 2},
             expected=torch.zeros(0, 1, 2, 2)),
    ),
    random_case=_random_pool_case,
    atol=1e-5,
    hint="round the scaled corners (C's round); the RoI covers cells x1..x2 inclusive; bin j "
         "takes cells floor(j * size / bins) .. ceil((j + 1) * size / bins) - 1, clipped to "
         "the map; take the max in each bin (0 if empty).",
)

# ---------------------------------------------------------------------------------------------
# roi_align
# ---------------------------------------------------------------------------------------------

# value = 4 * row + col: bilinear interpolation of this map is exact, so a sampling point
# (y, x) inside the map reads 4 y + x and the mean over a bin is the value at its centre.
LINEAR_FEATURE_MAP = torch.arange(16, dtype=torch.float32).reshape(1, 1, 4, 4)


def _random_align_case(rng: np.random.Generator) -> dict:
    n, c = int(rng.integers(1, 3)), int(rng.integers(1, 4))
    h, w = int(rng.integers(1, 8)), int(rng.integers(1, 8))
    scale = float(rng.choice([1.0, 0.5, 0.25]))
    aligned = bool(rng.random() < 0.5)
    ratio = int(rng.choice([-1, 1, 2, 3]))
    out = int(rng.integers(1, 4))
    while True:
        # sampling points stay 0.1 cell clear of -1 and of the far border, where the rules
        # change abruptly (0 outside, the border cell inside)
        boxes = _random_rois(rng, n, h, w, scale, 0.5 if aligned else 0.0, margin=0.1)
        cells = boxes[:, 1:].double() * scale - (0.5 if aligned else 0.0)
        sizes = (cells[:, 2:] - cells[:, :2]) / out
        if not aligned:
            sizes = torch.maximum(sizes, torch.tensor(1.0 / out, dtype=torch.float64))
        near_int = (sizes - sizes.round()).abs() < 1e-3
        # adaptive grids use ceil(roi size / out): stay clear of whole numbers
        if ratio > 0 or not bool((near_int & (sizes > 1e-3)).any()):
            break
    return {"input": _randn(rng, n, c, h, w), "boxes": boxes, "output_size": out,
            "spatial_scale": scale, "sampling_ratio": ratio, "aligned": aligned}


ROI_ALIGN = Exercise(
    name="roi_align",
    reference=_roi.roi_align,
    cases=(
        Case("the lecture's box (0, 0, 2, 2), one bin, 2 x 2 samples: mean of 4 reads = 5",
             {"input": LINEAR_FEATURE_MAP, "boxes": _rois([0, 0, 0, 2, 2]), "output_size": 1,
              "sampling_ratio": 2},
             expected=_img([[5.0]]),
             note="samples at the centres of a 2 x 2 split of the bin: (0.5, 0.5), (0.5, 1.5), "
                  "(1.5, 0.5), (1.5, 1.5); on this map a point (y, x) reads 4 y + x"),
        Case("aligned=True shifts the box by half a cell: samples at 0 and 1, mean 2.5",
             {"input": LINEAR_FEATURE_MAP, "boxes": _rois([0, 0, 0, 2, 2]), "output_size": 1,
              "sampling_ratio": 2, "aligned": True},
             expected=_img([[2.5]]),
             note="with aligned=True subtract 0.5 from the scaled corners: cell i is centred "
                  "at i + 0.5 in the image"),
        Case("2 x 2 bins of the box (0, 0, 3, 3): the bin centres 0.75 and 2.25",
             {"input": LINEAR_FEATURE_MAP, "boxes": _rois([0, 0, 0, 3, 3]), "output_size": 2,
              "sampling_ratio": 2},
             expected=_img([[3.75, 5.25], [9.75, 11.25]]),
             note="bins are real-valued: 1.5 cells each, no rounding"),
        Case("spatial_scale 0.5: the image box (0, 0, 6, 6) is the same region",
             {"input": LINEAR_FEATURE_MAP, "boxes": _rois([0, 0, 0, 6, 6]), "output_size": 2,
              "spatial_scale": 0.5, "sampling_ratio": 2},
             expected=_img([[3.75, 5.25], [9.75, 11.25]])),
        Case("a sub-pixel box: RoI Align reads 8.5 where RoI Pool would round to cells",
             {"input": LINEAR_FEATURE_MAP, "boxes": _rois([0, 1.2, 1.2, 1.7, 1.7]),
              "output_size": 1, "sampling_ratio": 1},
             expected=_img([[8.5]]),
             note="no rounding: with aligned=False a box smaller than a cell is enlarged to "
                  "one cell from its corner (1.2, 1.2), so the one sample is at (1.7, 1.7)"),
        Case("the same sub-pixel box with aligned=True: no enlargement",
             {"input": LINEAR_FEATURE_MAP, "boxes": _rois([0, 1.2, 1.2, 1.7, 1.7]),
              "output_size": 1, "sampling_ratio": 1, "aligned": True},
             expected=_img([[4.75]]),
             note="(0.7, 0.7, 1.2, 1.2) after the shift; its centre (0.95, 0.95) reads 4.75"),
        Case("sampling_ratio 1 and 2 differ on a map that is not linear",
             {"input": LECTURE_FEATURE_MAP, "boxes": _rois([0, 0.5, 0.5, 2.5, 2.5]),
              "output_size": 2, "sampling_ratio": 1},
             expected=_img([[5.0, 9.0], [0.0, 6.0]]),
             note="1 x 1-cell bins centred on whole cells: one sample per bin reads exactly "
                  "cells (1, 1), (1, 2), (2, 1), (2, 2)"),
        Case("sampling_ratio 2 on the same box: 4 samples per bin",
             {"input": LECTURE_FEATURE_MAP, "boxes": _rois([0, 0.5, 0.5, 2.5, 2.5]),
              "output_size": 2, "sampling_ratio": 2}),
        Case("adaptive sampling (sampling_ratio=-1): ceil(roi size / bins) samples per axis",
             {"input": LECTURE_FEATURE_MAP, "boxes": _rois([0, 0, 0, 3, 1.5]),
              "output_size": (1, 2), "sampling_ratio": -1},
             note="this box is 3 x 1.5 cells: 2 x 2 samples in each of the 1 x 2 bins"),
        Case("points beyond the map: the border cell within one cell, 0 further out",
             {"input": LINEAR_FEATURE_MAP, "boxes": _rois([0, 2, 2, 6, 6]), "output_size": 2,
              "sampling_ratio": 2},
             expected=_img([[13.75, 0.0], [0.0, 0.0]]),
             note="samples at 2.5 and 3.5: 3.5 is past the last row and reads row 3 (mean 2.75 "
                  "per axis, 4 * 2.75 + 2.75); the other bins sample at 4.5 and 5.5 and read 0"),
        Case("two images, two channels: the first column picks the image",
             {"input": torch.cat([LINEAR_FEATURE_MAP, -LINEAR_FEATURE_MAP], dim=1).repeat(
                 2, 1, 1, 1) * torch.tensor([1.0, 10.0])[:, None, None, None],
              "boxes": _rois([1, 0, 0, 2, 2], [0, 0, 0, 2, 2]), "output_size": 1,
              "sampling_ratio": 2},
             expected=torch.tensor([[[[50.0]], [[-50.0]]], [[[5.0]], [[-5.0]]]])),
        Case("no boxes give shape (0, C, PH, PW)",
             {"input": LINEAR_FEATURE_MAP, "boxes": _rois(), "output_size": 2,
              "sampling_ratio": 2},
             expected=torch.zeros(0, 1, 2, 2)),
    ),
    random_case=_random_align_case,
    atol=1e-5,
    rtol=1e-5,
    hint="no rounding: bin size = roi size / bins; sample at start + (i + 0.5) * bin / grid, "
         "read each point by bilinear interpolation, average; aligned=True subtracts 0.5 "
         "from the scaled corners.",
)

EXERCISES: dict[str, Exercise] = {
    ex.name: ex for ex in (ENCODE_BOXES, DECODE_BOXES, ROI_POOL, ROI_ALIGN)
}
