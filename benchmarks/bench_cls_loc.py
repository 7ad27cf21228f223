"""Classification + localization from scratch: accuracy, mean IoU and wall time.

Target on 2 CPU cores: accuracy >= 0.95 and mean IoU >= 0.80 on held-out single-object scenes
in <= 60 s of training. Run: ``python benchmarks/bench_cls_loc.py [--epochs 4 --num-train 3000]``.
"""

import argparse
import time

import torch

from course_lib.recipes.cls_loc import evaluate_cls_loc, single_object_data, train_cls_loc
from course_lib.train import get_device


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-train", type=int, default=3000)
    parser.add_argument("--num-test", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    start = time.perf_counter()
    single_object_data("train", args.num_train, args.image_size)  # build or load the caches
    test = single_object_data("test", args.num_test, args.image_size)
    data_seconds = time.perf_counter() - start

    start = time.perf_counter()
    model, history = train_cls_loc(num_train=args.num_train, image_size=args.image_size,
                                   epochs=args.epochs, device=args.device, progress=False)
    train_seconds = time.perf_counter() - start
    result = evaluate_cls_loc(model, test, device=args.device)

    print(f"device {get_device(args.device)}, torch threads {torch.get_num_threads()}, "
          f"{args.num_train} train / {args.num_test} test images of {args.image_size} px, "
          f"{args.epochs} epochs")
    print(f"data (generate or load cache): {data_seconds:.1f} s")
    print(f"training: {train_seconds:.1f} s (target <= 60 s), final epoch losses: "
          + ", ".join(f"{k} {v[-1]:.3f}" for k, v in history.epoch_losses.items()))
    print(f"held-out accuracy {result['accuracy']:.3f} (target >= 0.95), "
          f"mean IoU {result['mean_iou']:.3f} (target >= 0.80), "
          f"IoU >= 0.5 for {result['iou_at_0.5']:.1%}, "
          f"{result['images_per_second']:.0f} images/s at inference")
    ok = (result["accuracy"] >= 0.95 and result["mean_iou"] >= 0.80 and train_seconds <= 60)
    print("targets:", "met" if ok else "NOT met")


if __name__ == "__main__":
    main()
