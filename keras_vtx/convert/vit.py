"""Loads Hugging Face `transformers` ViT checkpoints (`ViTModel`, `ViTForImageClassification`).

The model is built at the checkpoint's own config, every weight is copied
through the name table below, and config overrides (a new `image_size`, a new
`num_classes`, ...) are then applied the way they are for keras_vtx presets:
`transfer_weights` for a backbone, `Task.rebuild_with` for a task, so a new
resolution resamples the position embeddings with PyTorch's bicubic kernel.
"""

import os
import re

import numpy as np

from keras_vtx.convert.checkpoint_files import read_json, read_weights

# Keras variable (relative to the backbone) -> transformers key (without `vit.`),
# and how the tensor is laid out there. `{i}` is the block index.
_DENSE = (("kernel", "weight", "linear"), ("bias", "bias", None))
_NORM = (("gamma", "weight", None), ("beta", "bias", None))
_CONV = (("kernel", "weight", "conv"), ("bias", "bias", None))
_EMBEDDING_LAYERS = (
    ("patch_embedding/projection", "embeddings.patch_embeddings.projection", _CONV),
    ("class_token", "embeddings", (("class_token", "cls_token", None),)),
    ("position_embedding", "embeddings", (("embeddings", "position_embeddings", "squeeze"),)),
    ("final_norm", "layernorm", _NORM),
)
_BLOCK_LAYERS = (
    ("norm1", "layernorm_before", _NORM),
    ("attention/query", "attention.attention.query", _DENSE),
    ("attention/key", "attention.attention.key", _DENSE),
    ("attention/value", "attention.attention.value", _DENSE),
    ("attention/output", "attention.output.dense", _DENSE),
    ("norm2", "layernorm_after", _NORM),
    ("mlp/fc1", "intermediate.dense", _DENSE),
    ("mlp/fc2", "output.dense", _DENSE),
)
# ViTModel's pooler (dense + tanh on the class token) is the backbone's pre-logits layer.
_POOLER_LAYERS = (("pre_logits", "pooler.dense", _DENSE),)
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

_TRANSFORMS = {
    None: lambda x: x,
    "linear": lambda x: x.T,  # torch (out, in) -> Keras (in, out)
    "conv": lambda x: x.transpose(2, 3, 1, 0),  # OIHW -> HWIO
    "squeeze": lambda x: x[0],  # (1, tokens, D) -> (tokens, D)
}

# transformers' `hidden_act` names -> ours. gelu_fast is the tanh approximation too.
_ACTIVATIONS = {
    "gelu": "gelu", "gelu_python": "gelu", "gelu_new": "tanh_gelu",
    "gelu_pytorch_tanh": "tanh_gelu", "gelu_fast": "tanh_gelu", "quick_gelu": "quick_gelu",
    "relu": "relu", "silu": "silu", "swish": "silu", "tanh": "tanh",
}
# ViTImageProcessor's defaults, used when the checkpoint has no preprocessor_config.json.
_DEFAULT_MEAN = (0.5, 0.5, 0.5)
_DEFAULT_STD = (0.5, 0.5, 0.5)


def load_vit(path, config, cls, **kwargs):
    """Builds `cls` (a `ViTBackbone` or a ViT task) from a transformers ViT checkpoint.

    Args:
        path: a directory written by `save_pretrained()`: `config.json` and
            `model.safetensors` (or its shards, or `pytorch_model.bin` when
            torch is installed), optionally `preprocessor_config.json`.
        config: dict, the parsed `config.json`.
        cls: `ViTBackbone` or a task class whose `backbone_cls` is one.
        **kwargs: overrides, as for keras_vtx presets. A new `image_size`
            resamples the position embeddings; a `num_classes` other than the
            checkpoint's, or a checkpoint without a classifier, gives a fresh
            head. A task defaults to `include_preprocessing=True` with the
            processor's mean and std.

    Returns:
        An instance of `cls` with the checkpoint's weights.
    """
    from keras_vtx.models.backbone import transfer_weights
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
    table = _weight_table(backbone_config["num_layers"], has_pooler)
    expected = {key for key, _ in table.values()}
    if has_classifier:
        expected |= set(_CLASSIFIER)
    missing, unknown = sorted(expected - set(weights)), sorted(set(weights) - expected)
    if missing or unknown:
        raise ValueError(
            f"The ViT checkpoint in {path!r} does not match its config.json: "
            f"missing keys {missing}, unexpected keys {unknown}."
        )
    _assign(backbone, weights, table, path)

    if not is_task:
        # A classifier checkpoint loaded as a backbone: only its head is left out.
        if not kwargs:
            return backbone
        model = cls(**{**backbone.get_config(), **kwargs})
        transfer_weights(backbone, model)
        return model

    backbone_kwargs, task_kwargs = cls._split_kwargs(kwargs)
    task_kwargs = {**_preprocessing(path, backbone_config["num_channels"], task_kwargs),
                   **task_kwargs}
    num_labels = weights["classifier.weight"].shape[0] if has_classifier else None
    if num_labels is not None:
        task_kwargs.setdefault("num_classes", num_labels)
        labels = _class_names(config)
        if (labels is not None and len(labels) == num_labels
                and task_kwargs["num_classes"] == num_labels):
            task_kwargs.setdefault("class_names", labels)
    model = cls(backbone=backbone, **task_kwargs)
    if num_labels is not None and model.num_classes == num_labels:
        head = model.get_layer("head")
        _set(head.kernel, weights["classifier.weight"].T, "classifier.weight", path)
        _set(head.bias, weights["classifier.bias"], "classifier.bias", path)
    if backbone_kwargs:
        model = model.rebuild_with(backbone_kwargs, {})
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
    if not config.get("qkv_bias", True):
        raise ValueError(
            "The checkpoint's config has `qkv_bias=False`; ViTBackbone's attention "
            "always has query/key/value biases."
        )
    head_dim = config.get("head_dim")
    if head_dim is not None and head_dim * heads != hidden:
        raise ValueError(
            f"The checkpoint's `head_dim` ({head_dim}) times `num_attention_heads` ({heads}) "
            f"must equal `hidden_size` ({hidden}) for ViTBackbone."
        )
    act = config.get("hidden_act", "gelu")
    if act not in _ACTIVATIONS:
        raise ValueError(
            f"The checkpoint's `hidden_act` {act!r} has no equivalent here; "
            f"supported: {sorted(_ACTIVATIONS)}."
        )
    result = dict(
        image_size=_pair(config.get("image_size", 224)),
        patch_size=_pair(config.get("patch_size", 16)),
        num_layers=config.get("num_hidden_layers", 12),
        hidden_dim=hidden,
        num_heads=heads,
        mlp_dim=config.get("intermediate_size", 3072),
        num_channels=config.get("num_channels", 3),
        dropout=config.get("hidden_dropout_prob", 0.0),
        attention_dropout=config.get("attention_probs_dropout_prob", 0.0),
        layer_norm_epsilon=config.get("layer_norm_eps", 1e-12),
        activation=_ACTIVATIONS[act],
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


def read_state_dict(path):
    """Reads a checkpoint directory's tensors as a dict of NumPy arrays.

    Looks for `model.safetensors`, then sharded safetensors
    (`model.safetensors.index.json`), then `pytorch_model.bin` (needs torch).
    """
    single = os.path.join(path, "model.safetensors")
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(single) or os.path.exists(index):
        if os.path.exists(single):
            return read_weights(single, _load_safetensors)
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ValueError(f"The checkpoint file {index!r} has no 'weight_map' object: "
                             "it is damaged; download the checkpoint again.")
        weights = {}
        for shard in sorted(set(weight_map.values())):
            weights.update(read_weights(os.path.join(path, shard), _load_safetensors))
        return weights
    binary = os.path.join(path, "pytorch_model.bin")
    if os.path.exists(binary):
        try:
            import torch
        except ImportError as e:
            raise ImportError(
                f"{binary!r} is a PyTorch pickle; reading it needs torch (or convert the "
                "checkpoint to model.safetensors)."
            ) from e
        state = read_weights(
            binary, lambda file: torch.load(file, map_location="cpu", weights_only=True))
        return {k: v.detach().float().numpy() for k, v in state.items()}
    raise ValueError(
        f"No weights in {path!r}: expected model.safetensors, model.safetensors.index.json "
        "or pytorch_model.bin."
    )


def _load_safetensors(file):
    from safetensors.numpy import load_file

    try:
        return load_file(file)
    except TypeError:
        # NumPy has no bfloat16: such files are read through torch when it is installed.
        try:
            from safetensors.torch import load_file as load_torch
        except ImportError:
            raise ValueError(
                f"{file!r} holds a dtype NumPy cannot read (bfloat16?); install torch "
                "to read it."
            ) from None
        return {k: v.float().numpy() for k, v in load_torch(file).items()}


def _pair(value):
    return (value, value) if isinstance(value, int) else tuple(value)


def _canonical_names(weights):
    # ViTForImageClassification nests the encoder under `vit.`; ViTModel does not.
    out = {}
    for key, value in weights.items():
        short = key[len("vit."):] if key.startswith("vit.") else key
        if short.startswith("layers."):
            for pattern, replacement in _IN_MEMORY_NAMES:
                short = re.sub(pattern, replacement, short)
        if short in out:
            raise ValueError(f"The checkpoint holds {short!r} under two names (one is {key!r}).")
        out[short] = value
    return out


def _weight_table(num_layers, has_pooler):
    """Returns {keras variable path: (transformers key, transform name)}."""
    layers = list(_EMBEDDING_LAYERS) + (list(_POOLER_LAYERS) if has_pooler else [])
    for i in range(num_layers):
        layers += [(f"block_{i}/{ours}", f"encoder.layer.{i}.{theirs}", params)
                   for ours, theirs, params in _BLOCK_LAYERS]
    return {
        f"{ours}/{our_param}": (f"{theirs}.{their_param}", transform)
        for ours, theirs, params in layers
        for our_param, their_param, transform in params
    }


def _assign(backbone, weights, table, path):
    prefix = backbone.name + "/"
    variables = {
        (v.path[len(prefix):] if v.path.startswith(prefix) else v.path): v
        for v in backbone.weights
    }
    unmapped = sorted(set(variables) - set(table))
    if unmapped:
        raise ValueError(
            f"{type(backbone).__name__} has variables with no transformers counterpart: "
            f"{unmapped}."
        )
    for name, (key, transform) in table.items():
        _set(variables[name], _TRANSFORMS[transform](np.asarray(weights[key])), key, path)


def _set(variable, value, key, path):
    if tuple(variable.shape) != tuple(value.shape):
        raise ValueError(
            f"Checkpoint tensor {key!r} in {path!r} has shape {tuple(value.shape)} after "
            f"conversion, but {variable.path!r} expects {tuple(variable.shape)}."
        )
    variable.assign(value)


def _class_names(config):
    id2label = config.get("id2label")
    if not id2label:
        return None
    return tuple(id2label[k] for k in sorted(id2label, key=int))


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
