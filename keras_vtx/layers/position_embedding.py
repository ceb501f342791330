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


@keras.saving.register_keras_serializable(package="keras_vtx")
class SineCosine2DInitializer(keras.initializers.Initializer):
    """A 2-D sine-cosine table as the starting value of learned position embeddings.

    Row `num_prefix_tokens + i * width + j` (patch `(i, j)` of a row-major grid)
    is `scale * [sin(i w), cos(i w), sin(j w), cos(j w)]` with the `D / 4`
    frequencies `w_k = temperature ** (-k / (D / 4))`, the layout of
    MAE's fixed table (transformers' `build_2d_sinusoidal_position_embedding`);
    the prefix (class token) rows are zero. Neighbouring patches start alike
    and distant ones not, which a randomly initialised table has to learn
    first: self-supervised pretraining on small data finds local attention
    sooner from it (docs/vit.md, "Mean attention distance"). The table stays a
    learned weight, and a checkpoint's values replace it as usual.

    Args:
        grid_size: `(height, width)` of the patch grid.
        num_prefix_tokens: int, zero rows before the grid.
        scale: float, the amplitude (the default 0.1 gives a root mean square
            of 0.07, near the patch tokens' own at initialisation, so that
            the positions do not drown the content).
        temperature: float, the base of the frequencies.

    Example:
    >>> table = SineCosine2DInitializer((2, 3), scale=1.0)((7, 8))
    >>> tuple(table.shape)
    (7, 8)
    >>> [round(float(v), 3) for v in table[0, :4]]  # the class token's row
    [0.0, 0.0, 0.0, 0.0]
    >>> # Patch (1, 2) at the first frequency (1): sin 1, cos 1, sin 2, cos 2.
    >>> [round(float(v), 3) for v in table[1 + 1 * 3 + 2, ::2]]
    [0.841, 0.54, 0.909, -0.416]
    """

    def __init__(self, grid_size, num_prefix_tokens=1, scale=0.1, temperature=10000.0):
        grid_size = tuple(int(v) for v in grid_size)
        if len(grid_size) != 2 or min(grid_size) <= 0:
            raise ValueError(
                f"`grid_size` must be a pair of positive ints; received {grid_size}."
            )
        if int(num_prefix_tokens) < 0:
            raise ValueError(
                f"`num_prefix_tokens` must be >= 0; received {num_prefix_tokens}."
            )
        self.grid_size = grid_size
        self.num_prefix_tokens = int(num_prefix_tokens)
        self.scale = float(scale)
        self.temperature = float(temperature)

    def __call__(self, shape, dtype=None):
        height, width = self.grid_size
        rows = self.num_prefix_tokens + height * width
        if len(shape) != 2 or shape[0] != rows or shape[1] % 4:
            raise ValueError(
                f"SineCosine2DInitializer for grid {self.grid_size} and "
                f"{self.num_prefix_tokens} prefix tokens makes tables of shape ({rows}, D) with "
                f"D divisible by 4; received shape {tuple(shape)}."
            )
        quarter = shape[1] // 4
        frequencies = self.temperature ** -(np.arange(quarter, dtype="float64") / quarter)
        i, j = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
        angles_i = i.reshape(-1, 1) * frequencies
        angles_j = j.reshape(-1, 1) * frequencies
        grid = np.concatenate(
            [np.sin(angles_i), np.cos(angles_i), np.sin(angles_j), np.cos(angles_j)], axis=1
        )
        table = np.concatenate([np.zeros((self.num_prefix_tokens, shape[1])), grid], axis=0)
        return ops.convert_to_tensor(self.scale * table, dtype=dtype or "float32")

    def get_config(self):
        return {
            "grid_size": self.grid_size,
            "num_prefix_tokens": self.num_prefix_tokens,
            "scale": self.scale,
            "temperature": self.temperature,
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
