"""YOLOv1 building blocks (course_lib.models.yolo): hand-worked cases and loop oracles."""

import math

import pytest
import torch

from course_lib.boxes import box_iou
from course_lib.device import available_devices
from course_lib.models.yolo import (
    SQRT_EPS,
    one_box_per_cell,
    postprocess_yolo,
    responsible_cells,
    yolo_channels,
    yolo_decode,
    yolo_encode,
    yolo_loss,
)
from course_lib.nms import nms


def boxes_in_distinct_cells(generator, S, image_size, count, dtype=torch.float32):
    """Random boxes whose centres lie in ``count`` different cells, plus their (row, col)."""
    height, width = image_size
    cells = torch.randperm(S * S, generator=generator)[:count]
    rows, cols = cells // S, cells % S
    offset = torch.rand(count, 2, generator=generator, dtype=torch.float64)  # in [0, 1)
    cx = (cols + offset[:, 0]) * width / S
    cy = (rows + offset[:, 1]) * height / S
    w = torch.rand(count, generator=generator, dtype=torch.float64) * width * 0.6 + 1
    h = torch.rand(count, generator=generator, dtype=torch.float64) * height * 0.6 + 1
    boxes = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=1).to(dtype)
    return boxes, rows, cols


def random_output(generator, N, S, B, C, dtype=torch.float64):
    """A plausible raw output: offsets and sizes around [0, 1], a few negative sizes."""
    D = yolo_channels(B, C)
    out = torch.rand(N, S, S, D, generator=generator, dtype=dtype)
    sizes = [5 * b + k for b in range(B) for k in (2, 3)]
    out[..., sizes] = out[..., sizes] * 0.6 - 0.1  # some w, h < 0
    return out


# --------------------------------------------------------------------------- layout and cells


def test_yolo_channels_paper_and_course():
    assert yolo_channels(2, 20) == 30  # the paper's 7 x 7 x 30
    assert yolo_channels(2, 3) == 13  # the course's 8 x 8 x 13


def test_responsible_cells_borders_and_edges():
    # S = 4 on a 64 x 64 image: 16 px cells
    centres = [(8, 8), (16, 8), (15.99, 47.99), (0, 0), (64, 64), (64, 0), (48, 16), (70, -3)]
    boxes = torch.tensor([[cx - 2, cy - 2, cx + 2, cy + 2] for cx, cy in centres])
    cells = responsible_cells(boxes, 4, 64)
    expected = [(0, 0), (0, 1), (2, 0), (0, 0), (3, 3), (0, 3), (1, 3), (0, 3)]
    assert cells.dtype == torch.int64
    assert [tuple(c) for c in cells.tolist()] == expected
    # non-square (height 32, width 64): cells are 16 wide, 8 high
    box = torch.tensor([[38.0, 18.0, 42.0, 22.0]])  # centre (40, 20)
    assert responsible_cells(box, 4, (32, 64)).tolist() == [[2, 2]]
    assert responsible_cells(torch.zeros(0, 4), 4, 64).shape == (0, 2)


def test_one_box_per_cell_keeps_the_largest_then_the_first():
    boxes = torch.tensor([
        [0.0, 0.0, 10.0, 10.0],  # cell (0, 0), area 100
        [2.0, 2.0, 14.0, 14.0],  # cell (0, 0), area 144: wins
        [40.0, 40.0, 50.0, 50.0],  # cell (1, 1), area 100: first of a tie, wins
        [41.0, 39.0, 51.0, 49.0],  # cell (1, 1), area 100: dropped
        [34.0, 2.0, 36.0, 4.0],  # cell (0, 1), alone
    ])
    keep = one_box_per_cell(boxes, 2, 64)
    assert keep.tolist() == [False, True, True, False, True]
    assert int((~keep).sum()) == 2
    assert one_box_per_cell(torch.zeros(0, 4), 2, 64).shape == (0,)


# --------------------------------------------------------------------------- encode


def test_yolo_encode_hand_worked():
    # S=2, B=2, C=2 on 64 x 64: 32 px cells
    target = {"boxes": torch.tensor([[8.0, 4.0, 24.0, 36.0],  # centre (16, 20): cell (0, 0)
                                     [24.0, 16.0, 40.0, 48.0]]),  # centre (32, 32): cell (1, 1)
              "labels": torch.tensor([2, 1])}
    enc = yolo_encode(target, 2, 2, 2, 64)
    assert enc.shape == (2, 2, 12) and enc.dtype == torch.float32
    # x = 16 / 32, y = 20 / 32, w = 16 / 64, h = 32 / 64
    cell = [0.5, 0.625, 0.25, 0.5, 1.0]
    assert enc[0, 0].tolist() == cell + cell + [0.0, 1.0]
    # on the border of all four cells: belongs to (1, 1), offsets 0
    cell = [0.0, 0.0, 0.25, 0.5, 1.0]
    assert enc[1, 1].tolist() == cell + cell + [1.0, 0.0]
    assert enc[0, 1].abs().sum() == 0 and enc[1, 0].abs().sum() == 0


def encode_oracle(targets, S, B, C, image_size):
    """Loop version: boxes by decreasing area (stable), a cell takes the first box it gets."""
    height, width = image_size
    out = torch.zeros(len(targets), S, S, B * 5 + C, dtype=torch.float64)
    for n, target in enumerate(targets):
        boxes = target["boxes"].tolist()
        order = sorted(range(len(boxes)),
                       key=lambda g: -(boxes[g][2] - boxes[g][0]) * (boxes[g][3] - boxes[g][1]))
        taken = set()
        for g in order:
            x1, y1, x2, y2 = boxes[g]
            cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
            col = min(max(math.floor(cx / (width / S)), 0), S - 1)
            row = min(max(math.floor(cy / (height / S)), 0), S - 1)
            if (row, col) in taken:
                continue
            taken.add((row, col))
            slot = [cx / (width / S) - col, cy / (height / S) - row,
                    (x2 - x1) / width, (y2 - y1) / height, 1.0]
            for b in range(B):
                out[n, row, col, 5 * b : 5 * b + 5] = torch.tensor(slot)
            out[n, row, col, 5 * B + int(target["labels"][g]) - 1] = 1.0
    return out


@pytest.mark.parametrize("image_size", [(128, 128), (96, 160)])
def test_yolo_encode_equals_loop_oracle(image_size):
    g = torch.Generator().manual_seed(0)
    targets = []
    for count in (12, 0, 30):  # 30 boxes on a 4 x 4 grid: many collisions
        xy = torch.rand(count, 2, generator=g) * torch.tensor(image_size[::-1]) * 0.8
        wh = torch.rand(count, 2, generator=g) * 40 + 1
        targets.append({"boxes": torch.cat([xy, xy + wh], dim=1),
                        "labels": torch.randint(1, 4, (count,), generator=g)})
    enc = yolo_encode(targets, 4, 3, 3, image_size, dtype=torch.float64)
    assert enc.shape == (3, 4, 4, 18)
    torch.testing.assert_close(enc, encode_oracle(targets, 4, 3, 3, image_size))
    assert (enc[1] == 0).all()


def test_yolo_encode_empty_inputs_and_dtype():
    assert yolo_encode([], 8, 2, 3, 128).shape == (0, 8, 8, 13)
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    enc = yolo_encode(empty, 8, 2, 3, 128, dtype=torch.float64)
    assert enc.shape == (8, 8, 13) and enc.dtype == torch.float64 and (enc == 0).all()
    lists = {"boxes": [[0, 0, 10, 10]], "labels": [3]}  # plain lists are accepted
    assert yolo_encode(lists, 8, 2, 3, 128)[0, 0, 12] == 1.0


def test_yolo_encode_validates_its_inputs():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    with pytest.raises(ValueError, match=r"labels'\] must be in 1..C = 1..3"):
        yolo_encode({"boxes": boxes, "labels": torch.tensor([0])}, 8, 2, 3, 128)
    with pytest.raises(ValueError, match=r"labels'\] must be in 1..C"):
        yolo_encode({"boxes": boxes, "labels": torch.tensor([4])}, 8, 2, 3, 128)
    with pytest.raises(ValueError, match=r"targets\[0\]\['labels'\] must have shape \(1,\)"):
        yolo_encode({"boxes": boxes, "labels": torch.tensor([1, 2])}, 8, 2, 3, 128)
    with pytest.raises(ValueError, match=r"boxes'\] must have shape \(N, 4\), got shape \(1, 3\)"):
        yolo_encode({"boxes": boxes[:, :3], "labels": torch.tensor([1])}, 8, 2, 3, 128)
    with pytest.raises(ValueError, match="x2 >= x1"):
        yolo_encode({"boxes": boxes[:, [2, 1, 0, 3]], "labels": torch.tensor([1])}, 8, 2, 3, 128)
    with pytest.raises(ValueError, match="S must be a positive int"):
        yolo_encode([], 0, 2, 3, 128)
    with pytest.raises(ValueError, match="image_size"):
        yolo_encode([], 8, 2, 3, (128, 128, 3))


# --------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("device", available_devices())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("image_size", [(128, 128), (96, 160)])
def test_encode_decode_round_trip_is_exact(device, dtype, image_size):
    S, B, C = 8, 2, 3
    g = torch.Generator().manual_seed(1)
    targets, truth = [], []
    for count in (20, 1, 0, 64):  # 64: every cell of the grid holds a box
        boxes, rows, cols = boxes_in_distinct_cells(g, S, image_size, count, dtype)
        labels = torch.randint(1, C + 1, (count,), generator=g)
        targets.append({"boxes": boxes.to(device), "labels": labels.to(device)})
        order = torch.argsort(rows * S + cols)  # decode lists boxes in cell order
        truth.append((boxes[order], labels[order]))
    # centres exactly on cell borders and on the image's right/bottom edge
    height, width = image_size
    edge = torch.tensor([[width / S - 4, height / S - 4, width / S + 4, height / S + 4],
                         [width - 6, height - 2, width + 6, height + 2]], dtype=dtype)
    targets.append({"boxes": edge.to(device), "labels": torch.tensor([1, 3], device=device)})
    truth.append((edge, torch.tensor([1, 3])))

    encoded = yolo_encode(targets, S, B, C, image_size, dtype=dtype)
    assert encoded.device.type == device
    decoded = yolo_decode(encoded, S, B, C, image_size, conf_threshold=0.5)
    for det, (boxes, labels) in zip(decoded, truth, strict=True):
        count = len(boxes)
        # every box comes back exactly B times, the B copies one after the other
        assert det["boxes"].shape == (count * B, 4)
        copies = det["boxes"].cpu().reshape(count, B, 4)
        torch.testing.assert_close(copies, boxes[:, None].expand(-1, B, -1), atol=1e-4, rtol=0)
        assert torch.equal(det["labels"].cpu(), labels.repeat_interleave(B))
        assert det["labels"].dtype == torch.int64
        assert (det["scores"] == 1).all()
    # NMS removes the copies: each box exactly once (distinct boxes overlap by less than 0.99)
    for det, (boxes, labels) in zip(postprocess_yolo(encoded, S, B, C, image_size, 0.5, 0.99),
                                    truth, strict=True):
        order = torch.argsort(det["boxes"][:, 0].cpu())
        torch.testing.assert_close(det["boxes"].cpu()[order], boxes[boxes[:, 0].argsort()],
                                   atol=1e-4, rtol=0)
        assert torch.equal(det["labels"].cpu()[order], labels[boxes[:, 0].argsort()])


def test_round_trip_keeps_the_largest_of_colliding_boxes():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 13.0, 13.0], [60.0, 60.0, 70.0, 72.0]])
    target = {"boxes": boxes, "labels": torch.tensor([1, 2, 3])}
    det = yolo_decode(yolo_encode(target, 4, 1, 3, 128), 4, 1, 3, 128, conf_threshold=0.5)
    torch.testing.assert_close(det["boxes"], boxes[1:], atol=1e-4, rtol=0)
    assert det["labels"].tolist() == [2, 3]


# --------------------------------------------------------------------------- decode


def test_yolo_decode_hand_worked():
    # S=2, B=2, C=2 on (height 64, width 128): cells 64 wide, 32 high
    out = torch.zeros(2, 2, 12)
    out[1, 0, 0:5] = torch.tensor([0.5, 0.25, 0.25, 0.5, 0.5])  # predictor 0 of cell (1, 0)
    out[1, 0, 5:10] = torch.tensor([0.0, 0.0, -0.1, 0.125, 0.75])  # predictor 1: w < 0 -> 0
    out[1, 0, 10:] = torch.tensor([0.25, 0.5])  # label 2 with probability 0.5
    out[0, 1, 10:] = torch.tensor([0.5, 0.5])  # equal probabilities: the lowest label
    det = yolo_decode(out, 2, 2, 2, (64, 128), conf_threshold=0.1)
    # predictor 0: centre ((0 + 0.5) * 64, (1 + 0.25) * 32) = (32, 40), size (32, 32)
    # predictor 1: centre (0, 32), size (0, 8)
    torch.testing.assert_close(det["boxes"], torch.tensor([[16.0, 24.0, 48.0, 56.0],
                                                           [0.0, 28.0, 0.0, 36.0]]))
    assert det["scores"].tolist() == [0.25, 0.375]  # conf * max probability
    assert det["labels"].tolist() == [2, 2]
    # the threshold is inclusive; cell (0, 1) has confidence 0, so score 0 (kept at threshold 0)
    assert len(yolo_decode(out, 2, 2, 2, (64, 128), conf_threshold=0.25)["boxes"]) == 2
    assert len(yolo_decode(out, 2, 2, 2, (64, 128), conf_threshold=0.2500001)["boxes"]) == 1
    every = yolo_decode(out, 2, 2, 2, (64, 128))
    assert len(every["boxes"]) == 8 and every["labels"].tolist()[2:4] == [1, 1]


def decode_oracle(output, S, B, C, image_size, conf_threshold):
    height, width = image_size
    results = []
    for image in output:
        boxes, scores, labels = [], [], []
        for i in range(S):
            for j in range(S):
                probs = image[i, j, 5 * B :].tolist()
                best = max(range(C), key=lambda c: (probs[c], -c))
                for b in range(B):
                    x, y, w, h, conf = image[i, j, 5 * b : 5 * b + 5].tolist()
                    cx, cy = (j + x) * width / S, (i + y) * height / S
                    bw, bh = max(w, 0.0) * width, max(h, 0.0) * height
                    score = conf * probs[best]
                    if score >= conf_threshold:
                        boxes.append([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2])
                        scores.append(score)
                        labels.append(best + 1)
        results.append((torch.tensor(boxes, dtype=torch.float64).reshape(-1, 4),
                        torch.tensor(scores, dtype=torch.float64), torch.tensor(labels)))
    return results


def test_yolo_decode_equals_loop_oracle():
    g = torch.Generator().manual_seed(2)
    out = random_output(g, 3, 4, 2, 3)
    ours = yolo_decode(out, 4, 2, 3, (96, 160), conf_threshold=0.3)
    for det, (boxes, scores, labels) in zip(ours, decode_oracle(out, 4, 2, 3, (96, 160), 0.3),
                                            strict=True):
        assert 0 < len(boxes) < 4 * 4 * 2
        torch.testing.assert_close(det["boxes"], boxes)
        torch.testing.assert_close(det["scores"], scores)
        assert torch.equal(det["labels"], labels)


def test_yolo_decode_shapes_and_errors():
    assert yolo_decode(torch.zeros(0, 8, 8, 13), 8, 2, 3, 128) == []
    single = yolo_decode(torch.zeros(8, 8, 13), 8, 2, 3, 128)
    assert isinstance(single, dict) and single["boxes"].shape == (128, 4)
    message = (r"output must have shape \(N, S, S, B\*5 \+ C\) = \(N, 8, 8, 13\) or "
               r"\(8, 8, 13\), got shape \(8, 8, 12\)")
    with pytest.raises(ValueError, match=message):
        yolo_decode(torch.zeros(8, 8, 12), 8, 2, 3, 128)
    with pytest.raises(ValueError, match="got shape"):
        yolo_decode(torch.zeros(2, 7, 7, 13), 8, 2, 3, 128)


# --------------------------------------------------------------------------- loss


def hand_worked_case():
    """S=2, B=2, C=2 on 64 px; image 0 has one object, image 1 none (numbers in the test)."""
    target = yolo_encode([{"boxes": torch.tensor([[40.0, 8.0, 56.0, 24.0]]),  # cell (0, 1)
                           "labels": torch.tensor([1])},
                          {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=int)}],
                         2, 2, 2, 64)
    assert target[0, 0, 1].tolist() == [0.5, 0.5, 0.25, 0.25, 1] * 2 + [1, 0]
    out = torch.zeros(2, 2, 2, 12)
    out[0, 0, 1] = torch.tensor([0.0, 0.0, 0.25, 0.25, 0.3,  # IoU 0 (shifted by 16 px)
                                 0.6, 0.5, 0.16, 0.36, 0.8,  # IoU > 0: responsible
                                 0.7, 0.2])
    out[0, 1, 0, 4] = 0.2  # a confidence in an empty cell
    out[0, 1, 1, 9] = -0.1  # another one, predictor 1
    out[0, 0, 0, 10:] = 0.9  # class probabilities of an empty cell: not penalised
    out[1, 1, 1, :5] = torch.tensor([0.3, 0.3, 0.3, 0.3, 0.0])  # empty cell, confidence 0
    return out, target


def test_yolo_loss_hand_worked():
    out, target = hand_worked_case()
    loss = yolo_loss(out, target, 2, 2, 2)
    assert list(loss) == ["coord", "size", "obj", "noobj", "class"]
    expected = {
        "coord": 5 * ((0.6 - 0.5) ** 2 + (0.5 - 0.5) ** 2),  # sqrt: 0.4, 0.6 vs 0.5, 0.5
        "size": 5 * ((0.4 - 0.5) ** 2 + (0.6 - 0.5) ** 2),
        "obj": (0.8 - 1) ** 2,
        "noobj": 0.5 * (0.3**2 + 0.2**2 + 0.1**2),  # the other predictor + the empty cells
        "class": (0.7 - 1) ** 2 + (0.2 - 0) ** 2,
    }
    for name, value in expected.items():  # divided by the batch size, 2
        torch.testing.assert_close(loss[name], torch.tensor(value / 2), msg=name)
    # the paper's confidence target: the IoU of the responsible box with the GT box, measured in
    # fractions of the image: x 0.72..0.88 vs 0.625..0.875, y 0.07..0.43 vs 0.125..0.375
    iou = (0.875 - 0.72) * 0.25 / (0.16 * 0.36 + 0.25 * 0.25 - (0.875 - 0.72) * 0.25)
    paper = yolo_loss(out, target, 2, 2, 2, lambda_coord=1.0, lambda_noobj=2.0,
                      iou_confidence=True)
    torch.testing.assert_close(paper["obj"], torch.tensor((0.8 - iou) ** 2 / 2))
    torch.testing.assert_close(paper["coord"], torch.tensor(expected["coord"] / 5 / 2))
    torch.testing.assert_close(paper["noobj"], torch.tensor(expected["noobj"] * 4 / 2))


def test_yolo_loss_equal_ious_pick_the_lowest_predictor():
    target = yolo_encode({"boxes": torch.tensor([[8.0, 8.0, 24.0, 24.0]]),
                          "labels": torch.tensor([2])}, 2, 2, 2, 64)
    out = target.clone()
    out[0, 0, 4], out[0, 0, 9] = 0.25, 0.5  # the same box twice; confidences differ
    loss = yolo_loss(out, target, 2, 2, 2)
    torch.testing.assert_close(loss["obj"], torch.tensor(0.75**2))  # predictor 0
    torch.testing.assert_close(loss["noobj"], torch.tensor(0.5 * 0.5**2))  # predictor 1


def loss_oracle(output, target, S, B, C, lambda_coord, lambda_noobj, iou_confidence):
    """Plain loops over images, cells and predictors, boxes in pixels of a 100 x 100 image."""
    def sqrt(v):
        return math.copysign(math.sqrt(abs(v) + SQRT_EPS), v) if v != 0 else 0.0

    def pixels(i, j, x, y, w, h):
        cx, cy, w, h = (j + x) * 100 / S, (i + y) * 100 / S, max(w, 0) * 100, max(h, 0) * 100
        return torch.tensor([[cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]], dtype=torch.float64)

    terms = dict.fromkeys(["coord", "size", "obj", "noobj", "class"], 0.0)
    for n in range(output.shape[0]):
        for i in range(S):
            for j in range(S):
                p, t = output[n, i, j].tolist(), target[n, i, j].tolist()
                responsible, iou_best = -1, 0.0
                if t[4] == 1:
                    gt_box = pixels(i, j, *t[:4])
                    for b in range(B):
                        iou = box_iou(pixels(i, j, *p[5 * b : 5 * b + 4]), gt_box).item()
                        iou = 0.0 if math.isnan(iou) else iou
                        if responsible < 0 or iou > iou_best:
                            responsible, iou_best = b, iou
                    terms["class"] += sum((p[5 * B + c] - t[5 * B + c]) ** 2 for c in range(C))
                for b in range(B):
                    x, y, w, h, conf = p[5 * b : 5 * b + 5]
                    if b == responsible:
                        terms["coord"] += lambda_coord * ((x - t[0]) ** 2 + (y - t[1]) ** 2)
                        terms["size"] += lambda_coord * ((sqrt(w) - sqrt(t[2])) ** 2
                                                         + (sqrt(h) - sqrt(t[3])) ** 2)
                        terms["obj"] += (conf - (iou_best if iou_confidence else 1.0)) ** 2
                    else:
                        terms["noobj"] += lambda_noobj * conf**2
    return {name: value / output.shape[0] for name, value in terms.items()}


@pytest.mark.parametrize("device", available_devices())
@pytest.mark.parametrize("iou_confidence", [False, True])
def test_yolo_loss_equals_loop_oracle(device, iou_confidence):
    S, B, C = 4, 3, 3
    g = torch.Generator().manual_seed(3)
    targets = []
    for count in (5, 0, 9):
        boxes, _, _ = boxes_in_distinct_cells(g, S, (100, 100), count, torch.float64)
        targets.append({"boxes": boxes, "labels": torch.randint(1, C + 1, (count,), generator=g)})
    target = yolo_encode(targets, S, B, C, 100, dtype=torch.float64)
    # predictions near the target, so that the responsible predictor is not always the same
    out = target + (torch.rand(target.shape, generator=g, dtype=torch.float64) - 0.5) * 0.4
    out[1, 0, 0, 2] = 0.0  # a zero width, an exactly zero sqrt
    ours = yolo_loss(out.to(device), target.to(device), S, B, C, 5.0, 0.5, iou_confidence)
    expected = loss_oracle(out, target, S, B, C, 5.0, 0.5, iou_confidence)
    for name, value in expected.items():
        assert value > 0, name
        torch.testing.assert_close(ours[name].cpu(), torch.tensor(value, dtype=torch.float64),
                                   msg=name)


@pytest.mark.parametrize("iou_confidence", [False, True])
def test_perfect_prediction_has_zero_loss(iou_confidence):
    g = torch.Generator().manual_seed(4)
    boxes, _, _ = boxes_in_distinct_cells(g, 8, (128, 128), 10)
    target = yolo_encode({"boxes": boxes, "labels": torch.randint(1, 4, (10,), generator=g)},
                         8, 2, 3, 128)
    perfect = target.clone()
    perfect[..., 9] = 0.0  # only predictor 0 claims the object
    loss = yolo_loss(perfect, target, 8, 2, 3, iou_confidence=iou_confidence)
    for name, value in loss.items():
        assert value.item() < 1e-10, name
    # the target itself is not perfect: its second copy of each box pays lambda_noobj
    torch.testing.assert_close(yolo_loss(target, target, 8, 2, 3)["noobj"], torch.tensor(5.0))


@pytest.mark.parametrize("iou_confidence", [False, True])
def test_yolo_loss_gradient_descent_lowers_every_term(iou_confidence):
    g = torch.Generator().manual_seed(5)
    targets = []
    for _ in range(2):
        boxes, _, _ = boxes_in_distinct_cells(g, 4, (64, 64), 5)
        targets.append({"boxes": boxes, "labels": torch.randint(1, 3, (5,), generator=g)})
    target = yolo_encode(targets, 4, 2, 2, 64)
    out = (target + torch.randn(target.shape, generator=g) * 0.3).requires_grad_()
    optimizer = torch.optim.SGD([out], lr=0.05)
    first = None
    for _ in range(30):
        loss = yolo_loss(out, target, 4, 2, 2, iou_confidence=iou_confidence)
        first = first or {name: value.item() for name, value in loss.items()}
        optimizer.zero_grad()
        sum(loss.values()).backward()
        assert torch.isfinite(out.grad).all()
        optimizer.step()
    last = yolo_loss(out, target, 4, 2, 2, iou_confidence=iou_confidence)
    for name, value in last.items():
        assert value.item() < 0.7 * first[name], (name, first[name], value.item())


def test_yolo_loss_gradient_is_finite_at_zero_and_negative_sizes():
    target = yolo_encode({"boxes": torch.tensor([[8.0, 8.0, 24.0, 24.0]]),
                          "labels": torch.tensor([1])}, 2, 2, 2, 64)
    out = torch.zeros(1, 2, 2, 12)
    out[0, 0, 0, 7] = -0.2  # predictor 1: a negative width
    out.requires_grad_()
    sum(yolo_loss(out, target, 2, 2, 2).values()).backward()
    assert torch.isfinite(out.grad).all()
    # both predictors have IoU 0 -> predictor 0 is responsible; predictor 1 gets no size gradient
    assert out.grad[0, 0, 0, 2] == 0  # sqrt at exactly 0: gradient 0, not nan
    assert out.grad[0, 0, 0, 3] == 0
    assert out.grad[0, 0, 0, 7] == 0


def test_yolo_loss_negative_width_is_pushed_up_when_responsible():
    target = yolo_encode({"boxes": torch.tensor([[8.0, 8.0, 24.0, 24.0]]),
                          "labels": torch.tensor([1])}, 2, 1, 2, 64)
    out = target.clone()
    out[0, 0, 2] = -0.1  # the only predictor, responsible, width < 0
    out.requires_grad_()
    yolo_loss(out, target, 2, 1, 2)["size"].backward()
    assert out.grad[0, 0, 2] < 0  # gradient descent increases w


def test_yolo_loss_shapes_and_errors():
    zeros = torch.zeros(0, 8, 8, 13)
    assert all(v.item() == 0 for v in yolo_loss(zeros, zeros, 8, 2, 3).values())
    single = torch.zeros(8, 8, 13)
    assert yolo_loss(single, single, 8, 2, 3)["noobj"].item() == 0
    with pytest.raises(ValueError, match="output and target must have the same shape"):
        yolo_loss(torch.zeros(2, 8, 8, 13), torch.zeros(3, 8, 8, 13), 8, 2, 3)
    with pytest.raises(ValueError, match=r"target must have shape .* got shape \(2, 8, 8, 12\)"):
        yolo_loss(torch.zeros(2, 8, 8, 13), torch.zeros(2, 8, 8, 12), 8, 2, 3)


# --------------------------------------------------------------------------- postprocess


def postprocess_oracle(output, S, B, C, image_size, conf_threshold, nms_thresh, max_detections):
    """Decode (loop oracle), threshold, course_lib.nms.nms class by class, best first."""
    results = []
    for boxes, scores, labels in decode_oracle(output, S, B, C, image_size, conf_threshold):
        kept = []
        for label in range(1, C + 1):
            members = torch.nonzero(labels == label).squeeze(1)
            kept += members[nms(boxes[members], scores[members], nms_thresh)].tolist()
        kept = sorted(kept, key=lambda k: -scores[k].item())[:max_detections]
        results.append((boxes[kept], scores[kept], labels[kept]))
    return results


@pytest.mark.parametrize("device", available_devices())
@pytest.mark.parametrize("max_detections", [100, 4])
def test_postprocess_yolo_equals_loop_oracle(device, max_detections):
    S, B, C = 4, 3, 3
    g = torch.Generator().manual_seed(6)
    out = random_output(g, 3, S, B, C)
    out[..., [2, 3, 7, 8, 12, 13]] += 0.2  # larger boxes: more overlaps for NMS to remove
    ours = postprocess_yolo(out.to(device), S, B, C, (96, 160), 0.2, 0.4, max_detections)
    expected = postprocess_oracle(out, S, B, C, (96, 160), 0.2, 0.4, max_detections)
    decoded = yolo_decode(out, S, B, C, (96, 160), 0.2)
    for det, (boxes, scores, labels), before in zip(ours, expected, decoded, strict=True):
        assert len(boxes) < len(before["boxes"])  # NMS did remove boxes
        assert len(boxes) <= max_detections
        torch.testing.assert_close(det["boxes"].cpu(), boxes)
        torch.testing.assert_close(det["scores"].cpu(), scores)
        assert torch.equal(det["labels"].cpu(), labels)


def test_postprocess_yolo_single_image_and_nothing_above_threshold():
    out = torch.rand(8, 8, 13, generator=torch.Generator().manual_seed(7))
    det = postprocess_yolo(out, 8, 2, 3, 128, conf_threshold=1.5)
    assert isinstance(det, dict)
    assert det["boxes"].shape == (0, 4) and det["scores"].shape == (0,)
    assert det["labels"].dtype == torch.int64
    assert postprocess_yolo(torch.zeros(0, 8, 8, 13), 8, 2, 3, 128) == []
