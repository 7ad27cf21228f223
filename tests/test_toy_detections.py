"""The toy scenes and the simulated detector of lesson 05."""

import torch

from course_lib.data.toy_detections import make_toy_scenes, render_scene, simulate_detector
from course_lib.metrics import coco_evaluate


def test_scenes_are_deterministic_and_valid():
    a = make_toy_scenes(num_images=30, seed=3)
    b = make_toy_scenes(num_images=30, seed=3)
    c = make_toy_scenes(num_images=30, seed=4)
    assert all(torch.equal(x["boxes"], y["boxes"]) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x["boxes"], y["boxes"]) for x, y in zip(a, c, strict=True))
    boxes = torch.cat([t["boxes"] for t in a])
    labels = torch.cat([t["labels"] for t in a])
    assert boxes.dtype == torch.float32 and labels.dtype == torch.int64
    assert (boxes[:, 2:] > boxes[:, :2]).all() and (boxes >= 0).all() and (boxes <= 256).all()
    assert set(labels.tolist()) == {1, 2, 3}


def test_scenes_have_small_medium_and_large_objects():
    boxes = torch.cat([t["boxes"] for t in make_toy_scenes(num_images=100, seed=0)])
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    assert (area < 32**2).sum() > 20
    assert ((area >= 32**2) & (area <= 96**2)).sum() > 20
    assert (area > 96**2).sum() > 20


def test_detector_is_deterministic_and_its_knobs_move_the_metrics():
    scenes = make_toy_scenes(num_images=80, seed=0)
    first = simulate_detector(scenes, seed=1)
    again = simulate_detector(scenes, seed=1)
    assert all(torch.equal(p["boxes"], q["boxes"]) and torch.equal(p["scores"], q["scores"])
               for p, q in zip(first, again, strict=True))
    for p in first:
        assert p["boxes"].shape[0] == p["scores"].shape[0] == p["labels"].shape[0]
        assert (p["boxes"][:, 2:] > p["boxes"][:, :2]).all()
    base = coco_evaluate(scenes, first)
    perfect = coco_evaluate(scenes, simulate_detector(
        scenes, seed=1, recall=1.0, box_noise=0.0, duplicate_rate=0.0, confusion_rate=0.0,
        false_positives=0.0))
    sloppy = coco_evaluate(scenes, simulate_detector(scenes, seed=1, box_noise=0.16))
    assert perfect["AP"] > 0.99 and perfect["AR100"] > 0.99
    assert sloppy["AP75"] < base["AP75"] and sloppy["AP"] < base["AP"]


def test_render_scene_gives_an_image():
    scene = make_toy_scenes(num_images=1, seed=0)[0]
    image = render_scene(scene, image_size=256, seed=0)
    assert image.shape == (3, 256, 256) and image.dtype == torch.float32
    assert 0 <= image.min() and image.max() <= 1
    assert torch.equal(image, render_scene(scene, image_size=256, seed=0))
