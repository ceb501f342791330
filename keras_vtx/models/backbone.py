"""Base class of the feature-extracting models, with preset loading and saving."""

import keras

from keras_vtx.models import presets


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


class Backbone(keras.Model):
    """Base class of backbones: functional models built from a config.

    Subclasses build their graph in `__init__` and call
    `super().__init__(inputs=..., outputs=...)`; they store every constructor
    argument and return it from `get_config()`.
    """

    # Where a task's config and attributes hold this backbone: `from_preset`
    # given a task's preset (a classifier, a CLIP model) returns that part.
    preset_key = "backbone"

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

    @classmethod
    def from_preset(cls, preset, **kwargs):
        """Builds the backbone from a preset name, a preset directory or `hf://` address.

        Args:
            preset: a registered name (random weights), a directory written by
                `save_to_preset()` or by transformers' `save_pretrained()`, or
                `"hf://org/name"`.
            **kwargs: config overrides (for example `image_size=384`, which
                resamples the position embeddings of loaded weights).

        Returns:
            A backbone instance.
        """
        kind, value = presets.resolve_preset(preset)
        if kind == "name":
            config = value["config"]
            config = config.get(cls.preset_key, config)
            return cls(**{**config, **kwargs})
        if kind == "transformers":
            from keras_vtx.convert import load_transformers_checkpoint

            model = load_transformers_checkpoint(value, cls, **kwargs)
            return model
        saved = load_saved_preset(value)
        saved = getattr(saved, cls.preset_key, saved)
        if not isinstance(saved, cls):
            raise ValueError(
                f"Preset {preset!r} holds a {type(saved).__name__}, not a {cls.__name__}."
            )
        if not kwargs:
            return saved
        model = cls(**{**saved.get_config(), **kwargs})
        transfer_weights(saved, model)
        return model

    def save_to_preset(self, path, overwrite=False):
        """Writes the config and weights to the directory `path` (reload with `from_preset`).

        The weights' SHA-256 is recorded and checked on loading. A directory
        that already holds a preset is only replaced with `overwrite=True`.
        """
        presets.save_preset(self, path, overwrite=overwrite)
