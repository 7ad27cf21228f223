"""Tests for course_lib.proposals: selective search and proposal recall."""

import math

import numpy as np
import pytest
import torch

from course_lib.boxes import box_iou
from course_lib.data.synthetic import make_scene
from course_lib.proposals import (
    hierarchical_grouping,
    proposal_recall,
    region_features,
    selective_search,
)


@pytest.fixture(scope="module")
def scene():
    return make_scene(3, image_size=128, kind="detection")


@pytest.fixture(scope="module")
def scene_proposals(scene):
    return selective_search(scene[0])


def flat_square_image():
    """A red 40x30 rectangle (rows 40..69, columns 30..69) on a flat grey background."""
    image = torch.full((3, 96, 112), 0.5)
    image[:, 40:70, 30:70] = torch.tensor([0.9, 0.1, 0.1])[:, None, None]
    return image, torch.tensor([[30.0, 40.0, 70.0, 70.0]])


def test_output_shape_dtype_and_range(scene, scene_proposals):
    image, _ = scene
    boxes = scene_proposals
    assert boxes.dtype == torch.float32
    assert boxes.dim() == 2 and boxes.shape[1] == 4 and 0 < len(boxes) <= 2000
    h, w = image.shape[1:]
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
    assert (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    assert len(torch.unique(boxes, dim=0)) == len(boxes)  # no duplicates
    assert torch.equal(boxes[:, :2].round(), boxes[:, :2])  # pixel corners


def test_whole_image_box_is_proposed(scene, scene_proposals):
    h, w = scene[0].shape[1:]
    whole = torch.tensor([0.0, 0.0, w, h])
    assert (scene_proposals == whole).all(dim=1).any()


def test_deterministic(scene, scene_proposals):
    assert torch.equal(selective_search(scene[0]), scene_proposals)


def test_max_proposals(scene, scene_proposals):
    top = selective_search(scene[0], max_proposals=10)
    assert torch.equal(top, scene_proposals[:10])
    assert selective_search(scene[0], max_proposals=0).shape == (0, 4)


def test_finds_flat_square():
    image, gt = flat_square_image()
    boxes = selective_search(image, scale=100)
    assert box_iou(gt, boxes).max() > 0.9
    assert proposal_recall(boxes, gt, iou_threshold=0.9) == 1.0


def test_finds_synthetic_objects(scene, scene_proposals):
    assert proposal_recall(scene_proposals, scene[1]["boxes"]) == 1.0


def test_tensor_and_uint8_numpy_agree():
    image, gt = flat_square_image()
    as_uint8 = (image * 255).round().to(torch.uint8)  # (3, H, W)
    from_numpy = selective_search(as_uint8.permute(1, 2, 0).numpy(), scale=100)  # (H, W, 3)
    assert torch.equal(selective_search(as_uint8, scale=100), from_numpy)
    assert torch.equal(selective_search(as_uint8.double() / 255, scale=100), from_numpy)
    # float32 rounds x / 255 differently, which may reorder near-ties: compare the quality only.
    from_float32 = selective_search(as_uint8.float() / 255, scale=100)
    assert box_iou(gt, from_float32).max() > 0.9


@pytest.mark.parametrize("shape", [(96, 112, 3), (1, 96, 112), (3, 96), (4, 3, 96, 112)])
def test_bad_tensor_shape(shape):
    with pytest.raises(ValueError, match="image"):
        selective_search(torch.rand(shape))


@pytest.mark.parametrize("shape", [(3, 96, 112), (96, 112), (96, 112, 4)])
def test_bad_array_shape(shape):
    with pytest.raises(ValueError, match="image"):
        selective_search(np.zeros(shape, dtype=np.uint8))


def test_bad_arguments():
    image, _ = flat_square_image()
    with pytest.raises(TypeError, match="image"):
        selective_search(image.tolist())
    with pytest.raises(ValueError, match="scale"):
        selective_search(image, scale=0)
    with pytest.raises(ValueError, match="colour_spaces"):
        selective_search(image, colour_spaces=("lab",))


def test_hierarchical_grouping_on_hand_regions():
    # Four regions in a 2x2 layout of 4x4 blocks: 3 merges, 7 boxes; the last is the image.
    labels = np.repeat(np.repeat(np.array([[0, 1], [2, 3]]), 4, axis=0), 4, axis=1)  # (8, 8)
    image = np.zeros((8, 8, 3))
    image[:, 4:] = 1.0  # regions 1 and 3 are white, so they merge first
    boxes = hierarchical_grouping(image, labels)
    assert boxes.shape == (7, 4)
    np.testing.assert_array_equal(boxes[:4], [[0, 0, 4, 4], [4, 0, 8, 4], [0, 4, 4, 8],
                                              [4, 4, 8, 8]])
    merged = {tuple(b) for b in boxes[4:6]}
    assert (4, 0, 8, 8) in merged and (0, 0, 4, 8) in merged  # the two columns
    np.testing.assert_array_equal(boxes[6], [0, 0, 8, 8])


def test_region_features_against_loops():
    rng = np.random.default_rng(0)
    image = rng.random((12, 10, 3))
    labels = np.zeros((12, 10), dtype=np.int64)
    labels[:, 4:] = 1
    labels[7:, 6:] = 2
    colour, texture, size, boxes = region_features(image, labels)
    assert colour.shape == (3, 75) and texture.shape == (3, 240)
    np.testing.assert_allclose(colour.sum(1), 1.0)
    np.testing.assert_allclose(texture.sum(1), 1.0)
    for r in range(3):
        ys, xs = np.nonzero(labels == r)
        assert size[r] == len(ys)
        np.testing.assert_array_equal(boxes[r], [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        for c in range(3):  # colour histogram: count pixels bin by bin
            values = image[..., c][labels == r]
            bins = np.minimum((values * 25).astype(int), 24)
            expected = np.array([(bins == b).sum() for b in range(25)]) / (3 * len(values))
            np.testing.assert_allclose(colour[r, 25 * c:25 * (c + 1)], expected)


def test_proposal_recall_hand_cases():
    gt = torch.tensor([[0.0, 0.0, 2.0, 2.0], [10.0, 10.0, 20.0, 20.0]])
    half = torch.tensor([[0.0, 0.0, 2.0, 1.0]])  # IoU 0.5 with gt[0], 0 with gt[1]
    assert proposal_recall(half, gt) == 0.5  # exactly the threshold counts
    assert proposal_recall(half, gt, iou_threshold=0.51) == 0.0
    assert proposal_recall(torch.cat([half, gt[1:]]), gt) == 1.0
    assert proposal_recall(torch.zeros(0, 4), gt) == 0.0
    assert math.isnan(proposal_recall(half, torch.zeros(0, 4)))  # no GT: undefined
    with pytest.raises(ValueError, match="gt_boxes"):
        proposal_recall(half, torch.zeros(2, 3))
