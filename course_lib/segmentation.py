"""Semantic segmentation: one-hot targets, the argmax collapse, tiled prediction, receptive fields.

A segmentation network labels *every pixel*: for ``C`` classes it outputs ``C`` score maps,
one channel per class, and the target is the label map one-hot encoded into the same ``C``
channels (:func:`one_hot`). A prediction is collapsed back into a label map by taking the argmax
of each pixel's depth-wise score vector (:func:`collapse`).

A fully convolutional network (FCN, U-Net) accepts any image size, but a large image may not
fit in memory. The lecture's answer ("do the segmentation for smaller regions of the image; on
the edges mirror the image", U-Net's *overlap-tile* strategy) is :func:`predict_tiled`. Whether
the tiles join without seams depends on the network's receptive field (:func:`receptive_field`).

Shape shorthand: ``N`` images, ``C`` classes, ``H x W`` pixels. Labels are int64 in
``0..C-1``; class 0 is background.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["collapse", "one_hot", "predict_tiled", "receptive_field"]


def _is_integer(t: Tensor) -> bool:
    return not (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool)


def one_hot(seg: Tensor, num_classes: int) -> Tensor:
    """One-hot encode a label map: one output channel per class.

    Equal to ``F.one_hot(seg, num_classes).permute(0, 3, 1, 2).float()``: the class axis goes
    where a network's output has it (dim 1, NCHW), not last.

    Args:
        seg (Tensor[N, H, W] or Tensor[H, W]): integer labels in ``0..num_classes-1``.
        num_classes (int): ``C``, the number of classes (>= 1).

    Returns:
        Tensor[N, C, H, W] (or Tensor[C, H, W] for a single map), float32:
        ``out[n, c, i, j] = 1.0`` if ``seg[n, i, j] == c`` else ``0.0``.

    Raises:
        TypeError: if ``seg`` is not a Tensor.
        ValueError: if ``seg`` is not 2-D or 3-D, not an integer tensor, ``num_classes`` is
            not an integer >= 1, or a label lies outside ``[0, num_classes)``.
    """
    if not isinstance(seg, Tensor):
        raise TypeError(f"seg must be a Tensor of shape (N, H, W), got {type(seg).__name__}")
    if seg.dim() not in (2, 3):
        raise ValueError(f"seg must have shape (N, H, W) or (H, W), got {tuple(seg.shape)}")
    if not _is_integer(seg):
        raise ValueError(f"seg must hold integer labels, got dtype {seg.dtype}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")
    if seg.numel() and (seg.min() < 0 or seg.max() >= num_classes):
        raise ValueError(f"seg labels must lie in [0, {num_classes}), got values in "
                         f"[{int(seg.min())}, {int(seg.max())}]")
    single = seg.dim() == 2
    batch = seg[None] if single else seg                                 # (N, H, W)
    classes = torch.arange(num_classes, device=seg.device)[None, :, None, None]  # (1, C, 1, 1)
    out = (batch[:, None] == classes).float()         # (N, 1, H, W) == (1, C, 1, 1) -> (N, C, H, W)
    return out[0] if single else out


def collapse(scores: Tensor) -> Tensor:
    """Collapse per-class scores into a label map: the argmax of each pixel's score vector.

    Works on logits, probabilities or one-hot maps alike (softmax does not move the argmax). On
    ties the first (lowest) class index wins, as in ``torch.argmax``.

    Args:
        scores (Tensor[N, C, H, W] or Tensor[C, H, W]): class scores, class axis first after N.

    Returns:
        Tensor[N, H, W] (or Tensor[H, W]), int64: the class of each pixel.

    Raises:
        ValueError: if ``scores`` is not 3-D or 4-D or has no class channel (``C = 0``).
    """
    if not isinstance(scores, Tensor) or scores.dim() not in (3, 4):
        shape = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
        raise ValueError(f"scores must have shape (N, C, H, W) or (C, H, W), got {shape}")
    class_dim = scores.dim() - 3                       # 1 for (N, C, H, W), 0 for (C, H, W)
    if scores.shape[class_dim] == 0:
        raise ValueError(f"scores must have at least one class channel, got {tuple(scores.shape)}")
    return scores.argmax(dim=class_dim)                # (N, C, H, W) -> (N, H, W)


# ---------------------------------------------------------------------------------------------
# Tiled prediction
# ---------------------------------------------------------------------------------------------


def _check_tiling(tile: int, overlap: int) -> tuple[int, int]:
    for name, value in (("tile", tile), ("overlap", overlap)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an int, got {value!r}")
    if tile < 1:
        raise ValueError(f"tile must be >= 1, got {tile}")
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must satisfy 0 <= overlap < tile = {tile}, got {overlap}")
    if overlap % 2:
        raise ValueError(f"overlap must be even (overlap / 2 pixels are dropped on each side of a "
                         f"tile), got {overlap}")
    return tile, overlap


def _mirror_pad(x: Tensor, top: int, bottom: int, left: int, right: int) -> Tensor:
    """Pad ``(N, C, H, W)`` by mirroring at the edges (edge pixel not repeated), any amount.

    ``F.pad(mode="reflect")`` needs each pad smaller than the side it mirrors; a larger pad is
    done in steps, each mirroring the already padded image, which continues the reflection
    ``... c b | a b c d | c b a ...`` periodically. A side of a single pixel has nothing to
    mirror and is repeated instead.
    """
    pads = [left, right, top, bottom]                                # F.pad's order: W, then H
    while any(pads):
        h, w = x.shape[-2:]
        if h == 1 or w == 1:                            # nothing to mirror: repeat that side
            step = [p if size == 1 else 0 for p, size in zip(pads, (w, w, h, h), strict=True)]
            x = F.pad(x, step, mode="replicate")
        else:
            step = [min(p, size - 1) for p, size in zip(pads, (w, w, h, h), strict=True)]
            x = F.pad(x, step, mode="reflect")
        pads = [p - s for p, s in zip(pads, step, strict=True)]
    return x


def predict_tiled(model: nn.Module, image: Tensor, tile: int, overlap: int,
                  batch_size: int = 16) -> Tensor:
    """Segment an image of any size tile by tile (U-Net's overlap-tile strategy).

    The image is cut into ``tile x tile`` windows whose neighbours share ``overlap`` pixels.
    From each tile's prediction only the central ``(tile - overlap) x (tile - overlap)`` core
    is kept (``overlap / 2`` pixels, the *context margin*, are dropped on every side), and the
    cores are stitched edge to edge into a map of the image's size. At the image's edges the
    missing context is made up by mirroring the image, and the right/bottom edges are mirrored
    further so that every tile is full size, also when ``H`` or ``W`` is smaller than ``tile``
    or not a multiple of the stride ``tile - overlap``::

        padded image:  | m |    core 0    |    core 1    |  ...  | m + extra |
        tile 0:        [ m     core 0     m ]                        m = overlap / 2
        tile 1:                       [ m     core 1     m ]

    **When do the tiles join without seams?** A kept pixel lies at least ``m`` pixels from its
    tile's border. If the network's receptive field has radius ``r <= m`` (size
    ``2r + 1 <= overlap + 1``, see :func:`receptive_field`), that pixel never "sees" the tile's
    own border padding, so wherever the receptive field lies inside the image the tiled logits
    equal the whole-image logits ``model(image)`` (up to rounding). Near the image's edges they
    equal them too only if the network pads exactly like mirroring the input once, e.g. a
    single convolution with ``padding_mode="reflect"``, or a stack of them whose kernels are
    mirror-symmetric (a reflect-padded stack of general kernels mirrors each *feature map*,
    which is not the same as mirroring the input; a zero-padded network sees zeros instead).
    With ``r > m``, or with strides and pooling that make the output depend on the position
    modulo the stride, the tiles can differ at their seams.

    The model runs on batches of tiles under ``torch.no_grad()``, on its own device and dtype
    (the tiles are moved there); it is not switched to ``eval()`` mode: do that first when it
    has batch norm or dropout.

    Args:
        model (nn.Module): maps ``(B, C_in, tile, tile)`` to ``(B, C, tile, tile)`` logits.
        image (Tensor[N, C_in, H, W] or Tensor[C_in, H, W]): the image(s), any ``H, W >= 1``.
        tile (int): the side of the square tiles the model sees (>= 1).
        overlap (int): pixels shared by neighbouring tiles; even, ``0 <= overlap < tile``.
        batch_size (int): how many tiles go through the model at once.

    Returns:
        Tensor[N, C, H, W] (or Tensor[C, H, W] for a single image): the stitched logits, on the
        model's device and in its dtype (those of ``image`` for a model without parameters).

    Raises:
        ValueError: on an image that is not 3-D or 4-D or is empty in H or W, an invalid
            ``tile``/``overlap``/``batch_size``, or a model that changes the tile's size.
    """
    tile, overlap = _check_tiling(tile, overlap)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if not isinstance(image, Tensor) or image.dim() not in (3, 4):
        shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise ValueError(f"image must have shape (N, C_in, H, W) or (C_in, H, W), got {shape}")
    single = image.dim() == 3
    x = image[None] if single else image                             # (N, C_in, H, W)
    n, c_in, h, w = x.shape
    if h == 0 or w == 0:
        raise ValueError(f"image must have H, W >= 1, got {tuple(image.shape)}")
    param = next(model.parameters(), None)
    if param is not None:
        x = x.to(device=param.device, dtype=param.dtype)

    margin = overlap // 2
    core = tile - overlap                              # the stride between tiles
    rows, cols = math.ceil(h / core), math.ceil(w / core)
    # mirror: margin on every side, plus what makes the last row/column of tiles full size
    padded = _mirror_pad(x, margin, margin + rows * core - h, margin, margin + cols * core - w)

    # (N, C_in, H_pad, W_pad) -> (N * rows * cols, C_in, tile, tile), image-major, row by row
    tiles = torch.stack([padded[:, :, i * core: i * core + tile, j * core: j * core + tile]
                         for i in range(rows) for j in range(cols)], dim=1)
    tiles = tiles.reshape(n * rows * cols, c_in, tile, tile)

    outputs = []
    with torch.no_grad():
        for start in range(0, tiles.shape[0], batch_size):
            out = model(tiles[start: start + batch_size])             # (B, C, tile, tile)
            if out.dim() != 4 or out.shape[-2:] != (tile, tile):
                raise ValueError(f"model must map (B, C_in, {tile}, {tile}) tiles to (B, C, "
                                 f"{tile}, {tile}) logits, got {tuple(out.shape)}")
            outputs.append(out[:, :, margin: margin + core, margin: margin + core])  # the cores
    if not outputs:                                     # N = 0: ask the model for C only
        with torch.no_grad():
            num_classes = model(padded.new_zeros(1, c_in, tile, tile)).shape[1]
        empty = padded.new_zeros(0, num_classes, h, w)
        return empty[0] if single else empty
    cores = torch.cat(outputs)                                       # (N*rows*cols, C, core, core)
    num_classes = cores.shape[1]
    # (N, rows, cols, C, core, core) -> (N, C, rows, core, cols, core) -> (N, C, rows*core, ...)
    cores = cores.reshape(n, rows, cols, num_classes, core, core).permute(0, 3, 1, 4, 2, 5)
    logits = cores.reshape(n, num_classes, rows * core, cols * core)[:, :, :h, :w]
    return logits[0] if single else logits


# ---------------------------------------------------------------------------------------------
# Receptive field
# ---------------------------------------------------------------------------------------------


def receptive_field(kernel_sizes: Sequence[int], strides: Sequence[int] | None = None,
                    dilations: Sequence[int] | None = None) -> int:
    """The receptive field (in input pixels, along one axis) of a stack of convolutions.

    Layer ``l`` with kernel ``k_l``, dilation ``d_l`` widens the field by ``(k_l - 1) d_l``
    steps of its input, and one step of its input is ``s_1 ... s_{l-1}`` input pixels (the
    product of the strides below it)::

        RF = 1 + sum_l (k_l - 1) * d_l * prod_{j < l} s_j

    Atrous (dilated) convolutions grow the field without strides, so without losing
    resolution: three 3 x 3 layers see 7 pixels, with dilations 1, 2, 4 they see 15. Pooling
    layers count as layers with their kernel and stride. Padding does not change the field.

    Args:
        kernel_sizes (sequence of int): ``k_l`` of each layer, input first (>= 1).
        strides (sequence of int, optional): ``s_l`` of each layer (>= 1; default all 1).
        dilations (sequence of int, optional): ``d_l`` of each layer (>= 1; default all 1).

    Returns:
        int: the size of the field; its radius, for odd sizes, is ``(RF - 1) // 2``. An empty
        stack sees the pixel itself: 1.

    Raises:
        ValueError: if the sequences differ in length or hold a value that is not an int >= 1.
    """
    kernel_sizes = list(kernel_sizes)
    strides = [1] * len(kernel_sizes) if strides is None else list(strides)
    dilations = [1] * len(kernel_sizes) if dilations is None else list(dilations)
    if not len(kernel_sizes) == len(strides) == len(dilations):
        raise ValueError(f"kernel_sizes, strides and dilations must have the same length, got "
                         f"{len(kernel_sizes)}, {len(strides)} and {len(dilations)}")
    for name, values in (("kernel_sizes", kernel_sizes), ("strides", strides),
                         ("dilations", dilations)):
        if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
            raise ValueError(f"{name} must hold integers >= 1, got {values}")
    field, jump = 1, 1                                 # jump: input pixels per step of layer l
    for k, s, d in zip(kernel_sizes, strides, dilations, strict=True):
        field += (k - 1) * d * jump
        jump *= s
    return field
