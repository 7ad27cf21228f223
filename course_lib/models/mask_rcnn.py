"""Mask R-CNN: Faster R-CNN plus a small fully convolutional head that predicts a mask per RoI.

The lecture's instance segmentation model (He et al., 2017). Everything of
:class:`~course_lib.models.faster_rcnn.FasterRCNN` stays: the backbone, the RPN, RoI Align and
the box head. A third branch is added after RoI Align: for every region, :class:`MaskHead`
predicts an ``M x M`` mask *per class* in the region's own coordinates (M = 28 as in the
paper: a 14 x 14 RoI Align grid, four 3 x 3 convolutions, a 2x transposed convolution).
Five losses are trained together:

===================== ==================================================================
``loss_objectness``   RPN: is there an object in this anchor? (binary cross-entropy)
``loss_rpn_box_reg``  RPN: anchor -> GT box deltas (smooth L1, positive anchors)
``loss_classifier``   second stage: which of C + 1 classes? (cross-entropy)
``loss_box_reg``      second stage: proposal -> GT box deltas (smooth L1, foreground)
``loss_mask``         mask head: per-pixel binary cross-entropy on the GT class's channel,
                      foreground regions only (:func:`~course_lib.masks.mask_loss`)
===================== ==================================================================

The mask target of a foreground region is the mask of the object it was matched to, cut out
along the region's box and resized to ``M x M`` (:func:`~course_lib.masks.mask_targets`). At
test time the box branch runs first; the mask head then looks at each *detected* box, and the
``M x M`` probabilities of the predicted class are pasted back into the image
(:func:`~course_lib.masks.paste_masks`).

The calling convention is torchvision's ``MaskRCNN``: in training mode ``model(images,
targets)`` (the targets with ``"masks"``) returns the dict of the five losses; in eval mode
``model(images)`` returns per image ``boxes``, ``scores``, ``labels`` and ``masks``
(Tensor[D, 1, S, S] probabilities; threshold at 0.5 for binary masks), plus ``roi_masks``
(Tensor[D, M, M], the mask head's probabilities before pasting), which torchvision does not
return.

Differences from torchvision's model, as for Faster R-CNN: one feature-map level (no FPN),
images of one fixed size, no normalisation; the mask head is narrower (``mask_width``).

Shape shorthand: B images of S x S pixels, F backbone channels, R sampled regions, P
foreground regions, D detections, C classes, M side of the predicted masks.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchvision.ops import roi_align

from course_lib.masks import mask_loss, paste_masks
from course_lib.models.backbone import stack_batch
from course_lib.models.faster_rcnn import FasterRCNN, pool_regions
from course_lib.models.roi_heads import fast_rcnn_loss, sample_proposals, second_stage

__all__ = ["MaskHead", "MaskRCNN", "project_masks"]


class MaskHead(nn.Module):
    """A small FCN from RoI-Aligned features to one mask (logits) per class.

    ``num_convs`` times ``3x3 conv + ReLU`` at the RoI grid's resolution, a ``2x2`` transposed
    convolution with stride 2 (twice the resolution) + ReLU, and a ``1x1`` convolution to
    ``C + 1`` channels: torchvision's ``MaskRCNNHeads`` + ``MaskRCNNPredictor``, narrower.

    Args:
        in_channels: F, channels of the RoI-Aligned features.
        num_classes: C, object classes (one more channel for the background, as torchvision;
            it is never trained).
        width: channels of the convolutions (torchvision: 256).
        num_convs: 3 x 3 convolutions before upsampling (the paper: 4).
    """

    def __init__(self, in_channels: int, num_classes: int, width: int = 64,
                 num_convs: int = 4) -> None:
        super().__init__()
        layers, channels = [], in_channels
        for _ in range(num_convs):
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(inplace=True)]
            channels = width
        self.convs = nn.Sequential(*layers)
        self.upsample = nn.ConvTranspose2d(channels, width, 2, stride=2)
        self.logits = nn.Conv2d(width, num_classes + 1, 1)
        for layer in self.modules():  # torchvision's initialisation
            if isinstance(layer, nn.Conv2d | nn.ConvTranspose2d):
                nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(layer.bias)

    def forward(self, region_features: Tensor) -> Tensor:
        """Mask logits of every region, one channel per class.

        Args:
            region_features (Tensor[R, F, m, m]): RoI-Aligned features (m = 14 by default).

        Returns:
            Tensor[R, C + 1, 2m, 2m]: logits; the sigmoid of channel ``c`` is the probability
            that a pixel of the region belongs to the object, if the object is of class ``c``.
        """
        x = self.convs(region_features)  # (R, F, m, m) -> (R, width, m, m)
        x = torch.relu(self.upsample(x))  # (R, width, 2m, 2m)
        return self.logits(x)  # (R, C + 1, 2m, 2m)


def project_masks(gt_masks: Tensor, regions: Tensor, matched_idxs: Tensor, size: int) -> Tensor:
    """:func:`course_lib.masks.mask_targets` with torchvision's compiled RoI Align (fast).

    The same numbers (tested): each region's matched GT mask, cut along the region's box and
    resized to ``size x size`` by RoI Align (``sampling_ratio=-1``, ``aligned=False``).

    Args:
        gt_masks (Tensor[G, S, S]): instance masks of one image (0/1).
        regions (Tensor[P, 4]): foreground regions, image pixels.
        matched_idxs (Tensor[P]): the GT instance of each region.
        size: M.

    Returns:
        Tensor[P, M, M]: targets in [0, 1].
    """
    if regions.shape[0] == 0:
        return regions.new_zeros((0, size, size))
    rois = torch.cat([matched_idxs[:, None].to(regions), regions], dim=1)  # (P, 5)
    masks = gt_masks[:, None].to(regions)  # (G, 1, S, S): each mask is one "image"
    return roi_align(masks, rois, (size, size), 1.0)[:, 0]  # (P, 1, M, M) -> (P, M, M)


class MaskRCNN(FasterRCNN):
    """A small Mask R-CNN for square images of one size: :class:`FasterRCNN` + :class:`MaskHead`.

    Args:
        num_classes: C, object classes (labels 1..C).
        image_size: S, the side of the square input images.
        mask_roi_size: side of the RoI Align grid of the mask branch (14); the masks are
            twice as large (M = 28).
        mask_width: channels of the mask head.
        mask_convs: 3 x 3 convolutions of the mask head.
        **kwargs: every other argument of :class:`FasterRCNN` (backbone, anchors, sampling,
            inference settings).
    """

    def __init__(self, num_classes: int, image_size: int = 128, mask_roi_size: int = 14,
                 mask_width: int = 64, mask_convs: int = 4, **kwargs) -> None:
        super().__init__(num_classes, image_size, **kwargs)
        if mask_roi_size < 1:
            raise ValueError(f"mask_roi_size must be >= 1, got {mask_roi_size}")
        self.mask_roi_size = mask_roi_size
        self.mask_size = 2 * mask_roi_size
        self.mask_head = MaskHead(self.backbone.out_channels, num_classes, mask_width,
                                  mask_convs)

    def forward(self, images: Sequence[Tensor] | Tensor,
                targets: Sequence[dict[str, Tensor]] | None = None):
        """Losses (training mode) or detections with masks (eval mode), as torchvision's.

        Args:
            images: B images ``Tensor[3, S, S]`` in [0, 1] (a list, or a ``Tensor[B, 3, S, S]``).
            targets: B dicts with ``"boxes"`` (Tensor[G, 4]), ``"labels"`` (Tensor[G], 1..C)
                and ``"masks"`` (Tensor[G, S, S] 0/1); needed in training mode.

        Returns:
            training: ``dict[str, Tensor]`` of the five scalar losses (module docstring).
            eval: a list of B dicts with ``"boxes"`` (Tensor[D, 4]), ``"scores"`` (Tensor[D]),
            ``"labels"`` (Tensor[D] int64), ``"masks"`` (Tensor[D, 1, S, S] probabilities)
            and ``"roi_masks"`` (Tensor[D, M, M] probabilities).
        """
        batch = stack_batch(images, targets, self.image_size, self.training)  # (B, 3, S, S)
        if self.training:
            _check_masks(targets, self.image_size)
        features = self.backbone(batch)  # (B, 3, S, S) -> (B, F, H, W)
        proposals, rpn_losses = self.rpn(features, targets if self.training else None)
        if self.training:
            return {"loss_objectness": rpn_losses["objectness"],
                    "loss_rpn_box_reg": rpn_losses["box"],
                    **self._second_stage_losses(features, proposals, targets)}
        detections = second_stage(
            lambda regions: self._classify(features, regions), proposals, None,
            (self.image_size, self.image_size), score_thresh=self.box_score_thresh,
            nms_thresh=self.box_nms_thresh, detections_per_img=self.box_detections_per_img)
        return self._add_masks(features, detections)

    def _mask_logits(self, features: Tensor, regions: Sequence[Tensor]) -> Tensor:
        pooled = pool_regions(features, regions, "align", self.mask_roi_size, self.stride)
        return self.mask_head(pooled)  # (P, F, 14, 14) -> (P, C+1, 28, 28)

    def _second_stage_losses(self, features: Tensor, proposals: Sequence[Tensor],
                             targets: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
        """The box branch's two losses and the mask branch's, on one sample of regions."""
        regions, labels, deltas, matched = sample_proposals(
            proposals, targets, self.box_batch_size_per_image, self.box_positive_fraction,
            return_matched=True)
        class_logits, box_deltas = self._classify(features, regions)
        losses = fast_rcnn_loss(class_logits, box_deltas, torch.cat(labels), torch.cat(deltas))

        # the mask branch trains on the foreground regions of the same sample
        foreground = [image_labels > 0 for image_labels in labels]
        fg_regions = [r[fg] for r, fg in zip(regions, foreground, strict=True)]  # B x (P_i, 4)
        mask_logits = self._mask_logits(features, fg_regions)  # (P, C+1, M, M)
        mask_targets = torch.cat([
            project_masks(target["masks"], r, m[fg], self.mask_size)
            for target, r, m, fg in zip(targets, fg_regions, matched, foreground, strict=True)
        ])  # (P, M, M)
        fg_labels = torch.cat([lab[fg] for lab, fg in zip(labels, foreground, strict=True)])
        losses["loss_mask"] = mask_loss(mask_logits, fg_labels, mask_targets)
        return losses

    def _add_masks(self, features: Tensor, detections: list[dict[str, Tensor]]
                   ) -> list[dict[str, Tensor]]:
        """Run the mask head on the detected boxes and paste the predicted class's mask."""
        boxes = [d["boxes"] for d in detections]
        logits = self._mask_logits(features, boxes)  # (D, C+1, M, M), all images
        labels = torch.cat([d["labels"] for d in detections])  # (D,)
        probs = logits[torch.arange(len(labels), device=labels.device), labels].sigmoid()
        size = (self.image_size, self.image_size)
        for d, roi_masks in zip(detections, probs.split([len(b) for b in boxes]), strict=True):
            d["roi_masks"] = roi_masks  # (D_i, M, M)
            d["masks"] = paste_masks(roi_masks, d["boxes"], size, threshold=None)[:, None]
        return detections


def _check_masks(targets: Sequence[dict[str, Tensor]], image_size: int) -> None:
    """Every target needs ``"masks"`` of shape (G, S, S) with G its number of boxes."""
    for i, target in enumerate(targets):
        if "masks" not in target:
            raise ValueError(f"Mask R-CNN trains on instance masks: target {i} has no 'masks' "
                             f"(keys: {sorted(target)})")
        masks, num = target["masks"], len(target["boxes"])
        if masks.dim() != 3 or tuple(masks.shape) != (num, image_size, image_size):
            raise ValueError(f"target {i}: 'masks' must have shape ({num}, {image_size}, "
                             f"{image_size}) (one mask per box), got {tuple(masks.shape)}")
