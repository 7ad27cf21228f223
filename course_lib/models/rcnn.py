"""R-CNN: warp every proposal to a fixed size and run a CNN on each one.

The first of the family (Girshick et al., 2014): selective search proposes ~2,000 regions per
image; each region is cut out of the *image* and warped (stretched) to a fixed square; a CNN
turns each warp into features; a classifier says which class (or background) and a regressor
refines the box. Simple and accurate, but the CNN runs once per proposal, thousands of times
per image: the slowness Fast R-CNN removes (lesson 02 measures both).

Simplifications, as in most re-implementations: the classifier is the network's softmax
(the paper trains SVMs on frozen features, then separate box regressors), everything is
trained end to end from scratch, and the warp is a bilinear resampling of the box
(:func:`torchvision.ops.roi_align` on the image itself, ``aligned=True``).

Same second stage and calling convention as :class:`~course_lib.models.fast_rcnn.FastRCNN`.

Shape shorthand: B images of S x S pixels, R regions, W = ``crop_size``, D features per region.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchvision.ops import roi_align

from course_lib.models.backbone import TinyBackbone, stack_batch
from course_lib.models.fast_rcnn import check_proposals, search_proposals
from course_lib.models.roi_heads import BoxHead, second_stage


def warp_regions(images: Tensor, regions: Sequence[Tensor], crop_size: int) -> Tensor:
    """Cut each region out of its image and resample it to ``crop_size x crop_size`` pixels.

    Args:
        images (Tensor[B, 3, S, S]): the images.
        regions: B tensors ``Tensor[R_i, 4]`` in image pixels.
        crop_size: W, the side of the warped crops.

    Returns:
        Tensor[R, 3, W, W]: the warped regions, image after image (``R = sum R_i``).
    """
    regions = [r.to(images.dtype) for r in regions]
    return roi_align(images, regions, crop_size, spatial_scale=1.0, sampling_ratio=2,
                     aligned=True)  # (R, 3, W, W)


class RCNN(nn.Module):
    """A small R-CNN: a CNN on every warped proposal, then the box head.

    Args:
        num_classes: C, object classes (labels 1..C; 0 is background).
        image_size: S, the side of the square input images.
        crop_size: W, the side of the warped regions (a multiple of 8 for the default CNN).
        cnn: maps ``(R, 3, W, W)`` to ``(R, F, W/stride, W/stride)``, with ``out_channels`` and
            ``stride`` attributes (default :class:`TinyBackbone`).
        batch_size_per_image, positive_fraction: regions sampled per image for training.
        max_proposals: selective-search proposals per image when none are given.
        chunk_size: regions sent through the CNN at once at test time (bounds the memory).
        score_thresh, nms_thresh, detections_per_img: inference settings.
        hidden: width of the box head's two fully connected layers.
    """

    def __init__(
        self,
        num_classes: int,
        image_size: int = 128,
        crop_size: int = 32,
        cnn: nn.Module | None = None,
        batch_size_per_image: int = 64,
        positive_fraction: float = 0.25,
        max_proposals: int = 2000,
        chunk_size: int = 512,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_img: int = 100,
        hidden: int = 256,
    ) -> None:
        super().__init__()
        self.num_classes, self.image_size, self.crop_size = num_classes, image_size, crop_size
        self.cnn = cnn if cnn is not None else TinyBackbone()
        side = crop_size // self.cnn.stride
        if side < 1:
            raise ValueError(f"crop_size {crop_size} is smaller than the CNN's stride "
                             f"{self.cnn.stride}")
        self.box_head = BoxHead(self.cnn.out_channels * side * side, num_classes, hidden)
        self.batch_size_per_image, self.positive_fraction = batch_size_per_image, positive_fraction
        self.max_proposals, self.chunk_size = max_proposals, chunk_size
        self.score_thresh, self.nms_thresh = score_thresh, nms_thresh
        self.detections_per_img = detections_per_img

    def classify_regions(self, batch: Tensor, regions: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """Warp the regions, run the CNN on each warp and the box head on its features.

        Returns:
            tuple[Tensor[R, C + 1], Tensor[R, 4 * (C + 1)]]: class logits and box deltas.
        """
        crops = warp_regions(batch, regions, self.crop_size)  # (R, 3, W, W)
        logits, deltas = [], []
        for chunk in crops.split(self.chunk_size):  # one CNN pass per region, in chunks
            features = self.cnn(chunk)  # (r, 3, W, W) -> (r, F, W/stride, W/stride)
            chunk_logits, chunk_deltas = self.box_head(features)  # (r, C+1), (r, 4(C+1))
            logits.append(chunk_logits)
            deltas.append(chunk_deltas)
        num_scores = self.num_classes + 1
        if not logits:  # no region at all
            return crops.new_zeros(0, num_scores), crops.new_zeros(0, 4 * num_scores)
        return torch.cat(logits), torch.cat(deltas)

    def forward(self, images: Sequence[Tensor] | Tensor,
                targets: Sequence[dict[str, Tensor]] | None = None,
                proposals: Sequence[Tensor] | None = None):
        """Losses (training mode) or detections (eval mode), as :class:`FastRCNN`."""
        batch = stack_batch(images, targets, self.image_size, self.training)  # (B, 3, S, S)
        if proposals is None:
            proposals = search_proposals(batch, self.max_proposals)
        proposals = check_proposals(proposals, len(batch))

        return second_stage(
            lambda regions: self.classify_regions(batch, regions), proposals,
            targets if self.training else None, (self.image_size, self.image_size),
            self.batch_size_per_image, self.positive_fraction, self.score_thresh,
            self.nms_thresh, self.detections_per_img)
