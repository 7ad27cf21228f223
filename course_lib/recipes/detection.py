"""Train, time and evaluate every detector of the course, with a checkpoint cache.

One recipe per detector, on the same synthetic scenes (128 px, 3 classes by default):

=============== ========================================= ==========================================
detector        proposals                                 boxes are classified from
=============== ========================================= ==========================================
``rcnn``        selective search (computed once, cached)  a CNN on each warped region of the image
``fast_rcnn``   selective search (computed once, cached)  RoI Align on one shared feature map
``faster_rcnn`` its own RPN                               RoI Align on one shared feature map
``ssd``         none: default boxes on 5 feature maps     one convolution per feature map
``yolo``        none: an S x S grid, B boxes per cell     one convolution on the grid
=============== ========================================= ==========================================

Every detector uses the same :class:`~course_lib.models.backbone.TinyBackbone` design (three
stages of 3x3 convolutions, stride 8), so their differences come mostly from how they find and
classify boxes. The single-stage detectors use it half as wide in its first two stages, and
SSD with 48 output channels rather than 64 (:func:`backbone_for`), as their papers chose
lighter networks than Faster R-CNN's to be fast (SSD300 on 300-pixel inputs, YOLO on its own
network): with the same backbone, SSD and YOLO run only ~2.7x faster than Faster R-CNN at
batch 1 on 2 CPU cores, because that backbone is about half of their time
(``benchmarks/bench_single_stage.py`` prints the backbones' times). With the lighter ones,
SSD reaches mAP@0.5 0.910 in 14 epochs, under 3 minutes (full width: 0.902 in 8 epochs, 2
minutes), and YOLO, whose head is also narrower (96 channels, not 128), 0.877 in 8 epochs,
290 s (full width: 0.902).

Lessons 02-04 load trained detectors with :func:`load_or_train`: the first call trains
(minutes, printed up front) and stores a checkpoint under ``data/checkpoints/``; later calls
load it in a second. ``make checkpoints`` builds all five. The checkpoint also stores the
history, the measured training time and the test metrics, so that a notebook can show them
without retraining, and a test can check that the weights reproduce the stored mAP.

Budgets: ``quick=True`` (or the environment variable ``COURSE_QUICK=1``, which ``make test``
sets) trains on fewer images for fewer minutes: what CI can afford. The full budgets are what
the lessons, ``benchmarks/bench_two_stage.py`` and ``benchmarks/bench_single_stage.py`` report.

R-CNN and Fast R-CNN train for the same number of epochs on the same images and proposals, so
their training times compare like the lecture's (84 h vs 8.75 h there).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from multiprocessing import get_context
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from course_lib.data.synthetic import SyntheticShapes
from course_lib.data.transforms import RandomFlip
from course_lib.device import get_device
from course_lib.metrics import coco_evaluate
from course_lib.models.backbone import TinyBackbone
from course_lib.models.fast_rcnn import FastRCNN
from course_lib.models.faster_rcnn import FasterRCNN
from course_lib.models.rcnn import RCNN
from course_lib.models.ssd import SSD
from course_lib.models.yolo import YOLO
from course_lib.proposals import selective_search
from course_lib.recipes import cache
from course_lib.train import History, fit, seed_everything, to_device

TWO_STAGE = ("rcnn", "fast_rcnn", "faster_rcnn")
SINGLE_STAGE = ("ssd", "yolo")
DETECTORS = TWO_STAGE + SINGLE_STAGE
SEARCH_PROPOSALS = ("rcnn", "fast_rcnn")
"""The detectors that take selective-search proposals (cached per split)."""
CACHE_VERSIONS = {"rcnn": 1, "fast_rcnn": 1, "faster_rcnn": 1, "ssd": 3, "yolo": 3}
"""Per detector: bump when a change to its model or recipe makes its old checkpoints wrong
(SSD and YOLO 3: the lighter backbones of :data:`BACKBONES`, YOLO's head 96 wide)."""
BACKBONES = {"ssd": {"width": 8, "out_channels": 48}, "yolo": {"width": 8}}
"""The :class:`TinyBackbone` settings of the single-stage detectors; the two-stage detectors
use its defaults (``width=16``, ``out_channels=64``)."""


@dataclass(frozen=True)
class Recipe:
    """How one detector is trained and tested.

    Attributes:
        detector: one of :data:`DETECTORS`.
        num_classes: C, the first C synthetic shapes.
        image_size: side of the square scenes.
        num_train: training scenes (split ``"train"``).
        num_test: held-out scenes for the metrics (split ``"test"``).
        epochs: passes over the training scenes (``max_minutes`` may stop earlier).
        max_minutes: training time budget.
        batch_size: images per step.
        lr: peak learning rate (AdamW, one-cycle schedule).
        seed: seeds the weights and the data order.
    """

    detector: str
    num_classes: int = 3
    image_size: int = 128
    num_train: int = 3000
    num_test: int = 200
    epochs: int = 5
    max_minutes: float = 5.0
    batch_size: int = 8
    lr: float = 3e-3
    seed: int = 0


FULL = {
    "faster_rcnn": Recipe("faster_rcnn", num_train=3000, epochs=5, max_minutes=5.0),
    "fast_rcnn": Recipe("fast_rcnn", num_train=1000, epochs=6, max_minutes=6.0),
    "rcnn": Recipe("rcnn", num_train=1000, epochs=6, max_minutes=12.0),
    "ssd": Recipe("ssd", num_train=3000, epochs=14, max_minutes=5.0),
    "yolo": Recipe("yolo", num_train=9000, epochs=8, max_minutes=5.0),
}
"""The budgets the lessons and the benchmark report (2 CPU cores)."""

QUICK = {
    "faster_rcnn": Recipe("faster_rcnn", num_train=1000, num_test=100, epochs=2,
                          max_minutes=1.5),
    "fast_rcnn": Recipe("fast_rcnn", num_train=200, num_test=50, epochs=3, max_minutes=1.0),
    "rcnn": Recipe("rcnn", num_train=200, num_test=50, epochs=3, max_minutes=1.5),
    "ssd": Recipe("ssd", num_train=1000, num_test=100, epochs=6, max_minutes=1.0),
    "yolo": Recipe("yolo", num_train=1000, num_test=100, epochs=8, max_minutes=1.0),
}
"""Shortened budgets for CI (``COURSE_QUICK=1``): the same code, fewer images and minutes."""


def quick_mode() -> bool:
    """True when the environment variable ``COURSE_QUICK`` is set to 1 (``make test`` does)."""
    return os.environ.get("COURSE_QUICK", "") == "1"


def recipe_for(detector: str, quick: bool | None = None) -> Recipe:
    """The full or quick recipe of ``detector`` (``quick=None``: from :func:`quick_mode`)."""
    if detector not in DETECTORS:
        raise ValueError(f"detector must be one of {DETECTORS}, got {detector!r}")
    return (QUICK if (quick_mode() if quick is None else quick) else FULL)[detector]


def backbone_for(detector: str) -> TinyBackbone:
    """A fresh backbone for ``detector``: a :class:`TinyBackbone`, lighter for SSD and YOLO.

    The three stages have 16, 32 and 64 channels in the two-stage detectors, 8, 16 and 64 in
    YOLO and 8, 16 and 48 in SSD (:data:`BACKBONES`; the module docstring says why). The map
    is ``(B, F, S/8, S/8)`` in every one.
    """
    if detector not in DETECTORS:
        raise ValueError(f"detector must be one of {DETECTORS}, got {detector!r}")
    return TinyBackbone(**BACKBONES.get(detector, {}))


def build_model(recipe: Recipe) -> torch.nn.Module:
    """A freshly initialised detector for ``recipe`` (seed first for repeatable weights).

    SSD and YOLO, which are convolutions and little else, are kept in the channels-last memory
    layout: PyTorch's oneDNN convolutions train them faster in it on a CPU (YOLO: 7 epochs of
    9,000 scenes in 5 minutes instead of 5). They take and return ordinary tensors.
    """
    c, s = recipe.num_classes, recipe.image_size
    backbone = backbone_for(recipe.detector)
    if recipe.detector == "faster_rcnn":
        # 32 regions per image for the second stage (torchvision: 512): the scenes hold 1-6
        # objects, and RoI Align's backward pass is most of a CPU training step
        return FasterRCNN(c, s, backbone=backbone, box_batch_size_per_image=32)
    if recipe.detector == "fast_rcnn":
        return FastRCNN(c, s, backbone=backbone)
    if recipe.detector == "ssd":
        return SSD(c, s, backbone=backbone).to(memory_format=torch.channels_last)
    if recipe.detector == "yolo":
        # a head of 96 channels (default 128): as accurate on these scenes (mAP@0.5 0.877 in 8
        # epochs against 0.875 in 7, 5 minutes each) and faster
        return YOLO(c, s, S=8, B=2, backbone=backbone, hidden=96).to(
            memory_format=torch.channels_last)
    return RCNN(c, s, cnn=backbone)


def scenes(recipe: Recipe, split: str) -> SyntheticShapes:
    """The recipe's training (``"train"``) or held-out (``"test"``) scenes.

    SSD and YOLO train on randomly flipped scenes (:class:`~course_lib.data.transforms.
    RandomFlip`), as their papers train with data augmentation: with one positive box per
    object, YOLO overfits 3,000 scenes otherwise; its recipe also uses 9,000 scenes rather
    than 3,000 for more epochs (0.844 against 0.810 mAP@0.5 in the same 5 minutes, measured
    before the channels-last layout; with it, 7 epochs of the 9,000 reached 0.902 with the
    full-width backbone and head; the lighter ones of :func:`build_model` reach 0.877 in 8
    epochs, 290 s).
    """
    num = recipe.num_train if split == "train" else recipe.num_test
    flip = RandomFlip() if split == "train" and recipe.detector in SINGLE_STAGE else None
    return SyntheticShapes(split, num, kind="detection", image_size=recipe.image_size,
                           num_classes=recipe.num_classes, progress=False, transforms=flip)


# ============================================================================ proposals


def _search(image: torch.Tensor) -> tuple[torch.Tensor, float]:
    start = time.perf_counter()
    boxes = selective_search(image)
    return boxes, time.perf_counter() - start


def cached_proposals(dataset: SyntheticShapes, workers: int | None = None,
                     progress: bool = True) -> tuple[list[torch.Tensor], float]:
    """Selective-search proposals of every image of a synthetic split, computed once.

    Stored next to the split's cache (``<cache name>.proposals.pt``) with the measured search
    time, so that lesson 02 can report the share of the test time spent on proposals.

    Args:
        dataset: a cached :class:`SyntheticShapes` split.
        workers: processes for the search (default: every CPU core, at most 4).
        progress: print a line before a long computation.

    Returns:
        tuple[list[Tensor[P_i, 4]], float]: the proposals of each image and the mean search
        time per image in seconds (as measured when they were computed).
    """
    path = Path(f"{dataset.cache_path}.proposals.pt")
    if path.exists():
        stored = torch.load(path, weights_only=True)
        return stored["proposals"], float(stored["seconds_per_image"])
    workers = workers or min(4, os.cpu_count() or 1)
    if progress:
        print(f"Selective search on {len(dataset)} images with {workers} process(es) "
              f"(~{0.2 * len(dataset) / workers:.0f} s, once; cached in {path.name})")
    images = [dataset[i][0] for i in range(len(dataset))]
    if workers > 1:
        with get_context("spawn").Pool(workers) as pool:
            results = pool.map(_search, images, chunksize=8)
    else:
        results = [_search(image) for image in images]
    proposals = [boxes for boxes, _ in results]
    seconds = sum(s for _, s in results) / max(len(results), 1)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    torch.save({"proposals": proposals, "seconds_per_image": seconds}, tmp)
    os.replace(tmp, path)
    return proposals, seconds


class WithProposals(Dataset):
    """``dataset[i]`` plus its proposals: ``(image, target, proposals Tensor[P, 4])``."""

    def __init__(self, dataset: Dataset, proposals: Sequence[torch.Tensor]) -> None:
        if len(dataset) != len(proposals):
            raise ValueError(f"need one proposal tensor per image: {len(dataset)} images, "
                             f"{len(proposals)} proposal tensors")
        self.dataset, self.proposals = dataset, proposals

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, target = self.dataset[index]
        return image, target, self.proposals[index]


def collate(batch: list) -> tuple:
    """``(image, target[, proposals])`` items -> ``(images, targets[, proposals])`` lists."""
    return tuple(list(column) for column in zip(*batch, strict=True))


def data_for(recipe: Recipe, split: str) -> Dataset:
    """The scenes of a split, with their cached proposals for R-CNN and Fast R-CNN."""
    dataset = scenes(recipe, split)
    if recipe.detector not in SEARCH_PROPOSALS:
        return dataset
    return WithProposals(dataset, cached_proposals(dataset)[0])


# ============================================================================ train / test


def compute_losses(model: torch.nn.Module, batch: tuple) -> dict[str, torch.Tensor]:
    """``model(images, targets)`` or ``model(images, targets, proposals)``: the losses."""
    return model(*batch)


def train(recipe: Recipe, device: str = "auto", progress: bool = True,
          model: torch.nn.Module | None = None, data: Dataset | None = None
          ) -> tuple[torch.nn.Module, History, float]:
    """Train a detector from scratch with ``recipe``.

    Args:
        recipe: data, budget and optimiser settings.
        device: where to train.
        progress: show the progress bars.
        model: train this model instead of ``build_model(recipe)`` (built after seeding), e.g.
            torchvision's ``FasterRCNN`` with the same backbone, for a comparison. It must
            follow the recipe detector's calling convention.
        data: train on these ``(image, target)`` pairs instead of the recipe's scenes (e.g.
            Penn-Fudan, resized to the recipe's image size); ``num_train`` is then unused.

    Returns:
        The model (eval mode), its training history and the training time in seconds (the
        data and proposal caches are built before the clock starts).
    """
    seed_everything(recipe.seed)
    data = data_for(recipe, "train") if data is None else data
    loader = DataLoader(data, batch_size=recipe.batch_size, shuffle=True, collate_fn=collate,
                        drop_last=True)
    model = build_model(recipe) if model is None else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=1e-4)
    steps = recipe.epochs * len(loader)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=recipe.lr,
                                                    total_steps=steps, pct_start=0.1)
    start = time.perf_counter()
    history = fit(model, loader, optimizer, compute_losses, epochs=recipe.epochs,
                  scheduler=scheduler, device=device, max_minutes=recipe.max_minutes,
                  progress=progress, seed=recipe.seed)
    return model.eval(), history, time.perf_counter() - start


@torch.no_grad()
def evaluate(model: torch.nn.Module, recipe: Recipe, device: str = "auto",
             num_images: int | None = None) -> dict[str, float]:
    """COCO metrics on the held-out scenes, and the test time per image.

    For R-CNN and Fast R-CNN the proposals are the cached ones, and the time of selective
    search (measured when they were computed) is reported apart: ``proposal_seconds``.

    Returns:
        dict: the 12 numbers of :func:`~course_lib.metrics.coco_evaluate` (``AP50`` is the
        mAP at IoU 0.5) plus ``network_seconds`` (per image, batch of 1, after the
        proposals), ``proposal_seconds`` (per image; 0 for the detectors without selective
        search) and ``test_seconds`` (their sum).
    """
    dev = get_device(device)
    model = model.to(dev).eval()
    data = data_for(recipe, "test")
    count = len(data) if num_images is None else min(num_images, len(data))
    targets, predictions, seconds = [], [], 0.0
    for i in range(count):
        item = data[i]
        inputs = to_device(([item[0]], None, [item[2]]) if len(item) == 3 else ([item[0]],), dev)
        start = time.perf_counter()
        output = model(*inputs)[0]
        if dev.type == "cuda":
            torch.cuda.synchronize()
        seconds += time.perf_counter() - start
        predictions.append({k: output[k].cpu() for k in ("boxes", "scores", "labels")})
        targets.append(item[1])
    metrics = coco_evaluate(targets, predictions)
    proposal_seconds = 0.0
    if recipe.detector in SEARCH_PROPOSALS:
        proposal_seconds = cached_proposals(data.dataset)[1]
    metrics.update(network_seconds=seconds / count, proposal_seconds=proposal_seconds,
                   test_seconds=seconds / count + proposal_seconds)
    return metrics


# ============================================================================ cache


def checkpoint_path(recipe: Recipe) -> Path:
    """``data/checkpoints/<detector>_<hash of the recipe and its CACHE_VERSIONS entry>.pt``."""
    return cache.checkpoint_path(recipe.detector, recipe, CACHE_VERSIONS[recipe.detector])


def load_or_train(detector: str, quick: bool | None = None, device: str = "auto",
                  progress: bool = True, retrain: bool = False
                  ) -> tuple[torch.nn.Module, dict]:
    """The trained detector from the cache, or train it now (and cache it).

    Args:
        detector: one of :data:`DETECTORS`.
        quick: the CI budgets (default: ``COURSE_QUICK=1`` in the environment).
        device: where to train and to put the model.
        progress: progress bars while training.
        retrain: ignore the cache and train again.

    Returns:
        ``(model, info)``: the model in eval mode and a dict with ``recipe`` (dict),
        ``history`` (:class:`~course_lib.train.History`), ``train_seconds`` (measured
        training time), ``metrics`` (:func:`evaluate` right after training) and ``path``.
    """
    recipe = recipe_for(detector, quick)
    path = checkpoint_path(recipe)
    dev = get_device(device)
    model = build_model(recipe)
    info = None if retrain else cache.load_cached(path, model)
    if info is not None:
        print(f"Loaded the trained {detector} from {path.name} (trained for "
              f"{info['train_seconds'] / 60:.1f} min; mAP@0.5 on {recipe.num_test} held-out "
              f"scenes {info['metrics']['AP50']:.3f}).")
        return model.to(dev).eval(), info
    print(f"No trained {detector} in the cache: training it now, at most "
          f"{recipe.max_minutes:g} min on {recipe.num_train} scenes (once; cached in {path}).")
    model, history, seconds = train(recipe, device=device, progress=progress)
    metrics = evaluate(model, recipe, device=device)
    info = cache.save_cached(path, model, {"recipe": asdict(recipe), "history": history,
                                           "train_seconds": seconds, "metrics": metrics})
    return model.to(dev).eval(), info


def with_recipe(recipe: Recipe, **changes) -> Recipe:
    """A copy of ``recipe`` with some fields changed (e.g. a shorter budget for a test)."""
    return replace(recipe, **changes)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m course_lib.recipes.detection [--quick] [detector ...]``: fill the cache."""
    parser = argparse.ArgumentParser(description="Train the detectors once and cache them "
                                                 "(data/checkpoints/).")
    parser.add_argument("detectors", nargs="*", metavar="detector",
                        help=f"some of {', '.join(DETECTORS)} (default: all)")
    parser.add_argument("--quick", action="store_true", default=None,
                        help="CI budgets (default: COURSE_QUICK=1 in the environment)")
    parser.add_argument("--retrain", action="store_true", help="ignore the cache")
    args = parser.parse_args(argv)
    for detector in args.detectors or DETECTORS:
        _model, info = load_or_train(detector, args.quick, progress=False, retrain=args.retrain)
        m = info["metrics"]
        print(f"{detector:12s} mAP@0.5 {m['AP50']:.3f}  AP {m['AP']:.3f}  train "
              f"{info['train_seconds']:.0f} s  test {1000 * m['test_seconds']:.0f} ms/image")


if __name__ == "__main__":
    main()
