"""Lesson 01 exercises: the classification + localization loss and counting sliding windows.

Each table starts with cases worked by hand (the lecture's 800 x 600 image among them), then
counts checked against a brute-force enumeration, then the edge cases (a 1 x 1 image, a window
larger than the image, a stride larger than the image). The same tables drive the notebook's
``check(...)`` cells, the tests and the grader; the grader adds fresh random cases drawn by
``random_case``.

The grader passes only tensors and scalars to a function, so ``count_windows_strided`` gets its
``sizes`` and ``aspect_ratios`` as 1-D tensors.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from course_lib import losses as _losses
from course_lib import sliding_window as _sw
from course_lib.exercises.core import Case, Exercise

__all__ = ["EXERCISES", "RATIO_CHOICES"]


def _t(rows, dtype=torch.float32) -> torch.Tensor:
    return torch.tensor(rows, dtype=dtype)


# ---------------------------------------------------------------------------------------------
# cls_loc_loss
# ---------------------------------------------------------------------------------------------

_SURE = 50.0  # a logit margin so large that the cross-entropy is 0 to float precision


def _random_cls_loc_case(rng: np.random.Generator) -> dict:
    batch, classes = int(rng.integers(1, 9)), int(rng.integers(2, 7))
    return {
        "class_logits": torch.tensor(rng.normal(0, 2, size=(batch, classes)), dtype=torch.float32),
        "box_pred": torch.tensor(rng.uniform(0, 1, size=(batch, 4)), dtype=torch.float32),
        "labels": torch.tensor(rng.integers(0, classes, size=batch), dtype=torch.int64),
        "box_targets": torch.tensor(rng.uniform(0, 1, size=(batch, 4)), dtype=torch.float32),
        "box_weight": float(rng.choice([0.5, 1.0, 2.0, 5.0])),
    }


CLS_LOC_LOSS = Exercise(
    name="cls_loc_loss",
    reference=_losses.cls_loc_loss,
    cases=(
        Case("uniform scores over 4 classes, perfect box: loss = ln 4",
             {"class_logits": _t([[0, 0, 0, 0]]), "box_pred": _t([[0.5, 0.5, 0.2, 0.3]]),
              "labels": torch.tensor([2]), "box_targets": _t([[0.5, 0.5, 0.2, 0.3]]),
              "box_weight": 1.0},
             expected=torch.tensor(math.log(4))),
        Case("sure and right class, box off by (0.1, 0, 0, 0.2): 0.01 + 0.04 = 0.05",
             {"class_logits": _t([[_SURE, 0]]), "box_pred": _t([[0.6, 0.5, 0.4, 0.6]]),
              "labels": torch.tensor([0]), "box_targets": _t([[0.5, 0.5, 0.4, 0.4]]),
              "box_weight": 1.0},
             expected=torch.tensor(0.05),
             note="the box term is the SQUARED L2 distance, summed over the 4 numbers"),
        Case("box_weight 5 multiplies the box term only: ln 2 + 5 x 0.05",
             {"class_logits": _t([[1, 1]]), "box_pred": _t([[0.6, 0.5, 0.4, 0.6]]),
              "labels": torch.tensor([1]), "box_targets": _t([[0.5, 0.5, 0.4, 0.4]]),
              "box_weight": 5.0},
             expected=torch.tensor(math.log(2) + 0.25)),
        Case("two images: the mean over the batch of each term",
             {"class_logits": _t([[0, 0], [_SURE, 0]]),
              "box_pred": _t([[0.5, 0.5, 0.5, 0.5], [0.3, 0.5, 0.5, 0.5]]),
              "labels": torch.tensor([0, 0]),
              "box_targets": _t([[0.5, 0.5, 0.5, 0.5], [0.5, 0.5, 0.5, 0.5]]),
              "box_weight": 1.0},
             expected=torch.tensor(math.log(2) / 2 + 0.04 / 2),
             note="average over images (not over the 4 x B numbers, and not a sum)"),
        Case("sure but wrong, by a margin of 200: the cross-entropy is 200",
             {"class_logits": _t([[200.0, 0, 0]]), "box_pred": _t([[0.5, 0.5, 0.5, 0.5]]),
              "labels": torch.tensor([1]), "box_targets": _t([[0.5, 0.5, 0.5, 0.5]]),
              "box_weight": 1.0},
             expected=torch.tensor(200.0),
             note="compute the cross-entropy from the logits with log_softmax (or "
                  "F.cross_entropy), not by taking the log of a softmax that rounds to 0"),
        Case("a batch of 3 with 5 classes and weight 2",
             {"class_logits": _t([[2.0, -1.0, 0.5, 0.0, 1.0], [0.1, 0.2, 0.3, 0.4, 0.5],
                                  [-2.0, 3.0, 0.0, 0.0, -1.0]]),
              "box_pred": _t([[0.4, 0.5, 0.3, 0.3], [0.2, 0.8, 0.1, 0.2], [0.5, 0.5, 0.9, 0.9]]),
              "labels": torch.tensor([0, 4, 2]),
              "box_targets": _t([[0.5, 0.5, 0.3, 0.4], [0.25, 0.75, 0.1, 0.3],
                                 [0.5, 0.5, 0.8, 0.8]]),
              "box_weight": 2.0}),
        Case("float64 inputs give a float64 loss",
             {"class_logits": _t([[0, 0]], torch.float64),
              "box_pred": _t([[0.5, 0.5, 0.5, 0.7]], torch.float64),
              "labels": torch.tensor([1]),
              "box_targets": _t([[0.5, 0.5, 0.5, 0.5]], torch.float64), "box_weight": 1.0},
             expected=torch.tensor(math.log(2) + 0.04, dtype=torch.float64)),
    ),
    random_case=_random_cls_loc_case,
    atol=1e-5,
    rtol=1e-5,
    hint="F.cross_entropy(class_logits, labels) + box_weight * ((box_pred - box_targets) ** 2)"
         ".sum(dim=1).mean()",
)

# ---------------------------------------------------------------------------------------------
# count_windows
# ---------------------------------------------------------------------------------------------

COUNT_WINDOWS = Exercise(
    name="count_windows",
    reference=_sw.count_windows,
    cases=(
        Case("the lecture's 800 x 600 image: 57,768,120,000 boxes (not 58 million)",
             {"H": 600, "W": 800}, expected=57_768_120_000,
             note="600 * 601 / 2 = 180,300 choices of rows times 800 * 801 / 2 = 320,400 of "
                  "columns"),
        Case("a 1 x 1 image has exactly one box", {"H": 1, "W": 1}, expected=1),
        Case("a 1 x 2 image: two 1 x 1 boxes and one 1 x 2 box", {"H": 1, "W": 2}, expected=3),
        Case("a 2 x 2 image: 4 + 2 + 2 + 1 = 9", {"H": 2, "W": 2}, expected=9),
        *(Case(f"a {h} x {w} image, counted box by box", {"H": h, "W": w},
               expected=_sw.count_windows_brute_force(h, w))
          for h, w in ((2, 3), (3, 5), (4, 4), (7, 2))),
        Case("one row of 800 pixels: 800 * 801 / 2", {"H": 1, "W": 800}, expected=320_400,
             note="the formula must not be symmetric by accident: H and W play their own "
                  "roles"),
        Case("a 224 x 224 classifier input", {"H": 224, "W": 224}, expected=(224 * 225 // 2) ** 2),
    ),
    random_case=lambda rng: {"H": int(rng.integers(1, 2000)), "W": int(rng.integers(1, 2000))},
    atol=0.0,
    rtol=0.0,
    hint="a box is a choice of 2 of the H + 1 horizontal pixel edges and 2 of the W + 1 vertical "
         "ones: H(H+1)/2 * W(W+1)/2 (use // to stay with exact integers).",
)

# ---------------------------------------------------------------------------------------------
# count_windows_strided
# ---------------------------------------------------------------------------------------------


def _sizes(*values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int64)


def _ratios(*values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


RATIO_CHOICES = (0.25, 0.5, 1.0, 2.0, 3.0, 4.0)


def _random_strided_case(rng: np.random.Generator) -> dict:
    H, W = int(rng.integers(1, 400)), int(rng.integers(1, 400))
    while True:  # no size * sqrt(ratio) near a half: every rounding rule then agrees
        sizes = rng.integers(1, 160, size=int(rng.integers(1, 5)))
        ratios = rng.choice(RATIO_CHOICES, size=int(rng.integers(1, 4)), replace=False)
        sides = np.concatenate([np.outer(sizes, np.sqrt(ratios)),
                                np.outer(sizes, 1 / np.sqrt(ratios))]).ravel()
        if (np.abs(sides - np.floor(sides) - 0.5) > 1e-3).all() and (sides >= 1).all():
            break
    return {"H": H, "W": W, "sizes": _sizes(*sizes.tolist()),
            "aspect_ratios": _ratios(*ratios.tolist()), "stride": int(rng.integers(1, 40))}


COUNT_WINDOWS_STRIDED = Exercise(
    name="count_windows_strided",
    reference=_sw.count_windows_strided,
    cases=(
        Case("one 64 x 64 window in 128 x 128, stride 16: 5 x 5 = 25 positions",
             {"H": 128, "W": 128, "sizes": _sizes(64), "aspect_ratios": _ratios(1.0),
              "stride": 16}, expected=25),
        Case("the last position need not reach the edge: (100 - 32) // 20 + 1 = 4 per axis",
             {"H": 100, "W": 100, "sizes": _sizes(32), "aspect_ratios": _ratios(1.0),
              "stride": 20}, expected=16,
             note="floor((W - w) / stride) + 1 columns: the window must stay inside"),
        Case("a wide window (ratio 4): 64 x 16 in a 600 x 800 image, stride 8",
             {"H": 600, "W": 800, "sizes": _sizes(32), "aspect_ratios": _ratios(4.0),
              "stride": 8}, expected=((800 - 64) // 8 + 1) * ((600 - 16) // 8 + 1),
             note="w = round(s * sqrt(r)) = 64 wide and h = round(s / sqrt(r)) = 16 high; "
                  "W goes with w, H with h"),
        Case("three sizes x three ratios on 800 x 600, stride 16: sum over all 9 shapes",
             {"H": 600, "W": 800, "sizes": _sizes(64, 128, 256),
              "aspect_ratios": _ratios(0.5, 1.0, 2.0), "stride": 16}),
        Case("stride 1 and one size reproduces the lecture's (W - w + 1)(H - h + 1)",
             {"H": 600, "W": 800, "sizes": _sizes(100), "aspect_ratios": _ratios(1.0),
              "stride": 1}, expected=701 * 501),
        Case("a window larger than the image fits nowhere: 0",
             {"H": 50, "W": 50, "sizes": _sizes(64), "aspect_ratios": _ratios(1.0),
              "stride": 8}, expected=0,
             note="when w > W (or h > H) there are no positions, not a negative number"),
        Case("a window that fits in width but not in height: 0",
             {"H": 40, "W": 200, "sizes": _sizes(32), "aspect_ratios": _ratios(0.5),
              "stride": 4}, expected=0,
             note="ratio 0.5 gives w = 23, h = 45 > 40"),
        Case("a stride larger than the image: one position per axis",
             {"H": 30, "W": 40, "sizes": _sizes(20), "aspect_ratios": _ratios(1.0),
              "stride": 1000}, expected=1),
        Case("the window exactly the image: 1",
             {"H": 64, "W": 64, "sizes": _sizes(64), "aspect_ratios": _ratios(1.0),
              "stride": 5}, expected=1),
        Case("a 1 x 1 image and 1-pixel windows: 1",
             {"H": 1, "W": 1, "sizes": _sizes(1), "aspect_ratios": _ratios(1.0),
              "stride": 1}, expected=1),
        Case("sizes that fit and sizes that do not, together",
             {"H": 100, "W": 150, "sizes": _sizes(40, 120, 200),
              "aspect_ratios": _ratios(1.0, 2.0), "stride": 10}),
    ),
    random_case=_random_strided_case,
    atol=0.0,
    rtol=0.0,
    hint="for every (s, r): w = round(s * sqrt(r)), h = round(s / sqrt(r)); add "
         "((W - w) // stride + 1) * ((H - h) // stride + 1), or 0 when w > W or h > H.",
)

EXERCISES: dict[str, Exercise] = {
    ex.name: ex for ex in (CLS_LOC_LOSS, COUNT_WINDOWS, COUNT_WINDOWS_STRIDED)
}
