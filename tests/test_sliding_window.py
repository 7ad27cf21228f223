"""Counting windows against brute-force loops, and the sliding-window detector on scenes whose
answer is known (a fake classifier that scores a crop by its brightness)."""

import itertools
import math

import pytest
import torch
from torch import nn

from course_lib.device import available_devices
from course_lib.sliding_window import (
    count_windows,
    count_windows_brute_force,
    count_windows_strided,
    sliding_window_detect,
    window_grid,
    window_shape,
)


def strided_brute_force(H, W, sizes, ratios, stride):
    """Every top-left corner on the stride grid, checked one by one."""
    total = 0
    for s, r in itertools.product(sizes, ratios):
        w, h = round(s * math.sqrt(r)), round(s / math.sqrt(r))
        total += sum(1 for y in range(0, H, stride) for x in range(0, W, stride)
                     if x + w <= W and y + h <= H)
    return total


@pytest.mark.parametrize("H, W", [(1, 1), (1, 5), (5, 1), (2, 3), (3, 2), (4, 7), (6, 6)])
def test_count_windows_matches_enumeration(H, W):
    assert count_windows(H, W) == count_windows_brute_force(H, W)
    # the lecture's double sum over box sizes
    assert count_windows(H, W) == sum((W - w + 1) * (H - h + 1)
                                      for h in range(1, H + 1) for w in range(1, W + 1))


def test_count_windows_for_the_lectures_800_by_600_image():
    n = count_windows(600, 800)
    assert n == 57_768_120_000 == 180_300 * 320_400
    assert isinstance(n, int)
    assert n / 58e6 > 990  # the slide's "~58M" is a thousandfold too small
    assert count_windows(800, 600) == n  # symmetric in H and W


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_count_windows_rejects_bad_sizes(bad):
    with pytest.raises(ValueError, match="H must be an integer >= 1"):
        count_windows(bad, 10)


@pytest.mark.parametrize("H, W, sizes, ratios, stride", [
    (128, 128, [64], [1.0], 16),
    (100, 100, [32], [1.0], 20),
    (60, 80, [8, 16, 30], [0.5, 1.0, 2.0], 3),
    (37, 23, [5, 9, 40], [0.25, 1.0, 4.0], 7),
    (10, 10, [20], [1.0], 1),     # window larger than the image
    (30, 40, [20], [1.0], 1000),  # stride larger than the image
    (1, 1, [1], [1.0], 1),
    (17, 50, [12], [3.0], 2),
])
def test_count_windows_strided_matches_enumeration(H, W, sizes, ratios, stride):
    expected = strided_brute_force(H, W, sizes, ratios, stride)
    assert count_windows_strided(H, W, sizes, ratios, stride) == expected
    got = count_windows_strided(H, W, torch.tensor(sizes), torch.tensor(ratios), stride)
    assert got == expected
    grid_total = sum(len(window_grid(H, W, s, r, stride)) for s in sizes for r in ratios)
    assert grid_total == expected


def test_count_windows_strided_stride_one_is_the_lecture_formula():
    assert count_windows_strided(600, 800, [100], [1.0], 1) == (800 - 100 + 1) * (600 - 100 + 1)
    assert count_windows_strided(1, 1, [], [1.0], 1) == 0


def test_window_shape_convention_and_errors():
    assert window_shape(32, 4.0) == (16, 64)   # (h, w): wide
    assert window_shape(32, 0.25) == (64, 16)  # tall
    assert window_shape(32, 2.0) == (23, 45)   # 32 / 1.414 = 22.6, 32 * 1.414 = 45.3
    with pytest.raises(ValueError, match="at least 1 pixel"):
        window_shape(1, 9.0)
    with pytest.raises(ValueError, match="must be > 0"):
        count_windows_strided(10, 10, [0], [1.0], 1)
    with pytest.raises(ValueError, match="stride must be an integer >= 1"):
        count_windows_strided(10, 10, [4], [1.0], 0)


def test_window_grid_boxes_are_inside_and_row_major():
    boxes = window_grid(50, 70, 20, 2.0, 10)  # w 28, h 14
    assert boxes.shape == (((70 - 28) // 10 + 1) * ((50 - 14) // 10 + 1), 4)
    assert (boxes[:, 2] - boxes[:, 0] == 28).all() and (boxes[:, 3] - boxes[:, 1] == 14).all()
    assert boxes[:, 2].max() <= 70 and boxes[:, 3].max() <= 50
    assert boxes[1].tolist() == [10, 0, 38, 14]  # x moves first
    assert window_grid(10, 10, 20).shape == (0, 4)


# ------------------------------------------------------------------ the detector


class FramedSquareClassifier(nn.Module):
    """A fake two-class classifier: "object" (class 1) when the crop shows a bright square in
    its middle half and darkness around it, as the single-object training images frame their
    object; its box head always answers the middle half, ``(cx, cy, w, h) = (.5, .5, .5, .5)``.
    """

    def __init__(self, image_size: int = 16):
        super().__init__()
        self.image_size = image_size
        self.dummy = nn.Parameter(torch.zeros(()))
        self.crops_seen = 0

    def forward(self, images):
        self.crops_seen += len(images)
        grey = images.mean(dim=1)                                     # (B, S, S)
        q = self.image_size // 4
        centre = grey[:, q:-q, q:-q].mean(dim=(1, 2))                 # (B,)
        ring = torch.ones_like(grey[0], dtype=torch.bool)
        ring[q // 2:-(q // 2), q // 2:-(q // 2)] = False
        border = grey[:, ring].mean(dim=1)                            # (B,)
        objectness = 20 * (centre - border - 0.7)
        logits = torch.stack([torch.zeros_like(objectness), objectness], 1)
        boxes = images.new_tensor([0.5, 0.5, 0.5, 0.5]).expand(len(images), 4)
        return logits + self.dummy, boxes


def two_squares(device="cpu"):
    image = torch.zeros(3, 96, 128, device=device)
    image[:, 24:40, 40:56] = 1.0   # a 16 x 16 square: framed by the 32-window at (32, 16)
    image[:, 68:76, 92:100] = 1.0  # an 8 x 8 square: framed by the 16-window at (88, 64)
    return image


SQUARES = [[40, 24, 56, 40], [92, 68, 100, 76]]
FRAMES = [[32, 16, 64, 48], [88, 64, 104, 80]]


@pytest.mark.parametrize("device", available_devices())
def test_detector_finds_the_framed_squares(device):
    model = FramedSquareClassifier().to(device)
    boxes, scores, labels, score_map = sliding_window_detect(
        model, two_squares(device), window_sizes=(16, 32), stride=8, score_threshold=0.9,
        iou_threshold=0.3, use_box_head=False)
    assert boxes.device.type == torch.device(device).type
    assert boxes.shape == (2, 4) and scores.shape == (2,) and labels.tolist() == [1, 1]
    assert sorted(boxes.cpu().tolist()) == FRAMES
    assert (scores > 0.9).all() and (scores[:-1] >= scores[1:]).all()
    assert score_map.shape == (96, 128)
    assert score_map[32, 48] > 0.9 and score_map[72, 96] > 0.9  # the frames' centres
    assert score_map[8, 120] < 0.01                              # an empty corner
    assert model.crops_seen == count_windows_strided(96, 128, [16, 32], [1.0], 8)


def test_detector_box_head_maps_back_to_the_image():
    boxes, *_ = sliding_window_detect(FramedSquareClassifier(), two_squares(),
                                      window_sizes=(16, 32), stride=8, score_threshold=0.9,
                                      use_box_head=True)
    assert sorted(boxes.tolist()) == SQUARES


def test_detector_without_background_class_scores_everything():
    # the score is then the top softmax probability, never below 1 / C
    boxes, scores, labels, score_map = sliding_window_detect(
        FramedSquareClassifier(), two_squares(), window_sizes=(32,), stride=16,
        score_threshold=0.0, background=False)
    assert (scores >= 0.5).all() and (score_map[score_map > 0] >= 0.5).all()
    assert 0 in labels.tolist()  # empty windows are confidently "class 0"


def test_detector_class_aware_nms_and_aspect_ratios():
    kwargs = {"window_sizes": (16, 32), "aspect_ratios": (0.5, 1.0, 2.0), "stride": 8,
              "score_threshold": 0.5}
    agnostic = sliding_window_detect(FramedSquareClassifier(), two_squares(), **kwargs)
    aware = sliding_window_detect(FramedSquareClassifier(), two_squares(), class_agnostic=False,
                                  **kwargs)
    assert torch.equal(agnostic[0], aware[0])  # one object class: the same result
    assert len(agnostic[0]) >= 2


def test_detector_edge_cases():
    model = FramedSquareClassifier()
    boxes, scores, labels, score_map = sliding_window_detect(
        model, torch.zeros(3, 20, 20), window_sizes=(32,))  # no window fits
    assert boxes.shape == (0, 4) and scores.shape == (0,) and labels.dtype == torch.int64
    assert score_map.shape == (20, 20) and score_map.sum() == 0
    boxes, *_ = sliding_window_detect(model, torch.zeros(3, 40, 40), window_sizes=(16,))
    assert boxes.shape == (0, 4)  # nothing scores above the threshold
    with pytest.raises(ValueError, match=r"image must have shape \(3, H, W\)"):
        sliding_window_detect(model, torch.zeros(1, 3, 40, 40))


@pytest.mark.slow
def test_detector_with_a_quickly_trained_background_model(tmp_path, monkeypatch):
    """A tiny ClsLocNet with a background class, trained for a few seconds, finds a large
    object in a detection scene: its best detection overlaps the object."""
    from course_lib.boxes import box_iou
    from course_lib.data.synthetic import make_scene
    from course_lib.recipes.cls_loc import train_cls_loc

    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path))
    model, _ = train_cls_loc(num_train=960, epochs=3, width=8, background=320, progress=False,
                             device="cpu")
    assert model.background and model.class_head.out_features == 6
    image, target = make_scene(11, 64, kind="single")
    canvas = torch.rand(3, 128, 128) * 0.1
    canvas[:, 32:96, 32:96] = image  # one object in a larger, dark frame
    gt = target["boxes"] + 32
    boxes, scores, labels, score_map = sliding_window_detect(
        model, canvas, window_sizes=(48, 64, 80), stride=8, score_threshold=0.3)
    assert len(boxes) >= 1
    assert box_iou(boxes[:1], gt).max() > 0.3
