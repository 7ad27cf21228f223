"""PR-curve builder: slide a confidence threshold down the ranked detections.

Each detection above the threshold counts: a true positive raises recall (and precision),
a false positive lowers precision. The moving point traces the precision/recall curve and
the shaded area under its interpolated envelope is the average precision (AP).

In a notebook::

    from course_lib.widgets import pr_curve_builder
    pr_curve_builder()                  # the lecture's dog example; or (scores, is_tp, num_gt)
"""

from __future__ import annotations

from collections.abc import Sequence

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import clear_output, display

from course_lib import viz
from course_lib.data import lecture_examples as ex
from course_lib.metrics import average_precision, f1_score, precision_recall, precision_recall_curve

__all__ = ["DOG_EXAMPLE", "PRCurveBuilder", "pr_curve_builder"]

# The lecture's example: 5 dog detections ranked by score, matched against 3 ground-truth dogs.
# At the end precision = 3/5 = 0.6 and recall = 3/3 = 1.0; all-point AP = 0.8667.
DOG_EXAMPLE: dict = {
    "scores": ex.DOG_PR_SCORES,
    "is_tp": ex.DOG_PR_IS_TP,
    "num_gt": ex.DOG_PR_NUM_GT,
}

METHODS: tuple[str, ...] = ("all", "voc11", "coco101")
# The recall levels each method samples the envelope at (as in course_lib.metrics).
_RECALL_LEVELS = {
    "all": None,
    "voc11": np.arange(11) / 10,  # 0.0, 0.1, ..., 1.0 (exact decimals)
    "coco101": np.linspace(0.0, 1.0, 101),  # pycocotools
}

# A float32 score of 0.9 is 0.8999999762; count it as "above" a slider threshold of 0.90.
_TOLERANCE = 1e-6


class PRCurveBuilder(widgets.VBox):
    """A threshold slider over ranked detections, their TP/FP table and the PR curve.

    Controls: ``threshold`` (FloatSlider: detections with ``score >= threshold`` count) and
    ``method`` (Dropdown: ``"all"``, ``"voc11"``, ``"coco101"`` AP).
    Readouts: ``readout`` (HTML: TP, FP, FN, precision, recall, F1 at the threshold),
    ``ap_readout`` (HTML) and ``table`` (HTML: the ranked detections, rows above the threshold
    highlighted). Plain results: ``num_detections``, ``tp``, ``fp``, ``fn``, ``precision``,
    ``recall``, ``f1`` (at the threshold), ``ap``; the whole curve: ``curve_precision``,
    ``curve_recall``, ``curve_thresholds`` (Tensor[D], ranked), ``order`` (Tensor[D], the
    original index of each ranked detection). Drawing: ``fig``/``ax`` shown in ``output``.
    """

    def __init__(
        self,
        scores: Sequence[float] | torch.Tensor,
        is_tp: Sequence[bool] | torch.Tensor,
        num_gt: int,
        method: str = "all",
    ) -> None:
        self.scores = torch.as_tensor(scores).reshape(-1)
        if not self.scores.is_floating_point():
            self.scores = self.scores.float()
        self.is_tp = torch.as_tensor(is_tp, dtype=torch.bool).reshape(-1)
        if self.is_tp.shape != self.scores.shape:
            raise ValueError(
                f"is_tp must have shape {tuple(self.scores.shape)} like scores, "
                f"got {tuple(self.is_tp.shape)}"
            )
        if int(num_gt) < 0:
            raise ValueError(f"num_gt must be >= 0, got {num_gt}")
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        self.num_gt = int(num_gt)

        # (D,) each, ranked by score, highest first (stable for ties)
        self.curve_precision, self.curve_recall, self.curve_thresholds = precision_recall_curve(
            self.scores, self.is_tp, self.num_gt
        )
        self.order = torch.sort(self.scores, descending=True, stable=True).indices
        ranked_tp = self.is_tp[self.order]
        self.cum_tp = torch.cumsum(ranked_tp.long(), dim=0)  # (D,)
        self.cum_fp = torch.cumsum((~ranked_tp).long(), dim=0)  # (D,)

        low = min(0.0, float(self.scores.min())) if self.scores.numel() else 0.0
        high = max(1.0, float(self.scores.max())) if self.scores.numel() else 1.0
        start = float(self.scores.min()) if self.scores.numel() else low
        self.threshold = widgets.FloatSlider(
            value=start, min=low, max=high, step=0.01, description="score \u2265",
            readout_format=".2f", disabled=self.scores.numel() == 0,
            layout=widgets.Layout(width="360px"),
        )
        self.method = widgets.Dropdown(options=list(METHODS), value=method, description="AP method")
        self.readout = widgets.HTML()
        self.ap_readout = widgets.HTML()
        self.table = widgets.HTML()
        self.output = widgets.Output()

        with plt.ioff():
            self.fig, self.ax = plt.subplots(figsize=(4.2, 3.6), layout="constrained")
        plt.close(self.fig)  # shown by hand in self.output, never by pyplot

        self.threshold.observe(self._on_change, names="value")
        self.method.observe(self._on_change, names="value")
        super().__init__([
            widgets.HBox([self.threshold, self.method]),
            widgets.HBox([self.output, widgets.VBox([self.readout, self.ap_readout, self.table])]),
        ])
        self.update()

    def _on_change(self, change: dict) -> None:
        self.update()

    def update(self) -> None:
        """Recompute the operating point and AP from the controls and redraw."""
        ranked_scores = self.curve_thresholds.double()
        self.num_detections = int((ranked_scores >= self.threshold.value - _TOLERANCE).sum())
        n = self.num_detections
        self.tp = int(self.cum_tp[n - 1]) if n else 0
        self.fp = int(self.cum_fp[n - 1]) if n else 0
        self.fn = self.num_gt - self.tp
        self.precision, self.recall = precision_recall(self.tp, self.fp, self.fn)
        self.f1 = f1_score(self.precision, self.recall)
        self.ap = float(average_precision(self.curve_precision, self.curve_recall,
                                          method=self.method.value))

        self._draw()
        self.readout.value = (
            f"<b>{n}</b> of {len(ranked_scores)} detections have score &ge; "
            f"{self.threshold.value:.2f}: TP = {self.tp}, FP = {self.fp}, "
            f"FN = {self.fn} (of {self.num_gt} ground truths)<br>"
            f"<b>precision = {self.precision:.3f}</b> = TP / (TP + FP), "
            f"<b>recall = {self.recall:.3f}</b> = TP / (TP + FN), F1 = {self.f1:.3f}"
        )
        self.ap_readout.value = (
            f"<b>AP ({self.method.value}) = {self.ap:.4f}</b> "
            f"<small>(area under the interpolated PR curve)</small>"
        )
        self.table.value = self._table_html()

    def _draw(self) -> None:
        ax = self.ax
        ax.clear()
        # the shaded area is the all-point AP; the other methods sample its envelope
        viz.plot_pr_curve(ax, self.curve_precision, self.curve_recall,
                          ap=self.ap if self.method.value == "all" else None,
                          samples=_RECALL_LEVELS[self.method.value])
        if self.num_detections:
            ax.plot([self.recall], [self.precision], "*", color="crimson", markersize=14,
                    label=f"score \u2265 {self.threshold.value:.2f}")
        ax.set_title(f"AP ({self.method.value}) = {self.ap:.3f}", fontsize=10)
        ax.legend(loc="lower left", fontsize=7)
        with self.output:
            clear_output(wait=True)
            display(self.fig)

    def _table_html(self) -> str:
        header = "".join(
            f"<th style='padding:0 6px'>{name}</th>"
            for name in ("rank", "det", "score", "match", "cum TP", "cum FP", "precision", "recall")
        )
        rows = []
        for rank in range(len(self.order)):
            included = rank < self.num_detections
            is_tp = bool(self.is_tp[self.order[rank]])
            style = "background:#e3f2e1" if included else "color:#999"
            if rank == self.num_detections - 1:
                style += ";font-weight:bold"
            match = ("<span style='color:#2ca02c'>TP</span>" if is_tp
                     else "<span style='color:#d62728'>FP</span>")
            cells = (
                rank + 1, f"#{int(self.order[rank])}", f"{float(self.curve_thresholds[rank]):.2f}",
                match, int(self.cum_tp[rank]), int(self.cum_fp[rank]),
                f"{float(self.curve_precision[rank]):.3f}", f"{float(self.curve_recall[rank]):.3f}",
            )
            rows.append(f"<tr style='{style}'>"
                        + "".join(f"<td style='padding:0 6px;text-align:right'>{c}</td>"
                                  for c in cells)
                        + "</tr>")
        return f"<table style='font-size:90%'><tr>{header}</tr>{''.join(rows)}</table>"


def pr_curve_builder(
    scores: Sequence[float] | torch.Tensor | None = None,
    is_tp: Sequence[bool] | torch.Tensor | None = None,
    num_gt: int | None = None,
    method: str = "all",
) -> PRCurveBuilder:
    """Build the PR-curve builder.

    Leave ``scores``, ``is_tp`` and ``num_gt`` all out for the lecture's dog example
    (scores 0.99, 0.95, 0.90, 0.5, 0.10; TP, TP, FP, FP, TP; 3 ground truths; AP 0.8667).

    Args:
        scores: Tensor[D], the confidence of each detection of one class (any order).
        is_tp: Tensor[D] bool, whether each detection matched a ground truth (e.g. from
            ``course_lib.metrics.match_detections``).
        num_gt: how many ground-truth boxes of the class there are (recall's denominator).
        method: the starting AP method, ``"all"``, ``"voc11"`` or ``"coco101"``.

    Returns:
        The widget (an ``ipywidgets.VBox``); see ``PRCurveBuilder`` for its attributes.

    Raises:
        ValueError: if only some of ``scores``/``is_tp``/``num_gt`` are given, their shapes
            differ, ``num_gt`` is negative or ``method`` is unknown.
    """
    given = [x is not None for x in (scores, is_tp, num_gt)]
    if not any(given):
        scores, is_tp, num_gt = DOG_EXAMPLE["scores"], DOG_EXAMPLE["is_tp"], DOG_EXAMPLE["num_gt"]
    elif not all(given):
        raise ValueError("give all of scores, is_tp and num_gt, or none of them for the example")
    return PRCurveBuilder(scores, is_tp, num_gt, method=method)
