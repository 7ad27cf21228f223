"""Training targets for anchors: label each anchor by IoU, then sample a balanced mini-batch.

Shape shorthand used in this module:
    A  number of anchors
    G  number of ground-truth (GT) boxes
    4  box coordinates ``(x1, y1, x2, y2)`` in pixels

Labels follow torchvision's region proposal network (RPN):
    ``1.0``   positive (foreground): the anchor should be regressed onto ``gt_boxes[matched_gt]``
    ``0.0``   negative (background)
    ``-1.0``  ignored: neither, and left out of the loss

:func:`label_anchors` gives exactly what torchvision's
``RegionProposalNetwork.assign_targets_to_anchors`` gives with
``Matcher(pos_iou, neg_iou, allow_low_quality_matches=True)``, and :func:`sample_labels` selects
the same anchors as ``BalancedPositiveNegativeSampler`` given the same random state.
"""

from __future__ import annotations

import torch
from torch import Tensor

from course_lib.boxes import box_iou, check_boxes

POSITIVE, NEGATIVE, IGNORED = 1.0, 0.0, -1.0


def label_anchors(
    anchors: Tensor,
    gt_boxes: Tensor,
    pos_iou: float = 0.7,
    neg_iou: float = 0.3,
) -> tuple[Tensor, Tensor]:
    """Label every anchor positive, negative or ignored by its IoU with the GT boxes.

    The rule (Faster R-CNN, as implemented by torchvision). Let ``best`` be an anchor's highest
    IoU over all GT boxes and its *best GT* the GT that gives it (ties: what ``Tensor.max``
    returns, as in torchvision):

    1. ``best < neg_iou`` -> negative; ``neg_iou <= best < pos_iou`` -> ignored;
       ``best >= pos_iou`` -> positive. (An IoU exactly at ``neg_iou`` is ignored, exactly at
       ``pos_iou`` is positive; the IoU is compared in its own dtype.)
    2. Low-quality matches: for each GT, the anchor(s) with the highest IoU with it (all ties
       of that maximum) become positive too, even if that IoU is below ``neg_iou``, so every GT
       gets at least one positive anchor. Such an anchor is matched to its own best GT, which
       may be another GT than the one that made it positive.

    Note a quirk of rule 2, kept to stay equal to torchvision: a GT that overlaps no anchor
    at all has highest IoU 0, so *every* anchor with IoU 0 with it becomes positive. With
    anchors that cover the image this does not happen.

    With no GT boxes every anchor is negative (a background image).

    Args:
        anchors (Tensor[A, 4]): anchors in ``(x1, y1, x2, y2)`` format.
        gt_boxes (Tensor[G, 4]): ground-truth boxes in ``(x1, y1, x2, y2)`` format.
        pos_iou: IoU from which an anchor is positive (``high_threshold``).
        neg_iou: IoU below which an anchor is negative (``low_threshold``).

    Returns:
        tuple[Tensor[A], Tensor[A]]: ``labels``, float32 ``1.0`` / ``0.0`` / ``-1.0``; and
        ``matched_gt``, int64 index of the GT of each positive anchor, and 0 for negative and
        ignored anchors (as torchvision's ``matched_idxs.clamp(min=0)`` gives), so that
        ``gt_boxes[matched_gt]`` is torchvision's ``matched_gt_boxes``.

    Raises:
        ValueError: if ``anchors`` or ``gt_boxes`` is not ``(N, 4)``, or ``neg_iou > pos_iou``.
    """
    anchors = check_boxes(anchors, "anchors")
    gt_boxes = check_boxes(gt_boxes, "gt_boxes")
    if neg_iou > pos_iou:
        raise ValueError(f"need neg_iou <= pos_iou, got neg_iou={neg_iou}, pos_iou={pos_iou}")
    num_anchors, device = anchors.shape[0], anchors.device
    labels = torch.zeros(num_anchors, dtype=torch.float32, device=device)  # (A,) all negative
    matched_gt = torch.zeros(num_anchors, dtype=torch.int64, device=device)  # (A,)
    if gt_boxes.shape[0] == 0 or num_anchors == 0:
        return labels, matched_gt  # background image, or nothing to label

    iou = box_iou(gt_boxes, anchors)  # (G, A), the orientation torchvision uses
    # 1. each anchor's best GT, then thresholds
    best_iou, best_gt = iou.max(dim=0)  # (G, A) -> (A,), (A,)
    labels[best_iou >= neg_iou] = IGNORED  # (A,)
    labels[best_iou >= pos_iou] = POSITIVE
    # 2. each GT's best anchor(s), ties included, become positive
    best_for_gt = iou.max(dim=1).values  # (G, A) -> (G,)
    is_best = iou == best_for_gt[:, None]  # (G, A)
    labels[is_best.any(dim=0)] = POSITIVE  # (G, A) -> (A,)
    # torchvision's matcher leaves an anchor matched when its best IoU is nan (a zero-area
    # anchor and a zero-area GT: 0 / 0), because nan fails both threshold comparisons.
    labels[best_iou.isnan()] = POSITIVE
    # negatives and ignored anchors point at GT 0, like torchvision's matched_idxs.clamp(min=0)
    matched_gt = torch.where(labels == POSITIVE, best_gt, 0)  # (A,)
    return labels, matched_gt


def sample_labels(
    labels: Tensor,
    batch_size: int = 256,
    positive_fraction: float = 0.5,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Pick a random, balanced mini-batch of anchors for the RPN loss.

    Take at most ``int(batch_size * positive_fraction)`` positives (``labels >= 1``) at random,
    then fill the batch up to ``batch_size`` with random negatives (``labels == 0``); ignored
    anchors (``-1``) are never picked. If there are too few positives, more negatives are
    taken; if there are too few of both, the batch is smaller. The random choice is
    ``torch.randperm(#positives)`` then ``torch.randperm(#negatives)``, as in torchvision's
    ``BalancedPositiveNegativeSampler``: with ``generator=None`` and the same
    ``torch.manual_seed``, the selection is the same as torchvision's.

    Args:
        labels (Tensor[A]): ``1`` positive, ``0`` negative, ``-1`` ignored (see
            :func:`label_anchors`).
        batch_size: the number of anchors to sample (at most).
        positive_fraction: the largest fraction of the batch that may be positive.
        generator: random number generator for the choice (default: PyTorch's global one).

    Returns:
        tuple[Tensor[A], Tensor[A]]: bool masks of the sampled positives and negatives.

    Raises:
        ValueError: if ``labels`` is not 1-D, ``batch_size < 0`` or ``positive_fraction`` is
            not in ``[0, 1]``.
    """
    if not isinstance(labels, Tensor) or labels.dim() != 1:
        shape = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(f"labels must have shape (A,), got {shape}")
    if batch_size < 0:
        raise ValueError(f"batch_size must be >= 0, got {batch_size}")
    if not 0 <= positive_fraction <= 1:
        raise ValueError(f"positive_fraction must be in [0, 1], got {positive_fraction}")

    positive = torch.where(labels >= 1)[0]  # (P,) indices of the positives
    negative = torch.where(labels == 0)[0]  # (N,) indices of the negatives
    num_pos = min(positive.numel(), int(batch_size * positive_fraction))
    num_neg = min(negative.numel(), batch_size - num_pos)

    def random_order(n: int) -> Tensor:
        if generator is None:  # the global RNG of labels' device, as in torchvision
            return torch.randperm(n, device=labels.device)
        return torch.randperm(n, generator=generator, device=generator.device).to(labels.device)

    pos_mask = torch.zeros_like(labels, dtype=torch.bool)  # (A,)
    neg_mask = torch.zeros_like(labels, dtype=torch.bool)  # (A,)
    pos_mask[positive[random_order(positive.numel())[:num_pos]]] = True
    neg_mask[negative[random_order(negative.numel())[:num_neg]]] = True
    return pos_mask, neg_mask
