"""Instance masks and RoIs: Mask R-CNN's mask targets, mask loss, and pasting masks back.

Shape shorthand used in this module:
    G           ground-truth instances of one image
    P           positive proposals (RoIs) that get a mask target
    N           detections whose masks are pasted into the image
    C           classes, background 0 included (channels of the mask head)
    M           side of the RoI mask grid (28 in Mask R-CNN)
    H, W        image height and width

Mask R-CNN adds a small fully convolutional head to Faster R-CNN: for every RoI it predicts
an ``M x M`` mask *per class*, in the RoI's own coordinates. Three steps connect those small
masks to the image:

1. **Training targets** (:func:`mask_targets`): the ground-truth mask of the object a
   proposal was matched to is cut out along the proposal's box and resized to ``M x M``. That
   is exactly RoI Align applied to the mask, seen as a one-channel image: every target cell is
   the average of bilinear samples of the 0/1 mask, a value in ``[0, 1]``.
2. **Loss** (:func:`mask_loss`): binary cross-entropy per pixel, on the channel of the
   ground-truth class only. The classes do not compete for a pixel (no softmax over classes):
   the box head decides the class, the mask head only says "object or not" for that class.
3. **Inference** (:func:`paste_masks`): the predicted ``M x M`` probabilities of a detection
   are resized to its box and placed in an ``H x W`` image, then thresholded at 0.5.

Follows torchvision (``torchvision/models/detection/roi_heads.py``): ``project_masks_on_boxes``,
``maskrcnn_loss`` and ``paste_masks_in_image`` give the same numbers (tested).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from course_lib.roi import roi_align

# ----------------------------------------------------------------------------- targets


def mask_targets(gt_masks: Tensor, proposals: Tensor, matched_idxs: Tensor, size: int) -> Tensor:
    """Crop and resize the matched ground-truth mask of every proposal to ``size x size``.

    Each instance mask is treated as a one-channel image, and the proposal's box is pooled
    from the mask of the object it was matched to with RoI Align (``sampling_ratio=-1``,
    ``aligned=False``, as torchvision's ``project_masks_on_boxes``). A proposal that covers
    the object exactly gives ones inside the object and zeros outside; cells on the object's
    border get fractions.

    Args:
        gt_masks (Tensor[G, H, W]): instance masks of one image, uint8/bool (or float 0/1).
        proposals (Tensor[P, 4]): positive proposals in ``(x1, y1, x2, y2)`` image pixels,
            floating point.
        matched_idxs (Tensor[P] int64): index in ``[0, G)`` of the instance each proposal was
            matched to.
        size: ``M``, the side of the mask head's output grid.

    Returns:
        Tensor[P, M, M]: the mask targets, values in ``[0, 1]``, in the dtype and on the
        device of ``proposals``.

    Raises:
        ValueError: if a shape is wrong, ``size`` is not positive, or an index is outside
            ``[0, G)``.
    """
    if not isinstance(gt_masks, Tensor) or gt_masks.dim() != 3:
        shape = tuple(gt_masks.shape) if isinstance(gt_masks, Tensor) else type(gt_masks)
        raise ValueError(f"gt_masks must have shape (G, H, W), got {shape}")
    if proposals.dim() != 2 or proposals.shape[1] != 4 or not proposals.is_floating_point():
        raise ValueError(
            f"proposals must be a float tensor of shape (P, 4), got {tuple(proposals.shape)} "
            f"{proposals.dtype}"
        )
    num = proposals.shape[0]
    if matched_idxs.shape != (num,):
        raise ValueError(
            f"matched_idxs must have shape ({num},) like proposals, got "
            f"{tuple(matched_idxs.shape)}"
        )
    if not isinstance(size, int) or size <= 0:
        raise ValueError(f"size must be a positive int, got {size!r}")
    if num > 0 and (matched_idxs.min() < 0 or matched_idxs.max() >= gt_masks.shape[0]):
        raise ValueError(
            f"matched_idxs must lie in [0, {gt_masks.shape[0]}) for gt_masks of shape "
            f"{tuple(gt_masks.shape)}, got values from {int(matched_idxs.min())} to "
            f"{int(matched_idxs.max())}"
        )
    if num == 0:
        return proposals.new_zeros((0, size, size))

    masks = gt_masks[:, None].to(proposals)  # (G, 1, H, W): each mask is its own "image"
    rois = torch.cat([matched_idxs[:, None].to(proposals), proposals], dim=1)  # (P, 5)
    pooled = roi_align(masks, rois, (size, size), spatial_scale=1.0)  # (P, 1, M, M)
    return pooled[:, 0]  # (P, M, M)


# ----------------------------------------------------------------------------- loss


def mask_loss(mask_logits: Tensor, labels: Tensor, targets: Tensor) -> Tensor:
    """Mask R-CNN's mask loss: binary cross-entropy on the ground-truth class's channel.

    For RoI ``p`` only channel ``labels[p]`` of ``mask_logits`` is used; the other ``C - 1``
    channels get no gradient. The loss is the mean of ``binary_cross_entropy_with_logits``
    over the ``P x M x M`` selected values, as torchvision's ``maskrcnn_loss``.

    Args:
        mask_logits (Tensor[P, C, M, M]): mask head output (logits), one channel per class.
        labels (Tensor[P] int64): ground-truth class of each RoI, in ``[0, C)``; the RoIs are
            the positive ones, so in practice ``1 .. C-1``.
        targets (Tensor[P, M, M]): mask targets in ``[0, 1]`` (see :func:`mask_targets`).

    Returns:
        Tensor: the loss, a scalar. With no RoI (``P = 0``) it is 0, still connected to
        ``mask_logits`` so that ``.backward()`` works (and gives zero gradients).

    Raises:
        ValueError: if a shape does not fit, or a label is outside ``[0, C)``.
    """
    if mask_logits.dim() != 4 or mask_logits.shape[-1] != mask_logits.shape[-2]:
        raise ValueError(f"mask_logits must have shape (P, C, M, M), got "
                         f"{tuple(mask_logits.shape)}")
    num, channels, side = mask_logits.shape[0], mask_logits.shape[1], mask_logits.shape[-1]
    if labels.shape != (num,):
        raise ValueError(f"labels must have shape ({num},), got {tuple(labels.shape)}")
    if targets.shape != (num, side, side):
        raise ValueError(f"targets must have shape ({num}, {side}, {side}), got "
                         f"{tuple(targets.shape)}")
    if num == 0:
        return mask_logits.sum() * 0  # 0 with a graph: there is nothing to average
    if labels.min() < 0 or labels.max() >= channels:
        raise ValueError(f"labels must lie in [0, {channels}) for mask_logits with {channels} "
                         f"channels, got values from {int(labels.min())} to {int(labels.max())}")

    rois = torch.arange(num, device=mask_logits.device)
    logits = mask_logits[rois, labels.to(mask_logits.device)]  # (P, C, M, M) -> (P, M, M)
    return F.binary_cross_entropy_with_logits(logits, targets.to(logits))


# ----------------------------------------------------------------------------- paste


def paste_masks(
    masks: Tensor,
    boxes: Tensor,
    image_size: tuple[int, int],
    threshold: float | None = 0.5,
    padding: int = 1,
) -> Tensor:
    """Paste ``M x M`` RoI masks into full images, the inverse of :func:`mask_targets`.

    For each detection, as torchvision's ``paste_masks_in_image``:

    1. pad the ``M x M`` mask with ``padding`` zero cells on every side and grow the box around
       its centre by the same factor ``(M + 2 * padding) / M``, so that the mask fades to 0 at
       the box border instead of being cut off by it;
    2. turn the grown box into whole pixels: its corners are truncated to integers (towards
       zero, like ``Tensor.to(torch.int64)``) and it covers columns ``x1 .. x2`` and rows
       ``y1 .. y2``, both ends included;
    3. resize the padded mask to that many pixels (bilinear, ``align_corners=False``);
    4. place it in an ``H x W`` image of zeros; the parts outside the image are cut off.

    Args:
        masks (Tensor[N, M, M] or Tensor[N, 1, M, M]): mask probabilities of each detection,
            in the coordinates of its box (the mask head's sigmoid output).
        boxes (Tensor[N, 4]): the detections' boxes in ``(x1, y1, x2, y2)`` image pixels.
        image_size: ``(H, W)`` of the image.
        threshold: ``None``: return the pasted probabilities. A float: return binary masks,
            1 where the probability is ``> threshold`` (0.5 is what torchvision's COCO
            evaluation and ``coco_format.masks_to_rle`` use).
        padding: cells of zeros added around each mask before resizing (torchvision: 1).

    Returns:
        Tensor[N, H, W]: probabilities in the dtype of ``masks`` (``threshold=None``) or
        uint8 0/1 masks, on the device of ``masks``.

    Raises:
        ValueError: if ``masks`` or ``boxes`` has the wrong shape, their lengths differ, or
            ``image_size`` or ``padding`` is invalid.
    """
    if masks.dim() == 4 and masks.shape[1] == 1:
        masks = masks[:, 0]  # (N, 1, M, M) -> (N, M, M)
    if masks.dim() != 3 or masks.shape[1] != masks.shape[2] or not masks.is_floating_point():
        raise ValueError(f"masks must be float probabilities of shape (N, M, M) or "
                         f"(N, 1, M, M), got {tuple(masks.shape)} {masks.dtype}")
    num, side = masks.shape[0], masks.shape[-1]
    if boxes.shape != (num, 4):
        raise ValueError(f"boxes must have shape ({num}, 4) like masks, got {tuple(boxes.shape)}")
    if len(image_size) != 2 or min(int(v) for v in image_size) < 0:
        raise ValueError(f"image_size must be (H, W) with H, W >= 0, got {image_size}")
    height, width = (int(v) for v in image_size)
    if not isinstance(padding, int) or padding < 0:
        raise ValueError(f"padding must be a non-negative int, got {padding!r}")

    # 1. pad the masks and grow the boxes by the same factor around their centres
    padded = F.pad(masks, (padding,) * 4)  # (N, M, M) -> (N, M + 2p, M + 2p)
    scale = (side + 2 * padding) / side
    centre = (boxes[:, :2] + boxes[:, 2:]) * 0.5  # (N, 2): (xc, yc)
    half = (boxes[:, 2:] - boxes[:, :2]) * 0.5 * scale  # (N, 2): half width, half height
    grown = torch.cat([centre - half, centre + half], dim=1)  # (N, 4)
    # 2. whole pixels: truncate towards zero; the box covers x1 .. x2 with both ends included
    corners = grown.to(torch.int64).tolist()

    pasted = masks.new_zeros((num, height, width))
    for i, (x1, y1, x2, y2) in enumerate(corners):
        box_w, box_h = max(x2 - x1 + 1, 1), max(y2 - y1 + 1, 1)
        # 3. resize the padded mask to the box: (M + 2p, M + 2p) -> (box_h, box_w)
        resized = F.interpolate(padded[i][None, None], size=(box_h, box_w), mode="bilinear",
                                align_corners=False)[0, 0]
        # 4. the part of the box inside the image, in image and in box coordinates (an
        # inverted box, x2 < x1, pastes nothing)
        left, right = max(x1, 0), min(x2 + 1, width)
        top, bottom = max(y1, 0), min(y2 + 1, height)
        if left < right and top < bottom:
            pasted[i, top:bottom, left:right] = resized[top - y1:bottom - y1,
                                                        left - x1:right - x1]
    if threshold is None:
        return pasted
    return (pasted > threshold).to(torch.uint8)
