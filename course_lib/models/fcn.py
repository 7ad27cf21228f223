"""Fully convolutional networks (Long, Shelhamer and Darrell, 2015): FCN-32s, FCN-16s, FCN-8s.

A classification network becomes a segmentation network: its fully connected layers become
convolutions (``fc6``, ``fc7``), a ``1x1`` convolution scores every class at every position of
the coarse map (stride 32), and a transposed convolution upsamples the scores to the image.

* **FCN-32s** upsamples the stride-32 scores by 32 in one step: coarse, blobby masks.
* **FCN-16s** first upsamples them by 2 and *adds* scores computed from ``pool4`` (stride
  16, a ``1x1`` conv), then upsamples the sum by 16.
* **FCN-8s** does the same once more with ``pool3`` (stride 8), then upsamples by 8.

The three variants share every layer; they differ only in the skip layers (``score_pool4``,
``upscore2``, ``score_pool3``, ``upscore_pool4``) and in the factor of the last upsampling.
As in the paper, every transposed convolution starts as bilinear interpolation
(:func:`bilinear_kernel`) and is then learned, and the skip score layers start at zero, so
that FCN-16s and FCN-8s start from what FCN-32s predicts and learn the refinements.

The backbone is small and trained from scratch (no ImageNet VGG-16 here): 5 stages of a
stride-2 ``3x3 conv`` and a ``3x3 conv`` (each with BatchNorm and ReLU), the outputs of stages
3, 4 and 5 being the paper's ``pool3``, ``pool4`` and ``pool5``. Sizes that do not divide by 32
are zero-padded at the bottom and right and the logits cropped back
(:func:`~course_lib.models.conv_autoencoder.pad_to_multiple`).

Shape shorthand: N images, H x W pixels (after padding: multiples of 32), K = ``num_classes``
(background included), w = ``width``.

=============================  ======================================
stage                          output shape
=============================  ======================================
stage 1, 2                     (N, w, H/2, W/2), (N, 2w, H/4, W/4)
stage 3 = pool3                (N, 4w, H/8, W/8)
stage 4 = pool4                (N, 8w, H/16, W/16)
stage 5 = pool5                (N, 8w, H/32, W/32)
fc6, fc7                       (N, 16w, H/32, W/32)
score_fr (1x1)                 (N, K, H/32, W/32)
16s, 8s: upscore2 + pool4      (N, K, H/16, W/16)
8s: upscore_pool4 + pool3      (N, K, H/8, W/8)
upscore (x32, x16 or x8)       (N, K, H, W), cropped to the input's size
=============================  ======================================
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from course_lib.models.backbone import conv_bn_relu
from course_lib.models.conv_autoencoder import check_images, check_positive_int, pad_to_multiple

VARIANTS = ("32s", "16s", "8s")
FINAL_STRIDE = {"32s": 32, "16s": 16, "8s": 8}
"""The factor of the last upsampling of each variant."""


def bilinear_kernel(channels: int, kernel_size: int) -> Tensor:
    """Weights that make a transposed convolution upsample each channel bilinearly.

    The FCN paper's ``upsample_filt``: a ``kernel_size x kernel_size`` tent
    ``(1 - |i - c| / f) * (1 - |j - c| / f)`` with ``f = ceil(kernel_size / 2)`` and centre
    ``c = f - 1`` (odd size) or ``f - 0.5`` (even size), put on the diagonal so that channel k
    is upsampled on its own. With ``kernel_size = 2s``, ``stride = s`` and ``padding = s / 2``
    (s even) the transposed convolution equals ``F.interpolate(x, scale_factor=s,
    mode="bilinear", align_corners=False)`` away from the border (where ``interpolate``
    repeats the edge pixel and the convolution sees zeros).

    Args:
        channels (int): C, input and output channels.
        kernel_size (int): k.

    Returns:
        Tensor[C, C, k, k]: the weight of ``nn.ConvTranspose2d(C, C, k)`` (in, out, kH, kW);
        zero off the diagonal.

    Raises:
        ValueError: if ``channels`` or ``kernel_size`` is not a positive integer.
    """
    check_positive_int(channels, "channels")
    check_positive_int(kernel_size, "kernel_size")
    factor = (kernel_size + 1) // 2
    centre = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    taps = 1 - (torch.arange(kernel_size, dtype=torch.float32) - centre).abs() / factor  # (k,)
    tent = taps[:, None] * taps[None, :]  # (k, 1) * (1, k) -> (k, k)
    weight = torch.zeros(channels, channels, kernel_size, kernel_size)
    weight[range(channels), range(channels)] = tent  # channel c -> channel c only
    return weight


def bilinear_upsampler(channels: int, factor: int) -> nn.ConvTranspose2d:
    """A learnable ``x factor`` upsampling that starts as bilinear interpolation.

    ``kernel_size = 2 * factor``, ``stride = factor``, ``padding = factor / 2``: H x W in,
    exactly ``factor * H x factor * W`` out.
    """
    up = nn.ConvTranspose2d(channels, channels, 2 * factor, stride=factor,
                            padding=factor // 2, bias=False)
    with torch.no_grad():
        up.weight.copy_(bilinear_kernel(channels, 2 * factor))
    return up


def zero_score(in_channels: int, num_classes: int) -> nn.Conv2d:
    """A ``1x1`` score layer for a skip, starting at zero (the paper's initialisation)."""
    score = nn.Conv2d(in_channels, num_classes, 1)
    nn.init.zeros_(score.weight)
    nn.init.zeros_(score.bias)
    return score


class FCN(nn.Module):
    """FCN-32s, FCN-16s or FCN-8s on a small 5-stage backbone (stride 32).

    Args:
        num_classes (int): K, output channels: the classes including background (class 0).
        variant (str): ``"32s"``, ``"16s"`` or ``"8s"``.
        width (int): w, channels of the first stage (stages: w, 2w, 4w, 8w, 8w; fc: 16w).
        in_channels (int): channels of the input images.

    Raises:
        ValueError: for an unknown variant or a non-positive size.
    """

    def __init__(self, num_classes: int, variant: str = "8s", width: int = 16,
                 in_channels: int = 3) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        check_positive_int(num_classes, "num_classes", 2)
        check_positive_int(width, "width")
        check_positive_int(in_channels, "in_channels")
        self.num_classes, self.variant, self.in_channels = num_classes, variant, in_channels
        self.stride = 32
        channels = [width, 2 * width, 4 * width, 8 * width, 8 * width]
        stages, previous = [], in_channels
        for ch in channels:
            stages.append(nn.Sequential(conv_bn_relu(previous, ch, stride=2),
                                        conv_bn_relu(ch, ch)))
            previous = ch
        self.stages = nn.ModuleList(stages)  # outputs 3, 4, 5 are pool3, pool4, pool5
        self.fc = nn.Sequential(conv_bn_relu(previous, 16 * width),  # fc6 (7x7 in the paper)
                                nn.Conv2d(16 * width, 16 * width, 1),  # fc7
                                nn.ReLU(inplace=True))
        self.score_fr = nn.Conv2d(16 * width, num_classes, 1)
        # the skips (built after the shared layers, so a seed gives every variant the same
        # shared weights)
        if variant in ("16s", "8s"):
            self.upscore2 = bilinear_upsampler(num_classes, 2)
            self.score_pool4 = zero_score(channels[3], num_classes)
        if variant == "8s":
            self.upscore_pool4 = bilinear_upsampler(num_classes, 2)
            self.score_pool3 = zero_score(channels[2], num_classes)
        self.upscore = bilinear_upsampler(num_classes, FINAL_STRIDE[variant])

    def forward(self, images: Tensor) -> Tensor:
        """Per-pixel class scores.

        Args:
            images (Tensor[N, in_channels, H, W]): any H, W >= 1.

        Returns:
            Tensor[N, K, H, W]: logits (no softmax).
        """
        check_images(images, self.in_channels)
        h, w = images.shape[-2:]
        x = pad_to_multiple(images, self.stride)  # (N, 3, H', W')
        pools = []
        for stage in self.stages:
            x = stage(x)  # halves H and W
            pools.append(x)
        pool3, pool4 = pools[2], pools[3]  # (N, 4w, H'/8, W'/8), (N, 8w, H'/16, W'/16)
        score = self.score_fr(self.fc(x))  # (N, K, H'/32, W'/32)
        if self.variant in ("16s", "8s"):
            score = self.upscore2(score) + self.score_pool4(pool4)  # (N, K, H'/16, W'/16)
        if self.variant == "8s":
            score = self.upscore_pool4(score) + self.score_pool3(pool3)  # (N, K, H'/8, W'/8)
        return self.upscore(score)[..., :h, :w]  # (N, K, H', W') -> (N, K, H, W)
