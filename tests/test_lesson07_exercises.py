"""The lesson 07 case tables: every case agrees with PyTorch, and the tables catch the classic
mistakes (each mutant below must fail a visible case). The properties every lesson's tables
share (hand-worked answers = reference, the reference passes, random cases are plain) are
checked for all lessons in tests/test_exercise_tables.py.
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from course_lib.exercises.core import check, compare, to_plain
from course_lib.exercises.lesson07 import (
    EXERCISES,
    LECTURE_PRED,
    LECTURE_TARGET,
    tiny_fcn,
)
from course_lib.segmentation import one_hot

PLAIN_TYPES = (torch.Tensor, int, float, bool, str)


def _torch_mean_iou(pred, target, num_classes, ignore_index=None):
    """An independent oracle: per-class sets by boolean masks, nanmean by a Python loop."""
    keep = torch.ones_like(target, dtype=torch.bool) if ignore_index is None \
        else target != ignore_index
    ious = []
    for c in range(num_classes):
        a, b = (pred == c) & keep, (target == c) & keep
        union = int((a | b).sum())
        if union:
            ious.append(int((a & b).sum()) / union)
    return sum(ious) / len(ious) if ious else math.nan


def _torch_dice_loss(logits, target, smooth=1.0):
    p = logits.softmax(dim=1)
    g = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2).to(p)
    inter, size = (p * g).sum((0, 2, 3)), p.sum((0, 2, 3)) + g.sum((0, 2, 3))
    return (1 - (2 * inter + smooth) / (size + smooth)).mean()


PYTORCH = {
    "one_hot": lambda seg, num_classes: (
        F.one_hot(seg, num_classes).permute(0, 3, 1, 2).float() if seg.dim() == 3
        else F.one_hot(seg, num_classes).permute(2, 0, 1).float()),
    "pixel_cross_entropy": lambda logits, target, weight=None, ignore_index=-100:
        F.cross_entropy(logits, target, weight, ignore_index=ignore_index),
    "dice_loss": _torch_dice_loss,
    "mean_iou": _torch_mean_iou,
    "predict_tiled": lambda model, image, tile, overlap:
        model(image).detach(),   # tiny_fcn mirrors like the tiling: equal
}


def test_names_match_references():
    assert set(EXERCISES) == {"one_hot", "pixel_cross_entropy", "dice_loss", "mean_iou",
                              "predict_tiled"}
    for name, ex in EXERCISES.items():
        assert ex.name == name == ex.reference.__name__
        assert ex.cases and ex.points > 0 and ex.hint


@pytest.mark.parametrize("name", sorted(PYTORCH))
def test_every_case_agrees_with_pytorch(name):
    ex = EXERCISES[name]
    rng = np.random.default_rng(0)
    cases = [c.kwargs for c in ex.cases if "overlap 0" not in c.name]
    cases += [ex.random_case(rng) for _ in range(30)]
    for kwargs in cases:
        theirs = to_plain(PYTORCH[name](**ex.inputs(kwargs)))
        assert compare(to_plain(ex.reference(**ex.inputs(kwargs))), theirs, 1e-4, 1e-5) is None, \
            kwargs


def test_lecture_examples():
    assert one_hot(torch.tensor([[0, 1, 2]]), 3)[:, 0].tolist() == [[1, 0, 0], [0, 1, 0],
                                                                   [0, 0, 1]]
    # IoU = TP / (TP + FP + FN) of the 3 x 4 map: 3/6, 3/5, 3/4
    assert EXERCISES["mean_iou"].reference(LECTURE_PRED, LECTURE_TARGET, 3) == pytest.approx(
        (0.5 + 0.6 + 0.75) / 3)


def test_tiny_fcn_is_deterministic_and_leaves_the_global_rng_alone():
    state = torch.random.get_rng_state()
    a, b = tiny_fcn(5), tiny_fcn(5)
    assert torch.equal(torch.random.get_rng_state(), state)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)
    weight = a[0].weight
    assert torch.equal(weight, weight.flip(-1)) and torch.equal(weight, weight.flip(-2))
    assert not torch.equal(tiny_fcn(6)[0].weight, weight)


def test_overlap_zero_case_really_shows_seams():
    case = next(c for c in EXERCISES["predict_tiled"].cases if "overlap 0" in c.name)
    ex = EXERCISES["predict_tiled"]
    whole = tiny_fcn(0)(case.kwargs["image"]).detach()
    assert not torch.allclose(ex.reference(**ex.inputs(case.kwargs)), whole, atol=1e-3)


def test_the_student_writes_the_library_signature():
    ex = EXERCISES["predict_tiled"]
    args = ex.inputs(ex.cases[0].kwargs)
    assert set(args) == {"model", "image", "tile", "overlap"}
    assert isinstance(args["model"], torch.nn.Module)


# --- mutants: plausible wrong answers that the visible cases must catch -----------------------


def one_hot_channels_last(seg, num_classes):
    return F.one_hot(seg, num_classes).float()


def one_hot_max_label(seg, num_classes):  # as many channels as the largest label + 1
    c = int(seg.max()) + 1 if seg.numel() else num_classes
    out = (seg.unsqueeze(-3) == torch.arange(c).reshape(c, 1, 1)).float()
    return out


def one_hot_batch_only(seg, num_classes):  # forgets the (H, W) form
    return (seg[:, None] == torch.arange(num_classes)[None, :, None, None]).float()


def make_cross_entropy(normalise="weights", softmax_dim=1, ignore=True):
    def pixel_cross_entropy(logits, target, weight=None, ignore_index=-100):
        valid = target != ignore_index if ignore else torch.ones_like(target, dtype=torch.bool)
        labels = torch.where(target != ignore_index, target, 0)
        nll = -logits.log_softmax(dim=softmax_dim).gather(1, labels[:, None])[:, 0]
        w = torch.ones(logits.shape[1]) if weight is None else weight
        w = w[labels] * valid
        if normalise == "weights":
            return (w * nll).sum() / w.sum()
        if normalise == "valid_pixels":          # forgets that weights change the denominator
            return (w * nll).sum() / valid.sum()
        return (w * nll).sum() / target.numel()   # divides by every pixel, ignored ones too
    return pixel_cross_entropy


def make_dice_loss(per_image=False, use_smooth=True, softmax_dim=1, classes="mean",
                   activation="softmax"):
    def dice_loss(logits, target, smooth=1.0):
        s = smooth if use_smooth else 0.0
        p = logits.softmax(dim=softmax_dim) if activation == "softmax" else logits.sigmoid()
        g = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2).to(p)
        dims = (2, 3) if per_image else (0, 2, 3)
        dice = (2 * (p * g).sum(dims) + s) / (p.sum(dims) + g.sum(dims) + s)
        loss = 1 - dice
        return loss.mean() if classes == "mean" else loss.sum()
    return dice_loss


def make_mean_iou(absent="skip", ignore=True, per_image=False, formula="iou"):
    def mean_iou(pred, target, num_classes, ignore_index=None):
        if per_image and pred.dim() == 3:
            scores = [mean_iou(p, t, num_classes, ignore_index) for p, t in zip(pred, target,
                                                                               strict=True)]
            return float(np.nanmean(scores))
        keep = torch.ones_like(target, dtype=torch.bool)
        if ignore and ignore_index is not None:
            keep = target != ignore_index
        ious = []
        for c in range(num_classes):
            a, b = (pred == c) & keep, (target == c) & keep
            inter, union = int((a & b).sum()), int((a | b).sum())
            denom = union if formula == "iou" else int(a.sum())
            if denom:
                ious.append(inter / denom)
            elif absent == "zero":
                ious.append(0.0)
            elif absent == "one":
                ious.append(1.0)
        return sum(ious) / len(ious) if ious else math.nan
    return mean_iou


def make_predict_tiled(crop=True, pad_mode="reflect", use_overlap=True, steps=True):
    """A loop version of the reference; each flag off is one classic mistake."""
    def pad(x, top, bottom, left, right):
        if pad_mode != "reflect":
            return F.pad(x, (left, right, top, bottom), mode=pad_mode)
        if not steps:                             # one F.pad: fails when pad >= size
            return F.pad(x, (left, right, top, bottom), mode="reflect")
        pads = [left, right, top, bottom]
        while any(pads):
            h, w = x.shape[-2:]
            step = [min(p, s - 1) for p, s in zip(pads, (w, w, h, h), strict=True)]
            x = F.pad(x, step, mode="reflect")
            pads = [p - s for p, s in zip(pads, step, strict=True)]
        return x

    def predict_tiled(model, image, tile, overlap):
        single = image.dim() == 3
        x = image[None] if single else image
        n, _, h, w = x.shape
        ov = overlap if use_overlap else 0
        m, s = ov // 2, tile - ov
        rows, cols = math.ceil(h / s), math.ceil(w / s)
        padded = pad(x, m, m + rows * s - h, m, m + cols * s - w)
        out = None
        with torch.no_grad():
            for i in range(rows):
                for j in range(cols):
                    y = model(padded[:, :, i * s : i * s + tile, j * s : j * s + tile])
                    if out is None:
                        out = y.new_zeros(n, y.shape[1], rows * s + 2 * m, cols * s + 2 * m)
                    if crop:
                        out[:, :, m + i * s : m + i * s + s, m + j * s : m + j * s + s] = \
                            y[:, :, m : m + s, m : m + s]
                    else:                          # pastes whole tiles, later ones on top
                        out[:, :, i * s : i * s + tile, j * s : j * s + tile] = y
        out = out[:, :, m : m + h, m : m + w]
        return out[0] if single else out
    return predict_tiled


@pytest.mark.parametrize("name, mutant", [
    ("one_hot", one_hot_channels_last),
    ("one_hot", one_hot_max_label),
    ("one_hot", one_hot_batch_only),
    ("one_hot", lambda seg, num_classes: seg[:, None].float()),
    ("pixel_cross_entropy", make_cross_entropy(normalise="valid_pixels")),
    ("pixel_cross_entropy", make_cross_entropy(normalise="all_pixels")),
    ("pixel_cross_entropy", make_cross_entropy(softmax_dim=2)),
    ("pixel_cross_entropy", make_cross_entropy(ignore=False)),
    ("dice_loss", make_dice_loss(per_image=True)),
    ("dice_loss", make_dice_loss(use_smooth=False)),
    ("dice_loss", make_dice_loss(softmax_dim=2)),
    ("dice_loss", make_dice_loss(classes="sum")),
    ("dice_loss", make_dice_loss(activation="sigmoid")),
    ("mean_iou", make_mean_iou(absent="zero")),
    ("mean_iou", make_mean_iou(absent="one")),
    ("mean_iou", make_mean_iou(ignore=False)),
    ("mean_iou", make_mean_iou(per_image=True)),
    ("mean_iou", make_mean_iou(formula="precision")),
    ("predict_tiled", make_predict_tiled(crop=False)),
    ("predict_tiled", make_predict_tiled(pad_mode="constant")),
    ("predict_tiled", make_predict_tiled(pad_mode="replicate")),
    ("predict_tiled", make_predict_tiled(use_overlap=False)),
    ("predict_tiled", make_predict_tiled(steps=False)),
])
def test_visible_cases_catch_mutant(name, mutant):
    mutant.__name__ = name
    assert not check(mutant, EXERCISES[name], device="cpu", verbose=False)


def test_correct_loop_versions_pass():
    # the mutant factories with every flag off are correct answers written differently
    for name, fn in [("pixel_cross_entropy", make_cross_entropy()),
                     ("dice_loss", make_dice_loss()),
                     ("mean_iou", make_mean_iou()),
                     ("predict_tiled", make_predict_tiled())]:
        fn.__name__ = name
        assert check(fn, EXERCISES[name], device="cpu", verbose=False), name
