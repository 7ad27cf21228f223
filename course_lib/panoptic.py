"""Panoptic segmentation: things and stuff in one map, and its metric, panoptic quality (PQ).

Shape shorthand used in this module:
    H, W        image height and width
    N           predicted instances (things) of one image

*Things* are countable objects (person, car): an instance segmentation model such as Mask R-CNN
finds them one by one. *Stuff* is amorphous (sky, grass, road): a semantic segmentation model
labels it pixel by pixel. A **panoptic segmentation** (Kirillov et al., 2019) gives every pixel
one *segment*: a thing instance or a stuff region (or *void*, "no label").

A panoptic segmentation of one image is a pair ``(panoptic, segments)``:

* ``panoptic`` (Tensor[H, W] int64): the segment id of every pixel, ``0`` = void;
* ``segments``: one dict per segment id used in the map,
  ``{"id": int, "category_id": int, "isthing": bool, "area": int}``.

:func:`panoptic_merge` builds one from a model's instance and semantic outputs (the heuristic of
Panoptic FPN / detectron2); :func:`panoptic_quality` scores it against the ground truth.

**Panoptic quality**, per category: a predicted and a ground-truth segment of that category
*match* when their IoU is strictly greater than 0.5. Since the segments of one map do not
overlap, a segment can have at most one such partner, so the matching is unique without any
search. With TP the matched pairs, FP the unmatched predicted segments and FN the unmatched
ground-truth segments::

    PQ = sum of IoU over TP / (|TP| + |FP| / 2 + |FN| / 2)
       = (sum IoU / |TP|)  x  (|TP| / (|TP| + |FP| / 2 + |FN| / 2))
       =  SQ (segmentation quality)  x  RQ (recognition quality, an F1 score)

Void pixels of the ground truth are not counted: they are left out of every IoU, and a
predicted segment that is mostly (more than half) void in the ground truth is not a false
positive. Over a dataset, TP, FP, FN and the IoU sums are accumulated per category over all
images; PQ, SQ and RQ are then the means of the per-category values over the categories that
occur (TP + FP + FN > 0), and ``PQ_th`` / ``PQ_st`` the means over things / stuff only.
This is what the reference implementation (``panopticapi``'s ``pq_compute``) does, without its
crowd regions.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

# ----------------------------------------------------------------------------- merge


def panoptic_merge(
    semantic: Tensor,
    instances: dict,
    stuff_classes: Iterable[int],
    overlap_threshold: float = 0.5,
    min_area: int = 64,
    *,
    score_threshold: float = 0.0,
) -> tuple[Tensor, list[dict]]:
    """Combine instance masks (things) and a semantic map (stuff) into one panoptic map.

    The heuristic of Panoptic FPN (detectron2's ``combine_semantic_and_instance_outputs``):

    1. things first, best score first: an instance takes the pixels of its mask that are still
       free. It is dropped when more than ``overlap_threshold`` of its mask is already taken
       by better instances (so, at the default 0.5, when less than half of it is visible),
       when its mask is empty, or when its score is below ``score_threshold``;
    2. then stuff: for each stuff class of the semantic map (in increasing class order), its
       pixels that are still free form one segment; a segment smaller than ``min_area``
       pixels is dropped (its pixels stay void). Semantic classes that are not in
       ``stuff_classes`` (e.g. thing classes, or a "things" class 0) give no segment.

    Segment ids are ``1, 2, ...`` in the order the segments are made; 0 is void.

    Args:
        semantic (Tensor[H, W] int64): the semantic segmentation's class of every pixel.
        instances: the instance segmentation of the same image: ``"masks"`` (Tensor[N, H, W]
            bool/uint8, or float probabilities, object where ``> 0.5``; (N, 1, H, W) also),
            ``"scores"`` (Tensor[N]) and ``"labels"`` (Tensor[N] int64, thing classes).
        stuff_classes: the classes of ``semantic`` that are stuff.
        overlap_threshold: largest fraction of an instance's mask that may already be taken.
        min_area: smallest stuff segment, in pixels (64 is detectron2's 4096 scaled from
            800 x 1333 COCO images to the course's 128 x 128 ones).
        score_threshold: instances scoring below it are left out (detectron2: 0.5).

    Returns:
        ``(panoptic, segments)``: Tensor[H, W] int64 segment ids on the device of
        ``semantic``, and one dict ``{"id", "category_id", "isthing", "area"}`` per segment.

    Raises:
        ValueError: on inconsistent shapes, a threshold outside [0, 1], or an instance whose
            label is a stuff class.
    """
    if semantic.dim() != 2:
        raise ValueError(f"semantic must have shape (H, W), got {tuple(semantic.shape)}")
    masks = _binary(instances["masks"], "instances['masks']")  # (N, H, W) bool
    num = masks.shape[0]
    if masks.shape[1:] != semantic.shape:
        raise ValueError(f"instances['masks'] must have shape ({num}, {semantic.shape[0]}, "
                         f"{semantic.shape[1]}) like semantic, got "
                         f"{tuple(instances['masks'].shape)}")
    scores, labels = instances["scores"], instances["labels"]
    for name, values in (("scores", scores), ("labels", labels)):
        if values.shape != (num,):
            raise ValueError(f"instances[{name!r}] must have shape ({num},), got "
                             f"{tuple(values.shape)}")
    if not 0.0 <= overlap_threshold <= 1.0:
        raise ValueError(f"overlap_threshold must be in [0, 1], got {overlap_threshold}")
    stuff = sorted({int(c) for c in stuff_classes})
    if set(labels.tolist()) & set(stuff):
        raise ValueError(f"instance labels {sorted(set(labels.tolist()) & set(stuff))} are also "
                         f"in stuff_classes")

    masks = masks.to(semantic.device)
    panoptic = torch.zeros(semantic.shape, dtype=torch.int64, device=semantic.device)
    segments = []

    # 1. things, best score first (stable: equal scores keep their order)
    for i in torch.argsort(scores, descending=True, stable=True).tolist():
        if scores[i] < score_threshold:
            break
        mask = masks[i]  # (H, W)
        area = int(mask.sum())
        if area == 0:
            continue
        visible = mask & (panoptic == 0)  # (H, W) the part still free
        taken = area - int(visible.sum())
        if taken / area > overlap_threshold or not visible.any():
            continue  # mostly hidden behind better instances
        segment_id = len(segments) + 1
        panoptic[visible] = segment_id
        segments.append({"id": segment_id, "category_id": int(labels[i]), "isthing": True,
                         "area": int(visible.sum())})

    # 2. stuff, in the free pixels
    for category in stuff:
        region = (semantic == category) & (panoptic == 0)  # (H, W)
        area = int(region.sum())
        if area == 0 or area < min_area:
            continue  # too small: stays void
        segment_id = len(segments) + 1
        panoptic[region] = segment_id
        segments.append({"id": segment_id, "category_id": category, "isthing": False,
                         "area": area})
    return panoptic, segments


# ----------------------------------------------------------------------------- quality


def panoptic_quality(pred, gt) -> dict:
    """Panoptic quality (PQ), segmentation quality (SQ) and recognition quality (RQ).

    One image or a dataset: ``pred`` and ``gt`` are each one ``(panoptic, segments)`` pair, or
    a sequence of them (one per image, same length). See the module docstring for the
    definitions. In each image, for every category:

    * a predicted segment ``p`` and a GT segment ``g`` match (a TP) when
      ``IoU = |p & g| / (|p | g| - |p & void|) > 0.5``, where ``void`` are the GT's void
      pixels: the prediction's void pixels are not part of the union;
    * an unmatched GT segment is an FN;
    * an unmatched predicted segment is an FP, unless more than half of it lies on GT void.

    TP, FP, FN and the sum of the TP's IoU add up per category over the images. Then, per
    category, ``SQ = IoU sum / TP`` (0 without TP), ``RQ = TP / (TP + FP / 2 + FN / 2)`` and
    ``PQ = SQ x RQ``; the overall numbers are means over the categories with
    ``TP + FP + FN > 0``.

    Args:
        pred: ``(panoptic, segments)`` of the prediction, or a sequence of them. ``panoptic``
            (Tensor[H, W] int): segment ids, 0 = void; ``segments``: dicts with ``"id"``,
            ``"category_id"`` and ``"isthing"`` (``"area"`` is not read: areas are counted
            in the map). Every id in the map needs a segment and every segment a pixel.
        gt: the ground truth, in the same form.

    Returns:
        dict: ``"PQ"``, ``"SQ"``, ``"RQ"`` (means over all categories), ``"PQ_th"``,
        ``"SQ_th"``, ``"RQ_th"`` (things), ``"PQ_st"``, ``"SQ_st"``, ``"RQ_st"`` (stuff),
        ``"n"``, ``"n_th"``, ``"n_st"`` (how many categories each mean is over; a mean over
        none is ``nan``) and ``"per_class"``: ``{category_id: {"PQ", "SQ", "RQ", "TP", "FP",
        "FN", "IoU", "isthing"}}`` (``"IoU"``: the sum over the TP).

    Raises:
        ValueError: different numbers of images or map shapes, a segment id without a
            segment, a segment without pixels, or a category that is a thing in one place
            and stuff in another.
    """
    preds, gts = _as_images(pred, "pred"), _as_images(gt, "gt")
    if len(preds) != len(gts):
        raise ValueError(f"pred and gt must have the same number of images, got {len(preds)} "
                         f"and {len(gts)}")
    stats: dict[int, dict] = {}  # category -> TP, FP, FN, IoU sum
    isthing: dict[int, bool] = {}
    for i, ((pred_map, pred_segments), (gt_map, gt_segments)) in enumerate(
        zip(preds, gts, strict=True)
    ):
        if pred_map.shape != gt_map.shape:
            raise ValueError(f"pred[{i}] map must have shape {tuple(gt_map.shape)} like the gt, "
                             f"got {tuple(pred_map.shape)}")
        p_info = _segment_table(pred_map, pred_segments, f"pred[{i}]", isthing)
        g_info = _segment_table(gt_map, gt_segments, f"gt[{i}]", isthing)
        _image_stats(pred_map, gt_map, p_info, g_info, stats)
    return _summarize(stats, isthing)


def _image_stats(pred_map: Tensor, gt_map: Tensor, p_info: dict, g_info: dict,
                 stats: dict) -> None:
    """Add one image's TP, FP, FN and IoU sums per category to ``stats``.

    Args:
        pred_map (Tensor[H, W]): predicted segment ids, 0 = void.
        gt_map (Tensor[H, W]): GT segment ids, 0 = void.
        p_info: predicted segment id -> ``(category_id, area)``.
        g_info: GT segment id -> ``(category_id, area)``.
        stats: category -> ``{"TP", "FP", "FN", "IoU"}``, updated in place.
    """
    # Pixel counts of every (gt id, pred id) pair that overlaps, void (id 0) included.
    pairs = torch.stack([gt_map.flatten(), pred_map.flatten()], dim=1).cpu()  # (H*W, 2)
    ids, counts = torch.unique(pairs, dim=0, return_counts=True)  # (K, 2), (K,)
    overlap = {(g, p): c for (g, p), c in zip(ids.tolist(), counts.tolist(), strict=True)}
    on_void = {p: c for (g, p), c in overlap.items() if g == 0}  # pred pixels on gt void

    def count(category):
        return stats.setdefault(category, {"TP": 0, "FP": 0, "FN": 0, "IoU": 0.0})

    matched_pred, matched_gt = set(), set()
    for (g, p), inter in overlap.items():
        if g == 0 or p == 0 or g_info[g][0] != p_info[p][0]:
            continue  # void, or different categories: never a match
        union = p_info[p][1] + g_info[g][1] - inter - on_void.get(p, 0)
        iou = inter / union
        if iou > 0.5:  # strictly: at most one partner per segment
            entry = count(g_info[g][0])
            entry["TP"] += 1
            entry["IoU"] += iou
            matched_pred.add(p)
            matched_gt.add(g)
    for g, (category, _) in g_info.items():
        if g not in matched_gt:
            count(category)["FN"] += 1
    for p, (category, area) in p_info.items():
        if p in matched_pred:
            continue
        if on_void.get(p, 0) / area > 0.5:
            continue  # mostly on unlabelled ground truth: not counted
        count(category)["FP"] += 1


def _summarize(stats: dict, isthing: dict) -> dict:
    """Per-category PQ/SQ/RQ from the counts, and their means (all, things, stuff)."""
    per_class = {}
    for category in sorted(stats):
        s = stats[category]
        tp, fp, fn, iou = s["TP"], s["FP"], s["FN"], s["IoU"]
        if tp + fp + fn == 0:
            continue  # only void-covered predictions: the category does not occur
        sq = iou / tp if tp > 0 else 0.0
        rq = tp / (tp + 0.5 * fp + 0.5 * fn)
        per_class[category] = {"PQ": sq * rq, "SQ": sq, "RQ": rq, "TP": tp, "FP": fp, "FN": fn,
                               "IoU": iou, "isthing": isthing[category]}

    result = {}
    for suffix, keep in (("", None), ("_th", True), ("_st", False)):
        chosen = [v for v in per_class.values() if keep is None or v["isthing"] == keep]
        for key in ("PQ", "SQ", "RQ"):
            result[key + suffix] = (sum(v[key] for v in chosen) / len(chosen) if chosen
                                    else float("nan"))
        result["n" + suffix] = len(chosen)
    result["per_class"] = per_class
    return result


# ----------------------------------------------------------------------------- helpers


def _as_images(item, name: str) -> list[tuple[Tensor, list[dict]]]:
    """One ``(panoptic, segments)`` pair, or a sequence of them -> a list of pairs."""
    if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], Tensor):
        return [item]
    if not isinstance(item, Sequence):
        raise ValueError(f"{name} must be a (panoptic, segments) pair or a list of them, got "
                         f"{type(item).__name__}")
    images = list(item)
    for i, image in enumerate(images):
        if not (isinstance(image, Sequence) and len(image) == 2
                and isinstance(image[0], Tensor)):
            raise ValueError(f"{name}[{i}] must be a (panoptic, segments) pair")
    return images


def _segment_table(panoptic: Tensor, segments: Sequence[dict], name: str,
                   isthing: dict) -> dict[int, tuple[int, int]]:
    """Segment id -> ``(category_id, area in the map)``; checks the map and the list agree.

    Also records each category's ``isthing`` in ``isthing`` (and checks it is consistent).
    """
    if panoptic.dim() != 2:
        raise ValueError(f"{name} map must have shape (H, W), got {tuple(panoptic.shape)}")
    ids, counts = torch.unique(panoptic.cpu(), return_counts=True)
    area = {i: c for i, c in zip(ids.tolist(), counts.tolist(), strict=True) if i != 0}
    table = {}
    for segment in segments:
        sid, category = int(segment["id"]), int(segment["category_id"])
        if sid <= 0 or sid not in area:
            raise ValueError(f"{name}: segment id {sid} has no pixel in the map (ids must be "
                             f"positive; 0 is void)")
        if sid in table:
            raise ValueError(f"{name}: segment id {sid} is listed twice")
        thing = bool(segment["isthing"])
        if isthing.setdefault(category, thing) != thing:
            raise ValueError(f"{name}: category {category} is a thing in one segment and stuff "
                             f"in another")
        table[sid] = (category, area[sid])
    missing = sorted(set(area) - set(table))
    if missing:
        raise ValueError(f"{name}: the map uses segment ids {missing} that have no segment")
    return table


def _binary(masks: Tensor, name: str) -> Tensor:
    """(N, H, W) or (N, 1, H, W) masks -> (N, H, W) bool (floats: ``> 0.5``)."""
    if masks.dim() == 4 and masks.shape[1] == 1:
        masks = masks[:, 0]
    if masks.dim() != 3:
        raise ValueError(f"{name} must have shape (N, H, W) or (N, 1, H, W), got "
                         f"{tuple(masks.shape)}")
    return masks > 0.5 if masks.is_floating_point() else masks != 0


# ----------------------------------------------------------------------------- instance maps


def owner_map(masks: Tensor, scores: Tensor) -> Tensor:
    """The instance that owns each pixel: the best-scoring one covering it (first on ties).

    Args:
        masks (Tensor[N, H, W] bool): the instances' masks.
        scores (Tensor[N]): their scores.

    Returns:
        Tensor[H, W] int64: the index in ``masks`` of each pixel's owner, -1 where none is.
    """
    if masks.shape[0] == 0:
        return torch.full(masks.shape[1:], -1, dtype=torch.int64, device=masks.device)
    order = torch.argsort(scores, descending=True, stable=True)  # (N,) best first
    covered = masks[order].bool()  # (N, H, W), best first
    first = covered.to(torch.uint8).argmax(dim=0)  # (H, W): the first (best) mask covering it
    owner = order[first]  # position in the order -> index in masks
    return torch.where(covered.any(dim=0), owner, -1)


def semantic_from_owners(owner: Tensor, labels: Tensor) -> Tensor:
    """The label of each pixel's owner (``owner`` from :func:`owner_map`), 0 where it has none."""
    table = torch.cat([labels.to(torch.int64), labels.new_zeros(1, dtype=torch.int64)])  # (N+1,)
    return table[owner]  # owner -1 picks the last entry: 0


def semantic_from_instances(masks: Tensor, scores: Tensor, labels: Tensor) -> Tensor:
    """A semantic label map from instance masks: the best-scoring instance labels each pixel.

    Each pixel gets the label of the instance with the highest score among those whose mask
    covers it (on equal scores, the first one), and 0 (background) where no mask covers it.
    What is lost on the way is the point of instance segmentation: two touching objects of
    one class become one region.

    Args:
        masks (Tensor[N, H, W]): bool/uint8 masks, or float probabilities (object where
            ``> 0.5``).
        scores (Tensor[N]): the instances' scores.
        labels (Tensor[N] int64): their classes.

    Returns:
        Tensor[H, W] int64: the class of every pixel, 0 where no instance is.

    Raises:
        ValueError: if ``masks`` is not (N, H, W) or ``scores``/``labels`` do not have N
            entries.
    """
    if masks.dim() != 3:
        raise ValueError(f"masks must have shape (N, H, W), got {tuple(masks.shape)}")
    num = masks.shape[0]
    for name, values in (("scores", scores), ("labels", labels)):
        if values.shape != (num,):
            raise ValueError(f"{name} must have shape ({num},) like masks, got "
                             f"{tuple(values.shape)}")
    binary = masks > 0.5 if masks.is_floating_point() else masks != 0
    return semantic_from_owners(owner_map(binary, scores), labels)


def panoptic_from_target(target: dict, stuff_classes: Iterable[int] = (0,)
                         ) -> tuple[Tensor, list[dict]]:
    """The ground-truth panoptic segmentation of an annotated image.

    Every annotated object is a thing segment (its mask; where masks overlap, the object listed
    first keeps the pixel), and the free pixels of each stuff class of the semantic map are one
    stuff segment. For the course's synthetic scenes, whose only amorphous region is the
    background, ``stuff_classes=(0,)`` makes the background the one stuff category. That is
    :func:`panoptic_merge` keeping every object (equal scores, ``overlap_threshold=1``) and
    every stuff region (``min_area=0``).

    Args:
        target: ``"masks"`` (Tensor[G, H, W]), ``"labels"`` (Tensor[G]) and ``"semantic"``
            (Tensor[H, W]), as :class:`~course_lib.data.synthetic.SyntheticShapes` gives.
        stuff_classes: the semantic classes that are stuff.

    Returns:
        ``(panoptic, segments)`` as :func:`panoptic_merge` returns them.
    """
    masks, labels = target["masks"], target["labels"]
    instances = {"masks": masks, "scores": torch.ones(len(labels)), "labels": labels}
    return panoptic_merge(target["semantic"], instances, stuff_classes, overlap_threshold=1.0,
                          min_area=0)
