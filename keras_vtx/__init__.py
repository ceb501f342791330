"""keras_vtx: vision transformers (ViT, CLIP, DETR, Image GPT) for Keras 3.

`keras_vtx.layers`, `ops`, `losses` and `models` run on TensorFlow, JAX and
PyTorch without TensorFlow installed; `keras_vtx.data` (tf.data) needs TensorFlow
and is imported on first use.
"""

__version__ = "0.1.0"

from keras_vtx import layers, models, ops  # noqa: E402

__all__ = ["layers", "models", "ops", "__version__"]
