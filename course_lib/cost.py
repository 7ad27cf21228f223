"""What a detector costs: parameters, FLOPs, latency and throughput, measured here.

The numbers of the lecture's "understanding paper results" table. A paper's table gives, for
each detector, its accuracy next to its size (parameters), its arithmetic (FLOPs per image)
and its speed (milliseconds per image, or images per second, on the authors' GPU). This module
measures the last three for our own models, so that the table can be rebuilt here.

Only parameters and FLOPs are properties of the model; latency and throughput also depend on
the machine, the batch size, the library versions and whatever else runs at the same time.
Compare timings only when they were measured on the same device in the same session.

What :func:`count_flops` counts is what ``torch.utils.flop_counter.FlopCounterMode`` counts:

* matrix products (``mm``, ``addmm``, ``bmm``, ``baddbmm``, so also ``nn.Linear`` and
  ``torch.matmul``) as ``2 * m * n * k``: one multiply-add is 2 FLOPs;
* convolutions (``nn.Conv1d/2d/3d`` and the transposed ones) as
  ``2 * N * C_out * (C_in / groups) * prod(kernel) * prod(out_spatial)`` (for a transposed
  convolution, ``prod(in_spatial)`` instead of ``prod(out_spatial)``);
* attention (``scaled_dot_product_attention``) as its two matrix products.

It does not count, because no formula is registered for them (they add 0):

* the bias of a convolution or of a linear layer (``addmm`` counts the product only);
* element-wise operations: activations, BatchNorm in eval mode, additions, softmax, ...;
* pooling, and torchvision's compiled operators: RoI Align, RoI Pool, NMS;
* anything that is not a PyTorch operator (Python code, NumPy, selective search).

These are small next to the convolutions and the fully connected layers in our detectors, so
the count is the usual "multiply-adds times 2" of papers. Papers that report "FLOPs" sometimes
mean multiply-adds (half our number): check which before comparing.

Shape shorthand: N images, each ``Tensor[3, S, S]`` (or a ``Tensor[N, 3, S, S]`` batch).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from course_lib.device import get_device
from course_lib.train import to_device


# ============================================================================ size and arithmetic
def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (scalars) of a model; a parameter shared by two layers counts once.

    Args:
        model: any ``nn.Module``.
        trainable_only: count only the parameters with ``requires_grad=True`` (those an
            optimiser updates); frozen layers are left out.

    Returns:
        int: the number of scalars (divide by 1e6 for the "M params" of papers).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_flops(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> int:
    """Floating-point operations of one call ``fn(*args, **kwargs)``, counted by PyTorch.

    The call runs once, under ``torch.no_grad()``, inside
    ``torch.utils.flop_counter.FlopCounterMode``; the module docstring says what is counted
    (matrix products and convolutions, a multiply-add as 2 FLOPs) and what is not (biases,
    element-wise operations, RoI Align/Pool, NMS).

    Args:
        fn: any callable (a model, a layer, a function).
        *args: its positional arguments.
        **kwargs: its keyword arguments.

    Returns:
        int: the FLOPs of the call (for all the inputs together, not per item).
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        fn(*args, **kwargs)
    return counter.get_total_flops()


def gflops_per_image(model: nn.Module, images: Sequence[Tensor] | Tensor, *extra: Any) -> float:
    """GFLOPs per image of ``model(images, *extra)`` in eval mode (the test-time cost).

    Args:
        model: a detector called as ``model(images, *extra)``; it is put in eval mode for the
            call and given back in the mode it was in.
        images: N images, a list of ``Tensor[3, S, S]`` or a ``Tensor[N, 3, S, S]``.
        *extra: further arguments of the call, e.g. ``None, proposals`` for R-CNN and
            Fast R-CNN (``model(images, None, proposals)``).

    Returns:
        float: total FLOPs of the call / N / 1e9. For a two-stage detector the second stage
        costs in proportion to the number of regions it classifies, so the figure depends
        on the images (and on how many proposals survive the RPN's NMS).
    """
    num_images = _num_images(images)
    with _eval_mode(model):
        flops = count_flops(model, images, *extra)
    return flops / num_images / 1e9


# ============================================================================ time
def measure_latency(fn: Callable[..., Any], *args: Any, warmup: int = 5, repeats: int = 30,
                    device: str | torch.device | None = None) -> dict[str, float]:
    """Wall time of one call ``fn(*args)``, under ``torch.inference_mode()``.

    The call runs ``warmup`` times untimed (first calls pay for memory allocation, cuDNN's
    algorithm search, lazy initialisation), then ``repeats`` times, each timed on its own
    with ``time.perf_counter``. CUDA runs asynchronously: on a CUDA device the clock is read
    only after ``torch.cuda.synchronize()``, before and after each call, so that the time is
    that of the GPU work and not of queueing it. The median is the figure to report: it
    ignores the occasional slow call caused by something else running on the machine.

    Args:
        fn: the callable to time; pass keyword arguments with ``functools.partial`` or a lambda.
        *args: its positional arguments (used as they are: move them to the device first).
        warmup: untimed calls first (>= 0).
        repeats: timed calls (>= 1).
        device: the device to synchronise; ``None``: the device of the first tensor found in
            ``args`` (searched inside lists, tuples and dicts), else CUDA if this process has
            used CUDA, else the CPU.

    Returns:
        dict: ``median_ms``, ``mean_ms`` and ``min_ms`` (float, milliseconds per call) and
        ``repeats`` (int).

    Raises:
        ValueError: if ``warmup < 0`` or ``repeats < 1``.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    _check_count("warmup", warmup, minimum=0)
    _check_count("repeats", repeats, minimum=1)
    device = get_device(device) if device is not None else _device_of(args)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    times_ms = []
    with torch.inference_mode():
        for _ in range(warmup):
            fn(*args)
        for _ in range(repeats):
            sync()
            start = time.perf_counter()
            fn(*args)
            sync()
            times_ms.append((time.perf_counter() - start) * 1e3)
    return {"median_ms": statistics.median(times_ms), "mean_ms": statistics.fmean(times_ms),
            "min_ms": min(times_ms), "repeats": repeats}


def images_per_second(model: nn.Module, images: Sequence[Tensor] | Tensor, *extra: Any,
                      batch_size: int | None = None, warmup: int = 2, repeats: int = 10,
                      device: str | torch.device | None = None) -> float:
    """Throughput of a model in eval mode: images processed per second, at a given batch size.

    One "pass" calls ``model(batch, *extra_batch)`` on consecutive batches of ``batch_size``
    images until all N images are done (the last batch may be smaller). The pass is timed
    with :func:`measure_latency` (``warmup`` untimed passes, then ``repeats`` timed ones) and
    the throughput is ``N / median pass time``. Larger batches keep a GPU busier, so images/s
    usually grows with ``batch_size`` while the latency of one image does not improve.

    Args:
        model: a detector called as ``model(images, *extra)``; put in eval mode for the
            measurement and given back in the mode it was in. Not moved: put the model and the
            inputs on the device first.
        images: N images, a list of ``Tensor[3, S, S]`` or a ``Tensor[N, 3, S, S]``.
        *extra: further arguments of the call. One that holds one item per image (a list,
            tuple or tensor of length N, e.g. the proposals) is cut into batches with the
            images; any other value (e.g. ``None``) is passed to every call as it is.
        batch_size: images per call (>= 1); ``None``: all N in one call.
        warmup: untimed passes first (>= 0).
        repeats: timed passes (>= 1).
        device: the device to synchronise, as in :func:`measure_latency`.

    Returns:
        float: images per second.
    """
    num_images = _num_images(images)
    batch_size = num_images if batch_size is None else batch_size
    _check_count("batch_size", batch_size, minimum=1)
    batches = [_take(images, extra, start, start + batch_size)
               for start in range(0, num_images, batch_size)]
    if device is None:
        device = _device_of((images, extra))

    def one_pass():
        for batch_images, batch_extra in batches:
            model(batch_images, *batch_extra)

    with _eval_mode(model):
        timing = measure_latency(one_pass, warmup=warmup, repeats=repeats, device=device)
    return num_images / (timing["median_ms"] / 1e3)


# ============================================================================ one row of the table
@dataclass
class DetectorCost:
    """One row of a cost table; :func:`detector_cost` fills it.

    Attributes:
        params_m: parameters, in millions.
        gflops_per_image: GFLOPs per image (multiply-add = 2 FLOPs), test time.
        latency_ms: median milliseconds of one call on one image (batch of 1).
        images_per_second: throughput on all the given images in one batch.
        device: where the times were measured (``"cpu"``, ``"cuda:0"``, ...).
    """

    params_m: float
    gflops_per_image: float
    latency_ms: float
    images_per_second: float
    device: str


def detector_cost(model: nn.Module, images: Sequence[Tensor] | Tensor, extra: Sequence[Any] = (),
                  warmup: int = 5, repeats: int = 30,
                  device: str | torch.device | None = None) -> DetectorCost:
    """Measure a detector's row of the cost table.

    Example (several detectors, one table)::

        rows = {"Fast R-CNN": detector_cost(fast, images, extra=(None, proposals)),
                "Faster R-CNN": detector_cost(faster, images)}
        for name, row in rows.items():
            print(f"{name:14s} {row.params_m:6.2f} M {row.gflops_per_image:7.2f} GFLOPs "
                  f"{row.latency_ms:7.1f} ms {row.images_per_second:7.1f} img/s")

    Args:
        model: a detector called as ``model(images, *extra)``; measured in eval mode and given
            back in the mode it was in.
        images: N images, a list of ``Tensor[3, S, S]`` or a ``Tensor[N, 3, S, S]``: FLOPs are
            averaged over them, the latency uses the first one, the throughput all N at once.
        extra: further arguments of the call, e.g. ``(None, proposals)`` for R-CNN and
            Fast R-CNN; per-image ones are cut as in :func:`images_per_second`.
        warmup: untimed calls before the latency is measured (>= 0); the throughput uses a
            third of it (at least 1), as one of its passes is N images.
        repeats: timed calls of the latency (>= 1); the throughput uses a third (at least 1).
        device: ``None``: measure where the model and inputs are; otherwise (``"auto"``,
            ``"cpu"``, ``"cuda"``) move the model (in place) and the inputs there first.

    Returns:
        DetectorCost: parameters (M), GFLOPs/image, latency (ms, batch 1), images/s, device.
    """
    extra = tuple(extra)
    if device is not None:
        device = get_device(device)
        model.to(device)
        images, extra = to_device(images, device), to_device(extra, device)
    else:
        device = _device_of((images, extra))
    one_image, one_extra = _take(images, extra, 0, 1)
    with _eval_mode(model):
        latency = measure_latency(model, one_image, *one_extra, warmup=warmup, repeats=repeats,
                                  device=device)
    throughput = images_per_second(model, images, *extra, warmup=max(1, warmup // 3),
                                   repeats=max(1, repeats // 3), device=device)
    return DetectorCost(
        params_m=count_parameters(model) / 1e6,
        gflops_per_image=gflops_per_image(model, images, *extra),
        latency_ms=latency["median_ms"],
        images_per_second=throughput,
        device=str(device),
    )


# ============================================================================ helpers
@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put a model in eval mode inside a ``with`` block, then back in the mode it was in."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    was_training = model.training
    try:
        yield model.eval()
    finally:
        model.train(was_training)


def _check_count(name: str, value: Any, minimum: int) -> None:
    """Raise ``ValueError`` unless ``value`` is an int (not a bool) ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def _num_images(images: Sequence[Tensor] | Tensor) -> int:
    """N, the number of images of a list of ``Tensor[3, S, S]`` or a ``Tensor[N, 3, S, S]``."""
    if isinstance(images, Tensor):
        if images.dim() != 4:
            raise ValueError(f"images as a tensor must be (N, 3, S, S), got shape "
                             f"{tuple(images.shape)}")
    elif not isinstance(images, list | tuple) or not all(isinstance(i, Tensor) for i in images):
        raise ValueError(f"images must be a list of Tensor[3, S, S] or a Tensor[N, 3, S, S], "
                         f"got {type(images).__name__}")
    if len(images) == 0:
        raise ValueError("images must hold at least one image, got 0")
    return len(images)


def _take(images: Sequence[Tensor] | Tensor, extra: Sequence[Any], start: int,
          stop: int) -> tuple[Sequence[Tensor] | Tensor, tuple[Any, ...]]:
    """Images ``start:stop``, and the same slice of every per-image extra argument."""
    num_images = _num_images(images)

    def cut(value):
        is_per_image = isinstance(value, list | tuple | Tensor) and len(value) == num_images
        return value[start:stop] if is_per_image else value

    return images[start:stop], tuple(cut(value) for value in extra)


def _device_of(obj: Any) -> torch.device:
    """The device of the first tensor inside ``obj``; CUDA if CUDA was used, else the CPU."""
    stack = [obj]
    while stack:
        item = stack.pop(0)
        if isinstance(item, Tensor):
            return item.device
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return torch.device("cuda" if torch.cuda.is_initialized() else "cpu")


__all__ = ["DetectorCost", "count_flops", "count_parameters", "detector_cost",
           "gflops_per_image", "images_per_second", "measure_latency"]
