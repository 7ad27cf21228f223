"""Tests for course_lib.nms against torchvision.ops, loop oracles and hand-worked cases."""

import math

import pytest
import torch
import torchvision.ops as tvops

from course_lib.boxes import box_iou
from course_lib.device import available_devices
from course_lib.nms import (
    _size_thresholds,
    batched_nms,
    nms,
    nms_steps,
    size_adaptive_nms,
    soft_nms,
    soft_nms_steps,
)

DEVICES = available_devices()
DTYPES = [torch.float32, torch.float64]


def clustered_boxes(n, generator, dtype=torch.float32, grid=False, tied_scores=False):
    """Jittered copies of boxes around a few centres (many overlaps), with random scores.

    grid=True puts the corners on a coarse integer grid (many identical boxes and IoUs that
    are exact fractions such as 1/2); tied_scores=True rounds the scores to one decimal.
    """
    centres = torch.rand(max(n // 8, 1), 2, generator=generator, dtype=torch.float64) * 200
    sizes = 8 + torch.rand(centres.shape[0], 2, generator=generator, dtype=torch.float64) * 60
    which = torch.randint(0, centres.shape[0], (n,), generator=generator)
    jitter = torch.randn(n, 4, generator=generator, dtype=torch.float64) * 0.15
    ctr = centres[which] + jitter[:, :2] * sizes[which]
    wh = sizes[which] * (1 + jitter[:, 2:])
    boxes = torch.cat([ctr - wh / 2, ctr + wh / 2], dim=1)
    scores = torch.rand(n, generator=generator, dtype=torch.float64)
    if grid:
        boxes = (boxes / 4).round() * 4
    if tied_scores:
        scores = (scores * 10).round() / 10
    return boxes.to(dtype), scores.to(dtype)


def on(device, *tensors):
    return [t.to(device) for t in tensors]


def iou_py(a, b):
    """IoU of two boxes given as lists, in Python floats (0 for two empty boxes)."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


# ----------------------------------------------------------------------------- nms


CASES = [  # (n, grid, tied_scores)
    (5, False, False),
    (60, False, False),
    (60, True, True),
    (150, True, True),
    (150, False, True),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", range(len(CASES)))
def test_nms_matches_torchvision(device, dtype, case):
    n, grid, tied = CASES[case]
    g = torch.Generator().manual_seed(case)
    boxes, scores = clustered_boxes(n, g, dtype, grid, tied)
    for t in (0.0, 0.3, 0.5, 0.7, 1.0):
        expected = tvops.nms(boxes, scores, t)  # torchvision's CPU kernel is the reference
        got = nms(*on(device, boxes, scores), t)
        assert got.dtype == torch.int64 and got.device.type == torch.device(device).type
        assert torch.equal(got.cpu(), expected), (t, got, expected)
        steps = nms_steps(*on(device, boxes, scores), t)
        assert [step["kept"] for step in steps] == expected.tolist()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_nms_iou_exactly_at_threshold(device, dtype):
    # inter 2, union 3 + 3 - 2 = 4: IoU exactly 0.5 in any float dtype
    boxes = torch.tensor([[0, 0, 3, 1], [1, 0, 4, 1]], dtype=dtype, device=device)
    scores = torch.tensor([0.9, 0.8], dtype=dtype, device=device)
    assert box_iou(boxes, boxes)[0, 1].item() == 0.5
    assert nms(boxes, scores, 0.5).tolist() == [0, 1]  # IoU == threshold: kept
    assert nms(boxes, scores, 0.4999).tolist() == [0]  # IoU > threshold: suppressed
    for t in (0.5, 0.4999):
        assert nms(boxes, scores, t).tolist() == tvops.nms(boxes.cpu(), scores.cpu(), t).tolist()


@pytest.mark.parametrize("device", DEVICES)
def test_nms_threshold_is_compared_in_float64(device):
    # inter 3, union 5 + 8 - 3 = 10. In float32, 3 / 10 rounds up to 0.30000001, which is
    # > 0.3 (a double) in torchvision's kernel; float64 gives exactly 0.3 (not > 0.3).
    expected = {torch.float32: [0], torch.float64: [0, 1]}
    for dtype, keep in expected.items():
        boxes = torch.tensor([[0, 0, 5, 1], [2, 0, 10, 1]], dtype=dtype)
        scores = torch.tensor([0.9, 0.8], dtype=dtype)
        assert tvops.nms(boxes, scores, 0.3).tolist() == keep
        assert nms(*on(device, boxes, scores), 0.3).tolist() == keep


@pytest.mark.parametrize("device", DEVICES)
def test_nms_ties_keep_input_order(device):
    # 40 disjoint boxes with only two distinct scores: order = score desc, then index asc
    x = torch.arange(40, dtype=torch.float32) * 10
    boxes = torch.stack([x, torch.zeros(40), x + 5, torch.full((40,), 5.0)], dim=1)
    scores = (torch.arange(40) % 3 == 0).float()
    expected = torch.cat([torch.arange(0, 40, 3), torch.tensor([i for i in range(40) if i % 3])])
    assert torch.equal(tvops.nms(boxes, scores, 0.5), expected)
    assert torch.equal(nms(*on(device, boxes, scores), 0.5).cpu(), expected)
    # identical boxes and scores: the lowest index survives
    same = torch.tensor([[0.0, 0.0, 4.0, 4.0]]).repeat(5, 1)
    assert nms(*on(device, same, torch.ones(5)), 0.5).tolist() == [0]


@pytest.mark.parametrize("device", DEVICES)
def test_nms_chains_and_duplicates_across_blocks(device):
    # A chain: box i overlaps box i+1 with IoU 0.6 but box i+2 with IoU 1/3, scores falling.
    # Greedy keeps every other box; each decision depends on the one before it, over 300 boxes
    # (nms settles 128 boxes per step, so this crosses block boundaries).
    x = torch.arange(300, dtype=torch.float64) * 2.5
    chain = torch.stack([x, torch.zeros(300), x + 10, torch.full((300,), 10.0)], dim=1)
    scores = torch.linspace(1, 0, 300, dtype=torch.float64)
    expected = tvops.nms(chain, scores, 0.5)
    assert expected.tolist() == list(range(0, 300, 2))
    assert torch.equal(nms(*on(device, chain, scores), 0.5).cpu(), expected)
    # 300 identical boxes, identical scores: only box 0 survives
    same = torch.tensor([[1.0, 2.0, 5.0, 7.0]]).repeat(300, 1)
    assert nms(*on(device, same, torch.ones(300)), 0.5).tolist() == [0]


@pytest.mark.parametrize("device", DEVICES)
def test_nms_steps_records_decisions(device):
    g = torch.Generator().manual_seed(7)
    boxes, scores = on(device, *clustered_boxes(50, g))
    steps = nms_steps(boxes, scores, 0.5)
    seen = []
    for step in steps:
        seen.append(step["kept"])
        for j, iou in step["suppressed"]:
            assert iou > 0.5
            assert iou == pytest.approx(box_iou(boxes[[step["kept"]]], boxes[[j]]).item())
            seen.append(j)
    assert sorted(seen) == list(range(50))  # every box decided exactly once
    assert nms_steps(boxes[:0], scores[:0], 0.5) == []


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_empty_inputs(device, dtype):
    boxes = torch.zeros(0, 4, dtype=dtype, device=device)
    scores = torch.zeros(0, dtype=dtype, device=device)
    idxs = torch.zeros(0, dtype=torch.int64, device=device)
    for keep in (
        nms(boxes, scores, 0.5),
        batched_nms(boxes, scores, idxs, 0.5),
        size_adaptive_nms(boxes, scores),
    ):
        assert keep.shape == (0,) and keep.dtype == torch.int64 and keep.device == boxes.device
    keep, kept_scores = soft_nms(boxes, scores)
    assert keep.shape == (0,) and keep.dtype == torch.int64 and keep.device == boxes.device
    assert kept_scores.shape == (0,) and kept_scores.dtype == dtype
    assert soft_nms_steps(boxes, scores) == []


def test_wrong_shapes_name_the_argument():
    boxes, scores = torch.zeros(3, 4), torch.zeros(3)
    with pytest.raises(ValueError, match=r"boxes.*\(3, 5\)"):
        nms(torch.zeros(3, 5), scores, 0.5)
    with pytest.raises(ValueError, match=r"boxes.*\(4,\)"):
        nms(torch.zeros(4), torch.zeros(1), 0.5)
    with pytest.raises(ValueError, match=r"scores.*\(3, 1\)"):
        nms(boxes, torch.zeros(3, 1), 0.5)
    with pytest.raises(ValueError, match=r"same N.*\(3, 4\).*\(2,\)"):
        nms(boxes, torch.zeros(2), 0.5)
    with pytest.raises(ValueError, match=r"idxs.*\(2,\)"):
        batched_nms(boxes, scores, torch.zeros(2, dtype=torch.int64), 0.5)
    with pytest.raises(ValueError, match="scores"):
        soft_nms(boxes, torch.zeros(4))
    with pytest.raises(ValueError, match="method"):
        soft_nms(boxes, scores, method="hard")
    with pytest.raises(ValueError, match="small_size"):
        size_adaptive_nms(boxes, scores, small_size=96.0, large_size=32.0)
    with pytest.raises(ValueError, match="boxes"):
        nms_steps(torch.zeros(3, 3), scores, 0.5)


# ----------------------------------------------------------------------------- batched_nms


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [40, 300])
def test_batched_nms_matches_torchvision(device, dtype, n):
    g = torch.Generator().manual_seed(n)
    boxes, scores = clustered_boxes(n, g, dtype, grid=True, tied_scores=True)
    idxs = torch.randint(0, 4, (n,), generator=g)
    for t in (0.3, 0.5):
        expected = tvops.batched_nms(boxes, scores, idxs, t)
        got = batched_nms(*on(device, boxes, scores, idxs), t)
        assert torch.equal(got.cpu(), expected)
        # per class, the kept boxes are what nms keeps within that class
        for c in idxs.unique():
            members = torch.nonzero(idxs == c).squeeze(1)
            in_class = got.cpu()[idxs[got.cpu()] == c]
            assert torch.equal(in_class, members[nms(boxes[members], scores[members], t)])


def test_batched_nms_per_class_loop_path():
    # above 1000 boxes on CPU torchvision (and we) switch from the coordinate trick to a loop
    g = torch.Generator().manual_seed(1)
    boxes, scores = clustered_boxes(1100, g, tied_scores=False)
    idxs = torch.randint(0, 5, (1100,), generator=g)
    expected = tvops.batched_nms(boxes, scores, idxs, 0.5)
    assert torch.equal(batched_nms(boxes, scores, idxs, 0.5), expected)


# ----------------------------------------------------------------------------- soft_nms


def soft_nms_oracle(boxes, scores, iou_threshold, sigma, method, score_threshold):
    """Soft-NMS as a plain loop over Python lists."""
    boxes, s = boxes.tolist(), scores.tolist()
    in_play = [i for i in range(len(s)) if s[i] >= score_threshold]
    keep, kept_scores = [], []
    while in_play:
        m = max(in_play, key=lambda i: (s[i], -i))  # highest score, then lowest index
        keep.append(m)
        kept_scores.append(s[m])
        in_play.remove(m)
        for j in list(in_play):
            iou = iou_py(boxes[m], boxes[j])
            if method == "linear":
                if iou >= iou_threshold:
                    s[j] *= 1 - iou
            else:
                s[j] *= math.exp(-iou * iou / sigma)
            if s[j] < score_threshold:
                in_play.remove(j)
    return keep, kept_scores


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", ["linear", "gaussian"])
@pytest.mark.parametrize("seed", range(3))
def test_soft_nms_matches_loop_oracle(device, dtype, method, seed):
    g = torch.Generator().manual_seed(seed)
    boxes, scores = clustered_boxes([12, 40, 80][seed], g, dtype)
    scores_before = scores.clone()
    for t, sigma, score_threshold in ((0.3, 0.5, 0.001), (0.5, 0.2, 0.05)):
        keep, kept_scores = soft_nms(*on(device, boxes, scores), t, sigma, method, score_threshold)
        exp_keep, exp_scores = soft_nms_oracle(boxes, scores, t, sigma, method, score_threshold)
        assert keep.tolist() == exp_keep
        assert kept_scores.dtype == dtype
        tol = 1e-6 if dtype == torch.float32 else 1e-12
        torch.testing.assert_close(
            kept_scores.cpu(), torch.tensor(exp_scores, dtype=dtype), rtol=tol, atol=tol
        )
        assert (kept_scores[1:] <= kept_scores[:-1]).all()
        steps = soft_nms_steps(*on(device, boxes, scores), t, sigma, method, score_threshold)
        assert [step["kept"] for step in steps] == exp_keep
    assert torch.equal(scores, scores_before)  # input not modified


def test_soft_nms_hand_worked():
    # A and B overlap with IoU 50 / 100 = 0.5; C is far away.
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 5], [20, 0, 30, 10]], dtype=torch.float64)
    scores = torch.tensor([0.9, 0.8, 0.5], dtype=torch.float64)
    # linear, N_t = 0.3: A first; B decays to 0.8 * (1 - 0.5) = 0.4 and falls behind C
    keep, s = soft_nms(boxes, scores, iou_threshold=0.3, method="linear")
    assert keep.tolist() == [0, 2, 1] and s.tolist() == [0.9, 0.5, 0.4]
    # linear, N_t = 0.6: IoU 0.5 < 0.6, nothing decays
    keep, s = soft_nms(boxes, scores, iou_threshold=0.6, method="linear")
    assert keep.tolist() == [0, 1, 2] and s.tolist() == [0.9, 0.8, 0.5]
    # linear, IoU exactly at N_t = 0.5: decays (IoU >= N_t)
    keep, s = soft_nms(boxes, scores, iou_threshold=0.5, method="linear")
    assert keep.tolist() == [0, 2, 1] and s.tolist() == [0.9, 0.5, 0.4]
    # gaussian, sigma 0.5: B decays to 0.8 * exp(-0.25 / 0.5) = 0.485
    keep, s = soft_nms(boxes, scores, sigma=0.5, method="gaussian")
    assert keep.tolist() == [0, 2, 1]
    assert s.tolist() == pytest.approx([0.9, 0.5, 0.8 * math.exp(-0.5)], abs=1e-15)
    # a score threshold of 0.45 drops B after its decay (linear); hard NMS would drop it too
    keep, s = soft_nms(boxes, scores, iou_threshold=0.3, score_threshold=0.45)
    assert keep.tolist() == [0, 2] == nms(boxes, scores, 0.3).tolist()
    # a box that starts below the score threshold is never selected
    keep, _ = soft_nms(boxes, torch.tensor([0.9, 0.8, 0.0005], dtype=torch.float64))
    assert keep.tolist() == [0, 1]
    # the widget's steps: scores after each step
    steps = soft_nms_steps(boxes, scores, iou_threshold=0.3, method="linear")
    assert [st["kept"] for st in steps] == [0, 2, 1]
    assert steps[0]["scores"].tolist() == [0.9, 0.4, 0.5] and steps[0]["dropped"] == []


# ----------------------------------------------------------------------------- size_adaptive_nms


def size_threshold_py(box, small_t, large_t, small_size, large_size):
    size = math.sqrt(max(0.0, (box[2] - box[0]) * (box[3] - box[1])))
    if size <= small_size:
        return small_t
    if size >= large_size:
        return large_t
    frac = (math.log(size) - math.log(small_size)) / (math.log(large_size) - math.log(small_size))
    return small_t + (large_t - small_t) * frac


def size_adaptive_oracle(boxes, scores, small_t, large_t, small_size, large_size):
    """Greedy NMS loop with a per-kept-box threshold, over Python lists."""
    boxes, s = boxes.tolist(), scores.tolist()
    order = sorted(range(len(s)), key=lambda i: (-s[i], i))
    keep = []
    for j in order:
        if all(
            iou_py(boxes[i], boxes[j])
            <= size_threshold_py(boxes[i], small_t, large_t, small_size, large_size)
            for i in keep
        ):
            keep.append(j)
    return keep


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", range(3))
def test_size_adaptive_nms_matches_loop_oracle(device, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    boxes, scores = clustered_boxes(120, g, dtype)  # sizes from about 8 to 80 pixels
    boxes[::3] *= 2  # and some up to 160
    for args in ((0.4, 0.6, 32.0, 96.0), (0.3, 0.7, 16.0, 64.0)):
        got = size_adaptive_nms(*on(device, boxes, scores), *args)
        assert got.tolist() == size_adaptive_oracle(boxes, scores, *args)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_size_adaptive_nms_equals_nms_with_one_threshold(device, dtype):
    g = torch.Generator().manual_seed(3)
    boxes, scores = on(device, *clustered_boxes(200, g, dtype, grid=True, tied_scores=True))
    for t in (0.3, 0.5, 0.7):
        assert torch.equal(size_adaptive_nms(boxes, scores, t, t), nms(boxes, scores, t))


def test_size_adaptive_nms_hand_worked():
    # The same pair of boxes (IoU 0.5) at two scales: small boxes use threshold 0.4 and the
    # duplicate is suppressed, large boxes use 0.6 and both are kept.
    small = torch.tensor([[0.0, 0.0, 12.0, 4.0], [4.0, 0.0, 16.0, 4.0]])  # size ~6.9
    large = small * 20  # size ~139 >= 96
    scores = torch.tensor([0.9, 0.8])
    assert box_iou(small, small)[0, 1] == 0.5 and box_iou(large, large)[0, 1] == 0.5
    assert size_adaptive_nms(small, scores).tolist() == [0]
    assert size_adaptive_nms(large, scores).tolist() == [0, 1]


def test_size_thresholds_rule():
    sides = torch.tensor([0.0, 10.0, 32.0, math.sqrt(32 * 96), 96.0, 500.0], dtype=torch.float64)
    boxes = torch.stack([torch.zeros(6, dtype=torch.float64)] * 2 + [sides, sides], dim=1)
    t = _size_thresholds(boxes, 0.4, 0.6, 32.0, 96.0)
    # halfway in log(size) between 32 and 96 (their geometric mean) is halfway between 0.4 and 0.6
    assert t.tolist() == pytest.approx([0.4, 0.4, 0.4, 0.5, 0.6, 0.6], abs=1e-12)
    for side, ti in zip(sides.tolist(), t.tolist(), strict=True):
        assert ti == pytest.approx(size_threshold_py([0, 0, side, side], 0.4, 0.6, 32.0, 96.0))
