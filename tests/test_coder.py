"""Tests for course_lib.coder against torchvision's BoxCoder and hand-worked cases."""

import math

import pytest
import torch
from torchvision.models.detection._utils import BoxCoder

from course_lib.coder import BBOX_XFORM_CLIP, decode_boxes, encode_boxes
from course_lib.device import available_devices

DEVICES = available_devices()
DTYPES = [torch.float32, torch.float64]
TOL = {torch.float32: 1e-6, torch.float64: 1e-12}
WEIGHTS = [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0), (2.0, 0.5, 3.0, 1.5)]


def random_boxes(n, generator, dtype=torch.float32, device="cpu"):
    """Random xyxy boxes with positive width and height, from 1 to about 200 pixels."""
    xy = torch.rand(n, 2, generator=generator, dtype=torch.float64) * 300 - 50
    wh = torch.exp(torch.rand(n, 2, generator=generator, dtype=torch.float64) * 5.3)
    return torch.cat([xy, xy + wh], dim=1).to(dtype=dtype, device=device)


def assert_close(ours, theirs, dtype, scale=1.0):
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    tol = TOL[dtype] * scale
    torch.testing.assert_close(ours.cpu(), theirs.cpu(), rtol=tol, atol=tol)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weights", WEIGHTS, ids=str)
@pytest.mark.parametrize("seed", range(3))
def test_encode_decode_match_torchvision(device, dtype, weights, seed):
    g = torch.Generator().manual_seed(seed)
    n = [1, 50, 300][seed]
    gt = random_boxes(n, g, dtype)
    proposals = random_boxes(n, g, dtype)
    proposals[: n // 4] = gt[: n // 4]  # some exact matches: code 0
    coder = BoxCoder(weights)
    codes = encode_boxes(gt.to(device), proposals.to(device), weights)
    assert codes.device.type == torch.device(device).type
    assert_close(codes, coder.encode_single(gt, proposals), dtype)
    assert torch.equal(codes[: n // 4].cpu(), torch.zeros(n // 4, 4, dtype=dtype))

    deltas = torch.randn(n, 4, generator=g, dtype=torch.float64).to(dtype) * 2
    decoded = decode_boxes(deltas.to(device), proposals.to(device), weights)
    # decoded coordinates are up to a few hundred pixels: compare relative to that
    assert_close(decoded, coder.decode_single(deltas, proposals), dtype, scale=100)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_decode_several_boxes_per_row(device, dtype):
    # a box head predicts one code per class: (N, 4 * C) -> (N, 4 * C), interleaved per class
    g = torch.Generator().manual_seed(0)
    proposals = random_boxes(20, g, dtype)
    deltas = torch.randn(20, 4 * 3, generator=g, dtype=torch.float64).to(dtype)
    weights = (10.0, 10.0, 5.0, 5.0)
    got = decode_boxes(deltas.to(device), proposals.to(device), weights)
    assert got.shape == (20, 12)
    assert_close(got, BoxCoder(weights).decode_single(deltas, proposals), dtype, scale=100)
    for c in range(3):  # class c's box is decoded from class c's code alone
        one = decode_boxes(deltas[:, 4 * c : 4 * c + 4], proposals, weights)
        assert torch.equal(got[:, 4 * c : 4 * c + 4].cpu(), one)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weights", WEIGHTS, ids=str)
def test_round_trip(device, dtype, weights):
    g = torch.Generator().manual_seed(1)
    proposals = random_boxes(200, g, torch.float64)
    # targets within the clamp: up to 8 times larger or smaller, shifted by up to a width
    ctr = (proposals[:, :2] + proposals[:, 2:]) / 2
    wh = proposals[:, 2:] - proposals[:, :2]
    ctr = ctr + (torch.rand(200, 2, generator=g, dtype=torch.float64) * 2 - 1) * wh
    wh = wh * torch.exp((torch.rand(200, 2, generator=g, dtype=torch.float64) * 2 - 1) * 2)
    gt = torch.cat([ctr - wh / 2, ctr + wh / 2], dim=1).to(dtype=dtype, device=device)
    proposals = proposals.to(dtype=dtype, device=device)
    back = decode_boxes(encode_boxes(gt, proposals, weights), proposals, weights)
    tol = {torch.float32: 1e-3, torch.float64: 1e-9}[dtype]  # coordinates up to ~450
    torch.testing.assert_close(back, gt, rtol=0, atol=tol)


def test_hand_worked():
    proposal = torch.tensor([[0.0, 0.0, 10.0, 10.0]])  # centre (5, 5), 10 x 10
    gt = torch.tensor([[5.0, 5.0, 25.0, 15.0]])  # centre (15, 10), 20 x 10
    # shift by one width right, half a height down, twice as wide, same height
    codes = encode_boxes(gt, proposal)
    torch.testing.assert_close(codes, torch.tensor([[1.0, 0.5, math.log(2), 0.0]]))
    codes = encode_boxes(gt, proposal, (10, 10, 5, 5))
    torch.testing.assert_close(codes, torch.tensor([[10.0, 5.0, 5 * math.log(2), 0.0]]))
    torch.testing.assert_close(decode_boxes(codes, proposal, (10, 10, 5, 5)), gt)
    # the +/- 0.5 * width convention: a zero code gives the box back, no "+ 1" pixel
    assert decode_boxes(torch.zeros(1, 4), proposal).tolist() == proposal.tolist()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_clamp_of_huge_deltas(device, dtype):
    proposals = torch.tensor([[0, 0, 16, 16], [10, 20, 30, 60], [5, 5, 6, 7]], dtype=dtype)
    deltas = torch.tensor(
        [[0, 0, 100, 100], [0.5, -0.5, 1e4, -3.0], [0, 0, BBOX_XFORM_CLIP - 0.1, 1e30]],
        dtype=dtype,
    )
    got = decode_boxes(deltas.to(device), proposals.to(device)).cpu()
    assert torch.isfinite(got).all()
    assert_close(got, BoxCoder((1.0, 1.0, 1.0, 1.0)).decode_single(deltas, proposals), dtype, 100)
    # the first box grows exactly exp(clip) = 1000 / 16 times: 16 -> 1000 pixels
    width = got[:, 2] - got[:, 0]
    torch.testing.assert_close(width[0], torch.tensor(1000.0, dtype=dtype))
    # below the clip, nothing is clamped
    expected = math.exp(BBOX_XFORM_CLIP - 0.1)
    torch.testing.assert_close(width[2], torch.tensor(expected, dtype=dtype))
    # a custom clip, and the clip applies after dividing by the weights
    got = decode_boxes(deltas[:1], proposals[:1], (1, 1, 5, 5), bbox_xform_clip=math.log(2))
    assert (got[0, 2] - got[0, 0]).item() == pytest.approx(32.0)
    coder = BoxCoder((1, 1, 5, 5), bbox_xform_clip=math.log(2))
    assert_close(got, coder.decode_single(deltas[:1], proposals[:1]), dtype, 100)
    # no clamp from below: a very negative code shrinks the box towards its centre
    tiny = decode_boxes(torch.tensor([[0.0, 0.0, -50.0, -50.0]]), proposals[:1].float())
    assert torch.allclose(tiny, torch.tensor([[8.0, 8.0, 8.0, 8.0]]))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_empty_inputs(device, dtype):
    empty = torch.zeros(0, 4, dtype=dtype, device=device)
    codes = encode_boxes(empty, empty)
    assert codes.shape == (0, 4) and codes.dtype == dtype and codes.device == empty.device
    boxes = decode_boxes(empty, empty)
    assert boxes.shape == (0, 4) and boxes.dtype == dtype and boxes.device == empty.device
    boxes = decode_boxes(torch.zeros(0, 8, dtype=dtype, device=device), empty)
    assert boxes.shape == (0, 8)


def test_bad_inputs_name_the_argument():
    four = torch.zeros(3, 4)
    with pytest.raises(ValueError, match=r"reference_boxes.*\(3, 5\)"):
        encode_boxes(torch.zeros(3, 5), four)
    with pytest.raises(ValueError, match=r"proposals.*\(4,\)"):
        encode_boxes(four, torch.zeros(4))
    with pytest.raises(ValueError, match=r"same N.*\(2, 4\).*\(3, 4\)"):
        encode_boxes(four, torch.zeros(2, 4))
    with pytest.raises(ValueError, match="weights"):
        encode_boxes(four, four, (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match=r"rel_codes.*\(3, 6\)"):
        decode_boxes(torch.zeros(3, 6), four)
    with pytest.raises(ValueError, match=r"rel_codes.*\(3, 0\)"):
        decode_boxes(torch.zeros(3, 0), four)
    with pytest.raises(ValueError, match=r"boxes.*\(3, 2\)"):
        decode_boxes(four, torch.zeros(3, 2))
    with pytest.raises(ValueError, match=r"same N"):
        decode_boxes(torch.zeros(2, 8), four)
    with pytest.raises(TypeError, match="reference_boxes"):
        encode_boxes([[0, 0, 1, 1]], four[:1])


def test_gradcheck_float64():
    g = torch.Generator().manual_seed(0)
    gt = random_boxes(5, g, torch.float64).requires_grad_(True)
    proposals = random_boxes(5, g, torch.float64).requires_grad_(True)
    deltas = torch.randn(5, 8, generator=g, dtype=torch.float64, requires_grad=True)
    weights = (10.0, 10.0, 5.0, 5.0)
    assert torch.autograd.gradcheck(lambda a, b: encode_boxes(a, b, weights), (gt, proposals))
    assert torch.autograd.gradcheck(lambda d, b: decode_boxes(d, b, weights), (deltas, proposals))
