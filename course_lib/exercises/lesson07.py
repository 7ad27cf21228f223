"""Lesson 07 exercises: semantic segmentation targets, losses, metrics and tiled prediction.

Each table starts with the lecture's examples worked by hand (the one-hot encoding of a class
map, the pixel-wise cross-entropy and the Dice loss of a 2 x 2 map, the IoU of a small label
map), then the edge cases that separate a correct answer from an almost-correct one (ignored
pixels, class weights, a class absent from the image, an empty batch, non-square maps, a tile
larger than the image). The same tables drive the notebook's ``check(...)`` cells, the tests
and the grader; the grader adds fresh random cases drawn by ``random_case``.

Inputs cross the grader as tensors, numbers and strings, so a network cannot be written in a
case: a ``predict_tiled`` case names the lesson's small fully convolutional network
:func:`tiny_fcn` by its seed (``model_seed``), and the exercise's ``prepare`` (:func:`with_model`)
builds it where the function runs. Every exercise is graded against its ``course_lib`` function
as it is, with its signature.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from course_lib import losses as _losses
from course_lib import segmentation as _seg
from course_lib import segmentation_metrics as _metrics
from course_lib.exercises.core import Case, Exercise

__all__ = ["EXERCISES", "LECTURE_PRED", "LECTURE_TARGET", "tiny_fcn", "with_model"]


def _labels(rows) -> Tensor:
    return torch.tensor(rows, dtype=torch.int64)


def _randn(rng: np.random.Generator, *shape: int) -> Tensor:
    return torch.tensor(rng.normal(size=shape).round(2), dtype=torch.float32)


def _random_labels(rng: np.random.Generator, high: int, *shape: int) -> Tensor:
    return torch.tensor(rng.integers(0, high, size=shape), dtype=torch.int64)


def _random_map_shape(rng: np.random.Generator) -> tuple[int, int, int]:
    return int(rng.integers(1, 3)), int(rng.integers(1, 6)), int(rng.integers(1, 6))


# ---------------------------------------------------------------------------------------------
# one_hot
# ---------------------------------------------------------------------------------------------

# A 3 x 6 corner of the lecture's class map (labels 1..5, so 6 channels with an empty 0).
LECTURE_MAP = _labels([[3, 3, 3, 1, 1, 1], [5, 5, 3, 1, 1, 1], [4, 4, 3, 4, 1, 1]])[None]


def _torch_one_hot(seg: Tensor, num_classes: int) -> Tensor:
    return F.one_hot(seg, num_classes).permute(0, 3, 1, 2).float()


def _random_one_hot_case(rng: np.random.Generator) -> dict:
    num_classes = int(rng.integers(1, 6))
    return {"seg": _random_labels(rng, num_classes, *_random_map_shape(rng)),
            "num_classes": num_classes}


ONE_HOT = Exercise(
    name="one_hot",
    reference=_seg.one_hot,
    cases=(
        Case("the lecture's K = 3 (cat, dog, horse) counted from 0: 0 -> [1, 0, 0] ...",
             {"seg": _labels([[[0, 1, 2]]]), "num_classes": 3},
             expected=torch.tensor([[[[1.0, 0, 0]], [[0, 1, 0]], [[0, 0, 1]]]]),
             note="one output channel per class: out[n, c, i, j] = 1 where seg[n, i, j] == c; "
                  "the class axis is dim 1, like a network's output"),
        Case("a corner of the lecture's class map (labels 1..5, 6 channels)",
             {"seg": LECTURE_MAP, "num_classes": 6},
             expected=_torch_one_hot(LECTURE_MAP, 6),
             note="channel 0 stays all zero: no pixel has label 0 here"),
        Case("a single map (H, W) gives (C, H, W)",
             {"seg": _labels([[1, 0], [0, 1]]), "num_classes": 2},
             expected=torch.tensor([[[0.0, 1], [1, 0]], [[1, 0], [0, 1]]]),
             note="without a batch dimension the class axis comes first"),
        Case("a class absent from the map: its channel is all zeros",
             {"seg": _labels([[[2, 2], [0, 2]]]), "num_classes": 4},
             expected=torch.tensor([[[[0.0, 0], [1, 0]], [[0, 0], [0, 0]], [[1, 1], [0, 1]],
                                     [[0, 0], [0, 0]]]]),
             note="the number of channels is num_classes, not the largest label + 1"),
        Case("one class: a single channel of ones",
             {"seg": torch.zeros(1, 2, 3, dtype=torch.int64), "num_classes": 1},
             expected=torch.ones(1, 1, 2, 3)),
        Case("a batch of 2 non-square maps",
             {"seg": _labels([[[0, 1, 2, 1, 0]], [[2, 2, 1, 0, 0]]]), "num_classes": 3},
             note="each image is encoded separately: (N, H, W) -> (N, C, H, W)"),
        Case("an empty batch: (0, 2, 3) -> (0, C, 2, 3)",
             {"seg": torch.zeros(0, 2, 3, dtype=torch.int64), "num_classes": 3},
             expected=torch.zeros(0, 3, 2, 3),
             note="keep the shape even when there is nothing to encode"),
    ),
    random_case=_random_one_hot_case,
    hint="compare the labels with every class at once: (seg[:, None] == "
         "torch.arange(C)[None, :, None, None]).float() gives (N, C, H, W).",
)

# ---------------------------------------------------------------------------------------------
# pixel_cross_entropy
# ---------------------------------------------------------------------------------------------

_LN3 = math.log(3.0)
# 1 image, 2 classes, 2 x 2 pixels; the logit pairs (0, 0), (ln 3, 0), (0, ln 3), (0, 0) give
# p(class 0) = 1/2, 3/4, 1/4, 1/2
_CE_LOGITS = torch.tensor([[[[0.0, _LN3], [0.0, 0.0]], [[0.0, 0.0], [_LN3, 0.0]]]])
_CE_TARGET = _labels([[[0, 0], [1, 1]]])           # p(true class) = 1/2, 3/4, 3/4, 1/2
_A, _B = -math.log(1 / 2), -math.log(3 / 4)        # the two per-pixel losses


def _random_ce_case(rng: np.random.Generator) -> dict:
    n, h, w = _random_map_shape(rng)
    c = int(rng.integers(2, 5))
    target = rng.integers(0, c, size=(n, h, w))
    case = {"logits": _randn(rng, n, c, h, w)}
    if rng.random() < 0.5:
        ignore = int(rng.choice([-100, 255]))
        target = np.where(rng.random((n, h, w)) < 0.2, ignore, target)
        target.flat[0] = int(rng.integers(0, c))             # keep one pixel that counts
        case["ignore_index"] = ignore
    case["target"] = torch.tensor(target, dtype=torch.int64)
    if rng.random() < 0.5:
        case["weight"] = torch.tensor(rng.uniform(0.2, 3.0, size=c).round(2),
                                      dtype=torch.float32)
    return case


PIXEL_CROSS_ENTROPY = Exercise(
    name="pixel_cross_entropy",
    reference=_losses.pixel_cross_entropy,
    cases=(
        Case("the lecture's pixel-wise cross-entropy on a 2 x 2 map, 2 classes",
             {"logits": _CE_LOGITS, "target": _CE_TARGET},
             expected=torch.tensor((2 * _A + 2 * _B) / 4),
             note="each pixel is a 2-way classification: -log softmax(logits[:, :, i, j])[y], "
                  "averaged over the 4 pixels"),
        Case("uniform logits over 4 classes: log 4 whatever the target",
             {"logits": torch.zeros(1, 4, 2, 3), "target": _labels([[[0, 1, 2], [3, 3, 0]]])},
             expected=torch.tensor(math.log(4.0)),
             note="the softmax runs over the class axis (dim 1), not over the pixels"),
        Case("pixels labelled -100 (the default ignore_index) do not count",
             {"logits": _CE_LOGITS, "target": _labels([[[-100, 0], [1, -100]]])},
             expected=torch.tensor(_B),
             note="divide by the number of pixels that count (2), not by all 4"),
        Case("ignore_index=255, a common 'void' label",
             {"logits": _CE_LOGITS, "target": _labels([[[0, 255], [255, 1]]]),
              "ignore_index": 255},
             expected=torch.tensor(_A)),
        Case("class weights: the mean is divided by the sum of the weights",
             {"logits": _CE_LOGITS, "target": _CE_TARGET, "weight": torch.tensor([1.0, 3.0])},
             expected=torch.tensor((1 * _A + 1 * _B + 3 * _B + 3 * _A) / (1 + 1 + 3 + 3)),
             note="sum w[y] * nll / sum w[y] (as F.cross_entropy), not / number of pixels"),
        Case("weights and ignored pixels together",
             {"logits": _CE_LOGITS, "target": _labels([[[0, -100], [1, 1]]]),
              "weight": torch.tensor([2.0, 0.5])},
             expected=torch.tensor((2 * _A + 0.5 * _B + 0.5 * _A) / (2 + 0.5 + 0.5)),
             note="an ignored pixel adds neither to the sum nor to the weights"),
        Case("every pixel ignored: 0 / 0 = nan, as F.cross_entropy",
             {"logits": _CE_LOGITS, "target": torch.full((1, 2, 2), -100, dtype=torch.int64)},
             expected=torch.tensor(math.nan),
             note="do not return 0 or silently divide by 1: nothing was measured"),
        Case("a batch of 2 non-square maps, 3 classes",
             {"logits": torch.tensor(np.random.default_rng(7).normal(size=(2, 3, 2, 4)).round(2),
                                     dtype=torch.float32),
              "target": _labels([[[0, 1, 2, 1], [2, 2, 0, 1]], [[1, 1, 1, 0], [0, 2, 2, 2]]])},
             note="one mean over all pixels of all images"),
    ),
    random_case=_random_ce_case,
    hint="log_probs = logits.log_softmax(dim=1); gather the true class with "
         "log_probs.gather(1, target[:, None]) (ignored pixels replaced by 0 first); "
         "weight each pixel by w[y] * (y != ignore_index) and divide by the sum of those weights.",
)

# ---------------------------------------------------------------------------------------------
# dice_loss
# ---------------------------------------------------------------------------------------------

# four pixels, all predicted (3/4, 1/4); truth: class 0 at three pixels, class 1 at one
_DICE_LOGITS = torch.tensor([_LN3, 0.0]).reshape(1, 2, 1, 1).expand(1, 2, 2, 2).contiguous()
_DICE_TARGET = _labels([[[0, 0], [0, 1]]])
# class 0: sum p g = 9/4, sum p = 3, sum g = 3; class 1: sum p g = 1/4, sum p = 1, sum g = 1


def _dice_by_hand(smooth: float) -> Tensor:
    dice0 = (2 * 9 / 4 + smooth) / (3 + 3 + smooth)
    dice1 = (2 * 1 / 4 + smooth) / (1 + 1 + smooth)
    return torch.tensor(1 - (dice0 + dice1) / 2)


def _random_dice_case(rng: np.random.Generator) -> dict:
    n, h, w = _random_map_shape(rng)
    c = int(rng.integers(2, 5))
    return {"logits": _randn(rng, n, c, h, w), "target": _random_labels(rng, c, n, h, w),
            "smooth": float(rng.choice([0.0, 0.5, 1.0]))}


DICE_LOSS = Exercise(
    name="dice_loss",
    reference=_losses.dice_loss,
    cases=(
        Case("the lecture's Dice 2|A ∩ B| / (|A| + |B|), soft, on a 2 x 2 map, smooth = 0",
             {"logits": _DICE_LOGITS, "target": _DICE_TARGET, "smooth": 0.0},
             expected=_dice_by_hand(0.0),
             note="p = softmax(logits) over dim 1 and g = one_hot(target); per class "
                  "1 - 2 sum(p g) / (sum p + sum g), then the mean over the classes"),
        Case("the same map with smooth = 1",
             {"logits": _DICE_LOGITS, "target": _DICE_TARGET, "smooth": 1.0},
             expected=_dice_by_hand(1.0),
             note="smooth is added to the numerator 2 sum(p g) and to the denominator"),
        Case("a class absent from the target, smooth = 1",
             {"logits": torch.tensor([[[[2.0, 0.0]], [[0.0, 2.0]], [[-1.0, -1.0]]]]),
              "target": _labels([[[0, 1]]]), "smooth": 1.0},
             note="class 2 has sum g = 0: smooth keeps its term finite and small"),
        Case("a confident correct prediction: the loss is almost 0",
             {"logits": 20 * _torch_one_hot(_labels([[[0, 1], [2, 2]]]), 3),
              "target": _labels([[[0, 1], [2, 2]]]), "smooth": 1.0},
             note="p is (nearly) g, so 2 sum(p g) = sum p + sum g for every class"),
        Case("a batch of 2: the sums run over the whole batch, not per image",
             {"logits": torch.tensor(np.random.default_rng(3).normal(size=(2, 3, 2, 2)).round(2),
                                     dtype=torch.float32),
              "target": _labels([[[0, 0], [0, 1]], [[2, 2], [1, 2]]]), "smooth": 1.0},
             note="one intersection and one size per class over all images and pixels"),
        Case("non-square maps, 4 classes, smooth = 0.5",
             {"logits": torch.tensor(np.random.default_rng(4).normal(size=(1, 4, 2, 5)).round(2),
                                     dtype=torch.float32),
              "target": _labels([[[0, 1, 2, 3, 3], [1, 1, 2, 0, 3]]]), "smooth": 0.5}),
    ),
    random_case=_random_dice_case,
    hint="p = logits.softmax(dim=1); g = one_hot(target, C); sum over dims (0, 2, 3) to get "
         "one intersection and one size per class; average 1 - dice over the classes.",
)

# ---------------------------------------------------------------------------------------------
# mean_iou
# ---------------------------------------------------------------------------------------------

LECTURE_TARGET = _labels([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 2, 2]])
LECTURE_PRED = _labels([[0, 0, 0, 1], [0, 1, 1, 1], [2, 2, 0, 2]])
# IoU per class: 3 / 6, 3 / 5, 3 / 4 (TP / (TP + FP + FN))
_LECTURE_MIOU = (3 / 6 + 3 / 5 + 3 / 4) / 3


def _random_miou_case(rng: np.random.Generator) -> dict:
    n, h, w = _random_map_shape(rng)
    c = int(rng.integers(2, 6))
    target = _random_labels(rng, c, n, h, w)
    case = {"pred": _random_labels(rng, c, n, h, w), "num_classes": c}
    if rng.random() < 0.4:
        target[torch.tensor(rng.random((n, h, w)) < 0.2)] = 255
        case["ignore_index"] = 255
    return {**case, "target": target}


MEAN_IOU = Exercise(
    name="mean_iou",
    reference=_metrics.mean_iou,
    cases=(
        Case("a 3 x 4 map with 3 classes: IoU 3/6, 3/5, 3/4",
             {"pred": LECTURE_PRED, "target": LECTURE_TARGET, "num_classes": 3},
             expected=_LECTURE_MIOU,
             note="IoU_c = |pred == c and target == c| / |pred == c or target == c|, then the "
                  "mean over the classes"),
        Case("a perfect prediction scores 1",
             {"pred": LECTURE_TARGET, "target": LECTURE_TARGET, "num_classes": 3},
             expected=1.0),
        Case("a class absent from both the prediction and the truth is left out",
             {"pred": LECTURE_PRED, "target": LECTURE_TARGET, "num_classes": 5},
             expected=_LECTURE_MIOU,
             note="classes 3 and 4 have 0 / 0: skip them (nanmean), do not count them as 0 or 1"),
        Case("a class in the truth that is never predicted scores 0",
             {"pred": torch.zeros(2, 2, dtype=torch.int64), "target": _labels([[0, 1], [0, 0]]),
              "num_classes": 2},
             expected=(3 / 4 + 0.0) / 2,
             note="class 1: intersection 0, union 1 -> IoU 0, and it does count in the mean"),
        Case("ignore_index=255: those pixels are not counted at all",
             {"pred": _labels([[0, 1], [1, 0]]), "target": _labels([[0, 255], [1, 255]]),
              "num_classes": 2, "ignore_index": 255},
             expected=1.0,
             note="drop the ignored pixels from both maps before counting"),
        Case("every pixel ignored: nan",
             {"pred": _labels([[0, 1]]), "target": _labels([[255, 255]]), "num_classes": 2,
              "ignore_index": 255},
             expected=math.nan,
             note="no class appears anywhere: the mean of nothing"),
        Case("a batch of 2 non-square maps: one IoU per class over the whole batch",
             {"pred": _labels([[[0, 1, 1, 2, 2]], [[0, 0, 2, 2, 1]]]),
              "target": _labels([[[0, 1, 2, 2, 2]], [[0, 1, 1, 2, 1]]]), "num_classes": 3},
             note="count intersections and unions over all images before dividing; not the mean "
                  "of per-image scores"),
    ),
    random_case=_random_miou_case,
    hint="count pixels per (true, predicted) pair: cm = bincount(target * C + pred, "
         "minlength=C * C).reshape(C, C); IoU = diag / (row sums + column sums - diag); "
         "average the classes whose union is not 0.",
)

# ---------------------------------------------------------------------------------------------
# predict_tiled
# ---------------------------------------------------------------------------------------------


def tiny_fcn(seed: int = 0, in_channels: int = 3, num_classes: int = 3) -> nn.Module:
    """The lesson's small fully convolutional network, the same for every seed on every machine.

    Two 3 x 3 convolutions with a ReLU between them (receptive field 5 x 5, radius 2), reflect
    padding and mirror-symmetric kernels, in eval mode. With those two choices the network pads
    exactly like mirroring the image once, so tiled prediction with ``overlap >= 4`` equals the
    whole-image prediction ``tiny_fcn(seed)(image)`` everywhere (see
    :func:`course_lib.segmentation.predict_tiled`).

    Args:
        seed: chooses the weights (drawn with a private generator; the global RNG is untouched).
        in_channels: ``C_in`` of the images.
        num_classes: ``C``, the number of output channels.

    Returns:
        nn.Module: ``(B, C_in, H, W) -> (B, C, H, W)`` logits, float32, on the CPU.
    """
    g = torch.Generator().manual_seed(int(seed))
    with torch.random.fork_rng(devices=[]):           # the layers' default init draws globally
        layers = [nn.Conv2d(in_channels, 4, 3, padding=1, padding_mode="reflect"), nn.ReLU(),
                  nn.Conv2d(4, num_classes, 3, padding=1, padding_mode="reflect")]
    with torch.no_grad():
        for conv in (layers[0], layers[2]):
            weight = torch.randn(conv.weight.shape, generator=g) / 3
            weight = (weight + weight.flip(-1)) / 2        # left-right symmetric, bit for bit
            conv.weight.copy_((weight + weight.flip(-2)) / 2)  # and up-down
            conv.bias.copy_(torch.randn(conv.bias.shape, generator=g) / 3)
    return nn.Sequential(*layers).eval()


def with_model(kwargs: dict) -> dict:
    """The exercise's ``prepare``: ``model_seed=k`` becomes ``model=tiny_fcn(k)``.

    A network is not plain data, so a case names it by its seed; the model is built where the
    function runs, on the device of the image. The student's function has the signature of
    :func:`course_lib.segmentation.predict_tiled`: ``predict_tiled(model, image, tile,
    overlap)``.
    """
    kwargs = dict(kwargs)
    seed = kwargs.pop("model_seed", 0)
    kwargs["model"] = tiny_fcn(seed).to(kwargs["image"].device)
    return kwargs


def _image(seed: int, *shape: int) -> Tensor:
    return torch.tensor(np.random.default_rng(seed).normal(size=shape).round(2),
                        dtype=torch.float32)


def _whole(image: Tensor, seed: int = 0) -> Tensor:
    """The whole-image logits: the answer wherever the tiling hides its seams."""
    with torch.no_grad():
        return tiny_fcn(seed)(image)


_IMG_16 = _image(0, 1, 3, 16, 16)
_IMG_ODD = _image(1, 1, 3, 10, 13)
_IMG_SMALL = _image(2, 1, 3, 5, 6)
_IMG_STRIP = _image(3, 1, 3, 2, 9)
_IMG_BATCH = _image(4, 2, 3, 7, 12)


def _random_tiled_case(rng: np.random.Generator) -> dict:
    overlap = int(rng.choice([4, 6]))
    return {"image": _randn(rng, int(rng.integers(1, 3)), 3, int(rng.integers(2, 20)),
                            int(rng.integers(2, 20))),
            "tile": overlap + int(rng.integers(1, 9)), "overlap": overlap,
            "model_seed": int(rng.integers(0, 1000))}


PREDICT_TILED = Exercise(
    name="predict_tiled",
    reference=_seg.predict_tiled,
    prepare=with_model,
    cases=(
        Case("16 x 16 image, 8 x 8 tiles, overlap 4: equals the whole-image prediction",
             {"image": _IMG_16, "tile": 8, "overlap": 4},
             expected=_whole(_IMG_16),
             note="the receptive field has radius 2 <= overlap / 2, and the kept core of every "
                  "tile is 2 pixels away from its border, so no seam shows"),
        Case("10 x 13 image: sizes that are not multiples of the stride 4",
             {"image": _IMG_ODD, "tile": 8, "overlap": 4, "model_seed": 1},
             expected=_whole(_IMG_ODD, 1),
             note="mirror the bottom and right edges further so that the last tiles are full "
                  "size, then crop the stitched map back to H x W"),
        Case("a 5 x 6 image smaller than one 12 x 12 tile",
             {"image": _IMG_SMALL, "tile": 12, "overlap": 4},
             expected=_whole(_IMG_SMALL),
             note="one tile, mostly mirrored image; the output still has the image's size"),
        Case("a 2 x 9 strip, tile 8: mirror more rows than the image has",
             {"image": _IMG_STRIP, "tile": 8, "overlap": 4},
             expected=_whole(_IMG_STRIP),
             note="F.pad(mode='reflect') needs pad < size: pad in steps, each mirroring the "
                  "already padded image"),
        Case("a single image (3, H, W) gives (C, H, W)",
             {"image": _IMG_16[0], "tile": 10, "overlap": 6, "model_seed": 2},
             expected=_whole(_IMG_16, 2)[0]),
        Case("a batch of 2 non-square images, tile 6, overlap 4 (stride 2)",
             {"image": _IMG_BATCH, "tile": 6, "overlap": 4, "model_seed": 3},
             expected=_whole(_IMG_BATCH, 3),
             note="each image is tiled on its own; keep the tiles of different images apart"),
        Case("overlap 0: no context margin, the seams show (tiles from the top-left corner)",
             {"image": _IMG_16, "tile": 8, "overlap": 0},
             note="with overlap 0 nothing is cropped; the pixels next to a seam see the tile's "
                  "own padding, so this answer differs from the whole-image one"),
    ),
    random_case=_random_tiled_case,
    atol=1e-4,
    hint="m = overlap // 2, s = tile - overlap; mirror-pad by m (plus what fills the last "
         "tile), run the model on padded[..., i*s : i*s + tile, j*s : j*s + tile] and keep "
         "out[..., m : m + s, m : m + s] at output rows i*s.., columns j*s..; crop to H x W.",
)

EXERCISES: dict[str, Exercise] = {
    ex.name: ex for ex in (ONE_HOT, PIXEL_CROSS_ENTROPY, DICE_LOSS, MEAN_IOU, PREDICT_TILED)
}
