"""Numerical parity of `ResNetBackbone` with transformers' `ResNetModel`, on every backend.

Tiny transformers ResNets get random batch-norm weights and running statistics
(convolutions keep their random kaiming init), run in eval mode (batch norm
then uses the running statistics, as a frozen batch norm does), and their
state dict is loaded with `load_resnet_weights`. The timm/torchvision layout
is tested by renaming the same state dict; DC5 by switching the last stage of
the PyTorch model to torchvision's `replace_stride_with_dilation` semantics.
"""

import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from keras_vtx.convert.resnet import (  # noqa: E402
    load_resnet_weights,
    resnet_config_from_transformers,
)
from keras_vtx.models.detr.resnet_backbone import ResNetBackbone  # noqa: E402
from tests.test_case import random_images, to_numpy  # noqa: E402

ATOL = 1e-4
# v1.5 bottleneck ResNet; stem 8 = stage 1's output: stage 1 has an identity shortcut.
TINY = dict(embedding_size=8, hidden_sizes=[8, 16, 16, 32], depths=[1, 1, 1, 2],
            layer_type="bottleneck", downsample_in_bottleneck=False)
DETR_PREFIX = "model.backbone.conv_encoder.model."
# Odd sizes check PyTorch's symmetric padding of the strided convolutions and pool. The
# same sizes as tests/models/test_resnet_backbone.py: JAX compiles eager ops per shape.
EVEN, ODD = (64, 32), (65, 97)


def reference_model(seed=0, **overrides):
    config = transformers.ResNetConfig(**{**TINY, **overrides})
    model = transformers.ResNetModel(config).eval()
    generator = torch.Generator().manual_seed(seed)

    def uniform(shape, low, high):
        return torch.rand(shape, generator=generator) * (high - low) + low

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                n = module.num_features
                module.weight.copy_(uniform(n, 0.5, 1.5))
                module.bias.copy_(uniform(n, -0.3, 0.3))
                module.running_mean.copy_(uniform(n, -0.3, 0.3))
                module.running_var.copy_(uniform(n, 0.5, 2.0))
    return model


def state_dict(model):
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def backbone_for(model, **overrides):
    config = resnet_config_from_transformers(model.config.to_dict())
    return ResNetBackbone(**{**config, **overrides})


def reference_features(model, images):
    with torch.no_grad():
        out = model(torch.from_numpy(images.transpose(0, 3, 1, 2))).last_hidden_state
    return out.numpy().transpose(0, 2, 3, 1)


def check(ours, expected):
    ours = to_numpy(ours)
    assert ours.shape == expected.shape, (ours.shape, expected.shape)
    diff = float(np.max(np.abs(ours - expected)))
    assert diff < ATOL, f"max abs difference {diff:.2e}"
    # Not trivially passing: the features are O(1) and vary.
    assert np.abs(expected).max() > 0.1


def to_timm_names(weights, prefix=""):
    """transformers ResNetModel names -> timm/torchvision names (as in facebook/detr-resnet-50)."""
    rules = (
        (r"^embedder\.embedder\.convolution\.", "conv1."),
        (r"^embedder\.embedder\.normalization\.", "bn1."),
        (r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.convolution\.",
         lambda m: f"layer{int(m[1]) + 1}.{m[2]}.downsample.0."),
        (r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.normalization\.",
         lambda m: f"layer{int(m[1]) + 1}.{m[2]}.downsample.1."),
        (r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d)\.convolution\.",
         lambda m: f"layer{int(m[1]) + 1}.{m[2]}.conv{int(m[3]) + 1}."),
        (r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d)\.normalization\.",
         lambda m: f"layer{int(m[1]) + 1}.{m[2]}.bn{int(m[3]) + 1}."),
    )
    renamed = {}
    for key, value in weights.items():
        new = key
        for pattern, replacement in rules:
            new = re.sub(pattern, replacement, new)
        assert new != key, key
        renamed[prefix + new] = value
    return renamed


@pytest.mark.parametrize("embedding_size", [8, 12], ids=["identity", "projection"])
def test_transformers_layout_parity(embedding_size):
    reference = reference_model(embedding_size=embedding_size)
    model = backbone_for(reference)
    has_projection = any("stages.0.layers.0.shortcut" in k for k in reference.state_dict())
    assert has_projection == (embedding_size != 8)
    unused = load_resnet_weights(model, state_dict(reference))
    assert unused == []
    for size in [EVEN, ODD]:
        images = random_images(1, size, seed=1)
        check(model(images), reference_features(reference, images))


def test_timm_layout_parity_with_prefix():
    reference = reference_model(seed=1)
    weights = to_timm_names(state_dict(reference), DETR_PREFIX)
    assert DETR_PREFIX + "layer2.0.downsample.0.weight" in weights
    assert DETR_PREFIX + "layer1.0.bn3.num_batches_tracked" in weights
    weights[DETR_PREFIX + "fc.weight"] = np.zeros((3, 128), "float32")
    weights["model.input_projection.weight"] = np.zeros((4, 128, 1, 1), "float32")
    model = backbone_for(reference)
    # Torch tensors are read as well as NumPy arrays.
    weights = {k: torch.from_numpy(v) if "layer4" in k else v for k, v in weights.items()}
    unused = load_resnet_weights(model, weights, prefix=DETR_PREFIX, layout="timm")
    assert unused == [DETR_PREFIX + "fc.weight"]
    images = random_images(1, ODD, seed=2)
    check(model(images), reference_features(reference, images))


def test_dc5_parity():
    reference = reference_model(seed=2)
    # torchvision `replace_stride_with_dilation=[False, False, True]` on the last stage: the
    # first block loses its stride (3x3 and shortcut) with dilation 1, later blocks get
    # dilation 2 (padding 2). transformers' ResNet has no such option; PyTorch's own conv
    # arithmetic is the reference.
    last = reference.encoder.stages[-1].layers
    last[0].layer[1].convolution.stride = (1, 1)
    last[0].shortcut.convolution.stride = (1, 1)
    for block in list(last)[1:]:
        block.layer[1].convolution.dilation = (2, 2)
        block.layer[1].convolution.padding = (2, 2)
    model = backbone_for(reference, dilation=True)
    load_resnet_weights(model, state_dict(reference))
    images = random_images(1, ODD, seed=3)
    expected = reference_features(reference, images)
    assert expected.shape[1:3] == (5, 7)  # ceil(65 / 16), ceil(97 / 16)
    check(model(images), expected)


def test_errors_list_missing_keys_and_shape_mismatches():
    reference = reference_model()
    weights = state_dict(reference)
    del weights["encoder.stages.1.layers.0.layer.2.normalization.running_var"]
    model = backbone_for(reference)
    before = [to_numpy(v) for v in model.weights]
    with pytest.raises(ValueError, match=r"1 missing keys.*stages\.1\.layers\.0\.layer\.2"):
        load_resnet_weights(model, weights)
    # Nothing was assigned.
    for b, v in zip(before, model.weights):
        np.testing.assert_array_equal(b, to_numpy(v))
    wider = backbone_for(reference, stem_filters=16)
    with pytest.raises(ValueError, match=r"shape mismatches.*embedder\.embedder\.convolution"):
        load_resnet_weights(wider, state_dict(reference))
    with pytest.raises(ValueError, match="missing keys"):
        load_resnet_weights(model, state_dict(reference), layout="timm")
    with pytest.raises(ValueError, match="`layout`"):
        load_resnet_weights(model, weights, layout="torchvision")


def test_load_resnet_checkpoint_directory(tmp_path):
    # A classifier checkpoint: keys under `resnet.`, the classifier head left out.
    config = transformers.ResNetConfig(**TINY, num_labels=3)
    classifier = transformers.ResNetForImageClassification(config).eval()
    classifier.resnet = reference_model(seed=4)
    classifier.save_pretrained(str(tmp_path))
    model = ResNetBackbone.from_preset(str(tmp_path), frozen_stages=2)  # overrides after conversion
    assert model.frozen_stages == 2 and model.stage_filters == (2, 4, 4, 8)
    images = random_images(1, EVEN, seed=5)
    check(model(images), reference_features(classifier.resnet, images))


def test_config_conversion():
    assert resnet_config_from_transformers(transformers.ResNetConfig().to_dict()) == {
        "stage_filters": (64, 128, 256, 512), "blocks_per_stage": (3, 4, 6, 3),
        "stem_filters": 64, "bottleneck_expansion": 4, "image_shape": (None, None, 3)}
    timm = {"model_type": "timm_backbone", "backbone": "resnet50", "num_channels": 3}
    assert resnet_config_from_transformers(timm) == {
        "depth": 50, "dilation": False, "image_shape": (None, None, 3)}
    with pytest.raises(ValueError, match="layer_type"):
        resnet_config_from_transformers({"model_type": "resnet", "layer_type": "basic"})
    with pytest.raises(ValueError, match="downsample_in_bottleneck"):
        resnet_config_from_transformers({"model_type": "resnet",
                                         "downsample_in_bottleneck": True})
    with pytest.raises(ValueError, match="resnet50"):
        resnet_config_from_transformers({"model_type": "timm_backbone", "backbone": "resnet26d"})
