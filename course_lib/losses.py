"""Loss functions of the lessons, written out so that each term can be read and checked.

Shape shorthand: B images in a batch, C classes. The segmentation losses (lesson 07) score
every pixel: N images, C classes, H x W pixels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from course_lib.segmentation import one_hot


def cls_loc_loss_terms(class_logits: Tensor, box_pred: Tensor, labels: Tensor,
                       box_targets: Tensor, box_weight: float = 1.0) -> dict[str, Tensor]:
    """The two terms of :func:`cls_loc_loss`, named, for logging while training.

    Returns:
        dict with ``"classification"`` (mean softmax cross-entropy) and ``"box"``
        (``box_weight`` times the mean over images of the squared L2 distance between the
        predicted and the true 4-vectors). Their sum is :func:`cls_loc_loss`.
    """
    if class_logits.dim() != 2 or class_logits.shape[0] == 0:
        raise ValueError(f"class_logits must have shape (B, C) with B > 0, got "
                         f"{tuple(class_logits.shape)}")
    batch = class_logits.shape[0]
    if labels.shape != (batch,):
        raise ValueError(f"labels must have shape ({batch},), got {tuple(labels.shape)}")
    for name, value in (("box_pred", box_pred), ("box_targets", box_targets)):
        if value.shape != (batch, 4):
            raise ValueError(f"{name} must have shape ({batch}, 4), got {tuple(value.shape)}")
    classification = F.cross_entropy(class_logits, labels)        # (B, C), (B,) -> ()
    box = ((box_pred - box_targets) ** 2).sum(dim=1).mean()       # (B, 4) -> (B,) -> ()
    return {"classification": classification, "box": box_weight * box}


def cls_loc_loss(class_logits: Tensor, box_pred: Tensor, labels: Tensor, box_targets: Tensor,
                 box_weight: float = 1.0) -> Tensor:
    """The classification + localization multi-task loss: softmax cross-entropy + weighted L2.

    One object per image: the network predicts its class and its box; the loss adds the
    classification loss and the box regression loss, the latter weighted by ``box_weight``
    (the lecture's "multitask loss").

    Args:
        class_logits (Tensor[B, C]): unnormalised class scores.
        box_pred (Tensor[B, 4]): predicted box, in the same coordinates as ``box_targets``.
        labels (Tensor[B], int64): the true class of each image, in ``0..C-1``.
        box_targets (Tensor[B, 4]): the true box of each image.
        box_weight: weight of the box term.

    Returns:
        Tensor[]: cross_entropy + box_weight * mean_i ||box_pred_i - box_targets_i||².

    Raises:
        ValueError: if the shapes do not agree or the batch is empty.
    """
    terms = cls_loc_loss_terms(class_logits, box_pred, labels, box_targets, box_weight)
    return terms["classification"] + terms["box"]


# ---------------------------------------------------------------------------------------------
# Semantic segmentation (lesson 07). Shape shorthand: N images, C classes, H x W pixels.
# ---------------------------------------------------------------------------------------------


def _check_seg_inputs(logits: Tensor, target: Tensor) -> None:
    if not isinstance(logits, Tensor) or logits.dim() != 4:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"logits must have shape (N, C, H, W), got {shape}")
    n, _, h, w = logits.shape
    if not isinstance(target, Tensor) or target.shape != (n, h, w):
        shape = tuple(target.shape) if isinstance(target, Tensor) else type(target).__name__
        raise ValueError(f"target must have shape (N, H, W) = {(n, h, w)} to match logits "
                         f"{tuple(logits.shape)}, got {shape}")
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise ValueError(f"target must hold integer labels, got dtype {target.dtype}")


def pixel_cross_entropy(logits: Tensor, target: Tensor, weight: Tensor | None = None,
                        ignore_index: int = -100) -> Tensor:
    """Pixel-wise cross-entropy: every pixel is a C-way classification, averaged over pixels.

    Written out like ``F.cross_entropy(logits, target, weight, ignore_index=ignore_index)``
    (tests compare them): for each pixel ``p`` with true class ``y_p``,
    ``nll_p = -log softmax(logits[:, :, p])[y_p]``; pixels labelled ``ignore_index`` (object
    borders, "void") drop out, and the others are averaged with the class weights ``w``::

        loss = sum_p w[y_p] * nll_p / sum_p w[y_p]        (p over the pixels not ignored)

    The division by the *sum of the weights* (not by the number of pixels) is PyTorch's
    ``reduction="mean"``: it keeps the loss on the scale of an unweighted mean. Weights against
    class imbalance come from :func:`class_weights`.

    When every pixel is ignored (or the batch has no pixel, or the weights of all the classes
    present are 0) the quotient is ``0 / 0 = nan``, exactly as ``F.cross_entropy`` returns;
    skip such a batch rather than back-propagate the nan.

    Args:
        logits (Tensor[N, C, H, W]): unnormalised class scores of every pixel.
        target (Tensor[N, H, W]): int64 labels in ``0..C-1``, or ``ignore_index``.
        weight (Tensor[C], optional): a weight per class (default: all 1).
        ignore_index (int): the label of pixels that do not count.

    Returns:
        Tensor[]: the weighted mean negative log-likelihood, in the dtype of ``logits``.

    Raises:
        ValueError: on shapes that do not match, non-integer targets, or a label (other than
            ``ignore_index``) outside ``[0, C)``.
    """
    _check_seg_inputs(logits, target)
    num_classes = logits.shape[1]
    if weight is not None and (not isinstance(weight, Tensor) or weight.shape != (num_classes,)):
        shape = tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__
        raise ValueError(f"weight must have shape (C,) = ({num_classes},), got {shape}")
    valid = target != ignore_index                                    # (N, H, W) bool
    labels = torch.where(valid, target, torch.zeros_like(target))     # ignored -> class 0
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"target labels must lie in [0, {num_classes}) or equal ignore_index="
                         f"{ignore_index}, got values in [{int(target.min())}, "
                         f"{int(target.max())}]")
    log_probs = F.log_softmax(logits, dim=1)                          # (N, C, H, W)
    nll = -log_probs.gather(1, labels[:, None]).squeeze(1)            # (N, 1, H, W) -> (N, H, W)
    if weight is None:
        w = valid.to(logits.dtype)                                    # 1 per counted pixel
    else:
        w = weight.to(logits)[labels] * valid                         # (C,)[(N, H, W)] -> (N, H, W)
    return (w * nll).sum() / w.sum()


def class_weights(seg: Tensor | None = None, num_classes: int | None = None,
                  method: str = "inverse", ignore_index: int | None = None, *,
                  counts: Tensor | None = None) -> Tensor:
    """Class weights against class imbalance, from how many pixels each class has.

    With ``f_c`` the fraction of (not ignored) pixels of class ``c``:

    * ``"inverse"``: ``w_c = (1 / f_c) / mean_k(1 / f_k)``: a class 10 times rarer weighs 10
      times more, and the weights average to 1 over the classes present.
    * ``"median"``: median frequency balancing (Eigen & Fergus, 2015; SegNet):
      ``w_c = median_k(f_k) / f_c``: the class of median frequency weighs 1, rarer classes
      more, commoner ones less. (Here ``f_c`` is over the whole data set, not only over the
      images that contain ``c`` as in the paper.) For an even number of classes the median is
      the mean of the two middle frequencies.

    Means and medians run over the classes *present*; a class without any pixel gets weight
    0 (there is no frequency to invert, and it cannot appear in the loss anyway). Without any
    pixel at all every weight is 0.

    Args:
        seg (Tensor[...], optional): integer labels of any shape (one map or a whole data
            set), in ``0..num_classes-1`` or ``ignore_index``.
        num_classes (int, optional): ``C``; needed with ``seg``, taken from ``counts`` else.
        method (str): ``"inverse"`` or ``"median"``.
        ignore_index (int, optional): a label that is not counted.
        counts (Tensor[C], optional, keyword only): pixel counts per class, instead of ``seg``.

    Returns:
        Tensor[C], float32: the weights, for ``pixel_cross_entropy(..., weight=...)``.

    Raises:
        ValueError: unless exactly one of ``seg`` and ``counts`` is given; on an unknown
            ``method``, labels out of range, or negative counts.
    """
    if method not in ("inverse", "median"):
        raise ValueError(f"method must be 'inverse' or 'median', got {method!r}")
    if (seg is None) == (counts is None):
        raise ValueError("give exactly one of seg (a label map) and counts (pixels per class)")
    if seg is not None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be an integer >= 1 with seg, got {num_classes!r}")
        if seg.is_floating_point() or seg.is_complex() or seg.dtype == torch.bool:
            raise ValueError(f"seg must hold integer labels, got dtype {seg.dtype}")
        labels = seg.reshape(-1)
        if ignore_index is not None:
            labels = labels[labels != ignore_index]
        if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(f"seg labels must lie in [0, {num_classes}), got values in "
                             f"[{int(labels.min())}, {int(labels.max())}]")
        counts = torch.bincount(labels.long(), minlength=num_classes)             # (C,)
    else:
        if not isinstance(counts, Tensor) or counts.dim() != 1:
            shape = tuple(counts.shape) if isinstance(counts, Tensor) else type(counts).__name__
            raise ValueError(f"counts must have shape (C,), got {shape}")
        if num_classes is not None and counts.shape[0] != num_classes:
            raise ValueError(f"counts must have shape ({num_classes},), got {tuple(counts.shape)}")
        if counts.numel() and counts.min() < 0:
            raise ValueError("counts must not be negative")
    counts = counts.to(torch.float64)
    weights = torch.zeros_like(counts)
    present = counts > 0
    if not present.any():
        return weights.float()
    freq = counts[present] / counts.sum()                             # f_c of the present classes
    if method == "inverse":
        weights[present] = (1 / freq) / (1 / freq).mean()
    else:
        weights[present] = freq.quantile(0.5) / freq
    return weights.float()


def dice_coefficient(pred: Tensor, target: Tensor, num_classes: int | None = None,
                     empty_score: float = 1.0) -> Tensor:
    """Hard Dice coefficient of two masks: ``2 |A ∩ B| / (|A| + |B|)``.

    1 for a perfect overlap, 0 for none. The lecture's set formula on pixel sets: ``A`` the
    predicted pixels, ``B`` the true ones, counted over every pixel given (a whole batch is
    one set). When both sets are empty the formula is ``0 / 0``; an empty prediction of an
    empty truth is perfect, so it is defined as ``empty_score`` (1.0 by default). (The metrics
    of :mod:`course_lib.segmentation_metrics` use nan instead, to leave such a class out of a
    mean over classes.)

    Args:
        pred (Tensor[...]): a binary mask (bool, or integers 0/1), or with ``num_classes``
            an integer label map.
        target (Tensor[...]): the true mask or label map, same shape.
        num_classes (int, optional): ``C``; when given, one Dice per class ``c`` with
            ``A = (pred == c)`` and ``B = (target == c)``.
        empty_score (float): the value when ``A`` and ``B`` are both empty.

    Returns:
        Tensor[] (binary masks) or Tensor[C] (label maps), float32.

    Raises:
        ValueError: on shapes that differ, float inputs, binary masks with values other than
            0 and 1 (pass ``num_classes`` for label maps), or labels outside ``[0, C)``.
    """
    if not isinstance(pred, Tensor) or not isinstance(target, Tensor) \
            or pred.shape != target.shape:
        shapes = [tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
                  for v in (pred, target)]
        raise ValueError(f"pred and target must be tensors of the same shape, got {shapes[0]} "
                         f"and {shapes[1]}")
    for name, value in (("pred", pred), ("target", target)):
        if value.is_floating_point() or value.is_complex():
            raise ValueError(f"{name} must be a bool or integer mask, got dtype {value.dtype}")
        if num_classes is None and value.numel() and (value.min() < 0 or value.max() > 1):
            raise ValueError(f"{name} must be a binary mask (0/1) without num_classes, got values "
                             f"in [{int(value.min())}, {int(value.max())}]")
        if num_classes is not None and value.numel() and (value.min() < 0
                                                          or value.max() >= num_classes):
            raise ValueError(f"{name} labels must lie in [0, {num_classes}), got values in "
                             f"[{int(value.min())}, {int(value.max())}]")
    if num_classes is None:
        a, b = pred.reshape(1, -1).bool(), target.reshape(1, -1).bool()           # (1, P)
    else:
        classes = torch.arange(num_classes, device=pred.device)[:, None]           # (C, 1)
        a, b = pred.reshape(1, -1) == classes, target.reshape(1, -1) == classes    # (C, P)
    both = (a & b).sum(dim=1).double()                                            # |A ∩ B|
    sizes = (a.sum(dim=1) + b.sum(dim=1)).double()                                # |A| + |B|
    dice = torch.where(sizes > 0, 2 * both / sizes.clamp(min=1),
                       torch.full_like(sizes, float(empty_score)))
    return dice[0].float() if num_classes is None else dice.float()


def dice_loss(logits: Tensor, target: Tensor, smooth: float = 1.0) -> Tensor:
    """Soft multi-class Dice loss: one minus the Dice of the softmax and the one-hot target.

    The Dice coefficient ``2 |A ∩ B| / (|A| + |B|)`` made differentiable: the hard masks are
    replaced by the probabilities ``p = softmax(logits)`` and the one-hot target ``g``, so the
    intersection becomes ``sum p g`` and the sizes ``sum p`` and ``sum g``. Per class ``c``::

        loss_c = 1 - (2 sum(p_c g_c) + smooth) / (sum(p_c) + sum(g_c) + smooth)

    and the loss is the mean of ``loss_c`` over the C classes. The sums run over the **whole
    batch** and all pixels (one set per class for the whole batch): a class missing from one
    image is then not scored 0 or 1 for that image alone, which makes the loss less noisy than
    averaging a Dice per image.

    ``smooth`` keeps the quotient defined for a class absent from both the target and (nearly)
    the prediction: it scores ``loss_c ≈ 0``, as with the hard Dice's empty case. With
    ``smooth = 0`` an absent class scores 1 however small its probabilities are, and ``0 / 0 =
    nan`` once they underflow to 0 (or for a batch without pixels).

    Unlike the pixel cross-entropy, Dice looks at each class's overlap as a whole, so a small
    class counts as much as a large one: a remedy for class imbalance.

    Args:
        logits (Tensor[N, C, H, W]): unnormalised class scores.
        target (Tensor[N, H, W]): int64 labels in ``0..C-1``.
        smooth (float): added to the numerator and the denominator (>= 0).

    Returns:
        Tensor[]: the loss in ``[0, 1]``, in the dtype of ``logits``; differentiable.

    Raises:
        ValueError: on shapes that do not match, labels outside ``[0, C)`` or ``smooth < 0``.
    """
    _check_seg_inputs(logits, target)
    if smooth < 0:
        raise ValueError(f"smooth must be >= 0, got {smooth}")
    probs = F.softmax(logits, dim=1)                                  # (N, C, H, W)
    truth = one_hot(target, logits.shape[1]).to(probs)                # (N, C, H, W)
    dims = (0, 2, 3)                                                  # batch and pixels
    intersection = (probs * truth).sum(dims)                          # (C,)
    sizes = probs.sum(dims) + truth.sum(dims)                         # (C,)
    dice = (2 * intersection + smooth) / (sizes + smooth)             # (C,)
    return (1 - dice).mean()
