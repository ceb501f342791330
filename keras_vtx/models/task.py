"""Base class of task models (a backbone plus a head), with preset handling."""

import warnings

import keras

from keras_vtx.backend import build_optimizer_before_tracing, default_jit_compile
from keras_vtx.models import presets
from keras_vtx.models.backbone import (
    Backbone,
    get_model_class,
    layer_config,
    load_saved_preset,
    transfer_weights,
)
from keras_vtx.models.overrides import split_task_overrides


class OptimizerBuiltBeforeFit:
    """Mixin: `fit()` builds the optimizer before the training step is traced.

    See `keras_vtx.backend.build_optimizer_before_tracing`: TensorFlow would
    otherwise trace (and compile) the first training step twice.
    """

    def fit(self, *args, **kwargs):
        build_optimizer_before_tracing(self)
        return super().fit(*args, **kwargs)


class ObjectiveLoss:
    """Mixin of tasks whose loss is their own objective (`ImageGPT`, `ViTMaskedPatchPredictor`).

    `compile` takes no other loss and no sample weights, and compiles the training
    step with XLA by default where the backend has it; the subclass states what its
    loss is (`objective_description`) and computes it in `objective_loss(x, y_pred)`.
    """

    objective_description = "its objective"

    def compile_objective(self, optimizer, loss, metrics, jit_compile, **kwargs):
        """`keras.Model.compile` with the objective's loss; `loss` must be `"auto"`."""
        if loss != "auto":
            raise ValueError(
                f"{type(self).__name__}'s loss is {self.objective_description}: `loss` must "
                f"be 'auto'; received {loss!r}."
            )
        if jit_compile == "auto":
            jit_compile = default_jit_compile()
        keras.Model.compile(self, optimizer=optimizer, loss=None, metrics=metrics,
                            jit_compile=jit_compile, **kwargs)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        del y, training  # labels, when the data set has them, are ignored
        if sample_weight is not None:
            raise ValueError(
                f"{type(self).__name__}'s loss takes no `sample_weight`; received a value."
            )
        loss = self.objective_loss(x, y_pred)
        for extra in self.losses:
            loss = loss + keras.ops.cast(keras.ops.sum(extra), "float32")
        return loss


class TaskPresets:
    """Preset handling of task models (`from_preset`, `save_to_preset`, overrides).

    A plain mixin, not a `keras.Model`: Keras turns the base classes of a
    functional subclass into `Functional` subclasses the first time one is built
    (`inject_functional_model_class`), so a subclassed task (`DETR`) must not
    share a Keras base class with the functional ones (`ViTClassifier`); it
    combines this mixin with `keras.Model` instead of deriving from `Task`.
    """

    backbone_cls = None
    # Arguments that `from_preset` passes to every backbone (see `overrides`).
    shared_backbone_arguments = ()
    # Whether rebuilding with overrides warns about weights that start from random values.
    warn_on_fresh_weights = False

    @classmethod
    def preset_backbones(cls):
        """Maps each backbone's constructor argument to its class (`{"backbone": ...}`)."""
        return {"backbone": cls.backbone_cls}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in cls.preset_backbones():
            if isinstance(config.get(key), dict):
                config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)

    def base_config(self, **config):
        """`get_config()`'s dict: name, trainable, dtype, the serialised backbones, `config`."""
        backbones = {key: keras.saving.serialize_keras_object(getattr(self, key))
                     for key in self.preset_backbones()}
        return layer_config(self, **backbones, **config)

    @classmethod
    def from_preset(cls, preset, **kwargs):
        """Builds the task from a preset name, a preset directory or an `hf://` address.

        Args:
            preset: a registered name (random weights), a directory written by
                `save_to_preset()` (of this task or of its backbone, which then
                gets a fresh head), a directory written by transformers'
                `save_pretrained()`, or `"hf://org/name"`.
            **kwargs: overrides. The task's own constructor arguments (for
                example `num_classes`, `activation`, `dropout`) go to the task;
                `backbone_config={...}` overrides the backbone's config, and a
                name that only the backbone takes (for example `image_size`)
                goes to it too. An unknown name is an error that lists the
                valid ones. A new `num_classes` gives a freshly initialised
                head; a new image size resamples the position embeddings.

        Returns:
            A task instance.
        """
        task_kwargs, backbone_kwargs = split_task_overrides(cls, kwargs)
        kind, value = presets.resolve_preset(preset)
        if kind == "name":
            return cls._from_registered(preset, value, task_kwargs, backbone_kwargs)
        if kind == "transformers":
            from keras_vtx.convert import load_transformers_checkpoint

            model = load_transformers_checkpoint(value, cls, task_kwargs)
        else:
            model = load_saved_preset(value)
        model = cls._adopt(model, preset, task_kwargs, backbone_kwargs)
        return model.rebuild_with(backbone_kwargs, task_kwargs)

    @classmethod
    def _from_registered(cls, preset, entry, task_kwargs, backbone_kwargs):
        backbones = cls.preset_backbones()
        config = dict(entry["config"])
        registered = get_model_class(entry["class_name"])
        # This task, its backbone, or a task over the same backbones (an ImageGPT
        # preset gives an ImageGPTClassifier its backbone).
        if issubclass(registered, Backbone):
            compatible = len(backbones) == 1 and issubclass(registered, cls.backbone_cls)
            config = {"backbone": config}
        else:
            compatible = issubclass(registered, cls) or (
                registered.preset_backbones() == backbones)
        if not compatible:
            raise ValueError(
                f"Preset {preset!r} builds a {entry['class_name']}, not a {cls.__name__} "
                "or its backbone."
            )
        for key, backbone_cls in backbones.items():
            config[key] = backbone_cls(**{**config[key], **backbone_kwargs.get(key, {})})
        config = _forget_class_names(config, task_kwargs)
        return cls(**{**config, **task_kwargs})

    @classmethod
    def _adopt(cls, model, preset, task_kwargs, backbone_kwargs):
        """Turns a loaded model into a `cls`: itself, or its backbone with a fresh head.

        `backbone_kwargs` are applied afterwards by `rebuild_with`; a task that
        adopts another task (`ImageGPTClassifier` an `ImageGPT`) may need them first.
        """
        if isinstance(model, cls):
            return model
        if len(cls.preset_backbones()) == 1 and isinstance(model, cls.backbone_cls):
            return cls(backbone=model, **task_kwargs)
        raise ValueError(
            f"Preset {preset!r} holds a {type(model).__name__}, not a {cls.__name__}."
        )

    def rebuild_with(self, backbone_kwargs, task_kwargs):
        """Returns the model with config overrides, keeping every weight that still fits.

        Args:
            backbone_kwargs: dict keyed like `preset_backbones()` (`"backbone"`,
                or CLIP's `"image_encoder"` and `"text_encoder"`) of dicts of
                overrides of that backbone's config.
            task_kwargs: dict of overrides of the task's own arguments.

        Returns:
            `self` when no override changes anything; otherwise a new model.
            The backbones' weights move with `transfer_weights` (which
            resamples position embeddings for a new image size); the task's
            own weights are copied where their names and shapes still match
            (a new `num_classes` gives a fresh head).
        """
        backbones = self.preset_backbones()
        unknown = sorted(set(backbone_kwargs) - set(backbones))
        if unknown:
            raise ValueError(
                f"`backbone_kwargs` must be keyed by {sorted(backbones)}; received {unknown}."
            )
        config = self.get_config()
        same = presets.same_config_value
        task_changes = {k: v for k, v in task_kwargs.items() if not same(config.get(k), v)}
        backbone_changes = {
            key: {k: v for k, v in backbone_kwargs.get(key, {}).items()
                  if not same(getattr(self, key).get_config().get(k), v)}
            for key in backbones
        }
        if not task_changes and not any(backbone_changes.values()):
            return self
        new_backbones = {}
        for key in backbones:
            old = getattr(self, key)
            new_backbones[key] = type(old).from_config(
                {**old.get_config(), **backbone_kwargs.get(key, {})}
            )
            transfer_weights(old, new_backbones[key])
        config = {k: v for k, v in config.items()
                  if k not in backbones and k not in ("name", "trainable", "dtype")}
        config = _forget_class_names(config, task_kwargs)
        model = type(self)(**new_backbones, **{**config, **task_kwargs})
        fresh = _copy_own_weights(self, model, backbones)
        if fresh and self.warn_on_fresh_weights:
            changes = {**{k: v for d in backbone_changes.values() for k, v in d.items()},
                       **task_changes}
            changes = ", ".join(f"{k}={v!r}" for k, v in changes.items() if k != "class_names")
            warnings.warn(
                f"{type(self).__name__} with {changes}: {', '.join(fresh)} changed shape or "
                "are new, and start from random values; every other weight is kept.",
                stacklevel=3,
            )
        model._finish_rebuild(self)
        return model

    def _finish_rebuild(self, source):
        """Hook after `rebuild_with` copied the weights of `source` (CLIP clips its scale)."""

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


def _relative_path(variable, model):
    """A variable's path without the model's own name (a rebuilt model gets a new one)."""
    prefix = model.name + "/"
    return variable.path[len(prefix):] if variable.path.startswith(prefix) else variable.path


def _copy_own_weights(source, target, backbones):
    """Copies the task's own (non-backbone) weights; returns the paths left fresh.

    In creation order when both models have the same own weights' shapes; by
    path (without the model's name) and shape otherwise.
    """
    def own(model):
        skip = {id(v) for key in backbones for v in getattr(model, key).weights}
        return [v for v in model.weights if id(v) not in skip]

    old, new = own(source), own(target)
    if len(old) == len(new) and all(tuple(a.shape) == tuple(b.shape) for a, b in zip(old, new)):
        for a, b in zip(new, old):
            a.assign(b.value)
        return []
    by_path = {_relative_path(v, source): v for v in old}
    fresh = []
    for variable in new:
        key = _relative_path(variable, target)
        match = by_path.get(key)
        if match is not None and tuple(match.shape) == tuple(variable.shape):
            variable.assign(match.value)
        elif not key.endswith("seed_generator_state"):
            fresh.append(key)
    return fresh


def _forget_class_names(config, task_kwargs):
    # A new `num_classes` without new `class_names` makes the old names meaningless.
    if "num_classes" in task_kwargs and "class_names" not in task_kwargs and (
        task_kwargs["num_classes"] != config.get("num_classes")
    ):
        config = {k: v for k, v in config.items() if k != "class_names"}
    return config
