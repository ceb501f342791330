"""Sublayer calls without `Layer.__call__`'s overhead on PyTorch (with PyTorch kernels for
Dense, LayerNormalization and registered layers), and Dense layers applied to token tensors
as one 2-D matmul."""

import keras
from keras import ops

_TORCH = keras.backend.backend() == "torch"

# The classes whose instances `call_sublayer` may call directly: exact classes (a
# subclass could add to `__call__`), Keras' own and keras_vtx's `allow_direct_calls`.
_DIRECT_CALL_TYPES = {keras.layers.Dense, keras.layers.LayerNormalization,
                      keras.layers.RMSNormalization}
# Classes whose variables are all created with `autocast=False`, so that no autocast
# scope changes what their `call` computes: Keras' LayerNormalization (its gamma and beta
# stay in their own dtype; it computes in float32 and casts its output).
_SCOPE_FREE_TYPES = {keras.layers.LayerNormalization}


def allow_direct_calls(cls):
    """Class decorator: `call_sublayer` may run this class's `call` directly on PyTorch.

    For layers whose `call` does all their work (no `__call__` override, no
    masks, no custom call-context arguments). Subclasses are not included.
    """
    _DIRECT_CALL_TYPES.add(cls)
    return cls


def call_sublayer(layer, caller, inputs, **kwargs):
    """`layer(inputs, **kwargs)` from `caller.call`, without the layer call's overhead on PyTorch.

    Keras runs eagerly on PyTorch, and `Layer.__call__` costs more Python per
    call (input conversion, call context, masks, autocast scope, PyTorch module
    hooks) than a small model's norm or MLP takes to compute (figures:
    docs/benchmarks.md, "Measurements behind the code").
    When that machinery would change nothing, the layer's `call` runs directly:
    `layer` is a built instance of a listed class (`allow_direct_calls`),
    unquantized, without an activity regularizer, with `caller`'s dtype policy
    and autocast setting (so `caller`'s autocast scope is the one it would see;
    a layer that does not autocast qualifies when its variables are in its
    compute dtype or, as Keras' `LayerNormalization`, all created with
    `autocast=False`, where no scope changes them),
    `inputs` is a concrete tensor in its input dtype without a Keras mask, the
    keyword arguments hold no tensors (a tensor would be converted to the
    compute dtype by the layer call) and no distribution is set. Anything else,
    and every call on JAX and TensorFlow (traced once per step function, where
    the layer call costs nothing per step), goes through `layer(inputs, **kwargs)`.
    PyTorch module hooks on `layer` do not fire on the direct path. Keras'
    `Dense` and `LayerNormalization` then run as one PyTorch op each
    (`_torch_dense`, `_torch_layer_norm`), classes with a `torch_kernel` through
    it where it applies, the others' `call`.

    Args:
        layer: the sublayer.
        caller: the layer whose `call` is running (it built `layer`).
        inputs: the sublayer's single positional input.
        **kwargs: its keyword arguments (`training` and the like).

    Returns:
        What `layer(inputs, **kwargs)` returns.

    Example:
    >>> import keras
    >>> norm = keras.layers.LayerNormalization()
    >>> norm.build((2, 3, 4))
    >>> caller = keras.layers.Identity()
    >>> tuple(call_sublayer(norm, caller, keras.ops.ones((2, 3, 4))).shape)
    (2, 3, 4)
    """
    if _TORCH and _direct_call_ok(layer, inputs, caller, kwargs):
        kernel = _TORCH_KERNELS.get(type(layer))
        outputs = None if kernel is None else kernel(layer, inputs, **kwargs)
        return layer.call(inputs, **kwargs) if outputs is None else outputs
    return layer(inputs, **kwargs)


def apply_flat(dense, x, caller=None):
    """`dense(x)` for a token tensor, computed the cheapest way on each backend.

    On JAX and TensorFlow the leading dimensions of `x` are folded into one. A
    `Dense` on a `(batch, tokens, width)` tensor is a matmul with two leading
    dimensions; its weight gradient contracts both. XLA's CPU compiler lowers
    that contraction with an explicit transpose of the activations, and fuses
    the whole element-wise chain that produced them (a transformer's residual
    stream and its gradient, layer after layer) into each transpose,
    recomputing it (a large share of a ViT training step; docs/benchmarks.md).
    On a `(batch * tokens, width)` matrix the
    contraction needs no transpose. The fold and unfold are free reshapes
    (row-major layout), and the arithmetic is unchanged. Tensors whose shape
    is not fully known (symbolic Keras tensors, a TensorFlow graph with a
    dynamic batch) are passed through unchanged.

    On PyTorch, whose matmul folds the leading dimensions itself, `x` goes to
    the Dense as it is, through `call_sublayer` when the `caller` is given
    (the layer whose `call` is running, which built `dense`): the Dense's
    `call` runs directly when `Layer.__call__` would add nothing but host time.

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
        return dense(x) if caller is None else call_sublayer(dense, caller, x)
    shape = tuple(x.shape)
    if len(shape) < 3 or not all(isinstance(d, int) for d in shape):
        return dense(x)
    y = dense(ops.reshape(x, (-1, shape[-1])))
    return ops.reshape(y, shape[:-1] + (y.shape[-1],))


def _direct_call_ok(layer, x, caller, kwargs):
    return (
        type(layer) in _DIRECT_CALL_TYPES
        and layer.built
        and getattr(layer, "quantization_mode", None) is None
        and layer.activity_regularizer is None
        and layer.dtype_policy.name == caller.dtype_policy.name
        # The caller's autocast scope is the one the layer would open, or it cannot
        # change the layer's variables: they are in the compute dtype already, or
        # none of them autocasts (_SCOPE_FREE_TYPES: Keras' LayerNormalization).
        and (layer.autocast == caller.autocast or layer.compute_dtype == layer.variable_dtype
             or type(layer) in _SCOPE_FREE_TYPES)
        and ops.is_tensor(x)
        and keras.backend.standardize_dtype(x.dtype) == layer.input_dtype
        and getattr(x, "_keras_mask", None) is None
        and all(v is None or isinstance(v, (bool, int, float, str)) for v in kwargs.values())
        and keras.distribution.distribution() is None
    )


# PyTorch kernels for the commonest sublayers, called by `call_sublayer` once it has found
# that the layer call would change nothing. Backend-specific on purpose: through
# `keras.ops`, Dense.call and LayerNormalization.call spend several times longer in Python
# (conversions, dtype resolution, symbolic checks) than PyTorch's own ops, and they are the
# largest part of an eager PyTorch block's host time (docs/benchmarks.md). And `linear`
# adds the bias inside the matmul (a GEMM epilogue on a GPU) instead of a second pass over
# the output. Each returns None where it does not apply: `layer.call` runs.


def torch_kernel(cls):
    """Decorator: registers `fn(layer, inputs, **kwargs)` as `cls`'s PyTorch kernel.

    `call_sublayer` runs it instead of `cls.call` once the layer call is known to
    change nothing (`cls` must be allowed direct calls); returning None falls back
    to `call`. For PyTorch-only code (import torch inside `fn`).

    Args:
        cls: the layer class (exact: subclasses are not included).

    Returns:
        A decorator that registers `fn` and returns it unchanged.
    """
    def register(fn):
        _TORCH_KERNELS[cls] = fn
        return fn

    return register


def _torch_dense(layer, x, **_):
    """`Dense.call` as one `torch.nn.functional.linear`."""
    import torch

    if layer.lora_enabled:
        return None
    # The kernel as Dense.call's matmul sees it: converted by the caller's autocast scope
    # (the layer's own: `_direct_call_ok`).
    kernel = layer.kernel.value
    bias = None if layer.bias is None else layer.bias.value
    if kernel.dtype != x.dtype or (bias is not None and bias.dtype != x.dtype):
        return None  # Keras' matmul would promote; leave it to Dense.call
    y = torch.nn.functional.linear(x, kernel.T, bias)
    return y if layer.activation is keras.activations.linear else layer.activation(y)


def _torch_layer_norm(layer, x, **_):
    """`LayerNormalization.call` over the last axis as one `torch.nn.functional.layer_norm`.

    As `keras.ops.layer_normalization` computes it: in float32 (or wider), with gamma
    and beta in that dtype, and the output back in the input's dtype.
    """
    import torch

    axis = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
    if layer.rms_scaling or list(axis) not in ([-1], [x.ndim - 1]):
        return None
    if x.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return None
    params = [None if p is None else p.value.to(torch.float32) for p in (layer.gamma, layer.beta)]
    y = torch.nn.functional.layer_norm(x.to(torch.float32), x.shape[-1:], *params, layer.epsilon)
    return y.to(x.dtype)


_TORCH_KERNELS = {keras.layers.Dense: _torch_dense,
                  keras.layers.LayerNormalization: _torch_layer_norm}
