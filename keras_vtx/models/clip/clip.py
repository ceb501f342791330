import math

import keras
from keras import ops

from keras_vtx.constants import CLIP_MEAN, CLIP_STD
from keras_vtx.layers import ImageNormalization
from keras_vtx.losses import CLIPLoss
from keras_vtx.models.clip.clip_text_encoder import CLIPTextEncoder
from keras_vtx.models.task import OptimizerBuiltBeforeFit, TaskPresets
from keras_vtx.models.token_ids import CheckedTokenIds
from keras_vtx.models.training_defaults import adamw, no_decay_variables
from keras_vtx.models.vit import ViTBackbone
from keras_vtx.ops.normalize import l2_normalize

# CLIP's addition to the no-decay rule (keras_vtx.models.training_defaults).
NO_DECAY_NAMES = ("class_token",)

# The released models' preprocessing (pixels in [0, 1]), from the reference
# implementation's image transform.
# Section 2.5: the temperature starts at 0.07 and is clipped so that the logits
# are never scaled by more than 100.
LOGIT_SCALE_INIT = math.log(1 / 0.07)
LOGIT_SCALE_MAX = math.log(100.0)


@keras.saving.register_keras_serializable(package="keras_vtx")
class MaxValue(keras.constraints.Constraint):
    """Clips a variable to at most `max_value` after every optimizer update.

    Args:
        max_value: float.

    Example:
    >>> float(MaxValue(1.0)(keras.ops.convert_to_tensor(3.0)))
    1.0
    """

    def __init__(self, max_value):
        self.max_value = float(max_value)

    def __call__(self, w):
        return ops.minimum(w, ops.cast(self.max_value, w.dtype))

    def get_config(self):
        return {"max_value": self.max_value}


@keras.saving.register_keras_serializable(package="keras_vtx")
class CLIP(CheckedTokenIds, OptimizerBuiltBeforeFit, TaskPresets, keras.Model):
    """Contrastive Language-Image Pre-training (Radford et al., ICML 2021).

    An image encoder (a `ViTBackbone` configured as CLIP's: a LayerNorm before
    the encoder, class-token pooling after the final LayerNorm, quick GELU)
    and a `CLIPTextEncoder` are projected linearly (`W_i`, `W_t`, no bias)
    into a joint space and L2-normalised; `logits_per_image[i, j]` is
    `exp(logit_scale) * <image_i, text_j>`, with the learned log temperature
    `logit_scale` initialised at ln(1 / 0.07) and clipped at ln(100)
    (section 2.5). Embeddings, logits and the scale are float32 under mixed
    precision. `fit()` trains on batches `{"images", "token_ids"}` without
    labels with `keras_vtx.losses.CLIPLoss` (the symmetric cross-entropy over
    the batch's pairs).

    Args:
        image_encoder: a `ViTBackbone`.
        text_encoder: a `CLIPTextEncoder`.
        projection_dim: int, width of the joint embedding space.
        include_preprocessing: bool; if True the model takes raw pixels in
            [0, 255] and normalises them with `mean`/`std`.
        mean: per-channel mean of the normalisation (after scaling to [0, 1]).
        std: per-channel std of the normalisation.
        logit_scale_init: float, the initial log temperature.
        logit_scale_max: float, the largest value of `logit_scale`: applied in
            the forward pass and, as a constraint, to the variable after every
            optimizer step.
        normalize_epsilon: float, guards the L2 normalisation of an all-zero
            embedding: shorter embeddings are divided by it and pass no
            gradient back (`keras_vtx.ops.l2_normalize`).
        dtype: dtype or dtype policy of the encoders; embeddings and logits
            are always float32.

    Call arguments:
        inputs: a dict with `"images"`, `(batch, height, width, channels)`
            (raw pixels if `include_preprocessing`, else normalised) and
            `"token_ids"`, int `(texts, length <= context_length)`. The
            numbers of images and texts may differ.
        training: bool.

    Returns:
        A dict with `"image_embeddings"` `(batch, projection_dim)` and
        `"text_embeddings"` `(texts, projection_dim)`, both L2-normalised,
        `"logits_per_image"` `(batch, texts)`, `"logits_per_text"`
        `(texts, batch)` and `"logit_scale"` (the clipped log scale, a
        scalar), all float32. `predict()` returns the two embeddings only.

    Example:
    >>> image_encoder = ViTBackbone(image_size=16, patch_size=8, num_layers=1,
    ...     hidden_dim=16, num_heads=2, mlp_dim=32, pre_norm=True,
    ...     patch_bias=False, activation="quick_gelu", layer_norm_epsilon=1e-5)
    >>> text_encoder = CLIPTextEncoder(vocabulary_size=100, context_length=8,
    ...     num_layers=1, hidden_dim=16, num_heads=2, mlp_dim=32, end_token_id=99)
    >>> model = CLIP(image_encoder, text_encoder, projection_dim=8)
    >>> out = model({"images": np.zeros((2, 16, 16, 3), "float32"),
    ...              "token_ids": np.array([[98, 7, 99, 0]] * 3)})
    >>> tuple(out["logits_per_image"].shape), tuple(out["text_embeddings"].shape)
    ((2, 3), (3, 8))
    >>> tuple(model.encode_images(np.zeros((1, 16, 16, 3), "float32")).shape)
    (1, 8)
    """

    def __init__(
        self,
        image_encoder,
        text_encoder,
        projection_dim=512,
        include_preprocessing=True,
        mean=CLIP_MEAN,
        std=CLIP_STD,
        logit_scale_init=LOGIT_SCALE_INIT,
        logit_scale_max=LOGIT_SCALE_MAX,
        normalize_epsilon=1e-6,
        dtype=None,
        **kwargs,
    ):
        if not isinstance(image_encoder, ViTBackbone):
            raise TypeError(
                f"`image_encoder` must be a ViTBackbone; received {type(image_encoder).__name__}."
            )
        if not isinstance(text_encoder, CLIPTextEncoder):
            raise TypeError(
                f"`text_encoder` must be a CLIPTextEncoder; received "
                f"{type(text_encoder).__name__}."
            )
        if not isinstance(projection_dim, int) or projection_dim <= 0:
            raise ValueError(
                f"`projection_dim` must be a positive int; received {projection_dim!r}."
            )
        if float(logit_scale_init) > float(logit_scale_max):
            raise ValueError(
                f"`logit_scale_init` ({logit_scale_init}) must not exceed `logit_scale_max` "
                f"({logit_scale_max})."
            )
        super().__init__(dtype=dtype, **kwargs)
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.preprocessing = None
        if include_preprocessing:
            self.preprocessing = ImageNormalization(
                1 / 255.0, mean, std, dtype=dtype, name="preprocessing"
            )
            # Built with the rest (no weights; checks the channels): an unbuilt layer
            # makes Keras rebuild the model symbolically before every fit/evaluate.
            self.preprocessing.build((None, None, None, image_encoder.num_channels))
        image_width = image_encoder.representation_size or image_encoder.hidden_dim
        # float32 projections: everything from the pooled features on (projection,
        # normalisation, logits, loss) runs in float32 under mixed precision.
        self.image_projection = keras.layers.Dense(
            projection_dim, use_bias=False, dtype="float32", name="image_projection",
            kernel_initializer=keras.initializers.RandomNormal(stddev=image_width**-0.5),
        )
        self.text_projection = keras.layers.Dense(
            projection_dim, use_bias=False, dtype="float32", name="text_projection",
            kernel_initializer=keras.initializers.RandomNormal(
                stddev=text_encoder.hidden_dim**-0.5
            ),
        )
        self.image_projection.build((None, image_width))
        self.text_projection.build((None, text_encoder.hidden_dim))
        # autocast=False: the scale stays float32 inside mixed-precision calls.
        self.logit_scale = self.add_weight(
            shape=(),
            initializer=keras.initializers.Constant(float(logit_scale_init)),
            constraint=MaxValue(logit_scale_max),
            dtype="float32",
            autocast=False,
            name="logit_scale",
        )
        self.built = True

        self.projection_dim = projection_dim
        self.include_preprocessing = include_preprocessing
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.logit_scale_init = float(logit_scale_init)
        self.logit_scale_max = float(logit_scale_max)
        self.normalize_epsilon = float(normalize_epsilon)

    # --- Forward pass ---

    def _normalize(self, x):
        return l2_normalize(ops.cast(x, "float32"), axis=-1, epsilon=self.normalize_epsilon)

    def _image_embeddings(self, images, training=None):
        x = self.preprocessing(images) if self.preprocessing is not None else images
        pooled = self.image_encoder(x, training=training)["pooled_output"]
        return self._normalize(self.image_projection(pooled))

    def _text_embeddings(self, token_ids, training=None):
        pooled = self.text_encoder(token_ids, training=training)["pooled_output"]
        return self._normalize(self.text_projection(pooled))

    def clipped_logit_scale(self):
        """The log scale used in the logits: `logit_scale` clipped at `logit_scale_max`."""
        return ops.minimum(ops.convert_to_tensor(self.logit_scale), self.logit_scale_max)

    def token_id_checks(self):
        """The token ids of `fit`/`evaluate`/`predict` data: `x["token_ids"]`."""
        return [("token_ids", "token_ids", self.text_encoder.vocabulary_size,
                 "token ids of the vocabulary")]

    def call(self, inputs, training=None):
        images, token_ids = self._split_inputs(inputs)
        image_embeddings = self._image_embeddings(images, training)
        text_embeddings = self._text_embeddings(token_ids, training)
        logit_scale = self.clipped_logit_scale()
        logits_per_image = ops.exp(logit_scale) * ops.matmul(
            image_embeddings, ops.transpose(text_embeddings)
        )
        return {
            "image_embeddings": image_embeddings,
            "text_embeddings": text_embeddings,
            "logits_per_image": logits_per_image,
            "logits_per_text": ops.transpose(logits_per_image),
            "logit_scale": logit_scale,
        }

    def encode_images(self, images, training=False):
        """L2-normalised image embeddings `(batch, projection_dim)`, float32.

        Args:
            images: `(batch, height, width, channels)`, raw pixels if
                `include_preprocessing`, else normalised (a NumPy array works).
            training: bool.
        """
        images = ops.convert_to_tensor(images)
        self._check_images(images)
        return self._image_embeddings(images, training)

    def encode_text(self, token_ids, training=False):
        """L2-normalised text embeddings `(texts, projection_dim)`, float32.

        Args:
            token_ids: int `(texts, length <= context_length)` (a NumPy array works).
            training: bool.
        """
        return self._text_embeddings(ops.convert_to_tensor(token_ids), training)

    def _split_inputs(self, inputs):
        if not isinstance(inputs, dict) or not {"images", "token_ids"} <= set(inputs):
            keys = sorted(inputs) if isinstance(inputs, dict) else type(inputs).__name__
            raise ValueError(
                "`inputs` must be a dict with 'images' (batch, height, width, channels) "
                f"and 'token_ids' (texts, length); received {keys}."
            )
        self._check_images(inputs["images"])
        return inputs["images"], inputs["token_ids"]

    def _check_images(self, images):
        # The encoder checks shapes too, but after the preprocessing layer, which
        # would fail first on a wrong channel count with a less useful message.
        self.image_encoder.validate_inputs(images)

    # --- Training ---

    def compile(
        self,
        optimizer="auto",
        loss="auto",
        metrics=None,
        learning_rate=5e-4,
        weight_decay=0.2,
        warmup_steps=2000,
        total_steps=100_000,
        beta_1=0.9,
        beta_2=0.98,
        epsilon=1e-6,
        global_clipnorm=None,
        label_smoothing=0.0,
        **kwargs,
    ):
        """Compiles with CLIP's training defaults; every `"auto"` can be replaced.

        Args:
            optimizer: `"auto"` is AdamW (section 2.5; beta_2 0.98 and epsilon
                1e-6 as for the ViT models, table 20) with `learning_rate`
                reached after a linear warm-up of `warmup_steps`, then cosine
                decay to 0 at `total_steps`, and decoupled `weight_decay` on
                every weight except gains, biases, the class token and
                `logit_scale`; optional global gradient clipping.
            loss: `"auto"` is `keras_vtx.losses.CLIPLoss(label_smoothing)`; a
                loss with a `from_embeddings(image_embeddings, text_embeddings,
                logit_scale)` method is called that way, any other Keras loss
                as `loss(None, logits_per_image)`.
            metrics: passed to `keras.Model.compile`.
            **kwargs: passed to `keras.Model.compile` (for example `jit_compile`).
        """
        if optimizer == "auto":
            optimizer = adamw(self, learning_rate, total_steps, warmup_steps, weight_decay,
                              NO_DECAY_NAMES, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon,
                              global_clipnorm=global_clipnorm)
        if loss == "auto":
            loss = CLIPLoss(label_smoothing=label_smoothing)
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)

    def no_decay_variables(self):
        """Variables without weight decay: gains, biases, the class token, `logit_scale`."""
        return no_decay_variables(self, NO_DECAY_NAMES)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        loss_fn = self.loss
        if loss_fn is None:
            return super().compute_loss(x, y, y_pred, sample_weight, training=training)
        images, texts = _check_same_batch(y_pred["image_embeddings"], y_pred["text_embeddings"])
        if hasattr(loss_fn, "from_embeddings"):
            loss = loss_fn.from_embeddings(images, texts, y_pred["logit_scale"])
        else:
            loss = loss_fn(y, y_pred["logits_per_image"], sample_weight)
        for extra in self.losses:
            loss = loss + ops.cast(ops.sum(extra), "float32")
        return loss

    def predict_step(self, *args, **kwargs):
        # The logits' column count and the scalar scale cannot be concatenated
        # across batches: predict() gives the embeddings. JAX's step is stateless,
        # `(state, data) -> (outputs, state)`, the others' `data -> outputs`.
        result = super().predict_step(*args, **kwargs)
        keep = ("image_embeddings", "text_embeddings")
        if keras.backend.backend() == "jax":
            outputs, state = result
            return {k: outputs[k] for k in keep}, state
        return {k: result[k] for k in keep}

    # --- Presets and serialisation ---

    # `from_preset` (from `TaskPresets`): CLIP's own arguments go to CLIP,
    # `image_encoder_config={...}` / `text_encoder_config={...}` (or the same dicts
    # as `image_encoder=` / `text_encoder=`) to one tower, and `remat=True` to both.
    shared_backbone_arguments = ("remat",)

    @classmethod
    def preset_backbones(cls):
        return {"image_encoder": ViTBackbone, "text_encoder": CLIPTextEncoder}

    def _finish_rebuild(self, source):
        # A lower `logit_scale_max` clips the trained temperature.
        self.logit_scale.assign(ops.minimum(source.logit_scale.value, self.logit_scale_max))

    def get_config(self):
        return self.base_config(
            projection_dim=self.projection_dim,
            include_preprocessing=self.include_preprocessing,
            mean=self.mean,
            std=self.std,
            logit_scale_init=self.logit_scale_init,
            logit_scale_max=self.logit_scale_max,
            normalize_epsilon=self.normalize_epsilon,
        )


def _check_same_batch(image_embeddings, text_embeddings):
    """The training loss pairs image i with text i: both batches must be equal."""
    b, t = image_embeddings.shape[0], text_embeddings.shape[0]
    message = (
        "CLIP's training loss pairs image i with text i, so a batch needs as many texts "
        "as images; received {}. (Calling the model on different numbers is fine: "
        "`logits_per_image` is then rectangular.)"
    )
    if b is not None and t is not None:
        if b != t:
            raise ValueError(message.format(f"{b} images and {t} texts"))
        return image_embeddings, text_embeddings
    if keras.backend.backend() == "tensorflow":
        # Only tf.function graphs leave the batch size unknown until run time, and
        # only TensorFlow can raise there with our message; the loss then depends on
        # the check, so the check runs before any shape error of the loss.
        import tensorflow as tf

        check = tf.debugging.assert_equal(
            tf.shape(image_embeddings)[0], tf.shape(text_embeddings)[0],
            message=message.format("different numbers"),
        )
        with tf.control_dependencies([check]):
            return tf.identity(image_embeddings), tf.identity(text_embeddings)
    return image_embeddings, text_embeddings
