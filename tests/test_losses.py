import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from course_lib.losses import (
    class_weights,
    cls_loc_loss,
    cls_loc_loss_terms,
    dice_coefficient,
    dice_loss,
    pixel_cross_entropy,
)

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def loop_cls_loc_loss(logits, box_pred, labels, box_targets, box_weight):
    """Per-image Python loop: -log softmax of the true class, plus the weighted squared error."""
    total_ce = total_l2 = 0.0
    for i in range(len(labels)):
        row = [float(v) for v in logits[i]]
        log_norm = math.log(sum(math.exp(v) for v in row))
        total_ce += log_norm - row[int(labels[i])]
        total_l2 += sum((float(p) - float(t)) ** 2 for p, t in zip(box_pred[i], box_targets[i],
                                                                    strict=True))
    n = len(labels)
    return total_ce / n + box_weight * total_l2 / n


@pytest.mark.parametrize("box_weight", [0.0, 1.0, 5.0])
def test_cls_loc_loss_matches_a_loop(box_weight):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 4, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 4, (6,), generator=g)
    box_pred, box_targets = torch.rand(6, 4, generator=g), torch.rand(6, 4, generator=g)
    got = cls_loc_loss(logits, box_pred.double(), labels, box_targets.double(), box_weight)
    expected = loop_cls_loc_loss(logits, box_pred, labels, box_targets, box_weight)
    assert float(got) == pytest.approx(expected, rel=1e-12)
    terms = cls_loc_loss_terms(logits, box_pred.double(), labels, box_targets.double(), box_weight)
    assert float(terms["classification"] + terms["box"]) == pytest.approx(float(got))


def test_cls_loc_loss_hand_worked():
    # uniform logits over 2 classes: CE = log 2; box off by (0.1, 0, 0, 0.2): L2 = 0.05
    loss = cls_loc_loss(torch.zeros(1, 2), torch.tensor([[0.1, 0.0, 0.0, 0.2]]),
                        torch.tensor([1]), torch.zeros(1, 4), box_weight=2.0)
    assert float(loss) == pytest.approx(math.log(2) + 2 * 0.05)


def test_cls_loc_loss_gradients_flow_to_both_heads():
    logits = torch.randn(3, 5, requires_grad=True)
    boxes = torch.rand(3, 4, requires_grad=True)
    cls_loc_loss(logits, boxes, torch.tensor([0, 1, 2]), torch.rand(3, 4)).backward()
    assert logits.grad.abs().sum() > 0 and boxes.grad.abs().sum() > 0


@pytest.mark.parametrize("args, match", [
    ((torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(3, dtype=torch.long), torch.zeros(2, 4)),
     r"labels must have shape \(2,\)"),
    ((torch.zeros(2, 3), torch.zeros(2, 5), torch.zeros(2, dtype=torch.long), torch.zeros(2, 4)),
     r"box_pred must have shape \(2, 4\)"),
    ((torch.zeros(0, 3), torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), torch.zeros(0, 4)),
     r"B > 0"),
])
def test_cls_loc_loss_bad_shapes(args, match):
    with pytest.raises(ValueError, match=match):
        cls_loc_loss(*args)


# ---------------------------------------------------------------- pixel_cross_entropy


def loop_pixel_cross_entropy(logits, target, weight=None, ignore_index=-100):
    """Pixel by pixel: -log softmax of the true class, weighted, over the pixels counted."""
    n, c, h, w = logits.shape
    total = norm = 0.0
    for b, i, j in itertools.product(range(n), range(h), range(w)):
        y = int(target[b, i, j])
        if y == ignore_index:
            continue
        row = [float(v) for v in logits[b, :, i, j]]
        nll = math.log(sum(math.exp(v) for v in row)) - row[y]
        wy = 1.0 if weight is None else float(weight[y])
        total += wy * nll
        norm += wy
    return total / norm if norm else math.nan


def test_pixel_cross_entropy_hand_worked_2x2():
    # one image, 2 classes, 2 x 2 pixels; logit pairs (0, 0), (ln 3, 0), (0, ln 3), (0, 0)
    # p(true class): 1/2, 3/4, 3/4 (true class 1 at the third pixel), 1/2
    ln3 = math.log(3)
    logits = torch.tensor([[[[0.0, ln3], [0.0, 0.0]], [[0.0, 0.0], [ln3, 0.0]]]])
    target = torch.tensor([[[0, 0], [1, 1]]])
    expected = -(2 * math.log(1 / 2) + 2 * math.log(3 / 4)) / 4
    assert float(pixel_cross_entropy(logits, target)) == pytest.approx(expected, rel=1e-6)
    # ignore the two 1/2 pixels: the mean of the others, -log 3/4
    ignored = torch.tensor([[[-100, 0], [1, -100]]])
    assert float(pixel_cross_entropy(logits, ignored)) == pytest.approx(-math.log(3 / 4),
                                                                         rel=1e-6)
    # weight class 1 three times: (1 * a + 1 * b + 3 * b + 3 * a) / (1 + 1 + 3 + 3)
    a, b = -math.log(1 / 2), -math.log(3 / 4)
    got = pixel_cross_entropy(logits, target, weight=torch.tensor([1.0, 3.0]))
    assert float(got) == pytest.approx((4 * a + 4 * b) / 8, rel=1e-6)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("use_weight", [False, True])
@pytest.mark.parametrize("ignore_index", [-100, 255, 0])
def test_pixel_cross_entropy_against_pytorch_and_a_loop(device, dtype, use_weight,
                                                        ignore_index):
    g = torch.Generator().manual_seed(1)
    logits = (3 * torch.randn(2, 4, 3, 5, generator=g)).to(device, dtype)
    target = torch.randint(0, 4, (2, 3, 5), generator=g)
    target[torch.rand(2, 3, 5, generator=g) < 0.3] = ignore_index
    target = target.to(device)
    weight = (torch.rand(4, generator=g) + 0.1).to(device, dtype) if use_weight else None
    got = pixel_cross_entropy(logits, target, weight, ignore_index)
    expected = F.cross_entropy(logits, target, weight, ignore_index=ignore_index)
    assert got.dtype == dtype and got.device == logits.device
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    assert torch.allclose(got, expected, rtol=tol, atol=tol)
    assert float(got) == pytest.approx(loop_pixel_cross_entropy(logits.cpu(), target.cpu(),
                                                                weight, ignore_index), rel=tol)


def test_pixel_cross_entropy_all_ignored_or_empty_is_nan_like_pytorch():
    logits = torch.randn(1, 3, 2, 2)
    target = torch.full((1, 2, 2), -100)
    assert math.isnan(float(F.cross_entropy(logits, target)))
    assert math.isnan(float(pixel_cross_entropy(logits, target)))
    empty = pixel_cross_entropy(torch.zeros(0, 3, 2, 2), torch.zeros(0, 2, 2, dtype=torch.long))
    assert math.isnan(float(empty))
    assert math.isnan(float(F.cross_entropy(torch.zeros(0, 3, 2, 2),
                                            torch.zeros(0, 2, 2, dtype=torch.long))))


def test_pixel_cross_entropy_gradcheck_and_gradient_matches_pytorch():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 3, 2, 3, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([[[0, 1, 2], [-100, 2, 1]], [[1, 1, 0], [2, -100, 0]]])
    weight = torch.tensor([0.5, 2.0, 1.0], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: pixel_cross_entropy(x, target, weight), (logits,))
    ours = torch.autograd.grad(pixel_cross_entropy(logits, target, weight), logits)[0]
    theirs = torch.autograd.grad(F.cross_entropy(logits, target, weight), logits)[0]
    assert torch.allclose(ours, theirs)
    assert ours[0, :, 1, 0].abs().sum() == 0                     # an ignored pixel: no gradient


@pytest.mark.parametrize("logits, target, kwargs, match", [
    (torch.zeros(2, 3, 4), torch.zeros(2, 4, dtype=torch.long), {},
     r"logits must have shape \(N, C, H, W\), got \(2, 3, 4\)"),
    (torch.zeros(1, 3, 2, 2), torch.zeros(1, 2, 3, dtype=torch.long), {},
     r"target must have shape \(N, H, W\) = \(1, 2, 2\)"),
    (torch.zeros(1, 3, 2, 2), torch.zeros(1, 2, 2), {}, "integer labels"),
    (torch.zeros(1, 3, 2, 2), torch.full((1, 2, 2), 3), {},
     r"target labels must lie in \[0, 3\) or equal ignore_index=-100"),
    (torch.zeros(1, 3, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long),
     {"weight": torch.ones(2)}, r"weight must have shape \(C,\) = \(3,\), got \(2,\)"),
])
def test_pixel_cross_entropy_bad_input(logits, target, kwargs, match):
    with pytest.raises(ValueError, match=match):
        pixel_cross_entropy(logits, target, **kwargs)


# ---------------------------------------------------------------- class_weights


def test_class_weights_inverse_by_hand():
    # 6 pixels of class 0, 3 of class 1, 1 of class 2, none of class 3 (of 10)
    seg = torch.tensor([0] * 6 + [1] * 3 + [2]).reshape(2, 5)
    inverse = torch.tensor([10 / 6, 10 / 3, 10 / 1])
    expected = torch.cat([inverse / inverse.mean(), torch.zeros(1)])
    got = class_weights(seg, 4)
    assert got.dtype == torch.float32 and torch.allclose(got, expected)
    assert float(got[:3].mean()) == pytest.approx(1.0)
    assert got[2] / got[0] == pytest.approx(6.0)                  # 6 times rarer, 6 times heavier
    assert torch.allclose(class_weights(counts=torch.tensor([6, 3, 1, 0])), expected)


def test_class_weights_median_by_hand():
    # frequencies 0.6, 0.3, 0.1: median 0.3 -> 0.5, 1, 3
    got = class_weights(counts=torch.tensor([60, 30, 10]), method="median")
    assert torch.allclose(got, torch.tensor([0.5, 1.0, 3.0]))
    # an even number of present classes: the median is the mean of the two middle ones
    got = class_weights(counts=torch.tensor([0, 40, 30, 20, 10]), method="median")
    median = (0.3 + 0.2) / 2
    assert torch.allclose(got, torch.tensor([0, median / 0.4, median / 0.3, median / 0.2,
                                             median / 0.1]))


def test_class_weights_ignore_index_empty_and_use_in_the_loss():
    seg = torch.tensor([[0, 0, 255], [1, 255, 255]])
    assert torch.allclose(class_weights(seg, 2, ignore_index=255), torch.tensor([2 / 3, 4 / 3]))
    assert torch.equal(class_weights(torch.zeros(0, 3, 3, dtype=torch.long), 3), torch.zeros(3))
    # balanced weights make each class contribute equally to the weighted loss
    logits = torch.randn(1, 2, 2, 3)
    target = torch.tensor([[[0, 0, 0], [0, 0, 1]]])
    w = class_weights(target, 2)
    nll = -F.log_softmax(logits, 1).gather(1, target[:, None])[:, 0]
    per_class = [float(w[c] * nll[target == c].sum()) for c in range(2)]
    weighted = float(pixel_cross_entropy(logits, target, w))
    assert weighted == pytest.approx(sum(per_class) / float(w[target].sum()), rel=1e-5)
    assert float(w[0] * 5) == pytest.approx(float(w[1] * 1))        # equal total weight


@pytest.mark.parametrize("args, kwargs, match", [
    ((torch.zeros(2, 2, dtype=torch.long), 2), {"method": "log"}, "method"),
    ((), {}, "exactly one of seg"),
    ((torch.zeros(2, dtype=torch.long), 2), {"counts": torch.ones(2)}, "exactly one"),
    ((torch.full((2,), 2), 2), {}, r"seg labels must lie in \[0, 2\)"),
    ((torch.zeros(2), 2), {}, "integer labels"),
    ((torch.zeros(2, dtype=torch.long),), {}, "num_classes"),
    ((), {"counts": torch.ones(2, 2)}, r"counts must have shape \(C,\), got \(2, 2\)"),
    ((), {"counts": torch.tensor([1, -1])}, "negative"),
])
def test_class_weights_bad_input(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        class_weights(*args, **kwargs)


# ---------------------------------------------------------------- dice_coefficient


def test_dice_coefficient_set_formula_by_hand():
    a = torch.tensor([[1, 1], [0, 0]])
    b = torch.tensor([[1, 0], [1, 0]])
    # |A| = 2, |B| = 2, |A ∩ B| = 1: 2 * 1 / 4
    assert float(dice_coefficient(a, b)) == pytest.approx(0.5)
    assert float(dice_coefficient(a, a)) == 1.0
    assert float(dice_coefficient(a, 1 - a)) == 0.0
    assert float(dice_coefficient(a.bool(), b.bool())) == pytest.approx(0.5)
    empty = torch.zeros(2, 2, dtype=torch.long)
    assert float(dice_coefficient(empty, empty)) == 1.0            # both empty: defined as 1
    assert float(dice_coefficient(empty, empty, empty_score=0.0)) == 0.0
    assert float(dice_coefficient(empty, b)) == 0.0


def _loop_dice(pred, target, c):
    a = {i for i, v in enumerate(pred.flatten().tolist()) if v == c}
    b = {i for i, v in enumerate(target.flatten().tolist()) if v == c}
    return 2 * len(a & b) / (len(a) + len(b)) if a or b else 1.0


@pytest.mark.parametrize("device", DEVICES)
def test_dice_coefficient_per_class_against_sets(device):
    g = torch.Generator().manual_seed(3)
    pred = torch.randint(0, 3, (2, 4, 5), generator=g).to(device)
    target = torch.randint(0, 3, (2, 4, 5), generator=g).to(device)
    got = dice_coefficient(pred, target, num_classes=5)               # classes 3, 4 absent
    assert got.shape == (5,) and got.dtype == torch.float32
    expected = [_loop_dice(pred.cpu(), target.cpu(), c) for c in range(5)]
    assert got.tolist() == pytest.approx(expected)
    assert got[3:].tolist() == [1.0, 1.0]


def test_dice_coefficient_bad_input():
    with pytest.raises(ValueError, match=r"same shape, got \(2, 2\) and \(2, 3\)"):
        dice_coefficient(torch.zeros(2, 2, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="binary mask"):
        dice_coefficient(torch.tensor([0, 2]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="bool or integer"):
        dice_coefficient(torch.zeros(2), torch.zeros(2))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        dice_coefficient(torch.tensor([0, 2]), torch.tensor([0, 1]), num_classes=2)


# ---------------------------------------------------------------- dice_loss


def loop_dice_loss(logits, target, smooth):
    n, c, h, w = logits.shape
    probs = logits.softmax(dim=1)
    total = 0.0
    for k in range(c):
        inter = size_p = size_g = 0.0
        for b, i, j in itertools.product(range(n), range(h), range(w)):
            p, gk = float(probs[b, k, i, j]), float(target[b, i, j] == k)
            inter, size_p, size_g = inter + p * gk, size_p + p, size_g + gk
        total += 1 - (2 * inter + smooth) / (size_p + size_g + smooth)
    return total / c


def test_dice_loss_hand_worked_2x2():
    # 2 classes; softmax of (ln 3, 0) is (3/4, 1/4). Four pixels, all predicted (3/4, 1/4);
    # truth: class 0 at 3 pixels, class 1 at 1 pixel.
    logits = torch.tensor([math.log(3), 0.0]).reshape(1, 2, 1, 1).expand(1, 2, 2, 2)
    target = torch.tensor([[[0, 0], [0, 1]]])
    # class 0: sum p g = 3 * 3/4 = 9/4, sum p = 3, sum g = 3; class 1: 1/4, 1, 1
    dice0, dice1 = 2 * (9 / 4) / 6, 2 * (1 / 4) / 2
    assert float(dice_loss(logits, target, smooth=0.0)) == pytest.approx(
        1 - (dice0 + dice1) / 2, rel=1e-6)
    s0, s1 = (2 * 9 / 4 + 1) / 7, (2 * 1 / 4 + 1) / 3
    assert float(dice_loss(logits, target, smooth=1.0)) == pytest.approx(1 - (s0 + s1) / 2,
                                                                        rel=1e-6)


def test_dice_loss_of_a_confident_correct_prediction_is_the_hard_dice():
    target = torch.tensor([[[0, 1], [2, 2]], [[1, 1], [0, 0]]])
    logits = 1000 * F.one_hot(target, 4).permute(0, 3, 1, 2).double()   # softmax = one-hot
    assert float(dice_loss(logits, target, smooth=1.0)) == pytest.approx(0.0, abs=1e-12)
    # smooth = 0: the absent class 3 scores 1 - 0 / sum(p) = 1 however small its p ...
    assert float(dice_loss(logits / 50, target, smooth=0.0)) == pytest.approx(1 / 4, abs=1e-6)
    # ... and 0 / 0 = nan once its probabilities underflow to 0
    assert math.isnan(float(dice_loss(logits, target, smooth=0.0)))
    # a soft loss at the hard limit equals 1 - mean hard Dice over the present classes
    other = torch.tensor([[[0, 0], [2, 2]], [[1, 1], [0, 1]]])
    hard = dice_coefficient(other, target, num_classes=3)
    got = dice_loss(1000 * F.one_hot(other, 3).permute(0, 3, 1, 2).double(), target, smooth=0.0)
    assert float(got) == pytest.approx(1 - float(hard.mean()), abs=1e-6)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("smooth", [0.0, 1.0, 0.5])
def test_dice_loss_against_a_loop(device, dtype, smooth):
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(2, 3, 3, 4, generator=g).to(device, dtype)
    target = torch.randint(0, 3, (2, 3, 4), generator=g).to(device)
    got = dice_loss(logits, target, smooth)
    assert got.dtype == dtype and got.device == logits.device
    expected = loop_dice_loss(logits.cpu().double(), target.cpu(), smooth)
    assert float(got) == pytest.approx(expected, rel=1e-5 if dtype == torch.float32 else 1e-12)


def test_dice_loss_sums_over_the_whole_batch():
    # not the mean of per-image losses
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(2, 3, 4, 4, generator=g)
    target = torch.randint(0, 3, (2, 4, 4), generator=g)
    per_image = (dice_loss(logits[:1], target[:1]) + dice_loss(logits[1:], target[1:])) / 2
    assert not torch.isclose(dice_loss(logits, target), per_image)
    # and is invariant to the order of the images
    assert torch.isclose(dice_loss(logits, target), dice_loss(logits.flip(0), target.flip(0)))


def test_dice_loss_gradient_and_descent():
    g = torch.Generator().manual_seed(6)
    target = torch.randint(0, 3, (2, 4, 4), generator=g)
    logits = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: dice_loss(x, target, 1.0), (logits,))
    losses = []
    x = logits.detach().clone().requires_grad_(True)
    for _ in range(20):
        loss = dice_loss(x, target)
        (grad,) = torch.autograd.grad(loss, x)
        losses.append(loss.item())
        x = (x - 50.0 * grad).detach().requires_grad_(True)
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False))
    assert losses[-1] < 0.5 * losses[0]


def test_dice_loss_empty_and_bad_input():
    empty = dice_loss(torch.zeros(0, 3, 2, 2), torch.zeros(0, 2, 2, dtype=torch.long))
    assert float(empty) == 0.0                                       # smooth / smooth
    assert math.isnan(float(dice_loss(torch.zeros(0, 3, 2, 2),
                                      torch.zeros(0, 2, 2, dtype=torch.long), smooth=0.0)))
    with pytest.raises(ValueError, match="smooth"):
        dice_loss(torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long), smooth=-1)
    with pytest.raises(ValueError, match=r"seg labels must lie in \[0, 2\)"):
        dice_loss(torch.zeros(1, 2, 2, 2), torch.full((1, 2, 2), 2))
    with pytest.raises(ValueError, match=r"target must have shape \(N, H, W\)"):
        dice_loss(torch.zeros(1, 2, 2, 2), torch.zeros(2, 2, dtype=torch.long))
