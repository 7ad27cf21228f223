"""Train, time and evaluate every semantic segmenter of the course, with a checkpoint cache.

One recipe per segmenter, on the same synthetic segmentation scenes: 64 px, 3 shape classes,
the ``"clean"`` style of :mod:`course_lib.data.synthetic` (a plain colour gradient, no clutter,
objects whole and apart: 1-7 per scene, 3 on average):

================ ============================================================================
segmenter        model
================ ============================================================================
``autoencoder``  :class:`~course_lib.models.conv_autoencoder.ConvAutoencoder`: no skips
``fcn32s``       :class:`~course_lib.models.fcn.FCN` ``"32s"``: one x32 upsampling
``fcn16s``       FCN-16s: + a skip from pool4 (summed)
``fcn8s``        FCN-8s: + a skip from pool3 (summed)
``unet``         :class:`~course_lib.models.unet.UNet`: symmetric decoder, concatenated skips
================ ============================================================================

The models output ``num_classes + 1`` channels: background (0) and the shape classes
``1..num_classes`` of the scenes' ``"semantic"`` maps. The loss is chosen by the recipe:
``"ce"`` (pixel cross-entropy), ``"weighted_ce"`` (weights from the training pixels,
:func:`~course_lib.losses.class_weights`), ``"dice"`` (soft Dice) or ``"ce+dice"``.

Class imbalance without touching the scene generator: with ``rare_class=k`` and
``rare_fraction=f`` only a fraction ``f`` of the training scenes that contain class ``k`` are
kept (the first ones, in index order); the held-out test split stays the normal one.

Why clean scenes: in the natural ones (occlusion, shapes against each other, clutter) only a
few pixels of a shape's outline tell its class; a U-Net learns *object vs background* there in
a minute but the classes only over many minutes (mIoU 0.55 after 4 minutes, measured). On clean
scenes the one-minute U-Net reaches mIoU 0.96, and the architectures still differ (FCN-32s's
blurry outlines, the autoencoder's lost detail).

The models are kept in the channels-last memory layout (:func:`build_model`): PyTorch's oneDNN
convolutions train the U-Net about 1.3x faster in it on 2 CPU cores
(``benchmarks/bench_layout.py``).

Lesson 07 loads trained segmenters with :func:`load_or_train`: the first call trains (about
two minutes, printed up front) and stores a checkpoint under ``data/checkpoints/``; later calls load
it. ``python -m course_lib.recipes.segmentation`` trains every segmenter once.

Budgets (2 CPU cores): :data:`FULL`, what the lesson loads, trains 14 epochs (at most
150 s); :func:`target_recipe`, what ``benchmarks/bench_segmentation.py`` measures, 7 epochs
within :data:`TARGET_SECONDS` (60 s); ``quick=True`` (or ``COURSE_QUICK=1``, which ``make
test`` sets) about 20 s per segmenter: what CI can afford.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

from course_lib.data.synthetic import SHAPES, STYLES, SyntheticShapes
from course_lib.device import get_device
from course_lib.losses import class_weights, dice_loss, pixel_cross_entropy
from course_lib.models.conv_autoencoder import ConvAutoencoder
from course_lib.models.fcn import FCN
from course_lib.models.unet import UNet
from course_lib.recipes import cache
from course_lib.segmentation_metrics import SegmentationMeter
from course_lib.train import History, fit, seed_everything

SEGMENTERS = ("autoencoder", "fcn32s", "fcn16s", "fcn8s", "unet")
LOSSES = ("ce", "weighted_ce", "dice", "ce+dice")
CACHE_VERSION = 1
"""Bump when a change to the models or recipes makes old checkpoints wrong."""


@dataclass(frozen=True)
class Recipe:
    """How one segmenter is trained and tested.

    Attributes:
        segmenter: one of :data:`SEGMENTERS`.
        num_classes: C, the first C synthetic shapes; the model has C + 1 outputs.
        image_size: side of the square scenes.
        num_train: training scenes generated (split ``"train"``), before ``rare_fraction``.
        num_test: held-out scenes for the metrics (split ``"test"``).
        min_objects: fewest objects planned per scene (None: the generator's default, 3).
        max_objects: most objects planned per scene (None: the generator's default, 10).
            Clean scenes drop the objects that do not fit whole and apart: 8-20 planned
            give 1-7 objects on 64 px, 3 on average.
        style: the scenes' style, ``"clean"`` or ``"natural"``
            (:data:`~course_lib.data.synthetic.STYLES`).
        epochs: passes over the training scenes (``max_seconds`` may stop earlier).
        max_seconds: training time budget (wall clock).
        batch_size: images per step.
        lr: peak learning rate (AdamW, one-cycle schedule).
        width: channels of the model's first stage.
        depth: U-Net and autoencoder: number of halvings (FCN: always 5).
        loss: one of :data:`LOSSES`.
        rare_class: make this class rare in the training scenes (None: no change).
        rare_fraction: the fraction of the training scenes with ``rare_class`` that are kept.
        seed: seeds the weights and the data order.
    """

    segmenter: str
    num_classes: int = 3
    image_size: int = 64
    num_train: int = 2400
    num_test: int = 200
    min_objects: int | None = 8
    max_objects: int | None = 20
    style: str = "clean"
    epochs: int = 14
    max_seconds: float = 150.0
    batch_size: int = 16
    lr: float = 2e-3
    width: int = 16
    depth: int = 4
    loss: str = "ce"
    rare_class: int | None = None
    rare_fraction: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.segmenter not in SEGMENTERS:
            raise ValueError(f"segmenter must be one of {SEGMENTERS}, got {self.segmenter!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.style not in STYLES:
            raise ValueError(f"style must be one of {STYLES}, got {self.style!r}")
        if self.rare_class is not None and not 1 <= self.rare_class <= self.num_classes:
            raise ValueError(f"rare_class must be in 1..{self.num_classes}, got "
                             f"{self.rare_class!r}")
        if not 0.0 <= self.rare_fraction <= 1.0:
            raise ValueError(f"rare_fraction must be in [0, 1], got {self.rare_fraction!r}")


_BASE = Recipe("unet")
FULL = {
    "autoencoder": replace(_BASE, segmenter="autoencoder", depth=3),
    "fcn32s": replace(_BASE, segmenter="fcn32s"),
    "fcn16s": replace(_BASE, segmenter="fcn16s"),
    "fcn8s": replace(_BASE, segmenter="fcn8s"),
    # width 8: a step costs about half of width 16's, and within one minute the number of
    # steps decides (1,050 steps: mIoU 0.96; 750 steps: 0.89-0.95 depending on the seed)
    "unet": replace(_BASE, width=8),
}
"""The budgets of the lesson's networks (2 CPU cores, at most 150 s each)."""

TARGET_SECONDS = 60.0
"""The benchmark's budget: the U-Net target is mIoU >= 0.95 within one minute of training."""

TARGET_EPOCHS = 7
"""The one-minute recipes' epochs: 1,050 steps, about 53 s for the U-Net on 2 cores."""

QUICK = {name: replace(recipe, num_train=600, num_test=50, epochs=2, max_seconds=20.0)
         for name, recipe in FULL.items()}
"""Shortened budgets for CI (``COURSE_QUICK=1``): the same code, about 20 s per segmenter."""


def quick_mode() -> bool:
    """True when the environment variable ``COURSE_QUICK`` is set to 1 (``make test`` does)."""
    return os.environ.get("COURSE_QUICK", "") == "1"


def recipe_for(segmenter: str, quick: bool | None = None) -> Recipe:
    """The full or quick recipe of ``segmenter`` (``quick=None``: from :func:`quick_mode`)."""
    if segmenter not in SEGMENTERS:
        raise ValueError(f"segmenter must be one of {SEGMENTERS}, got {segmenter!r}")
    return (QUICK if (quick_mode() if quick is None else quick) else FULL)[segmenter]


def target_recipe(segmenter: str, quick: bool | None = None) -> Recipe:
    """The benchmark's one-minute recipe: the full one with ``TARGET_EPOCHS``, ``TARGET_SECONDS``.

    The quick (CI) recipes are returned unchanged: they are shorter already.
    """
    recipe = recipe_for(segmenter, quick)
    if recipe == QUICK[segmenter]:
        return recipe
    return with_recipe(recipe, epochs=TARGET_EPOCHS, max_seconds=TARGET_SECONDS)


def with_recipe(recipe: Recipe, **changes) -> Recipe:
    """A copy of ``recipe`` with some fields changed (e.g. another loss, a shorter budget)."""
    return replace(recipe, **changes)


RARE_CLASS, RARE_FRACTION = 1, 0.03
"""The imbalance experiment: circles (class 1) made rare, 3 % of their training scenes kept
(0.7 % of the training pixels; with 10 % kept, 2 %, and plain CE still found the circles)."""

IMBALANCE_LOSSES = ("ce", "weighted_ce", "dice")


def imbalance_recipes(quick: bool | None = None, rare_class: int = RARE_CLASS,
                      rare_fraction: float = RARE_FRACTION,
                      losses: Sequence[str] = IMBALANCE_LOSSES) -> dict[str, Recipe]:
    """The one-minute U-Net recipe with one class made rare, once per loss (the experiment).

    Only ``rare_fraction`` of the training scenes that contain ``rare_class`` are kept (see
    :func:`rare_subset`; the test scenes are unchanged), and the epochs are raised so that the
    smaller training set gets as many optimisation steps as the normal U-Net recipe.

    Returns:
        dict: loss name -> :class:`Recipe`.
    """
    base = target_recipe("unet", quick)  # the one-minute budget, for each of the losses
    rare = with_recipe(base, rare_class=rare_class, rare_fraction=rare_fraction)
    kept = len(tensors(rare, "train"))
    steps = base.epochs * (base.num_train // base.batch_size)
    epochs = max(1, math.ceil(steps / max(1, kept // base.batch_size)))
    return {loss: with_recipe(rare, loss=loss, epochs=epochs) for loss in losses}


def build_model(recipe: Recipe) -> torch.nn.Module:
    """A freshly initialised segmenter for ``recipe`` (seed first for repeatable weights).

    Its weights are in the channels-last memory layout, so its convolutions run channels-last
    (faster on a CPU); it takes and returns ordinary tensors, and its ``state_dict`` loads into
    a model in either layout.
    """
    k = recipe.num_classes + 1  # background + the shapes
    if recipe.segmenter == "unet":
        model = UNet(k, depth=recipe.depth, width=recipe.width)
    elif recipe.segmenter == "autoencoder":
        model = ConvAutoencoder(k, width=recipe.width, depth=recipe.depth)
    else:
        model = FCN(k, variant=recipe.segmenter[3:], width=recipe.width)  # "fcn8s" -> "8s"
    return model.to(memory_format=torch.channels_last)


# ============================================================================ data


def scenes(recipe: Recipe, split: str) -> SyntheticShapes:
    """The recipe's training (``"train"``) or held-out (``"test"``) segmentation scenes."""
    num = recipe.num_train if split == "train" else recipe.num_test
    return SyntheticShapes(split, num, kind="segmentation", image_size=recipe.image_size,
                           num_classes=recipe.num_classes, min_objects=recipe.min_objects,
                           max_objects=recipe.max_objects, style=recipe.style, progress=False)


def rare_subset(semantic: torch.Tensor, rare_class: int, fraction: float) -> torch.Tensor:
    """Indices of the scenes kept to make ``rare_class`` rare.

    Every scene without the class is kept; of the S scenes with it, the first
    ``round(fraction * S)`` (in index order) are kept.

    Args:
        semantic (Tensor[N, H, W]): the label maps of the training scenes.
        rare_class (int): the class to make rare.
        fraction (float): the share of the scenes containing it that are kept.

    Returns:
        Tensor[M] int64: the kept indices, increasing.
    """
    has = (semantic == rare_class).flatten(1).any(dim=1)  # (N,) bool
    with_class = has.nonzero().flatten()  # (S,)
    keep = ~has
    keep[with_class[:round(fraction * len(with_class))]] = True
    return keep.nonzero().flatten()


def tensors(recipe: Recipe, split: str) -> TensorDataset:
    """A split as two tensors: images Tensor[N, 3, S, S] float32 and labels Tensor[N, S, S].

    For the training split with ``rare_class`` set, only the scenes of :func:`rare_subset`.
    """
    data = scenes(recipe, split)
    pairs = [data[i] for i in range(len(data))]
    images = torch.stack([image for image, _ in pairs])  # (N, 3, S, S)
    semantic = torch.stack([target["semantic"] for _, target in pairs])  # (N, S, S) int64
    if split == "train" and recipe.rare_class is not None:
        keep = rare_subset(semantic, recipe.rare_class, recipe.rare_fraction)
        images, semantic = images[keep], semantic[keep]
    return TensorDataset(images, semantic)


def pixel_counts(semantic: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Pixels per class, Tensor[num_classes] int64, of label maps Tensor[N, H, W]."""
    return torch.bincount(semantic.flatten(), minlength=num_classes)


# ============================================================================ train / test


def make_loss(recipe: Recipe, weight: torch.Tensor | None = None) -> Callable:
    """``compute_losses(model, (images, labels)) -> dict`` for :func:`~course_lib.train.fit`.

    Args:
        recipe: its ``loss`` picks the terms: ``{"ce"}``, ``{"weighted_ce"}``, ``{"dice"}``
            or ``{"ce", "dice"}`` (fit adds them up).
        weight (Tensor[C + 1], optional): class weights for ``"weighted_ce"``.
    """
    if recipe.loss == "weighted_ce" and weight is None:
        raise ValueError("loss 'weighted_ce' needs the class weights")

    def compute_losses(model: torch.nn.Module, batch: tuple) -> dict[str, torch.Tensor]:
        images, labels = batch  # (N, 3, S, S), (N, S, S)
        logits = model(images)  # (N, C + 1, S, S)
        if recipe.loss == "ce":
            return {"ce": pixel_cross_entropy(logits, labels)}
        if recipe.loss == "weighted_ce":
            return {"weighted_ce": pixel_cross_entropy(logits, labels, weight.to(logits))}
        if recipe.loss == "dice":
            return {"dice": dice_loss(logits, labels)}
        return {"ce": pixel_cross_entropy(logits, labels), "dice": dice_loss(logits, labels)}

    return compute_losses


def train(recipe: Recipe, device: str = "auto", progress: bool = True
          ) -> tuple[torch.nn.Module, History, float]:
    """Train a segmenter from scratch with ``recipe``.

    Returns:
        The model (eval mode), its training history and the training time in seconds (the
        scenes are generated and loaded before the clock starts).
    """
    seed_everything(recipe.seed)
    data = tensors(recipe, "train")
    weight = None
    if recipe.loss == "weighted_ce":
        weight = class_weights(counts=pixel_counts(data.tensors[1], recipe.num_classes + 1))
    loader = DataLoader(data, batch_size=recipe.batch_size, shuffle=True, drop_last=True)
    model = build_model(recipe)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=1e-4)
    steps = recipe.epochs * len(loader)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=recipe.lr,
                                                    total_steps=steps, pct_start=0.15)
    start = time.perf_counter()
    history = fit(model, loader, optimizer, make_loss(recipe, weight), epochs=recipe.epochs,
                  scheduler=scheduler, device=device, max_minutes=recipe.max_seconds / 60,
                  progress=progress, seed=recipe.seed)
    return model.eval(), history, time.perf_counter() - start


@torch.no_grad()
def evaluate(model: torch.nn.Module, recipe: Recipe, device: str = "auto",
             batch_size: int = 50) -> dict:
    """Confusion-matrix metrics on the held-out scenes.

    Returns:
        dict: :meth:`~course_lib.segmentation_metrics.SegmentationMeter.compute`'s
        ``pixel_accuracy``, ``mean_iou``, ``iou`` (list of C + 1 floats: background, then the
        shapes), ``dice``, ``mean_dice``, plus ``classes`` (their names) and
        ``test_seconds`` (network time per image).
    """
    dev = get_device(device)
    model = model.to(dev).eval()
    images, labels = tensors(recipe, "test").tensors
    meter = SegmentationMeter(recipe.num_classes + 1)
    seconds = 0.0
    for i in range(0, len(images), batch_size):
        batch = images[i:i + batch_size].to(dev)
        start = time.perf_counter()
        logits = model(batch)  # (B, C + 1, S, S)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        seconds += time.perf_counter() - start
        meter.update(logits.cpu(), labels[i:i + batch_size])
    metrics = meter.compute()
    metrics.update(classes=["background", *SHAPES[:recipe.num_classes]],
                   test_seconds=seconds / max(len(images), 1))
    return metrics


# ============================================================================ cache


def checkpoint_path(recipe: Recipe) -> Path:
    """``data/checkpoints/seg_<segmenter>_<hash of the recipe and CACHE_VERSION>.pt``."""
    return cache.checkpoint_path(f"seg_{recipe.segmenter}", recipe, CACHE_VERSION)


def load_or_train(segmenter: str, quick: bool | None = None, device: str = "auto",
                  progress: bool = True, retrain: bool = False, recipe: Recipe | None = None
                  ) -> tuple[torch.nn.Module, dict]:
    """The trained segmenter from the cache, or train it now (and cache it).

    Args:
        segmenter: one of :data:`SEGMENTERS`.
        quick: the CI budgets (default: ``COURSE_QUICK=1`` in the environment).
        device: where to train and to put the model.
        progress: progress bars while training.
        retrain: ignore the cache and train again.
        recipe: use this recipe instead of :func:`recipe_for` (e.g. another loss); its
            ``segmenter`` must be ``segmenter``.

    Returns:
        ``(model, info)``: the model in eval mode and a dict with ``recipe`` (dict),
        ``history`` (:class:`~course_lib.train.History`), ``train_seconds`` (measured
        training time), ``metrics`` (:func:`evaluate` right after training) and ``path``.
    """
    recipe = recipe_for(segmenter, quick) if recipe is None else recipe
    if recipe.segmenter != segmenter:
        raise ValueError(f"the recipe is for {recipe.segmenter!r}, not {segmenter!r}")
    path = checkpoint_path(recipe)
    dev = get_device(device)
    model = build_model(recipe)
    info = None if retrain else cache.load_cached(path, model)
    if info is not None:
        print(f"Loaded the trained {segmenter} from {path.name} (trained for "
              f"{info['train_seconds']:.0f} s; mIoU on {recipe.num_test} held-out scenes "
              f"{info['metrics']['mean_iou']:.3f}).")
        return model.to(dev).eval(), info
    print(f"No trained {segmenter} in the cache: training it now, at most "
          f"{recipe.max_seconds:g} s on {recipe.num_train} scenes (once; cached in {path}).")
    model, history, seconds = train(recipe, device=device, progress=progress)
    metrics = evaluate(model, recipe, device=device)
    info = cache.save_cached(path, model, {"recipe": asdict(recipe), "history": history,
                                           "train_seconds": seconds, "metrics": metrics})
    return model.to(dev).eval(), info


def format_iou(metrics: dict) -> str:
    """``"background 0.97  circle 0.91 ..."``: the per-class IoU of :func:`evaluate`."""
    return "  ".join(f"{name} {'nan' if math.isnan(v) else f'{v:.3f}'}"
                     for name, v in zip(metrics["classes"], metrics["iou"], strict=True))


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m course_lib.recipes.segmentation [--quick] [segmenter ...]``: fill the cache."""
    parser = argparse.ArgumentParser(description="Train the segmenters once and cache them "
                                                 "(data/checkpoints/).")
    parser.add_argument("segmenters", nargs="*", metavar="segmenter",
                        help=f"some of {', '.join(SEGMENTERS)} (default: all)")
    parser.add_argument("--quick", action="store_true", default=None,
                        help="CI budgets (default: COURSE_QUICK=1 in the environment)")
    parser.add_argument("--retrain", action="store_true", help="ignore the cache")
    args = parser.parse_args(argv)
    runs = [(segmenter, None) for segmenter in args.segmenters or SEGMENTERS]
    if not args.segmenters:  # everything lesson 07 loads: the imbalance experiment too
        runs += [("unet", recipe) for recipe in imbalance_recipes(args.quick).values()]
    for segmenter, recipe in runs:
        _model, info = load_or_train(segmenter, args.quick, progress=False, retrain=args.retrain,
                                     recipe=recipe)
        m = info["metrics"]
        label = segmenter if recipe is None else f"{segmenter}, rare {recipe.loss}"
        print(f"{label:20s} mIoU {m['mean_iou']:.3f}  pixel acc {m['pixel_accuracy']:.3f}  "
              f"train {info['train_seconds']:.0f} s  IoU: {format_iou(m)}")


if __name__ == "__main__":
    main()
