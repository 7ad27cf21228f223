"""U-Net (Ronneberger et al., 2015): a contracting path, a symmetric expanding path, and skips.

The contracting path is a classifier's: at each level two ``3x3 conv + BatchNorm + ReLU``,
then ``2x2`` max pooling halves the resolution and the next level doubles the channels. The
expanding path mirrors it: a ``2x2`` transposed convolution doubles the resolution and halves
the channels, the feature map of the same level of the contracting path is *concatenated*
to it (the skip connection: fine detail that the bottleneck lost), and two convs merge them.
A ``1x1`` convolution gives the class scores. Compared with FCN, the decoder is as large as
the encoder ("expanding the capacity of the decoder", lecture 8).

Two changes from the paper, both usual today: the convolutions are padded (``padding=1``), so
the output has the input's size and no cropping of the skips is needed, and BatchNorm follows
each convolution.

Sizes that do not divide by ``2**depth``: the input is zero-padded at the bottom and right up
to the next multiple and the logits are cropped back to the top-left ``H x W``
(:func:`~course_lib.models.conv_autoencoder.pad_to_multiple`).

Shape shorthand: N images, H x W pixels (after padding), K = ``num_classes`` (background
included), w = ``width``, d = ``depth``.

==============================  ==================================================
stage                           output shape
==============================  ==================================================
contracting level i (0..d-1)    (N, w * 2**i, H / 2**i, W / 2**i): skip i
bottleneck (after d poolings)   (N, w * 2**d, H / 2**d, W / 2**d)
expanding level i (d-1..0)      up: (N, w * 2**i, H / 2**i, W / 2**i);
                                cat with skip i: (N, w * 2**(i+1), ...); convs: w * 2**i
classifier (1x1 conv)           (N, K, H, W), cropped to the input's size
==============================  ==================================================
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from course_lib.models.backbone import conv_bn_relu
from course_lib.models.conv_autoencoder import check_images, check_positive_int, pad_to_multiple


def double_conv(in_channels: int, out_channels: int) -> nn.Sequential:
    """Two ``3x3 conv + BatchNorm + ReLU`` at the same resolution: one U-Net level."""
    return nn.Sequential(conv_bn_relu(in_channels, out_channels),
                         conv_bn_relu(out_channels, out_channels))


class UpLevel(nn.Module):
    """One level of the expanding path: upsample, concatenate the skip, two convs.

    Args:
        in_channels (int): C_in, channels coming up from the level below.
        out_channels (int): C_out = C_in / 2, also the channels of the skip.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2)
        self.convs = double_conv(2 * out_channels, out_channels)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        """Merge the coarse map ``x`` (Tensor[N, C_in, h, w]) with ``skip``.

        Args:
            x (Tensor[N, C_in, h, w]): from the level below.
            skip (Tensor[N, C_out, 2h, 2w]): from the contracting path, same level.

        Returns:
            Tensor[N, C_out, 2h, 2w].
        """
        x = self.up(x)  # (N, C_in, h, w) -> (N, C_out, 2h, 2w)
        x = torch.cat([skip, x], dim=1)  # -> (N, 2 * C_out, 2h, 2w)
        return self.convs(x)  # -> (N, C_out, 2h, 2w)


class UNet(nn.Module):
    """U-Net with ``depth`` poolings and ``depth`` skip connections.

    Args:
        num_classes (int): K, output channels: the classes including background (class 0).
        in_channels (int): channels of the input images.
        depth (int): d, number of 2x poolings (and of skips); the stride is ``2**depth``.
        width (int): w, channels of the first level, doubled at each level below.

    Raises:
        ValueError: if an argument is not a positive integer (``num_classes`` >= 2).
    """

    def __init__(self, num_classes: int, in_channels: int = 3, depth: int = 4,
                 width: int = 16) -> None:
        super().__init__()
        check_positive_int(num_classes, "num_classes", 2)
        check_positive_int(in_channels, "in_channels")
        check_positive_int(depth, "depth")
        check_positive_int(width, "width")
        self.num_classes, self.in_channels, self.depth = num_classes, in_channels, depth
        self.stride = 2**depth
        channels = [width * 2**i for i in range(depth + 1)]  # w, 2w, ..., w * 2**d
        self.down = nn.ModuleList()
        previous = in_channels
        for ch in channels[:-1]:
            self.down.append(double_conv(previous, ch))
            previous = ch
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = double_conv(previous, channels[-1])
        self.up = nn.ModuleList(UpLevel(channels[i + 1], channels[i])
                                for i in reversed(range(depth)))  # deepest level first
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def encode(self, images: Tensor) -> tuple[Tensor, list[Tensor]]:
        """The contracting path.

        Args:
            images (Tensor[N, in_channels, H, W]): H and W multiples of ``2**depth``.

        Returns:
            tuple: the bottleneck Tensor[N, w * 2**d, H / 2**d, W / 2**d] and the ``depth``
            skips, finest first: skip i is Tensor[N, w * 2**i, H / 2**i, W / 2**i].
        """
        skips, x = [], images
        for level in self.down:
            x = level(x)  # (N, w * 2**i, H / 2**i, W / 2**i)
            skips.append(x)
            x = self.pool(x)  # halve H and W
        return self.bottleneck(x), skips

    def forward(self, images: Tensor) -> Tensor:
        """Per-pixel class scores.

        Args:
            images (Tensor[N, in_channels, H, W]): any H, W >= 1.

        Returns:
            Tensor[N, K, H, W]: logits (no softmax).
        """
        check_images(images, self.in_channels)
        h, w = images.shape[-2:]
        x, skips = self.encode(pad_to_multiple(images, self.stride))
        for level, skip in zip(self.up, reversed(skips), strict=True):  # coarsest skip first
            x = level(x, skip)  # doubles H and W, halves the channels
        return self.classifier(x)[..., :h, :w]  # (N, w, H', W') -> (N, K, H, W)
