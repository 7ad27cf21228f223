"""The lesson 02 case tables: hand-worked answers agree with torchvision (BoxCoder, roi_pool,
roi_align), loop versions written independently pass every case, and the tables catch the
classic mistakes (each mutant below must fail a visible case).

The generic properties of every registered table are in tests/test_exercise_tables.py; this
file imports the table from its module directly.
"""

import math

import numpy as np
import pytest
import torch
import torchvision
from torchvision.models.detection._utils import BoxCoder

from course_lib.exercises.core import check, compare, to_plain
from course_lib.exercises.lesson02 import EXERCISES, LECTURE_FEATURE_MAP, LINEAR_FEATURE_MAP

CLIP = math.log(1000.0 / 16)


def tv_encode(reference_boxes, proposals, weights=(1.0, 1.0, 1.0, 1.0)):
    return BoxCoder(tuple(float(w) for w in weights)).encode_single(reference_boxes, proposals)


def tv_decode(rel_codes, boxes, weights=(1.0, 1.0, 1.0, 1.0),
              bbox_xform_clip=CLIP):
    coder = BoxCoder(tuple(float(w) for w in weights), bbox_xform_clip)
    return coder.decode_single(rel_codes, boxes)


TORCHVISION = {
    "encode_boxes": tv_encode,
    "decode_boxes": tv_decode,
    "roi_pool": torchvision.ops.roi_pool,
    "roi_align": torchvision.ops.roi_align,
}


def test_names_match_references():
    assert set(EXERCISES) == {"encode_boxes", "decode_boxes", "roi_pool", "roi_align"}
    for name, ex in EXERCISES.items():
        assert ex.name == name == ex.reference.__name__


@pytest.mark.parametrize("name", sorted(TORCHVISION))
def test_every_case_and_its_hand_worked_answer_agree_with_torchvision(name):
    ex = EXERCISES[name]
    rng = np.random.default_rng(0)
    cases = [(c.kwargs, c.expected) for c in ex.cases]
    cases += [(ex.random_case(rng), None) for _ in range(40)]
    for kwargs, expected in cases:
        theirs = to_plain(TORCHVISION[name](**kwargs))
        assert compare(to_plain(ex.reference(**kwargs)), theirs, 1e-6, 1e-6) is None, kwargs
        if expected is not None:
            assert compare(to_plain(expected), theirs, ex.atol, ex.rtol) is None, kwargs


def test_the_readable_feature_maps():
    assert LECTURE_FEATURE_MAP.amax().item() == 9
    pooled = torch.nn.functional.max_pool2d(LECTURE_FEATURE_MAP, 2)
    assert pooled[0, 0].tolist() == [[8, 9], [7, 6]]
    # bilinear interpolation of 4 * row + col is exact: torchvision agrees at a fractional point
    point = torchvision.ops.roi_align(LINEAR_FEATURE_MAP, torch.tensor([[0, 1.2, 1.2, 2.2, 2.2]]),
                                      1, sampling_ratio=1)
    assert point.item() == pytest.approx(4 * 1.7 + 1.7)


def test_encode_and_decode_cases_invert_each_other():
    enc, dec = EXERCISES["encode_boxes"], EXERCISES["decode_boxes"]
    rng = np.random.default_rng(1)
    for _ in range(20):
        kwargs = enc.random_case(rng)
        codes = enc.reference(**kwargs)
        back = dec.reference(codes, kwargs["proposals"], kwargs["weights"])
        assert torch.allclose(back, kwargs["reference_boxes"], atol=1e-3)


# --- loop versions, written independently in float64: correct answers written differently,
# --- and with a flag on, the classic mistakes ---------------------------------------------------


def _c_round(v):
    return math.floor(v + 0.5) if v >= 0 else math.ceil(v - 0.5)


def make_roi_pool(rounding="c", inclusive=True):
    round_fn = {"c": _c_round, "even": round, "floor": math.floor}[rounding]

    def roi_pool(input, boxes, output_size, spatial_scale=1.0):
        ph, pw = (output_size, output_size) if isinstance(output_size, int) else output_size
        _, channels, height, width = input.shape
        out = input.new_zeros(boxes.shape[0], channels, ph, pw)
        for k, (b, *corners) in enumerate(boxes.double().tolist()):
            x1, y1, x2, y2 = (round_fn(v * spatial_scale) for v in corners)
            extra = 1 if inclusive else 0
            rh, rw = max(y2 - y1 + extra, 1), max(x2 - x1 + extra, 1)
            for i in range(ph):
                h0 = min(max(math.floor(i * rh / ph) + y1, 0), height)
                h1 = min(max(math.ceil((i + 1) * rh / ph) + y1, 0), height)
                for j in range(pw):
                    w0 = min(max(math.floor(j * rw / pw) + x1, 0), width)
                    w1 = min(max(math.ceil((j + 1) * rw / pw) + x1, 0), width)
                    if h1 > h0 and w1 > w0:
                        out[k, :, i, j] = input[int(b), :, h0:h1, w0:w1].amax(dim=(1, 2))
        return out
    return roi_pool


def _bilinear(feat, y, x):
    """torchvision's bilinear read of ``feat`` (C, H, W) at ``(y, x)``."""
    _, height, width = feat.shape
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return feat.new_zeros(feat.shape[0])
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = int(y), int(x)
    if y0 >= height - 1:
        y0 = y1 = height - 1
        y = float(y0)
    else:
        y1 = y0 + 1
    if x0 >= width - 1:
        x0 = x1 = width - 1
        x = float(x0)
    else:
        x1 = x0 + 1
    ly, lx = y - y0, x - x0
    return ((1 - ly) * (1 - lx) * feat[:, y0, x0] + (1 - ly) * lx * feat[:, y0, x1]
            + ly * (1 - lx) * feat[:, y1, x0] + ly * lx * feat[:, y1, x1])


def make_roi_align(round_coords=False, forget_offset=False):
    def roi_align(input, boxes, output_size, spatial_scale=1.0, sampling_ratio=-1,
                  aligned=False):
        ph, pw = (output_size, output_size) if isinstance(output_size, int) else output_size
        feats = input.double()
        out = feats.new_zeros(boxes.shape[0], input.shape[1], ph, pw)
        offset = 0.5 if aligned and not forget_offset else 0.0
        for k, (b, *corners) in enumerate(boxes.double().tolist()):
            x1, y1, x2, y2 = (v * spatial_scale - offset for v in corners)
            if round_coords:
                x1, y1, x2, y2 = (float(_c_round(v)) for v in (x1, y1, x2, y2))
            rh, rw = y2 - y1, x2 - x1
            if not aligned:
                rh, rw = max(rh, 1.0), max(rw, 1.0)
            bh, bw = rh / ph, rw / pw
            gh = sampling_ratio if sampling_ratio > 0 else math.ceil(rh / ph)
            gw = sampling_ratio if sampling_ratio > 0 else math.ceil(rw / pw)
            if gh <= 0 or gw <= 0:
                continue
            for i in range(ph):
                for j in range(pw):
                    total = sum(
                        _bilinear(feats[int(b)], y1 + i * bh + (iy + 0.5) * bh / gh,
                                  x1 + j * bw + (ix + 0.5) * bw / gw)
                        for iy in range(gh) for ix in range(gw))
                    out[k, :, i, j] = total / (gh * gw)
        return out.to(input.dtype)
    return roi_align


def encode_corners(reference_boxes, proposals, weights=(1.0, 1.0, 1.0, 1.0)):
    wx, wy, ww, wh = (float(w) for w in weights)
    pw, ph = proposals[:, 2] - proposals[:, 0], proposals[:, 3] - proposals[:, 1]
    gw, gh = reference_boxes[:, 2] - reference_boxes[:, 0], reference_boxes[:, 3] - \
        reference_boxes[:, 1]
    return torch.stack([wx * (reference_boxes[:, 0] - proposals[:, 0]) / pw,
                        wy * (reference_boxes[:, 1] - proposals[:, 1]) / ph,
                        ww * torch.log(gw / pw), wh * torch.log(gh / ph)], dim=1)


def make_encode(log=True, use_weights=True, divide_by_reference=False):
    def encode_boxes(reference_boxes, proposals, weights=(1.0, 1.0, 1.0, 1.0)):
        wx, wy, ww, wh = (float(w) for w in weights) if use_weights else (1.0,) * 4
        pw, ph = proposals[:, 2] - proposals[:, 0], proposals[:, 3] - proposals[:, 1]
        px, py = proposals[:, 0] + pw / 2, proposals[:, 1] + ph / 2
        gw = reference_boxes[:, 2] - reference_boxes[:, 0]
        gh = reference_boxes[:, 3] - reference_boxes[:, 1]
        gx, gy = reference_boxes[:, 0] + gw / 2, reference_boxes[:, 1] + gh / 2
        dw, dh = (gw, gh) if divide_by_reference else (pw, ph)
        f = torch.log if log else (lambda v: v)
        return torch.stack([wx * (gx - px) / dw, wy * (gy - py) / dh,
                            ww * f(gw / pw), wh * f(gh / ph)], dim=1)
    return encode_boxes


def make_decode(clamp=True, use_exp=True, swap_xy=False, clamp_before_weights=False):
    def decode_boxes(rel_codes, boxes, weights=(1.0, 1.0, 1.0, 1.0),
                     bbox_xform_clip=CLIP):
        wx, wy, ww, wh = (float(w) for w in weights)
        n = rel_codes.shape[0]
        codes = rel_codes.reshape(n, rel_codes.shape[1] // 4, 4).double()
        b = boxes.double()
        pw, ph = (b[:, 2] - b[:, 0])[:, None], (b[:, 3] - b[:, 1])[:, None]
        px, py = b[:, 0, None] + pw / 2, b[:, 1, None] + ph / 2
        if swap_xy:
            pw, ph = ph, pw
        dx, dy = codes[..., 0] / wx, codes[..., 1] / wy
        if clamp_before_weights:
            dw = codes[..., 2].clamp(max=bbox_xform_clip) / ww
            dh = codes[..., 3].clamp(max=bbox_xform_clip) / wh
        else:
            dw, dh = codes[..., 2] / ww, codes[..., 3] / wh
            if clamp:
                dw, dh = dw.clamp(max=bbox_xform_clip), dh.clamp(max=bbox_xform_clip)
        f = torch.exp if use_exp else (lambda v: v)
        cx, cy, w, h = px + dx * pw, py + dy * ph, pw * f(dw), ph * f(dh)
        out = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=2)
        return out.reshape(n, rel_codes.shape[1]).to(rel_codes.dtype)
    return decode_boxes


CORRECT = [
    ("encode_boxes", make_encode()),
    ("decode_boxes", make_decode()),
    ("roi_pool", make_roi_pool()),
    ("roi_align", make_roi_align()),
]


@pytest.mark.parametrize("name, fn", CORRECT)
def test_independent_versions_pass_visible_and_hidden_cases(name, fn):
    fn.__name__ = name
    ex = EXERCISES[name]
    assert check(fn, ex, device="cpu", verbose=False)
    rng = np.random.default_rng(2)
    for _ in range(60):  # the hidden cases' tolerance accepts a float64 loop version
        kwargs = ex.random_case(rng)
        expected = to_plain(ex.reference(**kwargs))
        assert compare(to_plain(fn(**kwargs)), expected, ex.atol, ex.rtol) is None, kwargs


@pytest.mark.parametrize("name, mutant", [
    ("encode_boxes", encode_corners),
    ("encode_boxes", make_encode(log=False)),
    ("encode_boxes", make_encode(use_weights=False)),
    ("encode_boxes", make_encode(divide_by_reference=True)),
    ("decode_boxes", make_decode(clamp=False)),
    ("decode_boxes", make_decode(use_exp=False)),
    ("decode_boxes", make_decode(swap_xy=True)),
    ("decode_boxes", make_decode(clamp_before_weights=True)),
    ("roi_pool", make_roi_pool(rounding="even")),
    ("roi_pool", make_roi_pool(rounding="floor")),
    ("roi_pool", make_roi_pool(inclusive=False)),
    ("roi_align", make_roi_align(round_coords=True)),
    ("roi_align", make_roi_align(forget_offset=True)),
    ("roi_align", lambda input, boxes, output_size, spatial_scale=1.0, sampling_ratio=-1,
     aligned=False: torchvision.ops.roi_pool(input, boxes, output_size, spatial_scale)),
])
def test_visible_cases_catch_mutant(name, mutant):
    mutant.__name__ = name
    assert not check(mutant, EXERCISES[name], device="cpu", verbose=False)


def test_hidden_roi_cases_avoid_rounding_ties_and_fragile_sampling():
    for name in ("roi_pool", "roi_align"):
        ex = EXERCISES[name]
        for seed in range(100):
            kwargs = ex.random_case(np.random.default_rng(seed))
            scaled = kwargs["boxes"][:, 1:].double() * kwargs["spatial_scale"]
            if name == "roi_pool":
                frac = (scaled - scaled.floor() - 0.5).abs()
                assert bool((frac > 1e-3).all()), kwargs
