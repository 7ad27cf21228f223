"""Instance maps to targets: the shared code of the synthetic and the Penn-Fudan data."""

import numpy as np
import pytest
import torch
import torchvision

from course_lib.data.targets import instance_masks, instances_to_target, masks_to_boxes


def test_masks_to_boxes_matches_torchvision_plus_one():
    g = torch.Generator().manual_seed(0)
    masks = (torch.rand(6, 17, 23, generator=g) > 0.8).to(torch.uint8)
    masks[0] = 0
    masks[0, 16, 22] = 1                                   # a single corner pixel
    expected = torchvision.ops.masks_to_boxes(masks) + torch.tensor([0, 0, 1, 1])
    assert torch.equal(masks_to_boxes(masks), expected)
    assert masks_to_boxes(masks)[0].tolist() == [22, 16, 23, 17]


def test_masks_to_boxes_empty_and_bad_input():
    out = masks_to_boxes(torch.zeros(0, 5, 7, dtype=torch.uint8))
    assert out.shape == (0, 4) and out.dtype == torch.float32
    with pytest.raises(ValueError, match=r"Tensor\[N, H, W\].*\(5, 7\)"):
        masks_to_boxes(torch.zeros(5, 7))
    with pytest.raises(ValueError, match="mask 1 is empty"):
        masks_to_boxes(torch.stack([torch.ones(3, 3), torch.zeros(3, 3)]))


def test_instance_masks_with_ids_that_are_not_consecutive():
    label_image = torch.tensor([[0, 7, 7],
                                [2, 0, 7]])
    masks = instance_masks(label_image)
    assert masks.dtype == torch.uint8
    assert masks.tolist() == [[[0, 0, 0], [1, 0, 0]],     # id 2 first (increasing ids)
                              [[0, 1, 1], [0, 0, 1]]]     # then id 7
    assert instance_masks(torch.zeros(2, 3, dtype=torch.int64)).shape == (0, 2, 3)
    with pytest.raises(ValueError, match=r"Tensor\[H, W\]"):
        instance_masks(torch.zeros(1, 2, 3))


def test_instances_to_target():
    instances = np.array([[0, 1, 1], [2, 2, 1], [0, 0, 0]], dtype=np.uint8)
    target = instances_to_target(instances, [3, 5], image_id=9)
    assert target["boxes"].tolist() == [[1.0, 0.0, 3.0, 2.0], [0.0, 1.0, 2.0, 2.0]]
    assert target["area"].tolist() == [3.0, 2.0]
    assert target["semantic"].tolist() == [[0, 3, 3], [5, 5, 3], [0, 0, 0]]
    assert target["image_id"] == 9
    empty = instances_to_target(np.zeros((4, 5), np.uint8), [])
    assert empty["boxes"].shape == (0, 4) and empty["masks"].shape == (0, 4, 5)
    with pytest.raises(ValueError, match="labels has 3 entries but the instance map has 2"):
        instances_to_target(instances, [1, 2, 3])


def test_instances_to_target_with_ids_that_are_not_consecutive():
    target = instances_to_target(torch.tensor([[0, 9], [4, 9]]), [1, 1])
    assert target["masks"].tolist() == [[[0, 0], [1, 0]], [[0, 1], [0, 1]]]
    assert target["semantic"].tolist() == [[0, 1], [1, 1]]
