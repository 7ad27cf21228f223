"""Segmenter recipes: the recipe hash, the budgets, the checkpoint cache, the metrics."""

import math

import pytest
import torch

from course_lib.recipes import segmentation
from course_lib.recipes.segmentation import (
    SEGMENTERS,
    Recipe,
    build_model,
    checkpoint_path,
    evaluate,
    imbalance_recipes,
    load_or_train,
    rare_subset,
    recipe_for,
    target_recipe,
    tensors,
    with_recipe,
)

TINY = {name: with_recipe(segmentation.QUICK[name], num_train=8, num_test=4, epochs=1,
                          max_seconds=30.0, batch_size=4) for name in SEGMENTERS}


@pytest.fixture
def tiny(monkeypatch, tmp_path):
    """Tiny quick recipes and an empty data folder."""
    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(segmentation, "QUICK", TINY)
    return tmp_path


def test_recipe_hash_is_stable_and_changes_with_every_field(monkeypatch, tmp_path):
    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path))
    recipe = recipe_for("unet", quick=False)
    assert checkpoint_path(recipe) == checkpoint_path(Recipe(**vars(recipe)))
    assert checkpoint_path(recipe).name.startswith("seg_unet_")
    assert checkpoint_path(recipe).parent == tmp_path / "checkpoints"
    changes = {"num_classes": 4, "image_size": 96, "num_train": 7, "num_test": 9,
               "min_objects": 1, "max_objects": 4, "style": "natural", "epochs": 9,
               "max_seconds": 1.0, "batch_size": 3, "lr": 1e-4, "width": 3, "depth": 2,
               "loss": "dice", "rare_class": 2, "rare_fraction": 0.5, "seed": 1}
    assert set(changes) | {"segmenter"} == set(vars(recipe))
    paths = {checkpoint_path(with_recipe(recipe, **{k: v})) for k, v in changes.items()}
    assert len(paths) == len(changes) and checkpoint_path(recipe) not in paths
    assert len({checkpoint_path(recipe_for(s, quick=False)) for s in SEGMENTERS}) == 5


def test_recipes_and_quick_mode(monkeypatch):
    with pytest.raises(ValueError, match="segmenter must be one of"):
        recipe_for("deeplab")
    with pytest.raises(ValueError, match="loss must be one of"):
        Recipe("unet", loss="focal")
    with pytest.raises(ValueError, match="style must be one of"):
        Recipe("unet", style="noisy")
    with pytest.raises(ValueError, match="rare_class"):
        Recipe("unet", rare_class=0)
    with pytest.raises(ValueError, match="rare_fraction"):
        Recipe("unet", rare_fraction=1.5)
    monkeypatch.setenv("COURSE_QUICK", "1")
    assert recipe_for("unet") == segmentation.QUICK["unet"]
    monkeypatch.setenv("COURSE_QUICK", "0")
    assert recipe_for("unet") == segmentation.FULL["unet"]
    # CI budgets: about 20 s per segmenter; the lesson's: 150 s; the benchmark's: its 60 s target
    for name in SEGMENTERS:
        full = segmentation.FULL[name]
        assert segmentation.QUICK[name].max_seconds <= 25
        assert full.max_seconds <= 150 and full.style == "clean"
        target = target_recipe(name, quick=False)
        assert target.max_seconds == segmentation.TARGET_SECONDS == 60
        assert target.epochs == segmentation.TARGET_EPOCHS < full.epochs
        assert with_recipe(target, epochs=full.epochs, max_seconds=full.max_seconds) == full
        assert target_recipe(name, quick=True) == segmentation.QUICK[name]
    # the imbalance runs: the one-minute U-Net, one class made rare, one recipe per loss
    runs = imbalance_recipes(quick=True)
    assert set(runs) == {"ce", "weighted_ce", "dice"}
    assert {with_recipe(r, loss="ce") for r in runs.values()} == {runs["ce"]}
    assert runs["ce"].rare_class == segmentation.RARE_CLASS
    # the FCN variants train on the same data with the same budget
    fcns = [segmentation.FULL[f"fcn{v}"] for v in ("32s", "16s", "8s")]
    assert len({with_recipe(r, segmenter="unet") for r in fcns}) == 1


@pytest.mark.parametrize("segmenter", SEGMENTERS)
def test_build_model_outputs_background_plus_classes(segmenter):
    recipe = TINY[segmenter]
    model = build_model(recipe).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, recipe.image_size, recipe.image_size))
    assert out.shape == (1, recipe.num_classes + 1, recipe.image_size, recipe.image_size)


@pytest.mark.parametrize("segmenter", SEGMENTERS)
def test_channels_last_models_compute_what_the_ordinary_layout_computes(segmenter):
    torch.manual_seed(0)
    model = build_model(TINY[segmenter]).eval()
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last)
                         for c in convs if c.kernel_size != (1, 1))
    plain = build_model(TINY[segmenter]).to(memory_format=torch.contiguous_format).eval()
    plain.load_state_dict(model.state_dict())  # a checkpoint loads into either layout
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        out, expected = model(images), plain(images)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


def test_rare_subset_keeps_a_fraction_of_the_scenes_with_the_class():
    semantic = torch.zeros(10, 2, 2, dtype=torch.int64)
    semantic[[1, 3, 4, 6, 8], 0, 0] = 2  # 5 scenes with class 2
    assert rare_subset(semantic, 2, 0.4).tolist() == [0, 1, 2, 3, 5, 7, 9]
    assert rare_subset(semantic, 2, 1.0).tolist() == list(range(10))
    assert rare_subset(semantic, 2, 0.0).tolist() == [0, 2, 5, 7, 9]
    assert rare_subset(semantic, 1, 0.0).tolist() == list(range(10))  # class absent


def test_tensors_make_the_class_rare_in_training_only(tiny):
    recipe = with_recipe(TINY["unet"], num_train=20, rare_class=1, rare_fraction=0.0)
    images, labels = tensors(recipe, "train").tensors
    assert images.shape[1:] == (3, 64, 64) and labels.shape[1:] == (64, 64)
    assert 0 < len(images) < 20 and not (labels == 1).any()
    assert (tensors(recipe, "test").tensors[1] == 1).any()  # the test split is unchanged


@pytest.mark.parametrize("segmenter", ["unet", "fcn8s"])
def test_load_or_train_trains_once_then_loads_the_same_model(tiny, segmenter, capsys):
    model, info = load_or_train(segmenter, quick=True, device="cpu", progress=False)
    out = capsys.readouterr().out
    assert "training it now" in out and info["path"].exists()
    assert info["path"] == checkpoint_path(TINY[segmenter]) and info["path"].is_relative_to(tiny)
    assert info["history"].epochs_done == 1 and info["train_seconds"] > 0
    assert set(info["metrics"]) >= {"pixel_accuracy", "mean_iou", "iou", "dice", "mean_dice",
                                    "classes", "test_seconds"}

    loaded, loaded_info = load_or_train(segmenter, quick=True, device="cpu")
    assert "Loaded the trained" in capsys.readouterr().out
    assert not loaded.training
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert loaded_info["history"].losses == info["history"].losses
    again = evaluate(loaded, TINY[segmenter], device="cpu")  # the weights reproduce the metrics
    assert again["mean_iou"] == pytest.approx(info["metrics"]["mean_iou"], abs=1e-12)
    assert again["iou"] == pytest.approx(info["metrics"]["iou"], abs=1e-12, nan_ok=True)


@pytest.mark.parametrize("loss", ["weighted_ce", "dice", "ce+dice"])
def test_every_loss_trains_and_is_cached_apart(tiny, loss, capsys):
    recipe = with_recipe(TINY["unet"], loss=loss)
    _model, info = load_or_train("unet", device="cpu", progress=False, recipe=recipe)
    names = {"weighted_ce": {"weighted_ce"}, "dice": {"dice"}, "ce+dice": {"ce", "dice"}}[loss]
    assert set(info["history"].losses) == names | {"loss"}
    assert info["path"] == checkpoint_path(recipe) != checkpoint_path(TINY["unet"])
    with pytest.raises(ValueError, match="not 'fcn8s'"):
        load_or_train("fcn8s", recipe=recipe)


def test_a_corrupt_checkpoint_is_retrained(tiny, capsys):
    path = checkpoint_path(TINY["autoencoder"])
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a checkpoint")
    load_or_train("autoencoder", quick=True, device="cpu", progress=False)
    assert "Cannot use" in capsys.readouterr().out
    torch.load(path, weights_only=True)  # now a real checkpoint


def test_evaluate_returns_the_metrics(tiny):
    recipe = TINY["autoencoder"]
    metrics = evaluate(build_model(recipe), recipe, device="cpu")
    k = recipe.num_classes + 1
    assert metrics["classes"] == ["background", "circle", "square", "triangle"]
    assert len(metrics["iou"]) == len(metrics["dice"]) == k
    assert 0 <= metrics["pixel_accuracy"] <= 1 and metrics["test_seconds"] > 0
    assert math.isnan(metrics["mean_iou"]) or 0 <= metrics["mean_iou"] <= 1


@pytest.mark.parametrize("segmenter", SEGMENTERS)
def test_cached_checkpoints_reproduce_their_reported_miou(segmenter):
    """The checkpoints the lesson loads give back the mIoU stored with them."""
    path = checkpoint_path(recipe_for(segmenter))
    if not path.exists():
        pytest.skip(f"no cached {segmenter} checkpoint ({path.name}); "
                    "`python -m course_lib.recipes.segmentation` makes it")
    model, info = load_or_train(segmenter, device="cpu")
    metrics = evaluate(model, recipe_for(segmenter), device="cpu")
    assert metrics["mean_iou"] == pytest.approx(info["metrics"]["mean_iou"], abs=1e-6)
