import pytest
import torch

from course_lib.device import available_devices
from course_lib.losses import cls_loc_loss
from course_lib.models.cls_loc import ClsLocNet, boxes_to_normalized, normalized_to_boxes


def test_normalised_boxes_round_trip():
    boxes = torch.tensor([[4.0, 8.0, 20.0, 40.0], [0.0, 0.0, 64.0, 64.0]])
    norm = boxes_to_normalized(boxes, 64)
    assert torch.allclose(norm[1], torch.tensor([0.5, 0.5, 1.0, 1.0]))
    assert torch.allclose(normalized_to_boxes(norm, 64), boxes)


@pytest.mark.parametrize("device", available_devices())
def test_shapes_and_predict(device):
    model = ClsLocNet(num_classes=5, image_size=32, width=4).to(device).eval()
    logits, boxes = model(torch.rand(3, 3, 32, 32, device=device))
    assert logits.shape == (3, 5) and boxes.shape == (3, 4)
    assert ((boxes > 0) & (boxes < 1)).all()
    pred = model.predict(torch.rand(2, 3, 32, 32, device=device))
    assert pred["labels"].shape == (2,) and pred["boxes"].shape == (2, 4)
    assert (pred["boxes"][:, 2:] >= pred["boxes"][:, :2]).all()


def test_bad_image_size():
    with pytest.raises(ValueError, match="multiple of 16"):
        ClsLocNet(3, image_size=30)
    with pytest.raises(ValueError, match=r"images must have shape \(B, 3, 32, 32\)"):
        ClsLocNet(3, image_size=32)(torch.rand(1, 3, 64, 64))


def test_overfits_a_tiny_batch():
    torch.manual_seed(0)
    model = ClsLocNet(num_classes=3, image_size=32, width=8)
    images = torch.rand(8, 3, 32, 32)
    labels = torch.arange(8) % 3
    boxes = torch.rand(8, 4) * 0.5 + 0.25
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        logits, pred = model(images)
        loss = cls_loc_loss(logits, pred, labels, boxes, box_weight=5.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]
