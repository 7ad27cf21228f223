"""The anchor explorer, driven without a browser: its anchors equal torchvision's
AnchorGenerator, its cell's K anchors follow the formula, and its label counts equal
torchvision's Matcher (with low-quality matches) for every stride, size set and threshold."""

import html
import math
import re

import matplotlib
import matplotlib.pyplot as plt
import pytest
import torch
from torchvision.models.detection._utils import Matcher
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import box_iou as tv_box_iou

from course_lib.widgets import AnchorExplorer, anchor_explorer

matplotlib.use("Agg")  # headless

GT = torch.tensor([[10.0, 12, 50, 44], [60, 60, 120, 100], [70, 8, 90, 40]])


def image(h=128, w=128):
    return torch.rand(3, h, w, generator=torch.Generator().manual_seed(0))


def make(**kwargs):
    return anchor_explorer(image(), {"boxes": GT, "labels": torch.ones(3, dtype=torch.int64)},
                           **kwargs)


def text(html_value):
    """The readout as plain text: tags removed, entities decoded."""
    return html.unescape(re.sub(r"<[^>]+>", "", html_value))


def tv_anchors(h, w, stride, sizes, ratios):
    generator = AnchorGenerator((tuple(sizes),), (tuple(ratios),))
    images = ImageList(torch.zeros(1, 3, h, w), [(h, w)])
    features = [torch.zeros(1, 1, h // stride, w // stride)]
    return generator(images, features)[0]


def tv_counts(anchors, gt, pos_iou, neg_iou):
    """(positives, negatives, ignored) by torchvision's Matcher, as its RPN labels anchors."""
    if len(gt) == 0:
        return 0, len(anchors), 0
    matched = Matcher(pos_iou, neg_iou, allow_low_quality_matches=True)(tv_box_iou(gt, anchors))
    return (int((matched >= 0).sum()), int((matched == Matcher.BELOW_LOW_THRESHOLD).sum()),
            int((matched == Matcher.BETWEEN_THRESHOLDS).sum()))


def test_defaults_on_the_synthetic_scene():
    w = anchor_explorer()
    assert isinstance(w, AnchorExplorer)
    assert tuple(w.image.shape) == (3, 128, 128) and len(w.gt_boxes) > 0
    assert w.stride.value == 16 and w.feature_size == (8, 8)
    assert w.K == 6 and w.num_anchors == 8 * 8 * 6 and (w.row.value, w.col.value) == (4, 4)
    assert torch.equal(w.anchors, tv_anchors(128, 128, 16, (32, 64), (0.5, 1.0, 2.0)))
    p, n, i = tv_counts(w.anchors, w.gt_boxes, 0.7, 0.3)
    assert (w.num_positive, w.num_negative, w.num_ignored) == (p, n, i)
    assert f"positives {p}, negatives {n}, ignored {i} out of 384 anchors" in text(w.readout.value)
    # right panel: every positive and ignored anchor, the GT boxes, the image's frame
    assert len(w.ax_labels.patches) == p + i + len(w.gt_boxes) + 1


def test_shapes_are_explained():
    w = make()
    shown = text(w.readout.value)
    assert w.objectness_shape == (6, 8, 8) and w.deltas_shape == (24, 8, 8)
    assert "K = 2 sizes × 3 ratios = 6" in shown
    assert "objectness K × H' × W' = 6 × 8 × 8 = 384" in shown
    assert "deltas 4K × H' × W' = 24 × 8 × 8 = 1536" in shown
    w.stride.value = 8
    w.sizes.value = (16, 32, 64, 128)
    shown = text(w.readout.value)
    assert w.objectness_shape == (12, 16, 16)
    assert "objectness K × H' × W' = 12 × 16 × 16 = 3072" in shown
    assert "deltas 4K × H' × W' = 48 × 16 × 16 = 12288" in shown


@pytest.mark.parametrize("stride", [8, 16, 32])
@pytest.mark.parametrize(("sizes", "ratios"), [((32,), (1.0,)), ((16, 64), (0.5, 2.0)),
                                               ((16, 32, 64, 128), (0.5, 1.0, 2.0))])
def test_anchors_and_counts_match_torchvision(stride, sizes, ratios):
    w = make()
    w.stride.value = stride
    w.sizes.value = sizes
    w.aspect_ratios.value = ratios
    assert w.feature_size == (128 // stride, 128 // stride)
    assert w.K == len(sizes) * len(ratios)
    expected = tv_anchors(128, 128, stride, sizes, ratios)
    assert torch.equal(w.anchors, expected) and w.num_anchors == len(expected)
    for pos_iou, neg_iou in [(0.7, 0.3), (0.5, 0.5), (0.6, 0.1)]:
        w.pos_iou.value, w.neg_iou.value = pos_iou, neg_iou
        assert (w.pos_iou.value, w.neg_iou.value) == (pos_iou, neg_iou)
        p, n, i = tv_counts(expected, GT, pos_iou, neg_iou)
        assert (w.num_positive, w.num_negative, w.num_ignored) == (p, n, i)
        assert p + n + i == w.num_anchors
        assert (f"positives {p}, negatives {n}, ignored {i} out of {w.num_anchors} anchors"
                in text(w.readout.value))


def test_the_cell_anchors_follow_the_formula():
    w = make(sizes=(16, 64), aspect_ratios=(0.5, 2.0))
    for row, col in [(0, 0), (2, 5), (7, 7)]:
        w.row.value, w.col.value = row, col
        assert w.cell_index == row * 8 + col and w.centre == (col * 16, row * 16)
        assert len(w.cell_anchors) == 4
        assert torch.equal(w.cell_anchors, w.anchors[w.cell_index * 4 : w.cell_index * 4 + 4])
        expected = []
        for ratio in (0.5, 2.0):  # ratio-major, as torchvision
            for size in (16, 64):
                half_w, half_h = size / math.sqrt(ratio) / 2, size * math.sqrt(ratio) / 2
                cx, cy = col * 16, row * 16
                expected.append([cx + round(-half_w), cy + round(-half_h),
                                 cx + round(half_w), cy + round(half_h)])
        assert w.cell_anchors.tolist() == expected
        assert torch.equal(w.cell_labels, w.labels[w.cell_index * 4 : w.cell_index * 4 + 4])
        assert f"cell (row {row}, column {col})" in text(w.readout.value)
        assert w.table.value.count("<tr>") == 1 + 4
        # the cell, the GT boxes, its anchors, the image's frame
        assert len(w.ax_cell.patches) == 1 + len(GT) + 4 + 1


def test_changing_the_stride_clamps_the_position():
    w = make(row=7, col=6)
    w.stride.value = 32
    assert w.feature_size == (4, 4) and (w.row.value, w.col.value) == (3, 3)
    assert w.row.max == 3 and w.cell_index == 15
    w.stride.value = 8
    assert w.row.max == 15 and (w.row.value, w.col.value) == (3, 3)


def test_thresholds_stay_ordered():
    w = make()
    w.pos_iou.value = 0.2  # below neg_iou 0.3: neg_iou follows
    assert (w.pos_iou.value, w.neg_iou.value) == (0.2, 0.2)
    assert (w.num_positive, w.num_negative, w.num_ignored) == tv_counts(w.anchors, GT, 0.2, 0.2)
    w.neg_iou.value = 0.5  # above pos_iou: pos_iou follows
    assert (w.pos_iou.value, w.neg_iou.value) == (0.5, 0.5)
    assert (w.num_positive, w.num_negative, w.num_ignored) == tv_counts(w.anchors, GT, 0.5, 0.5)


def test_no_size_selected_gives_no_anchors():
    w = make()
    w.sizes.value = ()
    assert w.K == 0 and w.num_anchors == 0 and len(w.cell_anchors) == 0
    assert "choose at least one size" in w.readout.value
    assert "positives 0, negatives 0, ignored 0 out of 0 anchors" in text(w.readout.value)
    w.sizes.value = (128,)
    assert w.K == 3 and w.num_anchors == 8 * 8 * 3


@pytest.mark.parametrize("target", [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0)},
                                    None])
def test_a_scene_without_ground_truth_is_all_negative(target):
    w = anchor_explorer(image(), target)
    assert (w.num_positive, w.num_negative, w.num_ignored) == (0, 384, 0)
    assert "no ground truth" in w.readout.value
    w.pos_iou.value = 0.1
    w.stride.value = 8
    assert w.num_negative == w.num_anchors == 16 * 16 * 6


def test_a_non_square_image():
    w = anchor_explorer(image(96, 160), {"boxes": GT}, stride=32)
    assert w.feature_size == (3, 5) and w.num_anchors == 3 * 5 * 6
    assert torch.equal(w.anchors, tv_anchors(96, 160, 32, (32, 64), (0.5, 1.0, 2.0)))
    assert w.stride.options == (8, 16, 32)


def test_bad_arguments():
    target = {"boxes": GT}
    with pytest.raises(ValueError, match="image must have shape"):
        anchor_explorer(torch.zeros(128, 128), target)
    with pytest.raises(ValueError, match="target must be a dict with 'boxes'"):
        anchor_explorer(image(), {"labels": torch.ones(3)})
    with pytest.raises(ValueError, match="sizes must be a non-empty sequence"):
        anchor_explorer(image(), target, sizes=())
    with pytest.raises(ValueError, match="aspect_ratios must all be positive"):
        anchor_explorer(image(), target, aspect_ratios=(0.0, 1.0))
    with pytest.raises(ValueError, match="stride must be a positive int"):
        anchor_explorer(image(), target, stride=0)
    with pytest.raises(ValueError, match="stride 256 is larger than the image"):
        anchor_explorer(image(), target, stride=256)
    with pytest.raises(ValueError, match=r"row must be in \[0, 7\]"):
        anchor_explorer(image(), target, row=8)
    with pytest.raises(ValueError, match="need 0 <= neg_iou <= pos_iou <= 1"):
        anchor_explorer(image(), target, pos_iou=0.3, neg_iou=0.7)
    with pytest.raises(ValueError, match="give the image with its target"):
        anchor_explorer(target=target)


def test_leaves_no_pyplot_figures():
    before = plt.get_fignums()
    make()
    assert plt.get_fignums() == before
