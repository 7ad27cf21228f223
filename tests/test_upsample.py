"""Unpooling, bilinear interpolation and transposed convolution against PyTorch, against loop
oracles and against the lecture's examples worked by hand."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from course_lib.conv_transpose import (
    conv_transpose1d,
    conv_transpose2d,
    conv_transpose_output_size,
)
from course_lib.device import available_devices
from course_lib.upsample import (
    bed_of_nails_unpool,
    bilinear_upsample,
    max_unpool2d,
    nearest_unpool,
)

DEVICES = available_devices()


def _gen(seed):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- nearest / bed of nails


def test_nearest_unpool_lecture_2x2_to_4x4():
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    expected = torch.tensor([[1.0, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]])
    assert torch.equal(nearest_unpool(x, 2)[0, 0], expected)


def test_bed_of_nails_lecture_2x2_to_4x4():
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    expected = torch.tensor([[1.0, 0, 2, 0], [0, 0, 0, 0], [3, 0, 4, 0], [0, 0, 0, 0]])
    assert torch.equal(bed_of_nails_unpool(x, 2)[0, 0], expected)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 3, 4, 5), (1, 2, 3, 1)])
@pytest.mark.parametrize("scale", [1, 2, 3])
def test_nearest_and_bed_of_nails_against_pytorch(device, shape, scale):
    x = torch.randn(shape, generator=_gen(0)).to(device)
    assert torch.equal(nearest_unpool(x, scale), F.interpolate(x, scale_factor=scale))
    # bed of nails == max unpooling whose remembered positions are every block's top-left
    n, c, h, w = shape
    rows = torch.arange(h, device=device)[:, None] * scale * (w * scale)
    cols = torch.arange(w, device=device)[None, :] * scale
    indices = (rows + cols).expand(n, c, h, w).contiguous()
    expected = F.max_unpool2d(x, indices, scale)
    got = bed_of_nails_unpool(x, scale)
    assert got.device == x.device and torch.equal(got, expected)
    # and average pooling undoes nearest unpooling; sum pooling undoes bed of nails
    assert torch.allclose(F.avg_pool2d(nearest_unpool(x, scale), scale), x)
    assert torch.allclose(F.avg_pool2d(got, scale) * scale**2, x)


def test_unpooling_keeps_dtype_and_integers():
    x = torch.arange(6, dtype=torch.int64).reshape(1, 1, 2, 3)
    assert nearest_unpool(x, 2).dtype == torch.int64
    assert bed_of_nails_unpool(x, 2).dtype == torch.int64
    assert bed_of_nails_unpool(torch.zeros(0, 3, 2, 2), 2).shape == (0, 3, 4, 4)


@pytest.mark.parametrize("fn", [nearest_unpool, bed_of_nails_unpool])
def test_unpooling_bad_input(fn):
    with pytest.raises(ValueError, match=r"x must have shape \(N, C, H, W\), got \(2, 2\)"):
        fn(torch.zeros(2, 2), 2)
    with pytest.raises(ValueError, match="scale"):
        fn(torch.zeros(1, 1, 2, 2), 0)
    with pytest.raises(ValueError, match="scale"):
        fn(torch.zeros(1, 1, 2, 2), 1.5)


# ---------------------------------------------------------------- max unpooling


def test_max_unpool_lecture_example():
    # max pooling 2x2 / stride 2 remembers where each maximum was; unpooling puts the (new)
    # values back at exactly those positions
    x = torch.tensor([[[[1.0, 2, 6, 3], [3, 5, 2, 1], [1, 2, 2, 1], [7, 3, 4, 8]]]])
    pooled, indices = F.max_pool2d(x, 2, return_indices=True)
    assert pooled[0, 0].tolist() == [[5, 6], [7, 8]]
    assert indices[0, 0].tolist() == [[5, 2], [12, 15]]
    later = torch.tensor([[[[1.0, 2], [3, 4]]]])
    expected = torch.tensor([[0.0, 0, 2, 0], [0, 1, 0, 0], [0, 0, 0, 0], [3, 0, 0, 4]])
    assert torch.equal(max_unpool2d(later, indices, 2)[0, 0], expected)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("size, kernel, stride, padding", [
    ((4, 4), 2, None, 0), ((6, 8), 2, 2, 0), ((9, 7), 3, 3, 0), ((5, 5), 3, 1, 1),
    ((7, 6), 3, 2, 1), ((1, 1), 1, None, 0),
])
def test_max_unpool_against_pytorch(device, size, kernel, stride, padding):
    x = torch.randn(2, 3, *size, generator=_gen(1)).to(device)
    pooled, indices = F.max_pool2d(x, kernel, stride, padding, return_indices=True)
    out_size = x.shape[-2:]
    expected = F.max_unpool2d(pooled, indices, kernel, stride, padding, output_size=out_size)
    got = max_unpool2d(pooled, indices, kernel, stride, padding, output_size=tuple(out_size))
    assert torch.equal(got, expected)
    formula = (pooled.shape[-1] - 1) * (stride or kernel) - 2 * padding + kernel
    if formula == x.shape[-1] and (pooled.shape[-2] - 1) * (stride or kernel) - 2 * padding \
            + kernel == x.shape[-2]:
        assert torch.equal(max_unpool2d(pooled, indices, kernel, stride, padding), expected)


def test_max_unpool_gradcheck():
    x = torch.randn(1, 2, 6, 4, dtype=torch.float64, generator=_gen(2))
    pooled, indices = F.max_pool2d(x, 2, return_indices=True)
    pooled.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda v: max_unpool2d(v, indices, 2), (pooled,))


def test_max_unpool_bad_input():
    x = torch.zeros(1, 1, 2, 2)
    with pytest.raises(ValueError, match=r"indices must have the shape of x \(1, 1, 2, 2\)"):
        max_unpool2d(x, torch.zeros(1, 1, 2, 3, dtype=torch.int64), 2)
    with pytest.raises(ValueError, match="integer"):
        max_unpool2d(x, torch.zeros(1, 1, 2, 2), 2)
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 16\)"):
        max_unpool2d(x, torch.full((1, 1, 2, 2), 16), 2)


# ---------------------------------------------------------------- bilinear


def test_bilinear_by_hand_both_conventions():
    x = torch.tensor([[[[1.0, 3.0], [5.0, 7.0]]]])
    # align_corners=False: sample points (i + 0.5) / 2 - 0.5 = -0.25 (clamped to 0), 0.25,
    # 0.75, 1.25
    row = [1.0, 1.5, 2.5, 3.0]
    expected = torch.tensor([[v + d for v in row] for d in (0.0, 1.0, 3.0, 4.0)])
    assert torch.allclose(bilinear_upsample(x, 2, align_corners=False)[0, 0], expected)
    # align_corners=True: sample points 0, 1/3, 2/3, 1
    row = [1.0, 5 / 3, 7 / 3, 3.0]
    expected = torch.tensor([[v + d for v in row] for d in (0.0, 4 / 3, 8 / 3, 4.0)])
    assert torch.allclose(bilinear_upsample(x, 2, align_corners=True)[0, 0], expected)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 3, 4, 5), (1, 2, 1, 6), (1, 1, 7, 2)])
@pytest.mark.parametrize("scale", [1, 2, 3, 4, 1.5, 0.5])
@pytest.mark.parametrize("align_corners", [False, True])
def test_bilinear_against_pytorch(device, shape, scale, align_corners):
    x = torch.randn(shape, generator=_gen(3)).to(device)
    if int(shape[2] * scale) < 1 or int(shape[3] * scale) < 1:
        with pytest.raises(ValueError, match="empty"):
            bilinear_upsample(x, scale, align_corners)
        return
    expected = F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=align_corners)
    got = bilinear_upsample(x, scale, align_corners)
    assert got.shape == expected.shape and got.device == x.device
    assert torch.allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("align_corners", [False, True])
def test_bilinear_gradcheck(align_corners):
    x = torch.randn(1, 2, 3, 4, dtype=torch.float64, generator=_gen(4), requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: bilinear_upsample(v, 2, align_corners), (x,))
    expected = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=align_corners)
    assert bilinear_upsample(x, 2, align_corners).dtype == torch.float64
    g = torch.randn(expected.shape, dtype=torch.float64, generator=_gen(5))
    (ref,) = torch.autograd.grad(expected, x, g)
    (got,) = torch.autograd.grad(bilinear_upsample(x, 2, align_corners), x, g)
    assert torch.allclose(got, ref)


def test_bilinear_bad_input():
    with pytest.raises(ValueError, match="floating-point"):
        bilinear_upsample(torch.zeros(1, 1, 2, 2, dtype=torch.int64), 2)
    with pytest.raises(ValueError, match=r"x must have shape \(N, C, H, W\), got \(2, 2, 2\)"):
        bilinear_upsample(torch.zeros(2, 2, 2), 2)
    with pytest.raises(ValueError, match="scale"):
        bilinear_upsample(torch.zeros(1, 1, 2, 2), -1)


# ---------------------------------------------------------------- transposed convolution


def _loop_conv_transpose2d(x, weight, stride, padding, output_padding, dilation):
    """The slowest possible oracle: every input pixel, every tap, one scalar at a time."""
    n, c_in, h, w = x.shape
    c_out, kh, kw = weight.shape[1:]
    h_out = conv_transpose_output_size(h, kh, stride, padding, output_padding, dilation)
    w_out = conv_transpose_output_size(w, kw, stride, padding, output_padding, dilation)
    out = torch.zeros(n, c_out, h_out, w_out, dtype=x.dtype)
    for b, ci, i, j, co, a, e in itertools.product(range(n), range(c_in), range(h), range(w),
                                                   range(c_out), range(kh), range(kw)):
        y, z = i * stride + a * dilation - padding, j * stride + e * dilation - padding
        if 0 <= y < h_out and 0 <= z < w_out:
            out[b, co, y, z] += x[b, ci, i, j] * weight[ci, co, a, e]
    return out


def test_lecture_1d_example_input_2_kernel_3_stride_2():
    # input [a, b], kernel [x, y, z], stride 2 -> [a x, a y, a z + b x, b y, b z]
    x = torch.tensor([[[2.0, 3.0]]])
    kernel = torch.tensor([[[1.0, 10.0, 100.0]]])
    out = conv_transpose1d(x, kernel, stride=2)
    assert out.shape == (1, 1, 5) == (1, 1, conv_transpose_output_size(2, 3, 2, 0))
    assert out[0, 0].tolist() == [2.0, 20.0, 200.0 + 3.0, 30.0, 300.0]
    assert torch.equal(out, F.conv_transpose1d(x, kernel, stride=2))


def test_lecture_1d_summary_input_3_kernel_3_stride_2_padding_1():
    # the uncut output is [1, 10, 100 + 2, 20, 200 + 3, 30, 300]; padding 1 cuts both ends
    x = torch.tensor([[[1.0, 2.0, 3.0]]])
    kernel = torch.tensor([[[1.0, 10.0, 100.0]]])
    out = conv_transpose1d(x, kernel, stride=2, padding=1)
    assert conv_transpose_output_size(3, 3, 2, 1) == 5
    assert out[0, 0].tolist() == [10.0, 102.0, 20.0, 203.0, 30.0]


def test_2d_overlaps_are_summed():
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    out = conv_transpose2d(x, torch.ones(1, 1, 3, 3), stride=2)[0, 0]
    assert out.tolist() == [[1, 1, 3, 2, 2], [1, 1, 3, 2, 2], [4, 4, 10, 6, 6],
                            [3, 3, 7, 4, 4], [3, 3, 7, 4, 4]]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("length, k, stride, padding", [
    (2, 3, 2, 0), (3, 3, 2, 1), (1, 1, 1, 0), (5, 4, 2, 1), (4, 2, 3, 0), (6, 5, 1, 2),
    (3, 1, 4, 0),
])
@pytest.mark.parametrize("bias", [False, True])
def test_conv_transpose1d_against_pytorch(device, length, k, stride, padding, bias):
    g = _gen(10 * length + k)
    x = torch.randn(2, 3, length, generator=g).to(device)
    weight = torch.randn(3, 4, k, generator=g).to(device)
    b = torch.randn(4, generator=g).to(device) if bias else None
    expected = F.conv_transpose1d(x, weight, b, stride, padding)
    got = conv_transpose1d(x, weight, b, stride=stride, padding=padding)
    assert got.shape == expected.shape == (2, 4, conv_transpose_output_size(length, k, stride,
                                                                            padding))
    assert got.device == x.device
    assert torch.allclose(got, expected, atol=1e-5)


CASES_2D = [
    # (H, W), (KH, KW), stride, padding, output_padding, dilation
    ((2, 2), (3, 3), 2, 0, 0, 1),
    ((3, 5), (2, 4), 1, 0, 0, 1),
    ((4, 3), (3, 3), 2, 1, 1, 1),
    ((1, 1), (2, 3), 3, 0, 2, 1),
    ((3, 4), (3, 2), (2, 3), (1, 0), (1, 2), 1),
    ((2, 3), (3, 3), 1, 1, 1, 2),
    ((3, 3), (2, 2), 2, 0, 0, (2, 3)),
    ((5, 2), (4, 4), 2, 1, 0, 1),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("size, ksize, stride, padding, output_padding, dilation", CASES_2D)
def test_conv_transpose2d_against_pytorch(device, size, ksize, stride, padding, output_padding,
                                          dilation):
    g = _gen(sum(size) * 7 + sum(ksize))
    x = torch.randn(2, 3, *size, generator=g).to(device)
    weight = torch.randn(3, 2, *ksize, generator=g).to(device)
    bias = torch.randn(2, generator=g).to(device)
    expected = F.conv_transpose2d(x, weight, bias, stride, padding, output_padding, 1, dilation)
    got = conv_transpose2d(x, weight, bias, stride, padding, output_padding, dilation)
    assert got.shape == expected.shape and got.device == x.device
    assert torch.allclose(got, expected, atol=1e-5)


def test_conv_transpose2d_random_shapes_against_pytorch():
    g = _gen(123)
    for _ in range(60):
        r = torch.randint(1, 5, (12,), generator=g).tolist()
        n, c_in, c_out, h, w, kh, kw, s, d = r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], \
            1 + r[8] % 2
        p, op = r[9] % 3, r[10] % max(s, d)
        x = torch.randn(n, c_in, h, w, generator=g)
        weight = torch.randn(c_in, c_out, kh, kw, generator=g)
        if min(conv_transpose_output_size(h, kh, s, p, op, d),
               conv_transpose_output_size(w, kw, s, p, op, d)) < 1:
            with pytest.raises(ValueError, match="padding"):
                conv_transpose2d(x, weight, None, s, p, op, d)
            continue
        expected = F.conv_transpose2d(x, weight, None, s, p, op, 1, d)
        assert torch.allclose(conv_transpose2d(x, weight, None, s, p, op, d), expected,
                              atol=1e-5)


def test_conv_transpose2d_against_loop_oracle():
    g = _gen(7)
    x = torch.randn(1, 2, 3, 2, generator=g, dtype=torch.float64)
    weight = torch.randn(2, 2, 3, 2, generator=g, dtype=torch.float64)
    for stride, padding, output_padding, dilation in [(2, 1, 1, 1), (1, 0, 0, 2), (3, 2, 2, 1)]:
        expected = _loop_conv_transpose2d(x, weight, stride, padding, output_padding, dilation)
        got = conv_transpose2d(x, weight, None, stride, padding, output_padding, dilation)
        assert torch.allclose(got, expected)


@pytest.mark.parametrize("stride, padding, output_padding, dilation", [
    (1, 0, 0, 1), (2, 1, 1, 1), (3, 0, 1, 2), ((2, 1), (0, 1), (1, 0), (1, 2)),
])
def test_conv_transpose2d_gradcheck(stride, padding, output_padding, dilation):
    g = _gen(8)
    x = torch.randn(2, 2, 3, 2, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(2, 3, 3, 2, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, generator=g, dtype=torch.float64, requires_grad=True)

    def fn(x, weight, bias):
        return conv_transpose2d(x, weight, bias, stride, padding, output_padding, dilation)

    assert torch.autograd.gradcheck(fn, (x, weight, bias))
    # and the gradients equal PyTorch's
    ours = fn(x, weight, bias)
    theirs = F.conv_transpose2d(x, weight, bias, stride, padding, output_padding, 1, dilation)
    upstream = torch.randn(ours.shape, generator=g, dtype=torch.float64)
    for a, b in zip(torch.autograd.grad(ours, (x, weight, bias), upstream),
                    torch.autograd.grad(theirs, (x, weight, bias), upstream), strict=True):
        assert torch.allclose(a, b)


def test_conv_transpose1d_gradcheck():
    g = _gen(9)
    x = torch.randn(2, 2, 4, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(2, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, w, b: conv_transpose1d(x, w, b, stride=2, padding=1), (x, weight, bias))


def test_conv_transpose_is_the_adjoint_of_conv():
    # <conv(x), y> == <x, conv_transpose(y)> with the same weight, stride and padding
    g = _gen(11)
    x = torch.randn(2, 3, 9, 8, generator=g, dtype=torch.float64)
    weight = torch.randn(4, 3, 3, 3, generator=g, dtype=torch.float64)  # conv: (C_out, C_in, ..)
    y = torch.randn(F.conv2d(x, weight, stride=2, padding=1).shape, generator=g,
                    dtype=torch.float64)
    lhs = (F.conv2d(x, weight, stride=2, padding=1) * y).sum()
    # output_padding picks the input's width back: 8 and 7 columns both convolve to 4
    up = conv_transpose2d(y, weight, stride=2, padding=1, output_padding=(0, 1))
    assert up.shape == x.shape
    assert torch.allclose(lhs, (x * up).sum())
    # which is why autograd's gradient of conv2d with respect to its input is this very op
    x.requires_grad_(True)
    (grad,) = torch.autograd.grad(F.conv2d(x, weight, stride=2, padding=1), x, y)
    assert torch.allclose(grad, up)


@pytest.mark.parametrize("n, k, s, p, op, d", [
    (2, 3, 2, 0, 0, 1), (3, 3, 2, 1, 0, 1), (4, 4, 2, 1, 0, 1), (7, 1, 1, 0, 0, 1),
    (5, 3, 3, 2, 2, 1), (3, 3, 1, 0, 0, 3), (1, 5, 4, 1, 3, 1),
])
def test_output_size_formula_matches_actual_shapes(n, k, s, p, op, d):
    expected = (n - 1) * s - 2 * p + d * (k - 1) + op + 1
    assert conv_transpose_output_size(n, k, s, p, op, d) == expected
    layer = torch.nn.ConvTranspose2d(1, 1, k, s, p, op, dilation=d)
    assert layer(torch.zeros(1, 1, n, n)).shape[-1] == expected
    assert conv_transpose2d(torch.zeros(1, 1, n, n), torch.zeros(1, 1, k, k), None, s, p, op,
                            d).shape[-1] == expected


def test_conv_transpose_bad_input():
    x, weight = torch.zeros(1, 2, 3, 3), torch.zeros(2, 1, 3, 3)
    with pytest.raises(ValueError, match=r"x must have shape \(N, C_in, H, W\), got \(2, 3, 3\)"):
        conv_transpose2d(x[0], weight)
    with pytest.raises(ValueError, match=r"weight \(3, 1, 3, 3\) must have C_in = 2"):
        conv_transpose2d(x, torch.zeros(3, 1, 3, 3))
    with pytest.raises(ValueError, match=r"bias must have shape \(C_out,\) = \(1,\), got \(2,\)"):
        conv_transpose2d(x, weight, torch.zeros(2))
    with pytest.raises(ValueError, match="output_padding"):
        conv_transpose2d(x, weight, stride=2, output_padding=2)
    with pytest.raises(ValueError, match="padding"):
        conv_transpose2d(torch.zeros(1, 2, 1, 1), torch.zeros(2, 1, 1, 1), padding=1)
    with pytest.raises(ValueError, match="stride"):
        conv_transpose2d(x, weight, stride=0)
    with pytest.raises(ValueError, match=r"x must have shape \(N, C_in, L\), got \(2, 3\)"):
        conv_transpose1d(torch.zeros(2, 3), torch.zeros(2, 1, 3))
    with pytest.raises(ValueError, match=r"weight must have shape \(C_in, C_out, K\)"):
        conv_transpose1d(torch.zeros(1, 2, 3), torch.zeros(2, 3))
