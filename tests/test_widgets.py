import matplotlib
import matplotlib.pyplot as plt
import pytest
import torch
import torchvision

from course_lib.boxes import box_iou
from course_lib.metrics import average_precision, precision_recall_curve
from course_lib.nms import nms, soft_nms
from course_lib.widgets import (
    IoUExplorer,
    NMSStepper,
    PRCurveBuilder,
    iou_explorer,
    iou_quality,
    nms_stepper,
    pr_curve_builder,
)
from course_lib.widgets.nms_stepper import DOG_SCENE

matplotlib.use("Agg")  # headless: no window, works after pyplot's import too


# ---------------------------------------------------------------- iou_explorer


def test_iou_explorer_defaults_use_box_iou():
    w = iou_explorer()
    assert isinstance(w, IoUExplorer)
    expected = float(box_iou(torch.tensor([[20.0, 20, 70, 70]]),
                             torch.tensor([[40.0, 35, 95, 90]])))
    assert w.iou == expected
    assert w.box_a == (20, 20, 70, 70) and w.box_b == (40, 35, 95, 90)
    assert w.intersection_area == 30 * 35 and w.union_area == 2500 + 3025 - 1050
    assert w.quality == "poor"
    assert f"{expected:.3f}" in w.readout.value


def test_iou_explorer_sliders_move_box_b():
    w = iou_explorer()
    # coincide with box A -> IoU 1
    w.x_b.value, w.y_b.value, w.w_b.value, w.h_b.value = 20, 20, 50, 50
    assert w.iou == 1.0 and w.quality == "almost perfect"
    assert "1.000" in w.readout.value and "almost perfect" in w.readout.value
    assert len(w.ax.patches) == 4  # union, intersection, two outlines
    # move it away -> IoU 0
    w.x_b.value = 90
    assert w.iou == 0.0 and w.quality == "poor"
    assert "0.000" in w.readout.value
    assert len(w.ax.patches) == 3  # no intersection patch


def test_iou_explorer_known_overlap():
    w = iou_explorer()
    w.set_boxes(box_b=(30, 25, 80, 75))
    expected = float(box_iou(torch.tensor([[20.0, 20, 70, 70]]),
                             torch.tensor([[30.0, 25, 80, 75]])))
    assert w.iou == pytest.approx(expected, abs=0) and w.box_b == (30, 25, 80, 75)
    assert w.iou == pytest.approx(w.intersection_area / w.union_area)
    assert w.iou == pytest.approx(40 * 45 / (2 * 2500 - 40 * 45))
    assert w.quality == iou_quality(expected) == "decent"


def test_iou_explorer_move_a():
    w = iou_explorer(box_a=(0, 0, 10, 10), box_b=(0, 0, 10, 20), move_a=True)
    assert w.iou == pytest.approx(0.5) and w.quality == "poor"
    w.h_a.value = 20
    assert w.iou == 1.0 and w.box_a == (0, 0, 10, 20)
    shown = [c for c in w.children[0].children[1].children]
    assert w.x_a in shown


def test_iou_explorer_box_beyond_canvas_widens_the_view():
    w = iou_explorer(canvas=(64, 64))
    w.set_boxes(box_b=(50, 50, 100, 90))
    assert w.ax.get_xlim() == (0, 100) and w.ax.get_ylim() == (90, 0)


@pytest.mark.parametrize("bad", [(10, 10, 5, 20), (1, 2, 3)])
def test_iou_explorer_bad_box(bad):
    with pytest.raises(ValueError, match="box_b"):
        iou_explorer(box_b=bad)


@pytest.mark.parametrize(
    ("iou", "word"),
    [(0.0, "poor"), (0.5, "poor"), (0.51, "decent"), (0.7, "decent"), (0.71, "pretty good"),
     (0.9, "pretty good"), (0.91, "almost perfect"), (1.0, "almost perfect")],
)
def test_iou_quality_words_from_the_lecture(iou, word):
    assert iou_quality(iou) == word


def test_widgets_leave_no_pyplot_figures():
    before = plt.get_fignums()
    iou_explorer()
    nms_stepper()
    pr_curve_builder()
    assert plt.get_fignums() == before


# ---------------------------------------------------------------- nms_stepper


def _click(button, times=1):
    for _ in range(times):
        button.click()


def test_dog_scene_has_the_lecture_ious():
    boxes = torch.tensor(DOG_SCENE["boxes"])
    iou = box_iou(boxes, boxes)
    # blue-orange, blue-purple, blue-yellow, purple-yellow as on the slides
    assert [round(float(iou[i, j]), 2) for i, j in [(0, 1), (0, 2), (0, 3), (2, 3)]] == [
        0.78, 0.05, 0.07, 0.74,
    ]


def test_nms_stepper_steps_to_the_nms_result():
    w = nms_stepper()
    assert isinstance(w, NMSStepper)
    assert w.step == 0 and w.kept == [] and set(w.status) == {"pending"}
    assert w.prev_button.disabled and not w.next_button.disabled
    _click(w.next_button)
    assert w.kept == [0] and w.status[1] == "suppressed"
    assert w.suppressed_by[1][0] == 0
    assert w.suppressed_by[1][1] == pytest.approx(float(box_iou(w.boxes[:1], w.boxes[1:2])))
    assert "0.78" in w.readout.value
    _click(w.next_button, 10)  # extra clicks stop at the end
    expected = nms(w.boxes, w.scores, 0.5)
    assert w.done and w.step == w.num_steps == 2
    assert w.kept == expected.tolist() == torchvision.ops.nms(w.boxes, w.scores, 0.5).tolist()
    assert w.next_button.disabled and w.end_button.disabled
    assert str(expected.tolist()) in w.readout.value
    assert [w.status[i] for i in range(5)] == ["kept", "suppressed", "kept", "suppressed",
                                               "suppressed"]


def test_nms_stepper_previous_and_reset():
    w = nms_stepper()
    _click(w.next_button, 2)
    _click(w.prev_button)
    assert w.step == 1 and w.kept == [0] and w.status[3] == "pending"
    _click(w.reset_button)
    assert w.step == 0 and w.kept == [] and w.suppressed_by == {}
    assert set(w.status) == {"pending"} and w.prev_button.disabled
    _click(w.end_button)
    assert w.done and w.kept == [0, 2]


def test_nms_stepper_threshold_recomputes():
    w = nms_stepper()
    _click(w.end_button)
    assert w.kept == [0, 2]
    w.threshold.value = 0.7  # the loose green box (IoU 0.60 with blue) now survives
    assert w.result.tolist() == nms(w.boxes, w.scores, 0.7).tolist() == [0, 2, 4]
    _click(w.end_button)
    assert w.kept == [0, 2, 4]
    w.threshold.value = 0.8  # nothing overlaps that much
    _click(w.end_button)
    assert w.kept == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("threshold", [0.3, 0.5])
def test_nms_stepper_random_boxes_match_nms(seed, threshold):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(12, 2, generator=g) * 60
    boxes = torch.cat([xy, xy + 10 + torch.rand(12, 2, generator=g) * 30], dim=1)
    scores = torch.rand(12, generator=g)
    w = nms_stepper(boxes, scores, iou_threshold=threshold)
    while not w.done:
        _click(w.next_button)
    assert w.kept == torchvision.ops.nms(boxes, scores, threshold).tolist()
    assert sorted(w.kept + list(w.suppressed_by)) == list(range(12))


def test_nms_stepper_soft_mode_decays_scores():
    w = nms_stepper()
    w.mode.value = "linear"
    assert w.step == 0 and w.num_steps == 5  # soft-NMS removes nothing here
    _click(w.next_button)
    assert w.kept == [0]
    # orange: IoU 0.78 >= 0.5 -> 0.81 * (1 - 0.78); purple: IoU 0.05 < 0.5 -> unchanged
    assert w.current_scores[1] == pytest.approx(0.81 * (1 - 0.7790), abs=1e-3)
    assert w.current_scores[2] == pytest.approx(0.75)
    assert w.status[1] == "pending"
    _click(w.end_button)
    keep, kept_scores = soft_nms(w.boxes, w.scores, iou_threshold=0.5, method="linear")
    assert w.kept == keep.tolist()
    assert [w.current_scores[i] for i in w.kept] == pytest.approx(kept_scores.tolist())

    w.mode.value = "gaussian"
    assert w.threshold.disabled and not w.sigma.disabled
    _click(w.end_button)
    keep, kept_scores = soft_nms(w.boxes, w.scores, sigma=0.5, method="gaussian")
    assert w.kept == keep.tolist()
    assert [w.current_scores[i] for i in w.kept] == pytest.approx(kept_scores.tolist())
    w.sigma.value = 0.1  # a narrower gaussian decays overlapping boxes harder
    decayed = w.current_scores[1]
    assert decayed < kept_scores[keep.tolist().index(1)]

    w.mode.value = "hard"
    assert w.current_scores == pytest.approx(w.scores.tolist())


def test_nms_stepper_soft_mode_drops_low_scores():
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10.5], [50, 50, 60, 60]])
    w = nms_stepper(boxes, torch.tensor([0.9, 0.8, 0.7]), mode="linear", score_threshold=0.1)
    _click(w.end_button)
    assert w.kept == [0, 2] and w.status[1] == "dropped" and w.suppressed_by[1][0] == 0


def test_nms_stepper_empty_and_bad_input():
    w = nms_stepper(torch.zeros(0, 4), torch.zeros(0))
    assert w.num_steps == 0 and w.done and w.kept == []
    with pytest.raises(ValueError, match="both"):
        nms_stepper(boxes=torch.zeros(2, 4))
    with pytest.raises(ValueError, match="scores"):
        nms_stepper(torch.zeros(2, 4), torch.zeros(3))
    with pytest.raises(ValueError, match=r"boxes must have shape \(N, 4\)"):
        nms_stepper(torch.zeros(2, 3), torch.zeros(2))


# ---------------------------------------------------------------- pr_curve_builder

DOG_SCORES = torch.tensor([0.99, 0.95, 0.90, 0.5, 0.10])
DOG_TP = torch.tensor([True, True, False, False, True])


def test_pr_curve_builder_lecture_example_end_point():
    w = pr_curve_builder()
    assert isinstance(w, PRCurveBuilder)
    assert w.threshold.value == pytest.approx(0.10)  # starts with every detection counted
    assert (w.num_detections, w.tp, w.fp, w.fn) == (5, 3, 2, 0)
    assert w.precision == pytest.approx(0.6) and w.recall == pytest.approx(1.0)
    assert "precision = 0.600" in w.readout.value and "recall = 1.000" in w.readout.value
    assert w.ap == pytest.approx(2 / 3 + 1 / 3 * 0.6)  # 0.8667
    assert "0.8667" in w.ap_readout.value
    assert w.table.value.count("background:#e3f2e1") == 5


@pytest.mark.parametrize(
    ("threshold", "count", "precision", "recall"),
    [(0.99, 1, 1.0, 1 / 3), (0.95, 2, 1.0, 2 / 3), (0.92, 2, 1.0, 2 / 3), (0.90, 3, 2 / 3, 2 / 3),
     (0.5, 4, 0.5, 2 / 3), (0.3, 4, 0.5, 2 / 3)],
)
def test_pr_curve_builder_middle_thresholds(threshold, count, precision, recall):
    w = pr_curve_builder()
    w.threshold.value = threshold
    assert w.num_detections == count
    assert w.precision == pytest.approx(precision) and w.recall == pytest.approx(recall)
    assert w.table.value.count("background:#e3f2e1") == count
    (point,) = [line for line in w.ax.lines if line.get_label().startswith("score")]
    assert point.get_xdata()[0] == pytest.approx(recall)
    assert point.get_ydata()[0] == pytest.approx(precision)


def test_pr_curve_builder_follows_the_curve():
    w = pr_curve_builder(DOG_SCORES, DOG_TP, 3)
    precision, recall, thresholds = precision_recall_curve(DOG_SCORES, DOG_TP, 3)
    for k, score in enumerate(thresholds.tolist()):
        w.threshold.value = score
        assert (w.precision, w.recall) == pytest.approx((float(precision[k]), float(recall[k])))


def test_pr_curve_builder_above_every_score():
    w = pr_curve_builder()
    w.threshold.value = 1.0
    assert w.num_detections == 0 and (w.precision, w.recall) == (0.0, 0.0) and w.fn == 3
    assert not [line for line in w.ax.lines if line.get_label().startswith("score")]


@pytest.mark.parametrize("method", ["all", "voc11", "coco101"])
def test_pr_curve_builder_ap_readout_equals_average_precision(method):
    w = pr_curve_builder()
    w.method.value = method
    precision, recall, _ = precision_recall_curve(DOG_SCORES, DOG_TP, 3)
    expected = average_precision(precision, recall, method=method)
    assert w.ap == expected
    assert f"AP ({method}) = {expected:.4f}" in w.ap_readout.value
    if method != "all":  # the sampled recall levels average to that AP
        (dots,) = [line for line in w.ax.lines if "recall levels" in line.get_label()]
        assert dots.get_ydata().mean() == pytest.approx(expected)


def test_pr_curve_builder_ties_and_float32_scores():
    scores = torch.tensor([0.8, 0.9, 0.8, 0.3], dtype=torch.float32)
    is_tp = torch.tensor([False, True, True, False])
    w = pr_curve_builder(scores, is_tp, num_gt=4)
    w.threshold.value = 0.8  # both tied detections count, though float32(0.8) < 0.8
    assert (w.num_detections, w.tp, w.fp) == (3, 2, 1)
    assert w.order.tolist() == [1, 0, 2, 3]


def test_pr_curve_builder_empty_and_bad_input():
    w = pr_curve_builder(torch.zeros(0), torch.zeros(0, dtype=torch.bool), 2)
    assert w.num_detections == 0 and w.ap == 0.0 and w.recall == 0.0
    with pytest.raises(ValueError, match="none of them"):
        pr_curve_builder(scores=DOG_SCORES)
    with pytest.raises(ValueError, match="is_tp"):
        pr_curve_builder(DOG_SCORES, DOG_TP[:3], 3)
    with pytest.raises(ValueError, match="method"):
        pr_curve_builder(method="voc12")
