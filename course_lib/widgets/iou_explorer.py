"""IoU explorer: move a box around and watch intersection, union and IoU change.

In a notebook::

    from course_lib.widgets import iou_explorer
    iou_explorer()                      # or iou_explorer(box_a=(10, 10, 60, 40), move_a=True)
"""

from __future__ import annotations

from collections.abc import Sequence

import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch
from IPython.display import clear_output, display

from course_lib import viz
from course_lib.boxes import box_iou

__all__ = ["IoUExplorer", "iou_explorer", "iou_quality"]

# The lecture's rule of thumb, checked from the top: IoU > 0.9 is "almost perfect", ...
QUALITY_WORDS: tuple[tuple[float, str], ...] = (
    (0.9, "almost perfect"),
    (0.7, "pretty good"),
    (0.5, "decent"),
)


def iou_quality(iou: float) -> str:
    """The lecture's word for an IoU: > 0.9 "almost perfect", > 0.7 "pretty good", > 0.5 "decent".

    Args:
        iou: an IoU in ``[0, 1]``.

    Returns:
        One of ``"almost perfect"``, ``"pretty good"``, ``"decent"`` or ``"poor"``
        (the thresholds are strict: exactly 0.5 is still "poor").
    """
    for threshold, word in QUALITY_WORDS:
        if iou > threshold:
            return word
    return "poor"


def _check_box(box: Sequence[float], name: str) -> tuple[float, float, float, float]:
    """A box as 4 floats ``(x1, y1, x2, y2)`` with positive width and height."""
    values = tuple(float(v) for v in torch.as_tensor(box).reshape(-1).tolist())
    if len(values) != 4:
        raise ValueError(f"{name} must be 4 numbers (x1, y1, x2, y2), got shape ({len(values)},)")
    x1, y1, x2, y2 = values
    if x2 <= x1 or y2 <= y1:
        raise ValueError(f"{name} must have x2 > x1 and y2 > y1, got {values}")
    return values


class IoUExplorer(widgets.VBox):
    """Two boxes on a canvas, sliders to move them, and their IoU with the lecture's words.

    Controls: ``x_b``, ``y_b``, ``w_b``, ``h_b`` (top-left corner, width and height of box B)
    and ``x_a``, ``y_a``, ``w_a``, ``h_a`` for box A (shown only with ``move_a=True``).
    Readout: ``readout`` (HTML). Plain results, updated on every change: ``box_a`` and
    ``box_b`` (xyxy tuples), ``iou``, ``quality``, ``intersection_area``, ``union_area``.
    Drawing: ``fig``/``ax`` (matplotlib), shown in ``output``.
    """

    def __init__(
        self,
        box_a: Sequence[float] = (20, 20, 70, 70),
        box_b: Sequence[float] = (40, 35, 95, 90),
        canvas: tuple[int, int] = (128, 128),
        move_a: bool = False,
    ) -> None:
        box_a, box_b = _check_box(box_a, "box_a"), _check_box(box_b, "box_b")
        if len(canvas) != 2 or min(canvas) <= 0:
            raise ValueError(f"canvas must be (width, height) > 0, got {canvas}")
        self.canvas = (int(canvas[0]), int(canvas[1]))
        width, height = self.canvas

        def slider(description: str, value: float, low: float, high: float) -> widgets.FloatSlider:
            return widgets.FloatSlider(
                value=value, min=low, max=max(high, value), step=1.0, description=description,
                readout_format=".0f", layout=widgets.Layout(width="260px"),
            )

        self.x_a = slider("A x1", box_a[0], 0, width)
        self.y_a = slider("A y1", box_a[1], 0, height)
        self.w_a = slider("A width", box_a[2] - box_a[0], 1, width)
        self.h_a = slider("A height", box_a[3] - box_a[1], 1, height)
        self.x_b = slider("B x1", box_b[0], 0, width)
        self.y_b = slider("B y1", box_b[1], 0, height)
        self.w_b = slider("B width", box_b[2] - box_b[0], 1, width)
        self.h_b = slider("B height", box_b[3] - box_b[1], 1, height)
        self.controls_a = [self.x_a, self.y_a, self.w_a, self.h_a]
        self.controls_b = [self.x_b, self.y_b, self.w_b, self.h_b]
        self.readout = widgets.HTML()
        self.output = widgets.Output()

        with plt.ioff():
            self.fig, self.ax = plt.subplots(figsize=(3.8, 4.2), layout="constrained")
        plt.close(self.fig)  # shown by hand in self.output, never by pyplot

        self._holding = False
        for control in self.controls_a + self.controls_b:
            control.observe(self._on_change, names="value")

        panel = [widgets.HTML("<b>Box B</b> (orange)"), *self.controls_b]
        if move_a:
            panel += [widgets.HTML("<b>Box A</b> (blue)"), *self.controls_a]
        panel.append(self.readout)
        super().__init__([widgets.HBox([self.output, widgets.VBox(panel)])])
        self.update()

    @property
    def box_a(self) -> tuple[float, float, float, float]:
        """Box A as ``(x1, y1, x2, y2)``, read from its sliders."""
        return _xyxy(self.x_a, self.y_a, self.w_a, self.h_a)

    @property
    def box_b(self) -> tuple[float, float, float, float]:
        """Box B as ``(x1, y1, x2, y2)``, read from its sliders."""
        return _xyxy(self.x_b, self.y_b, self.w_b, self.h_b)

    def set_boxes(
        self, box_a: Sequence[float] | None = None, box_b: Sequence[float] | None = None
    ) -> None:
        """Move one or both boxes (xyxy) at once, with a single redraw."""
        self._holding = True
        try:
            for box, name, controls in (
                (box_a, "box_a", self.controls_a), (box_b, "box_b", self.controls_b)
            ):
                if box is None:
                    continue
                x1, y1, x2, y2 = _check_box(box, name)
                for control, value in zip(controls, (x1, y1, x2 - x1, y2 - y1), strict=True):
                    control.max = max(control.max, value)
                    control.value = value
        finally:
            self._holding = False
        self.update()

    def _on_change(self, change: dict) -> None:
        if not self._holding:
            self.update()

    def update(self) -> None:
        """Recompute the IoU from the sliders and redraw."""
        box_a, box_b = self.box_a, self.box_b
        # (1, 4) x (1, 4) -> (1, 1)
        self.iou = float(box_iou(torch.tensor([box_a]), torch.tensor([box_b]))[0, 0])
        self.quality = iou_quality(self.iou)

        ax = self.ax
        ax.clear()
        drawn = viz.draw_iou(ax, box_a, box_b)
        self.intersection_area = drawn["intersection_area"]
        self.union_area = drawn["union_area"]
        width = max(self.canvas[0], box_a[2], box_b[2])
        height = max(self.canvas[1], box_a[3], box_b[3])
        ax.set_xlim(0, width)
        ax.set_ylim(height, 0)  # image coordinates: y points down
        ax.set_title(f"IoU = {self.iou:.3f} ({self.quality})", fontsize=10)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=2, fontsize=7,
                  frameon=False)

        self.readout.value = (
            f"<b>IoU = {self.iou:.3f}</b> &rarr; <b>{self.quality}</b><br>"
            f"intersection = {self.intersection_area:.0f} px&sup2;, "
            f"union = {self.union_area:.0f} px&sup2;<br>"
            f"<small>rule of thumb: &gt; 0.5 decent, &gt; 0.7 pretty good, "
            f"&gt; 0.9 almost perfect</small>"
        )
        with self.output:
            clear_output(wait=True)
            display(self.fig)


def _xyxy(x: widgets.FloatSlider, y: widgets.FloatSlider, w: widgets.FloatSlider,
          h: widgets.FloatSlider) -> tuple[float, float, float, float]:
    """Corner + size sliders -> ``(x1, y1, x2, y2)``."""
    return (x.value, y.value, x.value + w.value, y.value + h.value)


def iou_explorer(
    box_a: Sequence[float] = (20, 20, 70, 70),
    box_b: Sequence[float] = (40, 35, 95, 90),
    canvas: tuple[int, int] = (128, 128),
    move_a: bool = False,
) -> IoUExplorer:
    """Build the IoU explorer.

    Args:
        box_a: the fixed box, ``(x1, y1, x2, y2)`` pixels (think: ground truth).
        box_b: the box you move with the sliders (think: a prediction).
        canvas: ``(width, height)`` of the drawing area in pixels.
        move_a: also show sliders for box A.

    Returns:
        The widget (an ``ipywidgets.VBox``); see ``IoUExplorer`` for its attributes.

    Raises:
        ValueError: if a box is not 4 numbers with x2 > x1, y2 > y1, or the canvas is empty.
    """
    return IoUExplorer(box_a=box_a, box_b=box_b, canvas=canvas, move_a=move_a)
