"""keras_vtx: vision transformers (ViT, CLIP, DETR, Image GPT) for Keras 3.

`keras_vtx.layers`, `ops`, `losses`, `metrics`, `analysis` and `models` run on
TensorFlow, JAX and PyTorch without TensorFlow installed; `keras_vtx.data`
(tf.data) and `keras_vtx.models.CLIPTokenizer` need TensorFlow and are imported
on first use.
"""

__version__ = "0.1.0"

from keras_vtx import analysis, layers, losses, metrics, models, ops  # noqa: E402

__all__ = ["analysis", "layers", "losses", "metrics", "models", "ops", "__version__"]
