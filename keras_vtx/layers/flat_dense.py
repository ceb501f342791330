"""Dense layers applied to token tensors as one 2-D matrix multiplication."""

from keras import ops


def apply_flat(dense, x):
    """`dense(x)` with the leading dimensions of `x` folded into one.

    A `Dense` on a `(batch, tokens, width)` tensor is a matmul with two
    leading dimensions; its weight gradient contracts both. XLA's CPU compiler
    lowers that contraction with an explicit transpose of the activations, and
    fuses the whole element-wise chain that produced them (a transformer's
    residual stream and its gradient, layer after layer) into each transpose,
    recomputing it: measured on a JAX ViT-B/16 training step, a quarter of the
    step went to these copies. On a `(batch * tokens, width)` matrix the
    contraction needs no transpose. The fold and unfold are free reshapes
    (row-major layout) on every backend, and the arithmetic is unchanged.
    Tensors whose shape is not fully known (symbolic Keras tensors, a
    TensorFlow graph with a dynamic batch) are passed through unchanged.

    Args:
        dense: a `keras.layers.Dense` (or any layer acting on the last axis).
        x: a tensor of rank 3 or more; lower ranks go straight to `dense`.

    Returns:
        `dense(x)`, shaped `x.shape[:-1] + (units,)`.

    Example:
    >>> import keras
    >>> dense = keras.layers.Dense(4)
    >>> tuple(apply_flat(dense, keras.ops.ones((2, 3, 5))).shape)
    (2, 3, 4)
    """
    shape = tuple(x.shape)
    if len(shape) < 3 or not all(isinstance(d, int) for d in shape):
        return dense(x)
    y = dense(ops.reshape(x, (-1, shape[-1])))
    return ops.reshape(y, shape[:-1] + (y.shape[-1],))
