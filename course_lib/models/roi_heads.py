"""The second stage shared by R-CNN, Fast R-CNN and Faster R-CNN: classify and refine regions.

Given region proposals (from selective search or from an RPN), the second stage

* in training, matches every proposal to the ground truth (:func:`match_proposals`), samples a
  mini-batch with at most a quarter of foreground regions (:func:`sample_proposals`), and
  computes two losses (:func:`fast_rcnn_loss`): cross-entropy over ``C + 1`` classes (0 is
  background) and smooth L1 between the predicted box deltas *of the true class* and the
  deltas that move the proposal onto its ground-truth box;
* at test time, turns the class scores and per-class deltas into detections
  (:func:`postprocess_detections`): decode, clip, drop background and low scores, per-class
  NMS, keep the best.

How the region's features are computed is what differs between the three detectors: R-CNN
warps each region of the *image* and runs a CNN on it; Fast and Faster R-CNN pool each region
of a shared *feature map* (RoI Pool or RoI Align). :class:`BoxHead` is the part after that:
two fully connected layers, then a classifier and a box regressor.

Everything follows torchvision's ``RoIHeads`` (``fastrcnn_loss``, ``postprocess_detections``,
the matcher with ``fg_iou_thresh = bg_iou_thresh = 0.5`` and no low-quality matches). The
per-class NMS is torchvision's compiled ``batched_nms``; :func:`course_lib.nms.batched_nms` is
the readable version, tested equal to it.

Shape shorthand:
    R   regions (proposals) of one image, or of the batch where said
    G   ground-truth boxes of one image
    C   object classes; the head predicts C + 1 scores (index 0 = background)
    D   features per region (after flattening)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import batched_nms

from course_lib.boxes import box_iou
from course_lib.coder import decode_boxes, encode_boxes
from course_lib.matching import sample_labels

BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
"""``(wx, wy, ww, wh)`` of the second stage's box coder, as in torchvision's Faster R-CNN."""


def match_proposals(
    proposals: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    fg_iou: float = 0.5,
    bg_iou: float = 0.5,
) -> tuple[Tensor, Tensor]:
    """Give each proposal a class: its best GT's label if IoU >= ``fg_iou``, else background.

    A proposal whose best IoU lies in ``[bg_iou, fg_iou)`` is ignored (label -1); with the
    default thresholds (both 0.5) there is no such proposal. With no GT box, every proposal
    is background.

    Args:
        proposals (Tensor[R, 4]): proposals, ``(x1, y1, x2, y2)``.
        gt_boxes (Tensor[G, 4]): ground-truth boxes.
        gt_labels (Tensor[G]): their classes, 1..C.
        fg_iou: IoU from which a proposal is foreground.
        bg_iou: IoU below which a proposal is background.

    Returns:
        tuple[Tensor[R], Tensor[R]]: ``labels`` (int64: 0 background, 1..C, -1 ignored) and
        ``matched_gt`` (int64 index of the best GT of each proposal; 0 when there is no GT).
    """
    num = proposals.shape[0]
    if gt_boxes.shape[0] == 0:
        zeros = torch.zeros(num, dtype=torch.int64, device=proposals.device)
        return zeros, zeros.clone()
    best_iou, matched_gt = box_iou(gt_boxes, proposals).max(dim=0)  # (G, R) -> (R,), (R,)
    labels = gt_labels[matched_gt].to(torch.int64)  # (R,)
    labels[best_iou < fg_iou] = -1
    labels[best_iou < bg_iou] = 0
    return labels, matched_gt


def sample_proposals(
    proposals: Sequence[Tensor],
    targets: Sequence[dict[str, Tensor]],
    batch_size_per_image: int = 128,
    positive_fraction: float = 0.25,
    add_gt_boxes: bool = True,
    generator: torch.Generator | None = None,
    return_matched: bool = False,
) -> tuple[list[Tensor], ...]:
    """The regions the second stage trains on, their classes and their regression targets.

    For each image: add the GT boxes to the proposals (so that early in training, when the
    proposals are poor, there are foreground regions to learn from), match
    (:func:`match_proposals`), and sample ``batch_size_per_image`` regions with at most
    ``positive_fraction`` foreground (:func:`~course_lib.matching.sample_labels`).

    Args:
        proposals: B tensors ``Tensor[R, 4]``, the proposals of each image.
        targets: B dicts with ``"boxes"`` (Tensor[G, 4]) and ``"labels"`` (Tensor[G]).
        batch_size_per_image: regions sampled per image.
        positive_fraction: largest fraction of foreground regions in an image's sample.
        add_gt_boxes: append the GT boxes to the proposals first.
        generator: random number generator for the sampling.
        return_matched: also return, per image, the index of each sampled region's GT box
            (Mask R-CNN cuts the mask target of a region out of that object's mask).

    Returns:
        three lists of B tensors: the sampled regions ``Tensor[S, 4]``, their labels
        ``Tensor[S]`` (0..C) and their regression targets ``Tensor[S, 4]`` (the deltas from
        the region to its GT box; meaningless for background regions, which the loss skips);
        with ``return_matched``, a fourth list: ``Tensor[S]`` int64 GT indices (0 for the
        regions of an image without GT).
    """
    if len(proposals) != len(targets):
        raise ValueError(f"need one target per image: {len(proposals)} proposal tensors, "
                         f"{len(targets)} targets")
    regions, labels, deltas, matched = [], [], [], []
    for image_proposals, target in zip(proposals, targets, strict=True):
        gt_boxes = target["boxes"].to(image_proposals.dtype)
        if add_gt_boxes:
            image_proposals = torch.cat([image_proposals, gt_boxes])  # (R + G, 4)
        image_labels, matched_gt = match_proposals(image_proposals, gt_boxes, target["labels"])
        is_foreground = (image_labels > 0).float()  # sample_labels wants 1 / 0 / -1
        is_foreground[image_labels < 0] = -1.0
        pos, neg = sample_labels(is_foreground, batch_size_per_image, positive_fraction,
                                 generator)
        keep = torch.where(pos | neg)[0]  # (S,)
        regions.append(image_proposals[keep])
        labels.append(image_labels[keep])
        matched.append(matched_gt[keep])
        if gt_boxes.shape[0] == 0:  # background image: nothing to regress to
            deltas.append(torch.zeros_like(image_proposals[keep]))
        else:
            deltas.append(encode_boxes(gt_boxes[matched_gt[keep]], image_proposals[keep],
                                       BOX_WEIGHTS))
    if return_matched:
        return regions, labels, deltas, matched
    return regions, labels, deltas


def fast_rcnn_loss(
    class_logits: Tensor,
    box_deltas: Tensor,
    labels: Tensor,
    regression_targets: Tensor,
) -> dict[str, Tensor]:
    """The second stage's two losses, as torchvision's ``fastrcnn_loss``.

    * ``loss_classifier``: cross-entropy over the C + 1 classes, mean over the R regions;
    * ``loss_box_reg``: smooth L1 (``beta = 1/9``) between the deltas predicted *for the true
      class* and the regression targets, over the foreground regions only, summed and divided
      by R (all regions, not only the foreground ones).

    Args:
        class_logits (Tensor[R, C + 1]): class scores of all sampled regions of the batch.
        box_deltas (Tensor[R, 4 * (C + 1)]): per-class box deltas.
        labels (Tensor[R]): classes 0..C (0 = background).
        regression_targets (Tensor[R, 4]): deltas from each region to its GT box.

    Returns:
        dict[str, Tensor]: scalar ``loss_classifier`` and ``loss_box_reg``.
    """
    num_regions, num_scores = class_logits.shape
    if box_deltas.shape != (num_regions, 4 * num_scores):
        raise ValueError(f"box_deltas must have shape (R, 4 * (C + 1)) = "
                         f"{(num_regions, 4 * num_scores)}, got {tuple(box_deltas.shape)}")
    classification = F.cross_entropy(class_logits, labels)
    foreground = torch.where(labels > 0)[0]  # (P,)
    deltas = box_deltas.reshape(num_regions, num_scores, 4)  # (R, 4(C+1)) -> (R, C+1, 4)
    box_loss = F.smooth_l1_loss(
        deltas[foreground, labels[foreground]],  # (P, 4): the deltas of each true class
        regression_targets[foreground],
        beta=1 / 9,
        reduction="sum",
    ) / max(labels.numel(), 1)
    return {"loss_classifier": classification, "loss_box_reg": box_loss}


def postprocess_detections(
    class_logits: Tensor,
    box_deltas: Tensor,
    proposals: Sequence[Tensor],
    image_size: tuple[int, int],
    score_thresh: float = 0.05,
    nms_thresh: float = 0.5,
    detections_per_img: int = 100,
    min_size: float = 1e-2,
) -> list[dict[str, Tensor]]:
    """Detections from the head's outputs, as torchvision's ``postprocess_detections``.

    For each image: decode one box per class from every proposal, clip to the image, take the
    softmax scores, drop the background column, then treat every (region, class) pair as a
    candidate: keep those with score > ``score_thresh`` and width and height >= ``min_size``,
    run NMS per class with ``nms_thresh``, and keep the ``detections_per_img`` best.

    Args:
        class_logits (Tensor[R, C + 1]): class scores of the regions of the whole batch, image
            after image.
        box_deltas (Tensor[R, 4 * (C + 1)]): per-class box deltas.
        proposals: B tensors ``Tensor[R_i, 4]``, the regions of each image (``sum R_i = R``).
        image_size: ``(height, width)`` of the images.
        score_thresh: candidates with this score or lower are dropped.
        nms_thresh: IoU threshold of the per-class NMS.
        detections_per_img: detections kept per image, best first.
        min_size: smallest width and height of a detection, in pixels.

    Returns:
        list of B dicts with ``"boxes"`` (Tensor[D, 4]), ``"scores"`` (Tensor[D]) and
        ``"labels"`` (Tensor[D] int64, 1..C), best score first.
    """
    height, width = image_size
    num_scores = class_logits.shape[1]  # C + 1
    counts = [len(p) for p in proposals]
    boxes = decode_boxes(box_deltas, torch.cat(list(proposals)), BOX_WEIGHTS)  # (R, 4(C+1))
    boxes = boxes.reshape(-1, num_scores, 4)  # (R, C+1, 4)
    boxes = torch.stack([boxes[..., 0].clamp(0, width), boxes[..., 1].clamp(0, height),
                         boxes[..., 2].clamp(0, width), boxes[..., 3].clamp(0, height)], dim=-1)
    scores = F.softmax(class_logits, dim=-1)  # (R, C+1)

    detections = []
    for image_boxes, image_scores in zip(boxes.split(counts), scores.split(counts), strict=True):
        labels = torch.arange(num_scores, device=image_scores.device).expand_as(image_scores)
        # drop the background column, then one candidate per (region, class)
        image_boxes = image_boxes[:, 1:].reshape(-1, 4)  # (R_i, C, 4) -> (R_i * C, 4)
        image_scores = image_scores[:, 1:].reshape(-1)  # (R_i * C,)
        labels = labels[:, 1:].reshape(-1)  # (R_i * C,)
        widths = image_boxes[:, 2] - image_boxes[:, 0]
        heights = image_boxes[:, 3] - image_boxes[:, 1]
        keep = (image_scores > score_thresh) & (widths >= min_size) & (heights >= min_size)
        image_boxes, image_scores, labels = image_boxes[keep], image_scores[keep], labels[keep]
        keep = batched_nms(image_boxes, image_scores, labels, nms_thresh)[:detections_per_img]
        detections.append({"boxes": image_boxes[keep], "scores": image_scores[keep],
                           "labels": labels[keep]})
    return detections


class BoxHead(nn.Module):
    """Two fully connected layers, then a classifier (C + 1 scores) and a box regressor.

    The box regressor predicts 4 deltas *per class* (``4 * (C + 1)`` numbers): the region is
    moved differently depending on what it is. torchvision's ``TwoMLPHead`` +
    ``FastRCNNPredictor``.

    Args:
        in_features: D, features per region (e.g. ``channels * 7 * 7`` after RoI Align).
        num_classes: C, object classes (background not counted).
        hidden: width of the two fully connected layers.
    """

    def __init__(self, in_features: int, num_classes: int, hidden: int = 256) -> None:
        super().__init__()
        self.fc6 = nn.Linear(in_features, hidden)
        self.fc7 = nn.Linear(hidden, hidden)
        self.cls_score = nn.Linear(hidden, num_classes + 1)
        self.bbox_pred = nn.Linear(hidden, 4 * (num_classes + 1))

    def forward(self, region_features: Tensor) -> tuple[Tensor, Tensor]:
        """Class scores and per-class box deltas of each region.

        Args:
            region_features (Tensor[R, ...]): features of each region, flattened to (R, D).

        Returns:
            tuple[Tensor[R, C + 1], Tensor[R, 4 * (C + 1)]]: ``class_logits`` and
            ``box_deltas``.
        """
        x = region_features.flatten(start_dim=1)  # (R, ...) -> (R, D)
        x = F.relu(self.fc6(x))  # (R, hidden)
        x = F.relu(self.fc7(x))  # (R, hidden)
        return self.cls_score(x), self.bbox_pred(x)


def second_stage(
    classify,
    proposals: Sequence[Tensor],
    targets: Sequence[dict[str, Tensor]] | None,
    image_size: tuple[int, int],
    batch_size_per_image: int = 64,
    positive_fraction: float = 0.25,
    score_thresh: float = 0.05,
    nms_thresh: float = 0.5,
    detections_per_img: int = 100,
):
    """The second stage of all three detectors, around their own ``classify(regions)``.

    With ``targets`` (training): sample regions (:func:`sample_proposals`), classify them and
    return :func:`fast_rcnn_loss`. Without: classify every proposal and return
    :func:`postprocess_detections`.

    Args:
        classify: ``regions (B tensors Tensor[R_i, 4]) -> (class_logits Tensor[R, C + 1],
            box_deltas Tensor[R, 4 * (C + 1)])``: how the detector looks at a region (a CNN on
            the warped image region for R-CNN, RoI pooling of the feature map then
            :class:`BoxHead` for Fast and Faster R-CNN).
        proposals: B tensors ``Tensor[R_i, 4]``.
        targets: B target dicts in training, None at test time.
        image_size: ``(height, width)`` of the images.
        batch_size_per_image: see :func:`sample_proposals`.
        positive_fraction: see :func:`sample_proposals`.
        score_thresh: see :func:`postprocess_detections`.
        nms_thresh: see :func:`postprocess_detections`.
        detections_per_img: see :func:`postprocess_detections`.

    Returns:
        the two losses (training), or one detection dict per image.
    """
    if targets is not None:
        regions, labels, deltas = sample_proposals(proposals, targets, batch_size_per_image,
                                                   positive_fraction)
        class_logits, box_deltas = classify(regions)  # (R, C+1), (R, 4(C+1))
        return fast_rcnn_loss(class_logits, box_deltas, torch.cat(labels), torch.cat(deltas))
    class_logits, box_deltas = classify(proposals)  # (R, C+1), (R, 4(C+1))
    return postprocess_detections(class_logits, box_deltas, proposals, image_size, score_thresh,
                                  nms_thresh, detections_per_img)
