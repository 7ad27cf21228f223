"""The instance explorer, driven without a browser, with fake Mask R-CNNs made from the ground
truth (no training): its semantic map equals a pixel-by-pixel loop, its mask IoU equals
|A ∩ B| / |A ∪ B| counted directly, its panoptic readout equals panoptic_quality called on maps
built by hand, a perfect model scores 1 everywhere, and the caller's model is left as it was."""

import html
import math
import re

import matplotlib
import matplotlib.pyplot as plt
import pytest
import torch
from matplotlib.colors import to_rgba
from torch import nn

from course_lib import viz
from course_lib.data.synthetic import SyntheticShapes
from course_lib.device import available_devices
from course_lib.masks import mask_targets
from course_lib.panoptic import panoptic_merge, panoptic_quality
from course_lib.widgets import InstanceExplorer, instance_explorer
from course_lib.widgets.instance_explorer import VIEWS, instance_color, semantic_from_instances

matplotlib.use("Agg")  # headless

K = 3  # circle, square, triangle
N = 4
SIDE = 14  # the fake RoI masks are SIDE x SIDE


@pytest.fixture(scope="module")
def data():
    return SyntheticShapes("test", N, kind="detection", image_size=64, num_classes=K,
                           cache=False, progress=False)


def text(html_value):
    """A readout as plain text: tags removed, entities decoded."""
    return html.unescape(re.sub(r"<[^>]+>", "", html_value))


class FakeMaskRCNN(nn.Module):
    """Looks each image up in the data set and returns its objects as Mask R-CNN detections.

    Object j gets score 0.95 - 0.08 j, its true label and box, its true mask as probabilities
    (1 inside, 0 outside) moved ``shift`` pixels to the right (the box too), and an RoI mask
    made by ``mask_targets`` from that mask and box. With ``false_positive``, one more
    detection: class 1, score 0.6, a 10 x 10 square in the top-left corner. Records, at each
    call, the image it saw, its own and its head's training flags and the inputs' device.
    """

    def __init__(self, data, shift=0, false_positive=False, roi_masks=True):
        super().__init__()
        self.shift, self.false_positive, self.roi_masks = shift, false_positive, roi_masks
        self.head = nn.Linear(1, 1)  # weights to move and a submodule with its own mode
        self.register_buffer("images", torch.stack([data[i][0] for i in range(len(data))]))
        self.targets = [data[i][1] for i in range(len(data))]
        self.calls, self.modes, self.devices = [], [], []

    def forward(self, images):
        assert isinstance(images, list)
        outputs = []
        for x in images:
            # (1, 3, H, W) - (N, 3, H, W) -> (N,): which stored image this is
            i = int((x[None] - self.images).abs().flatten(1).sum(1).argmin())
            self.calls.append(i)
            self.modes.append((self.training, self.head.training))
            self.devices.append(x.device.type)
            outputs.append({k: None if v is None else v.to(x.device)
                            for k, v in self.detections(i).items()})
        return outputs

    def detections(self, i):
        target = self.targets[i]
        masks = target["masks"].roll(self.shift, dims=-1).float()  # (G, H, W)
        boxes = target["boxes"] + torch.tensor([self.shift, 0, self.shift, 0])
        labels = target["labels"]
        scores = 0.95 - 0.08 * torch.arange(len(labels))
        if self.false_positive:
            extra = torch.zeros(1, *masks.shape[1:])
            extra[:, :10, :10] = 1
            masks = torch.cat([masks, extra])
            boxes = torch.cat([boxes, torch.tensor([[0.0, 0, 10, 10]])])
            labels = torch.cat([labels, torch.tensor([1])])
            scores = torch.cat([scores, torch.tensor([0.6])])
        out = {"boxes": boxes, "scores": scores, "labels": labels, "masks": masks[:, None]}
        if self.roi_masks:
            out["roi_masks"] = mask_targets(masks, boxes, torch.arange(len(labels)), SIDE)
        return out


class Fixed(nn.Module):
    """Returns the same detections for every image (``masks`` (D, H, W) -> (D, 1, H, W))."""

    def __init__(self, boxes, scores, labels, masks, **extra):
        super().__init__()
        self.out = {"boxes": boxes, "scores": scores, "labels": labels,
                    "masks": masks.float()[:, None], **extra}

    def forward(self, images):
        return [dict(self.out)]


def nothing(height, width):
    """No detection: every output with D = 0."""
    return Fixed(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64),
                 torch.zeros(0, height, width), roi_masks=torch.zeros(0, SIDE, SIDE))


def square(top, left, size, height=32, width=32):
    mask = torch.zeros(height, width, dtype=torch.uint8)
    mask[top:top + size, left:left + size] = 1
    return mask


def box_of(mask):
    rows, cols = mask.nonzero(as_tuple=True)
    return torch.tensor([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]).float()


def scene(masks, labels):
    """A (image, target) pair of disjoint GT masks (G, H, W) and their labels."""
    masks, labels = torch.stack(masks), torch.tensor(labels)
    semantic = (masks.long() * labels[:, None, None]).sum(0)  # disjoint: one label per pixel
    image = torch.rand(3, *masks.shape[1:], generator=torch.Generator().manual_seed(0))
    return image, {"boxes": torch.stack([box_of(m) for m in masks]), "labels": labels,
                   "masks": masks, "semantic": semantic}


def oracle_semantic(masks, scores, labels):
    """Pixel by pixel: the label of the best score among the masks covering it (first on ties)."""
    height, width = masks.shape[1:]
    out = torch.zeros(height, width, dtype=torch.int64)
    for y in range(height):
        for x in range(width):
            best = None
            for i in range(len(scores)):
                if masks[i, y, x] and (best is None or scores[i] > scores[best]):
                    best = i
            if best is not None:
                out[y, x] = labels[best]
    return out


def oracle_mask_iou(a, b):
    inter = int((a.long() * b.long()).sum())
    union = int(a.long().sum() + b.long().sum()) - inter
    return inter / union if union else 0.0


def hand_gt_panoptic(target):
    """GT objects as segments 1..G in the data set's order, the background as segment G + 1."""
    panoptic = torch.zeros(target["semantic"].shape, dtype=torch.int64)
    segments = []
    for g, (mask, label) in enumerate(zip(target["masks"], target["labels"], strict=True)):
        panoptic[mask.bool()] = g + 1
        segments.append({"id": g + 1, "category_id": int(label), "isthing": True})
    background = target["semantic"] == 0
    if background.any():
        panoptic[background] = len(segments) + 1
        segments.append({"id": len(segments) + 1, "category_id": 0, "isthing": False})
    return panoptic, segments


def same_pq(a, b):
    for key in ("PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st", "RQ_st"):
        assert (math.isnan(a[key]) and math.isnan(b[key])) or a[key] == pytest.approx(b[key]), key
    assert a["per_class"] == b["per_class"]


def shown(value):
    return "\u2014" if math.isnan(value) else f"{value:.3f}"


# ---------------------------------------------------------------- the default data


def test_defaults_on_the_synthetic_test_split():
    expected = SyntheticShapes("test", 2, kind="detection", image_size=128, num_classes=3,
                               cache=False, progress=False)
    model = FakeMaskRCNN(expected)
    w = instance_explorer(model, num_images=2)
    assert isinstance(w, InstanceExplorer)
    assert w.num_images == 2 and w.class_names == ["background", "circle", "square", "triangle"]
    for i in range(2):
        image, target = expected[i]
        assert torch.equal(w.images[i], image)
        assert torch.equal(w.targets[i]["masks"], target["masks"].bool())
    assert w.image.shape == (3, 128, 128) and w.semantic_pred.shape == (128, 128)
    assert w.view.options == VIEWS and w.view.value == "instances"
    assert w.score_threshold.value == 0.5 and w.stuff_classes == (0,)
    labels = w.prediction["labels"].tolist()
    assert w.kept == len(labels)  # every score >= 0.55
    assert [label for label, _ in w.instance.options] == [
        f"#{i} {w.class_names[c]} {0.95 - 0.08 * i:.2f}" for i, c in enumerate(labels)]
    assert w.selected == 0 and w.instance.value == 0 and not w.instance.disabled
    assert "image 0: " in text(w.readout.value)
    w.next_button.click()
    assert w.index == 1
    w.next_button.click()
    assert w.index == 0  # wraps around


def test_class_names_can_be_given(data):
    w = instance_explorer(FakeMaskRCNN(data), data, class_names=["a", "b", "c"])
    assert w.instance.options[0][0] == f"#0 {'abc'[int(w.prediction['labels'][0]) - 1]} 0.95"
    plain = instance_explorer(FakeMaskRCNN(data), [data[0]])  # a list: no .classes
    assert plain.class_names is None
    assert plain.instance.options[0][0] == f"#0 {int(data[0][1]['labels'][0])} 0.95"


# ---------------------------------------------------------------- the views


@pytest.mark.parametrize("view", VIEWS)
def test_each_view_renders(data, view):
    w = instance_explorer(FakeMaskRCNN(data, shift=2, false_positive=True), data)
    w.view.value = view
    assert list(w.fig.axes[:len(w.axes)]) == w.axes
    if view == "instances":
        image_ax, roi_ax, gt_ax = w.axes
        assert image_ax.get_title() == f"{w.kept} of {w.kept} detections, score \u2265 0.50"
        assert roi_ax.get_title() == f"#0: RoI mask {SIDE}\u00d7{SIDE}"
        assert gt_ax.get_title().endswith(f"mask IoU {w.mask_iou:.3f}")
        assert w.colorbar is not None and w.colorbar.mappable.get_clim() == (0, 1)
        assert torch.equal(torch.from_numpy(roi_ax.images[0].get_array().data),
                           w.instance_mask)
        # the image, one fill per kept instance (the selected one last, on top)
        assert len(image_ax.images) == 1 + w.kept
        rgba = image_ax.images[-1].get_array()
        selected = (w.prediction["masks"][w.selected] > 0.5).numpy()
        assert (rgba[..., 3] > 0).sum() == selected.sum()
        assert tuple(rgba[selected][0]) == pytest.approx(to_rgba(instance_color(w.selected), 0.6))
    elif view == "semantic":
        assert [ax.get_title() for ax in w.axes] == ["from the instances (best score wins)",
                                                     "ground truth"]
        for ax, labels in zip(w.axes, (w.semantic_pred, w.semantic_gt), strict=True):
            rgba = ax.images[-1].get_array()
            for c in set(labels.unique().tolist()) - {0}:
                assert tuple(rgba[(labels == c).numpy()][0]) == pytest.approx(
                    to_rgba(viz.class_color(c), 0.7))
            assert (rgba[(labels == 0).numpy()][..., 3] == 0).all()
        assert w.colorbar is None
    else:
        things = sum(s["isthing"] for s in w.pred_panoptic[1])
        assert w.axes[0].get_title().startswith(f"prediction: {things} things")
        assert f"PQ {w.pq['PQ']:.3f}" in w.axes[0].get_title()
        pred_rgba, gt_rgba = (ax.images[-1].get_array() for ax in w.axes)
        assert w.matches
        for p, g, _ in w.matches:  # a matched pair: one colour
            in_p, in_g = (w.pred_panoptic[0] == p).numpy(), (w.gt_panoptic[0] == g).numpy()
            assert tuple(pred_rgba[in_p][0]) == tuple(gt_rgba[in_g][0])
        legend = [t.get_text() for t in w.fig.legends[0].get_texts()]
        assert legend[:2] == ["void (no segment)", "stuff: background"]


def test_threshold_slider_changes_kept_monotonically(data):
    w = instance_explorer(FakeMaskRCNN(data, shift=1, false_positive=True), data,
                          score_threshold=0.0)
    w.view.value = "panoptic"  # the quickest to draw; the readouts do not depend on the view
    for i in (0, 1):  # 6 and 5 objects
        w.score_threshold.value = 0.0
        w.image_index.value = i
        assert w.selected == int(w.keep[0])  # a new image: its best detection
        w.instance.value = w.instance.options[-1][1]  # the worst-scoring detection
        worst = w.selected
        previous = w.kept
        for step in range(11):
            t = step / 10
            w.score_threshold.value = t
            scores = w.prediction["scores"]
            assert w.kept == int((scores >= t).sum()) <= previous
            previous = w.kept
            assert len(w.instance.options) == w.kept == len(w.keep) == len(w.pred_masks)
            assert scores[w.keep].tolist() == sorted(scores[w.keep].tolist(), reverse=True)
            if w.kept and scores[worst] >= t:
                assert w.selected == worst  # still kept: still selected
            elif w.kept:
                assert w.selected == int(w.keep[0])  # dropped: the best one instead
            else:
                assert w.selected is None and w.instance.disabled
        assert previous == 0  # no fake score reaches 1


# ---------------------------------------------------------------- semantic


def test_semantic_from_instances_equals_the_loop_oracle():
    # two overlapping squares: the better score wins the overlap, whatever the order
    a, b = square(4, 4, 12), square(10, 10, 12)
    for scores in ([0.6, 0.9], [0.9, 0.6]):
        masks, scores, labels = torch.stack([a, b]), torch.tensor(scores), torch.tensor([1, 2])
        got = semantic_from_instances(masks, scores, labels)
        assert torch.equal(got, oracle_semantic(masks, scores, labels))
        overlap = (a & b).bool()
        assert (got[overlap] == labels[scores.argmax()]).all()
    # random masks with tied scores, float probabilities, and none at all
    gen = torch.Generator().manual_seed(0)
    masks = torch.rand(6, 12, 12, generator=gen)
    scores = torch.tensor([0.5, 0.7, 0.7, 0.2, 0.7, 0.5])
    labels = torch.tensor([1, 2, 3, 1, 2, 3])
    got = semantic_from_instances(masks, scores, labels)
    assert torch.equal(got, oracle_semantic(masks > 0.5, scores, labels))
    empty = semantic_from_instances(torch.zeros(0, 5, 7), torch.zeros(0), torch.zeros(0).long())
    assert torch.equal(empty, torch.zeros(5, 7, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"scores must have shape \(6,\) like masks"):
        semantic_from_instances(masks, scores[:3], labels)


def test_semantic_view_on_a_crafted_scene():
    # GT: two squares of class 2 side by side (touching) and a circle-class square apart
    left, right, apart = square(8, 2, 8), square(8, 10, 8), square(22, 22, 6)
    image, target = scene([left, right, apart], [2, 2, 1])
    # prediction: both squares, the left one too wide (overlapping the right one, worse score)
    wide = square(8, 2, 8)
    wide[8:16, 2:13] = 1
    masks = torch.stack([right, wide, apart])
    scores, labels = torch.tensor([0.9, 0.8, 0.7]), torch.tensor([2, 2, 1])
    model = Fixed(torch.stack([box_of(m) for m in masks]), scores, labels, masks)
    w = instance_explorer(model, [(image, target)])
    assert torch.equal(w.semantic_pred, oracle_semantic(masks, scores, labels))
    assert torch.equal(w.semantic_gt, target["semantic"])
    assert torch.equal(w.semantic_pred, target["semantic"])  # the overlap went to the right one
    assert w.semantic_accuracy == 1.0
    assert w.merged == [(0, 1)] and w.gt_merged == [(0, 1)]
    readout = text(w.readout.value)
    assert "#0 and #1 (2) touch: in the semantic map each pair is one region" in readout
    assert "in the truth: 1 pair(s) of touching objects of one class" in readout
    # apart from each other: nothing merged
    model.out["boxes"][0] += torch.tensor([4.0, 0, 4, 0])
    model.out["masks"][0] = model.out["masks"][0].roll(4, dims=-1)
    w = instance_explorer(model, [(image, target)])
    assert w.merged == [] and "no two kept instances of one class touch" in text(w.readout.value)


# ---------------------------------------------------------------- mask IoU


def test_mask_iou_against_the_best_gt_object(data):
    model = FakeMaskRCNN(data, shift=2, false_positive=True)
    w = instance_explorer(model, data)
    w.view.value = "panoptic"  # the quickest to draw
    seen_fp, lonely = False, None
    for i in range(N):
        w.image_index.value = i
        target = data[i][1]
        for _, d in w.instance.options:
            w.instance.value = d
            pasted = w.prediction["masks"][d] > 0.5
            ious = [oracle_mask_iou(pasted, gt) for gt in target["masks"]]
            assert w.mask_iou == pytest.approx(max(ious))
            readout = text(w.readout.value)
            if max(ious) > 0:
                assert w.best_gt == ious.index(max(ious))
                expected = mask_targets(target["masks"], w.prediction["boxes"][d][None],
                                        torch.tensor([w.best_gt]), SIDE)[0]
                assert torch.allclose(w.gt_instance_mask, expected)
                assert f"mask IoU {w.mask_iou:.3f} with GT #{w.best_gt}" in readout
            else:
                assert w.best_gt is None and w.gt_instance_mask is None and w.mask_iou == 0
                assert "no GT object overlaps its mask, mask IoU 0" in readout
                lonely = i, d
            assert torch.equal(w.instance_mask, model.detections(i)["roi_masks"][d])
            seen_fp = seen_fp or d == len(target["labels"])
    assert seen_fp and lonely is not None  # the false positive overlaps nothing somewhere
    w.image_index.value, w.instance.value = lonely
    w.view.value = "instances"
    assert w.axes[2].texts[0].get_text() == f"no GT object overlaps #{lonely[1]}\nmask IoU 0"


def test_a_perfect_model_scores_one(data):
    w = instance_explorer(FakeMaskRCNN(data), data)
    w.view.value = "panoptic"  # the quickest to draw
    for i in range(N):
        w.image_index.value = i
        target = data[i][1]
        assert w.kept == len(target["labels"])
        for _, d in w.instance.options:
            w.instance.value = d
            assert w.mask_iou == 1.0 and w.best_gt == d
            assert torch.allclose(w.gt_instance_mask, w.instance_mask)
        assert torch.equal(w.semantic_pred, target["semantic"]) and w.semantic_accuracy == 1.0
        assert w.merged == w.gt_merged
        for key in ("PQ", "SQ", "RQ", "PQ_th", "PQ_st"):
            assert w.pq[key] == pytest.approx(1.0)
        assert len(w.matches) == len(w.gt_panoptic[1]) == len(w.pred_panoptic[1])
        assert "PQ 1.000, SQ 1.000, RQ 1.000" in text(w.readout.value)


# ---------------------------------------------------------------- panoptic


def test_panoptic_readout_equals_panoptic_quality(data):
    model = FakeMaskRCNN(data, shift=2, false_positive=True)
    w = instance_explorer(model, data)
    w.view.value = "panoptic"
    for i in range(N):
        w.image_index.value = i
        target = data[i][1]
        gt = hand_gt_panoptic(target)
        assert torch.equal(w.gt_panoptic[0], gt[0])
        assert [(s["id"], s["category_id"], s["isthing"]) for s in w.gt_panoptic[1]] == [
            (s["id"], s["category_id"], s["isthing"]) for s in gt[1]]
        out = model.detections(i)
        keep = out["scores"] >= 0.5
        masks = out["masks"][keep, 0] > 0.5
        semantic = oracle_semantic(masks, out["scores"][keep], out["labels"][keep])
        pred = panoptic_merge(semantic, {"masks": masks, "scores": out["scores"][keep],
                                         "labels": out["labels"][keep]}, [0])
        assert torch.equal(w.pred_panoptic[0], pred[0]) and w.pred_panoptic[1] == pred[1]
        expected = panoptic_quality(pred, gt)
        same_pq(w.pq, expected)
        per_class = expected["per_class"].values()
        assert len(w.matches) == sum(c["TP"] for c in per_class)
        assert sum(iou for _, _, iou in w.matches) == pytest.approx(
            sum(c["IoU"] for c in per_class))
        tp, fp, fn = (sum(c[k] for c in per_class) for k in ("TP", "FP", "FN"))
        readout = text(w.readout.value)
        assert (f"PQ {shown(expected['PQ'])}, SQ {shown(expected['SQ'])}, RQ "
                f"{shown(expected['RQ'])} (means over the {expected['n']} classes") in readout
        assert (f"things PQth {shown(expected['PQ_th'])}, stuff PQst "
                f"{shown(expected['PQ_st'])}; segments TP {tp}, FP {fp}, FN {fn}") in readout
    assert fp >= 1  # the false positive counts


def test_stuff_classes_can_be_empty(data):
    w = instance_explorer(FakeMaskRCNN(data), data, stuff_classes=())
    assert not any(not s["isthing"] for s in w.gt_panoptic[1] + w.pred_panoptic[1])
    assert w.pq["PQ"] == 1.0 and math.isnan(w.pq["PQ_st"])
    w.view.value = "panoptic"
    assert "PQst \u2014" in text(w.readout.value)


# ---------------------------------------------------------------- edge cases


def test_an_image_without_detections(data):
    image, target = data[2]  # one small object: the background is most of the image
    w = instance_explorer(nothing(64, 64), [(image, target)])
    assert w.kept == 0 and len(w.prediction["scores"]) == 0
    assert w.instance.options == () and w.instance.value is None and w.instance.disabled
    assert w.selected is None and math.isnan(w.mask_iou) and w.instance_mask is None
    assert "the model found nothing in this image: no instance to select" in text(w.readout.value)
    titles = {"instances": ["no detection with score \u2265 0.50", "", ""],
              "semantic": ["from the instances (best score wins)", "ground truth"],
              "panoptic": ["prediction: 0 things, 1 stuff\nPQ ", "ground truth: "]}
    for view in VIEWS:
        w.view.value = view
        for ax, title in zip(w.axes, titles[view], strict=True):
            assert ax.get_title().startswith(title)
    assert w.axes and w.colorbar is None
    assert not w.semantic_pred.any()
    expected = panoptic_quality(w.pred_panoptic, hand_gt_panoptic(target))
    same_pq(w.pq, expected)
    assert w.pq["PQ_th"] == 0.0 and w.pq["PQ_st"] > 0.5
    # raise the threshold above every score: the same, with another message
    w = instance_explorer(FakeMaskRCNN(data), data, score_threshold=1.0)
    assert w.kept == 0 and "no instance to select: lower the threshold" in text(w.readout.value)
    w.view.value = "instances"
    assert [ax.texts[0].get_text() for ax in w.axes[1:]] == ["no instance selected"] * 2


def test_a_model_without_roi_masks(data):
    w = instance_explorer(FakeMaskRCNN(data, false_positive=True, roi_masks=False), data)
    assert not w.has_roi_masks and w.prediction["roi_masks"] is None
    assert w.axes[1].get_title() == "#0: no roi_masks from the model,\npasted mask cut to its box"
    assert w.axes[2].get_title().endswith("cut to the box\nmask IoU 1.000")
    w.view.value = "panoptic"  # the quickest to draw
    target = data[0][1]
    for _, d in w.instance.options:
        w.instance.value = d
        x1, y1, x2, y2 = (int(v) for v in w.prediction["boxes"][d])
        assert torch.equal(w.instance_mask, w.prediction["masks"][d, y1:y2, x1:x2])
        if d < len(target["labels"]):
            assert w.mask_iou == 1.0
            assert torch.equal(w.gt_instance_mask, target["masks"][d, y1:y2, x1:x2].float())


def test_the_model_runs_once_per_image(data):
    model = FakeMaskRCNN(data)
    w = instance_explorer(model, data)
    assert model.calls == [0]  # only the image shown
    for view in VIEWS:
        w.view.value = view
    for i in (2, 0, 3, 2, 1, 3):
        w.image_index.value = i
        w.score_threshold.value = 0.9
        w.score_threshold.value = 0.1
    assert sorted(model.calls) == list(range(N))


@pytest.mark.parametrize("device", available_devices())
def test_the_models_mode_and_device_are_restored(data, device):
    model = FakeMaskRCNN(data)
    model.train()
    model.head.eval()  # a part the caller keeps in eval mode
    w = instance_explorer(model, data, device=device)
    w.image_index.value = 1
    assert model.modes == [(False, False)] * 2  # eval mode while it runs
    assert model.devices == [device] * 2
    assert model.training and not model.head.training  # as the caller left it
    assert model.head.weight.device.type == model.images.device.type == "cpu"
    assert all(t.device.type == "cpu" for t in w.prediction.values())
    model.eval()
    instance_explorer(model, data, device=device)
    assert not model.training and not model.head.training


# ---------------------------------------------------------------- bad input


def test_bad_arguments(data):
    image, target = data[0]
    one = [(image, target)]
    masks = target["masks"].float()
    good = {"boxes": target["boxes"], "scores": torch.ones(len(masks)), "labels": target["labels"]}
    with pytest.raises(ValueError, match=re.escape(
            "model output on image 0 has no ['masks']: the explorer needs a Mask R-CNN (boxes, "
            "scores, labels and masks), got keys ['boxes', 'labels', 'scores']")):
        instance_explorer(lambda images: [dict(good)], one)
    with pytest.raises(ValueError, match=r"must return a list with one dict .* got dict"):
        instance_explorer(lambda images: {**good, "masks": masks[:, None]}, one)
    with pytest.raises(ValueError, match=re.escape(
            f"'masks' must be float probabilities Tensor[D, 1, H, W] = ({len(masks)}, 1, 64, "
            f"64) for image 0, got ({len(masks)}, 1, 32, 32)")):
        instance_explorer(lambda images: [{**good, "masks": masks[:, None, :32, :32]}], one)
    with pytest.raises(ValueError, match=r"'masks' must be float probabilities.*torch.uint8"):
        instance_explorer(lambda images: [{**good, "masks": target["masks"][:, None]}], one)
    with pytest.raises(ValueError, match=r"'roi_masks' must be Tensor\[D, M, M\]"):
        instance_explorer(lambda images: [{**good, "masks": masks[:, None],
                                           "roi_masks": torch.zeros(1, 14, 7)}], one)
    with pytest.raises(ValueError, match=r"'scores' must be Tensor\[\d+\] like 'boxes'"):
        instance_explorer(lambda images: [{**good, "scores": torch.ones(9), "masks": masks}], one)
    with pytest.raises(ValueError, match=r"predicts labels \[0\] on image 0, which are in "
                                         r"stuff_classes \(0,\)"):
        instance_explorer(lambda images: [{**good, "labels": 0 * good["labels"],
                                           "masks": masks}], one)
    model = FakeMaskRCNN(data)
    for bad in (1.5, -0.1, "0.5", True):
        with pytest.raises(ValueError, match="score_threshold must be a number in"):
            instance_explorer(model, data, score_threshold=bad)
    with pytest.raises(ValueError, match="num_images must be an int >= 1, got 0"):
        instance_explorer(model, data, num_images=0)
    with pytest.raises(ValueError, match="dataset must hold at least one image"):
        instance_explorer(model, [])
    with pytest.raises(ValueError, match=re.escape(
            "stuff_classes (0, 2) include thing classes [2] (classes 1..K")):
        instance_explorer(model, data, stuff_classes=(0, 2))
    with pytest.raises(ValueError, match="stuff_classes must be class labels"):
        instance_explorer(model, data, stuff_classes=(-1,))
    with pytest.raises(ValueError, match=r"dataset\[0\] target must have 'masks', 'labels' and "
                                         r"'semantic', got \['boxes', 'labels', 'masks'\]"):
        instance_explorer(model, [(image, {k: target[k] for k in ("boxes", "labels", "masks")})])
    with pytest.raises(ValueError, match=r"dataset\[0\] image must be a Tensor \(3, H, W\)"):
        instance_explorer(model, [(image[0], target)])
    with pytest.raises(ValueError, match=r"target\['semantic'\] must be Tensor\[H, W\]"):
        instance_explorer(model, [(image, {**target, "semantic": target["semantic"][:8]})])
    with pytest.raises(TypeError, match="model must be a Mask R-CNN"):
        instance_explorer("maskrcnn", data)
    with pytest.raises(TypeError, match="class_names must be a list of names"):
        instance_explorer(model, data, class_names="circle")


def test_leaves_no_pyplot_figures(data):
    before = plt.get_fignums()
    w = instance_explorer(FakeMaskRCNN(data), data)
    for view in VIEWS:
        w.view.value = view
    assert plt.get_fignums() == before
