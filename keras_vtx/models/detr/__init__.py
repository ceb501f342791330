from keras_vtx.models.detr import detr_presets
from keras_vtx.models.detr.detr import DETR, downsample_mask
from keras_vtx.models.detr.detr_optimizer import ScaledAdamW, step_decay_schedule
from keras_vtx.models.detr.detr_post_processing import post_process_detections
from keras_vtx.models.detr.resnet_backbone import ResNetBackbone

__all__ = [
    "DETR",
    "ResNetBackbone",
    "ScaledAdamW",
    "detr_presets",
    "downsample_mask",
    "post_process_detections",
    "step_decay_schedule",
]
