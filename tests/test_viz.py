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


# ---------------------------------------------------------------- masks, semantic maps, grids


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def rendered(fig):
    """The figure as an (H, W, 3) float array in [0, 1]."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3] / 255.0


def three_masks():
    masks = torch.zeros(3, 10, 12, dtype=torch.uint8)
    masks[0, 1:4, 1:5] = 1
    masks[1, 5:9, 2:6] = 1
    masks[2, 2:8, 7:11] = 1
    return masks


def test_draw_masks_one_fill_and_one_outline_per_mask(ax):
    artists = viz.draw_masks(ax, three_masks(), labels=torch.tensor([1, 2, 1]))
    assert len(artists) == 6 and len(ax.images) == 3 and len(ax.collections) == 3
    fills = artists[0::2]
    # the fill holds the class colour at alpha where the mask is set, transparent elsewhere
    fill = fills[1].get_array()
    assert fill.shape == (10, 12, 4)
    np.testing.assert_allclose(fill[6, 3], matplotlib.colors.to_rgba(viz.class_color(2), 0.5))
    assert fill[0, 0, 3] == 0 and fill[1:4, 1:5, 3].sum() == 0
    # same class -> same colour; view fitted to the image, y pointing down
    np.testing.assert_array_equal(fills[0].get_array()[2, 2], fills[2].get_array()[3, 8])
    assert ax.yaxis_inverted()


def test_draw_masks_options(ax):
    masks = three_masks()
    assert len(viz.draw_masks(ax, masks, contour=False)) == 3
    assert len(ax.collections) == 0
    outlines = viz.draw_masks(ax, masks, alpha=0.0, linestyle="dashed")  # outlines only
    assert len(outlines) == 3 and len(ax.images) == 3
    # without labels: one colour per instance index; a single colour for all
    fill = viz.draw_masks(ax, masks, contour=False)[2].get_array()
    np.testing.assert_allclose(fill[3, 8], matplotlib.colors.to_rgba(viz.PALETTE[2], 0.5))
    fill = viz.draw_masks(ax, masks, colors="red", alpha=1.0, contour=False)[1].get_array()
    np.testing.assert_allclose(fill[6, 3], (1, 0, 0, 1))


def test_draw_masks_outline_runs_along_pixel_edges(ax):
    masks = torch.zeros(1, 8, 8, dtype=torch.bool)
    masks[0, 2:5, 1:7] = True  # rows 2..4, columns 1..6 -> pixel edges x in [1, 7], y in [2, 5]
    (outline,) = viz.draw_masks(ax, masks, alpha=0)
    vertices = np.concatenate([p.vertices for p in outline.get_paths()])
    assert vertices[:, 0].min() == pytest.approx(1, abs=0.2)
    assert vertices[:, 0].max() == pytest.approx(7, abs=0.2)
    assert vertices[:, 1].min() == pytest.approx(2, abs=0.2)
    assert vertices[:, 1].max() == pytest.approx(5, abs=0.2)


def test_draw_masks_thresholds_probabilities_at_half(ax):
    probs = torch.tensor([[0.0, 0.49], [0.5, 0.9]])[None, None]  # (N, 1, H, W) like Mask R-CNN
    (fill,) = viz.draw_masks(ax, probs, contour=False)
    np.testing.assert_array_equal(fill.get_array()[..., 3] > 0, [[False, False], [True, True]])
    (fill,) = viz.draw_masks(ax, probs[0, 0].numpy(), contour=False)  # (H, W): one mask
    assert fill.get_array().shape == (2, 2, 4)


def test_draw_masks_pixel_colours_over_the_image():
    fig = plt.figure(figsize=(2, 2), dpi=50)  # 100 x 100 pixels
    ax = fig.add_axes((0, 0, 1, 1))
    ax.axis("off")
    viz.show_image(ax, torch.zeros(3, 4, 4))  # black
    mask = torch.zeros(1, 4, 4, dtype=torch.uint8)
    mask[0, :, :2] = 1  # the left half
    viz.draw_masks(ax, mask, labels=[1], alpha=0.5, contour=False)
    pixels = rendered(fig)
    expected = 0.5 * np.array(matplotlib.colors.to_rgb(viz.class_color(1)))  # half over black
    np.testing.assert_allclose(pixels[50, 10], expected, atol=0.02)
    np.testing.assert_allclose(pixels[50, 45], expected, atol=0.02)  # up to the image's middle
    np.testing.assert_allclose(pixels[50, 55], 0.0, atol=0.02)
    np.testing.assert_allclose(pixels[50, 90], 0.0, atol=0.02)


@pytest.mark.parametrize("empty", [torch.zeros(0, 8, 8, dtype=torch.uint8), [], torch.zeros(0)])
def test_draw_masks_empty(ax, empty):
    assert viz.draw_masks(ax, empty, labels=torch.zeros(0, dtype=torch.int64)) == []
    assert len(ax.images) == 0 and len(ax.collections) == 0


def test_draw_masks_empty_instance_has_no_outline(ax):
    assert len(viz.draw_masks(ax, torch.zeros(2, 5, 5, dtype=torch.uint8))) == 2  # 2 fills


@pytest.mark.parametrize(
    "bad", [torch.zeros(2, 3, 4, 5), torch.zeros(5), np.zeros((1, 2, 3, 4, 5))],
)
def test_draw_masks_bad_shape(ax, bad):
    with pytest.raises(ValueError, match=r"masks must have shape \(N, H, W\)"):
        viz.draw_masks(ax, bad)


def test_draw_masks_mismatched_lengths(ax):
    with pytest.raises(ValueError, match="labels"):
        viz.draw_masks(ax, three_masks(), labels=[1, 2])
    with pytest.raises(ValueError, match="colors"):
        viz.draw_masks(ax, three_masks(), colors=["red"])


def semantic_map():
    semantic = torch.zeros(6, 8, dtype=torch.int64)
    semantic[1:3, 1:4] = 2
    semantic[4:6, 5:8] = 7
    return semantic


def test_draw_semantic_colours_and_legend_of_present_classes(ax):
    shown = viz.draw_semantic(ax, semantic_map(), class_names=["bg", "a", "b", "c"])
    rgba = shown.get_array()
    assert rgba.shape == (6, 8, 4)
    assert rgba[0, 0, 3] == 0  # background: transparent
    np.testing.assert_allclose(rgba[1, 1], matplotlib.colors.to_rgba(viz.class_color(2)))
    np.testing.assert_allclose(rgba[5, 7], matplotlib.colors.to_rgba(viz.class_color(7)))
    # only the classes present, background excluded; no name for 7 -> its number
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["b", "7"]
    assert list(ax.get_xticks()) == [] and ax.yaxis_inverted()


def test_draw_semantic_over_an_image(ax):
    shown = viz.draw_semantic(ax, semantic_map().numpy()[None], image=torch.rand(3, 6, 8),
                              legend=False)
    assert len(ax.images) == 2 and ax.images[1] is shown
    assert shown.get_array()[1, 1, 3] == pytest.approx(0.5)  # default alpha over an image
    assert ax.get_legend() is None


def test_draw_semantic_all_background_has_no_legend(ax):
    shown = viz.draw_semantic(ax, torch.zeros(3, 3, dtype=torch.int64))
    assert shown.get_array()[..., 3].max() == 0 and ax.get_legend() is None


@pytest.mark.parametrize(
    ("bad", "match"),
    [(torch.zeros(3, 6, 8, dtype=torch.int64), "integer map"),
     (torch.zeros(6, 8), "integer map"),
     (torch.full((6, 8), -1), ">= 0")],
)
def test_draw_semantic_bad_input(ax, bad, match):
    with pytest.raises(ValueError, match=match):
        viz.draw_semantic(ax, bad)


def test_draw_semantic_image_of_another_size(ax):
    with pytest.raises(ValueError, match="image must have the height and width"):
        viz.draw_semantic(ax, semantic_map(), image=torch.rand(3, 5, 8))


def scene(num_objects, size=16):
    masks = torch.zeros(num_objects, size, size, dtype=torch.uint8)
    boxes = []
    for i in range(num_objects):
        masks[i, i:i + 3, i:i + 4] = 1
        boxes.append([i, i, i + 4, i + 3])
    target = {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
              "labels": torch.arange(1, num_objects + 1), "masks": masks}
    return torch.rand(3, size, size), target


def test_show_images_grid_shape_titles_and_blank_cells():
    images, targets = zip(*[scene(n) for n in (1, 2, 0, 3, 1)], strict=True)
    fig, axes = viz.show_images(list(images), list(targets), ncols=2, class_names=["bg", "a"],
                                titles=[f"#{i}" for i in range(5)])
    assert axes.shape == (3, 2) and len(fig.axes) == 6
    assert [ax.get_title() for ax in axes.flat] == ["#0", "#1", "#2", "#3", "#4", ""]
    assert all(not ax.axison for ax in axes.flat)
    assert len(axes[2, 1].images) == 0  # the blank cell
    # image + one mask fill per object; one solid box and one outline per object
    ax = axes[1, 1]
    assert len(ax.images) == 1 + 3 and len(ax.patches) == 3 and len(ax.collections) == 3
    assert [t.get_text() for t in ax.texts] == ["a", "2", "3"]
    assert len(axes[1, 0].patches) == 0  # an image without objects


def test_show_images_predictions_dashed_with_scores_over_the_threshold():
    image, target = scene(2)
    prediction = {"boxes": torch.tensor([[0.0, 0, 4, 3], [1, 1, 5, 4], [2, 2, 9, 9]]),
                  "labels": torch.tensor([1, 2, 2]), "scores": torch.tensor([0.9, 0.3, 0.5]),
                  "masks": torch.rand(3, 1, 16, 16)}
    batch = image[None].repeat(2, 1, 1, 1)  # (B, 3, H, W)
    fig, axes = viz.show_images(batch, [target, target], [prediction, prediction],
                                score_threshold=0.5, masks=False)
    assert axes.shape == (1, 2)
    ax = axes[0, 0]
    assert len(ax.images) == 1  # masks=False
    solid = [p for p in ax.patches if p.get_linestyle() == "-"]
    dashed = [p for p in ax.patches if p.get_linestyle() == "--"]
    assert len(solid) == 2 and len(dashed) == 2  # the 0.3 detection is hidden (0.5 is kept)
    # with predictions, only the predictions carry captions
    assert [t.get_text() for t in ax.texts] == ["1 0.90", "2 0.50"]
    # predicted masks: dashed outlines only, no fill
    fig, axes = viz.show_images([image], [target], [prediction], score_threshold=0.5)
    assert len(axes[0, 0].images) == 1 + 2 and len(axes[0, 0].collections) == 2 + 2


def test_show_images_keeps_the_image_extent():
    image, target = scene(1)
    target["boxes"] = torch.tensor([[-5.0, -5.0, 30.0, 30.0]])  # reaches outside the image
    fig, axes = viz.show_images(image, target)  # one image, one dict
    assert axes[0, 0].get_xlim() == (0, 16) and axes[0, 0].get_ylim() == (16, 0)


def test_show_images_bad_input():
    image, target = scene(1)
    with pytest.raises(ValueError, match="at least one image"):
        viz.show_images([])
    with pytest.raises(ValueError, match=r"targets must have one entry per image \(2\)"):
        viz.show_images([image, image], [target])
    with pytest.raises(ValueError, match="titles"):
        viz.show_images([image], titles=["a", "b"])
    with pytest.raises(ValueError, match="image must be"):
        viz.show_images([torch.zeros(2, 8, 8)])


# ---------------------------------------------------------------- training history


def fake_history(steps=20, epochs=2, evals=()):
    from types import SimpleNamespace

    total = np.linspace(2.0, 1.0, steps)
    return SimpleNamespace(
        losses={"loss": total.tolist(), "loss_cls": (total / 2).tolist()},
        lr=[0.01] * steps,
        epoch_losses={"loss": [float(c.mean()) for c in np.split(total, epochs)],
                      "loss_cls": [float(c.mean()) / 2 for c in np.split(total, epochs)]},
        evals=list(evals), epoch_seconds=[1.0] * epochs, epochs_done=epochs, stopped_early=False,
    )


def test_plot_history_losses_per_step_and_epoch_means():
    history = fake_history(steps=20, epochs=2)
    fig, axes = viz.plot_history(history)
    assert len(axes) == 1 and len(fig.axes) == 1
    ax = axes[0]
    # per loss: raw + smoothed + epoch dots; plus the legend's "epoch mean" entry
    assert len(ax.lines) == 2 * 3 + 1
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["loss", "loss_cls",
                                                                   "epoch mean"]
    raw, smooth, dots = ax.lines[:3]
    assert raw.get_color() == smooth.get_color() == "black"  # the total
    np.testing.assert_allclose(raw.get_xdata(), np.arange(1, 21))
    np.testing.assert_allclose(dots.get_xdata(), [5, 15])  # the middle of each epoch
    np.testing.assert_allclose(dots.get_ydata(), history.epoch_losses["loss"])
    assert ax.get_xlabel() == "step" and ax.get_yscale() == "linear"


def test_plot_history_smoothing_keeps_a_constant_constant():
    history = {"losses": {"loss": [3.0] * 500}, "epoch_losses": {}, "evals": []}  # a dict
    fig, axes = viz.plot_history(history, log=True)
    raw, smooth = axes[0].lines
    np.testing.assert_allclose(smooth.get_ydata(), 3.0)  # bias-corrected: no ramp from 0
    assert axes[0].get_yscale() == "log"


def test_plot_history_with_evals_on_a_second_axes():
    coco = dict.fromkeys(["AP", "AP50", "AP75", "APs", "APm", "APl",
                          "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"], 0.5)
    evals = [{**coco, "AP": 0.2, "AP75": -1.0}, {**coco, "AP": 0.4}]
    history = fake_history(evals=evals)
    history.stopped_early = True
    fig, axes = viz.plot_history(history)
    assert len(axes) == 2
    eval_ax = axes[1]
    # COCO stats: the three headline numbers; -1 (undefined) is left out
    assert [line.get_label() for line in eval_ax.lines] == ["AP", "AP50", "AP75"]
    np.testing.assert_allclose(eval_ax.lines[0].get_xdata(), [1, 2])
    np.testing.assert_allclose(eval_ax.lines[0].get_ydata(), [0.2, 0.4])
    assert np.isnan(eval_ax.lines[2].get_ydata()[0])
    assert "stopped early" in axes[0].get_title()
    # other metrics: every key, or the ones asked for
    fig, axes = viz.plot_history(fake_history(evals=[{"acc": 0.5, "iou": 0.1}] * 2))
    assert [line.get_label() for line in axes[1].lines] == ["acc", "iou"]
    fig, axes = viz.plot_history(fake_history(evals=evals), metrics=["AR100"])
    assert [line.get_label() for line in axes[1].lines] == ["AR100"]


def test_plot_history_on_given_axes():
    fig, (a, b) = plt.subplots(1, 2)
    history = fake_history(evals=[{"acc": 0.5}] * 2)
    assert list(viz.plot_history(history, ax=a)[1]) == [a]  # one axes: losses only
    got_fig, axes = viz.plot_history(history, ax=(a, b))
    assert got_fig is fig and list(axes) == [a, b] and len(b.lines) == 1


def test_plot_history_empty():
    from types import SimpleNamespace

    empty = SimpleNamespace(losses={}, lr=[], epoch_losses={}, evals=[], epoch_seconds=[],
                            epochs_done=0, stopped_early=False)
    fig, axes = viz.plot_history(empty)
    assert len(axes) == 1 and len(axes[0].lines) == 0
    assert axes[0].texts[0].get_text() == "no training steps yet"
    fig, axes = viz.plot_history({"losses": {"loss": []}, "evals": []})
    assert axes[0].texts[0].get_text() == "no training steps yet"


def test_plot_history_epochs_only():
    fig, axes = viz.plot_history({"losses": {}, "epoch_losses": {"loss": [2.0, 1.0, 0.5]}})
    (line,) = axes[0].lines
    np.testing.assert_allclose(line.get_xdata(), [1, 2, 3])
    assert axes[0].get_xlabel() == "epoch"


def test_plot_history_bad_input():
    with pytest.raises(TypeError, match="history"):
        viz.plot_history([1.0, 2.0])
    with pytest.raises(ValueError, match=r"losses\['loss'\] must be a list of numbers"):
        viz.plot_history({"losses": {"loss": [[1.0, 2.0]]}})


def test_show_images_prediction_masks_must_match_boxes():
    image, target = scene(2)
    prediction = {"boxes": target["boxes"], "scores": torch.ones(2), "masks": torch.rand(3, 16, 16)}
    with pytest.raises(ValueError, match="predictions masks must have 2 masks"):
        viz.show_images([image], predictions=[prediction])
