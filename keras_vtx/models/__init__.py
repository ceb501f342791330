"""Models: backbones, tasks and the preset registry."""

from keras_vtx.models.backbone import Backbone
from keras_vtx.models.presets import (
    get_preset,
    list_presets,
    register_preset,
    unregister_preset,
)
from keras_vtx.models.task import Task
from keras_vtx.models.vit import ViTBackbone, ViTClassifier, vit_config

__all__ = [
    "Backbone",
    "Task",
    "ViTBackbone",
    "ViTClassifier",
    "get_preset",
    "list_presets",
    "register_preset",
    "unregister_preset",
    "vit_config",
]
