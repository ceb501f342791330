"""Converters from reference checkpoint layouts (Hugging Face transformers)."""

import os


def load_transformers_checkpoint(path, cls, **kwargs):
    """Loads a transformers `save_pretrained()` directory as a keras_vtx `cls`.

    Dispatches on the `model_type` of `config.json`.
    """
    from keras_vtx.convert.checkpoint_files import read_json

    config = read_json(os.path.join(path, "config.json"))
    model_type = config.get("model_type")
    if model_type == "vit":
        from keras_vtx.convert.vit import load_vit

        return load_vit(path, config, cls, **kwargs)
    if model_type == "clip":
        from keras_vtx.convert.clip import load_clip

        return load_clip(path, config, cls, **kwargs)
    if model_type == "resnet":
        from keras_vtx.convert.resnet import load_resnet

        return load_resnet(path, config, cls, **kwargs)
    if model_type == "detr":
        from keras_vtx.convert.detr import load_detr

        return load_detr(path, config, cls, **kwargs)
    if model_type == "imagegpt":
        from keras_vtx.convert.igpt import load_imagegpt

        return load_imagegpt(path, config, cls, **kwargs)
    raise ValueError(
        f"Cannot convert a transformers checkpoint of model_type {model_type!r} "
        f"(from {path!r}) to {cls.__name__}; supported: 'vit', 'clip', 'detr', 'resnet', "
        "'imagegpt'."
    )
