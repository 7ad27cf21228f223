"""Loss functions of the lessons, written out so that each term can be read and checked.

Shape shorthand: B images in a batch, C classes.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


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
