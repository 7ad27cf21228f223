"""Recall and speed of selective search (``course_lib.proposals.selective_search``).

On ``--num-images`` synthetic detection scenes (default: 50 test scenes of 128x128), prints the
recall at IoU 0.5 (target: >= 0.90 within 2,000 proposals) and 0.7 within the first 100, 500,
1,000 and 2,000 proposals, the recall per COCO size group, proposals per image and time per
image. Recall is pooled: found ground-truth boxes / all ground-truth boxes.

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/bench_proposals.py [--num-images N]
[--scale 50 100 200] [--colour-spaces rgb hsv]``
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from course_lib.boxes import box_iou
from course_lib.data.synthetic import SyntheticShapes
from course_lib.proposals import selective_search

BUDGETS = (100, 500, 1000, 2000)
THRESHOLDS = (0.5, 0.7)
TARGET = 0.90  # recall at IoU 0.5 within 2,000 proposals


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-images", type=int, default=50)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--scale", type=float, nargs="+", default=[50, 100, 200])
    parser.add_argument("--colour-spaces", nargs="+", default=["rgb", "hsv"])
    args = parser.parse_args()

    dataset = SyntheticShapes("test", args.num_images, kind="detection",
                              image_size=args.image_size, cache=False)
    best_iou = []  # per GT box: (best IoU within each budget), shape (len(BUDGETS),)
    areas, counts, seconds = [], [], []
    for image, target in dataset:
        start = time.perf_counter()
        proposals = selective_search(image, scale=tuple(args.scale),
                                     colour_spaces=tuple(args.colour_spaces))
        seconds.append(time.perf_counter() - start)
        counts.append(len(proposals))
        gt = target["boxes"]
        if len(gt) == 0:
            continue
        iou = box_iou(gt, proposals) if len(proposals) else torch.zeros(len(gt), 0)  # (N, P)
        for n in range(len(gt)):
            best_iou.append([iou[n, :k].max().item() if iou[:, :k].numel() else 0.0
                             for k in BUDGETS])
        areas.append(target["area"].numpy())
    best_iou = np.array(best_iou)  # (num GT, len(BUDGETS))
    areas = np.concatenate(areas)

    print(f"selective search on {len(dataset)} synthetic detection scenes "
          f"({args.image_size} px, {len(best_iou)} objects); scale={tuple(args.scale)}, "
          f"colour spaces={tuple(args.colour_spaces)}")
    for threshold in THRESHOLDS:
        recalls = (best_iou >= threshold).mean(axis=0)  # (len(BUDGETS),)
        print(f"  recall @ IoU {threshold}: " + ", ".join(
            f"{k} proposals {r:.3f}" for k, r in zip(BUDGETS, recalls, strict=True)))
    groups = {"small": areas < 32**2, "medium": (areas >= 32**2) & (areas <= 96**2),
              "large": areas > 96**2}
    print("  recall @ IoU 0.5 within 2000 by size: " + ", ".join(
        f"{name} {(best_iou[mask, -1] >= 0.5).mean():.3f} ({mask.sum()})"
        for name, mask in groups.items() if mask.any()))
    print(f"  proposals per image: mean {np.mean(counts):.0f}, min {min(counts)}, "
          f"max {max(counts)}")
    print(f"  time per image: mean {np.mean(seconds) * 1000:.0f} ms, "
          f"max {np.max(seconds) * 1000:.0f} ms")
    recall = (best_iou[:, -1] >= 0.5).mean()
    verdict = "OK" if recall >= TARGET else "BELOW TARGET"
    print(f"  target: recall @ IoU 0.5 within 2000 >= {TARGET:.2f}: {recall:.3f} {verdict}")


if __name__ == "__main__":
    main()
