"""The lesson 08 case tables: every case agrees with torchvision's Mask R-CNN functions or a loop
oracle of panoptic quality, and the tables catch the classic mistakes (each mutant below must
fail a visible case).

Lesson 08 is not in ``course_lib.exercises.LESSONS`` yet, so this file also checks what
tests/test_exercise_tables.py checks for registered lessons: hand-worked answers equal the
reference, the reference passes its table, random cases are reproducible, cross the grader and
are accepted by the reference. It also tests the protocol's support for dict outputs
(``core.to_plain`` / ``core.compare``), which ``panoptic_quality`` needs.
"""

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.models.detection.roi_heads import (
    maskrcnn_loss,
    paste_masks_in_image,
    project_masks_on_boxes,
)
from torchvision.ops import roi_align

from course_lib import masks, panoptic
from course_lib.device import available_devices
from course_lib.exercises.core import check, compare, run_case, shorten, to_plain
from course_lib.exercises.lesson08 import EXERCISES, PQ_EXAMPLE_GT, THINGS, with_panoptic_pairs
from course_lib.grading import child, transfer
from course_lib.grading.notebook import ExerciseCell, Submission
from course_lib.grading.runner import grade_exercise
from course_lib.grading.sandbox import Limits

ROOT = Path(__file__).resolve().parents[1]

NAMES = ["mask_targets", "paste_masks", "mask_loss", "panoptic_quality"]


def _cases(name, num_random=30):
    """The visible cases' inputs, then ``num_random`` random ones (seeds 0, 1, ...)."""
    ex = EXERCISES[name]
    return [c.kwargs for c in ex.cases] + [ex.random_case(np.random.default_rng(s))
                                           for s in range(num_random)]


# --- the properties every lesson's tables share ----------------------------------------------


def test_names_match_references():
    assert list(EXERCISES) == NAMES
    references = {"mask_targets": masks.mask_targets, "paste_masks": masks.paste_masks,
                  "mask_loss": masks.mask_loss, "panoptic_quality": panoptic.panoptic_quality}
    for name, ex in EXERCISES.items():
        assert ex.name == name == ex.reference.__name__
        assert ex.reference is references[name]  # graded against course_lib as it is
        assert ex.cases and ex.points > 0 and ex.hint
        assert all(c.note for c in ex.cases), name
        assert len({c.name for c in ex.cases}) == len(ex.cases)


@pytest.mark.parametrize("name", NAMES)
def test_hand_worked_answers_agree_with_the_reference(name):
    ex = EXERCISES[name]
    hand = [c for c in ex.cases if c.expected is not None]
    assert len(hand) >= 4
    for case in hand:
        got = to_plain(ex.reference(**ex.inputs(case.kwargs)))
        assert compare(got, to_plain(case.expected), ex.atol, ex.rtol, ex.exact) is None, case.name


@pytest.mark.parametrize("device", available_devices())
@pytest.mark.parametrize("name", NAMES)
def test_reference_passes_its_table(name, device, capsys):
    assert check(EXERCISES[name].reference, EXERCISES[name], device=device)
    assert "all passed" in capsys.readouterr().out


def _same(a, b):
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
    return type(a) is type(b) and a == b


@pytest.mark.parametrize("name", NAMES)
def test_random_cases_are_reproducible_plain_and_accepted_by_the_reference(name, tmp_path):
    ex = EXERCISES[name]
    for seed in range(20):
        a = ex.random_case(np.random.default_rng(seed))
        b = ex.random_case(np.random.default_rng(seed))
        assert a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
        for key, value in a.items():
            # tensors and numbers; paste_masks' image_size is an (H, W) tuple of ints, as in
            # its signature (the grader transfers tuples)
            assert isinstance(value, (torch.Tensor, int, float, bool, str, type(None))) or (
                key == "image_size" and type(value) is tuple
                and [type(v) for v in value] == [int, int]), (key, type(value))
            if isinstance(value, torch.Tensor):
                assert value.numel() <= 10_000
        back = transfer.load(transfer.dump(a, tmp_path, f"in_{seed}"), tmp_path)
        assert all(_same(a[k], back[k]) for k in a)
        to_plain(ex.reference(**ex.inputs(a)))


def test_random_cases_vary():
    for name in NAMES:
        ex = EXERCISES[name]
        drawn = [to_plain(ex.reference(**ex.inputs(ex.random_case(np.random.default_rng(s)))))
                 for s in range(6)]
        assert any(compare(d, drawn[0]) is not None for d in drawn[1:]), name
    shapes = {tuple(EXERCISES["mask_targets"].random_case(np.random.default_rng(s))
                    ["proposals"].shape) for s in range(30)}
    assert (0, 4) in shapes  # P = 0 is drawn too


# --- independent oracles ---------------------------------------------------------------------


def torchvision_mask_targets(gt_masks, proposals, matched_idxs, size):
    return project_masks_on_boxes(gt_masks, proposals, matched_idxs, size)


def torchvision_paste_masks(masks, boxes, image_size, threshold=0.5, padding=1):
    if masks.dim() == 3:
        masks = masks[:, None]
    out = paste_masks_in_image(masks, boxes, tuple(image_size), padding)[:, 0]
    return out if threshold is None else (out > threshold).to(torch.uint8)


def _identity_boxes(p, m):
    """Boxes whose RoI Align (aligned=False, M x M) reads an M x M mask back unchanged."""
    return torch.tensor([[-0.5, -0.5, m - 0.5, m - 0.5]]).repeat(p, 1)


def torchvision_mask_loss(mask_logits, labels, targets):
    # maskrcnn_loss builds its targets from GT masks and proposals; with the targets as GT
    # masks and boxes that read them unchanged, it sees exactly `targets`
    p, m = targets.shape[0], mask_logits.shape[-1]
    return maskrcnn_loss(mask_logits, [_identity_boxes(p, m)], [targets], [labels],
                         [torch.arange(p)])


def test_identity_boxes_read_the_targets_unchanged():
    for m in (1, 2, 5):
        targets = torch.rand(3, m, m)
        read = project_masks_on_boxes(targets, _identity_boxes(3, m), torch.arange(3), m)
        assert torch.allclose(read, targets, atol=1e-6)


def loop_panoptic_quality(pred, gt, match="gt_half", void_in_union=False, void_fp="gt_half",
                          per_image=False, skip_pred_only=False, empty_mean=math.nan,
                          rq="halves", same_category=True):
    """PQ from its definition, pixel by pixel; each flag changed is one classic mistake."""
    preds = [pred] if isinstance(pred, tuple) else list(pred)
    gts = [gt] if isinstance(gt, tuple) else list(gt)
    if per_image and len(preds) > 1:  # the mean of the images' scores
        images = [loop_panoptic_quality(p, g) for p, g in zip(preds, gts, strict=True)]
        out = dict(images[0])
        for key in ("PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st", "RQ_st"):
            scores = [r[key] for r in images if not math.isnan(r[key])]
            out[key] = sum(scores) / len(scores) if scores else math.nan
        return out
    stats, isthing = {}, {}

    def entry(category):
        return stats.setdefault(category, {"TP": 0, "FP": 0, "FN": 0, "IoU": 0.0})

    for (p_map, p_segments), (g_map, g_segments) in zip(preds, gts, strict=True):
        p_cat = {s["id"]: s["category_id"] for s in p_segments}
        g_cat = {s["id"]: s["category_id"] for s in g_segments}
        for s in [*p_segments, *g_segments]:
            isthing[s["category_id"]] = s["isthing"]
        pixels = list(zip(g_map.flatten().tolist(), p_map.flatten().tolist(), strict=True))
        p_area = Counter(p for _, p in pixels if p)
        g_area = Counter(g for g, _ in pixels if g)
        inter = Counter(pixels)
        on_void = Counter(p for g, p in pixels if g == 0 and p)
        matched_p, matched_g = set(), set()
        for g in g_area:
            for p in p_area:
                if same_category and g_cat[g] != p_cat[p]:
                    continue
                union = p_area[p] + g_area[g] - inter[g, p]
                if not void_in_union:
                    union -= on_void[p]
                iou = inter[g, p] / union
                if iou > 0.5 or (match == "at_least_half" and iou == 0.5):
                    e = entry(g_cat[g])
                    e["TP"] += 1
                    e["IoU"] += iou
                    matched_p.add(p)
                    matched_g.add(g)
        for g in g_area:
            if g not in matched_g:
                entry(g_cat[g])["FN"] += 1
        for p in p_area:
            if p in matched_p:
                continue
            if void_fp == "gt_half" and on_void[p] / p_area[p] > 0.5:
                continue
            if void_fp == "at_least_half" and on_void[p] / p_area[p] >= 0.5:
                continue
            entry(p_cat[p])["FP"] += 1
    per_class = {}
    for c in sorted(stats):
        tp, fp, fn, iou = (stats[c][k] for k in ("TP", "FP", "FN", "IoU"))
        if tp + fp + fn == 0 or (skip_pred_only and tp + fn == 0):
            continue
        sq = iou / tp if tp else 0.0
        r = tp / (tp + fp / 2 + fn / 2) if rq == "halves" else tp / (tp + fp + fn)
        per_class[c] = {"PQ": sq * r, "SQ": sq, "RQ": r, "TP": tp, "FP": fp, "FN": fn,
                        "IoU": iou, "isthing": isthing[c]}
    out = {}
    for suffix, keep in (("", None), ("_th", True), ("_st", False)):
        chosen = [v for v in per_class.values() if keep is None or v["isthing"] == keep]
        for key in ("PQ", "SQ", "RQ"):
            out[key + suffix] = (sum(v[key] for v in chosen) / len(chosen) if chosen
                                 else empty_mean)
        out["n" + suffix] = len(chosen)
    out["per_class"] = per_class
    return out


ORACLES = {
    "mask_targets": torchvision_mask_targets,
    "paste_masks": torchvision_paste_masks,
    "mask_loss": torchvision_mask_loss,
    "panoptic_quality": loop_panoptic_quality,
}


@pytest.mark.parametrize("name", NAMES)
def test_every_case_agrees_with_an_independent_oracle(name):
    ex = EXERCISES[name]
    for kwargs in _cases(name):
        theirs = to_plain(ORACLES[name](**ex.inputs(kwargs)))
        ours = to_plain(ex.reference(**ex.inputs(kwargs)))
        assert compare(ours, theirs, 1e-5, 1e-5) is None, kwargs


def test_hand_worked_numbers():
    ex = EXERCISES["panoptic_quality"]
    result = ex.reference(**ex.inputs(ex.cases[0].kwargs))
    person, car, grass = 2 / 3 * 2 / 3, 0.0, 7 / 8
    assert result["PQ"] == pytest.approx((person + car + grass) / 3)
    assert result["PQ_th"] == pytest.approx((person + car) / 2)
    assert result["PQ_st"] == pytest.approx(grass)
    assert (result["n"], result["n_th"], result["n_st"]) == (3, 2, 1)
    loss = EXERCISES["mask_loss"]
    assert loss.reference(**loss.inputs(loss.cases[1].kwargs)).item() == pytest.approx(
        (2 * math.log(4 / 3) + math.log(2) + math.log(4)) / 4)
    # the mask loss sends no gradient to the other classes' channels
    args = loss.inputs(loss.cases[1].kwargs)
    args["mask_logits"].requires_grad_(True)
    loss.reference(**args).backward()
    grad = args["mask_logits"].grad
    assert grad[:, 1].abs().sum() > 0 and grad[:, 0].abs().sum() == grad[:, 2].abs().sum() == 0


def test_with_panoptic_pairs_builds_fresh_pairs():
    ex = EXERCISES["panoptic_quality"]
    case = ex.cases[0]
    args = ex.inputs(case.kwargs)
    assert set(args) == {"pred", "gt"}
    gt_map, gt_segments = args["gt"]
    assert torch.equal(gt_map, torch.tensor(PQ_EXAMPLE_GT[0]))
    assert gt_segments == [{"id": 1, "category_id": 1, "isthing": True, "area": 3},
                           {"id": 2, "category_id": 4, "isthing": False, "area": 8},
                           {"id": 3, "category_id": 1, "isthing": True, "area": 2}]
    gt_segments[0]["category_id"] = 99  # a student's function that edits its input ...
    gt_map.zero_()
    assert ex.inputs(case.kwargs)["gt"][1][0]["category_id"] == 1  # ... changes a copy
    assert case.kwargs["gt_map"].tolist() == PQ_EXAMPLE_GT[0]
    # (B, H, W) maps give a list of B pairs, each with the rows of its own ids
    batch = ex.inputs(next(c for c in ex.cases if c.name.startswith("two images")).kwargs)
    assert isinstance(batch["pred"], list) and len(batch["pred"]) == 2
    assert batch["pred"][1][1] == [] and len(batch["gt"][1][1]) == 1
    with pytest.raises(ValueError, match="pred_map uses segment id 3"):
        with_panoptic_pairs({"pred_map": torch.tensor([[3]]), "pred_segments": torch.zeros(0, 2),
                             "gt_map": torch.tensor([[1]]), "gt_segments": torch.tensor([[1, 1]]),
                             "things": THINGS})


# --- dict outputs in the protocol (core.to_plain / core.compare) -----------------------------


def test_to_plain_turns_dicts_into_sorted_pairs():
    value = {"b": torch.tensor([1, 2]), "a": 0.5, 3: {"x": math.nan}, np.int64(1): None}
    plain = to_plain(value)
    assert [k for k, _ in plain] == [1, 3, "a", "b"]  # int keys first, then str keys
    assert plain[1] == (3, (("x", plain[1][1][0][1]),)) and math.isnan(plain[1][1][0][1])
    assert isinstance(plain[3][1], np.ndarray) and plain[3][1].tolist() == [1, 2]
    assert type(plain[0][0]) is int
    with pytest.raises(TypeError, match="key of type tuple"):
        to_plain({(1, 2): 3})
    with pytest.raises(TypeError, match="set"):
        to_plain({"a": {1}})


def test_compare_dicts_key_by_key_with_nan():
    expected = to_plain({"PQ": 0.5, "PQ_st": math.nan, "n": 2,
                         "per_class": {1: {"TP": 1, "FP": 0}, 4: {"TP": 0, "FP": 1}}})
    same = to_plain({"per_class": {4: {"FP": 1, "TP": 0}, 1: {"FP": 0, "TP": 1}},
                     "n": 2.0, "PQ_st": float("nan"), "PQ": 0.5 + 1e-9})
    assert compare(same, expected) is None  # insertion order, int vs float, nan == nan
    wrong = to_plain({**dict(same), "per_class": {1: {"TP": 1, "FP": 0}, 4: {"TP": 0, "FP": 2}}})
    assert compare(wrong, expected) == "['per_class'][4]['FP']: 2 != expected 1"
    assert compare(to_plain({"PQ": 0.5, "PQ_st": 0.0, "n": 2, "per_class": {}}), expected) \
        == "['PQ_st']: 0.0 != expected nan"
    assert compare(to_plain({"PQ": 0.5, "pq_st": 1.0, "n": 2, "per_class": {}}), expected) \
        == "keys differ: missing 'PQ_st'; unexpected 'pq_st'"
    assert compare(0.5, expected).startswith("returned float; expected a dict with keys ['PQ'")
    assert compare(expected, np.zeros(2)) == "returned dict; expected a Tensor of shape (2,)"
    assert compare(to_plain({}), to_plain({})) is None
    # other tuples are compared by position, as before; a tuple of (key, value) pairs in
    # increasing key order reads like a dict, with the same verdict
    assert compare(((1, 2.0), (0, 3.0)), ((1, 2.5), (0, 3.0))) == \
        "element 0 of the tuple: element 1 of the tuple: 2.0 != expected 2.5"
    assert compare(((0, 3.0), (1, 2.0)), ((0, 3.0), (1, 2.5))) == "[1]: 2.0 != expected 2.5"
    assert shorten(to_plain({"b": 1, "a": (2, 3)})) == "{'a': (2, 3), 'b': 1}"


def test_a_dict_output_crosses_the_grader(tmp_path):
    """The child makes the output plain and writes it; the parent reads it back and compares."""
    ex = EXERCISES["panoptic_quality"]
    for i, case in enumerate(ex.cases):
        result = child._run_case(ex.reference, ex.inputs(case.kwargs), tmp_path, f"out_{i}")
        assert result["status"] == "ok", result
        got = transfer.load(result["output"], tmp_path, validate=True)
        assert compare(got, ex.expected(case)) is None, case.name


def almost_right_pq() -> str:
    """The lesson's own solution (the reference is forbidden in the grader), except that a
    mean over no category is 0 instead of nan."""
    notebook = json.loads((ROOT / "solutions" / "08_mask_rcnn.ipynb").read_text())
    source = next("".join(c["source"]) for c in notebook["cells"]
                  if "".join(c["source"]).startswith("def panoptic_quality("))
    source = source.replace("def panoptic_quality(", "def _right(", 1)
    return source + (
        "\n\ndef panoptic_quality(pred, gt):\n"
        "    out = _right(pred, gt)\n"
        "    return {k: 0.0 if isinstance(v, float) and math.isnan(v) else v\n"
        "            for k, v in out.items()}\n")


def test_the_grader_grades_a_dict_output_end_to_end():
    """One sandboxed child: the prepare hook is imported there and the dicts come back."""
    ex = EXERCISES["panoptic_quality"]
    cell = ExerciseCell(number=3, source=almost_right_pq(), defines=("panoptic_quality",))
    result = grade_exercise(ex, Submission("08", (cell,)), "cpu", Limits(timeout_s=120),
                            np.random.default_rng(0), num_random=2)
    assert result["status"] == "failed", result
    # the cases with stuff pass: their outputs crossed and compared equal
    assert 5 <= result["passed"] < result["cases"] == len(ex.cases) + 2
    assert "['PQ_st']: 0.0 != expected nan" in result["feedback"]


def test_check_names_the_differing_key(capsys):
    def panoptic_quality(pred, gt):  # right, except that a mean over no category is 0
        out = panoptic.panoptic_quality(pred, gt)
        return {k: 0.0 if isinstance(v, float) and math.isnan(v) else v for k, v in out.items()}

    ex = EXERCISES["panoptic_quality"]
    report = check(panoptic_quality, ex, device="cpu")
    out = capsys.readouterr().out
    assert not report and "['PQ_st']: 0.0 != expected nan" in out
    assert "expected: {'PQ': " in out
    result = run_case(panoptic_quality, ex, ex.cases[0])
    assert result.passed  # the example map has stuff: nothing is nan there


# --- mutants: plausible wrong answers that the visible cases must catch -----------------------


def make_mask_targets(aligned=False, sampling_ratio=-1, use_matched=True, xy="xy",
                      stack=False):
    def mask_targets(gt_masks, proposals, matched_idxs, size):
        idx = matched_idxs if use_matched else torch.arange(len(proposals)) % len(gt_masks)
        boxes = proposals if xy == "xy" else proposals[:, [1, 0, 3, 2]]
        rois = torch.cat([idx[:, None].to(boxes), boxes], dim=1)
        images = gt_masks[:, None].to(proposals)
        if stack:  # one RoI at a time, stacked: fails on an empty list
            return torch.stack([roi_align(images, r[None], (size, size), 1.0, sampling_ratio,
                                          aligned)[0, 0] for r in rois])
        return roi_align(images, rois, (size, size), 1.0, sampling_ratio, aligned)[:, 0]
    return mask_targets


def mask_targets_crop_and_resize(gt_masks, proposals, matched_idxs, size):
    """The naive way: crop the whole-pixel box, resize it with F.interpolate."""
    out = []
    for box, i in zip(proposals.tolist(), matched_idxs.tolist(), strict=True):
        x1, y1 = max(int(box[0]), 0), max(int(box[1]), 0)
        x2, y2 = max(int(math.ceil(box[2])), x1 + 1), max(int(math.ceil(box[3])), y1 + 1)
        crop = gt_masks[i, y1:y2, x1:x2].float()
        if crop.numel() == 0:
            crop = torch.zeros(1, 1)
        out.append(F.interpolate(crop[None, None], size=(size, size), mode="bilinear",
                                 align_corners=False)[0, 0])
    return torch.stack(out) if out else proposals.new_zeros(0, size, size)


def make_paste_masks(pad=True, grow=True, corners="trunc", inclusive=True, compare_op="gt",
                     align_corners=False, clip_first=False, binary_dtype=torch.uint8):
    """A loop version of the reference; each flag changed is one classic mistake."""
    to_int = {"trunc": torch.trunc, "round": torch.round, "floor": torch.floor}[corners]

    def paste_masks(masks, boxes, image_size, threshold=0.5, padding=1):
        if masks.dim() == 4:
            masks = masks[:, 0]
        height, width = image_size
        m = masks.shape[-1]
        p = padding if pad else 0
        padded = F.pad(masks, (p,) * 4)
        scale = (m + 2 * padding) / m if grow else 1.0
        out = masks.new_zeros((len(masks), height, width))
        for i, box in enumerate(boxes):
            centre, half = (box[:2] + box[2:]) / 2, (box[2:] - box[:2]) / 2 * scale
            x1, y1, x2, y2 = (int(v) for v in to_int(torch.cat([centre - half, centre + half])))
            if clip_first:  # resizes into the visible part only
                x1, y1, x2, y2 = max(x1, 0), max(y1, 0), min(x2, width - 1), min(y2, height - 1)
            end = 1 if inclusive else 0
            w, h = max(x2 - x1 + end, 1), max(y2 - y1 + end, 1)
            resized = F.interpolate(padded[i][None, None], size=(h, w), mode="bilinear",
                                    align_corners=align_corners)[0, 0]
            left, right, top, bottom = max(x1, 0), min(x1 + w, width), max(y1, 0), \
                min(y1 + h, height)
            if left < right and top < bottom:
                out[i, top:bottom, left:right] = resized[top - y1:bottom - y1,
                                                         left - x1:right - x1]
        if threshold is None:
            return out
        keep = out > threshold if compare_op == "gt" else out >= threshold
        return keep.to(binary_dtype)
    return paste_masks


def make_mask_loss(channels="label", activation="sigmoid", reduce="mean", empty="zero",
                   label_offset=0):
    def mask_loss(mask_logits, labels, targets):
        p, c = mask_logits.shape[:2]
        if p == 0 and empty == "zero":
            return mask_logits.sum() * 0
        rows = torch.arange(p)
        if activation == "softmax":  # the classes compete for each pixel
            probs = mask_logits.softmax(dim=1)[rows, labels]
            return F.binary_cross_entropy(probs, targets, reduction=reduce)
        if activation == "sigmoid_then_bce":  # log of a rounded-to-0 sigmoid
            probs = mask_logits.sigmoid()[rows, labels]
            return F.binary_cross_entropy(probs, targets, reduction=reduce)
        if channels == "all_same_target":
            return F.binary_cross_entropy_with_logits(
                mask_logits, targets[:, None].expand_as(mask_logits), reduction=reduce)
        if channels == "all_one_hot":
            full = torch.zeros_like(mask_logits)
            full[rows, labels] = targets
            return F.binary_cross_entropy_with_logits(mask_logits, full, reduction=reduce)
        return F.binary_cross_entropy_with_logits(mask_logits[rows, labels - label_offset],
                                                  targets, reduction=reduce)
    return mask_loss


MUTANTS = [
    ("mask_targets", make_mask_targets(aligned=True)),
    ("mask_targets", make_mask_targets(sampling_ratio=1)),
    ("mask_targets", make_mask_targets(sampling_ratio=2)),
    ("mask_targets", make_mask_targets(use_matched=False)),
    ("mask_targets", make_mask_targets(xy="yx")),
    ("mask_targets", make_mask_targets(stack=True)),
    ("mask_targets", mask_targets_crop_and_resize),
    ("paste_masks", make_paste_masks(pad=False, grow=False)),  # forgets the padding
    ("paste_masks", make_paste_masks(grow=False)),
    ("paste_masks", make_paste_masks(pad=False)),
    ("paste_masks", make_paste_masks(corners="round")),
    ("paste_masks", make_paste_masks(corners="floor")),
    ("paste_masks", make_paste_masks(inclusive=False)),
    ("paste_masks", make_paste_masks(compare_op="ge")),
    ("paste_masks", make_paste_masks(align_corners=True)),
    ("paste_masks", make_paste_masks(clip_first=True)),
    ("paste_masks", make_paste_masks(binary_dtype=torch.float32)),
    ("mask_loss", make_mask_loss(activation="softmax")),
    ("mask_loss", make_mask_loss(activation="sigmoid_then_bce")),
    ("mask_loss", make_mask_loss(channels="all_same_target")),
    ("mask_loss", make_mask_loss(channels="all_one_hot")),
    ("mask_loss", make_mask_loss(reduce="sum")),
    ("mask_loss", make_mask_loss(empty="nan")),
    ("mask_loss", make_mask_loss(label_offset=1)),
    ("panoptic_quality", lambda pred, gt: loop_panoptic_quality(pred, gt, match="at_least_half")),
    ("panoptic_quality", lambda pred, gt: loop_panoptic_quality(pred, gt, void_in_union=True)),
    ("panoptic_quality", lambda pred, gt: loop_panoptic_quality(pred, gt, void_fp="counted")),
    ("panoptic_quality", lambda pred, gt: loop_panoptic_quality(pred, gt,
                                                                void_fp="at_least_half")),
    ("panoptic_quality", lambda pred, gt: loop_panoptic_quality(pred, gt, per_image=True)),
    ("panoptic_quality", lambda pred, gt: loop_panoptic_quality(pred, gt, skip_pred_only=True)),
    ("panoptic_quality", lambda pred, gt: loop_panoptic_quality(pred, gt, empty_mean=0.0)),
    ("panoptic_quality", lambda pred, gt: loop_panoptic_quality(pred, gt, rq="no_halves")),
    ("panoptic_quality", lambda pred, gt: loop_panoptic_quality(pred, gt, same_category=False)),
]


@pytest.mark.parametrize("name, mutant", MUTANTS)
def test_visible_cases_catch_mutant(name, mutant):
    assert not check(mutant, EXERCISES[name], device="cpu", verbose=False)


def test_correct_loop_versions_pass():
    # the mutant factories with every flag at its default are correct answers written
    # differently (torchvision's roi_align, a loop over detections, a pixel loop)
    for name, fn in [("mask_targets", make_mask_targets()), ("paste_masks", make_paste_masks()),
                     ("mask_loss", make_mask_loss()),
                     ("panoptic_quality", loop_panoptic_quality)]:
        assert check(fn, EXERCISES[name], device="cpu", verbose=False), name
        ex = EXERCISES[name]
        for kwargs in _cases(name, 10)[len(ex.cases):]:  # the grader's hidden cases too
            got, expected = to_plain(fn(**ex.inputs(kwargs))), to_plain(
                ex.reference(**ex.inputs(kwargs)))
            assert compare(got, expected, ex.atol, ex.rtol, ex.exact) is None, (name, kwargs)

