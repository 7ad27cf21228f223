"""A tiny convolutional backbone, trained from scratch: the feature extractor of every detector.

The lecture's detectors start from a large ImageNet network (VGG-16, ResNet-50). Nothing here is
pretrained, so the backbone is small enough to learn from synthetic scenes in minutes on a CPU:
a stem and a few stages of ``3x3 conv + BatchNorm + ReLU``, each stage halving the resolution.

Shape shorthand: B images, S image side, F = ``out_channels``, ``stride = 2 ** num_stages``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


def conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    """``3x3 conv (no bias) + BatchNorm + ReLU``; ``stride=2`` halves the resolution."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def stack_images(images: Sequence[Tensor] | Tensor, image_size: int) -> Tensor:
    """Stack a list of ``Tensor[3, S, S]`` (or check a ``Tensor[B, 3, S, S]``) into a batch.

    Raises:
        ValueError: if an image is not ``(3, S, S)`` for the model's ``S``.
    """
    if isinstance(images, Tensor) and images.dim() == 4:
        images = list(images)
    if not isinstance(images, Sequence) or len(images) == 0:
        raise ValueError("images must be a non-empty list of Tensor[3, S, S] (or a Tensor[B, 3, "
                         "S, S])")
    for i, image in enumerate(images):
        if not isinstance(image, Tensor) or tuple(image.shape) != (3, image_size, image_size):
            shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
            raise ValueError(f"image {i} must have shape (3, {image_size}, {image_size}) for "
                             f"this model, got {shape}")
    return torch.stack(list(images))  # B x (3, S, S) -> (B, 3, S, S)


def stack_batch(images: Sequence[Tensor] | Tensor, targets: Sequence[dict] | None,
                image_size: int, training: bool) -> Tensor:
    """:func:`stack_images` plus the checks every detector's ``forward`` makes on its targets.

    Raises:
        ValueError: in training mode without targets; with targets, unless there is one per
            image; or an image is not ``(3, S, S)``.
    """
    if training and targets is None:
        raise ValueError("targets are needed in training mode: model(images, targets)")
    batch = stack_images(images, image_size)  # (B, 3, S, S)
    if targets is not None and len(targets) != len(batch):
        raise ValueError(f"need one target per image: {len(batch)} images, "
                         f"{len(targets)} targets")
    return batch


class TinyBackbone(nn.Module):
    """A small CNN: ``num_stages`` stages, each a strided conv then a plain conv.

    It has the ``out_channels`` attribute torchvision's detection models look for, so the same
    backbone can be handed to ``torchvision.models.detection.FasterRCNN`` for a comparison.

    Args:
        out_channels: F, channels of the output feature map.
        width: channels of the first stage, doubled at every stage up to ``out_channels``.
        num_stages: how many times the resolution is halved: the stride is ``2 ** num_stages``.
    """

    def __init__(self, out_channels: int = 64, width: int = 16, num_stages: int = 3) -> None:
        super().__init__()
        if num_stages < 1:
            raise ValueError(f"num_stages must be >= 1, got {num_stages}")
        layers, channels = [], 3
        for stage in range(num_stages):
            wide = min(width * 2**stage, out_channels) if stage < num_stages - 1 else out_channels
            layers += [conv_bn_relu(channels, wide, stride=2), conv_bn_relu(wide, wide)]
            channels = wide
        self.body = nn.Sequential(*layers)
        self.out_channels = out_channels
        self.stride = 2**num_stages

    def forward(self, images: Tensor) -> Tensor:
        """The feature map of a batch of images.

        Args:
            images (Tensor[B, 3, S, S]): images in [0, 1].

        Returns:
            Tensor[B, F, S / stride, S / stride]: the feature map.
        """
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must have shape (B, 3, H, W), got {tuple(images.shape)}")
        return self.body(images)  # (B, 3, S, S) -> (B, F, S/stride, S/stride)
