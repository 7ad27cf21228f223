"""YOLOv1 building blocks: the grid target, decoding, the sum-squared loss and postprocessing.

YOLOv1 (Redmon et al., 2016) cuts the image into an ``S x S`` grid. Each cell predicts ``B``
boxes, each with a confidence, and *one* set of ``C`` class probabilities shared by its B boxes.
The whole prediction for one image is a single tensor ``(S, S, B*5 + C)``; along its last axis
a cell reads::

    [x, y, w, h, conf] for predictor 0, ..., [x, y, w, h, conf] for predictor B-1, p_1 .. p_C
     index 5b + 0 .. 5b + 4 for predictor b                             index 5B .. 5B + C - 1

* ``x, y``: the box centre inside its cell, as a fraction of the cell (0 = the cell's left/top
  border, 1 = its right/bottom border);
* ``w, h``: the box width and height as a fraction of the image width and height. They are
  *not* square-rooted here: :func:`yolo_loss` takes the square roots, of the prediction and of
  the target alike, and :func:`yolo_decode` reads ``w, h`` directly;
* ``conf``: the confidence that the predictor holds an object;
* ``p_c``: the probability of class ``c``; label ``c`` (1..C) is at index ``5B + c - 1``.
  There is no background class: a cell without an object says so through its confidences.

Two concrete layouts:

* the paper: ``S = 7, B = 2, C = 20`` (PASCAL VOC) on 448 px images: ``7 x 7 x 30`` numbers,
  64 px cells, 98 boxes per image;
* this course: ``S = 8, B = 2, C = 3`` on 128 px images: ``8 x 8 x 13`` numbers, 16 px cells,
  128 boxes per image.

The rules shared by every function of this module:

* **Image size** is ``(height, width)`` (an int means a square image). A cell is ``W / S``
  pixels wide and ``H / S`` pixels high.
* **Responsible cell** (:func:`responsible_cells`): the cell that holds the box centre
  ``(cx, cy)``, ``row = floor(cy * S / H)``, ``col = floor(cx * S / W)``. Cells are half-open,
  ``[start, end)``: a centre exactly on the border between two cells belongs to the cell to its
  right (below). A centre exactly on the image's right (bottom) edge belongs to the last column
  (row), with ``x = 1`` (``y = 1``). A centre outside the image goes to the nearest border cell
  and its ``x, y`` fall outside ``[0, 1]``; the round trip still holds.
* **One object per cell** (:func:`one_box_per_cell`): a cell can describe one box only. When
  several box centres fall in the same cell, the box with the largest area is kept (equal areas:
  the first one in the target); :func:`yolo_encode` drops the others. ``(~keep).sum()`` is the
  number of dropped boxes.
* **Target** (:func:`yolo_encode`): all B predictor slots of a responsible cell hold the same
  box with confidence 1, and the one-hot class; every other cell is all zeros. The loss picks the
  responsible predictor by IoU at each step, so the target does not need to.

Shape shorthand used in this module:
    N  images in a batch
    S  grid size: S x S cells
    B  boxes predicted per cell
    C  object classes, labels 1..C (0 = background is never predicted)
    D  numbers per cell, ``B * 5 + C``
    G  ground-truth boxes of one image
    K  detections of one image
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import batched_nms

from course_lib.boxes import as_boxes, box_area
from course_lib.models.backbone import TinyBackbone, conv_bn_relu, stack_batch, stack_images

SQRT_EPS = 1e-9
"""Added under the square root of ``w, h`` in the loss (``sign(v) * sqrt(|v| + SQRT_EPS)``) so
that its gradient stays finite at 0."""


def yolo_channels(B: int, C: int) -> int:
    """Numbers per cell of the YOLOv1 output, ``B * 5 + C`` (30 for the paper's B=2, C=20).

    Args:
        B: boxes predicted per cell.
        C: object classes.

    Returns:
        int: ``B * 5 + C``.
    """
    return B * 5 + C


def _check_grid(S: int, B: int, C: int) -> None:
    """Raise ``ValueError`` unless S, B and C are positive integers."""
    for name, value in (("S", S), ("B", B), ("C", C)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


def _image_hw(image_size: int | Sequence[int]) -> tuple[float, float]:
    """``(height, width)`` as floats from an int (square image) or a pair."""
    if isinstance(image_size, int | float):
        height = width = image_size
    elif len(image_size) == 2:
        height, width = image_size
    else:
        raise ValueError(f"image_size must be an int or (height, width), got {image_size!r}")
    if not (height > 0 and width > 0):
        raise ValueError(f"image_size must be positive, got {image_size!r}")
    return float(height), float(width)


def _as_batch(output: Tensor, S: int, B: int, C: int, name: str) -> tuple[Tensor, bool]:
    """Check a ``(N, S, S, D)`` or ``(S, S, D)`` tensor; return it as a batch and "was single"."""
    expected = (S, S, yolo_channels(B, C))
    if not isinstance(output, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(output).__name__}")
    if output.dim() == 3 and tuple(output.shape) == expected:
        return output[None], True  # (S, S, D) -> (1, S, S, D)
    if output.dim() == 4 and tuple(output.shape[1:]) == expected:
        return output, False
    raise ValueError(
        f"{name} must have shape (N, S, S, B*5 + C) = (N, {S}, {S}, {expected[2]}) or "
        f"{expected}, got shape {tuple(output.shape)}"
    )


def responsible_cells(boxes: Tensor, S: int, image_size: int | Sequence[int]) -> Tensor:
    """The grid cell that holds the centre of each box (the cell *responsible* for it).

    ``row = floor(cy * S / H)``, ``col = floor(cx * S / W)``, clamped to ``0 .. S - 1``; see the
    module docstring for the border rules.

    Args:
        boxes (Tensor[G, 4]): boxes in ``(x1, y1, x2, y2)`` pixels.
        S: grid size.
        image_size: ``(height, width)`` in pixels, or an int for a square image.

    Returns:
        Tensor[G, 2]: int64 ``(row, col)`` of each box's cell.
    """
    boxes = as_boxes(boxes, "boxes").to(torch.float64)  # float64: borders land exactly
    height, width = _image_hw(image_size)
    cx = (boxes[:, 0] + boxes[:, 2]) / 2  # (G,)
    cy = (boxes[:, 1] + boxes[:, 3]) / 2  # (G,)
    col = torch.floor(cx * S / width).clamp(0, S - 1)  # (G,)
    row = torch.floor(cy * S / height).clamp(0, S - 1)  # (G,)
    return torch.stack([row, col], dim=1).to(torch.int64)  # (G, 2)


def one_box_per_cell(boxes: Tensor, S: int, image_size: int | Sequence[int]) -> Tensor:
    """Which boxes YOLOv1 can keep: per responsible cell, the largest box (ties: the first).

    Args:
        boxes (Tensor[G, 4]): boxes in ``(x1, y1, x2, y2)`` pixels.
        S: grid size.
        image_size: ``(height, width)`` in pixels, or an int for a square image.

    Returns:
        Tensor[G]: bool, ``True`` for the box each occupied cell keeps; ``(~keep).sum()`` boxes
        are dropped.
    """
    boxes = as_boxes(boxes, "boxes")
    cells = responsible_cells(boxes, S, image_size)  # (G, 2)
    cell_id = cells[:, 0] * S + cells[:, 1]  # (G,)
    area = box_area(boxes)  # (G,)
    index = torch.arange(len(boxes), device=boxes.device)  # (G,)
    same_cell = cell_id[:, None] == cell_id[None, :]  # (G, G)
    # beaten[i, j]: box j wins over box i (larger, or as large and earlier)
    beaten = (area[None, :] > area[:, None]) | (
        (area[None, :] == area[:, None]) & (index[None, :] < index[:, None])
    )  # (G, G)
    return ~(same_cell & beaten).any(dim=1)  # (G, G) -> (G,)


def yolo_encode(
    targets: dict[str, Tensor] | Sequence[dict[str, Tensor]],
    S: int,
    B: int,
    C: int,
    image_size: int | Sequence[int],
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """The YOLOv1 target tensor of a batch of target dicts (or of one target dict).

    For each kept box (:func:`one_box_per_cell`), its responsible cell gets, in each of its B
    predictor slots, ``(x, y, w, h, 1)``: the centre offset in the cell, the size as a fraction
    of the image, confidence 1; and the one-hot class (label ``c`` at index ``5B + c - 1``).
    All other cells are zeros. See the module docstring for the layout and the border rules.

    Args:
        targets: a list of N dicts, or one dict, with ``"boxes"`` (Tensor[G, 4], xyxy pixels)
            and ``"labels"`` (Tensor[G], int64, 1..C).
        S: grid size.
        B: boxes predicted per cell.
        C: object classes.
        image_size: ``(height, width)`` in pixels, or an int for a square image.
        dtype: floating-point dtype of the result.

    Returns:
        Tensor[N, S, S, B*5 + C] for a list, Tensor[S, S, B*5 + C] for one dict; on the device
        of the (first) target's boxes.

    Raises:
        ValueError: on bad S, B, C or image size, boxes that are not ``(G, 4)`` or have
            ``x2 < x1`` or ``y2 < y1``, labels that are not ``(G,)`` or not in 1..C.
    """
    _check_grid(S, B, C)
    height, width = _image_hw(image_size)
    single = isinstance(targets, dict)
    batch = [targets] if single else list(targets)
    first = batch[0]["boxes"] if batch else None
    device = first.device if isinstance(first, Tensor) else torch.device("cpu")
    encoded = torch.zeros(len(batch), S, S, yolo_channels(B, C), dtype=dtype, device=device)

    for n, target in enumerate(batch):
        boxes = as_boxes(target["boxes"], f"targets[{n}]['boxes']").to(device, torch.float64)
        labels = torch.as_tensor(target["labels"], device=device)
        if labels.shape != boxes.shape[:1]:
            raise ValueError(f"targets[{n}]['labels'] must have shape ({len(boxes)},) like the "
                             f"boxes, got shape {tuple(labels.shape)}")
        if labels.numel() and (labels.min() < 1 or labels.max() > C):
            raise ValueError(f"targets[{n}]['labels'] must be in 1..C = 1..{C}, got "
                             f"{labels.tolist()}")
        if bool((boxes[:, 2:] < boxes[:, :2]).any()):
            raise ValueError(f"targets[{n}]['boxes'] must have x2 >= x1 and y2 >= y1")
        keep = one_box_per_cell(boxes, S, (height, width))  # (G,)
        boxes, labels = boxes[keep], labels[keep].to(torch.int64)  # (G', 4), (G',)
        row, col = responsible_cells(boxes, S, (height, width)).unbind(dim=1)  # (G',) each
        cx = (boxes[:, 0] + boxes[:, 2]) / 2
        cy = (boxes[:, 1] + boxes[:, 3]) / 2
        cell_box = torch.stack([
            cx * S / width - col,  # x: centre offset in the cell, in cell widths
            cy * S / height - row,  # y
            (boxes[:, 2] - boxes[:, 0]) / width,  # w: fraction of the image width
            (boxes[:, 3] - boxes[:, 1]) / height,  # h
            torch.ones_like(cx),  # confidence
        ], dim=1)  # (G', 5)
        encoded[n, row, col, : 5 * B] = cell_box.repeat(1, B).to(dtype)  # (G', 5B), same box B x
        encoded[n, row, col, 5 * B + labels - 1] = 1.0  # one-hot class
    return encoded[0] if single else encoded


def _cell_boxes(output: Tensor, S: int, B: int, image_size: tuple[float, float]) -> Tensor:
    """The B boxes of every cell in ``(x1, y1, x2, y2)`` pixels (negative ``w, h`` count as 0).

    Args:
        output (Tensor[N, S, S, D]): the YOLOv1 output.
        S: grid size.
        B: boxes predicted per cell.
        image_size: ``(height, width)``.

    Returns:
        Tensor[N, S, S, B, 4]: the boxes.
    """
    height, width = image_size
    pred = output[..., : 5 * B].unflatten(-1, (B, 5))  # (N, S, S, 5B) -> (N, S, S, B, 5)
    grid = torch.arange(S, device=output.device, dtype=output.dtype)  # (S,)
    rows, cols = grid.view(1, S, 1, 1), grid.view(1, 1, S, 1)  # broadcast over (N, S, S, B)
    cx = (cols + pred[..., 0]) * (width / S)  # (N, S, S, B)
    cy = (rows + pred[..., 1]) * (height / S)
    half_w = pred[..., 2].clamp(min=0) * width / 2
    half_h = pred[..., 3].clamp(min=0) * height / 2
    return torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], dim=-1)


def yolo_decode(
    output: Tensor,
    S: int,
    B: int,
    C: int,
    image_size: int | Sequence[int],
    conf_threshold: float = 0.0,
) -> list[dict[str, Tensor]] | dict[str, Tensor]:
    """Every predicted box of a YOLOv1 output with its class-specific score and label.

    For each cell and each of its B predictors: the box from ``(x, y, w, h)`` (the same
    quantities as the target; a negative ``w`` or ``h`` counts as 0), the score
    ``conf * max_c p_c`` (YOLOv1's test-time class-specific confidence) and the label
    ``argmax_c p_c + 1`` (equal probabilities: the lowest label). Candidates with
    ``score >= conf_threshold`` are kept, *all B predictors of a cell included*: the target of a
    cell holds its box B times, so decoding a target gives each box B times (YOLOv1 relies on
    NMS, :func:`postprocess_yolo`, to remove such duplicates). Boxes are not clipped to the image.

    Args:
        output (Tensor[N, S, S, B*5 + C] or Tensor[S, S, B*5 + C]): network output or target.
        S: grid size.
        B: boxes predicted per cell.
        C: object classes.
        image_size: ``(height, width)`` in pixels, or an int for a square image.
        conf_threshold: smallest class-specific score kept (inclusive).

    Returns:
        For a batch, a list of N dicts, for a single ``(S, S, D)`` tensor one dict, with
        ``"boxes"`` (Tensor[K, 4], xyxy pixels), ``"scores"`` (Tensor[K]) and ``"labels"``
        (Tensor[K], int64, 1..C), in cell order (row by row, then predictor 0..B-1).

    Raises:
        ValueError: if ``output`` does not have shape ``(N, S, S, B*5 + C)`` or ``(S, S, ...)``.
    """
    _check_grid(S, B, C)
    batch, single = _as_batch(output, S, B, C, "output")
    num = batch.shape[0]
    boxes = _cell_boxes(batch, S, B, _image_hw(image_size))  # (N, S, S, B, 4)
    conf = batch[..., 4 : 5 * B : 5]  # (N, S, S, B)
    best_prob, best_class = batch[..., 5 * B :].max(dim=-1)  # (N, S, S, C) -> (N, S, S)
    scores = conf * best_prob[..., None]  # (N, S, S, B)
    labels = (best_class + 1)[..., None].expand(-1, -1, -1, B)  # (N, S, S) -> (N, S, S, B)

    boxes = boxes.reshape(num, S * S * B, 4)  # (N, S, S, B, 4) -> (N, S*S*B, 4)
    scores = scores.reshape(num, S * S * B)  # (N, S*S*B)
    labels = labels.reshape(num, S * S * B)  # (N, S*S*B)
    detections = []
    for n in range(num):
        keep = scores[n] >= conf_threshold  # (S*S*B,)
        detections.append(
            {"boxes": boxes[n][keep], "scores": scores[n][keep], "labels": labels[n][keep]}
        )
    return detections[0] if single else detections


def _cell_iou(pred: Tensor, gt: Tensor, S: int) -> Tensor:
    """IoU of boxes ``(x, y, w, h)`` given in the YOLO cell layout, within the same cell.

    IoU does not change when both boxes are shifted or when an axis is stretched, so both boxes
    are measured in cell units (``w * S`` cells wide) from their cell's corner. Negative ``w, h``
    count as 0, and a 0 / 0 IoU (two empty boxes) as 0.

    Args:
        pred (Tensor[..., 4]): predicted ``(x, y, w, h)``.
        gt (Tensor[..., 4]): ground-truth ``(x, y, w, h)`` (broadcast against ``pred``).
        S: grid size.

    Returns:
        Tensor[...]: the IoU of each pair.
    """
    half_pred = pred[..., 2:4].clamp(min=0) * S / 2  # (..., 2) half width, half height
    half_gt = gt[..., 2:4].clamp(min=0) * S / 2
    lo = torch.maximum(pred[..., :2] - half_pred, gt[..., :2] - half_gt)  # (..., 2)
    hi = torch.minimum(pred[..., :2] + half_pred, gt[..., :2] + half_gt)
    inter = (hi - lo).clamp(min=0).prod(dim=-1)  # (...,)
    union = (2 * half_pred).prod(dim=-1) + (2 * half_gt).prod(dim=-1) - inter
    return (inter / union).nan_to_num(nan=0.0)


def _signed_sqrt(values: Tensor) -> Tensor:
    """``sign(v) * sqrt(|v| + SQRT_EPS)`` (0 at 0): a square root that accepts negative ``v``."""
    return torch.sign(values) * torch.sqrt(values.abs() + SQRT_EPS)


def yolo_loss(
    output: Tensor,
    target: Tensor,
    S: int,
    B: int,
    C: int,
    lambda_coord: float = 5.0,
    lambda_noobj: float = 0.5,
    iou_confidence: bool = False,
    lambda_class: float = 1.0,
) -> dict[str, Tensor]:
    """The YOLOv1 sum-squared loss, split into its five terms.

    In a cell with an object, the *responsible* predictor is the one of the B whose predicted
    box has the highest IoU with the ground-truth box (equal IoUs: the lowest index; the choice
    is not differentiated through). With ``1_obj`` marking responsible predictors, ``1_noobj``
    all other predictors (in empty cells *and* the other B - 1 of an object cell), and sums
    over all images, cells and predictors:

    * ``"coord"``: ``lambda_coord * sum 1_obj [(x - x')**2 + (y - y')**2]``;
    * ``"size"``: ``lambda_coord * sum 1_obj [(sqrt w - sqrt w')**2 + (sqrt h - sqrt h')**2]``;
    * ``"obj"``: ``sum 1_obj (conf - conf')**2`` with ``conf' = 1``, or with ``iou_confidence``
      the paper's ``conf' = Pr(object) * IoU`` = the IoU of the predicted box with the GT box
      (a constant, not differentiated);
    * ``"noobj"``: ``lambda_noobj * sum 1_noobj conf**2``;
    * ``"class"``: ``lambda_class * sum over cells with an object, over c, (p_c - p'_c)**2``
      (YOLOv1: ``lambda_class = 1``);

    each divided by the batch size N. The YOLOv1 loss is ``sum(losses.values())``. The square
    root is ``sign(v) * sqrt(|v| + SQRT_EPS)``, so that a negative predicted ``w`` or ``h`` still
    gets a gradient that pushes it up and the gradient at 0 stays finite.

    Note that ``yolo_loss(target, target)`` is not 0: the non-responsible copies of each box
    predict confidence 1 and pay ``lambda_noobj`` each. A perfect prediction has one predictor
    per object cell equal to the target slot and confidence 0 in all others.

    Args:
        output (Tensor[N, S, S, B*5 + C]): network output, or ``(S, S, B*5 + C)`` for one image.
        target (Tensor[N, S, S, B*5 + C]): :func:`yolo_encode` of the targets, same shape.
        S: grid size.
        B: boxes predicted per cell.
        C: object classes.
        lambda_coord: weight of the ``"coord"`` and ``"size"`` terms.
        lambda_noobj: weight of the ``"noobj"`` term.
        iou_confidence: the target confidence of a responsible predictor is its IoU, not 1.
        lambda_class: weight of the ``"class"`` term.

    Returns:
        dict[str, Tensor]: scalar ``"coord"``, ``"size"``, ``"obj"``, ``"noobj"`` and
        ``"class"``.

    Raises:
        ValueError: if ``output`` or ``target`` has the wrong shape, or they differ.
    """
    _check_grid(S, B, C)
    output, _ = _as_batch(output, S, B, C, "output")
    target, _ = _as_batch(target, S, B, C, "target")
    if output.shape != target.shape:
        raise ValueError(f"output and target must have the same shape, got "
                         f"{tuple(output.shape)} and {tuple(target.shape)}")
    target = target.to(output.dtype)
    num = output.shape[0]
    pred = output[..., : 5 * B].unflatten(-1, (B, 5))  # (N, S, S, 5B) -> (N, S, S, B, 5)
    gt = target[..., None, 0:5]  # (N, S, S, 1, 5): the cell's box, slot 0 (all slots agree)
    has_object = target[..., 4] > 0  # (N, S, S)

    iou = _cell_iou(pred[..., :4].detach(), gt[..., :4], S)  # (N, S, S, B)
    best = iou.argmax(dim=-1)  # (N, S, S); the first maximum: equal IoUs -> lowest index
    responsible = F.one_hot(best, B).bool() & has_object[..., None]
    obj = responsible.to(output.dtype)  # (N, S, S, B) 1_obj
    noobj = 1.0 - obj  # (N, S, S, B) 1_noobj

    coord = ((pred[..., 0] - gt[..., 0]) ** 2 + (pred[..., 1] - gt[..., 1]) ** 2)  # (N, S, S, B)
    size = ((_signed_sqrt(pred[..., 2]) - _signed_sqrt(gt[..., 2])) ** 2
            + (_signed_sqrt(pred[..., 3]) - _signed_sqrt(gt[..., 3])) ** 2)  # (N, S, S, B)
    conf_target = iou if iou_confidence else torch.ones_like(iou)  # (N, S, S, B)
    classes = ((output[..., 5 * B :] - target[..., 5 * B :]) ** 2).sum(dim=-1)  # (N, S, S)

    denominator = max(num, 1)
    return {
        "coord": lambda_coord * (obj * coord).sum() / denominator,
        "size": lambda_coord * (obj * size).sum() / denominator,
        "obj": (obj * (pred[..., 4] - conf_target) ** 2).sum() / denominator,
        "noobj": lambda_noobj * (noobj * pred[..., 4] ** 2).sum() / denominator,
        "class": lambda_class * (has_object.to(output.dtype) * classes).sum() / denominator,
    }


def postprocess_yolo(
    output: Tensor,
    S: int,
    B: int,
    C: int,
    image_size: int | Sequence[int],
    conf_threshold: float = 0.2,
    nms_thresh: float = 0.5,
    max_detections: int = 100,
) -> list[dict[str, Tensor]] | dict[str, Tensor]:
    """Detections from a YOLOv1 output: the lecture's three steps.

    1. decode every predicted box with its class-specific score (:func:`yolo_decode`);
    2. keep those with ``score >= conf_threshold``;
    3. NMS per class with IoU threshold ``nms_thresh`` (torchvision's compiled ``batched_nms``;
       :func:`course_lib.nms.batched_nms` is the readable version, tested equal to it), then the
       ``max_detections`` best.

    Args:
        output (Tensor[N, S, S, B*5 + C] or Tensor[S, S, B*5 + C]): network output.
        S: grid size.
        B: boxes predicted per cell.
        C: object classes.
        image_size: ``(height, width)`` in pixels, or an int for a square image.
        conf_threshold: smallest class-specific score kept (inclusive).
        nms_thresh: a box is suppressed by a better box of its class with a greater IoU.
        max_detections: detections kept per image, best first.

    Returns:
        For a batch, a list of N dicts, for a single ``(S, S, D)`` tensor one dict, with
        ``"boxes"`` (Tensor[K, 4], xyxy pixels), ``"scores"`` (Tensor[K]) and ``"labels"``
        (Tensor[K], int64, 1..C), best score first.

    Raises:
        ValueError: if ``output`` does not have shape ``(N, S, S, B*5 + C)`` or ``(S, S, ...)``.
    """
    decoded = yolo_decode(output, S, B, C, image_size, conf_threshold)
    single = isinstance(decoded, dict)
    detections = []
    for det in [decoded] if single else decoded:
        keep = batched_nms(det["boxes"], det["scores"], det["labels"], nms_thresh)  # (K',)
        keep = keep[:max_detections]  # (K,)
        detections.append({key: value[keep] for key, value in det.items()})
    return detections[0] if single else detections


# ------------------------------------------------------------------------------- the network


class YOLO(nn.Module):
    """A small YOLOv1 for square images of one size, trained from scratch.

    The backbone's map is brought down to the ``S x S`` grid by stride-2 blocks, then
    ``depth`` ``3x3`` blocks and a ``1x1`` convolution predict the ``B * 5 + C`` numbers of
    every cell. (YOLOv1 ends with fully connected layers; a convolutional head learns faster
    from few images, and with ``S = 8`` on 128 px a cell still sees ~150 px around it.) The
    raw outputs are squashed into the ranges of the target (:func:`yolo_encode`): sigmoid for
    ``x, y, w, h`` and the confidences, softmax for the class probabilities; :meth:`grid`
    returns them. (The paper's outputs are linear; on these scenes the squashed outputs
    trained to a clearly higher mAP in the same budget.)

    The calling convention is torchvision's: in training mode ``model(images, targets)``
    returns the five terms of :func:`yolo_loss`, in eval mode ``model(images)`` returns one
    dict of ``boxes``, ``scores`` and ``labels`` per image (:func:`postprocess_yolo`).

    Args:
        num_classes: C, object classes (labels 1..C).
        image_size: the side of the square input images.
        S: grid size; the backbone's map side must be ``S * 2**n`` for some n >= 0.
        B: boxes predicted per cell.
        backbone: maps ``(N, 3, H, H)`` to ``(N, F, H/stride, H/stride)``, with
            ``out_channels`` and ``stride`` (default :class:`TinyBackbone`).
        hidden: channels of the head.
        depth: ``3x3`` blocks at the grid's resolution.
        lambda_coord, lambda_noobj, iou_confidence, lambda_class: the loss, see
            :func:`yolo_loss`.
        conf_threshold, nms_thresh, max_detections: inference, see :func:`postprocess_yolo`.
    """

    def __init__(
        self,
        num_classes: int,
        image_size: int = 128,
        S: int = 8,
        B: int = 2,
        backbone: nn.Module | None = None,
        hidden: int = 128,
        depth: int = 3,
        lambda_coord: float = 5.0,
        lambda_noobj: float = 0.5,
        iou_confidence: bool = False,
        lambda_class: float = 1.0,
        conf_threshold: float = 0.01,
        nms_thresh: float = 0.5,
        max_detections: int = 100,
    ) -> None:
        super().__init__()
        _check_grid(S, B, num_classes)
        self.num_classes, self.image_size = num_classes, image_size
        self.S, self.B, self.C = S, B, num_classes
        self.backbone = backbone if backbone is not None else TinyBackbone()
        side = image_size // self.backbone.stride
        if side < S or side % S or (side // S) & (side // S - 1):
            raise ValueError(f"the backbone's {side}x{side} map (image {image_size} px, stride "
                             f"{self.backbone.stride}) cannot be brought down to an {S}x{S} "
                             f"grid by halving; pick S = {side} / 2**n")
        channels, blocks = self.backbone.out_channels, []
        while side > S:  # stride-2 blocks down to the grid
            blocks.append(conv_bn_relu(channels, hidden, stride=2))
            channels, side = hidden, side // 2
        for _ in range(depth):  # each widens what a cell sees by one cell on every side
            blocks.append(conv_bn_relu(channels, hidden))
            channels = hidden
        self.neck = nn.Sequential(*blocks)
        self.predict = nn.Conv2d(hidden, yolo_channels(B, num_classes), 1)
        self.lambda_coord, self.lambda_noobj = lambda_coord, lambda_noobj
        self.iou_confidence, self.lambda_class = iou_confidence, lambda_class
        self.conf_threshold, self.nms_thresh = conf_threshold, nms_thresh
        self.max_detections = max_detections

    def grid(self, images: Sequence[Tensor] | Tensor) -> Tensor:
        """The YOLOv1 output of every cell, in the layout and ranges of :func:`yolo_encode`.

        Args:
            images: N images ``Tensor[3, H, H]`` in [0, 1] (a list or a ``Tensor[N, 3, H, H]``).

        Returns:
            Tensor[N, S, S, B*5 + C]: per cell, B times ``(x, y, w, h, conf)`` in (0, 1), then
            C class probabilities summing to 1.
        """
        return self._grid(stack_images(images, self.image_size))

    def _grid(self, batch: Tensor) -> Tensor:
        raw = self.predict(self.neck(self.backbone(batch)))  # (N, 3, H, H) -> (N, D, S, S)
        raw = raw.permute(0, 2, 3, 1)  # (N, B*5+C, S, S) -> (N, S, S, B*5+C)
        boxes = torch.sigmoid(raw[..., : 5 * self.B])  # (N, S, S, 5B)
        classes = torch.softmax(raw[..., 5 * self.B :], dim=-1)  # (N, S, S, C)
        return torch.cat([boxes, classes], dim=-1)

    def forward(self, images: Sequence[Tensor] | Tensor,
                targets: Sequence[dict[str, Tensor]] | None = None):
        """Losses (training mode) or detections (eval mode).

        Args:
            images: N images ``Tensor[3, H, H]`` in [0, 1] (a list, or a ``Tensor[N, 3, H, H]``).
            targets: N dicts with ``"boxes"`` (Tensor[G, 4], xyxy pixels) and ``"labels"``
                (Tensor[G], 1..C); needed in training mode.

        Returns:
            training: the dict of :func:`yolo_loss` (``coord``, ``size``, ``obj``, ``noobj``,
            ``class``), in eval mode a list of N dicts with ``"boxes"`` (Tensor[K, 4]),
            ``"scores"`` (Tensor[K]) and ``"labels"`` (Tensor[K] int64).
        """
        batch = stack_batch(images, targets, self.image_size, self.training)  # (N, 3, H, H)
        output = self._grid(batch)  # (N, S, S, B*5+C)
        if self.training:
            target = yolo_encode(list(targets), self.S, self.B, self.C, self.image_size,
                                 dtype=output.dtype)
            return yolo_loss(output, target, self.S, self.B, self.C, self.lambda_coord,
                             self.lambda_noobj, self.iou_confidence, self.lambda_class)
        return postprocess_yolo(output, self.S, self.B, self.C, self.image_size,
                                self.conf_threshold, self.nms_thresh, self.max_detections)
