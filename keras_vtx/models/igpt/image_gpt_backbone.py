import keras
import numpy as np
from keras import ops

from keras_vtx.layers.transformer_encoder_block import pre_norm_encoder_blocks
from keras_vtx.models.backbone import Backbone
from keras_vtx.models.igpt import image_gpt_presets  # noqa: F401  (registers the presets)
from keras_vtx.models.token_ids import CheckedTokenIds, check_token_ids

# GPT-2's initialisation, kept by Image GPT (transformers' `initializer_range`).
INITIALIZER_RANGE = 0.02


@keras.saving.register_keras_serializable(package="keras_vtx", name="ImageGPTPositionIds")
class _PositionIds(keras.layers.Layer):
    """Positions `0..L-1` of a `(batch, L)` id tensor, for the learned position embedding."""

    def call(self, token_ids):
        length = ops.shape(token_ids)[1]
        return ops.expand_dims(ops.arange(length, dtype="int32"), 0)

    def compute_output_shape(self, input_shape):
        return (1, input_shape[1])


@keras.saving.register_keras_serializable(package="keras_vtx")
class ImageGPTBackbone(CheckedTokenIds, Backbone):
    """The Image GPT transformer (Chen et al. 2020, "Generative Pretraining from Pixels").

    A GPT-2-style decoder over sequences of token ids: learned token and
    position embeddings, pre-norm transformer blocks and a final norm. The
    norms are RMS-style (no mean subtraction, no bias) and the MLP activation
    is `x * sigmoid(1.702 x)`, as in the released checkpoints (transformers'
    `ImageGPTLayerNorm` and `quick_gelu`). No 2-D structure is given to the
    model: an image is its pixels' palette ids in raster order.

    Args:
        vocabulary_size: int, palette size plus one: the last id is the
            special token (start of sequence, or [MASK] for BERT).
        sequence_length: int, the longest sequence (image side squared).
        hidden_dim: int, the width.
        num_layers: int, number of blocks.
        num_heads: int, attention heads.
        mlp_dim: int or None, the MLP's hidden width (default 4 * hidden_dim).
        dropout: float, dropout on embeddings, attention output and MLP.
        attention_dropout: float, dropout on attention probabilities.
        layer_norm_epsilon: float.
        causal: bool, causal self-attention (autoregressive objective); False
            for the bidirectional BERT objective.
        remat: bool, rematerialise each transformer block in training (gradient
            checkpointing through `keras.remat`): the backward pass recomputes
            a block's activations instead of keeping them, about one more
            forward pass of compute for the activation memory of one block
            instead of all (iGPT-L and iGPT-XL were trained this way).
            Outputs, gradients, inference and sampling are unchanged.
        dtype: dtype or dtype policy; the norms run in float32 under mixed
            precision.

    Call arguments:
        token_ids: int tensor `(batch, length)`, `length <= sequence_length`,
            ids in `[0, vocabulary_size)`.

    Returns:
        The final-normed hidden states `(batch, length, hidden_dim)`.

    Example:
    >>> model = ImageGPTBackbone(vocabulary_size=17, sequence_length=16,
    ...                          hidden_dim=8, num_layers=2, num_heads=2)
    >>> tuple(model(np.zeros((2, 16), "int32")).shape)
    (2, 16, 8)
    """

    def __init__(
        self,
        vocabulary_size=513,
        sequence_length=1024,
        hidden_dim=512,
        num_layers=24,
        num_heads=8,
        mlp_dim=None,
        dropout=0.0,
        attention_dropout=0.0,
        layer_norm_epsilon=1e-5,
        causal=True,
        remat=False,
        dtype=None,
        **kwargs,
    ):
        for name, value in (("vocabulary_size", vocabulary_size),
                            ("sequence_length", sequence_length), ("hidden_dim", hidden_dim),
                            ("num_layers", num_layers), ("num_heads", num_heads)):
            if not isinstance(value, (int, np.integer)) or value <= 0:
                raise ValueError(f"`{name}` must be a positive int; received {value!r}.")
        if vocabulary_size < 2:
            raise ValueError(
                "`vocabulary_size` must be at least 2 (one colour and the special token); "
                f"received {vocabulary_size}."
            )
        if hidden_dim % num_heads:
            raise ValueError(
                f"`hidden_dim` ({hidden_dim}) must be divisible by `num_heads` ({num_heads})."
            )
        mlp_dim = 4 * hidden_dim if mlp_dim is None else int(mlp_dim)
        init = keras.initializers.RandomNormal(stddev=INITIALIZER_RANGE)

        # === Layers ===
        token_embedding = keras.layers.Embedding(
            vocabulary_size, hidden_dim, embeddings_initializer=init, dtype=dtype,
            name="token_embedding",
        )
        position_embedding = keras.layers.Embedding(
            sequence_length, hidden_dim, embeddings_initializer=init, dtype=dtype,
            name="position_embedding",
        )
        embedding_dropout = keras.layers.Dropout(dropout, dtype=dtype, name="embedding_dropout")
        transformer_layers = pre_norm_encoder_blocks(
            num_layers, num_heads, mlp_dim, name="transformer_layer_{i}", dropout=dropout,
            attention_dropout=attention_dropout, activation="quick_gelu",
            layer_norm_epsilon=layer_norm_epsilon,
            kernel_initializer=keras.initializers.serialize(init), norm="rms_norm",
            remat=remat, dtype=dtype,
        )
        policy = keras.dtype_policies.get(dtype) if dtype is not None else (
            keras.config.dtype_policy()
        )
        mixed = policy.compute_dtype in ("float16", "bfloat16")
        # Float32 statistics under mixed precision (Keras' RMSNormalization does
        # not upcast by itself), as in TransformerEncoderBlock.
        final_norm = keras.layers.RMSNormalization(
            epsilon=layer_norm_epsilon, dtype="float32" if mixed else dtype, name="final_norm"
        )

        # === Graph ===
        token_ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
        positions = _PositionIds(name="position_ids")(token_ids)
        x = token_embedding(token_ids) + position_embedding(positions)
        x = embedding_dropout(x)
        for block in transformer_layers:
            x = block(x, is_causal=causal)
        outputs = final_norm(x)
        super().__init__(inputs=token_ids, outputs=outputs, dtype=dtype, **kwargs)

        # === Config ===
        self.vocabulary_size = int(vocabulary_size)
        self.sequence_length = int(sequence_length)
        self.hidden_dim = int(hidden_dim)
        self.num_layers = int(num_layers)
        self.num_heads = int(num_heads)
        self.mlp_dim = mlp_dim
        self.dropout = dropout
        self.attention_dropout = attention_dropout
        self.layer_norm_epsilon = layer_norm_epsilon
        self.causal = bool(causal)
        self.remat = bool(remat)
        self.token_embedding = token_embedding
        self.position_embedding = position_embedding
        self.embedding_dropout = embedding_dropout
        self.transformer_layers = transformer_layers
        self.final_norm = final_norm

    def validate_inputs(self, inputs):
        (_, name, high, what), = self.token_id_checks()
        check_token_ids(inputs, name, self.sequence_length, high, what)

    def token_id_checks(self):
        return [(None, "token_ids", self.vocabulary_size,
                 "token ids (palette ids and the special token)")]

    def get_config(self):
        return self.base_config(
            vocabulary_size=self.vocabulary_size,
            sequence_length=self.sequence_length,
            hidden_dim=self.hidden_dim,
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            mlp_dim=self.mlp_dim,
            dropout=self.dropout,
            attention_dropout=self.attention_dropout,
            layer_norm_epsilon=self.layer_norm_epsilon,
            causal=self.causal,
            remat=self.remat,
        )
