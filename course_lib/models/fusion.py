"""A trained network in deployment form: BatchNorm folded into the convolutions, channels-last.

At test time a BatchNorm layer is a fixed affine map per channel: with the running mean
``mu``, variance ``var``, scale ``gamma``, shift ``beta`` and ``s = gamma / sqrt(var + eps)``,

    BN(conv(x)) = s * (W * x + b - mu) + beta = (s W) * x + (s (b - mu) + beta)

so the convolution's weights ``W'[o] = s[o] W[o]`` and bias ``b' = s (b - mu) + beta`` compute
both layers in one (Ioffe and Szegedy, 2015, section 3.1; every deployment tool does it). The
detectors of the course are all built from ``conv + BatchNorm + ReLU`` blocks; folding halves
their number of small operations, which is what a CPU at batch 1 pays for. The channels-last
memory layout then lets PyTorch use oneDNN's convolutions for more of the layers.

:func:`inference_copy` applies both to a copy, so the trained model stays as it is; the
benchmarks time every detector in this form, so they compare like with like.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def fold_batchnorm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new convolution computing ``bn(conv(x))`` with ``bn``'s running statistics.

    Args:
        conv: a ``Conv2d`` with ``C_out`` output channels (with or without bias).
        bn: a ``BatchNorm2d`` over ``C_out`` channels that tracks running statistics.

    Returns:
        nn.Conv2d: same geometry as ``conv``, always with a bias; weights Tensor[C_out, C_in /
        groups, kH, kW] scaled per output channel.

    Raises:
        ValueError: if the channel counts differ or ``bn`` has no running statistics.
    """
    if bn.num_features != conv.out_channels:
        raise ValueError(f"BatchNorm over {bn.num_features} channels cannot follow a "
                         f"convolution with {conv.out_channels} output channels")
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("BatchNorm without running statistics (track_running_stats=False) "
                         "normalises with the batch's: it cannot be folded")
    fused = copy.deepcopy(conv)
    with torch.no_grad():
        scale = torch.rsqrt(bn.running_var + bn.eps)  # (C_out,) 1 / sqrt(var + eps)
        if bn.weight is not None:
            scale = scale * bn.weight  # gamma / sqrt(var + eps)
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        shift = bn.bias if bn.bias is not None else torch.zeros_like(bn.running_mean)
        fused.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))  # W' = s W
        fused.bias = nn.Parameter((bias - bn.running_mean) * scale + shift)  # s (b - mu) + beta
    return fused


def fuse_conv_bn(model: nn.Module) -> nn.Module:
    """Fold every ``BatchNorm2d`` that directly follows a ``Conv2d`` in an ``nn.Sequential``.

    The folded BatchNorm is replaced by ``nn.Identity``, so the module names (and the printed
    structure) stay recognisable. Works in place on ``model``; use :func:`inference_copy` to
    keep the original.

    Returns:
        the same ``model``, in eval mode.
    """
    model.eval()
    for module in model.modules():
        if not isinstance(module, nn.Sequential):
            continue
        names = list(module._modules)
        for first, second in zip(names[:-1], names[1:], strict=True):
            conv, bn = module._modules[first], module._modules[second]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                module._modules[first] = fold_batchnorm(conv, bn)
                module._modules[second] = nn.Identity()
    return model


def inference_copy(model: nn.Module, channels_last: bool = True) -> nn.Module:
    """A copy of ``model`` for timing and deployment: eval mode, BatchNorm folded, channels-last.

    Its outputs equal the original's in eval mode up to float rounding (tested).
    """
    fused = fuse_conv_bn(copy.deepcopy(model))
    if channels_last:
        fused = fused.to(memory_format=torch.channels_last)
    return fused
