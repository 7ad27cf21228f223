"""Tests for course_lib.matching against torchvision's RPN labelling and sampler."""

import pytest
import torch
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler, Matcher
from torchvision.models.detection.rpn import RegionProposalNetwork

from course_lib.anchors import generate_anchors
from course_lib.boxes import box_iou
from course_lib.device import available_devices
from course_lib.matching import label_anchors, sample_labels

DEVICES = available_devices()
DTYPES = [torch.float32, torch.float64]


def torchvision_labels(anchors, gt_boxes, pos_iou=0.7, neg_iou=0.3):
    """torchvision's RPN labels and matched GT index (recovered from the matcher)."""
    rpn = RegionProposalNetwork(None, None, pos_iou, neg_iou, 256, 0.5, {}, {}, 0.7)
    labels, matched_boxes = rpn.assign_targets_to_anchors([anchors], [{"boxes": gt_boxes}])
    if gt_boxes.shape[0] == 0:
        return labels[0], torch.zeros(anchors.shape[0], dtype=torch.int64), matched_boxes[0]
    matched = Matcher(pos_iou, neg_iou, allow_low_quality_matches=True)(box_iou(gt_boxes, anchors))
    return labels[0], matched.clamp(min=0), matched_boxes[0]


def random_boxes(n, generator, grid=False, size=200):
    xy = torch.rand(n, 2, generator=generator, dtype=torch.float64) * size
    wh = 4 + torch.rand(n, 2, generator=generator, dtype=torch.float64) * size / 2
    if grid:  # coarse integer corners: many identical boxes and tied IoUs
        xy, wh = (xy / 8).floor() * 8, (wh / 8).ceil() * 8
    return torch.cat([xy, xy + wh], dim=1)


def assert_same_as_torchvision(anchors, gt_boxes, pos_iou=0.7, neg_iou=0.3):
    labels, matched = label_anchors(anchors, gt_boxes, pos_iou, neg_iou)
    tv_labels, tv_matched, tv_boxes = torchvision_labels(
        anchors.cpu(), gt_boxes.cpu(), pos_iou, neg_iou
    )
    assert labels.dtype == torch.float32 and matched.dtype == torch.int64
    assert labels.shape == matched.shape == (anchors.shape[0],)
    assert labels.device == matched.device == anchors.device
    assert torch.equal(labels.cpu(), tv_labels)
    assert torch.equal(matched.cpu(), tv_matched)
    if gt_boxes.shape[0] > 0:
        assert torch.equal(gt_boxes.cpu()[matched.cpu()], tv_boxes.to(gt_boxes.dtype))
    return labels, matched


RANDOM_SIZES = [(50, 3), (200, 1), (300, 10), (20, 20), (1, 4), (500, 30), (7, 1), (64, 64)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", range(len(RANDOM_SIZES)))
def test_random_sets_match_torchvision(device, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    num_anchors, num_gt = RANDOM_SIZES[seed]
    grid = seed % 2 == 1
    anchors = random_boxes(num_anchors, g, grid).to(dtype=dtype, device=device)
    gt = random_boxes(num_gt, g, grid).to(dtype=dtype, device=device)
    for pos_iou, neg_iou in ((0.7, 0.3), (0.5, 0.5), (0.6, 0.1), (1.0, 0.0)):
        assert_same_as_torchvision(anchors, gt, pos_iou, neg_iou)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_real_anchor_grid_matches_torchvision(device, dtype):
    g = torch.Generator().manual_seed(0)
    anchors = generate_anchors((12, 16), 16, (32, 64, 128), (0.5, 1.0, 2.0), dtype, device)
    gt = random_boxes(6, g, size=180).to(dtype=dtype, device=device)
    gt = torch.cat([gt, anchors[[100, 100, 901]] + 3])  # duplicate GTs: tied best anchors
    labels, _ = assert_same_as_torchvision(anchors, gt)
    assert (labels == 1).any() and (labels == 0).any() and (labels == -1).any()


@pytest.mark.parametrize("device", DEVICES)
def test_ties_match_torchvision(device):
    g = torch.Generator().manual_seed(3)
    anchors = random_boxes(40, g, grid=True)
    gt = random_boxes(5, g, grid=True)
    anchors = torch.cat([anchors, anchors[:20], gt, gt])  # every GT has two best anchors
    gt = torch.cat([gt, gt[[0, 2]]])  # duplicate GTs: every anchor ties between two GTs
    iou = box_iou(gt, anchors)
    assert ((iou == iou.max(dim=1, keepdim=True).values).sum(dim=1) > 1).all()
    for pos_iou, neg_iou in ((0.7, 0.3), (0.5, 0.4)):
        assert_same_as_torchvision(anchors.to(device), gt.to(device), pos_iou, neg_iou)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_iou_exactly_at_the_thresholds(device, dtype):
    gt = torch.tensor([[0, 0, 10, 1]], dtype=dtype, device=device)  # area 10
    anchors = torch.tensor(
        [
            [0, 0, 10, 1],  # IoU 1 (the GT's best anchor)
            [0, 0, 7, 1],  # IoU 7/10, exactly pos_iou -> positive
            [0, 0, 3, 1],  # IoU 3/10, exactly neg_iou -> ignored
            [0, 0, 5, 1],  # IoU 1/2 -> ignored
            [0, 0, 2, 1],  # IoU 2/10 -> negative
            [20, 0, 30, 1],  # IoU 0 -> negative
        ],
        dtype=dtype,
        device=device,
    )
    labels, matched = assert_same_as_torchvision(anchors, gt)
    assert labels.tolist() == [1, 1, -1, -1, 0, 0]
    assert matched.tolist() == [0] * 6
    # the boundaries move with the thresholds: IoU == neg_iou is not negative, == pos_iou is
    labels, _ = assert_same_as_torchvision(anchors, gt, pos_iou=0.5, neg_iou=0.2)
    assert labels.tolist() == [1, 1, -1, 1, -1, 0]


@pytest.mark.parametrize("device", DEVICES)
def test_low_quality_match_rule(device):
    # GT 0 overlaps anchor 0 with IoU 0.4 at best: anchor 0 is still positive.
    # GT 1 has two anchors tied at its best IoU 0.5: both positive.
    gt = torch.tensor([[0, 0, 4, 1], [100, 0, 102, 1]], dtype=torch.float32, device=device)
    anchors = torch.tensor(
        [
            [0, 0, 10, 1],  # IoU 0.4 with GT 0
            [0, 0, 1, 1],  # IoU 0.25 with GT 0 -> negative
            [100, 0, 104, 1],  # IoU 0.5 with GT 1
            [98, 0, 102, 1],  # IoU 0.5 with GT 1 (tie)
            [50, 0, 60, 1],  # no overlap -> negative
        ],
        dtype=torch.float32,
        device=device,
    )
    labels, matched = assert_same_as_torchvision(anchors, gt)
    assert labels.tolist() == [1, 0, 1, 1, 0]
    assert matched[[0, 2, 3]].tolist() == [0, 1, 1]
    # without the rule all of them would be ignored or negative
    tv_plain = Matcher(0.7, 0.3, allow_low_quality_matches=False)(box_iou(gt, anchors).cpu())
    assert (tv_plain < 0).all()


def test_low_quality_anchor_keeps_its_own_best_gt():
    # Anchor 0 is GT 0's best anchor (IoU 2/12), but its own best GT is GT 1 (IoU 0.25): it
    # becomes positive and is matched to GT 1, as in torchvision. Anchor 1 (negative) gets 0.
    gt = torch.tensor([[8.0, 0, 12, 1], [0, 0, 2.5, 1]])
    anchors = torch.tensor([[0.0, 0, 10, 1], [40, 0, 50, 1], [0, 0, 2.5, 1]])
    labels, matched = assert_same_as_torchvision(anchors, gt)
    assert labels.tolist() == [1, 0, 1] and matched.tolist() == [1, 0, 1]


def test_gt_without_any_overlap_makes_zero_iou_anchors_positive():
    # torchvision's quirk, kept: a GT that overlaps no anchor has best IoU 0, and every anchor
    # with IoU 0 with it is "a best anchor" of it.
    gt = torch.tensor([[0.0, 0, 10, 10], [500, 500, 510, 510]])
    anchors = torch.tensor([[0.0, 0, 10, 10], [0, 0, 5, 5], [100, 100, 110, 110]])
    labels, matched = assert_same_as_torchvision(anchors, gt)
    assert labels.tolist() == [1, 1, 1] and matched.tolist() == [0, 0, 0]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_no_gt_and_no_anchors(device, dtype):
    anchors = random_boxes(10, torch.Generator().manual_seed(0)).to(dtype=dtype, device=device)
    no_gt = torch.zeros(0, 4, dtype=dtype, device=device)
    labels, matched = assert_same_as_torchvision(anchors, no_gt)
    assert labels.tolist() == [0.0] * 10 and matched.tolist() == [0] * 10  # background image
    for gt in (anchors[:3], no_gt):
        labels, matched = label_anchors(anchors[:0], gt)
        assert labels.shape == matched.shape == (0,)
        assert labels.dtype == torch.float32 and matched.dtype == torch.int64
        assert labels.device == matched.device == anchors.device


def test_zero_area_boxes_like_torchvision():
    # A zero-area anchor against a zero-area GT has IoU nan (0 / 0); torchvision's matcher
    # leaves such an anchor matched (positive).
    gt = torch.tensor([[5.0, 5, 5, 5], [0, 0, 10, 10]])
    anchors = torch.tensor([[5.0, 5, 5, 5], [0, 0, 10, 10], [1, 1, 1, 1], [20, 20, 30, 30]])
    labels, _ = assert_same_as_torchvision(anchors, gt)
    assert labels.tolist() == [1, 1, 1, 0]


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match=r"anchors.*\(3, 5\)"):
        label_anchors(torch.zeros(3, 5), torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"gt_boxes.*\(4,\)"):
        label_anchors(torch.zeros(3, 4), torch.zeros(4))
    with pytest.raises(ValueError, match="neg_iou <= pos_iou"):
        label_anchors(torch.zeros(3, 4), torch.zeros(2, 4), pos_iou=0.3, neg_iou=0.7)
    with pytest.raises(ValueError, match=r"labels.*\(2, 3\)"):
        sample_labels(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="batch_size"):
        sample_labels(torch.zeros(3), batch_size=-1)
    with pytest.raises(ValueError, match="positive_fraction"):
        sample_labels(torch.zeros(3), positive_fraction=1.5)


# ----------------------------------------------------------------------------- sample_labels


def random_labels(n, p_pos, p_neg, generator):
    """Labels 1 / 0 / -1 with probabilities p_pos, p_neg and the rest."""
    u = torch.rand(n, generator=generator)
    labels = torch.full((n,), -1.0)
    labels[u < p_pos + p_neg] = 0.0
    labels[u < p_pos] = 1.0
    return labels


LABEL_CASES = [  # (n, p_pos, p_neg, batch_size, positive_fraction)
    (2000, 0.05, 0.6, 256, 0.5),  # plenty of both
    (2000, 0.01, 0.6, 256, 0.5),  # too few positives: more negatives
    (300, 0.5, 0.05, 256, 0.5),  # too few negatives: a smaller batch
    (50, 0.2, 0.3, 256, 0.5),  # fewer labelled anchors than the batch: take them all
    (1000, 0.3, 0.3, 64, 0.25),
    (1000, 0.3, 0.3, 100, 0.0),  # negatives only
    (1000, 0.3, 0.3, 100, 1.0),  # positives first, negatives only if positives run out
    (1000, 0.3, 0.3, 0, 0.5),  # an empty batch
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", range(len(LABEL_CASES)))
def test_sample_labels_counts_and_classes(device, case):
    n, p_pos, p_neg, batch_size, fraction = LABEL_CASES[case]
    labels = random_labels(n, p_pos, p_neg, torch.Generator().manual_seed(case)).to(device)
    g = torch.Generator().manual_seed(0)
    pos, neg = sample_labels(labels, batch_size, fraction, generator=g)
    assert pos.dtype == neg.dtype == torch.bool and pos.shape == neg.shape == labels.shape
    assert pos.device == neg.device == labels.device
    num_pos, num_neg = int((labels == 1).sum()), int((labels == 0).sum())
    expected_pos = min(num_pos, int(batch_size * fraction))
    assert int(pos.sum()) == expected_pos
    assert int(neg.sum()) == min(num_neg, batch_size - expected_pos)
    assert (labels[pos] == 1).all() and (labels[neg] == 0).all()  # never ignored anchors
    assert not (pos & neg).any()


@pytest.mark.parametrize("device", DEVICES)
def test_sample_labels_is_reproducible_and_random(device):
    labels = random_labels(3000, 0.1, 0.5, torch.Generator().manual_seed(1)).to(device)
    first = sample_labels(labels, generator=torch.Generator().manual_seed(42))
    again = sample_labels(labels, generator=torch.Generator().manual_seed(42))
    other = sample_labels(labels, generator=torch.Generator().manual_seed(43))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0]) and not torch.equal(first[1], other[1])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", range(len(LABEL_CASES)))
def test_sample_labels_same_selection_as_torchvision(device, case):
    n, p_pos, p_neg, batch_size, fraction = LABEL_CASES[case]
    labels = random_labels(n, p_pos, p_neg, torch.Generator().manual_seed(case)).to(device)
    sampler = BalancedPositiveNegativeSampler(batch_size, fraction)
    for seed in (0, 1):
        torch.manual_seed(seed)
        tv_pos, tv_neg = sampler([labels])
        torch.manual_seed(seed)
        pos, neg = sample_labels(labels, batch_size, fraction)
        assert torch.equal(pos, tv_pos[0].bool()) and torch.equal(neg, tv_neg[0].bool())


def test_label_then_sample_end_to_end():
    anchors = generate_anchors((10, 10), 16, (32, 64), (0.5, 1.0, 2.0))
    gt = torch.tensor([[20.0, 30, 80, 90], [100, 100, 150, 130]])
    labels, matched = label_anchors(anchors, gt)
    pos, neg = sample_labels(labels, 32, 0.25, generator=torch.Generator().manual_seed(0))
    assert 1 <= int(pos.sum()) <= 8 and int(pos.sum()) + int(neg.sum()) == 32
    assert set(matched[pos].tolist()) <= {0, 1}
