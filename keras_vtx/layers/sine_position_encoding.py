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
        return ops.concatenate([
            sine_encoding(y, self.num_pos_feats, self.temperature),
            sine_encoding(x, self.num_pos_feats, self.temperature),
        ], axis=-1)

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


def sine_encoding(position, num_pos_feats, temperature=10000.0):
    """Encodes each value of `position` as `num_pos_feats` interleaved sines and cosines.

    Feature pairs `(2i, 2i + 1)` are `sin(p / t^(2i/d)), cos(p / t^(2i/d))` with
    `t = temperature` and `d = num_pos_feats`: DETR's per-coordinate encoding.

    Args:
        position: float tensor of any shape.
        num_pos_feats: even int.
        temperature: float.

    Returns:
        A float32 tensor `position.shape + (num_pos_feats,)`.

    Example:
    >>> keras.ops.convert_to_numpy(sine_encoding(keras.ops.zeros((2,)), 4)).tolist()
    [[0.0, 1.0, 0.0, 1.0], [0.0, 1.0, 0.0, 1.0]]
    """
    position = ops.cast(position, "float32")
    # Feature pairs (2i, 2i + 1) share the wavelength temperature^(2i / d).
    index = ops.arange(num_pos_feats, dtype="float32")
    dim_t = ops.power(ops.cast(temperature, "float32"), 2.0 * ops.floor(index / 2.0) / num_pos_feats)
    angles = position[..., None] / dim_t
    # Interleave: sin of the even features, cos of the odd ones.
    encoded = ops.stack([ops.sin(angles[..., 0::2]), ops.cos(angles[..., 1::2])], axis=-1)
    return ops.reshape(encoded, tuple(ops.shape(position)) + (num_pos_feats,))


def sine_box_encoding(boxes, num_pos_feats, temperature=10000.0, scale=2 * math.pi):
    """Encodes normalised `(cx, cy, w, h)` boxes as DAB-DETR's anchor position features.

    Each coordinate, times `scale`, gets `sine_encoding`; the features are
    ordered `y, x, w, h`, so the first half is in the format of
    `SinePositionEncoding2D` at the box's centre (DAB-DETR,
    `gen_sineembed_for_position`).

    Args:
        boxes: `(..., 4)` normalised `cx, cy, w, h`.
        num_pos_feats: even int, features per coordinate.
        temperature: float.
        scale: float, the range that `[0, 1]` is mapped to (2 pi, as the
            normalised 2-D encoding).

    Returns:
        A float32 tensor `(..., 4 * num_pos_feats)`.

    Example:
    >>> tuple(sine_box_encoding(keras.ops.ones((2, 5, 4)) / 2, 8).shape)
    (2, 5, 32)
    """
    boxes = ops.cast(boxes, "float32") * scale
    parts = [sine_encoding(boxes[..., i], num_pos_feats, temperature) for i in (1, 0, 2, 3)]
    return ops.concatenate(parts, axis=-1)
