"""Detection metrics: precision/recall, average precision, matching, mAP and COCO evaluation.

The lecture's "Object Detection Metrics" section, top to bottom:

1. counts -> precision, recall, F1;
2. detections ranked by score -> precision/recall curve -> average precision (AP);
3. matching detections to ground truth (greedy, best score first);
4. VOC-style mean average precision at one IoU threshold;
5. COCO evaluation (10 IoU thresholds, 3 object sizes, 3 detection budgets): the 12 numbers
   of pycocotools' ``COCOeval.summarize()``, reproduced exactly and vectorised with NumPy.

Shape shorthand: D detections, G ground-truth (GT) boxes, P (detection, GT) pairs, T IoU
thresholds, R recall points, K categories, A area ranges, M max-detection settings.

Boxes are ``(x1, y1, x2, y2)`` float tensors; targets and predictions are lists with one dict
per image: ``{"boxes": Tensor[G, 4], "labels": Tensor[G]}`` (+ ``"scores": Tensor[D]`` for
predictions, optional ``"iscrowd"`` and ``"area"`` for targets). COCO mask evaluation
(``iou_type="segm"``) reads ``"masks"`` (Tensor[G, H, W]) instead of ``"boxes"``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from course_lib.boxes import as_boxes, box_iou
from course_lib.coco_format import COCO_STAT_NAMES, boxes_to_coco_xywh

AP_METHODS = ("all", "voc11", "coco101")

# pycocotools' parameters (cocoeval.Params.setDetParams), built the same way so the floats match.
COCO_IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)  # (T,) 0.5, 0.55, ..., 0.95
COCO_RECALL_POINTS = np.linspace(0.0, 1.0, 101)  # (R,) 0, 0.01, ..., 1
COCO_AREA_RANGES = np.array(  # (A, 2) [min, max] box area, both ends included
    [[0.0, 1e10], [0.0, 32.0**2], [32.0**2, 96.0**2], [96.0**2, 1e10]]
)  # all, small, medium, large
COCO_MAX_DETS = (1, 10, 100)  # (M,) detections per image and category that count

# ============================================================ 1. precision, recall, F1


def precision_recall(num_tp: int, num_fp: int, num_fn: int) -> tuple[float, float]:
    """Precision ``TP / (TP + FP)`` and recall ``TP / (TP + FN)`` from counts.

    Args:
        num_tp: true positives (detections that match a GT box).
        num_fp: false positives (detections that match nothing).
        num_fn: false negatives (GT boxes no detection matched).

    Returns:
        ``(precision, recall)`` as floats; a ratio whose denominator is 0 is 0.0.

    Raises:
        ValueError: if a count is negative or not a whole number.
    """
    tp, fp, fn = _count(num_tp, "num_tp"), _count(num_fp, "num_fp"), _count(num_fn, "num_fn")
    precision = tp / (tp + fp) if tp + fp > 0 else 0.0
    recall = tp / (tp + fn) if tp + fn > 0 else 0.0
    return precision, recall


def f1_score(precision: float, recall: float) -> float:
    """Harmonic mean of precision and recall: ``2 * p * r / (p + r)`` (0.0 when both are 0).

    Args:
        precision: a precision in [0, 1].
        recall: a recall in [0, 1].

    Returns:
        float: the F1 score.

    Raises:
        ValueError: if precision or recall is outside [0, 1].
    """
    p, r = float(precision), float(recall)
    for value, name in ((p, "precision"), (r, "recall")):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value}")
    return 2 * p * r / (p + r) if p + r > 0 else 0.0


# ============================================================ 2. PR curve and AP


def precision_recall_curve(
    scores: torch.Tensor, is_tp: torch.Tensor, num_gt: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Precision and recall after each detection, detections ranked by score.

    Detections are sorted by score, highest first (a stable sort: equal scores keep their
    input order); after the ``i``-th one, precision = TP so far / ``i + 1`` and
    recall = TP so far / ``num_gt``.

    Args:
        scores (Tensor[D]): detection scores.
        is_tp (Tensor[D] bool): whether each detection is a true positive.
        num_gt (int): number of GT boxes (recall is 0 everywhere when it is 0).

    Returns:
        precision (Tensor[D] float64), recall (Tensor[D] float64), thresholds (Tensor[D]):
        the scores in ranked order, on the device of ``scores``.

    Raises:
        ValueError: bad shapes, ``num_gt < 0`` or more true positives than GT boxes.
    """
    scores = torch.as_tensor(scores)
    is_tp = torch.as_tensor(is_tp, device=scores.device).to(torch.bool)
    if scores.dim() != 1 or is_tp.shape != scores.shape:
        raise ValueError(
            "scores and is_tp must be 1-D with the same length, got "
            f"{tuple(scores.shape)} and {tuple(is_tp.shape)}"
        )
    num_gt = _count(num_gt, "num_gt")
    if int(is_tp.sum()) > num_gt:
        raise ValueError(f"is_tp has {int(is_tp.sum())} true positives but num_gt={num_gt}")

    order = torch.argsort(scores, descending=True, stable=True)  # (D,) best first
    tp = torch.cumsum(is_tp[order].to(torch.float64), dim=0)  # (D,) TP among the first i+1
    fp = torch.cumsum((~is_tp[order]).to(torch.float64), dim=0)  # (D,) FP among the first i+1
    precision = tp / (tp + fp)
    recall = tp / num_gt if num_gt > 0 else torch.zeros_like(tp)
    return precision, recall, scores[order]


def average_precision(precision, recall, method: str = "all") -> float:
    """Area under a precision/recall curve (the AP of one class).

    The points must be in ranked order (recall non-decreasing), as
    ``precision_recall_curve`` returns them. All methods first replace each precision by
    the best precision at that recall or higher (the *envelope*, so the curve never goes up).

    * ``"all"`` (PASCAL VOC 2010+): every point counts; AP = sum over points of
      (recall step) x envelope.
    * ``"voc11"`` (PASCAL VOC 2007): mean, over the 11 recall levels r = 0, 0.1, ..., 1
      (exact decimals), of the best precision at recall >= r (0 if recall never reaches r).
    * ``"coco101"`` (pycocotools): mean over the 101 recall levels
      ``np.linspace(0, 1, 101)`` of the envelope at the first point with recall >= r
      (``np.searchsorted(recall, r, side="left")``), 0 where recall never reaches r.

    Args:
        precision (Tensor[D] or sequence): precision after each ranked detection.
        recall (Tensor[D] or sequence): recall after each ranked detection, in [0, 1].
        method: ``"all"``, ``"voc11"`` or ``"coco101"``.

    Returns:
        float: the AP (0.0 for an empty curve).

    Raises:
        ValueError: unknown method, different lengths, values outside [0, 1] or a
            decreasing recall.
    """
    if method not in AP_METHODS:
        raise ValueError(f"method must be one of {AP_METHODS}, got {method!r}")
    p, r = _curve(precision, "precision"), _curve(recall, "recall")
    if p.shape != r.shape:
        raise ValueError(f"precision and recall must have the same shape, got {p.shape} and "
                         f"{r.shape}")
    if np.any(np.diff(r) < 0):
        raise ValueError("recall must be non-decreasing (points ranked by score, best first)")
    if len(r) == 0:
        return 0.0

    envelope = np.maximum.accumulate(p[::-1])[::-1]  # (D,) best precision at recall >= r[i]
    if method == "all":
        recall_step = np.diff(r, prepend=0.0)  # (D,) how much recall each point adds
        return float(np.sum(recall_step * envelope))
    if method == "voc11":
        levels = np.arange(11) / 10  # 0.0, 0.1, ..., 1.0
        return float(np.mean([p[r >= level].max() if np.any(r >= level) else 0.0
                              for level in levels]))
    # "coco101": the rule of pycocotools' COCOeval.accumulate
    first = np.searchsorted(r, COCO_RECALL_POINTS, side="left")  # (R,) first point reaching level
    reached = first < len(r)
    return float(np.mean(np.where(reached, envelope[np.minimum(first, len(r) - 1)], 0.0)))


# ============================================================ 3. matching


def match_detections(
    pred_boxes: torch.Tensor,
    pred_scores: torch.Tensor,
    gt_boxes: torch.Tensor,
    iou_threshold: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy matching of detections to GT boxes (one image, one class), best score first.

    Detections are visited by score, highest first (stable: equal scores keep their input
    order). Each takes, among the GT boxes not matched yet with IoU >= ``iou_threshold``, the
    one with the highest IoU (the first one on equal IoU); if there is none it is a false
    positive. The lecture writes "IoU > 0.5"; we use ``>=`` like pycocotools, which only
    differs when an IoU equals the threshold exactly.

    Args:
        pred_boxes (Tensor[D, 4]): detections in ``(x1, y1, x2, y2)`` format.
        pred_scores (Tensor[D]): detection scores.
        gt_boxes (Tensor[G, 4]): GT boxes in ``(x1, y1, x2, y2)`` format.
        iou_threshold (float): minimum IoU for a match.

    Returns:
        is_tp (Tensor[D] bool), matched_gt (Tensor[D] int64): in the ORIGINAL detection
        order; ``matched_gt[i]`` is the index of the GT box detection ``i`` matched, or -1.
    """
    pred_boxes = as_boxes(pred_boxes, "pred_boxes")
    gt_boxes = as_boxes(gt_boxes, "gt_boxes")
    if pred_scores.dim() != 1 or pred_scores.shape[0] != pred_boxes.shape[0]:
        raise ValueError(f"pred_scores must have shape ({pred_boxes.shape[0]},), got "
                         f"{tuple(pred_scores.shape)}")
    num_dets, num_gt = pred_boxes.shape[0], gt_boxes.shape[0]
    is_tp = torch.zeros(num_dets, dtype=torch.bool)
    matched_gt = torch.full((num_dets,), -1, dtype=torch.int64)
    if num_dets > 0 and num_gt > 0:
        ious = box_iou(pred_boxes, gt_boxes).cpu()  # (D, G)
        gt_taken = torch.zeros(num_gt, dtype=torch.bool)
        for d in torch.argsort(pred_scores, descending=True, stable=True).tolist():
            close_enough = ious[d] >= iou_threshold  # (G,) (False for nan: two empty boxes)
            # IoU with every GT still free and close enough, -1 for the others.
            candidates = torch.where(~gt_taken & close_enough, ious[d], -1.0)  # (G,)
            best = int(torch.argmax(candidates))  # first GT with the highest IoU
            if candidates[best] < 0:
                continue  # no free GT overlaps enough: false positive
            gt_taken[best] = True
            is_tp[d] = True
            matched_gt[d] = best
    return is_tp.to(pred_boxes.device), matched_gt.to(pred_boxes.device)


# ============================================================ 4. VOC-style mAP


def mean_average_precision(
    preds: Sequence[dict],
    targets: Sequence[dict],
    iou_threshold: float = 0.5,
    method: str = "all",
) -> dict:
    """Mean average precision at one IoU threshold (PASCAL VOC style, lecture's mAP@0.5).

    For each class: match its detections to its GT boxes image by image
    (``match_detections``), pool the detections of all images, rank them by score (stable:
    ties keep image order, then detection order) and compute the AP with ``method``. The mAP
    is the mean AP over the classes that have at least one GT box; classes that only occur
    in ``preds`` are left out (their AP is undefined). A class with GT but no detection has
    AP 0. This simple version has no "crowd"/"difficult" handling: every GT box counts, any
    ``"iscrowd"`` key is ignored (``coco_evaluate`` handles crowds).

    Args:
        preds: one dict per image: ``"boxes"`` (Tensor[D, 4]), ``"scores"`` (Tensor[D]),
            ``"labels"`` (Tensor[D] int64).
        targets: one dict per image: ``"boxes"`` (Tensor[G, 4]), ``"labels"`` (Tensor[G]).
        iou_threshold: minimum IoU for a match.
        method: AP method, see ``average_precision``.

    Returns:
        ``{"map": float, "per_class": {label: ap}}``; ``"map"`` is ``nan`` when no class has
        GT.
    """
    if method not in AP_METHODS:
        raise ValueError(f"method must be one of {AP_METHODS}, got {method!r}")
    if len(preds) != len(targets):
        raise ValueError(f"preds and targets must have one entry per image, got {len(preds)} "
                         f"and {len(targets)}")
    scores, hits, num_gt = {}, {}, {}  # per label: list of Tensor[D_i], list of Tensor[D_i], int
    for pred, target in zip(preds, targets, strict=True):
        pred_labels, gt_labels = pred["labels"], target["labels"]
        for label in torch.cat([pred_labels.cpu(), gt_labels.cpu()]).unique().tolist():
            p_mask, g_mask = pred_labels == label, gt_labels == label
            is_tp, _ = match_detections(pred["boxes"][p_mask], pred["scores"][p_mask],
                                        target["boxes"][g_mask], iou_threshold)
            scores.setdefault(label, []).append(pred["scores"][p_mask].cpu())
            hits.setdefault(label, []).append(is_tp.cpu())
            num_gt[label] = num_gt.get(label, 0) + int(g_mask.sum())

    per_class = {}
    for label in sorted(num_gt):
        if num_gt[label] == 0:
            continue  # class only in preds: AP undefined, left out of the mean
        precision, recall, _ = precision_recall_curve(
            torch.cat(scores[label]), torch.cat(hits[label]), num_gt[label])
        per_class[label] = average_precision(precision, recall, method)
    mean_ap = float(np.mean(list(per_class.values()))) if per_class else float("nan")
    return {"map": mean_ap, "per_class": per_class}


# ============================================================ 5. COCO evaluation


def coco_evaluate(
    targets: Sequence[dict], preds: Sequence[dict], iou_type: str = "bbox"
) -> dict[str, float]:
    """The 12 COCO numbers (AP, AP50, ..., ARl) of pycocotools, computed with NumPy.

    Gives ``COCOeval(...).stats`` of pycocotools (to 1e-9; tested) on the same data, several
    times faster (``benchmarks/bench_metrics.py``). The rules, exactly as pycocotools:

    * every (image, category) *cell* is evaluated on its own; a cell keeps its 100 (the
      largest max-detections setting) best-scoring detections;
    * a GT box is *ignored* for an area range when it is a crowd or its area is outside the
      range (``area < min or area > max``); GT area is the target ``"area"`` when given, else
      the box ``w * h``; detection area is ``w * h``;
    * matching at IoU threshold t: detections best score first; each takes the free GT
      with the highest IoU >= t, preferring regular GT over ignored GT (on equal IoU the
      later GT); a crowd GT stays free (it can absorb many detections) and its IoU is
      intersection / detection area;
    * a detection matched to an ignored GT is ignored; an unmatched detection whose area is
      outside the range is ignored;
    * per category, area range and max-detections m: detections of all images (the first m of
      each cell) ranked by score; precision envelope sampled at 101 recall levels; -1 where a
      category has no regular GT; AP and AR average over the categories that are not -1.

    **Masks** (``iou_type="segm"``, pycocotools' ``iouType="segm"``): the same rules with the
    IoU of the masks (pixels in both / pixels in either; a crowd GT: pixels in both / pixels
    of the detection) and the areas of the masks: a detection's area is its pixel count (what
    ``COCO.loadRes`` gives segmentation results), a GT's area its ``"area"`` when given, else
    its pixel count (COCO's annotations store the mask area there). The mask IoU is computed
    here exactly, by counting pixels (a matrix product of the flattened 0/1 masks), not with
    pycocotools' run-length code; both give the same integer counts, hence the same floats
    (tested against ``pycocotools.mask.iou``). Boxes are not needed.

    Images are those of ``targets`` (image ``i`` is COCO image ``i + 1``); the categories are
    the union of the labels of ``targets`` and ``preds``, like
    ``coco_format.pycocotools_evaluate`` (a category without GT is -1 and changes nothing).

    Args:
        targets: one dict per image: ``"boxes"`` (Tensor[G, 4], xyxy; ``"bbox"``) or
            ``"masks"`` (Tensor[G, H, W] uint8/bool, nonzero = object; ``"segm"``),
            ``"labels"`` (Tensor[G] int64), optional ``"iscrowd"`` (Tensor[G]) and ``"area"``
            (Tensor[G]).
        preds: one dict per image (same length): ``"boxes"`` (Tensor[D, 4]; ``"bbox"``) or
            ``"masks"`` (``"segm"``: Tensor[D, H, W] binary, or Tensor[D, 1, H, W] or
            Tensor[D, H, W] float probabilities, object where ``> 0.5`` as in torchvision's
            COCO evaluation; the same (H, W) as the target's masks), ``"labels"``
            (Tensor[D]), ``"scores"`` (Tensor[D]).
        iou_type: ``"bbox"`` (box IoU) or ``"segm"`` (mask IoU).

    Returns:
        dict: AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ARs, ARm, ARl -> float
        (-1.0 where undefined, e.g. no GT in that size range).
    """
    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")
    if len(targets) != len(preds):
        raise ValueError(f"targets and preds must have one entry per image, got {len(targets)} "
                         f"and {len(preds)}")

    # --- Step 1: one flat table of GT boxes and one of detections (one row per box).
    gt_pixels = dt_pixels = overlaps = None  # "segm": the masks' pixel counts, per image
    if iou_type == "segm":
        gt_pixels, dt_pixels, overlaps = _mask_pixel_counts(targets, preds)
    gt = _flatten(targets, "targets", is_pred=False, mask_pixels=gt_pixels)
    dt = _flatten(preds, "preds", is_pred=True, mask_pixels=dt_pixels)
    category_ids = np.union1d(gt["label"], dt["label"])  # (K,) sorted
    num_cats = len(category_ids)
    gt_cell = gt["image"] * num_cats + np.searchsorted(category_ids, gt["label"])  # (G,)
    dt_cell = dt["image"] * num_cats + np.searchsorted(category_ids, dt["label"])  # (D,)

    # --- Step 2: sort GT by cell (keeping their order inside a cell); sort detections by cell,
    # then score (best first, stable), and keep the first 100 of each cell.
    gt_order = np.argsort(gt_cell, kind="stable")
    gt = {key: value[gt_order] for key, value in gt.items()}
    gt_cell = gt_cell[gt_order]
    dt_order = np.lexsort((-dt["score"], dt_cell))  # stable: ties keep the input order
    dt_cell = dt_cell[dt_order]
    dt_rank = np.arange(len(dt_cell)) - np.searchsorted(dt_cell, dt_cell)  # (D,) 0 = best in cell
    keep = dt_rank < COCO_MAX_DETS[-1]
    dt = {key: value[dt_order][keep] for key, value in dt.items()}
    dt_cell, dt_rank = dt_cell[keep], dt_rank[keep]

    # --- Step 3: IoU of every (detection, GT) pair of the same cell. Only this step depends
    # on iou_type. Pairs below the lowest threshold can never match: drop them.
    pair_dt, pair_gt = _cell_pairs(dt_cell, gt_cell)  # (P,), (P,)
    if iou_type == "bbox":
        pair_iou = _bbox_iou_pairs(dt["xywh"][pair_dt], gt["xywh"][pair_gt],
                                   gt["crowd"][pair_gt])
    else:
        pair_iou = _mask_iou_pairs(overlaps, dt["image"][pair_dt], dt["index"][pair_dt],
                                   gt["index"][pair_gt], dt["pixels"][pair_dt],
                                   gt["pixels"][pair_gt], gt["crowd"][pair_gt])
    close = pair_iou >= COCO_IOU_THRESHOLDS[0]
    pair_dt, pair_gt, pair_iou = pair_dt[close], pair_gt[close], pair_iou[close]

    # --- Step 4: which GT is ignored for which area range, then the greedy matching.
    gt_ignore = gt["crowd"][:, None] | _outside(gt["area"])  # (G, A)
    dt_match = _coco_match(dt_rank, gt["crowd"], gt_ignore, pair_dt, pair_gt, pair_iou)
    matched = dt_match >= 0  # (D, T, A)
    if len(gt_ignore) > 0:  # matched to an ignored GT -> ignored; unmatched and outside -> ignored
        match_ignored = gt_ignore[np.maximum(dt_match, 0), np.arange(len(COCO_AREA_RANGES))]
        dt_ignore = np.where(matched, match_ignored, _outside(dt["area"])[:, None, :])
    else:
        dt_ignore = np.broadcast_to(_outside(dt["area"])[:, None, :], matched.shape)
    tp = matched & ~dt_ignore  # (D, T, A)
    fp = ~matched & ~dt_ignore  # (D, T, A)

    # --- Step 5: precision/recall per category, area range and max-detections setting.
    gt_cat = np.searchsorted(category_ids, gt["label"])
    num_gt = np.zeros((num_cats, len(COCO_AREA_RANGES)), dtype=np.int64)  # (K, A) regular GT
    np.add.at(num_gt, gt_cat, (~gt_ignore).astype(np.int64))
    dt_cat = np.searchsorted(category_ids, dt["label"])
    precision, recall = _coco_accumulate(dt_cat, dt["image"], dt_rank, dt["score"], tp, fp,
                                         num_gt)

    # --- Step 6: the 12 summary numbers.
    return _coco_summarize(precision, recall)


def _flatten(
    items: Sequence[dict], name: str, is_pred: bool, mask_pixels: list[np.ndarray] | None = None
) -> dict[str, np.ndarray]:
    """All boxes (or masks) of all images as flat arrays (one row per object), in COCO terms.

    Args:
        items: the targets or the predictions, one dict per image.
        name: ``"targets"`` or ``"preds"``, for error messages.
        is_pred: predictions (with scores) or targets (with crowds and areas).
        mask_pixels: ``None`` for boxes; for masks, each image's mask areas (ndarray[N_i]),
            which then give the number of objects and the areas, and no boxes are read.

    Returns:
        dict with ``"image"`` (N,) int64 image index, ``"index"`` (N,) int64 row in its
        image, ``"label"`` (N,) int64, ``"area"`` (N,) float64 (for the size ranges),
        ``"xywh"`` (N, 4) float64 (boxes) or ``"pixels"`` (N,) float64 (masks: the mask
        area, which a target's ``"area"`` does not replace), and ``"score"`` (N,) float64
        (predictions) or ``"crowd"`` (N,) bool (targets).
    """
    boxes, counts, labels, extra, given_area = [], [], [], [], []
    for i, item in enumerate(items):
        if mask_pixels is None:
            b = as_boxes(item["boxes"], f"{name}[{i}]['boxes']").cpu()
            boxes.append(b)
            n = b.shape[0]
        else:
            n = len(mask_pixels[i])
        counts.append(n)
        labels.append(_vector(item["labels"], f"{name}[{i}]['labels']", n))
        if is_pred:
            extra.append(_vector(item["scores"], f"{name}[{i}]['scores']", n))
        else:
            crowd = item.get("iscrowd")
            extra.append(torch.zeros(n) if crowd is None
                         else _vector(crowd, f"{name}[{i}]['iscrowd']", n))
            area = item.get("area")
            given_area.append(torch.full((n,), float("nan")) if area is None
                              else _vector(area, f"{name}[{i}]['area']", n))
    table = {
        "image": np.repeat(np.arange(len(items), dtype=np.int64), counts),
        "index": (np.concatenate([np.arange(n, dtype=np.int64) for n in counts]) if counts
                  else np.zeros(0, dtype=np.int64)),
        "label": _cat(labels, torch.int64).numpy(),
    }
    if mask_pixels is None:
        xywh = boxes_to_coco_xywh(_cat(boxes, torch.float64).reshape(-1, 4))  # the json's floats
        table["xywh"] = xywh  # (N, 4)
        table["area"] = xywh[:, 2] * xywh[:, 3]
    else:
        table["pixels"] = np.concatenate(mask_pixels) if mask_pixels else np.zeros(0)
        table["area"] = table["pixels"]
    if is_pred:
        table["score"] = _cat(extra, torch.float64).numpy()
    else:
        table["crowd"] = _cat(extra, torch.float64).numpy() != 0
        area = _cat(given_area, torch.float64).numpy()
        table["area"] = np.where(np.isnan(area), table["area"], area)  # target "area" wins
    return table


def _mask_pixel_counts(
    targets: Sequence[dict], preds: Sequence[dict]
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """Pixel counts of each image's masks and of their pairwise intersections.

    Binary masks (bool or integer) are objects where nonzero; float masks are probabilities,
    objects where ``> 0.5``. Predicted masks may be (D, 1, H, W) (Mask R-CNN's output). One
    image at a time, so only its masks are in memory: everything later needs only the counts.

    Returns:
        gt_pixels, dt_pixels, overlaps: per image, ndarray[G_i] and ndarray[D_i] mask areas
        and ndarray[D_i, G_i] intersections (pixels in both masks), all float64.

    Raises:
        ValueError: a missing ``"masks"``, a wrong shape, or predicted masks whose (H, W)
            differs from the target's.
    """
    def flat(item, name):  # (N, H, W) or (N, 1, H, W) -> (N, H*W) 0/1 floats, and (H, W)
        if "masks" not in item:
            raise ValueError(f"{name} has no 'masks', which iou_type='segm' needs")
        masks = torch.as_tensor(item["masks"]).detach().cpu()
        if masks.dim() == 4 and masks.shape[1] == 1:
            masks = masks[:, 0]
        if masks.dim() != 3:
            raise ValueError(f"{name}['masks'] must have shape (N, H, W) or (N, 1, H, W), got "
                             f"{tuple(item['masks'].shape)}")
        binary = masks > 0.5 if masks.is_floating_point() else masks != 0
        # Pixel counts are whole numbers: float32 sums of 0/1 are exact up to 2^24 pixels.
        count_dtype = torch.float32 if masks.shape[1] * masks.shape[2] <= 2**24 else torch.float64
        return binary.flatten(start_dim=1).to(count_dtype), tuple(masks.shape[1:])

    gt_pixels, dt_pixels, overlaps = [], [], []
    for i, (target, pred) in enumerate(zip(targets, preds, strict=True)):
        gt, gt_size = flat(target, f"targets[{i}]")  # (G_i, H*W)
        dt, dt_size = flat(pred, f"preds[{i}]")  # (D_i, H*W)
        if dt_size != gt_size:
            raise ValueError(f"preds[{i}]['masks'] must be {gt_size} like the target's masks, "
                             f"got {tuple(pred['masks'].shape)}")
        dt = dt.to(gt.dtype)
        gt_pixels.append(gt.sum(dim=1).double().numpy())
        dt_pixels.append(dt.sum(dim=1).double().numpy())
        overlaps.append((dt @ gt.T).double().numpy())  # (D_i, G_i) pixels in both
    return gt_pixels, dt_pixels, overlaps


def _cell_pairs(dt_cell: np.ndarray, gt_cell: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every (detection, GT) pair that shares a cell; both inputs sorted by cell.

    Returns:
        pair_dt (P,), pair_gt (P,): ordered by detection, then GT index.
    """
    first = np.searchsorted(gt_cell, dt_cell, side="left")  # (D,) first GT of each det's cell
    count = np.searchsorted(gt_cell, dt_cell, side="right") - first  # (D,) GT in that cell
    pair_dt = np.repeat(np.arange(len(dt_cell)), count)  # (P,)
    within = np.arange(len(pair_dt)) - np.repeat(np.cumsum(count) - count, count)  # 0..count-1
    return pair_dt, np.repeat(first, count) + within


def _bbox_iou_pairs(dt_xywh: np.ndarray, gt_xywh: np.ndarray, gt_crowd: np.ndarray) -> np.ndarray:
    """IoU of paired (x, y, w, h) boxes, with the same float operations as pycocotools' C code.

    For a crowd GT the union is replaced by the detection's own area, so a detection inside
    a crowd region has IoU 1 however large the region is.

    Args:
        dt_xywh (ndarray[P, 4] float64): detection of each pair, ``(x, y, w, h)``.
        gt_xywh (ndarray[P, 4] float64): GT of each pair, ``(x, y, w, h)``.
        gt_crowd (ndarray[P] bool): whether the pair's GT is a crowd region.

    Returns:
        ndarray[P] float64.
    """
    dx, dy, dw, dh = dt_xywh.T
    gx, gy, gw, gh = gt_xywh.T
    w = np.minimum(dw + dx, gw + gx) - np.maximum(dx, gx)  # (P,) intersection width
    h = np.minimum(dh + dy, gh + gy) - np.maximum(dy, gy)  # (P,) intersection height
    overlap = (w > 0) & (h > 0)
    inter = w * h
    dt_area, gt_area = dw * dh, gw * gh
    union = np.where(gt_crowd, dt_area, dt_area + gt_area - inter)
    iou = np.zeros(len(w))
    iou[overlap] = inter[overlap] / union[overlap]
    return iou


def _mask_iou_pairs(
    overlaps: list[np.ndarray],
    pair_image: np.ndarray,
    pair_dt_index: np.ndarray,
    pair_gt_index: np.ndarray,
    dt_pixels: np.ndarray,
    gt_pixels: np.ndarray,
    gt_crowd: np.ndarray,
) -> np.ndarray:
    """IoU of paired masks from pixel counts, as pycocotools' ``maskUtils.iou``.

    ``intersection / union``, or ``intersection / detection area`` for a crowd GT; 0 when the
    masks do not intersect (also for empty masks). pycocotools counts the same pixels from
    run-length codes and divides the same integers in double precision: the same floats.

    Args:
        overlaps (list[ndarray[D_i, G_i]]): each image's intersections (pixels in both).
        pair_image (ndarray[P]): the image of each (detection, GT) pair.
        pair_dt_index (ndarray[P]): the detection's row in its image.
        pair_gt_index (ndarray[P]): the GT's row in its image.
        dt_pixels (ndarray[P]): the detection mask's area.
        gt_pixels (ndarray[P]): the GT mask's area.
        gt_crowd (ndarray[P] bool): whether the pair's GT is a crowd region.

    Returns:
        ndarray[P] float64.
    """
    inter = np.zeros(len(pair_image))  # (P,) pixels in both masks
    for image in np.unique(pair_image):
        pairs = np.flatnonzero(pair_image == image)
        inter[pairs] = overlaps[image][pair_dt_index[pairs], pair_gt_index[pairs]]
    union = np.where(gt_crowd, dt_pixels, dt_pixels + gt_pixels - inter)
    iou = np.zeros(len(inter))
    overlap = inter > 0
    iou[overlap] = inter[overlap] / union[overlap]
    return iou


def _outside(area: np.ndarray) -> np.ndarray:
    """(N,) areas -> (N, A) bool: outside each COCO area range (the ends count as inside)."""
    return (area[:, None] < COCO_AREA_RANGES[:, 0]) | (area[:, None] > COCO_AREA_RANGES[:, 1])


def _coco_match(
    dt_rank: np.ndarray,
    gt_crowd: np.ndarray,
    gt_ignore: np.ndarray,
    pair_dt: np.ndarray,
    pair_gt: np.ndarray,
    pair_iou: np.ndarray,
) -> np.ndarray:
    """Greedy matching of pycocotools, for every cell, IoU threshold and area range at once.

    In one cell, for one threshold t and one area range, pycocotools does::

        for each detection, best score first:
            among the free GT (not matched yet, or crowd) with IoU >= t, take the one with
            the highest IoU, looking at regular GT first and at ignored GT only if no
            regular GT qualifies; on equal IoU the later GT wins.

    The detections of one cell must be handled in order, but cells are independent: step r
    handles the r-th detection of every cell at once, with thresholds and area ranges as
    two more array axes. At most 100 steps, each a handful of NumPy operations.

    Args:
        dt_rank (ndarray[D]): rank of each detection in its cell (0 = best score).
        gt_crowd (ndarray[G] bool): crowd regions (always free, IoU = inter / det area).
        gt_ignore (ndarray[G, A] bool): GT ignored in each area range.
        pair_dt (ndarray[P]): detection of each candidate pair (same cell, IoU >= 0.5);
            pairs ordered by detection, then GT.
        pair_gt (ndarray[P]): GT of each candidate pair.
        pair_iou (ndarray[P]): IoU of each candidate pair.

    Returns:
        ndarray[D, T, A] int64: the GT each detection matched, -1 if none.
    """
    num_t, num_a = len(COCO_IOU_THRESHOLDS), len(COCO_AREA_RANGES)
    dt_match = np.full((len(dt_rank), num_t, num_a), -1, dtype=np.int64)
    gt_taken = np.zeros((len(gt_crowd), num_t, num_a), dtype=bool)
    thresholds = COCO_IOU_THRESHOLDS[None, :, None]  # (1, T, 1)
    if len(pair_dt) == 0:
        return dt_match  # no detection overlaps a GT enough

    # Group the pairs by the rank of their detection (stable: still by detection, then GT).
    by_rank = np.argsort(dt_rank[pair_dt], kind="stable")
    pair_dt, pair_gt, pair_iou = pair_dt[by_rank], pair_gt[by_rank], pair_iou[by_rank]
    ranks = dt_rank[pair_dt]
    step_starts = np.flatnonzero(np.diff(ranks, prepend=-1))  # first pair of each rank
    step_stops = np.append(step_starts[1:], len(ranks))
    for start, stop in zip(step_starts, step_stops, strict=True):
        d, g, iou = pair_dt[start:stop], pair_gt[start:stop], pair_iou[start:stop]  # (P_r,)
        new_det = np.r_[True, d[1:] != d[:-1]]
        seg_start = np.flatnonzero(new_det)  # (S,) first pair of each detection
        seg = np.cumsum(new_det) - 1  # (P_r,) which detection a pair belongs to
        iou3 = iou[:, None, None]  # (P_r, 1, 1)

        free = ~gt_taken[g] | gt_crowd[g][:, None, None]  # (P_r, T, A)
        ok = free & (iou3 >= thresholds)  # (P_r, T, A) could match
        regular = ok & ~gt_ignore[g][:, None, :]  # (P_r, T, A)
        has_regular = np.logical_or.reduceat(regular, seg_start, axis=0)  # (S, T, A)
        candidate = np.where(has_regular[seg], regular, ok)  # regular GT first
        best_iou = np.maximum.reduceat(np.where(candidate, iou3, -1.0), seg_start, axis=0)
        candidate &= iou3 == best_iou[seg]
        pair_index = np.arange(len(d))[:, None, None]  # last best pair = later GT on ties
        chosen = np.maximum.reduceat(np.where(candidate, pair_index, -1), seg_start, axis=0)

        s, t, a = np.nonzero(chosen >= 0)  # matched (detection, threshold, area) triples
        p = chosen[s, t, a]
        dt_match[d[p], t, a] = g[p]
        gt_taken[g[p], t, a] = True
    return dt_match


def _coco_accumulate(
    dt_cat: np.ndarray,
    dt_image: np.ndarray,
    dt_rank: np.ndarray,
    dt_score: np.ndarray,
    tp: np.ndarray,
    fp: np.ndarray,
    num_gt: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Precision at 101 recall levels and final recall, as pycocotools' ``accumulate``.

    Args:
        dt_cat (ndarray[D]): category index of each detection.
        dt_image (ndarray[D]): image index of each detection.
        dt_rank (ndarray[D]): rank of each detection in its cell (0 = best score).
        dt_score (ndarray[D]): score of each detection.
        tp (ndarray[D, T, A] bool): true positive (tp and fp both False: ignored).
        fp (ndarray[D, T, A] bool): false positive.
        num_gt (ndarray[K, A] int): regular (not ignored) GT per category and area range.

    Returns:
        precision (ndarray[T, R, K, A, M]), recall (ndarray[T, K, A, M]); -1 where the
        category has no regular GT in that area range.
    """
    num_t, num_k, num_a = tp.shape[1], num_gt.shape[0], tp.shape[2]
    num_r, num_m = len(COCO_RECALL_POINTS), len(COCO_MAX_DETS)
    precision = -np.ones((num_t, num_r, num_k, num_a, num_m))
    recall = -np.ones((num_t, num_k, num_a, num_m))

    # pycocotools concatenates each category's detections image by image (each image's in
    # score order) and then stable-sorts by score: that is a sort by (category, -score,
    # image, rank).
    order = np.lexsort((dt_rank, dt_image, -dt_score, dt_cat))
    for m, max_det in enumerate(COCO_MAX_DETS):
        ranked = order[dt_rank[order] < max_det]  # only the first max_det of each cell count
        bounds = np.searchsorted(dt_cat[ranked], np.arange(num_k + 1))  # category k's slice
        for k in range(num_k):
            rows = ranked[bounds[k]:bounds[k + 1]]  # (n,) ranked detections of category k
            tp_sum = np.cumsum(tp[rows], axis=0).astype(float)  # (n, T, A)
            fp_sum = np.cumsum(fp[rows], axis=0).astype(float)  # (n, T, A)
            for a in np.flatnonzero(num_gt[k] > 0):
                rc = tp_sum[:, :, a] / num_gt[k, a]  # (n, T)
                pr = tp_sum[:, :, a] / (fp_sum[:, :, a] + tp_sum[:, :, a] + np.spacing(1))
                pr = np.maximum.accumulate(pr[::-1], axis=0)[::-1]  # envelope, (n, T)
                recall[:, k, a, m] = rc[-1] if len(rows) else 0.0
                for t in range(num_t):
                    first = np.searchsorted(rc[:, t], COCO_RECALL_POINTS, side="left")  # (R,)
                    reached = first < len(rows)
                    precision[t, :, k, a, m] = 0.0
                    precision[t, reached, k, a, m] = pr[first[reached], t]
    return precision, recall


def _coco_summarize(precision: np.ndarray, recall: np.ndarray) -> dict[str, float]:
    """The 12 numbers of ``COCOeval.summarize()`` from the accumulated arrays."""

    def mean(values: np.ndarray) -> float:  # mean over the defined (> -1) entries
        values = values[values > -1]
        return float(np.mean(values)) if values.size else -1.0

    t50 = np.flatnonzero(COCO_IOU_THRESHOLDS == 0.5)
    t75 = np.flatnonzero(COCO_IOU_THRESHOLDS == 0.75)
    all_, small, medium, large = range(len(COCO_AREA_RANGES))
    m1, m10, m100 = range(len(COCO_MAX_DETS))
    stats = [
        mean(precision[:, :, :, all_, m100]),
        mean(precision[t50][:, :, :, all_, m100]),
        mean(precision[t75][:, :, :, all_, m100]),
        mean(precision[:, :, :, small, m100]),
        mean(precision[:, :, :, medium, m100]),
        mean(precision[:, :, :, large, m100]),
        mean(recall[:, :, all_, m1]),
        mean(recall[:, :, all_, m10]),
        mean(recall[:, :, all_, m100]),
        mean(recall[:, :, small, m100]),
        mean(recall[:, :, medium, m100]),
        mean(recall[:, :, large, m100]),
    ]
    return dict(zip(COCO_STAT_NAMES, stats, strict=True))


# ============================================================ helpers


def _count(value, name: str) -> int:
    value = value.item() if isinstance(value, torch.Tensor) else value
    if isinstance(value, bool) or int(value) != value or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def _curve(values, name: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().to(torch.float64).numpy()
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {values.shape}")
    if not np.all((values >= 0) & (values <= 1)):
        raise ValueError(f"{name} values must be in [0, 1]")
    return values




def _vector(values, name: str, length: int) -> torch.Tensor:
    values = torch.as_tensor(values).cpu()
    if values.shape != (length,):
        raise ValueError(f"{name} must have shape ({length},), got {tuple(values.shape)}")
    return values


def _cat(tensors: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """Concatenate per-image tensors (torch promotes mixed dtypes exactly), then cast."""
    if not tensors:
        return torch.zeros(0, dtype=dtype)
    return torch.cat(tensors).detach().to(dtype)
