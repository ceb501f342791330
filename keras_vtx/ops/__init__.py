"""Pure functions on tensors and arrays; imports nothing else of keras_vtx."""

from keras_vtx.ops.boxes import (
    box_area,
    box_cxcywh_to_xyxy,
    box_xywh_to_xyxy,
    box_xyxy_to_cxcywh,
    generalized_box_iou,
    pairwise_box_iou,
    pairwise_generalized_box_iou,
)
from keras_vtx.ops.interpolate import resize_bicubic
from keras_vtx.ops.linear_sum_assignment import (
    linear_sum_assignment,
    scipy_linear_sum_assignment,
)
from keras_vtx.ops.normalize import l2_normalize
from keras_vtx.ops.subsample import subsample

__all__ = [
    "box_area",
    "box_cxcywh_to_xyxy",
    "box_xywh_to_xyxy",
    "box_xyxy_to_cxcywh",
    "generalized_box_iou",
    "l2_normalize",
    "linear_sum_assignment",
    "pairwise_box_iou",
    "pairwise_generalized_box_iou",
    "resize_bicubic",
    "scipy_linear_sum_assignment",
    "subsample",
]
