import keras
from keras import ops

from keras_vtx.layers import (
    ClassToken,
    MultiHeadAttentionPooling,
    PatchEmbedding,
    PositionEmbedding,
    ResNetStem,
    SineCosine2DInitializer,
    resample_position_embeddings,
)
from keras_vtx.layers.transformer_encoder_block import pre_norm_encoder_blocks
from keras_vtx.models.backbone import Backbone, checked_shape

POOLINGS = ("token", "gap", "map")
POSITION_EMBEDDING_INITS = ("normal", "sincos2d")


def _pair(value, name):
    if isinstance(value, int):
        value = (value, value)
    value = tuple(int(v) for v in value)
    if len(value) != 2 or min(value) <= 0:
        raise ValueError(f"`{name}` must be an int or a pair of positive ints; received {value}.")
    return value


@keras.saving.register_keras_serializable(package="keras_vtx")
class ViTBackbone(Backbone):
    """The Vision Transformer encoder (Dosovitskiy et al., ICLR 2021).

    Images are cut into patches, embedded linearly, prefixed with a learned
    class token, given learned 1-D position embeddings, and encoded by
    pre-LayerNorm transformer blocks followed by a final LayerNorm. The hybrid
    form first runs a ResNet stem and patchifies its feature map.

    Args:
        image_size: int or `(height, width)`.
        patch_size: int or `(ph, pw)`; on the stem's feature map for hybrids
            (the paper's hybrids use 1).
        num_layers: int, number of transformer blocks.
        hidden_dim: int, width D.
        num_heads: int.
        mlp_dim: int, the MLP's hidden width.
        num_channels: int, image channels.
        dropout: float, dropout after embeddings, attention projection and MLP.
        attention_dropout: float.
        drop_path_rate: float, stochastic depth of the last block (linearly
            increasing from 0 over the depth).
        pooling: `"token"` (class token), `"gap"` (mean of patch tokens) or
            `"map"` (multihead attention pooling).
        class_token: bool, prepend a class token (needed by `"token"` pooling).
        representation_size: int or None, an optional pre-logits layer
            (dense + tanh) after pooling.
        hybrid_stem_depths: None, or the blocks per stage of a ResNet stem
            (`(3, 4, 9)` for the paper's R50 hybrids).
        hybrid_stem_width: int, the stem's width.
        pre_norm: bool, a LayerNorm before the encoder (CLIP's image tower).
        patch_bias: bool, whether the patch embedding has a bias (CLIP's has
            none).
        layer_norm_epsilon: float.
        activation: the MLP activation (`"gelu"`, `"quick_gelu"`, ...).
        return_hidden_states: bool, also output every block's output.
        return_attention_scores: bool, also output every block's attention
            probabilities (for `keras_vtx.analysis`); they are computed
            explicitly instead of by the fused attention kernel, so leave
            this off for training.
        remat: bool, rematerialise each transformer block in training (gradient
            checkpointing through `keras.remat`): the backward pass
            recomputes a block's activations instead of keeping them, about
            a third more compute for activation memory of one block instead of
            all, which lets large variants (ViT-L/H) train with bigger batches.
        position_embedding_init: how the learned position embeddings start:
            `"normal"` (the paper's, standard deviation 0.02) or `"sincos2d"`
            (a 2-D sine-cosine table, `keras_vtx.layers.SineCosine2DInitializer`,
            with which masked patch prediction on small data finds local
            heads sooner; docs/vit.md). A checkpoint's values replace either.
        dtype: dtype or dtype policy of the layers.

    Call arguments:
        images: float tensor `(batch, height, width, num_channels)`, already
            normalised.

    Returns:
        A dict with `"sequence_output"` `(batch, tokens, D)` after the final
        LayerNorm (class token first when present), `"pooled_output"`
        `(batch, D or representation_size)`, and with `return_hidden_states`,
        `"hidden_states"`: the embeddings and each block's output, and with
        `return_attention_scores`, `"attention_scores"`: one
        `(batch, num_heads, tokens, tokens)` tensor per block (rows are
        queries, class token first).

    Example:
    >>> model = ViTBackbone(image_size=32, patch_size=8, num_layers=2,
    ...                     hidden_dim=16, num_heads=2, mlp_dim=32)
    >>> out = model(keras.ops.zeros((1, 32, 32, 3)))
    >>> tuple(out["sequence_output"].shape), tuple(out["pooled_output"].shape)
    ((1, 17, 16), (1, 16))
    """

    def __init__(
        self,
        image_size=224,
        patch_size=16,
        num_layers=12,
        hidden_dim=768,
        num_heads=12,
        mlp_dim=3072,
        num_channels=3,
        dropout=0.0,
        attention_dropout=0.0,
        drop_path_rate=0.0,
        pooling="token",
        class_token=True,
        representation_size=None,
        hybrid_stem_depths=None,
        hybrid_stem_width=64,
        pre_norm=False,
        patch_bias=True,
        layer_norm_epsilon=1e-6,
        activation="gelu",
        return_hidden_states=False,
        return_attention_scores=False,
        remat=False,
        position_embedding_init="normal",
        dtype=None,
        **kwargs,
    ):
        image_size = _pair(image_size, "image_size")
        if position_embedding_init not in POSITION_EMBEDDING_INITS:
            raise ValueError(
                f"`position_embedding_init` must be one of {POSITION_EMBEDDING_INITS}; "
                f"received {position_embedding_init!r}."
            )
        patch_size = _pair(patch_size, "patch_size")
        if pooling not in POOLINGS:
            raise ValueError(f"`pooling` must be one of {POOLINGS}; received {pooling!r}.")
        if pooling == "token" and not class_token:
            raise ValueError("`pooling='token'` needs `class_token=True`.")
        if hidden_dim % num_heads:
            raise ValueError(
                f"`hidden_dim` ({hidden_dim}) must be divisible by `num_heads` ({num_heads})."
            )
        stride = 1
        if hybrid_stem_depths:
            stride = 2 ** (len(hybrid_stem_depths) + 1)
        step = (patch_size[0] * stride, patch_size[1] * stride)
        if image_size[0] % step[0] or image_size[1] % step[1]:
            raise ValueError(
                f"`image_size` {image_size} must be divisible by the patch size {patch_size}"
                + (f" times the stem stride {stride}" if stride > 1 else "")
                + f", i.e. by {step}."
            )
        grid = (image_size[0] // step[0], image_size[1] // step[1])
        num_prefix = 1 if class_token else 0

        # === Layers ===
        stem = None
        if hybrid_stem_depths:
            stem = ResNetStem(
                hybrid_stem_depths, hybrid_stem_width, dtype=dtype, name="hybrid_stem"
            )
        patch_embedding = PatchEmbedding(
            hidden_dim, patch_size, use_bias=patch_bias, dtype=dtype, name="patch_embedding"
        )
        cls_token = ClassToken(dtype=dtype, name="class_token") if class_token else None
        position_embedding = PositionEmbedding(
            num_prefix + grid[0] * grid[1],
            initializer=(SineCosine2DInitializer(grid, num_prefix)
                         if position_embedding_init == "sincos2d" else None),
            dtype=dtype, name="position_embedding",
        )
        embedding_dropout = keras.layers.Dropout(dropout, dtype=dtype, name="embedding_dropout")
        pre_layer_norm = None
        if pre_norm:
            pre_layer_norm = keras.layers.LayerNormalization(
                epsilon=layer_norm_epsilon, dtype=dtype, name="pre_norm"
            )
        blocks = pre_norm_encoder_blocks(
            num_layers, num_heads, mlp_dim, drop_path_rate=drop_path_rate, dropout=dropout,
            attention_dropout=attention_dropout, activation=activation,
            layer_norm_epsilon=layer_norm_epsilon, remat=remat, dtype=dtype,
        )
        final_norm = keras.layers.LayerNormalization(
            epsilon=layer_norm_epsilon, dtype=dtype, name="final_norm"
        )

        # === Graph ===
        images = keras.Input(shape=image_size + (num_channels,), name="images")
        x = stem(images) if stem is not None else images
        x = patch_embedding(x)
        if cls_token is not None:
            x = cls_token(x)
        x = position_embedding(x)
        x = embedding_dropout(x)
        if pre_layer_norm is not None:
            x = pre_layer_norm(x)
        hidden_states = [x]
        attention_scores = []
        for block in blocks:
            if return_attention_scores:
                x, scores = block(x, return_attention_scores=True)
                attention_scores.append(scores)
            else:
                x = block(x)
            hidden_states.append(x)
        sequence_output = final_norm(x)
        if pooling == "token":
            pooled = sequence_output[:, 0]
        elif pooling == "gap":
            pooled = ops.mean(sequence_output[:, num_prefix:], axis=1)
        else:
            pooled = MultiHeadAttentionPooling(
                num_heads, mlp_dim, layer_norm_epsilon, activation, dtype=dtype, name="map_head"
            )(sequence_output)
        if representation_size:
            pooled = keras.layers.Dense(
                representation_size, activation="tanh", dtype=dtype, name="pre_logits"
            )(pooled)
        outputs = {"sequence_output": sequence_output, "pooled_output": pooled}
        if return_hidden_states:
            outputs["hidden_states"] = hidden_states
        if return_attention_scores:
            outputs["attention_scores"] = attention_scores
        super().__init__(inputs=images, outputs=outputs, dtype=dtype, **kwargs)

        # === Config ===
        self.image_size = image_size
        self.patch_size = patch_size
        self.num_layers = num_layers
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.mlp_dim = mlp_dim
        self.num_channels = num_channels
        self.dropout = dropout
        self.attention_dropout = attention_dropout
        self.drop_path_rate = drop_path_rate
        self.pooling = pooling
        self.class_token = class_token
        self.representation_size = representation_size
        self.hybrid_stem_depths = tuple(hybrid_stem_depths) if hybrid_stem_depths else None
        self.hybrid_stem_width = hybrid_stem_width
        self.pre_norm = pre_norm
        self.patch_bias = patch_bias
        self.layer_norm_epsilon = layer_norm_epsilon
        self.activation = activation
        self.return_hidden_states = return_hidden_states
        self.return_attention_scores = return_attention_scores
        self.remat = remat
        self.position_embedding_init = position_embedding_init
        self.grid_size = grid
        self.num_prefix_tokens = num_prefix

    def validate_inputs(self, inputs):
        shape = checked_shape(
            inputs, "images", ("batch", "height", "width", "channels"),
            f"(batch, {self.image_size[0]}, {self.image_size[1]}, {self.num_channels})")
        if shape[-1] is not None and shape[-1] != self.num_channels:
            raise ValueError(
                f"`images` must have {self.num_channels} channels (last axis, NHWC); "
                f"received shape {shape}."
            )
        if None not in shape[1:3] and tuple(shape[1:3]) != self.image_size:
            raise ValueError(
                f"`images` must be {self.image_size[0]}x{self.image_size[1]} for this model; "
                f"received shape {shape}. Build the model with another `image_size` "
                "(`from_preset(..., image_size=...)` resamples the position embeddings)."
            )

    def adapt_weight(self, variable, value, source):
        if variable.path.endswith("position_embedding/embeddings") and value.ndim == 2:
            return resample_position_embeddings(
                value, source.grid_size, self.grid_size, self.num_prefix_tokens
            )
        return super().adapt_weight(variable, value, source)

    def get_config(self):
        return self.base_config(
            image_size=self.image_size,
            patch_size=self.patch_size,
            num_layers=self.num_layers,
            hidden_dim=self.hidden_dim,
            num_heads=self.num_heads,
            mlp_dim=self.mlp_dim,
            num_channels=self.num_channels,
            dropout=self.dropout,
            attention_dropout=self.attention_dropout,
            drop_path_rate=self.drop_path_rate,
            pooling=self.pooling,
            class_token=self.class_token,
            representation_size=self.representation_size,
            hybrid_stem_depths=self.hybrid_stem_depths,
            hybrid_stem_width=self.hybrid_stem_width,
            pre_norm=self.pre_norm,
            patch_bias=self.patch_bias,
            layer_norm_epsilon=self.layer_norm_epsilon,
            activation=self.activation,
            return_hidden_states=self.return_hidden_states,
            return_attention_scores=self.return_attention_scores,
            remat=self.remat,
            position_embedding_init=self.position_embedding_init,
        )
