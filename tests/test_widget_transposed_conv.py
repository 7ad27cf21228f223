import matplotlib
import matplotlib.pyplot as plt
import pytest
import torch
import torch.nn.functional as F

from course_lib.widgets import TransposedConvExplorer, transposed_conv_explorer

matplotlib.use("Agg")  # headless: no window, works after pyplot's import too


def _click(button, times=1):
    for _ in range(times):
        button.click()


def test_defaults_are_the_lecture_setting():
    w = transposed_conv_explorer()
    assert isinstance(w, TransposedConvExplorer)
    assert (w.input_size.value, w.kernel_size.value, w.stride.value, w.padding.value) == (
        2, 3, 2, 0)
    assert w.output_size == 5 and w.valid and w.step == 0 and w.num_steps == 4
    assert "= <b>5</b>" in w.formula.value
    assert w.full_values.shape == (5, 5) and int(w.full_counts.sum()) == 0
    assert w.prev_button.disabled and not w.step_button.disabled


def test_each_step_writes_one_scaled_kernel_and_overlaps_are_summed():
    w = transposed_conv_explorer()
    _click(w.step_button)  # input cell (0, 0) = 1 -> output rows 0..2, columns 0..2
    assert w.step == 1 and int(w.full_counts.sum()) == 9
    assert torch.equal(w.full_counts[:3, :3], torch.ones(3, 3, dtype=torch.long))
    assert "(0, 0) = 1" in w.readout.value and "rows 0..2" in w.readout.value
    _click(w.step_button)  # cell (0, 1) = 2 -> columns 2..4: column 2 is covered twice
    assert w.full_counts[0].tolist() == [1, 1, 2, 1, 1]
    assert w.full_values[0].tolist() == [1, 1, 3, 2, 2]
    _click(w.step_button, 10)  # extra clicks stop at the end
    assert w.done and w.step == 4 and w.step_button.disabled
    assert w.full_counts.tolist() == [[1, 1, 2, 1, 1], [1, 1, 2, 1, 1], [2, 2, 4, 2, 2],
                                      [1, 1, 2, 1, 1], [1, 1, 2, 1, 1]]
    assert w.full_values.tolist() == [[1, 1, 3, 2, 2], [1, 1, 3, 2, 2], [4, 4, 10, 6, 6],
                                      [3, 3, 7, 4, 4], [3, 3, 7, 4, 4]]
    assert torch.equal(w.values, w.result)
    assert "checkerboard" in w.readout.value
    _click(w.prev_button)
    assert w.step == 3 and int(w.full_counts[4, 4]) == 0
    _click(w.reset_button)
    assert w.step == 0 and int(w.full_counts.sum()) == 0


@pytest.mark.parametrize("n, k, s, p", [(2, 3, 2, 1), (3, 4, 2, 1), (4, 2, 3, 0), (1, 5, 4, 2),
                                        (5, 3, 1, 3)])
def test_finished_grid_equals_pytorch(n, k, s, p):
    w = transposed_conv_explorer()
    w.input_size.value, w.kernel_size.value, w.stride.value, w.padding.value = n, k, s, p
    _click(w.all_button)
    x = torch.arange(1, n * n + 1, dtype=torch.float32).reshape(1, 1, n, n)
    expected = F.conv_transpose2d(x, torch.ones(1, 1, k, k), stride=s, padding=p)[0, 0]
    size = (n - 1) * s - 2 * p + (k - 1) + 1
    assert w.output_size == size == expected.shape[-1]
    assert torch.equal(w.values, expected) and torch.equal(w.result, expected)
    assert w.counts.shape == (size, size)
    assert f"<b>{size}</b>" in w.formula.value


def test_checkerboard_depends_on_divisibility():
    w = transposed_conv_explorer(input_size=5, kernel_size=3, stride=2)
    _click(w.all_button)
    inner = w.full_counts[2:-2, 2:-2]
    assert set(inner.unique().tolist()) == {1, 2, 4}  # uneven: a checkerboard
    w.kernel_size.value = 4
    _click(w.all_button)
    inner = w.full_counts[2:-2, 2:-2]
    assert set(inner.unique().tolist()) == {4}  # every inner cell gets 2 x 2 kernels
    assert "checkerboard" not in w.readout.value


def test_settings_keep_the_step_when_possible():
    w = transposed_conv_explorer(input_size=3)
    _click(w.step_button, 5)
    w.stride.value = 1
    assert w.step == 5
    w.input_size.value = 2
    assert w.step == 4 and w.done


def test_padding_that_removes_everything_is_reported_not_raised():
    w = transposed_conv_explorer(input_size=1, kernel_size=1, stride=1, padding=1)
    assert not w.valid and w.output_size == -1 and w.result is None
    assert "no output" in w.formula.value
    _click(w.all_button)
    assert w.values.numel() == 0 and w.done


def test_bad_start_values():
    with pytest.raises(ValueError, match="kernel_size"):
        transposed_conv_explorer(kernel_size=9)
    with pytest.raises(ValueError, match="padding"):
        transposed_conv_explorer(padding=-1)


def test_leaves_no_pyplot_figures_and_draws():
    before = plt.get_fignums()
    w = transposed_conv_explorer()
    _click(w.step_button)
    assert plt.get_fignums() == before
    assert len(w.ax_out.patches) == 1  # the latest kernel's frame
    w.padding.value = 1
    assert len(w.ax_out.patches) == 2  # plus the kept region
    assert len(w.ax_in.texts) == 4
    assert w.ax_out.images[0].get_clim()[1] >= 4  # k = 3, s = 2: up to 2 x 2 kernels per cell
