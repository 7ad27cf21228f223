"""course_lib.cost: parameter and FLOP counts against hand counts, latency and throughput."""

import math
import time

import pytest
import torch
from torch import nn

from course_lib.cost import (
    DetectorCost,
    count_flops,
    count_parameters,
    detector_cost,
    gflops_per_image,
    images_per_second,
    measure_latency,
)
from course_lib.models.fast_rcnn import FastRCNN
from course_lib.models.faster_rcnn import FasterRCNN

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


class TinyNet(nn.Module):
    """conv 3->4 (3x3, pad 1) + ReLU + linear (4*8*8 -> 5) on 8x8 images, list or batch in."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 5)
        self.modes = []  # self.training at each call

    def forward(self, images, scale=None):
        self.modes.append(self.training)
        batch = torch.stack(list(images)) if isinstance(images, list) else images
        return self.fc(torch.relu(self.conv(batch)).flatten(1))


TINY_FLOPS_PER_IMAGE = 2 * 4 * 8 * 8 * 3 * 3 * 3 + 2 * (4 * 8 * 8) * 5  # conv + linear


def linear_flops_per_row(module):
    return sum(2 * m.in_features * m.out_features for m in module.modules()
               if isinstance(m, nn.Linear))


# ============================================================================ parameters
def test_count_parameters_by_hand():
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    assert count_parameters(model) == (4 * 3 + 3) + (3 * 2 + 2)
    assert count_parameters(nn.Conv2d(3, 8, 3)) == 8 * 3 * 3 * 3 + 8
    assert count_parameters(nn.Conv2d(3, 8, 3, bias=False)) == 8 * 3 * 3 * 3
    assert count_parameters(nn.ReLU()) == 0


def test_count_parameters_trainable_only_leaves_out_frozen_layers():
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    model[0].requires_grad_(False)
    assert count_parameters(model) == 23
    assert count_parameters(model, trainable_only=True) == 3 * 2 + 2


def test_count_parameters_shared_layer_counts_once():
    layer = nn.Linear(4, 4)
    assert count_parameters(nn.Sequential(layer, layer)) == 4 * 4 + 4


def test_count_parameters_rejects_non_module():
    with pytest.raises(TypeError, match="nn.Module"):
        count_parameters([torch.zeros(3)])


# ============================================================================ FLOPs
@pytest.mark.parametrize("n, cin, cout, k, stride, padding, size, bias", [
    (2, 3, 8, 3, 1, 1, 16, True),
    (1, 3, 8, 3, 1, 1, 16, False),
    (3, 4, 6, 5, 2, 0, 17, True),
    (1, 1, 1, 1, 1, 0, 1, True),
])
def test_count_flops_conv2d_by_hand(n, cin, cout, k, stride, padding, size, bias):
    conv = nn.Conv2d(cin, cout, k, stride=stride, padding=padding, bias=bias)
    out = (size + 2 * padding - k) // stride + 1
    # one multiply-add = 2 FLOPs per (output position, output channel, input channel, tap);
    # the bias is not counted
    expected = 2 * cout * out * out * cin * k * k * n
    assert count_flops(conv, torch.rand(n, cin, size, size)) == expected


def test_count_flops_grouped_conv_counts_channels_per_group():
    conv = nn.Conv2d(8, 8, 3, padding=1, groups=4)  # each output sees 8 / 4 inputs
    assert count_flops(conv, torch.rand(1, 8, 5, 5)) == 2 * 8 * 5 * 5 * (8 // 4) * 3 * 3


@pytest.mark.parametrize("bias", [True, False])
def test_count_flops_linear_by_hand(bias):
    n, fin, fout = 4, 10, 7
    assert count_flops(nn.Linear(fin, fout, bias=bias), torch.rand(n, fin)) == 2 * n * fin * fout


def test_count_flops_sums_layers_and_ignores_elementwise():
    model = TinyNet()
    assert count_flops(model, torch.rand(3, 3, 8, 8)) == 3 * TINY_FLOPS_PER_IMAGE
    assert count_flops(torch.relu, torch.rand(100)) == 0
    assert count_flops(lambda: None) == 0


def test_count_flops_passes_kwargs_and_leaves_no_grad():
    x = torch.rand(2, 3, requires_grad=True)
    out = []
    flops = count_flops(lambda a, b=None: out.append(a @ b), x, b=torch.rand(3, 4))
    assert flops == 2 * 2 * 3 * 4
    assert not out[0].requires_grad  # ran under no_grad
    assert torch.is_grad_enabled()


def test_count_flops_rejects_non_callable():
    with pytest.raises(TypeError, match="callable"):
        count_flops(3)


@pytest.mark.parametrize("num_images", [1, 2, 5])
def test_gflops_per_image_is_constant_in_batch_size(num_images):
    model = TinyNet()
    images = [torch.rand(3, 8, 8) for _ in range(num_images)]
    assert gflops_per_image(model, images) == pytest.approx(TINY_FLOPS_PER_IMAGE / 1e9)
    assert gflops_per_image(model, torch.stack(images)) == pytest.approx(TINY_FLOPS_PER_IMAGE / 1e9)


def test_gflops_per_image_runs_in_eval_mode_and_restores_the_mode():
    model = TinyNet().train()
    gflops_per_image(model, [torch.rand(3, 8, 8)], None)
    assert model.modes == [False]
    assert model.training


@pytest.mark.parametrize("images", [[], torch.rand(3, 8, 8), "image"])
def test_gflops_per_image_rejects_bad_images(images):
    with pytest.raises(ValueError, match="images"):
        gflops_per_image(TinyNet(), images)


def test_gflops_per_image_faster_rcnn_smoke():
    torch.manual_seed(0)
    model = FasterRCNN(num_classes=3, image_size=128).eval()
    images = [torch.rand(3, 128, 128) for _ in range(2)]
    gflops = gflops_per_image(model, images)
    assert math.isfinite(gflops) and gflops > 0
    # independent check: backbone + RPN convolutions, plus the box head's linear layers once
    # per proposal (RoI Align, NMS and the elementwise ops count 0)
    with torch.no_grad():
        batch = torch.stack(images)
        features = model.backbone(batch)
        num_regions = sum(len(p) for p in model.proposals(images))
    expected = (count_flops(model.backbone, batch) + count_flops(model.rpn, features)
                + num_regions * linear_flops_per_row(model.box_head))
    assert gflops == pytest.approx(expected / 2 / 1e9, rel=1e-12)


def test_gflops_per_image_fast_rcnn_with_given_proposals():
    torch.manual_seed(0)
    model = FastRCNN(num_classes=2, image_size=64, hidden=32)
    images = [torch.rand(3, 64, 64) for _ in range(2)]
    proposals = [torch.tensor([[0.0, 0.0, 32.0, 32.0], [8.0, 8.0, 60.0, 40.0]]),
                 torch.tensor([[4.0, 4.0, 20.0, 30.0]])]
    expected = (count_flops(model.backbone, torch.stack(images))
                + 3 * linear_flops_per_row(model.box_head))
    assert gflops_per_image(model, images, None, proposals) == pytest.approx(expected / 2 / 1e9)


# ============================================================================ latency
def test_measure_latency_positive_finite_and_counts_calls():
    calls = []
    result = measure_latency(lambda x: calls.append(x @ x), torch.rand(32, 32), warmup=2,
                             repeats=7)
    assert len(calls) == 2 + 7
    assert result["repeats"] == 7
    for key in ("median_ms", "mean_ms", "min_ms"):
        assert math.isfinite(result[key]) and result[key] > 0
    assert result["min_ms"] <= result["median_ms"] and result["min_ms"] <= result["mean_ms"]


def test_measure_latency_of_a_20_ms_sleep_is_at_least_20_ms():
    result = measure_latency(time.sleep, 0.02, warmup=0, repeats=3)
    assert result["median_ms"] >= 20.0
    assert result["min_ms"] >= 20.0


def test_measure_latency_runs_under_inference_mode():
    modes = []
    measure_latency(lambda: modes.append(torch.is_inference_mode_enabled()), warmup=1, repeats=1)
    assert modes == [True, True]
    assert not torch.is_inference_mode_enabled()


@pytest.mark.parametrize("kwargs, match", [
    ({"repeats": 0}, "repeats"),
    ({"repeats": -3}, "repeats"),
    ({"repeats": 2.5}, "repeats"),
    ({"repeats": True}, "repeats"),
    ({"warmup": -1}, "warmup"),
    ({"warmup": None}, "warmup"),
])
def test_measure_latency_rejects_bad_counts(kwargs, match):
    with pytest.raises(ValueError, match=match):
        measure_latency(lambda: None, **kwargs)


def test_measure_latency_rejects_non_callable_and_unknown_device():
    with pytest.raises(TypeError, match="callable"):
        measure_latency("model")
    with pytest.raises(ValueError, match="device"):
        measure_latency(lambda: None, device="tpu")


# ============================================================================ throughput
class SleepyDetector(nn.Module):
    """Sleeps 10 ms per call and records the length of every argument it is given."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, images, targets=None, proposals=None):
        self.calls.append((len(images), targets, None if proposals is None else len(proposals)))
        time.sleep(0.01)
        return [{} for _ in images]


def test_images_per_second_cuts_images_and_per_image_extras_into_batches():
    model = SleepyDetector()
    images = [torch.rand(3, 4, 4) for _ in range(4)]
    proposals = [torch.zeros(2, 4) for _ in range(4)]
    rate = images_per_second(model, images, None, proposals, batch_size=3, warmup=0, repeats=2)
    assert model.calls == [(3, None, 3), (1, None, 1)] * 2
    assert 0 < rate <= 4 / 0.02  # a pass is two 10 ms calls


def test_images_per_second_default_is_one_call_on_all_images():
    model = SleepyDetector().train()
    rate = images_per_second(model, torch.rand(4, 3, 4, 4), warmup=1, repeats=2)
    assert [c[0] for c in model.calls] == [4, 4, 4]
    assert 0 < rate <= 4 / 0.01
    assert model.training


@pytest.mark.parametrize("batch_size", [0, -1, 1.5])
def test_images_per_second_rejects_bad_batch_size(batch_size):
    with pytest.raises(ValueError, match="batch_size"):
        images_per_second(TinyNet(), [torch.rand(3, 8, 8)], batch_size=batch_size)


# ============================================================================ one table row
def test_detector_cost_row():
    model = TinyNet()
    images = [torch.rand(3, 8, 8) for _ in range(3)]
    row = detector_cost(model, images, warmup=1, repeats=3)
    assert isinstance(row, DetectorCost)
    assert row.params_m == count_parameters(model) / 1e6
    assert row.gflops_per_image == pytest.approx(TINY_FLOPS_PER_IMAGE / 1e9)
    assert math.isfinite(row.latency_ms) and row.latency_ms > 0
    assert math.isfinite(row.images_per_second) and row.images_per_second > 0
    assert row.device == "cpu"
    assert model.training  # given back in its mode


def test_detector_cost_latency_uses_one_image_and_its_extras():
    model = SleepyDetector()
    images = [torch.rand(3, 4, 4) for _ in range(2)]
    proposals = [torch.zeros(2, 4) for _ in range(2)]
    detector_cost(model, images, extra=(None, proposals), warmup=0, repeats=1)
    assert model.calls[0] == (1, None, 1)  # latency: batch of 1
    assert (2, None, 2) in model.calls  # throughput and FLOPs: all images


# ============================================================================ CUDA
@needs_cuda
def test_measure_latency_cuda_synchronises():
    x = torch.rand(2048, 2048, device="cuda")
    result = measure_latency(torch.matmul, x, x, warmup=2, repeats=5)
    # with synchronisation the time covers the product itself: 2 * 2048^3 FLOPs take far more
    # than the microseconds it takes to queue the kernel
    assert result["median_ms"] > 0.05
    assert math.isfinite(result["mean_ms"])


@needs_cuda
def test_detector_cost_on_cuda_moves_model_and_inputs():
    model = TinyNet()
    row = detector_cost(model, [torch.rand(3, 8, 8) for _ in range(2)], warmup=1, repeats=2,
                        device="cuda")
    assert row.device.startswith("cuda")
    assert next(model.parameters()).is_cuda
    assert row.gflops_per_image == pytest.approx(TINY_FLOPS_PER_IMAGE / 1e9)
