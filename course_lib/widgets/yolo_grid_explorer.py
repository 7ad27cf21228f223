"""YOLO grid explorer: the S x S grid, the B boxes of each cell, and the boxes that survive.

The lecture's YOLO in three steps:

1. divide the image into an ``S x S`` grid;
2. each cell predicts ``B`` boxes (and one set of ``C`` class probabilities); a cell is
   *responsible* for an object if the object's centre falls in it (in practice S = 19, B = 5);
3. return the boxes above a confidence threshold (then, usually, NMS per class).

The left panel shows the grid, the ground-truth (GT) boxes with their centres, the responsible
cells (shaded) and B dots per cell, one per predicted box. A cell describes one object only
(``course_lib.models.yolo.one_box_per_cell``): an object whose cell already holds a larger one
is *dropped* (dashed red). The right panel shows the predicted boxes with a score of at least
the threshold, after per-class NMS if ticked, each with its score.

The predictions come from ``model.grid`` when a model is given, else they are *simulated*: a
tensor in the YOLO layout where each responsible cell has one good predictor (a slightly
jittered copy of its GT box, confidence about 0.9) and the other cells small random boxes of
low confidence. Either way they are decoded by ``yolo_decode`` and ``postprocess_yolo``.

Shape shorthand: ``S`` grid size, ``B`` boxes per cell, ``C`` classes, ``D = B*5 + C``
numbers per cell, ``G`` GT boxes, ``R`` responsible cells, ``K`` detections.

In a notebook::

    from course_lib.widgets import yolo_grid_explorer
    yolo_grid_explorer()                # a synthetic scene; or yolo_grid_explorer(image, target)
"""

from __future__ import annotations

from collections.abc import Mapping

import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch
from IPython.display import clear_output, display
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

from course_lib import viz
from course_lib.models.yolo import (
    one_box_per_cell,
    postprocess_yolo,
    responsible_cells,
    yolo_channels,
    yolo_decode,
    yolo_encode,
)
from course_lib.widgets.proposal_viewer import _default_scene, scene_and_boxes

__all__ = ["LECTURE_B", "LECTURE_S", "NMS_IOU", "YOLOGridExplorer", "simulate_yolo_output",
           "yolo_grid_explorer"]

LECTURE_S, LECTURE_B = 19, 5
"""The lecture's "in practice" grid: 19 x 19 cells, 5 boxes each."""
NMS_IOU = 0.5
"""IoU threshold of the per-class NMS."""
NUM_CLASSES = 3
"""C of the simulated predictions (the course's YOLO), raised to the largest GT label."""
MAX_DRAWN = 200
"""At most this many predicted boxes are drawn (the best ones)."""

GT_COLOR = "#1f77b4"
DROPPED_COLOR = "#d62728"
CELL_COLOR = "#ffdd00"


def simulate_yolo_output(gt_boxes: torch.Tensor, gt_labels: torch.Tensor, S: int, B: int,
                         C: int, image_size: tuple[int, int], seed: int = 0) -> torch.Tensor:
    """A made-up but plausible YOLOv1 output for one image, the same for the same arguments.

    Every cell gets B small random boxes with a confidence in ``[0, 0.4)`` and random class
    probabilities. Each responsible cell (of a box kept by ``yolo_encode``) instead gets one
    good predictor, its GT box slightly jittered with a confidence in ``[0.85, 0.95)``, B - 1
    worse copies with a confidence in ``[0.2, 0.5)``, and probability about 0.85 on its class.

    Args:
        gt_boxes (Tensor[G, 4]): GT boxes in ``(x1, y1, x2, y2)`` pixels.
        gt_labels (Tensor[G]): int64 labels in 1..C.
        S: grid size.
        B: boxes per cell.
        C: classes.
        image_size: ``(height, width)`` in pixels.
        seed: seed of the random numbers.

    Returns:
        Tensor[S, S, B*5 + C]: float32, in the layout of ``course_lib.models.yolo``.
    """
    gen = torch.Generator().manual_seed(seed)

    def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
        return low + (high - low) * torch.rand(*shape, generator=gen)

    # every cell: B small random boxes of low confidence, random class probabilities
    cell_boxes = torch.stack([
        uniform(0, 1, S, S, B), uniform(0, 1, S, S, B),  # x, y in the cell
        uniform(0.03, 0.2, S, S, B), uniform(0.03, 0.2, S, S, B),  # w, h of the image
        uniform(0, 0.4, S, S, B),  # conf
    ], dim=-1)  # (S, S, B, 5)
    probs = uniform(0, 1, S, S, C)
    probs = probs / probs.sum(dim=-1, keepdim=True)  # (S, S, C)

    # responsible cells: one good predictor, B - 1 worse ones
    target = yolo_encode({"boxes": gt_boxes, "labels": gt_labels}, S, B, C, image_size)
    rows, cols = torch.nonzero(target[..., 4] > 0, as_tuple=True)  # (R,), (R,)
    truth = target[rows, cols, :4]  # (R, 4): x, y, w, h of the GT box
    num = len(rows)
    good = torch.randint(B, (num,), generator=gen)  # (R,) which predictor is the good one
    is_good = torch.arange(B)[None, :] == good[:, None]  # (R, B)
    spread = torch.where(is_good, 0.03, 0.25)[..., None]  # (R, B, 1)
    xy = truth[:, None, :2] + spread * torch.randn(num, B, 2, generator=gen)  # (R, B, 2)
    wh = truth[:, None, 2:] * torch.exp(spread * torch.randn(num, B, 2, generator=gen))
    conf = torch.where(is_good, uniform(0.85, 0.95, num, B), uniform(0.2, 0.5, num, B))
    cell_boxes[rows, cols] = torch.cat([xy, wh, conf[..., None]], dim=-1)  # (R, B, 5)
    one_hot = target[rows, cols, 5 * B :]  # (R, C)
    probs[rows, cols] = 0.8 * one_hot + 0.2 * probs[rows, cols]
    return torch.cat([cell_boxes.flatten(-2), probs], dim=-1)  # (S, S, B*5 + C)


class YOLOGridExplorer(widgets.VBox):
    """The YOLO grid, its responsible cells, and the boxes kept after the threshold and NMS.

    Controls: ``S`` and ``B`` (IntSliders), ``preset`` (Button: S = 19, B = 5),
    ``conf_threshold`` (FloatSlider, score ``>=`` it is kept) and ``nms`` (Checkbox).
    Readout: ``readout`` (HTML). Plain results, updated on every change: ``C``,
    ``output_shape`` (``(S, S, B*5 + C)``), ``num_boxes`` (``S*S*B``), ``cells``
    (Tensor[G, 2], each GT box's ``(row, col)``), ``keep`` (Tensor[G] bool, from
    ``one_box_per_cell``), ``responsible`` (Tensor[R, 2], the cells of the kept boxes),
    ``num_responsible`` (R), ``num_dropped``; the predictions ``grid_output``
    (Tensor[S', S', B'*5 + C']), ``pred_S``, ``pred_B``, ``pred_C`` (the model's, or the
    sliders' when simulated), ``simulated`` (bool), ``candidates`` (``yolo_decode`` with the
    threshold), ``after_nms`` (``postprocess_yolo`` with the threshold and ``NMS_IOU``),
    ``num_kept``, ``num_after_nms`` and ``detections`` (the dict drawn: ``after_nms`` or
    ``candidates``, with ``"boxes"`` Tensor[K, 4], ``"scores"`` and ``"labels"`` Tensor[K]).
    Drawing: ``fig``, ``ax_grid`` and ``ax_pred`` shown in ``output``.
    """

    def __init__(self, image: torch.Tensor, gt_boxes: torch.Tensor, gt_labels: torch.Tensor,
                 num_classes: int, model: object | None = None, S: int = 7, B: int = 2,
                 conf_threshold: float = 0.5, nms: bool = True) -> None:
        self.image = image.detach().cpu()
        self.H, self.W = int(image.shape[1]), int(image.shape[2])
        self.gt_boxes = gt_boxes.detach().cpu().float()
        self.gt_labels = gt_labels.detach().cpu().to(torch.int64)
        self.model = model
        self.simulated = model is None
        self.C = num_classes if model is None else int(model.C)
        self._cache: dict[tuple[int, int], torch.Tensor] = {}  # (S, B) -> (S, S, D)

        self.S = widgets.IntSlider(value=S, min=2, max=20, description="grid S",
                                   continuous_update=False)
        self.B = widgets.IntSlider(value=B, min=1, max=6, description="boxes B",
                                   continuous_update=False)
        self.preset = widgets.Button(description=f"lecture: S = {LECTURE_S}, B = {LECTURE_B}",
                                     layout=widgets.Layout(width="180px"))
        self.conf_threshold = widgets.FloatSlider(
            value=conf_threshold, min=0.0, max=1.0, step=0.05, description="score \u2265",
            readout_format=".2f", continuous_update=False)
        self.nms = widgets.Checkbox(value=nms, description=f"NMS per class (IoU {NMS_IOU})",
                                    indent=False)
        self.readout = widgets.HTML()
        self.output = widgets.Output()

        with plt.ioff():
            self.fig, (self.ax_grid, self.ax_pred) = plt.subplots(
                1, 2, figsize=(7.2, 3.9), layout="constrained")
        plt.close(self.fig)  # shown by hand in self.output, never by pyplot
        handles = [Line2D([], [], color=GT_COLOR, lw=2, label="GT (centre: dot)"),
                   Line2D([], [], color=DROPPED_COLOR, lw=2, ls="--", label="dropped GT"),
                   Rectangle((0, 0), 1, 1, color=CELL_COLOR, alpha=0.5,
                             label="responsible cell"),
                   Line2D([], [], color="white", marker="o", ls="", markeredgecolor="black",
                          markersize=4, label="one of the B boxes")]
        self.fig.legend(handles=handles, loc="outside lower center", ncol=4, fontsize=7,
                        frameon=False)

        self._holding = False
        for control in (self.S, self.B, self.conf_threshold, self.nms):
            control.observe(lambda _: self._on_change(), names="value")
        self.preset.on_click(lambda _: self.use_preset())

        super().__init__([
            widgets.HBox([widgets.VBox([self.S, self.B]),
                          widgets.VBox([self.conf_threshold, self.nms]), self.preset]),
            self.readout,
            self.output,
        ])
        self.update()

    # ------------------------------------------------------------------ computing

    def _on_change(self) -> None:
        if not self._holding:
            self.update()

    def use_preset(self) -> None:
        """Set the lecture's S = 19 and B = 5 (one redraw)."""
        self._holding = True
        try:
            self.S.value, self.B.value = LECTURE_S, LECTURE_B
        finally:
            self._holding = False
        self.update()

    def _prediction(self) -> torch.Tensor:
        """The YOLO output for the right panel, Tensor[S', S', B'*5 + C'] (computed once)."""
        key = (self.pred_S, self.pred_B)
        if key not in self._cache:
            if self.simulated:
                self._cache[key] = simulate_yolo_output(
                    self.gt_boxes, self.gt_labels, self.pred_S, self.pred_B, self.C,
                    (self.H, self.W))
            else:
                self._cache[key] = _run_model(self.model, self.image)
        return self._cache[key]

    def update(self) -> None:
        """Recompute the grid, the responsible cells and the kept predictions; redraw."""
        S, B, size = self.S.value, self.B.value, (self.H, self.W)
        self.output_shape = (S, S, yolo_channels(B, self.C))
        self.num_boxes = S * S * B
        self.cells = responsible_cells(self.gt_boxes, S, size)  # (G, 2)
        self.keep = one_box_per_cell(self.gt_boxes, S, size)  # (G,)
        self.responsible = self.cells[self.keep]  # (R, 2), one kept box per occupied cell
        self.num_responsible = int(self.keep.sum())
        self.num_dropped = len(self.gt_boxes) - self.num_responsible

        if self.simulated:
            self.pred_S, self.pred_B, self.pred_C = S, B, self.C
        else:
            self.pred_S, self.pred_B, self.pred_C = (int(self.model.S), int(self.model.B),
                                                     int(self.model.C))
        self.grid_output = self._prediction()  # (S', S', D')
        threshold = float(self.conf_threshold.value)
        grid = (self.grid_output, self.pred_S, self.pred_B, self.pred_C, size)
        self.candidates = yolo_decode(*grid, conf_threshold=threshold)
        self.after_nms = postprocess_yolo(
            *grid, conf_threshold=threshold, nms_thresh=NMS_IOU,
            max_detections=self.pred_S * self.pred_S * self.pred_B)
        self.num_kept = len(self.candidates["boxes"])
        self.num_after_nms = len(self.after_nms["boxes"])
        self.detections = self.after_nms if self.nms.value else self.candidates

        self.readout.value = self._readout_html()
        self._draw()

    # ------------------------------------------------------------------ showing

    def _readout_html(self) -> str:
        S, B, C = self.S.value, self.B.value, self.C
        lines = [
            f"<b>output tensor S &times; S &times; (B&middot;5 + C) = {S} &times; {S} &times; "
            f"({B}&middot;5 + {C}) = {S} &times; {S} &times; {self.output_shape[2]}</b>, "
            f"S&middot;S&middot;B = <b>{self.num_boxes}</b> boxes; cells of "
            f"{self.W / S:.1f} &times; {self.H / S:.1f} px",
            f"responsible cells: <b>{self.num_responsible}</b> for {len(self.gt_boxes)} "
            f"objects",
        ]
        if self.num_dropped:
            lines[-1] += (f", <span style='color:{DROPPED_COLOR}'><b>{self.num_dropped} "
                          "dropped</b> (their cell holds a larger object; a cell describes "
                          "one object)</span>")
        source = "simulated" if self.simulated else "model"
        threshold = self.conf_threshold.value
        lines.append(f"{source} predictions: <b>{self.num_kept}</b> of "
                     f"{self.pred_S * self.pred_S * self.pred_B} boxes with score &ge; "
                     f"{threshold:.2f}, <b>{self.num_after_nms}</b> after NMS "
                     f"(IoU {NMS_IOU})")
        if not self.simulated and (self.pred_S, self.pred_B) != (S, B):
            lines.append(f"<span style='color:{DROPPED_COLOR}'>the predictions are for the "
                         f"model's S = {self.pred_S}, B = {self.pred_B}; the grid panel shows "
                         f"S = {S}, B = {B}</span>")
        return "<br>".join(lines)

    def _draw(self) -> None:
        self._draw_grid()
        self._draw_predictions()
        with self.output:
            clear_output(wait=True)
            display(self.fig)

    def _draw_grid(self) -> None:
        S, B = self.S.value, self.B.value
        cell_w, cell_h = self.W / S, self.H / S
        ax = self.ax_grid
        ax.clear()
        viz.show_image(ax, self.image)
        for row, col in self.responsible.tolist():
            ax.add_patch(Rectangle((col * cell_w, row * cell_h), cell_w, cell_h,
                                   facecolor=CELL_COLOR, alpha=0.45, edgecolor="none"))
        for i in range(1, S):
            ax.axhline(i * cell_h, color="white", linewidth=0.5, alpha=0.7)
            ax.axvline(i * cell_w, color="white", linewidth=0.5, alpha=0.7)
        # B dots per cell, in a row near the bottom of the cell
        offsets = (torch.arange(B) + 1) / (B + 1)  # (B,)
        grid = torch.arange(S, dtype=torch.float32)  # (S,)
        dots_x = (grid[None, :, None] + offsets) * cell_w  # (1, S, B): column, predictor
        dots_y = (grid[:, None, None] + 0.8) * cell_h  # (S, 1, 1): row
        dots_x, dots_y = torch.broadcast_tensors(dots_x, dots_y)  # (S, S, B) each
        ax.scatter(dots_x.flatten(), dots_y.flatten(), s=max(1.0, 60 / S), c="white",
                   edgecolors="black", linewidths=0.3, zorder=3)

        for keep, color, style in ((True, GT_COLOR, "-"), (False, DROPPED_COLOR, "--")):
            boxes = self.gt_boxes[self.keep == keep]  # (G', 4)
            viz.draw_boxes(ax, boxes, colors=color, linewidth=1.5, linestyle=style)
            centres = (boxes[:, :2] + boxes[:, 2:]) / 2  # (G', 2)
            ax.plot(centres[:, 0], centres[:, 1], "o", color=color, markeredgecolor="white",
                    markersize=4, zorder=4)
        ax.set_xlim(0, self.W)
        ax.set_ylim(self.H, 0)
        ax.set_title(f"{S} \u00d7 {S} grid, B = {B}: {self.num_responsible} responsible, "
                     f"{self.num_dropped} dropped", fontsize=9)

    def _draw_predictions(self) -> None:
        ax = self.ax_pred
        ax.clear()
        viz.show_image(ax, self.image)
        viz.draw_boxes(ax, self.gt_boxes, colors="white", linewidth=0.8, linestyle=":")
        scores = self.detections["scores"]
        best = scores.argsort(descending=True)[:MAX_DRAWN]  # (<= MAX_DRAWN,)
        viz.draw_boxes(ax, self.detections["boxes"][best], labels=self.detections["labels"][best],
                       scores=scores[best], linewidth=1.2)
        ax.set_xlim(0, self.W)
        ax.set_ylim(self.H, 0)
        source = "simulated" if self.simulated else "model"
        step = "after NMS" if self.nms.value else "before NMS"
        title = (f"{source} ({self.pred_S} \u00d7 {self.pred_S}, B = {self.pred_B}): "
                 f"{len(scores)} {step}")
        if len(scores) > MAX_DRAWN:
            title += f" (best {MAX_DRAWN} drawn)"
        ax.set_title(title, fontsize=9)


def _run_model(model: object, image: torch.Tensor) -> torch.Tensor:
    """``model.grid`` on one image resized to ``model.image_size``: Tensor[S, S, B*5 + C].

    The YOLO layout gives positions and sizes as fractions of the image, so the output
    describes the shown image whatever its size.
    """
    size = model.image_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    batch = image[None].float()  # (3, H, W) -> (1, 3, H, W)
    if tuple(batch.shape[2:]) != size:
        batch = torch.nn.functional.interpolate(batch, size=size, mode="bilinear",
                                                align_corners=False)
    parameters = getattr(model, "parameters", None)
    first = next(iter(parameters()), None) if callable(parameters) else None
    if first is not None:
        batch = batch.to(first.device)
    with torch.no_grad():
        output = model.grid(batch)  # (1, S, S, B*5 + C)
    expected = (1, int(model.S), int(model.S), yolo_channels(int(model.B), int(model.C)))
    if not isinstance(output, torch.Tensor) or tuple(output.shape) != expected:
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output)
        raise ValueError(f"model.grid must return a tensor (N, S, S, B*5 + C) = {expected}, "
                         f"got {shape}")
    return output[0].detach().cpu().float()


def _check_model(model: object) -> None:
    """Raise unless ``model`` has ``S``, ``B``, ``C``, ``image_size`` and ``grid``."""
    missing = [name for name in ("S", "B", "C", "image_size", "grid")
               if not hasattr(model, name)]
    if missing:
        raise ValueError(f"model must have attributes S, B, C, image_size and a method "
                         f"grid(images); {type(model).__name__} lacks {', '.join(missing)}")
    for name in ("S", "B", "C"):
        value = getattr(model, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"model.{name} must be a positive int, got {value!r}")


def _gt_labels(target: Mapping | None, num_boxes: int) -> torch.Tensor:
    """The target's ``"labels"`` as int64 Tensor[G] (all 1 when it has none)."""
    if target is None or "labels" not in target:
        return torch.ones(num_boxes, dtype=torch.int64)
    labels = torch.as_tensor(target["labels"]).to(torch.int64).reshape(-1)
    if labels.shape != (num_boxes,) or (num_boxes and int(labels.min()) < 1):
        raise ValueError(f"target['labels'] must be ({num_boxes},) ints >= 1 like the boxes, "
                         f"got {labels.tolist()}")
    return labels


def yolo_grid_explorer(image: torch.Tensor | None = None, target: Mapping | None = None,
                       model: object | None = None, S: int = 7, B: int = 2,
                       conf_threshold: float = 0.5, nms: bool = True,
                       index: int = 0) -> YOLOGridExplorer:
    """Build the YOLO grid explorer.

    Leave ``image`` and ``target`` out for image ``index`` of
    ``SyntheticShapes("test", ..., kind="detection", image_size=128)``.

    Args:
        image: Tensor[3, H, W] float in [0, 1].
        target: dict with ``"boxes"`` Tensor[G, 4] in ``(x1, y1, x2, y2)`` pixels and
            optionally ``"labels"`` Tensor[G] (1..C; all 1 without). ``None`` with an image:
            no ground truth.
        model: optional object with ints ``S``, ``B``, ``C``, ``image_size`` (int or
            ``(height, width)``) and ``grid(images: Tensor[N, 3, h, w]) ->
            Tensor[N, S, S, B*5 + C]``, the activated YOLO output (call ``model.eval()``
            first). The image is resized to ``image_size`` and ``grid`` is called once.
            Without a model the predictions are simulated (``simulate_yolo_output``) with
            ``C = max(3, largest label)``.
        S: starting grid size (2..20).
        B: starting boxes per cell (1..6).
        conf_threshold: starting score threshold, in [0, 1].
        nms: start with per-class NMS on.
        index: which synthetic scene to show when ``image`` is not given.

    Returns:
        The widget (an ``ipywidgets.VBox``); see ``YOLOGridExplorer`` for its attributes.

    Raises:
        ValueError: for an image that is not (3, H, W), a target without ``"boxes"`` (N, 4)
            or with labels that do not match them, a target without an image, S or B outside
            the sliders, a threshold outside [0, 1], a model without the attributes above or
            whose ``grid`` returns the wrong shape.
        TypeError: if ``image`` is not a tensor.
    """
    if image is None and target is None:
        image, target = _default_scene(index)
    image, gt_boxes = scene_and_boxes(image, target, index)
    gt_labels = _gt_labels(target, len(gt_boxes))
    for name, value, low, high in (("S", S, 2, 20), ("B", B, 1, 6)):
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"{name} must be an int in [{low}, {high}], got {value!r}")
    if not 0 <= conf_threshold <= 1:
        raise ValueError(f"conf_threshold must be in [0, 1], got {conf_threshold!r}")
    if model is not None:
        _check_model(model)
    num_classes = max(NUM_CLASSES, int(gt_labels.max()) if len(gt_labels) else 1)
    return YOLOGridExplorer(image, gt_boxes, gt_labels, num_classes, model=model, S=S, B=B,
                            conf_threshold=conf_threshold, nms=nms)
