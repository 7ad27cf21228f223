"""Tests for course_lib.boxes against torchvision.ops and hand-worked cases."""

import itertools

import pytest
import torch
import torchvision.ops as tvops

from course_lib.boxes import box_area, box_convert, box_iou, check_boxes, generalized_box_iou
from course_lib.device import available_devices

DEVICES = available_devices()
DTYPES = [torch.float32, torch.float64]
TOL = {torch.float32: 1e-6, torch.float64: 1e-12}
FORMATS = ["xyxy", "xywh", "cxcywh"]


def random_boxes(n, generator, dtype=torch.float32, device="cpu", grid=False):
    """Random xyxy boxes; about 1 in 8 has zero width or height. grid=True: integer corners."""
    xy = torch.rand(n, 2, generator=generator, dtype=torch.float64) * 100
    wh = torch.rand(n, 2, generator=generator, dtype=torch.float64) * 50
    if grid:
        xy, wh = (xy / 10).floor() * 10, (wh / 10).floor() * 10
    degenerate = torch.rand(n, 2, generator=generator) < 1 / 16
    wh[degenerate] = 0
    return torch.cat([xy, xy + wh], dim=1).to(dtype=dtype, device=device)


def assert_close(ours, theirs, dtype):
    assert ours.dtype == theirs.dtype
    assert ours.shape == theirs.shape
    torch.testing.assert_close(ours.cpu(), theirs.cpu(), rtol=0, atol=TOL[dtype], equal_nan=True)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", range(5))
def test_random_against_torchvision(device, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    n, m = [(7, 5), (1, 30), (40, 1), (30, 30), (64, 17)][seed]
    b1 = random_boxes(n, g, dtype, device, grid=seed % 2 == 0)
    b2 = random_boxes(m, g, dtype, device, grid=seed % 2 == 0)
    b2[: min(n, m) // 3] = b1[: min(n, m) // 3]  # some identical pairs
    assert_close(box_area(b1), tvops.box_area(b1), dtype)
    assert_close(box_iou(b1, b2), tvops.box_iou(b1, b2), dtype)
    assert_close(generalized_box_iou(b1, b2), tvops.generalized_box_iou(b1, b2), dtype)
    for fin, fout in itertools.product(FORMATS, FORMATS):
        boxes = tvops.box_convert(b1, "xyxy", fin)
        assert_close(box_convert(boxes, fin, fout), tvops.box_convert(boxes, fin, fout), dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_degenerate_boxes(device, dtype):
    boxes = torch.tensor(
        [
            [0, 0, 2, 2],  # reference box
            [1, 1, 3, 3],  # overlaps: IoU 1/7
            [2, 0, 4, 2],  # touches on an edge: IoU 0
            [2, 2, 4, 4],  # touches at a corner: IoU 0
            [0, 0, 2, 2],  # identical: IoU 1
            [1, 0, 1, 2],  # zero width, inside: IoU 0
            [0, 1, 2, 1],  # zero height
            [1, 1, 1, 1],  # a point
            [0.5, 0.5, 1.5, 1.5],  # contained: IoU 1/4
        ],
        dtype=dtype,
        device=device,
    )
    iou = box_iou(boxes, boxes)
    assert_close(iou, tvops.box_iou(boxes, boxes), dtype)
    assert_close(generalized_box_iou(boxes, boxes), tvops.generalized_box_iou(boxes, boxes), dtype)
    expected_row0 = torch.tensor([1, 1 / 7, 0, 0, 1, 0, 0, 0, 1 / 4], dtype=dtype)
    assert_close(iou[0].cpu(), expected_row0, dtype)
    # two zero-area boxes: 0 / 0
    assert torch.isnan(iou[5, 7]) and torch.isnan(iou[7, 7])


def test_hand_worked_giou():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [3.0, 0.0, 4.0, 1.0]])
    # overlap: iou 1/7, hull 3x3 = 9, union 7 -> 1/7 - 2/9; disjoint: 0 - (4*2 - 5) / 8
    expected = torch.tensor([[1 / 7 - 2 / 9, -3 / 8]])
    torch.testing.assert_close(generalized_box_iou(a, b), expected)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_empty_inputs(device, dtype):
    empty = torch.zeros(0, 4, dtype=dtype, device=device)
    three = random_boxes(3, torch.Generator().manual_seed(0), dtype, device)
    for fn in (box_iou, generalized_box_iou):
        for a, b, shape in ((empty, three, (0, 3)), (three, empty, (3, 0)), (empty, empty, (0, 0))):
            out = fn(a, b)
            assert out.shape == shape and out.dtype == dtype and out.device == empty.device
    area = box_area(empty)
    assert area.shape == (0,) and area.dtype == dtype and area.device == empty.device
    for fin, fout in itertools.product(FORMATS, FORMATS):
        out = box_convert(empty, fin, fout)
        assert out.shape == (0, 4) and out.dtype == dtype and out.device == empty.device


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_convert_hand_worked_and_round_trip(device, dtype):
    xyxy = torch.tensor([[10, 20, 30, 60]], dtype=dtype, device=device)
    xywh = torch.tensor([[10, 20, 20, 40]], dtype=dtype, device=device)
    cxcywh = torch.tensor([[20, 40, 20, 40]], dtype=dtype, device=device)
    named = {"xyxy": xyxy, "xywh": xywh, "cxcywh": cxcywh}
    for fin, fout in itertools.product(FORMATS, FORMATS):
        assert torch.equal(box_convert(named[fin], fin, fout), named[fout])
    same = box_convert(xyxy, "xyxy", "xyxy")
    assert same.data_ptr() != xyxy.data_ptr()  # a copy, like torchvision


def test_integer_boxes_are_converted_to_float32():
    boxes = torch.tensor([[0, 0, 10, 10], [5, 5, 15, 15], [20, 20, 30, 30]])
    as_float = boxes.float()
    for dtype in (torch.int64, torch.int32, torch.uint8):
        ints = boxes.to(dtype)
        assert box_iou(ints, ints).dtype == torch.float32
        assert torch.equal(box_iou(ints, ints), tvops.box_iou(as_float, as_float))
        assert torch.equal(box_area(ints), tvops.box_area(as_float))
        as_cxcywh = box_convert(as_float, "xyxy", "cxcywh")
        assert torch.equal(box_convert(ints, "xyxy", "cxcywh"), as_cxcywh)
    # torchvision subtracts uint8 corners before upcasting, so it wraps around; we do not
    u8 = boxes.to(torch.uint8)
    assert box_iou(u8, u8)[0, 2] == 0
    assert box_area(torch.tensor([[0, 0, 2, 2]], dtype=torch.float16)).dtype == torch.float32


@pytest.mark.parametrize(
    "fn", [box_iou, generalized_box_iou], ids=["box_iou", "generalized_box_iou"]
)
def test_wrong_shapes_name_the_argument(fn):
    good = torch.zeros(2, 4)
    with pytest.raises(ValueError, match=r"boxes1.*\(3, 5\)"):
        fn(torch.zeros(3, 5), good)
    with pytest.raises(ValueError, match=r"boxes2.*\(4,\)"):
        fn(good, torch.zeros(4))
    with pytest.raises(ValueError, match=r"boxes1.*\(2, 2, 4\)"):
        fn(torch.zeros(2, 2, 4), good)


def test_other_bad_inputs():
    with pytest.raises(ValueError, match=r"boxes.*\(4,\)"):
        box_area(torch.zeros(4))
    with pytest.raises(ValueError, match=r"boxes.*\(3, 2\)"):
        box_convert(torch.zeros(3, 2), "xyxy", "xywh")
    with pytest.raises(ValueError, match="in_fmt"):
        box_convert(torch.zeros(3, 4), "xyhw", "xyxy")
    with pytest.raises(ValueError, match="out_fmt"):
        box_convert(torch.zeros(3, 4), "xyxy", "yolo")
    with pytest.raises(TypeError, match="boxes"):
        check_boxes([[0, 0, 1, 1]])
    with pytest.raises(TypeError, match="bool"):
        box_iou(torch.zeros(1, 4, dtype=torch.bool), torch.zeros(1, 4))


def test_gradcheck_float64():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(4, 2, generator=g, dtype=torch.float64) * 10
    b1 = torch.cat([xy, xy + 5 + torch.rand(4, 2, generator=g, dtype=torch.float64)], 1)
    b2 = b1[[1, 2, 3, 0]] + 0.37
    b1.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a: box_iou(a, b2), (b1,))
    assert torch.autograd.gradcheck(lambda a: generalized_box_iou(a, b2), (b1,))


def test_as_boxes_accepts_target_dict_values():
    from course_lib.boxes import as_boxes

    assert as_boxes(torch.zeros(0)).shape == (0, 4)
    assert as_boxes([]).shape == (0, 4)
    listed = as_boxes([[0, 0, 1.5, 2]])
    assert listed.dtype == torch.float64 and listed.tolist() == [[0, 0, 1.5, 2]]
    with pytest.raises(ValueError, match=r"gt\['boxes'\] must have shape \(N, 4\)"):
        as_boxes(torch.zeros(2, 3), "gt['boxes']")
