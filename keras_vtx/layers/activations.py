"""Activation functions by the names the papers and reference checkpoints use."""

import keras
from keras import ops

ACTIVATIONS = ("gelu", "tanh_gelu", "quick_gelu", "relu", "silu", "tanh")


def quick_gelu(x):
    """`x * sigmoid(1.702 x)`: the GELU approximation of CLIP and Image GPT.

    Args:
        x: a tensor.

    Returns:
        A tensor like `x`.

    Example:
    >>> round(float(quick_gelu(keras.ops.convert_to_tensor(1.0))), 4)
    0.8458
    """
    return x * ops.sigmoid(ops.cast(1.702, x.dtype) * x)


def get_activation(name):
    """Returns the activation function called `name`.

    Args:
        name: one of `"gelu"` (exact, erf form), `"tanh_gelu"` (the tanh
            approximation, also accepted as `"gelu_new"`/`"gelu_pytorch_tanh"`),
            `"quick_gelu"`, `"relu"`, `"silu"` or `"tanh"`; a callable is returned
            as it is.

    Returns:
        A function of one tensor.

    Example:
    >>> f = get_activation("quick_gelu")
    >>> round(float(f(keras.ops.convert_to_tensor(1.0))), 4)
    0.8458
    """
    if callable(name):
        return name
    if name == "gelu":
        return lambda x: keras.activations.gelu(x, approximate=False)
    if name in ("tanh_gelu", "gelu_new", "gelu_pytorch_tanh"):
        return lambda x: keras.activations.gelu(x, approximate=True)
    if name == "quick_gelu":
        return quick_gelu
    if name in ("relu", "silu", "tanh"):
        return keras.activations.get(name)
    raise ValueError(
        f"`activation` must be one of {ACTIVATIONS} or a callable; received {name!r}."
    )
