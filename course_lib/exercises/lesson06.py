"""Lesson 06 exercises: unpooling, bilinear interpolation and transposed convolution.

Each table starts with the lecture's examples worked by hand (a 2 x 2 map unpooled to 4 x 4,
max unpooling with the positions remembered by max pooling, the 1-D transposed convolution
with input 2, kernel 3 and stride 2), then the edge cases that separate a correct answer from
an almost-correct one (1 x 1 inputs, stride 1, padding, non-square sizes, several channels).
The same tables drive the notebook's ``check(...)`` cells, the tests and the grader; the
grader adds fresh random cases drawn by ``random_case``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from course_lib import conv_transpose as _ct
from course_lib import upsample as _up
from course_lib.exercises.core import Case, Exercise

__all__ = ["EXERCISES", "LECTURE_MAX_POOL_INPUT", "LECTURE_1D_INPUT", "LECTURE_1D_KERNEL"]


def _img(rows, dtype=torch.float32) -> torch.Tensor:
    """A (1, 1, H, W) tensor from a list of rows."""
    return torch.tensor(rows, dtype=dtype)[None, None]


def _randn(rng: np.random.Generator, *shape: int) -> torch.Tensor:
    return torch.tensor(rng.normal(size=shape).round(2), dtype=torch.float32)


_TWO_BY_TWO = _img([[1, 2], [3, 4]])

# ---------------------------------------------------------------------------------------------
# nearest_unpool
# ---------------------------------------------------------------------------------------------

NEAREST_UNPOOL = Exercise(
    name="nearest_unpool",
    reference=_up.nearest_unpool,
    cases=(
        Case("the lecture's 2 x 2 -> 4 x 4: every value fills a 2 x 2 block",
             {"x": _TWO_BY_TWO, "scale": 2},
             expected=_img([[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]]),
             note="each value is repeated next to itself (1 1 2 2), not the whole row "
                  "tiled (1 2 1 2)"),
        Case("scale 3: 3 x 3 blocks",
             {"x": _img([[5, 6]]), "scale": 3},
             expected=_img([[5, 5, 5, 6, 6, 6]] * 3)),
        Case("scale 1 changes nothing", {"x": _TWO_BY_TWO, "scale": 1}, expected=_TWO_BY_TWO),
        Case("a 1 x 1 input becomes a constant block", {"x": _img([[7]]), "scale": 4},
             expected=_img([[7] * 4] * 4)),
        Case("non-square 2 x 3 input gives 4 x 6",
             {"x": _img([[1, 2, 3], [4, 5, 6]]), "scale": 2},
             note="rows and columns are repeated independently"),
        Case("a batch of 2 images with 3 channels",
             {"x": torch.arange(24, dtype=torch.float32).reshape(2, 3, 2, 2), "scale": 2},
             note="work on the last two dimensions only: x has shape (N, C, H, W)"),
    ),
    random_case=lambda rng: {
        "x": _randn(rng, int(rng.integers(1, 3)), int(rng.integers(1, 4)),
                    int(rng.integers(1, 5)), int(rng.integers(1, 5))),
        "scale": int(rng.integers(1, 4)),
    },
    hint="torch.repeat_interleave(x, scale, dim=2) repeats every row scale times; then the "
         "columns (dim=3).",
)

# ---------------------------------------------------------------------------------------------
# bed_of_nails_unpool
# ---------------------------------------------------------------------------------------------

BED_OF_NAILS_UNPOOL = Exercise(
    name="bed_of_nails_unpool",
    reference=_up.bed_of_nails_unpool,
    cases=(
        Case("the lecture's 2 x 2 -> 4 x 4: values in the top-left corners, zeros elsewhere",
             {"x": _TWO_BY_TWO, "scale": 2},
             expected=_img([[1, 0, 2, 0], [0, 0, 0, 0], [3, 0, 4, 0], [0, 0, 0, 0]]),
             note="input (i, j) goes to output (i * scale, j * scale): the block's top-left"),
        Case("scale 3: two zeros after every nail",
             {"x": _img([[5, 6]]), "scale": 3},
             expected=_img([[5, 0, 0, 6, 0, 0], [0] * 6, [0] * 6])),
        Case("scale 1 changes nothing", {"x": _TWO_BY_TWO, "scale": 1}, expected=_TWO_BY_TWO),
        Case("a 1 x 1 input", {"x": _img([[7]]), "scale": 2}, expected=_img([[7, 0], [0, 0]])),
        Case("non-square 3 x 2 input gives 6 x 4",
             {"x": _img([[1, 2], [3, 4], [5, 6]]), "scale": 2}),
        Case("a batch of 2 images with 3 channels",
             {"x": torch.arange(1, 25, dtype=torch.float32).reshape(2, 3, 2, 2), "scale": 2}),
        Case("float64 stays float64",
             {"x": _img([[0.5]], torch.float64), "scale": 2},
             expected=_img([[0.5, 0], [0, 0]], torch.float64),
             note="create the zeros with x.new_zeros(...) (same dtype and device as x)"),
    ),
    random_case=lambda rng: {
        "x": _randn(rng, int(rng.integers(1, 3)), int(rng.integers(1, 4)),
                    int(rng.integers(1, 5)), int(rng.integers(1, 5))),
        "scale": int(rng.integers(1, 4)),
    },
    hint="start from x.new_zeros(N, C, H * scale, W * scale) and assign x to "
         "out[:, :, ::scale, ::scale].",
)

# ---------------------------------------------------------------------------------------------
# max_unpool2d
# ---------------------------------------------------------------------------------------------

# The lecture's max-unpooling example: max pooling (2 x 2, stride 2) of this map keeps
# [[5, 6], [7, 8]] and remembers where each maximum was; the layers in between produce
# [[1, 2], [3, 4]], which unpooling puts back at the remembered positions.
LECTURE_MAX_POOL_INPUT = _img([[1, 2, 6, 3], [3, 5, 2, 1], [1, 2, 2, 1], [7, 3, 4, 8]])
_POOLED, _INDICES = F.max_pool2d(LECTURE_MAX_POOL_INPUT, 2, return_indices=True)


def _pool_case(x: torch.Tensor, kernel_size: int, stride: int | None = None,
               values: torch.Tensor | None = None) -> dict:
    pooled, indices = F.max_pool2d(x, kernel_size, stride, return_indices=True)
    return {"x": pooled if values is None else values, "indices": indices,
            "kernel_size": kernel_size, "stride": kernel_size if stride is None else stride}


def _random_max_unpool_case(rng: np.random.Generator) -> dict:
    k = int(rng.integers(1, 4))
    stride = int(rng.integers(1, k + 1))
    n_out = (int(rng.integers(1, 4)) - 1) * stride + k  # sizes that pooling divides exactly
    m_out = (int(rng.integers(1, 4)) - 1) * stride + k
    x = _randn(rng, int(rng.integers(1, 3)), int(rng.integers(1, 3)), n_out, m_out)
    x = x + torch.arange(x.numel(), dtype=torch.float32).reshape(x.shape) * 1e-3  # no ties
    return _pool_case(x, k, stride)


MAX_UNPOOL2D = Exercise(
    name="max_unpool2d",
    reference=_up.max_unpool2d,
    cases=(
        Case("the lecture's example: values go back where the maxima were",
             {"x": _img([[1, 2], [3, 4]]), "indices": _INDICES, "kernel_size": 2, "stride": 2},
             expected=_img([[0, 0, 2, 0], [0, 1, 0, 0], [0, 0, 0, 0], [3, 0, 0, 4]]),
             note="indices[..., i, j] is the flat position row * W_out + col of the maximum"),
        Case("unpooling the pooled map itself keeps only the maxima",
             {"x": _POOLED, "indices": _INDICES, "kernel_size": 2, "stride": 2},
             expected=_img([[0, 0, 6, 0], [0, 5, 0, 0], [0, 0, 0, 0], [7, 0, 0, 8]])),
        Case("a 1 x 1 map from a 3 x 3 window",
             {"x": _img([[9]]), "indices": torch.tensor([[[[4]]]]), "kernel_size": 3,
              "stride": 3},
             expected=_img([[0, 0, 0], [0, 9, 0], [0, 0, 0]])),
        Case("non-square: a 2 x 6 map pooled to 1 x 3",
             _pool_case(_img([[1, 8, 2, 3, 0, 0], [4, 0, 0, 9, 5, 1]]), 2),
             expected=_img([[0, 8, 0, 0, 0, 0], [0, 0, 0, 9, 5, 0]])),
        Case("overlapping windows (kernel 3, stride 1): two windows may pick the same maximum",
             _pool_case(_img([[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 20, 11], [1, 2, 3, 4]]), 3, 1),
             note="the output size is (H - 1) * stride + kernel_size"),
        Case("a batch of 2 images with 2 channels: positions are per image and channel",
             _pool_case(torch.tensor(np.random.default_rng(6).permutation(64), dtype=torch.float32
                                     ).reshape(2, 2, 4, 4), 2),
             note="index the flattened H_out * W_out plane of each (image, channel) separately"),
    ),
    random_case=_random_max_unpool_case,
    hint="flatten each plane: out = zeros(N, C, H_out * W_out); "
         "out.scatter(2, indices.flatten(2), x.flatten(2)); then reshape.",
)

# ---------------------------------------------------------------------------------------------
# bilinear_upsample
# ---------------------------------------------------------------------------------------------

_ONE_THREE = _img([[1, 3], [5, 7]])

BILINEAR_UPSAMPLE = Exercise(
    name="bilinear_upsample",
    reference=_up.bilinear_upsample,
    cases=(
        Case("2 x 2 -> 4 x 4, align_corners=False: samples at -0.25 (-> 0), 0.25, 0.75, 1.25",
             {"x": _ONE_THREE, "scale": 2, "align_corners": False},
             expected=_img([[1, 1.5, 2.5, 3], [2, 2.5, 3.5, 4], [4, 4.5, 5.5, 6],
                            [5, 5.5, 6.5, 7]]),
             note="source position (i + 0.5) / scale - 0.5, clamped at 0; the last input "
                  "pixel is repeated beyond the edge"),
        Case("2 x 2 -> 4 x 4, align_corners=True: samples at 0, 1/3, 2/3, 1",
             {"x": _ONE_THREE, "scale": 2, "align_corners": True},
             expected=_img([[1, 5 / 3, 7 / 3, 3], [7 / 3, 3, 11 / 3, 13 / 3],
                            [11 / 3, 13 / 3, 5, 17 / 3], [5, 17 / 3, 19 / 3, 7]]),
             note="source position i * (H_in - 1) / (H_out - 1): the corners keep their values"),
        Case("a 1 x 1 input becomes a constant", {"x": _img([[4]]), "scale": 3,
                                                  "align_corners": False},
             expected=_img([[4] * 3] * 3)),
        Case("a 1 x 1 input, align_corners=True", {"x": _img([[4]]), "scale": 2,
                                                   "align_corners": True},
             expected=_img([[4] * 2] * 2)),
        Case("scale 1 changes nothing", {"x": _ONE_THREE, "scale": 1, "align_corners": False},
             expected=_ONE_THREE),
        Case("non-square 2 x 3 -> 6 x 9, align_corners=False",
             {"x": _img([[0, 1, 4], [2, 3, 8]]), "scale": 3, "align_corners": False}),
        Case("non-square 3 x 2 -> 6 x 4, align_corners=True",
             {"x": _img([[0, 1], [4, 2], [3, 8]]), "scale": 2, "align_corners": True}),
        Case("a batch of 2 images with 2 channels",
             {"x": torch.arange(32, dtype=torch.float32).reshape(2, 2, 2, 4) % 5, "scale": 2,
              "align_corners": False}),
    ),
    random_case=lambda rng: {
        "x": _randn(rng, int(rng.integers(1, 3)), int(rng.integers(1, 3)),
                    int(rng.integers(1, 6)), int(rng.integers(1, 6))),
        "scale": int(rng.integers(1, 4)),
        "align_corners": bool(rng.integers(0, 2)),
    },
    atol=1e-5,
    hint="interpolate along the rows, then along the columns: for each output index find the "
         "source position, its two neighbours i0, i1 = min(i0 + 1, H - 1) and the weight t.",
)

# ---------------------------------------------------------------------------------------------
# conv_transpose1d
# ---------------------------------------------------------------------------------------------

# The lecture's 1-D example: input size 2, filter size 3, stride 2 -> output size 5; the middle
# cell receives from both inputs: [a, b] * [x, y, z] -> [a x, a y, a z + b x, b y, b z].
LECTURE_1D_INPUT = torch.tensor([[[2.0, 3.0]]])
LECTURE_1D_KERNEL = torch.tensor([[[1.0, 10.0, 100.0]]])


def _random_conv_transpose1d_case(rng: np.random.Generator) -> dict:
    c_in, c_out = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    length, k, stride = int(rng.integers(1, 6)), int(rng.integers(1, 5)), int(rng.integers(1, 4))
    padding = int(rng.integers(0, 3))
    while _ct.conv_transpose_output_size(length, k, stride, padding) < 1:
        padding -= 1
    bias = _randn(rng, c_out) if rng.random() < 0.5 else None
    case = {"x": _randn(rng, int(rng.integers(1, 3)), c_in, length),
            "weight": _randn(rng, c_in, c_out, k), "stride": stride, "padding": padding}
    return case if bias is None else {**case, "bias": bias}


CONV_TRANSPOSE1D = Exercise(
    name="conv_transpose1d",
    reference=_ct.conv_transpose1d,
    cases=(
        Case("the lecture: input 2, kernel 3, stride 2 -> output 5, the overlap is summed",
             {"x": LECTURE_1D_INPUT, "weight": LECTURE_1D_KERNEL, "stride": 2},
             expected=torch.tensor([[[2.0, 20.0, 200.0 + 3.0, 30.0, 300.0]]]),
             note="[a, b] with kernel [x, y, z]: [a x, a y, a z + b x, b y, b z]; add where "
                  "two scaled kernels overlap, do not overwrite"),
        Case("the lecture's summary: input 3, kernel 3, stride 2, padding 1 -> output 5",
             {"x": torch.tensor([[[1.0, 2.0, 3.0]]]), "weight": LECTURE_1D_KERNEL,
              "stride": 2, "padding": 1},
             expected=torch.tensor([[[10.0, 102.0, 20.0, 203.0, 30.0]]]),
             note="the uncut output is [1, 10, 102, 20, 203, 30, 300]; padding cuts one cell "
                  "from each end"),
        Case("stride 1: every output cell sums up to K contributions",
             {"x": torch.tensor([[[1.0, 2.0, 3.0]]]), "weight": torch.tensor([[[1.0, 1.0]]]),
              "stride": 1},
             expected=torch.tensor([[[1.0, 3.0, 5.0, 3.0]]])),
        Case("stride larger than the kernel leaves zeros between the copies",
             {"x": torch.tensor([[[1.0, 2.0]]]), "weight": torch.tensor([[[1.0, 10.0]]]),
              "stride": 3},
             expected=torch.tensor([[[1.0, 10.0, 0.0, 2.0, 20.0]]])),
        Case("a 1-long input is just the scaled kernel",
             {"x": torch.tensor([[[-2.0]]]), "weight": LECTURE_1D_KERNEL, "stride": 2},
             expected=torch.tensor([[[-2.0, -20.0, -200.0]]])),
        Case("bias is added to every output cell",
             {"x": LECTURE_1D_INPUT, "weight": LECTURE_1D_KERNEL, "stride": 2,
              "bias": torch.tensor([0.5])},
             expected=torch.tensor([[[2.5, 20.5, 203.5, 30.5, 300.5]]])),
        Case("channels: weight is (C_in, C_out, K); each output channel sums over C_in",
             {"x": torch.tensor([[[1.0, 2.0], [0.0, 1.0]], [[3.0, 0.0], [1.0, 1.0]]]),
              "weight": torch.tensor([[[1.0, 2.0, 3.0], [0.0, 1.0, 0.0], [1.0, 1.0, 1.0]],
                                      [[1.0, 0.0, -1.0], [2.0, 2.0, 2.0], [0.0, 0.0, 1.0]]]),
              "stride": 2, "bias": torch.tensor([0.0, 1.0, -1.0])},
             note="out[n, o] = sum over c of (x[n, c] scaled kernels of weight[c, o])"),
    ),
    random_case=_random_conv_transpose1d_case,
    atol=1e-4,
    hint="for each input cell i: out[..., i * stride : i * stride + K] += x[..., i] * kernel; "
         "then cut padding cells from each end.",
)

# ---------------------------------------------------------------------------------------------
# conv_transpose2d
# ---------------------------------------------------------------------------------------------


def _random_conv_transpose2d_case(rng: np.random.Generator) -> dict:
    c_in, c_out = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    h, w = int(rng.integers(1, 5)), int(rng.integers(1, 5))
    kh, kw = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    stride, dilation = int(rng.integers(1, 4)), int(rng.integers(1, 3))
    output_padding = int(rng.integers(0, max(stride, dilation)))
    padding = int(rng.integers(0, 3))
    size = _ct.conv_transpose_output_size
    while min(size(h, kh, stride, padding, output_padding, dilation),
              size(w, kw, stride, padding, output_padding, dilation)) < 1:
        padding -= 1
    case = {"x": _randn(rng, int(rng.integers(1, 3)), c_in, h, w),
            "weight": _randn(rng, c_in, c_out, kh, kw), "stride": stride, "padding": padding,
            "output_padding": output_padding, "dilation": dilation}
    return {**case, "bias": _randn(rng, c_out)} if rng.random() < 0.5 else case


_ONES_3x3 = torch.ones(1, 1, 3, 3)

CONV_TRANSPOSE2D = Exercise(
    name="conv_transpose2d",
    reference=_ct.conv_transpose2d,
    cases=(
        Case("2 x 2 input, 3 x 3 kernel of ones, stride 2 -> 5 x 5; overlaps are summed",
             {"x": _TWO_BY_TWO, "weight": _ONES_3x3, "stride": 2},
             expected=_img([[1, 1, 3, 2, 2], [1, 1, 3, 2, 2], [4, 4, 10, 6, 6],
                            [3, 3, 7, 4, 4], [3, 3, 7, 4, 4]]),
             note="the middle cell is covered by all four scaled kernels: 1 + 2 + 3 + 4"),
        Case("kernel 2, stride 2: no overlap, the blocks tile the output",
             {"x": _TWO_BY_TWO, "weight": _img([[1, 10], [100, 1000]]), "stride": 2},
             expected=_img([[1, 10, 2, 20], [100, 1000, 200, 2000], [3, 30, 4, 40],
                            [300, 3000, 400, 4000]])),
        Case("a 1 x 1 input is just the scaled kernel",
             {"x": _img([[2]]), "weight": _img([[1, 2, 3], [4, 5, 6]]), "stride": 3},
             expected=_img([[2, 4, 6], [8, 10, 12]])),
        Case("stride 1: a 'full' convolution",
             {"x": _TWO_BY_TWO, "weight": torch.ones(1, 1, 2, 2), "stride": 1},
             expected=_img([[1, 3, 2], [4, 10, 6], [3, 7, 4]])),
        Case("padding 1 cuts one row and column from each side",
             {"x": _TWO_BY_TWO, "weight": _ONES_3x3, "stride": 2, "padding": 1},
             expected=_img([[1, 3, 2], [4, 10, 6], [3, 7, 4]])),
        Case("output_padding 1 adds a row and a column at the bottom/right",
             {"x": _TWO_BY_TWO, "weight": _ONES_3x3, "stride": 2, "padding": 1,
              "output_padding": 1},
             expected=_img([[1, 3, 2, 2], [4, 10, 6, 6], [3, 7, 4, 4], [3, 7, 4, 4]]),
             note="output size (n - 1) * s - 2p + (k - 1) + output_padding + 1 = 4"),
        Case("dilation 2: the kernel's taps are 2 cells apart",
             {"x": _img([[1, 2]]), "weight": torch.ones(1, 1, 1, 2), "stride": 1,
              "dilation": 2},
             expected=_img([[1, 2, 1, 2]])),
        Case("non-square input, non-square kernel, an asymmetric kernel",
             {"x": _img([[1, -1, 2], [0, 3, 1]]), "weight": _img([[1, 2], [3, 4], [5, 6]]),
              "stride": 2},
             note="the kernel is not flipped: tap (a, b) of input (i, j) lands at "
                  "(i * stride + a, j * stride + b)"),
        Case("channels and bias: weight is (C_in, C_out, KH, KW)",
             {"x": torch.arange(16, dtype=torch.float32).reshape(2, 2, 2, 2) / 4,
              "weight": torch.arange(24, dtype=torch.float32).reshape(2, 3, 2, 2) % 5 - 2,
              "bias": torch.tensor([1.0, 0.0, -1.0]), "stride": 2, "padding": 1},
             note="out[n, o] = bias[o] + sum over c of x[n, c]'s scaled kernels weight[c, o]"),
    ),
    random_case=_random_conv_transpose2d_case,
    atol=1e-4,
    hint="loop over the kernel taps (a, b): out[..., a*d : ... : s, b*d : ... : s] += "
         "x * weight[c, o, a, b] summed over c; cut padding, keep output_padding.",
)

EXERCISES: dict[str, Exercise] = {
    ex.name: ex for ex in (NEAREST_UNPOOL, BED_OF_NAILS_UNPOOL, MAX_UNPOOL2D, BILINEAR_UPSAMPLE,
                           CONV_TRANSPOSE1D, CONV_TRANSPOSE2D)
}
