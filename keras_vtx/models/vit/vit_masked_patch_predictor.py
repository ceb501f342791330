import keras
from keras import ops

from keras_vtx.layers import ImageNormalization
from keras_vtx.layers.flat_dense import apply_flat
from keras_vtx.models.backbone import Backbone, get_model_class
from keras_vtx.models.task import ObjectiveLoss, OptimizerBuiltBeforeFit, TaskPresets
from keras_vtx.models.training_defaults import adamw
from keras_vtx.models.vit.vit_backbone import ViTBackbone
from keras_vtx.models.vit.vit_classifier import NO_DECAY_NAMES

# The paper's corruption of a chosen patch (ViT appendix B.1.2): replaced by the
# [mask] (80%), by another patch of the image (10%), or kept as it is (10%).
PAPER_CORRUPTION = (0.8, 0.1, 0.1)


@keras.saving.register_keras_serializable(package="keras_vtx")
class ViTMaskedPatchPredictor(ObjectiveLoss, OptimizerBuiltBeforeFit, TaskPresets, keras.Model):
    """ViT's self-supervised pre-training: masked patch prediction (ViT paper, section 4.6).

    A share `mask_rate` of each image's patches is corrupted and the model
    predicts the mean colour of every corrupted patch, quantised to
    `color_bits` bits per channel (the paper: 3 bits, 512 colours), from the
    patch tokens of its `ViTBackbone`. A corrupted patch is replaced by the
    [mask] with probability `corruption[0]`, by another patch of the same image
    with `corruption[1]`, and kept with `corruption[2]` (the paper: 80/10/10).
    The corruption happens on the pixels: the [mask] is a patch of the colour
    `mask_value` (mid-grey by default, 0 after the normalisation), so its
    embedding is the patch embedding's bias, learned, rather than a separate
    learned vector. Train it with `fit(images)` (no labels; labels in the data
    are ignored), then fine-tune the same backbone in a `ViTClassifier`.

    Args:
        backbone: a `ViTBackbone` without a hybrid stem (the targets are the
            pixels of each patch).
        mask_rate: float in (0, 1), the share of patches corrupted (at least
            one per image).
        corruption: `(mask, other_patch, keep)` probabilities of what a
            corrupted patch becomes, summing to 1.
        color_bits: int in [1, 8], bits per channel of the target colour
            (`2 ** (3 * color_bits)` classes).
        mask_value: float in [0, 255], the grey level of the [mask] patch.
        mean: per-channel mean of the normalisation (after scaling to [0, 1]).
        std: per-channel std of the normalisation.
        seed: int or None, seeds the corruption draws.
        dtype: dtype or dtype policy; the head gives float32 logits.

    Call arguments:
        inputs: raw RGB images `(batch, height, width, 3)` in [0, 255], or a
            dict with those `"images"` and a boolean `"mask"`
            `(batch, num_patches)` of the patches to replace by the [mask]
            (every one of them; no other patches or kept ones), for a fixed
            evaluation. The corruption is drawn at every call otherwise,
            inference included.

    Returns:
        A dict with `"logits"` float32 `(batch, num_patches, 2 ** (3 * color_bits))`,
        `"mask"` boolean `(batch, num_patches)`, the corrupted (predicted)
        patches, and `"targets"` int32 `(batch, num_patches)`, every patch's
        quantised mean colour.

    Example:
    >>> backbone = ViTBackbone(image_size=16, patch_size=4, num_layers=1,
    ...                        hidden_dim=16, num_heads=2, mlp_dim=32)
    >>> model = ViTMaskedPatchPredictor(backbone, seed=0)
    >>> out = model(np.full((2, 16, 16, 3), 255.0, "float32"))
    >>> tuple(out["logits"].shape), int(keras.ops.convert_to_numpy(out["targets"])[0, 0])
    ((2, 16, 512), 511)
    """

    backbone_cls = ViTBackbone
    objective_description = "the cross-entropy of the corrupted patches' colours"

    def __init__(self, backbone, mask_rate=0.5, corruption=PAPER_CORRUPTION, color_bits=3,
                 mask_value=127.5, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), seed=None,
                 dtype=None, **kwargs):
        if not isinstance(backbone, ViTBackbone):
            raise TypeError(
                f"`backbone` must be a ViTBackbone; received {type(backbone).__name__}."
            )
        if backbone.hybrid_stem_depths:
            raise ValueError(
                "`backbone` must patchify pixels: masked patch prediction predicts each "
                "patch's colour, and a hybrid stem's patches are feature-map cells; received "
                f"hybrid_stem_depths={backbone.hybrid_stem_depths}."
            )
        if backbone.num_channels != 3:
            raise ValueError(
                f"`backbone` must take RGB images (num_channels=3); received {backbone.num_channels}."
            )
        if not 0.0 < float(mask_rate) < 1.0:
            raise ValueError(f"`mask_rate` must be in (0, 1); received {mask_rate!r}.")
        corruption = tuple(float(p) for p in corruption)
        if len(corruption) != 3 or min(corruption) < 0 or abs(sum(corruption) - 1) > 1e-6:
            raise ValueError(
                "`corruption` must be three probabilities (mask, other patch, keep) summing "
                f"to 1; received {corruption!r}."
            )
        if int(color_bits) != color_bits or not 1 <= color_bits <= 8:
            raise ValueError(f"`color_bits` must be an int in [1, 8]; received {color_bits!r}.")
        if not 0.0 <= float(mask_value) <= 255.0:
            raise ValueError(f"`mask_value` must be in [0, 255]; received {mask_value!r}.")
        super().__init__(dtype=dtype, **kwargs)
        self.backbone = backbone
        self.mask_rate = float(mask_rate)
        self.corruption = corruption
        self.color_bits = int(color_bits)
        self.mask_value = float(mask_value)
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.seed = seed
        policy = self.dtype_policy
        self.preprocessing = ImageNormalization(1 / 255.0, self.mean, self.std, dtype=policy,
                                                name="preprocessing")
        self.preprocessing.build((None, *backbone.image_size, 3))
        mixed = policy.compute_dtype in ("float16", "bfloat16")
        # Logits feed the cross-entropy: float32 under mixed precision.
        self.head = keras.layers.Dense(self.num_colors, dtype="float32" if mixed else policy,
                                       name="head")
        self.head.build((None, None, backbone.hidden_dim))
        self.seed_generator = keras.random.SeedGenerator(seed, name="mask_seed_generator")
        self.patch_accuracy_tracker = keras.metrics.Mean(name="patch_accuracy")
        self.built = True

    @property
    def num_colors(self):
        """The number of target classes, `2 ** (3 * color_bits)`."""
        return 2 ** (3 * self.color_bits)

    @property
    def num_patches(self):
        return self.backbone.grid_size[0] * self.backbone.grid_size[1]

    # --- Patches ---

    def patchify(self, images):
        """`(batch, num_patches, ph * pw * 3)` float32 patches, row-major like the tokens."""
        (gh, gw), (ph, pw) = self.backbone.grid_size, self.backbone.patch_size
        x = ops.reshape(ops.cast(images, "float32"), (-1, gh, ph, gw, pw, 3))
        x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
        return ops.reshape(x, (-1, gh * gw, ph * pw * 3))

    def unpatchify(self, patches):
        (gh, gw), (ph, pw) = self.backbone.grid_size, self.backbone.patch_size
        x = ops.reshape(patches, (-1, gh, gw, ph, pw, 3))
        x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
        return ops.reshape(x, (-1, gh * ph, gw * pw, 3))

    def color_targets(self, images):
        """Each patch's mean colour quantised to `color_bits` per channel: int32 `(batch, n)`.

        The class is `(r * L + g) * L + b` with `L = 2 ** color_bits` levels and
        the level of a channel `floor(mean / 256 * L)`.
        """
        levels = 2 ** self.color_bits
        patches = self.patchify(images)
        colors = ops.mean(ops.reshape(patches, (ops.shape(patches)[0], self.num_patches, -1, 3)),
                          axis=2)
        level = ops.clip(ops.floor(colors * (levels / 256.0)), 0, levels - 1)
        level = ops.cast(level, "int32")
        return (level[..., 0] * levels + level[..., 1]) * levels + level[..., 2]

    def draw_corruption(self, batch_size):
        """Draws which patches are corrupted and how.

        Returns:
            `(mask, replace, other)`: boolean `(batch, n)` corrupted patches,
            boolean `(batch, n)` those replaced by the [mask], and int32
            `(batch, n)` those replaced by another patch (its index; -1 for
            none).
        """
        n = self.num_patches
        noise = keras.random.uniform((batch_size, n), seed=self.seed_generator)
        mask = noise < self.mask_rate
        # The patch with the smallest draw is always corrupted: every image has a target.
        mask = ops.logical_or(mask, ops.cast(ops.one_hot(ops.argmin(noise, axis=1), n), "bool"))
        kind = keras.random.uniform((batch_size, n), seed=self.seed_generator)
        replace = ops.logical_and(mask, kind < self.corruption[0])
        swap = ops.logical_and(mask, ops.logical_and(
            kind >= self.corruption[0], kind < self.corruption[0] + self.corruption[1]))
        # Another patch: a uniform draw among the other n - 1 of the same image.
        offset = keras.random.randint((batch_size, n), 1, max(n, 2), seed=self.seed_generator)
        other = (ops.arange(n)[None, :] + offset) % n
        return mask, replace, ops.where(swap, other, -1)

    def corrupt(self, images, replace, other):
        """The images with patches replaced by the [mask] or by another patch."""
        patches = self.patchify(images)
        swapped = ops.take_along_axis(patches, ops.maximum(other, 0)[..., None], axis=1)
        patches = ops.where((other >= 0)[..., None], swapped, patches)
        patches = ops.where(replace[..., None], self.mask_value, patches)
        return self.unpatchify(patches)

    # --- Forward pass ---

    def _split_inputs(self, inputs):
        if isinstance(inputs, dict):
            if "images" not in inputs or not set(inputs) <= {"images", "mask"}:
                raise ValueError(
                    "`inputs` must be images or a dict with 'images' and optionally 'mask' "
                    f"(batch, num_patches); received keys {sorted(inputs)}."
                )
            return inputs["images"], inputs.get("mask")
        return inputs, None

    def __call__(self, *args, **kwargs):
        if args:
            images, mask = self._split_inputs(args[0])
            self.backbone.validate_inputs(images)
            if mask is not None and tuple(mask.shape)[1:] != (self.num_patches,):
                raise ValueError(
                    f"`mask` must be (batch, {self.num_patches}), one entry per patch; "
                    f"received shape {tuple(mask.shape)}."
                )
        return keras.Model.__call__(self, *args, **kwargs)

    def call(self, inputs, training=None):
        images, mask = self._split_inputs(inputs)
        images = ops.cast(images, "float32")
        if mask is None:
            mask, replace, other = self.draw_corruption(ops.shape(images)[0])
        else:
            mask = ops.cast(mask, "bool")
            replace, other = mask, ops.full(ops.shape(mask), -1, "int32")
        corrupted = self.preprocessing(self.corrupt(images, replace, other))
        tokens = self.backbone(corrupted, training=training)["sequence_output"]
        tokens = tokens[:, self.backbone.num_prefix_tokens:]
        logits = apply_flat(self.head, ops.cast(tokens, self.head.compute_dtype))
        return {"logits": ops.cast(logits, "float32"), "mask": mask,
                "targets": self.color_targets(images)}

    # --- Training ---

    def compile(self, optimizer="auto", loss="auto", metrics=None, learning_rate=1e-3,
                weight_decay=0.05, warmup_steps=500, total_steps=10_000, global_clipnorm=1.0,
                jit_compile="auto", **kwargs):
        """Compiles with ViT's training defaults; the loss is always the masked cross-entropy.

        Args:
            optimizer: `"auto"` is `ViTClassifier`'s AdamW: linear warm-up over
                `warmup_steps` to `learning_rate`, cosine decay to 0 at
                `total_steps`, `weight_decay` (not on biases, norms, tokens and
                position embeddings), global clipping at `global_clipnorm`.
            loss: `"auto"` only: the mean cross-entropy over the corrupted patches.
            metrics: passed to `keras.Model.compile`; `loss` and `patch_accuracy`
                (over the corrupted patches) are always reported.
            jit_compile: `"auto"` compiles the train step with XLA on
                TensorFlow and JAX; PyTorch runs eagerly. A bool is passed on.
            **kwargs: passed to `keras.Model.compile`.
        """
        if optimizer == "auto":
            optimizer = adamw(self, learning_rate, total_steps, warmup_steps, weight_decay,
                              NO_DECAY_NAMES, global_clipnorm=global_clipnorm)
        self.compile_objective(optimizer, loss, metrics, jit_compile, **kwargs)

    def _masked_nll_and_hits(self, y_pred):
        logits = ops.cast(y_pred["logits"], "float32")
        targets = ops.cast(y_pred["targets"], "int32")
        nll = keras.losses.sparse_categorical_crossentropy(targets, logits, from_logits=True)
        hits = ops.cast(ops.equal(ops.argmax(logits, axis=-1), targets), "float32")
        weights = ops.cast(y_pred["mask"], "float32")
        count = ops.maximum(ops.sum(weights), 1.0)
        return ops.sum(nll * weights) / count, ops.sum(hits * weights) / count, count

    def objective_loss(self, x, y_pred):
        del x  # the targets come from the images, in `y_pred`
        return self._masked_nll_and_hits(y_pred)[0]

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        y_pred = {k: ops.stop_gradient(v) for k, v in y_pred.items()}
        _, accuracy, count = self._masked_nll_and_hits(y_pred)
        self.patch_accuracy_tracker.update_state(accuracy, sample_weight=count)
        return super().compute_metrics(x, y, y_pred, sample_weight)

    # --- Presets and serialisation ---

    @classmethod
    def _from_registered(cls, preset, entry, task_kwargs, backbone_kwargs):
        registered = get_model_class(entry["class_name"])
        if not issubclass(registered, (Backbone, cls)):
            # Another ViT task (a classifier preset): its backbone, and its normalisation.
            model = registered._from_registered(preset, entry, {}, backbone_kwargs)
            return cls._adopt(model, preset, task_kwargs, {})
        return super()._from_registered(preset, entry, task_kwargs, backbone_kwargs)

    @classmethod
    def _adopt(cls, model, preset, task_kwargs, backbone_kwargs):
        backbone = getattr(model, "backbone", None)
        if not isinstance(model, cls) and isinstance(backbone, ViTBackbone):
            normalisation = {k: getattr(model, k) for k in ("mean", "std") if hasattr(model, k)}
            return cls(backbone=backbone, **{**normalisation, **task_kwargs})
        return super()._adopt(model, preset, task_kwargs, backbone_kwargs)

    def get_config(self):
        return self.base_config(
            mask_rate=self.mask_rate,
            corruption=list(self.corruption),
            color_bits=self.color_bits,
            mask_value=self.mask_value,
            mean=list(self.mean),
            std=list(self.std),
            seed=self.seed,
        )
