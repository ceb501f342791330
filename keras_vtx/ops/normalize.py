"""L2 normalisation that stays tame at (and near) the zero vector."""

from keras import ops


def l2_normalize(x, axis=-1, epsilon=1e-6):
    """`x / max(||x||, epsilon)` along `axis`, with no gradient through vectors shorter than `epsilon`.

    A vector shorter than `epsilon` has no direction to learn: it is scaled by
    `1 / epsilon` (so the all-zero vector stays zero) and passes no gradient
    back, where the plain formula would pass `1 / epsilon` times the incoming
    gradient (a million-fold amplification at the usual `1e-6`, exploding an
    SGD step). Longer vectors get the exact unit vector and its exact gradient.

    Args:
        x: float tensor.
        axis: int, the axis of the vectors.
        epsilon: float > 0, the shortest length normalised exactly.

    Returns:
        A tensor of `x`'s shape and dtype.

    Example:
    >>> import numpy as np
    >>> np.round(ops.convert_to_numpy(l2_normalize(np.array([[3.0, 4.0], [0.0, 0.0]]))), 3)
    array([[0.6, 0.8],
           [0. , 0. ]])
    """
    if not epsilon > 0:
        raise ValueError(f"`epsilon` must be > 0; received {epsilon!r}.")
    x = ops.convert_to_tensor(x)
    squared = ops.sum(ops.square(x), axis=axis, keepdims=True)
    long_enough = squared >= epsilon * epsilon
    x = ops.where(long_enough, x, ops.stop_gradient(x))
    return x * ops.rsqrt(ops.maximum(squared, epsilon * epsilon))
