"""Lesson 08 exercises: Mask R-CNN's mask targets, mask loss and pasting, and panoptic quality.

Each table starts with small examples worked by hand (a proposal exactly on a 4 x 4
square object, one over half of it, a 2 x 2 mask pasted into a box, the binary cross-entropy
of the ground-truth class's channel, the panoptic quality of a 4 x 4 map with a match at IoU
2/3, a false positive, a false negative, things and stuff), then the edge cases that separate a
correct answer from an almost-correct one (no proposal, a box partly outside the image, a
probability of exactly 0.5, an IoU of exactly 1/2, a category found only in the prediction, a
predicted segment lying on unlabelled pixels). The same tables drive the notebook's
``check(...)`` cells, the tests and the grader; the grader adds fresh random cases drawn by
``random_case``.

Every exercise is graded against its ``course_lib`` function as it is, with its signature:
:func:`course_lib.masks.mask_targets`, :func:`course_lib.masks.paste_masks`,
:func:`course_lib.masks.mask_loss` and :func:`course_lib.panoptic.panoptic_quality`.

Inputs cross the grader as tensors, numbers and strings. A panoptic segmentation is a pair
``(panoptic, segments)`` with a list of segment dicts, so a ``panoptic_quality`` case writes
it as plain tensors: the map (``(H, W)``, or ``(B, H, W)`` for B images), a table of
``(id, category_id)`` rows and the tensor of the thing categories; the exercise's ``prepare``
(:func:`with_panoptic_pairs`) builds the pairs where the function runs. Its output, a dict of
numbers with a nested ``"per_class"`` dict, is compared key by key (``nan`` equals ``nan``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from course_lib import masks as _masks
from course_lib import panoptic as _panoptic
from course_lib.exercises.core import Case, Exercise

__all__ = ["EXERCISES", "PQ_EXAMPLE_GT", "PQ_EXAMPLE_PRED", "SQUARE", "THINGS",
           "with_panoptic_pairs"]


def _t(rows, dtype=torch.float32) -> Tensor:
    return torch.tensor(rows, dtype=dtype)


def _outer(profile) -> Tensor:
    """``profile[i] * profile[j]``: a separable 2-D pattern from its 1-D profile."""
    p = _t(profile)
    return p[:, None] * p[None, :]


def _placed(image_size: tuple[int, int], top: int, left: int, block: Tensor,
            dtype=torch.float32) -> Tensor:
    """A ``(1, H, W)`` image of zeros with ``block`` at rows ``top..``, columns ``left..``."""
    out = torch.zeros(1, *image_size, dtype=dtype)
    out[0, top:top + block.shape[0], left:left + block.shape[1]] = block.to(dtype)
    return out


def _random_rectangle_masks(rng: np.random.Generator, num: int, height: int,
                            width: int) -> Tensor:
    """``(num, H, W)`` uint8 masks: a random rectangle each, with a few holes."""
    masks = np.zeros((num, height, width), dtype=np.uint8)
    for i in range(num):
        x1, x2 = sorted(rng.integers(0, width + 1, size=2))
        y1, y2 = sorted(rng.integers(0, height + 1, size=2))
        masks[i, y1:y2 + 1, x1:x2 + 1] = 1
    masks[rng.random((num, height, width)) < 0.1] = 0
    return torch.tensor(masks)


def _random_boxes(rng: np.random.Generator, num: int, height: int, width: int) -> Tensor:
    """``(num, 4)`` float32 boxes that touch the image, some partly outside it."""
    x1 = rng.uniform(-width / 4, width - 1, size=num)
    y1 = rng.uniform(-height / 4, height - 1, size=num)
    w = rng.uniform(np.maximum(0.3, -x1), width, size=num)   # x2 = x1 + w >= 0
    h = rng.uniform(np.maximum(0.3, -y1), height, size=num)
    return torch.tensor(np.stack([x1, y1, x1 + w, y1 + h], axis=1), dtype=torch.float32)


# ---------------------------------------------------------------------------------------------
# mask_targets
# ---------------------------------------------------------------------------------------------

# An 8 x 8 image with one 4 x 4 square object: pixels 2..5 in both directions.
SQUARE = torch.zeros(1, 8, 8, dtype=torch.uint8)
SQUARE[0, 2:6, 2:6] = 1
# A second object: the 4 left columns (pixels 0..3) of the image.
_BAND = torch.zeros(1, 8, 8, dtype=torch.uint8)
_BAND[0, :, 0:4] = 1
_NO_INDEX = torch.zeros(0, dtype=torch.int64)


def _ints(*values: int) -> Tensor:
    return torch.tensor(values, dtype=torch.int64)


def _random_targets_case(rng: np.random.Generator) -> dict:
    g, height, width = int(rng.integers(1, 4)), int(rng.integers(4, 17)), int(rng.integers(4, 17))
    gt_masks = _random_rectangle_masks(rng, g, height, width)
    if rng.random() < 0.3:
        gt_masks = gt_masks.bool()
    p = int(rng.integers(0, 6))
    return {"gt_masks": gt_masks, "proposals": _random_boxes(rng, p, height, width),
            "matched_idxs": torch.tensor(rng.integers(0, g, size=p), dtype=torch.int64),
            "size": int(rng.integers(1, 8))}


MASK_TARGETS = Exercise(
    name="mask_targets",
    reference=_masks.mask_targets,
    cases=(
        Case("a proposal exactly on the 4 x 4 square object: all ones",
             {"gt_masks": SQUARE, "proposals": _t([[2, 2, 5, 5]]), "matched_idxs": _ints(0),
              "size": 4},
             expected=torch.ones(1, 4, 4),
             note="RoI Align with aligned=False puts the centre of pixel i at coordinate i, so "
                  "the object's pixels 2..5 span the box (2, 2, 5, 5); the 4 samples a side, at "
                  "2.375, 3.125, 3.875 and 4.625, all fall on the object"),
        Case("the box (2, 2, 6, 6), one pixel larger: its last row and column are 1/2",
             {"gt_masks": SQUARE, "proposals": _t([[2, 2, 6, 6]]), "matched_idxs": _ints(0),
              "size": 4},
             expected=_outer([1, 1, 1, 0.5])[None],
             note="samples at 2.5, 3.5, 4.5, 5.5: the last one is halfway between pixel 5 "
                  "(object) and pixel 6 (background), so bilinear interpolation gives 1/2; the "
                  "corner cell is 1/2 x 1/2"),
        Case("a proposal over the right half of the object: ones on the left, zeros on the right",
             {"gt_masks": SQUARE, "proposals": _t([[3.5, 1.5, 7.5, 5.5]]),
              "matched_idxs": _ints(0), "size": 4},
             expected=_t([[1, 1, 0, 0]] * 4)[None],
             note="one sample per cell, at x = 4, 5, 6, 7 and y = 2, 3, 4, 5 (whole pixels): "
                  "columns 4 and 5 are object, 6 and 7 are not. The target is in the "
                  "proposal's frame: its left half is the object's right half"),
        Case("two objects: each proposal reads the mask of the object it was matched to",
             {"gt_masks": torch.cat([SQUARE, _BAND]), "proposals": _t([[2, 2, 5, 5]] * 2),
              "matched_idxs": _ints(1, 0), "size": 4},
             expected=torch.stack([_t([[1, 7 / 8, 1 / 8, 0]] * 4), torch.ones(4, 4)]),
             note="proposal p uses gt_masks[matched_idxs[p]], not gt_masks[p]: the first one "
                  "reads the band of columns 0..3 (samples at x = 3.125 and 3.875 give 7/8 "
                  "and 1/8), the second the square"),
        Case("a large proposal on a 2 x 2 grid: each cell averages 4 x 4 samples",
             {"gt_masks": SQUARE, "proposals": _t([[0, 0, 8, 8]]), "matched_idxs": _ints(0),
              "size": 2},
             expected=_outer([5 / 8, 3 / 8])[None],
             note="sampling_ratio=-1 takes ceil(8 / 2) = 4 samples per cell side: 0.5, 1.5, 2.5, "
                  "3.5 read 0, 1/2, 1, 1 (mean 5/8) and 4.5 .. 7.5 read 1, 1/2, 0, 0 (mean 3/8); "
                  "one sample at each cell's centre would give 1 and 0"),
        Case("a proposal partly outside the image: outside samples read 0, or the border pixel",
             {"gt_masks": torch.ones(1, 8, 8, dtype=torch.uint8),
              "proposals": _t([[-4, -4, 4, 4]]), "matched_idxs": _ints(0), "size": 4},
             expected=_outer([0, 0.5, 1, 1])[None],
             note="2 samples per cell side, at -3.5, -2.5 | -1.5, -0.5 | 0.5, 1.5 | 2.5, 3.5. "
                  "RoI Align reads 0 more than one pixel outside (-3.5, -2.5, -1.5) but clamps a "
                  "sample within one pixel of the border onto it (-0.5 reads pixel 0)"),
        Case("no positive proposal (P = 0): an empty (0, M, M) target",
             {"gt_masks": SQUARE, "proposals": torch.zeros(0, 4), "matched_idxs": _NO_INDEX,
              "size": 5},
             expected=torch.zeros(0, 5, 5),
             note="an image may have no positive RoI: return shape (0, M, M), float, not an "
                  "error"),
        Case("five proposals, three objects on a 10 x 12 image, M = 7",
             {"gt_masks": _random_rectangle_masks(np.random.default_rng(8), 3, 10, 12),
              "proposals": _random_boxes(np.random.default_rng(9), 5, 10, 12),
              "matched_idxs": _ints(2, 0, 1, 1, 0), "size": 7},
             note="boxes of any size, some partly outside the image, each matched to its own "
                  "object"),
    ),
    random_case=_random_targets_case,
    hint="treat each GT mask as a one-channel image: rois = torch.cat([matched_idxs[:, None], "
         "proposals], dim=1) and roi_align(gt_masks[:, None].to(proposals), rois, (M, M), "
         "spatial_scale=1.0, sampling_ratio=-1, aligned=False)[:, 0].",
)

# ---------------------------------------------------------------------------------------------
# paste_masks
# ---------------------------------------------------------------------------------------------

_ONES = torch.ones(1, 2, 2)
_CORNER = _t([[[1, 0], [0, 0]]])   # one corner on: bilinear profiles 1, 3/4, 1/4, 0
_UP = [1, 0.75, 0.25, 0]           # 2 -> 4 pixels, align_corners=False
_GROWN = [0, 0.7, 1, 0.7, 0]       # [0, 1, 1, 0] (padded) -> 5 pixels


def _random_paste_case(rng: np.random.Generator) -> dict:
    n, m = int(rng.integers(0, 5)), int(rng.integers(2, 8))
    height, width = int(rng.integers(4, 21)), int(rng.integers(4, 21))
    shape = (n, 1, m, m) if rng.random() < 0.5 else (n, m, m)
    case = {"masks": torch.tensor(rng.random(shape), dtype=torch.float32),
            "boxes": _random_boxes(rng, n, height, width), "image_size": (height, width),
            "padding": int(rng.integers(0, 3))}
    if rng.random() < 0.4:
        case["threshold"] = None
    return case


PASTE_MASKS = Exercise(
    name="paste_masks",
    reference=_masks.paste_masks,
    cases=(
        Case("a 2 x 2 mask of ones into the box (1, 1, 3, 3), padding 0: a 3 x 3 block",
             {"masks": _ONES, "boxes": _t([[1, 1, 3, 3]]), "image_size": (5, 5),
              "threshold": None, "padding": 0},
             expected=_placed((5, 5), 1, 1, torch.ones(3, 3)),
             note="the box covers the pixels x1..x2 and y1..y2, both ends included: "
                  "3 - 1 + 1 = 3 pixels a side (as torchvision's paste_masks_in_image)"),
        Case("a 2 x 2 mask resized to a 4 x 4 box: profiles 1, 3/4, 1/4, 0",
             {"masks": _CORNER, "boxes": _t([[0, 0, 3, 3]]), "image_size": (5, 5),
              "threshold": None, "padding": 0},
             expected=_placed((5, 5), 0, 0, _outer(_UP)),
             note="F.interpolate(mode='bilinear', align_corners=False): output pixel i reads "
                  "the mask at (i + 1/2) * 2/4 - 1/2 = -1/4, 1/4, 3/4, 5/4, clamped to the "
                  "mask's border"),
        Case("padding 1 (the default): pad the mask with zeros, grow the box by (M + 2) / M",
             {"masks": _ONES, "boxes": _t([[2, 2, 4, 4]]), "image_size": (7, 7),
              "threshold": None},
             expected=_placed((7, 7), 1, 1, _outer(_GROWN)),
             note="the padded mask [0, 1, 1, 0] goes into the box grown by 4/2 around its "
                  "centre 3: (1, 1, 5, 5), 5 pixels a side, reading it at -0.1, 0.7, 1.5, 2.3, "
                  "3.1: 0, 0.7, 1, 0.7, 0. The mask fades at the box border instead of being "
                  "cut by it"),
        Case("the same with the default threshold 0.5: the 0.7 x 0.7 = 0.49 corners drop",
             {"masks": _ONES, "boxes": _t([[2, 2, 4, 4]]), "image_size": (7, 7)},
             expected=_placed((7, 7), 1, 1, _t([[0, 0, 0, 0, 0], [0, 0, 1, 0, 0],
                                                [0, 1, 1, 1, 0], [0, 0, 1, 0, 0],
                                                [0, 0, 0, 0, 0]]), torch.uint8),
             note="a binary mask is 1 where the pasted probability is > threshold, as uint8"),
        Case("a probability of exactly 0.5 is not part of the object (> 0.5, not >=)",
             {"masks": _t([[[0.5, 0.75], [0.25, 1.0]]]), "boxes": _t([[0, 0, 1, 1]]),
              "image_size": (2, 3), "padding": 0},
             expected=_t([[[0, 1, 0], [0, 1, 0]]], torch.uint8),
             note="the box covers 2 x 2 pixels, so the mask is copied unchanged; 0.5 > 0.5 is "
                  "false"),
        Case("a box partly outside the image: resize to the whole box, then cut",
             {"masks": _CORNER, "boxes": _t([[2, 2, 5, 5]]), "image_size": (4, 4),
              "threshold": None, "padding": 0},
             expected=_placed((4, 4), 2, 2, _outer(_UP)[:2, :2]),
             note="the mask is resized to the box's 4 x 4 pixels and only its top-left 2 x 2 "
                  "lands in the image; resizing to the visible part would squeeze the mask"),
        Case("a corner at -1.5 is truncated towards zero (-1), not floored (-2)",
             {"masks": _CORNER, "boxes": _t([[-1.5, -1.5, 1.5, 1.5]]), "image_size": (3, 3),
              "threshold": None, "padding": 0},
             expected=_placed((3, 3), 0, 0, _t([[0.25]])),
             note="torchvision converts the grown box with .to(torch.int64): (-1, -1, 1, 1), 3 "
                  "pixels a side, profile 1, 1/2, 0, of which pixels 0 and 1 are in the image"),
        Case("fractional corners: (0.9, 0.9, 2.9, 2.9) covers pixels 0..2 (truncated, not "
             "rounded)",
             {"masks": _ONES, "boxes": _t([[0.9, 0.9, 2.9, 2.9]]), "image_size": (4, 4),
              "padding": 0},
             expected=_placed((4, 4), 0, 0, torch.ones(3, 3), torch.uint8),
             note="int64 conversion cuts the fraction off: x1 = 0 and x2 = 2; rounding would "
                  "move the mask one pixel down and right"),
        Case("a box entirely outside the image pastes nothing",
             {"masks": _ONES, "boxes": _t([[10, 10, 12, 12]]), "image_size": (4, 4)},
             expected=torch.zeros(1, 4, 4, dtype=torch.uint8),
             note="clip the slices to the image on both sides; an empty overlap is fine"),
        Case("no detection (N = 0): an empty (0, H, W) uint8 tensor",
             {"masks": torch.zeros(0, 1, 2, 2), "boxes": torch.zeros(0, 4),
              "image_size": (3, 4)},
             expected=torch.zeros(0, 3, 4, dtype=torch.uint8),
             note="an image without detections: keep the shape (0, H, W) and the dtype uint8; "
                  "torch.stack of an empty list fails"),
        Case("the mask head's (N, 1, M, M) output, three 4 x 4 masks, a 9 x 12 image",
             {"masks": torch.tensor(np.random.default_rng(5).random((3, 1, 4, 4)),
                                    dtype=torch.float32),
              "boxes": _t([[1.3, 0.6, 6.8, 5.2], [4.1, 2.7, 11.9, 8.4], [-2.2, 5.5, 3.1, 11.0]]),
              "image_size": (9, 12), "threshold": None},
             note="one image per detection: (N, 1, M, M) -> (N, H, W)"),
    ),
    random_case=_random_paste_case,
    hint="pad each mask with `padding` zeros; grow the box around its centre by "
         "(M + 2 padding) / M and truncate its corners with .to(torch.int64); resize the padded "
         "mask to (y2 - y1 + 1, x2 - x1 + 1) with F.interpolate(bilinear, align_corners=False); "
         "copy the part inside the image; then (pasted > threshold).to(torch.uint8).",
)

# ---------------------------------------------------------------------------------------------
# mask_loss
# ---------------------------------------------------------------------------------------------

_LN3 = math.log(3.0)


def _logits(*channels) -> Tensor:
    """One RoI's ``(1, C, M, M)`` logits from its C channels (each M x M rows)."""
    return _t(channels)[None]


def _random_loss_case(rng: np.random.Generator) -> dict:
    p, c, m = int(rng.integers(0, 5)), int(rng.integers(2, 5)), int(rng.integers(1, 6))
    targets = rng.random((p, m, m))
    targets = np.where(rng.random((p, m, m)) < 0.7, targets > 0.5, targets)  # mostly 0 / 1
    return {"mask_logits": torch.tensor(rng.normal(scale=2, size=(p, c, m, m)),
                                        dtype=torch.float32),
            "labels": torch.tensor(rng.integers(1, c, size=p), dtype=torch.int64),
            "targets": torch.tensor(targets, dtype=torch.float32)}


MASK_LOSS = Exercise(
    name="mask_loss",
    reference=_masks.mask_loss,
    cases=(
        Case("logits 0: p = 1/2 everywhere, so the BCE is log 2 whatever the target",
             {"mask_logits": torch.zeros(1, 3, 2, 2), "labels": _ints(1),
              "targets": _t([[[1, 0], [0, 1]]])},
             expected=torch.tensor(math.log(2.0)),
             note="a per-pixel sigmoid, not a softmax over the 3 classes (which would give "
                  "p = 1/3)"),
        Case("Mask R-CNN's BCE on the channel of the GT class (1) only",
             {"mask_logits": _logits([[5, 5], [5, 5]], [[_LN3, -_LN3], [0, _LN3]],
                                     [[-5, -5], [-5, -5]]),
              "labels": _ints(1), "targets": _t([[[1, 0], [0.5, 0]]])},
             expected=torch.tensor((2 * math.log(4 / 3) + math.log(2) + math.log(4)) / 4),
             note="-(t log σ(x) + (1 - t) log(1 - σ(x))) with σ(ln 3) = 3/4: log 4/3, log 4/3, "
                  "log 2 (t = 1/2 from a border cell), log 4; their mean. Channels 0 and 2 are "
                  "not in the loss and get no gradient"),
        Case("a confident, right channel 2 gives a loss near 0 though channels 0 and 1 are wrong",
             {"mask_logits": _logits([[-20, 20], [20, -20]], [[-20, 20], [20, -20]],
                                     [[20, -20], [-20, 20]]),
              "labels": _ints(2), "targets": _t([[[1, 0], [0, 1]]])},
             expected=torch.tensor(0.0),
             note="the box head has already chosen the class; the mask head is trained only "
                  "on that class's mask, so the classes do not compete for a pixel"),
        Case("two RoIs of classes 1 and 2: each uses its own channel, one mean over P x M x M",
             {"mask_logits": torch.cat([_logits([[9, 9], [9, 9]], [[0, 0], [0, 0]],
                                                [[9, 9], [9, 9]]),
                                        _logits([[9, 9], [9, 9]], [[9, 9], [9, 9]],
                                                [[_LN3] * 2] * 2)]),
              "labels": _ints(1, 2), "targets": _t([[[1, 0], [1, 0]], [[1, 1], [1, 1]]])},
             expected=torch.tensor((math.log(2) + math.log(4 / 3)) / 2),
             note="RoI 0 reads channel 1 (logits 0: log 2 each), RoI 1 channel 2 (p = 3/4 on "
                  "an object: log 4/3 each): the mean of all 8 cells"),
        Case("a very wrong logit (-200 on an object pixel) costs 200: compute BCE from logits",
             {"mask_logits": _logits([[0, 0], [0, 0]], [[-200, 200], [0, 0]]),
              "labels": _ints(1), "targets": _t([[[1, 0], [0, 1]]])},
             expected=torch.tensor((400 + 2 * math.log(2)) / 4),
             note="σ(-200) rounds to 0 in float32 and log 0 = -inf (F.binary_cross_entropy "
                  "clamps the log at -100); binary_cross_entropy_with_logits stays exact"),
        Case("no positive RoI (P = 0): the loss is 0, not nan",
             {"mask_logits": torch.zeros(0, 3, 2, 2), "labels": _NO_INDEX,
              "targets": torch.zeros(0, 2, 2)},
             expected=torch.tensor(0.0),
             note="the mean of nothing is nan; Mask R-CNN returns mask_logits.sum() * 0 so that "
                  "training goes on and .backward() still works"),
        Case("three RoIs, 4 classes, 5 x 5 masks with soft border targets",
             {"mask_logits": torch.tensor(np.random.default_rng(6).normal(size=(3, 4, 5, 5))
                                          .round(2), dtype=torch.float32),
              "labels": _ints(3, 1, 3),
              "targets": torch.tensor(np.random.default_rng(7).choice(
                  [0.0, 0.25, 0.5, 1.0], size=(3, 5, 5)), dtype=torch.float32)},
             note="RoIs 0 and 2 read channel 3, RoI 1 channel 1; targets from mask_targets "
                  "are fractions on the object's border"),
    ),
    random_case=_random_loss_case,
    hint="pick each RoI's channel: mask_logits[torch.arange(P), labels] -> (P, M, M), then "
         "F.binary_cross_entropy_with_logits(that, targets); with P = 0 return "
         "mask_logits.sum() * 0.",
)

# ---------------------------------------------------------------------------------------------
# panoptic_quality
# ---------------------------------------------------------------------------------------------

# categories of the lesson: 1 person, 2 car, 3 dog (things); 4 grass, 5 sky (stuff)
THINGS = torch.tensor([1, 2, 3])
PERSON, CAR, GRASS, SKY = 1, 2, 4, 5


def with_panoptic_pairs(kwargs: dict) -> dict:
    """The ``prepare`` of ``panoptic_quality``: plain tensors become ``(panoptic, segments)``.

    A case writes each side as a map and a segment table; the student's function has the
    signature of :func:`course_lib.panoptic.panoptic_quality`: ``panoptic_quality(pred, gt)``.

    Args:
        kwargs: ``pred_map`` and ``gt_map`` (Tensor[H, W] int64 segment ids, 0 = void; or
            Tensor[B, H, W] for B images), ``pred_segments`` and ``gt_segments``
            (Tensor[S, 2] int64 rows ``(id, category_id)``, shared by the images: an image
            gets the rows of the ids in its map) and ``things`` (Tensor[T] int64, the thing
            categories; the others are stuff).

    Returns:
        ``{"pred": ..., "gt": ...}``: one ``(panoptic, segments)`` pair each, or a list of B
        pairs; ``segments`` holds a fresh dict ``{"id", "category_id", "isthing", "area"}``
        per segment id of the map, in increasing id order.

    Raises:
        ValueError: if a map uses an id that its table does not list.
    """
    kwargs = dict(kwargs)
    things = {int(c) for c in kwargs.pop("things").tolist()}
    for side in ("pred", "gt"):
        maps = kwargs.pop(f"{side}_map")
        category = {int(i): int(c) for i, c in kwargs.pop(f"{side}_segments").tolist()}

        def pair(panoptic: Tensor, side=side, category=category) -> tuple[Tensor, list[dict]]:
            ids, counts = torch.unique(panoptic, return_counts=True)
            segments = []
            for sid, area in zip(ids.tolist(), counts.tolist(), strict=True):
                if sid == 0:
                    continue
                if sid not in category:
                    raise ValueError(f"{side}_map uses segment id {sid}, which {side}_segments "
                                     f"does not list")
                segments.append({"id": sid, "category_id": category[sid],
                                 "isthing": category[sid] in things, "area": area})
            return panoptic, segments

        kwargs[side] = pair(maps) if maps.dim() == 2 else [pair(m) for m in maps]
    return kwargs


def _pq_class(tp: int, fp: int, fn: int, iou: float, isthing: bool) -> dict:
    """One category's entry of ``per_class`` from its counts and IoU sum (worked by hand)."""
    sq = iou / tp if tp else 0.0
    rq = tp / (tp + fp / 2 + fn / 2)
    return {"PQ": sq * rq, "SQ": sq, "RQ": rq, "TP": tp, "FP": fp, "FN": fn, "IoU": iou,
            "isthing": isthing}


def _pq_result(per_class: dict[int, dict]) -> dict:
    """The whole result: means over all categories, the things and the stuff (nan over none)."""
    result: dict = {}
    for suffix, keep in (("", None), ("_th", True), ("_st", False)):
        chosen = [v for v in per_class.values() if keep is None or v["isthing"] == keep]
        for key in ("PQ", "SQ", "RQ"):
            result[key + suffix] = (sum(v[key] for v in chosen) / len(chosen) if chosen
                                    else math.nan)
        result["n" + suffix] = len(chosen)
    result["per_class"] = per_class
    return result


def _ids(rows) -> Tensor:
    return torch.tensor(rows, dtype=torch.int64)


def _table(categories: dict[int, int]) -> Tensor:
    """``{segment id: category}`` -> the ``(S, 2)`` table of ``(id, category_id)`` rows."""
    return _ids(list(categories.items())).reshape(-1, 2)


def _pq_case(pred_map, pred_segments: dict, gt_map, gt_segments: dict) -> dict:
    return {"pred_map": _ids(pred_map), "pred_segments": _table(pred_segments),
            "gt_map": _ids(gt_map), "gt_segments": _table(gt_segments), "things": THINGS}


# A hand-worked 4 x 4 image: two people (1 and 3) and grass (2); 3 void pixels top right.
PQ_EXAMPLE_GT = ([[1, 1, 0, 0],
               [1, 3, 3, 0],
               [2, 2, 2, 2],
               [2, 2, 2, 2]], {1: PERSON, 2: GRASS, 3: PERSON})
# The prediction finds 2 of person 1's 3 pixels (IoU 2/3), misses person 3, sees a car (7)
# where there is grass, and 7 of the 8 grass pixels (IoU 7/8). Its ids differ from the GT's.
PQ_EXAMPLE_PRED = ([[5, 5, 0, 0],
                 [0, 0, 0, 0],
                 [6, 6, 6, 6],
                 [6, 6, 6, 7]], {5: PERSON, 6: GRASS, 7: CAR})


def _random_pq_image(rng: np.random.Generator, height: int, width: int,
                     num: int) -> np.ndarray:
    """An ``(H, W)`` map: ``num`` rectangles with ids ``1..num`` painted in turn, some void."""
    panoptic = np.zeros((height, width), dtype=np.int64)
    for sid in range(1, num + 1):
        y, x = rng.integers(0, height), rng.integers(0, width)
        h, w = rng.integers(1, height + 1), rng.integers(1, width + 1)
        panoptic[y:y + h, x:x + w] = sid
    panoptic[rng.random((height, width)) < 0.1] = 0
    return panoptic


def _random_pq_case(rng: np.random.Generator) -> dict:
    images, num = int(rng.choice([1, 1, 2])), int(rng.integers(1, 7))
    height, width = int(rng.integers(3, 9)), int(rng.integers(3, 9))
    categories = rng.choice([PERSON, CAR, 3, GRASS, SKY], size=num + 1)
    gt = np.stack([_random_pq_image(rng, height, width, num) for _ in range(images)])
    # the prediction: the GT with ids + 10, some pixels changed, one extra segment (id 11 + num)
    pred = np.where(gt > 0, gt + 10, 0)
    noise = rng.random(pred.shape) < 0.2
    pred[noise] = rng.choice([0, *range(11, 12 + num)], size=int(noise.sum()))
    pred_categories = np.where(rng.random(num + 1) < 0.2,
                               rng.choice([PERSON, CAR, 3, GRASS, SKY], size=num + 1),
                               categories)
    gt_rows = [[sid, int(categories[sid - 1])] for sid in range(1, num + 1)]
    pred_rows = [[10 + sid, int(pred_categories[sid - 1])] for sid in range(1, num + 2)]
    squeeze = images == 1 and rng.random() < 0.7          # (H, W) maps, or (B, H, W)
    return {"pred_map": torch.tensor(pred[0] if squeeze else pred),
            "pred_segments": _ids(pred_rows), "gt_map": torch.tensor(gt[0] if squeeze else gt),
            "gt_segments": _ids(gt_rows), "things": THINGS}


PANOPTIC_QUALITY = Exercise(
    name="panoptic_quality",
    reference=_panoptic.panoptic_quality,
    prepare=with_panoptic_pairs,
    cases=(
        Case("a hand-worked 4 x 4 map: a person at IoU 2/3, a missed person, a false car, "
             "grass at 7/8",
             _pq_case(*PQ_EXAMPLE_PRED, *PQ_EXAMPLE_GT),
             expected=_pq_result({PERSON: _pq_class(1, 0, 1, 2 / 3, True),
                                  CAR: _pq_class(0, 1, 0, 0.0, True),
                                  GRASS: _pq_class(1, 0, 0, 7 / 8, False)}),
             note="per category SQ = IoU sum / TP, RQ = TP / (TP + FP/2 + FN/2) and PQ = SQ x "
                  "RQ: person 2/3 x 2/3, car 0 x 0, grass 7/8 x 1. PQ is their mean, PQ_th the "
                  "mean over person and car, PQ_st over grass. Segment ids need not agree"),
        Case("an IoU of exactly 1/2 is not a match: one FP and one FN",
             _pq_case([[1, 1, 0, 0]], {1: CAR}, [[1, 1, 1, 1]], {1: CAR}),
             expected=_pq_result({CAR: _pq_class(0, 1, 1, 0.0, True)}),
             note="a match needs IoU > 1/2 strictly, which makes it unique without any "
                  "search: two segments of one map cannot both cover more than half of a "
                  "third"),
        Case("a predicted pixel on GT void is left out of the union: IoU 2/3, a match",
             _pq_case([[0, 2, 2, 2]], {2: PERSON}, [[1, 1, 1, 0]], {1: PERSON}),
             expected=_pq_result({PERSON: _pq_class(1, 0, 0, 2 / 3, True)}),
             note="IoU = |p ∩ g| / (|p ∪ g| - |p ∩ void|): nobody labelled that pixel, so it "
                  "is not held against the prediction. Counted, it would make the IoU 2/4: no "
                  "match"),
        Case("a predicted segment mostly on GT void is not a false positive",
             _pq_case([[3, 3, 4, 4, 4]], {3: PERSON, 4: CAR}, [[1, 1, 1, 0, 0]], {1: PERSON}),
             expected=_pq_result({PERSON: _pq_class(1, 0, 0, 2 / 3, True)}),
             note="2 of the car's 3 pixels lie on void: it is not counted at all, and the car "
                  "category, with no TP, FP or FN, is left out of the means (n = 1)"),
        Case("a segment exactly half on GT void is still a false positive",
             _pq_case([[2, 2, 2, 3, 3, 0]], {2: SKY, 3: CAR}, [[1, 1, 1, 1, 0, 0]], {1: SKY}),
             expected=_pq_result({CAR: _pq_class(0, 1, 0, 0.0, True),
                                  SKY: _pq_class(1, 0, 0, 3 / 4, False)}),
             note="the car has 1 of its 2 pixels on void: not more than half, so an FP"),
        Case("a category found only in the prediction: PQ 0, and it counts in the means",
             _pq_case([[1, 1, 1, 2]], {1: PERSON, 2: SKY}, [[1, 1, 1, 1]], {1: PERSON}),
             expected=_pq_result({PERSON: _pq_class(1, 0, 0, 3 / 4, True),
                                  SKY: _pq_class(0, 1, 0, 0.0, False)}),
             note="no sky in the ground truth, but a sky segment in the prediction: an FP, so "
                  "sky has PQ 0 and is one of the n = 2 categories of PQ (and of PQ_st)"),
        Case("a person predicted as a car on exactly its pixels: an FN and an FP, no match",
             _pq_case([[1, 1], [1, 1]], {1: CAR}, [[1, 1], [1, 1]], {1: PERSON}),
             expected=_pq_result({PERSON: _pq_class(0, 0, 1, 0.0, True),
                                  CAR: _pq_class(0, 1, 0, 0.0, True)}),
             note="only segments of the same category can match, whatever their IoU (here "
                  "1): the person is missed and the car is false"),
        Case("one prediction over two GT people matches at most one of them",
             _pq_case([[3, 3, 3, 3]], {3: PERSON}, [[1, 1, 1, 2]], {1: PERSON, 2: PERSON}),
             expected=_pq_result({PERSON: _pq_class(1, 0, 1, 3 / 4, True)}),
             note="IoU 3/4 with person 1 (a TP) and 1/4 with person 2 (an FN): merging two "
                  "instances costs recognition quality"),
        Case("a perfect prediction with other segment ids: PQ = SQ = RQ = 1",
             _pq_case([[7, 7, 0, 0], [7, 9, 9, 0], [8, 8, 8, 8], [8, 8, 8, 8]],
                      {7: PERSON, 8: GRASS, 9: PERSON}, *PQ_EXAMPLE_GT),
             expected=_pq_result({PERSON: _pq_class(2, 0, 0, 2.0, True),
                                  GRASS: _pq_class(1, 0, 0, 1.0, False)}),
             note="segments are matched by their pixels and categories, never by their ids"),
        Case("no stuff in either map: the stuff means are nan (over no category), n_st = 0",
             _pq_case([[1, 1], [2, 2]], {1: PERSON, 2: CAR}, [[1, 1], [2, 2]],
                      {1: PERSON, 2: CAR}),
             expected=_pq_result({PERSON: _pq_class(1, 0, 0, 1.0, True),
                                  CAR: _pq_class(1, 0, 0, 1.0, True)}),
             note="a mean over no category is nan, not 0 (which would read as a failure) nor "
                  "1"),
        Case("two images: TP, FP, FN and IoU sums add up over the images before dividing",
             _pq_case([[[1, 1], [1, 1]], [[0, 0], [0, 0]]], {1: PERSON},
                      [[[1, 1], [1, 1]], [[1, 1], [0, 0]]], {1: PERSON}),
             expected=_pq_result({PERSON: _pq_class(1, 0, 1, 1.0, True)}),
             note="image 1 alone has PQ 1, image 2 alone PQ 0, but the dataset's PQ is 1 x 2/3 "
                  "(1 TP, 1 FN), not their mean 1/2"),
        Case("two noisy 3 x 7 images, 3 thing and 2 stuff categories",
             _random_pq_case(np.random.default_rng(5)),
             note="5 TP, 2 FP and 3 FN over the two images; some pixels void"),
    ),
    random_case=_random_pq_case,
    hint="per image, count the pixels of every (gt id, pred id) pair; a pair of the same "
         "category with IoU = inter / (|p| + |g| - inter - |p on void|) > 0.5 is a TP; the other "
         "GT segments are FN, the other predicted ones FP unless more than half on void. Sum "
         "TP, FP, FN and IoU per category over the images, then SQ, RQ, PQ and their means.",
)

EXERCISES: dict[str, Exercise] = {
    ex.name: ex for ex in (MASK_TARGETS, PASTE_MASKS, MASK_LOSS, PANOPTIC_QUALITY)
}
