"""Image GPT (Chen et al. 2020, "Generative Pretraining from Pixels")."""

from keras_vtx.models.igpt import image_gpt_presets  # noqa: F401  (registers the presets)
from keras_vtx.models.igpt.color_palette import ColorPalette
from keras_vtx.models.igpt.image_gpt import ImageGPT
from keras_vtx.models.igpt.image_gpt_backbone import ImageGPTBackbone
from keras_vtx.models.igpt.image_gpt_classifier import ImageGPTClassifier
from keras_vtx.models.igpt.image_gpt_features import layer_features
from keras_vtx.models.igpt.image_gpt_generation import generate_pixel_ids
from keras_vtx.models.igpt.image_gpt_presets import count_parameters

__all__ = [
    "ColorPalette",
    "ImageGPT",
    "ImageGPTBackbone",
    "ImageGPTClassifier",
    "count_parameters",
    "generate_pixel_ids",
    "layer_features",
]
