"""Numerical parity of converted transformers Image GPT checkpoints, on every Keras backend.

A tiny `ImageGPTForCausalImageModeling` gets random weights everywhere (norm gains
included, so a swapped or transposed tensor shows), is written with
`save_pretrained()` and loaded with `from_preset()`; logits are compared in
float32 to 1e-4.
"""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from keras_vtx.models.igpt.image_gpt import ImageGPT  # noqa: E402
from keras_vtx.models.igpt.image_gpt_backbone import ImageGPTBackbone  # noqa: E402
from tests.test_case import to_numpy  # noqa: E402

ATOL = 1e-4
TINY = dict(vocab_size=17, n_positions=64, n_embd=16, n_layer=2, n_head=2)


def reference_model(seed=0, **overrides):
    torch.manual_seed(seed)
    config = transformers.ImageGPTConfig(**{**TINY, **overrides})
    model = transformers.ImageGPTForCausalImageModeling(config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=generator) * 0.3
            is_gain = (".ln_" in name or name.startswith("transformer.ln_")) and "weight" in name
            p.copy_(noise + 1.0 if is_gain else noise)
    return model.eval()


def save(model, path, clusters=None):
    model.save_pretrained(str(path))
    if clusters is not None:
        with open(path / "preprocessor_config.json", "w") as f:
            json.dump({"clusters": clusters.tolist(), "image_processor_type":
                       "ImageGPTImageProcessor", "size": {"height": 8, "width": 8}}, f)
    return str(path)


def their_logits(model, input_ids):
    with torch.no_grad():
        return model(torch.from_numpy(input_ids).long()).logits.numpy()


def test_logits_match_transformers(tmp_path):
    # Odd sizes (3 heads of 8, MLP 40) and a large epsilon, which would change the
    # logits well beyond the tolerance if it were dropped or misplaced.
    reference = reference_model(n_embd=24, n_head=3, n_inner=40, layer_norm_epsilon=1e-1)
    palette_size = TINY["vocab_size"] - 1
    clusters = np.random.default_rng(0).uniform(-1, 1, (palette_size, 3)).astype("float32")
    model = ImageGPT.from_preset(save(reference, tmp_path, clusters))
    assert model.backbone.layer_norm_epsilon == reference.config.layer_norm_epsilon
    np.testing.assert_allclose(model.palette.clusters, clusters)

    rng = np.random.default_rng(1)
    pixel_ids = rng.integers(0, palette_size, (2, 64)).astype("int32")
    # Their inputs carry the SOS token: [SOS, pixels[:-1]] predicts every pixel.
    input_ids = np.concatenate([np.full((2, 1), palette_size), pixel_ids[:, :-1]], 1)
    expected = their_logits(reference, input_ids)

    # Backbone + head on their exact input ids.
    hidden = model.backbone(input_ids.astype("int32"))
    ours = to_numpy(model.lm_head(hidden))
    assert ours.shape == expected.shape
    assert np.max(np.abs(ours - expected)) < ATOL
    # The task on pixel ids shifts them itself.
    ours = to_numpy(model(pixel_ids))
    assert np.max(np.abs(ours - expected)) < ATOL
    # A shorter sequence (an image's first rows) matches too.
    short = to_numpy(model(pixel_ids[:, :20]))
    assert np.max(np.abs(short - expected[:, :20])) < ATOL


def test_backbone_from_transformers_and_errors(tmp_path):
    reference = reference_model(seed=3)
    path = save(reference, tmp_path)
    backbone = ImageGPTBackbone.from_preset(path)
    input_ids = np.random.default_rng(2).integers(0, 17, (1, 30)).astype("int32")
    with torch.no_grad():
        expected = reference.transformer(torch.from_numpy(input_ids).long())
    expected = expected.last_hidden_state.numpy()
    assert np.max(np.abs(to_numpy(backbone(input_ids)) - expected)) < ATOL
    # No preprocessor_config.json: no palette.
    assert ImageGPT.from_preset(path).palette is None
    # A BERT model from an autoregressive checkpoint: same weights, bidirectional.
    bert = ImageGPT.from_preset(path, objective="bert")
    assert bert.backbone.causal is False
    with pytest.raises(ValueError, match="position_embedding.*cannot be adapted"):
        ImageGPTBackbone.from_preset(path, sequence_length=32)


def test_unsupported_config_raises(tmp_path):
    reference = reference_model(scale_attn_by_inverse_layer_idx=True)
    with pytest.raises(ValueError, match="scale_attn_by_inverse_layer_idx"):
        ImageGPT.from_preset(save(reference, tmp_path))
