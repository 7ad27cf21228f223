"""Semantic segmentation: U-Net, FCN-32s/16s/8s and the naive autoencoder; class imbalance.

Trains the segmenters of ``course_lib.recipes.segmentation`` from scratch in this run (no
checkpoint cache: the training time is measured here) on lesson 07's synthetic segmentation
scenes (64 px, 3 shape classes + background, the "clean" style: 1-7 whole shapes per scene on
a plain gradient) and scores them on the 200 held-out test scenes with a confusion matrix.
Every run is the one-minute recipe (``target_recipe``: 7 epochs of 2,400 scenes, at most
60 s). Prints the measured figures and PASS/FAIL for:

* ``unet``: U-Net mIoU (background included) >= 0.95 within 60 s of training (wall clock,
  2 CPU cores); the IoU of every class;
* ``natural`` (with ``--natural``): the same U-Net recipe on the natural scenes (occlusion,
  clutter, textured backgrounds), for comparison: printed, no target;
* ``fcn``: the autoencoder and FCN-32s/16s/8s with the same budget: FCN-16s and FCN-8s beat
  FCN-32s (the skips recover detail);
* ``imbalance``: one class made rare in the training scenes (only ``--rare-fraction`` of the
  training scenes that contain it are kept; the generator and the test split are unchanged),
  then the same U-Net trained with plain CE, weighted CE (``class_weights``), Dice and
  CE + Dice: the rare class's IoU improves with weighting or Dice.

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/bench_segmentation.py [--quick]
[--only unet|fcn|imbalance] [--natural] [--threads 2]``
"""

from __future__ import annotations

import argparse
import math

import torch

from course_lib.data.synthetic import SHAPES
from course_lib.recipes.segmentation import (
    IMBALANCE_LOSSES,
    LOSSES,
    RARE_CLASS,
    RARE_FRACTION,
    evaluate,
    imbalance_recipes,
    pixel_counts,
    target_recipe,
    tensors,
    train,
    with_recipe,
)

MIOU_TARGET, SECONDS_TARGET = 0.95, 60.0
RARE_MARGIN = 0.05  # a loss "helps" the rare class when its IoU beats plain CE by this much
NAMES = {"autoencoder": "autoencoder", "fcn32s": "FCN-32s", "fcn16s": "FCN-16s",
         "fcn8s": "FCN-8s", "unet": "U-Net"}


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def run(recipe, label: str, rows: list) -> dict:
    """Train and evaluate one recipe; append a table row; return the metrics."""
    model, history, seconds = train(recipe, device="cpu", progress=False)
    metrics = evaluate(model, recipe, device="cpu")
    metrics.update(train_seconds=seconds, steps=len(history.lr),
                   params=sum(p.numel() for p in model.parameters()))
    rows.append((label, metrics))
    stopped = ", stopped by the time budget" if history.stopped_early else ""
    print(f"  {label:24s} mIoU {metrics['mean_iou']:.3f}  train {seconds:5.1f} s "
          f"({metrics['steps']} steps{stopped})", flush=True)
    return metrics


def print_table(rows: list, rare: int | None = None) -> None:
    """One row per run: mIoU, pixel accuracy, mean Dice, per-class IoU, time, steps, params."""
    classes = rows[0][1]["classes"]
    head = (f"{'run':24s} {'mIoU':>6s} {'acc':>6s} {'mDice':>6s} "
            + " ".join(f"{('*' + c) if i == rare else c:>10s}" for i, c in enumerate(classes))
            + f" {'train s':>8s} {'steps':>6s} {'params':>8s}")
    print(head)
    print("-" * len(head))
    for label, m in rows:
        ious = " ".join(f"{'nan' if math.isnan(v) else f'{v:.3f}':>10s}" for v in m["iou"])
        print(f"{label:24s} {m['mean_iou']:6.3f} {m['pixel_accuracy']:6.3f} "
              f"{m['mean_dice']:6.3f} {ious} {m['train_seconds']:8.1f} {m['steps']:6d} "
              f"{m['params']:8d}")
    if rare is not None:
        print(f"(* the rare class: {classes[rare]})")


def bench_unet(quick: bool) -> tuple[bool, dict]:
    recipe = target_recipe("unet", quick)
    print(f"\n== U-Net: target mIoU >= {MIOU_TARGET} within {SECONDS_TARGET:g} s of training ==")
    print(f"   {recipe}")
    rows = []
    m = run(recipe, "U-Net", rows)
    print_table(rows)
    ok = m["mean_iou"] >= MIOU_TARGET and m["train_seconds"] <= SECONDS_TARGET
    print(f"U-Net mIoU {m['mean_iou']:.3f} in {m['train_seconds']:.1f} s of training: "
          f"{verdict(ok)}")
    return ok, m


def bench_natural(quick: bool) -> None:
    """The one-minute U-Net on the natural scenes (3-10 objects, occlusion, clutter)."""
    recipe = with_recipe(target_recipe("unet", quick), style="natural", min_objects=None,
                         max_objects=None)
    print("\n== U-Net, the same recipe on the natural scenes (no target) ==")
    print(f"   {recipe}")
    rows = []
    run(recipe, "U-Net, natural scenes", rows)
    print_table(rows)


def bench_fcn(quick: bool, unet: dict | None) -> bool:
    print("\n== FCN-32s / 16s / 8s and the autoencoder, same data and budget ==")
    rows = []
    results = {}
    for name in ("autoencoder", "fcn32s", "fcn16s", "fcn8s"):
        results[name] = run(target_recipe(name, quick), NAMES[name], rows)
    if unet is not None:
        rows.append(("U-Net (above)", unet))
    print_table(rows)
    ok16 = results["fcn16s"]["mean_iou"] > results["fcn32s"]["mean_iou"]
    ok8 = results["fcn8s"]["mean_iou"] > results["fcn32s"]["mean_iou"]
    print(f"FCN-16s > FCN-32s: {results['fcn16s']['mean_iou']:.3f} vs "
          f"{results['fcn32s']['mean_iou']:.3f}: {verdict(ok16)}")
    print(f"FCN-8s > FCN-32s: {results['fcn8s']['mean_iou']:.3f} vs "
          f"{results['fcn32s']['mean_iou']:.3f}: {verdict(ok8)}")
    return ok16 and ok8


def bench_imbalance(quick: bool, rare: int, fraction: float, losses: list[str]) -> bool:
    base = target_recipe("unet", quick)
    recipes = imbalance_recipes(quick, rare, fraction, losses)
    recipe = next(iter(recipes.values()))
    train_labels = tensors(recipe, "train").tensors[1]
    test_labels = tensors(recipe, "test").tensors[1]
    kept = len(train_labels)
    k = recipe.num_classes + 1
    share_train = pixel_counts(train_labels, k)[rare].item() / train_labels.numel()
    share_test = pixel_counts(test_labels, k)[rare].item() / test_labels.numel()
    print(f"\n== Class imbalance: {SHAPES[rare - 1]} (class {rare}) made rare ==")
    print(f"   kept {kept} of {base.num_train} training scenes ({fraction:.0%} of those with a "
          f"{SHAPES[rare - 1]}); {SHAPES[rare - 1]} pixels: {share_train:.2%} of the training "
          f"pixels, {share_test:.2%} of the test pixels; {recipe.epochs} epochs")
    rows = []
    results = {}
    for loss in losses:
        results[loss] = run(recipes[loss], f"U-Net, {loss}", rows)
    print_table(rows, rare=rare)
    plain = results["ce"]["iou"][rare] if "ce" in results else float("nan")
    better = [loss for loss in losses
              if loss != "ce" and results[loss]["iou"][rare] >= plain + RARE_MARGIN]
    ok = bool(better)
    print(f"rare-class IoU: plain CE {plain:.3f}; "
          + ", ".join(f"{loss} {results[loss]['iou'][rare]:.3f}" for loss in losses
                      if loss != "ce")
          + f": improved by at least {RARE_MARGIN} by {', '.join(better) or 'none'}: "
          f"{verdict(ok)}")
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="the CI budgets (~20 s per model)")
    parser.add_argument("--only", choices=("unet", "fcn", "imbalance"), help="one part only")
    parser.add_argument("--natural", action="store_true",
                        help="also the U-Net recipe on the natural scenes (one more minute)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--rare-class", type=int, default=RARE_CLASS,
                        help="class made rare (1 = circle)")
    parser.add_argument("--rare-fraction", type=float, default=RARE_FRACTION,
                        help="share of the training scenes with the rare class that are kept")
    parser.add_argument("--losses", nargs="+", choices=LOSSES, default=list(IMBALANCE_LOSSES),
                        help="losses of the imbalance experiment (ce first)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
          f"{', quick budgets' if args.quick else ''}")
    verdicts = {}
    unet = None
    if args.only in (None, "unet"):
        verdicts["U-Net mIoU within 60 s"], unet = bench_unet(args.quick)
        if args.natural:
            bench_natural(args.quick)
    if args.only in (None, "fcn"):
        verdicts["FCN-16s and FCN-8s beat FCN-32s"] = bench_fcn(args.quick, unet)
    if args.only in (None, "imbalance"):
        verdicts["rare class helped by weighting/Dice"] = bench_imbalance(
            args.quick, args.rare_class, args.rare_fraction, args.losses)
    print("\n== Summary ==")
    for name, ok in verdicts.items():
        print(f"{verdict(ok)}  {name}")


if __name__ == "__main__":
    main()
