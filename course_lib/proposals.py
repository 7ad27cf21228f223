"""Selective search (Uijlings et al., 2013): class-agnostic object proposals for R-CNN.

The idea: objects are groups of similar neighbouring pixels at many scales. So start from a
fine over-segmentation, merge the two most similar neighbouring regions again and again until
one region (the whole image) is left, and take the bounding box of every region ever formed.

1. Initial regions: Felzenszwalb and Huttenlocher's graph segmentation
   (``skimage.segmentation.felzenszwalb``; a larger ``scale`` gives fewer, larger regions).
2. Each region gets a colour histogram, a texture histogram, a size and a bounding box.
3. Hierarchical grouping: the similarity of two neighbouring regions ``i`` and ``j`` is

   ``s = s_colour + s_texture + s_size + s_fill``, each in [0, 1]:
     - ``s_colour``  = histogram intersection ``sum(min(colour_i, colour_j))``
     - ``s_texture`` = histogram intersection of the texture histograms
     - ``s_size``    = ``1 - (size_i + size_j) / size_image``: merge small regions first
     - ``s_fill``    = ``1 - (BB_ij - size_i - size_j) / size_image``, ``BB_ij`` the area of the
       box around both: merge regions that fill each other's gaps first

   Merge the most similar pair into a new region (histograms: size-weighted average), update its
   neighbours and their similarities, repeat until no neighbouring pair is left.
4. Diversification: repeat 1-3 for several strategies (every ``scale`` in every colour space),
   rank the boxes as in the paper (a region's position in its hierarchy, 1 = the last merge,
   times a random number in [0, 1]; smallest first), drop duplicate boxes.

Simplification (texture): the paper takes Gaussian derivatives (sigma = 1) in 8 orientations and
a 10-bin histogram of each, per colour channel (240 bins). We do the same with the derivative in
direction ``theta`` computed from the x and y derivatives, ``cos(theta) gx + sin(theta) gy``,
keep only its positive part (so 8 orientations 45° apart cover the full circle) and scale it by
its largest value in the channel before binning.

Shape shorthand used in this module:
    H, W  image height and width in pixels
    R     number of regions (initial regions, and later every merged region too)
    P     number of proposals
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from skimage.color import rgb2hsv
from skimage.segmentation import felzenszwalb
from torch import Tensor

from course_lib.boxes import as_boxes, box_iou

COLOUR_BINS = 25  # per channel
TEXTURE_ORIENTATIONS = 8
TEXTURE_BINS = 10  # per orientation and channel
COLOUR_SPACES = ("rgb", "hsv")


def selective_search(
    image,
    scale: float | tuple[float, ...] = (50, 100, 200),
    sigma: float = 0.8,
    min_size: int = 20,
    max_proposals: int = 2000,
    colour_spaces: tuple[str, ...] = COLOUR_SPACES,
    seed: int = 0,
) -> Tensor:
    """Object proposals by selective search, ranked best first.

    Args:
        image: an RGB image, either a Tensor[3, H, W] (float in [0, 1], or uint8) or an
            ndarray[H, W, 3] (uint8, or float in [0, 1]).
        scale: Felzenszwalb's ``k`` (as in the paper, for intensities 0..255); a larger value
            gives larger initial regions. A tuple runs one strategy per value.
        sigma: width of the Gaussian that smooths the image before the segmentation.
        min_size: smallest initial region, in pixels.
        max_proposals: return at most this many boxes.
        colour_spaces: run every scale in each of these colour spaces (``"rgb"``, ``"hsv"``).
        seed: seed of the random factors in the ranking (the result is deterministic).

    Returns:
        Tensor[P, 4]: float32 boxes in ``(x1, y1, x2, y2)`` pixels, ``x2`` = last column + 1
        (as the synthetic targets), best first, no two equal, ``P <= max_proposals``.

    Raises:
        ValueError: if ``image`` is not ``(3, H, W)`` / ``(H, W, 3)`` or an argument is out of
            range.
    """
    rgb = _as_hwc_float(image)  # (H, W, 3) float64 in [0, 1]
    scales = (scale,) if np.isscalar(scale) else tuple(scale)
    if not scales or any(k <= 0 for k in scales):
        raise ValueError(f"scale must be > 0 (or a non-empty tuple of them), got {scale!r}")
    if max_proposals < 0:
        raise ValueError(f"max_proposals must be >= 0, got {max_proposals}")
    for space in colour_spaces:
        if space not in COLOUR_SPACES:
            raise ValueError(f"colour_spaces must hold values from {COLOUR_SPACES}, got {space!r}")

    rng = np.random.default_rng(seed)
    all_boxes, all_scores = [], []
    for space in colour_spaces:
        converted = rgb if space == "rgb" else rgb2hsv(rgb)  # (H, W, 3) in [0, 1]
        for k in scales:
            labels = felzenszwalb(converted, scale=k, sigma=sigma, min_size=min_size,
                                  channel_axis=-1)  # (H, W) int, 0..R0-1
            boxes = hierarchical_grouping(converted, labels)  # (R, 4), in creation order
            # Paper's ranking: position 1 is the last region formed (the whole image), the
            # initial regions come last; a random factor mixes the strategies' lists.
            position = np.arange(len(boxes), 0, -1)  # (R,) R..1
            all_boxes.append(boxes)
            all_scores.append(position * rng.random(len(boxes)))

    boxes = np.concatenate(all_boxes)  # (sum R, 4)
    order = np.argsort(np.concatenate(all_scores), kind="stable")  # lowest score first
    boxes = boxes[order]
    # Drop duplicates, keeping the best-ranked copy of each box.
    _, first = np.unique(boxes, axis=0, return_index=True)
    boxes = boxes[np.sort(first)][:max_proposals]
    return torch.from_numpy(boxes.astype(np.float32))


def hierarchical_grouping(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Merge the most similar neighbouring regions until one is left; return every region's box.

    Args:
        image (ndarray[H, W, 3]): the image in the strategy's colour space, values in [0, 1].
        labels (ndarray[H, W]): initial regions, ints ``0..R0-1``.

    Returns:
        ndarray[R, 4]: int64 boxes ``(x1, y1, x2, y2)`` of the ``R0`` initial regions followed
        by the region made by each merge, in the order they were formed (``R = 2 R0 - 1`` for a
        connected image).
    """
    num_initial = int(labels.max()) + 1
    colour, texture, size, boxes = region_features(image, labels)
    image_size = labels.size

    # Grow the per-region arrays as regions are formed: region t is row t.
    colour, texture, size, boxes = list(colour), list(texture), list(size), list(boxes)
    neighbours = {r: set() for r in range(num_initial)}
    for i, j in _neighbour_pairs(labels):
        neighbours[i].add(j)
        neighbours[j].add(i)

    def similarity(i, j):
        bb = np.concatenate([np.minimum(boxes[i][:2], boxes[j][:2]),
                             np.maximum(boxes[i][2:], boxes[j][2:])])  # box around both
        bb_area = (bb[2] - bb[0]) * (bb[3] - bb[1])
        s_colour = np.minimum(colour[i], colour[j]).sum()
        s_texture = np.minimum(texture[i], texture[j]).sum()
        s_size = 1.0 - (size[i] + size[j]) / image_size
        s_fill = 1.0 - (bb_area - size[i] - size[j]) / image_size
        return s_colour + s_texture + s_size + s_fill

    sims = {(i, j): similarity(i, j) for i in neighbours for j in neighbours[i] if i < j}
    while sims:
        i, j = max(sims, key=sims.get)  # the most similar pair (ties: the first found)
        t = len(size)  # the new region's index
        si, sj = size[i], size[j]
        size.append(si + sj)
        colour.append((si * colour[i] + sj * colour[j]) / (si + sj))
        texture.append((si * texture[i] + sj * texture[j]) / (si + sj))
        boxes.append(np.concatenate([np.minimum(boxes[i][:2], boxes[j][:2]),
                                     np.maximum(boxes[i][2:], boxes[j][2:])]))
        # t inherits the neighbours of i and j; i and j are gone.
        neighbours[t] = (neighbours.pop(i) | neighbours.pop(j)) - {i, j}
        for k in neighbours[t]:
            neighbours[k] -= {i, j}
            neighbours[k].add(t)
            sims.pop((min(i, k), max(i, k)), None)
            sims.pop((min(j, k), max(j, k)), None)
            sims[(k, t)] = similarity(k, t)  # k < t: t is the newest region
        del sims[(i, j)]
    return np.stack(boxes)


def region_features(image: np.ndarray, labels: np.ndarray):
    """Colour and texture histograms, sizes and boxes of the regions of ``labels``.

    Args:
        image (ndarray[H, W, 3]): values in [0, 1].
        labels (ndarray[H, W]): regions, ints ``0..R-1``, every one non-empty.

    Returns:
        ``(colour, texture, size, boxes)``: colour ndarray[R, 3 * 25] and texture
        ndarray[R, 3 * 8 * 10] histograms, each L1-normalised (each row sums to 1), size
        ndarray[R] in pixels, boxes ndarray[R, 4] int64 ``(x1, y1, x2, y2)``.
    """
    num_regions = int(labels.max()) + 1
    flat = labels.ravel()  # (H*W,)

    def histogram(values, bins):
        """Per-region histogram of values in [0, 1] with ``bins`` bins: (R, bins)."""
        index = np.clip((values.ravel() * bins).astype(np.int64), 0, bins - 1)  # (H*W,)
        counts = np.bincount(flat * bins + index, minlength=num_regions * bins)
        return counts.reshape(num_regions, bins)

    colour = np.concatenate([histogram(image[..., c], COLOUR_BINS) for c in range(3)], axis=1)
    texture = np.concatenate(
        [histogram(response, TEXTURE_BINS) for response in _texture_responses(image)], axis=1)
    size = np.bincount(flat, minlength=num_regions).astype(np.float64)  # (R,)
    colour = colour / colour.sum(axis=1, keepdims=True)  # (R, 75), L1-normalised
    texture = texture / texture.sum(axis=1, keepdims=True)  # (R, 240)

    boxes = np.zeros((num_regions, 4), dtype=np.int64)
    for r, (rows, cols) in enumerate(ndimage.find_objects(labels + 1)):
        boxes[r] = (cols.start, rows.start, cols.stop, rows.stop)
    return colour, texture, size, boxes


def _texture_responses(image: np.ndarray) -> list[np.ndarray]:
    """Rectified Gaussian derivatives (sigma 1) in 8 orientations per channel, scaled to [0, 1].

    Returns:
        list of 3 * 8 ndarray[H, W]: channel-major, then orientation.
    """
    responses = []
    angles = np.arange(TEXTURE_ORIENTATIONS) * (2 * np.pi / TEXTURE_ORIENTATIONS)
    for c in range(3):
        gy = ndimage.gaussian_filter(image[..., c], sigma=1.0, order=(1, 0))  # (H, W) d/drow
        gx = ndimage.gaussian_filter(image[..., c], sigma=1.0, order=(0, 1))  # (H, W) d/dcol
        for theta in angles:
            r = np.maximum(np.cos(theta) * gx + np.sin(theta) * gy, 0.0)  # (H, W)
            responses.append(r / r.max() if r.max() > 0 else r)
    return responses


def _neighbour_pairs(labels: np.ndarray) -> np.ndarray:
    """Pairs ``(i, j)``, ``i < j``, of regions that touch (4-neighbourhood): ndarray[E, 2]."""
    pairs = np.concatenate([
        np.stack([labels[:, :-1].ravel(), labels[:, 1:].ravel()], axis=1),  # left-right
        np.stack([labels[:-1, :].ravel(), labels[1:, :].ravel()], axis=1),  # top-bottom
    ])  # (E', 2)
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    return np.unique(np.sort(pairs, axis=1), axis=0)


def proposal_recall(proposals: Tensor, gt_boxes: Tensor, iou_threshold: float = 0.5) -> float:
    """Fraction of ground-truth boxes covered by at least one proposal with IoU >= threshold.

    Args:
        proposals (Tensor[P, 4]): boxes in ``(x1, y1, x2, y2)`` format.
        gt_boxes (Tensor[N, 4]): ground-truth boxes in ``(x1, y1, x2, y2)`` format.
        iou_threshold: a ground-truth box counts as found when a proposal's IoU is at least this
            (``>=``: exactly the threshold counts).

    Returns:
        float: recall in [0, 1]; ``nan`` when there is no ground-truth box (0 / 0: recall is
        undefined; to average over images, pool the counts instead).

    Raises:
        ValueError: if ``proposals`` or ``gt_boxes`` does not have shape ``(N, 4)``.
    """
    proposals = as_boxes(proposals, "proposals")
    gt_boxes = as_boxes(gt_boxes, "gt_boxes")
    if len(gt_boxes) == 0:
        return float("nan")
    if len(proposals) == 0:
        return 0.0
    iou = box_iou(gt_boxes.double(), proposals.double())  # (N, P)
    found = (iou >= iou_threshold).any(dim=1)  # (N,)
    return found.double().mean().item()


def _as_hwc_float(image) -> np.ndarray:
    """An RGB image as ndarray[H, W, 3] float64 in [0, 1].

    Accepts Tensor[3, H, W] and ndarray[H, W, 3], uint8 (divided by 255) or float.
    """
    if isinstance(image, Tensor):
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"image must be a Tensor of shape (3, H, W), got shape "
                             f"{tuple(image.shape)}")
        array = image.detach().cpu().permute(1, 2, 0).numpy()  # (3, H, W) -> (H, W, 3)
    elif isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image must be an ndarray of shape (H, W, 3), got shape "
                             f"{image.shape}")
        array = image
    else:
        raise TypeError(f"image must be a torch.Tensor (3, H, W) or numpy.ndarray (H, W, 3), "
                        f"got {type(image).__name__}")
    if array.shape[0] < 2 or array.shape[1] < 2:
        raise ValueError(f"image must be at least 2x2 pixels, got shape {tuple(image.shape)}")
    if array.dtype == np.uint8:
        return array.astype(np.float64) / 255.0
    if array.dtype.kind != "f":
        raise TypeError(f"image must be uint8 or float, got dtype {array.dtype}")
    return np.clip(array.astype(np.float64), 0.0, 1.0)
