"""CLIP's released architectures (Radford et al., 2021, tables 19 and 20) as presets.

Presets are configs (random weights); the released weights load from a
transformers checkpoint: `CLIP.from_preset("hf://openai/clip-vit-base-patch32")`.
"""

from keras_vtx.models.presets import register_preset
from keras_vtx.models.vit import vit_config


def clip_image_encoder_config(variant, image_size=224, **overrides):
    """`ViTBackbone` arguments of a CLIP image tower, for a variant such as `"B/32"`.

    CLIP's ViT adds a LayerNorm before the encoder, has no patch-embedding
    bias, uses quick GELU and LayerNorm epsilon 1e-5.

    Args:
        variant: a ViT variant string (`"B/32"`, `"L/14"`, ...), see `vit_config`.
        image_size: int.
        **overrides: any other `ViTBackbone` argument.

    Returns:
        A dict of `ViTBackbone` constructor arguments.

    Example:
    >>> clip_image_encoder_config("B/32")["pre_norm"]
    True
    """
    return vit_config(
        variant, image_size, pre_norm=True, patch_bias=False, activation="quick_gelu",
        layer_norm_epsilon=1e-5, pooling="token", **overrides,
    )


def clip_text_encoder_config(hidden_dim=512, num_layers=12, num_heads=8, **overrides):
    """`CLIPTextEncoder` arguments; the MLP is four times the width as in GPT-2.

    Args:
        hidden_dim: int.
        num_layers: int.
        num_heads: int.
        **overrides: any other `CLIPTextEncoder` argument.

    Returns:
        A dict of `CLIPTextEncoder` constructor arguments.

    Example:
    >>> clip_text_encoder_config(768, num_heads=12)["mlp_dim"]
    3072
    """
    config = dict(
        vocabulary_size=49408, context_length=77, num_layers=num_layers,
        hidden_dim=hidden_dim, num_heads=num_heads, mlp_dim=4 * hidden_dim,
        activation="quick_gelu", layer_norm_epsilon=1e-5, end_token_id=49407,
    )
    config.update(overrides)
    return config


# name: (image variant, image size, text width, text heads, joint width, description)
_RELEASED = {
    "clip_vit_base_patch32": ("B/32", 224, 512, 8, 512, "openai/clip-vit-base-patch32"),
    "clip_vit_base_patch16": ("B/16", 224, 512, 8, 512, "openai/clip-vit-base-patch16"),
    "clip_vit_large_patch14": ("L/14", 224, 768, 12, 768, "openai/clip-vit-large-patch14"),
    "clip_vit_large_patch14_336": (
        "L/14", 336, 768, 12, 768, "openai/clip-vit-large-patch14-336"
    ),
}
# Parameter counts of transformers' CLIPModel for the same configs (checked by tests).
PARAMETER_COUNTS = {
    "clip_vit_base_patch32": 151_277_313,
    "clip_vit_base_patch16": 149_620_737,
    "clip_vit_large_patch14": 427_616_513,
    "clip_vit_large_patch14_336": 427_944_193,
}


def _register_all():
    for name, (variant, size, text_width, text_heads, joint, hub) in _RELEASED.items():
        register_preset(
            name,
            "CLIP",
            {
                "image_encoder": clip_image_encoder_config(variant, size),
                "text_encoder": clip_text_encoder_config(text_width, num_heads=text_heads),
                "projection_dim": joint,
            },
            f"CLIP ViT-{variant} at {size}x{size}, text width {text_width}; weights: "
            f"hf://{hub}.",
            metadata={"params": PARAMETER_COUNTS[name], "paper": "Radford et al., 2021"},
        )
    # Small enough to train on 2 CPU cores in minutes (the recipe's default) and for
    # tests: 32x32 images, patch 4, two narrow towers, CLIP's full vocabulary and context.
    pico = {
        "image_encoder": clip_image_encoder_config(
            "Ti/4", 32, hidden_dim=128, num_layers=4, num_heads=4, mlp_dim=512
        ),
        "text_encoder": clip_text_encoder_config(128, num_layers=4, num_heads=4),
        "projection_dim": 128,
    }
    register_preset(
        "clip_pico_patch4_32",
        "CLIP",
        pico,
        "CLIP with 128-wide, 4-deep towers, patch 4 at 32x32, context 77, for CPU training.",
    )


_register_all()
