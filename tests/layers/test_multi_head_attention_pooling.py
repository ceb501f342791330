import numpy as np

from keras_vtx.layers import MultiHeadAttentionPooling
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


def _x():
    return np.random.default_rng(0).standard_normal((2, 5, 8)).astype("float32")


def _layer(x, **kwargs):
    layer = MultiHeadAttentionPooling(**{"num_heads": 2, "mlp_dim": 16, **kwargs})
    layer.build(x.shape)
    randomize_weights(layer)
    return layer


def test_matches_numpy():
    x = _x()
    layer = _layer(x)
    out = layer(x)
    assert tuple(out.shape) == (2, 8)
    assert layer.compute_output_shape((None, 5, 8)) == (None, 8)
    probe = np.broadcast_to(to_numpy(layer.probe), (2, 1, 8))
    y, _ = np_attention(layer.attention, probe, x)
    y = y + np_mlp(layer.mlp, np_layer_norm(layer.norm, y))
    assert_allclose(out, y[:, 0], atol=1e-5)


def test_return_attention_scores():
    x = _x()
    layer = _layer(x)
    out, scores = layer(x, return_attention_scores=True)
    assert tuple(scores.shape) == (2, 2, 1, 5)
    np.testing.assert_allclose(to_numpy(scores).sum(-1), 1.0, atol=1e-6)
    assert_allclose(out, layer(x), atol=1e-6)


def test_config_round_trip_and_save_load(tmp_path):
    layer = MultiHeadAttentionPooling(2, 16, layer_norm_epsilon=1e-5, activation="quick_gelu",
                                      name="map_head")
    assert_config_round_trip(layer)
    save_load_in_functional_model(layer, _x(), tmp_path)


def test_gradients_reach_every_weight():
    x = _x()
    assert_all_weights_get_gradients(_layer(x), x)
