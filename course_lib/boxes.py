"""Axis-aligned boxes: area, IoU, generalized IoU and format conversion.

Shape shorthand used in this module:
    N, M  number of boxes in the first / second set
    4     box coordinates, ``(x1, y1, x2, y2)`` in pixels unless a format says otherwise

Formats understood by :func:`box_convert`:
    ``"xyxy"``    top-left and bottom-right corners ``(x1, y1, x2, y2)`` (the default everywhere)
    ``"xywh"``    top-left corner, width, height ``(x1, y1, w, h)`` (COCO json)
    ``"cxcywh"``  centre, width, height ``(cx, cy, w, h)`` (DETR, YOLO)

The functions mirror ``torchvision.ops`` and compute the same float expressions, so the results are
equal to torchvision's. All of them compute in floating point: float32 and float64 boxes are used as
they are; integer, float16 and bfloat16 boxes are converted to float32 first (torchvision keeps
integers, and its IoU wraps around for uint8 boxes).
"""

from __future__ import annotations

import torch
from torch import Tensor

BOX_FORMATS = ("xyxy", "xywh", "cxcywh")


def check_boxes(boxes: Tensor, name: str = "boxes") -> Tensor:
    """Check that ``boxes`` is a real-valued ``Tensor[N, 4]`` and return it in floating point.

    Args:
        boxes (Tensor[N, 4]): boxes to check.
        name: the argument name used in error messages.

    Returns:
        Tensor[N, 4]: ``boxes`` itself if it is float32/float64, else a float32 copy.

    Raises:
        TypeError: if ``boxes`` is not a tensor, or holds bool or complex values.
        ValueError: if ``boxes`` does not have shape ``(N, 4)``.
    """
    if not isinstance(boxes, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor (N, 4), got {type(boxes).__name__}")
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{name} must have shape (N, 4), got shape {tuple(boxes.shape)}")
    if boxes.dtype == torch.bool or boxes.is_complex():
        raise TypeError(f"{name} must hold real numbers, got dtype {boxes.dtype}")
    if boxes.dtype in (torch.float32, torch.float64):
        return boxes
    return boxes.float()


def as_boxes(values, name: str = "boxes") -> Tensor:
    """Like :func:`check_boxes`, but lenient about what a target dict may hold.

    Accepts anything ``torch.as_tensor`` does (lists of Python numbers become float64), and an
    empty value of any shape (``torch.zeros(0)``, ``[]``) as ``Tensor[0, 4]``.

    Args:
        values: boxes as a tensor, an array or nested lists, ``(N, 4)``.
        name: the argument name used in error messages.

    Returns:
        Tensor[N, 4]: floating-point boxes.
    """
    boxes = values if isinstance(values, Tensor) else torch.as_tensor(values, dtype=torch.float64)
    if boxes.numel() == 0:
        boxes = boxes.reshape(0, 4)
    return check_boxes(boxes, name)


def box_area(boxes: Tensor) -> Tensor:
    """Area of each box, ``(x2 - x1) * (y2 - y1)``.

    Args:
        boxes (Tensor[N, 4]): boxes in ``(x1, y1, x2, y2)`` format.

    Returns:
        Tensor[N]: the area of each box (negative if a box has ``x2 < x1`` xor ``y2 < y1``).
    """
    boxes = check_boxes(boxes, "boxes")
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])  # (N, 4) -> (N,)


def _inter_union(boxes1: Tensor, boxes2: Tensor) -> tuple[Tensor, Tensor]:
    """Pairwise intersection and union areas of two checked sets of xyxy boxes.

    Args:
        boxes1 (Tensor[N, 4]): first set, floating point.
        boxes2 (Tensor[M, 4]): second set, floating point.

    Returns:
        tuple[Tensor[N, M], Tensor[N, M]]: intersection areas and union areas.
    """
    area1 = box_area(boxes1)  # (N,)
    area2 = box_area(boxes2)  # (M,)
    # The intersection of two boxes is the box between the larger top-left corner and the
    # smaller bottom-right corner; its width/height is 0 when the boxes do not overlap.
    lt = torch.maximum(boxes1[:, None, :2], boxes2[None, :, :2])  # (N,1,2), (1,M,2) -> (N,M,2)
    rb = torch.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])  # (N, M, 2)
    wh = (rb - lt).clamp(min=0)  # (N, M, 2)
    inter = wh[..., 0] * wh[..., 1]  # (N, M)
    union = area1[:, None] + area2[None, :] - inter  # (N, M)
    return inter, union


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Intersection over union (Jaccard index) of every pair of boxes.

    ``iou[i, j] = inter / (area1[i] + area2[j] - inter)``. Two boxes that only touch have IoU 0;
    two zero-area boxes have IoU ``nan`` (0 / 0), as in torchvision.

    Args:
        boxes1 (Tensor[N, 4]): first set of boxes in ``(x1, y1, x2, y2)`` format.
        boxes2 (Tensor[M, 4]): second set of boxes in ``(x1, y1, x2, y2)`` format.

    Returns:
        Tensor[N, M]: ``iou[i, j]`` is the IoU of ``boxes1[i]`` and ``boxes2[j]``.

    Raises:
        ValueError: if ``boxes1`` or ``boxes2`` does not have shape ``(N, 4)``.
    """
    boxes1 = check_boxes(boxes1, "boxes1")
    boxes2 = check_boxes(boxes2, "boxes2")
    inter, union = _inter_union(boxes1, boxes2)  # (N, M) each
    return inter / union


def generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Generalized IoU (Rezatofighi et al., 2019) of every pair of boxes.

    ``giou = iou - (hull - union) / hull``, where ``hull`` is the area of the smallest box that
    encloses both boxes. It lies in ``[-1, 1]`` and, unlike IoU, still tells apart two disjoint
    boxes that are near each other from two that are far apart.

    Args:
        boxes1 (Tensor[N, 4]): first set of boxes in ``(x1, y1, x2, y2)`` format.
        boxes2 (Tensor[M, 4]): second set of boxes in ``(x1, y1, x2, y2)`` format.

    Returns:
        Tensor[N, M]: ``giou[i, j]`` is the generalized IoU of ``boxes1[i]`` and ``boxes2[j]``.

    Raises:
        ValueError: if ``boxes1`` or ``boxes2`` does not have shape ``(N, 4)``.
    """
    boxes1 = check_boxes(boxes1, "boxes1")
    boxes2 = check_boxes(boxes2, "boxes2")
    inter, union = _inter_union(boxes1, boxes2)  # (N, M) each
    iou = inter / union  # (N, M)
    # The enclosing box spans from the smaller top-left to the larger bottom-right corner.
    lt = torch.minimum(boxes1[:, None, :2], boxes2[None, :, :2])  # (N, M, 2)
    rb = torch.maximum(boxes1[:, None, 2:], boxes2[None, :, 2:])  # (N, M, 2)
    wh = (rb - lt).clamp(min=0)  # (N, M, 2)
    hull = wh[..., 0] * wh[..., 1]  # (N, M)
    return iou - (hull - union) / hull


def box_convert(boxes: Tensor, in_fmt: str, out_fmt: str) -> Tensor:
    """Convert boxes between the ``"xyxy"``, ``"xywh"`` and ``"cxcywh"`` formats.

    Args:
        boxes (Tensor[N, 4]): boxes in ``in_fmt``.
        in_fmt: format of ``boxes``, one of ``"xyxy"``, ``"xywh"``, ``"cxcywh"``.
        out_fmt: wanted format, one of ``"xyxy"``, ``"xywh"``, ``"cxcywh"``.

    Returns:
        Tensor[N, 4]: the boxes in ``out_fmt`` (a new tensor, also when ``in_fmt == out_fmt``).

    Raises:
        ValueError: if a format is unknown or ``boxes`` does not have shape ``(N, 4)``.
    """
    for arg, fmt in (("in_fmt", in_fmt), ("out_fmt", out_fmt)):
        if fmt not in BOX_FORMATS:
            raise ValueError(f"{arg} must be one of {BOX_FORMATS}, got {fmt!r}")
    boxes = check_boxes(boxes, "boxes")
    if in_fmt == out_fmt:
        return boxes.clone()

    # Go through xyxy: in_fmt -> xyxy -> out_fmt.
    a, b, c, d = boxes.unbind(1)  # (N, 4) -> 4 x (N,)
    if in_fmt == "xywh":  # (x1, y1, w, h)
        a, b, c, d = a, b, a + c, b + d
    elif in_fmt == "cxcywh":  # (cx, cy, w, h)
        a, b, c, d = a - 0.5 * c, b - 0.5 * d, a + 0.5 * c, b + 0.5 * d
    x1, y1, x2, y2 = a, b, c, d

    if out_fmt == "xyxy":
        out = (x1, y1, x2, y2)
    elif out_fmt == "xywh":
        out = (x1, y1, x2 - x1, y2 - y1)
    else:  # "cxcywh"
        out = ((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1)
    return torch.stack(out, dim=1)  # 4 x (N,) -> (N, 4)
