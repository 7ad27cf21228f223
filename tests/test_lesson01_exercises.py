"""The lesson 01 case tables: hand-worked answers agree with the reference, and the tables
catch the classic mistakes (each mutant below must fail at least one visible case)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from course_lib.exercises import load_lesson
from course_lib.exercises.core import check
from course_lib.sliding_window import count_windows_brute_force

EXERCISES = load_lesson("01")


def test_names_match_references():
    assert set(EXERCISES) == {"cls_loc_loss", "count_windows", "count_windows_strided"}


def test_the_lectures_800_by_600_number_and_brute_force_cases():
    table = {c.name: c for c in EXERCISES["count_windows"].cases}
    lecture = next(c for name, c in table.items() if "800 x 600" in name)
    assert lecture.expected == 57_768_120_000
    for case in table.values():
        H, W = case.kwargs["H"], case.kwargs["W"]
        if H * W <= 60:
            assert case.expected == count_windows_brute_force(H, W), case.name


def test_strided_hidden_cases_avoid_rounding_ties():
    ex = EXERCISES["count_windows_strided"]
    for seed in range(200):
        case = ex.random_case(np.random.default_rng(seed))
        sizes = case["sizes"].double()
        roots = case["aspect_ratios"].sqrt()
        sides = torch.cat([(sizes[:, None] * roots).ravel(), (sizes[:, None] / roots).ravel()])
        assert ((sides - sides.floor() - 0.5).abs() > 1e-3).all()
        # float32 arithmetic rounds them the same way as float64
        sides32 = torch.cat([(sizes.float()[:, None] * roots.float()).ravel(),
                             (sizes.float()[:, None] / roots.float()).ravel()])
        assert torch.equal(sides.round(), sides32.double().round())


# --- mutants: plausible wrong answers that the visible cases must catch -----------------------

def loss_mse_mean_over_numbers(class_logits, box_pred, labels, box_targets, box_weight):
    return F.cross_entropy(class_logits, labels) + box_weight * F.mse_loss(box_pred, box_targets)


def loss_sum_over_batch(class_logits, box_pred, labels, box_targets, box_weight):
    return (F.cross_entropy(class_logits, labels, reduction="sum")
            + box_weight * ((box_pred - box_targets) ** 2).sum())


def loss_l2_norm_not_squared(class_logits, box_pred, labels, box_targets, box_weight):
    return (F.cross_entropy(class_logits, labels)
            + box_weight * (box_pred - box_targets).norm(dim=1).mean())


def loss_l1(class_logits, box_pred, labels, box_targets, box_weight):
    return (F.cross_entropy(class_logits, labels)
            + box_weight * (box_pred - box_targets).abs().sum(dim=1).mean())


def loss_weight_on_classification(class_logits, box_pred, labels, box_targets, box_weight):
    return (box_weight * F.cross_entropy(class_logits, labels)
            + ((box_pred - box_targets) ** 2).sum(dim=1).mean())


def loss_log_of_softmax(class_logits, box_pred, labels, box_targets, box_weight):
    p = class_logits.softmax(dim=1).gather(1, labels[:, None])[:, 0]
    ce = -torch.log(p.clamp(min=1e-12)).mean()  # clamps where log_softmax would not
    return ce + box_weight * ((box_pred - box_targets) ** 2).sum(dim=1).mean()


def loss_softmax_twice(class_logits, box_pred, labels, box_targets, box_weight):
    return (F.cross_entropy(class_logits.softmax(dim=1), labels)
            + box_weight * ((box_pred - box_targets) ** 2).sum(dim=1).mean())


def windows_float_division(H, W):
    return H * (H + 1) / 2 * W * (W + 1) / 2  # a float: exact here, so it is NOT a mutant


def windows_slide_approximation(H, W):
    return H * W * H * W // 4  # (HW)^2 / 4, close for large images only


def windows_one_size_only(H, W):
    return H * W  # only 1 x 1 boxes


def windows_off_by_one(H, W):
    return H * (H - 1) // 2 * W * (W - 1) // 2


def make_strided(no_plus_one=False, ceil=False, swap=False, negative=False, one_ratio=False):
    def count_windows_strided(H, W, sizes, aspect_ratios, stride):
        total = 0
        ratios = aspect_ratios.tolist()[:1] if one_ratio else aspect_ratios.tolist()
        for s in sizes.tolist():
            for r in ratios:
                w, h = round(s * math.sqrt(r)), round(s / math.sqrt(r))
                if swap:
                    w, h = h, w
                if ceil:
                    nx, ny = math.ceil((W - w) / stride) + 1, math.ceil((H - h) / stride) + 1
                else:
                    nx, ny = (W - w) // stride + 1, (H - h) // stride + 1
                if no_plus_one:
                    nx, ny = nx - 1, ny - 1
                if not negative:
                    nx, ny = max(nx, 0), max(ny, 0)
                total += nx * ny
        return total
    return count_windows_strided


@pytest.mark.parametrize("name, mutant", [
    ("cls_loc_loss", loss_mse_mean_over_numbers),
    ("cls_loc_loss", loss_sum_over_batch),
    ("cls_loc_loss", loss_l2_norm_not_squared),
    ("cls_loc_loss", loss_l1),
    ("cls_loc_loss", loss_weight_on_classification),
    ("cls_loc_loss", loss_log_of_softmax),
    ("cls_loc_loss", loss_softmax_twice),
    ("count_windows", windows_slide_approximation),
    ("count_windows", windows_one_size_only),
    ("count_windows", windows_off_by_one),
    ("count_windows_strided", make_strided(no_plus_one=True)),
    ("count_windows_strided", make_strided(ceil=True)),
    ("count_windows_strided", make_strided(swap=True)),
    ("count_windows_strided", make_strided(negative=True)),
    ("count_windows_strided", make_strided(one_ratio=True)),
])
def test_visible_cases_catch_mutant(name, mutant):
    mutant.__name__ = name
    assert not check(mutant, EXERCISES[name], device="cpu", verbose=False)


def test_an_exact_float_answer_is_accepted():
    windows_float_division.__name__ = "count_windows"
    assert check(windows_float_division, EXERCISES["count_windows"], device="cpu", verbose=False)
