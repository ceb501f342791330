import keras
from keras import ops

from keras_vtx.layers.frozen_batch_normalization import FrozenBatchNormalization
from keras_vtx.models.backbone import Backbone, checked_shape
from keras_vtx.ops.subsample import subsample

# Bottleneck blocks per stage of the torchvision ResNets (He et al. 2016, table 1).
BLOCKS_PER_DEPTH = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}


NORMS = ("frozen_batch_norm", "batch_norm")


def _conv_initializer():
    # torchvision's ResNet init: kaiming normal, fan_out, ReLU gain.
    return keras.initializers.VarianceScaling(2.0, "fan_out", "untruncated_normal")


@keras.saving.register_keras_serializable(package="keras_vtx")
class ResNetBackbone(Backbone):
    """The ResNet of DETR: torchvision's ResNet v1.5 with frozen batch norm.

    A 7x7/2 convolution, frozen batch norm, ReLU and a 3x3/2 max pool (the
    stem), then four stages of bottleneck blocks (1x1, 3x3, 1x1 convolutions
    without bias, each followed by `FrozenBatchNormalization`; ReLU after the
    residual sum). Stages 2 to 4 halve the resolution with stride 2 on the
    3x3 convolution of their first block (the "v1.5" layout of torchvision
    and transformers' `ResNetModel`, not the 1x1 stride of the paper). A
    block's shortcut is a 1x1 convolution + frozen batch norm when its stride
    is not 1 or its channel count changes (the first block of each stage),
    the identity otherwise. Padding is explicit and symmetric, as in PyTorch,
    so odd image sizes give the same features as torchvision: the output has
    `ceil(H / 32) x ceil(W / 32)` positions (`ceil(H / 16)` with `dilation`).

    `dilation=True` is DETR's DC5 variant (torchvision's
    `replace_stride_with_dilation=[False, False, True]`, timm's
    `output_stride=16`): the last stage keeps the resolution of stage 3; its
    first block has stride 1 and dilation 1 (torchvision passes the previous
    dilation to the first block), the following blocks use dilation 2.

    Args:
        depth: 50, 101 or 152; chooses `blocks_per_stage` when that is None.
        dilation: bool, the DC5 variant (output stride 16 instead of 32).
        frozen_stages: int or None. Convolutions of the stem and of stages
            `1..frozen_stages` are not trained: 1 (DETR's choice,
            `facebookresearch/detr` `models/backbone.py` trains only
            `layer2`-`layer4`) freezes the stem and stage 1, 0 the stem only,
            -1 or None nothing; up to `len(blocks_per_stage)`. Frozen batch norm
            (the default `norm`) is never trained. Setting `trainable = True` on the model (or a
            model containing it) keeps these stages frozen.
        stage_filters: the bottleneck width of each stage; a stage outputs
            `stage_filters[i] * bottleneck_expansion` channels.
        blocks_per_stage: blocks in each stage, or None for `depth`'s.
        stem_filters: int, channels of the stem convolution.
        bottleneck_expansion: int, output / bottleneck width of a block.
        image_shape: `(height, width, channels)`; height and width may be
            None (variable-size images).
        epsilon: float, the batch-norm epsilon (1e-5 in torchvision and DETR).
        norm: `"frozen_batch_norm"` (DETR's: fixed statistics and affine
            parameters, for a pre-trained backbone) or `"batch_norm"`
            (trainable `keras.layers.BatchNormalization`, batch statistics in
            training: for a backbone trained from scratch, as the recipe's
            shapes preset is). Checkpoints load into either.
        dtype: dtype or dtype policy of the layers.

    Call arguments:
        images: float tensor `(batch, height, width, channels)`, normalised
            with ImageNet's mean and std.

    Returns:
        The last stage's features `(batch, ceil(height / s), ceil(width / s),
        output_channels)` with `s = output_stride` (32, or 16 with
        `dilation`).

    Example:
    >>> model = ResNetBackbone(stage_filters=(2, 4, 4, 8), blocks_per_stage=(1, 1, 1, 2),
    ...                        stem_filters=8)
    >>> tuple(model(keras.ops.zeros((1, 65, 97, 3))).shape)
    (1, 3, 4, 32)
    >>> model.output_channels, model.output_stride
    (32, 32)
    """

    def __init__(
        self,
        depth=50,
        dilation=False,
        frozen_stages=1,
        stage_filters=(64, 128, 256, 512),
        blocks_per_stage=None,
        stem_filters=64,
        bottleneck_expansion=4,
        image_shape=(None, None, 3),
        epsilon=1e-5,
        norm="frozen_batch_norm",
        dtype=None,
        **kwargs,
    ):
        if norm not in NORMS:
            raise ValueError(f"`norm` must be one of {NORMS}; received {norm!r}.")
        if blocks_per_stage is None:
            if depth not in BLOCKS_PER_DEPTH:
                raise ValueError(
                    f"`depth` must be one of {sorted(BLOCKS_PER_DEPTH)} when `blocks_per_stage` "
                    f"is None; received {depth!r}."
                )
            blocks_per_stage = BLOCKS_PER_DEPTH[depth]
        blocks_per_stage = _positive_ints(blocks_per_stage, "blocks_per_stage")
        stage_filters = _positive_ints(stage_filters, "stage_filters")
        if len(stage_filters) != len(blocks_per_stage):
            raise ValueError(
                f"`stage_filters` and `blocks_per_stage` must have the same length; received "
                f"{stage_filters} and {blocks_per_stage}."
            )
        if len(stage_filters) < 2 and dilation:
            raise ValueError("`dilation=True` needs at least two stages.")
        (stem_filters,) = _positive_ints((stem_filters,), "stem_filters")
        (bottleneck_expansion,) = _positive_ints((bottleneck_expansion,), "bottleneck_expansion")
        frozen = -1 if frozen_stages is None else frozen_stages
        if not isinstance(frozen, int) or not -1 <= frozen <= len(stage_filters):
            raise ValueError(
                f"`frozen_stages` must be None or an int in [-1, {len(stage_filters)}]; "
                f"received {frozen_stages!r}."
            )
        image_shape = tuple(image_shape)
        if len(image_shape) != 3 or image_shape[-1] is None:
            raise ValueError(
                "`image_shape` must be (height, width, channels) with a known number of "
                f"channels; received {image_shape}."
            )

        def conv(filters, size, stride=1, rate=1, name=None):
            # Stride-2 3x3 convolutions are padded explicitly (see below); the rest pad
            # symmetrically by themselves ("same" with stride 1 is PyTorch's `padding=k//2*d`).
            padding = "same" if stride == 1 and size > 1 else "valid"
            return keras.layers.Conv2D(
                filters, size, strides=stride, dilation_rate=rate, padding=padding,
                use_bias=False, kernel_initializer=_conv_initializer(), dtype=dtype, name=name,
            )

        norm_kind = norm

        def norm(name):
            if norm_kind == "batch_norm":
                # torch's BatchNorm2d momentum 0.1 is Keras' 0.9.
                return keras.layers.BatchNormalization(
                    momentum=0.9, epsilon=epsilon, dtype=dtype, name=name
                )
            return FrozenBatchNormalization(epsilon=epsilon, dtype=dtype, name=name)

        # === Graph ===
        images = keras.Input(shape=image_shape, name="images")
        # Keras' "same" padding with stride 2 pads more at the bottom/right than at the
        # top/left for even sizes; PyTorch pads both sides equally. Explicit zero padding
        # and "valid" layers reproduce PyTorch on every size.
        x = keras.layers.ZeroPadding2D(3, dtype=dtype, name="stem_pad")(images)
        x = conv(stem_filters, 7, 2, name="stem_conv")(x)
        x = ops.relu(norm("stem_norm")(x))
        # Zero padding equals PyTorch's -inf padding here: the pooled values are >= 0.
        x = keras.layers.ZeroPadding2D(1, dtype=dtype, name="pool_pad")(x)
        x = keras.layers.MaxPooling2D(3, 2, dtype=dtype, name="pool")(x)
        channels = stem_filters
        dilation_rate = 1
        for s, (filters, num_blocks) in enumerate(zip(stage_filters, blocks_per_stage), 1):
            out_channels = filters * bottleneck_expansion
            stride = 1 if s == 1 else 2
            previous_rate = dilation_rate
            if dilation and s == len(stage_filters):
                dilation_rate, stride = dilation_rate * stride, 1
            for b in range(num_blocks):
                p = f"stage{s}_block{b}_"
                block_stride = stride if b == 0 else 1
                rate = previous_rate if b == 0 else dilation_rate
                shortcut = x
                if b == 0 and (block_stride != 1 or channels != out_channels):
                    # The 1x1 stride-s projection as a stride-1 1x1 convolution of every s-th
                    # position: exactly the same, and it avoids TensorFlow 2.21's oneDNN crash
                    # on strided 1x1 convolutions (keras_vtx/ops/subsample.py).
                    shortcut = subsample(x, block_stride)
                    shortcut = conv(out_channels, 1, name=p + "shortcut_conv")(shortcut)
                    shortcut = norm(p + "shortcut_norm")(shortcut)
                y = ops.relu(norm(p + "norm1")(conv(filters, 1, name=p + "conv1")(x)))
                if block_stride != 1:
                    y = keras.layers.ZeroPadding2D(rate, dtype=dtype, name=p + "pad")(y)
                y = conv(filters, 3, block_stride, rate, name=p + "conv2")(y)
                y = ops.relu(norm(p + "norm2")(y))
                y = norm(p + "norm3")(conv(out_channels, 1, name=p + "conv3")(y))
                x = ops.relu(y + shortcut)
                channels = out_channels
        super().__init__(inputs=images, outputs=x, dtype=dtype, **kwargs)

        # === Config ===
        self.depth = depth
        self.dilation = bool(dilation)
        self.frozen_stages = frozen_stages
        self.stage_filters = stage_filters
        self.blocks_per_stage = blocks_per_stage
        self.stem_filters = stem_filters
        self.bottleneck_expansion = bottleneck_expansion
        self.image_shape = image_shape
        self.epsilon = epsilon
        self.norm = norm_kind
        self.output_channels = stage_filters[-1] * bottleneck_expansion
        self.output_stride = 2 ** (len(stage_filters) + 1) // (2 if dilation else 1)
        self._frozen_prefixes = ("stem_",) + tuple(f"stage{s}_" for s in range(1, frozen + 1))
        if frozen < 0:
            self._frozen_prefixes = ()
        self._freeze_stages()

    def _freeze_stages(self):
        for layer in self.layers:
            if layer.name.startswith(getattr(self, "_frozen_prefixes", ())):
                layer.trainable = False

    @property
    def trainable(self):
        return self._trainable

    @trainable.setter
    def trainable(self, value):
        # `Layer.trainable = True` propagates to every sublayer; the frozen stages
        # stay frozen, as in DETR where they never receive gradients.
        keras.layers.Layer.trainable.fset(self, value)
        if hasattr(self, "_frozen_prefixes"):
            self._freeze_stages()

    def validate_inputs(self, inputs):
        shape = checked_shape(inputs, "images", ("batch", "height", "width", "channels"),
                              f"(batch, height, width, {self.image_shape[-1]})")
        if shape[-1] is not None and shape[-1] != self.image_shape[-1]:
            raise ValueError(
                f"`images` must have {self.image_shape[-1]} channels (last axis, NHWC); "
                f"received shape {shape}."
            )
        for axis, expected in zip((1, 2), self.image_shape[:2]):
            if expected is not None and shape[axis] is not None and shape[axis] != expected:
                raise ValueError(
                    f"`images` must be {self.image_shape[0]}x{self.image_shape[1]} for this "
                    f"model (`image_shape={self.image_shape}`); received shape {shape}."
                )

    def get_config(self):
        return self.base_config(
            depth=self.depth,
            dilation=self.dilation,
            frozen_stages=self.frozen_stages,
            stage_filters=self.stage_filters,
            blocks_per_stage=self.blocks_per_stage,
            stem_filters=self.stem_filters,
            bottleneck_expansion=self.bottleneck_expansion,
            image_shape=self.image_shape,
            epsilon=self.epsilon,
            norm=self.norm,
        )


def _positive_ints(values, name):
    try:
        values = tuple(int(v) for v in values)
    except (TypeError, ValueError):
        raise ValueError(
            f"`{name}` must be a sequence of positive ints; received {values!r}."
        ) from None
    if not values or min(values) <= 0:
        raise ValueError(f"`{name}` must be a sequence of positive ints; received {values!r}.")
    return values
