"""RoI Pool and RoI Align: a fixed-size feature grid for every box, as in Fast and Mask R-CNN.

Shape shorthand used in this module:
    N           images in the batch (feature maps)
    C           channels of the feature map
    H, W        height and width of the feature map
    K           RoIs (boxes), over all images
    PH, PW      output size: bins per RoI (``output_size``)
    GH, GW      sampling points per bin (RoI Align)

A two-stage detector proposes boxes of every size, but its box head wants the same input for
each: ``C x PH x PW`` features (``256 x 7 x 7`` in Faster R-CNN). Both operators split the box,
mapped onto the feature map by ``spatial_scale`` (``1/16`` for a stride-16 backbone), into
``PH x PW`` bins and pool the features in each bin.

**RoI Pool (Fast R-CNN)** snaps everything to the integer grid of the feature map: the box
corners are *rounded* to the nearest cell, the bin edges are rounded outwards (floor/ceil) and
each bin takes the *max* over the whole cells it covers. On a stride-16 map, rounding a corner
moves it by up to half a cell, that is up to 8 image pixels, and the bins of a box that is
not a whole number of cells wide are of uneven sizes. For classification this hardly matters;
for pixel-accurate outputs (masks, keypoints, precise boxes) the pooled features are
*misaligned* with the object. The output is also piecewise constant in the box coordinates.

**RoI Align (Mask R-CNN)** does no rounding at all. Each bin is a real-valued rectangle; it
takes ``GH x GW`` regularly spaced sampling points inside it, reads the feature map at each
point by *bilinear interpolation* from the four surrounding cells, and averages them. The
features move smoothly with the box. With ``aligned=True`` the box is first shifted by half a
cell, so that the centre of cell ``i`` is at coordinate ``i + 0.5``, as in the image (Detectron2
uses this; ``aligned=False`` is the original Mask R-CNN behaviour and torchvision's default).

Both functions follow torchvision's CPU kernels step by step (the same rounding, the same border
rules), so their outputs and gradients are equal to ``torchvision.ops.roi_pool`` /
``roi_align``. They are written with ordinary torch operations, so autograd gives the backward
pass: nothing like torchvision's hand-written ``_roi_align_backward`` kernel is needed. As in
torchvision, gradients flow to ``input`` only; the boxes are treated as constants.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

# ----------------------------------------------------------------------------- input checks


def _check_input(input: Tensor) -> None:
    if not isinstance(input, Tensor):
        raise TypeError(f"input must be a torch.Tensor (N, C, H, W), got {type(input).__name__}")
    if input.dim() != 4:
        raise ValueError(f"input must have shape (N, C, H, W), got shape {tuple(input.shape)}")
    if not input.is_floating_point():
        raise TypeError(f"input must be a floating-point tensor, got dtype {input.dtype}")


def _output_size(output_size) -> tuple[int, int]:
    """``7 -> (7, 7)``, ``(7, 5) -> (7, 5)``; both entries must be positive integers."""
    size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
        raise ValueError(
            f"output_size must be an int or (h, w) of positive ints, got {output_size}"
        )
    return size


def rois_from_boxes(boxes, input: Tensor) -> Tensor:
    """Bring the two box formats that torchvision accepts to one: ``Tensor[K, 5]``.

    Args:
        boxes (Tensor[K, 5] or list[Tensor[L, 4]]): either one tensor whose rows are
            ``(batch_index, x1, y1, x2, y2)``, or one ``(x1, y1, x2, y2)`` tensor per image.
        input (Tensor[N, C, H, W]): the feature maps the boxes refer to.

    Returns:
        Tensor[K, 5]: rows ``(batch_index, x1, y1, x2, y2)`` in the dtype and on the device of
        ``input`` (for a list, the boxes of image 0 first, then those of image 1, ...).

    Raises:
        ValueError: on a wrong shape, or a batch index outside ``[0, N)``.
    """
    if isinstance(boxes, (list, tuple)):
        per_image = []
        for i, b in enumerate(boxes):
            if not isinstance(b, Tensor) or b.dim() != 2 or b.shape[1] != 4:
                shape = tuple(b.shape) if isinstance(b, Tensor) else type(b).__name__
                raise ValueError(f"boxes[{i}] must have shape (L, 4), got {shape}")
            b = b.to(dtype=input.dtype, device=input.device)
            per_image.append(torch.cat([torch.full_like(b[:, :1], i), b], dim=1))  # (L, 5)
        if not per_image:
            return input.new_zeros((0, 5))
        rois = torch.cat(per_image)  # (K, 5)
    elif isinstance(boxes, Tensor):
        if boxes.dim() != 2 or boxes.shape[1] != 5:
            raise ValueError(
                "boxes must have shape (K, 5) with rows (batch_index, x1, y1, x2, y2), "
                f"got shape {tuple(boxes.shape)}"
            )
        rois = boxes.to(dtype=input.dtype, device=input.device)
    else:
        raise TypeError(
            f"boxes must be a Tensor[K, 5] or a list of Tensor[L, 4], got {type(boxes).__name__}"
        )
    batch = rois[:, 0]
    if rois.shape[0] > 0 and (batch.min() < 0 or batch.max() > input.shape[0] - 1):
        raise ValueError(
            f"the batch indices in boxes must lie in [0, {input.shape[0] - 1}] for input of "
            f"shape {tuple(input.shape)}, got values from {batch.min().item()} to "
            f"{batch.max().item()}"
        )
    return rois.detach()  # the boxes are constants, as in torchvision


def _zeros(input: Tensor, shape: tuple[int, ...]) -> Tensor:
    """Zeros of ``shape`` like ``input`` that, like torchvision's output, are part of its graph.

    ``input[:0].sum()`` is exactly 0 (a sum of nothing), but adding it makes the result depend
    on ``input``, so ``.backward()`` works (and gives zero gradients) even when no RoI is pooled.
    """
    return input.new_zeros(shape) + input[:0].sum()


def _round_half_away_from_zero(x: Tensor) -> Tensor:
    """C's ``round()``: 2.5 -> 3 and -2.5 -> -3 (``torch.round`` gives 2 and -2)."""
    frac = x - torch.trunc(x)  # exact in floating point
    return torch.where(frac.abs() == 0.5, torch.trunc(x) + torch.sign(x), torch.round(x))


# ----------------------------------------------------------------------------- RoI Pool


def _pool_bin_edges(
    start: Tensor, end: Tensor, bins: int, size: int, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """Integer bin edges along one axis of one RoI, as in torchvision's kernel.

    Args:
        start: 0-dim int64 tensor, the rounded first cell of the RoI.
        end: 0-dim int64 tensor, the rounded last cell of the RoI (inclusive).
        bins: number of bins (PH or PW).
        size: feature map size along this axis (H or W).
        dtype: the float dtype of the bin arithmetic (the dtype of the input).

    Returns:
        tuple[Tensor[bins], Tensor[bins]]: first cell and one-past-last cell of each bin,
        clipped to ``[0, size]``; a bin is empty where ``last <= first``.
    """
    length = torch.clamp(end - start + 1, min=1)  # cells covered; malformed RoIs become 1 cell
    bin_size = length.to(dtype) / bins  # may be fractional: bins overlap or differ in size
    i = torch.arange(bins, device=start.device, dtype=dtype)  # (bins,)
    first = torch.floor(i * bin_size).long() + start  # round the bin outwards...
    last = torch.ceil((i + 1) * bin_size).long() + start  # ...on both sides
    return first.clamp(0, size), last.clamp(0, size)


def _first_max(values: Tensor, dim: int) -> Tensor:
    """Maximum along ``dim``, read at the first maximal position (argmax, then gather).

    The gradient then goes to that one position only, as torchvision's kernel does with the
    argmax it records (``amax`` would share it between equal maxima).
    """
    first = values.argmax(dim=dim, keepdim=True)  # index of the first maximum
    return values.gather(dim, first).squeeze(dim)


def roi_pool(input: Tensor, boxes, output_size, spatial_scale: float = 1.0) -> Tensor:
    """RoI max pooling (Fast R-CNN), equal to ``torchvision.ops.roi_pool``.

    For each RoI: scale the box by ``spatial_scale`` and round its corners to whole cells
    (``round`` half away from zero, as in C); the RoI covers cells ``x1 .. x2`` (inclusive, at
    least one). Split it into ``PH x PW`` bins whose edges are rounded outwards (``floor`` of
    the start, ``ceil`` of the end), clip the bins to the feature map, and take the maximum in
    each bin; a bin that is empty after clipping gives 0. The gradient of a bin goes to its
    maximum (the first one, in row-major order, on ties), as in torchvision.

    Args:
        input (Tensor[N, C, H, W]): feature maps.
        boxes (Tensor[K, 5] or list[Tensor[L, 4]]): boxes in ``(x1, y1, x2, y2)`` format in
            image coordinates, either with the batch index in a first column, or as one tensor
            per image.
        output_size (int or tuple[int, int]): ``(PH, PW)``, the bins per RoI.
        spatial_scale: factor from image to feature-map coordinates, e.g. ``1/16``.

    Returns:
        Tensor[K, C, PH, PW]: the pooled features, in the dtype of ``input``.

    Raises:
        ValueError: if ``input`` is not ``(N, C, H, W)``, the boxes have the wrong shape or a
            bad batch index, or ``output_size`` is not positive.
    """
    _check_input(input)
    ph, pw = _output_size(output_size)
    rois = rois_from_boxes(boxes, input)  # (K, 5)
    _, channels, height, width = input.shape

    batch_idx = rois[:, 0].long()  # (K,)
    corners = _round_half_away_from_zero(rois[:, 1:] * spatial_scale).long()  # (K, 4)
    rows = torch.arange(height, device=input.device)  # (H,)
    cols = torch.arange(width, device=input.device)  # (W,)
    neg_inf = torch.tensor(float("-inf"), dtype=input.dtype, device=input.device)

    pooled = []
    for k in range(rois.shape[0]):
        x1, y1, x2, y2 = corners[k]
        y_first, y_last = _pool_bin_edges(y1, y2, ph, height, input.dtype)  # (PH,), (PH,)
        x_first, x_last = _pool_bin_edges(x1, x2, pw, width, input.dtype)  # (PW,), (PW,)
        in_row_bin = (rows >= y_first[:, None]) & (rows < y_last[:, None])  # (PH, H)
        in_col_bin = (cols >= x_first[:, None]) & (cols < x_last[:, None])  # (PW, W)

        # The max over a rectangle is the max over its rows of the max over its columns.
        feat = input[batch_idx[k]]  # (C, H, W)
        masked = torch.where(in_col_bin[None, None], feat[:, :, None, :], neg_inf)  # (C,H,PW,W)
        col_max = _first_max(masked, dim=3)  # (C, H, PW)
        masked = torch.where(in_row_bin[None, :, :, None], col_max[:, None], neg_inf)  # (C,PH,H,PW)
        bin_max = _first_max(masked, dim=2)  # (C, PH, PW)

        empty = (y_last <= y_first)[:, None] | (x_last <= x_first)[None, :]  # (PH, PW)
        pooled.append(torch.where(empty, torch.zeros_like(bin_max), bin_max))

    if not pooled:
        return _zeros(input, (0, channels, ph, pw))
    return torch.stack(pooled)  # K x (C, PH, PW) -> (K, C, PH, PW)


# ----------------------------------------------------------------------------- RoI Align


def _bilinear_neighbours(coord: Tensor, size: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The two cells around each sampling coordinate, and their interpolation weights.

    Follows torchvision's rules: a point more than one cell outside the map (``coord < -1``
    or ``coord > size``) reads nothing (both weights 0); any other point is clamped into
    ``[0, size - 1]``, so that a point near the border reads the border cell.

    Args:
        coord (Tensor[...]): sampling coordinates along one axis, in cells.
        size: the feature map size along that axis (H or W).

    Returns:
        tuple: ``low`` and ``high`` (int64 cell indices, ``high = low + 1`` except at the far
        border), and their weights ``w_low = 1 - frac`` and ``w_high = frac``, all ``[...]``.
    """
    outside = (coord < -1.0) | (coord > size)
    coord = coord.clamp(min=0, max=size - 1)
    low = coord.floor().long()
    high = (low + 1).clamp(max=size - 1)
    frac = coord - low.to(coord.dtype)  # distance from the low cell, in [0, 1)
    w_low = torch.where(outside, 0.0, 1.0 - frac)
    w_high = torch.where(outside, 0.0, frac)
    return low, high, w_low, w_high


def _align_fixed_grid(
    input: Tensor,
    batch_idx: Tensor,
    start: Tensor,
    bin_size: Tensor,
    output_size: tuple[int, int],
    grid: tuple[int, int],
) -> Tensor:
    """RoI Align for RoIs that all use the same ``GH x GW`` sampling grid per bin.

    Args:
        input (Tensor[N, C, H, W]): feature maps.
        batch_idx (Tensor[K]): image index of each RoI.
        start (Tensor[K, 2]): ``(y, x)`` of the RoI's top-left corner, in cells.
        bin_size (Tensor[K, 2]): bin height and width, in cells.
        output_size: ``(PH, PW)``.
        grid: ``(GH, GW)``, positive.

    Returns:
        Tensor[K, C, PH, PW]: the mean of the bilinearly sampled values in each bin.
    """
    _, channels, height, width = input.shape
    (ph, pw), (gh, gw) = output_size, grid
    arange = dict(device=input.device, dtype=input.dtype)

    # Sampling coordinates, with torchvision's order of float operations:
    # y = start + bin * bin_size + (i + 0.5) * bin_size / GH  for bin < PH, i < GH
    def sample_coords(start, bin_size, bins, samples):  # (K,), (K,) -> (K, bins, samples)
        s, b = start[:, None, None], bin_size[:, None, None]
        bin_i = torch.arange(bins, **arange)[None, :, None]
        sample_i = torch.arange(samples, **arange)[None, None, :]
        return s + bin_i * b + (sample_i + 0.5) * b / samples

    y = sample_coords(start[:, 0], bin_size[:, 0], ph, gh)  # (K, PH, GH)
    x = sample_coords(start[:, 1], bin_size[:, 1], pw, gw)  # (K, PW, GW)
    y_low, y_high, wy_low, wy_high = _bilinear_neighbours(y, height)  # 4 x (K, PH, GH)
    x_low, x_high, wx_low, wx_high = _bilinear_neighbours(x, width)  # 4 x (K, PW, GW)

    # Gather input[b, c, y, x] for every RoI, channel, bin and sample. The index tensors
    # broadcast to (K, C, PH, GH, PW, GW), and so does the result.
    k_idx = batch_idx[:, None, None, None, None, None]
    c_idx = torch.arange(channels, device=input.device)[None, :, None, None, None, None]

    def read(yi, xi):  # (K, PH, GH), (K, PW, GW) -> (K, C, PH, GH, PW, GW)
        return input[k_idx, c_idx, yi[:, None, :, :, None, None], xi[:, None, None, None, :, :]]

    def outer(wy, wx):  # (K, PH, GH), (K, PW, GW) -> (K, 1, PH, GH, PW, GW)
        return wy[:, None, :, :, None, None] * wx[:, None, None, None, :, :]

    # Bilinear interpolation: a weighted sum of the four cells around each point.
    value = (
        outer(wy_low, wx_low) * read(y_low, x_low)
        + outer(wy_low, wx_high) * read(y_low, x_high)
        + outer(wy_high, wx_low) * read(y_high, x_low)
        + outer(wy_high, wx_high) * read(y_high, x_high)
    )  # (K, C, PH, GH, PW, GW)
    return value.mean(dim=(3, 5))  # average the GH x GW samples of each bin -> (K, C, PH, PW)


def roi_align(
    input: Tensor,
    boxes,
    output_size,
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    """RoI Align (Mask R-CNN), equal to ``torchvision.ops.roi_align``.

    For each RoI: scale the box by ``spatial_scale`` (and shift it by ``-0.5`` cell when
    ``aligned``); with ``aligned=False`` a box smaller than one cell is enlarged to one cell.
    Split it into ``PH x PW`` equal bins, place ``GH x GW`` sampling points on a regular grid
    in each bin (at the centres of a ``GH x GW`` split of the bin), read the feature map at
    each point by bilinear interpolation and average. ``GH = GW = sampling_ratio`` when it is
    positive; otherwise the grid adapts to the RoI: ``GH = ceil(roi_height / PH)``, so that
    samples are about one cell apart. A point more than one cell outside the feature map reads
    0; a point less than that outside reads the nearest border cell.

    Args:
        input (Tensor[N, C, H, W]): feature maps.
        boxes (Tensor[K, 5] or list[Tensor[L, 4]]): boxes in ``(x1, y1, x2, y2)`` format in
            image coordinates, either with the batch index in a first column, or as one tensor
            per image.
        output_size (int or tuple[int, int]): ``(PH, PW)``, the bins per RoI.
        spatial_scale: factor from image to feature-map coordinates, e.g. ``1/16``.
        sampling_ratio: sampling points per bin along each axis; ``<= 0``: adaptive.
        aligned: shift the boxes by half a cell (Detectron2); ``False`` is the original.

    Returns:
        Tensor[K, C, PH, PW]: the pooled features, in the dtype of ``input``.

    Raises:
        ValueError: if ``input`` is not ``(N, C, H, W)``, the boxes have the wrong shape or a
            bad batch index, or ``output_size`` is not positive.
    """
    _check_input(input)
    ph, pw = _output_size(output_size)
    rois = rois_from_boxes(boxes, input)  # (K, 5)
    _, channels, _, _ = input.shape

    batch_idx = rois[:, 0].long()  # (K,)
    offset = 0.5 if aligned else 0.0
    corners = rois[:, 1:] * spatial_scale - offset  # (K, 4), in cells, not rounded
    start = corners[:, [1, 0]]  # (K, 2): (y1, x1)
    roi_size = corners[:, [3, 2]] - start  # (K, 2): (height, width)
    if not aligned:
        roi_size = roi_size.clamp(min=1.0)  # malformed RoIs become 1 x 1 cell
    out_size = torch.tensor([ph, pw], device=input.device)
    bin_size = roi_size / out_size  # (K, 2)

    if sampling_ratio > 0:
        grids = torch.full((rois.shape[0], 2), sampling_ratio, device=input.device)
    else:
        grids = torch.ceil(roi_size / out_size).long()  # (K, 2): about one sample per cell

    # RoIs with different sampling grids give tensors of different shapes: do one grid at a
    # time. A grid with no points (an empty or inverted box with aligned=True) gives 0.
    output = _zeros(input, (rois.shape[0], channels, ph, pw))
    for gh, gw in torch.unique(grids, dim=0).tolist():
        if gh <= 0 or gw <= 0:
            continue
        members = torch.nonzero((grids[:, 0] == gh) & (grids[:, 1] == gw)).squeeze(1)  # (K_g,)
        output = output.index_copy(
            0,
            members,
            _align_fixed_grid(
                input,
                batch_idx[members],
                start[members],
                bin_size[members],
                (ph, pw),
                (gh, gw),
            ),
        )
    return output


# ----------------------------------------------------------------------------- modules


class RoIPool(nn.Module):
    """:func:`roi_pool` as a module, like ``torchvision.ops.RoIPool``.

    Args:
        output_size (int or tuple[int, int]): ``(PH, PW)``.
        spatial_scale: factor from image to feature-map coordinates.
    """

    def __init__(self, output_size, spatial_scale: float):
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale

    def forward(self, input: Tensor, rois) -> Tensor:
        """Pool ``rois`` (``Tensor[K, 5]`` or ``list[Tensor[L, 4]]``) from ``input``."""
        return roi_pool(input, rois, self.output_size, self.spatial_scale)

    def extra_repr(self) -> str:  # noqa: D102
        return f"output_size={self.output_size}, spatial_scale={self.spatial_scale}"


class RoIAlign(nn.Module):
    """:func:`roi_align` as a module, like ``torchvision.ops.RoIAlign``.

    Args:
        output_size (int or tuple[int, int]): ``(PH, PW)``.
        spatial_scale: factor from image to feature-map coordinates.
        sampling_ratio: sampling points per bin along each axis; ``<= 0``: adaptive.
        aligned: shift the boxes by half a cell.
    """

    def __init__(self, output_size, spatial_scale: float, sampling_ratio: int, aligned=False):
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned

    def forward(self, input: Tensor, rois) -> Tensor:
        """Pool ``rois`` (``Tensor[K, 5]`` or ``list[Tensor[L, 4]]``) from ``input``."""
        return roi_align(
            input, rois, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned
        )

    def extra_repr(self) -> str:  # noqa: D102
        return (
            f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
            f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}"
        )
