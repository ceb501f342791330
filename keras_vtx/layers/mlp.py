import keras

from keras_vtx.layers.activations import get_activation
from keras_vtx.layers.flat_dense import allow_direct_calls, apply_flat


@keras.saving.register_keras_serializable(package="keras_vtx")
@allow_direct_calls
class MLP(keras.layers.Layer):
    """The transformer feed-forward block: dense, activation, dropout, dense, dropout.

    Args:
        hidden_dim: int, width of the hidden layer (the papers' "MLP size").
        output_dim: int or None; defaults to the input width.
        activation: name of the activation, see `get_activation`
            (`"gelu"`, `"tanh_gelu"`, `"quick_gelu"`, `"relu"`, ...).
        dropout: float, dropout rate after the activation and after the output.
        use_bias: bool, whether the dense layers have biases.
        kernel_initializer: initializer of both kernels.

    Call arguments:
        inputs: tensor of shape `(..., width)`.
        training: bool.

    Returns:
        A tensor of shape `(..., output_dim)`.

    Example:
    >>> tuple(MLP(hidden_dim=8)(keras.ops.ones((2, 3, 4))).shape)
    (2, 3, 4)
    """

    def __init__(
        self,
        hidden_dim,
        output_dim=None,
        activation="gelu",
        dropout=0.0,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if int(hidden_dim) <= 0:
            raise ValueError(f"`hidden_dim` must be a positive int; received {hidden_dim}.")
        self.hidden_dim = int(hidden_dim)
        self.output_dim = output_dim
        self.activation = activation
        self.dropout = dropout
        self.use_bias = use_bias
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self._activation_fn = get_activation(activation)

    def build(self, input_shape):
        out = self.output_dim or input_shape[-1]
        init = lambda: keras.initializers.get(  # noqa: E731
            keras.initializers.serialize(self.kernel_initializer)
        )
        self.fc1 = keras.layers.Dense(
            self.hidden_dim, use_bias=self.use_bias, kernel_initializer=init(),
            dtype=self.dtype_policy, name="fc1",
        )
        self.fc2 = keras.layers.Dense(
            out, use_bias=self.use_bias, kernel_initializer=init(),
            dtype=self.dtype_policy, name="fc2",
        )
        self.dropout_layer = keras.layers.Dropout(self.dropout, dtype=self.dtype_policy)
        self.fc1.build(input_shape)
        self.fc2.build(tuple(input_shape[:-1]) + (self.hidden_dim,))

    def call(self, inputs, training=None):
        x = self._activation_fn(apply_flat(self.fc1, inputs, self))
        if self.dropout:
            x = self.dropout_layer(x, training=training)
        x = apply_flat(self.fc2, x, self)
        if self.dropout:
            x = self.dropout_layer(x, training=training)
        return x

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.output_dim or input_shape[-1],)

    def get_config(self):
        return {
            **super().get_config(),
            "hidden_dim": self.hidden_dim,
            "output_dim": self.output_dim,
            "activation": self.activation,
            "dropout": self.dropout,
            "use_bias": self.use_bias,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
        }
