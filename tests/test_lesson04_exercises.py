"""The lesson 04 case tables: hand-worked answers agree with independent versions (torchvision's
DefaultBoxGenerator, plain loops for the rest), those versions pass every case, the wrappers
equal the library functions, and the tables catch the classic mistakes (each mutant below must
fail a visible case).

Lesson 04 is not registered in ``course_lib.exercises.LESSONS`` until its notebook exists, so
the table is imported from its module.
"""

import math

import numpy as np
import pytest
import torch
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
from torchvision.models.detection.image_list import ImageList

from course_lib.exercises.core import check, compare, to_plain
from course_lib.exercises.lesson04 import EXERCISES
from course_lib.models import ssd as library_ssd
from course_lib.models import yolo as library_yolo


def test_names_match_references():
    assert set(EXERCISES) == {"default_boxes", "hard_negative_mining", "yolo_encode",
                              "yolo_decode"}
    for name, ex in EXERCISES.items():
        assert ex.name == name == ex.reference.__name__


def cases_of(name, n_random=30, seed=0):
    ex = EXERCISES[name]
    rng = np.random.default_rng(seed)
    return [(c.kwargs, c.expected) for c in ex.cases] + [
        (ex.random_case(rng), None) for _ in range(n_random)]


def hw(image_size):
    if isinstance(image_size, torch.Tensor):
        return tuple(float(v) for v in image_size.tolist())
    return float(image_size), float(image_size)


# --- independent versions ----------------------------------------------------------------------


def tv_default_boxes(feature_sizes, image_size, aspect_ratios, min_ratio=0.15, max_ratio=0.9,
                     clip=True):
    generator = DefaultBoxGenerator(aspect_ratios.tolist(), min_ratio, max_ratio, clip=clip)
    h, w = (int(v) for v in image_size.tolist())
    images = ImageList(torch.zeros(1, 3, h, w), [(h, w)])
    maps = [torch.zeros(1, 1, int(fh), int(fw)) for fh, fw in feature_sizes.tolist()]
    return generator(images, maps)[0]


def loop_hard_negative_mining(loss, labels, neg_pos_ratio=3):
    mask = labels > 0
    for b in range(loss.shape[0]):
        negatives = [i for i in range(loss.shape[1]) if labels[b, i] == 0]
        negatives.sort(key=lambda i: -float(loss[b, i]))
        for i in negatives[: neg_pos_ratio * int(mask[b].sum())]:
            mask[b, i] = True
    return mask


def loop_yolo_encode(boxes, labels, S, B, C, image_size):
    height, width = hw(image_size)
    out = torch.zeros(S, S, 5 * B + C)
    best_area = {}
    for i, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        row = min(max(math.floor(cy * S / height), 0), S - 1)
        col = min(max(math.floor(cx * S / width), 0), S - 1)
        area = (x2 - x1) * (y2 - y1)
        if (row, col) in best_area and best_area[row, col] >= area:
            continue
        best_area[row, col] = area
        out[row, col] = 0.0
        for b in range(B):
            out[row, col, 5 * b: 5 * b + 5] = torch.tensor(
                [cx * S / width - col, cy * S / height - row, (x2 - x1) / width,
                 (y2 - y1) / height, 1.0])
        out[row, col, 5 * B + int(labels[i]) - 1] = 1.0
    return out


def loop_yolo_decode(output, S, B, C, image_size, conf_threshold=0.0):
    height, width = hw(image_size)
    boxes, scores, labels = [], [], []
    for row in range(S):
        for col in range(S):
            probs = output[row, col, 5 * B:].tolist()
            best = max(range(C), key=lambda c: (probs[c], -c))
            for b in range(B):
                x, y, w, h, conf = output[row, col, 5 * b: 5 * b + 5].tolist()
                score = conf * probs[best]
                if score < conf_threshold:
                    continue
                cx, cy = (col + x) * width / S, (row + y) * height / S
                w, h = max(w, 0.0) * width, max(h, 0.0) * height
                boxes.append([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
                scores.append(score)
                labels.append(best + 1)
    return (torch.tensor(boxes).reshape(-1, 4), torch.tensor(scores).reshape(-1),
            torch.tensor(labels, dtype=torch.int64).reshape(-1))


INDEPENDENT = {
    "default_boxes": tv_default_boxes,
    "hard_negative_mining": loop_hard_negative_mining,
    "yolo_encode": loop_yolo_encode,
    "yolo_decode": loop_yolo_decode,
}


@pytest.mark.parametrize("name", sorted(INDEPENDENT))
def test_every_case_and_its_hand_worked_answer_agree_with_an_independent_version(name):
    ex = EXERCISES[name]
    for kwargs, expected in cases_of(name):
        theirs = to_plain(INDEPENDENT[name](**kwargs))
        assert compare(to_plain(ex.reference(**kwargs)), theirs, ex.atol, ex.rtol,
                       ex.exact) is None, kwargs
        if expected is not None:
            assert compare(to_plain(expected), theirs, ex.atol, ex.rtol, ex.exact) is None, kwargs


@pytest.mark.parametrize("name", sorted(INDEPENDENT))
def test_independent_versions_pass_the_visible_cases(name):
    fn = INDEPENDENT[name]
    fn.__name__ = name
    assert check(fn, EXERCISES[name], device="cpu", verbose=False)


def test_wrappers_equal_the_library_functions():
    kwargs = EXERCISES["default_boxes"].random_case(np.random.default_rng(1))
    library = library_ssd.default_boxes(
        [tuple(s) for s in kwargs["feature_sizes"].tolist()],
        tuple(kwargs["image_size"].tolist()), aspect_ratios=kwargs["aspect_ratios"].tolist(),
        min_ratio=kwargs["min_ratio"], max_ratio=kwargs["max_ratio"], clip=kwargs["clip"])
    assert torch.equal(EXERCISES["default_boxes"].reference(**kwargs), library)

    kwargs = EXERCISES["yolo_encode"].random_case(np.random.default_rng(2))
    target = {"boxes": kwargs["boxes"], "labels": kwargs["labels"]}
    size = kwargs["image_size"]
    size = tuple(size.tolist()) if isinstance(size, torch.Tensor) else size
    assert torch.equal(EXERCISES["yolo_encode"].reference(**kwargs), library_yolo.yolo_encode(
        [target], kwargs["S"], kwargs["B"], kwargs["C"], size)[0])

    kwargs = EXERCISES["yolo_decode"].random_case(np.random.default_rng(3))
    size = kwargs["image_size"]
    size = tuple(size.tolist()) if isinstance(size, torch.Tensor) else size
    out = library_yolo.yolo_decode(kwargs["output"][None], kwargs["S"], kwargs["B"], kwargs["C"],
                                   size, kwargs["conf_threshold"])[0]
    got = EXERCISES["yolo_decode"].reference(**kwargs)
    for g, key in zip(got, ("boxes", "scores", "labels"), strict=True):
        assert torch.equal(g, out[key])


def test_random_cases_stay_clear_of_ties_and_borders():
    for seed in range(50):
        rng = np.random.default_rng(seed)
        mining = EXERCISES["hard_negative_mining"].random_case(rng)
        for row in mining["loss"]:
            assert len(row.unique()) == len(row)
        decode = EXERCISES["yolo_decode"].random_case(rng)
        if decode["conf_threshold"] > 0:
            _, scores, _ = loop_yolo_decode(decode["output"], decode["S"], decode["B"],
                                            decode["C"], decode["image_size"])
            assert ((scores - decode["conf_threshold"]).abs() > 1e-3).all()


# --- mutants: plausible wrong answers that the visible cases must catch -------------------------


def make_default_boxes(no_half=False, column_major=False, clip_corners=False,
                       extra_next_scale=False, ratio_inverted=False, width_only=False):
    def default_boxes(feature_sizes, image_size, aspect_ratios, min_ratio=0.15, max_ratio=0.9,
                      clip=True):
        levels = feature_sizes.tolist()
        m = len(levels)
        scales = [min_ratio, max_ratio] if m == 1 else [
            min_ratio + (max_ratio - min_ratio) * k / (m - 1) for k in range(m)] + [1.0]
        height, width = (float(v) for v in image_size.tolist())
        out = []
        for k, (fh, fw) in enumerate(levels):
            s = scales[k]
            extra = scales[k + 1] if extra_next_scale else math.sqrt(s * scales[k + 1])
            wh = [(s, s), (extra, extra)]
            for r in aspect_ratios[k].tolist():
                r = 1 / r if ratio_inverted else r
                wh += [(s * math.sqrt(r), s / math.sqrt(r)), (s / math.sqrt(r), s * math.sqrt(r))]
            if clip and not clip_corners:
                wh = [(min(max(w, 0), 1), min(max(h, 0), 1)) for w, h in wh]
            offset = 0.0 if no_half else 0.5
            positions = ([(y, x) for x in range(fw) for y in range(fh)] if column_major
                         else [(y, x) for y in range(fh) for x in range(fw)])
            for y, x in positions:
                cx, cy = (x + offset) / fw, (y + offset) / fh
                for w, h in wh:
                    box = [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
                    if clip and clip_corners:
                        box = [min(max(v, 0), 1) for v in box]
                    sy = width if width_only else height
                    out.append([box[0] * width, box[1] * sy, box[2] * width, box[3] * sy])
        return torch.tensor(out).reshape(-1, 4)
    return default_boxes


def make_mining(across_batch=False, lowest=False, forget_positives=False):
    def hard_negative_mining(loss, labels, neg_pos_ratio=3):
        positive = labels > 0
        sign = 1.0 if lowest else -1.0
        if across_batch:
            flat = (sign * loss).masked_fill(positive, math.inf).flatten()
            n = neg_pos_ratio * int(positive.sum())
            negative = torch.zeros(flat.shape, dtype=torch.bool)
            negative[flat.argsort()[:n]] = True
            negative = negative.reshape(loss.shape) & ~positive
        else:
            negative = torch.zeros_like(positive)
            for b in range(loss.shape[0]):
                order = (sign * loss[b]).masked_fill(positive[b], math.inf).argsort()
                negative[b, order[: neg_pos_ratio * int(positive[b].sum())]] = True
            negative &= ~positive
        return negative if forget_positives else positive | negative
    return hard_negative_mining


def make_encode(image_relative=False, sqrt_wh=False, swap_row_col=False, first_slot_only=False,
                first_box_wins=False):
    def yolo_encode(boxes, labels, S, B, C, image_size):
        height, width = hw(image_size)
        out = torch.zeros(S, S, 5 * B + C)
        best_area = {}
        for i, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
            cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
            row = min(math.floor(cy * S / height), S - 1)
            col = min(math.floor(cx * S / width), S - 1)
            area = (x2 - x1) * (y2 - y1)
            if (row, col) in best_area and (first_box_wins or best_area[row, col] >= area):
                continue
            best_area[row, col] = area
            x, y = (cx / width, cy / height) if image_relative else (
                cx * S / width - col, cy * S / height - row)
            w, h = (x2 - x1) / width, (y2 - y1) / height
            if sqrt_wh:
                w, h = math.sqrt(w), math.sqrt(h)
            r, c = (col, row) if swap_row_col else (row, col)
            out[r, c] = 0.0
            for b in range(1 if first_slot_only else B):
                out[r, c, 5 * b: 5 * b + 5] = torch.tensor([x, y, w, h, 1.0])
            out[r, c, 5 * B + int(labels[i]) - 1] = 1.0
        return out
    return yolo_encode


def make_decode(conf_only=False, zero_based=False, no_offset=False, strict=False):
    def yolo_decode(output, S, B, C, image_size, conf_threshold=0.0):
        height, width = hw(image_size)
        boxes, scores, labels = [], [], []
        for row in range(S):
            for col in range(S):
                probs = output[row, col, 5 * B:]
                best = int(probs.argmax())
                for b in range(B):
                    x, y, w, h, conf = output[row, col, 5 * b: 5 * b + 5].tolist()
                    score = conf if conf_only else conf * float(probs[best])
                    if score < conf_threshold or (strict and score == conf_threshold):
                        continue
                    gx, gy = (0, 0) if no_offset else (col, row)
                    cx, cy = (gx + x) * width / S, (gy + y) * height / S
                    w, h = max(w, 0.0) * width, max(h, 0.0) * height
                    boxes.append([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
                    scores.append(score)
                    labels.append(best if zero_based else best + 1)
        return (torch.tensor(boxes).reshape(-1, 4), torch.tensor(scores).reshape(-1),
                torch.tensor(labels, dtype=torch.int64).reshape(-1))
    return yolo_decode


@pytest.mark.parametrize("name, fn", [
    ("default_boxes", make_default_boxes()),
    ("hard_negative_mining", make_mining()),
    ("yolo_encode", make_encode()),
    ("yolo_decode", make_decode()),
])
def test_mutant_factories_with_every_flag_off_are_correct(name, fn):
    fn.__name__ = name
    ex = EXERCISES[name]
    assert check(fn, ex, device="cpu", verbose=False)
    rng = np.random.default_rng(4)
    for _ in range(30):
        kwargs = ex.random_case(rng)
        assert compare(to_plain(fn(**kwargs)), to_plain(ex.reference(**kwargs)), ex.atol,
                       ex.rtol, ex.exact) is None, kwargs


@pytest.mark.parametrize("name, mutant", [
    ("default_boxes", make_default_boxes(no_half=True)),
    ("default_boxes", make_default_boxes(column_major=True)),
    ("default_boxes", make_default_boxes(clip_corners=True)),
    ("default_boxes", make_default_boxes(extra_next_scale=True)),
    ("default_boxes", make_default_boxes(ratio_inverted=True)),
    ("default_boxes", make_default_boxes(width_only=True)),
    ("hard_negative_mining", make_mining(across_batch=True)),
    ("hard_negative_mining", make_mining(lowest=True)),
    ("hard_negative_mining", make_mining(forget_positives=True)),
    ("yolo_encode", make_encode(image_relative=True)),
    ("yolo_encode", make_encode(sqrt_wh=True)),
    ("yolo_encode", make_encode(swap_row_col=True)),
    ("yolo_encode", make_encode(first_slot_only=True)),
    ("yolo_encode", make_encode(first_box_wins=True)),
    ("yolo_decode", make_decode(conf_only=True)),
    ("yolo_decode", make_decode(zero_based=True)),
    ("yolo_decode", make_decode(no_offset=True)),
    ("yolo_decode", make_decode(strict=True)),
])
def test_visible_cases_catch_mutant(name, mutant):
    mutant.__name__ = name
    assert not check(mutant, EXERCISES[name], device="cpu", verbose=False)
