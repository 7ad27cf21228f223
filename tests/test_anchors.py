"""Tests for course_lib.anchors against torchvision's AnchorGenerator and hand-worked cases."""

import math

import pytest
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList

from course_lib.anchors import cell_anchors, generate_anchors
from course_lib.device import available_devices

DEVICES = available_devices()
DTYPES = [torch.float32, torch.float64]


def torchvision_anchors(feature_size, image_size, sizes, ratios, dtype=torch.float32, device="cpu"):
    """torchvision's anchors for one feature map of an image batch of size image_size."""
    generator = AnchorGenerator((tuple(sizes),), (tuple(ratios),))
    images = torch.zeros(2, 3, *image_size, device=device)
    image_list = ImageList(images, [tuple(image_size)] * 2)
    feature_map = torch.zeros(2, 8, *feature_size, dtype=dtype, device=device)
    out = generator(image_list, [feature_map])
    assert len(out) == 2 and torch.equal(out[0], out[1])  # the same anchors for every image
    return out[0]


SETTINGS = [  # (feature_size, image_size, sizes, ratios)
    ((5, 5), (80, 80), (32, 64, 128), (0.5, 1.0, 2.0)),
    ((4, 7), (64, 112), (32, 64, 128), (0.5, 1.0, 2.0)),  # non-square feature map
    ((3, 2), (100, 70), (128, 256, 512), (0.5, 1.0, 2.0)),  # strides 33, 35 (rounded down)
    ((1, 1), (32, 32), (32,), (1.0,)),  # K = 1
    ((6, 9), (48, 72), (16, 24.5, 40), (0.25, 0.7, 1.0, 3.0)),  # odd sizes and ratios
    ((38, 50), (600, 800), (128, 256, 512), (0.5, 1.0, 2.0)),  # VGG16 conv5 on 600x800, s=15,16
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", range(len(SETTINGS)))
def test_matches_torchvision(device, dtype, case):
    feature_size, image_size, sizes, ratios = SETTINGS[case]
    stride = (image_size[0] // feature_size[0], image_size[1] // feature_size[1])
    expected = torchvision_anchors(feature_size, image_size, sizes, ratios, dtype, device)
    got = generate_anchors(feature_size, stride, sizes, ratios, dtype=dtype, device=device)
    height, width = feature_size
    assert got.shape == (height * width * len(sizes) * len(ratios), 4)
    assert got.dtype == dtype and got.device == expected.device
    assert torch.equal(got, expected)
    base = cell_anchors(sizes, ratios, dtype=dtype, device=device)
    assert torch.equal(base, AnchorGenerator((sizes,), (ratios,)).cell_anchors[0].to(base))


def test_hand_worked_cell_anchors():
    # ratio-major: (0.5, 32), (0.5, 64), (1, 32), (1, 64), (2, 32), (2, 64)
    base = cell_anchors((32, 64), (0.5, 1.0, 2.0))
    # ratio 0.5: w = 32 * sqrt(2) = 45.25 -> half 22.63 -> 23; h = 32 / sqrt(2) -> half 11.31 -> 11
    expected = torch.tensor(
        [
            [-23, -11, 23, 11],
            [-45, -23, 45, 23],
            [-16, -16, 16, 16],
            [-32, -32, 32, 32],
            [-11, -23, 11, 23],
            [-23, -45, 23, 45],
        ],
        dtype=torch.float32,
    )
    assert torch.equal(base, expected)
    # the aspect ratio is height / width, the area is about size**2
    wh = base[:, 2:] - base[:, :2]
    ratios = torch.tensor([0.5, 0.5, 1, 1, 2, 2])
    assert torch.allclose(wh[:, 1] / wh[:, 0], ratios, rtol=0.05)
    assert torch.allclose(wh.prod(1).sqrt(), torch.tensor([32.0, 64] * 3), rtol=0.05)


def test_position_major_order():
    sizes, ratios = (32, 64, 128), (0.5, 1.0, 2.0)
    height, width, stride = 3, 4, (16, 8)
    anchors = generate_anchors((height, width), stride, sizes, ratios)
    base = cell_anchors(sizes, ratios)
    k = len(sizes) * len(ratios)
    grid = anchors.view(height, width, k, 4)  # (H*W*K, 4) -> (H, W, K, 4)
    for y in range(height):
        for x in range(width):
            shift = torch.tensor([x * 8, y * 16, x * 8, y * 16], dtype=torch.float32)
            assert torch.equal(grid[y, x], base + shift)
            assert torch.equal(anchors[(y * width + x) * k : (y * width + x + 1) * k], base + shift)
    # the K anchors of a position share its centre
    centres = ((anchors[:, :2] + anchors[:, 2:]) / 2).view(height * width, k, 2)
    assert torch.equal(centres, centres[:, :1].expand(-1, k, -1))


@pytest.mark.parametrize("device", DEVICES)
def test_int_stride_dtype_device_and_count(device):
    anchors = generate_anchors((2, 3), 16, (8, 16), (1.0,), dtype=torch.float64, device=device)
    assert anchors.shape == (2 * 3 * 2, 4)
    assert anchors.dtype == torch.float64 and anchors.device.type == torch.device(device).type
    assert torch.equal(anchors, generate_anchors((2, 3), (16, 16), (8, 16), (1.0,)).to(anchors))
    # the last anchor: size 16 at position (y=1, x=2), centred on pixel (32, 16)
    assert anchors[-1].tolist() == [24.0, 8.0, 40.0, 24.0]


def test_float_stride():
    anchors = generate_anchors((1, 3), 12.5, (10,), (1.0,))
    assert anchors.tolist() == [[-5, -5, 5, 5], [7.5, -5, 17.5, 5], [20, -5, 30, 5]]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("feature_size", [(0, 5), (4, 0), (0, 0)])
def test_empty_feature_map(device, feature_size):
    anchors = generate_anchors(feature_size, 16, (32, 64), (0.5, 1.0), device=device)
    assert anchors.shape == (0, 4) and anchors.dtype == torch.float32
    assert anchors.device.type == torch.device(device).type


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="feature_size"):
        generate_anchors((3,), 16, (32,), (1.0,))
    with pytest.raises(ValueError, match="feature_size"):
        generate_anchors((3.5, 2), 16, (32,), (1.0,))
    with pytest.raises(ValueError, match=r"feature_size must be >= 0.*\(-1, 2\)"):
        generate_anchors((-1, 2), 16, (32,), (1.0,))
    with pytest.raises(ValueError, match="stride"):
        generate_anchors((3, 2), 0, (32,), (1.0,))
    with pytest.raises(ValueError, match="stride"):
        generate_anchors((3, 2), (16, 16, 16), (32,), (1.0,))
    with pytest.raises(ValueError, match="sizes"):
        cell_anchors((), (1.0,))
    with pytest.raises(ValueError, match="aspect_ratios"):
        cell_anchors((32,), (1.0, -2.0))
    with pytest.raises(ValueError, match="sizes"):
        cell_anchors(32, (1.0,))


def test_sizes_and_ratios_as_tensors():
    base = cell_anchors(torch.tensor([32, 64]), torch.tensor([0.5, 2.0]))
    assert torch.equal(base, cell_anchors((32, 64), (0.5, 2.0)))
    assert math.isclose(float(base[0, 2] - base[0, 0]), 46.0)
