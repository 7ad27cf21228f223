"""Detector recipes: training, the checkpoint cache, checkpoints reproducing their mAP."""

import math

import pytest
import torch

from course_lib.models.backbone import TinyBackbone
from course_lib.recipes import detection
from course_lib.recipes.detection import (
    DETECTORS,
    WithProposals,
    backbone_for,
    build_model,
    cached_proposals,
    checkpoint_path,
    evaluate,
    load_or_train,
    recipe_for,
    scenes,
    with_recipe,
)

TINY = {name: with_recipe(detection.QUICK[name], num_train=8, num_test=4, epochs=1,
                          max_minutes=0.5, batch_size=4) for name in DETECTORS}


@pytest.fixture
def tiny(monkeypatch, tmp_path):
    """Tiny quick recipes and an empty data folder."""
    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(detection, "QUICK", TINY)
    return tmp_path


@pytest.mark.parametrize("detector", ["faster_rcnn", "fast_rcnn"])
def test_load_or_train_trains_once_then_loads_the_same_model(tiny, detector, capsys):
    model, info = load_or_train(detector, quick=True, device="cpu", progress=False)
    out = capsys.readouterr().out
    assert "training it now" in out and info["path"].exists()
    assert info["path"] == checkpoint_path(TINY[detector]) and info["path"].is_relative_to(tiny)
    assert info["history"].epochs_done == 1 and info["train_seconds"] > 0
    assert set(info["metrics"]) >= {"AP50", "AP", "test_seconds", "proposal_seconds"}
    if detector == "fast_rcnn":
        assert info["metrics"]["proposal_seconds"] > 0

    loaded, loaded_info = load_or_train(detector, quick=True, device="cpu")
    assert "Loaded the trained" in capsys.readouterr().out
    assert not loaded.training
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert loaded_info["history"].losses == info["history"].losses
    # the saved weights reproduce the stored metrics
    again = evaluate(loaded, TINY[detector], device="cpu")
    for key in ("AP50", "AP", "AR100"):
        assert again[key] == pytest.approx(info["metrics"][key], abs=1e-9), key


def test_a_corrupt_checkpoint_is_retrained(tiny, capsys):
    path = checkpoint_path(TINY["faster_rcnn"])
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a checkpoint")
    load_or_train("faster_rcnn", quick=True, device="cpu", progress=False)
    assert "Cannot use" in capsys.readouterr().out
    torch.load(path, weights_only=True)  # now a real checkpoint


def test_cached_proposals_are_computed_once(tiny):
    dataset = scenes(TINY["fast_rcnn"], "test")
    proposals, seconds = cached_proposals(dataset, workers=1, progress=False)
    assert len(proposals) == len(dataset) and seconds > 0
    assert all(p.dim() == 2 and p.shape[1] == 4 and len(p) > 0 for p in proposals)
    again, seconds_again = cached_proposals(dataset, workers=1)
    assert seconds_again == seconds and all(torch.equal(a, b) for a, b in zip(again, proposals,
                                                                              strict=True))
    with pytest.raises(ValueError, match="one proposal tensor per image"):
        WithProposals(dataset, proposals[:-1])


def test_recipes_and_quick_mode(monkeypatch):
    with pytest.raises(ValueError, match="detector must be one of"):
        recipe_for("yolo_v9")
    monkeypatch.setenv("COURSE_QUICK", "1")
    assert recipe_for("faster_rcnn") == detection.QUICK["faster_rcnn"]
    monkeypatch.setenv("COURSE_QUICK", "0")
    assert recipe_for("faster_rcnn") == detection.FULL["faster_rcnn"]
    # the targets the benchmark checks: Faster R-CNN within 5 minutes of training
    assert detection.FULL["faster_rcnn"].max_minutes <= 5
    # R-CNN and Fast R-CNN train on the same images for the same epochs (a fair time comparison)
    rcnn, fast = detection.FULL["rcnn"], detection.FULL["fast_rcnn"]
    assert (rcnn.num_train, rcnn.epochs) == (fast.num_train, fast.epochs)
    assert checkpoint_path(rcnn) != checkpoint_path(fast)


def test_the_single_stage_detectors_use_the_lighter_backbone():
    for detector in DETECTORS:
        model = build_model(recipe_for(detector, quick=True))
        backbones = [m for m in model.modules() if isinstance(m, TinyBackbone)]
        assert len(backbones) == 1, detector
        widths = [m.out_channels for m in backbones[0].modules() if isinstance(m, torch.nn.Conv2d)]
        expected = {"ssd": [8, 8, 16, 16, 48, 48], "yolo": [8, 8, 16, 16, 64, 64]}.get(
            detector, [16, 16, 32, 32, 64, 64])
        assert widths == expected, detector
        features = backbones[0].eval()(torch.zeros(1, 3, 128, 128))
        assert features.shape == (1, expected[-1], 16, 16)  # stride 8 in every detector
    with pytest.raises(ValueError, match="detector must be one of"):
        backbone_for("yolo_v9")


def test_cache_versions_are_per_detector(monkeypatch):
    """Bumping one detector's cache version moves its checkpoints only."""
    before = {name: checkpoint_path(recipe_for(name, quick=False)) for name in DETECTORS}
    monkeypatch.setitem(detection.CACHE_VERSIONS, "yolo", detection.CACHE_VERSIONS["yolo"] + 1)
    after = {name: checkpoint_path(recipe_for(name, quick=False)) for name in DETECTORS}
    assert [name for name in DETECTORS if before[name] != after[name]] == ["yolo"]


@pytest.mark.parametrize("detector", DETECTORS)
def test_cached_checkpoints_reproduce_their_reported_map(detector):
    """The checkpoints the notebooks load (``make checkpoints``, or the CI ones ``make test``
    trains first) give back the mAP stored with them."""
    path = checkpoint_path(recipe_for(detector))
    if not path.exists():
        pytest.skip(f"no cached {detector} checkpoint ({path.name}); `make checkpoints` makes it")
    model, info = load_or_train(detector, device="cpu")
    metrics = evaluate(model, recipe_for(detector), device="cpu")
    assert not math.isnan(metrics["AP50"])
    assert metrics["AP50"] == pytest.approx(info["metrics"]["AP50"], abs=1e-6)
    assert metrics["AP"] == pytest.approx(info["metrics"]["AP"], abs=1e-6)
