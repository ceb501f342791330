"""Bicubic resizing that matches PyTorch's `interpolate(mode="bicubic", align_corners=False)`.

Used on weights (position-embedding tables) at load time, so it is NumPy. The
backends' own bicubic resizes differ from PyTorch's: TensorFlow and JAX use the
Keys kernel with a = -0.5 (and JAX antialiases when downsampling), PyTorch uses
a = -0.75 without antialiasing. Reference checkpoints were resampled with
PyTorch's kernel, so parity needs that one on every backend.
"""

import numpy as np


def _cubic_weights(t, a=-0.75):
    # Keys (1981) cubic convolution weights for the 4 taps at offsets -1, 0, 1, 2.
    def near(x):
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


def _resize_axis(x, new_size, axis, a):
    old_size = x.shape[axis]
    scale = old_size / new_size
    src = (np.arange(new_size) + 0.5) * scale - 0.5
    base = np.floor(src).astype(np.int64)
    weights = _cubic_weights(src - base, a)  # (new_size, 4)
    idx = np.clip(base[:, None] + np.arange(-1, 3)[None, :], 0, old_size - 1)
    x = np.moveaxis(x, axis, 0)
    out = np.einsum("nk,nk...->n...", weights, x[idx])
    return np.moveaxis(out, 0, axis)


def resize_bicubic(array, size, a=-0.75):
    """Resizes the first two axes of `array` bicubically to `size`.

    Args:
        array: NumPy array `(height, width, ...)`.
        size: `(new_height, new_width)`.
        a: the cubic kernel's parameter (-0.75 is PyTorch's, -0.5 TensorFlow's).

    Returns:
        A float64 array `(new_height, new_width, ...)`.

    Example:
    >>> resize_bicubic(np.ones((4, 4, 2)), (7, 3)).shape
    (7, 3, 2)
    """
    array = np.asarray(array, dtype=np.float64)
    if array.ndim < 2:
        raise ValueError(f"`array` must have at least 2 axes; received shape {array.shape}.")
    if len(size) != 2 or min(size) <= 0:
        raise ValueError(f"`size` must be two positive ints; received {size}.")
    out = _resize_axis(array, int(size[0]), 0, a)
    return _resize_axis(out, int(size[1]), 1, a)
