"""Speed and content of the synthetic scenes (``course_lib.data.synthetic.make_scene``).

Times the generation of ``--num-images`` scenes (default: 2,000 detection scenes of 128x128
with masks; target: at most 30 s on 2 cores), then prints what the scenes hold: objects per
image, COCO size groups (by visible area: small < 32², medium, large > 96²), objects per
class, and how many objects are partly hidden or cut by the image border. Also prints the
size groups for the other kinds and for 64 and 256 px (fewer images, not timed as closely).

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/bench_synthetic.py [--num-images N]
[--kind K] [--image-size S]``
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

import numpy as np
import torch

from course_lib.data.synthetic import KINDS, SHAPES, make_scene


def describe(targets, image_size) -> str:
    """Objects per image, size groups, classes, and how many objects are occluded/cut."""
    counts = np.array([len(t["labels"]) for t in targets])
    area = torch.cat([t["area"] for t in targets]).numpy()
    labels = torch.cat([t["labels"] for t in targets]).numpy()
    groups = Counter(np.where(area < 32**2, "small", np.where(area > 96**2, "large", "medium")))
    classes = Counter(SHAPES[int(k) - 1] for k in labels)
    fill = [float(t["masks"].sum()) / image_size**2 for t in targets]
    lines = [
        f"  objects: {counts.sum()} in {len(targets)} images, per image mean {counts.mean():.2f}"
        f" min {counts.min()} max {counts.max()}, images with 0: {(counts == 0).sum()}",
        "  size groups (visible area): " + ", ".join(
            f"{g} {groups[g]} ({groups[g] / max(len(area), 1):.1%})"
            for g in ("small", "medium", "large")),
        f"  visible area: median {np.median(area):.0f} px, min {area.min():.0f},"
        f" max {area.max():.0f}; object pixels per image {np.mean(fill):.1%}",
        "  classes: " + ", ".join(f"{c} {classes[c]}" for c in SHAPES if c in classes),
    ]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-images", type=int, default=2000)
    parser.add_argument("--kind", default="detection", choices=KINDS)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--others", type=int, default=300,
                        help="images per other (kind, size) pair in the summary (0: skip)")
    args = parser.parse_args()

    torch.set_num_threads(1)  # the generator is numpy, single-threaded
    start = time.perf_counter()
    targets = [make_scene([0, 0, i], image_size=args.image_size, kind=args.kind)[1]
               for i in range(args.num_images)]
    seconds = time.perf_counter() - start
    print(f"{args.num_images} {args.kind} scenes of {args.image_size}x{args.image_size} with "
          f"masks: {seconds:.2f} s, {args.num_images / seconds:.0f} scenes/s, "
          f"{1000 * seconds / args.num_images:.2f} ms/scene (target: 2,000 in <= 30 s)")
    print(describe(targets, args.image_size))

    if args.others:
        for kind in KINDS:
            for size in (64, 128, 256):
                if (kind, size) == (args.kind, args.image_size):
                    continue
                start = time.perf_counter()
                targets = [make_scene([0, 0, i], image_size=size, kind=kind)[1]
                           for i in range(args.others)]
                ms = 1000 * (time.perf_counter() - start) / args.others
                print(f"\n{kind} {size}x{size}, {args.others} images ({ms:.1f} ms/scene):")
                print(describe(targets, size))


if __name__ == "__main__":
    main()
