"""Writes docs/vit_presets_table.md and docs/vit_variants_table.md with parameter counts.

The counts are computed from each preset's config with the formulas below, without
building the models (the largest presets hold billions of parameters). `--check` builds
a few small presets and one tiny model of every architectural option, compares the
formulas with Keras' `count_params()`, and checks that the tables on disk are current;
it writes nothing and exits non-zero on any mismatch.

    python docs/gen_presets_table.py           # regenerate the tables
    python docs/gen_presets_table.py --check   # verify formulas and freshness
"""

import argparse
import inspect
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from keras_vtx.models import (  # noqa: E402
    ViTBackbone,
    ViTClassifier,
    get_preset,
    list_presets,
    vit_config,
)
from keras_vtx.models.vit.vit_presets import VARIANTS  # noqa: E402

TABLE = os.path.join(ROOT, "docs", "vit_presets_table.md")
VARIANTS_TABLE = os.path.join(ROOT, "docs", "vit_variants_table.md")
# The patch size each size is usually quoted at, and the published parameter count:
# DeiT (Touvron et al., 2021) Table 1 for Ti and S, ViT (Dosovitskiy et al., 2021)
# Table 1 for B, L and H, "Scaling Vision Transformers" (Zhai et al., 2022) Table 2 for
# g and G. M has no published count of its own.
REFERENCE = {
    "Ti": (16, "5M (DeiT)"), "S": (16, "22M (DeiT)"), "M": (16, "—"),
    "B": (16, "86M (ViT)"), "L": (16, "307M (ViT)"), "H": (14, "632M (ViT)"),
    "g": (14, "1011M (Scaling ViT)"), "G": (14, "1843M (Scaling ViT)"),
}
SMALL_PRESETS = ("vit_pico_patch4_32", "vit_tiny_patch16_224", "vit_small_patch32_224")
# Tiny configs that between them switch on every option that changes the weights.
TINY = dict(image_size=16, patch_size=4, num_layers=2, hidden_dim=16, num_heads=2, mlp_dim=24)
OPTION_CONFIGS = (
    TINY,
    {**TINY, "pooling": "gap", "class_token": False},
    {**TINY, "pooling": "map"},
    {**TINY, "pooling": "map", "class_token": False, "representation_size": 12},
    {**TINY, "representation_size": 20, "pre_norm": True},
    {**TINY, "image_size": (16, 24), "patch_size": (4, 2), "num_channels": 1},
    {**TINY, "image_size": 32, "patch_size": 1, "hybrid_stem_depths": (1, 2),
     "hybrid_stem_width": 32},
)


def backbone_defaults():
    parameters = inspect.signature(ViTBackbone.__init__).parameters
    return {
        name: p.default for name, p in parameters.items()
        if p.default is not inspect.Parameter.empty
    }


def _pair(value):
    return (value, value) if isinstance(value, int) else tuple(value)


def resnet_stem_params(in_channels, depths, width):
    """Weights of `ResNetStem`: bias-free convolutions, each followed by a GroupNorm."""

    def conv_norm(kernel, cin, cout):
        return kernel * kernel * cin * cout + 2 * cout

    total = conv_norm(7, in_channels, width)
    channels = width
    for stage, depth in enumerate(depths):
        out = width * 4 * 2**stage
        mid = out // 4
        total += conv_norm(1, channels, out)  # the first block's projection shortcut
        for _ in range(depth):
            total += conv_norm(1, channels, mid) + conv_norm(3, mid, mid)
            total += conv_norm(1, mid, out)
            channels = out
    return total, channels


def backbone_params(config):
    """The number of weights of `ViTBackbone(**config)`."""
    c = {**backbone_defaults(), **config}
    d, m, depth = c["hidden_dim"], c["mlp_dim"], c["num_layers"]
    height, width = _pair(c["image_size"])
    ph, pw = _pair(c["patch_size"])
    channels, stride, total = c["num_channels"], 1, 0
    if c["hybrid_stem_depths"]:
        stem, channels = resnet_stem_params(
            channels, c["hybrid_stem_depths"], c["hybrid_stem_width"]
        )
        total += stem
        stride = 2 ** (len(c["hybrid_stem_depths"]) + 1)
    tokens = (height // (ph * stride)) * (width // (pw * stride)) + int(c["class_token"])
    total += ph * pw * channels * d + d  # patch projection (a strided convolution)
    total += d * int(c["class_token"]) + tokens * d  # class token, position table
    total += 2 * d * int(c["pre_norm"])
    attention = 4 * (d * d + d)  # query, key, value and output projections
    mlp = d * m + m + m * d + d
    total += depth * (attention + mlp + 2 * (2 * d)) + 2 * d  # two LayerNorms a block, final
    if c["pooling"] == "map":
        total += d + attention + 2 * d + mlp  # probe, attention, LayerNorm, MLP
    pooled = d
    if c["representation_size"]:
        pooled = c["representation_size"]
        total += d * pooled + pooled
    return total, pooled, tokens


def classifier_params(config):
    """The number of weights of the `ViTClassifier` a preset config builds."""
    backbone, pooled, _ = backbone_params(config["backbone"])
    num_classes = config.get("num_classes", 1000)
    return backbone + pooled * num_classes + num_classes


def variant(backbone):
    """`(size, label)`: the `VARIANTS` key (None for other widths) and a display name."""
    c = {**backbone_defaults(), **backbone}
    dims = (c["hidden_dim"], c["num_layers"], c["mlp_dim"], c["num_heads"])
    size = next((name for name, value in VARIANTS.items() if value == dims), None)
    ph, _ = _pair(c["patch_size"])
    if size is None:
        return None, "custom"
    if c["hybrid_stem_depths"]:
        # The hybrids are named by their effective patch: the stem's stride times the patch.
        stem = "R50" if tuple(c["hybrid_stem_depths"]) == (3, 4, 9) else "ResNet"
        return size, f"{stem}+{size}/{ph * 2 ** (len(c['hybrid_stem_depths']) + 1)}"
    return size, f"{size}/{ph}"


def _row_order(name):
    backbone = {**backbone_defaults(), **get_preset(name)["config"]["backbone"]}
    size, _ = variant(backbone)
    rank = -1 if size is None else list(VARIANTS).index(size)
    return (rank, bool(backbone["hybrid_stem_depths"]), _pair(backbone["patch_size"]),
            _pair(backbone["image_size"]), name)


def render_table():
    lines = [
        "<!-- Generated by docs/gen_presets_table.py from the preset registry; "
        "do not edit by hand. -->",
        "",
        "| Preset | Variant | Resolution | Tokens | Width | Depth | MLP | Heads "
        "| Backbone parameters | Classes | Classifier parameters |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in sorted(list_presets("ViTClassifier"), key=_row_order):
        config = get_preset(name)["config"]
        backbone = {**backbone_defaults(), **config["backbone"]}
        count, _, tokens = backbone_params(backbone)
        height, width = _pair(backbone["image_size"])
        lines.append(
            f"| `{name}` | {variant(backbone)[1]} | {height}x{width} | {tokens} "
            f"| {backbone['hidden_dim']} | {backbone['num_layers']} | {backbone['mlp_dim']} "
            f"| {backbone['num_heads']} | {count:,} | {config.get('num_classes', 1000)} "
            f"| {classifier_params(config):,} |"
        )
    return "\n".join(lines) + "\n"


def render_variants_table():
    lines = [
        "<!-- Generated by docs/gen_presets_table.py; do not edit by hand. -->",
        "",
        "| Size | Width | Depth | MLP | Heads | At 224x224 | Backbone parameters "
        "| With a 1000-class head | Published |",
        "| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | --- |",
    ]
    for size, (width, depth, mlp, heads) in VARIANTS.items():
        patch, published = REFERENCE[size]
        config = vit_config(f"{size}/{patch}")
        classifier = classifier_params({"backbone": config, "num_classes": 1000})
        lines.append(
            f"| {size} | {width} | {depth} | {mlp} | {heads} | `vit_config(\"{size}/{patch}\")` "
            f"| {backbone_params(config)[0]:,} | {classifier:,} | {published} |"
        )
    return "\n".join(lines) + "\n"


def check():
    """Compares the formulas with built models; returns a list of failures."""
    failures = []
    for name in SMALL_PRESETS:
        model = ViTClassifier.from_preset(name)
        config = get_preset(name)["config"]
        for what, built, expected in (
            ("backbone", model.backbone.count_params(), backbone_params(config["backbone"])[0]),
            ("classifier", model.count_params(), classifier_params(config)),
        ):
            print(f"{name} {what}: formula {expected:,}, count_params() {built:,}")
            if built != expected:
                failures.append(f"{name} {what}")
    for config in OPTION_CONFIGS:
        built = ViTBackbone(**config).count_params()
        expected = backbone_params(config)[0]
        print(f"{config}: formula {expected:,}, count_params() {built:,}")
        if built != expected:
            failures.append(str(config))
    for path, render in ((TABLE, render_table), (VARIANTS_TABLE, render_variants_table)):
        with open(path) as f:
            if f.read() != render():
                failures.append(f"{path} is out of date: run python docs/gen_presets_table.py")
    return failures


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true",
        help="verify the formulas against built models and that the tables are current",
    )
    args = parser.parse_args()
    if args.check:
        failures = check()
        if failures:
            print("FAILED: " + "; ".join(failures))
            return 1
        print("All parameter counts match and the tables are current.")
        return 0
    for path, render in ((TABLE, render_table), (VARIANTS_TABLE, render_variants_table)):
        with open(path, "w") as f:
            f.write(render())
        print(f"Wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
