import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_vtx")
class ImageNormalization(keras.layers.Layer):
    """Rescales raw pixels and normalises them with a per-channel mean and std.

    `outputs = (inputs * scale - mean) / std`, computed in float32.

    Args:
        scale: float, applied first (1/255 turns [0, 255] pixels into [0, 1]).
        mean: sequence of per-channel means (after scaling).
        std: sequence of per-channel standard deviations (after scaling).

    Call arguments:
        inputs: images `(..., channels)`.

    Returns:
        Normalised images in the layer's compute dtype.

    Example:
    >>> layer = ImageNormalization(1 / 255, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    >>> float(layer(keras.ops.full((1, 2, 2, 3), 255.0))[0, 0, 0, 0])
    1.0
    """

    def __init__(self, scale=1 / 255.0, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), **kwargs):
        super().__init__(**kwargs)
        mean, std = [float(v) for v in mean], [float(v) for v in std]
        if len(mean) != len(std):
            raise ValueError(
                f"`mean` and `std` must have the same length; received {len(mean)} and {len(std)}."
            )
        if any(s <= 0 for s in std):
            raise ValueError(f"`std` must be positive; received {std}.")
        self.scale = float(scale)
        self.mean = mean
        self.std = std

    def build(self, input_shape):
        if input_shape[-1] is not None and input_shape[-1] != len(self.mean):
            raise ValueError(
                f"Images have {input_shape[-1]} channels but `mean`/`std` have "
                f"{len(self.mean)} entries."
            )

    def call(self, inputs):
        x = ops.cast(inputs, "float32") * self.scale
        x = (x - ops.array(self.mean, "float32")) / ops.array(self.std, "float32")
        return ops.cast(x, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "scale": self.scale, "mean": self.mean, "std": self.std}
