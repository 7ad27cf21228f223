"""Proposal viewer: how many selective-search proposals does it take to find every object?

Selective search (``course_lib.proposals.selective_search``) ranks its boxes best first. Take
the top N: a ground-truth box is *found* when one of them overlaps it with IoU >= the threshold,
and the recall is the fraction found (``course_lib.proposals.proposal_recall``). Slide N and the
threshold and watch the found boxes (green, solid) and the missed ones (red, dashed), each with
its best proposal among the top N (yellow, captioned with the IoU), and the recall curve.

Shape shorthand: ``G`` ground-truth boxes, ``P`` proposals, ``N`` the top N shown.

In a notebook::

    from course_lib.widgets import proposal_viewer
    proposal_viewer()                   # a synthetic scene; or proposal_viewer(image, target)
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import clear_output, display
from matplotlib.lines import Line2D

from course_lib import viz
from course_lib.boxes import as_boxes, box_iou
from course_lib.proposals import proposal_recall, selective_search

__all__ = ["FOUND_COLOR", "MISSED_COLOR", "ProposalViewer", "proposal_viewer", "top_n_steps"]

FOUND_COLOR = "#2ca02c"  # green: a GT box some top-N proposal covers
MISSED_COLOR = "#d62728"  # red: a GT box no top-N proposal covers
BEST_COLOR = "#ffdd00"  # yellow: each GT's best proposal among the top N
OTHER_COLOR = "#1f77b4"  # blue, thin and faint: the other top-N proposals


def top_n_steps(num_proposals: int) -> list[int]:
    """The values the top-N slider offers: 1, 2, 3, 5, 7, 10, 15, 20, 30, 50, ... and P itself.

    Args:
        num_proposals: P, how many proposals there are.

    Returns:
        The steps ``<= P`` in increasing order, always ending with P (``[0]`` when P is 0).
    """
    if num_proposals <= 0:
        return [0]
    steps = []
    decade = 1
    while decade < num_proposals:
        steps += [m * decade for m in (1, 1.5, 2, 3, 5, 7) if m * decade == int(m * decade)]
        decade *= 10
    return sorted({int(n) for n in steps if n < num_proposals} | {num_proposals})


class ProposalViewer(widgets.VBox):
    """One image, its ground-truth boxes and the top N of its ranked proposals.

    Controls: ``top_n`` (SelectionSlider over ``top_n_steps(P)``), ``iou_threshold``
    (FloatSlider). Readout: ``readout`` (HTML, "top N = ..., recall@IoU t = found/total").
    Plain results, updated on every change: ``image`` (Tensor[3, H, W]), ``gt_boxes``
    (Tensor[G, 4]), ``proposals`` (Tensor[P, 4], best first), ``num_proposals`` (P), ``n``
    (the current N), ``best_iou`` (Tensor[G] float64, each GT's highest IoU with a top-N
    proposal; 0 when N is 0), ``best_proposal`` (Tensor[G] int64, the index of that proposal;
    -1 when N is 0), ``found`` (Tensor[G] bool, ``best_iou >= threshold``), ``num_found``,
    ``recall`` (``proposal_recall(proposals[:N], gt_boxes, threshold)``; ``nan`` without GT),
    ``curve_n``/``curve_recall`` (arrays ``(P,)``: the recall for every N from 1 to P).
    Drawing: ``fig``, ``ax_image`` and ``ax_curve`` shown in ``output``.
    """

    def __init__(self, image: torch.Tensor, gt_boxes: torch.Tensor, proposals: torch.Tensor,
                 top_n: int = 50, iou_threshold: float = 0.5) -> None:
        self.image = image.detach().cpu()
        self.H, self.W = int(image.shape[1]), int(image.shape[2])
        self.gt_boxes = gt_boxes.detach().cpu()
        self.proposals = proposals.detach().cpu()
        self.num_proposals = int(self.proposals.shape[0])
        # every GT against every proposal, once: (G, 4) x (P, 4) -> (G, P), in float64 as
        # proposal_recall computes it, so "found" here and its recall agree at the threshold
        self.iou_all = box_iou(self.gt_boxes.double(), self.proposals.double())

        steps = top_n_steps(self.num_proposals)
        start = min(steps, key=lambda n: (abs(n - top_n), n))  # the step closest to top_n
        self.top_n = widgets.SelectionSlider(options=steps, value=start, description="top N",
                                             continuous_update=False)
        self.top_n.disabled = len(steps) == 1
        self.iou_threshold = widgets.FloatSlider(
            value=iou_threshold, min=0.0, max=1.0, step=0.05, description="IoU thresh.",
            readout_format=".2f", continuous_update=False)
        self.readout = widgets.HTML()
        self.output = widgets.Output()

        with plt.ioff():
            self.fig, (self.ax_image, self.ax_curve) = plt.subplots(
                1, 2, figsize=(7.2, 3.4), width_ratios=(1, 1.1), layout="constrained")
        plt.close(self.fig)  # shown by hand in self.output, never by pyplot

        for control in (self.top_n, self.iou_threshold):
            control.observe(lambda _: self.update(), names="value")

        super().__init__([
            widgets.HBox([self.top_n, self.iou_threshold]),
            self.readout,
            self.output,
        ])
        self.update()

    # ------------------------------------------------------------------ computing

    @property
    def n(self) -> int:
        """The current N: how many of the best proposals are shown."""
        return int(self.top_n.value)

    @property
    def num_gt(self) -> int:
        """G, the number of ground-truth boxes."""
        return int(self.gt_boxes.shape[0])

    def update(self) -> None:
        """Recompute the matches and the recall for the current N and threshold; redraw."""
        n, threshold = self.n, float(self.iou_threshold.value)
        iou = self.iou_all[:, :n]  # (G, P) -> (G, N)
        if n > 0:
            self.best_iou, self.best_proposal = iou.max(dim=1)  # (G, N) -> (G,), (G,)
        else:
            self.best_iou = torch.zeros(self.num_gt, dtype=torch.float64)
            self.best_proposal = torch.full((self.num_gt,), -1, dtype=torch.int64)
        self.found = self.best_iou >= threshold  # (G,)
        self.num_found = int(self.found.sum())
        self.recall = proposal_recall(self.proposals[:n], self.gt_boxes, threshold)

        # recall after each N = 1 .. P: a GT is found from the first proposal reaching it on
        self.curve_n = np.arange(1, self.num_proposals + 1)
        if self.num_gt and self.num_proposals:
            reached = (self.iou_all >= threshold).cummax(dim=1).values  # (G, P)
            self.curve_recall = reached.double().mean(dim=0).numpy()  # (G, P) -> (P,)
        else:
            self.curve_recall = np.full(self.num_proposals, math.nan if not self.num_gt else 0.0)

        self.readout.value = self._readout_html()
        self._draw()

    # ------------------------------------------------------------------ showing

    def _readout_html(self) -> str:
        threshold = self.iou_threshold.value
        line = (f"<b>top N = {self.n}</b> of {self.num_proposals} proposals, "
                f"<b>recall@IoU {threshold:.2f} = {self.num_found}/{self.num_gt}</b>")
        if self.num_gt == 0:
            return line + " (undefined: this image has no ground-truth box)"
        line += f" = {self.recall:.0%}"
        missed = [str(i) for i in range(self.num_gt) if not self.found[i]]
        if missed:
            line += (f"<br><span style='color:{MISSED_COLOR}'>missed GT {', '.join(missed)}"
                     "</span>: no top-N proposal overlaps them enough; raise N or lower the "
                     "threshold")
        return line

    def _draw(self) -> None:
        ax = self.ax_image
        ax.clear()
        viz.show_image(ax, self.image)
        n = self.n
        best = sorted(set(self.best_proposal.tolist()) - {-1})
        others = [i for i in range(n) if i not in set(best)]
        if others:
            viz.draw_boxes(ax, self.proposals[others], colors=OTHER_COLOR, linewidth=0.6,
                           alpha=0.3)
        if self.num_gt:
            colors = [FOUND_COLOR if f else MISSED_COLOR for f in self.found.tolist()]
            for g in range(self.num_gt):
                viz.draw_boxes(ax, self.gt_boxes[g : g + 1], colors=colors[g], linewidth=3.0,
                               linestyle="-" if self.found[g] else "--")
            if n > 0:  # each GT's best proposal, captioned with its IoU
                viz.draw_boxes(ax, self.proposals[self.best_proposal], colors=BEST_COLOR,
                               scores=self.best_iou, linewidth=1.2)
        ax.set_xlim(0, self.W)
        ax.set_ylim(self.H, 0)
        ax.set_title(f"top {n}: {self.num_found}/{self.num_gt} GT found", fontsize=9)
        handles = [Line2D([], [], color=FOUND_COLOR, lw=2, label="GT found"),
                   Line2D([], [], color=MISSED_COLOR, lw=2, ls="--", label="GT missed"),
                   Line2D([], [], color=BEST_COLOR, lw=1.5, label="best proposal (IoU)"),
                   Line2D([], [], color=OTHER_COLOR, lw=1, alpha=0.5, label="other top N")]
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.02), ncol=2,
                  fontsize=6, frameon=False)
        self._draw_curve()
        with self.output:
            clear_output(wait=True)
            display(self.fig)

    def _draw_curve(self) -> None:
        ax = self.ax_curve
        ax.clear()
        threshold = self.iou_threshold.value
        ax.set_title(f"recall@IoU {threshold:.2f} vs N", fontsize=9)
        ax.set_xlabel("top N proposals (log scale)", fontsize=8)
        ax.set_ylabel("recall", fontsize=8)
        ax.tick_params(labelsize=7)
        if self.num_gt == 0 or self.num_proposals == 0:
            why = "no ground-truth box" if self.num_gt == 0 else "no proposals"
            ax.text(0.5, 0.5, f"{why}:\nrecall undefined", ha="center", va="center",
                    color="grey", transform=ax.transAxes)
            ax.set_xticks([])
            ax.set_yticks([])
            return
        ax.step(self.curve_n, self.curve_recall, where="post", color=viz.PALETTE[0])
        if self.n > 0:
            ax.plot([self.n], [self.recall], "o", color=MISSED_COLOR, markersize=6,
                    label=f"N = {self.n}: {self.recall:.2f}")
            ax.legend(fontsize=7, loc="lower right")
        ax.set_xscale("log")
        ax.set_xlim(0.9, max(self.num_proposals, 2) * 1.2)  # room for the marker at N = P
        ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3)


def _default_scene(index: int) -> tuple[torch.Tensor, dict]:
    """Image ``index`` of a small synthetic test split, 128 x 128 (made on the fly)."""
    from course_lib.data.synthetic import SyntheticShapes

    dataset = SyntheticShapes("test", index + 1, kind="detection", image_size=128, cache=False)
    return dataset[index]


def _check_image(image: torch.Tensor) -> None:
    """Raise unless ``image`` is a Tensor[3, H, W]."""
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"image must be a torch.Tensor (3, H, W), got {type(image).__name__}")
    if image.dim() != 3 or image.shape[0] != 3 or min(image.shape[1:]) == 0:
        raise ValueError(f"image must have shape (3, H, W), got {tuple(image.shape)}")


def _gt_boxes(target: Mapping | None) -> torch.Tensor:
    """The ``"boxes"`` of a target dict as Tensor[G, 4] (G = 0 without a target)."""
    if target is None:
        return torch.zeros(0, 4)
    if not isinstance(target, Mapping) or "boxes" not in target:
        raise ValueError("target must be a dict with 'boxes' Tensor[G, 4] in (x1, y1, x2, y2), "
                         f"got {type(target).__name__}"
                         + (f" with keys {sorted(target)}" if isinstance(target, Mapping) else ""))
    return as_boxes(target["boxes"], "target['boxes']")


def scene_and_boxes(image: torch.Tensor | None, target: Mapping | None,
                    index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The widgets' scene: the given image and its GT boxes, or synthetic test image ``index``.

    Returns:
        tuple[Tensor[3, H, W], Tensor[G, 4]]: the image and its GT boxes (G may be 0).
    """
    if image is None:
        if target is not None:
            raise ValueError("give the image with its target, or neither for a synthetic scene")
        image, target = _default_scene(index)
    _check_image(image)
    return image, _gt_boxes(target)


def proposal_viewer(image: torch.Tensor | None = None, target: Mapping | None = None,
                    proposals: torch.Tensor | None = None, top_n: int = 50,
                    iou_threshold: float = 0.5, index: int = 0,
                    max_proposals: int = 2000) -> ProposalViewer:
    """Build the proposal viewer.

    Leave ``image`` and ``target`` out for image ``index`` of
    ``SyntheticShapes("test", ..., kind="detection", image_size=128)``.

    Args:
        image: Tensor[3, H, W] float in [0, 1].
        target: dict with ``"boxes"`` Tensor[G, 4] in ``(x1, y1, x2, y2)`` pixels (other keys
            such as ``"labels"`` are ignored). ``None`` with an image: no ground truth, so
            the recall is undefined but the proposals are still shown.
        proposals: optional Tensor[P, 4] ranked best first; default
            ``selective_search(image, max_proposals=max_proposals)`` (about 0.2 s for a
            128 x 128 image).
        top_n: starting N (the slider's step closest to it).
        iou_threshold: starting IoU a proposal needs to find a GT box (``>=``), in [0, 1].
        index: which synthetic scene to show when ``image`` is not given.
        max_proposals: passed to ``selective_search`` when ``proposals`` is not given.

    Returns:
        The widget (an ``ipywidgets.VBox``); see ``ProposalViewer`` for its attributes.

    Raises:
        ValueError: for an image that is not (3, H, W), a target without ``"boxes"`` (N, 4),
            a target without an image, proposals that are not (P, 4), or a threshold
            outside [0, 1].
        TypeError: if ``image`` is not a tensor.
    """
    image, gt_boxes = scene_and_boxes(image, target, index)
    if not 0 <= iou_threshold <= 1:
        raise ValueError(f"iou_threshold must be in [0, 1], got {iou_threshold!r}")
    if proposals is None:
        proposals = selective_search(image, max_proposals=max_proposals)
    proposals = as_boxes(proposals, "proposals")
    return ProposalViewer(image, gt_boxes, proposals, top_n=top_n, iou_threshold=iou_threshold)
