import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_vtx")
class DropPath(keras.layers.Layer):
    """Stochastic depth: drops the whole residual branch of a sample.

    Each sample's branch is kept with probability `1 - rate` during training
    and rescaled by `1 / (1 - rate)` (Huang et al., 2016); at inference the
    layer is the identity.

    Args:
        rate: float in [0, 1), the probability of dropping a sample's branch.
        seed: optional int seed.

    Call arguments:
        inputs: a tensor whose first axis is the batch.
        training: bool, whether to drop.

    Returns:
        A tensor of the same shape.

    Example:
    >>> layer = DropPath(0.1)
    >>> tuple(layer(keras.ops.ones((2, 3, 4))).shape)
    (2, 3, 4)
    """

    def __init__(self, rate=0.0, seed=None, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"`rate` must be in [0, 1); received {rate}.")
        self.rate = rate
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        # No weights: built now, as Keras' Dropout. A rate-0 DropPath is never called,
        # and an unbuilt layer would make Keras rebuild the model symbolically before
        # every fit/evaluate/predict (and, on TensorFlow, build the optimizer in the step).
        self.built = True

    def call(self, inputs, training=None):
        if not training or self.rate == 0.0:
            return inputs
        keep = 1.0 - self.rate
        shape = (ops.shape(inputs)[0],) + (1,) * (len(inputs.shape) - 1)
        mask = keras.random.uniform(shape, seed=self.seed_generator) < keep
        return ops.where(mask, inputs / ops.cast(keep, inputs.dtype), ops.zeros_like(inputs))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}
