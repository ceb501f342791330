"""Fine-tuning Image GPT for classification, with BERT mask ensembles at evaluation."""

import keras
import numpy as np
from keras import ops

from keras_vtx.models import presets
from keras_vtx.models.backbone import transfer_weights
from keras_vtx.models.igpt.image_gpt import ImageGPT, check_image_gpt_arguments
from keras_vtx.models.igpt.image_gpt_backbone import ImageGPTBackbone
from keras_vtx.models.igpt.image_gpt_features import draw_masks
from keras_vtx.models.overrides import split_task_overrides
from keras_vtx.models.task import OptimizerBuiltBeforeFit, TaskPresets
from keras_vtx.models.token_ids import CheckedTokenIds
from keras_vtx.models.training_defaults import check_class_names


@keras.saving.register_keras_serializable(package="keras_vtx")
class ImageGPTClassifier(CheckedTokenIds, OptimizerBuiltBeforeFit, TaskPresets, keras.Model):
    """Image GPT fine-tuned for classification (Chen et al. 2020, section 2.3).

    The backbone's final (normed) features are average-pooled over positions
    and a linear head gives the class logits. The inputs are those of the
    pre-training objective: `[SOS, ids[:-1]]` for the autoregressive one, the
    pixel ids with masked positions replaced by the special token for BERT
    (a Bernoulli(`mask_rate`) mask, at least one position per image, drawn at
    every call unless given). The paper finds that keeping the generative
    loss while fine-tuning helps (`L_GEN + L_CLF`): with
    `generative_loss_weight > 0` the model also holds the palette head
    (`lm_head`) and adds `generative_loss_weight` times the generative NLL
    (mean over all positions, or over the masked ones for BERT) of the same
    inputs to the model's losses, so `fit` and `evaluate` minimise and report
    `L_CLF + weight * L_GEN`.

    Args:
        backbone: an `ImageGPTBackbone` (bidirectional for `"bert"`).
        num_classes: int, number of classes.
        palette: optional `ColorPalette` (or its `(K, 3)` clusters), kept with
            the model for turning images into pixel ids.
        objective: `"autoregressive"` or `"bert"`, how the inputs are formed.
        mask_rate: float in (0, 1), BERT's masked fraction (15% in the paper).
        generative_loss_weight: float >= 0, the weight of the auxiliary
            generative loss (0: no `lm_head`).
        dropout: float, dropout on the pooled features.
        class_names: optional sequence of `num_classes` strings.
        seed: optional int, seed of the drawn BERT masks.
        dtype: dtype or dtype policy; the logits and the losses are float32.

    Call arguments:
        inputs: int pixel ids `(batch, length)` (palette ids, raster order),
            or a dict `{"pixel_ids": ..., "mask": bool (batch, length)}` giving
            the BERT mask (an all-False mask evaluates unmasked images).
        training: bool.

    Returns:
        Class logits `(batch, num_classes)`, float32.

    Example:
    >>> model = ImageGPTClassifier.from_preset("igpt_tiny_test", num_classes=3)
    >>> tuple(model(np.zeros((2, 64), "int32")).shape)
    (2, 3)
    """

    backbone_cls = ImageGPTBackbone

    def __init__(self, backbone, num_classes, palette=None, objective="autoregressive",
                 mask_rate=0.15, generative_loss_weight=0.0, dropout=0.0, class_names=None,
                 seed=None, dtype=None, **kwargs):
        palette = check_image_gpt_arguments(backbone, palette, objective, mask_rate)
        if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or (
            num_classes < 1
        ):
            raise ValueError(f"`num_classes` must be a positive int; received {num_classes!r}.")
        if not float(generative_loss_weight) >= 0.0:
            raise ValueError(
                f"`generative_loss_weight` must be >= 0; received {generative_loss_weight!r}."
            )
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"`dropout` must be in [0, 1); received {dropout!r}.")
        class_names = check_class_names(class_names, num_classes)
        super().__init__(dtype=dtype, **kwargs)
        self.backbone = backbone
        self.num_classes = int(num_classes)
        self.palette = palette
        self.objective = objective
        self.mask_rate = float(mask_rate)
        self.generative_loss_weight = float(generative_loss_weight)
        self.dropout = float(dropout)
        self.class_names = class_names
        self.seed = seed
        self.palette_size = backbone.vocabulary_size - 1
        self.special_token_id = self.palette_size

        width = backbone.hidden_dim
        self.head_dropout = keras.layers.Dropout(self.dropout, name="head_dropout")
        # float32 heads: logits feed softmax cross-entropies (habit 5).
        self.classifier_head = keras.layers.Dense(num_classes, dtype="float32",
                                                  name="classifier_head")
        self.classifier_head.build((None, width))
        self.lm_head = None
        if self.generative_loss_weight > 0:
            # Not tied to the input embedding, as in the released model.
            self.lm_head = keras.layers.Dense(self.palette_size, use_bias=False,
                                              dtype="float32", name="lm_head")
            self.lm_head.build((None, None, width))
        self.seed_generator = keras.random.SeedGenerator(seed, name="mask_seed_generator")
        self.built = True

    # --- Forward pass ---

    # The pre-training objective's inputs, checked and formed exactly as ImageGPT
    # does (the same functions: they read `backbone`, `objective`, `palette_size`,
    # `special_token_id`, `mask_rate` and `seed_generator`, which this class holds too).
    sequence_length = ImageGPT.sequence_length
    token_id_checks = ImageGPT.token_id_checks
    __call__ = ImageGPT.__call__
    _split_inputs = ImageGPT._split_inputs
    draw_mask = ImageGPT.draw_mask
    prepare_inputs = ImageGPT.prepare_inputs

    def call(self, inputs, training=None):
        pixel_ids, mask = self._split_inputs(inputs)
        token_ids, mask = self.prepare_inputs(pixel_ids, mask)
        hidden = self.backbone(token_ids, training=training)
        pooled = ops.mean(ops.cast(hidden, "float32"), axis=1)
        logits = self.classifier_head(self.head_dropout(pooled, training=training))
        if self.lm_head is not None:
            nll = self.generative_loss(hidden, pixel_ids, mask)
            self.add_loss(self.generative_loss_weight * nll)
        return logits

    def generative_loss(self, hidden, pixel_ids, mask=None):
        """Mean next-pixel (or masked-pixel, given `mask`) NLL in nats, float32."""
        logits = self.lm_head(ops.cast(hidden, "float32"))
        log_probs = ops.log_softmax(logits, axis=-1)
        targets = ops.cast(pixel_ids, "int32")[..., None]
        nll = -ops.squeeze(ops.take_along_axis(log_probs, targets, axis=-1), axis=-1)
        if mask is None:
            return ops.mean(nll)
        weights = ops.cast(mask, "float32")
        return ops.sum(nll * weights) / ops.maximum(ops.sum(weights), 1.0)

    # --- BERT mask ensembles ---

    def predict_ensemble(self, pixel_ids, num_masks=4, seed=0, batch_size=None,
                         return_single=False):
        """BERT only: class probabilities averaged over `num_masks` random maskings.

        Mask `j` is `draw_masks(..., mask_rate, seed + j)`, the same masks as
        `keras_vtx.models.igpt.image_gpt_features` uses for feature ensembles.

        Args:
            pixel_ids: int `(num_images, length)` pixel ids.
            num_masks: int >= 1.
            seed: int.
            batch_size: optional int, passed to `predict`.
            return_single: bool, also return the first mask's probabilities
                (a single-mask evaluation, for comparison).

        Returns:
            float32 NumPy `(num_images, num_classes)` probabilities (and the
            single-mask ones when `return_single`).
        """
        if self.objective != "bert":
            raise ValueError(
                "`predict_ensemble` averages random BERT maskings; this classifier's "
                f"objective is {self.objective!r}."
            )
        if isinstance(num_masks, bool) or not isinstance(num_masks, (int, np.integer)) or (
            num_masks < 1
        ):
            raise ValueError(f"`num_masks` must be a positive int; received {num_masks!r}.")
        pixel_ids = np.asarray(keras.ops.convert_to_numpy(pixel_ids)).astype("int32")
        if pixel_ids.ndim != 2:
            raise ValueError(
                f"`pixel_ids` must have shape (num_images, length); received {pixel_ids.shape}."
            )
        probabilities = []
        for j in range(int(num_masks)):
            mask = draw_masks(*pixel_ids.shape, self.mask_rate, int(seed) + j)
            logits = self.predict({"pixel_ids": pixel_ids, "mask": mask},
                                  batch_size=batch_size, verbose=0)
            probabilities.append(_softmax(np.asarray(logits, "float64")))
        mean = np.mean(probabilities, axis=0).astype("float32")
        if return_single:
            return mean, probabilities[0].astype("float32")
        return mean

    def evaluate_ensemble(self, pixel_ids, labels, num_masks=4, seed=0, batch_size=None):
        """BERT only: accuracy of one mask and of the `num_masks` ensemble, and the gain.

        Returns:
            A dict with `"single_mask_accuracy"`, `"ensemble_accuracy"` and `"gain"`.
        """
        labels = np.asarray(labels).reshape(-1)
        if len(labels) != len(pixel_ids):
            raise ValueError(
                f"`labels` must have one label per image ({len(pixel_ids)}); received "
                f"{len(labels)}."
            )
        ensemble, single = self.predict_ensemble(pixel_ids, num_masks, seed, batch_size,
                                                 return_single=True)
        single_accuracy = float(np.mean(np.argmax(single, axis=1) == labels))
        ensemble_accuracy = float(np.mean(np.argmax(ensemble, axis=1) == labels))
        return {"single_mask_accuracy": single_accuracy, "ensemble_accuracy": ensemble_accuracy,
                "gain": ensemble_accuracy - single_accuracy}

    # --- Training ---

    def compile(self, optimizer="auto", loss="auto", metrics="auto", learning_rate=1e-4,
                **kwargs):
        """Compiles with fine-tuning defaults; every `"auto"` can be replaced.

        Args:
            optimizer: `"auto"` is Adam with `learning_rate` and beta_2 0.95
                (the paper's Adam setting).
            loss: `"auto"` is sparse categorical cross-entropy from logits
                (the auxiliary generative loss, if any, is added by the model).
            metrics: `"auto"` is accuracy.
            **kwargs: passed to `keras.Model.compile`.
        """
        if optimizer == "auto":
            optimizer = keras.optimizers.Adam(learning_rate=learning_rate, beta_2=0.95)
        if loss == "auto":
            loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        if metrics == "auto":
            metrics = [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)

    # --- Presets and serialisation ---

    @classmethod
    def from_generator(cls, generator, num_classes, **kwargs):
        """A classifier initialised from a pre-trained `ImageGPT`.

        The backbone (a copy) and, with `generative_loss_weight > 0`, the palette
        head keep the generator's weights; the class head is new. The
        objective, mask rate and palette default to the generator's.

        Args:
            generator: an `ImageGPT`.
            num_classes: int.
            **kwargs: other `ImageGPTClassifier` arguments.

        Returns:
            An `ImageGPTClassifier`.
        """
        if not isinstance(generator, ImageGPT):
            raise TypeError(
                f"`generator` must be an ImageGPT; received {type(generator).__name__}."
            )
        backbone = ImageGPTBackbone.from_config(generator.backbone.get_config())
        transfer_weights(generator.backbone, backbone)
        kwargs.setdefault("objective", generator.objective)
        kwargs.setdefault("mask_rate", generator.mask_rate)
        kwargs.setdefault("palette", generator.palette)
        model = cls(backbone, num_classes, **kwargs)
        if model.lm_head is not None:
            # A copy: JAX may donate (free) the buffers of a model being trained.
            kernel = generator.lm_head.kernel.value
            model.lm_head.kernel.assign(keras.ops.convert_to_numpy(kernel))
        return model

    derive_backbone_overrides = ImageGPT.derive_backbone_overrides

    @classmethod
    def from_preset(cls, preset, **kwargs):
        """Builds the classifier from a preset (an `ImageGPT` one gives a fresh head).

        Args:
            preset: a registered name, a directory written by `save_to_preset()`
                (of a classifier or of an `ImageGPT`), a transformers
                `save_pretrained()` directory or `"hf://org/name"`.
            **kwargs: the classifier's arguments (`num_classes` is needed unless
                the preset is a classifier; `dropout` is the head's) and
                backbone overrides (`backbone_config={"dropout": 0.1}`, or a
                name only the backbone takes), as for every task.

        Returns:
            An `ImageGPTClassifier`.
        """
        split_task_overrides(cls, kwargs)  # unknown names first
        kind, value = presets.resolve_preset(preset)
        if kind == "name" and "num_classes" not in value["config"] and (
            "num_classes" not in kwargs
        ):
            raise ValueError(
                f"Preset {preset!r} has no classification head: pass `num_classes`."
            )
        return super().from_preset(preset, **kwargs)

    @classmethod
    def _adopt(cls, model, preset, task_kwargs, backbone_kwargs):
        if isinstance(model, ImageGPT):
            if "num_classes" not in task_kwargs:
                raise ValueError(
                    f"Preset {preset!r} holds an ImageGPT, which has no classification "
                    "head: pass `num_classes`."
                )
            # The generator first takes the overrides it shares with the classifier (a
            # new objective changes its backbone's attention), then gives its weights.
            shared = {k: v for k, v in task_kwargs.items()
                      if k in ("objective", "mask_rate", "palette", "seed")}
            model = model.rebuild_with(backbone_kwargs, shared)
            return cls.from_generator(model, **task_kwargs)
        return super()._adopt(model, preset, task_kwargs, backbone_kwargs)

    def get_config(self):
        return self.base_config(
            num_classes=self.num_classes,
            palette=(None if self.palette is None
                     else keras.saving.serialize_keras_object(self.palette)),
            objective=self.objective,
            mask_rate=self.mask_rate,
            generative_loss_weight=self.generative_loss_weight,
            dropout=self.dropout,
            class_names=None if self.class_names is None else list(self.class_names),
            seed=self.seed,
        )


def _softmax(logits):
    logits = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)
