"""Converters from reference checkpoint layouts (Hugging Face transformers).

Every converter follows one contract, `load_<family>(path, config, cls,
task_kwargs=None)`:

- `path` is a `save_pretrained()` directory and `config` its parsed `config.json`;
- it builds the model at the checkpoint's own config (a backbone when `cls` is a
  backbone class, else the family's task, which names the class it builds) and
  ports every weight, raising a clear error that names the file and tensor for
  anything that does not fit;
- `task_kwargs`, the task arguments the caller gave, are read only where the
  checkpoint leaves a value open (the `num_classes` of a new head on a headless
  ViT checkpoint);
- it applies no overrides: `from_preset` applies them afterwards, the same way
  for every family and for keras_vtx presets (`Backbone.from_preset`,
  `TaskPresets.rebuild_with`).
"""

import os


def load_transformers_checkpoint(path, cls, task_kwargs=None):
    """Loads a transformers `save_pretrained()` directory as a keras_vtx `cls`.

    Dispatches on the `model_type` of `config.json`; see the contract above.
    """
    from keras_vtx.convert.checkpoint_files import read_json

    config = read_json(os.path.join(path, "config.json"))
    model_type = config.get("model_type")
    if model_type == "vit":
        from keras_vtx.convert.vit import load_vit

        return load_vit(path, config, cls, task_kwargs)
    if model_type == "clip":
        from keras_vtx.convert.clip import load_clip

        return load_clip(path, config, cls, task_kwargs)
    if model_type == "resnet":
        from keras_vtx.convert.resnet import load_resnet

        return load_resnet(path, config, cls, task_kwargs)
    if model_type == "detr":
        from keras_vtx.convert.detr import load_detr

        return load_detr(path, config, cls, task_kwargs)
    if model_type == "imagegpt":
        from keras_vtx.convert.igpt import load_imagegpt

        return load_imagegpt(path, config, cls, task_kwargs)
    raise ValueError(
        f"Cannot convert a transformers checkpoint of model_type {model_type!r} "
        f"(from {path!r}) to {cls.__name__}; supported: 'vit', 'clip', 'detr', 'resnet', "
        "'imagegpt'."
    )
