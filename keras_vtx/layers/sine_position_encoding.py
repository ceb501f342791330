import math

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_vtx")
class SinePositionEncoding2D(keras.layers.Layer):
    """DETR's 2-D sine position encoding of a padded image's feature map.

    Positions are counted over real pixels only: a cumulative sum of the pixel
    mask down the rows gives `y`, along the columns gives `x`, so padding never
    shifts the positions of the image. With `normalize=True` each is divided
    by its last value (the image's own height or width, plus 1e-6) and
    multiplied by `scale`, so positions run over `(0, scale]` whatever the
    image size. Each coordinate is then encoded as interleaved
    `sin(p / t^(2i/d)), cos(p / t^(2i/d))` (`t = temperature`,
    `d = num_pos_feats`), and the `y` features come before the `x` features,
    as in DETR's `PositionEmbeddingSine` (facebookresearch/detr,
    `models/position_encoding.py`). Always float32.

    Args:
        num_pos_feats: int, features per coordinate; the output has
            `2 * num_pos_feats` channels (DETR: `d_model / 2` = 128).
        temperature: float, the base of the wavelengths (10000).
        normalize: bool, normalise the positions to `(0, scale]`.
        scale: float, the range of normalised positions (2 pi).
        epsilon: float, added to the last cumulative value before dividing
            (DETR's 1e-6; keeps an all-padding row or column finite).

    Call arguments:
        pixel_mask: `(batch, height, width)`, 1 (or True) for real pixels and
            0 for padding.

    Returns:
        A float32 tensor `(batch, height, width, 2 * num_pos_feats)`.

    Example:
    >>> layer = SinePositionEncoding2D(num_pos_feats=4)
    >>> tuple(layer(np.ones((2, 3, 5), "int32")).shape)
    (2, 3, 5, 8)
    """

    def __init__(self, num_pos_feats=128, temperature=10000.0, normalize=True,
                 scale=2 * math.pi, epsilon=1e-6, **kwargs):
        super().__init__(**kwargs)
        if int(num_pos_feats) <= 0 or int(num_pos_feats) % 2:
            raise ValueError(
                f"`num_pos_feats` must be a positive even int; received {num_pos_feats}."
            )
        if float(temperature) <= 0:
            raise ValueError(f"`temperature` must be positive; received {temperature}.")
        self.num_pos_feats = int(num_pos_feats)
        self.temperature = float(temperature)
        self.normalize = bool(normalize)
        self.scale = float(scale)
        self.epsilon = float(epsilon)
        self.built = True  # no weights (an unbuilt layer makes Keras rebuild its model)

    def call(self, pixel_mask):
        if len(pixel_mask.shape) != 3:
            raise ValueError(
                "`pixel_mask` must have shape (batch, height, width); received shape "
                f"{tuple(pixel_mask.shape)}."
            )
        mask = ops.cast(ops.cast(pixel_mask, "bool"), "float32")
        y = ops.cumsum(mask, axis=1)
        x = ops.cumsum(mask, axis=2)
        if self.normalize:
            y = y / (y[:, -1:, :] + self.epsilon) * self.scale
            x = x / (x[:, :, -1:] + self.epsilon) * self.scale
        # Feature pairs (2i, 2i + 1) share the wavelength temperature^(2i / d).
        index = ops.arange(self.num_pos_feats, dtype="float32")
        dim_t = ops.power(
            ops.cast(self.temperature, "float32"),
            2.0 * ops.floor(index / 2.0) / self.num_pos_feats,
        )
        return ops.concatenate([self._encode(y, dim_t), self._encode(x, dim_t)], axis=-1)

    def _encode(self, position, dim_t):
        angles = position[..., None] / dim_t
        # Interleave: sin of the even features, cos of the odd ones.
        encoded = ops.stack([ops.sin(angles[..., 0::2]), ops.cos(angles[..., 1::2])], axis=-1)
        shape = ops.shape(position)
        return ops.reshape(encoded, (shape[0], shape[1], shape[2], self.num_pos_feats))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape) + (2 * self.num_pos_feats,)

    def compute_output_spec(self, pixel_mask):
        return keras.KerasTensor(self.compute_output_shape(pixel_mask.shape), dtype="float32")

    def get_config(self):
        return {
            **super().get_config(),
            "num_pos_feats": self.num_pos_feats,
            "temperature": self.temperature,
            "normalize": self.normalize,
            "scale": self.scale,
            "epsilon": self.epsilon,
        }
