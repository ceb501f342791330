"""DETR checkpoints from transformers: same logits, boxes and auxiliary outputs on every backend."""

import json
import os
import re

import numpy as np
import pytest

from keras_vtx.models.detr import DETR
from tests.test_case import assert_allclose, to_numpy

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TINY_RESNET = dict(embedding_size=8, hidden_sizes=[8, 16, 16, 32], depths=[1, 2, 1, 1])


def _transformers_detr(resnet=TINY_RESNET, seed=0, **overrides):
    """A random transformers DETR with a ResNetConfig backbone and non-trivial BN statistics."""
    config = transformers.DetrConfig(
        use_timm_backbone=False, use_pretrained_backbone=False, backbone=None,
        backbone_config=transformers.ResNetConfig(
            out_features=["stage4"], layer_type="bottleneck", downsample_in_bottleneck=False,
            **resnet,
        ),
        num_labels=3, num_queries=5, d_model=16, encoder_layers=2, decoder_layers=3,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
        decoder_ffn_dim=32, auxiliary_loss=False, **overrides,
    )
    torch.manual_seed(seed)
    model = transformers.DetrForObjectDetection(config).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
            if not tensor.is_floating_point():
                continue
            noise = torch.randn(tensor.shape, generator=generator)
            if name.endswith("running_var"):
                tensor.copy_(0.5 + noise.abs())
            elif "backbone" in name and "convolution" in name:
                tensor.copy_(noise * (2.0 / tensor[0].numel()) ** 0.5)
            else:
                tensor.copy_(noise * 0.3)
    return model


def _inputs():
    rng = np.random.default_rng(0)
    images = rng.standard_normal((2, 96, 80, 3)).astype("float32")
    mask = np.ones((2, 96, 80), "int32")
    # The second image is 60 x 50, padded: features at stride 32 (3 x 3) see padding.
    mask[1, 60:] = 0
    mask[1, :, 50:] = 0
    images[1][mask[1] == 0] = 0.0
    return images, mask


def _reference(model, images, mask):
    """transformers' outputs, and DETR's auxiliary predictions from its decoder layers."""
    hidden = []
    hooks = [layer.register_forward_hook(lambda m, i, o: hidden.append(o))
             for layer in model.model.decoder.layers]
    with torch.no_grad():
        out = model(pixel_values=torch.from_numpy(images).permute(0, 3, 1, 2),
                    pixel_mask=torch.from_numpy(mask).long())
        aux = []
        for h in hidden[:-1]:
            h = h[0] if isinstance(h, tuple) else h
            h = model.model.decoder.layernorm(h)
            aux.append({"logits": model.class_labels_classifier(h).numpy(),
                        "boxes": model.bbox_predictor(h).sigmoid().numpy()})
    for hook in hooks:
        hook.remove()
    return out.logits.numpy(), out.pred_boxes.numpy(), aux


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model = _transformers_detr()
    path = str(tmp_path_factory.mktemp("detr"))
    model.save_pretrained(path)
    return model, path


def test_logits_boxes_and_aux_outputs_match_transformers(checkpoint):
    reference, path = checkpoint
    images, mask = _inputs()
    logits, boxes, aux = _reference(reference, images, mask)
    model = DETR.from_preset(path)
    assert model.num_classes == 3 and model.num_queries == 5
    out = model({"images": images, "pixel_mask": mask})
    assert_allclose(out["logits"], logits, atol=1e-4, rtol=1e-4)
    assert_allclose(out["boxes"], boxes, atol=1e-4, rtol=1e-4)
    assert len(out["aux_outputs"]) == 2
    for ours, theirs in zip(out["aux_outputs"], aux):
        assert_allclose(ours["logits"], theirs["logits"], atol=1e-4, rtol=1e-4)
        assert_allclose(ours["boxes"], theirs["boxes"], atol=1e-4, rtol=1e-4)
    # The padding matters: without the mask the padded image's predictions change.
    unmasked = to_numpy(model(images)["logits"])
    assert np.abs(unmasked[1] - logits[1]).max() > 3e-4
    # transformers' in-memory names (transformers 5 `state_dict()`) load the same.
    with torch.no_grad():
        in_memory = {k: v.numpy() for k, v in reference.state_dict().items()}
    from keras_vtx.convert.checkpoint_files import read_state_dict
    from keras_vtx.convert.detr import _canonical_names

    assert _canonical_names(in_memory).keys() == read_state_dict(path).keys()


def test_attention_scores_match_transformers_attentions(checkpoint):
    reference, path = checkpoint
    images, mask = _inputs()
    with torch.no_grad():
        expected = reference(pixel_values=torch.from_numpy(images).permute(0, 3, 1, 2),
                             pixel_mask=torch.from_numpy(mask).long(), output_attentions=True)
    model = DETR.from_preset(path, return_attention_scores=True)
    out = model({"images": images, "pixel_mask": mask})
    assert len(out["encoder_attention_scores"]) == 2
    assert len(out["decoder_attention_scores"]) == 3
    for ours, theirs in zip(out["encoder_attention_scores"], expected.encoder_attentions):
        assert_allclose(ours, theirs.numpy(), atol=1e-5)
    for ours, theirs in zip(out["decoder_attention_scores"], expected.cross_attentions):
        assert_allclose(ours, theirs.numpy(), atol=1e-5)
    # 96 x 80 pixels at stride 32: a 3 x 3 feature map; the second image's
    # 60 x 50 real pixels cover its top-left 2 x 2 positions.
    feature_mask = to_numpy(out["feature_mask"])
    assert feature_mask.shape == (2, 3, 3)
    assert feature_mask[0].all() and feature_mask[1].sum() == 4 and feature_mask[1, :2, :2].all()
    assert_allclose(out["logits"], model.rebuild_with({}, {"return_attention_scores": False})(
        {"images": images, "pixel_mask": mask})["logits"], atol=1e-5)


def test_overrides_keep_the_weights_that_fit(checkpoint):
    _, path = checkpoint
    images, mask = _inputs()
    full = DETR.from_preset(path)
    # Fine-tuning on another label set: a fresh class head, said so; the rest is kept.
    with pytest.warns(UserWarning, match="class_head/kernel, class_head/bias changed shape"):
        model = DETR.from_preset(path, num_classes=7, frozen_stages=0)
    assert model.num_classes == 7 and model.backbone.frozen_stages == 0
    out = model({"images": images, "pixel_mask": mask})
    assert out["logits"].shape == (2, 5, 8)
    assert_allclose(out["boxes"], full({"images": images, "pixel_mask": mask})["boxes"],
                    atol=1e-6)


def _timm_name(key):
    key = key.replace("embedder.embedder.convolution", "conv1")
    key = key.replace("embedder.embedder.normalization", "bn1")

    def block(m):
        stage, index, rest = int(m.group(1)) + 1, m.group(2), m.group(3)
        rest = rest.replace("shortcut.convolution", "downsample.0")
        rest = rest.replace("shortcut.normalization", "downsample.1")
        rest = re.sub(r"layer\.(\d)\.convolution", lambda n: f"conv{int(n.group(1)) + 1}", rest)
        rest = re.sub(r"layer\.(\d)\.normalization", lambda n: f"bn{int(n.group(1)) + 1}", rest)
        return f"layer{stage}.{index}.{rest}"

    return re.sub(r"encoder\.stages\.(\d+)\.layers\.(\d+)\.(.*)$", block, key)


@pytest.mark.slow
# The timm names map to the same variables on every backend (the forward parity of the
# converted model is checked on all three above): run once, where a ResNet-50 builds fastest
# (eager JAX took 25 s in CI for what PyTorch does in 4).
@pytest.mark.backend_independent
def test_timm_layout_of_the_published_checkpoints(tmp_path):
    """facebook/detr-resnet-50's layout: a timm ResNet-50 under conv_encoder.model."""
    from safetensors.numpy import load_file, save_file

    reference = _transformers_detr(
        resnet=dict(embedding_size=64, hidden_sizes=[256, 512, 1024, 2048], depths=[3, 4, 6, 3])
    )
    reference.save_pretrained(tmp_path)
    weights = load_file(str(tmp_path / "model.safetensors"))
    prefix = "model.backbone.conv_encoder.model."
    renamed = {
        (prefix + _timm_name(k[len(prefix):]) if k.startswith(prefix) else k): v
        for k, v in weights.items()
    }
    assert any("layer3.5.downsample" not in k and "layer1.0.downsample.0" in k for k in renamed)
    save_file(renamed, str(tmp_path / "model.safetensors"))
    with open(tmp_path / "config.json") as f:
        config = json.load(f)
    config.update(use_timm_backbone=True, backbone="resnet50", backbone_config=None,
                  dilation=False)
    with open(tmp_path / "config.json", "w") as f:
        json.dump(config, f)
    images, mask = _inputs()
    logits, boxes, _ = _reference(reference, images, mask)
    model = DETR.from_preset(os.fspath(tmp_path))
    assert model.backbone.blocks_per_stage == (3, 4, 6, 3)
    out = model({"images": images, "pixel_mask": mask})
    assert_allclose(out["logits"], logits, atol=1e-4, rtol=1e-4)
    assert_allclose(out["boxes"], boxes, atol=1e-4, rtol=1e-4)


@pytest.mark.backend_independent
def test_config_conversion_and_unsupported_settings():
    from keras_vtx.convert.detr import detr_config_from_transformers

    config = detr_config_from_transformers(
        {"d_model": 64, "num_queries": 10, "encoder_layers": 2, "decoder_layers": 3,
         "encoder_attention_heads": 4, "decoder_attention_heads": 4,
         "encoder_ffn_dim": 128, "decoder_ffn_dim": 128, "dropout": 0.0})
    assert config == dict(num_queries=10, hidden_dim=64, num_heads=4, num_encoder_layers=2,
                          num_decoder_layers=3, mlp_dim=128, dropout=0.0,
                          attention_dropout=0.0, aux_loss=True)
    # Every setting DETR cannot reproduce is named at once, with both values.
    with pytest.raises(ValueError, match=r"DETR does not support: activation_function='gelu' "
                                         r"\(must be 'relu'\), position_embedding_type="
                                         r"'learned' \(must be 'sine'\)"):
        detr_config_from_transformers({"activation_function": "gelu",
                                       "position_embedding_type": "learned"})
