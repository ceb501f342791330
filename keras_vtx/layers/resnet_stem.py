import keras
from keras import ops

from keras_vtx.ops.subsample import subsample


@keras.saving.register_keras_serializable(package="keras_vtx")
class StandardizedConv2D(keras.layers.Conv2D):
    """A 2-D convolution with weight standardisation (Qiao et al. 2019), as in BiT.

    Each output filter is standardised to zero mean and unit variance over its
    inputs and spatial taps before the convolution.

    Args:
        epsilon: float added to the variance.
        **kwargs: the arguments of `keras.layers.Conv2D`.

    Example:
    >>> tuple(StandardizedConv2D(4, 3, padding="same")(keras.ops.ones((1, 8, 8, 3))).shape)
    (1, 8, 8, 4)
    """

    def __init__(self, *args, epsilon=1e-8, **kwargs):
        super().__init__(*args, **kwargs)
        self.epsilon = epsilon

    def convolution_op(self, inputs, kernel):
        k = ops.cast(kernel, "float32")
        mean = ops.mean(k, axis=(0, 1, 2), keepdims=True)
        var = ops.var(k, axis=(0, 1, 2), keepdims=True)
        k = ops.cast((k - mean) / ops.sqrt(var + self.epsilon), inputs.dtype)
        return super().convolution_op(inputs, k)

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}


@keras.saving.register_keras_serializable(package="keras_vtx")
class ResNetStem(keras.layers.Layer):
    """The ResNet (BiT v2 layout) feature extractor of the ViT paper's hybrid models.

    A 7x7/2 weight-standardised convolution, GroupNorm, ReLU and a 3x3/2 max
    pool, then bottleneck stages (1x1, 3x3 with the stride, 1x1; GroupNorm after
    each; projection shortcut on the first block of a stage). With
    `depths=(3, 4, 9)` this is the R50 stem of `R50+ViT-B/16`: stride 16 and
    1024 output channels, the feature map then patchified with patch size 1.

    Args:
        depths: blocks per stage; stage `i` has `width * 4 * 2**i` output
            channels and stride 2 except the first.
        width: int, stem width (64 for R50).
        groups: int, GroupNorm groups.

    Call arguments:
        inputs: images `(batch, height, width, channels)`.

    Returns:
        A feature map `(batch, height / 2**(len(depths) + 1), ..., width * 2**(len(depths) + 1))`.

    Example:
    >>> tuple(ResNetStem(depths=(1, 1), width=8, groups=4)(keras.ops.ones((1, 32, 32, 3))).shape)
    (1, 4, 4, 64)
    """

    def __init__(self, depths=(3, 4, 9), width=64, groups=32, **kwargs):
        super().__init__(**kwargs)
        if not depths or any(int(d) <= 0 for d in depths):
            raise ValueError(f"`depths` must be positive ints; received {depths}.")
        self.depths = tuple(int(d) for d in depths)
        self.width = int(width)
        self.groups = int(groups)

    def _conv(self, filters, size, stride=1, name=None):
        return StandardizedConv2D(
            filters, size, strides=stride, padding="same", use_bias=False,
            dtype=self.dtype_policy, name=name,
        )

    def _norm(self, name):
        return keras.layers.GroupNormalization(
            self.groups, epsilon=1e-5, dtype=self.dtype_policy, name=name
        )

    def build(self, input_shape):
        self.stem_conv = self._conv(self.width, 7, 2, "stem_conv")
        self.stem_norm = self._norm("stem_norm")
        self.pool = keras.layers.MaxPooling2D(3, 2, padding="same", dtype=self.dtype_policy)
        self.blocks = []
        self._shortcut_strides = []
        shape = tuple(input_shape)
        shape = self._build_layer(self.stem_conv, shape)
        shape = self._build_layer(self.stem_norm, shape)
        shape = self.pool.compute_output_shape(shape)
        for s, depth in enumerate(self.depths):
            out = self.width * 4 * 2**s
            mid = out // 4
            for b in range(depth):
                stride = 2 if (s > 0 and b == 0) else 1
                p = f"stage{s}_block{b}_"
                block = {
                    "conv1": self._conv(mid, 1, 1, p + "conv1"),
                    "norm1": self._norm(p + "norm1"),
                    "conv2": self._conv(mid, 3, stride, p + "conv2"),
                    "norm2": self._norm(p + "norm2"),
                    "conv3": self._conv(out, 1, 1, p + "conv3"),
                    "norm3": self._norm(p + "norm3"),
                }
                if b == 0:
                    # A stride-1 1x1 convolution of every stride-th position: the same as the
                    # strided one, without TensorFlow 2.21's oneDNN crash (ops/subsample.py).
                    block["shortcut_conv"] = self._conv(out, 1, 1, p + "shortcut_conv")
                    block["shortcut_norm"] = self._norm(p + "shortcut_norm")
                    sc = self._build_layer(
                        block["shortcut_conv"], _subsampled_shape(shape, stride)
                    )
                    self._build_layer(block["shortcut_norm"], sc)
                    self._shortcut_strides.append(stride)
                for key in ("conv1", "norm1", "conv2", "norm2", "conv3", "norm3"):
                    shape = self._build_layer(block[key], shape)
                self.blocks.append(block)

    @staticmethod
    def _build_layer(layer, shape):
        layer.build(shape)
        return layer.compute_output_shape(shape)

    def call(self, inputs):
        x = ops.relu(self.stem_norm(self.stem_conv(inputs)))
        x = self.pool(x)
        strides = iter(self._shortcut_strides)
        for block in self.blocks:
            shortcut = x
            if "shortcut_conv" in block:
                shortcut = subsample(x, next(strides))
                shortcut = block["shortcut_norm"](block["shortcut_conv"](shortcut))
            y = ops.relu(block["norm1"](block["conv1"](x)))
            y = ops.relu(block["norm2"](block["conv2"](y)))
            y = block["norm3"](block["conv3"](y))
            x = ops.relu(y + shortcut)
        return x

    @property
    def stride(self):
        return 2 ** (len(self.depths) + 1)

    def compute_output_shape(self, input_shape):
        s = 2 ** (len(self.depths) + 1)
        h, w = input_shape[1], input_shape[2]
        h = None if h is None else -(-h // s)
        w = None if w is None else -(-w // s)
        return (input_shape[0], h, w, self.width * 4 * 2 ** (len(self.depths) - 1))

    def get_config(self):
        return {
            **super().get_config(),
            "depths": self.depths,
            "width": self.width,
            "groups": self.groups,
        }


def _subsampled_shape(shape, stride):
    h, w = shape[1], shape[2]
    h = None if h is None else -(-h // stride)
    w = None if w is None else -(-w // stride)
    return (shape[0], h, w, *shape[3:])
