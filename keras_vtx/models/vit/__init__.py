from keras_vtx.models.vit import vit_presets
from keras_vtx.models.vit.vit_adafactor import ScalingViTAdafactor
from keras_vtx.models.vit.vit_backbone import ViTBackbone
from keras_vtx.models.vit.vit_classifier import ViTClassifier
from keras_vtx.models.vit.vit_masked_patch_predictor import ViTMaskedPatchPredictor
from keras_vtx.models.vit.vit_presets import VARIANTS, vit_config

__all__ = [
    "VARIANTS",
    "ScalingViTAdafactor",
    "ViTBackbone",
    "ViTClassifier",
    "ViTMaskedPatchPredictor",
    "vit_config",
    "vit_presets",
]
