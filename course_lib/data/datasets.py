"""Penn-Fudan pedestrians: a small real dataset with instance masks, in the synthetic data's format.

170 street photos (96 taken around the University of Pennsylvania, 74 around Fudan University)
with 345 pedestrians, each with a pixel mask. Fetch it once with
``python data_scripts/download_pennfudan.py``. It is optional: every lesson runs on synthetic data
(``course_lib.data.synthetic``) without it.

Layout on disk, as in the official zip::

    PennFudanPed/
        PNGImages/FudanPed00001.png ...        RGB photos, about 300-500 pixels a side
        PedMasks/FudanPed00001_mask.png ...    one value per pedestrian: 0 background, 1..N
        Annotation/  added-object-list.txt  readme.txt     (not needed here)

Shape shorthand: N pedestrians in an image, H x W the image size.

Each item is ``(image, target)`` with the same target as the synthetic scenes:
    image (Tensor[3, H, W]): float32 RGB in [0, 1]
    boxes (Tensor[N, 4]): float32 ``(x1, y1, x2, y2)`` tight around each mask (x2 = last column
        + 1, so that x2 - x1 is the width in pixels)
    labels (Tensor[N]): int64, all 1 (pedestrian); 0 is background
    masks (Tensor[N, H, W]): uint8, 1 inside the pedestrian
    area (Tensor[N]): float32, pixels in each mask
    iscrowd (Tensor[N]): int64 zeros
    semantic (Tensor[H, W]): int64, 1 where any pedestrian is, else 0
    image_id (int): the index of the image in the dataset
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset, Subset

from course_lib.data import data_dir
from course_lib.data.synthetic import SyntheticShapes
from course_lib.data.targets import instances_to_target
from course_lib.data.transforms import Resize

CLASS_NAMES: tuple[str, ...] = ("background", "pedestrian")
SPLITS: tuple[str, ...] = ("train", "val", "test")  # the synthetic data's split names
DOWNLOAD_HINT = ("Download it once with `python data_scripts/download_pennfudan.py` (about 51 MB), "
                 "or pass root= the folder that holds PNGImages/ and PedMasks/. Every lesson also "
                 "runs on synthetic data without it (course_lib.data.synthetic).")


def default_root() -> Path:
    """Where the download script puts Penn-Fudan: ``data_dir() / "PennFudanPed"``."""
    return data_dir() / "PennFudanPed"


def _open_png(path: Path, mode: str | None = None) -> Image.Image:
    """Open and fully decode an image; a missing, unreadable or truncated file names itself."""
    try:
        with Image.open(path) as img:
            img.load()  # decode now, so that a truncated file fails here
            return img.convert(mode) if mode else img.copy()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} is missing") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"cannot read {path}: {err}. The file is corrupt; download the "
                         "dataset again (delete its folder, then run "
                         "`python data_scripts/download_pennfudan.py`).") from None


def read_image(path: str | Path) -> Tensor:
    """Read an image file as ``Tensor[3, H, W]`` float32 RGB in [0, 1]."""
    array = np.asarray(_open_png(Path(path), "RGB"))               # (H, W, 3) uint8
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255  # (3, H, W)


def read_label_image(path: str | Path) -> Tensor:
    """Read a Penn-Fudan mask file as ``Tensor[H, W]`` int64 instance ids (0 background).

    The masks are palette ("P") or grey ("L") PNGs whose pixel *values* are the ids; they must
    not be converted to RGB or grey, which would replace each id by its palette colour.
    """
    img = _open_png(Path(path))
    if img.mode not in ("P", "L", "1", "I", "I;16"):
        raise ValueError(f"{path}: expected a single-channel mask (PNG mode P or L), "
                         f"got mode {img.mode!r}")
    return torch.from_numpy(np.array(img, dtype=np.int64))  # (H, W)


class PennFudanDataset(Dataset):
    """The Penn-Fudan pedestrians, one ``(image, target)`` per photo (see the module docstring).

    Args:
        root: the ``PennFudanPed`` folder (or the folder that contains it); default
            ``default_root()``, where the download script puts it.
        transforms: optional ``transforms(image, target) -> (image, target)``, applied last.

    Raises:
        FileNotFoundError: the folder, ``PNGImages/`` or ``PedMasks/`` is missing, there are no
            images, or an image has no mask.
    """

    def __init__(self, root: str | Path | None = None,
                 transforms: Callable[[Tensor, dict], tuple[Tensor, dict]] | None = None):
        root = Path(root) if root is not None else default_root()
        if not (root / "PNGImages").exists() and (root / "PennFudanPed" / "PNGImages").exists():
            root = root / "PennFudanPed"
        if not root.is_dir():
            raise FileNotFoundError(f"Penn-Fudan not found: {root} does not exist. {DOWNLOAD_HINT}")
        for sub in ("PNGImages", "PedMasks"):
            if not (root / sub).is_dir():
                raise FileNotFoundError(f"{root} has no {sub}/ folder: it is not (or not all of) "
                                        f"the Penn-Fudan dataset. {DOWNLOAD_HINT}")
        self.root = root
        self.transforms = transforms
        self.image_paths = sorted((root / "PNGImages").glob("*.png"))
        if not self.image_paths:
            raise FileNotFoundError(f"{root / 'PNGImages'} holds no .png images. {DOWNLOAD_HINT}")
        self.mask_paths = [root / "PedMasks" / f"{p.stem}_mask.png" for p in self.image_paths]
        for image_path, mask_path in zip(self.image_paths, self.mask_paths, strict=True):
            if not mask_path.is_file():
                raise FileNotFoundError(f"the image {image_path} has no mask: {mask_path} is "
                                        f"missing. {DOWNLOAD_HINT}")

    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, index: int) -> tuple[Tensor, dict]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} is out of range for {len(self)} images")
        index = index % len(self)
        image_path, mask_path = self.image_paths[index], self.mask_paths[index]
        image = read_image(image_path)                             # (3, H, W)
        label_image = read_label_image(mask_path)                  # (H, W)
        if label_image.shape != image.shape[1:]:
            raise ValueError(f"{mask_path} is {tuple(label_image.shape)} (H, W) but its image "
                             f"{image_path} is {tuple(image.shape[1:])}")
        num_people = int((torch.unique(label_image) != 0).sum())
        if num_people == 0:
            raise ValueError(f"{mask_path} has no pedestrian (every pixel is 0)")
        labels = torch.ones(num_people, dtype=torch.int64)         # every object: a pedestrian
        target = instances_to_target(label_image, labels, image_id=index)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    def __repr__(self) -> str:
        return f"PennFudanDataset(root={str(self.root)!r}, images={len(self)})"


def split_indices(num_items: int, val_fraction: float = 0.15, test_fraction: float = 0.15,
                  seed: int = 0) -> dict[str, list[int]]:
    """Shuffle ``range(num_items)`` with ``seed`` and cut it into train, val and test indices.

    ``round(num_items * fraction)`` items go to val and to test, the rest to train. The same
    arguments always give the same split; each list is sorted.

    Args:
        num_items: how many items to split.
        val_fraction: share of the items for validation, in [0, 1).
        test_fraction: share of the items for the test set, in [0, 1).
        seed: seed of the shuffle.

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}``, disjoint, together ``range(num_items)``.
    """
    if num_items < 0:
        raise ValueError(f"num_items must be >= 0, got {num_items}")
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 <= value < 1:
            raise ValueError(f"{name} must be in [0, 1), got {value}")
    if val_fraction + test_fraction >= 1:
        raise ValueError("val_fraction + test_fraction must be < 1, got "
                         f"{val_fraction} + {test_fraction}")
    order = torch.randperm(num_items, generator=torch.Generator().manual_seed(seed)).tolist()
    n_test = round(num_items * test_fraction)
    n_val = round(num_items * val_fraction)
    parts = {"test": order[:n_test], "val": order[n_test:n_test + n_val],
             "train": order[n_test + n_val:]}
    return {name: sorted(parts[name]) for name in SPLITS}


def split_dataset(dataset: Dataset, val_fraction: float = 0.15, test_fraction: float = 0.15,
          seed: int = 0) -> dict[str, Subset]:
    """Split a dataset into ``{"train", "val", "test"}`` subsets (see ``split_indices``).

    Example: ``parts = split_dataset(PennFudanDataset())``, then
    ``DataLoader(parts["train"], ...)``.
    With 170 images and the defaults: 118 train, 26 val, 26 test.
    """
    indices = split_indices(len(dataset), val_fraction, test_fraction, seed)
    return {name: Subset(dataset, indices[name]) for name in SPLITS}


DATA_CHOICES: tuple[str, ...] = ("synthetic", "pennfudan")


def detection_data(data: str = "synthetic", split: str = "train", num_images: int = 1000,
                   image_size: int = 128, seed: int = 0) -> Dataset:
    """The detection data a lesson trains on: the ``--data synthetic|pennfudan`` switch.

    Args:
        data: ``"synthetic"`` (default, always available) or ``"pennfudan"`` (after
            ``python data_scripts/download_pennfudan.py``).
        split: ``"train"``, ``"val"`` or ``"test"``.
        num_images: synthetic only: how many images (Penn-Fudan has 170 in all).
        image_size: the side of the square images (Penn-Fudan's are resized to it).
        seed: the data seed (synthetic scenes; Penn-Fudan's split).

    Returns:
        A dataset of ``(image Tensor[3, S, S], target)`` pairs with the same target keys.
    """
    if data == "synthetic":
        return SyntheticShapes(split, num_images, kind="detection", image_size=image_size,
                               seed=seed, progress=False)
    if data == "pennfudan":
        return split_dataset(PennFudanDataset(transforms=Resize(image_size)), seed=seed)[split]
    raise ValueError(f"data must be one of {DATA_CHOICES}, got {data!r}")
