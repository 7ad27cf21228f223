"""Reference implementations for the detection and segmentation course.

Imports flow one way: core ops (``boxes``, ``nms``, ``metrics``) <- data/models <- train
<- ``viz``/``widgets`` <- notebooks. A core op never imports matplotlib or ipywidgets.
"""

__version__ = "0.1.0"
