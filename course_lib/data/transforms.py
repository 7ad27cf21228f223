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


class RandomFlip:
    """Flip an image and its target left-right and/or upside down, each with probability ``p``.

    Data augmentation: a flipped scene is a new, equally valid scene, so a detector trained on
    flips sees more variety from the same images (SSD's paper credits augmentation with a large
    part of its accuracy). Boxes are mirrored (``x1' = W - x2``, ``x2' = W - x1``), masks and
    the semantic map flipped with the image. The coin flips use ``torch``'s global generator,
    so ``seed_everything`` makes them repeatable.

    Args:
        horizontal: probability of a left-right flip.
        vertical: probability of an upside-down flip.
    """

    def __init__(self, horizontal: float = 0.5, vertical: float = 0.5) -> None:
        for name, value in (("horizontal", horizontal), ("vertical", vertical)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {value}")
        self.horizontal, self.vertical = horizontal, vertical

    def __call__(self, image: Tensor, target: dict) -> tuple[Tensor, dict]:
        """Maybe flip ``image`` (Tensor[3, H, W]) and its target; returns new objects."""
        if image.dim() != 3:
            raise ValueError(f"image must have shape (3, H, W), got {tuple(image.shape)}")
        target = dict(target)
        height, width = image.shape[1:]
        for probability, axis, size, (lo, hi) in ((self.horizontal, -1, width, (0, 2)),
                                                  (self.vertical, -2, height, (1, 3))):
            if torch.rand(()) >= probability:
                continue
            image = image.flip(axis)
            if "boxes" in target:
                boxes = target["boxes"].clone()  # (N, 4)
                boxes[:, lo], boxes[:, hi] = size - target["boxes"][:, hi], size - target[
                    "boxes"][:, lo]
                target["boxes"] = boxes
            for key in ("masks", "semantic"):
                if key in target:
                    target[key] = target[key].flip(axis)
        return image, target

    def __repr__(self) -> str:
        return f"RandomFlip(horizontal={self.horizontal}, vertical={self.vertical})"
