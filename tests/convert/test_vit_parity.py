"""Numerical parity of converted transformers ViT checkpoints, on every Keras backend.

Tiny transformers models get random weights (norm scales and biases included, so
a swapped or transposed tensor shows), are written with `save_pretrained()` and
loaded with `from_preset()`; outputs are compared in float32 to 1e-4.
"""

import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

from keras_vtx.models.vit import ViTBackbone, ViTClassifier  # noqa: E402
from tests.test_case import random_images, to_numpy  # noqa: E402

ATOL = 1e-4
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            image_size=16, patch_size=4)


def hf_config(**overrides):
    return transformers.ViTConfig(**{**TINY, **overrides})


def randomize(model, seed=0):
    """Replaces transformers' init (unit norms, zero biases) by random values everywhere."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=generator) * 0.2
            is_norm_scale = "layernorm" in name and name.endswith("weight")
            p.copy_(noise + 1.0 if is_norm_scale else noise)
    return model.eval()


def save(model, path):
    model.save_pretrained(str(path))
    return str(path)


def torch_forward(model, images, **kwargs):
    with torch.no_grad():
        return model(torch.from_numpy(images.transpose(0, 3, 1, 2)), **kwargs)


def check(ours, theirs, what):
    ours, theirs = to_numpy(ours), theirs.detach().numpy()
    assert ours.shape == theirs.shape, (what, ours.shape, theirs.shape)
    diff = float(np.max(np.abs(ours - theirs)))
    assert diff < ATOL, f"{what}: max abs difference {diff:.2e}"
    return diff


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        # Non-square images: ViTConfig accepts a (height, width) pair.
        dict(image_size=(32, 48), patch_size=8),
        dict(hidden_size=24, num_attention_heads=3, intermediate_size=48),
        dict(image_size=32, patch_size=8),
        dict(layer_norm_eps=1e-12),
        # Large enough to change the outputs well beyond the tolerance if it were dropped.
        dict(layer_norm_eps=1e-1),
        dict(hidden_act="gelu_new"),
    ],
    ids=["default", "non_square", "odd_heads", "patch8", "eps_1e-12", "eps_1e-1", "gelu_new"],
)
def test_vit_model_parity(tmp_path, overrides):
    config = hf_config(**overrides)
    reference = randomize(transformers.ViTModel(config))
    model = ViTBackbone.from_preset(save(reference, tmp_path))
    assert model.layer_norm_epsilon == config.layer_norm_eps
    images = random_images(2, tuple(model.image_size))
    expected = torch_forward(reference, images)
    out = model(images)
    check(out["sequence_output"], expected.last_hidden_state, "sequence_output")
    check(out["pooled_output"], expected.pooler_output, "pooled_output")


def test_attention_scores_match_transformers_attentions(tmp_path):
    config = hf_config(image_size=(32, 48), patch_size=8)
    config._attn_implementation = "eager"  # the only one that returns attentions
    reference = randomize(transformers.ViTModel(config))
    model = ViTBackbone.from_preset(save(reference, tmp_path), return_attention_scores=True)
    images = random_images(2, tuple(model.image_size))
    expected = torch_forward(reference, images, output_attentions=True).attentions
    ours = model(images)["attention_scores"]
    assert len(ours) == len(expected) == 2
    for i, (a, b) in enumerate(zip(ours, expected)):
        check(a, b, f"attention_scores[{i}]")


@pytest.mark.parametrize("overrides", [{}, dict(image_size=(32, 48), patch_size=8)],
                         ids=["default", "non_square"])
def test_vit_classifier_parity(tmp_path, overrides):
    config = hf_config(num_labels=5, **overrides)
    reference = randomize(transformers.ViTForImageClassification(config))
    model = ViTClassifier.from_preset(save(reference, tmp_path), include_preprocessing=False)
    assert model.num_classes == 5
    assert model.class_names == tuple(f"LABEL_{i}" for i in range(5))
    images = random_images(2, tuple(model.backbone.image_size))
    check(model(images), torch_forward(reference, images).logits, "logits")


def test_classification_checkpoint_as_backbone_drops_only_the_head(tmp_path):
    reference = randomize(transformers.ViTForImageClassification(hf_config(num_labels=5)))
    model = ViTBackbone.from_preset(save(reference, tmp_path))
    assert model.representation_size is None
    images = random_images(2, 16)
    expected = torch_forward(reference.vit, images).last_hidden_state
    out = model(images)
    check(out["sequence_output"], expected, "sequence_output")
    check(out["pooled_output"], expected[:, 0], "pooled_output")


@pytest.mark.parametrize("new_size", [24, (24, 32)], ids=["square", "non_square"])
def test_resolution_change_matches_interpolate_pos_encoding(tmp_path, new_size):
    # transformers 5.23 (ViTEmbeddings.interpolate_pos_encoding) resizes the square
    # patch grid with interpolate(size=(h // p, w // p), mode="bicubic",
    # align_corners=False) and keeps the class-token row: the same kernel and
    # sampling grid as `resample_position_embeddings`, so only float rounding
    # remains (ours resamples in float64 once, torch in float32 at every call).
    # transformers cannot interpolate a non-square checkpoint grid (it reshapes
    # to sqrt(num_positions)); we can, but there is no reference to compare with.
    path = save(randomize(transformers.ViTModel(hf_config())), tmp_path / "model")
    reference = transformers.ViTModel.from_pretrained(path).eval()
    model = ViTBackbone.from_preset(path, image_size=new_size)
    size = (new_size, new_size) if isinstance(new_size, int) else new_size
    assert model.image_size == size
    images = random_images(2, size)
    expected = torch_forward(reference, images, interpolate_pos_encoding=True)
    out = model(images)
    check(out["sequence_output"], expected.last_hidden_state, "sequence_output")
    check(out["pooled_output"], expected.pooler_output, "pooled_output")

    classifier_reference = randomize(
        transformers.ViTForImageClassification(hf_config(num_labels=3)), seed=1
    )
    classifier = ViTClassifier.from_preset(
        save(classifier_reference, tmp_path / "classifier"),
        image_size=new_size, include_preprocessing=False,
    )
    assert classifier.class_names == ("LABEL_0", "LABEL_1", "LABEL_2")
    expected = torch_forward(classifier_reference, images, interpolate_pos_encoding=True)
    check(classifier(images), expected.logits, "logits")


def test_include_preprocessing_uses_the_processor_mean_and_std(tmp_path):
    reference = randomize(transformers.ViTForImageClassification(hf_config(num_labels=4)))
    path = save(reference, tmp_path)
    processor = transformers.ViTImageProcessorPil(
        do_resize=False, image_mean=[0.4, 0.5, 0.6], image_std=[0.2, 0.25, 0.3]
    )
    processor.save_pretrained(path)
    model = ViTClassifier.from_preset(path)
    assert model.include_preprocessing
    assert np.allclose(model.mean, (0.4, 0.5, 0.6)) and np.allclose(model.std, (0.2, 0.25, 0.3))
    pixels = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3)).astype("uint8")
    normalised = processor(list(pixels), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        expected = reference(normalised).logits
    check(model(pixels.astype("float32")), expected, "logits")


def test_vit_model_into_classifier_gets_a_fresh_head(tmp_path):
    reference = randomize(transformers.ViTModel(hf_config()))
    model = ViTClassifier.from_preset(save(reference, tmp_path), num_classes=7,
                                      include_preprocessing=False)
    assert model.num_classes == 7
    assert not np.any(to_numpy(model.get_layer("head").kernel.value))
    images = random_images(2, 16)
    expected = torch_forward(reference, images)
    out = model.backbone(images)
    check(out["pooled_output"], expected.pooler_output, "pooled_output")


def test_new_num_classes_gives_a_fresh_head_on_loaded_backbone(tmp_path):
    reference = randomize(transformers.ViTForImageClassification(hf_config(num_labels=5)))
    model = ViTClassifier.from_preset(save(reference, tmp_path), num_classes=2,
                                      include_preprocessing=False)
    assert model.num_classes == 2
    assert not np.any(to_numpy(model.get_layer("head").kernel.value))
    images = random_images(2, 16)
    expected = torch_forward(reference.vit, images).last_hidden_state
    check(model.backbone(images)["sequence_output"], expected, "sequence_output")


def test_pytorch_bin_and_sharded_safetensors(tmp_path):
    reference = randomize(transformers.ViTModel(hf_config()))
    images = random_images(2, 16)
    expected = torch_forward(reference, images).last_hidden_state

    sharded = str(tmp_path / "sharded")
    reference.save_pretrained(sharded, max_shard_size="20KB")
    assert os.path.exists(os.path.join(sharded, "model.safetensors.index.json"))
    assert not os.path.exists(os.path.join(sharded, "model.safetensors"))
    check(ViTBackbone.from_preset(sharded)(images)["sequence_output"], expected, "sharded")

    # `state_dict()` of transformers 5 uses its in-memory names (`layers.0.attention.q_proj`),
    # not the published ones that `save_pretrained()` writes: both must load.
    binary = tmp_path / "binary"
    reference.config.save_pretrained(str(binary))
    torch.save(reference.state_dict(), str(binary / "pytorch_model.bin"))
    check(ViTBackbone.from_preset(str(binary))(images)["sequence_output"], expected, "bin")

    # bfloat16 weights (NumPy cannot read them) load through torch.
    bf16 = str(tmp_path / "bf16")
    reference.to(torch.bfloat16).save_pretrained(bf16)
    reference.float()
    loaded = ViTBackbone.from_preset(bf16)
    pos = reference.embeddings.position_embeddings.to(torch.bfloat16).float()[0]
    check(loaded.get_layer("position_embedding").position_embeddings.value, pos, "bf16")


def test_other_model_type_is_a_clear_error(tmp_path):
    save(transformers.ViTModel(hf_config()), tmp_path)
    config_file = tmp_path / "config.json"
    config = json.loads(config_file.read_text())
    config["model_type"] = "deit"
    config_file.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="model_type 'deit'"):
        ViTBackbone.from_preset(str(tmp_path))


@pytest.mark.parametrize("edit", ["missing", "unexpected"])
def test_checkpoint_keys_must_match_the_config(tmp_path, edit):
    save(transformers.ViTModel(hf_config()), tmp_path)
    file = str(tmp_path / "model.safetensors")
    weights = safetensors_numpy.load_file(file)
    if edit == "missing":
        key = "encoder.layer.1.attention.attention.value.bias"
        del weights[key]
    else:
        key = "decoder.0.weight"
        weights[key] = np.zeros((2, 2), "float32")
    safetensors_numpy.save_file(weights, file)
    with pytest.raises(ValueError, match=rf"{edit}.*{key.replace('.', '[.]')}"):
        ViTBackbone.from_preset(str(tmp_path))


@pytest.mark.parametrize(
    "overrides, message",
    [(dict(qkv_bias=False), "qkv_bias"), (dict(hidden_act="gelu_10"), "hidden_act"),
     (dict(pooler_act="relu"), "pooler_act")],
    ids=["qkv_bias", "hidden_act", "pooler_act"],
)
def test_unsupported_config_is_a_clear_error(tmp_path, overrides, message):
    save(transformers.ViTModel(hf_config(**overrides)), tmp_path)
    with pytest.raises(ValueError, match=message):
        ViTBackbone.from_preset(str(tmp_path))
