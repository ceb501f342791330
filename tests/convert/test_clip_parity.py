"""Numerical parity of converted transformers CLIP checkpoints, on every Keras backend.

Tiny `CLIPModel`s get random weights everywhere (norm scales and biases,
class embedding, projections and `logit_scale` included), are written with
`save_pretrained()` and loaded with `from_preset()`; embeddings and logits are
compared in float32 to 1e-4.
"""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

from keras_vtx.models import ViTBackbone  # noqa: E402
from keras_vtx.models.clip import CLIP, CLIPTextEncoder  # noqa: E402
from tests.test_case import random_images, to_numpy  # noqa: E402

ATOL = 1e-4
VOCAB, EOS, BOS = 100, 99, 98
TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            vocab_size=VOCAB, max_position_embeddings=12, eos_token_id=EOS, bos_token_id=BOS,
            pad_token_id=0)
VISION = dict(hidden_size=24, intermediate_size=48, num_hidden_layers=2, num_attention_heads=3,
              image_size=16, patch_size=4)


def hf_config(text=None, vision=None, **overrides):
    return transformers.CLIPConfig(
        text_config={**TEXT, **(text or {})}, vision_config={**VISION, **(vision or {})},
        projection_dim=overrides.pop("projection_dim", 20), **overrides,
    )


def randomize(model, seed=0):
    """Random values everywhere; norm scales around 1 and `logit_scale` below ln(100)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=generator) * 0.2
            if name == "logit_scale":
                p.copy_(torch.tensor(2.0) + noise)
            elif ("norm" in name or "layrnorm" in name) and name.endswith("weight"):
                p.copy_(noise + 1.0)
            else:
                p.copy_(noise)
    return model.eval()


def token_ids(batch=3, length=12, seed=0, padding=True):
    """BOS, random tokens, EOS, then padding (zeros), with different text lengths."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((batch, length), "int64")
    for i in range(batch):
        n = int(rng.integers(1, length - 2)) if padding else length - 2
        ids[i, 0] = BOS
        ids[i, 1:n + 1] = rng.integers(1, BOS, n)
        ids[i, n + 1] = EOS
    return ids


def save(model, path):
    model.save_pretrained(str(path))
    return str(path)


def torch_images(images):
    return torch.from_numpy(images.transpose(0, 3, 1, 2))


def normalized_features(output):
    """`get_*_features` (a tensor, or in transformers 5 an output with `pooler_output`)."""
    output = output.pooler_output if hasattr(output, "pooler_output") else output
    return output / output.norm(dim=-1, keepdim=True)


def check(ours, theirs, what):
    ours = to_numpy(ours)
    theirs = theirs.detach().numpy() if hasattr(theirs, "detach") else np.asarray(theirs)
    assert ours.shape == theirs.shape, (what, ours.shape, theirs.shape)
    diff = float(np.max(np.abs(ours - theirs)))
    assert diff < ATOL, f"{what}: max abs difference {diff:.2e}"
    return diff


@pytest.mark.parametrize(
    "text, vision",
    [
        ({}, {}),
        # transformers' CLIP takes square images only.
        (dict(hidden_act="gelu", layer_norm_eps=1e-1), dict(image_size=32, patch_size=8,
                                                           layer_norm_eps=1e-1)),
        (dict(hidden_size=48, num_attention_heads=6, intermediate_size=96),
         dict(hidden_size=32, num_attention_heads=2)),
    ],
    ids=["default", "act_eps_patch8", "widths"],
)
def test_clip_model_parity(tmp_path, text, vision):
    reference = randomize(transformers.CLIPModel(hf_config(text, vision)))
    model = CLIP.from_preset(save(reference, tmp_path), include_preprocessing=False)
    assert model.text_encoder.end_token_id == EOS
    images = random_images(2, tuple(model.image_encoder.image_size))
    ids = token_ids(3)
    with torch.no_grad():
        expected = reference(input_ids=torch.from_numpy(ids), pixel_values=torch_images(images))
    out = model({"images": images, "token_ids": ids})
    check(out["image_embeddings"], expected.image_embeds, "image_embeds")
    check(out["text_embeddings"], expected.text_embeds, "text_embeds")
    check(out["logits_per_image"], expected.logits_per_image, "logits_per_image")
    check(out["logits_per_text"], expected.logits_per_text, "logits_per_text")
    check(out["logit_scale"], reference.logit_scale, "logit_scale")
    check(model.encode_images(images), expected.image_embeds, "encode_images")
    check(model.encode_text(ids), expected.text_embeds, "encode_text")
    # The towers' own outputs: pooled features before projection.
    with torch.no_grad():
        vision = reference.vision_model(pixel_values=torch_images(images))
        text_output = reference.text_model(input_ids=torch.from_numpy(ids))
    check(model.image_encoder(images)["pooled_output"], vision.pooler_output,
          "vision pooler_output")
    text_out = model.text_encoder(ids)
    check(text_out["pooled_output"], text_output.pooler_output, "text pooler_output")
    check(text_out["sequence_output"], text_output.last_hidden_state, "text last_hidden_state")


def test_padding_after_eos_does_not_change_text_features(tmp_path):
    reference = randomize(transformers.CLIPModel(hf_config()), seed=1)
    model = CLIP.from_preset(save(reference, tmp_path))
    ids = token_ids(4, seed=3)
    assert np.any(ids[:, -1] == 0)  # some texts are padded
    ours = model.encode_text(ids)
    # transformers with the padding masked out, and with unpadded texts cut at EOS.
    mask = np.cumsum(ids == EOS, axis=1) - (ids == EOS) == 0
    with torch.no_grad():
        masked = reference.get_text_features(
            input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask.astype("int64"))
        )
    check(ours, normalized_features(masked), "text_embeds with padding masked")
    for i in range(len(ids)):
        end = int(np.argmax(ids[i] == EOS)) + 1
        with torch.no_grad():
            alone = reference.get_text_features(input_ids=torch.from_numpy(ids[i:i + 1, :end]))
        alone = normalized_features(alone)
        check(ours[i:i + 1], alone, f"text {i} without padding")
        # Our shorter input (any length up to the context) gives the same feature.
        check(model.encode_text(ids[i:i + 1, :end]), alone, f"text {i} short input")
    # Changing the padding ids changes nothing either.
    noisy = np.where(mask, ids, 7)
    check(model.encode_text(noisy), to_numpy(ours), "other padding ids")


def test_raw_pixels_with_processor_mean_and_std(tmp_path):
    reference = randomize(transformers.CLIPModel(hf_config()), seed=2)
    path = save(reference, tmp_path)
    processor = transformers.CLIPImageProcessor(
        do_resize=False, do_center_crop=False, image_mean=[0.4, 0.5, 0.6],
        image_std=[0.2, 0.25, 0.3],
    )
    processor.save_pretrained(path)
    model = CLIP.from_preset(path)
    assert model.include_preprocessing
    assert np.allclose(model.mean, (0.4, 0.5, 0.6)) and np.allclose(model.std, (0.2, 0.25, 0.3))
    pixels = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3)).astype("uint8")
    normalised = processor(list(pixels), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        expected = reference.get_image_features(pixel_values=normalised)
    expected = normalized_features(expected)
    check(model.encode_images(pixels.astype("float32")), expected, "image_embeds from pixels")


def test_default_preprocessing_is_clip_mean_and_std(tmp_path):
    model = CLIP.from_preset(save(randomize(transformers.CLIPModel(hf_config())), tmp_path))
    assert model.include_preprocessing
    np.testing.assert_allclose(model.mean, (0.48145466, 0.4578275, 0.40821073))
    np.testing.assert_allclose(model.std, (0.26862954, 0.26130258, 0.27577711))


def test_legacy_eos_token_id_reads_the_largest_id(tmp_path):
    # Early OpenAI configs say eos_token_id=2; transformers then takes argmax(input_ids).
    reference = randomize(transformers.CLIPModel(hf_config(text=dict(eos_token_id=2))))
    model = CLIPTextEncoder.from_preset(save(reference, tmp_path))
    assert model.end_token_id is None
    ids = token_ids(3, seed=5)
    with torch.no_grad():
        expected = reference.text_model(input_ids=torch.from_numpy(ids)).pooler_output
    check(model(ids)["pooled_output"], expected, "pooled_output (argmax)")


def test_towers_load_alone(tmp_path):
    reference = randomize(transformers.CLIPModel(hf_config()))
    path = save(reference, tmp_path)
    images, ids = random_images(2, 16), token_ids(2)
    text_encoder = CLIPTextEncoder.from_preset(path)
    with torch.no_grad():
        expected = reference.text_model(input_ids=torch.from_numpy(ids))
    check(text_encoder(ids)["pooled_output"], expected.pooler_output, "text pooler_output")
    image_encoder = ViTBackbone.from_preset(path)
    assert image_encoder.pre_norm and not image_encoder.patch_bias
    with torch.no_grad():
        expected = reference.vision_model(pixel_values=torch_images(images))
    check(image_encoder(images)["pooled_output"], expected.pooler_output, "vision pooler_output")


def test_pytorch_bin_and_sharded_safetensors(tmp_path):
    reference = randomize(transformers.CLIPModel(hf_config()))
    ids = token_ids(2)
    with torch.no_grad():
        expected = reference.get_text_features(input_ids=torch.from_numpy(ids))
    expected = normalized_features(expected)
    sharded = str(tmp_path / "sharded")
    reference.save_pretrained(sharded, max_shard_size="20KB")
    check(CLIP.from_preset(sharded).encode_text(ids), expected, "sharded")
    binary = tmp_path / "binary"
    reference.config.save_pretrained(str(binary))
    torch.save(reference.state_dict(), str(binary / "pytorch_model.bin"))
    check(CLIP.from_preset(str(binary)).encode_text(ids), expected, "bin")


def test_save_to_preset_after_conversion(tmp_path):
    reference = randomize(transformers.CLIPModel(hf_config()))
    model = CLIP.from_preset(save(reference, tmp_path / "hf"))
    model.save_to_preset(tmp_path / "ours")
    loaded = CLIP.from_preset(tmp_path / "ours")
    inputs = {"images": random_images(2, 16, scale=60.0) + 128, "token_ids": token_ids(2)}
    for key, value in model(inputs).items():
        np.testing.assert_array_equal(to_numpy(loaded(inputs)[key]), to_numpy(value), key)


@pytest.mark.parametrize("edit", ["missing", "unexpected"])
def test_checkpoint_keys_must_match_the_config(tmp_path, edit):
    save(transformers.CLIPModel(hf_config()), tmp_path)
    file = str(tmp_path / "model.safetensors")
    weights = safetensors_numpy.load_file(file)
    if edit == "missing":
        key = "text_model.encoder.layers.1.self_attn.v_proj.bias"
        del weights[key]
    else:
        key = "vision_model.extra.weight"
        weights[key] = np.zeros((2, 2), "float32")
    safetensors_numpy.save_file(weights, file)
    with pytest.raises(ValueError, match=rf"{edit}.*{key.replace('.', '[.]')}"):
        CLIP.from_preset(str(tmp_path))


def test_unsupported_activation_is_a_clear_error(tmp_path):
    save(transformers.CLIPModel(hf_config()), tmp_path)
    config_file = tmp_path / "config.json"
    config = json.loads(config_file.read_text())
    config["text_config"]["hidden_act"] = "gelu_10"
    config_file.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="hidden_act"):
        CLIP.from_preset(str(tmp_path))
