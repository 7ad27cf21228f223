import pytest
import torch

from course_lib.data.targets import instances_to_target, masks_to_boxes
from course_lib.data.transforms import RandomFlip, Resize


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


@pytest.mark.parametrize("horizontal, vertical", [(1.0, 0.0), (0.0, 1.0), (1.0, 1.0), (0.0, 0.0)])
def test_random_flip_moves_boxes_with_the_pixels(horizontal, vertical):
    instance_map = torch.zeros(40, 30, dtype=torch.int64)
    instance_map[5:12, 3:20] = 1
    instance_map[20:38, 22:29] = 2
    image = torch.rand(3, 40, 30)
    target = instances_to_target(instance_map, [1, 3])
    out_image, out = RandomFlip(horizontal, vertical)(image, target)
    expected = image
    if horizontal:
        expected = expected.flip(-1)
    if vertical:
        expected = expected.flip(-2)
    assert torch.equal(out_image, expected)
    # the oracle: the boxes of the flipped masks
    assert torch.equal(out["boxes"], masks_to_boxes(out["masks"]))
    assert torch.equal(out["semantic"] > 0, out["masks"].sum(0) > 0)
    assert torch.equal(target["boxes"], masks_to_boxes(target["masks"]))  # input unchanged


def test_random_flip_uses_the_torch_generator_and_checks_input():
    image, target = torch.rand(3, 8, 8), {"boxes": torch.tensor([[0.0, 0.0, 2.0, 4.0]])}
    torch.manual_seed(0)
    first = [RandomFlip()(image, target)[1]["boxes"] for _ in range(20)]
    torch.manual_seed(0)
    again = [RandomFlip()(image, target)[1]["boxes"] for _ in range(20)]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert len({tuple(b[0].tolist()) for b in first}) == 4  # all four flips happen
    with pytest.raises(ValueError, match="probability"):
        RandomFlip(horizontal=1.5)
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        RandomFlip()(torch.rand(8, 8), target)
