"""Spatial subsampling, which keras_vtx's ResNets use for their strided 1x1 convolutions.

A 1x1 convolution with stride `s` ("valid" or "same" padding: the same thing for a 1x1 kernel)
equals a stride-1 1x1 convolution of `x[:, ::s, ::s, :]`, with the same kernel: each output
position sees exactly one input position. keras_vtx's ResNet shortcuts (DETR's backbone, the BiT
stem of the hybrid ViT) are written that way instead of as strided convolutions because
TensorFlow 2.21's oneDNN kernel for the filter gradient of a strided 1x1 convolution corrupts
memory on AVX-512 CPUs (seen on AMD EPYC Zen 4 and Intel Sapphire Rapids, and with oneDNN limited
to its first AVX-512 level): the process ends in a segmentation fault, a bus error,
"munmap_chunk(): invalid pointer" or a hang (seen with few channels and one even-sized image).
Reproduction, plain TensorFlow, eager, oneDNN on (the default):

    x = tf.constant(np.random.default_rng(1).standard_normal((1, 16, 8, 8)).astype("float32"))
    w = tf.Variable(np.random.default_rng(2).standard_normal((1, 1, 8, 16)).astype("float32"))
    for _ in range(3):
        with tf.GradientTape() as t:
            loss = tf.reduce_sum(tf.nn.conv2d(x, w, 2, "SAME"))
        t.gradient(loss, w)

It runs with `TF_ENABLE_ONEDNN_OPTS=0`, and a stride-1 1x1 convolution runs with oneDNN on. The
subsampled form is exact on every backend and keeps the layers' names and weights (checkpoints
load unchanged). docs/known_issues.md has the rest; tests/kernel_scan.py scans every convolution of
every preset for such crashes.
"""

from keras import ops


def subsample(x, stride):
    """Every `stride`-th row and column of a `(batch, height, width, channels)` feature map.

    Args:
        x: a rank-4 tensor, channels last.
        stride: a positive int.

    Returns:
        `x[:, ::stride, ::stride, :]`: `(batch, ceil(height / stride), ceil(width / stride),
        channels)`.

    Example:
    >>> x = keras.ops.reshape(keras.ops.arange(25.0), (1, 5, 5, 1))
    >>> keras.ops.convert_to_numpy(subsample(x, 2))[0, :, :, 0].tolist()
    [[0.0, 2.0, 4.0], [10.0, 12.0, 14.0], [20.0, 22.0, 24.0]]
    """
    if not isinstance(stride, int) or isinstance(stride, bool) or stride < 1:
        raise ValueError(f"`stride` must be a positive int; received {stride!r}.")
    if len(x.shape) != 4:
        raise ValueError(
            f"`x` must have rank 4 (batch, height, width, channels); received shape {x.shape}."
        )
    if stride == 1:
        return x
    if not hasattr(x, "__getitem__"):
        x = ops.convert_to_tensor(x)
    return x[:, ::stride, ::stride, :]
