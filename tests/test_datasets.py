"""Tests of course_lib.data.datasets (Penn-Fudan) on a tiny fake copy written into tmp folders.

The fake (tests/fixtures/pennfudan/fake_pennfudan.py) has the real archive's layout and known
instances; the oracles below are per-pixel loops over its label images and torchvision.
"""

from __future__ import annotations

import importlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Subset

from course_lib.data.datasets import (
    SPLITS,
    PennFudanDataset,
    default_root,
    split_dataset,
    split_indices,
)

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "pennfudan"


@pytest.fixture(scope="module")
def fake():
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(FIXTURES))
        yield importlib.import_module("fake_pennfudan")


@pytest.fixture(scope="module")
def fake_root(fake, tmp_path_factory) -> Path:
    """A pristine fake PennFudanPed folder, shared by the tests that only read it."""
    return fake.write_fake_pennfudan(tmp_path_factory.mktemp("pennfudan"))


@pytest.fixture
def broken_root(fake_root, tmp_path) -> Path:
    """A private copy of the fake folder that a test may break."""
    return Path(shutil.copytree(fake_root, tmp_path / "PennFudanPed"))


def loop_box(mask: np.ndarray) -> list[float]:
    """Oracle: the tight box of a binary mask by scanning every pixel (x2, y2 exclusive)."""
    xs = [x for y in range(mask.shape[0]) for x in range(mask.shape[1]) if mask[y, x]]
    ys = [y for y in range(mask.shape[0]) for x in range(mask.shape[1]) if mask[y, x]]
    return [min(xs), min(ys), max(xs) + 1, max(ys) + 1]


# ----------------------------------------------------------------------------- items

def test_images_are_listed_in_name_order(fake_root, fake):
    ds = PennFudanDataset(fake_root)
    assert len(ds) == len(fake.SCENES) == 4
    assert [p.stem for p in ds.image_paths] == sorted(fake.SCENES)
    assert all(m.name == f"{p.stem}_mask.png" for p, m in zip(ds.image_paths, ds.mask_paths,
                                                                   strict=True))


@pytest.mark.parametrize("index", range(4))
def test_target_matches_the_scene(fake_root, fake, index):
    ds = PennFudanDataset(fake_root)
    name = ds.image_paths[index].stem
    width, height, objects = fake.SCENES[name]
    labels = fake.label_image(name)
    image, target = ds[index]

    assert image.shape == (3, height, width) and image.dtype == torch.float32
    expected_image = np.asarray(Image.open(ds.image_paths[index]).convert("RGB")) / 255
    assert torch.allclose(image, torch.from_numpy(expected_image).permute(2, 0, 1).float())
    assert 0 <= image.min() and image.max() <= 1

    n = len(objects)
    assert set(target) == {"boxes", "labels", "masks", "area", "iscrowd", "semantic", "image_id"}
    assert target["boxes"].shape == (n, 4) and target["boxes"].dtype == torch.float32
    assert target["labels"].dtype == torch.int64 and target["labels"].tolist() == [1] * n
    assert target["masks"].shape == (n, height, width) and target["masks"].dtype == torch.uint8
    assert target["area"].dtype == torch.float32
    assert target["iscrowd"].dtype == torch.int64 and target["iscrowd"].tolist() == [0] * n
    assert target["semantic"].shape == (height, width)
    assert target["semantic"].dtype == torch.int64
    assert target["image_id"] == index

    for k in range(n):  # instance k+1 of the label image
        truth = labels == k + 1
        assert np.array_equal(target["masks"][k].numpy(), truth.astype(np.uint8))
        assert target["boxes"][k].tolist() == loop_box(truth)
        assert target["area"][k].item() == truth.sum()
    assert np.array_equal(target["semantic"].numpy(), (labels > 0).astype(np.int64))


def test_boxes_worked_by_hand(fake_root):
    ds = PennFudanDataset(fake_root)
    by_name = {p.stem: i for i, p in enumerate(ds.image_paths)}
    _, t = ds[by_name["FudanPed00001"]]
    assert t["boxes"][0].tolist() == [3, 4, 12, 25]        # rectangle columns 3..11, rows 4..24
    assert t["area"][0].item() == 9 * 21
    _, t = ds[by_name["FudanPed00002"]]
    assert t["boxes"].tolist() == [[0, 0, 24, 20]]          # fills the 24 x 20 image
    _, t = ds[by_name["PennPed00001"]]
    assert t["boxes"][2].tolist() == [30, 20, 31, 21]       # one pixel: width and height 1
    assert t["area"][2].item() == 1


def test_negative_index_iteration_and_index_error(fake_root):
    ds = PennFudanDataset(fake_root)
    assert ds[-1][1]["image_id"] == 3
    assert torch.equal(ds[-1][0], ds[3][0])
    with pytest.raises(IndexError, match="index 4"):
        ds[4]
    assert [t["image_id"] for _, t in ds] == [0, 1, 2, 3]  # iteration stops at IndexError


def test_transforms_get_image_and_target(fake_root):
    def hflip(image, target):
        return image.flip(-1), {**target, "flipped": True}

    image, target = PennFudanDataset(fake_root, transforms=hflip)[0]
    plain, _ = PennFudanDataset(fake_root)[0]
    assert torch.equal(image, plain.flip(-1)) and target["flipped"]


def test_works_in_a_dataloader(fake_root):
    loader = DataLoader(PennFudanDataset(fake_root), batch_size=2,
                        collate_fn=lambda batch: tuple(zip(*batch, strict=True)))
    images, targets = next(iter(loader))
    assert len(images) == len(targets) == 2 and targets[1]["image_id"] == 1


def test_root_may_be_the_parent_folder(fake_root):
    assert len(PennFudanDataset(fake_root.parent)) == 4


def test_default_root_follows_course_data_dir(fake_root, monkeypatch):
    monkeypatch.setenv("COURSE_DATA_DIR", str(fake_root.parent))
    assert default_root() == fake_root.parent / "PennFudanPed"
    assert len(PennFudanDataset()) == 4
    monkeypatch.delenv("COURSE_DATA_DIR")
    assert default_root() == Path(__file__).resolve().parents[1] / "data" / "PennFudanPed"


# ----------------------------------------------------------------------------- helpers

# ----------------------------------------------------------------------------- errors

def test_missing_root_says_how_to_download(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        PennFudanDataset(tmp_path / "nowhere")
    message = str(info.value)
    assert "nowhere" in message
    assert "python data_scripts/download_pennfudan.py" in message and "synthetic" in message


@pytest.mark.parametrize("folder", ["PNGImages", "PedMasks"])
def test_missing_subfolder(broken_root, folder):
    shutil.rmtree(broken_root / folder)
    with pytest.raises(FileNotFoundError, match=f"no {folder}/ folder"):
        PennFudanDataset(broken_root)


def test_no_images(broken_root):
    for path in (broken_root / "PNGImages").iterdir():
        path.unlink()
    with pytest.raises(FileNotFoundError, match="holds no .png images"):
        PennFudanDataset(broken_root)


def test_image_without_mask_names_both_files(broken_root):
    (broken_root / "PedMasks" / "PennPed00001_mask.png").unlink()
    with pytest.raises(FileNotFoundError) as info:
        PennFudanDataset(broken_root)
    assert "PNGImages/PennPed00001.png" in str(info.value)
    assert "PedMasks/PennPed00001_mask.png" in str(info.value)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
@pytest.mark.parametrize("which", ["PNGImages/FudanPed00002.png",
                                   "PedMasks/FudanPed00002_mask.png"])
def test_corrupt_png_names_the_file(broken_root, damage, which):
    path = broken_root / which
    data = path.read_bytes()
    path.write_bytes(b"not a png at all" if damage == "garbage" else data[: len(data) // 2])
    ds = PennFudanDataset(broken_root)  # listing works; the file is read when the item is
    with pytest.raises(ValueError, match="cannot read .*" + which.split("/")[1]):
        ds[1]
    ds[0]  # the other images are fine


def test_mask_without_pedestrians(broken_root):
    Image.new("L", (24, 20)).save(broken_root / "PedMasks" / "FudanPed00002_mask.png")
    with pytest.raises(ValueError, match="FudanPed00002_mask.png has no pedestrian"):
        PennFudanDataset(broken_root)[1]


def test_mask_of_the_wrong_size_names_both_files(broken_root):
    Image.new("L", (10, 10), 1).save(broken_root / "PedMasks" / "FudanPed00002_mask.png")
    with pytest.raises(ValueError, match=r"_mask.png is \(10, 10\).*FudanPed00002.png is"):
        PennFudanDataset(broken_root)[1]


def test_rgb_mask_is_refused(broken_root):
    Image.new("RGB", (24, 20), (1, 1, 1)).save(broken_root / "PedMasks" / "FudanPed00002_mask.png")
    with pytest.raises(ValueError, match="single-channel mask.*'RGB'"):
        PennFudanDataset(broken_root)[1]


# ----------------------------------------------------------------------------- splits

def test_split_indices_partition_and_sizes():
    parts = split_indices(170)
    assert list(parts) == list(SPLITS) == ["train", "val", "test"]
    assert [len(parts[s]) for s in SPLITS] == [118, 26, 26]   # round(25.5) == 26
    everything = parts["train"] + parts["val"] + parts["test"]
    assert sorted(everything) == list(range(170))             # disjoint and complete
    assert all(parts[s] == sorted(parts[s]) for s in SPLITS)


def test_split_indices_depend_only_on_the_seed():
    assert split_indices(50, 0.2, 0.1, seed=3) == split_indices(50, 0.2, 0.1, seed=3)
    assert split_indices(50, 0.2, 0.1, seed=3) != split_indices(50, 0.2, 0.1, seed=4)
    assert split_indices(10, 0.0, 0.0) == {"train": list(range(10)), "val": [], "test": []}
    assert split_indices(0) == {"train": [], "val": [], "test": []}


@pytest.mark.parametrize("kwargs, match", [
    ({"val_fraction": -0.1}, "val_fraction must be in"),
    ({"test_fraction": 1.0}, "test_fraction must be in"),
    ({"val_fraction": 0.5, "test_fraction": 0.5}, "must be < 1"),
    ({"num_items": -1}, "num_items must be >= 0"),
])
def test_split_indices_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        split_indices(**{"num_items": 10, **kwargs})


def test_split_gives_subsets_of_the_dataset(fake_root):
    ds = PennFudanDataset(fake_root)
    parts = split_dataset(ds, val_fraction=0.25, test_fraction=0.25, seed=0)
    assert all(isinstance(parts[s], Subset) and parts[s].dataset is ds for s in SPLITS)
    assert [len(parts[s]) for s in SPLITS] == [2, 1, 1]
    ids = sorted(t["image_id"] for s in SPLITS for _, t in parts[s])
    assert ids == [0, 1, 2, 3]


# ----------------------------------------------------------------------------- the --data switch

def test_detection_data_switch(fake_root, tmp_path, monkeypatch):
    from course_lib.data.datasets import DATA_CHOICES, detection_data

    assert DATA_CHOICES == ("synthetic", "pennfudan")
    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path))
    image, target = detection_data("synthetic", "val", num_images=3, image_size=64)[0]
    assert image.shape == (3, 64, 64) and target["masks"].shape[1:] == (64, 64)
    with pytest.raises(ValueError, match="data must be one of"):
        detection_data("coco")
    with pytest.raises(FileNotFoundError, match="download_pennfudan.py"):
        detection_data("pennfudan")  # not downloaded into tmp_path
    monkeypatch.setenv("COURSE_DATA_DIR", str(fake_root.parent))
    parts = [detection_data("pennfudan", s, image_size=48, seed=0) for s in SPLITS]
    assert sum(len(p) for p in parts) == len(PennFudanDataset(fake_root))
    image, target = parts[0][0]
    assert image.shape == (3, 48, 48) and target["semantic"].shape == (48, 48)
