import inspect
import json

import numpy as np
import pytest

from keras_vtx.models import (
    ViTBackbone,
    ViTClassifier,
    get_preset,
    list_presets,
    register_preset,
    vit_config,
)
from tests.test_case import shapes_only, to_numpy

BACKBONE_ARGS = set(inspect.signature(ViTBackbone.__init__).parameters) - {"self", "kwargs"}
CLASSIFIER_ARGS = set(inspect.signature(ViTClassifier.__init__).parameters) - {"self", "kwargs"}


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _stem_params(depths, width, channels):
    """Weight-standardised convs have no bias; every GroupNorm has a scale and an offset."""
    total = 7 * 7 * channels * width + 2 * width
    cin = width
    for s, depth in enumerate(depths):
        out = width * 4 * 2**s
        mid = out // 4
        for b in range(depth):
            total += cin * mid + 9 * mid * mid + mid * out + 2 * (mid + mid + out)
            if b == 0:
                total += cin * out + 2 * out
            cin = out
    return total, cin


def backbone_params(c):
    """ViTBackbone's parameter count from its config, by the architecture's formula."""
    d, mlp = c["hidden_dim"], c["mlp_dim"]
    ph, pw = _pair(c["patch_size"])
    h, w = _pair(c["image_size"])
    channels = c.get("num_channels", 3)
    total, stride = 0, 1
    if c.get("hybrid_stem_depths"):
        stem, channels = _stem_params(c["hybrid_stem_depths"], c.get("hybrid_stem_width", 64),
                                      channels)
        total += stem
        stride = 2 ** (len(c["hybrid_stem_depths"]) + 1)
    grid = (h // (ph * stride)) * (w // (pw * stride))
    prefix = 1 if c.get("class_token", True) else 0
    attention = 4 * (d * d + d)
    mlp_params = d * mlp + mlp + mlp * d + d
    total += ph * pw * channels * d + d  # patch embedding
    total += prefix * d + (prefix + grid) * d  # class token, position table
    total += 2 * d if c.get("pre_norm") else 0
    total += c["num_layers"] * (4 * d + attention + mlp_params) + 2 * d  # blocks, final norm
    if c.get("pooling", "token") == "map":
        total += d + attention + 2 * d + mlp_params
    if c.get("representation_size"):
        total += d * c["representation_size"] + c["representation_size"]
    return total


def preset_params(name):
    config = get_preset(name)["config"]
    backbone = config["backbone"]
    pooled = backbone.get("representation_size") or backbone["hidden_dim"]
    return backbone_params(backbone) + pooled * config["num_classes"] + config["num_classes"]


PRESETS = list_presets("ViTClassifier")
SMALL = [n for n in PRESETS if preset_params(n) < 25e6]


def test_registry_contents():
    assert "vit_pico_patch4_32" in PRESETS
    for name in ("vit_base_patch16_224", "vit_large_patch16_384", "vit_huge_patch14_224",
                 "vit_base_r50_s16_224", "vit_tiny_patch16_224", "vit_small_patch32_224"):
        assert name in PRESETS
    assert list_presets("ViTClassifier") == PRESETS
    assert list_presets("NoSuchClass") == []
    assert len(SMALL) >= 9


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_config_is_valid(name):
    entry = get_preset(name)
    assert entry["class_name"] == "ViTClassifier"
    assert entry["description"]
    config = entry["config"]
    assert set(config) <= CLASSIFIER_ARGS
    backbone = config["backbone"]
    assert set(backbone) <= BACKBONE_ARGS, set(backbone) - BACKBONE_ARGS
    assert backbone["hidden_dim"] % backbone["num_heads"] == 0
    assert backbone.get("pooling", "token") in ("token", "gap", "map")
    stride = 2 ** (len(backbone["hybrid_stem_depths"]) + 1) if backbone.get(
        "hybrid_stem_depths") else 1
    for size, patch in zip(_pair(backbone["image_size"]), _pair(backbone["patch_size"])):
        assert size % (patch * stride) == 0
    # The config is plain JSON, so it can be written into a saved preset.
    assert json.loads(json.dumps(config)) == config
    assert preset_params(name) > 0


@pytest.mark.parametrize("name", SMALL)
def test_small_presets_build_with_the_formula_count(name):
    with shapes_only():
        model = ViTClassifier.from_preset(name)
    assert model.count_params() == preset_params(name)
    config = get_preset(name)["config"]
    assert model.num_classes == config["num_classes"]
    assert model.include_preprocessing == config["include_preprocessing"]


def test_pico_preset_runs():
    model = ViTClassifier.from_preset("vit_pico_patch4_32")
    pixels = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    logits = to_numpy(model(pixels))
    assert logits.shape == (2, 6) and np.all(np.isfinite(logits))
    # Overrides go to the backbone or the task.
    model = ViTClassifier.from_preset("vit_pico_patch4_32", num_classes=3, num_layers=1)
    assert model.num_classes == 3 and model.backbone.num_layers == 1
    backbone = ViTBackbone.from_preset("vit_pico_patch4_32", pooling="gap")
    assert backbone.pooling == "gap" and backbone.hidden_dim == 128


def test_formula_matches_built_models_off_the_beaten_path():
    for overrides in ({"pooling": "map", "representation_size": 24, "pre_norm": True},
                      {"pooling": "gap", "class_token": False, "image_size": (16, 24)},
                      {"patch_size": 1, "hybrid_stem_depths": (1, 2), "hybrid_stem_width": 32}):
        config = {**dict(image_size=16, patch_size=4, num_layers=2, hidden_dim=16,
                         num_heads=2, mlp_dim=32), **overrides}
        assert ViTBackbone(**config).count_params() == backbone_params(config), overrides


@pytest.mark.parametrize("variant,paper", [("B/16", 86e6), ("L/16", 307e6), ("H/14", 632e6)])
def test_paper_table1_parameter_counts(variant, paper):
    # ViT paper, Table 1 (backbone without head): 85.8M, 303.3M and 630.8M here.
    count = backbone_params(vit_config(variant))
    assert abs(count - paper) / paper < 0.015, count


@pytest.mark.slow
def test_base_patch16_builds_with_the_paper_count():
    # Building L/16 and H/14 too would add 10-35 s per backend; the formula they are
    # counted with is checked here on B/16 and on every small preset.
    config = vit_config("B/16")
    with shapes_only():
        count = ViTBackbone(**config).count_params()
    assert count == backbone_params(config)
    assert abs(count - 86e6) / 86e6 < 0.015, count


@pytest.mark.slow
def test_r50_hybrid_builds_with_98m_parameters():
    config = get_preset("vit_base_r50_s16_224")["config"]["backbone"]
    with shapes_only():
        model = ViTBackbone(**config)
    assert model.grid_size == (14, 14)
    count = model.count_params()
    assert count == backbone_params(config)
    assert abs(count - 98e6) / 98e6 < 0.015, count


def test_get_preset_returns_a_copy():
    entry = get_preset("vit_pico_patch4_32")
    entry["config"]["backbone"]["hidden_dim"] = 1
    assert get_preset("vit_pico_patch4_32")["config"]["backbone"]["hidden_dim"] == 128


def test_register_duplicate_and_unknown_names():
    with pytest.raises(ValueError, match="already registered"):
        register_preset("vit_pico_patch4_32", "ViTClassifier", {})
    with pytest.raises(ValueError, match="Close names: .*vit_pico_patch4_32"):
        get_preset("vit_pico_patch4_23")
    with pytest.raises(ValueError, match="Close names: .*vit_base_patch16_224"):
        ViTClassifier.from_preset("vit_base_patch16_244")
    with pytest.raises(TypeError, match="preset"):
        ViTClassifier.from_preset(123)


def test_directory_that_is_not_a_preset(tmp_path):
    with pytest.raises(ValueError, match="is not a preset"):
        ViTClassifier.from_preset(tmp_path)
