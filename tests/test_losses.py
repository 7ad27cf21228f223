import math

import pytest
import torch

from course_lib.losses import cls_loc_loss, cls_loc_loss_terms


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
