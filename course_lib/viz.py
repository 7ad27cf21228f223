"""Matplotlib drawing helpers: images, boxes, masks, IoU overlaps, PR curves, training curves.

Every ``draw_*``/``plot_*`` helper draws onto an ``ax`` you pass in and returns what it drew, so
a notebook can compose figures freely and a test can count the artists; ``show_images`` and
``plot_history`` make a whole figure for you. Nothing here imports ipywidgets; the apps in
``course_lib.widgets`` build on these helpers.

Shape shorthand: ``B`` images, ``N`` boxes or instances, ``D`` ranked detections,
``C, H, W`` channels, height, width. Boxes are ``(x1, y1, x2, y2)`` pixels like torchvision;
the y axis points down, as in an image. A class keeps its colour (``class_color``) in every
figure: its boxes, its instance masks and its region of a semantic map.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.patches import Patch, PathPatch, Rectangle
from matplotlib.path import Path
from matplotlib.ticker import MaxNLocator
from matplotlib.transforms import Affine2D

__all__ = [
    "PALETTE", "class_color", "draw_boxes", "draw_iou", "draw_masks", "draw_semantic",
    "plot_history", "plot_pr_curve", "show_image", "show_images",
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


def _per_box(values: Any, n: int, name: str) -> np.ndarray | None:
    """``values`` as a 1-D array with one entry per box, or None when not given.

    Raises:
        ValueError: if there are not ``n`` entries.
    """
    if values is None:
        return None
    array = _as_numpy(values).reshape(-1)  # (N,)
    if array.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},) to match boxes, got ({array.shape[0]},)")
    return array


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


def _pixel_extent(height: int, width: int) -> tuple[float, float, float, float]:
    """The ``imshow`` extent that puts pixel ``(row i, column j)`` on ``[j, j+1] x [i, i+1]``.

    That is torchvision's box convention: the box ``(0, 0, W, H)`` frames the whole image and a
    box tight around a mask touches the outer edges of its pixels. (matplotlib's default would
    centre the pixels on integers instead, half a pixel off the boxes.)
    """
    return (0.0, float(width), float(height), 0.0)  # (left, right, bottom, top): y points down


def show_image(ax: Axes, image: Any) -> AxesImage:
    """Show an image without ticks.

    Args:
        ax: the axes to draw on.
        image: a tensor ``(C, H, W)`` or ``(H, W)`` (torchvision layout), or an array
            ``(H, W, C)`` or ``(H, W)`` (matplotlib layout), with ``C`` 1, 3 or 4. Float
            images are clipped to ``[0, 1]``; ``uint8`` images are shown as they are.
            Pixel ``(i, j)`` covers ``[j, j+1] x [i, i+1]``, so boxes in torchvision's
            convention line up with it: ``(0, 0, W, H)`` is the whole image.

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
    extent = _pixel_extent(*array.shape[:2])
    if array.ndim == 2:  # one channel: grey levels on a fixed scale, not stretched
        shown = ax.imshow(array, cmap="gray", vmin=0, vmax=255 if array.dtype == np.uint8 else 1,
                          extent=extent)
    else:
        shown = ax.imshow(array, extent=extent)
    ax.set_xticks([])
    ax.set_yticks([])
    return shown


def _color_list(colors: Any, label_list: list | None, n: int, what: str) -> list[Any]:
    """N colours: ``colors`` as given (one for all, or N), else by class label, else by index."""
    if colors is None:
        return [class_color(label_list[i] if label_list else i) for i in range(n)]
    if isinstance(colors, str):
        return [colors] * n
    color_list = list(colors)
    if len(color_list) != n:
        raise ValueError(f"colors must have {n} entries to match {what}, got {len(color_list)}")
    return color_list


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
    label_array, score_array = _per_box(labels, n, "labels"), _per_box(scores, n, "scores")
    label_list = None if label_array is None else label_array.tolist()
    score_list = None if score_array is None else score_array.tolist()
    color_list = _color_list(colors, label_list, n, "boxes")

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


# ============================================================ masks


def _as_masks(masks: Any, name: str = "masks") -> np.ndarray:
    """Validate instance masks and return them as a boolean array of shape ``(N, H, W)``."""
    array = _as_numpy(masks)
    if array.size == 0 and array.ndim < 3:  # [] or torch.zeros(0): no instances, no size
        return np.zeros((0, 0, 0), dtype=bool)
    shape = tuple(array.shape)
    if array.ndim == 4 and array.shape[1] == 1:
        array = array[:, 0]  # (N, 1, H, W) -> (N, H, W), e.g. Mask R-CNN's output
    elif array.ndim == 2:
        array = array[None]  # one mask (H, W) -> (1, H, W)
    if array.ndim != 3:
        raise ValueError(f"{name} must have shape (N, H, W) or (N, 1, H, W), got {shape}")
    if np.issubdtype(array.dtype, np.floating):
        return array >= 0.5  # probabilities -> binary, like torchvision's Mask R-CNN docs
    return array != 0


def draw_masks(
    ax: Axes,
    masks: Any,
    labels: Any = None,
    colors: str | Sequence[Any] | None = None,
    alpha: float = 0.5,
    contour: bool = True,
    linestyle: str = "solid",
    linewidth: float = 1.0,
) -> list[Artist]:
    """Overlay instance masks: a translucent fill and (optionally) an outline per instance.

    Draw the image first (``show_image``): the masks sit on the same pixel grid.

    Args:
        ax: the axes to draw on.
        masks: Tensor[N, H, W] (``uint8``/``bool``, a pixel belongs to instance ``i`` where
            ``masks[i]`` is non-zero) or float probabilities Tensor[N, H, W] or
            Tensor[N, 1, H, W] (Mask R-CNN's output), thresholded at ``p >= 0.5``. A single
            mask (H, W) counts as N = 1. Arrays work too.
        labels: optional Tensor[N] of class labels; they pick the colours.
        colors: one colour for every mask, or a sequence of N colours. By default the colour
            is ``class_color(labels[i])``, or ``class_color(i)`` without labels, as for boxes.
        alpha: opacity of the fill; 0 draws no fill (outlines only).
        contour: also outline each mask with a line along its pixel boundary.
        linestyle: line style of the outlines, e.g. ``"solid"`` or ``"dashed"``.
        linewidth: outline width in points.

    Returns:
        The artists drawn, instance by instance: its fill (an ``AxesImage``, when
        ``alpha > 0``) then its outline (a ``ContourSet``, when ``contour`` and the mask has
        a pixel). So 2N artists by default, and an empty list for N = 0.

    Raises:
        ValueError: if ``masks`` is not (N, H, W) or (N, 1, H, W), or ``labels``/``colors``
            do not have N entries.
    """
    binary = _as_masks(masks)  # (N, H, W) bool
    n = binary.shape[0]
    label_list = None if labels is None else _as_numpy(labels).reshape(-1).tolist()
    if label_list is not None and len(label_list) != n:
        raise ValueError(f"labels must have shape ({n},) to match masks, got ({len(label_list)},)")
    color_list = _color_list(colors, label_list, n, "masks")

    artists: list[Artist] = []
    height, width = binary.shape[1:]
    for mask, color in zip(binary, color_list, strict=True):
        if alpha > 0:
            rgba = np.zeros((height, width, 4), dtype=np.float32)  # transparent
            rgba[mask] = to_rgba(color, alpha)
            artists.append(ax.imshow(rgba, interpolation="nearest",
                                     extent=_pixel_extent(height, width)))
        if contour and mask.any():
            artists.append(_outline(ax, mask, color, linewidth, linestyle))
    return artists


def _outline(
    ax: Axes, mask: np.ndarray, color: Any, linewidth: float, linestyle: str, upsample: int = 4
) -> Artist:
    """Outline a (H, W) bool mask along its pixel edges (a contour of its 0/1 image)."""
    # The 0.5 level of a 0/1 image runs half way between pixel centres, i.e. along the pixel
    # edges, but cuts each corner diagonally. Contouring the mask enlarged ``upsample`` times
    # (each pixel -> an upsample x upsample block) shrinks those cuts to 1/(2 upsample) pixel.
    # Only the mask's bounding box (plus a 1-pixel margin) is enlarged, to keep it cheap.
    rows, cols = np.nonzero(mask)
    y0, y1 = max(rows.min() - 1, 0), min(rows.max() + 2, mask.shape[0])
    x0, x1 = max(cols.min() - 1, 0), min(cols.max() + 2, mask.shape[1])
    crop = mask[y0:y1, x0:x1].repeat(upsample, axis=0).repeat(upsample, axis=1)  # (kh, kw)
    # the centres of the small blocks; pixel (i, j) covers [j, j+1] x [i, i+1], as in show_image
    xs = x0 + (np.arange(crop.shape[1]) + 0.5) / upsample
    ys = y0 + (np.arange(crop.shape[0]) + 0.5) / upsample
    return ax.contour(xs, ys, crop.astype(np.float32), levels=[0.5], colors=[color],
                      linewidths=linewidth, linestyles=linestyle)


def _class_name(label: int, class_names: Sequence[str] | Mapping[int, str] | None) -> str:
    """The name of a class label, or the label itself when there is no name for it."""
    return _caption(label, None, class_names)


def draw_semantic(
    ax: Axes,
    semantic: Any,
    class_names: Sequence[str] | Mapping[int, str] | None = None,
    alpha: float | None = None,
    legend: bool = True,
    image: Any = None,
) -> AxesImage:
    """Draw a semantic segmentation map: each pixel in the colour of its class.

    Background (class 0) is transparent: you see the image underneath, or the axes' white
    background when there is no image. Class ``c > 0`` is drawn in ``class_color(c)``, the
    colour of its boxes and instance masks.

    Args:
        ax: the axes to draw on (ticks are removed).
        semantic: Tensor[H, W] (or [1, H, W]) of integer class labels, 0 for background,
            e.g. ``target["semantic"]`` or ``logits.argmax(0)``.
        class_names: optional names indexed by label (a list or a dict) for the legend.
        alpha: opacity of the class colours; default 1 without an image, 0.5 over one.
        legend: add a legend (outside the axes, on the right) with one entry per class
            present in the map, background excluded.
        image: optional image drawn underneath (anything ``show_image`` accepts) of the
            same height and width.

    Returns:
        The ``AxesImage`` of the map (the image underneath, if any, is ``ax.images[0]``).

    Raises:
        ValueError: if ``semantic`` is not an integer (H, W) map of labels >= 0, or
            ``image`` has another height and width.
    """
    array = _as_numpy(semantic)
    shape = tuple(array.shape)
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]  # (1, H, W) -> (H, W)
    if array.ndim != 2 or not (np.issubdtype(array.dtype, np.integer) or array.dtype == bool):
        raise ValueError(
            f"semantic must be an integer map of class labels (H, W), got {shape} "
            f"{array.dtype}; for class scores (C, H, W) take .argmax(0) first"
        )
    array = array.astype(np.int64)
    if array.size and array.min() < 0:
        raise ValueError(f"semantic labels must be >= 0 (0 = background), got {array.min()}")
    if alpha is None:
        alpha = 1.0 if image is None else 0.5

    if image is not None:
        under = show_image(ax, image)
        if under.get_array().shape[:2] != array.shape:
            raise ValueError(
                f"image must have the height and width of semantic {array.shape}, "
                f"got {under.get_array().shape[:2]}"
            )
    present = [int(c) for c in np.unique(array) if c != 0]
    # a lookup table: row c is the RGBA colour of class c; row 0 (background) stays transparent
    lut = np.zeros((int(array.max(initial=0)) + 1, 4), dtype=np.float32)
    for c in present:
        lut[c] = to_rgba(class_color(c), alpha)
    shown = ax.imshow(lut[array], interpolation="nearest",  # (H, W) -> (H, W, 4)
                      extent=_pixel_extent(*array.shape))
    ax.set_xticks([])
    ax.set_yticks([])
    if legend and present:
        handles = [Patch(facecolor=class_color(c), label=_class_name(c, class_names))
                   for c in present]
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0),
                  borderaxespad=0.0, fontsize=7, frameon=False)
    return shown


# ============================================================ a grid of images


def _image_list(images: Any) -> list[Any]:
    """A batch (Tensor[B, C, H, W] or array [B, H, W, C]), one image or a list, as a list."""
    if isinstance(images, torch.Tensor | np.ndarray):
        return list(images) if images.ndim == 4 else [images]
    return list(images)


def _per_image(values: Any, n: int, name: str) -> list[Any]:
    """``targets``/``predictions``/``titles`` as a list of n entries (``None`` -> all None)."""
    if values is None:
        return [None] * n
    if isinstance(values, Mapping | str):
        values = [values]  # one dict (or one title) for one image
    values = list(values)
    if len(values) != n:
        raise ValueError(f"{name} must have one entry per image ({n}), got {len(values)}")
    return values


def show_images(
    images: Any,
    targets: Sequence[Mapping[str, Any]] | None = None,
    predictions: Sequence[Mapping[str, Any]] | None = None,
    ncols: int = 4,
    class_names: Sequence[str] | Mapping[int, str] | None = None,
    titles: Sequence[str] | None = None,
    figsize: tuple[float, float] | None = None,
    masks: bool = True,
    score_threshold: float = 0.0,
) -> tuple[Figure, np.ndarray]:
    """A grid of images with their ground truth (solid) and predictions (dashed).

    Ground truth: boxes with solid edges and, when ``masks``, filled instance masks. The
    boxes are captioned with class names unless there are predictions too (then the colour
    tells the class and the captions belong to the predictions). Predictions: dashed boxes
    captioned "name score" and, when they carry ``"masks"``, dashed mask outlines.

    Args:
        images: Tensor[B, 3, H, W], a list of B images Tensor[3, H, W] (float in [0, 1], sizes
            may differ), or anything else ``show_image`` accepts, one per image.
        targets: optional list of B dicts with ``"boxes"`` Tensor[N, 4] xyxy, ``"labels"``
            Tensor[N] int64 and optionally ``"masks"`` Tensor[N, H, W] uint8.
        predictions: optional list of B dicts with ``"boxes"`` Tensor[D, 4], ``"labels"``
            Tensor[D], ``"scores"`` Tensor[D] and optionally ``"masks"`` Tensor[D, 1, H, W]
            probabilities (thresholded at 0.5).
        ncols: at most this many images per row.
        class_names: optional names indexed by label (a list or a dict) for the captions.
        titles: optional list of B titles.
        figsize: figure size in inches; default 2.5 per image, width at most 12.
        masks: draw the masks (target fills, prediction outlines) when present.
        score_threshold: hide predictions with ``score < score_threshold``.

    Returns:
        ``(fig, axes)``: the figure and a 2-D array (rows, columns) of its axes, all with
        the axis lines off; the cells after the last image are left blank.

    Raises:
        ValueError: if there are no images, or ``targets``/``predictions``/``titles`` do
            not have one entry per image (or any input has a bad shape).
    """
    image_list = _image_list(images)
    n = len(image_list)
    if n == 0:
        raise ValueError("images must hold at least one image, got 0")
    target_list = _per_image(targets, n, "targets")
    prediction_list = _per_image(predictions, n, "predictions")
    title_list = _per_image(titles, n, "titles")

    ncols = max(1, min(int(ncols), n))
    nrows = math.ceil(n / ncols)
    if figsize is None:
        size = min(2.5, 12 / ncols)
        figsize = (size * ncols, size * nrows)
    fig, axes = plt.subplots(nrows, ncols, figsize=figsize, squeeze=False)  # (rows, cols)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        show_image(ax, image_list[i])
        limits = ax.get_xlim(), ax.get_ylim()  # the image's extent
        target, prediction = target_list[i], prediction_list[i]
        if target is not None:
            labels = target.get("labels")
            if masks and target.get("masks") is not None:
                draw_masks(ax, target["masks"], labels=labels, alpha=0.4)
            if prediction is None:  # captions: class names
                draw_boxes(ax, target["boxes"], labels=labels, class_names=class_names)
            else:  # class colours without captions: the predictions carry the captions
                colors = None if labels is None else [
                    class_color(c) for c in _as_numpy(labels).reshape(-1)
                ]
                draw_boxes(ax, target["boxes"], colors=colors)
        if prediction is not None:
            _draw_prediction(ax, prediction, class_names, masks, score_threshold)
        ax.set_xlim(limits[0])  # boxes reaching outside do not shrink the image in its cell
        ax.set_ylim(limits[1])
        if title_list[i] is not None:
            ax.set_title(str(title_list[i]), fontsize=9)
    fig.tight_layout()
    return fig, axes


def _draw_prediction(
    ax: Axes,
    prediction: Mapping[str, Any],
    class_names: Sequence[str] | Mapping[int, str] | None,
    masks: bool,
    score_threshold: float,
) -> None:
    """Dashed boxes (and dashed mask outlines) of the predictions scoring >= the threshold."""
    boxes = _as_boxes(prediction["boxes"], "predictions boxes")  # (D, 4)
    keep = np.ones(boxes.shape[0], dtype=bool)
    scores = _per_box(prediction.get("scores"), boxes.shape[0], "predictions scores")
    if scores is not None:
        keep = scores >= score_threshold
        scores = scores[keep]
    labels = _per_box(prediction.get("labels"), boxes.shape[0], "predictions labels")
    if labels is not None:
        labels = labels[keep]
    if masks and prediction.get("masks") is not None:
        binary = _as_masks(prediction["masks"], "predictions masks")  # (D, H, W)
        if binary.shape[0] != keep.shape[0]:
            raise ValueError(f"predictions masks must have {keep.shape[0]} masks to match "
                             f"boxes, got {binary.shape[0]}")
        draw_masks(ax, binary[keep], labels=labels, alpha=0.0, linestyle="dashed")
    draw_boxes(ax, boxes[keep], labels=labels, scores=scores, class_names=class_names,
               linestyle="--", linewidth=1.5)


# ============================================================ training curves

# the COCO headline numbers: plotted by default when an eval_fn returns all 12 COCO stats
COCO_HEADLINE = ("AP", "AP50", "AP75")


def _history_field(history: Any, name: str, default: Any) -> Any:
    """``history.name`` (a ``train.History``) or ``history[name]`` (a dict), else default."""
    value = history.get(name) if isinstance(history, Mapping) else getattr(history, name, None)
    return default if value is None else value


def _curve_values(values: Any, name: str) -> np.ndarray:
    """A per-step or per-epoch series as a float array of shape ``(T,)``."""
    array = _as_numpy(values).astype(np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a list of numbers (T,), got shape {array.shape}")
    return array


def _smooth(values: np.ndarray) -> np.ndarray:
    """A light exponential moving average (span about 2% of the run), bias-corrected."""
    span = max(1.0, len(values) / 50)
    beta = 1.0 - 1.0 / span  # 0 (no smoothing) for runs shorter than 100 steps
    smoothed = np.empty_like(values)
    average = 0.0
    for t, value in enumerate(values):
        average = beta * average + (1 - beta) * value
        smoothed[t] = average / (1 - beta ** (t + 1))  # remove the bias towards the start at 0
    return smoothed


def plot_history(
    history: Any,
    ax: Axes | Sequence[Axes] | None = None,
    log: bool = False,
    metrics: Sequence[str] | None = None,
) -> tuple[Figure, np.ndarray]:
    """Plot a training run: the losses per step and, if it was evaluated, metrics per epoch.

    Each named loss (``"loss"``, the total, in black; the others in palette colours) is drawn
    per optimisation step, raw and faint, with a lightly smoothed line on top, and its epoch
    means as dots at the middle of each epoch.

    Args:
        history: a ``course_lib.train.History`` or a dict with the same keys: ``losses``
            (dict name -> list[T] per step), ``epoch_losses`` (dict name -> list[E] per
            epoch), ``evals`` (list[E] of dicts metric -> float, may be empty), ``epochs_done``
            and ``stopped_early`` (the others are optional).
        ax: the axes for the losses, or a pair ``(loss_ax, eval_ax)``. By default a new figure
            with one axes, or two side by side when there are evals. With a single axes
            given, the evals are not drawn.
        log: use a log scale for the losses.
        metrics: the eval metrics to plot; default every key of the evals, except when they
            are COCO stats (12 keys): then ``"AP"``, ``"AP50"`` and ``"AP75"``. Undefined
            COCO values (-1) are left out.

    Returns:
        ``(fig, axes)``: the figure and a 1-D array of the axes drawn on (losses, then evals
        if drawn).

    Raises:
        TypeError: if ``history`` has no ``losses``.
        ValueError: if a series is not a flat list of numbers.
    """
    if not isinstance(history, Mapping) and not hasattr(history, "losses"):
        raise TypeError(f"history must be a train.History or a dict, got {type(history).__name__}")
    losses = {name: _curve_values(v, f"losses[{name!r}]")
              for name, v in _history_field(history, "losses", {}).items()}
    epoch_losses = {name: _curve_values(v, f"epoch_losses[{name!r}]")
                    for name, v in _history_field(history, "epoch_losses", {}).items()}
    evals = list(_history_field(history, "evals", []))

    if ax is None:
        ncols = 2 if evals else 1
        fig, axes = plt.subplots(1, ncols, figsize=(5 * ncols, 3.2), squeeze=False)
        axes = axes[0]
    else:
        axes = np.array([ax] if isinstance(ax, Axes) else list(ax), dtype=object)
        fig = axes[0].figure
    loss_ax = axes[0]

    _plot_losses(loss_ax, losses, epoch_losses, log)
    title = "training loss"
    if _history_field(history, "stopped_early", False):
        title += f" (stopped early after {_history_field(history, 'epochs_done', 0)} epochs)"
    loss_ax.set_title(title, fontsize=10)
    if len(axes) > 1:
        _plot_evals(axes[1], evals, metrics)
    if ax is None:
        fig.tight_layout()
    return fig, axes


def _plot_losses(
    ax: Axes, losses: dict[str, np.ndarray], epoch_losses: dict[str, np.ndarray], log: bool
) -> None:
    """The losses per step (raw faint, smoothed) and their epoch means (dots)."""
    names = list(dict.fromkeys([*losses, *epoch_losses]))  # in order, no repeats
    names.sort(key=lambda name: name != "loss")  # the total first (a stable sort)
    num_steps = max((len(v) for v in losses.values()), default=0)
    num_epochs = max((len(v) for v in epoch_losses.values()), default=0)
    if num_steps == 0 and num_epochs == 0:
        ax.text(0.5, 0.5, "no training steps yet", ha="center", va="center", color="grey",
                transform=ax.transAxes)
        ax.set_xticks([])
        ax.set_yticks([])
        return
    steps_per_epoch = num_steps / num_epochs if num_epochs else 0.0
    parts = [name for name in names if name != "loss"]
    for name in names:
        color = "black" if name == "loss" else PALETTE[parts.index(name) % len(PALETTE)]
        step_values = losses.get(name, np.zeros(0))
        if len(step_values):
            steps = np.arange(1, len(step_values) + 1)
            ax.plot(steps, step_values, color=color, alpha=0.25, linewidth=0.8)
            ax.plot(steps, _smooth(step_values), color=color, label=name,
                    linewidth=1.8 if name == "loss" else 1.2)
        epoch_values = epoch_losses.get(name, np.zeros(0))
        if len(epoch_values):
            epochs = np.arange(len(epoch_values))
            # on a step axis, at the middle of each epoch; without steps, at epochs 1..E
            x = (epochs + 0.5) * steps_per_epoch if num_steps else epochs + 1
            ax.plot(x, epoch_values, "o" if num_steps else "o-", color=color, markersize=5,
                    markerfacecolor="white", markeredgewidth=1.2,
                    label=None if len(step_values) else name)
    if num_steps and num_epochs:  # one legend entry for all the dots
        ax.plot([], [], "o", color="grey", markersize=5, markerfacecolor="white",
                markeredgewidth=1.2, label="epoch mean")
    ax.set_xlabel("step" if num_steps else "epoch")
    ax.set_ylabel("loss")
    if log:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper right")


def _plot_evals(ax: Axes, evals: list[Mapping[str, float]], metrics: Sequence[str] | None) -> None:
    """Each eval metric per epoch, as dots joined by lines."""
    if metrics is None:
        keys = list(dict.fromkeys(key for e in evals for key in e))  # in order, no repeats
        is_coco = set(COCO_HEADLINE) <= set(keys) and len(keys) >= 12
        metrics = [k for k in keys if k in COCO_HEADLINE] if is_coco else keys
    if not evals or not metrics:
        ax.text(0.5, 0.5, "no evaluations", ha="center", va="center", color="grey",
                transform=ax.transAxes)
        ax.set_xticks([])
        ax.set_yticks([])
        return
    epochs = np.arange(1, len(evals) + 1)
    for k, name in enumerate(metrics):
        values = np.array([float(e.get(name, np.nan)) for e in evals])  # (E,)
        values[values == -1.0] = np.nan  # COCO's "undefined"
        ax.plot(epochs, values, "o-", color=PALETTE[k % len(PALETTE)], markersize=4,
                linewidth=1.2, label=name)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("metric")
    ax.set_title("evaluation", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
