"""Segmentation explorer: a model's label map next to the truth, its errors, and per-class IoU.

A segmentation network gives ``C`` scores per pixel (``C = K + 1``: ``K`` object classes and
the background, class 0); the argmax of each pixel's scores is its predicted class
(``course_lib.segmentation.collapse``). Every metric comes from one ``C x C`` confusion matrix
(``course_lib.segmentation_metrics``): for class ``c``, ``TP`` pixels are ``c`` in both maps,
``FP`` pixels predicted ``c`` but not ``c`` in the truth, ``FN`` pixels ``c`` in the truth but
predicted as something else, and ``IoU_c = TP / (TP + FP + FN)``.

Pick an image and a model, then a view: the prediction or the ground truth over the image (each
class in its ``viz.class_color``, background transparent; the image in grey by default, so that
its own colours are not mistaken for classes), the error map (the wrong pixels), or
all three side by side. Pick one class and the error map shows its TP, FP and FN pixels in three
colours, with its IoU on this image and over all the images of the explorer. The table lists
the IoU of every class on this image and over those images (from a confusion matrix summed
over them, not an average of per-image scores), with the mean IoU and the pixel accuracy; a
class in neither the truth nor the prediction of the image has no IoU ("—"), and the mean
leaves it out.

Each model runs once per image, under ``torch.no_grad``, on ``device``; the label maps and
each model's summed confusion matrix are cached (the matrix is computed when the model is
first shown).

Shape shorthand: ``N`` images, ``K`` object classes, ``C = K + 1``, ``H x W`` pixels.

In a notebook::

    from course_lib.widgets import segmentation_explorer
    segmentation_explorer({"FCN-32s": fcn32, "FCN-8s": fcn8, "U-Net": unet})
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator, Mapping, Sequence

import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch
from IPython.display import clear_output, display
from matplotlib.patches import Patch
from torch import Tensor, nn

from course_lib import viz
from course_lib.device import get_device
from course_lib.segmentation import collapse
from course_lib.segmentation_metrics import confusion_matrix, iou_per_class, pixel_accuracy

__all__ = ["ALL_CLASSES", "SegmentationExplorer", "VIEWS", "segmentation_explorer"]

VIEWS: tuple[str, ...] = ("prediction", "ground truth", "error map", "side by side")
"""The views of the toggle; "side by side" shows the other three."""
ALL_CLASSES = -1
"""The class selector's value for "all classes"."""
DEFAULT_IMAGE_SIZE = 64
"""Side of the default synthetic test images."""

# colours not in viz.PALETTE's first six, so they never look like a class
ERROR_COLOR = "#ff00ff"       # magenta: a wrong pixel (all classes)
TP_COLOR = "#00e5ff"          # cyan: true positive of the chosen class
FP_COLOR = "#ffe600"          # yellow: false positive
FN_COLOR = "#ff00ff"          # magenta: false negative (missed)
BACKGROUND_COLOR = "#202020"  # background, when it is the chosen class
SELECTED_ROW = "#fff3c4"
DASH = "\u2014"               # an IoU that does not exist (0 / 0)

Model = Callable[[Tensor], Tensor]


class SegmentationExplorer(widgets.VBox):
    """A model's label map, the ground truth, the errors and the per-class IoU of one image.

    Controls: ``image_index`` (IntSlider), ``next_button`` and ``random_button`` (Buttons),
    ``model`` (Dropdown of the model names), ``view`` (ToggleButtons over ``VIEWS``),
    ``opacity`` (FloatSlider of the overlays), ``grey_image`` (Checkbox: the image under
    the overlays in grey) and ``class_choice`` (Dropdown: ``ALL_CLASSES`` or a class
    ``0..K``). Readouts: ``readout`` (HTML: the image's scores, the chosen class's
    TP, FP, FN and IoU) and ``table`` (HTML: per-class IoU on the image and over the images).
    Plain results, updated on every change: ``model_name``, ``image`` (Tensor[3, H, W]),
    ``truth`` and ``pred`` (Tensor[H, W] int64 label maps), ``errors`` (Tensor[H, W] bool,
    ``pred != truth``), ``image_cm`` (Tensor[C, C] int64), ``image_iou`` (Tensor[C] float64,
    nan for a class in neither map), ``image_miou`` and ``image_accuracy``; the same over the
    ``num_images`` images: ``dataset_cm``, ``dataset_iou``, ``dataset_miou``,
    ``dataset_accuracy``; for the chosen class (``selected_class``, None for all classes)
    ``tp``, ``fp``, ``fn`` (Tensor[H, W] bool, None for all classes) and ``counts``
    (``(TP, FP, FN)`` pixels). Drawing: ``fig`` and its ``axes`` (one panel, three side by
    side), shown in ``output``.
    """

    def __init__(self, models: Mapping[str, Model], images: Sequence[Tensor],
                 truths: Sequence[Tensor], class_names: Sequence[str],
                 device: torch.device | str = "auto", index: int = 0,
                 view: str = "prediction", opacity: float = 0.6, batch_size: int = 16,
                 seed: int = 0) -> None:
        self.device = get_device(device)
        self.models = {}
        for name, model in models.items():
            if isinstance(model, nn.Module):
                model = model.to(self.device).eval()
            self.models[name] = model
        self.images = [image.detach().cpu() for image in images]
        self.truths = [truth.detach().cpu().to(torch.int64) for truth in truths]
        self.num_images = len(self.images)
        self.class_names = ["background", *class_names]  # index = label
        self.K = len(class_names)
        self.C = self.K + 1
        self.batch_size = batch_size
        self._rng = random.Random(seed)
        self._preds: dict[tuple[str, int], Tensor] = {}  # (model, image) -> (H, W) labels
        self._dataset_cms: dict[str, Tensor] = {}  # model -> (C, C), over all the images
        for name in self.models:  # a wrong output shape fails now, not when it is picked
            self._predict(name, [index])

        self.image_index = widgets.IntSlider(value=index, min=0, max=self.num_images - 1,
                                             description="image", continuous_update=False)
        self.next_button = widgets.Button(description="next \u25b6",
                                          layout=widgets.Layout(width="80px"))
        self.random_button = widgets.Button(description="random",
                                            layout=widgets.Layout(width="80px"))
        names = list(self.models)
        self.model = widgets.Dropdown(options=names, value=names[0], description="model")
        self.view = widgets.ToggleButtons(options=VIEWS, value=view)
        self.opacity = widgets.FloatSlider(value=opacity, min=0.0, max=1.0, step=0.05,
                                           description="opacity", readout_format=".2f",
                                           continuous_update=False)
        self.grey_image = widgets.Checkbox(value=True, description="image in grey",
                                           indent=False)
        classes = [("all classes", ALL_CLASSES)]
        classes += [(f"{c}: {name}", c) for c, name in enumerate(self.class_names)]
        self.class_choice = widgets.Dropdown(options=classes, value=ALL_CLASSES,
                                             description="class")
        self.readout = widgets.HTML()
        self.table = widgets.HTML()
        self.output = widgets.Output()

        with plt.ioff():
            self.fig = plt.figure(figsize=(4.2, 4.5), layout="constrained")
        plt.close(self.fig)  # shown by hand in self.output, never by pyplot
        self.axes: list[plt.Axes] = []

        for control in (self.image_index, self.model, self.view, self.opacity,
                        self.grey_image, self.class_choice):
            control.observe(lambda _: self.update(), names="value")
        self.next_button.on_click(lambda _: self.next_image())
        self.random_button.on_click(lambda _: self.random_image())

        super().__init__([
            widgets.HBox([self.image_index, self.next_button, self.random_button, self.model]),
            widgets.HBox([self.view, self.opacity, self.grey_image]),
            self.class_choice,
            widgets.HBox([self.output, widgets.VBox([self.readout, self.table])]),
        ])
        self.update()

    # ------------------------------------------------------------------ computing

    def next_image(self) -> None:
        """Show the next image (after the last one: the first)."""
        self.image_index.value = (self.image_index.value + 1) % self.num_images

    def random_image(self) -> None:
        """Show another image, drawn at random (the same sequence for the same ``seed``)."""
        others = [i for i in range(self.num_images) if i != self.image_index.value]
        if others:
            self.image_index.value = self._rng.choice(others)

    def _predict(self, name: str, indices: Sequence[int]) -> None:
        """Label the images ``indices`` with model ``name``, those not cached yet."""
        model = self.models[name]
        todo = [i for i in indices if (name, i) not in self._preds]
        for batch in _batches(todo, self.images, self.batch_size):
            images = torch.stack([self.images[i] for i in batch]).to(self.device)  # (B, 3, H, W)
            with torch.no_grad():
                logits = model(images)  # (B, C, H, W)
            if isinstance(logits, Mapping) and "out" in logits:  # torchvision's models
                logits = logits["out"]
            expected = (len(batch), self.C, *images.shape[2:])
            if not isinstance(logits, Tensor) or tuple(logits.shape) != expected:
                got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
                raise ValueError(
                    f"model {name!r} must map images {tuple(images.shape)} to logits (N, C, H, W)"
                    f" = {expected}, C = {self.K} classes + background, got {got}")
            labels = collapse(logits).cpu()  # (B, C, H, W) -> (B, H, W)
            for i, label_map in zip(batch, labels, strict=True):
                self._preds[(name, i)] = label_map

    def dataset_matrix(self, name: str) -> Tensor:
        """The confusion matrix of model ``name`` summed over all the images (cached).

        Returns:
            Tensor[C, C], int64: ``cm[t, p]`` pixels of true class ``t`` predicted ``p``.
        """
        if name not in self._dataset_cms:
            self._predict(name, range(self.num_images))
            cm = torch.zeros(self.C, self.C, dtype=torch.int64)
            for i, truth in enumerate(self.truths):
                cm += confusion_matrix(self._preds[(name, i)], truth, self.C)
            self._dataset_cms[name] = cm
        return self._dataset_cms[name]

    def update(self) -> None:
        """Recompute the maps and scores of the chosen image, model and class; redraw."""
        index, self.model_name = self.image_index.value, self.model.value
        self._predict(self.model_name, [index])
        self.image, self.truth = self.images[index], self.truths[index]
        self.pred = self._preds[(self.model_name, index)]
        self.errors = self.pred != self.truth  # (H, W)

        self.image_cm = confusion_matrix(self.pred, self.truth, self.C)  # (C, C)
        self.image_iou = iou_per_class(self.image_cm)  # (C,), nan: in neither map
        self.image_miou = float(torch.nanmean(self.image_iou))
        self.image_accuracy = pixel_accuracy(self.image_cm)
        self.dataset_cm = self.dataset_matrix(self.model_name)
        self.dataset_iou = iou_per_class(self.dataset_cm)
        self.dataset_miou = float(torch.nanmean(self.dataset_iou))
        self.dataset_accuracy = pixel_accuracy(self.dataset_cm)

        c = self.class_choice.value
        self.selected_class = None if c == ALL_CLASSES else c
        if self.selected_class is None:
            self.tp = self.fp = self.fn = None
            self.counts = None
        else:
            is_pred, is_true = self.pred == c, self.truth == c  # (H, W) each
            self.tp, self.fp, self.fn = is_pred & is_true, is_pred & ~is_true, ~is_pred & is_true
            self.counts = (int(self.tp.sum()), int(self.fp.sum()), int(self.fn.sum()))

        self.readout.value = self._readout_html()
        self.table.value = self._table_html()
        self._draw()

    # ------------------------------------------------------------------ showing

    def class_color(self, c: int) -> str:
        """The colour of class ``c`` (``viz.class_color``; dark grey for the background)."""
        return BACKGROUND_COLOR if c == 0 else viz.class_color(c)

    def _readout_html(self) -> str:
        n = self.num_images
        lines = [
            f"image <b>{self.image_index.value}</b>, model <b>{self.model_name}</b>: pixel "
            f"accuracy <b>{_number(self.image_accuracy)}</b>, mIoU "
            f"<b>{_number(self.image_miou)}</b> (over the {n} images: "
            f"{_number(self.dataset_accuracy)} and {_number(self.dataset_miou)})",
        ]
        c = self.selected_class
        if c is None:
            wrong = int(self.errors.sum())
            lines.append(f"wrong pixels: <b>{wrong}</b> of {self.errors.numel()} "
                         f"({100 * wrong / max(self.errors.numel(), 1):.1f}%)")
        else:
            tp, fp, fn = self.counts
            name = self.class_names[c]
            if tp + fp + fn == 0:
                lines.append(f"<b>{name}</b> is in neither the truth nor the prediction of this "
                             f"image: no IoU ({DASH}), left out of the mIoU")
            else:
                lines.append(f"<b>{name}</b>: IoU = TP / (TP + FP + FN) = {tp} / ({tp} + {fp} + "
                             f"{fn}) = <b>{_number(self.image_iou[c])}</b> on this image")
            lines.append(f"over the {n} images: IoU <b>{_number(self.dataset_iou[c])}</b>")
        return "<br>".join(lines)

    def _table_html(self) -> str:
        n = self.num_images
        heads = ("class", "true px", "predicted px", "IoU (image)", f"IoU ({n} images)")
        header = "".join(f"<th style='padding:0 5px'>{h}</th>" for h in heads)
        true_px, pred_px = self.image_cm.sum(dim=1), self.image_cm.sum(dim=0)  # (C,) each
        rows = []
        for c, name in enumerate(self.class_names):
            swatch = (f"<span style='color:{self.class_color(c)}'>&#9632;</span> "
                      if c else "")
            cells = (f"{swatch}{name}", int(true_px[c]), int(pred_px[c]),
                     _number(self.image_iou[c]), _number(self.dataset_iou[c]))
            style = f" style='background:{SELECTED_ROW}'" if c == self.selected_class else ""
            rows.append(f"<tr{style}>" + "".join(f"<td style='padding:0 5px'>{cell}</td>"
                                                 for cell in cells) + "</tr>")
        for label, image, dataset in (
            ("mIoU", self.image_miou, self.dataset_miou),
            ("pixel accuracy", self.image_accuracy, self.dataset_accuracy),
        ):
            cells = (f"<b>{label}</b>", "", "", f"<b>{_number(image)}</b>",
                     f"<b>{_number(dataset)}</b>")
            rows.append("<tr>" + "".join(f"<td style='padding:0 5px'>{cell}</td>"
                                         for cell in cells) + "</tr>")
        return (f"<table style='font-size:85%'><tr>{header}</tr>{''.join(rows)}</table>"
                f"<small>{DASH}: the class is in neither map of the image (0 / 0), left out "
                "of the mean; mIoU averages background and classes</small>")

    def _draw(self) -> None:
        view = self.view.value
        panels = ("ground truth", "prediction", "error map") if view == "side by side" else (view,)
        self.fig.clear()
        self.fig.set_size_inches(*((9.0, 3.7) if len(panels) > 1 else (4.2, 4.5)))
        self.axes = list(self.fig.subplots(1, len(panels), squeeze=False)[0])
        for ax, panel in zip(self.axes, panels, strict=True):
            self._draw_panel(ax, panel)
        self.fig.legend(handles=self._legend_handles(panels), loc="outside lower center",
                        ncol=4, fontsize=7, frameon=False)
        with self.output:
            clear_output(wait=True)
            display(self.fig)

    def _draw_panel(self, ax: plt.Axes, panel: str) -> None:
        alpha, c = self.opacity.value, self.selected_class
        # (3, H, W) -> (H, W): the mean of the channels, shown in grey
        image = self.image.mean(dim=0) if self.grey_image.value else self.image
        if panel == "error map":
            viz.show_image(ax, image)
            if c is None:
                viz.draw_masks(ax, self.errors, colors=[ERROR_COLOR], alpha=alpha, contour=False)
                title = f"errors: {int(self.errors.sum())} px"
            else:
                masks = torch.stack([self.tp, self.fp, self.fn])  # (3, H, W)
                viz.draw_masks(ax, masks, colors=[TP_COLOR, FP_COLOR, FN_COLOR], alpha=alpha,
                               contour=False)
                tp, fp, fn = self.counts
                title = (f"{self.class_names[c]}: TP {tp}, FP {fp}, FN {fn}, "
                         f"IoU {_number(self.image_iou[c])}")
        else:
            labels = self.truth if panel == "ground truth" else self.pred  # (H, W)
            if c is None:
                viz.draw_semantic(ax, labels, image=image, alpha=alpha, legend=False)
            else:
                viz.show_image(ax, image)
                viz.draw_masks(ax, labels == c, colors=[self.class_color(c)], alpha=alpha,
                               contour=False)
            title = "ground truth" if panel == "ground truth" else f"{self.model_name}: prediction"
        ax.set_title(title, fontsize=9)

    def _legend_handles(self, panels: Sequence[str]) -> list[Patch]:
        c = self.selected_class
        classes = range(1, self.C) if c is None else [c]
        handles = [Patch(color=self.class_color(k), label=self.class_names[k]) for k in classes]
        if "error map" in panels:
            if c is None:
                handles.append(Patch(color=ERROR_COLOR, label="wrong pixel"))
            else:
                handles += [Patch(color=TP_COLOR, label="TP"), Patch(color=FP_COLOR, label="FP"),
                            Patch(color=FN_COLOR, label="FN (missed)")]
        return handles


def _number(value: float | Tensor) -> str:
    """A score with 3 decimals, or a dash when it does not exist (nan)."""
    value = float(value)
    return DASH if math.isnan(value) else f"{value:.3f}"


def _batches(indices: Sequence[int], images: Sequence[Tensor],
             size: int) -> Iterator[list[int]]:
    """Runs of consecutive ``indices`` whose images have the same shape, at most ``size`` long."""
    batch: list[int] = []
    for i in indices:
        if batch and (len(batch) == size or images[i].shape != images[batch[0]].shape):
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


def _model_dict(models: Mapping[str, Model] | Model) -> dict[str, Model]:
    """``models`` as a dict name -> model (one model is named after its class)."""
    if isinstance(models, Mapping):
        models = {str(name): model for name, model in models.items()}
    elif callable(models):
        models = {type(models).__name__: models}
    else:
        raise TypeError(f"models must be a model or a dict name -> model, got "
                        f"{type(models).__name__}")
    if not models:
        raise ValueError("models must hold at least one model, got an empty dict")
    for name, model in models.items():
        if not callable(model):
            raise TypeError(f"models[{name!r}] must be a model (images -> logits), got "
                            f"{type(model).__name__}")
    return models


def _load(dataset: Sequence, count: int, num_classes: int) -> tuple[list[Tensor], list[Tensor]]:
    """The first ``count`` images and ``"semantic"`` maps of ``dataset``, checked."""
    images, truths = [], []
    for i in range(count):
        image, target = dataset[i]
        if not isinstance(image, Tensor) or image.dim() != 3 or image.shape[0] != 3:
            shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
            raise ValueError(f"dataset[{i}] image must be a Tensor (3, H, W), got {shape}")
        truth = target.get("semantic") if isinstance(target, Mapping) else None
        if not isinstance(truth, Tensor) or tuple(truth.shape) != tuple(image.shape[1:]):
            got = tuple(truth.shape) if isinstance(truth, Tensor) else type(truth).__name__
            raise ValueError(f"dataset[{i}] target must have 'semantic' Tensor[H, W] = "
                             f"{tuple(image.shape[1:])} like its image, got {got}")
        if truth.numel() and not 0 <= int(truth.min()) <= int(truth.max()) <= num_classes:
            raise ValueError(f"dataset[{i}] target['semantic'] labels must lie in 0..{num_classes}"
                             f" (num_classes = {num_classes}), got {int(truth.min())}.."
                             f"{int(truth.max())}")
        images.append(image)
        truths.append(truth)
    return images, truths


def _positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return value


def segmentation_explorer(models: Mapping[str, Model] | Model, dataset: Sequence | None = None,
                          num_images: int = 32, image_size: int | None = None,
                          num_classes: int | None = None, device: str | torch.device = "auto",
                          index: int = 0, view: str = "prediction", opacity: float = 0.6,
                          batch_size: int = 16) -> SegmentationExplorer:
    """Build the segmentation explorer.

    Args:
        models: a dict name -> model, e.g. ``{"FCN-8s": fcn, "U-Net": unet}``, or one model
            (named after its class). A model maps images Tensor[N, 3, H, W] to logits
            Tensor[N, C, H, W] with ``C = num_classes + 1`` (background included; a dict with
            ``"out"``, as torchvision's models return, works too). An ``nn.Module`` is moved
            to ``device`` and put in eval mode.
        dataset: items ``(image, target)`` with image Tensor[3, H, W] and
            ``target["semantic"]`` Tensor[H, W] int64 (0 = background). Default: the held-out
            synthetic scenes, ``SyntheticShapes("test", num_images, kind="segmentation",
            image_size=image_size, num_classes=num_classes)``.
        num_images: how many images to show (the first ones of ``dataset``); the scores
            "over the images" are over these.
        image_size: side of the default synthetic images (default 64); only without a
            dataset.
        num_classes: K, the object classes. Default: ``len(dataset.classes)``, or 5 (every
            synthetic shape) without a dataset.
        device: where the models run: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``.
        index: the image shown first.
        view: the view shown first, one of ``VIEWS``.
        opacity: opacity of the overlays, in [0, 1].
        batch_size: images per forward pass.

    Returns:
        The widget (an ``ipywidgets.VBox``); see ``SegmentationExplorer`` for its attributes.

    Raises:
        ValueError: for an empty ``models`` dict, a model whose logits are not
            (N, num_classes + 1, H, W) for images (N, 3, H, W) (the message names the model
            and both shapes), a dataset item without an image (3, H, W) and a ``"semantic"``
            map (H, W) of labels in 0..K, ``image_size`` with a dataset, a dataset without
            ``classes`` and no ``num_classes`` (or both, disagreeing), or an argument out of
            range.
        TypeError: if ``models`` is neither a model nor a dict of models.
    """
    models = _model_dict(models)
    num_images, batch_size = _positive_int(num_images, "num_images"), _positive_int(
        batch_size, "batch_size")
    if view not in VIEWS:
        raise ValueError(f"view must be one of {VIEWS}, got {view!r}")
    if not 0 <= opacity <= 1:
        raise ValueError(f"opacity must be in [0, 1], got {opacity!r}")
    if dataset is None:
        from course_lib.data.synthetic import SHAPES, SyntheticShapes

        dataset = SyntheticShapes(
            "test", num_images, kind="segmentation",
            image_size=DEFAULT_IMAGE_SIZE if image_size is None else image_size,
            num_classes=len(SHAPES) if num_classes is None else num_classes,
            cache=False, progress=False)
    elif image_size is not None:
        raise ValueError(f"image_size is for the default synthetic dataset; got "
                         f"image_size={image_size!r} and a dataset (its own size is used)")
    names = getattr(dataset, "classes", None)
    if num_classes is None:
        if names is None:
            raise ValueError("num_classes is needed: the dataset has no .classes to count")
        num_classes = len(names)
    num_classes = _positive_int(num_classes, "num_classes")
    if names is not None and len(names) != num_classes:
        raise ValueError(f"num_classes = {num_classes} but the dataset has {len(names)} classes "
                         f"{tuple(names)}")
    class_names = [str(n) for n in names] if names is not None else [
        f"class {k}" for k in range(1, num_classes + 1)]
    count = min(num_images, len(dataset))
    if count == 0:
        raise ValueError("dataset must hold at least one image, got an empty one")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < count:
        raise ValueError(f"index must be an int in [0, {count - 1}], got {index!r}")
    images, truths = _load(dataset, count, num_classes)
    return SegmentationExplorer(models, images, truths, class_names, device=device, index=index,
                                view=view, opacity=opacity, batch_size=batch_size)
