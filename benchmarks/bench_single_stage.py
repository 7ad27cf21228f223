"""SSD and YOLO against the two-stage family: accuracy, training time and speed; vs torchvision.

Prints, for the detectors of ``course_lib.recipes.detection`` (trained from scratch on synthetic
128 px scenes with 3 classes, 200 held-out test scenes):

* targets: SSD and YOLO each mAP@0.5 >= 0.85 within 5 minutes of training on 2 CPU cores, and
  inference at least 3x faster per image than our Faster R-CNN, timed in this run, one image
  at a time (latency) and in batches of 16 (throughput). Every detector is timed in the same
  deployment form (``course_lib.models.fusion.inference_copy``: BatchNorm folded into the
  convolutions, channels-last layout); its outputs equal the trained model's. SSD and YOLO use
  the lighter backbones of ``course_lib.recipes.detection.backbone_for`` (first stage 8
  channels instead of 16; SSD's map 48 channels instead of 64) and YOLO a head of 96
  channels, not 128 (the recipe module's docstring says why);
* the lecture's "understanding paper results" table, measured here for all five detectors:
  mAP@0.5, COCO AP, AP50, AP75, APs/APm/APl, parameters, GFLOPs per image
  (``torch.utils.flop_counter``), latency and images/s (``--table``);
* with ``--torchvision``: torchvision's ``SSD`` built with the same backbone and extra maps,
  the same default boxes and head settings, trained on the same data with the same optimiser
  and budget; ours must not be worse by more than 0.03 mAP@0.5.

The detectors come from the checkpoint cache (``make checkpoints``) unless ``--retrain``;
training times are those measured when they were trained (on an otherwise idle machine).

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/bench_single_stage.py [--table] [--torchvision]
[--retrain] [--quick] [--threads 2] [--device cpu|cuda|auto]``. The targets are for the CPU;
``--device cuda`` times the same (CPU-trained) detectors on a GPU and evaluates them there again.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from bench_two_stage import compare_with_torchvision  # this folder is on sys.path
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
from torchvision.models.detection.ssd import SSD as TorchvisionSSD

from course_lib.cost import detector_cost, images_per_second, measure_latency
from course_lib.device import get_device
from course_lib.models.fusion import inference_copy
from course_lib.models.ssd import SSDFeatures
from course_lib.recipes.detection import (
    DETECTORS,
    SEARCH_PROPOSALS,
    SINGLE_STAGE,
    backbone_for,
    cached_proposals,
    evaluate,
    load_or_train,
    recipe_for,
    scenes,
)

MAP_TARGET, MINUTES_TARGET, SPEEDUP_TARGET, TORCHVISION_MARGIN = 0.85, 5.0, 3.0, 0.03
BATCH = 16  # images per call for the throughput
NAMES = {"rcnn": "R-CNN", "fast_rcnn": "Fast R-CNN", "faster_rcnn": "Faster R-CNN",
         "ssd": "SSD", "yolo": "YOLO"}


def torchvision_ssd(ours) -> TorchvisionSSD:
    """The torchvision ``SSD`` with every setting of our ``SSD`` ``ours`` (its own head)."""
    return TorchvisionSSD(
        SSDFeatures(backbone_for("ssd"), num_extra=len(ours.feature_sizes) - 1),
        DefaultBoxGenerator([list(r) for r in ours.aspect_ratios], scales=ours.scales),
        (ours.image_size, ours.image_size), ours.num_classes + 1,
        image_mean=[0.0, 0.0, 0.0], image_std=[1.0, 1.0, 1.0],  # no normalisation
        score_thresh=ours.score_thresh, nms_thresh=ours.nms_thresh,
        detections_per_img=ours.detections_per_img, iou_thresh=ours.iou_threshold,
        topk_candidates=ours.topk_candidates, positive_fraction=1 / (1 + ours.neg_pos_ratio),
    )


def throughput(model, detector: str, recipe, device: torch.device) -> float:
    """Images per second on 64 held-out scenes, in batches of ``BATCH`` (proposals cached)."""
    dataset = scenes(recipe, "test")
    images = [dataset[i][0].to(device) for i in range(min(64, len(dataset)))]
    if detector in SEARCH_PROPOSALS:
        proposals = [p.to(device) for p in cached_proposals(dataset)[0][: len(images)]]
        return images_per_second(model, images, None, proposals, batch_size=BATCH, repeats=3)
    return images_per_second(model, images, batch_size=BATCH, repeats=3)


def latencies(models: dict, quick: bool, device: torch.device, rounds: int = 3
              ) -> dict[str, float]:
    """Median ms per image of each detector, one image at a time, over the held-out scenes.

    The detectors take turns, each timing all the scenes one after the other (after ten untimed
    images, so that its memory and caches are warm, as when a detector runs on a stream of
    images), and this ``rounds`` times: a busy moment of the machine then touches every
    detector's sample. R-CNN and Fast R-CNN get their cached proposals: this times their
    network only.
    """
    calls = {}
    for detector, model in models.items():
        dataset = scenes(recipe_for(detector, quick), "test")
        images = [dataset[i][0].to(device) for i in range(len(dataset))]
        proposals = None
        if detector in SEARCH_PROPOSALS:
            proposals = [p.to(device) for p in cached_proposals(dataset)[0]]
        calls[detector] = (model.eval(), images, proposals)

    def call(detector: str, i: int):
        model, images, proposals = calls[detector]
        output = model([images[i]]) if proposals is None else model(
            [images[i]], None, [proposals[i]])
        if device.type == "cuda":  # CUDA runs asynchronously: wait for the result
            torch.cuda.synchronize(device)
        return output

    times = {detector: [] for detector in calls}
    with torch.inference_mode():
        for _ in range(rounds):
            for detector, (_, images, _) in calls.items():
                for i in range(10):
                    call(detector, i)
                for i in range(len(images)):
                    start = time.perf_counter()
                    call(detector, i)
                    times[detector].append(time.perf_counter() - start)
    return {detector: 1000 * statistics.median(t) for detector, t in times.items()}


def backbone_share(rows: dict, recipe, device: torch.device) -> None:
    """The backbones alone, one image at a time, next to the whole detectors.

    The backbones are freshly initialised (a convolution's time does not depend on its
    weights) and in the deployment form. It shows how much of a single-stage detector's time
    is its backbone, and what the lighter ones of ``backbone_for`` save.
    """
    image = scenes(recipe, "test")[0][0][None].to(device)  # (1, 3, S, S)
    print(f"\n{'backbone alone, one image':38s} {'ms':>6s}")
    for detector in ("faster_rcnn", "yolo", "ssd"):
        backbone = backbone_for(detector).eval().to(device)
        widths = dict.fromkeys(m.out_channels for m in backbone.modules()
                               if isinstance(m, torch.nn.Conv2d))  # per stage, in order
        label = f"{NAMES[detector]}'s ({', '.join(map(str, widths))} channels)"
        ms = measure_latency(inference_copy(backbone), image, warmup=10, repeats=200)["median_ms"]
        print(f"{label:38s} {ms:6.2f}")
    print("whole detectors (above): " + ", ".join(
        f"{NAMES[d]} {rows[d][2]:.2f} ms" for d in ("faster_rcnn", *SINGLE_STAGE)))


def cost_table(rows: dict, recipe, device: torch.device) -> None:
    """The "understanding paper results" table of every detector in ``rows``."""
    dataset = scenes(recipe, "test")
    images = [dataset[i][0].to(device) for i in range(16)]
    print(f"\n{'detector':13s} {'mAP@.5':>7s} {'AP':>6s} {'AP50':>6s} {'AP75':>6s} {'APs':>6s} "
          f"{'APm':>6s} {'APl':>6s} {'params':>7s} {'GFLOPs':>7s} {'ms/img':>8s} {'img/s':>7s}")
    for detector, (model, info, latency_ms, ips) in rows.items():
        m = info["metrics"]
        extra = ()
        if detector in SEARCH_PROPOSALS:
            extra = (None, [p.to(device) for p in cached_proposals(dataset)[0][:16]])
        cost = detector_cost(model, images, extra=extra, warmup=1, repeats=3)
        search_ms = 1000 * m["proposal_seconds"]
        print(f"{NAMES[detector]:13s} {m['AP50']:7.3f} {m['AP']:6.3f} {m['AP50']:6.3f} "
              f"{m['AP75']:6.3f} {m['APs']:6.3f} {m['APm']:6.3f} {m['APl']:6.3f} "
              f"{cost.params_m:6.2f}M {cost.gflops_per_image:7.3f} {latency_ms + search_ms:8.1f} "
              f"{1000 / (1000 / ips + search_ms):7.1f}")
    print("ms/img: one image at a time, median over the held-out scenes; img/s: batches of "
          f"{BATCH}. R-CNN and Fast R-CNN include selective search (cached; its time measured "
          "when computed). GFLOPs count convolutions and matrix products (torch.utils."
          "flop_counter), not selective search.")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", action="store_true",
                        help="also the five-detector table (R-CNN and Fast R-CNN included)")
    parser.add_argument("--torchvision", action="store_true",
                        help="also train torchvision's SSD on the same budget (~5 min)")
    parser.add_argument("--retrain", action="store_true", help="ignore the checkpoint cache")
    parser.add_argument("--quick", action="store_true", help="the CI budgets")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (2 = the target)")
    parser.add_argument("--device", default="cpu",
                        help="where to time and re-evaluate the detectors: cpu (the targets), "
                             "cuda or auto; the checkpoints are trained on CPU")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = get_device(args.device)

    chosen = DETECTORS if args.table else ("faster_rcnn", *SINGLE_STAGE)
    loaded = {detector: load_or_train(detector, quick=args.quick, device="cpu", progress=False,
                                      retrain=args.retrain and detector in SINGLE_STAGE)
              for detector in chosen}
    loaded = {detector: (model.to(device), info) for detector, (model, info) in loaded.items()}
    if device.type != "cpu":
        for detector, (model, info) in loaded.items():
            again = evaluate(model, recipe_for(detector, args.quick), device=device)
            print(f"{NAMES[detector]}: mAP@0.5 {again['AP50']:.3f} evaluated on {device} "
                  f"({info['metrics']['AP50']:.3f} on cpu after training)")
    # every detector is timed in the same deployment form (BatchNorm folded, channels-last)
    deployed = {detector: inference_copy(model) for detector, (model, _) in loaded.items()}
    latency = latencies(deployed, args.quick, device)
    rows = {detector: (deployed[detector], info, latency[detector],
                       throughput(deployed[detector], detector, recipe_for(detector, args.quick),
                                  device))
            for detector, (_, info) in loaded.items()}

    recipe = recipe_for("ssd", args.quick)
    print(f"\nSingle-stage detectors, {recipe.image_size} px synthetic scenes, "
          f"{recipe.num_classes} classes, {recipe.num_test} held-out scenes; timed on {device}"
          + (f" with {args.threads} torch threads" if device.type == "cpu" else
             f" ({torch.cuda.get_device_name(device)})"))
    print(f"{'detector':13s} {'train imgs':>10s} {'epochs':>6s} {'train':>7s} {'mAP@0.5':>8s} "
          f"{'AP':>6s} {'ms/img':>7s} {'img/s':>7s}")
    for detector in ("faster_rcnn", *SINGLE_STAGE):
        _model, info, latency_ms, ips = rows[detector]
        m, r = info["metrics"], info["recipe"]
        print(f"{NAMES[detector]:13s} {r['num_train']:10d} {info['history'].epochs_done:6d} "
              f"{info['train_seconds']:6.0f}s {m['AP50']:8.3f} {m['AP']:6.3f} {latency_ms:7.2f} "
              f"{ips:7.0f}")

    faster_ms, faster_ips = rows["faster_rcnn"][2:]
    for detector in SINGLE_STAGE:
        _model, info, latency_ms, ips = rows[detector]
        accurate = info["metrics"]["AP50"] >= MAP_TARGET
        in_time = info["train_seconds"] <= 60 * MINUTES_TARGET + 5
        speedup, batch_speedup = faster_ms / latency_ms, ips / faster_ips
        fast = min(speedup, batch_speedup) >= SPEEDUP_TARGET
        print(f"{NAMES[detector]}: mAP@0.5 {info['metrics']['AP50']:.3f} after "
              f"{info['train_seconds'] / 60:.1f} min (target >= {MAP_TARGET} within "
              f"{MINUTES_TARGET:g} min): {'PASS' if accurate and in_time else 'FAIL'}; "
              f"{speedup:.1f}x faster than Faster R-CNN one image at a time, {batch_speedup:.1f}x "
              f"in batches of {BATCH} (target >= {SPEEDUP_TARGET:g}x): "
              f"{'PASS' if fast else 'FAIL'}")

    backbone_share(rows, recipe, device)
    if args.table:
        cost_table(rows, recipe, device)

    if args.torchvision:
        ours_model, info = rows["ssd"][:2]
        compare_with_torchvision("SSD", lambda: torchvision_ssd(ours_model), recipe, info,
                                 TORCHVISION_MARGIN)

if __name__ == "__main__":
    main()
