"""The YOLO grid explorer, driven without a browser: its counts equal loops over the GT
centres, its predictions equal postprocess_yolo on the simulated (or the model's) tensor."""

import html
import math
import re
from types import SimpleNamespace

import matplotlib
import matplotlib.pyplot as plt
import pytest
import torch

from course_lib.models.yolo import postprocess_yolo, yolo_decode
from course_lib.widgets import YOLOGridExplorer, yolo_grid_explorer
from course_lib.widgets.yolo_grid_explorer import NMS_IOU, simulate_yolo_output

matplotlib.use("Agg")  # headless

# boxes 0 and 1 share a cell for S = 4 and S = 7 (centres (30, 28) and (26, 22)); box 0 is larger
GT = torch.tensor([[10.0, 12, 50, 44], [20, 16, 32, 28], [60, 60, 120, 100], [70, 8, 90, 40]])
LABELS = torch.tensor([1, 2, 3, 1])


def image(h=128, w=128):
    return torch.rand(3, h, w, generator=torch.Generator().manual_seed(0))


def make(**kwargs):
    return yolo_grid_explorer(image(), {"boxes": GT, "labels": LABELS}, **kwargs)


def text(html_value):
    """The readout as plain text: tags removed, entities decoded."""
    return html.unescape(re.sub(r"<[^>]+>", "", html_value))


def oracle_cells(boxes, S, h, w):
    """{cell: [box indices]} by a loop over the GT centres, floor(c * S / size)."""
    cells = {}
    for i, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        cell = (min(math.floor(cy * S / h), S - 1), min(math.floor(cx * S / w), S - 1))
        cells.setdefault(cell, []).append(i)
    return cells


def same_detections(a, b):
    return all(torch.equal(a[key], b[key]) for key in ("boxes", "scores", "labels"))


class FakeModel:
    """A YOLO model that predicts a known tensor and counts its calls."""

    def __init__(self, S=5, B=3, C=2, image_size=64):
        self.S, self.B, self.C, self.image_size = S, B, C, image_size
        self.output = torch.rand(1, S, S, B * 5 + C, generator=torch.Generator().manual_seed(3))
        self.calls = []

    def grid(self, images):
        self.calls.append(tuple(images.shape))
        return self.output.clone()


def test_defaults_on_the_synthetic_scene():
    w = yolo_grid_explorer()
    assert isinstance(w, YOLOGridExplorer) and w.simulated
    assert (w.S.value, w.B.value, w.conf_threshold.value, w.nms.value) == (7, 2, 0.5, True)
    assert tuple(w.image.shape) == (3, 128, 128) and len(w.gt_boxes) > 0
    assert w.C == 3 and w.output_shape == (7, 7, 13) and w.num_boxes == 98
    shown = text(w.readout.value)
    assert "7 × 7 × (2·5 + 3) = 7 × 7 × 13" in shown and "= 98 boxes" in shown
    assert "simulated" in w.ax_pred.get_title()
    # every GT object has its good predictor above 0.5
    assert w.num_after_nms >= w.num_responsible > 0


@pytest.mark.parametrize(("S", "B"), [(2, 1), (4, 2), (7, 3), (13, 5), (20, 6)])
def test_counts_follow_the_grid(S, B):
    w = make()
    w.S.value, w.B.value = S, B
    cells = oracle_cells(GT, S, 128, 128)
    assert w.num_boxes == S * S * B and w.output_shape == (S, S, B * 5 + 3)
    assert w.num_responsible == len(cells)
    assert w.num_dropped == len(GT) - len(cells)
    assert {tuple(c) for c in w.responsible.tolist()} == set(cells)
    for i, cell in enumerate(w.cells.tolist()):
        assert i in cells[tuple(cell)]
    assert w.grid_output.shape == (S, S, B * 5 + 3)
    shown = text(w.readout.value)
    assert f"S·S·B = {S * S * B} boxes" in shown
    assert f"responsible cells: {len(cells)} for 4 objects" in shown
    assert ("dropped" in shown) == (len(cells) < 4)
    # left panel: one shaded rectangle per responsible cell, S*S*B dots
    assert len(w.ax_grid.collections[0].get_offsets()) == S * S * B


def test_the_smaller_object_of_a_shared_cell_is_dropped():
    w = make(S=4)
    assert w.keep.tolist() == [True, False, True, True]
    assert w.num_dropped == 1 and "1 dropped" in text(w.readout.value)
    w.S.value = 16  # small cells: every centre in its own cell
    assert w.num_dropped == 0 and w.keep.all()


@pytest.mark.parametrize("threshold", [0.0, 0.2, 0.5, 0.9])
def test_predictions_are_the_decoded_simulation(threshold):
    w = make(S=5, B=2)
    w.conf_threshold.value = threshold
    grid = simulate_yolo_output(GT, LABELS, 5, 2, 3, (128, 128))
    assert torch.equal(w.grid_output, grid)
    candidates = yolo_decode(grid, 5, 2, 3, (128, 128), conf_threshold=threshold)
    after = postprocess_yolo(grid, 5, 2, 3, (128, 128), conf_threshold=threshold,
                             nms_thresh=NMS_IOU, max_detections=50)
    assert same_detections(w.candidates, candidates) and same_detections(w.after_nms, after)
    assert w.num_kept == len(candidates["scores"]) == int((candidates["scores"] >= threshold).sum())
    assert w.num_after_nms == len(after["scores"]) <= w.num_kept
    assert w.detections is w.after_nms
    assert f"{w.num_kept} of 50 boxes with score ≥ {threshold:.2f}" in text(w.readout.value)
    assert f"{w.num_after_nms} after NMS" in text(w.readout.value)
    # right panel: the GT boxes and every kept detection
    assert len(w.ax_pred.patches) == len(GT) + w.num_after_nms
    w.nms.value = False
    assert w.detections is w.candidates
    assert len(w.ax_pred.patches) == len(GT) + w.num_kept


def test_the_simulation_is_deterministic_and_plausible():
    a = simulate_yolo_output(GT, LABELS, 7, 2, 3, (128, 128))
    assert torch.equal(a, simulate_yolo_output(GT, LABELS, 7, 2, 3, (128, 128)))
    assert a.shape == (7, 7, 13)
    probs = a[..., 10:]
    assert torch.allclose(probs.sum(dim=-1), torch.ones(7, 7))
    conf = a[..., 4:10:5]  # (7, 7, 2)
    cells = oracle_cells(GT, 7, 128, 128)
    for row in range(7):
        for col in range(7):
            if (row, col) in cells:  # one good predictor, the others worse
                assert conf[row, col].max() >= 0.85 and conf[row, col].min() < 0.5
            else:
                assert conf[row, col].max() < 0.4
    # without NMS, the good predictor of each kept object survives the default threshold
    w = make(S=7, B=2)
    w.nms.value = False
    assert w.num_kept == len(cells)


def test_the_preset_sets_the_lecture_grid():
    w = make()
    w.preset.click()
    assert (w.S.value, w.B.value) == (19, 5)
    assert w.num_boxes == 19 * 19 * 5 == 1805 and w.output_shape == (19, 19, 28)
    assert w.grid_output.shape == (19, 19, 28)


def test_the_model_predicts_once_for_its_own_grid():
    model = FakeModel()
    w = yolo_grid_explorer(image(), {"boxes": GT, "labels": LABELS}, model=model)
    assert not w.simulated and w.C == 2 and w.output_shape == (7, 7, 12)
    assert model.calls == [(1, 3, 64, 64)]  # resized to the model's image size
    expected = postprocess_yolo(model.output[0], 5, 3, 2, (128, 128), conf_threshold=0.5,
                                nms_thresh=NMS_IOU, max_detections=75)
    assert same_detections(w.after_nms, expected)
    assert "the predictions are for the model's S = 5, B = 3" in text(w.readout.value)
    assert "model (5 × 5, B = 3)" in w.ax_pred.get_title()
    w.preset.click()
    w.conf_threshold.value = 0.3
    assert (w.S.value, w.B.value, w.num_boxes) == (19, 5, 1805)
    assert w.grid_output.shape == (5, 5, 17) and len(model.calls) == 1
    expected = postprocess_yolo(model.output[0], 5, 3, 2, (128, 128), conf_threshold=0.3,
                                nms_thresh=NMS_IOU, max_detections=75)
    assert same_detections(w.after_nms, expected)
    w.S.value, w.B.value = 5, 3
    assert "the predictions are for" not in text(w.readout.value)


def test_a_scene_without_ground_truth():
    w = yolo_grid_explorer(image(), None)
    assert (w.num_responsible, w.num_dropped) == (0, 0)
    assert w.num_kept == 0  # the simulated background stays below 0.4
    w.conf_threshold.value = 0.0
    assert w.num_kept == w.num_boxes


def test_bad_arguments():
    target = {"boxes": GT, "labels": LABELS}
    with pytest.raises(ValueError, match="image must have shape"):
        yolo_grid_explorer(torch.zeros(128, 128), target)
    with pytest.raises(ValueError, match="target must be a dict with 'boxes'"):
        yolo_grid_explorer(image(), {"labels": LABELS})
    with pytest.raises(ValueError, match=r"target\['labels'\] must be \(4,\)"):
        yolo_grid_explorer(image(), {"boxes": GT, "labels": LABELS[:2]})
    with pytest.raises(ValueError, match=r"S must be an int in \[2, 20\]"):
        yolo_grid_explorer(image(), target, S=1)
    with pytest.raises(ValueError, match=r"B must be an int in \[1, 6\]"):
        yolo_grid_explorer(image(), target, B=7)
    with pytest.raises(ValueError, match="conf_threshold must be in"):
        yolo_grid_explorer(image(), target, conf_threshold=1.5)
    with pytest.raises(ValueError, match="lacks grid"):
        yolo_grid_explorer(image(), target,
                           model=SimpleNamespace(S=5, B=2, C=3, image_size=64))
    model = FakeModel()
    model.S = 6  # grid returns (1, 5, 5, 17)
    with pytest.raises(ValueError, match="model.grid must return"):
        yolo_grid_explorer(image(), target, model=model)
    with pytest.raises(ValueError, match="give the image with its target"):
        yolo_grid_explorer(target=target)


def test_leaves_no_pyplot_figures():
    before = plt.get_fignums()
    make()
    assert plt.get_fignums() == before
