"""Region Proposal Network (Faster R-CNN's RPN): K anchors per position, two 1x1 conv heads.

Shape shorthand used in this module:
    B     images in the batch
    C     channels of the backbone feature map
    H, W  height and width of the feature map (H' x W' in the lecture)
    K     anchors per position, ``len(sizes) * len(aspect_ratios)``
    A     all anchors of the feature map, ``H * W * K``
    G     ground-truth boxes of one image
    P     proposals kept for one image

The network slides a small 3x3 conv over the feature map; at each of the ``H x W`` positions
two 1x1 convs predict, for each of the K anchors there, an *objectness* logit ("is there an
object in this anchor?", ``K x H x W``) and 4 *deltas* that move the anchor onto the object
(``4K x H x W``, the ``(tx, ty, tw, th)`` codes of :mod:`course_lib.coder`).

* Training (:func:`rpn_loss`): label every anchor by IoU with the GT boxes
  (:func:`~course_lib.matching.label_anchors`), sample a balanced mini-batch of anchors
  (:func:`~course_lib.matching.sample_labels`), binary cross-entropy on their objectness and
  smooth L1 on the deltas of the positives.
* Inference (:func:`select_proposals`): decode the deltas into boxes, keep the best-scoring
  ones, clip them to the image, drop tiny ones, NMS, keep the top N: the proposals.

Everything follows torchvision's ``RegionProposalNetwork`` for one feature-map level, and the
tests check that the losses and proposals are equal to torchvision's. The NMS is torchvision's
compiled kernel: :func:`course_lib.nms.nms` is the readable version, tested equal to it, but
about 3x slower on an RPN's proposals (``benchmarks/bench_ops.py``), which would add about a
fifth to every training step of the lessons' Faster R-CNN on a CPU.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import nms

from course_lib.anchors import generate_anchors
from course_lib.coder import decode_boxes, encode_boxes
from course_lib.matching import label_anchors, sample_labels


class RPNHead(nn.Module):
    """The RPN head: a 3x3 conv + ReLU, then 1x1 convs to objectness logits and box deltas.

    Same layers and initialisation as torchvision's ``RPNHead`` (one conv layer).

    Args:
        in_channels: C, channels of the feature map.
        num_anchors: K, anchors per position.
    """

    def __init__(self, in_channels: int, num_anchors: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, in_channels, kernel_size=3, padding=1)
        self.cls_logits = nn.Conv2d(in_channels, num_anchors, kernel_size=1)
        self.bbox_pred = nn.Conv2d(in_channels, num_anchors * 4, kernel_size=1)
        for layer in (self.conv, self.cls_logits, self.bbox_pred):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.constant_(layer.bias, 0)

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """Objectness logits and box deltas at every position.

        Args:
            features (Tensor[B, C, H, W]): the backbone's feature map.

        Returns:
            tuple[Tensor[B, K, H, W], Tensor[B, 4K, H, W]]: ``objectness`` logits and
            ``deltas``; channels ``4k .. 4k+3`` are ``(tx, ty, tw, th)`` of anchor ``k``.
        """
        if features.dim() != 4:
            raise ValueError(f"features must have shape (B, C, H, W), got {tuple(features.shape)}")
        hidden = F.relu(self.conv(features))  # (B, C, H, W) -> (B, C, H, W)
        return self.cls_logits(hidden), self.bbox_pred(hidden)  # (B, K, H, W), (B, 4K, H, W)


def _check_predictions(objectness: Tensor, deltas: Tensor) -> None:
    """Raise ``ValueError`` unless the head outputs are (B, K, H, W) and (B, 4K, H, W)."""
    if objectness.dim() != 4:
        raise ValueError(f"objectness must have shape (B, K, H, W), got {tuple(objectness.shape)}")
    b, k, h, w = objectness.shape
    if tuple(deltas.shape) != (b, 4 * k, h, w):
        raise ValueError(
            f"deltas must have shape (B, 4K, H, W) = {(b, 4 * k, h, w)} for objectness of shape "
            f"{tuple(objectness.shape)}, got {tuple(deltas.shape)}"
        )


def flatten_predictions(objectness: Tensor, deltas: Tensor) -> tuple[Tensor, Tensor]:
    """Put the head's outputs in the order of :func:`~course_lib.anchors.generate_anchors`.

    Entry ``(y * W + x) * K + k`` belongs to anchor ``k`` at position ``(y, x)``: positions
    row-major, the K anchors of a position consecutive. This is torchvision's
    ``concat_box_prediction_layers`` for one level (there the batch is flattened too).

    Args:
        objectness (Tensor[B, K, H, W]): objectness logits from :class:`RPNHead`.
        deltas (Tensor[B, 4K, H, W]): box deltas from :class:`RPNHead`.

    Returns:
        tuple[Tensor[B, A], Tensor[B, A, 4]]: objectness and deltas per anchor, ``A = H*W*K``.

    Raises:
        ValueError: if the shapes are not ``(B, K, H, W)`` and ``(B, 4K, H, W)``.
    """
    _check_predictions(objectness, deltas)
    b, k, h, w = objectness.shape
    objectness = objectness.permute(0, 2, 3, 1)  # (B, K, H, W) -> (B, H, W, K)
    objectness = objectness.reshape(b, h * w * k)  # -> (B, H*W*K)
    deltas = deltas.view(b, k, 4, h, w)  # (B, K*4, H, W) -> (B, K, 4, H, W)
    deltas = deltas.permute(0, 3, 4, 1, 2)  # -> (B, H, W, K, 4)
    deltas = deltas.reshape(b, h * w * k, 4)  # -> (B, H*W*K, 4)
    return objectness, deltas


def rpn_loss(
    objectness: Tensor,
    deltas: Tensor,
    anchors: Tensor,
    gt_boxes_list: Sequence[Tensor],
    batch_size_per_image: int = 256,
    positive_fraction: float = 0.5,
    generator: torch.Generator | None = None,
    pos_iou: float = 0.7,
    neg_iou: float = 0.3,
) -> dict[str, Tensor]:
    """The RPN's two losses, as torchvision's ``RegionProposalNetwork.compute_loss``.

    For each image: label the anchors (:func:`~course_lib.matching.label_anchors`) and sample
    ``batch_size_per_image`` of them (:func:`~course_lib.matching.sample_labels`). Over all
    sampled anchors of the batch (``S`` in all):

    * ``objectness``: mean binary cross-entropy of the logits against the labels (1 / 0);
    * ``box``: smooth L1 (``beta = 1/9``) between the predicted deltas and
      ``encode_boxes(matched GT, anchor)`` of the sampled *positives*, summed and divided by
      ``S`` (not by the number of positives), as in torchvision.

    The images are sampled in order, each positives then negatives: with ``generator=None``
    and the same ``torch.manual_seed``, the sample is the same as torchvision's.

    Args:
        objectness (Tensor[B, K, H, W]): objectness logits from :class:`RPNHead`.
        deltas (Tensor[B, 4K, H, W]): box deltas from :class:`RPNHead`.
        anchors (Tensor[A, 4]): the anchors of the feature map, ``A = H*W*K``, in the order of
            :func:`~course_lib.anchors.generate_anchors` (the same for every image).
        gt_boxes_list: B tensors ``Tensor[G, 4]``, the GT boxes of each image (G may be 0).
        batch_size_per_image: anchors sampled per image.
        positive_fraction: the largest fraction of positives in each image's sample.
        generator: random number generator for the sampling (default: the global one).
        pos_iou: IoU from which an anchor is positive.
        neg_iou: IoU below which an anchor is negative.

    Returns:
        dict[str, Tensor]: scalar losses ``{"objectness": ..., "box": ...}``. With no sampled
        anchor at all (``batch_size_per_image=0``) both are nan, as in torchvision.

    Raises:
        ValueError: on inconsistent shapes, or if ``len(gt_boxes_list) != B``.
    """
    scores, codes = flatten_predictions(objectness, deltas)  # (B, A), (B, A, 4)
    if anchors.dim() != 2 or tuple(anchors.shape) != (scores.shape[1], 4):
        raise ValueError(
            f"anchors must have shape (H*W*K, 4) = {(scores.shape[1], 4)}, "
            f"got {tuple(anchors.shape)}"
        )
    if len(gt_boxes_list) != scores.shape[0]:
        raise ValueError(
            f"need one GT tensor per image: {scores.shape[0]} images, "
            f"{len(gt_boxes_list)} GT tensors"
        )

    sampled_scores, sampled_labels = [], []  # objectness of the sampled anchors, per image
    pred_codes, target_codes = [], []  # deltas of the sampled positives, per image
    for image_scores, image_codes, gt_boxes in zip(scores, codes, gt_boxes_list, strict=True):
        labels, matched_gt = label_anchors(anchors, gt_boxes, pos_iou, neg_iou)  # (A,), (A,)
        pos, neg = sample_labels(labels, batch_size_per_image, positive_fraction, generator)
        sampled = pos | neg  # (A,)
        sampled_scores.append(image_scores[sampled])
        sampled_labels.append(labels[sampled].to(image_scores.dtype))
        pred_codes.append(image_codes[pos])  # (P, 4)
        # the targets only for the positives: negatives have no GT box to reach
        target_codes.append(encode_boxes(gt_boxes[matched_gt[pos]].to(anchors.dtype), anchors[pos]))

    sampled_scores = torch.cat(sampled_scores)  # (S,)
    num_sampled = sampled_scores.numel()
    objectness_loss = F.binary_cross_entropy_with_logits(sampled_scores, torch.cat(sampled_labels))
    box_loss = (
        F.smooth_l1_loss(
            torch.cat(pred_codes),
            torch.cat(target_codes).to(codes.dtype),
            beta=1 / 9,
            reduction="sum",
        )
        / num_sampled
    )
    return {"objectness": objectness_loss, "box": box_loss}


def select_proposals(
    objectness: Tensor,
    deltas: Tensor,
    anchors: Tensor,
    image_size: tuple[int, int],
    pre_nms_top_n: int = 1000,
    post_nms_top_n: int = 100,
    nms_thresh: float = 0.7,
    min_size: float = 1e-3,
    score_thresh: float = 0.0,
) -> tuple[list[Tensor], list[Tensor]]:
    """Turn the head's outputs into proposals, as torchvision's ``filter_proposals`` (one level).

    For each image:

    1. keep the ``pre_nms_top_n`` anchors with the highest objectness;
    2. decode their deltas into boxes (:func:`~course_lib.coder.decode_boxes`) and clip the
       boxes to the image;
    3. drop boxes narrower or lower than ``min_size`` and boxes whose score (the sigmoid of the
       objectness) is below ``score_thresh``;
    4. NMS with IoU ``nms_thresh``, and keep the ``post_nms_top_n`` best.

    No gradient flows through the proposals (the inputs are detached), as in torchvision.

    Args:
        objectness (Tensor[B, K, H, W]): objectness logits from :class:`RPNHead`.
        deltas (Tensor[B, 4K, H, W]): box deltas from :class:`RPNHead`.
        anchors (Tensor[A, 4]): the anchors, ``A = H*W*K``, in generate_anchors order.
        image_size: ``(height, width)`` of the images, in pixels.
        pre_nms_top_n: boxes kept per image before NMS.
        post_nms_top_n: boxes kept per image after NMS.
        nms_thresh: NMS IoU threshold.
        min_size: smallest width and height a proposal may have, in pixels.
        score_thresh: smallest score (probability) a proposal may have.

    Returns:
        tuple[list[Tensor[P, 4]], list[Tensor[P]]]: two lists of B tensors: the proposals
        ``(x1, y1, x2, y2)`` of each image and their scores in ``[0, 1]``, by decreasing score
        (``P <= post_nms_top_n``, and may differ between images).

    Raises:
        ValueError: on inconsistent shapes.
    """
    scores, codes = flatten_predictions(objectness.detach(), deltas.detach())  # (B, A), (B, A, 4)
    if anchors.dim() != 2 or tuple(anchors.shape) != (scores.shape[1], 4):
        raise ValueError(
            f"anchors must have shape (H*W*K, 4) = {(scores.shape[1], 4)}, "
            f"got {tuple(anchors.shape)}"
        )
    height, width = image_size
    all_boxes, all_scores = [], []
    for image_scores, image_codes in zip(scores, codes, strict=True):
        # 1. the best pre_nms_top_n anchors (topk sorts them by decreasing objectness)
        top = image_scores.topk(min(pre_nms_top_n, image_scores.numel())).indices  # (A,) -> (T,)
        logits = image_scores[top]  # (T,)
        # 2. decode and clip to the image
        boxes = decode_boxes(image_codes[top], anchors[top])  # (T, 4)
        boxes = torch.stack(
            [
                boxes[:, 0].clamp(0, width),
                boxes[:, 1].clamp(0, height),
                boxes[:, 2].clamp(0, width),
                boxes[:, 3].clamp(0, height),
            ],
            dim=1,
        )  # 4 x (T,) -> (T, 4)
        probs = torch.sigmoid(logits)  # (T,)
        # 3. drop tiny and low-scoring boxes
        widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        keep = (widths >= min_size) & (heights >= min_size) & (probs >= score_thresh)  # (T,)
        boxes, probs = boxes[keep], probs[keep]
        # 4. NMS, then the best post_nms_top_n
        keep = nms(boxes, probs, nms_thresh)[:post_nms_top_n]  # (P,)
        all_boxes.append(boxes[keep])
        all_scores.append(probs[keep])
    return all_boxes, all_scores


def _train_test_pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    """``n`` -> ``(n, n)``; a ``(training, testing)`` pair as it is; checks both are >= 0."""
    pair = (value, value) if not isinstance(value, Sequence) else tuple(value)
    if len(pair) != 2 or any(not isinstance(n, int) or isinstance(n, bool) or n < 0
                             for n in pair):
        raise ValueError(f"{name} must be an int >= 0 or a (training, testing) pair of them, "
                         f"got {value!r}")
    return pair


class RegionProposalNetwork(nn.Module):
    """A one-level RPN: anchors, :class:`RPNHead`, :func:`rpn_loss` and :func:`select_proposals`.

    Args:
        backbone_channels: C, channels of the feature map.
        image_size: ``(height, width)`` of the input images, in pixels.
        stride: pixels of the image between two feature-map cells (a number or ``(sy, sx)``).
        sizes: anchor sizes in pixels, e.g. ``(32, 64, 128)``.
        aspect_ratios: anchor height / width ratios, e.g. ``(0.5, 1.0, 2.0)``.
        pos_iou, neg_iou: IoU thresholds of :func:`~course_lib.matching.label_anchors`.
        batch_size_per_image, positive_fraction: the sampling of :func:`rpn_loss`.
        pre_nms_top_n, post_nms_top_n: the settings of :func:`select_proposals`: one number,
            or a pair ``(training, testing)`` (more proposals while training, as torchvision:
            2000 / 1000 by default there).
        nms_thresh, min_size, score_thresh: the other settings of :func:`select_proposals`.
    """

    def __init__(
        self,
        backbone_channels: int,
        image_size: tuple[int, int],
        stride: int | tuple[int, int],
        sizes: Sequence[float] = (32, 64, 128),
        aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
        pos_iou: float = 0.7,
        neg_iou: float = 0.3,
        batch_size_per_image: int = 256,
        positive_fraction: float = 0.5,
        pre_nms_top_n: int | tuple[int, int] = 1000,
        post_nms_top_n: int | tuple[int, int] = 100,
        nms_thresh: float = 0.7,
        min_size: float = 1e-3,
        score_thresh: float = 0.0,
    ) -> None:
        super().__init__()
        self.image_size = tuple(image_size)
        self.stride = stride
        self.sizes = tuple(sizes)
        self.aspect_ratios = tuple(aspect_ratios)
        self.num_anchors = len(self.sizes) * len(self.aspect_ratios)  # K
        self.head = RPNHead(backbone_channels, self.num_anchors)
        self.pos_iou, self.neg_iou = pos_iou, neg_iou
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction
        self.pre_nms_top_n = _train_test_pair(pre_nms_top_n, "pre_nms_top_n")
        self.post_nms_top_n = _train_test_pair(post_nms_top_n, "post_nms_top_n")
        self.nms_thresh, self.min_size, self.score_thresh = nms_thresh, min_size, score_thresh

    def anchors(self, feature_size: tuple[int, int], dtype=torch.float32, device=None) -> Tensor:
        """The ``Tensor[H*W*K, 4]`` anchors of a feature map of size ``(H, W)``."""
        return generate_anchors(
            tuple(feature_size), self.stride, self.sizes, self.aspect_ratios, dtype, device
        )

    def forward(
        self,
        features: Tensor,
        targets: Sequence[dict[str, Tensor]] | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[list[Tensor], dict[str, Tensor]]:
        """Proposals for each image, and the losses when targets are given.

        Args:
            features (Tensor[B, C, H, W]): the backbone's feature map.
            targets: B dicts with ``"boxes"`` (Tensor[G, 4]), or None. Needed in training mode.
            generator: random number generator for the anchor sampling of the loss.

        Returns:
            tuple[list[Tensor[P, 4]], dict[str, Tensor]]: the proposals of each image, best
            objectness first (``select_proposals`` also returns their scores), and
            ``{"objectness": ..., "box": ...}`` when ``targets`` is given (an empty dict
            otherwise).

        Raises:
            ValueError: in training mode without targets.
        """
        if self.training and targets is None:
            raise ValueError("targets are needed in training mode")
        objectness, deltas = self.head(features)  # (B, K, H, W), (B, 4K, H, W)
        anchors = self.anchors(features.shape[-2:], features.dtype, features.device)  # (A, 4)
        proposals, _scores = select_proposals(
            objectness,
            deltas,
            anchors,
            self.image_size,
            self.pre_nms_top_n[0 if self.training else 1],
            self.post_nms_top_n[0 if self.training else 1],
            self.nms_thresh,
            self.min_size,
            self.score_thresh,
        )
        losses: dict[str, Tensor] = {}
        if targets is not None:
            losses = rpn_loss(
                objectness,
                deltas,
                anchors,
                [t["boxes"] for t in targets],
                self.batch_size_per_image,
                self.positive_fraction,
                generator,
                pos_iou=self.pos_iou,
                neg_iou=self.neg_iou,
            )
        return proposals, losses
