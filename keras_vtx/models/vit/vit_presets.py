"""ViT variants as a table (big_vision style) and the named presets built from it."""

from keras_vtx.models.presets import register_preset

# name: (width, depth, mlp_dim, heads). Ti/S from DeiT, B/L/H from ViT (Table 1),
# g/G from "Scaling Vision Transformers" (Table 2).
VARIANTS = {
    "Ti": (192, 12, 768, 3),
    "S": (384, 12, 1536, 6),
    "M": (512, 12, 2048, 8),
    "B": (768, 12, 3072, 12),
    "L": (1024, 24, 4096, 16),
    "H": (1280, 32, 5120, 16),
    "g": (1408, 40, 6144, 16),
    "G": (1664, 48, 8192, 16),
}
VARIANT_NAMES = {
    "Ti": "tiny", "S": "small", "M": "medium", "B": "base",
    "L": "large", "H": "huge", "g": "giant", "G": "gigantic",
}
PATCH_SIZES = (8, 14, 16, 32)
# ViT's own preprocessing of the released checkpoints: [0, 1] -> [-1, 1].
VIT_MEAN = (0.5, 0.5, 0.5)
VIT_STD = (0.5, 0.5, 0.5)


def vit_config(variant, image_size=224, **overrides):
    """Returns `ViTBackbone` arguments for a variant string such as `"B/16"`.

    Args:
        variant: `"<size>/<patch>"` with size in `VARIANTS` (Ti, S, M, B, L, H,
            g, G), for example `"L/14"`.
        image_size: int or `(height, width)`.
        **overrides: any other `ViTBackbone` argument.

    Returns:
        A dict of `ViTBackbone` constructor arguments.

    Example:
    >>> vit_config("B/16")["hidden_dim"]
    768
    """
    try:
        size, patch = variant.split("/")
        width, depth, mlp, heads = VARIANTS[size]
        patch = int(patch)
    except (ValueError, KeyError, AttributeError):
        raise ValueError(
            f"`variant` must look like 'B/16' with a size in {list(VARIANTS)}; "
            f"received {variant!r}."
        ) from None
    config = dict(
        image_size=image_size, patch_size=patch, num_layers=depth,
        hidden_dim=width, num_heads=heads, mlp_dim=mlp,
    )
    config.update(overrides)
    return config


def _classifier(backbone, num_classes=1000):
    return {"backbone": backbone, "num_classes": num_classes, "include_preprocessing": True,
            "mean": VIT_MEAN, "std": VIT_STD}


def _register_all():
    for size, long_name in VARIANT_NAMES.items():
        for patch in PATCH_SIZES:
            for res in (224, 384) if size in ("B", "L") and patch in (16, 32) else (224,):
                register_preset(
                    f"vit_{long_name}_patch{patch}_{res}",
                    "ViTClassifier",
                    _classifier(vit_config(f"{size}/{patch}", res)),
                    f"ViT-{size}/{patch} at {res}x{res}, ImageNet-1k head.",
                )
    # The R50+ViT-B/16 hybrid: a ResNet-50 stem (3, 4, 9 blocks, stride 16), patch 1.
    for res in (224, 384):
        register_preset(
            f"vit_base_r50_s16_{res}",
            "ViTClassifier",
            _classifier(vit_config("B/1", res, hybrid_stem_depths=(3, 4, 9))),
            f"R50+ViT-B/16 hybrid at {res}x{res}, ImageNet-1k head.",
        )
    # Small enough to train on 2 CPU cores in minutes: the recipe's default on the
    # embedded shapes data set.
    register_preset(
        "vit_pico_patch4_32",
        "ViTClassifier",
        _classifier(
            dict(image_size=32, patch_size=4, num_layers=6, hidden_dim=128,
                 num_heads=4, mlp_dim=256),
            num_classes=6,
        ),
        "ViT with width 128, depth 6, patch 4 at 32x32 for CPU training on the shapes set.",
    )


_register_all()
