"""Tests for course_lib.panoptic: the things-and-stuff merge and panoptic quality.

Oracles: cases worked by hand, and loop implementations written directly from the definitions
(pixel by pixel, segment pair by segment pair) of Kirillov et al. (2019) and of the Panoptic
FPN merge heuristic.
"""

import math

import pytest
import torch

from course_lib.panoptic import (
    owner_map,
    panoptic_from_target,
    panoptic_merge,
    panoptic_quality,
    semantic_from_instances,
)

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
THINGS, STUFF = (1, 2, 3), (4, 5)


def segments_of(panoptic, categories):
    """Segment dicts for a map, from {segment id: category}."""
    return [{"id": sid, "category_id": cat, "isthing": cat in THINGS,
             "area": int((panoptic == sid).sum())} for sid, cat in categories.items()]


def image(rows, categories):
    """A (map, segments) pair from a list of rows of segment ids and {id: category}."""
    panoptic = torch.tensor(rows, dtype=torch.int64)
    return panoptic, segments_of(panoptic, categories)


# ------------------------------------------------------------------ panoptic_quality by hand


def test_perfect_match():
    gt = image([[1, 1, 2], [1, 3, 2]], {1: 1, 2: 4, 3: 1})
    result = panoptic_quality(gt, gt)
    assert result["PQ"] == result["SQ"] == result["RQ"] == 1.0
    assert result["PQ_th"] == 1.0 and result["PQ_st"] == 1.0
    assert result["per_class"][1]["TP"] == 2 and result["per_class"][4]["TP"] == 1
    # the ids may differ: only the segments count
    renamed = image([[7, 7, 9], [7, 5, 9]], {7: 1, 9: 4, 5: 1})
    assert panoptic_quality(renamed, gt)["PQ"] == 1.0


def test_one_tp_one_fn():
    # Category 1: GT segments 1 (4 px) and 2 (2 px). The prediction covers 3 pixels of
    # segment 1 and nothing else (IoU 3 / 4) and misses segment 2.
    gt = image([[1, 1, 0, 2, 2],
                [1, 1, 0, 0, 0]], {1: 1, 2: 1})
    pred = image([[3, 3, 0, 0, 0],
                  [3, 0, 0, 0, 0]], {3: 1})
    result = panoptic_quality(pred, gt)
    c = result["per_class"][1]
    assert (c["TP"], c["FP"], c["FN"]) == (1, 0, 1)
    assert c["SQ"] == 0.75 and c["RQ"] == pytest.approx(2 / 3) and c["PQ"] == pytest.approx(0.5)
    assert result["PQ"] == pytest.approx(0.5) and math.isnan(result["PQ_st"])
    assert (result["n"], result["n_th"], result["n_st"]) == (1, 1, 0)


def test_iou_of_exactly_one_half_is_not_a_match():
    gt = image([[1, 1, 1, 1]], {1: 2})
    pred = image([[2, 2, 0, 0]], {2: 2})  # IoU 2 / 4 = 0.5
    c = panoptic_quality(pred, gt)["per_class"][2]
    assert (c["TP"], c["FP"], c["FN"]) == (0, 1, 1) and c["PQ"] == 0.0
    pred = image([[2, 2, 2, 0]], {2: 2})  # IoU 3 / 4
    c = panoptic_quality(pred, gt)["per_class"][2]
    assert (c["TP"], c["FP"], c["FN"]) == (1, 0, 0) and c["PQ"] == 0.75


def test_different_categories_never_match():
    gt = image([[1, 1]], {1: 1})
    pred = image([[1, 1]], {1: 2})
    result = panoptic_quality(pred, gt)
    assert result["per_class"][1]["FN"] == 1 and result["per_class"][2]["FP"] == 1
    assert result["PQ"] == 0.0 and result["n"] == 2


def test_void_pixels_are_not_counted():
    # GT: segment 1 (category 4) on 4 pixels, 4 void pixels. The prediction's segment spreads
    # over 2 void pixels: they leave the union, IoU = 4 / 4 = 1 (not 4 / 6).
    gt = image([[1, 1, 0, 0],
                [1, 1, 0, 0]], {1: 4})
    pred = image([[5, 5, 5, 0],
                  [5, 5, 5, 6]], {5: 4, 6: 1})
    result = panoptic_quality(pred, gt)
    assert result["per_class"][4]["SQ"] == 1.0 and result["per_class"][4]["TP"] == 1
    # segment 6 lies entirely on void: not a false positive, its category does not occur
    assert 1 not in result["per_class"] and result["PQ"] == 1.0
    # half on void is an FP (the rule is "more than half")
    gt = image([[1, 1, 0, 0],
                [1, 2, 2, 0]], {1: 4, 2: 1})
    pred = image([[3, 3, 0, 0],
                  [3, 0, 4, 4]], {3: 4, 4: 1})  # 4: one pixel on void, one on GT 2
    c = panoptic_quality(pred, gt)["per_class"][1]
    assert (c["TP"], c["FP"], c["FN"]) == (0, 1, 1)  # IoU(4, 2) = 1 / (2 + 2 - 1 - 1) = 0.5
    # more than half on void: not an FP
    pred = image([[3, 3, 0, 4],
                  [3, 0, 0, 4]], {3: 4, 4: 1})  # 4: two pixels, both on void
    c = panoptic_quality(pred, gt)["per_class"][1]
    assert (c["TP"], c["FP"], c["FN"]) == (0, 0, 1)


def test_accumulates_over_images_before_averaging():
    # Image 1: category 1 matched with IoU 1. Image 2: category 1 missed (FN).
    # Dataset: TP 1, FN 1 -> SQ 1, RQ 2/3 (not the mean of per-image PQs, (1 + 0) / 2).
    gt1 = image([[1, 1]], {1: 1})
    gt2 = image([[0, 1]], {1: 1})
    pred2 = image([[0, 0]], {})
    result = panoptic_quality([gt1, pred2], [gt1, gt2])
    c = result["per_class"][1]
    assert (c["TP"], c["FP"], c["FN"], c["IoU"]) == (1, 0, 1, 1.0)
    assert result["PQ"] == pytest.approx(2 / 3)
    listed, single = panoptic_quality([gt1], [gt1]), panoptic_quality(gt1, gt1)
    assert listed["per_class"] == single["per_class"] and listed["PQ"] == single["PQ"] == 1.0


def test_quality_errors():
    gt = image([[1, 1]], {1: 1})
    with pytest.raises(ValueError, match="same number of images"):
        panoptic_quality([gt, gt], [gt])
    with pytest.raises(ValueError, match=r"shape \(1, 2\)"):
        panoptic_quality(image([[1], [1]], {1: 1}), gt)
    with pytest.raises(ValueError, match=r"ids \[1\] that have no segment"):
        panoptic_quality((gt[0], []), gt)
    with pytest.raises(ValueError, match="segment id 3 has no pixel"):
        panoptic_quality((gt[0], gt[1] + [{"id": 3, "category_id": 1, "isthing": True}]), gt)
    with pytest.raises(ValueError, match="listed twice"):
        panoptic_quality((gt[0], gt[1] * 2), gt)
    with pytest.raises(ValueError, match="category 1 is a thing in one segment and stuff"):
        panoptic_quality((gt[0], [dict(gt[1][0], isthing=False)]), gt)
    with pytest.raises(ValueError, match="pair"):
        panoptic_quality("map", gt)


# ------------------------------------------------------------------ panoptic_quality vs loops


def loop_panoptic_quality(preds, gts):
    """PQ straight from the paper's definitions, one pixel and one segment pair at a time."""
    tp, fp, fn, iou_sum, isthing = {}, {}, {}, {}, {}
    for (p_map, p_segs), (g_map, g_segs) in zip(preds, gts, strict=True):
        p_map, g_map = p_map.tolist(), g_map.tolist()
        pixels = [(y, x) for y in range(len(g_map)) for x in range(len(g_map[0]))]
        p_cat = {s["id"]: s["category_id"] for s in p_segs}
        g_cat = {s["id"]: s["category_id"] for s in g_segs}
        for s in p_segs + g_segs:
            isthing[s["category_id"]] = s["isthing"]
            for d in (tp, fp, fn, iou_sum):
                d.setdefault(s["category_id"], 0)
        matched_p, matched_g = set(), set()
        for g in g_cat:
            for p in p_cat:
                if g_cat[g] != p_cat[p]:
                    continue
                inter = sum(g_map[y][x] == g and p_map[y][x] == p for y, x in pixels)
                # union over the pixels that are not void in the ground truth
                union = sum((g_map[y][x] == g or p_map[y][x] == p) and g_map[y][x] != 0
                            for y, x in pixels)
                if union and inter / union > 0.5:
                    tp[g_cat[g]] += 1
                    iou_sum[g_cat[g]] += inter / union
                    matched_p.add(p)
                    matched_g.add(g)
        for g in g_cat:
            fn[g_cat[g]] += g not in matched_g
        for p in p_cat:
            area = sum(p_map[y][x] == p for y, x in pixels)
            on_void = sum(p_map[y][x] == p and g_map[y][x] == 0 for y, x in pixels)
            fp[p_cat[p]] += p not in matched_p and on_void / area <= 0.5
    pq, sq, rq = {}, {}, {}
    for c in tp:
        if tp[c] + fp[c] + fn[c] == 0:
            continue
        sq[c] = iou_sum[c] / tp[c] if tp[c] else 0.0
        rq[c] = tp[c] / (tp[c] + fp[c] / 2 + fn[c] / 2)
        pq[c] = sq[c] * rq[c]

    def mean(d, keep):
        values = [v for c, v in d.items() if keep is None or isthing[c] == keep]
        return sum(values) / len(values) if values else float("nan")

    return {"PQ": mean(pq, None), "SQ": mean(sq, None), "RQ": mean(rq, None),
            "PQ_th": mean(pq, True), "PQ_st": mean(pq, False),
            "per_class": {c: (pq[c], sq[c], rq[c], tp[c], fp[c], fn[c]) for c in pq}}


def random_panoptic(g, height, width, num_segments):
    """A random (map, segments): rectangles painted over each other, some void left."""
    panoptic = torch.zeros(height, width, dtype=torch.int64)
    for sid in range(1, num_segments + 1):
        y1, x1 = torch.randint(0, height, (1,), generator=g), torch.randint(0, width, (1,),
                                                                            generator=g)
        h, w = torch.randint(2, height, (1,), generator=g), torch.randint(2, width, (1,),
                                                                          generator=g)
        panoptic[y1:y1 + h, x1:x1 + w] = sid
    present = [int(i) for i in panoptic.unique() if i != 0]
    cats = torch.randint(1, 6, (num_segments + 1,), generator=g).tolist()
    return panoptic, segments_of(panoptic, {sid: cats[sid] for sid in present})


def perturbed(g, gt):
    """A prediction near a GT: some pixels changed, categories sometimes swapped, ids moved."""
    panoptic, segments = gt
    pred = panoptic.clone()
    noise = torch.rand(pred.shape, generator=g) < 0.15
    pred[noise] = torch.randint(0, int(pred.max()) + 2, pred.shape, generator=g)[noise]
    pred = torch.where(pred > 0, pred + 10, pred)  # other ids than the GT's
    present = [int(i) for i in pred.unique() if i != 0]
    cats = {s["id"] + 10: s["category_id"] for s in segments}
    for sid in present:
        if sid not in cats or torch.rand(1, generator=g) < 0.15:  # new segment, or a swap
            cats[sid] = int(torch.randint(1, 6, (1,), generator=g))
    return pred, segments_of(pred, {sid: cats[sid] for sid in present})


@pytest.mark.parametrize("seed", range(15))
def test_matches_loop_oracle_on_random_maps(seed):
    g = torch.Generator().manual_seed(seed)
    gts = [random_panoptic(g, 8, 11, int(torch.randint(1, 7, (1,), generator=g)))
           for _ in range(3)]
    preds = [perturbed(g, gt) if torch.rand(1, generator=g) < 0.8
             else random_panoptic(g, 8, 11, 4) for gt in gts]
    ours, expected = panoptic_quality(preds, gts), loop_panoptic_quality(preds, gts)
    for key in ("PQ", "SQ", "RQ", "PQ_th", "PQ_st"):
        assert ours[key] == pytest.approx(expected[key], abs=1e-12, nan_ok=True), key
    assert set(ours["per_class"]) == set(expected["per_class"])
    for c, (pq, sq, rq, tp, fp, fn) in expected["per_class"].items():
        o = ours["per_class"][c]
        assert (o["TP"], o["FP"], o["FN"]) == (tp, fp, fn)
        assert o["PQ"] == pytest.approx(pq, abs=1e-12) and o["SQ"] == pytest.approx(sq)
        assert o["RQ"] == pytest.approx(rq)


def test_random_maps_hit_the_interesting_cases():
    seen = {"tp": False, "fp": False, "fn": False, "void_ignored": False}
    for seed in range(15):
        g = torch.Generator().manual_seed(seed)
        gts = [random_panoptic(g, 8, 11, int(torch.randint(1, 7, (1,), generator=g)))
               for _ in range(3)]
        preds = [perturbed(g, gt) if torch.rand(1, generator=g) < 0.8
                 else random_panoptic(g, 8, 11, 4) for gt in gts]
        for c in panoptic_quality(preds, gts)["per_class"].values():
            seen["tp"] |= c["TP"] > 0
            seen["fp"] |= c["FP"] > 0
            seen["fn"] |= c["FN"] > 0
        for (p_map, p_segs), (g_map, _) in zip(preds, gts, strict=True):
            for s in p_segs:
                on = p_map == s["id"]
                seen["void_ignored"] |= bool((g_map[on] == 0).sum() * 2 > on.sum())
    assert all(seen.values()), seen


# ------------------------------------------------------------------ panoptic_merge


def loop_merge(semantic, masks, scores, labels, stuff, overlap_threshold, min_area):
    """The merge heuristic one pixel at a time (binary masks, distinct scores)."""
    height, width = len(semantic), len(semantic[0])
    out = [[0] * width for _ in range(height)]
    segments = []
    for i in sorted(range(len(scores)), key=lambda i: -scores[i]):
        pixels = [(y, x) for y in range(height) for x in range(width) if masks[i][y][x]]
        free = [(y, x) for y, x in pixels if out[y][x] == 0]
        if not pixels or (len(pixels) - len(free)) / len(pixels) > overlap_threshold:
            continue
        for y, x in free:
            out[y][x] = len(segments) + 1
        segments.append({"id": len(segments) + 1, "category_id": labels[i], "isthing": True,
                         "area": len(free)})
    for c in sorted(stuff):
        free = [(y, x) for y in range(height) for x in range(width)
                if semantic[y][x] == c and out[y][x] == 0]
        if free and len(free) >= min_area:
            for y, x in free:
                out[y][x] = len(segments) + 1
            segments.append({"id": len(segments) + 1, "category_id": c, "isthing": False,
                             "area": len(free)})
    return out, segments


@pytest.mark.parametrize("device", DEVICES)
def test_merge_hand_worked(device):
    # 4x6 image. Semantic: left half sky (4), right half grass (5), one road pixel (6 is not
    # stuff here: it stays void). Instances: a person (score 0.9) on the left, a dog (0.8)
    # overlapping it by 1 of its 4 pixels (kept, 3 visible), a car (0.7) that is 2/3 hidden
    # (dropped).
    semantic = torch.tensor([[4, 4, 4, 5, 5, 5],
                             [4, 4, 4, 5, 5, 5],
                             [4, 4, 4, 5, 5, 6],
                             [4, 4, 4, 5, 5, 5]], device=device)
    masks = torch.zeros(3, 4, 6, dtype=torch.uint8)
    masks[0, 0:2, 0:2] = 1  # person, 4 px
    masks[1, 1:3, 1:3] = 1  # dog, 4 px, pixel (1, 1) is the person's
    masks[2, 0:3, 1] = 1  # car, 3 px, (0, 1), (1, 1) taken, (2, 1) by the dog -> all taken
    instances = {"masks": masks.to(device), "scores": torch.tensor([0.9, 0.8, 0.7]),
                 "labels": torch.tensor([1, 2, 3])}
    panoptic, segments = panoptic_merge(semantic, instances, stuff_classes=[4, 5], min_area=2)
    assert panoptic.tolist() == [[1, 1, 3, 4, 4, 4],
                                 [1, 1, 2, 4, 4, 4],
                                 [3, 2, 2, 4, 4, 0],
                                 [3, 3, 3, 4, 4, 4]]
    assert segments == [
        {"id": 1, "category_id": 1, "isthing": True, "area": 4},
        {"id": 2, "category_id": 2, "isthing": True, "area": 3},
        {"id": 3, "category_id": 4, "isthing": False, "area": 5},
        {"id": 4, "category_id": 5, "isthing": False, "area": 11},
    ]
    assert panoptic.dtype == torch.int64 and panoptic.device.type == torch.device(device).type
    # stuff below min_area becomes void; probabilities work as masks (> 0.5)
    probs = dict(instances, masks=masks[:, None].float().to(device) * 0.6)
    panoptic2, segments2 = panoptic_merge(semantic, probs, stuff_classes=[4, 5], min_area=6)
    assert [s["category_id"] for s in segments2] == [1, 2, 5]
    assert (panoptic2 == 0).sum() == 5 + 1
    # a stricter overlap threshold drops the dog too (1/4 of it is hidden)
    _, segments3 = panoptic_merge(semantic, instances, [4, 5], overlap_threshold=0.2,
                                  min_area=2)
    assert [s["category_id"] for s in segments3] == [1, 4, 5]
    # score_threshold leaves out the dog and the car
    _, segments4 = panoptic_merge(semantic, instances, [4, 5], min_area=2, score_threshold=0.85)
    assert [s["category_id"] for s in segments4] == [1, 4, 5]


@pytest.mark.parametrize("seed", range(10))
def test_merge_matches_loop_oracle(seed):
    g = torch.Generator().manual_seed(seed)
    height, width, num = 9, 12, int(torch.randint(0, 7, (1,), generator=g))
    semantic = torch.randint(0, 7, (height, width), generator=g)
    semantic[: height // 2] = 4  # a big stuff region
    masks = torch.zeros(num, height, width, dtype=torch.bool)
    for i in range(num):
        y, x = torch.randint(0, height - 1, (2,), generator=g).tolist()
        h, w = torch.randint(1, 6, (2,), generator=g).tolist()
        masks[i, y:y + h, x:x + w] = True
    scores = torch.randperm(num, generator=g).float() / max(num, 1)
    labels = torch.randint(1, 4, (num,), generator=g)
    threshold, min_area = [0.5, 0.3, 0.8][seed % 3], [1, 5, 20][seed % 3]
    panoptic, segments = panoptic_merge(
        semantic, {"masks": masks, "scores": scores, "labels": labels}, STUFF + (6,),
        overlap_threshold=threshold, min_area=min_area)
    expected_map, expected_segments = loop_merge(
        semantic.tolist(), masks.tolist(), scores.tolist(), labels.tolist(), STUFF + (6,),
        threshold, min_area)
    assert panoptic.tolist() == expected_map
    assert segments == expected_segments
    # a merged prediction is a valid input of panoptic_quality (against itself: PQ 1)
    if segments:
        assert panoptic_quality((panoptic, segments), (panoptic, segments))["PQ"] == 1.0


def test_merge_empty_and_errors():
    semantic = torch.full((5, 5), 4)
    none = {"masks": torch.zeros(0, 5, 5, dtype=torch.bool), "scores": torch.zeros(0),
            "labels": torch.zeros(0, dtype=torch.int64)}
    panoptic, segments = panoptic_merge(semantic, none, [4])
    assert panoptic.shape == (5, 5) and (panoptic == 0).all() and segments == []  # 25 < 64
    panoptic, segments = panoptic_merge(semantic, none, [4], min_area=25)
    assert (panoptic == 1).all() and segments[0]["area"] == 25
    empty_mask = dict(none, masks=torch.zeros(1, 5, 5), scores=torch.ones(1),
                      labels=torch.ones(1, dtype=torch.int64))
    assert panoptic_merge(semantic, empty_mask, [4], min_area=1)[1][0]["category_id"] == 4
    with pytest.raises(ValueError, match=r"semantic must have shape \(H, W\), got \(1, 5, 5\)"):
        panoptic_merge(semantic[None], none, [4])
    with pytest.raises(ValueError, match=r"instances\['masks'\] must have shape \(0, 5, 5\)"):
        panoptic_merge(semantic, dict(none, masks=torch.zeros(0, 4, 5)), [4])
    with pytest.raises(ValueError, match=r"instances\['scores'\] must have shape \(0,\)"):
        panoptic_merge(semantic, dict(none, scores=torch.zeros(1)), [4])
    with pytest.raises(ValueError, match="overlap_threshold"):
        panoptic_merge(semantic, none, [4], overlap_threshold=1.5)
    with pytest.raises(ValueError, match=r"instance labels \[4\] are also in stuff_classes"):
        panoptic_merge(semantic, dict(empty_mask, labels=torch.tensor([4])), [4])


# ----------------------------------------------------------------------------- ground truth


def test_panoptic_from_target_makes_things_and_the_background_stuff():
    """Two objects (the first listed keeps their overlap) and the background as stuff 0."""
    masks = torch.zeros(2, 4, 5, dtype=torch.uint8)
    masks[0, 0:2, 0:2] = 1
    masks[1, 1:3, 1:4] = 1  # overlaps object 0 at pixel (1, 1)
    semantic = torch.zeros(4, 5, dtype=torch.int64)
    semantic[masks[1].bool()] = 3
    semantic[masks[0].bool()] = 2
    target = {"masks": masks, "labels": torch.tensor([2, 3]), "semantic": semantic}
    panoptic, segments = panoptic_from_target(target)
    expected = torch.tensor([[1, 1, 3, 3, 3],
                             [1, 1, 2, 2, 3],
                             [3, 2, 2, 2, 3],
                             [3, 3, 3, 3, 3]])
    assert torch.equal(panoptic, expected)
    assert segments == [
        {"id": 1, "category_id": 2, "isthing": True, "area": 4},
        {"id": 2, "category_id": 3, "isthing": True, "area": 5},
        {"id": 3, "category_id": 0, "isthing": False, "area": 11},
    ]
    perfect = panoptic_quality((panoptic, segments), (panoptic, segments))
    assert perfect["PQ"] == 1.0 and perfect["n_th"] == 2 and perfect["n_st"] == 1
    # without stuff classes the background is void
    void, things_only = panoptic_from_target(target, stuff_classes=())
    assert int((void == 0).sum()) == 11 and len(things_only) == 2


def test_semantic_from_instances_loses_the_identity_of_touching_objects():
    masks = torch.zeros(3, 4, 6, dtype=torch.uint8)
    masks[0, :, 0:3] = 1
    masks[1, :, 3:6] = 1  # touches object 0, same class
    masks[2, 1:3, 2:4] = 1  # on top of both, better score, another class
    scores, labels = torch.tensor([0.9, 0.8, 0.95]), torch.tensor([1, 1, 2])
    semantic = semantic_from_instances(masks, scores, labels)
    owners = owner_map(masks.bool(), scores)
    assert torch.equal(semantic, torch.tensor([[1, 1, 1, 1, 1, 1],
                                               [1, 1, 2, 2, 1, 1],
                                               [1, 1, 2, 2, 1, 1],
                                               [1, 1, 1, 1, 1, 1]]))
    assert torch.equal(owners[0], torch.tensor([0, 0, 0, 1, 1, 1]))
    assert torch.equal(owners[1], torch.tensor([0, 0, 2, 2, 1, 1]))
    assert torch.equal(owner_map(torch.zeros(0, 2, 3, dtype=torch.bool), torch.zeros(0)),
                       torch.full((2, 3), -1))
