"""R-CNN, Fast R-CNN and Faster R-CNN: outputs, errors, a few steps that decrease every loss."""

import copy

import pytest
import torch

from course_lib.device import available_devices
from course_lib.models.backbone import TinyBackbone
from course_lib.models.fast_rcnn import FastRCNN
from course_lib.models.faster_rcnn import FasterRCNN, stack_images
from course_lib.models.rcnn import RCNN, warp_regions

S = 64  # image side


def scene_batch():
    """Two 64 px images with bright squares on a dark background, and their targets."""
    images = torch.full((2, 3, S, S), 0.1)
    boxes = [torch.tensor([[8.0, 8.0, 28.0, 28.0], [36.0, 30.0, 60.0, 58.0]]),
             torch.tensor([[20.0, 12.0, 44.0, 40.0]])]
    labels = [torch.tensor([1, 2]), torch.tensor([2])]
    for image, image_boxes, image_labels in zip(images, boxes, labels, strict=True):
        for (x1, y1, x2, y2), label in zip(image_boxes.int().tolist(), image_labels, strict=True):
            image[label - 1, y1:y2, x1:x2] = 0.9  # class 1 red, class 2 green
    targets = [{"boxes": b, "labels": lab} for b, lab in zip(boxes, labels, strict=True)]
    return list(images), targets


def proposals_for(targets):
    """Fixed proposals: each GT box shifted a little, plus a few background boxes."""
    out = []
    for t in targets:
        near = torch.cat([t["boxes"] + d for d in (-3.0, 0.0, 2.0)])
        far = torch.tensor([[0.0, 0.0, 10.0, 10.0], [50.0, 0.0, 64.0, 12.0], [0.0, 40.0, 16.0,
                                                                               64.0]])
        out.append(torch.cat([near, far]).clamp(0, S))
    return out


def small(detector, **kwargs):
    torch.manual_seed(0)
    backbone = TinyBackbone(out_channels=16, width=8, num_stages=2 if detector != RCNN else 3)
    if detector is FasterRCNN:
        return FasterRCNN(2, S, backbone=backbone, anchor_sizes=(16, 32), hidden=32,
                          rpn_pre_nms_top_n=(200, 100), rpn_post_nms_top_n=(50, 20), **kwargs)
    if detector is FastRCNN:
        return FastRCNN(2, S, backbone=backbone, hidden=32, **kwargs)
    return RCNN(2, S, crop_size=16, cnn=backbone, hidden=32, **kwargs)


def run(model, images, targets, with_proposals):
    if with_proposals:
        return model(images, targets, proposals_for(targets))
    return model(images, targets)


CASES = [(FasterRCNN, False, {"loss_objectness", "loss_rpn_box_reg", "loss_classifier",
                              "loss_box_reg"}),
         (FastRCNN, True, {"loss_classifier", "loss_box_reg"}),
         (RCNN, True, {"loss_classifier", "loss_box_reg"})]


@pytest.mark.parametrize("device", available_devices())
@pytest.mark.parametrize("detector, with_proposals, names", CASES)
def test_a_few_steps_decrease_every_loss(detector, with_proposals, names, device):
    model = small(detector).to(device).train()
    images, targets = scene_batch()
    images = [i.to(device) for i in images]
    targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
    initial = copy.deepcopy(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = last = None
    for _ in range(30):
        torch.manual_seed(0)  # the same anchor / region sample every step
        if with_proposals:
            losses = model(images, targets, [p.to(device) for p in proposals_for(targets)])
        else:
            losses = model(images, targets)
        assert set(losses) == names
        assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
        values = {k: v.item() for k, v in losses.items()}
        first = first or values
        last = values
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    if detector is FasterRCNN:
        # Its second stage trains on the RPN's proposals, which improve as it learns: more
        # foreground regions, so a larger box loss. Compare the second stage before and after
        # on the same fixed proposals instead.
        first["loss_box_reg"] = second_stage_box_loss(initial, images, targets)
        last["loss_box_reg"] = second_stage_box_loss(model, images, targets)
    for name in names:
        assert last[name] < first[name], (name, first[name], last[name])


def second_stage_box_loss(model, images, targets):
    """Faster R-CNN's loss_box_reg when its RPN proposes fixed regions."""
    fixed = [p.to(images[0].device) for p in proposals_for([
        {k: v.cpu() for k, v in t.items()} for t in targets])]
    rpn_forward = model.rpn.forward
    model.rpn.forward = lambda features, targets=None: (fixed, rpn_forward(features, targets)[1])
    torch.manual_seed(0)
    with torch.no_grad():
        loss = model(images, targets)["loss_box_reg"].item()
    model.rpn.forward = rpn_forward
    return loss


@pytest.mark.parametrize("device", available_devices())
@pytest.mark.parametrize("detector, with_proposals, names", CASES)
def test_eval_returns_one_detection_dict_per_image(detector, with_proposals, names, device):
    model = small(detector).to(device).eval()
    images, targets = scene_batch()
    images = [i.to(device) for i in images]
    with torch.no_grad():
        if with_proposals:
            out = model(images, proposals=[p.to(device) for p in proposals_for(targets)])
        else:
            out = model(images)
    assert len(out) == 2
    for det in out:
        assert set(det) == {"boxes", "scores", "labels"}
        n = len(det["scores"])
        assert det["boxes"].shape == (n, 4) and det["labels"].dtype == torch.int64
        assert det["boxes"].device.type == torch.device(device).type
        if n:
            assert ((det["labels"] >= 1) & (det["labels"] <= 2)).all()
            assert (det["boxes"] >= 0).all() and (det["boxes"] <= S).all()
            assert (det["scores"][:-1] >= det["scores"][1:]).all()


@pytest.mark.parametrize("detector", [FastRCNN, RCNN])
def test_without_proposals_selective_search_runs(detector):
    model = small(detector, max_proposals=30).eval()
    images, _ = scene_batch()
    with torch.no_grad():
        out = model(images[:1])
    assert len(out) == 1 and out[0]["boxes"].shape[1] == 4


@pytest.mark.parametrize("detector, with_proposals, names", CASES)
def test_background_image_trains(detector, with_proposals, names):
    model = small(detector).train()
    images, _ = scene_batch()
    targets = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}] * 2
    proposals = [torch.tensor([[0.0, 0.0, 20.0, 20.0], [10.0, 10.0, 50.0, 40.0]])] * 2
    losses = model(images, targets, proposals) if with_proposals else model(images, targets)
    assert losses["loss_box_reg"].item() == 0.0
    assert torch.isfinite(losses["loss_classifier"])
    sum(losses.values()).backward()


@pytest.mark.parametrize("detector, with_proposals, names", CASES)
def test_bad_input_gives_clear_errors(detector, with_proposals, names):
    model = small(detector).train()
    images, targets = scene_batch()
    with pytest.raises(ValueError, match="targets are needed"):
        model(images)
    with pytest.raises(ValueError, match=r"image 0 must have shape \(3, 64, 64\)"):
        model([torch.zeros(3, 32, 32)], targets[:1])
    with pytest.raises(ValueError, match="one target per image"):
        run(model, images, targets[:1], False) if not with_proposals else model(
            images, targets[:1], proposals_for(targets))
    if with_proposals:
        with pytest.raises(ValueError, match="one Tensor"):
            model(images, targets, proposals_for(targets)[:1])
        with pytest.raises(ValueError, match=r"proposals\[1\] must have shape \(R, 4\)"):
            model(images, targets, [torch.zeros(2, 4), torch.zeros(3)])


def test_constructor_checks():
    with pytest.raises(ValueError, match="roi_op"):
        FasterRCNN(2, S, roi_op="max")
    with pytest.raises(ValueError, match="roi_op"):
        FastRCNN(2, S, roi_op="warp")
    with pytest.raises(ValueError, match="crop_size"):
        RCNN(2, S, crop_size=4)
    with pytest.raises(ValueError, match="num_stages"):
        TinyBackbone(num_stages=0)


def test_stack_images_and_roi_pool_variant():
    images, targets = scene_batch()
    assert stack_images(torch.stack(images), S).shape == (2, 3, S, S)
    with pytest.raises(ValueError, match="non-empty"):
        stack_images([], S)
    model = small(FasterRCNN, roi_op="pool").train()
    assert set(model(images, targets)) == CASES[0][2]


def test_warp_regions_stretches_each_region_to_the_crop():
    image = torch.arange(64.0).reshape(1, 1, 8, 8).expand(1, 3, 8, 8)
    crops = warp_regions(image, [torch.tensor([[0.0, 0.0, 8.0, 8.0], [2.0, 2.0, 4.0, 6.0]])], 4)
    assert crops.shape == (2, 3, 4, 4)
    # the whole image sampled at 4 x 4: the mean of each 2 x 2 block
    expected = image[0, 0].reshape(4, 2, 4, 2).mean(dim=(1, 3))
    torch.testing.assert_close(crops[0, 0], expected)


def test_faster_rcnn_proposals_helper_keeps_the_mode():
    model = small(FasterRCNN).train()
    images, _ = scene_batch()
    proposals = model.proposals(images)
    assert model.training and len(proposals) == 2 and proposals[0].shape[0] <= 20
