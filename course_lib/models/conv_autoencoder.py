"""The naive convolutional encoder/decoder for semantic segmentation (lecture 8).

The encoder halves the resolution ``depth`` times with strided ``3x3`` convolutions; the
decoder doubles it back ``depth`` times with transposed convolutions; a ``1x1`` convolution
turns the last feature map into one score per class and pixel. Nothing connects the encoder
to the decoder but the small bottleneck map, so every detail the decoder draws has to pass
through ``H / 2**depth x W / 2**depth`` pixels: the predicted masks come out blurry, with
rounded corners. FCN (:mod:`course_lib.models.fcn`) and U-Net (:mod:`course_lib.models.unet`)
fix this with skip connections.

Shape shorthand: N images, H x W pixels, K = ``num_classes`` (background included),
w = ``width``, d = ``depth``.

================================  ==========================================
stage                             output shape
================================  ==========================================
input (padded, see below)         (N, 3, H', W'), H' and W' multiples of 2**d
encoder stage i (i = 1..d)        (N, w * 2**(i-1), H' / 2**i, W' / 2**i)
decoder stage i (i = d..1)        (N, w * 2**(i-1), H' / 2**(i-1), W' / 2**(i-1))
classifier (1x1 conv), cropped    (N, K, H, W)
================================  ==========================================
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from course_lib.models.backbone import conv_bn_relu


def pad_to_multiple(images: Tensor, multiple: int) -> Tensor:
    """Zero-pad the bottom and right of a batch so that H and W are multiples of ``multiple``.

    The rule every segmentation model of the course follows for sizes that do not divide:
    pad the bottom and right with zeros, run the network, crop the logits back to the
    top-left ``H x W`` (``logits[..., :H, :W]``), so pixel (y, x) of the output is pixel (y, x)
    of the input.

    Args:
        images (Tensor[N, C, H, W]): the batch.
        multiple (int): the network's total stride.

    Returns:
        Tensor[N, C, ceil(H / multiple) * multiple, ceil(W / multiple) * multiple].
    """
    h, w = images.shape[-2:]
    pad_h, pad_w = -h % multiple, -w % multiple
    if pad_h == 0 and pad_w == 0:
        return images
    return F.pad(images, (0, pad_w, 0, pad_h))  # (left, right, top, bottom)


def check_images(images: Tensor, in_channels: int) -> None:
    """Raise ``ValueError`` unless ``images`` is a ``Tensor[N, in_channels, H, W]``."""
    if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != in_channels:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must have shape (N, {in_channels}, H, W), got {shape}")


def check_positive_int(value, name: str, minimum: int = 1) -> None:
    """Raise ``ValueError`` unless ``value`` is an int >= ``minimum`` (bool is not an int here)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def up_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    """``4x4`` transposed conv with stride 2 (doubles H and W) + BatchNorm + ReLU."""
    return nn.Sequential(
        nn.ConvTranspose2d(in_channels, out_channels, 4, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class ConvAutoencoder(nn.Module):
    """Encoder (strided convs) + decoder (transposed convs), no skip connections.

    Args:
        num_classes (int): K, output channels: the classes including background (class 0),
            like torchvision's segmentation models.
        width (int): channels of the first encoder stage, doubled at each stage.
        depth (int): how many times the resolution is halved (and doubled back).
        in_channels (int): channels of the input images.

    Raises:
        ValueError: if an argument is not a positive integer (``num_classes`` >= 2).
    """

    def __init__(self, num_classes: int, width: int = 16, depth: int = 3,
                 in_channels: int = 3) -> None:
        super().__init__()
        check_positive_int(num_classes, "num_classes", 2)
        check_positive_int(width, "width")
        check_positive_int(depth, "depth")
        check_positive_int(in_channels, "in_channels")
        self.num_classes, self.depth, self.in_channels = num_classes, depth, in_channels
        self.stride = 2**depth
        channels = [width * 2**i for i in range(depth)]  # w, 2w, 4w, ...
        encoder, previous = [], in_channels
        for ch in channels:  # each stage: halve H and W, then one more conv
            encoder.append(nn.Sequential(conv_bn_relu(previous, ch, stride=2),
                                         conv_bn_relu(ch, ch)))
            previous = ch
        self.encoder = nn.Sequential(*encoder)
        decoder = []
        for ch in reversed(channels):  # each stage: double H and W, then one more conv
            decoder.append(nn.Sequential(up_bn_relu(previous, ch), conv_bn_relu(ch, ch)))
            previous = ch
        self.decoder = nn.Sequential(*decoder)
        self.classifier = nn.Conv2d(previous, num_classes, 1)

    def forward(self, images: Tensor) -> Tensor:
        """Per-pixel class scores.

        Args:
            images (Tensor[N, in_channels, H, W]): any H, W >= 1 (padded to multiples of
                ``2**depth`` inside, see :func:`pad_to_multiple`).

        Returns:
            Tensor[N, K, H, W]: logits (no softmax).
        """
        check_images(images, self.in_channels)
        h, w = images.shape[-2:]
        x = pad_to_multiple(images, self.stride)  # (N, 3, H', W')
        code = self.encoder(x)  # (N, w * 2**(d-1), H' / 2**d, W' / 2**d): the bottleneck
        x = self.decoder(code)  # (N, w, H', W')
        return self.classifier(x)[..., :h, :w]  # (N, K, H', W') -> (N, K, H, W)
