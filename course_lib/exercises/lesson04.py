"""Lesson 04 exercises: SSD's default boxes, hard negative mining, YOLOv1's target and decoding.

Each table starts with the lecture's examples worked by hand (the 2 + 2 * len(ratios) default
boxes of a 1 x 1 map, the centres ``(j + 0.5) / f`` of a 2 x 2 map, one positive with its three
hardest negatives, one box in a 2 x 2 YOLO grid), then the edge cases that separate a correct
answer from an almost-correct one (clipping, an image without positives, a centre exactly on a
cell border, two boxes in one cell, a threshold exactly equal to a score). The same tables drive
the notebook's ``check(...)`` cells, the tests and the grader; the grader adds fresh random
cases drawn by ``random_case``.

Inputs cross the grader as tensors, numbers and strings, and outputs come back as tensors or
tuples of them, so three exercises are thin wrappers of their ``course_lib`` function, stated in
their docstrings:

* :func:`default_boxes` takes ``feature_sizes`` as a ``Tensor[L, 2]``, ``image_size`` as
  ``tensor([H, W])`` and ``aspect_ratios`` as a ``Tensor[L, R]`` (the same number R of ratios
  on every level, possibly 0); :func:`course_lib.models.ssd.default_boxes` takes sequences.
* :func:`yolo_encode` takes one image's ``boxes`` and ``labels`` instead of a target dict and
  returns the ``(S, S, B*5 + C)`` tensor.
* :func:`yolo_decode` decodes one image's ``(S, S, B*5 + C)`` tensor and returns
  ``(boxes, scores, labels)`` instead of a dict.

``image_size`` of the YOLO exercises is an int (square image) or ``tensor([H, W])``.
:func:`course_lib.models.ssd.hard_negative_mining` is used as it is.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from course_lib.exercises.core import Case, Exercise
from course_lib.models import ssd as _ssd
from course_lib.models import yolo as _yolo

__all__ = ["EXERCISES", "default_boxes", "yolo_decode", "yolo_encode"]


def _t(rows, dtype=torch.float32) -> torch.Tensor:
    return torch.tensor(rows, dtype=dtype)


def _size(h: int, w: int) -> torch.Tensor:
    """A ``(H, W)`` pair (feature map or image size) as an int64 tensor."""
    return torch.tensor([h, w], dtype=torch.int64)


def _image_size(image_size: int | Tensor) -> int | tuple[int, int]:
    """An int stays an int; ``tensor([H, W])`` becomes ``(H, W)``."""
    if isinstance(image_size, Tensor):
        height, width = (int(v) for v in image_size.tolist())
        return height, width
    return image_size


def _random_image_size(rng: np.random.Generator) -> int | Tensor:
    if rng.random() < 0.5:
        return int(rng.choice([64, 96, 128]))
    return _size(int(rng.choice([64, 96, 128])), int(rng.choice([64, 96, 128, 160])))


# ---------------------------------------------------------------------------------------------
# default_boxes
# ---------------------------------------------------------------------------------------------


def default_boxes(feature_sizes: Tensor, image_size: Tensor, aspect_ratios: Tensor,
                  min_ratio: float = 0.15, max_ratio: float = 0.9,
                  clip: bool = True) -> Tensor:
    """SSD's default boxes, :func:`course_lib.models.ssd.default_boxes` with tensor inputs.

    Args:
        feature_sizes (Tensor[L, 2]): int64, the ``(H, W)`` of each feature map, largest first.
        image_size (Tensor[2]): ``(height, width)`` of the image in pixels.
        aspect_ratios (Tensor[L, R]): the ratios ``r`` of each level (each adds ``r`` and
            ``1/r``); R may be 0 (the two squares only).
        min_ratio: ``s_min``, the scale of the first level.
        max_ratio: ``s_max``, the scale of the last level.
        clip: clip the widths and heights (not the centres) to ``[0, 1]`` of the image.

    Returns:
        Tensor[D, 4]: ``(x1, y1, x2, y2)`` pixels, level after level, position-major (row,
        then column), the ``K = 2 + 2R`` boxes of a position consecutive: ``s_k``,
        ``sqrt(s_k s_{k+1})``, then ``r`` and ``1/r`` for each ratio.
    """
    sizes = [tuple(int(v) for v in row) for row in feature_sizes.tolist()]
    ratios = [tuple(float(r) for r in row) for row in aspect_ratios.tolist()]
    height, width = (int(v) for v in image_size.tolist())
    return _ssd.default_boxes(sizes, (height, width), aspect_ratios=ratios,
                              min_ratio=float(min_ratio), max_ratio=float(max_ratio),
                              clip=bool(clip))


_R2 = math.sqrt(2.0)


def _corners(cx: float, cy: float, w: float, h: float) -> list[float]:
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


# One 1 x 1 level on a 100 x 100 image, s_min = 0.2, s_max = 0.8: s = 0.2, s' = sqrt(0.16) = 0.4;
# ratio 2: (0.2 sqrt 2, 0.2 / sqrt 2) and its transpose.
_ONE_CELL = _t([_corners(50, 50, 20, 20), _corners(50, 50, 40, 40),
                _corners(50, 50, 20 * _R2, 20 / _R2), _corners(50, 50, 20 / _R2, 20 * _R2)])
# A 2 x 2 level on a 100 (H) x 200 (W) image, no ratios: the two squares at each position,
# centres x in (50, 150), y in (25, 75); widths 0.2 * 200 and 0.4 * 200, heights 0.2 * 100 ...
_TWO_BY_TWO = _t([box for cy in (25, 75) for cx in (50, 150)
                  for box in (_corners(cx, cy, 40, 20), _corners(cx, cy, 80, 40))])


def _random_default_boxes_case(rng: np.random.Generator) -> dict:
    levels = int(rng.integers(1, 4))
    side = [int(v) for v in sorted(rng.integers(1, 5, size=levels), reverse=True)]
    other = [max(1, s + int(rng.integers(-1, 2))) for s in side]
    num_ratios = int(rng.integers(0, 3))
    ratios = rng.choice([2.0, 3.0, 1.5], size=(levels, num_ratios))
    return {"feature_sizes": torch.tensor(list(zip(side, other, strict=True)), dtype=torch.int64),
            "image_size": _size(int(rng.integers(64, 321)), int(rng.integers(64, 321))),
            "aspect_ratios": torch.tensor(ratios, dtype=torch.float32).reshape(levels, num_ratios),
            "min_ratio": float(rng.choice([0.1, 0.15, 0.2, 0.3])),
            "max_ratio": float(rng.choice([0.6, 0.9, 0.95])),
            "clip": bool(rng.random() < 0.5)}


DEFAULT_BOXES = Exercise(
    name="default_boxes",
    reference=default_boxes,
    cases=(
        Case("one 1 x 1 level, s_min 0.2, s_max 0.8, ratio 2: the four boxes of the lecture",
             {"feature_sizes": _size(1, 1)[None], "image_size": _size(100, 100),
              "aspect_ratios": _t([[2.0]]), "min_ratio": 0.2, "max_ratio": 0.8},
             expected=_ONE_CELL,
             note="K = 2 + 2 * 1: the square s = 0.2, the extra square sqrt(0.2 * 0.8) = 0.4, "
                  "then (s sqrt 2, s / sqrt 2) for r = 2 and its transpose for r = 1/2; all "
                  "centred at (0.5, 0.5) of the image"),
        Case("a 2 x 2 level on a 100 x 200 (H x W) image: centres (j + 0.5) / f, row by row",
             {"feature_sizes": _size(2, 2)[None], "image_size": _size(100, 200),
              "aspect_ratios": torch.zeros(1, 0), "min_ratio": 0.2, "max_ratio": 0.8},
             expected=_TWO_BY_TWO,
             note="positions (y0, x0), (y0, x1), (y1, x0), (y1, x1), the K boxes of a position "
                  "together; x fractions are multiplied by the width, y fractions by the height"),
        Case("clip: a box wider than the image has its width clipped to 1, its centre kept",
             {"feature_sizes": _size(1, 1)[None], "image_size": _size(100, 100),
              "aspect_ratios": _t([[4.0]]), "min_ratio": 0.6, "max_ratio": 0.6, "clip": True},
             expected=_t([_corners(50, 50, 60, 60), _corners(50, 50, 60, 60),
                          _corners(50, 50, 100, 30), _corners(50, 50, 30, 100)]),
             note="r = 4 gives w = 0.6 * 2 = 1.2 of the image: clipped to 1.0 before the "
                  "corners are computed"),
        Case("clip = False: the same box reaches outside the image",
             {"feature_sizes": _size(1, 1)[None], "image_size": _size(100, 100),
              "aspect_ratios": _t([[4.0]]), "min_ratio": 0.6, "max_ratio": 0.6,
              "clip": False},
             expected=_t([_corners(50, 50, 60, 60), _corners(50, 50, 60, 60),
                          _corners(50, 50, 120, 30), _corners(50, 50, 30, 120)]),
             note="without clipping, (x1, x2) = (-10, 110): corners are never clamped"),
        Case("clip=True does not clamp corners: boxes around (25, 25) still stick out",
             {"feature_sizes": _size(2, 2)[None], "image_size": _size(100, 100),
              "aspect_ratios": _t([[2.0]]), "min_ratio": 0.5, "max_ratio": 0.9},
             note="sizes 0.5, sqrt(0.45) and 0.5 sqrt 2 are all below 1, so nothing is clipped, "
                  "though the boxes of the top-left position start at x1 < 0"),
        Case("two levels (2 x 2 then 1 x 1), SSD's scales 0.15, 0.9 and s_3 = 1.0",
             {"feature_sizes": _t([[2, 2], [1, 1]], dtype=torch.int64),
              "image_size": _size(300, 300), "aspect_ratios": _t([[2.0], [2.0]])},
             note="s_k = s_min + (s_max - s_min)(k - 1)/(m - 1); the last level's extra box "
                  "is sqrt(0.9 * 1.0); the 16 boxes of level 1 come before the 4 of level 2"),
        Case("three levels of different shapes and two ratios per level",
             {"feature_sizes": _t([[3, 4], [2, 2], [1, 1]], dtype=torch.int64),
              "image_size": _size(120, 160), "aspect_ratios": _t([[2.0, 3.0]] * 3),
              "clip": False}),
    ),
    random_case=_random_default_boxes_case,
    atol=1e-3,
    rtol=1e-5,
    hint="per level k: sizes [s_k, s_k], [s', s'] with s' = sqrt(s_k s_{k+1}), then "
         "(s_k sqrt r, s_k / sqrt r) and its transpose per ratio; centres ((x + 0.5) / W, "
         "(y + 0.5) / H) row by row; clip the sizes, then corners times (width, height).",
)

# ---------------------------------------------------------------------------------------------
# hard_negative_mining
# ---------------------------------------------------------------------------------------------

_LOSS = _t([[0.5, 2.0, 0.1, 0.9, 0.3, 0.7]])
_ONE_POSITIVE = _t([[0, 1, 0, 0, 0, 0]], dtype=torch.int64)


def _mask(*rows: str) -> torch.Tensor:
    """``"TT.F"``-style rows of a bool mask: ``T`` kept, anything else not."""
    return torch.tensor([[c == "T" for c in row] for row in rows])


def _random_mining_case(rng: np.random.Generator) -> dict:
    b, d = int(rng.integers(1, 4)), int(rng.integers(4, 21))
    labels = np.where(rng.random((b, d)) < 0.2, rng.integers(1, 4, size=(b, d)), 0)
    loss = np.stack([rng.permutation(d) for _ in range(b)]) * 0.25 + rng.uniform(0, 0.1, (b, d))
    return {"loss": torch.tensor(loss, dtype=torch.float32),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "neg_pos_ratio": int(rng.integers(1, 4))}


HARD_NEGATIVE_MINING = Exercise(
    name="hard_negative_mining",
    reference=_ssd.hard_negative_mining,
    cases=(
        Case("1 positive: it and its 3 hardest negatives",
             {"loss": _LOSS, "labels": _ONE_POSITIVE},
             expected=_mask("TTFTFT"),
             note="box 1 is positive (kept whatever its loss); among the negatives, losses 0.9, "
                  "0.7 and 0.5 are the 3 = 3 * 1 highest; the positive's own loss 2.0 does "
                  "not take a negative's place"),
        Case("an image with no positive keeps nothing",
             {"loss": _LOSS, "labels": torch.zeros(1, 6, dtype=torch.int64)},
             expected=_mask("FFFFFF"),
             note="3 * 0 = 0 negatives: a background image adds nothing to the class loss"),
        Case("neg_pos_ratio = 1 with 2 positives (classes 2 and 1): 2 negatives",
             {"loss": _LOSS, "labels": _t([[0, 2, 0, 0, 1, 0]], dtype=torch.int64),
              "neg_pos_ratio": 1},
             expected=_mask("FTFTTT"),
             note="every label > 0 is positive, whatever its class; the 2 hardest negatives "
                  "have losses 0.9 and 0.7"),
        Case("fewer negatives than asked: all of them",
             {"loss": _t([[0.2, 0.4, 0.6, 0.8]]), "labels": _t([[1, 0, 1, 0]], dtype=torch.int64)},
             expected=_mask("TTTT"),
             note="3 * 2 = 6 negatives asked, only 2 exist"),
        Case("a batch of 2: negatives are mined per image, with each image's positives",
             {"loss": torch.cat([_LOSS, _t([[3.0, 4.0, 5.0, 6.0, 7.0, 8.0]])]),
              "labels": torch.cat([_ONE_POSITIVE, torch.zeros(1, 6, dtype=torch.int64)])},
             expected=_mask("TTFTFT", "FFFFFF"),
             note="image 1 has no positive, so none of its (high) losses is kept; mining over "
                  "the whole batch would take them instead of image 0's"),
        Case("a batch of 2 with 1 and 2 positives",
             {"loss": _t([[0.5, 2.0, 0.1, 0.9, 0.3, 0.7, 0.2, 0.6],
                          [0.3, 0.1, 0.8, 0.2, 0.9, 0.4, 0.5, 0.7]]),
              "labels": _t([[0, 1, 0, 0, 0, 0, 0, 0], [3, 0, 0, 0, 0, 1, 0, 0]],
                           dtype=torch.int64),
              "neg_pos_ratio": 2}),
    ),
    random_case=_random_mining_case,
    exact=True,
    hint="per image: P = number of labels > 0; set the positives' losses to -inf, sort the "
         "losses in descending order and keep the first ratio * P; OR that with the positives.",
)

# ---------------------------------------------------------------------------------------------
# yolo_encode
# ---------------------------------------------------------------------------------------------


def yolo_encode(boxes: Tensor, labels: Tensor, S: int, B: int, C: int,
                image_size: int | Tensor) -> Tensor:
    """YOLOv1's target of one image, :func:`course_lib.models.yolo.yolo_encode` of one dict.

    Args:
        boxes (Tensor[G, 4]): ``(x1, y1, x2, y2)`` pixels.
        labels (Tensor[G]): int64, 1..C.
        S: grid size.
        B: boxes predicted per cell.
        C: object classes.
        image_size: an int (square image) or ``tensor([H, W])``.

    Returns:
        Tensor[S, S, B*5 + C]: in the responsible cell of each kept box (the largest per cell),
        ``(x, y, w, h, 1)`` in each of the B slots and the one-hot class; zeros elsewhere.
    """
    return _yolo.yolo_encode({"boxes": boxes, "labels": labels}, S, B, C,
                             _image_size(image_size))


def _cell(S: int, D: int, values: dict) -> torch.Tensor:
    """An ``(S, S, D)`` zero tensor with ``values[(row, col)]`` written in those cells."""
    out = torch.zeros(S, S, D)
    for (row, col), v in values.items():
        out[row, col] = _t(v)
    return out


def _random_encode_case(rng: np.random.Generator) -> dict:
    S, B, C = int(rng.integers(1, 5)), int(rng.integers(1, 3)), int(rng.integers(1, 4))
    image_size = _random_image_size(rng)
    height, width = (image_size, image_size) if isinstance(image_size, int) else \
        tuple(int(v) for v in image_size.tolist())
    g = int(rng.integers(0, 5))
    while True:
        cx, cy = rng.uniform(0, width, g).round(1), rng.uniform(0, height, g).round(1)
        w, h = rng.uniform(4, width / 2, g).round(1), rng.uniform(4, height / 2, g).round(1)
        # centres clear of the cell borders, areas distinct
        fx, fy = (cx * S / width) % 1, (cy * S / height) % 1
        clear = (np.minimum(fx, 1 - fx) > 1e-3).all() and (np.minimum(fy, 1 - fy) > 1e-3).all()
        if clear and len(set((w * h).round(3).tolist())) == g:
            break
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1).reshape(g, 4)
    return {"boxes": torch.tensor(boxes, dtype=torch.float32),
            "labels": torch.tensor(rng.integers(1, C + 1, size=g), dtype=torch.int64),
            "S": S, "B": B, "C": C, "image_size": image_size}


# S = 2, B = 2, C = 2 on a 100 x 100 image: 50 px cells, D = 12 numbers per cell.
_ONE_BOX = _t([[10, 60, 50, 90]])  # centre (30, 75): row 1, col 0; x = 0.6, y = 0.5


YOLO_ENCODE = Exercise(
    name="yolo_encode",
    reference=yolo_encode,
    cases=(
        Case("one box, S = 2, B = 2, C = 2: centre (30, 75) lands in row 1, column 0",
             {"boxes": _ONE_BOX, "labels": _t([2], dtype=torch.int64), "S": 2, "B": 2, "C": 2,
              "image_size": 100},
             expected=_cell(2, 12, {(1, 0): [0.6, 0.5, 0.4, 0.3, 1.0] * 2 + [0.0, 1.0]}),
             note="x = 30 / 50 - 0 and y = 75 / 50 - 1 in the cell; w = 40 / 100 and "
                  "h = 30 / 100 of the image, not square-rooted; the same (x, y, w, h, 1) in "
                  "both predictor slots; label 2 is the one-hot index 5B + 1 = 11"),
        Case("a centre exactly on a cell border belongs to the cell right of it and below",
             {"boxes": _t([[30, 30, 70, 70]]), "labels": _t([1], dtype=torch.int64), "S": 2,
              "B": 2, "C": 2, "image_size": 100},
             expected=_cell(2, 12, {(1, 1): [0.0, 0.0, 0.4, 0.4, 1.0] * 2 + [1.0, 0.0]}),
             note="row = floor(50 * 2 / 100) = 1: cells are half-open, so x = y = 0"),
        Case("two boxes in the same cell: the larger one is kept",
             {"boxes": _t([[0, 0, 20, 20], [5, 5, 45, 45]]),
              "labels": _t([1, 2], dtype=torch.int64), "S": 2, "B": 2, "C": 2,
              "image_size": 100},
             expected=_cell(2, 12, {(0, 0): [0.5, 0.5, 0.4, 0.4, 1.0] * 2 + [0.0, 1.0]}),
             note="centres (10, 10) and (25, 25) share cell (0, 0); a cell describes one box, "
                  "the one with the largest area (not the first, not the last written)"),
        Case("no boxes: all zeros",
             {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
              "S": 2, "B": 2, "C": 2, "image_size": 100},
             expected=torch.zeros(2, 2, 12),
             note="a background image: every cell says 'no object' with confidence 0"),
        Case("a 100 x 200 (H x W) image: cells are 100 px wide and 50 px high",
             {"boxes": _t([[100, 0, 160, 40]]), "labels": _t([1], dtype=torch.int64), "S": 2,
              "B": 1, "C": 2, "image_size": _size(100, 200)},
             expected=_cell(2, 7, {(0, 1): [0.3, 0.4, 0.3, 0.4, 1.0, 1.0, 0.0]}),
             note="image_size is (height, width): x = 130 / 100 - 1, y = 20 / 50; w = 60 / 200, "
                  "h = 40 / 100"),
        Case("S = 3, B = 1, C = 3: three boxes in three cells",
             {"boxes": _t([[5, 10, 35, 50], [60, 20, 90, 40], [40, 70, 88, 95]]),
              "labels": _t([3, 1, 2], dtype=torch.int64), "S": 3, "B": 1, "C": 3,
              "image_size": 96}),
    ),
    random_case=_random_encode_case,
    atol=1e-5,
    rtol=1e-5,
    hint="per cell keep the largest box whose centre is in it; row = floor(cy S / H), "
         "col = floor(cx S / W); write (cx S / W - col, cy S / H - row, w / W, h / H, 1) in "
         "all B slots and 1 at index 5B + label - 1.",
)

# ---------------------------------------------------------------------------------------------
# yolo_decode
# ---------------------------------------------------------------------------------------------


def yolo_decode(output: Tensor, S: int, B: int, C: int, image_size: int | Tensor,
                conf_threshold: float = 0.0) -> tuple[Tensor, Tensor, Tensor]:
    """One image's YOLOv1 detections, :func:`course_lib.models.yolo.yolo_decode` as a tuple.

    Args:
        output (Tensor[S, S, B*5 + C]): network output (or target) of one image.
        S: grid size.
        B: boxes predicted per cell.
        C: object classes.
        image_size: an int (square image) or ``tensor([H, W])``.
        conf_threshold: smallest score kept (inclusive).

    Returns:
        ``(boxes, scores, labels)``: Tensor[K, 4] xyxy pixels, Tensor[K] scores
        ``conf * max_c p_c``, Tensor[K] int64 labels ``argmax_c p_c + 1``, in cell order (row
        by row, then predictor 0..B-1).
    """
    out = _yolo.yolo_decode(output, S, B, C, _image_size(image_size), conf_threshold)
    return out["boxes"], out["scores"], out["labels"]


# Cell (row 1, col 0) of an S = 2, B = 2, C = 2 output: two predictors, class probs (0.25, 0.75).
_OUTPUT = _cell(2, 12, {(1, 0): [0.5, 0.5, 0.4, 0.2, 0.8, 0.2, 0.6, 0.2, 0.2, 0.5, 0.25, 0.75]})


def _random_decode_case(rng: np.random.Generator) -> dict:
    S, B, C = int(rng.integers(1, 5)), int(rng.integers(1, 3)), int(rng.integers(1, 4))
    while True:
        boxes = rng.uniform(0, 1, (S, S, B, 5))
        boxes[..., 2:4] = rng.uniform(-0.1, 1, (S, S, B, 2))
        probs = rng.dirichlet(np.ones(C), size=(S, S))
        scores = boxes[..., 4] * probs.max(axis=-1, keepdims=True)
        threshold = float(rng.choice([0.0, rng.uniform(0, 0.5)]))
        if threshold == 0.0 or (np.abs(scores - threshold) > 1e-3).all():
            break
    output = np.concatenate([boxes.reshape(S, S, 5 * B), probs], axis=-1)
    return {"output": torch.tensor(output, dtype=torch.float32), "S": S, "B": B, "C": C,
            "image_size": _random_image_size(rng), "conf_threshold": threshold}


YOLO_DECODE = Exercise(
    name="yolo_decode",
    reference=yolo_decode,
    cases=(
        Case("one cell with two predictors (S = 2, B = 2, C = 2), threshold 0.1",
             {"output": _OUTPUT, "S": 2, "B": 2, "C": 2, "image_size": 100,
              "conf_threshold": 0.1},
             expected=(_t([[5, 65, 45, 85], [0, 70, 20, 90]]), _t([0.6, 0.375]),
                       _t([2, 2], dtype=torch.int64)),
             note="centre ((col + x) * 50, (row + y) * 50) = (25, 75) and (10, 80); size "
                  "(w * 100, h * 100); score = conf * max p = 0.8 * 0.75 and 0.5 * 0.75; "
                  "label = argmax + 1 = 2; the empty cells score 0 < 0.1"),
        Case("a score exactly equal to the threshold is kept",
             {"output": _OUTPUT, "S": 2, "B": 2, "C": 2, "image_size": 100,
              "conf_threshold": 0.375},
             expected=(_t([[5, 65, 45, 85], [0, 70, 20, 90]]), _t([0.6, 0.375]),
                       _t([2, 2], dtype=torch.int64)),
             note="score >= conf_threshold: 0.5 * 0.75 = 0.375 passes"),
        Case("every score below the threshold: empty results",
             {"output": _OUTPUT, "S": 2, "B": 2, "C": 2, "image_size": 100,
              "conf_threshold": 0.9},
             expected=(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64)),
             note="shapes (0, 4), (0,) and (0,), the labels still int64"),
        Case("a 100 x 200 (H x W) image: x is scaled by the width, y by the height",
             {"output": _OUTPUT, "S": 2, "B": 2, "C": 2, "image_size": _size(100, 200),
              "conf_threshold": 0.1},
             expected=(_t([[10, 65, 90, 85], [0, 70, 40, 90]]), _t([0.6, 0.375]),
                       _t([2, 2], dtype=torch.int64)),
             note="cells are 100 px wide and 50 px high; w is a fraction of 200 px"),
        Case("a negative width counts as 0; equal class probabilities give the lowest label",
             {"output": _cell(2, 12, {(0, 1): [0.5, 0.5, -0.2, 0.4, 1.0] + [0.0] * 5
                                      + [0.5, 0.5]}),
              "S": 2, "B": 2, "C": 2, "image_size": 100, "conf_threshold": 0.1},
             expected=(_t([[75, 5, 75, 45]]), _t([0.5]), _t([1], dtype=torch.int64)),
             note="w = -0.2 is clamped to 0 (a zero-width box at x = 75); argmax of a tie "
                  "takes the first class"),
        Case("the default threshold 0 keeps all S * S * B candidates, in cell order",
             {"output": _OUTPUT, "S": 2, "B": 2, "C": 2, "image_size": 100},
             note="row by row, then predictor 0..B-1 within a cell; empty cells give "
                  "zero-size boxes at the cell's corner with score 0"),
    ),
    random_case=_random_decode_case,
    atol=1e-4,
    rtol=1e-5,
    hint="for cell (row, col) and predictor b: centre ((col + x) W / S, (row + y) H / S), "
         "size (max(w, 0) W, max(h, 0) H); score conf * max_c p_c, label argmax_c p_c + 1; "
         "keep score >= conf_threshold.",
)

EXERCISES: dict[str, Exercise] = {
    ex.name: ex for ex in (DEFAULT_BOXES, HARD_NEGATIVE_MINING, YOLO_ENCODE, YOLO_DECODE)
}
