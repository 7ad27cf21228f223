"""Synthetic shape scenes: the dataset every model lesson trains on.

A scene is a textured background with a few coloured shapes on it (circles, squares,
triangles, stars and rings) plus clutter (thin scribbles and small blobs) that is *not* an
object. The shapes come in every COCO size (small: area < 32², medium, large: area > 96²),
rotated, overlapping and partly hidden, so detection and segmentation are not trivial, yet a
small network learns them in minutes on a laptop.

Ground truth per image, torchvision style (N objects, H x W pixels)::

    boxes     Tensor[N, 4] float32  x1 y1 x2 y2 around the VISIBLE pixels: x1 = first column,
                                    x2 = last column + 1 (so x2 - x1 is the width in pixels)
    labels    Tensor[N]    int64    1..C, the index in SHAPES + 1 (0 is background)
    masks     Tensor[N, H, W] uint8 the visible pixels of each object (disjoint, never empty)
    area      Tensor[N]    float32  visible pixels (= masks.sum((1, 2)))
    iscrowd   Tensor[N]    int64    zeros
    semantic  Tensor[H, W] int64    the label of the object seen at each pixel, 0 elsewhere
    image_id  int

Objects are listed from the bottom layer to the top one (the order they are painted in).

How a scene is made (``make_scene``):

1. plan: how many objects, their classes and sizes; small objects tend to lie on top;
2. place, top layer first: each object gets a position and a rotation and keeps the pixels
   that the objects above it leave free. An object whose visible part is tiny (fewer than
   ``MIN_VISIBLE_PIXELS`` pixels or ``MIN_VISIBLE_FRACTION`` of its shape) is tried elsewhere
   or dropped, and a dropped object is never painted: every object you see is annotated;
3. paint, bottom layer first: background (colour gradient + low-frequency noise + sometimes
   stripes), clutter, then each object in a colour that stands out from what lies under it,
   then grain (pixel noise) over everything.

Rasterising: every shape is a signed distance ``d(x, y)`` (negative inside) evaluated at the
pixel centres of the shape's bounding-box crop only. A convex polygon's ``d`` is the largest
of the distances to its edges' lines (the half-plane test); the star, not convex, uses the
distance to its nearest edge, with the sign from the even-odd rule (point in polygon). The
mask is ``d <= 0``; the paint uses the coverage ``clip(0.5 - d, 0, 1)``, a one-pixel soft
(anti-aliased) edge.

Determinism: a scene depends only on its seed. The code uses numpy's ``Generator`` for
random numbers (uniform draws only) and no arithmetic but ``+ - * /`` and ``sqrt``, which
IEEE-754 rounds exactly the same way on every machine (no sin/cos/exp, whose last bit can
differ between libraries, and no matrix products, whose summation order depends on BLAS).
So the same seed gives the same bytes on every run and machine. Rotations come from random
unit vectors, the star's corners from closed forms with square roots.

``SyntheticShapes`` is the ``Dataset``: image ``i`` of a split is
``make_scene([seed, split_code, i])``, so any image can be made on its own, and the splits
are independent. With ``cache=True`` a whole split is generated once and stored under
``<repo>/data/synthetic/`` (or ``$COURSE_DATA_DIR/synthetic``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from course_lib.data import data_dir
from course_lib.data.targets import instances_to_target

SHAPES = ("circle", "square", "triangle", "star", "ring")
"""The classes: label ``k`` is ``SHAPES[k - 1]``; ``num_classes=C`` uses the first C."""

KINDS = ("single", "detection", "segmentation")
STYLES = ("natural", "clean")
"""``"natural"``: the scenes described above. ``"clean"``: a plain colour gradient (no noise,
stripes or clutter) and objects that lie wholly inside the image and apart from each other
(never touching, never hidden): what lesson 07's one-minute U-Net learns (the shapes are told
apart by their outline, with nothing in the way)."""
CLEAN_GAP = 1.5  # "clean": pixels kept free around every object
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}

GENERATOR_VERSION = 1
"""Bump when a change alters the scenes: it is part of the cache key (old caches are unused)."""

# Default (min_objects, max_objects) per kind.
DEFAULT_OBJECT_COUNTS = {"single": (1, 1), "detection": (1, 6), "segmentation": (3, 10)}

# Chance that a planned object is small / medium / large, per kind (COCO's area groups).
SIZE_GROUP_PROBS = {
    "single": (0.0, 0.6, 0.4),
    "detection": (0.5, 0.4, 0.1),
    "segmentation": (0.40, 0.50, 0.10),
}
SMALL_SIDE = (9.0, 30.0)  # side of the square with the shape's area, in pixels
MEDIUM_SIDE = (34.0, 90.0)
LARGE_SIDE_MIN = 100.0  # large objects: 100 px up to LARGE_SIDE_MAX_FRACTION * image_size
LARGE_SIDE_MAX_FRACTION = 0.9

MIN_VISIBLE_PIXELS = 20
MIN_VISIBLE_FRACTION = 0.25
PLACEMENT_TRIES = 6  # positions tried per object before it is dropped
CLUSTER_PROB = 0.6  # segmentation: chance an object is placed against one already placed
MIN_CONTRAST = 0.4  # RGB distance between an object's colour and the mean colour under it
COLOUR_TRIES = 10

# Unit directions at multiples of 36 and 120 degrees, from closed forms with sqrt only.
_SQRT5 = math.sqrt(5.0)
_C36, _S36 = (1.0 + _SQRT5) / 4.0, math.sqrt(10.0 - 2.0 * _SQRT5) / 4.0
_C72, _S72 = (_SQRT5 - 1.0) / 4.0, math.sqrt(10.0 + 2.0 * _SQRT5) / 4.0
_STAR_DIRECTIONS = np.array([
    (1.0, 0.0), (_C36, _S36), (_C72, _S72), (-_C72, _S72), (-_C36, _S36),
    (-1.0, 0.0), (-_C36, -_S36), (-_C72, -_S72), (_C72, -_S72), (_C36, -_S36),
])  # fmt: skip  # (10, 2): outer, inner, outer, ... corners of the star
_TRIANGLE_DIRECTIONS = np.array([(1.0, 0.0), (-0.5, math.sqrt(0.75)), (-0.5, -math.sqrt(0.75))])
_SQUARE_DIRECTIONS = np.array([(1.0, 1.0), (-1.0, 1.0), (-1.0, -1.0), (1.0, -1.0)]) / math.sqrt(2.0)


# ============================================================================ shapes


@dataclass
class _Shape:
    """One shape: its kind, centre, circumradius, inner ratio and rotation."""

    name: str
    cx: float
    cy: float
    radius: float  # circumradius (outer radius of star and ring)
    inner: float  # star: inner corners' radius / radius; ring: hole radius / radius
    cos: float  # rotation, as a unit vector (cos, sin)
    sin: float

    def corners(self, directions: np.ndarray, radii: np.ndarray | float) -> np.ndarray:
        """Rotate unit ``directions`` (K, 2), scale them by ``radii`` and move them: (K, 2)."""
        dx = (directions[:, 0] * self.cos - directions[:, 1] * self.sin) * radii
        dy = (directions[:, 0] * self.sin + directions[:, 1] * self.cos) * radii
        return np.stack([self.cx + dx, self.cy + dy], axis=1)

    def outline(self) -> np.ndarray:
        """The corners (K, 2) of a polygon shape, in order around it."""
        if self.name == "square":
            return self.corners(_SQUARE_DIRECTIONS, self.radius)
        if self.name == "triangle":
            return self.corners(_TRIANGLE_DIRECTIONS, self.radius)
        if self.name == "star":  # outer, inner, outer, ... corners
            radii = np.where(np.arange(10) % 2 == 0, 1.0, self.inner) * self.radius
            return self.corners(_STAR_DIRECTIONS, radii)
        raise ValueError(f"{self.name} is not a polygon")

    def half_extent(self) -> tuple[float, float]:
        """Half the width and height of the shape's bounding box."""
        if self.name in ("circle", "ring"):
            return self.radius, self.radius
        corners = self.outline()
        return (float(np.abs(corners[:, 0] - self.cx).max()),
                float(np.abs(corners[:, 1] - self.cy).max()))

    def sdf(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """Signed distance (negative inside) at pixel centres ``xs`` (1, w), ``ys`` (h, 1).

        Returns:
            ndarray[h, w]: the distance in pixels, negative inside the shape.
        """
        if self.name in ("circle", "ring"):
            dist = _length(xs - self.cx, ys - self.cy)  # (h, w)
            if self.name == "circle":
                return dist - self.radius
            return np.maximum(dist - self.radius, self.radius * self.inner - dist)
        if self.name == "star":  # not convex
            return _polygon_sdf(self.outline(), xs, ys)
        return _convex_polygon_sdf(self.outline(), xs, ys)


def _area_factor(name: str, inner: float) -> float:
    """The shape's area divided by its circumradius squared."""
    return {
        "circle": math.pi,
        "ring": math.pi * (1.0 - inner * inner),
        "square": 2.0,
        "triangle": 3.0 * math.sqrt(3.0) / 4.0,
        "star": 5.0 * inner * _S36,  # ten triangles (centre, outer, inner corner), angle 36°
    }[name]


def _convex_polygon_sdf(corners: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Half-plane distance of a convex polygon: the largest signed distance to an edge's line.

    It is negative exactly inside the polygon and equals the true distance to the outline
    inside and next to the edges (outside a corner it is a little smaller).

    Args:
        corners (ndarray[K, 2]): the polygon's corners (x, y), in order (either direction).
        xs (ndarray[1, w]): x of the pixel centres.
        ys (ndarray[h, 1]): y of the pixel centres.

    Returns:
        ndarray[h, w]: the distance (negative inside).
    """
    mid_x, mid_y = corners[:, 0].mean(), corners[:, 1].mean()  # a point inside
    d = None
    for (x0, y0), (x1, y1) in zip(corners, np.roll(corners, -1, axis=0), strict=True):
        length = _length(x1 - x0, y1 - y0)
        nx, ny = (y1 - y0) / length, (x0 - x1) / length  # unit normal of the edge
        if nx * (mid_x - x0) + ny * (mid_y - y0) > 0:
            nx, ny = -nx, -ny  # make it point outwards
        edge = (xs - x0) * nx + (ys - y0) * ny  # (1, w) + (h, 1) -> (h, w)
        d = edge if d is None else np.maximum(d, edge)
    return d


def _polygon_sdf(corners: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Signed distance to any simple polygon: the distance to the nearest edge, negative inside.

    Inside or outside is the even-odd rule: a horizontal ray from the pixel to the left
    crosses the outline an odd number of times exactly when the pixel is inside.

    Args:
        corners (ndarray[K, 2]): the polygon's corners (x, y), in order.
        xs (ndarray[1, w]): x of the pixel centres.
        ys (ndarray[h, 1]): y of the pixel centres.

    Returns:
        ndarray[h, w]: the distance (negative inside).
    """
    dist = None
    inside = np.zeros(np.broadcast_shapes(xs.shape, ys.shape), dtype=bool)  # (h, w)
    for (x0, y0), (x1, y1) in zip(corners, np.roll(corners, -1, axis=0), strict=True):
        d = _segment_sdf(x0, y0, x1, y1, 0.0, xs, ys)  # (h, w)
        dist = d if dist is None else np.minimum(dist, d)
        if y0 != y1:  # a horizontal edge is never crossed
            spans = (y0 > ys) != (y1 > ys)  # (h, 1) the edge spans this row
            x_cross = x0 + (ys - y0) * ((x1 - x0) / (y1 - y0))  # (h, 1) where it crosses it
            inside ^= spans & (xs < x_cross)  # (h, w) the edge is right of the pixel
    return np.where(inside, -dist, dist)


def _segment_sdf(x0, y0, x1, y1, half_width, xs, ys) -> np.ndarray:
    """Distance to the segment (x0, y0)-(x1, y1), minus ``half_width``: a thick line, (h, w)."""
    ex, ey = x1 - x0, y1 - y0
    t = np.clip(((xs - x0) * ex + (ys - y0) * ey) / (ex * ex + ey * ey), 0.0, 1.0)  # (h, w)
    return _length(xs - x0 - t * ex, ys - y0 - t * ey) - half_width


def _length(dx, dy):
    """``sqrt(dx * dx + dy * dy)``, elementwise (arrays broadcast): exact IEEE operations only."""
    return np.sqrt(dx * dx + dy * dy)


def _unit_vector(rng: np.random.Generator) -> tuple[float, float]:
    """A direction uniform on the circle: a point uniform in the unit disk, normalised."""
    while True:
        x, y = (float(v) for v in rng.uniform(-1.0, 1.0, 2))
        r2 = x * x + y * y
        if 0.01 < r2 <= 1.0:
            r = math.sqrt(r2)
            return x / r, y / r


def _pixel_grid(x_lo: float, x_hi: float, y_lo: float, y_hi: float):
    """Integer pixel ranges covering [x_lo, x_hi] x [y_lo, y_hi] (+1 px) and their centres."""
    c0, c1 = math.floor(x_lo) - 1, math.ceil(x_hi) + 1
    r0, r1 = math.floor(y_lo) - 1, math.ceil(y_hi) + 1
    xs = (np.arange(c0, c1) + 0.5)[None, :]  # (1, w)
    ys = (np.arange(r0, r1) + 0.5)[:, None]  # (h, 1)
    return (r0, r1, c0, c1), xs, ys


# ============================================================================ a scene


@dataclass
class _Layer:
    """A placed object: its shape and, on its crop of the image, its distance and visible part."""

    label: int
    shape: _Shape
    rows: slice
    cols: slice
    sdf: np.ndarray  # (h, w) signed distance on the crop
    visible: np.ndarray  # (h, w) bool: inside and not hidden by an object above


def make_scene(
    seed: int | Sequence[int],
    image_size: int = 128,
    kind: str = "detection",
    num_classes: int = 5,
    min_objects: int | None = None,
    max_objects: int | None = None,
    image_id: int = 0,
    style: str = "natural",
) -> tuple[torch.Tensor, dict]:
    """Make one synthetic scene and its ground truth.

    Args:
        seed: an int, or a sequence of ints such as ``[seed, split_code, index]`` (what
            ``SyntheticShapes`` uses); anything ``np.random.default_rng`` accepts as a seed.
            (numpy's ``SeedSequence`` ignores trailing zeros, so ``make_scene(7)`` is
            ``make_scene([7, 0, 0])``: image 0 of the train split of seed 7.)
        image_size: side of the square image, 64..256 pixels.
        kind: ``"single"`` (exactly one medium or large object, fully inside: classification
            + localization), ``"detection"`` (``min_objects..max_objects`` objects, default
            1..6) or ``"segmentation"`` (denser: default 3..10, objects placed against each
            other).
        num_classes: use the first ``num_classes`` of ``SHAPES`` (1..5).
        min_objects: fewest objects planned (default per kind, see ``DEFAULT_OBJECT_COUNTS``).
            An object that cannot be placed visibly enough is dropped, so rarely a scene has
            fewer.
        max_objects: most objects planned.
        image_id: stored in the target as ``"image_id"``.
        style: ``"natural"`` or ``"clean"`` (see :data:`STYLES`). An object that does not fit
            a clean scene (whole, apart from the others) is dropped, so clean scenes at 64 px
            hold fewer objects than planned.

    Returns:
        ``(image, target)``: image Tensor[3, H, W] float32 in [0, 1] (exactly a uint8 image
        divided by 255) and the target dict described in the module docstring.

    Raises:
        ValueError: if an argument is out of range.
    """
    min_objects, max_objects = _check_scene_args(image_size, kind, num_classes, min_objects,
                                                 max_objects, style)
    image, instances, labels = _generate(seed, image_size, kind, num_classes, min_objects,
                                         max_objects, style)
    return _as_sample(image, instances, labels, image_id)


def _generate(seed, size, kind, num_classes, min_objects, max_objects, style="natural"):
    """The scene as arrays: image (3, H, W) uint8, instance map (H, W) uint8, labels (N,)."""
    clean = style == "clean"
    rng = np.random.default_rng(seed)
    plan = _plan_objects(rng, size, kind, num_classes, min_objects, max_objects)

    # Place the objects, top layer first; each keeps what the ones above leave free.
    occupied = np.zeros((size, size), dtype=bool)  # (H, W) pixels taken by the layers above
    layers: list[_Layer] = []
    for label, side in plan:
        for _ in range(PLACEMENT_TRIES):
            layer = _place(rng, label, side, size, kind, layers, occupied, clean)
            if layer is not None:
                occupied[layer.rows, layer.cols] |= layer.sdf <= 0
                layers.append(layer)
                break

    # Paint, bottom layer first.
    canvas = _background(rng, size, clean)  # (H, W, 3) float64
    if not clean:
        _paint_clutter(rng, canvas)
    instances = np.zeros((size, size), dtype=np.uint8)  # (H, W) 0 = background, k = object k
    labels = []
    for k, layer in enumerate(reversed(layers)):
        _paint_object(rng, canvas, layer)
        instances[layer.rows, layer.cols][layer.visible] = k + 1
        labels.append(layer.label)
    canvas += rng.uniform(-1.0, 1.0, canvas.shape) * rng.uniform(0.01, 0.05)  # grain
    image = np.rint(np.clip(canvas, 0.0, 1.0) * 255.0).astype(np.uint8)  # (H, W, 3)
    return np.ascontiguousarray(image.transpose(2, 0, 1)), instances, np.array(labels, np.int64)


def _plan_objects(rng, size, kind, num_classes, min_objects, max_objects):
    """Labels and sizes (side of the equal-area square) of the objects, top layer first."""
    num = int(rng.integers(min_objects, max_objects + 1))
    large_max = LARGE_SIDE_MAX_FRACTION * size
    large_left = 0 if large_max < LARGE_SIDE_MIN else (1 if size < 192 else 2)
    sides, labels = [], []
    for _ in range(num):
        probs = np.array(SIZE_GROUP_PROBS[kind])
        if large_left == 0:
            probs[2] = 0.0
        group = int(np.searchsorted(np.cumsum(probs / probs.sum()), rng.random(), side="right"))
        if group == 0:
            side = rng.uniform(*SMALL_SIDE)
        elif group == 1:  # u * u: more objects at the small end of the range
            lo, hi = MEDIUM_SIDE[0], min(MEDIUM_SIDE[1], large_max)
            u = rng.random()
            side = lo + (hi - lo) * u * u
        else:
            side = rng.uniform(LARGE_SIDE_MIN, large_max)
            large_left -= 1
        sides.append(float(side))
        labels.append(int(rng.integers(1, num_classes + 1)))
    # Depth: mostly small on top of large, with some shuffling.
    depth = np.array(sides) * rng.uniform(0.6, 1.4, num)
    order = np.argsort(depth, kind="stable")
    return [(labels[i], sides[i]) for i in order]


def _place(rng, label, side, size, kind, layers, occupied, clean=False) -> _Layer | None:
    """Draw a position and rotation for one object; ``None`` when too little of it shows.

    ``clean``: the object must lie wholly inside the image, ``CLEAN_GAP`` pixels away from
    every object placed before; else ``None``.
    """
    name = SHAPES[label - 1]
    inner = {"star": rng.uniform(0.42, 0.52), "ring": rng.uniform(0.45, 0.65)}.get(name, 0.0)
    radius = side / math.sqrt(_area_factor(name, inner))
    if name == "ring":
        inner = min(inner, 1.0 - 2.5 / radius)  # at least 2.5 px thick
    cos, sin = _unit_vector(rng)
    shape = _Shape(name, 0.0, 0.0, radius, inner, cos, sin)
    hx, hy = shape.half_extent()

    if kind == "single":  # fully inside the image
        fit = min(1.0, (size / 2 - 1) / max(hx, hy))
        shape.radius, hx, hy = radius * fit, hx * fit, hy * fit
        shape.cx, shape.cy = rng.uniform(hx + 1, size - hx - 1), rng.uniform(hy + 1, size - hy - 1)
    else:  # the centre inside; up to ~40% of a shape may leave the image, but large ones
        # stay inside as far as they can (cut, most of them would not be large any more)
        keep_in = 1.0 if side >= LARGE_SIDE_MIN or clean else 0.6
        mx, my = min(keep_in * hx, size / 2), min(keep_in * hy, size / 2)
        if kind == "segmentation" and not clean and layers and rng.random() < CLUSTER_PROB:
            other = layers[int(rng.integers(len(layers)))].shape  # put it against this one
            ux, uy = _unit_vector(rng)
            dist = (other.radius + radius) * rng.uniform(0.35, 0.85)
            shape.cx = float(np.clip(other.cx + ux * dist, mx, size - mx))
            shape.cy = float(np.clip(other.cy + uy * dist, my, size - my))
        else:
            shape.cx, shape.cy = rng.uniform(mx, size - mx), rng.uniform(my, size - my)
    shape.cx, shape.cy = float(shape.cx), float(shape.cy)

    # Rasterise on the shape's whole crop (it may stick out of the image), then clip.
    (r0, r1, c0, c1), xs, ys = _pixel_grid(shape.cx - hx, shape.cx + hx,
                                            shape.cy - hy, shape.cy + hy)
    sdf = shape.sdf(xs, ys)  # (h, w)
    full = int((sdf <= 0).sum())  # pixels of the whole shape, in the image or not
    rows, cols = slice(max(r0, 0), min(r1, size)), slice(max(c0, 0), min(c1, size))
    sdf = sdf[rows.start - r0:rows.stop - r0, cols.start - c0:cols.stop - c0]
    visible = (sdf <= 0) & ~occupied[rows, cols]
    shown = int(visible.sum())
    if clean and (shown < full or ((sdf <= CLEAN_GAP) & occupied[rows, cols]).any()):
        return None
    if shown < MIN_VISIBLE_PIXELS or shown < MIN_VISIBLE_FRACTION * full:
        return None
    return _Layer(label, shape, rows, cols, sdf, visible)


def _background(rng, size, clean=False) -> np.ndarray:
    """Colour gradient + low-frequency noise + sometimes stripes: (H, W, 3) float64.

    ``clean``: the colour gradient only.
    """
    xs = (np.arange(size) + 0.5)[None, :]  # (1, W)
    ys = (np.arange(size) + 0.5)[:, None]  # (H, 1)
    base = rng.uniform(0.15, 0.85) + rng.uniform(-0.15, 0.15, 3)  # (3,) a muted colour
    tilt = rng.uniform(-0.4, 0.4, 3)
    ux, uy = _unit_vector(rng)
    ramp = ((xs - size / 2) * ux + (ys - size / 2) * uy) / size  # (H, W) in about [-0.7, 0.7]
    canvas = base + ramp[..., None] * tilt  # (H, W, 1) * (3,) -> (H, W, 3)
    if clean:
        return canvas

    cells = int(rng.integers(3, 8))  # low-frequency noise: a coarse grid, smoothly enlarged
    grid = rng.uniform(-1.0, 1.0, (cells, cells, 3)) * rng.uniform(0.04, 0.15)
    canvas += _upsample_bilinear(grid, size)

    if rng.random() < 0.35:  # stripes: a triangle wave across the image
        vx, vy = _unit_vector(rng)
        period, phase = rng.uniform(4.0, 20.0) * size / 128, rng.random()
        u = (xs * vx + ys * vy) / period + phase  # (H, W)
        wave = np.abs(2.0 * (u - np.floor(u)) - 1.0) - 0.5  # (H, W) in [-0.5, 0.5]
        canvas += wave[..., None] * rng.uniform(0.03, 0.15, 3)
    return canvas


def _upsample_bilinear(grid: np.ndarray, size: int) -> np.ndarray:
    """Enlarge a (g, g, C) grid to (size, size, C) by bilinear interpolation."""
    g = grid.shape[0]
    pos = (np.arange(size) + 0.5) * ((g - 1) / size)  # (size,) pixel centre -> grid coordinate
    i0 = np.minimum(np.floor(pos).astype(np.int64), g - 2)
    f = pos - i0
    rows = grid[i0] * (1 - f)[:, None, None] + grid[i0 + 1] * f[:, None, None]  # (size, g, C)
    return rows[:, i0] * (1 - f)[None, :, None] + rows[:, i0 + 1] * f[None, :, None]


def _paint_clutter(rng, canvas):
    """Scribbles (thin polylines) and small blobs: things that are not objects."""
    size = canvas.shape[0]
    scale = size / 128
    for _ in range(int(rng.integers(0, round(10 * scale * scale) + 1))):
        colour, alpha = rng.uniform(0.0, 1.0, 3), rng.uniform(0.5, 1.0)
        scribble = rng.random() < 0.6
        if scribble:  # a polyline of 1-3 segments
            points = [rng.uniform(0, size, 2)]
            for _ in range(int(rng.integers(1, 4))):
                ux, uy = _unit_vector(rng)
                points.append(points[-1] + np.array([ux, uy]) * rng.uniform(4.0, 20.0) * scale)
            points = np.array(points)  # (P, 2)
            half_width = rng.uniform(0.4, 1.0)
        else:  # a blob: 1-3 small overlapping discs
            points = rng.uniform(0, size, 2) + rng.uniform(-2.5, 2.5, (int(rng.integers(1, 4)), 2))
            half_width = rng.uniform(1.0, 2.5)
        lo, hi = points.min(axis=0) - half_width, points.max(axis=0) + half_width
        (r0, r1, c0, c1), xs, ys = _pixel_grid(lo[0], hi[0], lo[1], hi[1])
        if scribble:  # distance to the nearest segment
            sdf = np.minimum.reduce([_segment_sdf(*a, *b, half_width, xs, ys)
                                     for a, b in zip(points[:-1], points[1:], strict=True)])
        else:  # blob: distance to the nearest disc
            sdf = np.minimum.reduce([_length(xs - x, ys - y) - half_width
                                     for x, y in points])
        coverage = np.clip(0.5 - sdf, 0.0, 1.0)[..., None] * alpha  # (h, w, 1)
        # keep the part inside the image
        rows, cols = slice(max(r0, 0), min(r1, size)), slice(max(c0, 0), min(c1, size))
        if rows.stop <= rows.start or cols.stop <= cols.start:
            continue
        coverage = coverage[rows.start - r0:rows.stop - r0, cols.start - c0:cols.stop - c0]
        region = canvas[rows, cols]  # a view: painting it paints the canvas
        region += (colour - region) * coverage


def _paint_object(rng, canvas, layer: _Layer):
    """Paint one object with a soft edge, in a colour that contrasts with what lies under it."""
    inside = layer.sdf <= 0
    region = canvas[layer.rows, layer.cols]  # (h, w, 3) view
    local = region[inside].mean(axis=0)  # (3,) mean colour under the object
    best, best_distance = None, -1.0
    for _ in range(COLOUR_TRIES):
        colour = rng.uniform(0.0, 1.0, 3)
        distance = float(np.sqrt(((colour - local) * (colour - local)).sum()))
        if distance > best_distance:
            best, best_distance = colour, distance
        if distance >= MIN_CONTRAST:
            break
    # a gentle shading across the object, as if lit from one side
    shape = layer.shape
    ux, uy = _unit_vector(rng)
    xs = (np.arange(layer.cols.start, layer.cols.stop) + 0.5)[None, :]  # (1, w)
    ys = (np.arange(layer.rows.start, layer.rows.stop) + 0.5)[:, None]  # (h, 1)
    shade = ((xs - shape.cx) * ux + (ys - shape.cy) * uy) / shape.radius  # (h, w) in [-1, 1]
    fill = best + (shade * rng.uniform(0.0, 0.12))[..., None]  # (h, w, 3)
    coverage = np.clip(0.5 - layer.sdf, 0.0, 1.0)[..., None]  # (h, w, 1)
    region += (fill - region) * coverage


def _as_sample(image: np.ndarray, instances: np.ndarray, labels: np.ndarray, image_id: int):
    """Tensors from arrays: image (3, H, W) uint8, instances (H, W) uint8, labels (N,) int64."""
    image_t = torch.as_tensor(image).float() / 255.0  # (3, H, W) float32 in [0, 1]
    return image_t, instances_to_target(instances, labels, image_id)


def _check_scene_args(image_size, kind, num_classes, min_objects, max_objects,
                      style="natural"):
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if not isinstance(image_size, int | np.integer) or not 64 <= image_size <= 256:
        raise ValueError(f"image_size must be an int in 64..256, got {image_size!r}")
    if not isinstance(num_classes, int | np.integer) or not 1 <= num_classes <= len(SHAPES):
        raise ValueError(f"num_classes must be an int in 1..{len(SHAPES)}, got {num_classes!r}")
    lo, hi = DEFAULT_OBJECT_COUNTS[kind]
    lo = lo if min_objects is None else int(min_objects)
    hi = max(hi, lo) if max_objects is None else int(max_objects)
    if kind == "single" and (lo, hi) != (1, 1):
        raise ValueError(f"kind='single' has exactly one object, got min_objects={lo}, "
                         f"max_objects={hi}")
    if not 1 <= lo <= hi <= 50:
        raise ValueError(f"need 1 <= min_objects <= max_objects <= 50, got {lo} and {hi}")
    return lo, hi


# ============================================================================ the dataset


class SyntheticShapes(Dataset):
    """A split of synthetic scenes: ``dataset[i]`` is ``make_scene([seed, split_code, i])``.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``; the splits are independent scenes.
        num_images: how many images.
        kind: ``"single"``, ``"detection"`` or ``"segmentation"`` (see ``make_scene``).
        image_size: side of the square images, 64..256.
        num_classes: the first ``num_classes`` of ``SHAPES``.
        seed: the dataset seed (a non-negative int).
        cache: generate the whole split once and keep it in a file under
            ``root`` (loaded back with ``torch.load(weights_only=True)``); ``False`` makes
            each image when it is asked for.
        transforms: optional ``transforms(image, target) -> (image, target)`` (torchvision
            detection style, as ``PennFudanDataset``).
        min_objects: see ``make_scene``.
        max_objects: see ``make_scene``.
        root: the cache folder; default ``data_dir() / "synthetic"``.
        progress: show a progress bar while a cache is being generated.
        style: ``"natural"`` or ``"clean"`` (see :data:`STYLES`).

    ``dataset[i]`` returns ``(image, target)``: image Tensor[3, H, W] float32 in [0, 1] and
    the target of ``make_scene`` with ``image_id = i``.
    """

    def __init__(
        self,
        split: str = "train",
        num_images: int = 1000,
        kind: str = "detection",
        image_size: int = 128,
        num_classes: int = 5,
        seed: int = 0,
        cache: bool = True,
        transforms=None,
        *,
        min_objects: int | None = None,
        max_objects: int | None = None,
        root: str | os.PathLike | None = None,
        progress: bool = True,
        style: str = "natural",
    ):
        if split not in SPLIT_CODES:
            raise ValueError(f"split must be one of {tuple(SPLIT_CODES)}, got {split!r}")
        if not isinstance(num_images, int | np.integer) or num_images < 0:
            raise ValueError(f"num_images must be a non-negative int, got {num_images!r}")
        if not isinstance(seed, int | np.integer) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        self.min_objects, self.max_objects = _check_scene_args(
            image_size, kind, num_classes, min_objects, max_objects, style)
        self.style = style
        self.split, self.num_images, self.kind = split, int(num_images), kind
        self.image_size, self.num_classes, self.seed = int(image_size), int(num_classes), int(seed)
        self.transforms = transforms
        self.classes = SHAPES[:num_classes]
        self.root = Path(root) if root is not None else data_dir() / "synthetic"
        self.cache_path = self.root / self._cache_name() if cache else None
        self._store = self._load_or_build(progress) if cache else None

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: int):
        if not -self.num_images <= index < self.num_images:
            raise IndexError(f"index {index} out of range for {self.num_images} images")
        index = int(index) % self.num_images
        if self._store is None:
            image, instances, labels = self._generate(index)
        else:
            counts = self._store["offsets"]
            image, instances = self._store["images"][index], self._store["instances"][index]
            labels = self._store["labels"][counts[index]:counts[index + 1]]
            image, instances, labels = image.numpy(), instances.numpy(), labels.numpy()
        image, target = _as_sample(image, instances, labels, index)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    def scene_seed(self, index: int) -> list[int]:
        """The seed of image ``index``: ``[seed, split_code, index]``."""
        return [self.seed, SPLIT_CODES[self.split], int(index)]

    def _generate(self, index):
        return _generate(self.scene_seed(index), self.image_size, self.kind, self.num_classes,
                         self.min_objects, self.max_objects, self.style)

    # -------------------------------------------------------------------- cache

    def _params(self) -> dict:
        return {"version": GENERATOR_VERSION, "split": self.split, "num_images": self.num_images,
                "kind": self.kind, "image_size": self.image_size,
                "num_classes": self.num_classes, "seed": self.seed,
                "min_objects": self.min_objects, "max_objects": self.max_objects,
                **({} if self.style == "natural" else {"style": self.style})}

    def _cache_name(self) -> str:
        key = hashlib.sha256(json.dumps(self._params(), sort_keys=True).encode()).hexdigest()
        return (f"{self.kind}_{self.split}_{self.image_size}px_{self.num_images}img_"
                f"seed{self.seed}_{key[:12]}.pt")

    def _load_or_build(self, progress: bool) -> dict:
        if self.cache_path.exists():
            try:
                return self._load(self.cache_path)
            except Exception as error:  # a corrupt, partial or foreign file: make it again
                warnings.warn(f"synthetic cache {self.cache_path} is unusable ({error!r}); "
                              "generating it again", stacklevel=3)
        store = self._build(progress)
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.cache_path.with_name(f"{self.cache_path.name}.{os.getpid()}.tmp")
        torch.save(store, tmp)
        os.replace(tmp, self.cache_path)  # atomic: readers never see half a file
        return store

    def _build(self, progress: bool) -> dict:
        from tqdm.auto import tqdm

        n, size = self.num_images, self.image_size
        images = torch.zeros((n, 3, size, size), dtype=torch.uint8)
        instances = torch.zeros((n, size, size), dtype=torch.uint8)
        labels, offsets = [], [0]
        desc = f"synthetic {self.kind}/{self.split}"
        for i in tqdm(range(n), desc=desc, disable=not progress, leave=False):
            image, inst, lab = self._generate(i)
            images[i], instances[i] = torch.from_numpy(image), torch.from_numpy(inst)
            labels.append(torch.from_numpy(lab))
            offsets.append(offsets[-1] + len(lab))
        return {"params": self._params(), "images": images, "instances": instances,
                "labels": torch.cat(labels) if labels else torch.zeros(0, dtype=torch.int64),
                "offsets": torch.tensor(offsets, dtype=torch.int64)}

    def _load(self, path: Path) -> dict:
        store = torch.load(path, map_location="cpu", weights_only=True)
        n, size = self.num_images, self.image_size
        ok = (
            isinstance(store, dict)
            and store.get("params") == self._params()
            and store["images"].shape == (n, 3, size, size)
            and store["images"].dtype == torch.uint8
            and store["instances"].shape == (n, size, size)
            and store["offsets"].shape == (n + 1,)
            and int(store["offsets"][-1]) == len(store["labels"])
        )
        if not ok:
            raise ValueError("contents do not match the dataset's parameters")
        return store


def detection_collate(batch):
    """Collate ``(image, target)`` pairs into two lists, as torchvision's detection models want.

    Images may differ in size and targets in their number of objects, so nothing is stacked.

    Args:
        batch: a list of ``(image, target)`` pairs.

    Returns:
        ``(images, targets)``: a list of Tensor[3, H, W] and a list of dicts.
    """
    images = [image for image, _ in batch]
    targets = [target for _, target in batch]
    return images, targets
