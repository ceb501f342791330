import keras
from keras import ops


def _pair(value, name):
    if isinstance(value, int):
        return (value, value)
    value = tuple(value)
    if len(value) != 2 or not all(isinstance(v, int) and v > 0 for v in value):
        raise ValueError(f"`{name}` must be an int or a pair of positive ints; received {value}.")
    return value


@keras.saving.register_keras_serializable(package="keras_vtx")
class PatchEmbedding(keras.layers.Layer):
    """Splits an image into P x P patches and embeds each linearly.

    A convolution with kernel and stride P is exactly the paper's linear
    projection of flattened patches (ViT, eq. 1), and is what the reference
    checkpoints store.

    Args:
        hidden_dim: int, embedding width D.
        patch_size: int or `(ph, pw)`.
        use_bias: bool.
        kernel_initializer: initializer of the projection.

    Call arguments:
        inputs: images `(batch, height, width, channels)`; height and width
            must be divisible by the patch size.

    Returns:
        Patch embeddings `(batch, (height / ph) * (width / pw), hidden_dim)` in
        raster order.

    Example:
    >>> tuple(PatchEmbedding(8, patch_size=4)(keras.ops.ones((2, 16, 12, 3))).shape)
    (2, 12, 8)
    """

    def __init__(
        self, hidden_dim, patch_size, use_bias=True, kernel_initializer="glorot_uniform", **kwargs
    ):
        super().__init__(**kwargs)
        self.hidden_dim = hidden_dim
        self.patch_size = _pair(patch_size, "patch_size")
        self.use_bias = use_bias
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build(self, input_shape):
        if len(input_shape) != 4:
            raise ValueError(
                "`PatchEmbedding` expects images of rank 4 (batch, height, width, channels); "
                f"received shape {tuple(input_shape)}."
            )
        h, w = input_shape[1], input_shape[2]
        ph, pw = self.patch_size
        if (h is not None and h % ph) or (w is not None and w % pw):
            raise ValueError(
                f"Image size ({h}, {w}) must be divisible by `patch_size` {self.patch_size}."
            )
        self.projection = keras.layers.Conv2D(
            self.hidden_dim,
            self.patch_size,
            strides=self.patch_size,
            padding="valid",
            use_bias=self.use_bias,
            kernel_initializer=keras.initializers.get(
                keras.initializers.serialize(self.kernel_initializer)
            ),
            dtype=self.dtype_policy,
            name="projection",
        )
        self.projection.build(input_shape)

    def call(self, inputs):
        x = self.projection(inputs)
        shape = ops.shape(x)
        return ops.reshape(x, (shape[0], shape[1] * shape[2], self.hidden_dim))

    def compute_output_shape(self, input_shape):
        h, w = input_shape[1], input_shape[2]
        ph, pw = self.patch_size
        n = None if h is None or w is None else (h // ph) * (w // pw)
        return (input_shape[0], n, self.hidden_dim)

    def get_config(self):
        return {
            **super().get_config(),
            "hidden_dim": self.hidden_dim,
            "patch_size": self.patch_size,
            "use_bias": self.use_bias,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
        }
