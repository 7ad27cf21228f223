"""Transposed convolution ("deconvolution", "fractionally strided convolution", "up-convolution").

A convolution takes the dot product of the kernel with the input under it and writes *one*
value. A transposed convolution does the opposite: it takes *one* input value, multiplies the
whole kernel by it, and writes that scaled kernel into the output, moving ``stride`` output
cells for each input cell. Where the written kernels overlap, the values are added.

Shape shorthand (NCHW, like PyTorch): ``N`` images, ``C_in``/``C_out`` channels, ``L`` or
``H x W`` input positions, kernel ``K`` or ``KH x KW``. The weight has PyTorch's layout for
transposed convolutions, ``(C_in, C_out, K...)`` (input channels first), so the functions here
equal ``F.conv_transpose1d``/``F.conv_transpose2d`` (``groups=1``); the tests check values and
gradients. Along each axis the output size is::

    (n - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1

Two other views of the same operation (lesson 06 shows both numerically): it is the gradient
(the adjoint) of a convolution with the same weight, and it is an ordinary convolution of the
input with zeros inserted between its values, by the flipped kernel.
"""

from __future__ import annotations

import torch

__all__ = ["conv_transpose1d", "conv_transpose2d", "conv_transpose_output_size"]


def conv_transpose_output_size(n: int, kernel: int, stride: int = 1, padding: int = 0,
                               output_padding: int = 0, dilation: int = 1) -> int:
    """Length of a transposed convolution's output along one axis.

    ``(n - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1``: the
    last input cell starts its kernel at ``(n - 1) * stride``, the kernel spans
    ``dilation * (kernel - 1) + 1`` cells, and ``padding`` cells are cut from each end.

    Args:
        n (int): input length.
        kernel (int): kernel length.
        stride (int): output cells between two input cells' kernels.
        padding (int): cells removed from each end of the output.
        output_padding (int): cells added at the end (to pick one of the sizes that a strided
            convolution maps to the same length).
        dilation (int): spacing between kernel taps.

    Returns:
        int: the output length (<= 0 for impossible settings; the ops reject those).
    """
    return (n - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1


def _pair(value: int | tuple[int, int], name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair):
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    return pair


def _check_args(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, dims: int,
                stride: tuple[int, ...], padding: tuple[int, ...],
                output_padding: tuple[int, ...], dilation: tuple[int, ...]) -> tuple[int, ...]:
    """Validate the arguments; return the output's spatial size."""
    names = "(N, C_in, L)" if dims == 1 else "(N, C_in, H, W)"
    wnames = "(C_in, C_out, K)" if dims == 1 else "(C_in, C_out, KH, KW)"
    if not isinstance(x, torch.Tensor) or x.dim() != dims + 2:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must have shape {names}, got {got}")
    if not isinstance(weight, torch.Tensor) or weight.dim() != dims + 2:
        got = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise ValueError(f"weight must have shape {wnames}, got {got}")
    if weight.shape[0] != x.shape[1]:
        raise ValueError(f"weight {tuple(weight.shape)} must have C_in = {x.shape[1]} first "
                         f"(x has shape {tuple(x.shape)}); layout {wnames}")
    if bias is not None and (not isinstance(bias, torch.Tensor)
                             or bias.shape != (weight.shape[1],)):
        got = tuple(bias.shape) if isinstance(bias, torch.Tensor) else type(bias).__name__
        raise ValueError(f"bias must have shape (C_out,) = ({weight.shape[1]},), got {got}")
    for s, p, op, d in zip(stride, padding, output_padding, dilation, strict=True):
        if s < 1 or d < 1 or p < 0:
            raise ValueError(f"need stride >= 1, dilation >= 1 and padding >= 0; got "
                             f"stride={stride}, dilation={dilation}, padding={padding}")
        if not 0 <= op < max(s, d):
            raise ValueError(f"output_padding must be in [0, max(stride, dilation)); got "
                             f"output_padding={output_padding}, stride={stride}, "
                             f"dilation={dilation}")
    size = tuple(conv_transpose_output_size(n, k, s, p, op, d) for n, k, s, p, op, d in zip(
        x.shape[2:], weight.shape[2:], stride, padding, output_padding, dilation, strict=True))
    if min(size) < 1:
        raise ValueError(f"padding={padding} leaves no output (size {size}) for x of "
                         f"shape {tuple(x.shape)} and weight of shape {tuple(weight.shape)}")
    return size


def conv_transpose1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                     stride: int = 1, padding: int = 0) -> torch.Tensor:
    """1-D transposed convolution, as ``F.conv_transpose1d`` (``groups=1``).

    Input cell ``i`` writes its scaled kernel ``x[i] * weight[0..K-1]`` into output cells
    ``i * stride .. i * stride + K - 1``; overlapping writes are added; then ``padding``
    cells are cut from each end.

    Args:
        x (Tensor[N, C_in, L]): the input.
        weight (Tensor[C_in, C_out, K]): the kernel (PyTorch's transposed-conv layout).
        bias (Tensor[C_out], optional): added to every output cell of each channel.
        stride (int): output cells between two consecutive input cells' kernels.
        padding (int): cells removed from each end of the output.

    Returns:
        Tensor[N, C_out, L_out] with ``L_out = (L - 1) * stride - 2 * padding + K``.

    Raises:
        ValueError: on shapes that do not match, or settings that leave no output.
    """
    (l_out,) = _check_args(x, weight, bias, 1, (stride,), (padding,), (0,), (1,))
    n, _, length = x.shape
    c_out, k = weight.shape[1], weight.shape[2]
    full = x.new_zeros(n, c_out, (length - 1) * stride + k)  # before cutting the padding
    for a in range(k):
        # tap a of every input cell's kernel: x[n, :, i] . weight[:, o, a] lands at i*stride + a
        tap = torch.einsum("ncl,co->nol", x, weight[:, :, a])          # (N, C_out, L)
        full[:, :, a : a + (length - 1) * stride + 1 : stride] += tap  # summed where they overlap
    out = full[:, :, padding : padding + l_out]                        # (N, C_out, L_out)
    return out if bias is None else out + bias[None, :, None]


def conv_transpose2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                     stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0,
                     output_padding: int | tuple[int, int] = 0,
                     dilation: int | tuple[int, int] = 1) -> torch.Tensor:
    """2-D transposed convolution, as ``F.conv_transpose2d`` (``groups=1``).

    Input pixel ``(i, j)`` writes its scaled kernel ``x[i, j] * weight`` into the output with
    its top-left tap at ``(i * stride, j * stride)`` (taps ``dilation`` apart); overlapping
    writes are added; then ``padding`` rows/columns are cut from each side and
    ``output_padding`` extra rows/columns are kept at the bottom/right.

    Args:
        x (Tensor[N, C_in, H, W]): the input.
        weight (Tensor[C_in, C_out, KH, KW]): the kernel (PyTorch's transposed-conv layout).
        bias (Tensor[C_out], optional): added to every output pixel of each channel.
        stride (int or (int, int)): output pixels between two neighbouring input pixels' kernels.
        padding (int or (int, int)): rows/columns removed from each side of the output.
        output_padding (int or (int, int)): rows/columns added at the bottom/right; smaller
            than ``max(stride, dilation)``.
        dilation (int or (int, int)): spacing between kernel taps.

    Returns:
        Tensor[N, C_out, H_out, W_out] with
        ``H_out = (H - 1) * stride - 2 * padding + dilation * (KH - 1) + output_padding + 1``
        (the same with W and KW).

    Raises:
        ValueError: on shapes that do not match, or settings that leave no output.
    """
    sh, sw = _pair(stride, "stride")
    ph, pw = _pair(padding, "padding")
    oph, opw = _pair(output_padding, "output_padding")
    dh, dw = _pair(dilation, "dilation")
    h_out, w_out = _check_args(x, weight, bias, 2, (sh, sw), (ph, pw), (oph, opw), (dh, dw))
    n, _, h, w = x.shape
    c_out, kh, kw = weight.shape[1:]
    # the uncut output: every kernel fits, plus room for output_padding beyond it
    full_h = max(ph + h_out, (h - 1) * sh + dh * (kh - 1) + 1)
    full_w = max(pw + w_out, (w - 1) * sw + dw * (kw - 1) + 1)
    full = x.new_zeros(n, c_out, full_h, full_w)
    for a in range(kh):
        for b in range(kw):
            # tap (a, b) of pixel (i, j)'s scaled kernel lands at (i*sh + a*dh, j*sw + b*dw)
            tap = torch.einsum("nchw,co->nohw", x, weight[:, :, a, b])  # (N, C_out, H, W)
            top, left = a * dh, b * dw
            full[:, :, top : top + (h - 1) * sh + 1 : sh,
                 left : left + (w - 1) * sw + 1 : sw] += tap              # overlaps are summed
    out = full[:, :, ph : ph + h_out, pw : pw + w_out]                    # (N, C_out, H_out, W_out)
    return out if bias is None else out + bias[None, :, None, None]
