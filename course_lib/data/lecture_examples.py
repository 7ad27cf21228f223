"""The lecture's worked examples, as data: one source for exercises, widgets and notebooks.

Shape shorthand: boxes are ``(x1, y1, x2, y2)`` pixels, as everywhere in the course.
"""

from __future__ import annotations

# --- Non-max suppression: two dogs ----------------------------------------------------------
# IoU(blue, orange) = 0.78, IoU(blue, purple) = 0.05, IoU(blue, yellow) = 0.07 and
# IoU(purple, yellow) = 0.74, as on the lecture's slides.
DOG_BOXES: tuple[tuple[float, float, float, float], ...] = (
    (20.0, 30.0, 120.0, 130.0),    # blue    dog 1, the best box
    (26.0, 34.0, 128.0, 138.0),    # orange  dog 1, a near duplicate
    (110.0, 46.0, 190.0, 142.0),   # purple  dog 2, the best box
    (104.0, 48.0, 204.0, 148.0),   # yellow  dog 2, a near duplicate
)
DOG_SCORES: tuple[float, ...] = (0.98, 0.81, 0.75, 0.67)
DOG_NAMES: tuple[str, ...] = ("blue", "orange", "purple", "yellow")
DOG_COLORS: tuple[str, ...] = ("#1f77b4", "#ff7f0e", "#9467bd", "#d4b000")

# Not on the slides: a looser box on dog 1 (IoU 0.64 with blue), so that the NMS threshold
# visibly matters: removed at 0.5, kept at 0.7.
LOOSE_DOG_BOX = (32.0, 12.0, 130.0, 140.0)
LOOSE_DOG_SCORE = 0.60

# --- Average precision: five dog detections, three dogs -------------------------------------
# Ranked by score: TP, TP, FP, FP, TP. At the end precision = 3/5 and recall = 3/3; the area
# under the interpolated PR curve is 1/3 + 1/3 + 0.6/3 = 0.8667 ("Dog AP = 0.86").
DOG_PR_SCORES: tuple[float, ...] = (0.99, 0.95, 0.90, 0.50, 0.10)
DOG_PR_IS_TP: tuple[bool, ...] = (True, True, False, False, True)
DOG_PR_NUM_GT = 3

# --- mAP: per-class AP at IoU 0.5, and mAP at stricter thresholds ----------------------------
CLASS_AP50: dict[str, float] = {"car": 0.65, "cat": 0.80, "dog": 0.86}   # mAP@0.5 = 0.77
MAP_AT_IOU: dict[float, float] = {0.50: 0.77, 0.55: 0.71, 0.60: 0.65, 0.95: 0.2}
COCO_MAP = 0.4

# --- Classification warm-up: a 4-class confusion matrix ---------------------------------------
# Rows: predicted class 1..4; columns: expected (true) class 1..4.
CONFUSION_MATRIX: tuple[tuple[int, ...], ...] = (
    (52, 3, 7, 2),
    (2, 28, 2, 0),
    (5, 2, 25, 12),
    (1, 1, 9, 40),
)
