"""Matplotlib drawing helpers: images, boxes, IoU overlaps and precision/recall curves.

Every helper draws onto an ``ax`` you pass in and returns what it drew, so a notebook can
compose figures freely and a test can count the artists. Nothing here imports ipywidgets;
the apps in ``course_lib.widgets`` build on these helpers.

Shape shorthand: ``N`` boxes, ``D`` ranked detections, ``C, H, W`` channels, height, width.
Boxes are ``(x1, y1, x2, y2)`` pixels like torchvision; the y axis points down, as in an image.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.colors import to_rgba
from matplotlib.image import AxesImage
from matplotlib.patches import PathPatch, Rectangle
from matplotlib.path import Path
from matplotlib.transforms import Affine2D

__all__ = [
    "PALETTE", "class_color", "draw_boxes", "draw_iou", "plot_pr_curve", "show_image",
]

# Matplotlib's "tab10" colours: distinct, colour-blind friendly, readable with white text.
PALETTE: tuple[str, ...] = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)

UNION_COLOR = "#dbe9f6"         # light blue: the union of two boxes
INTERSECTION_COLOR = "#f4a261"  # orange: their intersection


def class_color(label: int | torch.Tensor | np.integer) -> str:
    """The colour of a class (or of a box index), the same in every figure of the course.

    Args:
        label: an integer class label (a 0-d tensor is fine). Labels wrap around the
            10-colour palette.

    Returns:
        A hex colour string such as ``"#1f77b4"``.
    """
    return PALETTE[int(label) % len(PALETTE)]


def _as_numpy(x: Any) -> np.ndarray:
    """A tensor, array or nested sequence as a NumPy array (detached, on the CPU)."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _as_boxes(boxes: Any, name: str = "boxes") -> np.ndarray:
    """Validate ``boxes`` and return them as a float64 array of shape ``(N, 4)``."""
    array = _as_numpy(boxes).astype(np.float64)
    if array.size == 0:
        return array.reshape(0, 4)
    if array.ndim == 1 and array.shape[0] == 4:  # a single box
        array = array[None]
    if array.ndim != 2 or array.shape[1] != 4:
        raise ValueError(f"{name} must have shape (N, 4) in xyxy format, got {tuple(array.shape)}")
    return array


def _use_image_coordinates(ax: Axes) -> None:
    """Fit the view to what is drawn, with y pointing down and square pixels, like an image."""
    ax.autoscale_view()  # add_patch does not rescale the view by itself
    if not ax.yaxis_inverted():
        ax.invert_yaxis()
    ax.set_aspect("equal")


def show_image(ax: Axes, image: Any) -> AxesImage:
    """Show an image without ticks.

    Args:
        ax: the axes to draw on.
        image: a tensor ``(C, H, W)`` or ``(H, W)`` (torchvision layout), or an array
            ``(H, W, C)`` or ``(H, W)`` (matplotlib layout), with ``C`` 1, 3 or 4. Float
            images are clipped to ``[0, 1]``; ``uint8`` images are shown as they are.

    Returns:
        The ``AxesImage`` that was drawn.

    Raises:
        ValueError: if the image is not 2-D or 3-D with 1, 3 or 4 channels.
    """
    is_tensor = isinstance(image, torch.Tensor)
    array = _as_numpy(image)
    if array.ndim == 3 and is_tensor:
        array = array.transpose(1, 2, 0)  # (C, H, W) -> (H, W, C)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]  # (H, W, 1) -> (H, W)
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        layout = "(C, H, W) for a tensor" if is_tensor else "(H, W, C) for an array"
        raise ValueError(
            f"image must be (H, W) or {layout} with 1, 3 or 4 channels, "
            f"got {tuple(_as_numpy(image).shape)}"
        )
    if array.dtype != np.uint8:
        array = np.clip(array.astype(np.float32), 0.0, 1.0)
    if array.ndim == 2:  # one channel: grey levels on a fixed scale, not stretched
        shown = ax.imshow(array, cmap="gray", vmin=0, vmax=255 if array.dtype == np.uint8 else 1)
    else:
        shown = ax.imshow(array)
    ax.set_xticks([])
    ax.set_yticks([])
    return shown


def _caption(label: Any, score: Any, class_names: Sequence[str] | Mapping[int, str] | None) -> str:
    """The text drawn above a box: class name and/or score."""
    parts = []
    if label is not None:
        label = int(label)
        if class_names is not None and (
            label in class_names if isinstance(class_names, Mapping)
            else 0 <= label < len(class_names)
        ):
            parts.append(str(class_names[label]))
        else:
            parts.append(str(label))
    if score is not None:
        parts.append(f"{float(score):.2f}")
    return " ".join(parts)


def draw_boxes(
    ax: Axes,
    boxes: Any,
    labels: Any = None,
    scores: Any = None,
    colors: str | Sequence[Any] | None = None,
    class_names: Sequence[str] | Mapping[int, str] | None = None,
    linewidth: float = 2,
    linestyle: str = "-",
    alpha: float = 1.0,
    fill: bool = False,
) -> list[Rectangle]:
    """Draw boxes with a small caption (class name and/or score) above each one.

    Args:
        ax: the axes to draw on. The view is fitted to the boxes (unless autoscaling is
            off) with y pointing down, as in an image.
        boxes: Tensor[N, 4] (or array / nested list) in ``(x1, y1, x2, y2)`` pixels.
        labels: optional Tensor[N] of integer class labels; they pick the colours and
            appear in the captions.
        scores: optional Tensor[N] of confidences, shown with two decimals.
        colors: one colour for every box, or a sequence of N colours. By default the
            colour is ``class_color(labels[i])``, or ``class_color(i)`` without labels.
        class_names: optional names indexed by label (a list or a dict).
        linewidth: edge width in points.
        linestyle: matplotlib line style, e.g. ``"-"`` or ``"--"``.
        alpha: opacity of the edges and captions (the fill is lighter still).
        fill: also fill each box with a light shade of its colour.

    Returns:
        The N ``Rectangle`` patches, in box order (empty list for 0 boxes).

    Raises:
        ValueError: if ``boxes`` is not (N, 4) or ``labels``/``scores``/``colors`` do not
            have N entries.
    """
    array = _as_boxes(boxes)
    n = array.shape[0]
    label_list = None if labels is None else _as_numpy(labels).reshape(-1).tolist()
    score_list = None if scores is None else _as_numpy(scores).reshape(-1).tolist()
    for name, values in (("labels", label_list), ("scores", score_list)):
        if values is not None and len(values) != n:
            raise ValueError(f"{name} must have shape ({n},) to match boxes, got ({len(values)},)")
    if colors is None:
        color_list = [class_color(label_list[i] if label_list else i) for i in range(n)]
    elif isinstance(colors, str):
        color_list = [colors] * n
    else:
        color_list = list(colors)
        if len(color_list) != n:
            raise ValueError(f"colors must have {n} entries to match boxes, got {len(color_list)}")

    patches = []
    for i, (x1, y1, x2, y2) in enumerate(array):
        color = color_list[i]
        rect = Rectangle(
            (x1, y1), x2 - x1, y2 - y1,
            edgecolor=to_rgba(color, alpha),
            facecolor=to_rgba(color, 0.25 * alpha) if fill else "none",
            linewidth=linewidth, linestyle=linestyle,
        )
        ax.add_patch(rect)
        patches.append(rect)
        text = _caption(
            label_list[i] if label_list is not None else None,
            score_list[i] if score_list is not None else None,
            class_names,
        )
        if text:
            ax.text(
                x1, y1, text, fontsize=7, color="white", alpha=alpha, va="bottom", ha="left",
                bbox={"facecolor": color, "alpha": 0.8 * alpha, "pad": 1, "edgecolor": "none"},
                clip_on=True,
            )
    _use_image_coordinates(ax)
    return patches


def draw_iou(ax: Axes, box_a: Any, box_b: Any) -> dict[str, Any]:
    """Draw two boxes with their union (light blue) and intersection (orange) shaded.

    Args:
        ax: the axes to draw on (switched to image coordinates, y down).
        box_a: Tensor[4] (or a 4-sequence), ``(x1, y1, x2, y2)``; drawn in palette colour 0.
        box_b: Tensor[4], the second box; drawn in palette colour 1.

    Returns:
        A dict with the patches ``"union"`` (a ``PathPatch``), ``"intersection"`` (a
        ``Rectangle``, or ``None`` when the boxes do not overlap) and ``"boxes"`` (the two
        outline ``Rectangle`` patches), plus the areas ``"intersection_area"``,
        ``"union_area"`` (floats; their ratio is the IoU).

    Raises:
        ValueError: if a box does not have 4 coordinates.
    """
    a = _as_boxes(box_a, "box_a")
    b = _as_boxes(box_b, "box_b")
    if a.shape[0] != 1 or b.shape[0] != 1:
        raise ValueError(f"box_a and box_b must be single boxes (4,), got {a.shape} and {b.shape}")
    (ax1, ay1, ax2, ay2), (bx1, by1, bx2, by2) = a[0], b[0]

    # The union of two rectangles is drawn as one compound path of both, in one opaque colour.
    union_path = Path.make_compound_path(
        Path.unit_rectangle().transformed(_rect_transform(ax1, ay1, ax2, ay2)),
        Path.unit_rectangle().transformed(_rect_transform(bx1, by1, bx2, by2)),
    )
    union = PathPatch(union_path, facecolor=UNION_COLOR, edgecolor="none", label="union")
    ax.add_patch(union)

    ix1, iy1, ix2, iy2 = max(ax1, bx1), max(ay1, by1), min(ax2, bx2), min(ay2, by2)
    inter_w, inter_h = max(ix2 - ix1, 0.0), max(iy2 - iy1, 0.0)
    intersection = None
    if inter_w > 0 and inter_h > 0:
        intersection = Rectangle((ix1, iy1), inter_w, inter_h, facecolor=INTERSECTION_COLOR,
                                 edgecolor="none", label="intersection")
        ax.add_patch(intersection)

    outlines = draw_boxes(ax, np.stack([a[0], b[0]]), colors=[PALETTE[0], PALETTE[1]])
    outlines[0].set_label("box A")
    outlines[1].set_label("box B")

    inter_area = inter_w * inter_h
    union_area = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter_area
    return {
        "union": union,
        "intersection": intersection,
        "boxes": outlines,
        "intersection_area": float(inter_area),
        "union_area": float(union_area),
    }


def _rect_transform(x1: float, y1: float, x2: float, y2: float) -> Affine2D:
    """The affine map taking the unit square to the rectangle ``(x1, y1, x2, y2)``."""
    return Affine2D().scale(x2 - x1, y2 - y1).translate(x1, y1)


def _interpolated(precision: np.ndarray) -> np.ndarray:
    """Interpolated precision: the best precision at this recall or any higher one."""
    # running maximum from the right: p_interp[i] = max(precision[i:])
    return np.maximum.accumulate(precision[::-1])[::-1]


def plot_pr_curve(
    ax: Axes,
    precision: Any,
    recall: Any,
    ap: float | None = None,
    envelope: bool = True,
    label: str | None = None,
    samples: int | Sequence[float] | None = None,
) -> dict[str, Any]:
    """Plot a precision/recall curve, its interpolated envelope and the AP area under it.

    Args:
        ax: the axes to draw on; limits are set to the unit square (with a margin).
        precision: Tensor[D], precision after each ranked detection (highest score first),
            e.g. from ``course_lib.metrics.precision_recall_curve``.
        recall: Tensor[D], recall after each ranked detection (non-decreasing).
        ap: optional average precision to print in the legend.
        envelope: draw the interpolated envelope ``p_interp(r) = max_{r' >= r} p(r')`` as a
            step line and shade the area under it (the all-point AP).
        label: legend label of the raw curve (default ``"PR curve"``).
        samples: optionally mark the interpolated precision (the best precision at recall
            ``>= t``, 0 if recall never reaches ``t``) at these recall levels ``t``: a
            sequence of levels, or a number of evenly spaced ones (11 is VOC2007's rule,
            101 COCO's); their mean is that rule's AP.

    Returns:
        A dict of the artists drawn: ``"curve"`` (Line2D), and when asked ``"envelope"``
        (Line2D), ``"area"`` (PolyCollection) and ``"samples"`` (Line2D).

    Raises:
        ValueError: if ``precision`` and ``recall`` are not 1-D of the same length.
    """
    p = _as_numpy(precision).astype(np.float64)
    r = _as_numpy(recall).astype(np.float64)
    if p.ndim != 1 or r.ndim != 1 or p.shape != r.shape:
        raise ValueError(
            f"precision and recall must both have shape (D,), got {p.shape} and {r.shape}"
        )
    artists: dict[str, Any] = {}
    (artists["curve"],) = ax.plot(r, p, "o-", color=PALETTE[0], markersize=4,
                                  label=label or "PR curve")
    if envelope and p.size:
        p_interp = _interpolated(p)
        # the envelope holds p_interp[i] on (r[i-1], r[i]], starting from recall 0
        x = np.concatenate([[0.0], r])
        y = np.concatenate([p_interp[:1], p_interp])
        (artists["envelope"],) = ax.step(x, y, where="pre", color=PALETTE[3], linewidth=1.5,
                                         label="interpolated")
        area_label = "AP area" if ap is None else f"AP = {ap:.3f}"
        artists["area"] = ax.fill_between(x, y, step="pre", color=PALETTE[3], alpha=0.15,
                                          label=area_label)
    if samples is not None:
        levels = np.linspace(0.0, 1.0, samples) if np.ndim(samples) == 0 else np.asarray(samples)
        p_interp = _interpolated(p)
        # at recall level t: the envelope at the first point with recall >= t (0 if none)
        values = [p_interp[np.argmax(r >= t)] if np.any(r >= t) else 0.0 for t in levels]
        (artists["samples"],) = ax.plot(levels, values, ".", color=PALETTE[2], markersize=5,
                                        label=f"{len(levels)} recall levels")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.05)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    return artists
