import numpy as np
import pytest

from keras_vtx.layers import TransformerEncoderBlock
from tests.test_case import (
    assert_all_weights_get_gradients,
    assert_allclose,
    assert_config_round_trip,
    np_attention,
    np_layer_norm,
    np_mlp,
    randomize_weights,
    save_load_in_functional_model,
    to_numpy,
)


def _x(shape=(2, 5, 8), seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype("float32")


def _block(x, **kwargs):
    block = TransformerEncoderBlock(**{"num_heads": 2, "mlp_dim": 16, **kwargs})
    block.build(x.shape)
    randomize_weights(block)
    return block


def _np_block(block, x, mask=None, causal=False, pos=None):
    def attn(h):
        return np_attention(block.attention, h, mask=mask, causal=causal,
                            query_position=pos, key_position=pos)[0]

    x = x.astype("float64")
    np_norm = _np_rms_norm if block.norm == "rms_norm" else np_layer_norm
    if block.norm_first:
        x = x + attn(np_norm(block.norm1, x))
        return x + np_mlp(block.mlp, np_norm(block.norm2, x))
    x = np_norm(block.norm1, x + attn(x))
    return np_norm(block.norm2, x + np_mlp(block.mlp, x))


def _np_rms_norm(norm, h):
    # The released Image GPT's layer norm: no mean subtraction, no bias.
    rms = np.sqrt((h * h).mean(-1, keepdims=True) + norm.epsilon)
    return h / rms * to_numpy(norm.scale)


@pytest.mark.parametrize("norm_first", [True, False])
def test_matches_numpy(norm_first):
    x = _x()
    block = _block(x, norm_first=norm_first)
    out = block(x)
    assert tuple(out.shape) == x.shape
    assert_allclose(out, _np_block(block, x), atol=1e-4)


def test_rms_norm_matches_numpy_and_round_trips(tmp_path):
    x = _x()
    block = _block(x, norm="rms_norm", activation="quick_gelu")
    assert not hasattr(block.norm1, "beta") and not hasattr(block.norm1, "gamma")
    assert_allclose(block(x, is_causal=True), _np_block(block, x, causal=True), atol=1e-4)
    restored = assert_config_round_trip(block)
    assert restored.norm == "rms_norm"


def test_rms_norm_runs_in_float32_under_mixed_precision():
    block = TransformerEncoderBlock(2, 16, norm="rms_norm", dtype="mixed_bfloat16")
    out = block(_x())
    assert block.norm1.compute_dtype == "float32"
    assert "bfloat16" in str(out.dtype)  # "<dtype: 'bfloat16'>" on TensorFlow


def test_unknown_norm_is_rejected():
    with pytest.raises(ValueError, match="`norm` must be"):
        TransformerEncoderBlock(2, 16, norm="batch_norm")


def test_pre_and_post_norm_differ():
    x = _x()
    pre = _block(x, norm_first=True)
    post = _block(x, norm_first=False)
    assert_allclose(pre(x), _np_block(pre, x), atol=1e-4)
    # Post-LN ends with a LayerNorm; pre-LN keeps the residual stream's scale.
    assert np.abs(to_numpy(pre(x)) - to_numpy(post(x))).max() > 1e-2


def test_mask_causal_and_position_encoding():
    x, pos = _x(), _x(seed=1)
    mask = np.random.default_rng(2).random((2, 5, 5)) > 0.3
    mask[..., 0] = True
    block = _block(x, norm_first=False)
    out = block(x, attention_mask=mask, position_encoding=pos)
    assert_allclose(out, _np_block(block, x, mask=mask, pos=pos), atol=1e-4)
    out = block(x, is_causal=True)
    assert_allclose(out, _np_block(block, x, causal=True), atol=1e-4)


def test_return_attention_scores():
    x = _x()
    block = _block(x)
    out, scores = block(x, return_attention_scores=True)
    assert tuple(scores.shape) == (2, 2, 5, 5)
    np.testing.assert_allclose(to_numpy(scores).sum(-1), 1.0, atol=1e-6)
    assert_allclose(out, block(x), atol=1e-5)


def test_dropout_and_drop_path_only_in_training():
    x = _x((4, 5, 8))
    block = _block(x, dropout=0.3, attention_dropout=0.3, drop_path=0.3)
    expected = _np_block(block, x)
    assert_allclose(block(x), expected, atol=1e-4)
    assert_allclose(block(x, training=False), expected, atol=1e-4)
    assert np.abs(to_numpy(block(x, training=True)) - expected).max() > 1e-3


def test_config_round_trip_and_save_load(tmp_path):
    block = TransformerEncoderBlock(
        2, 16, dropout=0.1, attention_dropout=0.2, drop_path=0.1, norm_first=False,
        activation="quick_gelu", layer_norm_epsilon=1e-5, name="block",
    )
    clone = assert_config_round_trip(block)
    assert clone.norm_first is False and clone.drop_path == 0.1
    x = _x()
    reloaded = save_load_in_functional_model(block, x, tmp_path, atol=1e-6)
    assert reloaded.activation == "quick_gelu"


@pytest.mark.parametrize("norm_first", [True, False])
def test_gradients_reach_every_weight(norm_first):
    x = _x()
    assert_all_weights_get_gradients(_block(x, norm_first=norm_first), x)


@pytest.mark.parametrize("norm", ["layer_norm", "rms_norm"])
def test_cache_incremental_decoding_matches_causal_call(norm):
    x = _x((2, 6, 8))
    block = _block(x, norm=norm, activation="quick_gelu")
    full = to_numpy(block(x, is_causal=True))
    cache = block.initial_cache(2, 6)
    out, cache = block(x[:, :2], is_causal=True, cache=cache, cache_update_index=0)
    assert_allclose(out, full[:, :2], atol=1e-5)
    for i in range(2, 6):
        out, probs, cache = block(x[:, i : i + 1], is_causal=True, cache=cache,
                                  cache_update_index=i, return_attention_scores=True)
        assert_allclose(out, full[:, i : i + 1], atol=1e-5)
        assert tuple(probs.shape) == (2, 2, 1, 6)
        assert np.all(to_numpy(probs)[..., i + 1 :] == 0)
    with pytest.raises(ValueError, match="built"):
        TransformerEncoderBlock(2, 16).initial_cache(1, 3)
