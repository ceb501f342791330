import math

import keras
import numpy as np
from keras import ops

from keras_vtx.layers.flat_dense import apply_flat
from keras_vtx.models.igpt import image_gpt_presets  # noqa: F401  (registers the presets)
from keras_vtx.models.igpt.image_gpt_backbone import INITIALIZER_RANGE, ImageGPTBackbone
from keras_vtx.models.task import ObjectiveLoss, OptimizerBuiltBeforeFit, TaskPresets
from keras_vtx.models.token_ids import CheckedTokenIds, check_token_ids
from keras_vtx.models.training_defaults import adamw, no_decay_variables

# Image GPT's additions to the no-decay rule (keras_vtx.models.training_defaults).
NO_DECAY_NAMES = ("token_embedding", "position_embedding")

OBJECTIVES = ("autoregressive", "bert")


def check_image_gpt_arguments(backbone, palette, objective, mask_rate):
    """Checks what `ImageGPT` and `ImageGPTClassifier` share; returns the palette object."""
    if not isinstance(backbone, ImageGPTBackbone):
        raise TypeError(
            f"`backbone` must be an ImageGPTBackbone; received {type(backbone).__name__}."
        )
    if objective not in OBJECTIVES:
        raise ValueError(f"`objective` must be one of {OBJECTIVES}; received {objective!r}.")
    if backbone.causal != (objective == "autoregressive"):
        raise ValueError(
            f"The {objective!r} objective needs a backbone with "
            f"`causal={objective == 'autoregressive'}`; received one with "
            f"`causal={backbone.causal}`. (`from_preset(..., objective=...)` sets it.)"
        )
    if not 0.0 < float(mask_rate) < 1.0:
        raise ValueError(f"`mask_rate` must be in (0, 1); received {mask_rate!r}.")
    palette = _as_palette(palette)
    palette_size = backbone.vocabulary_size - 1
    if palette is not None and palette.num_colors != palette_size:
        raise ValueError(
            f"`palette` has {palette.num_colors} colours but the backbone's vocabulary "
            f"({backbone.vocabulary_size}) holds {palette_size} colours and the special "
            "token."
        )
    return palette


def _as_palette(palette):
    """A `ColorPalette` from a palette, its config / serialised dict, or a clusters array."""
    if palette is None:
        return None
    from keras_vtx.models.igpt.color_palette import ColorPalette

    if isinstance(palette, ColorPalette):
        return palette
    if isinstance(palette, dict):
        if "class_name" in palette:
            return keras.saving.deserialize_keras_object(palette)
        return ColorPalette.from_config(palette)
    return ColorPalette(np.asarray(palette, "float32"))


@keras.saving.register_keras_serializable(package="keras_vtx")
class ImageGPT(CheckedTokenIds, ObjectiveLoss, OptimizerBuiltBeforeFit, TaskPresets,
               keras.Model):
    """Image GPT (Chen et al. 2020): generative pre-training on sequences of palette ids.

    An `ImageGPTBackbone` and an output head over the `K` palette colours, not
    tied to the input embedding (`lm_head`, no bias). Two objectives (section
    2.1 of the paper):

    - `"autoregressive"`: the backbone sees `[SOS, x_1, ..., x_{L-1}]` (SOS is
      the special token `K`) under causal attention, and the logits at
      position `i` predict `x_i`; the loss is the mean negative log-likelihood
      over all positions.
    - `"bert"`: each position is masked with probability `mask_rate` (at
      least one per image), masked ids are replaced by the special token,
      attention is bidirectional, and the loss averages the NLL over masked
      positions only.

    Both report `bits_per_dim`: the NLL in nats divided by `3 ln 2`, per RGB
    sub-pixel as in the paper (a uniform model over 512 colours gives 3.0).

    Args:
        backbone: an `ImageGPTBackbone`; causal for `"autoregressive"`,
            bidirectional (`causal=False`) for `"bert"`.
        palette: optional `ColorPalette` (or its config, or a `(K, 3)` clusters
            array in [-1, 1]) mapping ids to colours, used by `generate()` and
            saved with the model; `K` must be `backbone.vocabulary_size - 1`.
        objective: `"autoregressive"` or `"bert"`.
        mask_rate: float in (0, 1), BERT's masking probability (the paper: 0.15).
        seed: optional int, seed of the BERT mask generator.
        dtype: dtype or dtype policy; the logits are float32.

    Call arguments:
        inputs: int tensor `(batch, length)` of palette ids in `[0, K)`, or
            (BERT) a dict with `"pixel_ids"` and an optional boolean `"mask"`
            `(batch, length)` (True = masked) instead of a random one.
        training: bool.

    Returns:
        Autoregressive: float32 logits `(batch, length, K)`, position `i`
        predicting pixel `i`. BERT: a dict with those `"logits"` and the
        `"mask"` used.

    Example:
    >>> model = ImageGPT.from_preset("igpt_tiny_test")
    >>> tuple(model(np.zeros((2, 64), "int32")).shape)
    (2, 64, 16)
    >>> bert = ImageGPT.from_preset("igpt_tiny_test", objective="bert", seed=0)
    >>> out = bert(np.zeros((2, 64), "int32"))
    >>> mask = keras.ops.convert_to_numpy(out["mask"])
    >>> tuple(out["logits"].shape), bool(mask.any(axis=1).all())
    ((2, 64, 16), True)
    """

    backbone_cls = ImageGPTBackbone
    objective_description = "its objective's negative log-likelihood"

    def __init__(self, backbone, palette=None, objective="autoregressive", mask_rate=0.15,
                 seed=None, dtype=None, **kwargs):
        palette = check_image_gpt_arguments(backbone, palette, objective, mask_rate)
        palette_size = backbone.vocabulary_size - 1
        super().__init__(dtype=dtype, **kwargs)
        self.backbone = backbone
        self.palette = palette
        self.objective = objective
        self.mask_rate = float(mask_rate)
        self.seed = seed
        policy = self.dtype_policy
        mixed = policy.compute_dtype in ("float16", "bfloat16")
        # Logits feed the NLL: the head runs in float32 under mixed precision.
        self.lm_head = keras.layers.Dense(
            palette_size, use_bias=False,
            kernel_initializer=keras.initializers.RandomNormal(stddev=INITIALIZER_RANGE),
            dtype="float32" if mixed else policy, name="lm_head",
        )
        self.lm_head.build((None, None, backbone.hidden_dim))
        self.seed_generator = keras.random.SeedGenerator(seed, name="mask_seed_generator")
        self.bits_per_dim_tracker = keras.metrics.Mean(name="bits_per_dim")
        self.built = True

    # --- Sizes ---

    @property
    def palette_size(self):
        """K, the number of colours (the backbone's vocabulary less the special token)."""
        return self.backbone.vocabulary_size - 1

    @property
    def special_token_id(self):
        """The id of the start-of-sequence / [MASK] token: `palette_size`."""
        return self.palette_size

    @property
    def sequence_length(self):
        return self.backbone.sequence_length

    def token_id_checks(self):
        """The palette ids of `fit`/`evaluate`/`predict` data: `x` or `x["pixel_ids"]`."""
        return [("pixel_ids?", "pixel_ids", self.palette_size, "palette ids")]

    @property
    def image_size(self):
        """The side S of the square images the context holds (`sequence_length = S * S`)."""
        return math.isqrt(self.backbone.sequence_length)

    # --- Forward pass ---

    def __call__(self, *args, **kwargs):
        if args:
            self._split_inputs(args[0])
        return keras.Model.__call__(self, *args, **kwargs)

    def _split_inputs(self, inputs):
        """Returns `(pixel_ids, mask or None)`, raising a clear error for bad inputs."""
        mask = None
        if isinstance(inputs, dict):
            if "pixel_ids" not in inputs or not set(inputs) <= {"pixel_ids", "mask"}:
                raise ValueError(
                    "`inputs` must be a dict with 'pixel_ids' (batch, length) and optionally "
                    f"'mask' (batch, length); received keys {sorted(inputs)}."
                )
            inputs, mask = inputs["pixel_ids"], inputs.get("mask")
        check_token_ids(inputs, "pixel_ids", self.sequence_length, self.palette_size,
                        "palette ids")
        if mask is not None:
            if self.objective != "bert":
                raise ValueError(
                    "A `mask` is only taken by the 'bert' objective; this model is "
                    f"{self.objective!r}."
                )
            shape = tuple(getattr(inputs, "shape", None) or np.shape(inputs))
            mask_shape = tuple(getattr(mask, "shape", None) or np.shape(mask))
            if len(mask_shape) != 2 or any(
                a is not None and b is not None and a != b for a, b in zip(shape, mask_shape)
            ):
                raise ValueError(
                    f"`mask` must have the shape of `pixel_ids` {shape}; received {mask_shape}."
                )
        return inputs, mask

    def draw_mask(self, batch_size, length):
        """Draws BERT's random mask: each position with probability `mask_rate`, >= 1 per row.

        Args:
            batch_size: int (or scalar tensor).
            length: int (or scalar tensor).

        Returns:
            A boolean tensor `(batch_size, length)`, True at masked positions.
        """
        noise = keras.random.uniform((batch_size, length), seed=self.seed_generator)
        mask = noise < self.mask_rate
        # The position with the smallest draw is always masked: every image then
        # has a target, and it is one of the positions masked anyway if any is.
        first = ops.cast(ops.one_hot(ops.argmin(noise, axis=1), length), "bool")
        return ops.logical_or(mask, first)

    def prepare_inputs(self, pixel_ids, mask=None, training=None):
        """Returns the token ids the backbone sees, and the BERT mask.

        Autoregressive: `[SOS, pixel_ids[:, :-1]]` (shifted right, SOS = the
        special token) and `None`. BERT: `pixel_ids` with masked positions
        replaced by the special token, and the mask (`mask` when given, else
        drawn with `draw_mask`). `training` does not change the result: the
        paper's BERT models also see masked inputs at evaluation.

        Args:
            pixel_ids: int tensor `(batch, length)` of palette ids.
            mask: optional boolean tensor `(batch, length)`, BERT only.
            training: unused, accepted for symmetry with `call`.

        Returns:
            `(token_ids, mask)`: int32 `(batch, length)`, and a boolean
            `(batch, length)` tensor or None.
        """
        del training
        pixel_ids = ops.cast(pixel_ids, "int32")
        shape = ops.shape(pixel_ids)
        if self.objective == "autoregressive":
            sos = ops.full((shape[0], 1), self.special_token_id, dtype="int32")
            return ops.concatenate([sos, pixel_ids[:, :-1]], axis=1), None
        mask = self.draw_mask(shape[0], shape[1]) if mask is None else ops.cast(mask, "bool")
        return ops.where(mask, self.special_token_id, pixel_ids), mask

    def call(self, inputs, training=None):
        pixel_ids, mask = self._split_inputs(inputs)
        token_ids, mask = self.prepare_inputs(pixel_ids, mask)
        hidden = self.backbone(token_ids, training=training)
        logits = ops.cast(apply_flat(self.lm_head, ops.cast(hidden, self.lm_head.compute_dtype)),
                          "float32")
        if self.objective == "autoregressive":
            return logits
        return {"logits": logits, "mask": mask}

    # --- Training ---

    def compile(self, optimizer="auto", loss="auto", metrics=None, learning_rate=1e-3,
                warmup_steps=0, total_steps=None, beta_1=0.9, beta_2=0.95, epsilon=1e-8,
                weight_decay=0.0, global_clipnorm=None, jit_compile="auto", **kwargs):
        """Compiles with the paper's optimiser; the loss is always the objective's NLL.

        Args:
            optimizer: `"auto"` is Adam(W) with beta_2 0.95 (section 3.4 of the
                paper), a linear warm-up to `learning_rate` over `warmup_steps`
                (the paper: one epoch), then cosine decay to 0 at `total_steps`
                (None: constant), optional decoupled `weight_decay` (the paper
                uses none) never applied to gains, biases or embeddings, and
                optional global gradient clipping.
            loss: `"auto"` only: the mean NLL over all positions
                (autoregressive) or over masked positions (BERT).
            metrics: passed to `keras.Model.compile`; `loss` and `bits_per_dim`
                are always reported.
            jit_compile: `"auto"` compiles the train step with XLA on
                TensorFlow and JAX; PyTorch runs eagerly. A bool is passed on.
            **kwargs: passed to `keras.Model.compile`.
        """
        if optimizer == "auto":
            optimizer = adamw(self, learning_rate, total_steps, warmup_steps, weight_decay,
                              NO_DECAY_NAMES, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon,
                              global_clipnorm=global_clipnorm)
        self.compile_objective(optimizer, loss, metrics, jit_compile, **kwargs)

    def no_decay_variables(self):
        """Variables without weight decay: gains, biases and the embeddings."""
        return no_decay_variables(self, NO_DECAY_NAMES)

    def token_nll(self, pixel_ids, y_pred):
        """Per-position negative log-likelihood in nats, float32 `(batch, length)`."""
        logits = y_pred["logits"] if isinstance(y_pred, dict) else y_pred
        logits = ops.cast(logits, "float32")
        targets = ops.expand_dims(ops.cast(pixel_ids, "int32"), -1)
        picked = ops.take_along_axis(logits, targets, axis=-1)[..., 0]
        return ops.logsumexp(logits, axis=-1) - picked

    def _objective_nll(self, x, y_pred):
        pixel_ids = self._split_inputs(x)[0]
        nll = self.token_nll(pixel_ids, y_pred)
        if self.objective == "autoregressive":
            return ops.mean(nll)
        weights = ops.cast(y_pred["mask"], "float32")
        return ops.sum(nll * weights) / ops.maximum(ops.sum(weights), 1.0)

    def objective_loss(self, x, y_pred):
        return self._objective_nll(x, y_pred)

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        if isinstance(y_pred, dict):
            y_pred = {k: ops.stop_gradient(v) for k, v in y_pred.items()}
        else:
            y_pred = ops.stop_gradient(y_pred)
        nll = self._objective_nll(x, y_pred)
        # Weighted by the batch size, as Keras weights the loss: a smaller last
        # batch then counts as much in both.
        batch = ops.cast(ops.shape(self._split_inputs(x)[0])[0], "float32")
        self.bits_per_dim_tracker.update_state(
            nll / (3.0 * math.log(2.0)), sample_weight=batch
        )
        return super().compute_metrics(x, y, y_pred, sample_weight)

    # --- Sampling ---

    def generate(self, num_images=None, prefix_images=None, prefix_rows=None, prefix_ids=None,
                 temperature=1.0, top_k=None, top_p=None, seed=None, use_cache=True,
                 greedy=False, return_ids=False):
        """Samples images, unconditionally or completing given top rows.

        Args:
            num_images: int, images to sample without a prefix (or a check of
                the prefix's batch size).
            prefix_images: optional uint8 RGB `(batch, S, S, 3)` at the model's
                resolution; they are quantised with the palette and their first
                `prefix_rows` rows kept.
            prefix_rows: int, rows of `prefix_images` to keep (default: half).
            prefix_ids: optional int `(batch, P)` palette ids to continue,
                instead of `prefix_images`.
            temperature: float, top_k: int, top_p: float, greedy: bool: how
                each pixel is drawn (see `generate_pixel_ids`).
            seed: optional int, for reproducible samples.
            use_cache: bool, use the key/value cache (same samples, faster).
            return_ids: bool, return the pixel ids instead of RGB images.

        Returns:
            uint8 RGB images `(batch, S, S, 3)`, or int32 ids `(batch, S * S)`
            with `return_ids=True`.
        """
        from keras_vtx.models.igpt.image_gpt_generation import generate_pixel_ids

        if self.objective != "autoregressive":
            raise ValueError(
                "`generate()` samples from the autoregressive objective; this model is "
                f"{self.objective!r} (a BERT model has no pixel ordering to sample in)."
            )
        if prefix_images is not None and prefix_ids is not None:
            raise ValueError("Pass `prefix_images` or `prefix_ids`, not both.")
        if (prefix_images is not None or not return_ids) and self.palette is None:
            raise ValueError(
                "This ImageGPT has no `palette`: images cannot be turned into ids or back. "
                "Build it with `palette=ColorPalette(...)` or pass `prefix_ids` and "
                "`return_ids=True`."
            )
        side = self.image_size
        if prefix_images is not None:
            rows = side // 2 if prefix_rows is None else int(prefix_rows)
            if not 0 <= rows <= side:
                raise ValueError(f"`prefix_rows` must be in [0, {side}]; received {rows}.")
            prefix_ids = self.quantize_images(prefix_images, "prefix_images")[:, : rows * side]
        elif prefix_rows is not None:
            raise ValueError("`prefix_rows` needs `prefix_images`.")
        if prefix_ids is not None:
            prefix_ids = np.asarray(prefix_ids)
            check_token_ids(prefix_ids, "prefix_ids", self.sequence_length,
                            self.palette_size, "palette ids")
            if num_images is not None and num_images != prefix_ids.shape[0]:
                raise ValueError(
                    f"`num_images` ({num_images}) must equal the prefix's batch size "
                    f"({prefix_ids.shape[0]})."
                )
        ids = generate_pixel_ids(
            self, prefix_ids=prefix_ids, num_images=num_images, temperature=temperature,
            top_k=top_k, top_p=top_p, seed=seed, use_cache=use_cache, greedy=greedy,
        )
        if return_ids:
            return ids
        return self.palette.dequantize(ids, image_size=side)

    def quantize_images(self, images, name="images"):
        """The palette ids `(batch, side * side)` of RGB `images` at this model's resolution.

        Raises a `ValueError` naming the argument `name` for any other shape.
        """
        side = self.image_size
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[1:] != (side, side, 3):
            raise ValueError(
                f"`{name}` must be RGB images (batch, {side}, {side}, 3) at the model's "
                f"resolution; received shape {images.shape}."
            )
        return np.asarray(keras.ops.convert_to_numpy(self.palette.quantize(images)), "int32")

    # --- Presets and serialisation ---

    @staticmethod
    def derive_backbone_overrides(task_kwargs, backbone_kwargs):
        """The objective decides the attention: causal for autoregressive, not for BERT.

        Called by `from_preset` on its routed overrides (see `keras_vtx.models.overrides`).
        """
        if "objective" in task_kwargs and "causal" not in backbone_kwargs["backbone"]:
            backbone_kwargs["backbone"]["causal"] = task_kwargs["objective"] == "autoregressive"

    def get_config(self):
        return self.base_config(
            palette=(None if self.palette is None
                     else keras.saving.serialize_keras_object(self.palette)),
            objective=self.objective,
            mask_rate=self.mask_rate,
            seed=self.seed,
        )
