"""Pure functions on tensors and arrays; imports nothing else of keras_vtx."""

from keras_vtx.ops.interpolate import resize_bicubic

__all__ = ["resize_bicubic"]
