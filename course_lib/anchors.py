"""Anchor boxes: K reference boxes at every position of a feature map (Faster R-CNN's RPN).

Shape shorthand used in this module:
    H, W  height and width of the feature map (number of positions)
    K     anchors per position, ``len(sizes) * len(aspect_ratios)``
    A     all anchors of the feature map, ``H * W * K``
    4     box coordinates ``(x1, y1, x2, y2)`` in pixels of the input image

"K anchors at each position", as in the lecture: a feature map of ``H x W`` cells sees the
image through a grid with ``stride`` pixels between neighbouring cells. At each cell we place
the same K boxes (one per size and aspect ratio), shifted to the cell's position. The RPN head
then predicts, for each of the ``H * W * K`` anchors, an objectness score and 4 box deltas.

The results are those of torchvision's ``AnchorGenerator`` for one feature map, in the same
order and with the same values:

* the *cell anchors* (:func:`cell_anchors`) are centred at ``(0, 0)``; for aspect ratio
  ``r = height / width`` and size ``s`` the anchor has ``w = s / sqrt(r)``, ``h = s * sqrt(r)``
  (so its area is ``s**2``), and its corners ``(-w/2, -h/2, w/2, h/2)`` are rounded to integers;
* anchor ``k`` of a position is ratio ``k // len(sizes)`` and size ``k % len(sizes)``
  (ratio-major);
* the cell at row ``y``, column ``x`` shifts its anchors by ``(x * sx, y * sy)``: the top-left
  cell is centred on pixel ``(0, 0)`` (torchvision's convention, not the cell's centre);
* positions are row-major (``y`` then ``x``), and the K anchors of a position are consecutive:
  anchor ``(y * W + x) * K + k`` is anchor ``k`` at position ``(y, x)``. This is the order of
  the RPN head's outputs after ``(N, K*4, H, W) -> (N, H, W, K, 4) -> (N, H*W*K, 4)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def _check_positive_numbers(values, name: str) -> tuple[float, ...]:
    """Check that ``values`` is a non-empty sequence of positive numbers and return it."""
    if isinstance(values, Tensor):
        values = values.tolist()
    if (
        not isinstance(values, Sequence)
        or len(values) == 0
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
    ):
        raise ValueError(f"{name} must be a non-empty sequence of numbers, got {values!r}")
    if not all(v > 0 for v in values):
        raise ValueError(f"{name} must all be > 0, got {tuple(values)}")
    return tuple(values)


def _pair(value, name: str, integer: bool) -> tuple:
    """Turn ``value`` (a number or a pair) into a pair, checking its type."""
    if isinstance(value, Tensor):
        value = value.tolist()
    pair = tuple(value) if isinstance(value, Sequence) else (value, value)
    kinds = int if integer else int | float
    if len(pair) != 2 or not all(isinstance(v, kinds) and not isinstance(v, bool) for v in pair):
        what = "int" if integer else "number"
        raise ValueError(f"{name} must be an {what} or a pair of them (y, x), got {value!r}")
    return pair


def cell_anchors(
    sizes: Sequence[float],
    aspect_ratios: Sequence[float],
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """The K anchors of one feature-map cell, centred at ``(0, 0)``.

    Same values and order as torchvision's ``AnchorGenerator.generate_anchors``: anchor
    ``k = i * len(sizes) + j`` has aspect ratio ``aspect_ratios[i]`` (height / width) and size
    ``sizes[j]``, i.e. ``w = size / sqrt(ratio)``, ``h = size * sqrt(ratio)``, and corners
    ``(-w/2, -h/2, w/2, h/2)`` rounded to the nearest integer (ties to even). As in
    torchvision, this is computed in float32 and then converted to ``dtype``.

    Args:
        sizes: anchor sizes in pixels (the side of a square anchor of the same area), e.g.
            ``(32, 64, 128)``.
        aspect_ratios: height / width ratios, e.g. ``(0.5, 1.0, 2.0)``.
        dtype: floating-point dtype of the result.
        device: device of the result (default: CPU).

    Returns:
        Tensor[K, 4]: ``(x1, y1, x2, y2)`` of each anchor, ``K = len(sizes) * len(aspect_ratios)``.

    Raises:
        ValueError: if ``sizes`` or ``aspect_ratios`` is empty or holds a value ``<= 0``.
    """
    sizes = _check_positive_numbers(sizes, "sizes")
    aspect_ratios = _check_positive_numbers(aspect_ratios, "aspect_ratios")
    scales = torch.tensor(sizes, dtype=torch.float32)  # (S,)
    ratios = torch.tensor(aspect_ratios, dtype=torch.float32)  # (R,)
    h_ratios = torch.sqrt(ratios)  # (R,) the height grows with sqrt(ratio) ...
    w_ratios = 1 / h_ratios  # (R,) ... and the width shrinks with it: area stays size**2
    ws = (w_ratios[:, None] * scales[None, :]).view(-1)  # (R, 1) * (1, S) -> (R, S) -> (K,)
    hs = (h_ratios[:, None] * scales[None, :]).view(-1)  # (K,)
    base = torch.stack([-ws, -hs, ws, hs], dim=1) / 2  # 4 x (K,) -> (K, 4)
    return base.round().to(dtype=dtype, device=device)


def generate_anchors(
    feature_size: tuple[int, int],
    stride: int | tuple[int, int],
    sizes: Sequence[float],
    aspect_ratios: Sequence[float],
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """All anchors of one feature map: the K cell anchors at each of the ``H * W`` positions.

    Equal to torchvision's ``AnchorGenerator((sizes,), (aspect_ratios,))`` applied to one
    feature map of size ``(H, W)`` whose image has size ``(H * sy, W * sx)`` (torchvision takes
    the stride as ``image_size // feature_size``, rounded down).

    Args:
        feature_size: ``(H, W)``, the height and width of the feature map.
        stride: ``(sy, sx)`` or one number for both: pixels of the image between two
            neighbouring cells (``image size / feature size``, e.g. 16 for a VGG conv5 map).
        sizes: anchor sizes in pixels, e.g. ``(32, 64, 128)``.
        aspect_ratios: height / width ratios, e.g. ``(0.5, 1.0, 2.0)``.
        dtype: floating-point dtype of the result.
        device: device of the result (default: CPU).

    Returns:
        Tensor[H*W*K, 4]: ``(x1, y1, x2, y2)`` anchors, position-major: anchor
        ``(y * W + x) * K + k`` is cell anchor ``k`` (see :func:`cell_anchors`) shifted to
        position ``(y, x)``, whose centre is the image pixel ``(x * sx, y * sy)``.

    Raises:
        ValueError: if ``feature_size`` is not a pair of ints ``>= 0``, ``stride`` is not a
            positive number or pair, or ``sizes``/``aspect_ratios`` are empty or not positive.
    """
    height, width = _pair(feature_size, "feature_size", integer=True)
    if height < 0 or width < 0:
        raise ValueError(f"feature_size must be >= 0, got {tuple(feature_size)}")
    stride_y, stride_x = _pair(stride, "stride", integer=False)
    if not (stride_y > 0 and stride_x > 0):
        raise ValueError(f"stride must be > 0, got {stride!r}")

    base = cell_anchors(sizes, aspect_ratios, dtype, device)  # (K, 4)

    # The centre of every position, in image pixels, row-major: (y0, x0), (y0, x1), ...
    shifts_x = torch.arange(width, dtype=dtype, device=device) * stride_x  # (W,)
    shifts_y = torch.arange(height, dtype=dtype, device=device) * stride_y  # (H,)
    shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")  # (H, W) each
    shift_x = shift_x.reshape(-1)  # (H, W) -> (H*W,)
    shift_y = shift_y.reshape(-1)  # (H*W,)
    shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)  # (H*W, 4)

    # K anchors at each position: every (position, cell anchor) pair, position-major.
    anchors = shifts[:, None, :] + base[None, :, :]  # (H*W, 1, 4) + (1, K, 4) -> (H*W, K, 4)
    return anchors.reshape(-1, 4)  # (H*W, K, 4) -> (H*W*K, 4)
