"""Default box explorer: SSD's default boxes, level by level, and the ones matched to objects.

SSD predicts from several feature maps ("levels"). The large early maps have many positions
and small default boxes; the small late maps few positions and large boxes. At each position
of level ``k`` sit ``K = 2 + 2 * len(aspect_ratios[k])`` default boxes: two squares (sides
``s_k`` and ``sqrt(s_k * s_{k+1})`` of the image) and, for each ratio ``r``, a box of
width / height ``r`` and one of ``1 / r`` (``course_lib.models.ssd.default_boxes``). For
training, ``match_default_boxes`` gives each default box the GT box it overlaps with IoU >=
the threshold (or background), and each GT box its best default box.

The left panel shows the chosen level's grid and the K default boxes of one position; the
right one every matched default box of every level, coloured by level, with the GT boxes.

Shape shorthand: ``L`` levels, ``H_k x W_k`` the map of level ``k``, ``K_k`` its boxes per
position, ``D = sum_k H_k * W_k * K_k`` default boxes, ``G`` GT boxes.

In a notebook::

    from course_lib.widgets import default_box_explorer
    default_box_explorer()              # a synthetic scene; or default_box_explorer(image, target)
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
from course_lib.models.ssd import default_boxes, match_default_boxes, ssd_scales
from course_lib.widgets.proposal_viewer import scene_and_boxes

__all__ = ["COURSE_ASPECT_RATIOS", "COURSE_FEATURE_SIZES", "COURSE_SCALES",
           "DefaultBoxExplorer", "default_box_explorer"]

COURSE_FEATURE_SIZES: tuple[tuple[int, int], ...] = ((16, 16), (8, 8), (4, 4), (2, 2), (1, 1))
"""The course SSD's feature maps on a 128-pixel image (strides 8, 16, 32, 64, 128)."""
COURSE_SCALES: list[float] = ssd_scales(5, min_ratio=0.1, max_ratio=0.9)
"""Its scales ``s_1 .. s_6`` (fractions of the image)."""
COURSE_ASPECT_RATIOS: tuple[tuple[float, ...], ...] = ((2,),) * 5
"""Its aspect ratios: 2 (and 1/2) at every level, so K = 4."""

GT_COLOR = "white"


def _ratio_names(aspect_ratios: Sequence[float]) -> list[str]:
    """The K names of one level's boxes, in the order of ``default_boxes``: 1, 1', r, 1/r."""
    names = ["1", "1'"]
    for ratio in aspect_ratios:
        names += [f"{ratio:g}", f"1/{ratio:g}"]
    return names


class DefaultBoxExplorer(widgets.VBox):
    """The default boxes of one position of one level, and the matched boxes of all levels.

    Controls: ``level`` (Dropdown of the levels), ``row`` and ``col`` (IntSliders over the
    level's map, clamped when the level changes) and ``iou_threshold`` (FloatSlider).
    Readouts: ``readout`` (HTML: totals and the chosen position) and ``table`` (HTML, one row
    per level). Fixed results: ``feature_sizes`` (L pairs ``(H_k, W_k)``), ``scales``
    (L + 1), ``aspect_ratios`` (L tuples), ``K_per_level`` (L ints), ``boxes_per_level``
    (``H_k * W_k * K_k``), ``level_start`` (L ints, where each level starts in the D boxes),
    ``default_boxes`` (Tensor[D, 4]), ``level_of_box`` (Tensor[D] int64) and
    ``num_default`` (D). Updated on every change: ``matched`` (Tensor[D] int64, from
    ``match_default_boxes``: a GT index or -1), ``positives_per_level`` (L ints),
    ``num_positive``, ``position_index`` (``row * W_k + col``), ``box_index`` (the first of
    the position's boxes in the D), ``boxes_at_position`` (Tensor[K_k, 4]) and
    ``matched_at_position`` (Tensor[K_k]). ``model_image_size`` is the model's
    ``(height, width)`` (None without a model), only reported. Drawing: ``fig``, ``ax_position`` and
    ``ax_matched`` shown in ``output``.
    """

    def __init__(self, image: torch.Tensor, gt_boxes: torch.Tensor,
                 feature_sizes: Sequence[tuple[int, int]], scales: Sequence[float],
                 aspect_ratios: Sequence[Sequence[float]], iou_threshold: float = 0.5,
                 level: int = 0, model_image_size: tuple[int, int] | None = None) -> None:
        self.image = image.detach().cpu()
        self.H, self.W = int(image.shape[1]), int(image.shape[2])
        self.gt_boxes = gt_boxes.detach().cpu().float()
        self.model_image_size = model_image_size
        self.feature_sizes = [tuple(size) for size in feature_sizes]
        self.scales = list(scales)
        self.aspect_ratios = [tuple(ratios) for ratios in aspect_ratios]
        self.default_boxes = default_boxes(self.feature_sizes, (self.H, self.W), self.scales,
                                           self.aspect_ratios)  # (D, 4)
        self.num_default = len(self.default_boxes)
        self.K_per_level = [2 + 2 * len(ratios) for ratios in self.aspect_ratios]
        self.boxes_per_level = [h * w * k for (h, w), k in
                                zip(self.feature_sizes, self.K_per_level, strict=True)]
        self.level_start = [sum(self.boxes_per_level[:k]) for k in range(len(self.K_per_level))]
        self.level_of_box = torch.repeat_interleave(
            torch.arange(len(self.boxes_per_level)), torch.tensor(self.boxes_per_level))  # (D,)

        options = [(f"{h} \u00d7 {w} ({self._stride_text(k)})", k)
                   for k, (h, w) in enumerate(self.feature_sizes)]
        self.level = widgets.Dropdown(options=options, value=level, description="feature map",
                                      style={"description_width": "initial"})
        height, width = self.feature_sizes[level]
        self.row = widgets.IntSlider(value=height // 2, min=0, max=max(height - 1, 0),
                                     description="row", continuous_update=False)
        self.col = widgets.IntSlider(value=width // 2, min=0, max=max(width - 1, 0),
                                     description="column", continuous_update=False)
        self.iou_threshold = widgets.FloatSlider(
            value=iou_threshold, min=0.0, max=1.0, step=0.05, description="match IoU \u2265",
            readout_format=".2f", continuous_update=False, style={"description_width": "initial"})
        self.readout = widgets.HTML()
        self.table = widgets.HTML()
        self.output = widgets.Output()

        with plt.ioff():
            self.fig, (self.ax_position, self.ax_matched) = plt.subplots(
                1, 2, figsize=(7.2, 3.9), layout="constrained")
        plt.close(self.fig)  # shown by hand in self.output, never by pyplot
        handles = [Line2D([], [], color=self.level_color(k), lw=2, label=f"{h}\u00d7{w}")
                   for k, (h, w) in enumerate(self.feature_sizes)]
        handles.append(Line2D([], [], color="0.6", lw=2, ls="--", label="GT (white)"))
        self.fig.legend(handles=handles, loc="outside lower center", ncol=len(handles),
                        fontsize=7, frameon=False, title="matched default boxes by level",
                        title_fontsize=7)

        self._holding = False
        self.level.observe(lambda _: self._on_level(), names="value")
        for control in (self.row, self.col):
            control.observe(lambda _: self._on_position(), names="value")
        self.iou_threshold.observe(lambda _: self.recompute(), names="value")

        super().__init__([
            widgets.HBox([widgets.VBox([self.level, self.iou_threshold]),
                          widgets.VBox([self.row, self.col])]),
            self.readout,
            widgets.HBox([self.output, self.table]),
        ])
        self.recompute()

    @staticmethod
    def level_color(level: int) -> str:
        """The colour of a level's boxes in both panels."""
        return viz.PALETTE[level % len(viz.PALETTE)]

    def _stride_text(self, level: int) -> str:
        """``"stride 8"`` (or ``"stride 8 x 10"`` when the two axes differ) of a level."""
        height, width = self.feature_sizes[level]
        step_y, step_x = self.H / max(height, 1), self.W / max(width, 1)
        if step_x == step_y:
            return f"stride {step_x:g}"
        return f"stride {step_y:g} \u00d7 {step_x:g}"

    # ------------------------------------------------------------------ computing

    def _on_level(self) -> None:
        """New level: clamp the position to its map (one redraw)."""
        height, width = self.feature_sizes[self.level.value]
        self._holding = True
        try:
            for control, size in ((self.row, height), (self.col, width)):
                keep = min(control.value, max(size - 1, 0))
                with control.hold_trait_notifications():
                    control.max = max(size - 1, 0)
                    control.value = keep
        finally:
            self._holding = False
        self.update()

    def _on_position(self) -> None:
        if not self._holding:
            self.update()

    def recompute(self) -> None:
        """New IoU threshold: match every default box again, then redraw."""
        self.matched = match_default_boxes(self.default_boxes, self.gt_boxes,
                                           float(self.iou_threshold.value))  # (D,)
        positive = self.matched >= 0  # (D,)
        self.positives_per_level = [int(positive[self.level_of_box == k].sum())
                                    for k in range(len(self.feature_sizes))]
        self.num_positive = int(positive.sum())
        self.update()

    def update(self) -> None:
        """New position or level: pick out its K default boxes, refresh readouts, redraw."""
        level = self.level.value
        k = self.K_per_level[level]
        width = self.feature_sizes[level][1]
        self.position_index = self.row.value * width + self.col.value
        self.box_index = self.level_start[level] + self.position_index * k
        position = slice(self.box_index, self.box_index + k)  # K consecutive boxes
        self.boxes_at_position = self.default_boxes[position]  # (K, 4)
        self.matched_at_position = self.matched[position]  # (K,)
        self.readout.value = self._readout_html()
        self.table.value = self._table_html()
        self._draw()

    # ------------------------------------------------------------------ showing

    def _readout_html(self) -> str:
        level = self.level.value
        height, width = self.feature_sizes[level]
        k = self.K_per_level[level]
        matched = int((self.matched_at_position >= 0).sum())
        lines = [
            f"<b>D = {self.num_default}</b> default boxes on {len(self.feature_sizes)} feature "
            f"maps; <b>{self.num_positive} positives</b> (matched to one of "
            f"{len(self.gt_boxes)} GT boxes at IoU &ge; {self.iou_threshold.value:.2f}, plus "
            "each GT's best box)",
            f"position (row {self.row.value}, column {self.col.value}) of the {height} &times; "
            f"{width} map: boxes {self.box_index}..{self.box_index + k - 1}, {matched} of its "
            f"K = {k} matched",
        ]
        if len(self.gt_boxes) == 0:
            lines.append("no ground truth: every default box is background")
        if self.model_image_size not in (None, (self.H, self.W)):
            model_h, model_w = self.model_image_size
            lines.append(f"the model sees {model_h} &times; {model_w} images: its default "
                         f"boxes (fractions of the image) are drawn scaled to this {self.H} "
                         f"&times; {self.W} one")
        return "<br>".join(lines)

    def _box_sizes(self, level: int) -> list[str]:
        """``"w×h"`` in pixels of each of a level's K boxes (one position's)."""
        start = self.level_start[level]
        boxes = self.default_boxes[start : start + self.K_per_level[level]]  # (K, 4)
        wh = boxes[:, 2:] - boxes[:, :2]  # (K, 2)
        return [f"{w:.0f}\u00d7{h:.0f}" for w, h in wh.tolist()]

    def _table_html(self) -> str:
        header = "".join(f"<th style='padding:0 5px'>{h}</th>" for h in
                         ("feature map", "K", "boxes", "box sizes (px)", "positives"))
        rows = []
        for k, (height, width) in enumerate(self.feature_sizes):
            bold = "font-weight:bold;" if k == self.level.value else ""
            cells = (f"<span style='color:{self.level_color(k)}'>&#9632;</span> "
                     f"{height} &times; {width}", self.K_per_level[k], self.boxes_per_level[k],
                     ", ".join(self._box_sizes(k)), self.positives_per_level[k])
            rows.append(f"<tr style='{bold}'>" + "".join(
                f"<td style='padding:0 5px'>{c}</td>" for c in cells) + "</tr>")
        total = (f"<tr><td style='padding:0 5px'>total</td><td></td><td style='padding:0 5px'>"
                 f"{self.num_default}</td><td></td><td style='padding:0 5px'>"
                 f"{self.num_positive}</td></tr>")
        return (f"<table style='font-size:85%'><tr>{header}</tr>{''.join(rows)}{total}"
                "</table>")

    def _draw(self) -> None:
        level = self.level.value
        height, width = self.feature_sizes[level]
        step_y, step_x = self.H / height, self.W / width
        # left: the level's grid, the chosen position, its K default boxes
        ax = self.ax_position
        ax.clear()
        viz.show_image(ax, self.image)
        for i in range(1, height):
            ax.axhline(i * step_y, color="white", linewidth=0.5, alpha=0.6)
        for j in range(1, width):
            ax.axvline(j * step_x, color="white", linewidth=0.5, alpha=0.6)
        ax.add_patch(Rectangle((self.col.value * step_x, self.row.value * step_y), step_x,
                               step_y, facecolor=(1, 1, 1, 0.35), edgecolor="white"))
        viz.draw_boxes(ax, self.gt_boxes, colors=GT_COLOR, linewidth=1.2, linestyle="--")
        k = self.K_per_level[level]
        names = [f"{name} {size}" for name, size in
                 zip(_ratio_names(self.aspect_ratios[level]), self._box_sizes(level),
                     strict=True)]
        viz.draw_boxes(ax, self.boxes_at_position, labels=torch.arange(k), class_names=names,
                       colors=self.level_color(level), linewidth=1.4)
        ax.set_title(f"{height} \u00d7 {width} ({self._stride_text(level)}): K = {k} boxes "
                     f"at ({self.row.value}, {self.col.value})", fontsize=9)
        self._frame(ax)
        # right: every matched default box, coloured by level
        ax = self.ax_matched
        ax.clear()
        viz.show_image(ax, self.image)
        positive = self.matched >= 0  # (D,)
        for lvl in range(len(self.feature_sizes)):
            boxes = self.default_boxes[positive & (self.level_of_box == lvl)]
            viz.draw_boxes(ax, boxes, colors=self.level_color(lvl), linewidth=1.0)
        viz.draw_boxes(ax, self.gt_boxes, colors=GT_COLOR, linewidth=1.5, linestyle="--")
        ax.set_title(f"{self.num_positive} matched of D = {self.num_default}", fontsize=9)
        self._frame(ax)
        with self.output:
            clear_output(wait=True)
            display(self.fig)

    def _frame(self, ax: plt.Axes) -> None:
        """Show the image and a margin around it, where the large default boxes reach."""
        margin = 0.25 * max(self.H, self.W)
        ax.set_xlim(-margin, self.W + margin)
        ax.set_ylim(self.H + margin, -margin)
        ax.add_patch(Rectangle((0, 0), self.W, self.H, fill=False, edgecolor="black",
                               linewidth=0.8))


def _model_settings(model: object) -> tuple[list, list, list, tuple[int, int]]:
    """``feature_sizes``, ``scales``, ``aspect_ratios`` and ``(height, width)`` of a model."""
    missing = [name for name in ("feature_sizes", "scales", "aspect_ratios", "image_size")
               if not hasattr(model, name)]
    if missing:
        raise ValueError("model must have attributes feature_sizes, scales, aspect_ratios and "
                         f"image_size; {type(model).__name__} lacks {', '.join(missing)}")
    size = model.image_size
    size = (int(size), int(size)) if isinstance(size, int | float) else tuple(size)
    return list(model.feature_sizes), list(model.scales), list(model.aspect_ratios), size


def default_box_explorer(image: torch.Tensor | None = None, target: Mapping | None = None,
                         model: object | None = None, iou_threshold: float = 0.5,
                         level: int = 0, index: int = 0) -> DefaultBoxExplorer:
    """Build the default box explorer.

    Leave ``image`` and ``target`` out for image ``index`` of
    ``SyntheticShapes("test", ..., kind="detection", image_size=128)``. The settings are the
    course SSD's (``COURSE_FEATURE_SIZES``, ``COURSE_SCALES``, ``COURSE_ASPECT_RATIOS``) or
    the model's. Default boxes are fractions of the image, so they are drawn scaled to the
    image shown, as SSD resizes its input to ``model.image_size``.

    Args:
        image: Tensor[3, H, W] float in [0, 1].
        target: dict with ``"boxes"`` Tensor[G, 4] in ``(x1, y1, x2, y2)`` pixels (other keys
            are ignored). ``None`` with an image: no ground truth, every box background.
        model: optional object with ``feature_sizes`` (L pairs ``(H, W)``), ``scales``
            (L + 1 fractions), ``aspect_ratios`` (L sequences) and ``image_size``.
        iou_threshold: starting matching IoU, in [0, 1].
        level: starting level (0 = the largest map).
        index: which synthetic scene to show when ``image`` is not given.

    Returns:
        The widget (an ``ipywidgets.VBox``); see ``DefaultBoxExplorer`` for its attributes.

    Raises:
        ValueError: for an image that is not (3, H, W), a target without ``"boxes"`` (N, 4),
            a target without an image, a threshold outside [0, 1], a level out of range, a
            model without the attributes above, or settings ``default_boxes`` rejects
            (including an empty feature map).
        TypeError: if ``image`` is not a tensor.
    """
    image, gt_boxes = scene_and_boxes(image, target, index)
    if model is None:
        feature_sizes, scales = list(COURSE_FEATURE_SIZES), COURSE_SCALES
        aspect_ratios, model_image_size = list(COURSE_ASPECT_RATIOS), None
    else:
        feature_sizes, scales, aspect_ratios, model_image_size = _model_settings(model)
    height, width = int(image.shape[1]), int(image.shape[2])
    default_boxes(feature_sizes, (height, width), scales, aspect_ratios)  # raises if bad
    if any(min(size) < 1 for size in feature_sizes):
        raise ValueError(f"feature_sizes must all be at least 1 x 1, got {feature_sizes!r}")
    if not 0 <= iou_threshold <= 1:
        raise ValueError(f"iou_threshold must be in [0, 1], got {iou_threshold!r}")
    if isinstance(level, bool) or not isinstance(level, int) or not (
            0 <= level < len(feature_sizes)):
        raise ValueError(f"level must be in [0, {len(feature_sizes) - 1}], got {level!r}")
    return DefaultBoxExplorer(image, gt_boxes, feature_sizes, scales, aspect_ratios,
                              iou_threshold=iou_threshold, level=level,
                              model_image_size=model_image_size)
