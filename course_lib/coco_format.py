"""Convert torchvision-style targets/predictions to COCO json, and run pycocotools on them.

torchvision convention (what the rest of the course uses), one dict per image:

* target: ``"boxes"`` (Tensor[N, 4], x1 y1 x2 y2), ``"labels"`` (Tensor[N] int64), optional
  ``"iscrowd"`` (Tensor[N] int/bool) and ``"area"`` (Tensor[N] float);
* prediction: ``"boxes"``, ``"labels"`` and ``"scores"`` (Tensor[N] float).

COCO convention (what ``pycocotools`` reads): boxes are ``[x, y, width, height]`` lists of
floats, every annotation has an ``id`` (starting at 1), an ``image_id`` and a ``category_id``.

Image ids: image ``i`` of the list (0-based) gets COCO id ``i + 1``. Category ids are the labels
themselves (background 0 never appears in targets).

``pycocotools_evaluate`` is the *oracle* the tests and the notebook compare
``course_lib.metrics.coco_evaluate`` with.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable, Sequence

import numpy as np
import torch

from course_lib.boxes import as_boxes

COCO_STAT_NAMES = (
    "AP", "AP50", "AP75", "APs", "APm", "APl",
    "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
)  # fmt: skip
"""The names of the 12 numbers ``COCOeval.summarize()`` prints, in its order (``.stats``)."""


def boxes_to_coco_xywh(boxes: torch.Tensor) -> np.ndarray:
    """Turn ``(x1, y1, x2, y2)`` boxes into COCO ``(x, y, w, h)`` boxes, in float64.

    The subtraction is done in float64 (after the cast), so the numbers are the same, bit for
    bit, wherever a COCO box is needed (the json here and ``metrics.coco_evaluate``).

    Args:
        boxes (Tensor[N, 4]): boxes in ``(x1, y1, x2, y2)`` format.

    Returns:
        ndarray[N, 4] float64: boxes in ``(x, y, w, h)`` format.
    """
    b = as_boxes(boxes, "boxes").detach().cpu().to(torch.float64).numpy()
    return np.stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], axis=1)


def to_coco_gt(
    targets: Sequence[dict],
    image_size: tuple[int, int] | Sequence[tuple[int, int]] | None = None,
    category_ids: Iterable[int] | None = None,
) -> dict:
    """Build a COCO ground-truth json dict from torchvision-style targets.

    Args:
        targets: one dict per image with ``"boxes"`` (Tensor[N, 4], xyxy), ``"labels"``
            (Tensor[N] int64) and optionally ``"iscrowd"`` (Tensor[N]) and ``"area"``
            (Tensor[N]; when missing the area is the box ``w * h``).
        image_size: optional ``(height, width)`` for every image, or a list with one per
            image. pycocotools does not need it; when given, images get ``"height"`` and
            ``"width"``.
        category_ids: the category ids to list in ``"categories"``. Default: the labels that
            occur in ``targets``. Pass the labels of the predictions too to evaluate exactly
            the categories ``metrics.coco_evaluate`` evaluates (see ``pycocotools_evaluate``).

    Returns:
        dict: ``{"images": [...], "annotations": [...], "categories": [...]}``. Image ``i``
        has id ``i + 1``; annotation ids run from 1 in image order; ``category_id`` is the
        label; ``bbox`` is ``[x, y, w, h]`` floats; ``iscrowd`` is 0 or 1.
    """
    sizes = _image_sizes(image_size, len(targets))
    images, annotations, labels_seen = [], [], set()
    for i, target in enumerate(targets):
        image = {"id": i + 1}
        if sizes is not None:
            image["height"], image["width"] = int(sizes[i][0]), int(sizes[i][1])
        images.append(image)

        xywh = boxes_to_coco_xywh(target["boxes"])  # (N, 4) float64
        n = len(xywh)
        labels = _check_vector(target["labels"], "labels", n).tolist()
        iscrowd = _check_vector(target.get("iscrowd", torch.zeros(n)), "iscrowd", n) != 0
        area = target.get("area")  # given area, else the box area w * h
        area = xywh[:, 2] * xywh[:, 3] if area is None else _check_vector(area, "area", n)
        for j in range(n):
            annotations.append({
                "id": len(annotations) + 1,
                "image_id": i + 1,
                "category_id": int(labels[j]),
                "bbox": [float(v) for v in xywh[j]],
                "area": float(area[j]),
                "iscrowd": int(iscrowd[j]),
            })
            labels_seen.add(int(labels[j]))

    ids = sorted(labels_seen if category_ids is None else {int(c) for c in category_ids})
    categories = [{"id": c, "name": str(c)} for c in ids]
    return {"images": images, "annotations": annotations, "categories": categories}


def to_coco_dt(preds: Sequence[dict]) -> list[dict]:
    """Build a COCO results list from torchvision-style predictions.

    Args:
        preds: one dict per image with ``"boxes"`` (Tensor[D, 4], xyxy), ``"labels"``
            (Tensor[D] int64) and ``"scores"`` (Tensor[D]).

    Returns:
        list of ``{"image_id", "category_id", "bbox", "score"}`` dicts, image by image (image
        ``i`` has id ``i + 1``), detections in their original order within an image.
    """
    results = []
    for i, pred in enumerate(preds):
        xywh = boxes_to_coco_xywh(pred["boxes"])  # (D, 4) float64
        labels = _check_vector(pred["labels"], "labels", len(xywh)).tolist()
        scores = _check_vector(pred["scores"], "scores", len(xywh)).astype(np.float64).tolist()
        for j in range(len(xywh)):
            results.append({
                "image_id": i + 1,
                "category_id": int(labels[j]),
                "bbox": [float(v) for v in xywh[j]],
                "score": scores[j],
            })
    return results


def pycocotools_evaluate(
    targets: Sequence[dict], preds: Sequence[dict], iou_type: str = "bbox"
) -> dict[str, float]:
    """Run pycocotools' ``COCOeval`` on torchvision-style targets and predictions, in memory.

    Builds ``COCO`` objects from the dicts (no files), runs ``evaluate``, ``accumulate`` and
    ``summarize`` with pycocotools' own printing silenced, and returns ``COCOeval.stats``.

    The categories evaluated are the union of the labels in ``targets`` and ``preds`` (the
    same choice as ``metrics.coco_evaluate``; categories without ground truth come out as -1
    in pycocotools and so do not change any of the 12 numbers).

    When ``preds`` holds no detection at all, ``COCO.loadRes`` cannot be used (it reads
    ``anns[0]``); an empty results ``COCO`` object is built directly instead and ``COCOeval``
    runs unchanged: every number whose area range has ground truth is 0.0, the others -1.0.

    Args:
        targets: one target dict per image (see ``to_coco_gt``).
        preds: one prediction dict per image, same length as ``targets`` (see ``to_coco_dt``).
        iou_type: ``"bbox"`` (``"segm"`` needs masks, which come with lesson 08).

    Returns:
        dict: the 12 keys of ``COCO_STAT_NAMES`` -> float (-1.0 where undefined).
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if iou_type != "bbox":
        raise NotImplementedError("segm comes with lesson 08")
    if len(targets) != len(preds):
        raise ValueError(
            f"targets and preds must have one entry per image, got {len(targets)} targets "
            f"and {len(preds)} preds"
        )
    labels = set()
    for item in list(targets) + list(preds):
        labels.update(int(c) for c in _check_vector(item["labels"], "labels").tolist())

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints a lot
        coco_gt = COCO()
        coco_gt.dataset = to_coco_gt(targets, category_ids=labels)
        coco_gt.createIndex()
        results = to_coco_dt(preds)
        if results:
            coco_dt = coco_gt.loadRes(results)
        else:
            coco_dt = COCO()
            coco_dt.dataset = {
                "images": list(coco_gt.dataset["images"]),
                "categories": list(coco_gt.dataset["categories"]),
                "annotations": [],
            }
            coco_dt.createIndex()
        evaluator = COCOeval(coco_gt, coco_dt, iouType=iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: float(v) for name, v in zip(COCO_STAT_NAMES, evaluator.stats, strict=True)}


# ----------------------------------------------------------------------------- helpers




def _check_vector(values, name: str, length: int | None = None) -> np.ndarray:
    values = torch.as_tensor(values).detach().cpu()
    if values.dim() != 1 or (length is not None and values.shape[0] != length):
        expected = "N" if length is None else length
        raise ValueError(f"{name} must have shape ({expected},), got {tuple(values.shape)}")
    return values.numpy()


def _image_sizes(image_size, num_images: int):
    if image_size is None:
        return None
    if len(image_size) == 2 and all(isinstance(v, int | np.integer) for v in image_size):
        return [tuple(image_size)] * num_images
    if len(image_size) != num_images:
        raise ValueError(
            f"image_size must be (height, width) or one pair per image ({num_images}), "
            f"got {len(image_size)} entries"
        )
    return list(image_size)
