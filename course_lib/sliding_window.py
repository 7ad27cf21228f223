"""Sliding windows: the naive detector, and how many boxes it would have to look at.

The lecture's naive approach to detection applies a CNN to many crops of the image and lets it
classify each crop as an object or as background. Two questions follow:

* **How many boxes are there?** A box of ``h x w`` pixels fits at ``(H - h + 1)(W - w + 1)``
  positions in an ``H x W`` image; summed over every size that is
  ``H(H+1)/2 * W(W+1)/2`` (:func:`count_windows`): 57,768,120,000 for 800 x 600.
* **How many does a practical search look at?** A few sizes and aspect ratios on a stride grid
  (:func:`count_windows_strided`) — and even that is slow, because every window is one CNN
  evaluation (:func:`sliding_window_detect`).

Window convention (shared by :func:`count_windows_strided`, :func:`window_grid` and
:func:`sliding_window_detect`): for a size ``s`` and an aspect ratio ``r = w / h`` the window
is ``w = round(s * sqrt(r))`` by ``h = round(s / sqrt(r))`` pixels (so its area stays about
``s²``); its top-left corner runs over ``x = 0, stride, 2 stride, ...`` and
``y = 0, stride, ...`` as long as the window stays fully inside the image. That gives
``floor((W - w) / stride) + 1`` columns and ``floor((H - h) / stride) + 1`` rows, and no window
at all when ``w > W`` or ``h > H``.

Shape shorthand: H x W image, N windows, C classes, S the classifier's input side.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from course_lib.nms import batched_nms, nms

__all__ = ["count_windows", "count_windows_brute_force", "count_windows_strided",
           "sliding_window_detect", "window_grid", "window_shape"]


def _check_positive_int(value, name: str) -> int:
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a single integer, got a tensor of shape "
                             f"{tuple(value.shape)}")
        value = value.item()
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def _as_list(values, name: str) -> list[float]:
    """A Python list from a 1-D tensor, a sequence or a single number."""
    if isinstance(values, Tensor):
        if values.dim() > 1:
            raise ValueError(f"{name} must be a 1-D tensor, got shape {tuple(values.shape)}")
        return [float(v) for v in values.reshape(-1).tolist()]
    if isinstance(values, int | float):
        return [float(values)]
    return [float(v) for v in values]


def count_windows(H: int, W: int) -> int:
    """The number of boxes of every size and position in an ``H x W`` image (stride 1).

    A box of ``h x w`` pixels fits at ``(H - h + 1) * (W - w + 1)`` positions; summing over
    ``h = 1..H`` and ``w = 1..W`` gives ``H(H+1)/2 * W(W+1)/2``.

    Args:
        H: image height in pixels (>= 1).
        W: image width in pixels (>= 1).

    Returns:
        int: the count (exact; Python ints do not overflow).

    Raises:
        ValueError: if ``H`` or ``W`` is not a positive integer.

    Example:
        >>> count_windows(600, 800)
        57768120000
    """
    H, W = _check_positive_int(H, "H"), _check_positive_int(W, "W")
    return (H * (H + 1) // 2) * (W * (W + 1) // 2)


def count_windows_brute_force(H: int, W: int) -> int:
    """:func:`count_windows` by enumerating every ``(x1, y1, x2, y2)`` box: the slow oracle."""
    H, W = _check_positive_int(H, "H"), _check_positive_int(W, "W")
    return sum(1 for y1 in range(H) for y2 in range(y1 + 1, H + 1)
               for x1 in range(W) for x2 in range(x1 + 1, W + 1))


def window_shape(size: float, aspect_ratio: float) -> tuple[int, int]:
    """``(h, w)`` of the window of ``size`` and ``aspect_ratio = w / h``.

    ``w = round(size * sqrt(aspect_ratio))`` and ``h = round(size / sqrt(aspect_ratio))``.

    Raises:
        ValueError: if the size or the ratio is not positive, or a side rounds to 0 pixels.
    """
    if not size > 0 or not aspect_ratio > 0:
        raise ValueError(f"sizes and aspect_ratios must be > 0, got size {size!r} and "
                         f"aspect ratio {aspect_ratio!r}")
    root = math.sqrt(aspect_ratio)
    w, h = round(size * root), round(size / root)
    if w < 1 or h < 1:
        raise ValueError(f"size {size!r} with aspect ratio {aspect_ratio!r} gives a "
                         f"{h} x {w} window; every side must be at least 1 pixel")
    return h, w


def _positions(length: int, window: int, stride: int) -> int:
    """How many ``stride``-spaced starts keep a ``window`` fully inside ``length`` pixels."""
    return 0 if window > length else (length - window) // stride + 1


def count_windows_strided(H: int, W: int, sizes: Tensor | Sequence[float],
                          aspect_ratios: Tensor | Sequence[float], stride: int) -> int:
    """The number of windows a practical sliding-window search evaluates.

    For each size ``s`` and each aspect ratio ``r`` (every combination), the window is
    ``w = round(s * sqrt(r))`` by ``h = round(s / sqrt(r))`` pixels and its top-left corner
    runs over a grid with spacing ``stride``, the window fully inside the image:
    ``(floor((W - w) / stride) + 1) * (floor((H - h) / stride) + 1)`` positions, or 0 when the
    window does not fit.

    Args:
        H: image height in pixels (>= 1).
        W: image width in pixels (>= 1).
        sizes (Tensor[K] or sequence): window sizes in pixels.
        aspect_ratios (Tensor[R] or sequence): width / height ratios.
        stride: step between neighbouring windows, in pixels (>= 1).

    Returns:
        int: the total over the ``K * R`` window shapes.

    Raises:
        ValueError: for a non-positive ``H``, ``W``, ``stride``, size or ratio.
    """
    H, W = _check_positive_int(H, "H"), _check_positive_int(W, "W")
    stride = _check_positive_int(stride, "stride")
    total = 0
    for s in _as_list(sizes, "sizes"):
        for r in _as_list(aspect_ratios, "aspect_ratios"):
            h, w = window_shape(s, r)
            total += _positions(W, w, stride) * _positions(H, h, stride)
    return total


def window_grid(H: int, W: int, size: float, aspect_ratio: float = 1.0,
                stride: int = 1) -> Tensor:
    """Every window of one shape on the stride grid, row by row.

    Returns:
        Tensor[N, 4] float32: ``(x1, y1, x2, y2)`` pixel boxes, N as in
        :func:`count_windows_strided` for this one shape (0 when it does not fit).
    """
    H, W = _check_positive_int(H, "H"), _check_positive_int(W, "W")
    stride = _check_positive_int(stride, "stride")
    h, w = window_shape(size, aspect_ratio)
    ys = torch.arange(_positions(H, h, stride), dtype=torch.float32) * stride   # (ny,)
    xs = torch.arange(_positions(W, w, stride), dtype=torch.float32) * stride   # (nx,)
    y1, x1 = torch.meshgrid(ys, xs, indexing="ij")                              # (ny, nx) each
    x1, y1 = x1.reshape(-1), y1.reshape(-1)                                     # (N,)
    return torch.stack([x1, y1, x1 + w, y1 + h], dim=1)                         # (N, 4)


@torch.no_grad()
def _classify_crops(model: nn.Module, crops: Tensor, input_size: int,
                    background: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Scores, labels and window-relative boxes of a batch of crops (N, 3, h, w)."""
    crops = F.interpolate(crops, size=(input_size, input_size), mode="bilinear",
                          align_corners=False, antialias=crops.shape[-1] > input_size)
    logits, box_pred = model(crops)                     # (N, 3, S, S) -> (N, C), (N, 4)
    probs = logits.softmax(dim=1)
    if background:  # class 0 is "nothing here": score the best object class
        scores, labels = probs[:, 1:].max(dim=1)
        labels = labels + 1
    else:
        scores, labels = probs.max(dim=1)
    return scores, labels, box_pred


@torch.no_grad()
def sliding_window_detect(
    model: nn.Module,
    image: Tensor,
    window_sizes: Sequence[float] = (32, 48, 64),
    aspect_ratios: Sequence[float] = (1.0,),
    stride: int = 8,
    score_threshold: float = 0.5,
    iou_threshold: float = 0.3,
    background: bool = True,
    use_box_head: bool = True,
    class_agnostic: bool = True,
    batch_size: int = 256,
    input_size: int | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Run an image classifier over every window of a few shapes, then NMS.

    Every window (see the module docstring for the grid) is cut out of the image, resized
    to the classifier's input size and classified; the crops are cut with ``Tensor.unfold``
    (a view, no copy) and classified in batches. A window scores the probability of its best
    object class. Windows scoring ``>= score_threshold`` go through NMS.

    Args:
        model: a classifier ``images (B, 3, S, S) -> (class_logits (B, C), boxes (B, 4))``,
            such as :class:`course_lib.models.cls_loc.ClsLocNet`; its ``boxes`` are
            ``(cx, cy, w, h)`` relative to the crop, in [0, 1]. Put it in eval mode first.
        image (Tensor[3, H, W]): the image, float in [0, 1].
        window_sizes: window sizes ``s`` in pixels.
        aspect_ratios: ratios ``r = w / h``; every size is used with every ratio.
        stride: step of the window grid, in pixels.
        score_threshold: keep windows whose score is at least this.
        iou_threshold: NMS suppresses a box that overlaps a better one by more than this.
        background: class 0 of the model means "background": the score is the best of the
            other classes. ``False`` for a classifier that only knows objects (its score is
            then its top softmax probability — high almost everywhere).
        use_box_head: report the box the model regresses inside each window (mapped back to
            image pixels) instead of the window itself.
        class_agnostic: one NMS over all classes (``nms``); ``False`` suppresses only within
            a class (``batched_nms``).
        batch_size: crops per forward pass.
        input_size: the classifier's input side S; default ``model.image_size``.

    Returns:
        ``(boxes, scores, labels, score_map)``: boxes Tensor[D, 4] xyxy pixels, scores
        Tensor[D] and labels Tensor[D] int64 of the D detections kept by NMS (best first),
        and score_map Tensor[H, W]: at each pixel, the best score of any window whose centre
        lies in the ``stride x stride`` cell around that pixel (0 where no window is
        centred), over all window shapes. All on the image's device.

    Raises:
        ValueError: if the image is not (3, H, W) or a window parameter is invalid.
    """
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"image must have shape (3, H, W), got {tuple(image.shape)}")
    stride = _check_positive_int(stride, "stride")
    size = int(input_size if input_size is not None else model.image_size)
    device = next(model.parameters()).device
    image = image.to(device)
    _, H, W = image.shape
    score_map = torch.zeros(H, W, device=device)
    all_boxes, all_scores, all_labels = [], [], []
    for s in _as_list(window_sizes, "window_sizes"):
        for r in _as_list(aspect_ratios, "aspect_ratios"):
            h, w = window_shape(s, r)
            if h > H or w > W:
                continue
            # (3, H, W) -> (3, ny, nx, h, w): every window, as a view of the image
            windows = image.unfold(1, h, stride).unfold(2, w, stride)
            ny, nx = windows.shape[1:3]
            rows_per_batch = max(1, batch_size // nx)
            scores, labels, rel = [], [], []
            for r0 in range(0, ny, rows_per_batch):
                chunk = windows[:, r0:r0 + rows_per_batch]               # (3, n, nx, h, w)
                crops = chunk.permute(1, 2, 0, 3, 4).reshape(-1, 3, h, w)  # (n * nx, 3, h, w)
                sc, lb, bx = _classify_crops(model, crops, size, background)
                scores.append(sc)
                labels.append(lb)
                rel.append(bx)
            scores, labels, rel = torch.cat(scores), torch.cat(labels), torch.cat(rel)  # (N,)
            boxes = window_grid(H, W, s, r, stride).to(device)             # (N, 4), row-major
            if use_box_head:  # (cx, cy, w, h) relative to the window -> image pixels
                x1, y1 = boxes[:, 0], boxes[:, 1]
                cx, cy = x1 + rel[:, 0] * w, y1 + rel[:, 1] * h
                bw, bh = rel[:, 2] * w, rel[:, 3] * h
                boxes = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1)
                boxes[:, 0::2] = boxes[:, 0::2].clamp(0, W)
                boxes[:, 1::2] = boxes[:, 1::2].clamp(0, H)
            _paint_score_map(score_map, scores.reshape(ny, nx), h, w, stride)
            all_boxes.append(boxes)
            all_scores.append(scores)
            all_labels.append(labels)
    if not all_boxes:
        empty = torch.zeros(0, device=device)
        return (empty.reshape(0, 4), empty, empty.long(), score_map)
    boxes, scores = torch.cat(all_boxes), torch.cat(all_scores)
    labels = torch.cat(all_labels)
    confident = scores >= score_threshold
    boxes, scores, labels = boxes[confident], scores[confident], labels[confident]
    if class_agnostic:
        keep = nms(boxes, scores, iou_threshold)
    else:
        keep = batched_nms(boxes, scores, labels, iou_threshold)
    return boxes[keep], scores[keep], labels[keep], score_map


def _paint_score_map(score_map: Tensor, grid: Tensor, h: int, w: int, stride: int) -> None:
    """Max the (ny, nx) window scores into ``score_map``, in place.

    Each window paints the stride x stride cell centred on its centre.
    """
    H, W = score_map.shape
    cells = grid.repeat_interleave(stride, 0).repeat_interleave(stride, 1)  # (ny*st, nx*st)
    top, left = h // 2 - stride // 2, w // 2 - stride // 2   # the first window's cell
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + cells.shape[0], H), min(left + cells.shape[1], W)
    if y1 <= y0 or x1 <= x0:
        return
    part = cells[y0 - top:y1 - top, x0 - left:x1 - left]
    score_map[y0:y1, x0:x1] = torch.maximum(score_map[y0:y1, x0:x1], part)
