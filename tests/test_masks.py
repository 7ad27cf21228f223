"""Tests for course_lib.masks against torchvision's Mask R-CNN functions and hand-worked cases.

Oracles: ``project_masks_on_boxes``, ``maskrcnn_loss`` and ``paste_masks_in_image`` from
``torchvision.models.detection.roi_heads``.
"""

import pytest
import torch
from torchvision.models.detection.roi_heads import (
    maskrcnn_loss,
    paste_masks_in_image,
    project_masks_on_boxes,
)

from course_lib.masks import mask_loss, mask_targets, paste_masks

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
DTYPES = [torch.float32, torch.float64]
TOL = {torch.float32: 1e-6, torch.float64: 1e-12}


def random_masks(g, num, height, width):
    """(G, H, W) uint8 masks: random rectangles with random holes."""
    masks = torch.zeros(num, height, width, dtype=torch.uint8)
    for i in range(num):
        x1, x2 = sorted(torch.randint(0, width + 1, (2,), generator=g).tolist())
        y1, y2 = sorted(torch.randint(0, height + 1, (2,), generator=g).tolist())
        masks[i, y1:y2, x1:x2] = 1
    holes = torch.rand(num, height, width, generator=g) < 0.1
    return masks * ~holes


def random_boxes(g, num, height, width, dtype):
    """(N, 4) boxes: many partly outside the image, some tiny (under a pixel), some on it."""
    size = torch.tensor([width, height], dtype=torch.float64)
    xy = (torch.rand(num, 2, generator=g, dtype=torch.float64) * 1.3 - 0.2) * size
    wh = torch.rand(num, 2, generator=g, dtype=torch.float64) * 0.8 * size + 0.01
    wh[0::5] *= 0.02  # tiny
    return torch.cat([xy, xy + wh], dim=1).to(dtype)


# ------------------------------------------------------------------ mask_targets


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", range(4))
def test_mask_targets_matches_torchvision(device, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    height, width = [(20, 30), (33, 17), (8, 8), (40, 40)][seed]
    gt_masks = random_masks(g, 3, height, width)
    if seed % 2:
        gt_masks = gt_masks.bool()
    proposals = random_boxes(g, 13, height, width, dtype)
    matched = torch.randint(0, 3, (13,), generator=g)
    size = [28, 7, 14, 5][seed]
    ours = mask_targets(gt_masks.to(device), proposals.to(device), matched.to(device), size)
    expected = project_masks_on_boxes(gt_masks, proposals, matched, size)
    assert ours.shape == (13, size, size) and ours.dtype == dtype
    assert ours.device.type == torch.device(device).type
    torch.testing.assert_close(ours.cpu(), expected, rtol=0, atol=TOL[dtype])
    assert ours.min() >= 0 and ours.max() <= 1 + TOL[dtype]


@pytest.mark.parametrize("device", DEVICES)
def test_mask_targets_hand_worked(device):
    # RoI Align (aligned=False) puts the centre of pixel i at coordinate i. With size 4 and
    # boxes 3 or 4 pixels wide there is one sample per bin, at the bin's centre.
    full = torch.ones(1, 10, 10, dtype=torch.uint8)
    square = torch.zeros(1, 10, 10, dtype=torch.uint8)
    square[0, 2:6, 2:6] = 1  # pixels 2..5: coordinates 2 to 5
    gt = torch.cat([full, square]).to(device)
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0],  # the whole full mask: all ones
                          [2.0, 2.0, 5.0, 5.0],  # exactly over the square: all ones
                          [2.0, 2.0, 6.0, 6.0],  # one pixel more: samples 2.5 .. 5.5
                          [6.0, 6.0, 10.0, 10.0]], device=device)  # the empty corner
    out = mask_targets(gt, boxes, torch.tensor([0, 1, 1, 1], device=device), 4).cpu()
    assert torch.equal(out[0], torch.ones(4, 4))
    assert torch.equal(out[1], torch.ones(4, 4))
    # the last sample, at 5.5, is halfway between pixel 5 (1) and pixel 6 (0)
    edge = torch.tensor([1.0, 1.0, 1.0, 0.5])
    assert torch.equal(out[2], edge[:, None] * edge[None, :])
    assert torch.equal(out[3], torch.zeros(4, 4))


@pytest.mark.parametrize("device", DEVICES)
def test_mask_targets_empty_and_errors(device):
    gt = torch.ones(2, 5, 5, dtype=torch.uint8, device=device)
    out = mask_targets(gt, torch.zeros(0, 4, device=device, dtype=torch.float64),
                       torch.zeros(0, dtype=torch.int64, device=device), 7)
    assert out.shape == (0, 7, 7) and out.dtype == torch.float64
    assert out.device.type == torch.device(device).type
    # no ground truth and no proposal is fine too
    assert mask_targets(gt[:0], torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64),
                        3).shape == (0, 3, 3)
    boxes, idx = torch.zeros(2, 4), torch.zeros(2, dtype=torch.int64)
    with pytest.raises(ValueError, match=r"gt_masks must have shape \(G, H, W\), got \(5, 5\)"):
        mask_targets(gt[0].cpu(), boxes, idx, 7)
    with pytest.raises(ValueError, match=r"proposals .* \(P, 4\), got \(2, 5\)"):
        mask_targets(gt.cpu(), torch.zeros(2, 5), idx, 7)
    with pytest.raises(ValueError, match=r"matched_idxs must have shape \(2,\)"):
        mask_targets(gt.cpu(), boxes, idx[:1], 7)
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        mask_targets(gt.cpu(), boxes, torch.tensor([0, 2]), 7)
    with pytest.raises(ValueError, match="size"):
        mask_targets(gt.cpu(), boxes, idx, 0)


# ------------------------------------------------------------------ mask_loss


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_mask_loss_matches_torchvision(device, dtype):
    g = torch.Generator().manual_seed(0)
    size, classes = 7, 4
    gt_masks = [random_masks(g, 2, 16, 20), random_masks(g, 3, 16, 20)]
    gt_labels = [torch.tensor([1, 3]), torch.tensor([2, 2, 1])]
    proposals = [random_boxes(g, 5, 16, 20, dtype), random_boxes(g, 4, 16, 20, dtype)]
    matched = [torch.randint(0, 2, (5,), generator=g), torch.randint(0, 3, (4,), generator=g)]
    logits = torch.randn(9, classes, size, size, generator=g, dtype=dtype)

    theirs_logits = logits.clone().requires_grad_(True)
    expected = maskrcnn_loss(theirs_logits, proposals, gt_masks, gt_labels, matched)
    expected.backward()

    # the same inputs, flattened over the two images as the roi heads do
    labels = torch.cat([lab[m] for lab, m in zip(gt_labels, matched, strict=True)])
    targets = torch.cat([mask_targets(gm, p, m, size)
                         for gm, p, m in zip(gt_masks, proposals, matched, strict=True)])
    ours_logits = logits.clone().to(device).requires_grad_(True)
    loss = mask_loss(ours_logits, labels.to(device), targets.to(device))
    loss.backward()
    assert loss.dtype == dtype and loss.shape == ()
    torch.testing.assert_close(loss.cpu(), expected.detach(), rtol=0, atol=TOL[dtype])
    torch.testing.assert_close(ours_logits.grad.cpu(), theirs_logits.grad, rtol=0,
                               atol=TOL[dtype])
    # only the ground-truth class's channel gets a gradient
    other = torch.ones(9, classes, dtype=torch.bool)
    other[torch.arange(9), labels] = False
    assert torch.all(ours_logits.grad.cpu()[other] == 0)


def test_mask_loss_hand_worked():
    # logit 0 -> p = 0.5 -> BCE = log 2 for any target; a confident right logit -> ~0
    logits = torch.zeros(1, 3, 2, 2)
    logits[0, 2] = torch.tensor([[20.0, -20.0], [20.0, -20.0]])
    target = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    assert mask_loss(logits, torch.tensor([1]), target).item() == pytest.approx(
        torch.log(torch.tensor(2.0)).item())
    assert mask_loss(logits, torch.tensor([2]), target).item() == pytest.approx(0.0, abs=1e-8)


@pytest.mark.parametrize("device", DEVICES)
def test_mask_loss_empty_and_errors(device):
    logits = torch.randn(0, 3, 5, 5, device=device, requires_grad=True)
    loss = mask_loss(logits, torch.zeros(0, dtype=torch.int64, device=device),
                     torch.zeros(0, 5, 5, device=device))
    assert loss.item() == 0.0
    loss.backward()
    assert logits.grad.shape == logits.shape
    logits = torch.randn(2, 3, 5, 5)
    with pytest.raises(ValueError, match=r"mask_logits must have shape \(P, C, M, M\)"):
        mask_loss(logits[:, :, :4], torch.tensor([1, 2]), torch.zeros(2, 4, 5))
    with pytest.raises(ValueError, match=r"labels must have shape \(2,\)"):
        mask_loss(logits, torch.tensor([1]), torch.zeros(2, 5, 5))
    with pytest.raises(ValueError, match=r"targets must have shape \(2, 5, 5\)"):
        mask_loss(logits, torch.tensor([1, 2]), torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        mask_loss(logits, torch.tensor([1, 3]), torch.zeros(2, 5, 5))


# ------------------------------------------------------------------ paste_masks


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", range(4))
def test_paste_masks_matches_torchvision(device, dtype, seed):
    g = torch.Generator().manual_seed(10 + seed)
    height, width = [(30, 40), (25, 19), (64, 64), (9, 50)][seed]
    side = [28, 14, 7, 5][seed]
    num = 25
    probs = torch.rand(num, 1, side, side, generator=g, dtype=dtype)
    # boxes partly outside and tiny. torchvision fails on boxes entirely outside the image (a
    # negative slice end), so keep a corner inside; detections are clipped to the image anyway
    # (test_paste_masks_hand_worked checks boxes entirely outside)
    boxes = random_boxes(g, num, height, width, dtype)
    boxes[:, :2] = boxes[:, :2].clamp(max=torch.tensor([width - 1.0, height - 1.0],
                                                        dtype=dtype))
    boxes[:, 2:] = boxes[:, 2:].clamp(min=0)
    for padding in (1, 0, 2):
        expected = paste_masks_in_image(probs, boxes, (height, width), padding)[:, 0]
        ours = paste_masks(probs.to(device), boxes.to(device), (height, width),
                           threshold=None, padding=padding)
        assert ours.shape == (num, height, width) and ours.dtype == dtype
        assert ours.device.type == torch.device(device).type
        torch.testing.assert_close(ours.cpu(), expected, rtol=0, atol=1e-6)
        binary = paste_masks(probs[:, 0].to(device), boxes.to(device), (height, width),
                             padding=padding)
        assert binary.dtype == torch.uint8
        assert torch.equal(binary.cpu(), (expected > 0.5).to(torch.uint8))


def test_paste_masks_hand_worked():
    # A 2x2 mask of ones, padding 0: the box (1, 1, 3, 3) covers pixels 1..3 (both ends, as
    # torchvision), so a 3x3 block of ones in a 5x5 image.
    ones = torch.ones(1, 2, 2)
    out = paste_masks(ones, torch.tensor([[1.0, 1.0, 3.0, 3.0]]), (5, 5), threshold=None,
                      padding=0)
    expected = torch.zeros(1, 5, 5)
    expected[0, 1:4, 1:4] = 1
    assert torch.equal(out, expected)
    # a box entirely outside the image pastes nothing; one over the corner is cut
    boxes = torch.tensor([[10.0, 10.0, 12.0, 12.0], [-2.0, -2.0, 0.0, 0.0]])
    out = paste_masks(ones.repeat(2, 1, 1), boxes, (5, 5), threshold=0.5, padding=0)
    assert out[0].sum() == 0 and out[1].tolist()[0][:2] == [1, 0] and out[1].sum() == 1


def test_paste_masks_empty_and_errors():
    out = paste_masks(torch.zeros(0, 1, 28, 28), torch.zeros(0, 4), (7, 9))
    assert out.shape == (0, 7, 9) and out.dtype == torch.uint8
    out = paste_masks(torch.zeros(0, 28, 28, dtype=torch.float64), torch.zeros(0, 4), (7, 9),
                      threshold=None)
    assert out.shape == (0, 7, 9) and out.dtype == torch.float64
    with pytest.raises(ValueError, match=r"masks must be .* got \(2, 28, 27\)"):
        paste_masks(torch.zeros(2, 28, 27), torch.zeros(2, 4), (7, 9))
    with pytest.raises(ValueError, match=r"masks must be .* torch.uint8"):
        paste_masks(torch.zeros(2, 28, 28, dtype=torch.uint8), torch.zeros(2, 4), (7, 9))
    with pytest.raises(ValueError, match=r"boxes must have shape \(2, 4\)"):
        paste_masks(torch.zeros(2, 28, 28), torch.zeros(3, 4), (7, 9))
    with pytest.raises(ValueError, match="image_size"):
        paste_masks(torch.zeros(2, 28, 28), torch.zeros(2, 4), (7, -1))
