"""CLIP (Radford et al., 2021): the text encoder, the dual-encoder model and presets.

`CLIPTokenizer` needs TensorFlow: it is imported on first access
(`keras_vtx.models.CLIPTokenizer`), so that this package imports without it.
"""

from keras_vtx.models.clip import clip_presets, prompt_templates
from keras_vtx.models.clip.clip import CLIP, CLIP_MEAN, CLIP_STD
from keras_vtx.models.clip.clip_presets import (
    clip_image_encoder_config,
    clip_text_encoder_config,
)
from keras_vtx.models.clip.clip_text_encoder import CLIPTextEncoder
from keras_vtx.models.clip.zero_shot_classifier import (
    ZeroShotClassifier,
    build_class_embeddings,
)

__all__ = [
    "CLIP",
    "CLIPTextEncoder",
    "CLIPTokenizer",
    "CLIP_MEAN",
    "CLIP_STD",
    "clip_image_encoder_config",
    "clip_presets",
    "clip_text_encoder_config",
    "ZeroShotClassifier",
    "build_class_embeddings",
    "prompt_templates",
]


def __getattr__(name):
    # CLIPTokenizer needs TensorFlow and tensorflow-text: imported on first use only,
    # so that this package imports on a machine without TensorFlow.
    if name == "CLIPTokenizer":
        from keras_vtx.models.clip.clip_tokenizer import CLIPTokenizer

        return CLIPTokenizer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
