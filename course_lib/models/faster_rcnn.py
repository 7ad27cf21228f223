"""Faster R-CNN: one backbone, a region proposal network and a second stage, trained jointly.

The lecture's last step of the R-CNN family: the proposals come from the network itself. The
backbone runs once per image; the RPN slides over its feature map and proposes regions; each
proposal is pooled from the same feature map (RoI Align or RoI Pool) and the box head
classifies it and refines its box. Four losses are trained together:

===================== ==================================================================
``loss_objectness``   RPN: is there an object in this anchor? (binary cross-entropy)
``loss_rpn_box_reg``  RPN: anchor -> GT box deltas (smooth L1, positive anchors)
``loss_classifier``   second stage: which of C + 1 classes? (cross-entropy)
``loss_box_reg``      second stage: proposal -> GT box deltas (smooth L1, foreground)
===================== ==================================================================

The calling convention is torchvision's ``FasterRCNN``: in training mode
``model(images, targets)`` returns the dict of losses, in eval mode ``model(images)``
returns one dict of ``boxes``, ``scores`` and ``labels`` per image. So
:func:`course_lib.train.fit` and :func:`course_lib.train.evaluate_detection` work with it,
and with torchvision's model too.

Differences from torchvision's model, to stay small: one feature-map level (no FPN), images
of one fixed size (no resizing transform), no image normalisation (BatchNorm handles it).

Shape shorthand: B images of S x S pixels, F backbone channels, H x W the feature map
(``S / stride``), K anchors per position, P proposals per image, C classes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchvision.ops import roi_align, roi_pool

from course_lib.models.backbone import TinyBackbone, stack_batch, stack_images
from course_lib.models.roi_heads import BoxHead, second_stage
from course_lib.models.rpn import RegionProposalNetwork

ROI_OPS = ("align", "pool")
__all__ = ["ROI_OPS", "FasterRCNN", "pool_regions", "stack_images"]


def pool_regions(features: Tensor, regions: Sequence[Tensor], op: str, output_size: int,
                 stride: int) -> Tensor:
    """Cut every region out of the feature map as a fixed-size grid (RoI Align or RoI Pool).

    Uses torchvision's compiled kernels: :mod:`course_lib.roi` holds the readable versions,
    tested equal to them, which are too slow to train with on a CPU (see
    ``benchmarks/bench_ops.py``).

    Args:
        features (Tensor[B, F, H, W]): the feature map.
        regions: B tensors ``Tensor[R_i, 4]``, image pixels.
        op: ``"align"`` (bilinear sampling, 2 x 2 points per bin) or ``"pool"`` (rounded bins,
            max).
        output_size: side of the grid (7 in the lecture).
        stride: image pixels per feature-map cell (``spatial_scale = 1 / stride``).

    Returns:
        Tensor[R, F, output_size, output_size], ``R = sum R_i``.
    """
    regions = [r.to(features.dtype) for r in regions]
    if op == "align":
        return roi_align(features, regions, output_size, 1 / stride, sampling_ratio=2)
    return roi_pool(features, regions, output_size, 1 / stride)


class FasterRCNN(nn.Module):
    """A small Faster R-CNN for square images of one size.

    Args:
        num_classes: C, object classes (background not counted; labels are 1..C).
        image_size: S, the side of the square input images.
        backbone: a module mapping ``(B, 3, S, S)`` to ``(B, F, S/stride, S/stride)`` with
            ``out_channels`` and ``stride`` attributes (default :class:`TinyBackbone`).
        anchor_sizes, aspect_ratios: the K anchors of each position (see
            :func:`~course_lib.anchors.generate_anchors`).
        rpn_pre_nms_top_n, rpn_post_nms_top_n: ``(training, testing)`` proposal counts of the
            RPN before and after its NMS.
        rpn_batch_size_per_image: anchors sampled per image for the RPN loss.
        roi_op: ``"align"`` or ``"pool"``.
        roi_size: side of the pooled grid.
        box_batch_size_per_image, box_positive_fraction: regions sampled per image for the
            second stage, and their largest foreground fraction.
        box_score_thresh, box_nms_thresh, box_detections_per_img: inference settings of
            :func:`~course_lib.models.roi_heads.postprocess_detections`.
        hidden: width of the box head's two fully connected layers.
    """

    def __init__(
        self,
        num_classes: int,
        image_size: int = 128,
        backbone: nn.Module | None = None,
        anchor_sizes: Sequence[float] = (16, 32, 64, 128),
        aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
        rpn_pre_nms_top_n: tuple[int, int] = (600, 300),
        rpn_post_nms_top_n: tuple[int, int] = (300, 100),
        rpn_batch_size_per_image: int = 256,
        roi_op: str = "align",
        roi_size: int = 7,
        box_batch_size_per_image: int = 64,
        box_positive_fraction: float = 0.25,
        box_score_thresh: float = 0.05,
        box_nms_thresh: float = 0.5,
        box_detections_per_img: int = 100,
        hidden: int = 256,
    ) -> None:
        super().__init__()
        if roi_op not in ROI_OPS:
            raise ValueError(f"roi_op must be one of {ROI_OPS}, got {roi_op!r}")
        self.num_classes, self.image_size = num_classes, image_size
        self.backbone = backbone if backbone is not None else TinyBackbone()
        self.stride = self.backbone.stride
        channels = self.backbone.out_channels
        self.rpn = RegionProposalNetwork(
            channels, (image_size, image_size), self.stride, anchor_sizes, aspect_ratios,
            batch_size_per_image=rpn_batch_size_per_image,
            pre_nms_top_n=rpn_pre_nms_top_n, post_nms_top_n=rpn_post_nms_top_n,
        )
        self.roi_op, self.roi_size = roi_op, roi_size
        self.box_head = BoxHead(channels * roi_size * roi_size, num_classes, hidden)
        self.box_batch_size_per_image = box_batch_size_per_image
        self.box_positive_fraction = box_positive_fraction
        self.box_score_thresh, self.box_nms_thresh = box_score_thresh, box_nms_thresh
        self.box_detections_per_img = box_detections_per_img

    def forward(self, images: Sequence[Tensor] | Tensor,
                targets: Sequence[dict[str, Tensor]] | None = None):
        """Losses (training mode) or detections (eval mode), as torchvision's ``FasterRCNN``.

        Args:
            images: B images ``Tensor[3, S, S]`` in [0, 1] (a list, or a ``Tensor[B, 3, S, S]``).
            targets: B dicts with ``"boxes"`` (Tensor[G, 4], xyxy pixels) and ``"labels"``
                (Tensor[G], 1..C); needed in training mode.

        Returns:
            training: ``dict[str, Tensor]`` of the four scalar losses (module docstring).
            eval: a list of B dicts with ``"boxes"`` (Tensor[D, 4]), ``"scores"`` (Tensor[D])
            and ``"labels"`` (Tensor[D] int64).
        """
        batch = stack_batch(images, targets, self.image_size, self.training)  # (B, 3, S, S)
        features = self.backbone(batch)  # (B, 3, S, S) -> (B, F, H, W)

        # first stage: P proposals per image (no gradient flows through their coordinates)
        proposals, rpn_losses = self.rpn(features, targets if self.training else None)

        # second stage: every region cut out of the shared feature map, then the box head
        out = second_stage(
            lambda regions: self._classify(features, regions), proposals,
            targets if self.training else None,
            (self.image_size, self.image_size), self.box_batch_size_per_image,
            self.box_positive_fraction, self.box_score_thresh, self.box_nms_thresh,
            self.box_detections_per_img)
        if not self.training:
            return out  # the detections
        return {"loss_objectness": rpn_losses["objectness"],
                "loss_rpn_box_reg": rpn_losses["box"], **out}

    def _classify(self, features: Tensor, regions: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """Class scores and box deltas of regions pooled from ``features`` (the box head)."""
        pooled = pool_regions(features, regions, self.roi_op, self.roi_size, self.stride)
        return self.box_head(pooled)  # (R, F, 7, 7) -> (R, C+1), (R, 4(C+1))

    @torch.no_grad()
    def proposals(self, images: Sequence[Tensor] | Tensor) -> list[Tensor]:
        """The RPN's test-time proposals of each image (``Tensor[P, 4]``, best first)."""
        was_training = self.training
        self.eval()
        try:
            features = self.backbone(stack_images(images, self.image_size))
            return self.rpn(features)[0]
        finally:
            self.train(was_training)
