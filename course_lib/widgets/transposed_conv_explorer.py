"""Transposed-convolution explorer: write one input cell's scaled kernel at a time.

Each click takes the next input cell (row by row), multiplies the kernel by its value and adds
the result into the output grid, ``stride`` cells further along than the previous cell. The
output cells are coloured by how many kernels have been written into them: where kernels
overlap, values are summed, and uneven overlap (kernel size not divisible by the stride) is the
checkerboard pattern of transposed convolutions. The output-size formula is evaluated live;
``padding`` cuts cells from every side of the full grid (the dashed frame shows what is kept).
The numbers come from ``course_lib.conv_transpose.conv_transpose2d``.

In a notebook::

    from course_lib.widgets import transposed_conv_explorer
    transposed_conv_explorer()        # the lecture's setting: 2 x 2 input, kernel 3, stride 2
"""

from __future__ import annotations

import math

import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch
from IPython.display import clear_output, display
from matplotlib.patches import Rectangle

from course_lib.conv_transpose import conv_transpose2d, conv_transpose_output_size

__all__ = ["TransposedConvExplorer", "transposed_conv_explorer"]


class TransposedConvExplorer(widgets.VBox):
    """Step through a 2-D transposed convolution of an ``n x n`` input with a ``k x k`` kernel.

    The input holds ``1, 2, ..., n*n`` (row by row) and the kernel is all ones, so every output
    cell shows the sum of the input values whose kernels cover it.

    Controls: ``input_size``, ``kernel_size``, ``stride``, ``padding`` (IntSliders),
    ``step_button`` (write the next input cell), ``prev_button``, ``reset_button``,
    ``all_button`` (write every cell). Readouts: ``formula`` (HTML, the output-size formula
    with the current numbers) and ``readout`` (HTML, what the last step wrote).
    Plain results: ``x`` (Tensor[n, n]), ``weight`` (Tensor[k, k]), ``step`` (cells written,
    0 to ``num_steps = n * n``), ``done``, ``full_values``/``full_counts`` (Tensor[F, F]: the
    uncut output so far and how many kernels were written into each cell,
    ``F = (n - 1) * stride + k``), ``output_size`` (the formula's value), ``valid`` (whether
    it is at least 1), ``values``/``counts`` (the same after cutting ``padding`` from each
    side; empty when not valid), ``result`` (the finished output: ``conv_transpose2d`` of the
    whole input, or ``None`` when not valid). Drawing: ``fig``, ``ax_in``, ``ax_out`` shown in
    ``output``.
    """

    def __init__(self, input_size: int = 2, kernel_size: int = 3, stride: int = 2,
                 padding: int = 0) -> None:
        for name, value, low, high in (("input_size", input_size, 1, 5),
                                       ("kernel_size", kernel_size, 1, 5),
                                       ("stride", stride, 1, 4), ("padding", padding, 0, 3)):
            if not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"{name} must be an int in [{low}, {high}], got {value!r}")
        slider = {"continuous_update": False, "style": {"description_width": "initial"}}
        self.input_size = widgets.IntSlider(value=input_size, min=1, max=5,
                                            description="input size n", **slider)
        self.kernel_size = widgets.IntSlider(value=kernel_size, min=1, max=5,
                                             description="kernel size k", **slider)
        self.stride = widgets.IntSlider(value=stride, min=1, max=4, description="stride s",
                                        **slider)
        self.padding = widgets.IntSlider(value=padding, min=0, max=3, description="padding p",
                                         **slider)
        self.step_button = widgets.Button(description="Write next cell \u25b6",
                                          button_style="primary")
        self.prev_button = widgets.Button(description="\u25c0 Undo")
        self.reset_button = widgets.Button(description="Reset")
        self.all_button = widgets.Button(description="Write all")
        self.formula = widgets.HTML()
        self.readout = widgets.HTML()
        self.output = widgets.Output()

        with plt.ioff():
            self.fig, (self.ax_in, self.ax_out) = plt.subplots(
                1, 2, figsize=(7.6, 3.8), width_ratios=(1, 2), layout="constrained")
        plt.close(self.fig)  # shown by hand in self.output, never by pyplot

        self.step_button.on_click(lambda _: self.go_to(self.step + 1))
        self.prev_button.on_click(lambda _: self.go_to(self.step - 1))
        self.reset_button.on_click(lambda _: self.go_to(0))
        self.all_button.on_click(lambda _: self.go_to(self.num_steps))
        for control in (self.input_size, self.kernel_size, self.stride, self.padding):
            control.observe(self._on_settings, names="value")

        super().__init__([
            widgets.HBox([self.input_size, self.kernel_size]),
            widgets.HBox([self.stride, self.padding]),
            widgets.HBox([self.prev_button, self.step_button, self.all_button,
                          self.reset_button]),
            self.formula,
            self.output,
            self.readout,
        ])
        self.step = 0
        self.recompute()

    # ------------------------------------------------------------------ computing

    def _on_settings(self, change: dict) -> None:
        self.recompute()

    def recompute(self) -> None:
        """Rebuild the input, the kernel and the finished result for the current settings."""
        n, k = self.input_size.value, self.kernel_size.value
        s, p = self.stride.value, self.padding.value
        self.x = torch.arange(1, n * n + 1, dtype=torch.float32).reshape(n, n)
        self.weight = torch.ones(k, k)
        self.num_steps = n * n
        self.output_size = conv_transpose_output_size(n, k, s, p)
        self.valid = self.output_size >= 1
        self.result = (conv_transpose2d(self.x[None, None], self.weight[None, None], stride=s,
                                        padding=p)[0, 0] if self.valid else None)
        self.formula.value = (
            f"output size = (n &minus; 1)&middot;s &minus; 2p + (k &minus; 1) + 1 = "
            f"({n} &minus; 1)&middot;{s} &minus; 2&middot;{p} + ({k} &minus; 1) + 1 = "
            f"<b>{self.output_size}</b>"
            + ("" if self.valid else " &mdash; <b>no output</b>: the padding cuts away more "
               "than the full grid")
        )
        self.go_to(min(self.step, self.num_steps))

    def go_to(self, step: int) -> None:
        """Show the output after the first ``step`` input cells (clamped to ``0 .. n*n``)."""
        self.step = max(0, min(int(step), self.num_steps))
        self.done = self.step == self.num_steps
        n, s, p = self.input_size.value, self.stride.value, self.padding.value
        written = (torch.arange(n * n) < self.step).float().reshape(n, n)  # 1 = already written
        # the uncut output (padding 0) of the written cells, and how many kernels cover a cell
        self.full_values = conv_transpose2d((self.x * written)[None, None],
                                            self.weight[None, None], stride=s)[0, 0]
        self.full_counts = conv_transpose2d(written[None, None], torch.ones_like(
            self.weight)[None, None], stride=s)[0, 0].round().long()
        size = self.full_values.shape[0]
        keep = slice(p, size - p) if self.valid else slice(0, 0)
        self.values = self.full_values[keep, keep]
        self.counts = self.full_counts[keep, keep]
        self.prev_button.disabled = self.step == 0
        self.step_button.disabled = self.all_button.disabled = self.done
        self.readout.value = self._readout_html()
        self._draw()

    def _cell(self, index: int) -> tuple[int, int]:
        """(row, column) of the ``index``-th input cell, row by row."""
        n = self.input_size.value
        return divmod(index, n)

    # ------------------------------------------------------------------ showing

    def _readout_html(self) -> str:
        k, s = self.kernel_size.value, self.stride.value
        lines = [f"<b>{self.step} / {self.num_steps}</b> input cells written."]
        if self.step == 0:
            lines.append("Nothing written yet: <i>Write next cell</i> takes input cell (0, 0).")
        else:
            i, j = self._cell(self.step - 1)
            value = float(self.x[i, j])
            lines.append(f"Input cell ({i}, {j}) = {value:g} wrote {value:g} &times; kernel into "
                         f"output rows {i * s}..{i * s + k - 1}, columns "
                         f"{j * s}..{j * s + k - 1} (added to what was there).")
        most = int(self.full_counts.max()) if self.full_counts.numel() else 0
        if self.step:
            lines.append(f"Most kernels on one output cell so far: {most}.")
        if self.done and self.valid:
            lines.append(f"Done: the kept {self.output_size} &times; {self.output_size} grid "
                         "equals conv_transpose2d(x, kernel, stride, padding).")
        if self.done and k % s != 0 and k > s:
            lines.append(f"k = {k} is not divisible by s = {s}: inner cells receive different "
                         "numbers of kernels &mdash; a checkerboard.")
        return "<br>".join(lines)

    def _draw(self) -> None:
        n, p = self.input_size.value, self.padding.value
        k, s = self.kernel_size.value, self.stride.value
        size = self.full_values.shape[0]
        latest = self._cell(self.step - 1) if self.step else None

        ax = self.ax_in
        ax.clear()
        written = (torch.arange(n * n) < self.step).reshape(n, n).float()
        ax.imshow(written.numpy(), cmap="Greys", vmin=0, vmax=3, origin="upper")
        for (i, j), v in _cells(self.x):
            ax.text(j, i, f"{v:g}", ha="center", va="center", fontsize=11)
        if latest is not None:
            ax.add_patch(Rectangle((latest[1] - 0.5, latest[0] - 0.5), 1, 1, fill=False,
                                   edgecolor="#d62728", linewidth=2.5))
        _grid(ax, n, n)
        ax.set_title(f"input {n} \u00d7 {n}", fontsize=10)

        ax = self.ax_out
        ax.clear()
        max_count = math.ceil(k / s) ** 2  # the most kernels that can cover one cell
        vmax = max_count * 1.25
        ax.imshow(self.full_counts.numpy(), cmap="Blues", vmin=0, vmax=vmax, origin="upper")
        fontsize = 9 if size <= 9 else 7 if size <= 14 else 5
        for (i, j), v in _cells(self.full_values):
            count = int(self.full_counts[i, j])
            if count > 0:
                ax.text(j, i, f"{v:g}", ha="center", va="center", fontsize=fontsize,
                        color="white" if count > 0.55 * vmax else "black")
        if latest is not None:
            top, left = latest[0] * s, latest[1] * s
            ax.add_patch(Rectangle((left - 0.5, top - 0.5), k, k, fill=False,
                                   edgecolor="#d62728", linewidth=2.5))
        if self.valid and p > 0:
            ax.add_patch(Rectangle((p - 0.5, p - 0.5), size - 2 * p, size - 2 * p, fill=False,
                                   edgecolor="black", linestyle="--", linewidth=1.5))
        _grid(ax, size, size)
        kept = (f"kept {self.output_size} \u00d7 {self.output_size} (dashed)" if p and self.valid
                else "nothing kept" if not self.valid else f"{size} \u00d7 {size}")
        ax.set_title(f"output: colour = kernels summed per cell; {kept}", fontsize=10)
        with self.output:
            clear_output(wait=True)
            display(self.fig)


def _cells(values: torch.Tensor):
    """((row, column), value) for every cell of a 2-D tensor."""
    rows, cols = values.shape
    for i in range(rows):
        for j in range(cols):
            yield (i, j), float(values[i, j])


def _grid(ax, rows: int, cols: int) -> None:
    ax.set_xticks([c - 0.5 for c in range(cols + 1)], minor=True)
    ax.set_yticks([r - 0.5 for r in range(rows + 1)], minor=True)
    ax.grid(which="minor", color="0.6", linewidth=0.6)
    ax.tick_params(which="both", length=0, labelsize=7)
    ax.set_xticks(range(cols))
    ax.set_yticks(range(rows))
    ax.set_xlim(-0.5, cols - 0.5)
    ax.set_ylim(rows - 0.5, -0.5)


def transposed_conv_explorer(input_size: int = 2, kernel_size: int = 3, stride: int = 2,
                             padding: int = 0) -> TransposedConvExplorer:
    """Build the transposed-convolution explorer.

    Args:
        input_size: starting side ``n`` of the square input (1..5).
        kernel_size: starting side ``k`` of the square kernel of ones (1..5).
        stride: starting stride ``s`` (1..4).
        padding: starting padding ``p`` (0..3).

    Returns:
        The widget (an ``ipywidgets.VBox``); see ``TransposedConvExplorer`` for its attributes.

    Raises:
        ValueError: if a starting value is outside its slider's range.
    """
    return TransposedConvExplorer(input_size, kernel_size, stride, padding)
