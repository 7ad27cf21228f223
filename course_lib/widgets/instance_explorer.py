"""Instance explorer: a Mask R-CNN's instances, the semantic map they make, and the panoptic map.

For every detection Mask R-CNN gives a box, a class, a score and a mask: the mask head predicts
``M x M`` probabilities in the box's own coordinates (the RoI mask), which are pasted into the
image along the box (``course_lib.masks.paste_masks``); a pixel is part of the object where the
pasted probability is ``> 0.5``. The explorer reads one image's output three ways:

* **instances**: each detection scoring at least the threshold, its mask in its own colour, its
  box and "class score" caption. Pick one: beside the image, its RoI mask (``M x M``) and the
  ground-truth mask of the object it overlaps most, cut along the same box to ``M x M`` as
  Mask R-CNN's training targets are (``course_lib.masks.mask_targets``), with the mask IoU of
  the two in image pixels. A model without RoI masks (torchvision's) shows its pasted mask and
  the ground truth cropped to the box instead.
* **semantic**: a label map made from the instances: each pixel gets the class of the
  best-scoring instance that covers it, 0 (background) elsewhere, next to the true semantic
  map. Where two objects of one class touch, the label map has one region: it no longer says
  which pixel belongs to which object.
* **panoptic**: every pixel gets one segment: a *thing* (an instance, best score first, as
  ``course_lib.panoptic.panoptic_merge`` keeps them) or a *stuff* region (by default class 0,
  the synthetic background: the pixels no instance takes), next to the true panoptic map (the
  true objects as things, the rest as stuff). Matched segments (same class, IoU > 0.5) share
  a colour; the readout gives the image's PQ, SQ and RQ from
  ``course_lib.panoptic.panoptic_quality``.

The model runs once per image, when the image is first shown, under ``torch.no_grad`` on
``device``; its outputs are kept on the CPU. An ``nn.Module`` is put in eval mode for the call
and every submodule gets its own train/eval mode back afterwards; if its weights are on another
device than ``device``, they are moved there for the call and back after it (one copy each way
per new image: build the explorer with the model already on ``device`` to skip it). So the
caller's model is left as it was.

Shape shorthand: ``D`` detections of the model, ``N`` of them kept (score >= threshold), ``G``
ground-truth objects, ``M x M`` the RoI mask grid, ``H x W`` pixels.

In a notebook::

    from course_lib.widgets import instance_explorer
    instance_explorer(mask_rcnn)            # the held-out synthetic scenes
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import clear_output, display
from matplotlib.colors import to_rgba
from matplotlib.patches import Patch
from torch import Tensor, nn

from course_lib import viz
from course_lib.device import get_device
from course_lib.masks import mask_targets
from course_lib.panoptic import (
    owner_map,
    panoptic_from_target,
    panoptic_merge,
    panoptic_quality,
    semantic_from_instances,
    semantic_from_owners,
)

__all__ = ["InstanceExplorer", "VIEWS", "instance_explorer", "semantic_from_instances"]

VIEWS: tuple[str, ...] = ("instances", "semantic", "panoptic")
"""The views of the toggle."""
MASK_THRESHOLD = 0.5
"""A pasted mask covers the pixels where its probability is ``> MASK_THRESHOLD``."""
DEFAULT_IMAGE_SIZE = 128
"""Side of the default synthetic test images."""
DEFAULT_NUM_CLASSES = 3
"""Classes of the default synthetic test images: circle, square, triangle."""

VOID_COLOR = "#000000"                                # a pixel of no segment
STUFF_COLORS = ("#b0b0b0", "#707070", "#d8d8d8")      # stuff segments, by stuff class
THING_COLORS = tuple(c for c in viz.PALETTE if c != "#7f7f7f")  # no grey: that is stuff
GT_COLOR = "white"                                    # outline of the best-matching GT object
MASK_CMAP = "viridis"                                 # the RoI mask panels, 0..1
DASH = "\u2014"                                       # a number that does not exist (nan)

Model = Callable[[list[Tensor]], list[dict]]


def instance_color(i: int) -> str:
    """The colour of detection ``i`` (its index in the model's output) in the instances view."""
    return viz.PALETTE[i % len(viz.PALETTE)]


class InstanceExplorer(widgets.VBox):
    """One image's Mask R-CNN detections as instances, as a semantic map and as a panoptic map.

    Controls: ``image_index`` (IntSlider), ``next_button`` (Button), ``score_threshold``
    (FloatSlider, 0..1: detections scoring at least it are kept), ``view`` (ToggleButtons over
    ``VIEWS``) and ``instance`` (Dropdown of the kept detections, best score first, labelled
    ``"#i name score"`` with ``i`` the detection's index in the model's output; its value is
    ``i``; empty and disabled when nothing is kept). Readout: ``readout`` (HTML).

    Plain results, updated on every change: ``index``, ``image`` (Tensor[3, H, W]) and
    ``target`` (``"masks"`` Tensor[G, H, W] bool, ``"labels"`` Tensor[G] int64,
    ``"semantic"`` Tensor[H, W] int64); ``prediction``, the model's output on the CPU
    (``"boxes"`` Tensor[D, 4], ``"scores"`` Tensor[D], ``"labels"`` Tensor[D] int64,
    ``"masks"`` Tensor[D, H, W] float probabilities, ``"roi_masks"`` Tensor[D, M, M] or None);
    ``has_roi_masks``; ``keep`` (Tensor[N] int64, the kept detections, best score first),
    ``kept`` (N) and ``pred_masks`` (Tensor[N, H, W] bool, their masks ``> 0.5``).

    The selected instance: ``selected`` (its detection index, None when nothing is kept),
    ``instance_mask`` (what its panel shows: the RoI mask Tensor[M, M], or without
    ``roi_masks`` the pasted probabilities cropped to its box, Tensor[h, w]), ``best_gt`` (the
    GT object whose mask has the highest IoU with its mask, None when none overlaps it),
    ``gt_instance_mask`` (that object's mask over the same box, Tensor[M, M] from
    ``mask_targets`` or Tensor[h, w]; None without a best GT) and ``mask_iou`` (the IoU of the
    two masks in image pixels; 0 when no GT object overlaps, nan when nothing is selected).

    Semantic: ``semantic_pred`` (Tensor[H, W] int64, from the kept instances, see
    ``semantic_from_instances``), ``semantic_gt`` (the target's), ``semantic_accuracy`` (the
    fraction of pixels where they agree), ``merged`` and ``gt_merged`` (lists of pairs
    ``(i, j)`` of kept detections, or of GT objects, of one class whose visible pixels touch:
    one region in the semantic map).

    Panoptic: ``pred_panoptic`` and ``gt_panoptic`` (``(map Tensor[H, W] int64, segments)``
    pairs, as ``course_lib.panoptic``), ``pq`` (``panoptic_quality(pred_panoptic,
    gt_panoptic)``: ``"PQ"``, ``"SQ"``, ``"RQ"``, ``"PQ_th"``, ``"PQ_st"``, ... and
    ``"per_class"``) and ``matches`` (list of ``(pred id, gt id, IoU)``, the matched segments).

    Drawing: ``fig``, its ``axes`` (instances: the image, the RoI mask, the GT mask; semantic
    and panoptic: prediction, ground truth) and ``colorbar`` (instances view, else None), shown
    in ``output``.
    """

    def __init__(self, model: Model, images: Sequence[Tensor], targets: Sequence[dict],
                 class_names: Sequence[str] | None = None, stuff_classes: Iterable[int] = (0,),
                 score_threshold: float = 0.5, device: torch.device | str = "auto") -> None:
        self.model = model
        self.device = _concrete(get_device(device))
        self.images = [image.detach().cpu() for image in images]
        self.targets = targets
        self.num_images = len(self.images)
        # names indexed by label, 0 = background; None: labels are shown as numbers
        self.class_names = None if class_names is None else ["background", *class_names]
        self.stuff_classes = tuple(sorted({int(c) for c in stuff_classes}))
        self._predictions: dict[int, dict] = {}  # image index -> the model's output, on CPU
        self._truths: dict[int, dict] = {}  # image index -> its GT panoptic map and merges
        self._gt_crops: dict[tuple[int, int], Tensor] = {}  # (image, detection) -> M x M
        self._busy = False  # set while update() runs: the controls it sets do not call it again
        self._options_image = -1  # the image whose detections the instance selector offers

        self.image_index = widgets.IntSlider(value=0, min=0, max=self.num_images - 1,
                                             description="image", continuous_update=False)
        self.next_button = widgets.Button(description="next \u25b6",
                                          layout=widgets.Layout(width="80px"))
        self.score_threshold = widgets.FloatSlider(
            value=score_threshold, min=0.0, max=1.0, step=0.05, description="score \u2265",
            readout_format=".2f", continuous_update=False)
        self.view = widgets.ToggleButtons(options=VIEWS, value=VIEWS[0])
        self.instance = widgets.Dropdown(options=[], description="instance")
        self.readout = widgets.HTML()
        self.output = widgets.Output()

        with plt.ioff():
            self.fig = plt.figure(figsize=(7.4, 4.4), layout="constrained")
        plt.close(self.fig)  # shown by hand in self.output, never by pyplot
        self.axes: list[plt.Axes] = []
        self.colorbar = None

        for control in (self.image_index, self.score_threshold, self.view, self.instance):
            control.observe(lambda _: self.update(), names="value")
        self.next_button.on_click(lambda _: self.next_image())

        super().__init__([
            widgets.HBox([self.image_index, self.next_button, self.score_threshold]),
            widgets.HBox([self.view, self.instance]),
            self.readout,
            self.output,
        ])
        self.update()

    # ------------------------------------------------------------------ computing

    def next_image(self) -> None:
        """Show the next image (after the last one: the first)."""
        self.image_index.value = (self.image_index.value + 1) % self.num_images

    def label_name(self, label: int) -> str:
        """The name of class ``label`` (the label itself when there are no names for it)."""
        names = self.class_names
        return names[label] if names is not None and 0 <= label < len(names) else str(label)

    def predict(self, index: int) -> dict:
        """The model's output on image ``index``, checked, on the CPU (cached)."""
        if index not in self._predictions:
            image = self.images[index]
            with _eval_mode_on(self.model, self.device), torch.no_grad():
                output = self.model([image.to(self.device)])
            self._predictions[index] = _check_output(output, image, index, self.stuff_classes)
        return self._predictions[index]

    def update(self) -> None:
        """Recompute everything for the chosen image, threshold and instance; redraw."""
        if self._busy:
            return
        self._busy = True
        try:
            self._update()
        finally:
            self._busy = False

    def _update(self) -> None:
        self.index = index = self.image_index.value
        self.image, self.target = self.images[index], self.targets[index]
        self.prediction = p = self.predict(index)
        self.has_roi_masks = p["roi_masks"] is not None

        # the kept detections, best score first (stable: ties keep the model's order)
        order = torch.argsort(p["scores"], descending=True, stable=True)  # (D,)
        self.keep = order[p["scores"][order] >= self.score_threshold.value]  # (N,)
        self.kept = len(self.keep)
        self.pred_masks = p["masks"][self.keep] > MASK_THRESHOLD  # (N, H, W) bool
        scores, labels = p["scores"][self.keep], p["labels"][self.keep]  # (N,) each
        self._choose_instance()
        self._compare_selected()

        # semantic: the label of the best-scoring instance at each pixel
        owner = owner_map(self.pred_masks, scores)  # (H, W): position in keep, -1 for none
        self.semantic_pred = semantic_from_owners(owner, labels)
        self.semantic_gt = self.target["semantic"]
        self.semantic_accuracy = float((self.semantic_pred == self.semantic_gt).double().mean())
        self.merged = sorted(tuple(sorted((int(self.keep[a]), int(self.keep[b]))))
                             for a, b in _touching_pairs(owner, labels))
        truth = self._truth(index)
        self.gt_merged = truth["merged"]

        # panoptic: things from the kept instances, stuff where they leave pixels free
        instances = {"masks": self.pred_masks, "scores": scores, "labels": labels}
        self.pred_panoptic = panoptic_merge(self.semantic_pred, instances, self.stuff_classes)
        self.gt_panoptic = truth["panoptic"]
        self.pq = panoptic_quality(self.pred_panoptic, self.gt_panoptic)
        self.matches = _panoptic_matches(self.pred_panoptic, self.gt_panoptic)

        self.readout.value = self._readout_html()
        self._draw()

    def _choose_instance(self) -> None:
        """Offer the kept detections; on the same image, keep the selected one if still kept."""
        p = self.prediction
        options = [(f"#{i} {self.label_name(int(p['labels'][i]))} {float(p['scores'][i]):.2f}", i)
                   for i in self.keep.tolist()]
        previous = self.instance.value if self.index == self._options_image else None
        self._options_image = self.index
        self.instance.options = options  # resets the value (update() is not re-entered)
        values = [i for _, i in options]
        self.instance.value = previous if previous in values else (values[0] if values else None)
        self.instance.disabled = not values
        self.selected = self.instance.value

    def _compare_selected(self) -> None:
        """The selected instance's mask against the GT object that overlaps it best."""
        i, p = self.selected, self.prediction
        self.instance_mask = self.gt_instance_mask = self.best_gt = None
        if i is None:
            self.mask_iou = math.nan
            return
        gt_masks = self.target["masks"]  # (G, H, W) bool
        ious = _mask_ious(p["masks"][i] > MASK_THRESHOLD, gt_masks)  # (G,)
        if len(ious) and float(ious.max()) > 0:
            self.best_gt = int(ious.argmax())
            self.mask_iou = float(ious[self.best_gt])
        else:
            self.mask_iou = 0.0
        box = p["boxes"][i]  # (4,)
        if self.has_roi_masks:
            self.instance_mask = p["roi_masks"][i]  # (M, M)
            if self.best_gt is not None:  # the GT mask cut along the box: the mask target
                key = (self.index, i)
                if key not in self._gt_crops:
                    side = self.instance_mask.shape[-1]
                    self._gt_crops[key] = mask_targets(
                        gt_masks, box[None], torch.tensor([self.best_gt]), side)[0]
                self.gt_instance_mask = self._gt_crops[key]
        else:
            x1, y1, x2, y2 = _pixel_box(box, *p["masks"].shape[1:])
            self.instance_mask = p["masks"][i, y1:y2, x1:x2]  # (h, w)
            if self.best_gt is not None:
                self.gt_instance_mask = gt_masks[self.best_gt, y1:y2, x1:x2].float()

    def _truth(self, index: int) -> dict:
        """The GT of image ``index`` read as the prediction is (cached).

        ``"panoptic"``: every GT object as a thing, the free pixels of each stuff class as
        stuff. That is ``panoptic_merge`` with every object kept: equal scores (the data set's
        order), no object dropped for overlaps (``overlap_threshold=1``), no stuff region
        dropped for its size (``min_area=0``). ``"merged"``: the pairs of GT objects of one
        class that touch.
        """
        if index not in self._truths:
            target = self.targets[index]
            ones = torch.ones(len(target["labels"]))  # equal scores: the first object wins
            self._truths[index] = {
                "panoptic": panoptic_from_target(target, self.stuff_classes),
                "merged": _touching_pairs(owner_map(target["masks"], ones), target["labels"]),
            }
        return self._truths[index]

    # ------------------------------------------------------------------ showing

    def _readout_html(self) -> str:
        p, threshold = self.prediction, self.score_threshold.value
        detections = len(p["scores"])
        line = (f"image <b>{self.index}</b>: <b>{self.kept}</b> of {detections} detections "
                f"with score \u2265 {threshold:.2f}")
        if detections == 0:
            line += f" {DASH} the model found nothing in this image: no instance to select"
        elif self.kept == 0:
            line += f" {DASH} no instance to select: lower the threshold"
        lines = [line]

        i = self.selected
        if i is not None:
            what = f"#{i} {self.label_name(int(p['labels'][i]))} {float(p['scores'][i]):.2f}"
            if self.best_gt is None:
                lines.append(f"{what}: no GT object overlaps its mask, mask IoU <b>0</b>")
            else:
                g = self.best_gt
                name = self.label_name(int(self.target["labels"][g]))
                lines.append(f"{what}: mask IoU <b>{self.mask_iou:.3f}</b> with GT #{g} "
                             f"({name}), the GT object it overlaps most")

        semantic = (f"semantic map from the instances: {self.semantic_accuracy:.1%} of the "
                    "pixels agree with the truth")
        if self.merged:
            pairs = ", ".join(f"#{a} and #{b} ({self.label_name(int(p['labels'][a]))})"
                              for a, b in self.merged)
            semantic += (f"; {pairs} touch: in the semantic map each pair is one region, "
                         "which pixel belongs to which object is lost")
        else:
            semantic += "; no two kept instances of one class touch"
        semantic += (f" (in the truth: {len(self.gt_merged)} pair(s) of touching objects of "
                     "one class)")
        lines.append(semantic)

        pq, per_class = self.pq, self.pq["per_class"].values()
        tp, fp, fn = (sum(c[k] for c in per_class) for k in ("TP", "FP", "FN"))
        lines.append(
            f"panoptic quality: PQ <b>{_number(pq['PQ'])}</b>, SQ {_number(pq['SQ'])}, RQ "
            f"{_number(pq['RQ'])} (means over the {pq['n']} classes present; per class PQ = "
            f"SQ \u00d7 RQ); things PQ<sub>th</sub> {_number(pq['PQ_th'])}, stuff "
            f"PQ<sub>st</sub> {_number(pq['PQ_st'])}; segments TP {tp}, FP {fp}, FN {fn}")
        return "<br>".join(lines)

    def _draw(self) -> None:
        self.fig.clear()
        self.colorbar = None
        view = self.view.value
        if view == "instances":
            self._draw_instances()
        elif view == "semantic":
            self._draw_semantic()
        else:
            self._draw_panoptic()
        with self.output:
            clear_output(wait=True)
            display(self.fig)

    def _draw_instances(self) -> None:
        self.fig.set_size_inches(7.4, 4.4)
        grid = self.fig.add_gridspec(2, 2, width_ratios=(2.2, 1))
        ax = self.fig.add_subplot(grid[:, 0])
        roi_ax, gt_ax = self.fig.add_subplot(grid[0, 1]), self.fig.add_subplot(grid[1, 1])
        self.axes = [ax, roi_ax, gt_ax]

        viz.show_image(ax, self.image)
        limits = ax.get_xlim(), ax.get_ylim()  # the image's extent
        p, keep, selected = self.prediction, self.keep.tolist(), self.selected
        groups = [([i for i in keep if i != selected], 0.35, 1.0)]  # (indices, alpha, width)
        if selected is not None:
            groups.append(([selected], 0.6, 2.5))  # the selected one on top, bolder
        for indices, alpha, width in groups:
            if not indices:
                continue
            positions = [keep.index(i) for i in indices]  # rows of pred_masks
            colors = [instance_color(i) for i in indices]
            viz.draw_masks(ax, self.pred_masks[positions], colors=colors, alpha=alpha,
                           linewidth=width)
            viz.draw_boxes(ax, p["boxes"][indices], labels=p["labels"][indices],
                           scores=p["scores"][indices], colors=colors,
                           class_names=self.class_names, linewidth=width)
        if self.best_gt is not None:
            viz.draw_masks(ax, self.target["masks"][self.best_gt], colors=[GT_COLOR], alpha=0.0,
                           linestyle="dashed", linewidth=1.2)
        ax.set_xlim(limits[0])  # boxes reaching outside do not shrink the image
        ax.set_ylim(limits[1])
        at_least = f"score \u2265 {self.score_threshold.value:.2f}"
        title = (f"{self.kept} of {len(p['scores'])} detections, {at_least}" if self.kept
                 else f"no detection with {at_least}")
        ax.set_title(title, fontsize=9)
        self._draw_instance_panels(roi_ax, gt_ax)

    def _draw_instance_panels(self, roi_ax: plt.Axes, gt_ax: plt.Axes) -> None:
        i = self.selected
        if i is None:
            for ax in (roi_ax, gt_ax):
                _empty_panel(ax, "no instance selected")
            return
        shown = roi_ax.imshow(self.instance_mask.numpy(), cmap=MASK_CMAP, vmin=0, vmax=1,
                              interpolation="nearest")
        if self.has_roi_masks:
            side = self.instance_mask.shape[-1]
            roi_ax.set_title(f"#{i}: RoI mask {side}\u00d7{side}", fontsize=8)
        else:
            roi_ax.set_title(f"#{i}: no roi_masks from the model,\npasted mask cut to its box",
                             fontsize=8)
        roi_ax.set_xticks([])
        roi_ax.set_yticks([])
        if self.gt_instance_mask is None:
            _empty_panel(gt_ax, f"no GT object overlaps #{i}\nmask IoU 0")
        else:
            gt_ax.imshow(self.gt_instance_mask.numpy(), cmap=MASK_CMAP, vmin=0, vmax=1,
                         interpolation="nearest")
            g = self.best_gt
            side = self.gt_instance_mask.shape[-1]
            where = (f"mask target {side}\u00d7{side}" if self.has_roi_masks
                     else "cut to the box")
            gt_ax.set_title(f"GT #{g} ({self.label_name(int(self.target['labels'][g]))}), "
                            f"{where}\nmask IoU {self.mask_iou:.3f}", fontsize=8)
            gt_ax.set_xticks([])
            gt_ax.set_yticks([])
        self.colorbar = self.fig.colorbar(shown, ax=[roi_ax, gt_ax], shrink=0.8)
        self.colorbar.ax.tick_params(labelsize=7)

    def _draw_semantic(self) -> None:
        self.fig.set_size_inches(7.4, 4.0)
        self.axes = list(self.fig.subplots(1, 2))
        grey = self.image.mean(dim=0)  # (3, H, W) -> (H, W): its colours are not classes
        titles = ("from the instances (best score wins)", "ground truth")
        for ax, labels, title in zip(self.axes, (self.semantic_pred, self.semantic_gt), titles,
                                     strict=True):
            viz.draw_semantic(ax, labels, image=grey, alpha=0.7, legend=False)
            ax.set_title(title, fontsize=9)
        present = sorted((set(self.semantic_pred.unique().tolist())
                          | set(self.semantic_gt.unique().tolist())) - {0})
        handles = [Patch(color=viz.class_color(c), label=self.label_name(c)) for c in present]
        if handles:
            self.fig.legend(handles=handles, loc="outside lower center", ncol=len(handles),
                            fontsize=7, frameon=False)

    def _draw_panoptic(self) -> None:
        self.fig.set_size_inches(7.4, 4.0)
        self.axes = list(self.fig.subplots(1, 2))
        pred_colors, gt_colors = self._segment_colors()
        grey = self.image.mean(dim=0)
        for ax, (panoptic, segments), colors, who in zip(
                self.axes, (self.pred_panoptic, self.gt_panoptic), (pred_colors, gt_colors),
                ("prediction", "ground truth"), strict=True):
            viz.show_image(ax, grey)
            lut = np.zeros((len(segments) + 1, 4), dtype=np.float32)  # row s: segment id s
            lut[0] = to_rgba(VOID_COLOR, 0.7)
            for segment in segments:
                lut[segment["id"]] = to_rgba(colors[segment["id"]], 0.65)
            ax.imshow(lut[panoptic.numpy()], interpolation="nearest",  # (H, W) -> (H, W, 4)
                      extent=(0, panoptic.shape[1], panoptic.shape[0], 0))
            things = sum(s["isthing"] for s in segments)
            ax.set_title(f"{who}: {things} things, {len(segments) - things} stuff", fontsize=9)
        self.axes[0].set_title(f"{self.axes[0].get_title()}\nPQ {_number(self.pq['PQ'])}, "
                               f"SQ {_number(self.pq['SQ'])}, RQ {_number(self.pq['RQ'])}",
                               fontsize=9)
        handles = [Patch(color=VOID_COLOR, label="void (no segment)")]
        handles += [Patch(color=STUFF_COLORS[k % len(STUFF_COLORS)],
                          label=f"stuff: {self.label_name(c)}")
                    for k, c in enumerate(self.stuff_classes)]
        handles.append(Patch(color=THING_COLORS[0], label="things (a matched pair: one colour)"))
        self.fig.legend(handles=handles, loc="outside lower center", ncol=len(handles),
                        fontsize=7, frameon=False)

    def _segment_colors(self) -> tuple[dict[int, str], dict[int, str]]:
        """Segment id -> colour, for the prediction and the ground truth.

        Stuff in greys (one per stuff class); GT things in palette colours; a predicted thing
        matched to a GT thing in that thing's colour, an unmatched one in the next colours.
        """
        def stuff(category: int) -> str:
            return STUFF_COLORS[self.stuff_classes.index(category) % len(STUFF_COLORS)]

        gt_colors, pred_colors = {}, {}
        for segment in self.gt_panoptic[1]:
            sid = segment["id"]
            gt_colors[sid] = (_thing_color(len(gt_colors)) if segment["isthing"]
                              else stuff(segment["category_id"]))
        partner = {p: g for p, g, _ in self.matches}
        extra = len(gt_colors)
        for segment in self.pred_panoptic[1]:
            sid = segment["id"]
            if not segment["isthing"]:
                pred_colors[sid] = stuff(segment["category_id"])
            elif sid in partner:
                pred_colors[sid] = gt_colors[partner[sid]]
            else:
                pred_colors[sid] = _thing_color(extra)
                extra += 1
        return pred_colors, gt_colors


# ---------------------------------------------------------------------- the maps


def _touching_pairs(owner: Tensor, labels: Tensor) -> list[tuple[int, int]]:
    """Pairs ``(a, b)``, ``a < b``, of one class whose pixels in ``owner`` are 4-neighbours."""
    pairs = set()
    # neighbours to the right, then below: (H, W - 1) and (H - 1, W) pairs of owners
    for a, b in ((owner[:, :-1], owner[:, 1:]), (owner[:-1], owner[1:])):
        edge = (a != b) & (a >= 0) & (b >= 0)
        for i, j in zip(a[edge].tolist(), b[edge].tolist(), strict=True):
            if int(labels[i]) == int(labels[j]):
                pairs.add((min(i, j), max(i, j)))
    return sorted(pairs)


def _mask_ious(mask: Tensor, masks: Tensor) -> Tensor:
    """IoU of one bool mask (H, W) with each of ``masks`` (G, H, W): Tensor[G] float64."""
    inter = (masks & mask).flatten(1).sum(dim=1).double()  # (G,)
    union = (masks | mask).flatten(1).sum(dim=1).double()
    return torch.where(union > 0, inter / union.clamp(min=1), 0.0)


def _pixel_box(box: Tensor, height: int, width: int) -> tuple[int, int, int, int]:
    """The whole pixels a box covers, inside the image and at least one pixel: x1, y1, x2, y2."""
    x1, y1, x2, y2 = (float(v) for v in box)
    x1, y1 = min(max(math.floor(x1), 0), width - 1), min(max(math.floor(y1), 0), height - 1)
    x2, y2 = max(min(math.ceil(x2), width), x1 + 1), max(min(math.ceil(y2), height), y1 + 1)
    return x1, y1, x2, y2


def _panoptic_matches(pred: tuple[Tensor, list[dict]],
                      gt: tuple[Tensor, list[dict]]) -> list[tuple[int, int, float]]:
    """The matched segments ``(pred id, gt id, IoU)``: same class and IoU > 0.5.

    The IoU is ``panoptic_quality``'s: the GT's void pixels are left out of the union.
    """
    (pred_map, pred_segments), (gt_map, gt_segments) = pred, gt
    gt_void = gt_map == 0  # (H, W)
    matches = []
    for p in pred_segments:
        in_p = pred_map == p["id"]  # (H, W)
        for g in gt_segments:
            if g["category_id"] != p["category_id"]:
                continue
            in_g = gt_map == g["id"]
            inter = int((in_p & in_g).sum())
            union = int((in_p | in_g).sum()) - int((in_p & gt_void).sum())
            if inter and inter / union > 0.5:
                matches.append((p["id"], g["id"], inter / union))
    return matches


# ---------------------------------------------------------------------- helpers


def _thing_color(k: int) -> str:
    """The colour of the ``k``-th thing segment of a panoptic map (never a stuff grey)."""
    return THING_COLORS[k % len(THING_COLORS)]


def _number(value: float) -> str:
    """A score with 3 decimals, or a dash when it does not exist (nan)."""
    return DASH if math.isnan(value) else f"{value:.3f}"


def _empty_panel(ax: plt.Axes, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", color="grey", fontsize=8,
            transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def _concrete(device: torch.device) -> torch.device:
    """``cuda`` as ``cuda:N`` (the current device), so it compares equal to a weight's device."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


@contextmanager
def _eval_mode_on(model: object, device: torch.device) -> Iterator[None]:
    """Run ``model`` in eval mode on ``device``; afterwards it is as it was.

    Every submodule gets its own train/eval mode back (a model may keep some parts in eval
    mode while training, e.g. frozen batch norms). Weights and buffers that all lie on one
    other device are moved to ``device`` for the call and back after it.
    """
    if not isinstance(model, nn.Module):
        yield
        return
    modes = [(module, module.training) for module in model.modules()]
    devices = {t.device for t in (*model.parameters(), *model.buffers())}
    home = devices.pop() if len(devices) == 1 else None
    move = home is not None and home != device
    try:
        if move:
            model.to(device)
        model.eval()
        yield
    finally:
        if move:
            model.to(home)
        for module, training in modes:
            module.training = training


def _shape(value: object) -> object:
    return tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__


def _check_output(output: object, image: Tensor, index: int, stuff: tuple[int, ...]) -> dict:
    """The model's output for image ``index``, checked, on the CPU, masks (D, H, W)."""
    is_list = isinstance(output, list | tuple)
    if not is_list or len(output) != 1 or not isinstance(output[0], Mapping):
        got = ([type(item).__name__ for item in output] if is_list
               else type(output).__name__)
        raise ValueError(f"model([image]) must return a list with one dict (Mask R-CNN style), "
                         f"got {got}")
    out = output[0]
    missing = [key for key in ("boxes", "scores", "labels", "masks") if key not in out]
    if missing:
        raise ValueError(f"model output on image {index} has no {missing}: the explorer needs "
                         f"a Mask R-CNN (boxes, scores, labels and masks), got keys "
                         f"{sorted(out)}")
    boxes, scores, labels, masks = (out[k] for k in ("boxes", "scores", "labels", "masks"))
    height, width = image.shape[1:]
    if not isinstance(boxes, Tensor) or boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"model output 'boxes' must be Tensor[D, 4], got {_shape(boxes)}")
    num = boxes.shape[0]
    for name, values in (("scores", scores), ("labels", labels)):
        if not isinstance(values, Tensor) or values.shape != (num,):
            raise ValueError(f"model output {name!r} must be Tensor[{num}] like 'boxes', got "
                             f"{_shape(values)}")
    given = masks
    if isinstance(masks, Tensor) and masks.dim() == 4 and masks.shape[1] == 1:
        masks = masks[:, 0]  # (D, 1, H, W) -> (D, H, W)
    if (not isinstance(masks, Tensor) or tuple(masks.shape) != (num, height, width)
            or not masks.is_floating_point()):
        got = f"{_shape(given)} {given.dtype}" if isinstance(given, Tensor) else _shape(given)
        raise ValueError(f"model output 'masks' must be float probabilities Tensor[D, 1, H, W] "
                         f"= ({num}, 1, {height}, {width}) for image {index}, got {got}")
    roi_masks = out.get("roi_masks")
    if roi_masks is not None:
        if isinstance(roi_masks, Tensor) and roi_masks.dim() == 4 and roi_masks.shape[1] == 1:
            roi_masks = roi_masks[:, 0]  # (D, 1, M, M) -> (D, M, M)
        if (not isinstance(roi_masks, Tensor) or roi_masks.dim() != 3
                or roi_masks.shape[0] != num or roi_masks.shape[1] != roi_masks.shape[2]):
            raise ValueError(f"model output 'roi_masks' must be Tensor[D, M, M] with D = {num}, "
                             f"got {_shape(roi_masks)}")
        roi_masks = roi_masks.detach().cpu().float()
    labels = labels.detach().cpu().to(torch.int64)
    wrong = sorted(set(labels.tolist()) & set(stuff))
    if wrong:
        raise ValueError(f"the model predicts labels {wrong} on image {index}, which are in "
                         f"stuff_classes {stuff}: a detection must be a thing class")
    return {"boxes": boxes.detach().cpu().float(), "scores": scores.detach().cpu().float(),
            "labels": labels, "masks": masks.detach().cpu().float(), "roi_masks": roi_masks}


def _load(dataset: Sequence, count: int) -> tuple[list[Tensor], list[dict]]:
    """The first ``count`` images and targets of ``dataset``, checked, on the CPU."""
    images, targets = [], []
    for i in range(count):
        image, target = dataset[i]
        if not isinstance(image, Tensor) or image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"dataset[{i}] image must be a Tensor (3, H, W), got "
                             f"{_shape(image)}")
        size = tuple(image.shape[1:])
        if not isinstance(target, Mapping) or any(k not in target
                                                  for k in ("masks", "labels", "semantic")):
            got = sorted(target) if isinstance(target, Mapping) else type(target).__name__
            raise ValueError(f"dataset[{i}] target must have 'masks', 'labels' and 'semantic', "
                             f"got {got}")
        masks, labels, semantic = target["masks"], target["labels"], target["semantic"]
        if not isinstance(masks, Tensor) or masks.dim() != 3 or tuple(masks.shape[1:]) != size:
            raise ValueError(f"dataset[{i}] target['masks'] must be Tensor[G, H, W] with (H, W) "
                             f"= {size} like its image, got {_shape(masks)}")
        if not isinstance(labels, Tensor) or labels.shape != (masks.shape[0],):
            raise ValueError(f"dataset[{i}] target['labels'] must be Tensor[{masks.shape[0]}] "
                             f"like its masks, got {_shape(labels)}")
        if not isinstance(semantic, Tensor) or tuple(semantic.shape) != size:
            raise ValueError(f"dataset[{i}] target['semantic'] must be Tensor[H, W] = {size} "
                             f"like its image, got {_shape(semantic)}")
        images.append(image.detach().cpu())
        targets.append({"masks": masks.detach().cpu() != 0,
                        "labels": labels.detach().cpu().to(torch.int64),
                        "semantic": semantic.detach().cpu().to(torch.int64)})
    return images, targets


def instance_explorer(model: Model, dataset: Sequence | None = None, num_images: int = 16,
                      score_threshold: float = 0.5, stuff_classes: Iterable[int] = (0,),
                      class_names: Sequence[str] | None = None,
                      device: str | torch.device = "auto") -> InstanceExplorer:
    """Build the instance explorer.

    Args:
        model: a Mask R-CNN (ours or torchvision's): ``model([image])`` with image
            Tensor[3, H, W] returns a list with one dict: ``"boxes"`` Tensor[D, 4] xyxy,
            ``"scores"`` Tensor[D], ``"labels"`` Tensor[D] int64 (thing classes 1..K),
            ``"masks"`` Tensor[D, 1, H, W] float probabilities (pasted) and optionally
            ``"roi_masks"`` Tensor[D, M, M] probabilities (the mask head's output for the
            predicted class, before pasting). An ``nn.Module`` runs in eval mode on
            ``device`` and is left in its own modes and on its own device afterwards (see the
            module docstring).
        dataset: items ``(image, target)``, image Tensor[3, H, W] and target with ``"masks"``
            Tensor[G, H, W] (uint8/bool), ``"labels"`` Tensor[G] int64 and ``"semantic"``
            Tensor[H, W] int64. Default: the held-out synthetic scenes,
            ``SyntheticShapes("test", num_images, kind="detection", image_size=128,
            num_classes=3)``.
        num_images: how many images to show (the first ones of ``dataset``).
        score_threshold: the detections scoring at least it are kept, in [0, 1] (the slider
            starts there).
        stuff_classes: the classes that are stuff in the panoptic maps (default: 0, the
            background). The prediction has no stuff head: its stuff is the pixels its
            instances leave free, labelled 0, so only a stuff class 0 can be predicted.
        class_names: names of the classes 1..K. Default: ``dataset.classes`` if the dataset
            has them, else the labels are shown as numbers.
        device: where the model runs: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``.

    Returns:
        The widget (an ``ipywidgets.VBox``); see ``InstanceExplorer`` for its attributes.

    Raises:
        ValueError: for ``num_images < 1``, a threshold outside [0, 1], an empty dataset, a
            dataset item without an image (3, H, W) and a target with ``"masks"``,
            ``"labels"`` and ``"semantic"`` of matching shapes, a stuff class below 0 or that
            is also a thing (a class 1..K, or a label of a GT object or of a detection), or a
            model output without ``"masks"`` or with wrong shapes (the message names the key
            and the shapes).
        TypeError: if ``model`` is not callable or ``class_names`` is not a list of names.
    """
    if not callable(model):
        raise TypeError(f"model must be a Mask R-CNN (callable on [image]), got "
                        f"{type(model).__name__}")
    if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 1:
        raise ValueError(f"num_images must be an int >= 1, got {num_images!r}")
    if (isinstance(score_threshold, bool) or not isinstance(score_threshold, int | float)
            or not 0.0 <= score_threshold <= 1.0):
        raise ValueError(f"score_threshold must be a number in [0, 1], got {score_threshold!r}")
    stuff = tuple(stuff_classes)
    if any(isinstance(c, bool) or not isinstance(c, int | np.integer) or c < 0 for c in stuff):
        raise ValueError(f"stuff_classes must be class labels (ints >= 0), got {stuff!r}")
    if dataset is None:
        from course_lib.data.synthetic import SyntheticShapes

        dataset = SyntheticShapes("test", num_images, kind="detection",
                                  image_size=DEFAULT_IMAGE_SIZE, num_classes=DEFAULT_NUM_CLASSES,
                                  cache=False, progress=False)
    if class_names is None:
        names = getattr(dataset, "classes", None)
        class_names = None if names is None else [str(n) for n in names]
    elif isinstance(class_names, str) or not all(isinstance(n, str) for n in class_names):
        raise TypeError(f"class_names must be a list of names of the classes 1..K, got "
                        f"{class_names!r}")
    count = min(num_images, len(dataset))
    if count == 0:
        raise ValueError("dataset must hold at least one image, got an empty one")
    images, targets = _load(dataset, count)

    things = {label for t in targets for label in t["labels"].tolist()}
    if class_names is not None:
        things |= set(range(1, len(class_names) + 1))
    both = sorted(things & {int(c) for c in stuff})
    if both:
        raise ValueError(f"stuff_classes {stuff} include thing classes {both} (classes 1..K "
                         "and the GT objects' labels are things): a class is either stuff, from "
                         "the semantic map, or a thing, from the instances")
    return InstanceExplorer(model, images, targets, class_names=class_names, stuff_classes=stuff,
                            score_threshold=score_threshold, device=device)
