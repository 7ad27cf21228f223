"""Tests for course_lib.roi against torchvision.ops.roi_pool / roi_align and hand-worked cases."""

import itertools

import pytest
import torch
import torchvision.ops as tvops

from course_lib.device import available_devices
from course_lib.roi import RoIAlign, RoIPool, roi_align, roi_pool, rois_from_boxes

DEVICES = available_devices()
DTYPES = [torch.float32, torch.float64]
TOL = {torch.float32: 1e-5, torch.float64: 1e-12}

CONFIGS = [  # (H, W, C, spatial_scale, output_size, number of RoIs)
    (9, 13, 3, 1.0, 7, 12),
    (12, 10, 2, 1 / 4, (3, 5), 15),
    (8, 8, 4, 1 / 16, (2, 2), 12),
    (5, 7, 1, 1 / 16, (7, 4), 10),
    (16, 11, 3, 0.5, 1, 12),
    (1, 6, 2, 1 / 4, (2, 3), 8),  # a one-row feature map
]


def random_rois(generator, n_images, k, height, width, scale, dtype):
    """``(K, 5)`` RoIs in image coordinates: boxes partly outside the map, tiny, empty, inverted."""
    size = torch.tensor([width, height], dtype=torch.float64) / scale  # image size (x, y)
    xy = (torch.rand(k, 2, generator=generator, dtype=torch.float64) * 1.4 - 0.2) * size
    wh = torch.rand(k, 2, generator=generator, dtype=torch.float64) * 0.9 * size
    wh[0::5] *= 0.02  # tiny, well under one cell
    wh[1::7] = 0  # empty
    wh[2::9] *= -0.1  # inverted (x2 < x1)
    batch = torch.randint(0, n_images, (k, 1), generator=generator).to(torch.float64)
    return torch.cat([batch, xy, xy + wh], dim=1).to(dtype)


def as_list(rois, n_images):
    """The same RoIs as one ``(L, 4)`` tensor per image (sorted by image, as torchvision does)."""
    return [rois[rois[:, 0] == i, 1:] for i in range(n_images)]


def by_image(rois):
    return rois[torch.sort(rois[:, 0], stable=True).indices]


def check_op(ours, theirs, input, boxes, dtype, device, *args):
    """Output and input gradient (of a random weighted sum) of ours on device vs torchvision."""
    x_ours = input.detach().clone().to(device).requires_grad_(True)
    x_theirs = input.detach().clone().requires_grad_(True)
    b_ours = boxes.to(device) if torch.is_tensor(boxes) else [b.to(device) for b in boxes]
    out = ours(x_ours, b_ours, *args)
    expected = theirs(x_theirs, boxes, *args)
    assert out.dtype == dtype and out.device.type == torch.device(device).type
    assert out.shape == expected.shape
    torch.testing.assert_close(out.cpu(), expected, rtol=0, atol=TOL[dtype])
    weights = torch.randn(expected.shape, dtype=dtype, generator=torch.Generator().manual_seed(5))
    (out * weights.to(device)).sum().backward()
    (expected * weights).sum().backward()
    torch.testing.assert_close(x_ours.grad.cpu(), x_theirs.grad, rtol=0, atol=TOL[dtype])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", range(len(CONFIGS)))
def test_roi_align_matches_torchvision(device, dtype, case):
    height, width, channels, scale, output_size, k = CONFIGS[case]
    g = torch.Generator().manual_seed(case)
    x = torch.randn(2, channels, height, width, generator=g, dtype=dtype)
    rois = random_rois(g, 2, k, height, width, scale, dtype)
    for sampling_ratio, aligned in itertools.product([-1, 0, 1, 2], [False, True]):
        args = (output_size, scale, sampling_ratio, aligned)
        check_op(roi_align, tvops.roi_align, x, rois, dtype, device, *args)
    # the list format, one (L, 4) tensor per image
    boxes = as_list(rois, 2)
    check_op(roi_align, tvops.roi_align, x, boxes, dtype, device, output_size, scale, 2)
    assert torch.equal(
        roi_align(x, boxes, output_size, scale), roi_align(x, by_image(rois), output_size, scale)
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", range(len(CONFIGS)))
def test_roi_pool_matches_torchvision(device, dtype, case):
    height, width, channels, scale, output_size, k = CONFIGS[case]
    g = torch.Generator().manual_seed(100 + case)
    x = torch.randn(2, channels, height, width, generator=g, dtype=dtype)
    rois = random_rois(g, 2, k, height, width, scale, dtype)
    check_op(roi_pool, tvops.roi_pool, x, rois, dtype, device, output_size, scale)
    boxes = as_list(rois, 2)
    check_op(roi_pool, tvops.roi_pool, x, boxes, dtype, device, output_size, scale)
    # integer-valued features: many ties inside a bin; the gradient goes to the first maximum
    x_ties = torch.randint(0, 3, x.shape, generator=g).to(dtype)
    check_op(roi_pool, tvops.roi_pool, x_ties, rois, dtype, device, output_size, scale)


@pytest.mark.parametrize("device", DEVICES)
def test_roi_pool_rounds_half_away_from_zero(device):
    # With scale 1/2, x1 = 5 maps to 2.5. C's round() gives 3 (torch.round would give 2),
    # so the RoI starts at column 3. Columns hold their own index, so the max shows the column.
    x = torch.arange(8, dtype=torch.float32).repeat(1, 1, 4, 1)  # (1, 1, 4, 8)
    rois = torch.tensor([[0, 5, 0, 5, 0], [0, 3, 0, 3, 0], [0, -5, 0, -5, 0]], dtype=torch.float32)
    expected = tvops.roi_pool(x, rois, 1, 0.5)
    assert expected.flatten().tolist() == [3.0, 2.0, 0.0]  # 2.5 -> 3, 1.5 -> 2, -2.5 -> -3
    assert torch.equal(roi_pool(x.to(device), rois.to(device), 1, 0.5).cpu(), expected)


@pytest.mark.parametrize("device", DEVICES)
def test_roi_align_hand_worked(device):
    # A ramp f(y, x) = x on a 4 x 4 map is reproduced exactly by bilinear interpolation.
    x = torch.arange(4, dtype=torch.float64).repeat(1, 1, 4, 1).to(device)  # (1, 1, 4, 4)
    box = torch.tensor([[0, 0, 0, 4, 4]], dtype=torch.float64, device=device)
    # aligned: the box [0, 4] covers cells 0..3 (centres at 0.5 .. 3.5 in image coordinates);
    # bin 0 samples cells 0 and 1 at their centres -> 0.5, bin 1 cells 2 and 3 -> 2.5
    out = roi_align(x, box, 2, sampling_ratio=2, aligned=True)
    assert out.flatten().tolist() == [0.5, 2.5, 0.5, 2.5]
    # not aligned: the samples sit half a cell to the right, at 0.5, 1.5 | 2.5, 3.5; the last
    # is past the centre of the last cell and reads the border value 3 -> 1.0 and 2.75
    out = roi_align(x, box, 2, sampling_ratio=2, aligned=False)
    assert out.flatten().tolist() == [1.0, 2.75, 1.0, 2.75]
    # a point more than one cell outside the map reads 0; within one cell, the border value
    far = torch.tensor([[0, -3, 0, -2, 1], [0, -1.5, 0, -0.5, 1]], dtype=torch.float64)
    out = roi_align(x, far.to(device), 1, sampling_ratio=1)  # samples at x = -2.5 and -1.0
    assert out.flatten().tolist() == [0.0, 0.0]
    out = roi_align(x + 1, far.to(device), 1, sampling_ratio=1)
    assert out.flatten().tolist() == [0.0, 1.0]  # x = -1.0 is not < -1: reads f(0) = 1
    for aligned in (False, True):
        expected = tvops.roi_align(x.cpu(), box.cpu(), 2, 1.0, 2, aligned)
        assert torch.equal(roi_align(x, box, 2, 1.0, 2, aligned).cpu(), expected)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", [roi_align, roi_pool], ids=["roi_align", "roi_pool"])
def test_empty_boxes(device, dtype, op):
    x = torch.randn(2, 3, 6, 7, dtype=dtype, device=device, requires_grad=True)
    empties = [
        torch.zeros(0, 5, dtype=dtype, device=device),
        [torch.zeros(0, 4, dtype=dtype, device=device)] * 2,
        [],
    ]
    for boxes in empties:
        out = op(x, boxes, (2, 3))
        assert out.shape == (0, 3, 2, 3) and out.dtype == dtype and out.device == x.device
        out.sum().backward()  # still part of the graph, like torchvision's output
        assert torch.equal(x.grad, torch.zeros_like(x))
    # one image without boxes, the other with
    boxes = [torch.zeros(0, 4, dtype=dtype), torch.tensor([[1.0, 1.0, 5.0, 4.0]], dtype=dtype)]
    expected = getattr(tvops, op.__name__)(x.detach().cpu(), boxes, (2, 3))
    got = op(x.detach(), [b.to(device) for b in boxes], (2, 3))
    torch.testing.assert_close(got.cpu(), expected, rtol=0, atol=TOL[dtype])


def test_output_size_and_modules():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 2, 10, 12, generator=g)
    rois = random_rois(g, 2, 6, 10, 12, 0.5, torch.float32)
    assert torch.equal(roi_align(x, rois, 3, 0.5), roi_align(x, rois, (3, 3), 0.5))
    assert torch.equal(roi_pool(x, rois, [4, 2], 0.5), roi_pool(x, rois, (4, 2), 0.5))
    align = RoIAlign((3, 4), 0.5, sampling_ratio=2, aligned=True)
    expected = tvops.RoIAlign((3, 4), 0.5, sampling_ratio=2, aligned=True)(x, rois)
    torch.testing.assert_close(align(x, rois), expected, rtol=0, atol=1e-5)
    pool = RoIPool(2, 0.5)
    assert torch.equal(pool(x, as_list(rois, 2)), tvops.RoIPool(2, 0.5)(x, as_list(rois, 2)))
    assert "sampling_ratio=2" in repr(align) and "spatial_scale=0.5" in repr(pool)


def test_boxes_are_converted_to_the_input_dtype():
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64)
    rois = torch.tensor([[0, 0.5, 1.0, 3.5, 4.0]], dtype=torch.float32)
    assert rois_from_boxes(rois, x).dtype == torch.float64
    assert roi_align(x, rois, 2).dtype == torch.float64
    expected = tvops.roi_align(x, rois.double(), 2)
    torch.testing.assert_close(roi_align(x, rois, 2), expected, rtol=0, atol=1e-12)


def test_gradcheck_float64():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 2, 5, 6, generator=g, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor(
        [[0, 0.3, 0.7, 4.2, 3.9], [1, -1.2, 2.0, 3.1, 6.5], [1, 2.2, 1.1, 2.6, 1.3]],
        dtype=torch.float64,
    )
    for sampling_ratio, aligned in [(-1, False), (2, True), (1, False)]:
        assert torch.autograd.gradcheck(
            lambda inp, s=sampling_ratio, a=aligned: roi_align(inp, rois, (2, 3), 1.0, s, a), (x,)
        )
    # max pooling is linear around inputs without ties
    assert torch.autograd.gradcheck(lambda inp: roi_pool(inp, rois, (2, 3)), (x,))


def test_bad_inputs_name_the_argument():
    x = torch.zeros(2, 3, 8, 8)
    rois = torch.tensor([[0, 1.0, 1.0, 5.0, 5.0]])
    for op in (roi_align, roi_pool):
        with pytest.raises(ValueError, match=r"input.*\(3, 8, 8\)"):
            op(torch.zeros(3, 8, 8), rois, 2)
        with pytest.raises(ValueError, match=r"boxes.*\(K, 5\).*\(1, 4\)"):
            op(x, rois[:, 1:], 2)
        with pytest.raises(ValueError, match=r"boxes\[1\].*\(L, 4\).*\(1, 5\)"):
            op(x, [rois[:, 1:], rois], 2)
        with pytest.raises(ValueError, match="output_size"):
            op(x, rois, 0)
        with pytest.raises(ValueError, match="output_size"):
            op(x, rois, (7,))
        with pytest.raises(ValueError, match=r"batch indices.*\[0, 1\].*2"):
            op(x, torch.tensor([[2, 1.0, 1.0, 5.0, 5.0]]), 2)
        with pytest.raises(ValueError, match=r"batch indices"):
            op(x, [rois[:, 1:]] * 3, 2)  # three images' boxes for two feature maps
        with pytest.raises(TypeError, match="boxes"):
            op(x, "boxes", 2)
        with pytest.raises(TypeError, match="input"):
            op(torch.zeros(2, 3, 8, 8, dtype=torch.int64), rois, 2)
