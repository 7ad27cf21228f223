"""The default box explorer, driven without a browser: its boxes are the course SSD's (by the
formula and by torchvision's DefaultBoxGenerator), a position's K boxes are the right slice, and
its matches equal torchvision's SSDMatcher, level by level."""

import html
import math
import re
from itertools import pairwise
from types import SimpleNamespace

import matplotlib
import matplotlib.pyplot as plt
import pytest
import torch
from torchvision.models.detection._utils import SSDMatcher
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import box_convert, box_iou

from course_lib.widgets import DefaultBoxExplorer, default_box_explorer

matplotlib.use("Agg")  # headless

GT = torch.tensor([[10.0, 12, 50, 44], [60, 60, 120, 100], [70, 8, 90, 40], [0, 0, 128, 128]])
SIZES = [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]
SCALES = [0.1, 0.3, 0.5, 0.7, 0.9, 1.0]  # ssd_scales(5, 0.1, 0.9)


def image(h=128, w=128):
    return torch.rand(3, h, w, generator=torch.Generator().manual_seed(0))


def make(**kwargs):
    return default_box_explorer(image(), {"boxes": GT}, **kwargs)


def text(html_value):
    """The readout as plain text: tags removed, entities decoded, spaces collapsed."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", html_value)).split())


def tv_default_boxes(sizes, scales, ratios, h=128, w=128):
    generator = DefaultBoxGenerator([list(r) for r in ratios], scales=scales)
    images = ImageList(torch.zeros(1, 3, h, w), [(h, w)])
    features = [torch.zeros(1, 1, fh, fw) for fh, fw in sizes]
    return generator(images, features)[0]


def test_defaults_are_the_course_ssd():
    w = default_box_explorer()
    assert isinstance(w, DefaultBoxExplorer)
    assert w.feature_sizes == SIZES and w.K_per_level == [4] * 5
    assert w.scales == pytest.approx(SCALES)
    assert w.boxes_per_level == [1024, 256, 64, 16, 4] and w.num_default == 1364
    assert torch.allclose(w.default_boxes, tv_default_boxes(SIZES, SCALES, [(2,)] * 5))
    assert [label for label, _ in w.level.options] == [
        "16 × 16 (stride 8)", "8 × 8 (stride 16)", "4 × 4 (stride 32)", "2 × 2 (stride 64)",
        "1 × 1 (stride 128)"]
    assert (w.level.value, w.row.value, w.col.value, w.iou_threshold.value) == (0, 8, 8, 0.5)
    assert "D = 1364 default boxes on 5 feature maps" in text(w.readout.value)
    assert w.table.value.count("<tr") == 1 + 5 + 1


@pytest.mark.parametrize("level", range(5))
def test_the_boxes_at_a_position_follow_the_formula(level):
    w = make()
    w.level.value = level
    fh, fw = SIZES[level]
    stride = 128 / fw
    assert (w.row.max, w.col.max) == (fh - 1, fw - 1)
    start = sum(h * w_ * 4 for h, w_ in SIZES[:level])
    for row, col in {(0, 0), (fh - 1, fw - 1), (fh // 3, fw // 2)}:
        w.row.value, w.col.value = row, col
        index = start + (row * fw + col) * 4
        assert w.box_index == index and w.position_index == row * fw + col
        assert torch.equal(w.boxes_at_position, w.default_boxes[index : index + 4])
        assert torch.equal(w.matched_at_position, w.matched[index : index + 4])
        # by hand: centred on the cell, sides s_k, sqrt(s_k s_k+1), s_k (sqrt 2, 1 / sqrt 2)
        s, s_next = SCALES[level], SCALES[level + 1]
        extra, long, short = math.sqrt(s * s_next), s * math.sqrt(2), s / math.sqrt(2)
        sides = [(s, s), (extra, extra), (min(long, 1), short), (short, min(long, 1))]
        cx, cy = (col + 0.5) * stride, (row + 0.5) * stride
        expected = torch.tensor([[cx, cy, bw * 128, bh * 128] for bw, bh in sides])
        assert torch.allclose(box_convert(w.boxes_at_position, "xyxy", "cxcywh"), expected,
                              atol=1e-4)
        assert f"position (row {row}, column {col})" in text(w.readout.value)
        assert f"boxes {index}..{index + 3}" in text(w.readout.value)


def test_changing_the_level_clamps_the_position():
    w = make()
    w.row.value, w.col.value = 15, 12
    w.level.value = 2
    assert (w.row.value, w.col.value, w.row.max, w.col.max) == (3, 3, 3, 3)
    assert w.box_index == 1024 + 256 + 15 * 4
    w.level.value = 4
    assert (w.row.value, w.col.value, w.row.max) == (0, 0, 0)
    assert torch.equal(w.boxes_at_position, w.default_boxes[-4:])
    w.level.value = 0
    assert (w.row.value, w.col.value, w.row.max) == (0, 0, 15)


@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 0.7, 1.0])
def test_matches_equal_torchvision_per_level(threshold):
    w = make()
    w.iou_threshold.value = threshold
    expected = SSDMatcher(threshold)(box_iou(GT, w.default_boxes))
    assert torch.equal(w.matched, expected)
    starts = [0, 1024, 1280, 1344, 1360, 1364]
    per_level = [int((expected[a:b] >= 0).sum()) for a, b in pairwise(starts)]
    assert w.positives_per_level == per_level
    assert sum(w.positives_per_level) == w.num_positive == int((w.matched >= 0).sum())
    assert f"{w.num_positive} positives" in text(w.readout.value)
    cells = re.findall(r"<tr[^>]*>(.*?)</tr>", w.table.value)[1:6]
    assert [int(text(c).split()[-1]) for c in cells] == per_level
    # right panel: every matched box, the GT boxes, the image's frame
    assert len(w.ax_matched.patches) == w.num_positive + len(GT) + 1


def test_the_table_lists_sizes_in_pixels():
    shown = text(make().table.value)
    assert "13×13, 22×22, 18×9, 9×18" in shown  # 0.1 * 128, sqrt(0.03) * 128, ...
    assert "115×115, 121×121, 128×81, 81×128" in shown  # the 1 x 1 level, clipped to 1


def test_a_model_gives_the_settings():
    model = SimpleNamespace(feature_sizes=[(8, 8), (4, 4)], scales=[0.2, 0.5, 0.8],
                            aspect_ratios=[(2, 3), (2,)], image_size=128)
    w = default_box_explorer(image(), {"boxes": GT}, model=model, level=1)
    assert w.K_per_level == [6, 4] and w.num_default == 8 * 8 * 6 + 4 * 4 * 4
    assert torch.allclose(w.default_boxes,
                          tv_default_boxes([(8, 8), (4, 4)], [0.2, 0.5, 0.8], [(2, 3), (2,)]))
    assert (w.level.value, w.row.max) == (1, 3)
    w.level.value = 0
    w.row.value, w.col.value = 7, 7
    assert torch.equal(w.boxes_at_position, w.default_boxes[63 * 6 : 64 * 6])
    assert len(w.ax_position.texts) == 6
    assert "model sees" not in w.readout.value
    model.image_size = (300, 300)
    w = default_box_explorer(image(), {"boxes": GT}, model=model)
    assert "the model sees 300 × 300 images" in text(w.readout.value)


@pytest.mark.parametrize("target", [{"boxes": torch.zeros(0, 4)}, None])
def test_a_scene_without_ground_truth(target):
    w = default_box_explorer(image(), target)
    assert w.num_positive == 0 and w.positives_per_level == [0] * 5
    assert (w.matched == -1).all() and "no ground truth" in w.readout.value


def test_a_non_square_image():
    w = default_box_explorer(image(64, 128), {"boxes": GT[:2] / 2})
    assert "16 × 16 (stride 4 × 8)" == w.level.options[0][0]
    assert torch.allclose(w.default_boxes, tv_default_boxes(SIZES, SCALES, [(2,)] * 5, 64, 128))


def test_bad_arguments():
    target = {"boxes": GT}
    with pytest.raises(ValueError, match="image must have shape"):
        default_box_explorer(torch.zeros(1, 128, 128), target)
    with pytest.raises(ValueError, match="target must be a dict with 'boxes'"):
        default_box_explorer(image(), {"labels": torch.ones(4)})
    with pytest.raises(ValueError, match="iou_threshold must be in"):
        default_box_explorer(image(), target, iou_threshold=-0.1)
    with pytest.raises(ValueError, match=r"level must be in \[0, 4\]"):
        default_box_explorer(image(), target, level=5)
    with pytest.raises(ValueError, match="lacks scales, image_size"):
        default_box_explorer(image(), target, model=SimpleNamespace(
            feature_sizes=[(4, 4)], aspect_ratios=[(2,)]))
    bad = SimpleNamespace(feature_sizes=[(4, 4)], scales=[0.2], aspect_ratios=[(2,)],
                          image_size=128)
    with pytest.raises(ValueError, match="scales must have"):
        default_box_explorer(image(), target, model=bad)
    bad.scales, bad.feature_sizes = [0.2, 0.5], [(0, 4)]
    with pytest.raises(ValueError, match="at least 1 x 1"):
        default_box_explorer(image(), target, model=bad)
    with pytest.raises(ValueError, match="give the image with its target"):
        default_box_explorer(target=target)


def test_leaves_no_pyplot_figures():
    before = plt.get_fignums()
    make()
    assert plt.get_fignums() == before
