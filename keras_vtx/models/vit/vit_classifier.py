import keras

from keras_vtx.layers import ImageNormalization
from keras_vtx.models.task import Task
from keras_vtx.models.training_defaults import (
    adamw,
    check_class_names,
    no_decay_variables,
    warmup_cosine_schedule,
)
from keras_vtx.models.vit.vit_backbone import ViTBackbone

# ViT's additions to the no-decay rule (keras_vtx.models.training_defaults): the
# position embeddings, the class token and the MAP head's probe.
NO_DECAY_NAMES = ("position_embedding", "class_token", "probe")


@keras.saving.register_keras_serializable(package="keras_vtx")
class ViTClassifier(Task):
    """An image classifier: a `ViTBackbone`, its pooled output and a linear head.

    Args:
        backbone: a `ViTBackbone`.
        num_classes: int, number of classes.
        head_dropout: float, dropout before the head.
        activation: None for logits (the default, matching the default loss) or
            `"softmax"`.
        include_preprocessing: bool; if True the model takes raw pixels in
            [0, 255] and rescales them with `mean`/`std` (the preset's).
        mean: per-channel mean of the normalisation (after scaling to [0, 1]).
        std: per-channel std of the normalisation.
        head_initializer: initializer of the head kernel; zeros as in the ViT
            paper's fine-tuning.
        class_names: optional sequence of `num_classes` strings naming the
            classes (kept in the config and in saved presets; converted
            checkpoints fill it from their `id2label`).
        dtype: dtype or dtype policy; the head always produces float32 logits.

    Call arguments:
        images: `(batch, height, width, channels)`, raw pixels if
            `include_preprocessing`, else normalised.

    Returns:
        Logits `(batch, num_classes)` in float32.

    Example:
    >>> backbone = ViTBackbone(image_size=32, patch_size=8, num_layers=1,
    ...                        hidden_dim=16, num_heads=2, mlp_dim=32)
    >>> model = ViTClassifier(backbone, num_classes=5)
    >>> tuple(model(keras.ops.zeros((2, 32, 32, 3))).shape)
    (2, 5)
    """

    backbone_cls = ViTBackbone

    def __init__(
        self,
        backbone,
        num_classes=1000,
        head_dropout=0.0,
        activation=None,
        include_preprocessing=False,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        head_initializer="zeros",
        class_names=None,
        dtype=None,
        **kwargs,
    ):
        if not isinstance(backbone, ViTBackbone):
            raise TypeError(
                f"`backbone` must be a ViTBackbone; received {type(backbone).__name__}."
            )
        if int(num_classes) <= 0:
            raise ValueError(f"`num_classes` must be a positive int; received {num_classes}.")
        if activation not in (None, "softmax"):
            raise ValueError(f"`activation` must be None or 'softmax'; received {activation!r}.")
        class_names = check_class_names(class_names, num_classes)
        images = keras.Input(shape=backbone.input_shape[1:], name="images")
        x = images
        if include_preprocessing:
            x = ImageNormalization(1 / 255.0, mean, std, dtype=dtype, name="preprocessing")(x)
        pooled = backbone(x)["pooled_output"]
        pooled = keras.layers.Dropout(head_dropout, dtype=dtype, name="head_dropout")(pooled)
        # float32 head: logits that feed the loss stay float32 under mixed precision.
        logits = keras.layers.Dense(
            num_classes,
            activation=activation,
            kernel_initializer=head_initializer,
            dtype="float32",
            name="head",
        )(pooled)
        super().__init__(inputs=images, outputs=logits, dtype=dtype, **kwargs)
        self.backbone = backbone
        self.num_classes = int(num_classes)
        self.head_dropout = head_dropout
        self.activation = activation
        self.include_preprocessing = include_preprocessing
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.head_initializer = keras.initializers.serialize(
            keras.initializers.get(head_initializer)
        )
        self.class_names = class_names

    @classmethod
    def _adopt(cls, model, preset, task_kwargs, backbone_kwargs):
        backbone = getattr(model, "backbone", None)
        if not isinstance(model, cls) and isinstance(backbone, ViTBackbone):
            # Another ViT task (a `ViTMaskedPatchPredictor`, which takes raw pixels):
            # its backbone and normalisation under a fresh head.
            inherited = {"include_preprocessing": True, "mean": model.mean, "std": model.std}
            return cls(backbone=backbone, **{**inherited, **task_kwargs})
        return super()._adopt(model, preset, task_kwargs, backbone_kwargs)

    def compile(
        self,
        optimizer="auto",
        loss="auto",
        metrics="auto",
        learning_rate=1e-3,
        weight_decay=0.05,
        warmup_steps=500,
        total_steps=10_000,
        label_smoothing=0.0,
        global_clipnorm=1.0,
        head_weight_decay=None,
        **kwargs,
    ):
        """Compiles with ViT's training defaults; every `"auto"` can be replaced.

        Args:
            optimizer: `"auto"` is AdamW with `learning_rate` reached after a linear
                warm-up of `warmup_steps` then cosine decay to 0 at `total_steps`,
                `weight_decay` (not on biases, norms, tokens and position
                embeddings) and global gradient clipping at `global_clipnorm`.
                `"adafactor"` is the same schedule, exclusions and clipping with
                the modified Adafactor of "Scaling Vision Transformers"
                (`ScalingViTAdafactor`: factored second moment, bfloat16
                momentum, about a quarter of AdamW's optimizer memory), its decoupled
                decay `weight_decay` on the body and `head_weight_decay` (default:
                `weight_decay`) on the head, both multiplied by the learning rate
                (the paper: 0.03 and 3.0).
            loss: `"auto"` is sparse categorical cross-entropy from logits, with
                `label_smoothing` (one-hot labels, as MixUp/CutMix produce, get the
                dense cross-entropy: pass `loss="categorical"`).
            metrics: `"auto"` is accuracy and top-5 accuracy.
            **kwargs: passed to `keras.Model.compile` (for example `jit_compile`).
        """
        from_logits = self.activation is None
        if optimizer == "adafactor":
            from keras_vtx.models.vit.vit_adafactor import ScalingViTAdafactor

            optimizer = ScalingViTAdafactor(
                learning_rate=warmup_cosine_schedule(learning_rate, total_steps, warmup_steps),
                weight_decay=weight_decay,
                head_weight_decay=weight_decay if head_weight_decay is None
                else head_weight_decay,
                global_clipnorm=global_clipnorm,
            )
            optimizer.exclude_from_weight_decay(
                var_list=no_decay_variables(self, NO_DECAY_NAMES))
            optimizer.set_head_variables(self.get_layer("head").trainable_variables)
        elif head_weight_decay is not None:
            raise ValueError(
                "`head_weight_decay` is an option of `optimizer='adafactor'`; received "
                f"optimizer={optimizer!r}."
            )
        if optimizer == "auto":
            optimizer = adamw(self, learning_rate, total_steps, warmup_steps, weight_decay,
                              NO_DECAY_NAMES, global_clipnorm=global_clipnorm)
        dense_labels = loss == "categorical"
        if loss in ("auto", "categorical"):
            if dense_labels:
                loss = keras.losses.CategoricalCrossentropy(
                    from_logits=from_logits, label_smoothing=label_smoothing
                )
            elif label_smoothing:
                loss = _SparseSmoothedCrossentropy(label_smoothing, from_logits, self.num_classes)
            else:
                loss = keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits)
        if metrics == "auto":
            k = min(5, self.num_classes)
            if dense_labels:
                metrics = [
                    keras.metrics.CategoricalAccuracy(name="accuracy"),
                    keras.metrics.TopKCategoricalAccuracy(k, name=f"top{k}_accuracy"),
                ]
            else:
                metrics = [
                    keras.metrics.SparseCategoricalAccuracy(name="accuracy"),
                    keras.metrics.SparseTopKCategoricalAccuracy(k, name=f"top{k}_accuracy"),
                ]
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            "num_classes": self.num_classes,
            "head_dropout": self.head_dropout,
            "activation": self.activation,
            "include_preprocessing": self.include_preprocessing,
            "mean": self.mean,
            "std": self.std,
            "head_initializer": self.head_initializer,
            "class_names": None if self.class_names is None else list(self.class_names),
        }


@keras.saving.register_keras_serializable(package="keras_vtx")
class _SparseSmoothedCrossentropy(keras.losses.Loss):
    """Sparse labels with label smoothing (Keras' sparse loss has no smoothing)."""

    def __init__(self, label_smoothing, from_logits, num_classes, **kwargs):
        super().__init__(**kwargs)
        self.label_smoothing = label_smoothing
        self.from_logits = from_logits
        self.num_classes = num_classes

    def call(self, y_true, y_pred):
        y_true = keras.ops.one_hot(
            keras.ops.reshape(keras.ops.cast(y_true, "int32"), (-1,)), self.num_classes
        )
        return keras.losses.categorical_crossentropy(
            y_true, keras.ops.cast(y_pred, "float32"), from_logits=self.from_logits,
            label_smoothing=self.label_smoothing,
        )

    def get_config(self):
        return {
            **super().get_config(),
            "label_smoothing": self.label_smoothing,
            "from_logits": self.from_logits,
            "num_classes": self.num_classes,
        }
