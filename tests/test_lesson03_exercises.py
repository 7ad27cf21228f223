"""The lesson 03 case tables: hand-worked answers agree with torchvision (AnchorGenerator,
Matcher, BoxCoder, nms), versions built from torchvision's pieces pass every case, and the
tables catch the classic mistakes (each mutant below must fail a visible case).

The generic properties of every registered table are in tests/test_exercise_tables.py; this
file imports the table from its module directly.
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torchvision.models.detection._utils import BoxCoder, Matcher
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList

from course_lib.exercises.core import check, compare, to_plain
from course_lib.exercises.lesson03 import EXERCISES, LECTURE_ANCHORS
from course_lib.models import rpn as library_rpn


def test_names_match_references():
    assert set(EXERCISES) == {"generate_anchors", "label_anchors", "rpn_loss",
                              "select_proposals"}
    for name, ex in EXERCISES.items():
        assert ex.name == name == ex.reference.__name__


def cases_of(name, n_random=30, seed=0):
    ex = EXERCISES[name]
    rng = np.random.default_rng(seed)
    return [(c.kwargs, c.expected) for c in ex.cases] + [
        (ex.random_case(rng), None) for _ in range(n_random)]


# --- independent versions built from torchvision's pieces -------------------------------------


def tv_generate_anchors(feature_size, stride, sizes, aspect_ratios):
    h, w = (int(v) for v in feature_size)
    if h * w == 0:  # torchvision divides by the feature size
        return torch.zeros(0, 4)
    generator = AnchorGenerator((tuple(sizes.tolist()),), (tuple(aspect_ratios.tolist()),))
    images = ImageList(torch.zeros(1, 3, h * stride, w * stride), [(h * stride, w * stride)])
    return generator(images, [torch.zeros(1, 1, h, w)])[0]


def tv_label_anchors(anchors, gt_boxes, pos_iou=0.7, neg_iou=0.3):
    if gt_boxes.numel() == 0 or anchors.numel() == 0:
        return torch.zeros(len(anchors)), torch.zeros(len(anchors), dtype=torch.int64)
    matched = Matcher(pos_iou, neg_iou, allow_low_quality_matches=True)(
        torchvision.ops.box_iou(gt_boxes, anchors))
    labels = (matched >= 0).float()
    labels[matched == Matcher.BELOW_LOW_THRESHOLD] = 0.0
    labels[matched == Matcher.BETWEEN_THRESHOLDS] = -1.0
    return labels, matched.clamp(min=0)


def tv_rpn_loss(objectness, deltas, anchors, gt_boxes_list, batch_size_per_image=256,
                positive_fraction=0.5, pos_iou=0.7, neg_iou=0.3):
    """Every labelled anchor sampled (the tables keep A <= batch_size_per_image / 2)."""
    scores, codes = library_rpn.flatten_predictions(objectness, deltas)
    coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
    logits, labels, preds, targets = [], [], [], []
    for s, c, gt in zip(scores, codes, gt_boxes_list, strict=True):
        lab, matched = tv_label_anchors(anchors, gt, pos_iou, neg_iou)
        keep, pos = lab >= 0, lab == 1
        logits.append(s[keep])
        labels.append(lab[keep])
        preds.append(c[pos])
        targets.append(coder.encode_single(gt[matched[pos]], anchors[pos]) if pos.any()
                       else c[pos])
    logits = torch.cat(logits)
    box = F.smooth_l1_loss(torch.cat(preds), torch.cat(targets), beta=1 / 9, reduction="sum")
    return F.binary_cross_entropy_with_logits(logits, torch.cat(labels)), box / logits.numel()


def tv_select_proposals(objectness, deltas, anchors, image_size, pre_nms_top_n=1000,
                        post_nms_top_n=100, nms_thresh=0.7, min_size=1e-3, score_thresh=0.0):
    scores, codes = library_rpn.flatten_predictions(objectness, deltas)
    coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
    size = tuple(int(v) for v in image_size)
    all_boxes, all_scores = [], []
    for s, c in zip(scores, codes, strict=True):
        top = s.topk(min(pre_nms_top_n, len(s))).indices
        boxes = coder.decode_single(c[top], anchors[top])
        boxes = torchvision.ops.clip_boxes_to_image(boxes, size)
        probs = torch.sigmoid(s[top])
        keep = torchvision.ops.remove_small_boxes(boxes, min_size)
        boxes, probs = boxes[keep], probs[keep]
        keep = probs >= score_thresh
        boxes, probs = boxes[keep], probs[keep]
        keep = torchvision.ops.nms(boxes, probs, nms_thresh)[:post_nms_top_n]
        all_boxes.append(boxes[keep])
        all_scores.append(probs[keep])
    return all_boxes, all_scores


TORCHVISION = {
    "generate_anchors": tv_generate_anchors,
    "label_anchors": tv_label_anchors,
    "rpn_loss": tv_rpn_loss,
    "select_proposals": tv_select_proposals,
}


@pytest.mark.parametrize("name", sorted(TORCHVISION))
def test_every_case_and_its_hand_worked_answer_agree_with_torchvision(name):
    ex = EXERCISES[name]
    for kwargs, expected in cases_of(name):
        theirs = to_plain(TORCHVISION[name](**kwargs))
        assert compare(to_plain(ex.reference(**kwargs)), theirs, ex.atol, ex.rtol) is None, kwargs
        if expected is not None:
            assert compare(to_plain(expected), theirs, ex.atol, ex.rtol) is None, kwargs


@pytest.mark.parametrize("name", sorted(TORCHVISION))
def test_torchvision_versions_pass_the_visible_cases(name):
    fn = TORCHVISION[name]
    fn.__name__ = name
    assert check(fn, EXERCISES[name], device="cpu", verbose=False)


def test_rpn_loss_is_the_library_loss_as_a_tuple():
    ex = EXERCISES["rpn_loss"]
    kwargs = ex.random_case(np.random.default_rng(3))
    losses = library_rpn.rpn_loss(**kwargs)
    assert to_plain(ex.reference(**kwargs)) == pytest.approx(
        (losses["objectness"].item(), losses["box"].item()))


def test_rpn_loss_cases_sample_every_labelled_anchor():
    # the sampler takes at most batch_size_per_image / 2 positives: with fewer anchors than
    # that, every positive and negative is sampled and the random order does not matter
    for kwargs, _ in cases_of("rpn_loss", n_random=50):
        assert kwargs["anchors"].shape[0] <= 128
        assert kwargs.get("batch_size_per_image", 256) == 256


def test_lecture_anchors_cover_a_32_by_32_image_from_pixel_centres():
    assert LECTURE_ANCHORS[:, :2].add(LECTURE_ANCHORS[:, 2:]).div(2).tolist() == [
        [0, 0], [16, 0], [0, 16], [16, 16]]


def test_hidden_cases_stay_clear_of_thresholds_and_the_quirk():
    ex = EXERCISES["label_anchors"]
    for seed in range(100):
        kwargs = ex.random_case(np.random.default_rng(seed))
        if kwargs["gt_boxes"].numel():
            iou = torchvision.ops.box_iou(kwargs["gt_boxes"], kwargs["anchors"]).double()
            assert bool((iou.max(dim=1).values > 0).all())  # no GT without an overlap
            for t in (kwargs["pos_iou"], kwargs["neg_iou"]):
                assert not bool(((iou - t).abs() < 1e-4).any())


# --- mutants: plausible wrong answers that the visible cases must catch -------------------------


def make_anchors(column_major=False, ratio_w_over_h=False, rounded=True, cell_centre=False,
                 size_major=False, anchor_major=False):
    def generate_anchors(feature_size, stride, sizes, aspect_ratios):
        h, w = (int(v) for v in feature_size)
        base = []
        pairs = ([(r, s) for s in sizes.tolist() for r in aspect_ratios.tolist()] if size_major
                 else [(r, s) for r in aspect_ratios.tolist() for s in sizes.tolist()])
        for r, s in pairs:
            r = 1 / r if ratio_w_over_h else r
            aw, ah = s / math.sqrt(r), s * math.sqrt(r)
            corners = torch.tensor([-aw / 2, -ah / 2, aw / 2, ah / 2])
            base.append(corners.round() if rounded else corners)
        base = torch.stack(base) if base else torch.zeros(0, 4)
        offset = stride / 2 if cell_centre else 0.0
        positions = ([(y, x) for x in range(w) for y in range(h)] if column_major
                     else [(y, x) for y in range(h) for x in range(w)])
        shifts = torch.tensor([[x * stride + offset, y * stride + offset] * 2
                               for y, x in positions], dtype=torch.float32).reshape(-1, 4)
        anchors = shifts[:, None] + base[None]  # (P, K, 4)
        if anchor_major:
            anchors = anchors.transpose(0, 1)
        return anchors.reshape(-1, 4)
    return generate_anchors


def make_label_anchors(best_anchor_rule=True, strict_pos=False, inclusive_neg=False,
                       argmax_only=False, matched_minus_one=False):
    def label_anchors(anchors, gt_boxes, pos_iou=0.7, neg_iou=0.3):
        labels = torch.zeros(len(anchors))
        matched = torch.zeros(len(anchors), dtype=torch.int64)
        if len(gt_boxes) == 0 or len(anchors) == 0:
            return labels, matched
        iou = torchvision.ops.box_iou(gt_boxes, anchors)
        best, best_gt = iou.max(dim=0)
        labels[(best > neg_iou) if inclusive_neg else (best >= neg_iou)] = -1.0
        labels[(best > pos_iou) if strict_pos else (best >= pos_iou)] = 1.0
        if best_anchor_rule:
            if argmax_only:
                labels[iou.argmax(dim=1)] = 1.0
            else:
                labels[(iou == iou.max(dim=1, keepdim=True).values).any(dim=0)] = 1.0
        matched = torch.where(labels == 1, best_gt, -1 if matched_minus_one else 0)
        return labels, matched
    return label_anchors


def make_rpn_loss(box_norm="sampled", box_loss="smooth_l1", negatives_in_box=False,
                  softmax=False):
    def rpn_loss(objectness, deltas, anchors, gt_boxes_list, batch_size_per_image=256,
                 positive_fraction=0.5, pos_iou=0.7, neg_iou=0.3):
        scores, codes = library_rpn.flatten_predictions(objectness, deltas)
        coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
        logits, labels, diffs = [], [], []
        for s, c, gt in zip(scores, codes, gt_boxes_list, strict=True):
            lab, matched = tv_label_anchors(anchors, gt, pos_iou, neg_iou)
            keep = lab >= 0
            logits.append(s[keep])
            labels.append(lab[keep])
            regress = keep if negatives_in_box and len(gt) else lab == 1
            if regress.any():
                target = coder.encode_single(gt[matched[regress]], anchors[regress])
                diffs.append(c[regress] - target)
        logits, labels = torch.cat(logits), torch.cat(labels)
        diff = torch.cat(diffs) if diffs else torch.zeros(0, 4)
        if softmax:
            obj = F.binary_cross_entropy(torch.softmax(logits, 0), labels)
        else:
            obj = F.binary_cross_entropy_with_logits(logits, labels)
        per = {"smooth_l1": F.smooth_l1_loss(diff, torch.zeros_like(diff), beta=1 / 9,
                                             reduction="sum"),
               "l1": diff.abs().sum(), "l2": (diff ** 2).sum()}[box_loss]
        n = max(int((labels == 1).sum()), 1) if box_norm == "positives" else labels.numel()
        return obj, per / n
    return rpn_loss


def make_select(clip=True, use_nms=True, top_n_after_nms=False, thresh_on_logits=False,
                use_min_size=True, swap_hw=False):
    def select_proposals(objectness, deltas, anchors, image_size, pre_nms_top_n=1000,
                         post_nms_top_n=100, nms_thresh=0.7, min_size=1e-3, score_thresh=0.0):
        scores, codes = library_rpn.flatten_predictions(objectness, deltas)
        coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
        height, width = (int(v) for v in image_size)
        if swap_hw:
            height, width = width, height
        out_boxes, out_scores = [], []
        for s, c in zip(scores, codes, strict=True):
            order = s.argsort(descending=True)
            if not top_n_after_nms:
                order = order[:pre_nms_top_n]
            boxes = coder.decode_single(c[order], anchors[order])
            if clip:
                boxes = torchvision.ops.clip_boxes_to_image(boxes, (height, width))
            logits, probs = s[order], torch.sigmoid(s[order])
            keep = (logits if thresh_on_logits else probs) >= score_thresh
            if use_min_size:
                keep &= (boxes[:, 2] - boxes[:, 0] >= min_size)
                keep &= (boxes[:, 3] - boxes[:, 1] >= min_size)
            boxes, probs = boxes[keep], probs[keep]
            idx = torchvision.ops.nms(boxes, probs, nms_thresh) if use_nms else \
                torch.arange(len(boxes))
            if top_n_after_nms:
                idx = idx[:pre_nms_top_n]
            idx = idx[:post_nms_top_n]
            out_boxes.append(boxes[idx])
            out_scores.append(probs[idx])
        return out_boxes, out_scores
    return select_proposals


@pytest.mark.parametrize("name, fn", [
    ("generate_anchors", make_anchors()),
    ("label_anchors", make_label_anchors()),
    ("rpn_loss", make_rpn_loss()),
    ("select_proposals", make_select()),
])
def test_mutant_factories_with_every_flag_off_are_correct(name, fn):
    fn.__name__ = name
    ex = EXERCISES[name]
    assert check(fn, ex, device="cpu", verbose=False)
    rng = np.random.default_rng(4)
    for _ in range(30):
        kwargs = ex.random_case(rng)
        assert compare(to_plain(fn(**kwargs)), to_plain(ex.reference(**kwargs)), ex.atol,
                       ex.rtol) is None, kwargs


@pytest.mark.parametrize("name, mutant", [
    ("generate_anchors", make_anchors(column_major=True)),
    ("generate_anchors", make_anchors(ratio_w_over_h=True)),
    ("generate_anchors", make_anchors(rounded=False)),
    ("generate_anchors", make_anchors(cell_centre=True)),
    ("generate_anchors", make_anchors(size_major=True)),
    ("generate_anchors", make_anchors(anchor_major=True)),
    ("label_anchors", make_label_anchors(best_anchor_rule=False)),
    ("label_anchors", make_label_anchors(strict_pos=True)),
    ("label_anchors", make_label_anchors(inclusive_neg=True)),
    ("label_anchors", make_label_anchors(argmax_only=True)),
    ("label_anchors", make_label_anchors(matched_minus_one=True)),
    ("rpn_loss", make_rpn_loss(box_norm="positives")),
    ("rpn_loss", make_rpn_loss(box_loss="l1")),
    ("rpn_loss", make_rpn_loss(box_loss="l2")),
    ("rpn_loss", make_rpn_loss(negatives_in_box=True)),
    ("rpn_loss", make_rpn_loss(softmax=True)),
    ("select_proposals", make_select(clip=False)),
    ("select_proposals", make_select(use_nms=False)),
    ("select_proposals", make_select(top_n_after_nms=True)),
    ("select_proposals", make_select(thresh_on_logits=True)),
    ("select_proposals", make_select(use_min_size=False)),
    ("select_proposals", make_select(swap_hw=True)),
])
def test_visible_cases_catch_mutant(name, mutant):
    mutant.__name__ = name
    assert not check(mutant, EXERCISES[name], device="cpu", verbose=False)
