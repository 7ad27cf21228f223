"""Speed of ``box_iou``, ``nms``, ``roi_align`` and ``roi_pool`` of course_lib against torchvision.

Data: realistic detector output before NMS: N boxes that are jittered copies (centre and size,
~10% of the box size) of boxes around 50 object centres in an 800x800 image, sizes 20-200 px,
random scores. Prints the median time of several runs for each function and size (ours and
torchvision timed in alternation), the ratio ours / torchvision of the medians and of the best
runs, and whether ``nms`` stays within 10x of torchvision at 1000 boxes. Also times ``nms_steps``,
the textbook one-kept-box-per-step loop, to show why ``nms`` settles boxes in blocks. Outputs are
checked to be identical first. Threads: torch's default unless ``--threads``.

The two-stage detectors' hot spots are timed too, on what one training step of
``course_lib.models.faster_rcnn.FasterRCNN`` meets: RoI Align and RoI Pool forward + backward
for 8 images x 64 regions on a 64-channel 16 x 16 feature map, and NMS over an RPN's 600
best-scoring proposals of one image (spread over the image, so many survive). These rows are why
the models call torchvision's compiled kernels (equal outputs, tested) while the readable
versions in ``course_lib`` are what the lessons teach.

On a machine whose cores are busy with other work, torch's multi-threaded kernels wait for their
threads and small ops become slow (torchvision's NMS kernel is single-threaded C++); compare with
``--threads 1`` there.

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/bench_ops.py [--repeat R] [--device cpu|cuda]
[--threads T]``
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial

import torch
import torchvision.ops as tvops

from course_lib.boxes import box_iou
from course_lib.nms import nms, nms_steps
from course_lib.roi import roi_align, roi_pool

SIZES = (1000, 5000)
IOU_THRESHOLD = 0.5
TARGET_RATIO = 10.0  # nms at 1000 boxes: at most 10x torchvision's time


def clustered_boxes(n: int, seed: int = 0, num_centres: int = 50) -> tuple[torch.Tensor, ...]:
    """``n`` xyxy boxes jittered around ``num_centres`` objects, and random scores."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(num_centres, 2, generator=g) * 800  # (C, 2)
    sizes = 20 + torch.rand(num_centres, 2, generator=g) * 180  # (C, 2)
    which = torch.randint(0, num_centres, (n,), generator=g)  # (n,)
    ctr = centres[which] + 0.1 * sizes[which] * torch.randn(n, 2, generator=g)  # (n, 2)
    wh = sizes[which] * (1 + 0.1 * torch.randn(n, 2, generator=g))  # (n, 2)
    boxes = torch.cat([ctr - wh / 2, ctr + wh / 2], dim=1)  # (n, 4)
    return boxes, torch.rand(n, generator=g)


def detector_rois(device: torch.device) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """A (8, 64, 16, 16) feature map (stride 8, 128 px images) and 64 regions per image."""
    g = torch.Generator().manual_seed(0)
    features = torch.randn(8, 64, 16, 16, generator=g).to(device)
    xy = torch.rand(8, 64, 2, generator=g) * 100
    wh = 8 + torch.rand(8, 64, 2, generator=g) * 60
    boxes = torch.cat([xy, (xy + wh).clamp(max=128)], dim=2).to(device)  # (8, 64, 4)
    return features, list(boxes)


def forward_backward(op, features: torch.Tensor, boxes, **kwargs):
    """``op(features, boxes, ...)`` then the backward pass of its sum."""
    x = features.detach().requires_grad_(True)
    op(x, boxes, **kwargs).sum().backward()
    return x.grad


def rpn_like_boxes(n: int = 600, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` boxes of 8..100 px anywhere in a 128 px image, and random scores."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 120
    wh = 8 + torch.rand(n, 2, generator=g) * 92
    return torch.cat([xy, (xy + wh).clamp(max=128)], dim=1), torch.rand(n, generator=g)


def time_pair(ours, ref, repeat: int, device: torch.device) -> tuple[float, ...]:
    """Time ``ours()`` and ``ref()`` in alternation (so both see the same machine load).

    Returns:
        (ours median, ref median, ours best, ref best) wall times in seconds, after a warm-up.
    """
    ours(), ref()
    times = {ours: [], ref: []}
    for _ in range(repeat):
        for fn in (ours, ref):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[fn].append(time.perf_counter() - start)
    return (statistics.median(times[ours]), statistics.median(times[ref]),
            min(times[ours]), min(times[ref]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads(THREADS) first (default: leave as it is)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"{args.repeat} runs each, IoU threshold {IOU_THRESHOLD}")

    rows = []
    for n in SIZES:
        boxes, scores = (t.to(device) for t in clustered_boxes(n))
        t = IOU_THRESHOLD
        kept = tvops.nms(boxes, scores, t)
        assert torch.equal(nms(boxes, scores, t), kept)
        assert torch.equal(box_iou(boxes, boxes), tvops.box_iou(boxes, boxes))
        # box_iou of 5000 x 5000 boxes takes long on a small CPU: fewer runs
        iou_repeat = args.repeat if n <= 1000 else max(3, args.repeat // 3)
        rows.append((f"box_iou {n}x{n}", *time_pair(
            partial(box_iou, boxes, boxes), partial(tvops.box_iou, boxes, boxes), iou_repeat,
            device)))
        rows.append((f"nms {n} ({len(kept)} kept)", *time_pair(
            partial(nms, boxes, scores, t), partial(tvops.nms, boxes, scores, t), args.repeat,
            device)))
        rows.append((f"nms_steps {n} (plain loop)", *time_pair(
            partial(nms_steps, boxes, scores, t), partial(tvops.nms, boxes, scores, t), 3,
            device)))

    features, rois = detector_rois(device)
    for name, ours_op, tv_op, kwargs in (
        ("roi_align fwd+bwd 8x64 RoIs", roi_align, tvops.roi_align,
         {"output_size": 7, "spatial_scale": 1 / 8, "sampling_ratio": 2}),
        ("roi_pool fwd+bwd 8x64 RoIs", roi_pool, tvops.roi_pool,
         {"output_size": 7, "spatial_scale": 1 / 8}),
    ):
        torch.testing.assert_close(forward_backward(ours_op, features, rois, **kwargs),
                                   forward_backward(tv_op, features, rois, **kwargs))
        rows.append((name, *time_pair(partial(forward_backward, ours_op, features, rois, **kwargs),
                                      partial(forward_backward, tv_op, features, rois, **kwargs),
                                      max(3, args.repeat // 3), device)))
    boxes, scores = (t.to(device) for t in rpn_like_boxes())
    kept = tvops.nms(boxes, scores, 0.7)
    assert torch.equal(nms(boxes, scores, 0.7), kept)
    rows.append((f"nms 600 RPN-like ({len(kept)} kept)", *time_pair(
        partial(nms, boxes, scores, 0.7), partial(tvops.nms, boxes, scores, 0.7), args.repeat,
        device)))

    print(f"{'':28} {'median ms: ours':>16} {'torchvision':>12} {'ours/tv':>8}"
          f" {'best: ours/tv':>14}")
    for name, ours, ref, ours_best, ref_best in rows:
        print(f"{name:28} {ours * 1e3:16.2f} {ref * 1e3:12.2f} {ours / ref:8.1f}"
              f" {ours_best / ref_best:14.1f}")
    ratio = next(row[1] / row[2] for row in rows if row[0].startswith("nms 1000"))
    verdict = "holds" if ratio <= TARGET_RATIO else "MISSED"
    print(f"target: nms within {TARGET_RATIO:.0f}x of torchvision at 1000 boxes (medians): "
          f"{verdict} ({ratio:.1f}x)")


if __name__ == "__main__":
    main()
