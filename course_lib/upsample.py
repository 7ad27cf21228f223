"""Upsampling without weights: unpooling (nearest, bed of nails, max) and bilinear interpolation.

Pooling summarises a local area with one value; *unpooling* goes the other way and
distributes one value over a larger area. Nothing here is learned (the learnable upsampling,
transposed convolution, lives in :mod:`course_lib.conv_transpose`).

Shape shorthand (NCHW, like PyTorch): ``N`` images, ``C`` channels, ``H x W`` input pixels,
``s`` the integer scale, so the output is ``(N, C, H*s, W*s)``.

Each function equals its PyTorch counterpart (tests compare them):

=========================  ===========================================================
``nearest_unpool``         ``F.interpolate(x, scale_factor=s, mode="nearest")``
``bed_of_nails_unpool``    (no PyTorch twin; ``max_unpool2d`` with top-left indices)
``max_unpool2d``           ``F.max_unpool2d`` with indices from ``F.max_pool2d``
``bilinear_upsample``      ``F.interpolate(x, scale_factor=s, mode="bilinear", ...)``
=========================  ===========================================================
"""

from __future__ import annotations

import torch

__all__ = ["bed_of_nails_unpool", "bilinear_upsample", "max_unpool2d", "nearest_unpool"]


def _check_image(x: torch.Tensor, name: str = "x") -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a Tensor of shape (N, C, H, W), got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name} must have shape (N, C, H, W), got {tuple(x.shape)}")


def _check_scale(scale: int) -> int:
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale must be an integer >= 1, got {scale!r}")
    return scale


def nearest_unpool(x: torch.Tensor, scale: int) -> torch.Tensor:
    """Nearest-neighbour unpooling: copy every pixel into a ``scale x scale`` block.

    Args:
        x (Tensor[N, C, H, W]): the input feature map.
        scale (int): the upsampling factor, >= 1.

    Returns:
        Tensor[N, C, H*scale, W*scale]: ``out[..., i, j] = x[..., i // scale, j // scale]``.

    Raises:
        ValueError: if ``x`` is not 4-D or ``scale`` is not an integer >= 1.
    """
    _check_image(x)
    s = _check_scale(scale)
    # (N, C, H, W) -> (N, C, H*s, W) -> (N, C, H*s, W*s): each row, then each column, s times
    return x.repeat_interleave(s, dim=2).repeat_interleave(s, dim=3)


def bed_of_nails_unpool(x: torch.Tensor, scale: int) -> torch.Tensor:
    """Bed-of-nails unpooling: each pixel goes to the top-left corner of its block, zeros elsewhere.

    Args:
        x (Tensor[N, C, H, W]): the input feature map.
        scale (int): the upsampling factor, >= 1.

    Returns:
        Tensor[N, C, H*scale, W*scale]: ``out[..., i*scale, j*scale] = x[..., i, j]``, 0 elsewhere.

    Raises:
        ValueError: if ``x`` is not 4-D or ``scale`` is not an integer >= 1.
    """
    _check_image(x)
    s = _check_scale(scale)
    n, c, h, w = x.shape
    out = x.new_zeros(n, c, h * s, w * s)
    out[:, :, ::s, ::s] = x  # every s-th row and column: the "nails"
    return out


def max_unpool2d(x: torch.Tensor, indices: torch.Tensor, kernel_size: int,
                 stride: int | None = None, padding: int = 0,
                 output_size: tuple[int, int] | None = None) -> torch.Tensor:
    """Max unpooling: put each value back where max pooling found its maximum, zeros elsewhere.

    The positions come from ``F.max_pool2d(..., return_indices=True)`` (or
    ``nn.MaxPool2d(return_indices=True)``) of the matching downsampling layer: a flat index
    ``row * W_out + col`` into each ``H_out x W_out`` output plane.

    Args:
        x (Tensor[N, C, H, W]): the values to place (e.g. the pooled map, or a later layer's
            map of the same shape).
        indices (Tensor[N, C, H, W], int64): flat positions in the output plane, as returned
            by max pooling.
        kernel_size (int): the pooling window's size.
        stride (int, optional): the pooling stride (default: ``kernel_size``).
        padding (int): the pooling padding.
        output_size ((int, int), optional): ``(H_out, W_out)``, the size before pooling; needed
            when pooling did not divide it exactly (default: the formula below).

    Returns:
        Tensor[N, C, H_out, W_out] with ``H_out = (H - 1) * stride - 2 * padding + kernel_size``
        unless ``output_size`` is given.

    Raises:
        ValueError: on shapes that do not match, non-integer indices or indices out of range.
    """
    _check_image(x)
    if not isinstance(indices, torch.Tensor) or indices.shape != x.shape:
        shape = tuple(indices.shape) if isinstance(indices, torch.Tensor) else type(indices)
        raise ValueError(f"indices must have the shape of x {tuple(x.shape)}, got {shape}")
    if indices.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"indices must be an integer tensor, got dtype {indices.dtype}")
    stride = kernel_size if stride is None else stride
    n, c, h, w = x.shape
    h_out = (h - 1) * stride - 2 * padding + kernel_size
    w_out = (w - 1) * stride - 2 * padding + kernel_size
    if output_size is not None:
        h_out, w_out = (int(v) for v in tuple(output_size)[-2:])
    if h_out <= 0 or w_out <= 0:
        raise ValueError(f"kernel_size={kernel_size}, stride={stride}, padding={padding} give "
                         f"an empty output ({h_out} x {w_out}) for x of shape {tuple(x.shape)}")
    flat_idx = indices.reshape(n, c, h * w).long()                  # (N, C, H*W)
    if flat_idx.numel() and (flat_idx.min() < 0 or flat_idx.max() >= h_out * w_out):
        raise ValueError(f"indices must lie in [0, {h_out * w_out}) for an output of "
                         f"{h_out} x {w_out}; got values in [{int(flat_idx.min())}, "
                         f"{int(flat_idx.max())}]")
    out = x.new_zeros(n, c, h_out * w_out)                          # (N, C, H_out*W_out)
    out = out.scatter(2, flat_idx, x.reshape(n, c, h * w))          # out[idx[k]] = x[k]
    return out.reshape(n, c, h_out, w_out)


def _source_positions(size_in: int, size_out: int, scale: float, align_corners: bool,
                      device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where each output pixel samples the input along one axis (PyTorch's conventions).

    Returns:
        ``(i0, i1, t)``, each Tensor[size_out]: the two input neighbours and the weight of
        ``i1`` (the value is ``(1 - t) * in[i0] + t * in[i1]``).
    """
    dst = torch.arange(size_out, device=device, dtype=torch.float64)
    if align_corners:
        # the corner pixels' *centres* line up: output 0 -> input 0, output end -> input end
        step = (size_in - 1) / (size_out - 1) if size_out > 1 else 0.0
        src = dst * step
    else:
        # the corner pixels' *edges* line up: pixel centres sit at (i + 0.5) / scale
        src = ((dst + 0.5) / scale - 0.5).clamp(min=0)
    i0 = src.floor().long().clamp(max=size_in - 1)
    i1 = (i0 + 1).clamp(max=size_in - 1)
    t = src - i0
    return i0, i1, t


def bilinear_upsample(x: torch.Tensor, scale: float, align_corners: bool = False) -> torch.Tensor:
    """Bilinear interpolation by a scale factor, as ``F.interpolate(mode="bilinear")``.

    Bilinear is separable: interpolate linearly along the rows, then along the columns.

    Args:
        x (Tensor[N, C, H, W]): a floating-point input.
        scale (float): the scale factor (> 0; an integer in the lessons).
        align_corners (bool): ``True``: the centres of the corner pixels of input and output
            coincide (sample points ``i * (H - 1) / (H_out - 1)``). ``False`` (PyTorch's
            default): the pixels are squares whose outer edges coincide (sample points
            ``(i + 0.5) / scale - 0.5``, clamped at 0).

    Returns:
        Tensor[N, C, floor(H*scale), floor(W*scale)].

    Raises:
        ValueError: if ``x`` is not a 4-D floating-point tensor or ``scale`` is not positive.
    """
    _check_image(x)
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got dtype {x.dtype}")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or scale <= 0:
        raise ValueError(f"scale must be a positive number, got {scale!r}")
    n, c, h, w = x.shape
    h_out, w_out = int(h * scale), int(w * scale)
    if h_out < 1 or w_out < 1:
        raise ValueError(f"scale={scale} gives an empty output for x of shape {tuple(x.shape)}")
    r0, r1, tr = _source_positions(h, h_out, scale, align_corners, x.device)
    c0, c1, tc = _source_positions(w, w_out, scale, align_corners, x.device)
    tr = tr.to(x.dtype)[:, None]                                      # (H_out, 1)
    tc = tc.to(x.dtype)                                               # (W_out,)
    rows = x[:, :, r0] * (1 - tr) + x[:, :, r1] * tr                  # (N, C, H_out, W)
    return rows[..., c0] * (1 - tc) + rows[..., c1] * tc              # (N, C, H_out, W_out)
