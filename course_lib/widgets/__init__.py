"""Interactive apps (ipywidgets) for the notebooks, one concept per file.

Each function returns its widget (an ``ipywidgets.VBox``); the last expression of a cell
displays it. The controls, readouts and computed numbers are attributes, so tests can drive
a widget without a browser. Widgets import ``course_lib.viz`` and the core ops, never the
reverse.
"""

from course_lib.widgets.anchor_explorer import AnchorExplorer, anchor_explorer
from course_lib.widgets.default_box_explorer import DefaultBoxExplorer, default_box_explorer
from course_lib.widgets.instance_explorer import InstanceExplorer, instance_explorer
from course_lib.widgets.iou_explorer import IoUExplorer, iou_explorer, iou_quality
from course_lib.widgets.nms_stepper import NMSStepper, nms_stepper
from course_lib.widgets.pr_curve_builder import PRCurveBuilder, pr_curve_builder
from course_lib.widgets.proposal_viewer import ProposalViewer, proposal_viewer
from course_lib.widgets.segmentation_explorer import (
    SegmentationExplorer,
    segmentation_explorer,
)
from course_lib.widgets.sliding_window_explorer import (
    SlidingWindowExplorer,
    sliding_window_explorer,
)
from course_lib.widgets.transposed_conv_explorer import (
    TransposedConvExplorer,
    transposed_conv_explorer,
)
from course_lib.widgets.yolo_grid_explorer import YOLOGridExplorer, yolo_grid_explorer

__all__ = [
    "IoUExplorer", "NMSStepper", "PRCurveBuilder", "TransposedConvExplorer",
    "iou_explorer", "iou_quality", "nms_stepper", "pr_curve_builder", "transposed_conv_explorer",
    "SlidingWindowExplorer", "sliding_window_explorer",
    "ProposalViewer", "proposal_viewer",
    "AnchorExplorer", "anchor_explorer",
    "YOLOGridExplorer", "yolo_grid_explorer", "DefaultBoxExplorer", "default_box_explorer",
    "SegmentationExplorer", "segmentation_explorer",
    "InstanceExplorer", "instance_explorer",
]
