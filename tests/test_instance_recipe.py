"""Lesson 08's Mask R-CNN recipe: budgets, training once, the cache, box and mask metrics."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from course_lib.metrics import coco_evaluate
from course_lib.models.mask_rcnn import MaskRCNN
from course_lib.recipes import instance
from course_lib.recipes.detection import scenes, with_recipe
from course_lib.recipes.instance import (
    FULL,
    QUICK,
    build_model_seeded,
    checkpoint_path,
    evaluate,
    load_or_train,
    predict,
    recipe_for,
)

TINY = with_recipe(QUICK, num_train=8, num_test=4, epochs=1, max_minutes=0.5, batch_size=4)
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def tiny(monkeypatch, tmp_path):
    """The tiny recipe as the quick one, and an empty data folder."""
    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(instance, "QUICK", TINY)
    return tmp_path


def test_budgets_follow_the_issue_and_course_quick(monkeypatch):
    assert FULL.detector == QUICK.detector == "mask_rcnn"
    assert FULL.max_minutes == 10.0 and FULL.image_size == 128 and FULL.num_classes >= 3
    assert QUICK.max_minutes <= 1.5 and QUICK.num_train < FULL.num_train
    monkeypatch.setenv("COURSE_QUICK", "1")
    assert recipe_for() == QUICK
    monkeypatch.setenv("COURSE_QUICK", "0")
    assert recipe_for() == FULL
    assert recipe_for(quick=True) == QUICK


def test_build_model_seeded_is_repeatable_and_has_28_pixel_masks():
    a, b = build_model_seeded(TINY), build_model_seeded(TINY)
    assert isinstance(a, MaskRCNN) and a.mask_size == 28
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), name


def test_load_or_train_trains_once_then_loads_the_same_model(tiny, capsys):
    model, info = load_or_train(quick=True, device="cpu", progress=False)
    assert "training it now" in capsys.readouterr().out
    assert info["path"] == checkpoint_path(TINY) and info["path"].is_relative_to(tiny)
    assert info["path"].name.startswith("mask_rcnn_m14w32_")
    assert set(info["history"].losses) >= {"loss_objectness", "loss_rpn_box_reg",
                                           "loss_classifier", "loss_box_reg", "loss_mask"}
    m = info["metrics"]
    assert set(m) == {"box", "mask", "test_seconds"} and m["test_seconds"] > 0
    assert {"AP", "AP50", "AP75", "APs", "APm", "APl"} <= set(m["mask"])

    loaded, loaded_info = load_or_train(quick=True, device="cpu")
    assert "Loaded the trained Mask R-CNN" in capsys.readouterr().out
    assert not loaded.training
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    again = evaluate(loaded, TINY, device="cpu")
    for kind in ("box", "mask"):
        for key in ("AP50", "AP", "AR100"):
            assert again[kind][key] == pytest.approx(m[kind][key], abs=1e-9), (kind, key)


def test_evaluate_is_coco_evaluate_of_the_predictions(tiny):
    model = build_model_seeded(TINY).eval()
    targets, predictions, seconds = predict(model, TINY, device="cpu", num_images=3)
    assert len(targets) == len(predictions) == 3 and seconds > 0
    for p in predictions:
        assert p["masks"].shape[1:] == (1, 128, 128) and p["masks"].device.type == "cpu"
    metrics = evaluate(model, TINY, device="cpu", num_images=3)
    assert metrics["mask"] == coco_evaluate(targets, predictions, iou_type="segm")
    assert metrics["box"] == coco_evaluate(targets, predictions, iou_type="bbox")
    # another dataset: its own images are scored
    other = [scenes(TINY, "train")[i] for i in range(2)]
    assert len(predict(model, TINY, device="cpu", data=other)[0]) == 2


def load_bench():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location("bench_mask_rcnn",
                                                      BENCHMARKS / "bench_mask_rcnn.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_the_benchmark_builds_torchvision_twin_with_our_settings():
    bench = load_bench()
    ours = build_model_seeded(TINY)
    theirs = bench.torchvision_mask_rcnn(ours)
    heads = theirs.roi_heads
    assert heads.mask_roi_pool.output_size == (14, 14)
    assert heads.mask_predictor.mask_fcn_logits.out_channels == ours.num_classes + 1
    assert len([m for m in heads.mask_head.modules() if isinstance(m, torch.nn.Conv2d)]) == 4
    assert heads.fg_bg_sampler.batch_size_per_image == ours.box_batch_size_per_image
    images, targets = zip(*(scenes(TINY, "train")[i] for i in range(2)), strict=True)
    theirs.train()
    losses = theirs(list(images), list(targets))
    assert set(losses) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier",
                           "loss_box_reg", "loss_mask"}
    theirs.eval()
    with torch.no_grad():
        out = theirs(list(images))
    assert out[0]["masks"].shape[1:] == (1, 128, 128)


def test_the_benchmark_reports_penn_fudan_when_present_and_says_why_when_not(
        monkeypatch, tmp_path, capsys):
    bench = load_bench()
    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path))
    recipe = with_recipe(TINY, batch_size=1)
    assert bench.pennfudan(recipe, minutes=0.01) is None
    assert "Penn-Fudan skipped" in capsys.readouterr().out
    fixtures = Path(__file__).resolve().parent / "fixtures" / "pennfudan"
    monkeypatch.syspath_prepend(str(fixtures))
    importlib.import_module("fake_pennfudan").write_fake_pennfudan(tmp_path)  # 4 small photos
    seconds, metrics = bench.pennfudan(recipe, minutes=0.01)
    assert seconds > 0 and set(metrics) == {"box", "mask", "test_seconds"}
    assert 0.0 <= metrics["mask"]["AP50"] <= 1.0
