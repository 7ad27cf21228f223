"""The lesson 06 case tables: hand-worked answers agree with the reference and with PyTorch,
and the tables catch the classic mistakes (each mutant below must fail a visible case)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from course_lib.exercises import load_lesson
from course_lib.exercises.core import check, compare, to_plain
from course_lib.exercises.lesson06 import (
    LECTURE_1D_INPUT,
    LECTURE_1D_KERNEL,
    LECTURE_MAX_POOL_INPUT,
)

EXERCISES = load_lesson("06")

PYTORCH = {
    "nearest_unpool": lambda x, scale: F.interpolate(x, scale_factor=scale, mode="nearest"),
    "max_unpool2d": lambda x, **kwargs: F.max_unpool2d(x, **kwargs),
    "bilinear_upsample": lambda x, scale, align_corners: F.interpolate(
        x, scale_factor=scale, mode="bilinear", align_corners=align_corners),
    "conv_transpose1d": lambda x, **kwargs: F.conv_transpose1d(x, **kwargs),
    "conv_transpose2d": lambda x, **kwargs: F.conv_transpose2d(x, **kwargs),
}


def test_names_match_references():
    assert set(EXERCISES) == {"nearest_unpool", "bed_of_nails_unpool", "max_unpool2d",
                              "bilinear_upsample", "conv_transpose1d", "conv_transpose2d"}


@pytest.mark.parametrize("name", sorted(PYTORCH))
def test_every_case_agrees_with_pytorch(name):
    ex = EXERCISES[name]
    rng = np.random.default_rng(0)
    cases = [c.kwargs for c in ex.cases] + [ex.random_case(rng) for _ in range(30)]
    for kwargs in cases:
        theirs = to_plain(PYTORCH[name](**kwargs))
        assert compare(to_plain(ex.reference(**kwargs)), theirs, 1e-5, 1e-5) is None, kwargs


def test_lecture_examples():
    pooled, indices = F.max_pool2d(LECTURE_MAX_POOL_INPUT, 2, return_indices=True)
    assert pooled[0, 0].tolist() == [[5, 6], [7, 8]]
    out = EXERCISES["conv_transpose1d"].reference(LECTURE_1D_INPUT, LECTURE_1D_KERNEL, stride=2)
    a, b = LECTURE_1D_INPUT[0, 0].tolist()
    x, y, z = LECTURE_1D_KERNEL[0, 0].tolist()
    assert out[0, 0].tolist() == [a * x, a * y, a * z + b * x, b * y, b * z]


# --- mutants: plausible wrong answers that the visible cases must catch -----------------------


def nearest_tiled(x, scale):  # tiles the whole map: 1 2 1 2 instead of 1 1 2 2
    return x.repeat(1, 1, scale, scale)


def nearest_rows_only(x, scale):
    return x.repeat_interleave(scale, dim=2)


def bed_of_nails_bottom_right(x, scale):
    out = x.new_zeros(*x.shape[:2], x.shape[2] * scale, x.shape[3] * scale)
    out[:, :, scale - 1 :: scale, scale - 1 :: scale] = x
    return out


def max_unpool_ignores_indices(x, indices, kernel_size, stride=None):
    return bed_of_nails_unpool_ref(x, kernel_size)


def max_unpool_whole_batch_flat(x, indices, kernel_size, stride=None):
    # indexes one flat array for the whole tensor: positions collide across images/channels
    stride = stride or kernel_size
    n, c, h, w = x.shape
    h_out, w_out = (h - 1) * stride + kernel_size, (w - 1) * stride + kernel_size
    out = x.new_zeros(n * c * h_out * w_out)
    out[indices.flatten()] = x.flatten()
    return out.reshape(n, c, h_out, w_out)


def make_bilinear(flip_convention=False, clamp=True):
    def lerp_axis(x, dim, scale, align_corners):
        n_in = x.shape[dim]
        n_out = n_in * scale
        dst = torch.arange(n_out, dtype=torch.float64)
        if align_corners:
            src = dst * ((n_in - 1) / (n_out - 1) if n_out > 1 else 0.0)
        else:
            src = (dst + 0.5) / scale - 0.5
            src = src.clamp(min=0) if clamp else src  # unclamped: index -1 wraps around
        i0 = src.floor().long().clamp(max=n_in - 1)
        i1 = (i0 + 1).clamp(max=n_in - 1)
        shape = [1] * x.dim()
        shape[dim] = n_out
        t = (src - i0).to(x.dtype).reshape(shape)
        return x.index_select(dim, i0 % n_in) * (1 - t) + x.index_select(dim, i1) * t

    def bilinear_upsample(x, scale, align_corners=False):
        if flip_convention:
            align_corners = not align_corners
        return lerp_axis(lerp_axis(x, 2, scale, align_corners), 3, scale, align_corners)
    return bilinear_upsample


def bilinear_nearest(x, scale, align_corners=False):
    return F.interpolate(x, scale_factor=scale, mode="nearest")


def make_conv_transpose1d(overwrite=False, pad_one_side=False, flip=False):
    def conv_transpose1d(x, weight, bias=None, stride=1, padding=0):
        n, _, length = x.shape
        k = weight.shape[2]
        kernel = weight.flip(2) if flip else weight
        full = x.new_zeros(n, weight.shape[1], (length - 1) * stride + k)
        for i in range(length):
            scaled = torch.einsum("nc,cok->nok", x[:, :, i], kernel)
            if overwrite:
                full[:, :, i * stride : i * stride + k] = scaled
            else:
                full[:, :, i * stride : i * stride + k] += scaled
        out = full[:, :, 2 * padding :] if pad_one_side else \
            full[:, :, padding : full.shape[2] - padding]
        return out if bias is None else out + bias[None, :, None]
    return conv_transpose1d


def conv_transpose1d_sums_channels_wrongly(x, weight, bias=None, stride=1, padding=0):
    # treats the weight as (C_out, C_in, K) like a normal convolution's
    return F.conv_transpose1d(x, weight.transpose(0, 1).reshape(weight.shape), bias, stride,
                              padding)


def make_conv_transpose2d(overwrite=False, flip=False, ignore_dilation=False,
                          ignore_output_padding=False):
    def conv_transpose2d(x, weight, bias=None, stride=1, padding=0, output_padding=0,
                         dilation=1):
        if ignore_dilation:
            dilation = 1
        if ignore_output_padding:
            output_padding = 0
        kernel = weight.flip(2, 3) if flip else weight
        n, _, h, w = x.shape
        c_out, kh, kw = kernel.shape[1:]
        span_h, span_w = dilation * (kh - 1) + 1, dilation * (kw - 1) + 1
        full = x.new_zeros(n, c_out, (h - 1) * stride + span_h + output_padding,
                           (w - 1) * stride + span_w + output_padding)
        for i in range(h):
            for j in range(w):
                scaled = torch.einsum("nc,cokl->nokl", x[:, :, i, j], kernel)
                rows = slice(i * stride, i * stride + span_h, dilation)
                cols = slice(j * stride, j * stride + span_w, dilation)
                if overwrite:
                    full[:, :, rows, cols] = scaled
                else:
                    full[:, :, rows, cols] += scaled
        out = full[:, :, padding : full.shape[2] - padding, padding : full.shape[3] - padding]
        return out if bias is None else out + bias[None, :, None, None]
    return conv_transpose2d


bed_of_nails_unpool_ref = EXERCISES["bed_of_nails_unpool"].reference


@pytest.mark.parametrize("name, mutant", [
    ("nearest_unpool", nearest_tiled),
    ("nearest_unpool", nearest_rows_only),
    ("bed_of_nails_unpool", bed_of_nails_bottom_right),
    ("bed_of_nails_unpool", lambda x, scale: EXERCISES["nearest_unpool"].reference(x, scale)),
    ("max_unpool2d", max_unpool_ignores_indices),
    ("max_unpool2d", max_unpool_whole_batch_flat),
    ("bilinear_upsample", make_bilinear(flip_convention=True)),
    ("bilinear_upsample", make_bilinear(clamp=False)),
    ("bilinear_upsample", bilinear_nearest),
    ("conv_transpose1d", make_conv_transpose1d(overwrite=True)),
    ("conv_transpose1d", make_conv_transpose1d(pad_one_side=True)),
    ("conv_transpose1d", make_conv_transpose1d(flip=True)),
    ("conv_transpose1d", conv_transpose1d_sums_channels_wrongly),
    ("conv_transpose2d", make_conv_transpose2d(overwrite=True)),
    ("conv_transpose2d", make_conv_transpose2d(flip=True)),
    ("conv_transpose2d", make_conv_transpose2d(ignore_dilation=True)),
    ("conv_transpose2d", make_conv_transpose2d(ignore_output_padding=True)),
])
def test_visible_cases_catch_mutant(name, mutant):
    mutant.__name__ = name
    assert not check(mutant, EXERCISES[name], device="cpu", verbose=False)


def test_correct_loop_versions_pass():
    # the mutant factories with every flag off are correct answers written differently
    for name, fn in [("bilinear_upsample", make_bilinear()),
                     ("conv_transpose1d", make_conv_transpose1d()),
                     ("conv_transpose2d", make_conv_transpose2d())]:
        fn.__name__ = name
        assert check(fn, EXERCISES[name], device="cpu", verbose=False)
