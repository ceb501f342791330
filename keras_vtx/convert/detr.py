"""Loads Hugging Face `transformers` DETR checkpoints (`DetrForObjectDetection`).

Both backbone layouts are read: a transformers `ResNetConfig` backbone
(`use_timm_backbone=False`, keys `model.backbone.conv_encoder.model.embedder...`)
and the timm layout of the published `facebook/detr-resnet-50` /
`-101` (+ `-dc5`) checkpoints (`use_timm_backbone=True`, keys
`model.backbone.conv_encoder.model.conv1.weight`, `layer1.0.downsample.0...`).

DETR semantics, not transformers' `auxiliary_loss` quirk: with
`auxiliary_loss=True`, transformers feeds each decoder layer the output of the
shared final LayerNorm (and normalises the last output twice), which changes
its `logits`. keras_vtx follows facebookresearch/detr (`models/transformer.py`):
the final norm is applied to each layer's output for the predictions only.
The weights are the same either way; outputs equal transformers' with
`auxiliary_loss=False` (the published checkpoints' setting).
"""


import numpy as np

from keras_vtx.convert.checkpoint_files import read_state_dict
from keras_vtx.convert.resnet import load_resnet_weights, resnet_config_from_transformers
from keras_vtx.convert.tensor_mapping import (
    TRANSFORMS,
    canonical_names,
    class_names,
    config_values,
    require_settings,
)

BACKBONE_PREFIX = "model.backbone.conv_encoder.model."
# transformers 5 names modules differently in memory (`model.state_dict()`) than
# `save_pretrained()` and the Hub (transformers 4 names): both are read.
_IN_MEMORY_NAMES = (
    (r"^model\.backbone\.model\.", BACKBONE_PREFIX),
    (r"\.(self_attn|encoder_attn)\.o_proj\.", r".\1.out_proj."),
    (r"\.mlp\.(fc[12])\.", r".\1."),
)


def load_detr(path, config, cls, task_kwargs=None):
    """Builds a `DETR` from a transformers `DetrForObjectDetection.save_pretrained()` directory.

    Args:
        path: the directory (`config.json` and `model.safetensors`, its shards
            or `pytorch_model.bin`).
        config: dict, the parsed `config.json`.
        cls: `DETR` (or a subclass).
        task_kwargs: unused (the checkpoint determines every argument);
            `from_preset` applies overrides afterwards: a new `num_classes`
            gives a fresh class head, and every other weight that still fits
            is kept. `aux_loss` defaults to True (DETR's training).

    Returns:
        A `cls` instance with the checkpoint's weights.
    """
    from keras_vtx.models.detr.detr import DETR

    if not (isinstance(cls, type) and issubclass(cls, DETR)):
        raise ValueError(
            "A transformers DETR checkpoint loads into keras_vtx.models.DETR; received "
            f"{getattr(cls, '__name__', cls)!r}."
        )
    weights = _canonical_names(read_state_dict(path))
    if "class_labels_classifier.weight" not in weights:
        raise ValueError(
            f"{path!r} is not a DetrForObjectDetection checkpoint (no "
            "'class_labels_classifier.weight'; DetrModel and DetrForSegmentation "
            "checkpoints are not supported)."
        )
    backbone_config, layout = _backbone_config(config)
    task_config = detr_config_from_transformers(config)
    task_config["num_classes"] = int(weights["class_labels_classifier.weight"].shape[0]) - 1
    names = class_names(config)
    if names is not None and len(names) == task_config["num_classes"]:
        task_config["class_names"] = names
    backbone = cls.backbone_cls(**backbone_config)
    model = cls(backbone=backbone, **task_config)
    unused = load_resnet_weights(model.backbone, weights, prefix=BACKBONE_PREFIX, layout=layout)
    if unused:
        raise ValueError(f"Unexpected backbone tensors in {path!r}: {unused}.")
    table = detr_weight_table(model)
    expected = {key for _, key, _ in table}
    missing = sorted(expected - set(weights))
    unknown = sorted(
        k for k in set(weights) - expected
        if not k.startswith(BACKBONE_PREFIX) and not k.endswith("num_batches_tracked")
    )
    if missing or unknown:
        raise ValueError(
            f"The DETR checkpoint in {path!r} does not match its config.json: missing keys "
            f"{missing}, unexpected keys {unknown}."
        )
    for variable, key, transform in table:
        value = TRANSFORMS[transform](np.asarray(weights[key], "float32"))
        if tuple(variable.shape) != tuple(value.shape):
            raise ValueError(
                f"Checkpoint tensor {key!r} in {path!r} has shape {tuple(value.shape)} after "
                f"conversion, but {variable.path!r} expects {tuple(variable.shape)}."
            )
        variable.assign(value)
    return model


# DETR's arguments read from a transformers `DetrConfig`: (key, default).
_DETR_ARGUMENTS = {
    "num_queries": ("num_queries", 100),
    "hidden_dim": ("d_model", 256),
    "num_heads": ("encoder_attention_heads", 8),
    "num_encoder_layers": ("encoder_layers", 6),
    "num_decoder_layers": ("decoder_layers", 6),
    "mlp_dim": ("encoder_ffn_dim", 2048),
    "dropout": ("dropout", 0.1),
    "attention_dropout": ("attention_dropout", 0.0),
}


def detr_config_from_transformers(config):
    """Maps a transformers `DetrConfig` dict to `DETR` arguments (without the backbone).

    Example:
    >>> detr_config_from_transformers({"d_model": 256, "num_queries": 100})["hidden_dim"]
    256
    """
    pairs = (("encoder_attention_heads", "decoder_attention_heads"),
             ("encoder_ffn_dim", "decoder_ffn_dim"))
    for a, b in pairs:
        if config.get(a, 8 if "heads" in a else 2048) != config.get(b, 8 if "heads" in b
                                                                       else 2048):
            raise ValueError(
                f"DETR here shares one value between encoder and decoder: the config's {a!r} "
                f"({config.get(a)}) and {b!r} ({config.get(b)}) differ."
            )
    require_settings(config, {"activation_function": "relu", "position_embedding_type": "sine",
                              "activation_dropout": 0.0}, "DETR")
    return {**config_values(config, _DETR_ARGUMENTS), "aux_loss": True}


def detr_weight_table(model):
    """`(variable, transformers key, transform)` for every non-backbone weight of `model`."""
    table = [(model.object_queries, "model.query_position_embeddings.weight", None)]
    table += _layer(model.input_projection, "model.input_projection", "conv")
    for i, block in enumerate(model.encoder_blocks):
        p = f"model.encoder.layers.{i}."
        table += _attention(block.attention, p + "self_attn")
        table += _layer(block.norm1, p + "self_attn_layer_norm")
        table += _layer(block.mlp.fc1, p + "fc1", "linear")
        table += _layer(block.mlp.fc2, p + "fc2", "linear")
        table += _layer(block.norm2, p + "final_layer_norm")
    for i, block in enumerate(model.decoder_blocks):
        p = f"model.decoder.layers.{i}."
        table += _attention(block.self_attention, p + "self_attn")
        table += _layer(block.norm1, p + "self_attn_layer_norm")
        table += _attention(block.cross_attention, p + "encoder_attn")
        table += _layer(block.norm2, p + "encoder_attn_layer_norm")
        table += _layer(block.mlp.fc1, p + "fc1", "linear")
        table += _layer(block.mlp.fc2, p + "fc2", "linear")
        table += _layer(block.norm3, p + "final_layer_norm")
    table += _layer(model.decoder_norm, "model.decoder.layernorm")
    table += _layer(model.class_head, "class_labels_classifier", "linear")
    for i, dense in enumerate(model.box_head):
        table += _layer(dense, f"bbox_predictor.layers.{i}", "linear")
    return table


def _layer(layer, key, transform=None):
    if hasattr(layer, "gamma"):  # LayerNormalization
        return [(layer.gamma, key + ".weight", None), (layer.beta, key + ".bias", None)]
    return [(layer.kernel, key + ".weight", transform), (layer.bias, key + ".bias", None)]


def _attention(mha, key):
    return (_layer(mha.query_dense, key + ".q_proj", "linear")
            + _layer(mha.key_dense, key + ".k_proj", "linear")
            + _layer(mha.value_dense, key + ".v_proj", "linear")
            + _layer(mha.output_dense, key + ".out_proj", "linear"))


def _backbone_config(config):
    """`(ResNetBackbone arguments, load_resnet_weights layout)` of a DETR config."""
    if config.get("use_timm_backbone", True):
        timm = config.get("backbone_config") or {}
        if timm.get("model_type") != "timm_backbone":
            # transformers 4 configs name the timm model and DC5 at the top level.
            timm = {"model_type": "timm_backbone", "backbone": config.get("backbone", "resnet50"),
                    "output_stride": 16 if config.get("dilation") else 32,
                    "num_channels": config.get("num_channels", 3)}
        return {**resnet_config_from_transformers(timm), "frozen_stages": 1}, "timm"
    backbone = config.get("backbone_config")
    if not backbone:
        raise ValueError(
            "The DETR config has `use_timm_backbone=False` but no `backbone_config`."
        )
    out = backbone.get("out_features") or ["stage4"]
    stages = backbone.get("stage_names") or ["stem"] + [
        f"stage{i + 1}" for i in range(len(backbone.get("depths", (3, 4, 6, 3))))
    ]
    if list(out) != [stages[-1]]:
        raise ValueError(
            f"DETR uses the last ResNet stage only; the backbone config's `out_features` is "
            f"{out!r}."
        )
    # transformers ignores `dilation` for non-timm backbones: so do we (same outputs).
    return {**resnet_config_from_transformers(backbone), "frozen_stages": 1}, "transformers"


def _canonical_names(weights):
    return canonical_names(weights, _IN_MEMORY_NAMES)
