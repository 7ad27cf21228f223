"""Box coding: the ``(tx, ty, tw, th)`` regression targets of R-CNN, Fast and Faster R-CNN.

Shape shorthand used in this module:
    N  number of boxes (one reference box, e.g. an anchor or a proposal, per row)
    C  number of boxes decoded per reference box (classes), 1 unless said otherwise
    4  box coordinates ``(x1, y1, x2, y2)``, or the code ``(tx, ty, tw, th)``

A detector does not predict box corners directly. It predicts how to move and stretch a
reference box ``p`` (an anchor, or a proposal) into the object box ``g``::

    tx = wx * (gx - px) / pw        ty = wy * (gy - py) / ph
    tw = ww * log(gw / pw)          th = wh * log(gh / ph)

where ``(px, py, pw, ph)`` is the centre, width and height of ``p`` (likewise for ``g``) and
``(wx, wy, ww, wh)`` are fixed weights (``(1, 1, 1, 1)`` in the RPN, ``(10, 10, 5, 5)`` in Faster
R-CNN's box head; they scale the targets to a similar spread so that one loss fits all four).

Why divide the shift by the width, and why widths in log space?

* **Scale invariance.** Moving a 20-pixel box by 2 pixels is the same *relative* correction as
  moving a 200-pixel box by 20 pixels, so both give ``tx = 0.1``. The network learns one mapping
  for objects of every size.
* **Log widths.** ``gw / pw`` is a ratio: halving and doubling should be symmetric corrections,
  and in log space they are (``-log 2`` and ``+log 2``). Decoding with ``exp`` also makes every
  predicted width positive, whatever number the network outputs.
* **The clamp when decoding.** ``exp`` grows fast: a wild prediction early in training (say
  ``tw = 100``) overflows to ``inf`` and poisons the loss and NMS. :func:`decode_boxes` clamps
  ``tw`` and ``th`` (after dividing by the weights) at ``bbox_xform_clip = log(1000 / 16)``:
  a box may grow at most 62.5-fold, from a 16-pixel anchor to a 1000-pixel image.

Widths are ``x2 - x1`` and a decoded box is ``centre -/+ 0.5 * width``: the continuous-coordinate
convention of torchvision, not the ``x2 - x1 + 1`` "pixel count" widths of the original
Caffe/Detectron code. The functions compute the same float expressions as
``torchvision.models.detection._utils.BoxCoder(weights).encode_single`` / ``decode_single``, so
their results are equal to torchvision's.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# Faster R-CNN's default: a box may grow at most 1000 / 16 = 62.5-fold when decoded.
BBOX_XFORM_CLIP = math.log(1000.0 / 16)


def _check_pair(boxes: Tensor, name: str, other: Tensor, other_name: str) -> None:
    """Raise ``ValueError`` unless ``boxes`` is ``(N, 4)`` with as many rows as ``other``."""
    if not isinstance(boxes, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor (N, 4), got {type(boxes).__name__}")
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{name} must have shape (N, 4), got shape {tuple(boxes.shape)}")
    if other.shape[0] != boxes.shape[0]:
        raise ValueError(
            f"{other_name} and {name} must have the same N, got shapes "
            f"{tuple(other.shape)} and {tuple(boxes.shape)}"
        )


def _check_weights(weights) -> tuple[float, float, float, float]:
    """Return ``weights`` as a tuple of four floats, or raise ``ValueError``."""
    weights = tuple(float(w) for w in weights)
    if len(weights) != 4:
        raise ValueError(f"weights must have 4 entries (wx, wy, ww, wh), got {len(weights)}")
    return weights


def _centre_size(boxes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Centre x, centre y, width and height of xyxy boxes ``(N, 4) -> 4 x (N,)``."""
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    ctr_x = boxes[:, 0] + 0.5 * widths
    ctr_y = boxes[:, 1] + 0.5 * heights
    return ctr_x, ctr_y, widths, heights


def encode_boxes(
    reference_boxes: Tensor,
    proposals: Tensor,
    weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0),
) -> Tensor:
    """Regression targets that turn each proposal into its reference (ground-truth) box.

    ``tx = wx * (gx - px) / pw``, ``ty = wy * (gy - py) / ph``, ``tw = ww * log(gw / pw)``,
    ``th = wh * log(gh / ph)``, with ``g`` the reference box and ``p`` the proposal (see the
    module docstring). Equal to ``BoxCoder(weights).encode_single(reference_boxes, proposals)``.
    Note the argument order: the *target* box comes first, as in torchvision.

    Args:
        reference_boxes (Tensor[N, 4]): the boxes to reach (ground truth), ``(x1, y1, x2, y2)``.
        proposals (Tensor[N, 4]): the boxes to start from (anchors or proposals),
            ``(x1, y1, x2, y2)``; they must have a positive width and height.
        weights: ``(wx, wy, ww, wh)``, the factors of the four targets.

    Returns:
        Tensor[N, 4]: the codes ``(tx, ty, tw, th)``, in the dtype of ``reference_boxes``.

    Raises:
        ValueError: if a box tensor is not ``(N, 4)``, the two N differ, or ``weights`` does not
            have 4 entries.
    """
    _check_pair(reference_boxes, "reference_boxes", proposals, "proposals")
    _check_pair(proposals, "proposals", reference_boxes, "reference_boxes")
    wx, wy, ww, wh = torch.as_tensor(
        _check_weights(weights), dtype=reference_boxes.dtype, device=reference_boxes.device
    )

    px, py, pw, ph = _centre_size(proposals)  # 4 x (N,)
    gx, gy, gw, gh = _centre_size(reference_boxes)  # 4 x (N,)

    tx = wx * (gx - px) / pw  # shift in units of the proposal's width
    ty = wy * (gy - py) / ph
    tw = ww * torch.log(gw / pw)  # scale, in log space
    th = wh * torch.log(gh / ph)
    return torch.stack([tx, ty, tw, th], dim=1)  # 4 x (N,) -> (N, 4)


def decode_boxes(
    rel_codes: Tensor,
    boxes: Tensor,
    weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0),
    bbox_xform_clip: float = BBOX_XFORM_CLIP,
) -> Tensor:
    """Apply regression codes to reference boxes: the inverse of :func:`encode_boxes`.

    ``x = px + pw * tx / wx``, ``w = pw * exp(min(tw / ww, bbox_xform_clip))`` (likewise for
    y and h), and the box is ``(x - w/2, y - h/2, x + w/2, y + h/2)``. Equal to
    ``BoxCoder(weights, bbox_xform_clip).decode_single(rel_codes, boxes)``.

    A box head predicts one code per class, ``rel_codes`` of shape ``(N, 4 * C)``; then row
    ``i`` holds ``C`` boxes, all decoded from ``boxes[i]``, in the same interleaved layout
    ``(x1, y1, x2, y2, x1, y1, x2, y2, ...)``.

    Args:
        rel_codes (Tensor[N, 4 * C]): codes ``(tx, ty, tw, th)``, ``C >= 1`` per row.
        boxes (Tensor[N, 4]): reference boxes (anchors or proposals), ``(x1, y1, x2, y2)``.
        weights: ``(wx, wy, ww, wh)``, the factors :func:`encode_boxes` used.
        bbox_xform_clip: upper bound for ``tw / ww`` and ``th / wh`` before ``exp``.

    Returns:
        Tensor[N, 4 * C]: decoded boxes ``(x1, y1, x2, y2)``, in the dtype of ``rel_codes``.

    Raises:
        ValueError: if ``boxes`` is not ``(N, 4)``, ``rel_codes`` is not ``(N, 4 * C)`` with
            ``C >= 1``, or ``weights`` does not have 4 entries.
    """
    if not isinstance(rel_codes, Tensor):
        raise TypeError(f"rel_codes must be a torch.Tensor (N, 4 * C), got {type(rel_codes)}")
    if rel_codes.dim() != 2 or rel_codes.shape[1] == 0 or rel_codes.shape[1] % 4 != 0:
        raise ValueError(
            f"rel_codes must have shape (N, 4 * C) with C >= 1, got {tuple(rel_codes.shape)}"
        )
    _check_pair(boxes, "boxes", rel_codes, "rel_codes")
    wx, wy, ww, wh = _check_weights(weights)

    n = rel_codes.shape[0]
    codes = rel_codes.reshape(n, rel_codes.shape[1] // 4, 4)  # (N, 4 * C) -> (N, C, 4)
    px, py, pw, ph = _centre_size(boxes.to(rel_codes.dtype))  # 4 x (N,)
    px, py, pw, ph = px[:, None], py[:, None], pw[:, None], ph[:, None]  # 4 x (N, 1)

    dx = codes[..., 0] / wx  # (N, C)
    dy = codes[..., 1] / wy
    dw = codes[..., 2] / ww
    dh = codes[..., 3] / wh
    # Keep exp() finite: a box grows at most exp(bbox_xform_clip)-fold.
    dw = torch.clamp(dw, max=bbox_xform_clip)
    dh = torch.clamp(dh, max=bbox_xform_clip)

    ctr_x = dx * pw + px  # (N, C) * (N, 1) + (N, 1) -> (N, C)
    ctr_y = dy * ph + py
    w = torch.exp(dw) * pw
    h = torch.exp(dh) * ph

    decoded = torch.stack(
        [ctr_x - 0.5 * w, ctr_y - 0.5 * h, ctr_x + 0.5 * w, ctr_y + 0.5 * h], dim=2
    )  # 4 x (N, C) -> (N, C, 4)
    return decoded.reshape(n, rel_codes.shape[1])  # (N, C, 4) -> (N, 4 * C)
