"""Train and evaluate the classification + localization network on single-object scenes.

Shape shorthand: B images, S image side, C classes.
"""

from __future__ import annotations

import time

import torch
from torch.utils.data import DataLoader

from course_lib.boxes import box_iou
from course_lib.data.synthetic import SyntheticShapes
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


def train_cls_loc(num_train: int = 4000, image_size: int = 64, num_classes: int = 5,
                  epochs: int = 10, batch_size: int = 64, lr: float = 3e-3,
                  box_weight: float = 5.0, width: int = 16, max_minutes: float | None = None,
                  device: str = "auto", seed: int = 0,
                  progress: bool = True) -> tuple[ClsLocNet, History]:
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

    Returns:
        The trained model (eval mode) and the training history.
    """
    seed_everything(seed)
    dev = get_device(device)
    data = single_object_data("train", num_train, image_size, num_classes)
    loader = DataLoader(data, batch_size=batch_size, shuffle=True, collate_fn=collate_single,
                        drop_last=True)
    model = ClsLocNet(num_classes, image_size=image_size, width=width).to(dev)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr,
                                                    total_steps=epochs * len(loader))

    def compute_losses(model: ClsLocNet, batch) -> dict[str, torch.Tensor]:
        images, labels, boxes = batch
        logits, box_pred = model(images)
        return cls_loc_loss_terms(logits, box_pred, labels,
                                  boxes_to_normalized(boxes, image_size), box_weight)

    history = fit(model, loader, optimizer, compute_losses, epochs=epochs, scheduler=scheduler,
                  device=dev, max_minutes=max_minutes, progress=progress, seed=seed)
    return model.eval(), history


@torch.no_grad()
def evaluate_cls_loc(model: ClsLocNet, data, batch_size: int = 256,
                     device: str = "auto") -> dict[str, float]:
    """Accuracy, mean IoU of the predicted box, and images per second on ``data``.

    Returns:
        dict with ``accuracy``, ``mean_iou``, ``iou_at_0.5`` (fraction of boxes with IoU >= 0.5)
        and ``images_per_second``.
    """
    dev = get_device(device)
    model = model.to(dev).eval()
    correct, ious, start = 0, [], time.perf_counter()
    for images, labels, boxes in DataLoader(data, batch_size=batch_size,
                                            collate_fn=collate_single):
        pred = model.predict(images.to(dev))
        correct += int((pred["labels"].cpu() == labels).sum())
        ious.append(box_iou(pred["boxes"].cpu(), boxes).diagonal())  # (B,): own box only
    seconds = time.perf_counter() - start
    ious = torch.cat(ious)
    return {"accuracy": correct / len(data), "mean_iou": float(ious.mean()),
            "iou_at_0.5": float((ious >= 0.5).float().mean()),
            "images_per_second": len(data) / seconds}
