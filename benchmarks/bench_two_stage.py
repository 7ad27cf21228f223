"""R-CNN, Fast R-CNN and Faster R-CNN side by side, and ours against torchvision's Faster R-CNN.

Prints, for the three detectors of ``course_lib.recipes.detection`` (trained from scratch on
synthetic 128 px scenes with 3 classes, held-out test scenes):

* mAP@0.5 and COCO AP, training time, test time per image (proposals + network);
* the RPN's recall at IoU 0.5 with its 100 test-time proposals (target >= 0.90), next to
  selective search's within its first 100 and all of its proposals;
* targets: Faster R-CNN mAP@0.5 >= 0.90 within 5 minutes of training on 2 CPU cores;
* with ``--torchvision``: torchvision's ``FasterRCNN`` built with the same tiny backbone,
  anchors, RoI Align, head sizes and sampling, trained on the same data with the same
  optimiser and budget; ours must not be worse by more than 0.03 mAP@0.5.

The detectors come from the checkpoint cache (``make checkpoints``) unless ``--retrain``;
train times are those measured when they were trained.

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/bench_two_stage.py [--torchvision] [--retrain]
[--quick] [--threads 2]``
"""

from __future__ import annotations

import argparse
import time

import torch
from torchvision.models.detection import FasterRCNN as TorchvisionFasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops import MultiScaleRoIAlign

from course_lib.models.backbone import TinyBackbone
from course_lib.proposals import proposal_recall
from course_lib.recipes.detection import (
    DETECTORS,
    cached_proposals,
    evaluate,
    load_or_train,
    recipe_for,
    scenes,
    train,
)
from course_lib.train import seed_everything

MAP_TARGET, MINUTES_TARGET, RECALL_TARGET, TORCHVISION_MARGIN = 0.90, 5.0, 0.90, 0.03


def torchvision_faster_rcnn(ours, cls=TorchvisionFasterRCNN, **extra) -> TorchvisionFasterRCNN:
    """The torchvision Faster R-CNN with every setting of our ``FasterRCNN`` ``ours``.

    ``cls`` and ``extra``: another torchvision class built on Faster R-CNN's arguments, and
    its own (``MaskRCNN`` and its mask head, for ``bench_mask_rcnn.py``).
    """
    rpn, channels = ours.rpn, ours.backbone.out_channels
    return cls(
        TinyBackbone(), num_classes=None,
        min_size=ours.image_size, max_size=ours.image_size,  # no resizing
        image_mean=[0.0, 0.0, 0.0], image_std=[1.0, 1.0, 1.0],  # no normalisation
        rpn_anchor_generator=AnchorGenerator((rpn.sizes,), (rpn.aspect_ratios,)),
        rpn_pre_nms_top_n_train=rpn.pre_nms_top_n[0], rpn_pre_nms_top_n_test=rpn.pre_nms_top_n[1],
        rpn_post_nms_top_n_train=rpn.post_nms_top_n[0],
        rpn_post_nms_top_n_test=rpn.post_nms_top_n[1],
        rpn_batch_size_per_image=rpn.batch_size_per_image,
        box_roi_pool=MultiScaleRoIAlign(["0"], ours.roi_size, sampling_ratio=2),
        box_head=TwoMLPHead(channels * ours.roi_size**2, ours.box_head.fc6.out_features),
        box_predictor=FastRCNNPredictor(ours.box_head.fc6.out_features, ours.num_classes + 1),
        box_batch_size_per_image=ours.box_batch_size_per_image,
        box_positive_fraction=ours.box_positive_fraction,
        box_score_thresh=ours.box_score_thresh, box_nms_thresh=ours.box_nms_thresh,
        box_detections_per_img=ours.box_detections_per_img, **extra,
    )


def compare_with_torchvision(name: str, build, recipe, info: dict,
                             margin: float = TORCHVISION_MARGIN) -> None:
    """Train torchvision's version of a detector like ours and print the two side by side.

    Args:
        name: the detector's name, for the table.
        build: makes torchvision's model (called after seeding, so its weights are repeatable).
        recipe: our detector's recipe: the same data, optimiser and budget.
        info: our detector's ``load_or_train`` info (its stored metrics and training time).
        margin: how much worse (mAP@0.5) ours may be.
    """
    seed_everything(recipe.seed)
    start = time.perf_counter()
    model, _history, seconds = train(recipe, device="cpu", progress=False, model=build())
    theirs = evaluate(model, recipe, device="cpu")
    ours = info["metrics"]
    print(f"\n{name:16s} {'train':>7s} {'mAP@0.5':>8s} {'AP':>6s} {'test/img':>9s}")
    for label, train_seconds, m in (("course_lib", info["train_seconds"], ours),
                                    ("torchvision", seconds, theirs)):
        print(f"{label:16s} {train_seconds:6.0f}s {m['AP50']:8.3f} {m['AP']:6.3f} "
              f"{1000 * m['test_seconds']:7.1f}ms")
    gap = theirs["AP50"] - ours["AP50"]
    print(f"ours - torchvision = {-gap:+.3f} mAP@0.5 (ours may be worse by at most {margin}): "
          f"{'PASS' if gap <= margin else 'FAIL'} ({time.perf_counter() - start:.0f} s)")


def rpn_recall(model, recipe, budget: int = 100) -> tuple[float, float, float, int]:
    """Pooled recall at IoU 0.5: the RPN's proposals, selective search's first ``budget``, all.

    Returns:
        (RPN recall, selective search recall within ``budget``, within all, GT boxes).
    """
    dataset = scenes(recipe, "test")
    search, _ = cached_proposals(dataset)
    found_rpn = found_ss = found_all = total = 0
    for i in range(len(dataset)):
        image, target = dataset[i]
        gt = target["boxes"]
        if len(gt) == 0:
            continue
        device = next(model.parameters()).device
        proposals = model.proposals([image.to(device)])[0][:budget].cpu()
        found_rpn += round(proposal_recall(proposals, gt) * len(gt))
        found_ss += round(proposal_recall(search[i][:budget], gt) * len(gt))
        found_all += round(proposal_recall(search[i], gt) * len(gt))
        total += len(gt)
    return found_rpn / total, found_ss / total, found_all / total, total


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--torchvision", action="store_true",
                        help="also train torchvision's FasterRCNN on the same budget (~5 min)")
    parser.add_argument("--retrain", action="store_true", help="ignore the checkpoint cache")
    parser.add_argument("--quick", action="store_true", help="the CI budgets")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (2 = the target)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    rows = {}
    for detector in DETECTORS:
        model, info = load_or_train(detector, quick=args.quick, device="cpu", progress=False,
                                    retrain=args.retrain)
        rows[detector] = (model, info)
    recipe = recipe_for("faster_rcnn", args.quick)
    print(f"\nTwo-stage detectors, {recipe.image_size} px synthetic scenes, {recipe.num_classes} "
          f"classes, held-out test scenes; {args.threads} torch threads (CPU)")
    print(f"{'detector':13s} {'train imgs':>10s} {'train':>8s} {'mAP@0.5':>8s} {'AP':>6s} "
          f"{'test/img':>9s} {'proposals':>10s} {'network':>8s}")
    for detector, (_model, info) in rows.items():
        m, r = info["metrics"], info["recipe"]
        print(f"{detector:13s} {r['num_train']:10d} {info['train_seconds']:7.0f}s "
              f"{m['AP50']:8.3f} {m['AP']:6.3f} {1000 * m['test_seconds']:7.0f}ms "
              f"{1000 * m['proposal_seconds']:8.0f}ms {1000 * m['network_seconds']:6.0f}ms")

    faster, info = rows["faster_rcnn"]
    ok = info["metrics"]["AP50"] >= MAP_TARGET and info["train_seconds"] <= 60 * MINUTES_TARGET + 5
    print(f"\nFaster R-CNN: mAP@0.5 {info['metrics']['AP50']:.3f} after "
          f"{info['train_seconds'] / 60:.1f} min of training (target >= {MAP_TARGET} within "
          f"{MINUTES_TARGET:g} min): {'PASS' if ok else 'FAIL'}")
    rpn, ss, ss_all, total = rpn_recall(faster.cpu(), recipe)
    print(f"RPN recall@IoU 0.5 with 100 proposals: {rpn:.3f} over {total} GT boxes (target >= "
          f"{RECALL_TARGET}): {'PASS' if rpn >= RECALL_TARGET else 'FAIL'}; selective search: "
          f"{ss:.3f} within its first 100, {ss_all:.3f} within all")

    if args.torchvision:
        compare_with_torchvision("Faster R-CNN", lambda: torchvision_faster_rcnn(faster), recipe,
                                 info)

if __name__ == "__main__":
    main()
