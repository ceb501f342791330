"""Loads Hugging Face `transformers` CLIP checkpoints (`CLIPModel.save_pretrained()`).

The vision tower becomes a CLIP-style `ViTBackbone` (its `post_layernorm` on
the class token is the backbone's final LayerNorm read at token 0), the text
tower a `CLIPTextEncoder`, and `visual_projection` / `text_projection` /
`logit_scale` the `CLIP` model's own weights. A `CLIPModel` checkpoint also
loads into `CLIPTextEncoder` or `ViTBackbone` alone (that tower only).
"""

import os

import numpy as np

from keras_vtx.constants import CLIP_MEAN as _DEFAULT_MEAN
from keras_vtx.constants import CLIP_STD as _DEFAULT_STD
from keras_vtx.convert.checkpoint_files import read_json, read_state_dict
from keras_vtx.convert.tensor_mapping import (
    DENSE,
    NORM,
    activation,
    assign_table,
    layer_table,
    pair,
    set_weight,
)

# keras_vtx layer (relative to the encoder) -> transformers module, and its parameters.
_BLOCK_LAYERS = (
    ("norm1", "layer_norm1", NORM),
    ("attention/query", "self_attn.q_proj", DENSE),
    ("attention/key", "self_attn.k_proj", DENSE),
    ("attention/value", "self_attn.v_proj", DENSE),
    ("attention/output", "self_attn.out_proj", DENSE),
    ("norm2", "layer_norm2", NORM),
    ("mlp/fc1", "mlp.fc1", DENSE),
    ("mlp/fc2", "mlp.fc2", DENSE),
)
_VISION_LAYERS = (
    ("patch_embedding/projection", "embeddings.patch_embedding", (("kernel", "weight", "conv"),)),
    ("class_token", "embeddings", (("class_token", "class_embedding", "token"),)),
    ("position_embedding", "embeddings.position_embedding", (("embeddings", "weight", None),)),
    ("pre_norm", "pre_layrnorm", NORM),  # sic: transformers' spelling
    ("final_norm", "post_layernorm", NORM),
)
_TEXT_LAYERS = (
    ("token_embedding", "embeddings.token_embedding", (("embeddings", "weight", None),)),
    ("position_embedding", "embeddings.position_embedding", (("embeddings", "weight", None),)),
    ("final_norm", "final_layer_norm", NORM),
)
# transformers' CLIPVisionConfig / CLIPTextConfig defaults (the ViT-B/32 model),
# used for keys a config.json leaves out.
_VISION_DEFAULTS = dict(
    hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    num_channels=3, image_size=224, patch_size=32, hidden_act="quick_gelu",
    layer_norm_eps=1e-5, attention_dropout=0.0,
)
_TEXT_DEFAULTS = dict(
    vocab_size=49408, hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
    num_attention_heads=8, max_position_embeddings=77, hidden_act="quick_gelu",
    layer_norm_eps=1e-5, attention_dropout=0.0, eos_token_id=49407,
)


def load_clip(path, config, cls, task_kwargs=None):
    """Builds `cls` from a transformers `CLIPModel` checkpoint.

    Args:
        path: a directory written by `CLIPModel.save_pretrained()`
            (`config.json`, `model.safetensors` or its shards or
            `pytorch_model.bin`, optionally `preprocessor_config.json`, whose
            `image_mean`/`image_std` become the model's normalisation).
        config: dict, the parsed `config.json`.
        cls: `CLIP`, `CLIPTextEncoder` (the text tower only) or `ViTBackbone`
            (the vision tower only).
        task_kwargs: unused (a CLIP checkpoint determines every argument);
            `from_preset` applies overrides afterwards.

    Returns:
        An instance of `cls` with the checkpoint's weights.
    """
    from keras_vtx.models.clip import CLIP, CLIPTextEncoder
    from keras_vtx.models.vit import ViTBackbone

    if not (isinstance(cls, type) and issubclass(cls, (CLIP, CLIPTextEncoder, ViTBackbone))):
        raise ValueError(
            "A transformers CLIP checkpoint loads into CLIP, CLIPTextEncoder or ViTBackbone; "
            f"received {getattr(cls, '__name__', cls)!r}."
        )
    weights = read_state_dict(path)
    vision_config = image_encoder_config_from_transformers(config.get("vision_config", {}))
    text_config = text_encoder_config_from_transformers(config.get("text_config", {}))
    image_encoder = ViTBackbone(**vision_config)
    text_encoder = CLIPTextEncoder(**text_config)
    tables = {
        "vision_model": layer_table(_VISION_LAYERS, _BLOCK_LAYERS, "encoder.layers.{i}",
                                    vision_config["num_layers"]),
        "text_model": layer_table(_TEXT_LAYERS, _BLOCK_LAYERS, "encoder.layers.{i}",
                                  text_config["num_layers"]),
    }
    expected = {f"{tower}.{key}" for tower, table in tables.items()
                for key, _ in table.values()}
    expected |= {"visual_projection.weight", "text_projection.weight", "logit_scale"}
    # `position_ids` buffers appear in checkpoints of older transformers versions.
    present = {k for k in weights if not k.endswith("embeddings.position_ids")}
    missing, unknown = sorted(expected - present), sorted(present - expected)
    if missing or unknown:
        raise ValueError(
            f"The CLIP checkpoint in {path!r} does not match its config.json: "
            f"missing keys {missing}, unexpected keys {unknown}."
        )
    assign_table(image_encoder, weights, tables["vision_model"], path, "vision_model.")
    assign_table(text_encoder, weights, tables["text_model"], path, "text_model.")

    if issubclass(cls, (CLIPTextEncoder, ViTBackbone)):
        encoder = text_encoder if issubclass(cls, CLIPTextEncoder) else image_encoder
        if type(encoder) is cls:
            return encoder
        from keras_vtx.models.backbone import transfer_weights

        model = cls(**encoder.get_config())  # a subclass of the tower's class
        transfer_weights(encoder, model)
        return model

    projection_dim = weights["visual_projection.weight"].shape[0]
    defaults = {"projection_dim": projection_dim, **_preprocessing(path)}
    model = cls(image_encoder, text_encoder, **defaults)
    set_weight(model.image_projection.kernel, weights["visual_projection.weight"].T,
         "visual_projection.weight", path)
    set_weight(model.text_projection.kernel, weights["text_projection.weight"].T,
         "text_projection.weight", path)
    set_weight(model.logit_scale, np.asarray(weights["logit_scale"]).reshape(()), "logit_scale", path)
    return model


def image_encoder_config_from_transformers(vision_config):
    """Maps a transformers `CLIPVisionConfig` dict to CLIP-style `ViTBackbone` arguments.

    Args:
        vision_config: dict, `config.json`'s `"vision_config"`.

    Returns:
        A dict of `ViTBackbone` constructor arguments.
    """
    c = {**_VISION_DEFAULTS, **vision_config}
    return dict(
        image_size=pair(c["image_size"]),
        patch_size=pair(c["patch_size"]),
        num_channels=c["num_channels"],
        pre_norm=True,
        patch_bias=False,
        pooling="token",
        **_transformer_config(c),
    )


def text_encoder_config_from_transformers(text_config):
    """Maps a transformers `CLIPTextConfig` dict to `CLIPTextEncoder` arguments.

    transformers reads the text feature at the first `eos_token_id`, except for
    the legacy value 2 of the early OpenAI configs, where it takes the largest
    id (the original implementation's `argmax`): that maps to
    `end_token_id=None`.

    Args:
        text_config: dict, `config.json`'s `"text_config"`.

    Returns:
        A dict of `CLIPTextEncoder` constructor arguments.
    """
    c = {**_TEXT_DEFAULTS, **text_config}
    end = c["eos_token_id"]
    return dict(
        vocabulary_size=c["vocab_size"],
        context_length=c["max_position_embeddings"],
        end_token_id=None if end == 2 or end is None else end,
        **_transformer_config(c),
    )


def _transformer_config(c):
    """The arguments both towers take, from a tower's (defaulted) transformers config."""
    return dict(
        num_layers=c["num_hidden_layers"],
        hidden_dim=c["hidden_size"],
        num_heads=c["num_attention_heads"],
        mlp_dim=c["intermediate_size"],
        attention_dropout=c["attention_dropout"],
        activation=activation(c["hidden_act"]),
        layer_norm_epsilon=c["layer_norm_eps"],
    )


def _preprocessing(path):
    """`include_preprocessing`, `mean` and `std` from `preprocessor_config.json`."""
    file = os.path.join(path, "preprocessor_config.json")
    processor = {}
    if os.path.exists(file):
        processor = read_json(file)
    if not processor.get("do_normalize", True):
        return {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}
    return {
        "mean": tuple(processor.get("image_mean", _DEFAULT_MEAN)),
        "std": tuple(processor.get("image_std", _DEFAULT_STD)),
    }
