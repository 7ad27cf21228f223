"""The sliding-window explorer, driven without a browser: its counts agree with
count_windows_strided / count_windows and its window walks the stride grid."""

import matplotlib
import pytest
import torch

from course_lib.sliding_window import count_windows, count_windows_strided
from course_lib.widgets import SlidingWindowExplorer, sliding_window_explorer

matplotlib.use("Agg")  # headless


def image(h=60, w=100):
    return torch.rand(3, h, w, generator=torch.Generator().manual_seed(0))


def test_defaults_count_the_windows():
    w = sliding_window_explorer(image(), size=20, stride=10)
    assert isinstance(w, SlidingWindowExplorer)
    assert w.window_hw == (20, 20)
    assert w.num_windows == count_windows_strided(60, 100, [20], [1.0], 10) == 9 * 5
    assert len(w.windows) == w.num_windows
    assert w.exhaustive == count_windows(60, 100)
    assert w.window == (0, 0, 20, 20) and w.position.max == 44
    assert "45" in w.readout.value and f"{count_windows(60, 100):,}" in w.readout.value
    assert len(w.axes) == 1


def test_default_image_is_a_synthetic_scene():
    w = sliding_window_explorer()
    assert (w.H, w.W) == (128, 128) and w.num_windows == 7 * 7


def test_sliders_update_the_count():
    w = sliding_window_explorer(image(), size=20, stride=10)
    w.aspect_ratio.value = 4.0  # 40 wide, 10 high
    assert w.window_hw == (10, 40)
    assert w.num_windows == count_windows_strided(60, 100, [20], [4.0], 10) == 7 * 6
    w.stride.value = 7
    assert w.num_windows == count_windows_strided(60, 100, [20], [4.0], 7)
    w.size.value = 33
    assert w.num_windows == count_windows_strided(60, 100, [33], [4.0], 7)
    assert w.position.max == w.num_windows - 1


def test_stepping_walks_the_grid_row_by_row_and_wraps():
    w = sliding_window_explorer(image(), size=20, stride=10)
    w.next_button.click()
    assert w.position.value == 1 and w.window == (10, 0, 30, 20)
    w.position.value = 9  # second row
    assert w.window == (0, 10, 20, 30)
    w.prev_button.click()
    assert w.window == (80, 0, 100, 20)  # last of the first row
    w.position.value = w.num_windows - 1
    w.next_button.click()
    assert w.position.value == 0  # wraps around


def test_position_is_kept_or_clamped_when_the_grid_shrinks():
    w = sliding_window_explorer(image(), size=20, stride=10)
    w.position.value = 40
    w.stride.value = 40  # 3 x 2 windows now
    assert w.num_windows == 6 and w.position.value == 5
    x1, y1, x2, y2 = w.window
    assert x2 <= 100 and y2 <= 60


def test_a_window_that_does_not_fit():
    w = sliding_window_explorer(image(), size=20, stride=10)
    w.size.value = 80  # 80 > 60 high
    assert w.num_windows == 0 and w.window is None
    assert w.next_button.disabled and "does not fit" in w.readout.value
    w.next_button.click()  # nothing happens, no error


def test_stride_larger_than_the_image_gives_one_window():
    w = sliding_window_explorer(image(), size=30, stride=100)
    assert w.num_windows == 1 and w.window == (0, 0, 30, 30)


def test_score_map_panel_and_outline_all():
    score_map = torch.zeros(60, 100)
    score_map[10, 10] = 0.75
    w = sliding_window_explorer(image(), score_map=score_map, size=20, stride=10)
    assert len(w.axes) == 2
    assert "score map at its centre: 0.75" in w.readout.value  # window (0, 0, 20, 20)
    before = len(w.axes[0].patches)
    w.show_all.value = True
    assert len(w.axes[0].patches) == before + w.num_windows


def test_bad_arguments():
    with pytest.raises(ValueError, match="image must have shape"):
        sliding_window_explorer(torch.zeros(60, 100))
    with pytest.raises(ValueError, match="score_map must have shape"):
        sliding_window_explorer(image(), score_map=torch.zeros(10, 10))
    with pytest.raises(ValueError, match="aspect_ratio must be one of"):
        sliding_window_explorer(image(), aspect_ratio=3.0)
