"""NMS stepper: greedy non-maximum suppression one decision at a time, hard or soft.

Hard NMS keeps the best remaining box and removes every box that overlaps it by more than the
IoU threshold. Soft-NMS (Bodla et al., 2017) instead lowers their scores, linearly (``1 - IoU``)
or with a Gaussian (``exp(-IoU^2 / sigma)``), so a second object hidden behind the first can
survive. The decisions come from ``course_lib.nms.nms_steps`` / ``soft_nms_steps``.

In a notebook::

    from course_lib.widgets import nms_stepper
    nms_stepper()                       # the lecture's dog scene; or nms_stepper(boxes, scores)
"""

from __future__ import annotations

from collections.abc import Sequence

import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch
from IPython.display import clear_output, display

from course_lib import viz
from course_lib.boxes import box_iou
from course_lib.data import lecture_examples as ex
from course_lib.nms import nms, nms_steps, soft_nms, soft_nms_steps

__all__ = ["DOG_SCENE", "MODES", "NMSStepper", "nms_stepper"]

# The lecture's scene: two dogs, four detections with the slides' IoUs (0.78, 0.05, 0.07, 0.74),
# plus a looser box on dog 1 (green, IoU 0.64 with blue): removed at threshold 0.5, kept at 0.7.
DOG_SCENE: dict = {
    "boxes": (*ex.DOG_BOXES, ex.LOOSE_DOG_BOX),
    "scores": (*ex.DOG_SCORES, ex.LOOSE_DOG_SCORE),
    "names": (*ex.DOG_NAMES, "green"),
    "colors": (*ex.DOG_COLORS, "#2ca02c"),
    "canvas": (220, 160),
}

# (button label, mode): hard NMS or one of soft_nms's decay methods
MODES: tuple[tuple[str, str], ...] = (
    ("hard NMS", "hard"),
    ("soft-NMS linear", "linear"),
    ("soft-NMS gaussian", "gaussian"),
)


class NMSStepper(widgets.VBox):
    """Step through NMS: which box is kept, which are suppressed (or decayed), and why.

    Controls: ``next_button``, ``prev_button``, ``reset_button``, ``end_button`` (buttons),
    ``threshold`` (IoU-threshold FloatSlider; recomputes), ``mode`` (ToggleButtons ``"hard"``,
    ``"linear"``, ``"gaussian"``), ``sigma`` (FloatSlider, gaussian soft-NMS only).
    Readouts: ``readout`` (HTML, the current decision) and ``table`` (HTML, one row per box:
    score, current score, status). Plain results: ``steps`` (the step records of
    ``nms_steps``/``soft_nms_steps``), ``step`` (how many decisions are shown, 0 to
    ``num_steps``), ``done``, ``kept`` (indices kept so far, in selection order), ``status``
    (per box: ``"pending"``, ``"kept"``, ``"suppressed"`` or ``"dropped"``), ``current_scores``
    (per box), ``suppressed_by`` (box -> (kept box, IoU)), ``result`` (the full answer of
    ``nms``/``soft_nms``). Drawing: ``fig``/``ax`` shown in ``output``.
    """

    def __init__(
        self,
        boxes: torch.Tensor,
        scores: torch.Tensor,
        iou_threshold: float = 0.5,
        mode: str = "hard",
        sigma: float = 0.5,
        score_threshold: float = 0.001,
        names: Sequence[str] | None = None,
        colors: Sequence[str] | None = None,
        canvas: tuple[int, int] | None = None,
        image: torch.Tensor | None = None,
    ) -> None:
        self.boxes = _as_float(boxes)
        self.scores = _as_float(scores)
        if self.boxes.numel() == 0:
            self.boxes = self.boxes.reshape(0, 4)
        if self.boxes.dim() != 2 or self.boxes.shape[1] != 4:
            raise ValueError(f"boxes must have shape (N, 4), got {tuple(self.boxes.shape)}")
        n = self.boxes.shape[0]
        if self.scores.shape != (n,):
            raise ValueError(
                f"scores must have shape ({n},) to match boxes {tuple(self.boxes.shape)}, "
                f"got {tuple(self.scores.shape)}"
            )
        if mode not in dict(MODES).values():
            raise ValueError(f"mode must be one of {[m for _, m in MODES]}, got {mode!r}")
        self.names = [f"#{i}" for i in range(n)] if names is None else [str(s) for s in names]
        self.colors = [viz.class_color(i) for i in range(n)] if colors is None else list(colors)
        if len(self.names) != n or len(self.colors) != n:
            raise ValueError(f"names and colors must have {n} entries, one per box")
        self.score_threshold = float(score_threshold)
        self.image = image
        self.canvas = canvas
        self.pair_iou = box_iou(self.boxes, self.boxes)  # (N, 4) x (N, 4) -> (N, N)

        self.next_button = widgets.Button(description="Next \u25b6", button_style="primary")
        self.prev_button = widgets.Button(description="\u25c0 Previous")
        self.reset_button = widgets.Button(description="Reset")
        self.end_button = widgets.Button(description="Run to end")
        self.threshold = widgets.FloatSlider(
            value=iou_threshold, min=0.0, max=1.0, step=0.05, description="IoU thresh.",
            readout_format=".2f", continuous_update=False,
        )
        self.mode = widgets.ToggleButtons(options=MODES, value=mode)
        self.sigma = widgets.FloatSlider(
            value=sigma, min=0.05, max=2.0, step=0.05, description="sigma",
            readout_format=".2f", continuous_update=False,
        )
        self.readout = widgets.HTML()
        self.table = widgets.HTML()
        self.output = widgets.Output()

        with plt.ioff():
            self.fig, self.ax = plt.subplots(figsize=(4.4, 3.6), layout="constrained")
        plt.close(self.fig)  # shown by hand in self.output, never by pyplot

        self.next_button.on_click(lambda _: self.go_to(self.step + 1))
        self.prev_button.on_click(lambda _: self.go_to(self.step - 1))
        self.reset_button.on_click(lambda _: self.go_to(0))
        self.end_button.on_click(lambda _: self.go_to(self.num_steps))
        for control in (self.threshold, self.mode, self.sigma):
            control.observe(self._on_settings, names="value")

        super().__init__([
            widgets.HBox([self.prev_button, self.next_button, self.reset_button, self.end_button]),
            self.mode,
            widgets.HBox([self.threshold, self.sigma]),
            widgets.HBox([self.output, widgets.VBox([self.readout, self.table])]),
        ])
        self.step = 0
        self.recompute()

    # ------------------------------------------------------------------ computing

    def _on_settings(self, change: dict) -> None:
        self.recompute()

    def recompute(self) -> None:
        """Rerun NMS with the current mode and threshold; stay at the same step if possible."""
        mode, threshold = self.mode.value, self.threshold.value
        self.threshold.disabled = mode == "gaussian"  # the gaussian decay ignores it
        self.sigma.disabled = mode != "gaussian"
        if mode == "hard":
            self.steps = nms_steps(self.boxes, self.scores, threshold)
            self.result = nms(self.boxes, self.scores, threshold)
        else:
            kwargs = {"iou_threshold": threshold, "sigma": self.sigma.value, "method": mode,
                      "score_threshold": self.score_threshold}
            self.steps = soft_nms_steps(self.boxes, self.scores, **kwargs)
            self.result = soft_nms(self.boxes, self.scores, **kwargs)[0]
        self.num_steps = len(self.steps)
        self.go_to(min(self.step, self.num_steps))

    def go_to(self, step: int) -> None:
        """Show the state after ``step`` decisions (clamped to ``0 .. num_steps``)."""
        self.step = max(0, min(int(step), self.num_steps))
        self.done = self.step == self.num_steps
        n = self.boxes.shape[0]
        self.status = ["pending"] * n
        self.current_scores = self.scores.tolist()
        self.suppressed_by: dict[int, tuple[int, float]] = {}
        self.kept = []
        for record in self.steps[: self.step]:
            kept = record["kept"]
            self.kept.append(kept)
            self.status[kept] = "kept"
            if self.mode.value == "hard":
                for j, iou in record["suppressed"]:
                    self.status[j] = "suppressed"
                    self.suppressed_by[j] = (kept, iou)
            else:
                self.current_scores = record["scores"].tolist()
                for j in record["dropped"]:
                    self.status[j] = "dropped"
                    self.suppressed_by[j] = (kept, float(self.pair_iou[kept, j]))
        self.prev_button.disabled = self.step == 0
        self.next_button.disabled = self.done
        self.end_button.disabled = self.done
        self.readout.value = self._readout_html()
        self.table.value = self._table_html()
        self._draw()

    # ------------------------------------------------------------------ showing

    def _label(self, i: int) -> str:
        return f"<b style='color:{self.colors[i]}'>{self.names[i]}</b>"

    def _readout_html(self) -> str:
        mode, threshold = self.mode.value, self.threshold.value
        lines = [f"<b>Step {self.step} / {self.num_steps}</b>"]
        if self.step == 0:
            lines.append("Nothing decided yet. <i>Next</i> picks the highest-scoring box.")
        else:
            record = self.steps[self.step - 1]
            kept = record["kept"]
            score = self.current_scores[kept]
            lines.append(f"Keep {self._label(kept)} (score {score:.2f}), the best box left.")
            if mode == "hard":
                removed = [f"{self._label(j)} (IoU {iou:.2f} &gt; {threshold:.2f})"
                           for j, iou in record["suppressed"]]
                lines.append("Suppress " + ", ".join(removed) + "." if removed
                             else f"No remaining box overlaps it by more than {threshold:.2f}.")
            else:
                rule = (f"score &times; (1 &minus; IoU) where IoU &ge; {threshold:.2f}"
                        if mode == "linear"
                        else f"score &times; exp(&minus;IoU&sup2; / {self.sigma.value:.2f})")
                lines.append(f"The others decay: {rule}.")
                if record["dropped"]:
                    lines.append("Dropped below score " f"{self.score_threshold:g}: "
                                 + ", ".join(self._label(j) for j in record["dropped"]) + ".")
        if self.done:
            op = "nms" if mode == "hard" else f"soft_nms(method={mode!r})"
            lines.append(f"Done: kept {self.kept} &mdash; the same as {op}: "
                         f"{self.result.tolist()}.")
        return "<br>".join(lines)

    def _table_html(self) -> str:
        header = "".join(f"<th style='padding:0 6px'>{h}</th>"
                         for h in ("box", "score", "current", "status"))
        colors = {"kept": "#2ca02c", "suppressed": "#d62728", "dropped": "#d62728"}
        rows = []
        for i in torch.argsort(self.scores, descending=True, stable=True).tolist():
            status = self.status[i]
            if i in self.suppressed_by:
                by, iou = self.suppressed_by[i]
                status += f" by {self.names[by]} (IoU {iou:.2f})"
            style = f"color:{colors.get(self.status[i], 'inherit')}"
            cells = (self._label(i), f"{float(self.scores[i]):.2f}",
                     f"{self.current_scores[i]:.3f}", f"<span style='{style}'>{status}</span>")
            rows.append("<tr>" + "".join(f"<td style='padding:0 6px'>{c}</td>" for c in cells)
                        + "</tr>")
        return f"<table style='font-size:90%'><tr>{header}</tr>{''.join(rows)}</table>"

    def _draw(self) -> None:
        ax = self.ax
        ax.clear()
        if self.image is not None:
            viz.show_image(ax, self.image)
        latest = self.steps[self.step - 1]["kept"] if self.step else None
        for i in range(self.boxes.shape[0]):
            status = self.status[i]
            # soft-NMS: a box fades as its score decays (hard NMS never changes a score)
            fade = max(self.current_scores[i] / max(float(self.scores[i]), 1e-12), 0.2)
            style = {
                "pending": {"linestyle": "--", "linewidth": 1.5, "alpha": 0.9 * fade},
                "kept": {"linestyle": "-", "linewidth": 3, "alpha": fade, "fill": i == latest},
                "suppressed": {"linestyle": ":", "linewidth": 1, "alpha": 0.35},
                "dropped": {"linestyle": ":", "linewidth": 1, "alpha": 0.35},
            }[status]
            viz.draw_boxes(ax, self.boxes[i : i + 1], labels=[0], class_names=[self.names[i]],
                           scores=[self.current_scores[i]], colors=[self.colors[i]], **style)
        if self.canvas is not None:
            ax.set_xlim(0, self.canvas[0])
            ax.set_ylim(self.canvas[1], 0)
        ax.set_title(f"{dict((m, t) for t, m in MODES)[self.mode.value]}: "
                     f"step {self.step}/{self.num_steps}", fontsize=10)
        with self.output:
            clear_output(wait=True)
            display(self.fig)


def _as_float(values: torch.Tensor | Sequence) -> torch.Tensor:
    """A tensor (kept as it is if already floating point, else float32)."""
    tensor = torch.as_tensor(values)
    return tensor if tensor.is_floating_point() else tensor.float()


def nms_stepper(
    boxes: torch.Tensor | Sequence[Sequence[float]] | None = None,
    scores: torch.Tensor | Sequence[float] | None = None,
    iou_threshold: float = 0.5,
    mode: str = "hard",
    sigma: float = 0.5,
    score_threshold: float = 0.001,
    names: Sequence[str] | None = None,
    colors: Sequence[str] | None = None,
    canvas: tuple[int, int] | None = None,
    image: torch.Tensor | None = None,
) -> NMSStepper:
    """Build the NMS stepper.

    Leave ``boxes`` and ``scores`` out for the lecture's dog scene (``DOG_SCENE``): two dogs,
    five boxes, IoUs 0.78 / 0.05 / 0.07 / 0.74 as on the slides.

    Args:
        boxes: Tensor[N, 4] candidate boxes in ``(x1, y1, x2, y2)`` pixels.
        scores: Tensor[N] their scores.
        iou_threshold: starting IoU threshold (hard NMS: suppress when IoU > it; linear
            soft-NMS: decay when IoU >= it).
        mode: ``"hard"``, ``"linear"`` or ``"gaussian"``.
        sigma: starting sigma of the gaussian soft-NMS.
        score_threshold: soft-NMS drops boxes whose score falls below this.
        names: optional name per box (default ``"#0"``, ``"#1"``, ...).
        colors: optional colour per box (default ``course_lib.viz.class_color(i)``).
        canvas: optional ``(width, height)`` of the drawing area in pixels.
        image: optional Tensor[C, H, W] drawn behind the boxes.

    Returns:
        The widget (an ``ipywidgets.VBox``); see ``NMSStepper`` for its attributes.

    Raises:
        ValueError: if only one of ``boxes``/``scores`` is given, the shapes do not match
            or ``mode`` is unknown.
    """
    if boxes is None and scores is None:
        boxes, scores = DOG_SCENE["boxes"], DOG_SCENE["scores"]
        names = DOG_SCENE["names"] if names is None else names
        colors = DOG_SCENE["colors"] if colors is None else colors
        canvas = DOG_SCENE["canvas"] if canvas is None else canvas
    elif boxes is None or scores is None:
        raise ValueError("give both boxes and scores, or neither for the lecture's dog scene")
    return NMSStepper(boxes, scores, iou_threshold=iou_threshold, mode=mode, sigma=sigma,
                      score_threshold=score_threshold, names=names, colors=colors,
                      canvas=canvas, image=image)
