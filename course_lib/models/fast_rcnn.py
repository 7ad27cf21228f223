"""Fast R-CNN: the backbone runs once per image; every proposal is pooled from its feature map.

R-CNN runs a CNN on every warped proposal: thousands of forward passes per image. Fast R-CNN
(Girshick, 2015) swaps the order: one forward pass of the backbone over the whole image, then
each proposal is *projected* onto the feature map (divide its pixel coordinates by the
stride) and cut out as a fixed ``7 x 7`` grid by RoI Pool or RoI Align; a small head
classifies it and refines its box. The proposals still come from outside the network
(selective search), which is now the slow part (lesson 02 measures it).

Same second stage as Faster R-CNN (:mod:`course_lib.models.roi_heads`), same calling
convention as torchvision's detectors, plus the proposals::

    model.train(); losses = model(images, targets, proposals)   # dict of 2 losses
    model.eval();  detections = model(images, proposals=proposals)

Without ``proposals`` the model runs selective search on each image itself (slow: what a
deployed Fast R-CNN does, and what the lesson times).

Shape shorthand: B images of S x S pixels, F backbone channels, R_i proposals of image i.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from course_lib.models.backbone import TinyBackbone, stack_batch
from course_lib.models.faster_rcnn import ROI_OPS, pool_regions
from course_lib.models.roi_heads import BoxHead, second_stage
from course_lib.proposals import selective_search


def check_proposals(proposals, num_images: int) -> list[Tensor]:
    """Check that ``proposals`` holds one ``Tensor[R_i, 4]`` per image and return it as a list.

    Raises:
        ValueError: if the number of tensors is not ``num_images`` or a tensor is not (R, 4).
    """
    if isinstance(proposals, Tensor) or len(proposals) != num_images:
        count = "a single tensor" if isinstance(proposals, Tensor) else len(proposals)
        raise ValueError(f"proposals must be a list of one Tensor[R, 4] per image: "
                         f"{num_images} images, got {count}")
    for i, p in enumerate(proposals):
        if not isinstance(p, Tensor) or p.dim() != 2 or p.shape[1] != 4:
            shape = tuple(p.shape) if isinstance(p, Tensor) else type(p).__name__
            raise ValueError(f"proposals[{i}] must have shape (R, 4), got {shape}")
    return list(proposals)


def search_proposals(images: Tensor, max_proposals: int) -> list[Tensor]:
    """Selective search on every image of a batch (on the CPU, as numpy needs)."""
    return [selective_search(image.cpu(), max_proposals=max_proposals).to(images.device)
            for image in images]


class FastRCNN(nn.Module):
    """A small Fast R-CNN for square images of one size, on external proposals.

    Args:
        num_classes: C, object classes (labels 1..C; 0 is background).
        image_size: S, the side of the square input images.
        backbone: maps ``(B, 3, S, S)`` to ``(B, F, S/stride, S/stride)``; needs ``out_channels``
            and ``stride`` attributes (default :class:`TinyBackbone`).
        roi_op: ``"align"`` (RoI Align) or ``"pool"`` (RoI Pool, the original paper's).
        roi_size: side of the pooled grid.
        batch_size_per_image, positive_fraction: regions sampled per image for training.
        max_proposals: selective-search proposals per image when none are given.
        score_thresh, nms_thresh, detections_per_img: inference settings of
            :func:`~course_lib.models.roi_heads.postprocess_detections`.
        hidden: width of the box head's two fully connected layers.
    """

    def __init__(
        self,
        num_classes: int,
        image_size: int = 128,
        backbone: nn.Module | None = None,
        roi_op: str = "align",
        roi_size: int = 7,
        batch_size_per_image: int = 64,
        positive_fraction: float = 0.25,
        max_proposals: int = 2000,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_img: int = 100,
        hidden: int = 256,
    ) -> None:
        super().__init__()
        if roi_op not in ROI_OPS:
            raise ValueError(f"roi_op must be one of {ROI_OPS}, got {roi_op!r}")
        self.num_classes, self.image_size = num_classes, image_size
        self.backbone = backbone if backbone is not None else TinyBackbone()
        self.stride = self.backbone.stride
        self.roi_op, self.roi_size = roi_op, roi_size
        self.box_head = BoxHead(self.backbone.out_channels * roi_size * roi_size, num_classes,
                                hidden)
        self.batch_size_per_image, self.positive_fraction = batch_size_per_image, positive_fraction
        self.max_proposals = max_proposals
        self.score_thresh, self.nms_thresh = score_thresh, nms_thresh
        self.detections_per_img = detections_per_img

    def forward(self, images: Sequence[Tensor] | Tensor,
                targets: Sequence[dict[str, Tensor]] | None = None,
                proposals: Sequence[Tensor] | None = None):
        """Losses (training mode) or detections (eval mode).

        Args:
            images: B images ``Tensor[3, S, S]`` in [0, 1] (a list or a batch tensor).
            targets: B dicts with ``"boxes"`` (Tensor[G, 4]) and ``"labels"`` (Tensor[G]);
                needed in training mode.
            proposals: B tensors ``Tensor[R_i, 4]`` (image pixels); default: selective search.

        Returns:
            training: ``{"loss_classifier": ..., "loss_box_reg": ...}``.
            eval: a list of B dicts with ``"boxes"``, ``"scores"`` and ``"labels"``.
        """
        batch = stack_batch(images, targets, self.image_size, self.training)  # (B, 3, S, S)
        if proposals is None:
            proposals = search_proposals(batch, self.max_proposals)
        proposals = check_proposals(proposals, len(batch))
        features = self.backbone(batch)  # (B, 3, S, S) -> (B, F, S/stride, S/stride)

        def classify(regions):  # each region pooled from the shared feature map
            pooled = pool_regions(features, regions, self.roi_op, self.roi_size, self.stride)
            return self.box_head(pooled)  # (R, F, 7, 7) -> (R, C+1), (R, 4(C+1))

        return second_stage(
            classify, proposals, targets if self.training else None,
            (self.image_size, self.image_size), self.batch_size_per_image,
            self.positive_fraction, self.score_thresh, self.nms_thresh, self.detections_per_img)
