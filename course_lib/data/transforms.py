"""Transforms of an ``(image, target)`` pair, torchvision-detection style.

A transform changes the image and every geometric part of its target together, so boxes,
masks and the semantic map keep describing the same objects.

Shape shorthand: N objects, H x W the input size, S the output side.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


class Resize:
    """Resize an image and its target to ``size`` x ``size`` pixels (aspect ratio not kept).

    Boxes are scaled; masks and the semantic map are resized by nearest neighbour (labels stay
    labels) and ``area`` is recounted from the resized masks.

    Args:
        size: S, the side of the output.
    """

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"size must be positive, got {size}")
        self.size = size

    def __call__(self, image: Tensor, target: dict) -> tuple[Tensor, dict]:
        """Resize ``image`` (Tensor[3, H, W]) and its target; returns new objects."""
        if image.dim() != 3:
            raise ValueError(f"image must have shape (3, H, W), got {tuple(image.shape)}")
        height, width = image.shape[1:]
        size = (self.size, self.size)
        image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False,
                              antialias=True)[0].clamp(0, 1)                  # (3, S, S)
        target = dict(target)
        if "boxes" in target:
            scale = torch.tensor([self.size / width, self.size / height] * 2)
            target["boxes"] = target["boxes"] * scale                         # (N, 4)
        if "masks" in target:
            masks = F.interpolate(target["masks"][None].float(), size=size, mode="nearest")[0]
            target["masks"] = masks.to(torch.uint8)                           # (N, S, S)
            target["area"] = masks.sum(dim=(1, 2))
        if "semantic" in target:
            semantic = F.interpolate(target["semantic"][None, None].float(), size=size,
                                     mode="nearest")[0, 0]
            target["semantic"] = semantic.to(torch.int64)                     # (S, S)
        return image, target

    def __repr__(self) -> str:
        return f"Resize({self.size})"
