"""SSD and YOLO networks: layouts against torchvision and the loop oracles, losses that decrease."""

import pytest
import torch
from torchvision.models.detection.ssd import SSDHead as TorchvisionSSDHead

from course_lib.device import available_devices
from course_lib.models.backbone import TinyBackbone
from course_lib.models.ssd import SSD, SSDFeatures, SSDHead, default_boxes, halved
from course_lib.models.yolo import YOLO, postprocess_yolo, yolo_channels
from tests.test_two_stage_models import S, scene_batch


def small_ssd(**kwargs):
    torch.manual_seed(0)
    backbone = TinyBackbone(out_channels=16, width=8, num_stages=2)  # 64 px -> 16 x 16
    return SSD(2, S, backbone=backbone, num_extra=3, **kwargs)  # maps 16, 8, 4, 2


def small_yolo(**kwargs):
    torch.manual_seed(0)
    backbone = TinyBackbone(out_channels=16, width=8, num_stages=3)  # 64 px -> 8 x 8
    return YOLO(2, S, S=4, B=2, backbone=backbone, hidden=16, **kwargs)


def on(device, images, targets):
    return ([i.to(device) for i in images],
            [{k: v.to(device) for k, v in t.items()} for t in targets])


# ------------------------------------------------------------------------------------ SSD


@pytest.mark.parametrize("image_size", [128, 96, 64, 100])
def test_ssd_feature_sizes_are_the_maps_it_computes(image_size):
    features = SSDFeatures(TinyBackbone(out_channels=8, width=4), num_extra=4).eval()
    with torch.no_grad():
        maps = features(torch.zeros(1, 3, image_size, image_size))
    assert [tuple(m.shape[2:]) for m in maps.values()] == features.feature_sizes(image_size)
    assert [m.shape[1] for m in maps.values()] == features.channels
    assert halved(128, 3) == 16 and halved(5, 1) == 3 and halved(1, 4) == 1


def test_course_ssd_has_five_levels_and_their_default_boxes():
    model = SSD(3, 128)
    assert model.feature_sizes == [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]
    assert model.num_boxes == [4] * 5
    assert model.anchors.shape == (4 * (256 + 64 + 16 + 4 + 1), 4)  # D = 1364
    assert torch.equal(model.anchors, default_boxes(model.feature_sizes, (128, 128),
                                                    model.scales, model.aspect_ratios))
    class_logits, box_regression = model.eval().outputs([torch.rand(3, 128, 128)])
    assert class_logits.shape == (1, 1364, 4) and box_regression.shape == (1, 1364, 4)


def test_ssd_head_equals_torchvision_ssd_head_with_the_same_filters():
    """One convolution per level with both sets of filters = torchvision's two convolutions."""
    torch.manual_seed(0)
    channels, boxes, classes = [16, 8, 8], [4, 6, 4], 3
    ours = SSDHead(channels, boxes, classes)
    theirs = TorchvisionSSDHead(channels, boxes, classes)
    with torch.no_grad():
        for conv, cls, reg, k in zip(ours.predict, theirs.classification_head.module_list,
                                     theirs.regression_head.module_list, boxes, strict=True):
            weight = conv.weight.view(k, classes + 4, *conv.weight.shape[1:])
            bias = conv.bias.view(k, classes + 4)
            cls.weight.copy_(weight[:, :classes].reshape(cls.weight.shape))
            cls.bias.copy_(bias[:, :classes].reshape(-1))
            reg.weight.copy_(weight[:, classes:].reshape(reg.weight.shape))
            reg.bias.copy_(bias[:, classes:].reshape(-1))
    features = [torch.randn(2, c, n, n) for c, n in zip(channels, (6, 3, 1), strict=True)]
    logits, deltas = ours(features)
    expected = theirs(features)
    torch.testing.assert_close(logits, expected["cls_logits"])
    torch.testing.assert_close(deltas, expected["bbox_regression"])


@pytest.mark.parametrize("device", available_devices())
def test_ssd_a_few_steps_decrease_both_losses(device):
    model = small_ssd().to(device).train()
    images, targets = on(device, *scene_batch())
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    history = []
    for _ in range(30):
        losses = model(images, targets)
        assert set(losses) == {"bbox_regression", "classification"}
        assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
        history.append({k: v.item() for k, v in losses.items()})
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    for name in history[0]:
        assert history[-1][name] < 0.5 * history[0][name], (name, history[0], history[-1])


@pytest.mark.parametrize("device", available_devices())
@pytest.mark.parametrize("make", [small_ssd, small_yolo], ids=["ssd", "yolo"])
def test_eval_returns_one_detection_dict_per_image(make, device):
    model = make().to(device).eval()
    images, _ = on(device, *scene_batch())
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2
    for det in out:
        n = len(det["scores"])
        assert set(det) == {"boxes", "scores", "labels"}
        assert det["boxes"].shape == (n, 4) and det["labels"].dtype == torch.int64
        assert det["boxes"].device.type == torch.device(device).type
        if n:
            assert ((det["labels"] >= 1) & (det["labels"] <= 2)).all()
            assert (det["scores"][:-1] >= det["scores"][1:]).all()


@pytest.mark.parametrize("make", [small_ssd, small_yolo], ids=["ssd", "yolo"])
def test_bad_input_gives_clear_errors(make):
    model = make().train()
    images, targets = scene_batch()
    with pytest.raises(ValueError, match="targets are needed"):
        model(images)
    with pytest.raises(ValueError, match="one target per image"):
        model(images, targets[:1])
    with pytest.raises(ValueError, match=r"must have shape \(3, 64, 64\)"):
        model([torch.zeros(3, 32, 32)], targets[:1])
    assert all(torch.isfinite(v) for v in model(images, [
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}] * 2).values())


def test_ssd_constructor_checks():
    with pytest.raises(ValueError, match="num_classes"):
        SSD(0, 128)
    with pytest.raises(ValueError, match="aspect_ratios must have"):
        SSD(3, 128, aspect_ratios=[(2,)] * 3)
    with pytest.raises(ValueError, match="num_extra"):
        SSDFeatures(num_extra=-1)
    model = SSD(3, 128, aspect_ratios=[(2, 3)] * 5)
    assert model.num_boxes == [6] * 5 and model.anchors.shape[0] == 6 * 341


# ----------------------------------------------------------------------------------- YOLO


def test_yolo_grid_has_the_target_layout_and_ranges():
    model = small_yolo().eval()
    images, _ = scene_batch()
    with torch.no_grad():
        grid = model.grid(images)
    assert grid.shape == (2, 4, 4, yolo_channels(2, 2))
    assert ((grid[..., :10] > 0) & (grid[..., :10] < 1)).all()  # x, y, w, h, conf: sigmoid
    torch.testing.assert_close(grid[..., 10:].sum(-1), torch.ones(2, 4, 4))  # softmax
    with torch.no_grad():
        detections = model(images)
    expected = postprocess_yolo(grid, 4, 2, 2, S, model.conf_threshold, model.nms_thresh,
                                model.max_detections)
    for ours, theirs in zip(detections, expected, strict=True):
        for key in ours:
            torch.testing.assert_close(ours[key], theirs[key])


@pytest.mark.parametrize("S_", [1, 2, 4, 8])
def test_yolo_brings_the_map_down_to_any_power_of_two_grid(S_):
    model = YOLO(2, 64, S=S_, B=3, backbone=TinyBackbone(out_channels=8, width=4, num_stages=3),
                 hidden=8).eval()
    with torch.no_grad():
        assert model.grid(torch.zeros(1, 3, 64, 64)).shape == (1, S_, S_, yolo_channels(3, 2))


def test_yolo_constructor_checks():
    with pytest.raises(ValueError, match="cannot be brought down"):
        YOLO(2, 64, S=3, backbone=TinyBackbone(num_stages=3))  # 8 x 8 map, S = 3
    with pytest.raises(ValueError, match="cannot be brought down"):
        YOLO(2, 64, S=16, backbone=TinyBackbone(num_stages=3))  # S larger than the map
    with pytest.raises(ValueError, match="B must be a positive int"):
        YOLO(2, 64, S=4, B=0)


@pytest.mark.parametrize("device", available_devices())
@pytest.mark.parametrize("iou_confidence", [False, True])
def test_yolo_a_few_steps_decrease_every_loss(device, iou_confidence):
    model = small_yolo(iou_confidence=iou_confidence).to(device).train()
    images, targets = on(device, *scene_batch())
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    history = []
    for _ in range(40):
        losses = model(images, targets)
        assert set(losses) == {"coord", "size", "obj", "noobj", "class"}
        assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
        history.append({k: v.item() for k, v in losses.items()})
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    total = [sum(h.values()) for h in history]
    assert total[-1] < 0.5 * total[0], total
    for name in history[0]:
        if name == "obj" and iou_confidence:
            continue  # its target, the IoU of the predicted box, rises as the boxes improve
        assert history[-1][name] < history[0][name], (name, history[0], history[-1])
