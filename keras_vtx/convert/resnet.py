"""Loads PyTorch ResNet weights (transformers or timm/torchvision names) into `ResNetBackbone`.

Two key layouts are read:

- `"transformers"`: `transformers.ResNetModel` (`embedder.embedder.convolution.weight`,
  `encoder.stages.{s}.layers.{b}.layer.{i}.normalization.running_mean`,
  `encoder.stages.{s}.layers.{b}.shortcut.convolution.weight`, ...), also the backbone of a
  transformers DETR built on a `ResNetConfig`;
- `"timm"`: timm and torchvision (`conv1.weight`, `bn1.*`, `layer{s}.{b}.conv{i}.weight`,
  `layer{s}.{b}.bn{i}.*`, `layer{s}.{b}.downsample.{0,1}.*`), the layout inside the published
  `facebook/detr-resnet-50` checkpoint (under `model.backbone.conv_encoder.model.`).
"""

import re

import keras
import numpy as np

from keras_vtx.convert.tensor_mapping import require_settings
from keras_vtx.layers.frozen_batch_normalization import FrozenBatchNormalization

LAYOUTS = ("transformers", "timm")

# FrozenBatchNormalization weight -> PyTorch BatchNorm2d / FrozenBatchNorm2d name.
_NORM_WEIGHTS = (
    ("gamma", "weight"),
    ("beta", "bias"),
    ("moving_mean", "running_mean"),
    ("moving_variance", "running_var"),
)
_BLOCK_LAYER = re.compile(r"^stage(\d+)_block(\d+)_(conv|norm|shortcut_conv|shortcut_norm)(\d?)$")
# timm `resnet*` model names (plain torchvision-style ResNets only) -> depth.
_TIMM_DEPTHS = {"resnet50": 50, "resnet101": 101, "resnet152": 152}


def _module_name(layer_name, layout):
    """The PyTorch module holding the weights of the Keras layer `layer_name`."""
    if layer_name in ("stem_conv", "stem_norm"):
        kind = layer_name[5:]
        if layout == "timm":
            return "conv1" if kind == "conv" else "bn1"
        return "embedder.embedder." + ("convolution" if kind == "conv" else "normalization")
    match = _BLOCK_LAYER.match(layer_name)
    if match is None:
        raise ValueError(f"Unexpected layer {layer_name!r} in a ResNetBackbone.")
    stage, block, kind, index = match.groups()
    stage, block = int(stage), int(block)
    if layout == "timm":
        base = f"layer{stage}.{block}."
        if kind == "shortcut_conv":
            return base + "downsample.0"
        if kind == "shortcut_norm":
            return base + "downsample.1"
        return base + ("conv" if kind == "conv" else "bn") + index
    base = f"encoder.stages.{stage - 1}.layers.{block}."
    if kind.startswith("shortcut"):
        base += "shortcut."
    else:
        base += f"layer.{int(index) - 1}."
    return base + ("convolution" if kind.endswith("conv") else "normalization")


def resnet_weight_table(backbone, layout="transformers"):
    """Lists the checkpoint tensors a `ResNetBackbone` takes, without loading anything.

    Args:
        backbone: a `ResNetBackbone`.
        layout: `"transformers"` or `"timm"`.

    Returns:
        A list of `(variable, key, is_conv_kernel)`, `key` without prefix.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"`layout` must be one of {LAYOUTS}; received {layout!r}.")
    table = []
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.Conv2D):
            table.append((layer.kernel, _module_name(layer.name, layout) + ".weight", True))
        elif isinstance(layer, (FrozenBatchNormalization, keras.layers.BatchNormalization)):
            module = _module_name(layer.name, layout)
            for attr, torch_name in _NORM_WEIGHTS:
                table.append((getattr(layer, attr), f"{module}.{torch_name}", False))
    return table


def _to_numpy(value):
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().float().numpy()
    return np.asarray(value)


def load_resnet_weights(backbone, state_dict, prefix="", layout="transformers"):
    """Copies a PyTorch ResNet state dict into a `ResNetBackbone`.

    Convolution kernels are transposed from PyTorch's `(out, in, h, w)` to
    Keras' `(h, w, in, out)`; batch-norm `weight`, `bias`, `running_mean` and
    `running_var` become `gamma`, `beta`, `moving_mean` and
    `moving_variance`; `num_batches_tracked` is ignored. Nothing is assigned
    unless every tensor is found with the right shape.

    Args:
        backbone: a built `ResNetBackbone` with the checkpoint's architecture.
        state_dict: mapping of names to arrays (NumPy or torch tensors).
        prefix: str prepended to every expected key, for example
            `"model.backbone.conv_encoder.model."` inside a DETR checkpoint.
        layout: `"transformers"` (`ResNetModel` names) or `"timm"`
            (timm/torchvision names).

    Returns:
        The sorted list of keys that start with `prefix` but were not used
        (`num_batches_tracked` left out): a classifier head, or what a
        surrounding model keeps under the same prefix.

    Raises:
        ValueError: listing the missing keys and the shape mismatches.

    Example:
    >>> from keras_vtx.models.detr.resnet_backbone import ResNetBackbone
    >>> model = ResNetBackbone(stage_filters=(2, 4, 4, 8), blocks_per_stage=(1, 1, 1, 2),
    ...                        stem_filters=8)
    >>> weights = {key: np.zeros(tuple(v.shape)[::-1] if conv else v.shape, "float32")
    ...            for v, key, conv in resnet_weight_table(model, "timm")}
    >>> weights["fc.weight"] = np.zeros((10, 32), "float32")
    >>> load_resnet_weights(model, weights, layout="timm")
    ['fc.weight']
    """
    table = resnet_weight_table(backbone, layout)
    missing, mismatched, values = [], [], []
    for variable, key, is_conv in table:
        key = prefix + key
        if key not in state_dict:
            missing.append(key)
            continue
        value = _to_numpy(state_dict[key])
        if is_conv and value.ndim == 4:
            value = value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
        if tuple(value.shape) != tuple(variable.shape):
            mismatched.append(
                f"{key}: checkpoint {tuple(value.shape)} (as Keras), model "
                f"{tuple(variable.shape)} ({variable.path})"
            )
            continue
        values.append((variable, value))
    if missing or mismatched:
        raise ValueError(
            f"The {layout!r} ResNet state dict (prefix {prefix!r}) does not fit the "
            f"ResNetBackbone: {len(missing)} missing keys {missing}; {len(mismatched)} shape "
            f"mismatches {mismatched}."
        )
    for variable, value in values:
        variable.assign(value.astype(variable.dtype))
    used = {prefix + key for _, key, _ in table}
    return sorted(
        key for key in state_dict
        if key.startswith(prefix) and key not in used and not key.endswith("num_batches_tracked")
    )


def resnet_config_from_transformers(config):
    """`ResNetBackbone` arguments from a transformers backbone config.

    Args:
        config: dict, either a `ResNetConfig` (`model_type` `"resnet"`, a
            bottleneck v1.5 ResNet) or the `timm_backbone` config of a DETR
            (`backbone` `"resnet50"`/`"resnet101"`/`"resnet152"`,
            `output_stride` 16 for DC5).

    Returns:
        A dict of `ResNetBackbone` keyword arguments (`frozen_stages` left at
        its default).

    Example:
    >>> resnet_config_from_transformers({"model_type": "timm_backbone",
    ...     "backbone": "resnet101", "output_stride": 16})
    {'depth': 101, 'dilation': True, 'image_shape': (None, None, 3)}
    """
    model_type = config.get("model_type")
    channels = int(config.get("num_channels", 3))
    if model_type == "timm_backbone":
        name = config.get("backbone")
        if name not in _TIMM_DEPTHS:
            raise ValueError(
                f"Only the timm backbones {sorted(_TIMM_DEPTHS)} are supported; received "
                f"{name!r}."
            )
        stride = config.get("output_stride") or 32
        if stride not in (16, 32):
            raise ValueError(f"`output_stride` must be 16 or 32; received {stride!r}.")
        return {
            "depth": _TIMM_DEPTHS[name],
            "dilation": stride == 16,
            "image_shape": (None, None, channels),
        }
    if model_type != "resnet":
        raise ValueError(
            "`config` must be a transformers ResNetConfig or timm_backbone config; received "
            f"model_type {model_type!r}."
        )
    # ResNetBackbone is torchvision's v1.5 bottleneck ResNet.
    require_settings(config, {"layer_type": "bottleneck", "hidden_act": "relu",
                              "downsample_in_first_stage": False,
                              "downsample_in_bottleneck": False}, "ResNetBackbone")
    # transformers' bottleneck always reduces the width by 4 (`reduction=4`).
    hidden_sizes = [int(h) for h in config.get("hidden_sizes", (256, 512, 1024, 2048))]
    if any(h % 4 for h in hidden_sizes):
        raise ValueError(
            f"`hidden_sizes` must be multiples of 4 (bottleneck reduction 4); received "
            f"{hidden_sizes}."
        )
    return {
        "stage_filters": tuple(h // 4 for h in hidden_sizes),
        "blocks_per_stage": tuple(int(d) for d in config.get("depths", (3, 4, 6, 3))),
        "stem_filters": int(config.get("embedding_size", 64)),
        "bottleneck_expansion": 4,
        "image_shape": (None, None, channels),
    }


def load_resnet(path, config, cls, task_kwargs=None):
    """Builds a `ResNetBackbone` from a transformers `ResNetModel.save_pretrained()` directory.

    Also reads `ResNetForImageClassification` directories (the classifier is
    left out). `task_kwargs` is unused; `from_preset` applies overrides
    (`frozen_stages`, `dilation`, `image_shape`, ...) afterwards.
    """
    from keras_vtx.convert.checkpoint_files import read_state_dict
    from keras_vtx.models.detr.resnet_backbone import ResNetBackbone

    if not (isinstance(cls, type) and issubclass(cls, ResNetBackbone)):
        raise ValueError(
            "A transformers ResNet checkpoint loads into a ResNetBackbone; received "
            f"{getattr(cls, '__name__', cls)!r}."
        )
    weights = read_state_dict(path)
    prefix = "resnet." if any(k.startswith("resnet.") for k in weights) else ""
    backbone = cls(**resnet_config_from_transformers(config))
    load_resnet_weights(backbone, weights, prefix=prefix, layout="transformers")
    return backbone
