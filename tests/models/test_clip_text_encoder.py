import keras
import numpy as np
import pytest

from keras_vtx.models.clip import CLIP, CLIPTextEncoder
from tests.test_case import (
    assert_allclose,
    assert_config_round_trip,
    np_attention,
    np_layer_norm,
    np_mlp,
    shapes_only,
    to_numpy,
)

VOCAB, END, START = 50, 49, 48
TINY_TEXT = dict(vocabulary_size=VOCAB, context_length=8, num_layers=2, hidden_dim=16,
                 num_heads=2, mlp_dim=32, end_token_id=END)


def _encoder(**overrides):
    return CLIPTextEncoder(**{**TINY_TEXT, **overrides})


def _ids(batch=3, length=8, seed=0):
    """START, random tokens, END, zero padding; texts of different lengths."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((batch, length), "int32")
    for i in range(batch):
        n = 1 + (i + seed) % (length - 2)
        ids[i, 0] = START
        ids[i, 1:n + 1] = rng.integers(1, START, n)
        ids[i, n + 1] = END
    return ids


def _np_forward(encoder, ids):
    """The text tower in float64 NumPy, from the shared layers' transcriptions."""
    table = to_numpy(encoder.get_layer("token_embedding").embeddings)
    positions = to_numpy(encoder.get_layer("position_embedding").position_embeddings)
    x = table[ids].astype("float64") + positions[: ids.shape[1]]
    for i in range(encoder.num_layers):
        block = encoder.get_layer(f"block_{i}")
        x = x + np_attention(block.attention, np_layer_norm(block.norm1, x), causal=True)[0]
        x = x + np_mlp(block.mlp, np_layer_norm(block.norm2, x))
    return np_layer_norm(encoder.get_layer("final_norm"), x)


def test_matches_numpy_reference_and_pools_at_the_first_end_token():
    encoder = _encoder(activation="quick_gelu")
    ids = _ids()
    ids[0, -1] = END  # a second END token: the first one is read
    out = to_numpy(encoder(ids))
    expected = _np_forward(encoder, ids)
    np.testing.assert_allclose(out["sequence_output"], expected, atol=1e-5)
    first_end = np.argmax(ids == END, axis=1)
    np.testing.assert_allclose(out["pooled_output"], expected[np.arange(3), first_end],
                               atol=1e-5)
    assert out["pooled_output"].shape == (3, 16)


def test_end_token_none_reads_the_largest_id():
    encoder = _encoder(end_token_id=None)
    ids = _ids()
    ids[:, 0] = 1  # END is then the largest id of every text
    out = to_numpy(encoder(ids))
    np.testing.assert_array_equal(
        out["pooled_output"], out["sequence_output"][np.arange(3), np.argmax(ids, axis=1)]
    )


def test_causal_and_padding_independent():
    encoder = _encoder()
    ids = _ids()
    out = to_numpy(encoder(ids))
    other = np.where(np.cumsum(ids == END, axis=1) > (ids == END), 7, ids)  # new padding ids
    changed = to_numpy(encoder(other))
    np.testing.assert_allclose(changed["pooled_output"], out["pooled_output"], atol=1e-6)
    # Shorter inputs use the first rows of the position table.
    short = to_numpy(encoder(ids[:, :5]))
    np.testing.assert_allclose(short["sequence_output"], out["sequence_output"][:, :5],
                               atol=1e-5)


def test_errors():
    encoder = _encoder()
    with pytest.raises(ValueError, match="context_length"):
        encoder(np.zeros((2, 9), "int32"))
    with pytest.raises(ValueError, match="rank 2"):
        encoder(np.zeros((8,), "int32"))
    with pytest.raises(TypeError, match="integers"):
        encoder(np.zeros((2, 8), "float32"))
    with pytest.raises(ValueError, match="divisible"):
        _encoder(num_heads=3)
    with pytest.raises(ValueError, match="end_token_id"):
        _encoder(end_token_id=VOCAB)
    with pytest.raises(ValueError, match="context_length"):
        _encoder(context_length=0)


def test_config_round_trip():
    clone = assert_config_round_trip(_encoder(end_token_id=None, dropout=0.1))
    assert clone.end_token_id is None


def test_preset_round_trip_and_shorter_context(tmp_path):
    encoder = _encoder()
    ids = _ids()
    encoder.save_to_preset(tmp_path / "preset")
    loaded = CLIPTextEncoder.from_preset(tmp_path / "preset")
    assert_allclose(loaded(ids)["pooled_output"], encoder(ids)["pooled_output"], atol=0)
    shorter = CLIPTextEncoder.from_preset(tmp_path / "preset", context_length=6)
    assert shorter.context_length == 6
    assert_allclose(shorter(ids[:, :6])["sequence_output"],
                    encoder(ids[:, :6])["sequence_output"], atol=1e-6)


def test_from_clip_presets(tmp_path):
    with shapes_only():  # L/14's 38M-parameter token embedding: shapes are enough here
        encoder = CLIPTextEncoder.from_preset("clip_vit_large_patch14", num_layers=1)
    assert (encoder.hidden_dim, encoder.num_heads, encoder.num_layers) == (768, 12, 1)
    assert encoder.vocabulary_size == 49408 and encoder.context_length == 77
    # The text tower of a saved CLIP preset, weights included.
    from keras_vtx.models import ViTBackbone

    image_encoder = ViTBackbone(image_size=16, patch_size=8, num_layers=1, hidden_dim=16,
                                num_heads=2, mlp_dim=32)
    model = CLIP(image_encoder, _encoder(), projection_dim=8)
    model.save_to_preset(tmp_path / "clip")
    loaded = CLIPTextEncoder.from_preset(tmp_path / "clip")
    ids = _ids()
    assert_allclose(loaded(ids)["pooled_output"],
                    model.text_encoder(ids)["pooled_output"], atol=0)


def test_mixed_precision_dtypes():
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        encoder = _encoder()
    finally:
        keras.config.set_dtype_policy("float32")
    assert {v.dtype for v in encoder.weights} == {"float32"}
    out = encoder(_ids())
    assert keras.backend.standardize_dtype(out["pooled_output"].dtype) == "bfloat16"
    assert np.all(np.isfinite(to_numpy(out["pooled_output"]).astype("float32")))
