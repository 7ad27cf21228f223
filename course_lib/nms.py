"""Non-maximum suppression: greedy NMS, per-class NMS, Soft-NMS and a size-adaptive variant.

Shape shorthand used in this module:
    N  number of candidate boxes
    K  number of boxes kept

Boxes are ``(x1, y1, x2, y2)`` float tensors ``(N, 4)``; scores are ``(N,)``. Every function
returns int64 indices into the input, best first.

Greedy NMS visits the boxes from the highest score to the lowest (equal scores: lower index first)
and keeps a box unless a box kept before it overlaps it with ``IoU > iou_threshold``. ``nms`` gives
exactly what ``torchvision.ops.nms`` gives: the same indices in the same order, also for tied
scores and for IoUs that are exactly at the threshold. ``nms_steps`` runs the same greedy loop one
kept box at a time and records each decision, for the NMS stepper widget.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from course_lib.boxes import box_area, box_iou, check_boxes

SOFT_NMS_METHODS = ("linear", "gaussian")

# nms() settles this many boxes per Python-level step (see _greedy_keep).
_BLOCK = 128


def _check_boxes_scores(boxes: Tensor, scores: Tensor) -> Tensor:
    """Validate an NMS input pair and return the boxes in floating point."""
    boxes = check_boxes(boxes, "boxes")
    if not isinstance(scores, Tensor) or scores.dim() != 1:
        shape = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
        raise ValueError(f"scores must have shape (N,), got {shape}")
    if scores.shape[0] != boxes.shape[0]:
        raise ValueError(
            f"boxes and scores must have the same N, got boxes of shape {tuple(boxes.shape)} "
            f"and scores of shape {tuple(scores.shape)}"
        )
    return boxes


def _rank(scores: Tensor) -> Tensor:
    """Indices that sort ``scores`` from high to low; equal scores keep their input order.

    torchvision's CPU kernel sorts the same way. (``scores.sort(descending=True)`` without
    ``stable=True`` may put tied scores in any order.)
    """
    return torch.sort(scores, descending=True, stable=True).indices  # (N,)


def _overlaps(boxes1: Tensor, boxes2: Tensor, thresholds: Tensor) -> Tensor:
    """Which pairs overlap by more than the threshold of the ``boxes1`` box.

    The IoU is computed as in torchvision's kernel, ``inter / (area1 + area2 - inter)`` in the
    boxes' dtype, and compared with the threshold in float64 (C++ compares ``float > double``).
    Comparing a float32 tensor with a Python float would round the threshold to float32 and can
    flip the decision for an IoU right at the threshold (e.g. an IoU of 3/10 and a threshold 0.3).

    Args:
        boxes1 (Tensor[A, 4]): the higher-scoring boxes.
        boxes2 (Tensor[B, 4]): the lower-scoring boxes.
        thresholds (Tensor[A]): float64 IoU threshold of each ``boxes1`` box.

    Returns:
        Tensor[A, B]: bool, ``True`` where ``boxes1[a]`` suppresses ``boxes2[b]``.
    """
    iou = box_iou(boxes1, boxes2).to(torch.float64)  # (A, B)
    return iou > thresholds[:, None]  # (A, B) > (A, 1); a NaN IoU (0 / 0) never suppresses


def _greedy_keep(boxes: Tensor, thresholds: Tensor) -> Tensor:
    """Greedy NMS on boxes that are already sorted best first.

    Box ``j`` is kept iff no kept box ``i < j`` has ``IoU(i, j) > thresholds[i]``. The plain loop
    (one kept box per step, see :func:`nms_steps`) runs once per kept box; this version settles a
    block of ``_BLOCK`` boxes per step, which is much faster in Python:

    1. every box of the block that overlaps an already kept box is suppressed (all kept boxes
       come before the block, so they all score higher);
    2. the remaining candidates of the block are settled among themselves. With ``over[i, j]``
       "candidate i would suppress candidate j" (only ``i < j``), the answer satisfies
       ``kept[j] = not any(kept[i] and over[i, j])``. Start from all True and apply this rule
       until nothing changes: ``kept[j]`` depends only on entries before ``j``, so after ``t``
       rounds the first ``t`` entries are final, and the fixed point is the greedy answer.

    Args:
        boxes (Tensor[N, 4]): boxes sorted by decreasing score.
        thresholds (Tensor[N]): float64 IoU threshold of each box when it is the kept box.

    Returns:
        Tensor[K]: int64 positions (into the sorted ``boxes``) of the kept boxes, increasing.
    """
    n = boxes.shape[0]
    kept_pos = torch.empty(0, dtype=torch.int64, device=boxes.device)  # (K,) so far
    for start in range(0, n, _BLOCK):
        block = boxes[start : start + _BLOCK]  # (B, 4)
        # 1. suppression by the boxes kept in earlier blocks
        hit = _overlaps(boxes[kept_pos], block, thresholds[kept_pos])  # (K, B)
        cand = torch.nonzero(~hit.any(dim=0)).squeeze(1)  # (C,) candidates in the block
        # 2. greedy among the candidates: over[i, j] only for i < j
        over = _overlaps(block[cand], block[cand], thresholds[start + cand])  # (C, C)
        over = torch.triu(over, diagonal=1)
        kept = torch.ones_like(cand, dtype=torch.bool)  # (C,)
        while True:
            new_kept = ~(over & kept[:, None]).any(dim=0)  # (C, C) -> (C,)
            if torch.equal(new_kept, kept):
                break
            kept = new_kept
        kept_pos = torch.cat([kept_pos, start + cand[kept]])
    return kept_pos


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy non-maximum suppression, identical to ``torchvision.ops.nms``.

    Boxes are visited from the highest score down (equal scores: lower index first). A box is
    kept unless a box kept before it overlaps it with ``IoU > iou_threshold``; an IoU exactly
    equal to the threshold does not suppress. The IoU is computed with the same float expression
    as torchvision's kernel, so even borderline decisions agree. On a GPU the result is still
    what torchvision's CPU kernel returns (torchvision's CUDA kernel may order ties differently).

    Args:
        boxes (Tensor[N, 4]): boxes in ``(x1, y1, x2, y2)`` format.
        scores (Tensor[N]): score of each box.
        iou_threshold: suppress boxes whose IoU with a kept box is greater than this.

    Returns:
        Tensor[K]: int64 indices of the kept boxes, by decreasing score.

    Raises:
        ValueError: if ``boxes`` is not ``(N, 4)``, ``scores`` is not ``(N,)`` or N differs.
    """
    boxes = _check_boxes_scores(boxes, scores)
    order = _rank(scores)  # (N,)
    thresholds = torch.full(
        (boxes.shape[0],), float(iou_threshold), dtype=torch.float64, device=boxes.device
    )
    kept_pos = _greedy_keep(boxes[order], thresholds)  # (K,) positions in `order`
    return order[kept_pos]  # (K,)


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """Per-class NMS, identical to ``torchvision.ops.batched_nms``.

    Boxes only suppress boxes with the same ``idxs`` value (class). To give torchvision's exact
    output, this picks the same one of two strategies as torchvision:

    * up to 1000 boxes on CPU (25000 on GPU), the *coordinate trick*: shift every box by
      ``class * (max coordinate + 1)`` so that boxes of different classes never overlap, then
      run a single :func:`nms`. (The shifted coordinates are rounded, so an IoU right at the
      threshold can be decided differently than by a per-class :func:`nms`.)
    * above that, a loop that runs :func:`nms` once per class and sorts the union of the kept
      boxes by score. As in torchvision, this sort is not stable: boxes with equal scores may
      come out in any order.

    Args:
        boxes (Tensor[N, 4]): boxes in ``(x1, y1, x2, y2)`` format.
        scores (Tensor[N]): score of each box.
        idxs (Tensor[N]): integer class (or image) index of each box.
        iou_threshold: suppress boxes whose IoU with a kept box of the same class is greater.

    Returns:
        Tensor[K]: int64 indices of the kept boxes, by decreasing score.

    Raises:
        ValueError: if ``boxes`` is not ``(N, 4)`` or ``scores``/``idxs`` are not ``(N,)``.
    """
    boxes = _check_boxes_scores(boxes, scores)
    if not isinstance(idxs, Tensor) or idxs.shape != scores.shape:
        shape = tuple(idxs.shape) if isinstance(idxs, Tensor) else type(idxs).__name__
        raise ValueError(f"idxs must have shape {tuple(scores.shape)} like scores, got {shape}")
    if boxes.shape[0] == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)

    if boxes.numel() <= (4000 if boxes.device.type == "cpu" else 100_000):
        # Coordinate trick (the same float expression as torchvision, so identical rounding).
        max_coordinate = boxes.max()
        offsets = idxs.to(boxes) * (max_coordinate + torch.tensor(1).to(boxes))  # (N,)
        return nms(boxes + offsets[:, None], scores, iou_threshold)  # (N, 4) + (N, 1)

    # Per-class loop.
    keep_mask = torch.zeros_like(scores, dtype=torch.bool)  # (N,)
    for class_id in torch.unique(idxs):
        members = torch.nonzero(idxs == class_id).squeeze(1)  # (N_c,)
        kept = nms(boxes[members], scores[members], iou_threshold)  # (K_c,)
        keep_mask[members[kept]] = True
    keep = torch.nonzero(keep_mask).squeeze(1)  # (K,)
    return keep[scores[keep].sort(descending=True).indices]  # torchvision's (unstable) sort


def _size_thresholds(
    boxes: Tensor,
    small_threshold: float,
    large_threshold: float,
    small_size: float,
    large_size: float,
) -> Tensor:
    """IoU threshold of each box from its size ``sqrt(area)`` (see :func:`size_adaptive_nms`).

    Returns:
        Tensor[N]: float64 thresholds.
    """
    size = box_area(boxes).to(torch.float64).clamp(min=0).sqrt()  # (N,)
    # 0 at small_size, 1 at large_size, linear in log(size), clamped to [0, 1].
    t = (size.log() - math.log(small_size)) / (math.log(large_size) - math.log(small_size))
    t = t.clamp(0.0, 1.0)  # size 0 gives log 0 = -inf -> 0
    return small_threshold + (large_threshold - small_threshold) * t


def size_adaptive_nms(
    boxes: Tensor,
    scores: Tensor,
    small_threshold: float = 0.4,
    large_threshold: float = 0.6,
    small_size: float = 32.0,
    large_size: float = 96.0,
) -> Tensor:
    """Greedy NMS whose IoU threshold grows with the size of the kept box.

    Small objects are localised less precisely, so their duplicate detections overlap less;
    crowds of large objects overlap more. The rule: a kept box of size ``s = sqrt(area)`` gets
    the threshold

    * ``small_threshold`` if ``s <= small_size``,
    * ``large_threshold`` if ``s >= large_size``,
    * in between, linear in ``log(s)``:
      ``small_threshold + (large_threshold - small_threshold)
      * (log s - log small_size) / (log large_size - log small_size)``.

    The defaults 32 and 96 are COCO's small/medium/large boundaries (areas 32**2 and 96**2).
    Boxes are visited by decreasing score (ties: lower index first) and a box is suppressed when
    its IoU with a kept box is greater than *that kept box's* threshold. With
    ``small_threshold == large_threshold`` this is exactly :func:`nms`.

    Args:
        boxes (Tensor[N, 4]): boxes in ``(x1, y1, x2, y2)`` format.
        scores (Tensor[N]): score of each box.
        small_threshold: IoU threshold for kept boxes of size ``<= small_size``.
        large_threshold: IoU threshold for kept boxes of size ``>= large_size``.
        small_size: size (``sqrt(area)``, pixels) up to which a box counts as small.
        large_size: size from which a box counts as large; must be greater than ``small_size``.

    Returns:
        Tensor[K]: int64 indices of the kept boxes, by decreasing score.

    Raises:
        ValueError: on bad shapes, or unless ``0 < small_size < large_size``.
    """
    boxes = _check_boxes_scores(boxes, scores)
    if not 0 < small_size < large_size:
        raise ValueError(
            f"need 0 < small_size < large_size, got small_size={small_size}, "
            f"large_size={large_size}"
        )
    order = _rank(scores)  # (N,)
    thresholds = _size_thresholds(
        boxes, small_threshold, large_threshold, small_size, large_size
    )  # (N,)
    kept_pos = _greedy_keep(boxes[order], thresholds[order])  # (K,)
    return order[kept_pos]


def nms_steps(boxes: Tensor, scores: Tensor, iou_threshold: float) -> list[dict]:
    """Greedy NMS one kept box at a time, recording each decision (for the NMS stepper widget).

    This is the textbook loop: take the best remaining box, keep it, remove every remaining box
    whose IoU with it is greater than ``iou_threshold``, repeat. The kept indices, in order, are
    exactly ``nms(boxes, scores, iou_threshold)``.

    Args:
        boxes (Tensor[N, 4]): boxes in ``(x1, y1, x2, y2)`` format.
        scores (Tensor[N]): score of each box.
        iou_threshold: suppress boxes whose IoU with a kept box is greater than this.

    Returns:
        list[dict]: one dict per kept box, in selection order: ``{"kept": i, "suppressed":
        [(j, iou), ...]}`` with ``i``, ``j`` input indices (int) and ``iou`` the IoU of box ``j``
        with box ``i`` (float); the suppressed boxes are listed by decreasing score.

    Raises:
        ValueError: if ``boxes`` is not ``(N, 4)``, ``scores`` is not ``(N,)`` or N differs.
    """
    boxes = _check_boxes_scores(boxes, scores)
    remaining = _rank(scores)  # (R,) indices still in play, best first
    steps = []
    while remaining.numel() > 0:
        best, rest = remaining[0], remaining[1:]  # (), (R-1,)
        iou = box_iou(boxes[best][None], boxes[rest])[0]  # (1, 4), (R-1, 4) -> (R-1,)
        suppress = iou.to(torch.float64) > iou_threshold  # compare like torchvision's kernel
        steps.append(
            {
                "kept": int(best),
                "suppressed": list(
                    zip(rest[suppress].tolist(), iou[suppress].tolist(), strict=True)
                ),
            }
        )
        remaining = rest[~suppress]
    return steps


def _soft_nms_iter(boxes, scores, iou_threshold, sigma, method, score_threshold):
    """Run Soft-NMS, yielding ``(kept index, current scores (N,), dropped indices)`` per step."""
    boxes = _check_boxes_scores(boxes, scores)
    if method not in SOFT_NMS_METHODS:
        raise ValueError(f"method must be one of {SOFT_NMS_METHODS}, got {method!r}")
    if method == "gaussian" and not sigma > 0:
        raise ValueError(f"sigma must be > 0 for the gaussian method, got {sigma}")
    current = scores.clone() if scores.is_floating_point() else scores.to(boxes.dtype)  # (N,)
    in_play = current >= score_threshold  # (N,) bool
    while bool(in_play.any()):
        # argmax returns the first maximum, so equal scores go to the lower index.
        masked = torch.where(in_play, current, float("-inf"))  # (N,)
        best = int(masked.argmax())
        in_play[best] = False
        iou = box_iou(boxes[best][None], boxes)[0].to(torch.float64)  # (1, 4), (N, 4) -> (N,)
        iou = iou.nan_to_num(nan=0.0)  # two empty boxes: 0 / 0 counts as no overlap
        if method == "linear":
            decay = torch.where(iou >= iou_threshold, 1 - iou, torch.ones_like(iou))  # (N,)
        else:
            decay = torch.exp(-(iou * iou) / sigma)  # (N,)
        current = torch.where(in_play, current * decay.to(current.dtype), current)
        dropped = in_play & (current < score_threshold)  # (N,)
        in_play &= ~dropped
        yield best, current, torch.nonzero(dropped).squeeze(1).tolist()


def soft_nms(
    boxes: Tensor,
    scores: Tensor,
    iou_threshold: float = 0.3,
    sigma: float = 0.5,
    method: str = "linear",
    score_threshold: float = 0.001,
) -> tuple[Tensor, Tensor]:
    """Soft-NMS (Bodla et al., 2017): decay the scores of overlapping boxes, do not remove them.

    The exact rule. Every box with ``score >= score_threshold`` starts in play (the others are
    never selected). Repeat while boxes are in play:

    1. select the box ``m`` in play with the highest *current* score (ties: lowest index) and
       take it out of play; record ``m`` and its current score;
    2. for every box ``j`` still in play, with ``iou = IoU(m, j)``:

       * ``"linear"``: ``s_j *= 1 - iou`` if ``iou >= iou_threshold``, else unchanged;
       * ``"gaussian"``: ``s_j *= exp(-iou**2 / sigma)`` (all boxes, ``iou_threshold`` unused);

    3. boxes whose score is now below ``score_threshold`` leave play (dropped).

    Scores are decayed in the dtype of ``scores`` (integers: the boxes' float dtype); the IoU
    is compared with ``iou_threshold`` in float64. The input ``scores`` are not modified.

    Args:
        boxes (Tensor[N, 4]): boxes in ``(x1, y1, x2, y2)`` format.
        scores (Tensor[N]): score of each box.
        iou_threshold: linear method: decay boxes whose IoU with the selected box is at least this.
        sigma: gaussian method: width of the penalty, ``exp(-iou**2 / sigma)``.
        method: ``"linear"`` or ``"gaussian"``.
        score_threshold: boxes whose score is below this are dropped.

    Returns:
        tuple[Tensor[K], Tensor[K]]: int64 indices of the selected boxes in selection order, and
        their (decayed) scores at selection, which are non-increasing.

    Raises:
        ValueError: on bad shapes, an unknown ``method`` or ``sigma <= 0`` (gaussian).
    """
    keep, kept_scores = [], []
    for best, current, _dropped in _soft_nms_iter(
        boxes, scores, iou_threshold, sigma, method, score_threshold
    ):
        keep.append(best)
        kept_scores.append(current[best])
    device = boxes.device
    if not keep:
        dtype = scores.dtype if scores.is_floating_point() else check_boxes(boxes).dtype
        return (
            torch.empty(0, dtype=torch.int64, device=device),
            torch.empty(0, dtype=dtype, device=device),
        )
    return torch.tensor(keep, dtype=torch.int64, device=device), torch.stack(kept_scores)


def soft_nms_steps(
    boxes: Tensor,
    scores: Tensor,
    iou_threshold: float = 0.3,
    sigma: float = 0.5,
    method: str = "linear",
    score_threshold: float = 0.001,
) -> list[dict]:
    """Soft-NMS one selected box at a time, recording the scores (for a teaching widget).

    Same rule and arguments as :func:`soft_nms`; the ``"kept"`` entries, in order, are the
    indices :func:`soft_nms` returns.

    Args:
        boxes (Tensor[N, 4]): boxes in ``(x1, y1, x2, y2)`` format.
        scores (Tensor[N]): score of each box.
        iou_threshold: see :func:`soft_nms`.
        sigma: see :func:`soft_nms`.
        method: ``"linear"`` or ``"gaussian"``.
        score_threshold: see :func:`soft_nms`.

    Returns:
        list[dict]: one dict per selected box: ``{"kept": m, "scores": Tensor[N], "dropped":
        [j, ...]}``. ``scores`` holds every box's score after the step: boxes still in play
        have their decayed score, selected boxes the score they were selected with, dropped
        boxes the score that made them drop. ``dropped`` lists the boxes dropped in this step.
    """
    return [
        {"kept": best, "scores": current.clone(), "dropped": dropped}
        for best, current, dropped in _soft_nms_iter(
            boxes, scores, iou_threshold, sigma, method, score_threshold
        )
    ]
