"""Finding the ViT image encoder inside the package's models, with its input preprocessing."""


def resolve_vit(model, need_attention=False, name="model"):
    """Returns `(backbone, preprocess)` for a model with a ViT image encoder.

    Args:
        model: a `ViTBackbone`, a `ViTClassifier`, a `CLIP` (its image tower)
            or a `ZeroShotClassifier` (its CLIP's image tower).
        need_attention: bool, raise a clear error unless the backbone was
            built with `return_attention_scores=True`.
        name: the argument's name, for error messages.

    Returns:
        The `ViTBackbone`, and a function taking images as `model` takes them
        (raw pixels when it has `include_preprocessing`) and returning the
        backbone's inputs.
    """
    from keras_vtx.models.clip import CLIP, ZeroShotClassifier
    from keras_vtx.models.vit import ViTBackbone, ViTClassifier

    preprocessing = None
    how = "`ViTBackbone(..., return_attention_scores=True)` or `from_preset(name, " \
        "return_attention_scores=True)`"
    if isinstance(model, ZeroShotClassifier):
        model = model.clip
    if isinstance(model, ViTBackbone):
        backbone = model
    elif isinstance(model, ViTClassifier):
        backbone = model.backbone
        if model.include_preprocessing:
            preprocessing = model.get_layer("preprocessing")
        how = "`ViTClassifier.from_preset(name, return_attention_scores=True)`"
    elif isinstance(model, CLIP):
        backbone = model.image_encoder
        preprocessing = model.preprocessing
        how = "`CLIP.from_preset(name, image_encoder={'return_attention_scores': True})`"
    else:
        raise TypeError(
            f"`{name}` must be a ViTBackbone, ViTClassifier, CLIP or ZeroShotClassifier; "
            f"received {type(model).__name__}."
        )
    if need_attention and not backbone.return_attention_scores:
        raise ValueError(
            f"`{name}` was built without attention outputs: its ViT backbone has "
            f"`return_attention_scores=False`. Build it with {how} (weights are kept)."
        )

    def preprocess(images):
        return preprocessing(images) if preprocessing is not None else images

    return backbone, preprocess
