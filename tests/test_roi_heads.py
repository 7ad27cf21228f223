"""The second stage (course_lib.models.roi_heads) against torchvision's RoIHeads."""

import pytest
import torch
from torchvision.models.detection._utils import Matcher
from torchvision.models.detection.roi_heads import RoIHeads, fastrcnn_loss

from course_lib.device import available_devices
from course_lib.models.roi_heads import (
    BOX_WEIGHTS,
    BoxHead,
    fast_rcnn_loss,
    match_proposals,
    postprocess_detections,
    sample_proposals,
)

IMAGE = (64, 80)  # (height, width)


def torchvision_roi_heads(batch=16, fraction=0.25, score=0.05, nms=0.5, per_img=100):
    return RoIHeads(None, None, None, 0.5, 0.5, batch, fraction, BOX_WEIGHTS, score, nms, per_img)


def random_boxes(n, generator, size=IMAGE):
    xy = torch.rand(n, 2, generator=generator) * torch.tensor([size[1] - 10, size[0] - 10])
    wh = torch.rand(n, 2, generator=generator) * 30 + 2
    return torch.cat([xy, xy + wh], dim=1)


def random_targets(generator, counts=(3, 0, 5)):
    return [{"boxes": random_boxes(n, generator),
             "labels": torch.randint(1, 4, (n,), generator=generator)} for n in counts]


def jitter(boxes, generator, n_per_box=6):
    """Proposals near the GT boxes (so that some are foreground) plus random ones."""
    near = boxes.repeat(n_per_box, 1) + torch.randn(len(boxes) * n_per_box, 4,
                                                    generator=generator) * 3
    near = torch.cat([near[:, :2], torch.maximum(near[:, 2:], near[:, :2] + 1)], dim=1)
    return torch.cat([near, random_boxes(20, generator)])


@pytest.mark.parametrize("thresholds", [(0.5, 0.5), (0.6, 0.3)])
def test_match_proposals_equals_torchvision_matcher(thresholds):
    g = torch.Generator().manual_seed(0)
    gt = random_boxes(5, g)
    labels_gt = torch.tensor([1, 2, 3, 1, 2])
    proposals = jitter(gt, g)
    labels, matched = match_proposals(proposals, gt, labels_gt, *thresholds)
    from torchvision.ops import box_iou

    idx = Matcher(*thresholds, allow_low_quality_matches=False)(box_iou(gt, proposals))
    expected = labels_gt[idx.clamp(min=0)]
    expected[idx == Matcher.BELOW_LOW_THRESHOLD] = 0
    expected[idx == Matcher.BETWEEN_THRESHOLDS] = -1
    assert torch.equal(labels, expected)
    fg = labels > 0
    assert torch.equal(matched[fg], idx[fg])


def test_match_proposals_without_gt_is_all_background():
    labels, matched = match_proposals(torch.rand(4, 4) * 10 + torch.tensor([0, 0, 10, 10]),
                                      torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64))
    assert labels.tolist() == [0, 0, 0, 0] and matched.tolist() == [0, 0, 0, 0]


def test_sample_proposals_equals_torchvision_select_training_samples():
    g = torch.Generator().manual_seed(1)
    targets = random_targets(g)
    proposals = [jitter(t["boxes"], g) if len(t["boxes"]) else random_boxes(30, g)
                 for t in targets]
    torch.manual_seed(5)
    regions, labels, deltas = sample_proposals(proposals, targets, 16, 0.25)
    torch.manual_seed(5)
    tv_regions, _, tv_labels, tv_deltas = torchvision_roi_heads(16, 0.25).select_training_samples(
        [p.clone() for p in proposals], targets)
    for ours, theirs in zip(regions, tv_regions, strict=True):
        assert torch.equal(ours, theirs)
    for ours, theirs in zip(labels, tv_labels, strict=True):
        assert torch.equal(ours, theirs)
    for ours, theirs, lab in zip(deltas, tv_deltas, labels, strict=True):
        fg = lab > 0  # torchvision's targets of background regions point at a dummy box
        torch.testing.assert_close(ours[fg], theirs[fg])
    assert sum(len(r) for r in regions) == 3 * 16
    assert all((lab > 0).sum() <= 4 for lab in labels)  # 25% of 16


def test_sample_proposals_checks_lengths():
    with pytest.raises(ValueError, match="one target per image"):
        sample_proposals([torch.zeros(0, 4)], [])


def test_fast_rcnn_loss_equals_torchvision():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(12, 4, generator=g)
    deltas = torch.randn(12, 16, generator=g)
    labels = torch.tensor([0, 1, 2, 3, 0, 0, 1, 1, 0, 2, 0, 3])
    targets = torch.randn(12, 4, generator=g)
    ours = fast_rcnn_loss(logits, deltas, labels, targets)
    theirs = fastrcnn_loss(logits, deltas, [labels], [targets])
    torch.testing.assert_close(ours["loss_classifier"], theirs[0])
    torch.testing.assert_close(ours["loss_box_reg"], theirs[1])
    with pytest.raises(ValueError, match="box_deltas"):
        fast_rcnn_loss(logits, deltas[:, :8], labels, targets)


def test_fast_rcnn_loss_without_foreground_has_zero_box_loss():
    loss = fast_rcnn_loss(torch.randn(3, 2), torch.randn(3, 8), torch.zeros(3, dtype=torch.int64),
                          torch.randn(3, 4))
    assert loss["loss_box_reg"].item() == 0.0


@pytest.mark.parametrize("device", available_devices())
def test_postprocess_detections_equals_torchvision(device):
    g = torch.Generator().manual_seed(3)
    proposals = [random_boxes(n, g).to(device) for n in (7, 0, 12)]
    logits = (torch.randn(19, 4, generator=g) * 2).to(device)
    deltas = (torch.randn(19, 16, generator=g) * 0.5).to(device)
    ours = postprocess_detections(logits, deltas, proposals, IMAGE, 0.05, 0.5, 10)
    boxes, scores, labels = torchvision_roi_heads(per_img=10).postprocess_detections(
        logits, deltas, proposals, [IMAGE] * 3)
    assert len(ours) == 3 and len(ours[1]["boxes"]) == 0
    for det, b, s, lab in zip(ours, boxes, scores, labels, strict=True):
        torch.testing.assert_close(det["boxes"], b)
        torch.testing.assert_close(det["scores"], s)
        assert torch.equal(det["labels"], lab) and det["labels"].dtype == torch.int64


def test_box_head_shapes():
    head = BoxHead(8 * 3 * 3, num_classes=4, hidden=16)
    logits, deltas = head(torch.randn(5, 8, 3, 3))
    assert logits.shape == (5, 5) and deltas.shape == (5, 20)
    logits, deltas = head(torch.randn(0, 8, 3, 3))
    assert logits.shape == (0, 5) and deltas.shape == (0, 20)
