import keras
from keras import ops

from keras_vtx.layers.mlp import MLP
from keras_vtx.layers.multi_head_attention import MultiHeadAttention


@keras.saving.register_keras_serializable(package="keras_vtx")
class MultiHeadAttentionPooling(keras.layers.Layer):
    """Multihead attention pooling (MAP) from "Scaling Vision Transformers".

    A learned probe attends over the sequence; the result goes through a
    LayerNorm and a residual MLP (big_vision's `MAPHead`).

    Args:
        num_heads: int.
        mlp_dim: int, hidden width of the MLP (ViT uses 4 x width).
        layer_norm_epsilon: float.
        activation: MLP activation name.

    Call arguments:
        inputs: tensor `(batch, length, width)`.
        return_attention_scores: bool, also return the probe's attention.

    Returns:
        The pooled tensor `(batch, width)`.

    Example:
    >>> tuple(MultiHeadAttentionPooling(num_heads=2, mlp_dim=16)(keras.ops.ones((2, 5, 8))).shape)
    (2, 8)
    """

    def __init__(self, num_heads, mlp_dim, layer_norm_epsilon=1e-6, activation="gelu", **kwargs):
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.mlp_dim = mlp_dim
        self.layer_norm_epsilon = layer_norm_epsilon
        self.activation = activation

    def build(self, input_shape):
        width = input_shape[-1]
        self.probe = self.add_weight(
            shape=(1, 1, width), initializer="glorot_uniform", name="probe"
        )
        self.attention = MultiHeadAttention(
            self.num_heads, dtype=self.dtype_policy, name="attention"
        )
        self.attention.build((None, 1, width), input_shape)
        self.norm = keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon, dtype=self.dtype_policy, name="norm"
        )
        self.norm.build((None, 1, width))
        self.mlp = MLP(self.mlp_dim, activation=self.activation, dtype=self.dtype_policy, name="mlp")
        self.mlp.build((None, 1, width))

    def call(self, inputs, return_attention_scores=False, training=None):
        probe = ops.broadcast_to(
            ops.cast(self.probe, inputs.dtype), (ops.shape(inputs)[0], 1, inputs.shape[-1])
        )
        x = self.attention(
            probe, inputs, return_attention_scores=return_attention_scores, training=training
        )
        if return_attention_scores:
            x, scores = x
        x = x + self.mlp(self.norm(x), training=training)
        if return_attention_scores:
            return x[:, 0], scores
        return x[:, 0]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])

    def get_config(self):
        return {
            **super().get_config(),
            "num_heads": self.num_heads,
            "mlp_dim": self.mlp_dim,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "activation": self.activation,
        }
