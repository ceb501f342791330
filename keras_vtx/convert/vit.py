"""Loads Hugging Face `transformers` ViT checkpoints (`ViTModel`, `ViTForImageClassification`).

The model is built at the checkpoint's own config and every weight is copied
through the name table below (the converter contract of `keras_vtx.convert`);
`from_preset` then applies overrides the way it does for keras_vtx presets, so
a new resolution resamples the position embeddings with PyTorch's bicubic
kernel.
"""

import os

import numpy as np

from keras_vtx.convert.checkpoint_files import read_json, read_state_dict
from keras_vtx.convert.tensor_mapping import (
    CONV,
    DENSE,
    NORM,
    activation,
    assign_table,
    canonical_names,
    class_names,
    layer_table,
    pair,
    require_settings,
    set_weight,
)

# Keras variable (relative to the backbone) -> transformers key (without `vit.`),
# and how the tensor is laid out there. `{i}` is the block index.
_EMBEDDING_LAYERS = (
    ("patch_embedding/projection", "embeddings.patch_embeddings.projection", CONV),
    ("class_token", "embeddings", (("class_token", "cls_token", None),)),
    ("position_embedding", "embeddings", (("embeddings", "position_embeddings", "squeeze"),)),
    ("final_norm", "layernorm", NORM),
)
_BLOCK_LAYERS = (
    ("norm1", "layernorm_before", NORM),
    ("attention/query", "attention.attention.query", DENSE),
    ("attention/key", "attention.attention.key", DENSE),
    ("attention/value", "attention.attention.value", DENSE),
    ("attention/output", "attention.output.dense", DENSE),
    ("norm2", "layernorm_after", NORM),
    ("mlp/fc1", "intermediate.dense", DENSE),
    ("mlp/fc2", "output.dense", DENSE),
)
# ViTModel's pooler (dense + tanh on the class token) is the backbone's pre-logits layer.
_POOLER_LAYERS = (("pre_logits", "pooler.dense", DENSE),)
_CLASSIFIER = ("classifier.weight", "classifier.bias")
# transformers 5 modules name their weights differently in memory (`model.state_dict()`);
# `save_pretrained()` and the Hub use the names above. Both are read.
_IN_MEMORY_NAMES = (
    (r"^layers\.(\d+)\.", r"encoder.layer.\1."),
    (r"\.attention\.q_proj\.", ".attention.attention.query."),
    (r"\.attention\.k_proj\.", ".attention.attention.key."),
    (r"\.attention\.v_proj\.", ".attention.attention.value."),
    (r"\.attention\.o_proj\.", ".attention.output.dense."),
    (r"\.mlp\.fc1\.", ".intermediate.dense."),
    (r"\.mlp\.fc2\.", ".output.dense."),
)


# ViTImageProcessor's defaults, used when the checkpoint has no preprocessor_config.json.
_DEFAULT_MEAN = (0.5, 0.5, 0.5)
_DEFAULT_STD = (0.5, 0.5, 0.5)


def load_vit(path, config, cls, task_kwargs=None):
    """Builds `cls` (a `ViTBackbone` or a ViT task) from a transformers ViT checkpoint.

    Args:
        path: a directory written by `save_pretrained()`: `config.json` and
            `model.safetensors` (or its shards, or `pytorch_model.bin` when
            torch is installed), optionally `preprocessor_config.json`.
        config: dict, the parsed `config.json`.
        cls: `ViTBackbone` or a task class whose `backbone_cls` is one.
        task_kwargs: the task arguments the caller gave: a `num_classes` other
            than the checkpoint's, or a checkpoint without a classifier, gives
            a fresh head. A task defaults to `include_preprocessing=True` with
            the processor's mean and std.

    Returns:
        An instance of `cls` with the checkpoint's weights.
    """
    from keras_vtx.models.task import Task
    from keras_vtx.models.vit import ViTBackbone

    is_task = isinstance(cls, type) and issubclass(cls, Task)
    backbone_cls = cls.backbone_cls if is_task else cls
    if not (isinstance(backbone_cls, type) and issubclass(backbone_cls, ViTBackbone)):
        raise ValueError(
            f"A transformers ViT checkpoint loads into a ViTBackbone or a ViT task; "
            f"received {getattr(cls, '__name__', cls)!r}."
        )
    weights = _canonical_names(read_state_dict(path))
    has_pooler = any(k.startswith("pooler.") for k in weights)
    has_classifier = any(k.startswith("classifier.") for k in weights)
    backbone_config = backbone_config_from_transformers(config, has_pooler)
    backbone = backbone_cls(**backbone_config)
    table = layer_table(list(_EMBEDDING_LAYERS) + (list(_POOLER_LAYERS) if has_pooler else []),
                        _BLOCK_LAYERS, "encoder.layer.{i}", backbone_config["num_layers"])
    expected = {key for key, _ in table.values()}
    if has_classifier:
        expected |= set(_CLASSIFIER)
    missing, unknown = sorted(expected - set(weights)), sorted(set(weights) - expected)
    if missing or unknown:
        raise ValueError(
            f"The ViT checkpoint in {path!r} does not match its config.json: "
            f"missing keys {missing}, unexpected keys {unknown}."
        )
    assign_table(backbone, weights, table, path)

    if not is_task:  # a classifier checkpoint loaded as a backbone: its head is left out
        return backbone

    task_kwargs = dict(task_kwargs or {})
    task_kwargs = {**_preprocessing(path, backbone_config["num_channels"], task_kwargs),
                   **task_kwargs}
    num_labels = weights["classifier.weight"].shape[0] if has_classifier else None
    if num_labels is not None:
        task_kwargs.setdefault("num_classes", num_labels)
        labels = class_names(config)
        if (labels is not None and len(labels) == num_labels
                and task_kwargs["num_classes"] == num_labels):
            task_kwargs.setdefault("class_names", labels)
    model = cls(backbone=backbone, **task_kwargs)
    if num_labels is not None and model.num_classes == num_labels:
        head = model.get_layer("head")
        set_weight(head.kernel, weights["classifier.weight"].T, "classifier.weight", path)
        set_weight(head.bias, weights["classifier.bias"], "classifier.bias", path)
    return model


def backbone_config_from_transformers(config, has_pooler=True):
    """Maps a transformers `ViTConfig` dict to `ViTBackbone` arguments.

    Args:
        config: dict, the parsed `config.json` of a `"vit"` checkpoint.
        has_pooler: bool, whether the checkpoint holds `ViTModel`'s pooler,
            which becomes the backbone's `representation_size` layer.

    Returns:
        A dict of `ViTBackbone` constructor arguments.
    """
    hidden = config.get("hidden_size", 768)
    heads = config.get("num_attention_heads", 12)
    # ViTBackbone's attention always has query/key/value biases.
    require_settings(config, {"qkv_bias": True}, "ViTBackbone")
    head_dim = config.get("head_dim")
    if head_dim is not None and head_dim * heads != hidden:
        raise ValueError(
            f"The checkpoint's `head_dim` ({head_dim}) times `num_attention_heads` ({heads}) "
            f"must equal `hidden_size` ({hidden}) for ViTBackbone."
        )
    result = dict(
        image_size=pair(config.get("image_size", 224)),
        patch_size=pair(config.get("patch_size", 16)),
        num_layers=config.get("num_hidden_layers", 12),
        hidden_dim=hidden,
        num_heads=heads,
        mlp_dim=config.get("intermediate_size", 3072),
        num_channels=config.get("num_channels", 3),
        dropout=config.get("hidden_dropout_prob", 0.0),
        attention_dropout=config.get("attention_probs_dropout_prob", 0.0),
        layer_norm_epsilon=config.get("layer_norm_eps", 1e-12),
        activation=activation(config.get("hidden_act", "gelu")),
        pooling="token",
    )
    if has_pooler:
        if config.get("pooler_act", "tanh") != "tanh":
            raise ValueError(
                f"The checkpoint's `pooler_act` is {config['pooler_act']!r}; the "
                "backbone's pre-logits layer supports 'tanh' only."
            )
        result["representation_size"] = config.get("pooler_output_size") or hidden
    return result


def _canonical_names(weights):
    # ViTForImageClassification nests the encoder under `vit.`; ViTModel does not.
    return canonical_names(weights, _IN_MEMORY_NAMES, strip_prefix="vit.")


def _preprocessing(path, num_channels, task_kwargs):
    """The task's preprocessing defaults from `preprocessor_config.json`."""
    mean, std = _DEFAULT_MEAN[:num_channels], _DEFAULT_STD[:num_channels]
    file = os.path.join(path, "preprocessor_config.json")
    processor = {}
    if os.path.exists(file):
        processor = read_json(file)
    if processor.get("do_normalize", True):
        mean = tuple(processor.get("image_mean", mean))
        std = tuple(processor.get("image_std", std))
    else:
        mean, std = (0.0,) * num_channels, (1.0,) * num_channels
    if task_kwargs.get("include_preprocessing", True):
        # The classifier's normalisation always rescales by 1/255 first.
        rescale = processor.get("rescale_factor", 1 / 255) if processor.get(
            "do_rescale", True) else 1.0
        if not np.isclose(rescale, 1 / 255):
            raise ValueError(
                f"{file!r} rescales pixels by {rescale}, but the classifier's preprocessing "
                "rescales by 1/255; pass `include_preprocessing=False` and normalise inputs "
                "yourself."
            )
    return {"include_preprocessing": True, "mean": mean, "std": std}
