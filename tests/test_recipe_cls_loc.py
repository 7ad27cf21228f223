"""A shortened classification + localization run: it must already learn (the full-length run
and its targets live in benchmarks/bench_cls_loc.py)."""

import pytest

from course_lib.recipes.cls_loc import evaluate_cls_loc, single_object_data, train_cls_loc


@pytest.mark.slow
def test_short_training_run_learns(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path))
    model, history = train_cls_loc(num_train=1920, image_size=64, epochs=3, width=8,
                                   progress=False, device="cpu")
    losses = history.epoch_losses["loss"]
    assert len(losses) == 3 and losses[-1] < 0.3 * losses[0]
    result = evaluate_cls_loc(model, single_object_data("test", 200, image_size=64), device="cpu")
    assert result["accuracy"] > 0.85     # chance is 0.2; the full run reaches >= 0.95
    assert result["mean_iou"] > 0.75     # the full run reaches >= 0.80
