"""Dense layers applied to token tensors: one 2-D matmul, and no per-call overhead on PyTorch."""

import keras
from keras import ops

_TORCH = keras.backend.backend() == "torch"


def apply_flat(dense, x, caller=None):
    """`dense(x)` for a token tensor, computed the cheapest way on each backend.

    On JAX and TensorFlow the leading dimensions of `x` are folded into one. A
    `Dense` on a `(batch, tokens, width)` tensor is a matmul with two leading
    dimensions; its weight gradient contracts both. XLA's CPU compiler lowers
    that contraction with an explicit transpose of the activations, and fuses
    the whole element-wise chain that produced them (a transformer's residual
    stream and its gradient, layer after layer) into each transpose,
    recomputing it: measured on a JAX ViT-B/16 training step, a quarter of the
    step went to these copies. On a `(batch * tokens, width)` matrix the
    contraction needs no transpose. The fold and unfold are free reshapes
    (row-major layout), and the arithmetic is unchanged. Tensors whose shape
    is not fully known (symbolic Keras tensors, a TensorFlow graph with a
    dynamic batch) are passed through unchanged.

    On PyTorch, which runs Keras eagerly and whose matmul folds the leading
    dimensions itself, the cost to cut is the host's: `Layer.__call__` takes
    a few hundred microseconds of Python per call, more than the matmul of a
    small model. Given the `caller` (the layer whose `call` is running, which
    built `dense` with its own dtype policy), the Dense's `call` runs
    directly when that is what `Layer.__call__` would run: a plain
    `keras.layers.Dense`, built, not quantized, without an activity
    regularizer, with the caller's dtype policy and autocast setting (so the
    caller's autocast scope is the one the Dense would see), on a concrete
    tensor already in the Dense's compute dtype. Anything else (a symbolic
    call, a quantized layer, another dtype) goes through `dense(x)`. PyTorch
    module hooks on `dense` itself do not fire on the direct path.

    Args:
        dense: a `keras.layers.Dense` (or any layer acting on the last axis).
        x: a tensor; ranks below 3 go straight to `dense`.
        caller: optional, the layer calling `dense` from its `call`.

    Returns:
        `dense(x)`, shaped `x.shape[:-1] + (units,)`.

    Example:
    >>> import keras
    >>> dense = keras.layers.Dense(4)
    >>> tuple(apply_flat(dense, keras.ops.ones((2, 3, 5))).shape)
    (2, 3, 4)
    """
    if _TORCH:
        if caller is not None and _direct_call_ok(dense, x, caller):
            return dense.call(x)
        return dense(x)
    shape = tuple(x.shape)
    if len(shape) < 3 or not all(isinstance(d, int) for d in shape):
        return dense(x)
    y = dense(ops.reshape(x, (-1, shape[-1])))
    return ops.reshape(y, shape[:-1] + (y.shape[-1],))


def _direct_call_ok(dense, x, caller):
    return (
        type(dense) is keras.layers.Dense
        and dense.built
        and dense.quantization_mode is None
        and dense.activity_regularizer is None
        and dense.autocast == caller.autocast
        and dense.dtype_policy.name == caller.dtype_policy.name
        and ops.is_tensor(x)
        and keras.backend.standardize_dtype(x.dtype) == dense.compute_dtype
    )
