"""Toy scenes and a simulated detector, for studying evaluation without training a model.

Lesson 05 needs detections to evaluate. Instead of a trained network we *simulate* one: each
ground-truth object is found with some probability, its box is jittered (more for small
objects, as a real detector struggles more there), some objects get duplicate boxes (so NMS has
work to do), some get the wrong class, and every image gets false positives with low scores.
The knobs are arguments, so a lesson can show how each kind of error moves the metrics.

Shape shorthand: N objects in an image, D detections, H x W the image size.

Targets and predictions follow torchvision's convention: per image a dict with ``boxes``
(Tensor[N, 4], xyxy float32 pixels), ``labels`` (Tensor[N], int64, 1..C, 0 is background) and
for predictions ``scores`` (Tensor[D], float32).
"""

from __future__ import annotations

import numpy as np
import torch

# The classes of the lecture's mAP example.
CLASS_NAMES: tuple[str, ...] = ("background", "car", "cat", "dog")


def make_toy_scenes(num_images: int = 100, image_size: int = 256, max_objects: int = 6,
                    num_classes: int = 3, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Random ground-truth boxes for ``num_images`` images.

    Object sizes are drawn log-uniformly from 10 to 180 pixels so that COCO's small
    (area < 32²), medium and large (area > 96²) objects all occur.

    Args:
        num_images: how many images.
        image_size: side of the square images, in pixels.
        max_objects: at most this many objects per image (at least one).
        num_classes: labels are drawn from 1..num_classes.
        seed: the same seed gives the same scenes.

    Returns:
        One target dict per image: ``boxes`` Tensor[N, 4] (xyxy float32), ``labels``
        Tensor[N] (int64), ``image_size`` (H, W).
    """
    rng = np.random.default_rng(seed)
    targets = []
    for _ in range(num_images):
        n = int(rng.integers(1, max_objects + 1))
        side = np.exp(rng.uniform(np.log(10), np.log(min(180, image_size)), size=(n, 1)))
        aspect = np.exp(rng.uniform(-0.4, 0.4, size=(n, 1)))
        wh = np.concatenate([side * aspect, side / aspect], axis=1).clip(4, image_size)
        xy = rng.uniform(0, 1, size=(n, 2)) * (image_size - wh)
        boxes = np.concatenate([xy, xy + wh], axis=1).round(1)
        labels = rng.integers(1, num_classes + 1, size=n)
        targets.append({"boxes": torch.tensor(boxes, dtype=torch.float32),
                        "labels": torch.tensor(labels, dtype=torch.int64),
                        "image_size": (image_size, image_size)})
    return targets


def simulate_detector(targets: list[dict[str, torch.Tensor]], seed: int = 0,
                      recall: float = 0.85, box_noise: float = 0.08,
                      duplicate_rate: float = 0.5, confusion_rate: float = 0.05,
                      false_positives: float = 2.0, num_classes: int = 3,
                      image_size: int = 256) -> list[dict[str, torch.Tensor]]:
    """Detections that a plausible, imperfect detector could output for ``targets``.

    Args:
        targets: ground truth, one dict per image (``boxes``, ``labels``).
        seed: the same seed gives the same detections.
        recall: probability that an object is detected; ``recall ** 1.5`` for small objects.
        box_noise: standard deviation of the box jitter relative to the object's size; small
            objects get up to twice as much.
        duplicate_rate: probability that a found object gets a second, overlapping box with a
            lower score (the raw output before NMS).
        confusion_rate: probability that a found object gets the wrong class.
        false_positives: mean number of false positives per image (Poisson).
        num_classes: labels are 1..num_classes.
        image_size: boxes are clipped to the image.

    Returns:
        One prediction dict per image: ``boxes`` Tensor[D, 4], ``scores`` Tensor[D],
        ``labels`` Tensor[D].
    """
    rng = np.random.default_rng(seed)
    preds = []
    for target in targets:
        gt = target["boxes"].numpy().astype(np.float64)
        gt_labels = target["labels"].numpy()
        boxes, scores, labels = [], [], []
        for box, label in zip(gt, gt_labels, strict=True):
            w, h = box[2] - box[0], box[3] - box[1]
            small = np.sqrt(w * h) < 32
            if rng.random() > recall ** (1.5 if small else 1.0):
                continue  # missed: a false negative
            copies = 2 if rng.random() < duplicate_rate else 1
            for copy in range(copies):
                noise = box_noise * (2.0 if small else 1.0) * (1.5 if copy else 1.0)
                jitter = rng.normal(0, noise, size=4) * np.array([w, h, w, h])
                boxes.append(box + jitter)
                score = rng.beta(6, 2) * (0.7 if copy else 1.0) * (0.85 if small else 1.0)
                scores.append(score)
                wrong = rng.random() < confusion_rate
                labels.append(int(rng.integers(1, num_classes + 1)) if wrong else int(label))
        for _ in range(rng.poisson(false_positives)):
            side = np.exp(rng.uniform(np.log(8), np.log(120)))
            x, y = rng.uniform(0, image_size - side, size=2)
            boxes.append(np.array([x, y, x + side, y + side]))
            scores.append(rng.beta(2, 5))
            labels.append(int(rng.integers(1, num_classes + 1)))
        b = np.array(boxes, dtype=np.float64).reshape(-1, 4).clip(0, image_size)
        b[:, 2:] = np.maximum(b[:, 2:], b[:, :2] + 1.0)  # keep every box at least 1 px wide
        preds.append({"boxes": torch.tensor(b.round(1), dtype=torch.float32),
                      "scores": torch.tensor(np.round(scores, 4), dtype=torch.float32),
                      "labels": torch.tensor(labels, dtype=torch.int64)})
    return preds


def render_scene(target: dict[str, torch.Tensor], image_size: int = 256,
                 seed: int = 0) -> torch.Tensor:
    """Paint a simple picture of a scene: one flat shape per object on a shaded background.

    Class 1 is drawn as a rectangle, class 2 as an ellipse, class 3 as a triangle, each in a
    light version of its box colour, so the picture is easy to read next to the boxes.

    Args:
        target: a dict with ``boxes`` Tensor[N, 4] and ``labels`` Tensor[N].
        image_size: side of the square image.
        seed: seed of the background shading and the colours.

    Returns:
        Tensor[3, H, W], float32 in [0, 1].
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:image_size, 0:image_size] + 0.5
    # a smooth, low-frequency background (no pixel noise: the figures stay small)
    phase = rng.uniform(0, 2 * np.pi, size=2)
    shade = 0.06 * np.sin(xx / image_size * 3 + phase[0]) * np.cos(yy / image_size * 2 + phase[1])
    image = np.repeat((0.86 + shade)[..., None], 3, axis=2)
    # lighter versions of the class colours of the course's figures (viz.class_color), so a
    # shape and its box match: car orange, cat green, dog red
    palette = {1: (1.00, 0.75, 0.53), 2: (0.59, 0.81, 0.59), 3: (0.92, 0.58, 0.58)}
    order = np.argsort(-(target["boxes"][:, 2:] - target["boxes"][:, :2]).prod(1).numpy())
    for i in order:  # large objects first, so small ones stay visible on top
        x1, y1, x2, y2 = target["boxes"][i].tolist()
        label = int(target["labels"][i])
        inside = (xx >= x1) & (xx <= x2) & (yy >= y1) & (yy <= y2)
        if label == 2:
            cx, cy, rx, ry = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2, (y2 - y1) / 2
            inside &= ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1
        elif label == 3:
            t = (yy - y1) / max(y2 - y1, 1e-6)  # 0 at the apex, 1 at the base
            half = t * (x2 - x1) / 2
            inside &= np.abs(xx - (x1 + x2) / 2) <= half
        colour = np.array(palette.get(label, (0.7, 0.7, 0.7))) * rng.uniform(0.85, 1.0)
        image[inside] = colour
    return torch.tensor(image.clip(0, 1).transpose(2, 0, 1), dtype=torch.float32)
