"""Generate the synthetic shape scenes once and cache them under the data folder.

Without arguments it builds every split the lessons use (``LESSON_DATASETS`` below); the
lessons then load them instantly with ``SyntheticShapes(...)`` and the same arguments. Each
split is one file in ``<repo>/data/synthetic/`` (or ``$COURSE_DATA_DIR/synthetic``, or
``--data-dir``/synthetic); one that already exists and is intact is not made again.

Examples::

    python data_scripts/make_synthetic.py                      # everything the lessons use
    python data_scripts/make_synthetic.py --kind detection     # its lesson splits
    python data_scripts/make_synthetic.py --kind segmentation --split test --num-images 200
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from course_lib.data import data_dir
from course_lib.data.synthetic import KINDS, SPLIT_CODES, SyntheticShapes

# (kind, split, num_images) the lessons load, all 128x128, 5 classes, seed 0.
# (kind, split, number of images, image size)
LESSON_DATASETS = [
    # classification + localization: lesson 01, benchmarks/bench_cls_loc.py
    ("single", "train", 3000, 64), ("single", "test", 1000, 64),
    # detection and segmentation lessons (02-04, 07, 08)
    ("detection", "train", 2000, 128), ("detection", "val", 500, 128),
    ("segmentation", "train", 1000, 128), ("segmentation", "val", 250, 128),
]  # fmt: skip


def build(kind, split, num_images, image_size, num_classes, seed, root) -> None:
    start = time.perf_counter()
    dataset = SyntheticShapes(split=split, num_images=num_images, kind=kind,
                              image_size=image_size, num_classes=num_classes, seed=seed,
                              cache=True, root=root, progress=True)
    size_mb = dataset.cache_path.stat().st_size / 1e6
    print(f"{kind:>12} {split:<5} {num_images:>5} images {image_size}px: "
          f"{dataset.cache_path} ({size_mb:.0f} MB, {time.perf_counter() - start:.1f} s)")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description="Generate and cache the synthetic shape scenes of the lessons.")
    parser.add_argument("--kind", choices=KINDS,
                        help="build this kind only (default: every lesson dataset)")
    parser.add_argument("--split", choices=tuple(SPLIT_CODES),
                        help="with --kind: this split only (default: the lessons' splits)")
    parser.add_argument("--num-images", type=int,
                        help="images per split (default: the lessons' number, see the script)")
    parser.add_argument("--image-size", type=int,
                        help="side of the images (default: the lessons' size, see the script)")
    parser.add_argument("--num-classes", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="data folder (default: $COURSE_DATA_DIR or <repo>/data)")
    args = parser.parse_args(argv)
    if args.split and not args.kind:
        parser.error("--split needs --kind")

    root = (args.data_dir or data_dir()) / "synthetic"
    jobs = [job for job in LESSON_DATASETS
            if args.kind in (None, job[0]) and args.split in (None, job[1])]
    if args.kind and args.split and not jobs:  # a split the lessons do not use (test)
        jobs = [(args.kind, args.split, 500, 128)]
    for kind, split, num_images, image_size in jobs:
        build(kind, split, args.num_images or num_images, args.image_size or image_size,
              args.num_classes, args.seed, root)


if __name__ == "__main__":
    main()
