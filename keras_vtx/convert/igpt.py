"""Loads Hugging Face `transformers` Image GPT checkpoints.

`ImageGPTForCausalImageModeling` (keys under `transformer.` plus `lm_head.weight`)
and `ImageGPTModel` (no prefix, no head) directories written by
`save_pretrained()`, with the palette of `preprocessor_config.json` ("clusters")
when the directory has one. transformers' `Conv1D` stores kernels as
`(in, out)`, Keras' layout, and `c_attn` holds the query, key and value
projections side by side.
"""

import os

import numpy as np

from keras_vtx.convert.checkpoint_files import read_json, read_state_dict
from keras_vtx.convert.tensor_mapping import config_values, require_settings, set_weight

# Keras variable (relative to block i) -> (transformers key relative to `h.{i}.`, slice of
# c_attn's output columns or None).
_BLOCK = (
    ("norm1/scale", "ln_1.weight", None),
    ("attention/query/kernel", "attn.c_attn.weight", 0),
    ("attention/query/bias", "attn.c_attn.bias", 0),
    ("attention/key/kernel", "attn.c_attn.weight", 1),
    ("attention/key/bias", "attn.c_attn.bias", 1),
    ("attention/value/kernel", "attn.c_attn.weight", 2),
    ("attention/value/bias", "attn.c_attn.bias", 2),
    ("attention/output/kernel", "attn.c_proj.weight", None),
    ("attention/output/bias", "attn.c_proj.bias", None),
    ("norm2/scale", "ln_2.weight", None),
    ("mlp/fc1/kernel", "mlp.c_fc.weight", None),
    ("mlp/fc1/bias", "mlp.c_fc.bias", None),
    ("mlp/fc2/kernel", "mlp.c_proj.weight", None),
    ("mlp/fc2/bias", "mlp.c_proj.bias", None),
)
# Buffers older transformers versions saved with the weights (the causal mask).
_BUFFERS = (".attn.bias", ".attn.masked_bias")


# ImageGPTBackbone's arguments read from a transformers `ImageGPTConfig`: (key, default).
_IMAGEGPT_ARGUMENTS = {
    "vocabulary_size": ("vocab_size", 513),
    "sequence_length": ("n_positions", 1024),
    "hidden_dim": ("n_embd", 512),
    "num_layers": ("n_layer", 24),
    "num_heads": ("n_head", 8),
    "mlp_dim": ("n_inner", None),
    "layer_norm_epsilon": ("layer_norm_epsilon", 1e-5),
}


def imagegpt_backbone_config(config):
    """Maps a transformers `ImageGPTConfig` dict to `ImageGPTBackbone` arguments.

    Dropout is left at 0: transformers' 0.1 defaults are GPT-2's, and the
    paper trains without dropout (section 3.4); pass `dropout=...` to change it.

    Example:
    >>> imagegpt_backbone_config({"vocab_size": 513, "n_positions": 1024, "n_embd": 512,
    ...     "n_layer": 24, "n_head": 8})["hidden_dim"]
    512
    """
    require_settings(config, {"activation_function": "quick_gelu", "scale_attn_weights": True,
                              "scale_attn_by_inverse_layer_idx": False,
                              "add_cross_attention": False}, "ImageGPTBackbone")
    return config_values(config, _IMAGEGPT_ARGUMENTS)


def load_imagegpt(path, config, cls, task_kwargs=None):
    """Builds an `ImageGPTBackbone` or an `ImageGPT` from a transformers Image GPT directory.

    Args:
        path: a `save_pretrained()` directory (`config.json`, `model.safetensors`
            or its shards or `pytorch_model.bin`, optionally
            `preprocessor_config.json` with the palette).
        config: dict, the parsed `config.json`.
        cls: the class asked for: a backbone class gives the backbone, `ImageGPT`
            (or a subclass) that class, and any other Image GPT task (the
            classifier) an `ImageGPT`, which that task adopts.
        task_kwargs: the task arguments the caller gave; a `palette` there
            replaces the checkpoint's `preprocessor_config.json` clusters.

    Returns:
        The model with the checkpoint's weights; an `ImageGPTModel` checkpoint
        (no `lm_head`) gives `ImageGPT` a freshly initialised head.
    """
    from keras_vtx.models.igpt.image_gpt import ImageGPT
    from keras_vtx.models.igpt.image_gpt_backbone import ImageGPTBackbone

    is_backbone = isinstance(cls, type) and issubclass(cls, ImageGPTBackbone)
    is_task = isinstance(cls, type) and issubclass(
        getattr(cls, "backbone_cls", None) or type(None), ImageGPTBackbone)
    if not is_task and not is_backbone:
        raise ValueError(
            "A transformers Image GPT checkpoint loads into ImageGPTBackbone or an Image "
            f"GPT task; received {getattr(cls, '__name__', cls)!r}."
        )
    weights = {k: v for k, v in read_state_dict(path).items() if not k.endswith(_BUFFERS)}
    head = weights.pop("lm_head.weight", None)
    weights = {k[len("transformer."):] if k.startswith("transformer.") else k: v
               for k, v in weights.items()}
    backbone_cls = cls if is_backbone else cls.backbone_cls
    backbone = backbone_cls(**imagegpt_backbone_config(config))
    _assign_backbone(backbone, weights, path)
    if is_backbone:
        return backbone
    palette = (task_kwargs or {}).get("palette")
    model_cls = cls if issubclass(cls, ImageGPT) else ImageGPT
    model = model_cls(backbone=backbone, palette=palette if palette is not None else _palette(path))
    if head is not None:
        # nn.Linear stores (out, in); Keras' Dense kernel is (in, out).
        set_weight(model.lm_head.kernel, np.asarray(head).T, "lm_head.weight", path)
    return model


def _assign_backbone(backbone, weights, path):
    used = set()

    def take(variable, key, part=None):
        if key not in weights:
            raise ValueError(f"The Image GPT checkpoint in {path!r} has no tensor {key!r}.")
        value = np.asarray(weights[key])
        if part is not None:
            width = value.shape[-1] // 3
            value = value[..., part * width:(part + 1) * width]
        set_weight(variable, value, key, path)
        used.add(key)

    take(backbone.token_embedding.embeddings, "wte.weight")
    take(backbone.position_embedding.embeddings, "wpe.weight")
    for i, block in enumerate(backbone.transformer_layers):
        variables = {v.path.split(f"{block.name}/", 1)[-1]: v for v in block.weights}
        for ours, theirs, part in _BLOCK:
            take(variables[ours], f"h.{i}.{theirs}", part)
    take(backbone.final_norm.weights[0], "ln_f.weight")
    unknown = sorted(set(weights) - used)
    if unknown:
        raise ValueError(
            f"The Image GPT checkpoint in {path!r} has tensors its config.json does not "
            f"explain: {unknown[:10]}."
        )


def _palette(path):
    file = os.path.join(path, "preprocessor_config.json")
    if not os.path.exists(file):
        return None
    processor = read_json(file)
    if "clusters" not in processor:
        return None
    from keras_vtx.models.igpt.color_palette import ColorPalette

    return ColorPalette.from_transformers(processor)
