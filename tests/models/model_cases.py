"""The registry of the shared model harness: every model class, tiny, with its inputs.

A model listed here gets every check of `tests/models/test_model_harness.py`
(config round trip, `.keras` save and load, preset save and reload with an
override, gradients to every trainable variable, mixed precision, and for
tasks a first `fit()` that traces its step once).
"""

import numpy as np

from keras_vtx.models import (
    CLIP,
    DETR,
    CLIPTextEncoder,
    ImageGPT,
    ImageGPTBackbone,
    ImageGPTClassifier,
    ResNetBackbone,
    ViTBackbone,
    ViTClassifier,
    ViTMaskedPatchPredictor,
)
from tests.test_case import ModelCase

VOCAB, END, START = 50, 49, 48
TINY_VIT = dict(image_size=16, patch_size=4, num_layers=2, hidden_dim=16, num_heads=2,
                mlp_dim=32)
TINY_TEXT = dict(vocabulary_size=VOCAB, context_length=8, num_layers=1, hidden_dim=16,
                 num_heads=2, mlp_dim=32, end_token_id=END)
TINY_RESNET = dict(stage_filters=(2, 4, 4, 8), blocks_per_stage=(1, 1, 1, 1), stem_filters=8,
                   frozen_stages=1)
TINY_DETR = dict(num_classes=3, num_queries=5, hidden_dim=16, num_heads=2,
                 num_encoder_layers=1, num_decoder_layers=2, mlp_dim=32)


def images(size=16):
    return np.random.default_rng(0).uniform(0, 255, (2, size, size, 3)).astype("float32")


def token_ids():
    ids = np.zeros((2, 8), "int32")
    ids[:, 0], ids[0, 1:4], ids[0, 4], ids[1, 1:6], ids[1, 6] = START, 5, END, 7, END
    return ids


def pixel_ids():
    return np.random.default_rng(0).integers(0, 16, (2, 64)).astype("int32")


def detr_inputs():
    rng = np.random.default_rng(0)
    # 64 x 48 pixels: a 2 x 2 feature map (ResNet's stride is 32), so that attention
    # has more than one position to weigh.
    mask = np.ones((2, 64, 48), "int32")
    mask[1, 40:] = 0
    return {"images": rng.standard_normal((2, 64, 48, 3)).astype("float32"),
            "pixel_mask": mask}


def detr_targets():
    boxes = np.zeros((2, 2, 4), "float32")
    boxes[0] = [[0.5, 0.5, 0.2, 0.3], [0.3, 0.6, 0.1, 0.2]]
    labels = np.array([[0, 2], [-1, -1]], "int32")
    return {"boxes": boxes, "labels": labels}


# In DETR the first decoder layer's self-attention sees inputs that are all zero (the
# target starts at zeros): its attention is uniform whatever the query and key
# projections, and its values are the value bias alone, so those kernels get no
# gradient, in facebookresearch/detr as here. In every model the attention's key bias
# cancels in the softmax (a zero gradient in exact arithmetic).
DETR_NO_GRADIENT = ("decoder_block_0/self_attention/query", "decoder_block_0/self_attention/key",
                    "decoder_block_0/self_attention/value/kernel", "key/bias")

CASES = [
    ModelCase("vit_backbone", ViTBackbone, lambda: ViTBackbone(**TINY_VIT), images,
              override={"dropout": 0.1}, no_gradient=("key/bias",)),
    ModelCase("vit_classifier", ViTClassifier,
              lambda: ViTClassifier(ViTBackbone(**TINY_VIT), num_classes=3,
                                    head_initializer="glorot_uniform"),
              images, targets=lambda: np.array([0, 2]),
              override={"head_dropout": 0.1, "backbone_config": {"dropout": 0.1}},
              no_gradient=("key/bias",)),
    ModelCase("vit_masked_patch_predictor", ViTMaskedPatchPredictor,
              lambda: ViTMaskedPatchPredictor(ViTBackbone(**TINY_VIT), seed=0), images,
              override={"mask_rate": 0.3, "backbone_config": {"dropout": 0.1}},
              no_gradient=("key/bias",)),
    ModelCase("clip_text_encoder", CLIPTextEncoder, lambda: CLIPTextEncoder(**TINY_TEXT),
              token_ids, override={"dropout": 0.1}, no_gradient=("key/bias",)),
    ModelCase("clip", CLIP,
              lambda: CLIP(ViTBackbone(**TINY_VIT), CLIPTextEncoder(**TINY_TEXT),
                           projection_dim=12),
              lambda: {"images": images(), "token_ids": token_ids()},
              override={"include_preprocessing": False,
                        "text_encoder_config": {"dropout": 0.1}},
              no_gradient=("key/bias",)),
    ModelCase("image_gpt_backbone", ImageGPTBackbone,
              lambda: ImageGPTBackbone.from_preset("igpt_tiny_test"), pixel_ids,
              override={"dropout": 0.1}, no_gradient=("key/bias",)),
    ModelCase("image_gpt", ImageGPT, lambda: ImageGPT.from_preset("igpt_tiny_test"), pixel_ids,
              override={"mask_rate": 0.3}, no_gradient=("key/bias",)),
    ModelCase("image_gpt_classifier", ImageGPTClassifier,
              lambda: ImageGPTClassifier.from_preset("igpt_tiny_test", num_classes=3),
              pixel_ids, targets=lambda: np.array([1, 2]),
              override={"dropout": 0.2}, no_gradient=("key/bias",)),
    ModelCase("resnet_backbone", ResNetBackbone, lambda: ResNetBackbone(**TINY_RESNET),
              lambda: images(32), override={"frozen_stages": 2}),
    ModelCase("detr", DETR, lambda: DETR(ResNetBackbone(**TINY_RESNET), **TINY_DETR),
              detr_inputs, targets=detr_targets, override={"aux_loss": False},
              no_gradient=DETR_NO_GRADIENT),
]
