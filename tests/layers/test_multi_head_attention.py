import keras
import numpy as np
import pytest

from keras_vtx.layers import MultiHeadAttention
from tests.test_case import (
    assert_all_weights_get_gradients,
    assert_allclose,
    assert_config_round_trip,
    np_attention,
    randomize_weights,
    save_load_in_functional_model,
    to_numpy,
)

RNG = np.random.default_rng(1)


def _x(*shape):
    return RNG.standard_normal(shape).astype("float32")


def _layer(query_shape, value_shape=None, **kwargs):
    layer = MultiHeadAttention(**{"num_heads": 2, **kwargs})
    layer.build(query_shape, value_shape)
    randomize_weights(layer)
    return layer


def test_output_shapes_self_and_cross():
    q, v = _x(2, 5, 8), _x(2, 7, 6)
    assert tuple(MultiHeadAttention(2)(q).shape) == (2, 5, 8)
    cross = MultiHeadAttention(2, key_dim=3, output_dim=4)
    out, probs = cross(q, v, return_attention_scores=True)
    assert tuple(out.shape) == (2, 5, 4)
    assert tuple(probs.shape) == (2, 2, 5, 7)
    assert cross.compute_output_shape((2, 5, 8), (2, 7, 6)) == (2, 5, 4)
    assert tuple(cross.query_dense.kernel.shape) == (8, 6)


def test_self_attention_matches_numpy():
    x = _x(2, 5, 8)
    layer = _layer(x.shape)
    expected, _ = np_attention(layer, x)
    assert_allclose(layer(x), expected, atol=1e-5)


def test_cross_attention_with_separate_key_matches_numpy():
    q, v, k = _x(2, 3, 8), _x(2, 6, 4), _x(2, 6, 4)
    layer = _layer(q.shape, v.shape)
    expected, _ = np_attention(layer, q, v, k)
    assert_allclose(layer(q, v, k), expected, atol=1e-5)


@pytest.mark.parametrize("rank", [3, 4])
def test_boolean_mask(rank):
    q, v = _x(2, 4, 8), _x(2, 6, 8)
    mask = RNG.random((2, 2, 4, 6) if rank == 4 else (2, 4, 6)) > 0.4
    mask[..., 0] = True  # every query keeps one key: a fully masked row is undefined
    layer = _layer(q.shape, v.shape)
    expected, expected_probs = np_attention(layer, q, v, mask=mask)
    assert_allclose(layer(q, v, attention_mask=mask), expected, atol=1e-5)
    out, probs = layer(q, v, attention_mask=mask, return_attention_scores=True)
    assert_allclose(out, expected, atol=1e-5)
    assert_allclose(probs, expected_probs, atol=1e-6)
    full = mask if rank == 4 else np.broadcast_to(mask[:, None], probs.shape)
    assert np.all(to_numpy(probs)[~full] == 0.0)


def test_is_causal_self_attention():
    x = _x(2, 5, 8)
    layer = _layer(x.shape)
    expected, expected_probs = np_attention(layer, x, causal=True)
    assert_allclose(layer(x, is_causal=True), expected, atol=1e-5)
    _, probs = layer(x, is_causal=True, return_attention_scores=True)
    assert_allclose(probs, expected_probs, atol=1e-6)
    # The first query sees only itself, so it equals the first value token projected.
    assert_allclose(to_numpy(probs)[:, :, 0, 0], np.ones((2, 2)), atol=1e-6)


def test_is_causal_combined_with_mask():
    x = _x(2, 5, 8)
    mask = RNG.random((2, 5, 5)) > 0.3
    mask[..., 0] = True
    layer = _layer(x.shape)
    expected, _ = np_attention(layer, x, mask=mask, causal=True)
    assert_allclose(layer(x, attention_mask=mask, is_causal=True), expected, atol=1e-5)
    out, _ = layer(x, attention_mask=mask, is_causal=True, return_attention_scores=True)
    assert_allclose(out, expected, atol=1e-5)


def test_is_causal_cross_attention_fused_and_explicit_paths_agree():
    # Fewer queries than keys (decoding with a cache): both code paths must use
    # the same causal alignment, or the result depends on return_attention_scores.
    q, v = _x(1, 3, 8), _x(1, 5, 8)
    layer = _layer(q.shape, v.shape)
    expected, _ = np_attention(layer, q, v, causal=True)
    explicit, _ = layer(q, v, is_causal=True, return_attention_scores=True)
    assert_allclose(explicit, expected, atol=1e-5)
    assert_allclose(layer(q, v, is_causal=True), expected, atol=1e-5)


def test_positions_are_added_to_query_and_key_only():
    q, v = _x(2, 3, 8), _x(2, 6, 8)
    qpos, kpos = _x(2, 3, 8), _x(2, 6, 8)
    layer = _layer(q.shape, v.shape)
    expected, _ = np_attention(layer, q, v, query_position=qpos, key_position=kpos)
    assert_allclose(layer(q, v, query_position=qpos, key_position=kpos), expected, atol=1e-5)
    # Adding the position to the values as well would give something else.
    wrong, _ = np_attention(layer, q + qpos, v + kpos)
    assert np.abs(expected - wrong).max() > 1e-3
    # Self-attention: the key position reaches the keys, not the values.
    x, pos = _x(2, 4, 8), _x(2, 4, 8)
    layer = _layer(x.shape)
    expected, _ = np_attention(layer, x, query_position=pos, key_position=pos)
    assert_allclose(layer(x, query_position=pos, key_position=pos), expected, atol=1e-5)


def test_attention_scores_are_probabilities_and_match_fused_path():
    q, v = _x(3, 4, 8), _x(3, 9, 8)
    layer = _layer(q.shape, v.shape)
    fused = layer(q, v)
    out, probs = layer(q, v, return_attention_scores=True)
    probs = to_numpy(probs)
    assert probs.dtype == np.float32
    assert np.all(probs >= 0)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-6)
    assert_allclose(out, fused, atol=1e-5)


def test_attention_dropout_only_in_training():
    x = _x(4, 6, 8)
    layer = _layer(x.shape, dropout=0.5)
    expected, _ = np_attention(layer, x)
    assert_allclose(layer(x), expected, atol=1e-5)
    assert_allclose(layer(x, training=False), expected, atol=1e-5)
    trained, probs = layer(x, training=True, return_attention_scores=True)
    assert np.abs(to_numpy(trained) - expected).max() > 1e-3
    # The returned probabilities are the pre-dropout ones.
    np.testing.assert_allclose(to_numpy(probs).sum(-1), 1.0, atol=1e-6)
    assert np.abs(to_numpy(layer(x, training=True)) - expected).max() > 1e-3


def test_width_not_divisible_by_heads_raises():
    with pytest.raises(ValueError, match="num_heads"):
        MultiHeadAttention(3)(_x(1, 2, 8))
    with pytest.raises(ValueError, match="num_heads"):
        MultiHeadAttention(0)
    # An explicit key_dim lifts the constraint.
    assert tuple(MultiHeadAttention(3, key_dim=4)(_x(1, 2, 8)).shape) == (1, 2, 8)


def test_config_round_trip():
    layer = MultiHeadAttention(4, key_dim=3, output_dim=5, dropout=0.1, use_bias=False,
                               kernel_initializer="he_normal", name="mha")
    clone = assert_config_round_trip(layer)
    assert clone.num_heads == 4 and clone.key_dim == 3 and not clone.use_bias


def test_save_load(tmp_path):
    x = _x(2, 5, 8)
    layer = _layer(x.shape, dropout=0.1, name="mha")
    reloaded = save_load_in_functional_model(layer, x, tmp_path)
    assert reloaded.dropout == 0.1


def test_cross_attention_save_load(tmp_path):
    q, v = _x(2, 3, 8), _x(2, 6, 4)
    layer = _layer(q.shape, v.shape, name="cross")
    save_load_in_functional_model(layer, [q, v], tmp_path)


def test_gradients_reach_every_weight():
    q, v = _x(2, 3, 8), _x(2, 6, 4)
    layer = _layer(q.shape, v.shape)
    assert_all_weights_get_gradients(layer, q, value=v)
    assert_all_weights_get_gradients(layer, q, value=v, return_attention_scores=True)


def test_mixed_precision_probabilities_in_float32():
    keras.config.set_dtype_policy("mixed_float16")
    x = _x(2, 4, 8)
    layer = MultiHeadAttention(2)
    out, probs = layer(x, return_attention_scores=True)
    assert keras.backend.standardize_dtype(out.dtype) == "float16"
    assert keras.backend.standardize_dtype(probs.dtype) == "float32"


def _decode_in_steps(layer, x, prefill, is_causal=True, index_as_tensor=False):
    """Prefills `prefill` tokens, then feeds the rest one by one through a cache."""
    batch, length = x.shape[:2]
    cache = layer.initial_cache(batch, length)
    assert tuple(cache.shape) == (batch, 2, length, layer.num_heads, layer.head_dim)
    outputs = []
    starts = [0] + list(range(prefill, length))
    stops = [prefill] + list(range(prefill + 1, length + 1))
    for start, stop in zip(starts, stops):
        index = keras.ops.convert_to_tensor(start, "int32") if index_as_tensor else start
        out, cache = layer(x[:, start:stop], is_causal=is_causal, cache=cache,
                           cache_update_index=index)
        outputs.append(to_numpy(out))
    return np.concatenate(outputs, axis=1), cache


@pytest.mark.parametrize("index_as_tensor", [False, True])
def test_cache_incremental_decoding_matches_causal_call(index_as_tensor):
    x = _x(2, 6, 8)
    layer = _layer(x.shape)
    decoded, cache = _decode_in_steps(layer, x, prefill=3, index_as_tensor=index_as_tensor)
    assert_allclose(decoded, layer(x, is_causal=True), atol=1e-5)
    # The cache holds exactly the keys and values of the whole sequence.
    q_k = to_numpy(layer.key_dense(x)).reshape(2, 6, 2, 4)
    assert_allclose(to_numpy(cache)[:, 0], q_k, atol=1e-5)


def test_cache_without_causal_sees_every_written_position():
    x = _x(2, 5, 8)
    layer = _layer(x.shape)
    decoded, _ = _decode_in_steps(layer, x, prefill=2, is_causal=False)
    # The prefill attends bidirectionally among its own tokens; each later token
    # sees everything written so far (itself included).
    assert_allclose(decoded[:, :2], layer(x[:, :2]), atol=1e-5)
    for i in range(2, 5):
        assert_allclose(decoded[:, i], to_numpy(layer(x[:, : i + 1]))[:, i], atol=1e-5)


def test_cache_with_attention_scores_and_mask():
    x = _x(1, 4, 8)
    layer = _layer(x.shape)
    cache = layer.initial_cache(1, 6)
    mask = np.ones((1, 2, 6), bool)
    mask[0, 1, 0] = False  # the second token may not see the first
    out, probs, cache = layer(x[:, :2], is_causal=True, cache=cache, cache_update_index=0,
                              attention_mask=mask, return_attention_scores=True)
    probs = to_numpy(probs)
    assert probs.shape == (1, 2, 2, 6)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-6)
    assert np.all(probs[:, :, 0, 1:] == 0) and np.all(probs[:, :, 1, 2:] == 0)
    assert np.all(probs[:, :, 1, 0] == 0)
    expected, _ = np_attention(layer, x[:, :2], mask=mask[:, :, :2], causal=True)
    assert_allclose(out, expected, atol=1e-5)


def test_cache_bad_input_raises():
    x = _x(1, 3, 8)
    layer = _layer(x.shape)
    cache = layer.initial_cache(1, 3)
    with pytest.raises(ValueError, match="cache_update_index"):
        layer(x, cache=cache)
    with pytest.raises(ValueError, match="self-attention only"):
        layer(x, x, cache=cache, cache_update_index=0)
    with pytest.raises(ValueError, match="cache"):
        layer(x, cache=keras.ops.zeros((1, 3, 2, 4)), cache_update_index=0)
    with pytest.raises(ValueError, match="built"):
        MultiHeadAttention(2).initial_cache(1, 3)


def test_cache_under_mixed_precision():
    keras.config.set_dtype_policy("mixed_float16")
    x = _x(1, 4, 8)
    layer = MultiHeadAttention(2)
    full = layer(x, is_causal=True)
    cache = layer.initial_cache(1, 4)
    assert keras.backend.standardize_dtype(cache.dtype) == "float16"
    decoded, _ = _decode_in_steps(layer, x, prefill=1)
    assert_allclose(decoded.astype("float32"), to_numpy(full).astype("float32"), atol=1e-2)


@pytest.mark.parametrize("switch", ["default", "disable"])
def test_keras_flash_attention_switch_reaches_the_kernel(monkeypatch, switch):
    from keras.src.backend.common import global_state

    seen = []
    original = keras.ops.dot_product_attention

    def spy(*args, **kwargs):
        seen.append(kwargs.get("flash_attention", "missing"))
        return original(*args, **kwargs)

    monkeypatch.setattr(keras.ops, "dot_product_attention", spy)
    previous = global_state.get_global_attribute("flash_attention")
    try:
        if switch == "disable":
            keras.config.disable_flash_attention()
        x = _x(2, 5, 8)
        mask = RNG.random((2, 5, 5)) < 0.7
        mask[..., 0] = True
        layer = _layer(x.shape)
        expected, _ = np_attention(layer, x, mask=mask)
        assert_allclose(layer(x, attention_mask=mask), expected, atol=1e-5)
        # None: the backend picks its kernel; False: the plain one, on every backend.
        assert seen == [None if switch == "default" else False]
    finally:
        global_state.set_global_attribute("flash_attention", previous)
