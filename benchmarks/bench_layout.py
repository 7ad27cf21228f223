"""What the channels-last layout and BatchNorm folding buy on this CPU.

Prints two measurements, each against the ordinary (contiguous) layout:

* training: steps per second of lesson 07's U-Net (the one-minute recipe's model, width 8,
  batches of 16 images of 64 px, AdamW), as ``build_model`` gives it (channels-last) and in the
  contiguous layout;
* inference, one image at a time: median milliseconds of Faster R-CNN, SSD and YOLO from the
  checkpoint cache (``make checkpoints``), contiguous, channels-last only, and in the deployment
  form of ``course_lib.models.fusion.inference_copy`` (BatchNorm
  folded + channels-last), with the single-stage speed-ups over Faster R-CNN.

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/bench_layout.py [--threads 2]`` on a quiet
machine (timings of a busy one mean little).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F

from course_lib.models.fusion import inference_copy
from course_lib.recipes import detection, segmentation


def training_steps_per_second(model: torch.nn.Module, steps: int = 30) -> float:
    """Steps/s of ``model`` on random 64 px batches of 16 (after 5 untimed steps)."""
    torch.manual_seed(0)
    images, labels = torch.rand(16, 3, 64, 64), torch.randint(0, 4, (16, 64, 64))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    for step in range(5 + steps):
        if step == 5:
            start = time.perf_counter()
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return steps / (time.perf_counter() - start)


@torch.inference_mode()
def latency_ms(model: torch.nn.Module, images: list[torch.Tensor]) -> float:
    """Median ms of ``model([image])`` over ``images`` (after 10 untimed calls)."""
    for image in images[:10]:
        model([image])
    times = []
    for image in images:
        start = time.perf_counter()
        model([image])
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")

    recipe = segmentation.target_recipe("unet", quick=False)
    last = segmentation.build_model(recipe)
    plain = copy.deepcopy(last).to(memory_format=torch.contiguous_format)
    rates = {"contiguous": training_steps_per_second(plain),
             "channels-last": training_steps_per_second(last)}
    print(f"\nU-Net (width {recipe.width}) training, batches of 16 x 64 px: "
          + ", ".join(f"{name} {rate:.1f} steps/s" for name, rate in rates.items())
          + f" ({rates['channels-last'] / rates['contiguous']:.2f}x)")

    names = ("faster_rcnn", "ssd", "yolo")
    models = {name: detection.load_or_train(name, quick=False, device="cpu", progress=False)[0]
              for name in names}
    data = detection.scenes(detection.recipe_for("ssd", quick=False), "test")
    images = [data[i][0] for i in range(100)]
    forms = {
        "contiguous": lambda m: copy.deepcopy(m).eval().to(memory_format=torch.contiguous_format),
        "channels-last": lambda m: copy.deepcopy(m).eval().to(memory_format=torch.channels_last),
        "folded + channels-last": inference_copy,
    }
    print(f"\none image at a time, median of {len(images)} held-out scenes (ms):")
    print(f"{'form':24s} " + " ".join(f"{n:>12s}" for n in names) + "   SSD, YOLO vs Faster")
    for form, make in forms.items():
        ms = {name: latency_ms(make(model), images) for name, model in models.items()}
        print(f"{form:24s} " + " ".join(f"{ms[n]:12.2f}" for n in names)
              + f"   {ms['faster_rcnn'] / ms['ssd']:.2f}x, {ms['faster_rcnn'] / ms['yolo']:.2f}x")


if __name__ == "__main__":
    main()
