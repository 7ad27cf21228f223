"""Classification + localization: one CNN, two heads (the lecture's two-headed network).

The backbone turns an image into a feature vector; a *class head* maps it to C class scores
and a *box head* to 4 numbers, the object's box. This works when every image holds exactly one
object — the lesson's point is that a fixed number of outputs cannot handle a variable number
of objects, which is what detectors solve.

Boxes are regressed as ``(cx, cy, w, h)`` divided by the image size, in [0, 1] (a sigmoid on
the box head), which keeps the L2 loss on a scale independent of the image size.

Shape shorthand: B images, C classes, S image side (square images), F feature channels.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from course_lib.boxes import box_convert


def _block(in_channels: int, out_channels: int) -> nn.Sequential:
    """Two 3x3 conv + BN + ReLU, then 2x2 max-pooling: halves the resolution."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class ClsLocNet(nn.Module):
    """A small CNN with a class head and a box head.

    Args:
        num_classes: C, the number of object classes (no background: one object per image).
        image_size: S, the side of the square input images (a multiple of 16).
        width: channels of the first block; doubled in each of the 4 blocks (capped at 8x).
        hidden: size of the shared fully connected layer before the two heads.
        background: add a class for "no object here" (what a sliding-window detector needs):
            the class head then has C + 1 outputs, index 0 is background and the objects are
            1..C (the synthetic labels as they are). Default: C outputs, objects 0..C-1.
    """

    def __init__(self, num_classes: int, image_size: int = 64, width: int = 16,
                 hidden: int = 256, background: bool = False) -> None:
        super().__init__()
        if image_size % 16:
            raise ValueError(f"image_size must be a multiple of 16, got {image_size}")
        channels = [3, width, 2 * width, 4 * width, 8 * width]
        self.image_size = image_size
        self.num_classes = num_classes
        self.background = background
        self.backbone = nn.Sequential(*[_block(channels[i], channels[i + 1]) for i in range(4)])
        side = image_size // 16
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(channels[-1] * side * side, hidden),
                                nn.ReLU(inplace=True), nn.Dropout(0.1))
        self.class_head = nn.Linear(hidden, num_classes + int(background))
        self.box_head = nn.Linear(hidden, 4)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Class scores and a normalised box for each image.

        Args:
            images (Tensor[B, 3, S, S]): images in [0, 1].

        Returns:
            class_logits (Tensor[B, C], or Tensor[B, C + 1] with ``background``) and boxes
            (Tensor[B, 4]): ``(cx, cy, w, h) / S``.
        """
        if images.dim() != 4 or images.shape[1:] != (3, self.image_size, self.image_size):
            raise ValueError(f"images must have shape (B, 3, {self.image_size}, "
                             f"{self.image_size}), got {tuple(images.shape)}")
        features = self.backbone(images)   # (B, 3, S, S) -> (B, F, S/16, S/16)
        features = self.fc(features)       # -> (B, hidden)
        return self.class_head(features), torch.sigmoid(self.box_head(features))

    @torch.no_grad()
    def predict(self, images: Tensor) -> dict[str, Tensor]:
        """Labels, scores and pixel boxes for a batch (eval mode is the caller's choice).

        Returns:
            dict with ``labels`` (Tensor[B], 0..C-1; with ``background`` 0..C, 0 meaning
            background), ``scores`` (Tensor[B], softmax
            probability of that label) and ``boxes`` (Tensor[B, 4], xyxy pixels).
        """
        logits, boxes = self(images)
        scores, labels = logits.softmax(dim=1).max(dim=1)
        return {"labels": labels, "scores": scores,
                "boxes": normalized_to_boxes(boxes, self.image_size)}


def boxes_to_normalized(boxes: Tensor, image_size: int) -> Tensor:
    """``(x1, y1, x2, y2)`` pixels (Tensor[B, 4]) -> ``(cx, cy, w, h) / image_size``."""
    return box_convert(boxes, "xyxy", "cxcywh") / image_size


def normalized_to_boxes(normalized: Tensor, image_size: int) -> Tensor:
    """``(cx, cy, w, h) / image_size`` (Tensor[B, 4]) -> ``(x1, y1, x2, y2)`` pixels."""
    return box_convert(normalized * image_size, "cxcywh", "xyxy")
