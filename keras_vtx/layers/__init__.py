"""Model-agnostic building blocks, written with `keras.ops` only."""

from keras_vtx.layers.activations import get_activation, quick_gelu
from keras_vtx.layers.class_token import ClassToken
from keras_vtx.layers.drop_path import DropPath
from keras_vtx.layers.frozen_batch_normalization import FrozenBatchNormalization
from keras_vtx.layers.image_normalization import ImageNormalization
from keras_vtx.layers.mlp import MLP
from keras_vtx.layers.multi_head_attention import MultiHeadAttention
from keras_vtx.layers.multi_head_attention_pooling import MultiHeadAttentionPooling
from keras_vtx.layers.patch_embedding import PatchEmbedding
from keras_vtx.layers.position_embedding import (
    PositionEmbedding,
    SineCosine2DInitializer,
    resample_position_embeddings,
)
from keras_vtx.layers.resnet_stem import ResNetStem, StandardizedConv2D
from keras_vtx.layers.sine_position_encoding import SinePositionEncoding2D
from keras_vtx.layers.transformer_decoder_block import TransformerDecoderBlock
from keras_vtx.layers.transformer_encoder_block import TransformerEncoderBlock

__all__ = [
    "ClassToken",
    "DropPath",
    "FrozenBatchNormalization",
    "ImageNormalization",
    "MLP",
    "MultiHeadAttention",
    "MultiHeadAttentionPooling",
    "PatchEmbedding",
    "PositionEmbedding",
    "SineCosine2DInitializer",
    "ResNetStem",
    "SinePositionEncoding2D",
    "StandardizedConv2D",
    "TransformerDecoderBlock",
    "TransformerEncoderBlock",
    "get_activation",
    "quick_gelu",
    "resample_position_embeddings",
]
