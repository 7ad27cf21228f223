"""From an instance map to a torchvision-style target: one place for every dataset.

An *instance map* is an integer image, 0 for background and one value per object (the format
of Penn-Fudan's mask PNGs, and what the synthetic scenes paint). The target holds the same
object as binary masks, tight boxes, areas and a semantic map.

Shape shorthand: N objects, H x W the image size.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def instance_masks(instance_map: Tensor | np.ndarray) -> Tensor:
    """Split an instance map into one binary mask per object.

    Args:
        instance_map (Tensor[H, W]): integer ids, 0 for background; they need not be
            consecutive.

    Returns:
        Tensor[N, H, W] uint8, one mask per distinct non-zero id, in increasing id order.
    """
    instance_map = torch.as_tensor(instance_map)
    if instance_map.ndim != 2:
        raise ValueError("instance_map must be a Tensor[H, W], "
                         f"got shape {tuple(instance_map.shape)}")
    ids = torch.unique(instance_map)
    ids = ids[ids != 0]                                                 # (N,)
    return (instance_map[None] == ids[:, None, None]).to(torch.uint8)  # (N, H, W)


def masks_to_boxes(masks: Tensor) -> Tensor:
    """The tight box around each mask, with exclusive right and bottom edges.

    A mask covering columns 3..7 and rows 2..4 gets the box ``(3, 2, 8, 5)``: width 5, height 3,
    so that the box covers whole pixels. (``torchvision.ops.masks_to_boxes`` returns the last
    column and row instead: ``(3, 2, 7, 4)``.)

    Args:
        masks (Tensor[N, H, W]): binary masks, each with at least one pixel set.

    Returns:
        Tensor[N, 4] float32 boxes ``(x1, y1, x2, y2)``.
    """
    if masks.ndim != 3:
        raise ValueError(f"masks must be a Tensor[N, H, W], got shape {tuple(masks.shape)}")
    if masks.shape[0] == 0:
        return torch.zeros((0, 4), dtype=torch.float32)
    rows = masks.bool().any(dim=2)                         # (N, H): row has a pixel of the mask
    cols = masks.bool().any(dim=1)                         # (N, W)
    if not rows.any(dim=1).all():
        raise ValueError("masks must each have at least one pixel set; "
                         f"mask {int((~rows.any(dim=1)).nonzero()[0])} is empty")
    height, width = masks.shape[1:]
    y = torch.arange(height, device=masks.device)
    x = torch.arange(width, device=masks.device)
    # Smallest / largest index where the mask is present: fill absent positions with a sentinel.
    y1 = torch.where(rows, y, height).amin(dim=1)
    y2 = torch.where(rows, y, -1).amax(dim=1) + 1
    x1 = torch.where(cols, x, width).amin(dim=1)
    x2 = torch.where(cols, x, -1).amax(dim=1) + 1
    return torch.stack([x1, y1, x2, y2], dim=1).to(torch.float32)  # (N, 4)


def instances_to_target(instance_map: Tensor | np.ndarray, labels: Tensor | np.ndarray,
                        image_id: int = 0) -> dict:
    """The target dict of an instance map.

    Args:
        instance_map (Tensor[H, W]): 0 for background, one integer id per object.
        labels (Tensor[N]): the class of each object, in increasing id order (N = the number
            of distinct non-zero ids).
        image_id: stored as ``"image_id"``.

    Returns:
        dict: ``boxes`` (Tensor[N, 4] float32, tight, x2 = last column + 1), ``labels``
        (int64), ``masks`` (Tensor[N, H, W] uint8), ``area`` (float32, pixels), ``iscrowd``
        (int64 zeros), ``semantic`` (Tensor[H, W] int64: each pixel's label, 0 background),
        ``image_id``.

    Raises:
        ValueError: if the number of labels differs from the number of objects.
    """
    masks = instance_masks(instance_map)                                # (N, H, W)
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64).reshape(-1)
    n = masks.shape[0]
    if labels.shape[0] != n:
        raise ValueError(f"labels has {labels.shape[0]} entries but the instance map has {n} "
                         "objects (distinct non-zero ids)")
    semantic = (masks.to(torch.int64) * labels[:, None, None]).sum(dim=0)  # masks are disjoint
    return {
        "boxes": masks_to_boxes(masks),
        "labels": labels,
        "masks": masks,
        "area": masks.sum(dim=(1, 2)).to(torch.float32),
        "iscrowd": torch.zeros(n, dtype=torch.int64),
        "semantic": semantic,
        "image_id": int(image_id),
    }
