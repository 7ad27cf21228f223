"""One-hot targets, the argmax collapse, tiled prediction and receptive fields against PyTorch,
loop oracles, whole-image prediction and gradients measured with autograd."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from course_lib.segmentation import collapse, one_hot, predict_tiled, receptive_field

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def _gen(seed):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- one_hot


def test_one_hot_lecture_encoding():
    # the lecture's K = 3 (cat, dog, horse), counted from 0: 0 -> [1, 0, 0], 1 -> [0, 1, 0] ...
    seg = torch.tensor([[0, 1], [2, 1]])
    out = one_hot(seg, 3)
    assert out.shape == (3, 2, 2) and out.dtype == torch.float32
    assert out[:, 0, 0].tolist() == [1, 0, 0]
    assert out[:, 0, 1].tolist() == [0, 1, 0]
    assert out[:, 1, 0].tolist() == [0, 0, 1]
    assert out[1].tolist() == [[0, 1], [0, 1]]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape, num_classes", [((2, 5, 7), 4), ((1, 1, 1), 1), ((3, 2, 6), 9),
                                                ((0, 4, 4), 3)])
def test_one_hot_against_pytorch(device, shape, num_classes):
    seg = torch.randint(0, num_classes, shape, generator=_gen(0)).to(device)
    expected = F.one_hot(seg, num_classes).permute(0, 3, 1, 2).float()
    got = one_hot(seg, num_classes)
    assert got.shape == (shape[0], num_classes, *shape[1:]) and got.device == seg.device
    assert torch.equal(got, expected)
    if shape[0]:
        assert torch.equal(one_hot(seg[0], num_classes), expected[0])   # (H, W) -> (C, H, W)
    assert torch.equal(got.sum(dim=1), torch.ones(shape, device=device))


def test_one_hot_other_integer_dtypes_and_absent_classes():
    seg = torch.tensor([[1, 1], [1, 1]], dtype=torch.uint8)
    out = one_hot(seg, 3)
    assert out[0].sum() == 0 and out[2].sum() == 0 and out[1].sum() == 4


@pytest.mark.parametrize("seg, num_classes, error, match", [
    (torch.tensor([[0, 3]]), 3, ValueError, r"seg labels must lie in \[0, 3\), got values in "
                                            r"\[0, 3\]"),
    (torch.tensor([[-1, 0]]), 3, ValueError, r"\[0, 3\)"),
    (torch.zeros(2, 2), 3, ValueError, "integer labels, got dtype torch.float32"),
    (torch.zeros(2, 2, dtype=torch.bool), 3, ValueError, "integer labels"),
    (torch.zeros(1, 1, 2, 2, dtype=torch.int64), 3, ValueError,
     r"seg must have shape \(N, H, W\) or \(H, W\), got \(1, 1, 2, 2\)"),
    (torch.zeros(3, dtype=torch.int64), 3, ValueError, r"got \(3,\)"),
    (torch.zeros(2, 2, dtype=torch.int64), 0, ValueError, "num_classes"),
    ([[0, 1]], 2, TypeError, "Tensor"),
])
def test_one_hot_bad_input(seg, num_classes, error, match):
    with pytest.raises(error, match=match):
        one_hot(seg, num_classes)


# ---------------------------------------------------------------- collapse


def _loop_collapse(scores):
    n, c, h, w = scores.shape
    out = torch.zeros(n, h, w, dtype=torch.int64)
    for b, i, j in itertools.product(range(n), range(h), range(w)):
        best = 0
        for k in range(1, c):
            if scores[b, k, i, j] > scores[b, best, i, j]:   # strictly greater: first one wins
                best = k
        out[b, i, j] = best
    return out


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_collapse_against_a_loop_with_ties(device, dtype):
    # rounded scores make ties frequent
    scores = torch.randint(0, 3, (2, 4, 3, 5), generator=_gen(1)).to(device, dtype)
    got = collapse(scores)
    assert got.dtype == torch.int64 and got.device == scores.device
    assert torch.equal(got.cpu(), _loop_collapse(scores.cpu()))
    assert torch.equal(collapse(scores[1]), got[1])                  # (C, H, W) -> (H, W)


def test_collapse_undoes_one_hot_and_ignores_softmax():
    seg = torch.randint(0, 5, (3, 6, 4), generator=_gen(2))
    assert torch.equal(collapse(one_hot(seg, 5)), seg)
    logits = torch.randn(3, 5, 6, 4, generator=_gen(3))
    assert torch.equal(collapse(logits.softmax(dim=1)), collapse(logits))


def test_collapse_tie_takes_the_first_class_and_empty_input():
    scores = torch.tensor([[[[0.5]], [[0.5]], [[0.1]]]])            # (1, 3, 1, 1): tie 0 / 1
    assert collapse(scores).tolist() == [[[0]]]
    assert collapse(torch.zeros(0, 3, 2, 2)).shape == (0, 2, 2)


def test_collapse_bad_input():
    with pytest.raises(ValueError, match=r"\(N, C, H, W\) or \(C, H, W\), got \(2, 2\)"):
        collapse(torch.zeros(2, 2))
    with pytest.raises(ValueError, match="at least one class"):
        collapse(torch.zeros(1, 0, 2, 2))


# ---------------------------------------------------------------- predict_tiled


def _symmetric(weight):
    """Mirror-symmetric kernels (left-right and up-down), bit for bit."""
    weight = (weight + weight.flip(-1)) / 2
    return (weight + weight.flip(-2)) / 2


def make_fcn(layers, padding_mode="zeros", symmetric=False, dilation=1, batch_norm=False,
             dtype=torch.float64, seed=0, in_channels=3, num_classes=4):
    """3 x 3 convolutions (dilated or not), ReLU between them: receptive radius layers*dilation."""
    torch.manual_seed(seed)
    modules, channels = [], in_channels
    for i in range(layers):
        out = num_classes if i == layers - 1 else 5
        conv = nn.Conv2d(channels, out, 3, padding=dilation, dilation=dilation,
                         padding_mode=padding_mode)
        if symmetric:
            conv.weight.data = _symmetric(conv.weight.data.to(dtype))
        modules.append(conv)
        if i < layers - 1:
            if batch_norm:
                bn = nn.BatchNorm2d(out)
                bn.running_mean.uniform_(-1, 1)
                bn.running_var.uniform_(0.5, 2)
                modules.append(bn)
            modules.append(nn.ReLU())
        channels = out
    return nn.Sequential(*modules).to(dtype).eval()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("size, tile, overlap", [
    ((16, 16), 8, 4),     # exact multiple of the stride 4
    ((13, 22), 10, 6),    # not a multiple of the stride
    ((5, 7), 16, 6),      # the image is smaller than one tile
    ((9, 3), 8, 6),       # smaller than the tile in one direction only, stride 2
    ((20, 11), 12, 8),    # overlap larger than needed
])
def test_tiled_equals_whole_image_when_the_model_mirrors_like_the_tiling(device, dtype, size,
                                                                         tile, overlap):
    # radius 2 <= overlap / 2; symmetric kernels + reflect padding: mirroring each feature map
    # is mirroring the input once, so tiled == whole everywhere, borders included
    model = make_fcn(2, "reflect", symmetric=True, dtype=dtype).to(device)
    image = torch.randn(2, 3, *size, generator=_gen(4), dtype=dtype).to(device)
    with torch.no_grad():
        whole = model(image)
    tiled = predict_tiled(model, image, tile, overlap)
    assert tiled.shape == whole.shape and tiled.dtype == dtype and tiled.device == image.device
    assert torch.allclose(tiled, whole, atol=1e-5)
    single = predict_tiled(model, image[1], tile, overlap)          # (3, H, W) -> (C, H, W)
    assert single.shape == whole.shape[1:] and torch.allclose(single, whole[1], atol=1e-5)


def test_single_reflect_layer_with_any_kernel_matches_everywhere():
    model = make_fcn(1, "reflect")
    image = torch.randn(1, 3, 11, 9, generator=_gen(5), dtype=torch.float64)
    assert torch.allclose(predict_tiled(model, image, 6, 2), model(image).detach(), atol=1e-12)


@pytest.mark.parametrize("padding_mode, symmetric", [("zeros", False), ("reflect", False)])
@pytest.mark.parametrize("layers, dilation, overlap", [(2, 1, 4), (3, 1, 6), (2, 2, 8)])
def test_tiled_equals_whole_image_in_the_interior(padding_mode, symmetric, layers, dilation,
                                                  overlap):
    # any padding and any kernels: where the receptive field lies inside the image they agree;
    # at the borders a deeper zero- or reflect-padded stack of general kernels differs
    model = make_fcn(layers, padding_mode, symmetric, dilation, batch_norm=True)
    radius = (receptive_field([3] * layers, dilations=[dilation] * layers) - 1) // 2
    assert radius <= overlap // 2
    image = torch.randn(2, 3, 23, 19, generator=_gen(6), dtype=torch.float64)
    whole = model(image).detach()
    tiled = predict_tiled(model, image, 14, overlap, batch_size=3)
    r = radius
    assert torch.allclose(tiled[..., r:-r, r:-r], whole[..., r:-r, r:-r], atol=1e-10)
    assert not torch.allclose(tiled, whole, atol=1e-3)              # the borders differ


def test_tiles_show_seams_when_the_overlap_is_too_small():
    model = make_fcn(3, "reflect", symmetric=True)                   # radius 3
    image = torch.randn(1, 3, 24, 24, generator=_gen(7), dtype=torch.float64)
    whole = model(image).detach()
    assert torch.allclose(predict_tiled(model, image, 12, 6), whole, atol=1e-10)
    seams = (predict_tiled(model, image, 12, 2) - whole).abs().amax(dim=(0, 1))   # (H, W)
    assert seams.max() > 1e-3
    # pixels far from every seam (cores of 10 x 10: seams at 10 and 20) still agree
    assert seams[4:6, 4:6].max() < 1e-10 and seams[14:16, 12:18].max() < 1e-10


def test_predict_tiled_runs_on_the_models_dtype_without_grad_and_in_batches():
    model = make_fcn(2, "reflect", symmetric=True, dtype=torch.float64)
    image = torch.randn(1, 3, 10, 10, generator=_gen(8))             # float32 in
    calls = []
    model.register_forward_hook(lambda m, i, o: calls.append((i[0].shape[0],
                                                              torch.is_grad_enabled())))
    out = predict_tiled(model, image, 6, 4, batch_size=7)            # 5 x 5 = 25 tiles
    assert out.dtype == torch.float64
    assert [b for b, _ in calls] == [7, 7, 7, 4] and not any(g for _, g in calls)
    assert torch.allclose(out, model(image.double()).detach(), atol=1e-10)


def test_predict_tiled_overlap_zero_and_tile_one():
    # a 1 x 1 convolution has radius 0: any tiling agrees with the whole image
    model = nn.Conv2d(3, 2, 1).double()
    image = torch.randn(2, 3, 7, 5, generator=_gen(9), dtype=torch.float64)
    whole = model(image).detach()
    for tile, overlap in [(1, 0), (3, 0), (4, 2), (8, 0)]:
        assert torch.allclose(predict_tiled(model, image, tile, overlap), whole, atol=1e-12)


def test_predict_tiled_one_pixel_images_and_empty_batch():
    model = make_fcn(2, "reflect", symmetric=True)
    for size in [(1, 1), (1, 6), (5, 1)]:
        image = torch.randn(1, 3, *size, generator=_gen(10), dtype=torch.float64)
        assert predict_tiled(model, image, 8, 4).shape == (1, 4, *size)
    # mirroring a 1-pixel side repeats it: a 1 x 1 image is seen as a constant image
    pixel = torch.randn(1, 3, 1, 1, generator=_gen(11), dtype=torch.float64)
    constant = model(pixel.expand(1, 3, 8, 8)).detach()[..., :1, :1]
    assert torch.allclose(predict_tiled(model, pixel, 8, 4), constant, atol=1e-12)
    empty = predict_tiled(model, torch.zeros(0, 3, 5, 6, dtype=torch.float64), 8, 4)
    assert empty.shape == (0, 4, 5, 6)


@pytest.mark.parametrize("tile, overlap, match", [
    (8, 3, "overlap must be even"),
    (8, 8, r"0 <= overlap < tile = 8, got 8"),
    (8, -2, "0 <= overlap < tile"),
    (0, 0, "tile must be >= 1, got 0"),
    (8.0, 2, "tile must be an int"),
    (8, 2.0, "overlap must be an int"),
])
def test_predict_tiled_bad_tiling(tile, overlap, match):
    with pytest.raises(ValueError, match=match):
        predict_tiled(nn.Identity(), torch.zeros(1, 3, 4, 4), tile, overlap)


def test_predict_tiled_bad_image_and_model():
    with pytest.raises(ValueError, match=r"image must have shape .*got \(4, 4\)"):
        predict_tiled(nn.Identity(), torch.zeros(4, 4), 4, 0)
    with pytest.raises(ValueError, match=r"H, W >= 1, got \(1, 3, 0, 4\)"):
        predict_tiled(nn.Identity(), torch.zeros(1, 3, 0, 4), 4, 0)
    with pytest.raises(ValueError, match=r"model must map .* got \(1, 2, 2, 2\)"):
        predict_tiled(nn.Conv2d(3, 2, 3), torch.zeros(1, 3, 4, 4), 4, 0)
    with pytest.raises(ValueError, match="batch_size"):
        predict_tiled(nn.Identity(), torch.zeros(1, 3, 4, 4), 4, 0, batch_size=0)


# ---------------------------------------------------------------- receptive_field


def _measured_field(kernel_sizes, strides, dilations):
    """The extent of the input pixels whose gradient reaches one output pixel (1-D, ones)."""
    layers = [nn.Conv1d(1, 1, k, stride=s, dilation=d, bias=False)
              for k, s, d in zip(kernel_sizes, strides, dilations, strict=True)]
    for layer in layers:
        nn.init.ones_(layer.weight)                      # positive: no cancellation
    x = torch.zeros(1, 1, 400, dtype=torch.float64, requires_grad=True)
    out = nn.Sequential(*layers).double()(x)
    out[0, 0, out.shape[-1] // 2].backward()
    touched = x.grad[0, 0].nonzero().flatten()
    return int(touched.max() - touched.min() + 1)


@pytest.mark.parametrize("kernel_sizes, strides, dilations, expected", [
    ([3], None, None, 3),
    ([3, 3], None, None, 5),
    ([3, 3, 3], None, None, 7),
    ([3, 3, 3], None, [1, 2, 4], 15),       # atrous: the field doubles without strides
    ([3, 3, 3, 3], None, [1, 2, 4, 8], 31),
    ([5, 3], [1, 1], [2, 3], 15),
    ([3, 2, 3], [1, 2, 1], None, 8),        # a 2 x 2 pooling-like step with stride 2
    ([7, 3, 3], [2, 2, 1], [1, 1, 2], 7 + 2 * 2 + 2 * 2 * 4),
    ([1, 1], None, None, 1),
    ([4, 4], [2, 2], None, 10),
])
def test_receptive_field_equals_the_gradient_footprint(kernel_sizes, strides, dilations,
                                                       expected):
    n = len(kernel_sizes)
    assert receptive_field(kernel_sizes, strides, dilations) == expected
    measured = _measured_field(kernel_sizes, strides or [1] * n, dilations or [1] * n)
    assert measured == expected


def test_receptive_field_of_the_2d_model_used_above():
    # the 2-D footprint of a 2-layer 3 x 3 stack is 5 x 5, as the 1-D formula says per axis
    model = make_fcn(2, "zeros", batch_norm=False)
    x = torch.zeros(1, 3, 15, 15, dtype=torch.float64, requires_grad=True)
    model(x)[0, 0, 7, 7].backward()
    rows, cols = x.grad.abs().sum(dim=(0, 1)).nonzero().unbind(1)
    assert int(rows.max() - rows.min() + 1) <= receptive_field([3, 3]) == 5
    assert int(cols.max() - cols.min() + 1) <= 5


def test_receptive_field_empty_and_bad_input():
    assert receptive_field([]) == 1
    with pytest.raises(ValueError, match="same length, got 2, 1 and 2"):
        receptive_field([3, 3], [1])
    with pytest.raises(ValueError, match=r"dilations must hold integers >= 1, got \[1, 0\]"):
        receptive_field([3, 3], dilations=[1, 0])
    with pytest.raises(ValueError, match="kernel_sizes"):
        receptive_field([3.0])
