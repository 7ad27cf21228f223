"""Lesson 08's Mask R-CNN: box and mask AP on held-out scenes, and ours against torchvision's.

Prints, for :mod:`course_lib.recipes.instance` (trained from scratch on synthetic 128 px
scenes with 3 classes whose objects overlap and hide each other; masks of the visible pixels):

* box mAP@0.5 and mask AP50, COCO AP and AP75 of both, AP by object size, training time and
  test time per image;
* targets: mask AP50 >= 0.80 and box mAP@0.5 >= 0.90 within 10 minutes of training on 2 CPU
  cores;
* with ``--torchvision``: torchvision's ``MaskRCNN`` built with the same tiny backbone,
  anchors, RoI Align sizes, heads and sampling, trained on the same data with the same
  optimiser and budget (~10 min); ours must not be worse by more than 0.03 mask AP50;
* with ``--pennfudan``: the same recipe trained on the Penn-Fudan pedestrians (1 class,
  resized to 128 px) when ``data_scripts/download_pennfudan.py`` has fetched them; a report,
  no threshold.

The model comes from the checkpoint cache (``make checkpoints``) unless ``--retrain``; its
training time is the one measured when it was trained.

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/bench_mask_rcnn.py [--torchvision]
[--pennfudan] [--retrain] [--quick] [--threads 2]``
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch
from bench_two_stage import torchvision_faster_rcnn
from torchvision.models.detection import MaskRCNN as TorchvisionMaskRCNN
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import MultiScaleRoIAlign

from course_lib.data.datasets import detection_data
from course_lib.recipes.detection import train
from course_lib.recipes.instance import (
    build_model_seeded,
    evaluate,
    load_or_train,
    recipe_for,
    summary,
)

MASK_TARGET, BOX_TARGET, MINUTES_TARGET, TORCHVISION_MARGIN = 0.80, 0.90, 10.0, 0.03


def torchvision_mask_rcnn(ours) -> TorchvisionMaskRCNN:
    """Torchvision's Mask R-CNN with every setting of our ``MaskRCNN`` ``ours``."""
    head = ours.mask_head
    width = head.logits.in_channels
    return torchvision_faster_rcnn(
        ours, TorchvisionMaskRCNN,
        mask_roi_pool=MultiScaleRoIAlign(["0"], ours.mask_roi_size, sampling_ratio=2),
        mask_head=MaskRCNNHeads(ours.backbone.out_channels, [width] * (len(head.convs) // 2), 1),
        mask_predictor=MaskRCNNPredictor(width, width, ours.num_classes + 1),
    )


def table(rows: dict[str, tuple[float, dict]]) -> None:
    """One line per model: training time, then box and mask AP50 / AP / AP75 / APs-m-l."""
    print(f"{'':14s} {'train':>6s} | {'box AP50':>8s} {'AP':>6s} {'AP75':>6s} | "
          f"{'mask AP50':>9s} {'AP':>6s} {'AP75':>6s} {'APs':>6s} {'APm':>6s} {'APl':>6s} | "
          f"{'test/img':>8s}")
    for name, (seconds, m) in rows.items():
        b, k = m["box"], m["mask"]
        print(f"{name:14s} {seconds:5.0f}s | {b['AP50']:8.3f} {b['AP']:6.3f} {b['AP75']:6.3f} | "
              f"{k['AP50']:9.3f} {k['AP']:6.3f} {k['AP75']:6.3f} {k['APs']:6.3f} "
              f"{k['APm']:6.3f} {k['APl']:6.3f} | {1000 * m['test_seconds']:6.1f}ms")


def pennfudan(recipe, minutes: float) -> tuple[float, dict] | None:
    """Train the recipe's Mask R-CNN on Penn-Fudan (train split) and test it (test split).

    Returns:
        ``(train seconds, metrics)``, or ``None`` when the data is not there.
    """
    try:
        train_data = detection_data("pennfudan", "train", image_size=recipe.image_size)
        test_data = detection_data("pennfudan", "test", image_size=recipe.image_size)
    except FileNotFoundError as error:
        print(f"\nPenn-Fudan skipped: {error}")
        return None
    # ~118 training photos: 60 epochs are ~900 steps of 8, about the 5 default minutes
    recipe = replace(recipe, num_classes=1, max_minutes=minutes, epochs=60)
    model, _history, seconds = train(recipe, device="cpu", progress=False,
                                     model=build_model_seeded(recipe), data=train_data)
    return seconds, evaluate(model, recipe, device="cpu", data=test_data)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--torchvision", action="store_true",
                        help="also train torchvision's MaskRCNN on the same budget (~10 min)")
    parser.add_argument("--pennfudan", action="store_true",
                        help="also train and test on Penn-Fudan when its data is present")
    parser.add_argument("--pennfudan-minutes", type=float, default=5.0,
                        help="training budget on Penn-Fudan (default 5)")
    parser.add_argument("--retrain", action="store_true", help="ignore the checkpoint cache")
    parser.add_argument("--quick", action="store_true", help="the CI budget")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (2 = the target)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model, info = load_or_train(quick=args.quick, device="cpu", progress=False,
                                retrain=args.retrain)
    recipe = recipe_for(args.quick)
    rows = {"course_lib": (info["train_seconds"], info["metrics"])}
    print(f"\nMask R-CNN, {recipe.image_size} px synthetic scenes, {recipe.num_classes} classes, "
          f"{recipe.num_train} training and {recipe.num_test} held-out scenes; {args.threads} "
          f"torch threads (CPU); masks {model.mask_size} x {model.mask_size}")
    if args.torchvision:
        start = time.perf_counter()
        theirs, _history, seconds = train(recipe, device="cpu", progress=False,
                                          model=build_torchvision(recipe))
        rows["torchvision"] = (seconds, evaluate(theirs, recipe, device="cpu"))
        print(f"(torchvision's run: {time.perf_counter() - start:.0f} s with its test)")
    table(rows)

    m = info["metrics"]
    ok = (m["mask"]["AP50"] >= MASK_TARGET and m["box"]["AP50"] >= BOX_TARGET
          and info["train_seconds"] <= 60 * MINUTES_TARGET + 5)
    print(f"\nMask R-CNN: {summary(m)} after {info['train_seconds'] / 60:.1f} min of training "
          f"(targets: mask AP50 >= {MASK_TARGET}, box mAP@0.5 >= {BOX_TARGET} within "
          f"{MINUTES_TARGET:g} min): {'PASS' if ok else 'FAIL'}")
    if args.torchvision:
        gap = rows["torchvision"][1]["mask"]["AP50"] - m["mask"]["AP50"]
        print(f"ours - torchvision = {-gap:+.3f} mask AP50 (ours may be worse by at most "
              f"{TORCHVISION_MARGIN}): {'PASS' if gap <= TORCHVISION_MARGIN else 'FAIL'}")
    if args.pennfudan:
        result = pennfudan(recipe, args.pennfudan_minutes)
        if result is not None:
            print("\nPenn-Fudan (1 class, person; resized to "
                  f"{recipe.image_size} px; report only):")
            table({"course_lib": result})


def build_torchvision(recipe):
    """Torchvision's twin of the recipe's model, built after seeding (repeatable weights)."""
    return torchvision_mask_rcnn(build_model_seeded(recipe))


if __name__ == "__main__":
    main()
