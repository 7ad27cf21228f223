"""Sliding-window explorer: one window shape on a stride grid, and how many windows that is.

Pick a window size, an aspect ratio and a stride; step the window over the image (a position
slider or the step buttons) and read how many windows that one shape takes
(``count_windows_strided``) against every box of every size (``count_windows``). Given a
score map (``sliding_window_detect``'s fourth output), it is drawn beside the image.

In a notebook::

    from course_lib.widgets import sliding_window_explorer
    sliding_window_explorer(image, score_map=score_map)
"""

from __future__ import annotations

import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch
from IPython.display import clear_output, display

from course_lib import viz
from course_lib.sliding_window import (
    count_windows,
    count_windows_strided,
    window_grid,
    window_shape,
)

__all__ = ["ASPECT_RATIOS", "SlidingWindowExplorer", "sliding_window_explorer"]

ASPECT_RATIOS: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)
"""The aspect ratios ``w / h`` the ratio slider offers."""


class SlidingWindowExplorer(widgets.VBox):
    """Step one window over an image and count the windows of its shape.

    Controls: ``size`` (IntSlider, pixels), ``aspect_ratio`` (SelectionSlider over
    ``ASPECT_RATIOS``), ``stride`` (IntSlider, pixels), ``position`` (IntSlider, the window's
    index in row-major order, 0 to ``num_windows - 1``), ``prev_button``/``next_button`` (one
    step), ``show_all`` (Checkbox: outline every window of the shape). Readout: ``readout``
    (HTML). Plain results: ``window_hw`` (the window's ``(h, w)``), ``windows`` (Tensor[N, 4]
    of every window of the shape), ``num_windows`` (N, equal to ``count_windows_strided``),
    ``exhaustive`` (``count_windows(H, W)``), ``window`` (the current ``(x1, y1, x2, y2)``,
    ``None`` when the shape does not fit). Drawing: ``fig``/``axes`` shown in ``output``.
    """

    def __init__(self, image: torch.Tensor, score_map: torch.Tensor | None = None,
                 size: int = 32, aspect_ratio: float = 1.0, stride: int = 16,
                 max_size: int | None = None) -> None:
        if image.dim() != 3 or image.shape[0] not in (1, 3):
            raise ValueError(f"image must have shape (3, H, W) or (1, H, W), got "
                             f"{tuple(image.shape)}")
        self.image = image.detach().cpu()
        self.H, self.W = int(image.shape[1]), int(image.shape[2])
        if score_map is not None:
            score_map = score_map.detach().cpu()
            if score_map.shape != (self.H, self.W):
                raise ValueError(f"score_map must have shape ({self.H}, {self.W}) like the "
                                 f"image, got {tuple(score_map.shape)}")
        if aspect_ratio not in ASPECT_RATIOS:
            raise ValueError(f"aspect_ratio must be one of {ASPECT_RATIOS}, got {aspect_ratio!r}")
        self.score_map = score_map
        self.exhaustive = count_windows(self.H, self.W)
        largest = max_size if max_size is not None else max(self.H, self.W)

        self.size = widgets.IntSlider(value=size, min=4, max=largest, step=1,
                                      description="size", continuous_update=False)
        self.aspect_ratio = widgets.SelectionSlider(
            options=[(f"{r:g}", r) for r in ASPECT_RATIOS], value=aspect_ratio,
            description="w / h", continuous_update=False)
        self.stride = widgets.IntSlider(value=stride, min=1, max=max(self.H, self.W), step=1,
                                        description="stride", continuous_update=False)
        self.position = widgets.IntSlider(value=0, min=0, max=0, description="window #",
                                          continuous_update=True)
        self.prev_button = widgets.Button(description="\u25c0 step")
        self.next_button = widgets.Button(description="step \u25b6", button_style="primary")
        self.show_all = widgets.Checkbox(value=False, description="outline all windows")
        self.readout = widgets.HTML()
        self.output = widgets.Output()

        panels = 2 if score_map is not None else 1
        with plt.ioff():
            self.fig, axes = plt.subplots(1, panels, figsize=(3.6 * panels, 3.4),
                                          layout="constrained", squeeze=False)
        plt.close(self.fig)  # shown by hand in self.output, never by pyplot
        self.axes = list(axes.flat)

        self.prev_button.on_click(lambda _: self.step(-1))
        self.next_button.on_click(lambda _: self.step(+1))
        for control in (self.size, self.aspect_ratio, self.stride):
            control.observe(lambda _: self.recompute(), names="value")
        for control in (self.position, self.show_all):
            control.observe(lambda _: self.update(), names="value")

        super().__init__([
            widgets.HBox([self.size, self.aspect_ratio, self.stride]),
            widgets.HBox([self.position, self.prev_button, self.next_button, self.show_all]),
            widgets.HBox([self.output, self.readout]),
        ])
        self.recompute()

    # ------------------------------------------------------------------ computing

    def recompute(self) -> None:
        """New window shape or stride: rebuild the grid, keep the position if it still exists."""
        size, ratio, stride = self.size.value, self.aspect_ratio.value, self.stride.value
        self.window_hw = window_shape(size, ratio)
        self.windows = window_grid(self.H, self.W, size, ratio, stride)    # (N, 4)
        self.num_windows = count_windows_strided(self.H, self.W, [size], [ratio], stride)
        keep = min(self.position.value, max(self.num_windows - 1, 0))
        with self.position.hold_trait_notifications():
            self.position.max = max(self.num_windows - 1, 0)
            self.position.value = keep
        self.position.disabled = self.num_windows <= 1
        self.update()

    def step(self, delta: int) -> None:
        """Move the window ``delta`` positions along the grid (row-major), wrapping around."""
        if self.num_windows:
            self.position.value = (self.position.value + delta) % self.num_windows

    def update(self) -> None:
        """Redraw the current window and the readout."""
        n = self.num_windows
        self.window = tuple(int(v) for v in self.windows[self.position.value].tolist()) \
            if n else None
        self.prev_button.disabled = self.next_button.disabled = n <= 1
        self.readout.value = self._readout_html()
        self._draw()

    # ------------------------------------------------------------------ showing

    def _readout_html(self) -> str:
        h, w = self.window_hw
        stride = self.stride.value
        lines = [f"<b>window {w} &times; {h}</b> (w &times; h), stride {stride}"]
        if self.num_windows == 0:
            lines.append(f"<span style='color:#d62728'>does not fit in the "
                         f"{self.W} &times; {self.H} image: 0 windows</span>")
        else:
            cols = (self.W - w) // stride + 1
            rows = (self.H - h) // stride + 1
            x1, y1, x2, y2 = self.window
            lines.append(f"window #{self.position.value}: ({x1}, {y1}, {x2}, {y2})")
            lines.append(f"{cols} columns &times; {rows} rows = <b>{self.num_windows:,}</b> "
                         "windows of this shape")
            if self.score_map is not None:
                cx, cy = (x1 + x2) // 2, (y1 + y2) // 2
                lines.append(f"score map at its centre: {float(self.score_map[cy, cx]):.2f}")
        lines.append(f"every box of every size (stride 1): {self.exhaustive:,}")
        return "<br>".join(lines)

    def _draw(self) -> None:
        panels = [(self.axes[0], "image")]
        if self.score_map is not None:
            panels.append((self.axes[1], "score map"))
        for ax, what in panels:
            ax.clear()
            if what == "image":
                viz.show_image(ax, self.image)
            else:
                ax.imshow(self.score_map.numpy(), cmap="magma", vmin=0, vmax=1,
                          extent=(0, self.W, self.H, 0))
                ax.set_xticks([])
                ax.set_yticks([])
            if self.show_all.value and self.num_windows:
                viz.draw_boxes(ax, self.windows, colors="white", linewidth=0.5, alpha=0.35)
            if self.window is not None:
                viz.draw_boxes(ax, [self.window], colors="#ffdd00", linewidth=2.5)
            ax.set_xlim(0, self.W)
            ax.set_ylim(self.H, 0)
            ax.set_title(f"{what}: {self.num_windows:,} windows" if what == "image" else what,
                         fontsize=9)
        with self.output:
            clear_output(wait=True)
            display(self.fig)


def _default_image() -> torch.Tensor:
    from course_lib.data.synthetic import make_scene

    image, _ = make_scene(3, 128, kind="detection")
    return image


def sliding_window_explorer(image: torch.Tensor | None = None,
                            score_map: torch.Tensor | None = None, size: int = 32,
                            aspect_ratio: float = 1.0, stride: int = 16,
                            max_size: int | None = None) -> SlidingWindowExplorer:
    """Build the sliding-window explorer.

    Args:
        image: Tensor[3, H, W] in [0, 1]; default a 128 x 128 synthetic detection scene.
        score_map: optional Tensor[H, W] of window scores (``sliding_window_detect``'s fourth
            output), drawn beside the image.
        size: starting window size ``s`` in pixels.
        aspect_ratio: starting ``w / h``, one of ``ASPECT_RATIOS``.
        stride: starting stride in pixels.
        max_size: the size slider's maximum (default: the image's longer side).

    Returns:
        The widget (an ``ipywidgets.VBox``); see ``SlidingWindowExplorer`` for its attributes.

    Raises:
        ValueError: for an image that is not (3, H, W), a score map of another size, or an
            aspect ratio not in ``ASPECT_RATIOS``.
    """
    return SlidingWindowExplorer(_default_image() if image is None else image,
                                 score_map=score_map, size=size, aspect_ratio=aspect_ratio,
                                 stride=stride, max_size=max_size)
