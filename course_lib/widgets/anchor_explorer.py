"""Anchor explorer: the K anchors of one feature-map cell, and the labels of all of them.

A backbone of total stride ``s`` turns an ``H x W`` image into an ``H' x W'`` feature map
(``H' = H // s``). At each of its cells the RPN places the same K anchors, one per size and
aspect ratio (``course_lib.anchors.generate_anchors``), and predicts for each of them an
objectness score and 4 box deltas: ``K x H' x W'`` scores and ``4K x H' x W'`` deltas. For
training, every anchor is labelled by its IoU with the ground truth
(``course_lib.matching.label_anchors``): positive (IoU >= ``pos_iou``, or the best anchor of a
GT box), negative (IoU < ``neg_iou``) or ignored (in between).

The left panel shows the grid, the chosen cell and its K anchors (coloured by their label);
the right one every positive (green) and ignored (orange) anchor of the image.

Shape shorthand: ``H', W'`` feature-map height and width, ``K`` anchors per cell,
``A = H' * W' * K`` anchors, ``G`` ground-truth boxes.

In a notebook::

    from course_lib.widgets import anchor_explorer
    anchor_explorer()                   # a synthetic scene; or anchor_explorer(image, target)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch
from IPython.display import clear_output, display
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

from course_lib import viz
from course_lib.anchors import generate_anchors
from course_lib.boxes import box_iou
from course_lib.matching import IGNORED, NEGATIVE, POSITIVE, label_anchors
from course_lib.widgets.proposal_viewer import scene_and_boxes

__all__ = ["AnchorExplorer", "ASPECT_RATIOS", "SIZES", "STRIDES", "anchor_explorer"]

STRIDES: tuple[int, ...] = (8, 16, 32)
"""The backbone strides the dropdown offers."""
SIZES: tuple[int, ...] = (16, 32, 64, 128)
"""The anchor sizes offered (pixels; the side of a square of the same area)."""
ASPECT_RATIOS: tuple[float, ...] = (0.5, 1.0, 2.0)
"""The aspect ratios offered (height / width, as in ``generate_anchors``)."""

LABEL_COLORS = {POSITIVE: "#2ca02c", IGNORED: "#ff7f0e", NEGATIVE: "#bbbbbb"}
LABEL_NAMES = {POSITIVE: "positive", IGNORED: "ignored", NEGATIVE: "negative"}
GT_COLOR = "#1f77b4"


class AnchorExplorer(widgets.VBox):
    """The anchors of one feature-map cell, and the positive/negative/ignored labels of all.

    Controls: ``stride`` (Dropdown over ``STRIDES`` that fit the image), ``sizes`` and
    ``aspect_ratios`` (SelectMultiple), ``row`` and ``col`` (IntSliders over the feature-map
    grid), ``pos_iou`` and ``neg_iou`` (FloatSliders; moving one past the other drags it
    along, so ``neg_iou <= pos_iou`` always). Readouts: ``readout`` (HTML: shapes and
    counts) and ``table`` (HTML, one row per anchor of the chosen cell). Plain results,
    updated on every change: ``feature_size`` (``(H', W')``), ``K``, ``num_anchors`` (A),
    ``anchors`` (Tensor[A, 4]), ``labels`` and ``matched_gt`` (Tensor[A], from
    ``label_anchors``), ``best_iou`` (Tensor[A], each anchor's highest IoU with a GT box, 0
    without GT), ``num_positive``, ``num_negative``, ``num_ignored``, ``cell_index`` (the
    position ``row * W' + col``), ``cell_anchors`` (Tensor[K, 4], anchors
    ``cell_index * K`` to ``cell_index * K + K - 1``), ``cell_labels`` (Tensor[K]),
    ``centre`` (the cell's anchor centre ``(col * s, row * s)`` in pixels),
    ``objectness_shape`` (``(K, H', W')``) and ``deltas_shape`` (``(4K, H', W')``). With no
    size or no ratio selected, K is 0 and there are no anchors. Drawing: ``fig``,
    ``ax_cell`` and ``ax_labels`` shown in ``output``.
    """

    def __init__(self, image: torch.Tensor, gt_boxes: torch.Tensor, stride: int = 16,
                 sizes: Sequence[float] = (32, 64), aspect_ratios: Sequence[float] = ASPECT_RATIOS,
                 row: int | None = None, col: int | None = None, pos_iou: float = 0.7,
                 neg_iou: float = 0.3) -> None:
        self.image = image.detach().cpu()
        self.H, self.W = int(image.shape[1]), int(image.shape[2])
        self.gt_boxes = gt_boxes.detach().cpu()
        strides = [s for s in sorted(set(STRIDES) | {stride}) if s <= min(self.H, self.W)]
        height, width = self.H // stride, self.W // stride

        style = {"description_width": "initial"}
        self.stride = widgets.Dropdown(options=strides, value=stride, description="stride s",
                                       style=style, layout=widgets.Layout(width="150px"))
        self.sizes = widgets.SelectMultiple(
            options=sorted(set(SIZES) | set(sizes)), value=tuple(sorted(sizes)),
            description="sizes", rows=4, layout=widgets.Layout(width="170px"))
        self.aspect_ratios = widgets.SelectMultiple(
            options=[(f"{r:g}", r) for r in sorted(set(ASPECT_RATIOS) | set(aspect_ratios))],
            value=tuple(sorted(aspect_ratios)), description="h / w", rows=4,
            layout=widgets.Layout(width="170px"))
        self.row = widgets.IntSlider(value=height // 2 if row is None else row, min=0,
                                     max=height - 1, description="row", continuous_update=False)
        self.col = widgets.IntSlider(value=width // 2 if col is None else col, min=0,
                                     max=width - 1, description="column",
                                     continuous_update=False)
        slider = {"min": 0.0, "max": 1.0, "step": 0.05, "readout_format": ".2f",
                  "continuous_update": False}
        self.pos_iou = widgets.FloatSlider(value=pos_iou, description="pos IoU \u2265", **slider)
        self.neg_iou = widgets.FloatSlider(value=neg_iou, description="neg IoU <", **slider)
        self.readout = widgets.HTML()
        self.table = widgets.HTML()
        self.output = widgets.Output()

        with plt.ioff():
            self.fig, (self.ax_cell, self.ax_labels) = plt.subplots(
                1, 2, figsize=(7.2, 3.8), layout="constrained")
        plt.close(self.fig)  # shown by hand in self.output, never by pyplot
        handles = [Line2D([], [], color=LABEL_COLORS[label], lw=2, label=LABEL_NAMES[label])
                   for label in (POSITIVE, IGNORED, NEGATIVE)]
        handles.append(Line2D([], [], color=GT_COLOR, lw=2, ls="--", label="ground truth"))
        self.fig.legend(handles=handles, loc="outside lower center", ncol=4, fontsize=7,
                        frameon=False)

        self._holding = False
        for control in (self.stride, self.sizes, self.aspect_ratios):
            control.observe(lambda _: self.recompute(), names="value")
        for control in (self.row, self.col):
            control.observe(lambda _: self._on_change(), names="value")
        self.pos_iou.observe(self._on_pos_iou, names="value")
        self.neg_iou.observe(self._on_neg_iou, names="value")

        super().__init__([
            widgets.HBox([
                widgets.VBox([self.stride, self.row, self.col, self.pos_iou, self.neg_iou]),
                self.sizes, self.aspect_ratios,
            ]),
            self.readout,
            widgets.HBox([self.output, self.table]),
        ])
        self.recompute()

    # ------------------------------------------------------------------ computing

    def _on_change(self) -> None:
        if not self._holding:
            self.update()

    def _on_pos_iou(self, change: dict) -> None:
        if self.neg_iou.value > change["new"]:  # keep neg_iou <= pos_iou
            self._set_quietly(self.neg_iou, change["new"])
        self.recompute()

    def _on_neg_iou(self, change: dict) -> None:
        if self.pos_iou.value < change["new"]:
            self._set_quietly(self.pos_iou, change["new"])
        self.recompute()

    def _set_quietly(self, control: widgets.FloatSlider, value: float) -> None:
        """Set a threshold slider without triggering a second recompute."""
        self._holding = True
        try:
            control.value = value
        finally:
            self._holding = False

    def recompute(self) -> None:
        """New stride, sizes, ratios or thresholds: rebuild and relabel every anchor."""
        if self._holding:
            return
        stride = int(self.stride.value)
        sizes, ratios = tuple(sorted(self.sizes.value)), tuple(sorted(self.aspect_ratios.value))
        self.feature_size = (self.H // stride, self.W // stride)  # (H', W')
        height, width = self.feature_size
        self.K = len(sizes) * len(ratios)
        self.num_anchors = height * width * self.K
        self.objectness_shape = (self.K, height, width)  # RPN head: one score per anchor
        self.deltas_shape = (4 * self.K, height, width)  # ... and 4 deltas per anchor
        if self.K:
            self.anchors = generate_anchors(self.feature_size, stride, sizes, ratios)  # (A, 4)
        else:
            self.anchors = torch.zeros(0, 4)
        self.labels, self.matched_gt = label_anchors(
            self.anchors, self.gt_boxes, pos_iou=self.pos_iou.value, neg_iou=self.neg_iou.value)
        if len(self.gt_boxes) and self.num_anchors:
            self.best_iou = box_iou(self.anchors, self.gt_boxes).max(dim=1).values  # (A,)
        else:
            self.best_iou = torch.zeros(self.num_anchors)
        self.num_positive = int((self.labels == POSITIVE).sum())
        self.num_negative = int((self.labels == NEGATIVE).sum())
        self.num_ignored = int((self.labels == IGNORED).sum())

        self._holding = True  # clamp the position to the new grid with a single redraw
        try:
            for control, size in ((self.row, height), (self.col, width)):
                keep = min(control.value, size - 1)
                with control.hold_trait_notifications():
                    control.max = size - 1
                    control.value = keep
        finally:
            self._holding = False
        self.update()

    def update(self) -> None:
        """New position: pick out the chosen cell's K anchors and redraw."""
        k = self.K
        row, col = self.row.value, self.col.value
        stride = int(self.stride.value)
        self.cell_index = row * self.feature_size[1] + col
        cell = slice(self.cell_index * k, (self.cell_index + 1) * k)  # K consecutive anchors
        self.cell_anchors = self.anchors[cell]  # (K, 4)
        self.cell_labels = self.labels[cell]  # (K,)
        self.cell_best_iou = self.best_iou[cell]  # (K,)
        self.centre = (col * stride, row * stride)
        self.readout.value = self._readout_html()
        self.table.value = self._table_html()
        self._draw()

    # ------------------------------------------------------------------ showing

    def _readout_html(self) -> str:
        k, (height, width) = self.K, self.feature_size
        n_sizes, n_ratios = len(self.sizes.value), len(self.aspect_ratios.value)
        s = self.stride.value
        lines = [
            f"stride {s}: {self.W} &times; {self.H} image &rarr; feature map "
            f"H' &times; W' = {height} &times; {width}",
            f"<b>K = {n_sizes} sizes &times; {n_ratios} ratios = {k}</b> anchors per cell, "
            f"A = H'&middot;W'&middot;K = {height}&middot;{width}&middot;{k} = "
            f"<b>{self.num_anchors}</b> anchors",
            f"RPN outputs: objectness K &times; H' &times; W' = {k} &times; {height} &times; "
            f"{width} = {k * height * width}, deltas 4K &times; H' &times; W' = {4 * k} "
            f"&times; {height} &times; {width} = {4 * k * height * width}",
        ]
        if k == 0:
            lines.append("<span style='color:#d62728'>choose at least one size and one "
                         "ratio</span>")
        lines.append(
            f"labels (pos IoU &ge; {self.pos_iou.value:.2f}, neg IoU &lt; "
            f"{self.neg_iou.value:.2f}): <b style='color:{LABEL_COLORS[POSITIVE]}'>positives "
            f"{self.num_positive}</b>, negatives {self.num_negative}, "
            f"<span style='color:{LABEL_COLORS[IGNORED]}'>ignored {self.num_ignored}</span> "
            f"out of {self.num_anchors} anchors"
            + (" (no ground truth: all negative)" if len(self.gt_boxes) == 0 else ""))
        x, y = self.centre
        lines.append(f"cell (row {self.row.value}, column {self.col.value}): anchors "
                     f"{self.cell_index * k}..{self.cell_index * k + k - 1}, centred at "
                     f"(col&middot;s, row&middot;s) = ({x}, {y}) px, the cell's top-left corner "
                     "(torchvision's convention)")
        return "<br>".join(lines)

    def _table_html(self) -> str:
        if self.K == 0:
            return ""
        sizes, ratios = sorted(self.sizes.value), sorted(self.aspect_ratios.value)
        header = "".join(f"<th style='padding:0 5px'>{h}</th>"
                         for h in ("k", "size", "h/w", "w &times; h", "IoU", "label"))
        rows = []
        for k, box in enumerate(self.cell_anchors.tolist()):
            ratio, size = ratios[k // len(sizes)], sizes[k % len(sizes)]  # ratio-major order
            label = float(self.cell_labels[k])
            w, h = box[2] - box[0], box[3] - box[1]
            cells = (k, f"{size:g}", f"{ratio:g}", f"{w:g} &times; {h:g}",
                     f"{float(self.cell_best_iou[k]):.2f}",
                     f"<span style='color:{LABEL_COLORS[label]}'>{LABEL_NAMES[label]}</span>")
            rows.append("<tr>" + "".join(f"<td style='padding:0 5px'>{c}</td>" for c in cells)
                        + "</tr>")
        return f"<table style='font-size:85%'><tr>{header}</tr>{''.join(rows)}</table>"

    def _draw(self) -> None:
        s = self.stride.value
        height, width = self.feature_size
        # left: the grid, the chosen cell, its K anchors
        ax = self.ax_cell
        ax.clear()
        viz.show_image(ax, self.image)
        for i in range(1, height):
            ax.axhline(i * s, color="white", linewidth=0.5, alpha=0.5)
        for j in range(1, width):
            ax.axvline(j * s, color="white", linewidth=0.5, alpha=0.5)
        x, y = self.centre
        ax.add_patch(Rectangle((x, y), s, s, facecolor=(1, 1, 1, 0.35), edgecolor="white",
                               linewidth=1.2))
        viz.draw_boxes(ax, self.gt_boxes, colors=GT_COLOR, linewidth=1.5, linestyle="--")
        colors = [LABEL_COLORS[float(v)] for v in self.cell_labels]
        viz.draw_boxes(ax, self.cell_anchors, colors=colors, linewidth=1.4)
        ax.plot([x], [y], "o", color="white", markeredgecolor="black", markersize=5)
        ax.set_title(f"cell ({self.row.value}, {self.col.value}): its K = {self.K} anchors",
                     fontsize=9)
        self._frame(ax)
        # right: every positive and ignored anchor
        ax = self.ax_labels
        ax.clear()
        viz.show_image(ax, self.image)
        ignored = self.labels == IGNORED
        positive = self.labels == POSITIVE
        viz.draw_boxes(ax, self.anchors[ignored], colors=LABEL_COLORS[IGNORED], linewidth=0.6,
                       alpha=0.5)
        viz.draw_boxes(ax, self.anchors[positive], colors=LABEL_COLORS[POSITIVE],
                       linewidth=1.2)
        viz.draw_boxes(ax, self.gt_boxes, colors=GT_COLOR, linewidth=1.5, linestyle="--")
        ax.set_title(f"{self.num_positive} positive, {self.num_ignored} ignored of "
                     f"{self.num_anchors}", fontsize=9)
        self._frame(ax)
        with self.output:
            clear_output(wait=True)
            display(self.fig)

    def _frame(self, ax: plt.Axes) -> None:
        """Show the image and a margin around it, where the large anchors reach."""
        margin = min(max(self.sizes.value, default=0) * 0.5, max(self.H, self.W) * 0.25)
        ax.set_xlim(-margin, self.W + margin)
        ax.set_ylim(self.H + margin, -margin)
        ax.add_patch(Rectangle((0, 0), self.W, self.H, fill=False, edgecolor="black",
                               linewidth=0.8))


def _check_numbers(values: Sequence[float], name: str) -> tuple[float, ...]:
    """A non-empty sequence of positive numbers, as a tuple."""
    if isinstance(values, torch.Tensor):
        values = values.tolist()
    if isinstance(values, str | bytes) or not isinstance(values, Sequence) or not values:
        raise ValueError(f"{name} must be a non-empty sequence of numbers, got {values!r}")
    if not all(isinstance(v, int | float) and not isinstance(v, bool) and v > 0 for v in values):
        raise ValueError(f"{name} must all be positive numbers, got {tuple(values)!r}")
    return tuple(values)


def anchor_explorer(image: torch.Tensor | None = None, target: Mapping | None = None,
                    stride: int = 16, sizes: Sequence[float] = (32, 64),
                    aspect_ratios: Sequence[float] = ASPECT_RATIOS, row: int | None = None,
                    col: int | None = None, pos_iou: float = 0.7, neg_iou: float = 0.3,
                    index: int = 0) -> AnchorExplorer:
    """Build the anchor explorer.

    Leave ``image`` and ``target`` out for image ``index`` of
    ``SyntheticShapes("test", ..., kind="detection", image_size=128)``: with the default
    stride 16 an 8 x 8 feature map.

    Args:
        image: Tensor[3, H, W] float in [0, 1].
        target: dict with ``"boxes"`` Tensor[G, 4] in ``(x1, y1, x2, y2)`` pixels (other keys
            are ignored). ``None`` with an image: no ground truth, every anchor negative.
        stride: starting backbone stride ``s`` in pixels; the feature map is
            ``H // s x W // s``.
        sizes: starting anchor sizes in pixels (``SIZES`` and these are offered).
        aspect_ratios: starting height / width ratios (``ASPECT_RATIOS`` and these are
            offered).
        row: starting feature-map row (default: the middle one).
        col: starting feature-map column (default: the middle one).
        pos_iou: IoU from which an anchor is positive.
        neg_iou: IoU below which an anchor is negative (``<= pos_iou``).
        index: which synthetic scene to show when ``image`` is not given.

    Returns:
        The widget (an ``ipywidgets.VBox``); see ``AnchorExplorer`` for its attributes.

    Raises:
        ValueError: for an image that is not (3, H, W), a target without ``"boxes"`` (N, 4),
            a target without an image, a stride that is not a positive int or exceeds the
            image, empty or non-positive sizes or ratios, a row/column outside the feature
            map, or thresholds not ``0 <= neg_iou <= pos_iou <= 1``.
        TypeError: if ``image`` is not a tensor.
    """
    image, gt_boxes = scene_and_boxes(image, target, index)
    height, width = int(image.shape[1]), int(image.shape[2])
    if not isinstance(stride, int) or isinstance(stride, bool) or stride <= 0:
        raise ValueError(f"stride must be a positive int, got {stride!r}")
    if stride > min(height, width):
        raise ValueError(f"stride {stride} is larger than the image ({height}, {width}): the "
                         "feature map would be empty")
    sizes = _check_numbers(sizes, "sizes")
    aspect_ratios = _check_numbers(aspect_ratios, "aspect_ratios")
    for name, value, size in (("row", row, height // stride), ("col", col, width // stride)):
        if value is not None and not 0 <= value < size:
            raise ValueError(f"{name} must be in [0, {size - 1}] for a feature map of "
                             f"{height // stride} x {width // stride}, got {value!r}")
    if not 0 <= neg_iou <= pos_iou <= 1:
        raise ValueError(f"need 0 <= neg_iou <= pos_iou <= 1, got neg_iou={neg_iou}, "
                         f"pos_iou={pos_iou}")
    return AnchorExplorer(image, gt_boxes, stride=stride, sizes=sizes,
                          aspect_ratios=aspect_ratios, row=row, col=col, pos_iou=pos_iou,
                          neg_iou=neg_iou)
