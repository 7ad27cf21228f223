"""Mask R-CNN: mask targets, the mask branch's outputs, errors, and a few steps that learn."""

import copy

import pytest
import torch
from torchvision.models.detection.roi_heads import maskrcnn_inference, project_masks_on_boxes

from course_lib.device import available_devices
from course_lib.masks import mask_targets, paste_masks
from course_lib.models.backbone import TinyBackbone
from course_lib.models.mask_rcnn import MaskHead, MaskRCNN, project_masks
from course_lib.models.roi_heads import match_proposals, sample_proposals

S = 64  # image side
LOSSES = {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask"}


def scene_batch():
    """Two 64 px images: a red square, a green disc and a green square partly hiding it."""
    images = torch.full((2, 3, S, S), 0.1)
    ys, xs = torch.meshgrid(torch.arange(S), torch.arange(S), indexing="ij")
    disc = ((xs - 40.0) ** 2 + (ys - 40.0) ** 2 <= 14.0**2).to(torch.uint8)
    square = torch.zeros(S, S, dtype=torch.uint8)
    square[8:28, 8:28] = 1
    cover = torch.zeros(S, S, dtype=torch.uint8)
    cover[20:36, 20:36] = 1  # on top of the disc: the disc's visible mask loses a corner
    masks = [torch.stack([square, disc]), torch.stack([disc * (1 - cover), cover])]
    labels = [torch.tensor([1, 2]), torch.tensor([2, 1])]
    targets = []
    for image, image_masks, image_labels in zip(images, masks, labels, strict=True):
        for mask, label in zip(image_masks, image_labels, strict=True):
            image[label - 1][mask.bool()] = 0.9  # class 1 red, class 2 green
        boxes = torch.stack([_box(m) for m in image_masks])
        targets.append({"boxes": boxes, "labels": image_labels, "masks": image_masks})
    return list(images), targets


def _box(mask):
    ys, xs = torch.where(mask.bool())
    return torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)


def small(**kwargs):
    torch.manual_seed(0)
    backbone = TinyBackbone(out_channels=16, width=8, num_stages=2)
    return MaskRCNN(2, S, backbone=backbone, anchor_sizes=(16, 32), hidden=32,
                    rpn_pre_nms_top_n=(200, 100), rpn_post_nms_top_n=(50, 20), mask_roi_size=7,
                    mask_width=16, mask_convs=2, **kwargs)


def test_project_masks_equals_mask_targets_and_torchvision():
    torch.manual_seed(1)
    _, targets = scene_batch()
    gt_masks = targets[1]["masks"]
    regions = torch.tensor([[18.0, 18.0, 56.0, 56.0], [20.0, 20.0, 36.0, 36.0],
                            [10.5, 25.25, 50.0, 60.0], [0.0, 0.0, 64.0, 64.0]])
    matched = torch.tensor([0, 1, 0, 1])
    ours = project_masks(gt_masks, regions, matched, 28)
    assert ours.shape == (4, 28, 28)
    torch.testing.assert_close(ours, mask_targets(gt_masks, regions, matched, 28))
    torch.testing.assert_close(ours, project_masks_on_boxes(gt_masks, regions, matched, 28))
    assert project_masks(gt_masks, regions[:0], matched[:0], 14).shape == (0, 14, 14)


def test_mask_head_shapes_and_channels():
    head = MaskHead(16, num_classes=3, width=8, num_convs=2)
    out = head(torch.randn(5, 16, 7, 7))
    assert out.shape == (5, 4, 14, 14)  # C + 1 channels, twice the RoI grid
    assert head(torch.randn(0, 16, 7, 7)).shape == (0, 4, 14, 14)


def test_sample_proposals_returns_the_matched_gt_of_every_region():
    _, targets = scene_batch()
    proposals = [t["boxes"] + 2.0 for t in targets]
    torch.manual_seed(0)
    regions, labels, deltas, matched = sample_proposals(proposals, targets, 16, 0.5,
                                                        return_matched=True)
    torch.manual_seed(0)
    plain = sample_proposals(proposals, targets, 16, 0.5)
    for got, expected in zip((regions, labels, deltas), plain, strict=True):
        for a, b in zip(got, expected, strict=True):
            torch.testing.assert_close(a, b)
    for image_regions, image_labels, image_matched, target in zip(regions, labels, matched,
                                                                   targets, strict=True):
        expected_labels, expected_matched = match_proposals(image_regions, target["boxes"],
                                                            target["labels"])
        assert torch.equal(image_labels, expected_labels)
        fg = image_labels > 0
        assert fg.any()
        assert torch.equal(image_matched[fg], expected_matched[fg])
        assert torch.equal(target["labels"][image_matched[fg]], image_labels[fg])


def test_training_returns_the_five_losses_and_every_branch_gets_gradients():
    model = small().train()
    images, targets = scene_batch()
    losses = model(images, targets)
    assert set(losses) == LOSSES
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    losses["loss_mask"].backward()
    assert model.mask_head.logits.weight.grad.abs().sum() > 0
    assert model.backbone.body[0][0].weight.grad.abs().sum() > 0  # the mask loss trains it too
    assert model.box_head.fc6.weight.grad is None  # ... but not the box head


def test_an_image_without_objects_trains_with_a_zero_mask_loss():
    model = small().train()
    images, targets = scene_batch()
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
             "masks": torch.zeros(0, S, S, dtype=torch.uint8)}
    losses = model(images[:1], [empty])
    assert losses["loss_mask"] == 0
    sum(losses.values()).backward()


@pytest.mark.parametrize("device", available_devices())
def test_eval_outputs_masks_consistent_with_the_roi_masks(device):
    model = small(box_score_thresh=0.0).to(device).eval()
    images, _ = scene_batch()
    with torch.no_grad():
        out = model([i.to(device) for i in images])
    assert len(out) == 2
    for d in out:
        num = len(d["boxes"])
        assert num > 0
        assert set(d) == {"boxes", "scores", "labels", "masks", "roi_masks"}
        assert d["masks"].shape == (num, 1, S, S) and d["roi_masks"].shape == (num, 14, 14)
        assert d["masks"].device.type == torch.device(device).type
        assert 0 <= d["masks"].min() and d["masks"].max() <= 1
        torch.testing.assert_close(d["masks"][:, 0],
                                   paste_masks(d["roi_masks"], d["boxes"], (S, S), None))


def test_roi_masks_are_the_predicted_class_channel_as_torchvision():
    """``roi_masks`` = torchvision's ``maskrcnn_inference`` on the same logits and labels."""
    model = small(box_score_thresh=0.0).eval()
    images, _ = scene_batch()
    captured = {}
    model.mask_head.register_forward_hook(lambda _m, _i, out: captured.update(logits=out))
    with torch.no_grad():
        out = model(images)
    expected = maskrcnn_inference(captured["logits"], [d["labels"] for d in out])
    for d, probs in zip(out, expected, strict=True):
        torch.testing.assert_close(d["roi_masks"], probs[:, 0])


def test_eval_with_no_detection_gives_empty_masks():
    model = small(box_score_thresh=1.0).eval()  # nothing scores above 1
    with torch.no_grad():
        (d,) = model([torch.zeros(3, S, S)])
    assert d["masks"].shape == (0, 1, S, S) and d["roi_masks"].shape == (0, 14, 14)


def test_targets_without_masks_or_with_wrong_masks_are_refused():
    model = small().train()
    images, targets = scene_batch()
    no_masks = [{k: v for k, v in t.items() if k != "masks"} for t in targets]
    with pytest.raises(ValueError, match="no 'masks'"):
        model(images, no_masks)
    wrong = [dict(t, masks=t["masks"][:1]) for t in targets]
    with pytest.raises(ValueError, match=r"'masks' must have shape \(2, 64, 64\)"):
        model(images, wrong)
    with pytest.raises(ValueError, match="mask_roi_size"):
        MaskRCNN(2, S, mask_roi_size=0)


@pytest.mark.parametrize("device", available_devices())
def test_a_few_steps_decrease_every_loss(device):
    model = small().to(device).train()
    images, targets = scene_batch()
    images = [i.to(device) for i in images]
    targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
    initial = copy.deepcopy(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(60):
        torch.manual_seed(0)  # the same anchor / region sample every step
        losses = model(images, targets)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    # The second stage trains on the RPN's proposals, which improve as it learns (more
    # foreground regions, so a larger box loss): compare it before and after on fixed regions.
    first, last = losses_on_fixed_proposals(initial, images, targets), \
        losses_on_fixed_proposals(model, images, targets)
    for name in LOSSES:
        assert last[name] < first[name], (name, first[name], last[name])
    assert last["loss_mask"] < 0.5 * first["loss_mask"]


def losses_on_fixed_proposals(model, images, targets):
    """The five losses when the RPN proposes each GT box, shifted, and two background boxes."""
    fixed = [torch.cat([t["boxes"] + d for d in (-2.0, 0.0, 3.0)]
                       + [t["boxes"].new_tensor([[0.0, 0.0, 10.0, 10.0], [48, 0, 64, 12]])])
             .clamp(0, S) for t in targets]
    rpn_forward = model.rpn.forward
    model.rpn.forward = lambda features, targets=None: (fixed, rpn_forward(features, targets)[1])
    torch.manual_seed(0)
    try:
        with torch.no_grad():
            return {k: v.item() for k, v in model(images, targets).items()}
    finally:
        model.rpn.forward = rpn_forward
