"""The segmentation explorer, driven without a browser: its per-class IoU equals |A ∩ B| / |A ∪ B|
counted pixel by pixel, its scores over the images equal the confusion matrix of all the
predictions at once, and every control redraws the figure and the table."""

import html
import math
import re

import matplotlib
import matplotlib.pyplot as plt
import pytest
import torch
from matplotlib.colors import to_rgba
from torch import nn

from course_lib.data.synthetic import SyntheticShapes
from course_lib.device import available_devices
from course_lib.segmentation import one_hot
from course_lib.segmentation_metrics import confusion_matrix, iou_per_class, pixel_accuracy
from course_lib.widgets import SegmentationExplorer, segmentation_explorer
from course_lib.widgets.segmentation_explorer import (
    ALL_CLASSES,
    ERROR_COLOR,
    FN_COLOR,
    FP_COLOR,
    TP_COLOR,
    VIEWS,
)

matplotlib.use("Agg")  # headless

K = 3  # circle, square, triangle
C = K + 1
N = 5


@pytest.fixture(scope="module")
def data():
    return SyntheticShapes("test", N, kind="segmentation", image_size=64, num_classes=K,
                           cache=False, progress=False)


def text(html_value):
    """A readout as plain text: tags removed, entities decoded."""
    return html.unescape(re.sub(r"<[^>]+>", "", html_value))


def table_rows(w):
    """The table as a list of rows, each a list of cell texts (header first)."""
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", w.table.value)
    return [[text(cell).strip() for cell in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row)]
            for row in rows]


def oracle_iou(pred, truth, c):
    """|pred = c and truth = c| / |pred = c or truth = c|, nan when both are empty."""
    inter = int(((pred == c) & (truth == c)).sum())
    union = int(((pred == c) | (truth == c)).sum())
    return inter / union if union else math.nan


def same(a, b):
    """Equal floats, nan equal to nan."""
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, abs=1e-12)


def same_tensor(a, b):
    """Equal tensors, nan equal to nan."""
    return torch.allclose(a, b, rtol=0, atol=0, equal_nan=True)


def shown(value):
    return "\u2014" if math.isnan(value) else f"{value:.3f}"


class PerfectModel(nn.Module):
    """Looks each image up in the data set and returns its true one-hot map (times 10), or,
    with ``shift``, the true map moved ``shift`` pixels to the right (wrapping around)."""

    def __init__(self, data, shift=0):
        super().__init__()
        self.shift = shift
        self.register_buffer("images", torch.stack([data[i][0] for i in range(len(data))]))
        self.register_buffer("truths", torch.stack([data[i][1]["semantic"]
                                                    for i in range(len(data))]))

    def forward(self, x):
        # (B, 1, 3, H, W) - (1, N, 3, H, W) -> (B, N): which stored image each input is
        distance = (x[:, None] - self.images[None]).abs().flatten(2).sum(-1)
        truths = self.truths[distance.argmin(dim=1)].roll(self.shift, dims=-1)  # (B, H, W)
        return 10 * one_hot(truths, C)  # (B, C, H, W)


class BackgroundModel(nn.Module):
    """Predicts background everywhere."""

    def forward(self, x):
        logits = x.new_zeros(x.shape[0], C, *x.shape[2:])  # (B, C, H, W)
        logits[:, 0] = 1.0
        return logits


class Counting(nn.Module):
    """Wraps a model and records how many images each call had."""

    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, []

    def forward(self, x):
        self.calls.append(x.shape[0])
        return self.model(x)


def conv(seed=0, out_channels=C, kernel_size=1, padding=0):
    torch.manual_seed(seed)
    return nn.Conv2d(3, out_channels, kernel_size, padding=padding)


def direct_labels(model, data):
    """The model's label maps of every image, one forward pass for all: Tensor[N, H, W]."""
    with torch.no_grad():
        return model(torch.stack([data[i][0] for i in range(len(data))])).argmax(dim=1)


# ---------------------------------------------------------------- the default data


def test_defaults_on_the_synthetic_test_split():
    w = segmentation_explorer(conv(out_channels=6), num_images=3)  # all 5 shapes
    assert isinstance(w, SegmentationExplorer)
    assert w.num_images == 3 and w.C == 6 and w.K == 5
    assert w.class_names == ["background", "circle", "square", "triangle", "star", "ring"]
    expected = SyntheticShapes("test", 3, kind="segmentation", image_size=64, cache=False)
    for i in range(3):
        image, target = expected[i]
        assert torch.equal(w.images[i], image) and torch.equal(w.truths[i], target["semantic"])
    assert w.model.options == ("Conv2d",) and w.model_name == "Conv2d"
    assert w.view.value == "prediction" and w.view.options == VIEWS
    assert w.class_choice.value == ALL_CLASSES and len(w.class_choice.options) == 7
    assert w.image.shape == (3, 64, 64) and w.pred.shape == w.truth.shape == (64, 64)
    assert w.pred.dtype == torch.int64 and w.errors.dtype == torch.bool
    assert len(w.axes) == 1 and w.axes[0].get_title() == "Conv2d: prediction"
    assert "image 0, model Conv2d" in text(w.readout.value)


def test_image_size_and_num_classes_of_the_default_split():
    w = segmentation_explorer(conv(out_channels=3), num_images=2, image_size=80, num_classes=2)
    assert w.image.shape == (3, 80, 80) and w.class_names == ["background", "circle", "square"]


# ---------------------------------------------------------------- the scores


def test_a_perfect_model_scores_one_and_makes_no_error(data):
    w = segmentation_explorer({"perfect": PerfectModel(data)}, data)
    for i in range(N):
        w.image_index.value = i
        assert torch.equal(w.pred, w.truth) and not w.errors.any()
        assert w.image_accuracy == 1.0 and w.image_miou == 1.0
        present = set(w.truth.unique().tolist())
        for c in range(C):
            assert same(float(w.image_iou[c]), 1.0 if c in present else math.nan)
        rows = table_rows(w)
        for c in range(C):  # absent classes: a dash, not 0
            assert rows[1 + c][3] == ("1.000" if c in present else "\u2014")
        assert "wrong pixels: 0 of 4096 (0.0%)" in text(w.readout.value)
        assert w.axes[0].get_title() == "perfect: prediction"
    assert w.dataset_accuracy == 1.0 and w.dataset_miou == 1.0
    assert torch.equal(w.dataset_cm, torch.diag(w.dataset_cm.diagonal()))
    # error map: an empty overlay
    w.view.value = "error map"
    assert w.axes[0].get_title() == "errors: 0 px"
    assert w.axes[0].images[-1].get_array()[..., 3].max() == 0
    # one class: every pixel of it a TP
    c = int(w.truth.max())
    w.class_choice.value = c
    assert torch.equal(w.tp, w.truth == c) and not w.fp.any() and not w.fn.any()
    assert w.counts == (int((w.truth == c).sum()), 0, 0)


def test_all_background_scores_zero_for_every_object_class(data):
    w = segmentation_explorer({"background": BackgroundModel()}, data)
    for i in range(N):
        w.image_index.value = i
        truth = data[i][1]["semantic"]
        assert not w.pred.any()
        oracle_cm = confusion_matrix(torch.zeros_like(truth), truth, C)
        assert torch.equal(w.image_cm, oracle_cm)
        assert same_tensor(w.image_iou, iou_per_class(oracle_cm))
        for c in range(1, C):
            expected = 0.0 if (truth == c).any() else math.nan
            assert same(float(w.image_iou[c]), expected)
        background = float((truth == 0).float().mean())
        assert float(w.image_iou[0]) == pytest.approx(background)
        assert w.image_accuracy == pytest.approx(background)
        assert w.image_miou == pytest.approx(float(w.image_iou.nanmean()))
        assert torch.equal(w.errors, truth != 0)


@pytest.mark.parametrize("which", ["conv", "shifted"])
def test_per_class_iou_equals_the_pixel_count_oracle(data, which):
    model = conv(1) if which == "conv" else PerfectModel(data, shift=3)
    w = segmentation_explorer({which: model}, data)
    preds = direct_labels(model, data)
    for i in range(N):
        w.image_index.value = i
        truth = data[i][1]["semantic"]
        assert torch.equal(w.pred, preds[i])
        cm = confusion_matrix(preds[i], truth, C)
        assert same_tensor(w.image_iou, iou_per_class(cm))
        assert w.image_accuracy == pytest.approx(pixel_accuracy(cm))
        rows = table_rows(w)
        for c in range(C):
            iou = oracle_iou(preds[i], truth, c)
            assert same(float(w.image_iou[c]), iou)
            assert rows[1 + c][1:4] == [str(int((truth == c).sum())),
                                       str(int((preds[i] == c).sum())), shown(iou)]
        present = [oracle_iou(preds[i], truth, c) for c in range(C)]
        present = [v for v in present if not math.isnan(v)]
        assert w.image_miou == pytest.approx(sum(present) / len(present))
        assert rows[-2][0] == "mIoU" and rows[-2][3] == shown(w.image_miou)
        assert rows[-1][0] == "pixel accuracy" and rows[-1][3] == shown(w.image_accuracy)


def test_scores_over_the_images_are_one_confusion_matrix(data):
    model = PerfectModel(data, shift=3)
    w = segmentation_explorer({"shifted": model}, data, batch_size=2)
    truths = torch.stack([data[i][1]["semantic"] for i in range(N)])  # (N, H, W)
    preds = truths.roll(3, dims=-1)  # what the model predicts, without running it
    assert torch.equal(direct_labels(model, data), preds)
    cm = confusion_matrix(preds, truths, C)  # all N images at once
    assert torch.equal(w.dataset_cm, cm)
    assert same_tensor(w.dataset_iou, iou_per_class(cm))
    assert w.dataset_accuracy == pytest.approx(pixel_accuracy(cm))
    assert w.dataset_miou == pytest.approx(float(iou_per_class(cm).nanmean()))
    rows = table_rows(w)
    assert rows[0][4] == f"IoU ({N} images)"
    for c in range(C):
        assert rows[1 + c][4] == shown(float(iou_per_class(cm)[c]))
    assert rows[-2][4] == shown(w.dataset_miou)
    # not the mean of the per-image IoUs
    per_image = torch.stack([iou_per_class(confusion_matrix(preds[i], truths[i], C))
                             for i in range(N)])  # (N, C)
    assert (per_image.nanmean(dim=0) - w.dataset_iou).abs().max() > 0.01


def test_each_model_runs_once_per_image_and_only_when_shown(data):
    a, b = Counting(conv(0)), Counting(conv(1))
    w = segmentation_explorer({"a": a, "b": b}, data, batch_size=2)
    assert sum(b.calls) == 1  # only the shape check on the first image
    assert sum(a.calls) == N and max(a.calls) <= 2  # every image, for the dataset scores
    w.model.value = "b"
    assert sum(b.calls) == N and w.model_name == "b"
    for i in (3, 1, 4):
        w.image_index.value = i
        w.model.value = "a"
        w.model.value = "b"
    w.view.value = "side by side"
    w.class_choice.value = 1
    assert sum(a.calls) == N and sum(b.calls) == N
    assert not a.training and not b.training  # eval mode


# ---------------------------------------------------------------- one class


def test_a_chosen_class_shows_its_tp_fp_fn(data):
    model = PerfectModel(data, shift=3)
    w = segmentation_explorer({"shifted": model}, data, view="error map", opacity=0.4)
    preds = direct_labels(model, data)
    found = False
    for i in range(N):
        w.image_index.value = i
        truth = data[i][1]["semantic"]
        for c in range(C):
            w.class_choice.value = c
            assert w.selected_class == c
            assert torch.equal(w.tp, (preds[i] == c) & (truth == c))
            assert torch.equal(w.fp, (preds[i] == c) & (truth != c))
            assert torch.equal(w.fn, (preds[i] != c) & (truth == c))
            tp, fp, fn = w.counts
            iou = oracle_iou(preds[i], truth, c)
            assert same(float(w.image_iou[c]), iou)
            readout = text(w.readout.value)
            if tp + fp + fn:
                assert (f"IoU = TP / (TP + FP + FN) = {tp} / ({tp} + {fp} + {fn}) = {iou:.3f}"
                        in readout)
            else:
                assert "in neither the truth nor the prediction" in readout
            assert f"over the {N} images: IoU {shown(float(w.dataset_iou[c]))}" in readout
            ax = w.axes[0]
            assert ax.get_title().endswith(f"TP {tp}, FP {fp}, FN {fn}, IoU {shown(iou)}")
            # the image, then one overlay per mask: TP, FP, FN in their colours
            assert len(ax.images) == 4
            for overlay, mask, color in zip(ax.images[1:], (w.tp, w.fp, w.fn),
                                            (TP_COLOR, FP_COLOR, FN_COLOR), strict=True):
                rgba = overlay.get_array()
                assert (rgba[..., 3] > 0).sum() == int(mask.sum())
                if mask.any():
                    assert tuple(rgba[mask.numpy()][0]) == pytest.approx(to_rgba(color, 0.4))
            rows = re.findall(r"<tr[^>]*>", w.table.value)
            assert [r for r, tag in enumerate(rows) if "background:" in tag] == [1 + c]
            found = found or (tp > 0 and fp > 0 and fn > 0)
    assert found  # some case had all three kinds of pixel
    w.class_choice.value = ALL_CLASSES
    assert w.selected_class is None and w.tp is None and w.counts is None
    assert w.axes[0].get_title() == f"errors: {int(w.errors.sum())} px"


def test_a_class_absent_from_the_image_has_a_dash(data):
    w = segmentation_explorer({"perfect": PerfectModel(data)}, data)
    for i in range(N):
        absent = set(range(C)) - set(data[i][1]["semantic"].unique().tolist())
        if absent:
            break
    else:
        pytest.skip("every class is in every image")
    w.image_index.value = i
    c = min(absent)
    w.class_choice.value = c
    assert w.counts == (0, 0, 0) and math.isnan(float(w.image_iou[c]))
    assert "in neither the truth nor the prediction of this image" in text(w.readout.value)
    assert table_rows(w)[1 + c][3] == "\u2014"
    assert w.axes[0].get_title() == "perfect: prediction"


# ---------------------------------------------------------------- the controls


def test_controls_redraw_the_figure_and_the_table(data):
    w = segmentation_explorer({"a": conv(0), "b": conv(1)}, data, index=1)
    assert w.image_index.value == 1 and torch.equal(w.image, data[1][0])
    table = w.table.value
    w.image_index.value = 2
    assert torch.equal(w.truth, data[2][1]["semantic"]) and w.table.value != table
    assert "image 2, model a" in text(w.readout.value)
    w.next_button.click()
    assert w.image_index.value == 3
    w.image_index.value = N - 1
    w.next_button.click()
    assert w.image_index.value == 0  # wraps around
    seen = []
    for _ in range(4):
        before = w.image_index.value
        w.random_button.click()
        assert w.image_index.value != before
        seen.append(w.image_index.value)
    again = segmentation_explorer({"a": conv(0)}, data)
    for index in seen:
        again.random_button.click()
        assert again.image_index.value == index  # the same sequence for the same seed

    w.model.value = "b"
    assert w.model_name == "b" and w.axes[0].get_title() == "b: prediction"
    assert "model b" in text(w.readout.value)

    titles = {"prediction": ["b: prediction"], "ground truth": ["ground truth"],
              "error map": [f"errors: {int(w.errors.sum())} px"],
              "side by side": ["ground truth", "b: prediction",
                               f"errors: {int(w.errors.sum())} px"]}
    for view in VIEWS:
        w.view.value = view
        assert [ax.get_title() for ax in w.axes] == titles[view]
        assert list(w.fig.axes) == w.axes
    legend = [t.get_text() for t in w.fig.legends[0].get_texts()]
    assert legend == ["circle", "square", "triangle", "wrong pixel"]
    w.class_choice.value = 2
    legend = [t.get_text() for t in w.fig.legends[0].get_texts()]
    assert legend == ["square", "TP", "FP", "FN (missed)"]
    w.view.value = "prediction"
    legend = [t.get_text() for t in w.fig.legends[0].get_texts()]
    assert legend == ["square"]
    # the image under the overlays: grey (H, W), or in colour (H, W, 3)
    assert w.grey_image.value and w.axes[0].images[0].get_array().shape == (64, 64)
    assert torch.allclose(torch.from_numpy(w.axes[0].images[0].get_array().data),
                          w.image.mean(dim=0))
    w.grey_image.value = False
    assert w.axes[0].images[0].get_array().shape == (64, 64, 3)


def test_overlays_use_the_class_colours_and_the_opacity(data):
    w = segmentation_explorer({"perfect": PerfectModel(data)}, data, view="ground truth")
    for opacity in (0.3, 0.8):
        w.opacity.value = opacity
        rgba = w.axes[0].images[-1].get_array()  # (H, W, 4), over the image
        truth = w.truth.numpy()
        assert (rgba[truth == 0][..., 3] == 0).all()  # background transparent
        for c in set(truth.ravel().tolist()) - {0}:
            assert tuple(rgba[truth == c][0]) == pytest.approx(to_rgba(w.class_color(c), opacity))
    w.view.value = "error map"
    assert w.axes[0].images[-1].get_array()[..., 3].max() == 0
    bad = segmentation_explorer({"bg": BackgroundModel()}, data, view="error map", opacity=0.5)
    rgba = bad.axes[0].images[-1].get_array()
    errors = bad.errors.numpy()
    assert (rgba[..., 3] > 0).sum() == errors.sum()
    assert tuple(rgba[errors][0]) == pytest.approx(to_rgba(ERROR_COLOR, 0.5))


# ---------------------------------------------------------------- other inputs


class ListDataset(list):
    """A plain list of (image, target) pairs, without .classes."""


def test_a_dataset_of_mixed_sizes_without_class_names():
    gen = torch.Generator().manual_seed(0)
    items = ListDataset()
    for size in (32, 32, 48, 32, 32, 32):
        truth = torch.randint(0, 3, (size, size), generator=gen)
        items.append((torch.rand(3, size, size, generator=gen), {"semantic": truth}))
    model = Counting(conv(0, out_channels=3))
    with pytest.raises(ValueError, match="num_classes is needed"):
        segmentation_explorer(model, items)
    w = segmentation_explorer(model, items, num_classes=2, batch_size=2)
    assert w.class_names == ["background", "class 1", "class 2"] and w.model_name == "Counting"
    assert model.calls == [1, 1, 1, 2, 1]  # image 0 alone, then runs of one size, <= 2 long
    cm = sum(confusion_matrix(model.model(image[None]).argmax(1)[0], target["semantic"], 3)
             for image, target in items)
    assert torch.equal(w.dataset_cm, cm)
    w.image_index.value = 2
    assert w.image.shape == (3, 48, 48) and w.pred.shape == (48, 48)


def test_a_dict_output_like_torchvision(data):
    class DictModel(nn.Module):
        def forward(self, x):
            return {"out": BackgroundModel()(x), "aux": None}

    w = segmentation_explorer({"tv": DictModel()}, data)
    assert not w.pred.any()


@pytest.mark.parametrize("device", available_devices())
def test_models_run_on_the_device(data, device):
    model = conv(3)
    expected = direct_labels(model, data)
    w = segmentation_explorer({"conv": model}, data, device=device)
    assert next(model.parameters()).device.type == device
    assert w.pred.device.type == "cpu"
    for i in range(N):
        w.image_index.value = i
        assert torch.equal(w.pred, expected[i])


def test_bad_arguments(data):
    with pytest.raises(ValueError, match="at least one model"):
        segmentation_explorer({}, data)
    with pytest.raises(TypeError, match="models must be a model or a dict"):
        segmentation_explorer([conv()], data)
    with pytest.raises(TypeError, match=r"models\['x'\] must be a model"):
        segmentation_explorer({"x": 3}, data)
    with pytest.raises(ValueError, match=re.escape(
            "model 'bad' must map images (1, 3, 64, 64) to logits (N, C, H, W) = "
            "(1, 4, 64, 64), C = 3 classes + background, got (1, 6, 64, 64)")):
        segmentation_explorer({"good": conv(), "bad": conv(out_channels=6)}, data)
    with pytest.raises(ValueError, match=r"model 'small'.*got \(1, 4, 62, 62\)"):
        segmentation_explorer({"small": conv(kernel_size=3)}, data)
    with pytest.raises(ValueError, match=r"model 'labels'.*got \(1, 64, 64\)"):
        segmentation_explorer({"labels": lambda x: x.sum(1)}, data)
    with pytest.raises(ValueError, match="image_size is for the default"):
        segmentation_explorer(conv(), data, image_size=64)
    with pytest.raises(ValueError, match="num_classes = 2 but the dataset has 3 classes"):
        segmentation_explorer(conv(), data, num_classes=2)
    with pytest.raises(ValueError, match="view must be one of"):
        segmentation_explorer(conv(), data, view="overlay")
    with pytest.raises(ValueError, match="opacity must be in"):
        segmentation_explorer(conv(), data, opacity=1.5)
    with pytest.raises(ValueError, match=r"index must be an int in \[0, 2\]"):
        segmentation_explorer(conv(), data, num_images=3, index=3)
    with pytest.raises(ValueError, match="num_images must be an int >= 1"):
        segmentation_explorer(conv(), data, num_images=0)
    with pytest.raises(ValueError, match="dataset must hold at least one image"):
        segmentation_explorer(conv(), ListDataset(), num_classes=3)
    image = torch.rand(3, 8, 8)
    with pytest.raises(ValueError, match=r"dataset\[0\] target must have 'semantic'"):
        segmentation_explorer(conv(), [(image, {"masks": None})], num_classes=3)
    with pytest.raises(ValueError, match=r"dataset\[0\] image must be a Tensor \(3, H, W\)"):
        segmentation_explorer(conv(), [(image[0], {"semantic": image[0].long()})],
                              num_classes=3)
    with pytest.raises(ValueError, match=r"labels must lie in 0..3"):
        segmentation_explorer(conv(), [(image, {"semantic": torch.full((8, 8), 4)})],
                              num_classes=3)


def test_leaves_no_pyplot_figures(data):
    before = plt.get_fignums()
    segmentation_explorer(conv(), data)
    assert plt.get_fignums() == before
