import keras

from keras_vtx.layers.flat_dense import call_sublayer
from keras_vtx.layers.mlp import MLP
from keras_vtx.layers.multi_head_attention import MultiHeadAttention


@keras.saving.register_keras_serializable(package="keras_vtx")
class TransformerDecoderBlock(keras.layers.Layer):
    """A transformer decoder block: self-attention, cross-attention and MLP, each with a residual.

    As in DETR (facebookresearch/detr, `models/transformer.py`,
    `TransformerDecoderLayer`): the query position encoding is added to the
    queries and keys of the self-attention and to the queries of the
    cross-attention; the memory's position encoding is added to the
    cross-attention's keys; values never get position encodings.
    `norm_first=False` is DETR's post-LayerNorm form
    (`norm1(x + self_attn(x))`, `norm2(x + cross_attn(x))`,
    `norm3(x + mlp(x))`), `norm_first=True` the pre-LayerNorm form.

    Args:
        num_heads: int, number of heads of both attentions.
        mlp_dim: int, hidden width of the MLP (DETR's `dim_feedforward`).
        dropout: float, dropout after each attention projection and in the MLP.
        attention_dropout: float, dropout on attention probabilities.
        norm_first: bool, pre-LayerNorm (True) or post-LayerNorm (False, DETR).
        activation: MLP activation name (see `get_activation`).
        layer_norm_epsilon: float.
        kernel_initializer: initializer of all kernels.

    Call arguments:
        inputs: the queries (DETR's `tgt`), `(batch, queries, width)`.
        memory: the encoder output, `(batch, length, width)`.
        query_position: optional `(batch or 1, queries, width)`, DETR's
            `query_pos` (the learned object queries).
        memory_position: optional `(batch, length, width)`, the encoder's
            position encoding (DETR's `pos`).
        memory_mask: optional boolean `(batch, length)`, True for real memory
            positions (the key padding mask, inverted).
        self_attention_mask: optional boolean mask of the self-attention,
            see `MultiHeadAttention`.
        return_attention_scores: bool, also return the self-attention
            `(batch, heads, queries, queries)` and cross-attention
            `(batch, heads, queries, length)` probabilities.
        training: bool.

    Returns:
        A tensor `(batch, queries, width)`, or
        `(outputs, self_attention_scores, cross_attention_scores)` when
        `return_attention_scores=True`.

    Example:
    >>> block = TransformerDecoderBlock(num_heads=2, mlp_dim=16)
    >>> out = block(keras.ops.zeros((2, 3, 8)), keras.ops.ones((2, 7, 8)))
    >>> tuple(out.shape)
    (2, 3, 8)
    """

    def __init__(
        self,
        num_heads,
        mlp_dim,
        dropout=0.0,
        attention_dropout=0.0,
        norm_first=False,
        activation="relu",
        layer_norm_epsilon=1e-5,
        kernel_initializer="glorot_uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.mlp_dim = mlp_dim
        self.dropout = dropout
        self.attention_dropout = attention_dropout
        self.norm_first = norm_first
        self.activation = activation
        self.layer_norm_epsilon = layer_norm_epsilon
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build(self, inputs_shape, memory_shape=None):
        memory_shape = inputs_shape if memory_shape is None else memory_shape
        init = keras.initializers.serialize(self.kernel_initializer)

        def norm(name):
            return keras.layers.LayerNormalization(
                epsilon=self.layer_norm_epsilon, dtype=self.dtype_policy, name=name
            )

        def attention(name):
            return MultiHeadAttention(
                self.num_heads, dropout=self.attention_dropout, kernel_initializer=init,
                dtype=self.dtype_policy, name=name,
            )

        self.self_attention = attention("self_attention")
        self.cross_attention = attention("cross_attention")
        self.norm1, self.norm2, self.norm3 = norm("norm1"), norm("norm2"), norm("norm3")
        self.mlp = MLP(
            self.mlp_dim, activation=self.activation, dropout=self.dropout,
            kernel_initializer=init, dtype=self.dtype_policy, name="mlp",
        )
        self.output_dropout = keras.layers.Dropout(self.dropout, dtype=self.dtype_policy)
        self.self_attention.build(inputs_shape)
        self.cross_attention.build(inputs_shape, memory_shape)
        for layer in (self.norm1, self.norm2, self.norm3, self.mlp):
            layer.build(inputs_shape)

    def call(
        self,
        inputs,
        memory,
        query_position=None,
        memory_position=None,
        memory_mask=None,
        self_attention_mask=None,
        return_attention_scores=False,
        training=None,
    ):
        x = inputs
        cross_mask = None
        if memory_mask is not None:
            # (batch, length) -> (batch, 1, 1, length): every head and query.
            cross_mask = keras.ops.cast(memory_mask, "bool")[:, None, None, :]

        # The norms and the MLP go through call_sublayer, the PyTorch fast path of the
        # encoder block (flat_dense.call_sublayer). The attentions take position
        # encodings and memory as tensor arguments, which the layer call must convert
        # to the compute dtype: call_sublayer passes such calls to the layer call.
        h = call_sublayer(self.norm1, self, x) if self.norm_first else x
        attn = call_sublayer(
            self.self_attention,
            self,
            h, attention_mask=self_attention_mask, query_position=query_position,
            key_position=query_position, return_attention_scores=return_attention_scores,
            training=training,
        )
        if return_attention_scores:
            attn, self_scores = attn
        x = x + self._dropout(attn, training)
        if not self.norm_first:
            x = call_sublayer(self.norm1, self, x)

        h = call_sublayer(self.norm2, self, x) if self.norm_first else x
        attn = call_sublayer(
            self.cross_attention,
            self,
            h, value=memory, key=memory, attention_mask=cross_mask,
            query_position=query_position, key_position=memory_position,
            return_attention_scores=return_attention_scores, training=training,
        )
        if return_attention_scores:
            attn, cross_scores = attn
        x = x + self._dropout(attn, training)
        if not self.norm_first:
            x = call_sublayer(self.norm2, self, x)

        h = call_sublayer(self.norm3, self, x) if self.norm_first else x
        x = x + call_sublayer(self.mlp, self, h, training=training)
        if not self.norm_first:
            x = call_sublayer(self.norm3, self, x)
        if return_attention_scores:
            return x, self_scores, cross_scores
        return x

    def _dropout(self, x, training):
        # A rate-0 Dropout is the identity; not calling it saves PyTorch's eager
        # steps a Layer.__call__ (a few hundred microseconds of host time).
        return self.output_dropout(x, training=training) if self.dropout else x

    def compute_output_shape(self, inputs_shape, memory_shape=None):
        return inputs_shape

    def get_config(self):
        return {
            **super().get_config(),
            "num_heads": self.num_heads,
            "mlp_dim": self.mlp_dim,
            "dropout": self.dropout,
            "attention_dropout": self.attention_dropout,
            "norm_first": self.norm_first,
            "activation": self.activation,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
        }
