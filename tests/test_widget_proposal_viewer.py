"""The proposal viewer, driven without a browser: its recall and its found/missed boxes agree
with a loop over torchvision's box_iou, at every N and threshold, exact threshold included."""

import math

import matplotlib
import matplotlib.pyplot as plt
import pytest
import torch
from torchvision.ops import box_iou as tv_box_iou

from course_lib.proposals import proposal_recall, selective_search
from course_lib.widgets import ProposalViewer, proposal_viewer
from course_lib.widgets.proposal_viewer import top_n_steps

matplotlib.use("Agg")  # headless


def image(h=64, w=80):
    return torch.rand(3, h, w, generator=torch.Generator().manual_seed(0))


def scene():
    """Three GT boxes and 40 ranked proposals: jittered copies of the GT boxes, worst first."""
    gt = torch.tensor([[5.0, 5, 25, 30], [40, 10, 70, 40], [10, 40, 30, 60]])
    g = torch.Generator().manual_seed(1)
    proposals = []
    for jitter in torch.linspace(12, 0, 13).tolist():
        for box in gt:
            proposals.append(box + torch.randn(4, generator=g) * jitter)
    proposals.append(torch.tensor([0.0, 0, 80, 64]))
    proposals = torch.stack(proposals)
    proposals[:, 2:] = torch.maximum(proposals[:, 2:], proposals[:, :2] + 1)  # valid boxes
    return gt, proposals  # (3, 4), (40, 4)


def loop_found(gt, proposals, n, threshold):
    """Oracle: GT g is found when one of the first n proposals has IoU >= threshold with it."""
    found = []
    for g in range(len(gt)):
        best = max((float(tv_box_iou(gt[g : g + 1].double(), proposals[p : p + 1].double()))
                    for p in range(n)), default=0.0)
        found.append(best >= threshold)
    return found


def make(**kwargs):
    gt, proposals = scene()
    return proposal_viewer(image(), {"boxes": gt, "labels": torch.ones(3, dtype=torch.int64)},
                           proposals=proposals, **kwargs)


def test_top_n_steps_are_log_ish_and_end_at_p():
    assert top_n_steps(40) == [1, 2, 3, 5, 7, 10, 15, 20, 30, 40]
    assert top_n_steps(2000)[-5:] == [500, 700, 1000, 1500, 2000]
    assert top_n_steps(1) == [1] and top_n_steps(0) == [0]


def test_defaults_show_a_synthetic_scene_and_its_selective_search():
    w = proposal_viewer()
    assert isinstance(w, ProposalViewer)
    assert tuple(w.image.shape) == (3, 128, 128) and w.num_gt > 0
    assert torch.equal(w.proposals, selective_search(w.image))
    assert w.n == 50 and w.iou_threshold.value == 0.5
    found = loop_found(w.gt_boxes, w.proposals, 50, 0.5)
    assert w.found.tolist() == found
    assert w.recall == pytest.approx(sum(found) / len(found))
    assert f"recall@IoU 0.50 = {sum(found)}/{w.num_gt}" in w.readout.value


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7, 0.9])
def test_recall_and_found_match_a_loop_at_every_n(threshold):
    gt, proposals = scene()
    w = make()
    w.iou_threshold.value = threshold
    for n in w.top_n.options:
        w.top_n.value = n
        found = loop_found(gt, proposals, n, w.iou_threshold.value)
        assert w.found.tolist() == found, (n, threshold)
        assert w.num_found == sum(found)
        assert w.recall == proposal_recall(proposals[:n], gt, w.iou_threshold.value)
        assert w.recall == pytest.approx(sum(found) / 3)
        assert f"top N = {n}</b>" in w.readout.value
        assert f"recall@IoU {w.iou_threshold.value:.2f} = {sum(found)}/3" in w.readout.value


def test_best_proposal_is_the_argmax_among_the_top_n():
    gt, proposals = scene()
    w = make()
    for n in (1, 5, 20, 40):
        w.top_n.value = n
        for g in range(3):
            ious = [float(tv_box_iou(gt[g : g + 1], proposals[p : p + 1])) for p in range(n)]
            assert w.best_proposal[g] < n
            assert float(w.best_iou[g]) == pytest.approx(max(ious))
            assert ious[int(w.best_proposal[g])] == pytest.approx(max(ious))


def test_curve_is_the_recall_at_every_n():
    gt, proposals = scene()
    w = make()
    w.iou_threshold.value = 0.7
    assert len(w.curve_recall) == 40
    for n in range(1, 41):
        assert w.curve_recall[n - 1] == pytest.approx(proposal_recall(proposals[:n], gt, 0.7))


def test_exact_threshold_counts_as_found():
    gt = torch.tensor([[0.0, 0, 10, 10]])
    proposals = torch.tensor([[50.0, 50, 60, 60], [0, 0, 10, 20]])  # IoU 0 and exactly 0.5
    w = proposal_viewer(image(), {"boxes": gt}, proposals=proposals, top_n=1)
    assert w.n == 1 and w.num_found == 0 and w.recall == 0.0
    w.top_n.value = 2
    assert w.best_proposal.tolist() == [1] and float(w.best_iou[0]) == 0.5
    assert w.found.tolist() == [True] and w.recall == 1.0
    assert "recall@IoU 0.50 = 1/1" in w.readout.value and "missed" not in w.readout.value


def test_drawing_found_missed_and_other_proposals():
    gt = torch.tensor([[0.0, 0, 10, 10], [30, 30, 40, 40]])
    proposals = torch.tensor([[0.0, 0, 10, 11], [50, 0, 60, 10], [31, 31, 39, 48]])
    w = proposal_viewer(image(), {"boxes": gt}, proposals=proposals, top_n=3)
    assert w.found.tolist() == [True, False]  # the second's best IoU is 72 / 164 = 0.44
    assert "missed GT 1" in w.readout.value
    # 1 other proposal + 2 GT boxes + 2 best proposals
    patches = w.ax_image.patches
    assert len(patches) == 5
    gt_patches = patches[1:3]
    assert [p.get_linestyle() for p in gt_patches] == ["-", "--"]
    assert len(w.ax_curve.lines) == 2  # the curve and the marker at N


@pytest.mark.parametrize("target", [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0)},
                                    None])
def test_a_scene_without_ground_truth(target):
    _, proposals = scene()
    w = proposal_viewer(image(), target, proposals=proposals)
    assert w.num_gt == 0 and w.num_found == 0 and math.isnan(w.recall)
    assert "recall@IoU 0.50 = 0/0" in w.readout.value and "undefined" in w.readout.value
    w.top_n.value = 40
    w.iou_threshold.value = 0.8
    assert math.isnan(w.recall) and len(w.ax_image.patches) == 40


def test_no_proposals():
    w = proposal_viewer(image(), {"boxes": torch.tensor([[0.0, 0, 10, 10]])},
                        proposals=torch.zeros(0, 4))
    assert w.n == 0 and w.top_n.disabled
    assert w.recall == 0.0 and w.best_proposal.tolist() == [-1]
    assert "recall@IoU 0.50 = 0/1" in w.readout.value


def test_top_n_starts_at_the_closest_step():
    assert make(top_n=12).n == 10
    assert make(top_n=1000).n == 40


def test_bad_arguments():
    gt, proposals = scene()
    target = {"boxes": gt}
    with pytest.raises(ValueError, match="image must have shape"):
        proposal_viewer(torch.zeros(64, 80), target, proposals=proposals)
    with pytest.raises(ValueError, match="image must have shape"):
        proposal_viewer(torch.zeros(1, 64, 80), target, proposals=proposals)
    with pytest.raises(TypeError, match="image must be a torch.Tensor"):
        proposal_viewer([[0.0]], target, proposals=proposals)
    with pytest.raises(ValueError, match="target must be a dict with 'boxes'"):
        proposal_viewer(image(), {"labels": torch.ones(3)}, proposals=proposals)
    with pytest.raises(ValueError, match=r"target\['boxes'\] must have shape \(N, 4\)"):
        proposal_viewer(image(), {"boxes": torch.zeros(3, 5)}, proposals=proposals)
    with pytest.raises(ValueError, match="proposals must have shape"):
        proposal_viewer(image(), target, proposals=torch.zeros(5, 3))
    with pytest.raises(ValueError, match="iou_threshold must be in"):
        proposal_viewer(image(), target, proposals=proposals, iou_threshold=1.5)
    with pytest.raises(ValueError, match="give the image with its target"):
        proposal_viewer(target=target)


def test_leaves_no_pyplot_figures():
    before = plt.get_fignums()
    make()
    assert plt.get_fignums() == before
