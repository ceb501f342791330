import keras
from keras import ops

from keras_vtx.layers import PositionEmbedding
from keras_vtx.layers.transformer_encoder_block import pre_norm_encoder_blocks
from keras_vtx.models.backbone import Backbone, checked_shape
from keras_vtx.models.token_ids import CheckedTokenIds, check_id_values

# CLIP's byte-level BPE vocabulary: 49406 is <|startoftext|>, 49407 <|endoftext|>.
CLIP_VOCABULARY_SIZE = 49408
CLIP_END_TOKEN_ID = 49407


@keras.saving.register_keras_serializable(package="keras_vtx")
class CLIPTextEncoder(CheckedTokenIds, Backbone):
    """CLIP's text tower: a causal transformer read out at the end-of-text token.

    Token and learned position embeddings feed pre-LayerNorm transformer blocks
    with causal (masked) self-attention and a final LayerNorm (Radford et al.,
    2021, section 2.4; the GPT-2 layout). The sentence feature is the
    activation at the first `<|endoftext|>` token: thanks to the causal mask it
    has seen the whole text and nothing after it, so padding after it (of any
    id) does not change it.

    Args:
        vocabulary_size: int, number of token ids (49408 for CLIP's BPE).
        context_length: int, the longest token sequence (77 in CLIP).
        num_layers: int, number of transformer blocks.
        hidden_dim: int, width.
        num_heads: int.
        mlp_dim: int, the MLP's hidden width.
        dropout: float, dropout after embeddings, attention projection and MLP.
        attention_dropout: float.
        activation: the MLP activation; `"quick_gelu"` as in the released models.
        layer_norm_epsilon: float.
        end_token_id: int, the id whose first occurrence gives the pooled
            feature (49407, `<|endoftext|>`). None takes the position of the
            largest id instead, as the original implementation does
            (`text.argmax(-1)`; the same when the end token is the largest id).
            A sequence without the end token is read out at position 0.
        remat: bool, rematerialise each transformer block in training (gradient
            checkpointing through `keras.remat`; see `ViTBackbone`).
        dtype: dtype or dtype policy of the layers.

    Call arguments:
        token_ids: int tensor `(batch, length)` with `length <= context_length`.

    Returns:
        A dict with `"sequence_output"` `(batch, length, hidden_dim)` after the
        final LayerNorm and `"pooled_output"` `(batch, hidden_dim)`, the feature
        at the end token.

    Example:
    >>> encoder = CLIPTextEncoder(vocabulary_size=100, context_length=8,
    ...     num_layers=1, hidden_dim=16, num_heads=2, mlp_dim=32, end_token_id=99)
    >>> out = encoder(np.array([[98, 5, 6, 99, 0, 0, 0, 0]]))
    >>> tuple(out["sequence_output"].shape), tuple(out["pooled_output"].shape)
    ((1, 8, 16), (1, 16))
    """

    def __init__(
        self,
        vocabulary_size=CLIP_VOCABULARY_SIZE,
        context_length=77,
        num_layers=12,
        hidden_dim=512,
        num_heads=8,
        mlp_dim=2048,
        dropout=0.0,
        attention_dropout=0.0,
        activation="quick_gelu",
        layer_norm_epsilon=1e-5,
        end_token_id=CLIP_END_TOKEN_ID,
        remat=False,
        dtype=None,
        **kwargs,
    ):
        for arg, value in (("vocabulary_size", vocabulary_size),
                           ("context_length", context_length), ("num_layers", num_layers),
                           ("hidden_dim", hidden_dim), ("num_heads", num_heads),
                           ("mlp_dim", mlp_dim)):
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"`{arg}` must be a positive int; received {value!r}.")
        if hidden_dim % num_heads:
            raise ValueError(
                f"`hidden_dim` ({hidden_dim}) must be divisible by `num_heads` ({num_heads})."
            )
        if end_token_id is not None and not 0 <= end_token_id < vocabulary_size:
            raise ValueError(
                f"`end_token_id` must be None or an id below `vocabulary_size` "
                f"({vocabulary_size}); received {end_token_id!r}."
            )

        # === Layers ===
        token_embedding = keras.layers.Embedding(
            vocabulary_size,
            hidden_dim,
            embeddings_initializer=keras.initializers.RandomNormal(stddev=0.02),
            dtype=dtype,
            name="token_embedding",
        )
        position_embedding = PositionEmbedding(
            context_length,
            initializer=keras.initializers.RandomNormal(stddev=0.01),
            dtype=dtype,
            name="position_embedding",
        )
        embedding_dropout = keras.layers.Dropout(dropout, dtype=dtype, name="embedding_dropout")
        blocks = pre_norm_encoder_blocks(
            num_layers, num_heads, mlp_dim, dropout=dropout,
            attention_dropout=attention_dropout, activation=activation,
            layer_norm_epsilon=layer_norm_epsilon, remat=remat, dtype=dtype,
        )
        final_norm = keras.layers.LayerNormalization(
            epsilon=layer_norm_epsilon, dtype=dtype, name="final_norm"
        )

        # === Graph ===
        # Any length up to the context: the position table's first rows are used.
        token_ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
        x = position_embedding(token_embedding(token_ids))
        x = embedding_dropout(x)
        for block in blocks:
            x = block(x, is_causal=True)
        sequence_output = final_norm(x)
        if end_token_id is None:
            end_index = ops.argmax(token_ids, axis=-1)
        else:
            end_index = ops.argmax(ops.cast(ops.equal(token_ids, end_token_id), "int32"), axis=-1)
        end_index = ops.cast(end_index, "int32")[:, None, None]
        pooled = ops.take_along_axis(sequence_output, end_index, axis=1)[:, 0]
        outputs = {"sequence_output": sequence_output, "pooled_output": pooled}
        super().__init__(inputs=token_ids, outputs=outputs, dtype=dtype, **kwargs)

        # === Config ===
        self.vocabulary_size = vocabulary_size
        self.context_length = context_length
        self.num_layers = num_layers
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.mlp_dim = mlp_dim
        self.dropout = dropout
        self.attention_dropout = attention_dropout
        self.activation = activation
        self.layer_norm_epsilon = layer_norm_epsilon
        self.end_token_id = end_token_id
        self.remat = bool(remat)

    def validate_inputs(self, inputs):
        shape = checked_shape(inputs, "token_ids", ("batch", "length"),
                              f"(batch, length <= {self.context_length}) of ints")
        if shape[1] is not None and shape[1] > self.context_length:
            raise ValueError(
                f"`token_ids` has length {shape[1]}, longer than the model's context "
                f"(`context_length`={self.context_length}); tokenize with "
                f"`sequence_length={self.context_length}` (received shape {shape})."
            )
        dtype = keras.backend.standardize_dtype(inputs.dtype)
        if "int" not in dtype:
            raise TypeError(f"`token_ids` must be integers; received dtype {dtype}.")
        (_, name, high, what), = self.token_id_checks()
        check_id_values(inputs, name, high, what)

    def token_id_checks(self):
        return [(None, "token_ids", self.vocabulary_size, "token ids of the vocabulary")]

    def adapt_weight(self, variable, value, source):
        # A shorter context keeps the first rows of the position table.
        if variable.path.endswith("position_embedding/embeddings") and (
            value.shape[0] > variable.shape[0] and value.shape[1:] == tuple(variable.shape[1:])
        ):
            return value[: variable.shape[0]]
        return super().adapt_weight(variable, value, source)

    def get_config(self):
        return self.base_config(
            vocabulary_size=self.vocabulary_size,
            context_length=self.context_length,
            num_layers=self.num_layers,
            hidden_dim=self.hidden_dim,
            num_heads=self.num_heads,
            mlp_dim=self.mlp_dim,
            dropout=self.dropout,
            attention_dropout=self.attention_dropout,
            activation=self.activation,
            layer_norm_epsilon=self.layer_norm_epsilon,
            end_token_id=self.end_token_id,
            remat=self.remat,
        )
