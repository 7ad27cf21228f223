"""Convert torchvision-style targets/predictions to COCO json, and run pycocotools on them.

torchvision convention (what the rest of the course uses), one dict per image:

* target: ``"boxes"`` (Tensor[N, 4], x1 y1 x2 y2), ``"labels"`` (Tensor[N] int64), optional
  ``"iscrowd"`` (Tensor[N] int/bool), ``"area"`` (Tensor[N] float) and ``"masks"``
  (Tensor[N, H, W] uint8/bool, 1 = the object's pixels);
* prediction: ``"boxes"``, ``"labels"`` and ``"scores"`` (Tensor[N] float), optional
  ``"masks"``: Tensor[N, H, W] binary (uint8/bool, nonzero = object) or Tensor[N, 1, H, W]
  probabilities (float), which count as object where ``> 0.5`` (as torchvision's COCO
  evaluation reference does with Mask R-CNN's output).

COCO convention (what ``pycocotools`` reads): boxes are ``[x, y, width, height]`` lists of
floats, every annotation has an ``id`` (starting at 1), an ``image_id`` and a ``category_id``.
Masks are stored as ``"segmentation"``: compressed run-length encoding (RLE), a dict
``{"size": [H, W], "counts": str}`` made by ``pycocotools.mask.encode`` (``masks_to_rle``).

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


def masks_to_rle(masks: torch.Tensor) -> list[dict]:
    """Encode masks as COCO's compressed run-length encoding (RLE), ready for json.

    Args:
        masks (Tensor[N, H, W] or Tensor[N, 1, H, W]): binary masks (bool or integer,
            nonzero = object) or probabilities (float, object where ``> 0.5``).

    Returns:
        list of N dicts ``{"size": [H, W], "counts": str}`` (what ``pycocotools.mask.encode``
        makes, with the bytes of ``counts`` decoded to str).

    Raises:
        ValueError: if ``masks`` does not have shape (N, H, W) or (N, 1, H, W).
    """
    from pycocotools import mask as mask_utils

    masks = torch.as_tensor(masks).detach().cpu()
    if masks.dim() == 4 and masks.shape[1] == 1:
        masks = masks[:, 0]  # (N, 1, H, W) -> (N, H, W)
    if masks.dim() != 3:
        raise ValueError(f"masks must have shape (N, H, W) or (N, 1, H, W), got "
                         f"{tuple(masks.shape)}")
    binary = masks > 0.5 if masks.is_floating_point() else masks != 0  # (N, H, W) bool
    if len(binary) == 0:
        return []
    # pycocotools wants (H, W, N) uint8 in Fortran (column-major) order: RLE runs down columns
    fortran = np.asfortranarray(binary.numpy().transpose(1, 2, 0).astype(np.uint8))
    rles = mask_utils.encode(fortran)
    return [{"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}
            for rle in rles]


def to_coco_gt(
    targets: Sequence[dict],
    image_size: tuple[int, int] | Sequence[tuple[int, int]] | None = None,
    category_ids: Iterable[int] | None = None,
    *,
    segmentation: bool = True,
) -> dict:
    """Build a COCO ground-truth json dict from torchvision-style targets.

    Args:
        targets: one dict per image with ``"boxes"`` (Tensor[N, 4], xyxy), ``"labels"``
            (Tensor[N] int64) and optionally ``"iscrowd"`` (Tensor[N]), ``"area"``
            (Tensor[N]; when missing the area is the box ``w * h``, also when there are masks:
            pass the masks' pixel counts to have COCO's size groups follow the masks) and
            ``"masks"`` (Tensor[N, H, W]).
        image_size: optional ``(height, width)`` for every image, or a list with one per
            image. pycocotools does not need it for boxes; when given, images get
            ``"height"`` and ``"width"``. Images with masks get them from the masks.
        category_ids: the category ids to list in ``"categories"``. Default: the labels that
            occur in ``targets``. Pass the labels of the predictions too to evaluate exactly
            the categories ``metrics.coco_evaluate`` evaluates (see ``pycocotools_evaluate``).
        segmentation: encode ``"masks"`` (when a target has them) as ``"segmentation"``;
            ``False`` leaves them out (box evaluation does not need them).

    Returns:
        dict: ``{"images": [...], "annotations": [...], "categories": [...]}``. Image ``i``
        has id ``i + 1``; annotation ids run from 1 in image order; ``category_id`` is the
        label; ``bbox`` is ``[x, y, w, h]`` floats; ``iscrowd`` is 0 or 1; with masks,
        ``segmentation`` is an RLE dict (see ``masks_to_rle``).

    Raises:
        ValueError: if a field has the wrong shape, or masks disagree with ``image_size``.
    """
    sizes = _image_sizes(image_size, len(targets))
    images, annotations, labels_seen = [], [], set()
    for i, target in enumerate(targets):
        image = {"id": i + 1}
        if sizes is not None:
            image["height"], image["width"] = int(sizes[i][0]), int(sizes[i][1])
        rles = None
        if segmentation and "masks" in target:
            rles = _masks_rle(target["masks"], f"targets[{i}]['masks']",
                              len(target["labels"]), image.get("height"), image.get("width"))
            image["height"], image["width"] = _mask_size(target["masks"])
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
            if rles is not None:
                annotations[-1]["segmentation"] = rles[j]
            labels_seen.add(int(labels[j]))

    ids = sorted(labels_seen if category_ids is None else {int(c) for c in category_ids})
    categories = [{"id": c, "name": str(c)} for c in ids]
    return {"images": images, "annotations": annotations, "categories": categories}


def to_coco_dt(preds: Sequence[dict], iou_type: str | None = None) -> list[dict]:
    """Build a COCO results list from torchvision-style predictions.

    Args:
        preds: one dict per image with ``"labels"`` (Tensor[D] int64), ``"scores"``
            (Tensor[D]) and ``"boxes"`` (Tensor[D, 4], xyxy) and/or ``"masks"``
            (Tensor[D, H, W] binary or Tensor[D, 1, H, W] probabilities, see
            ``masks_to_rle``).
        iou_type: which fields to write: ``"bbox"`` (boxes only), ``"segm"`` (masks only, as
            COCO segmentation results are: ``COCO.loadRes`` then takes each result's box and
            area from its mask; given a ``"bbox"`` it would use the box area instead), or
            ``None`` (default): ``"bbox"`` when there are boxes and ``"segmentation"`` when
            there are masks.

    Returns:
        list of ``{"image_id", "category_id", "bbox", "segmentation", "score"}`` dicts (the
        fields chosen by ``iou_type``), image by image (image ``i`` has id ``i + 1``),
        detections in their original order within an image.

    Raises:
        ValueError: if a field has the wrong shape, or ``iou_type`` asks for a missing one.
    """
    if iou_type not in (None, "bbox", "segm"):
        raise ValueError(f"iou_type must be None, 'bbox' or 'segm', got {iou_type!r}")
    results = []
    for i, pred in enumerate(preds):
        scores = _check_vector(pred["scores"], f"preds[{i}]['scores']")
        num = len(scores)
        labels = _check_vector(pred["labels"], f"preds[{i}]['labels']", num).tolist()
        scores = scores.astype(np.float64).tolist()
        want_boxes = iou_type == "bbox" or (iou_type is None and "boxes" in pred)
        want_masks = iou_type == "segm" or (iou_type is None and "masks" in pred)
        if not (want_boxes or want_masks):
            raise ValueError(f"preds[{i}] needs 'boxes' or 'masks'")
        for key, wanted in (("boxes", want_boxes), ("masks", want_masks)):
            if wanted and key not in pred:
                raise ValueError(f"preds[{i}] has no {key!r}, which iou_type={iou_type!r} needs")
        xywh = boxes_to_coco_xywh(pred["boxes"]) if want_boxes else None  # (D, 4) float64
        if xywh is not None and len(xywh) != num:
            raise ValueError(f"preds[{i}]['boxes'] must have shape ({num}, 4), got "
                             f"{tuple(xywh.shape)}")
        rles = _masks_rle(pred["masks"], f"preds[{i}]['masks']", num) if want_masks else None
        for j in range(num):
            result = {"image_id": i + 1, "category_id": int(labels[j])}
            if xywh is not None:
                result["bbox"] = [float(v) for v in xywh[j]]
            if rles is not None:
                result["segmentation"] = rles[j]
            result["score"] = scores[j]
            results.append(result)
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

    With ``iou_type="segm"`` the IoU is that of the masks: every target and prediction needs
    ``"masks"`` of the same (H, W) (predicted probabilities count where ``> 0.5``). The
    predictions go to pycocotools as segmentation results only (no ``"bbox"``), so the area
    of a detection, which decides whether an unmatched one counts in APs/APm/APl, is its mask
    area; the ground truth's area is its ``"area"`` (else the box area), as for boxes.

    When ``preds`` holds no detection at all, ``COCO.loadRes`` cannot be used (it reads
    ``anns[0]``); an empty results ``COCO`` object is built directly instead and ``COCOeval``
    runs unchanged: every number whose area range has ground truth is 0.0, the others -1.0.

    Args:
        targets: one target dict per image (see ``to_coco_gt``).
        preds: one prediction dict per image, same length as ``targets`` (see ``to_coco_dt``).
        iou_type: ``"bbox"`` (box IoU) or ``"segm"`` (mask IoU).

    Returns:
        dict: the 12 keys of ``COCO_STAT_NAMES`` -> float (-1.0 where undefined).

    Raises:
        ValueError: if ``iou_type`` is unknown, the lengths differ or a field is malformed.
        NotImplementedError: ``iou_type="segm"`` with a target or prediction without
            ``"masks"`` (mask IoU from boxes alone is not supported).
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")
    if len(targets) != len(preds):
        raise ValueError(
            f"targets and preds must have one entry per image, got {len(targets)} targets "
            f"and {len(preds)} preds"
        )
    segm = iou_type == "segm"
    if segm:
        for name, items in (("targets", targets), ("preds", preds)):
            for i, item in enumerate(items):
                if "masks" not in item:
                    raise NotImplementedError(
                        f"iou_type='segm' needs 'masks' in every target and prediction; "
                        f"{name}[{i}] has none (mask IoU from boxes alone is not supported)")
        for i, (target, pred) in enumerate(zip(targets, preds, strict=True)):
            if _mask_size(pred["masks"]) != _mask_size(target["masks"]):
                raise ValueError(
                    f"preds[{i}]['masks'] must be {_mask_size(target['masks'])} like the "
                    f"target's masks, got {tuple(pred['masks'].shape)}")
    labels = set()
    for item in list(targets) + list(preds):
        labels.update(int(c) for c in _check_vector(item["labels"], "labels").tolist())

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints a lot
        coco_gt = COCO()
        coco_gt.dataset = to_coco_gt(targets, category_ids=labels, segmentation=segm)
        coco_gt.createIndex()
        results = to_coco_dt(preds, iou_type=iou_type)
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


def _mask_size(masks) -> tuple[int, int]:
    """(H, W) of masks shaped (N, H, W) or (N, 1, H, W)."""
    shape = tuple(masks.shape)
    if len(shape) not in (3, 4) or (len(shape) == 4 and shape[1] != 1):
        raise ValueError(f"masks must have shape (N, H, W) or (N, 1, H, W), got {shape}")
    return int(shape[-2]), int(shape[-1])


def _masks_rle(masks, name: str, num: int, height=None, width=None) -> list[dict]:
    """``masks_to_rle`` after checking there are ``num`` masks of size (height, width)."""
    size = _mask_size(masks)
    if len(masks) != num or (height is not None and size != (height, width)):
        expected = f"({num}, {height or 'H'}, {width or 'W'})"
        raise ValueError(f"{name} must have shape {expected}, got {tuple(masks.shape)}")
    return masks_to_rle(masks)


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
