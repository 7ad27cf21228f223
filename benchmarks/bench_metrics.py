"""Speed of ``course_lib.metrics.coco_evaluate`` against pycocotools on a COCO-sized val set.

Data: 5,000 random images, ~18k GT boxes and ~27k detections over 10 classes. Detections are
jittered copies of most GT boxes plus false positives, with random scores; a few images have
crowd regions, some are empty. Prints both stats vectors, their max abs difference, the best
of a few runs for each and the speed ratio.

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/bench_metrics.py [--images N] [--repeat R]``
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import time

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from course_lib.coco_format import COCO_STAT_NAMES, pycocotools_evaluate, to_coco_dt, to_coco_gt
from course_lib.metrics import coco_evaluate


def make_dataset(num_images: int, num_classes: int = 10, seed: int = 0):
    """Random targets/predictions lists that look like a detector's output on a val set."""
    rng = np.random.default_rng(seed)
    targets, preds = [], []
    for _ in range(num_images):
        size = rng.uniform(200, 640)
        num_gt = 0 if rng.random() < 0.05 else rng.poisson(3.8)  # some empty images
        # Box sizes log-uniform from ~8 px to ~300 px: small, medium and large objects.
        wh = np.exp(rng.uniform(np.log(8), np.log(300), (num_gt, 2)))
        xy = rng.uniform(0, size, (num_gt, 2))
        gt_boxes = np.concatenate([xy, xy + wh], axis=1)
        gt_labels = rng.integers(1, num_classes + 1, num_gt)
        iscrowd = np.zeros(num_gt, dtype=np.int64)
        if num_gt and rng.random() < 0.03:  # a crowd region in ~3% of the images
            iscrowd[0] = 1
            gt_boxes[0, 2:] = gt_boxes[0, :2] + rng.uniform(100, 300, 2)

        # Detections: ~85% of the GT found (jittered, sometimes with the wrong class) ...
        found = rng.random(num_gt) < 0.85
        jitter = rng.normal(0, 0.07, (found.sum(), 4)) * np.repeat(wh[found], 2, axis=0
                                                                    ).reshape(-1, 4)
        det_boxes = [gt_boxes[found] + jitter]
        det_labels = [np.where(rng.random(found.sum()) < 0.1,
                               rng.integers(1, num_classes + 1, found.sum()), gt_labels[found])]
        # ... plus false positives anywhere.
        num_fp = rng.poisson(2.2)
        fp_xy = rng.uniform(0, size, (num_fp, 2))
        fp_wh = np.exp(rng.uniform(np.log(8), np.log(300), (num_fp, 2)))
        det_boxes.append(np.concatenate([fp_xy, fp_xy + fp_wh], axis=1))
        det_labels.append(rng.integers(1, num_classes + 1, num_fp))
        det_boxes, det_labels = np.concatenate(det_boxes), np.concatenate(det_labels)
        scores = rng.random(len(det_boxes))

        targets.append({"boxes": torch.tensor(gt_boxes, dtype=torch.float32),
                        "labels": torch.tensor(gt_labels), "iscrowd": torch.tensor(iscrowd)})
        preds.append({"boxes": torch.tensor(det_boxes, dtype=torch.float32),
                      "labels": torch.tensor(det_labels),
                      "scores": torch.tensor(scores, dtype=torch.float32)})
    return targets, preds


def run_pycocotools(gt_json: dict, dt_json: list) -> dict:
    """Run pycocotools alone, from json dicts already built (building them is not timed)."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt_json
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(dt_json)
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return dict(zip(COCO_STAT_NAMES, map(float, evaluator.stats), strict=True))


def best_time(fn, repeat: int, setup=lambda: ()) -> tuple[float, dict]:
    """Best wall time of ``fn(*setup())`` over ``repeat`` runs (setup is not timed)."""
    times = []
    for _ in range(repeat):
        args = setup()
        start = time.perf_counter()
        result = fn(*args)
        times.append(time.perf_counter() - start)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    targets, preds = make_dataset(args.images)
    num_gt = sum(len(t["boxes"]) for t in targets)
    num_dt = sum(len(p["boxes"]) for p in preds)
    num_crowd = sum(int(t["iscrowd"].sum()) for t in targets)
    print(f"{args.images} images, {num_gt} GT boxes ({num_crowd} crowd), {num_dt} detections")

    # Ours: from the tensors (its conversion is timed). pycocotools: from json dicts built
    # beforehand, the conversion not timed (loadRes edits the dicts, so a fresh copy each run).
    labels = torch.cat([d["labels"] for d in targets + preds]).unique().tolist()
    gt_json, dt_json = to_coco_gt(targets, category_ids=labels), to_coco_dt(preds)
    t_ours, ours = best_time(coco_evaluate, args.repeat, lambda: (targets, preds))
    t_ref, ref = best_time(run_pycocotools, args.repeat,
                           lambda: (copy.deepcopy(gt_json), copy.deepcopy(dt_json)))
    check = pycocotools_evaluate(targets, preds)  # the test helper agrees with the timed run
    assert all(check[name] == ref[name] for name in COCO_STAT_NAMES)

    print(f"{'':>6} {'course_lib':>12} {'pycocotools':>12}")
    for name in COCO_STAT_NAMES:
        print(f"{name:>6} {ours[name]:12.9f} {ref[name]:12.9f}")
    diff = max(abs(ours[name] - ref[name]) for name in COCO_STAT_NAMES)
    print(f"max abs difference: {diff:.3g}")
    print(f"time (best of {args.repeat}): course_lib {t_ours:.3f} s, pycocotools {t_ref:.3f} s "
          "(pycocotools: COCO() from dict + loadRes + evaluate + accumulate + summarize; "
          "course_lib: from the tensors)")
    print(f"speed ratio: {t_ref / t_ours:.1f}x")


if __name__ == "__main__":
    main()
