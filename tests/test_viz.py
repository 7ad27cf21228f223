import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.patches import PathPatch, Rectangle

from course_lib import viz

matplotlib.use("Agg")  # headless: no window, works after pyplot's import too


@pytest.fixture
def ax():
    fig, ax = plt.subplots(figsize=(3, 3))
    yield ax
    plt.close(fig)


def test_class_color_is_stable_and_wraps():
    assert viz.class_color(1) == viz.class_color(torch.tensor(1)) == viz.PALETTE[1]
    assert viz.class_color(len(viz.PALETTE) + 3) == viz.PALETTE[3]
    assert len(set(viz.PALETTE)) == len(viz.PALETTE)


def test_draw_boxes_one_patch_and_caption_per_box(ax):
    boxes = torch.tensor([[10.0, 10.0, 50.0, 40.0], [30.0, 20.0, 90.0, 80.0], [0, 0, 5, 5]])
    patches = viz.draw_boxes(ax, boxes, labels=torch.tensor([1, 2, 1]),
                             scores=torch.tensor([0.9, 0.5, 0.25]),
                             class_names=["bg", "dog", "cat"])
    assert len(patches) == 3 and len(ax.patches) == 3
    assert all(isinstance(p, Rectangle) for p in patches)
    x1, y1, x2, y2 = boxes[1].tolist()
    assert patches[1].get_xy() == (x1, y1)
    assert patches[1].get_width() == x2 - x1 and patches[1].get_height() == y2 - y1
    assert [t.get_text() for t in ax.texts] == ["dog 0.90", "cat 0.50", "dog 0.25"]
    # same label -> same colour; the view fits the boxes with y pointing down
    assert patches[0].get_edgecolor() == patches[2].get_edgecolor()
    assert ax.yaxis_inverted()
    assert ax.get_xlim()[0] <= 0 and ax.get_xlim()[1] >= 90


def test_draw_boxes_without_captions_and_options(ax):
    patches = viz.draw_boxes(ax, [[0, 0, 10, 10], [5, 5, 20, 20]], colors="red", fill=True,
                             linestyle="--", alpha=0.5, linewidth=1)
    assert len(ax.patches) == 2 and len(ax.texts) == 0
    assert patches[0].get_facecolor()[3] == pytest.approx(0.125)
    assert patches[0].get_edgecolor() == pytest.approx((1.0, 0.0, 0.0, 0.5))
    assert patches[1].get_linestyle() == "--"


def test_draw_boxes_unknown_label_name_falls_back_to_number(ax):
    viz.draw_boxes(ax, [[0, 0, 10, 10]], labels=[7], class_names={1: "dog"})
    assert ax.texts[0].get_text() == "7"


@pytest.mark.parametrize("empty", [torch.zeros(0, 4), [], np.zeros((0, 4))])
def test_draw_boxes_empty(ax, empty):
    assert viz.draw_boxes(ax, empty, labels=torch.zeros(0, dtype=torch.int64),
                          scores=torch.zeros(0)) == []
    assert len(ax.patches) == 0 and len(ax.texts) == 0


def test_draw_boxes_single_box_vector(ax):
    assert len(viz.draw_boxes(ax, torch.tensor([1.0, 2.0, 3.0, 4.0]))) == 1


@pytest.mark.parametrize("bad", [torch.zeros(3, 5), torch.zeros(2, 2, 4), torch.zeros(3)])
def test_draw_boxes_bad_shape(ax, bad):
    with pytest.raises(ValueError, match=r"boxes must have shape \(N, 4\)"):
        viz.draw_boxes(ax, bad)


def test_draw_boxes_mismatched_lengths(ax):
    with pytest.raises(ValueError, match="scores"):
        viz.draw_boxes(ax, torch.zeros(2, 4), scores=[0.5])
    with pytest.raises(ValueError, match="colors"):
        viz.draw_boxes(ax, torch.zeros(2, 4), colors=["red"])


def test_draw_iou_overlapping(ax):
    drawn = viz.draw_iou(ax, (20, 20, 70, 70), torch.tensor([40.0, 35.0, 95.0, 90.0]))
    # union + intersection + the two outlines
    assert len(ax.patches) == 4
    assert isinstance(drawn["union"], PathPatch)
    assert isinstance(drawn["intersection"], Rectangle)
    assert drawn["intersection"].get_bbox().bounds == (40, 35, 30, 35)
    assert drawn["intersection_area"] == 30 * 35
    assert drawn["union_area"] == 50 * 50 + 55 * 55 - 30 * 35


def test_draw_iou_disjoint_has_no_intersection(ax):
    drawn = viz.draw_iou(ax, (0, 0, 10, 10), (20, 20, 30, 30))
    assert drawn["intersection"] is None and drawn["intersection_area"] == 0
    assert drawn["union_area"] == 200
    assert len(ax.patches) == 3


def test_draw_iou_touching_edges_is_no_overlap(ax):
    drawn = viz.draw_iou(ax, (0, 0, 10, 10), (10, 0, 20, 10))
    assert drawn["intersection"] is None and drawn["intersection_area"] == 0


def test_draw_iou_rejects_several_boxes(ax):
    with pytest.raises(ValueError, match="box_a"):
        viz.draw_iou(ax, torch.zeros(2, 4), (0, 0, 1, 1))


@pytest.mark.parametrize(
    "image",
    [torch.rand(3, 8, 10), torch.rand(1, 8, 10), torch.rand(8, 10), np.random.rand(8, 10, 3),
     np.zeros((8, 10, 4)), np.zeros((8, 10), dtype=np.uint8), np.zeros((8, 10, 3), dtype=np.uint8)],
)
def test_show_image_layouts(ax, image):
    shown = viz.show_image(ax, image)
    assert shown.get_array().shape[:2] == (8, 10)
    assert len(ax.images) == 1 and list(ax.get_xticks()) == []


def test_show_image_clips_floats(ax):
    shown = viz.show_image(ax, torch.full((3, 2, 2), 2.0))
    assert shown.get_array().max() == 1.0


@pytest.mark.parametrize("bad", [torch.zeros(2, 8, 8), np.zeros((8, 8, 2)), torch.zeros(4)])
def test_show_image_bad_shape(ax, bad):
    with pytest.raises(ValueError, match="image must be"):
        viz.show_image(ax, bad)


def test_plot_pr_curve_lecture_example(ax):
    precision = torch.tensor([1.0, 1.0, 2 / 3, 0.5, 0.6])
    recall = torch.tensor([1 / 3, 2 / 3, 2 / 3, 2 / 3, 1.0])
    drawn = viz.plot_pr_curve(ax, precision, recall, ap=0.8667, label="dog")
    assert set(drawn) == {"curve", "envelope", "area"}
    np.testing.assert_allclose(drawn["curve"].get_ydata(), precision.numpy())
    # the envelope is the running maximum from the right, held from recall 0
    np.testing.assert_allclose(drawn["envelope"].get_xdata(), [0, 1 / 3, 2 / 3, 2 / 3, 2 / 3, 1],
                               rtol=1e-6)
    np.testing.assert_allclose(drawn["envelope"].get_ydata(), [1, 1, 1, 2 / 3, 0.6, 0.6],
                               rtol=1e-6)
    # the shaded polygon's area is the all-point AP: 2/3 * 1 + 1/3 * 0.6
    vertices = drawn["area"].get_paths()[0].vertices
    x, y = vertices[:, 0], vertices[:, 1]
    shoelace = 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))
    assert shoelace == pytest.approx(2 / 3 + 0.2, rel=1e-6)
    labels = [t.get_text() for t in ax.legend().get_texts()]
    assert "dog" in labels and "AP = 0.867" in labels


def test_plot_pr_curve_samples_and_no_envelope(ax):
    precision = torch.tensor([1.0, 0.5, 2 / 3])
    recall = torch.tensor([0.5, 0.5, 1.0])
    drawn = viz.plot_pr_curve(ax, precision, recall, envelope=False, samples=11)
    assert set(drawn) == {"curve", "samples"}
    values = drawn["samples"].get_ydata()
    # VOC 11-point: best precision at recall >= t
    assert list(values[:6]) == [1.0] * 6 and values[6:] == pytest.approx([2 / 3] * 5)
    assert len(ax.collections) == 0


def test_plot_pr_curve_empty(ax):
    drawn = viz.plot_pr_curve(ax, torch.zeros(0), torch.zeros(0), samples=11)
    assert len(drawn["curve"].get_xdata()) == 0
    assert list(drawn["samples"].get_ydata()) == [0.0] * 11


def test_plot_pr_curve_bad_shapes(ax):
    with pytest.raises(ValueError, match="precision and recall"):
        viz.plot_pr_curve(ax, torch.zeros(3), torch.zeros(2))
