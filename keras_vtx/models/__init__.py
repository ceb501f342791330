"""Models: backbones, tasks and the preset registry."""

from keras_vtx.models.backbone import Backbone
from keras_vtx.models.clip import CLIP, CLIPTextEncoder, ZeroShotClassifier
from keras_vtx.models.detr import DETR, ResNetBackbone, ScaledAdamW, post_process_detections
from keras_vtx.models.igpt import (
    ColorPalette,
    ImageGPT,
    ImageGPTBackbone,
    ImageGPTClassifier,
    generate_pixel_ids,
    layer_features,
)
from keras_vtx.models.presets import (
    get_preset,
    list_presets,
    register_preset,
    unregister_preset,
)
from keras_vtx.models.task import Task
from keras_vtx.models.vit import (
    ScalingViTAdafactor,
    ViTBackbone,
    ViTClassifier,
    ViTMaskedPatchPredictor,
    vit_config,
)

__all__ = [
    "Backbone",
    "CLIP",
    "CLIPTextEncoder",
    "CLIPTokenizer",
    "ColorPalette",
    "DETR",
    "ImageGPT",
    "ImageGPTBackbone",
    "ImageGPTClassifier",
    "ResNetBackbone",
    "ScaledAdamW",
    "ScalingViTAdafactor",
    "Task",
    "ViTBackbone",
    "ViTClassifier",
    "ViTMaskedPatchPredictor",
    "ZeroShotClassifier",
    "generate_pixel_ids",
    "get_preset",
    "layer_features",
    "list_presets",
    "post_process_detections",
    "register_preset",
    "unregister_preset",
    "vit_config",
]


def __getattr__(name):
    # CLIPTokenizer needs TensorFlow and tensorflow-text: imported on first use only,
    # so that `import keras_vtx.models` works without TensorFlow.
    if name == "CLIPTokenizer":
        from keras_vtx.models.clip.clip_tokenizer import CLIPTokenizer

        return CLIPTokenizer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
