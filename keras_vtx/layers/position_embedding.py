import keras
import numpy as np
from keras import ops

from keras_vtx.ops.interpolate import resize_bicubic


@keras.saving.register_keras_serializable(package="keras_vtx")
class PositionEmbedding(keras.layers.Layer):
    """Adds learned 1-D position embeddings to a sequence.

    The table holds `sequence_length` positions; shorter inputs use its first
    rows (text, Image GPT prefixes) and longer ones are an error.

    Args:
        sequence_length: int, number of positions in the table.
        initializer: initializer of the table (ViT: normal, stddev 0.02).

    Call arguments:
        inputs: tensor `(batch, length, width)` with `length <= sequence_length`.

    Returns:
        `inputs + embeddings[:length]`.

    Example:
    >>> tuple(PositionEmbedding(5)(keras.ops.ones((2, 5, 8))).shape)
    (2, 5, 8)
    """

    def __init__(self, sequence_length, initializer=None, **kwargs):
        super().__init__(**kwargs)
        if int(sequence_length) <= 0:
            raise ValueError(
                f"`sequence_length` must be a positive int; received {sequence_length}."
            )
        self.sequence_length = int(sequence_length)
        self.initializer = keras.initializers.get(
            initializer or keras.initializers.RandomNormal(stddev=0.02)
        )

    def build(self, input_shape):
        length = input_shape[1]
        if length is not None and length > self.sequence_length:
            raise ValueError(
                f"Input length {length} is longer than the position table "
                f"(`sequence_length`={self.sequence_length})."
            )
        self.position_embeddings = self.add_weight(
            shape=(self.sequence_length, input_shape[-1]),
            initializer=self.initializer,
            name="embeddings",
        )

    def call(self, inputs):
        length = inputs.shape[1]
        if length is not None and length > self.sequence_length:
            raise ValueError(
                f"Input length {length} is longer than the position table "
                f"(`sequence_length`={self.sequence_length})."
            )
        table = ops.cast(self.position_embeddings, inputs.dtype)
        if length is None or length != self.sequence_length:
            table = table[: ops.shape(inputs)[1]]
        return inputs + table[None]

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "sequence_length": self.sequence_length,
            "initializer": keras.initializers.serialize(self.initializer),
        }


def resample_position_embeddings(embeddings, old_grid, new_grid, num_prefix_tokens=1):
    """Resamples a ViT position-embedding table to a new patch grid.

    The grid part is interpolated bicubically in 2-D (the same kernel as
    PyTorch's `interpolate(mode="bicubic", align_corners=False)`, which
    `transformers` uses for `interpolate_pos_encoding`); the prefix (class
    token) rows are kept as they are.

    Args:
        embeddings: array `(num_prefix_tokens + gh * gw, width)`.
        old_grid: `(gh, gw)` of `embeddings`.
        new_grid: `(new_gh, new_gw)`.
        num_prefix_tokens: int, rows before the grid that are kept.

    Returns:
        A NumPy array `(num_prefix_tokens + new_gh * new_gw, width)`.

    Example:
    >>> table = np.zeros((1 + 4 * 4, 8), "float32")
    >>> tuple(resample_position_embeddings(table, (4, 4), (6, 5)).shape)
    (31, 8)
    """
    embeddings = np.asarray(keras.ops.convert_to_numpy(embeddings))
    old_grid, new_grid = tuple(old_grid), tuple(new_grid)
    expected = num_prefix_tokens + old_grid[0] * old_grid[1]
    if embeddings.ndim != 2 or embeddings.shape[0] != expected:
        raise ValueError(
            f"`embeddings` must have shape ({expected}, width) for grid {old_grid} and "
            f"{num_prefix_tokens} prefix tokens; received {embeddings.shape}."
        )
    prefix, grid = embeddings[:num_prefix_tokens], embeddings[num_prefix_tokens:]
    if old_grid == new_grid:
        return embeddings.copy()
    grid = grid.reshape(old_grid + (embeddings.shape[1],))
    grid = resize_bicubic(grid, new_grid)
    return np.concatenate([prefix, grid.reshape(-1, embeddings.shape[1])], axis=0).astype(
        embeddings.dtype
    )
