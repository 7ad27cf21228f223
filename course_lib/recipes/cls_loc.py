"""Train and evaluate the classification + localization network on single-object scenes.

With ``background > 0`` the network also learns a class 0, "no object here", from crops of
multi-object scenes that overlap no object (IoU < ``BACKGROUND_MAX_IOU`` with every box): what
a sliding-window detector needs to say "nothing" (lesson 01). The box term of the loss is
masked out for those crops: there is no box to regress.

Shape shorthand: B images, S image side, C classes.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from course_lib.boxes import box_iou
from course_lib.data.synthetic import SPLIT_CODES, SyntheticShapes, make_scene
from course_lib.losses import cls_loc_loss_terms
from course_lib.models.cls_loc import ClsLocNet, boxes_to_normalized
from course_lib.train import History, fit, get_device, seed_everything


def single_object_data(split: str, num_images: int, image_size: int = 64, num_classes: int = 5,
                       seed: int = 0, cache: bool = True) -> SyntheticShapes:
    """Single-object synthetic scenes (``kind="single"``) for one split."""
    return SyntheticShapes(split, num_images, kind="single", image_size=image_size,
                           num_classes=num_classes, seed=seed, cache=cache, progress=False)


def collate_single(batch: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(image, target)`` pairs -> images (B, 3, S, S), labels (B,) in 0..C-1, boxes (B, 4) px."""
    images = torch.stack([image for image, _ in batch])
    labels = torch.stack([target["labels"][0] for _, target in batch]) - 1  # 1..C -> 0..C-1
    boxes = torch.stack([target["boxes"][0] for _, target in batch])
    return images, labels, boxes


BACKGROUND_MAX_IOU = 0.2
"""A crop is background when its IoU with every object's box is below this."""


class BackgroundCrops(Dataset):
    """Square crops of multi-object scenes that overlap no object, resized to ``image_size``.

    Crop ``k`` comes from scene ``k // crops_per_scene``, a ``kind="detection"`` scene of
    ``scene_size`` pixels made from the seed ``[seed, split_code, scene, 1]`` (independent of
    every ``SyntheticShapes`` split). Its side is drawn uniformly in
    ``[min_size, max_size]`` pixels and its position uniformly; a crop whose IoU with some
    object's box is ``>= max_iou`` is drawn again (up to 50 times, then the scene is skipped).
    They show textured background, clutter and bits of objects: the hard "nothing here"
    examples a sliding window meets. Everything is made up front, deterministically.

    ``dataset[k]`` is ``(image, target)`` like ``SyntheticShapes``, with no objects: image
    Tensor[3, S, S] in [0, 1], target ``{"boxes": Tensor[0, 4], "labels": Tensor[0]}``.
    """

    def __init__(self, num_crops: int, image_size: int = 64, scene_size: int = 128,
                 num_classes: int = 5, split: str = "train", seed: int = 0,
                 crops_per_scene: int = 4, min_size: int = 16, max_size: int = 96,
                 max_iou: float = BACKGROUND_MAX_IOU) -> None:
        self.image_size = image_size
        rng = np.random.default_rng([seed, SPLIT_CODES[split], 1])
        crops, scene = [], 0
        while len(crops) < num_crops:
            image, target = make_scene([seed, SPLIT_CODES[split], scene, 1], scene_size,
                                       kind="detection", num_classes=num_classes)
            scene += 1
            for _ in range(min(crops_per_scene, num_crops - len(crops))):
                for _try in range(50):
                    side = int(rng.integers(min_size, max_size + 1))
                    x, y = rng.integers(0, scene_size - side + 1, size=2)
                    window = torch.tensor([[x, y, x + side, y + side]], dtype=torch.float32)
                    overlap = box_iou(window, target["boxes"])             # (1, N)
                    if overlap.numel() == 0 or overlap.max() < max_iou:
                        crop = image[None, :, y:y + side, x:x + side]     # (1, 3, side, side)
                        crops.append(F.interpolate(crop, size=(image_size, image_size),
                                                   mode="bilinear", align_corners=False,
                                                   antialias=side > image_size)[0])
                        break
        self.images = torch.stack(crops) if crops else torch.zeros(0, 3, image_size, image_size)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.images[index], {"boxes": torch.zeros(0, 4),
                                    "labels": torch.zeros(0, dtype=torch.int64)}


def collate_with_background(batch: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Collate ``(image, target)`` pairs of single-object scenes and background crops.

    Returns:
        images (B, 3, S, S), labels (B,) with 0 = background and objects 1..C, boxes (B, 4)
        in pixels (zeros for background).
    """
    images = torch.stack([image for image, _ in batch])
    labels = torch.stack([t["labels"][0] if len(t["labels"]) else torch.tensor(0)
                          for _, t in batch])
    boxes = torch.stack([t["boxes"][0] if len(t["boxes"]) else torch.zeros(4) for _, t in batch])
    return images, labels, boxes


def background_masked_loss_terms(class_logits: torch.Tensor, box_pred: torch.Tensor,
                                 labels: torch.Tensor, box_targets: torch.Tensor,
                                 box_weight: float = 1.0) -> dict[str, torch.Tensor]:
    """:func:`~course_lib.losses.cls_loc_loss_terms` when class 0 is background.

    The cross-entropy runs over all images; the box term only over the object images
    (``labels > 0``): ``box_weight`` times the mean over them of the squared L2 distance
    (0 when the batch holds no object).
    """
    classification = F.cross_entropy(class_logits, labels)                # (B, C+1) -> ()
    is_object = (labels > 0).to(box_pred.dtype)                            # (B,)
    squared = ((box_pred - box_targets) ** 2).sum(dim=1)                   # (B, 4) -> (B,)
    box = (squared * is_object).sum() / is_object.sum().clamp(min=1)
    return {"classification": classification, "box": box_weight * box}


def train_cls_loc(num_train: int = 4000, image_size: int = 64, num_classes: int = 5,
                  epochs: int = 10, batch_size: int = 64, lr: float = 3e-3,
                  box_weight: float = 5.0, width: int = 16, max_minutes: float | None = None,
                  device: str = "auto", seed: int = 0, progress: bool = True,
                  background: int = 0) -> tuple[ClsLocNet, History]:
    """Train :class:`ClsLocNet` from scratch (AdamW, one-cycle learning rate).

    Args:
        num_train: training images.
        image_size: S.
        num_classes: C (the first C shapes).
        epochs: passes over the training images.
        batch_size: images per step.
        lr: peak learning rate of the one-cycle schedule.
        box_weight: weight of the L2 box term against the cross-entropy.
        width: channels of the first conv block.
        max_minutes: stop early after this much training time.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        seed: seeds the weights and the data order (the data itself is fixed by its own seed).
        progress: show the progress bar.
        background: how many background crops (:class:`BackgroundCrops`) to add to the
            training images. 0 (the default) trains the plain C-class network; more gives a
            network with a background class 0 (``ClsLocNet(background=True)``), trained with
            the box term masked out for the background crops.

    Returns:
        The trained model (eval mode) and the training history.
    """
    seed_everything(seed)
    dev = get_device(device)
    data = single_object_data("train", num_train, image_size, num_classes)
    collate, loss_terms = collate_single, cls_loc_loss_terms
    if background:
        data = ConcatDataset([data, BackgroundCrops(background, image_size,
                                                    num_classes=num_classes, seed=seed)])
        collate, loss_terms = collate_with_background, background_masked_loss_terms
    loader = DataLoader(data, batch_size=batch_size, shuffle=True, collate_fn=collate,
                        drop_last=True)
    model = ClsLocNet(num_classes, image_size=image_size, width=width,
                      background=bool(background)).to(dev)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr,
                                                    total_steps=epochs * len(loader))

    def compute_losses(model: ClsLocNet, batch) -> dict[str, torch.Tensor]:
        images, labels, boxes = batch
        logits, box_pred = model(images)
        return loss_terms(logits, box_pred, labels, boxes_to_normalized(boxes, image_size),
                          box_weight)

    history = fit(model, loader, optimizer, compute_losses, epochs=epochs, scheduler=scheduler,
                  device=dev, max_minutes=max_minutes, progress=progress, seed=seed)
    return model.eval(), history


@torch.no_grad()
def evaluate_cls_loc(model: ClsLocNet, data, batch_size: int = 256,
                     device: str = "auto") -> dict[str, float]:
    """Accuracy, mean IoU of the predicted box, and images per second on ``data``.

    ``data`` holds single-object scenes; for a model with a background class, predicting
    background counts as a wrong class.

    Returns:
        dict with ``accuracy``, ``mean_iou``, ``iou_at_0.5`` (fraction of boxes with IoU >= 0.5)
        and ``images_per_second``.
    """
    dev = get_device(device)
    model = model.to(dev).eval()
    offset = int(getattr(model, "background", False))  # labels 0..C-1 -> the model's indices
    correct, ious, start = 0, [], time.perf_counter()
    for images, labels, boxes in DataLoader(data, batch_size=batch_size,
                                            collate_fn=collate_single):
        pred = model.predict(images.to(dev))
        correct += int((pred["labels"].cpu() == labels + offset).sum())
        ious.append(box_iou(pred["boxes"].cpu(), boxes).diagonal())  # (B,): own box only
    seconds = time.perf_counter() - start
    ious = torch.cat(ious)
    return {"accuracy": correct / len(data), "mean_iou": float(ious.mean()),
            "iou_at_0.5": float((ious >= 0.5).float().mean()),
            "images_per_second": len(data) / seconds}
