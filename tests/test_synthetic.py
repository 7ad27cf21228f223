"""Tests for course_lib.data.synthetic (the scenes, the dataset, its cache, the COCO export).

Oracles: pixel loops written here (tight boxes, areas, the semantic map painted object by
object), pycocotools (RLE decoding, AP of a perfect prediction) and
``metrics.coco_evaluate`` against ``coco_format.pycocotools_evaluate`` on the scenes.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from torch.utils.data import DataLoader

from course_lib.coco_format import (
    COCO_STAT_NAMES,
    boxes_to_coco_xywh,
    pycocotools_evaluate,
    to_coco_gt,
)
from course_lib.data import synthetic
from course_lib.data.synthetic import (
    MIN_VISIBLE_PIXELS,
    SHAPES,
    SPLIT_CODES,
    SyntheticShapes,
    detection_collate,
    make_scene,
)
from course_lib.data.toy_detections import simulate_detector
from course_lib.metrics import coco_evaluate

# pycocotools' decode passes copy=False to numpy 2's asarray: its warning, not ours.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

# sha256 of make_scene(0)'s uint8 image bytes + mask bytes. The generator is deterministic on
# every machine; if you change the scenes on purpose, bump GENERATOR_VERSION (the cache key)
# and put the new value here.
SCENE_0_SHA256 = "8049cd56bba7200066435ec3f5367422ef8775f4bd198d43642bf54e49db343e"


def scene_bytes(image, target) -> bytes:
    pixels = torch.round(image * 255).to(torch.uint8)
    return pixels.numpy().tobytes() + target["masks"].numpy().tobytes()


def assert_same_sample(a, b):
    image_a, target_a = a
    image_b, target_b = b
    assert torch.equal(image_a, image_b)
    assert target_a.keys() == target_b.keys()
    for key, value in target_a.items():
        if isinstance(value, torch.Tensor):
            assert value.dtype == target_b[key].dtype and torch.equal(value, target_b[key]), key
        else:
            assert value == target_b[key], key


@pytest.fixture(scope="module")
def detection_scenes():
    """200 detection scenes of 128x128 (train split, seed 0), as the dataset makes them."""
    return [make_scene([0, SPLIT_CODES["train"], i], image_id=i) for i in range(200)]


# ------------------------------------------------------------------ determinism


def test_same_seed_same_bytes():
    for seed in (0, 123, [4, 1, 17]):
        assert_same_sample(make_scene(seed), make_scene(seed))


def test_different_seeds_differ():
    seeds = [1, 2, 3, [0, 0, 0], [0, 1, 0], [0, 2, 0], [0, 0, 1], [1, 0, 1]]
    digests = {hashlib.sha256(make_scene(seed)[0].numpy().tobytes()).hexdigest()
               for seed in seeds}
    assert len(digests) == len(seeds)
    # numpy's SeedSequence ignores trailing zeros: seed 7 is image 0 of seed 7's train split
    assert_same_sample(make_scene(7), make_scene([7, 0, 0]))


def test_first_scene_hash_is_fixed():
    digest = hashlib.sha256(scene_bytes(*make_scene(0))).hexdigest()
    assert digest == SCENE_0_SHA256


# ------------------------------------------------------------------ targets


def check_target(image, target, image_size, num_classes=5):
    """Every field against a loop oracle built from the masks alone."""
    n = len(target["labels"])
    assert image.shape == (3, image_size, image_size) and image.dtype == torch.float32
    assert 0.0 <= image.min() and image.max() <= 1.0
    assert torch.equal(image * 255, torch.round(image * 255))  # exactly a uint8 image / 255
    assert target["boxes"].shape == (n, 4) and target["boxes"].dtype == torch.float32
    assert target["labels"].dtype == torch.int64
    assert target["masks"].shape == (n, image_size, image_size)
    assert target["masks"].dtype == torch.uint8 and set(target["masks"].unique().tolist()) <= {0, 1}
    assert target["area"].dtype == torch.float32
    assert target["iscrowd"].dtype == torch.int64 and not target["iscrowd"].any()
    assert target["semantic"].shape == (image_size, image_size)
    assert target["semantic"].dtype == torch.int64
    assert isinstance(target["image_id"], int)
    assert ((target["labels"] >= 1) & (target["labels"] <= num_classes)).all()

    masks = target["masks"].numpy().astype(bool)
    assert masks.sum(axis=0).max(initial=0) <= 1  # visible parts never overlap
    semantic = np.zeros((image_size, image_size), dtype=np.int64)
    for k in range(n):  # paint bottom to top: the topmost visible object wins
        rows, cols = np.nonzero(masks[k])
        assert len(rows) >= MIN_VISIBLE_PIXELS  # never empty, never a speck
        expected = [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]
        assert target["boxes"][k].tolist() == expected
        assert target["area"][k].item() == len(rows)
        semantic[masks[k]] = target["labels"][k].item()
    assert np.array_equal(target["semantic"].numpy(), semantic)


def test_detection_targets_are_consistent(detection_scenes):
    for image, target in detection_scenes[:60]:
        check_target(image, target, 128)
    counts = [len(t["labels"]) for _, t in detection_scenes]
    assert min(counts) >= 1 and max(counts) <= 6


@pytest.mark.parametrize("kind", ["single", "detection", "segmentation"])
@pytest.mark.parametrize("image_size", [64, 96, 256])
def test_targets_of_every_kind_and_size(kind, image_size):
    for i in range(6):
        image, target = make_scene([1, 0, i], image_size=image_size, kind=kind, num_classes=3)
        check_target(image, target, image_size, num_classes=3)


def test_single_has_exactly_one_medium_or_large_object():
    for size in (64, 128, 256):
        for i in range(40):
            _, target = make_scene([2, 0, i], image_size=size, kind="single")
            assert len(target["labels"]) == 1
            assert target["area"].item() >= 32**2
            x1, y1, x2, y2 = target["boxes"][0].tolist()  # fully inside, not cut
            assert x1 > 0 and y1 > 0 and x2 < size and y2 < size


def test_segmentation_scenes_are_denser(detection_scenes):
    dense = [make_scene([0, 0, i], kind="segmentation")[1] for i in range(40)]
    assert np.mean([len(t["labels"]) for t in dense]) > np.mean(
        [len(t["labels"]) for _, t in detection_scenes[:40]]) + 1.5
    assert min(len(t["labels"]) for t in dense) >= 3


def test_all_size_groups_and_classes_occur(detection_scenes):
    area = torch.cat([t["area"] for _, t in detection_scenes])
    assert (area < 32**2).sum() > 50 and ((area >= 32**2) & (area <= 96**2)).sum() > 50
    assert (area > 96**2).sum() >= 3  # rarer at 128x128: a large object nearly fills it
    labels = torch.cat([t["labels"] for _, t in detection_scenes])
    assert set(labels.tolist()) == set(range(1, len(SHAPES) + 1))
    big = torch.cat([make_scene([0, 0, i], image_size=256)[1]["area"] for i in range(30)])
    assert (big < 32**2).any() and (big > 96**2).any()


def test_objects_overlap(detection_scenes):
    # Overlap (and so occlusion) is common: in many images two objects' boxes intersect.
    overlapping = 0
    for _, target in detection_scenes:
        b = target["boxes"]
        if len(b) > 1:
            lt = torch.max(b[:, None, :2], b[None, :, :2])  # (N, N, 2)
            rb = torch.min(b[:, None, 2:], b[None, :, 2:])
            inter = (rb - lt).clamp(min=0).prod(-1)  # (N, N)
            overlapping += int((inter.triu(1) > 0).any())
    assert overlapping > 40


def test_clean_scenes_keep_objects_whole_and_apart_on_a_plain_gradient():
    for i in range(40):
        image, target = make_scene([5, 0, i], image_size=64, kind="segmentation",
                                   num_classes=3, min_objects=8, max_objects=20, style="clean")
        masks = target["masks"].bool()  # (N, H, W)
        assert 1 <= len(masks) and set(target["labels"].tolist()) <= {1, 2, 3}
        # apart: no pixel of an object is next to (8-neighbourhood) a pixel of another one
        grown = torch.nn.functional.max_pool2d(masks[:, None].float(), 3, 1, 1)[:, 0] > 0
        for k in range(len(masks)):
            others = masks.sum(0).bool() & ~masks[k]
            assert not (grown[k] & others).any(), f"scene {i}: object {k} touches another"
        # plain: off the objects (and their anti-aliased rim), a plane per channel explains
        # the background up to the grain: no noise blobs, stripes or clutter
        background = ~grown.any(0)
        rows, cols = background.nonzero(as_tuple=True)
        design = torch.stack([torch.ones_like(rows), rows, cols], 1).double()  # (P, 3)
        pixels = image[:, rows, cols].T.double()  # (P, 3)
        plane = torch.linalg.lstsq(design, pixels).solution
        assert (pixels - design @ plane).std() < 0.03, f"scene {i}"


def test_natural_scenes_are_not_plain():
    # the same plane fit on the natural style's background leaves texture (noise, clutter)
    residuals = []
    for i in range(20):
        image, target = make_scene([5, 0, i], image_size=64, kind="segmentation", num_classes=3)
        background = target["semantic"] == 0
        rows, cols = background.nonzero(as_tuple=True)
        design = torch.stack([torch.ones_like(rows), rows, cols], 1).double()
        pixels = image[:, rows, cols].T.double()
        plane = torch.linalg.lstsq(design, pixels).solution
        residuals.append((pixels - design @ plane).std().item())
    assert np.median(residuals) > 0.03


def test_clean_style_is_cached_apart(tmp_path):
    kw = dict(num_images=2, kind="segmentation", image_size=64, root=tmp_path, progress=False)
    natural, clean = SyntheticShapes(**kw), SyntheticShapes(**kw, style="clean")
    assert natural.cache_path != clean.cache_path
    assert not torch.equal(natural[0][0], clean[0][0])
    assert_same_sample(clean[1], make_scene(clean.scene_seed(1), 64, "segmentation",
                                            image_id=1, style="clean"))


def test_num_classes_limits_labels():
    labels = torch.cat([make_scene(i, num_classes=2)[1]["labels"] for i in range(20)])
    assert set(labels.tolist()) == {1, 2}


def test_bad_arguments():
    with pytest.raises(ValueError, match="kind"):
        make_scene(0, kind="panoptic")
    with pytest.raises(ValueError, match="style must be one of"):
        make_scene(0, style="cartoon")
    with pytest.raises(ValueError, match="image_size"):
        make_scene(0, image_size=32)
    with pytest.raises(ValueError, match="num_classes"):
        make_scene(0, num_classes=6)
    with pytest.raises(ValueError, match="single"):
        make_scene(0, kind="single", max_objects=3)
    with pytest.raises(ValueError, match="min_objects"):
        make_scene(0, min_objects=5, max_objects=2)
    with pytest.raises(ValueError, match="split"):
        SyntheticShapes(split="dev", num_images=1, cache=False)
    with pytest.raises(ValueError, match="seed"):
        SyntheticShapes(num_images=1, seed=-1, cache=False)


# ------------------------------------------------------------------ dataset


def test_dataset_items_are_the_scenes_of_their_seed():
    dataset = SyntheticShapes("val", num_images=3, kind="segmentation", seed=5, cache=False)
    assert len(dataset) == 3 and dataset.classes == SHAPES
    for i in range(3):
        expected = make_scene([5, SPLIT_CODES["val"], i], kind="segmentation", image_id=i)
        assert_same_sample(dataset[i], expected)
    assert_same_sample(dataset[-1], dataset[2])
    with pytest.raises(IndexError):
        dataset[3]


def test_splits_and_seeds_are_independent():
    splits = {s: SyntheticShapes(s, num_images=4, cache=False) for s in SPLIT_CODES}
    other_seed = SyntheticShapes("train", num_images=4, seed=1, cache=False)
    digests = set()
    for dataset in [*splits.values(), other_seed]:
        for i in range(4):
            digests.add(hashlib.sha256(dataset[i][0].numpy().tobytes()).hexdigest())
    assert len(digests) == 16


def test_collate_and_transform():
    def flip(image, target):
        return image.flip(-1), dict(target, flipped=True)

    dataset = SyntheticShapes(num_images=5, cache=False, transforms=flip)
    images, targets = next(iter(DataLoader(dataset, batch_size=4, collate_fn=detection_collate)))
    assert isinstance(images, list) and len(images) == 4 and images[0].shape == (3, 128, 128)
    assert isinstance(targets, list) and [t["image_id"] for t in targets] == [0, 1, 2, 3]
    assert all(t["flipped"] for t in targets)
    assert torch.equal(images[1], make_scene([0, 0, 1])[0].flip(-1))
    assert detection_collate([]) == ([], [])


def test_cache_round_trip(tmp_path, monkeypatch):
    fresh = SyntheticShapes("test", num_images=4, kind="detection", cache=False)
    cached = SyntheticShapes("test", num_images=4, kind="detection", root=tmp_path,
                             progress=False)
    assert cached.cache_path.parent == tmp_path and cached.cache_path.exists()
    assert [p.name for p in tmp_path.iterdir()] == [cached.cache_path.name]  # no temp left
    expected = [fresh[i] for i in range(4)]

    def no_generation(*args, **kwargs):
        raise AssertionError("a cache hit must not generate scenes")

    monkeypatch.setattr(synthetic, "_generate", no_generation)
    again = SyntheticShapes("test", num_images=4, kind="detection", root=tmp_path)
    for i in range(4):
        assert_same_sample(again[i], expected[i])
        assert_same_sample(cached[i], expected[i])


def test_cache_key_depends_on_every_parameter(tmp_path):
    base = dict(split="train", num_images=2, kind="detection", image_size=64, num_classes=5,
                seed=0, root=tmp_path, progress=False)
    names = {SyntheticShapes(**base).cache_path.name}
    for change in ({"split": "val"}, {"num_images": 3}, {"kind": "single"}, {"image_size": 72},
                   {"num_classes": 4}, {"seed": 1}, {"max_objects": 3}):
        names.add(SyntheticShapes(**{**base, **change}).cache_path.name)
    assert len(names) == 8 and len(list(tmp_path.iterdir())) == 8


@pytest.mark.parametrize("damage", ["truncate", "garbage", "foreign"])
def test_corrupt_cache_is_regenerated(tmp_path, damage):
    kwargs = dict(split="val", num_images=3, image_size=64, root=tmp_path, progress=False)
    path = SyntheticShapes(**kwargs).cache_path
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "garbage":
        path.write_bytes(b"not a torch file")
    else:  # a valid file of another dataset under this name
        other = SyntheticShapes(**{**kwargs, "seed": 9})
        path.write_bytes(other.cache_path.read_bytes())
    with pytest.warns(UserWarning, match="generating it again"):
        repaired = SyntheticShapes(**kwargs)
    fresh = SyntheticShapes("val", num_images=3, image_size=64, cache=False)
    for i in range(3):
        assert_same_sample(repaired[i], fresh[i])
    assert_same_sample(SyntheticShapes(**kwargs)[2], fresh[2])  # the repaired file loads


def test_cache_dir_follows_course_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path))
    dataset = SyntheticShapes(num_images=1, image_size=64, progress=False)
    assert dataset.cache_path.parent == tmp_path / "synthetic" and dataset.cache_path.exists()


# ------------------------------------------------------------------ COCO export


def test_coco_export_round_trip(detection_scenes):
    targets = [t for _, t in detection_scenes[:20]]
    coco = COCO()
    coco.dataset = json.loads(json.dumps(to_coco_gt(targets)))  # really json
    coco.createIndex()
    for i, target in enumerate(targets):
        image = coco.imgs[i + 1]
        assert (image["height"], image["width"]) == (128, 128)
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[i + 1]))
        assert len(anns) == len(target["labels"])
        xywh = boxes_to_coco_xywh(target["boxes"])
        for k, ann in enumerate(anns):
            decoded = mask_utils.decode(coco.annToRLE(ann))  # (H, W) uint8
            assert np.array_equal(decoded, target["masks"][k].numpy())
            assert np.array_equal(coco.annToMask(ann), target["masks"][k].numpy())
            assert ann["bbox"] == xywh[k].tolist()
            assert ann["area"] == target["area"][k].item() == mask_utils.area(ann["segmentation"])
            assert ann["category_id"] == target["labels"][k].item()


def test_perfect_prediction_scores_one(detection_scenes):
    targets = [t for _, t in detection_scenes[:40]]
    preds = [{"boxes": t["boxes"], "labels": t["labels"], "masks": t["masks"],
              "scores": torch.linspace(1.0, 0.5, len(t["labels"]))} for t in targets]
    for iou_type in ("bbox", "segm"):
        stats = pycocotools_evaluate(targets, preds, iou_type=iou_type)
        for name in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100"):
            # (pycocotools divides by tp + fp + eps, so "1" can be 1 - 2e-16)
            assert stats[name] == pytest.approx(1.0, abs=1e-12), (iou_type, name)


def test_coco_evaluate_agrees_with_pycocotools_on_scenes(detection_scenes):
    targets = [t for _, t in detection_scenes]
    preds = simulate_detector(targets, seed=3, num_classes=5, image_size=128)
    ours, ref = coco_evaluate(targets, preds), pycocotools_evaluate(targets, preds)
    assert max(abs(ours[k] - ref[k]) for k in COCO_STAT_NAMES) <= 1e-9
    assert 0.2 < ours["AP"] < 0.9 and min(ours[k] for k in ("APs", "APm", "APl")) >= 0
