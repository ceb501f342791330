"""Base class of the feature-extracting models, with preset loading and saving."""

import keras

from keras_vtx.models import presets
from keras_vtx.models.overrides import check_backbone_overrides


def get_model_class(class_name):
    """Returns the registered keras_vtx model class called `class_name`."""
    cls = keras.saving.get_registered_object(f"keras_vtx>{class_name}")
    if cls is None:
        raise ValueError(f"No keras_vtx model class is called {class_name!r}.")
    return cls


def load_saved_preset(path):
    """Rebuilds the model saved in a `save_to_preset()` directory, weights included."""
    record = presets.read_preset_record(path)
    presets.check_preset_files(path, record)
    model = get_model_class(record["class_name"]).from_config(record["config"])
    weights = f"{path}/{presets.WEIGHTS_FILE}"
    try:
        model.load_weights(weights)
    except (OSError, ValueError) as e:  # h5py's messages name no file
        raise ValueError(
            f"Could not read the weights {weights!r} of the preset {path!r} ({e}): the file is "
            "truncated, damaged or from another model; save the preset again."
        ) from e
    return model


def transfer_weights(source, target):
    """Copies weights from `source` to `target`, two models of the same architecture.

    A variable whose shape differs is passed to `target.adapt_weight()`, which
    resamples what can be resampled (ViT position embeddings) and raises for
    anything else.
    """
    src, dst = source.weights, target.weights
    if len(src) != len(dst):
        raise ValueError(
            f"Cannot transfer weights: the source has {len(src)} variables and the target "
            f"{len(dst)}; the architectures differ beyond what a preset override may change."
        )
    for s, d in zip(src, dst):
        value = keras.ops.convert_to_numpy(s.value)
        if tuple(s.shape) != tuple(d.shape):
            value = target.adapt_weight(d, value, source)
        d.assign(value)


def _registered_backbone_config(cls, preset, entry):
    """The config of `cls` in a registered preset: its own, or the part of a task's."""
    if issubclass(get_model_class(entry["class_name"]), Backbone):
        return entry["config"]
    task = get_model_class(entry["class_name"])
    keys = [key for key, part in task.preset_backbones().items() if issubclass(part, cls)
            or issubclass(cls, part)]
    if len(keys) != 1:
        raise ValueError(
            f"Preset {preset!r} builds a {entry['class_name']}, which holds no {cls.__name__}."
        )
    return entry["config"][keys[0]]


def _backbone_of(model, cls, preset):
    """`model` if it is a `cls`, else the one part of the task `model` that is."""
    if isinstance(model, cls):
        return model
    parts = [getattr(model, key) for key in getattr(model, "preset_backbones", dict)()]
    parts = [part for part in parts if isinstance(part, cls)]
    if len(parts) != 1:
        raise ValueError(
            f"Preset {preset!r} holds a {type(model).__name__}, not a {cls.__name__}."
        )
    return parts[0]


def layer_config(layer, **config):
    """Keras' own config entries of `layer` (name, trainable, dtype policy), then `config`."""
    return {
        "name": layer.name,
        "trainable": layer.trainable,
        "dtype": keras.dtype_policies.serialize(layer.dtype_policy),
        **config,
    }


def checked_shape(inputs, name, axes, expected):
    """`inputs`' shape as a tuple, or an error naming `name` unless it is a tensor of rank `len(axes)`.

    Args:
        inputs: what a model was called with.
        name: the input's name (`"images"`).
        axes: the axes' names, for the message (`("batch", "height", "width", "channels")`).
        expected: the expected shape in words, for the message.
    """
    shape = getattr(inputs, "shape", None)
    if isinstance(inputs, dict) or shape is None:
        raise TypeError(
            f"`{name}` must be a tensor of shape {expected}; received {type(inputs).__name__}."
        )
    shape = tuple(shape)
    if len(shape) != len(axes):
        raise ValueError(
            f"`{name}` must have rank {len(axes)} ({', '.join(axes)}); received shape {shape}."
        )
    return shape


class Backbone(keras.Model):
    """Base class of backbones: functional models built from a config.

    Subclasses build their graph in `__init__` and call
    `super().__init__(inputs=..., outputs=...)`; they store every constructor
    argument and return it from `get_config()`.
    """

    def __call__(self, *args, **kwargs):
        if args:
            self.validate_inputs(args[0])
        return super().__call__(*args, **kwargs)

    def validate_inputs(self, inputs):
        """Raises a clear `ValueError` for inputs the model cannot take."""

    def adapt_weight(self, variable, value, source):
        raise ValueError(
            f"Weight {variable.path!r} has shape {tuple(variable.shape)} here but "
            f"{tuple(value.shape)} in the preset, and cannot be adapted."
        )

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def base_config(self, **config):
        """`get_config()`'s dict: Keras' name, trainable and dtype, then `config`."""
        return layer_config(self, **config)

    @classmethod
    def from_preset(cls, preset, **kwargs):
        """Builds the backbone from a preset name, a preset directory or `hf://` address.

        Args:
            preset: a registered name (random weights), a directory written by
                `save_to_preset()` (of this backbone or of a task holding one,
                whose backbone is returned), a directory written by
                transformers' `save_pretrained()`, or `"hf://org/name"`.
            **kwargs: config overrides, names of this class's constructor
                arguments (for example `image_size=384`, which resamples the
                position embeddings of loaded weights); an unknown name is an
                error that lists the valid ones.

        Returns:
            A backbone instance.
        """
        check_backbone_overrides(cls, kwargs)
        kind, value = presets.resolve_preset(preset)
        if kind == "name":
            config = _registered_backbone_config(cls, preset, value)
            return cls(**{**config, **kwargs})
        if kind == "transformers":
            from keras_vtx.convert import load_transformers_checkpoint

            model = load_transformers_checkpoint(value, cls)
        else:
            model = _backbone_of(load_saved_preset(value), cls, preset)
        config = model.get_config()
        if all(k in config and presets.same_config_value(config[k], v)
               for k, v in kwargs.items()):
            return model
        rebuilt = cls.from_config({**config, **kwargs})
        transfer_weights(model, rebuilt)
        return rebuilt

    def save_to_preset(self, path, overwrite=False):
        """Writes the config and weights to the directory `path` (reload with `from_preset`).

        The weights' SHA-256 is recorded and checked on loading. A directory
        that already holds a preset is only replaced with `overwrite=True`.
        """
        presets.save_preset(self, path, overwrite=overwrite)
