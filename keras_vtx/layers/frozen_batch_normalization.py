import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_vtx")
class FrozenBatchNormalization(keras.layers.Layer):
    """Batch normalization with fixed statistics and fixed affine parameters.

    The ResNet backbones of detection models (DETR's `FrozenBatchNorm2d`,
    torchvision's `ops.misc.FrozenBatchNorm2d`) keep ImageNet's batch-norm
    statistics: detection batches are a couple of large images, far too few
    to estimate statistics from. All four weights are non-trainable and never
    updated, in training as in inference; setting `trainable=True` does not
    change that. The normalisation is folded into a per-channel scale and
    shift,

        scale = gamma / sqrt(moving_variance + epsilon)
        y = x * scale + (beta - moving_mean * scale),

    computed in float32 whatever the compute dtype (statistics and the
    result of the affine map are cast back to the compute dtype at the end).

    Args:
        epsilon: float added to the variance. DETR uses 1e-5, torchvision's
            default (`facebookresearch/detr` `models/backbone.py`).
        **kwargs: base `Layer` arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: a channels-last tensor `(..., channels)`.

    Returns:
        A tensor of the same shape, in the layer's compute dtype.

    Example:
    >>> norm = FrozenBatchNormalization()
    >>> x = keras.ops.ones((1, 2, 2, 3))
    >>> norm.build(x.shape)
    >>> _ = norm.moving_mean.assign(np.full(3, 0.5, "float32"))
    >>> np.round(keras.ops.convert_to_numpy(norm(x))[0, 0, 0], 4)
    array([0.5, 0.5, 0.5], dtype=float32)
    >>> len(norm.trainable_weights), len(norm.non_trainable_weights)
    (0, 4)
    """

    def __init__(self, epsilon=1e-5, **kwargs):
        super().__init__(**kwargs)
        epsilon = float(epsilon)
        if not epsilon >= 0.0:
            raise ValueError(f"`epsilon` must be a non-negative float; received {epsilon}.")
        self.epsilon = epsilon
        self.supports_masking = True

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None:
            raise ValueError(
                "FrozenBatchNormalization needs a known channel dimension (last axis); "
                f"received input shape {tuple(input_shape)}."
            )
        shape = (int(channels),)
        # autocast=False: under mixed precision the statistics stay float32 in `call`;
        # a small variance would lose most of its digits in float16.
        def weight(name, init):
            return self.add_weight(
                shape=shape, initializer=init, trainable=False, autocast=False, name=name
            )

        self.gamma = weight("gamma", "ones")
        self.beta = weight("beta", "zeros")
        self.moving_mean = weight("moving_mean", "zeros")
        self.moving_variance = weight("moving_variance", "ones")

    def call(self, inputs):
        gamma = ops.cast(self.gamma, "float32")
        variance = ops.cast(self.moving_variance, "float32")
        scale = gamma * ops.rsqrt(variance + self.epsilon)
        shift = ops.cast(self.beta, "float32") - ops.cast(self.moving_mean, "float32") * scale
        outputs = ops.cast(inputs, "float32") * scale + shift
        return ops.cast(outputs, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}
