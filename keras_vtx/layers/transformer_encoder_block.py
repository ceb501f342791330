import keras

from keras_vtx.layers.drop_path import DropPath
from keras_vtx.layers.flat_dense import call_sublayer
from keras_vtx.layers.mlp import MLP
from keras_vtx.layers.multi_head_attention import MultiHeadAttention


@keras.saving.register_keras_serializable(package="keras_vtx")
class TransformerEncoderBlock(keras.layers.Layer):
    """A transformer encoder block: self-attention and MLP, each with a residual.

    `norm_first=True` is the pre-LayerNorm form of ViT, GPT-2 and Image GPT
    (`x + attn(norm1(x))`, `x + mlp(norm2(x))`); `norm_first=False` is the
    post-LayerNorm form of the original Transformer and DETR
    (`norm1(x + attn(x))`, `norm2(x + mlp(x))`).

    Args:
        num_heads: int, number of attention heads.
        mlp_dim: int, hidden width of the MLP.
        dropout: float, dropout after the attention projection and in the MLP.
        attention_dropout: float, dropout on attention probabilities.
        drop_path: float, stochastic-depth rate of both residual branches.
        norm_first: bool, pre-LayerNorm (True) or post-LayerNorm (False).
        activation: MLP activation name (see `get_activation`).
        layer_norm_epsilon: float.
        kernel_initializer: initializer of all kernels.
        norm: `"layer_norm"` (mean and variance, scale and bias) or `"rms_norm"`
            (no mean subtraction, no bias: the released Image GPT's layer norm).
        remat: bool, recompute the block's activations in the backward pass
            (gradient checkpointing with `keras.remat`) when called with
            `training=True`; not with a cache or attention probabilities.

    Call arguments:
        inputs: tensor `(batch, length, width)`.
        attention_mask: optional boolean mask, see `MultiHeadAttention`.
        is_causal: bool, causal self-attention (GPT-style).
        position_encoding: optional tensor added to queries and keys (DETR).
        return_attention_scores: bool, also return attention probabilities.
        training: bool.
        cache: optional key/value cache of the self-attention, `(batch, 2,
            max_length, num_heads, head_dim)` (see `initial_cache` and
            `MultiHeadAttention`), for autoregressive decoding: `inputs` are
            the tokens at positions `cache_update_index ...`.
        cache_update_index: int or scalar int tensor; required with `cache`.

    Returns:
        A tensor `(batch, length, width)`, then the attention probabilities
        `(batch, heads, length, source_length)` when asked, then the updated
        cache when `cache` is given.

    Example:
    >>> block = TransformerEncoderBlock(num_heads=2, mlp_dim=16)
    >>> tuple(block(keras.ops.ones((2, 5, 8))).shape)
    (2, 5, 8)
    >>> cache = block.initial_cache(batch_size=2, max_length=5)
    >>> step, cache = block(keras.ops.ones((2, 1, 8)), is_causal=True,
    ...                     cache=cache, cache_update_index=0)
    >>> tuple(step.shape)
    (2, 1, 8)
    >>> tuple(cache.shape)  # keys and values, batch, positions, heads, head size
    (2, 2, 5, 2, 4)
    """

    def __init__(
        self,
        num_heads,
        mlp_dim,
        dropout=0.0,
        attention_dropout=0.0,
        drop_path=0.0,
        norm_first=True,
        activation="gelu",
        layer_norm_epsilon=1e-6,
        kernel_initializer="glorot_uniform",
        norm="layer_norm",
        remat=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if norm not in ("layer_norm", "rms_norm"):
            raise ValueError(
                f"`norm` must be 'layer_norm' or 'rms_norm'; received {norm!r}."
            )
        self.norm = norm
        self.num_heads = num_heads
        self.mlp_dim = mlp_dim
        self.dropout = dropout
        self.attention_dropout = attention_dropout
        self.drop_path = drop_path
        self.norm_first = norm_first
        self.activation = activation
        self.layer_norm_epsilon = layer_norm_epsilon
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.remat = remat

    def _norm_layer(self, name):
        if self.norm == "rms_norm":
            # Under mixed precision the RMS statistics run in float32 (Keras'
            # LayerNormalization upcasts by itself; RMSNormalization does not).
            mixed = self.dtype_policy.compute_dtype in ("float16", "bfloat16")
            return keras.layers.RMSNormalization(
                epsilon=self.layer_norm_epsilon,
                dtype="float32" if mixed else self.dtype_policy,
                name=name,
            )
        return keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon, dtype=self.dtype_policy, name=name
        )

    def build(self, input_shape):
        init = keras.initializers.serialize(self.kernel_initializer)
        self.norm1 = self._norm_layer("norm1")
        self.attention = MultiHeadAttention(
            self.num_heads,
            dropout=self.attention_dropout,
            kernel_initializer=init,
            dtype=self.dtype_policy,
            name="attention",
        )
        self.norm2 = self._norm_layer("norm2")
        self.mlp = MLP(
            self.mlp_dim,
            activation=self.activation,
            dropout=self.dropout,
            kernel_initializer=init,
            dtype=self.dtype_policy,
            name="mlp",
        )
        self.attention_output_dropout = keras.layers.Dropout(
            self.dropout, dtype=self.dtype_policy
        )
        self.drop_path_layer = DropPath(self.drop_path, dtype=self.dtype_policy)
        for layer in (self.norm1, self.norm2, self.mlp):
            layer.build(input_shape)
        self.attention.build(input_shape)

    def call(
        self,
        inputs,
        attention_mask=None,
        is_causal=False,
        position_encoding=None,
        return_attention_scores=False,
        training=None,
        cache=None,
        cache_update_index=None,
    ):
        if self.remat and training and cache is None and not return_attention_scores:
            # Gradient checkpointing: only tensors cross `keras.remat` (Python
            # flags stay in the closure, so jax.checkpoint does not trace them).
            def block(x):
                return self._forward(x, attention_mask, is_causal, position_encoding,
                                     False, training, None, None)

            return keras.remat(block)(inputs)
        return self._forward(inputs, attention_mask, is_causal, position_encoding,
                             return_attention_scores, training, cache, cache_update_index)

    def _forward(self, inputs, attention_mask, is_causal, position_encoding,
                 return_attention_scores, training, cache, cache_update_index):
        # The sublayers through call_sublayer: on PyTorch their `call` runs directly
        # when Layer.__call__ would add only host time (flat_dense.call_sublayer).
        x = inputs
        h = call_sublayer(self.norm1, self, x) if self.norm_first else x
        outputs = call_sublayer(
            self.attention,
            self,
            h,
            attention_mask=attention_mask,
            is_causal=is_causal,
            query_position=position_encoding,
            key_position=position_encoding,
            return_attention_scores=return_attention_scores,
            training=training,
            cache=cache,
            cache_update_index=cache_update_index,
        )
        attn = outputs
        if return_attention_scores or cache is not None:
            attn, *extra = outputs
            scores = extra[0] if return_attention_scores else None
            cache = extra[-1] if cache is not None else None
        if self.dropout:
            attn = self.attention_output_dropout(attn, training=training)
        x = x + self._drop_path(attn, training)
        if not self.norm_first:
            x = call_sublayer(self.norm1, self, x)
        h = call_sublayer(self.norm2, self, x) if self.norm_first else x
        x = x + self._drop_path(call_sublayer(self.mlp, self, h, training=training), training)
        if not self.norm_first:
            x = call_sublayer(self.norm2, self, x)
        outputs = (x,)
        if return_attention_scores:
            outputs += (scores,)
        if cache is not None:
            outputs += (cache,)
        return outputs[0] if len(outputs) == 1 else outputs

    def _drop_path(self, x, training):
        # Rate-0 Dropout and DropPath are identities; not calling them saves PyTorch's
        # eager steps a Layer.__call__ each (a few hundred microseconds of host time).
        return self.drop_path_layer(x, training=training) if self.drop_path else x

    def initial_cache(self, batch_size, max_length, dtype=None):
        """An empty key/value cache for this block's self-attention.

        The zero tensor `(batch_size, 2, max_length, num_heads, head_dim)` of
        `MultiHeadAttention.initial_cache`, which documents the arguments.
        """
        if not self.built:
            raise ValueError("`initial_cache` needs a built block (call or build it first).")
        return self.attention.initial_cache(batch_size, max_length, dtype=dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def compute_output_spec(self, inputs, return_attention_scores=False, cache=None, **kwargs):
        # Symbolic calls (functional models) may ask for the attention
        # probabilities, which the default spec (one tensor) would drop.
        outputs = (keras.KerasTensor(inputs.shape, dtype=self.compute_dtype),)
        if return_attention_scores:
            batch, length = inputs.shape[0], inputs.shape[1]
            outputs += (keras.KerasTensor((batch, self.num_heads, length, length),
                                          dtype="float32"),)
        if cache is not None:
            outputs += (keras.KerasTensor(cache.shape, dtype=cache.dtype),)
        return outputs[0] if len(outputs) == 1 else outputs

    def get_config(self):
        return {
            **super().get_config(),
            "num_heads": self.num_heads,
            "mlp_dim": self.mlp_dim,
            "dropout": self.dropout,
            "attention_dropout": self.attention_dropout,
            "drop_path": self.drop_path,
            "norm_first": self.norm_first,
            "activation": self.activation,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "remat": self.remat,
            "norm": self.norm,
        }


def pre_norm_encoder_blocks(num_layers, num_heads, mlp_dim, name="block_{i}",
                            drop_path_rate=0.0, **kwargs):
    """The pre-LayerNorm blocks of an encoder: ViT's, CLIP's text tower's, Image GPT's.

    Args:
        num_layers: int, the number of blocks.
        num_heads: int, attention heads per block.
        mlp_dim: int, the MLP's hidden width.
        name: the blocks' names, a format with `{i}`.
        drop_path_rate: float, the stochastic depth of the last block; block
            `i` gets `drop_path_rate * i / (num_layers - 1)` (the linear rule).
        **kwargs: the other `TransformerEncoderBlock` arguments, for every block.

    Returns:
        A list of `TransformerEncoderBlock`s with `norm_first=True`.

    Example:
    >>> blocks = pre_norm_encoder_blocks(3, 2, 16, drop_path_rate=0.2)
    >>> [b.name for b in blocks], [round(b.drop_path, 2) for b in blocks]
    (['block_0', 'block_1', 'block_2'], [0.0, 0.1, 0.2])
    """
    return [
        TransformerEncoderBlock(
            num_heads,
            mlp_dim,
            drop_path=drop_path_rate * i / max(num_layers - 1, 1),
            norm_first=True,
            name=name.format(i=i),
            **kwargs,
        )
        for i in range(num_layers)
    ]
