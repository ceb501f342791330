"""Base class of task models (a backbone plus a head), with preset handling."""

import inspect

import keras

from keras_vtx.models import presets
from keras_vtx.models.backbone import load_saved_preset, transfer_weights


def build_optimizer_before_tracing(model):
    """Builds `model.optimizer` for its trainable variables, if TensorFlow would build it in the step.

    Without a distribution strategy, Keras' TensorFlow trainer builds the optimizer
    (its slot variables) inside the first trace of the training step, and a
    `tf.function` that creates variables is traced a second time: every first
    `fit()` on TensorFlow paid the tracing (and XLA's compilation) of the step
    twice. Building it beforehand, as Keras already does under a strategy and on
    JAX and PyTorch, leaves one trace. Nothing happens on other backends, under a
    distribution strategy (Keras builds in its scope), or while a layer is unbuilt
    (its variables do not exist yet).
    """
    if keras.backend.backend() != "tensorflow":
        return
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None or optimizer.built or getattr(model, "_distribute_strategy", None):
        return
    import tensorflow as tf

    if tf.distribute.has_strategy() or not all(
        layer.built for layer in model._flatten_layers()
    ):
        return
    optimizer.build(model.trainable_variables)


class OptimizerBuiltBeforeFit:
    """Mixin: `fit()` builds the optimizer before the training step is traced (see above)."""

    def fit(self, *args, **kwargs):
        build_optimizer_before_tracing(self)
        return super().fit(*args, **kwargs)


class TaskPresets:
    """Preset handling of task models (`from_preset`, `save_to_preset`, overrides).

    A plain mixin, not a `keras.Model`: Keras turns the base classes of a
    functional subclass into `Functional` subclasses the first time one is built
    (`inject_functional_model_class`), so a subclassed task (`DETR`) must not
    share a Keras base class with the functional ones (`ViTClassifier`); it
    combines this mixin with `keras.Model` instead of deriving from `Task`.
    """

    backbone_cls = None

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("backbone"), dict):
            config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        return cls(**config)

    @classmethod
    def _split_kwargs(cls, kwargs):
        backbone_args = set(inspect.signature(cls.backbone_cls.__init__).parameters) - {
            "self", "kwargs", "name", "dtype"
        }
        backbone_kwargs = {k: v for k, v in kwargs.items() if k in backbone_args}
        task_kwargs = {k: v for k, v in kwargs.items() if k not in backbone_args}
        return backbone_kwargs, task_kwargs

    @classmethod
    def from_preset(cls, preset, **kwargs):
        """Builds the task from a preset name, a preset directory or an `hf://` address.

        Args:
            preset: a registered name (random weights), a directory written by
                `save_to_preset()` or by transformers' `save_pretrained()`, or
                `"hf://org/name"`.
            **kwargs: overrides of the backbone's config (for example
                `image_size`) or the task's (for example `num_classes`). A new
                `num_classes` gives a freshly initialised head; a new image size
                resamples the position embeddings.

        Returns:
            A task instance.
        """
        backbone_kwargs, task_kwargs = cls._split_kwargs(kwargs)
        kind, value = presets.resolve_preset(preset)
        if kind == "name":
            config = dict(value["config"])
            if "backbone" not in config:
                backbone = cls.backbone_cls(**{**config, **backbone_kwargs})
                return cls(backbone=backbone, **task_kwargs)
            backbone = cls.backbone_cls(**{**config.pop("backbone"), **backbone_kwargs})
            config = _forget_class_names(config, task_kwargs)
            return cls(backbone=backbone, **{**config, **task_kwargs})
        if kind == "transformers":
            from keras_vtx.convert import load_transformers_checkpoint

            return load_transformers_checkpoint(value, cls, **kwargs)
        saved = load_saved_preset(value)
        if isinstance(saved, cls.backbone_cls):
            backbone = cls.backbone_cls.from_config({**saved.get_config(), **backbone_kwargs})
            transfer_weights(saved, backbone)
            return cls(backbone=backbone, **task_kwargs)
        if not isinstance(saved, cls):
            raise ValueError(
                f"Preset {preset!r} holds a {type(saved).__name__}, not a {cls.__name__}."
            )
        if not kwargs:
            return saved
        return saved.rebuild_with(backbone_kwargs, task_kwargs)

    def rebuild_with(self, backbone_kwargs, task_kwargs):
        """Returns a copy with config overrides, transferring every weight that still fits."""
        backbone = self.backbone_cls.from_config(
            {**self.backbone.get_config(), **backbone_kwargs}
        )
        transfer_weights(self.backbone, backbone)
        config = {k: v for k, v in self.get_config().items() if k != "backbone"}
        config = {k: v for k, v in config.items() if k not in ("name", "trainable", "dtype")}
        config = _forget_class_names(config, task_kwargs)
        model = type(self)(backbone=backbone, **{**config, **task_kwargs})
        backbone_ids = {id(v) for v in backbone.weights}
        own = [v for v in model.weights if id(v) not in backbone_ids]
        backbone_ids = {id(v) for v in self.backbone.weights}
        old = [v for v in self.weights if id(v) not in backbone_ids]
        if len(own) == len(old) and all(
            tuple(a.shape) == tuple(b.shape) for a, b in zip(own, old)
        ):
            for a, b in zip(own, old):
                a.assign(b.value)
        return model

    def save_to_preset(self, path, overwrite=False):
        """Writes the config and weights to the directory `path` (reload with `from_preset`).

        The weights' SHA-256 is recorded and checked on loading. A directory
        that already holds a preset is only replaced with `overwrite=True`.
        """
        presets.save_preset(self, path, overwrite=overwrite)


class Task(OptimizerBuiltBeforeFit, TaskPresets, keras.Model):
    """Base class of task models: a `backbone` and a head, built functionally.

    Subclasses set `backbone_cls`, build their graph in `__init__`, store every
    argument, and may override `compile()` with their defaults.
    """

    def __call__(self, *args, **kwargs):
        if args:
            self.backbone.validate_inputs(args[0])
        return super().__call__(*args, **kwargs)


def _forget_class_names(config, task_kwargs):
    # A new `num_classes` without new `class_names` makes the old names meaningless.
    if "num_classes" in task_kwargs and "class_names" not in task_kwargs and (
        task_kwargs["num_classes"] != config.get("num_classes")
    ):
        config = {k: v for k, v in config.items() if k != "class_names"}
    return config
