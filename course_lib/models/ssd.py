"""SSD building blocks: default boxes, matching, hard negative mining, MultiBox loss, decoding.

A single-stage detector (SSD, Liu et al. 2016) skips the region proposals of Faster R-CNN. It
puts K *default boxes* (SSD's name for anchors) at every position of several feature maps and,
for each of them, directly predicts one of C + 1 classes (0 = background) and 4 box deltas. The
lecture's "One Stage Detectors" part, in code:

1. :func:`default_boxes` tiles the default boxes, small ones on the large early feature maps
   and large ones on the small late maps ("multiple layers handle different scales");
2. :func:`match_default_boxes` gives each default box a ground-truth (GT) box or background;
3. :func:`hard_negative_mining` keeps the hardest background boxes, 3 per positive;
4. :func:`multibox_loss` is the training loss: smooth L1 on the positives' deltas plus
   cross-entropy on the positives and the mined negatives;
5. :func:`postprocess_ssd` turns the outputs into detections: decode, per-class top-k, NMS.

The single-stage output layout. At every position of a feature map with K default boxes, a
3x3 convolution predicts ``(C + 1) * K`` class scores and ``4 * K`` box deltas. For a 128-pixel
image, feature maps of 16x16, 8x8, 4x4 and 2x2 (strides 8, 16, 32, 64), K = 4 default boxes per
position (aspect ratios 1, 1', 2 and 1/2) and C = 2 classes::

    level   feature map   class scores         box deltas           default boxes
    1       16 x 16       (B, 3 * 4, 16, 16)   (B, 4 * 4, 16, 16)   16 * 16 * 4 = 1024
    2        8 x  8       (B, 3 * 4,  8,  8)   (B, 4 * 4,  8,  8)    8 *  8 * 4 =  256
    3        4 x  4       (B, 3 * 4,  4,  4)   (B, 4 * 4,  4,  4)    4 *  4 * 4 =   64
    4        2 x  2       (B, 3 * 4,  2,  2)   (B, 4 * 4,  2,  2)    2 *  2 * 4 =   16
                                                                     D = 1360

(with K = 6, aspect ratios 2 and 3, the same maps give D = 2040). Each level's outputs are
reshaped ``(B, K * (C + 1), H, W) -> (B, K, C + 1, H, W) -> (B, H, W, K, C + 1) ->
(B, H * W * K, C + 1)`` (likewise with 4 for the deltas) and the levels concatenated, giving
``class_logits (B, D, C + 1)`` and ``box_regression (B, D, 4)``. Box ``(y * W + x) * K + k`` of
a level is default box ``k`` at position ``(y, x)``: the order of :func:`default_boxes`. This is
the layout of torchvision's ``SSDHead``; every function here takes the concatenated tensors.

Everything follows torchvision's ``SSD`` (``DefaultBoxGenerator``, ``SSDMatcher``,
``SSD.compute_loss``, ``SSD.postprocess_detections``) and gives the same results; the tests
compare with it. The per-class NMS is torchvision's compiled ``batched_nms``;
:func:`course_lib.nms.batched_nms` is the readable version, tested equal to it.

Shape shorthand:
    B     images in the batch
    L     feature maps (levels) that predict boxes
    H, W  height and width of one feature map (number of positions)
    K     default boxes per position, ``2 + 2 * len(aspect_ratios[level])``
    D     default boxes of all levels, ``sum over levels of H * W * K``
    G     ground-truth boxes of one image
    C     object classes; the head predicts C + 1 scores (index 0 = background)
    4     box coordinates ``(x1, y1, x2, y2)`` in pixels, or deltas ``(tx, ty, tw, th)``
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import batched_nms

from course_lib.boxes import box_iou, check_boxes
from course_lib.coder import decode_boxes, encode_boxes
from course_lib.models.backbone import TinyBackbone, conv_bn_relu, stack_batch, stack_images

SSD_BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
"""``(wx, wy, ww, wh)`` of SSD's box coder, as in torchvision's ``SSD``."""


# --------------------------------------------------------------------------- default boxes


def _check_levels(values, num_levels: int, name: str, expected: str) -> list:
    """Check that ``values`` has one entry per level (or ``num_levels`` entries) and return it."""
    if not isinstance(values, Sequence) or isinstance(values, str):
        raise ValueError(f"{name} must be a sequence, got {values!r}")
    if len(values) != num_levels:
        raise ValueError(f"{name} must have {expected} = {num_levels} entries, got "
                         f"{len(values)}: {values!r}")
    return list(values)


def ssd_scales(num_levels: int, min_ratio: float = 0.15, max_ratio: float = 0.9) -> list[float]:
    """The scale ``s_k`` of the default boxes of each level, plus one more for the last level.

    SSD's rule for ``m = num_levels`` levels ``k = 1..m``::

        s_k = s_min + (s_max - s_min) * (k - 1) / (m - 1)

    so the first level's boxes are ``s_min`` of the image and the last level's ``s_max``.
    torchvision appends ``s_{m+1} = 1.0`` (needed for the extra ``sqrt(s_m * s_{m+1})`` box of
    the last level). With one level there is no spread: the scales are ``[s_min, s_max]``.

    Args:
        num_levels: m, the number of feature maps.
        min_ratio: ``s_min``, a fraction of the image size.
        max_ratio: ``s_max``.

    Returns:
        list of ``m + 1`` floats.
    """
    if num_levels == 1:
        return [min_ratio, max_ratio]
    range_ratio = max_ratio - min_ratio
    scales = [min_ratio + range_ratio * k / (num_levels - 1.0) for k in range(num_levels)]
    return scales + [1.0]


def _level_sizes(scale: float, next_scale: float, aspect_ratios: Sequence[float]) -> list:
    """The K ``(w, h)`` pairs of one level, fractions of the image: ``2 + 2 * len(ratios)``."""
    extra = math.sqrt(scale * next_scale)  # s'_k = sqrt(s_k * s_{k+1})
    sizes = [[scale, scale], [extra, extra]]  # two squares (aspect ratio 1)
    for ratio in aspect_ratios:  # r and 1/r: (s * sqrt(r), s / sqrt(r)) and its transpose
        w, h = scale * math.sqrt(ratio), scale / math.sqrt(ratio)
        sizes.extend([[w, h], [h, w]])
    return sizes


def default_boxes(
    feature_sizes: Sequence[tuple[int, int]],
    image_size: tuple[int, int],
    scales: Sequence[float] | None = None,
    aspect_ratios: Sequence[Sequence[float]] | None = None,
    min_ratio: float = 0.15,
    max_ratio: float = 0.9,
    steps: Sequence[float] | None = None,
    clip: bool = True,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """The default boxes of SSD for feature maps of the given sizes, in image pixels.

    On level ``k`` (of ``m``), every position gets ``K = 2 + 2 * len(aspect_ratios[k])`` boxes,
    with sizes given as fractions of the image:

    * a square of side ``s_k`` and a square of side ``s'_k = sqrt(s_k * s_{k+1})``;
    * for each aspect ratio ``r``: ``(w, h) = (s_k * sqrt(r), s_k / sqrt(r))`` and
      ``(s_k / sqrt(r), s_k * sqrt(r))`` (ratios r and 1/r).

    The scales follow SSD's rule ``s_k = s_min + (s_max - s_min) * (k - 1) / (m - 1)`` unless
    ``scales`` is given (see :func:`ssd_scales`). The box at position ``(y, x)`` of an
    ``H x W`` map is centred at ``((x + 0.5) / W, (y + 0.5) / H)`` of the image (with
    ``steps``: at ``((x + 0.5) * step / image_width, (y + 0.5) * step / image_height)``).
    With ``clip``, the widths and heights (not the centres) are clipped to ``[0, 1]`` before
    turning ``(cx, cy, w, h)`` into corners, so a box may still reach outside the image.
    Finally the corners are multiplied by the image width and height.

    Equal, in order and values, to torchvision's ``DefaultBoxGenerator(aspect_ratios,
    min_ratio, max_ratio, scales, steps, clip)`` applied to feature maps of these sizes and a
    batch of size ``image_size``. Like torchvision, the fractions are computed in float32
    and then converted to ``dtype``.

    Args:
        feature_sizes: L pairs ``(H, W)``, the sizes of the feature maps, largest first.
        image_size: ``(height, width)`` of the (padded) input image, in pixels.
        scales: ``L + 1`` scales ``s_1 .. s_{L+1}`` (fractions of the image); default: SSD's
            rule from ``min_ratio`` and ``max_ratio``.
        aspect_ratios: L sequences of aspect ratios ``r`` (each adds ``r`` and ``1/r``); the
            ratio 1 is always there. Default: ``(2,)`` on every level (K = 4).
        min_ratio: ``s_min``, used when ``scales`` is None.
        max_ratio: ``s_max``, used when ``scales`` is None.
        steps: L numbers, the image pixels between two positions of each level; default: the
            image size divided by the feature map size.
        clip: clip the widths and heights to ``[0, 1]`` of the image.
        dtype: floating-point dtype of the result.
        device: device of the result (default: CPU).

    Returns:
        Tensor[D, 4]: ``(x1, y1, x2, y2)`` boxes in pixels, ``D = sum_k H_k * W_k * K_k``,
        level after level; within a level position-major (row ``y``, then column ``x``), and
        the K boxes of a position consecutive, in the order listed above.

    Raises:
        ValueError: if ``feature_sizes`` is empty or not pairs of ints >= 0, ``image_size`` is
            not a pair of positive numbers, or ``scales``, ``aspect_ratios`` or ``steps`` do not
            have the number of entries given above.
    """
    if not isinstance(feature_sizes, Sequence) or len(feature_sizes) == 0:
        raise ValueError(f"feature_sizes must be a non-empty sequence of (H, W), got "
                         f"{feature_sizes!r}")
    sizes = []
    for size in feature_sizes:
        size = tuple(size.tolist() if isinstance(size, Tensor) else size)
        if len(size) != 2 or not all(isinstance(v, int) and v >= 0 for v in size):
            raise ValueError(f"feature_sizes must hold pairs (H, W) of ints >= 0, got "
                             f"{feature_sizes!r}")
        sizes.append(size)
    image_size = tuple(image_size)
    if len(image_size) != 2 or not all(v > 0 for v in image_size):
        raise ValueError(f"image_size must be (height, width) > 0, got {image_size!r}")
    num_levels = len(sizes)
    if aspect_ratios is None:
        aspect_ratios = [(2,)] * num_levels
    aspect_ratios = _check_levels(aspect_ratios, num_levels, "aspect_ratios",
                                  "len(feature_sizes)")
    if scales is None:
        scales = ssd_scales(num_levels, min_ratio, max_ratio)
    scales = _check_levels(scales, num_levels + 1, "scales", "len(feature_sizes) + 1")
    if steps is not None:
        steps = _check_levels(steps, num_levels, "steps", "len(feature_sizes)")
    image_height, image_width = image_size

    levels = []
    for k, (height, width) in enumerate(sizes):
        # Box centres, as fractions of the image, row-major: (y0, x0), (y0, x1), ...
        if steps is None:
            cells_y, cells_x = height, width  # the feature map tiles the whole image
        else:
            cells_y, cells_x = image_height / steps[k], image_width / steps[k]
        centres_x = ((torch.arange(width) + 0.5) / cells_x).to(dtype)  # (W,)
        centres_y = ((torch.arange(height) + 0.5) / cells_y).to(dtype)  # (H,)
        centre_y, centre_x = torch.meshgrid(centres_y, centres_x, indexing="ij")  # (H, W) each
        centres = torch.stack([centre_x.reshape(-1), centre_y.reshape(-1)], dim=1)  # (H*W, 2)

        # The K (w, h) pairs of this level, as fractions of the image.
        wh = torch.as_tensor(_level_sizes(scales[k], scales[k + 1], aspect_ratios[k]),
                             dtype=torch.float32)  # (K, 2)
        if clip:
            wh = wh.clamp(min=0, max=1)
        wh = wh.to(dtype)

        # Every (position, box) pair, position-major: (cx, cy, w, h).
        num_positions, num_boxes = centres.shape[0], wh.shape[0]
        boxes = torch.cat([centres[:, None, :].expand(num_positions, num_boxes, 2),
                           wh[None, :, :].expand(num_positions, num_boxes, 2)],
                          dim=2)  # (H*W, 1, 2), (1, K, 2) -> (H*W, K, 4)
        levels.append(boxes.reshape(-1, 4))  # (H*W, K, 4) -> (H*W*K, 4)

    boxes = torch.cat(levels).to(device)  # (D, 4), (cx, cy, w, h) fractions of the image
    image_wh = torch.tensor([image_width, image_height], dtype=dtype, device=boxes.device)
    return torch.cat([(boxes[:, :2] - 0.5 * boxes[:, 2:]) * image_wh,
                      (boxes[:, :2] + 0.5 * boxes[:, 2:]) * image_wh], dim=1)  # (D, 4) xyxy


# --------------------------------------------------------------------------------- matching


def match_default_boxes(
    default_boxes: Tensor,
    gt_boxes: Tensor,
    iou_threshold: float = 0.5,
) -> Tensor:
    """Match every default box to a GT box or to background, SSD's rule.

    1. Each default box is matched to the GT box it overlaps most (ties: the first GT, what
       ``Tensor.max`` returns) if that IoU is ``>= iou_threshold``, else it is background.
    2. Each GT box is matched to *its* best default box (ties: the first default box), whatever
       the IoU, so that every object has at least one positive. This overrides rule 1; when two
       GT boxes have the same best default box, the later GT keeps it.

    Equal to torchvision's ``SSDMatcher(iou_threshold)(box_iou(gt_boxes, default_boxes))``
    (which, on CPU, also lets the later GT win). With no GT box every default box is
    background (torchvision's ``SSD`` does the same before calling the matcher).

    Args:
        default_boxes (Tensor[D, 4]): default boxes, ``(x1, y1, x2, y2)``.
        gt_boxes (Tensor[G, 4]): ground-truth boxes of one image.
        iou_threshold: IoU from which a default box is matched by rule 1.

    Returns:
        Tensor[D]: int64, the index of the matched GT box (``0..G-1``), or -1 for background.

    Raises:
        ValueError: if a box tensor is not ``(N, 4)``.
    """
    default_boxes = check_boxes(default_boxes, "default_boxes")
    gt_boxes = check_boxes(gt_boxes, "gt_boxes")
    num_default, num_gt = default_boxes.shape[0], gt_boxes.shape[0]
    matched_gt = torch.full((num_default,), -1, dtype=torch.int64, device=default_boxes.device)
    if num_gt == 0 or num_default == 0:
        return matched_gt

    iou = box_iou(gt_boxes, default_boxes)  # (G, D)
    best_iou, best_gt = iou.max(dim=0)  # (G, D) -> (D,), (D,)
    matched_gt = torch.where(best_iou >= iou_threshold, best_gt, matched_gt)  # rule 1
    best_default = iou.max(dim=1).indices  # (G, D) -> (G,)
    for gt, box in enumerate(best_default.tolist()):  # rule 2; the later GT wins a shared box
        matched_gt[box] = gt
    return matched_gt


# ----------------------------------------------------------------------- hard negative mining


def hard_negative_mining(loss: Tensor, labels: Tensor, neg_pos_ratio: float = 3) -> Tensor:
    """The default boxes that enter the classification loss: positives and the hardest negatives.

    Most default boxes are background; using them all would drown the few positives. SSD keeps,
    in each image, all ``P`` positive boxes (``labels > 0``) and the ``neg_pos_ratio * P``
    negative boxes with the highest classification loss (the negatives the network finds
    hardest). An image with no positive keeps no negative either.

    As torchvision's ``SSD.compute_loss``: the positives' losses are set to ``-inf`` (so they
    sort last), the losses are sorted in descending order with ``Tensor.sort`` (ties among
    negatives are broken as that sort breaks them), and the boxes whose rank is below
    ``neg_pos_ratio * P`` are the mined negatives. The result equals torchvision's
    ``foreground_idxs | background_idxs``.

    Args:
        loss (Tensor[B, D]): the classification loss of every default box.
        labels (Tensor[B, D]): their classes, int64, ``0`` = background, ``1..C`` positive.
        neg_pos_ratio: negatives kept per positive.

    Returns:
        Tensor[B, D]: bool, True for the boxes that enter the classification loss.

    Raises:
        ValueError: if ``loss`` is not ``(B, D)`` or ``labels`` does not have its shape.
    """
    if loss.dim() != 2:
        raise ValueError(f"loss must have shape (B, D), got {tuple(loss.shape)}")
    if labels.shape != loss.shape:
        raise ValueError(f"labels must have the shape of loss {tuple(loss.shape)}, got "
                         f"{tuple(labels.shape)}")
    positive = labels > 0  # (B, D)
    num_negative = neg_pos_ratio * positive.sum(dim=1, keepdim=True)  # (B, 1)
    negative_loss = loss.detach().masked_fill(positive, float("-inf"))  # (B, D)
    order = negative_loss.sort(dim=1, descending=True).indices  # (B, D): hardest first
    rank = order.sort(dim=1).indices  # (B, D): rank[b, i] = place of box i in that order
    return positive | (rank < num_negative)


# ------------------------------------------------------------------------------------- loss


def _check_outputs(class_logits: Tensor, box_regression: Tensor, default_boxes: Tensor) -> None:
    """Raise ``ValueError`` unless the head's outputs fit ``(B, D, C + 1)``, ``(B, D, 4)``."""
    default_boxes = check_boxes(default_boxes, "default_boxes")
    if class_logits.dim() != 3 or class_logits.shape[2] < 2:
        raise ValueError(f"class_logits must have shape (B, D, C + 1) with C >= 1, got "
                         f"{tuple(class_logits.shape)}")
    batch, num_default = class_logits.shape[:2]
    if box_regression.shape != (batch, num_default, 4):
        raise ValueError(f"box_regression must have shape (B, D, 4) = {(batch, num_default, 4)}"
                         f" to fit class_logits {tuple(class_logits.shape)}, got "
                         f"{tuple(box_regression.shape)}")
    if default_boxes.shape[0] != num_default:
        raise ValueError(f"default_boxes must have shape (D, 4) = {(num_default, 4)} to fit "
                         f"class_logits {tuple(class_logits.shape)}, got "
                         f"{tuple(default_boxes.shape)}")


def multibox_loss(
    class_logits: Tensor,
    box_regression: Tensor,
    default_boxes: Tensor,
    targets: Sequence[dict[str, Tensor]],
    neg_pos_ratio: float = 3,
    iou_threshold: float = 0.5,
    weights: tuple[float, float, float, float] = SSD_BOX_WEIGHTS,
) -> dict[str, Tensor]:
    """SSD's MultiBox loss, as torchvision's ``SSD.compute_loss``.

    For each image: match the default boxes to the GT boxes (:func:`match_default_boxes`);
    a matched box gets its GT's label and the deltas that move it onto its GT
    (:func:`~course_lib.coder.encode_boxes` with ``weights``); the others are background.
    Then, with ``N`` the number of positives in the whole batch (at least 1):

    * ``bbox_regression``: smooth L1 (``beta = 1``) between the predicted and the target
      deltas of the positives, summed, divided by N;
    * ``classification``: cross-entropy over the C + 1 classes of the positives and the
      hard negatives (:func:`hard_negative_mining`), summed, divided by N.

    One difference from torchvision, in a corner case: when an image has fewer than
    ``neg_pos_ratio * P`` negatives, torchvision's mined negatives run into the positives and
    count their cross-entropy twice; here every box counts once.

    Args:
        class_logits (Tensor[B, D, C + 1]): class scores of every default box.
        box_regression (Tensor[B, D, 4]): predicted deltas of every default box.
        default_boxes (Tensor[D, 4]): the default boxes, the same for every image.
        targets: B dicts with ``"boxes"`` (Tensor[G, 4]) and ``"labels"`` (Tensor[G] int64,
            1..C); G may be 0.
        neg_pos_ratio: negatives kept per positive.
        iou_threshold: IoU from which a default box is matched to a GT box.
        weights: ``(wx, wy, ww, wh)`` of the box coder.

    Returns:
        dict[str, Tensor]: scalar ``bbox_regression`` and ``classification``.

    Raises:
        ValueError: if the shapes do not fit (see the Args) or there is not one target per
            image.
    """
    _check_outputs(class_logits, box_regression, default_boxes)
    if len(targets) != class_logits.shape[0]:
        raise ValueError(f"need one target per image: class_logits has B = "
                         f"{class_logits.shape[0]}, got {len(targets)} targets")
    num_classes = class_logits.shape[2]  # C + 1

    labels, predicted, wanted = [], [], []
    num_positive = 0
    for image_regression, target in zip(box_regression, targets, strict=True):
        gt_boxes, gt_labels = target["boxes"], target["labels"]
        matched_gt = match_default_boxes(default_boxes, gt_boxes, iou_threshold)  # (D,)
        positive = torch.where(matched_gt >= 0)[0]  # (P,)
        image_labels = torch.zeros(matched_gt.shape, dtype=torch.int64, device=matched_gt.device)
        image_labels[positive] = gt_labels[matched_gt[positive]].to(torch.int64)
        labels.append(image_labels)
        num_positive += positive.numel()
        predicted.append(image_regression[positive])  # (P, 4)
        wanted.append(encode_boxes(gt_boxes[matched_gt[positive]], default_boxes[positive],
                                   weights))  # (P, 4)
    labels = torch.stack(labels)  # B x (D,) -> (B, D)
    num_positive = max(1, num_positive)  # N, the normaliser of both losses

    box_loss = F.smooth_l1_loss(torch.cat(predicted), torch.cat(wanted), beta=1.0,
                                reduction="sum")
    class_loss = F.cross_entropy(class_logits.reshape(-1, num_classes), labels.reshape(-1),
                                 reduction="none").reshape(labels.shape)  # (B*D,) -> (B, D)
    kept = hard_negative_mining(class_loss, labels, neg_pos_ratio)  # (B, D) bool
    return {"bbox_regression": box_loss / num_positive,
            "classification": class_loss[kept].sum() / num_positive}


# ------------------------------------------------------------------------------- detections


def postprocess_ssd(
    class_logits: Tensor,
    box_regression: Tensor,
    default_boxes: Tensor,
    image_size: tuple[int, int],
    score_thresh: float = 0.01,
    nms_thresh: float = 0.45,
    topk_candidates: int = 400,
    detections_per_img: int = 200,
    weights: tuple[float, float, float, float] = SSD_BOX_WEIGHTS,
) -> list[dict[str, Tensor]]:
    """Detections from SSD's outputs, as torchvision's ``SSD.postprocess_detections``.

    For each image: decode every default box's deltas and clip the boxes to the image; take
    the softmax scores; then for each class 1..C keep the boxes with score > ``score_thresh``
    and of those the ``topk_candidates`` best; finally run NMS per class with ``nms_thresh``
    on all candidates (torchvision's compiled ``batched_nms``) and keep the
    ``detections_per_img`` best. Unlike the R-CNN second stage, small boxes are not dropped.
    (torchvision loops over the classes; one ``topk`` over a ``(C, D)`` score matrix gives the
    same candidates in the same order, with fewer steps.)

    Args:
        class_logits (Tensor[B, D, C + 1]): class scores of every default box.
        box_regression (Tensor[B, D, 4]): predicted deltas of every default box.
        default_boxes (Tensor[D, 4]): the default boxes, the same for every image.
        image_size: ``(height, width)`` of the images, to clip the boxes.
        score_thresh: candidates with this score or lower are dropped.
        nms_thresh: IoU threshold of the per-class NMS.
        topk_candidates: candidates kept per class before NMS.
        detections_per_img: detections kept per image, best first.
        weights: ``(wx, wy, ww, wh)`` of the box coder.

    Returns:
        list of B dicts with ``"boxes"`` (Tensor[N, 4]), ``"scores"`` (Tensor[N]) and
        ``"labels"`` (Tensor[N] int64, 1..C), best score first.

    Raises:
        ValueError: if the shapes do not fit (see the Args).
    """
    _check_outputs(class_logits, box_regression, default_boxes)
    height, width = image_size
    num_classes = class_logits.shape[2]  # C + 1
    scores = F.softmax(class_logits, dim=-1)  # (B, D, C+1)

    limits = torch.tensor([width, height, width, height], dtype=box_regression.dtype,
                          device=box_regression.device)  # clip x to [0, W], y to [0, H]
    labels = torch.arange(1, num_classes, device=box_regression.device)[:, None]  # (C, 1)
    detections = []
    for image_regression, image_scores in zip(box_regression, scores, strict=True):
        # per class 1..C, the topk_candidates best boxes with a score above score_thresh:
        # all classes at once, in torchvision's order (class after class, best first)
        class_scores = image_scores[:, 1:].T  # (D, C+1) -> (C, D), class 0 is background
        k = min(topk_candidates, class_scores.shape[1])
        best_scores, best = class_scores.masked_fill(class_scores <= score_thresh, -math.inf).topk(
            k, dim=1)  # (C, k) each: best first, the boxes at or below the threshold last
        kept = best_scores > score_thresh  # (C, k)
        index = best[kept]  # (N',) the candidates' default boxes
        # decode the candidates only (the same numbers as decoding all D boxes, less work)
        candidate_boxes = decode_boxes(image_regression[index], default_boxes[index], weights)
        candidate_boxes = candidate_boxes.clamp(min=0).minimum(limits)  # (N', 4)
        candidate_scores = best_scores[kept]  # (N',)
        candidate_labels = labels.expand(-1, k)[kept]  # (C, k) -> (N',)
        keep = batched_nms(candidate_boxes, candidate_scores, candidate_labels, nms_thresh)
        keep = keep[:detections_per_img]
        detections.append({"boxes": candidate_boxes[keep], "scores": candidate_scores[keep],
                           "labels": candidate_labels[keep]})
    return detections


# ------------------------------------------------------------------------------- the network


def halved(size: int, times: int) -> int:
    """The side of a map after ``times`` convolutions with stride 2, kernel 3, padding 1."""
    for _ in range(times):
        size = (size - 1) // 2 + 1  # ceil(size / 2)
    return size


class SSDFeatures(nn.Module):
    """The L feature maps SSD predicts from: the backbone's, then ``num_extra`` smaller ones.

    Each extra block is a ``3x3 conv (stride 2) + BatchNorm + ReLU``, halving the map: for a
    128 px image and the stride-8 :class:`~course_lib.models.backbone.TinyBackbone`, the maps
    are 16x16, 8x8, 4x4, 2x2 and 1x1 (L = 5). It returns an ``OrderedDict`` and has
    ``out_channels``, so torchvision's ``SSD`` accepts it as its backbone.

    Args:
        backbone: maps ``(B, 3, S, S)`` to ``(B, F, S/stride, S/stride)``, with ``out_channels``
            and ``stride`` attributes (default :class:`TinyBackbone`).
        num_extra: extra blocks after the backbone.
        extra_channels: channels of the extra maps (default: the backbone's F).
    """

    def __init__(self, backbone: nn.Module | None = None, num_extra: int = 4,
                 extra_channels: int | None = None) -> None:
        super().__init__()
        if num_extra < 0:
            raise ValueError(f"num_extra must be >= 0, got {num_extra}")
        self.backbone = backbone if backbone is not None else TinyBackbone()
        channels = self.backbone.out_channels
        extra_channels = extra_channels or channels
        self.extras = nn.ModuleList(
            conv_bn_relu(channels if i == 0 else extra_channels, extra_channels, stride=2)
            for i in range(num_extra))
        self.channels = [channels] + [extra_channels] * num_extra  # per level
        self.out_channels = self.channels

    def feature_sizes(self, image_size: int) -> list[tuple[int, int]]:
        """The ``(H, W)`` of each map for a square image of side ``image_size``."""
        first = halved(image_size, round(math.log2(self.backbone.stride)))
        return [(halved(first, k),) * 2 for k in range(len(self.channels))]

    def forward(self, images: Tensor) -> OrderedDict[str, Tensor]:
        """The feature maps of a batch.

        Args:
            images (Tensor[B, 3, S, S]): images in [0, 1].

        Returns:
            OrderedDict ``"0" .. "L-1"`` of Tensor[B, F_k, H_k, W_k], largest map first.
        """
        x = self.backbone(images)  # (B, F, S/8, S/8)
        maps = OrderedDict([("0", x)])
        for k, block in enumerate(self.extras, start=1):
            x = block(x)  # (B, F, H, W) -> (B, F', H/2, W/2)
            maps[str(k)] = x
        return maps


class SSDHead(nn.Module):
    """One ``3x3`` convolution per level predicts the class scores and the box deltas.

    At every position of level k it predicts, for each of its K_k default boxes, ``C + 1``
    class scores and 4 box deltas: ``(C + 1) * K_k + 4 * K_k`` output channels. torchvision's
    ``SSDHead`` uses two convolutions per level, one for the scores and one for the deltas;
    one convolution with both sets of filters computes the same thing in fewer steps (what
    matters on a CPU at batch 1). The outputs have torchvision's layout (module docstring).

    Args:
        in_channels: the channels of each level's map.
        num_boxes: K_k, default boxes per position of each level.
        num_classes: C + 1, the object classes and background.
    """

    def __init__(self, in_channels: Sequence[int], num_boxes: Sequence[int],
                 num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.predict = nn.ModuleList(
            nn.Conv2d(c, k * (num_classes + 4), 3, padding=1)
            for c, k in zip(in_channels, num_boxes, strict=True))
        for conv in self.predict:  # torchvision's initialisation
            nn.init.xavier_uniform_(conv.weight)
            nn.init.zeros_(conv.bias)

    def forward(self, features: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """The outputs of all levels, concatenated.

        Args:
            features: L maps ``Tensor[B, F_k, H_k, W_k]``.

        Returns:
            tuple: ``class_logits`` Tensor[B, D, C + 1] and ``box_regression`` Tensor[B, D, 4].
        """
        outputs = []
        for conv, x in zip(self.predict, features, strict=True):
            out = conv(x)  # (B, K * (C+1+4), H, W)
            batch, _, height, width = out.shape
            out = out.view(batch, -1, self.num_classes + 4, height, width)  # (B, K, C+5, H, W)
            outputs.append(out.permute(0, 3, 4, 1, 2).reshape(batch, -1, self.num_classes + 4))
        outputs = torch.cat(outputs, dim=1)  # L x (B, H*W*K, C+5) -> (B, D, C+5)
        return outputs[..., : self.num_classes], outputs[..., self.num_classes :]


class SSD(nn.Module):
    """A small SSD for square images of one size, trained from scratch.

    The lecture's two key ideas: several feature maps handle different scales (small default
    boxes on the large early maps), and different filters of the head predict boxes of
    different shapes (one set of output channels per default box).

    The calling convention is torchvision's: in training mode ``model(images, targets)``
    returns the losses ``bbox_regression`` and ``classification`` (:func:`multibox_loss`), in
    eval mode ``model(images)`` returns one dict of ``boxes``, ``scores`` and ``labels`` per
    image (:func:`postprocess_ssd`). No resizing and no normalisation (BatchNorm handles it).

    Args:
        num_classes: C, object classes (labels 1..C; the head adds the background).
        image_size: S, the side of the square input images.
        backbone: see :class:`SSDFeatures` (default :class:`TinyBackbone`).
        num_extra: extra feature maps after the backbone's (L = 1 + num_extra).
        aspect_ratios: per level, the ratios besides 1 (default ``(2,)``: K = 4 everywhere).
        min_ratio, max_ratio: the scales of the first and last level (fractions of S).
        neg_pos_ratio, iou_threshold: training, see :func:`multibox_loss`.
        score_thresh, nms_thresh, topk_candidates, detections_per_img: inference, see
            :func:`postprocess_ssd`.

    Attributes:
        feature_sizes: the L ``(H, W)``; ``scales``: the L + 1 scales; ``aspect_ratios``;
        ``num_boxes``: K per level; ``anchors``: the default boxes Tensor[D, 4] (a buffer).
    """

    def __init__(
        self,
        num_classes: int,
        image_size: int = 128,
        backbone: nn.Module | None = None,
        num_extra: int = 4,
        aspect_ratios: Sequence[Sequence[float]] | None = None,
        min_ratio: float = 0.1,
        max_ratio: float = 0.9,
        neg_pos_ratio: float = 3,
        iou_threshold: float = 0.5,
        score_thresh: float = 0.01,
        nms_thresh: float = 0.45,
        topk_candidates: int = 100,
        detections_per_img: int = 100,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes, self.image_size = num_classes, image_size
        self.features = SSDFeatures(backbone, num_extra)
        self.feature_sizes = self.features.feature_sizes(image_size)
        levels = len(self.feature_sizes)
        if aspect_ratios is None:
            aspect_ratios = [(2.0,)] * levels
        self.aspect_ratios = _check_levels(aspect_ratios, levels, "aspect_ratios",
                                           "1 + num_extra")
        self.scales = ssd_scales(levels, min_ratio, max_ratio)
        self.num_boxes = [2 + 2 * len(ratios) for ratios in self.aspect_ratios]
        self.head = SSDHead(self.features.channels, self.num_boxes, num_classes + 1)
        self.register_buffer("anchors", default_boxes(
            self.feature_sizes, (image_size, image_size), self.scales, self.aspect_ratios),
            persistent=False)
        self.neg_pos_ratio, self.iou_threshold = neg_pos_ratio, iou_threshold
        self.score_thresh, self.nms_thresh = score_thresh, nms_thresh
        self.topk_candidates, self.detections_per_img = topk_candidates, detections_per_img

    def outputs(self, images: Sequence[Tensor] | Tensor) -> tuple[Tensor, Tensor]:
        """The raw outputs: ``class_logits`` Tensor[B, D, C + 1], ``box_regression`` [B, D, 4]."""
        return self._outputs(stack_images(images, self.image_size))

    def _outputs(self, batch: Tensor) -> tuple[Tensor, Tensor]:
        return self.head(list(self.features(batch).values()))  # (B, 3, S, S) -> L maps -> ...

    def forward(self, images: Sequence[Tensor] | Tensor,
                targets: Sequence[dict[str, Tensor]] | None = None):
        """Losses (training mode) or detections (eval mode), as torchvision's ``SSD``.

        Args:
            images: B images ``Tensor[3, S, S]`` in [0, 1] (a list, or a ``Tensor[B, 3, S, S]``).
            targets: B dicts with ``"boxes"`` (Tensor[G, 4], xyxy pixels) and ``"labels"``
                (Tensor[G], 1..C); needed in training mode.

        Returns:
            training: ``{"bbox_regression": Tensor, "classification": Tensor}`` (scalars).
            eval: a list of B dicts with ``"boxes"`` (Tensor[N, 4]), ``"scores"`` (Tensor[N])
            and ``"labels"`` (Tensor[N] int64).
        """
        batch = stack_batch(images, targets, self.image_size, self.training)  # (B, 3, S, S)
        class_logits, box_regression = self._outputs(batch)  # (B, D, C+1), (B, D, 4)
        if self.training:
            return multibox_loss(class_logits, box_regression, self.anchors, targets,
                                 self.neg_pos_ratio, self.iou_threshold)
        return postprocess_ssd(class_logits, box_regression, self.anchors,
                               (self.image_size, self.image_size), self.score_thresh,
                               self.nms_thresh, self.topk_candidates, self.detections_per_img)
