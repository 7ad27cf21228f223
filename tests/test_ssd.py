"""SSD building blocks (course_lib.models.ssd) against torchvision's SSD and hand-worked cases."""

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torchvision.models.detection._utils import BoxCoder, SSDMatcher
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.ssd import SSD
from torchvision.ops import box_iou

from course_lib.device import available_devices
from course_lib.models.ssd import (
    SSD_BOX_WEIGHTS,
    default_boxes,
    hard_negative_mining,
    match_default_boxes,
    multibox_loss,
    postprocess_ssd,
    ssd_scales,
)

DEVICES = available_devices()
DTYPES = [torch.float32, torch.float64]
IMAGE = (64, 64)  # (height, width) of the loss and postprocessing tests
FEATURES = [(8, 8), (4, 4), (2, 2)]  # their feature maps: D = (64 + 16 + 4) * 4 = 336


# ------------------------------------------------------------------------------ default boxes


def torchvision_default_boxes(feature_sizes, image_size, aspect_ratios, dtype=torch.float32,
                              device="cpu", **kwargs):
    """torchvision's default boxes for feature maps of these sizes and an image batch."""
    generator = DefaultBoxGenerator(aspect_ratios, **kwargs)
    images = torch.zeros(2, 3, *image_size, device=device)
    image_list = ImageList(images, [tuple(image_size)] * 2)
    feature_maps = [torch.zeros(2, 1, h, w, dtype=dtype, device=device) for h, w in feature_sizes]
    out = generator(image_list, feature_maps)
    assert len(out) == 2 and torch.equal(out[0], out[1])  # the same boxes for every image
    return out[0]


SETTINGS = [  # (feature_sizes, image_size, aspect_ratios, keyword arguments)
    ([(4, 4)], (32, 32), [[2]], {}),  # one level: scales [min_ratio, max_ratio]
    ([(16, 16), (8, 8), (4, 4), (2, 2)], (128, 128), [[2]] * 4, {}),  # the docstring's example
    ([(8, 8), (4, 4), (2, 2)], (64, 64), [[2], [2, 3], [2]], {"min_ratio": 0.2}),
    ([(6, 8), (3, 4), (1, 2)], (48, 64), [[2], [2, 3], [3]], {}),  # non-square maps and image
    ([(5, 5), (3, 3), (1, 1)], (100, 100), [[2], [2, 3], [2]], {"steps": [20, 33, 100]}),
    ([(38, 38), (19, 19), (10, 10), (5, 5), (3, 3), (1, 1)], (300, 300),  # SSD300
     [[2], [2, 3], [2, 3], [2, 3], [2], [2]],
     {"scales": [0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05], "steps": [8, 16, 32, 64, 100, 300]}),
    ([(4, 4), (2, 2)], (40, 60), [[3], [3]], {"scales": [0.5, 0.9, 1.3], "clip": False}),
    ([(4, 4), (2, 2)], (40, 60), [[3], [3]], {"scales": [0.5, 0.9, 1.3], "clip": True}),
    ([(0, 3), (2, 2)], (32, 32), [[2], [2]], {}),  # an empty feature map
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", range(len(SETTINGS)))
def test_default_boxes_equal_torchvision(case, dtype, device):
    feature_sizes, image_size, ratios, kwargs = SETTINGS[case]
    ours = default_boxes(feature_sizes, image_size, aspect_ratios=ratios, dtype=dtype,
                         device=device, **kwargs)
    theirs = torchvision_default_boxes(feature_sizes, image_size, ratios, dtype, device,
                                       **kwargs)
    assert ours.dtype == theirs.dtype == dtype and ours.device.type == device
    assert ours.shape == theirs.shape
    assert ours.shape[0] == sum(h * w * (2 + 2 * len(r))
                                for (h, w), r in zip(feature_sizes, ratios, strict=True))
    assert torch.equal(ours, theirs)


def test_default_boxes_by_hand():
    # One 1x1 level on a 100x100 image, s = 0.2, s' = sqrt(0.2 * 0.8) = 0.4, ratio 2.
    boxes = default_boxes([(1, 1)], (100, 100), min_ratio=0.2, max_ratio=0.8, dtype=torch.float64)
    w2, h2 = 20 * math.sqrt(2), 20 / math.sqrt(2)
    expected = torch.tensor([[40, 40, 60, 60], [30, 30, 70, 70],
                             [50 - w2 / 2, 50 - h2 / 2, 50 + w2 / 2, 50 + h2 / 2],
                             [50 - h2 / 2, 50 - w2 / 2, 50 + h2 / 2, 50 + w2 / 2]],
                            dtype=torch.float64)
    torch.testing.assert_close(boxes, expected, rtol=0, atol=1e-4)  # float32 fractions


def test_default_boxes_centres_and_order():
    # A 2x3 map of a 40x60 image: centres at ((x + 0.5) * 20, (y + 0.5) * 20), 4 boxes each.
    boxes = default_boxes([(2, 3)], (40, 60), dtype=torch.float64)
    centres = ((boxes[:, :2] + boxes[:, 2:]) / 2).reshape(2, 3, 4, 2)  # (H, W, K, 2)
    for y in range(2):
        for x in range(3):
            expected = torch.tensor([(x + 0.5) * 20, (y + 0.5) * 20], dtype=torch.float64)
            torch.testing.assert_close(centres[y, x], expected.expand(4, 2))


def test_ssd_scale_rule():
    # s_k = s_min + (s_max - s_min) (k - 1) / (m - 1), k = 1..m, then 1.0.
    assert ssd_scales(5, 0.2, 0.9) == pytest.approx([0.2, 0.375, 0.55, 0.725, 0.9, 1.0])
    assert ssd_scales(1, 0.2, 0.9) == [0.2, 0.9]
    # The first box of each level is the square of side s_k (fractions of a 100-pixel image).
    boxes = default_boxes([(1, 1)] * 5, (100, 100), min_ratio=0.2, max_ratio=0.9)
    sides = boxes[::4, 2] - boxes[::4, 0]  # (5,)
    torch.testing.assert_close(sides, torch.tensor([20.0, 37.5, 55.0, 72.5, 90.0]))


@pytest.mark.parametrize("kwargs, message", [
    ({"feature_sizes": []}, "feature_sizes"),
    ({"feature_sizes": [(4,)]}, "feature_sizes"),
    ({"aspect_ratios": [[2]]}, "aspect_ratios must have len"),
    ({"scales": [0.1, 0.5]}, "scales must have len"),
    ({"steps": [8]}, "steps must have len"),
    ({"image_size": (0, 32)}, "image_size"),
])
def test_default_boxes_bad_arguments(kwargs, message):
    arguments = {"feature_sizes": [(4, 4), (2, 2)], "image_size": (32, 32)} | kwargs
    with pytest.raises(ValueError, match=message):
        default_boxes(**arguments)


# ---------------------------------------------------------------------------------- matching


def random_boxes(n, generator, size=IMAGE, dtype=torch.float32):
    xy = torch.rand(n, 2, generator=generator) * torch.tensor([size[1] - 12, size[0] - 12])
    wh = torch.rand(n, 2, generator=generator) * 40 + 4
    return torch.cat([xy, xy + wh], dim=1).to(dtype)


def torchvision_match(default, gt, threshold=0.5):
    if gt.shape[0] == 0:  # what torchvision's SSD does before calling the matcher
        return torch.full((default.shape[0],), -1, dtype=torch.int64, device=default.device)
    return SSDMatcher(threshold)(box_iou(gt, default))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("threshold", [0.5, 0.3])
def test_match_default_boxes_equals_ssd_matcher(threshold, dtype, device):
    g = torch.Generator().manual_seed(0)
    default = default_boxes(FEATURES, IMAGE, dtype=dtype, device=device)
    for n in (1, 4, 9):
        gt = random_boxes(n, g, dtype=dtype).to(device)
        ours = match_default_boxes(default, gt, threshold)
        assert ours.dtype == torch.int64 and ours.device.type == device
        assert torch.equal(ours, torchvision_match(default, gt, threshold))


def test_match_default_boxes_by_hand():
    default = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 5], [20, 20, 30, 30], [50, 50, 60, 60]])
    gt = torch.tensor([[0.0, 0, 10, 10], [21.0, 21, 29, 29], [52.0, 52, 53, 53]])
    matched = match_default_boxes(default, gt)
    # box 1: IoU exactly 0.5 with GT 0 -> matched; box 3: IoU 0.01 with GT 2, but it is GT 2's
    # best default box -> matched anyway (every GT gets one).
    assert matched.tolist() == [0, 0, 1, 2]
    assert torch.equal(matched, torchvision_match(default, gt))
    assert match_default_boxes(default, gt, iou_threshold=0.51).tolist() == [0, -1, 1, 2]


def test_match_default_boxes_ties():
    # Two identical GT boxes: every default box prefers the first (Tensor.max), but both have
    # the same best default box, which the later GT keeps.
    default = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 9], [30, 30, 40, 40]])
    gt = torch.tensor([[0.0, 0, 10, 10], [0.0, 0, 10, 10]])
    matched = match_default_boxes(default, gt)
    assert matched.tolist() == [1, 0, -1]
    assert torch.equal(matched, torchvision_match(default, gt))
    # A GT box whose IoU ties between two default boxes gets the first of them.
    default = torch.tensor([[0.0, 0, 10, 10], [20, 0, 30, 10]])
    gt = torch.tensor([[5.0, 0, 25, 10]])  # IoU 50 / 250 = 0.2 with both
    assert match_default_boxes(default, gt).tolist() == [0, -1]
    assert torch.equal(match_default_boxes(default, gt), torchvision_match(default, gt))


@pytest.mark.parametrize("device", DEVICES)
def test_match_default_boxes_without_gt_is_all_background(device):
    default = default_boxes(FEATURES, IMAGE, device=device)
    matched = match_default_boxes(default, torch.zeros(0, 4, device=device))
    assert matched.shape == (default.shape[0],) and matched.dtype == torch.int64
    assert (matched == -1).all()
    assert match_default_boxes(torch.zeros(0, 4), torch.ones(2, 4)).shape == (0,)


def test_match_default_boxes_bad_shapes():
    with pytest.raises(ValueError, match=r"default_boxes must have shape \(N, 4\), got shape"):
        match_default_boxes(torch.zeros(5, 3), torch.zeros(1, 4))
    with pytest.raises(ValueError, match="gt_boxes must have shape"):
        match_default_boxes(torch.zeros(5, 4), torch.zeros(4))


# ---------------------------------------------------------------------- hard negative mining


def torchvision_mining(loss, labels, ratio):
    """The mining lines of torchvision's SSD.compute_loss: foreground | background_idxs."""
    foreground_idxs = labels > 0
    num_negative = ratio * foreground_idxs.sum(1, keepdim=True)
    negative_loss = loss.clone()
    negative_loss[foreground_idxs] = -float("inf")
    values, idx = negative_loss.sort(1, descending=True)
    background_idxs = idx.sort(1)[1] < num_negative
    return foreground_idxs | background_idxs


def test_hard_negative_mining_by_hand():
    loss = torch.tensor([[0.1, 5.0, 0.3, 0.9, 0.2, 0.8, 0.4, 0.7, 0.6, 0.5],
                         [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]])
    labels = torch.tensor([[0, 2, 0, 0, 0, 0, 0, 0, 0, 0],  # 1 positive -> 3 hardest negatives
                           [0, 0, 0, 0, 0, 0, 0, 0, 0, 0]])  # no positive -> nothing
    kept = hard_negative_mining(loss, labels)
    assert kept[0].nonzero().flatten().tolist() == [1, 3, 5, 7]
    assert not kept[1].any()
    assert hard_negative_mining(loss, labels, neg_pos_ratio=1)[0].nonzero().flatten().tolist() \
        == [1, 3]
    # More negatives wanted than there are: all boxes.
    assert hard_negative_mining(loss[:, :3], torch.tensor([[1, 0, 0], [0, 0, 2]])).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("ratio", [3, 2])
def test_hard_negative_mining_equals_torchvision(ratio, device):
    g = torch.Generator().manual_seed(2)
    loss = torch.rand(4, 500, generator=g).to(device)
    labels = (torch.randint(1, 4, (4, 500), generator=g)
              * (torch.rand(4, 500, generator=g) < 0.05)).to(device)
    labels[3] = 0  # a background image
    kept = hard_negative_mining(loss, labels, ratio)
    assert kept.dtype == torch.bool and kept.shape == (4, 500)
    assert torch.equal(kept, torchvision_mining(loss, labels, ratio))
    assert torch.equal(kept.sum(1), (labels > 0).sum(1) * (ratio + 1))


def test_hard_negative_mining_ties_and_saturation_equal_torchvision():
    g = torch.Generator().manual_seed(3)
    loss = torch.randint(0, 3, (3, 200), generator=g).float()  # many ties
    labels = torch.zeros(3, 200, dtype=torch.int64)
    labels[0, :10] = 1
    labels[1, :60] = 2  # 60 positives want 180 negatives, only 140 exist
    kept = hard_negative_mining(loss, labels)
    assert torch.equal(kept, torchvision_mining(loss, labels, 3))
    assert kept[0].sum() == 40 and kept[1].all() and not kept[2].any()


def test_hard_negative_mining_bad_shapes():
    with pytest.raises(ValueError, match=r"loss must have shape \(B, D\), got \(5,\)"):
        hard_negative_mining(torch.zeros(5), torch.zeros(5, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"labels must have the shape of loss \(2, 5\)"):
        hard_negative_mining(torch.zeros(2, 5), torch.zeros(2, 4, dtype=torch.int64))


# -------------------------------------------------------------------------------------- loss


def random_targets(generator, counts=(3, 0, 5), dtype=torch.float32, device="cpu"):
    return [{"boxes": random_boxes(n, generator, dtype=dtype).to(device),
             "labels": torch.randint(1, 4, (n,), generator=generator).to(device)}
            for n in counts]


def random_outputs(batch, num_default, num_classes, generator, dtype, device, spread=2.0):
    logits = torch.randn(batch, num_default, num_classes + 1, generator=generator) * spread
    deltas = torch.randn(batch, num_default, 4, generator=generator)
    return logits.to(dtype=dtype, device=device), deltas.to(dtype=dtype, device=device)


def torchvision_loss(logits, deltas, default, targets, ratio=3, threshold=0.5):
    """torchvision's SSD.compute_loss, called on a minimal stand-in for the SSD object."""
    model = SimpleNamespace(box_coder=BoxCoder(SSD_BOX_WEIGHTS), neg_to_pos_ratio=ratio)
    anchors = [default] * len(targets)
    matched = [torchvision_match(default, t["boxes"], threshold) for t in targets]
    head_outputs = {"cls_logits": logits, "bbox_regression": deltas}
    return SSD.compute_loss(model, targets, head_outputs, anchors, matched)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ratio, threshold", [(3, 0.5), (2, 0.4)])
def test_multibox_loss_equals_torchvision(ratio, threshold, dtype, device):
    g = torch.Generator().manual_seed(4)
    default = default_boxes(FEATURES, IMAGE, dtype=dtype, device=device)
    targets = random_targets(g, dtype=dtype, device=device)
    logits, deltas = random_outputs(3, default.shape[0], 3, g, dtype, device)
    ours = multibox_loss(logits, deltas, default, targets, ratio, threshold)
    theirs = torchvision_loss(logits, deltas, default, targets, ratio, threshold)
    assert set(ours) == {"bbox_regression", "classification"}
    for key in ours:
        assert ours[key].dtype == dtype and ours[key].dim() == 0
        torch.testing.assert_close(ours[key], theirs[key])


def test_multibox_loss_by_hand_and_gradients():
    # One default box exactly on the GT (deltas 0), one background box, 2 classes.
    default = torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]], dtype=torch.float64)
    targets = [{"boxes": default[:1].clone(), "labels": torch.tensor([2])}]
    logits = torch.tensor([[[0.0, 0.0, 1.0], [2.0, 0.0, 0.0]]], dtype=torch.float64,
                          requires_grad=True)
    deltas = torch.tensor([[[0.5, 0.0, 0.0, 3.0], [9.0, 9.0, 9.0, 9.0]]], dtype=torch.float64,
                          requires_grad=True)
    losses = multibox_loss(logits, deltas, default, targets)
    # smooth L1 (beta 1): 0.5 * 0.5**2 + (3 - 0.5) = 2.625; N = 1 positive.
    torch.testing.assert_close(losses["bbox_regression"], torch.tensor(2.625).double())
    # positive: -log softmax([0, 0, 1])[2]; 1 negative (3 wanted, 1 exists): -log softmax[0].
    expected = (-torch.log_softmax(logits[0, 0].detach(), 0)[2]
                - torch.log_softmax(logits[0, 1].detach(), 0)[0])
    torch.testing.assert_close(losses["classification"], expected)
    sum(losses.values()).backward()
    assert deltas.grad[0, 1].abs().sum() == 0  # no regression loss on background
    assert logits.grad.abs().sum() > 0
    assert torch.autograd.gradcheck(
        lambda lo, de: tuple(multibox_loss(lo, de, default, targets).values()),
        (logits.detach().requires_grad_(), deltas.detach().requires_grad_()))


def test_multibox_loss_counts_a_box_once_where_torchvision_counts_it_twice():
    # 1 positive and 1 negative box, ratio 3: 3 negatives are wanted, so torchvision's mined
    # "negatives" run into the positive and its cross-entropy is added a second time.
    default = torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]])
    targets = [{"boxes": default[:1].clone(), "labels": torch.tensor([1])}]
    logits = torch.tensor([[[0.3, 0.1], [0.5, 0.2]]])
    deltas = torch.zeros(1, 2, 4)
    ours = multibox_loss(logits, deltas, default, targets)["classification"]
    theirs = torchvision_loss(logits, deltas, default, targets)["classification"]
    positive_loss = F.cross_entropy(logits[0, :1], torch.tensor([1]))
    torch.testing.assert_close(theirs - ours, positive_loss)


def test_multibox_loss_without_any_gt():
    default = default_boxes(FEATURES, IMAGE)
    g = torch.Generator().manual_seed(5)
    logits, deltas = random_outputs(2, default.shape[0], 3, g, torch.float32, "cpu")
    targets = random_targets(g, counts=(0, 0))
    losses = multibox_loss(logits, deltas, default, targets)
    theirs = torchvision_loss(logits, deltas, default, targets)
    assert losses["bbox_regression"] == 0 and losses["classification"] == 0
    for key in losses:
        torch.testing.assert_close(losses[key], theirs[key])


def test_multibox_loss_bad_shapes():
    default = torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]])
    targets = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    good_logits, good_deltas = torch.zeros(1, 2, 3), torch.zeros(1, 2, 4)
    with pytest.raises(ValueError, match=r"class_logits must have shape \(B, D, C \+ 1\)"):
        multibox_loss(torch.zeros(2, 3), good_deltas, default, targets)
    with pytest.raises(ValueError, match=r"box_regression must have shape \(B, D, 4\) = "
                                         r"\(1, 2, 4\).*got \(1, 2, 5\)"):
        multibox_loss(good_logits, torch.zeros(1, 2, 5), default, targets)
    with pytest.raises(ValueError, match=r"default_boxes must have shape \(D, 4\) = \(2, 4\)"):
        multibox_loss(good_logits, good_deltas, default[:1], targets)
    with pytest.raises(ValueError, match="need one target per image"):
        multibox_loss(good_logits, good_deltas, default, targets * 2)


# ------------------------------------------------------------------------------- detections


def torchvision_postprocess(logits, deltas, default, image_size, score=0.01, nms=0.45, topk=400,
                            per_img=200):
    """torchvision's SSD.postprocess_detections, called on a minimal stand-in for SSD."""
    model = SimpleNamespace(box_coder=BoxCoder(SSD_BOX_WEIGHTS), score_thresh=score,
                            topk_candidates=topk, nms_thresh=nms, detections_per_img=per_img)
    head_outputs = {"cls_logits": logits, "bbox_regression": deltas}
    return SSD.postprocess_detections(model, head_outputs, [default] * len(logits),
                                      [image_size] * len(logits))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("settings", [(0.01, 0.45, 400, 200), (0.2, 0.3, 5, 10),
                                      (0.05, 0.6, 50, 3)])
def test_postprocess_ssd_equals_torchvision(settings, dtype, device):
    g = torch.Generator().manual_seed(6)
    default = default_boxes(FEATURES, IMAGE, dtype=dtype, device=device)
    logits, deltas = random_outputs(2, default.shape[0], 3, g, dtype, device, spread=3.0)
    ours = postprocess_ssd(logits, deltas, default, IMAGE, *settings)
    theirs = torchvision_postprocess(logits, deltas, default, IMAGE, *settings)
    assert len(ours) == len(theirs) == 2
    for mine, tv in zip(ours, theirs, strict=True):
        assert set(mine) == {"boxes", "scores", "labels"}
        assert mine["labels"].dtype == torch.int64 and mine["boxes"].dtype == dtype
        assert len(mine["boxes"]) > 0
        for key in mine:
            assert torch.equal(mine[key], tv[key]), key
        assert (mine["boxes"][:, 0::2] >= 0).all() and (mine["boxes"][:, 0::2] <= 64).all()


def test_postprocess_ssd_without_detections():
    default = default_boxes(FEATURES, IMAGE)
    logits = torch.zeros(1, default.shape[0], 4)
    logits[..., 0] = 10.0  # every box is surely background
    detections = postprocess_ssd(logits, torch.zeros(1, default.shape[0], 4), default, IMAGE)
    assert detections[0]["boxes"].shape == (0, 4)
    assert detections[0]["scores"].shape == (0,) and detections[0]["labels"].dtype == torch.int64


def test_postprocess_ssd_bad_shapes():
    default = torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]])
    with pytest.raises(ValueError, match=r"box_regression must have shape \(B, D, 4\)"):
        postprocess_ssd(torch.zeros(1, 2, 3), torch.zeros(1, 3, 4), default, IMAGE)
    with pytest.raises(ValueError, match=r"class_logits must have shape \(B, D, C \+ 1\) with "
                                         r"C >= 1, got \(1, 2, 1\)"):
        postprocess_ssd(torch.zeros(1, 2, 1), torch.zeros(1, 2, 4), default, IMAGE)
