"""Train, time and evaluate lesson 08's Mask R-CNN, with the shared checkpoint cache.

The data are the detection scenes of lessons 02-04 (128 px, 3 classes, 1-6 objects that overlap
and hide each other): their targets carry each object's mask of *visible* pixels, so an
occluded object's mask has the shape of what is seen of it, not of the whole shape. The model is
:class:`~course_lib.models.mask_rcnn.MaskRCNN` on the same
:class:`~course_lib.models.backbone.TinyBackbone` as the detectors, trained with the same
engine, optimiser and schedule (:func:`course_lib.recipes.detection.train`). The test metrics
are COCO's, twice: on boxes (``iou_type="bbox"``) and on masks (``iou_type="segm"``).

Budgets: :data:`FULL` is what lesson 08 and ``benchmarks/bench_mask_rcnn.py`` report (at most
10 minutes on 2 CPU cores); :data:`QUICK` (``COURSE_QUICK=1``, set by ``make test``) is CI's.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch
from torch.utils.data import Dataset

from course_lib.device import get_device
from course_lib.metrics import coco_evaluate
from course_lib.models.backbone import TinyBackbone
from course_lib.models.mask_rcnn import MaskRCNN
from course_lib.recipes import cache
from course_lib.recipes.detection import Recipe, quick_mode, scenes, train
from course_lib.train import to_device

CACHE_VERSION = 1
"""Bump when a change to the model or recipe makes old checkpoints wrong."""

FULL = Recipe("mask_rcnn", num_train=3000, epochs=8, max_minutes=10.0)
"""The budget lesson 08 and the benchmark report (2 CPU cores)."""
QUICK = Recipe("mask_rcnn", num_train=1000, num_test=100, epochs=2, max_minutes=1.5)
"""CI's budget (``COURSE_QUICK=1``): the same code, fewer images and minutes."""

MASK_ROI_SIZE = 14
"""RoI Align grid of the mask branch; the masks are 28 x 28, as in the paper."""
MASK_WIDTH = 32
"""Channels of the mask head (torchvision: 256): a third of the step time at 64 already."""


def recipe_for(quick: bool | None = None) -> Recipe:
    """:data:`FULL` or :data:`QUICK` (``quick=None``: from ``COURSE_QUICK``)."""
    return QUICK if (quick_mode() if quick is None else quick) else FULL


def build_model(recipe: Recipe) -> MaskRCNN:
    """A freshly initialised Mask R-CNN for ``recipe`` (seed first for repeatable weights).

    The box part has the settings of lesson 03's Faster R-CNN (32 regions per image for the
    second stage), so that the two compare.
    """
    return MaskRCNN(recipe.num_classes, recipe.image_size, backbone=TinyBackbone(),
                    box_batch_size_per_image=32, mask_roi_size=MASK_ROI_SIZE,
                    mask_width=MASK_WIDTH)


@torch.no_grad()
def predict(model: torch.nn.Module, recipe: Recipe, device: str = "auto",
            num_images: int | None = None, data: Dataset | None = None
            ) -> tuple[list[dict], list[dict], float]:
    """Run ``model`` on the held-out scenes (or on ``data``), one image at a time.

    Returns:
        ``(targets, predictions, seconds)``: the targets, the predictions on the CPU (``boxes``,
        ``scores``, ``labels``, ``masks`` as Tensor[D, 1, S, S] probabilities) and the network
        time per image.
    """
    dev = get_device(device)
    model = model.to(dev).eval()
    data = scenes(recipe, "test") if data is None else data
    count = len(data) if num_images is None else min(num_images, len(data))
    targets, predictions, seconds = [], [], 0.0
    for i in range(count):
        image, target = data[i]
        start = time.perf_counter()
        output = model([to_device(image, dev)])[0]
        if dev.type == "cuda":
            torch.cuda.synchronize()
        seconds += time.perf_counter() - start
        predictions.append({k: output[k].cpu() for k in ("boxes", "scores", "labels", "masks")})
        targets.append(target)
    return targets, predictions, seconds / max(count, 1)


def evaluate(model: torch.nn.Module, recipe: Recipe, device: str = "auto",
             num_images: int | None = None, data: Dataset | None = None) -> dict:
    """COCO metrics of the boxes and of the masks on the held-out scenes (or on ``data``).

    Returns:
        dict: ``"box"`` and ``"mask"``, each the 12 numbers of
        :func:`~course_lib.metrics.coco_evaluate` (``AP50`` is the mAP at IoU 0.5), and
        ``"test_seconds"`` (network time per image, batch of 1, masks pasted included).
    """
    targets, predictions, seconds = predict(model, recipe, device, num_images, data)
    return {"box": coco_evaluate(targets, predictions, iou_type="bbox"),
            "mask": coco_evaluate(targets, predictions, iou_type="segm"),
            "test_seconds": seconds}


def checkpoint_path(recipe: Recipe) -> Path:
    """``data/checkpoints/mask_rcnn_<hash of the recipe, the head's size and the version>.pt``."""
    return cache.checkpoint_path(f"mask_rcnn_m{MASK_ROI_SIZE}w{MASK_WIDTH}", recipe,
                                 CACHE_VERSION)


def load_or_train(quick: bool | None = None, device: str = "auto", progress: bool = True,
                  retrain: bool = False, recipe: Recipe | None = None
                  ) -> tuple[MaskRCNN, dict]:
    """The trained Mask R-CNN from the cache, or train it now (and cache it).

    Args:
        quick: the CI budget (default: ``COURSE_QUICK=1`` in the environment).
        device: where to train and to put the model.
        progress: progress bars while training.
        retrain: ignore the cache and train again.
        recipe: use this recipe instead of :func:`recipe_for`.

    Returns:
        ``(model, info)``: the model in eval mode and a dict with ``recipe`` (dict),
        ``history`` (:class:`~course_lib.train.History`, the five losses), ``train_seconds``,
        ``metrics`` (:func:`evaluate` right after training) and ``path``.
    """
    recipe = recipe_for(quick) if recipe is None else recipe
    path = checkpoint_path(recipe)
    dev = get_device(device)
    model = build_model(recipe)
    info = None if retrain else cache.load_cached(path, model)
    if info is not None:
        print(f"Loaded the trained Mask R-CNN from {path.name} (trained for "
              f"{info['train_seconds'] / 60:.1f} min; on {recipe.num_test} held-out scenes "
              f"{summary(info['metrics'])}).")
        return model.to(dev).eval(), info
    print(f"No trained Mask R-CNN in the cache: training it now, at most "
          f"{recipe.max_minutes:g} min on {recipe.num_train} scenes (once; cached in {path}).")
    model, history, seconds = train(recipe, device=device, progress=progress,
                                    model=build_model_seeded(recipe))
    metrics = evaluate(model, recipe, device=device)
    info = cache.save_cached(path, model, {"recipe": asdict(recipe), "history": history,
                                           "train_seconds": seconds, "metrics": metrics})
    return model.to(dev).eval(), info


def build_model_seeded(recipe: Recipe) -> MaskRCNN:
    """:func:`build_model` after seeding with the recipe's seed (repeatable weights)."""
    torch.manual_seed(recipe.seed)
    return build_model(recipe)


def summary(metrics: dict) -> str:
    """``"box mAP@0.5 0.93, mask AP50 0.85"``: the two headline numbers of :func:`evaluate`."""
    return (f"box mAP@0.5 {metrics['box']['AP50']:.3f}, mask AP50 "
            f"{metrics['mask']['AP50']:.3f}")


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m course_lib.recipes.instance [--quick] [--retrain]``: fill the cache."""
    parser = argparse.ArgumentParser(description="Train lesson 08's Mask R-CNN once and cache "
                                                 "it (data/checkpoints/).")
    parser.add_argument("--quick", action="store_true", default=None,
                        help="CI budget (default: COURSE_QUICK=1 in the environment)")
    parser.add_argument("--retrain", action="store_true", help="ignore the cache")
    args = parser.parse_args(argv)
    _model, info = load_or_train(args.quick, progress=False, retrain=args.retrain)
    m = info["metrics"]
    print(f"mask_rcnn    {summary(m)}  box AP {m['box']['AP']:.3f}  mask AP "
          f"{m['mask']['AP']:.3f}  train {info['train_seconds']:.0f} s  test "
          f"{1000 * m['test_seconds']:.0f} ms/image")


if __name__ == "__main__":
    main()
