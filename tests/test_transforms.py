import pytest
import torch

from course_lib.data.targets import instances_to_target
from course_lib.data.transforms import Resize


def test_resize_keeps_boxes_masks_and_semantic_together():
    instance_map = torch.zeros(40, 20, dtype=torch.int64)
    instance_map[10:30, 4:12] = 1                          # an object of 8 x 20 px
    image = torch.rand(3, 40, 20)
    target = instances_to_target(instance_map, [2])
    out_image, out = Resize(80)(image, target)
    assert out_image.shape == (3, 80, 80) and 0 <= out_image.min() and out_image.max() <= 1
    assert out["boxes"].tolist() == [[16.0, 20.0, 48.0, 60.0]]   # x scaled by 4, y by 2
    assert out["masks"].shape == (1, 80, 80) and out["masks"].dtype == torch.uint8
    assert out["area"].tolist() == [32 * 40]
    assert out["semantic"].dtype == torch.int64 and set(out["semantic"].unique().tolist()) == {0, 2}
    assert target["boxes"].tolist() == [[4.0, 10.0, 12.0, 30.0]]  # the input is not modified


def test_resize_bad_input():
    with pytest.raises(ValueError, match="positive"):
        Resize(0)
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        Resize(8)(torch.rand(8, 8), {})
